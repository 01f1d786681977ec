//! Test objects shared by the unit tests.

use crate::crd::{DynamoCluster, DynamoClusterSpec};

/// A spec with only the required fields, so everything else takes its default.
pub(crate) fn spec(size: i32) -> DynamoClusterSpec {
    serde_json::from_value(serde_json::json!({"size": size, "image": "dynamo-node:dev"}))
        .expect("minimal spec deserializes")
}

/// A cluster `name` in namespace `ns` with a uid, as the API server returns it.
pub(crate) fn cluster(name: &str, ns: &str, size: i32) -> DynamoCluster {
    let mut cluster = DynamoCluster::new(name, spec(size));
    cluster.metadata.namespace = Some(ns.to_owned());
    cluster.metadata.uid = Some("6b1d2c9e-0000-4000-8000-000000000001".to_owned());
    cluster
}
