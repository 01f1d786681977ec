//! Local failure detection from observed request outcomes (Dynamo §4.8.3).
//!
//! Dynamo §4.8.3: "node A may consider node B failed if node B does not respond to
//! node A's messages"; A then routes around B and "periodically retries B to check
//! for the latter's recovery". There is no heartbeat and no global view: the detector
//! only counts the outcomes of calls the node makes anyway, and asks for a probe of a
//! peer it believes down.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::NodeId;
use crate::time::Millis;

/// What the detector currently believes about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerStatus {
    /// No failure since the last success (or never observed: Dynamo is optimistic).
    Alive,
    /// Has failed recently, but not enough to be written off; still used for routing.
    Suspect,
    /// Failed too often or for too long; routed around and probed in the background.
    Down,
}

impl PeerStatus {
    /// Whether requests may be routed to a peer in this status: Alive and Suspect
    /// peers are, Down ones are not.
    pub fn is_available(self) -> bool {
        self != PeerStatus::Down
    }
}

/// Why a [`DetectorConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DetectorConfigError {
    /// `failures_to_down` was zero.
    #[error("failures_to_down must be at least 1")]
    ZeroFailuresToDown,
    /// A duration was shorter than the detector's 1 ms resolution.
    #[error("{name} must be at least 1 ms")]
    TooShort {
        /// The field's name.
        name: &'static str,
    },
}

/// The failure detector's thresholds, checked on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    failures_to_down: u32,
    down_after: Duration,
    retry_interval: Duration,
}

impl Default for DetectorConfig {
    /// Down after 3 consecutive failures or 5 s of failing; probed every second.
    fn default() -> Self {
        Self {
            failures_to_down: 3,
            down_after: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
        }
    }
}

impl DetectorConfig {
    /// A peer is Down after `failures_to_down` consecutive failures, or once it has
    /// been failing (with no success) for `down_after`; Down peers are probed every
    /// `retry_interval`.
    ///
    /// # Errors
    /// [`DetectorConfigError`] when `failures_to_down` is zero or a duration is
    /// under 1 ms.
    pub fn new(
        failures_to_down: u32,
        down_after: Duration,
        retry_interval: Duration,
    ) -> Result<Self, DetectorConfigError> {
        if failures_to_down == 0 {
            return Err(DetectorConfigError::ZeroFailuresToDown);
        }
        for (name, value) in [
            ("down_after", down_after),
            ("retry_interval", retry_interval),
        ] {
            if value < Duration::from_millis(1) {
                return Err(DetectorConfigError::TooShort { name });
            }
        }
        Ok(Self {
            failures_to_down,
            down_after,
            retry_interval,
        })
    }

    /// Consecutive failures that make a peer Down.
    pub fn failures_to_down(&self) -> u32 {
        self.failures_to_down
    }

    /// How long a peer may keep failing before it is Down.
    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    /// How often a Down peer is probed.
    pub fn retry_interval(&self) -> Duration {
        self.retry_interval
    }
}

/// A peer's current run of failures. Peers without one are Alive and not stored.
#[derive(Debug, Clone, Copy)]
struct FailureStreak {
    failures: u32,
    /// When the first failure of the run was observed.
    since: Millis,
    /// The latest failure or probe request: the next probe waits a retry interval
    /// from here.
    last_attempt: Millis,
}

/// Per-peer failure bookkeeping for one node, driven by observations (no I/O, no
/// timers).
///
/// Call order, in the shell:
///
/// 1. after every call to a peer, [`handle_success`](Self::handle_success) or
///    [`handle_failure`](Self::handle_failure) (a timeout or an error) with the time;
/// 2. when routing, [`is_available`](Self::is_available) or [`status`](Self::status);
/// 3. arm a timer for [`poll_timeout`](Self::poll_timeout); when it fires,
///    [`poll_probe`](Self::poll_probe) lists the peers to probe now, and each probe's
///    outcome goes back through step 1;
/// 4. [`forget`](Self::forget) a peer once it is removed from the member table.
///
/// Memory is bounded by the peers the shell reports: only peers with a current run of
/// failures are stored, and a success or `forget` drops the entry.
#[derive(Debug, Clone, Default)]
pub struct FailureDetector {
    config: DetectorConfig,
    failing: BTreeMap<NodeId, FailureStreak>,
}

