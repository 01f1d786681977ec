//! The multi-process fault suite: real `dynamo-node` processes, a client workload
//! writing with contexts the whole time, one kind of fault per test, and the history
//! checker's verdict: no acknowledged write lost, replicas converged, nothing deleted
//! come back (see `dynamo_node::history`).

use dynamo_e2e::cluster::{Cluster, Placement};
use dynamo_e2e::workload::{Settle, Workload, WorkloadConfig, final_verdict};
use dynamo_node::history::Verdict;
use dynamo_node::proto::MemberState;

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

fn client_endpoints(cluster: &Cluster, except: &[usize]) -> Vec<std::net::SocketAddr> {
    (0..cluster.nodes.len())
        .filter(|i| !except.contains(i))
        .map(|i| cluster.nodes[i].client)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(5, Placement::Loopback, &[])
        .await
        .expect("loopback clusters always start");
    let workload = Workload::start(client_endpoints(&cluster, &[]), WorkloadConfig::default());
    workload.wait_for_progress(100).await;

    workload.set_endpoints(client_endpoints(&cluster, &[1]));
    cluster.nodes[1].kill().await;
    workload.wait_for_progress(200).await;
    cluster.nodes[1].restart().await;
    workload.set_endpoints(client_endpoints(&cluster, &[]));
    workload.wait_for_progress(100).await;

    let keys = workload.keys().to_vec();
    let history = workload.stop().await;
    assert_passes(&final_verdict(&cluster, history, &keys, Settle::Hints).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_stopped_and_continued_under_load_loses_no_acknowledged_write() {
    let cluster = Cluster::start(5, Placement::Loopback, &[])
        .await
        .expect("loopback clusters always start");
    let workload = Workload::start(client_endpoints(&cluster, &[]), WorkloadConfig::default());
    workload.wait_for_progress(100).await;

    // SIGSTOP: the node keeps its sockets open but never answers; coordinators must time
    // out on it and hand its writes to stand-ins (Dynamo §4.6).
    workload.set_endpoints(client_endpoints(&cluster, &[2]));
    cluster.nodes[2].pause();
    workload.wait_for_progress(150).await;
    cluster.nodes[2].resume();
    workload.set_endpoints(client_endpoints(&cluster, &[]));
    workload.wait_for_progress(100).await;

    let keys = workload.keys().to_vec();
    let history = workload.stop().await;
    assert_passes(&final_verdict(&cluster, history, &keys, Settle::Hints).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_by_a_real_network_partition_loses_no_acknowledged_write() {
    let cluster = match Cluster::start(5, Placement::Namespaces, &[]).await {
        Ok(cluster) => cluster,
        Err(reason) => {
            eprintln!("SKIPPED: network namespaces cannot be made here: {reason}");
            return;
        }
    };
    let workload = Workload::start(client_endpoints(&cluster, &[]), WorkloadConfig::default());
    workload.wait_for_progress(100).await;

    let network = cluster.network.as_ref().expect("a namespaced cluster");
    let cut = cluster.nodes[4].host.clone().expect("a namespaced node");
    workload.set_endpoints(client_endpoints(&cluster, &[4]));
    network.cut(&cut);
    workload.wait_for_progress(200).await;
    network.heal(&cut);
    workload.set_endpoints(client_endpoints(&cluster, &[]));
    workload.wait_for_progress(100).await;

    let keys = workload.keys().to_vec();
    let history = workload.stop().await;
    assert_passes(&final_verdict(&cluster, history, &keys, Settle::Hints).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_is_wiped_is_refilled_and_no_acknowledged_write_is_lost() {
    let mut cluster = Cluster::start(
        5,
        Placement::Loopback,
        &["--anti-entropy-interval", "200ms"],
    )
    .await
    .expect("loopback clusters always start");
    let workload = Workload::start(client_endpoints(&cluster, &[]), WorkloadConfig::default());
    workload.wait_for_progress(150).await;

    // A disk replaced by an empty one: what the node held before is gone, and only
    // Merkle anti-entropy (Dynamo §4.7) can bring it back; hints cover only the writes
    // made while it was down.
    workload.set_endpoints(client_endpoints(&cluster, &[2]));
    cluster.nodes[2].kill_and_wipe().await;
    workload.wait_for_progress(100).await;
    cluster.nodes[2].restart().await;
    workload.set_endpoints(client_endpoints(&cluster, &[]));
    workload.wait_for_progress(100).await;

    let keys = workload.keys().to_vec();
    let history = workload.stop().await;
    // Converged before any final read: read repair cannot be what refilled it.
    assert_passes(&final_verdict(&cluster, history, &keys, Settle::Converged).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_and_another_decommissioned_under_load_lose_no_acknowledged_write() {
    let mut cluster = Cluster::start(4, Placement::Loopback, &[])
        .await
        .expect("loopback clusters always start");
    let workload = Workload::start(client_endpoints(&cluster, &[]), WorkloadConfig::default());
    workload.wait_for_progress(100).await;

    // Join a fifth node: it pulls its ranges, then becomes a member (Dynamo §4.9.1).
    let added = cluster.add_node().await;
    cluster.join(added).await;
    let all: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    cluster.wait_for_members(&all).await;
    workload.set_endpoints(client_endpoints(&cluster, &[]));
    workload.wait_for_progress(100).await;

    // Decommission node 2: it hands every range to the new owners, then is removed.
    workload.set_endpoints(client_endpoints(&cluster, &[1]));
    cluster.leave(1).await;
    dynamo_e2e::eventually("n2 to be removed", dynamo_e2e::WAIT, || async {
        match cluster.state_of(1, 0).await {
            Some(MemberState::Removed) => Ok(()),
            other => Err(format!("n2 is {other:?}")),
        }
    })
    .await;
    let remaining: Vec<String> = all.iter().filter(|id| *id != "n2").cloned().collect();
    cluster.wait_for_members(&remaining).await;
    workload.wait_for_progress(100).await;
    // Its data is on the new owners: losing its disk now loses nothing.
    cluster.nodes[1].kill_and_wipe().await;

    let keys = workload.keys().to_vec();
    let history = workload.stop().await;
    assert_passes(&final_verdict(&cluster, history, &keys, Settle::Hints).await);
}
