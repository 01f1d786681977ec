//! The per-key replica state: concurrent versions (siblings), each with its dot, and
//! one clock for everything seen (Dynamo §4.4, as dotted version vectors).
//!
//! Dynamo §4.4 keeps one vector clock per version. Riak found that this loses writes
//! or grows siblings without bound when two clients write with the same context
//! through one coordinator ("sibling explosion", false lost writes). Dotted version
//! vector sets fix it: the key's state has one clock covering every write it has seen,
//! and each live version remembers only the dot of the write that created it. A
//! version is dropped exactly when some clock covers its dot while lacking the version
//! itself: someone saw it and wrote over it. No I/O.

use std::sync::Arc;

use md5::{Digest, Md5};

use super::clock::{Actor, ClockEntry, Dot, VectorClock};
use super::context::Context;
use crate::time::Millis;

/// The most siblings [`SiblingLimits`] can allow per key.
pub const MAX_SIBLINGS_LIMIT: usize = 4096;

/// What a write stored: bytes, or a delete marker.
///
/// Deletes are versions too (Dynamo §4.4 treats a delete as a put): a tombstone
/// carries a dot, so a stale replica's older value cannot come back after a delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// A stored value (shared, so cloning a sibling does not copy it).
    Data(Arc<[u8]>),
    /// A delete.
    Tombstone,
}

impl Value {
    /// A data value holding `bytes`.
    pub fn data(bytes: impl Into<Arc<[u8]>>) -> Self {
        Value::Data(bytes.into())
    }

    /// The bytes, unless this is a tombstone.
    pub fn as_data(&self) -> Option<&[u8]> {
        match self {
            Value::Data(bytes) => Some(bytes),
            Value::Tombstone => None,
        }
    }

    /// Whether this is a delete marker.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Value::Tombstone)
    }
}

/// One concurrent version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sibling {
    /// The write that created this version.
    pub dot: Dot,
    /// What it wrote.
    pub value: Value,
    /// Wall-clock time of the write (for tombstone grace periods and display).
    pub timestamp: Millis,
}

/// Why a [`SiblingLimits`] is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// `max_siblings` was zero: no write could ever succeed.
    #[error("max_siblings must be at least 1")]
    ZeroMaxSiblings,
    /// `max_siblings` was above [`MAX_SIBLINGS_LIMIT`].
    #[error("max_siblings is {max}, the limit is {MAX_SIBLINGS_LIMIT}")]
    MaxSiblingsTooLarge {
        /// The rejected value.
        max: usize,
    },
    /// `warn_siblings` was above `max_siblings`, so the warning could never fire.
    #[error("warn_siblings ({warn}) is above max_siblings ({max})")]
    WarnAboveMax {
        /// The warning threshold.
        warn: usize,
        /// The hard cap.
        max: usize,
    },
    /// `max_clock_entries` was zero.
    #[error("max_clock_entries must be at least 1")]
    ZeroClockEntries,
}

/// Per-key bounds applied by [`SiblingSet::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiblingLimits {
    max_siblings: usize,
    warn_siblings: usize,
    max_clock_entries: usize,
}

impl SiblingLimits {
    /// Checks and builds limits.
    ///
    /// * `max_siblings`: a put that would leave more siblings fails.
    /// * `warn_siblings`: a put that leaves more siblings than this asks the shell
    ///   to log a warning.
    /// * `max_clock_entries`: the truncation threshold (Dynamo §4.4 suggests 10).
    ///
    /// # Errors
    /// [`LimitsError`] when `max_siblings` is 0 or above [`MAX_SIBLINGS_LIMIT`],
    /// `warn_siblings > max_siblings`, or `max_clock_entries` is 0.
    pub fn new(
        max_siblings: usize,
        warn_siblings: usize,
        max_clock_entries: usize,
    ) -> Result<Self, LimitsError> {
        if max_siblings == 0 {
            return Err(LimitsError::ZeroMaxSiblings);
        }
        if max_siblings > MAX_SIBLINGS_LIMIT {
            return Err(LimitsError::MaxSiblingsTooLarge { max: max_siblings });
        }
        if warn_siblings > max_siblings {
            return Err(LimitsError::WarnAboveMax {
                warn: warn_siblings,
                max: max_siblings,
            });
        }
        if max_clock_entries == 0 {
            return Err(LimitsError::ZeroClockEntries);
        }
        Ok(Self {
            max_siblings,
            warn_siblings,
            max_clock_entries,
        })
    }

    /// The most siblings a put may leave.
    pub fn max_siblings(&self) -> usize {
        self.max_siblings
    }

