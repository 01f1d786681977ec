//! The get coordinator and read repair (Dynamo §4.5, §5).

use std::collections::VecDeque;
use std::time::Duration;

use super::Reconcile;
use super::config::QuorumConfig;
use super::error::{Operation, QuorumError, TIMEOUT_REASON, bounded_reason};
use super::targets::place;
use crate::NodeId;
use crate::time::Millis;

/// How a get ended, as far as the client is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetOutcome<S> {
    /// R distinct replicas replied before the deadline.
    Success {
        /// The reconciliation of those R replies.
        state: S,
        /// How many replies were merged (R).
        replies: usize,
    },
    /// The quorum became unreachable or the deadline passed first.
    Failed(QuorumError),
}

/// What a replica has answered so far. Its first answer counts; any later one is
/// ignored.
#[derive(Debug, Clone)]
enum Answer<S> {
    /// Asked (or queued to be asked), no answer yet.
    Pending,
    /// Held back by [`GetCoordinator::read_first`]: asked only if a read fails, is
    /// slow, or the replies disagree.
    Held,
    /// Held back and never asked: the outcome was decided without it.
    NotAsked,
    Replied(S),
    Failed,
}

/// When a get that reads R replicas first asks the next one anyway.
#[derive(Debug, Clone, Copy)]
struct Speculation {
    /// The next speculative read is due at this time.
    at: Millis,
    /// The delay before each speculative read.
    delay: Duration,
}

/// Coordinates one get: reads from the first N healthy nodes of the key's extended
/// preference list, answers with the reconciliation of the first R replies, then
/// tells which replicas are stale (Dynamo §4.5: "the coordinator requests all existing
/// versions of data for that key from the N highest-ranked reachable nodes ... and
/// then waits for R responses before returning the result to the client").
/// [`read_first`](Self::read_first) makes it ask R of them first and the rest only when
/// needed (a failure, a slow read, disagreeing replies).
///
/// A replica holding nothing for the key replies with the empty state (the shell
/// builds it, typically with `Default`): that is a reply, and makes the replica a
/// read-repair candidate. A failed read is not retried elsewhere: a stand-in node
/// holds at most a hinted copy, which hinted handoff returns to the home node. The
/// coordinator reads its own replica through a request to itself, like any other.
///
/// After the outcome the machine keeps collecting replies until every target
/// answered or the deadline passed; only then does
/// [`poll_read_repair`](Self::poll_read_repair) list the replicas whose reply differs
/// from the merge of all replies (Dynamo §5: "the coordinator will update those nodes
/// with the latest version ... called read repair").
///
/// Call order:
/// 1. [`new`](Self::new);
/// 2. drain [`poll_transmit`](Self::poll_transmit) and send each read;
/// 3. feed answers with [`handle_reply`](Self::handle_reply) and
///    [`handle_failure`](Self::handle_failure), and the wake-up asked by
///    [`poll_timeout`](Self::poll_timeout) with [`handle_timeout`](Self::handle_timeout);
/// 4. [`poll_outcome`](Self::poll_outcome) yields the result once; answer the client;
/// 5. when [`is_finished`](Self::is_finished), send the writes of
///    [`poll_read_repair`](Self::poll_read_repair) and drop the machine.
///
/// Every input first applies the deadline: a reply that arrives at or after it is
/// ignored, whether or not `handle_timeout` was called.
#[derive(Debug, Clone)]
pub struct GetCoordinator<S> {
    /// R.
    needed: usize,
    /// The replicas read, in preference-list order, with their answers.
    targets: Vec<(NodeId, Answer<S>)>,
    /// Indices into `targets` whose read the shell has not yet taken.
    unsent: VecDeque<usize>,
    /// Indices into `targets` held back ([`Answer::Held`]), in preference-list order.
    held: VecDeque<usize>,
    /// Set while targets are held back and the outcome is open.
    speculation: Option<Speculation>,
    /// Reads sent because a speculation delay passed (not those released because
    /// replies disagreed or a replica failed).
    speculative_reads: u32,
    /// The reconciliation of every reply so far; `None` before the first.
    merged: Option<S>,
    replies: usize,
    /// Per-node failures learnt before the decision, for the error.
    errors: Vec<(NodeId, String)>,
    deadline: Millis,
    /// Whether the deadline has passed: no more reads, no more replies.
    expired: bool,
    /// Whether the outcome is settled (it may still wait in `outcome` to be polled).
    decided: bool,
    outcome: Option<GetOutcome<S>>,
    /// Whether the read-repair list was handed out.
    repair_taken: bool,
}

