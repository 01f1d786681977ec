//! The deterministic cluster simulator: whole nodes in one process over the in-memory
//! network, on a current-thread tokio runtime whose clock is paused, with every choice
//! (workload, faults, background rounds) drawn from one seeded ChaCha generator.
//! Background rounds are every node's periodic work: gossip, failure probes, hinted
//! handoff, range transfer and anti-entropy (with its tombstone purge).
//!
//! Determinism rests on: one thread (the in-memory engine is called inline, never on
//! the blocking pool); tokio's paused clock driving the nodes' clocks
//! ([`Clock::tokio`]), so time only moves when every task waits; `biased` selects;
//! background rounds (gossip, failure probes, hinted handoff, range transfer,
//! anti-entropy, sled's periodic flush) run when the schedule says, not on wall-clock intervals; incarnations derived from
//! simulated time. The same seed therefore gives the same [`History`], which the
//! tests check through its digest.
//!
//! A run: a workload phase (concurrent client operations interleaved with faults and
//! background rounds), then heal (every link restored, every crashed node restarted),
//! background rounds until quiescent (bounded: no hints left, no transfer pending,
//! tables agreeing, every range's Merkle roots equal on its replicas), a dump of every
//! key's replicas (before the final reads, unless the run lets read repair converge
//! them), final reads of every key with R = N, and the [`check`] verdicts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use dynamo_node::NodeId;
use dynamo_node::antientropy::AntiEntropyConfig;
use dynamo_node::antientropy::plan::{choose_exchange, tombstone_expired};
use dynamo_node::cluster::Clock;
use dynamo_node::coordinator::CoordinatorError;
use dynamo_node::history::{History, OpId, Outcome, ReplicaDump, Verdict, check};
use dynamo_node::membership::{MemberState, MemberTable};
use dynamo_node::merkle::Hash;
use dynamo_node::node::{NodeSettings, NodeShared};
use dynamo_node::quorum::QuorumConfig;
use dynamo_node::ring::{PartitionStrategy, Token};
use dynamo_node::storage::{CrashMode, Durability, MemoryEngine, StorageEngine};
use dynamo_node::time::Millis;
use dynamo_node::transfer::TransferSettings;
use dynamo_node::transport::{
    ForwardedPut, MemoryNetwork, MemoryTransport, MergeBatch, MerkleQuery, RangePage, RangeScan,
    ReplicaWrite, Transport, TransportError,
};
use dynamo_node::version::SiblingSet;
use dynamo_node::version::context::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) mod scripted;

/// Deadline of one client request on every node.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// The network's per-call timeout.
const CALL_TIMEOUT: Duration = Duration::from_millis(200);
/// sled's default periodic flush of buffered writes.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Simulated time between background rounds while quiescing.
const ROUND_INTERVAL: Duration = Duration::from_millis(250);
/// At most this many quiescing rounds before the run gives up waiting.
const MAX_QUIESCE_ROUNDS: usize = 200;
/// The wall clock's origin: 2024-01-01, so version timestamps look real.
const WALL_ORIGIN: Millis = Millis(1_704_067_200_000);
/// Ring partitions (Dynamo's strategy 3): fewer than a production ring's, so each node
/// replicates a handful of ranges and anti-entropy's random choice of range meets the
/// few keys of a run within a bounded number of rounds.
const PARTITIONS: u32 = 32;
/// Merkle tree depth over the whole ring: a run's few keys need few buckets, and
/// hashing a production-sized tree after every restart would dominate a run's time.
const TREE_DEPTH: u8 = 8;
/// How long a transfer's source or destination may fail before it is worked around
/// (`--transfer-source-stall`): shorter than a run, so a crash during a join, leave or
/// weight change makes the transfer fall back to other replicas (a down source) or
/// redirect to other new replicas (a down destination).
const SOURCE_STALL: Duration = Duration::from_millis(300);
/// Mixed into the seed for the weight change's own random stream.
const REWEIGHT_STREAM: u64 = 0x5745_4947_4854;
/// Mixed into the seed for the purge probes' own random stream.
const PURGE_PROBE_STREAM: u64 = 0x5055_5247_4550;
/// The most simulated time between two workload steps, exclusive.
pub(crate) const MAX_STEP_GAP_MS: u64 = 40;
/// A tombstone grace period shorter than this is meant to purge deletes within the
/// run: quiescing then lasts until it has passed.
const PURGE_WITHIN_RUN: Duration = Duration::from_secs(60);
/// Client operations in flight at once.
const MAX_IN_FLIGHT: usize = 6;

/// Which fault classes a run may inject.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Faults {
    /// Crashes that keep every write, and restarts.
    pub(crate) crashes: bool,
    /// Crashes of buffered nodes that lose their unflushed writes.
    pub(crate) lose_unflushed: bool,
    /// Network partitions (two groups).
    pub(crate) partitions: bool,
    /// Lost messages.
    pub(crate) drops: bool,
    /// Delayed links.
    pub(crate) delays: bool,
    /// One node joins and one leaves during the run.
    pub(crate) join_leave: bool,
    /// One member's weight changes during the run (a rise from 1, or a fall back to 1),
    /// and that member hands the change over.
    pub(crate) reweight: bool,
    /// A node's disk is replaced by an empty one (its engine wiped) and it restarts;
    /// at most once per run, and not in a run that loses unflushed writes (see
    /// `Faults::one_data_loss`).
    pub(crate) wipes: bool,
}

impl Faults {
    /// The faults the node handles without range transfer and anti-entropy.
    pub(crate) fn handled_today() -> Self {
        Self {
            crashes: true,
            lose_unflushed: false,
            partitions: true,
            drops: true,
            delays: true,
            join_leave: false,
            reweight: false,
            wipes: false,
        }
    }

    /// One run's faults: a run that may wipe a disk loses no unflushed writes, and the
    /// other way round, drawn from `rng` when both are enabled. In buffered mode an
    /// acknowledged write has one durable copy (the coordinator's) and W - 1 volatile
    /// ones, so wiping the durable copy's disk while a volatile copy is lost in a crash
    /// loses the write: two replicas' data for one write, beyond what N = 3, W = 2
    /// promise (the simulator found such seeds; they judged the fault mix, not the
    /// node).
    fn one_data_loss(self, rng: &mut ChaCha8Rng) -> Self {
        if !(self.wipes && self.lose_unflushed) {
            return self;
        }
        if rng.random_bool(0.5) {
            Self {
                wipes: false,
                ..self
            }
        } else {
            Self {
                lose_unflushed: false,
                ..self
            }
        }
    }

    /// Every fault class.
    pub(crate) fn all() -> Self {
        Self {
            lose_unflushed: true,
            join_leave: true,
            reweight: true,
            wipes: true,
            ..Self::handled_today()
        }
    }
}

/// What one run does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SimConfig {
    /// The seed every choice derives from.
    pub(crate) seed: u64,
    /// Workload steps (each a client operation, a fault, or a background round).
    pub(crate) steps: usize,
    /// Fault classes.
    pub(crate) faults: Faults,
    /// Whether replicas may converge through the final reads' read repair. Without it
    /// the dump is taken before the final reads, so replicas must have converged
    /// through background work alone (anti-entropy).
    pub(crate) read_repair_converges: bool,
    /// How long a tombstone-only state is kept before anti-entropy may purge it: longer
    /// than a run to keep every delete, or short enough that purges happen during it.
    pub(crate) tombstone_grace: Duration,
    /// Plain keys the workload spreads over (besides the set workload's): fewer keys
    /// see more concurrent writes, more keys leave deletes untouched long enough to
    /// be purged.
    pub(crate) keys: usize,
    /// If set, faults come in bursts with calm spells between them (see
    /// [`FaultBursts`]).
    pub(crate) fault_bursts: Option<FaultBursts>,
    /// Zones the nodes are spread over (node `i` in zone `z{i % zones}`); 0 for none.
    /// A node that joins during the run announces its zone itself while it joins.
    pub(crate) zones: usize,
}

