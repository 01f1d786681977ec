//! The node's Prometheus metrics (I/O shell): request counts and latencies by API and
//! operation, and gauges the node refreshes from its state (hint backlogs, members by
//! state, ring ownership, approximate key count).
//!
//! Dynamo §6 measures the store by its latency percentiles (the 99.9th in particular)
//! and by how much work waits in the background (hints, §4.6). The latency histogram
//! spans 0.1 ms to 10 s so both a local in-memory read and a request that hits the
//! coordinator's timeout land in a finite bucket.
//!
//! [`Metrics::encode`] renders the OpenMetrics text format that `/metrics` serves.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::NodeId;
use crate::admission::WorkKind;
use crate::membership::{MemberState, MemberTable};

/// The content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency histogram's buckets, in seconds: 0.1 ms to 10 s in
/// 1-2.5-5 steps.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the versions-per-get histogram's buckets: one version (no
/// divergence) up to the sibling cap's order of magnitude.
pub const VERSION_BUCKETS: [f64; 10] = [1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];

/// The client API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// The gRPC `Kv` service.
    Grpc,
    /// The HTTP `/v1/kv` routes.
    Http,
}

/// The client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A read.
    Get,
    /// A write of a value.
    Put,
    /// A write of a tombstone.
    Delete,
    /// A replica-local read for a get the client coordinates (`Kv.GetLocal`).
    GetLocal,
}

/// How a client request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Served (a get that found data, a put or delete acknowledged by W replicas).
    Ok,
    /// A get that found no data (no versions, or only tombstones).
    NotFound,
    /// The request was malformed or out of bounds (the client's fault).
    Invalid,
    /// A put refused at the sibling cap: the client reads and resolves.
    Conflict,
    /// The quorum could not be reached or no node could serve the key.
    Unavailable,
    /// The node failed (storage error, or another unexpected failure).
    Error,
}

