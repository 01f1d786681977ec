//! Coordinator tests over the in-memory network with faults: several complete nodes
//! (store, cluster view, coordinator, peer handler) in one process, talking through a
//! [`MemoryNetwork`] whose links the tests cut, delay and drop.
//!
//! Time is real: the coordinator's quorum deadlines come from the node's [`Clock`]
//! (std `Instant`), which a paused tokio clock would not move, so the tests use short
//! timeouts (a few hundred milliseconds) and wait for background work (late replica
//! writes, read repair) by polling with a bounded deadline, never by sleeping a fixed
//! time and hoping.
//!
//! [`Clock`]: crate::cluster::Clock

use crate::version::context::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CoordinatorError;
use crate::NodeId;
use crate::node::{NodeSettings, NodeShared};
use crate::quorum::QuorumConfig;
use crate::storage::{Durability, MemoryEngine, StorageEngine, StorageError, UpdateFn};
use crate::transport::{MemoryNetwork, ReplicaError};
use crate::version::SiblingSet;

/// Deadline of one client request on every node.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

/// The network's per-call timeout: shorter than the request timeout, so a lost message
/// fails over to another node before the request's deadline.
const CALL_TIMEOUT: Duration = Duration::from_millis(150);

/// How long background work (late replica writes, read repair, hint delivery) may take
/// to show up before a test gives up.
const SETTLE: Duration = Duration::from_secs(2);

/// Several nodes named `n1..nN` at addresses `n1:1..nN:1` on one in-memory network,
/// every one a member in every node's table.
struct Harness {
    network: MemoryNetwork,
    nodes: Vec<Arc<NodeShared>>,
}

fn id(name: &str) -> NodeId {
    NodeId::new(name).expect("valid test node id")
}

/// A node's address on the test network.
fn addr(node: &NodeId) -> String {
    format!("{node}:1")
}

/// The data values of a state, sorted, as strings (tests write UTF-8 values).
fn values(state: &SiblingSet) -> Vec<String> {
    let mut values: Vec<String> = state
        .values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    values.sort();
    values
}

