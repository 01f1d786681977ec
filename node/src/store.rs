//! Sibling sets on top of a byte-level storage engine (I/O shell).
//!
//! The engine stores opaque bytes with an atomic read-modify-write per key; this layer
//! decodes the stored [`SiblingSet`], applies the version rules (a coordinator's put, a
//! replica's merge) inside that atomic update, and encodes the result. Two concurrent
//! writes to one key therefore never lose either (the engine retries the closure on a
//! conflict, which is why the closures here are pure).
//!
//! The store owns the node's clock actor ([`ActorIdentity`]): a coordinated write reads
//! it inside the key's atomic update, and every removal of a key's state that mentions
//! it renews it first, so the node never issues a dot whose clock entry would claim
//! dots it no longer holds (see [`crate::identity`]).
//!
//! Hinted writes (Dynamo §4.6) are kept twice on a stand-in: merged into its data, so
//! reads that reach the stand-in see them, and merged into a hint record for the home
//! node, which the handoff loop delivers and then deletes.

use std::sync::Arc;

use crate::NodeId;
use crate::identity::ActorIdentity;
use crate::ring::TokenRange;
use crate::storage::{Durability, GroupCommit, StorageEngine, StorageError};
use crate::time::Millis;
use crate::version::{
    MAX_STORED_CLOCK_ENTRIES, MAX_STORED_SIBLINGS, Reconciliation, SiblingLimits, SiblingSet,
    StorageFormatError, Value, VersionError, context::Context,
};

/// What can go wrong reading or writing a key's versions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Stored bytes did not decode: on-disk corruption or a format from the future.
    #[error("stored state of a key is unreadable: {0}")]
    Corrupt(#[from] StorageFormatError),
    /// The write broke a version rule (too many siblings).
    #[error(transparent)]
    Version(#[from] VersionError),
    /// The key's state would outgrow what one internode message carries (or what the
    /// stored-state decoder accepts); the record is left as it was.
    #[error(
        "the key's versions would take {bytes} bytes in {siblings} siblings, more than a key may hold ({MAX_STATE_BYTES} bytes, {MAX_STORED_SIBLINGS} siblings); read the key and resolve its siblings, or write a smaller value"
    )]
    StateTooLarge {
        /// The encoded size the state would have.
        bytes: usize,
        /// The siblings it would have.
        siblings: usize,
    },
}

pub use dynamo_core::limits::MAX_STATE_BYTES;

/// Whether an encoded state of `bytes` bytes may be stored, and why not.
fn check_state_size(state: &SiblingSet, bytes: usize) -> Result<(), StoreError> {
    if bytes > MAX_STATE_BYTES
        || state.len() > MAX_STORED_SIBLINGS
        || state.clock().len() > MAX_STORED_CLOCK_ENTRIES
    {
        return Err(StoreError::StateTooLarge {
            bytes,
            siblings: state.len(),
        });
    }
    Ok(())
}

/// What a coordinated put left: the key's state after it, to replicate, and the context
/// the client gets back (see [`SiblingSet::put_context`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinated {
    /// The key's whole state after the put.
    pub state: SiblingSet,
    /// What the writer has seen: the context it sent and its new version.
    pub context: Context,
}

/// Typed access to one node's keys and hints.
#[derive(Clone)]
pub struct Store {
    /// Shared with the handoff loop and the servers; the engine does its own locking.
    engine: Arc<dyn StorageEngine>,
    limits: SiblingLimits,
    /// The actor this node's coordinated writes are issued under; renewed before a
    /// removal of a key's state that mentions it.
    identity: Arc<ActorIdentity>,
    /// Told of every change to a key's data (anti-entropy's Merkle trees); `None` skips
    /// the per-key locks and digests entirely.
    observer: Option<Arc<dyn StoreObserver>>,
    /// Serialise a key's data change with its report to the observer, and with a tree
    /// build reading the key, so the observer sees each key's changes as a chain.
    key_locks: Arc<KeyLocks>,
    /// Coalesces the async request path's waits for durability into shared flushes.
    commit: Arc<GroupCommit>,
    /// How coordinated writes treat the versions already here (see
    /// [`Store::coordinate`]).
    reconciliation: Reconciliation,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("limits", &self.limits)
            .field("actor", &self.identity.current())
            .finish()
    }
}

/// Encodes a state for the engine; the empty state is stored as "no record".
fn encode(state: &SiblingSet) -> Option<Vec<u8>> {
    (!state.is_empty()).then(|| state.to_bytes())
}

/// Decodes a stored state; a missing record is the empty state.
pub fn decode_state(bytes: Option<&[u8]>) -> Result<SiblingSet, StorageFormatError> {
    match bytes {
        None | Some([]) => Ok(SiblingSet::new()),
        Some(bytes) => SiblingSet::from_bytes(bytes),
    }
}

/// Encodes a state for the wire: the empty state is empty bytes.
pub fn encode_state(state: &SiblingSet) -> Vec<u8> {
    encode(state).unwrap_or_default()
}

