//! The node's background work budget (I/O shell over [`admission`](crate::admission)):
//! one [`AdmissionController`] behind a lock, fed the node's foreground latencies and
//! drawn on by hinted handoff, range transfer and anti-entropy.
//!
//! Background work asks before it works and does no more than it was granted:
//!
//! ```
//! # use dynamo_node::admission::{AdmissionConfig, WorkKind};
//! # use dynamo_node::background::BackgroundBudget;
//! # use dynamo_node::metrics::Metrics;
//! let budget = BackgroundBudget::new(AdmissionConfig::default(), Metrics::new());
//! let pending = 500; // e.g. keys of a range left to send
//! let granted = budget.take(WorkKind::Transfer, pending);
//! // ... send `granted` keys; zero means stop until the next round.
//! assert!(granted <= budget.budget());
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::admission::{AdmissionConfig, AdmissionController, WorkKind};
use crate::cluster::Clock;
use crate::metrics::Metrics;

/// The shared budget; cheap to share as an `Arc`.
///
/// A std `Mutex`: every critical section is a few arithmetic steps or one histogram
/// update, never held across an `.await`.
pub struct BackgroundBudget {
    controller: Mutex<AdmissionController>,
    /// Monotonic time for the controller's intervals and latency window.
    clock: Clock,
    /// Where the budget, the grants and the p99 it reacts to are shown.
    metrics: Metrics,
}

impl std::fmt::Debug for BackgroundBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundBudget")
            .field("budget", &self.budget())
            .finish_non_exhaustive()
    }
}

impl BackgroundBudget {
    /// A budget with `config`, reporting to `metrics` and fed every foreground latency
    /// `metrics` observes (see [`Metrics::observe`]).
    pub fn new(config: AdmissionConfig, metrics: Metrics) -> Arc<Self> {
        let budget = Arc::new(Self {
            controller: Mutex::new(AdmissionController::new(config)),
            clock: Clock::default(),
            metrics: metrics.clone(),
        });
        // Weak: the metrics outlive nothing they observe into, and a strong reference
        // would make a cycle (the budget holds the metrics).
        let observer = Arc::downgrade(&budget);
        metrics.set_foreground_observer(Box::new(move |latency| {
            if let Some(budget) = observer.upgrade() {
                budget.record_foreground(latency);
            }
        }));
        budget.publish(&budget.lock());
        budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionController> {
        // The controller's state is consistent after every method returns; a panic
        // elsewhere while holding the lock cannot leave it half-updated.
        self.controller.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, controller: &AdmissionController) {
        self.metrics
            .set_background(controller.budget(), controller.foreground_p99());
    }

    /// Takes up to `units` of `kind` work from this interval's budget and returns how
    /// many were granted; zero means the budget is spent until the next interval, so
    /// the caller stops its round.
    pub fn take(&self, kind: WorkKind, units: u64) -> u64 {
        let now = self.clock.monotonic();
        let granted = {
            let mut controller = self.lock();
            let grant = controller.request(now, kind, units);
            self.publish(&controller);
            grant.units
        };
        if granted > 0 {
            self.metrics.count_background_granted(kind, granted);
        }
        granted
    }

    /// Records one foreground request's latency (the node's metrics do this for every
    /// client get, put and delete).
    pub fn record_foreground(&self, latency: Duration) {
        let now = self.clock.monotonic();
        let mut controller = self.lock();
        controller.handle_latency(now, latency);
        self.publish(&controller);
    }

    /// Rolls the interval if it ended and refreshes the gauges, so `/metrics` follows
    /// the budget while no background work asks and no request arrives.
    pub fn refresh(&self) {
        let now = self.clock.monotonic();
        let mut controller = self.lock();
        controller.handle_timeout(now);
        self.publish(&controller);
    }

    /// Units per interval now.
    pub fn budget(&self) -> u64 {
        self.lock().budget()
    }

    /// The foreground p99 the budget last reacted to.
    pub fn foreground_p99(&self) -> Option<Duration> {
        self.lock().foreground_p99()
    }

    /// The settings.
    pub fn config(&self) -> AdmissionConfig {
        *self.lock().config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Api, Op, Outcome};

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .map(|line| line[series.len() + 1..].trim())
    }

    #[test]
    fn grants_are_counted_by_kind_and_the_budget_is_shown() {
        let metrics = Metrics::new();
        let config = AdmissionConfig::new(
            Duration::from_millis(50),
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            2,
            7,
        )
        .unwrap();
        let budget = BackgroundBudget::new(config, metrics.clone());
        assert_eq!(budget.take(WorkKind::Handoff, 5), 5);
        assert_eq!(
            budget.take(WorkKind::Transfer, 5),
            2,
            "one budget for all kinds"
        );
        assert_eq!(budget.take(WorkKind::AntiEntropy, 5), 0);
        let text = metrics.encode();
        assert_eq!(sample(&text, "dynamo_background_budget"), Some("7"));
        assert_eq!(
            sample(&text, r#"dynamo_background_granted_total{kind="handoff"}"#),
            Some("5")
        );
        assert_eq!(
            sample(&text, r#"dynamo_background_granted_total{kind="transfer"}"#),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"dynamo_background_granted_total{kind="anti_entropy"}"#
            ),
            Some("0")
        );
    }

    #[test]
    fn client_requests_observed_by_the_metrics_reach_the_budget() {
        let metrics = Metrics::new();
        let budget = BackgroundBudget::new(AdmissionConfig::default(), metrics.clone());
        metrics.observe(Api::Grpc, Op::Put, Outcome::Ok, Duration::from_millis(3));
        metrics.observe(
            Api::Http,
            Op::Get,
            Outcome::NotFound,
            Duration::from_millis(3),
        );
        // Refused requests say nothing about how loaded the node is.
        metrics.observe(Api::Http, Op::Get, Outcome::Invalid, Duration::from_secs(1));
        let controller = budget.lock();
        assert_eq!(controller.window_samples(), 2);
    }

    #[test]
    fn a_dropped_budget_stops_observing() {
        let metrics = Metrics::new();
        drop(BackgroundBudget::new(
            AdmissionConfig::default(),
            metrics.clone(),
        ));
        // The observer holds the budget weakly: nothing to feed, nothing panics.
        metrics.observe(Api::Grpc, Op::Get, Outcome::Ok, Duration::from_millis(1));
    }
}
