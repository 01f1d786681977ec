//! One test suite for every [`StorageEngine`] (garage's habit: `src/db/test.rs`).
//!
//! Each engine's test module instantiates it with
//! `storage_engine_suite!(constructor())`, where the constructor returns the engine and
//! a guard kept alive for the test (a temporary directory, or `()`).

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::keys::TOKEN_LEN;
use super::{Durability, StorageEngine, StorageError};
use crate::NodeId;
use crate::ring::{Token, TokenRange};

fn id(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn put(engine: &dyn StorageEngine, key: &[u8], value: &[u8]) {
    engine
        .update(key, &mut |_| Some(value.to_vec()), Durability::Buffered)
        .unwrap();
}

fn put_hint(engine: &dyn StorageEngine, target: &NodeId, key: &[u8], value: &[u8]) {
    engine
        .hint_update(
            target,
            key,
            &mut |_| Some(value.to_vec()),
            Durability::Buffered,
        )
        .unwrap();
}

pub(crate) fn get_update_remove(engine: &dyn StorageEngine) {
    assert_eq!(engine.get(b"k").unwrap(), None);
    assert_eq!(engine.approximate_len(), 0);

    let mut seen = Vec::new();
    let stored = engine
        .update(
            b"k",
            &mut |old| {
                seen.push(old.map(<[u8]>::to_vec));
                Some(b"v1".to_vec())
            },
            Durability::Sync,
        )
        .unwrap();
    assert_eq!(stored, Some(b"v1".to_vec()));
    assert_eq!(seen.last(), Some(&None));
    assert_eq!(engine.get(b"k").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(engine.approximate_len(), 1);

    // The closure sees the current value: a read-modify-write.
    let stored = engine
        .update(
            b"k",
            &mut |old| {
                let mut value = old.unwrap().to_vec();
                value.extend_from_slice(b"+v2");
                Some(value)
            },
            Durability::Buffered,
        )
        .unwrap();
    assert_eq!(stored, Some(b"v1+v2".to_vec()));
    assert_eq!(engine.approximate_len(), 1);

    // Empty keys and values are ordinary.
    put(engine, b"", b"");
    assert_eq!(engine.get(b"").unwrap(), Some(Vec::new()));
    assert_eq!(engine.approximate_len(), 2);

    assert!(engine.remove(b"k").unwrap());
    assert!(!engine.remove(b"k").unwrap());
    assert_eq!(engine.get(b"k").unwrap(), None);
    assert_eq!(engine.approximate_len(), 1);
}

pub(crate) fn update_returning_none_deletes(engine: &dyn StorageEngine) {
    put(engine, b"k", b"v");
    let stored = engine
        .update(b"k", &mut |_| None, Durability::Sync)
        .unwrap();
    assert_eq!(stored, None);
    assert_eq!(engine.get(b"k").unwrap(), None);
    assert_eq!(engine.approximate_len(), 0);
    // Deleting an absent key writes nothing.
    let stored = engine
        .update(b"k", &mut |_| None, Durability::Buffered)
        .unwrap();
    assert_eq!(stored, None);
    assert_eq!(engine.approximate_len(), 0);
    // And so for hints.
    let n1 = id("n1");
    put_hint(engine, &n1, b"k", b"h");
    let stored = engine
        .hint_update(&n1, b"k", &mut |_| None, Durability::Buffered)
        .unwrap();
    assert_eq!(stored, None);
    assert_eq!(engine.hints_for(&n1, None, 10).unwrap(), vec![]);
}

/// The live bytes are each entry's internal key (token and user key) plus its value,
/// kept through inserts, overwrites, deletes and removals; hints and meta records are
/// not data.
pub(crate) fn live_bytes_follow_every_write(engine: &dyn StorageEngine) {
    let live = || engine.space().unwrap().live_bytes;
    let entry = |key: &[u8], value: &[u8]| (TOKEN_LEN + key.len() + value.len()) as u64;
    assert_eq!(live(), 0);
    put(engine, b"key", b"12345");
    assert_eq!(live(), entry(b"key", b"12345"));
    put(engine, b"key", b"1234567890");
    put(engine, b"other", b"");
    assert_eq!(live(), entry(b"key", b"1234567890") + entry(b"other", b""));
    put_hint(engine, &id("n1"), b"hinted", &[0; 100]);
    engine
        .meta_put("record", &[0; 100], Durability::Buffered)
        .unwrap();
    assert_eq!(live(), entry(b"key", b"1234567890") + entry(b"other", b""));
    engine
        .update(b"key", &mut |_| None, Durability::Buffered)
        .unwrap();
    assert_eq!(live(), entry(b"other", b""));
    assert!(engine.remove(b"other").unwrap());
    assert_eq!(live(), 0);
}

/// Dynamo §4.4: a replica merges concurrent writes of one key; the engine's part is that
/// no read-modify-write is lost.
pub(crate) fn concurrent_updates_never_lose_one(engine: &dyn StorageEngine) {
    const THREADS: u64 = 8;
    const INCREMENTS: u64 = 200;
    let increment = |old: Option<&[u8]>| {
        // Widens the read-to-write window so that a lost update would show.
        std::thread::yield_now();
        let count = old.map_or(0, |bytes| u64::from_le_bytes(bytes.try_into().unwrap()));
        Some((count + 1).to_le_bytes().to_vec())
    };
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                let mut increment = increment;
                for _ in 0..INCREMENTS {
                    engine
                        .update(b"counter", &mut increment, Durability::Buffered)
                        .unwrap();
                    engine
                        .hint_update(&id("n1"), b"counter", &mut increment, Durability::Buffered)
                        .unwrap();
                }
            });
        }
    });
    let total = (THREADS * INCREMENTS).to_le_bytes().to_vec();
    assert_eq!(engine.get(b"counter").unwrap(), Some(total.clone()));
    assert_eq!(
        engine.hints_for(&id("n1"), None, 1).unwrap(),
        vec![(b"counter".to_vec(), total)]
    );
}