/// Faults in bursts separated by calm spells, with background rounds on every node
/// during each calm spell: together they bound how long any copy of a value can wait
/// outside the replicas a purge asks (a hint, a stand-in's or a former owner's stray
/// copy, a down or cut-off node's data). The node's purge rule holds only when the
/// tombstone grace period exceeds that wait (see `dynamo_node::antientropy`), so this
/// is what lets a run purge tombstones with a grace period shorter than the workload,
/// while the next burst's faults are in progress. (Bounding each fault alone is not
/// enough: the simulator found copies that waited out one fault after another.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultBursts {
    /// Steps of a burst, during which faults are injected.
    pub(crate) burst: usize,
    /// Steps of the calm spell after it: it begins with every crashed node restarted
    /// and the network healed, and injects no faults.
    pub(crate) calm: usize,
    /// During a calm spell every live node runs a background round this often, in
    /// steps.
    pub(crate) round_every: usize,
    /// The chance, in percent, that a burst step also runs a [`purge_probe`]: a fault
    /// aimed outside the replicas of a key whose tombstone has expired, then its
    /// purger's anti-entropy round over that key's range. Purges need every replica of
    /// the range reachable and agreeing, so left to chance they land in calm spells;
    /// this makes them happen while a fault is active, with the fault where the purge
    /// rule's danger lies (a node holding a hint or a stray copy, cut off or down).
    pub(crate) purge_probe_percent: u32,
}

impl FaultBursts {
    /// The longest simulated time a copy can wait: a burst and the calm spell that
    /// delivers it, each step at most [`MAX_STEP_GAP_MS`] apart.
    pub(crate) fn longest_wait(&self) -> Duration {
        let steps = self.burst + self.calm;
        Duration::from_millis(steps as u64 * MAX_STEP_GAP_MS)
    }

    /// Whether `step` falls in a calm spell.
    fn calm_at(&self, step: usize) -> bool {
        step % (self.burst + self.calm) >= self.burst
    }
}

/// What a run produced.
#[derive(Debug)]
pub(crate) struct SimReport {
    /// Nodes at the start.
    pub(crate) nodes: usize,
    /// The client history.
    pub(crate) history: History,
    /// The replicas' final state.
    pub(crate) dump: ReplicaDump,
    /// The checker's verdict, plus the set workload's own check.
    pub(crate) verdict: Verdict,
    /// Set elements acknowledged but missing from the final read of their set.
    pub(crate) lost_set_elements: Vec<String>,
    /// Whether background rounds reached quiescence within the bound.
    pub(crate) quiesced: bool,
    /// What the last quiescing round found still unsettled.
    pub(crate) quiesce_blocker: String,
    /// Simulated milliseconds the run took.
    pub(crate) simulated_ms: u64,
    /// Counts of what happened, for the report.
    pub(crate) events: BTreeMap<&'static str, u64>,
    /// Faults and membership changes in order (see `World::log`).
    pub(crate) log: Vec<String>,
}

impl SimReport {
    /// Whether every check passed.
    pub(crate) fn passed(&self) -> bool {
        self.verdict.is_ok() && self.lost_set_elements.is_empty() && self.quiesced
    }

    /// Every operation on `key`, one a line, with the contexts as debug text.
    pub(crate) fn trace(&self, key: &[u8]) -> String {
        let mut lines = Vec::new();
        for (id, op) in self.history.ops().iter().enumerate() {
            if op.key == key {
                lines.push(format!(
                    "#{id} [{}..{:?}] {:?} -> {:?}",
                    op.invoked_at, op.completed_at, op.kind, op.outcome
                ));
            }
        }
        lines.push(format!("replicas: {:?}", self.dump.keys().get(key)));
        lines.extend(self.log.iter().cloned());
        lines.join("\n")
    }

    /// A readable account of what failed.
    pub(crate) fn failures(&self) -> String {
        let mut lines: Vec<String> = self
            .verdict
            .violations
            .iter()
            .take(10)
            .map(ToString::to_string)
            .collect();
        if self.verdict.violations.len() > 10 {
            lines.push(format!(
                "... and {} more violations",
                self.verdict.violations.len() - 10
            ));
        }
        for element in &self.lost_set_elements {
            lines.push(format!("lost set element {element}"));
        }
        if !self.quiesced {
            lines.push(format!(
                "background work did not quiesce within {MAX_QUIESCE_ROUNDS} rounds ({})",
                self.quiesce_blocker
            ));
        }
        lines.join("\n")
    }
}

/// A node's transport that dies with its process: a crashed node's leftover tasks
/// (late replica writes, read repair) send nothing.
#[derive(Debug)]
struct LifeTransport {
    inner: MemoryTransport,
    alive: Arc<AtomicBool>,
}

impl LifeTransport {
    fn check(&self, to: &str) -> Result<(), TransportError> {
        if self.alive.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(TransportError::Unreachable {
                address: to.to_owned(),
                reason: "the calling node crashed".into(),
            })
        }
    }
}

#[async_trait]
impl Transport for LifeTransport {
    async fn read(&self, to: &str, key: &[u8]) -> Result<SiblingSet, TransportError> {
        self.check(to)?;
        self.inner.read(to, key).await
    }

    async fn write(&self, to: &str, write: ReplicaWrite) -> Result<(), TransportError> {
        self.check(to)?;
        self.inner.write(to, write).await
    }

    async fn coordinate_put(&self, to: &str, put: ForwardedPut) -> Result<Vec<u8>, TransportError> {
        self.check(to)?;
        self.inner.coordinate_put(to, put).await
    }

    async fn gossip(&self, to: &str, table: MemberTable) -> Result<MemberTable, TransportError> {
        self.check(to)?;
        self.inner.gossip(to, table).await
    }

    async fn scan_range(&self, to: &str, scan: RangeScan) -> Result<RangePage, TransportError> {
        self.check(to)?;
        self.inner.scan_range(to, scan).await
    }

    async fn merge_batch(&self, to: &str, batch: MergeBatch) -> Result<(), TransportError> {
        self.check(to)?;
        self.inner.merge_batch(to, batch).await
    }

    async fn merkle_hashes(
        &self,
        to: &str,
        query: MerkleQuery,
    ) -> Result<Vec<(usize, Hash)>, TransportError> {
        self.check(to)?;
        self.inner.merkle_hashes(to, query).await
    }

    async fn purge_tombstone(
        &self,
        to: &str,
        key: &[u8],
        digest: Hash,
    ) -> Result<bool, TransportError> {
        self.check(to)?;
        self.inner.purge_tombstone(to, key, digest).await
    }
}

