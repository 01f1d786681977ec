//! The controller against a mock Kubernetes API server: each test asserts the exact
//! requests one reconcile pass makes, in order (method, path, field manager, the body
//! parts that matter), and the status it writes. `Admin` calls go to real
//! `dynamo-node`s started in this process on loopback.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use dynamo_node::node::RunningNode;
use dynamo_operator::admin::{AdminTarget, GrpcAdmin, NodeAdmin};
use dynamo_operator::builders;
use dynamo_operator::controller::{self, reconcile, with_applied_hash};
use dynamo_operator::crd::DynamoCluster;
use dynamo_operator::planner::MemberState;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use support::{ApiServer, Loopback, cluster, context, list, mock_client, pod, start_node};

const NS: &str = "/api/v1/namespaces/prod";
const APPS: &str = "/apis/apps/v1/namespaces/prod";
const POLICY: &str = "/apis/policy/v1/namespaces/prod";
const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/db";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";
const CLUSTERS: &str = "/apis/dynamo.example.org/v1alpha1/namespaces/prod/dynamoclusters";
const SELECTOR: &str = "app.kubernetes.io/instance=db,app.kubernetes.io/name=dynamo";
/// The token in the generated admin token Secret of these tests' clusters; the nodes
/// require it.
const TOKEN: &str = "4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee0";

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A Secret as the API server returns it, with `data` base64-encoded.
fn secret(name: &str, data: &[(&str, &[u8])]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(base64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "prod"}, "data": data})
}

/// The generated admin token Secret exists already: read, never written.
async fn generated_token_exists(server: &mut ApiServer) {
    server
        .expect("GET", &format!("{NS}/secrets/db-admin-token"))
        .await
        .respond(
            200,
            secret("db-admin-token", &[("token", TOKEN.as_bytes())]),
        );
}

/// A node that requires [`TOKEN`].
async fn start_secured_node(id: &str, seeds: &[std::net::SocketAddr], n: u32) -> RunningNode {
    start_node(id, seeds, n, &["--admin-token", TOKEN]).await
}

/// How the tests reach a node that requires [`TOKEN`].
fn secured(node: &RunningNode) -> AdminTarget {
    AdminTarget {
        token: Some(TOKEN.to_owned()),
        ..support::target(node)
    }
}

/// Runs one pass of `cluster` against `scenario` (the API server's side), then checks the
/// client made no request the scenario did not expect.
async fn pass<F, Fut>(
    cluster: DynamoCluster,
    endpoints: Loopback,
    scenario: F,
) -> Result<Action, controller::Error>
where
    F: FnOnce(ApiServer) -> Fut,
    Fut: Future<Output = ApiServer> + Send + 'static,
{
    let (client, server) = mock_client();
    let server = tokio::spawn(scenario(server));
    let ctx = context(client, endpoints);
    let result = tokio::time::timeout(support::WAIT, reconcile(Arc::new(cluster), ctx))
        .await
        .expect("reconcile finished");
    let server = server.await.expect("API server scenario");
    server.expect_no_more().await;
    result
}

/// The five children that do not depend on membership, each read and then applied.
async fn children_applied_fresh(server: &mut ApiServer) {
    for (kind, path) in [
        ("ConfigMap", format!("{NS}/configmaps/db-config")),
        ("Service", format!("{NS}/services/db-peers")),
        ("Service", format!("{NS}/services/db")),
        (
            "PodDisruptionBudget",
            format!("{POLICY}/poddisruptionbudgets/db"),
        ),
        ("NetworkPolicy", NETPOL.to_owned()),
    ] {
        server.expect("GET", &path).await.not_found();
        let apply = server.expect("PATCH", &path).await;
        apply.assert_server_side_apply();
        assert_eq!(apply.body["kind"], kind);
        let owner = &apply.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["name"], &owner["controller"]),
            (&json!("DynamoCluster"), &json!("db"), &json!(true)),
            "{path}"
        );
        assert!(
            apply.body["metadata"]["annotations"][controller::APPLIED_HASH_ANNOTATION].is_string()
        );
        if kind == "NetworkPolicy" {
            // The admin port admits the operator's pods from the operator's namespace.
            let operator = &apply.body["spec"]["ingress"][0]["from"][1];
            assert_eq!(
                operator["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                support::OPERATOR_NAMESPACE
            );
            assert_eq!(
                operator["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
                "dynamo-operator"
            );
            assert_eq!(apply.body["spec"]["ingress"][0]["ports"][0]["port"], 7001);
        }
        apply.echo();
    }
}

/// The same children, already applied with the current content: read, not written.
async fn children_unchanged(server: &mut ApiServer, cluster: &DynamoCluster) {
    let current = [
        (
            format!("{NS}/configmaps/db-config"),
            serde_json::to_value(
                with_applied_hash(builders::config_map(cluster).unwrap()).unwrap(),
            ),
        ),
        (
            format!("{NS}/services/db-peers"),
            serde_json::to_value(
                with_applied_hash(builders::headless_service(cluster).unwrap()).unwrap(),
            ),
        ),
        (
            format!("{NS}/services/db"),
            serde_json::to_value(
                with_applied_hash(builders::client_service(cluster).unwrap()).unwrap(),
            ),
        ),
        (
            format!("{POLICY}/poddisruptionbudgets/db"),
            serde_json::to_value(
                with_applied_hash(builders::pod_disruption_budget(cluster).unwrap()).unwrap(),
            ),
        ),
        (
            NETPOL.to_owned(),
            serde_json::to_value(
                with_applied_hash(
                    builders::network_policy(cluster, support::OPERATOR_NAMESPACE).unwrap(),
                )
                .unwrap(),
            ),
        ),
    ];
    for (path, object) in current {
        server
            .expect("GET", &path)
            .await
            .respond(200, object.unwrap());
    }
}

fn statefulset(cluster: &DynamoCluster, replicas: u32) -> Value {
    serde_json::to_value(
        with_applied_hash(builders::statefulset(cluster, replicas).unwrap()).unwrap(),
    )
    .unwrap()
}

