//! A partition-aware Rust client for the `Kv` API (Dynamo §4.5, client-driven
//! coordination).
//!
//! The client pulls the ring from any node (`Kv.Topology`), and sends each request
//! straight to a node in the key's preference list, so no node has to forward it:
//!
//! * a get is coordinated by the client itself (Dynamo §6.4: "read requests can be
//!   coordinated at the client node thereby avoiding the extra network hop"): it reads
//!   R of the key's N replicas in parallel with `Kv.GetLocal` (each answers from its own
//!   store; the reads rotate among the reachable replicas, to spread them), merges their
//!   sibling sets by vector clock, and returns the same versions and context a node's
//!   get would. When the replicas' answers differ it also sends one ordinary get of the
//!   key to a replica, in the background, whose read repair brings the stale replicas up
//!   to date. With fewer than R replicas reachable, or nodes that do not serve
//!   `GetLocal`, the get goes to one replica, which coordinates it
//!   ([`ClientConfig::with_client_reads`] turns client coordination off);
//! * a put or delete goes to the first reachable of the N, which coordinates the write
//!   locally (it is a home replica, so it never forwards). Writes are not coordinated
//!   by the client: the new version's clock entry is the coordinating node's (Dynamo
//!   §6.4 moves only reads to the client).
//!
//! It keeps the ring current: periodically, when an answer's `dynamo-topology` header
//! names a version other than the one it routes by (a node joined, left, moved), and
//! when a node stops answering. A node that fails a call is tried last for a while and
//! the request moves on to the next replica. When it cannot route (no topology yet, the
//! key's replicas have not announced client addresses, or none of them answers) it
//! falls back to server-driven routing: any node takes the request and forwards it.
//!
//! One tonic `Channel` (an HTTP/2 connection) per node, or a few with
//! [`ClientConfig::with_connections_per_node`], created on first use and cached; every
//! call has a timeout. [`Routing::Server`] turns routing off: every request goes to the
//! seeds, round-robin, which is what a client behind a load balancer does.
//!
//! ```no_run
//! use dynamo_client::{Client, ClientConfig, Context};
//!
//! # async fn demo() -> Result<(), dynamo_client::ClientError> {
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:7000"])).await?;
//!
//! // A blind write, then a read-modify-write with the context of the read, which
//! // supersedes every version the read saw (Dynamo §4.4).
//! client.put(b"cart:42", &Context::empty(), b"apples").await?;
//! let read = client.get(b"cart:42").await?;
//! let merged = read.values.iter().fold(Vec::new(), |mut all, v| {
//!     all.extend_from_slice(v);
//!     all
//! });
//! let written = client.put(b"cart:42", &read.context, &merged).await?;
//! client.delete(b"cart:42", &written).await?;
//! # Ok(())
//! # }
//! ```
//!
//! With TLS, trust the nodes' CA (or their shared certificate):
//!
//! ```no_run
//! use std::time::Duration;
//! use dynamo_client::{Client, ClientConfig};
//! use tonic::transport::{Certificate, ClientTlsConfig};
//!
//! # async fn demo(ca_pem: &[u8]) -> Result<(), dynamo_client::ClientError> {
//! let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
//! let config = ClientConfig::new(["dynamo-0.dynamo:7000", "dynamo-1.dynamo:7000"])
//!     .with_tls(tls)
//!     .with_request_timeout(Duration::from_millis(500));
//! let client = Client::connect(config).await?;
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

mod error;
mod pool;
mod read;
mod routing;
mod update;
mod versions;

pub use error::ClientError;
pub use routing::{MAX_VERSION_LEN, RouteNode, RoutingTable, TopologyError};
pub use versions::{Context, Versions};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tonic::transport::ClientTlsConfig;

use dynamo_core::membership::check_address;
use dynamo_proto::wire::TOPOLOGY_HEADER;
use dynamo_proto::{self as proto, kv_client::KvClient};
use pool::Pool;

/// The most bytes a topology answer may take: a ring at the virtual node limit is
/// about 20 MiB (16 bytes of token and up to 5 of owner per virtual node).
pub const MAX_TOPOLOGY_BYTES: usize = 32 << 20;

/// The most connections the client opens to one node.
pub const MAX_CONNECTIONS_PER_NODE: usize = 64;

/// The most read repairs (ordinary gets sent because the replicas a client-coordinated
/// get read disagreed) one client has in flight. Past it a divergent read goes
/// unrepaired by this client; a later read of the key, or anti-entropy, repairs it.
pub const MAX_PENDING_REPAIRS: usize = 64;

