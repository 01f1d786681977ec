//! Counting what a benchmark did and saying it: per-operation latency histograms
//! (microseconds), errors by gRPC code, reads that saw concurrent versions; merged from
//! every client task, then rendered as a table or one JSON document. No I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::workload::Operation;

/// The largest latency a histogram tracks exactly, in microseconds (one minute); slower
/// calls are counted at this value.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// What one operation kind did in one phase.
#[derive(Debug, Clone)]
pub struct OperationRecord {
    /// Latencies of the successful calls, in microseconds.
    latencies: Histogram<u64>,
    /// Failed calls by gRPC code name (e.g. `Unavailable`).
    errors: BTreeMap<String, u64>,
}

impl OperationRecord {
    fn new() -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
                .expect("constant bounds are valid"),
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &Self) {
        self.latencies
            .add(&other.latencies)
            .expect("histograms with the same bounds merge");
        for (code, count) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += count;
        }
    }
}

/// Everything one client task (or, merged, all of them) observed in one phase.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    operations: BTreeMap<Operation, OperationRecord>,
    reads_with_one_version: u64,
    reads_with_siblings: u64,
    reads_not_found: u64,
}

impl Recorder {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// A call that succeeded after `latency`.
    pub fn record_success(&mut self, operation: Operation, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.entry(operation)
            .latencies
            .saturating_record(micros.clamp(1, MAX_LATENCY_MICROS));
    }

    /// A call that failed with the gRPC code `code`.
    pub fn record_error(&mut self, operation: Operation, code: tonic::Code) {
        *self
            .entry(operation)
            .errors
            .entry(format!("{code:?}"))
            .or_default() += 1;
    }

    /// A successful get that returned `versions` values: more than one is a divergent read
    /// (Dynamo §6.3 counts them), none is a miss.
    pub fn record_versions(&mut self, versions: usize) {
        match versions {
            0 => self.reads_not_found += 1,
            1 => self.reads_with_one_version += 1,
            _ => self.reads_with_siblings += 1,
        }
    }

    /// Adds another task's record to this one.
    pub fn merge(&mut self, other: &Self) {
        for (operation, record) in &other.operations {
            self.entry(*operation).merge(record);
        }
        self.reads_with_one_version += other.reads_with_one_version;
        self.reads_with_siblings += other.reads_with_siblings;
        self.reads_not_found += other.reads_not_found;
    }

    fn entry(&mut self, operation: Operation) -> &mut OperationRecord {
        self.operations
            .entry(operation)
            .or_insert_with(OperationRecord::new)
    }

    /// The phase's summary, over `elapsed` wall time.
    pub fn summarize(&self, phase: &'static str, elapsed: Duration) -> PhaseReport {
        let seconds = elapsed.as_secs_f64();
        let per_second = |count: u64| {
            if seconds > 0.0 {
                #[allow(clippy::cast_precision_loss)]
                let rate = count as f64 / seconds;
                rate
            } else {
                0.0
            }
        };
        let operations: BTreeMap<&'static str, OperationReport> = self
            .operations
            .iter()
            .map(|(operation, record)| {
                let ok = record.latencies.len();
                let errors_total: u64 = record.errors.values().sum();
                let h = &record.latencies;
                let latency = (ok > 0).then(|| LatencyReport {
                    p50: h.value_at_quantile(0.50),
                    p90: h.value_at_quantile(0.90),
                    p99: h.value_at_quantile(0.99),
                    p999: h.value_at_quantile(0.999),
                    max: h.max(),
                    mean: h.mean(),
                });
                let report = OperationReport {
                    count: ok + errors_total,
                    ok,
                    throughput: per_second(ok),
                    latency_us: latency,
                    errors: record.errors.clone(),
                };
                (operation.name(), report)
            })
            .collect();
        let count: u64 = operations.values().map(|op| op.count).sum();
        let ok: u64 = operations.values().map(|op| op.ok).sum();
        PhaseReport {
            phase,
            elapsed_s: seconds,
            count,
            errors: count - ok,
            throughput: per_second(ok),
            operations,
            reads_with_one_version: self.reads_with_one_version,
            reads_with_siblings: self.reads_with_siblings,
            reads_not_found: self.reads_not_found,
            one_version_pct: one_version_pct(self.reads_with_one_version, self.reads_with_siblings),
        }
    }
}

