//! Vector clocks over actors, and the dots that name single write events.
//!
//! Dynamo §4.4: "A vector clock is effectively a list of (node, counter) pairs." Our
//! entries are keyed by [`Actor`] (node plus storage incarnation) rather than by node,
//! and each entry carries the wall-clock time of its last update, which only
//! [`VectorClock::truncate`] reads (the paper's "timestamp ... of the last time the node
//! updated the data item"). No I/O.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::time::Millis;

/// The owner of a vector clock entry: one node in one incarnation of its storage.
///
/// A node picks a new incarnation whenever it may no longer hold every dot it issued
/// for some key: at a start with storage it cannot prove complete (a fresh or wiped
/// data directory, or any unclean stop), and at run time before it removes a key's
/// state that mentions its current actor (stray sweep, transfer clean-up, tombstone
/// purge; see `crate::identity`). Counters are then issued under a new actor, so a
/// node never issues a dot whose clock entry claims dots it lost: that would make a
/// new write look like an old, already superseded one, or supersede a write it never
/// saw, and silently drop one of them (Riak's KV679).
///
/// Ordered by `(node, incarnation)`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The node that issues the counters.
    pub node: NodeId,
    /// Which life of the node's storage issued them.
    pub incarnation: u64,
}

impl Actor {
    /// The actor for `node` in its `incarnation`.
    pub fn new(node: NodeId, incarnation: u64) -> Self {
        Self { node, incarnation }
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)
    }
}

/// One write event: the `counter`-th write coordinated by `actor`.
///
/// Counters start at 1, so a dot's counter is never zero.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// Who coordinated the write.
    pub actor: Actor,
    /// The actor's counter for it.
    pub counter: u64,
}

/// One actor's entry in a [`VectorClock`].
///
/// Ordered by `(counter, timestamp)`: merging two entries keeps the larger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockEntry {
    /// How many writes of this actor the clock has seen (always at least 1).
    pub counter: u64,
    /// Wall-clock time of the entry's last update; only truncation reads it.
    pub timestamp: Millis,
}

/// How two clocks relate causally (Dynamo §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Causality {
    /// `self` happened before `other`: `other` descends from it.
    Before,
    /// `self` descends from `other`.
    After,
    /// Same counters for every actor.
    Equal,
    /// Neither descends from the other: the versions conflict.
    Concurrent,
}

/// A vector clock: for each actor, how many of its writes are known, and when the
/// entry last changed.
///
/// Stored as a vector sorted by actor, not a map: clocks are small (Dynamo §4.4 keeps
/// about ten entries), so linear merge-joins over contiguous memory beat tree walks,
/// and a sorted vector has one canonical form for equality, encoding and hashing.
///
/// Every entry has a counter of at least 1 (an absent actor means 0). `==` compares
/// entries including timestamps; [`VectorClock::compare`] compares causality only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct VectorClock {
    entries: Vec<(Actor, ClockEntry)>,
}

impl VectorClock {
    /// The empty clock: no writes known (a blind write's context).
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock from entries the caller has already checked to be sorted by actor,
    /// unique, and with non-zero counters (the decoders do).
    pub(crate) fn from_sorted_entries(entries: Vec<(Actor, ClockEntry)>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        debug_assert!(entries.iter().all(|(_, e)| e.counter > 0));
        Self { entries }
    }

