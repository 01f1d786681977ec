//! Clients that write while the faults happen, and the final phase that produces the
//! checker's verdict.
//!
//! Each client loops: read a key, then write a value unique in the whole run
//! (`c<client>-<n>`) with the context the read returned, superseding what it read; one
//! write in ten is a delete instead, which a later write then recreates. Every operation
//! is recorded in one shared [`History`] in the order the clients saw their events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dynamo_node::history::{History, Outcome, ReplicaDump, Verdict, check};
use dynamo_node::proto::kv_client::KvClient;
use dynamo_node::proto::{DeleteRequest, GetRequest, PutRequest};
use dynamo_node::transport::never_sent;
use dynamo_node::version::context::{self, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::{WAIT, eventually};

/// The bound on one client call: past it the outcome is unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadConfig {
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys they share (fewer keys, more concurrent versions).
    pub keys: usize,
    /// Seeds the clients' choices of key, node and operation.
    pub seed: u64,
    /// Each client's pause after a read-and-write round: a long run keeps its history
    /// (and the checker's work, which grows with the square of a key's operations)
    /// bounded. Zero: as fast as the cluster answers.
    pub pace: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            clients: 4,
            keys: 24,
            seed: 1,
            pace: Duration::ZERO,
        }
    }
}

type SharedHistory = Arc<Mutex<History>>;

/// Each failed operation's index in the history and the status it failed with.
pub type ErrorLog = Arc<Mutex<Vec<(usize, String)>>>;

fn lock(history: &SharedHistory) -> std::sync::MutexGuard<'_, History> {
    // A client that panicked leaves a usable history: recording is append-only.
    history.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Running clients.
#[derive(Debug)]
pub struct Workload {
    history: SharedHistory,
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    completed: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    /// While true, clients finish the operation in flight and wait.
    pause: watch::Sender<bool>,
    /// Clients waiting on `pause`.
    parked: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
    keys: Vec<Vec<u8>>,
    errors: ErrorLog,
}

impl Workload {
    /// Starts the clients, sending each request to one of `endpoints` (client API
    /// addresses) at random.
    pub fn start(endpoints: Vec<SocketAddr>, config: WorkloadConfig) -> Workload {
        let keys: Vec<Vec<u8>> = (0..config.keys)
            .map(|k| format!("e2e-key-{k}").into_bytes())
            .collect();
        let (stop, stopped) = watch::channel(false);
        let (pause, paused) = watch::channel(false);
        let parked = Arc::new(AtomicUsize::new(0));
        let history = SharedHistory::default();
        let endpoints = Arc::new(Mutex::new(endpoints));
        let completed = Arc::new(AtomicUsize::new(0));
        let errors = ErrorLog::default();
        let tasks = (0..config.clients)
            .map(|client| {
                let client = Client {
                    id: client,
                    rng: ChaCha8Rng::seed_from_u64(config.seed ^ ((client as u64 + 1) * 0x9e37)),
                    history: Arc::clone(&history),
                    endpoints: Arc::clone(&endpoints),
                    completed: Arc::clone(&completed),
                    paused: paused.clone(),
                    parked: Arc::clone(&parked),
                    keys: keys.clone(),
                    channels: HashMap::new(),
                    written: 0,
                    errors: Arc::clone(&errors),
                    pace: config.pace,
                };
                tokio::spawn(client.run(stopped.clone()))
            })
            .collect();
        Workload {
            history,
            endpoints,
            completed,
            stop,
            pause,
            parked,
            tasks,
            keys,
            errors,
        }
    }

    /// The failed operations' statuses so far (the log lives on after [`stop`](Self::stop)).
    pub fn errors(&self) -> ErrorLog {
        Arc::clone(&self.errors)
    }