/// The cluster with `status` as the API server would return it after a status apply.
fn with_status(cluster: &DynamoCluster, status: &Value) -> Value {
    let mut object = serde_json::to_value(cluster).unwrap();
    object["status"] = status.clone();
    object
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

#[tokio::test]
async fn first_pass_adds_the_finalizer_and_nothing_else() {
    let c = cluster(json!({"size": 3, "image": "dynamo-node:dev"}), false);
    let action = pass(c, Loopback::default(), |mut server| async move {
        let patch = server.expect("PATCH", &format!("{CLUSTERS}/db")).await;
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/json-patch+json")
        );
        let ops = patch.body.as_array().unwrap();
        assert!(ops.iter().any(|op| op["op"] == "add"
            && op["path"] == "/metadata/finalizers"
            && op["value"] == json!([controller::FINALIZER])));
        let finalized = cluster(json!({"size": 3, "image": "dynamo-node:dev"}), true);
        patch.respond(200, serde_json::to_value(finalized).unwrap());
        server
    })
    .await
    .unwrap();
    // The finalizer patch itself triggers the next pass.
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn fresh_cluster_applies_its_objects_and_grows_the_statefulset() {
    let spec = json!({"size": 3, "image": "dynamo-node:dev"});
    let c = cluster(spec, true);
    let action = pass(c.clone(), Loopback::default(), |mut server| async move {
        children_applied_fresh(&mut server).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .not_found();
        let pods = server.expect("GET", &format!("{NS}/pods")).await;
        assert_eq!(
            pods.query.get("labelSelector").map(String::as_str),
            Some(SELECTOR)
        );
        pods.respond(200, list("PodList", vec![]));
        // The spec names no admin token Secret: the generated one is created, once,
        // before any pod needs it.
        server
            .expect("GET", &format!("{NS}/secrets/db-admin-token"))
            .await
            .not_found();
        let create = server.expect("POST", &format!("{NS}/secrets")).await;
        assert_eq!(create.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            create.query.get("fieldManager").map(String::as_str),
            Some("dynamo-operator")
        );
        assert_eq!(create.body["kind"], "Secret");
        assert_eq!(create.body["metadata"]["name"], "db-admin-token");
        assert_eq!(
            create.body["metadata"]["ownerReferences"][0]["name"],
            json!("db")
        );
        let token = create.body["data"]["token"].as_str().unwrap().to_owned();
        // 32 random bytes as 64 hex characters, base64-encoded by the client: 88 chars.
        assert_eq!(token.len(), 88, "{token}");
        create.echo();
        // No pod runs, so no node is asked; the planner grows the StatefulSet to size.
        let sts = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        sts.assert_server_side_apply();
        assert_eq!(sts.body["spec"]["replicas"], 3);
        assert_eq!(sts.body["spec"]["podManagementPolicy"], "Parallel");
        sts.echo();
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["reason"], "GrowStatefulSet");
        assert_eq!(event.body["type"], "Normal");
        assert_eq!(event.body["note"], "grow statefulset to 3");
        assert_eq!(event.body["regarding"]["kind"], "DynamoCluster");
        assert_eq!(event.body["regarding"]["name"], "db");
        assert_eq!(event.body["reportingController"], "dynamo-operator");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        status.assert_server_side_apply();
        let s = &status.body["status"];
        assert_eq!(s["observedGeneration"], 1);
        assert_eq!(s["phase"], "Pending");
        assert_eq!(s["currentStep"], "grow statefulset to 3");
        assert_eq!((&s["members"], &s["readyNodes"]), (&json!(0), &json!(0)));
        assert_eq!(s["selector"], SELECTOR);
        let progressing = condition(s, "Progressing");
        assert_eq!(
            (&progressing["status"], &progressing["reason"]),
            (&json!("True"), &json!("GrowStatefulSet"))
        );
        let available = condition(s, "Available");
        assert_eq!(available["status"], "False");
        assert_eq!(condition(s, "Degraded")["status"], "False");
        let written = with_status(&c, s);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().poll)
    );
}

#[tokio::test]
async fn scale_up_joins_the_new_pod_through_a_member() {
    // Two real nodes: db-0 is a member; db-1 runs (a pod the StatefulSet just created)
    // and is not in the ring yet.
    let n0 = start_secured_node("db-0", &[], 1).await;
    let admin = GrpcAdmin::new(support::WAIT);
    let t0 = secured(&n0);
    admin
        .join(&t0, "db-0", &n0.internode_addr.to_string(), 1)
        .await
        .unwrap();
    support::wait_for_states(&admin, &t0, &[("db-0", MemberState::Member)]).await;
    let n1 = start_secured_node("db-1", &[n0.internode_addr], 1).await;
    let endpoints = Loopback(BTreeMap::from([
        (0, n0.internode_addr),
        (1, n1.internode_addr),
    ]));

    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1}});
    let c = cluster(spec, true);
    let n1_address = n1.internode_addr.to_string();
    let expected = c.clone();
    let action = pass(c, endpoints, |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 2));
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, true), pod(1, false)]));
        generated_token_exists(&mut server).await;
        // Unchanged StatefulSet: not applied. The join goes to db-0 over gRPC.
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["reason"], "Join");
        assert_eq!(event.body["note"], "join 1 with weight 1");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = &status.body["status"];
        assert_eq!(s["currentStep"], "join 1 with weight 1");
        assert_eq!(s["phase"], "Progressing");
        assert_eq!((&s["members"], &s["readyNodes"]), (&json!(1), &json!(1)));
        assert_eq!(condition(s, "Progressing")["reason"], "Join");
        assert_eq!(condition(s, "Available")["status"], "True");
        let written = with_status(&expected, s);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().poll)
    );

    // The ring really changed: db-0 lists db-1 at its advertised address, and db-1 learns
    // it is a member by gossip.
    let ring = admin.ring(&t0).await.unwrap();
    let joined = ring.members.iter().find(|m| m.node_id == "db-1").unwrap();
    assert_eq!(joined.address, n1_address);
    assert_eq!(joined.weight, 1);
    support::wait_for_states(&admin, &secured(&n1), &[("db-1", MemberState::Member)]).await;
    n1.shutdown().await.unwrap();
    n0.shutdown().await.unwrap();
}

