//! The anti-entropy rounds (I/O shell): tree builds, the exchange with a peer, the
//! key-by-key repair of differing buckets, and the tombstone purge step.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use super::AntiEntropy;
use super::TREE_BUILD_KEYS_PER_UNIT;
use super::plan::{
    AdmittedLimit, RepairBudget, RoundLimit, TreeSpec, choose_exchange, key_repair, purger,
    ring_position, tombstone_expired, tree_specs,
};
use super::trees::{TreeLookupError, TreeSet};
use crate::NodeId;
use crate::admission::WorkKind;
use crate::background::BackgroundBudget;
use crate::cluster::Cluster;
use crate::membership::MemberState;
use crate::merkle::Hash;
use crate::metrics::{AntiEntropyRound, ExchangeResult, Metrics};
use crate::quorum::QuorumConfig;
use crate::random::{SeededRandom, Stream};
use crate::ring::TokenRange;
use crate::shutdown::wait_for;
use crate::storage::{Durability, StorageError, run_engine_call};
use crate::store::{Store, StoreError, state_digest};
use crate::time::Millis;
use crate::transport::{
    MAX_BATCH_ENTRIES, MAX_MERKLE_INDICES, MergeBatch, MerkleQuery, RangeEntry, RangeScan,
    ReplicaError, Transport, TransportError,
};
use crate::version::SiblingSet;

/// Keys read per page by a tree build: the most hashed between two yields.
const BUILD_PAGE: usize = 256;
/// The shortest pause between two tree build steps of the loop, whatever the budget
/// interval.
const MIN_BUILD_TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// Entries per page when comparing a bucket's keys, on either side.
const REPAIR_PAGE: u32 = 256;
/// Bytes per page when comparing a bucket's keys.
const REPAIR_PAGE_BYTES: u32 = 1024 * 1024;
/// Bytes of states gathered before they are merged or sent.
const REPAIR_BATCH_BYTES: usize = 1024 * 1024;
/// Keys the purge step examines per round.
const PURGE_PAGE: usize = 256;

/// What one round did, for the simulator and tests (the same figures feed `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// The range and peer exchanged with, if any was chosen.
    pub exchanged: Option<(TokenRange, NodeId)>,
    /// Whether the exchange failed (peer unreachable, refused, misbehaving).
    pub failed: bool,
    /// Leaf buckets whose hashes differed.
    pub differing_buckets: u64,
    /// Keys looked at while comparing the differing buckets.
    pub keys_compared: u64,
    /// Keys whose state we sent to the peer.
    pub keys_pushed: u64,
    /// Keys whose peer state we merged here.
    pub keys_pulled: u64,
    /// Whether the round stopped early because its budget ran out.
    pub budget_exhausted: bool,
    /// Tombstone-only keys removed from every replica.
    pub tombstones_purged: u64,
}

impl RoundReport {
    /// What the metrics count of this round.
    pub fn figures(&self) -> AntiEntropyRound {
        let exchange = self.exchanged.as_ref().map(|_| {
            if self.failed {
                ExchangeResult::Failed
            } else {
                ExchangeResult::Completed
            }
        });
        AntiEntropyRound {
            exchange,
            differing_buckets: self.differing_buckets,
            keys_compared: self.keys_compared,
            keys_pushed: self.keys_pushed,
            keys_pulled: self.keys_pulled,
            tombstones_purged: self.tombstones_purged,
        }
    }
}

/// The anti-entropy subsystem (Dynamo §4.7): the handles its rounds need, nothing else.
#[derive(Clone)]
/// The node wires it with a struct literal: each field is a handle it shares.
pub struct AntiEntropyWorker {
    pub(crate) store: Store,
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) antientropy: Arc<AntiEntropy>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) background: Arc<BackgroundBudget>,
    pub(crate) quorum: QuorumConfig,
    pub(crate) metrics: Metrics,
    pub(crate) durability: Durability,
}

impl std::fmt::Debug for AntiEntropyWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AntiEntropyWorker")
            .field("node", self.cluster.me())
            .finish_non_exhaustive()
    }
}

