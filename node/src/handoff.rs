//! Hinted handoff delivery (Dynamo §4.6): a stand-in hands the writes it holds for an
//! unreachable home node back once that node answers, and deletes each hint only after
//! the home acknowledged it (compare-and-delete, so a hint updated meanwhile survives).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::NodeId;
use crate::node::NodeShared;
use crate::transport::{ReplicaWrite, TransportError};

/// Hints delivered per target per handoff round.
const HANDOFF_BATCH: usize = 128;

/// Dynamo §4.6: hand hinted writes to their home nodes once those answer again.
pub(crate) async fn handoff_loop(
    node: Arc<NodeShared>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        ticker.tick().await;
        node.handoff_round().await;
    }
}

impl NodeShared {
    /// One round of hinted handoff (Dynamo §4.6): for every node we hold hints for that
    /// is reachable (or due for a probe), deliver a batch and delete each hint its home
    /// acknowledged.
    pub async fn handoff_round(&self) {
        let targets = match self.store.engine().hint_targets() {
            Ok(targets) => targets,
            Err(error) => {
                tracing::warn!(%error, "reading hint targets");
                return;
            }
        };
        self.refresh_gauges(&targets);
        for (home, _) in targets {
            // Down homes come back through `probe_round`.
            if !self.cluster.is_available(&home) {
                continue;
            }
            if let Err(error) = deliver_hints(self, &home).await {
                tracing::debug!(%home, %error, "hint delivery paused");
            }
        }
    }
}

async fn deliver_hints(node: &NodeShared, home: &NodeId) -> Result<(), String> {
    let address = node
        .cluster
        .address_of(home)
        .ok_or_else(|| format!("no address for {home}"))?;
    let hints = node
        .store
        .hints_for(home, None, HANDOFF_BATCH)
        .map_err(|e| e.to_string())?;
    for hint in hints {
        let write = ReplicaWrite {
            key: hint.key.clone(),
            state: hint.state.clone(),
            durable: true,
            hint_for: None,
        };
        match node.transport.write(&address, write).await {
            Ok(()) => {
                node.cluster.record_success(home);
                node.store
                    .remove_hint(home, &hint)
                    .map_err(|e| e.to_string())?;
            }
            Err(error) => {
                if !matches!(error, TransportError::Rejected { .. }) {
                    node.cluster.record_failure(home);
                }
                return Err(error.to_string());
            }
        }
    }
    Ok(())
}
