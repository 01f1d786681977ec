//! `dynamoctl bench`: a YCSB-style load generator against the gRPC `Kv` API.
//!
//! A load phase inserts `--records` keys, then a run phase issues a core workload's mix
//! (A, B, C, F) over a key distribution for `--duration` or `--operations`, from
//! `--concurrency` client tasks sharing a few HTTP/2 channels. The report gives per
//! operation latency percentiles, throughput, errors by gRPC code and the reads that
//! returned more than one version, the divergence figure of Dynamo §6.3.
//!
//! Updates are not blind: like the paper's clients (§4.1, §4.4), a task writes with the
//! latest context any task has seen for the key (from a read or a previous write), so
//! siblings appear only where writes really race, and a later write that carries a read's
//! context reconciles them. A blind update would be concurrent with every stored version
//! and pile siblings up on every key; so an update of a key this run has no context for
//! yet (after `--skip-load`) reads it first.
//!
//! Requests go through the [`dynamo_client`] library, with either of Dynamo
//! §4.5's strategies: `--routing server` (the default) sends each request to the
//! endpoints round-robin and that node coordinates or forwards it; `--routing client`
//! pulls the ring from an endpoint, sends each write straight to a replica of its key,
//! and coordinates each read in the client (Dynamo §6.4: it reads R replicas with
//! `Kv.GetLocal` and merges their versions). Both routings open the same number of
//! HTTP/2 connections in all. The report names the routing and counts requests the
//! client routed and reads it coordinated. The
//! pure parts (key choosers, mix, pacing, result aggregation and rendering) live in
//! [`workload`] and [`report`].

pub mod report;
pub mod workload;

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use tonic::transport::ClientTlsConfig;

use crate::error::CtlError;
use crate::output::print_out;
use crate::wire::normalize_endpoint;
use dynamo_client::{self as client, Client, ClientConfig, ClientError, Context};
use report::{BenchReport, PhaseReport, Recorder, RoutingReport, Settings};
use workload::{Distribution, KeyChooser, Operation, Workload, record_key};

/// Client tasks per HTTP/2 channel: enough streams to keep a connection busy without
/// queueing every task behind one connection's flow control.
pub const TASKS_PER_CHANNEL: usize = 16;

/// Who sends a request to a key's coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Routing {
    /// The endpoint node routes each request (Dynamo §4.5's load-balancer strategy).
    Server,
    /// The partition-aware client routes each write to a replica of its key and
    /// coordinates each read itself from R replicas (Dynamo §4.5's client-driven
    /// coordination, with §6.4's reads coordinated at the client).
    Client,
}

impl Routing {
    fn mode(self) -> client::Routing {
        match self {
            Routing::Server => client::Routing::Server,
            Routing::Client => client::Routing::Client,
        }
    }
}

/// Who coordinates a read under client routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadCoordinator {
    /// The client reads R replicas' local states and merges them (Dynamo §6.4): two
    /// client RPCs per read, no internode call.
    Client,
    /// The client sends the get to a replica of the key, which coordinates it: one
    /// client RPC, and the replica reads itself locally.
    Replica,
}

impl ReadCoordinator {
    fn as_str(self) -> &'static str {
        match self {
            ReadCoordinator::Client => "client",
            ReadCoordinator::Replica => "replica",
        }
    }
}