/// Label values in snake case, as Prometheus label values conventionally are.
macro_rules! label_values {
    ($type:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $type {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values!(Api { Grpc => "grpc", Http => "http" });
label_values!(Op {
    Get => "get",
    Put => "put",
    Delete => "delete",
    GetLocal => "get_local",
});
label_values!(Outcome {
    Ok => "ok",
    NotFound => "not_found",
    Invalid => "invalid",
    Conflict => "conflict",
    Unavailable => "unavailable",
    Error => "error",
});

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    api: Api,
    op: Op,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LatencyLabels {
    api: Api,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReplicaCallLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabel {
    api: Api,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedConnectionLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

/// Receives the latency of every foreground request (see
/// [`Metrics::set_foreground_observer`]).
pub type ForegroundObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// Client requests of one operation since the node started, by how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTotals {
    /// Served: a value, a miss, or an acknowledged write.
    pub served: u64,
    /// Refused as the client's to fix (malformed, a conflict to resolve).
    pub refused: u64,
    /// Failed on the node's side (quorum unreachable, storage).
    pub failed: u64,
}

/// What the status page keeps of the metrics.
#[derive(Debug, Default)]
struct PageCounts {
    requests: BTreeMap<&'static str, RequestTotals>,
    hints: BTreeMap<String, u64>,
    transfer_pending: BTreeMap<String, u64>,
}

/// The status page's view of the metrics (see [`Metrics::page_snapshot`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PageSnapshot {
    /// Request totals by operation name (`get`, `put`, `delete`, `get_local`).
    pub requests: BTreeMap<&'static str, RequestTotals>,
    /// Hinted writes held per unreachable home replica.
    pub hints: BTreeMap<String, u64>,
    /// Ranges of this node's transfer not yet acknowledged, per peer.
    pub transfer_pending: BTreeMap<String, u64>,
    /// Keys stored (approximate).
    pub keys: u64,
    /// The p99 of recent foreground requests.
    pub foreground_p99: Duration,
}

/// The node's metrics; cheap to clone (every clone shares one registry).
///
/// Request metrics are recorded by the API handlers with [`Metrics::observe`]; the
/// gauges are refreshed by the node from its state (the `set_*` methods), typically on
/// a timer or when the state changes.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Owns the descriptors; every metric below is registered in it.
    registry: Registry,
    request: RequestMetrics,
    cluster: ClusterMetrics,
    serving: ServingMetrics,
    background: BackgroundMetrics,
    storage: StorageGauges,
    /// Anti-entropy's counters and tree gauges.
    anti_entropy: AntiEntropyCounters,
    /// The stray sweep's counters.
    sweep: SweepCounters,
    /// Clock incarnations already added to `background.actor_renewals`.
    actor_renewals_seen: std::sync::atomic::AtomicU64,
    /// What the status page shows, kept beside the Prometheus families (which cannot be
    /// read back): request totals by operation, and the last backlogs set.
    page: Mutex<PageCounts>,
    /// Told every foreground latency [`Metrics::observe`] records (the node's
    /// background budget); set once.
    foreground_observer: OnceLock<ForegroundObserver>,
    /// Held while a labelled gauge family is replaced (cleared, then refilled) and while
    /// encoding, so a scrape never sees a family half refilled. A std `Mutex`: neither
    /// critical section awaits.
    refresh: Mutex<()>,
}

/// Registers `metric` in `registry` and returns it (clones share its series).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The client requests: counts, latency, versions returned, what was shed or forwarded.
struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// Versions each get of an existing key returned (Dynamo §6.3's divergence).
    get_versions: Histogram,
    /// Client requests refused because too many were in flight, by API.
    requests_shed: Family<ApiLabel, Counter>,
    /// Client puts this node received without being a home replica of the key, and
    /// handed to one (server-driven routing's extra hop, Dynamo §4.5).
    forwarded_puts: Counter,
    /// Spare replica reads a get sent because no quorum answered within the recent p90
    /// (`--read-fanout quorum`'s speculative retry).
    speculative_reads: Counter,
}

impl RequestMetrics {
    fn register(registry: &mut Registry) -> Self {
        Self {
            requests: registered(
                registry,
                "dynamo_requests",
                "Client requests by API, operation and outcome",
                Family::default(),
            ),
            latency: registered(
                registry,
                "dynamo_request_duration_seconds",
                "Client request latency by API and operation",
                Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ),
            get_versions: registered(
                registry,
                "dynamo_get_versions",
                "Versions (concurrent siblings) each successful get of an existing key returned: the share at le=1 is the share of reads that saw one version (Dynamo 6.3 reports 99.94%)",
                Histogram::new(VERSION_BUCKETS),
            ),
            requests_shed: registered(
                registry,
                "dynamo_requests_shed",
                "Client requests refused at once (UNAVAILABLE or 503 with a retry hint) because max-inflight-requests were in flight, by API",
                Family::default(),
            ),
            forwarded_puts: registered(
                registry,
                "dynamo_forwarded_puts",
                "Client puts received by a node outside the key's preference list and forwarded to a home replica",
                Counter::default(),
            ),
            speculative_reads: registered(
                registry,
                "dynamo_speculative_reads",
                "Spare replica reads gets sent after waiting the recent p90 without a quorum (read fan-out quorum)",
                Counter::default(),
            ),
        }
    }
}

/// What this node knows of the cluster: members, ownership, peers' reachability, hint
/// backlogs, keys held, and its range transfers.
struct ClusterMetrics {
    hint_backlog: Family<TargetLabel, Gauge>,
    members: Family<StateLabel, Gauge>,
    ownership: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    keys: Gauge,
    /// Whether the failure detector takes each peer to be up.
    peer_reachable: Family<PeerLabel, Gauge>,
    transfer_pending: Family<PeerLabel, Gauge>,
    transfer_keys_sent: Counter,
    transfer_bytes_sent: Counter,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> Self {
        Self {
            hint_backlog: registered(
                registry,
                "dynamo_hint_backlog_keys",
                "Hinted writes held for each unreachable home replica",
                Family::default(),
            ),
            members: registered(
                registry,
                "dynamo_members",
                "Members of this node's member table by state",
                Family::default(),
            ),
            ownership: registered(
                registry,
                "dynamo_ring_ownership",
                "Fraction of the ring each member owns as primary",
                Family::default(),
            ),
            keys: registered(
                registry,
                "dynamo_keys",
                "Keys stored on this node (approximate)",
                Gauge::default(),
            ),
            peer_reachable: registered(
                registry,
                "dynamo_peer_reachable",
                "1 while the failure detector takes the peer (a member other than this node) to be up, 0 while it takes it to be down",
                Family::default(),
            ),
            transfer_pending: registered(
                registry,
                "dynamo_transfer_pending_ranges",
                "Ranges of this node's join or leave not yet acknowledged, by peer",
                Family::default(),
            ),
            transfer_keys_sent: registered(
                registry,
                "dynamo_transfer_keys_sent",
                "Keys this node's range transfers got acknowledged",
                Counter::default(),
            ),
            transfer_bytes_sent: registered(
                registry,
                "dynamo_transfer_bytes_sent",
                "Key and state bytes this node's range transfers got acknowledged",
                Counter::default(),
            ),
        }
    }
}

/// The listeners and the internode service: connections, refusals, TLS reloads.
struct ServingMetrics {
    /// Connections each listener serves now.
    connections: Family<ListenerLabel, Gauge>,
    /// The connection cap each listener enforces.
    connection_limit: Family<ListenerLabel, Gauge>,
    /// Connections closed unserved, by listener and reason.
    connections_refused: Family<RefusedConnectionLabels, Counter>,
    tls_reloads: Family<ResultLabel, Counter>,
    /// `Replica` calls this node served or refused, by method and gRPC outcome.
    replica_calls: Family<ReplicaCallLabels, Counter>,
}

impl ServingMetrics {
    fn register(registry: &mut Registry) -> Self {
        Self {
            connections: registered(
                registry,
                "dynamo_connections",
                "Connections each listener (client, internode, http) serves now",
                Family::default(),
            ),
            connection_limit: registered(
                registry,
                "dynamo_connection_limit",
                "Most connections each listener serves at once (max-connections, lowered to fit the open-files limit)",
                Family::default(),
            ),
            connections_refused: registered(
                registry,
                "dynamo_connections_refused",
                "Connections closed unserved, by listener and reason (cap: at the connection cap; silent: sent nothing within client-read-timeout)",
                Family::default(),
            ),
            tls_reloads: registered(
                registry,
                "dynamo_tls_reloads",
                "Checks of the TLS certificate files that found them changed: result=changed (served from the next handshake on) or refused (not a valid pair yet; the last one stays)",
                Family::default(),
            ),
            replica_calls: registered(
                registry,
                "dynamo_replica_calls",
                "Internode Replica calls this node answered, by method and gRPC outcome (unauthenticated: refused by internode authentication)",
                Family::default(),
            ),
        }
    }
}

/// Background work: its budget and grants, the foreground latency it yields to, stale
/// copies dropped, clock incarnations taken.
struct BackgroundMetrics {
    background_budget: Gauge,
    background_granted: Family<KindLabel, Counter>,
    foreground_p99: Gauge<f64, AtomicU64>,
    /// Copies too old to deliver, dropped, by the path that held them.
    stale_copies_dropped: Family<PathLabel, Counter>,
    /// Clock incarnations this node took since it started (see `identity`).
    actor_renewals: Counter,
}

impl BackgroundMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            background_budget: registered(
                registry,
                "dynamo_background_budget",
                "Background work units (hints delivered, ...) allowed per interval",
                Gauge::default(),
            ),
            background_granted: registered(
                registry,
                "dynamo_background_granted",
                "Background work units granted, by kind of work",
                Family::default(),
            ),
            foreground_p99: registered(
                registry,
                "dynamo_foreground_latency_p99_seconds",
                "p99 of client request latency over the admission window, which the background budget reacts to (0 without requests)",
                Gauge::default(),
            ),
            stale_copies_dropped: registered(
                registry,
                "dynamo_stale_copies_dropped",
                "Copies held outside their key's home replicas (path=hint) dropped instead of delivered because they were older than three quarters of the tombstone grace",
                Family::default(),
            ),
            actor_renewals: registered(
                registry,
                "dynamo_actor_renewals",
                "Fresh clock incarnations taken since start, each before removing a key state holding a live sibling with the node's own dot",
                Counter::default(),
            ),
        };
        for kind in WorkKind::ALL {
            // Every kind shows from the start, so a rate over it is never missing.
            let _ = metrics.background_granted.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        metrics
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered and no observations.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // Registration order is the order `/metrics` lists the families in.
        let request = RequestMetrics::register(&mut registry);
        let cluster = ClusterMetrics::register(&mut registry);
        let anti_entropy = AntiEntropyCounters::register(&mut registry);
        let storage = StorageGauges::register(&mut registry);
        let sweep = SweepCounters::register(&mut registry);
        let background = BackgroundMetrics::register(&mut registry);
        let serving = ServingMetrics::register(&mut registry);
        Self {
            inner: Arc::new(Inner {
                registry,
                request,
                cluster,
                serving,
                background,
                storage,
                anti_entropy,
                sweep,
                actor_renewals_seen: std::sync::atomic::AtomicU64::new(0),
                page: Mutex::new(PageCounts::default()),
                foreground_observer: OnceLock::new(),
                refresh: Mutex::new(()),
            }),
        }
    }

    fn refresh_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.inner.refresh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Has `observer` told the latency of every foreground request [`observe`](Self::observe)
    /// records from now on, except refused ones ([`Outcome::Invalid`]), which say
    /// nothing about how loaded the node is. Only the first observer set is kept; the
    /// rest are dropped and `false` returned.
    pub fn set_foreground_observer(&self, observer: ForegroundObserver) -> bool {
        self.inner.foreground_observer.set(observer).is_ok()
    }

    /// Shows the background budget (units per interval) and the foreground p99 it
    /// reacts to (`None`, shown as 0: no requests in the window).
    pub fn set_background(&self, budget: u64, foreground_p99: Option<Duration>) {
        self.inner
            .background
            .background_budget
            .set(saturating_i64(budget));
        self.inner
            .background
            .foreground_p99
            .set(foreground_p99.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// Counts `units` of background work granted to `kind`.
    pub fn count_background_granted(&self, kind: WorkKind, units: u64) {
        self.inner
            .background
            .background_granted
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc_by(units);
    }

    /// Counts one `Replica` call answered with `outcome` (labels from
    /// [`transport::auth`](crate::transport::auth): a fixed set of methods and codes).
    pub fn replica_call(&self, method: &'static str, outcome: &'static str) {
        self.inner
            .serving
            .replica_calls
            .get_or_create(&ReplicaCallLabels { method, outcome })
            .inc();
    }

    /// `Replica` calls counted with `method` and `outcome` so far.
    pub fn replica_calls(&self, method: &'static str, outcome: &'static str) -> u64 {
        self.inner
            .serving
            .replica_calls
            .get_or_create(&ReplicaCallLabels { method, outcome })
            .get()
    }

    /// Counts one copy dropped as too old to deliver, held by `path` (`hint`).
    pub fn count_stale_copy(&self, path: &'static str) {
        self.inner
            .background
            .stale_copies_dropped
            .get_or_create(&PathLabel { path })
            .inc();
    }

    /// Counts one check of the TLS files that found them changed, by `result`
    /// (`changed` or `refused`).
    pub fn count_tls_reload(&self, result: &'static str) {
        self.inner
            .serving
            .tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Records the versions a successful get returned; a key not found (none) is
    /// left out, so the histogram describes divergence among keys that exist.
    pub fn record_get_versions(&self, versions: usize) {
        if versions > 0 {
            #[allow(clippy::cast_precision_loss)] // counts far below 2^52
            self.inner.request.get_versions.observe(versions as f64);
        }
    }

    /// Copies dropped as too old to deliver so far, held by `path`.
    pub fn stale_copies(&self, path: &'static str) -> u64 {
        self.inner
            .background
            .stale_copies_dropped
            .get_or_create(&PathLabel { path })
            .get()
    }

    /// Counts one client request shed at the in-flight cap.
    pub fn count_shed(&self, api: Api) {
        self.inner
            .request
            .requests_shed
            .get_or_create(&ApiLabel { api })
            .inc();
    }

    /// Client requests shed so far through `api`.
    pub fn shed(&self, api: Api) -> u64 {
        self.inner
            .request
            .requests_shed
            .get_or_create(&ApiLabel { api })
            .get()
    }

    /// Shows `listener`'s connection cap.
    pub fn set_connection_limit(&self, listener: &'static str, limit: usize) {
        self.inner
            .serving
            .connection_limit
            .get_or_create(&ListenerLabel { listener })
            .set(saturating_i64(u64::try_from(limit).unwrap_or(u64::MAX)));
    }

    /// One more (`opened`) or one fewer connection served by `listener`.
    pub fn connection_changed(&self, listener: &'static str, opened: bool) {
        let gauge = self
            .inner
            .serving
            .connections
            .get_or_create(&ListenerLabel { listener });
        if opened {
            gauge.inc();
        } else {
            gauge.dec();
        }
    }

    /// Counts one connection `listener` closed unserved, for `reason`.
    pub fn count_refused_connection(&self, listener: &'static str, reason: &'static str) {
        self.inner
            .serving
            .connections_refused
            .get_or_create(&RefusedConnectionLabels { listener, reason })
            .inc();
    }

    /// Records one client request: counts it and adds its latency.
    pub fn observe(&self, api: Api, op: Op, outcome: Outcome, duration: Duration) {
        if outcome != Outcome::Invalid {
            if let Some(observer) = self.inner.foreground_observer.get() {
                observer(duration);
            }
        }
        self.inner
            .request
            .requests
            .get_or_create(&RequestLabels { api, op, outcome })
            .inc();
        {
            let mut page = self.page();
            let totals = page.requests.entry(op.as_str()).or_default();
            match outcome {
                Outcome::Ok | Outcome::NotFound => totals.served += 1,
                Outcome::Invalid | Outcome::Conflict => totals.refused += 1,
                Outcome::Unavailable | Outcome::Error => totals.failed += 1,
            }
        }
        self.inner
            .request
            .latency
            .get_or_create(&LatencyLabels { api, op })
            .observe(duration.as_secs_f64());
    }

    /// Counts a client put forwarded to a home replica of its key.
    pub fn record_forwarded_put(&self) {
        self.inner.request.forwarded_puts.inc();
    }

    /// Client puts forwarded to a home replica so far.
    pub fn forwarded_puts(&self) -> u64 {
        self.inner.request.forwarded_puts.get()
    }

    /// Counts the speculative reads one get sent.
    pub fn record_speculative_reads(&self, reads: u32) {
        if reads > 0 {
            self.inner
                .request
                .speculative_reads
                .inc_by(u64::from(reads));
        }
    }

    /// Speculative reads sent so far.
    pub fn speculative_reads(&self) -> u64 {
        self.inner.request.speculative_reads.get()
    }

    /// Brings the renewal counter up to `total`, the identity's count since start (a
    /// smaller total, which a running identity never reports, changes nothing).
    pub fn set_actor_renewals(&self, total: u64) {
        let seen = self
            .inner
            .actor_renewals_seen
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
        if total > seen {
            self.inner.background.actor_renewals.inc_by(total - seen);
        }
    }

    /// Replaces the hint backlog gauges: hinted keys held for each home replica.
    /// Targets left out (their hints delivered) disappear from the output.
    pub fn set_hint_backlogs<'a>(&self, backlogs: impl IntoIterator<Item = (&'a NodeId, u64)>) {
        let _refresh = self.refresh_lock();
        self.inner.cluster.hint_backlog.clear();
        let mut shown = BTreeMap::new();
        for (target, keys) in backlogs {
            shown.insert(target.to_string(), keys);
            self.inner
                .cluster
                .hint_backlog
                .get_or_create(&TargetLabel {
                    target: target.to_string(),
                })
                .set(saturating_i64(keys));
        }
        self.page().hints = shown;
    }

    /// Replaces the peer reachability gauges: one per peer given, 1 when reachable;
    /// peers left out disappear.
    pub fn set_peer_reachability<'a>(&self, peers: impl IntoIterator<Item = (&'a NodeId, bool)>) {
        let _refresh = self.refresh_lock();
        self.inner.cluster.peer_reachable.clear();
        for (peer, up) in peers {
            self.inner
                .cluster
                .peer_reachable
                .get_or_create(&PeerLabel {
                    peer: peer.to_string(),
                })
                .set(i64::from(up));
        }
    }

    /// Sets the member counts by state from the member table; every state is
    /// present, zero when no member is in it.
    pub fn set_members(&self, table: &MemberTable) {
        let mut counts: BTreeMap<String, i64> = [
            MemberState::Joining,
            MemberState::Member,
            MemberState::Leaving,
            MemberState::Removed,
        ]
        .into_iter()
        .map(|state| (state.to_string(), 0))
        .collect();
        for member in table.iter() {
            *counts.entry(member.state().to_string()).or_default() += 1;
        }
        let _refresh = self.refresh_lock();
        self.inner.cluster.members.clear();
        for (state, count) in counts {
            self.inner
                .cluster
                .members
                .get_or_create(&StateLabel { state })
                .set(count);
        }
    }

    /// Replaces the ring ownership gauges (fractions of the ring, as from
    /// [`Ring::ownership`](crate::ring::Ring::ownership)); nodes left out disappear.
    pub fn set_ring_ownership(&self, ownership: &BTreeMap<NodeId, f64>) {
        let _refresh = self.refresh_lock();
        self.inner.cluster.ownership.clear();
        for (node, fraction) in ownership {
            self.inner
                .cluster
                .ownership
                .get_or_create(&NodeLabel {
                    node: node.to_string(),
                })
                .set(*fraction);
        }
    }

    /// Sets the approximate number of keys stored on this node.
    pub fn set_keys(&self, keys: u64) {
        self.inner.cluster.keys.set(saturating_i64(keys));
    }

    /// Sets the storage size gauges: live bytes, and bytes on disk (`None`, shown as 0,
    /// for an engine without files).
    pub fn set_storage_space(&self, live_bytes: u64, disk_bytes: Option<u64>) {
        let storage = &self.inner.storage;
        storage.live_bytes.set(saturating_i64(live_bytes));
        storage
            .disk_bytes
            .set(saturating_i64(disk_bytes.unwrap_or(0)));
    }

    /// Replaces the pending transfer gauges: ranges not yet acknowledged, per peer.
    /// Peers left out (done) disappear from the output.
    pub fn set_transfer_pending<'a>(&self, pending: impl IntoIterator<Item = (&'a NodeId, u64)>) {
        let _refresh = self.refresh_lock();
        self.inner.cluster.transfer_pending.clear();
        let mut shown = BTreeMap::new();
        for (peer, ranges) in pending {
            shown.insert(peer.to_string(), ranges);
            self.inner
                .cluster
                .transfer_pending
                .get_or_create(&PeerLabel {
                    peer: peer.to_string(),
                })
                .set(saturating_i64(ranges));
        }
        self.page().transfer_pending = shown;
    }

    /// What the status page shows: request totals by operation, the hint and transfer
    /// backlogs last set, stored keys and the foreground p99.
    pub fn page_snapshot(&self) -> PageSnapshot {
        let page = self.page();
        PageSnapshot {
            requests: page.requests.clone(),
            hints: page.hints.clone(),
            transfer_pending: page.transfer_pending.clone(),
            keys: u64::try_from(self.inner.cluster.keys.get()).unwrap_or(0),
            foreground_p99: Duration::from_secs_f64(
                self.inner.background.foreground_p99.get().max(0.0),
            ),
        }
    }

    fn page(&self) -> std::sync::MutexGuard<'_, PageCounts> {
        self.inner
            .page
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts keys and bytes a range transfer got acknowledged.
    pub fn add_transfer_sent(&self, keys: u64, bytes: u64) {
        self.inner.cluster.transfer_keys_sent.inc_by(keys);
        self.inner.cluster.transfer_bytes_sent.inc_by(bytes);
    }

    /// Renders every metric in the OpenMetrics text format
    /// ([`OPENMETRICS_CONTENT_TYPE`]), ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _refresh = self.refresh_lock();
        // Writing into a String cannot fail, and every metric type we register encodes
        // without error; an error here would be a bug in prometheus-client.
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

