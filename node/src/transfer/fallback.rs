//! Fallback sources for a copy whose source stalled, and redirected destinations for
//! a copy whose destination stalled (no I/O; time as [`Millis`]).
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
//! The other direction: a leaving node pushes its ranges to their new owners, and one
//! of those may be down. Once it has failed for the same stall time,
//! [`choose_redirect`] picks W other target replicas of the range to push to instead
//! (see its docs for why that loses no acknowledged write), recorded in the progress
//! the same way.
//!
//! Limits of the rule: it covers writes acknowledged with the configured W. A client
//! that lowers W for one request (`w` on the request) accepts that such a write may be
//! on fewer replicas; and a write whose acknowledgements came from stand-ins of the
//! sloppy quorum reaches the range's replicas through hinted handoff, the stray sweep
//! or anti-entropy rather than through the copy.

use std::collections::BTreeMap;
use std::time::Duration;

pub use dynamo_config::settings::DEFAULT_SOURCE_STALL;

use super::plan::Task;
use crate::NodeId;
use crate::ring::Ring;
use crate::time::Millis;

/// When each peer of the transfer (a source, or a destination) began failing, for the
/// peers failing now.
///
/// Call order, in the driver: [`handle_failure`](Self::handle_failure) when a call to
/// a peer fails (or the failure detector believes it down), and
/// [`handle_success`](Self::handle_success) when one answers; then
/// [`unreachable_for`](Self::unreachable_for) or [`is_stalled`](Self::is_stalled).
///
/// Times are wall-clock [`Millis`] so that they mean something after a restart: the
/// driver saves [`failing_since`](Self::failing_since) with its progress and a
/// restarted driver [`restore`](Self::restore)s it, so a restart does not start the
/// stall time again. A restored peer counts as failing only once this process saw it
/// fail too (a call failed, or the failure detector believes it down): the peer may
/// have come back while the driver was down, and its old failure must not replace it
/// the moment the driver starts. A wall clock that jumps back makes the wait longer
/// (never negative); one that jumps forward makes a replacement come early, which is
/// safe, only sooner than asked.
#[derive(Debug, Clone, Default)]
pub struct StallTracker {
    failing_since: BTreeMap<NodeId, Failing>,
}

/// One failing peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failing {
    /// When it began failing (wall clock).
    since: Millis,
    /// Whether this process saw it fail (false for a peer only restored from disk).
    confirmed: bool,
}

impl StallTracker {
    /// No peer failing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes back failures saved by an earlier incarnation of the driver (see
    /// [`failing_since`](Self::failing_since)); a peer this tracker already knows of is
    /// left as it is. Restored failures count once a failure confirms them.
    pub fn restore(&mut self, saved: impl IntoIterator<Item = (NodeId, Millis)>) {
        for (peer, since) in saved {
            self.failing_since.entry(peer).or_insert(Failing {
                since,
                confirmed: false,
            });
        }
    }

    /// A call to `peer` failed at `now`; the stall counts from its first failure since
    /// it last answered (a restored one included).
    pub fn handle_failure(&mut self, peer: &NodeId, now: Millis) {
        self.failing_since
            .entry(peer.clone())
            .and_modify(|failing| failing.confirmed = true)
            .or_insert(Failing {
                since: now,
                confirmed: true,
            });
    }

    /// `peer` answered: it is not stalled.
    pub fn handle_success(&mut self, peer: &NodeId) {
        self.failing_since.remove(peer);
    }

    /// How long `peer` has been failing at `now`; `None` if it is not failing (or
    /// only restored, not yet seen failing by this process).
    pub fn unreachable_for(&self, peer: &NodeId, now: Millis) -> Option<Duration> {
        self.failing_since
            .get(peer)
            .filter(|failing| failing.confirmed)
            .map(|failing| now.saturating_since(failing.since))
    }

    /// Whether `peer` has been failing for at least `stall` at `now`.
    pub fn is_stalled(&self, peer: &NodeId, now: Millis, stall: Duration) -> bool {
        self.unreachable_for(peer, now)
            .is_some_and(|failing| failing >= stall)
    }