/// Who picks the node that coordinates a request (Dynamo §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Routing {
    /// The client routes by the ring: requests go straight to a replica of the key.
    Client,
    /// The seeds take every request, round-robin, and route it themselves.
    Server,
}

impl Routing {
    /// `"client"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Client => "client",
            Routing::Server => "server",
        }
    }
}

/// How a [`Client`] connects and routes. Checked by [`Client::connect`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    seeds: Vec<String>,
    tls: Option<ClientTlsConfig>,
    routing: Routing,
    request_timeout: Duration,
    connect_timeout: Duration,
    refresh_interval: Duration,
    down_for: Duration,
    connections_per_node: usize,
    max_response_bytes: usize,
    read_quorum: Option<u32>,
    write_quorum: Option<u32>,
    client_reads: bool,
}

impl ClientConfig {
    /// Settings with client routing and the defaults: 2 s per call, 1 s to connect, a
    /// topology check every 5 s, a failed node tried last for 2 s, one connection per
    /// node, answers up to 256 MiB, the nodes' default R and W, gets coordinated by the
    /// client.
    ///
    /// `seeds` are client (`Kv`) addresses, `host:port` or `http(s)://host:port`; the
    /// client learns the others from the topology.
    pub fn new<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Self {
        Self {
            seeds: seeds.into_iter().map(Into::into).collect(),
            tls: None,
            routing: Routing::Client,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(5),
            down_for: Duration::from_secs(2),
            connections_per_node: 1,
            max_response_bytes: 256 << 20,
            read_quorum: None,
            write_quorum: None,
            client_reads: true,
        }
    }

    /// Whether the client coordinates gets itself under client routing (the default):
    /// it reads R replicas with `Kv.GetLocal` and merges their answers (Dynamo §6.4).
    /// Off, a get goes to one replica of the key, which coordinates it. Server routing
    /// never coordinates in the client.
    #[must_use]
    pub fn with_client_reads(mut self, on: bool) -> Self {
        self.client_reads = on;
        self
    }

    /// Talks TLS to every node, with these roots (and client identity, if any).
    #[must_use]
    pub fn with_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Client-driven (the default) or server-driven routing.
    #[must_use]
    pub fn with_routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// How long one call to one node may take before the client tries the next.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long opening a connection may take.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the client asks whether the topology changed, besides when an answer
    /// or a failure says it did.
    #[must_use]
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// How long a node that failed a call is tried only after the others.
    #[must_use]
    pub fn with_down_for(mut self, duration: Duration) -> Self {
        self.down_for = duration;
        self
    }

    /// HTTP/2 connections per node, `1..=`[`MAX_CONNECTIONS_PER_NODE`], used in turn:
    /// more than one helps when many tasks share a client.
    #[must_use]
    pub fn with_connections_per_node(mut self, connections: usize) -> Self {
        self.connections_per_node = connections;
        self
    }

    /// The largest answer accepted (a get returns every sibling).
    #[must_use]
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// R and W sent with every request; `None` leaves the node's default.
    #[must_use]
    pub fn with_quorum(mut self, read: Option<u32>, write: Option<u32>) -> Self {
        self.read_quorum = read;
        self.write_quorum = write;
        self
    }

    /// The routing mode.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Checks the settings; returns the seeds as `host:port` and whether to use TLS.
    fn validate(&self) -> Result<(Vec<String>, bool), ClientError> {
        let config = |m: String| Err(ClientError::Config(m));
        if self.seeds.is_empty() {
            return config("at least one seed address is needed".into());
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return config("timeouts must be longer than zero".into());
        }
        if self.refresh_interval < Duration::from_millis(10) {
            return config("the refresh interval must be at least 10ms".into());
        }
        if !(1..=MAX_CONNECTIONS_PER_NODE).contains(&self.connections_per_node) {
            return config(format!(
                "connections per node must be in 1..={MAX_CONNECTIONS_PER_NODE}"
            ));
        }
        let mut tls = self.tls.is_some();
        let mut seeds = Vec::new();
        for seed in &self.seeds {
            let address = match seed.split_once("://") {
                Some(("https", rest)) => {
                    tls = true;
                    rest
                }
                Some(("http", _)) if self.tls.is_some() => {
                    return config(format!("seed {seed} is http:// but TLS is configured"));
                }
                Some(("http", rest)) => rest,
                Some(_) => return config(format!("seed {seed}: expected http or https")),
                None => seed.as_str(),
            };
            let address = address.trim_end_matches('/');
            check_address(address)
                .map_err(|reason| ClientError::Config(format!("seed {seed}: {reason}")))?;
            if !seeds.iter().any(|s| s == address) {
                seeds.push(address.to_owned());
            }
        }
        Ok((seeds, tls))
    }
}