/// The stray sweep's figures (see `transfer::sweep`), as counted since the node started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepStats {
    /// Sweep rounds run.
    pub rounds: u64,
    /// Stray keys every current home replica acknowledged.
    pub keys_handed_over: u64,
    /// Handed-over keys removed here (unchanged since they were sent).
    pub keys_removed: u64,
}

/// The storage engine's size: what amplification costs, watched (sled can grow well
/// past its live data).
struct StorageGauges {
    live_bytes: Gauge,
    disk_bytes: Gauge,
}

impl StorageGauges {
    fn register(registry: &mut Registry) -> Self {
        let gauges = Self {
            live_bytes: Gauge::default(),
            disk_bytes: Gauge::default(),
        };
        registry.register(
            "dynamo_storage_live_bytes",
            "Bytes of the stored keys and values (each key's every version and clock)",
            gauges.live_bytes.clone(),
        );
        registry.register(
            "dynamo_storage_disk_bytes",
            "Bytes the storage engine's files take on disk (0 for the in-memory engine)",
            gauges.disk_bytes.clone(),
        );
        gauges
    }
}

struct SweepCounters {
    rounds: Counter,
    keys_handed_over: Counter,
    keys_removed: Counter,
}

impl SweepCounters {
    fn register(registry: &mut Registry) -> Self {
        let counters = Self {
            rounds: Counter::default(),
            keys_handed_over: Counter::default(),
            keys_removed: Counter::default(),
        };
        for (name, help, counter) in [
            (
                "dynamo_sweep_rounds",
                "Stray sweep rounds run",
                &counters.rounds,
            ),
            (
                "dynamo_sweep_keys_handed_over",
                "Stray keys (held here, replicated elsewhere) acknowledged by every home replica",
                &counters.keys_handed_over,
            ),
            (
                "dynamo_sweep_keys_removed",
                "Stray keys removed here after their home replicas acknowledged them",
                &counters.keys_removed,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        counters
    }
}

impl Metrics {
    /// Adds one stray sweep round's figures: keys every home replica acknowledged, and
    /// of those the ones removed here.
    pub fn record_sweep_round(&self, keys_handed_over: u64, keys_removed: u64) {
        let counters = &self.inner.sweep;
        counters.rounds.inc();
        counters.keys_handed_over.inc_by(keys_handed_over);
        counters.keys_removed.inc_by(keys_removed);
    }

    /// The stray sweep's figures so far.
    pub fn sweep_stats(&self) -> SweepStats {
        let counters = &self.inner.sweep;
        SweepStats {
            rounds: counters.rounds.get(),
            keys_handed_over: counters.keys_handed_over.get(),
            keys_removed: counters.keys_removed.get(),
        }
    }
}

/// How a round's tree exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeResult {
    /// The trees were compared and the differences repaired.
    Completed,
    /// The peer was unreachable, refused or misbehaved.
    Failed,
}

/// One anti-entropy round's figures, as the metrics count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AntiEntropyRound {
    /// The exchange, if the round chose a range and a peer.
    pub exchange: Option<ExchangeResult>,
    /// Leaf buckets whose hashes differed.
    pub differing_buckets: u64,
    /// Keys looked at while comparing the differing buckets.
    pub keys_compared: u64,
    /// Keys sent to the peer.
    pub keys_pushed: u64,
    /// Keys of the peer merged here.
    pub keys_pulled: u64,
    /// Tombstone-only keys removed from every replica.
    pub tombstones_purged: u64,
}

