//! Hinted handoff delivery (Dynamo §4.6): a stand-in hands the writes it holds for an
//! unreachable home node back once that node answers, and deletes each hint only after
//! the home acknowledged it (compare-and-delete, so a hint updated meanwhile survives).
//!
//! A hint whose home is leaving the cluster (`Leaving`) or has left it (`Removed`)
//! must not go (only) there: a removed home never answers, and a leaving home that
//! already pushed the key's range to its new owners would keep the write where no
//! read will look once it is gone. Dropping the hint instead could lose the write,
//! since the stand-in is no replica of the key (so anti-entropy never carries it).
//! Such a hint is *redirected*: its state is written to every home replica the key has
//! now (the union of the settled and target preference lists, merged locally where
//! that is this node), and the hint is deleted once all of them acknowledged.
//!
//! The same goes for a hint whose home is missing from this node's member table, so
//! has no address: its join has not reached this node yet, or was lost with the only
//! disk that recorded it.
//!
//! Likewise a node that is leaving must not take the hints it holds with it: a hint
//! whose home is down goes to the key's home replicas that are up (at least one), and
//! the leave completes only once no hint is left (see [`crate::transfer`]).
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
use crate::antientropy::AntiEntropyConfig;
use crate::background::BackgroundBudget;
use crate::cluster::Cluster;
use crate::membership::MemberState;
use crate::metrics::Metrics;
use crate::quorum::QuorumConfig;
use crate::shutdown::wait_for;
use crate::storage::Durability;
use crate::store::{Hint, Store};
use crate::transport::{ReplicaWrite, Transport};

/// Hints delivered per target per handoff round.
const HANDOFF_BATCH: usize = 128;

/// The hinted handoff subsystem: the handles its rounds need, nothing else.
#[derive(Clone)]
pub struct Handoff {
    store: Store,
    cluster: Arc<Cluster>,
    transport: Arc<dyn Transport>,
    background: Arc<BackgroundBudget>,
    metrics: Metrics,
    /// N: a redirected hint goes to the key's N home replicas.
    n: usize,
    /// When anti-entropy runs, hints older than its purge horizon are dropped.
    anti_entropy: AntiEntropyConfig,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("node", self.cluster.me())
            .finish_non_exhaustive()
    }
}

impl Handoff {
    /// Handoff over these handles.
    pub(crate) fn new(
        store: Store,
        cluster: Arc<Cluster>,
        transport: Arc<dyn Transport>,
        background: Arc<BackgroundBudget>,
        metrics: Metrics,
        quorum: QuorumConfig,
        anti_entropy: AntiEntropyConfig,
    ) -> Self {
        Handoff {
            store,
            cluster,
            transport,
            background,
            metrics,
            n: usize::try_from(quorum.n()).unwrap_or(usize::MAX),
            anti_entropy,
        }
    }

    /// Dynamo §4.6: every `interval`, hand hinted writes to their home nodes once those
    /// answer again; `after_round` sees the hint backlog per home each round. Returns at
    /// `shutdown`, after the round under way.
    pub(crate) async fn run(
        self,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
        after_round: impl Fn(&[(NodeId, u64)]),
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = wait_for(shutdown.clone()) => return,
            }
            after_round(&self.round().await);
        }
    }

    /// One round of hinted handoff (Dynamo §4.6): for every node we hold hints for that
    /// is reachable (or due for a probe), deliver a batch and delete each hint its home
    /// acknowledged. Each hint takes one unit of the background budget; the round ends
    /// early when the budget refuses. Returns the hint backlog per home found at the
    /// start (for the gauges).
    pub async fn round(&self) -> Vec<(NodeId, u64)> {
        let targets = match self.store.engine().hint_targets() {
            Ok(targets) => targets,
            Err(error) => {
                tracing::warn!(%error, "reading hint targets");
                return Vec::new();
            }
        };
        for (home, _) in &targets {
            let home = home.clone();
            let table = self.cluster.table();
            let state_of = |node: &NodeId| table.get(node).map(|m| m.state());
            let departing = |node: &NodeId| {
                matches!(
                    state_of(node),
                    Some(MemberState::Leaving | MemberState::Removed)
                )
            };
            let available = self.cluster.is_available(&home);
            // A home missing from our table has no address to deliver to: its join
            // has not reached us yet, or was lost with the disk of the only node that
            // knew it. Either way the key's current replicas are a safe place for the
            // write (anti-entropy brings it to the home once it is one of them).
            let delivered = if departing(&home) || state_of(&home).is_none() {
                redirect_hints(self, &home, Redirect::ToEveryHome).await
            } else if available {
                deliver_hints(self, &home).await
            } else if departing(self.cluster.me()) {
                redirect_hints(self, &home, Redirect::ToAvailable).await
            } else {
                // Down homes come back through gossip's `probe_round`.
                tracing::trace!(me = %self.cluster.me(), %home, "holding hints until the home answers");
                continue;
            };
            match delivered {
                Ok(Budget::Left) => {}
                Ok(Budget::Spent) => {
                    tracing::debug!(%home, "background budget spent; handoff resumes next round");
                    break;
                }
                Err(error) => tracing::debug!(%home, %error, "hint delivery paused"),
            }
        }
        targets
    }
}

