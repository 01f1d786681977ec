//! One storage node: owns the store, the cluster view, the coordinator and the
//! transport, serves the gRPC APIs, and runs the background loops (gossip, hinted
//! handoff). `dynamo-node` the binary only parses configuration and calls
//! [`Node::start`].
//!
//! Shutdown is an input: [`RunningNode::shutdown`] stops accepting requests, lets
//! in-flight ones finish (tonic's graceful shutdown), flushes storage, and records a
//! clean-shutdown marker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::gossip::Gossip;
use crate::handoff::Handoff;
use crate::members::{META_MEMBERS, Members, MembershipChangeError, announce_self};

use crate::NodeId;
use crate::admission::AdmissionConfig;
use crate::antientropy::{
    AntiEntropy, AntiEntropyConfig, AntiEntropyWorker, BuildProgress, RoundReport,
};
use crate::background::BackgroundBudget;
use crate::cluster::{Clock, Cluster};
use crate::config::NodeConfig;
use crate::coordinator::{Coordinator, CoordinatorConfig, ReadFanout, RequestLimits};
use crate::identity::{ActorIdentity, IdentityError};
use crate::membership::{DetectorConfig, Member, MemberState, MemberTable, MembershipError};
use crate::metrics::Metrics;
use crate::quorum::QuorumConfig;
use crate::ring::PartitionStrategy;
use crate::server::AdminService;
use crate::storage::{Durability, StorageEngine, StorageError};
use crate::store::{Store, StoreError};
use crate::transfer::{
    Allowance, RoundReport as TransferReport, SweepReport, TransferSettings, TransferShared,
    TransferStatus, TransferWorker,
};
use crate::transport::{ReplicaWrite, Transport};
use crate::version::SiblingLimits;

/// Meta record names.
pub(crate) const META_CLEAN_SHUTDOWN: &str = "clean-shutdown";

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The storage engine failed to open or flush.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Persisted node state (member table, incarnation) is unreadable.
    #[error("persisted node state is unreadable: {0}")]
    Corrupt(String),
    /// A listener could not be bound.
    #[error("binding {what} on {address}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Settings that only fail when combined at start.
    #[error("configuration: {0}")]
    Config(String),
    /// A server task failed.
    #[error("server: {0}")]
    Server(String),
}

/// What the node's servers and loops share.
pub struct NodeShared {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) store: Store,
    pub(crate) coordinator: Coordinator,
    pub(crate) quorum: QuorumConfig,
    /// The clock incarnation this start began with: seeds gossip's and anti-entropy's
    /// peer pickers. The current one, renewed at run time, is the store's
    /// ([`Store::identity`]).
    pub(crate) incarnation: u64,
    pub(crate) durability: Durability,
    pub(crate) strategy: PartitionStrategy,
    /// The member table's owner: learns, changes and persists it.
    pub(crate) members: Arc<Members>,
    /// Gossip and failure probes.
    pub(crate) gossip: Gossip,
    /// Hinted handoff delivery.
    pub(crate) handoff: Handoff,
    /// Anti-entropy rounds, tree builds and tombstone purge.
    pub(crate) antientropy_worker: AntiEntropyWorker,
    /// Request counters and gauges, served on `/metrics`.
    pub(crate) metrics: Metrics,
    /// Range transfer settings, progress status and the one-round-at-a-time lock.
    pub(crate) transfer: Arc<TransferShared>,
    /// Range transfer rounds and the stray sweep.
    pub(crate) transfer_worker: TransferWorker,
    /// Merkle trees and anti-entropy settings (Dynamo §4.7); the store reports every
    /// data change to its trees.
    pub(crate) antientropy: Arc<AntiEntropy>,
    /// The budget hinted handoff, range transfer and anti-entropy draw from; fed the
    /// foreground latencies `metrics` observes.
    pub(crate) background: Arc<BackgroundBudget>,
}