/// Anti-entropy's figures (Dynamo §4.7), as counted since the node started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AntiEntropyStats {
    /// Tree exchanges that completed.
    pub exchanges: u64,
    /// Exchanges that failed (peer unreachable, refused, misbehaving).
    pub exchange_failures: u64,
    /// Leaf buckets found differing.
    pub differing_buckets: u64,
    /// Keys compared in differing buckets.
    pub keys_compared: u64,
    /// Keys whose state was sent to a peer.
    pub keys_pushed: u64,
    /// Keys whose peer state was merged here.
    pub keys_pulled: u64,
    /// Tombstone-only keys removed from every replica.
    pub tombstones_purged: u64,
    /// Trees complete and exchanging.
    pub trees_ready: u64,
    /// Trees waiting for or in their build scan.
    pub trees_building: u64,
}

struct AntiEntropyCounters {
    exchanges: Counter,
    exchange_failures: Counter,
    differing_buckets: Counter,
    keys_compared: Counter,
    keys_pushed: Counter,
    keys_pulled: Counter,
    tombstones_purged: Counter,
    trees: Family<StateLabel, Gauge>,
}

impl AntiEntropyCounters {
    fn register(registry: &mut Registry) -> Self {
        let counters = Self {
            exchanges: Counter::default(),
            exchange_failures: Counter::default(),
            differing_buckets: Counter::default(),
            keys_compared: Counter::default(),
            keys_pushed: Counter::default(),
            keys_pulled: Counter::default(),
            tombstones_purged: Counter::default(),
            trees: Family::default(),
        };
        for (name, help, counter) in [
            (
                "dynamo_antientropy_exchanges",
                "Merkle tree exchanges completed with a peer",
                &counters.exchanges,
            ),
            (
                "dynamo_antientropy_exchange_failures",
                "Merkle tree exchanges that failed",
                &counters.exchange_failures,
            ),
            (
                "dynamo_antientropy_differing_buckets",
                "Merkle leaf buckets found differing from a peer's",
                &counters.differing_buckets,
            ),
            (
                "dynamo_antientropy_keys_compared",
                "Keys compared with a peer in differing buckets",
                &counters.keys_compared,
            ),
            (
                "dynamo_antientropy_keys_pushed",
                "Keys repaired by sending our state to a peer",
                &counters.keys_pushed,
            ),
            (
                "dynamo_antientropy_keys_pulled",
                "Keys repaired by merging a peer's state here",
                &counters.keys_pulled,
            ),
            (
                "dynamo_tombstones_purged",
                "Tombstone-only keys purged from every replica",
                &counters.tombstones_purged,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "dynamo_antientropy_trees",
            "Merkle trees by state (ready, building)",
            counters.trees.clone(),
        );
        counters
    }
}

impl Metrics {
    /// Adds one anti-entropy round's figures.
    pub fn record_anti_entropy_round(&self, report: &AntiEntropyRound) {
        let counters = &self.inner.anti_entropy;
        match report.exchange {
            Some(ExchangeResult::Completed) => {
                counters.exchanges.inc();
            }
            Some(ExchangeResult::Failed) => {
                counters.exchange_failures.inc();
            }
            None => {}
        }
        counters.differing_buckets.inc_by(report.differing_buckets);
        counters.keys_compared.inc_by(report.keys_compared);
        counters.keys_pushed.inc_by(report.keys_pushed);
        counters.keys_pulled.inc_by(report.keys_pulled);
        counters.tombstones_purged.inc_by(report.tombstones_purged);
    }