/// Polls `condition` until it holds or [`SETTLE`] passes; returns whether it held.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() > SETTLE {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Harness {
    /// `n_nodes` nodes with default settings, `quorum` and the test timeouts.
    fn new(n_nodes: usize, quorum: QuorumConfig) -> Self {
        Self::build(n_nodes, quorum, CALL_TIMEOUT, |_| {})
    }

    /// Like [`Harness::new`], with the network's call timeout and each node's settings
    /// adjustable (`adjust` sees every node's settings, node id included).
    fn build(
        n_nodes: usize,
        quorum: QuorumConfig,
        call_timeout: Duration,
        adjust: impl Fn(&mut NodeSettings),
    ) -> Self {
        Self::build_with_engines(n_nodes, quorum, call_timeout, adjust, |_| {
            Arc::new(MemoryEngine::new())
        })
    }

    /// Like [`Harness::build`], with each node's storage engine from `engine`.
    fn build_with_engines(
        n_nodes: usize,
        quorum: QuorumConfig,
        call_timeout: Duration,
        adjust: impl Fn(&mut NodeSettings),
        engine: impl Fn(&NodeId) -> Arc<dyn StorageEngine>,
    ) -> Self {
        let network = MemoryNetwork::new(call_timeout).expect("nonzero call timeout");
        let ids: Vec<NodeId> = (1..=n_nodes).map(|i| id(&format!("n{i}"))).collect();
        let nodes: Vec<Arc<NodeShared>> = ids
            .iter()
            .map(|node| {
                let mut settings = NodeSettings::new(node.clone());
                settings.quorum = quorum;
                settings.request_timeout = REQUEST_TIMEOUT;
                adjust(&mut settings);
                let shared = NodeShared::assemble(
                    settings,
                    engine(node),
                    Arc::new(network.endpoint(addr(node))),
                    addr(node),
                )
                .expect("assembling an in-memory node");
                network.register(addr(node), shared.handler());
                shared
            })
            .collect();
        // The same changes, in the same order, on every table: the tables come out
        // identical without waiting for gossip.
        for shared in &nodes {
            for member in &ids {
                shared
                    .change_membership(|table| {
                        table.join(member.clone(), &addr(member), 1)?;
                        table.mark_member(member)
                    })
                    .expect("joining a test member");
            }
        }
        let digest = nodes[0].cluster().table().digest();
        assert!(
            nodes.iter().all(|n| n.cluster().table().digest() == digest),
            "every node sees the same member table"
        );
        Self { network, nodes }
    }

    fn node(&self, node: &NodeId) -> &Arc<NodeShared> {
        self.nodes
            .iter()
            .find(|n| n.cluster().me() == node)
            .expect("a node of the harness")
    }

    /// Every node clockwise from `key`, home replicas first (all tables agree).
    fn extended(&self, key: &[u8]) -> Vec<NodeId> {
        self.nodes[0].cluster().extended_preference_list(key)
    }

    /// The key's N home replicas.
    fn home(&self, key: &[u8]) -> Vec<NodeId> {
        let n = usize::try_from(self.nodes[0].coordinator().quorum().n()).expect("small n");
        self.extended(key).into_iter().take(n).collect()
    }

    /// The first key `prefix-0`, `prefix-1`, ... whose home replicas satisfy `wanted`.
    fn key_where(&self, prefix: &str, wanted: impl Fn(&[NodeId]) -> bool) -> Vec<u8> {
        (0..10_000)
            .map(|i| format!("{prefix}-{i}").into_bytes())
            .find(|key| wanted(&self.home(key)))
            .expect("some key has the wanted home replicas")
    }

    /// The values `node` stores for `key`.
    fn stored(&self, node: &NodeId, key: &[u8]) -> Vec<String> {
        values(
            &self
                .node(node)
                .store()
                .read(key)
                .expect("reading the store"),
        )
    }

    async fn put(
        &self,
        through: &NodeId,
        key: &[u8],
        value: &str,
        w: Option<u32>,
    ) -> Result<Context, CoordinatorError> {
        self.node(through)
            .coordinator()
            .put(key, Context::new(), Some(value.as_bytes().to_vec()), w)
            .await
    }

    async fn get(
        &self,
        through: &NodeId,
        key: &[u8],
        r: Option<u32>,
    ) -> Result<SiblingSet, CoordinatorError> {
        self.node(through).coordinator().get(key, r).await
    }

    /// Writes "v1" to a `prefix` key with W=2 through its first home replica while that
    /// one is cut off from the third, which so misses the write; then heals the cut.
    /// Returns the key and its home replicas.
    async fn write_v1_missing_the_third_replica(&self, prefix: &str) -> (Vec<u8>, Vec<NodeId>) {
        let key = self.key_where(prefix, |_| true);
        let home = self.home(&key);
        let (coordinator, stale) = (&home[0], &home[2]);
        self.network.cut(&addr(coordinator), &addr(stale));
        self.put(coordinator, &key, "v1", Some(2))
            .await
            .expect("W=2 from the other replicas");
        assert!(
            eventually(|| self.stored(&home[1], &key) == ["v1"]).await,
            "the healthy replica stores the write"
        );
        assert!(self.stored(stale, &key).is_empty(), "{stale} missed it");
        self.network.heal(&addr(coordinator), &addr(stale));
        (key, home)
    }
}

fn quorum_3_2_2() -> QuorumConfig {
    QuorumConfig::new(3, 2, 2).expect("valid quorum")
}

/// The state of a key's first write, of `value`, by `actor`, written now (a hint
/// holding a version from 1970 would be dropped as too old to deliver).
fn first_version(value: Vec<u8>, actor: &crate::version::Actor) -> SiblingSet {
    let mut state = SiblingSet::new();
    state
        .put(
            &Context::new(),
            crate::version::Value::data(value),
            actor,
            crate::cluster::Clock::default().wall(),
            &crate::version::SiblingLimits::default(),
        )
        .expect("a first put");
    state
}

