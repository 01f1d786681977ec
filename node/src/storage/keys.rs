//! The byte layout of internal keys, shared by every engine so they sort and scan alike.
//!
//! * data: `Token::of(key)` as 16 big-endian bytes, then the user key. Sorting by
//!   internal key sorts by ring position, so a key range (Dynamo §4.2) is one or two
//!   contiguous runs of the keyspace.
//! * hints: the target node id, a `0x00` separator, then the user key. Node ids never
//!   contain `0x00`, so one target's prefix is never a prefix of another's ("n1\0" vs
//!   "n10\0").

use std::ops::Bound;

use super::{Result, StorageError};
use crate::NodeId;
use crate::ring::{Token, TokenRange};

/// Length of the token prefix of a data key.
pub(crate) const TOKEN_LEN: usize = 16;

/// Ends the target id in a hint key.
const HINT_SEPARATOR: u8 = 0x00;

/// A range of internal keys, as both `BTreeMap::range` and `sled::Tree::range` take it.
pub(crate) type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The internal key of user key `key` in the data keyspace.
pub(crate) fn data_key(key: &[u8]) -> Vec<u8> {
    let mut internal = Vec::with_capacity(TOKEN_LEN + key.len());
    internal.extend_from_slice(&Token::of(key).0.to_be_bytes());
    internal.extend_from_slice(key);
    internal
}

/// The user key inside a data key read back from disk.
///
/// The token prefix is checked against the key: an entry filed under the wrong token
/// would silently escape the range scans that anti-entropy and transfer rely on.
///
/// # Errors
/// [`StorageError::Corrupted`] when the key is shorter than its token or the token does
/// not match.
pub(crate) fn data_user_key(internal: &[u8]) -> Result<&[u8]> {
    let Some((token, key)) = internal.split_first_chunk::<TOKEN_LEN>() else {
        return Err(StorageError::Corrupted {
            keyspace: "data",
            reason: "key shorter than its token",
        });
    };
    if u128::from_be_bytes(*token) != Token::of(key).0 {
        return Err(StorageError::Corrupted {
            keyspace: "data",
            reason: "token does not match the key",
        });
    }
    Ok(key)
}

/// The runs of internal data keys holding the keys of `range`, in ring order: clockwise
/// from `range.start`, so a wrapping range lists `(start, MAX]` before `[0, end]`.
/// With `after`, the runs resume strictly after that user key.
///
/// # Errors
/// [`StorageError::CursorOutsideRange`] when `after`'s token is not in `range` (it cannot
/// be a cursor of this scan).
pub(crate) fn scan_ranges(range: TokenRange, after: Option<&[u8]>) -> Result<Vec<KeyRange>> {
    let (start, end) = (range.start.0, range.end.0);
    // Inclusive token arcs, clockwise from start. The full ring (start == end) is the
    // wrapping case that ends at start itself.
    let mut arcs: Vec<(u128, u128)> = Vec::with_capacity(2);
    if start < end {
        arcs.push((start + 1, end));
    } else {
        if start < u128::MAX {
            arcs.push((start + 1, u128::MAX));
        }
        arcs.push((0, end));
    }

    let mut cursor = None;
    if let Some(after) = after {
        let token = Token::of(after).0;
        let Some(first) = arcs.iter().position(|&(lo, hi)| lo <= token && token <= hi) else {
            return Err(StorageError::CursorOutsideRange);
        };
        arcs.drain(..first);
        cursor = Some(data_key(after));
    }

    let mut ranges = Vec::with_capacity(arcs.len());
    for (lo, hi) in arcs {
        let lower = match cursor.take() {
            Some(cursor) => Bound::Excluded(cursor),
            None => Bound::Included(lo.to_be_bytes().to_vec()),
        };
        let upper = match hi.checked_add(1) {
            Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        ranges.push((lower, upper));
    }
    Ok(ranges)
}

/// The prefix shared by every hint for `target`.
fn hint_prefix(target: &NodeId) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(target.as_str().len() + 1);
    prefix.extend_from_slice(target.as_str().as_bytes());
    prefix.push(HINT_SEPARATOR);
    prefix
}

/// The internal key of the hint for `key` meant for `target`.
pub(crate) fn hint_key(target: &NodeId, key: &[u8]) -> Vec<u8> {
    let mut internal = hint_prefix(target);
    internal.extend_from_slice(key);
    internal
}

/// The internal keys of `target`'s hints, strictly after user key `after` if given.
pub(crate) fn hint_range(target: &NodeId, after: Option<&[u8]>) -> KeyRange {
    let prefix = hint_prefix(target);
    // The separator is 0x00, so the first key past every "target\0..." is "target\x01".
    let mut upper = prefix.clone();
    upper[prefix.len() - 1] = HINT_SEPARATOR + 1;
    let lower = match after {
        Some(after) => {
            let mut cursor = prefix;
            cursor.extend_from_slice(after);
            Bound::Excluded(cursor)
        }
        None => Bound::Included(prefix),
    };
    (lower, Bound::Excluded(upper))
}

/// The user key of a hint key from [`hint_range`]`(target, ..)`.
pub(crate) fn hint_user_key<'k>(target: &NodeId, internal: &'k [u8]) -> &'k [u8] {
    internal
        .get(target.as_str().len() + 1..)
        .unwrap_or_default()
}

/// The target-id bytes of a hint key (before the separator), unchecked.
///
/// # Errors
/// [`StorageError::Corrupted`] when the key has no separator.
pub(crate) fn hint_target_bytes(internal: &[u8]) -> Result<&[u8]> {
    match internal.iter().position(|&b| b == HINT_SEPARATOR) {
        Some(end) => Ok(&internal[..end]),
        None => Err(StorageError::Corrupted {
            keyspace: "hints",
            reason: "key has no target separator",
        }),
    }
}