impl AntiEntropyWorker {
    /// Dynamo §4.7: build the trees, then every interval run one anti-entropy round.
    /// Returns at `shutdown`, after the round or build step under way.
    pub(crate) async fn run(self, seed: u64, shutdown: watch::Receiver<bool>) {
        let interval = self.antientropy.config().interval;
        if interval.is_zero() {
            return;
        }
        let mut random = SeededRandom::new(seed, Stream::AntiEntropy);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Tree builds go on between rounds, one step per budget interval: a ring change
        // (this node joining, a neighbour leaving) gets its trees while there is little
        // to hash, and a large range is hashed a budget's worth at a time.
        let build_tick = self.background.config().interval().max(MIN_BUILD_TICK);
        let mut builds = tokio::time::interval(build_tick);
        builds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: build the trees at startup, exchange a period
        // later.
        ticker.tick().await;
        builds.tick().await;
        self.refresh_trees().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = self.cluster.clock().wall();
                    self.antientropy_round(random.next_u64(), now).await;
                }
                _ = builds.tick() => {
                    self.refresh_trees().await;
                }
                () = wait_for(shutdown.clone()) => return,
            }
        }
    }

    /// The receiving side of a peer's exchange: our tree's hashes at `query`'s
    /// positions.
    ///
    /// # Errors
    /// Unavailable while the tree is being built; InvalidArgument for a query that
    /// does not fit our trees.
    pub(crate) fn answer_hashes(&self, query: &MerkleQuery) -> Result<Vec<Hash>, ReplicaError> {
        self.antientropy
            .trees()
            .hashes(query.range, query.depth, query.level, &query.indices)
            .map_err(|e| match e {
                TreeLookupError::Building(_) => ReplicaError::Unavailable(e.to_string()),
                other => ReplicaError::InvalidArgument(other.to_string()),
            })
    }

    /// The receiving side of a purge: removes `key` if its state is still the
    /// tombstone whose digest is `digest`; returns whether it did.
    ///
    /// # Errors
    /// A storage failure, as an internal error.
    pub(crate) async fn answer_purge(
        &self,
        key: Vec<u8>,
        digest: Hash,
    ) -> Result<bool, ReplicaError> {
        let store = self.store.clone();
        run_engine_call(self.store.engine().as_ref(), move || {
            store.remove_tombstone_if(&key, digest)
        })
        .await
        .map_err(|e| ReplicaError::Internal(e.to_string()))?
        .map_err(|e| ReplicaError::Internal(e.to_string()))
    }
}

/// What tree building did in one call of [`AntiEntropyWorker::refresh_trees`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildProgress {
    /// Keys read and hashed into trees.
    pub keys_hashed: u64,
    /// Whether a build stopped because the background budget was spent; a later call
    /// resumes it.
    pub paused: bool,
    /// Whether a build completed (its tree became ready to exchange).
    pub finished: bool,
}

/// How one page of a tree build ended.
enum PageEnd {
    /// More keys follow this one, the last read.
    More(Vec<u8>),
    /// The scan reached the end of the range.
    Finished,
    /// The budget ran out; the build resumes after the last key hashed.
    Paused,
    /// The tree was replaced (a ring change) or drifted: this build is void.
    Superseded,
}

/// One page of a tree build.
struct BuildPage {
    hashed: u64,
    end: PageEnd,
}

/// The budget units that hashing `keys` keys costs.
fn build_units(keys: usize) -> u64 {
    (keys as u64).div_ceil(TREE_BUILD_KEYS_PER_UNIT)
}

