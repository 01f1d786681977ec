//! The controller against a mock Kubernetes API server: each test asserts the exact
//! requests one reconcile pass makes, in order (method, path, field manager, the body
//! parts that matter), and the status it writes. `Admin` calls go to real
//! `dynamo-node`s started in this process on loopback.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use dynamo_operator::admin::{AdminTarget, NodeAdmin};
use dynamo_operator::controller::{self, reconcile};
use dynamo_operator::planner::MemberState;
use kube::runtime::controller::Action;
use serde_json::json;
use support::passes::{
    APPS, CLUSTER, CLUSTER_STATUS, CLUSTERS, EVENTS, NETPOL, NS, POLICY, SELECTOR, answer_status,
    condition, deleting, event_posted, generated_token_exists, internode_secret_exists,
    objects_and_token_read, objects_read, pass, pass_with, poll_again, resync_later, secret,
    status_of, status_written, two_ready_pods_read,
};
use support::ring::{Ring, TOKEN};
use support::tls::SelfSigned;
use support::{ApiServer, Loopback, cluster, context, list, mock_client, pod};

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

#[tokio::test]
async fn first_pass_adds_the_finalizer_and_nothing_else() {
    let c = cluster(json!({"size": 3, "image": "dynamo-node:dev"}), false);
    let action = pass(c, Loopback::default(), |mut server, _| async move {
        let patch = server.expect("PATCH", CLUSTER).await;
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
    let action = pass(c, Loopback::default(), |mut server, db| async move {
        // The StatefulSet is read first: whether its pod template is kept decides
        // whether the node config is.
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .not_found();
        children_applied_fresh(&mut server).await;
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
        // So is the internode secret the pods mount (and refuse to start without).
        server
            .expect("GET", &format!("{NS}/secrets/db-internode"))
            .await
            .not_found();
        let create = server.expect("POST", &format!("{NS}/secrets")).await;
        assert_eq!(create.body["metadata"]["name"], "db-internode");
        assert_eq!(
            create.body["metadata"]["ownerReferences"][0]["name"],
            json!("db")
        );
        let internode = create.body["data"]["token"].as_str().unwrap().to_owned();
        assert_eq!(internode.len(), 88, "{internode}");
        assert_ne!(internode, token, "the two secrets are drawn apart");
        create.echo();
        // No pod runs, so no node is asked; the planner grows the StatefulSet to size.
        let sts = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        sts.assert_server_side_apply();
        assert_eq!(sts.body["spec"]["replicas"], 3);
        assert_eq!(sts.body["spec"]["podManagementPolicy"], "Parallel");
        // Each node's zone comes from its pod's copy of its Kubernetes node's zone label
        // (replicas across zones, Dynamo §4.2).
        let env = sts.body["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env");
        let zone = env
            .iter()
            .find(|var| var["name"] == "DYNAMO_ZONE")
            .expect("DYNAMO_ZONE");
        assert_eq!(
            zone["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.labels['topology.kubernetes.io/zone']"
        );
        sts.echo();
        let event = event_posted(&mut server).await;
        assert_eq!(event["reason"], "GrowStatefulSet");
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["note"], "grow statefulset to 3");
        assert_eq!(event["regarding"]["kind"], "DynamoCluster");
        assert_eq!(event["regarding"]["name"], "db");
        assert_eq!(event["reportingController"], "dynamo-operator");
        let status = server.expect("PATCH", CLUSTER_STATUS).await;
        status.assert_server_side_apply();
        let s = &answer_status(status, &db);
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
        server
    })
    .await
    .unwrap();
    assert_eq!(action, poll_again());
}

#[tokio::test]
async fn scale_up_joins_the_new_pod_through_a_member() {
    // Two real nodes: db-0 is a member; db-1 runs (a pod the StatefulSet just created)
    // and is not in the ring yet.
    let mut ring = Ring::start(&[("db-0", 1)], 1).await;
    ring.add("db-1", &[]).await;

    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1}});
    let c = cluster(spec, true);
    let n1_address = ring.node(1).internode_addr.to_string();
    let action = pass(c, ring.endpoints(), |mut server, db| async move {
        objects_and_token_read(&mut server, &db, 2, vec![pod(0, true), pod(1, false)]).await;
        // Unchanged StatefulSet: not applied. The join goes to db-0 over gRPC.
        let event = event_posted(&mut server).await;
        assert_eq!(event["reason"], "Join");
        assert_eq!(event["note"], "join 1 with weight 1");
        let s = &status_written(&mut server, &db).await;
        assert_eq!(s["currentStep"], "join 1 with weight 1");
        assert_eq!(s["phase"], "Progressing");
        assert_eq!((&s["members"], &s["readyNodes"]), (&json!(1), &json!(1)));
        assert_eq!(condition(s, "Progressing")["reason"], "Join");
        assert_eq!(condition(s, "Available")["status"], "True");
        server
    })
    .await
    .unwrap();
    assert_eq!(action, poll_again());

    // The ring really changed: db-0 lists db-1 at its advertised address, and db-1 learns
    // it is a member by gossip.
    let table = ring.admin.ring(&ring.target(0)).await.unwrap();
    let joined = table.members.iter().find(|m| m.node_id == "db-1").unwrap();
    assert_eq!(joined.address, n1_address);
    assert_eq!(joined.weight, 1);
    ring.wait_for_states(1, &[("db-1", MemberState::Member)])
        .await;
    ring.shutdown().await;
}

#[tokio::test]
async fn decommission_below_n_is_refused_without_shrinking() {
    // Three real members with N = 3; the spec asks for 2 (an object from before the
    // schema's `size >= n` rule). Taking db-2 out would leave keys with 2 replicas.
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1), ("db-2", 1)], 3).await;
    let all_members = [
        ("db-0", MemberState::Member),
        ("db-1", MemberState::Member),
        ("db-2", MemberState::Member),
    ];
    let endpoints = ring.endpoints();
    let three_ready = || vec![pod(0, true), pod(1, true), pod(2, true)];

    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "replication": {"n": 3, "r": 2, "w": 2}});
    let c = cluster(spec, true);
    let (action, refused_status) =
        pass_with(c.clone(), endpoints.clone(), |mut server, db| async move {
            objects_and_token_read(&mut server, &db, 3, three_ready()).await;
            // No StatefulSet apply (replicas stay 3) and no Leave: a warning and the status.
            let event = event_posted(&mut server).await;
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["reason"], "DecommissionRefused");
            let s = status_written(&mut server, &db).await;
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
            (server, s)
        })
        .await;
    assert_eq!(action.unwrap(), resync_later());
    ring.wait_for_states(0, &all_members).await;

    // The next pass sees the same ring and its own status: it reads, and writes nothing
    // (no repeated event, no status write, so no hot loop).
    let mut c2 = c;
    c2.status = status_of(&refused_status);
    pass(c2, endpoints, |mut server, db| async move {
        objects_and_token_read(&mut server, &db, 3, three_ready()).await;
        server
    })
    .await
    .unwrap();
    let table = ring.admin.ring(&ring.target(0)).await.unwrap();
    assert!(table.members.iter().all(|m| m.state == MemberState::Member));
    ring.shutdown().await;
}

