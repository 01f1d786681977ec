//! An in-memory engine for tests and the deterministic simulator.
//!
//! It keeps what a real disk would hold apart from what only the process's memory
//! holds, so the simulator can crash a node: [`MemoryEngine::crash`] returns the
//! engine a restarted process finds, with or without the writes not yet flushed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::keys::{self, KeyRange, TOKEN_LEN};
use super::{Durability, Result, StorageEngine, StorageError, StorageSpace, UpdateFn, check_limit};
use crate::NodeId;
use crate::ring::TokenRange;

/// What survives a simulated crash ([`MemoryEngine::crash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// Only flushed writes survive, as when a sled process dies before its periodic
    /// flush: every [`Durability::Buffered`] write since the last flush is lost.
    LoseUnflushed,
    /// Every write survives (the process died just after a flush, or the OS had written
    /// its buffers).
    KeepUnflushed,
}

/// A [`StorageEngine`] holding everything in ordered maps in memory.
///
/// Durability follows sled's flush boundaries as far as the trait exposes them: a
/// [`Durability::Sync`] write, [`StorageEngine::meta_remove`] and
/// [`StorageEngine::flush`] make *every* earlier write durable (sled flushes the whole
/// log); [`Durability::Buffered`] writes, [`StorageEngine::remove`] and
/// [`StorageEngine::remove_hint_if`] are durable only from the next of those. (sled's
/// periodic flush thread is the caller's to model: call `flush` on its schedule.)
/// [`MemoryEngine::crash`] then decides whether unflushed writes survive.
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

/// Which map an undo record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Keyspace {
    Data,
    Hints,
    Meta,
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
    /// For every entry changed since the last flush, its value at that flush (`None`:
    /// absent). Undoing these gives the durable state; a flush empties it.
    unflushed: BTreeMap<(Keyspace, Vec<u8>), Option<Vec<u8>>>,
    /// Set by [`MemoryEngine::crash`]: the process this engine belonged to is gone,
    /// and every later call fails.
    crashed: bool,
}

/// The error of a call into an engine whose process has crashed.
#[derive(Debug, thiserror::Error)]
#[error("the node crashed (simulated)")]
struct Crashed;

impl State {
    /// Remembers the durable value of an entry about to change, unless the write is
    /// durable itself (then everything is flushed after it, see [`State::settle`]).
    fn remember(&mut self, keyspace: Keyspace, key: &[u8], durable_value: Option<Vec<u8>>) {
        self.unflushed
            .entry((keyspace, key.to_vec()))
            .or_insert(durable_value);
    }

    /// Applies a write's durability: a sync write flushes everything, as sled does.
    fn settle(&mut self, durability: Durability) {
        if durability == Durability::Sync {
            self.unflushed.clear();
        }
    }

    fn map(&mut self, keyspace: Keyspace) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        match keyspace {
            Keyspace::Data => &mut self.data,
            Keyspace::Hints => &mut self.hints,
            Keyspace::Meta => unreachable!("meta records are keyed by name"),
        }
    }

    /// Applies `f` to the entry at `key` of `keyspace`, stores its result and records
    /// the undo.
    fn update_entry(
        &mut self,
        keyspace: Keyspace,
        key: Vec<u8>,
        f: UpdateFn<'_>,
        durability: Durability,
    ) -> Option<Vec<u8>> {
        let map = self.map(keyspace);
        let old = map.get(&key).cloned();
        let new = f(old.as_deref());
        if new != old {
            match &new {
                Some(value) => map.insert(key.clone(), value.clone()),
                None => map.remove(&key),
            };
            self.remember(keyspace, &key, old);
        }
        self.settle(durability);
        new
    }

    /// Removes the entry at `key` of `keyspace` (buffered); returns whether it was there.
    fn remove_entry(&mut self, keyspace: Keyspace, key: Vec<u8>) -> bool {
        let old = self.map(keyspace).remove(&key);
        let existed = old.is_some();
        if existed {
            self.remember(keyspace, &key, old);
        }
        existed
    }

    /// The state a restarted process finds on disk: every unflushed change undone.
    fn durable(&self) -> State {
        let mut durable = State {
            data: self.data.clone(),
            hints: self.hints.clone(),
            meta: self.meta.clone(),
            unflushed: BTreeMap::new(),
            crashed: false,
        };
        for ((keyspace, key), value) in &self.unflushed {
            if *keyspace == Keyspace::Meta {
                let name = String::from_utf8_lossy(key).into_owned();
                match value {
                    Some(value) => durable.meta.insert(name, value.clone()),
                    None => durable.meta.remove(&name),
                };
                continue;
            }
            let map = durable.map(*keyspace);
            match value {
                Some(value) => map.insert(key.clone(), value.clone()),
                None => map.remove(key),
            };
        }
        durable
    }
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

    /// The state, unless the engine's process crashed.
    fn live(&self, op: &'static str) -> Result<MutexGuard<'_, State>> {
        let state = self.state();
        if state.crashed {
            return Err(StorageError::Backend {
                op,
                source: Box::new(Crashed),
            });
        }
        Ok(state)
    }

    /// Simulates the process dying: from now on every call to this engine fails (a
    /// dead process's tasks write nothing), and the returned engine holds what a
    /// restarted process finds in the same data directory: the flushed state, plus the
    /// unflushed writes under [`CrashMode::KeepUnflushed`]. The new engine starts with
    /// everything flushed.
    pub fn crash(&self, mode: CrashMode) -> MemoryEngine {
        let mut state = self.state();
        state.crashed = true;
        let survivor = match mode {
            CrashMode::LoseUnflushed => state.durable(),
            CrashMode::KeepUnflushed => State {
                data: state.data.clone(),
                hints: state.hints.clone(),
                meta: state.meta.clone(),
                unflushed: BTreeMap::new(),
                crashed: false,
            },
        };
        MemoryEngine {
            state: Mutex::new(survivor),
        }
    }

    /// How many entries (data, hints and meta records) changed since the last flush:
    /// what [`CrashMode::LoseUnflushed`] would undo.
    pub fn unflushed_entries(&self) -> usize {
        self.state().unflushed.len()
    }
}