impl std::fmt::Debug for NodeShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeShared")
            .field("node", self.cluster.me())
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl NodeShared {
    /// Stores a replica write (and a hint when it stands in for another node), durably
    /// when the write asks for it or the node writes everything durably.
    ///
    /// The merge is an in-memory update done inline; a durable write then waits for a
    /// flush shared with concurrent writes (group commit) without holding a thread.
    pub(crate) async fn store_write(&self, write: &ReplicaWrite) -> Result<(), StoreError> {
        self.apply_write(write)?;
        if self.must_flush(write) {
            self.store.make_durable().await?;
        }
        Ok(())
    }

    /// Applies a replica write in memory (the merge, and the hint when it stands in for
    /// another node), without waiting for durability.
    pub(crate) fn apply_write(&self, write: &ReplicaWrite) -> Result<(), StoreError> {
        self.store
            .merge(&write.key, &write.state, Durability::Buffered)?;
        if let Some(home) = &write.hint_for {
            // Dynamo §4.6: the stand-in keeps the write with a hint naming its home, and
            // hands it over when the home node is back.
            self.store
                .add_hint(home, &write.key, &write.state, Durability::Buffered)?;
        }
        Ok(())
    }

    /// Whether a replica write must be on disk before it is acknowledged.
    pub(crate) fn must_flush(&self, write: &ReplicaWrite) -> bool {
        write.durable || self.durability == Durability::Sync
    }
}

pub use crate::start::{Node, RunningNode};

/// The cluster view from the persisted member table, with this node's current address,
/// client address and zone announced in it (and persisted) where they changed.
fn restore_cluster(
    settings: &NodeSettings,
    engine: &dyn StorageEngine,
    advertise: &str,
) -> Result<Arc<Cluster>, NodeError> {
    let table = match engine.meta_get(META_MEMBERS)? {
        Some(bytes) => MemberTable::decode(&bytes)
            .map_err(|e| NodeError::Corrupt(format!("member table: {e}")))?,
        None => MemberTable::new(),
    };
    let cluster = Arc::new(
        Cluster::new(
            settings.node_id.clone(),
            table,
            settings.strategy,
            settings.detector,
            settings.clock,
        )
        .map_err(|e| NodeError::Corrupt(format!("persisted members form no ring: {e}")))?,
    );
    // Our address may have changed since the table was saved (a restarted pod gets a new
    // IP); announce the current one.
    let me = settings.node_id.clone();
    let moved = cluster
        .table()
        .get(&me)
        .is_some_and(|m| m.state() != MemberState::Removed && m.address() != advertise);
    if moved {
        let (_, table) = cluster
            .change(|t| t.set_address(&me, advertise))
            .map_err(|e| NodeError::Config(e.to_string()))?;
        engine.meta_put(META_MEMBERS, &table.encode(), Durability::Sync)?;
    }
    if let Some(table) = announce_self(
        &cluster,
        settings.client_advertise.as_deref(),
        settings.zone.as_deref(),
    )
    .map_err(|e| NodeError::Config(e.to_string()))?
    {
        engine.meta_put(META_MEMBERS, &table.encode(), Durability::Sync)?;
    }
    if let (Some(zone), Some(entry)) = (&settings.zone, cluster.table().get(cluster.me())) {
        if entry.state() != MemberState::Joining && entry.zone() != Some(zone.as_str()) {
            tracing::warn!(
                configured = %zone,
                in_table = entry.zone().unwrap_or(""),
                "--zone differs from this node's zone in the member table, which stays: \
                 a member's data is laid out for its zone (leave and join again to move it)"
            );
        }
    }
    Ok(cluster)
}

