//! One node's view of the cluster (I/O shell): the gossiped member table, the rings
//! derived from it (the target ring, and the settled ring reads use while ranges are
//! transferred; see [`crate::transfer`]), and the failure detector's view of each peer.
//!
//! Every node derives the ring from the member table alone, so nodes whose tables agree
//! agree on placement. (Strategy 3's minimal-movement reassignment depends on ring
//! history; until the partition layout itself is gossiped, each node builds the
//! strategy 3 assignment from scratch from the member set, which is deterministic but
//! may move more partitions on a join than the minimum.)

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::NodeId;
use crate::membership::{
    DetectorConfig, FailureDetector, MemberTable, MembershipError, TableDigest,
};
use crate::ring::{PartitionStrategy, Ring, RingError, Token};
use crate::time::Millis;
use crate::transfer;

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The member table refused the change (unknown member, invalid transition).
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The resulting member set forms no valid ring.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// The node's clocks: monotonic time for timeouts, wall time for version timestamps.
///
/// Production nodes read the operating system's clocks ([`Clock::default`]). The
/// deterministic simulator uses [`Clock::tokio`]: both readings then follow tokio's
/// clock, which a paused runtime (`tokio::time::pause`, `start_paused`) advances only
/// when every task waits, so a seeded run sees the same times every time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: ClockSource,
}

#[derive(Debug, Clone, Copy)]
enum ClockSource {
    /// `std::time::Instant` for monotonic time, `SystemTime` for wall time.
    System { origin: Instant },
    /// tokio's clock for both: wall time is `wall_origin` plus the tokio time elapsed
    /// since `origin`.
    Tokio {
        origin: tokio::time::Instant,
        wall_origin: Millis,
    },
}

impl Default for Clock {
    /// The operating system's clocks, monotonic time counted from now.
    fn default() -> Self {
        Self {
            source: ClockSource::System {
                origin: Instant::now(),
            },
        }
    }
}

impl Clock {
    /// Clocks driven by tokio's time, monotonic time counted from now and wall time
    /// starting at `wall_origin` (milliseconds since the Unix epoch). Under a paused
    /// tokio clock both advance only with simulated time.
    pub fn tokio(wall_origin: Millis) -> Self {
        Self {
            source: ClockSource::Tokio {
                origin: tokio::time::Instant::now(),
                wall_origin,
            },
        }
    }

    /// Whether these clocks follow tokio's (simulated) time rather than the system's.
    pub fn is_simulated(&self) -> bool {
        matches!(self.source, ClockSource::Tokio { .. })
    }

