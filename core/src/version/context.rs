//! The opaque client context: what a client has seen of a key (Dynamo §4.4, §5).
//!
//! Dynamo §5: a get returns "the object ... along with a context", and a put "uses the
//! context ... to determine which versions the write supersedes". A [`Context`] is a
//! clock of the sibling set read, without timestamps (truncation happens on replicas,
//! so clients need not see them), plus, rarely, single dots outside that clock.
//!
//! The dots are what a put returns when the key still has siblings the writer never
//! saw. Its context must cover only what the writer has seen: the context it sent and
//! the version it just wrote. A clock cannot say that: the new version's dot `x:9`
//! as a clock entry claims every `x:1..=9`, including a concurrent blind write `x:8`
//! the writer knows nothing of, so writing again with that context would silently
//! drop `x:8` (a lost update). So the put answers with the context it was sent plus
//! the one dot `x:9`; when its version is the only one left, the key's whole clock
//! says the same and is returned instead (with the sent dots it does not cover).
//!
//! A dot supersedes its version only at a coordinator whose state covers it: the
//! state's clock is the only record that a version is gone, and a lone dot cannot
//! enter it without claiming the actor's earlier dots. A put sent with a dotted context
//! to a replica that has not received that version yet leaves it as a sibling, which
//! the writer sees and resolves on its next read: an extra sibling, never a lost write.
//!
//! Format version 1: one version byte (`1`), then the postcard encoding of the clock's
//! `(actor, counter)` pairs in actor order. The empty byte string is also valid: it is
//! the context of a blind write (the empty clock), and what the empty clock encodes to.
//! Format version 2 (only for contexts with dots): version byte `2`, then the clock's
//! pairs as in version 1, then the dots' `(actor, counter)` pairs in dot order, none
//! covered by the clock.

use serde::{Serialize, Serializer};

use super::clock::{Actor, ClockEntry, Dot, VectorClock};
use crate::time::Millis;

/// The context format this module writes for a clock alone.
pub const CONTEXT_FORMAT_VERSION: u8 = 1;

/// The context format this module writes for a clock with dots.
pub const DOTTED_CONTEXT_FORMAT_VERSION: u8 = 2;

/// The most single dots a context carries. A writer chaining puts on a key that keeps
/// a sibling it never saw adds one dot per put; past this, the oldest dots are dropped,
/// which makes the next put supersede less (one more sibling), never more.
pub const MAX_CONTEXT_DOTS: usize = 64;

/// How far ahead of the coordinator's wall clock, in milliseconds, a context counter
/// may be: 2^48 ms, about 8,900 years. Counters are hybrid logical clocks (at least the
/// wall time in milliseconds, see [`SiblingSet::put`](super::SiblingSet::put)), so no
/// counter a node issued is anywhere near; a forged one near `u64::MAX` would exhaust
/// the actor's counter for the key and fail every later put through it.
pub const MAX_COUNTER_LEAD_MS: u64 = 1 << 48;

/// What a client has seen of a key: a clock, and single dots outside it (see the
/// [module docs](self)). The empty context is a blind write's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    clock: VectorClock,
    /// Sorted, none covered by `clock`, at most [`MAX_CONTEXT_DOTS`].
    dots: Vec<Dot>,
}

impl From<VectorClock> for Context {
    fn from(clock: VectorClock) -> Self {
        Self {
            clock,
            dots: Vec::new(),
        }
    }
}

impl Context {
    /// The blind write's context: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock part.
    pub fn clock(&self) -> &VectorClock {
        &self.clock
    }

    /// The single dots outside the clock, in order.
    pub fn dots(&self) -> &[Dot] {
        &self.dots
    }

    /// Whether nothing is seen.
    pub fn is_empty(&self) -> bool {
        self.clock.is_empty() && self.dots.is_empty()
    }