/// One simulated node: its data directory (the engine) survives its processes.
struct SimNode {
    id: NodeId,
    address: String,
    durability: Durability,
    seeds: Vec<String>,
    engine: Arc<MemoryEngine>,
    /// The running process, if up.
    process: Option<Process>,
    /// Bumped at every crash, so a client knows its node died during a request.
    generation: u64,
    /// Left the cluster for good.
    removed: bool,
    /// The workload step at which it crashed, while it is down.
    down_since: Option<usize>,
}

struct Process {
    shared: Arc<NodeShared>,
    alive: Arc<AtomicBool>,
}

/// Everything the concurrent tasks of a run share.
struct World {
    network: MemoryNetwork,
    nodes: Vec<SimNode>,
    history: History,
    events: BTreeMap<&'static str, u64>,
    /// The next unique value number.
    next_value: u64,
    /// Set workload: element to the key of the set it was added to, once acknowledged.
    acked_elements: BTreeMap<String, Vec<u8>>,
    /// The nodes' tombstone grace period.
    tombstone_grace: Duration,
    /// Zones the nodes are spread over; 0 for none (see [`SimConfig::zones`]).
    zones: usize,
    /// When the run started: wall time is `WALL_ORIGIN` then.
    started: tokio::time::Instant,
    /// Faults and membership changes, each with the number of client operations
    /// invoked before it, for tracing a failure.
    log: Vec<String>,
    /// What [`trace_holdings`] last saw of the traced key.
    traced_holdings: Vec<String>,
    /// The current workload step.
    step: usize,
    /// The step of the oldest partition, drop or delay not yet healed.
    network_fault_since: Option<usize>,
    /// Whether the workload phase is over (faults healed, quiescing).
    quiescing: bool,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(PoisonError::into_inner)
}

impl World {
    fn count(&mut self, event: &'static str) {
        *self.events.entry(event).or_default() += 1;
    }

    /// Adds `n` to a counter (created even at zero, so a report shows it).
    fn add(&mut self, event: &'static str, n: u64) {
        *self.events.entry(event).or_default() += n;
    }

    /// Counts a fault or membership event on node `index` and logs it.
    fn note(&mut self, event: &'static str, index: usize) {
        self.count(event);
        let line = format!(
            "after op #{}: {event} {}",
            self.history.ops().len(),
            self.nodes[index].id
        );
        self.log.push(line);
    }

    fn start(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let mut settings = NodeSettings::new(node.id.clone());
        settings.quorum = QuorumConfig::new(3, 2, 2).expect("valid quorum");
        settings.request_timeout = REQUEST_TIMEOUT;
        settings.strategy = PartitionStrategy::equal_partitions(PARTITIONS).expect("valid Q");
        settings.durability = node.durability;
        settings.seeds = node.seeds.clone();
        settings.zone = zone_of(self.zones, index);
        settings.transfer = TransferSettings {
            source_stall: SOURCE_STALL,
            ..TransferSettings::default()
        };
        // Wall time goes on across restarts (a restarted process reads the same system
        // clock); monotonic time counts from the process's start.
        settings.clock = Clock::tokio(WALL_ORIGIN + self.started.elapsed());
        // Rounds run when the schedule says (`background_round`), not on this interval;
        // a nonzero one enables anti-entropy, so the store keeps the Merkle trees.
        settings.anti_entropy = AntiEntropyConfig {
            interval: ROUND_INTERVAL,
            tombstone_grace: self.tombstone_grace,
            tree_depth: TREE_DEPTH,
            ..AntiEntropyConfig::default()
        };
        let alive = Arc::new(AtomicBool::new(true));
        let transport = LifeTransport {
            inner: self.network.endpoint(node.address.clone()),
            alive: Arc::clone(&alive),
        };
        let engine: Arc<dyn StorageEngine> = node.engine.clone();
        let shared =
            NodeShared::assemble(settings, engine, Arc::new(transport), node.address.clone())
                .expect("assembling a simulated node");
        self.network
            .register(node.address.clone(), shared.handler());
        node.process = Some(Process { shared, alive });
        node.down_since = None;
    }

    fn crash(&mut self, index: usize, mode: CrashMode) {
        let node = &mut self.nodes[index];
        let Some(process) = node.process.take() else {
            return;
        };
        process.alive.store(false, Ordering::SeqCst);
        node.down_since = Some(self.step);
        self.network.unregister(&node.address);
        node.engine = Arc::new(node.engine.crash(mode));
        node.generation += 1;
        self.count_process(&process.shared);
    }

    /// Counts what a node's process did that only it knows, at its crash or at the end
    /// of the run: its clock actor renewals (removals of states holding its own dots:
    /// stray sweeps, purges) and the hints it dropped as too old to deliver.
    fn count_process(&mut self, shared: &NodeShared) {
        self.add("actor renewals", shared.store().identity().renewals());
        self.add("stale hints dropped", shared.metrics().stale_copies("hint"));
    }

    /// Replaces the node's disk with an empty one: whatever it held (data, hints,
    /// membership, transfer progress) is gone. A running node crashes first and
    /// restarts on the empty disk.
    fn wipe(&mut self, index: usize) {
        let was_up = self.nodes[index].process.is_some();
        self.crash(index, CrashMode::KeepUnflushed);
        self.nodes[index].engine = Arc::new(MemoryEngine::new());
        if was_up {
            self.start(index);
        }
    }

    fn up(&self, index: usize) -> Option<(Arc<NodeShared>, u64)> {
        let node = &self.nodes[index];
        node.process
            .as_ref()
            .map(|p| (Arc::clone(&p.shared), node.generation))
    }

    fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].process.is_some())
            .collect()
    }

    fn network_fault_began(&mut self) {
        self.network_fault_since.get_or_insert(self.step);
    }

    fn heal_network(&mut self) {
        self.network.heal_all();
        self.network_fault_since = None;
    }

    /// Whether some fault is in progress: a member down, or a partition, drop or
    /// delay not yet healed.
    fn fault_active(&self) -> bool {
        self.network_fault_since.is_some()
            || self.nodes.iter().any(|n| n.process.is_none() && !n.removed)
    }

    fn unique(&mut self) -> u64 {
        self.next_value += 1;
        self.next_value
    }
}

/// What a client task does.
#[derive(Debug, Clone, Copy)]
enum Workload {
    /// A get.
    Read,
    /// A put without a context.
    BlindPut,
    /// A get, then a put with its context.
    ReadModifyWrite,
    /// A get, a merge of the siblings' elements, one new element, a put with the
    /// context.
    SetAdd,
    /// A get, a delete with its context, then a put with the delete's context.
    DeleteRecreate,
    /// A get, then a delete with its context: the key stays deleted (until a later
    /// put), so its tombstone may be purged.
    Delete,
}

