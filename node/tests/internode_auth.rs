//! Internode authentication against real node processes: the `Replica` API answers
//! only callers that prove they are nodes of the cluster (the cluster secret, and under
//! mutual TLS a node certificate), and a forged member table changes nothing.

mod support;

use dynamo_e2e::process::TEST_INTERNODE_TOKEN;
use dynamo_node::NodeId;
use dynamo_node::membership::{MemberState, MemberTable};
use dynamo_node::proto::{self, replica_client::ReplicaClient};
use dynamo_node::transport::auth::TOKEN_HEADER;
use support::{TestCa, TestCluster, TestNode};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Every `Replica` method, called once with an empty request carrying `token` (none
/// when `None`), answered by status code and message.
async fn call_every_method(
    channel: Channel,
    token: Option<&str>,
) -> Vec<(&'static str, Result<(), Status>)> {
    let mut client = ReplicaClient::new(channel);
    fn request<T: Default>((): (), token: Option<&str>) -> Request<T> {
        let mut request = Request::new(T::default());
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert(TOKEN_HEADER, token.parse().expect("ascii token"));
        }
        request
    }
    vec![
        ("Read", client.read(request((), token)).await.map(drop)),
        (
            "ReadBatch",
            client.read_batch(request((), token)).await.map(drop),
        ),
        ("Write", client.write(request((), token)).await.map(drop)),
        (
            "WriteBatch",
            client.write_batch(request((), token)).await.map(drop),
        ),
        (
            "CoordinatePut",
            client.coordinate_put(request((), token)).await.map(drop),
        ),
        ("Gossip", client.gossip(request((), token)).await.map(drop)),
        (
            "ScanRange",
            client.scan_range(request((), token)).await.map(drop),
        ),
        (
            "MergeBatch",
            client.merge_batch(request((), token)).await.map(drop),
        ),
        (
            "MerkleHashes",
            client.merkle_hashes(request((), token)).await.map(drop),
        ),
        (
            "PurgeTombstone",
            client.purge_tombstone(request((), token)).await.map(drop),
        ),
    ]
}

fn assert_all_unauthenticated(answers: &[(&str, Result<(), Status>)], expected_message: &str) {
    assert_eq!(answers.len(), 10, "every Replica method is called");
    for (method, answer) in answers {
        let status = answer
            .as_ref()
            .expect_err(&format!("{method} was served to an unauthenticated caller"));
        assert_eq!(status.code(), Code::Unauthenticated, "{method}: {status:?}");
        assert!(
            status.message().contains(expected_message),
            "{method}: {:?} does not say {expected_message:?}",
            status.message()
        );
    }
}

