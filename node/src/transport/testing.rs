//! Test handlers shared by the gRPC and in-memory transport tests: a small but real
//! replica (it stores, merges, coordinates puts and gossips) and one that never
//! answers.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    ForwardedPut, MergeBatch, MerkleQuery, RangeEntry, RangePage, RangeScan, ReplicaError,
    ReplicaHandler, ReplicaWrite,
};
use crate::NodeId;
use crate::membership::MemberTable;
use crate::merkle::{Hash, MerkleTree};
use crate::ring::Token;
use crate::time::Millis;
use crate::version::context::Context;
use crate::version::{Actor, SiblingLimits, SiblingSet, Value, context};

pub(crate) fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

/// A state with two concurrent values and a concurrent delete (three siblings).
pub(crate) fn concurrent_state_with_tombstone() -> SiblingSet {
    let limits = SiblingLimits::default();
    let mut state = SiblingSet::new();
    for (name, value) in [
        ("a", Value::data(&b"x"[..])),
        ("b", Value::data(&b"y"[..])),
        ("c", Value::Tombstone),
    ] {
        let mut theirs = SiblingSet::new();
        theirs
            .put(
                &Context::new(),
                value,
                &Actor::new(node(name), 1),
                Millis(10),
                &limits,
            )
            .unwrap();
        state.merge(&theirs);
    }
    state
}

/// One replica's data, held in memory.
#[derive(Debug)]
pub(crate) struct TestReplica {
    actor: Actor,
    limits: SiblingLimits,
    /// A std mutex: held for map operations only, never across an `.await`.
    state: Mutex<ReplicaState>,
}

#[derive(Debug, Default)]
struct ReplicaState {
    data: HashMap<Vec<u8>, SiblingSet>,
    hints: Vec<(Vec<u8>, NodeId)>,
    table: MemberTable,
    /// When set, every call fails with this error (a node shutting down, say).
    refuse: Option<ReplicaError>,
    /// Logical time for put timestamps, so runs are deterministic.
    ticks: u64,
    /// Writes to this key are refused with `InvalidArgument` (one bad write of a batch).
    refused_key: Option<Vec<u8>>,
    /// Writes that arrived as single `write` calls.
    single_writes: usize,
    /// The size of every `write_batch` call, in arrival order.
    batches: Vec<usize>,
    /// Reads that arrived as single `read` calls.
    single_reads: usize,
    /// The size of every `read_batch` call, in arrival order.
    read_batches: Vec<usize>,
}

impl TestReplica {
    /// A replica named `name` that knows itself as a member.
    pub(crate) fn new(name: &str) -> Self {
        Self::with_limits(name, SiblingLimits::default())
    }

    pub(crate) fn with_limits(name: &str, limits: SiblingLimits) -> Self {
        let mut table = MemberTable::new();
        table.join(node(name), "127.0.0.1:1", 1).unwrap();
        Self {
            actor: Actor::new(node(name), 1),
            limits,
            state: Mutex::new(ReplicaState {
                table,
                ..ReplicaState::default()
            }),
        }
    }

    pub(crate) fn refuse_with(&self, error: Option<ReplicaError>) {
        self.state.lock().unwrap().refuse = error;
    }

    pub(crate) fn refuse_key(&self, key: &[u8]) {
        self.state.lock().unwrap().refused_key = Some(key.to_vec());
    }

    /// How many writes arrived alone, and the size of each batch that arrived.
    pub(crate) fn write_calls(&self) -> (usize, Vec<usize>) {
        let state = self.state.lock().unwrap();
        (state.single_writes, state.batches.clone())
    }

    /// How many reads arrived alone, and the size of each read batch that arrived.
    pub(crate) fn read_calls(&self) -> (usize, Vec<usize>) {
        let state = self.state.lock().unwrap();
        (state.single_reads, state.read_batches.clone())
    }

    /// One read; the refused key is refused (one bad read of a batch).
    fn read_one(&self, key: &[u8]) -> Result<SiblingSet, ReplicaError> {
        let state = self.serve()?;
        if state.refused_key.as_deref() == Some(key) {
            return Err(ReplicaError::InvalidArgument("refused key".into()));
        }
        Ok(state.data.get(key).cloned().unwrap_or_default())
    }

    fn apply_write(&self, write: ReplicaWrite) -> Result<(), ReplicaError> {
        let mut state = self.serve()?;
        if state.refused_key.as_deref() == Some(write.key.as_slice()) {
            return Err(ReplicaError::InvalidArgument("refused key".into()));
        }
        state
            .data
            .entry(write.key.clone())
            .or_default()
            .merge(&write.state);
        if let Some(home) = write.hint_for {
            state.hints.push((write.key, home));
        }
        Ok(())
    }

    pub(crate) fn stored(&self, key: &[u8]) -> SiblingSet {
        let state = self.state.lock().unwrap();
        state.data.get(key).cloned().unwrap_or_default()
    }

    pub(crate) fn hints(&self) -> Vec<(Vec<u8>, NodeId)> {
        self.state.lock().unwrap().hints.clone()
    }

    pub(crate) fn table(&self) -> MemberTable {
        self.state.lock().unwrap().table.clone()
    }

    /// Locks the state, or fails the call if the replica refuses calls.
    fn serve(&self) -> Result<std::sync::MutexGuard<'_, ReplicaState>, ReplicaError> {
        let state = self.state.lock().unwrap();
        match &state.refuse {
            Some(error) => Err(error.clone()),
            None => Ok(state),
        }
    }
}