#[tokio::test]
async fn deletion_deletes_volumes_when_asked_and_releases_the_finalizer() {
    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "storage": {"retainOnDelete": false}});
    let c = deleting(cluster(spec, true));
    let returned = serde_json::to_value(&c).unwrap();
    let action = pass(c, Loopback::default(), |mut server, _| async move {
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
        let event = event_posted(&mut server).await;
        assert_eq!(event["reason"], "Deleted");
        assert_eq!(event["note"], "cluster deleted; 2 volumes deleted");
        let patch = server.expect("PATCH", CLUSTER).await;
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
    let c = deleting(cluster(
        json!({"size": 2, "image": "dynamo-node:dev"}),
        true,
    ));
    let returned = serde_json::to_value(&c).unwrap();
    pass(c, Loopback::default(), |mut server, _| async move {
        let event = event_posted(&mut server).await;
        assert_eq!(
            event["note"],
            "cluster deleted; volumes retained (storage.retainOnDelete)"
        );
        server.expect("PATCH", CLUSTER).await.respond(200, returned);
        server
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_unreachable_ring_fails_the_pass_without_acting() {
    // A pod runs but nothing answers Admin.Ring: the controller must not guess. The
    // failure shows on the resource (it used to be in the operator's log only): a
    // Warning event and Degraded with the reason, once per distinct failure.
    let c = cluster(
        json!({"size": 1, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );
    let (error, failed_status) = pass_with(
        c.clone(),
        Loopback::default(),
        |mut server, db| async move {
            objects_and_token_read(&mut server, &db, 1, vec![pod(0, false)]).await;
            let event = event_posted(&mut server).await;
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["reason"], "RingUnreadable");
            assert!(event["note"].as_str().unwrap().contains("db-0"), "{event}");
            let s = status_written(&mut server, &db).await;
            let degraded = condition(&s, "Degraded");
            assert_eq!(
                (&degraded["status"], &degraded["reason"]),
                (&json!("True"), &json!("RingUnreadable"))
            );
            assert_eq!(s["phase"], "Degraded");
            (server, s)
        },
    )
    .await;
    let error = error.unwrap_err();
    assert_eq!(error.label(), "ring_unreadable", "{error}");
    assert!(error.to_string().contains("db-0"), "{error}");

    // The retry fails the same way: no second event, no status write.
    let mut again = c;
    again.status = status_of(&failed_status);
    let error = pass(again, Loopback::default(), |mut server, db| async move {
        objects_and_token_read(&mut server, &db, 1, vec![pod(0, false)]).await;
        server
    })
    .await
    .unwrap_err();
    assert_eq!(error.label(), "ring_unreadable", "{error}");
}

#[tokio::test]
async fn a_node_setting_the_node_would_refuse_is_an_invalid_spec_not_a_crash_loop() {
    // From before the CRD's rule, or a value only the node's own checks refuse: the pass
    // applies nothing (no pod is rolled onto a config its node cannot start with) and
    // the status says why, in the node's words.
    let c = cluster(
        json!({"size": 3, "image": "dynamo-node:dev", "nodeConfig": {"max-connections": "15"}}),
        true,
    );
    let action = pass(c, Loopback::default(), |mut server, db| async move {
        let s = status_written(&mut server, &db).await;
        let degraded = condition(&s, "Degraded");
        assert_eq!(
            (&degraded["status"], &degraded["reason"]),
            (&json!("True"), &json!("InvalidSpec"))
        );
        assert_eq!(
            degraded["message"],
            "nodeConfig: max-connections is 15; allowed are 16..=1000000"
        );
        assert_eq!(s["phase"], "Degraded");
        server
    })
    .await
    .unwrap();
    assert_eq!(action, resync_later());
}

#[tokio::test]
async fn shrink_drops_only_nodes_outside_the_ring_and_their_volumes_if_asked() {
    // db-0 is the only member; db-1's pod runs but never joined, and the spec went back
    // to one node. The StatefulSet shrinks over db-1, and with retainOnScaleDown false
    // its volume goes too. A member's volume is never touched.
    let ring = Ring::start(&[("db-0", 1)], 1).await;
    let spec = json!({"size": 1, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1},
                      "storage": {"retainOnScaleDown": false}});
    let c = cluster(spec, true);
    pass(c, ring.endpoints(), |mut server, db| async move {
        objects_and_token_read(&mut server, &db, 2, vec![pod(0, true), pod(1, false)]).await;
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
        let event = event_posted(&mut server).await;
        assert_eq!(event["reason"], "ShrinkStatefulSet");
        let s = status_written(&mut server, &db).await;
        assert_eq!(s["currentStep"], "shrink statefulset to 1");
        server
    })
    .await
    .unwrap();
    let table = ring.admin.ring(&ring.target(0)).await.unwrap();
    assert_eq!(table.members.len(), 1);
    ring.shutdown().await;
}

#[tokio::test]
async fn the_admin_token_comes_from_the_named_secret() {
    // The node refuses Admin calls without its token; the controller reads it from the
    // Secret the spec names, each pass, and the converged cluster reports Running.
    let ring = Ring::start_with_token("s3cret", &[("db-0", 1)], 1).await;
    let endpoints = ring.endpoints();
    let spec = json!({"size": 1, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1},
                      "adminTokenSecret": "db-admin"});
    let c = cluster(spec, true);
    let action = pass(c.clone(), endpoints.clone(), |mut server, db| async move {
        objects_read(&mut server, &db, 1, vec![pod(0, true)]).await;
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
        internode_secret_exists(&mut server).await;
        let s = &status_written(&mut server, &db).await;
        assert_eq!(s["phase"], "Running");
        assert!(s.get("currentStep").is_none(), "{s}");
        assert_eq!(condition(s, "Progressing")["reason"], "Converged");
        assert_eq!(condition(s, "Available")["status"], "True");
        server
    })
    .await
    .unwrap();
    assert_eq!(action, resync_later());

    // A Secret without the key fails the pass, naming the Secret.
    let error = pass(c, endpoints, |mut server, db| async move {
        objects_read(&mut server, &db, 1, vec![pod(0, true)]).await;
        server
            .expect("GET", &format!("{NS}/secrets/db-admin"))
            .await
            .respond(
                200,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "db-admin", "namespace": "prod"}, "data": {}}),
            );
        // The failure shows on the resource, not only in the operator's log.
        let event = event_posted(&mut server).await;
        assert_eq!(
            (&event["type"], &event["reason"]),
            (&json!("Warning"), &json!("SecretUnusable"))
        );
        let s = status_written(&mut server, &db).await;
        assert_eq!(condition(&s, "Degraded")["reason"], "SecretUnusable");
        assert_eq!(
            condition(&s, "Degraded")["message"],
            "secret db-admin: no key `token`"
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
    ring.shutdown().await;
}

/// db-0 and db-1 know each other; db-0 goes down, then db-1 joins: it must pull its
/// ranges from db-0, so its transfer stays pending.
async fn ring_with_a_pending_transfer() -> Ring {
    let mut ring = Ring::start(&[("db-0", 1)], 1).await;
    ring.add("db-1", &[]).await;
    ring.wait_for_states(1, &[("db-0", MemberState::Member)])
        .await;
    ring.stop(0).await;
    ring.join_via(1, "db-1", 1).await;
    let t1 = ring.target(1);
    support::eventually("db-1 to report its transfer pending", || async {
        ring.admin
            .status(&t1)
            .await
            .is_ok_and(|s| s.transfer_pending_ranges > 0)
    })
    .await;
    ring
}

#[tokio::test]
async fn a_pending_transfer_holds_the_pass_without_shrinking() {
    // db-0 and db-1 know each other; db-0 goes down, then db-1 joins: it must pull its
    // ranges from db-0, so its transfer stays pending. The spec asks for 2 nodes and
    // the StatefulSet has 3 (db-2 never joined): a shrink is due, but nothing moves
    // while a member reports ranges in flight.
    let ring = ring_with_a_pending_transfer().await;
    let t1 = ring.target(1);

    let spec = json!({"size": 2, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1}});
    let c = cluster(spec, true);
    let action = pass(c, ring.endpoints(), |mut server, db| async move {
        // db-0's pod is gone (being rescheduled), db-1 is up, db-2 runs outside the ring.
        objects_and_token_read(&mut server, &db, 3, vec![pod(1, true), pod(2, false)]).await;
        // No StatefulSet apply (no shrink), no event: only the status, saying why.
        let s = &status_written(&mut server, &db).await;
        assert_eq!(s["currentStep"], "wait: transfers pending on node 1");
        assert_eq!(s["phase"], "Progressing");
        let progressing = condition(s, "Progressing");
        assert_eq!(
            (&progressing["status"], &progressing["reason"]),
            (&json!("True"), &json!("WaitingForTransfers"))
        );
        server
    })
    .await
    .unwrap();
    assert_eq!(action, poll_again());
    // Nothing changed the ring: db-1 still pulls.
    let status = ring.admin.status(&t1).await.unwrap();
    assert!(status.transfers_pending, "{status:?}");
    ring.shutdown().await;
}

#[tokio::test]
async fn a_lost_race_for_the_generated_token_uses_the_winners() {
    // Another writer (the previous leader) created the generated Secret between this
    // pass's read and its create: the create conflicts, and the winner's token, which
    // the node requires, is read and used. Nothing is overwritten.
    let ring = Ring::start(&[("db-0", 1)], 1).await;
    let spec = json!({"size": 1, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1}});
    let c = cluster(spec, true);
    pass(c, ring.endpoints(), |mut server, db| async move {
        objects_read(&mut server, &db, 1, vec![pod(0, true)]).await;
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
        internode_secret_exists(&mut server).await;
        // The ring and the status were read with the winner's token: converged.
        let s = status_written(&mut server, &db).await;
        assert_eq!(s["phase"], "Running");
        server
    })
    .await
    .unwrap();
    ring.shutdown().await;
}

#[tokio::test]
async fn a_tls_cluster_is_reconciled_over_mutual_tls() {
    // The node serves Admin with TLS and requires client certificates. The controller
    // reads the CA and its client identity from the Secret `spec.tls` names and the
    // token from the generated Secret, and a whole pass (ring, status, join) runs over
    // mutual TLS.
    let tls = SelfSigned::generate();
    let mut ring = Ring::empty(TOKEN, 1);
    ring.add("db-0", &tls.node_args()).await;
    let spec = json!({"size": 1, "image": "dynamo-node:dev",
                      "replication": {"n": 1, "r": 1, "w": 1},
                      "tls": {"secretName": "db-tls"}});
    let c = cluster(spec, true);
    let tls_secret = secret(
        "db-tls",
        &[
            ("ca.crt", tls.cert_pem.as_bytes()),
            ("tls.crt", tls.cert_pem.as_bytes()),
            ("tls.key", tls.key_pem.as_bytes()),
        ],
    );
    // The first node joins itself: bootstrap, through its own Admin over mutual TLS.
    pass(c, ring.endpoints(), |mut server, db| async move {
        objects_and_token_read(&mut server, &db, 1, vec![pod(0, false)]).await;
        server
            .expect("GET", &format!("{NS}/secrets/db-tls"))
            .await
            .respond(200, tls_secret);
        let event = event_posted(&mut server).await;
        assert_eq!(event["note"], "join 0 with weight 1");
        status_written(&mut server, &db).await;
        server
    })
    .await
    .unwrap();

    let target = AdminTarget {
        url: format!("https://{}", ring.node(0).internode_addr),
        token: Some(TOKEN.to_owned()),
        tls: Some(tls.admin_tls()),
    };
    support::wait_for_states(&ring.admin, &target, &[("db-0", MemberState::Member)]).await;
    ring.shutdown().await;
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

/// The member table row of `node` as node `via` reports it: (weight, settled weight).
async fn weights_at(ring: &Ring, via: u32, node: &str) -> (u32, u32) {
    let target = ring.target(via);
    let table = ring.admin.ring(&target).await.expect("Admin.Ring");
    let row = table
        .members
        .iter()
        .find(|m| m.node_id == node)
        .unwrap_or_else(|| panic!("{node} not in the member table at {}", target.url));
    (row.weight, row.settled_weight)
}

#[tokio::test]
async fn a_weight_change_is_one_set_weight_then_waits_for_its_hand_over() {
    // Dynamo §4.2: a node's weight is its share of the ring, so a weight change moves key
    // ranges (here db-1 pulls from db-0, N = 1). db-1 runs its transfer rounds only when
    // the test drives them (its own loop's next tick is an hour away), so the hand-over
    // is pending for exactly as long as the test wants.
    let pair = HandOverPair::start().await;
    let ring = &pair.ring;
    let endpoints = ring.endpoints();
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
    let (action, first_status) = pass_with(c1, endpoints.clone(), |mut server, db| async move {
        two_ready_pods_read(&mut server, &db).await;
        // No StatefulSet apply (unchanged), then the SetWeight over gRPC, then:
        let event = event_posted(&mut server).await;
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["reason"], "SetWeight");
        assert_eq!(event["action"], "SetWeight");
        assert_eq!(event["note"], "set weight of 1 to 3");
        assert_eq!(event["regarding"]["name"], "db");
        let status = server.expect("PATCH", CLUSTER_STATUS).await;
        status.assert_server_side_apply();
        let s = answer_status(status, &db);
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
        (server, s)
    })
    .await;
    assert_eq!(action.unwrap(), poll_again());
    // The member table changed by exactly that step: db-1 heads for weight 3 and is
    // still laid out for 1 (the hand-over is pending); db-0 is untouched.
    assert_eq!(weights_at(ring, 0, "db-1").await, (3, 1));
    assert_eq!(weights_at(ring, 0, "db-0").await, (1, 1));
    support::eventually("db-1 to learn its new weight by gossip", || async {
        weights_at(ring, 1, "db-1").await == (3, 1)
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
    c2.status = status_of(&first_status);
    let (action, waiting_status) =
        pass_with(c2.clone(), endpoints.clone(), |mut server, db| async move {
            two_ready_pods_read(&mut server, &db).await;
            let s = status_written(&mut server, &db).await;
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
            (server, s)
        })
        .await;
    assert_eq!(action.unwrap(), poll_again());
    assert_eq!(weights_at(ring, 0, "db-0").await, (1, 1), "no SetWeight");
    assert_eq!(weights_at(ring, 0, "db-1").await, (3, 1));

    // The same pass again, over its own status: still waiting, nothing written at all.
    let mut c2_again = c2.clone();
    c2_again.status = status_of(&waiting_status);
    pass(
        c2_again.clone(),
        endpoints.clone(),
        |mut server, db| async move {
            two_ready_pods_read(&mut server, &db).await;
            server
        },
    )
    .await
    .unwrap();

    // db-1 finishes its hand-over: real transfer rounds, pulling its new ranges from
    // db-0, until it settles its weight; the settled weight spreads by gossip.
    support::eventually("db-1 to finish its hand-over", || async {
        ring.node(1).shared().transfer_round(unlimited).await;
        weights_at(ring, 1, "db-1").await == (3, 3)
    })
    .await;
    support::eventually("db-0 to see db-1 settled", || async {
        weights_at(ring, 0, "db-1").await == (3, 3)
    })
    .await;

    // Pass 3: settled, so the waiting change goes ahead: one SetWeight of db-0.
    pass(
        c2_again.clone(),
        endpoints.clone(),
        |mut server, db| async move {
            two_ready_pods_read(&mut server, &db).await;
            let event = event_posted(&mut server).await;
            assert_eq!(event["note"], "set weight of 0 to 2");
            let s = status_written(&mut server, &db).await;
            assert_eq!(s["currentStep"], "set weight of 0 to 2");
            server
        },
    )
    .await
    .unwrap();
    assert_eq!(weights_at(ring, 0, "db-0").await.0, 2);

    // db-0 drives its own hand-over (its transfer loop runs every 250 ms). Once every
    // weight is settled, a pass reports the cluster converged and Available.
    support::eventually("both weights settled on both nodes", || async {
        for via in [0, 1] {
            if weights_at(ring, via, "db-0").await != (2, 2)
                || weights_at(ring, via, "db-1").await != (3, 3)
            {
                return false;
            }
        }
        true
    })
    .await;
    let action = pass(c2_again, endpoints.clone(), |mut server, db| async move {
        two_ready_pods_read(&mut server, &db).await;
        let s = &status_written(&mut server, &db).await;
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
        server
    })
    .await
    .unwrap();
    assert_eq!(action, resync_later());
    pair.shutdown().await;
}

#[tokio::test]
async fn a_decommission_the_remaining_volumes_cannot_hold_is_refused() {
    // Two members with N = 1 hold 20 keys between them; the spec asks for one node.
    // Before taking db-1 out the controller checks that db-0's volume can hold what both
    // store: at 32 bytes a key at least, 20 keys do not fit in 256 bytes, so the
    // decommission is refused with a condition. With a 1 MiB volume it goes ahead.
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1)], 1).await;
    let members = [("db-0", MemberState::Member), ("db-1", MemberState::Member)];
    let (t0, t1) = (ring.target(0), ring.target(1));
    let client = dynamo_client::Client::connect(dynamo_client::ClientConfig::new([ring
        .node(0)
        .client_addr
        .to_string()]))
    .await
    .unwrap();
    for i in 0..20 {
        let key = format!("key-{i}");
        client
            .put(key.as_bytes(), &dynamo_client::Context::empty(), b"value")
            .await
            .unwrap();
    }
    support::eventually("both nodes to count the 20 keys", || async {
        let (Ok(s0), Ok(s1)) = (ring.admin.status(&t0).await, ring.admin.status(&t1).await) else {
            return false;
        };
        s0.keys + s1.keys == 20
    })
    .await;
    let endpoints = ring.endpoints();
    let spec = |volume: &str| {
        json!({"size": 1, "image": "dynamo-node:dev",
               "replication": {"n": 1, "r": 1, "w": 1},
               "storage": {"size": volume}})
    };

    let c = cluster(spec("256"), true);
    let action = pass(c, endpoints.clone(), |mut server, db| async move {
        two_ready_pods_read(&mut server, &db).await;
        // No StatefulSet write and no Leave: a warning and the status.
        let event = event_posted(&mut server).await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "InsufficientCapacity");
        let s = &status_written(&mut server, &db).await;
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
        server
    })
    .await
    .unwrap();
    assert_eq!(action, resync_later());
    ring.wait_for_states(0, &members).await;

    // The same cluster with room for the data: db-1 is decommissioned through db-0.
    let c = cluster(spec("1Mi"), true);
    pass(c, endpoints, |mut server, db| async move {
        two_ready_pods_read(&mut server, &db).await;
        let event = event_posted(&mut server).await;
        assert_eq!(
            (&event["type"], &event["note"]),
            (&json!("Normal"), &json!("decommission 1"))
        );
        let s = status_written(&mut server, &db).await;
        assert_eq!(s["currentStep"], "decommission 1");
        server
    })
    .await
    .unwrap();
    let table = ring.admin.ring(&t0).await.unwrap();
    let leaving = table.members.iter().find(|m| m.node_id == "db-1").unwrap();
    assert_ne!(
        leaving.state,
        MemberState::Member,
        "db-1 was asked to leave"
    );
    ring.shutdown().await;
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
    // Delete: orphaning its pods, to re-create it with larger volumes.
    grant(
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    grant("", "services", &owned);
    grant("", "configmaps", &owned);
    grant("policy", "poddisruptionbudgets", &owned);
    grant("networking.k8s.io", "networkpolicies", &owned);
    grant("", "secrets", &["get", "create"]);
    // Delete: a replaced dead member's pod, after the ring removed it.
    grant("", "pods", &["list", "delete"]);
    grant(
        "",
        "persistentvolumeclaims",
        &["get", "list", "patch", "delete"],
    );
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
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1)], 1).await;
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
    c.status = status_of(&json!({
        "observedGeneration": 1, "readyNodes": 1, "members": 1, "phase": "Running",
        "selector": SELECTOR,
    }));
    pass(c, ring.endpoints(), |mut server, db| async move {
        two_ready_pods_read(&mut server, &db).await;
        // No StatefulSet shrink, no volume deleted: a Leave to db-0, then the event.
        let event = event_posted(&mut server).await;
        assert_eq!(event["note"], "decommission 1");
        let s = &status_written(&mut server, &db).await;
        assert_eq!(s["currentStep"], "decommission 1");
        assert_eq!((&s["members"], &s["readyNodes"]), (&json!(2), &json!(2)));
        server
    })
    .await
    .unwrap();
    let table = ring.admin.ring(&ring.target(0)).await.unwrap();
    let row = table.members.iter().find(|m| m.node_id == "db-1").unwrap();
    assert_ne!(row.state, MemberState::Member, "db-1 was asked to leave");
    ring.shutdown().await;
}