/// Counters of what the client did since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Requests answered by nodes in the key's preference list, chosen by the client
    /// (a client-coordinated get counts once, however many replicas it read).
    pub routed: u64,
    /// Gets the client coordinated itself from R replicas' `GetLocal` answers
    /// (Dynamo §6.4); included in `routed`.
    pub client_reads: u64,
    /// Client-coordinated gets whose replicas disagreed, for which the client sent an
    /// ordinary get so a node repairs the key (read repair).
    pub read_repairs: u64,
    /// Calls answered by a node the client sent to without routing (server-driven:
    /// the node coordinated or forwarded).
    pub fallback: u64,
    /// Calls answered after at least one node failed to answer.
    pub failovers: u64,
    /// Topology answers that changed the routing table.
    pub refreshes: u64,
}

/// A partition-aware client; cheap to clone (clones share connections and topology).
///
/// Dropping the last clone stops its background refresh within one refresh interval.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    routing: Routing,
    seeds: Vec<String>,
    request_timeout: Duration,
    down_for: Duration,
    read_quorum: Option<u32>,
    write_quorum: Option<u32>,
    /// Whether gets are coordinated here (client routing only).
    coordinate_reads: bool,
    pool: Pool,
    /// The table requests route by; swapped whole on refresh. A std `RwLock`: held only
    /// to clone or replace the `Arc`, never across an `.await`.
    table: RwLock<Option<Arc<RoutingTable>>>,
    /// Nodes that failed a call, and until when they are tried last. A std `Mutex`, held
    /// for a lookup or an insert only.
    down_until: Mutex<HashMap<String, Instant>>,
    /// A node whose answer carried a newer topology version: asked first on refresh.
    newer_at: Mutex<Option<String>>,
    /// Set when a node failed a call: the next refresh pulls the whole topology even if
    /// its version is unchanged, for the answering node's view of who is reachable.
    full_refresh: AtomicBool,
    /// Wakes the refresh task early.
    refresh_wanted: Arc<Notify>,
    /// Rotates reads among replicas and requests among seeds.
    next: AtomicUsize,
    routed: AtomicU64,
    fallback: AtomicU64,
    failovers: AtomicU64,
    refreshes: AtomicU64,
    client_reads: AtomicU64,
    read_repairs: AtomicU64,
    /// Bounds the read repairs in flight ([`MAX_PENDING_REPAIRS`]).
    repairs: Arc<Semaphore>,
}

/// Why one replica-local read of a client-coordinated get did not count.
enum LocalReadFailure {
    /// No answer (no connection, a reset, a timeout): try another replica.
    Unreachable,
    /// The node (at this address) answered with an error.
    Refused(String, tonic::Status),
}

/// Which call a plan is for: reads rotate among replicas, writes go in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

