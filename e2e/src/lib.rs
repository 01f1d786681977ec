//! The multi-process fault suite's harness (see `e2e/README.md`).
//!
//! Tests start real `dynamo-node` processes (the binary cargo built for the workspace),
//! on loopback or each in a network namespace of its own, drive a client workload that
//! records every operation in a [`dynamo_node::history::History`], inject faults (SIGKILL
//! and restart, SIGSTOP/SIGCONT, a wiped data directory, a node added or decommissioned,
//! a cut network link), heal, and hand the history and a dump of every replica to
//! [`dynamo_node::history::check`], whose verdict decides the test.
//!
//! * [`netns`]: network namespaces joined by a bridge, and links cut and healed with
//!   `ip link set ... down/up` (root only; tests skip with a message where they cannot
//!   be made).
//! * [`process`]: one node process: start, kill, stop and continue, wipe, restart.
//! * [`cluster`]: a cluster of them: explicit joins and leaves through `Admin`, waiting
//!   for agreement, and the replica dump.
//! * [`k8s`]: the Kubernetes suite's kubectl, helm and a DynamoCluster's pods.
//! * [`workload`]: clients writing unique values with contexts, deleting and recreating,
//!   recording the history.
//!
//! Harness failures (a node that does not start, a namespace that cannot be cleaned)
//! panic with a message naming what and where: this is test support, and a panic is how
//! a test reports them.

pub mod cluster;
pub mod k8s;
pub mod netns;
pub mod process;
pub mod workload;

use std::time::Duration;

/// The bound on every wait in the harness (a node starting, a cluster agreeing,
/// replicas converging); a wait that passes it fails the test with a message.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` every 50 ms until it returns `Some`, or panics after `within` naming
/// `what` and the last reason `check` gave.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    eventually_every(what, within, Duration::from_millis(50), check).await
}

/// [`eventually`], polling every `period`.
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    within: Duration,
    period: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(reason) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}: {reason}")
            }
            Err(_) => tokio::time::sleep(period).await,
        }
    }
}