    /// Above this many siblings a put sets [`PutOutcome::warn`].
    pub fn warn_siblings(&self) -> usize {
        self.warn_siblings
    }

    /// The clock truncation threshold.
    pub fn max_clock_entries(&self) -> usize {
        self.max_clock_entries
    }
}

impl Default for SiblingLimits {
    /// 100 siblings at most, a warning above 20, clocks truncated to 32 entries.
    ///
    /// Dynamo §4.4 suggests 10 entries, one per coordinating node. An actor here is a
    /// node *and* its incarnation, which changes after an unclean start and before the
    /// node removes a state holding its own live dot (`crate::identity`), so one node
    /// can stand in a clock several times. Truncation can drop the entry that covers a
    /// superseded value, which then comes back as a sibling wherever a replica still
    /// holds it; at 10 entries a 5-node scaling run under load hit that (e2e
    /// `scaling.rs`), so the default leaves room for about three incarnations a node
    /// in a 10-node cluster. Old incarnations stop advancing, so they are the oldest
    /// entries and go first.
    fn default() -> Self {
        Self {
            max_siblings: 100,
            warn_siblings: 20,
            max_clock_entries: 32,
        }
    }
}

/// Why a put was refused. The sibling set is unchanged when a put fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// The write would leave more siblings than allowed; the client should read and
    /// write back with the read's context to reconcile them.
    #[error("write would leave {count} siblings, the limit is {limit}")]
    TooManySiblings {
        /// Siblings the write would have left.
        count: usize,
        /// [`SiblingLimits::max_siblings`].
        limit: usize,
    },
    /// The actor's counter is at `u64::MAX` (only a forged context can get it there).
    #[error("counter of actor {0} is exhausted")]
    CounterOverflow(Actor),
}

/// What a successful put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The dot of the new version.
    pub dot: Dot,
    /// Siblings after the put, the new one included.
    pub siblings: usize,
    /// Whether `siblings` exceeds [`SiblingLimits::warn_siblings`] (the shell logs).
    pub warn: bool,
}

/// A key's versions on one replica: a dotted version vector set.
///
/// Invariants: every sibling's dot is covered by the clock; no two siblings share a
/// dot; siblings are sorted by dot, so equal states compare equal with `==`.
///
/// The coordinator applies a client write with [`SiblingSet::put`] and sends the
/// result to the other replicas, which [`SiblingSet::merge`] it into their own state;
/// reads, read repair, hinted handoff and anti-entropy all use `merge` too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SiblingSet {
    /// Covers every write this replica has seen for the key, superseded ones too.
    clock: VectorClock,
    /// The live versions, sorted by dot.
    siblings: Vec<Sibling>,
}

impl SiblingSet {
    /// The state of a key never written.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from parts the storage decoder has checked against the
    /// invariants.
    pub(crate) fn from_checked_parts(clock: VectorClock, siblings: Vec<Sibling>) -> Self {
        debug_assert!(siblings.windows(2).all(|w| w[0].dot < w[1].dot));
        debug_assert!(siblings.iter().all(|s| clock.covers(&s.dot)));
        Self { clock, siblings }
    }

    /// The clock of everything seen for this key.
    pub fn clock(&self) -> &VectorClock {
        &self.clock
    }

    /// The live versions, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// The context a read returns: the clock, which covers every sibling, so a put
    /// with it supersedes them all.
    pub fn context(&self) -> Context {
        Context::from(self.clock.clone())
    }

    /// The context a put returns after writing `dot` into this set with `sent`: what
    /// the writer has seen, and nothing more (see [`super::context`]). When the new
    /// version is the only one left, every other one was covered by `sent`, so the
    /// whole clock says that; otherwise the set still holds versions the writer never
    /// saw, and only `sent` plus `dot` is returned, so a put with it supersedes the
    /// writer's own version and what it had read, never them.
    pub fn put_context(&self, sent: &Context, dot: &Dot) -> Context {
        match self.siblings.as_slice() {
            // The clock covers `sent`'s clock (merged by the put) but not the single
            // dots this set never held: keep them, or the writer would lose sight of
            // versions it wrote elsewhere.
            [only] if &only.dot == dot => {
                sent.dots().iter().fold(self.context(), |context, seen| {
                    context.with_dot(seen.clone())
                })
            }
            _ => sent.clone().with_dot(dot.clone()),
        }
    }

    /// The version with the latest timestamp, ties broken by the greater dot: the same
    /// on every replica holding this state. `None` for an empty state.
    pub fn last_write(&self) -> Option<&Sibling> {
        self.siblings
            .iter()
            .max_by(|a, b| (a.timestamp, &a.dot).cmp(&(b.timestamp, &b.dot)))
    }