/// Two members where db-1 drives its transfers only when the test says so (its own
/// loop's next tick is an hour away), with N = 1.
struct HandOverPair {
    ring: Ring,
}

impl HandOverPair {
    async fn start() -> Self {
        let mut ring = Ring::empty(TOKEN, 1);
        ring.add("db-0", &[]).await;
        ring.add("db-1", &["--transfer-interval", "1h"]).await;
        for id in ["db-0", "db-1"] {
            ring.join(id, 1).await;
        }
        let pair = Self { ring };
        pair.drive_db1_to(MemberState::Member).await;
        pair.ring
            .wait_for_states(
                0,
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
        let t1 = self.ring.target(1);
        support::eventually(&format!("db-1 to be {state:?}"), || async {
            self.ring.node(1).shared().transfer_round(unlimited).await;
            self.ring
                .admin
                .status(&t1)
                .await
                .is_ok_and(|s| s.state == Some(state) && !s.transfers_pending)
        })
        .await;
        self.ring.wait_for_states(0, &[("db-1", state)]).await;
    }

    /// Decommissions db-1 through db-0; it stays `Leaving` until driven.
    async fn start_leaving(&self) {
        self.ring
            .admin
            .leave(&self.ring.target(0), "db-1")
            .await
            .unwrap();
        self.ring
            .wait_for_states(1, &[("db-1", MemberState::Leaving)])
            .await;
    }

    async fn shutdown(self) {
        self.ring.shutdown().await;
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
    let endpoints = pair.ring.endpoints();
    let c = cluster(
        json!({"size": 3, "image": "dynamo-node:dev",
               "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );

    let action = pass(c.clone(), endpoints.clone(), |mut server, db| async move {
        two_ready_pods_read(&mut server, &db).await;
        // No StatefulSet apply (no growth to 3), no event: the status says why.
        let s = &status_written(&mut server, &db).await;
        assert_eq!(s["currentStep"], "wait: transfers pending on node 1");
        assert_eq!(condition(s, "Progressing")["reason"], "WaitingForTransfers");
        server
    })
    .await
    .unwrap();
    assert_eq!(action, poll_again());

    pair.drive_db1_to(MemberState::Removed).await;
    pass(c, endpoints, |mut server, db| async move {
        // A removed node no longer reports ready.
        objects_and_token_read(&mut server, &db, 2, vec![pod(0, true), pod(1, false)]).await;
        let sts = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        assert_eq!(sts.body["spec"]["replicas"], 3);
        sts.echo();
        let event = event_posted(&mut server).await;
        assert_eq!(event["note"], "grow statefulset to 3");
        status_written(&mut server, &db).await;
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
    let endpoints = pair.ring.endpoints();
    let c = cluster(
        json!({"size": 1, "image": "dynamo-node:dev",
               "replication": {"n": 1, "r": 1, "w": 1},
               "storage": {"retainOnScaleDown": false}}),
        true,
    );
    pass(c.clone(), endpoints.clone(), |mut server, db| async move {
        two_ready_pods_read(&mut server, &db).await;
        // No StatefulSet apply, no DELETE of data-db-1: only the status.
        let s = status_written(&mut server, &db).await;
        assert_eq!(s["currentStep"], "wait: transfers pending on node 1");
        server
    })
    .await
    .unwrap();

    pair.drive_db1_to(MemberState::Removed).await;
    pass(c, endpoints, |mut server, db| async move {
        objects_and_token_read(&mut server, &db, 2, vec![pod(0, true), pod(1, false)]).await;
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
        let event = event_posted(&mut server).await;
        assert_eq!(event["note"], "shrink statefulset to 1");
        status_written(&mut server, &db).await;
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

    // The API server's side: the first read of each failing pass (its StatefulSet)
    // gets a 500; the
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
                        .expect("PATCH", CLUSTER)
                        .await
                        .respond(200, finalized.clone());
                } else {
                    server
                        .expect("GET", &format!("{APPS}/statefulsets/{name}"))
                        .await
                        .respond(500, internal_error.clone());
                    // Each failure shows on its cluster: a Warning and Degraded (the
                    // objects passed in carry no status, so each is a new report). The
                    // recorder folds a repeated event into a series: a PATCH of the
                    // first.
                    let event = server.next_call("an event").await;
                    assert!(
                        event.path.starts_with(EVENTS)
                            && ["POST", "PATCH"].contains(&event.method.as_str()),
                        "{} {}",
                        event.method,
                        event.path
                    );
                    assert_eq!(event.body["reason"], "KubernetesApiError");
                    event.echo();
                    let status = server
                        .expect("PATCH", &format!("{CLUSTERS}/{name}/status"))
                        .await;
                    let mut object = finalized.clone();
                    object["metadata"]["name"] = json!(name);
                    object["status"] = status.body["status"].clone();
                    assert_eq!(
                        object["status"]["conditions"][0]["reason"],
                        "KubernetesApiError"
                    );
                    status.respond(200, object);
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

/// A pod of `db` created from StatefulSet revision `revision`.
fn pod_on(ordinal: u32, ready: bool, revision: &str) -> serde_json::Value {
    let mut pod = pod(ordinal, ready);
    pod["metadata"]["labels"] = json!({"controller-revision-hash": revision});
    pod
}

/// `db`'s StatefulSet as the operator applied it for `cluster` at `replicas` with
/// `partition`, at `generation`, its status observed and naming `update_revision`.
fn statefulset_observed(
    cluster: &dynamo_operator::crd::DynamoCluster,
    replicas: u32,
    partition: u32,
    generation: i64,
    update_revision: &str,
) -> serde_json::Value {
    let mut built = dynamo_operator::builders::statefulset(cluster, replicas).unwrap();
    dynamo_operator::builders::set_partition(&mut built, partition);
    let mut sts = serde_json::to_value(controller::with_applied_hash(built).unwrap()).unwrap();
    sts["metadata"]["generation"] = json!(generation);
    sts["status"] = json!({
        "observedGeneration": generation, "replicas": replicas,
        "currentRevision": "db-v1", "updateRevision": update_revision,
    });
    sts
}

/// The reads of a pass over `db` whose StatefulSet is `statefulset` and whose other
/// children are current, then its pods and secrets.
async fn reads_with_statefulset(
    server: &mut ApiServer,
    db: &dynamo_operator::crd::DynamoCluster,
    statefulset: serde_json::Value,
    pods: Vec<serde_json::Value>,
) {
    server
        .expect("GET", &format!("{APPS}/statefulsets/db"))
        .await
        .respond(200, statefulset);
    support::passes::children_unchanged(server, db).await;
    server
        .expect("GET", &format!("{NS}/pods"))
        .await
        .respond(200, list("PodList", pods));
    generated_token_exists(server).await;
    internode_secret_exists(server).await;
}

/// The partition a StatefulSet apply sets (0 when it leaves it unset).
fn applied_partition(apply: &support::Call) -> u64 {
    apply.body["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_new_pod_template_restarts_one_pod_at_a_time_while_the_ring_is_healthy() {
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1)], 1).await;
    let spec =
        |image: &str| json!({"size": 2, "image": image, "replication": {"n": 1, "r": 1, "w": 1}});
    let v1 = cluster(spec("dynamo-node:v1"), true);
    let v2 = cluster(spec("dynamo-node:v2"), true);

    // The image changes: the new template is applied with the partition at the two
    // existing pods, so neither restarts before a health check.
    let current = statefulset_observed(&v1, 2, 0, 1, "db-v1");
    pass(v2.clone(), ring.endpoints(), |mut server, db| async move {
        let pods = vec![pod_on(0, true, "db-v1"), pod_on(1, true, "db-v1")];
        reads_with_statefulset(&mut server, &db, current, pods).await;
        let apply = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        assert_eq!(
            apply.body["spec"]["template"]["spec"]["containers"][0]["image"],
            "dynamo-node:v2"
        );
        assert_eq!(applied_partition(&apply), 2);
        apply.echo();
        let s = &status_written(&mut server, &db).await;
        assert_eq!(
            s["rollout"],
            "0 of 2 pods on the new template; new pod template; restarts wait for a health check"
        );
        assert_eq!(s["phase"], "Progressing");
        assert_eq!(condition(s, "Progressing")["reason"], "RollingOut");
        server
    })
    .await
    .map(|action| assert_eq!(action, poll_again()))
    .unwrap();

    // The StatefulSet controller saw it; the ring is healthy: db-1 is let through.
    let current = statefulset_observed(&v2, 2, 2, 2, "db-v2");
    pass(v2.clone(), ring.endpoints(), |mut server, db| async move {
        let pods = vec![pod_on(0, true, "db-v1"), pod_on(1, true, "db-v1")];
        reads_with_statefulset(&mut server, &db, current, pods).await;
        let apply = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        assert_eq!(applied_partition(&apply), 1);
        apply.echo();
        let event = event_posted(&mut server).await;
        assert_eq!(
            (&event["reason"], &event["note"]),
            (
                &json!("RollingOut"),
                &json!("restarting db-1 on the new pod template")
            )
        );
        let s = &status_written(&mut server, &db).await;
        assert_eq!(
            s["rollout"],
            "0 of 2 pods on the new template; restarting pod 1"
        );
        server
    })
    .await
    .unwrap();

    // db-1 runs the new template, but the cluster is paused: nothing is applied.
    let mut paused = v2.clone();
    paused.metadata.annotations = Some(BTreeMap::from([(
        dynamo_operator::rollout::PAUSE_ANNOTATION.to_owned(),
        "true".to_owned(),
    )]));
    let current = statefulset_observed(&v2, 2, 1, 3, "db-v2");
    pass(paused, ring.endpoints(), |mut server, db| async move {
        let pods = vec![pod_on(0, true, "db-v1"), pod_on(1, true, "db-v2")];
        reads_with_statefulset(&mut server, &db, current, pods).await;
        let s = &status_written(&mut server, &db).await;
        assert_eq!(
            s["rollout"],
            "1 of 2 pods on the new template; paused by the dynamo.example.org/rollout-paused annotation"
        );
        server
    })
    .await
    .unwrap();

    // Unpaused: db-0 is let through and the partition is back at rest (unset).
    let current = statefulset_observed(&v2, 2, 1, 3, "db-v2");
    pass(v2.clone(), ring.endpoints(), |mut server, db| async move {
        let pods = vec![pod_on(0, true, "db-v1"), pod_on(1, true, "db-v2")];
        reads_with_statefulset(&mut server, &db, current, pods).await;
        let apply = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        assert!(
            apply.body["spec"]["updateStrategy"]
                .get("rollingUpdate")
                .is_none(),
            "{}",
            apply.body["spec"]["updateStrategy"]
        );
        apply.echo();
        let event = event_posted(&mut server).await;
        assert_eq!(event["note"], "restarting db-0 on the new pod template");
        status_written(&mut server, &db).await;
        server
    })
    .await
    .unwrap();
    ring.shutdown().await;
}

#[tokio::test]
async fn a_ring_with_a_pending_transfer_holds_the_next_restart() {
    // db-1 joins while db-0 is down: its transfer stays pending, so no pod restarts
    // although the pods themselves are through.
    let ring = ring_with_a_pending_transfer().await;
    let spec = json!({"size": 2, "image": "dynamo-node:v2",
                      "replication": {"n": 1, "r": 1, "w": 1}});
    let c = cluster(spec, true);
    let current = statefulset_observed(&c, 2, 2, 2, "db-v2");
    pass(c, ring.endpoints(), |mut server, db| async move {
        // db-0's pod restarts (not ready); db-1 is up on the old template.
        let pods = vec![pod_on(0, false, "db-v1"), pod_on(1, true, "db-v1")];
        reads_with_statefulset(&mut server, &db, current, pods).await;
        // No StatefulSet apply: the partition stays at 2.
        let s = &status_written(&mut server, &db).await;
        let rollout = s["rollout"].as_str().unwrap();
        assert!(
            rollout.starts_with("0 of 2 pods on the new template; waiting: "),
            "{rollout}"
        );
        server
    })
    .await
    .unwrap();
    ring.shutdown().await;
}

#[tokio::test]
async fn an_operator_release_alone_restarts_nothing() {
    // The StatefulSet and config were rendered by another operator release from the
    // same spec: its pod template and config differ from what this release renders.
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1)], 1).await;
    let c = cluster(
        json!({"size": 2, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );
    for recorded in [true, false] {
        let mut current = statefulset_observed(&c, 2, 0, 1, "db-v1");
        current["spec"]["template"]["metadata"]["annotations"]["older-release"] = json!("yes");
        if !recorded {
            // A release before the template inputs were recorded: adopted as is.
            current["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove(dynamo_operator::builders::TEMPLATE_INPUTS_ANNOTATION);
        }
        let old_template = current["spec"]["template"].clone();
        let mut old_config = serde_json::to_value(
            controller::with_applied_hash(dynamo_operator::builders::config_map(&c).unwrap())
                .unwrap(),
        )
        .unwrap();
        old_config["data"]["config.yaml"] = json!("listen: 0.0.0.0:7000\n");
        old_config["metadata"]["annotations"][controller::APPLIED_HASH_ANNOTATION] =
            json!("0000000000000000");
        pass(
            c.clone(),
            ring.endpoints(),
            move |mut server, db| async move {
                server
                    .expect("GET", &format!("{APPS}/statefulsets/db"))
                    .await
                    .respond(200, current);
                // The config is read and left as it is; the rest is current.
                server
                    .expect("GET", &format!("{NS}/configmaps/db-config"))
                    .await
                    .respond(200, old_config);
                let rest = [
                    (
                        format!("{NS}/services/db-peers"),
                        dynamo_operator::builders::headless_service(&db),
                    ),
                    (
                        format!("{NS}/services/db"),
                        dynamo_operator::builders::client_service(&db),
                    ),
                ];
                for (path, built) in rest {
                    let applied = controller::with_applied_hash(built.unwrap()).unwrap();
                    server
                        .expect("GET", &path)
                        .await
                        .respond(200, serde_json::to_value(applied).unwrap());
                }
                let pdb = controller::with_applied_hash(
                    dynamo_operator::builders::pod_disruption_budget(&db).unwrap(),
                )
                .unwrap();
                server
                    .expect("GET", &format!("{POLICY}/poddisruptionbudgets/db"))
                    .await
                    .respond(200, serde_json::to_value(pdb).unwrap());
                let netpol = controller::with_applied_hash(
                    dynamo_operator::builders::network_policy(&db, support::OPERATOR_NAMESPACE)
                        .unwrap(),
                )
                .unwrap();
                server
                    .expect("GET", NETPOL)
                    .await
                    .respond(200, serde_json::to_value(netpol).unwrap());
                server
                    .expect("GET", &format!("{NS}/pods"))
                    .await
                    .respond(200, list("PodList", vec![pod(0, true), pod(1, true)]));
                generated_token_exists(&mut server).await;
                internode_secret_exists(&mut server).await;
                // The StatefulSet is applied (its recorded content differs) with the
                // template the pods run, and the inputs recorded: no pod restarts.
                let apply = server
                    .expect("PATCH", &format!("{APPS}/statefulsets/db"))
                    .await;
                assert_eq!(apply.body["spec"]["template"], old_template);
                assert_eq!(
                    apply.body["metadata"]["annotations"]
                        [dynamo_operator::builders::TEMPLATE_INPUTS_ANNOTATION],
                    dynamo_operator::builders::template_inputs_hash(&db)
                );
                assert!(
                    apply.body["spec"]["updateStrategy"]
                        .get("rollingUpdate")
                        .is_none()
                );
                apply.echo();
                let s = &status_written(&mut server, &db).await;
                assert_eq!(s.get("rollout"), None);
                assert_eq!(s["phase"], "Running");
                server
            },
        )
        .await
        .map(|action| assert_eq!(action, resync_later()))
        .unwrap();
    }
    ring.shutdown().await;
}

/// A pod of `db` whose node runs but whose Ready condition has been False since
/// `since` (RFC 3339).
fn pod_unready_since(ordinal: u32, since: &str) -> serde_json::Value {
    let mut pod = pod(ordinal, false);
    pod["status"]["conditions"][0]["lastTransitionTime"] = json!(since);
    pod
}

#[tokio::test]
async fn a_dead_member_is_reported_once_and_left_in_the_ring() {
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1), ("db-2", 1)], 1).await;
    let c = cluster(
        json!({"size": 3, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1},
               "deadMemberTimeoutSeconds": 60}),
        true,
    );
    let pods = || {
        vec![
            pod(0, true),
            pod(1, true),
            pod_unready_since(2, "2020-01-01T00:00:00Z"),
        ]
    };
    let status = pass_with(
        c.clone(),
        ring.endpoints(),
        move |mut server, db| async move {
            objects_and_token_read(&mut server, &db, 3, pods()).await;
            let event = event_posted(&mut server).await;
            assert_eq!(
                (&event["type"], &event["reason"]),
                (&json!("Warning"), &json!("MemberDead"))
            );
            let note = event["note"].as_str().unwrap();
            assert!(
                note.contains("member 2 has not been ready for 60 s")
                    && note.contains("dynamo.example.org/replace"),
                "{note}"
            );
            let s = status_written(&mut server, &db).await;
            let degraded = condition(&s, "Degraded");
            assert_eq!(
                (&degraded["status"], &degraded["reason"]),
                (&json!("True"), &json!("MemberDead"))
            );
            assert_eq!(s["phase"], "Degraded");
            (server, s)
        },
    )
    .await;
    assert_eq!(status.0.unwrap(), poll_again());
    // The next pass sees the same: no second event, no status write, and the member
    // stays.
    let mut reported = c.clone();
    reported.status = status_of(&status.1);
    pass(
        reported,
        ring.endpoints(),
        move |mut server, db| async move {
            objects_and_token_read(&mut server, &db, 3, pods()).await;
            server
        },
    )
    .await
    .unwrap();
    ring.wait_for_states(0, &[("db-2", MemberState::Member)])
        .await;
    ring.shutdown().await;
}

#[tokio::test]
async fn a_replace_removes_the_dead_member_rebuilds_its_pod_and_is_cleared() {
    let mut ring = Ring::start(&[("db-0", 1), ("db-1", 1), ("db-2", 1)], 1).await;
    let mut c = cluster(
        json!({"size": 3, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );
    c.metadata.annotations = Some(BTreeMap::from([(
        dynamo_operator::planner::REPLACE_ANNOTATION.to_owned(),
        "db-2".to_owned(),
    )]));
    // Not dead for the timeout yet: a replace does not wait for it. While db-0 can
    // still reach db-2, the node refuses and the pass fails without deleting anything.
    let pods = || {
        vec![
            pod(0, true),
            pod(1, true),
            pod_unready_since(2, "2099-01-01T00:00:00Z"),
        ]
    };
    let (result, ()) = pass_with(
        c.clone(),
        ring.endpoints(),
        move |mut server, db| async move {
            objects_and_token_read(&mut server, &db, 3, pods()).await;
            let event = server.next_call("an event").await;
            assert_eq!(event.body["reason"], "AdminCallFailed", "{}", event.body);
            assert!(
                event.body["note"].as_str().unwrap().contains("reachable"),
                "{}",
                event.body
            );
            event.echo();
            status_written(&mut server, &db).await;
            (server, ())
        },
    )
    .await;
    assert!(result.is_err());

    ring.stop(2).await;
    support::eventually("db-0 to find db-2 unreachable", || async {
        ring.admin.ring(&ring.target(0)).await.is_ok_and(|view| {
            view.members
                .iter()
                .any(|m| m.node_id == "db-2" && !m.reachable)
        })
    })
    .await;
    pass(
        c.clone(),
        ring.endpoints(),
        move |mut server, db| async move {
            objects_and_token_read(&mut server, &db, 3, pods()).await;
            let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": "data-db-2", "namespace": "prod"}});
            server
                .expect("DELETE", &format!("{NS}/persistentvolumeclaims/data-db-2"))
                .await
                .respond(200, claim);
            server
                .expect("DELETE", &format!("{NS}/pods/db-2"))
                .await
                .respond(200, pod(2, false));
            let clear = server.expect("PATCH", CLUSTER).await;
            assert_eq!(
                clear.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            assert_eq!(
                clear.body,
                json!({"metadata": {"annotations": {"dynamo.example.org/replace": null}}})
            );
            clear.respond(200, serde_json::to_value(&db).unwrap());
            let event = event_posted(&mut server).await;
            assert_eq!(
                (&event["reason"], &event["note"]),
                (
                    &json!("ReplaceMember"),
                    &json!("remove dead member 2 to replace it")
                )
            );
            status_written(&mut server, &db).await;
            server
        },
    )
    .await
    .unwrap();
    ring.wait_for_states(0, &[("db-2", MemberState::Removed)])
        .await;
    ring.shutdown().await;
}

#[tokio::test]
async fn a_replace_of_a_ready_member_is_refused_and_cleared() {
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1)], 1).await;
    let mut c = cluster(
        json!({"size": 2, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );
    c.metadata.annotations = Some(BTreeMap::from([(
        dynamo_operator::planner::REPLACE_ANNOTATION.to_owned(),
        "db-1".to_owned(),
    )]));
    pass(c, ring.endpoints(), |mut server, db| async move {
        two_ready_pods_read(&mut server, &db).await;
        let event = event_posted(&mut server).await;
        assert_eq!(
            (&event["type"], &event["reason"]),
            (&json!("Warning"), &json!("ReplaceRefused"))
        );
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("member 1 is ready"),
            "{event}"
        );
        let clear = server.expect("PATCH", CLUSTER).await;
        assert_eq!(
            clear.body,
            json!({"metadata": {"annotations": {"dynamo.example.org/replace": null}}})
        );
        clear.respond(200, serde_json::to_value(&db).unwrap());
        let s = status_written(&mut server, &db).await;
        assert_eq!(s["phase"], "Running");
        server
    })
    .await
    .unwrap();
    ring.wait_for_states(0, &[("db-1", MemberState::Member)])
        .await;
    ring.shutdown().await;
}

#[tokio::test]
async fn a_scale_down_past_a_dead_member_removes_it_without_its_hand_off() {
    // The spec went from 2 nodes to 1 while db-1 was dead: it cannot hand its ranges
    // off, so a Leave would never finish. Dead past the timeout and above the size, it
    // is removed at once; the shrink follows in the next pass as usual.
    let mut ring = Ring::start(&[("db-0", 1), ("db-1", 1)], 1).await;
    ring.stop(1).await;
    support::eventually("db-0 to find db-1 unreachable", || async {
        ring.admin.ring(&ring.target(0)).await.is_ok_and(|view| {
            view.members
                .iter()
                .any(|m| m.node_id == "db-1" && !m.reachable)
        })
    })
    .await;
    let c = cluster(
        json!({"size": 1, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );
    pass(c, ring.endpoints(), |mut server, db| async move {
        let pods = vec![pod(0, true), pod_unready_since(1, "2020-01-01T00:00:00Z")];
        objects_and_token_read(&mut server, &db, 2, pods).await;
        // No volume or pod deleted: that is the shrink's business, by its policy.
        let event = event_posted(&mut server).await;
        assert_eq!(
            (&event["type"], &event["reason"], &event["note"]),
            (
                &json!("Normal"),
                &json!("RemoveDeadMember"),
                &json!("remove dead member 1")
            )
        );
        status_written(&mut server, &db).await;
        server
    })
    .await
    .unwrap();
    ring.wait_for_states(0, &[("db-1", MemberState::Removed)])
        .await;
    ring.shutdown().await;
}

/// A volume claim of `db`'s pod `ordinal` requesting `size`.
fn claim(ordinal: u32, size: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": format!("data-db-{ordinal}"), "namespace": "prod"},
           "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": size}}}})
}

/// The claim template size of a StatefulSet apply's body.
fn applied_claim_size(apply: &support::Call) -> &serde_json::Value {
    &apply.body["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
}

#[tokio::test]
async fn a_larger_storage_size_grows_the_claims_and_recreates_the_statefulset_around_its_pods() {
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1)], 1).await;
    let spec = |size: &str| {
        json!({"size": 2, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1},
               "storage": {"size": size}})
    };
    let small = cluster(spec("1Gi"), true);
    let large = cluster(spec("2Gi"), true);
    let mut current = statefulset_observed(&small, 2, 0, 1, "db-v1");
    current["metadata"]["uid"] = json!("sts-uid-1");
    pass(large.clone(), ring.endpoints(), move |mut server, db| async move {
        let pods = vec![pod_on(0, true, "db-v1"), pod_on(1, true, "db-v1")];
        reads_with_statefulset(&mut server, &db, current, pods).await;
        for ordinal in 0..2 {
            let path = format!("{NS}/persistentvolumeclaims/data-db-{ordinal}");
            server.expect("GET", &path).await.respond(200, claim(ordinal, "1Gi"));
            let grow = server.expect("PATCH", &path).await;
            assert_eq!(
                grow.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            assert_eq!(
                grow.body,
                json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
            );
            grow.respond(200, claim(ordinal, "2Gi"));
        }
        // Deleted with its pods and claims orphaned, and only the one that was read.
        let delete = server
            .expect("DELETE", &format!("{APPS}/statefulsets/db"))
            .await;
        assert_eq!(delete.body["propagationPolicy"], "Orphan");
        assert_eq!(delete.body["preconditions"]["uid"], "sts-uid-1");
        delete.respond(200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
        let event = event_posted(&mut server).await;
        assert_eq!(event["reason"], "ExpandingVolumes");
        assert_eq!(
            event["note"],
            "volume claims grown from 1Gi to 2Gi; the StatefulSet is re-created around its running pods"
        );
        server
    })
    .await
    .map(|action| assert_eq!(action, poll_again()))
    .unwrap();

    // Re-created with the new claim template, its running pods held by the partition
    // until their revision is checked: nothing restarts.
    pass(large, ring.endpoints(), |mut server, db| async move {
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .not_found();
        support::passes::children_unchanged(&mut server, &db).await;
        server.expect("GET", &format!("{NS}/pods")).await.respond(
            200,
            list(
                "PodList",
                vec![pod_on(0, true, "db-v1"), pod_on(1, true, "db-v1")],
            ),
        );
        generated_token_exists(&mut server).await;
        internode_secret_exists(&mut server).await;
        let create = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        assert_eq!(applied_claim_size(&create), "2Gi");
        assert_eq!(create.body["spec"]["replicas"], 2);
        assert_eq!(applied_partition(&create), 2);
        create.echo();
        let event = event_posted(&mut server).await;
        assert_eq!(event["note"], "grow statefulset to 2");
        status_written(&mut server, &db).await;
        server
    })
    .await
    .unwrap();
    ring.shutdown().await;
}

#[tokio::test]
async fn a_storage_growth_the_class_refuses_keeps_the_claim_template_and_degrades() {
    let ring = Ring::start(&[("db-0", 1), ("db-1", 1)], 1).await;
    let spec = |size: &str| {
        json!({"size": 2, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1},
               "storage": {"size": size}})
    };
    let small = cluster(spec("1Gi"), true);
    let large = cluster(spec("2Gi"), true);
    let current = statefulset_observed(&small, 2, 0, 1, "db-v1");
    pass(large, ring.endpoints(), move |mut server, db| async move {
        let pods = vec![pod_on(0, true, "db-v1"), pod_on(1, true, "db-v1")];
        reads_with_statefulset(&mut server, &db, current, pods).await;
        let path = format!("{NS}/persistentvolumeclaims/data-db-0");
        server.expect("GET", &path).await.respond(200, claim(0, "1Gi"));
        server.expect("PATCH", &path).await.respond(
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                   "reason": "Forbidden",
                   "message": "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"}),
        );
        // The StatefulSet still applies, with the claim template it has: no wedge.
        let apply = server
            .expect("PATCH", &format!("{APPS}/statefulsets/db"))
            .await;
        assert_eq!(applied_claim_size(&apply), "1Gi");
        apply.echo();
        let event = event_posted(&mut server).await;
        assert_eq!((&event["type"], &event["reason"]), (&json!("Warning"), &json!("VolumeExpansionRefused")));
        assert!(
            event["note"].as_str().unwrap().contains("must support resize"),
            "{event}"
        );
        let s = status_written(&mut server, &db).await;
        let degraded = condition(&s, "Degraded");
        assert_eq!(
            (&degraded["status"], &degraded["reason"]),
            (&json!("True"), &json!("VolumeExpansionRefused"))
        );
        server
    })
    .await
    .unwrap();
    ring.shutdown().await;
}

