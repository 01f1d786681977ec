//! Prints every object the operator's builders make for a `DynamoCluster`, as one
//! multi-document YAML stream: what the controller would apply, for review and for CI,
//! which validates each object against the Kubernetes OpenAPI schema.
//!
//! ```sh
//! render e2e/manifests/small-cluster.yaml     # each DynamoCluster in the file
//! render                                      # a built-in example cluster
//! ```
//!
//! The objects are for reading and validating, not for `kubectl apply`: a cluster read
//! from a file has no uid yet, so owner references point at a placeholder uid, and the
//! StatefulSet has `spec.size` replicas where the operator grows and shrinks it one
//! membership step at a time. The generated admin token and internode secret do hold
//! fresh random tokens.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use dynamo_operator::builders::{
    ADMIN_TOKEN_BYTES, admin_token_secret, client_service, config_map, headless_service,
    internode_token_secret, network_policy, pod_disruption_budget, statefulset,
};
use dynamo_operator::crd::DynamoCluster;
use serde::Deserialize;

/// The uid given to clusters read from a file, which have none until the API server
/// stores them.
const PLACEHOLDER_UID: &str = "00000000-0000-4000-8000-000000000000";

/// Render the objects the operator builds for DynamoCluster resources.
#[derive(Parser, Debug)]
#[command(name = "render", version)]
struct Args {
    /// YAML file with one or more DynamoCluster documents (other kinds are skipped);
    /// a built-in example cluster when omitted.
    file: Option<PathBuf>,
    /// Namespace the operator runs in: the NetworkPolicy admits its pods to the
    /// internode/admin port.
    #[arg(long, default_value = "dynamo-system")]
    operator_namespace: String,
    /// Namespace for clusters whose metadata names none.
    #[arg(long, default_value = "default")]
    namespace: String,
}

/// The built-in example: most builder branches at once (TLS, a generated admin token,
/// weights from an override, resources, a storage class).
const EXAMPLE: &str = r#"
apiVersion: dynamo.example.org/v1alpha1
kind: DynamoCluster
metadata:
  name: example
spec:
  size: 3
  image: dynamo-node:dev
  imagePullPolicy: IfNotPresent
  replication: {"n": 3, r: 2, w: 2}
  weights: {default: 1, overrides: {"2": 2}}
  storage: {size: 1Gi, storageClassName: standard, retainOnScaleDown: false}
  resources:
    requests: {cpu: 500m, memory: 256Mi}
    limits: {memory: 512Mi}
  tls: {secretName: example-tls}
"#;

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("render: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let (text, source) = match &args.file {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (EXAMPLE.to_owned(), "the built-in example".to_owned()),
    };
    let clusters = clusters(&text).with_context(|| format!("in {source}"))?;
    if clusters.is_empty() {
        bail!("{source} holds no DynamoCluster");
    }
    let mut out = String::new();
    for mut cluster in clusters {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        cluster
            .metadata
            .namespace
            .get_or_insert_with(|| args.namespace.clone());
        cluster
            .metadata
            .uid
            .get_or_insert_with(|| PLACEHOLDER_UID.to_owned());
        cluster
            .spec
            .validate()
            .with_context(|| format!("DynamoCluster {name:?} in {source}"))?;
        for object in objects(&cluster, &args.operator_namespace)
            .with_context(|| format!("DynamoCluster {name:?} in {source}"))?
        {
            out.push_str("---\n");
            out.push_str(&dynamo_operator::yaml::to_string(&object)?);
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// The DynamoCluster documents of a YAML stream, in order.
fn clusters(text: &str) -> anyhow::Result<Vec<DynamoCluster>> {
    let mut found = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("document {}: not YAML", index + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
        if kind != Some("DynamoCluster") {
            eprintln!(
                "render: skipping document {} (kind {})",
                index + 1,
                kind.unwrap_or("unset")
            );
            continue;
        }
        let cluster: DynamoCluster = serde_yaml::from_value(value)
            .with_context(|| format!("document {}: not a valid DynamoCluster", index + 1))?;
        if cluster.metadata.name.is_none() {
            bail!(
                "document {}: DynamoCluster without metadata.name",
                index + 1
            );
        }
        found.push(cluster);
    }
    Ok(found)
}

/// Every object the builders make for `cluster`, in the order the controller applies
/// them.
fn objects(
    cluster: &DynamoCluster,
    operator_namespace: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let replicas = u32::try_from(cluster.spec.size).context("spec.size is negative")?;
    let mut random = [0u8; ADMIN_TOKEN_BYTES];
    getrandom::fill(&mut random).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
    let mut objects = Vec::new();
    if let Some(secret) = admin_token_secret(cluster, &random)? {
        objects.push(serde_json::to_value(secret)?);
    }
    // Drawn apart from the admin token: knowing one must not give the other.
    getrandom::fill(&mut random).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
    objects.push(serde_json::to_value(internode_token_secret(
        cluster, &random,
    )?)?);
    objects.push(serde_json::to_value(config_map(cluster)?)?);
    objects.push(serde_json::to_value(headless_service(cluster)?)?);
    objects.push(serde_json::to_value(client_service(cluster)?)?);
    objects.push(serde_json::to_value(network_policy(
        cluster,
        operator_namespace,
    )?)?);
    objects.push(serde_json::to_value(pod_disruption_budget(cluster)?)?);
    objects.push(serde_json::to_value(statefulset(cluster, replicas)?)?);
    Ok(objects)
}