impl FailureDetector {
    /// A detector that believes every peer alive.
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            failing: BTreeMap::new(),
        }
    }

    /// The detector's thresholds.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The peer answered: it is Alive again, whatever came before.
    pub fn handle_success(&mut self, peer: &NodeId) {
        self.failing.remove(peer);
    }

    /// A call to the peer timed out or failed at `now`.
    pub fn handle_failure(&mut self, peer: &NodeId, now: Millis) {
        let streak = self.failing.entry(peer.clone()).or_insert(FailureStreak {
            failures: 0,
            since: now,
            last_attempt: now,
        });
        streak.failures = streak.failures.saturating_add(1);
        // The shell's clock is monotonic, but reports of concurrent calls may arrive
        // out of order; never move the probe schedule backwards.
        streak.last_attempt = streak.last_attempt.max(now);
    }

    /// What the detector believes about `peer` at `now`. Never-observed peers are
    /// Alive.
    pub fn status(&self, peer: &NodeId, now: Millis) -> PeerStatus {
        match self.failing.get(peer) {
            None => PeerStatus::Alive,
            Some(streak) if self.is_down(streak, now) => PeerStatus::Down,
            Some(_) => PeerStatus::Suspect,
        }
    }

    /// Whether requests may be routed to `peer` at `now` (Alive or Suspect).
    pub fn is_available(&self, peer: &NodeId, now: Millis) -> bool {
        self.status(peer, now).is_available()
    }

    /// The peers with a current run of failures (Suspect or Down), in id order.
    pub fn failing(&self) -> impl Iterator<Item = &NodeId> {
        self.failing.keys()
    }

    /// Stops tracking `peer` (it left the cluster); it is Alive if seen again.
    pub fn forget(&mut self, peer: &NodeId) {
        self.failing.remove(peer);
    }

    /// The Down peers due for a background probe at `now`, in id order.
    ///
    /// Each returned peer is not returned again for a retry interval, whether or not
    /// the shell has reported the probe's outcome yet.
    #[must_use]
    pub fn poll_probe(&mut self, now: Millis) -> Vec<NodeId> {
        let config = self.config;
        let mut due = Vec::new();
        for (peer, streak) in &mut self.failing {
            if probe_due(&config, streak) <= now {
                streak.last_attempt = now;
                due.push(peer.clone());
            }
        }
        due
    }

    /// When the next probe falls due (possibly already past), or `None` when no peer
    /// is failing.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.failing
            .values()
            .map(|streak| probe_due(&self.config, streak))
            .min()
    }

    fn is_down(&self, streak: &FailureStreak, now: Millis) -> bool {
        streak.failures >= self.config.failures_to_down
            || now.saturating_since(streak.since) >= self.config.down_after
    }
}