    /// Sets how many Merkle trees are ready and how many are being built.
    pub fn set_anti_entropy_trees(&self, ready: u64, building: u64) {
        let _refresh = self.refresh_lock();
        for (state, count) in [("ready", ready), ("building", building)] {
            self.inner
                .anti_entropy
                .trees
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(saturating_i64(count));
        }
    }

    /// Anti-entropy's figures so far.
    pub fn anti_entropy_stats(&self) -> AntiEntropyStats {
        let counters = &self.inner.anti_entropy;
        let tree_gauge = |state: &str| {
            let count = counters
                .trees
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .get();
            u64::try_from(count).unwrap_or(0)
        };
        AntiEntropyStats {
            exchanges: counters.exchanges.get(),
            exchange_failures: counters.exchange_failures.get(),
            differing_buckets: counters.differing_buckets.get(),
            keys_compared: counters.keys_compared.get(),
            keys_pushed: counters.keys_pushed.get(),
            keys_pulled: counters.keys_pulled.get(),
            tombstones_purged: counters.tombstones_purged.get(),
            trees_ready: tree_gauge("ready"),
            trees_building: tree_gauge("building"),
        }
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// The sample line for `series` (name plus labels), if present.
    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .map(|line| line[series.len() + 1..].trim())
    }

    #[test]
    fn a_fresh_registry_shows_only_the_unlabelled_series() {
        // Labelled families appear with their first series; the background grants
        // start with every kind at zero.
        let text = Metrics::new().encode();
        // Series within a family come in hash order.
        let mut series: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        series.sort_unstable();
        assert_eq!(
            series,
            [
                r#"dynamo_actor_renewals_total 0"#,
                r#"dynamo_antientropy_differing_buckets_total 0"#,
                r#"dynamo_antientropy_exchange_failures_total 0"#,
                r#"dynamo_antientropy_exchanges_total 0"#,
                r#"dynamo_antientropy_keys_compared_total 0"#,
                r#"dynamo_antientropy_keys_pulled_total 0"#,
                r#"dynamo_antientropy_keys_pushed_total 0"#,
                r#"dynamo_background_budget 0"#,
                r#"dynamo_background_granted_total{kind="anti_entropy"} 0"#,
                r#"dynamo_background_granted_total{kind="handoff"} 0"#,
                r#"dynamo_background_granted_total{kind="sweep"} 0"#,
                r#"dynamo_background_granted_total{kind="transfer"} 0"#,
                r#"dynamo_background_granted_total{kind="tree_build"} 0"#,
                r#"dynamo_foreground_latency_p99_seconds 0.0"#,
                r#"dynamo_forwarded_puts_total 0"#,
                r#"dynamo_get_versions_bucket{le="+Inf"} 0"#,
                r#"dynamo_get_versions_bucket{le="1.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="1024.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="16.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="2.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="256.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="3.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="4.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="4096.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="64.0"} 0"#,
                r#"dynamo_get_versions_bucket{le="8.0"} 0"#,
                r#"dynamo_get_versions_count 0"#,
                r#"dynamo_get_versions_sum 0.0"#,
                r#"dynamo_keys 0"#,
                r#"dynamo_speculative_reads_total 0"#,
                r#"dynamo_storage_disk_bytes 0"#,
                r#"dynamo_storage_live_bytes 0"#,
                r#"dynamo_sweep_keys_handed_over_total 0"#,
                r#"dynamo_sweep_keys_removed_total 0"#,
                r#"dynamo_sweep_rounds_total 0"#,
                r#"dynamo_tombstones_purged_total 0"#,
                r#"dynamo_transfer_bytes_sent_total 0"#,
                r#"dynamo_transfer_keys_sent_total 0"#,
            ]
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn sweep_rounds_add_up_in_counters_and_stats() {
        let metrics = Metrics::new();
        metrics.record_sweep_round(5, 4);
        metrics.record_sweep_round(0, 0);
        let text = metrics.encode();
        assert_eq!(sample(&text, "dynamo_sweep_rounds_total"), Some("2"));
        assert_eq!(
            sample(&text, "dynamo_sweep_keys_handed_over_total"),
            Some("5")
        );
        assert_eq!(sample(&text, "dynamo_sweep_keys_removed_total"), Some("4"));
        assert_eq!(
            metrics.sweep_stats(),
            SweepStats {
                rounds: 2,
                keys_handed_over: 5,
                keys_removed: 4
            }
        );
    }

    #[test]
    fn anti_entropy_rounds_add_up_in_counters_and_stats() {
        let metrics = Metrics::new();
        let report = AntiEntropyRound {
            exchange: Some(ExchangeResult::Completed),
            differing_buckets: 3,
            keys_compared: 5,
            keys_pushed: 1,
            keys_pulled: 2,
            tombstones_purged: 1,
        };
        metrics.record_anti_entropy_round(&report);
        metrics.record_anti_entropy_round(&AntiEntropyRound {
            exchange: Some(ExchangeResult::Failed),
            ..report
        });
        metrics.set_anti_entropy_trees(4, 1);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "dynamo_antientropy_exchanges_total"),
            Some("1")
        );
        assert_eq!(
            sample(&text, "dynamo_antientropy_exchange_failures_total"),
            Some("1")
        );
        assert_eq!(
            sample(&text, "dynamo_antientropy_keys_pulled_total"),
            Some("4")
        );
        assert_eq!(sample(&text, "dynamo_tombstones_purged_total"), Some("2"));
        assert_eq!(
            sample(&text, "dynamo_antientropy_trees{state=\"building\"}"),
            Some("1")
        );
        let stats = metrics.anti_entropy_stats();
        assert_eq!(
            (
                stats.differing_buckets,
                stats.keys_pushed,
                stats.trees_ready
            ),
            (6, 2, 4)
        );
    }