    /// Stops issuing operations and waits (bounded by [`WAIT`]) until no client has one
    /// in flight: for a check of the replicas between two phases of a run, which no
    /// write may race. [`resume`](Self::resume) lets the clients go on.
    pub async fn pause(&self) {
        // A send error means every client already ended: nothing is in flight.
        let _ = self.pause.send(true);
        let clients = self.tasks.len();
        eventually("the clients to pause", WAIT, || async {
            let parked = self.parked.load(Ordering::SeqCst);
            let ended = self.tasks.iter().filter(|t| t.is_finished()).count();
            if parked + ended >= clients {
                Ok(())
            } else {
                Err(format!("{parked} of {clients} clients paused"))
            }
        })
        .await
    }

    /// Lets paused clients go on.
    pub fn resume(&self) {
        let _ = self.pause.send(false);
    }

    /// The keys the clients use.
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Sends later requests to these nodes only (say, before killing one, so the load
    /// does not all fail against it).
    pub fn set_endpoints(&self, endpoints: Vec<SocketAddr>) {
        assert!(
            !endpoints.is_empty(),
            "the workload needs a node to talk to"
        );
        *self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = endpoints;
    }

    /// Operations the clients invoked so far: the index the next one will have in the
    /// history [`stop`](Self::stop) returns, to tell a phase's operations apart.
    pub fn invoked(&self) -> usize {
        lock(&self.history).ops().len()
    }

    /// Operations the clients completed so far (of any outcome).
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::Relaxed)
    }

    /// Waits until the clients complete `ops` more operations (of any outcome): how a
    /// test lets load run across a fault without sleeping for a guessed time.
    pub async fn wait_for_progress(&self, ops: usize) {
        let target = self.completed.load(Ordering::Relaxed) + ops;
        eventually(&format!("{ops} more client operations"), WAIT, || async {
            let now = self.completed.load(Ordering::Relaxed);
            if now >= target {
                Ok(())
            } else {
                Err(format!("{now} of {target} done"))
            }
        })
        .await
    }

    /// Stops the clients (each finishes its operation in flight) and returns the
    /// history.
    pub async fn stop(self) -> History {
        // A send error means every client already ended, which is what we want.
        let _ = self.stop.send(true);
        let _ = self.pause.send(false);
        for task in self.tasks {
            task.await.expect("a client task panicked");
        }
        lock(&self.history).clone()
    }
}

struct Client {
    id: usize,
    rng: ChaCha8Rng,
    history: SharedHistory,
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    completed: Arc<AtomicUsize>,
    paused: watch::Receiver<bool>,
    parked: Arc<AtomicUsize>,
    keys: Vec<Vec<u8>>,
    channels: HashMap<SocketAddr, KvClient<Channel>>,
    written: u64,
    errors: ErrorLog,
    pace: Duration,
}

