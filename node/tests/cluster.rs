//! Multi-process tests: real `dynamo-node` processes on loopback, real sled files, real
//! gRPC. Each test starts its own cluster on ports the OS picks.

mod support;

use std::collections::BTreeMap;

use dynamo_node::proto::{self, DeleteRequest, GetRequest, PutRequest};
use support::{ONE_REPLICA, TestCluster, TestNode, eventually};
use tonic::Code;

async fn put(
    node: &TestNode,
    key: &str,
    value: &str,
    context: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    node.kv()
        .await
        .put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            context: context.into(),
            value: value.as_bytes().to_vec().into(),
            w: None,
        })
        .await
        .map(|r| r.into_inner().context.to_vec())
}

async fn get(
    node: &TestNode,
    key: &str,
    r: Option<u32>,
) -> Result<(Vec<String>, Vec<u8>), tonic::Status> {
    let reply = node
        .kv()
        .await
        .get(GetRequest {
            key: key.as_bytes().to_vec().into(),
            r,
        })
        .await?
        .into_inner();
    let mut values: Vec<String> = reply
        .values
        .iter()
        .map(|v| String::from_utf8(v.to_vec()).expect("test values are utf-8"))
        .collect();
    values.sort();
    Ok((values, reply.context.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_n3_r2_w2_serve_reads_and_writes_through_every_node() {
    let cluster = TestCluster::start(5, &[]).await;
    for (i, node) in cluster.nodes.iter().enumerate() {
        for j in 0..4 {
            let key = format!("key-{i}-{j}");
            put(node, &key, &format!("value-{i}-{j}"), Vec::new())
                .await
                .unwrap_or_else(|e| panic!("put {key} through {}: {e}", node.id));
        }
    }
    for reader in &cluster.nodes {
        for i in 0..cluster.nodes.len() {
            for j in 0..4 {
                let key = format!("key-{i}-{j}");
                let (values, _) = get(reader, &key, None)
                    .await
                    .unwrap_or_else(|e| panic!("get {key} through {}: {e}", reader.id));
                assert_eq!(
                    values,
                    vec![format!("value-{i}-{j}")],
                    "{key} read through {}",
                    reader.id
                );
            }
        }
    }
}

/// A put's returned context covers what its writer saw and nothing else: blind A and
/// blind B through one coordinator, then C with the context B's put returned. The
/// writer of C never saw A, so A survives beside C (it used to be lost: B's context
/// was the key's whole clock, which covered A).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_s_context_supersedes_only_what_its_writer_saw() {
    let cluster = TestCluster::start(1, &ONE_REPLICA).await;
    let node = &cluster.nodes[0];
    put(node, "cart", "a", Vec::new())
        .await
        .expect("blind put a");
    let b = put(node, "cart", "b", Vec::new())
        .await
        .expect("blind put b");
    put(node, "cart", "c", b)
        .await
        .expect("put c with b's context");
    let (values, context) = get(node, "cart", None).await.expect("get");
    assert_eq!(values, ["a", "c"], "a was never seen by c's writer");
    // A read's context covers both, so a put with it resolves them.
    put(node, "cart", "d", context).await.expect("put d");
    let (values, _) = get(node, "cart", None).await.expect("get");
    assert_eq!(values, ["d"]);
}

/// A context claiming a counter no node issued (near `u64::MAX`, for the node's own
/// actor) is refused before anything is written, and puts through that actor go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_with_an_impossible_counter_is_refused_and_harms_nothing() {
    let cluster = TestCluster::start(1, &ONE_REPLICA).await;
    let node = &cluster.nodes[0];
    put(node, "k", "v1", Vec::new()).await.expect("put v1");
    let (_, context) = get(node, "k", None).await.expect("get");
    let decoded = dynamo_node::version::context::decode(&context).expect("a valid context");
    let (actor, _) = decoded.clock().iter().next().expect("the node's actor");
    let forged = postcard::to_extend(&vec![(actor.clone(), u64::MAX - 1)], vec![1u8])
        .expect("encoding a forged context");
    let refused = put(node, "k", "forged", forged)
        .await
        .expect_err("a forged counter is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("beyond any clock"),
        "{}",
        refused.message()
    );
    let (values, context) = get(node, "k", None).await.expect("get");
    assert_eq!(values, ["v1"], "nothing was written");
    put(node, "k", "v2", context)
        .await
        .expect("later puts go on");
    assert_eq!(get(node, "k", None).await.expect("get").0, ["v2"]);
}

/// Dynamo §4.4: writes that descend from the same version are concurrent; the store keeps
/// both and a write with the merged context reconciles them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_context_writes_come_back_as_siblings_and_a_merged_put_resolves_them() {
    let cluster = TestCluster::start(3, &[]).await;
    let [n1, n2, _n3] = &cluster.nodes[..] else {
        unreachable!()
    };
    let base = put(n1, "cart", "v0", Vec::new()).await.unwrap();
    // Two clients read v0, and both write with its context: through two coordinators,
    // and twice through the same one.
    put(n1, "cart", "a", base.clone()).await.unwrap();
    put(n2, "cart", "b", base.clone()).await.unwrap();
    put(n2, "cart", "c", base.clone()).await.unwrap();
    let (values, context) = get(n1, "cart", Some(3)).await.unwrap();
    assert_eq!(
        values,
        vec!["a", "b", "c"],
        "all three concurrent writes survive as siblings"
    );
    put(n2, "cart", "merged", context).await.unwrap();
    for node in &cluster.nodes {
        let (values, _) = get(node, "cart", None).await.unwrap();
        assert_eq!(values, vec!["merged"], "read through {}", node.id);
    }
}

