//! `dynamo-operator`: runs the DynamoCluster controller while this replica holds the
//! leader Lease, and serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Two replicas are safe: only the Lease holder reconciles. A replica that loses the
//! Lease exits (status 1) instead of trying to stop half-way through a pass; its
//! Deployment restarts it as a follower.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use dynamo_operator::admin::GrpcAdmin;
use dynamo_operator::controller::{self, Context, Intervals, PeerDns};
use dynamo_operator::http::{Health, router};
use dynamo_operator::leader::{Outcome, run_while_leader};
use dynamo_operator::metrics::Metrics;
use kube::runtime::events::Reporter;
use kube_lease_manager::LeaseManagerBuilder;
use tracing_subscriber::EnvFilter;

/// The Kubernetes operator of the Dynamo key-value store.
#[derive(Debug, Parser)]
#[command(name = "dynamo-operator", version)]
struct Args {
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(
        long,
        env = "DYNAMO_OPERATOR_HTTP_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    http_listen: SocketAddr,
    /// Run without leader election (a single replica only).
    #[arg(long, env = "DYNAMO_OPERATOR_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "DYNAMO_OPERATOR_LEASE_NAME",
        default_value = "dynamo-operator"
    )]
    lease_name: String,
    /// Namespace of the leader Lease (the client's default namespace when unset: the
    /// operator pod's own, in a cluster).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// The operator's own namespace: each cluster's NetworkPolicy admits the operator's
    /// pods from there to the nodes' admin port (the client's default namespace when
    /// unset: the operator pod's own, in a cluster).
    #[arg(long, env = "POD_NAMESPACE")]
    operator_namespace: Option<String>,
    /// A namespace whose pods (a Prometheus) may scrape the nodes' `/metrics`: each
    /// cluster's NetworkPolicy admits them to the nodes' HTTP port. Repeatable, or
    /// comma-separated.
    #[arg(
        long = "metrics-namespace",
        env = "DYNAMO_OPERATOR_METRICS_NAMESPACES",
        value_delimiter = ',',
        value_parser = namespace_name
    )]
    metrics_namespaces: Vec<String>,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease holder stays leader without renewing.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How long before expiry the holder renews.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lease_grace: Duration,
    /// Deadline of each `Admin` call to a node (connect and call).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    admin_timeout: Duration,
    /// How often a cluster with a step in flight is looked at again.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How often a converged cluster is looked at again.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    resync_interval: Duration,
    /// Log filter, e.g. `info` or `dynamo_operator=debug,kube=info`.
    #[arg(long, env = "DYNAMO_OPERATOR_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, env = "DYNAMO_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Instead of running the controller: a one-off task.
    #[command(subcommand)]
    command: Option<Task>,
}

#[derive(Debug, clap::Subcommand)]
enum Task {
    /// Server-side apply a DynamoCluster from a YAML file, waiting for its CRD to be
    /// served (the Helm chart's post-install Job for `cluster.enabled`). Exit status 2
    /// for a bad file, 1 when the API refuses or the CRD never comes.
    ApplyCluster {
        /// The DynamoCluster's YAML.
        #[arg(long)]
        file: std::path::PathBuf,
        /// How long to wait for the API server to serve DynamoClusters.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        wait_for_crd: Duration,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines with key=value fields.
    Text,
}

fn init_logs(args: &Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(&args)?;
    if let Some(Task::ApplyCluster { file, wait_for_crd }) = &args.command {
        return apply_cluster(file, *wait_for_crd).await;
    }

    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    serve_http(args.http_listen, health.clone()).await?;
    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster or kubeconfig)")?;
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("dynamo-operator-{}", std::process::id()));
    let ctx = context(&args, &client, &identity, &metrics);
    let namespace = args.namespace.clone();

    if args.no_leader_election {
        health.set_ready();
        metrics.set_leader(true);
        tracing::info!("leader election disabled; reconciling");
        controller::run(ctx, namespace.as_deref(), shutdown_signal()).await;
        return Ok(());
    }

    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration.as_secs().max(1))
        .with_grace(args.lease_grace.as_secs().max(1))
        .build()
        .await
        .context("setting up leader election")?;
    let (leader, lease_task) = manager.watch().await;
    health.set_ready();
    tracing::info!(lease = %args.lease_name, namespace = %lease_namespace, %identity, "waiting for the leader Lease");

    let outcome = run_while_leader(leader, shutdown_signal(), |stop| {
        metrics.set_leader(true);
        tracing::info!(%identity, "became leader; reconciling");
        controller::run(ctx, namespace.as_deref(), async move {
            let _ = stop.await;
        })
    })
    .await;
    metrics.set_leader(false);
    // The receiver was dropped with `run_while_leader`, which makes the keeper release
    // the Lease and return.
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Err(error))) => tracing::warn!(%error, "releasing the Lease"),
        Ok(Err(error)) => tracing::warn!(%error, "lease task"),
        Ok(Ok(Ok(_))) | Err(_) => {}
    }
    if outcome == Outcome::Lost {
        anyhow::bail!("lost the leader Lease; exiting so a fresh replica takes over");
    }
    tracing::info!("shut down");
    Ok(())
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` in the background.
async fn serve_http(address: std::net::SocketAddr, health: Health) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let app = router(health);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "HTTP server stopped");
        }
    });
    Ok(())
}

/// What every reconcile pass shares.
fn context(args: &Args, client: &kube::Client, identity: &str, metrics: &Metrics) -> Arc<Context> {
    let operator_namespace = args
        .operator_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    Arc::new(
        Context::new(
            client.clone(),
            Arc::new(GrpcAdmin::new(args.admin_timeout)),
            Arc::new(PeerDns),
            operator_namespace,
            Reporter {
                controller: "dynamo-operator".to_owned(),
                instance: Some(identity.to_owned()),
            },
            metrics.clone(),
            Intervals {
                poll: args.poll_interval,
                resync: args.resync_interval,
                ..Intervals::default()
            },
        )
        .with_metrics_namespaces(args.metrics_namespaces.clone()),
    )
}

/// A namespace name: a DNS-1123 label (lowercase letters, digits and `-`, starting and
/// ending with a letter or digit, at most 63 characters).
fn namespace_name(name: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a namespace name (a DNS-1123 label)"
        ))
    }
}

/// `apply-cluster`: a bad file exits 2 before any API call; API failures exit 1.
async fn apply_cluster(file: &std::path::Path, wait: Duration) -> anyhow::Result<()> {
    use dynamo_operator::apply_cluster::{MAX_FILE_BYTES, apply_cluster, parse_cluster};
    use std::io::Read as _;
    let mut text = String::new();
    let read = std::fs::File::open(file).and_then(|f| {
        // One byte more than the bound, so a larger file is told apart.
        f.take(u64::try_from(MAX_FILE_BYTES).unwrap_or(u64::MAX) + 1)
            .read_to_string(&mut text)
    });
    let cluster = read
        .map_err(|e| format!("reading {}: {e}", file.display()))
        .and_then(|_| parse_cluster(&text).map_err(|e| format!("{}: {e}", file.display())));
    let cluster = match cluster {
        Ok(cluster) => cluster,
        Err(message) => {
            eprintln!("dynamo-operator apply-cluster: {message}");
            std::process::exit(2);
        }
    };
    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster or kubeconfig)")?;
    let namespace = client.default_namespace().to_owned();
    apply_cluster(client, &cluster, &namespace, wait, Duration::from_secs(1))
        .await
        .context("apply-cluster")?;
    tracing::info!(cluster = %cluster.metadata.name.clone().unwrap_or_default(), "applied");
    Ok(())
}