#[tokio::test]
async fn decommission_below_n_is_refused_without_shrinking() {
    // Three real members with N = 3; the spec asks for 2 (an object from before the
    // schema's `size >= n` rule). Taking db-2 out would leave keys with 2 replicas.
    let n0 = start_secured_node("db-0", &[], 3).await;
    let seeds = [n0.internode_addr];
    let n1 = start_secured_node("db-1", &seeds, 3).await;
    let n2 = start_secured_node("db-2", &seeds, 3).await;
    let admin = GrpcAdmin::new(support::WAIT);
    let t0 = secured(&n0);
    for node in [&n0, &n1, &n2] {
        let id = node.shared().cluster().me().to_string();
        admin
            .join(&t0, &id, &node.internode_addr.to_string(), 1)
            .await
            .unwrap();
    }
    let all_members = [
        ("db-0", MemberState::Member),
        ("db-1", MemberState::Member),
        ("db-2", MemberState::Member),
    ];
    support::wait_for_states(&admin, &t0, &all_members).await;
    let endpoints = Loopback(BTreeMap::from([
        (0, n0.internode_addr),
        (1, n1.internode_addr),
        (2, n2.internode_addr),
    ]));

    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "replication": {"n": 3, "r": 2, "w": 2}});
    let c = cluster(spec, true);
    let expected = c.clone();
    let refused_status = Arc::new(std::sync::Mutex::new(Value::Null));
    let written = Arc::clone(&refused_status);
    let action = pass(c.clone(), endpoints.clone(), |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 3));
        server.expect("GET", &format!("{NS}/pods")).await.respond(
            200,
            list("PodList", vec![pod(0, true), pod(1, true), pod(2, true)]),
        );
        generated_token_exists(&mut server).await;
        // No StatefulSet apply (replicas stay 3) and no Leave: a warning and the status.
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["reason"], "DecommissionRefused");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = status.body["status"].clone();
        let degraded = condition(&s, "Degraded");
        assert_eq!(
            (&degraded["status"], &degraded["reason"]),
            (&json!("True"), &json!("DecommissionRefused"))
        );
        assert_eq!(
            degraded["message"],
            "refused: decommissioning node 2 would leave 2 members, fewer than the \
             replication factor 3"
        );
        assert_eq!(condition(&s, "Progressing")["status"], "False");
        assert_eq!(s["phase"], "Degraded");
        assert_eq!(s["members"], 3);
        status.respond(200, with_status(&expected, &s));
        *written.lock().unwrap() = s;
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().resync)
    );
    support::wait_for_states(&admin, &t0, &all_members).await;

    // The next pass sees the same ring and its own status: it reads, and writes nothing
    // (no repeated event, no status write, so no hot loop).
    let status = refused_status.lock().unwrap().clone();
    let mut c2 = c;
    c2.status = Some(serde_json::from_value(status).unwrap());
    let expected = c2.clone();
    pass(c2, endpoints, |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 3));
        server.expect("GET", &format!("{NS}/pods")).await.respond(
            200,
            list("PodList", vec![pod(0, true), pod(1, true), pod(2, true)]),
        );
        generated_token_exists(&mut server).await;
        server
    })
    .await
    .unwrap();
    let ring = admin.ring(&t0).await.unwrap();
    assert!(ring.members.iter().all(|m| m.state == MemberState::Member));
    for node in [n2, n1, n0] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn deletion_deletes_volumes_when_asked_and_releases_the_finalizer() {
    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "storage": {"retainOnDelete": false}});
    let mut c = cluster(spec, true);
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let returned = serde_json::to_value(&c).unwrap();
    let action = pass(c, Loopback::default(), |mut server| async move {
        let claims = server
            .expect("GET", &format!("{NS}/persistentvolumeclaims"))
            .await;
        assert_eq!(
            claims.query.get("labelSelector").map(String::as_str),
            Some(SELECTOR)
        );
        let claim = |name: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name, "namespace": "prod"}})
        };
        claims.respond(
            200,
            list(
                "PersistentVolumeClaimList",
                vec![claim("data-db-0"), claim("data-db-1")],
            ),
        );
        for name in ["data-db-0", "data-db-1"] {
            server
                .expect("DELETE", &format!("{NS}/persistentvolumeclaims/{name}"))
                .await
                .respond(200, claim(name));
        }
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["reason"], "Deleted");
        assert_eq!(event.body["note"], "cluster deleted; 2 volumes deleted");
        event.echo();
        let patch = server.expect("PATCH", &format!("{CLUSTERS}/db")).await;
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/json-patch+json")
        );
        assert_eq!(
            patch.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": controller::FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"}
            ])
        );
        patch.respond(200, returned);
        server
    })
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn deletion_keeps_volumes_by_default() {
    let mut c = cluster(json!({"size": 2, "image": "dynamo-node:dev"}), true);
    c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let returned = serde_json::to_value(&c).unwrap();
    pass(c, Loopback::default(), |mut server| async move {
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(
            event.body["note"],
            "cluster deleted; volumes retained (storage.retainOnDelete)"
        );
        event.echo();
        server
            .expect("PATCH", &format!("{CLUSTERS}/db"))
            .await
            .respond(200, returned);
        server
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_unreachable_ring_fails_the_pass_without_acting() {
    // A pod runs but nothing answers Admin.Ring: the controller must not guess.
    let c = cluster(
        json!({"size": 1, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );
    let expected = c.clone();
    let error = pass(c, Loopback::default(), |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 1));
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, false)]));
        generated_token_exists(&mut server).await;
        server
    })
    .await
    .unwrap_err();
    assert_eq!(error.label(), "ring_unreadable", "{error}");
    assert!(error.to_string().contains("db-0"), "{error}");
}