/// The set workload's encoding: elements joined by commas.
fn set_elements(value: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A client's handle on the node it talks to, checked again at completion.
struct Session {
    world: Shared,
    node: usize,
}

impl Session {
    fn node(&self) -> Option<(Arc<NodeShared>, u64)> {
        lock(&self.world).up(self.node)
    }

    /// A read, recorded; its values and context if it succeeded.
    async fn get(&self, key: &[u8], r: Option<u32>) -> Option<(SiblingSet, Context)> {
        let (shared, generation) = self.node()?;
        let op = lock(&self.world).history.invoke_get(key);
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT * 4, shared.coordinator().get(key, r)).await;
        let mut world = lock(&self.world);
        let died = world.nodes[self.node].generation != generation;
        match result {
            Ok(Ok(state)) if !died => {
                let values = state.values().map(<[u8]>::to_vec).collect();
                let context = state.context();
                world.history.complete(
                    op,
                    Outcome::GetOk {
                        values,
                        context: context.clone(),
                    },
                );
                world.count("get ok");
                Some((state, context))
            }
            _ => {
                world.history.complete(op, Outcome::Failed);
                world.count("get failed");
                None
            }
        }
    }

    /// A put (`None`: a delete), recorded; the returned context if acknowledged.
    async fn put(&self, key: &[u8], value: Option<Vec<u8>>, context: Context) -> Option<Context> {
        let (shared, generation) = self.node()?;
        let op: OpId = {
            let mut world = lock(&self.world);
            match &value {
                Some(value) => world.history.invoke_put(key, value, context.clone()),
                None => world.history.invoke_delete(key, context.clone()),
            }
        };
        if std::env::var("DYNAMO_SIM_KEY").is_ok_and(|k| k.as_bytes() == key) {
            let set = shared.cluster().write_set(key, 3);
            let line = format!(
                "op #{}: put via {} (write set: home {:?}, pending {}, then {:?})",
                op,
                shared.cluster().me(),
                &set.extended[..set.home],
                set.pending,
                &set.extended[set.home..]
            );
            lock(&self.world).log.push(line);
        }
        let result = tokio::time::timeout(
            REQUEST_TIMEOUT * 4,
            shared.coordinator().put(key, context, value, None),
        )
        .await;
        let mut world = lock(&self.world);
        let died = world.nodes[self.node].generation != generation;
        match result {
            Ok(Ok(context)) if !died => {
                world.history.complete(
                    op,
                    Outcome::PutOk {
                        context: context.clone(),
                    },
                );
                world.count("put ok");
                Some(context)
            }
            Ok(Err(CoordinatorError::InvalidArgument(_))) if !died => {
                world.history.complete(op, Outcome::Failed);
                world.count("put refused");
                None
            }
            _ => {
                world.history.complete(op, Outcome::Unknown);
                world.count("put unknown");
                None
            }
        }
    }
}

async fn run_client(world: Shared, node: usize, key: Vec<u8>, workload: Workload) {
    let session = Session { world, node };
    let unique = || lock(&session.world).unique();
    match workload {
        Workload::Read => {
            session.get(&key, None).await;
        }
        Workload::BlindPut => {
            let id = unique();
            let value = format!("v{id}").into_bytes();
            let returned = session.put(&key, Some(value), Context::new()).await;
            // Every other one writes again with the context its put returned: that
            // context covers the writer's own version and nothing it never saw, so the
            // second write supersedes the first and no concurrent blind write.
            if let Some(context) = returned.filter(|_| id % 2 == 1) {
                let value = format!("v{}", unique()).into_bytes();
                session.put(&key, Some(value), context).await;
            }
        }
        Workload::ReadModifyWrite => {
            if let Some((_, context)) = session.get(&key, None).await {
                let value = format!("v{}", unique()).into_bytes();
                session.put(&key, Some(value), context).await;
            }
        }
        Workload::SetAdd => {
            let Some((state, context)) = session.get(&key, None).await else {
                return;
            };
            let mut elements: BTreeSet<String> = state.values().flat_map(set_elements).collect();
            let element = format!("e{}", unique());
            elements.insert(element.clone());
            let value = elements.into_iter().collect::<Vec<_>>().join(",");
            if session
                .put(&key, Some(value.into_bytes()), context)
                .await
                .is_some()
            {
                lock(&session.world)
                    .acked_elements
                    .insert(element, key.clone());
            }
        }
        Workload::Delete => {
            if let Some((_, context)) = session.get(&key, None).await {
                session.put(&key, None, context).await;
            }
        }
        Workload::DeleteRecreate => {
            let Some((_, context)) = session.get(&key, None).await else {
                return;
            };
            if let Some(deleted) = session.put(&key, None, context).await {
                let value = format!("v{}", unique()).into_bytes();
                session.put(&key, Some(value), deleted).await;
            }
        }
    }
}

/// One background round on a node: gossip, failure probes, hinted handoff, a range
/// transfer round (for a joining or leaving node, or one changing its weight) with a stray sweep in what it left
/// of the allowance, as the transfer loop does, and an anti-entropy round (which
/// first brings the Merkle trees in line with the ring, then purges expired
/// tombstones).
async fn background_round(world: Shared, index: usize, random: u64) {
    let Some((shared, _)) = lock(&world).up(index) else {
        return;
    };
    shared.gossip().round(random).await;
    shared.gossip().probe_round().await;
    shared.handoff_round().await;
    let allowance = TransferSettings::default().per_round;
    let transfer = shared.transfer_round(allowance).await;
    let worked_around = shared
        .transfer_status_snapshot()
        .peers
        .iter()
        .filter(|p| p.ranges_on_fallback > 0)
        .count() as u64;
    let sweep = shared.sweep_round(allowance.minus(transfer.used)).await;
    let now = shared.cluster().clock().wall();
    let repair = shared.antientropy_round(random.rotate_left(32), now).await;
    let mut w = lock(&world);
    if transfer.completed {
        w.note("transfer completed", index);
    }
    w.add("stray keys handed over", sweep.keys_handed_over);
    w.add("transfer rounds around a stalled peer", worked_around);
    w.count_repair(&repair);
}

impl World {
    /// Counts what an anti-entropy round repaired and purged.
    fn count_repair(&mut self, repair: &dynamo_node::antientropy::RoundReport) {
        self.add("keys repaired", repair.keys_pulled + repair.keys_pushed);
        self.add("tombstones purged", repair.tombstones_purged);
        if !self.quiescing {
            self.add(
                "tombstones purged in the workload",
                repair.tombstones_purged,
            );
            if self.fault_active() {
                self.add(
                    "tombstones purged with a fault active",
                    repair.tombstones_purged,
                );
            }
        }
    }
}