    /// Forgets peers `keep` rejects (no longer part of any copy).
    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.failing_since.retain(|peer, _| keep(peer));
    }

    /// Every failing peer (restored ones too) and when it began failing, in id order:
    /// what the driver saves with its progress.
    pub fn failing_since(&self) -> Vec<(NodeId, Millis)> {
        self.failing_since
            .iter()
            .map(|(peer, failing)| (peer.clone(), failing.since))
            .collect()
    }
}

/// How many of a range's `replicas` settled replicas a fallback copies from so that
/// every write acknowledged by `w` of them is covered: `replicas - w + 1` (at least
/// one).
pub fn fallback_count(replicas: usize, w: usize) -> usize {
    (replicas + 1).saturating_sub(w).max(1)
}

/// The outcome of [`choose_fallback`] and [`choose_redirect`]: the peers that stand in
/// for a stalled one, or why the copy keeps waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replacement {
    /// Use each of these instead: for a fallback, copy the range from them (settled
    /// replicas other than the stalled source); for a redirect, send the range to them
    /// (target replicas other than the stalled destination).
    Nodes(Vec<NodeId>),
    /// Too few usable replicas: the copy keeps waiting (for its destination, when
    /// redirecting).
    Wait {
        /// Replicas the fallback or redirect needs.
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
    usable: impl FnMut(&NodeId) -> bool,
    done: impl FnMut(&NodeId) -> bool,
) -> Replacement {
    let replicas = settled.preference_list(task.range.end, n);
    let needed = fallback_count(replicas.len(), w);
    replace(task, &replicas, needed, current, usable, done)
}

/// `needed` of `replicas` other than `task`'s source and destination, as [`pick`]
/// chooses them; or, when too few count, how many were needed and the usable ones.
fn replace(
    task: &Task,
    replicas: &[NodeId],
    needed: usize,
    current: &[NodeId],
    usable: impl FnMut(&NodeId) -> bool,
    done: impl FnMut(&NodeId) -> bool,
) -> Replacement {
    let candidates: Vec<&NodeId> = replicas
        .iter()
        .filter(|node| **node != task.source && **node != task.dest)
        .collect();
    match pick(&candidates, needed, current, usable, done) {
        Ok(chosen) => Replacement::Nodes(chosen),
        Err(usable) => Replacement::Wait { needed, usable },
    }
}

/// `needed` of `candidates`: the members of `current` that still count (`done`, or
/// `usable`) first, then usable candidates in order; sorted. `Err` with the usable
/// ones when there are too few.
fn pick(
    candidates: &[&NodeId],
    needed: usize,
    current: &[NodeId],
    mut usable: impl FnMut(&NodeId) -> bool,
    mut done: impl FnMut(&NodeId) -> bool,
) -> Result<Vec<NodeId>, Vec<NodeId>> {
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
            chosen.push((*node).clone());
        }
    }
    if chosen.len() >= needed {
        chosen.truncate(needed);
        chosen.sort();
        Ok(chosen)
    } else {
        Err(chosen)
    }
}

/// How many of a range's `targets` target replicas a redirected copy must reach so
/// that every write the copy's source holds ends up on a write quorum of the range's
/// new replicas: `w`, or every target replica when there are fewer.
pub fn redirect_count(targets: usize, w: usize) -> usize {
    w.min(targets).max(1)
}

