//! The opaque client context: a vector clock as bytes (Dynamo §4.4, §5).
//!
//! Dynamo §5: a get returns "the object ... along with a context", and a put "uses the
//! context ... to determine which versions the write supersedes". The context is the
//! clock of the sibling set read, without timestamps (truncation happens on replicas,
//! so clients need not see them). No I/O.
//!
//! Format version 1: one version byte (`1`), then the postcard encoding of the clock's
//! `(actor, counter)` pairs in actor order. The empty byte string is also valid: it is
//! the context of a blind write (the empty clock), and what the empty clock encodes to.

use serde::{Serialize, Serializer};

use super::clock::{Actor, ClockEntry, VectorClock};
use crate::time::Millis;

/// The context format this module writes.
pub const CONTEXT_FORMAT_VERSION: u8 = 1;

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
}

/// Encodes `clock` as a client context (timestamps are left out).
///
/// The empty clock encodes to the empty byte string. A clock too large for the
/// context limits (only reachable after many merges without truncation) loses its
/// oldest entries until it fits: a context that covers less can only make the
/// client's next write concurrent with more versions (extra siblings), never make it
/// supersede a version the client did not see.
pub fn encode(clock: &VectorClock) -> Vec<u8> {
    if clock.is_empty() {
        return Vec::new();
    }
    let out = encode_unchecked(clock);
    if out.len() <= MAX_CONTEXT_BYTES && clock.len() <= MAX_CONTEXT_ENTRIES {
        return out;
    }
    let mut smaller = clock.clone();
    smaller.truncate(MAX_CONTEXT_ENTRIES, |_| false);
    let mut out = encode_unchecked(&smaller);
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
        smaller.truncate(smaller.len() - count, |_| false);
        out = encode_unchecked(&smaller);
    }
    out
}

fn encoded_pair_len(actor: &Actor, counter: u64) -> usize {
    postcard::to_allocvec(&(actor, counter)).map_or(0, |bytes| bytes.len())
}

fn encode_unchecked(clock: &VectorClock) -> Vec<u8> {
    // Serializing a slice iterator of plain data into a Vec cannot fail.
    postcard::to_extend(&CounterSeq(clock), vec![CONTEXT_FORMAT_VERSION])
        .unwrap_or_else(|_| unreachable!("postcard serialization into a Vec is infallible"))
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
pub fn decode(bytes: &[u8]) -> Result<VectorClock, ContextError> {
    if bytes.len() > MAX_CONTEXT_BYTES {
        return Err(ContextError::TooLarge { len: bytes.len() });
    }
    let Some((&version, body)) = bytes.split_first() else {
        return Ok(VectorClock::new());
    };
    if version != CONTEXT_FORMAT_VERSION {
        return Err(ContextError::UnknownVersion(version));
    }
    let (pairs, rest) =
        postcard::take_from_bytes::<Vec<(Actor, u64)>>(body).map_err(|e| match e {
            postcard::Error::DeserializeUnexpectedEnd => ContextError::Truncated,
            _ => ContextError::Malformed,
        })?;
    if !rest.is_empty() {
        return Err(ContextError::TrailingBytes { count: rest.len() });
    }
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

    /// A context body from raw pairs, bypassing `encode`'s guarantees.
    fn raw(pairs: &[(Actor, u64)]) -> Vec<u8> {
        postcard::to_extend(&pairs.to_vec(), vec![CONTEXT_FORMAT_VERSION]).unwrap()
    }

    #[test]
    fn empty_bytes_are_the_blind_write_context() {
        assert_eq!(encode(&VectorClock::new()), Vec::<u8>::new());
        assert_eq!(decode(&[]), Ok(VectorClock::new()));
        // The explicit form (version byte, zero entries) means the same.
        assert_eq!(decode(&[1, 0]), Ok(VectorClock::new()));
    }

    #[test]
    fn round_trip_drops_timestamps_only() {
        let c = clock(&[("a", 3, 100), ("b", 1, 200)]);
        let back = decode(&encode(&c)).unwrap();
        assert_eq!(back.compare(&c), Causality::Equal);
        assert_eq!(back, clock(&[("a", 3, 0), ("b", 1, 0)]));
    }

    #[test]
    fn rejects_each_bad_input() {
        assert_eq!(
            decode(&vec![1; MAX_CONTEXT_BYTES + 1]),
            Err(ContextError::TooLarge {
                len: MAX_CONTEXT_BYTES + 1
            })
        );
        assert_eq!(decode(&[2, 0]), Err(ContextError::UnknownVersion(2)));
        assert_eq!(decode(&[0]), Err(ContextError::UnknownVersion(0)));
        let good = encode(&clock(&[("a", 3, 0)]));
        assert_eq!(
            decode(&good[..good.len() - 1]),
            Err(ContextError::Truncated)
        );
        assert_eq!(decode(&[1]), Err(ContextError::Truncated));
        let mut trailing = good.clone();
        trailing.extend([7, 7]);
        assert_eq!(
            decode(&trailing),
            Err(ContextError::TrailingBytes { count: 2 })
        );
        // One entry whose node id has a space in it.
        assert_eq!(
            decode(&[1, 1, 3, b'a', b' ', b'b', 1, 1]),
            Err(ContextError::Malformed)
        );
        // A varint that never ends (eleven continuation bytes).
        let mut endless = vec![1];
        endless.extend([0xff; 11]);
        assert_eq!(decode(&endless), Err(ContextError::Malformed));

        let (a, b) = (actor("a", 1), actor("b", 1));
        assert_eq!(
            decode(&raw(&[(b.clone(), 1), (a.clone(), 1)])),
            Err(ContextError::UnsortedActors)
        );
        assert_eq!(
            decode(&raw(&[(a.clone(), 1), (a.clone(), 2)])),
            Err(ContextError::DuplicateActor(a.clone()))
        );
        assert_eq!(
            decode(&raw(&[(a.clone(), 1), (b.clone(), 0)])),
            Err(ContextError::ZeroCounter(b))
        );
        let many: Vec<(Actor, u64)> = (0..=MAX_CONTEXT_ENTRIES as u64)
            .map(|i| (actor("n", i), 1))
            .collect();
        assert_eq!(
            decode(&raw(&many)),
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
        let bytes = encode(&c);
        assert!(bytes.len() <= MAX_CONTEXT_BYTES);
        let back = decode(&bytes).unwrap();
        assert!(back.len() < MAX_CONTEXT_ENTRIES);
        // What is kept are the newest entries; the client's clock covers less.
        let oldest_kept = 300 - back.len() as u64;
        for (a, _) in back.iter() {
            assert!(c.entry(a).unwrap().timestamp.0 >= oldest_kept);
        }
        assert_eq!(back.compare(&c), Causality::Before);
    }

    proptest! {
        #[test]
        fn round_trip(c in arb_clock()) {
            let back = decode(&encode(&c)).unwrap();
            prop_assert_eq!(back.compare(&c), Causality::Equal);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
            let mut versioned = vec![CONTEXT_FORMAT_VERSION];
            versioned.extend(&bytes);
            let _ = decode(&versioned);
        }

        #[test]
        fn every_strict_prefix_is_rejected(c in arb_clock()) {
            let bytes = encode(&c);
            for len in 1..bytes.len() {
                prop_assert!(decode(&bytes[..len]).is_err());
            }
        }

        #[test]
        fn mutated_encodings_never_panic(c in arb_clock(), at: usize, byte: u8) {
            let mut bytes = encode(&c);
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            let _ = decode(&bytes);
        }
    }
}
