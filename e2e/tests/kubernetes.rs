//! The product on a real Kubernetes, as a platform team would use it: the cluster that
//! `e2e/k8s/cluster.sh up` builds from the components' own modules (or any cluster
//! whose nodes hold the `dynamo-node:dev`, `dynamo-node:upgrade` and
//! `dynamo-operator:dev` images), `helm install` of the operator chart, `kubectl apply`
//! of `e2e/manifests/small-cluster.yaml`, then data, scaling, faults, refusals,
//! failover and deletion, each step checked.
//!
//! Runs when `DYNAMO_K8S_SUITE=1` (see [`dynamo_e2e::k8s::skip_reason`]); `.ci/run`
//! brings the cluster up and runs it. One test, one cluster: the steps build on each
//! other, in the order of the issue that asked for them, and each logs its name and
//! time so a failure says where it happened.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dynamo_e2e::k8s::{self, CLIENT_PORT, Kubectl, PodCluster, helm, repo_root, wait};
use dynamo_e2e::workload::{Replicas, Settle, Workload, WorkloadConfig, final_verdict};
use dynamo_node::history::{OpKind, Outcome};
use dynamo_node::proto::kv_client::KvClient;
use dynamo_node::proto::{GetRequest, MemberState, PutRequest};
use tonic::transport::Channel;

#[path = "kubernetes/tls.rs"]
mod tls;

const OPERATOR_NAMESPACE: &str = "dynamo-system";
const NAMESPACE: &str = "dynamo-e2e";
const CLUSTER: &str = "small";
const KEYS: usize = 10_000;
/// The zone label the suite gives the cluster's node.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const ZONE: &str = "e2e-zone-a";
/// Bound on the cluster reaching a state (pods scheduled, volumes bound, images
/// started, joins and decommissions with their range transfers).
const SETTLE: Duration = Duration::from_secs(300);
/// Bound on a node that came back on an empty volume holding its ranges again:
/// anti-entropy rounds every 30 s, the first building the node's Merkle trees (75 and
/// 165 s in two runs here).
const REFILL: Duration = Duration::from_secs(600);