/// Reads up to [`BUILD_PAGE`] keys of `range` after `cursor` and hashes as many as the
/// background budget grants into the tree, each under its store lock. Blocking: runs on
/// a blocking thread for a blocking engine.
fn build_page(
    store: &Store,
    trees: &TreeSet,
    background: &BackgroundBudget,
    range: TokenRange,
    generation: u64,
    cursor: Option<Vec<u8>>,
) -> Result<BuildPage, RoundError> {
    let page = store.engine().scan(range, cursor.as_deref(), BUILD_PAGE)?;
    let read = page.len();
    let units = build_units(read);
    let granted = if units == 0 {
        0
    } else {
        background.take(WorkKind::TreeBuild, units)
    };
    let allowed = if granted >= units {
        read
    } else {
        usize::try_from(granted * TREE_BUILD_KEYS_PER_UNIT)
            .unwrap_or(usize::MAX)
            .min(read)
    };
    let mut hashed = 0;
    let mut last = None;
    for (key, _) in page.into_iter().take(allowed) {
        // Read again under the lock: the scan's copy may already be stale, and a write
        // after the lock is released sees the key as passed and updates the tree.
        let current = store.with_key_locked(&key, || {
            let raw = store.engine().get(&key)?;
            Ok::<_, StorageError>(trees.build_visit(
                range,
                generation,
                &key,
                raw.as_deref().map(state_digest),
            ))
        })?;
        if !current {
            return Ok(BuildPage {
                hashed,
                end: PageEnd::Superseded,
            });
        }
        hashed += 1;
        last = Some(key);
    }
    let end = if allowed < read {
        PageEnd::Paused
    } else if read < BUILD_PAGE {
        PageEnd::Finished
    } else {
        match last {
            Some(last) => PageEnd::More(last),
            None => PageEnd::Finished,
        }
    };
    Ok(BuildPage { hashed, end })
}

/// Repair failed: the peer or our storage.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl From<StorageError> for RoundError {
    fn from(error: StorageError) -> Self {
        RoundError::Store(error.into())
    }
}

/// Runs store work off the async threads when `store`'s engine may block, inline
/// otherwise (the in-memory engine), so a simulated run stays on one thread and
/// deterministic.
async fn blocking<T: Send + 'static>(
    store: &Store,
    work: impl FnOnce() -> Result<T, RoundError> + Send + 'static,
) -> Result<T, RoundError> {
    run_engine_call(store.engine().as_ref(), work)
        .await
        .map_err(|e| RoundError::Other(format!("store task failed: {e}")))?
}

/// One side of a bucket comparison: a buffer of entries in ring order, refilled a page
/// at a time.
#[derive(Default)]
struct Side {
    buffer: VecDeque<(Vec<u8>, SiblingSet)>,
    after: Option<Vec<u8>>,
    done: bool,
}

impl Side {
    fn absorb(&mut self, entries: Vec<(Vec<u8>, SiblingSet)>, done: bool) {
        if let Some((last, _)) = entries.last() {
            self.after = Some(last.clone());
        }
        self.done = done || entries.is_empty();
        self.buffer.extend(entries);
    }
}

/// The next key of `range` in ring order over both sides' buffers, with our state and
/// the peer's (empty on the side that lacks the key); `None` when both are empty.
fn next_key(
    range: TokenRange,
    local: &mut Side,
    remote: &mut Side,
) -> Option<(Vec<u8>, SiblingSet, SiblingSet)> {
    let order = match (local.buffer.front(), remote.buffer.front()) {
        (None, None) => return None,
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some((ours, _)), Some((theirs, _))) => {
            ring_position(range, ours).cmp(&ring_position(range, theirs))
        }
    };
    match order {
        std::cmp::Ordering::Less => {
            let (key, ours) = local.buffer.pop_front()?;
            Some((key, ours, SiblingSet::new()))
        }
        std::cmp::Ordering::Greater => {
            let (key, theirs) = remote.buffer.pop_front()?;
            Some((key, SiblingSet::new(), theirs))
        }
        std::cmp::Ordering::Equal => {
            let (key, ours) = local.buffer.pop_front()?;
            let (_, theirs) = remote.buffer.pop_front()?;
            Some((key, ours, theirs))
        }
    }
}

/// Repairs gathered while comparing, sent in batches.
#[derive(Default)]
struct Pending {
    pulls: Vec<(Vec<u8>, SiblingSet)>,
    pushes: Vec<RangeEntry>,
    bytes: usize,
}