/// Dynamo §4.6: with one home replica down, a write still reaches W and lands on a
/// stand-in; the killed node's data survives its restart (sled), and the hints are
/// handed back once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_write_and_gets_its_hints_after_restart() {
    let mut cluster = TestCluster::start(4, &[]).await;
    let mut acknowledged = BTreeMap::new();
    for i in 0..40 {
        if i == 15 {
            cluster.nodes[3].kill().await;
        }
        let key = format!("k{i}");
        let value = format!("v{i}");
        let writer = &cluster.nodes[i % 3];
        if put(writer, &key, &value, Vec::new()).await.is_ok() {
            acknowledged.insert(key, value);
        }
    }
    assert!(
        acknowledged.len() >= 35,
        "only {} of 40 writes acknowledged with one node down",
        acknowledged.len()
    );
    // Some writes for n4's ranges went to stand-ins with hints.
    let hinted = hints_for(&cluster.nodes[..3], "n4").await;
    assert!(hinted > 0, "no hints were recorded for the killed node");

    cluster.nodes[3].restart().await;
    eventually("hints for n4 to be delivered", || async {
        hints_for(&cluster.nodes[..3], "n4").await == 0
    })
    .await;
    for (key, value) in &acknowledged {
        let (values, _) = get(&cluster.nodes[3], key, None).await.unwrap();
        assert_eq!(values, vec![value.clone()], "{key} after n4's restart");
    }
    // n4 holds its replicas itself: with every other node gone, an R=1 read through n4
    // is answered from its own disk.
    for node in &mut cluster.nodes[..3] {
        node.kill().await;
    }
    let n4 = &cluster.nodes[3];
    let mut own = 0;
    for (key, value) in &acknowledged {
        if let Ok((values, _)) = get(n4, key, Some(1)).await {
            assert!(
                values.is_empty() || values == vec![value.clone()],
                "{key}: {values:?}"
            );
            own += usize::from(!values.is_empty());
        }
    }
    // With N=3 of 4 nodes, n4 is a replica of about three quarters of the keys.
    assert!(
        own >= acknowledged.len() / 2,
        "n4 answered only {own} of {} keys from its own data",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_succeeds_with_one_of_three_replicas_down_and_an_r3_read_fails_clearly() {
    let mut cluster = TestCluster::start(3, &[]).await;
    cluster.nodes[2].kill().await;
    let n1 = &cluster.nodes[0];
    put(n1, "k", "v", Vec::new())
        .await
        .expect("W=2 of 3 with one down");
    let (values, _) = get(n1, "k", None).await.expect("R=2 of 3 with one down");
    assert_eq!(values, vec!["v"]);
    let error = get(n1, "k", Some(3))
        .await
        .expect_err("R=3 with one replica down");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(
        error
            .message()
            .contains("read quorum not reached: needed 3"),
        "message should say what was needed: {}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_invalid_argument_with_a_message() {
    let cluster = TestCluster::start(1, &ONE_REPLICA).await;
    let node = &cluster.nodes[0];
    let mut kv = node.kv().await;
    let put_req = |key: Vec<u8>, value: Vec<u8>, context: Vec<u8>| PutRequest {
        key: key.into(),
        context: context.into(),
        value: value.into(),
        w: None,
    };
    let oversized = vec![0; 1024 * 1024 + 1];
    for (key, value, what, needle) in [
        (Vec::new(), b"v".to_vec(), "empty key", "key is empty"),
        (
            vec![b'k'; 1025],
            b"v".to_vec(),
            "1025-byte key",
            "limit is 1024",
        ),
        (
            b"k".to_vec(),
            oversized,
            "oversized value",
            "limit is 1048576",
        ),
    ] {
        expect_invalid(kv.put(put_req(key, value, Vec::new())).await, what, needle);
    }
    // Far over the value limit: refused by the gRPC layer from the message's length
    // prefix, before the message is read.
    let refused = kv
        .put(put_req(b"k".to_vec(), vec![0; 2 * 1024 * 1024], Vec::new()))
        .await
        .expect_err("a 2 MiB put was accepted");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    expect_invalid(
        kv.put(put_req(b"k".to_vec(), b"v".to_vec(), b"garbage".to_vec()))
            .await,
        "garbage context",
        "malformed context",
    );
    expect_invalid(
        kv.delete(DeleteRequest {
            key: b"k".to_vec().into(),
            context: vec![1, 200].into(),
            w: None,
        })
        .await,
        "truncated context",
        "malformed context",
    );
    for (r, what) in [(2, "r above N"), (0, "r of zero")] {
        let get = GetRequest {
            key: b"k".to_vec().into(),
            r: Some(r),
        };
        expect_invalid(kv.get(get).await, what, "read");
    }
    let join = node
        .admin()
        .await
        .join(proto::JoinRequest {
            node_id: "bad id".into(),
            address: "127.0.0.1:1".into(),
            weight: 1,
            zone: String::new(),
        })
        .await;
    expect_invalid(join, "bad node id", "node_id");
    // The node is still serving after all of that.
    put(node, "k", "v", Vec::new())
        .await
        .expect("valid put after bad ones");
}

/// `result` is a refusal with InvalidArgument and a message that names `needle`.
fn expect_invalid<T>(result: Result<T, tonic::Status>, what: &str, needle: &str) {
    let status = result
        .err()
        .unwrap_or_else(|| panic!("{what} was accepted"));
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().contains(needle),
        "{what}: {:?} lacks {needle:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token_when_one_is_configured() {
    let root = tempfile::tempdir().unwrap();
    let node = TestNode::start(root.path(), "n1", &[], &["--admin-token", "s3cret"]).await;
    let mut admin = node.admin().await;
    let refused = admin
        .ring(proto::RingRequest {})
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(proto::RingRequest {});
    request
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        admin.ring(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut request = tonic::Request::new(proto::RingRequest {});
    request
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    admin
        .ring(request)
        .await
        .expect("the right token is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_restarted_node_remembers_membership_and_data() {
    let args = [&ONE_REPLICA[..], &["--durability", "buffered"]].concat();
    let mut cluster = TestCluster::start(1, &args).await;
    let node = &cluster.nodes[0];
    put(node, "k", "v", Vec::new()).await.unwrap();
    cluster.nodes[0].stop().await;
    cluster.nodes[0].restart().await;
    cluster.wait_for_members(1).await;
    let (values, _) = get(&cluster.nodes[0], "k", None).await.unwrap();
    assert_eq!(values, vec!["v"]);
}

/// TLS on every listener and between nodes: with a CA configured, the internode port
/// requires a client certificate (mutual TLS), and plaintext clients are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_serves_over_mutual_tls_and_refuses_plaintext() {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let cert = support::TestCert::generate();
    let tls = cert.client_tls();
    // Joining, gossip, replication and hint delivery all cross TLS here.
    let cluster = TestCluster::start_with(3, &cert.node_args(), Some(tls)).await;
    put(&cluster.nodes[0], "k", "v", Vec::new())
        .await
        .expect("put over TLS");
    for node in &cluster.nodes {
        let (values, _) = get(node, "k", Some(3)).await.expect("R=3 get over TLS");
        assert_eq!(values, vec!["v"]);
    }
    // Without a client certificate, TLS reaches the client API but not the internode
    // port (mutual TLS there).
    let anonymous = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cert.cert_pem));
    let connect = |address: std::net::SocketAddr| {
        let anonymous = anonymous.clone();
        async move {
            tonic::transport::Channel::from_shared(format!("https://{address}"))
                .unwrap()
                .tls_config(anonymous)
                .unwrap()
                .connect()
                .await
        }
    };
    let channel = connect(cluster.nodes[0].client)
        .await
        .expect("client API over one-way TLS");
    dynamo_node::proto::kv_client::KvClient::new(channel)
        .get(GetRequest {
            key: b"k".to_vec().into(),
            r: None,
        })
        .await
        .expect("client API needs no client certificate");
    let internode_served = match connect(cluster.nodes[0].internode).await {
        Err(_) => false,
        Ok(channel) => dynamo_node::proto::admin_client::AdminClient::new(channel)
            .ring(proto::RingRequest {})
            .await
            .is_ok(),
    };
    assert!(
        !internode_served,
        "the internode port served a client without a certificate"
    );
    // A plaintext client gets no answer from either port.
    for address in [cluster.nodes[0].client, cluster.nodes[0].internode] {
        let served = match tonic::transport::Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
        {
            Err(_) => false,
            Ok(channel) => dynamo_node::proto::kv_client::KvClient::new(channel)
                .get(GetRequest {
                    key: b"k".to_vec().into(),
                    r: None,
                })
                .await
                .is_ok(),
        };
        assert!(!served, "a plaintext client was served on {address}");
    }
}

/// With TLS configured, the HTTP API serves HTTPS with the node's certificate and asks
/// clients for none (curl, Prometheus, kubelet probes); plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_node_serves_https_on_the_http_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = support::TestCert::generate();
    let http = ["--http-listen", "127.0.0.1:0"];
    let args = [&cert.node_args()[..], &http, &ONE_REPLICA[..]].concat();
    let cluster = TestCluster::start_with(1, &args, Some(cert.client_tls())).await;
    let address = cluster.nodes[0].http.expect("HTTP port announced");
    let health = support::https(address, &cert.cert_pem, "GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);
    let put = support::https(address, &cert.cert_pem, "PUT", "/v1/kv/k", &[], b"v").await;
    assert_eq!(put.status, 204);
    let got = support::https(address, &cert.cert_pem, "GET", "/v1/kv/k", &[], b"").await;
    assert_eq!((got.status, got.body), (200, b"v".to_vec()));

    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(support::WAIT, plain.read_to_end(&mut answer))
        .await
        .expect("the server closes a plaintext connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains(" 200 "),
        "plain HTTP was served: {read:?} {answer}"
    );
    // The listener survives the bad client.
    let again = support::https(address, &cert.cert_pem, "GET", "/readyz", &[], b"").await;
    assert_eq!(again.status, 200);
}

/// The HTTP API for curl users and probes, on a 3-node cluster: write through one node,
/// read through another, siblings as 300, deletes as 404 with a context, metrics, probes
/// and the status page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_serves_kv_metrics_probes_and_the_ring_page() {
    let cluster = TestCluster::start(
        3,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--background-budget",
            "500",
            // Far above any request's latency (bounded by the 2 s request timeout), so
            // the budget stays where it was configured.
            "--background-latency-target-ms",
            "60000",
        ],
    )
    .await;
    let a = cluster.nodes[0]
        .http
        .expect("node 1 announced its HTTP port");
    let b = cluster.nodes[1]
        .http
        .expect("node 2 announced its HTTP port");
    let put = support::http(a, "PUT", "/v1/kv/user%2F42", &[], b"hello").await;
    assert_eq!(put.status, 204);
    let context = put
        .header("x-dynamo-context")
        .expect("put returns a context")
        .to_owned();
    let got = support::http(b, "GET", "/v1/kv/user%2F42", &[], b"").await;
    assert_eq!((got.status, got.body.as_slice()), (200, &b"hello"[..]));
    // Two writers from the same version: siblings, 300 Multiple Choices.
    for (through, value) in [(a, b"one"), (b, b"two")] {
        let headers = [("X-Dynamo-Context", context.as_str())];
        support::http(through, "PUT", "/v1/kv/user%2F42", &headers, value).await;
    }
    let siblings = support::http(a, "GET", "/v1/kv/user%2F42?r=3", &[], b"").await;
    assert_eq!(
        siblings.status,
        300,
        "{}",
        String::from_utf8_lossy(&siblings.body)
    );
    let listing: serde_json::Value = serde_json::from_slice(&siblings.body).unwrap();
    assert_eq!(listing["siblings"].as_array().map(Vec::len), Some(2));
    let merged = siblings.header("x-dynamo-context").unwrap().to_owned();
    let delete = support::http(
        b,
        "DELETE",
        "/v1/kv/user%2F42",
        &[("X-Dynamo-Context", &merged)],
        b"",
    )
    .await;
    assert_eq!(delete.status, 204);
    let gone = support::http(a, "GET", "/v1/kv/user%2F42", &[], b"").await;
    assert_eq!(gone.status, 404);
    assert!(
        gone.header("x-dynamo-context")
            .is_some_and(|c| !c.is_empty())
    );
    let bad = support::http(a, "PUT", "/v1/kv/k", &[("X-Dynamo-Context", "%%%")], b"v").await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        support::http(a, "GET", "/healthz", &[], b"").await.status,
        200
    );
    assert_eq!(
        support::http(a, "GET", "/readyz", &[], b"").await.status,
        200
    );
    let metrics = support::http(a, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("dynamo_requests_total{api=\"http\",op=\"put\",outcome=\"ok\"}"),
        "{text}"
    );
    // Admission control: the configured budget, grants by kind, the p99 it follows.
    assert!(text.contains("\ndynamo_background_budget 500\n"), "{text}");
    assert!(
        text.contains("dynamo_background_granted_total{kind=\"handoff\"}"),
        "{text}"
    );
    assert!(
        text.contains("\ndynamo_foreground_latency_p99_seconds "),
        "{text}"
    );
    let page = support::http(a, "GET", "/", &[], b"").await;
    let html = String::from_utf8(page.body).unwrap();
    assert!(
        html.contains("<svg") && html.contains("n3"),
        "status page shows the ring"
    );
}