impl fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryEngine")
            .field("data", &state.data.len())
            .field("hints", &state.hints.len())
            .field("meta", &state.meta.len())
            .field("unflushed", &state.unflushed.len())
            .field("crashed", &state.crashed)
            .finish()
    }
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
        Ok(self
            .live("read a data entry")?
            .data
            .get(&keys::data_key(key))
            .cloned())
    }

    fn update(
        &self,
        key: &[u8],
        f: UpdateFn<'_>,
        durability: Durability,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self.live("update a data entry")?.update_entry(
            Keyspace::Data,
            keys::data_key(key),
            f,
            durability,
        ))
    }

    fn remove(&self, key: &[u8]) -> Result<bool> {
        Ok(self
            .live("remove a data entry")?
            .remove_entry(Keyspace::Data, keys::data_key(key)))
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
        Ok(collect_ranges(
            &self.live("scan data entries")?.data,
            ranges,
            limit,
            user_key,
        ))
    }

    fn approximate_len(&self) -> u64 {
        self.state().data.len() as u64
    }

    fn space(&self) -> Result<StorageSpace> {
        // Summed on demand: this engine serves tests and the simulator, where a status
        // call's pass over the map costs nothing that matters.
        let live_bytes = self
            .state()
            .data
            .iter()
            .map(|(key, value)| (key.len() + value.len()) as u64)
            .sum();
        Ok(StorageSpace {
            live_bytes,
            disk_bytes: None,
        })
    }

    fn hint_update(
        &self,
        target: &NodeId,
        key: &[u8],
        f: UpdateFn<'_>,
        durability: Durability,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self.live("update a hint")?.update_entry(
            Keyspace::Hints,
            keys::hint_key(target, key),
            f,
            durability,
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
            &self.live("read hints")?.hints,
            vec![range],
            limit,
            user_key,
        ))
    }

    fn remove_hint_if(&self, target: &NodeId, key: &[u8], expected: &[u8]) -> Result<bool> {
        let mut state = self.live("remove a hint")?;
        let key = keys::hint_key(target, key);
        if state.hints.get(&key).map(Vec::as_slice) == Some(expected) {
            Ok(state.remove_entry(Keyspace::Hints, key))
        } else {
            Ok(false)
        }
    }

    fn hint_targets(&self) -> Result<Vec<(NodeId, u64)>> {
        keys::count_hint_targets(self.live("list hint targets")?.hints.keys().map(Ok))
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.live("read a meta record")?.meta.get(name).cloned())
    }

    fn meta_put(&self, name: &str, value: &[u8], durability: Durability) -> Result<()> {
        let mut state = self.live("write a meta record")?;
        let old = state.meta.insert(name.to_owned(), value.to_vec());
        state.remember(Keyspace::Meta, name.as_bytes(), old);
        state.settle(durability);
        Ok(())
    }

    fn meta_remove(&self, name: &str) -> Result<()> {
        let mut state = self.live("remove a meta record")?;
        state.meta.remove(name);
        state.settle(Durability::Sync);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.live("flush")?.unflushed.clear();
        Ok(())
    }

    fn may_block(&self) -> bool {
        false
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

    fn put(engine: &MemoryEngine, key: &[u8], value: &[u8], durability: Durability) {
        engine
            .update(key, &mut |_| Some(value.to_vec()), durability)
            .unwrap();
    }

    fn hint_for() -> NodeId {
        NodeId::new("home").unwrap()
    }

    /// Buffered writes of every kind after a sync write: what a crash may lose.
    fn engine_with_unflushed_writes() -> MemoryEngine {
        let engine = MemoryEngine::new();
        put(&engine, b"durable", b"1", Durability::Sync);
        put(&engine, b"gone", b"1", Durability::Sync);
        put(&engine, b"durable", b"2", Durability::Buffered);
        put(&engine, b"new", b"1", Durability::Buffered);
        assert!(engine.remove(b"gone").unwrap());
        engine
            .hint_update(
                &hint_for(),
                b"h",
                &mut |_| Some(b"x".to_vec()),
                Durability::Buffered,
            )
            .unwrap();
        engine.meta_put("m", b"1", Durability::Buffered).unwrap();
        engine
    }

    #[test]
    fn a_crash_losing_unflushed_writes_keeps_exactly_the_flushed_state() {
        let engine = engine_with_unflushed_writes();
        assert_eq!(engine.unflushed_entries(), 5);
        let after = engine.crash(CrashMode::LoseUnflushed);
        assert_eq!(after.get(b"durable").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            after.get(b"gone").unwrap(),
            Some(b"1".to_vec()),
            "removal undone"
        );
        assert_eq!(after.get(b"new").unwrap(), None);
        assert!(after.hints_for(&hint_for(), None, 10).unwrap().is_empty());
        assert_eq!(after.meta_get("m").unwrap(), None);
        assert_eq!(after.unflushed_entries(), 0);
    }

    #[test]
    fn a_crash_keeping_unflushed_writes_keeps_everything() {
        let engine = engine_with_unflushed_writes();
        let after = engine.crash(CrashMode::KeepUnflushed);
        assert_eq!(after.get(b"durable").unwrap(), Some(b"2".to_vec()));
        assert_eq!(after.get(b"gone").unwrap(), None);
        assert_eq!(after.get(b"new").unwrap(), Some(b"1".to_vec()));
        assert_eq!(after.hints_for(&hint_for(), None, 10).unwrap().len(), 1);
        assert_eq!(after.meta_get("m").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn a_sync_write_or_a_flush_makes_every_earlier_write_durable_like_sled() {
        // A sync write flushes the whole log, the buffered writes before it included.
        let engine = MemoryEngine::new();
        put(&engine, b"a", b"1", Durability::Buffered);
        put(&engine, b"b", b"1", Durability::Sync);
        put(&engine, b"c", b"1", Durability::Buffered);
        let after = engine.crash(CrashMode::LoseUnflushed);
        assert_eq!(after.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(after.get(b"c").unwrap(), None);
        // So does an explicit flush and a meta removal (always sync).
        put(&after, b"d", b"1", Durability::Buffered);
        after.flush().unwrap();
        put(&after, b"e", b"1", Durability::Buffered);
        after.meta_remove("nothing").unwrap();
        put(&after, b"f", b"1", Durability::Buffered);
        let again = after.crash(CrashMode::LoseUnflushed);
        assert_eq!(again.get(b"d").unwrap(), Some(b"1".to_vec()));
        assert_eq!(again.get(b"e").unwrap(), Some(b"1".to_vec()));
        assert_eq!(again.get(b"f").unwrap(), None);
    }

    #[test]
    fn a_value_rewritten_twice_before_a_crash_reverts_to_the_flushed_one() {
        let engine = MemoryEngine::new();
        put(&engine, b"k", b"1", Durability::Sync);
        put(&engine, b"k", b"2", Durability::Buffered);
        put(&engine, b"k", b"3", Durability::Buffered);
        let after = engine.crash(CrashMode::LoseUnflushed);
        assert_eq!(after.get(b"k").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn a_crashed_engine_refuses_every_call() {
        let engine = MemoryEngine::new();
        put(&engine, b"k", b"1", Durability::Sync);
        let _survivor = engine.crash(CrashMode::KeepUnflushed);
        assert!(matches!(
            engine.get(b"k"),
            Err(StorageError::Backend { .. })
        ));
        let write = engine.update(b"k", &mut |_| Some(b"2".to_vec()), Durability::Sync);
        assert!(matches!(write, Err(StorageError::Backend { .. })));
        assert!(engine.flush().is_err());
        assert!(engine.meta_get("m").is_err());
    }
}
