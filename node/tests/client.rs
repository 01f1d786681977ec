//! The partition-aware client against real `dynamo-node` processes on loopback: it
//! routes each request to a replica of its key (so no node forwards a put), follows
//! membership changes, routes around a killed node, and falls back to server-driven
//! routing when it cannot route.

mod support;

use std::time::Duration;

use dynamo_node::client::{Client, ClientConfig, Context, Routing};
use dynamo_node::proto;
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