fn expect_quorum_error(result: Result<impl std::fmt::Debug, CoordinatorError>) -> String {
    match result {
        Err(error @ CoordinatorError::Quorum(_)) => error.to_string(),
        other => panic!("expected a quorum error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_put_through_a_node_outside_the_preference_list_is_coordinated_by_a_home_replica() {
    // Dynamo §4.5: a node that is not among the key's top N forwards the write to one
    // that is; only the preference list ends up holding the key.
    let harness = Harness::new(5, quorum_3_2_2());
    let n1 = id("n1");
    let key = harness.key_where("forward", |home| !home.contains(&n1));
    let home = harness.home(&key);

    harness.put(&n1, &key, "v1", None).await.expect("put");

    for replica in &home {
        assert!(
            eventually(|| harness.stored(replica, &key) == ["v1"]).await,
            "home replica {replica} holds the value"
        );
    }
    assert!(
        harness.stored(&n1, &key).is_empty(),
        "the forwarding node keeps no copy"
    );
    let read = harness.get(&n1, &key, None).await.expect("get");
    assert_eq!(values(&read), ["v1"]);
}

#[tokio::test]
async fn an_isolated_home_replica_gets_its_write_by_hinted_handoff_after_it_returns() {
    // Dynamo §4.6: with a home replica unreachable the write goes to the next node on
    // the ring with a hint naming the home; the stand-in hands it over once the home
    // is back, then drops the hint.
    let harness = Harness::new(5, quorum_3_2_2());
    let key = harness.key_where("handoff", |_| true);
    let extended = harness.extended(&key);
    let (coordinator, down, stand_in) = (&extended[0], &extended[1], &extended[3]);
    harness.network.isolate(&addr(down));

    harness
        .put(coordinator, &key, "v1", Some(2))
        .await
        .expect("a sloppy quorum of two is reachable");

    assert!(
        eventually(|| harness.stored(stand_in, &key) == ["v1"]).await,
        "the stand-in {stand_in} stores the write"
    );
    let stand_in_store = harness.node(stand_in).store();
    let hints = stand_in_store.hints_for(down, None, 10).expect("hints");
    assert_eq!(hints.len(), 1, "one hint for {down}");
    assert_eq!(hints[0].key, key);
    assert_eq!(values(&hints[0].state), ["v1"]);
    assert!(harness.stored(down, &key).is_empty());

    harness.network.reconnect(&addr(down));
    // The stand-in never called the isolated node, so it is not believed down and the
    // first round delivers; a few rounds leave room for a probe.
    for _ in 0..5 {
        harness.node(stand_in).handoff_round().await;
        if stand_in_store
            .hints_for(down, None, 10)
            .expect("hints")
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        harness.stored(down, &key),
        ["v1"],
        "the home replica has it"
    );
    assert!(
        stand_in_store
            .hints_for(down, None, 10)
            .expect("hints")
            .is_empty(),
        "the delivered hint is gone"
    );
}

#[tokio::test]
async fn a_replica_that_missed_a_write_is_repaired_by_a_quorum_read() {
    // Dynamo §5: "read repair" — the coordinator of a get writes the merged state back
    // to replicas that answered with an older one.
    let harness = Harness::new(5, quorum_3_2_2());
    let (key, home) = harness.write_v1_missing_the_third_replica("repair").await;
    let stale = &home[2];
    // Coordinated by the stale replica: it reads every replica (the default fanout),
    // sees them disagree, and repairs itself.
    let read = harness.get(stale, &key, Some(2)).await.expect("get");
    assert_eq!(values(&read), ["v1"]);
    assert!(
        eventually(|| harness.stored(stale, &key) == ["v1"]).await,
        "read repair brought {stale} up to date"
    );
}

#[tokio::test]
async fn by_default_a_get_asks_every_replica_and_repairs_one_the_quorum_did_not_need() {
    // Dynamo §4.5: the coordinator asks all N and answers after R. The two replicas that
    // agree answer first, yet the stale third one is read and repaired too.
    let harness = Harness::new(5, quorum_3_2_2());
    let (key, home) = harness
        .write_v1_missing_the_third_replica("asked-anyway")
        .await;
    let (coordinator, stale) = (&home[0], &home[2]);

    let read = harness.get(coordinator, &key, Some(2)).await.expect("get");
    assert_eq!(values(&read), ["v1"]);
    assert!(
        eventually(|| harness.stored(stale, &key) == ["v1"]).await,
        "the default read of all N repaired {stale}"
    );
}

#[tokio::test]
async fn a_quorum_fanout_read_asks_r_replicas_and_a_read_of_all_n_repairs_the_one_not_asked() {
    // With `read-fanout: quorum` a get reads R replicas first (the coordinator's own among
    // them); while they agree a stale replica it did not ask stays stale (anti-entropy's
    // job), and a get with R = N, as the client sends for read repair, reads and repairs
    // every replica.
    let harness = Harness::build(5, quorum_3_2_2(), CALL_TIMEOUT, |settings| {
        settings.read_fanout = crate::coordinator::ReadFanout::Quorum;
    });
    let (key, home) = harness
        .write_v1_missing_the_third_replica("not-asked")
        .await;
    let (coordinator, stale) = (&home[0], &home[2]);

    let read = harness.get(coordinator, &key, Some(2)).await.expect("get");
    assert_eq!(values(&read), ["v1"]);
    let read = harness
        .get(coordinator, &key, Some(2))
        .await
        .expect("get again");
    assert_eq!(values(&read), ["v1"]);
    assert!(
        harness.stored(stale, &key).is_empty(),
        "{stale} was not asked: its own replica and {} agreed",
        home[1]
    );

    let read = harness
        .get(coordinator, &key, Some(3))
        .await
        .expect("get R=3");
    assert_eq!(values(&read), ["v1"]);
    assert!(
        eventually(|| harness.stored(stale, &key) == ["v1"]).await,
        "a read of all N repaired {stale}"
    );
}

#[tokio::test]
async fn lost_messages_cost_no_acknowledged_write() {
    // Dynamo §4.6: a replica that does not answer is replaced by the next healthy node,
    // and a forwarded put whose target does not answer moves to the next home replica
    // (§4.5); either way every acknowledged write is readable afterwards.
    let harness = Harness::new(5, quorum_3_2_2());
    let n1 = id("n1");
    let mut written = Vec::new();

    // A replica write is lost: the coordinator's request to its second home replica.
    let key = harness.key_where("drop-replica", |_| true);
    let home = harness.home(&key);
    harness
        .network
        .set_drop(&addr(&home[0]), &addr(&home[1]), 1);
    harness
        .put(&home[0], &key, "lost-request", None)
        .await
        .expect("put despite a lost replica write");
    written.push((key, "lost-request", 1));

    // A forwarded put or its answer is lost: the forwarding node cannot tell which, so
    // it must not coordinate the put again elsewhere (see the next test); the client
    // hears that the outcome is unknown.
    let key = harness.key_where("drop-forward", |home| !home.contains(&n1));
    let home = harness.home(&key);
    harness.network.set_drop(&addr(&n1), &addr(&home[0]), 1);
    let lost = harness.put(&n1, &key, "lost-forward", None).await;
    assert!(
        matches!(&lost, Err(CoordinatorError::Unavailable(m)) if m.contains("may or may not")),
        "{lost:?}"
    );
    let read = harness.get(&id("n5"), &key, Some(2)).await.expect("get");
    assert!(values(&read).is_empty(), "the lost request wrote nothing");

    for (key, value, copies) in written {
        let read = harness.get(&id("n5"), &key, Some(2)).await.expect("get");
        assert_eq!(values(&read), vec![value; copies], "{value} survives");
    }
}

#[tokio::test]
async fn a_forwarded_put_whose_answer_is_lost_is_not_coordinated_twice() {
    // Regression (found by the simulator, seed 77): the forwarding node used to retry
    // a timed-out forwarded put on the next home replica. The first replica had
    // already coordinated it, so the retry wrote the same value under a second dot,
    // concurrent with whatever was written in between: a value the client had since
    // overwritten (read, then put with the read's context) came back as a sibling.
    let harness = Harness::new(5, quorum_3_2_2());
    let n1 = id("n1");
    let key = harness.key_where("drop-reply", |home| !home.contains(&n1));
    let home = harness.home(&key);
    harness.network.set_drop(&addr(&home[0]), &addr(&n1), 1);
    let put = harness.put(&n1, &key, "lost-reply", None).await;
    assert!(
        matches!(&put, Err(CoordinatorError::Unavailable(m)) if m.contains("may or may not")),
        "the outcome is unknown: {put:?}"
    );
    let read = harness.get(&id("n5"), &key, Some(3)).await.expect("get");
    assert_eq!(
        values(&read),
        ["lost-reply"],
        "the put was applied once, by the first home replica"
    );
    assert_eq!(read.len(), 1, "one version, not two siblings of one value");
}

#[tokio::test]
async fn replicas_slower_than_the_request_timeout_fail_the_quorum_with_timeouts() {
    // Dynamo §4.5: the coordinator waits for W (or R) answers only until the request's
    // deadline. The call timeout is longer than the request's, so the slow replicas
    // are still silent (not failed over) when the deadline passes.
    let harness = Harness::build(5, quorum_3_2_2(), Duration::from_secs(2), |_| {});
    let key = harness.key_where("slow", |_| true);
    let home = harness.home(&key);
    let coordinator = &home[0];
    for slow in &home[1..] {
        harness
            .network
            .set_delay(&addr(coordinator), &addr(slow), Duration::from_secs(1));
    }

    let started = Instant::now();
    let message = expect_quorum_error(harness.put(coordinator, &key, "v1", Some(2)).await);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the put gives up at its deadline"
    );
    assert!(
        message.starts_with("write quorum not reached: needed 2 acknowledgements, got 1"),
        "{message}"
    );
    for slow in &home[1..] {
        assert!(message.contains(&format!("{slow}: timeout")), "{message}");
    }

    let message = expect_quorum_error(harness.get(coordinator, &key, Some(2)).await);
    assert!(
        message.starts_with("read quorum not reached: needed 2 replies, got 1"),
        "{message}"
    );
    for slow in &home[1..] {
        assert!(message.contains(&format!("{slow}: timeout")), "{message}");
    }
}

#[tokio::test]
async fn writes_on_both_sides_of_a_partition_come_back_as_siblings() {
    // Dynamo §4.4 and §4.6: during a partition each side accepts writes for the same
    // key with a sloppy quorum; the versions are concurrent, and a read after the
    // partition heals returns both for the client to reconcile.
    let harness = Harness::new(5, quorum_3_2_2());
    let (left, right) = ([id("n1"), id("n2")], [id("n3"), id("n4"), id("n5")]);
    let spans = |home: &[NodeId]| {
        home.iter().any(|n| left.contains(n)) && home.iter().any(|n| right.contains(n))
    };
    let key = harness.key_where("split", spans);
    let minority_key = harness.key_where("split-w3", |home| home.contains(&left[0]));
    harness.network.partition(
        &[&addr(&left[0]), &addr(&left[1])],
        &[&addr(&right[0]), &addr(&right[1]), &addr(&right[2])],
    );

    harness
        .put(&left[0], &key, "left", None)
        .await
        .expect("W=2 reachable on the left");
    harness
        .put(&right[0], &key, "right", None)
        .await
        .expect("W=2 reachable on the right");
    let message = expect_quorum_error(harness.put(&left[0], &minority_key, "x", Some(3)).await);
    // The put fails as soon as three acknowledgements are out of reach, which may be
    // before or after the other left node's acknowledgement arrives.
    assert!(
        message.starts_with("write quorum not reached: needed 3 acknowledgements"),
        "the two-node side cannot reach W=3: {message}"
    );
    for unreachable in &right {
        assert!(
            message.contains(&format!("{unreachable}: {unreachable}:1 not connected")),
            "{message}"
        );
    }

    harness.network.heal_all();
    // R = N reads every home replica, which together saw both sides' writes.
    let read = harness.get(&left[1], &key, Some(3)).await.expect("get");
    assert_eq!(values(&read), ["left", "right"], "concurrent versions");
    for replica in harness.home(&key) {
        assert!(
            eventually(|| harness.stored(&replica, &key) == ["left", "right"]).await,
            "read repair gave {replica} both siblings"
        );
    }
}

#[tokio::test]
async fn a_home_replica_refusing_a_forwarded_put_is_reported_not_retried() {
    // Dynamo §4.5: the receiving node forwards; a refusal is an answer (the replica is
    // healthy), so it reaches the client instead of moving to the next home replica.
    let n1 = id("n1");
    let harness = Harness::build(5, quorum_3_2_2(), CALL_TIMEOUT, |settings| {
        if settings.node_id != n1 {
            settings.limits.max_value_bytes = 4;
        }
    });
    let key = harness.key_where("refused", |home| !home.contains(&n1));
    let home = harness.home(&key);

    let error = harness
        .put(&n1, &key, "longer than four bytes", None)
        .await
        .expect_err("the home replica refuses");
    match &error {
        CoordinatorError::Forwarded {
            address,
            error: ReplicaError::InvalidArgument(reason),
        } => {
            assert_eq!(address, &addr(&home[0]));
            assert!(reason.contains("the limit is 4"), "{reason}");
        }
        other => panic!("expected a forwarded refusal, got {other:?}"),
    }
    for node in &harness.nodes {
        assert!(
            harness.stored(node.cluster().me(), &key).is_empty(),
            "nothing was written"
        );
    }
    assert!(
        harness.nodes[0].cluster().is_available(&home[0]),
        "a refusal does not count against the replica's health"
    );
}

#[tokio::test]
async fn a_tiny_background_budget_spreads_hint_delivery_over_several_rounds() {
    // Dynamo §6.5: background work (here hinted handoff, §4.6) runs only as far as
    // the admission budget allows. With 3 units per interval and one unit per hint,
    // 12 hints cannot go out in one round: each round takes once from the budget, so
    // it delivers at most 3, and the backlog drains over at least 4 rounds.
    use crate::admission::AdmissionConfig;
    use crate::storage::Durability;
    use crate::version::Actor;

    const BUDGET: u64 = 3;
    const HINTS: usize = 12;
    let harness = Harness::build(
        2,
        QuorumConfig::new(1, 1, 1).expect("valid quorum"),
        CALL_TIMEOUT,
        |settings| {
            settings.admission = AdmissionConfig::new(
                Duration::from_millis(100),
                Duration::from_millis(10),
                Duration::from_millis(10),
                BUDGET,
                BUDGET,
            )
            .expect("valid admission config");
        },
    );
    let (stand_in, home) = (id("n1"), id("n2"));
    let store = harness.node(&stand_in).store();
    let actor = Actor::new(stand_in.clone(), 1);
    for i in 0..HINTS {
        let state = first_version(format!("v{i}").into_bytes(), &actor);
        store
            .add_hint(&home, format!("k{i}").as_bytes(), &state, Durability::Sync)
            .expect("storing a hint");
    }
    let backlog = || {
        store
            .hints_for(&home, None, HINTS + 1)
            .expect("hints")
            .len()
    };
    assert_eq!(backlog(), HINTS);

    let mut delivered_per_round = Vec::new();
    let start = Instant::now();
    while backlog() > 0 {
        assert!(
            start.elapsed() < SETTLE * 5,
            "hints still pending after {} rounds: {delivered_per_round:?}",
            delivered_per_round.len()
        );
        let before = backlog();
        harness.node(&stand_in).handoff_round().await;
        let delivered = before - backlog();
        if delivered > 0 {
            delivered_per_round.push(delivered);
        }
        // Rounds within one interval find the budget spent and deliver nothing.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        delivered_per_round
            .iter()
            .all(|&n| u64::try_from(n).unwrap() <= BUDGET),
        "no round delivers more than the budget: {delivered_per_round:?}"
    );
    assert!(
        delivered_per_round.len() >= HINTS / 3,
        "spread over several rounds: {delivered_per_round:?}"
    );
    for i in 0..HINTS {
        assert_eq!(
            harness.stored(&home, format!("k{i}").as_bytes()),
            [format!("v{i}")]
        );
    }
    let metrics = harness.node(&stand_in).metrics().encode();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"dynamo_background_granted_total{kind="handoff"} 12"#),
        "every hint was granted once:\n{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "dynamo_background_budget 3"),
        "{metrics}"
    );
}