/// Parses target-id bytes from [`hint_target_bytes`].
///
/// # Errors
/// [`StorageError::Corrupted`] when the bytes are not a valid [`NodeId`].
pub(crate) fn parse_hint_target(bytes: &[u8]) -> Result<NodeId> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|id| NodeId::new(id).ok())
        .ok_or(StorageError::Corrupted {
            keyspace: "hints",
            reason: "target is not a valid node id",
        })
}

/// Counts hints per target from the hint keys in internal-key order, where each
/// target's keys are contiguous. Cost: one pass, one id parse per target.
///
/// # Errors
/// [`StorageError::Corrupted`] for a key without a valid target, or a backend error
/// from `keys`.
pub(crate) fn count_hint_targets<K: AsRef<[u8]>>(
    keys: impl Iterator<Item = Result<K>>,
) -> Result<Vec<(NodeId, u64)>> {
    let mut counts: Vec<(Vec<u8>, u64)> = Vec::new();
    for key in keys {
        let key = key?;
        let target = hint_target_bytes(key.as_ref())?;
        match counts.last_mut() {
            Some((last, count)) if last.as_slice() == target => *count += 1,
            _ => counts.push((target.to_vec(), 1)),
        }
    }
    counts
        .into_iter()
        .map(|(target, count)| Ok((parse_hint_target(&target)?, count)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use proptest::prelude::*;

    fn in_any(ranges: &[KeyRange], internal: &[u8]) -> bool {
        use std::ops::RangeBounds;
        ranges.iter().any(|r| r.contains(&internal.to_vec()))
    }

    #[test]
    fn data_key_round_trips_and_rejects_garbage() {
        let internal = data_key(b"cart:alice");
        assert_eq!(internal.len(), TOKEN_LEN + 10);
        assert_eq!(data_user_key(&internal).unwrap(), b"cart:alice");
        assert!(matches!(
            data_user_key(b"short"),
            Err(StorageError::Corrupted { .. })
        ));
        let mut wrong_token = internal.clone();
        wrong_token[0] ^= 1;
        assert!(matches!(
            data_user_key(&wrong_token),
            Err(StorageError::Corrupted { .. })
        ));
    }

    #[test]
    fn hint_ranges_do_not_leak_between_prefix_targets() {
        let n1 = NodeId::new("n1").unwrap();
        let n10 = NodeId::new("n10").unwrap();
        let range = hint_range(&n1, None);
        assert!(in_any(std::slice::from_ref(&range), &hint_key(&n1, b"")));
        assert!(in_any(
            std::slice::from_ref(&range),
            &hint_key(&n1, b"\xff\xff")
        ));
        assert!(!in_any(std::slice::from_ref(&range), &hint_key(&n10, b"")));
        assert_eq!(hint_user_key(&n1, &hint_key(&n1, b"k\0")), b"k\0");
        assert_eq!(hint_target_bytes(&hint_key(&n10, b"k")).unwrap(), b"n10");
    }

    #[test]
    fn hint_target_counting_rejects_bad_targets() {
        let keys = [b"n1\0a".to_vec(), b"n1\0b".to_vec(), b"n2\0a".to_vec()];
        let counts = count_hint_targets(keys.iter().map(Ok)).unwrap();
        assert_eq!(
            counts,
            vec![
                (NodeId::new("n1").unwrap(), 2),
                (NodeId::new("n2").unwrap(), 1)
            ]
        );
        for bad in [
            b"no-separator".to_vec(),
            b"bad id\0k".to_vec(),
            b"\0k".to_vec(),
        ] {
            assert!(matches!(
                count_hint_targets([bad].iter().map(Ok)),
                Err(StorageError::Corrupted { .. })
            ));
        }
    }

    #[test]
    fn cursor_outside_the_range_is_an_error() {
        let key = b"x";
        let t = Token::of(key).0;
        let range = TokenRange::new(Token(t), Token(t.wrapping_add(5)));
        assert!(matches!(
            scan_ranges(range, Some(key)),
            Err(StorageError::CursorOutsideRange)
        ));
    }

    proptest! {
        /// The runs select exactly the keys whose token the range contains (Dynamo §4.2:
        /// a node's keys are those whose position falls in its arcs).
        #[test]
        fn runs_select_exactly_the_range(
            start: u128,
            end: u128,
            full: bool,
            keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..24),
        ) {
            let range = TokenRange::new(Token(start), Token(if full { start } else { end }));
            let ranges = scan_ranges(range, None).unwrap();
            for key in &keys {
                prop_assert_eq!(
                    in_any(&ranges, &data_key(key)),
                    range.contains(Token::of(key))
                );
            }
        }

        /// Resuming after a key of the range selects exactly the later keys in ring order.
        #[test]
        fn runs_resume_after_the_cursor(
            start: u128,
            keys in prop::collection::btree_set(prop::collection::vec(any::<u8>(), 0..4), 1..24),
        ) {
            let range = TokenRange::new(Token(start), Token(start));
            let ring_order: BTreeMap<(u128, Vec<u8>), ()> = keys
                .iter()
                .map(|k| ((Token::of(k).0.wrapping_sub(start).wrapping_sub(1), k.clone()), ()))
                .collect();
            let ordered: Vec<&Vec<u8>> = ring_order.keys().map(|(_, k)| k).collect();
            for (i, cursor) in ordered.iter().enumerate() {
                let ranges = scan_ranges(range, Some(cursor)).unwrap();
                for (j, key) in ordered.iter().enumerate() {
                    prop_assert_eq!(in_any(&ranges, &data_key(key)), j > i);
                }
            }
        }
    }
}