#[tokio::test]
async fn shrink_drops_only_nodes_outside_the_ring_and_their_volumes_if_asked() {
    // db-0 is the only member; db-1's pod runs but never joined, and the spec went back
    // to one node. The StatefulSet shrinks over db-1, and with retainOnScaleDown false
    // its volume goes too. A member's volume is never touched.
    let n0 = start_secured_node("db-0", &[], 1).await;
    let admin = GrpcAdmin::new(support::WAIT);
    let t0 = secured(&n0);
    admin
        .join(&t0, "db-0", &n0.internode_addr.to_string(), 1)
        .await
        .unwrap();
    support::wait_for_states(&admin, &t0, &[("db-0", MemberState::Member)]).await;
    let endpoints = Loopback(BTreeMap::from([(0, n0.internode_addr)]));
    let spec = json!({"size": 1, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1},
                      "storage": {"retainOnScaleDown": false}});
    let c = cluster(spec, true);
    let expected = c.clone();
    pass(c, endpoints, |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 2));
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, true), pod(1, false)]));
        generated_token_exists(&mut server).await;
        let sts = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        sts.assert_server_side_apply();
        assert_eq!(sts.body["spec"]["replicas"], 1);
        assert_eq!(
            sts.body["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
            "Delete"
        );
        sts.echo();
        server
            .expect("DELETE", &format!("{NS}/persistentvolumeclaims/data-db-1"))
            .await
            .not_found();
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["reason"], "ShrinkStatefulSet");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        assert_eq!(
            status.body["status"]["currentStep"],
            "shrink statefulset to 1"
        );
        let written = with_status(&expected, &status.body["status"]);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    let ring = admin.ring(&t0).await.unwrap();
    assert_eq!(ring.members.len(), 1);
    n0.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_admin_token_comes_from_the_named_secret() {
    // The node refuses Admin calls without its token; the controller reads it from the
    // Secret the spec names, each pass, and the converged cluster reports Running.
    let n0 = start_node("db-0", &[], 1, &["--admin-token", "s3cret"]).await;
    let admin = GrpcAdmin::new(support::WAIT);
    let t0 = dynamo_operator::admin::AdminTarget {
        token: Some("s3cret".to_owned()),
        ..support::target(&n0)
    };
    admin
        .join(&t0, "db-0", &n0.internode_addr.to_string(), 1)
        .await
        .unwrap();
    support::wait_for_states(&admin, &t0, &[("db-0", MemberState::Member)]).await;
    let endpoints = Loopback(BTreeMap::from([(0, n0.internode_addr)]));
    let spec = json!({"size": 1, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1},
                      "adminTokenSecret": "db-admin"});
    let c = cluster(spec, true);
    let expected = c.clone();
    let action = pass(c.clone(), endpoints.clone(), |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 1));
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, true)]));
        // "s3cret\n", as `kubectl create secret --from-file` often stores it.
        server
            .expect("GET", &format!("{NS}/secrets/db-admin"))
            .await
            .respond(
                200,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "db-admin", "namespace": "prod"},
                       "data": {"token": "czNjcmV0Cg=="}}),
            );
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = &status.body["status"];
        assert_eq!(s["phase"], "Running");
        assert!(s.get("currentStep").is_none(), "{s}");
        assert_eq!(condition(s, "Progressing")["reason"], "Converged");
        assert_eq!(condition(s, "Available")["status"], "True");
        let written = with_status(&expected, s);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().resync)
    );

    // A Secret without the key fails the pass, naming the Secret.
    let expected = c.clone();
    let error = pass(c, endpoints, |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 1));
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, true)]));
        server
            .expect("GET", &format!("{NS}/secrets/db-admin"))
            .await
            .respond(
                200,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "db-admin", "namespace": "prod"}, "data": {}}),
            );
        server
    })
    .await
    .unwrap_err();
    assert_eq!(error.label(), "secret");
    assert_eq!(
        error.to_string(),
        "failed to apply object: secret db-admin: no key `token`"
    );
    n0.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pending_transfer_holds_the_pass_without_shrinking() {
    // db-0 and db-1 know each other; db-0 goes down, then db-1 joins: it must pull its
    // ranges from db-0, so its transfer stays pending. The spec asks for 2 nodes and
    // the StatefulSet has 3 (db-2 never joined): a shrink is due, but nothing moves
    // while a member reports ranges in flight.
    let n0 = start_secured_node("db-0", &[], 1).await;
    let admin = GrpcAdmin::new(support::WAIT);
    let t0 = secured(&n0);
    admin
        .join(&t0, "db-0", &n0.internode_addr.to_string(), 1)
        .await
        .unwrap();
    support::wait_for_states(&admin, &t0, &[("db-0", MemberState::Member)]).await;
    let n1 = start_secured_node("db-1", &[n0.internode_addr], 1).await;
    let t1 = secured(&n1);
    support::wait_for_states(&admin, &t1, &[("db-0", MemberState::Member)]).await;
    n0.shutdown().await.unwrap();
    admin
        .join(&t1, "db-1", &n1.internode_addr.to_string(), 1)
        .await
        .unwrap();
    support::eventually("db-1 to report its transfer pending", || async {
        admin
            .status(&t1)
            .await
            .is_ok_and(|s| s.transfer_pending_ranges > 0)
    })
    .await;

    let endpoints = Loopback(BTreeMap::from([(1, n1.internode_addr)]));
    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1}});
    let c = cluster(spec, true);
    let expected = c.clone();
    let action = pass(c, endpoints, |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 3));
        // db-0's pod is gone (being rescheduled), db-1 is up, db-2 runs outside the ring.
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(1, true), pod(2, false)]));
        generated_token_exists(&mut server).await;
        // No StatefulSet apply (no shrink), no event: only the status, saying why.
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = &status.body["status"];
        assert_eq!(s["currentStep"], "wait: transfers pending on node 1");
        assert_eq!(s["phase"], "Progressing");
        let progressing = condition(s, "Progressing");
        assert_eq!(
            (&progressing["status"], &progressing["reason"]),
            (&json!("True"), &json!("WaitingForTransfers"))
        );
        let written = with_status(&expected, s);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().poll)
    );
    // Nothing changed the ring: db-1 still pulls.
    let status = admin.status(&t1).await.unwrap();
    assert!(status.transfers_pending, "{status:?}");
    n1.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lost_race_for_the_generated_token_uses_the_winners() {
    // Another writer (the previous leader) created the generated Secret between this
    // pass's read and its create: the create conflicts, and the winner's token, which
    // the node requires, is read and used. Nothing is overwritten.
    let n0 = start_secured_node("db-0", &[], 1).await;
    let admin = GrpcAdmin::new(support::WAIT);
    let t0 = secured(&n0);
    admin
        .join(&t0, "db-0", &n0.internode_addr.to_string(), 1)
        .await
        .unwrap();
    support::wait_for_states(&admin, &t0, &[("db-0", MemberState::Member)]).await;
    let endpoints = Loopback(BTreeMap::from([(0, n0.internode_addr)]));
    let spec = json!({"size": 1, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1}});
    let c = cluster(spec, true);
    let expected = c.clone();
    pass(c, endpoints, |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 1));
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, true)]));
        let path = format!("{NS}/secrets/db-admin-token");
        server.expect("GET", &path).await.not_found();
        let create = server.expect("POST", &format!("{NS}/secrets")).await;
        assert_eq!(create.body["metadata"]["name"], "db-admin-token");
        create.respond(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "secrets \"db-admin-token\" already exists",
                   "reason": "AlreadyExists", "code": 409}),
        );
        generated_token_exists(&mut server).await;
        // The ring and the status were read with the winner's token: converged.
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        assert_eq!(status.body["status"]["phase"], "Running");
        let written = with_status(&expected, &status.body["status"]);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    n0.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tls_cluster_is_reconciled_over_mutual_tls() {
    // The node serves Admin with TLS and requires client certificates. The controller
    // reads the CA and its client identity from the Secret `spec.tls` names and the
    // token from the generated Secret, and a whole pass (ring, status, join) runs over
    // mutual TLS.
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert_pem, key_pem) = (cert.pem(), signing_key.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    let (crt, key) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let n0 = start_node(
        "db-0",
        &[],
        1,
        &[
            "--admin-token",
            TOKEN,
            "--tls-cert",
            crt,
            "--tls-key",
            key,
            "--tls-ca",
            crt,
        ],
    )
    .await;
    let endpoints = Loopback(BTreeMap::from([(0, n0.internode_addr)]));
    let spec = json!({"size": 1, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1},
                      "tls": {"secretName": "db-tls"}});
    let c = cluster(spec, true);
    let expected = c.clone();
    let tls_secret = secret(
        "db-tls",
        &[
            ("ca.crt", cert_pem.as_bytes()),
            ("tls.crt", cert_pem.as_bytes()),
            ("tls.key", key_pem.as_bytes()),
        ],
    );
    // The first node joins itself: bootstrap, through its own Admin over mutual TLS.
    pass(c, endpoints, |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 1));
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, false)]));
        generated_token_exists(&mut server).await;
        server
            .expect("GET", &format!("{NS}/secrets/db-tls"))
            .await
            .respond(200, tls_secret);
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["note"], "join 0 with weight 1");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let written = with_status(&expected, &status.body["status"]);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();

    let admin = GrpcAdmin::new(support::WAIT);
    let target = AdminTarget {
        url: format!("https://{}", n0.internode_addr),
        token: Some(TOKEN.to_owned()),
        tls: Some(dynamo_operator::admin::AdminTls {
            ca_pem: cert_pem.clone().into_bytes(),
            identity: Some((cert_pem.into_bytes(), key_pem.into_bytes())),
        }),
    };
    support::wait_for_states(&admin, &target, &[("db-0", MemberState::Member)]).await;
    n0.shutdown().await.unwrap();
}

#[test]
fn the_chart_grants_what_the_lease_keeper_needs() {
    // kube-lease-manager reads the Lease, creates it if missing, and takes and renews it
    // with patches (it never updates or deletes it outside its own tests).
    for verb in ["get", "create", "patch"] {
        let permission = (
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            verb.to_owned(),
        );
        assert!(
            support::chart_rbac().contains(&permission),
            "{permission:?}"
        );
    }
}