impl Store {
    /// Wraps an engine; coordinated writes are issued under `identity`'s actor.
    pub fn new(
        engine: Arc<dyn StorageEngine>,
        limits: SiblingLimits,
        identity: Arc<ActorIdentity>,
    ) -> Self {
        Self {
            engine,
            limits,
            identity,
            observer: None,
            key_locks: Arc::new(KeyLocks::new()),
            commit: Arc::new(GroupCommit::new()),
            reconciliation: Reconciliation::Siblings,
        }
    }

    /// The same store, coordinating writes under `reconciliation`: with
    /// last-write-wins a put supersedes every version this replica holds of the key,
    /// besides those its context covers.
    #[must_use]
    pub fn with_reconciliation(mut self, reconciliation: Reconciliation) -> Self {
        self.reconciliation = reconciliation;
        self
    }

    /// How coordinated writes reconcile (see [`with_reconciliation`](Self::with_reconciliation)).
    pub fn reconciliation(&self) -> Reconciliation {
        self.reconciliation
    }

    /// Waits, without holding a thread, until every write applied so far is on disk:
    /// for a flush of the engine that starts after this call. Concurrent callers share
    /// flushes (group commit), so a request path can apply its writes with
    /// [`Durability::Buffered`] and then await this.
    ///
    /// # Errors
    /// The flush failed; the writes stay applied in memory.
    pub async fn make_durable(&self) -> Result<(), StoreError> {
        if !self.engine.may_block() {
            // An engine that never blocks (in memory) flushes inline, which keeps a
            // simulated run on one thread and so deterministic.
            return Ok(self.engine.flush()?);
        }
        let engine = Arc::clone(&self.engine);
        Ok(self.commit.sync_async(move || engine.flush()).await?)
    }

    /// The node's clock actor (its current incarnation).
    pub fn identity(&self) -> &Arc<ActorIdentity> {
        &self.identity
    }

    /// The engine underneath (for metadata and flushes).
    pub fn engine(&self) -> &Arc<dyn StorageEngine> {
        &self.engine
    }

    /// This replica's versions of `key` (empty if none).
    ///
    /// # Errors
    /// Storage failures and undecodable stored bytes.
    pub fn read(&self, key: &[u8]) -> Result<SiblingSet, StoreError> {
        Ok(decode_state(self.engine.get(key)?.as_deref())?)
    }

    /// The coordinator's write (Dynamo §4.4): supersedes what `context` covers, adds the
    /// new version under the node's current actor, and returns the key's whole new
    /// state, which is then replicated.
    ///
    /// The actor is read inside the key's atomic update, so a removal of the key that
    /// renews the actor is ordered with this write: the write either lands before the
    /// removal (which then sees a changed key and keeps it) or after the renewal.
    ///
    /// # Errors
    /// Storage failures, corrupt stored state, or too many siblings (the key is left
    /// unchanged).
    pub fn coordinate(
        &self,
        key: &[u8],
        context: &Context,
        value: Value,
        now: Millis,
        durability: Durability,
    ) -> Result<Coordinated, StoreError> {
        let mut outcome: Option<Result<Coordinated, StoreError>> = None;
        self.observed_update(
            key,
            &mut |current| {
                // Read on every attempt: a retried update must see a renewal that
                // happened meanwhile.
                let actor = self.identity.current();
                let result = decode_state(current)
                    .map_err(StoreError::from)
                    .and_then(|mut state| {
                        // Last-write-wins: the new version supersedes what is here too.
                        let context = match self.reconciliation {
                            Reconciliation::Siblings => context.clone(),
                            Reconciliation::LastWriteWins => context.union(&state.context()),
                        };
                        let written = state
                            .put(&context, value.clone(), &actor, now, &self.limits)
                            .map_err(StoreError::from)?;
                        let context = state.put_context(&context, &written.dot);
                        Ok(Coordinated { state, context })
                    })
                    .and_then(|coordinated| {
                        let bytes = encode(&coordinated.state);
                        let len = bytes.as_ref().map_or(0, Vec::len);
                        check_state_size(&coordinated.state, len)?;
                        Ok((coordinated, bytes))
                    });
                let (result, next) = match result {
                    Ok((coordinated, bytes)) => (Ok(coordinated), bytes),
                    // Leave the record exactly as it was.
                    Err(error) => (Err(error), current.map(<[u8]>::to_vec)),
                };
                outcome = Some(result);
                next
            },
            durability,
        )?;
        outcome.unwrap_or_else(|| {
            Ok(Coordinated {
                state: SiblingSet::new(),
                context: Context::new(),
            })
        })
    }

    /// The replica's write: merges `incoming` into the stored state (Dynamo §4.5 replica
    /// writes, read repair, hint delivery) and returns the merged state.
    ///
    /// # Errors
    /// Storage failures or corrupt stored state (the record is left unchanged).
    pub fn merge(
        &self,
        key: &[u8],
        incoming: &SiblingSet,
        durability: Durability,
    ) -> Result<SiblingSet, StoreError> {
        merge_with(|f| self.observed_update(key, f, durability), incoming)
    }