/// Threads and writes per thread of [`concurrent_sync_writes_all_land`].
pub(crate) const SYNC_WRITERS: usize = 16;
/// See [`SYNC_WRITERS`].
pub(crate) const SYNC_WRITES_EACH: usize = 25;

/// Many threads writing durably at once (the group commit's load): every write lands,
/// in data, hints and meta alike, and none waits forever.
pub(crate) fn concurrent_sync_writes_all_land(engine: &dyn StorageEngine) {
    let barrier = std::sync::Barrier::new(SYNC_WRITERS);
    std::thread::scope(|scope| {
        for writer in 0..SYNC_WRITERS {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                for i in 0..SYNC_WRITES_EACH {
                    let key = format!("sync-{writer}-{i}").into_bytes();
                    let stored = engine
                        .update(&key, &mut |_| Some(key.clone()), Durability::Sync)
                        .unwrap();
                    assert_eq!(stored.as_deref(), Some(key.as_slice()));
                }
                engine
                    .hint_update(
                        &id("n1"),
                        format!("hint-{writer}").as_bytes(),
                        &mut |_| Some(b"h".to_vec()),
                        Durability::Sync,
                    )
                    .unwrap();
                engine
                    .meta_put(&format!("meta-{writer}"), b"m", Durability::Sync)
                    .unwrap();
                engine.flush().unwrap();
            });
        }
    });
    for writer in 0..SYNC_WRITERS {
        for i in 0..SYNC_WRITES_EACH {
            let key = format!("sync-{writer}-{i}").into_bytes();
            assert_eq!(engine.get(&key).unwrap(), Some(key));
        }
        assert_eq!(
            engine.meta_get(&format!("meta-{writer}")).unwrap(),
            Some(b"m".to_vec())
        );
    }
    assert_eq!(
        engine.hint_targets().unwrap(),
        vec![(id("n1"), SYNC_WRITERS as u64)]
    );
}

