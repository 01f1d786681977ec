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

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gossip::Gossip;
use crate::handoff::Handoff;
use crate::members::{META_MEMBERS, Members, MembershipChangeError, announce_self};
use crate::server::tls::{TLS_RELOAD_INTERVAL, TlsMaterial, watch_tls_files};
use crate::shutdown::{drain, wait_for};

use crate::NodeId;
use crate::admission::AdmissionConfig;
use crate::antientropy::{
    AntiEntropy, AntiEntropyConfig, AntiEntropyWorker, BuildProgress, RoundReport,
};
use crate::background::BackgroundBudget;
use crate::cluster::{Clock, Cluster};
use crate::config::{InternodeAuthConfig, NodeConfig, StorageConfig};
use crate::coordinator::{Coordinator, CoordinatorConfig, ReadFanout, RequestLimits};
use crate::identity::{ActorIdentity, IdentityError};
use crate::membership::{DetectorConfig, Member, MemberState, MemberTable, MembershipError};
use crate::merkle::Hash;
use crate::metrics::Metrics;
use crate::proto::{admin_server::AdminServer, kv_server::KvServer};
use crate::quorum::QuorumConfig;
use crate::ring::PartitionStrategy;
use crate::server::incoming::{AcceptLimits, admitted_tls_connections};
use crate::server::limits::{InflightLimit, shed_when_busy};
use crate::server::{AdminService, KvService, admin_token_interceptor};
use crate::storage::{
    Durability, MemoryEngine, SledEngine, StorageEngine, StorageError, run_engine_call,
};
use crate::store::{Store, StoreError};
use crate::transfer::{
    Allowance, RoundReport as TransferReport, SweepReport, TransferSettings, TransferShared,
    TransferStatus, TransferWorker,
};
use crate::transport::auth::{InternodeAuth, InternodeTokens, authenticated};
use crate::transport::{
    ForwardedPut, MergeBatch, MerkleQuery, RangeEntry, RangePage, RangeScan, ReplicaError,
    ReplicaHandler, ReplicaWrite, Transport,
};
use crate::transport::{GrpcTransport, GrpcTransportConfig, replica_server};
use crate::version::{SiblingLimits, SiblingSet};

/// Meta record names.
const META_CLEAN_SHUTDOWN: &str = "clean-shutdown";

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
    async fn store_write(&self, write: &ReplicaWrite) -> Result<(), StoreError> {
        self.apply_write(write)?;
        if self.must_flush(write) {
            self.store.make_durable().await?;
        }
        Ok(())
    }

    /// Applies a replica write in memory (the merge, and the hint when it stands in for
    /// another node), without waiting for durability.
    fn apply_write(&self, write: &ReplicaWrite) -> Result<(), StoreError> {
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
    fn must_flush(&self, write: &ReplicaWrite) -> bool {
        write.durable || self.durability == Durability::Sync
    }
}

/// Serves peers: the receiving end of the transport.
#[derive(Debug)]
struct PeerHandler {
    node: Arc<NodeShared>,
}

fn internal(e: impl std::fmt::Display) -> ReplicaError {
    ReplicaError::Internal(e.to_string())
}

#[async_trait::async_trait]
impl ReplicaHandler for PeerHandler {
    async fn read(&self, key: Vec<u8>) -> Result<SiblingSet, ReplicaError> {
        // Inline, like the coordinator's local read: a read is served from sled's page
        // cache, and a blocking-pool hop per replica read cost more than the read.
        self.node.store.read(&key).map_err(internal)
    }

    async fn write(&self, write: ReplicaWrite) -> Result<(), ReplicaError> {
        let limits = self.node.coordinator.limits();
        limits
            .check_key(&write.key)
            .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
        self.node.store_write(&write).await.map_err(internal)
    }

