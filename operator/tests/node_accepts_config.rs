//! The pod the builders describe starts a node that accepts its configuration: the
//! container's arguments, its environment (as the kubelet resolves it) and the config
//! map's file go through `dynamo-node`'s own loader.

use std::collections::BTreeMap;
use std::time::Duration;

use dynamo_node::config::{DurabilityMode, NodeConfig, load_from_args};
use dynamo_node::ring::PartitionStrategy;
use dynamo_operator::builders::{
    ADMIN_TOKEN_BYTES, ADMIN_TOKEN_KEY, CONFIG_FILE, admin_token_secret, config_map, statefulset,
};
use dynamo_operator::crd::{DynamoCluster, DynamoClusterSpec, TlsSpec};

fn cluster(spec: serde_json::Value) -> DynamoCluster {
    let spec: DynamoClusterSpec = serde_json::from_value(spec).expect("spec deserializes");
    let mut cluster = DynamoCluster::new("db", spec);
    cluster.metadata.namespace = Some("prod".to_owned());
    cluster.metadata.uid = Some("6b1d2c9e-0000-4000-8000-000000000001".to_owned());
    cluster
}

/// The token in a user-named admin token Secret.
const USER_TOKEN: &str = "an-admin-token-long-enough-for-the-node";

/// The value of a secret key reference: from the Secret the operator generates when it is
/// that one, else from the user's.
fn secret_value(cluster: &DynamoCluster, name: &str, key: &str) -> String {
    assert_eq!(key, ADMIN_TOKEN_KEY);
    match admin_token_secret(cluster, &[0x5a; ADMIN_TOKEN_BYTES]).expect("secret builds") {
        Some(generated) => {
            assert_eq!(generated.metadata.name.as_deref(), Some(name));
            let bytes = generated.data.expect("data")[key].0.clone();
            String::from_utf8(bytes).expect("token is text")
        }
        None => {
            assert_eq!(cluster.spec.admin_token_secret.as_deref(), Some(name));
            USER_TOKEN.to_owned()
        }
    }
}

/// The zone label the test pods' node carries.
const POD_ZONE: &str = "eu-west-1b";

/// Starts "pod" `db-<ordinal>` of the cluster the way the kubelet would, as far as the
/// node's configuration goes, and returns what the node loaded.
fn load_pod(cluster: &DynamoCluster, ordinal: u32) -> NodeConfig {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join(CONFIG_FILE);
    let config_map = config_map(cluster).expect("config map");
    std::fs::write(&config_path, &config_map.data.expect("data")[CONFIG_FILE])
        .expect("write config");

    let sts = statefulset(cluster, 3).expect("statefulset");
    let pod = sts.spec.template.spec.expect("pod spec");
    let container = &pod.containers[0];
    let pod_name = format!("db-{ordinal}");

    // The kubelet resolves each variable in order; `$(NAME)` refers to earlier ones.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in container.env.as_deref().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), None) => env.iter().fold(value.clone(), |v, (name, val)| {
                v.replace(&format!("$({name})"), val)
            }),
            (None, Some(source)) if source.field_ref.is_some() => {
                // The pod's name, and the zone label the API server copied from its node.
                match source.field_ref.as_ref().unwrap().field_path.as_str() {
                    "metadata.name" => pod_name.clone(),
                    "metadata.labels['topology.kubernetes.io/zone']" => POD_ZONE.to_owned(),
                    other => panic!("unexpected field path {other}"),
                }
            }
            (None, Some(source)) if source.secret_key_ref.is_some() => {
                let selector = source.secret_key_ref.as_ref().unwrap();
                secret_value(cluster, &selector.name, &selector.key)
            }
            other => panic!("unexpected env source for {}: {other:?}", var.name),
        };
        env.insert(var.name.clone(), value);
    }

    let mut args = vec!["dynamo-node".to_owned()];
    for arg in container.args.as_deref().unwrap_or_default() {
        // The config map is mounted at the path the argument names; here it is a temp file.
        args.push(if arg.ends_with(CONFIG_FILE) {
            config_path.display().to_string()
        } else {
            arg.clone()
        });
    }
    let lookup = |name: &str| env.get(name).cloned();
    load_from_args(args, &lookup)
        .unwrap_or_else(|err| panic!("node refused the pod's config: {err}"))
        .config
}