fn step(name: &str, started: Instant) {
    eprintln!("\n== [{:>6.1}s] {name}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_chart_and_images_run_a_dynamo_cluster_on_real_kubernetes() {
    if let Some(reason) = k8s::skip_reason() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let started = Instant::now();
    let repo = repo_root();
    let operator = Kubectl::new(OPERATOR_NAMESPACE);
    let kubectl = Kubectl::new(NAMESPACE);

    step("helm install the operator chart (two replicas)", started);
    let chart = repo.join("charts/dynamo-operator");
    helm(&[
        "upgrade",
        "--install",
        "dynamo-operator",
        chart.to_str().expect("a UTF-8 path"),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        "image.repository=dynamo-operator",
        "--set",
        "image.tag=dev",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "replicaCount=2",
        "--wait",
        "--timeout",
        "300s",
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    operator
        .ok(&[
            "wait",
            "--for=condition=Established",
            "crd/dynamoclusters.dynamo.example.org",
            "--timeout=60s",
        ])
        .await;

    step(
        "the API server refuses bad DynamoClusters with the CRD's messages",
        started,
    );
    kubectl
        .run_with_input(&["apply", "-f", "-"], &namespace_yaml(NAMESPACE))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    refusals(&kubectl).await;

    step("kubectl apply -f e2e/manifests/small-cluster.yaml", started);
    // The one node is in a zone: its pods learn it from the label (copied onto each pod
    // at binding) and announce it in the ring (#15, replicas across zones).
    kubectl
        .ok(&[
            "label",
            "nodes",
            "--all",
            &format!("{ZONE_LABEL}={ZONE}"),
            "--overwrite",
        ])
        .await;
    let manifest = std::fs::read_to_string(repo.join("e2e/manifests/small-cluster.yaml"))
        .expect("e2e/manifests/small-cluster.yaml");
    kubectl.apply(&manifest).await;
    wait_settled(&kubectl, 3).await;
    let pods = PodCluster::observe(&kubectl, CLUSTER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ring = pods.ring(0).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ring.members.len() == 3 && ring.members.iter().all(|m| m.zone == ZONE),
        "every member in the node's zone: {:?}",
        ring.members
    );
    let columns = kubectl.ok(&["get", "dynamoclusters"]).await;
    let header: Vec<&str> = columns
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "SIZE", "MEMBERS", "READY", "PHASE", "AGE"],
        "kubectl get dynamoclusters printed:\n{columns}"
    );
    let row: Vec<&str> = columns
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..5], [CLUSTER, "3", "3", "3", "Running"], "{columns}");
    transition_refusals(&kubectl).await;

    step(
        &format!("{KEYS} keys written through the client Service"),
        started,
    );
    let service = client_service(&kubectl).await;
    write_keys(service, 0..KEYS).await;
    let pods = PodCluster::observe(&kubectl, CLUSTER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pods.pods.len(), 3, "ready pods: {:?}", pods.pods);
    // The nodes replicate with the secret the operator generated, and refuse anyone
    // without it.
    for index in 0..pods.pods.len() {
        let refusal = pods
            .outsider_read(index)
            .await
            .expect_err("a Replica read without the cluster secret was served");
        assert!(
            refusal.contains("cluster secret"),
            "pod {index} refused for another reason: {refusal}"
        );
    }
    for address in pods.client_addresses() {
        step(
            &format!("every key read back through pod {address}"),
            started,
        );
        read_keys(address, 0..KEYS).await;
    }

    step(
        "the operator's leader pod deleted: the other replica takes over",
        started,
    );
    leader_failover(&operator).await;

    step(
        "kubectl scale --replicas=5 with every key readable throughout",
        started,
    );
    let readers = Readers::start(service, KEYS);
    kubectl
        .ok(&["scale", &format!("dynamocluster/{CLUSTER}"), "--replicas=5"])
        .await;
    wait_settled(&kubectl, 5).await;
    assert_eq!(pvc_names(&kubectl).await.len(), 5);

    step(
        "kubectl scale --replicas=3: decommission before the StatefulSet shrinks",
        started,
    );
    let watcher = shrink_watcher(&kubectl);
    kubectl
        .ok(&["scale", &format!("dynamocluster/{CLUSTER}"), "--replicas=3"])
        .await;
    wait_settled(&kubectl, 3).await;
    let shrink = watcher.stop().await;
    assert!(
        shrink.samples > 0 && shrink.violations.is_empty(),
        "the StatefulSet shrank before its nodes were removed from the ring: {:?} ({} samples)",
        shrink.violations,
        shrink.samples
    );
    // retainOnScaleDown: false in the manifest: the removed nodes' volumes go.
    wait(
        "the removed nodes' volume claims deleted",
        SETTLE,
        || async {
            let names = pvc_names(&kubectl).await;
            if names.len() == 3 {
                Ok(())
            } else {
                Err(format!("claims: {names:?}"))
            }
        },
    )
    .await;
    let unreadable = readers.stop().await;
    assert_eq!(unreadable, 0, "keys that could not be read while scaling");
    read_keys(service, 0..KEYS).await;

    step(
        "under a write load: kubectl delete pod of a member",
        started,
    );
    let workload = Workload::start(
        vec![service],
        // Paced: the run lasts minutes (a rolling upgrade waits 40 s per pod), and the
        // checker's work grows with the square of each key's operations.
        WorkloadConfig {
            clients: 4,
            keys: 24,
            seed: 12,
            pace: Duration::from_millis(50),
        },
    );
    workload.wait_for_progress(200).await;
    replace_pod(&kubectl, &format!("{CLUSTER}-1"), false).await;
    workload.wait_for_progress(200).await;
    let pods = PodCluster::observe(&kubectl, CLUSTER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    pods.wait_for_hints_delivered().await;

    step(
        "under a write load: a pod deleted together with its volume comes back empty and refills",
        started,
    );
    replace_pod(&kubectl, &format!("{CLUSTER}-2"), true).await;
    let pods = PodCluster::observe(&kubectl, CLUSTER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let refilled = pods
        .pods
        .iter()
        .position(|(name, _)| *name == format!("{CLUSTER}-2"))
        .expect("the re-created pod is ready");
    let first = pods
        .status(refilled)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Empty at its start (a new volume claim, checked by replace_pod); by now the
    // clients' writes and anti-entropy have begun to refill it.
    eprintln!(
        "   {CLUSTER}-2 came back on a new volume, holding {} keys once ready",
        first.keys
    );
    wait_for_every_key(
        &pods,
        refilled,
        &format!("{CLUSTER}-2 holding its ranges again ({KEYS} keys and more)"),
    )
    .await;
    workload.wait_for_progress(200).await;

    step(
        "under a write load: a rolling upgrade to a second image tag",
        started,
    );
    let upgrade_from = workload.invoked();
    let rollout = rollout_watcher(&kubectl);
    // Paused first: the new template is applied, and no pod restarts until the
    // annotation goes (the operator holds the StatefulSet's partition).
    kubectl
        .ok(&[
            "annotate",
            "dynamocluster",
            CLUSTER,
            "dynamo.example.org/rollout-paused=true",
        ])
        .await;
    kubectl
        .ok(&[
            "patch",
            "dynamocluster",
            CLUSTER,
            "--type=merge",
            "-p",
            r#"{"spec":{"image":"dynamo-node:upgrade"}}"#,
        ])
        .await;
    wait("the paused rollout reported", SETTLE, || async {
        let cluster = kubectl.json(&["dynamocluster", CLUSTER]).await?;
        let rollout = cluster["status"]["rollout"].as_str().unwrap_or_default();
        if rollout.contains("paused") {
            Ok(())
        } else {
            Err(format!("status {}", cluster["status"]))
        }
    })
    .await;
    let sts = kubectl
        .json(&["statefulset", CLUSTER])
        .await
        .expect("the StatefulSet");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"], "dynamo-node:upgrade",
        "the new template is applied"
    );
    assert_eq!(
        sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
        3
    );
    let pods = kubectl.pods(&node_selector()).await.expect("the pods");
    assert!(
        pods.iter().all(|p| p.ready && p.image == "dynamo-node:dev"),
        "no pod restarted while paused: {pods:?}"
    );
    kubectl
        .ok(&[
            "annotate",
            "dynamocluster",
            CLUSTER,
            "dynamo.example.org/rollout-paused-",
        ])
        .await;
    wait("every pod running dynamo-node:upgrade", SETTLE, || async {
        let pods = kubectl.pods(&node_selector()).await?;
        let upgraded = pods
            .iter()
            .filter(|p| p.ready && p.image == "dynamo-node:upgrade")
            .count();
        if upgraded == 3 && pods.len() == 3 {
            Ok(())
        } else {
            Err(format!("pods: {pods:?}"))
        }
    })
    .await;
    wait_settled(&kubectl, 3).await;
    let most_unready = rollout.stop().await;
    assert!(
        most_unready <= 1,
        "{most_unready} node pods were down at once during the rollout"
    );
    workload.wait_for_progress(200).await;
    let upgrade_to = workload.invoked();
    let errors = workload.errors();
    let history = workload.stop().await;
    for (op, error) in errors.lock().expect("the error log").iter() {
        if (upgrade_from..upgrade_to).contains(op) {
            eprintln!("   op {op} failed during the rollout: {error}");
        }
    }
    let failed_writes: Vec<_> = history.ops()[upgrade_from..upgrade_to]
        .iter()
        .filter(|op| {
            matches!(op.kind, OpKind::Put { .. }) && !matches!(op.outcome, Outcome::PutOk { .. })
        })
        .collect();
    eprintln!(
        "   {} writes during the rollout, {} failed",
        history.ops()[upgrade_from..upgrade_to]
            .iter()
            .filter(|op| matches!(op.kind, OpKind::Put { .. }))
            .count(),
        failed_writes.len()
    );
    assert!(
        failed_writes.is_empty(),
        "writes failed during the rollout: {failed_writes:?}"
    );

    step(
        "no acknowledged write lost (the history checker's verdict)",
        started,
    );
    let pods = PodCluster::observe(&kubectl, CLUSTER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let keys: Vec<Vec<u8>> = (0..24)
        .map(|k| format!("e2e-key-{k}").into_bytes())
        .collect();
    let verdict = final_verdict(&pods, history, &keys, Settle::Hints).await;
    assert!(verdict.is_ok(), "{verdict:?}");
    read_keys(service, 0..KEYS).await;

    step(
        "a dead member reported, then replaced (dynamo.example.org/replace)",
        started,
    );
    replace_dead_member(&kubectl).await;
    read_keys(service, 0..KEYS).await;

    step(
        "storage.size 1Gi -> 2Gi: refused by a class without expansion, then grown in place",
        started,
    );
    grow_volumes(&kubectl).await;
    read_keys(service, 0..KEYS).await;

    step(
        "kubectl delete dynamocluster: the finalizer deletes what it owns",
        started,
    );
    kubectl
        .ok(&["delete", "dynamocluster", CLUSTER, "--timeout=300s"])
        .await;
    wait(
        "the StatefulSet and the volume claims gone",
        SETTLE,
        || async {
            let sts = kubectl.run(&["get", "statefulset", CLUSTER]).await;
            let claims = pvc_names(&kubectl).await;
            if sts.is_err() && claims.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "statefulset present: {}, claims: {claims:?}",
                    sts.is_ok()
                ))
            }
        },
    )
    .await;

    step(
        "a mutual-TLS cluster's CA rotated in three Secret updates under writes",
        started,
    );
    tls::rotate_the_ca_under_writes(&kubectl).await;

    step("helm uninstall keeps the CRD", started);
    helm(&[
        "uninstall",
        "dynamo-operator",
        "--namespace",
        OPERATOR_NAMESPACE,
        "--wait",
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    operator
        .ok(&["get", "crd", "dynamoclusters.dynamo.example.org"])
        .await;

    step(
        "a first helm install with cluster.enabled, on a cluster without the CRD",
        started,
    );
    first_install_with_a_cluster(&operator, &chart).await;
    step("passed", started);
}

fn namespace_yaml(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

/// A DynamoCluster with `spec` (YAML lines, indented by two) named `name`.
fn cluster_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: dynamo.example.org/v1alpha1\nkind: DynamoCluster\nmetadata:\n  name: {name}\nspec:\n  image: dynamo-node:dev\n{spec}"
    )
}

