//! Range transfer on membership change (Dynamo §4.9, "Adding/Removing Storage Nodes").
//!
//! # Hand-over rules
//!
//! A cluster in the middle of a change has two rings (see [`plan`]): the *settled* ring
//! of the nodes that hold their data (`Member`, `Leaving`, each with its settled weight)
//! and the *target* ring of the nodes placement is heading to (`Joining`, `Member`, each
//! with its weight). A weight change (`Admin.SetWeight`) moves a member's weight, and so
//! the target ring, only; its settled weight, and so the settled ring, follow once the
//! change is handed over.
//!
//! * Reads use the settled ring: a joining node's ranges are served by their previous
//!   owners, and a leaving node keeps serving its ranges, until the hand-over.
//! * Writes go to the union of both preference lists and need `W + pending`
//!   acknowledgements, `pending` being the number of target-only replicas, so an
//!   acknowledged write is on W settled and on W target replicas ([`write_set`]).
//! * The node whose membership changes drives every copy the change needs ([`plan`]):
//!   each range goes from the nodes that lose it to the nodes that gain it. Once every
//!   copy is acknowledged, a `Joining` node marks itself `Member`, a `Leaving` node
//!   (once it also holds no hint: see [`crate::handoff`]) marks itself `Removed`, and a
//!   member whose weight changed settles it (settled weight = weight); gossip spreads
//!   the change and every node's rings agree again, so reads switch over.
//! * A second weight change during a hand-over needs nothing special: every round plans
//!   from the current rings (settled weight to the newest weight, what the settled
//!   replicas hold being what must move), drops the progress of tasks no longer planned,
//!   and settles only the weight it planned for (a change that arrives mid-round is
//!   planned by the next round). A leaving node whose departure would leave no ring
//!   (the last node) stays `Leaving`: it has no one to hand its data to.
//!
//! # Who drives: the changing node, pulling or pushing as its role needs
//!
//! The node whose member state flips when the transfer completes drives the whole
//! transfer, because then "every range acknowledged" is known in one place, from its own
//! persisted progress, without a new completion protocol. So a joining node *pulls*: it
//! pages each range out of the losing nodes with `ScanRange` and merges the pages
//! locally. A leaving node *pushes*: it pages its own store and sends each page to the
//! new owners with `MergeBatch`. A node whose weight changed does both
//! ([`TransferRole::Reweighting`]): it pulls the ranges a rise gains and pushes the
//! ranges a fall loses. Copies between two other nodes
//! (strategy 3 rebuilt from scratch may trade partitions between old members too) are
//! relayed: `ScanRange` on the source, `MergeBatch` on the destination. Either way the
//! losing nodes' data streams to the new owners, and the sending side's data never has
//! to be trusted to a third party's bookkeeping.
//!
//! # Resume and idempotence
//!
//! [`Progress`] records, per task (range, source, destination), the last key the
//! destination acknowledged; the driver saves it durably in the meta keyspace after
//! every acknowledged batch. After a crash of the driver the next round resumes from
//! the cursor; a crash of the other side fails a call, and the next round retries from
//! the same cursor. A batch merged but not yet recorded is sent again, which is
//! harmless: merging sibling sets by vector clock is idempotent.
//!
//! # Stalled sources and destinations
//!
//! A copy whose source keeps failing (down, partitioned) for the stall time
//! (`--transfer-source-stall`, which covers both directions) is replaced by copies of
//! the same range from other settled replicas, as many as make sure every
//! acknowledged write is among them ([`fallback`]). A copy whose *destination* keeps
//! failing as long (a leaving node, or one whose weight fell, pushing to a down new
//! owner) is redirected: the range goes to W other target replicas, which stay
//! replicas after the change, so every acknowledged write ends up on a write quorum
//! of the new replicas without the down one, which read repair and anti-entropy
//! repair once it is back ([`fallback::choose_redirect`]). With fewer than W other
//! target replicas reachable the range waits (the status says so). Replacements,
//! redirects and the wall-clock time each peer began failing are recorded in the
//! progress, so they survive a restart of the driver: a restart does not start the
//! stall time again, though a peer counts as failing only once the restarted driver
//! saw it fail too (it may have come back meanwhile).
//!
//! # Throttle
//!
//! Each round sends at most an [`Allowance`] of keys and bytes, granted by a
//! [`TransferThrottle`] ([`FixedThrottle`] from `--transfer-batch-bytes` and
//! `--transfer-batch-keys` per `--transfer-interval`; the admission budget can replace
//! it). [`NodeShared::transfer_round`](crate::node::NodeShared::transfer_round) is one
//! round, deterministic given the cluster view, the stores and the allowance, so a
//! simulator can call it directly.
//!
//! # Known limits
//!
//! * A coordinator that has not yet heard of a change writes to the old replicas only;
//!   if the transfer's cursor already passed that key, the new owner misses the write
//!   until read repair or anti-entropy brings it. So before its first copy the changing
//!   node pushes its member table to every peer (and again each round until every peer
//!   took it); what is left is a peer it cannot reach, and a write a peer sent out just
//!   before it heard.
//! * Nodes of a release that predates settled weights cannot read the member table
//!   while a weight change is pending (it is then written in format 3; see
//!   [`crate::membership`]'s codec): they keep their old table until the change
//!   settles, and the writes they coordinate meanwhile reach the settled replicas only
//!   (the first limit above). Change weights once every node is upgraded.
//! * Changes made concurrently (a weight change while another node joins or leaves) are
//!   each handed over by their own node, all planning from the same rings; when one
//!   settles first, the other re-plans from the new settled ring. A write acknowledged
//!   by a set of replicas that neither the new settled ring nor the target ring covers
//!   by a quorum is then found again by the stray sweep and anti-entropy rather than by
//!   the hand-over. The operator makes one change at a time.
//! * A copy waits for its source for a while: once a losing node has failed for the
//!   stall time (`--transfer-source-stall`), its ranges are copied from `N - W + 1`
//!   other settled replicas instead ([`fallback`]), which together hold every write
//!   acknowledged with the configured W. Too few reachable replicas, and the range
//!   waits (the status says so). A write acknowledged with a lower per-request W, or
//!   only by stand-ins, reaches the new owner by hinted handoff, the sweep or
//!   anti-entropy instead.
//! * Likewise a copy waits for its destination for the stall time, then goes to W
//!   other target replicas of the range. Until anti-entropy (or read repair) reaches
//!   the destination once it is back, that range has one replica short of N holding
//!   the leaving node's writes (W still do): a second failure among those W before
//!   the repair loses durability as any W-replica write would. With W = N (or fewer
//!   than W other target replicas up) the range waits for the destination. A copy
//!   relayed between two other nodes whose source was replaced is not redirected too:
//!   it waits for its destination.
//!   A leaving node is "removed" only once it holds no hints: those for a home that
//!   is down go to the key's live home replicas ([`crate::handoff`]), and no
//!   coordinator makes a leaving node a stand-in ([`write_set`] takes stand-ins from
//!   the target ring only), so under a steady write load its backlog still empties.
//! * Nodes keep the data of ranges they lost until the [stray sweep](sweep) hands it
//!   (again) to the current replicas and removes it. The sweep also rescues writes
//!   a coordinator with a stale ring sent to old replicas only (the first limit
//!   above); until it ran, such a write is invisible to quorum reads.