    #[test]
    fn transfer_gauges_replace_their_family_and_counters_add_up() {
        let metrics = Metrics::new();
        let (a, b) = (id("a"), id("b"));
        metrics.set_transfer_pending([(&a, 4), (&b, 2)]);
        metrics.set_transfer_pending([(&b, 1)]);
        metrics.add_transfer_sent(10, 1000);
        metrics.add_transfer_sent(5, 24);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, r#"dynamo_transfer_pending_ranges{peer="a"}"#),
            None
        );
        assert_eq!(
            sample(&text, r#"dynamo_transfer_pending_ranges{peer="b"}"#),
            Some("1")
        );
        assert_eq!(sample(&text, "dynamo_transfer_keys_sent_total"), Some("15"));
        assert_eq!(
            sample(&text, "dynamo_transfer_bytes_sent_total"),
            Some("1024")
        );
    }

    #[test]
    fn forwarded_puts_are_counted() {
        let metrics = Metrics::new();
        metrics.record_forwarded_put();
        metrics.clone().record_forwarded_put();
        assert_eq!(metrics.forwarded_puts(), 2);
        assert_eq!(
            sample(&metrics.encode(), "dynamo_forwarded_puts_total"),
            Some("2")
        );
    }

    #[test]
    fn speculative_reads_and_actor_renewals_are_counted() {
        let metrics = Metrics::new();
        metrics.record_speculative_reads(0);
        metrics.record_speculative_reads(2);
        metrics.record_speculative_reads(1);
        assert_eq!(metrics.speculative_reads(), 3);
        metrics.set_actor_renewals(2);
        metrics.set_actor_renewals(2);
        metrics.set_actor_renewals(5);
        metrics.set_actor_renewals(4);
        let text = metrics.encode();
        assert_eq!(sample(&text, "dynamo_speculative_reads_total"), Some("3"));
        assert_eq!(sample(&text, "dynamo_actor_renewals_total"), Some("5"));
    }