    /// Whether the write `dot` has been seen.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.clock.covers(dot) || self.dots.binary_search(dot).is_ok()
    }

    /// The highest counter of `actor` seen, in the clock or a dot (0: none).
    pub fn counter(&self, actor: &Actor) -> u64 {
        self.dots
            .iter()
            .filter(|dot| &dot.actor == actor)
            .map(|dot| dot.counter)
            .fold(self.clock.counter(actor), u64::max)
    }

    /// Whether `self` has seen everything `other` has.
    pub fn descends(&self, other: &Context) -> bool {
        self.clock.descends(&other.clock) && other.dots.iter().all(|dot| self.covers(dot))
    }

    /// What either context has seen: the clocks merged, and the single dots neither
    /// clock covers.
    #[must_use]
    pub fn union(&self, other: &Context) -> Context {
        let mut clock = self.clock.clone();
        clock.merge(&other.clock);
        self.dots
            .iter()
            .chain(&other.dots)
            .fold(Context::from(clock), |context, dot| {
                context.with_dot(dot.clone())
            })
    }

    /// This context having also seen `dot`. Past [`MAX_CONTEXT_DOTS`] the dot with the
    /// smallest counter goes (seeing less is always safe).
    #[must_use]
    pub fn with_dot(mut self, dot: Dot) -> Self {
        if self.covers(&dot) {
            return self;
        }
        let at = self.dots.partition_point(|d| d < &dot);
        self.dots.insert(at, dot);
        if self.dots.len() > MAX_CONTEXT_DOTS {
            if let Some(oldest) = (0..self.dots.len()).min_by_key(|&i| self.dots[i].counter) {
                self.dots.remove(oldest);
            }
        }
        self
    }

    /// Refuses a context no node can have issued: a counter more than
    /// [`MAX_COUNTER_LEAD_MS`] ahead of `now` (see there).
    ///
    /// # Errors
    /// [`ContextError::ImpossibleCounter`] naming the actor.
    pub fn check_counters(&self, now: Millis) -> Result<(), ContextError> {
        let ceiling = now.0.saturating_add(MAX_COUNTER_LEAD_MS);
        let counters = self
            .clock
            .iter()
            .map(|(actor, entry)| (actor, entry.counter))
            .chain(self.dots.iter().map(|dot| (&dot.actor, dot.counter)));
        for (actor, counter) in counters {
            if counter > ceiling {
                return Err(ContextError::ImpossibleCounter(actor.clone()));
            }
        }
        Ok(())
    }
}

/// The largest context accepted, in bytes.
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;

/// The most clock entries a context may carry.
pub const MAX_CONTEXT_ENTRIES: usize = 256;

/// Why bytes are not a valid context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// More than [`MAX_CONTEXT_BYTES`] bytes.
    #[error("context is {len} bytes, the limit is {MAX_CONTEXT_BYTES}")]
    TooLarge {
        /// Length of the rejected context.
        len: usize,
    },
    /// The first byte names a format this code does not know.
    #[error("unknown context format version {0}")]
    UnknownVersion(u8),
    /// The bytes end in the middle of the encoding.
    #[error("context is truncated")]
    Truncated,
    /// The bytes are not an encoding of a clock (bad varint, bad node id, ...).
    #[error("context is malformed")]
    Malformed,
    /// A complete encoding followed by more bytes.
    #[error("context has {count} trailing bytes")]
    TrailingBytes {
        /// How many bytes followed the encoding.
        count: usize,
    },
    /// More than [`MAX_CONTEXT_ENTRIES`] entries.
    #[error("context has {count} entries, the limit is {MAX_CONTEXT_ENTRIES}")]
    TooManyEntries {
        /// Number of entries in the context.
        count: usize,
    },
    /// An actor appears twice.
    #[error("context lists actor {0} twice")]
    DuplicateActor(Actor),
    /// Actors are not in ascending order.
    #[error("context actors are not sorted")]
    UnsortedActors,
    /// An entry has counter zero, which no clock holds.
    #[error("context has a zero counter for actor {0}")]
    ZeroCounter(Actor),
    /// More than [`MAX_CONTEXT_DOTS`] dots.
    #[error("context has {count} dots, the limit is {MAX_CONTEXT_DOTS}")]
    TooManyDots {
        /// Number of dots in the context.
        count: usize,
    },
    /// Dots unsorted, repeated, zero, or covered by the clock.
    #[error("context dots are not canonical")]
    BadDots,
    /// A counter no node can have issued (see [`MAX_COUNTER_LEAD_MS`]).
    #[error("context counter for actor {0} is beyond any clock")]
    ImpossibleCounter(Actor),
}