    /// This state as a last-write-wins read shows it: only
    /// [`last_write`](Self::last_write), with the whole clock.
    #[must_use]
    pub fn last_write_view(&self) -> SiblingSet {
        SiblingSet {
            clock: self.clock.clone(),
            siblings: self.last_write().cloned().into_iter().collect(),
        }
    }

    /// The data values of the siblings (tombstones left out), in dot order.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.siblings.iter().filter_map(|s| s.value.as_data())
    }

    /// Number of siblings, tombstones included.
    pub fn len(&self) -> usize {
        self.siblings.len()
    }

    /// Whether there are no siblings at all.
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// Whether a read finds nothing: no sibling holds data (every sibling is a
    /// tombstone, or there are none).
    pub fn is_deleted(&self) -> bool {
        self.values().next().is_none()
    }

    /// Whether the state exists only to remember deletes: at least one sibling, and
    /// all are tombstones. Such a state may be purged once every replica holds it and
    /// a grace period has passed.
    pub fn tombstone_only(&self) -> bool {
        !self.siblings.is_empty() && self.siblings.iter().all(|s| s.value.is_tombstone())
    }

    /// Whether a live sibling carries a dot of `actor`. A node that deletes such a state
    /// for its own current actor must take a new actor first (see the node's `identity` module):
    /// its next dot would otherwise claim the deleted one as seen while other replicas
    /// may still hold it as a current value. An actor that appears only in the clock
    /// needs no new actor: every one of its dots the state saw was superseded there by
    /// a write that travels with it, so a later, larger dot covering them drops nothing
    /// that is not already superseded. (Renewing in that case too made clocks grow by
    /// an entry per node and stray sweep, past the truncation limit in a 5-node scaling
    /// run, where truncation then dropped an entry still needed: a superseded value
    /// came back.)
    pub fn mentions(&self, actor: &Actor) -> bool {
        self.siblings.iter().any(|s| &s.dot.actor == actor)
    }

    /// MD5 of the canonical storage encoding ([`SiblingSet::to_bytes`]): equal states
    /// give equal digests. Merkle anti-entropy (Dynamo §4.7) hashes these.
    pub fn digest(&self) -> [u8; 16] {
        Md5::digest(self.to_bytes()).into()
    }

    /// The coordinator-side write of `value` by `actor` with the client's `context`.
    ///
    /// Drops every sibling the context covers (the client saw it), adds the new
    /// version with the next dot of `actor`, merges the context into the clock, and
    /// truncates the clock to [`SiblingLimits::max_clock_entries`] without removing
    /// an actor that owns a live sibling's dot.
    ///
    /// The new counter is one above the larger of the local and the context counter
    /// for `actor`. The local counter is the actor's own history for the key (a
    /// coordinator writes locally first); taking the context's too means a dot can
    /// never be reissued even if a context knows more than the local state.
    ///
    /// The counter is also at least `now` in milliseconds (a hybrid logical clock):
    /// once a key is deleted and its tombstone purged everywhere (anti-entropy's purge
    /// after the grace period), the actor's history for the key is gone, and counting
    /// from 1 again would reissue dots the purged tombstone covered. A copy of that
    /// tombstone that survived somewhere (a purge stopped halfway keeps the purging
    /// node's copy) would then make the new, acknowledged write look superseded and
    /// drop it. Starting from the clock, a new dot is above every dot the actor issued
    /// for the key before the purge unless the actor wrote the key more than once per
    /// millisecond for longer than the whole grace period, or the node's clock went
    /// back by more than the grace period. Found by the simulator's purge-during-faults
    /// runs; Riak's KV679 is the same family of bug. The node's store also takes a new
    /// actor before it removes a state holding its own dots (purge, stray sweep; see
    /// `crate::identity`), which closes the remaining cases: counters alone cannot,
    /// since a larger counter claims every smaller one, including dots of values the
    /// node removed but other replicas still hold.
    ///
    /// Two puts with the same context both survive: the second context does not
    /// cover the first's new dot (Riak's false lost write cannot happen).
    ///
    /// # Errors
    /// [`VersionError::TooManySiblings`] if more than
    /// [`SiblingLimits::max_siblings`] siblings would remain, and
    /// [`VersionError::CounterOverflow`] if the counter is exhausted. On error the
    /// set is unchanged.
    pub fn put(
        &mut self,
        context: &Context,
        value: Value,
        actor: &Actor,
        now: Millis,
        limits: &SiblingLimits,
    ) -> Result<PutOutcome, VersionError> {
        let counter = self
            .clock
            .counter(actor)
            .max(context.counter(actor))
            .checked_add(1)
            .ok_or_else(|| VersionError::CounterOverflow(actor.clone()))?
            .max(now.0);
        let kept = self
            .siblings
            .iter()
            .filter(|s| !context.covers(&s.dot))
            .count();
        let count = kept + 1;
        if count > limits.max_siblings {
            return Err(VersionError::TooManySiblings {
                count,
                limit: limits.max_siblings,
            });
        }

        let dot = Dot {
            actor: actor.clone(),
            counter,
        };
        self.siblings.retain(|s| !context.covers(&s.dot));
        // The new dot is above every dot of `actor` the set holds, so it goes after
        // them; binary search finds that place among the other actors' dots.
        let at = self.siblings.partition_point(|s| s.dot < dot);
        self.siblings.insert(
            at,
            Sibling {
                dot: dot.clone(),
                value,
                timestamp: now,
            },
        );
        // Entries the client saw that this replica's clock lags behind are stamped with
        // the time of this write, not the context's zero (contexts carry no
        // timestamps): truncation drops the oldest entries first, and an entry just
        // learned from the client may be the one covering a value this write
        // supersedes; with timestamp zero it went first (a superseded value came back
        // in a 5-node scaling run).
        // Only the clock part: a single dot outside it says nothing of the actor's
        // earlier dots, which an entry would claim.
        for (context_actor, entry) in context.clock().iter() {
            if entry.counter > self.clock.counter(context_actor) {
                self.clock.set(
                    context_actor,
                    ClockEntry {
                        counter: entry.counter,
                        timestamp: entry.timestamp.max(now),
                    },
                );
            }
        }
        self.clock.set(
            actor,
            ClockEntry {
                counter,
                timestamp: now,
            },
        );
        let siblings = &self.siblings;
        self.clock.truncate(limits.max_clock_entries, |a| {
            siblings.iter().any(|s| &s.dot.actor == a)
        });
        Ok(PutOutcome {
            dot,
            siblings: count,
            warn: count > limits.warn_siblings,
        })
    }

    /// The replica-side sync: makes `self` the join of both states.
    ///
    /// A sibling of either side survives iff the other side holds the same dot or
    /// has not seen it (its clock does not cover the dot); the clocks merge. The
    /// operation is commutative, associative and idempotent, so replicas converge
    /// whatever order states arrive in (read repair, hinted handoff, anti-entropy).
    ///
    /// A dot names one write, so both sides hold the same value for a shared dot. If
    /// they ever differ (corruption), the sibling with the larger `(timestamp,
    /// value)` is kept, so the result still does not depend on the order.
    pub fn merge(&mut self, other: &SiblingSet) {
        let mine = std::mem::take(&mut self.siblings);
        let mut merged = Vec::with_capacity(mine.len() + other.siblings.len());
        let mut mine = mine.into_iter().peekable();
        let mut theirs = other.siblings.iter().peekable();
        loop {
            let order = match (mine.peek(), theirs.peek()) {
                (Some(a), Some(b)) => a.dot.cmp(&b.dot),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => break,
            };
            match order {
                std::cmp::Ordering::Less => {
                    merged.extend(mine.next().filter(|s| !other.clock.covers(&s.dot)));
                }
                std::cmp::Ordering::Greater => {
                    merged.extend(
                        theirs
                            .next()
                            .filter(|s| !self.clock.covers(&s.dot))
                            .cloned(),
                    );
                }
                std::cmp::Ordering::Equal => {
                    if let (Some(a), Some(b)) = (mine.next(), theirs.next()) {
                        let a_wins = (a.timestamp, &a.value) >= (b.timestamp, &b.value);
                        merged.push(if a_wins { a } else { b.clone() });
                    }
                }
            }
        }
        self.siblings = merged;
        self.clock.merge(&other.clock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::clock::Causality;
    use crate::version::clock::tests::actor;
    use crate::version::context;

    fn data(s: &str) -> Value {
        Value::data(s.as_bytes())
    }

    fn values(set: &SiblingSet) -> Vec<String> {
        set.values()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect()
    }

    fn merged(a: &SiblingSet, b: &SiblingSet) -> SiblingSet {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    fn unlimited() -> SiblingLimits {
        SiblingLimits::new(MAX_SIBLINGS_LIMIT, MAX_SIBLINGS_LIMIT, 1000).unwrap()
    }

    /// Last-write-wins (#15): of two concurrent versions a read shows the later one on
    /// every replica, ties broken by the dot; the view keeps the whole clock, so a put
    /// with its context supersedes both; a later delete wins as a tombstone.
    #[test]
    fn last_write_wins_shows_the_latest_version_and_keeps_the_clock() {
        let (a, b) = (actor("a", 1), actor("b", 1));
        let limits = SiblingLimits::default();
        let (mut at_a, mut at_b) = (SiblingSet::new(), SiblingSet::new());
        at_a.put(&Context::new(), data("early"), &a, Millis(100), &limits)
            .unwrap();
        at_b.put(&Context::new(), data("late"), &b, Millis(200), &limits)
            .unwrap();
        let (ab, ba) = (merged(&at_a, &at_b), merged(&at_b, &at_a));
        assert_eq!(values(&ab).len(), 2, "both versions are stored");
        for state in [&ab, &ba] {
            let view = state.last_write_view();
            assert_eq!(values(&view), ["late"]);
            assert_eq!(view.clock(), state.clock());
            assert_eq!(view.context(), state.context());
        }
        // A tie on the timestamp: the greater dot, the same everywhere.
        let mut tie_a = SiblingSet::new();
        tie_a
            .put(&Context::new(), data("x"), &a, Millis(5), &limits)
            .unwrap();
        let mut tie_b = SiblingSet::new();
        tie_b
            .put(&Context::new(), data("y"), &b, Millis(5), &limits)
            .unwrap();
        let winner = values(&merged(&tie_a, &tie_b).last_write_view());
        assert_eq!(winner, values(&merged(&tie_b, &tie_a).last_write_view()));
        // A put with the view's context supersedes every stored version.
        let mut written = ab.clone();
        written
            .put(
                &ab.last_write_view().context(),
                data("next"),
                &a,
                Millis(300),
                &limits,
            )
            .unwrap();
        assert_eq!(values(&written), ["next"]);
        // A delete that is the latest write reads as nothing.
        let mut deleted = ab.clone();
        deleted
            .put(&Context::new(), Value::Tombstone, &a, Millis(400), &limits)
            .unwrap();
        assert!(deleted.last_write_view().is_deleted());
        assert!(SiblingSet::new().last_write_view().is_empty());
    }

    #[test]
    fn figure_3_reconciliation() {
        // Dynamo §4.4, Figure 3: the evolution of an object over time. The wall clock
        // reads 0 throughout, so counters count writes as in the paper (a later clock
        // would lift them: see `put`).
        let (sx, sy, sz) = (actor("sx", 1), actor("sy", 1), actor("sz", 1));
        let limits = SiblingLimits::default();
        let (mut at_sx, mut at_sy, mut at_sz) =
            (SiblingSet::new(), SiblingSet::new(), SiblingSet::new());

        // A client writes a new object; Sx handles it: D1 ([Sx,1]).
        at_sx
            .put(&Context::new(), data("D1"), &sx, Millis(0), &limits)
            .unwrap();
        // The client updates it; Sx handles it again: D2 ([Sx,2]) overwrites D1.
        let ctx = at_sx.context();
        at_sx
            .put(&ctx, data("D2"), &sx, Millis(0), &limits)
            .unwrap();
        assert_eq!(values(&at_sx), ["D2"]);
        assert_eq!(at_sx.clock().counter(&sx), 2);
        // D2 propagates to Sy and Sz.
        at_sy.merge(&at_sx);
        at_sz.merge(&at_sx);

        // One client updates through Sy (D3), another reads D2 and writes through Sz (D4).
        let d2_ctx = at_sx.context();
        at_sy
            .put(&d2_ctx, data("D3"), &sy, Millis(0), &limits)
            .unwrap();
        at_sz
            .put(&d2_ctx, data("D4"), &sz, Millis(0), &limits)
            .unwrap();
        assert_eq!(at_sy.clock().compare(at_sz.clock()), Causality::Concurrent);

        // A read sees both versions; they are in conflict and both returned.
        let read = merged(&at_sy, &at_sz);
        assert_eq!(values(&read), ["D3", "D4"]);
        let ctx = read.context();
        // The context is D3 and D4 combined: ([Sx,2],[Sy,1],[Sz,1]).
        let counters = |c: &Context| [c.counter(&sx), c.counter(&sy), c.counter(&sz)];
        assert_eq!(counters(&ctx), [2, 1, 1]);

        // The client reconciles them and Sx coordinates the write: D5 ([Sx,3],[Sy,1],[Sz,1]).
        at_sx.merge(&read);
        let out = at_sx
            .put(&ctx, data("D5"), &sx, Millis(0), &limits)
            .unwrap();
        assert_eq!(out.dot.counter, 3);
        assert_eq!(counters(&at_sx.context()), [3, 1, 1]);
        assert_eq!(values(&at_sx), ["D5"]);

        // Once D5 reaches Sy and Sz, D3 and D4 are gone everywhere.
        at_sy.merge(&at_sx);
        at_sz.merge(&at_sx);
        assert_eq!(at_sy, at_sx);
        assert_eq!(at_sz, at_sx);
    }

    #[test]
    fn same_context_writes_through_one_coordinator_both_survive() {
        // Riak's false lost write: two clients read the same version and write through
        // the same coordinator. With one clock per version the second write's clock
        // would dominate the first; with dots, both remain.
        let a = actor("a", 1);
        let limits = SiblingLimits::default();
        let mut set = SiblingSet::new();
        set.put(&Context::new(), data("v0"), &a, Millis(1), &limits)
            .unwrap();
        let ctx = set.context();
        set.put(&ctx, data("left"), &a, Millis(2), &limits).unwrap();
        set.put(&ctx, data("right"), &a, Millis(3), &limits)
            .unwrap();
        assert_eq!(values(&set), ["left", "right"]);

        // A put with the context of a read of both supersedes both.
        let ctx = set.context();
        let out = set.put(&ctx, data("both"), &a, Millis(4), &limits).unwrap();
        assert_eq!(values(&set), ["both"]);
        assert_eq!((out.siblings, out.warn), (1, false));
    }

    #[test]
    fn blind_writes_are_concurrent_with_everything() {
        let (a, b) = (actor("a", 1), actor("b", 1));
        let limits = SiblingLimits::default();
        let mut set = SiblingSet::new();
        set.put(&Context::new(), data("x"), &a, Millis(1), &limits)
            .unwrap();
        set.put(&Context::new(), data("y"), &b, Millis(2), &limits)
            .unwrap();
        assert_eq!(values(&set), ["x", "y"]);
    }

    #[test]
    fn wiped_replica_with_new_incarnation_keeps_later_write() {
        // Riak KV679: node A writes v1 as (A, inc 1), the write reaches B, then A
        // loses its data. Restarted with incarnation 2, A writes v2 blind. Merging
        // with B must keep both.
        let limits = SiblingLimits::default();
        let (a1, a2) = (actor("a", 1), actor("a", 2));
        let mut at_a = SiblingSet::new();
        at_a.put(&Context::new(), data("v1"), &a1, Millis(0), &limits)
            .unwrap();
        let at_b = at_a.clone();

        let mut at_a = SiblingSet::new(); // data directory lost
        let out = at_a
            .put(&Context::new(), data("v2"), &a2, Millis(0), &limits)
            .unwrap();
        assert_eq!(
            out.dot,
            Dot {
                actor: a2,
                counter: 1
            }
        );
        assert_eq!(values(&merged(&at_a, &at_b)), ["v1", "v2"]);
        assert_eq!(values(&merged(&at_b, &at_a)), ["v1", "v2"]);
    }

    #[test]
    fn reusing_an_incarnation_after_data_loss_loses_a_write() {
        // Why incarnations exist: the same scenario without a new incarnation reissues
        // the dot (A,1) for v2, and the two writes collapse into one.
        let limits = SiblingLimits::default();
        let a = actor("a", 1);
        let mut at_a = SiblingSet::new();
        at_a.put(&Context::new(), data("v1"), &a, Millis(1), &limits)
            .unwrap();
        let at_b = at_a.clone();
        let mut at_a = SiblingSet::new();
        at_a.put(&Context::new(), data("v2"), &a, Millis(2), &limits)
            .unwrap();
        assert_eq!(merged(&at_a, &at_b).len(), 1);
    }

    #[test]
    fn deletes_are_tombstones_that_supersede() {
        let a = actor("a", 1);
        let limits = SiblingLimits::default();
        let mut set = SiblingSet::new();
        assert!(set.is_deleted() && !set.tombstone_only() && set.is_empty());
        set.put(&Context::new(), data("x"), &a, Millis(1), &limits)
            .unwrap();
        let stale = set.clone();
        assert!(!set.is_deleted());
        let ctx = set.context();
        set.put(&ctx, Value::Tombstone, &a, Millis(2), &limits)
            .unwrap();
        assert!(set.is_deleted() && set.tombstone_only());
        assert_eq!(set.len(), 1);
        // A stale replica cannot bring the value back.
        set.merge(&stale);
        assert!(set.tombstone_only());
        let mut resurrect = stale.clone();
        resurrect.merge(&set);
        assert_eq!(resurrect, set);
    }

    #[test]
    fn a_write_after_a_purge_is_not_covered_by_a_surviving_tombstone() {
        // The key is written and deleted by actor a; the tombstone is purged on the
        // coordinator (an empty set) but one copy survives elsewhere. The next write,
        // counted from the wall clock, has a dot the old tombstone does not cover, so
        // merging with the surviving copy keeps it.
        let a = actor("a", 1);
        let limits = SiblingLimits::default();
        let mut set = SiblingSet::new();
        for (i, at) in [1_000, 1_000, 1_001].into_iter().enumerate() {
            let ctx = set.context();
            set.put(&ctx, data(&format!("v{i}")), &a, Millis(at), &limits)
                .unwrap();
        }
        let ctx = set.context();
        set.put(&ctx, Value::Tombstone, &a, Millis(1_002), &limits)
            .unwrap();
        let surviving_tombstone = set.clone();
        assert!(surviving_tombstone.tombstone_only());

        let mut purged = SiblingSet::new();
        let outcome = purged
            .put(&Context::new(), data("new"), &a, Millis(90_000), &limits)
            .unwrap();
        assert_eq!(outcome.dot.counter, 90_000);
        assert_eq!(values(&merged(&purged, &surviving_tombstone)), ["new"]);
        assert_eq!(values(&merged(&surviving_tombstone, &purged)), ["new"]);

        // Within one millisecond (or with the clock behind), counters still rise by one.
        let mut fast = SiblingSet::new();
        let first = fast
            .put(&Context::new(), data("x"), &a, Millis(5), &limits)
            .unwrap();
        let ctx = fast.context();
        let second = fast.put(&ctx, data("y"), &a, Millis(5), &limits).unwrap();
        let ctx = fast.context();
        let third = fast.put(&ctx, data("z"), &a, Millis(1), &limits).unwrap();
        assert_eq!(
            (first.dot.counter, second.dot.counter, third.dot.counter),
            (5, 6, 7)
        );
    }

    #[test]
    fn sibling_cap_errors_and_leaves_state_unchanged() {
        let a = actor("a", 1);
        let limits = SiblingLimits::new(3, 1, 10).unwrap();
        let mut set = SiblingSet::new();
        let blind = Context::new();
        let first = set.put(&blind, data("1"), &a, Millis(1), &limits).unwrap();
        assert!(!first.warn);
        let second = set.put(&blind, data("2"), &a, Millis(2), &limits).unwrap();
        assert!(second.warn);
        set.put(&blind, data("3"), &a, Millis(3), &limits).unwrap();
        let before = set.clone();
        assert_eq!(
            set.put(&blind, data("4"), &a, Millis(4), &limits),
            Err(VersionError::TooManySiblings { count: 4, limit: 3 })
        );
        assert_eq!(set, before);
        // A write that supersedes what it saw is still accepted at the cap.
        let ctx = set.context();
        assert_eq!(
            set.put(&ctx, data("4"), &a, Millis(4), &limits)
                .unwrap()
                .siblings,
            1
        );
    }

    #[test]
    fn counter_overflow_errors_and_leaves_state_unchanged() {
        let a = actor("a", 1);
        let forged = crate::version::context::decode(&{
            let mut bytes = vec![1, 1, 1, b'a', 1];
            bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
            bytes
        })
        .unwrap();
        assert_eq!(forged.counter(&a), u64::MAX);
        let mut set = SiblingSet::new();
        assert_eq!(
            set.put(&forged, data("x"), &a, Millis(1), &SiblingLimits::default()),
            Err(VersionError::CounterOverflow(a))
        );
        assert_eq!(set, SiblingSet::new());
    }

    #[test]
    fn put_truncates_clock_but_protects_live_siblings() {
        let limits = SiblingLimits::new(100, 20, 2).unwrap();
        let mut set = SiblingSet::new();
        let blind = Context::new();
        let (a, b, c, d) = (actor("a", 1), actor("b", 1), actor("c", 1), actor("d", 1));
        // Three concurrent siblings: all their actors are protected.
        set.put(&blind, data("a"), &a, Millis(10), &limits).unwrap();
        set.put(&blind, data("b"), &b, Millis(20), &limits).unwrap();
        set.put(&blind, data("c"), &c, Millis(30), &limits).unwrap();
        assert_eq!(set.clock().len(), 3);
        // d supersedes them all: only then may the oldest entries go.
        let ctx = set.context();
        set.put(&ctx, data("d"), &d, Millis(40), &limits).unwrap();
        assert_eq!(values(&set), ["d"]);
        let left: Vec<_> = set.clock().iter().map(|(x, _)| x.clone()).collect();
        assert_eq!(left, [c, d.clone()]);
        // The coordinator's own entry survives even when it is the oldest, so the
        // actor's counter for the key never goes back and no dot is reissued.
        let mut newer = set.clock().clone();
        newer.merge(&{
            let mut e = VectorClock::new();
            e.increment(&actor("e", 1), Millis(99));
            e
        });
        let newer = Context::from(newer);
        // A skewed wall clock makes d's new entry the oldest (5 < 30 < 99).
        let out = set.put(&newer, data("d2"), &d, Millis(5), &limits).unwrap();
        // One above d's previous counter, which the wall clock lifted to 40.
        assert_eq!(out.dot.counter, 41);
        let left: Vec<_> = set.clock().iter().map(|(x, _)| x.clone()).collect();
        assert_eq!(left, [d, actor("e", 1)]);
    }

    #[test]
    fn an_entry_learned_from_the_client_is_not_the_first_truncated() {
        // Contexts carry no timestamps. The coordinator's clock lacks the entry that
        // covers the value the client supersedes (`x`'s): it must survive truncation,
        // or a replica still holding that value keeps it as a concurrent sibling.
        let limits = SiblingLimits::new(100, 20, 3).unwrap();
        let (a, b, c, x) = (actor("a", 1), actor("b", 1), actor("c", 1), actor("x", 1));
        let mut coordinator = SiblingSet::new();
        coordinator
            .put(&Context::new(), data("a"), &a, Millis(10), &limits)
            .unwrap();
        let ctx = coordinator.context();
        coordinator
            .put(&ctx, data("b"), &b, Millis(20), &limits)
            .unwrap();
        // Elsewhere, x wrote on top of b; the client read that and writes on top of it.
        let mut elsewhere = coordinator.clone();
        let ctx = elsewhere.context();
        elsewhere
            .put(&ctx, data("x"), &x, Millis(30), &limits)
            .unwrap();
        let client = context::decode(&context::encode(&elsewhere.context())).unwrap();
        coordinator
            .put(&client, data("c"), &c, Millis(40), &limits)
            .unwrap();
        assert!(
            coordinator.clock().entry(&x).is_some(),
            "x's entry was dropped: {:?}",
            coordinator.clock()
        );
        assert_eq!(values(&merged(&elsewhere, &coordinator)), ["c"]);
    }

    #[test]
    fn new_counter_never_reuses_a_dot_known_from_the_context() {
        let a = actor("a", 1);
        let mut ctx = VectorClock::new();
        ctx.increment(&a, Millis(1));
        ctx.increment(&a, Millis(2));
        let mut set = SiblingSet::new();
        let out = set
            .put(
                &Context::from(ctx),
                data("x"),
                &a,
                Millis(3),
                &SiblingLimits::default(),
            )
            .unwrap();
        assert_eq!(out.dot.counter, 3);
    }

    #[test]
    fn limits_validate() {
        assert_eq!(
            SiblingLimits::new(0, 0, 10),
            Err(LimitsError::ZeroMaxSiblings)
        );
        assert_eq!(
            SiblingLimits::new(5, 6, 10),
            Err(LimitsError::WarnAboveMax { warn: 6, max: 5 })
        );
        assert_eq!(
            SiblingLimits::new(5, 5, 0),
            Err(LimitsError::ZeroClockEntries)
        );
        assert_eq!(
            SiblingLimits::new(MAX_SIBLINGS_LIMIT + 1, 0, 1),
            Err(LimitsError::MaxSiblingsTooLarge {
                max: MAX_SIBLINGS_LIMIT + 1
            })
        );
        let d = SiblingLimits::default();
        assert_eq!(
            SiblingLimits::new(d.max_siblings(), d.warn_siblings(), d.max_clock_entries()),
            Ok(d)
        );
        assert_eq!(
            (d.max_siblings(), d.warn_siblings(), d.max_clock_entries()),
            (100, 20, 32)
        );
    }

    #[test]
    fn merge_with_conflicting_values_for_one_dot_is_order_independent() {
        let a = actor("a", 1);
        let limits = unlimited();
        let mut x = SiblingSet::new();
        x.put(&Context::new(), data("x"), &a, Millis(1), &limits)
            .unwrap();
        let mut y = SiblingSet::new();
        y.put(&Context::new(), data("y"), &a, Millis(1), &limits)
            .unwrap();
        assert_eq!(merged(&x, &y), merged(&y, &x));
        assert_eq!(values(&merged(&x, &y)), ["y"]);
    }
}