/// A burst step's purge probe (see [`FaultBursts::purge_probe_percent`]): finds a key
/// (from a random start) whose purger is up and holds only an expired tombstone of it,
/// injects a fault aimed outside the key's replicas (a crash of another node, one
/// holding a stray copy or hint of the key if there is one; a partition that keeps the
/// replicas together; or drops between another node and the replicas), then runs the
/// purger's anti-entropy round over the key's range. Every choice comes from `rng`.
fn purge_probe(
    world: &Shared,
    rng: &mut ChaCha8Rng,
    keys: usize,
    faults: Faults,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let mut w = lock(world);
    w.count("purge probe");
    let grace = w.tombstone_grace;
    let start = rng.random_range(0..keys);
    let index_of = |w: &World, id: &NodeId| w.nodes.iter().position(|n| &n.id == id);
    let Some(any) = w.up_nodes().first().copied() else {
        return;
    };
    let ring = w.up(any).expect("an up node").0.cluster().ring();
    // Each purger's own view decides, as its round will (rings are copied once).
    let mut views: BTreeMap<usize, (Arc<NodeShared>, dynamo_node::ring::Ring)> = BTreeMap::new();
    let mut chosen = None;
    for i in 0..keys {
        let key = key_of((start + i) % keys);
        let Some(purger) = ring.preference_list_for_key(&key, 3).first().cloned() else {
            return;
        };
        let Some(index) = index_of(&w, &purger) else {
            continue;
        };
        let (shared, view) = match views.entry(index) {
            std::collections::btree_map::Entry::Occupied(seen) => seen.into_mut(),
            std::collections::btree_map::Entry::Vacant(unseen) => {
                let Some((shared, _)) = w.up(index) else {
                    continue;
                };
                let ring = shared.cluster().ring();
                unseen.insert((shared, ring))
            }
        };
        let replicas = view.preference_list_for_key(&key, 3);
        if replicas.first() != Some(&purger) {
            continue;
        }
        let now = shared.cluster().clock().wall();
        let Ok(state) = shared.store().read(&key) else {
            continue;
        };
        if state.is_empty() || !tombstone_expired(&state, now, grace) {
            continue;
        }
        chosen = Some((key, replicas, index));
        break;
    }
    let Some((key, replicas, purger)) = chosen else {
        w.count("purge probe without an expired tombstone");
        return;
    };
    let outside: Vec<usize> = (0..w.nodes.len())
        .filter(|&i| !w.nodes[i].removed && !replicas.contains(&w.nodes[i].id))
        .collect();
    if outside.is_empty() {
        return;
    }
    // Prefer a node that holds something of the key although it is no replica of it: a
    // stand-in's stray copy, a former owner's.
    let holders: Vec<usize> = outside
        .iter()
        .copied()
        .filter(|&i| {
            w.up(i)
                .is_some_and(|(s, _)| s.store().read(&key).is_ok_and(|st| !st.is_empty()))
        })
        .collect();
    let target = if holders.is_empty() {
        outside[rng.random_range(0..outside.len())]
    } else {
        w.count("purge probe aimed at a stray copy's holder");
        holders[rng.random_range(0..holders.len())]
    };
    match rng.random_range(0..3) {
        0 if faults.crashes && w.nodes[target].process.is_some() => {
            let lose = faults.lose_unflushed && rng.random_bool(0.5);
            let mode = if lose {
                CrashMode::LoseUnflushed
            } else {
                CrashMode::KeepUnflushed
            };
            w.crash(target, mode);
            w.note("crash outside a purge's replicas", target);
        }
        1 if faults.partitions => {
            // The replicas on one side; the target and a random share of the other
            // nodes on the other.
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for (i, node) in w.nodes.iter().enumerate() {
                let side = if replicas.contains(&node.id) {
                    &mut a
                } else if i == target || rng.random_bool(0.5) {
                    &mut b
                } else {
                    &mut a
                };
                side.push(node.address.clone());
            }
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let b: Vec<&str> = b.iter().map(String::as_str).collect();
            w.network.partition(&a, &b);
            w.network_fault_began();
            w.count("partition outside a purge's replicas");
            let line = format!(
                "after op #{}: partition {a:?} | {b:?} (purge probe)",
                w.history.ops().len()
            );
            w.log.push(line);
        }
        _ if faults.drops => {
            let from = w.nodes[target].address.clone();
            for replica in &replicas {
                if let Some(r) = index_of(&w, replica) {
                    let to = w.nodes[r].address.clone();
                    w.network.set_drop(&from, &to, rng.random_range(1..4));
                    w.network.set_drop(&to, &from, rng.random_range(1..4));
                }
            }
            w.network_fault_began();
            w.count("drops outside a purge's replicas");
        }
        _ => {}
    }
    tasks.spawn(purge_round(Arc::clone(world), purger, key));
}

/// The anti-entropy round of node `index` over the range holding `key`: the round
/// picks its range from a random value, so this passes the first value that points
/// at that range.
async fn purge_round(world: Shared, index: usize, key: Vec<u8>) {
    let Some((shared, _)) = lock(&world).up(index) else {
        return;
    };
    shared.refresh_trees().await;
    let ready = shared.antientropy().trees().ready_specs();
    let me = shared.cluster().me().clone();
    let token = Token::of(&key);
    let random = (0..ready.len() as u64).find(|&random| {
        choose_exchange(
            &ready,
            &me,
            |node| shared.cluster().is_available(node),
            random,
        )
        .is_some_and(|(spec, _)| spec.range.contains(token))
    });
    let Some(random) = random else {
        lock(&world).count("purge probe without a ready range");
        return;
    };
    let now = shared.cluster().clock().wall();
    let repair = shared.antientropy_round(random, now).await;
    let mut w = lock(&world);
    w.add("tombstones purged by a probe", repair.tombstones_purged);
    w.count_repair(&repair);
}

/// Applies [`FaultBursts`] at `step`: the first step of a calm spell restarts every
/// crashed node and heals the network, and calm steps run background rounds on every
/// live node every `round_every` steps. Returns whether `step` is calm (no fault may
/// be injected).
fn calm_spell(
    world: &Shared,
    bursts: FaultBursts,
    step: usize,
    tasks: &mut tokio::task::JoinSet<()>,
    rng: &mut ChaCha8Rng,
) -> bool {
    if !bursts.calm_at(step) {
        return false;
    }
    let mut w = lock(world);
    let into_calm = step % (bursts.burst + bursts.calm) - bursts.burst;
    if into_calm == 0 {
        for i in 0..w.nodes.len() {
            if w.nodes[i].process.is_none() && !w.nodes[i].removed {
                w.start(i);
                w.note("restart (calm)", i);
            }
        }
        w.heal_network();
        let line = format!("after op #{}: heal (calm)", w.history.ops().len());
        w.log.push(line);
    }
    if into_calm % bursts.round_every == 0 {
        for i in w.up_nodes() {
            tasks.spawn(background_round(Arc::clone(world), i, rng.random()));
        }
    }
    true
}

/// Runs one seed and returns what happened.
pub(crate) fn run(config: SimConfig) -> SimReport {
    if std::env::var("DYNAMO_SIM_LOG").is_ok() {
        // The nodes' own logs (e.g. DYNAMO_SIM_LOG=1 RUST_LOG=dynamo_node=debug), for
        // tracing a failing seed; once per process.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("building a current-thread runtime");
    runtime.block_on(simulate(config))
}

/// Plain keys of a run (besides the set workload's), unless [`SimConfig::keys`] says.
pub(crate) const KEYS: usize = 8;
const SET_KEYS: usize = 3;

fn key_of(i: usize) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

fn set_key_of(i: usize) -> Vec<u8> {
    format!("set-{i}").into_bytes()
}

/// Node `index`'s zone when the nodes are spread over `zones` (0: none).
fn zone_of(zones: usize, index: usize) -> Option<String> {
    (zones > 0).then(|| format!("z{}", index % zones))
}

/// Nodes with `durabilities`, started, each a member in every node's table (the same
/// membership changes, in the same order, on every node); wall time starts now.
fn start_world(durabilities: &[Durability], tombstone_grace: Duration, zones: usize) -> Shared {
    let started = tokio::time::Instant::now();
    let node_count = durabilities.len();
    let network = MemoryNetwork::new(CALL_TIMEOUT).expect("nonzero call timeout");
    let address = |i: usize| format!("n{i}:1");
    let seeds = vec![address(0), address(1)];
    let mut nodes = Vec::new();
    for (i, &durability) in durabilities.iter().enumerate() {
        nodes.push(SimNode {
            id: NodeId::new(format!("n{i}")).expect("valid node id"),
            address: address(i),
            durability,
            seeds: seeds.clone(),
            engine: Arc::new(MemoryEngine::new()),
            process: None,
            generation: 0,
            removed: false,
            down_since: None,
        });
    }
    let world: Shared = Arc::new(Mutex::new(World {
        network: network.clone(),
        nodes,
        history: History::new(),
        events: BTreeMap::new(),
        next_value: 0,
        acked_elements: BTreeMap::new(),
        tombstone_grace,
        zones,
        log: Vec::new(),
        traced_holdings: Vec::new(),
        step: 0,
        network_fault_since: None,
        quiescing: false,
        started,
    }));
    {
        let mut w = lock(&world);
        for i in 0..node_count {
            w.start(i);
        }
        // The same membership changes, in the same order, on every node.
        let members: Vec<(NodeId, String, String)> = w
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let zone = zone_of(zones, i).unwrap_or_default();
                (n.id.clone(), n.address.clone(), zone)
            })
            .collect();
        for i in 0..node_count {
            let (shared, _) = w.up(i).expect("just started");
            for (id, addr, zone) in &members {
                shared
                    .change_membership(|table| {
                        table.join_in_zone(id.clone(), addr, 1, zone)?;
                        table.mark_member(id)
                    })
                    .expect("joining a member");
            }
        }
    }
    world
}

