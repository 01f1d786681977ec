//! Fallback sources for a copy whose source stalled (no I/O; time as [`Millis`]).
//!
//! A copy normally pulls a range out of the node that loses it. While that node is
//! down the copy cannot progress, and neither can the join or leave it belongs to. But
//! the data is not only there: an acknowledged write is on at least W of the range's
//! settled replicas (the write set's quorum rule, see [`super::write_set`]). So copying
//! the range from any `R - W + 1` of its `R` settled replicas (`R` is N once the
//! cluster has N members) other than the down source covers every acknowledged write:
//! a W-subset and an `(R - W + 1)`-subset of `R` nodes always share a node.
//!
//! The driver keeps a [`StallTracker`] of when each source started failing. Once a
//! source has failed for the configured stall time, [`choose_fallback`] picks the
//! replacement sources; the driver records the choice in its persisted
//! [`Progress`](super::Progress) and copies from them instead, each with its own
//! cursor. Merging is by vector clock, so copying the same key from several replicas
//! is harmless.
//!
//! Limits of the rule: it covers writes acknowledged with the configured W. A client
//! that lowers W for one request (`w` on the request) accepts that such a write may be
//! on fewer replicas; and a write whose acknowledgements came from stand-ins of the
//! sloppy quorum reaches the range's replicas through hinted handoff, the stray sweep
//! or anti-entropy rather than through the copy.

use std::collections::BTreeMap;
use std::time::Duration;

use super::plan::Task;
use crate::NodeId;
use crate::ring::Ring;
use crate::time::Millis;

/// Default time a source may fail before its copies are taken from other replicas:
/// long enough for a node to restart (a crashed process, a rescheduled pod), short
/// enough that a dead node does not hold a join or leave up for long.
pub const DEFAULT_SOURCE_STALL: Duration = Duration::from_secs(60);

/// When each source began failing, for the sources failing now.
///
/// Call order, in the driver: [`handle_failure`](Self::handle_failure) when a call to
/// a source fails (or the failure detector believes it down), and
/// [`handle_success`](Self::handle_success) when one answers; then
/// [`unreachable_for`](Self::unreachable_for) or [`is_stalled`](Self::is_stalled).
/// Kept in memory only: after a restart of the driver the stall time starts again,
/// while a fallback already chosen stays chosen (it is in the persisted progress).
#[derive(Debug, Clone, Default)]
pub struct StallTracker {
    failing_since: BTreeMap<NodeId, Millis>,
}

impl StallTracker {
    /// No source failing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A call to `source` failed at `now`; the stall counts from its first failure
    /// since it last answered.
    pub fn handle_failure(&mut self, source: &NodeId, now: Millis) {
        self.failing_since.entry(source.clone()).or_insert(now);
    }

    /// `source` answered: it is not stalled.
    pub fn handle_success(&mut self, source: &NodeId) {
        self.failing_since.remove(source);
    }

    /// How long `source` has been failing at `now`; `None` if it is not failing.
    pub fn unreachable_for(&self, source: &NodeId, now: Millis) -> Option<Duration> {
        self.failing_since
            .get(source)
            .map(|since| now.saturating_since(*since))
    }

    /// Whether `source` has been failing for at least `stall` at `now`.
    pub fn is_stalled(&self, source: &NodeId, now: Millis, stall: Duration) -> bool {
        self.unreachable_for(source, now)
            .is_some_and(|failing| failing >= stall)
    }

    /// Forgets sources `keep` rejects (no longer part of any copy).
    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.failing_since.retain(|source, _| keep(source));
    }
}

/// How many of a range's `replicas` settled replicas a fallback copies from so that
/// every write acknowledged by `w` of them is covered: `replicas - w + 1` (at least
/// one).
pub fn fallback_count(replicas: usize, w: usize) -> usize {
    (replicas + 1).saturating_sub(w).max(1)
}

/// The outcome of [`choose_fallback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackChoice {
    /// Copy the range from each of these (settled replicas other than the stalled
    /// source) instead.
    Sources(Vec<NodeId>),
    /// Too few usable replicas: the copy keeps waiting.
    Wait {
        /// Replicas the fallback needs.
        needed: usize,
        /// The usable ones there are.
        usable: Vec<NodeId>,
    },
}