impl AntiEntropyWorker {
    /// Brings the trees in line with the current ring: drops trees of ranges this node
    /// no longer replicates, and builds (by a local scan) those of ranges it newly
    /// replicates or whose tree drifted. Builds draw on the background budget and pause
    /// when it is spent (see `build_tree`); a later call resumes them. Rounds call it
    /// first; the loop also calls it at startup and every budget interval, so trees are
    /// built soon after a ring change, while the budget allows, rather than all at once
    /// in the next round. Returns what the builds did.
    pub async fn refresh_trees(&self) -> BuildProgress {
        if !self.antientropy.config().enabled() {
            return BuildProgress::default();
        }
        let ring = self.cluster.ring();
        let n = usize::try_from(self.quorum.n()).unwrap_or(usize::MAX);
        let specs = tree_specs(
            &ring,
            self.cluster.me(),
            n,
            self.antientropy.config().tree_depth,
        );
        let pending = self.antientropy.trees().reconcile(&specs);
        self.publish_tree_counts();
        let mut total = BuildProgress::default();
        for range in pending {
            match self.build_tree(range).await {
                Ok(progress) => {
                    total.keys_hashed += progress.keys_hashed;
                    total.finished |= progress.finished;
                    if progress.paused {
                        // The budget is spent: the other ranges wait for the next call.
                        total.paused = true;
                        break;
                    }
                }
                Err(error) => tracing::warn!(?range, %error, "building a Merkle tree"),
            }
        }
        self.publish_tree_counts();
        total
    }

    fn publish_tree_counts(&self) {
        let counts = self.antientropy.trees().counts();
        self.metrics
            .set_anti_entropy_trees(counts.ready, counts.building);
    }

    /// Builds `range`'s tree from a scan of the local data, reading each key under its
    /// store lock so concurrent writes are counted exactly once (see `TreeSet`).
    ///
    /// The scan goes a page at a time, off the async threads for a blocking engine, and
    /// yields between pages; each page's hashing is paid for from the node's background
    /// budget ([`WorkKind::TreeBuild`], one unit per [`TREE_BUILD_KEYS_PER_UNIT`] keys).
    /// When the budget runs out the build pauses after the last key it hashed and the
    /// next call resumes it there, so a range of many keys is hashed over several budget
    /// intervals instead of in one burst that stalls foreground requests.
    async fn build_tree(&self, range: TokenRange) -> Result<BuildProgress, RoundError> {
        let trees = Arc::clone(self.antientropy.trees());
        let Some((generation, mut after)) = trees.resume_build(range) else {
            return Ok(BuildProgress::default());
        };
        let started = std::time::Instant::now();
        let mut progress = BuildProgress::default();
        loop {
            let store = self.store.clone();
            let page_trees = Arc::clone(&trees);
            let background = Arc::clone(&self.background);
            let cursor = after.take();
            let page = blocking(&self.store, move || {
                build_page(&store, &page_trees, &background, range, generation, cursor)
            })
            .await?;
            progress.keys_hashed += page.hashed;
            match page.end {
                PageEnd::More(last) => after = Some(last),
                PageEnd::Finished => {
                    progress.finished = trees.finish_build(range, generation);
                    break;
                }
                PageEnd::Paused => {
                    progress.paused = true;
                    break;
                }
                PageEnd::Superseded => break,
            }
            // Between pages, let foreground requests on this thread go first.
            tokio::task::yield_now().await;
        }
        tracing::debug!(
            ?range,
            keys_hashed = progress.keys_hashed,
            finished = progress.finished,
            paused = progress.paused,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Merkle tree build step"
        );
        Ok(progress)
    }