    /// Applies every write in memory, then waits once for a flush that covers all of
    /// them (shared with concurrent writers: group commit), so a batch of sync writes
    /// costs one flush wait instead of one each. A failed flush fails exactly the writes
    /// that needed it.
    async fn write_batch(&self, writes: Vec<ReplicaWrite>) -> Vec<Result<(), ReplicaError>> {
        let limits = self.node.coordinator.limits();
        let mut results: Vec<Result<(), ReplicaError>> = writes
            .iter()
            .map(|write| {
                limits
                    .check_key(&write.key)
                    .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
                self.node.apply_write(write).map_err(internal)
            })
            .collect();
        let durable: Vec<usize> = writes
            .iter()
            .zip(&results)
            .enumerate()
            .filter(|(_, (write, result))| result.is_ok() && self.node.must_flush(write))
            .map(|(index, _)| index)
            .collect();
        if !durable.is_empty() {
            if let Err(error) = self.node.store.make_durable().await {
                for index in durable {
                    results[index] = Err(internal(&error));
                }
            }
        }
        results
    }

    async fn coordinate_put(&self, put: ForwardedPut) -> Result<Vec<u8>, ReplicaError> {
        if let Some(deadline) = put.deadline {
            let now = self.node.cluster.clock().wall();
            if now > deadline {
                // The forwarding node has given up and told its client the outcome is
                // unknown; coordinating now would write the value as a new version
                // that the client may already have replaced.
                return Err(ReplicaError::Unavailable(format!(
                    "forwarded put arrived {} ms after its deadline",
                    now.0 - deadline.0
                )));
            }
        }
        let context = self
            .node
            .coordinator
            .coordinate_put(&put.key, put.context, put.value, put.w)
            .await
            .map_err(|e| crate::server::coordinator_replica_error(&e))?;
        Ok(crate::version::context::encode(&context))
    }

    async fn gossip(&self, table: MemberTable) -> Result<MemberTable, ReplicaError> {
        self.node.gossip.answer(&table)
    }