async fn simulate(config: SimConfig) -> SimReport {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let started = tokio::time::Instant::now();
    let node_count = rng.random_range(5..=9);
    let faults = config.faults.one_data_loss(&mut rng);
    let durabilities: Vec<Durability> = (0..node_count)
        .map(|_| {
            if rng.random_bool(0.5) {
                Durability::Sync
            } else {
                Durability::Buffered
            }
        })
        .collect();
    let world = start_world(&durabilities, config.tombstone_grace, config.zones);
    if config.zones > 0 {
        // Every node places by zone from the start.
        let w = lock(&world);
        for i in 0..node_count {
            let (shared, _) = w.up(i).expect("just started");
            assert_eq!(shared.cluster().ring().zone_count(), config.zones);
        }
    }

    let join_at = config
        .faults
        .join_leave
        .then(|| rng.random_range(config.steps / 4..config.steps / 2 + 1));
    let leave_at = config
        .faults
        .join_leave
        .then(|| rng.random_range(config.steps / 2..config.steps * 3 / 4 + 1));
    // The weight change draws from its own stream, so it leaves the rest of a seed's
    // schedule as it was before weight changes were simulated.
    let mut reweight_rng = ChaCha8Rng::seed_from_u64(config.seed ^ REWEIGHT_STREAM);
    // So do the purge probes: the rest of the schedule is the same with or without them.
    let mut probe_rng = ChaCha8Rng::seed_from_u64(config.seed ^ PURGE_PROBE_STREAM);
    let reweight_at = config
        .faults
        .reweight
        .then(|| reweight_rng.random_range(config.steps / 4..config.steps * 3 / 4 + 1));
    let mut leaving: Option<usize> = None;
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_flush = tokio::time::Instant::now();
    for step in 0..config.steps {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..MAX_STEP_GAP_MS))).await;
        // sled's flush thread: buffered writes reach disk every FLUSH_INTERVAL.
        if last_flush.elapsed() >= FLUSH_INTERVAL {
            last_flush = tokio::time::Instant::now();
            let w = lock(&world);
            for node in w.nodes.iter().filter(|n| n.process.is_some()) {
                node.engine.flush().expect("flushing a live engine");
            }
        }
        lock(&world).step = step;
        let calm = config
            .fault_bursts
            .is_some_and(|bursts| calm_spell(&world, bursts, step, &mut tasks, &mut rng));
        if Some(step) == join_at {
            join_node(&world, &mut rng);
        }
        if Some(step) == leave_at {
            leaving = start_leave(&world, &mut rng);
        }
        if Some(step) == reweight_at {
            change_weight(&world, &mut reweight_rng);
        }
        if let Some(index) = leaving {
            if retire_if_removed(&world, index) {
                leaving = None;
            }
        }
        if let Some(bursts) = config.fault_bursts {
            if !calm && probe_rng.random_range(0..100) < bursts.purge_probe_percent {
                purge_probe(&world, &mut probe_rng, config.keys, faults, &mut tasks);
            }
        }
        trace_holdings(&world);
        while tasks.len() >= MAX_IN_FLIGHT {
            tasks.join_next().await;
            trace_holdings(&world);
        }
        let roll = rng.random_range(0..100);
        if roll < 70 {
            let up = lock(&world).up_nodes();
            if up.is_empty() {
                continue;
            }
            let node = up[rng.random_range(0..up.len())];
            let workload = match rng.random_range(0..11) {
                0..=1 => Workload::Read,
                2..=3 => Workload::BlindPut,
                4..=5 => Workload::ReadModifyWrite,
                6..=7 => Workload::SetAdd,
                8..=9 => Workload::DeleteRecreate,
                _ => Workload::Delete,
            };
            let key = match workload {
                Workload::SetAdd => set_key_of(rng.random_range(0..SET_KEYS)),
                _ => key_of(rng.random_range(0..config.keys)),
            };
            tasks.spawn(run_client(Arc::clone(&world), node, key, workload));
        } else if roll < 85 {
            let count = lock(&world).nodes.len();
            let node = rng.random_range(0..count);
            let random = rng.random();
            tasks.spawn(background_round(Arc::clone(&world), node, random));
        } else {
            if !calm {
                inject_fault(&world, &mut rng, faults);
            }
        }
    }
    while tasks.join_next().await.is_some() {}

    // Heal: every link back, every crashed node restarted.
    {
        let mut w = lock(&world);
        w.heal_network();
        w.quiescing = true;
        for i in 0..w.nodes.len() {
            if w.nodes[i].process.is_none() && !w.nodes[i].removed {
                w.start(i);
                w.note("restart", i);
            }
        }
        let line = format!("after op #{}: heal all (quiesce)", w.history.ops().len());
        w.log.push(line);
    }
    // A grace period shorter than a run: keep the background rounds going until every
    // tombstone written during the workload has expired and purge rounds have run.
    let at_least = (config.tombstone_grace < PURGE_WITHIN_RUN)
        .then(|| tokio::time::Instant::now() + config.tombstone_grace + ROUND_INTERVAL * 8);
    let mut blocker = String::new();
    let quiesced = quiesce(&world, &mut rng, at_least, &mut blocker).await;

    let keys: Vec<Vec<u8>> = (0..config.keys)
        .map(key_of)
        .chain((0..SET_KEYS).map(set_key_of))
        .collect();
    let mut dump = ReplicaDump::new();
    if !config.read_repair_converges {
        dump = dump_replicas(&world, &keys);
    }
    if let Ok(key) = std::env::var("DYNAMO_SIM_KEY") {
        log_holders(&world, key.as_bytes());
    }
    lock(&world).history.quiesced();
    let mut final_sets: BTreeMap<Vec<u8>, BTreeSet<String>> = BTreeMap::new();
    for key in &keys {
        let up = lock(&world).up_nodes();
        let node = up[rng.random_range(0..up.len())];
        let session = Session {
            world: Arc::clone(&world),
            node,
        };
        if let Some((state, _)) = session.get(key, Some(3)).await {
            final_sets.insert(key.clone(), state.values().flat_map(set_elements).collect());
        }
    }
    if config.read_repair_converges {
        // Read repair runs after the reads answered; let it finish.
        tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
        dump = dump_replicas(&world, &keys);
    }
    let mut w = lock(&world);
    let verdict = check(&w.history, &dump);
    let lost_set_elements = w
        .acked_elements
        .iter()
        .filter(|(element, key)| {
            final_sets
                .get(*key)
                .is_some_and(|elements| !elements.contains(*element))
        })
        .map(|(element, key)| format!("{element} of {}", String::from_utf8_lossy(key)))
        .collect();
    for i in w.up_nodes() {
        if let Some((shared, _)) = w.up(i) {
            w.count_process(&shared);
        }
    }
    SimReport {
        nodes: node_count,
        history: w.history.clone(),
        dump,
        verdict,
        lost_set_elements,
        quiesced,
        quiesce_blocker: blocker,
        simulated_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        events: w.events.clone(),
        log: w.log.clone(),
    }
}