    /// One anti-entropy round (Dynamo §4.7) at wall time `now`: refresh the trees,
    /// exchange one range's tree with one other replica (`random` picks both; the loop
    /// passes its generator's next value, a simulator its own), repair the keys of the
    /// differing buckets both ways within the round's budget, then run the tombstone
    /// purge step over a page of the same range.
    pub async fn antientropy_round(&self, random: u64, now: Millis) -> RoundReport {
        let mut report = RoundReport::default();
        if !self.antientropy.config().enabled() {
            return report;
        }
        let started = std::time::Instant::now();
        let built = self.refresh_trees().await;
        let refreshed = started.elapsed();
        let ready = self.antientropy.trees().ready_specs();
        let me = self.cluster.me();
        let Some((spec, peer)) =
            choose_exchange(&ready, me, |node| self.cluster.is_available(node), random)
        else {
            return report;
        };
        let (spec, peer) = (spec.clone(), peer.clone());
        report.exchanged = Some((spec.range, peer.clone()));
        let mut budget = AdmittedLimit {
            limit: RoundLimit::of(self.antientropy.config()),
            shared: &self.background,
        };
        if let Err(error) = self
            .exchange_and_repair(&spec, &peer, &mut budget, &mut report)
            .await
        {
            report.failed = true;
            tracing::debug!(%peer, range = ?spec.range, %error, "anti-entropy exchange failed");
        }
        let exchanged = started.elapsed();
        if let Err(error) = self.purge_step(&spec, now, &mut budget, &mut report).await {
            tracing::debug!(range = ?spec.range, %error, "tombstone purge step failed");
        }
        // Phase timings, to tell which part of a round costs what (debug only).
        tracing::debug!(
            tree_keys_hashed = built.keys_hashed,
            refresh_ms = refreshed.as_millis() as u64,
            exchange_and_repair_ms = (exchanged - refreshed).as_millis() as u64,
            purge_ms = (started.elapsed() - exchanged).as_millis() as u64,
            ?report,
            "anti-entropy round"
        );
        self.metrics.record_anti_entropy_round(&report.figures());
        report
    }

    /// Records a call's outcome with the failure detector and passes it on.
    fn observed<T>(
        &self,
        peer: &NodeId,
        result: Result<T, TransportError>,
    ) -> Result<T, TransportError> {
        self.cluster.record_call(peer, &result);
        result
    }

    async fn exchange_and_repair(
        &self,
        spec: &TreeSpec,
        peer: &NodeId,
        budget: &mut dyn RepairBudget,
        report: &mut RoundReport,
    ) -> Result<(), RoundError> {
        let address = self
            .cluster
            .address_of(peer)
            .ok_or_else(|| RoundError::Other(format!("no address for {peer}")))?;
        let trees = self.antientropy.trees();
        let (mut exchange, generation) = trees
            .exchange(spec.range)
            .ok_or_else(|| RoundError::Other("the tree is no longer ready".into()))?;
        let buckets = loop {
            if let Some((level, indices)) = exchange.poll_request() {
                let mut answer = Vec::with_capacity(indices.len());
                for chunk in indices.chunks(MAX_MERKLE_INDICES) {
                    let query = MerkleQuery {
                        range: spec.range,
                        depth: spec.depth,
                        level,
                        indices: chunk.to_vec(),
                    };
                    let hashes =
                        self.observed(peer, self.transport.merkle_hashes(&address, query).await)?;
                    answer.extend(hashes);
                }
                exchange
                    .handle_hashes(level, answer)
                    .map_err(|e| RoundError::Other(format!("peer's hashes: {e}")))?;
            } else if let Some(buckets) = exchange.poll_result() {
                break buckets;
            } else {
                return Err(RoundError::Other("exchange stalled".into()));
            }
        };
        report.differing_buckets = buckets.len() as u64;
        let ranges = trees
            .bucket_ranges(spec.range, generation, &buckets)
            .ok_or_else(|| RoundError::Other("the tree was replaced".into()))?;
        for range in ranges {
            if !self
                .repair_range(peer, &address, range, budget, report)
                .await?
            {
                report.budget_exhausted = true;
                break;
            }
        }
        Ok(())
    }

