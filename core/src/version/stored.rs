//! The storage encoding of a [`SiblingSet`]: what the shell writes to disk and ships
//! between replicas. No I/O.
//!
//! Format version 1: one version byte (`1`), then postcard of
//! `(clock entries, siblings)`, where a clock entry is `(actor, counter, timestamp)`
//! in actor order and a sibling is `(actor, counter, timestamp, value)` in dot order,
//! the value being `None` for a tombstone or `Some(bytes)`. The encoding of a state
//! is canonical (one byte string per state), which [`SiblingSet::digest`] relies on.
//! A later format gets a new version byte and a migration in `from_bytes`.

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

use super::clock::{Actor, ClockEntry, Dot, VectorClock};
use super::context::{BadClockEntries, check_clock_entries};
use super::siblings::{Sibling, SiblingSet, Value};
use crate::time::Millis;

/// The storage format this module writes.
pub const STORAGE_FORMAT_VERSION: u8 = 1;

/// The most clock entries [`SiblingSet::from_bytes`] accepts.
pub const MAX_STORED_CLOCK_ENTRIES: usize = 4096;

/// The most siblings [`SiblingSet::from_bytes`] accepts.
pub const MAX_STORED_SIBLINGS: usize = 4096;

/// Why bytes are not a valid stored [`SiblingSet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageFormatError {
    /// The first byte names a format this code does not know.
    #[error("unknown storage format version {0}")]
    UnknownVersion(u8),
    /// The bytes end before the encoding does (empty input included).
    #[error("stored state is truncated")]
    Truncated,
    /// The bytes are not an encoding of a state.
    #[error("stored state is malformed")]
    Malformed,
    /// A complete encoding followed by more bytes.
    #[error("stored state has {count} trailing bytes")]
    TrailingBytes {
        /// How many bytes followed the encoding.
        count: usize,
    },
    /// More than [`MAX_STORED_CLOCK_ENTRIES`] clock entries.
    #[error("stored clock has {count} entries, the limit is {MAX_STORED_CLOCK_ENTRIES}")]
    TooManyClockEntries {
        /// Number of entries.
        count: usize,
    },
    /// More than [`MAX_STORED_SIBLINGS`] siblings.
    #[error("stored state has {count} siblings, the limit is {MAX_STORED_SIBLINGS}")]
    TooManySiblings {
        /// Number of siblings.
        count: usize,
    },
    /// A clock actor appears twice.
    #[error("stored clock lists actor {0} twice")]
    DuplicateActor(Actor),
    /// Clock actors are not in ascending order.
    #[error("stored clock actors are not sorted")]
    UnsortedActors,
    /// A clock entry or a dot has counter zero.
    #[error("stored state has a zero counter for actor {0}")]
    ZeroCounter(Actor),
    /// Two siblings share a dot.
    #[error("two stored siblings share a dot")]
    DuplicateDot,
    /// Siblings are not in ascending dot order.
    #[error("stored siblings are not sorted")]
    UnsortedSiblings,
    /// A sibling's dot is not covered by the clock.
    #[error("a stored sibling's dot is not covered by the clock")]
    UncoveredDot,
}

/// Value bytes, written and read as one length-prefixed run (not byte by byte) and
/// borrowed from the input while decoding.
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawBytes<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(deserializer).map(RawBytes)
    }
}

/// Serializes a state without copying it.
struct StateRef<'a>(&'a SiblingSet);

impl Serialize for StateRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (ClockRef(self.0.clock()), SiblingsRef(self.0.siblings())).serialize(serializer)
    }
}

struct ClockRef<'a>(&'a VectorClock);

impl Serialize for ClockRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|(actor, entry)| (actor, entry.counter, entry.timestamp)),
        )
    }
}

struct SiblingsRef<'a>(&'a [Sibling]);

impl Serialize for SiblingsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|s| {
            let value = s.value.as_data().map(RawBytes);
            (&s.dot.actor, s.dot.counter, s.timestamp, value)
        }))
    }
}

/// The decoded shape, before the invariants are checked.
type StoredClock = Vec<(Actor, u64, Millis)>;
type StoredSiblings<'a> = Vec<(Actor, u64, Millis, Option<RawBytes<'a>>)>;