/// Background rounds on every live node until no hints are left, every table agrees,
/// no node is still joining or leaving, every live node believes every other one up,
/// and every range's Merkle roots agree on all its replicas, for two rounds in a row
/// (and not before `at_least`); false if the bound ran out first.
async fn quiesce(
    world: &Shared,
    rng: &mut ChaCha8Rng,
    at_least: Option<tokio::time::Instant>,
    blocker: &mut String,
) -> bool {
    let mut calm = 0;
    for _ in 0..MAX_QUIESCE_ROUNDS {
        tokio::time::sleep(ROUND_INTERVAL).await;
        let up = lock(world).up_nodes();
        for &i in &up {
            background_round(Arc::clone(world), i, rng.random()).await;
            trace_holdings(world);
        }
        for i in up {
            retire_if_removed(world, i);
        }
        let up = lock(world).up_nodes();
        let w = lock(world);
        let mut digests = Vec::new();
        let mut hints = 0;
        let mut unsettled = Vec::new();
        for &i in &up {
            let (shared, _) = w.up(i).expect("live");
            digests.push(shared.cluster().table().digest());
            // Final reads must reach the home replicas, not stand-ins: every live node
            // must believe every other live node is up.
            for &j in &up {
                if !shared.cluster().is_available(&w.nodes[j].id) {
                    hints += 1;
                    unsettled.push(format!("{} believes {} down", w.nodes[i].id, w.nodes[j].id));
                }
            }
            for (target, count) in shared
                .store()
                .engine()
                .hint_targets()
                .expect("reading hint targets")
            {
                hints += count;
                unsettled.push(format!(
                    "{} holds {count} hints for {target}",
                    w.nodes[i].id
                ));
            }
        }
        let changing: Vec<String> = up.first().map_or_else(Vec::new, |&i| {
            let (shared, _) = w.up(i).expect("live");
            shared
                .cluster()
                .table()
                .iter()
                .filter(|m| {
                    matches!(m.state(), MemberState::Joining | MemberState::Leaving)
                        || m.is_reweighting()
                })
                .map(|m| format!("{} {} weight {}", m.id(), m.state(), m.weight()))
                .collect()
        });
        let tables_agree = digests.windows(2).all(|pair| pair[0] == pair[1]);
        let trees = trees_agree(&w, &up);
        *blocker = format!(
            "tables agree: {tables_agree}; hints or nodes believed down: {unsettled:?}; \
             joining, leaving or reweighting: {changing:?}; trees agree: {trees}"
        );
        if tables_agree && hints == 0 && changing.is_empty() && trees {
            calm += 1;
            if calm >= 2 && at_least.is_none_or(|t| tokio::time::Instant::now() >= t) {
                return true;
            }
        } else {
            calm = 0;
        }
    }
    false
}

/// Whether every live node's trees are all built and each equals, root for root, the
/// tree of the same range on every other replica of it (which must be live): what
/// anti-entropy converging looks like from the outside.
fn trees_agree(w: &World, up: &[usize]) -> bool {
    for &i in up {
        let (shared, _) = w.up(i).expect("live");
        let trees = shared.antientropy().trees();
        if trees.counts().building > 0 {
            return false;
        }
        for spec in trees.ready_specs() {
            let Some(mine) = trees.root(spec.range) else {
                return false;
            };
            for peer in spec.replicas.iter().filter(|p| *p != &w.nodes[i].id) {
                let Some(index) = w.nodes.iter().position(|n| &n.id == peer) else {
                    return false;
                };
                let Some((other, _)) = w.up(index) else {
                    return false;
                };
                if other.antientropy().trees().root(spec.range) != Some(mine) {
                    return false;
                }
            }
        }
    }
    true
}

/// Logs what every live node (replica or not) holds of `key`, and its hints for it,
/// for tracing a failure (`DYNAMO_SIM_KEY`).
fn log_holders(world: &Shared, key: &[u8]) {
    let mut w = lock(world);
    let mut lines = Vec::new();
    for i in w.up_nodes() {
        let (shared, _) = w.up(i).expect("live");
        let state = shared.store().read(key).expect("reading a replica");
        let versions: Vec<String> = state
            .siblings()
            .iter()
            .map(|s| {
                format!(
                    "{:?}",
                    s.value
                        .as_data()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                )
            })
            .collect();
        let preference = shared.cluster().extended_preference_list(key);
        lines.push(format!(
            "holds {}: {versions:?} (its preference list {:?})",
            w.nodes[i].id,
            &preference[..preference.len().min(3)]
        ));
    }
    w.log.extend(lines);
}