/// Dynamo §4.8.3: a node that found a peer unreachable retries it periodically and
/// routes to it again once it answers, even when no hint or request is waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_marked_down_is_probed_and_routed_to_again_after_it_recovers() {
    let mut cluster = TestCluster::start(3, &[]).await;
    put(&cluster.nodes[0], "k", "v", Vec::new()).await.unwrap();
    cluster.nodes[2].kill().await;
    // Reads (no writes, so no hints) that try n3 until n1 holds it down.
    for _ in 0..5 {
        let _ = get(&cluster.nodes[0], "k", None).await;
    }
    assert_eq!(
        n3_reachable(&cluster.nodes[0]).await,
        Some(false),
        "n1 should hold n3 down after repeated failures"
    );
    cluster.nodes[2].restart().await;
    eventually("n1 to route to the recovered n3 again", || async {
        n3_reachable(&cluster.nodes[0]).await == Some(true)
    })
    .await;
    let (values, _) = get(&cluster.nodes[0], "k", Some(3))
        .await
        .expect("R=3 with n3 back");
    assert_eq!(values, vec!["v"]);
}

/// Whether `node` currently routes to n3, per its Admin.Ring.
async fn n3_reachable(node: &TestNode) -> Option<bool> {
    ring(node)
        .await
        .members
        .iter()
        .find(|m| m.node_id == "n3")
        .map(|m| m.reachable)
}

/// The standard gRPC health service and server reflection are on, so grpcurl, grpc-health-probe
/// and Kubernetes' gRPC probes work without our protos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let cluster = TestCluster::start(1, &ONE_REPLICA).await;
    let node = &cluster.nodes[0];
    let mut health = HealthClient::new(node.channel(node.client).await.unwrap());
    let status = health
        .check(HealthCheckRequest {
            service: "dynamo.v1.Kv".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(node.channel(node.internode).await.unwrap());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let reply = replies
        .message()
        .await
        .expect("reflection reply")
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["dynamo.v1.Replica", "dynamo.v1.Admin"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    // The older `v1alpha` protocol too (Python's grpcio-reflection, older grpcurl).
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

        let mut reflection = ServerReflectionClient::new(node.channel(node.client).await.unwrap());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let reply = reflection
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("v1alpha reflection stream")
            .into_inner()
            .message()
            .await
            .expect("v1alpha reflection reply")
            .expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected v1alpha reflection reply {reply:?}");
        };
        assert!(
            list.service.iter().any(|s| s.name == "dynamo.v1.Kv"),
            "dynamo.v1.Kv missing from {:?}",
            list.service
        );
    }
}

/// Range transfer and anti-entropy move whole key ranges with `ScanRange` and
/// `MergeBatch` (Dynamo §4.9.1, §4.7): a batch merged durably survives SIGKILL, paging a
/// range with small pages returns exactly the keys whose tokens it holds, and bad
/// requests are refused with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_merged_in_batches_survives_a_kill_and_pages_back_exactly() {
    use dynamo_node::NodeId;
    use dynamo_node::ring::{Token, TokenRange};
    use dynamo_node::time::Millis;
    use dynamo_node::transport::{MergeBatch, RangeEntry, RangeScan, Transport, TransportError};
    use dynamo_node::version::context::Context;
    use dynamo_node::version::{Actor, SiblingLimits, SiblingSet, Value};

    let root = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(root.path(), "n1", &[], &[]).await;
    let address = node.internode.to_string();
    let transport = dynamo_e2e::cluster::replica_transport();
    let actor = Actor::new(NodeId::new("elsewhere").unwrap(), 1);
    let entries: Vec<RangeEntry> = (0..200)
        .map(|i| {
            let mut state = SiblingSet::new();
            state
                .put(
                    &Context::new(),
                    Value::data(format!("value-{i}").into_bytes()),
                    &actor,
                    Millis(1),
                    &SiblingLimits::default(),
                )
                .unwrap();
            RangeEntry {
                key: format!("moved-{i}").into_bytes(),
                state,
            }
        })
        .collect();
    for chunk in entries.chunks(64) {
        transport
            .merge_batch(
                &address,
                MergeBatch {
                    entries: chunk.to_vec(),
                    durable: true,
                },
            )
            .await
            .unwrap();
    }
    node.kill().await;
    node.restart().await;

    let range = TokenRange::new(Token(u128::MAX / 4), Token(u128::MAX / 4 * 3));
    let mut expected: Vec<RangeEntry> = entries
        .iter()
        .filter(|e| range.contains(Token::of(&e.key)))
        .cloned()
        .collect();
    expected.sort_by_key(|e| (Token::of(&e.key), e.key.clone()));
    assert!(
        expected.len() > 50,
        "half the ring holds about half the keys"
    );
    let mut seen = Vec::new();
    let mut after = None;
    for page_number in 0.. {
        assert!(page_number < 1000, "the scan did not finish");
        let page = transport
            .scan_range(
                &address,
                RangeScan {
                    range,
                    after: after.clone(),
                    max_entries: 7,
                    max_bytes: 1 << 20,
                },
            )
            .await
            .unwrap();
        assert!(page.entries.len() <= 7);
        after = page.entries.last().map(|e| e.key.clone()).or(after);
        seen.extend(page.entries);
        if page.done {
            break;
        }
    }
    assert_eq!(
        seen, expected,
        "the range came back in ring order, once each"
    );

    let outside = entries
        .iter()
        .find(|e| !range.contains(Token::of(&e.key)))
        .unwrap();
    for (after, max_entries, named) in [
        (None, 0, "max_entries"),
        (Some(outside.key.clone()), 5, "outside"),
    ] {
        let scan = RangeScan {
            range,
            after,
            max_entries,
            max_bytes: 10,
        };
        let refused = transport.scan_range(&address, scan).await;
        assert!(
            matches!(&refused, Err(TransportError::Rejected { error, .. }) if error.to_string().contains(named)),
            "{refused:?}"
        );
    }
}

/// The node's `Admin.Ring`.
async fn ring(node: &TestNode) -> proto::RingResponse {
    node.admin()
        .await
        .ring(proto::RingRequest {})
        .await
        .expect("Admin.Ring")
        .into_inner()
}

/// The member table as the node at `node` sees it: `(id, state, weight, address)`.
async fn members(node: &TestNode) -> Vec<(String, i32, u32, String)> {
    ring(node)
        .await
        .members
        .into_iter()
        .map(|m| (m.node_id, m.state, m.weight, m.address))
        .collect()
}

