//! Admission control for background work (Dynamo §6.5): no I/O, time as [`Millis`].
//!
//! Hinted handoff, range transfer and anti-entropy share one budget of work units per
//! interval. The budget follows the node's foreground latency the way TCP's window
//! follows loss (AIMD): at each interval boundary, when the p99 of foreground
//! requests over a sliding window is above the target, the budget is halved; when it
//! is at or below the target (or there were no requests), it grows by a tenth of the
//! maximum (rounded up); it always stays within `[min, max]`. The paper's nodes do the same with
//! "background tasks" that "are allowed to run only when the foreground tasks
//! \[are\] not affected" (§6.5, "Balancing background vs. foreground tasks").
//!
//! Call order, for one [`AdmissionController`]:
//! 1. [`handle_latency`](AdmissionController::handle_latency) for every finished
//!    foreground get or put;
//! 2. [`request`](AdmissionController::request) before doing background work, and do
//!    no more than it grants (a partial grant means the interval is nearly spent);
//! 3. optionally [`handle_timeout`](AdmissionController::handle_timeout) when
//!    [`poll_timeout`](AdmissionController::poll_timeout) passes, so the budget adapts
//!    even while nobody asks for work (every input also rolls the interval).

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::time::Millis;

/// Default upper bound of the budget, in work units per interval.
pub const DEFAULT_MAX_BUDGET: u64 = 1000;
/// Default lower bound of the budget: background work slows down but never stops, so
/// hints and repairs still drain under sustained load.
pub const DEFAULT_MIN_BUDGET: u64 = 10;
/// Default budget interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default foreground p99 target.
pub const DEFAULT_LATENCY_TARGET: Duration = Duration::from_millis(100);
/// Default latency window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// The latency window is kept as this many slices; the oldest is dropped whole, so the
/// p99 covers between `window - window/SLICES` and `window` of history.
const SLICES: u64 = 8;
/// Latencies are recorded in microseconds up to one hour (longer ones saturate).
const MAX_RECORDED_MICROS: u64 = 3_600_000_000;
/// Two significant digits: a p99 within 1% is plenty to steer a budget.
const SIGNIFICANT_DIGITS: u8 = 2;
/// At most this many adjustments are applied for intervals that passed without any
/// input; more would not change a budget already at a bound.
const MAX_CATCH_UP_STEPS: u64 = 64;

/// Which background activity asks for work (the `kind` label of
/// `dynamo_background_granted_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum WorkKind {
    /// Hinted handoff delivery (Dynamo §4.6).
    Handoff,
    /// Range transfer on membership change.
    Transfer,
    /// Merkle anti-entropy repair (Dynamo §4.7).
    AntiEntropy,
    /// The stray sweep: keys a node holds but no longer replicates, handed to their
    /// replicas (see `transfer::sweep`).
    Sweep,
    /// Building a Merkle tree by scanning and hashing the local data of a range
    /// (anti-entropy, Dynamo §4.7); one unit per
    /// `TREE_BUILD_KEYS_PER_UNIT` keys (the node's `antientropy` module).
    TreeBuild,
}

impl WorkKind {
    /// Every kind, for metrics that show all of them.
    pub const ALL: [WorkKind; 5] = [
        WorkKind::Handoff,
        WorkKind::Transfer,
        WorkKind::AntiEntropy,
        WorkKind::Sweep,
        WorkKind::TreeBuild,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkKind::Handoff => "handoff",
            WorkKind::Transfer => "transfer",
            WorkKind::AntiEntropy => "anti_entropy",
            WorkKind::Sweep => "sweep",
            WorkKind::TreeBuild => "tree_build",
        }
    }
}

/// Why an [`AdmissionConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionConfigError {
    /// The budget bounds are inverted or zero.
    #[error("background budget bounds must satisfy 1 <= min ({min}) <= max ({max})")]
    Bounds {
        /// The lower bound.
        min: u64,
        /// The upper bound.
        max: u64,
    },
    /// A duration is under one millisecond (the resolution of [`Millis`]).
    #[error("{what} must be at least 1ms")]
    TooShort {
        /// `interval`, `window` or `latency target`.
        what: &'static str,
    },
    /// The window is shorter than one interval: the budget would react to noise.
    #[error("latency window ({window:?}) must be at least one interval ({interval:?})")]
    WindowBelowInterval {
        /// The window.
        window: Duration,
        /// The interval.
        interval: Duration,
    },
}