/// A node's protocol settings, free of listeners and files, so tests and the simulator
/// can assemble nodes in memory.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The node's id.
    pub node_id: NodeId,
    /// How the ring is partitioned.
    pub strategy: PartitionStrategy,
    /// Default N, R, W.
    pub quorum: QuorumConfig,
    /// Deadline of one client request.
    pub request_timeout: Duration,
    /// Sync or buffered writes.
    pub durability: Durability,
    /// How many replicas a get asks at first.
    pub read_fanout: ReadFanout,
    /// Client key and value bounds.
    pub limits: RequestLimits,
    /// Sibling and clock bounds.
    pub sibling_limits: SiblingLimits,
    /// Seed addresses for gossip.
    pub seeds: Vec<String>,
    /// Failure detector thresholds.
    pub detector: DetectorConfig,
    /// The node's clocks: the system's, or tokio's for the deterministic simulator.
    pub clock: Clock,
    /// Range transfer interval and per-round allowance.
    pub transfer: TransferSettings,
    /// The address clients reach this node's `Kv` API at, announced in the member table
    /// for partition-aware clients; `None` announces nothing.
    pub client_advertise: Option<String>,
    /// The node's zone, announced in the member table while it joins; `None` for none.
    pub zone: Option<String>,
    /// How concurrent writes reconcile (the same on every node of a cluster).
    pub reconciliation: crate::version::Reconciliation,
    /// Anti-entropy rounds and tombstone purge.
    pub anti_entropy: AntiEntropyConfig,
    /// The background work budget (admission control).
    pub admission: AdmissionConfig,
}

impl NodeSettings {
    /// The coordinator's part of the settings.
    fn coordinator_config(&self, metrics: &Metrics) -> CoordinatorConfig {
        CoordinatorConfig {
            quorum: self.quorum,
            timeout: self.request_timeout,
            durability: self.durability,
            limits: self.limits,
            metrics: metrics.clone(),
            read_fanout: self.read_fanout,
        }
    }

    /// The default settings of an in-memory node `node_id` (Dynamo's common (3, 2, 2),
    /// 2 s timeouts, sync writes): those of [`NodeConfig::in_memory`], so the defaults
    /// live in one place.
    pub fn new(node_id: NodeId) -> Self {
        Self::from_config(&NodeConfig::in_memory(node_id))
    }

    /// The settings a validated configuration describes; everything was checked when
    /// the configuration was made.
    pub fn from_config(config: &NodeConfig) -> Self {
        Self {
            node_id: config.node_id().clone(),
            strategy: config.partitioning(),
            quorum: config.quorum(),
            request_timeout: config.request_timeout(),
            durability: config.durability(),
            read_fanout: config.read_fanout(),
            limits: RequestLimits {
                max_key_bytes: config.max_key_bytes(),
                max_value_bytes: config.max_value_bytes(),
            },
            sibling_limits: config.sibling_limits(),
            seeds: config.seeds().to_vec(),
            detector: DetectorConfig::default(),
            clock: Clock::default(),
            transfer: TransferSettings {
                interval: config.transfer_interval(),
                per_round: Allowance {
                    keys: config.transfer_batch_keys(),
                    bytes: config.transfer_batch_bytes(),
                },
                source_stall: config.transfer_source_stall(),
            },
            // Needs the bound client address: `Node::start` fills it in.
            client_advertise: config.advertise_client().map(str::to_owned),
            zone: config.zone().map(str::to_owned),
            reconciliation: config.reconciliation(),
            anti_entropy: config.anti_entropy(),
            admission: config.admission(),
        }
    }
}