impl Client {
    /// Checks `config`, reaches the seeds, and (with client routing) pulls the
    /// topology from the first seed that answers.
    ///
    /// A seed that answers but cannot serve the topology (an older node, an empty
    /// ring) leaves the client in server-driven fallback until a later refresh works.
    ///
    /// # Errors
    /// [`ClientError::Config`] for unusable settings; [`ClientError::Unavailable`] when
    /// no seed can be reached at all.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (seeds, tls) = config.validate()?;
        let tls = match (tls, config.tls.clone()) {
            (true, None) => Some(ClientTlsConfig::new()),
            (_, tls) => tls,
        };
        let pool = Pool::new(
            tls,
            config.connect_timeout,
            config.request_timeout,
            config.connections_per_node,
            config.max_response_bytes,
        );
        let inner = Arc::new(Inner {
            routing: config.routing,
            seeds,
            request_timeout: config.request_timeout,
            down_for: config.down_for,
            read_quorum: config.read_quorum,
            write_quorum: config.write_quorum,
            coordinate_reads: config.client_reads,
            pool,
            table: RwLock::new(None),
            down_until: Mutex::new(HashMap::new()),
            newer_at: Mutex::new(None),
            full_refresh: AtomicBool::new(false),
            refresh_wanted: Arc::new(Notify::new()),
            next: AtomicUsize::new(0),
            routed: AtomicU64::new(0),
            fallback: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            client_reads: AtomicU64::new(0),
            read_repairs: AtomicU64::new(0),
            repairs: Arc::new(Semaphore::new(MAX_PENDING_REPAIRS)),
        });
        match config.routing {
            Routing::Client => {
                if let Err(error) = inner.refresh().await {
                    if !inner.seeds_answered(&error) {
                        return Err(error);
                    }
                    tracing::debug!(%error, "no topology yet; routing server-side until one comes");
                }
                tokio::spawn(refresh_loop(
                    Arc::downgrade(&inner),
                    Arc::clone(&inner.refresh_wanted),
                    config.refresh_interval,
                ));
            }
            Routing::Server => inner.probe_seeds().await?,
        }
        Ok(Client { inner })
    }

    /// Every concurrent version of `key` and their context.
    ///
    /// Under client routing the client coordinates the read itself (see the
    /// [module docs](self)); otherwise, or when it cannot, a node does.
    ///
    /// # Errors
    /// A node's error answer, or [`ClientError::Unavailable`] when no node answered.
    pub async fn get(&self, key: &[u8]) -> Result<Versions, ClientError> {
        if let Some(versions) = self.coordinate_get(key).await? {
            return Ok(versions);
        }
        self.inner.server_get(key).await
    }

    /// A get coordinated here (Dynamo §6.4): R replicas' own states, merged. `None`
    /// when a node has to coordinate it: client coordination is off or not served, fewer
    /// than R replicas are reachable, or a replica refused (its ring differs from the
    /// client's).
    async fn coordinate_get(&self, key: &[u8]) -> Result<Option<Versions>, ClientError> {
        let inner = &self.inner;
        if inner.routing != Routing::Client || !inner.coordinate_reads {
            return Ok(None);
        }
        let Some(table) = inner.current() else {
            return Ok(None);
        };
        let Some(default_r) = table.read_quorum() else {
            return Ok(None);
        };
        let r = inner
            .read_quorum
            .map_or(default_r, |r| usize::try_from(r).unwrap_or(usize::MAX));
        if r == 0 || r > table.replication_factor() {
            // A node answers an R out of bounds with a clear status.
            return Ok(None);
        }
        let replicas: Vec<&RouteNode> = table
            .preference_list(key)
            .into_iter()
            .map(|i| &table.members()[i])
            .collect();
        let turn = inner.next.fetch_add(1, Ordering::Relaxed);
        let up = |node: &RouteNode| {
            node.reachable
                && node
                    .client_address
                    .as_deref()
                    .is_some_and(|address| !inner.is_down(address))
        };
        let Some(targets) = read::read_targets(&replicas, r, turn, up) else {
            return Ok(None);
        };
        let Some((replies, failed_over)) = inner.local_states(key, &targets, r).await? else {
            return Ok(None);
        };
        let merged = match read::merge_replies(&replies) {
            Ok(merged) => merged,
            Err(error) => {
                tracing::debug!(%error, "a replica answered GetLocal with a bad state");
                return Ok(None);
            }
        };
        inner.routed.fetch_add(1, Ordering::Relaxed);
        inner.client_reads.fetch_add(1, Ordering::Relaxed);
        if failed_over {
            inner.failovers.fetch_add(1, Ordering::Relaxed);
        }
        if merged.diverged {
            self.repair(key);
        }
        // A last-write-wins cluster's get returns the winning version only.
        let state = if table.last_write_wins() {
            dynamo_core::version::Reconciliation::LastWriteWins.view(merged.state)
        } else {
            merged.state
        };
        Ok(Some(read::versions(&state)))
    }

    /// Sends an ordinary get of `key` with R = N in the background: the replica that
    /// coordinates it reads all N replicas (a get with a smaller R reads only R of them
    /// while they agree) and writes the merge back to the stale ones (read repair).
    /// Its outcome does not matter: a replica that is down fails the get but not the
    /// repair of the others. Skipped when [`MAX_PENDING_REPAIRS`] are in flight.
    fn repair(&self, key: &[u8]) {
        let Ok(permit) = Arc::clone(&self.inner.repairs).try_acquire_owned() else {
            return;
        };
        self.inner.read_repairs.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::clone(&self.inner);
        let key = key.to_vec();
        let all = self
            .inner
            .current()
            .and_then(|table| u32::try_from(table.replication_factor()).ok());
        tokio::spawn(async move {
            if let Err(error) = inner.server_get_with(&key, all.or(inner.read_quorum)).await {
                tracing::debug!(%error, "read repair get failed");
            }
            drop(permit);
        });
    }

    /// Writes `value` with `context` (from a get, or [`Context::empty`] for a blind
    /// write); returns the new version's context.
    ///
    /// A write goes on to the next replica only when the connection to a node could
    /// not be made (the write certainly never arrived). Once it may have arrived (a
    /// timeout, a reset mid-call), it is not retried elsewhere: a second node would
    /// apply it again as a concurrent version of the same value, and a value the
    /// caller has since overwritten could come back as a sibling.
    ///
    /// # Errors
    /// A node's error answer, [`ClientError::Unavailable`] when no node could be
    /// reached, or [`ClientError::OutcomeUnknown`] when the write may have been applied.
    pub async fn put(
        &self,
        key: &[u8],
        context: &Context,
        value: &[u8],
    ) -> Result<Context, ClientError> {
        let request = proto::PutRequest {
            key: Bytes::copy_from_slice(key),
            context: context.0.clone(),
            value: Bytes::copy_from_slice(value),
            w: self.inner.write_quorum,
        };
        let answer = self
            .inner
            .call(key, Kind::Write, move |mut kv| {
                let request = request.clone();
                async move { kv.put(request).await }
            })
            .await?;
        Ok(Context::received(&answer.context))
    }

    /// Deletes `key` (writes a tombstone superseding the versions `context` covers);
    /// returns the tombstone's context. An empty context deletes what the node's read
    /// of the key finds.
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub async fn delete(&self, key: &[u8], context: &Context) -> Result<Context, ClientError> {
        let request = proto::DeleteRequest {
            key: Bytes::copy_from_slice(key),
            context: context.0.clone(),
            w: self.inner.write_quorum,
        };
        let answer = self
            .inner
            .call(key, Kind::Write, move |mut kv| {
                let request = request.clone();
                async move { kv.delete(request).await }
            })
            .await?;
        Ok(Context::received(&answer.context))
    }

    /// Asks a node for the topology now; returns whether the routing table changed.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when no node gave a usable answer (the client keeps
    /// routing by the table it has).
    pub async fn refresh(&self) -> Result<bool, ClientError> {
        self.inner.refresh().await
    }

    /// The routing mode.
    pub fn routing(&self) -> Routing {
        self.inner.routing
    }

    /// The routing table in use, if the client has one.
    pub fn routing_table(&self) -> Option<Arc<RoutingTable>> {
        self.inner.current()
    }

    /// The key's preference list in the client's current table (empty without one).
    pub fn preference_list(&self, key: &[u8]) -> Vec<RouteNode> {
        self.inner.current().map_or_else(Vec::new, |table| {
            table
                .preference_list(key)
                .into_iter()
                .map(|i| table.members()[i].clone())
                .collect()
        })
    }

    /// What the client did so far.
    pub fn stats(&self) -> ClientStats {
        let inner = &self.inner;
        ClientStats {
            routed: inner.routed.load(Ordering::Relaxed),
            fallback: inner.fallback.load(Ordering::Relaxed),
            failovers: inner.failovers.load(Ordering::Relaxed),
            refreshes: inner.refreshes.load(Ordering::Relaxed),
            client_reads: inner.client_reads.load(Ordering::Relaxed),
            read_repairs: inner.read_repairs.load(Ordering::Relaxed),
        }
    }
}