/// A memory engine whose flushes can be made to fail (a full or failing disk), and
/// which counts them.
#[derive(Debug, Default)]
struct FailingFlush {
    inner: MemoryEngine,
    fail: std::sync::atomic::AtomicBool,
    flushes: std::sync::atomic::AtomicU64,
}

impl StorageEngine for FailingFlush {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }
    fn update(
        &self,
        key: &[u8],
        f: UpdateFn<'_>,
        durability: Durability,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self.inner.update(key, f, Durability::Buffered)?;
        if durability == Durability::Sync {
            self.flush()?;
        }
        Ok(value)
    }
    fn remove(&self, key: &[u8]) -> Result<bool, StorageError> {
        self.inner.remove(key)
    }
    fn scan(
        &self,
        range: crate::ring::TokenRange,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.inner.scan(range, after, limit)
    }
    fn approximate_len(&self) -> u64 {
        self.inner.approximate_len()
    }
    fn space(&self) -> Result<crate::storage::StorageSpace, StorageError> {
        self.inner.space()
    }
    fn hint_update(
        &self,
        target: &NodeId,
        key: &[u8],
        f: UpdateFn<'_>,
        durability: Durability,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.hint_update(target, key, f, durability)
    }
    fn hints_for(
        &self,
        target: &NodeId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.inner.hints_for(target, after, limit)
    }
    fn remove_hint_if(
        &self,
        target: &NodeId,
        key: &[u8],
        expected: &[u8],
    ) -> Result<bool, StorageError> {
        self.inner.remove_hint_if(target, key, expected)
    }
    fn hint_targets(&self) -> Result<Vec<(NodeId, u64)>, StorageError> {
        self.inner.hint_targets()
    }
    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.meta_get(name)
    }
    fn meta_put(
        &self,
        name: &str,
        value: &[u8],
        durability: Durability,
    ) -> Result<(), StorageError> {
        self.inner.meta_put(name, value, durability)
    }
    fn meta_remove(&self, name: &str) -> Result<(), StorageError> {
        self.inner.meta_remove(name)
    }
    fn flush(&self) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Backend {
                op: "flush to disk",
                source: Box::new(std::io::Error::other("disk full")),
            });
        }
        Ok(())
    }
}