/// Encodes `context` for a client (timestamps are left out).
///
/// The empty context encodes to the empty byte string, and one without dots in format
/// version 1. A clock too large for the context limits (only reachable after many
/// merges without truncation) loses its oldest entries until it fits: a context that
/// covers less can only make the client's next write concurrent with more versions
/// (extra siblings), never make it supersede a version the client did not see.
pub fn encode(context: &Context) -> Vec<u8> {
    let clock = &context.clock;
    if context.is_empty() {
        return Vec::new();
    }
    // Dots are at most MAX_CONTEXT_DOTS (bounded by `with_dot` and `decode`), so the
    // clock gets what the byte limit leaves.
    let dots = &context.dots;
    let out = encode_unchecked(clock, dots);
    if out.len() <= MAX_CONTEXT_BYTES && clock.len() <= MAX_CONTEXT_ENTRIES {
        return out;
    }
    let mut smaller = clock.clone();
    smaller.truncate(MAX_CONTEXT_ENTRIES, |_| false);
    let mut out = encode_unchecked(&smaller, dots);
    while out.len() > MAX_CONTEXT_BYTES {
        // Shed the oldest entries whose encodings add up to the excess. The sequence
        // length prefix only shrinks, so one round normally suffices.
        let excess = out.len() - MAX_CONTEXT_BYTES;
        let mut by_age: Vec<_> = smaller
            .iter()
            .map(|(actor, entry)| {
                (
                    entry.timestamp,
                    actor,
                    encoded_pair_len(actor, entry.counter),
                )
            })
            .collect();
        by_age.sort();
        let mut shed = 0;
        let mut count = 0;
        for (_, _, len) in by_age {
            if shed >= excess {
                break;
            }
            shed += len;
            count += 1;
        }
        if count == 0 {
            // Nothing left to shed from the clock (dots alone over the limit cannot
            // happen with MAX_CONTEXT_DOTS dots of bounded node ids); send the blind
            // context rather than an oversized one.
            return Vec::new();
        }
        smaller.truncate(smaller.len() - count, |_| false);
        out = encode_unchecked(&smaller, dots);
    }
    out
}

fn encoded_pair_len(actor: &Actor, counter: u64) -> usize {
    postcard::to_allocvec(&(actor, counter)).map_or(0, |bytes| bytes.len())
}

fn encode_unchecked(clock: &VectorClock, dots: &[Dot]) -> Vec<u8> {
    // Serializing slice iterators of plain data into a Vec cannot fail.
    let infallible = |_| unreachable!("postcard serialization into a Vec is infallible");
    if dots.is_empty() {
        return postcard::to_extend(&CounterSeq(clock), vec![CONTEXT_FORMAT_VERSION])
            .unwrap_or_else(infallible);
    }
    let out = postcard::to_extend(&CounterSeq(clock), vec![DOTTED_CONTEXT_FORMAT_VERSION])
        .unwrap_or_else(infallible);
    postcard::to_extend(&DotSeq(dots), out).unwrap_or_else(infallible)
}

/// Serializes dots as `(actor, counter)` pairs.
struct DotSeq<'a>(&'a [Dot]);

impl Serialize for DotSeq<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|dot| (&dot.actor, dot.counter)))
    }
}

/// Serializes a clock's `(actor, counter)` pairs without copying them.
struct CounterSeq<'a>(&'a VectorClock);

