//! Merkle anti-entropy and tombstone purge (Dynamo §4.7): replicas of a key range
//! compare Merkle trees of their data, repair the keys of the buckets that differ in
//! both directions, and purge deletes every replica has held for a grace period.
//!
//! # The parts
//!
//! * [`plan`] (pure): the trees' ranges and shapes derived from the ring, the choice of
//!   range and peer for a round, per-key reconciliation, the per-round
//!   [`RepairBudget`], and the purge rules.
//! * [`TreeSet`]: one [`MerkleTree`](crate::merkle::MerkleTree) per range this node
//!   replicates, kept current by the [`Store`](crate::store::Store), which reports
//!   every data change to it ([`StoreObserver`](crate::store::StoreObserver)): coordinator
//!   writes, replica merges, read repair, hint delivery, transfer and repair batches,
//!   purges. Trees are built by one local scan when their range appears and are never
//!   rebuilt per exchange. The scan is paid for from the node's background budget
//!   (kind `tree_build`): it pauses when the budget is spent and resumes where it
//!   stopped, so a node with much data hashes it over several budget intervals, never
//!   in one burst that would stall the foreground gets and puts.
//! * The rounds (`NodeShared::antientropy_round`): every `--anti-entropy-interval`, pick
//!   one range and one other replica of it, walk the two trees top-down with the
//!   `MerkleHashes` RPC ([`Exchange`](crate::merkle::Exchange)), then page both sides'
//!   keys of each differing bucket (`ScanRange`) in ring order, merge what the peer has
//!   that we lack, and send it (`MergeBatch`) what it lacks. A round stops repairing
//!   when its budget of keys and bytes is spent; the next round finds the remaining
//!   buckets again.
//!
//! # Tombstone purge
//!
//! A delete is a tombstone version (Dynamo §4.4 treats deletes as puts), kept so a
//! replica that missed the delete cannot bring the old value back. A key's state is
//! purged when it holds only tombstones, the newest is older than `--tombstone-grace`,
//! and every replica holds exactly that state: the key's first replica (its
//! coordinator) reads each other replica's state, asks each to remove the key with a
//! compare-and-delete on its state digest (`PurgeTombstone`), and removes its own copy
//! last, so until every peer has dropped the key at least the purger still holds the
//! tombstone and anti-entropy restores it to any replica that is missing it. A replica
//! that is down, or holds any other state (an older live value not yet repaired, a
//! newer write), blocks the purge.
//!
//! **Copies outside the replicas.** A replica check covers the replicas' stored data,
//! not copies elsewhere: a hint on a stand-in (Dynamo §4.6), a stand-in's own copy of
//! a hinted write, a key a node holds outside its ranges that the stray sweep
//! (`crate::transfer::sweep`) has yet to hand over, or a leaving node's range not yet
//! transferred. Delivered after the purge, such a copy would bring back the value the
//! tombstone deleted, with nothing left to supersede it. Two rules close that window
//! (issue #13; the simulator's scripted stand-in case and its short-grace runs show
//! it open before them):
//!
//! * **The purge waits for every member.** Besides the replicas, the purger reads the
//!   key from every other member not `Removed`; one that does not answer, or holds a
//!   live value of the key, blocks the purge until its copy has been handed over
//!   (where the tombstone supersedes it). A member down for good therefore holds
//!   purges back until it is removed, as Cassandra's repairs must complete within
//!   `gc_grace_seconds`.
//! * **Hints expire.** Hints are kept apart from the data, so the read does not see
//!   them. A hint older than three quarters of the grace period
//!   ([`plan::deliverable`]) is dropped instead of delivered: any value a purgeable
//!   tombstone superseded is older than that, clocks agreeing within the remaining
//!   quarter (6 hours by default). The price is Cassandra's hint window: a write held
//!   only by a stand-in that could not reach any home replica for that long is lost
//!   (counted in `dynamo_stale_copies_dropped_total{path="hint"}` and logged).
//!
//! What remains rests on the grace period: messages in flight, bounded by the call
//! timeouts, far shorter. (The stray sweep flushes its removals before it goes on, so
//! a buffered node's crash cannot bring back a stray a purge took for handed over.)
//! The default of 24 hours leaves room for a day-long outage. Stand-ins also keep
//! hinted writes in their own data; reads that reach such a stand-in while the
//! replicas are down can see its copy, but the purge waits for it as above.
//!
//! **Durability.** The purger flushes its tombstone before any peer drops its copy,
//! and each replica flushes before its removal, so a crash that loses unflushed
//! writes can undo a removal (leaving a tombstone to purge again) but never bring
//! back the value the tombstone superseded.
//!
//! **No dot reuse after a purge.** Vector clocks are per key: after a key is purged
//! everywhere, a node that wrote it before would count from 1 again and reissue a dot
//! the purged tombstone covered, and a surviving copy of that tombstone (a purge
//! stopped half way keeps the purger's) would supersede the new write. So counters
//! start from the wall clock in milliseconds ([`crate::version::SiblingSet::put`]):
//! a write after the grace period gets a dot above every dot issued before the
//! delete, unless the node's clock went back by more than the grace period. Found by
//! the simulator's purge-during-faults test.

pub mod plan;
mod round;
mod trees;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use dynamo_config::settings::{
    AntiEntropyConfig, DEFAULT_INTERVAL, DEFAULT_MAX_BYTES_PER_ROUND, DEFAULT_MAX_KEYS_PER_ROUND,
    DEFAULT_TOMBSTONE_GRACE,
};
pub use plan::{KeyRepair, RepairBudget, RoundLimit, TreeSpec};
pub use round::{AntiEntropyWorker, BuildProgress, RoundReport};
pub use trees::{TreeCounts, TreeLookupError, TreeSet};

use crate::ring::TokenRange;

/// Keys a tree build hashes per unit of the background budget
/// ([`WorkKind::TreeBuild`](crate::admission::WorkKind::TreeBuild)): reading and hashing a
/// local key costs far less than repairing one (a unit of
/// [`WorkKind::AntiEntropy`](crate::admission::WorkKind::AntiEntropy)), which moves a
/// state over the network and writes it. At the default budget of 1,000 units a second
/// a node hashes up to 16,000 keys a second, at the minimum of 10 units 160.
pub const TREE_BUILD_KEYS_PER_UNIT: u64 = 16;
impl RoundLimit {
    /// A fresh per-round budget under `config`'s limits.
    pub fn of(config: &AntiEntropyConfig) -> Self {
        RoundLimit {
            keys: config.max_keys_per_round,
            bytes: config.max_bytes_per_round,
        }
    }
}

/// A node's anti-entropy state: its settings, trees, and where each range's purge scan
/// stands.
#[derive(Debug)]
pub struct AntiEntropy {
    config: AntiEntropyConfig,
    trees: Arc<TreeSet>,
    /// Per range, the last key the purge scan looked at; it resumes after it next
    /// round. A std mutex, never held across an `.await`.
    purge_cursors: Mutex<HashMap<TokenRange, Vec<u8>>>,
}

impl AntiEntropy {
    /// No trees yet.
    pub fn new(config: AntiEntropyConfig) -> Self {
        Self {
            config,
            trees: Arc::new(TreeSet::new()),
            purge_cursors: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AntiEntropyConfig {
        &self.config
    }

    /// The trees.
    pub fn trees(&self) -> &Arc<TreeSet> {
        &self.trees
    }
}