impl NodeShared {
    /// Assembles a node's parts over an opened engine and a transport: loads the
    /// persisted member table, picks the clock incarnation, and announces `advertise`
    /// as our address if it changed.
    ///
    /// # Errors
    /// Unreadable persisted state or storage failures.
    pub fn assemble(
        settings: NodeSettings,
        engine: Arc<dyn StorageEngine>,
        transport: Arc<dyn Transport>,
        advertise: String,
    ) -> Result<Arc<NodeShared>, NodeError> {
        let identity = Arc::new(open_identity(engine.as_ref(), &settings)?);
        let incarnation = identity.incarnation();
        let cluster = restore_cluster(&settings, engine.as_ref(), &advertise)?;
        let antientropy = Arc::new(AntiEntropy::new(settings.anti_entropy));
        let mut store = Store::new(Arc::clone(&engine), settings.sibling_limits, identity)
            .with_reconciliation(settings.reconciliation);
        if settings.anti_entropy.enabled() {
            // Every data change reaches the Merkle trees.
            store = store.with_observer(Arc::clone(antientropy.trees()) as _);
        }
        let metrics = Metrics::new();
        let coordinator = Coordinator::new(
            settings.coordinator_config(&metrics),
            store.clone(),
            Arc::clone(&cluster),
            Arc::clone(&transport),
        );
        let background = BackgroundBudget::new(settings.admission, metrics.clone());
        let members = Arc::new(Members::new(
            Arc::clone(&cluster),
            Arc::clone(&engine),
            settings.client_advertise,
            settings.zone,
        ));
        let gossip = Gossip::new(
            Arc::clone(&members),
            Arc::clone(&transport),
            &settings.seeds,
            &advertise,
        );
        let handoff = Handoff::new(
            store.clone(),
            Arc::clone(&cluster),
            Arc::clone(&transport),
            Arc::clone(&background),
            metrics.clone(),
            settings.quorum,
            settings.anti_entropy,
        );
        let antientropy_worker = AntiEntropyWorker {
            store: store.clone(),
            cluster: Arc::clone(&cluster),
            antientropy: Arc::clone(&antientropy),
            transport: Arc::clone(&transport),
            background: Arc::clone(&background),
            quorum: settings.quorum,
            metrics: metrics.clone(),
            durability: settings.durability,
        };
        let transfer = Arc::new(TransferShared::new(settings.transfer));
        let transfer_worker = TransferWorker {
            cluster: Arc::clone(&cluster),
            store: store.clone(),
            transport: Arc::clone(&transport),
            metrics: metrics.clone(),
            quorum: settings.quorum,
            background: Arc::clone(&background),
            transfer: Arc::clone(&transfer),
            members: Arc::clone(&members),
        };
        Ok(Arc::new(NodeShared {
            transfer_worker,
            handoff,
            antientropy_worker,
            cluster,
            store,
            coordinator,
            quorum: settings.quorum,
            incarnation,
            durability: settings.durability,
            strategy: settings.strategy,
            members,
            gossip,
            metrics,
            transfer,
            antientropy,
            background,
        }))
    }

    /// The node's coordinator (client gets and puts).
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// The node's cluster view.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's background work budget: background work takes its units here
    /// before doing them (see [`BackgroundBudget::take`]).
    pub fn background(&self) -> &Arc<BackgroundBudget> {
        &self.background
    }

    /// The node's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Applies an explicit membership change here, persists it, and returns the changed
    /// member; gossip spreads it (see [`Members::change_membership`]).
    ///
    /// # Errors
    /// The change is refused, or persisting it failed.
    pub fn change_membership(
        &self,
        change: impl FnOnce(&mut MemberTable) -> Result<Member, MembershipError>,
    ) -> Result<Member, MembershipChangeError> {
        self.members.change_membership(change)
    }

    /// Merges a table learned from a peer and persists it if it changed
    /// ([`Members::learn_table`]).
    ///
    /// # Errors
    /// A table that cannot be merged or persisted, as text.
    pub fn learn_table(&self, table: &MemberTable) -> Result<(), String> {
        self.members.learn_table(table)
    }

    /// Writes the member table to disk ([`Members::persist_table`]).
    ///
    /// # Errors
    /// The storage engine failed.
    pub fn persist_table(&self, table: &MemberTable) -> Result<(), StorageError> {
        self.members.persist_table(table)
    }

    /// This node's side of membership: learning, changing and persisting the table.
    pub fn members(&self) -> &Arc<Members> {
        &self.members
    }

    /// One round of hinted handoff ([`Handoff::round`]), then the gauges, as the
    /// handoff loop does.
    pub async fn handoff_round(&self) {
        let targets = self.handoff.round().await;
        self.refresh_gauges(&targets);
    }

    /// One anti-entropy round ([`AntiEntropyWorker::antientropy_round`]).
    pub async fn antientropy_round(&self, random: u64, now: crate::time::Millis) -> RoundReport {
        self.antientropy_worker.antientropy_round(random, now).await
    }