/// Admission control settings, checked once by [`AdmissionConfig::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    latency_target: Duration,
    window: Duration,
    interval: Duration,
    min_budget: u64,
    max_budget: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            latency_target: DEFAULT_LATENCY_TARGET,
            window: DEFAULT_WINDOW,
            interval: DEFAULT_INTERVAL,
            min_budget: DEFAULT_MIN_BUDGET,
            max_budget: DEFAULT_MAX_BUDGET,
        }
    }
}

impl AdmissionConfig {
    /// A budget of `min_budget..=max_budget` units per `interval`, steered by the
    /// foreground p99 over `window` against `latency_target`.
    ///
    /// # Errors
    /// `min_budget` is zero or above `max_budget`; a duration is under 1 ms; the window
    /// is shorter than the interval.
    pub fn new(
        latency_target: Duration,
        window: Duration,
        interval: Duration,
        min_budget: u64,
        max_budget: u64,
    ) -> Result<Self, AdmissionConfigError> {
        if min_budget == 0 || min_budget > max_budget {
            return Err(AdmissionConfigError::Bounds {
                min: min_budget,
                max: max_budget,
            });
        }
        for (what, duration) in [
            ("latency target", latency_target),
            ("window", window),
            ("interval", interval),
        ] {
            if duration < Duration::from_millis(1) {
                return Err(AdmissionConfigError::TooShort { what });
            }
        }
        if window < interval {
            return Err(AdmissionConfigError::WindowBelowInterval { window, interval });
        }
        Ok(Self {
            latency_target,
            window,
            interval,
            min_budget,
            max_budget,
        })
    }

    /// The foreground p99 the budget steers to.
    pub fn latency_target(&self) -> Duration {
        self.latency_target
    }

    /// How much history the p99 covers.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How often the budget refills and adapts.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The smallest budget.
    pub fn min_budget(&self) -> u64 {
        self.min_budget
    }

    /// The largest budget (and the starting one).
    pub fn max_budget(&self) -> u64 {
        self.max_budget
    }

    /// How much the budget grows per interval under the target.
    fn increase_step(&self) -> u64 {
        self.max_budget.div_ceil(10)
    }
}

