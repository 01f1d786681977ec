//! Starting a node from its configuration: the storage opened, the listeners bound,
//! the TLS material and internode credentials read, the parts assembled
//! ([`NodeShared::assemble`]), then [`serving::serve`](crate::serving) until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{InternodeAuthConfig, NodeConfig, StorageConfig};
use crate::node::{NodeError, NodeSettings, NodeShared};
use crate::server::tls::{TLS_RELOAD_INTERVAL, TlsMaterial, watch_tls_files};
use crate::serving::{Listeners, serve};
use crate::storage::{MemoryEngine, SledEngine, StorageEngine};
use crate::transport::auth::{InternodeAuth, InternodeTokens};
use crate::transport::{GrpcTransport, GrpcTransportConfig, Transport};

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
    pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
        let engine = open_engine(&config).await?;
        let bound = Bound::bind(&config).await?;
        let (client_addr, internode_addr) = (bound.client_addr, bound.internode_addr);
        // Without an explicit advertise address, peers reach us where we actually bound
        // (which also resolves a configured port 0).
        let advertise = config
            .advertise()
            .map_or_else(|| internode_addr.to_string(), str::to_owned);
        let (tls, grpc_transport, internode_auth) =
            internode_security(&config, internode_addr).await?;
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
            bound.listeners,
            shutdown_rx,
        ));
        tracing::info!(
            node = %shared.cluster.me(), %client_addr, %internode_addr,
            %advertise, incarnation, "node started"
        );
        Ok(RunningNode {
            client_addr,
            internode_addr,
            http_addr: bound.http_addr,
            shared,
            shutdown: shutdown_tx,
            task,
        })
    }
}

/// Opens the configured storage engine (sled on the blocking pool: opening counts the
/// entries).
async fn open_engine(config: &NodeConfig) -> Result<Arc<dyn StorageEngine>, NodeError> {
    Ok(match config.storage() {
        StorageConfig::Sled(sled) => {
            let sled = sled.clone();
            Arc::new(
                tokio::task::spawn_blocking(move || SledEngine::open(&sled))
                    .await
                    .map_err(|e| NodeError::Server(e.to_string()))??,
            )
        }
        StorageConfig::Memory => Arc::new(MemoryEngine::new()),
    })
}

/// The node's listeners, bound, and the addresses they got (a configured port 0
/// resolved).
struct Bound {
    listeners: Listeners,
    client_addr: SocketAddr,
    internode_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
}

impl Bound {
    async fn bind(config: &NodeConfig) -> Result<Self, NodeError> {
        let client = bind("client API", config.listen()).await?;
        let internode = bind("internode API", config.internode_listen()).await?;
        let (http, http_addr) = match config.http_listen() {
            Some(address) => {
                let listener = bind("HTTP API", address).await?;
                let bound = local_addr(&listener, address)?;
                (Some(listener), Some(bound))
            }
            None => (None, None),
        };
        Ok(Self {
            client_addr: local_addr(&client, config.listen())?,
            internode_addr: local_addr(&internode, config.internode_listen())?,
            http_addr,
            listeners: Listeners {
                client,
                internode,
                http,
            },
        })
    }
}

/// The TLS material, the transport for internode calls (with the node's certificate and
/// token) and the check of incoming internode calls; warns when they go unauthenticated.
async fn internode_security(
    config: &NodeConfig,
    internode_addr: SocketAddr,
) -> Result<(Option<TlsMaterial>, Arc<GrpcTransport>, InternodeAuth), NodeError> {
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
    Ok((tls, Arc::new(grpc_transport), internode_auth))
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