    /// Number of actors with an entry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no actor has an entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in actor order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Actor, &ClockEntry)> + '_ {
        self.entries.iter().map(|(actor, entry)| (actor, entry))
    }

    /// The entry of `actor`, if the clock has one.
    pub fn entry(&self, actor: &Actor) -> Option<ClockEntry> {
        self.position(actor).ok().map(|i| self.entries[i].1)
    }

    /// How many writes of `actor` the clock has seen (0 without an entry).
    pub fn counter(&self, actor: &Actor) -> u64 {
        self.entry(actor).map_or(0, |e| e.counter)
    }

    /// Whether the clock has seen the write `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.counter(&dot.actor) >= dot.counter
    }

    /// Whether `self` has seen everything `other` has (`self` is After or Equal).
    pub fn descends(&self, other: &VectorClock) -> bool {
        matches!(self.compare(other), Causality::After | Causality::Equal)
    }

    /// The causal relation of `self` to `other`, from counters only (timestamps are
    /// ignored).
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let (mut self_ahead, mut other_ahead) = (false, false);
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.entries, &other.entries);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                Ordering::Less => {
                    self_ahead = true;
                    i += 1;
                }
                Ordering::Greater => {
                    other_ahead = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match a[i].1.counter.cmp(&b[j].1.counter) {
                        Ordering::Greater => self_ahead = true,
                        Ordering::Less => other_ahead = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
            if self_ahead && other_ahead {
                return Causality::Concurrent;
            }
        }
        self_ahead |= i < a.len();
        other_ahead |= j < b.len();
        match (self_ahead, other_ahead) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Makes `self` the least clock that descends from both: the pointwise maximum
    /// counter, with the timestamp of the entry holding the larger counter (the later
    /// timestamp when counters tie). Commutative, associative and idempotent.
    pub fn merge(&mut self, other: &VectorClock) {
        if self.has_every_actor_of(other) {
            // Common case (a replica merging a clock it mostly knows): no allocation.
            let mut i = 0;
            for (actor, theirs) in &other.entries {
                while self.entries[i].0 < *actor {
                    i += 1;
                }
                let mine = &mut self.entries[i].1;
                *mine = (*mine).max(*theirs);
            }
            return;
        }
        let mine = std::mem::take(&mut self.entries);
        let mut merged = Vec::with_capacity(mine.len() + other.entries.len());
        let mut mine = mine.into_iter().peekable();
        let mut theirs = other.entries.iter().peekable();
        loop {
            let order = match (mine.peek(), theirs.peek()) {
                (Some((a, _)), Some((b, _))) => a.cmp(b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => break,
            };
            match order {
                Ordering::Less => merged.extend(mine.next()),
                Ordering::Greater => merged.extend(theirs.next().cloned()),
                Ordering::Equal => {
                    if let (Some((actor, a)), Some((_, b))) = (mine.next(), theirs.next()) {
                        merged.push((actor, a.max(*b)));
                    }
                }
            }
        }
        self.entries = merged;
    }

    /// Records a new write by `actor` at wall-clock time `now` and returns its dot.
    ///
    /// # Panics
    /// If the actor's counter is already `u64::MAX`, which increments cannot reach;
    /// only a clock built from foreign input can hold it, and such clocks are not
    /// to be incremented ([`super::SiblingSet::put`] reports the case as an error).
    pub fn increment(&mut self, actor: &Actor, now: Millis) -> Dot {
        let counter = self
            .counter(actor)
            .checked_add(1)
            .expect("vector clock counter overflow");
        self.set(
            actor,
            ClockEntry {
                counter,
                timestamp: now,
            },
        );
        Dot {
            actor: actor.clone(),
            counter,
        }
    }

    /// Sets the entry of `actor`, inserting it in order if absent.
    pub(crate) fn set(&mut self, actor: &Actor, entry: ClockEntry) {
        debug_assert!(entry.counter > 0);
        match self.position(actor) {
            Ok(i) => self.entries[i].1 = entry,
            Err(i) => self.entries.insert(i, (actor.clone(), entry)),
        }
    }

    /// Removes entries, oldest timestamp first (ties broken by actor order), until at
    /// most `max_entries` remain, but never an entry whose actor `keep` accepts; stops
    /// early if only kept entries are left. Returns how many entries were removed.
    ///
    /// Dynamo §4.4: "when the number of (node, counter) pairs in the vector clock
    /// reaches a threshold (say 10), the oldest pair is removed from the clock."
    /// Removing an entry only forgets history: later writes may then look concurrent
    /// with versions they descend from (extra siblings), never the other way round.
    pub fn truncate(&mut self, max_entries: usize, keep: impl Fn(&Actor) -> bool) -> usize {
        let Some(excess) = self.entries.len().checked_sub(max_entries) else {
            return 0;
        };
        if excess == 0 {
            return 0;
        }
        let mut candidates: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !keep(&self.entries[i].0))
            .collect();
        candidates.sort_by(|&x, &y| {
            let (ax, ex) = &self.entries[x];
            let (ay, ey) = &self.entries[y];
            (ex.timestamp, ax).cmp(&(ey.timestamp, ay))
        });
        candidates.truncate(excess);
        let mut remove = vec![false; self.entries.len()];
        for &i in &candidates {
            remove[i] = true;
        }
        let mut index = 0;
        self.entries.retain(|_| {
            let keep_it = !remove[index];
            index += 1;
            keep_it
        });
        candidates.len()
    }

    fn position(&self, actor: &Actor) -> Result<usize, usize> {
        self.entries.binary_search_by(|(a, _)| a.cmp(actor))
    }

    fn has_every_actor_of(&self, other: &VectorClock) -> bool {
        if other.entries.len() > self.entries.len() {
            return false;
        }
        let mut mine = self.entries.iter().map(|(a, _)| a);
        other
            .entries
            .iter()
            .all(|(actor, _)| mine.any(|a| a == actor))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn actor(node: &str, incarnation: u64) -> Actor {
        Actor::new(NodeId::new(node).unwrap(), incarnation)
    }

    /// A clock from `(node, counter, timestamp)` triples, incarnation 1.
    pub(crate) fn clock(entries: &[(&str, u64, u64)]) -> VectorClock {
        let mut c = VectorClock::new();
        for &(node, counter, ts) in entries {
            c.set(
                &actor(node, 1),
                ClockEntry {
                    counter,
                    timestamp: Millis(ts),
                },
            );
        }
        c
    }

    /// Arbitrary clocks over a small actor set, so that clocks share actors often.
    pub(crate) fn arb_clock() -> impl Strategy<Value = VectorClock> {
        proptest::collection::vec((0..3usize, 1..3u64, 0..4u64, 0..5u64), 0..6).prop_map(|raw| {
            let mut c = VectorClock::new();
            for (node, incarnation, counter, ts) in raw {
                if counter > 0 {
                    c.set(
                        &actor(["a", "b", "c"][node], incarnation),
                        ClockEntry {
                            counter,
                            timestamp: Millis(ts),
                        },
                    );
                }
            }
            c
        })
    }

    fn merged(a: &VectorClock, b: &VectorClock) -> VectorClock {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    #[test]
    fn compare_figure_3_clocks() {
        // Dynamo §4.4, Figure 3: D3 ([Sx,2],[Sy,1]) and D4 ([Sx,2],[Sz,1]) conflict;
        // both descend from D2 ([Sx,2]); D5 ([Sx,3],[Sy,1],[Sz,1]) descends from both.
        let d2 = clock(&[("sx", 2, 0)]);
        let d3 = clock(&[("sx", 2, 0), ("sy", 1, 0)]);
        let d4 = clock(&[("sx", 2, 0), ("sz", 1, 0)]);
        let d5 = clock(&[("sx", 3, 0), ("sy", 1, 0), ("sz", 1, 0)]);
        assert_eq!(d3.compare(&d4), Causality::Concurrent);
        assert_eq!(d2.compare(&d3), Causality::Before);
        assert_eq!(d3.compare(&d2), Causality::After);
        assert_eq!(d5.compare(&d3), Causality::After);
        assert_eq!(d5.compare(&d4), Causality::After);
        assert_eq!(d5.compare(&d5), Causality::Equal);
        assert_eq!(VectorClock::new().compare(&d2), Causality::Before);
    }

    #[test]
    fn compare_ignores_timestamps() {
        let a = clock(&[("a", 1, 5)]);
        let b = clock(&[("a", 1, 9)]);
        assert_eq!(a.compare(&b), Causality::Equal);
        assert_ne!(a, b);
    }

    #[test]
    fn merge_takes_max_counter_and_its_timestamp() {
        let mut a = clock(&[("a", 3, 10), ("b", 1, 50), ("c", 2, 7)]);
        let b = clock(&[("a", 2, 99), ("b", 1, 60), ("d", 4, 1)]);
        a.merge(&b);
        assert_eq!(
            a,
            clock(&[("a", 3, 10), ("b", 1, 60), ("c", 2, 7), ("d", 4, 1)])
        );
        // The in-place path (every actor already present) follows the same rule.
        let mut c = clock(&[("a", 1, 1), ("b", 5, 5), ("c", 1, 1)]);
        c.merge(&clock(&[("b", 6, 2), ("c", 1, 3)]));
        assert_eq!(c, clock(&[("a", 1, 1), ("b", 6, 2), ("c", 1, 3)]));
    }

    #[test]
    fn increment_and_covers() {
        let mut c = VectorClock::new();
        let a = actor("a", 1);
        let d1 = c.increment(&a, Millis(1));
        let d2 = c.increment(&a, Millis(2));
        assert_eq!((d1.counter, d2.counter), (1, 2));
        assert!(c.covers(&d1) && c.covers(&d2));
        assert!(!c.covers(&Dot {
            actor: a.clone(),
            counter: 3
        }));
        // Another incarnation of the same node is a different actor.
        assert!(!c.covers(&Dot {
            actor: actor("a", 2),
            counter: 1
        }));
        assert_eq!(c.entry(&a).unwrap().timestamp, Millis(2));
    }

    #[test]
    fn truncate_drops_oldest_timestamps_first_with_actor_tiebreak() {
        let mut c = clock(&[("a", 1, 30), ("b", 1, 10), ("c", 1, 20), ("d", 1, 10)]);
        assert_eq!(c.truncate(2, |_| false), 2);
        // b and d share the oldest timestamp; both go before c.
        assert_eq!(c, clock(&[("a", 1, 30), ("c", 1, 20)]));

        let mut c = clock(&[("a", 1, 30), ("b", 1, 10), ("c", 1, 20), ("d", 1, 10)]);
        assert_eq!(c.truncate(3, |_| false), 1);
        // Tie at 10 broken by actor order: b before d.
        assert_eq!(c, clock(&[("a", 1, 30), ("c", 1, 20), ("d", 1, 10)]));
    }

    #[test]
    fn truncate_never_drops_a_kept_actor() {
        let mut c = clock(&[("a", 1, 1), ("b", 1, 2), ("c", 1, 3)]);
        let protected = actor("a", 1);
        assert_eq!(c.truncate(1, |x| *x == protected), 2);
        assert_eq!(c, clock(&[("a", 1, 1)]));
        let mut c = clock(&[("a", 1, 1), ("b", 1, 2)]);
        assert_eq!(c.truncate(0, |_| true), 0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.truncate(5, |_| false), 0);
    }

    proptest! {
        #[test]
        fn compare_is_a_partial_order(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            prop_assert_eq!(a.compare(&a), Causality::Equal);
            let flipped = match a.compare(&b) {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), flipped);
            if a.compare(&b) == Causality::Before && b.compare(&c) == Causality::Before {
                prop_assert_eq!(a.compare(&c), Causality::Before);
            }
            // Equal counters means the same actors with the same counters.
            if a.compare(&b) == Causality::Equal {
                let counters = |x: &VectorClock| {
                    x.iter().map(|(k, e)| (k.clone(), e.counter)).collect::<Vec<_>>()
                };
                prop_assert_eq!(counters(&a), counters(&b));
            }
        }

        #[test]
        fn merge_is_the_least_upper_bound(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            let ab = merged(&a, &b);
            prop_assert!(ab.descends(&a) && ab.descends(&b));
            // Least: any clock above both is above the merge.
            if c.descends(&a) && c.descends(&b) {
                prop_assert!(c.descends(&ab));
            }
            prop_assert_eq!(&ab, &merged(&b, &a));
            prop_assert_eq!(merged(&ab, &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            // Merging agrees with compare: a descends from b iff the merge adds nothing.
            prop_assert_eq!(a.descends(&b), ab.compare(&a) == Causality::Equal);
        }

        #[test]
        fn truncate_respects_bound_order_and_protection(
            c in arb_clock(),
            max in 0..5usize,
            protected_node in 0..3usize,
        ) {
            let keep = |x: &Actor| x.node.as_str() == ["a", "b", "c"][protected_node];
            let mut t = c.clone();
            let removed = t.truncate(max, keep);
            prop_assert_eq!(t.len() + removed, c.len());
            let kept_protected = c.iter().filter(|(x, _)| keep(x)).count();
            prop_assert!(t.len() <= max.max(kept_protected));
            let dropped: Vec<_> = c.iter().filter(|(x, _)| t.entry(x).is_none()).collect();
            for (x, e) in &dropped {
                prop_assert!(!keep(x));
                prop_assert_eq!(c.entry(x), Some(**e));
                // Every unprotected survivor is younger (or ties and sorts later).
                for (y, f) in t.iter().filter(|(y, _)| !keep(y)) {
                    prop_assert!((e.timestamp, *x) < (f.timestamp, y));
                }
            }
            // Survivors are untouched.
            for (x, e) in t.iter() {
                prop_assert_eq!(c.entry(x), Some(*e));
            }
        }
    }
}