/// Dynamo §4.7: a replica whose disk was wiped gets its data back from the other
/// replicas through Merkle anti-entropy alone. Nothing reads the keys (no read repair)
/// and nothing is written while the node is down (no hints), so only anti-entropy can
/// refill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refilled_by_anti_entropy_alone() {
    let mut cluster = TestCluster::start(3, &["--anti-entropy-interval", "200ms"]).await;
    let keys: Vec<String> = (0..100).map(|i| format!("ae-{i}")).collect();
    for key in &keys {
        put(&cluster.nodes[0], key, key, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
    for node in &cluster.nodes {
        eventually(&format!("{} to hold all 100 keys", node.id), || async {
            status(node).await.keys == 100
        })
        .await;
    }

    let n3 = &mut cluster.nodes[2];
    n3.kill().await;
    n3.wipe();
    n3.restart().await;
    let n3 = &cluster.nodes[2];
    eventually("the wiped node to be refilled by anti-entropy", || async {
        status(n3).await.keys == 100
    })
    .await;
    // Its own rounds pulled keys in and the others' rounds pushed keys to it. The
    // counters count acknowledged repairs only: a push whose reply timed out (a loaded
    // machine) may still have landed, so they can fall short of the 100 keys moved, to
    // zero when the one exchange that moved them all timed out; the differing buckets
    // its rounds found are counted before any repair is sent.
    let (mut moved, mut differing) = (0, 0);
    let mut all = Vec::new();
    for node in &cluster.nodes {
        let stats = status(node)
            .await
            .anti_entropy
            .expect("anti-entropy is enabled");
        assert_eq!(stats.trees_ready, 1, "{}: {stats:?}", node.id);
        moved += if node.id == "n3" {
            stats.keys_pulled
        } else {
            stats.keys_pushed
        };
        differing += stats.differing_buckets;
        all.push((node.id.clone(), stats));
    }
    assert!(
        moved > 0 || differing > 0,
        "anti-entropy found no difference and moved no key to the wiped node: {all:?}"
    );
    for node in &cluster.nodes[..2] {
        assert!(
            status(node).await.hints.is_empty(),
            "{} held no hints: the refill came from anti-entropy",
            node.id
        );
    }
}

/// Trees are built between rounds, a budget's worth at a time, soon after the ring
/// forms: with rounds an hour apart, every node's tree is ready (and counts the writes
/// made since) although no round has run, so the first round has no scan of all the
/// node's data to make while clients wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_are_built_between_rounds_without_waiting_for_one() {
    let cluster = TestCluster::start(3, &["--anti-entropy-interval", "1h"]).await;
    for i in 0..50 {
        let key = format!("tree-{i}");
        put(&cluster.nodes[0], &key, &key, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
    for node in &cluster.nodes {
        eventually(&format!("{}'s tree to be ready", node.id), || async {
            let stats = status(node).await.anti_entropy.expect("anti-entropy on");
            stats.trees_ready == 1 && stats.trees_building == 0
        })
        .await;
        let stats = status(node).await.anti_entropy.expect("anti-entropy on");
        assert_eq!(
            (stats.exchanges, stats.exchange_failures),
            (0, 0),
            "{}: no round ran: {stats:?}",
            node.id
        );
    }
}

/// The hints `nodes` hold for `target`, per their `Admin.Status`.
async fn hints_for(nodes: &[TestNode], target: &str) -> u64 {
    let mut held = 0;
    for node in nodes {
        held += status(node)
            .await
            .hints
            .iter()
            .filter(|h| h.target == target)
            .map(|h| h.keys)
            .sum::<u64>();
    }
    held
}

/// Writes `key-i` = `value-i` for 200 keys, through every node in turn; returns them.
async fn load(nodes: &[TestNode]) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    for i in 0..200 {
        let (key, value) = (format!("key-{i}"), format!("value-{i}"));
        put(&nodes[i % nodes.len()], &key, &value, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        keys.insert(key, value);
    }
    keys
}

/// Every key reads back through `node` with R = 3, with just its value.
async fn assert_all_read_r3<'a>(
    node: &TestNode,
    keys: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (key, value) in keys {
        let (values, _) = get(node, key, Some(3))
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(values, vec![value.clone()], "{key}");
    }
}

async fn status(node: &TestNode) -> proto::StatusResponse {
    node.admin()
        .await
        .status(proto::StatusRequest {})
        .await
        .expect("Admin.Status")
        .into_inner()
}

/// The ring the nodes derive from `members` in state Member (default partitioning), so
/// the test can name each key's replicas, and the internode address of each member.
fn ring_of(
    members: &[(String, i32, u32, String)],
) -> (dynamo_node::ring::Ring, BTreeMap<String, String>) {
    use dynamo_node::NodeId;
    use dynamo_node::ring::{PartitionStrategy, Ring};
    let settled: Vec<(NodeId, u32)> = members
        .iter()
        .filter(|m| m.1 == proto::MemberState::Member as i32)
        .map(|m| (NodeId::new(&m.0).unwrap(), m.2))
        .collect();
    let addresses = members.iter().map(|m| (m.0.clone(), m.3.clone())).collect();
    (
        Ring::build(&settled, PartitionStrategy::default(), 0, None).unwrap(),
        addresses,
    )
}

/// Asserts that each of `keys`' replicas under `ring` stores the key's value itself
/// (a replica read, not a quorum read that other replicas could answer).
async fn assert_every_replica_holds(
    ring: &dynamo_node::ring::Ring,
    addresses: &BTreeMap<String, String>,
    keys: &BTreeMap<String, String>,
) {
    if let Some(mismatch) = replica_mismatch(ring, addresses, keys).await {
        panic!("{mismatch}");
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Dynamo §4.9: a node added to a loaded cluster receives the ranges it takes over from
/// their previous owners, and becomes a Member (serving reads) only once it holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joining_a_loaded_cluster_pulls_its_ranges_and_becomes_member() {
    let extra = [
        "--transfer-interval",
        "50ms",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let mut cluster = TestCluster::start(3, &extra).await;
    let keys = load(&cluster.nodes).await;
    let root = tempfile::tempdir().unwrap();
    let n4 = TestNode::start(root.path(), "n4", &[cluster.nodes[0].internode], &extra).await;
    cluster.nodes[0]
        .admin()
        .await
        .join(proto::JoinRequest {
            node_id: "n4".into(),
            address: n4.internode.to_string(),
            weight: 1,
            zone: String::new(),
        })
        .await
        .expect("joining n4");
    eventually("n4 to become a member", || async {
        status(&n4).await.state == proto::MemberState::Member as i32
    })
    .await;
    let done = status(&n4).await;
    assert_eq!(
        (done.transfer.as_str(), done.transfer_pending_ranges),
        ("", 0)
    );
    assert!(done.keys > 0, "n4 holds keys: {done:?}");
    // The moment it is a member, n4 holds every key it is a replica of.
    let (ring, addresses) = ring_of(&members(&n4).await);
    assert!(ring.members().any(|(id, _)| id.as_str() == "n4"));
    let on_n4: BTreeMap<String, String> = keys
        .iter()
        .filter(|(k, _)| {
            ring.preference_list_for_key(k.as_bytes(), 3)
                .iter()
                .any(|n| n.as_str() == "n4")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!on_n4.is_empty());
    assert_every_replica_holds(&ring, &addresses, &on_n4).await;
    let metrics = support::http(n4.http.expect("n4 HTTP"), "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(metrics.body).unwrap();
    let sent = metric(&text, "dynamo_transfer_keys_sent_total").expect("keys sent counter");
    assert!(
        sent >= on_n4.len() as f64,
        "sent {sent}, n4 replicates {}",
        on_n4.len()
    );
    // Every key is still readable with R = N through every node, the new one included.
    cluster.nodes.push(n4);
    cluster.wait_for_members(4).await;
    assert_all_read_r3(&cluster.nodes[3], &keys).await;
    drop(root);
}

/// Decommission (Dynamo §4.9: "when a node is removed from the system, the reallocation
/// of keys happens in a reverse process"): the leaving node hands every range to the new
/// owners and reports "removed" only after they acknowledged them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_node_is_removed_only_after_its_data_is_on_the_new_owners() {
    let extra = ["--transfer-interval", "50ms", "--transfer-batch-keys", "16"];
    let mut cluster = TestCluster::start(4, &extra).await;
    let keys = load(&cluster.nodes).await;
    cluster.nodes[0]
        .admin()
        .await
        .leave(proto::LeaveRequest {
            node_id: "n4".into(),
        })
        .await
        .expect("decommissioning n4");
    // 16 keys per 50 ms round: the leave takes several rounds, and while it lasts the
    // node reports what is pending.
    let seen_pending = std::sync::atomic::AtomicBool::new(false);
    eventually("n4 to report removed", || async {
        let now = status(&cluster.nodes[3]).await;
        if now.transfer == "leaving" && now.transfer_pending_ranges > 0 {
            assert_eq!(now.state, proto::MemberState::Leaving as i32);
            assert!(now.transfers.iter().all(|t| !t.peer.is_empty()));
            seen_pending.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        now.state == proto::MemberState::Removed as i32
    })
    .await;
    assert!(
        seen_pending.load(std::sync::atomic::Ordering::Relaxed),
        "n4 reported its pending ranges while leaving"
    );
    let done = status(&cluster.nodes[3]).await;
    assert_eq!(done.transfer_pending_ranges, 0);
    // Removed means handed off: with n4 gone, every key is on each of its new replicas
    // and readable with R = N.
    let table = members(&cluster.nodes[3]).await;
    assert!(
        table
            .iter()
            .any(|m| m.0 == "n4" && m.1 == proto::MemberState::Removed as i32)
    );
    // The operator stops the node once the cluster knows it is gone.
    for node in &cluster.nodes[..3] {
        eventually(
            &format!("{} to learn that n4 is removed", node.id),
            || async {
                members(node)
                    .await
                    .iter()
                    .any(|m| m.0 == "n4" && m.1 == proto::MemberState::Removed as i32)
            },
        )
        .await;
    }
    cluster.nodes[3].kill().await;
    let (ring, addresses) = ring_of(&table);
    assert!(ring.members().all(|(id, _)| id.as_str() != "n4"));
    assert_every_replica_holds(&ring, &addresses, &keys).await;
    assert_all_read_r3(&cluster.nodes[0], &keys).await;
}

/// A rotated certificate (#14, TLS Secret rotation, the serving side): the node serves
/// the new pair on the HTTP API and the gRPC ports from the next handshake on after
/// SIGHUP (or its periodic check), without a restart, and counts the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_on_every_port_without_a_restart() {
    let first = support::TestCert::generate();
    let http = ["--http-listen", "127.0.0.1:0"];
    let args = [&first.node_args()[..], &http, &ONE_REPLICA[..]].concat();
    let cluster = TestCluster::start_with(1, &args, Some(first.client_tls())).await;
    let node = &cluster.nodes[0];
    let address = node.http.expect("HTTP port announced");
    let health = support::https(address, &first.cert_pem, "GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);

    // The Secret is rewritten: a new pair under the same file names.
    let second = support::TestCert::generate();
    std::fs::write(&first.key_path, &second.key_pem).unwrap();
    std::fs::write(&first.cert_path, &second.cert_pem).unwrap();
    node.hangup();
    eventually("new handshakes to present the new certificate", || async {
        support::try_https(address, &second.cert_pem, "GET", "/healthz", &[], b"")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    // The old certificate is served no more, and the same process still runs.
    let old = support::try_https(address, &first.cert_pem, "GET", "/healthz", &[], b"").await;
    assert!(
        old.is_err(),
        "the old certificate is still served: {:?}",
        old.map(|r| r.status)
    );
    assert!(node.is_running());
    let metrics = support::https(address, &second.cert_pem, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert_eq!(
        metric(&text, "dynamo_tls_reloads_total{result=\"changed\"}"),
        Some(1.0),
        "{text}"
    );
    // The gRPC client port too: a client trusting only the new certificate gets served,
    // one trusting only the old one is refused at the handshake.
    let health = |trusted: String| async move {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig};
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel = Channel::from_shared(format!("https://{}", node.client_dial()))
            .map_err(|e| e.to_string())?
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(trusted)))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|e| e.to_string())
            .map(drop)
    };
    health(second.cert_pem.clone())
        .await
        .expect("the gRPC port serves the new certificate");
    assert!(health(first.cert_pem.clone()).await.is_err());
}

/// Without a CA, peers pin the node's certificate: after a rotation the HTTP API serves
/// the new one, but the internode port keeps the one peers trust, so internode calls go
/// on until every node restarts with the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_certificate_stays_on_the_internode_port_without_a_ca() {
    let first = support::TestCert::generate();
    let http = ["--http-listen", "127.0.0.1:0"];
    let tls = ["--tls-cert", first.cert_arg(), "--tls-key", first.key_arg()];
    let args = [&tls[..], &http, &ONE_REPLICA[..]].concat();
    let cluster = TestCluster::start_with(1, &args, Some(first.client_tls())).await;
    let node = &cluster.nodes[0];
    let address = node.http.expect("HTTP port announced");
    let second = support::TestCert::generate();
    std::fs::write(&first.key_path, &second.key_pem).unwrap();
    std::fs::write(&first.cert_path, &second.cert_pem).unwrap();
    node.hangup();
    eventually("the HTTP API to present the new certificate", || async {
        support::try_https(address, &second.cert_pem, "GET", "/healthz", &[], b"")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    // The internode port still answers a peer that trusts the old certificate.
    let status = node
        .admin()
        .await
        .status(proto::StatusRequest {})
        .await
        .expect("Admin.Status over the pinned certificate");
    assert!(!status.into_inner().node_id.is_empty());
}

/// A CA rotation under mutual TLS, done as a Secret update would do it in three steps
/// (the new CA added to the bundle, the certificate re-issued from it, the old CA
/// dropped), each reaching every node by SIGHUP: no node restarts, every step keeps R=3
/// reads working, and afterwards the nodes refuse a certificate from the old CA. A node
/// restarted at the end, which trusts only the new CA, is called by its peers: their own
/// internode calls present the re-issued certificate, not the one they started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_reaches_the_listeners_and_the_internode_calls_without_a_restart() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let (old_ca, new_ca) = (support::TestCa::generate(), support::TestCa::generate());
    let names = ["localhost", "127.0.0.1"];
    let old = old_ca.issue("node", &names, "dynamo-node");
    let new = new_ca.issue("node", &names, "dynamo-node");
    let ca_file = old_ca.ca_path.to_str().expect("utf-8 temp path");
    let http = ["--http-listen", "127.0.0.1:0"];
    let args = [&old.args()[..], &["--tls-ca", ca_file], &http].concat();
    let bundle = format!("{}{}", old_ca.ca_pem(), new_ca.ca_pem());
    let harness = |identity: &support::IssuedCert| {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&bundle))
            .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
    };
    let mut cluster = TestCluster::start_with(3, &args, Some(harness(&old))).await;
    put(&cluster.nodes[0], "k", "v", Vec::new())
        .await
        .expect("put over mutual TLS");

    // Each step reaches every node before the next is written.
    rotate(
        &cluster,
        &bundle,
        1.0,
        &[(old_ca.ca_path.as_path(), &bundle)],
    )
    .await;
    rotate(
        &cluster,
        &bundle,
        2.0,
        &[
            (old.key_path.as_path(), &new.key_pem),
            (old.cert_path.as_path(), &new.cert_pem),
        ],
    )
    .await;
    for node in &mut cluster.nodes {
        node.tls = Some(harness(&new));
    }
    let last = [(old_ca.ca_path.as_path(), new_ca.ca_pem())];
    rotate(&cluster, &bundle, 3.0, &last).await;

    // A caller with a certificate from the old CA is refused on every internode port.
    for node in &cluster.nodes {
        let admin = tonic::transport::Channel::from_shared(format!("https://{}", node.internode))
            .expect("valid uri")
            .tls_config(harness(&old))
            .expect("TLS settings")
            .connect()
            .await;
        let served = match admin {
            Err(_) => false,
            Ok(channel) => proto::admin_client::AdminClient::new(channel)
                .status(proto::StatusRequest {})
                .await
                .is_ok(),
        };
        assert!(!served, "{} still accepts the old CA", node.id);
        assert!(node.is_running());
    }
    // n3 restarts trusting only the new CA; n1's calls to it are new connections.
    cluster.nodes[2].kill().await;
    cluster.nodes[2].restart().await;
    for index in [0, 2] {
        let node = &cluster.nodes[index];
        eventually(&format!("an R=3 get through {}", node.id), || async move {
            get(node, "k", Some(3))
                .await
                .is_ok_and(|(values, _)| values == ["v"])
        })
        .await;
    }
}

/// One step of a TLS rotation: rewrites `files`, sends every node SIGHUP, waits until
/// each has counted `step` reloads (its `/metrics` over HTTPS trusting `trusted`), then
/// reads `k` at R=3 through each node.
async fn rotate(
    cluster: &TestCluster,
    trusted: &str,
    step: f64,
    files: &[(&std::path::Path, &str)],
) {
    for (path, contents) in files {
        std::fs::write(path, contents).expect("rewriting a TLS file");
    }
    for node in &cluster.nodes {
        node.hangup();
    }
    for node in &cluster.nodes {
        let address = node.http.expect("HTTP port announced");
        eventually(
            &format!("{} to reload its TLS files ({step})", node.id),
            || async move {
                let Ok(response) =
                    support::try_https(address, trusted, "GET", "/metrics", &[], b"").await
                else {
                    return false;
                };
                let text = String::from_utf8_lossy(&response.body);
                metric(&text, "dynamo_tls_reloads_total{result=\"changed\"}")
                    .is_some_and(|count| count >= step)
            },
        )
        .await;
    }
    for node in &cluster.nodes {
        let (values, _) = get(node, "k", Some(3))
            .await
            .unwrap_or_else(|e| panic!("R=3 get from {} after step {step}: {e}", node.id));
        assert_eq!(values, vec!["v"]);
    }
}

/// A node that is gone for good (#14, dead members): `Admin.Remove` takes it out of the
/// ring at once, only when the asking node cannot reach it; anti-entropy then fills the
/// replicas that took over its ranges, and a replacement under the same id, started on
/// an empty volume, joins and pulls its ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_without_a_hand_off_and_a_replacement_rebuilds_its_ranges() {
    let extra = [
        "--transfer-interval",
        "50ms",
        "--anti-entropy-interval",
        "100ms",
    ];
    let mut cluster = TestCluster::start(4, &extra).await;
    let keys = load(&cluster.nodes).await;
    let remove = |id: &str| proto::RemoveRequest { node_id: id.into() };
    let mut admin = cluster.nodes[0].admin().await;
    let live = admin.remove(remove("n4")).await.expect_err("n4 is up");
    assert_eq!(live.code(), tonic::Code::FailedPrecondition);
    assert!(live.message().contains("reachable"), "{live:?}");
    let me = admin.remove(remove("n1")).await.expect_err("n1 itself");
    assert_eq!(me.code(), tonic::Code::FailedPrecondition);
    let unknown = admin.remove(remove("n9")).await.expect_err("no n9");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    cluster.nodes[3].kill().await;
    cluster.nodes[3].wipe();
    eventually("n1 to find n4 unreachable", || async {
        ring(&cluster.nodes[0])
            .await
            .members
            .iter()
            .any(|m| m.node_id == "n4" && !m.reachable)
    })
    .await;
    let removed = admin
        .remove(remove("n4"))
        .await
        .expect("removing the dead n4")
        .into_inner()
        .member
        .expect("the member");
    assert_eq!(removed.state, proto::MemberState::Removed as i32);
    for node in &cluster.nodes[..3] {
        eventually(
            &format!("{} to learn that n4 is removed", node.id),
            || async {
                members(node)
                    .await
                    .iter()
                    .any(|m| m.0 == "n4" && m.1 == proto::MemberState::Removed as i32)
            },
        )
        .await;
    }
    // Every key is on each of its replicas in the ring without n4: the ones that took
    // over n4's ranges got them from the other replicas, by anti-entropy.
    let (without_n4, addresses) = ring_of(&members(&cluster.nodes[0]).await);
    assert!(without_n4.members().all(|(id, _)| id.as_str() != "n4"));
    eventually("anti-entropy to fill n4's ranges' new replicas", || async {
        every_replica_holds(&without_n4, &addresses, &keys).await
    })
    .await;
    assert_all_read_r3(&cluster.nodes[0], &keys).await;

    // The replacement: the same id on an empty volume joins and pulls its ranges.
    cluster.nodes[3].restart().await;
    admin
        .join(proto::JoinRequest {
            node_id: "n4".into(),
            address: cluster.nodes[3].internode.to_string(),
            weight: 1,
            zone: String::new(),
        })
        .await
        .expect("n4 joins again");
    eventually("the replacement n4 to become a member", || async {
        status(&cluster.nodes[3]).await.state == proto::MemberState::Member as i32
    })
    .await;
    cluster.wait_for_members(4).await;
    let (with_n4, addresses) = ring_of(&members(&cluster.nodes[3]).await);
    assert!(with_n4.members().any(|(id, _)| id.as_str() == "n4"));
    assert_every_replica_holds(&with_n4, &addresses, &keys).await;
}

/// Whether each of `keys`' replicas under `ring` stores the key's value itself.
async fn every_replica_holds(
    ring: &dynamo_node::ring::Ring,
    addresses: &BTreeMap<String, String>,
    keys: &BTreeMap<String, String>,
) -> bool {
    replica_mismatch(ring, addresses, keys).await.is_none()
}

/// The first of `keys` one of whose replicas under `ring` does not store exactly the
/// key's value (a replica read, not a quorum read), described; `None` when all do.
async fn replica_mismatch(
    ring: &dynamo_node::ring::Ring,
    addresses: &BTreeMap<String, String>,
    keys: &BTreeMap<String, String>,
) -> Option<String> {
    use dynamo_node::transport::Transport;
    let transport = dynamo_e2e::cluster::replica_transport();
    for (key, value) in keys {
        for replica in ring.preference_list_for_key(key.as_bytes(), 3) {
            let state = match transport
                .read(&addresses[replica.as_str()], key.as_bytes())
                .await
            {
                Ok(state) => state,
                Err(e) => return Some(format!("reading {key} from {replica}: {e}")),
            };
            let values: Vec<&[u8]> = state.values().collect();
            if values != vec![value.as_bytes()] {
                return Some(format!("{key} on its replica {replica}: {values:?}"));
            }
        }
    }
    None
}

/// `(weight, settled weight, ownership)` of `id` in the member table `node` reports.
async fn weights(node: &TestNode, id: &str) -> (u32, u32, f64) {
    ring(node)
        .await
        .members
        .into_iter()
        .find(|m| m.node_id == id)
        .map(|m| (m.weight, m.settled_weight, m.ownership))
        .unwrap_or_else(|| panic!("{} does not list {id}", node.id))
}

/// Issue #4 ("when a node joins (or its weight rises), the nodes that lose ranges
/// stream those ranges' data to it"): a weight change on real processes under writes.
/// The node whose weight rose drives the hand-over, reports it as "reweighting" while
/// ranges are pending, and settles its weight (so reads switch) only once they are
/// acknowledged; every acknowledged write stays readable and its ring share grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_rise_under_writes_is_handed_over_and_moves_the_ring_shares() {
    let extra = ["--transfer-interval", "50ms", "--transfer-batch-keys", "16"];
    let cluster = TestCluster::start(4, &extra).await;
    let keys = load(&cluster.nodes).await;
    let (weight, settled, share_before) = weights(&cluster.nodes[0], "n4").await;
    assert_eq!((weight, settled), (1, 1));

    // Writes through every node for as long as the hand-over lasts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, String>::new()));
    let mut clients = Vec::new();
    for node in &cluster.nodes {
        clients.push(node.kv().await);
    }
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (key, value) = (format!("during-{i}"), format!("w{i}"));
                let client = &mut clients[i % 4];
                let reply = client
                    .put(PutRequest {
                        key: key.as_bytes().to_vec().into(),
                        context: Vec::new().into(),
                        value: value.as_bytes().to_vec().into(),
                        w: None,
                    })
                    .await;
                if reply.is_ok() {
                    acked.lock().unwrap().insert(key, value);
                }
                i += 1;
            }
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    eventually("writes to start", || async { acked_count() > 0 }).await;

    let changed = cluster.nodes[0]
        .admin()
        .await
        .set_weight(proto::SetWeightRequest {
            node_id: "n4".into(),
            weight: 3,
        })
        .await
        .expect("raising n4's weight")
        .into_inner()
        .member
        .expect("the changed member");
    assert_eq!((changed.weight, changed.settled_weight), (3, 1));
    let acked_at_change = acked_count();
    let seen_pending = std::sync::atomic::AtomicBool::new(false);
    eventually("n4 to settle its weight", || async {
        let now = status(&cluster.nodes[3]).await;
        if now.transfer == "reweighting" && now.transfer_pending_ranges > 0 {
            seen_pending.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        weights(&cluster.nodes[3], "n4").await.1 == 3
    })
    .await;
    let acked_during = acked_count() - acked_at_change;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer task");
    assert!(
        seen_pending.load(std::sync::atomic::Ordering::Relaxed),
        "n4 reported its pending ranges as reweighting"
    );
    assert!(
        acked_during > 0,
        "writes were acknowledged during the hand-over"
    );
    let done = status(&cluster.nodes[3]).await;
    assert_eq!(
        (done.transfer.as_str(), done.transfer_pending_ranges),
        ("", 0)
    );
    for node in &cluster.nodes {
        eventually(
            &format!("{} to learn n4's settled weight", node.id),
            || async {
                let (weight, settled, _) = weights(node, "n4").await;
                (weight, settled) == (3, 3)
            },
        )
        .await;
    }
    let (_, _, share_after) = weights(&cluster.nodes[0], "n4").await;
    assert!(
        share_after > 1.5 * share_before,
        "n4's share of the ring grew with its weight: {share_before} -> {share_after}"
    );
    // Settled means handed over: every loaded key is on each of its new replicas, and
    // every acknowledged write (during the change too) reads back with R = N.
    let table = members(&cluster.nodes[0]).await;
    let (ring, addresses) = ring_of(&table);
    assert_every_replica_holds(&ring, &addresses, &keys).await;
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    assert_all_read_r3(&cluster.nodes[1], keys.iter().chain(&acked)).await;
}

