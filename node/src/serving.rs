//! The node at work: its client and internode gRPC servers, the HTTP API and the
//! background loops, from start until the shutdown signal, then the clean stop (loops
//! drained, storage flushed, the clean-shutdown marker written).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ServerConfig;

use crate::config::NodeConfig;
use crate::gossip::Gossip;
use crate::node::{META_CLEAN_SHUTDOWN, NodeError, NodeShared};
use crate::peer::PeerHandler;
use crate::proto::{admin_server::AdminServer, kv_server::KvServer};
use crate::server::incoming::{AcceptLimits, Admitted, admitted_tls_connections};
use crate::server::limits::{InflightLimit, shed_when_busy};
use crate::server::tls::TlsMaterial;
use crate::server::{KvService, admin_token_interceptor};
use crate::shutdown::{drain, wait_for};
use crate::storage::Durability;
use crate::transport::auth::{InternodeAuth, authenticated};
use crate::transport::replica_server;

/// The node's bound sockets.
pub(crate) struct Listeners {
    pub(crate) client: TcpListener,
    pub(crate) internode: TcpListener,
    pub(crate) http: Option<TcpListener>,
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

/// What every listener of one node shares.
struct Serving {
    shared: Arc<NodeShared>,
    config: NodeConfig,
    tls: Option<TlsMaterial>,
    accept: AcceptLimits,
    /// Client requests in flight, over the gRPC and HTTP APIs together.
    inflight: InflightLimit,
    shutdown: watch::Receiver<bool>,
}

/// Serves until `shutdown`, then stops cleanly.
pub(crate) async fn serve(
    shared: Arc<NodeShared>,
    config: NodeConfig,
    tls: Option<TlsMaterial>,
    internode_auth: InternodeAuth,
    listeners: Listeners,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let limits = config.serving_limits();
    let serving = Serving {
        accept: accept_limits(limits.max_connections, limits.client_read_timeout),
        inflight: InflightLimit::new(limits.max_inflight_requests),
        shared,
        config,
        tls,
        shutdown,
    };
    let background = spawn_background(&serving.shared, &serving.config, &serving.shutdown);
    let (client, internode, http) = tokio::join!(
        serving.client_api(listeners.client),
        serving.internode_api(listeners.internode, internode_auth),
        serving.http_api(listeners.http),
    );
    // The background loops end at the shutdown signal, each after the round under way;
    // one still busy at the bound is stopped (every round is safe to cut short: range
    // transfer resumes from its saved progress, hints and trees stay).
    drain(background, BACKGROUND_DRAIN).await;
    mark_clean_stop(&serving.shared).await?;
    tracing::info!(node = %serving.shared.cluster.me(), "node stopped");
    client?;
    internode?;
    http
}

/// The accept loop's bounds: the configured connection cap, lowered to fit the
/// open-files limit (raised as far as allowed first), and the first bytes' deadline.
fn accept_limits(configured: usize, first_bytes_timeout: Duration) -> AcceptLimits {
    let open_files = crate::server::limits::raise_open_files_limit();
    let (max_connections, lowered) = crate::server::limits::connection_cap(configured, open_files);
    if lowered {
        tracing::warn!(
            configured,
            max_connections,
            open_files,
            "max-connections lowered to fit the open-files limit (raise `ulimit -n` to serve more)"
        );
    }
    AcceptLimits {
        max_connections,
        first_bytes_timeout,
    }
}

/// The gRPC health and reflection services (reflection in `v1` and, for Python's
/// grpcio-reflection and older grpcurl, `v1alpha`), added to `server`.
async fn with_common_services(
    server: &mut tonic::transport::Server,
) -> Result<tonic::transport::server::Router, NodeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Server(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| NodeError::Server(e.to_string()))?;
    Ok(server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha))
}

