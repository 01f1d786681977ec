//! Anti-entropy over the in-memory network: whole nodes (store, trees, coordinator,
//! peer handler) in one process, rounds driven explicitly, faults from the network.
//!
//! Dynamo §4.7: "To detect the inconsistencies between replicas faster and to minimize
//! the amount of transferred data, Dynamo uses Merkle trees."

use crate::version::context::Context;
use std::sync::Arc;
use std::time::Duration;

use super::AntiEntropyConfig;
use crate::NodeId;
use crate::merkle::MerkleTree;
use crate::node::{NodeSettings, NodeShared};
use crate::quorum::QuorumConfig;
use crate::ring::{Token, TokenRange};
use crate::storage::{CrashMode, Durability, MemoryEngine, StorageEngine};
use crate::time::Millis;
use crate::transport::{MemoryNetwork, MerkleQuery, ReplicaError, Transport, TransportError};
use crate::version::SiblingSet;

/// Rounds a test may run before it gives up on convergence.
const MAX_ROUNDS: u64 = 40;

/// A wall time far past every tombstone the tests write, for purge decisions.
const FAR_FUTURE: Millis = Millis(u64::MAX / 2);

fn id(name: &str) -> NodeId {
    NodeId::new(name).expect("valid test node id")
}

fn addr(node: &str) -> String {
    format!("{node}:1")
}

struct Harness {
    network: MemoryNetwork,
    names: Vec<String>,
    nodes: Vec<Arc<NodeShared>>,
    /// Each node's disk, which outlives a crash of its process.
    engines: Vec<Arc<MemoryEngine>>,
    config: AntiEntropyConfig,
    admission: crate::admission::AdmissionConfig,
    durability: Durability,
}

impl Harness {
    /// `count` nodes `n1..`, N=3 R=2 W=2, all members everywhere.
    fn new(count: usize, config: AntiEntropyConfig) -> Self {
        Self::with_admission(count, config, crate::admission::AdmissionConfig::default())
    }

    /// Like [`Harness::new`], with the nodes' shared background budget set.
    fn with_admission(
        count: usize,
        config: AntiEntropyConfig,
        admission: crate::admission::AdmissionConfig,
    ) -> Self {
        Self::build(count, config, admission, Durability::Sync)
    }

    /// Like [`Harness::new`], with every node in buffered mode: replica writes stay
    /// unflushed until an engine flush.
    fn buffered(count: usize, config: AntiEntropyConfig) -> Self {
        Self::build(
            count,
            config,
            crate::admission::AdmissionConfig::default(),
            Durability::Buffered,
        )
    }

    fn build(
        count: usize,
        config: AntiEntropyConfig,
        admission: crate::admission::AdmissionConfig,
        durability: Durability,
    ) -> Self {
        let network = MemoryNetwork::new(Duration::from_millis(200)).expect("nonzero timeout");
        let names: Vec<String> = (1..=count).map(|i| format!("n{i}")).collect();
        let mut harness = Self {
            network,
            names: names.clone(),
            nodes: Vec::new(),
            engines: Vec::new(),
            config,
            admission,
            durability,
        };
        for name in &names {
            let engine = Arc::new(MemoryEngine::new());
            let node = harness.assemble(name, Arc::clone(&engine));
            harness.nodes.push(node);
            harness.engines.push(engine);
        }
        harness
    }

    /// A node on `engine`, registered on the network, knowing every member.
    fn assemble(&self, name: &str, engine: Arc<MemoryEngine>) -> Arc<NodeShared> {
        let mut settings = NodeSettings::new(id(name));
        settings.quorum = QuorumConfig::new(3, 2, 2).expect("valid quorum");
        settings.request_timeout = Duration::from_millis(400);
        settings.anti_entropy = self.config;
        settings.admission = self.admission;
        settings.durability = self.durability;
        let node = NodeShared::assemble(
            settings,
            engine,
            Arc::new(self.network.endpoint(addr(name))),
            addr(name),
        )
        .expect("assembling an in-memory node");
        self.network.register(addr(name), node.handler());
        // A restarted node found its member table on disk.
        for member in &self.names {
            if node.cluster().table().get(&id(member)).is_some() {
                continue;
            }
            node.change_membership(|table| {
                table.join(id(member), &addr(member), 1)?;
                table.mark_member(&id(member))
            })
            .expect("joining a test member");
        }
        node
    }