/// Manifests the real API server must refuse, each with the message of the CRD rule
/// or bound that refuses it.
async fn refusals(kubectl: &Kubectl) {
    let long_name = format!("n{}", "x".repeat(52));
    let cases = [
        ("size -1", cluster_yaml("bad", "  size: -1\n"), "spec.size"),
        (
            "r > n",
            cluster_yaml("bad", "  size: 3\n  replication: {\"n\": 3, r: 4, w: 2}\n"),
            "replication.r must not exceed replication.n",
        ),
        (
            "weight 0",
            cluster_yaml("bad", "  size: 3\n  weights: {default: 0}\n"),
            "spec.weights.default",
        ),
        (
            "size 2 with N=3",
            cluster_yaml("bad", "  size: 2\n  replication: {\"n\": 3, r: 2, w: 2}\n"),
            "size must be at least replication.n",
        ),
        (
            "a name too long for the objects derived from it",
            cluster_yaml(&long_name, "  size: 3\n"),
            "metadata.name must be at most 52 characters",
        ),
        (
            "a name that is no DNS label",
            cluster_yaml("9lives", "  size: 3\n"),
            "metadata.name must be a DNS label",
        ),
        (
            "size 100000",
            cluster_yaml("bad", "  size: 100000\n"),
            "spec.size",
        ),
        (
            "a negative storage size",
            cluster_yaml("bad", "  size: 3\n  storage: {size: \"-5Gi\"}\n"),
            "spec.storage.size",
        ),
        (
            "an admin token Secret name that is no DNS subdomain",
            cluster_yaml("bad", "  size: 3\n  adminTokenSecret: Bad_Name\n"),
            "spec.adminTokenSecret",
        ),
        (
            "a node setting the operator manages",
            cluster_yaml(
                "bad",
                "  size: 3\n  nodeConfig: {listen: \"0.0.0.0:9000\"}\n",
            ),
            "nodeConfig may not set a key the operator manages",
        ),
    ];
    for (what, yaml, message) in cases {
        let refused = kubectl
            .run_with_input(&["apply", "--dry-run=server", "-f", "-"], &yaml)
            .await
            .expect_err(&format!("the API server accepted {what}"));
        assert!(
            refused.contains(message),
            "{what}: refused, but without \"{message}\": {refused}"
        );
        eprintln!("   refused {what}: ...{message}...");
    }
}

