//! The operator's Prometheus metrics: reconciles, their errors by kind and their
//! durations, membership steps taken, and whether this replica leads.
//!
//! [`Metrics::encode`] renders the OpenMetrics text that `/metrics` serves.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the reconcile duration buckets, in seconds: a pass makes a handful
/// of API and `Admin` calls, each bounded by a timeout of a few seconds.
const DURATION_BUCKETS_SECONDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
}

/// The metric handles; cheap to clone (each is shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    steps: Family<StepLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metrics under the `dynamo_operator_` prefix.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dynamo_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconcile passes started", reconciles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed, by error kind",
            errors.clone(),
        );
        let duration = Histogram::new(DURATION_BUCKETS_SECONDS);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            duration.clone(),
        );
        let steps = Family::<StepLabels, Counter>::default();
        registry.register(
            "membership_steps",
            "Steps the operator took (joins, weight changes, decommissions, StatefulSet resizes)",
            steps.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            errors,
            duration,
            steps,
            leader,
        }
    }

    /// Counts a reconcile pass and records its duration when the guard drops.
    #[must_use]
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            duration: self.duration.clone(),
            start: Instant::now(),
        }
    }

    /// Counts a failed pass under its error kind.
    pub fn reconcile_failed(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }

    /// Counts a step taken.
    pub fn step_taken(&self, step: &'static str) {
        self.steps.get_or_create(&StepLabels { step }).inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text of every metric.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String");
        text
    }
}

/// Records a pass's duration when dropped, so early returns and errors are timed too.
#[derive(Debug)]
pub struct ReconcileTimer {
    duration: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let metrics = Metrics::new();
        drop(metrics.reconcile_started());
        metrics.reconcile_failed("kube");
        metrics.reconcile_failed("kube");
        metrics.step_taken("Join");
        metrics.set_leader(true);
        let text = metrics.encode();
        for line in [
            "dynamo_operator_reconciles_total 1",
            "dynamo_operator_reconcile_errors_total{error=\"kube\"} 2",
            "dynamo_operator_reconcile_duration_seconds_count 1",
            "dynamo_operator_membership_steps_total{step=\"Join\"} 1",
            "dynamo_operator_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
    }
}