    async fn scan_range(&self, scan: RangeScan) -> Result<RangePage, ReplicaError> {
        let node = Arc::clone(&self.node);
        let page = run_engine_call(self.node.store.engine().as_ref(), move || {
            node.store.scan(
                scan.range,
                scan.after.as_deref(),
                scan.max_entries as usize,
                scan.max_bytes as usize,
            )
        })
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            StoreError::Storage(
                e @ (StorageError::CursorOutsideRange | StorageError::ZeroLimit),
            ) => ReplicaError::InvalidArgument(e.to_string()),
            other => internal(other),
        })?;
        Ok(RangePage {
            entries: page
                .entries
                .into_iter()
                .map(|(key, state)| RangeEntry { key, state })
                .collect(),
            done: page.done,
        })
    }

    async fn merge_batch(&self, batch: MergeBatch) -> Result<(), ReplicaError> {
        let limits = self.node.coordinator.limits();
        let mut entries = Vec::with_capacity(batch.entries.len());
        for entry in batch.entries {
            limits
                .check_key(&entry.key)
                .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
            entries.push((entry.key, entry.state));
        }
        let durability = if batch.durable {
            Durability::Sync
        } else {
            self.node.durability
        };
        let node = Arc::clone(&self.node);
        run_engine_call(self.node.store.engine().as_ref(), move || {
            node.store.merge_batch(&entries, durability)
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }

    async fn merkle_hashes(&self, query: MerkleQuery) -> Result<Vec<Hash>, ReplicaError> {
        self.node.antientropy_worker.answer_hashes(&query)
    }

    async fn purge_tombstone(&self, key: Vec<u8>, digest: Hash) -> Result<bool, ReplicaError> {
        self.node
            .coordinator
            .limits()
            .check_key(&key)
            .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
        self.node.antientropy_worker.answer_purge(key, digest).await
    }
}

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    /// Where the client API (`Kv`) listens.
    pub client_addr: SocketAddr,
    /// Where the internode API (`Replica`, `Admin`) listens.
    pub internode_addr: SocketAddr,
    /// Where the HTTP API (kv, `/metrics`, probes, status page) listens, if enabled.
    pub http_addr: Option<SocketAddr>,
    shared: Arc<NodeShared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// The node's shared state (for in-process tests and tools).
    pub fn shared(&self) -> &Arc<NodeShared> {
        &self.shared
    }

    /// Stops serving, drains in-flight requests, flushes storage, and waits for it.
    ///
    /// # Errors
    /// A server or the final flush failed.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        self.task
            .await
            .map_err(|e| NodeError::Server(e.to_string()))?
    }

    /// Waits until the node stops (it only stops through [`RunningNode::shutdown`] or a
    /// server failure).
    ///
    /// # Errors
    /// A server failed.
    pub async fn wait(self) -> Result<(), NodeError> {
        self.task
            .await
            .map_err(|e| NodeError::Server(e.to_string()))?
    }

    /// A handle that triggers shutdown from elsewhere (a signal handler).
    pub fn shutdown_trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Entry point of the node.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Opens storage, binds the listeners, and starts serving.
    ///
    /// # Errors
    /// Storage cannot be opened, persisted state is corrupt, or a port is taken.
    #[allow(
        clippy::too_many_lines,
        reason = "over 80 lines: to be split (issue #16)"
    )]
    pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
        let engine: Arc<dyn StorageEngine> = match config.storage() {
            StorageConfig::Sled(sled) => {
                let sled = sled.clone();
                Arc::new(
                    tokio::task::spawn_blocking(move || SledEngine::open(&sled))
                        .await
                        .map_err(|e| NodeError::Server(e.to_string()))??,
                )
            }
            StorageConfig::Memory => Arc::new(MemoryEngine::new()),
        };
        let client_listener = bind("client API", config.listen()).await?;
        let internode_listener = bind("internode API", config.internode_listen()).await?;
        let http_listener = match config.http_listen() {
            Some(address) => Some(bind("HTTP API", address).await?),
            None => None,
        };
        let http_addr = match (&http_listener, config.http_listen()) {
            (Some(listener), Some(address)) => Some(local_addr(listener, address)?),
            _ => None,
        };
        let client_addr = local_addr(&client_listener, config.listen())?;
        let internode_addr = local_addr(&internode_listener, config.internode_listen())?;
        // Without an explicit advertise address, peers reach us where we actually bound
        // (which also resolves a configured port 0).
        let advertise = config
            .advertise()
            .map_or_else(|| internode_addr.to_string(), str::to_owned);
        let transport_config = GrpcTransportConfig::new(
            config.request_timeout(),
            config.request_timeout().min(Duration::from_secs(1)),
        )
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let tls = match config.tls() {
            Some(tls) => Some(
                TlsMaterial::load(tls)
                    .await
                    .map_err(|e| NodeError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let tokens = read_internode_tokens(config.internode_auth()).await?;
        let mut grpc_transport = match &tls {
            Some(tls) => GrpcTransport::with_tls(transport_config, tls.files().internode_client()),
            None => GrpcTransport::new(transport_config),
        };
        if let Some(tokens) = &tokens {
            grpc_transport = grpc_transport.with_token(tokens);
        }
        let internode_auth =
            InternodeAuth::new(tokens, tls.as_ref().and_then(|tls| tls.node_name.clone()));
        if internode_auth.is_open() {
            tracing::warn!(
                internode_listen = %internode_addr,
                "internode calls are not authenticated: whoever reaches the internode port \
                 can read and overwrite every key (set internode-token-file or tls-ca)"
            );
        }
        let grpc_transport = Arc::new(grpc_transport);
        let transport: Arc<dyn Transport> = Arc::clone(&grpc_transport) as _;
        let mut settings = NodeSettings::from_config(&config);
        settings.client_advertise = config.client_advertise_for(client_addr);
        if settings.client_advertise.is_none() {
            tracing::warn!(
                %client_addr,
                "the client API listens on a wildcard address and neither advertise nor \
                 advertise-client is set: partition-aware clients cannot route to this node"
            );
        }
        let shared = NodeShared::assemble(settings, engine, transport, advertise.clone())?;
        let incarnation = shared.incarnation;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        if let Some(tls) = &tls {
            tokio::spawn(watch_tls_files(
                tls.files(),
                grpc_transport,
                TLS_RELOAD_INTERVAL,
                shared.metrics.clone(),
                shutdown_rx.clone(),
            ));
        }
        let task = tokio::spawn(serve(
            Arc::clone(&shared),
            config,
            tls,
            internode_auth,
            Listeners {
                client: client_listener,
                internode: internode_listener,
                http: http_listener,
            },
            shutdown_rx,
        ));
        tracing::info!(
            node = %shared.cluster.me(), %client_addr, %internode_addr,
            %advertise, incarnation, "node started"
        );
        Ok(RunningNode {
            client_addr,
            internode_addr,
            http_addr,
            shared,
            shutdown: shutdown_tx,
            task,
        })
    }
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
    #[allow(
        clippy::too_many_lines,
        reason = "over 80 lines: to be split (issue #16)"
    )]
    pub fn assemble(
        settings: NodeSettings,
        engine: Arc<dyn StorageEngine>,
        transport: Arc<dyn Transport>,
        advertise: String,
    ) -> Result<Arc<NodeShared>, NodeError> {
        let identity = Arc::new(open_identity(
            engine.as_ref(),
            &settings.node_id,
            settings.clock,
        )?);
        let incarnation = identity.incarnation();
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
        // Our address may have changed since the table was saved (a restarted pod gets a
        // new IP); announce the current one.
        let me = settings.node_id.clone();
        let moved = cluster
            .table()
            .get(&me)
            .is_some_and(|m| m.state() != MemberState::Removed && m.address() != advertise);
        if moved {
            let (_, table) = cluster
                .change(|t| t.set_address(&me, &advertise))
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
        let antientropy = Arc::new(AntiEntropy::new(settings.anti_entropy));
        let mut store = Store::new(Arc::clone(&engine), settings.sibling_limits, identity)
            .with_reconciliation(settings.reconciliation);
        if settings.anti_entropy.enabled() {
            store = store.with_observer(Arc::clone(antientropy.trees()) as _);
        }
        let metrics = Metrics::new();
        let coordinator = Coordinator::new(
            CoordinatorConfig {
                quorum: settings.quorum,
                timeout: settings.request_timeout,
                durability: settings.durability,
                limits: settings.limits,
                metrics: metrics.clone(),
                read_fanout: settings.read_fanout,
            },
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

    /// What this node serves to its peers.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn ReplicaHandler> {
        Arc::new(PeerHandler {
            node: Arc::clone(self),
        })
    }
}

/// The cluster secret from `internode-token-file`, if one is configured.
async fn read_internode_tokens(
    auth: &InternodeAuthConfig,
) -> Result<Option<InternodeTokens>, NodeError> {
    let Some(path) = &auth.token_file else {
        return Ok(None);
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| NodeError::Config(format!("reading {}: {e}", path.display())))?;
    InternodeTokens::parse(&text)
        .map(Some)
        .map_err(|e| NodeError::Config(format!("internode-token-file {}: {e}", path.display())))
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| NodeError::Bind {
            what,
            address,
            source,
        })
}