#[async_trait]
impl ReplicaHandler for TestReplica {
    async fn read(&self, key: Vec<u8>) -> Result<SiblingSet, ReplicaError> {
        self.state.lock().unwrap().single_reads += 1;
        self.read_one(&key)
    }

    async fn read_batch(&self, keys: Vec<Vec<u8>>) -> Vec<Result<SiblingSet, ReplicaError>> {
        self.state.lock().unwrap().read_batches.push(keys.len());
        keys.iter().map(|key| self.read_one(key)).collect()
    }

    async fn write(&self, write: ReplicaWrite) -> Result<(), ReplicaError> {
        self.state.lock().unwrap().single_writes += 1;
        self.apply_write(write)
    }

    async fn write_batch(&self, writes: Vec<ReplicaWrite>) -> Vec<Result<(), ReplicaError>> {
        self.state.lock().unwrap().batches.push(writes.len());
        writes
            .into_iter()
            .map(|write| self.apply_write(write))
            .collect()
    }

    async fn coordinate_put(&self, put: ForwardedPut) -> Result<Vec<u8>, ReplicaError> {
        if put.w == Some(0) {
            return Err(ReplicaError::InvalidArgument("w must be at least 1".into()));
        }
        let mut state = self.serve()?;
        state.ticks += 1;
        let now = Millis(state.ticks);
        let value = put.value.map_or(Value::Tombstone, Value::data);
        let entry = state.data.entry(put.key).or_default();
        entry
            .put(&put.context, value, &self.actor, now, &self.limits)
            .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
        Ok(context::encode(&entry.context()))
    }

    async fn gossip(&self, table: MemberTable) -> Result<MemberTable, ReplicaError> {
        let mut state = self.serve()?;
        state.table.merge(&table);
        Ok(state.table.clone())
    }

    /// Ring order from the range's start, like the storage engines; ignores `max_bytes`.
    async fn scan_range(&self, scan: RangeScan) -> Result<RangePage, ReplicaError> {
        let state = self.serve()?;
        // Distance clockwise from the range start orders a wrapping range correctly.
        let position = |key: &[u8]| Token::of(key).0.wrapping_sub(scan.range.start.0);
        let mut keys: Vec<&Vec<u8>> = state
            .data
            .keys()
            .filter(|key| scan.range.contains(Token::of(key)))
            .collect();
        keys.sort_by_key(|key| (position(key), key.to_vec()));
        let start = match &scan.after {
            Some(after) => keys
                .iter()
                .position(|key| (position(key), key.as_slice()) > (position(after), after))
                .unwrap_or(keys.len()),
            None => 0,
        };
        let entries: Vec<RangeEntry> = keys[start..]
            .iter()
            .take(scan.max_entries as usize)
            .map(|key| RangeEntry {
                key: key.to_vec(),
                state: state.data[*key].clone(),
            })
            .collect();
        let done = start + entries.len() == keys.len();
        Ok(RangePage { entries, done })
    }

    async fn merge_batch(&self, batch: MergeBatch) -> Result<(), ReplicaError> {
        let mut state = self.serve()?;
        for entry in batch.entries {
            state.data.entry(entry.key).or_default().merge(&entry.state);
        }
        Ok(())
    }

    /// Builds the tree of the asked shape from the data on every call.
    async fn merkle_hashes(&self, query: MerkleQuery) -> Result<Vec<Hash>, ReplicaError> {
        let state = self.serve()?;
        let entries = state
            .data
            .iter()
            .filter(|(key, data)| query.range.contains(Token::of(key)) && !data.is_empty())
            .map(|(key, data)| (key.clone(), data.digest()));
        let tree = MerkleTree::from_entries(query.range, query.depth, entries)
            .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
        let hashes = tree
            .hashes_at(query.level, &query.indices)
            .map_err(|e| ReplicaError::InvalidArgument(e.to_string()))?;
        Ok(hashes.into_iter().map(|(_, hash)| hash).collect())
    }

    async fn purge_tombstone(&self, key: Vec<u8>, digest: Hash) -> Result<bool, ReplicaError> {
        let mut state = self.serve()?;
        let matches = state
            .data
            .get(&key)
            .is_some_and(|data| data.tombstone_only() && data.digest() == digest);
        if matches {
            state.data.remove(&key);
        }
        Ok(matches)
    }
}

/// A peer that accepts every call and never answers (a hung or stopped process).
#[derive(Debug)]
pub(crate) struct NeverAnswers;

#[async_trait]
impl ReplicaHandler for NeverAnswers {
    async fn read(&self, _key: Vec<u8>) -> Result<SiblingSet, ReplicaError> {
        std::future::pending().await
    }

    async fn write(&self, _write: ReplicaWrite) -> Result<(), ReplicaError> {
        std::future::pending().await
    }

    async fn coordinate_put(&self, _put: ForwardedPut) -> Result<Vec<u8>, ReplicaError> {
        std::future::pending().await
    }

    async fn gossip(&self, _table: MemberTable) -> Result<MemberTable, ReplicaError> {
        std::future::pending().await
    }

    async fn scan_range(&self, _scan: RangeScan) -> Result<RangePage, ReplicaError> {
        std::future::pending().await
    }

    async fn merge_batch(&self, _batch: MergeBatch) -> Result<(), ReplicaError> {
        std::future::pending().await
    }

    async fn merkle_hashes(&self, _query: MerkleQuery) -> Result<Vec<Hash>, ReplicaError> {
        std::future::pending().await
    }

    async fn purge_tombstone(&self, _key: Vec<u8>, _digest: Hash) -> Result<bool, ReplicaError> {
        std::future::pending().await
    }
}