    /// Compares our keys of `range` with the peer's, in ring order, and repairs each key
    /// both ways. Returns `false` if the budget ran out first.
    async fn repair_range(
        &self,
        peer: &NodeId,
        address: &str,
        range: TokenRange,
        budget: &mut dyn RepairBudget,
        report: &mut RoundReport,
    ) -> Result<bool, RoundError> {
        let (mut local, mut remote) = (Side::default(), Side::default());
        let mut pending = Pending::default();
        loop {
            self.refill(peer, address, range, &mut local, &mut remote)
                .await?;
            let Some((key, ours, theirs)) = next_key(range, &mut local, &mut remote) else {
                break;
            };
            report.keys_compared += 1;
            let repair = key_repair(&ours, &theirs);
            if !repair.pull && !repair.push {
                continue;
            }
            let mut bytes = 0;
            if repair.pull {
                bytes += key.len() + theirs.to_bytes().len();
            }
            if repair.push {
                bytes += key.len() + ours.to_bytes().len();
            }
            if !budget.take(1, bytes as u64) {
                self.flush_repairs(peer, address, &mut pending, report)
                    .await?;
                return Ok(false);
            }
            pending.bytes += bytes;
            if repair.pull {
                pending.pulls.push((key.clone(), theirs));
            }
            if repair.push {
                pending.pushes.push(RangeEntry { key, state: ours });
            }
            if pending.bytes >= REPAIR_BATCH_BYTES
                || pending.pushes.len() >= MAX_BATCH_ENTRIES
                || pending.pulls.len() >= MAX_BATCH_ENTRIES
            {
                self.flush_repairs(peer, address, &mut pending, report)
                    .await?;
            }
        }
        self.flush_repairs(peer, address, &mut pending, report)
            .await?;
        Ok(true)
    }

    /// Reads the next page of `range` into each side whose buffer ran empty: ours from
    /// the store, the peer's with a range scan.
    async fn refill(
        &self,
        peer: &NodeId,
        address: &str,
        range: TokenRange,
        local: &mut Side,
        remote: &mut Side,
    ) -> Result<(), RoundError> {
        if local.buffer.is_empty() && !local.done {
            let store = self.store.clone();
            let after = local.after.clone();
            let page = blocking(&self.store, move || {
                Ok(store.scan(
                    range,
                    after.as_deref(),
                    REPAIR_PAGE as usize,
                    REPAIR_PAGE_BYTES as usize,
                )?)
            })
            .await?;
            local.absorb(page.entries, page.done);
        }
        if remote.buffer.is_empty() && !remote.done {
            let scan = RangeScan {
                range,
                after: remote.after.clone(),
                max_entries: REPAIR_PAGE,
                max_bytes: REPAIR_PAGE_BYTES,
            };
            let page = self.observed(peer, self.transport.scan_range(address, scan).await)?;
            let entries = page.entries.into_iter().map(|e| (e.key, e.state)).collect();
            remote.absorb(entries, page.done);
        }
        Ok(())
    }

    /// Merges the pulled states here and sends the pushed ones to the peer.
    async fn flush_repairs(
        &self,
        peer: &NodeId,
        address: &str,
        pending: &mut Pending,
        report: &mut RoundReport,
    ) -> Result<(), RoundError> {
        let pulls = std::mem::take(&mut pending.pulls);
        let pushes = std::mem::take(&mut pending.pushes);
        pending.bytes = 0;
        if !pulls.is_empty() {
            let count = pulls.len() as u64;
            let store = self.store.clone();
            let durability = self.durability;
            blocking(&self.store, move || {
                Ok(store.merge_batch(&pulls, durability)?)
            })
            .await?;
            report.keys_pulled += count;
        }
        if !pushes.is_empty() {
            let count = pushes.len() as u64;
            let batch = MergeBatch {
                entries: pushes,
                durable: false,
            };
            self.observed(peer, self.transport.merge_batch(address, batch).await)?;
            report.keys_pushed += count;
        }
        Ok(())
    }