/// The member table row of `node` as `via` reports it: (weight, settled weight).
async fn weights_at(admin: &GrpcAdmin, via: &AdminTarget, node: &str) -> (u32, u32) {
    let ring = admin.ring(via).await.expect("Admin.Ring");
    let row = ring
        .members
        .iter()
        .find(|m| m.node_id == node)
        .unwrap_or_else(|| panic!("{node} not in the member table at {}", via.url));
    (row.weight, row.settled_weight)
}

/// One pass over a converged-looking cluster of two ready pods whose objects and
/// StatefulSet are current: the reads every such pass makes, in order.
async fn two_ready_pods_read(server: &mut ApiServer, cluster: &DynamoCluster) {
    children_unchanged(server, cluster).await;
    server
        .expect("GET", &format!("{APPS}/statefulsets/db"))
        .await
        .respond(200, statefulset(cluster, 2));
    server
        .expect("GET", &format!("{NS}/pods"))
        .await
        .respond(200, list("PodList", vec![pod(0, true), pod(1, true)]));
    generated_token_exists(server).await;
}

#[tokio::test]
async fn a_weight_change_is_one_set_weight_then_waits_for_its_hand_over() {
    // Dynamo §4.2: a node's weight is its share of the ring, so a weight change moves key
    // ranges (here db-1 pulls from db-0, N = 1). db-1 runs its transfer rounds only when
    // the test drives them (its own loop's next tick is an hour away), so the hand-over
    // is pending for exactly as long as the test wants.
    let pair = HandOverPair::start().await;
    let HandOverPair {
        n1,
        admin,
        t0,
        t1,
        endpoints,
        ..
    } = &pair;
    let unlimited = dynamo_node::transfer::Allowance {
        keys: u64::MAX,
        bytes: u64::MAX,
    };

    // Pass 1: the spec gives db-1 weight 3. Exactly one SetWeight, sent to db-0 (the
    // lowest ready member); an Event; the status names the step.
    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1},
                      "weights": {"overrides": {"1": 3}}});
    let c1 = cluster(spec, true);
    let expected = c1.clone();
    let first_status = Arc::new(std::sync::Mutex::new(Value::Null));
    let written = Arc::clone(&first_status);
    let action = pass(c1.clone(), endpoints.clone(), |mut server| async move {
        two_ready_pods_read(&mut server, &expected).await;
        // No StatefulSet apply (unchanged), then the SetWeight over gRPC, then:
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["type"], "Normal");
        assert_eq!(event.body["reason"], "SetWeight");
        assert_eq!(event.body["action"], "SetWeight");
        assert_eq!(event.body["note"], "set weight of 1 to 3");
        assert_eq!(event.body["regarding"]["name"], "db");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        status.assert_server_side_apply();
        let s = status.body["status"].clone();
        assert_eq!(s["observedGeneration"], 1);
        assert_eq!(s["currentStep"], "set weight of 1 to 3");
        assert_eq!(s["phase"], "Progressing");
        assert_eq!((&s["members"], &s["readyNodes"]), (&json!(2), &json!(2)));
        let progressing = condition(&s, "Progressing");
        assert_eq!(
            (&progressing["status"], &progressing["reason"]),
            (&json!("True"), &json!("SetWeight"))
        );
        assert_eq!(progressing["message"], "set weight of 1 to 3");
        assert_eq!(condition(&s, "Degraded")["status"], "False");
        status.respond(200, with_status(&expected, &s));
        *written.lock().unwrap() = s;
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().poll)
    );
    // The member table changed by exactly that step: db-1 heads for weight 3 and is
    // still laid out for 1 (the hand-over is pending); db-0 is untouched.
    assert_eq!(weights_at(admin, t0, "db-1").await, (3, 1));
    assert_eq!(weights_at(admin, t0, "db-0").await, (1, 1));
    support::eventually("db-1 to learn its new weight by gossip", || async {
        weights_at(admin, t1, "db-1").await == (3, 1)
    })
    .await;

    // Pass 2: meanwhile the spec also gives db-0 weight 2 (generation 2). The hand-over
    // of db-1 is pending, so no membership step at all: no SetWeight, no Event; the
    // status says what it waits for.
    let mut c2 = cluster(
        json!({"size": 2, "image": "dynamo-node:dev",
               "replication": {"n": 1, "r": 1, "w": 1},
               "weights": {"overrides": {"0": 2, "1": 3}}}),
        true,
    );
    c2.metadata.generation = Some(2);
    c2.status = Some(serde_json::from_value(first_status.lock().unwrap().clone()).unwrap());
    let expected = c2.clone();
    let waiting_status = Arc::new(std::sync::Mutex::new(Value::Null));
    let written = Arc::clone(&waiting_status);
    let action = pass(c2.clone(), endpoints.clone(), |mut server| async move {
        two_ready_pods_read(&mut server, &expected).await;
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = status.body["status"].clone();
        assert_eq!(s["observedGeneration"], 2);
        assert_eq!(s["currentStep"], "wait: transfers pending on node 1");
        assert_eq!(s["phase"], "Progressing");
        let progressing = condition(&s, "Progressing");
        assert_eq!(
            (&progressing["status"], &progressing["reason"]),
            (&json!("True"), &json!("WaitingForTransfers"))
        );
        assert_eq!(condition(&s, "Available")["status"], "True");
        assert_eq!(condition(&s, "Degraded")["status"], "False");
        status.respond(200, with_status(&expected, &s));
        *written.lock().unwrap() = s;
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().poll)
    );
    assert_eq!(weights_at(admin, t0, "db-0").await, (1, 1), "no SetWeight");
    assert_eq!(weights_at(admin, t0, "db-1").await, (3, 1));

    // The same pass again, over its own status: still waiting, nothing written at all.
    let mut c2_again = c2.clone();
    c2_again.status = Some(serde_json::from_value(waiting_status.lock().unwrap().clone()).unwrap());
    let expected = c2_again.clone();
    pass(
        c2_again.clone(),
        endpoints.clone(),
        |mut server| async move {
            two_ready_pods_read(&mut server, &expected).await;
            server
        },
    )
    .await
    .unwrap();

    // db-1 finishes its hand-over: real transfer rounds, pulling its new ranges from
    // db-0, until it settles its weight; the settled weight spreads by gossip.
    support::eventually("db-1 to finish its hand-over", || async {
        n1.shared().transfer_round(unlimited).await;
        weights_at(admin, t1, "db-1").await == (3, 3)
    })
    .await;
    support::eventually("db-0 to see db-1 settled", || async {
        weights_at(admin, t0, "db-1").await == (3, 3)
    })
    .await;

    // Pass 3: settled, so the waiting change goes ahead: one SetWeight of db-0.
    let expected = c2_again.clone();
    pass(
        c2_again.clone(),
        endpoints.clone(),
        |mut server| async move {
            two_ready_pods_read(&mut server, &expected).await;
            let event = server.expect("POST", EVENTS).await;
            assert_eq!(event.body["note"], "set weight of 0 to 2");
            event.echo();
            let status = server
                .expect("PATCH", &format!("{CLUSTERS}/db/status"))
                .await;
            assert_eq!(status.body["status"]["currentStep"], "set weight of 0 to 2");
            let written = with_status(&expected, &status.body["status"]);
            status.respond(200, written);
            server
        },
    )
    .await
    .unwrap();
    assert_eq!(weights_at(admin, t0, "db-0").await.0, 2);

    // db-0 drives its own hand-over (its transfer loop runs every 250 ms). Once every
    // weight is settled, a pass reports the cluster converged and Available.
    support::eventually("both weights settled on both nodes", || async {
        for via in [t0, t1] {
            if weights_at(admin, via, "db-0").await != (2, 2)
                || weights_at(admin, via, "db-1").await != (3, 3)
            {
                return false;
            }
        }
        true
    })
    .await;
    let expected = c2_again.clone();
    let action = pass(c2_again, endpoints.clone(), |mut server| async move {
        two_ready_pods_read(&mut server, &expected).await;
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = &status.body["status"];
        assert_eq!(s["phase"], "Running");
        assert!(s.get("currentStep").is_none(), "{s}");
        let available = condition(s, "Available");
        assert_eq!(
            (&available["status"], &available["reason"]),
            (&json!("True"), &json!("MembersReady"))
        );
        let progressing = condition(s, "Progressing");
        assert_eq!(
            (&progressing["status"], &progressing["reason"]),
            (&json!("False"), &json!("Converged"))
        );
        let written = with_status(&expected, s);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().resync)
    );
    pair.shutdown().await;
}