/// Flags of `dynamoctl bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Client endpoints to spread the tasks over, round-robin; comma-separated or
    /// repeated [default: --endpoint].
    #[arg(long, value_name = "URL,...", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Request routing: `server` (the endpoints take requests round-robin and coordinate
    /// or forward them) or `client` (writes go straight to a replica of their key, and
    /// the client coordinates reads itself from R replicas' local reads).
    #[arg(long, value_enum, default_value_t = Routing::Server)]
    pub routing: Routing,
    /// With `--routing client`: who coordinates a read, the client itself from R
    /// replicas (`client`, Dynamo §6.4) or a replica of the key the client sends it to
    /// (`replica`). Ignored under server routing.
    #[arg(long, value_enum, default_value_t = ReadCoordinator::Client)]
    pub read_coordinator: ReadCoordinator,
    /// Records inserted by the load phase and chosen from by the run phase.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    pub records: u64,
    /// Skip the load phase (the records exist from an earlier run).
    #[arg(long)]
    pub skip_load: bool,
    /// Run-phase mix: a (50% read, 50% update), b (95/5), c (read only), f (50% read,
    /// 50% read-modify-write), w (update only; not a YCSB workload).
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// How run-phase keys are picked.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Bytes per value (random bytes from the seeded rng).
    #[arg(long, value_name = "BYTES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(0..=(16 << 20)))]
    pub value_size: u32,
    /// Client tasks issuing requests, each waiting for its answer before the next.
    #[arg(long, value_name = "TASKS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Run phase length, e.g. 30s, 2m [default: 30s unless --operations].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "operations")]
    pub duration: Option<Duration>,
    /// Run phase length in operations.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub operations: Option<u64>,
    /// Throttle both phases to this many operations per second.
    #[arg(long, value_name = "OPS", value_parser = parse_rate)]
    pub target_rate: Option<f64>,
    /// Seed of every random choice (operations, keys, values).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl BenchArgs {
    /// How long the run phase lasts.
    pub fn run_length(&self) -> Length {
        match (self.operations, self.duration) {
            (Some(operations), _) => Length::Operations(operations),
            (None, Some(duration)) => Length::Duration(duration),
            (None, None) => Length::Duration(Duration::from_secs(30)),
        }
    }
}

/// The length of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// This many operations in all, over every task.
    Operations(u64),
    /// Until this much time has passed.
    Duration(Duration),
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of operations per second"
        )),
    }
}

/// Channels for `tasks` tasks over `endpoints` endpoints: one per [`TASKS_PER_CHANNEL`]
/// tasks, at least one per endpoint so every endpoint gets load, never more than tasks.
pub fn channel_count(tasks: usize, endpoints: usize) -> usize {
    tasks
        .div_ceil(TASKS_PER_CHANNEL)
        .max(endpoints)
        .min(tasks.max(1))
}

/// When operation number `slot` may start under a `rate` ops/s throttle: evenly spaced
/// from the phase start, so a slow call delays only its own task, and the others catch
/// up to the schedule.
pub fn scheduled_offset(slot: u64, rate: f64) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    Duration::from_secs_f64(slot as f64 / rate)
}

/// Runs the benchmark against `endpoint` (or `--endpoints`) and prints its report: a
/// table on stdout, or one JSON document with `json`. Progress goes to stderr.
///
/// # Errors
///
/// [`CtlError::Unavailable`] when an endpoint cannot be reached at the start; failed
/// calls during the run are counted in the report, not returned.
pub async fn run(
    endpoint: &str,
    args: BenchArgs,
    timeout: Duration,
    json: bool,
    tls_enabled: bool,
    tls: Option<&ClientTlsConfig>,
) -> Result<(), CtlError> {
    let endpoints: Vec<String> = if args.endpoints.is_empty() {
        vec![normalize_endpoint(endpoint, tls_enabled)?]
    } else {
        args.endpoints
            .iter()
            .map(|e| normalize_endpoint(e, tls_enabled))
            .collect::<Result<_, _>>()?
    };
    let tasks = usize::try_from(args.concurrency).expect("at most 100,000 tasks");
    let (client, channels) = connect_client(&endpoints, &args, timeout, tls, tasks).await?;
    let settings = Settings {
        routing: args.routing.mode().as_str().to_owned(),
        read_coordinator: match args.routing {
            Routing::Client => Some(args.read_coordinator.as_str().to_owned()),
            Routing::Server => None,
        },
        endpoints,
        workload: args.workload,
        distribution: args.distribution,
        records: args.records,
        value_size: usize::try_from(args.value_size).expect("at most 16 MiB"),
        concurrency: tasks,
        channels,
        target_rate: args.target_rate,
        seed: args.seed,
    };
    let shared = Arc::new(Shared {
        contexts: ContextCache::new(args.records),
        chooser: KeyChooser::new(args.distribution, args.records),
        settings: settings.clone(),
    });
    let load = if args.skip_load {
        None
    } else {
        Some(
            run_phase(
                &shared,
                &client,
                Phase::Load,
                Length::Operations(args.records),
            )
            .await,
        )
    };
    let run = run_phase(&shared, &client, Phase::Run, args.run_length()).await;
    let stats = client.stats();
    let report = BenchReport {
        settings,
        load,
        run,
        routing: RoutingReport {
            routed: stats.routed,
            fallback: stats.fallback,
            failovers: stats.failovers,
            topology_refreshes: stats.refreshes,
            client_reads: stats.client_reads,
            read_repairs: stats.read_repairs,
        },
    };
    print_out(if json {
        crate::output::to_json(&report)
    } else {
        report::render(&report)
    })
}

