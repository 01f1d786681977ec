//! The partition-aware client against real `dynamo-node` processes on loopback: it
//! routes each request to a replica of its key (so no node forwards a put), coordinates
//! reads itself from R replicas (Dynamo §6.4), follows membership changes, routes around
//! a killed node, and falls back to server-driven routing when it cannot route.

#[path = "../../node/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use dynamo_client::{Client, ClientConfig, Context, Routing};
use dynamo_core::version::SiblingSet;
use dynamo_proto as proto;
use support::{TestCluster, TestNode, eventually};

/// N=2 of three or more nodes, so every key has a non-replica. W=2 puts a write on
/// both replicas (on a stand-in for a dead one, sloppy quorum), so an R=1 read at any
/// replica sees it, and a killed node fails no quorum.
const SMALL_N: &[&str] = &[
    "--replication-factor",
    "2",
    "--read-quorum",
    "1",
    "--write-quorum",
    "2",
    "--http-listen",
    "127.0.0.1:0",
];

async fn client(seed: &TestNode, routing: Routing, refresh: Duration) -> Client {
    let config = ClientConfig::new([seed.client_dial().to_string()])
        .with_routing(routing)
        .with_refresh_interval(refresh)
        .with_request_timeout(Duration::from_secs(2));
    Client::connect(config)
        .await
        .expect("connecting the client")
}

/// Waits until the client routes by a table in which every one of `ids` has a client
/// address.
async fn wait_for_addresses(client: &Client, ids: &[&str]) {
    eventually(
        "the client to learn every node's client address",
        || async {
            let _ = client.refresh().await;
            client.routing_table().is_some_and(|table| {
                ids.iter().all(|id| {
                    table
                        .members()
                        .iter()
                        .any(|m| m.id == *id && m.client_address.is_some())
                })
            })
        },
    )
    .await;
}

async fn forwarded(cluster: &TestCluster) -> f64 {
    let mut total = 0.0;
    for node in &cluster.nodes {
        total += node.metric("dynamo_forwarded_puts_total").await;
    }
    total
}

/// Dynamo §4.5: with client-driven coordination every put lands on a home replica,
/// which coordinates it locally; sent to one node, about half of them (N=2 of 4) must
/// be forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_routing_sends_puts_to_home_replicas_and_nothing_is_forwarded() {
    let cluster = TestCluster::start(4, SMALL_N).await;
    let routed = client(&cluster.nodes[0], Routing::Client, Duration::from_secs(60)).await;
    wait_for_addresses(&routed, &["n1", "n2", "n3", "n4"]).await;
    let table = routed.routing_table().unwrap();
    assert_eq!(table.replication_factor(), 2);
    assert_eq!(table.members().len(), 4);

    let before = routed.stats();
    for i in 0..40 {
        let key = format!("routed-{i}");
        routed
            .put(key.as_bytes(), &Context::empty(), b"v")
            .await
            .expect("routed put");
        let read = routed.get(key.as_bytes()).await.expect("routed get");
        assert_eq!(read.values, [b"v".as_slice()], "{key}");
    }
    let after = routed.stats();
    assert_eq!(after.routed - before.routed, 80, "{after:?}");
    assert_eq!(after.fallback, before.fallback, "{after:?}");
    assert_eq!(forwarded(&cluster).await, 0.0, "no put was forwarded");

    let server = client(&cluster.nodes[0], Routing::Server, Duration::from_secs(60)).await;
    for i in 0..40 {
        server
            .put(format!("served-{i}").as_bytes(), &Context::empty(), b"v")
            .await
            .expect("server-routed put");
    }
    assert_eq!(server.stats().fallback, 40);
    assert!(
        server.routing_table().is_none(),
        "server routing pulls no ring"
    );
    let forwarded = cluster.nodes[0].metric("dynamo_forwarded_puts_total").await;
    assert!(
        forwarded > 0.0 && forwarded < 40.0,
        "n1 forwards the puts of keys it does not hold: {forwarded}"
    );
}