#[tokio::test]
async fn a_child_object_the_api_refuses_is_reported_and_the_join_goes_on() {
    // db-1 waits to join while the API refuses the NetworkPolicy (an admission webhook,
    // say): the join does not depend on it, so it happens; the refusal shows on the
    // cluster as Degraded and one Warning event.
    let mut ring = Ring::start(&[("db-0", 1)], 1).await;
    ring.add("db-1", &[]).await;
    let c = cluster(
        json!({"size": 2, "image": "dynamo-node:dev", "replication": {"n": 1, "r": 1, "w": 1}}),
        true,
    );
    let status = pass_with(c.clone(), ring.endpoints(), |mut server, db| async move {
        server
            .expect("GET", &format!("{APPS}/statefulsets/db"))
            .await
            .respond(200, support::passes::statefulset(&db, 2));
        for (path, built) in [
            (
                format!("{NS}/configmaps/db-config"),
                serde_json::to_value(controller::with_applied_hash(
                    dynamo_operator::builders::config_map(&db).unwrap(),
                ).unwrap()).unwrap(),
            ),
            (
                format!("{NS}/services/db-peers"),
                serde_json::to_value(controller::with_applied_hash(
                    dynamo_operator::builders::headless_service(&db).unwrap(),
                ).unwrap()).unwrap(),
            ),
            (
                format!("{NS}/services/db"),
                serde_json::to_value(controller::with_applied_hash(
                    dynamo_operator::builders::client_service(&db).unwrap(),
                ).unwrap()).unwrap(),
            ),
            (
                format!("{POLICY}/poddisruptionbudgets/db"),
                serde_json::to_value(controller::with_applied_hash(
                    dynamo_operator::builders::pod_disruption_budget(&db).unwrap(),
                ).unwrap()).unwrap(),
            ),
        ] {
            server.expect("GET", &path).await.respond(200, built);
        }
        // The NetworkPolicy is missing, and its apply is refused.
        server.expect("GET", NETPOL).await.not_found();
        server.expect("PATCH", NETPOL).await.respond(
            422,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                   "reason": "Invalid", "message": "denied by policy-webhook: no NetworkPolicies here"}),
        );
        server
            .expect("GET", &format!("{NS}/pods"))
            .await
            .respond(200, list("PodList", vec![pod(0, true), pod(1, false)]));
        generated_token_exists(&mut server).await;
        internode_secret_exists(&mut server).await;
        let warning = event_posted(&mut server).await;
        assert_eq!(
            (&warning["type"], &warning["reason"]),
            (&json!("Warning"), &json!("ChildObjectRefused"))
        );
        assert!(
            warning["note"]
                .as_str()
                .unwrap()
                .contains("the API refused the NetworkPolicy: denied by policy-webhook"),
            "{warning}"
        );
        let join = event_posted(&mut server).await;
        assert_eq!(join["note"], "join 1 with weight 1");
        let s = status_written(&mut server, &db).await;
        let degraded = condition(&s, "Degraded");
        assert_eq!(
            (&degraded["status"], &degraded["reason"]),
            (&json!("True"), &json!("ChildObjectRefused"))
        );
        assert_eq!(s["currentStep"], "join 1 with weight 1");
        (server, s)
    })
    .await;
    assert_eq!(status.0.unwrap(), poll_again());
    // Joined (and, with nothing to pull, perhaps already a member).
    let table = ring.admin.ring(&ring.target(0)).await.unwrap();
    assert!(
        table.members.iter().any(|m| m.node_id == "db-1"),
        "{:?}",
        table.members
    );
    ring.shutdown().await;
}

