//! Test harness: a mock Kubernetes API server (tower-test, as kube-rs's controller
//! examples use) that asserts each request in order, and real `dynamo-node`s started in
//! this process on loopback ports bound to 0. [`ring`] joins such nodes into a ring,
//! [`passes`] holds the request sequences a reconcile pass makes, and [`tls`] a
//! self-signed certificate for mutual TLS.

#![allow(dead_code, unreachable_pub)]

pub mod passes;
pub mod ring;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dynamo_node::config::load_from_args;
use dynamo_node::node::{Node, RunningNode};
use dynamo_operator::admin::{AdminTarget, GrpcAdmin, NodeAdmin};
use dynamo_operator::controller::{Context, Intervals, NodeEndpoints};
use dynamo_operator::crd::DynamoCluster;
use dynamo_operator::metrics::Metrics;
use http::{Request, Response};
use kube::client::Body;
use serde::Deserialize as _;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

/// The namespace the operator runs in, in these tests.
pub const OPERATOR_NAMESPACE: &str = "dynamo-system";

/// The longest any single wait may take before the test fails with a message.
pub const WAIT: Duration = Duration::from_secs(30);

/// The mock API server's end of the client.
pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request the controller made.
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 query")
}

impl Call {
    /// Answers with `code` and a JSON body.
    pub fn respond(self, code: u16, body: Value) {
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.send.send_response(response);
    }

    /// Answers 404 as the API server does.
    pub fn not_found(self) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "not found", "reason": "NotFound", "code": 404
        });
        self.respond(404, body);
    }

    /// Answers with the request's own body (what an apply or create returns, near enough).
    pub fn echo(self) {
        let body = self.body.clone();
        self.respond(200, body);
    }

    /// Asserts a server-side apply by the operator's field manager, with `force`.
    pub fn assert_server_side_apply(&self) {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{} {}",
            self.method,
            self.path
        );
        assert_eq!(
            self.query.get("fieldManager").map(String::as_str),
            Some("dynamo-operator")
        );
        assert_eq!(self.query.get("force").map(String::as_str), Some("true"));
        // kube issue #1086: an apply body without apiVersion and kind is refused.
        assert!(self.body["apiVersion"].is_string() && self.body["kind"].is_string());
    }
}

impl ApiServer {
    /// Waits for the next request and checks its method and path.
    pub async fn expect(&mut self, method: &str, path: &str) -> Call {
        let call = self.next_call(&format!("{method} {path}")).await;
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            (method, path),
            "unexpected request (query {:?}, body {})",
            call.query,
            call.body
        );
        call
    }

    /// Waits for the next request, whatever it is (`expected` says what, for the
    /// timeout message), and checks the chart's RBAC grants it.
    pub async fn next_call(&mut self, expected: &str) -> Call {
        let (request, send) = tokio::time::timeout(WAIT, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request within {WAIT:?}; expected {expected}"))
            .unwrap_or_else(|| panic!("client gone; expected {expected}"));
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON request body")
        };
        let call = Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts
                .uri
                .query()
                .unwrap_or_default()
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
            content_type: parts
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned()),
            body,
            send,
        };
        let permission = permission_of(&call);
        assert!(
            chart_rbac().contains(&permission),
            "{} {} needs {permission:?}, which the chart's RBAC does not grant",
            call.method,
            call.path
        );
        call
    }

    /// Asserts the client makes no further request (it is dropped after the pass).
    pub async fn expect_no_more(mut self) {
        let next = tokio::time::timeout(WAIT, self.0.next_request())
            .await
            .expect("client not dropped after the pass");
        if let Some((request, _)) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// (API group, resource, verb) as RBAC names them.
pub type Permission = (String, String, String);

/// The permission a request needs: `/api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]]` or
/// `/apis/GROUP/VERSION/namespaces/NS/RESOURCE[/NAME[/SUB]]`, by method.
fn permission_of(call: &Call) -> Permission {
    let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", "namespaces", _, rest @ ..] => ("", rest),
        ["apis", group, _, "namespaces", _, rest @ ..] => (*group, rest),
        _ => panic!("unexpected path {}", call.path),
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _] => ((*resource).to_owned(), true),
        [resource, _, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected path {}", call.path),
    };
    let watch = call.query.get("watch").is_some_and(|w| w == "true");
    let verb = match (call.method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (method, _) => panic!("unexpected method {method}"),
    };
    (group.to_owned(), resource, verb.to_owned())
}

/// What the Helm chart's ClusterRole and leader-election Role grant, read from
/// `charts/dynamo-operator/templates/rbac.yaml` with its template lines dropped (they
/// only name and label the objects).
pub fn chart_rbac() -> &'static std::collections::BTreeSet<Permission> {
    static RULES: std::sync::OnceLock<std::collections::BTreeSet<Permission>> =
        std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/dynamo-operator/templates/rbac.yaml"
        ))
        .expect("the chart's RBAC template");
        let plain: String = template
            .lines()
            .filter(|line| !line.contains("{{"))
            .map(|line| format!("{line}\n"))
            .collect();
        let mut granted = std::collections::BTreeSet::new();
        for document in serde_yaml::Deserializer::from_str(&plain) {
            let object = Value::deserialize(document).expect("RBAC YAML");
            for rule in object["rules"].as_array().into_iter().flatten() {
                let strings = |key: &str| -> Vec<String> {
                    rule[key]
                        .as_array()
                        .unwrap_or_else(|| panic!("rule without {key}: {rule}"))
                        .iter()
                        .map(|v| v.as_str().unwrap().to_owned())
                        .collect()
                };
                for group in strings("apiGroups") {
                    for resource in strings("resources") {
                        for verb in strings("verbs") {
                            granted.insert((group.clone(), resource.clone(), verb));
                        }
                    }
                }
            }
        }
        assert!(!granted.is_empty(), "no rules read from the chart");
        granted
    })
}

