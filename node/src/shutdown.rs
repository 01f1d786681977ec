//! The node's shutdown signal: a `watch` channel that turns `true` once, which every
//! listener and background loop selects on.

use tokio::sync::watch;

/// Resolves once `shutdown` turns `true`, or its sender is gone (the node was dropped).
pub(crate) async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