/// The chart's `cluster.enabled` DynamoCluster, as its post-install Job reads it.
const VALUES_CLUSTER: &str = r#"
apiVersion: dynamo.example.org/v1alpha1
kind: DynamoCluster
metadata:
  name: db
  namespace: prod
  labels: {app.kubernetes.io/managed-by: Helm}
spec:
  size: 3
  image: dynamo-node:dev
"#;

#[tokio::test]
async fn apply_cluster_waits_for_the_crd_then_applies_the_file() {
    use dynamo_operator::apply_cluster::{apply_cluster, parse_cluster};
    let (client, mut server) = mock_client();
    let cluster = parse_cluster(VALUES_CLUSTER).unwrap();
    let task = tokio::spawn(async move {
        apply_cluster(
            client,
            &cluster,
            "default",
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(10),
        )
        .await
    });
    // The CRD was created a moment ago and is not served yet.
    server.expect("PATCH", CLUSTER).await.not_found();
    let apply = server.expect("PATCH", CLUSTER).await;
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        apply.query.get("fieldManager").map(String::as_str),
        Some("dynamo-operator-apply-cluster")
    );
    assert_eq!(apply.body["spec"]["size"], 3);
    assert_eq!(
        apply.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
    assert!(apply.body.get("status").is_none());
    apply.echo();
    task.await.unwrap().unwrap();
    server.expect_no_more().await;
}