fn local_addr(listener: &TcpListener, address: SocketAddr) -> Result<SocketAddr, NodeError> {
    listener.local_addr().map_err(|source| NodeError::Bind {
        what: "listener",
        address,
        source,
    })
}

/// The node's clock actor at this start: its persisted incarnation after a clean stop,
/// a fresh one otherwise (new or wiped data dir, or an unclean stop in either durability
/// mode, see [`ActorIdentity::open`]). Consumes the clean-shutdown marker.
fn open_identity(
    engine: &dyn StorageEngine,
    node: &NodeId,
    clock: Clock,
) -> Result<ActorIdentity, NodeError> {
    let clean = engine.meta_get(META_CLEAN_SHUTDOWN)?.is_some();
    engine.meta_remove(META_CLEAN_SHUTDOWN)?;
    ActorIdentity::open(engine, node.clone(), clock, clean).map_err(|e| match e {
        IdentityError::Storage(e) => NodeError::Storage(e),
        other => NodeError::Corrupt(other.to_string()),
    })
}

/// The node's bound sockets.
struct Listeners {
    client: TcpListener,
    internode: TcpListener,
    http: Option<TcpListener>,
}

#[allow(
    clippy::too_many_lines,
    reason = "over 80 lines: to be split (issue #16)"
)]
async fn serve(
    shared: Arc<NodeShared>,
    config: NodeConfig,
    tls: Option<TlsMaterial>,
    internode_auth: InternodeAuth,
    listeners: Listeners,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let Listeners {
        client: client_listener,
        internode: internode_listener,
        http: http_listener,
    } = listeners;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Server(e.to_string()))?;
    // Python's grpcio-reflection and older grpcurl speak only `v1alpha`.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| NodeError::Server(e.to_string()))?;

    let serving = config.serving_limits();
    let open_files = crate::server::limits::raise_open_files_limit();
    let (max_connections, lowered) =
        crate::server::limits::connection_cap(serving.max_connections, open_files);
    if lowered {
        tracing::warn!(
            configured = serving.max_connections,
            max_connections,
            open_files,
            "max-connections lowered to fit the open-files limit (raise `ulimit -n` to serve more)"
        );
    }
    let accept = AcceptLimits {
        max_connections,
        first_bytes_timeout: serving.client_read_timeout,
    };
    let inflight = InflightLimit::new(serving.max_inflight_requests);
    let kv = shed_when_busy(
        KvServer::new(KvService::new(
            shared.coordinator.clone(),
            shared.store.clone(),
            shared.metrics.clone(),
        ))
        .max_decoding_message_size(config.max_value_bytes() + config.max_key_bytes() + 64 * 1024),
        inflight.clone(),
        shared.metrics.clone(),
    );
    // A client request ends within the coordinator's timeout; the margin covers reading
    // the request and writing the answer. Internode calls touch only the local store.
    // TLS is terminated in the accept loop (admitted_tls_connections), so the
    // certificate follows its files; tonic serves HTTP/2 over the sessions.
    let mut client_builder = grpc_server(config.request_timeout() + REQUEST_MARGIN);
    let mut internode_builder = grpc_server(INTERNODE_CALL_TIMEOUT);
    let client_server = client_builder
        .add_service(health_service.clone())
        .add_service(reflection.clone())
        .add_service(reflection_v1alpha.clone())
        .add_service(kv)
        .serve_with_incoming_shutdown(
            admitted_tls_connections(
                client_listener,
                "client",
                accept,
                tls.as_ref().map(|tls| Arc::clone(&tls.client_grpc)),
                shared.metrics.clone(),
            ),
            wait_for(shutdown.clone()),
        );

    let handler = Arc::new(PeerHandler {
        node: Arc::clone(&shared),
    });
    let admin = AdminServer::with_interceptor(
        shared.admin_service(),
        admin_token_interceptor(config.admin_token().cloned()),
    );
    let internode_server = internode_builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(authenticated(
            replica_server(handler),
            Arc::new(internode_auth),
            shared.metrics.clone(),
        ))
        .add_service(admin)
        .serve_with_incoming_shutdown(
            admitted_tls_connections(
                internode_listener,
                "internode",
                accept,
                tls.as_ref().map(|tls| Arc::clone(&tls.internode_grpc)),
                shared.metrics.clone(),
            ),
            wait_for(shutdown.clone()),
        );

    let gossip = tokio::spawn(shared.gossip.clone().run(
        config.gossip_interval(),
        Gossip::random(shared.incarnation),
        shutdown.clone(),
    ));
    let handoff = tokio::spawn({
        let node = Arc::clone(&shared);
        shared
            .handoff
            .clone()
            .run(config.gossip_interval(), shutdown.clone(), move |targets| {
                node.refresh_gauges(targets);
            })
    });
    let transfer = tokio::spawn(shared.transfer_worker.clone().run(shutdown.clone()));
    let antientropy = tokio::spawn(
        shared
            .antientropy_worker
            .clone()
            .run(shared.incarnation, shutdown.clone()),
    );

    let http_server = async {
        let Some(listener) = http_listener else {
            return Ok(());
        };
        let router = crate::server::http::router(crate::server::http::HttpState {
            last_page: crate::server::http::LastPage::default(),
            coordinator: shared.coordinator.clone(),
            metrics: shared.metrics.clone(),
            cluster: Arc::clone(&shared.cluster),
            admission: crate::server::http::KvAdmission {
                inflight,
                body_read_timeout: serving.client_read_timeout,
            },
        });
        // In-flight requests end within the request timeout; the margin covers reading
        // bodies and writing answers.
        let drain = config.request_timeout() + Duration::from_secs(5);
        crate::server::https::serve(
            listener,
            tls.as_ref().map(|tls| Arc::clone(&tls.https)),
            router,
            wait_for(shutdown.clone()),
            crate::server::https::ServeLimits {
                drain,
                max_connections,
                header_read_timeout: serving.client_read_timeout,
            },
            shared.metrics.clone(),
        )
        .await;
        Ok::<(), std::io::Error>(())
    };
    let (client, internode, http) = tokio::join!(client_server, internode_server, http_server);
    // The background loops end at the shutdown signal, each after the round under way;
    // one still busy at the bound is stopped (every round is safe to cut short: range
    // transfer resumes from its saved progress, hints and trees stay).
    drain(
        vec![
            ("gossip", gossip),
            ("hinted handoff", handoff),
            ("range transfer", transfer),
            ("anti-entropy", antientropy),
        ],
        BACKGROUND_DRAIN,
    )
    .await;
    let engine = Arc::clone(shared.store.engine());
    tokio::task::spawn_blocking(move || {
        engine.flush()?;
        engine.meta_put(META_CLEAN_SHUTDOWN, &[1], Durability::Sync)
    })
    .await
    .map_err(|e| NodeError::Server(e.to_string()))??;
    tracing::info!(node = %shared.cluster.me(), "node stopped");
    client.map_err(|e| NodeError::Server(format!("client API: {e}")))?;
    internode.map_err(|e| NodeError::Server(format!("internode API: {e}")))?;
    http.map_err(|e| NodeError::Server(format!("HTTP API: {e}")))?;
    Ok(())
}

/// How long the node waits at shutdown for its background loops to finish their rounds.
const BACKGROUND_DRAIN: Duration = Duration::from_secs(10);

/// Added to the request timeout for the client API's per-call bound.
const REQUEST_MARGIN: Duration = Duration::from_secs(5);

/// Bound on one internode call (a replica read or write, a batch merge, a gossip
/// exchange): they touch only the callee's store. A stream's later messages are
/// bounded by the caller.
const INTERNODE_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Most concurrent calls (HTTP/2 streams) on one connection: a client that opens more
/// waits for its own calls to finish, so one connection cannot monopolise the node.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// How often an idle HTTP/2 connection is pinged, and how long the answer may take
/// before the connection is closed: a peer that vanished (a powered-off host, a cut
/// network) stops holding a connection slot.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC server with the node's per-connection bounds; calls taking longer than
/// `call_timeout` are cancelled (a client's shorter `grpc-timeout` still applies).
fn grpc_server(call_timeout: Duration) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .timeout(call_timeout)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Bounds the rapid-reset attack (CVE-2023-44487): streams a client opens and
        // cancels at once.
        .http2_max_pending_accept_reset_streams(Some(64))
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
        assert_eq!(first.keys, 5, "the whole budget of the interval");
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