impl Serving {
    /// Incoming connections on `listener`, counted against the cap, TLS terminated here
    /// (so the certificate follows its files) when `tls` is set.
    fn incoming(
        &self,
        listener: TcpListener,
        name: &'static str,
        tls: Option<&Arc<ServerConfig>>,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Admitted>> {
        admitted_tls_connections(
            listener,
            name,
            self.accept,
            tls.cloned(),
            self.shared.metrics.clone(),
        )
    }

    /// The client API (`Kv`, health, reflection) until shutdown. A request ends within
    /// the coordinator's timeout; the margin covers reading it and writing the answer.
    async fn client_api(&self, listener: TcpListener) -> Result<(), NodeError> {
        let shared = &self.shared;
        let kv = shed_when_busy(
            KvServer::new(KvService::new(
                shared.coordinator.clone(),
                shared.store.clone(),
                shared.metrics.clone(),
            ))
            .max_decoding_message_size(
                self.config.max_value_bytes() + self.config.max_key_bytes() + 64 * 1024,
            ),
            self.inflight.clone(),
            shared.metrics.clone(),
        );
        let mut server = grpc_server(self.config.request_timeout() + REQUEST_MARGIN);
        let tls = self.tls.as_ref().map(|tls| &tls.client_grpc);
        with_common_services(&mut server)
            .await?
            .add_service(kv)
            .serve_with_incoming_shutdown(
                self.incoming(listener, "client", tls),
                wait_for(self.shutdown.clone()),
            )
            .await
            .map_err(|e| NodeError::Server(format!("client API: {e}")))
    }

    /// The internode API (`Replica` behind internode authentication, `Admin` behind the
    /// admin token, health, reflection) until shutdown. Internode calls touch only the
    /// local store.
    async fn internode_api(
        &self,
        listener: TcpListener,
        internode_auth: InternodeAuth,
    ) -> Result<(), NodeError> {
        let shared = &self.shared;
        let handler = Arc::new(PeerHandler {
            node: Arc::clone(shared),
        });
        let admin = AdminServer::with_interceptor(
            shared.admin_service(),
            admin_token_interceptor(self.config.admin_token().cloned()),
        );
        let mut server = grpc_server(INTERNODE_CALL_TIMEOUT);
        let tls = self.tls.as_ref().map(|tls| &tls.internode_grpc);
        with_common_services(&mut server)
            .await?
            .add_service(authenticated(
                replica_server(handler),
                Arc::new(internode_auth),
                shared.metrics.clone(),
            ))
            .add_service(admin)
            .serve_with_incoming_shutdown(
                self.incoming(listener, "internode", tls),
                wait_for(self.shutdown.clone()),
            )
            .await
            .map_err(|e| NodeError::Server(format!("internode API: {e}")))
    }

    /// The HTTP API (`/v1/kv`, `/metrics`, health, the status page), if it listens,
    /// until shutdown, then its in-flight requests drain.
    async fn http_api(&self, listener: Option<TcpListener>) -> Result<(), NodeError> {
        let Some(listener) = listener else {
            return Ok(());
        };
        let shared = &self.shared;
        let read_timeout = self.config.serving_limits().client_read_timeout;
        let router = crate::server::http::router(crate::server::http::HttpState {
            last_page: crate::server::http::LastPage::default(),
            coordinator: shared.coordinator.clone(),
            metrics: shared.metrics.clone(),
            cluster: Arc::clone(&shared.cluster),
            admission: crate::server::http::KvAdmission {
                inflight: self.inflight.clone(),
                body_read_timeout: read_timeout,
            },
        });
        // In-flight requests end within the request timeout; the margin covers reading
        // bodies and writing answers.
        let drain = self.config.request_timeout() + Duration::from_secs(5);
        crate::server::https::serve(
            listener,
            self.tls.as_ref().map(|tls| Arc::clone(&tls.https)),
            router,
            wait_for(self.shutdown.clone()),
            crate::server::https::ServeLimits {
                drain,
                max_connections: self.accept.max_connections,
                header_read_timeout: read_timeout,
            },
            shared.metrics.clone(),
        )
        .await;
        Ok(())
    }
}

/// Starts the background loops (gossip, hinted handoff with the gauges' refresh, range
/// transfer, anti-entropy); each ends at the shutdown signal.
fn spawn_background(
    shared: &Arc<NodeShared>,
    config: &NodeConfig,
    shutdown: &watch::Receiver<bool>,
) -> Vec<(&'static str, JoinHandle<()>)> {
    let gossip = tokio::spawn(shared.gossip.clone().run(
        config.gossip_interval(),
        Gossip::random(shared.incarnation),
        shutdown.clone(),
    ));
    let handoff = tokio::spawn({
        let node = Arc::clone(shared);
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
    vec![
        ("gossip", gossip),
        ("hinted handoff", handoff),
        ("range transfer", transfer),
        ("anti-entropy", antientropy),
    ]
}

/// Flushes the storage and writes the clean-shutdown marker, so the next start keeps
/// the clock incarnation (see [`crate::identity`]).
async fn mark_clean_stop(shared: &NodeShared) -> Result<(), NodeError> {
    let engine = Arc::clone(shared.store.engine());
    tokio::task::spawn_blocking(move || {
        engine.flush()?;
        engine.meta_put(META_CLEAN_SHUTDOWN, &[1], Durability::Sync)
    })
    .await
    .map_err(|e| NodeError::Server(e.to_string()))??;
    Ok(())
}