/// The node's clock incarnation, as `Admin.Status` reports it.
async fn incarnation(node: &TestNode) -> u64 {
    status(node).await.incarnation
}

/// A clean stop keeps the clock incarnation; a SIGKILL takes a new one at the next start,
/// in sync mode too: a put is acknowledged once W replicas hold it, which need not
/// include the coordinator's own flush, so a killed coordinator may have lost its dot of
/// an acknowledged write and must not issue dots that would claim it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sync_node_takes_a_new_clock_incarnation_and_a_stopped_one_keeps_it() {
    let args = [&ONE_REPLICA[..], &["--durability", "sync"]].concat();
    let mut cluster = TestCluster::start(1, &args).await;
    put(&cluster.nodes[0], "k", "v", Vec::new()).await.unwrap();
    let started = incarnation(&cluster.nodes[0]).await;

    cluster.nodes[0].stop().await;
    cluster.nodes[0].restart().await;
    cluster.wait_for_members(1).await;
    assert_eq!(
        incarnation(&cluster.nodes[0]).await,
        started,
        "a clean stop keeps the incarnation"
    );

    cluster.nodes[0].kill().await;
    cluster.nodes[0].restart().await;
    cluster.wait_for_members(1).await;
    assert_ne!(
        incarnation(&cluster.nodes[0]).await,
        started,
        "a killed node takes a new incarnation"
    );
    let (values, _) = get(&cluster.nodes[0], "k", None).await.unwrap();
    assert_eq!(values, vec!["v"], "sync mode kept the acknowledged write");
}