#[tokio::test]
async fn a_decommission_the_remaining_volumes_cannot_hold_is_refused() {
    // Two members with N = 1 hold 20 keys between them; the spec asks for one node.
    // Before taking db-1 out the controller checks that db-0's volume can hold what both
    // store: at 32 bytes a key at least, 20 keys do not fit in 256 bytes, so the
    // decommission is refused with a condition. With a 1 MiB volume it goes ahead.
    let n0 = start_secured_node("db-0", &[], 1).await;
    let n1 = start_secured_node("db-1", &[n0.internode_addr], 1).await;
    let admin = GrpcAdmin::new(support::WAIT);
    let (t0, t1) = (secured(&n0), secured(&n1));
    for node in [&n0, &n1] {
        let id = node.shared().cluster().me().to_string();
        admin
            .join(&t0, &id, &node.internode_addr.to_string(), 1)
            .await
            .unwrap();
    }
    let members = [("db-0", MemberState::Member), ("db-1", MemberState::Member)];
    support::wait_for_states(&admin, &t0, &members).await;
    support::wait_for_states(&admin, &t1, &members).await;
    let client = dynamo_node::client::Client::connect(dynamo_node::client::ClientConfig::new([n0
        .client_addr
        .to_string()]))
    .await
    .unwrap();
    for i in 0..20 {
        let key = format!("key-{i}");
        client
            .put(
                key.as_bytes(),
                &dynamo_node::client::Context::empty(),
                b"value",
            )
            .await
            .unwrap();
    }
    support::eventually("both nodes to count the 20 keys", || async {
        let (Ok(s0), Ok(s1)) = (admin.status(&t0).await, admin.status(&t1).await) else {
            return false;
        };
        s0.keys + s1.keys == 20
    })
    .await;
    let endpoints = Loopback(BTreeMap::from([
        (0, n0.internode_addr),
        (1, n1.internode_addr),
    ]));
    let spec = |volume: &str| {
        json!({"size": 1, "image": "dynamo-node:dev",
               "replication": {"n": 1, "r": 1, "w": 1},
               "storage": {"size": volume}})
    };

    let c = cluster(spec("256"), true);
    let expected = c.clone();
    let action = pass(c, endpoints.clone(), |mut server| async move {
        two_ready_pods_read(&mut server, &expected).await;
        // No StatefulSet write and no Leave: a warning and the status.
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["reason"], "InsufficientCapacity");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = &status.body["status"];
        assert_eq!(s["phase"], "Degraded");
        let degraded = condition(s, "Degraded");
        assert_eq!(
            (&degraded["status"], &degraded["reason"]),
            (&json!("True"), &json!("InsufficientCapacity"))
        );
        assert_eq!(
            degraded["message"],
            "refused: decommissioning node 1 would leave the stored keys (at least 32 bytes \
             each) on 1 members with 256-byte volumes: they cannot hold them"
        );
        assert_eq!(condition(s, "Progressing")["status"], "False");
        let written = with_status(&expected, s);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().resync)
    );
    support::wait_for_states(&admin, &t0, &members).await;

    // The same cluster with room for the data: db-1 is decommissioned through db-0.
    let c = cluster(spec("1Mi"), true);
    let expected = c.clone();
    pass(c, endpoints, |mut server| async move {
        two_ready_pods_read(&mut server, &expected).await;
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(
            (&event.body["type"], &event.body["note"]),
            (&json!("Normal"), &json!("decommission 1"))
        );
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        assert_eq!(status.body["status"]["currentStep"], "decommission 1");
        let written = with_status(&expected, &status.body["status"]);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    let ring = admin.ring(&t0).await.unwrap();
    let leaving = ring.members.iter().find(|m| m.node_id == "db-1").unwrap();
    assert_ne!(
        leaving.state,
        MemberState::Member,
        "db-1 was asked to leave"
    );
    n1.shutdown().await.unwrap();
    n0.shutdown().await.unwrap();
}

#[test]
fn the_charts_rbac_grants_nothing_beyond_what_the_operator_uses() {
    // Least privilege: every request these tests see is checked against the chart's
    // rules (ApiServer::expect); this pins the rules themselves, so a wildcard, a delete
    // of owned objects or a list of Secrets cannot slip in unnoticed.
    let mut expected = std::collections::BTreeSet::new();
    let mut grant = |group: &str, resource: &str, verbs: &[&str]| {
        for verb in verbs {
            expected.insert((group.to_owned(), resource.to_owned(), (*verb).to_owned()));
        }
    };
    let group = "dynamo.example.org";
    grant(group, "dynamoclusters", &["list", "watch", "patch"]);
    grant(group, "dynamoclusters/status", &["patch"]);
    // Owner references with blockOwnerDeletion need it on the owner.
    grant(group, "dynamoclusters/finalizers", &["update"]);
    let owned = ["get", "list", "watch", "create", "patch"];
    grant("apps", "statefulsets", &owned);
    grant("", "services", &owned);
    grant("", "configmaps", &owned);
    grant("policy", "poddisruptionbudgets", &owned);
    grant("networking.k8s.io", "networkpolicies", &owned);
    grant("", "secrets", &["get", "create"]);
    grant("", "pods", &["list"]);
    grant("", "persistentvolumeclaims", &["list", "delete"]);
    grant("events.k8s.io", "events", &["create", "patch"]);
    grant("coordination.k8s.io", "leases", &["get", "create", "patch"]);
    assert_eq!(support::chart_rbac(), &expected);
}

#[tokio::test]
async fn stale_labels_and_status_never_decide_a_step() {
    // Level-triggered: the cluster object claims db-1 is already gone (a label and an
    // annotation a one-shot design might have left, and a status from some earlier pass
    // saying one member and nothing in progress), but the ring still lists db-1 as a
    // member. The pass believes the ring: db-1 is decommissioned, not skipped (a stale
    // label once made a peer operator skip a decommission and delete the volume).
    let n0 = start_secured_node("db-0", &[], 1).await;
    let n1 = start_secured_node("db-1", &[n0.internode_addr], 1).await;
    let admin = GrpcAdmin::new(support::WAIT);
    let (t0, t1) = (secured(&n0), secured(&n1));
    for node in [&n0, &n1] {
        let id = node.shared().cluster().me().to_string();
        admin
            .join(&t0, &id, &node.internode_addr.to_string(), 1)
            .await
            .unwrap();
    }
    let members = [("db-0", MemberState::Member), ("db-1", MemberState::Member)];
    support::wait_for_states(&admin, &t0, &members).await;
    support::wait_for_states(&admin, &t1, &members).await;
    let endpoints = Loopback(BTreeMap::from([
        (0, n0.internode_addr),
        (1, n1.internode_addr),
    ]));
    let mut c = cluster(
        json!({"size": 1, "image": "dynamo-node:dev",
               "replication": {"n": 1, "r": 1, "w": 1},
               "storage": {"retainOnScaleDown": false}}),
        true,
    );
    c.metadata.labels = Some(BTreeMap::from([(
        "dynamo.example.org/decommissioned".to_owned(),
        "db-1".to_owned(),
    )]));
    c.metadata.annotations = Some(BTreeMap::from([(
        "dynamo.example.org/last-step".to_owned(),
        "shrink statefulset to 1".to_owned(),
    )]));
    c.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 1, "readyNodes": 1, "members": 1, "phase": "Running",
            "selector": SELECTOR,
        }))
        .unwrap(),
    );
    let expected = c.clone();
    pass(c, endpoints, |mut server| async move {
        two_ready_pods_read(&mut server, &expected).await;
        // No StatefulSet shrink, no volume deleted: a Leave to db-0, then the event.
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["note"], "decommission 1");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = &status.body["status"];
        assert_eq!(s["currentStep"], "decommission 1");
        assert_eq!((&s["members"], &s["readyNodes"]), (&json!(2), &json!(2)));
        let written = with_status(&expected, s);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    let ring = admin.ring(&t0).await.unwrap();
    let row = ring.members.iter().find(|m| m.node_id == "db-1").unwrap();
    assert_ne!(row.state, MemberState::Member, "db-1 was asked to leave");
    n1.shutdown().await.unwrap();
    n0.shutdown().await.unwrap();
}