    /// Brings the Merkle trees in line with the ring
    /// ([`AntiEntropyWorker::refresh_trees`]).
    pub async fn refresh_trees(&self) -> BuildProgress {
        self.antientropy_worker.refresh_trees().await
    }

    /// The transfer allowance the background budget admits of `wanted`
    /// ([`TransferWorker::admitted_transfer_allowance`]).
    pub fn admitted_transfer_allowance(&self, wanted: Allowance) -> Allowance {
        self.transfer_worker.admitted_transfer_allowance(wanted)
    }

    /// One range transfer round ([`TransferWorker::transfer_round`]).
    pub async fn transfer_round(&self, allowance: Allowance) -> TransferReport {
        self.transfer_worker.transfer_round(allowance).await
    }

    /// One stray sweep round ([`TransferWorker::sweep_round`]).
    pub async fn sweep_round(&self, allowance: Allowance) -> SweepReport {
        self.transfer_worker.sweep_round(allowance).await
    }

    /// This node's transfer status as of the last round.
    pub fn transfer_status_snapshot(&self) -> TransferStatus {
        self.transfer.status()
    }

    /// The `Admin` service over this node's handles.
    pub fn admin_service(&self) -> AdminService {
        AdminService {
            cluster: Arc::clone(&self.cluster),
            members: Arc::clone(&self.members),
            store: self.store.clone(),
            transfer: Arc::clone(&self.transfer),
            antientropy: Arc::clone(&self.antientropy),
            metrics: self.metrics.clone(),
            quorum: self.quorum,
            durability: self.durability,
            strategy: self.strategy,
        }
    }

    /// The gossip subsystem (its rounds, for simulations that drive them one by one).
    pub fn gossip(&self) -> &Gossip {
        &self.gossip
    }
}

/// The node's clock actor at this start: its persisted incarnation after a clean stop,
/// a fresh one otherwise (new or wiped data dir, or an unclean stop in either durability
/// mode, see [`ActorIdentity::open`]). Consumes the clean-shutdown marker.
fn open_identity(
    engine: &dyn StorageEngine,
    settings: &NodeSettings,
) -> Result<ActorIdentity, NodeError> {
    let (node, clock) = (&settings.node_id, settings.clock);
    let clean = engine.meta_get(META_CLEAN_SHUTDOWN)?.is_some();
    engine.meta_remove(META_CLEAN_SHUTDOWN)?;
    ActorIdentity::open(engine, node.clone(), clock, clean).map_err(|e| match e {
        IdentityError::Storage(e) => NodeError::Storage(e),
        other => NodeError::Corrupt(other.to_string()),
    })
}

impl NodeShared {
    /// Updates the gauges `/metrics` shows (hint backlog, members, ownership, keys, the
    /// background budget).
    pub(crate) fn refresh_gauges(&self, hint_targets: &[(NodeId, u64)]) {
        self.metrics
            .set_hint_backlogs(hint_targets.iter().map(|(node, keys)| (node, *keys)));
        let table = self.cluster.table();
        self.metrics.set_members(&table);
        // Membership says who belongs; this says who answers (a SIGSTOPped peer is still
        // a member, and only shows here).
        let me = self.cluster.me();
        let peers: Vec<(NodeId, bool)> = table
            .iter()
            .filter(|m| m.id() != me && m.state() != MemberState::Removed)
            .map(|m| (m.id().clone(), self.cluster.is_available(m.id())))
            .collect();
        self.metrics
            .set_peer_reachability(peers.iter().map(|(peer, up)| (peer, *up)));
        self.metrics
            .set_ring_ownership(&self.cluster.ring().ownership());
        self.metrics.set_keys(self.store.engine().approximate_len());
        // A walk of the data directory: a few dozen entries, more with many large values
        // in blob files, once per refresh (the handoff interval).
        match self.store.engine().space() {
            Ok(space) => self
                .metrics
                .set_storage_space(space.live_bytes, space.disk_bytes),
            Err(error) => tracing::warn!(
                error = %crate::proto::wire::error_chain(&error),
                "cannot measure the storage size"
            ),
        }
        self.metrics
            .set_actor_renewals(self.store.identity().renewals());
        self.background.refresh();
    }
}