    /// Milliseconds since the node started (monotonic).
    pub fn monotonic(&self) -> Millis {
        let elapsed = match self.source {
            ClockSource::System { origin } => origin.elapsed(),
            ClockSource::Tokio { origin, .. } => origin.elapsed(),
        };
        Millis(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    /// Milliseconds since the Unix epoch (wall clock; only orders vector clock entries for
    /// truncation, so skew costs at most extra siblings).
    pub fn wall(&self) -> Millis {
        match self.source {
            ClockSource::System { .. } => {
                let since_epoch = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                Millis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
            }
            ClockSource::Tokio {
                origin,
                wall_origin,
            } => wall_origin + origin.elapsed(),
        }
    }
}

/// The member table, ring and peer health, behind one lock.
///
/// A std `Mutex`: it is never held across an `.await`, and every critical section is a
/// lookup or a small merge.
#[derive(Debug)]
pub struct Cluster {
    me: NodeId,
    strategy: PartitionStrategy,
    clock: Clock,
    state: Mutex<ClusterState>,
}

#[derive(Debug)]
struct ClusterState {
    table: MemberTable,
    /// The target ring: Joining and Member nodes.
    /// The table's digest, computed once per change: every client response carries it.
    digest: TableDigest,
    ring: Ring,
    /// The settled ring: Member and Leaving nodes, which hold their data; reads use it
    /// while a transfer is in progress (see [`crate::transfer`]).
    settled: Ring,
    detector: FailureDetector,
}

/// The settled ring of `table`, or a copy of `target` when the settled members form no
/// valid ring (then hand-over protection is lost, but placement still works).
fn settled_ring(
    table: &MemberTable,
    strategy: PartitionStrategy,
    epoch: u64,
    target: &Ring,
) -> Ring {
    Ring::build(&transfer::settled_members(table), strategy, epoch, None)
        .map(|ring| in_zones(ring, table))
        .unwrap_or_else(|_| target.clone())
}

/// The target ring of `table`: its Joining and Member nodes, in their zones.
fn target_ring(
    table: &MemberTable,
    strategy: PartitionStrategy,
    epoch: u64,
) -> Result<Ring, RingError> {
    Ring::build(&table.ring_members(), strategy, epoch, None).map(|ring| in_zones(ring, table))
}

/// `ring` with each member in the zone the table gives it, so preference lists spread
/// over zones (Dynamo §4.2).
fn in_zones(ring: Ring, table: &MemberTable) -> Ring {
    ring.zoned(|id| table.get(id).and_then(crate::membership::Member::zone))
}

impl Cluster {
    /// A view starting from `table` (loaded from disk, or empty).
    ///
    /// # Errors
    /// The table's members do not form a valid ring under `strategy`.
    pub fn new(
        me: NodeId,
        table: MemberTable,
        strategy: PartitionStrategy,
        detector: DetectorConfig,
        clock: Clock,
    ) -> Result<Self, RingError> {
        let ring = target_ring(&table, strategy, 0)?;
        let settled = settled_ring(&table, strategy, 0, &ring);
        Ok(Self {
            me,
            strategy,
            clock,
            state: Mutex::new(ClusterState {
                digest: table.digest(),
                table,
                ring,
                settled,
                detector: FailureDetector::new(detector),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        // A panic while holding the lock cannot leave the state half-merged (merges
        // build the new table first), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The node's clocks.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// A copy of the member table.
    pub fn table(&self) -> MemberTable {
        self.lock().table.clone()
    }

    /// A copy of the target ring (Joining and Member nodes).
    pub fn ring(&self) -> Ring {
        self.lock().ring.clone()
    }

    /// The member table's digest (cached), which clients use as the topology version.
    pub fn table_digest(&self) -> TableDigest {
        self.lock().digest
    }

    /// The member table, its digest and the ring, read together under one lock so
    /// they describe the same membership.
    pub fn snapshot(&self) -> (MemberTable, TableDigest, Ring) {
        let state = self.lock();
        (state.table.clone(), state.digest, state.ring.clone())
    }

    /// Merges a table learned from gossip or an admin change; returns whether ours changed.
    ///
    /// # Errors
    /// The merged member set does not form a valid ring (then nothing changes).
    pub fn merge_table(&self, other: &MemberTable) -> Result<bool, RingError> {
        let mut state = self.lock();
        let mut merged = state.table.clone();
        if !merged.merge(other) {
            return Ok(false);
        }
        self.install(&mut state, merged)?;
        Ok(true)
    }

    /// Applies a membership change to a copy of the table and installs it if it succeeds.
    ///
    /// # Errors
    /// The change's own error, or an invalid resulting ring.
    pub fn change<T>(
        &self,
        change: impl FnOnce(&mut MemberTable) -> Result<T, MembershipError>,
    ) -> Result<(T, MemberTable), ChangeError> {
        let mut state = self.lock();
        let mut table = state.table.clone();
        let result = change(&mut table)?;
        self.install(&mut state, table.clone())?;
        Ok((result, table))
    }

    fn install(&self, state: &mut ClusterState, table: MemberTable) -> Result<(), RingError> {
        let epoch = state.ring.epoch() + 1;
        state.ring = target_ring(&table, self.strategy, epoch)?;
        state.settled = settled_ring(&table, self.strategy, epoch, &state.ring);
        state.digest = table.digest();
        state.table = table;
        Ok(())
    }

    /// A copy of the settled ring (Member and Leaving nodes: those holding their data).
    pub fn settled_ring(&self) -> Ring {
        self.lock().settled.clone()
    }

    /// Copies of the settled and the target ring, taken together.
    pub fn rings(&self) -> (Ring, Ring) {
        let state = self.lock();
        (state.settled.clone(), state.ring.clone())
    }

    /// Every distinct node clockwise from `key` on the ring reads use (the settled ring
    /// while a transfer is in progress; see [`transfer::read_ring`]), home replicas first.
    pub fn read_preference_list(&self, key: &[u8]) -> Vec<NodeId> {
        let state = self.lock();
        transfer::read_ring(&state.settled, &state.ring).preference_list_for_key(key, usize::MAX)
    }

    /// Where a write of `key` goes with `n` replicas: the union of the settled and the
    /// target preference lists (see [`transfer::write_set`]).
    pub fn write_set(&self, key: &[u8], n: usize) -> transfer::WriteSet {
        let state = self.lock();
        transfer::write_set(&state.settled, &state.ring, Token::of(key), n)
    }

    /// Every distinct member of the target ring clockwise from `key`, home replicas
    /// first.
    pub fn extended_preference_list(&self, key: &[u8]) -> Vec<NodeId> {
        self.lock().ring.preference_list_for_key(key, usize::MAX)
    }

    /// The address peers use to reach `node`, if it is in the table.
    pub fn address_of(&self, node: &NodeId) -> Option<String> {
        self.lock().table.get(node).map(|m| m.address().to_owned())
    }

    /// Whether `node` should be sent requests now (not believed down).
    pub fn is_available(&self, node: &NodeId) -> bool {
        node == &self.me
            || self
                .lock()
                .detector
                .is_available(node, self.clock.monotonic())
    }

    /// Records that `node` answered.
    pub fn record_success(&self, node: &NodeId) {
        if node != &self.me {
            self.lock().detector.handle_success(node);
        }
    }

    /// Records what a call to `node` says of its health: an answer, a refusal included
    /// ([`TransportError::is_answer`]), is a success; no answer is a failure. Every
    /// internode caller feeds the failure detector through here, so one rule decides
    /// what counts.
    pub fn record_call<T>(
        &self,
        node: &NodeId,
        result: &Result<T, crate::transport::TransportError>,
    ) {
        match result {
            Err(error) if !error.is_answer() => self.record_failure(node),
            _ => self.record_success(node),
        }
    }

    /// Records that a call to `node` failed (no answer).
    pub fn record_failure(&self, node: &NodeId) {
        if node != &self.me {
            let now = self.clock.monotonic();
            self.lock().detector.handle_failure(node, now);
        }
    }

    /// Down peers due for a background probe.
    pub fn poll_probes(&self) -> Vec<NodeId> {
        let now = self.clock.monotonic();
        self.lock().detector.poll_probe(now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_only_with_simulated_time() {
        let clock = Clock::tokio(Millis(1_000_000));
        assert!(clock.is_simulated());
        assert_eq!(clock.monotonic(), Millis(0));
        assert_eq!(clock.wall(), Millis(1_000_000));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(clock.monotonic(), Millis(1_500));
        assert_eq!(clock.wall(), Millis(1_001_500));
    }

    #[test]
    fn the_default_clock_reads_the_system_clocks() {
        let clock = Clock::default();
        assert!(!clock.is_simulated());
        // After 2020-01-01: the wall clock is the real one, not an origin of zero.
        assert!(clock.wall() > Millis(1_577_836_800_000));
        assert!(clock.monotonic() < Millis(60_000));
    }
}