    /// Looks at the next page of `spec`'s range for keys this node should purge: those
    /// it coordinates whose state is only tombstones older than the grace period.
    async fn purge_step(
        &self,
        spec: &TreeSpec,
        now: Millis,
        budget: &mut dyn RepairBudget,
        report: &mut RoundReport,
    ) -> Result<(), RoundError> {
        let range = spec.range;
        let cursor = self
            .antientropy
            .purge_cursors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&range);
        let store = self.store.clone();
        let page = blocking(&self.store, move || {
            Ok(store.scan(range, cursor.as_deref(), PURGE_PAGE, usize::MAX)?)
        })
        .await?;
        if !page.done {
            if let Some((last, _)) = page.entries.last() {
                self.antientropy
                    .purge_cursors
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(range, last.clone());
            }
        }
        let grace = self.antientropy.config().tombstone_grace;
        let n = usize::try_from(self.quorum.n()).unwrap_or(usize::MAX);
        let ring = self.cluster.ring();
        for (key, state) in page.entries {
            if !tombstone_expired(&state, now, grace) {
                continue;
            }
            let replicas = ring.preference_list_for_key(&key, n);
            if purger(&replicas) != Some(self.cluster.me()) {
                continue;
            }
            if !budget.take(1, 0) {
                report.budget_exhausted = true;
                break;
            }
            match self.purge_key(&key, &state, &replicas).await {
                Ok(true) => report.tombstones_purged += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(key = ?String::from_utf8_lossy(&key), %error, "purge stopped");
                }
            }
        }
        Ok(())
    }

    /// Whether every member other than this node and the key's `replicas` answers and
    /// holds no live value of `key`. Those copies (a stand-in's copy of a hinted write,
    /// a stray a node has yet to hand over, a leaving node's range not yet transferred)
    /// are not superseded where they are: one delivered after the purge would bring
    /// back the value the tombstone deleted, with nothing left to supersede it. So the
    /// purge waits for them to be handed over (where the tombstone supersedes them);
    /// a member that does not answer makes it wait too. Removed members hold nothing:
    /// a leave completes only after its hand-over.
    async fn no_live_copy_elsewhere(
        &self,
        key: &[u8],
        replicas: &[NodeId],
    ) -> Result<bool, RoundError> {
        let me = self.cluster.me();
        let others: Vec<(NodeId, String)> = self
            .cluster
            .table()
            .iter()
            .filter(|member| {
                member.state() != MemberState::Removed
                    && member.id() != me
                    && !replicas.contains(member.id())
            })
            .map(|member| (member.id().clone(), member.address().to_owned()))
            .collect();
        // Concurrent, so the transport batches them with other reads to each peer.
        let reads = others
            .iter()
            .map(|(peer, address)| async move { (peer, self.transport.read(address, key).await) });
        for (peer, result) in futures::future::join_all(reads).await {
            let held = self.observed(peer, result)?;
            if !held.is_empty() && !held.tombstone_only() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Purges one key: every other replica must hold exactly `state`; our own copy is
    /// made durable, each peer is asked to remove its copy by compare-and-delete (which
    /// makes the peer's tombstone durable first, see [`Store::remove_tombstone_if`]),
    /// and only then is our own copy removed. Returns whether the key is gone
    /// everywhere.
    async fn purge_key(
        &self,
        key: &[u8],
        state: &SiblingSet,
        replicas: &[NodeId],
    ) -> Result<bool, RoundError> {
        let me = self.cluster.me();
        let mut peers = Vec::new();
        for peer in replicas.iter().filter(|node| *node != me) {
            let address = self
                .cluster
                .address_of(peer)
                .ok_or_else(|| RoundError::Other(format!("no address for {peer}")))?;
            peers.push((peer, address));
        }
        for (peer, address) in &peers {
            let theirs = self.observed(peer, self.transport.read(address, key).await)?;
            if theirs != *state {
                return Ok(false);
            }
        }
        if !self.no_live_copy_elsewhere(key, replicas).await? {
            return Ok(false);
        }
        // Our tombstone must outlive every peer's: once a peer drops its copy, ours is
        // what restores the tombstone (or supersedes an old value) if this purge stops
        // half way, so a crash here must not be able to take it back.
        let store = self.store.clone();
        blocking(&self.store, move || Ok(store.engine().flush()?)).await?;
        let digest = state.digest();
        for (peer, address) in &peers {
            let removed = self.observed(
                peer,
                self.transport.purge_tombstone(address, key, digest).await,
            )?;
            if !removed {
                return Ok(false);
            }
        }
        let store = self.store.clone();
        let key = key.to_vec();
        blocking(&self.store, move || {
            Ok(store.remove_tombstone_if(&key, digest)?)
        })
        .await
    }
}
