//! Server-driven coordination (Dynamo §4.5): the async shell around the pure
//! [`quorum`](crate::quorum) state machines.
//!
//! Any node accepts any request. A put is coordinated by a node among the key's first N
//! replicas: the receiving node forwards it there when it is not one of them. The
//! coordinator writes locally first (durably: in buffered mode it is the one durable
//! replica of Dynamo §6.1), then replicates the key's whole new state to the rest of the
//! first N healthy nodes, and answers after W acknowledgements. A get answers after R
//! replies with every concurrent version and repairs the stale replicas among those that
//! replied (read repair). How many it asks is the node's [`ReadFanout`]: by default all
//! N healthy targets at once, as Dynamo §4.5 does, so every read repairs every replica
//! that answers; with [`ReadFanout::Quorum`] it asks R of them first, this node among them
//! when it is one (its read is local), and another target when a read fails, when no
//! outcome came within the recent p90 of remote reads (a speculative read,
//! `read_latency.rs`), and all of them as soon as two replies disagree. That halves the
//! remote reads of a get at N=3, R=2, but a stale replica that was not asked is left to
//! anti-entropy or the next read that asks it (see [`GetCoordinator::read_first`]).
//! Remote reads travel in per-peer batches either way, which makes the third read cheap:
//! the two measured within noise of each other in CPU per get (BENCHMARKS.md), so the
//! default is the paper's.
//!
//! The machine keeps running after the client has its answer: late acknowledgements,
//! retries on stand-ins, and read repair happen in a spawned task, bounded by the
//! request timeout. A get is driven in the request's own task up to its outcome; most
//! leave nothing behind.

pub use dynamo_config::settings::ReadFanout;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::oneshot;

use self::read_latency::ReadLatency;

use crate::NodeId;
use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::quorum::{
    ConfigError, GetCoordinator, GetOutcome, PutCoordinator, PutOutcome, QuorumConfig, QuorumError,
};
use crate::storage::Durability;
use crate::store::{Store, StoreError};
use crate::transport::{ForwardedPut, ReplicaError, ReplicaWrite, Transport, TransportError};
use crate::version::context::Context;
use crate::version::{SiblingSet, Value, VersionError};

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// The request itself is invalid (key or value size, quorum override).
    #[error("{0}")]
    InvalidArgument(String),
    /// The key holds more concurrent versions than a put may add to (the sibling cap,
    /// or their size together): the client must read them and write back one merged
    /// value with the read's context.
    #[error("conflict: read and resolve: {0}")]
    Conflict(String),
    /// The quorum could not be reached.
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// No node can serve the key now (empty ring, every home replica unreachable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The local store failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A node the put was forwarded to refused it.
    #[error("forwarded put refused by {address}: {error}")]
    Forwarded {
        /// The node the put went to.
        address: String,
        /// Its answer.
        error: ReplicaError,
    },
}

impl From<ConfigError> for CoordinatorError {
    fn from(e: ConfigError) -> Self {
        CoordinatorError::InvalidArgument(e.to_string())
    }
}

/// Bounds on what clients may send.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
}

