//! The operator's membership loop, without Kubernetes: the planner and the real `Admin`
//! client drive real `dynamo-node` processes on loopback from 3 nodes to 5, raise one
//! node's weight, and go back to 3, while clients write the whole time; then the
//! history checker must find no acknowledged write lost, every replica equal, nothing
//! deleted come back, even though the two removed nodes' data directories were deleted
//! first.
//!
//! The test plays the controller's part (see `dynamo_operator::controller`) with the
//! Kubernetes objects replaced by what they stand for here:
//!
//! * the StatefulSet is the list of node processes, ordinal `i` being the node
//!   `db-<i>` (the pod names the planner maps to ordinals): growing it starts the next
//!   ordinals' processes, shrinking it stops the highest ones with SIGTERM;
//! * a pod is running while its process runs, and ready while `GET /readyz` answers 200
//!   (the StatefulSet's readiness probe);
//! * the client Service is the ready pods' client addresses, which the workload uses.
//!
//! Every pass observes (pods, and the member table through `GrpcAdmin` and the
//! controller's own `read_ring`), asks `planner::plan` for ONE step, checks it against
//! `planner::check`, and executes it (membership changes through the controller's own
//! `change_membership`), until the planner says `Done`.

use std::net::SocketAddr;
use std::time::Duration;

use dynamo_e2e::cluster::{Cluster, NodeNaming, Placement, REPLICATION};
use dynamo_e2e::workload::{Settle, Workload, WorkloadConfig, final_verdict, wait_for_converged};
use dynamo_node::history::Verdict;
use dynamo_operator::admin::{AdminTarget, GrpcAdmin, MemberView, NodeAdmin};
use dynamo_operator::builders::pod_name;
use dynamo_operator::controller::{PodStates, change_membership, read_ring};
use dynamo_operator::planner::{
    Desired, MemberState, Observed, Step, check, members_from_ring, plan,
};

/// The cluster's name: node ids are `db-0`, `db-1`, ...
const NAME: &str = "db";
/// The bound on one scaling run (every join's or leave's transfer included).
const SCALE_WAIT: Duration = Duration::from_secs(60);
/// Between passes while the planner waits (the controller's poll interval, shortened).
const POLL: Duration = Duration::from_millis(100);
/// The bound on one `Admin` call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The StatefulSet: `replicas` is its `spec.replicas`, and ordinal `i`'s pod is
/// `cluster.nodes[i]` (stopped once the set shrank below it).
struct LocalStatefulSet {
    cluster: Cluster,
    replicas: u32,
}

impl LocalStatefulSet {
    fn node(&self, ordinal: u32) -> &dynamo_e2e::process::NodeProcess {
        &self.cluster.nodes[ordinal as usize]
    }

    /// Where the operator reaches a node's `Admin` API.
    fn target(&self, ordinal: u32) -> AdminTarget {
        AdminTarget {
            url: format!("http://{}", self.node(ordinal).internode),
            token: None,
            tls: None,
        }
    }

    /// The pods' states, as `controller::pod_states` reads them from pod status.
    async fn pod_states(&self) -> PodStates {
        let mut states = PodStates::default();
        for ordinal in 0..self.replicas {
            let node = self.node(ordinal);
            if !node.is_running() {
                continue;
            }
            states.running.insert(ordinal);
            // A probe with no answer is a failed probe: not ready.
            if node.ready().await == Ok(true) {
                states.ready.insert(ordinal);
            }
        }
        states
    }

    /// Starts the pods of ordinals `replicas..to` (a pod that existed before starts on
    /// the volume it had, or an empty one if that was deleted).
    async fn grow(&mut self, to: u32) {
        for ordinal in self.replicas..to {
            let index = ordinal as usize;
            if index < self.cluster.nodes.len() {
                self.cluster.nodes[index].restart().await;
            } else {
                assert_eq!(self.cluster.add_node().await, index, "ordinals in order");
            }
        }
        self.replicas = to;
    }

    /// Stops the pods of ordinals `to..replicas`, highest first, with SIGTERM, after
    /// checking with each node itself that it is out of the ring: the planner shrinks
    /// only over removed nodes, and this is where that promise is held to account.
    async fn shrink(&mut self, to: u32, admin: &GrpcAdmin) {
        for ordinal in (to..self.replicas).rev() {
            let status = admin
                .status(&self.target(ordinal))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "status of {} before stopping it: {e}",
                        pod_name(NAME, ordinal)
                    )
                });
            assert!(
                matches!(status.state, None | Some(MemberState::Removed)),
                "the planner shrank over {} while it reports itself {:?}",
                status.node_id,
                status.state
            );
            self.cluster.nodes[ordinal as usize].terminate().await;
        }
        self.replicas = to;
    }

    fn ready_clients(&self, pods: &PodStates) -> Vec<SocketAddr> {
        pods.ready.iter().map(|&o| self.node(o).client).collect()
    }
}

