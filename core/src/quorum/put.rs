//! The put coordinator (Dynamo §4.5, §4.6, §6.1).

use std::collections::VecDeque;
use std::time::Duration;

use super::config::QuorumConfig;
use super::error::{Operation, QuorumError, TIMEOUT_REASON, bounded_reason};
use super::targets::place;
use crate::NodeId;
use crate::time::Millis;

/// One write for the shell to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutSend<S> {
    /// The replica to write to (possibly the coordinator itself: that is the local
    /// write).
    pub to: NodeId,
    /// The home node this write stands in for: the receiver stores it as a hint and
    /// hands it off when that node recovers (Dynamo §4.6). `None` for a home replica.
    pub hint_for: Option<NodeId>,
    /// Whether the receiver must make the write durable before acknowledging, even
    /// if it buffers writes in memory (Dynamo §6.1).
    pub durable: bool,
    /// The state to store.
    pub state: S,
}

/// How a put ended, as far as the client is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// W distinct replicas acknowledged before the deadline.
    Success {
        /// The W replicas whose acknowledgements made the quorum, in arrival order.
        acks: Vec<NodeId>,
    },
    /// The quorum became unreachable or the deadline passed first.
    Failed(QuorumError),
}

/// What a contacted replica has answered so far. Its first answer counts; any later
/// one is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Pending,
    Acked,
    Failed,
}

/// A replica the coordinator decided to write to.
#[derive(Debug, Clone)]
struct Replica {
    node: NodeId,
    hint_for: Option<NodeId>,
    durable: bool,
    answer: Answer,
}

/// Coordinates one put: writes to the first N healthy nodes of the key's extended
/// preference list and decides success once W of them acknowledged (Dynamo §4.5,
/// "sloppy quorum" §4.6).
///
/// The coordinator's own write is not special: when the coordinator is a target,
/// [`poll_transmit`](Self::poll_transmit) yields a send addressed to `self_id`; the
/// shell performs that write on local storage and reports it with
/// [`handle_ack`](Self::handle_ack) or [`handle_failure`](Self::handle_failure) like
/// any remote answer.
///
/// When a replica fails before the deadline, the write goes to the next healthy node
/// of the extended list that has not been written yet, carrying a hint for the home
/// node the failed replica was serving (its own hint, or itself if it was a home
/// node). Each node is written at most once, so a put sends at most as many writes as
/// the list has nodes. Health is judged once, at construction.
///
/// Call order:
/// 1. [`new`](Self::new);
/// 2. drain [`poll_transmit`](Self::poll_transmit) and deliver each write;
/// 3. feed answers with [`handle_ack`](Self::handle_ack) and
///    [`handle_failure`](Self::handle_failure), and the wake-up asked by
///    [`poll_timeout`](Self::poll_timeout) with [`handle_timeout`](Self::handle_timeout);
///    after each input go back to step 2 (a failure may queue a replacement write);
/// 4. [`poll_outcome`](Self::poll_outcome) yields the result once; answer the client.
///    Keep driving until [`is_finished`](Self::is_finished), so replacements for
///    replicas that fail after the quorum still go out and late acknowledgements are
///    recorded; they never change the outcome.
///
/// Every input first applies the deadline: an acknowledgement that arrives at or
/// after it does not count, whether or not `handle_timeout` was called.
#[derive(Debug, Clone)]
pub struct PutCoordinator<S> {
    /// W.
    needed: usize,
    /// The state every replica is sent.
    state: S,
    /// Every replica written to, in the order the writes were decided.
    replicas: Vec<Replica>,
    /// Healthy nodes not written yet, in list order: the replacements for failures.
    spares: VecDeque<NodeId>,
    /// Indices into `replicas` whose write the shell has not yet taken.
    unsent: VecDeque<usize>,
    /// Replicas that acknowledged, in order; one entry each.
    acks: Vec<NodeId>,
    /// Per-node failures learnt before the decision, for the error.
    errors: Vec<(NodeId, String)>,
    deadline: Millis,
    /// Whether the deadline has passed: no more writes, no more counting.
    expired: bool,
    /// Whether the outcome is settled (it may still wait in `outcome` to be polled).
    decided: bool,
    outcome: Option<PutOutcome>,
}