impl Harness {
    /// Three nodes with `durability` and an (N, R, W) quorum, `failing` (a node id) over
    /// a [`FailingFlush`] engine (returned too, to steer it) and the others over memory
    /// engines.
    fn with_failing_flush(
        failing: &str,
        (n, r, w): (u32, u32, u32),
        durability: Durability,
    ) -> (Self, Arc<FailingFlush>) {
        let quorum = QuorumConfig::new(n, r, w).expect("valid quorum");
        let engine = Arc::new(FailingFlush::default());
        let for_failing = Arc::clone(&engine);
        let harness = Self::build_with_engines(
            3,
            quorum,
            CALL_TIMEOUT,
            |settings| settings.durability = durability,
            move |node| -> Arc<dyn StorageEngine> {
                if node.as_str() == failing {
                    Arc::clone(&for_failing) as Arc<dyn StorageEngine>
                } else {
                    Arc::new(MemoryEngine::new())
                }
            },
        );
        (harness, engine)
    }
}

/// The coordinator applies its own write in memory and replicates at once, but counts
/// it toward W only after a flush: a coordinator whose disk cannot flush is no durable
/// replica, and with W = N its put must fail.
#[tokio::test]
async fn the_coordinators_own_write_counts_only_once_flushed() {
    use std::sync::atomic::Ordering;
    for durability in [Durability::Sync, Durability::Buffered] {
        let (harness, n1_engine) = Harness::with_failing_flush("n1", (3, 2, 3), durability);
        let n1 = id("n1");
        n1_engine.fail.store(true, Ordering::SeqCst);
        let error = expect_quorum_error(harness.put(&n1, b"k", "lost", None).await);
        assert!(error.contains("not durable"), "{durability:?}: {error}");

        n1_engine.fail.store(false, Ordering::SeqCst);
        let flushes_before = n1_engine.flushes.load(Ordering::SeqCst);
        harness.put(&n1, b"k", "kept", None).await.unwrap();
        assert!(
            n1_engine.flushes.load(Ordering::SeqCst) > flushes_before,
            "{durability:?}: the acknowledged put flushed the coordinator"
        );
        assert!(harness.stored(&n1, b"k").contains(&"kept".to_owned()));
    }
}