/// Every entry of `range`, fetched `page` at a time.
fn scan_all(engine: &dyn StorageEngine, range: TokenRange, page: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        let after = all.last().map(|(key, _)| key.as_slice());
        let batch = engine.scan(range, after, page).unwrap();
        assert!(batch.len() <= page, "page over its limit");
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

/// The keys of `range` in ring order (clockwise from `range.start`), by brute force.
fn expected_scan(keys: &BTreeSet<Vec<u8>>, range: TokenRange) -> Vec<Vec<u8>> {
    let mut selected: Vec<(u128, &Vec<u8>)> = keys
        .iter()
        .filter(|key| range.contains(Token::of(key)))
        .map(|key| {
            let offset = Token::of(key).0.wrapping_sub(range.start.0).wrapping_sub(1);
            (offset, key)
        })
        .collect();
    selected.sort();
    selected.into_iter().map(|(_, key)| key.clone()).collect()
}

/// A value derived from its key, so scans can check pairs.
fn value_of(key: &[u8]) -> Vec<u8> {
    let mut value = key.to_vec();
    value.reverse();
    value.push(0xaa);
    value
}

/// Dynamo §4.2: a node's keys are those whose token falls in its ranges; scans of normal,
/// wrapping and full ranges find exactly those, in ring order, across pages.
pub(crate) fn scan_normal_wrapping_and_full_ranges(engine: &dyn StorageEngine) {
    let keys: BTreeSet<Vec<u8>> = (0..60u32)
        .map(|i| format!("key-{i}").into_bytes())
        .collect();
    for key in &keys {
        put(engine, key, &value_of(key));
    }
    let mut tokens: Vec<u128> = keys.iter().map(|k| Token::of(k).0).collect();
    tokens.sort();
    let (low, mid, high) = (tokens[10], tokens[30], tokens[50]);
    let ranges = [
        TokenRange::new(Token(low), Token(high)),
        TokenRange::new(Token(high), Token(low)),
        TokenRange::new(Token(mid), Token(mid)),
        TokenRange::full(),
        TokenRange::new(Token(u128::MAX), Token(u128::MAX)),
        TokenRange::new(Token(u128::MAX), Token(mid)),
        TokenRange::new(Token(mid), Token(u128::MAX)),
        TokenRange::new(Token(mid), Token(mid + 1)),
    ];
    for range in ranges {
        let expected = expected_scan(&keys, range);
        for page in [1, 7, 100] {
            let got = scan_all(engine, range, page);
            let got_keys: Vec<Vec<u8>> = got.iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(got_keys, expected, "{range:?} by {page}");
            assert!(got.iter().all(|(k, v)| *v == value_of(k)));
        }
    }
    // The full ring starting mid-way lists the tokens after mid first.
    let from_mid = scan_all(engine, TokenRange::new(Token(mid), Token(mid)), 100);
    assert_eq!(from_mid.len(), keys.len());
    assert_eq!(Token::of(&from_mid[0].0).0, tokens[31]);
    assert_eq!(Token::of(&from_mid[59].0).0, mid);
}

pub(crate) fn scan_rejects_bad_arguments(engine: &dyn StorageEngine) {
    put(engine, b"a", b"1");
    assert!(matches!(
        engine.scan(TokenRange::full(), None, 0),
        Err(StorageError::ZeroLimit)
    ));
    let a = Token::of(b"a");
    let excluding_a = TokenRange::new(a, Token(a.0.wrapping_add(100)));
    assert!(matches!(
        engine.scan(excluding_a, Some(b"a"), 10),
        Err(StorageError::CursorOutsideRange)
    ));
    assert!(matches!(
        engine.hints_for(&id("n1"), None, 0),
        Err(StorageError::ZeroLimit)
    ));
}

/// Dynamo §4.6: hints are kept per intended node; one node's hints never show up in
/// another's, even when one id is a prefix of the other.
pub(crate) fn hints_are_isolated_between_targets(engine: &dyn StorageEngine) {
    let (n1, n10, n2) = (id("n1"), id("n10"), id("n2"));
    put_hint(engine, &n1, b"a", b"for n1");
    put_hint(engine, &n10, b"a", b"for n10");
    put_hint(engine, &n10, b"", b"empty key");
    put_hint(engine, &n1, b"\x00\xff", b"odd key");
    put(engine, b"a", b"data");
    engine.meta_put("a", b"meta", Durability::Sync).unwrap();

    assert_eq!(
        engine.hints_for(&n1, None, 10).unwrap(),
        vec![
            (b"\x00\xff".to_vec(), b"odd key".to_vec()),
            (b"a".to_vec(), b"for n1".to_vec()),
        ]
    );
    assert_eq!(
        engine.hints_for(&n10, None, 10).unwrap(),
        vec![
            (b"".to_vec(), b"empty key".to_vec()),
            (b"a".to_vec(), b"for n10".to_vec()),
        ]
    );
    assert_eq!(engine.hints_for(&n2, None, 10).unwrap(), vec![]);
    // Pagination resumes strictly after the cursor.
    assert_eq!(
        engine.hints_for(&n10, Some(b""), 10).unwrap(),
        vec![(b"a".to_vec(), b"for n10".to_vec())]
    );
    assert_eq!(engine.hints_for(&n10, Some(b"a"), 10).unwrap(), vec![]);
    assert_eq!(engine.hints_for(&n1, None, 1).unwrap().len(), 1);
    // Hints, data and meta are separate keyspaces.
    assert_eq!(engine.get(b"a").unwrap(), Some(b"data".to_vec()));
    assert_eq!(engine.meta_get("a").unwrap(), Some(b"meta".to_vec()));
    assert_eq!(engine.approximate_len(), 1);
}

/// Dynamo §4.6: a delivered hint is deleted only if nobody updated it meanwhile.
pub(crate) fn remove_hint_if_compares_before_deleting(engine: &dyn StorageEngine) {
    let n1 = id("n1");
    put_hint(engine, &n1, b"k", b"v1");
    // Delivery read v1, then a new write merged into the hint.
    put_hint(engine, &n1, b"k", b"v2");
    assert!(!engine.remove_hint_if(&n1, b"k", b"v1").unwrap());
    assert_eq!(
        engine.hints_for(&n1, None, 10).unwrap(),
        vec![(b"k".to_vec(), b"v2".to_vec())]
    );
    // Another target's identical hint is not touched.
    put_hint(engine, &id("n10"), b"k", b"v2");
    assert!(engine.remove_hint_if(&n1, b"k", b"v2").unwrap());
    assert_eq!(engine.hints_for(&n1, None, 10).unwrap(), vec![]);
    assert!(!engine.remove_hint_if(&n1, b"k", b"v2").unwrap());
    assert_eq!(engine.hints_for(&id("n10"), None, 10).unwrap().len(), 1);
}

pub(crate) fn hint_targets_counts_the_backlog(engine: &dyn StorageEngine) {
    assert_eq!(engine.hint_targets().unwrap(), vec![]);
    for key in [b"a", b"b", b"c"] {
        put_hint(engine, &id("n1"), key, b"h");
    }
    put_hint(engine, &id("n10"), b"a", b"h");
    put_hint(engine, &id("dynamo-2"), b"a", b"h");
    put_hint(engine, &id("dynamo-2"), b"b", b"h");
    // Updating a hint does not add to the backlog.
    put_hint(engine, &id("n1"), b"a", b"h2");
    assert_eq!(
        engine.hint_targets().unwrap(),
        vec![(id("dynamo-2"), 2), (id("n1"), 3), (id("n10"), 1)]
    );
    assert!(engine.remove_hint_if(&id("n10"), b"a", b"h").unwrap());
    assert_eq!(
        engine.hint_targets().unwrap(),
        vec![(id("dynamo-2"), 2), (id("n1"), 3)]
    );
}

pub(crate) fn meta_round_trips(engine: &dyn StorageEngine) {
    assert_eq!(engine.meta_get("incarnation").unwrap(), None);
    engine
        .meta_put("incarnation", b"1", Durability::Sync)
        .unwrap();
    engine
        .meta_put("members", b"table", Durability::Buffered)
        .unwrap();
    engine
        .meta_put("incarnation", b"2", Durability::Sync)
        .unwrap();
    assert_eq!(engine.meta_get("incarnation").unwrap(), Some(b"2".to_vec()));
    assert_eq!(engine.meta_get("members").unwrap(), Some(b"table".to_vec()));
    engine.meta_remove("incarnation").unwrap();
    engine.meta_remove("never-written").unwrap();
    assert_eq!(engine.meta_get("incarnation").unwrap(), None);
    assert_eq!(engine.meta_get("members").unwrap(), Some(b"table".to_vec()));
    engine.flush().unwrap();
}

/// A random key set and a range whose bounds often sit on or next to key tokens.
#[derive(Debug, Clone)]
pub(crate) struct ScanCase {
    keys: BTreeSet<Vec<u8>>,
    range: TokenRange,
    page: usize,
}

fn bound(tokens: Vec<u128>) -> impl Strategy<Value = u128> {
    let near_key = (any::<prop::sample::Index>(), -1i128..=1).prop_map(move |(i, delta)| {
        if tokens.is_empty() {
            0
        } else {
            tokens[i.index(tokens.len())].wrapping_add_signed(delta)
        }
    });
    prop_oneof![any::<u128>(), Just(0), Just(u128::MAX), near_key]
}

pub(crate) fn scan_case() -> impl Strategy<Value = ScanCase> {
    prop::collection::btree_set(prop::collection::vec(any::<u8>(), 0..6), 0..40).prop_flat_map(
        |keys| {
            let tokens: Vec<u128> = keys.iter().map(|k| Token::of(k).0).collect();
            (
                Just(keys),
                bound(tokens.clone()),
                bound(tokens),
                prop::bool::weighted(0.2),
                1usize..6,
            )
                .prop_map(|(keys, start, end, full, page)| ScanCase {
                    keys,
                    range: TokenRange::new(Token(start), Token(if full { start } else { end })),
                    page,
                })
        },
    )
}

/// The scan law: paging through a range yields exactly the keys whose token the range
/// contains, in ring order, with their values.
pub(crate) fn check_scan_case(engine: &dyn StorageEngine, case: &ScanCase) {
    for key in &case.keys {
        put(engine, key, &value_of(key));
    }
    let got = scan_all(engine, case.range, case.page);
    let got_keys: Vec<Vec<u8>> = got.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(got_keys, expected_scan(&case.keys, case.range));
    assert!(got.iter().all(|(k, v)| *v == value_of(k)));
}

/// Instantiates the suite for one engine; `$new` makes `(engine, guard)`.
macro_rules! storage_engine_suite {
    ($new:expr) => {
        mod suite {
            #[allow(unused_imports)]
            use super::*;
            use crate::storage::suite as s;
            use proptest::prelude::*;

            #[test]
            fn get_update_remove() {
                let (engine, _guard) = $new;
                s::get_update_remove(&engine);
            }

            #[test]
            fn update_returning_none_deletes() {
                let (engine, _guard) = $new;
                s::update_returning_none_deletes(&engine);
            }

            #[test]
            fn concurrent_updates_never_lose_one() {
                let (engine, _guard) = $new;
                s::concurrent_updates_never_lose_one(&engine);
            }

            #[test]
            fn concurrent_sync_writes_all_land() {
                let (engine, _guard) = $new;
                s::concurrent_sync_writes_all_land(&engine);
            }

            #[test]
            fn scan_normal_wrapping_and_full_ranges() {
                let (engine, _guard) = $new;
                s::scan_normal_wrapping_and_full_ranges(&engine);
            }

            #[test]
            fn scan_rejects_bad_arguments() {
                let (engine, _guard) = $new;
                s::scan_rejects_bad_arguments(&engine);
            }

            #[test]
            fn hints_are_isolated_between_targets() {
                let (engine, _guard) = $new;
                s::hints_are_isolated_between_targets(&engine);
            }

            #[test]
            fn remove_hint_if_compares_before_deleting() {
                let (engine, _guard) = $new;
                s::remove_hint_if_compares_before_deleting(&engine);
            }

            #[test]
            fn hint_targets_counts_the_backlog() {
                let (engine, _guard) = $new;
                s::hint_targets_counts_the_backlog(&engine);
            }

            #[test]
            fn live_bytes_follow_every_write() {
                let (engine, _guard) = $new;
                s::live_bytes_follow_every_write(&engine);
            }

            #[test]
            fn meta_round_trips() {
                let (engine, _guard) = $new;
                s::meta_round_trips(&engine);
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(32))]
                #[test]
                fn scan_pages_equal_a_filter_of_all_keys(case in s::scan_case()) {
                    let (engine, _guard) = $new;
                    s::check_scan_case(&engine, &case);
                }
            }
        }
    };
}

pub(crate) use storage_engine_suite;