/// The client every task shares, and the connections it opens in all: one per
/// [`TASKS_PER_CHANNEL`] tasks, the same number under both routings, spread over the
/// endpoints (server routing) or over the nodes the client routes to (client routing).
async fn connect_client(
    endpoints: &[String],
    args: &BenchArgs,
    timeout: Duration,
    tls: Option<&ClientTlsConfig>,
    tasks: usize,
) -> Result<(Client, usize), CtlError> {
    let channels = channel_count(tasks, endpoints.len());
    let connect = |per_node: usize| {
        let mut config = ClientConfig::new(endpoints.iter().cloned())
            .with_routing(args.routing.mode())
            .with_client_reads(args.read_coordinator == ReadCoordinator::Client)
            .with_request_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_connections_per_node(per_node.clamp(1, client::MAX_CONNECTIONS_PER_NODE));
        if let Some(tls) = tls {
            config = config.with_tls(tls.clone());
        }
        async {
            Client::connect(config).await.map_err(|error| match error {
                ClientError::Config(reason) => CtlError::Usage(reason),
                other => CtlError::Unavailable {
                    endpoint: endpoints.join(","),
                    reason: other.to_string(),
                },
            })
        }
    };
    let mut per_node = channels.div_ceil(endpoints.len());
    let mut client = connect(per_node).await?;
    let nodes = match client.routing_table() {
        Some(table) if args.routing == Routing::Client => table
            .members()
            .iter()
            .filter(|n| n.client_address.is_some())
            .count()
            .max(1),
        _ => endpoints.len(),
    };
    if args.routing == Routing::Client && channels.div_ceil(nodes) != per_node {
        // Both routings get the same connections in all, spread over the nodes the
        // client routes to: each of 20 connections (4 to each of 5 nodes) would carry
        // 3 of 64 requests in flight, and the fewer requests a connection carries, the
        // fewer frames each read and write system call moves (measured: more client
        // CPU per operation). Channels connect lazily, so the first client cost nothing.
        per_node = channels.div_ceil(nodes);
        client = connect(per_node).await?;
    }
    Ok((client, nodes * per_node))
}

/// The latest context seen for each record, shared by every task: a write carries it
/// so it supersedes what the client saw (Dynamo §4.4). A std `Mutex` per record, held
/// only to swap a cheap `Bytes` and never across an `.await`.
struct ContextCache(Vec<Mutex<Bytes>>);

impl ContextCache {
    fn new(records: u64) -> Self {
        Self((0..records).map(|_| Mutex::new(Bytes::new())).collect())
    }

    fn slot(&self, index: u64) -> &Mutex<Bytes> {
        &self.0[usize::try_from(index).expect("record index fits memory")]
    }

    fn get(&self, index: u64) -> Bytes {
        self.slot(index)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, index: u64, context: Bytes) {
        *self
            .slot(index)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = context;
    }
}

/// What every task of a benchmark reads.
struct Shared {
    contexts: ContextCache,
    chooser: KeyChooser,
    settings: Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Load,
    Run,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Run => "run",
        }
    }
}