    #[test]
    fn background_budget_and_foreground_p99_are_shown() {
        let metrics = Metrics::new();
        metrics.set_background(250, Some(Duration::from_millis(120)));
        metrics.count_background_granted(WorkKind::Transfer, 7);
        metrics.count_background_granted(WorkKind::Transfer, 3);
        let text = metrics.encode();
        assert_eq!(sample(&text, "dynamo_background_budget"), Some("250"));
        assert_eq!(
            sample(&text, "dynamo_foreground_latency_p99_seconds"),
            Some("0.12")
        );
        assert_eq!(
            sample(&text, r#"dynamo_background_granted_total{kind="transfer"}"#),
            Some("10")
        );
        metrics.set_background(10, None);
        assert_eq!(
            sample(&metrics.encode(), "dynamo_foreground_latency_p99_seconds"),
            Some("0.0")
        );
    }

    #[test]
    fn observations_are_counted_by_labels() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        metrics.observe(Api::Http, Op::Get, Outcome::Ok, Duration::from_millis(2));
        clone.observe(Api::Http, Op::Get, Outcome::Ok, Duration::from_millis(3));
        metrics.observe(
            Api::Grpc,
            Op::Delete,
            Outcome::Unavailable,
            Duration::from_secs(20),
        );
        let text = metrics.encode();
        assert_eq!(
            sample(
                &text,
                r#"dynamo_requests_total{api="http",op="get",outcome="ok"}"#
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"dynamo_requests_total{api="grpc",op="delete",outcome="unavailable"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                r#"dynamo_request_duration_seconds_count{api="http",op="get"}"#
            ),
            Some("2")
        );
        // 2 ms and 3 ms both fall in the 5 ms bucket, neither in the 1 ms one.
        assert_eq!(
            sample(
                &text,
                r#"dynamo_request_duration_seconds_bucket{le="0.005",api="http",op="get"}"#
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"dynamo_request_duration_seconds_bucket{le="0.001",api="http",op="get"}"#
            ),
            Some("0")
        );
        // 20 s is past the last finite bucket: only +Inf counts it.
        assert_eq!(
            sample(
                &text,
                r#"dynamo_request_duration_seconds_bucket{le="10.0",api="grpc",op="delete"}"#
            ),
            Some("0")
        );
        assert_eq!(
            sample(
                &text,
                r#"dynamo_request_duration_seconds_bucket{le="+Inf",api="grpc",op="delete"}"#
            ),
            Some("1")
        );
    }

