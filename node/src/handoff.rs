//! Hinted handoff delivery (Dynamo §4.6): a stand-in hands the writes it holds for an
//! unreachable home node back once that node answers, and deletes each hint only after
//! the home acknowledged it (compare-and-delete, so a hint updated meanwhile survives).
//!
//! Delivery is background work: each hint costs one unit of the node's
//! [`BackgroundBudget`](crate::background::BackgroundBudget), and a round stops when
//! the budget refuses, so a large backlog drains over several rounds instead of
//! competing with foreground requests (Dynamo §6.5).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::NodeId;
use crate::admission::WorkKind;
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
    /// acknowledged. Each hint takes one unit of the background budget; the round ends
    /// early when the budget refuses.
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
            match deliver_hints(self, &home).await {
                Ok(Budget::Left) => {}
                Ok(Budget::Spent) => {
                    tracing::debug!(%home, "background budget spent; handoff resumes next round");
                    break;
                }
                Err(error) => tracing::debug!(%home, %error, "hint delivery paused"),
            }
        }
    }
}

/// Whether the background budget had room for everything a delivery wanted.
enum Budget {
    Left,
    Spent,
}

async fn deliver_hints(node: &NodeShared, home: &NodeId) -> Result<Budget, String> {
    let address = node
        .cluster
        .address_of(home)
        .ok_or_else(|| format!("no address for {home}"))?;
    let hints = node
        .store
        .hints_for(home, None, HANDOFF_BATCH)
        .map_err(|e| e.to_string())?;
    let wanted = hints.len();
    let granted = node
        .background
        .take(WorkKind::Handoff, u64::try_from(wanted).unwrap_or(u64::MAX));
    let granted = usize::try_from(granted).unwrap_or(usize::MAX);
    let outcome = if granted < wanted {
        Budget::Spent
    } else {
        Budget::Left
    };
    for hint in hints.into_iter().take(granted) {
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
    Ok(outcome)
}