impl SiblingSet {
    /// The canonical storage encoding (format [`STORAGE_FORMAT_VERSION`]).
    ///
    /// [`SiblingSet::merge`] does not cap siblings (it must not drop concurrent
    /// versions), so a state past [`MAX_STORED_SIBLINGS`] is encodable but would be
    /// refused by `from_bytes`; reaching it takes thousands of concurrent versions
    /// of one key, far beyond the put-side cap, and the shell should check
    /// [`SiblingSet::len`] before storing.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_extend(&StateRef(self), vec![STORAGE_FORMAT_VERSION])
            .unwrap_or_else(|_| unreachable!("postcard serialization into a Vec is infallible"))
    }

    /// Decodes a state written by [`SiblingSet::to_bytes`], checking every invariant.
    ///
    /// Decoding allocates in proportion to the input length, and the entry and
    /// sibling counts are capped ([`MAX_STORED_CLOCK_ENTRIES`],
    /// [`MAX_STORED_SIBLINGS`]; far above what puts leave, since
    /// [`super::SiblingLimits`] caps siblings at [`super::MAX_SIBLINGS_LIMIT`] and
    /// clocks are truncated).
    ///
    /// # Errors
    /// [`StorageFormatError`] for empty, truncated or malformed input, an unknown
    /// version byte, trailing bytes, counts over the caps, and states that break the
    /// invariants (unsorted or duplicate actors or dots, zero counters, a sibling not
    /// covered by the clock). Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<SiblingSet, StorageFormatError> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(StorageFormatError::Truncated);
        };
        if version != STORAGE_FORMAT_VERSION {
            return Err(StorageFormatError::UnknownVersion(version));
        }
        let ((raw_clock, raw_siblings), rest) =
            postcard::take_from_bytes::<(StoredClock, StoredSiblings<'_>)>(body).map_err(|e| {
                match e {
                    postcard::Error::DeserializeUnexpectedEnd => StorageFormatError::Truncated,
                    _ => StorageFormatError::Malformed,
                }
            })?;
        if !rest.is_empty() {
            return Err(StorageFormatError::TrailingBytes { count: rest.len() });
        }
        if raw_clock.len() > MAX_STORED_CLOCK_ENTRIES {
            return Err(StorageFormatError::TooManyClockEntries {
                count: raw_clock.len(),
            });
        }
        if raw_siblings.len() > MAX_STORED_SIBLINGS {
            return Err(StorageFormatError::TooManySiblings {
                count: raw_siblings.len(),
            });
        }

        let entries: Vec<(Actor, ClockEntry)> = raw_clock
            .into_iter()
            .map(|(actor, counter, timestamp)| (actor, ClockEntry { counter, timestamp }))
            .collect();
        check_clock_entries(&entries).map_err(|bad| match bad {
            BadClockEntries::Duplicate(a) => StorageFormatError::DuplicateActor(a),
            BadClockEntries::Unsorted => StorageFormatError::UnsortedActors,
            BadClockEntries::ZeroCounter(a) => StorageFormatError::ZeroCounter(a),
        })?;
        let clock = VectorClock::from_sorted_entries(entries);

        let mut siblings: Vec<Sibling> = Vec::with_capacity(raw_siblings.len());
        for (actor, counter, timestamp, value) in raw_siblings {
            if counter == 0 {
                return Err(StorageFormatError::ZeroCounter(actor));
            }
            let dot = Dot { actor, counter };
            if let Some(previous) = siblings.last() {
                match previous.dot.cmp(&dot) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => return Err(StorageFormatError::DuplicateDot),
                    std::cmp::Ordering::Greater => {
                        return Err(StorageFormatError::UnsortedSiblings);
                    }
                }
            }
            if !clock.covers(&dot) {
                return Err(StorageFormatError::UncoveredDot);
            }
            let value = value.map_or(Value::Tombstone, |RawBytes(b)| Value::data(b));
            siblings.push(Sibling {
                dot,
                value,
                timestamp,
            });
        }
        Ok(SiblingSet::from_checked_parts(clock, siblings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::clock::tests::actor;
    use crate::version::siblings::SiblingLimits;
    use proptest::prelude::*;

    fn sample() -> SiblingSet {
        let limits = SiblingLimits::default();
        let mut set = SiblingSet::new();
        let blind = crate::version::context::Context::new();
        set.put(
            &blind,
            Value::data(&b"one"[..]),
            &actor("a", 1),
            Millis(10),
            &limits,
        )
        .unwrap();
        set.put(
            &blind,
            Value::Tombstone,
            &actor("b", 7),
            Millis(20),
            &limits,
        )
        .unwrap();
        set.put(
            &blind,
            Value::data(&b""[..]),
            &actor("a", 1),
            Millis(30),
            &limits,
        )
        .unwrap();
        set
    }

    /// Encodes raw parts, bypassing the invariants `to_bytes` relies on.
    fn raw(
        clock: &[(Actor, u64, Millis)],
        siblings: &[(Actor, u64, Millis, Option<&[u8]>)],
    ) -> Vec<u8> {
        let siblings: Vec<_> = siblings
            .iter()
            .map(|(a, c, t, v)| (a.clone(), *c, *t, v.map(RawBytes)))
            .collect();
        postcard::to_extend(&(clock.to_vec(), siblings), vec![STORAGE_FORMAT_VERSION]).unwrap()
    }

    #[test]
    fn round_trip_is_exact() {
        let set = sample();
        let bytes = set.to_bytes();
        assert_eq!(SiblingSet::from_bytes(&bytes), Ok(set.clone()));
        assert_eq!(SiblingSet::from_bytes(&bytes).unwrap().to_bytes(), bytes);
        let empty = SiblingSet::new();
        assert_eq!(SiblingSet::from_bytes(&empty.to_bytes()), Ok(empty));
    }

    #[test]
    fn digest_follows_state_equality() {
        let set = sample();
        assert_eq!(set.digest(), set.clone().digest());
        let mut other = set.clone();
        let ctx = other.context();
        other
            .put(
                &ctx,
                Value::Tombstone,
                &actor("a", 1),
                Millis(40),
                &SiblingLimits::default(),
            )
            .unwrap();
        assert_ne!(set.digest(), other.digest());
        // Merging the same states in either order gives the same digest.
        let mut ab = set.clone();
        ab.merge(&other);
        let mut ba = other.clone();
        ba.merge(&set);
        assert_eq!(ab.digest(), ba.digest());
    }

    #[test]
    fn rejects_each_bad_input() {
        use StorageFormatError as E;
        let (a, b) = (actor("a", 1), actor("b", 1));
        let t = Millis(1);
        assert_eq!(SiblingSet::from_bytes(&[]), Err(E::Truncated));
        assert_eq!(
            SiblingSet::from_bytes(&[9, 0, 0]),
            Err(E::UnknownVersion(9))
        );
        let good = sample().to_bytes();
        assert_eq!(
            SiblingSet::from_bytes(&good[..good.len() - 1]),
            Err(E::Truncated)
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            SiblingSet::from_bytes(&trailing),
            Err(E::TrailingBytes { count: 1 })
        );
        // A tombstone tag that is neither 0 (None) nor 1 (Some).
        let mut bad_tag = raw(&[(a.clone(), 1, t)], &[(a.clone(), 1, t, None)]);
        *bad_tag.last_mut().unwrap() = 2;
        assert_eq!(SiblingSet::from_bytes(&bad_tag), Err(E::Malformed));

        let many: Vec<_> = (0..=MAX_STORED_CLOCK_ENTRIES as u64)
            .map(|i| (actor("n", i), 1, t))
            .collect();
        assert_eq!(
            SiblingSet::from_bytes(&raw(&many, &[])),
            Err(E::TooManyClockEntries {
                count: MAX_STORED_CLOCK_ENTRIES + 1
            })
        );
        let many: Vec<_> = (1..=MAX_STORED_SIBLINGS as u64 + 1)
            .map(|i| (a.clone(), i, t, None))
            .collect();
        assert_eq!(
            SiblingSet::from_bytes(&raw(&[(a.clone(), u64::MAX, t)], &many)),
            Err(E::TooManySiblings {
                count: MAX_STORED_SIBLINGS + 1
            })
        );

        let cases: Vec<(Vec<u8>, StorageFormatError)> = vec![
            (
                raw(&[(b.clone(), 1, t), (a.clone(), 1, t)], &[]),
                E::UnsortedActors,
            ),
            (
                raw(&[(a.clone(), 1, t), (a.clone(), 2, t)], &[]),
                E::DuplicateActor(a.clone()),
            ),
            (raw(&[(a.clone(), 0, t)], &[]), E::ZeroCounter(a.clone())),
            (
                raw(&[(a.clone(), 2, t)], &[(a.clone(), 0, t, None)]),
                E::ZeroCounter(a.clone()),
            ),
            (
                raw(
                    &[(a.clone(), 2, t)],
                    &[(a.clone(), 1, t, None), (a.clone(), 1, t, None)],
                ),
                E::DuplicateDot,
            ),
            (
                raw(
                    &[(a.clone(), 2, t)],
                    &[(a.clone(), 2, t, None), (a.clone(), 1, t, None)],
                ),
                E::UnsortedSiblings,
            ),
            (
                raw(&[(a.clone(), 1, t)], &[(a.clone(), 2, t, None)]),
                E::UncoveredDot,
            ),
            (
                raw(&[(a.clone(), 1, t)], &[(b.clone(), 1, t, None)]),
                E::UncoveredDot,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(SiblingSet::from_bytes(&bytes), Err(expected));
        }
        // The same shapes with the invariants kept decode fine.
        let ok = raw(
            &[(a.clone(), 2, t)],
            &[(a.clone(), 1, t, Some(b"x")), (a, 2, t, None)],
        );
        assert_eq!(SiblingSet::from_bytes(&ok).unwrap().len(), 2);
    }

    #[test]
    fn every_strict_prefix_is_rejected() {
        let bytes = sample().to_bytes();
        for len in 0..bytes.len() {
            assert!(
                SiblingSet::from_bytes(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = SiblingSet::from_bytes(&bytes);
            let mut versioned = vec![STORAGE_FORMAT_VERSION];
            versioned.extend(&bytes);
            let _ = SiblingSet::from_bytes(&versioned);
        }

        #[test]
        fn mutated_encodings_never_panic(at: usize, byte: u8) {
            let mut mutated = sample().to_bytes();
            let i = at % mutated.len();
            mutated[i] = byte;
            if let Ok(decoded) = SiblingSet::from_bytes(&mutated) {
                // Whatever decodes is a valid state and re-encodes canonically.
                prop_assert_eq!(SiblingSet::from_bytes(&decoded.to_bytes()), Ok(decoded));
            }
        }
    }
}
