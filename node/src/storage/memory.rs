//! An in-memory engine for tests and the deterministic simulator.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::keys::{self, KeyRange, TOKEN_LEN};
use super::{Durability, Result, StorageEngine, UpdateFn, check_limit};
use crate::NodeId;
use crate::ring::TokenRange;

/// A [`StorageEngine`] holding everything in ordered maps in memory. Nothing survives a
/// drop; [`Durability`] is accepted and has nothing to do.
///
/// Keys use the same internal layout as the on-disk engine, so scans order alike.
#[derive(Default)]
pub struct MemoryEngine {
    /// One std `Mutex` over all three maps: it is never held across an `.await` (the
    /// trait is synchronous) and every critical section is a map operation plus, for
    /// updates, the caller's pure merge closure, so contention stays short. Holding the
    /// lock while the closure runs makes updates atomic with a single call of it.
    state: Mutex<State>,
}

/// The three keyspaces.
#[derive(Default)]
struct State {
    /// Internal data key (token ++ user key) to value.
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Internal hint key (target ++ 0x00 ++ user key) to value.
    hints: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Meta record name to value.
    meta: BTreeMap<String, Vec<u8>>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held can only come from an update closure, which
        // runs before the map is touched, so the maps are consistent after poisoning.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryEngine")
            .field("data", &state.data.len())
            .field("hints", &state.hints.len())
            .field("meta", &state.meta.len())
            .finish()
    }
}

/// Applies `f` to the entry at `key` and stores its result.
fn update_entry(
    map: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    key: Vec<u8>,
    f: UpdateFn<'_>,
) -> Option<Vec<u8>> {
    let new = f(map.get(&key).map(Vec::as_slice));
    match &new {
        Some(value) => {
            map.insert(key, value.clone());
        }
        None => {
            map.remove(&key);
        }
    }
    new
}

/// Up to `limit` entries of `map` in `ranges`, in order.
fn collect_ranges(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    ranges: Vec<KeyRange>,
    limit: usize,
    user_key: impl Fn(&[u8]) -> Vec<u8>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    ranges
        .into_iter()
        .flat_map(|range| map.range::<Vec<u8>, _>(range))
        .take(limit)
        .map(|(key, value)| (user_key(key), value.clone()))
        .collect()
}

impl StorageEngine for MemoryEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state().data.get(&keys::data_key(key)).cloned())
    }

    fn update(&self, key: &[u8], f: UpdateFn<'_>, _: Durability) -> Result<Option<Vec<u8>>> {
        Ok(update_entry(&mut self.state().data, keys::data_key(key), f))
    }

    fn remove(&self, key: &[u8]) -> Result<bool> {
        Ok(self.state().data.remove(&keys::data_key(key)).is_some())
    }

    fn scan(
        &self,
        range: TokenRange,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_limit(limit)?;
        let ranges = keys::scan_ranges(range, after)?;
        // Keys here were all built by `data_key`, so the token prefix needs no check.
        let user_key = |internal: &[u8]| internal[TOKEN_LEN..].to_vec();
        Ok(collect_ranges(&self.state().data, ranges, limit, user_key))
    }

    fn approximate_len(&self) -> u64 {
        self.state().data.len() as u64
    }

    fn hint_update(
        &self,
        target: &NodeId,
        key: &[u8],
        f: UpdateFn<'_>,
        _: Durability,
    ) -> Result<Option<Vec<u8>>> {
        Ok(update_entry(
            &mut self.state().hints,
            keys::hint_key(target, key),
            f,
        ))
    }

    fn hints_for(
        &self,
        target: &NodeId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_limit(limit)?;
        let range = keys::hint_range(target, after);
        let user_key = |internal: &[u8]| keys::hint_user_key(target, internal).to_vec();
        Ok(collect_ranges(
            &self.state().hints,
            vec![range],
            limit,
            user_key,
        ))
    }

    fn remove_hint_if(&self, target: &NodeId, key: &[u8], expected: &[u8]) -> Result<bool> {
        let mut state = self.state();
        let key = keys::hint_key(target, key);
        if state.hints.get(&key).map(Vec::as_slice) == Some(expected) {
            state.hints.remove(&key);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn hint_targets(&self) -> Result<Vec<(NodeId, u64)>> {
        keys::count_hint_targets(self.state().hints.keys().map(Ok))
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state().meta.get(name).cloned())
    }

    fn meta_put(&self, name: &str, value: &[u8], _: Durability) -> Result<()> {
        self.state().meta.insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn meta_remove(&self, name: &str) -> Result<()> {
        self.state().meta.remove(name);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> (MemoryEngine, ()) {
        (MemoryEngine::new(), ())
    }

    crate::storage::suite::storage_engine_suite!(engine());

    #[test]
    fn a_panicking_update_leaves_the_engine_usable() {
        let engine = MemoryEngine::new();
        engine
            .update(b"k", &mut |_| Some(b"v".to_vec()), Durability::Sync)
            .unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.update(b"k", &mut |_| panic!("merge bug"), Durability::Sync)
        }));
        assert!(panicked.is_err());
        assert_eq!(engine.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}