impl Serialize for CounterSeq<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(actor, entry)| (actor, entry.counter)))
    }
}

/// Decodes a client context. Empty input is the blind write's empty clock. Entries
/// get timestamp zero (contexts carry none), which [`VectorClock::merge`] leaves
/// below any real timestamp for the same counter.
///
/// # Errors
/// [`ContextError`] for input over the limits, an unknown version byte, truncated or
/// malformed encodings, trailing bytes, and entries that are unsorted, duplicated or
/// have a zero counter. Never panics.
pub fn decode(bytes: &[u8]) -> Result<Context, ContextError> {
    if bytes.len() > MAX_CONTEXT_BYTES {
        return Err(ContextError::TooLarge { len: bytes.len() });
    }
    let Some((&version, body)) = bytes.split_first() else {
        return Ok(Context::new());
    };
    if version != CONTEXT_FORMAT_VERSION && version != DOTTED_CONTEXT_FORMAT_VERSION {
        return Err(ContextError::UnknownVersion(version));
    }
    let take = |body| {
        postcard::take_from_bytes::<Vec<(Actor, u64)>>(body).map_err(|e| match e {
            postcard::Error::DeserializeUnexpectedEnd => ContextError::Truncated,
            _ => ContextError::Malformed,
        })
    };
    let (pairs, mut rest) = take(body)?;
    let mut dot_pairs = Vec::new();
    if version == DOTTED_CONTEXT_FORMAT_VERSION {
        (dot_pairs, rest) = take(rest)?;
    }
    if !rest.is_empty() {
        return Err(ContextError::TrailingBytes { count: rest.len() });
    }
    let clock = decode_clock(pairs)?;
    if dot_pairs.len() > MAX_CONTEXT_DOTS {
        return Err(ContextError::TooManyDots {
            count: dot_pairs.len(),
        });
    }
    let dots: Vec<Dot> = dot_pairs
        .into_iter()
        .map(|(actor, counter)| Dot { actor, counter })
        .collect();
    let canonical = dots.windows(2).all(|pair| pair[0] < pair[1])
        && dots.iter().all(|dot| dot.counter > 0 && !clock.covers(dot));
    if !canonical {
        return Err(ContextError::BadDots);
    }
    Ok(Context { clock, dots })
}

/// The clock of a context from its decoded pairs, checked.
fn decode_clock(pairs: Vec<(Actor, u64)>) -> Result<VectorClock, ContextError> {
    if pairs.len() > MAX_CONTEXT_ENTRIES {
        return Err(ContextError::TooManyEntries { count: pairs.len() });
    }
    let entries: Vec<(Actor, ClockEntry)> = pairs
        .into_iter()
        .map(|(actor, counter)| {
            let timestamp = Millis(0);
            (actor, ClockEntry { counter, timestamp })
        })
        .collect();
    check_clock_entries(&entries).map_err(|bad| match bad {
        BadClockEntries::Duplicate(a) => ContextError::DuplicateActor(a),
        BadClockEntries::Unsorted => ContextError::UnsortedActors,
        BadClockEntries::ZeroCounter(a) => ContextError::ZeroCounter(a),
    })?;
    Ok(VectorClock::from_sorted_entries(entries))
}

/// What can be wrong with decoded clock entries (shared by the context and the
/// storage decoders, which map it into their own error types).
pub(crate) enum BadClockEntries {
    Duplicate(Actor),
    Unsorted,
    ZeroCounter(Actor),
}