/// The client learns of a join from the `dynamo-topology` header of ordinary answers
/// (its periodic refresh is an hour away), then routes to the new node; when a node is
/// killed its keys stay readable and writable through the other replica, and the
/// client's table marks it unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_follows_a_join_and_routes_around_a_killed_node() {
    let mut cluster = TestCluster::start(3, SMALL_N).await;
    let client = client(
        &cluster.nodes[0],
        Routing::Client,
        Duration::from_secs(3600),
    )
    .await;
    wait_for_addresses(&client, &["n1", "n2", "n3"]).await;
    let refreshes = client.stats().refreshes;

    let root = tempfile::tempdir().unwrap();
    let seed = cluster.nodes[0].internode;
    let n4 = TestNode::start(root.path(), "n4", &[seed], SMALL_N).await;
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
    cluster.nodes.push(n4);
    cluster.wait_for_members(4).await;
    eventually("the client to route to n4", || async {
        // Answers carry the answering node's topology version; a newer one wakes the
        // client's refresh.
        let _ = client.get(b"any").await;
        client.routing_table().is_some_and(|t| {
            t.members()
                .iter()
                .any(|m| m.id == "n4" && m.client_address.is_some())
        })
    })
    .await;
    assert!(client.stats().refreshes > refreshes);
    let first_on = |node: &str| {
        (0..1000)
            .map(|i| format!("key-{i}"))
            .find(|key| client.preference_list(key.as_bytes())[0].id == node)
            .expect("some key has this node first")
    };
    let key = first_on("n4");
    let before = cluster.nodes[3].metric("dynamo_forwarded_puts_total").await;
    client
        .put(key.as_bytes(), &Context::empty(), b"on n4")
        .await
        .expect("put routed to n4");
    let read = client.get(key.as_bytes()).await.expect("get");
    assert_eq!(read.values, [b"on n4".as_slice()]);
    assert_eq!(forwarded(&cluster).await, before);

    // Kill n2; keys it coordinates move to their other replica.
    let victim_keys: Vec<String> = (0..1000)
        .map(|i| format!("victim-{i}"))
        .filter(|key| client.preference_list(key.as_bytes())[0].id == "n2")
        .take(10)
        .collect();
    cluster.nodes[1].kill().await;
    for key in &victim_keys {
        let context = client
            .put(key.as_bytes(), &Context::empty(), b"after the kill")
            .await
            .unwrap_or_else(|e| panic!("put {key} with n2 dead: {e}"));
        let read = client
            .get(key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {key} with n2 dead: {e}"));
        assert!(!read.context.is_empty() && !context.is_empty());
    }
    assert!(client.stats().failovers > 0, "{:?}", client.stats());
    eventually("the client's table to mark n2 unreachable", || async {
        // A call that n2 fails again (once the client's own down mark expires) pulls
        // the whole topology, with n1's view of who is reachable.
        let _ = client.get(victim_keys[0].as_bytes()).await;
        client
            .routing_table()
            .is_some_and(|t| t.members().iter().any(|m| m.id == "n2" && !m.reachable))
    })
    .await;
}

/// Nodes listening on a wildcard address with no advertise announce no client
/// address, so the client cannot route: every request goes to the seed, which routes
/// it (server-driven), and still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_falls_back_to_server_routing_when_it_cannot_route() {
    let mut extra = SMALL_N.to_vec();
    extra.extend(["--listen", "0.0.0.0:0"]);
    let cluster = TestCluster::start(3, &extra).await;
    let client = client(&cluster.nodes[0], Routing::Client, Duration::from_secs(60)).await;
    let table = client
        .routing_table()
        .expect("the topology itself is served");
    assert!(table.members().iter().all(|m| m.client_address.is_none()));
    for i in 0..20 {
        let key = format!("fallback-{i}");
        client
            .put(key.as_bytes(), &Context::empty(), b"v")
            .await
            .expect("fallback put");
        assert_eq!(
            client
                .get(key.as_bytes())
                .await
                .expect("fallback get")
                .values,
            [b"v".as_slice()]
        );
    }
    let stats = client.stats();
    assert_eq!((stats.routed, stats.fallback), (0, 40), "{stats:?}");
}