/// One line per node (up or down) with what its disk holds of `key`, data and hints,
/// for tracing a failure (`DYNAMO_SIM_KEY`): values by name, `-` for a tombstone.
fn holdings(w: &World, key: &[u8]) -> Vec<String> {
    let describe = |state: &SiblingSet| {
        let values: Vec<String> = state
            .siblings()
            .iter()
            .map(|s| {
                s.value.as_data().map_or_else(
                    || "-".to_owned(),
                    |v| String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let clock: Vec<String> = state
            .clock()
            .iter()
            .map(|(actor, entry)| format!("{}:{}", actor.node, entry.counter))
            .collect();
        format!("{values:?} {}", clock.join(" "))
    };
    let mut lines = Vec::new();
    for node in &w.nodes {
        let engine: &dyn StorageEngine = node.engine.as_ref();
        let mut held = Vec::new();
        if let Ok(Some(raw)) = engine.get(key) {
            if let Ok(state) = dynamo_node::store::decode_state(Some(&raw)) {
                held.push(format!("data {}", describe(&state)));
            }
        }
        for (target, _) in engine.hint_targets().unwrap_or_default() {
            for (hinted, raw) in engine
                .hints_for(&target, None, usize::MAX)
                .unwrap_or_default()
            {
                if hinted == key {
                    if let Ok(state) = dynamo_node::store::decode_state(Some(&raw)) {
                        held.push(format!("hint for {target} {}", describe(&state)));
                    }
                }
            }
        }
        if !held.is_empty() {
            let up = if node.process.is_some() {
                ""
            } else {
                " (down)"
            };
            lines.push(format!("{}{up}: {}", node.id, held.join("; ")));
        }
    }
    lines
}

/// Logs what changed in [`holdings`] of the traced key (`DYNAMO_SIM_KEY`) since the
/// last call.
fn trace_holdings(world: &Shared) {
    let Ok(key) = std::env::var("DYNAMO_SIM_KEY") else {
        return;
    };
    let mut w = lock(world);
    let now = holdings(&w, key.as_bytes());
    if now != w.traced_holdings {
        let line = format!(
            "after op #{}: {key} now held: {}",
            w.history.ops().len(),
            if now.is_empty() {
                "nowhere".to_owned()
            } else {
                now.join(" | ")
            }
        );
        w.log.push(line);
        w.traced_holdings = now;
    }
}

/// Every key's versions on each of its N home replicas.
fn dump_replicas(world: &Shared, keys: &[Vec<u8>]) -> ReplicaDump {
    let w = lock(world);
    let mut dump = ReplicaDump::new();
    let up = w.up_nodes();
    let Some((any, _)) = up.first().and_then(|i| w.up(*i)) else {
        return dump;
    };
    for key in keys {
        let home: Vec<NodeId> = any
            .cluster()
            .extended_preference_list(key)
            .into_iter()
            .take(3)
            .collect();
        for node in home {
            let Some(index) = w.nodes.iter().position(|n| n.id == node) else {
                continue;
            };
            let Some((shared, _)) = w.up(index) else {
                continue;
            };
            let state = shared.store().read(key).expect("reading a replica");
            let versions = state
                .siblings()
                .iter()
                .map(|s| s.value.as_data().map(<[u8]>::to_vec))
                .collect();
            dump.record(key, node.as_str(), versions);
        }
    }
    dump
}

fn inject_fault(world: &Shared, rng: &mut ChaCha8Rng, faults: Faults) {
    let mut w = lock(world);
    let count = w.nodes.len();
    let pick = |rng: &mut ChaCha8Rng| rng.random_range(0..count);
    match rng.random_range(0..8) {
        0 | 1 if faults.crashes => {
            let i = pick(rng);
            if w.nodes[i].removed {
                return;
            }
            if w.nodes[i].process.is_some() {
                let lose = faults.lose_unflushed && rng.random_bool(0.5);
                let mode = if lose {
                    CrashMode::LoseUnflushed
                } else {
                    CrashMode::KeepUnflushed
                };
                w.crash(i, mode);
                w.note(
                    if lose {
                        "crash losing unflushed"
                    } else {
                        "crash"
                    },
                    i,
                );
            } else {
                w.start(i);
                w.note("restart", i);
            }
        }
        2 if faults.partitions => {
            let names: Vec<String> = w.nodes.iter().map(|n| n.address.clone()).collect();
            let (a, b): (Vec<&str>, Vec<&str>) = names
                .iter()
                .map(String::as_str)
                .partition(|_| rng.random_bool(0.5));
            w.network.partition(&a, &b);
            w.network_fault_began();
            w.count("partition");
            let line = format!(
                "after op #{}: partition {a:?} | {b:?}",
                w.history.ops().len()
            );
            w.log.push(line);
        }
        3 if faults.drops => {
            let (a, b) = (pick(rng), pick(rng));
            let (a, b) = (w.nodes[a].address.clone(), w.nodes[b].address.clone());
            w.network.set_drop(&a, &b, rng.random_range(1..4));
            w.network_fault_began();
            w.count("drops");
        }
        4 if faults.delays => {
            let (a, b) = (pick(rng), pick(rng));
            let (a, b) = (w.nodes[a].address.clone(), w.nodes[b].address.clone());
            let delay = Duration::from_millis(rng.random_range(5..300));
            w.network.set_delay(&a, &b, delay);
            w.network_fault_began();
            w.count("delay");
        }
        5 | 6 => {
            w.heal_network();
            w.count("heal");
            let line = format!("after op #{}: heal", w.history.ops().len());
            w.log.push(line);
        }
        // One disk per run: N = 3 replicas tolerate losing one replica's data, not
        // several replicas' data in a row before anti-entropy restored it.
        7 if faults.wipes && !w.events.contains_key("wipe") => {
            let i = pick(rng);
            if w.nodes[i].removed {
                return;
            }
            w.wipe(i);
            w.note("wipe", i);
        }
        _ => {}
    }
}

/// Adds a node: it starts empty, knows the seeds, and an existing node admits it.
fn join_node(world: &Shared, rng: &mut ChaCha8Rng) {
    let mut w = lock(world);
    let index = w.nodes.len();
    let seeds = w.nodes[0].seeds.clone();
    let address = format!("n{index}:1");
    w.nodes.push(SimNode {
        id: NodeId::new(format!("n{index}")).expect("valid node id"),
        address: address.clone(),
        durability: Durability::Sync,
        seeds,
        engine: Arc::new(MemoryEngine::new()),
        process: None,
        generation: 0,
        removed: false,
        down_since: None,
    });
    w.start(index);
    let up = w.up_nodes();
    let admin = up[rng.random_range(0..up.len())];
    let (shared, _) = w.up(admin).expect("live");
    let id = w.nodes[index].id.clone();
    if shared
        .change_membership(|t| t.join(id.clone(), &address, 1))
        .is_ok()
    {
        w.note("join", index);
    }
}

/// Changes the weight of a random Member through a random live node (the operator's
/// `Admin.SetWeight`): a rise to 2 or 3 from 1, or a fall back to 1. The member hands
/// the change over in its transfer rounds.
fn change_weight(world: &Shared, rng: &mut ChaCha8Rng) {
    let mut w = lock(world);
    let up = w.up_nodes();
    let Some(&admin) = up.get(rng.random_range(0..up.len().max(1))) else {
        return;
    };
    let (shared, _) = w.up(admin).expect("live");
    let members: Vec<(NodeId, u32)> = shared
        .cluster()
        .table()
        .iter()
        .filter(|m| m.state() == MemberState::Member)
        .map(|m| (m.id().clone(), m.weight()))
        .collect();
    let Some((id, weight)) = members
        .get(rng.random_range(0..members.len().max(1)))
        .cloned()
    else {
        return;
    };
    let new_weight = if weight == 1 {
        rng.random_range(2..=3)
    } else {
        1
    };
    if shared
        .change_membership(|t| t.set_weight(&id, new_weight))
        .is_ok()
    {
        let index = w
            .nodes
            .iter()
            .position(|n| n.id == id)
            .expect("a member is a simulated node");
        w.note("reweight", index);
    }
}

/// Marks a live node Leaving; returns it.
fn start_leave(world: &Shared, rng: &mut ChaCha8Rng) -> Option<usize> {
    let mut w = lock(world);
    let up = w.up_nodes();
    let index = *up.get(rng.random_range(0..up.len().max(1)))?;
    let (shared, _) = w.up(index)?;
    let id = w.nodes[index].id.clone();
    shared.change_membership(|t| t.leave(&id)).ok()?;
    w.note("leave", index);
    Some(index)
}

/// Stops a leaving node for good once it has handed its ranges over (its transfer
/// marked it Removed) and every other live node has heard so, as an operator waits for
/// the decommission to finish before deleting the machine; returns whether it did.
fn retire_if_removed(world: &Shared, index: usize) -> bool {
    let mut w = lock(world);
    if w.nodes[index].removed {
        return true;
    }
    let id = w.nodes[index].id.clone();
    let Some((shared, _)) = w.up(index) else {
        return false;
    };
    let removed_in = |shared: &NodeShared| {
        shared
            .cluster()
            .table()
            .get(&id)
            .is_some_and(|m| m.state() == MemberState::Removed)
    };
    if !removed_in(&shared) {
        return false;
    }
    let everyone_knows = w
        .up_nodes()
        .into_iter()
        .all(|i| w.up(i).is_some_and(|(other, _)| removed_in(&other)));
    if !everyone_knows {
        return false;
    }
    w.crash(index, CrashMode::KeepUnflushed);
    w.nodes[index].removed = true;
    w.note("removed", index);
    true
}