impl<S: Reconcile> GetCoordinator<S> {
    /// Starts a get for a key whose extended preference list (every distinct node
    /// clockwise from the key, home replicas first) is `extended`. Targets are the
    /// first N healthy nodes (see [`select_targets`](super::select_targets)); the
    /// deadline is `now + timeout`. If fewer healthy nodes exist than R, the outcome is
    /// a failure right away.
    pub fn new(
        config: QuorumConfig,
        extended: &[NodeId],
        is_healthy: impl FnMut(&NodeId) -> bool,
        now: Millis,
        timeout: Duration,
    ) -> Self {
        let targets: Vec<(NodeId, Answer<S>)> = place(extended, config.replicas(), is_healthy)
            .targets
            .into_iter()
            .map(|target| (target.node, Answer::Pending))
            .collect();
        let mut get = Self {
            needed: config.read_quorum(),
            unsent: (0..targets.len()).collect(),
            held: VecDeque::new(),
            speculation: None,
            speculative_reads: 0,
            targets,
            merged: None,
            replies: 0,
            errors: Vec::new(),
            deadline: now + timeout,
            expired: false,
            decided: false,
            outcome: None,
            repair_taken: false,
        };
        get.settle();
        get
    }

    /// Reads only R of the targets at first, `preferred` (the coordinator itself, whose
    /// read costs no message) first if it is one, then the others in preference-list
    /// order; the remaining targets are held back and asked one at a time when a read
    /// fails, and one more each time `speculate_after` passes without an outcome
    /// (speculative retry, as in Cassandra), and all at once as soon as two replies
    /// disagree, so that a divergent key is read, and read-repaired, on every target.
    ///
    /// Dynamo §4.5 reads all N and waits for R. Reading R first halves a get's remote
    /// reads at N=3, R=2; what it gives up is read repair of a stale replica that was
    /// not asked while the replies agree: anti-entropy (and the next get that asks it)
    /// covers that replica. With R = N nothing is held back. Call right after
    /// [`new`](Self::new), before the first [`poll_transmit`](Self::poll_transmit).
    #[must_use]
    pub fn read_first(
        mut self,
        preferred: &NodeId,
        speculate_after: Duration,
        now: Millis,
    ) -> Self {
        if self.decided || self.unsent.len() <= self.needed {
            return self;
        }
        if let Some(position) = self
            .unsent
            .iter()
            .position(|&index| &self.targets[index].0 == preferred)
        {
            if let Some(index) = self.unsent.remove(position) {
                self.unsent.push_front(index);
            }
        }
        self.held = self.unsent.split_off(self.needed);
        for &index in &self.held {
            self.targets[index].1 = Answer::Held;
        }
        self.speculation = Some(Speculation {
            at: now + speculate_after,
            delay: speculate_after,
        });
        self
    }