/// A replica acknowledges a durable write (every write in sync mode) only once it is
/// flushed; in buffered mode the replicas other than the coordinator write to memory
/// and do not wait for their disk.
#[tokio::test]
async fn a_replica_acknowledges_a_durable_write_only_once_flushed() {
    use std::sync::atomic::Ordering;
    for durability in [Durability::Sync, Durability::Buffered] {
        let (harness, n2_engine) = Harness::with_failing_flush("n2", (3, 2, 3), durability);
        n2_engine.fail.store(true, Ordering::SeqCst);
        let result = harness.put(&id("n1"), b"k", "v", None).await;
        match durability {
            Durability::Sync => {
                let error = expect_quorum_error(result);
                assert!(error.contains("n2"), "{error}");
            }
            Durability::Buffered => {
                result.unwrap();
                assert_eq!(
                    n2_engine.flushes.load(Ordering::SeqCst),
                    0,
                    "a buffered replica write does not flush"
                );
            }
        }
        // Either way the write reached n2's memory.
        assert!(
            eventually(|| harness.stored(&id("n2"), b"k") == ["v"]).await,
            "{durability:?}"
        );
    }
}

/// A replica handed a batch of writes (what a peer's transport coalesces concurrent
/// writes into) applies them all and then waits for one flush covering every write that
/// must be durable; each write keeps its own result, and a failed flush fails exactly
/// the writes that needed it (Dynamo §6.1: in buffered mode only the durable replica's).
#[tokio::test]
async fn a_batch_of_replica_writes_shares_one_flush_and_each_keeps_its_result() {
    use std::sync::atomic::Ordering;

    use crate::transport::ReplicaWrite;
    use crate::version::Actor;

    let write = |key: &str, durable: bool| {
        let state = first_version(key.as_bytes().to_vec(), &Actor::new(id("n1"), 1));
        ReplicaWrite {
            key: key.as_bytes().to_vec(),
            state,
            durable,
            hint_for: None,
        }
    };
    for durability in [Durability::Sync, Durability::Buffered] {
        let (harness, n2_engine) = Harness::with_failing_flush("n2", (3, 2, 2), durability);
        let n2 = id("n2");
        let handler = harness.node(&n2).handler();
        let batch = |round: &str| {
            vec![
                write(&format!("{round}-a"), false),
                write("", true), // an invalid key: refused alone
                write(&format!("{round}-b"), true),
                write(&format!("{round}-c"), false),
            ]
        };

        let before = n2_engine.flushes.load(Ordering::SeqCst);
        let results = handler.write_batch(batch("ok")).await;
        assert_eq!(results.len(), 4);
        assert!(
            matches!(&results[1], Err(ReplicaError::InvalidArgument(m)) if m.contains("empty")),
            "{results:?}"
        );
        for index in [0, 2, 3] {
            assert_eq!(results[index], Ok(()), "{durability:?}: {results:?}");
        }
        assert_eq!(
            n2_engine.flushes.load(Ordering::SeqCst) - before,
            1,
            "{durability:?}: one flush for the whole batch"
        );
        for key in ["ok-a", "ok-b", "ok-c"] {
            assert_eq!(harness.stored(&n2, key.as_bytes()), [key], "{durability:?}");
        }

        n2_engine.fail.store(true, Ordering::SeqCst);
        let results = handler.write_batch(batch("failed")).await;
        let needed_the_flush = |index: usize| durability == Durability::Sync || index == 2;
        for index in [0, 2, 3] {
            if needed_the_flush(index) {
                assert!(
                    matches!(&results[index], Err(ReplicaError::Internal(m)) if m.contains("flush")),
                    "{durability:?}: write {index}: {results:?}"
                );
            } else {
                assert_eq!(results[index], Ok(()), "{durability:?}: {results:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_coordinator_that_removed_a_key_writes_it_again_under_a_new_actor() {
    // The simulator's seed 4000937 through the real put path: n1 coordinates e11 over
    // e5, both replicas hold it, n1 removes its copy (as the stray sweep does after a
    // range moved away) and later coordinates a blind put. The new write must be
    // concurrent with e11 on n2, not a successor that drops it; and `Admin.Status`
    // reports the renewed incarnation.
    use crate::proto::{self, admin_server::Admin as _};

    let harness = Harness::new(2, QuorumConfig::new(2, 1, 2).expect("valid quorum"));
    let (n1, n2) = (id("n1"), id("n2"));
    let key = b"set-0";
    let first = harness.put(&n1, key, "e5", None).await.expect("first put");
    harness
        .node(&n1)
        .coordinator()
        .put(key, first, Some(b"e11".to_vec()), None)
        .await
        .expect("superseding put");
    assert_eq!(harness.stored(&n2, key), ["e11"]);

    let store = harness.node(&n1).store();
    let started = store.identity().incarnation();
    let digest = store.read(key).expect("reading").digest();
    assert!(store.remove_unchanged(key, digest).expect("removing"));
    harness.put(&n1, key, "e12", None).await.expect("blind put");
    assert_eq!(harness.stored(&n2, key), ["e11", "e12"]);

    let status = harness
        .node(&n1)
        .admin_service()
        .status(tonic::Request::new(proto::StatusRequest {}))
        .await
        .expect("status")
        .into_inner();
    assert_ne!(status.incarnation, started);
    assert_eq!(status.incarnation, store.identity().incarnation());
    // And /metrics counts the renewal once the gauges are refreshed.
    let node = harness.node(&n1);
    node.refresh_gauges(&[]);
    assert!(
        node.metrics()
            .encode()
            .lines()
            .any(|line| line == "dynamo_actor_renewals_total 1"),
        "{}",
        node.metrics().encode()
    );
}