impl RequestLimits {
    /// Checks a key's size.
    ///
    /// # Errors
    /// Empty or oversized keys.
    pub fn check_key(&self, key: &[u8]) -> Result<(), CoordinatorError> {
        if key.is_empty() {
            return Err(CoordinatorError::InvalidArgument("key is empty".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(CoordinatorError::InvalidArgument(format!(
                "key is {} bytes, the limit is {}",
                key.len(),
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    /// Checks a value's size.
    ///
    /// # Errors
    /// Oversized values.
    pub fn check_value(&self, value: &[u8]) -> Result<(), CoordinatorError> {
        if value.len() > self.max_value_bytes {
            return Err(CoordinatorError::InvalidArgument(format!(
                "value is {} bytes, the limit is {}",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }
}

/// Coordinates client gets and puts on one node.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    /// Also owns the clock actor puts are issued under (read inside each write, see
    /// [`Store::coordinate`]).
    store: Store,
    cluster: Arc<Cluster>,
    transport: Arc<dyn Transport>,
    quorum: QuorumConfig,
    timeout: Duration,
    /// Buffered mode: only one replica per write (the coordinator) writes durably.
    buffered: bool,
    limits: RequestLimits,
    metrics: Metrics,
    /// Recent remote read latencies: the delay before a get's speculative read.
    read_latency: ReadLatency,
    /// How many replicas a get asks at first.
    read_fanout: ReadFanout,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("actor", &self.inner.store.identity().current())
            .field("quorum", &self.inner.quorum)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Default N, R, W.
    pub quorum: QuorumConfig,
    /// Deadline of one request, including replication.
    pub timeout: Duration,
    /// The node's durability mode.
    pub durability: Durability,
    /// Client input bounds.
    pub limits: RequestLimits,
    /// Where the coordinator counts the puts it forwards to a home replica.
    pub metrics: Metrics,
    /// How many replicas a get asks at first.
    pub read_fanout: ReadFanout,
}

impl Coordinator {
    /// A coordinator over the node's store, cluster view and transport.
    pub fn new(
        config: CoordinatorConfig,
        store: Store,
        cluster: Arc<Cluster>,
        transport: Arc<dyn Transport>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                cluster,
                transport,
                quorum: config.quorum,
                timeout: config.timeout,
                buffered: config.durability == Durability::Buffered,
                limits: config.limits,
                metrics: config.metrics,
                read_latency: ReadLatency::new(),
                read_fanout: config.read_fanout,
            }),
        }
    }

    /// The request limits in force.
    pub fn limits(&self) -> RequestLimits {
        self.inner.limits
    }

    /// The default quorum settings.
    pub fn quorum(&self) -> QuorumConfig {
        self.inner.quorum
    }

    /// The cluster view the coordinator places keys by.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.inner.cluster
    }

    /// Reads every concurrent version of `key` from R of its N replicas.
    ///
    /// # Errors
    /// Invalid input, an unreachable quorum, or an empty ring.
    pub async fn get(&self, key: &[u8], r: Option<u32>) -> Result<SiblingSet, CoordinatorError> {
        self.inner.limits.check_key(key)?;
        let config = self.inner.quorum.with_overrides(r, None)?;
        // While ranges move, reads stay on the replicas that hold the data (the settled
        // ring) until the new owners have it.
        let extended = self.inner.cluster.read_preference_list(key);
        if extended.is_empty() {
            return Err(no_members());
        }
        let clock = self.inner.cluster.clock();
        let mut machine = GetCoordinator::new(
            config,
            &extended,
            |node| self.inner.cluster.is_available(node),
            clock.monotonic(),
            self.inner.timeout,
        );
        if self.inner.read_fanout == ReadFanout::Quorum {
            // R replicas first, this node's own (a local read) among them; see
            // `read_first` for what that gives up against Dynamo's read of all N.
            let speculate_after = self
                .inner
                .read_latency
                .speculation_delay(self.inner.timeout);
            machine =
                machine.read_first(self.inner.cluster.me(), speculate_after, clock.monotonic());
        }
        let mut driver = GetDriver {
            inner: Arc::clone(&self.inner),
            key: Arc::new(key.to_vec()),
            machine,
            calls: FuturesUnordered::new(),
        };
        // Driven in the request's task up to the outcome; only what is left after it
        // (late replies, read repair) moves to a task of its own, and most gets leave
        // nothing.
        let outcome = driver.outcome().await;
        // Speculation stops once the outcome is decided, so this is the get's count.
        self.inner
            .metrics
            .record_speculative_reads(driver.machine.speculative_reads());
        driver.finish_in_background();
        match outcome {
            Some(GetOutcome::Success { state, .. }) => {
                // Under last-write-wins the client sees the winning version only.
                let state = self.inner.store.reconciliation().view(state);
                self.inner
                    .metrics
                    .record_get_versions(state.values().count());
                Ok(state)
            }
            Some(GetOutcome::Failed(error)) => Err(error.into()),
            None => Err(CoordinatorError::Unavailable(
                "the get ended without an outcome".into(),
            )),
        }
    }

    /// Deletes `key` (writes a tombstone), superseding the versions `context` covers
    /// (Dynamo §4.4). Without a context (a blind delete, which would supersede nothing
    /// and leave every value readable) the key is read first, at R, and what that read
    /// saw is deleted: what a client that sends `DELETE` alone means. A version written
    /// concurrently and not seen by that read stays, as a sibling, as with any write. A
    /// key with nothing to delete is not written; its read's context is returned.
    ///
    /// # Errors
    /// As [`get`](Self::get) and [`put`](Self::put).
    pub async fn delete(
        &self,
        key: &[u8],
        context: Context,
        w: Option<u32>,
    ) -> Result<Context, CoordinatorError> {
        if !context.is_empty() {
            return self.put(key, context, None, w).await;
        }
        // W is checked before the read so a bad override costs no read.
        self.inner.quorum.with_overrides(None, w)?;
        let read = self.get(key, None).await?;
        if read.is_deleted() {
            return Ok(read.context());
        }
        self.put(key, read.context(), None, w).await
    }

    /// Writes `value` (or a tombstone when `None`) with the client's `context`, through a
    /// coordinator among the key's home replicas; returns the new version's context.
    ///
    /// # Errors
    /// Invalid input, an unreachable quorum, or no reachable home replica.
    pub async fn put(
        &self,
        key: &[u8],
        context: Context,
        value: Option<Vec<u8>>,
        w: Option<u32>,
    ) -> Result<Context, CoordinatorError> {
        self.check_put(key, &context, value.as_deref(), w)?;
        let n = usize::try_from(self.inner.quorum.n()).unwrap_or(usize::MAX);
        let writes = self.inner.cluster.write_set(key, n);
        if writes.extended.is_empty() {
            return Err(no_members());
        }
        let home = &writes.extended[..writes.home];
        let me = self.inner.cluster.me();
        if home.contains(me) {
            return self.coordinate_put(key, context, value, w).await;
        }
        // Not a home replica: hand the put to the first reachable one (Dynamo §4.5).
        // The receiver refuses it once we have given up on it (see the timeout arm).
        let timeout_ms = u64::try_from(self.inner.timeout.as_millis()).unwrap_or(u64::MAX);
        // Counted, so the cost of server-driven routing shows on /metrics.
        self.inner.metrics.record_forwarded_put();
        let put = ForwardedPut {
            key: key.to_vec(),
            context,
            value,
            w,
            deadline: Some(crate::time::Millis(
                self.inner
                    .cluster
                    .clock()
                    .wall()
                    .0
                    .saturating_add(timeout_ms),
            )),
        };
        let mut failures = Vec::new();
        for node in home {
            if !self.inner.cluster.is_available(node) {
                failures.push(format!("{node}: believed down"));
                continue;
            }
            let Some(address) = self.inner.cluster.address_of(node) else {
                continue;
            };
            let result = self
                .inner
                .transport
                .coordinate_put(&address, put.clone())
                .await;
            self.inner.cluster.record_call(node, &result);
            match result {
                Ok(context) => {
                    return crate::version::context::decode(&context).map_err(|e| {
                        CoordinatorError::Unavailable(format!("bad context from {node}: {e}"))
                    });
                }
                Err(TransportError::Rejected { address, error }) => {
                    return Err(CoordinatorError::Forwarded { address, error });
                }
                Err(never_sent @ TransportError::NotConnected { .. }) => {
                    // No connection, so the peer never saw the put: the next home
                    // replica may coordinate it.
                    failures.push(format!("{node}: {never_sent}"));
                }
                Err(other) => {
                    // A timeout, a reset mid-call, a lost answer: the put may have been
                    // coordinated there (the peer may even do it later, until the
                    // deadline). Coordinating it again elsewhere would write the same
                    // value under a second dot, concurrent with everything written
                    // since: a value the client has meanwhile overwritten would come
                    // back as a sibling (found by the simulator for timeouts, and by the
                    // e2e suite for a node killed mid-call). The outcome is unknown; say so.
                    return Err(CoordinatorError::Unavailable(format!(
                        "the home replica {node} failed mid-call ({other}); the write may or may not have been applied"
                    )));
                }
            }
        }
        Err(CoordinatorError::Unavailable(format!(
            "no home replica of the key could coordinate the write ({})",
            failures.join(", ")
        )))
    }

    fn check_put(
        &self,
        key: &[u8],
        context: &Context,
        value: Option<&[u8]>,
        w: Option<u32>,
    ) -> Result<(), CoordinatorError> {
        self.inner.limits.check_key(key)?;
        if let Some(value) = value {
            self.inner.limits.check_value(value)?;
        }
        self.inner.quorum.with_overrides(None, w)?;
        // A forged counter near u64::MAX would exhaust the actor's counter for the key
        // and fail every later put through it; no node issues one.
        context
            .check_counters(self.inner.cluster.clock().wall())
            .map_err(|e| CoordinatorError::InvalidArgument(format!("context: {e}")))?;
        Ok(())
    }

    /// Coordinates a put on this node, whether or not it is a home replica (the
    /// receiving end of a forwarded put never forwards again).
    ///
    /// # Errors
    /// Invalid input, local storage failure, or an unreachable write quorum.
    pub async fn coordinate_put(
        &self,
        key: &[u8],
        context: Context,
        value: Option<Vec<u8>>,
        w: Option<u32>,
    ) -> Result<Context, CoordinatorError> {
        self.check_put(key, &context, value.as_deref(), w)?;
        let config = self.inner.quorum.with_overrides(None, w)?;
        let value = value.map_or(Value::Tombstone, Value::data);
        let clock = self.inner.cluster.clock();
        // The coordinator's own write is always durable (in sync mode every replica's is,
        // in buffered mode the coordinator is the one durable replica), but it is only
        // applied here: an in-memory compare-and-swap, cheap enough for the async thread.
        // `drive_put` counts the local acknowledgement once a flush that starts after
        // this write has ended, so the flush overlaps the replicas' writes instead of
        // delaying them, and concurrent puts share it (group commit). The put succeeds
        // on any W acknowledgements, so the client may hear of it before this node's
        // own flush: a crash then loses our dot of an acknowledged write, which is why
        // every unclean start takes a new clock incarnation, in sync mode too
        // (`ActorIdentity::open`).
        let coordinated = self
            .inner
            .store
            .coordinate(key, &context, value, clock.wall(), Durability::Buffered)
            .map_err(put_refusal)?;
        let n = usize::try_from(self.inner.quorum.n()).unwrap_or(usize::MAX);
        let writes = self.inner.cluster.write_set(key, n);
        let config = transfer_quorum(config, &writes);
        let me = self.inner.cluster.me().clone();
        let machine = PutCoordinator::new(
            config,
            &writes.extended,
            |node| self.inner.cluster.is_available(node),
            &me,
            coordinated.state.clone(),
            clock.monotonic(),
            self.inner.timeout,
            self.inner.buffered,
        );
        let (outcome_tx, outcome_rx) = oneshot::channel();
        tokio::spawn(Arc::clone(&self.inner).drive_put(key.to_vec(), machine, outcome_tx));
        match outcome_rx.await {
            Ok(PutOutcome::Success { .. }) => Ok(coordinated.context),
            Ok(PutOutcome::Failed(error)) => Err(error.into()),
            Err(_) => Err(CoordinatorError::Unavailable("put task ended early".into())),
        }
    }
}

/// A put the local store refused: a conflict the client resolves by reading (too many
/// siblings, or siblings together too large to replicate), the client's to fix (a
/// counter overflow from a forged context) or the node's (storage failure, corruption).
fn put_refusal(error: StoreError) -> CoordinatorError {
    match error {
        StoreError::StateTooLarge { .. }
        | StoreError::Version(VersionError::TooManySiblings { .. }) => {
            CoordinatorError::Conflict(error.to_string())
        }
        StoreError::Version(VersionError::CounterOverflow(_)) => {
            CoordinatorError::InvalidArgument(error.to_string())
        }
        other => CoordinatorError::Store(other),
    }
}

/// The quorum of a write while ranges move: every home replica of either ring is a
/// target, and the write needs `pending` more acknowledgements than W, so W settled and
/// W target replicas hold it (see [`crate::transfer::write_set`]). Without a transfer
/// (`pending == 0` and N home replicas) this is `config` itself; a union too large for
/// [`crate::quorum::MAX_REPLICAS`] keeps `config`.
fn transfer_quorum(config: QuorumConfig, writes: &crate::transfer::WriteSet) -> QuorumConfig {
    if writes.pending == 0 {
        return config;
    }
    let n = u32::try_from(writes.home).unwrap_or(u32::MAX);
    let pending = u32::try_from(writes.pending).unwrap_or(u32::MAX);
    let w = config.w().saturating_add(pending).min(n);
    QuorumConfig::new(n, config.r().min(n), w).unwrap_or(config)
}

fn no_members() -> CoordinatorError {
    CoordinatorError::Unavailable("the ring has no members yet: join nodes first".into())
}

impl Inner {
    /// Sends a replica read to another node and reports the result; a reply's round
    /// trip feeds the speculation delay.
    async fn read_remote_replica(&self, node: &NodeId, key: &[u8]) -> Result<SiblingSet, String> {
        let address = self
            .cluster
            .address_of(node)
            .ok_or_else(|| format!("no address for {node}"))?;
        let clock = self.cluster.clock();
        let sent = clock.monotonic();
        let result = self.transport.read(&address, key).await;
        self.cluster.record_call(node, &result);
        if result.is_ok() {
            self.read_latency.record(
                clock
                    .monotonic()
                    .saturating_since(sent)
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
            );
        }
        result.map_err(|e| e.to_string())
    }

    /// Writes the merged state to the replicas a get found stale (read repair, Dynamo
    /// §4.6/§5), this node's own copy in memory, the others as buffered replica writes.
    async fn read_repair(&self, key: &[u8], repairs: Vec<(NodeId, SiblingSet)>) {
        for (node, state) in repairs {
            let write = ReplicaWrite {
                key: key.to_vec(),
                state,
                durable: false,
                hint_for: None,
            };
            let result = if &node == self.cluster.me() {
                self.store
                    .merge(&write.key, &write.state, Durability::Buffered)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                self.write_replica(&node, write).await
            };
            if let Err(reason) = result {
                tracing::debug!(%node, %reason, "read repair failed");
            }
        }
    }

    async fn write_replica(&self, node: &NodeId, write: ReplicaWrite) -> Result<(), String> {
        let address = self
            .cluster
            .address_of(node)
            .ok_or_else(|| format!("no address for {node}"))?;
        let result = self.transport.write(&address, write).await;
        self.cluster.record_call(node, &result);
        result.map_err(|e| e.to_string())
    }

    /// Waits for a flush that starts now, so every local write applied so far is on
    /// disk (shared with concurrent writers: group commit).
    async fn make_local_writes_durable(&self) -> Result<(), String> {
        self.store
            .make_durable()
            .await
            .map_err(|error| format!("local write not durable: {error}"))
    }

    /// Runs the put machine to its end. The replica calls run as futures of this one
    /// task rather than as a task each: a put makes up to N of them, and a spawned task
    /// per call cost a task allocation, a channel message and an extra wake-up each.
    async fn drive_put(
        self: Arc<Self>,
        key: Vec<u8>,
        mut machine: PutCoordinator<SiblingSet>,
        outcome_tx: oneshot::Sender<PutOutcome>,
    ) {
        let mut calls: FuturesUnordered<ReplicaCall<'_, ()>> = FuturesUnordered::new();
        let mut outcome_tx = Some(outcome_tx);
        let clock = self.cluster.clock();
        let me = self.cluster.me().clone();
        loop {
            while let Some(send) = machine.poll_transmit() {
                let node = send.to;
                if node == me {
                    // The local write was applied before the machine started; it counts
                    // once it is on disk.
                    let this = &self;
                    calls.push(Box::pin(async move {
                        (node, this.make_local_writes_durable().await)
                    }));
                    continue;
                }
                let write = ReplicaWrite {
                    key: key.clone(),
                    state: send.state,
                    durable: send.durable,
                    hint_for: send.hint_for,
                };
                let this = &self;
                calls.push(Box::pin(async move {
                    let result = this.write_replica(&node, write).await;
                    (node, result)
                }));
            }
            publish(&mut outcome_tx, machine.poll_outcome());
            if machine.is_finished() {
                break;
            }
            let Some(deadline) = machine.poll_timeout() else {
                break;
            };
            let wait = deadline.saturating_since(clock.monotonic());
            // `biased`: poll in order, not at random, so a seeded simulation is
            // reproducible.
            tokio::select! {
                biased;
                Some((node, result)) = calls.next() => match result {
                    Ok(()) => machine.handle_ack(&node, clock.monotonic()),
                    Err(reason) => machine.handle_failure(&node, reason, clock.monotonic()),
                },
                () = tokio::time::sleep(wait) => machine.handle_timeout(clock.monotonic()),
            }
        }
    }
}

/// One replica call in flight: which node, and how it went.
type ReplicaCall<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = (NodeId, Result<T, String>)> + Send + 'a>>;

/// Drives one get's machine: this node's read inline (a page-cache lookup), the
/// remote reads as futures of the driving task rather than a task each.
struct GetDriver {
    inner: Arc<Inner>,
    key: Arc<Vec<u8>>,
    machine: GetCoordinator<SiblingSet>,
    calls: FuturesUnordered<ReplicaCall<'static, SiblingSet>>,
}

impl GetDriver {
    /// Starts the reads the machine asks for.
    fn transmit(&mut self) {
        let clock = self.inner.cluster.clock();
        while let Some(node) = self.machine.poll_transmit() {
            if &node == self.inner.cluster.me() {
                match self.inner.store.read(&self.key) {
                    Ok(state) => self.machine.handle_reply(&node, state, clock.monotonic()),
                    Err(error) => {
                        self.machine
                            .handle_failure(&node, error.to_string(), clock.monotonic());
                    }
                }
                continue;
            }
            let (inner, key) = (Arc::clone(&self.inner), Arc::clone(&self.key));
            self.calls.push(Box::pin(async move {
                let result = inner.read_remote_replica(&node, &key).await;
                (node, result)
            }));
        }
    }

    /// Waits for the next reply or the machine's next wake-up and feeds it in; false
    /// once the machine is finished.
    async fn step(&mut self) -> bool {
        self.transmit();
        if self.machine.is_finished() {
            return false;
        }
        let Some(deadline) = self.machine.poll_timeout() else {
            return false;
        };
        let clock = self.inner.cluster.clock();
        let wait = deadline.saturating_since(clock.monotonic());
        // `biased`: poll in order, not at random, so a seeded simulation is
        // reproducible.
        tokio::select! {
            biased;
            Some((node, result)) = self.calls.next() => match result {
                Ok(state) => self.machine.handle_reply(&node, state, clock.monotonic()),
                Err(reason) => self.machine.handle_failure(&node, reason, clock.monotonic()),
            },
            () = tokio::time::sleep(wait) => self.machine.handle_timeout(clock.monotonic()),
        }
        true
    }

    /// Runs the machine until it decides (`None` only if it finished without an
    /// outcome, which a finished machine never does).
    async fn outcome(&mut self) -> Option<GetOutcome<SiblingSet>> {
        loop {
            self.transmit();
            if let Some(outcome) = self.machine.poll_outcome() {
                return Some(outcome);
            }
            if !self.step().await {
                return self.machine.poll_outcome();
            }
        }
    }

    /// Collects the late replies and runs read repair in a task of its own, bounded by
    /// the request deadline; spawns nothing when the machine is finished and nothing
    /// is stale.
    fn finish_in_background(mut self) {
        self.transmit();
        if self.machine.is_finished() {
            if let Some(repairs) = self.machine.poll_read_repair() {
                tokio::spawn(async move { self.inner.read_repair(&self.key, repairs).await });
            }
            return;
        }
        tokio::spawn(async move {
            while self.step().await {}
            if let Some(repairs) = self.machine.poll_read_repair() {
                self.calls = FuturesUnordered::new();
                self.inner.read_repair(&self.key, repairs).await;
            }
        });
    }
}

/// Hands the client its answer the first time the machine decides one.
fn publish<O>(outcome_tx: &mut Option<oneshot::Sender<O>>, outcome: Option<O>) {
    if let Some(outcome) = outcome {
        if let Some(tx) = outcome_tx.take() {
            // The client may have gone away; the machine still finishes its work.
            let _ = tx.send(outcome);
        }
    }
}

mod read_latency;
#[cfg(test)]
mod tests;