/// Whether the background budget had room for everything a delivery wanted.
enum Budget {
    Left,
    Spent,
}

/// Where [`redirect_hints`] sends a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redirect {
    /// To every home replica of the key: the hint's own home is leaving or gone.
    ToEveryHome,
    /// To every home replica believed up but this node, at least one: this node is
    /// leaving and its hint's home is down, so the hint must not leave with it; a
    /// home replica holding the write is enough, anti-entropy brings it to the rest.
    ToAvailable,
}

/// Hints a round dropped as too old to deliver, logged once per batch when dropped.
#[derive(Default)]
struct Expired {
    dropped: u64,
    home: Option<NodeId>,
}

impl Expired {
    /// Drops `hint` (held for `home`) if it is too old to deliver
    /// ([`deliverable`](crate::antientropy::plan::deliverable)): once its tombstone
    /// could be purged, delivering it could bring a deleted value back. Never when
    /// tombstones are not purged (anti-entropy off). Returns whether it was dropped.
    fn drop_if_too_old(
        &mut self,
        node: &Handoff,
        home: &NodeId,
        hint: &Hint,
    ) -> Result<bool, String> {
        let config = &node.anti_entropy;
        if !config.enabled()
            || crate::antientropy::plan::deliverable(
                &hint.state,
                node.cluster.clock().wall(),
                config.tombstone_grace,
            )
        {
            return Ok(false);
        }
        node.store
            .remove_hint(home, hint)
            .map_err(|e| e.to_string())?;
        node.metrics.count_stale_copy("hint");
        self.dropped += 1;
        self.home = Some(home.clone());
        Ok(true)
    }
}

impl Drop for Expired {
    fn drop(&mut self) {
        if let Some(home) = &self.home {
            tracing::warn!(
                %home,
                dropped = self.dropped,
                "dropped hints too old to deliver (older than three quarters of the tombstone grace): their deletes could already be purged"
            );
        }
    }
}

/// Takes up to one batch of `home`'s hints from the background budget: the hints
/// granted, and whether the budget covered the whole batch.
fn granted_hints(node: &Handoff, home: &NodeId) -> Result<(Vec<Hint>, Budget), String> {
    let mut hints = node
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
    hints.truncate(granted);
    Ok((hints, outcome))
}

/// Delivers the hints held for `home`, which is leaving or has left, to each key's
/// current home replicas instead (see the module docs); a hint is deleted once every one of
/// them acknowledged, and the batch stops at the first failure (retried next round).
async fn redirect_hints(node: &Handoff, home: &NodeId, mode: Redirect) -> Result<Budget, String> {
    let (hints, outcome) = granted_hints(node, home)?;
    tracing::trace!(me = %node.cluster.me(), %home, ?mode, hints = hints.len(), "redirecting hints");
    let n = node.n;
    let me = node.cluster.me().clone();
    let mut expired = Expired::default();
    for hint in hints {
        if expired.drop_if_too_old(node, home, &hint)? {
            continue;
        }
        let write_set = node.cluster.write_set(&hint.key, n);
        let mut replicas: Vec<&NodeId> = write_set.extended
            [..write_set.home.min(write_set.extended.len())]
            .iter()
            .collect();
        if mode == Redirect::ToAvailable {
            replicas.retain(|r| **r != me && node.cluster.is_available(r));
        }
        if replicas.is_empty() {
            return Err(format!("no replica to take a hint held for {home}"));
        }
        for replica in replicas {
            if *replica == me {
                node.store
                    .merge(&hint.key, &hint.state, Durability::Sync)
                    .map_err(|e| e.to_string())?;
                continue;
            }
            let address = node
                .cluster
                .address_of(replica)
                .ok_or_else(|| format!("no address for {replica}"))?;
            let write = ReplicaWrite {
                key: hint.key.clone(),
                state: hint.state.clone(),
                durable: true,
                hint_for: None,
            };
            let result = node.transport.write(&address, write).await;
            node.cluster.record_call(replica, &result);
            result.map_err(|error| format!("redirecting a hint to {replica}: {error}"))?;
        }
        node.store
            .remove_hint(home, &hint)
            .map_err(|e| e.to_string())?;
    }
    Ok(outcome)
}

async fn deliver_hints(node: &Handoff, home: &NodeId) -> Result<Budget, String> {
    let address = node
        .cluster
        .address_of(home)
        .ok_or_else(|| format!("no address for {home}"))?;
    let (hints, outcome) = granted_hints(node, home)?;
    tracing::trace!(%home, hints = hints.len(), "delivering hints");
    let mut expired = Expired::default();
    for hint in hints {
        if expired.drop_if_too_old(node, home, &hint)? {
            continue;
        }
        let write = ReplicaWrite {
            key: hint.key.clone(),
            state: hint.state.clone(),
            durable: true,
            hint_for: None,
        };
        let result = node.transport.write(&address, write).await;
        node.cluster.record_call(home, &result);
        result.map_err(|error| error.to_string())?;
        node.store
            .remove_hint(home, &hint)
            .map_err(|e| e.to_string())?;
    }
    Ok(outcome)
}