    /// Records a hinted write for `home` (merged with any earlier hint for the key).
    ///
    /// # Errors
    /// Storage failures or corrupt stored hint.
    pub fn add_hint(
        &self,
        home: &NodeId,
        key: &[u8],
        incoming: &SiblingSet,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let engine = Arc::clone(&self.engine);
        merge_with(
            |f| engine.hint_update(home, key, f, durability).map(|_| ()),
            incoming,
        )
        .map(|_| ())
    }

    /// Up to `limit` hints for `home` after key `after`, as (key, encoded state, state).
    ///
    /// # Errors
    /// Storage failures or corrupt stored hints.
    pub fn hints_for(
        &self,
        home: &NodeId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Hint>, StoreError> {
        self.engine
            .hints_for(home, after, limit)?
            .into_iter()
            .map(|(key, raw)| {
                let state = decode_state(Some(&raw))?;
                Ok(Hint { key, raw, state })
            })
            .collect()
    }

    /// Deletes a delivered hint unless it changed since it was read.
    ///
    /// # Errors
    /// Storage failures.
    pub fn remove_hint(&self, home: &NodeId, hint: &Hint) -> Result<bool, StoreError> {
        Ok(self.engine.remove_hint_if(home, &hint.key, &hint.raw)?)
    }
}

/// One page of [`Store::scan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// `(key, state)` in ring order; continue after the last key.
    pub entries: Vec<(Vec<u8>, SiblingSet)>,
    /// Nothing remains in the range after the last entry.
    pub done: bool,
}

impl From<ScanPage> for crate::transport::RangePage {
    /// A page of the local store, as a peer receives it.
    fn from(page: ScanPage) -> Self {
        Self {
            entries: page
                .entries
                .into_iter()
                .map(|(key, state)| crate::transport::RangeEntry { key, state })
                .collect(),
            done: page.done,
        }
    }
}

/// How many entries [`Store::scan`] reads from the engine at a time, so a page's byte
/// budget bounds memory even when values are large.
const SCAN_CHUNK: usize = 64;

impl Store {
    /// Up to `max_entries` keys of `range` after `after` (ring order, see
    /// [`StorageEngine::scan`]), stopping early once the page holds `max_bytes` of keys and
    /// encoded states; a page holds at least one entry when any remain.
    ///
    /// # Errors
    /// Storage failures (a cursor outside the range, a zero `max_entries`) and corrupt
    /// stored state.
    pub fn scan(
        &self,
        range: TokenRange,
        after: Option<&[u8]>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, StoreError> {
        if max_entries == 0 {
            return Err(StorageError::ZeroLimit.into());
        }
        let mut page = ScanPage::default();
        let mut bytes = 0usize;
        let mut cursor = after.map(<[u8]>::to_vec);
        loop {
            let want = SCAN_CHUNK.min(max_entries - page.entries.len());
            let chunk = self.engine.scan(range, cursor.as_deref(), want)?;
            let exhausted = chunk.len() < want;
            for (key, raw) in chunk {
                if !page.entries.is_empty() && bytes + key.len() + raw.len() > max_bytes {
                    return Ok(page);
                }
                bytes += key.len() + raw.len();
                let state = decode_state(Some(&raw))?;
                cursor = Some(key.clone());
                page.entries.push((key, state));
            }
            if exhausted {
                page.done = true;
                return Ok(page);
            }
            if page.entries.len() >= max_entries || bytes >= max_bytes {
                return Ok(page);
            }
        }
    }

    /// Merges a batch of states (range transfer, anti-entropy). With
    /// [`Durability::Sync`] the whole batch is flushed once at the end rather than per key:
    /// the caller's acknowledgement waits for the flush either way.
    ///
    /// # Errors
    /// Storage failures or corrupt stored state; entries before the failing one are
    /// merged (harmless: merging is idempotent, so the sender retries the batch).
    pub fn merge_batch(
        &self,
        entries: &[(Vec<u8>, SiblingSet)],
        durability: Durability,
    ) -> Result<(), StoreError> {
        for (key, state) in entries {
            self.merge(key, state, Durability::Buffered)?;
        }
        if durability == Durability::Sync {
            self.engine.flush()?;
        }
        Ok(())
    }
}

/// Told of every change to a key's stored data made through a [`Store`] (coordinator
/// writes, replica merges, batches, purges): the digests ([`state_digest`]) of the
/// stored bytes before and after, `None` for absent.
///
/// Called while the store holds the key's lock, so calls for one key arrive in the
/// order the changes happened; it must be quick and must not call back into the store.
pub trait StoreObserver: Send + Sync + 'static {
    /// `key`'s stored state went from `old` to `new` (equal when a write changed
    /// nothing).
    fn changed(&self, key: &[u8], old: Option<[u8; 16]>, new: Option<[u8; 16]>);
}

/// The digest of a key's stored bytes: MD5 of the canonical storage encoding, equal to
/// [`SiblingSet::digest`] of the decoded state.
pub fn state_digest(raw: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(raw).into()
}

/// Striped per-key locks: a key's change and its report to the observer happen under
/// its stripe. 1024 std mutexes: an uncontended lock costs tens of nanoseconds, and two
/// writes collide only when their keys share a stripe.
struct KeyLocks {
    stripes: Vec<std::sync::Mutex<()>>,
}