/// Latency percentiles of the successful calls, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyReport {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile (the percentile Dynamo's SLAs are written at, §2.2).
    pub p999: u64,
    /// Slowest call.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// One operation kind's figures in one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationReport {
    /// Calls made, failed ones included.
    pub count: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Successful calls per second of the phase.
    pub throughput: f64,
    /// Latency of the successful calls; absent when none succeeded.
    pub latency_us: Option<LatencyReport>,
    /// Failed calls by gRPC code name.
    pub errors: BTreeMap<String, u64>,
}

/// One phase (`load` or `run`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    /// `load` or `run`.
    pub phase: &'static str,
    /// Wall time of the phase, in seconds.
    pub elapsed_s: f64,
    /// Calls made, failed ones included.
    pub count: u64,
    /// Failed calls.
    pub errors: u64,
    /// Successful calls per second.
    pub throughput: f64,
    /// Per operation kind (`read`, `update`, `insert`, `rmw`).
    pub operations: BTreeMap<&'static str, OperationReport>,
    /// Successful gets that returned exactly one version.
    pub reads_with_one_version: u64,
    /// Successful gets that returned more than one version (Dynamo §6.3).
    pub reads_with_siblings: u64,
    /// Successful gets that found no value.
    pub reads_not_found: u64,
    /// Of the gets that found a value, the percentage that saw one version: Dynamo §6.3
    /// reports 99.94% over 24 hours of its shopping cart. Absent when no get found one.
    pub one_version_pct: Option<f64>,
}

/// `one` as a percentage of `one + several`, if either is non-zero.
fn one_version_pct(one: u64, several: u64) -> Option<f64> {
    let found = one + several;
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    (found > 0).then(|| 100.0 * one as f64 / found as f64)
}

/// The whole benchmark: its settings and each phase that ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The settings, as given.
    pub settings: Settings,
    /// The load phase, absent with `--skip-load`.
    pub load: Option<PhaseReport>,
    /// The run phase.
    pub run: PhaseReport,
    /// Where requests went, over both phases.
    pub routing: RoutingReport,
}

/// How the client's requests were routed, over both phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RoutingReport {
    /// Requests the client sent straight to a replica of their key.
    pub routed: u64,
    /// Requests a node took without the client routing them (server-driven).
    pub fallback: u64,
    /// Requests answered after a node failed to.
    pub failovers: u64,
    /// Topology pulls that changed the client's routing table.
    pub topology_refreshes: u64,
    /// Reads the client coordinated itself from R replicas' local reads (Dynamo §6.4);
    /// included in `routed`.
    pub client_reads: u64,
    /// Client-coordinated reads whose replicas disagreed, repaired through an ordinary
    /// get.
    pub read_repairs: u64,
}

/// The settings of a benchmark, echoed in its report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// `server` or `client`: who picked the node each request went to.
    pub routing: String,
    /// Under client routing, who coordinated reads: `client` (from R replicas' local
    /// reads) or `replica` (a replica of the key); absent under server routing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_coordinator: Option<String>,
    /// Client endpoints requests were spread over.
    pub endpoints: Vec<String>,
    /// Workload letter.
    pub workload: super::workload::Workload,
    /// Key distribution.
    pub distribution: super::workload::Distribution,
    /// Records loaded (and chosen from).
    pub records: u64,
    /// Value size in bytes.
    pub value_size: usize,
    /// Client tasks.
    pub concurrency: usize,
    /// HTTP/2 channels the tasks share.
    pub channels: usize,
    /// Throttle in operations per second, if any.
    pub target_rate: Option<f64>,
    /// Seed of every random choice.
    pub seed: u64,
}