#[tokio::test]
async fn apply_cluster_gives_up_when_the_crd_never_comes_and_stops_on_a_refusal() {
    use dynamo_operator::apply_cluster::{ApplyError, apply_cluster, parse_cluster};
    let cluster = parse_cluster(VALUES_CLUSTER).unwrap();
    let (client, mut server) = mock_client();
    let wait = std::time::Duration::from_millis(50);
    let mut task = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            apply_cluster(
                client,
                &cluster,
                "default",
                wait,
                std::time::Duration::from_millis(10),
            )
            .await
        })
    };
    let result = loop {
        tokio::select! {
            // The task first: once it ends its client is gone too.
            biased;
            result = &mut task => break result.unwrap(),
            call = server.next_call("a retried apply") => call.not_found(),
        }
    };
    assert!(matches!(result, Err(ApplyError::NoCrd(_))), "{result:?}");

    // Anything but a 404 is final: no retry.
    let (client, mut server) = mock_client();
    let task = tokio::spawn(async move {
        apply_cluster(
            client,
            &cluster,
            "default",
            wait,
            std::time::Duration::from_millis(10),
        )
        .await
    });
    server.expect("PATCH", CLUSTER).await.respond(
        403,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
               "reason": "Forbidden", "message": "dynamoclusters is forbidden"}),
    );
    let error = task.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("forbidden"), "{error}");
    server.expect_no_more().await;
}