impl KeyLocks {
    const STRIPES: usize = 1024;

    fn new() -> Self {
        Self {
            stripes: (0..Self::STRIPES)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let stripe = (hasher.finish() % Self::STRIPES as u64) as usize;
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store {
    /// This store, reporting every data change to `observer` from now on. Set it before
    /// cloning the store: clones made earlier do not report.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn StoreObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs `f` while holding `key`'s lock, so no change to the key through this store
    /// (or its clones) happens meanwhile: how a Merkle tree build reads a key
    /// consistently with the changes the observer reports.
    pub fn with_key_locked<T>(&self, key: &[u8], f: impl FnOnce() -> T) -> T {
        let _guard = self.key_locks.lock(key);
        f()
    }

    /// An atomic update of `key` through the engine, reported to the observer.
    ///
    /// With an observer, the update runs buffered under the key's lock and a
    /// [`Durability::Sync`] flush follows after the lock is released, so a slow fsync
    /// never holds up writers of other keys on the same stripe.
    fn observed_update(
        &self,
        key: &[u8],
        f: crate::storage::UpdateFn<'_>,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let Some(observer) = &self.observer else {
            return self.engine.update(key, f, durability).map(|_| ());
        };
        {
            let _guard = self.key_locks.lock(key);
            // The last call's input is what the update replaced; a write that changed
            // nothing (a replayed batch, a redelivered hint) costs no digests.
            let mut old: Option<Option<[u8; 16]>> = None;
            let new = self.engine.update(
                key,
                &mut |current| {
                    let next = f(current);
                    old = (next.as_deref() != current).then(|| current.map(state_digest));
                    next
                },
                Durability::Buffered,
            )?;
            if let Some(old) = old {
                observer.changed(key, old, new.as_deref().map(state_digest));
            }
        }
        if durability == Durability::Sync {
            self.engine.flush()?;
        }
        Ok(())
    }

    /// Removes `key` if its stored state holds only tombstones and its digest is still
    /// `expected` (compare-and-delete, the last step of a tombstone purge); returns
    /// whether it did.
    ///
    /// The tombstone is made durable (the engine flushed) before it is removed, and
    /// the removal itself is buffered, like [`StorageEngine::remove`]: a crash can
    /// then undo the removal, which leaves the tombstone for a later purge, but never
    /// the tombstone. Without the flush, a buffered replica that received the
    /// tombstone by repair and lost it, with the removal, in a crash that loses
    /// unflushed writes would come back holding the value the delete superseded,
    /// after every other replica had dropped the tombstone that could supersede it
    /// again (found by the simulator's purge-during-faults runs).
    ///
    /// A tombstone that holds the node's own dots renews its actor first (see
    /// [`Store::remove_unchanged`]).
    ///
    /// # Errors
    /// Storage failures or corrupt stored state.
    pub fn remove_tombstone_if(&self, key: &[u8], expected: [u8; 16]) -> Result<bool, StoreError> {
        self.remove_if(key, expected, |engine, raw| {
            if !decode_state(Some(raw))?.tombstone_only() {
                return Ok(false);
            }
            engine.flush()?;
            Ok(true)
        })
    }

    /// Removes `key` if its stored state's digest is still `expected`
    /// (compare-and-delete, the last step of handing a stray key over to its
    /// replicas: a write that arrived meanwhile keeps the key for the next sweep);
    /// returns whether it did. Buffered, like [`StorageEngine::remove`]: a removal
    /// undone by a crash leaves the key, which a later sweep hands over again.
    ///
    /// A state that mentions the node's current actor renews the actor, durably,
    /// before it is removed: a key that comes back to this node later (the ring moves
    /// again) is written under a new actor, whose dots claim none of the removed ones.
    ///
    /// # Errors
    /// Storage failures.
    pub fn remove_unchanged(&self, key: &[u8], expected: [u8; 16]) -> Result<bool, StoreError> {
        self.remove_if(key, expected, |_, _| Ok(true))
    }

    /// Removes `key` if its stored digest is `expected` and `also` accepts its bytes
    /// (it may first prepare the removal on the engine, under the key's lock).
    ///
    /// If the state mentions the node's current actor, the actor is renewed (durably)
    /// before the removal: once the state is gone, the node no longer holds its own
    /// dots for the key, and a later write under the same actor would issue a dot whose
    /// clock entry claims them, dropping whatever they name on every replica that still
    /// holds them (the simulator found this after a stray sweep; see
    /// [`crate::identity`]).
    fn remove_if(
        &self,
        key: &[u8],
        expected: [u8; 16],
        also: impl FnOnce(&dyn StorageEngine, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let _guard = self.key_locks.lock(key);
        let Some(raw) = self.engine.get(key)? else {
            return Ok(false);
        };
        let digest = state_digest(&raw);
        if digest != expected || !also(self.engine.as_ref(), &raw)? {
            return Ok(false);
        }
        // The actor is read after the state: a state holding the current actor's dots
        // was written under it, so this read sees that actor or a later one.
        if self.mentions_current_actor(&raw) {
            self.identity.renew(self.engine.as_ref())?;
        }
        // Compare-and-delete through the engine's atomic update: a write that landed
        // since the read (coordinated writes do not take the key's lock without an
        // observer) keeps the key, and a write retried after the removal reads the
        // renewed actor.
        let mut removed = false;
        self.engine.update(
            key,
            &mut |current| {
                removed = current == Some(raw.as_slice());
                if removed {
                    None
                } else {
                    current.map(<[u8]>::to_vec)
                }
            },
            Durability::Buffered,
        )?;
        if removed {
            if let Some(observer) = &self.observer {
                observer.changed(key, Some(digest), None);
            }
        }
        Ok(removed)
    }

    /// Whether the stored bytes mention the current actor; undecodable bytes count as
    /// mentioning it (a needless renewal costs one clock entry, a missed one a write).
    fn mentions_current_actor(&self, raw: &[u8]) -> bool {
        let actor = self.identity.current();
        decode_state(Some(raw)).map_or(true, |state| state.mentions(&actor))
    }
}

/// One stored hint.
#[derive(Debug, Clone)]
pub struct Hint {
    /// The user key.
    pub key: Vec<u8>,
    /// The stored bytes, for compare-and-delete after delivery.
    pub raw: Vec<u8>,
    /// The decoded state to deliver.
    pub state: SiblingSet,
}

/// Runs a merge of `incoming` through an engine's atomic update.
fn merge_with(
    update: impl FnOnce(&mut dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>>) -> Result<(), StorageError>,
    incoming: &SiblingSet,
) -> Result<SiblingSet, StoreError> {
    let mut outcome: Option<Result<SiblingSet, StoreError>> = None;
    update(&mut |current| {
        let result = decode_state(current)
            .map_err(StoreError::from)
            .and_then(|mut state| {
                state.merge(incoming);
                // A merge only joins what both sides hold, but two replicas' siblings
                // together can outgrow what a stored state may be: refused, the record
                // stays readable (the replicas stay apart until a put resolves them).
                let bytes = encode(&state);
                check_state_size(&state, bytes.as_ref().map_or(0, Vec::len))?;
                Ok((state, bytes))
            });
        match result {
            Ok((state, bytes)) => {
                outcome = Some(Ok(state));
                bytes
            }
            Err(error) => {
                outcome = Some(Err(error));
                current.map(<[u8]>::to_vec)
            }
        }
    })?;
    outcome.unwrap_or_else(|| Ok(SiblingSet::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Token;
    use crate::storage::MemoryEngine;
    use crate::version::Actor;

    fn actor(name: &str) -> Actor {
        Actor::new(NodeId::new(name).unwrap(), 1)
    }

    fn identity(name: &str) -> Arc<ActorIdentity> {
        Arc::new(ActorIdentity::new(
            NodeId::new(name).unwrap(),
            1,
            crate::cluster::Clock::default(),
        ))
    }

    /// A store in memory whose writes are coordinated by actor `name`#1.
    fn store_of(name: &str) -> Store {
        Store::new(
            Arc::new(MemoryEngine::new()),
            SiblingLimits::default(),
            identity(name),
        )
    }

    fn store() -> Store {
        store_of("a")
    }

    #[test]
    fn coordinate_then_read_returns_the_value_and_a_covering_context() {
        let store = store();
        let state = store
            .coordinate(
                b"k",
                &Context::new(),
                Value::data(&b"v1"[..]),
                Millis(1),
                Durability::Sync,
            )
            .unwrap()
            .state;
        assert_eq!(store.read(b"k").unwrap(), state);
        // A put with the read's context supersedes the first value (Dynamo §4.4).
        let next = store
            .coordinate(
                b"k",
                &state.context(),
                Value::data(&b"v2"[..]),
                Millis(2),
                Durability::Sync,
            )
            .unwrap()
            .state;
        assert_eq!(next.values().collect::<Vec<_>>(), vec![&b"v2"[..]]);
    }

    #[test]
    fn concurrent_blind_writes_through_two_coordinators_become_siblings() {
        let store = store();
        let a = store
            .coordinate(
                b"k",
                &Context::new(),
                Value::data(&b"a"[..]),
                Millis(1),
                Durability::Buffered,
            )
            .unwrap()
            .state;
        let other = store_of("b");
        let b = other
            .coordinate(
                b"k",
                &Context::new(),
                Value::data(&b"b"[..]),
                Millis(1),
                Durability::Buffered,
            )
            .unwrap()
            .state;
        let merged = store.merge(b"k", &b, Durability::Sync).unwrap();
        assert_eq!(merged.len(), 2);
        // Merging again is idempotent.
        assert_eq!(store.merge(b"k", &a, Durability::Sync).unwrap(), merged);
    }

    #[test]
    fn too_many_siblings_is_an_error_and_leaves_the_key_unchanged() {
        let limits = SiblingLimits::new(2, 1, 10).unwrap();
        let store = Store::new(Arc::new(MemoryEngine::new()), limits, identity("a"));
        // Blind writes by one coordinator are concurrent: each stays a sibling.
        for i in 0..2u8 {
            store
                .coordinate(
                    b"k",
                    &Context::new(),
                    Value::data(vec![i]),
                    Millis(1),
                    Durability::Sync,
                )
                .unwrap();
        }
        let before = store.read(b"k").unwrap();
        let err = store
            .coordinate(
                b"k",
                &Context::new(),
                Value::data(&b"c"[..]),
                Millis(1),
                Durability::Sync,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Version(VersionError::TooManySiblings { .. })
            ),
            "{err}"
        );
        assert_eq!(store.read(b"k").unwrap(), before);
    }

    #[test]
    fn corrupt_stored_bytes_are_an_error_not_a_panic() {
        let engine = Arc::new(MemoryEngine::new());
        engine
            .update(
                b"k",
                &mut |_| Some(vec![0xff, 0x00, 0x13]),
                Durability::Sync,
            )
            .unwrap();
        let store = Store::new(engine, SiblingLimits::default(), identity("a"));
        assert!(matches!(store.read(b"k"), Err(StoreError::Corrupt(_))));
        let incoming = SiblingSet::new();
        assert!(matches!(
            store.merge(b"k", &incoming, Durability::Sync),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn hints_merge_per_key_and_are_removed_only_if_unchanged() {
        let store = store();
        let home = NodeId::new("home").unwrap();
        let mut v1 = SiblingSet::new();
        v1.put(
            &Context::new(),
            Value::data(&b"1"[..]),
            &actor("a"),
            Millis(1),
            &SiblingLimits::default(),
        )
        .unwrap();
        store.add_hint(&home, b"k", &v1, Durability::Sync).unwrap();
        let hints = store.hints_for(&home, None, 10).unwrap();
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[0].state, v1);
        // A second hinted write for the key lands while the first is being delivered.
        let mut v2 = SiblingSet::new();
        v2.put(
            &Context::new(),
            Value::data(&b"2"[..]),
            &actor("b"),
            Millis(1),
            &SiblingLimits::default(),
        )
        .unwrap();
        store.add_hint(&home, b"k", &v2, Durability::Sync).unwrap();
        assert!(
            !store.remove_hint(&home, &hints[0]).unwrap(),
            "changed hint must survive"
        );
        let hints = store.hints_for(&home, None, 10).unwrap();
        assert_eq!(hints[0].state.len(), 2);
        assert!(store.remove_hint(&home, &hints[0]).unwrap());
        assert!(store.hints_for(&home, None, 10).unwrap().is_empty());
    }

    #[test]
    fn wire_encoding_of_the_empty_state_is_empty() {
        assert!(encode_state(&SiblingSet::new()).is_empty());
        assert_eq!(decode_state(Some(&[])).unwrap(), SiblingSet::new());
    }

    fn filled(keys: usize, value_len: usize) -> Store {
        let store = store();
        for i in 0..keys {
            store
                .coordinate(
                    format!("key-{i}").as_bytes(),
                    &Context::new(),
                    Value::data(vec![7u8; value_len]),
                    Millis(1),
                    Durability::Buffered,
                )
                .unwrap();
        }
        store
    }

    /// Pages through the whole range with the given limits, returning every key seen.
    fn scan_all(store: &Store, range: TokenRange, entries: usize, bytes: usize) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        for _ in 0..10_000 {
            let page = store.scan(range, after.as_deref(), entries, bytes).unwrap();
            assert!(page.entries.len() <= entries);
            if let Some((last, _)) = page.entries.last() {
                after = Some(last.clone());
            }
            seen.extend(page.entries.into_iter().map(|(key, _)| key));
            if page.done {
                return seen;
            }
        }
        panic!("scan did not finish in 10000 pages");
    }

    #[test]
    fn paging_a_range_visits_every_key_in_it_exactly_once() {
        let store = filled(300, 10);
        let range = TokenRange::new(Token(u128::MAX / 3), Token(u128::MAX / 3 * 2));
        let mut expected: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("key-{i}").into_bytes())
            .filter(|key| range.contains(Token::of(key)))
            .collect();
        expected.sort();
        for (entries, bytes) in [
            (1, usize::MAX),
            (7, usize::MAX),
            (1000, usize::MAX),
            (50, 100),
        ] {
            let mut seen = scan_all(&store, range, entries, bytes);
            let unique = seen.len();
            seen.sort();
            seen.dedup();
            assert_eq!(
                seen.len(),
                unique,
                "a key came twice with limits {entries}/{bytes}"
            );
            assert_eq!(seen, expected, "limits {entries}/{bytes}");
        }
    }

    #[test]
    fn the_byte_budget_cuts_a_page_but_never_to_nothing() {
        let store = filled(20, 1000);
        let page = store.scan(TokenRange::full(), None, 20, 2500).unwrap();
        assert_eq!(
            page.entries.len(),
            2,
            "two 1 KB entries fit in 2500 bytes, three do not"
        );
        assert!(!page.done);
        let tiny = store.scan(TokenRange::full(), None, 20, 1).unwrap();
        assert_eq!(
            tiny.entries.len(),
            1,
            "one entry even when it alone exceeds the budget"
        );
    }

    #[test]
    fn a_merged_batch_is_readable_and_replaying_it_changes_nothing() {
        // Range transfer replays batches after a crash: merging by vector clock makes
        // that harmless.
        let source = filled(5, 3);
        let page = source
            .scan(TokenRange::full(), None, 10, usize::MAX)
            .unwrap();
        assert_eq!(page.entries.len(), 5);
        let target = store();
        target.merge_batch(&page.entries, Durability::Sync).unwrap();
        target
            .merge_batch(&page.entries, Durability::Buffered)
            .unwrap();
        for (key, state) in &page.entries {
            assert_eq!(&target.read(key).unwrap(), state);
        }
    }

    /// Values of `state`, as strings, in dot order.
    fn strings(state: &SiblingSet) -> Vec<String> {
        state
            .values()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect()
    }

    fn put(store: &Store, context: &Context, value: Option<&str>, now: u64) -> SiblingSet {
        let value = value.map_or(Value::Tombstone, |v| Value::data(v.as_bytes().to_vec()));
        store
            .coordinate(b"k", context, value, Millis(now), Durability::Buffered)
            .unwrap()
            .state
    }

    #[test]
    fn a_node_that_swept_a_key_away_does_not_cover_its_earlier_dots_when_it_writes_again() {
        // The simulator's seed 4000937 in miniature: n0 coordinates e11 (superseding
        // e5), the state reaches n8, n0 hands the key over and removes it (the stray
        // sweep), becomes a replica again and coordinates a blind put. Under the same
        // actor the new dot's clock entry would claim e11's dot, and n8 would drop e11.
        let n0 = store_of("n0");
        let n8 = store_of("n8");
        let first = put(&n0, &Context::new(), Some("e5"), 500);
        let superseding = put(&n0, &first.context(), Some("e11"), 719);
        assert_eq!(strings(&superseding), ["e11"]);
        n8.merge(b"k", &superseding, Durability::Sync).unwrap();

        let before = n0.identity().current();
        let digest = n0.read(b"k").unwrap().digest();
        assert!(n0.remove_unchanged(b"k", digest).unwrap());
        assert!(n0.read(b"k").unwrap().is_empty());

        let blind = put(&n0, &Context::new(), Some("e12"), 1467);
        let merged = n8.merge(b"k", &blind, Durability::Sync).unwrap();
        assert_eq!(
            strings(&merged),
            ["e11", "e12"],
            "the blind put is concurrent with e11, not a successor"
        );
        assert!(
            !n0.identity().is_current(&before),
            "removing a state with our own dots takes a new actor"
        );
    }

    #[test]
    fn a_purge_of_a_tombstone_with_own_dots_takes_a_new_actor() {
        // n0 deletes k; n8 keeps its copy of the tombstone (a purge stopped halfway);
        // n0 purges its own and writes k again after its wall clock stepped back. Under
        // the same actor the new dot (counted from the clock) would be one the surviving
        // tombstone covers, and n8 would drop the acknowledged write.
        let n0 = store_of("n0");
        let n8 = store_of("n8");
        let written = put(&n0, &Context::new(), Some("v"), 5_000);
        let deleted = put(&n0, &written.context(), None, 5_001);
        assert!(deleted.tombstone_only());
        n8.merge(b"k", &deleted, Durability::Sync).unwrap();

        let before = n0.identity().current();
        assert!(n0.remove_tombstone_if(b"k", deleted.digest()).unwrap());

        let again = put(&n0, &Context::new(), Some("back"), 1_000);
        let merged = n8.merge(b"k", &again, Durability::Sync).unwrap();
        assert_eq!(strings(&merged), ["back"]);
        assert!(!n0.identity().is_current(&before));
    }

    #[test]
    fn removing_a_state_without_own_dots_keeps_the_actor() {
        // Renewals cost a clock entry on later writes: only a removal that loses our
        // own dots takes one.
        let n0 = store_of("n0");
        let n8 = store_of("n8");
        let foreign = put(&n8, &Context::new(), Some("theirs"), 10);
        n0.merge(b"k", &foreign, Durability::Sync).unwrap();
        let before = n0.identity().current();
        assert!(n0.remove_unchanged(b"k", foreign.digest()).unwrap());
        assert!(n0.identity().is_current(&before));
    }

    #[test]
    fn removing_a_state_that_names_the_actor_only_in_its_clock_keeps_the_actor() {
        // n0's value was superseded by n8's write: n0 is in the clock, in no live dot.
        // A later, larger n0 dot covers only dots already superseded, so no new actor
        // (and no extra clock entry) is needed.
        let n0 = store_of("n0");
        let n8 = store_of("n8");
        let own = put(&n0, &Context::new(), Some("ours"), 10);
        n8.merge(b"k", &own, Durability::Sync).unwrap();
        let theirs = put(&n8, &own.context(), Some("theirs"), 20);
        n0.merge(b"k", &theirs, Durability::Sync).unwrap();
        let stored = n0.read(b"k").unwrap();
        assert_eq!(strings(&stored), ["theirs"]);
        let before = n0.identity().current();
        assert!(stored.clock().entry(&before).is_some(), "{stored:?}");
        assert!(n0.remove_unchanged(b"k", stored.digest()).unwrap());
        assert!(n0.identity().is_current(&before));
    }

    #[test]
    fn renewals_leave_the_clock_bounded_by_truncation() {
        // Each renewal puts one more actor of this node into the clocks of keys it
        // writes afterwards; the old incarnations stop advancing, so their entries are
        // the oldest and truncation (Dynamo §4.4) drops them first.
        let n0 = store_of("n0");
        let limit = SiblingLimits::default().max_clock_entries();
        let mut context = Context::new();
        for round in 0..3 * limit as u64 {
            let state = put(&n0, &context, Some(&format!("v{round}")), 10 + round);
            assert!(state.clock().len() <= limit, "round {round}: {state:?}");
            assert_eq!(strings(&state), [format!("v{round}")]);
            context = state.context();
            n0.identity().renew(n0.engine().as_ref()).unwrap();
        }
    }

    #[test]
    fn a_put_that_would_outgrow_a_key_s_state_is_refused_and_changes_nothing() {
        let store = store();
        let half = vec![1u8; MAX_STATE_BYTES / 2 + 1024];
        let first = store
            .coordinate(
                b"k",
                &Context::new(),
                Value::data(half.clone()),
                Millis(1),
                Durability::Buffered,
            )
            .unwrap()
            .state;
        // A concurrent (blind) second half would make two siblings over the bound.
        let refused = store
            .coordinate(
                b"k",
                &Context::new(),
                Value::data(half.clone()),
                Millis(2),
                Durability::Buffered,
            )
            .unwrap_err();
        assert!(
            matches!(refused, StoreError::StateTooLarge { siblings: 2, .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("resolve its siblings"));
        assert_eq!(store.read(b"k").unwrap(), first);
        // Superseding the first instead keeps one sibling: accepted.
        store
            .coordinate(
                b"k",
                &first.context(),
                Value::data(half),
                Millis(3),
                Durability::Buffered,
            )
            .unwrap();
    }

    #[test]
    fn a_merge_that_would_outgrow_what_a_stored_state_may_be_is_refused() {
        // Two replicas each under the sibling bound, together over what the stored
        // state decoder accepts: merging them would leave a record nothing can read.
        let limits = SiblingLimits::new(4096, 4096, 10_000).unwrap();
        let many = |name: &str| {
            let mut state = SiblingSet::new();
            for i in 0..(MAX_STORED_SIBLINGS / 2 + 1) as u64 {
                let actor = Actor::new(NodeId::new(format!("{name}{i}")).unwrap(), 1);
                state
                    .put(
                        &Context::new(),
                        Value::data(vec![1]),
                        &actor,
                        Millis(1),
                        &limits,
                    )
                    .unwrap();
            }
            state
        };
        let (left, right) = (many("a"), many("b"));
        let store = store();
        store.merge(b"k", &left, Durability::Buffered).unwrap();
        let refused = store.merge(b"k", &right, Durability::Buffered).unwrap_err();
        assert!(
            matches!(refused, StoreError::StateTooLarge { .. }),
            "{refused}"
        );
        assert_eq!(store.read(b"k").unwrap(), left, "the record stays readable");
    }

    #[test]
    fn a_removal_of_a_changed_key_does_nothing() {
        let n0 = store_of("n0");
        let stale = put(&n0, &Context::new(), Some("one"), 10);
        put(&n0, &Context::new(), Some("two"), 11);
        assert!(!n0.remove_unchanged(b"k", stale.digest()).unwrap());
        assert_eq!(strings(&n0.read(b"k").unwrap()), ["one", "two"]);
    }

    #[test]
    fn a_renewed_actor_survives_a_restart_of_the_sled_engine() {
        use crate::storage::{SledConfig, SledEngine};

        let dir = tempfile::tempdir().unwrap();
        let node = NodeId::new("n0").unwrap();
        let clock = crate::cluster::Clock::default();
        let renewed = {
            let engine = Arc::new(SledEngine::open(&SledConfig::new(dir.path())).unwrap());
            let identity =
                Arc::new(ActorIdentity::open(engine.as_ref(), node.clone(), clock, true).unwrap());
            let started = identity.incarnation();
            let store = Store::new(engine, SiblingLimits::default(), identity);
            let state = put(&store, &Context::new(), Some("v"), 10);
            assert!(store.remove_unchanged(b"k", state.digest()).unwrap());
            let renewed = store.identity().incarnation();
            assert_ne!(renewed, started);
            renewed
        };
        let engine = SledEngine::open(&SledConfig::new(dir.path())).unwrap();
        let reopened = ActorIdentity::open(&engine, node, clock, true).unwrap();
        assert_eq!(reopened.incarnation(), renewed);
    }

    #[test]
    fn a_zero_entry_scan_is_an_error() {
        assert!(store().scan(TokenRange::full(), None, 0, 10).is_err());
    }
}