/// What the tasks of one phase share: the next operation number (which also paces and
/// bounds the phase) and the progress counters.
struct PhaseState {
    phase: Phase,
    start: Instant,
    length: Length,
    next_slot: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

impl PhaseState {
    /// The next operation number, or `None` when the phase is over.
    async fn next_slot(&self, rate: Option<f64>) -> Option<u64> {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let deadline = match self.length {
            Length::Operations(total) if slot >= total => return None,
            Length::Operations(_) => None,
            Length::Duration(duration) => Some(self.start + duration),
        };
        if let Some(rate) = rate {
            tokio::time::sleep_until(self.start + scheduled_offset(slot, rate)).await;
        }
        match deadline {
            Some(deadline) if Instant::now() >= deadline => None,
            _ => Some(slot),
        }
    }
}

async fn run_phase(
    shared: &Arc<Shared>,
    client: &Client,
    phase: Phase,
    length: Length,
) -> PhaseReport {
    let state = Arc::new(PhaseState {
        phase,
        start: Instant::now(),
        length,
        next_slot: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let progress = tokio::spawn(report_progress(state.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..shared.settings.concurrency {
        let client = client.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(shared.settings.seed);
        // One stream per task and phase: the same seed replays the same choices.
        rng.set_stream((task as u64) << 1 | u64::from(phase == Phase::Run));
        tasks.spawn(client_task(shared.clone(), state.clone(), client, rng));
    }
    let mut recorder = Recorder::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(task_record) => recorder.merge(&task_record),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let elapsed = state.start.elapsed();
    progress.abort();
    if std::io::stderr().is_terminal() {
        // Clear the refreshed progress line before the report.
        eprint!("\r\x1b[K");
    }
    recorder.summarize(phase.name(), elapsed)
}

/// Prints `phase: N ops, R ops/s, E errors` on stderr every second: refreshed in place
/// on a terminal, one line per second otherwise.
async fn report_progress(state: Arc<PhaseState>) {
    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut previous = 0;
    loop {
        ticker.tick().await;
        let done = state.done.load(Ordering::Relaxed);
        let line = format!(
            "{}: {done} ops, {} ops/s, {} errors",
            state.phase.name(),
            done - previous,
            state.failed.load(Ordering::Relaxed)
        );
        previous = done;
        if terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}

async fn client_task(
    shared: Arc<Shared>,
    state: Arc<PhaseState>,
    client: Client,
    mut rng: ChaCha8Rng,
) -> Recorder {
    let mut recorder = Recorder::new();
    let rate = shared.settings.target_rate;
    while let Some(slot) = state.next_slot(rate).await {
        let (operation, index) = match state.phase {
            Phase::Load => (Operation::Insert, slot),
            Phase::Run => (
                shared.settings.workload.next_operation(&mut rng),
                shared.chooser.next_index(&mut rng),
            ),
        };
        let started = Instant::now();
        let outcome = perform(&shared, &client, &mut rng, operation, index).await;
        match outcome {
            Ok(versions) => {
                recorder.record_success(operation, started.elapsed());
                if let Some(versions) = versions {
                    recorder.record_versions(versions);
                }
            }
            Err(error) => {
                recorder.record_error(operation, error.code());
                state.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        state.done.fetch_add(1, Ordering::Relaxed);
    }
    recorder
}

/// One operation on record `index`; the number of versions a read saw, if it read. An
/// update carries the latest context seen for the key (reading the key first when none
/// was), a read-modify-write the context its own get returned, an insert none.
async fn perform(
    shared: &Shared,
    client: &Client,
    rng: &mut ChaCha8Rng,
    operation: Operation,
    index: u64,
) -> Result<Option<usize>, ClientError> {
    let key = Bytes::from(record_key(index));
    match operation {
        Operation::Read => {
            let (versions, _) = read(shared, client, key, index).await?;
            Ok(Some(versions))
        }
        Operation::Insert => {
            write(shared, client, rng, key, index, Bytes::new()).await?;
            Ok(None)
        }
        Operation::Update => {
            let mut context = shared.contexts.get(index);
            if context.is_empty() {
                // A record this run has not seen (after --skip-load, or an insert that
                // failed): read it first, as a client that lost its context would, so
                // the update replaces the stored version instead of becoming its
                // sibling. The read's time counts in the update's latency, once per key.
                context = read(shared, client, key.clone(), index).await?.1;
            }
            write(shared, client, rng, key, index, context).await?;
            Ok(None)
        }
        Operation::Rmw => {
            let (versions, context) = read(shared, client, key.clone(), index).await?;
            write(shared, client, rng, key, index, context).await?;
            Ok(Some(versions))
        }
    }
}

async fn read(
    shared: &Shared,
    client: &Client,
    key: Bytes,
    index: u64,
) -> Result<(usize, Bytes), ClientError> {
    let versions = client.get(&key).await?;
    let context = versions.context.as_bytes().clone();
    shared.contexts.set(index, context.clone());
    Ok((versions.values.len(), context))
}

async fn write(
    shared: &Shared,
    client: &Client,
    rng: &mut ChaCha8Rng,
    key: Bytes,
    index: u64,
    context: Bytes,
) -> Result<(), ClientError> {
    let mut value = vec![0; shared.settings.value_size];
    rng.fill_bytes(&mut value);
    let context = client
        .put(&key, &Context::from_bytes(context), &value)
        .await?;
    shared.contexts.set(index, context.as_bytes().clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["dynamoctl", "bench"]
                .into_iter()
                .chain(args.iter().copied()),
        )?;
        match cli.command {
            Command::Bench(bench) => Ok(bench),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_are_ycsb_like() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.records, 10_000);
        assert_eq!(args.value_size, 1024);
        assert_eq!(args.concurrency, 64);
        assert_eq!(args.workload, Workload::A);
        assert_eq!(args.distribution, Distribution::Uniform);
        assert_eq!(args.routing, Routing::Server);
        assert_eq!(args.run_length(), Length::Duration(Duration::from_secs(30)));
        assert!(args.endpoints.is_empty() && !args.skip_load);
        let args = parse(&["--routing", "client"]).unwrap();
        assert_eq!(args.routing, Routing::Client);
        assert_eq!(args.routing.mode().as_str(), "client");
    }

    #[test]
    fn endpoints_take_a_comma_list_or_repeats() {
        let args = parse(&["--endpoints", "a:1,b:2", "--endpoints", "c:3"]).unwrap();
        assert_eq!(args.endpoints, ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["--records", "0"][..],
            &["--concurrency", "0"],
            &["--workload", "e"],
            &["--distribution", "pareto"],
            &["--routing", "leader"],
            &["--target-rate", "0"],
            &["--target-rate", "NaN"],
            &["--duration", "10s", "--operations", "5"],
            &["--value-size", "99999999"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn length_is_operations_or_a_duration() {
        let args = parse(&["--operations", "500", "--workload", "f"]).unwrap();
        assert_eq!(args.run_length(), Length::Operations(500));
        let args = parse(&["--duration", "2m", "--target-rate", "250.5"]).unwrap();
        assert_eq!(
            args.run_length(),
            Length::Duration(Duration::from_secs(120))
        );
        assert_eq!(args.target_rate, Some(250.5));
    }

    #[test]
    fn one_channel_per_sixteen_tasks_and_per_endpoint() {
        assert_eq!(channel_count(64, 1), 4);
        assert_eq!(channel_count(65, 1), 5);
        assert_eq!(channel_count(8, 3), 3);
        assert_eq!(channel_count(2, 3), 2, "never more channels than tasks");
        assert_eq!(channel_count(1, 1), 1);
    }

    #[test]
    fn pacing_spaces_operations_evenly() {
        assert_eq!(scheduled_offset(0, 100.0), Duration::ZERO);
        assert_eq!(scheduled_offset(100, 100.0), Duration::from_secs(1));
        assert_eq!(scheduled_offset(5, 2.0), Duration::from_millis(2500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_hands_out_exactly_its_operations() {
        let state = PhaseState {
            phase: Phase::Run,
            start: Instant::now(),
            length: Length::Operations(3),
            next_slot: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let mut slots = Vec::new();
        while let Some(slot) = state.next_slot(Some(10.0)).await {
            slots.push(slot);
        }
        assert_eq!(slots, [0, 1, 2]);
        // Paced at 10 ops/s: the third starts 200 ms in.
        assert!(state.start.elapsed() >= Duration::from_millis(200));
        assert_eq!(state.next_slot(None).await, None, "stays over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_phase_ends_at_its_deadline() {
        let state = PhaseState {
            phase: Phase::Run,
            start: Instant::now(),
            length: Length::Duration(Duration::from_secs(1)),
            next_slot: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let mut count = 0;
        while state.next_slot(Some(4.0)).await.is_some() {
            count += 1;
        }
        // Slots at 0, 250, 500 and 750 ms start; the one at 1 s is past the deadline.
        assert_eq!(count, 4);
    }
}