    fn node(&self, name: &str) -> &Arc<NodeShared> {
        let index = self.names.iter().position(|n| n == name).expect("a node");
        &self.nodes[index]
    }

    /// Replaces `name` by a node with an empty disk (a wiped or replaced volume).
    fn wipe(&mut self, name: &str) {
        self.network.unregister(&addr(name));
        let index = self.names.iter().position(|n| n == name).expect("a node");
        self.engines[index] = Arc::new(MemoryEngine::new());
        self.nodes[index] = self.assemble(name, Arc::clone(&self.engines[index]));
    }

    /// Kills `name`'s process and restarts it on what its disk kept (`mode`).
    fn crash_and_restart(&mut self, name: &str, mode: CrashMode) {
        self.network.unregister(&addr(name));
        let index = self.names.iter().position(|n| n == name).expect("a node");
        self.engines[index] = Arc::new(self.engines[index].crash(mode));
        self.nodes[index] = self.assemble(name, Arc::clone(&self.engines[index]));
    }

    async fn put(&self, through: &str, key: &str, value: &str) {
        self.node(through)
            .coordinator()
            .put(
                key.as_bytes(),
                Context::new(),
                Some(value.as_bytes().to_vec()),
                None,
            )
            .await
            .expect("put");
    }

    async fn delete(&self, through: &str, key: &str) {
        let node = self.node(through);
        let current = node.store().read(key.as_bytes()).expect("read");
        node.coordinator()
            .put(key.as_bytes(), current.context(), None, None)
            .await
            .expect("delete");
    }

    fn stored(&self, name: &str, key: &str) -> SiblingSet {
        self.node(name).store().read(key.as_bytes()).expect("read")
    }

    /// Runs rounds on `name` (random values 0, 1, 2, ...) until `done` holds.
    async fn rounds_until(&self, name: &str, now: Millis, done: impl Fn(&Self) -> bool) -> u64 {
        for round in 0..MAX_ROUNDS {
            if done(self) {
                return round;
            }
            self.node(name).antientropy_round(round, now).await;
        }
        assert!(
            done(self),
            "not converged after {MAX_ROUNDS} rounds on {name}"
        );
        MAX_ROUNDS
    }

