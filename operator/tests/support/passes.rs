//! One reconcile pass of cluster `db` in namespace `prod` against the mock API server,
//! and the request sequences many passes share (the reads before the planner's step,
//! the Event, the status write), so a test spells out only what its scenario changes.

use std::sync::Arc;

use dynamo_operator::builders;
use dynamo_operator::controller::{self, Intervals, reconcile, with_applied_hash};
use dynamo_operator::crd::DynamoCluster;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{ApiServer, Call, Loopback, OPERATOR_NAMESPACE, WAIT, context, list, mock_client};
use super::{pod, ring::TOKEN};

/// The core API's namespace `prod`.
pub const NS: &str = "/api/v1/namespaces/prod";
/// The apps API's namespace `prod`.
pub const APPS: &str = "/apis/apps/v1/namespaces/prod";
/// The policy API's namespace `prod`.
pub const POLICY: &str = "/apis/policy/v1/namespaces/prod";
/// The cluster's NetworkPolicy.
pub const NETPOL: &str = "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/db";
/// Where Events are posted.
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/prod/events";
/// The DynamoClusters of namespace `prod`.
pub const CLUSTERS: &str = "/apis/dynamo.example.org/v1alpha1/namespaces/prod/dynamoclusters";
/// The cluster object `db`.
pub const CLUSTER: &str = "/apis/dynamo.example.org/v1alpha1/namespaces/prod/dynamoclusters/db";
/// Its status subresource.
pub const CLUSTER_STATUS: &str =
    "/apis/dynamo.example.org/v1alpha1/namespaces/prod/dynamoclusters/db/status";
/// The label selector of the cluster's pods and volumes.
pub const SELECTOR: &str = "app.kubernetes.io/instance=db,app.kubernetes.io/name=dynamo";

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A Secret as the API server returns it, with `data` base64-encoded.
pub fn secret(name: &str, data: &[(&str, &[u8])]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(base64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "prod"}, "data": data})
}

/// The generated admin token Secret exists already: read, never written.
pub async fn generated_token_exists(server: &mut ApiServer) {
    server
        .expect("GET", &format!("{NS}/secrets/db-admin-token"))
        .await
        .respond(
            200,
            secret("db-admin-token", &[("token", TOKEN.as_bytes())]),
        );
}

/// The token in the generated internode secret of the controller tests' clusters.
pub const INTERNODE_TOKEN: &str =
    "9e1d0000c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

/// The cluster's generated internode secret exists already: read, never written.
pub async fn internode_secret_exists(server: &mut ApiServer) {
    server
        .expect("GET", &format!("{NS}/secrets/db-internode"))
        .await
        .respond(
            200,
            secret("db-internode", &[("token", INTERNODE_TOKEN.as_bytes())]),
        );
}

/// Runs one pass of `cluster` against `scenario` (the API server's side, handed the
/// cluster object it serves), then checks the client made no request the scenario did
/// not expect.
pub async fn pass<F, Fut>(
    cluster: DynamoCluster,
    endpoints: Loopback,
    scenario: F,
) -> Result<Action, controller::Error>
where
    F: FnOnce(ApiServer, DynamoCluster) -> Fut,
    Fut: Future<Output = ApiServer> + Send + 'static,
{
    let (result, ()) = pass_with(cluster, endpoints, |server, cluster| {
        let scenario = scenario(server, cluster);
        async move { (scenario.await, ()) }
    })
    .await;
    result
}

/// [`pass`] whose scenario also hands back what it saw (a status written, to feed the
/// next pass).
pub async fn pass_with<F, Fut, T>(
    cluster: DynamoCluster,
    endpoints: Loopback,
    scenario: F,
) -> (Result<Action, controller::Error>, T)
where
    F: FnOnce(ApiServer, DynamoCluster) -> Fut,
    Fut: Future<Output = (ApiServer, T)> + Send + 'static,
    T: Send + 'static,
{
    let (client, server) = mock_client();
    let server = tokio::spawn(scenario(server, cluster.clone()));
    let ctx = context(client, endpoints);
    let result = tokio::time::timeout(WAIT, reconcile(Arc::new(cluster), ctx))
        .await
        .expect("reconcile finished");
    let (server, seen) = server.await.expect("API server scenario");
    server.expect_no_more().await;
    (result, seen)
}

/// `built` (a builder's output) as the operator last applied it: with the hash of its
/// content, as the API server returns it.
fn as_applied<K, E>(built: Result<K, E>) -> Value
where
    K: kube::Resource + serde::Serialize,
    E: std::fmt::Debug,
{
    let object = with_applied_hash(built.expect("the builder accepts the cluster"));
    serde_json::to_value(object.expect("the object serializes")).expect("JSON")
}