#[test]
fn default_cluster_pod_config_is_accepted() {
    let cluster = cluster(serde_json::json!({"size": 5, "image": "dynamo-node:dev"}));
    let config = load_pod(&cluster, 4);
    assert_eq!(config.node_id().as_str(), "db-4");
    assert_eq!(config.advertise(), Some("db-4.db-peers.prod.svc:7001"));
    // Replicas across zones: the node's zone label reaches the node.
    assert_eq!(config.zone(), Some(POD_ZONE));
    assert_eq!(
        config.reconciliation(),
        dynamo_node::version::Reconciliation::Siblings
    );
    assert_eq!(
        config.seeds(),
        [
            "db-0.db-peers.prod.svc:7001",
            "db-1.db-peers.prod.svc:7001",
            "db-2.db-peers.prod.svc:7001"
        ]
    );
    assert_eq!(config.replication_factor(), 3);
    assert_eq!(config.read_quorum(), 2);
    assert_eq!(config.write_quorum(), 2);
    assert_eq!(config.internode_listen().port(), 7001);
    assert_eq!(config.http_listen().map(|a| a.port()), Some(7002));
    assert_eq!(
        config.data_dir().map(|p| p.display().to_string()),
        Some("/var/lib/dynamo".to_owned())
    );
    // No Secret named: the node requires the token the operator generated.
    let token = config.admin_token().expect("admin token set");
    assert_eq!(token.expose(), "5a".repeat(ADMIN_TOKEN_BYTES));
    // The node listens on every address, so it starts only with the cluster secret,
    // which it reads from where the pod mounts the generated Secret.
    assert_eq!(
        config.internode_auth().token_file.as_deref(),
        Some(std::path::Path::new("/etc/dynamo/internode/token"))
    );
    assert!(!config.internode_auth().insecure);
}

#[test]
fn every_setting_the_spec_offers_is_accepted() {
    let mut cluster = cluster(serde_json::json!({
        "size": 5,
        "image": "dynamo-node:dev",
        "replication": {"n": 5, "r": 3, "w": 3},
        "partitioning": {"strategy": "random-tokens", "tokensPerWeight": 64},
        "durability": "buffered",
        "reconciliation": "last-write-wins",
        "adminTokenSecret": "db-admin",
    }));
    cluster.spec.tls = Some(TlsSpec {
        secret_name: "db-tls".to_owned(),
        mutual: true,
    });
    let config = load_pod(&cluster, 0);
    assert_eq!(config.replication_factor(), 5);
    assert_eq!(config.read_quorum(), 3);
    let tls = config.tls().expect("tls on");
    assert!(tls.ca.is_some(), "mutual TLS reads ca.crt");
    assert_eq!(
        config.admin_token().map(|t| t.expose().to_owned()),
        Some(USER_TOKEN.to_owned())
    );
    assert_eq!(
        DurabilityMode::from(config.durability()),
        DurabilityMode::Buffered
    );
    assert_eq!(
        config.partitioning(),
        PartitionStrategy::RandomTokens {
            tokens_per_weight: 64
        }
    );
    assert_eq!(
        config.reconciliation(),
        dynamo_node::version::Reconciliation::LastWriteWins
    );
}

/// `nodeConfig` settings reach the node as the node's own settings, typed as it reads
/// them, beside everything the operator manages.
#[test]
fn node_config_settings_are_what_the_node_loads() {
    let cluster = cluster(serde_json::json!({
        "size": 3,
        "image": "dynamo-node:dev",
        "nodeConfig": {
            "max-connections": "4096",
            "max-inflight-requests": "2048",
            "client-read-timeout": "30s",
            "tombstone-grace": "48h",
            "anti-entropy-interval": "1m",
        },
    }));
    cluster.spec.validate().expect("a valid spec");
    let config = load_pod(&cluster, 1);
    let serving = config.serving_limits();
    assert_eq!(serving.max_connections, 4096);
    assert_eq!(serving.max_inflight_requests, 2048);
    assert_eq!(serving.client_read_timeout, Duration::from_secs(30));
    let antientropy = config.anti_entropy();
    assert_eq!(antientropy.tombstone_grace, Duration::from_secs(48 * 3600));
    assert_eq!(antientropy.interval, Duration::from_secs(60));
    // The managed settings are still the operator's.
    assert_eq!(config.replication_factor(), 3);
    assert_eq!(config.internode_listen().port(), 7001);
}

#[test]
fn tls_without_mutual_is_accepted_without_a_ca() {
    let mut cluster = cluster(serde_json::json!({"size": 3, "image": "dynamo-node:dev"}));
    cluster.spec.tls = Some(TlsSpec {
        secret_name: "db-tls".to_owned(),
        mutual: false,
    });
    let config = load_pod(&cluster, 1);
    let tls = config.tls().expect("tls on");
    assert_eq!(tls.ca, None);
    assert!(tls.cert.ends_with("tls.crt") && tls.key.ends_with("tls.key"));
}