/// Two members where db-1 drives its transfers only when the test says so (its own
/// loop's next tick is an hour away), with N = 1.
struct HandOverPair {
    n0: RunningNode,
    n1: RunningNode,
    admin: GrpcAdmin,
    t0: AdminTarget,
    t1: AdminTarget,
    endpoints: Loopback,
}

impl HandOverPair {
    async fn start() -> Self {
        let n0 = start_secured_node("db-0", &[], 1).await;
        let n1 = start_node(
            "db-1",
            &[n0.internode_addr],
            1,
            &["--admin-token", TOKEN, "--transfer-interval", "1h"],
        )
        .await;
        let admin = GrpcAdmin::new(support::WAIT);
        let (t0, t1) = (secured(&n0), secured(&n1));
        for node in [&n0, &n1] {
            let id = node.shared().cluster().me().to_string();
            admin
                .join(&t0, &id, &node.internode_addr.to_string(), 1)
                .await
                .unwrap();
        }
        let endpoints = Loopback(BTreeMap::from([
            (0, n0.internode_addr),
            (1, n1.internode_addr),
        ]));
        let pair = Self {
            n0,
            n1,
            admin,
            t0,
            t1,
            endpoints,
        };
        pair.drive_db1_to(MemberState::Member).await;
        support::wait_for_states(
            &pair.admin,
            &pair.t0,
            &[("db-0", MemberState::Member), ("db-1", MemberState::Member)],
        )
        .await;
        pair
    }

    /// Runs db-1's transfer rounds until it reports `state` with nothing pending, and
    /// db-0 lists it so.
    async fn drive_db1_to(&self, state: MemberState) {
        let unlimited = dynamo_node::transfer::Allowance {
            keys: u64::MAX,
            bytes: u64::MAX,
        };
        support::eventually(&format!("db-1 to be {state:?}"), || async {
            self.n1.shared().transfer_round(unlimited).await;
            self.admin
                .status(&self.t1)
                .await
                .is_ok_and(|s| s.state == Some(state) && !s.transfers_pending)
        })
        .await;
        support::wait_for_states(&self.admin, &self.t0, &[("db-1", state)]).await;
    }

    /// Decommissions db-1 through db-0; it stays `Leaving` until driven.
    async fn start_leaving(&self) {
        self.admin.leave(&self.t0, "db-1").await.unwrap();
        support::wait_for_states(&self.admin, &self.t1, &[("db-1", MemberState::Leaving)]).await;
    }

    async fn shutdown(self) {
        self.n1.shutdown().await.unwrap();
        self.n0.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_size_change_waits_while_a_node_is_leaving() {
    // db-1 is being decommissioned (N = 1: it pushes its ranges to db-0, in rounds the
    // test drives) when the spec changes again, to 3 nodes. While db-1 leaves, the
    // StatefulSet is not grown and nothing else moves; once db-1 is removed the growth
    // goes ahead.
    let pair = HandOverPair::start().await;
    pair.start_leaving().await;
    let endpoints = pair.endpoints.clone();
    let c = cluster(
        json!({"size": 3, "image": "dynamo-node:dev",
               "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );

    let expected = c.clone();
    let action = pass(c.clone(), endpoints.clone(), |mut server| async move {
        two_ready_pods_read(&mut server, &expected).await;
        // No StatefulSet apply (no growth to 3), no event: the status says why.
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let s = &status.body["status"];
        assert_eq!(s["currentStep"], "wait: transfers pending on node 1");
        assert_eq!(condition(s, "Progressing")["reason"], "WaitingForTransfers");
        let written = with_status(&expected, s);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(controller::Intervals::default().poll)
    );

    pair.drive_db1_to(MemberState::Removed).await;
    let expected = c.clone();
    pass(c, endpoints, |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 2));
        // A removed node no longer reports ready.
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, true), pod(1, false)]));
        generated_token_exists(&mut server).await;
        let sts = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        assert_eq!(sts.body["spec"]["replicas"], 3);
        sts.echo();
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["note"], "grow statefulset to 3");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let written = with_status(&expected, &status.body["status"]);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    pair.shutdown().await;
}

