//! Random histories of puts, reads, replica syncs and data loss, checked against a
//! reference model of causality (Dynamo §4.4: a version is superseded exactly when a
//! write was made with a context that had seen it).
//!
//! The model tracks, per replica, the set of writes in its causal history and, per
//! write, the writes its context covered. A replica must keep exactly the writes of
//! its history that no write of its history superseded: never a dominated version,
//! never losing a concurrent one.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::context::Context;
use super::*;
use crate::NodeId;
use crate::time::Millis;

const REPLICAS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A client writes through `replica` (its coordinator) with the context of an
    /// earlier read or put (index taken modulo the contexts so far), or blind. The
    /// coordinator's wall clock runs `lag` ms behind (skew between nodes, which
    /// changes which clock entries look oldest to truncation).
    Put {
        replica: usize,
        read: Option<usize>,
        delete: bool,
        lag: u64,
    },
    /// A client reads from two replicas; the coordinator merges their states.
    Read { first: usize, second: usize },
    /// Replica `to` merges the state of `from` (replication, read repair, hinted
    /// handoff, anti-entropy all do this).
    Sync { from: usize, to: usize },
    /// `replica` loses its data and restarts with a new incarnation.
    Wipe { replica: usize },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            0..REPLICAS,
            proptest::option::weighted(0.8, any::<usize>()),
            proptest::bool::weighted(0.2),
            prop_oneof![3 => Just(0u64), 1 => 1..20u64],
        )
            .prop_map(|(replica, read, delete, lag)| Op::Put { replica, read, delete, lag }),
        3 => (0..REPLICAS, 0..REPLICAS).prop_map(|(first, second)| Op::Read { first, second }),
        3 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
        1 => (0..REPLICAS).prop_map(|replica| Op::Wipe { replica }),
    ]
}

fn arb_history() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(arb_op(), 1..40)
}

type Writes = BTreeSet<usize>;

struct Harness {
    limits: SiblingLimits,
    states: Vec<SiblingSet>,
    incarnations: Vec<u64>,
    /// Model: the writes in each replica's causal history.
    histories: Vec<Writes>,
    /// Model: for each write, the writes its context had seen (it supersedes them).
    supersedes: Vec<Writes>,
    /// Which write each dot names; a dot issued twice fails the test.
    writes_by_dot: BTreeMap<Dot, usize>,
    /// Each write's dot, by write.
    dots: Vec<Dot>,
    /// Contexts returned by reads and puts, with the writes each had seen: a put's
    /// context has seen the context it was made with and the write itself (see
    /// [`SiblingSet::put_context`]), no more.
    reads: Vec<(Context, Writes)>,
    /// Whether clocks are large enough never to be truncated, so that states must
    /// match the model exactly; otherwise they may keep extra siblings.
    exact: bool,
    now: u64,
}

impl Harness {
    fn new(max_clock_entries: usize) -> Self {
        Self {
            limits: SiblingLimits::new(MAX_SIBLINGS_LIMIT, MAX_SIBLINGS_LIMIT, max_clock_entries)
                .unwrap(),
            states: vec![SiblingSet::new(); REPLICAS],
            incarnations: vec![1; REPLICAS],
            histories: vec![Writes::new(); REPLICAS],
            supersedes: Vec::new(),
            writes_by_dot: BTreeMap::new(),
            dots: Vec::new(),
            reads: Vec::new(),
            exact: max_clock_entries >= 1000,
            now: 0,
        }
    }

    fn run(max_clock_entries: usize, ops: &[Op]) -> Self {
        let mut harness = Self::new(max_clock_entries);
        for op in ops {
            harness.apply(op);
        }
        harness
    }

    fn actor(&self, replica: usize) -> Actor {
        Actor::new(
            NodeId::new(format!("r{replica}")).unwrap(),
            self.incarnations[replica],
        )
    }

    fn apply(&mut self, op: &Op) {
        self.now += 1;
        match *op {
            Op::Put {
                replica,
                read,
                delete,
                lag,
            } => {
                let (context, seen) = match read {
                    Some(i) if !self.reads.is_empty() => self.reads[i % self.reads.len()].clone(),
                    _ => (Context::new(), Writes::new()),
                };
                let write = self.supersedes.len();
                let value = if delete {
                    Value::Tombstone
                } else {
                    Value::data(write.to_le_bytes().to_vec())
                };
                // A write the context knows only as a single dot (a put's returned
                // context) is superseded only where the coordinator knows that dot: its
                // state's clock is the only record that a version is gone, and a dot
                // outside it cannot enter it without claiming the actor's earlier dots.
                // Elsewhere the version stays a sibling: the writer sees it on its next
                // read (an extra sibling, never a lost write).
                let coordinator_clock = self.states[replica].clock().clone();
                let superseded: Writes = seen
                    .iter()
                    .copied()
                    .filter(|w| {
                        let dot = &self.dots[*w];
                        !context.dots().contains(dot) || coordinator_clock.covers(dot)
                    })
                    .collect();
                let actor = self.actor(replica);
                let out = self.states[replica]
                    .put(
                        &context,
                        value,
                        &actor,
                        Millis(self.now.saturating_sub(lag)),
                        &self.limits,
                    )
                    .unwrap();
                assert!(
                    self.writes_by_dot.insert(out.dot.clone(), write).is_none(),
                    "a dot was issued twice"
                );
                // Only what the coordinator's clock now covers joins its history.
                self.histories[replica].extend(superseded.iter().copied());
                self.histories[replica].insert(write);
                self.dots.push(out.dot.clone());
                let returned = self.states[replica].put_context(&context, &out.dot);
                let mut seen_by_writer = seen;
                seen_by_writer.insert(write);
                self.reads.push((returned, seen_by_writer));
                self.supersedes.push(superseded);
            }
            Op::Read { first, second } => {
                let mut read = self.states[first].clone();
                read.merge(&self.states[second]);
                let seen = &self.histories[first] | &self.histories[second];
                self.check(&read, &seen);
                self.reads.push((read.context(), seen));
            }
            Op::Sync { from, to } => {
                let incoming = self.states[from].clone();
                self.states[to].merge(&incoming);
                let seen = self.histories[from].clone();
                self.histories[to].extend(seen);
            }
            Op::Wipe { replica } => {
                self.states[replica] = SiblingSet::new();
                self.incarnations[replica] += 1;
                self.histories[replica].clear();
            }
        }
    }