/// Membership says who belongs, `dynamo_peer_reachable` who answers: a SIGSTOPped peer
/// stays a member but shows as unreachable until it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_peer_shows_as_unreachable_while_it_stays_a_member() {
    let cluster = TestCluster::start(3, &["--http-listen", "127.0.0.1:0"]).await;
    let watcher = &cluster.nodes[0];
    let reachable = |peer: &str| format!("dynamo_peer_reachable{{peer=\"{peer}\"}}");
    eventually("n1 to see n2 and n3 reachable", || async {
        watcher.metric(&reachable("n2")).await == 1.0
            && watcher.metric(&reachable("n3")).await == 1.0
    })
    .await;
    cluster.nodes[2].pause();
    eventually("n1 to see n3 unreachable", || async {
        watcher.metric(&reachable("n3")).await == 0.0
    })
    .await;
    assert_eq!(
        watcher.metric("dynamo_members{state=\"member\"}").await,
        3.0,
        "a stuck node is still a member"
    );
    assert_eq!(watcher.metric(&reachable("n2")).await, 1.0);
    cluster.nodes[2].resume();
    eventually("n1 to see n3 reachable again", || async {
        watcher.metric(&reachable("n3")).await == 1.0
    })
    .await;
}

/// Issue #15, replicas across failure domains (Dynamo §4.2): six nodes in three zones of
/// uneven size (a: n1-n3, b: n4-n5, c: n6), each announcing its own `--zone` while it
/// joins. With N = 3 every key has one replica per zone, so stopping all of zone a
/// (half the nodes), while writers keep putting through the other zones, leaves two
/// replicas of every key: each key written before reads back at R = 2 and takes a
/// write at W = 2 through the surviving nodes, and every write acknowledged during the
/// outage reads back. Without zones, keys whose three replicas all sat in zone a would
/// read as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_zone_down_every_key_stays_readable_and_writable() {
    let zones = ["a", "a", "a", "b", "b", "c"];
    let mut cluster = TestCluster::start_each(
        zones.len(),
        |i| vec!["--zone".to_owned(), zones[i].to_owned()],
        None,
    )
    .await;
    for node in &cluster.nodes {
        eventually(
            &format!("{} to see every member's zone", node.id),
            || async {
                let members = ring(node).await.members;
                members.len() == zones.len()
                    && members.iter().all(|m| {
                        let index: usize = m.node_id[1..].parse().expect("n<i>");
                        m.zone == zones[index - 1]
                    })
            },
        )
        .await;
    }
    let keys: Vec<String> = (0..150).map(|i| format!("zoned-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        put(&cluster.nodes[i % 6], key, "before", Vec::new())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
    // Under load: writers keep putting fresh keys through the zones that stay while
    // zone a is killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (3..6)
        .map(|index| {
            let address = cluster.nodes[index].client_dial();
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
                    .expect("valid uri")
                    .connect_lazy();
                let mut kv = proto::kv_client::KvClient::new(channel);
                let (mut acknowledged, mut failed) = (Vec::new(), 0usize);
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("load-{index}-{n}");
                    let put = kv
                        .put(PutRequest {
                            key: key.clone().into_bytes().into(),
                            context: Vec::new().into(),
                            value: b"load".to_vec().into(),
                            w: None,
                        })
                        .await;
                    match put {
                        Ok(_) => acknowledged.push(key),
                        Err(_) => failed += 1,
                    }
                }
                (acknowledged, failed)
            })
        })
        .collect();
    for node in &mut cluster.nodes[..3] {
        node.kill().await;
    }
    for (i, key) in keys.iter().enumerate() {
        let node = &cluster.nodes[3 + i % 3];
        let (values, context) = get(node, key, Some(2))
            .await
            .unwrap_or_else(|e| panic!("R=2 get of {key} with zone a down: {e}"));
        assert_eq!(values, ["before"], "{key} through {}", node.id);
        put(node, key, "after", context)
            .await
            .unwrap_or_else(|e| panic!("W=2 put of {key} with zone a down: {e}"));
    }
    for (i, key) in keys.iter().enumerate() {
        let node = &cluster.nodes[3 + (i + 1) % 3];
        let (values, _) = get(node, key, Some(2)).await.expect("get");
        assert_eq!(values, ["after"], "{key} through {}", node.id);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acknowledged, mut failed) = (Vec::new(), 0);
    for writer in writers {
        let (keys, failures) = writer.await.expect("a writer panicked");
        acknowledged.extend(keys);
        failed += failures;
    }
    eprintln!(
        "{} writes acknowledged while zone a went down, {failed} failed",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty(), "the load ran");
    // Nothing acknowledged is lost: every load write reads back from the zones left.
    for (i, key) in acknowledged.iter().enumerate() {
        let node = &cluster.nodes[3 + i % 3];
        let (values, _) = get(node, key, Some(2))
            .await
            .unwrap_or_else(|e| panic!("R=2 get of {key}: {e}"));
        assert_eq!(values, ["load"], "{key} through {}", node.id);
    }
}