mod driver;
pub mod fallback;
mod plan;
mod progress;
pub mod sweep;
#[cfg(test)]
mod tests;
mod throttle;

pub(crate) use driver::TransferShared;
pub use driver::TransferWorker;
pub use driver::{PeerTransfer, RoundReport, TransferRole, TransferSettings, TransferStatus};
pub use plan::{
    Task, WriteSet, plan, read_ring, settled_members, stray_ranges, target_members, write_set,
};
pub use progress::{PROGRESS_FORMAT_VERSION, Progress, ProgressError, TaskProgress};
pub use sweep::SweepReport;
pub use throttle::{Allowance, FixedThrottle, TransferThrottle};

/// Keys a range transfer moves per unit of the background budget
/// ([`WorkKind::Transfer`](crate::admission::WorkKind::Transfer)). Keys move in batches
/// (a page scanned, one call, one merge and flush at the destination), so a key costs far
/// less than a hint or an anti-entropy repair, which each take a call of their own. At
/// one key a unit, the default budget of 1,000 units a second held a join to 1,000 keys
/// (1 MiB of 1 KiB values) a second whatever the foreground did (`bench/growth.py`: a
/// fourth node took 254 s for 265 MiB); at 16 the default budget allows 16,000 keys a
/// second, what the round's own throttle allows (`--transfer-batch-keys` 4,096 every
/// 250 ms), and the budget still halves while the foreground p99 is over its target.
pub const TRANSFER_KEYS_PER_UNIT: u64 = 16;