/// A retry interval after the last attempt, and not before the peer is Down.
fn probe_due(config: &DetectorConfig, streak: &FailureStreak) -> Millis {
    let retry = streak.last_attempt + config.retry_interval;
    if streak.failures >= config.failures_to_down {
        retry
    } else {
        retry.max(streak.since + config.down_after)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::membership::table::tests::id;

    const SECOND: u64 = 1000;

    fn detector() -> FailureDetector {
        FailureDetector::new(DetectorConfig::default())
    }

    #[test]
    fn config_is_checked_once() {
        let ms = Duration::from_millis;
        assert_eq!(
            DetectorConfig::new(0, ms(1), ms(1)),
            Err(DetectorConfigError::ZeroFailuresToDown)
        );
        assert_eq!(
            DetectorConfig::new(1, Duration::from_micros(999), ms(1)),
            Err(DetectorConfigError::TooShort { name: "down_after" })
        );
        assert_eq!(
            DetectorConfig::new(1, ms(1), Duration::ZERO),
            Err(DetectorConfigError::TooShort {
                name: "retry_interval"
            })
        );
        let config = DetectorConfig::new(2, ms(10), ms(3)).unwrap();
        assert_eq!(
            (
                config.failures_to_down(),
                config.down_after(),
                config.retry_interval()
            ),
            (2, ms(10), ms(3))
        );
        let default = DetectorConfig::default();
        assert_eq!(
            (
                default.failures_to_down(),
                default.down_after(),
                default.retry_interval()
            ),
            (3, Duration::from_secs(5), Duration::from_secs(1))
        );
    }

    /// Dynamo is optimistic: a peer nobody has reported on is assumed up.
    #[test]
    fn unknown_peers_are_alive() {
        let d = detector();
        assert_eq!(d.status(&id("x"), Millis(123)), PeerStatus::Alive);
        assert!(d.is_available(&id("x"), Millis(u64::MAX)));
        assert_eq!(d.poll_timeout(), None);
    }

    /// Dynamo §4.8.3: B is considered failed when it does not respond.
    #[test]
    fn consecutive_failures_make_a_peer_suspect_then_down() {
        let mut d = detector();
        let p = id("p");
        d.handle_failure(&p, Millis(0));
        assert_eq!(d.status(&p, Millis(0)), PeerStatus::Suspect);
        assert!(
            d.is_available(&p, Millis(0)),
            "a suspect still takes requests"
        );
        d.handle_failure(&p, Millis(10));
        assert_eq!(d.status(&p, Millis(10)), PeerStatus::Suspect);
        d.handle_failure(&p, Millis(20));
        assert_eq!(d.status(&p, Millis(20)), PeerStatus::Down);
        assert!(!d.is_available(&p, Millis(20)));
    }

    #[test]
    fn one_failure_not_followed_by_a_success_is_down_after_the_timeout() {
        let mut d = detector();
        let p = id("p");
        d.handle_failure(&p, Millis(1_000));
        assert_eq!(d.status(&p, Millis(5_999)), PeerStatus::Suspect);
        assert_eq!(d.status(&p, Millis(6_000)), PeerStatus::Down);
    }

    #[test]
    fn any_success_makes_the_peer_alive_and_restarts_the_count() {
        let mut d = detector();
        let p = id("p");
        for t in 0..5 {
            d.handle_failure(&p, Millis(t));
        }
        assert_eq!(d.status(&p, Millis(5)), PeerStatus::Down);
        d.handle_success(&p);
        assert_eq!(d.status(&p, Millis(5)), PeerStatus::Alive);
        assert_eq!(d.failing().count(), 0, "alive peers are not stored");
        d.handle_failure(&p, Millis(100));
        d.handle_failure(&p, Millis(200));
        assert_eq!(d.status(&p, Millis(200)), PeerStatus::Suspect);
        assert_eq!(
            d.status(&p, Millis(100 + 5 * SECOND)),
            PeerStatus::Down,
            "the failing time counts from the new run's first failure"
        );
    }

    /// Dynamo §4.8.3: A "periodically retries B to check for the latter's recovery".
    #[test]
    fn down_peers_are_probed_every_retry_interval() {
        let mut d = detector();
        let p = id("p");
        for t in [0, 100, 200] {
            d.handle_failure(&p, Millis(t));
        }
        assert_eq!(d.poll_timeout(), Some(Millis(1_200)));
        assert!(d.poll_probe(Millis(1_199)).is_empty());
        assert_eq!(d.poll_probe(Millis(1_200)), vec![p.clone()]);
        assert!(
            d.poll_probe(Millis(1_200)).is_empty(),
            "not twice in one interval"
        );
        assert_eq!(d.poll_timeout(), Some(Millis(2_200)));
        // The probe timed out: the next one waits an interval from that failure.
        d.handle_failure(&p, Millis(1_700));
        assert_eq!(d.poll_timeout(), Some(Millis(2_700)));
        assert_eq!(d.poll_probe(Millis(3_000)), vec![p.clone()]);
        // This probe answered: nothing more to probe.
        d.handle_success(&p);
        assert_eq!(d.poll_timeout(), None);
        assert!(d.poll_probe(Millis(10_000)).is_empty());
    }

    #[test]
    fn suspects_are_not_probed_until_they_are_down() {
        let mut d = detector();
        let p = id("p");
        d.handle_failure(&p, Millis(0));
        assert_eq!(d.poll_timeout(), Some(Millis(5_000)), "when it turns Down");
        assert!(d.poll_probe(Millis(4_999)).is_empty());
        assert_eq!(d.poll_probe(Millis(5_000)), vec![p.clone()]);
        assert_eq!(d.status(&p, Millis(5_000)), PeerStatus::Down);
    }

    #[test]
    fn probes_are_scheduled_per_peer() {
        let mut d = detector();
        let (a, b) = (id("a"), id("b"));
        for t in 0..3 {
            d.handle_failure(&a, Millis(t));
            d.handle_failure(&b, Millis(500 + t));
        }
        assert_eq!(d.poll_probe(Millis(1_002)), vec![a.clone()]);
        assert_eq!(d.poll_timeout(), Some(Millis(1_502)));
        assert_eq!(d.poll_probe(Millis(2_002)), vec![a.clone(), b.clone()]);
    }

    #[test]
    fn late_reports_do_not_move_the_schedule_backwards() {
        let mut d = detector();
        let p = id("p");
        for t in [900, 950, 1_000] {
            d.handle_failure(&p, Millis(t));
        }
        d.handle_failure(&p, Millis(100));
        assert_eq!(d.poll_timeout(), Some(Millis(2_000)));
    }

    #[test]
    fn forget_drops_the_peer() {
        let mut d = detector();
        let p = id("p");
        for t in 0..3 {
            d.handle_failure(&p, Millis(t));
        }
        d.forget(&p);
        assert_eq!(d.status(&p, Millis(3)), PeerStatus::Alive);
        assert_eq!(d.poll_timeout(), None);
    }

    #[derive(Debug, Clone)]
    enum Event {
        Success(usize),
        Failure(usize),
        Probe,
    }

    fn event() -> impl Strategy<Value = (u64, Event)> {
        let peer = 0..3usize;
        (
            0..800u64,
            prop_oneof![
                peer.clone().prop_map(Event::Success),
                peer.prop_map(Event::Failure),
                Just(Event::Probe),
            ],
        )
    }

    proptest! {
        /// Laws of the schedule under any sequence of observations and polls:
        /// only Down peers are probed, never twice within a retry interval without
        /// news, `poll_timeout` says exactly when the next probe is due, only
        /// failing peers are stored, and the status follows the thresholds.
        #[test]
        fn the_probe_schedule_follows_the_observations(
            events in proptest::collection::vec(event(), 0..80),
        ) {
            let config = DetectorConfig::default();
            let mut d = FailureDetector::new(config);
            let peers = [id("a"), id("b"), id("c")];
            // Per peer: failures since the last success, first failure of the run,
            // and the time of the last probe with no observation since.
            let mut model: [(u32, u64, Option<u64>); 3] = [(0, 0, None); 3];
            let mut now = 0u64;
            for (step, event) in events {
                now += step;
                match event {
                    Event::Success(i) => {
                        d.handle_success(&peers[i]);
                        model[i] = (0, 0, None);
                    }
                    Event::Failure(i) => {
                        d.handle_failure(&peers[i], Millis(now));
                        if model[i].0 == 0 {
                            model[i].1 = now;
                        }
                        model[i].0 += 1;
                        model[i].2 = None;
                    }
                    Event::Probe => {
                        let next = d.poll_timeout();
                        let probed = d.poll_probe(Millis(now));
                        prop_assert_eq!(probed.is_empty(), next.is_none_or(|t| t > Millis(now)));
                        for p in &probed {
                            let i = peers.iter().position(|q| q == p).unwrap();
                            prop_assert_eq!(d.status(p, Millis(now)), PeerStatus::Down);
                            if let Some(last) = model[i].2 {
                                prop_assert!(now - last >= SECOND);
                            }
                            model[i].2 = Some(now);
                        }
                    }
                }
                for (i, p) in peers.iter().enumerate() {
                    let (failures, since, _) = model[i];
                    let expected = if failures == 0 {
                        PeerStatus::Alive
                    } else if failures >= 3 || now - since >= 5 * SECOND {
                        PeerStatus::Down
                    } else {
                        PeerStatus::Suspect
                    };
                    prop_assert_eq!(d.status(p, Millis(now)), expected);
                }
                let stored = d.failing().count();
                prop_assert_eq!(stored, model.iter().filter(|m| m.0 > 0).count());
            }
        }
    }
}