/// The browser that draws the status page in [`the_status_page_renders_in_headless_chromium`]:
/// `DYNAMO_CHROMIUM`, else `chromium` or `chromium-browser` on the `PATH`.
fn chromium() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("DYNAMO_CHROMIUM") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Issue #15: the status page as a browser draws it (Debian's Chromium, headless): the
/// DOM after loading holds the node table, the requests, the ring picture, every member
/// and the link to `/metrics`. Without Chromium the test says so and passes, unless
/// `DYNAMO_REQUIRE_BROWSER=1` (what `.ci/run` sets after installing it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("DYNAMO_REQUIRE_BROWSER").is_none(),
            "DYNAMO_REQUIRE_BROWSER is set but no chromium was found (apt-get install chromium, or set DYNAMO_CHROMIUM)"
        );
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let cluster = TestCluster::start(3, &["--http-listen", "127.0.0.1:0"]).await;
    for i in 0..5 {
        put(&cluster.nodes[i % 3], &format!("page-{i}"), "v", Vec::new())
            .await
            .expect("put");
    }
    let address = cluster.nodes[0].http.expect("HTTP port announced");
    let profile = tempfile::tempdir().expect("temp dir");
    let run = tokio::process::Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{address}/"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("chromium drew the page within 120 s")
        .expect("chromium runs");
    assert!(output.status.success(), "chromium failed: {output:?}");
    let dom = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "<title>dynamo node n1</title>",
        "<table id=\"node\">",
        "N=3 R=2 W=2",
        "<table id=\"requests\">",
        "<td>put</td>",
        "<svg",
        "<table id=\"members\">",
        "<a href=\"/metrics\">",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} not in the DOM Chromium built:\n{dom}"
        );
    }
    for node in ["n1", "n2", "n3"] {
        assert!(
            dom.contains(&format!("</span>{node}</td>")),
            "{node} missing:\n{dom}"
        );
    }
}