    /// The next replica to send a read to, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<NodeId> {
        Some(self.targets[self.unsent.pop_front()?].0.clone())
    }

    /// `from` replied with its state for the key (the empty state if it has none).
    /// Merged until the machine finishes; ignored unless `from` was read and has not
    /// answered before.
    pub fn handle_reply(&mut self, from: &NodeId, state: S, now: Millis) {
        self.observe(now);
        if self.expired {
            return;
        }
        let Some(index) = self.pending(from) else {
            return;
        };
        if self.merged.as_ref().is_some_and(|merged| *merged != state) {
            // Replicas disagree: ask every target, so read repair sees them all.
            self.release(usize::MAX);
        }
        match &mut self.merged {
            Some(merged) => merged.reconcile(&state),
            None => self.merged = Some(state.clone()),
        }
        self.targets[index].1 = Answer::Replied(state);
        self.replies += 1;
        self.settle();
    }

    /// Reading from `from` failed (`reason` is kept, cut to
    /// [`MAX_REASON_LEN`](super::MAX_REASON_LEN) bytes, for the error). Ignored unless
    /// `from` was read and has not answered before.
    pub fn handle_failure(&mut self, from: &NodeId, reason: String, now: Millis) {
        self.observe(now);
        let Some(index) = self.pending(from) else {
            return;
        };
        self.targets[index].1 = Answer::Failed;
        if !self.decided {
            self.errors.push((from.clone(), bounded_reason(reason)));
            // A held-back target takes the failed one's place.
            self.release(1);
        }
        self.settle();
    }

    /// The wake-up asked by [`poll_timeout`](Self::poll_timeout) happened; `now` may
    /// be later than asked.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.observe(now);
    }

    /// When to call [`handle_timeout`](Self::handle_timeout): the deadline, or earlier
    /// the next speculative read of a [`read_first`](Self::read_first) get, until the
    /// machine is finished.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.is_finished() {
            return None;
        }
        Some(self.speculation.map_or(self.deadline, |speculation| {
            speculation.at.min(self.deadline)
        }))
    }

    /// How many reads went out because a speculation delay of a
    /// [`read_first`](Self::read_first) get passed without an outcome.
    pub fn speculative_reads(&self) -> u32 {
        self.speculative_reads
    }

    /// The outcome, returned once, as soon as it is known. Replies merged later feed
    /// read repair, not this outcome.
    #[must_use]
    pub fn poll_outcome(&mut self) -> Option<GetOutcome<S>> {
        self.outcome.take()
    }

    /// Once the machine is finished, the stale replicas and the state to write to
    /// each: every replica whose reply differs from the merge of all replies,
    /// including those that replied empty. Returned once, and only when some replica
    /// is stale; replicas that failed or stayed silent are not repaired here (hinted
    /// handoff and anti-entropy cover them). Offered whatever the outcome: sending a
    /// merge of real replies can only move a replica forward.
    #[must_use]
    pub fn poll_read_repair(&mut self) -> Option<Vec<(NodeId, S)>> {
        if self.repair_taken || !self.is_finished() {
            return None;
        }
        self.repair_taken = true;
        let merged = self.merged.as_ref()?;
        let stale: Vec<(NodeId, S)> = self
            .targets
            .iter()
            .filter(|(_, answer)| matches!(answer, Answer::Replied(state) if state != merged))
            .map(|(node, _)| (node.clone(), merged.clone()))
            .collect();
        (!stale.is_empty()).then_some(stale)
    }

    /// Whether the machine has nothing left to collect: every target asked answered
    /// (and none is held back), or the deadline passed. The outcome is settled by then.
    pub fn is_finished(&self) -> bool {
        self.expired
            || self
                .targets
                .iter()
                .all(|(_, answer)| !matches!(answer, Answer::Pending | Answer::Held))
    }

    /// The index of `from` among the targets still awaiting an answer.
    fn pending(&self, from: &NodeId) -> Option<usize> {
        self.targets
            .iter()
            .position(|(node, answer)| node == from && matches!(answer, Answer::Pending))
    }

    /// Targets that may still reply: asked, or held back and askable.
    fn pending_count(&self) -> usize {
        self.targets
            .iter()
            .filter(|(_, answer)| matches!(answer, Answer::Pending | Answer::Held))
            .count()
    }

    /// Asks up to `count` held-back targets, in preference-list order.
    fn release(&mut self, count: usize) {
        for _ in 0..count {
            let Some(index) = self.held.pop_front() else {
                break;
            };
            self.targets[index].1 = Answer::Pending;
            self.unsent.push_back(index);
        }
        if self.held.is_empty() {
            self.speculation = None;
        }
    }

    /// Drops the held-back targets once the outcome is decided: they are never asked.
    fn drop_held(&mut self) {
        for index in std::mem::take(&mut self.held) {
            self.targets[index].1 = Answer::NotAsked;
        }
        self.speculation = None;
    }

    /// Applies the deadline: past it, an undecided get fails with every silent
    /// replica listed as timed out, and nothing more is collected. Before it, asks one
    /// more held-back target if a speculative read is due.
    fn observe(&mut self, now: Millis) {
        if self.expired {
            return;
        }
        if now < self.deadline {
            if let Some(speculation) = self.speculation {
                if now >= speculation.at {
                    self.speculative_reads += 1;
                    self.release(1);
                    if let Some(next) = &mut self.speculation {
                        next.at = now + next.delay;
                    }
                }
            }
            return;
        }
        self.expired = true;
        self.unsent.clear();
        self.drop_held();
        if !self.decided {
            let silent = self
                .targets
                .iter()
                .filter(|(_, answer)| matches!(answer, Answer::Pending))
                .map(|(node, _)| (node.clone(), TIMEOUT_REASON.to_owned()));
            self.errors.extend(silent);
            self.fail(true);
        }
    }

    /// Decides the outcome once it is certain: R replies, or too few replicas left
    /// that could still reply.
    fn settle(&mut self) {
        if self.decided {
            return;
        }
        if self.replies >= self.needed {
            if let Some(merged) = &self.merged {
                self.decided = true;
                self.outcome = Some(GetOutcome::Success {
                    state: merged.clone(),
                    replies: self.replies,
                });
                self.drop_held();
            }
            return;
        }
        if self.replies + self.pending_count() < self.needed {
            self.fail(false);
        }
    }

    fn fail(&mut self, timed_out: bool) {
        self.decided = true;
        self.drop_held();
        self.outcome = Some(GetOutcome::Failed(QuorumError {
            op: Operation::Read,
            needed: self.needed,
            got: self.replies,
            errors: std::mem::take(&mut self.errors),
            timed_out,
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::quorum::select_targets;
    use crate::quorum::testing::{Union, node, nodes};

    const TIMEOUT: Duration = Duration::from_millis(100);
    const DEADLINE: Millis = Millis(100);

    fn start(r: u32, list: &[&str], down: &[&str]) -> GetCoordinator<Union> {
        let down = nodes(down);
        GetCoordinator::new(
            QuorumConfig::new(3, r, 1).unwrap(),
            &nodes(list),
            |id| !down.contains(id),
            Millis(0),
            TIMEOUT,
        )
    }

    fn drain(get: &mut GetCoordinator<Union>) -> Vec<NodeId> {
        std::iter::from_fn(|| get.poll_transmit()).collect()
    }

    fn sorted(mut repairs: Vec<(NodeId, Union)>) -> Vec<(NodeId, Union)> {
        repairs.sort_by(|a, b| a.0.cmp(&b.0));
        repairs
    }

    #[test]
    fn reads_the_first_n_healthy_nodes() {
        let mut get = start(2, &["a", "b", "c", "d", "e"], &["b"]);
        assert_eq!(drain(&mut get), nodes(&["a", "c", "d"]));
        assert_eq!(get.poll_transmit(), None);
    }

    #[test]
    fn succeeds_at_r_replies_with_their_merge() {
        // Dynamo §4.5: "waits for R responses before returning the result"; divergent
        // versions are all returned (here: the union).
        let mut get = start(2, &["a", "b", "c"], &[]);
        let _ = drain(&mut get);
        get.handle_reply(&node("a"), Union::of(&[1, 2]), Millis(1));
        get.handle_reply(&node("a"), Union::of(&[9]), Millis(2)); // duplicate: ignored
        get.handle_reply(&node("zz"), Union::of(&[9]), Millis(2)); // stranger: ignored
        assert_eq!(get.poll_outcome(), None);
        get.handle_reply(&node("b"), Union::of(&[3]), Millis(3));
        assert_eq!(
            get.poll_outcome(),
            Some(GetOutcome::Success {
                state: Union::of(&[1, 2, 3]),
                replies: 2
            })
        );
        assert_eq!(get.poll_outcome(), None, "the outcome is reported once");
        assert_eq!(get.poll_read_repair(), None, "c may still reply");
        assert_eq!(get.poll_timeout(), Some(DEADLINE));
    }

    #[test]
    fn read_repair_names_exactly_the_stale_replicas() {
        // Dynamo §5: replicas that "returned stale versions" are updated with the
        // latest version ("read repair").
        let mut get = start(2, &["a", "b", "c"], &[]);
        let _ = drain(&mut get);
        get.handle_reply(&node("a"), Union::of(&[1, 2]), Millis(1));
        get.handle_reply(&node("b"), Union::of(&[1, 2]), Millis(2));
        let outcome = get.poll_outcome();
        get.handle_reply(&node("c"), Union::default(), Millis(3)); // has nothing
        assert!(get.is_finished());
        let merged = Union::of(&[1, 2]);
        assert_eq!(
            get.poll_read_repair(),
            Some(vec![(node("c"), merged.clone())])
        );
        assert_eq!(get.poll_read_repair(), None, "handed out once");
        assert_eq!(
            outcome,
            Some(GetOutcome::Success {
                state: merged,
                replies: 2
            })
        );
    }

    #[test]
    fn late_replies_feed_read_repair_but_not_the_outcome() {
        let mut get = start(1, &["a", "b", "c"], &[]);
        let _ = drain(&mut get);
        get.handle_reply(&node("b"), Union::of(&[1]), Millis(1));
        let outcome = get.poll_outcome();
        assert_eq!(
            outcome,
            Some(GetOutcome::Success {
                state: Union::of(&[1]),
                replies: 1
            })
        );
        get.handle_reply(&node("a"), Union::of(&[2]), Millis(2));
        get.handle_reply(&node("c"), Union::of(&[1, 2]), Millis(3));
        assert_eq!(get.poll_outcome(), None);
        let merged = Union::of(&[1, 2]);
        assert_eq!(
            get.poll_read_repair().map(sorted),
            Some(vec![(node("a"), merged.clone()), (node("b"), merged)])
        );
    }

    #[test]
    fn fresh_replicas_need_no_repair() {
        let mut get = start(3, &["a", "b", "c"], &[]);
        let _ = drain(&mut get);
        for name in ["a", "b", "c"] {
            get.handle_reply(&node(name), Union::of(&[4]), Millis(1));
        }
        assert!(get.is_finished());
        assert_eq!(get.poll_read_repair(), None);
    }

    #[test]
    fn fails_when_too_many_replicas_fail() {
        let mut get = start(2, &["a", "b", "c"], &[]);
        let _ = drain(&mut get);
        get.handle_failure(&node("a"), "connection refused".to_owned(), Millis(1));
        assert_eq!(get.poll_outcome(), None, "b and c may still make R = 2");
        get.handle_failure(&node("c"), "io error".to_owned(), Millis(2));
        let Some(GetOutcome::Failed(error)) = get.poll_outcome() else {
            panic!("expected a failure");
        };
        assert_eq!(
            error.to_string(),
            "read quorum not reached: needed 2 replies, got 0 \
             (a: connection refused, c: io error)"
        );
        assert!(!error.timed_out);
        // b still replies: stale replicas are known only among those that replied.
        get.handle_reply(&node("b"), Union::of(&[5]), Millis(3));
        assert!(get.is_finished());
        assert_eq!(get.poll_read_repair(), None);
    }

    #[test]
    fn fails_at_once_with_fewer_healthy_nodes_than_r() {
        let mut get = start(2, &["a", "b", "c"], &["a", "c"]);
        assert_eq!(drain(&mut get), nodes(&["b"]));
        assert!(matches!(
            get.poll_outcome(),
            Some(GetOutcome::Failed(QuorumError {
                needed: 2,
                got: 0,
                ..
            }))
        ));
    }

    #[test]
    fn deadline_fails_an_undecided_get_and_ignores_later_replies() {
        let mut get = start(2, &["a", "b", "c"], &[]);
        let _ = drain(&mut get);
        get.handle_reply(&node("a"), Union::of(&[1]), Millis(10));
        get.handle_reply(&node("b"), Union::of(&[2]), DEADLINE); // too late
        let Some(GetOutcome::Failed(error)) = get.poll_outcome() else {
            panic!("expected a timeout");
        };
        assert!(error.timed_out);
        assert_eq!(error.got, 1);
        assert_eq!(
            error.errors,
            vec![
                (node("b"), "timeout".to_owned()),
                (node("c"), "timeout".to_owned())
            ]
        );
        assert!(get.is_finished());
        assert_eq!(get.poll_timeout(), None);
        assert_eq!(
            get.poll_read_repair(),
            None,
            "only a replied, so nothing is stale"
        );
    }

    #[test]
    fn timeout_after_success_finishes_and_repairs_what_replied() {
        let mut get = start(2, &["a", "b", "c"], &[]);
        let _ = drain(&mut get);
        get.handle_reply(&node("a"), Union::of(&[1]), Millis(1));
        get.handle_reply(&node("b"), Union::of(&[1, 2]), Millis(2));
        assert!(matches!(
            get.poll_outcome(),
            Some(GetOutcome::Success { .. })
        ));
        get.handle_timeout(Millis(150));
        assert_eq!(get.poll_outcome(), None);
        assert_eq!(
            get.poll_read_repair(),
            Some(vec![(node("a"), Union::of(&[1, 2]))])
        );
    }

    /// A get over a, b, c (N = 3) reading R first, with `me` preferred and a 10 ms
    /// speculation delay.
    fn start_first(r: u32, me: &str) -> GetCoordinator<Union> {
        start(r, &["a", "b", "c"], &[]).read_first(&node(me), SPECULATE, Millis(0))
    }

    const SPECULATE: Duration = Duration::from_millis(10);

    #[test]
    fn read_first_asks_the_preferred_node_and_then_r_minus_one_others() {
        let mut get = start_first(2, "c");
        assert_eq!(drain(&mut get), nodes(&["c", "a"]));
        assert_eq!(get.poll_timeout(), Some(Millis(10)), "the speculative read");
        let mut all = start_first(3, "c");
        assert_eq!(
            drain(&mut all),
            nodes(&["a", "b", "c"]),
            "R = N holds nothing back"
        );
        assert_eq!(all.poll_timeout(), Some(DEADLINE));
    }

    #[test]
    fn read_first_with_agreeing_replies_never_asks_the_held_back_target() {
        let mut get = start_first(2, "a");
        assert_eq!(drain(&mut get), nodes(&["a", "b"]));
        get.handle_reply(&node("a"), Union::of(&[1]), Millis(1));
        get.handle_reply(&node("c"), Union::of(&[1]), Millis(1)); // not asked: ignored
        assert_eq!(get.poll_outcome(), None);
        get.handle_reply(&node("b"), Union::of(&[1]), Millis(2));
        assert_eq!(
            get.poll_outcome(),
            Some(GetOutcome::Success {
                state: Union::of(&[1]),
                replies: 2
            })
        );
        assert_eq!(get.poll_transmit(), None);
        assert!(get.is_finished(), "nothing left to wait for");
        assert_eq!(get.poll_timeout(), None);
        assert_eq!(get.poll_read_repair(), None);
    }

    #[test]
    fn read_first_asks_a_held_back_target_when_a_read_fails() {
        let mut get = start_first(2, "a");
        let _ = drain(&mut get);
        get.handle_reply(&node("a"), Union::of(&[1]), Millis(1));
        get.handle_failure(&node("b"), "connection refused".to_owned(), Millis(2));
        assert_eq!(get.poll_outcome(), None, "c may still make R = 2");
        assert_eq!(drain(&mut get), nodes(&["c"]));
        assert_eq!(
            get.speculative_reads(),
            0,
            "a failure's replacement is no speculation"
        );
        get.handle_reply(&node("c"), Union::of(&[1]), Millis(3));
        assert!(matches!(
            get.poll_outcome(),
            Some(GetOutcome::Success { replies: 2, .. })
        ));
        assert!(get.is_finished());
    }

    #[test]
    fn read_first_speculates_when_a_read_is_slow() {
        let mut get = start_first(2, "a");
        let _ = drain(&mut get);
        get.handle_reply(&node("a"), Union::of(&[1]), Millis(1));
        get.handle_timeout(Millis(9));
        assert_eq!(get.poll_transmit(), None, "not due yet");
        assert_eq!(get.speculative_reads(), 0);
        get.handle_timeout(Millis(10));
        assert_eq!(drain(&mut get), nodes(&["c"]));
        assert_eq!(get.speculative_reads(), 1);
        assert_eq!(
            get.poll_timeout(),
            Some(DEADLINE),
            "nothing more to speculate on"
        );
        // Whichever answers first makes R; the other still feeds read repair.
        get.handle_reply(&node("c"), Union::of(&[1]), Millis(11));
        assert!(matches!(
            get.poll_outcome(),
            Some(GetOutcome::Success { replies: 2, .. })
        ));
        assert!(!get.is_finished(), "b was asked and may still answer");
        get.handle_reply(&node("b"), Union::default(), Millis(30));
        assert_eq!(
            get.poll_read_repair(),
            Some(vec![(node("b"), Union::of(&[1]))])
        );
    }

    #[test]
    fn read_first_asks_every_target_once_replies_disagree_and_repairs_them_all() {
        let mut get = start_first(2, "a");
        let _ = drain(&mut get);
        get.handle_reply(&node("a"), Union::of(&[1, 2]), Millis(1));
        get.handle_reply(&node("b"), Union::of(&[1]), Millis(2));
        assert!(matches!(
            get.poll_outcome(),
            Some(GetOutcome::Success { replies: 2, .. })
        ));
        assert_eq!(drain(&mut get), nodes(&["c"]), "divergence: c is read too");
        assert!(!get.is_finished());
        get.handle_reply(&node("c"), Union::default(), Millis(3));
        let merged = Union::of(&[1, 2]);
        assert_eq!(
            get.poll_read_repair().map(sorted),
            Some(vec![(node("b"), merged.clone()), (node("c"), merged)])
        );
    }

    #[test]
    fn read_first_fails_only_when_every_target_failed_short_of_r() {
        let mut get = start_first(2, "a");
        let _ = drain(&mut get);
        get.handle_failure(&node("a"), "io error".to_owned(), Millis(1));
        assert_eq!(drain(&mut get), nodes(&["c"]));
        get.handle_failure(&node("b"), "refused".to_owned(), Millis(2));
        let Some(GetOutcome::Failed(error)) = get.poll_outcome() else {
            panic!("expected a failure");
        };
        assert_eq!((error.needed, error.got), (2, 0));
        assert!(!error.timed_out);
    }

    proptest! {
        /// A get reading R first never asks a target twice or a stranger, succeeds as
        /// soon as R asked targets replied (with the merge of those R), fails only when R
        /// is out of reach or the deadline passed, and repairs only replicas that replied.
        #[test]
        fn read_first_asks_each_target_at_most_once_and_keeps_the_quorum(
            (n, r, healthy, events) in scenario(),
            preferred in 0usize..6,
        ) {
            let len = healthy.len();
            let list: Vec<NodeId> = (0..len).map(|i| node(&format!("n{i}"))).collect();
            let id = |i: usize| list.get(i).cloned().unwrap_or_else(|| node(&format!("x{i}")));
            let is_healthy = |x: &NodeId| list.iter().position(|y| y == x).is_some_and(|i| healthy[i]);
            let targets: Vec<NodeId> =
                select_targets(&list, n as usize, is_healthy).into_iter().map(|t| t.node).collect();
            let mut get: GetCoordinator<Union> = GetCoordinator::new(
                QuorumConfig::new(n, r, 1).unwrap(), &list, is_healthy, Millis(0), TIMEOUT)
                .read_first(&id(preferred), SPECULATE, Millis(0));
            let r = r as usize;
            let mut now = Millis(0);
            let mut asked: Vec<NodeId> = Vec::new();
            let mut answered: BTreeSet<NodeId> = BTreeSet::new();
            let mut replies: Vec<(NodeId, Union)> = Vec::new();
            let mut decision = None;
            for event in events.iter().chain([&Event::Timeout]) {
                while let Some(to) = get.poll_transmit() {
                    prop_assert!(targets.contains(&to), "only targets are asked");
                    prop_assert!(!asked.contains(&to), "no target is asked twice");
                    asked.push(to);
                }
                if decision.is_none() && now < DEADLINE {
                    let open = asked.iter().filter(|x| !answered.contains(*x)).count();
                    prop_assert!(
                        replies.len() + open >= r.min(targets.len()) || asked.len() == targets.len(),
                        "enough reads are out to reach R while targets remain");
                }
                match event {
                    Event::Reply(i, items) => {
                        let from = id(*i);
                        let state = Union::of(items);
                        if asked.contains(&from) && answered.insert(from.clone()) && now < DEADLINE {
                            replies.push((from.clone(), state.clone()));
                        }
                        get.handle_reply(&from, state, now);
                    }
                    Event::Fail(i) => {
                        let from = id(*i);
                        if asked.contains(&from) {
                            answered.insert(from.clone());
                        }
                        get.handle_failure(&from, "down".to_owned(), now);
                    }
                    Event::Advance(ms) => {
                        now = Millis(now.0 + ms);
                        // The shell's timer: a due speculative read is sent before
                        // anything else can happen.
                        if get.poll_timeout().is_some_and(|at| at <= now) {
                            get.handle_timeout(now);
                        }
                    }
                    Event::Timeout => {
                        now = now.max(DEADLINE);
                        get.handle_timeout(now);
                    }
                }
                if let Some(outcome) = get.poll_outcome() {
                    prop_assert!(decision.is_none(), "the outcome is reported once");
                    decision = Some((outcome, replies.len()));
                }
                if replies.len() >= r {
                    prop_assert!(matches!(decision, Some((GetOutcome::Success { .. }, _))), "success at R replies");
                }
            }
            prop_assert!(get.is_finished());
            match decision {
                Some((GetOutcome::Success { state, replies: count }, then)) => {
                    prop_assert_eq!(count, r);
                    prop_assert_eq!(then, r);
                    let mut expected = Union::default();
                    for (_, reply) in &replies[..r] {
                        expected.reconcile(reply);
                    }
                    prop_assert_eq!(state, expected);
                }
                Some((GetOutcome::Failed(_), then)) => prop_assert!(then < r),
                None => return Err(TestCaseError::fail("no outcome after the deadline")),
            }
            let repaired: BTreeSet<NodeId> = get.poll_read_repair().unwrap_or_default()
                .into_iter().map(|(x, _)| x).collect();
            let replied: BTreeSet<NodeId> = replies.iter().map(|(x, _)| x.clone()).collect();
            prop_assert!(repaired.is_subset(&replied));
        }
    }

    #[derive(Debug, Clone)]
    enum Event {
        /// Node index: below the list length a listed node, above it a stranger.
        Reply(usize, Vec<u32>),
        Fail(usize),
        Advance(u64),
        Timeout,
    }

    fn event(nodes: usize) -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (0..nodes, proptest::collection::vec(0u32..6, 0..3))
                .prop_map(|(i, items)| Event::Reply(i, items)),
            2 => (0..nodes).prop_map(Event::Fail),
            2 => (0u64..40).prop_map(Event::Advance),
            1 => Just(Event::Timeout),
        ]
    }

    fn scenario() -> impl Strategy<Value = (u32, u32, Vec<bool>, Vec<Event>)> {
        (1u32..=5, 0usize..4).prop_flat_map(|(n, extra)| {
            let len = n as usize + extra;
            (
                Just(n),
                1..=n,
                proptest::collection::vec(proptest::bool::weighted(0.75), len),
                proptest::collection::vec(event(len + 2), 0..30),
            )
        })
    }

    proptest! {
        /// Dynamo §4.5 and §5: a get succeeds iff R distinct targets replied before the
        /// deadline, with exactly the merge of the first R replies; read repair then
        /// names exactly the replicas whose reply differs from the merge of all.
        #[test]
        fn get_outcome_and_read_repair_match_the_replies(
            (n, r, healthy, events) in scenario()
        ) {
            let len = healthy.len();
            let list: Vec<NodeId> = (0..len).map(|i| node(&format!("n{i}"))).collect();
            let id = |i: usize| list.get(i).cloned().unwrap_or_else(|| node(&format!("x{i}")));
            let is_healthy = |x: &NodeId| list.iter().position(|y| y == x).is_some_and(|i| healthy[i]);
            let targets: Vec<NodeId> =
                select_targets(&list, n as usize, is_healthy).into_iter().map(|t| t.node).collect();
            let mut get: GetCoordinator<Union> = GetCoordinator::new(
                QuorumConfig::new(n, r, 1).unwrap(), &list, is_healthy, Millis(0), TIMEOUT);
            let r = r as usize;
            prop_assert_eq!(&std::iter::from_fn(|| get.poll_transmit()).collect::<Vec<_>>(), &targets);

            let mut now = Millis(0);
            // First answers of targets before the deadline: Some(state) for a reply.
            let mut answers: BTreeMap<NodeId, Option<Union>> = BTreeMap::new();
            let mut replies: Vec<(NodeId, Union)> = Vec::new();
            let mut failures: Vec<NodeId> = Vec::new();
            // A get that cannot reach R decides at construction.
            let mut decision: Option<(GetOutcome<Union>, usize, usize)> =
                get.poll_outcome().map(|outcome| (outcome, 0, 0));
            for event in events.iter().chain([&Event::Timeout]) {
                match event {
                    Event::Reply(i, items) => {
                        let from = id(*i);
                        let state = Union::of(items);
                        if targets.contains(&from) && !answers.contains_key(&from) && now < DEADLINE {
                            answers.insert(from.clone(), Some(state.clone()));
                            replies.push((from.clone(), state.clone()));
                        }
                        get.handle_reply(&from, state, now);
                    }
                    Event::Fail(i) => {
                        let from = id(*i);
                        if targets.contains(&from) && !answers.contains_key(&from) && now < DEADLINE {
                            answers.insert(from.clone(), None);
                            failures.push(from.clone());
                        }
                        get.handle_failure(&from, "down".to_owned(), now);
                    }
                    Event::Advance(ms) => now = Millis(now.0 + ms),
                    Event::Timeout => {
                        now = now.max(DEADLINE);
                        get.handle_timeout(now);
                    }
                }
                if let Some(outcome) = get.poll_outcome() {
                    prop_assert!(decision.is_none(), "the outcome is reported once");
                    decision = Some((outcome, replies.len(), failures.len()));
                }
                if replies.len() >= r {
                    prop_assert!(
                        matches!(decision, Some((GetOutcome::Success { .. }, _, _))),
                        "success is reported as soon as R replies exist");
                }
                if get.is_finished() {
                    let every_target_answered = targets.iter().all(|t| answers.contains_key(t));
                    prop_assert!(now >= DEADLINE || every_target_answered);
                }
            }

            prop_assert!(get.is_finished());
            prop_assert_eq!(get.poll_timeout(), None);
            let Some((outcome, replies_then, failures_then)) = decision else {
                return Err(TestCaseError::fail("no outcome after the deadline"));
            };
            match outcome {
                GetOutcome::Success { state, replies: count } => {
                    prop_assert_eq!(count, r);
                    prop_assert_eq!(replies_then, r);
                    let mut expected = Union::default();
                    for (_, reply) in &replies[..r] {
                        expected.reconcile(reply);
                    }
                    prop_assert_eq!(state, expected);
                }
                GetOutcome::Failed(error) => {
                    prop_assert!(replies.len() < r, "never fails a get that reached R");
                    prop_assert_eq!(error.got, replies_then);
                    prop_assert_eq!(error.needed, r);
                    let failed: BTreeSet<&NodeId> = failures[..failures_then].iter().collect();
                    let listed: BTreeSet<&NodeId> = error.errors.iter()
                        .filter(|(_, reason)| reason == "down").map(|(x, _)| x).collect();
                    prop_assert_eq!(listed, failed);
                    let timed_out: BTreeSet<&NodeId> = error.errors.iter()
                        .filter(|(_, reason)| reason == "timeout").map(|(x, _)| x).collect();
                    let silent: BTreeSet<&NodeId> = if error.timed_out {
                        targets.iter().filter(|t| !answers.contains_key(*t)).collect()
                    } else {
                        BTreeSet::new()
                    };
                    prop_assert_eq!(timed_out, silent);
                    if !error.timed_out {
                        let unanswered = targets.len() - replies_then - failures_then;
                        prop_assert!(replies_then + unanswered < r, "R was out of reach");
                    }
                }
            }

            let mut merged = Union::default();
            for (_, reply) in &replies {
                merged.reconcile(reply);
            }
            let expected_repair: Vec<(NodeId, Union)> = replies.iter()
                .filter(|(_, reply)| *reply != merged)
                .map(|(x, _)| (x.clone(), merged.clone()))
                .collect();
            let repair = get.poll_read_repair().map(sorted).unwrap_or_default();
            prop_assert_eq!(repair, sorted(expected_repair));
            prop_assert_eq!(get.poll_read_repair(), None);
        }
    }
}
