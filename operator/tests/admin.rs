//! The operator's `Admin` client against real nodes on loopback: every call the
//! controller makes, the admin token, and the errors it must tell apart.

mod support;

use dynamo_operator::admin::{AdminError, AdminTarget, GrpcAdmin, NodeAdmin};
use dynamo_operator::planner::MemberState;
use std::time::Duration;
use support::tls::SelfSigned;
use support::{start_node, wait_for_states};

#[tokio::test]
async fn membership_changes_and_reads_with_a_token() {
    let n0 = start_node("db-0", &[], 1, &["--admin-token", "s3cret"]).await;
    let n1 = start_node(
        "db-1",
        &[n0.internode_addr],
        1,
        &["--admin-token", "s3cret"],
    )
    .await;
    let admin = GrpcAdmin::new(support::WAIT);
    let with_token = |node: &dynamo_node::node::RunningNode| AdminTarget {
        token: Some("s3cret".to_owned()),
        ..support::target(node)
    };
    let t0 = with_token(&n0);

    // Without the token, or with a wrong one, the node refuses (Dynamo's admin tool is
    // the only way to change membership, so it must be guarded).
    for token in [None, Some("wrong".to_owned())] {
        let target = AdminTarget {
            token,
            ..t0.clone()
        };
        let err = admin.ring(&target).await.unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
    }

    let a0 = n0.internode_addr.to_string();
    let a1 = n1.internode_addr.to_string();
    let joined = admin.join(&t0, "db-0", &a0, 2).await.unwrap();
    assert_eq!((joined.node_id.as_str(), joined.weight), ("db-0", 2));
    assert_eq!(joined.state, MemberState::Joining);
    wait_for_states(&admin, &t0, &[("db-0", MemberState::Member)]).await;
    admin.join(&t0, "db-1", &a1, 1).await.unwrap();
    wait_for_states(
        &admin,
        &with_token(&n1),
        &[("db-0", MemberState::Member), ("db-1", MemberState::Member)],
    )
    .await;

    // A second join of a member is refused with FailedPrecondition, which the
    // controller reads as "the ring already has it".
    let again = admin.join(&t0, "db-1", &a1, 1).await.unwrap_err();
    assert_eq!(
        again.code(),
        Some(tonic::Code::FailedPrecondition),
        "{again}"
    );

    let heavier = admin.set_weight(&t0, "db-1", 3).await.unwrap();
    assert_eq!(heavier.weight, 3);
    let leaving = admin.leave(&t0, "db-1").await.unwrap();
    assert_eq!(leaving.state, MemberState::Leaving);
    let ring = admin.ring(&t0).await.unwrap();
    assert_eq!(ring.replication_factor, 1);
    assert!(!ring.table_digest.is_empty());
    let row = ring.members.iter().find(|m| m.node_id == "db-1").unwrap();
    assert_eq!(
        (row.state, row.weight, row.address.as_str()),
        (MemberState::Leaving, 3, a1.as_str())
    );

    let unknown = admin.leave(&t0, "db-9").await.unwrap_err();
    assert_eq!(unknown.code(), Some(tonic::Code::NotFound), "{unknown}");

    let status = admin.status(&t0).await.unwrap();
    assert_eq!(status.node_id, "db-0");
    assert_eq!(status.state, Some(MemberState::Member));
    assert!(status.hint_backlog.is_empty());

    n1.shutdown().await.unwrap();
    n0.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_absent_node_is_unreachable_not_an_rpc_error() {
    // Bind and drop a listener so the port is very likely free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = GrpcAdmin::new(Duration::from_secs(2));
    let target = AdminTarget {
        url: format!("http://127.0.0.1:{port}"),
        token: None,
        tls: None,
    };
    let err = admin.ring(&target).await.unwrap_err();
    assert!(matches!(err, AdminError::Unreachable { .. }), "{err}");
    assert_eq!(err.code(), None);
    let bad = AdminTarget {
        url: "not a url".to_owned(),
        ..target
    };
    assert!(matches!(
        admin.status(&bad).await.unwrap_err(),
        AdminError::Unreachable { .. }
    ));
}

#[tokio::test]
async fn admin_calls_cross_mutual_tls() {
    // The nodes serve the internode port (Admin included) with TLS and require client
    // certificates; the operator presents the cluster's own certificate from its Secret.
    let certificate = SelfSigned::generate();
    let node = start_node("db-0", &[], 1, &certificate.node_args()).await;

    let admin = GrpcAdmin::new(support::WAIT);
    let url = format!("https://{}", node.internode_addr);
    let tls = certificate.admin_tls();
    let target = AdminTarget {
        url: url.clone(),
        token: None,
        tls: Some(tls.clone()),
    };
    admin
        .join(&target, "db-0", &node.internode_addr.to_string(), 1)
        .await
        .unwrap();
    wait_for_states(&admin, &target, &[("db-0", MemberState::Member)]).await;

    // Without a client certificate the handshake fails: unreachable, not an answer.
    let anonymous = AdminTarget {
        tls: Some(dynamo_operator::admin::AdminTls {
            identity: None,
            ..tls
        }),
        ..target
    };
    let err = admin.ring(&anonymous).await.unwrap_err();
    assert!(matches!(err, AdminError::Unreachable { .. }), "{err}");
    node.shutdown().await.unwrap();
}