/// Issue #15, timestamp reconciliation: with `--reconciliation last-write-wins` a blind
/// put replaces what is there (a curl user's second PUT reads back 200, not 300),
/// concurrent writes that did make siblings read as one value, the same one through
/// every node, and a delete reads back as not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_write_wins_keeps_one_value_per_key() {
    let args = [
        "--reconciliation",
        "last-write-wins",
        "--write-quorum",
        "3",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let cluster = TestCluster::start(3, &args).await;
    put(&cluster.nodes[0], "k", "first", Vec::new())
        .await
        .expect("put");
    // W=3: every replica holds "first", so this blind put through another node
    // supersedes it there and everywhere.
    put(&cluster.nodes[1], "k", "second", Vec::new())
        .await
        .expect("put");
    for node in &cluster.nodes {
        let (values, _) = get(node, "k", Some(3)).await.expect("get");
        assert_eq!(values, ["second"], "through {}", node.id);
    }
    // Over HTTP: two blind PUTs, then a GET answers 200 with the second.
    let http = cluster.nodes[2].http.expect("HTTP port announced");
    for value in ["one", "two"] {
        let put = support::http(http, "PUT", "/v1/kv/curl", &[], value.as_bytes()).await;
        assert_eq!(put.status, 204);
    }
    let read = support::http(http, "GET", "/v1/kv/curl", &[], b"").await;
    assert_eq!((read.status, read.body.as_slice()), (200, &b"two"[..]));

    // Concurrent blind writes of one key through every node at once: whatever the
    // replicas store, each node reads back one value, and the same one.
    let writes = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| async move { put(node, "raced", &format!("w{i}"), Vec::new()).await });
    for written in futures::future::join_all(writes).await {
        written.expect("a concurrent put");
    }
    let mut seen = Vec::new();
    for node in &cluster.nodes {
        let (values, _) = get(node, "raced", Some(3)).await.expect("get");
        assert_eq!(values.len(), 1, "one value through {}: {values:?}", node.id);
        seen.push(values[0].clone());
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "every node shows the same winner: {seen:?}");

    cluster.nodes[0]
        .kv()
        .await
        .delete(DeleteRequest {
            key: b"k".to_vec().into(),
            context: Vec::new().into(),
            w: None,
        })
        .await
        .expect("delete");
    for node in &cluster.nodes {
        let (values, _) = get(node, "k", Some(3)).await.expect("get");
        assert!(values.is_empty(), "{} still reads {values:?}", node.id);
    }
}

/// Dynamo §6's "high performance read engine" profile (W = N, R = 1): once a write is
/// acknowledged by all N home replicas, an R = 1 read through any node, each reading a
/// single replica, sees it (README, "Profiles").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_w_equal_to_n_an_r1_read_through_any_node_sees_the_acknowledged_write() {
    let profile = [
        "--replication-factor",
        "3",
        "--write-quorum",
        "3",
        "--read-quorum",
        "1",
    ];
    let cluster = TestCluster::start(4, &profile).await;
    for (i, writer) in cluster.nodes.iter().enumerate() {
        for j in 0..8 {
            let key = format!("profile-{i}-{j}");
            let value = format!("value-{i}-{j}");
            put(writer, &key, &value, Vec::new())
                .await
                .unwrap_or_else(|e| panic!("W=N put of {key} through {}: {e}", writer.id));
            for reader in &cluster.nodes {
                let (values, _) = get(reader, &key, None)
                    .await
                    .unwrap_or_else(|e| panic!("R=1 get of {key} through {}: {e}", reader.id));
                assert_eq!(
                    values,
                    std::slice::from_ref(&value),
                    "{key} through {}",
                    reader.id
                );
            }
        }
    }
}

/// Issue #15: at the sibling cap a put is a conflict the client resolves by reading
/// (`ABORTED`, "read and resolve"), whichever node receives it (with N = 1 on two nodes
/// one of them forwards the put, and the home replica's answer crosses back); a put
/// with the read's context resolves it; a delete without a context deletes what a read
/// finds instead of writing a tombstone that supersedes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_past_the_sibling_cap_is_aborted_and_a_delete_without_a_context_deletes() {
    let args = [&ONE_REPLICA[..], &["--max-siblings", "3"]].concat();
    let cluster = TestCluster::start(2, &args).await;
    for i in 0..3 {
        put(&cluster.nodes[i % 2], "hot", &format!("v{i}"), Vec::new())
            .await
            .unwrap_or_else(|e| panic!("blind put {i}: {e}"));
    }
    for node in &cluster.nodes {
        let refused = put(node, "hot", "one too many", Vec::new())
            .await
            .expect_err("a fourth concurrent version is refused");
        assert_eq!(
            refused.code(),
            Code::Aborted,
            "through {}: {refused:?}",
            node.id
        );
        assert!(
            refused.message().contains("read and resolve"),
            "{refused:?}"
        );
    }
    let (values, context) = get(&cluster.nodes[0], "hot", None).await.expect("get");
    assert_eq!(values, ["v0", "v1", "v2"]);
    put(&cluster.nodes[1], "hot", "merged", context)
        .await
        .expect("a put with the read's context resolves the siblings");
    let (values, _) = get(&cluster.nodes[1], "hot", None).await.expect("get");
    assert_eq!(values, ["merged"]);

    cluster.nodes[0]
        .kv()
        .await
        .delete(DeleteRequest {
            key: b"hot".to_vec().into(),
            context: Vec::new().into(),
            w: None,
        })
        .await
        .expect("a delete without a context");
    for node in &cluster.nodes {
        let (values, _) = get(node, "hot", None).await.expect("get");
        assert!(values.is_empty(), "{} still reads {values:?}", node.id);
    }
}

/// A key's state is bounded by what one internode message carries: a put that would
/// outgrow it (two concurrent 9 MiB values) is refused before anything is written, as
/// a conflict (`ABORTED`, "read and resolve"), and the key stays readable and writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_would_outgrow_the_key_is_refused_before_anything_is_written() {
    let mut args = ONE_REPLICA.to_vec();
    args.extend(["--max-value-bytes", "10485760"]);
    let cluster = TestCluster::start(1, &args).await;
    let node = &cluster.nodes[0];
    let large = "x".repeat(9 * 1024 * 1024);
    put(node, "big", &large, Vec::new())
        .await
        .expect("one 9 MiB value fits");
    let refused = put(node, "big", &large, Vec::new())
        .await
        .expect_err("a second, concurrent 9 MiB value does not");
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    assert!(
        refused.message().contains("read and resolve"),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("resolve its siblings"),
        "{}",
        refused.message()
    );
    let reply = node
        .kv()
        .await
        .max_decoding_message_size(32 * 1024 * 1024)
        .get(GetRequest {
            key: b"big".to_vec().into(),
            r: None,
        })
        .await
        .expect("still readable")
        .into_inner();
    assert_eq!(
        reply.values.len(),
        1,
        "nothing of the refused put was written"
    );
    let context = reply.context.to_vec();
    put(node, "big", "small", context)
        .await
        .expect("a put resolving it is accepted");
    assert_eq!(get(node, "big", None).await.expect("get").0, ["small"]);
}

/// SIGTERM while a plain-HTTP client holds a half-sent request: the node stops
/// accepting, gives open connections its drain bound (request timeout + 5 s) and exits
/// cleanly. It used to wait for that client forever, until Kubernetes' SIGKILL made the
/// stop an unclean one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_half_sent_http_request_exits_within_the_drain_bound() {
    use tokio::io::AsyncWriteExt as _;
    let mut args = ONE_REPLICA.to_vec();
    args.extend(["--http-listen", "127.0.0.1:0"]);
    let mut cluster = TestCluster::start(1, &args).await;
    let http = cluster.nodes[0].http.expect("HTTP is on");
    let mut partial = tokio::net::TcpStream::connect(http).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let health = support::http(http, "GET", "/healthz", &[], b"").await;
    assert_eq!(
        health.status, 200,
        "the node serves beside the half-sent request"
    );
    // Panics unless the node exits successfully within the harness's bound (30 s).
    cluster.nodes[0].stop().await;
    drop(partial);
}