impl<S: Clone> PutCoordinator<S> {
    /// Starts a put of `state` for a key whose extended preference list (every
    /// distinct node clockwise from the key, home replicas first) is `extended`.
    ///
    /// Targets are chosen by [`select_targets`](super::select_targets) with N from
    /// `config`. The deadline is `now + timeout`. With `durable_one`, exactly one
    /// target is asked for a durable write: the coordinator (`self_id`) when it is a
    /// target, else the first target (Dynamo §6.1: "the coordinator chooses one out of
    /// the N replicas to perform a durable write"); if that replica fails, its
    /// replacement inherits the duty. If fewer healthy nodes exist than W, the outcome
    /// is a failure right away.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site in the shell; each argument is an independent input of the request"
    )]
    pub fn new(
        config: QuorumConfig,
        extended: &[NodeId],
        is_healthy: impl FnMut(&NodeId) -> bool,
        self_id: &NodeId,
        state: S,
        now: Millis,
        timeout: Duration,
        durable_one: bool,
    ) -> Self {
        let placement = place(extended, config.replicas(), is_healthy);
        let durable_index = durable_one.then(|| {
            placement
                .targets
                .iter()
                .position(|target| target.node == *self_id)
                .unwrap_or(0)
        });
        let replicas: Vec<Replica> = placement
            .targets
            .into_iter()
            .enumerate()
            .map(|(index, target)| Replica {
                node: target.node,
                hint_for: target.hint_for,
                durable: durable_index == Some(index),
                answer: Answer::Pending,
            })
            .collect();
        let mut put = Self {
            needed: config.write_quorum(),
            state,
            unsent: (0..replicas.len()).collect(),
            replicas,
            spares: placement.spares,
            acks: Vec::new(),
            errors: Vec::new(),
            deadline: now + timeout,
            expired: false,
            decided: false,
            outcome: None,
        };
        put.settle();
        put
    }

    /// The next write to deliver, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<PutSend<S>> {
        let replica = &self.replicas[self.unsent.pop_front()?];
        Some(PutSend {
            to: replica.node.clone(),
            hint_for: replica.hint_for.clone(),
            durable: replica.durable,
            state: self.state.clone(),
        })
    }

    /// `from` stored the write. Ignored unless `from` was written to and has not
    /// answered before.
    pub fn handle_ack(&mut self, from: &NodeId, now: Millis) {
        self.observe(now);
        let Some(index) = self.pending(from) else {
            return;
        };
        self.replicas[index].answer = Answer::Acked;
        // After the deadline the outcome is settled, so this only records the replica.
        self.acks.push(from.clone());
        self.settle();
    }

    /// Writing to `from` failed (`reason` is kept, cut to
    /// [`MAX_REASON_LEN`](super::MAX_REASON_LEN) bytes, for the error). Before the
    /// deadline the write moves to the next spare healthy node, if one is left.
    /// Ignored unless `from` was written to and has not answered before.
    pub fn handle_failure(&mut self, from: &NodeId, reason: String, now: Millis) {
        self.observe(now);
        let Some(index) = self.pending(from) else {
            return;
        };
        self.replicas[index].answer = Answer::Failed;
        if !self.decided {
            self.errors.push((from.clone(), bounded_reason(reason)));
        }
        if !self.expired {
            self.replace(index);
        }
        self.settle();
    }

    /// The wake-up asked by [`poll_timeout`](Self::poll_timeout) happened; `now` may
    /// be later than asked.
    pub fn handle_timeout(&mut self, now: Millis) {
        self.observe(now);
    }

    /// When to call [`handle_timeout`](Self::handle_timeout): the deadline, until the
    /// machine is finished.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        (!self.is_finished()).then_some(self.deadline)
    }

    /// The outcome, returned once, as soon as it is known.
    #[must_use]
    pub fn poll_outcome(&mut self) -> Option<PutOutcome> {
        self.outcome.take()
    }

    /// Whether the machine has nothing left to do: every replica written to has
    /// answered, or the deadline passed. The outcome is settled by then.
    pub fn is_finished(&self) -> bool {
        self.expired
            || self
                .replicas
                .iter()
                .all(|replica| replica.answer != Answer::Pending)
    }

    /// The index of `from` among the replicas still awaiting an answer.
    fn pending(&self, from: &NodeId) -> Option<usize> {
        self.replicas
            .iter()
            .position(|replica| replica.node == *from && replica.answer == Answer::Pending)
    }

    /// Sends the failed replica's write to the next spare, keeping its hint (and its
    /// durability duty) so the home node still gets its copy by handoff.
    fn replace(&mut self, failed: usize) {
        let Some(spare) = self.spares.pop_front() else {
            return;
        };
        let failed = &self.replicas[failed];
        let replacement = Replica {
            node: spare,
            hint_for: Some(failed.hint_for.as_ref().unwrap_or(&failed.node).clone()),
            durable: failed.durable,
            answer: Answer::Pending,
        };
        self.unsent.push_back(self.replicas.len());
        self.replicas.push(replacement);
    }

    /// Applies the deadline: past it, an undecided put fails with every silent
    /// replica listed as timed out, and no more writes go out.
    fn observe(&mut self, now: Millis) {
        if self.expired || now < self.deadline {
            return;
        }
        self.expired = true;
        self.unsent.clear();
        if !self.decided {
            let silent = self
                .replicas
                .iter()
                .filter(|replica| replica.answer == Answer::Pending)
                .map(|replica| (replica.node.clone(), TIMEOUT_REASON.to_owned()));
            self.errors.extend(silent);
            self.fail(true);
        }
    }

    /// Decides the outcome once it is certain: W acknowledgements, or too few
    /// replicas left that could still acknowledge (each pending replica, and each
    /// spare that a failure could bring in).
    fn settle(&mut self) {
        if self.decided {
            return;
        }
        if self.acks.len() >= self.needed {
            self.decided = true;
            self.outcome = Some(PutOutcome::Success {
                acks: self.acks.clone(),
            });
            return;
        }
        let pending = self
            .replicas
            .iter()
            .filter(|replica| replica.answer == Answer::Pending)
            .count();
        if self.acks.len() + pending + self.spares.len() < self.needed {
            self.fail(false);
        }
    }

    fn fail(&mut self, timed_out: bool) {
        self.decided = true;
        self.outcome = Some(PutOutcome::Failed(QuorumError {
            op: Operation::Write,
            needed: self.needed,
            got: self.acks.len(),
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
    use crate::quorum::testing::{Union, node, nodes};
    use crate::quorum::{Target, select_targets};

    const TIMEOUT: Duration = Duration::from_millis(100);
    const DEADLINE: Millis = Millis(100);

    fn config(n: u32, r: u32, w: u32) -> QuorumConfig {
        QuorumConfig::new(n, r, w).unwrap()
    }

    fn start(
        w: u32,
        list: &[&str],
        down: &[&str],
        self_id: &str,
        durable_one: bool,
    ) -> PutCoordinator<Union> {
        let down = nodes(down);
        PutCoordinator::new(
            config(3, 1, w),
            &nodes(list),
            |id| !down.contains(id),
            &node(self_id),
            Union::of(&[7]),
            Millis(0),
            TIMEOUT,
            durable_one,
        )
    }

    fn drain(put: &mut PutCoordinator<Union>) -> Vec<PutSend<Union>> {
        std::iter::from_fn(|| put.poll_transmit()).collect()
    }

    fn send(to: &str, hint_for: Option<&str>) -> (NodeId, Option<NodeId>) {
        (node(to), hint_for.map(node))
    }

    fn addresses(sends: &[PutSend<Union>]) -> Vec<(NodeId, Option<NodeId>)> {
        sends
            .iter()
            .map(|s| (s.to.clone(), s.hint_for.clone()))
            .collect()
    }

    #[test]
    fn succeeds_once_w_distinct_replicas_acknowledge() {
        let mut put = start(2, &["a", "b", "c", "d"], &[], "a", false);
        let sends = drain(&mut put);
        assert_eq!(
            addresses(&sends),
            vec![send("a", None), send("b", None), send("c", None)]
        );
        assert!(
            sends
                .iter()
                .all(|s| s.state == Union::of(&[7]) && !s.durable)
        );
        put.handle_ack(&node("a"), Millis(1));
        put.handle_ack(&node("a"), Millis(2)); // a duplicate counts once
        put.handle_ack(&node("d"), Millis(3)); // never written to: ignored
        put.handle_ack(&node("zz"), Millis(3)); // a stranger: ignored
        assert_eq!(put.poll_outcome(), None);
        put.handle_ack(&node("c"), Millis(4));
        assert_eq!(
            put.poll_outcome(),
            Some(PutOutcome::Success {
                acks: nodes(&["a", "c"])
            })
        );
        assert_eq!(put.poll_outcome(), None, "the outcome is reported once");
        assert!(!put.is_finished(), "b has not answered yet");
        assert_eq!(put.poll_timeout(), Some(DEADLINE));
    }

    #[test]
    fn late_acknowledgements_are_accepted_without_changing_the_outcome() {
        let mut put = start(1, &["a", "b", "c"], &[], "a", false);
        let _ = drain(&mut put);
        put.handle_ack(&node("b"), Millis(1));
        let outcome = put.poll_outcome();
        assert_eq!(
            outcome,
            Some(PutOutcome::Success {
                acks: nodes(&["b"])
            })
        );
        put.handle_failure(&node("a"), "disk full".to_owned(), Millis(2));
        put.handle_ack(&node("c"), Millis(3));
        assert_eq!(put.poll_outcome(), None);
        assert!(put.is_finished());
        assert_eq!(put.poll_timeout(), None);
    }

    #[test]
    fn sloppy_quorum_writes_to_the_next_node_with_a_hint() {
        // Dynamo §4.6: "if node A is temporarily down or unreachable during a write
        // operation then a replica that would normally have lived on A will now be
        // sent to node D ... [with] a hint in its metadata". Home node n2 is down.
        let mut put = start(
            2,
            &["n1", "n2", "n3", "n4", "n5", "n6"],
            &["n2"],
            "n1",
            false,
        );
        assert_eq!(
            addresses(&drain(&mut put)),
            vec![send("n1", None), send("n3", None), send("n4", Some("n2"))]
        );
        // A home replica fails mid-put: its copy goes to the next node, hinted for it.
        put.handle_failure(&node("n3"), "connection refused".to_owned(), Millis(1));
        assert_eq!(addresses(&drain(&mut put)), vec![send("n5", Some("n3"))]);
        // A stand-in fails: its replacement keeps the original hint.
        put.handle_failure(&node("n4"), "reset".to_owned(), Millis(2));
        assert_eq!(addresses(&drain(&mut put)), vec![send("n6", Some("n2"))]);
        put.handle_ack(&node("n5"), Millis(3));
        put.handle_ack(&node("n6"), Millis(4));
        assert_eq!(
            put.poll_outcome(),
            Some(PutOutcome::Success {
                acks: nodes(&["n5", "n6"])
            })
        );
    }

    #[test]
    fn unhealthy_nodes_are_never_written() {
        let mut put = start(1, &["a", "b", "c", "d", "e"], &["b", "d"], "a", false);
        assert_eq!(
            addresses(&drain(&mut put)),
            vec![send("a", None), send("c", None), send("e", Some("b"))]
        );
        put.handle_failure(&node("a"), "gone".to_owned(), Millis(1));
        assert!(drain(&mut put).is_empty(), "no healthy spare is left");
    }

    #[test]
    fn fails_as_soon_as_the_quorum_is_out_of_reach() {
        let mut put = start(3, &["a", "b", "c"], &[], "a", false);
        let _ = drain(&mut put);
        put.handle_ack(&node("a"), Millis(1));
        put.handle_failure(&node("b"), "connection refused".to_owned(), Millis(2));
        let Some(PutOutcome::Failed(error)) = put.poll_outcome() else {
            panic!("expected a failure");
        };
        assert_eq!(
            error,
            QuorumError {
                op: Operation::Write,
                needed: 3,
                got: 1,
                errors: vec![(node("b"), "connection refused".to_owned())],
                timed_out: false,
            }
        );
        assert!(!put.is_finished(), "c may still answer");
    }

    #[test]
    fn fails_at_once_with_fewer_healthy_nodes_than_w() {
        let mut put = start(2, &["a", "b", "c"], &["b", "c"], "a", false);
        assert_eq!(addresses(&drain(&mut put)), vec![send("a", None)]);
        assert!(matches!(
            put.poll_outcome(),
            Some(PutOutcome::Failed(QuorumError {
                needed: 2,
                got: 0,
                timed_out: false,
                ..
            }))
        ));
        let mut empty = start(1, &[], &[], "a", false);
        assert!(drain(&mut empty).is_empty());
        assert!(matches!(empty.poll_outcome(), Some(PutOutcome::Failed(_))));
        assert!(empty.is_finished());
        assert_eq!(empty.poll_timeout(), None);
    }

    #[test]
    fn deadline_fails_an_undecided_put_naming_the_silent_replicas() {
        let mut put = start(2, &["n1", "n2", "n3"], &[], "n1", false);
        let _ = drain(&mut put);
        assert_eq!(put.poll_timeout(), Some(DEADLINE));
        put.handle_ack(&node("n1"), Millis(10));
        put.handle_failure(&node("n3"), "connection refused".to_owned(), Millis(20));
        put.handle_timeout(Millis(99));
        assert_eq!(put.poll_outcome(), None, "the deadline has not passed yet");
        put.handle_timeout(DEADLINE);
        let Some(PutOutcome::Failed(error)) = put.poll_outcome() else {
            panic!("expected a timeout");
        };
        assert!(error.timed_out);
        assert_eq!(
            error.to_string(),
            "write quorum not reached: needed 2 acknowledgements, got 1 \
             (n3: connection refused, n2: timeout)"
        );
        assert!(put.is_finished());
        assert_eq!(put.poll_timeout(), None);
        put.handle_ack(&node("n2"), Millis(150));
        assert_eq!(
            put.poll_outcome(),
            None,
            "late acks do not change the outcome"
        );
    }

    #[test]
    fn an_acknowledgement_at_the_deadline_is_too_late_even_without_handle_timeout() {
        let mut put = start(1, &["a", "b", "c"], &[], "a", false);
        let _ = drain(&mut put);
        put.handle_ack(&node("a"), DEADLINE);
        assert!(matches!(
            put.poll_outcome(),
            Some(PutOutcome::Failed(QuorumError {
                timed_out: true,
                got: 0,
                ..
            }))
        ));
    }

    #[test]
    fn no_replacement_writes_after_the_deadline() {
        let mut put = start(3, &["a", "b", "c", "d"], &[], "a", false);
        let _ = drain(&mut put);
        put.handle_failure(&node("a"), "gone".to_owned(), Millis(200));
        assert!(drain(&mut put).is_empty());
    }

    #[test]
    fn durable_write_goes_to_exactly_one_replica_preferring_the_coordinator() {
        // Dynamo §6.1: "the coordinator chooses one out of the N replicas to perform a
        // durable write".
        let durable = |put: &mut PutCoordinator<Union>| -> Vec<NodeId> {
            drain(put)
                .into_iter()
                .filter(|s| s.durable)
                .map(|s| s.to)
                .collect()
        };
        let list = ["a", "b", "c", "d"];
        assert_eq!(durable(&mut start(2, &list, &[], "b", true)), nodes(&["b"]));
        assert_eq!(
            durable(&mut start(2, &list, &[], "zz", true)),
            nodes(&["a"])
        );
        // The coordinator is on the list but down: not a target, so the first one.
        assert_eq!(
            durable(&mut start(2, &list, &["b"], "b", true)),
            nodes(&["a"])
        );
        assert!(durable(&mut start(2, &list, &[], "b", false)).is_empty());
    }

    #[test]
    fn durable_duty_moves_to_the_replacement_of_a_failed_replica() {
        let mut put = start(2, &["a", "b", "c", "d"], &[], "b", true);
        let _ = drain(&mut put);
        put.handle_failure(&node("b"), "gone".to_owned(), Millis(1));
        let retry = drain(&mut put);
        assert_eq!(addresses(&retry), vec![send("d", Some("b"))]);
        assert!(retry[0].durable);
    }

    #[derive(Debug, Clone)]
    enum Event {
        /// Node index: below the list length a listed node, above it a stranger.
        Ack(usize),
        Fail(usize, u8),
        Advance(u64),
        Timeout,
    }

    fn event(nodes: usize) -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (0..nodes).prop_map(Event::Ack),
            2 => (0..nodes, any::<u8>()).prop_map(|(i, r)| Event::Fail(i, r)),
            2 => (0u64..40).prop_map(Event::Advance),
            1 => Just(Event::Timeout),
        ]
    }

    fn scenario() -> impl Strategy<Value = (u32, u32, Vec<bool>, usize, bool, Vec<Event>)> {
        (1u32..=5, 0usize..5).prop_flat_map(|(n, extra)| {
            let len = n as usize + extra;
            (
                Just(n),
                1..=n,
                proptest::collection::vec(proptest::bool::weighted(0.75), len),
                0..len + 1,
                any::<bool>(),
                proptest::collection::vec(event(len + 2), 0..40),
            )
        })
    }

    /// What the test knows independently of the machine's bookkeeping.
    struct Harness {
        put: PutCoordinator<Union>,
        list: Vec<NodeId>,
        healthy: Vec<bool>,
        w: usize,
        now: Millis,
        /// Every node written to, in order, with its hint and durability.
        sent: Vec<(NodeId, Option<NodeId>, bool)>,
        /// The first answer of each written node (true for an ack) and its time.
        first_answer: BTreeMap<NodeId, (bool, Millis)>,
        /// Nodes whose first answer was an ack before the deadline.
        valid_acks: Vec<NodeId>,
        /// Failures reported by the shell, in order.
        failures: Vec<(NodeId, String)>,
        decision: Option<Decision>,
    }

    /// The outcome and what the model knew when it was reported.
    struct Decision {
        outcome: PutOutcome,
        valid_acks: usize,
        failures: usize,
        silent: Vec<NodeId>,
        unwritten_healthy: usize,
    }

    impl Harness {
        fn is_healthy(&self, id: &NodeId) -> bool {
            self.list
                .iter()
                .position(|x| x == id)
                .is_some_and(|i| self.healthy[i])
        }

        fn is_first_answer(&self, from: &NodeId) -> bool {
            self.sent.iter().any(|s| s.0 == *from) && !self.first_answer.contains_key(from)
        }

        /// Takes the machine's outputs and checks them against the model.
        fn step(&mut self) -> Result<(), TestCaseError> {
            while let Some(send) = self.put.poll_transmit() {
                prop_assert!(
                    self.is_healthy(&send.to),
                    "only healthy listed nodes are written"
                );
                prop_assert!(
                    self.sent.iter().all(|s| s.0 != send.to),
                    "a node is written once"
                );
                prop_assert!(self.now < DEADLINE, "no writes after the deadline");
                self.sent.push((send.to, send.hint_for, send.durable));
            }
            if let Some(outcome) = self.put.poll_outcome() {
                prop_assert!(self.decision.is_none(), "the outcome is reported once");
                // Silent: no answer before the deadline.
                let silent = self
                    .sent
                    .iter()
                    .filter(|s| {
                        self.first_answer
                            .get(&s.0)
                            .is_none_or(|&(_, at)| at >= DEADLINE)
                    })
                    .map(|s| s.0.clone())
                    .collect();
                let unwritten_healthy = self
                    .list
                    .iter()
                    .filter(|x| self.is_healthy(x) && self.sent.iter().all(|s| s.0 != **x))
                    .count();
                self.decision = Some(Decision {
                    outcome,
                    valid_acks: self.valid_acks.len(),
                    failures: self.failures.len(),
                    silent,
                    unwritten_healthy,
                });
            }
            if self.valid_acks.len() >= self.w {
                let decided = self.decision.as_ref().map(|d| &d.outcome);
                prop_assert!(
                    matches!(decided, Some(PutOutcome::Success { .. })),
                    "success is reported as soon as W valid acknowledgements exist"
                );
            }
            Ok(())
        }

        fn apply(&mut self, event: &Event) -> Result<(), TestCaseError> {
            let stranger = |i: usize| node(&format!("x{i}"));
            match *event {
                Event::Ack(i) => {
                    let from = self.list.get(i).cloned().unwrap_or_else(|| stranger(i));
                    if self.is_first_answer(&from) {
                        self.first_answer.insert(from.clone(), (true, self.now));
                        if self.now < DEADLINE {
                            self.valid_acks.push(from.clone());
                        }
                    }
                    self.put.handle_ack(&from, self.now);
                }
                Event::Fail(i, code) => {
                    let from = self.list.get(i).cloned().unwrap_or_else(|| stranger(i));
                    let reason = format!("e{code}");
                    let first = self.is_first_answer(&from);
                    if first {
                        self.first_answer.insert(from.clone(), (false, self.now));
                        if self.now < DEADLINE {
                            self.failures.push((from.clone(), reason.clone()));
                        }
                    }
                    let before = self.sent.len();
                    self.put.handle_failure(&from, reason, self.now);
                    self.step()?;
                    let retries = self.sent[before..].to_vec();
                    prop_assert!(retries.len() <= usize::from(first && self.now < DEADLINE));
                    if let Some(failed) = self.sent.iter().find(|s| s.0 == from).cloned() {
                        let home = failed.1.clone().unwrap_or(failed.0.clone());
                        for retry in retries {
                            prop_assert_eq!(
                                retry.1,
                                Some(home.clone()),
                                "a replacement keeps the hint"
                            );
                            prop_assert_eq!(
                                retry.2,
                                failed.2,
                                "a replacement keeps the durable duty"
                            );
                        }
                    }
                }
                Event::Advance(ms) => self.now = Millis(self.now.0 + ms),
                Event::Timeout => {
                    self.now = self.now.max(DEADLINE);
                    self.put.handle_timeout(self.now);
                }
            }
            self.step()
        }
    }

    proptest! {
        /// Dynamo §4.5: a put succeeds iff W distinct written replicas acknowledged
        /// before the deadline, never with fewer; a failure explains itself.
        #[test]
        fn put_outcome_matches_the_acknowledgements(
            (n, w, healthy, self_index, durable_one, events) in scenario()
        ) {
            let len = healthy.len();
            let list: Vec<NodeId> = (0..len).map(|i| node(&format!("n{i}"))).collect();
            let self_id = list.get(self_index).cloned().unwrap_or_else(|| node("self"));
            let is_healthy = |x: &NodeId| list.iter().position(|y| y == x).is_some_and(|i| healthy[i]);
            let expected_targets = select_targets(&list, n as usize, is_healthy);
            let put = PutCoordinator::new(
                config(n, 1, w), &list, is_healthy, &self_id, Union::of(&[1]),
                Millis(0), TIMEOUT, durable_one,
            );
            let mut harness = Harness {
                put, list: list.clone(), healthy: healthy.clone(), w: w as usize, now: Millis(0),
                sent: Vec::new(), first_answer: BTreeMap::new(), valid_acks: Vec::new(),
                failures: Vec::new(), decision: None,
            };
            harness.step()?;

            let initial: Vec<Target> = harness.sent.iter()
                .map(|s| Target { node: s.0.clone(), hint_for: s.1.clone() }).collect();
            prop_assert_eq!(&initial, &expected_targets, "first writes go to the sloppy quorum");
            let durable: Vec<&NodeId> = harness.sent.iter().filter(|s| s.2).map(|s| &s.0).collect();
            if durable_one && !initial.is_empty() {
                let chosen = if initial.iter().any(|t| t.node == self_id) { &self_id } else { &initial[0].node };
                prop_assert_eq!(durable, vec![chosen], "exactly one durable write (Dynamo §6.1)");
            } else {
                prop_assert!(durable.is_empty());
            }

            for event in events.iter().chain([&Event::Timeout]) {
                harness.apply(event)?;
            }

            let w = w as usize;
            prop_assert!(harness.put.is_finished());
            prop_assert_eq!(harness.put.poll_timeout(), None);
            prop_assert!(harness.sent.len() <= len, "at most one write per listed node");
            let Some(decision) = harness.decision else {
                return Err(TestCaseError::fail("no outcome after the deadline"));
            };
            match decision.outcome {
                PutOutcome::Success { acks } => {
                    prop_assert_eq!(&acks[..], &harness.valid_acks[..w]);
                }
                PutOutcome::Failed(error) => {
                    prop_assert!(harness.valid_acks.len() < w, "never fails a put that reached W");
                    prop_assert_eq!(error.op, Operation::Write);
                    prop_assert_eq!(error.needed, w);
                    prop_assert_eq!(error.got, decision.valid_acks);
                    let mut expected_errors = harness.failures[..decision.failures].to_vec();
                    if error.timed_out {
                        expected_errors.extend(
                            decision.silent.into_iter().map(|x| (x, "timeout".to_owned())));
                    } else {
                        // Out of reach for real: even if every silent replica and every
                        // unwritten healthy node acknowledged, W would not be met.
                        prop_assert!(error.got + decision.silent.len() + decision.unwritten_healthy < w);
                    }
                    let errors: BTreeSet<_> = error.errors.iter().collect();
                    let expected: BTreeSet<_> = expected_errors.iter().collect();
                    prop_assert_eq!(errors, expected);
                    prop_assert_eq!(error.errors.len(), expected_errors.len());
                }
            }
        }
    }
}