/// Checks the topology every `interval`, or sooner when woken; ends once the client
/// is dropped.
async fn refresh_loop(client: Weak<Inner>, wanted: Arc<Notify>, interval: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = wanted.notified() => {}
        }
        let Some(inner) = client.upgrade() else {
            return;
        };
        if let Err(error) = inner.refresh().await {
            tracing::debug!(%error, "topology refresh failed");
        }
        drop(inner);
        // Coalesce a burst of wake-ups (every in-flight call may have seen the change).
        tokio::time::sleep(Duration::from_millis(20).min(interval)).await;
    }
}

/// Whether a failed call's status was made on this side (no connection, a reset, a
/// local timeout) rather than answered by a node: tonic attaches the underlying error
/// as the source of statuses it makes itself, and none to statuses read off the wire.
fn failed_locally(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

impl Inner {
    /// A get sent to one node, which coordinates it: a replica of the key under
    /// client routing, a seed under server routing.
    async fn server_get(&self, key: &[u8]) -> Result<Versions, ClientError> {
        self.server_get_with(key, self.read_quorum).await
    }

    /// [`server_get`](Self::server_get) with the read quorum `r` (the node's default
    /// when `None`).
    async fn server_get_with(&self, key: &[u8], r: Option<u32>) -> Result<Versions, ClientError> {
        let request = proto::GetRequest {
            key: Bytes::copy_from_slice(key),
            r,
        };
        let answer = self
            .call(key, Kind::Read, move |mut kv| {
                let request = request.clone();
                async move { kv.get(request).await }
            })
            .await?;
        Ok(Versions {
            values: answer.values,
            context: Context::received(&answer.context),
        })
    }

    /// One replica's own state of a key (`Kv.GetLocal`), encoded.
    /// The local states of `key` from the first `r` of `targets`, going on to the next
    /// target when one is unreachable; with whether any was. `None` when fewer than `r`
    /// can answer or a replica refused (its ring differs from ours: a refresh is asked
    /// for); an error when the key itself is refused.
    async fn local_states(
        &self,
        key: &[u8],
        targets: &[&str],
        r: usize,
    ) -> Result<Option<(Vec<Bytes>, bool)>, ClientError> {
        let request = proto::GetLocalRequest {
            key: Bytes::copy_from_slice(key),
        };
        let mut pending = FuturesUnordered::new();
        for address in &targets[..r] {
            pending.push(self.get_local(address, request.clone()));
        }
        let mut next = r;
        let mut replies: Vec<Bytes> = Vec::with_capacity(r);
        let mut failed_over = false;
        while let Some(answer) = pending.next().await {
            match answer {
                Ok(state) => {
                    replies.push(state);
                    if replies.len() == r {
                        return Ok(Some((replies, failed_over)));
                    }
                }
                Err(LocalReadFailure::Unreachable) => {
                    failed_over = true;
                    if let Some(address) = targets.get(next) {
                        pending.push(self.get_local(address, request.clone()));
                        next += 1;
                    }
                    if replies.len() + pending.len() < r {
                        return Ok(None);
                    }
                }
                Err(LocalReadFailure::Refused(address, status)) => {
                    if status.code() == tonic::Code::InvalidArgument {
                        // The key itself is refused: a node would refuse it too.
                        return Err(ClientError::Status {
                            address,
                            code: status.code(),
                            message: status.message().to_owned(),
                        });
                    }
                    if status.code() == tonic::Code::FailedPrecondition {
                        // Not a replica by the node's ring: ours is behind.
                        self.refresh_wanted.notify_one();
                    }
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    async fn get_local(
        &self,
        address: &str,
        request: proto::GetLocalRequest,
    ) -> Result<Bytes, LocalReadFailure> {
        let Ok(mut kv) = self.pool.client(address) else {
            return Err(LocalReadFailure::Unreachable);
        };
        match tokio::time::timeout(self.request_timeout, kv.get_local(request)).await {
            Ok(Ok(response)) => {
                self.mark_up(address);
                self.note_version(address, response.metadata());
                Ok(response.into_inner().state)
            }
            Ok(Err(status)) if !failed_locally(&status) => {
                self.mark_up(address);
                Err(LocalReadFailure::Refused(address.to_owned(), status))
            }
            Ok(Err(_)) | Err(_) => {
                self.mark_down(address);
                Err(LocalReadFailure::Unreachable)
            }
        }
    }

    fn current(&self) -> Option<Arc<RoutingTable>> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn is_down(&self, address: &str) -> bool {
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        down.get(address)
            .is_some_and(|until| *until > Instant::now())
    }

    fn mark_down(&self, address: &str) {
        let until = Instant::now() + self.down_for;
        self.down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(address.to_owned(), until);
        if self.routing == Routing::Client {
            self.full_refresh.store(true, Ordering::Relaxed);
            self.refresh_wanted.notify_one();
        }
    }

    fn mark_up(&self, address: &str) {
        let mut down = self
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !down.is_empty() {
            down.remove(address);
        }
    }

    /// The nodes to try for a call on `key`, in order, each marked whether it is a
    /// preference-list node the client picked (routed) or a fallback.
    fn plan(&self, key: &[u8], kind: Kind) -> Vec<(String, bool)> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let mut plan: Vec<(String, bool)> = Vec::new();
        let table = match self.routing {
            Routing::Client => self.current(),
            Routing::Server => None,
        };
        if let Some(table) = &table {
            let replicas: Vec<&RouteNode> = table
                .preference_list(key)
                .into_iter()
                .map(|i| &table.members()[i])
                .collect();
            let mut addresses: Vec<(&str, bool)> = replicas
                .iter()
                .filter_map(|node| {
                    let address = node.client_address.as_deref()?;
                    Some((address, node.reachable && !self.is_down(address)))
                })
                .collect();
            // Reachable replicas first, in preference order (a stable sort).
            addresses.sort_by_key(|(_, up)| !*up);
            let healthy = addresses.iter().filter(|(_, up)| *up).count();
            if kind == Kind::Read && healthy > 1 {
                // Any replica coordinates a read; rotating spreads them.
                addresses[..healthy].rotate_left(turn % healthy);
            }
            plan.extend(addresses.into_iter().map(|(a, _)| (a.to_owned(), true)));
        }
        // Fallback: any other node takes the request and routes it (server-driven).
        // After routed candidates only a couple, so a dead cluster fails fast.
        let mut others: Vec<String> = self.seeds.clone();
        if let Some(table) = &table {
            others.extend(
                table
                    .members()
                    .iter()
                    .filter_map(|node| node.client_address.clone()),
            );
        }
        if !others.is_empty() {
            let start = turn % others.len();
            others.rotate_left(start);
        }
        others.sort_by_key(|address| self.is_down(address));
        let limit = if plan.is_empty() { others.len() } else { 2 };
        let mut added = 0;
        for address in others {
            if added == limit {
                break;
            }
            if !plan.iter().any(|(a, _)| *a == address) {
                plan.push((address, false));
                added += 1;
            }
        }
        plan
    }

    /// Runs `call` against the planned nodes until one answers.
    async fn call<T, F, Fut>(&self, key: &[u8], kind: Kind, call: F) -> Result<T, ClientError>
    where
        F: Fn(KvClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempts: Vec<(String, String)> = Vec::new();
        for (address, routed) in self.plan(key, kind) {
            let kv = self.pool.client(&address)?;
            let reason = match tokio::time::timeout(self.request_timeout, call(kv)).await {
                Ok(Ok(response)) => {
                    self.mark_up(&address);
                    self.note_version(&address, response.metadata());
                    let counter = if routed { &self.routed } else { &self.fallback };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if !attempts.is_empty() {
                        self.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(response.into_inner());
                }
                // An overloaded node refused it before doing anything: another node
                // can coordinate it, and this one is up.
                Ok(Err(status)) if dynamo_proto::wire::is_shed(&status) => {
                    self.mark_up(&address);
                    attempts.push((address, format!("shed: {}", status.message())));
                    continue;
                }
                Ok(Err(status)) if !failed_locally(&status) => {
                    self.mark_up(&address);
                    return Err(ClientError::Status {
                        address,
                        code: status.code(),
                        message: status.message().to_owned(),
                    });
                }
                Ok(Err(status)) if dynamo_proto::wire::never_sent(&status) => {
                    (pool::describe(&status), false)
                }
                Ok(Err(status)) => (pool::describe(&status), true),
                Err(_) => (format!("no answer within {:?}", self.request_timeout), true),
            };
            let (reason, maybe_arrived) = reason;
            self.mark_down(&address);
            attempts.push((address, reason));
            if kind == Kind::Write && maybe_arrived {
                return Err(ClientError::OutcomeUnknown { attempts });
            }
        }
        Err(ClientError::Unavailable { attempts })
    }

    /// Wakes the refresh task when a node answers with another topology version.
    fn note_version(&self, address: &str, metadata: &tonic::metadata::MetadataMap) {
        if self.routing != Routing::Client {
            return;
        }
        let Some(theirs) = metadata.get(TOPOLOGY_HEADER).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let stale = self.current().is_none_or(|table| table.version() != theirs);
        if stale {
            *self
                .newer_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(address.to_owned());
            self.refresh_wanted.notify_one();
        }
    }

    /// Asks nodes for the topology, the one that showed a newer version first, then
    /// the reachable members, then the seeds; installs the first usable answer.
    ///
    /// The pull is whole (the version is not sent) after a node failed a call or while
    /// the table marks a node unreachable: membership has not changed then, but which
    /// nodes answer has, and the answering node's view of that orders the replicas.
    async fn refresh(&self) -> Result<bool, ClientError> {
        let current = self.current();
        let full = self.full_refresh.swap(false, Ordering::Relaxed)
            || current
                .as_ref()
                .is_some_and(|t| t.members().iter().any(|m| !m.reachable));
        let known_version = match &current {
            Some(table) if !full => table.version().to_owned(),
            _ => String::new(),
        };
        let mut candidates: Vec<String> = Vec::new();
        let newer = self
            .newer_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        candidates.extend(newer);
        if let Some(table) = &current {
            let mut members: Vec<&RouteNode> = table.members().iter().collect();
            members.sort_by_key(|node| !node.reachable);
            candidates.extend(members.iter().filter_map(|n| n.client_address.clone()));
        }
        candidates.extend(self.seeds.iter().cloned());
        let mut seen = Vec::new();
        candidates.retain(|a| {
            let fresh = !seen.contains(a);
            seen.push(a.clone());
            fresh
        });
        candidates.sort_by_key(|address| self.is_down(address));
        let mut attempts = Vec::new();
        for address in candidates {
            let kv = self
                .pool
                .client(&address)?
                .max_decoding_message_size(MAX_TOPOLOGY_BYTES);
            let request = proto::TopologyRequest {
                known_version: known_version.clone(),
            };
            let answer =
                match tokio::time::timeout(self.request_timeout, topology(kv, request)).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(status)) => {
                        let local = failed_locally(&status);
                        if local {
                            self.mark_down(&address);
                        }
                        attempts.push((address, answer_reason(local, &status)));
                        continue;
                    }
                    Err(_) => {
                        self.mark_down(&address);
                        attempts.push((address, "no answer in time".to_owned()));
                        continue;
                    }
                };
            self.mark_up(&address);
            if answer.unchanged {
                return Ok(false);
            }
            match RoutingTable::from_topology(answer) {
                Ok(table) if current.as_deref() == Some(&table) => return Ok(false),
                Ok(table) => {
                    self.install(table);
                    return Ok(true);
                }
                Err(error) => attempts.push((address, format!("answered: {error}"))),
            }
        }
        Err(ClientError::Unavailable { attempts })
    }

    fn install(&self, table: RoutingTable) {
        let keep: Vec<&str> = table
            .members()
            .iter()
            .filter_map(|n| n.client_address.as_deref())
            .chain(self.seeds.iter().map(String::as_str))
            .collect();
        self.pool.retain(&keep);
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(table));
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a failed refresh still heard from some node (then the client can run
    /// in fallback), as opposed to no seed answering at all.
    fn seeds_answered(&self, error: &ClientError) -> bool {
        match error {
            ClientError::Unavailable { attempts } => attempts
                .iter()
                .any(|(_, reason)| reason.starts_with("answered")),
            _ => false,
        }
    }

    /// Server routing: checks that at least one seed accepts a connection.
    async fn probe_seeds(&self) -> Result<(), ClientError> {
        let mut attempts = Vec::new();
        for seed in &self.seeds {
            match self.pool.probe(seed).await {
                Ok(()) => return Ok(()),
                Err(reason) => attempts.push((seed.clone(), reason)),
            }
        }
        Err(ClientError::Unavailable { attempts })
    }
}

async fn topology(
    mut kv: KvClient<tonic::transport::Channel>,
    request: proto::TopologyRequest,
) -> Result<proto::TopologyResponse, tonic::Status> {
    kv.topology(request).await.map(tonic::Response::into_inner)
}

/// Why a topology call failed, marked "answered" when a node did answer.
fn answer_reason(local: bool, status: &tonic::Status) -> String {
    if local {
        pool::describe(status)
    } else {
        format!("answered {:?}: {}", status.code(), status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_before_connecting() {
        let bad = [
            ClientConfig::new(Vec::<String>::new()),
            ClientConfig::new(["no-port"]),
            ClientConfig::new(["ftp://a:1"]),
            ClientConfig::new(["http://a:1"]).with_tls(ClientTlsConfig::new()),
            ClientConfig::new(["a:1"]).with_request_timeout(Duration::ZERO),
            ClientConfig::new(["a:1"]).with_connections_per_node(0),
            ClientConfig::new(["a:1"]).with_connections_per_node(MAX_CONNECTIONS_PER_NODE + 1),
            ClientConfig::new(["a:1"]).with_refresh_interval(Duration::from_millis(1)),
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(ClientError::Config(_))),
                "{config:?}"
            );
        }
        let (seeds, tls) = ClientConfig::new(["http://a:1/", "a:1", "b:2"])
            .validate()
            .unwrap();
        assert_eq!(
            (seeds, tls),
            (vec!["a:1".to_owned(), "b:2".to_owned()], false)
        );
        let (_, tls) = ClientConfig::new(["https://a:1"]).validate().unwrap();
        assert!(tls, "an https seed turns TLS on");
    }

    /// Nothing listens on port 1: both routings report every seed they tried.
    #[tokio::test]
    async fn unreachable_seeds_are_unavailable_with_the_cause() {
        for routing in [Routing::Client, Routing::Server] {
            let config = ClientConfig::new(["127.0.0.1:1"])
                .with_routing(routing)
                .with_connect_timeout(Duration::from_secs(2));
            let error = Client::connect(config).await.unwrap_err();
            let ClientError::Unavailable { attempts } = &error else {
                panic!("{error}");
            };
            assert_eq!(attempts.len(), 1, "{error}");
            assert_eq!(attempts[0].0, "127.0.0.1:1");
            assert!(!attempts[0].1.is_empty(), "{error}");
        }
    }

    #[test]
    fn contexts_and_versions_are_plain_values() {
        assert!(Context::empty().is_empty());
        let context = Context::from_bytes(vec![1u8, 2]);
        assert_eq!(context.as_bytes().as_ref(), [1, 2]);
        let versions = Versions {
            values: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            context,
        };
        assert!(versions.has_siblings() && !versions.is_empty());
        assert!(Versions::default().is_empty());
        assert_eq!(Routing::Client.as_str(), "client");
    }
}
