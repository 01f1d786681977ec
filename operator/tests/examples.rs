//! Every DynamoCluster the project ships as an example (`e2e/manifests/*.yaml` and the
//! chart's `cluster.spec` in `values.yaml`) passes what the API server checks beyond
//! the structural schema (the CRD's CEL rules, evaluated client-side) and what the
//! operator checks before planning, so an example never lands as `InvalidSpec`.

use std::path::{Path, PathBuf};

use dynamo_operator::crd::{DynamoCluster, DynamoClusterSpec};
use dynamo_operator::planner::Desired;
use serde::Deserialize as _;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The DynamoClusters of every example manifest, with the file each came from.
fn example_clusters() -> Vec<(String, DynamoCluster)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("e2e/manifests"))
        .expect("e2e/manifests")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut clusters = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object = serde_json::Value::deserialize(document).expect("YAML document");
            if object["kind"] == "DynamoCluster" {
                let cluster: DynamoCluster = serde_json::from_value(object)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                clusters.push((file.display().to_string(), cluster));
            }
        }
    }
    clusters
}

fn assert_acceptable(origin: &str, cluster: &DynamoCluster) {
    kube::core::cel::validate_cel(cluster)
        .unwrap_or_else(|e| panic!("{origin}: the CRD's CEL rules refuse it: {e:?}"));
    cluster
        .spec
        .validate()
        .unwrap_or_else(|e| panic!("{origin}: {e}"));
    Desired::from_spec(&cluster.spec).unwrap_or_else(|e| panic!("{origin}: {e}"));
}

#[test]
fn every_example_manifest_passes_the_cel_rules_and_the_operators_checks() {
    let clusters = example_clusters();
    let names: Vec<&str> = clusters
        .iter()
        .map(|(_, c)| c.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["small", "secure", "weighted"]);
    for (origin, cluster) in &clusters {
        assert_acceptable(origin, cluster);
    }
}

#[test]
fn the_weighted_example_derives_weights_from_cpu_and_volume() {
    // Dynamo §4.2: min(4 cores, 200Gi / 50Gi) = 4 units, and the override for node 3.
    let (_, weighted) = example_clusters()
        .into_iter()
        .find(|(_, c)| c.metadata.name.as_deref() == Some("weighted"))
        .unwrap();
    let desired = Desired::from_spec(&weighted.spec).unwrap();
    let weights: Vec<Option<u32>> = (0..4).map(|o| desired.weight(o)).collect();
    assert_eq!(weights, [Some(4), Some(4), Some(4), Some(8)]);
}

#[test]
fn the_charts_cluster_from_values_is_acceptable() {
    let values: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("charts/dynamo-operator/values.yaml")).unwrap(),
    )
    .unwrap();
    let spec: DynamoClusterSpec = serde_json::from_value(values["cluster"]["spec"].clone())
        .expect("values.yaml cluster.spec is a DynamoCluster spec");
    assert_acceptable("values.yaml", &DynamoCluster::new("dynamo", spec));
}
