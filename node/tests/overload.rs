//! Overload and hostile clients against a real node process: hundreds of idle and
//! slow connections, a low open-files limit, more requests than the in-flight cap.
//! Normal requests must keep being answered (each within a bounded wait); the
//! latencies before and during are printed (`--nocapture`) and recorded in
//! BENCHMARKS.md, not asserted.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dynamo_node::proto;
use support::{ONE_REPLICA, TestCluster, TestNode, WAIT, eventually};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// How long one normal request may take while the node is under attack before the
/// test fails (they take about a millisecond).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER_WITHIN, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {ANSWER_WITHIN:?}"))
}

/// `count` connections to `address` that send nothing.
async fn idle_connections(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(TcpStream::connect(address).await.expect("connecting"));
    }
    connections
}

/// `count` slowloris clients: each sends the start of a request and then one byte of
/// a header every 500 ms, never finishing. Dropping the handle stops them.
fn slow_http_clients(address: SocketAddr, count: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count {
            let Ok(mut stream) = TcpStream::connect(address).await else {
                continue;
            };
            if stream
                .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                .await
                .is_ok()
            {
                connections.push(stream);
            }
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for stream in &mut connections {
                let _ = stream.write_all(b"a").await;
            }
        }
    })
}

/// One round of normal requests: a gRPC put and get, an HTTP `/healthz` on a fresh
/// connection, an `Admin.Status`; their latencies.
async fn normal_round(node: &TestNode, label: &str, round: usize) -> [Duration; 4] {
    let mut kv = node.kv().await;
    let mut admin = node.admin().await;
    let key: tonic::codegen::Bytes = format!("{label}-{round}").into_bytes().into();
    let started = Instant::now();
    within(
        "a gRPC put",
        kv.put(proto::PutRequest {
            key: key.clone(),
            value: b"value".as_slice().into(),
            ..Default::default()
        }),
    )
    .await
    .expect("the put succeeds");
    let put = started.elapsed();
    let started = Instant::now();
    let found = within(
        "a gRPC get",
        kv.get(proto::GetRequest {
            key,
            ..Default::default()
        }),
    )
    .await
    .expect("the get succeeds")
    .into_inner();
    let get = started.elapsed();
    assert_eq!(found.values, [b"value".as_slice()]);
    let started = Instant::now();
    let health = within(
        "GET /healthz",
        support::http(node.http.expect("HTTP on"), "GET", "/healthz", &[], b""),
    )
    .await;
    let healthz = started.elapsed();
    assert_eq!(health.status, 200, "/healthz answers");
    let started = Instant::now();
    within("Admin.Status", admin.status(proto::StatusRequest {}))
        .await
        .expect("Admin.Status succeeds");
    [put, get, healthz, started.elapsed()]
}

/// Runs `rounds` normal rounds and prints each kind's p50 and max.
async fn measure(node: &TestNode, label: &str, rounds: usize) {
    let mut samples: [Vec<Duration>; 4] = Default::default();
    for round in 0..rounds {
        for (kind, latency) in normal_round(node, label, round)
            .await
            .into_iter()
            .enumerate()
        {
            samples[kind].push(latency);
        }
    }
    for (name, mut kind) in ["grpc put", "grpc get", "http /healthz", "admin status"]
        .into_iter()
        .zip(samples)
    {
        kind.sort();
        println!(
            "{label:>8} {name:<14} p50 {:>8.2?}  max {:>8.2?}  ({rounds} requests)",
            kind[kind.len() / 2],
            kind[kind.len() - 1]
        );
    }
}