/// Changes a live cluster cannot take, which the real API server must refuse on update
/// with the CRD's transition rules (`oldSelf`), each saying what to do instead.
async fn transition_refusals(kubectl: &Kubectl) {
    let cases = [
        (
            "replication.n",
            r#"{"spec":{"replication":{"n":5}}}"#,
            "replication.n cannot change on a live cluster",
        ),
        (
            "partitioning",
            r#"{"spec":{"partitioning":{"partitions":512}}}"#,
            "partitioning cannot change on a live cluster",
        ),
        (
            "storage.size (smaller)",
            r#"{"spec":{"storage":{"size":"512Mi"}}}"#,
            "storage.size can only grow",
        ),
        (
            "storage.storageClassName",
            r#"{"spec":{"storage":{"storageClassName":"fast"}}}"#,
            "storage.storageClassName cannot change on a live cluster",
        ),
    ];
    for (field, patch, message) in cases {
        let refused = kubectl
            .run(&[
                "patch",
                "dynamocluster",
                CLUSTER,
                "--type=merge",
                "--dry-run=server",
                "-p",
                patch,
            ])
            .await
            .expect_err(&format!("the API server accepted a change of {field}"));
        assert!(
            refused.contains(message) && refused.contains("create a new cluster"),
            "{field}: refused, but without \"{message}\": {refused}"
        );
        eprintln!("   refused a change of {field}");
    }
}

/// Waits until the DynamoCluster is Running with `size` members and ready nodes for
/// its current generation, and its StatefulSet has `size` replicas.
async fn wait_settled(kubectl: &Kubectl, size: i64) {
    wait(
        &format!("DynamoCluster {CLUSTER} Running with {size} members"),
        SETTLE,
        || async {
            let cluster = kubectl.json(&["dynamocluster", CLUSTER]).await?;
            let status = &cluster["status"];
            let sts = kubectl.json(&["statefulset", CLUSTER]).await?;
            let settled = status["phase"] == "Running"
                && status["members"] == size
                && status["readyNodes"] == size
                && status["observedGeneration"] == cluster["metadata"]["generation"]
                && sts["spec"]["replicas"] == size
                && sts["status"]["readyReplicas"] == size;
            if settled {
                Ok(())
            } else {
                Err(format!(
                    "status {}, statefulset replicas {} ready {}",
                    status, sts["spec"]["replicas"], sts["status"]["readyReplicas"]
                ))
            }
        },
    )
    .await;
}