impl NodeShared {
    /// The node's anti-entropy state: settings and Merkle trees.
    pub fn antientropy(&self) -> &Arc<AntiEntropy> {
        &self.antientropy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MAX_SIBLINGS_LIMIT, RawConfig};
    use crate::storage::MemoryEngine;
    use crate::transport::MemoryNetwork;

    fn config_with_max_siblings(max: u32) -> Result<NodeConfig, crate::config::ConfigError> {
        let yaml = format!("node-id: n1\nstorage: memory\nmax-siblings: {max}\n");
        NodeConfig::try_from(RawConfig::from_yaml(&yaml).unwrap())
    }

    /// Every `max-siblings` the config check accepts is one a node starts with, and the
    /// first it would refuse is refused by the check, naming the setting.
    #[test]
    fn the_largest_max_siblings_the_config_accepts_starts_a_node() {
        let largest = config_with_max_siblings(MAX_SIBLINGS_LIMIT).unwrap();
        let settings = NodeSettings::from_config(&largest);
        assert_eq!(
            settings.sibling_limits.max_siblings(),
            MAX_SIBLINGS_LIMIT as usize
        );
        let refused = config_with_max_siblings(MAX_SIBLINGS_LIMIT + 1).unwrap_err();
        assert!(refused.to_string().contains("max-siblings"), "{refused}");
    }

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    /// A member table as a node of the previous release persisted it: format 1, each
    /// member `(id, address, weight, state, version)`, no client addresses.
    fn format_1_table(members: &[(&str, &str, u32, u32, u64)]) -> Vec<u8> {
        let mut bytes = vec![1u8];
        bytes = postcard::to_extend(&(members.len() as u64), bytes).unwrap();
        for member in members {
            bytes = postcard::to_extend(member, bytes).unwrap();
        }
        bytes
    }

    /// An upgraded node starts from the table its previous version saved, announces its
    /// client address, and saves the table back in the current format.
    #[test]
    fn a_table_persisted_in_the_previous_format_loads_and_gains_the_client_address() {
        let engine: Arc<dyn StorageEngine> = Arc::new(MemoryEngine::new());
        let old = format_1_table(&[("n1", "n1:7001", 1, 1, 2), ("n2", "n2:7001", 1, 1, 2)]);
        engine
            .meta_put(META_MEMBERS, &old, Durability::Sync)
            .unwrap();
        let mut settings = NodeSettings::new(id("n1"));
        settings.client_advertise = Some("n1:7000".into());
        let network = MemoryNetwork::new(Duration::from_millis(100)).unwrap();
        let shared = NodeShared::assemble(
            settings,
            Arc::clone(&engine),
            Arc::new(network.endpoint("n1:7001")),
            "n1:7001".into(),
        )
        .unwrap();
        let table = shared.cluster().table();
        let me = table.get(&id("n1")).unwrap();
        assert_eq!(
            (me.client_address(), me.version(), me.state()),
            (Some("n1:7000"), 3, MemberState::Member)
        );
        assert_eq!(table.get(&id("n2")).unwrap().client_address(), None);
        assert_eq!(shared.cluster().ring().len(), 2, "the ring is the old one");
        let saved = engine.meta_get(META_MEMBERS).unwrap().unwrap();
        // Format 2, the newest an older node reads: no weight change is pending.
        assert_eq!(saved[0], 2);
        assert_eq!(MemberTable::decode(&saved).unwrap(), table);
    }