/// Checks that entries are strictly sorted by actor and have non-zero counters.
pub(crate) fn check_clock_entries(entries: &[(Actor, ClockEntry)]) -> Result<(), BadClockEntries> {
    for pair in entries.windows(2) {
        match pair[0].0.cmp(&pair[1].0) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => return Err(BadClockEntries::Duplicate(pair[1].0.clone())),
            std::cmp::Ordering::Greater => return Err(BadClockEntries::Unsorted),
        }
    }
    match entries.iter().find(|(_, e)| e.counter == 0) {
        Some((actor, _)) => Err(BadClockEntries::ZeroCounter(actor.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::clock::Causality;
    use crate::version::clock::tests::{actor, arb_clock, clock};
    use proptest::prelude::*;

    /// The clock-only encoding of `c`.
    fn encode_clock(c: &VectorClock) -> Vec<u8> {
        encode(&Context::from(c.clone()))
    }

    /// The clock of a decoded context that has no dots.
    fn decode_clock_of(bytes: &[u8]) -> Result<VectorClock, ContextError> {
        decode(bytes).map(|context| {
            assert!(context.dots.is_empty(), "{context:?} has dots");
            context.clock
        })
    }

    fn dot(name: &str, counter: u64) -> Dot {
        Dot {
            actor: actor(name, 1),
            counter,
        }
    }

    /// A context body from raw pairs, bypassing `encode`'s guarantees.
    fn raw(pairs: &[(Actor, u64)]) -> Vec<u8> {
        postcard::to_extend(&pairs.to_vec(), vec![CONTEXT_FORMAT_VERSION]).unwrap()
    }

    #[test]
    fn a_union_has_seen_what_either_has() {
        let (a, b) = (actor("a", 1), actor("b", 1));
        let mut left_clock = VectorClock::new();
        left_clock.set(
            &a,
            ClockEntry {
                counter: 3,
                timestamp: Millis(0),
            },
        );
        let left = Context::from(left_clock).with_dot(Dot {
            actor: b.clone(),
            counter: 9,
        });
        let mut right_clock = VectorClock::new();
        right_clock.set(
            &b,
            ClockEntry {
                counter: 2,
                timestamp: Millis(0),
            },
        );
        let right = Context::from(right_clock);
        let union = left.union(&right);
        assert!(union.descends(&left) && union.descends(&right));
        assert_eq!(union.counter(&a), 3);
        assert_eq!(union.counter(&b), 9);
        assert!(
            !union.covers(&Dot {
                actor: b,
                counter: 5
            }),
            "the dot is not a range"
        );
        assert_eq!(Context::new().union(&Context::new()), Context::new());
    }

    #[test]
    fn empty_bytes_are_the_blind_write_context() {
        assert_eq!(encode_clock(&VectorClock::new()), Vec::<u8>::new());
        assert_eq!(decode_clock_of(&[]), Ok(VectorClock::new()));
        // The explicit form (version byte, zero entries) means the same.
        assert_eq!(decode_clock_of(&[1, 0]), Ok(VectorClock::new()));
    }

    #[test]
    fn round_trip_drops_timestamps_only() {
        let c = clock(&[("a", 3, 100), ("b", 1, 200)]);
        let back = decode_clock_of(&encode_clock(&c)).unwrap();
        assert_eq!(back.compare(&c), Causality::Equal);
        assert_eq!(back, clock(&[("a", 3, 0), ("b", 1, 0)]));
    }

    #[test]
    fn rejects_each_bad_input() {
        assert_eq!(
            decode_clock_of(&vec![1; MAX_CONTEXT_BYTES + 1]),
            Err(ContextError::TooLarge {
                len: MAX_CONTEXT_BYTES + 1
            })
        );
        assert_eq!(
            decode_clock_of(&[3, 0]),
            Err(ContextError::UnknownVersion(3))
        );
        assert_eq!(decode_clock_of(&[0]), Err(ContextError::UnknownVersion(0)));
        let good = encode_clock(&clock(&[("a", 3, 0)]));
        assert_eq!(
            decode_clock_of(&good[..good.len() - 1]),
            Err(ContextError::Truncated)
        );
        assert_eq!(decode_clock_of(&[1]), Err(ContextError::Truncated));
        let mut trailing = good.clone();
        trailing.extend([7, 7]);
        assert_eq!(
            decode_clock_of(&trailing),
            Err(ContextError::TrailingBytes { count: 2 })
        );
        // One entry whose node id has a space in it.
        assert_eq!(
            decode_clock_of(&[1, 1, 3, b'a', b' ', b'b', 1, 1]),
            Err(ContextError::Malformed)
        );
        // A varint that never ends (eleven continuation bytes).
        let mut endless = vec![1];
        endless.extend([0xff; 11]);
        assert_eq!(decode_clock_of(&endless), Err(ContextError::Malformed));

        let (a, b) = (actor("a", 1), actor("b", 1));
        assert_eq!(
            decode_clock_of(&raw(&[(b.clone(), 1), (a.clone(), 1)])),
            Err(ContextError::UnsortedActors)
        );
        assert_eq!(
            decode_clock_of(&raw(&[(a.clone(), 1), (a.clone(), 2)])),
            Err(ContextError::DuplicateActor(a.clone()))
        );
        assert_eq!(
            decode_clock_of(&raw(&[(a.clone(), 1), (b.clone(), 0)])),
            Err(ContextError::ZeroCounter(b))
        );
        let many: Vec<(Actor, u64)> = (0..=MAX_CONTEXT_ENTRIES as u64)
            .map(|i| (actor("n", i), 1))
            .collect();
        assert_eq!(
            decode_clock_of(&raw(&many)),
            Err(ContextError::TooManyEntries {
                count: MAX_CONTEXT_ENTRIES + 1
            })
        );
    }

    #[test]
    fn oversized_clocks_encode_their_newest_entries() {
        // 300 entries with 200-byte node ids: over both the entry and the byte limit.
        let mut c = VectorClock::new();
        for i in 0..300u64 {
            let node = format!("{:0>200}", i);
            let entry = ClockEntry {
                counter: 1,
                timestamp: Millis(i),
            };
            c.set(&Actor::new(crate::NodeId::new(node).unwrap(), 1), entry);
        }
        let bytes = encode_clock(&c);
        assert!(bytes.len() <= MAX_CONTEXT_BYTES);
        let back = decode_clock_of(&bytes).unwrap();
        assert!(back.len() < MAX_CONTEXT_ENTRIES);
        // What is kept are the newest entries; the client's clock covers less.
        let oldest_kept = 300 - back.len() as u64;
        for (a, _) in back.iter() {
            assert!(c.entry(a).unwrap().timestamp.0 >= oldest_kept);
        }
        assert_eq!(back.compare(&c), Causality::Before);
    }

    #[test]
    fn a_dotted_context_covers_its_clock_and_its_dots_only() {
        let context = Context::from(clock(&[("a", 3, 0)])).with_dot(dot("b", 9));
        assert!(context.covers(&dot("a", 1)) && context.covers(&dot("a", 3)));
        assert!(context.covers(&dot("b", 9)));
        // The dot is one write, not everything before it.
        assert!(!context.covers(&dot("b", 8)));
        assert!(!context.covers(&dot("a", 4)));
        assert_eq!(context.counter(&actor("b", 1)), 9);
        assert_eq!(context.counter(&actor("a", 1)), 3);
        // A dot the clock covers adds nothing.
        assert_eq!(context.clone().with_dot(dot("a", 2)), context);
        // It round-trips in format 2; without dots, format 1 as before.
        let bytes = encode(&context);
        assert_eq!(bytes[0], DOTTED_CONTEXT_FORMAT_VERSION);
        assert_eq!(decode(&bytes), Ok(context.clone()));
        assert_eq!(encode(&Context::from(clock(&[("a", 3, 0)])))[0], 1);
        // Descent: clocks pointwise, dots covered.
        let read = Context::from(clock(&[("a", 3, 0), ("b", 9, 0)]));
        assert!(read.descends(&context));
        assert!(!context.descends(&read), "a dot does not claim b:1..8");
        assert!(context.descends(&Context::from(clock(&[("a", 2, 0)]))));
    }

    #[test]
    fn dots_are_bounded_by_dropping_the_oldest() {
        let mut context = Context::new();
        for counter in 1..=(MAX_CONTEXT_DOTS as u64 + 5) {
            // One actor per dot, so none folds into another.
            context = context.with_dot(dot(&format!("n{counter}"), counter * 10));
        }
        assert_eq!(context.dots().len(), MAX_CONTEXT_DOTS);
        assert!(!context.covers(&dot("n1", 10)), "the oldest went first");
        assert!(context.covers(&dot(
            &format!("n{}", MAX_CONTEXT_DOTS + 5),
            (MAX_CONTEXT_DOTS as u64 + 5) * 10
        )));
        assert_eq!(decode(&encode(&context)), Ok(context));
    }

    #[test]
    fn non_canonical_dots_are_refused() {
        let body = |clock: &[(Actor, u64)], dots: &[(Actor, u64)]| {
            let out =
                postcard::to_extend(&clock.to_vec(), vec![DOTTED_CONTEXT_FORMAT_VERSION]).unwrap();
            postcard::to_extend(&dots.to_vec(), out).unwrap()
        };
        let (a, b) = (actor("a", 1), actor("b", 1));
        // Covered by the clock, unsorted, repeated, zero.
        for dots in [
            vec![(a.clone(), 2)],
            vec![(b.clone(), 5), (b.clone(), 4)],
            vec![(b.clone(), 5), (b.clone(), 5)],
            vec![(b.clone(), 0)],
        ] {
            assert_eq!(
                decode(&body(&[(a.clone(), 3)], &dots)),
                Err(ContextError::BadDots),
                "{dots:?}"
            );
        }
        let many: Vec<(Actor, u64)> = (1..=MAX_CONTEXT_DOTS as u64 + 1)
            .map(|c| (b.clone(), c))
            .collect();
        assert_eq!(
            decode(&body(&[], &many)),
            Err(ContextError::TooManyDots {
                count: MAX_CONTEXT_DOTS + 1
            })
        );
        // The dot list cut short.
        let good = body(&[(a.clone(), 3)], &[(b.clone(), 5)]);
        assert_eq!(
            decode(&good[..good.len() - 1]),
            Err(ContextError::Truncated)
        );
    }

    #[test]
    fn counters_no_node_can_have_issued_are_refused() {
        let now = Millis(1_800_000_000_000);
        let plausible = Context::from(clock(&[("a", now.0 + 5_000, 0)])).with_dot(dot("b", 7));
        assert_eq!(plausible.check_counters(now), Ok(()));
        let forged = Context::from(clock(&[("a", u64::MAX - 1, 0)]));
        assert_eq!(
            forged.check_counters(now),
            Err(ContextError::ImpossibleCounter(actor("a", 1)))
        );
        let forged_dot = Context::new().with_dot(dot("b", now.0 + MAX_COUNTER_LEAD_MS + 1));
        assert_eq!(
            forged_dot.check_counters(now),
            Err(ContextError::ImpossibleCounter(actor("b", 1)))
        );
    }

    proptest! {
        #[test]
        fn round_trip(c in arb_clock()) {
            let back = decode_clock_of(&encode_clock(&c)).unwrap();
            prop_assert_eq!(back.compare(&c), Causality::Equal);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_clock_of(&bytes);
            let mut versioned = vec![CONTEXT_FORMAT_VERSION];
            versioned.extend(&bytes);
            let _ = decode_clock_of(&versioned);
        }

        #[test]
        fn every_strict_prefix_is_rejected(c in arb_clock()) {
            let bytes = encode_clock(&c);
            for len in 1..bytes.len() {
                prop_assert!(decode_clock_of(&bytes[..len]).is_err());
            }
        }

        #[test]
        fn mutated_encodings_never_panic(c in arb_clock(), at: usize, byte: u8) {
            let mut bytes = encode_clock(&c);
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            let _ = decode_clock_of(&bytes);
        }
    }
}