async fn client_service(kubectl: &Kubectl) -> SocketAddr {
    let ip = kubectl
        .ok(&[
            "get",
            "service",
            CLUSTER,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await;
    SocketAddr::new(
        ip.trim()
            .parse()
            .unwrap_or_else(|e| panic!("cluster IP {ip:?}: {e}")),
        CLIENT_PORT,
    )
}

fn node_selector() -> String {
    format!("app.kubernetes.io/instance={CLUSTER},app.kubernetes.io/component=node")
}

/// Deletes pod `name` (and first its volume claim, when `with_volume`) and waits
/// until the StatefulSet has re-created it (a new uid) and the cluster is settled.
async fn replace_pod(kubectl: &Kubectl, name: &str, with_volume: bool) {
    let before = kubectl
        .json(&["pod", name])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let uid = before["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let claim = format!("data-{name}");
    let claim_uid = kubectl
        .ok(&["get", "pvc", &claim, "-o", "jsonpath={.metadata.uid}"])
        .await;
    if with_volume {
        // Held by the pvc-protection finalizer until the pod is gone.
        kubectl.ok(&["delete", "pvc", &claim, "--wait=false"]).await;
    }
    kubectl.ok(&["delete", "pod", name, "--wait=false"]).await;
    wait(
        &format!("pod {name} re-created and ready"),
        SETTLE,
        || async {
            let pods = kubectl.pods(&node_selector()).await?;
            match pods.iter().find(|p| p.name == name) {
                Some(pod) if pod.uid != uid && pod.ready => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    if with_volume {
        let now = kubectl
            .ok(&["get", "pvc", &claim, "-o", "jsonpath={.metadata.uid}"])
            .await;
        assert_ne!(now, claim_uid, "{claim} was not re-created");
    }
    wait_settled(kubectl, 3).await;
}

/// A member whose node will not come back: with the only Kubernetes node cordoned,
/// `small-2`'s pod is deleted and its replacement stays Pending. After the manifest's
/// 30 s it is reported dead (`Degraded`/`MemberDead`); the replace annotation removes it
/// from the ring without its hand-off, deletes its claim and pod, and is cleared; once
/// the node is uncordoned the new pod starts on a new volume, joins and pulls its ranges.
async fn replace_dead_member(kubectl: &Kubectl) {
    let dead = format!("{CLUSTER}-2");
    let claim = format!("data-{dead}");
    // Nodes are cluster-scoped: kubectl ignores the namespace it is given.
    let node = kubectl
        .ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])
        .await;
    let claim_uid = kubectl
        .ok(&["get", "pvc", &claim, "-o", "jsonpath={.metadata.uid}"])
        .await;
    kubectl.ok(&["cordon", &node]).await;
    kubectl.ok(&["delete", "pod", &dead, "--wait=false"]).await;
    wait(
        &format!("{CLUSTER} reporting {dead} dead"),
        SETTLE,
        || async {
            let cluster = kubectl.json(&["dynamocluster", CLUSTER]).await?;
            let degraded = cluster["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
                .cloned()
                .unwrap_or_default();
            if degraded["status"] == "True" && degraded["reason"] == "MemberDead" {
                Ok(())
            } else {
                Err(format!("Degraded: {degraded}"))
            }
        },
    )
    .await;
    let members = PodCluster::observe(kubectl, CLUSTER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ring = members.ring(0).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ring.members
            .iter()
            .any(|m| m.node_id == dead && m.state == MemberState::Member as i32),
        "a dead member stays in the ring until it is replaced: {:?}",
        ring.members
    );
    kubectl
        .ok(&[
            "annotate",
            "dynamocluster",
            CLUSTER,
            &format!("dynamo.example.org/replace={dead}"),
        ])
        .await;
    wait(
        "the replace carried out: member removed, annotation cleared, claim re-created",
        SETTLE,
        || async {
            let cluster = kubectl.json(&["dynamocluster", CLUSTER]).await?;
            let cleared = cluster["metadata"]["annotations"]
                .get("dynamo.example.org/replace")
                .is_none();
            let ring = members.ring(0).await?;
            let removed = ring
                .members
                .iter()
                .any(|m| m.node_id == dead && m.state == MemberState::Removed as i32);
            let uid = kubectl
                .run(&["get", "pvc", &claim, "-o", "jsonpath={.metadata.uid}"])
                .await
                .unwrap_or_default();
            if cleared && removed && uid != claim_uid {
                Ok(())
            } else {
                Err(format!(
                    "annotation cleared {cleared}, removed {removed}, claim uid {uid:?}"
                ))
            }
        },
    )
    .await;
    kubectl.ok(&["uncordon", &node]).await;
    wait_settled(kubectl, 3).await;
    let pods = PodCluster::observe(kubectl, CLUSTER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let replaced = pods
        .pods
        .iter()
        .position(|(name, _)| *name == dead)
        .expect("the replacement is ready");
    // Joined, so it pulled its ranges: with N = 3 on 3 nodes, every key.
    wait_for_every_key(
        &pods,
        replaced,
        &format!("{dead} holding every key after its join"),
    )
    .await;
}

/// Waits (up to [`REFILL`]) until pod `index` stores at least the [`KEYS`] keys: with
/// N = 3 on 3 nodes, every node holds every key.
async fn wait_for_every_key(pods: &PodCluster, index: usize, what: &str) {
    wait(what, REFILL, || async {
        let status = pods.status(index).await?;
        if status.keys >= KEYS as u64 {
            Ok(())
        } else {
            Err(format!("{} keys", status.keys))
        }
    })
    .await;
}

/// A storage growth. The default class (local-path) does not allow volume expansion:
/// the cluster reports it (`Degraded`/`VolumeExpansionRefused`) and keeps working with
/// the StatefulSet as it is. Once the class allows expansion, the operator raises each
/// claim's request and re-creates the StatefulSet around its pods with the new claim
/// template; no pod restarts. (local-path has no resizer, so the volumes themselves do
/// not grow here; what is checked is everything up to the resizer.)
async fn grow_volumes(kubectl: &Kubectl) {
    let sts_before = kubectl
        .json(&["statefulset", CLUSTER])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pods_before: BTreeSet<String> = kubectl
        .pods(&node_selector())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|p| p.uid)
        .collect();
    kubectl
        .ok(&[
            "patch",
            "dynamocluster",
            CLUSTER,
            "--type=merge",
            "-p",
            r#"{"spec":{"storage":{"size":"2Gi"}}}"#,
        ])
        .await;
    wait("the refused expansion reported", SETTLE, || async {
        let cluster = kubectl.json(&["dynamocluster", CLUSTER]).await?;
        let degraded = cluster["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
            .cloned()
            .unwrap_or_default();
        if degraded["reason"] == "VolumeExpansionRefused" {
            Ok(())
        } else {
            Err(format!("Degraded: {degraded}"))
        }
    })
    .await;
    let sts = kubectl
        .json(&["statefulset", CLUSTER])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sts["metadata"]["uid"], sts_before["metadata"]["uid"],
        "the StatefulSet stays while the class refuses"
    );
    assert_eq!(claim_template_size(&sts), "1Gi");

    // Nodes and StorageClasses are cluster-scoped: kubectl ignores the namespace.
    kubectl
        .ok(&[
            "patch",
            "storageclass",
            "local-path",
            "-p",
            r#"{"allowVolumeExpansion":true}"#,
        ])
        .await;
    // A change of the cluster object starts the next pass now, not at the resync.
    kubectl
        .ok(&[
            "annotate",
            "dynamocluster",
            CLUSTER,
            "e2e.dynamo.example.org/nudge=expansion",
        ])
        .await;
    wait(
        "the StatefulSet re-created with 2Gi claims, every claim asking for 2Gi",
        SETTLE,
        || async {
            let sts = kubectl.json(&["statefulset", CLUSTER]).await?;
            let claims = kubectl.json(&["pvc"]).await?;
            let requests: Vec<String> = claims["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|c| {
                            c["spec"]["resources"]["requests"]["storage"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let done = sts["metadata"]["uid"] != sts_before["metadata"]["uid"]
                && claim_template_size(&sts) == "2Gi"
                && requests.len() == 3
                && requests.iter().all(|r| r == "2Gi");
            if done {
                Ok(())
            } else {
                Err(format!(
                    "statefulset uid {}, claim template {}, claims {requests:?}",
                    sts["metadata"]["uid"],
                    claim_template_size(&sts)
                ))
            }
        },
    )
    .await;
    wait_settled(kubectl, 3).await;
    let pods_after: BTreeSet<String> = kubectl
        .pods(&node_selector())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|p| p.uid)
        .collect();
    assert_eq!(
        pods_after, pods_before,
        "no pod restarted for the expansion"
    );
}

/// `helm install` with `cluster.enabled` where no DynamoCluster CRD exists: Helm
/// resolves every kind of a release before creating anything, so the cluster comes from
/// the chart's post-install Job (`dynamo-operator apply-cluster`), which waits for the
/// CRD the same release creates. The cluster must come up; then it is deleted while the
/// operator still runs (its finalizer), and the release uninstalled.
async fn first_install_with_a_cluster(cluster_scope: &Kubectl, chart: &std::path::Path) {
    const FIRST: &str = "dynamo-first";
    cluster_scope
        .ok(&[
            "delete",
            "crd",
            "dynamoclusters.dynamo.example.org",
            "--wait",
            "--timeout=120s",
        ])
        .await;
    helm(&[
        "install",
        FIRST,
        chart.to_str().expect("a UTF-8 path"),
        "--namespace",
        FIRST,
        "--create-namespace",
        "--set",
        "image.repository=dynamo-operator",
        "--set",
        "image.tag=dev",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "cluster.enabled=true",
        "--set",
        "cluster.name=first",
        "--set",
        "cluster.spec.size=1",
        "--set",
        "cluster.spec.image=dynamo-node:dev",
        "--set",
        "cluster.spec.imagePullPolicy=Never",
        "--set",
        "cluster.spec.replication.n=1",
        "--set",
        "cluster.spec.replication.r=1",
        "--set",
        "cluster.spec.replication.w=1",
        "--set",
        "cluster.spec.storage.size=1Gi",
        "--wait",
        "--timeout",
        "300s",
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let first = Kubectl::new(FIRST);
    wait(
        "the DynamoCluster from values Running with its one member",
        SETTLE,
        || async {
            let cluster = first.json(&["dynamocluster", "first"]).await?;
            let status = &cluster["status"];
            if status["phase"] == "Running" && status["members"] == 1 {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        },
    )
    .await;
    first
        .ok(&["delete", "dynamocluster", "first", "--timeout=300s"])
        .await;
    helm(&["uninstall", FIRST, "--namespace", FIRST, "--wait"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The storage request of a StatefulSet's claim template, from its JSON.
fn claim_template_size(sts: &serde_json::Value) -> String {
    sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Runs `sample` on its state every 300 ms in the background until
/// [`stop`](Self::stop), which returns the state: the watchers of a scale-down and of a
/// rollout.
struct Sampler<T> {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<T>,
}

impl<T: Send + 'static> Sampler<T> {
    fn start<F, Fut>(mut state: T, mut sample: F) -> Self
    where
        F: FnMut(T) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                while !stop.load(Ordering::Relaxed) {
                    state = sample(state).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                state
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("a sampler panicked")
    }
}

/// Samples the node pods during a rollout: the most that were not ready at once.
fn rollout_watcher(kubectl: &Kubectl) -> Sampler<usize> {
    let kubectl = kubectl.clone();
    Sampler::start(0, move |most: usize| {
        let kubectl = kubectl.clone();
        async move {
            match kubectl.pods(&node_selector()).await {
                Ok(pods) => {
                    let ready = pods.iter().filter(|p| p.ready).count();
                    most.max(3usize.saturating_sub(ready))
                }
                Err(_) => most,
            }
        }
    })
}

async fn pvc_names(kubectl: &Kubectl) -> Vec<String> {
    let list = kubectl
        .json(&[
            "pvc",
            "-l",
            &format!("app.kubernetes.io/instance={CLUSTER}"),
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|pvc| pvc["metadata"]["deletionTimestamp"].is_null())
                .filter_map(|pvc| pvc["metadata"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn client(address: SocketAddr) -> KvClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    KvClient::new(channel)
}

fn key(i: usize) -> Vec<u8> {
    format!("k8s-key-{i}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("k8s-value-{i}").into_bytes()
}

/// Concurrent requests of [`write_keys`] and [`read_keys`].
const CONCURRENCY: usize = 32;

/// Runs `op(client, i)` for every `i` in `range`, `CONCURRENCY` at a time, each task
/// with its own client of `address`.
async fn for_each_key<F, Fut>(address: SocketAddr, range: std::ops::Range<usize>, op: F)
where
    F: Fn(KvClient<Channel>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(range.start));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let next = Arc::clone(&next);
            let kv = client(address);
            let op = op.clone();
            let end = range.end;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return;
                    }
                    op(kv.clone(), i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a client task panicked");
    }
}

/// Writes keys `range` (blind puts, W = 2) through `address`.
async fn write_keys(address: SocketAddr, range: std::ops::Range<usize>) {
    for_each_key(address, range, move |mut kv, i| async move {
        kv.put(PutRequest {
            key: key(i).into(),
            context: Vec::new().into(),
            value: value(i).into(),
            w: None,
        })
        .await
        .unwrap_or_else(|status| panic!("put of key {i} through {address}: {status}"));
    })
    .await;
}

/// Reads keys `range` through `address` (R = 2) and checks each holds its one value.
async fn read_keys(address: SocketAddr, range: std::ops::Range<usize>) {
    for_each_key(address, range, move |mut kv, i| async move {
        let reply = kv
            .get(GetRequest {
                key: key(i).into(),
                r: None,
            })
            .await
            .unwrap_or_else(|status| panic!("get of key {i} through {address}: {status}"))
            .into_inner();
        let values: Vec<Vec<u8>> = reply.values.iter().map(|v| v.to_vec()).collect();
        assert_eq!(values, [value(i)], "key {i} through {address}");
    })
    .await;
}

/// Readers that go round the keys through the client Service while the cluster
/// changes; a key counts as unreadable when three reads 200 ms apart all fail or miss
/// its value (a single read may meet a connection to a pod that just went away).
struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<usize>>,
}

impl Readers {
    fn start(service: SocketAddr, keys: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|reader| {
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut unreadable = 0;
                    let mut i = reader;
                    while !stop.load(Ordering::Relaxed) {
                        let mut ok = false;
                        for _attempt in 0..3 {
                            let reply = client(service)
                                .get(GetRequest {
                                    key: key(i).into(),
                                    r: None,
                                })
                                .await;
                            if let Ok(reply) = reply {
                                let values: Vec<Vec<u8>> = reply
                                    .into_inner()
                                    .values
                                    .iter()
                                    .map(|v| v.to_vec())
                                    .collect();
                                if values == [value(i)] {
                                    ok = true;
                                    break;
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        if !ok {
                            eprintln!("   key {i} unreadable through {service}");
                            unreadable += 1;
                        }
                        i = (i + 4) % keys;
                    }
                    unreadable
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let mut unreadable = 0;
        for task in self.tasks {
            unreadable += task.await.expect("a reader panicked");
        }
        unreadable
    }
}

/// What [`shrink_watcher`] saw.
struct ShrinkReport {
    samples: usize,
    violations: Vec<String>,
}

/// Samples, while a scale-down runs, the StatefulSet's replicas and the ring: a pod
/// the StatefulSet no longer keeps (ordinal >= replicas) must not be a ring member
/// still (joining, member or leaving), or its data would go with it.
fn shrink_watcher(kubectl: &Kubectl) -> Sampler<ShrinkReport> {
    let kubectl = kubectl.clone();
    let report = ShrinkReport {
        samples: 0,
        violations: Vec::new(),
    };
    Sampler::start(report, move |mut report: ShrinkReport| {
        let kubectl = kubectl.clone();
        async move {
            if let Err(e) = shrink_sample(&kubectl, &mut report).await {
                eprintln!("   shrink watcher: {e}");
            }
            report
        }
    })
}

async fn shrink_sample(kubectl: &Kubectl, report: &mut ShrinkReport) -> Result<(), String> {
    // The ring first: a member removed between the two reads is then seen gone
    // by the ring and still kept by the StatefulSet, never the other way round.
    let pods = PodCluster::observe(kubectl, CLUSTER).await?;
    let ring = pods.ring(0).await?;
    let sts = kubectl.json(&["statefulset", CLUSTER]).await?;
    let replicas = sts["spec"]["replicas"].as_i64().ok_or("no replicas")?;
    let in_ring: BTreeSet<String> = ring
        .members
        .iter()
        .filter(|m| m.state != dynamo_node::proto::MemberState::Removed as i32)
        .map(|m| m.node_id.clone())
        .collect();
    report.samples += 1;
    for member in &in_ring {
        let ordinal: i64 = member
            .rsplit('-')
            .next()
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| format!("member {member} has no ordinal"))?;
        if ordinal >= replicas {
            report.violations.push(format!(
                "{member} in the ring while the StatefulSet keeps {replicas}"
            ));
        }
    }
    Ok(())
}

/// The Lease's holder, deleted: the other operator pod must take the Lease over.
async fn leader_failover(operator: &Kubectl) {
    let holder = || async {
        let lease = operator.json(&["lease", "dynamo-operator"]).await?;
        lease["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "the Lease has no holder".to_owned())
    };
    let leader = wait("an operator replica holding the Lease", SETTLE, holder).await;
    let pods = operator
        .pods("app.kubernetes.io/name=dynamo-operator")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pods.len(), 2, "operator pods: {pods:?}");
    let leader_pod = pods
        .iter()
        .find(|p| leader.contains(&p.name))
        .unwrap_or_else(|| panic!("the Lease holder {leader} is none of {pods:?}"));
    eprintln!("   leader {leader}: deleting pod {}", leader_pod.name);
    operator
        .ok(&["delete", "pod", &leader_pod.name, "--wait=false"])
        .await;
    let old = leader_pod.name.clone();
    let new_leader = wait("another replica holding the Lease", SETTLE, || async {
        let now = holder().await?;
        if now.contains(&old) {
            Err(format!("{now} still holds it"))
        } else {
            Ok(now)
        }
    })
    .await;
    eprintln!("   new leader {new_leader}");
}
