//! The pure core of a Dynamo-style store (DeCandia et al., SOSP 2007).
//!
//! The protocol lives here, in modules that never touch a socket, a clock or a disk: they
//! take inputs, including the current time as a [`time::Millis`], and return decisions.
//! That makes them testable exhaustively and drivable by a deterministic simulator. The
//! crate's dependencies hold no async runtime, network, storage, randomness or logging
//! crate, so the compiler keeps it that way; the node (`dynamo-node`) is the shell that
//! drives it.
//!
//! * [`ring`]: MD5 consistent hashing, weighted virtual nodes (random tokens or equal
//!   partitions), zones, preference lists, and the ranges that move between ring versions.
//! * [`version`]: vector clocks with actor incarnations, dotted sibling sets, client
//!   contexts and the stored state encoding.
//! * [`quorum`]: get and put coordinator state machines: sloppy quorum, hinted
//!   handoff targets, read repair.
//! * [`merkle`]: Merkle trees per key range and the stepwise exchange that finds the
//!   buckets two replicas disagree on (anti-entropy).
//! * [`membership`]: the member table and its gossip merge, seeds, failure detection.
//! * [`admission`]: the background work budget that shrinks when foreground latency
//!   rises (admission control).
//! * [`history`]: client operation histories and the checker the simulator and fault
//!   suites judge runs with (no lost acknowledged write, convergence, no resurrection).
//!
//! # The driving loop
//!
//! A coordinator serving a put: look up the key's extended preference list in the
//! [`ring::Ring`]; build a [`quorum::PutCoordinator`] with the node's
//! [`quorum::QuorumConfig`], the failure detector's view of health, and the new
//! [`version::SiblingSet`] produced by [`version::SiblingSet::put`] with the client's
//! context; then loop: send what `poll_transmit` returns, feed each reply to
//! `handle_ack` / `handle_failure`, call `handle_timeout` when `poll_timeout` passes,
//! and answer the client when `poll_outcome` decides. Writes that landed on stand-ins
//! carry a hint; gets end with `poll_read_repair`.

pub mod admission;
pub mod history;
pub mod limits;
pub mod membership;
pub mod merkle;
pub mod node_id;
pub mod quorum;
pub mod ring;
pub mod time;
pub mod version;

pub use node_id::NodeId;