    /// The writes of `history` that no write of `history` superseded.
    fn expected(&self, history: &Writes) -> Writes {
        history
            .iter()
            .copied()
            .filter(|w| !history.iter().any(|o| self.supersedes[*o].contains(w)))
            .collect()
    }

    fn survivors(&self, state: &SiblingSet) -> Writes {
        state
            .siblings()
            .iter()
            .map(|s| self.writes_by_dot[&s.dot])
            .collect()
    }

    /// Checks a state against the model of its history. Without truncation it keeps
    /// exactly the unsuperseded writes. With truncation (Dynamo §4.4: it can only
    /// make versions look concurrent) it keeps at least those, and only real writes.
    fn check(&self, state: &SiblingSet, history: &Writes) {
        let kept = self.survivors(state);
        let expected = self.expected(history);
        if self.exact {
            assert_eq!(kept, expected);
        } else {
            assert!(
                kept.is_superset(&expected),
                "{kept:?} lost some of {expected:?}"
            );
            assert!(kept.is_subset(history), "{kept:?} not all in {history:?}");
        }
    }

    fn check_all(&self) {
        for (state, history) in self.states.iter().zip(&self.histories) {
            self.check(state, history);
        }
    }

    fn merged_in(&self, order: &[usize]) -> SiblingSet {
        let mut all = SiblingSet::new();
        for &i in order {
            all.merge(&self.states[i]);
        }
        all
    }
}

fn merged(a: &SiblingSet, b: &SiblingSet) -> SiblingSet {
    let mut m = a.clone();
    m.merge(b);
    m
}

proptest! {
    #[test]
    fn replicas_keep_exactly_the_unsuperseded_writes(
        ops in arb_history(),
        order in Just((0..REPLICAS).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        // Clocks large enough never to be truncated: the result must be exact.
        let mut harness = Harness::new(1000);
        for op in &ops {
            harness.apply(op);
            harness.check_all();
        }
        let all = harness.merged_in(&order);
        let everything: Writes = harness.histories.iter().flatten().copied().collect();
        prop_assert_eq!(harness.survivors(&all), harness.expected(&everything));
        prop_assert_eq!(&all, &harness.merged_in(&[0, 1, 2]));
    }

    #[test]
    fn truncated_clocks_only_add_siblings(ops in arb_history()) {
        // Dynamo §4.4: truncation can only make versions look concurrent. With clocks
        // cut to one entry (plus protected ones), replicas keep every unsuperseded write.
        let mut harness = Harness::new(1);
        for op in &ops {
            harness.apply(op);
            harness.check_all();
        }
        let all = harness.merged_in(&[0, 1, 2]);
        let everything: Writes = harness.histories.iter().flatten().copied().collect();
        harness.check(&all, &everything);
    }

    #[test]
    fn merge_is_commutative_associative_idempotent(ops in arb_history()) {
        let harness = Harness::run(1000, &ops);
        let [a, b, c] = [&harness.states[0], &harness.states[1], &harness.states[2]];
        prop_assert_eq!(merged(a, b), merged(b, a));
        prop_assert_eq!(merged(a, b).digest(), merged(b, a).digest());
        prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
        prop_assert_eq!(&merged(a, a), a);
        // Merging a state that is already included changes nothing.
        let ab = merged(a, b);
        prop_assert_eq!(merged(&ab, b), ab.clone());
        // The merged clock descends from both sides (a <= merge(a, b)).
        prop_assert!(ab.clock().descends(a.clock()) && ab.clock().descends(b.clock()));
    }

    #[test]
    fn stored_states_round_trip(ops in arb_history()) {
        let harness = Harness::run(2, &ops);
        for state in &harness.states {
            let bytes = state.to_bytes();
            prop_assert_eq!(&SiblingSet::from_bytes(&bytes).unwrap(), state);
        }
    }

    #[test]
    fn contexts_round_trip_through_bytes(ops in arb_history()) {
        let harness = Harness::run(1000, &ops);
        for (context, _) in &harness.reads {
            let back = context::decode(&context::encode(context)).unwrap();
            prop_assert!(back.descends(context) && context.descends(&back));
        }
    }
}