/// A node at its in-flight cap sheds a request (UNAVAILABLE with a retry hint) before
/// doing anything, so the client sends it to the next node instead of failing it, and
/// does not take the shedding node for down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_an_overloaded_node_sheds_goes_to_another_node() {
    use tokio::io::AsyncWriteExt as _;
    let mut extra = SMALL_N.to_vec();
    // The held put below keeps the only slot until its body times out: longer than any
    // wait of this test, so a slow machine cannot see the slot freed before the probe.
    extra.extend([
        "--max-inflight-requests",
        "1",
        "--client-read-timeout",
        "120s",
    ]);
    let cluster = TestCluster::start(2, &extra).await;
    let (busy, other) = (&cluster.nodes[0], &cluster.nodes[1]);
    // An HTTP put whose body is still on its way holds the busy node's only slot.
    let mut holder = tokio::net::TcpStream::connect(busy.http.expect("HTTP on"))
        .await
        .unwrap();
    holder
        .write_all(b"PUT /v1/kv/held HTTP/1.1\r\nHost: n1\r\nContent-Length: 4\r\n\r\nab")
        .await
        .unwrap();
    eventually("the busy node to shed a request", || async {
        let mut kv = busy.kv().await;
        kv.get(proto::GetRequest {
            key: Bytes::from_static(b"probe"),
            ..Default::default()
        })
        .await
        .is_err_and(|status| status.code() == tonic::Code::Unavailable)
    })
    .await;
    // Server routing over both nodes, the busy one first: the first request is shed
    // there and answered by the other.
    let config = ClientConfig::new([
        busy.client_dial().to_string(),
        other.client_dial().to_string(),
    ])
    .with_routing(Routing::Server)
    .with_request_timeout(Duration::from_secs(2));
    let client = Client::connect(config)
        .await
        .expect("connecting the client");
    for i in 0..4 {
        let key = format!("shed-{i}");
        client
            .put(key.as_bytes(), &Context::empty(), b"v")
            .await
            .expect("a put shed by one node is taken by the other");
    }
    let stats = client.stats();
    assert!(stats.failovers >= 1, "no request was shed: {stats:?}");
    assert!(
        busy.metric("dynamo_requests_shed_total{api=\"grpc\"}")
            .await
            >= 2.0
    );
    drop(holder);
}

/// N=3 R=2 W=2 (the paper's common configuration), anti-entropy off so that only read
/// repair can heal a divergence.
const PAPER_NRW: &[&str] = &[
    "--replication-factor",
    "3",
    "--read-quorum",
    "2",
    "--write-quorum",
    "2",
    "--anti-entropy-interval",
    "0s",
    "--http-listen",
    "127.0.0.1:0",
];

/// One node's own state of `key`, through `Kv.GetLocal`.
async fn local_state(node: &TestNode, key: &[u8]) -> SiblingSet {
    let state = node
        .kv()
        .await
        .get_local(proto::GetLocalRequest {
            key: Bytes::copy_from_slice(key),
        })
        .await
        .unwrap_or_else(|e| panic!("GetLocal on {}: {e}", node.id))
        .into_inner()
        .state;
    SiblingSet::from_bytes(&state).expect("a valid stored state")
}

