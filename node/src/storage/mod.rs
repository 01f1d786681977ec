//! Local persistence: byte-level storage engines behind one trait (Dynamo §5).
//!
//! This is the first module of the I/O shell, not of the pure core: [`SledEngine`] does
//! disk I/O, and every call blocks the calling thread (no async, no clocks). Async
//! callers run it on a blocking-friendly thread or accept short blocking; the critical
//! sections are small. The one exception is the group commit's async wait
//! (`GroupCommit::sync_async`, behind [`Store::make_durable`](crate::store::Store::make_durable)),
//! so that a durable write on the request path waits for its shared flush without
//! holding a thread.
//!
//! Dynamo §5: "Dynamo's local persistence component allows for different storage engines
//! to be plugged in". [`StorageEngine`] is that plug: the node holds an
//! `Arc<dyn StorageEngine>`. The engine stores opaque value bytes; the typed layer above
//! decodes them into sibling sets and merges inside [`StorageEngine::update`], which is
//! an atomic read-modify-write per key.
//!
//! Three keyspaces:
//! * **data**: user key to value, ordered by the key's ring token (Dynamo §4.2) so that
//!   a key range can be scanned for anti-entropy (§4.7) and transfer (§4.9).
//! * **hints**: hinted-handoff records (§4.6, "hints ... kept in a separate local
//!   database"), keyed by the node they are meant for.
//! * **meta**: small named records (node incarnation, member table, clean-shutdown
//!   marker).
//!
//! [`Durability`] is Dynamo §6.1's per-write choice between a synchronous disk write and
//! the in-memory write buffer flushed by a periodic writer thread.
//!
//! **Bounded results.** No method returns an unbounded collection except
//! [`StorageEngine::hint_targets`], which is bounded by the number of members. Scans take
//! a `limit` of at least 1 (zero is rejected with [`StorageError::ZeroLimit`], since an
//! empty page would read as "done" and end a pagination loop early).
//!
//! **Sled's disk use.** sled 0.34 is a log-structured store whose files can grow well
//! past the live data (garage dropped sled in v1.0 after databases reached tens of GB).
//! The engine is behind [`StorageEngine`] so it can be replaced without touching the
//! protocol; [`StorageEngine::space`] reports the data directory's size beside the live
//! bytes it holds (`dynamoctl status`, the `dynamo_storage_*_bytes` gauges), so the
//! amplification is watched, not guessed.

mod disk_usage;
mod durable_files;
mod group_commit;
mod keys;
mod memory;
mod sled_engine;
#[cfg(test)]
mod suite;

pub use durable_files::SyncCounts;
pub use dynamo_config::settings::{Durability, MAX_FLUSH_INTERVAL, SledConfig, SledConfigError};
pub(crate) use group_commit::GroupCommit;
pub use memory::{CrashMode, MemoryEngine};
pub use sled_engine::SledEngine;

use crate::NodeId;
use crate::ring::TokenRange;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The underlying engine (sled, the disk) failed.
    #[error("storage engine failed to {op}")]
    Backend {
        /// What the engine was doing, e.g. "read a data entry".
        op: &'static str,
        /// The engine's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An entry read back from disk does not have the layout this module writes.
    #[error("corrupted {keyspace} entry: {reason}")]
    Corrupted {
        /// The keyspace holding the entry: "data", "hints" or "meta".
        keyspace: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A scan was asked for zero entries.
    #[error("scan limit must be at least 1")]
    ZeroLimit,
    /// A scan cursor (`after`) whose token is not in the scanned range.
    #[error("scan cursor is outside the scanned range")]
    CursorOutsideRange,
}

/// The result of a storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What the data keyspace holds, and what the engine's files take on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StorageSpace {
    /// Bytes of the data keyspace's entries: each internal key (token and user key) plus
    /// its stored value (every sibling with its clock). Kept by every write, so
    /// approximate in the way [`StorageEngine::approximate_len`] is.
    pub live_bytes: u64,
    /// Bytes allocated to the engine's files (every keyspace, its log, pages not yet
    /// reclaimed), as `du` counts them; `None` for an engine without files.
    pub disk_bytes: Option<u64>,
}

/// An atomic read-modify-write step: given the current value (`None` if absent), the
/// new value (`None` deletes).
///
/// The engine may call it more than once (a compare-and-swap loop retries when another
/// writer got in first), each time with the then-current value, and only the last
/// call's result is stored. It must therefore be a pure function of its input: no side
/// effects that must happen once.
pub type UpdateFn<'f> = &'f mut dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>>;

