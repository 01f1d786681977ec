//! `dynamo-operator apply-cluster`: server-side applies a `DynamoCluster` from a file,
//! waiting for its CRD. The Helm chart runs it as a post-install/post-upgrade Job for
//! `cluster.enabled`, because Helm resolves every kind of a release before it creates
//! anything: a `DynamoCluster` among the chart's templates fails a first install, whose
//! CRD is created by the same release. The Job runs after the CRD exists, and retries
//! while the API server does not serve the kind yet.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::crd::{DynamoCluster, SpecError};

/// The field manager of the clusters this applies (not the controller's: the chart's
/// values own the spec).
pub const FIELD_MANAGER: &str = "dynamo-operator-apply-cluster";

/// The largest file read: a DynamoCluster is a few kilobytes.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Why a cluster file cannot be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("the file holds {0} bytes, more than {MAX_FILE_BYTES}")]
    TooLarge(usize),
    /// Not YAML of a DynamoCluster.
    #[error("not a DynamoCluster: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// Another kind or API version.
    #[error("expected apiVersion dynamo.example.org/v1alpha1, kind DynamoCluster, got {0}")]
    WrongKind(String),
    /// No `metadata.name`.
    #[error("the DynamoCluster has no metadata.name")]
    NoName,
    /// The spec is invalid.
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    /// The API server did not serve DynamoClusters within the wait.
    #[error("the API server did not serve DynamoClusters within {0:?}: is the CRD installed?")]
    NoCrd(Duration),
    /// The API refused the apply.
    #[error("applying the DynamoCluster: {0}")]
    Kube(#[from] kube::Error),
}

impl ApplyError {
    /// Whether the file is at fault (a usage error) rather than the API.
    #[must_use]
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::TooLarge(_) | Self::Parse(_) | Self::WrongKind(_) | Self::NoName | Self::Spec(_)
        )
    }
}

/// The DynamoCluster in `text` (YAML), checked as the operator would check its spec.
///
/// # Errors
/// [`ApplyError`] for a file that is too large, not a DynamoCluster, unnamed or invalid.
pub fn parse_cluster(text: &str) -> Result<DynamoCluster, ApplyError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ApplyError::TooLarge(text.len()));
    }
    let value: serde_yaml::Value = serde_yaml::from_str(text)?;
    let api_version = value.get("apiVersion").and_then(serde_yaml::Value::as_str);
    let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
    if (api_version, kind) != (Some("dynamo.example.org/v1alpha1"), Some("DynamoCluster")) {
        return Err(ApplyError::WrongKind(format!(
            "{} {}",
            api_version.unwrap_or("(none)"),
            kind.unwrap_or("(none)")
        )));
    }
    let cluster: DynamoCluster = serde_yaml::from_value(value)?;
    if cluster.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(ApplyError::NoName);
    }
    cluster.spec.validate()?;
    Ok(cluster)
}

/// Server-side applies `cluster` in `namespace` (its own, if it names one), retrying
/// every `retry` while the API server answers 404 for the kind (its CRD not created or
/// not established yet), for at most `wait`.
///
/// # Errors
/// [`ApplyError::NoCrd`] when the wait runs out, [`ApplyError::Kube`] for any other
/// failure.
pub async fn apply_cluster(
    client: Client,
    cluster: &DynamoCluster,
    namespace: &str,
    wait: Duration,
    retry: Duration,
) -> Result<(), ApplyError> {
    let namespace = cluster.namespace().unwrap_or_else(|| namespace.to_owned());
    let api: Api<DynamoCluster> = Api::namespaced(client, &namespace);
    let name = cluster.name_any();
    // Only what the file says: no status, no server-set metadata.
    let mut object = DynamoCluster::new(&name, cluster.spec.clone());
    object.metadata.labels.clone_from(&cluster.metadata.labels);
    object
        .metadata
        .annotations
        .clone_from(&cluster.metadata.annotations);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(response)) if response.code == 404 => {
                if tokio::time::Instant::now() + retry > deadline {
                    return Err(ApplyError::NoCrd(wait));
                }
                tracing::info!(cluster = name, "DynamoClusters not served yet; retrying");
                tokio::time::sleep(retry).await;
            }
            Err(other) => return Err(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: dynamo.example.org/v1alpha1
kind: DynamoCluster
metadata:
  name: dynamo
  labels: {team: storage}
spec:
  size: 3
  image: dynamo-node:0.1.0
  replication: {"n": 3, r: 2, w: 2}
"#;

    #[test]
    fn a_valid_cluster_parses() {
        let cluster = parse_cluster(GOOD).unwrap();
        assert_eq!(cluster.name_any(), "dynamo");
        assert_eq!(cluster.spec.size, 3);
        assert_eq!(cluster.labels()["team"], "storage");
    }

    #[test]
    fn bad_files_are_refused_with_what_is_wrong() {
        let wrong_kind = GOOD.replace("kind: DynamoCluster", "kind: StatefulSet");
        assert!(matches!(
            parse_cluster(&wrong_kind),
            Err(ApplyError::WrongKind(k)) if k.contains("StatefulSet")
        ));
        let unnamed = GOOD.replace("  name: dynamo\n", "");
        assert!(matches!(parse_cluster(&unnamed), Err(ApplyError::NoName)));
        let bad_quorum = GOOD.replace("r: 2", "r: 4");
        assert!(matches!(
            parse_cluster(&bad_quorum),
            Err(ApplyError::Spec(_))
        ));
        assert!(matches!(
            parse_cluster("size: [unclosed"),
            Err(ApplyError::Parse(_))
        ));
        let huge = "#".repeat(MAX_FILE_BYTES + 1);
        assert!(matches!(parse_cluster(&huge), Err(ApplyError::TooLarge(_))));
        for error in [
            parse_cluster(&wrong_kind).unwrap_err(),
            parse_cluster(&huge).unwrap_err(),
        ] {
            assert!(error.is_bad_input(), "{error}");
        }
        assert!(!ApplyError::NoCrd(Duration::from_secs(1)).is_bad_input());
    }
}