/// The report as a table for people.
pub fn render(report: &BenchReport) -> String {
    use std::fmt::Write as _;
    let s = &report.settings;
    let mut out = format!(
        "workload {}, {} keys over {} records, {} B values, {} tasks on {} channels, {} routing via {}\n",
        format!("{:?}", s.workload).to_lowercase(),
        format!("{:?}", s.distribution).to_lowercase(),
        s.records,
        s.value_size,
        s.concurrency,
        s.channels,
        s.routing,
        s.endpoints.join(", ")
    );
    out.push_str(&format!(
        "{:<6} {:<7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}  errors\n",
        "phase", "op", "count", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    ));
    for phase in report.load.iter().chain(std::iter::once(&report.run)) {
        for (name, op) in &phase.operations {
            let [p50, p90, p99, p999, max] = op.latency_us.as_ref().map_or(
                [
                    "-".to_owned(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ],
                |l| [l.p50, l.p90, l.p99, l.p999, l.max].map(|v| v.to_string()),
            );
            let errors = if op.errors.is_empty() {
                "0".to_owned()
            } else {
                op.errors
                    .iter()
                    .map(|(code, n)| format!("{code}={n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = writeln!(
                out,
                "{:<6} {:<7} {:>9} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9}  {errors}",
                phase.phase, name, op.count, op.throughput, p50, p90, p99, p999, max
            );
        }
        let _ = writeln!(
            out,
            "{}: {} calls in {:.1} s, {:.1} ops/s, {} errors; reads with >1 version: {}, reads not found: {}{}",
            phase.phase,
            phase.count,
            phase.elapsed_s,
            phase.throughput,
            phase.errors,
            phase.reads_with_siblings,
            phase.reads_not_found,
            phase
                .one_version_pct
                .map_or_else(String::new, |pct| format!(
                    "; one version: {pct:.3}% of reads that found a value (Dynamo §6.3: 99.94%)"
                ))
        );
    }
    let r = &report.routing;
    let _ = writeln!(
        out,
        "routing: {} requests sent to a replica by the client, {} through a node's own routing, {} failovers, {} topology refreshes",
        r.routed, r.fallback, r.failovers, r.topology_refreshes
    );
    if r.client_reads > 0 {
        let _ = writeln!(
            out,
            "client-coordinated reads: {} (each from R replicas), {} repaired through a node after the replicas disagreed",
            r.client_reads, r.read_repairs
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::{Distribution, Workload};
    use proptest::prelude::*;

    fn settings() -> Settings {
        Settings {
            routing: "server".into(),
            read_coordinator: None,
            endpoints: vec!["http://127.0.0.1:7000".into()],
            workload: Workload::A,
            distribution: Distribution::Zipfian,
            records: 100,
            value_size: 1024,
            concurrency: 8,
            channels: 1,
            target_rate: None,
            seed: 1,
        }
    }

    #[test]
    fn merged_tasks_add_up() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        for ms in 1..=100 {
            a.record_success(Operation::Read, Duration::from_millis(ms));
        }
        b.record_success(Operation::Update, Duration::from_millis(5));
        b.record_error(Operation::Update, tonic::Code::Unavailable);
        b.record_error(Operation::Update, tonic::Code::Unavailable);
        a.record_versions(2);
        b.record_versions(0);
        b.record_versions(1);
        a.merge(&b);
        let report = a.summarize("run", Duration::from_secs(2));
        assert_eq!(report.count, 103);
        assert_eq!(report.errors, 2);
        assert!((report.throughput - 50.5).abs() < 1e-9);
        let read = &report.operations["read"];
        assert_eq!((read.count, read.ok), (100, 100));
        let latency = read.latency_us.as_ref().unwrap();
        // HdrHistogram keeps 3 significant digits.
        assert!((49_900..=50_100).contains(&latency.p50), "{latency:?}");
        assert!((98_900..=99_100).contains(&latency.p99), "{latency:?}");
        assert!((99_900..=100_100).contains(&latency.max), "{latency:?}");
        let update = &report.operations["update"];
        assert_eq!((update.count, update.ok), (3, 1));
        assert_eq!(update.errors["Unavailable"], 2);
        assert_eq!((report.reads_with_siblings, report.reads_not_found), (1, 1));
        assert_eq!(report.reads_with_one_version, 1);
        assert_eq!(report.one_version_pct, Some(50.0));
    }

    #[test]
    fn an_operation_with_only_errors_has_no_latency() {
        let mut r = Recorder::new();
        r.record_error(Operation::Rmw, tonic::Code::DeadlineExceeded);
        let report = r.summarize("run", Duration::ZERO);
        let rmw = &report.operations["rmw"];
        assert_eq!(rmw.latency_us, None);
        assert_eq!(report.throughput, 0.0);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["operations"]["rmw"]["errors"]["DeadlineExceeded"], 1);
        assert!(json["operations"]["rmw"]["latency_us"].is_null());
    }

    #[test]
    fn slow_calls_are_capped_not_lost() {
        let mut r = Recorder::new();
        r.record_success(Operation::Read, Duration::from_secs(3600));
        r.record_success(Operation::Read, Duration::ZERO);
        let report = r.summarize("run", Duration::from_secs(1));
        let latency = report.operations["read"].latency_us.clone().unwrap();
        assert_eq!(report.operations["read"].ok, 2);
        assert!(latency.max >= MAX_LATENCY_MICROS && latency.max < MAX_LATENCY_MICROS * 2);
    }

    #[test]
    fn json_and_table_carry_the_same_figures() {
        let mut r = Recorder::new();
        r.record_success(Operation::Read, Duration::from_micros(250));
        r.record_success(Operation::Update, Duration::from_micros(900));
        r.record_error(Operation::Update, tonic::Code::Unavailable);
        let report = BenchReport {
            settings: settings(),
            load: Some(r.summarize("load", Duration::from_secs(1))),
            run: r.summarize("run", Duration::from_secs(1)),
            routing: RoutingReport {
                routed: 7,
                fallback: 1,
                failovers: 0,
                topology_refreshes: 2,
                client_reads: 5,
                read_repairs: 1,
            },
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["settings"]["routing"], "server");
        assert_eq!(json["routing"]["routed"], 7);
        assert_eq!(json["routing"]["topology_refreshes"], 2);
        assert_eq!(json["routing"]["client_reads"], 5);
        assert_eq!(json["routing"]["read_repairs"], 1);
        assert_eq!(json["settings"]["workload"], "a");
        assert_eq!(json["settings"]["distribution"], "zipfian");
        assert_eq!(json["run"]["operations"]["read"]["latency_us"]["p50"], 250);
        assert_eq!(json["run"]["operations"]["update"]["count"], 2);
        assert_eq!(json["run"]["errors"], 1);
        let table = render(&report);
        assert!(
            table.starts_with("workload a, zipfian keys over 100 records"),
            "{table}"
        );
        assert!(table.contains("Unavailable=1"), "{table}");
        assert!(
            table.contains("run: 3 calls in 1.0 s, 2.0 ops/s, 1 errors"),
            "{table}"
        );
        assert_eq!(table.matches("\nload ").count(), 2, "{table}");
        assert!(table.contains(", server routing via "), "{table}");
        assert!(
            table.contains("routing: 7 requests sent to a replica by the client, 1 through"),
            "{table}"
        );
        assert!(
            table.contains("client-coordinated reads: 5 (each from R replicas), 1 repaired"),
            "{table}"
        );
    }

    proptest! {
        #[test]
        fn percentiles_are_ordered(micros in proptest::collection::vec(1_u64..10_000_000, 1..300)) {
            let mut r = Recorder::new();
            for m in &micros {
                r.record_success(Operation::Read, Duration::from_micros(*m));
            }
            let report = r.summarize("run", Duration::from_secs(1));
            let l = report.operations["read"].latency_us.clone().unwrap();
            prop_assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
            prop_assert_eq!(report.operations["read"].ok, micros.len() as u64);
        }
    }
}
