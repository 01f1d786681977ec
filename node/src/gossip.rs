//! Gossip and failure probes (Dynamo §4.8), the node's membership background task.
//!
//! Every interval a node exchanges member tables with one peer (push-pull; the pure
//! merge is [`MemberTable::merge`](crate::membership::MemberTable::merge)) and retries
//! the peers its failure detector holds down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::NodeId;
use crate::membership::MemberState;
use crate::node::NodeShared;

/// A small xorshift generator for choosing gossip peers: no need for cryptographic
/// randomness, and seeding it from the incarnation keeps nodes from moving in step.
#[derive(Debug)]
struct PeerPicker(u64);

impl PeerPicker {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Dynamo §4.8: every interval, exchange member tables with a random peer.
pub(crate) async fn gossip_loop(
    node: Arc<NodeShared>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut picker = PeerPicker(node.incarnation);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*shutdown.borrow() {
        ticker.tick().await;
        node.gossip_round(picker.next()).await;
        node.probe_round().await;
    }
}

impl NodeShared {
    /// One gossip exchange (Dynamo §4.8): with a random reachable peer, or, one time in
    /// four and always while we know no peers, with a seed, so logical partitions heal.
    /// `random` picks the peer (the shell's generator; tests pass fixed values).
    pub async fn gossip_round(&self, random: u64) {
        let table = self.cluster.table();
        let me = self.cluster.me();
        let peers: Vec<(NodeId, String)> = table
            .iter()
            .filter(|m| m.id() != me && m.state() != MemberState::Removed)
            .filter(|m| self.cluster.is_available(m.id()))
            .map(|m| (m.id().clone(), m.address().to_owned()))
            .collect();
        let seeds: Vec<&String> = self
            .seeds
            .iter()
            .filter(|s| **s != self.advertise)
            .collect();
        let pick = |len: usize| usize::try_from((random / 4) % len.max(1) as u64).unwrap_or(0);
        let (peer, address) = if !seeds.is_empty() && (peers.is_empty() || random % 4 == 0) {
            (None, seeds[pick(seeds.len())].clone())
        } else if let Some((id, address)) = peers.get(pick(peers.len())) {
            (Some(id.clone()), address.clone())
        } else {
            // Alone: nothing to exchange (our own join finishes in the transfer loop).
            return;
        };
        match self.transport.gossip(&address, table).await {
            Ok(theirs) => {
                if let Some(peer) = &peer {
                    self.cluster.record_success(peer);
                }
                if let Err(error) = self.learn_table(&theirs) {
                    tracing::warn!(%address, %error, "gossip brought an unusable member table");
                }
            }
            Err(error) => {
                if let Some(peer) = &peer {
                    if !error.is_answer() {
                        self.cluster.record_failure(peer);
                    }
                }
                tracing::debug!(%address, %error, "gossip failed");
            }
        }
    }

    /// Retries peers the failure detector holds down, once per retry interval each, with a
    /// gossip exchange; an answer makes the peer available again (Dynamo §4.8.3: "node A
    /// periodically retries B to check for the latter's recovery"). Without this a peer
    /// that recovered while nothing was sent to it would stay down for routing forever.
    pub async fn probe_round(&self) {
        for peer in self.cluster.poll_probes() {
            let Some(address) = self.cluster.address_of(&peer) else {
                continue;
            };
            match self.transport.gossip(&address, self.cluster.table()).await {
                Ok(theirs) => {
                    self.cluster.record_success(&peer);
                    if let Err(error) = self.learn_table(&theirs) {
                        tracing::warn!(%peer, %error, "probe brought an unusable member table");
                    }
                }
                Err(error) if error.is_answer() => self.cluster.record_success(&peer),
                Err(error) => {
                    self.cluster.record_failure(&peer);
                    tracing::debug!(%peer, %error, "probe failed; still down");
                }
            }
        }
    }
}
