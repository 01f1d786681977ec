//! Gossip and failure probes (Dynamo §4.8), the node's membership background task.
//!
//! Every interval a node exchanges member tables with one peer (push-pull; the pure
//! merge is [`MemberTable::merge`](crate::membership::MemberTable::merge)), chosen by
//! the core's [`choose_gossip_target`], and retries the peers its failure detector
//! holds down. [`Gossip`] owns both sides: the rounds it starts and its answer to a
//! peer's exchange.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::members::Members;
use crate::membership::{GossipTarget, MemberTable, choose_gossip_target};
use crate::random::{SeededRandom, Stream};
use crate::shutdown::wait_for;
use crate::transport::{ReplicaError, Transport};

/// The gossip subsystem: the handles its rounds need, nothing else.
#[derive(Clone)]
pub struct Gossip {
    members: Arc<Members>,
    transport: Arc<dyn Transport>,
    /// The configured seeds' addresses, our own left out.
    seeds: Vec<String>,
    /// Whether our own address is among the configured seeds.
    i_am_a_seed: bool,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("seeds", &self.seeds)
            .field("i_am_a_seed", &self.i_am_a_seed)
            .finish_non_exhaustive()
    }
}

impl Gossip {
    /// Gossip for the node that advertises `advertise`, with the configured `seeds`.
    pub(crate) fn new(
        members: Arc<Members>,
        transport: Arc<dyn Transport>,
        seeds: &[String],
        advertise: &str,
    ) -> Self {
        Gossip {
            members,
            transport,
            seeds: seeds.iter().filter(|s| *s != advertise).cloned().collect(),
            i_am_a_seed: seeds.iter().any(|s| s == advertise),
        }
    }

    /// Dynamo §4.8: every `interval`, exchange member tables with a random peer and
    /// retry the peers held down. Returns at `shutdown`, after the round under way.
    pub(crate) async fn run(
        self,
        interval: Duration,
        mut random: SeededRandom,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = wait_for(shutdown.clone()) => return,
            }
            self.round(random.next_u64()).await;
            self.probe_round().await;
        }
    }

    /// The random stream a node seeded with `seed` gossips with.
    pub(crate) fn random(seed: u64) -> SeededRandom {
        SeededRandom::new(seed, Stream::Gossip)
    }

    /// One gossip exchange (Dynamo §4.8): with a random reachable peer, or, one time in
    /// four (unless we are a seed) and always while we know no peers, with a seed, so
    /// logical partitions heal. `random` picks the peer.
    pub async fn round(&self, random: u64) {
        let cluster = self.members.cluster();
        let table = cluster.table();
        let target = choose_gossip_target(
            &table,
            cluster.me(),
            random,
            &self.seeds,
            self.i_am_a_seed,
            |peer| cluster.is_available(peer),
        );
        let (peer, address) = match target {
            Some(GossipTarget::Member(id)) => match table.get(&id) {
                Some(member) => (Some(id.clone()), member.address().to_owned()),
                None => return,
            },
            Some(GossipTarget::Seed(address)) => (None, address.clone()),
            // Alone: nothing to exchange (our own join finishes in the transfer loop).
            None => return,
        };
        let result = self.transport.gossip(&address, table).await;
        if let Some(peer) = &peer {
            cluster.record_call(peer, &result);
        }
        match result {
            Ok(theirs) => {
                if let Err(error) = self.members.learn_table(&theirs) {
                    tracing::warn!(%address, %error, "gossip brought an unusable member table");
                }
            }
            Err(error) => tracing::debug!(%address, %error, "gossip failed"),
        }
    }

    /// Retries peers the failure detector holds down, once per retry interval each, with a
    /// gossip exchange; an answer makes the peer available again (Dynamo §4.8.3: "node A
    /// periodically retries B to check for the latter's recovery"). Without this a peer
    /// that recovered while nothing was sent to it would stay down for routing forever.
    pub async fn probe_round(&self) {
        let cluster = self.members.cluster();
        for peer in cluster.poll_probes() {
            let Some(address) = cluster.address_of(&peer) else {
                continue;
            };
            let result = self.transport.gossip(&address, cluster.table()).await;
            cluster.record_call(&peer, &result);
            match result {
                Ok(theirs) => {
                    if let Err(error) = self.members.learn_table(&theirs) {
                        tracing::warn!(%peer, %error, "probe brought an unusable member table");
                    }
                }
                Err(error) => tracing::debug!(%peer, %error, "probe failed"),
            }
        }
    }

    /// The receiving side of a peer's exchange: merge its table, answer with ours.
    ///
    /// # Errors
    /// [`ReplicaError::InvalidArgument`] for a table that cannot be merged.
    pub(crate) fn answer(&self, theirs: &MemberTable) -> Result<MemberTable, ReplicaError> {
        self.members
            .learn_table(theirs)
            .map_err(ReplicaError::InvalidArgument)?;
        Ok(self.members.cluster().table())
    }
}
