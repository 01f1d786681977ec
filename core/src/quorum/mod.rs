//! Coordinator state machines for one get and one put: sloppy quorum, hinted handoff
//! and read repair (Dynamo §4.5, §4.6, §5).
//!
//! No I/O: the machines never send a message, read a clock or touch a disk. The shell
//! feeds in replies and the time as [`Millis`](crate::time::Millis) and carries out
//! what they return.
//!
//! Dynamo §4.5: "Upon receiving a put() request for a key, the coordinator generates
//! the vector clock for the new version and writes the new version locally. The
//! coordinator then sends the new version ... to the N highest-ranked reachable
//! nodes. If at least W-1 nodes respond then the write is considered successful." The
//! N nodes are the first N *healthy* nodes of the extended preference list
//! ([`select_targets`]); a node that stands in for an unhealthy home node carries a
//! hint naming it (§4.6). A get asks the same kind of set and answers once R replied,
//! with the reconciliation of what they returned; replicas found stale are then sent
//! the merged state ("read repair", §5).
//!
//! Driving a put:
//!
//! ```
//! use std::time::Duration;
//! use dynamo_core::quorum::{PutCoordinator, PutOutcome, QuorumConfig, Reconcile};
//! use dynamo_core::{time::Millis, NodeId};
//!
//! #[derive(Clone, PartialEq, Debug)]
//! struct Max(u64);
//! impl Reconcile for Max {
//!     fn reconcile(&mut self, other: &Self) { self.0 = self.0.max(other.0) }
//! }
//!
//! let ids: Vec<NodeId> = ["a", "b", "c", "d"].iter().map(|s| NodeId::new(s).unwrap()).collect();
//! let me = ids[0].clone();
//! let mut put = PutCoordinator::new(
//!     QuorumConfig::new(3, 2, 2).unwrap(), &ids, |_| true, &me, Max(7),
//!     Millis(0), Duration::from_secs(1), false,
//! );
//! // Send every write; the one addressed to `me` is the local write.
//! while let Some(send) = put.poll_transmit() {
//!     // shell: deliver `send.state` to `send.to` (hint: `send.hint_for`) ...
//!     put.handle_ack(&send.to, Millis(5)); // ... and report each answer.
//! }
//! assert!(matches!(put.poll_outcome(), Some(PutOutcome::Success { .. })));
//! assert!(put.is_finished());
//! ```

mod config;
mod error;
mod get;
mod put;
mod targets;
#[cfg(test)]
mod testing;

pub use config::{ConfigError, MAX_REPLICAS, QuorumConfig};
pub use error::{MAX_REASON_LEN, Operation, QuorumError};
pub use get::{GetCoordinator, GetOutcome};
pub use put::{PutCoordinator, PutOutcome, PutSend};
pub use targets::{Target, select_targets};

/// A replica's state for one key, which merges with any other state of the same key.
///
/// `reconcile` must make the type a join-semilattice: commutative, associative and
/// idempotent (`a ⊔ b = b ⊔ a`, `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`, `a ⊔ a = a`). Then the
/// merge of any replies, in any order and with repeats, is the same, and sending the
/// merge to a replica can only move it forward. The version module's sibling set
/// (vector-clocked values, Dynamo §4.4) is the production instance.
pub trait Reconcile: Clone + PartialEq {
    /// Merges `other` into `self`: afterwards `self` is the least state that covers
    /// both.
    fn reconcile(&mut self, other: &Self);
}