    #[test]
    fn gauges_replace_their_families() {
        let metrics = Metrics::new();
        let (a, b) = (id("a"), id("b"));
        metrics.set_hint_backlogs([(&a, 7), (&b, 1)]);
        metrics.set_hint_backlogs([(&b, 3)]);
        metrics.set_ring_ownership(&BTreeMap::from([(a.clone(), 0.25), (b.clone(), 0.75)]));
        metrics.set_keys(u64::MAX);
        metrics.set_storage_space(1000, Some(3500));
        let mut table = MemberTable::new();
        table.join(a.clone(), "a:1", 1).unwrap();
        table.join(b.clone(), "b:1", 1).unwrap();
        table.mark_member(&b).unwrap();
        metrics.set_members(&table);
        let text = metrics.encode();
        // Dynamo §4.6: a delivered backlog must not linger as a stale series.
        assert_eq!(
            sample(&text, r#"dynamo_hint_backlog_keys{target="a"}"#),
            None
        );
        assert_eq!(
            sample(&text, r#"dynamo_hint_backlog_keys{target="b"}"#),
            Some("3")
        );
        assert_eq!(
            sample(&text, r#"dynamo_ring_ownership{node="b"}"#),
            Some("0.75")
        );
        assert_eq!(sample(&text, "dynamo_keys"), Some(&*i64::MAX.to_string()));
        assert_eq!(sample(&text, "dynamo_storage_live_bytes"), Some("1000"));
        assert_eq!(sample(&text, "dynamo_storage_disk_bytes"), Some("3500"));
        assert_eq!(
            sample(&text, r#"dynamo_members{state="joining"}"#),
            Some("1")
        );
        assert_eq!(
            sample(&text, r#"dynamo_members{state="member"}"#),
            Some("1")
        );
        assert_eq!(
            sample(&text, r#"dynamo_members{state="removed"}"#),
            Some("0")
        );
    }
}
