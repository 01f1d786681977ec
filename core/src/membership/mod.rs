//! Membership and failure detection (Dynamo §4.8).
//!
//! No I/O: this module holds the member table, its gossip merge and wire format, the
//! failure detector's bookkeeping and the choice of a gossip partner. The shell owns
//! sockets, disk and the clock; it feeds observations and the current time in and acts
//! on the answers.
//!
//! * [`MemberTable`] (Dynamo §4.8.1): membership changes are explicit operations
//!   (join, mark member, leave, mark removed, weight, address and client address
//!   changes), each bumping the changed member's version. The shell persists the table after every
//!   change and gossips it; [`MemberTable::merge`] is a join-semilattice, so every
//!   node converges to the same table whatever order gossip arrives in. Removed
//!   members stay as tombstones so stale gossip cannot bring them back.
//! * [`MemberTable::digest`], [`MemberTable::encode`] and [`MemberTable::decode`]:
//!   peers first exchange 16-byte digests and send the whole table only when the
//!   digests differ; the decoder treats the bytes as hostile.
//! * [`choose_gossip_target`] (Dynamo §4.8.2): once per gossip round, a random live
//!   peer, and sometimes a seed, so logically partitioned rings learn of each other.
//! * [`FailureDetector`] (Dynamo §4.8.3): local, purely observational failure
//!   detection. A peer that stops answering becomes `Suspect`, then `Down`; Down
//!   peers are retried in the background until they answer again.
//!
//! A gossip round in the shell, each period (Dynamo uses one second):
//!
//! 1. `choose_gossip_target(&table, &me, rng.next_u64(), &seeds, i_am_a_seed, |p| detector.is_available(p, now))`;
//! 2. send `table.digest()`; if the peer's digest differs, exchange `table.encode()`;
//! 3. `MemberTable::decode(bytes)`, then `table.merge(&theirs)`; when it returns
//!    `true`, persist the table and rebuild the ring from `table.ring_members()`;
//! 4. report the call's outcome with `detector.handle_success` / `handle_failure`.

mod codec;
mod detector;
mod error;
mod gossip;
mod limits;
mod table;

pub use codec::{TABLE_FORMAT_VERSION, TableDigest};
pub use detector::{DetectorConfig, DetectorConfigError, FailureDetector, PeerStatus};
pub use error::DecodeError;
pub use gossip::{GossipTarget, SEED_ONE_IN, choose_gossip_target};
pub use limits::{MAX_ADDRESS_LEN, MAX_ENCODED_LEN, MAX_MEMBERS, MAX_WEIGHT, MAX_ZONE_LEN};
pub use table::{Member, MemberState, MemberTable, MembershipError};
pub use table::{check_address, check_zone};