/// The five children that do not depend on membership, already applied with the current
/// content: read, not written.
pub async fn children_unchanged(server: &mut ApiServer, cluster: &DynamoCluster) {
    let current = [
        (
            format!("{NS}/configmaps/db-config"),
            as_applied(builders::config_map(cluster)),
        ),
        (
            format!("{NS}/services/db-peers"),
            as_applied(builders::headless_service(cluster)),
        ),
        (
            format!("{NS}/services/db"),
            as_applied(builders::client_service(cluster)),
        ),
        (
            format!("{POLICY}/poddisruptionbudgets/db"),
            as_applied(builders::pod_disruption_budget(cluster)),
        ),
        (
            NETPOL.to_owned(),
            as_applied(builders::network_policy(cluster, OPERATOR_NAMESPACE)),
        ),
    ];
    for (path, object) in current {
        server.expect("GET", &path).await.respond(200, object);
    }
}

/// The cluster's StatefulSet at `replicas`, as the operator last applied it.
pub fn statefulset(cluster: &DynamoCluster, replicas: u32) -> Value {
    as_applied(builders::statefulset(cluster, replicas))
}

/// The reads of a pass whose children are current, in order: the StatefulSet (at
/// `replicas`), the five children and the pods (`pods`).
pub async fn objects_read(
    server: &mut ApiServer,
    cluster: &DynamoCluster,
    replicas: u32,
    pods: Vec<Value>,
) {
    server
        .expect("GET", &format!("{APPS}/statefulsets/db"))
        .await
        .respond(200, statefulset(cluster, replicas));
    children_unchanged(server, cluster).await;
    server
        .expect("GET", &format!("{NS}/pods"))
        .await
        .respond(200, list("PodList", pods));
}

/// [`objects_read`], then the generated admin token and internode secret: every read
/// of a pass that goes on to ask the nodes.
pub async fn objects_and_token_read(
    server: &mut ApiServer,
    cluster: &DynamoCluster,
    replicas: u32,
    pods: Vec<Value>,
) {
    objects_read(server, cluster, replicas, pods).await;
    generated_token_exists(server).await;
    internode_secret_exists(server).await;
}

/// One pass over a converged-looking cluster of two ready pods whose objects and
/// StatefulSet are current: the reads every such pass makes, in order.
pub async fn two_ready_pods_read(server: &mut ApiServer, cluster: &DynamoCluster) {
    objects_and_token_read(server, cluster, 2, vec![pod(0, true), pod(1, true)]).await;
}

/// Expects the pass's Event, answers it, and returns what was posted.
pub async fn event_posted(server: &mut ApiServer) -> Value {
    let event = server.expect("POST", EVENTS).await;
    let body = event.body.clone();
    event.echo();
    body
}

/// Expects the status apply, answers it as the API server does (`cluster` with that
/// status), and returns the status written.
pub async fn status_written(server: &mut ApiServer, cluster: &DynamoCluster) -> Value {
    let call = server.expect("PATCH", CLUSTER_STATUS).await;
    answer_status(call, cluster)
}

/// Answers a status apply already taken with `cluster` carrying that status, and returns
/// the status written.
pub fn answer_status(call: Call, cluster: &DynamoCluster) -> Value {
    let status = call.body["status"].clone();
    call.respond(200, with_status(cluster, &status));
    status
}

/// The cluster with `status` as the API server would return it after a status apply.
pub fn with_status(cluster: &DynamoCluster, status: &Value) -> Value {
    let mut object = serde_json::to_value(cluster).unwrap();
    object["status"] = status.clone();
    object
}

/// The condition of type `type_` in a written status.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The same status as a typed value, for the next pass's cluster object.
pub fn status_of(status: &Value) -> Option<dynamo_operator::crd::DynamoClusterStatus> {
    Some(serde_json::from_value(status.clone()).expect("a status the CRD reads"))
}

/// The cluster as the API server shows it once its deletion was asked for.
pub fn deleting(mut cluster: DynamoCluster) -> DynamoCluster {
    cluster.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    cluster
}

/// A pass that acted and looks again soon, to follow its step.
pub fn poll_again() -> Action {
    Action::requeue(Intervals::default().poll)
}

/// A pass with nothing to do now, which looks again at the resync interval.
pub fn resync_later() -> Action {
    Action::requeue(Intervals::default().resync)
}