    /// A node joined through another node learns of it by gossip and then announces
    /// its client address; without one configured it announces nothing.
    #[test]
    fn a_node_announces_its_client_address_once_it_is_in_the_table() {
        let network = MemoryNetwork::new(Duration::from_millis(100)).unwrap();
        let assemble = |client: Option<&str>| {
            let mut settings = NodeSettings::new(id("n2"));
            settings.client_advertise = client.map(str::to_owned);
            NodeShared::assemble(
                settings,
                Arc::new(MemoryEngine::new()),
                Arc::new(network.endpoint("n2:7001")),
                "n2:7001".into(),
            )
            .unwrap()
        };
        let mut joined_elsewhere = MemberTable::new();
        joined_elsewhere.join(id("n2"), "n2:7001", 1).unwrap();

        let node = assemble(Some("n2:7000"));
        node.learn_table(&joined_elsewhere).unwrap();
        let me = node.cluster().table().get(&id("n2")).unwrap().clone();
        // Still Joining: the transfer round makes it a Member once its ranges moved.
        assert_eq!(
            (me.state(), me.client_address()),
            (MemberState::Joining, Some("n2:7000"))
        );
        let version = me.version();
        node.learn_table(&joined_elsewhere).unwrap();
        assert_eq!(
            node.cluster().table().get(&id("n2")).unwrap().version(),
            version,
            "announced once, not on every gossip round"
        );

        let silent = assemble(None);
        silent.learn_table(&joined_elsewhere).unwrap();
        assert_eq!(
            silent
                .cluster()
                .table()
                .get(&id("n2"))
                .unwrap()
                .client_address(),
            None
        );
    }

    /// Admission control: a joining node's transfer draws its keys from the shared
    /// background budget; a node with nothing to transfer draws nothing.
    #[test]
    fn transfer_allowance_comes_from_the_shared_budget_only_while_transferring() {
        use crate::transfer::Allowance;
        let network = MemoryNetwork::new(Duration::from_millis(100)).unwrap();
        let mut settings = NodeSettings::new(id("n1"));
        settings.admission = crate::admission::AdmissionConfig::new(
            Duration::from_millis(100),
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            5,
            5,
        )
        .unwrap();
        let node = NodeShared::assemble(
            settings,
            Arc::new(MemoryEngine::new()),
            Arc::new(network.endpoint("n1:7001")),
            "n1:7001".into(),
        )
        .unwrap();
        let wanted = Allowance {
            keys: 100,
            bytes: 1 << 20,
        };
        let granted = |node: &NodeShared| {
            node.metrics()
                .encode()
                .lines()
                .find(|l| l.starts_with(r#"dynamo_background_granted_total{kind="transfer"}"#))
                .map(str::to_owned)
        };
        // Not in the table yet: no transfer, the throttle's allowance as it is.
        assert_eq!(node.admitted_transfer_allowance(wanted), wanted);
        assert_eq!(
            granted(&node).as_deref(),
            Some(r#"dynamo_background_granted_total{kind="transfer"} 0"#)
        );

        node.change_membership(|t| t.join(id("n1"), "n1:7001", 1))
            .unwrap();
        let first = node.admitted_transfer_allowance(wanted);
        assert_eq!(
            first.keys,
            5 * crate::transfer::TRANSFER_KEYS_PER_UNIT,
            "the whole budget of the interval: 5 units of 16 keys"
        );
        assert_eq!(first.bytes, wanted.bytes);
        let spent = node.admitted_transfer_allowance(wanted);
        assert_eq!(
            (spent.keys, spent.bytes),
            (0, 0),
            "nothing left this interval"
        );
        assert_eq!(
            granted(&node).as_deref(),
            Some(r#"dynamo_background_granted_total{kind="transfer"} 5"#)
        );
        // A settled member transfers nothing: the throttle's allowance as it is.
        node.change_membership(|t| t.mark_member(&id("n1")))
            .unwrap();
        assert_eq!(node.admitted_transfer_allowance(wanted), wanted);
        // A pending weight change is a transfer too: it draws from the (spent) budget.
        node.change_membership(|t| t.set_weight(&id("n1"), 2))
            .unwrap();
        let reweighting = node.admitted_transfer_allowance(wanted);
        assert_eq!((reweighting.keys, reweighting.bytes), (0, 0));
    }
}