/// The replacement destinations for `task`, whose destination stalled (a leaving
/// node, or one whose weight fell, pushing a range to a down new owner):
/// [`redirect_count`] of the range's target replicas (the first `n` of `target`'s
/// preference list at the range) other than the stalled destination and the source.
///
/// Why that is enough: once the change settles, the range's replicas are its target
/// replicas. A write acknowledged before was on W settled replicas; those that stay are
/// target replicas and keep it, and a copy on a node that loses the range (the
/// source) now lands on W target replicas that are up. So every acknowledged write is
/// on W of the new replicas without the stalled destination, every read quorum
/// (R + W > N) meets it, and the destination, back, is repaired by read repair and
/// anti-entropy like any replica that missed writes. (Writes acknowledged during the
/// change went to the target replicas too: the write set's rule, [`super::write_set`].)
///
/// `current`, `usable` and `done` work as in [`choose_fallback`]: a destination already
/// chosen that still counts is kept, and one whose copy is `done` counts even when it
/// is no longer usable.
pub fn choose_redirect(
    task: &Task,
    target: &Ring,
    n: usize,
    w: usize,
    current: &[NodeId],
    usable: impl FnMut(&NodeId) -> bool,
    done: impl FnMut(&NodeId) -> bool,
) -> Replacement {
    let targets = target.preference_list(task.range.end, n);
    let needed = redirect_count(targets.len(), w);
    replace(task, &targets, needed, current, usable, done)
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
        let Replacement::Nodes(sources) = choice else {
            panic!("expected sources, got {choice:?}");
        };
        assert_eq!(sources.len(), 2);
        let expected: BTreeSet<&NodeId> = replicas[1..].iter().collect();
        assert_eq!(sources.iter().collect::<BTreeSet<_>>(), expected);
        // W=3: one other replica is enough; W=1: every other replica would be needed,
        // and two is all there is besides the source.
        let choice = choose_fallback(&task, &settled, 3, 3, &[], |_| true, |_| false);
        assert!(matches!(choice, Replacement::Nodes(s) if s.len() == 1));
        let choice = choose_fallback(&task, &settled, 3, 1, &[], |_| true, |_| false);
        assert_eq!(
            choice,
            Replacement::Wait {
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
            Replacement::Wait {
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
        assert_eq!(choice, Replacement::Nodes(both));
        // The source and the destination are never chosen, nor are nodes outside the
        // range's replicas, even if a stale choice names them.
        let outsider = settled
            .preference_list(task.range.end, usize::MAX)
            .into_iter()
            .find(|node| !replicas.contains(node))
            .expect("a node that does not replicate the range");
        let stale = [task.source.clone(), outsider, id("x")];
        let choice = choose_fallback(&task, &settled, 3, 2, &stale, |_| true, |_| true);
        let Replacement::Nodes(sources) = choice else {
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
            Replacement::Nodes(vec![id("b")])
        );
    }

    #[test]
    fn a_restored_failure_counts_from_its_saved_time_once_this_process_sees_it_fail() {
        let stall = Duration::from_secs(60);
        let (a, b) = (id("a"), id("b"));
        let mut before = StallTracker::new();
        before.handle_failure(&a, Millis(1_000));
        before.handle_failure(&b, Millis(50_000));
        let saved = before.failing_since();
        assert_eq!(
            saved,
            vec![(a.clone(), Millis(1_000)), (b.clone(), Millis(50_000))]
        );

        // The driver restarts at 70 s: the saved times come back, but count only once
        // a failure confirms them (the peer may be up again).
        let mut after = StallTracker::new();
        after.restore(saved.clone());
        assert_eq!(after.unreachable_for(&a, Millis(70_000)), None);
        assert!(!after.is_stalled(&a, Millis(70_000), stall));
        assert_eq!(after.failing_since(), saved, "kept while unconfirmed");
        // a fails again: it has been failing since 1 s, so it is stalled at once,
        // without a fresh 60 s wait.
        after.handle_failure(&a, Millis(70_000));
        assert_eq!(
            after.unreachable_for(&a, Millis(70_000)),
            Some(Duration::from_secs(69))
        );
        assert!(after.is_stalled(&a, Millis(70_000), stall));
        // b answers: its old failure is forgotten.
        after.handle_success(&b);
        after.handle_failure(&b, Millis(80_000));
        assert!(!after.is_stalled(&b, Millis(139_999), stall));
        assert!(after.is_stalled(&b, Millis(140_000), stall));
        // Restoring again never overrides what this process knows.
        after.restore([(b.clone(), Millis(0))]);
        assert_eq!(
            after.unreachable_for(&b, Millis(90_000)),
            Some(Duration::from_secs(10))
        );
        // A wall clock that went back: no negative wait, no stall.
        assert_eq!(
            after.unreachable_for(&b, Millis(10_000)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_redirect_puts_every_acknowledged_write_on_a_write_quorum_of_the_new_replicas() {
        // A leave in the abstract, exhaustively for small N and every W: the settled
        // replicas are the leaving source L (bit 0) and N - 1 stayers (bits 1..N); the
        // target replicas are the stayers and the new owner D (bit N), which is down.
        // A write acknowledged by any W settled replicas, after L's data is pushed to
        // any `redirect_count` stayers, is on W target replicas other than D, so every
        // read quorum of the target replicas (R = N - W + 1) meets it even while D is
        // down or comes back empty.
        for n in 1..=5usize {
            for w in 1..=n {
                let needed = redirect_count(n, w);
                assert_eq!(needed, w);
                let stayers: Vec<u32> = (1..n as u32).collect();
                let subsets = |of: &[u32], size: usize| -> Vec<u32> {
                    (0u32..1 << of.len())
                        .filter(|s| s.count_ones() as usize == size)
                        .map(|s| {
                            of.iter()
                                .enumerate()
                                .filter(|(i, _)| s & (1 << i) != 0)
                                .map(|(_, bit)| 1u32 << bit)
                                .sum()
                        })
                        .collect()
                };
                let settled: Vec<u32> = (0..n as u32).collect();
                let target: Vec<u32> = (1..=n as u32).collect();
                let down = 1u32 << n;
                if stayers.len() < needed {
                    // Too few stayers (W = N): the rule waits for D instead.
                    continue;
                }
                for acked in subsets(&settled, w) {
                    for pushed_to in subsets(&stayers, needed) {
                        let holders = if acked & 1 != 0 {
                            (acked | pushed_to) & !1
                        } else {
                            acked
                        };
                        assert!(
                            (holders & !down).count_ones() as usize >= w,
                            "N={n} W={w} acked={acked:b} pushed={pushed_to:b}"
                        );
                        for read in subsets(&target, n - w + 1) {
                            assert_ne!(read & holders, 0, "N={n} W={w}");
                        }
                    }
                }
                // One stayer fewer would leave a write L alone held short of W.
                let short = subsets(&settled, w).iter().any(|acked| {
                    acked & 1 != 0
                        && subsets(&stayers, needed - 1)
                            .iter()
                            .any(|pushed_to| (((acked | pushed_to) & !1).count_ones() as usize) < w)
                });
                assert!(short, "N={n} W={w}: W - 1 stayers would do");
            }
        }
    }

    #[test]
    fn a_redirect_takes_w_reachable_target_replicas_other_than_the_destination() {
        // A five-node cluster where "x" leaves: the target ring lacks it.
        let target = ring(&["a", "b", "c", "d", "e"]);
        let (range, _) = target.vnodes().next().unwrap();
        let targets = target.preference_list(range.end, 3);
        let task = Task {
            range,
            source: id("x"),
            dest: targets[0].clone(),
        };
        let mut stayers = targets[1..].to_vec();
        stayers.sort();
        assert_eq!(
            choose_redirect(&task, &target, 3, 2, &[], |_| true, |_| false),
            Replacement::Nodes(stayers.clone())
        );
        // W=1: one stayer is enough; W=3: the down destination itself would be
        // needed, so the copy waits for it.
        let choice = choose_redirect(&task, &target, 3, 1, &[], |_| true, |_| false);
        assert!(matches!(choice, Replacement::Nodes(d) if d.len() == 1));
        assert_eq!(
            choose_redirect(&task, &target, 3, 3, &[], |_| true, |_| false),
            Replacement::Wait {
                needed: 3,
                usable: targets[1..].to_vec()
            }
        );
        // One stayer unreachable too: wait, naming the usable one.
        let (first, second) = (targets[1].clone(), targets[2].clone());
        assert_eq!(
            choose_redirect(&task, &target, 3, 2, &[], |n| n != &second, |_| false),
            Replacement::Wait {
                needed: 2,
                usable: vec![first.clone()]
            }
        );
        // ... unless its copy was already done before it went down.
        assert_eq!(
            choose_redirect(
                &task,
                &target,
                3,
                2,
                &stayers,
                |n| n != &second,
                |n| n == &second
            ),
            Replacement::Nodes(stayers.clone())
        );
        // Nodes outside the range's target replicas never receive it, even if a stale
        // choice names them.
        let outsider = target
            .preference_list(range.end, usize::MAX)
            .into_iter()
            .find(|node| !targets.contains(node))
            .expect("a node that does not replicate the range");
        let choice = choose_redirect(
            &task,
            &target,
            3,
            2,
            &[outsider, id("x")],
            |_| true,
            |_| true,
        );
        assert_eq!(choice, Replacement::Nodes(stayers));
    }
}