    /// Waits for the coordinator's background replica writes to land everywhere they
    /// can (the test network delivers them within the call timeout).
    async fn settle(&self, keys: &[String]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            let reachable = self
                .names
                .iter()
                .filter(|n| !self.network_isolated(n))
                .collect::<Vec<_>>();
            if keys
                .iter()
                .all(|key| reachable.iter().all(|n| !self.stored(n, key).is_empty()))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn network_isolated(&self, name: &str) -> bool {
        format!("{:?}", self.network).contains(&format!("isolated: {name}"))
    }
}

fn config() -> AntiEntropyConfig {
    AntiEntropyConfig {
        interval: Duration::from_secs(3600),
        ..AntiEntropyConfig::default()
    }
}

fn data(state: &SiblingSet) -> Vec<String> {
    let mut values: Vec<String> = state
        .values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    values.sort();
    values
}

/// The tree a full rebuild of `node`'s data would give for `range` at `depth`.
fn rebuilt_root(node: &NodeShared, range: TokenRange, depth: u8) -> [u8; 16] {
    let page = node
        .store()
        .scan(range, None, 1_000_000, usize::MAX)
        .expect("scan");
    MerkleTree::from_entries(
        range,
        depth,
        page.entries.iter().map(|(k, s)| (k.clone(), s.digest())),
    )
    .expect("tree")
    .root()
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_missed_writes_converges_through_rounds_alone() {
    let harness = Harness::new(3, config());
    for node in &harness.nodes {
        node.refresh_trees().await;
    }
    // n3 never hears of these writes: its links are cut, and with three nodes and N=3
    // there is no stand-in to hold a hint.
    harness.network.isolate(&addr("n3"));
    let keys: Vec<String> = (0..60).map(|i| format!("missed-{i}")).collect();
    for key in &keys {
        harness.put("n1", key, "v1").await;
    }
    harness.network.reconnect(&addr("n3"));
    assert!(keys.iter().all(|k| harness.stored("n3", k).is_empty()));
    for node in &harness.nodes {
        assert!(
            node.store().engine().hint_targets().unwrap().is_empty(),
            "no hints: only anti-entropy can repair"
        );
    }

    harness
        .rounds_until("n3", Millis(0), |h| {
            keys.iter().all(|k| data(&h.stored("n3", k)) == ["v1"])
        })
        .await;
    let stats = harness.node("n3").metrics().anti_entropy_stats();
    assert_eq!(stats.keys_pulled, 60);
    assert_eq!(stats.keys_pushed, 0);
    // The trees agree again: the next exchange finds nothing to do.
    let report = harness.node("n3").antientropy_round(0, Millis(0)).await;
    assert_eq!(report.differing_buckets, 0, "{report:?}");
    assert!(!report.failed);
}

#[tokio::test(start_paused = true)]
async fn a_wiped_replica_is_refilled_and_its_trees_match_its_data() {
    let mut harness = Harness::new(3, config());
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        harness.put("n1", key, key).await;
    }
    harness.settle(&keys).await;
    harness.wipe("n3");
    let n3 = harness.node("n3");
    assert_eq!(n3.store().engine().approximate_len(), 0);
    n3.refresh_trees().await;
    for node in ["n1", "n2"] {
        harness.node(node).refresh_trees().await;
    }

    harness
        .rounds_until("n3", Millis(0), |h| {
            keys.iter().all(|k| data(&h.stored("n3", k)) == [k.clone()])
        })
        .await;
    // Trees maintained write by write equal trees rebuilt from the data.
    let range = TokenRange::full();
    let depth = super::plan::FULL_RING_DEPTH;
    for node in &harness.nodes {
        let root = node
            .antientropy()
            .trees()
            .root(range)
            .expect("a ready tree");
        assert_eq!(root, rebuilt_root(node, range, depth));
        assert_eq!(
            root,
            harness.nodes[0].antientropy().trees().root(range).unwrap()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn only_the_differing_buckets_are_compared_and_moved() {
    let harness = Harness::new(3, config());
    let keys: Vec<String> = (0..500).map(|i| format!("bulk-{i}")).collect();
    for key in &keys {
        harness.put("n1", key, "v").await;
    }
    harness.settle(&keys).await;
    harness.network.isolate(&addr("n3"));
    let missed = ["late-a", "late-b", "late-c"];
    for key in missed {
        harness.put("n1", key, "late").await;
    }
    harness.network.reconnect(&addr("n3"));
    for node in &harness.nodes {
        node.refresh_trees().await;
    }

    let report = harness.node("n3").antientropy_round(0, Millis(0)).await;
    assert!(!report.failed, "{report:?}");
    assert_eq!(report.keys_pulled, 3, "{report:?}");
    assert_eq!(report.keys_pushed, 0, "{report:?}");
    // 503 keys over 2^14 buckets: the three missed keys sit in (almost surely) three
    // buckets holding nothing else, so only they are compared, not the 500 in sync.
    assert!((1..=3).contains(&report.differing_buckets), "{report:?}");
    assert!(report.keys_compared <= 6, "{report:?}");
    for key in missed {
        assert_eq!(data(&harness.stored("n3", key)), ["late"]);
    }
}

#[tokio::test(start_paused = true)]
async fn newer_versions_flow_both_ways_and_concurrent_ones_become_siblings() {
    let harness = Harness::new(3, config());
    for node in &harness.nodes {
        node.refresh_trees().await;
    }
    // A key only n3 has, and one where n3 and the others wrote concurrently.
    harness.network.isolate(&addr("n3"));
    harness.put("n1", "both", "from-n1").await;
    harness.network.reconnect(&addr("n3"));
    harness
        .network
        .partition(&[&addr("n3")], &[&addr("n1"), &addr("n2")]);
    let n3 = harness.node("n3");
    let state = n3
        .store()
        .coordinate(
            b"both",
            &Context::new(),
            crate::version::Value::data(&b"from-n3"[..]),
            Millis(1),
            Durability::Sync,
        )
        .expect("local write")
        .state;
    n3.store()
        .coordinate(
            b"only-n3",
            &Context::new(),
            crate::version::Value::data(&b"mine"[..]),
            Millis(1),
            Durability::Sync,
        )
        .expect("local write");
    assert_eq!(data(&state), ["from-n3"]);
    harness.network.heal_all();

    // Rounds on n3 alone carry its versions out and the others' in.
    harness
        .rounds_until("n3", Millis(0), |h| {
            ["n1", "n2", "n3"].iter().all(|n| {
                data(&h.stored(n, "both")) == ["from-n1", "from-n3"]
                    && data(&h.stored(n, "only-n3")) == ["mine"]
            })
        })
        .await;
    let stats = n3.metrics().anti_entropy_stats();
    assert!(
        stats.keys_pushed >= 2 && stats.keys_pulled >= 1,
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_round_stops_at_its_key_budget_and_the_next_round_continues() {
    let harness = Harness::new(
        3,
        AntiEntropyConfig {
            max_keys_per_round: 5,
            ..config()
        },
    );
    for node in &harness.nodes {
        node.refresh_trees().await;
    }
    harness.network.isolate(&addr("n3"));
    let keys: Vec<String> = (0..12).map(|i| format!("budget-{i}")).collect();
    for key in &keys {
        harness.put("n1", key, "v").await;
    }
    harness.network.reconnect(&addr("n3"));
    let first = harness.node("n3").antientropy_round(0, Millis(0)).await;
    assert_eq!(first.keys_pulled, 5, "{first:?}");
    assert!(first.budget_exhausted);
    let rounds = harness
        .rounds_until("n3", Millis(0), |h| {
            keys.iter().all(|k| !h.stored("n3", k).is_empty())
        })
        .await;
    assert!(rounds >= 2, "12 keys at 5 per round take at least 3 rounds");
}

#[tokio::test(start_paused = true)]
async fn the_shared_background_budget_caps_a_round_below_its_own_limit() {
    // Admission control: anti-entropy draws one unit per key from the budget it shares
    // with hinted handoff and range transfer, so a spent budget stops a round early.
    let admission = crate::admission::AdmissionConfig::new(
        Duration::from_millis(100),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        3,
        3,
    )
    .expect("valid admission config");
    let harness = Harness::with_admission(3, config(), admission);
    for node in &harness.nodes {
        node.refresh_trees().await;
    }
    harness.network.isolate(&addr("n3"));
    for i in 0..10 {
        harness.put("n1", &format!("admitted-{i}"), "v").await;
    }
    harness.network.reconnect(&addr("n3"));
    let n3 = harness.node("n3");
    let first = n3.antientropy_round(0, Millis(0)).await;
    assert_eq!(first.keys_pulled, 3, "3 units in the interval: {first:?}");
    assert!(first.budget_exhausted);
    // The interval (an hour) has not passed: nothing left for another round.
    let second = n3.antientropy_round(0, Millis(0)).await;
    assert_eq!(second.keys_pulled, 0, "{second:?}");
    assert!(
        n3.metrics()
            .encode()
            .contains(r#"dynamo_background_granted_total{kind="anti_entropy"} 3"#),
        "grants show in /metrics"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tombstone_is_purged_from_every_replica_only_when_all_hold_it() {
    let harness = Harness::new(3, config());
    for node in &harness.nodes {
        node.refresh_trees().await;
    }
    let key = "deleted";
    harness.put("n1", key, "v").await;
    harness.settle(&[key.to_owned()]).await;
    let replicas = harness.nodes[0]
        .cluster()
        .ring()
        .preference_list_for_key(key.as_bytes(), 3);
    let purger = replicas[0].to_string();
    let others: Vec<String> = replicas[1..].iter().map(|n| n.to_string()).collect();

    // One replica misses the delete and keeps the live value.
    harness.network.isolate(&addr(&others[1]));
    harness.delete(&purger, key).await;
    harness.network.reconnect(&addr(&others[1]));
    let tombstone = harness.stored(&purger, key);
    assert!(tombstone.tombstone_only());
    assert_eq!(harness.stored(&others[0], key), tombstone);
    assert_eq!(data(&harness.stored(&others[1], key)), ["v"]);

    // Rounds on the purger that exchange with the in-sync replica only, so the stale
    // one stays stale.
    let in_sync = id(&others[0]);
    let random = (0..64)
        .find(|&r| {
            let ready = harness.node(&purger).antientropy().trees().ready_specs();
            super::plan::choose_exchange(&ready, &id(&purger), |_| true, r)
                .is_some_and(|(_, peer)| *peer == in_sync)
        })
        .expect("some value picks the in-sync peer");
    // Not yet past the grace period: nothing is purged.
    let report = harness
        .node(&purger)
        .antientropy_round(random, Millis(0))
        .await;
    assert_eq!(report.tombstones_purged, 0);
    assert_eq!(data(&harness.stored(&others[1], key)), ["v"]);

    // Past the grace period, the stale replica blocks the purge.
    let report = harness
        .node(&purger)
        .antientropy_round(random, FAR_FUTURE)
        .await;
    assert_eq!(report.tombstones_purged, 0, "{report:?}");
    assert_eq!(data(&harness.stored(&others[1], key)), ["v"]);
    assert!(harness.stored(&purger, key).tombstone_only());

    // A replica that is down keeps its copy, and nothing is purged anywhere.
    harness.network.unregister(&addr(&others[0]));
    harness
        .node(&others[1])
        .antientropy_round(0, Millis(0))
        .await;
    for round in 0..4 {
        let report = harness
            .node(&purger)
            .antientropy_round(round, FAR_FUTURE)
            .await;
        assert_eq!(report.tombstones_purged, 0, "{report:?}");
    }
    harness
        .network
        .register(addr(&others[0]), harness.node(&others[0]).handler());

    // Once every replica holds the tombstone, the purge goes through: the stale
    // replica is repaired by a round, then the key leaves all three.
    harness
        .rounds_until(&purger, FAR_FUTURE, |h| {
            h.nodes
                .iter()
                .all(|n| n.store().read(key.as_bytes()).unwrap().is_empty())
        })
        .await;
    assert_eq!(
        harness
            .node(&purger)
            .metrics()
            .anti_entropy_stats()
            .tombstones_purged,
        1
    );
    // The delete never comes back: more rounds everywhere, then a quorum read.
    for node in &harness.nodes {
        for round in 0..3 {
            node.antientropy_round(round, FAR_FUTURE).await;
        }
    }
    for name in &harness.names {
        assert!(
            harness.stored(name, key).is_empty(),
            "{name} holds {key} again"
        );
    }
    let read = harness.nodes[0]
        .coordinator()
        .get(key.as_bytes(), None)
        .await
        .expect("get");
    assert!(read.is_deleted());
    // Trees lost the key too: all three agree with a rebuild.
    for node in &harness.nodes {
        let root = node.antientropy().trees().root(TokenRange::full()).unwrap();
        assert_eq!(
            root,
            rebuilt_root(node, TokenRange::full(), super::plan::FULL_RING_DEPTH)
        );
    }
}

/// A replica that received the tombstone by repair, in buffered mode, confirms the
/// purge and then crashes losing its unflushed writes: it must come back with the
/// tombstone (or nothing), never with the value the delete superseded, which no
/// replica could supersede any more (Dynamo §4.4 deletes; found by the simulator's
/// purge-during-faults runs).
#[tokio::test(start_paused = true)]
async fn a_purge_survives_a_replica_losing_its_unflushed_writes() {
    let mut harness = Harness::buffered(3, config());
    for node in &harness.nodes {
        node.refresh_trees().await;
    }
    let key = "deleted";
    harness.put("n1", key, "v").await;
    harness.settle(&[key.to_owned()]).await;
    let replicas = harness.nodes[0]
        .cluster()
        .ring()
        .preference_list_for_key(key.as_bytes(), 3);
    let purger = replicas[0].to_string();
    let stale = replicas[2].to_string();

    // The stale replica misses the delete; everything written so far is on disk, so
    // its disk holds the live value.
    harness.network.isolate(&addr(&stale));
    harness.delete(&purger, key).await;
    harness.network.reconnect(&addr(&stale));
    for engine in &harness.engines {
        engine.flush().expect("flush");
    }
    assert_eq!(data(&harness.stored(&stale, key)), ["v"]);

    // Rounds repair it (an unflushed merge in buffered mode) and purge the key.
    harness
        .rounds_until(&purger, FAR_FUTURE, |h| {
            h.nodes
                .iter()
                .all(|n| n.store().read(key.as_bytes()).unwrap().is_empty())
        })
        .await;

    // The repaired replica crashes losing what it had not flushed, and restarts.
    harness.crash_and_restart(&stale, CrashMode::LoseUnflushed);
    let back = harness.stored(&stale, key);
    assert!(
        back.is_empty() || back.tombstone_only(),
        "{stale} came back with {:?}",
        data(&back)
    );
    // Whatever it kept, rounds everywhere do not bring the value back.
    for node in harness.nodes.clone() {
        node.refresh_trees().await;
        for round in 0..6 {
            node.antientropy_round(round, FAR_FUTURE).await;
        }
    }
    for name in &harness.names {
        assert!(
            data(&harness.stored(name, key)).is_empty(),
            "{name} holds the deleted value again"
        );
    }
    let read = harness
        .node(&purger)
        .coordinator()
        .get(key.as_bytes(), Some(3))
        .await
        .expect("get");
    assert!(read.values().next().is_none(), "the delete came back");
}

#[tokio::test(start_paused = true)]
async fn live_keys_are_never_purged_even_with_a_matching_digest() {
    let harness = Harness::new(3, config());
    harness.put("n1", "live", "v").await;
    harness.settle(&["live".to_owned()]).await;
    let state = harness.stored("n2", "live");
    let transport = harness.network.endpoint("tester");
    let removed = transport
        .purge_tombstone(&addr("n2"), b"live", state.digest())
        .await
        .unwrap();
    assert!(!removed);
    assert_eq!(data(&harness.stored("n2", "live")), ["v"]);
    let error = transport
        .purge_tombstone(&addr("n2"), &vec![b'k'; 5000], [0; 16])
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            TransportError::Rejected {
                error: ReplicaError::InvalidArgument(_),
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn merkle_requests_for_trees_a_node_lacks_are_refused_clearly() {
    let harness = Harness::new(3, config());
    let transport = harness.network.endpoint("tester");
    let query = |range: TokenRange, depth: u8| MerkleQuery {
        range,
        depth,
        level: 0,
        indices: vec![0],
    };
    // No trees yet: refused, naming the range.
    let error = transport
        .merkle_hashes(&addr("n1"), query(TokenRange::full(), 14))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TransportError::Rejected { error: ReplicaError::InvalidArgument(m), .. } if m.contains("no Merkle tree")),
        "{error:?}"
    );
    // A tree known but not built yet: unavailable, try later.
    let n1 = harness.node("n1");
    let specs = super::plan::tree_specs(
        &n1.cluster().ring(),
        &id("n1"),
        3,
        super::plan::FULL_RING_DEPTH,
    );
    assert_eq!(
        n1.antientropy().trees().reconcile(&specs),
        vec![TokenRange::full()]
    );
    let error = transport
        .merkle_hashes(&addr("n1"), query(TokenRange::full(), 14))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TransportError::Rejected { error: ReplicaError::Unavailable(m), .. } if m.contains("being built")),
        "{error:?}"
    );
    harness.node("n1").refresh_trees().await;
    let hashes = transport
        .merkle_hashes(&addr("n1"), query(TokenRange::full(), 14))
        .await
        .unwrap();
    assert_eq!(hashes.len(), 1);
    for (range, depth, needle) in [
        (TokenRange::new(Token(1), Token(2)), 14, "no Merkle tree"),
        (TokenRange::full(), 13, "depth 14, not 13"),
    ] {
        let error = transport
            .merkle_hashes(&addr("n1"), query(range, depth))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, TransportError::Rejected { error: ReplicaError::InvalidArgument(m), .. } if m.contains(needle)),
            "{error:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn disabled_anti_entropy_keeps_no_trees() {
    let harness = Harness::new(
        3,
        AntiEntropyConfig {
            interval: Duration::ZERO,
            ..config()
        },
    );
    harness.put("n1", "k", "v").await;
    let node = harness.node("n1");
    node.refresh_trees().await;
    let report = node.antientropy_round(0, Millis(0)).await;
    assert_eq!(report, super::RoundReport::default());
    assert_eq!(
        node.antientropy().trees().counts(),
        super::TreeCounts::default()
    );
}

#[tokio::test(start_paused = true)]
async fn a_shallower_tree_depth_builds_smaller_trees_that_still_repair_a_wiped_replica() {
    let mut harness = Harness::new(
        3,
        AntiEntropyConfig {
            tree_depth: 4,
            ..config()
        },
    );
    for i in 0..40 {
        harness.put("n1", &format!("k{i}"), &format!("v{i}")).await;
    }
    harness.wipe("n3");
    for node in &harness.nodes {
        node.refresh_trees().await;
        let specs = node.antientropy().trees().ready_specs();
        assert!(!specs.is_empty());
        // Three nodes, three replicas: one tree over the whole ring, 2^4 buckets.
        assert!(specs.iter().all(|spec| spec.depth == 4), "{specs:?}");
    }
    harness
        .rounds_until("n3", Millis(0), |h| {
            (0..40).all(|i| !h.stored("n3", &format!("k{i}")).is_empty())
        })
        .await;
    for i in 0..40 {
        assert_eq!(
            harness.stored("n3", &format!("k{i}")),
            harness.stored("n1", &format!("k{i}"))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_tree_built_in_budgeted_pieces_matches_the_data_including_writes_made_meanwhile() {
    // Admission control for tree builds: 5 units (80 keys) per 50 ms interval (real
    // time: the budget runs on the system clock), so a build of 600 keys must pause and
    // resume several times; the writes made while it is paused land on both sides of
    // its cursor.
    let admission = crate::admission::AdmissionConfig::new(
        Duration::from_millis(100),
        Duration::from_secs(3600),
        Duration::from_millis(50),
        5,
        5,
    )
    .expect("valid admission config");
    let harness = Harness::with_admission(3, config(), admission);
    let keys: Vec<String> = (0..600).map(|i| format!("piece-{i}")).collect();
    for key in &keys {
        harness.put("n1", key, "v").await;
    }
    harness.settle(&keys).await;
    let n1 = harness.node("n1");
    let range = TokenRange::full();
    let depth = super::plan::FULL_RING_DEPTH;

    let first = n1.refresh_trees().await;
    assert!(first.paused, "600 keys do not fit one interval: {first:?}");
    assert!(!first.finished);
    assert!(
        first.keys_hashed > 0 && first.keys_hashed < 600,
        "{first:?}"
    );
    assert_eq!(n1.antientropy().trees().root(range), None, "not ready yet");
    assert!(
        matches!(
            n1.antientropy().trees().hashes(range, depth, 0, &[0]),
            Err(super::TreeLookupError::Building(_))
        ),
        "a paused build takes no part in exchanges"
    );
    assert!(
        !n1.metrics()
            .encode()
            .contains(r#"dynamo_background_granted_total{kind="tree_build"} 0"#),
        "tree_build grants show in /metrics"
    );

    // Writes while the build is paused: new keys, overwrites and deletes, spread over
    // the ring, so some fall behind the scan's cursor and some ahead of it.
    for i in 0..60 {
        harness.put("n1", &format!("meanwhile-{i}"), "new").await;
    }
    for i in (0..600).step_by(10) {
        harness
            .put("n1", &format!("piece-{i}"), "overwritten")
            .await;
    }
    for i in (5..600).step_by(50) {
        harness.delete("n1", &format!("piece-{i}")).await;
    }

    // Resume until done: each call hashes at most what the budget grants.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut calls = 1;
    let mut hashed = first.keys_hashed;
    loop {
        let progress = n1.refresh_trees().await;
        calls += 1;
        hashed += progress.keys_hashed;
        if progress.finished {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build did not finish within 20 s ({calls} calls, {hashed} keys hashed)"
        );
        // Wait (real time) for the budget's next interval before asking again.
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        hashed >= 600,
        "every key hashed at least once: {hashed} in {calls} calls"
    );
    // The pieces add up to the tree one scan of the data would build.
    assert_eq!(
        n1.antientropy().trees().root(range),
        Some(rebuilt_root(n1, range, depth))
    );
    // And it stays exact: writes after the build count too.
    harness.put("n1", "after-build", "v").await;
    assert_eq!(
        n1.antientropy().trees().root(range),
        Some(rebuilt_root(n1, range, depth))
    );
}