/// How a failed call ended: refused before any effect, or unknown (it may have been
/// stored: Dynamo keeps a write the coordinator stored even when W was not reached).
fn outcome_of_error(status: &tonic::Status) -> Outcome {
    match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

impl Client {
    fn kv(&mut self) -> KvClient<Channel> {
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let address = endpoints[self.rng.random_range(0..endpoints.len())];
        self.channels
            .entry(address)
            .or_insert_with(|| {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
                    .expect("a valid endpoint")
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(CALL_TIMEOUT)
                    .connect_lazy();
                KvClient::new(channel)
            })
            .clone()
    }

    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        while !*stopped.borrow_and_update() {
            if *self.paused.borrow_and_update() {
                self.parked.fetch_add(1, Ordering::SeqCst);
                // An error means the workload was dropped: stop as well.
                let resumed = self.paused.wait_for(|paused| !paused).await.is_ok();
                self.parked.fetch_sub(1, Ordering::SeqCst);
                if !resumed {
                    return;
                }
                continue;
            }
            let key = self.keys[self.rng.random_range(0..self.keys.len())].clone();
            let Some((values, read_context)) = self.read(&key).await else {
                continue;
            };
            if !values.is_empty() && self.rng.random_ratio(1, 10) {
                self.delete(&key, read_context).await;
            } else {
                self.write(&key, read_context).await;
            }
            if !self.pace.is_zero() {
                tokio::time::sleep(self.pace).await;
            }
        }
    }

    fn failed(&self, op: usize, status: &tonic::Status) -> Outcome {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((op, status.to_string()));
        outcome_of_error(status)
    }

    fn finish(&self, op: usize, outcome: Outcome) {
        lock(&self.history).complete(op, outcome);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    async fn read(&mut self, key: &[u8]) -> Option<(Vec<Vec<u8>>, Context)> {
        let mut kv = self.kv();
        let op = lock(&self.history).invoke_get(key);
        let reply = kv
            .get(GetRequest {
                key: key.to_vec().into(),
                r: None,
            })
            .await;
        match reply.map(tonic::Response::into_inner) {
            Ok(reply) => {
                let context = context::decode(&reply.context).expect("a node sent a bad context");
                let values: Vec<Vec<u8>> = reply.values.iter().map(|v| v.to_vec()).collect();
                self.finish(
                    op,
                    Outcome::GetOk {
                        values: values.clone(),
                        context: context.clone(),
                    },
                );
                Some((values, context))
            }
            Err(_) => {
                self.finish(op, Outcome::Failed);
                None
            }
        }
    }

    async fn write(&mut self, key: &[u8], read_context: Context) {
        self.written += 1;
        let value = format!("c{}-{}", self.id, self.written).into_bytes();
        let op = lock(&self.history).invoke_put(key, &value, read_context.clone());
        let request = PutRequest {
            key: key.to_vec().into(),
            context: context::encode(&read_context).into(),
            value: value.into(),
            w: None,
        };
        let mut reply = self.kv().put(request.clone()).await;
        if reply.as_ref().is_err_and(never_sent) {
            // The pod's connection closed (it is going away) before the request left:
            // nothing was written, so sending it again is the same one write.
            reply = self.kv().put(request).await;
        }
        let outcome = match reply {
            Ok(reply) => Outcome::PutOk {
                context: context::decode(&reply.into_inner().context)
                    .expect("a node sent a bad context"),
            },
            Err(status) => self.failed(op, &status),
        };
        self.finish(op, outcome);
    }

    async fn delete(&mut self, key: &[u8], read_context: Context) {
        let op = lock(&self.history).invoke_delete(key, read_context.clone());
        let request = DeleteRequest {
            key: key.to_vec().into(),
            context: context::encode(&read_context).into(),
            w: None,
        };
        let mut reply = self.kv().delete(request.clone()).await;
        if reply.as_ref().is_err_and(never_sent) {
            reply = self.kv().delete(request).await;
        }
        let outcome = match reply {
            Ok(reply) => Outcome::PutOk {
                context: context::decode(&reply.into_inner().context)
                    .expect("a node sent a bad context"),
            },
            Err(status) => self.failed(op, &status),
        };
        self.finish(op, outcome);
    }
}

/// What the final phase needs of a cluster, whether node processes ([`Cluster`]) or a
/// DynamoCluster's pods ([`crate::k8s::PodCluster`]).
pub trait Replicas {
    /// Waits (bounded) until no node holds hints for another.
    fn wait_for_hints_delivered(&self) -> impl Future<Output = ()>;
    /// Each key's replicas and the versions each holds, read from the replicas alone.
    fn replica_dump(&self, keys: &[Vec<u8>]) -> impl Future<Output = Result<ReplicaDump, String>>;
    /// A client of a running node, for the final reads.
    fn client(&self) -> impl Future<Output = KvClient<Channel>>;
}

impl Replicas for Cluster {
    async fn wait_for_hints_delivered(&self) {
        Cluster::wait_for_hints_delivered(self).await;
    }

    async fn replica_dump(&self, keys: &[Vec<u8>]) -> Result<ReplicaDump, String> {
        Cluster::replica_dump(self, keys).await
    }

    async fn client(&self) -> KvClient<Channel> {
        self.kv(self.other_running(&[])).await
    }
}

/// Whether every key's replicas hold the same versions; the first difference if not.
fn converged(dump: &ReplicaDump) -> Result<(), String> {
    for (key, replicas) in dump.keys() {
        let mut states = replicas.values();
        if let Some(first) = states.next() {
            if states.any(|state| state != first) {
                return Err(format!(
                    "replicas of {} differ: {replicas:?}",
                    String::from_utf8_lossy(key)
                ));
            }
        }
    }
    Ok(())
}

/// Waits (bounded by [`WAIT`]) until no node holds hints and every key's replicas hold
/// the same versions, with no read to repair them: what range transfer, hinted handoff
/// and anti-entropy (if on) achieve by themselves. Call it with no write in flight
/// ([`Workload::pause`]).
///
/// # Panics
/// When the replicas do not converge in time, naming the first difference.
pub async fn wait_for_converged(cluster: &impl Replicas, keys: &[Vec<u8>]) {
    cluster.wait_for_hints_delivered().await;
    eventually("replicas converged without reads", WAIT, || async {
        converged(&cluster.replica_dump(keys).await?)
    })
    .await;
}

/// What the final phase waits for before the final reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Hinted handoff drained; the final reads' read repair does the rest.
    Hints,
    /// Hinted handoff drained and every replica already equal before any final read:
    /// for faults only anti-entropy can repair (a wiped disk).
    Converged,
}