/// The foreground latencies of the last `window`, in time slices.
#[derive(Debug)]
struct LatencyWindow {
    slice_ms: u64,
    /// `(slice number, latencies recorded in it)`, oldest first, numbers increasing.
    slices: VecDeque<(u64, Histogram<u64>)>,
    /// Histograms of expired slices, reused so a steady state allocates nothing.
    spare: Vec<Histogram<u64>>,
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (1 <= low, high >= 2 * low,
    // sigfig <= 5); failing here is a bug in these constants, not bad input.
    Histogram::new_with_bounds(1, MAX_RECORDED_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

impl LatencyWindow {
    fn new(window: Duration) -> Self {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        Self {
            slice_ms: (window_ms / SLICES).max(1),
            slices: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    fn slice_of(&self, now: Millis) -> u64 {
        now.0 / self.slice_ms
    }

    /// Drops slices that fell out of the window ending at `now`.
    fn expire(&mut self, now: Millis) {
        let current = self.slice_of(now);
        while let Some((slice, _)) = self.slices.front() {
            if slice + SLICES > current {
                break;
            }
            if let Some((_, mut histogram)) = self.slices.pop_front() {
                histogram.reset();
                self.spare.push(histogram);
            }
        }
    }

    fn record(&mut self, now: Millis, latency: Duration) {
        self.expire(now);
        let current = self.slice_of(now);
        // Samples arriving with an older `now` (callers racing on a shared clock) go
        // into the newest slice rather than reopening history.
        if self.slices.back().is_none_or(|(slice, _)| *slice < current) {
            let histogram = self.spare.pop().unwrap_or_else(new_histogram);
            self.slices.push_back((current, histogram));
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some((_, histogram)) = self.slices.back_mut() {
            histogram.saturating_record(micros.clamp(1, MAX_RECORDED_MICROS));
        }
    }

    fn samples(&self) -> u64 {
        self.slices.iter().map(|(_, h)| h.len()).sum()
    }

    /// The 99th percentile over the window ending at `now`, `None` without samples.
    fn p99(&mut self, now: Millis) -> Option<Duration> {
        self.expire(now);
        let mut merged = self.spare.pop().unwrap_or_else(new_histogram);
        for (_, histogram) in &self.slices {
            // Same bounds on both sides, so adding cannot fail; a failure would only
            // make the p99 lower, never panic.
            let _ = merged.add(histogram);
        }
        let p99 =
            (!merged.is_empty()).then(|| Duration::from_micros(merged.value_at_quantile(0.99)));
        merged.reset();
        self.spare.push(merged);
        p99
    }
}

/// What a [`request`](AdmissionController::request) got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "do no more background work than was granted"]
pub struct Grant {
    /// Units granted, `<=` the units asked for; zero means "stop for this interval".
    pub units: u64,
    /// Whether fewer units than asked for were granted.
    pub partial: bool,
}

/// One node's background work budget (see the [module docs](self)).
#[derive(Debug)]
pub struct AdmissionController {
    config: AdmissionConfig,
    latencies: LatencyWindow,
    /// Units per interval now, within `[min, max]`.
    budget: u64,
    /// Units granted in the current interval, `<= budget` (unless the budget shrank
    /// at the roll, which resets this to zero anyway).
    used: u64,
    /// Start of the current interval; `None` before the first input.
    interval_start: Option<Millis>,
    /// The p99 computed at the last interval boundary.
    last_p99: Option<Duration>,
}

impl AdmissionController {
    /// A controller starting at the maximum budget: an idle node may work at full speed.
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            latencies: LatencyWindow::new(config.window),
            budget: config.max_budget,
            used: 0,
            interval_start: None,
            last_p99: None,
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// Records one foreground request's latency, finished at `now`.
    pub fn handle_latency(&mut self, now: Millis, latency: Duration) {
        self.roll(now);
        self.latencies.record(now, latency);
    }

    /// Rolls the interval if `now` is past its end (adapting the budget).
    pub fn handle_timeout(&mut self, now: Millis) {
        self.roll(now);
    }

    /// When the current interval ends (the next refill and adjustment), if one began.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.interval_start
            .map(|start| start + self.config.interval)
    }

    /// Asks for `units` of `kind` work at `now`: grants up to what is left of this
    /// interval's budget. Every kind draws from the same budget.
    pub fn request(&mut self, now: Millis, kind: WorkKind, units: u64) -> Grant {
        let _ = kind; // one shared budget: the kind only matters to the caller's metrics
        self.roll(now);
        let left = self.budget.saturating_sub(self.used);
        let granted = units.min(left);
        self.used += granted;
        Grant {
            units: granted,
            partial: granted < units,
        }
    }

    /// Units per interval now.
    #[must_use]
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Units left in the current interval (as of the last input).
    #[must_use]
    pub fn remaining(&self) -> u64 {
        self.budget.saturating_sub(self.used)
    }

    /// The foreground p99 the budget last reacted to (at the last interval boundary);
    /// `None` when the window held no requests.
    #[must_use]
    pub fn foreground_p99(&self) -> Option<Duration> {
        self.last_p99
    }

    /// Foreground requests recorded in the latency window (as of the last input).
    #[must_use]
    pub fn window_samples(&self) -> u64 {
        self.latencies.samples()
    }

    /// Starts a new interval when `now` is past the current one's end, adjusting the
    /// budget once per elapsed interval.
    fn roll(&mut self, now: Millis) {
        let interval_ms = u64::try_from(self.config.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let Some(start) = self.interval_start else {
            self.interval_start = Some(now);
            return;
        };
        let elapsed = now.0.saturating_sub(start.0) / interval_ms;
        if elapsed == 0 {
            return;
        }
        let p99 = self.latencies.p99(now);
        self.last_p99 = p99;
        let over = p99.is_some_and(|p99| p99 > self.config.latency_target);
        for _ in 0..elapsed.min(MAX_CATCH_UP_STEPS) {
            self.budget = if over {
                // Multiplicative decrease: back off fast when the foreground suffers.
                (self.budget / 2).max(self.config.min_budget)
            } else {
                // Additive increase: probe back up slowly.
                self.budget
                    .saturating_add(self.config.increase_step())
                    .min(self.config.max_budget)
            };
        }
        self.used = 0;
        self.interval_start = Some(Millis(start.0 + elapsed.saturating_mul(interval_ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(min: u64, max: u64) -> AdmissionConfig {
        AdmissionConfig::new(
            Duration::from_millis(50),
            Duration::from_millis(800),
            Duration::from_millis(100),
            min,
            max,
        )
        .unwrap()
    }

    /// Feeds `latency` samples through intervals `[from, to)` (each 100 ms long).
    fn run_intervals(c: &mut AdmissionController, from: u64, to: u64, latency: Duration) {
        for i in from..to {
            for j in 0..10 {
                c.handle_latency(Millis(i * 100 + j * 10), latency);
            }
        }
        c.handle_timeout(Millis(to * 100));
    }

    #[test]
    fn config_is_checked_once() {
        let ok = |min, max| AdmissionConfig::new(MS * 50, MS * 1000, MS * 100, min, max);
        assert!(ok(1, 1).is_ok());
        assert_eq!(
            ok(0, 5).unwrap_err(),
            AdmissionConfigError::Bounds { min: 0, max: 5 }
        );
        assert_eq!(
            ok(6, 5).unwrap_err().to_string(),
            "background budget bounds must satisfy 1 <= min (6) <= max (5)"
        );
        assert_eq!(
            AdmissionConfig::new(Duration::ZERO, MS, MS, 1, 1).unwrap_err(),
            AdmissionConfigError::TooShort {
                what: "latency target"
            }
        );
        assert!(matches!(
            AdmissionConfig::new(MS, MS * 10, MS * 100, 1, 1).unwrap_err(),
            AdmissionConfigError::WindowBelowInterval { .. }
        ));
        let d = AdmissionConfig::default();
        assert!(
            AdmissionConfig::new(
                d.latency_target(),
                d.window(),
                d.interval(),
                d.min_budget(),
                d.max_budget()
            )
            .is_ok(),
            "the defaults pass their own checks"
        );
    }

    #[test]
    fn grants_are_capped_by_what_is_left_of_the_interval_and_refill_after_it() {
        let mut c = AdmissionController::new(config(1, 10));
        let kinds = [WorkKind::Handoff, WorkKind::Transfer, WorkKind::AntiEntropy];
        assert_eq!(c.request(Millis(0), kinds[0], 4).units, 4);
        assert_eq!(c.request(Millis(10), kinds[1], 4).units, 4);
        // One budget for every kind: only 2 are left.
        let grant = c.request(Millis(20), kinds[2], 4);
        assert_eq!(
            grant,
            Grant {
                units: 2,
                partial: true
            }
        );
        assert_eq!(c.request(Millis(99), kinds[0], 1).units, 0, "spent");
        assert_eq!(c.remaining(), 0);
        // The next interval refills (no latency samples: the budget stays at max).
        assert_eq!(c.request(Millis(100), kinds[0], 4).units, 4);
        assert_eq!(c.poll_timeout(), Some(Millis(200)));
    }

    #[test]
    fn sustained_high_latency_drives_the_budget_to_min_and_recovery_grows_it_back() {
        let mut c = AdmissionController::new(config(5, 100));
        run_intervals(&mut c, 0, 1, MS * 10);
        assert_eq!(c.budget(), 100, "under the target: stays at max");
        // Two significant digits: within 1% of the 10 ms every request took.
        let p99 = c.foreground_p99().unwrap();
        assert!(p99.abs_diff(MS * 10) <= MS / 10, "{p99:?}");

        run_intervals(&mut c, 1, 2, MS * 200);
        assert_eq!(c.budget(), 50, "over the target: halved");
        run_intervals(&mut c, 2, 12, MS * 200);
        assert_eq!(c.budget(), 5, "sustained: at min");
        assert!(c.foreground_p99().unwrap() > MS * 190);

        // Low latency again: once the slow samples leave the 800 ms window, the budget
        // grows by max/10 per interval.
        run_intervals(&mut c, 12, 20, MS * 2);
        assert_eq!(c.foreground_p99().map(|d| d < MS * 3), Some(true));
        let recovering = c.budget();
        assert!(recovering > 5, "recovery began: {recovering}");
        run_intervals(&mut c, 20, 40, MS * 2);
        assert_eq!(c.budget(), 100, "back at max");
    }

    #[test]
    fn an_idle_node_grows_back_while_nobody_asks() {
        let mut c = AdmissionController::new(config(5, 100));
        run_intervals(&mut c, 0, 10, MS * 500);
        assert_eq!(c.budget(), 5);
        // No input for a long time: the window empties, every elapsed interval adds a
        // step (bounded catch-up), the budget is back at max.
        c.handle_timeout(Millis(60_000));
        assert_eq!(c.foreground_p99(), None);
        assert_eq!(c.budget(), 100);
    }

    #[test]
    fn p99_ignores_the_fastest_99_percent() {
        let mut c = AdmissionController::new(config(5, 100));
        // 1 slow request in 200 stays under the p99; 7 in 400 do not.
        for i in 0..200 {
            let slow = i == 7;
            c.handle_latency(Millis(i / 4), if slow { MS * 900 } else { MS });
        }
        c.handle_timeout(Millis(100));
        assert!(c.foreground_p99().unwrap() < MS * 2);
        assert_eq!(c.budget(), 100);
        for i in 0..200 {
            let slow = i % 35 == 0;
            c.handle_latency(Millis(100 + i / 4), if slow { MS * 900 } else { MS });
        }
        c.handle_timeout(Millis(200));
        assert!(c.foreground_p99().unwrap() > MS * 800);
        assert_eq!(c.budget(), 50);
    }

    #[test]
    fn latencies_outside_the_histogram_range_saturate() {
        let mut c = AdmissionController::new(config(5, 100));
        c.handle_latency(Millis(0), Duration::ZERO);
        c.handle_latency(Millis(0), Duration::from_secs(u64::MAX));
        c.handle_timeout(Millis(100));
        assert!(c.foreground_p99().unwrap() >= Duration::from_secs(3500));
        assert_eq!(c.budget(), 50);
    }

    #[derive(Debug, Clone)]
    enum Input {
        Latency { advance_ms: u64, latency_ms: u64 },
        Request { advance_ms: u64, units: u64 },
        Timeout { advance_ms: u64 },
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            (0..150u64, 0..400u64).prop_map(|(advance_ms, latency_ms)| Input::Latency {
                advance_ms,
                latency_ms
            }),
            (0..150u64, 0..200u64)
                .prop_map(|(advance_ms, units)| Input::Request { advance_ms, units }),
            (0..3000u64).prop_map(|advance_ms| Input::Timeout { advance_ms }),
        ]
    }

    proptest! {
        #[test]
        fn budget_stays_in_bounds_and_grants_never_exceed_it(
            min in 1..50u64,
            extra in 0..200u64,
            inputs in proptest::collection::vec(input(), 1..200),
        ) {
            let max = min + extra;
            let mut c = AdmissionController::new(config(min, max));
            let mut now = 0u64;
            let mut interval = None;
            let mut granted_this_interval = 0u64;
            for input in inputs {
                match input {
                    Input::Latency { advance_ms, latency_ms } => {
                        now += advance_ms;
                        c.handle_latency(Millis(now), MS * u32::try_from(latency_ms).unwrap());
                    }
                    Input::Request { advance_ms, units } => {
                        now += advance_ms;
                        let grant = c.request(Millis(now), WorkKind::Handoff, units);
                        prop_assert!(grant.units <= units);
                        prop_assert_eq!(grant.partial, grant.units < units);
                        if c.poll_timeout() != interval {
                            interval = c.poll_timeout();
                            granted_this_interval = 0;
                        }
                        granted_this_interval += grant.units;
                        prop_assert!(granted_this_interval <= c.budget());
                    }
                    Input::Timeout { advance_ms } => {
                        now += advance_ms;
                        c.handle_timeout(Millis(now));
                    }
                }
                prop_assert!((min..=max).contains(&c.budget()), "budget {} outside {min}..={max}", c.budget());
                prop_assert!(c.remaining() <= c.budget());
            }
        }

        #[test]
        fn sustained_latency_above_target_reaches_min_and_below_reaches_max(
            min in 1..50u64,
            extra in 0..2000u64,
            slow_ms in 51..5000u64,
            fast_ms in 0..50u64,
        ) {
            let max = min + extra;
            let mut c = AdmissionController::new(config(min, max));
            // Halving from max reaches min within log2(max) + 1 intervals.
            run_intervals(&mut c, 0, 14, MS * u32::try_from(slow_ms).unwrap());
            prop_assert_eq!(c.budget(), min);
            // Growing by max/10 reaches max within 10 intervals once the window (8
            // intervals) holds only fast samples.
            run_intervals(&mut c, 14, 34, MS * u32::try_from(fast_ms).unwrap());
            prop_assert_eq!(c.budget(), max);
        }
    }
}