/// The replacement sources for `task`, whose source stalled: `fallback_count` of the
/// range's settled replicas (the first `n` of `settled`'s preference list at the range)
/// other than the source and the destination.
///
/// `current` is the fallback chosen before, if any: its members that still count
/// (`usable`, or `done` copying) are kept first, so progress already made is not
/// thrown away; the rest are filled from the preference list in order. `usable` says
/// whether a replica can be copied from now (not believed down, not stalled itself).
/// A replica whose copy is `done` counts even when it is no longer usable.
pub fn choose_fallback(
    task: &Task,
    settled: &Ring,
    n: usize,
    w: usize,
    current: &[NodeId],
    mut usable: impl FnMut(&NodeId) -> bool,
    mut done: impl FnMut(&NodeId) -> bool,
) -> FallbackChoice {
    let replicas = settled.preference_list(task.range.end, n);
    let needed = fallback_count(replicas.len(), w);
    let candidates: Vec<&NodeId> = replicas
        .iter()
        .filter(|node| **node != task.source && **node != task.dest)
        .collect();
    let mut chosen: Vec<NodeId> = Vec::new();
    for node in current {
        if candidates.contains(&node) && (done(node) || usable(node)) && !chosen.contains(node) {
            chosen.push(node.clone());
        }
    }
    for node in candidates {
        if chosen.len() >= needed {
            break;
        }
        if !chosen.contains(node) && usable(node) {
            chosen.push(node.clone());
        }
    }
    if chosen.len() >= needed {
        chosen.truncate(needed);
        chosen.sort();
        FallbackChoice::Sources(chosen)
    } else {
        FallbackChoice::Wait {
            needed,
            usable: chosen,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::ring::{PartitionStrategy, Token, TokenRange};

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn ring(names: &[&str]) -> Ring {
        let members: Vec<(NodeId, u32)> = names.iter().map(|n| (id(n), 1)).collect();
        Ring::build(
            &members,
            PartitionStrategy::random_tokens(8).unwrap(),
            1,
            None,
        )
        .unwrap()
    }

    /// A task of `settled`'s first range whose source is that range's first replica.
    fn first_task(settled: &Ring, dest: &str) -> Task {
        let (range, _) = settled.vnodes().next().unwrap();
        let source = settled.preference_list(range.end, 3)[0].clone();
        Task {
            range,
            source,
            dest: id(dest),
        }
    }

    #[test]
    fn a_source_stalls_only_after_failing_for_the_whole_stall_time() {
        let stall = Duration::from_secs(10);
        let mut tracker = StallTracker::new();
        let a = id("a");
        assert_eq!(tracker.unreachable_for(&a, Millis(0)), None);
        tracker.handle_failure(&a, Millis(1_000));
        // Later failures do not restart the clock.
        tracker.handle_failure(&a, Millis(5_000));
        assert_eq!(
            tracker.unreachable_for(&a, Millis(6_000)),
            Some(Duration::from_secs(5))
        );
        assert!(!tracker.is_stalled(&a, Millis(10_999), stall));
        assert!(tracker.is_stalled(&a, Millis(11_000), stall));
        // One answer and the clock starts over.
        tracker.handle_success(&a);
        assert!(!tracker.is_stalled(&a, Millis(20_000), stall));
        tracker.handle_failure(&a, Millis(20_000));
        assert!(!tracker.is_stalled(&a, Millis(29_999), stall));
        assert!(tracker.is_stalled(&a, Millis(30_000), stall));
        tracker.retain(|node| node != &a);
        assert_eq!(tracker.unreachable_for(&a, Millis(40_000)), None);
    }

    #[test]
    fn the_fallback_count_makes_every_w_subset_meet_the_fallback() {
        // Any W of R replicas and any R - W + 1 of them share a node: exhaustively for
        // small R, over every pair of subsets.
        for replicas in 1..=5usize {
            for w in 1..=replicas {
                let count = fallback_count(replicas, w);
                assert_eq!(count, replicas - w + 1);
                let subsets = |size: usize| -> Vec<u32> {
                    (0u32..1 << replicas)
                        .filter(|s| s.count_ones() as usize == size)
                        .collect()
                };
                for writes in subsets(w) {
                    for fallback in subsets(count) {
                        assert_ne!(writes & fallback, 0, "R={replicas} W={w}");
                    }
                }
                // One fewer would miss some write.
                if count > 1 {
                    assert!(subsets(w).iter().any(|writes| {
                        subsets(count - 1)
                            .iter()
                            .any(|fallback| writes & fallback == 0)
                    }));
                }
            }
        }
        assert_eq!(fallback_count(2, 3), 1, "never zero");
    }

    #[test]
    fn a_fallback_takes_n_minus_w_plus_1_usable_replicas_other_than_the_source() {
        // Dynamo §4.9 + the quorum rule of §4.5: with N=3, W=2, two other replicas.
        let settled = ring(&["a", "b", "c", "d", "e"]);
        let task = first_task(&settled, "x");
        let replicas = settled.preference_list(task.range.end, 3);
        let choice = choose_fallback(&task, &settled, 3, 2, &[], |_| true, |_| false);
        let FallbackChoice::Sources(sources) = choice else {
            panic!("expected sources, got {choice:?}");
        };
        assert_eq!(sources.len(), 2);
        let expected: BTreeSet<&NodeId> = replicas[1..].iter().collect();
        assert_eq!(sources.iter().collect::<BTreeSet<_>>(), expected);
        // W=3: one other replica is enough; W=1: every other replica would be needed,
        // and two is all there is besides the source.
        let choice = choose_fallback(&task, &settled, 3, 3, &[], |_| true, |_| false);
        assert!(matches!(choice, FallbackChoice::Sources(s) if s.len() == 1));
        let choice = choose_fallback(&task, &settled, 3, 1, &[], |_| true, |_| false);
        assert_eq!(
            choice,
            FallbackChoice::Wait {
                needed: 3,
                usable: replicas[1..].to_vec(),
            }
        );
    }

    #[test]
    fn a_fallback_waits_while_too_few_replicas_are_usable_and_keeps_what_it_chose() {
        let settled = ring(&["a", "b", "c", "d", "e"]);
        let task = first_task(&settled, "x");
        let replicas = settled.preference_list(task.range.end, 3);
        let (second, third) = (replicas[1].clone(), replicas[2].clone());
        // One of the two others is down too: wait, and say which one is usable.
        let choice = choose_fallback(&task, &settled, 3, 2, &[], |node| node != &third, |_| false);
        assert_eq!(
            choice,
            FallbackChoice::Wait {
                needed: 2,
                usable: vec![second.clone()],
            }
        );
        // A replica whose copy is already done counts even while it is down.
        let current = [second.clone(), third.clone()];
        let choice = choose_fallback(
            &task,
            &settled,
            3,
            2,
            &current,
            |node| node != &third,
            |node| node == &third,
        );
        let mut both = current.to_vec();
        both.sort();
        assert_eq!(choice, FallbackChoice::Sources(both));
        // The source and the destination are never chosen, nor are nodes outside the
        // range's replicas, even if a stale choice names them.
        let outsider = settled
            .preference_list(task.range.end, usize::MAX)
            .into_iter()
            .find(|node| !replicas.contains(node))
            .expect("a node that does not replicate the range");
        let stale = [task.source.clone(), outsider, id("x")];
        let choice = choose_fallback(&task, &settled, 3, 2, &stale, |_| true, |_| true);
        let FallbackChoice::Sources(sources) = choice else {
            panic!("expected sources");
        };
        assert!(
            sources.iter().all(|s| replicas[1..].contains(s)),
            "{sources:?}"
        );
    }

    #[test]
    fn a_small_cluster_needs_fewer_fallback_replicas() {
        // Two settled members, N=3, W=2: every write is on both, so the other one
        // alone covers them.
        let settled = ring(&["a", "b"]);
        let task = Task {
            range: TokenRange::new(Token(0), Token(1 << 100)),
            source: id("a"),
            dest: id("x"),
        };
        assert_eq!(
            choose_fallback(&task, &settled, 3, 2, &[], |_| true, |_| false),
            FallbackChoice::Sources(vec![id("b")])
        );
    }
}