/// The end of a run: waits for background repair (`settle`), marks the history
/// quiesced, reads every key once through a running node, waits for the replicas to
/// converge, dumps them and returns the checker's verdict.
pub async fn final_verdict(
    cluster: &impl Replicas,
    mut history: History,
    keys: &[Vec<u8>],
    settle: Settle,
) -> Verdict {
    if settle == Settle::Converged {
        wait_for_converged(cluster, keys).await;
    } else {
        cluster.wait_for_hints_delivered().await;
    }
    history.quiesced();
    let mut kv = cluster.client().await;
    for key in keys {
        let op = history.invoke_get(key);
        let reply = kv
            .get(GetRequest {
                key: key.clone().into(),
                r: None,
            })
            .await
            .unwrap_or_else(|status| panic!("final read of {key:?}: {status}"))
            .into_inner();
        let context = context::decode(&reply.context).expect("a node sent a bad context");
        let values = reply.values.iter().map(|v| v.to_vec()).collect();
        history.complete(op, Outcome::GetOk { values, context });
    }
    let dump = eventually("replicas converged after the final reads", WAIT, || async {
        let dump = cluster.replica_dump(keys).await?;
        converged(&dump).map(|()| dump)
    })
    .await;
    let reads = history.read_versions();
    eprintln!(
        "reads: {} saw one version, {} saw siblings, {} found nothing; one version: {} of reads that found a value (Dynamo 6.3: 99.94%)",
        reads.one,
        reads.several,
        reads.not_found,
        reads
            .one_version_pct()
            .map_or_else(|| "-".to_owned(), |pct| format!("{pct:.2}%"))
    );
    let verdict = check(&history, &dump);
    if !verdict.is_ok() {
        explain(&history, &verdict);
    }
    verdict
}

/// Prints every operation on the keys the verdict complains about, for diagnosis.
fn explain(history: &History, verdict: &Verdict) {
    use dynamo_node::history::Violation;
    let mut keys: Vec<&[u8]> = verdict
        .violations
        .iter()
        .filter_map(|violation| match violation {
            Violation::NoFinalRead { key }
            | Violation::LostWrite { key, .. }
            | Violation::Divergent { key, .. }
            | Violation::Resurrected { key, .. }
            | Violation::Phantom { key, .. }
            | Violation::DuplicateValue { key, .. } => Some(key.as_slice()),
            _ => None,
        })
        .collect();
    keys.dedup();
    eprintln!("history quiesced at event {:?}", history.quiesced_at());
    for key in keys {
        eprintln!("operations on {}:", String::from_utf8_lossy(key));
        for (id, op) in history
            .ops()
            .iter()
            .enumerate()
            .filter(|(_, op)| op.key == key)
        {
            eprintln!(
                "  #{id} events {}..{:?} {:?} -> {:?}",
                op.invoked_at, op.completed_at, op.kind, op.outcome
            );
        }
    }
}