/// Runs passes until the planner reports `Done` for `weights.len()` nodes with these
/// weights (the spec's per-ordinal weights), and returns the steps taken (every step
/// but `Wait`). The workload, when given, is pointed at the ready
/// pods each pass, as the client Service would route it.
///
/// # Panics
/// On a step `planner::check` rejects, a refusal, a failed `Admin` call, or when
/// [`SCALE_WAIT`] passes first (with the last step and observation).
async fn scale_to(
    set: &mut LocalStatefulSet,
    admin: &GrpcAdmin,
    weights: &[u32],
    workload: Option<&Workload>,
) -> Vec<Step> {
    let replication = u32::try_from(REPLICATION).expect("a small factor");
    let size = u32::try_from(weights.len()).expect("a small cluster");
    let desired =
        Desired::new(size, replication, weights.to_vec()).expect("a valid desired cluster");
    let started = tokio::time::Instant::now();
    let deadline = started + SCALE_WAIT;
    let mut taken = Vec::new();
    loop {
        let pods = set.pod_states().await;
        if let Some(workload) = workload
            && !pods.ready.is_empty()
        {
            workload.set_endpoints(set.ready_clients(&pods));
        }
        let (took, last) = match read_ring(admin, &pods, |o| set.target(o)).await {
            Err(unanswered) => (
                false,
                format!("no node answered Admin.Ring: {unanswered:?}"),
            ),
            Ok(ring) => {
                // The controller's own mapping from the member table to ordinals (a
                // weight change shows as transfers pending until its node settles it).
                let members =
                    members_from_ring(NAME, ring.members.iter().map(MemberView::ring_member))
                        .unwrap_or_else(|e| panic!("mapping the ring onto ordinals: {e}"));
                let observed = Observed {
                    statefulset_replicas: set.replicas,
                    running: pods.running.clone(),
                    ready: pods.ready.clone(),
                    members,
                    // Processes here are never dead for long: no time is tracked.
                    unready_for: std::collections::BTreeMap::new(),
                };
                let step = plan(&desired, &observed);
                if let Err(violation) = check(&desired, &observed, &step) {
                    panic!("the planner chose an unsafe step: {violation}\n{observed:#?}");
                }
                let took = match step {
                    Step::Done => {
                        eprintln!("scale to {size}, {:>6.2?}: done", started.elapsed());
                        return taken;
                    }
                    Step::Refuse { reason } => panic!("the planner refused: {reason}"),
                    Step::GrowStatefulSet { to } => {
                        set.grow(to).await;
                        true
                    }
                    Step::ShrinkStatefulSet { to } => {
                        set.shrink(to, admin).await;
                        true
                    }
                    _ => {
                        let advertise = |o: u32| set.node(o).internode.to_string();
                        change_membership(admin, NAME, &step, &ring, &|o| set.target(o), &advertise)
                            .await
                            .unwrap_or_else(|e| panic!("executing {step}: {e}"))
                    }
                };
                if took {
                    // Progress for whoever watches the run (the controller logs it).
                    eprintln!("scale to {size}, {:>6.2?}: {step}", started.elapsed());
                    taken.push(step);
                }
                (took, format!("{step}; observed {observed:#?}"))
            }
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "scaling to {size} did not finish within {SCALE_WAIT:?}; last pass: {last}"
        );
        if !took {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The member table as the controller reads it (merged over the ready pods).
async fn member_table(set: &LocalStatefulSet, admin: &GrpcAdmin) -> Vec<MemberView> {
    let pods = set.pod_states().await;
    read_ring(admin, &pods, |o| set.target(o))
        .await
        .unwrap_or_else(|unanswered| panic!("no node answered Admin.Ring: {unanswered:?}"))
        .members
}

/// `node`'s share of the ring the nodes build from `table` (its target weights).
fn share_of(table: &[MemberView], node: &str) -> f64 {
    use dynamo_node::NodeId;
    let members: Vec<(NodeId, u32)> = table
        .iter()
        .filter(|m| matches!(m.state, MemberState::Joining | MemberState::Member))
        .map(|m| (NodeId::new(&m.node_id).expect("a valid id"), m.weight))
        .collect();
    dynamo_node::ring::Ring::build(&members, dynamo_e2e::cluster::ring_strategy(), 0, None)
        .expect("the members form a ring")
        .ownership()[&NodeId::new(node).expect("a valid id")]
}

fn assert_passes(verdict: &Verdict) {
    assert!(
        verdict.is_ok(),
        "the checker found violations:\n{:#?}",
        verdict.violations
    );
    assert!(
        verdict.acknowledged_values > 0,
        "the run acknowledged no write, so it proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_scales_3_to_5_to_3_under_load_without_losing_an_acknowledged_write() {
    let cluster = Cluster::empty(
        Placement::Loopback,
        &[
            // Small transfer rounds, so every join and leave takes several rounds while
            // the clients write into the ranges that are moving.
            "--transfer-batch-keys",
            "4",
            "--transfer-interval",
            "100ms",
            // No anti-entropy: the replicas must agree by range transfer and hinted
            // handoff alone.
            "--anti-entropy-interval",
            "0s",
            // The default gossip interval: nodes hear of a change late, so coordinators
            // that have not heard of it yet keep writing to the old owners.
            "--gossip-interval",
            "1s",
        ],
        NodeNaming::Ordinals { name: NAME.into() },
    )
    .expect("loopback clusters always start");
    let mut set = LocalStatefulSet {
        cluster,
        replicas: 0,
    };
    let admin = GrpcAdmin::new(ADMIN_TIMEOUT);

    // Bootstrap through the planner too: the first node joins itself, then one by one.
    let join = |ordinal| Step::Join { ordinal, weight: 1 };
    let steps = scale_to(&mut set, &admin, &[1; 3], None).await;
    assert_eq!(
        steps,
        [Step::GrowStatefulSet { to: 3 }, join(0), join(1), join(2)]
    );

    let pods = set.pod_states().await;
    let workload = Workload::start(
        set.ready_clients(&pods),
        WorkloadConfig {
            clients: 4,
            keys: 200,
            seed: 7,
            ..WorkloadConfig::default()
        },
    );
    workload.wait_for_progress(100).await;

    let before = workload.completed();
    let steps = scale_to(&mut set, &admin, &[1; 5], Some(&workload)).await;
    assert_eq!(steps, [Step::GrowStatefulSet { to: 5 }, join(3), join(4)]);
    assert!(
        workload.completed() > before,
        "no client operation completed while scaling up"
    );
    // Checkpoint: with the clients paused, the 5-node ring's replicas of every key must
    // agree with no read to repair them: the joins pulled everything the new nodes own.
    workload.pause().await;
    wait_for_converged(&set.cluster, workload.keys()).await;
    workload.resume();
    workload.wait_for_progress(100).await;

    // A weight change through the spec: ordinal 1 gets three times the capacity. The
    // planner sets it, then waits (the member table shows the weight unsettled) while
    // db-1 pulls the ranges it gains and hands back none; scale_to returns only once
    // the node settled its weight and the planner sees nothing left to do.
    let before = workload.completed();
    let share_before = share_of(&member_table(&set, &admin).await, "db-1");
    let steps = scale_to(&mut set, &admin, &[1, 3, 1, 1, 1], Some(&workload)).await;
    assert_eq!(
        steps,
        [Step::SetWeight {
            ordinal: 1,
            weight: 3
        }]
    );
    let ring = member_table(&set, &admin).await;
    let db1 = ring
        .iter()
        .find(|m| m.node_id == "db-1")
        .expect("db-1 is a member");
    assert_eq!(
        (db1.weight, db1.settled_weight),
        (3, 3),
        "the planner was done only once db-1 settled its weight"
    );
    let share_after = share_of(&ring, "db-1");
    assert!(
        share_after > 1.5 * share_before,
        "db-1's share of the ring grew with its weight: {share_before} -> {share_after}"
    );
    assert!(
        workload.completed() > before,
        "no client operation completed while the weight changed"
    );
    // Checkpoint: the moved ranges are on their new replicas with no read to repair them.
    workload.pause().await;
    wait_for_converged(&set.cluster, workload.keys()).await;
    workload.resume();
    workload.wait_for_progress(100).await;

    let before = workload.completed();
    let steps = scale_to(&mut set, &admin, &[1, 3, 1], Some(&workload)).await;
    assert_eq!(
        steps,
        [
            Step::Decommission { ordinal: 4 },
            Step::ShrinkStatefulSet { to: 4 },
            Step::Decommission { ordinal: 3 },
            Step::ShrinkStatefulSet { to: 3 },
        ]
    );
    assert!(
        workload.completed() > before,
        "no client operation completed while scaling down"
    );
    workload.wait_for_progress(100).await;

    // The removed nodes' volumes go: whatever they held must live on elsewhere.
    for ordinal in [3, 4] {
        set.node(ordinal).delete_data();
    }
    let keys = workload.keys().to_vec();
    let history = workload.stop().await;
    assert_passes(&final_verdict(&set.cluster, history, &keys, Settle::Converged).await);
}