/// A client whose every request goes to the returned [`ApiServer`].
pub fn mock_client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer(handle))
}

/// Nodes reached on loopback instead of by their pod DNS names; the rest of the
/// reconcile is what runs against a real cluster.
#[derive(Debug, Clone, Default)]
pub struct Loopback(pub BTreeMap<u32, SocketAddr>);

impl NodeEndpoints for Loopback {
    fn admin_url(&self, _namespace: &str, _cluster: &str, ordinal: u32, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        // An ordinal without a node gets a port nothing listens on.
        let address = self
            .0
            .get(&ordinal)
            .map_or_else(|| "127.0.0.1:1".to_owned(), ToString::to_string);
        format!("{scheme}://{address}")
    }

    fn advertise(&self, _namespace: &str, _cluster: &str, ordinal: u32) -> String {
        self.0
            .get(&ordinal)
            .map_or_else(|| "127.0.0.1:1".to_owned(), ToString::to_string)
    }
}

/// A controller context over the mock client, the real gRPC admin client and loopback
/// endpoints.
pub fn context(client: kube::Client, endpoints: Loopback) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        Arc::new(GrpcAdmin::new(Duration::from_secs(5))),
        Arc::new(endpoints),
        OPERATOR_NAMESPACE.to_owned(),
        kube::runtime::events::Reporter {
            controller: "dynamo-operator".to_owned(),
            instance: Some("test".to_owned()),
        },
        Metrics::new(),
        Intervals::default(),
    ))
}

/// Starts an in-process node `id` on loopback with memory storage.
pub async fn start_node(id: &str, seeds: &[SocketAddr], n: u32, extra: &[&str]) -> RunningNode {
    let mut args: Vec<String> = [
        "dynamo-node",
        "--node-id",
        id,
        "--listen",
        "127.0.0.1:0",
        "--internode-listen",
        "127.0.0.1:0",
        "--storage",
        "memory",
        "--gossip-interval",
        "100ms",
        "--request-timeout",
        "1s",
        "--log",
        "warn",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend([
        "--replication-factor".to_owned(),
        n.to_string(),
        "--read-quorum".to_owned(),
        "1".to_owned(),
        "--write-quorum".to_owned(),
        "1".to_owned(),
    ]);
    if !seeds.is_empty() {
        args.push("--seeds".to_owned());
        args.push(
            seeds
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    args.extend(extra.iter().map(ToString::to_string));
    let invocation = load_from_args(args, &|_| None).expect("node config");
    Node::start(invocation.config).await.expect("node starts")
}

/// The plain admin target of a node.
pub fn target(node: &RunningNode) -> AdminTarget {
    AdminTarget {
        url: format!("http://{}", node.internode_addr),
        token: None,
        tls: None,
    }
}

/// Polls `check` until it returns true, failing with `what` after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `via` lists every `(node, state)` pair.
pub async fn wait_for_states(
    admin: &GrpcAdmin,
    via: &AdminTarget,
    expected: &[(&str, dynamo_operator::planner::MemberState)],
) {
    let what = format!("{expected:?} at {}", via.url);
    eventually(&what, || async {
        let Ok(ring) = admin.ring(via).await else {
            return false;
        };
        expected.iter().all(|(id, state)| {
            ring.members
                .iter()
                .any(|m| m.node_id == *id && m.state == *state)
        })
    })
    .await;
}

/// A `DynamoCluster` as the API server returns it, from a spec in JSON.
pub fn cluster(spec: Value, finalized: bool) -> DynamoCluster {
    let finalizers = if finalized {
        json!(["dynamo.example.org/cleanup"])
    } else {
        json!(null)
    };
    serde_json::from_value(json!({
        "apiVersion": "dynamo.example.org/v1alpha1",
        "kind": "DynamoCluster",
        "metadata": {
            "name": "db", "namespace": "prod", "uid": "6b1d2c9e-0000-4000-8000-000000000001",
            "generation": 1, "resourceVersion": "100", "finalizers": finalizers,
        },
        "spec": spec,
    }))
    .expect("cluster deserializes")
}

/// A pod of cluster `db` with the node container started, ready or not.
pub fn pod(ordinal: u32, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("db-{ordinal}"), "namespace": "prod"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{
                "name": "dynamo-node", "image": "dynamo-node:dev", "imageID": "",
                "ready": ready, "restartCount": 0, "started": true,
                "state": {"running": {}}
            }]
        }
    })
}

/// A list response.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}