/// The `Kv.GetLocal` calls a node served (0 before its first).
async fn get_local_calls(node: &TestNode) -> f64 {
    let address = node.http.expect("started with --http-listen");
    let response = support::http(address, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(response.body).expect("utf-8 metrics");
    text.lines()
        .find_map(|line| {
            line.strip_prefix(r#"dynamo_requests_total{api="grpc",op="get_local",outcome="ok"} "#)
        })
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

fn sorted(values: &[Bytes]) -> Vec<&[u8]> {
    let mut values: Vec<&[u8]> = values.iter().map(AsRef::as_ref).collect();
    values.sort();
    values
}

/// Dynamo §6.4: a get coordinated by the client returns every concurrent version and a
/// context that supersedes them (§4.4), without a node coordinating it. Then two
/// replicas that hold different concurrent versions (one written while the other two
/// were down): a client read of all three returns both versions, and its repair request
/// makes a node write the merge back to every replica (read repair, §5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_coordinated_reads_merge_siblings_and_repair_divergent_replicas() {
    let mut cluster = TestCluster::start(3, PAPER_NRW).await;
    let client = client(&cluster.nodes[0], Routing::Client, Duration::from_secs(60)).await;
    wait_for_addresses(&client, &["n1", "n2", "n3"]).await;
    assert_eq!(client.routing_table().unwrap().read_quorum(), Some(2));

    // Two blind writes are concurrent: both survive as siblings on every replica.
    client
        .put(b"cart", &Context::empty(), b"apples")
        .await
        .unwrap();
    client
        .put(b"cart", &Context::empty(), b"pears")
        .await
        .unwrap();
    let before = client.stats();
    let read = client.get(b"cart").await.expect("client-coordinated get");
    let after = client.stats();
    assert_eq!(sorted(&read.values), [b"apples".as_slice(), b"pears"]);
    assert_eq!(after.client_reads, before.client_reads + 1, "{after:?}");
    assert_eq!(
        after.fallback, before.fallback,
        "no node coordinated the get"
    );
    // The context covers both: a write with it replaces them.
    client
        .put(b"cart", &read.context, b"apples+pears")
        .await
        .unwrap();
    let read = client.get(b"cart").await.unwrap();
    assert_eq!(read.values, [b"apples+pears".as_slice()]);
    let mut gets = 0.0;
    for node in &cluster.nodes {
        gets += get_local_calls(node).await;
    }
    assert!(
        gets >= 4.0,
        "two client reads of R=2 replicas: {gets} GetLocal calls"
    );

    // Diverge the replicas: "a" on n1 and n2 while n3 is down, then a blind "b" on n3
    // alone (W=1) while n1 and n2 are down. No stand-in exists with three nodes, so no
    // hint carries either write over.
    cluster.nodes[2].stop().await;
    cluster.nodes[0]
        .kv()
        .await
        .put(proto::PutRequest {
            key: "split".into(),
            context: Bytes::new(),
            value: "a".into(),
            w: Some(2),
        })
        .await
        .expect("put a with n3 down");
    cluster.nodes[2].restart().await;
    cluster.nodes[0].stop().await;
    cluster.nodes[1].stop().await;
    cluster.nodes[2]
        .kv()
        .await
        .put(proto::PutRequest {
            key: "split".into(),
            context: Bytes::new(),
            value: "b".into(),
            w: Some(1),
        })
        .await
        .expect("put b on n3 alone");
    cluster.nodes[0].restart().await;
    cluster.nodes[1].restart().await;
    let values = |state: &SiblingSet| -> Vec<Vec<u8>> {
        let mut values: Vec<Vec<u8>> = state.values().map(<[u8]>::to_vec).collect();
        values.sort();
        values
    };
    assert_eq!(
        values(&local_state(&cluster.nodes[0], b"split").await),
        [b"a"]
    );
    assert_eq!(
        values(&local_state(&cluster.nodes[1], b"split").await),
        [b"a"]
    );
    assert_eq!(
        values(&local_state(&cluster.nodes[2], b"split").await),
        [b"b"]
    );

    // A fresh client reading all three replicas (R=3), once n1 sees them all up.
    let config = ClientConfig::new([cluster.nodes[0].client_dial().to_string()])
        .with_quorum(Some(3), None)
        .with_refresh_interval(Duration::from_secs(60));
    let reader = Client::connect(config).await.expect("connecting");
    eventually("the topology to show every node reachable", || async {
        let _ = reader.refresh().await;
        reader.routing_table().is_some_and(|table| {
            table.members().len() == 3
                && table
                    .members()
                    .iter()
                    .all(|m| m.reachable && m.client_address.is_some())
        })
    })
    .await;
    let read = reader
        .get(b"split")
        .await
        .expect("client read of 3 replicas");
    let stats = reader.stats();
    assert_eq!(sorted(&read.values), [b"a".as_slice(), b"b"]);
    assert_eq!(
        (stats.client_reads, stats.read_repairs),
        (1, 1),
        "{stats:?}"
    );
    eventually(
        "read repair to give every replica both versions",
        || async {
            let mut all = Vec::new();
            for node in &cluster.nodes {
                all.push(local_state(node, b"split").await);
            }
            all.iter().all(|state| values(state) == [b"a", b"b"])
                && all[0] == all[1]
                && all[1] == all[2]
        },
    )
    .await;
    // Healed: the replicas agree, so the next client read needs no repair.
    let again = reader.get(b"split").await.unwrap();
    assert_eq!(again, read);
    assert_eq!(reader.stats().read_repairs, 1);
}

/// A client read tolerates a dead replica (R of the reachable ones, Dynamo §4.5); with
/// fewer than R replicas reachable it leaves the read to a node, whose sloppy quorum
/// reads a stand-in. And `Kv.GetLocal` answers bad input with a clear status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reads_survive_a_dead_replica_and_get_local_refuses_bad_input() {
    let mut cluster = TestCluster::start(4, PAPER_NRW).await;
    let client = client(&cluster.nodes[0], Routing::Client, Duration::from_secs(60)).await;
    wait_for_addresses(&client, &["n1", "n2", "n3", "n4"]).await;

    // Bad input: an empty key, an oversized key, a node that is not a replica.
    let mut kv = cluster.nodes[0].kv().await;
    for (key, expected) in [
        (Bytes::new(), "key is empty"),
        (Bytes::from(vec![b'k'; 2048]), "the limit is 1024"),
    ] {
        let status = kv
            .get_local(proto::GetLocalRequest { key })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    let elsewhere = (0..1000)
        .map(|i| format!("elsewhere-{i}"))
        .find(|key| {
            client
                .preference_list(key.as_bytes())
                .iter()
                .all(|m| m.id != "n1")
        })
        .expect("some key is not on n1");
    let status = kv
        .get_local(proto::GetLocalRequest {
            key: elsewhere.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("not one of the key's 3 read replicas"),
        "{status:?}"
    );

    // A key with n1, the client's seed, as its third replica: the other two will die.
    let key = (0..1000)
        .map(|i| format!("survivor-{i}"))
        .find(|key| client.preference_list(key.as_bytes())[2].id == "n1")
        .expect("some key has n1 third");
    let replicas: Vec<String> = client
        .preference_list(key.as_bytes())
        .into_iter()
        .map(|m| m.id)
        .collect();
    let written = client
        .put(key.as_bytes(), &Context::empty(), b"kept")
        .await
        .unwrap();
    let index: Vec<usize> = replicas
        .iter()
        .map(|id| cluster.nodes.iter().position(|n| &n.id == id).unwrap())
        .collect();

    // One replica dead: the client still reads R=2 replicas itself.
    cluster.nodes[index[0]].kill().await;
    let before = client.stats();
    for _ in 0..4 {
        let read = client
            .get(key.as_bytes())
            .await
            .expect("read with one replica dead");
        assert_eq!(read.values, [b"kept".as_slice()]);
        assert_eq!(read.context, written);
    }
    let after = client.stats();
    assert_eq!(after.client_reads, before.client_reads + 4, "{after:?}");
    assert_eq!(after.fallback, before.fallback, "{after:?}");

    // Two dead: only one replica answers, so a node coordinates the read; its sloppy
    // quorum counts the stand-in's (empty) answer. Eventually: the node has to notice
    // the deaths first (until then it waits for replicas that never answer).
    cluster.nodes[index[1]].kill().await;
    let before = client.stats();
    eventually("a node-coordinated read with two replicas dead", || async {
        client
            .get(key.as_bytes())
            .await
            .is_ok_and(|read| read.values == [b"kept".as_slice()])
    })
    .await;
    assert_eq!(
        client.stats().client_reads,
        before.client_reads,
        "{:?}",
        client.stats()
    );
}

/// The items of a cart kept as comma-separated items, over every version.
fn cart_items(versions: &[Bytes]) -> std::collections::BTreeSet<String> {
    versions
        .iter()
        .flat_map(|v| {
            String::from_utf8(v.to_vec())
                .expect("utf-8 cart")
                .split(',')
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Issue #15, application reconciliation (Dynamo §4.4's shopping cart): `update` merges
/// the siblings two blind writes made, and four clients adding items to one cart at once
/// (through different nodes, so their writes race into siblings) lose none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_merges_siblings_and_concurrent_updates_lose_no_item() {
    let cluster = TestCluster::start(3, &[]).await;
    let first = client(&cluster.nodes[0], Routing::Server, Duration::from_secs(60)).await;
    for item in ["milk", "eggs"] {
        first
            .put(b"cart", &Context::empty(), item.as_bytes())
            .await
            .expect("a blind put");
    }
    assert!(first.get(b"cart").await.expect("get").has_siblings());
    first
        .update(b"cart", 3, |versions| {
            let mut items = cart_items(versions);
            items.insert("bread".to_owned());
            items.into_iter().collect::<Vec<_>>().join(",").into_bytes()
        })
        .await
        .expect("update");
    let read = first.get(b"cart").await.expect("get");
    assert_eq!(read.values, [Bytes::from_static(b"bread,eggs,milk")]);

    let mut tasks = Vec::new();
    for writer in 0..4 {
        let client = client(
            &cluster.nodes[writer % 3],
            Routing::Server,
            Duration::from_secs(60),
        )
        .await;
        tasks.push(tokio::spawn(async move {
            for round in 0..10 {
                let item = format!("w{writer}-{round}");
                client
                    .update(b"cart", 50, |versions| {
                        let mut items = cart_items(versions);
                        items.insert(item.clone());
                        items.into_iter().collect::<Vec<_>>().join(",").into_bytes()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("update adding {item}: {e}"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("an updating task panicked");
    }
    // Every update ended with a read that saw no siblings, the last of them after every
    // write: one version holds every item.
    let read = first.get(b"cart").await.expect("get");
    assert_eq!(read.values.len(), 1, "{:?}", read.values);
    let items = cart_items(&read.values);
    for writer in 0..4 {
        for round in 0..10 {
            assert!(
                items.contains(&format!("w{writer}-{round}")),
                "w{writer}-{round} lost: {items:?}"
            );
        }
    }
    assert!(
        items.contains("milk") && items.contains("bread"),
        "{items:?}"
    );
}

/// A write that lands between `update`'s read and its write makes a sibling; the check
/// read finds it and the next round merges it in. A key raced on every round is
/// reported as contended after the rounds allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_merges_a_write_that_raced_it_and_reports_a_key_it_cannot_settle() {
    let cluster = TestCluster::start(3, &[]).await;
    let mine = client(&cluster.nodes[0], Routing::Server, Duration::from_secs(60)).await;
    let other = client(&cluster.nodes[1], Routing::Server, Duration::from_secs(60)).await;
    // A blind write by another client, made from inside the merge: after `update` read.
    let intrude = |value: String| {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(other.put(b"race", &Context::empty(), value.as_bytes()))
                .expect("the racing put")
        });
    };
    let mut rounds = 0;
    mine.update(b"race", 3, |versions| {
        rounds += 1;
        if rounds == 1 {
            intrude("theirs".to_owned());
        }
        let mut items = cart_items(versions);
        items.insert("mine".to_owned());
        items.into_iter().collect::<Vec<_>>().join(",").into_bytes()
    })
    .await
    .expect("update");
    assert_eq!(rounds, 2, "the raced round is merged again");
    let read = mine.get(b"race").await.expect("get");
    assert_eq!(read.values, [Bytes::from_static(b"mine,theirs")]);

    let mut rounds = 0;
    let contended = mine
        .update(b"race", 2, |versions| {
            rounds += 1;
            intrude(format!("theirs-{rounds}"));
            let mut items = cart_items(versions);
            items.insert("mine".to_owned());
            items.into_iter().collect::<Vec<_>>().join(",").into_bytes()
        })
        .await
        .expect_err("raced on every round");
    assert!(
        matches!(
            contended,
            dynamo_client::ClientError::Contended { attempts: 2 }
        ),
        "{contended}"
    );
    assert_eq!(contended.code(), tonic::Code::Aborted);
}