/// `GET path` on a fresh connection: whatever the node sent before closing (empty
/// when it closed without answering).
async fn raw_get(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connecting");
    let request = format!("GET {path} HTTP/1.1\r\nHost: n1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A labelled metric's value on the node's `/metrics`.
async fn metric(node: &TestNode, series: &str) -> f64 {
    node.metric(series).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_and_slow_connections_do_not_hold_up_normal_requests() {
    let mut args = ONE_REPLICA.to_vec();
    args.extend(["--http-listen", "127.0.0.1:0"]);
    let cluster = TestCluster::start(1, &args).await;
    let node = &cluster.nodes[0];
    let http = node.http.expect("HTTP on");
    measure(node, "before", 50).await;

    let idle_http = idle_connections(http, 300).await;
    let slow_http = slow_http_clients(http, 300);
    let idle_client = idle_connections(node.client, 300).await;
    let idle_internode = idle_connections(node.internode, 100).await;
    // They are really held: the node counts them as open.
    eventually("the node to hold 600 HTTP connections", || async {
        metric(node, "dynamo_connections{listener=\"http\"}").await >= 600.0
    })
    .await;
    measure(node, "during", 50).await;

    // Connections that never said anything are closed after the client read timeout
    // (10 s by default), freeing their slots; the harness's own channels remain.
    eventually("the silent gRPC connections to be closed", || async {
        metric(node, "dynamo_connections{listener=\"client\"}").await < 10.0
            && metric(node, "dynamo_connections{listener=\"internode\"}").await < 10.0
    })
    .await;
    assert!(
        metric(
            node,
            "dynamo_connections_refused_total{listener=\"client\",reason=\"silent\"}"
        )
        .await
            >= 300.0
    );
    // So are the idle and slowloris HTTP ones, by the header-read timeout.
    eventually(
        "the idle and slow HTTP connections to be closed",
        || async { metric(node, "dynamo_connections{listener=\"http\"}").await < 10.0 },
    )
    .await;
    slow_http.abort();
    drop((idle_http, idle_client, idle_internode));
}

/// The reproduction: under `ulimit -n 256`, 242 idle HTTP connections made
/// `/healthz`, gRPC gets and admin status all time out. Now each listener's cap fits
/// the limit, so the gRPC APIs keep answering and HTTP answers `503` at once until the
/// idle connections time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_open_files_limit_every_api_keeps_answering() {
    let mut args = ONE_REPLICA.to_vec();
    args.extend([
        "--http-listen",
        "127.0.0.1:0",
        "--test-ulimit-n",
        "256",
        "--client-read-timeout",
        "2s",
    ]);
    let cluster = TestCluster::start(1, &args).await;
    let node = &cluster.nodes[0];
    let http = node.http.expect("HTTP on");
    // (256 - 64 reserved) / 3 listeners.
    assert_eq!(
        metric(node, "dynamo_connection_limit{listener=\"http\"}").await,
        64.0
    );
    let idle = idle_connections(http, 300).await;
    let mut kv = node.kv().await;
    within(
        "a gRPC put",
        kv.put(proto::PutRequest {
            key: b"k".as_slice().into(),
            value: b"v".as_slice().into(),
            ..Default::default()
        }),
    )
    .await
    .expect("the put succeeds");
    within(
        "a gRPC get",
        kv.get(proto::GetRequest {
            key: b"k".as_slice().into(),
            ..Default::default()
        }),
    )
    .await
    .expect("the get succeeds");
    within(
        "Admin.Status",
        node.admin().await.status(proto::StatusRequest {}),
    )
    .await
    .expect("Admin.Status succeeds");
    // A new HTTP client is told at once to come back, not left hanging: the cap is
    // full (64 of the 300 idle connections hold it until the read timeout). While the
    // node is still answering the flood's refusals (a few at a time, each lingering at
    // most 250 ms), a client may find its connection closed unanswered instead.
    eventually("a new HTTP client to get 503 with Retry-After", || async {
        let answer = within("GET /healthz at the cap", raw_get(http, "/healthz")).await;
        answer.starts_with("HTTP/1.1 503") && answer.to_ascii_lowercase().contains("retry-after: 1")
    })
    .await;
    drop(idle);
    eventually("/healthz to answer 200 again", || async {
        support::http(http, "GET", "/healthz", &[], b"")
            .await
            .status
            == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_past_the_inflight_cap_are_shed_with_a_retry_hint() {
    let mut args = ONE_REPLICA.to_vec();
    args.extend([
        "--http-listen",
        "127.0.0.1:0",
        "--max-inflight-requests",
        "1",
    ]);
    let cluster = TestCluster::start(1, &args).await;
    let node = &cluster.nodes[0];
    let http = node.http.expect("HTTP on");
    // An HTTP put whose body is still on its way holds the only slot.
    let hold = || async {
        let mut holder = TcpStream::connect(http).await.unwrap();
        holder
            .write_all(b"PUT /v1/kv/held HTTP/1.1\r\nHost: n1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab")
            .await
            .unwrap();
        holder
    };
    let mut holder = hold().await;
    let mut kv = node.kv().await;
    let deadline = Instant::now() + WAIT;
    let shed = loop {
        // The put's headers may not have been read yet: poll until the slot is taken.
        match kv
            .get(proto::GetRequest {
                key: b"k".as_slice().into(),
                ..Default::default()
            })
            .await
        {
            Err(status) => break status,
            Ok(_) => {
                assert!(Instant::now() < deadline, "no get was shed within {WAIT:?}");
                // The put arrived while a get held the slot and was shed itself (an
                // answer already waits on its socket): send another.
                let mut answer = [0u8; 64];
                if matches!(holder.try_read(&mut answer), Ok(n) if n > 0) {
                    holder = hold().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(shed.code(), tonic::Code::Unavailable, "{shed:?}");
    assert!(
        shed.message().contains("1 client requests in flight"),
        "{shed:?}"
    );
    assert_eq!(
        shed.metadata()
            .get("grpc-retry-pushback-ms")
            .map(|v| v.to_str().unwrap()),
        Some("100")
    );
    assert!(metric(node, "dynamo_requests_shed_total{api=\"grpc\"}").await >= 1.0);
    // The held put completes once its body arrives, and frees the slot.
    holder.write_all(b"cd").await.unwrap();
    let mut answer = Vec::new();
    within(
        "the held put's answer",
        tokio::io::AsyncReadExt::read_to_end(&mut holder, &mut answer),
    )
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 204"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let found = kv
        .get(proto::GetRequest {
            key: b"held".as_slice().into(),
            ..Default::default()
        })
        .await
        .expect("admitted again")
        .into_inner();
    assert_eq!(found.values, [b"abcd".as_slice()]);
}