fn assert_none_unauthenticated(answers: &[(&str, Result<(), Status>)]) {
    for (method, answer) in answers {
        if let Err(status) = answer {
            assert_ne!(
                status.code(),
                Code::Unauthenticated,
                "{method} refused a caller with the secret: {status:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_method_refuses_callers_without_the_cluster_secret() {
    let cluster = TestCluster::start(2, &["--http-listen", "127.0.0.1:0"]).await;
    let node = &cluster.nodes[0];
    let channel = || async { node.channel(node.internode).await.expect("connecting") };

    let anonymous = call_every_method(channel().await, None).await;
    assert_all_unauthenticated(&anonymous, "need the cluster secret");
    let guessed = call_every_method(channel().await, Some("not-the-cluster-secret")).await;
    assert_all_unauthenticated(&guessed, "does not match the cluster secret");
    // The same calls with the secret reach the methods (which refuse the empty
    // requests on their own merits, or serve them).
    let member = call_every_method(channel().await, Some(TEST_INTERNODE_TOKEN)).await;
    assert_none_unauthenticated(&member);

    // Refusals are visible, by method.
    for method in ["read", "gossip", "purge_tombstone"] {
        let refused = node
            .metric(&format!(
                "dynamo_replica_calls_total{{method=\"{method}\",outcome=\"unauthenticated\"}}"
            ))
            .await;
        assert_eq!(refused, 2.0, "{method} refusals counted");
    }
    // And the nodes, which authenticate to each other, keep serving clients.
    let mut kv = node.kv().await;
    kv.put(proto::PutRequest {
        key: b"k".to_vec().into(),
        context: Vec::new().into(),
        value: b"v".to_vec().into(),
        w: None,
    })
    .await
    .expect("a put replicated between authenticated nodes");
}

/// The table `node` gossips, read with the cluster secret as a peer would.
async fn gossiped_table(node: &TestNode) -> MemberTable {
    let mut client = ReplicaClient::new(node.channel(node.internode).await.expect("connecting"));
    let mut request = Request::new(proto::GossipRequest {
        table: MemberTable::new().encode().into(),
    });
    request
        .metadata_mut()
        .insert(TOKEN_HEADER, TEST_INTERNODE_TOKEN.parse().unwrap());
    let reply = client
        .gossip(request)
        .await
        .expect("gossip with the secret");
    MemberTable::decode(&reply.into_inner().table).expect("a member table")
}

async fn state_seen_by(node: &TestNode, id: &str) -> i32 {
    let ring = node
        .admin()
        .await
        .ring(proto::RingRequest {})
        .await
        .expect("Admin.Ring")
        .into_inner();
    ring.members
        .iter()
        .find(|m| m.node_id == id)
        .unwrap_or_else(|| panic!("{id} missing from the ring"))
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_member_table_changes_nothing() {
    let cluster = TestCluster::start(2, &[]).await;
    let (first, second) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Forge what an attacker would send: the second node Removed (so it leaves the
    // ring without handing its data over) and a rogue member joined.
    let mut forged = gossiped_table(first).await;
    let victim = NodeId::new(&second.id).unwrap();
    forged.leave(&victim).expect("Member -> Leaving");
    forged.mark_removed(&victim).expect("Leaving -> Removed");
    let mut client = ReplicaClient::new(first.channel(first.internode).await.unwrap());
    let refused = client
        .gossip(proto::GossipRequest {
            table: forged.encode().into(),
        })
        .await
        .expect_err("a forged table without the secret is refused");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        state_seen_by(first, &second.id).await,
        proto::MemberState::Member as i32,
        "the forged table was merged"
    );
    let table = gossiped_table(first).await;
    assert_eq!(
        table.get(&victim).map(|m| m.state()),
        Some(MemberState::Member)
    );

    // The check is what stopped it: the same table with the secret is merged (nodes
    // trust each other's gossip), so this test would fail without authentication.
    let mut request = Request::new(proto::GossipRequest {
        table: forged.encode().into(),
    });
    request
        .metadata_mut()
        .insert(TOKEN_HEADER, TEST_INTERNODE_TOKEN.parse().unwrap());
    client
        .gossip(request)
        .await
        .expect("gossip with the secret");
    assert_eq!(
        state_seen_by(first, &second.id).await,
        proto::MemberState::Removed as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_an_admin_certificate_cannot_call_replica() {
    let ca = TestCa::generate();
    // Every node shares one certificate; its first DNS name is the node name peers'
    // certificates must carry.
    let node_cert = ca.issue("node", &["dynamo-node.test", "127.0.0.1"], "dynamo node");
    let admin_cert = ca.issue("admin", &["dynamoctl.test", "127.0.0.1"], "dynamo admin");
    let mut args: Vec<&str> = node_cert.args().to_vec();
    args.extend(["--tls-ca", ca.ca_arg()]);
    // The harness (admin calls: join, ring) presents the admin certificate, which the
    // Admin API accepts.
    let cluster = TestCluster::start_with(2, &args, Some(ca.client_tls(&admin_cert))).await;
    let node = &cluster.nodes[0];
    let channel = |identity| {
        let tls = ca.client_tls(identity);
        async move {
            Channel::from_shared(format!("https://{}", node.internode))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .expect("a TLS connection")
        }
    };
    // With the secret, but an admin certificate: refused.
    let admin = call_every_method(channel(&admin_cert).await, Some(TEST_INTERNODE_TOKEN)).await;
    assert_all_unauthenticated(&admin, "not a node certificate");
    // The node certificate with the secret is a node.
    let peer = call_every_method(channel(&node_cert).await, Some(TEST_INTERNODE_TOKEN)).await;
    assert_none_unauthenticated(&peer);
    // The nodes, presenting the node certificate to each other, replicate.
    let mut kv = proto::kv_client::KvClient::new(node.channel(node.client).await.unwrap());
    kv.put(proto::PutRequest {
        key: b"k".to_vec().into(),
        context: Vec::new().into(),
        value: b"v".to_vec().into(),
        w: Some(2),
    })
    .await
    .expect("a put on two authenticated replicas");
}