/// A local storage engine: three keyspaces of opaque bytes (see the [module docs](self)).
///
/// Object safe; the node holds an `Arc<dyn StorageEngine>`. Every method may block on
/// disk I/O.
pub trait StorageEngine: Send + Sync + 'static {
    /// The value of `key` in the data keyspace.
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Atomically replaces the value of `key` with `f(current)` and returns the new value
    /// (`None` if `f` deleted it or left it absent).
    ///
    /// Two concurrent updates of one key never lose either: each `f` sees the other's
    /// result or is retried. See [`UpdateFn`]: `f` may run more than once and must be
    /// pure.
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails; nothing is written then, except
    /// that with [`Durability::Sync`] the write may be in memory but not yet on disk.
    fn update(
        &self,
        key: &[u8],
        f: UpdateFn<'_>,
        durability: Durability,
    ) -> Result<Option<Vec<u8>>>;

    /// Deletes `key` from the data keyspace; returns whether it was there.
    ///
    /// Buffered (Dynamo deletes are tombstones written with [`update`](Self::update);
    /// this is for purging and for data transferred away, where a removal undone by a
    /// crash is harmless).
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails.
    fn remove(&self, key: &[u8]) -> Result<bool>;

    /// Up to `limit` data entries `(key, value)` whose key token lies in `range`, in ring
    /// order: clockwise from `range.start`, which is token order except that a wrapping
    /// range (`start >= end`, the full ring included) lists the tokens after `start`
    /// before those from zero. Keys with equal tokens come in byte order.
    ///
    /// Pagination: pass the key of the last entry returned as `after` to continue; the
    /// scan is done when a page comes back empty or shorter than `limit`. Entries written
    /// between pages are seen if they sort after the cursor.
    ///
    /// # Errors
    /// [`StorageError::ZeroLimit`] for `limit == 0`; [`StorageError::CursorOutsideRange`]
    /// when `after`'s token is not in `range`; [`StorageError::Corrupted`] for an entry
    /// whose internal key is not a valid data key; [`StorageError::Backend`].
    fn scan(
        &self,
        range: TokenRange,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The number of keys in the data keyspace. Approximate: an engine may count entries
    /// it cannot decode, and concurrent writes move it.
    fn approximate_len(&self) -> u64;

    /// Live bytes of the data keyspace and the engine's size on disk.
    ///
    /// Cost: a walk of the data directory's entries (a few dozen files for sled).
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the directory cannot be read.
    fn space(&self) -> Result<StorageSpace>;

    /// Atomically updates the hint for `key` meant for `target`, like
    /// [`update`](Self::update). The typed layer merges repeated hints for one key into
    /// one record, so the hint store grows with keys, not writes.
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails.
    fn hint_update(
        &self,
        target: &NodeId,
        key: &[u8],
        f: UpdateFn<'_>,
        durability: Durability,
    ) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` hints `(key, value)` meant for `target`, in key byte order, strictly
    /// after key `after` if given. Never returns another target's hints.
    ///
    /// # Errors
    /// [`StorageError::ZeroLimit`] for `limit == 0`; [`StorageError::Backend`].
    fn hints_for(
        &self,
        target: &NodeId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Deletes the hint for `key` meant for `target` only if its value is still
    /// `expected` (the value that was delivered); returns whether it was deleted. A hint
    /// updated during delivery stays, to be delivered again. Buffered: a removal undone
    /// by a crash only causes a harmless redelivery.
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails.
    fn remove_hint_if(&self, target: &NodeId, key: &[u8], expected: &[u8]) -> Result<bool>;

    /// Every node with hints waiting, with the number of hints (the handoff backlog),
    /// ordered by node id bytes. Cost: one pass over all hints.
    ///
    /// # Errors
    /// [`StorageError::Corrupted`] for a hint key without a valid target;
    /// [`StorageError::Backend`].
    fn hint_targets(&self) -> Result<Vec<(NodeId, u64)>>;

    /// The meta record `name`.
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails.
    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Stores the meta record `name`.
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails.
    fn meta_put(&self, name: &str, value: &[u8], durability: Durability) -> Result<()>;

    /// Deletes the meta record `name`, always with [`Durability::Sync`]: removing a
    /// record such as a clean-shutdown marker must not be undone by a crash.
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails.
    fn meta_remove(&self, name: &str) -> Result<()>;

    /// Makes every write acknowledged so far durable.
    ///
    /// # Errors
    /// [`StorageError::Backend`] when the engine fails to write to disk.
    fn flush(&self) -> Result<()>;

    /// Whether calls may block on disk I/O, so that async callers should run them on
    /// tokio's blocking pool. An engine that never blocks (the in-memory one) is called
    /// inline instead, which keeps a simulated run on one thread and so deterministic.
    fn may_block(&self) -> bool {
        true
    }
}

/// Runs `f`, a call into an engine, on tokio's blocking pool if the engine
/// [may block](StorageEngine::may_block), inline otherwise.
pub(crate) async fn run_engine_call<T: Send + 'static>(
    engine: &dyn StorageEngine,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, tokio::task::JoinError> {
    if engine.may_block() {
        tokio::task::spawn_blocking(f).await
    } else {
        Ok(f())
    }
}

/// Checks a scan limit.
fn check_limit(limit: usize) -> Result<()> {
    if limit == 0 {
        Err(StorageError::ZeroLimit)
    } else {
        Ok(())
    }
}