#[tokio::test]
async fn a_volume_is_deleted_only_after_its_node_is_removed() {
    // The spec went from 2 nodes to 1 with retainOnScaleDown false, and db-1 is handing
    // its ranges off. While it leaves, neither its pod nor its volume goes; once the ring
    // reports it removed, the StatefulSet shrinks over it and its PVC is deleted.
    let pair = HandOverPair::start().await;
    pair.start_leaving().await;
    let c = cluster(
        json!({"size": 1, "image": "dynamo-node:dev",
               "replication": {"n": 1, "r": 1, "w": 1},
               "storage": {"retainOnScaleDown": false}}),
        true,
    );
    let expected = c.clone();
    pass(c.clone(), pair.endpoints.clone(), |mut server| async move {
        two_ready_pods_read(&mut server, &expected).await;
        // No StatefulSet apply, no DELETE of data-db-1: only the status.
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        assert_eq!(
            status.body["status"]["currentStep"],
            "wait: transfers pending on node 1"
        );
        let written = with_status(&expected, &status.body["status"]);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();

    pair.drive_db1_to(MemberState::Removed).await;
    let expected = c.clone();
    pass(c, pair.endpoints.clone(), |mut server| async move {
        children_unchanged(&mut server, &expected).await;
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, statefulset(&expected, 2));
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, true), pod(1, false)]));
        generated_token_exists(&mut server).await;
        let sts = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        assert_eq!(sts.body["spec"]["replicas"], 1);
        sts.echo();
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": "data-db-1", "namespace": "prod"}});
        server
            .expect("DELETE", &format!("{NS}/persistentvolumeclaims/data-db-1"))
            .await
            .respond(200, claim);
        let event = server.expect("POST", EVENTS).await;
        assert_eq!(event.body["note"], "shrink statefulset to 1");
        event.echo();
        let status = server
            .expect("PATCH", &format!("{CLUSTERS}/db/status"))
            .await;
        let written = with_status(&expected, &status.body["status"]);
        status.respond(200, written);
        server
    })
    .await
    .unwrap();
    pair.shutdown().await;
}

#[tokio::test]
async fn failed_passes_back_off_per_cluster_and_a_success_resets_it() {
    // One context across passes, as the controller runs them: each failure of a cluster
    // doubles its retry delay (5 s, 10 s, 20 s), another cluster's count is its own, and
    // a pass that succeeds starts the count again. Every failure is counted in
    // dynamo_operator_reconcile_errors_total by kind.
    let (client, mut server) = mock_client();
    let ctx = context(client, Loopback::default());
    let db = cluster(json!({"size": 1, "image": "dynamo-node:dev"}), true);
    let mut other = db.clone();
    other.metadata.name = Some("other".to_owned());
    let unfinalized = cluster(json!({"size": 1, "image": "dynamo-node:dev"}), false);
    let internal_error = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": "etcd is unhappy",
                                "reason": "InternalError", "code": 500});

    // The API server's side: the first read of each failing pass gets a 500; the
    // successful pass is the finalizer patch.
    let answers = {
        let internal_error = internal_error.clone();
        let finalized = serde_json::to_value(cluster(
            json!({"size": 1, "image": "dynamo-node:dev"}),
            true,
        ))
        .unwrap();
        tokio::spawn(async move {
            for name in ["db", "db", "db", "other", "-", "db"] {
                if name == "-" {
                    server
                        .expect("PATCH", &format!("{CLUSTERS}/db"))
                        .await
                        .respond(200, finalized.clone());
                } else {
                    server
                        .expect("GET", &format!("{NS}/configmaps/{name}-config"))
                        .await
                        .respond(500, internal_error.clone());
                }
            }
            server
        })
    };
    let mut delays = Vec::new();
    for object in [&db, &db, &db, &other] {
        let object = Arc::new(object.clone());
        let error = reconcile(Arc::clone(&object), Arc::clone(&ctx))
            .await
            .unwrap_err();
        assert_eq!(error.label(), "kube", "{error}");
        delays.push(controller::error_policy(object, &error, Arc::clone(&ctx)));
    }
    let backoff = |seconds| Action::requeue(std::time::Duration::from_secs(seconds));
    assert_eq!(delays, [backoff(5), backoff(10), backoff(20), backoff(5)]);
    assert_eq!(
        reconcile(Arc::new(unfinalized), Arc::clone(&ctx))
            .await
            .unwrap(),
        Action::await_change()
    );
    let object = Arc::new(db);
    let error = reconcile(Arc::clone(&object), Arc::clone(&ctx))
        .await
        .unwrap_err();
    assert_eq!(
        controller::error_policy(object, &error, Arc::clone(&ctx)),
        backoff(5),
        "a success resets the count"
    );
    let metrics = ctx.metrics().encode();
    drop(ctx);
    answers.await.unwrap().expect_no_more().await;
    for line in [
        "dynamo_operator_reconciles_total 6",
        "dynamo_operator_reconcile_errors_total{error=\"kube\"} 5",
        "dynamo_operator_reconcile_duration_seconds_count 6",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} missing in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn the_controller_watches_clusters_and_their_owned_objects_in_its_namespace() {
    // `controller::run` as the binary starts it, for one namespace: it lists and then
    // watches the DynamoClusters and the five kinds of objects it owns, those only
    // through the managed-by label (so it never caches every ConfigMap of the
    // namespace), each a request the chart's RBAC grants; it stops on shutdown.
    let (client, mut server) = mock_client();
    let ctx = context(client, Loopback::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(controller::run(ctx, Some("prod"), async move {
        let _ = stopped.await;
    }));
    let managed = Some(controller::MANAGED_BY_SELECTOR.to_owned());
    let expected: BTreeMap<&str, Option<String>> = BTreeMap::from([
        (CLUSTERS, None),
        ("/api/v1/namespaces/prod/configmaps", managed.clone()),
        ("/api/v1/namespaces/prod/services", managed.clone()),
        (
            "/apis/apps/v1/namespaces/prod/statefulsets",
            managed.clone(),
        ),
        (
            "/apis/policy/v1/namespaces/prod/poddisruptionbudgets",
            managed.clone(),
        ),
        (
            "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies",
            managed,
        ),
    ]);
    let mut listed = std::collections::BTreeSet::new();
    let mut watching = std::collections::BTreeSet::new();
    // Open watches are held unanswered, as an API server holds them.
    let mut held = Vec::new();
    while watching.len() < expected.len() {
        let call = server.next_call("a list or a watch").await;
        assert_eq!(call.method, "GET", "{}", call.path);
        let selector = expected
            .get(call.path.as_str())
            .unwrap_or_else(|| panic!("unexpected request for {}", call.path));
        assert_eq!(
            call.query.get("labelSelector"),
            selector.as_ref(),
            "{}",
            call.path
        );
        if call.query.get("watch").is_some_and(|w| w == "true") {
            assert!(
                listed.contains(&call.path),
                "watch before list: {}",
                call.path
            );
            watching.insert(call.path.clone());
            held.push(call);
        } else {
            listed.insert(call.path.clone());
            call.respond(200, list("List", vec![]));
        }
    }
    stop.send(()).unwrap();
    tokio::time::timeout(support::WAIT, running)
        .await
        .expect("the controller stops on shutdown")
        .unwrap();
    drop(held);
}
