//! The node's clock actor: its node id and its current storage incarnation, persisted
//! in the engine's meta keyspace (I/O shell).
//!
//! Dotted version vectors (see [`crate::version`]) rely on one rule: an actor's dots for
//! a key are issued only by a node that holds every earlier dot of that actor for that
//! key. A write's clock entry `actor:n` claims every dot `actor:1..=n` as seen, so an
//! actor that issued `actor:719` for a key, lost that state, and then issued
//! `actor:1467` would make `actor:719` look superseded everywhere the new state is
//! merged, silently dropping the value it named.
//!
//! A node can lose its own dots for a key in two ways, and takes a fresh incarnation
//! (a new [`Actor`]) for each, so the lost dots are never covered by a new one:
//!
//! * at start, when its storage may be incomplete: a new or wiped data dir, or any
//!   unclean stop ([`ActorIdentity::open`]);
//! * at run time, when it deletes a key's stored state that mentions its current actor:
//!   the stray sweep after a range moved away, the clean-up after a transfer, a
//!   tombstone purge ([`crate::store::Store`] calls [`ActorIdentity::renew`] first).
//!
//! Each renewal adds one clock entry to the keys the node writes afterwards; the old
//! incarnation's entries are the oldest ones and go first when a clock is truncated
//! ([`crate::version::VectorClock::truncate`]), so renewals, which are rare (membership
//! changes, purges, crashes), cannot make clocks grow without bound.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use md5::{Digest, Md5};

use crate::NodeId;
use crate::cluster::Clock;
use crate::storage::{Durability, StorageEngine, StorageError};
use crate::version::Actor;

/// The meta record holding the current incarnation (8 bytes, big-endian).
const META_INCARNATION: &str = "incarnation";

/// Why the persisted incarnation could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The incarnation record is not 8 bytes.
    #[error("the incarnation record is {0} bytes, expected 8")]
    Corrupt(usize),
}

/// This node's clock actor, changeable at run time: the [`Actor`] its coordinated
/// writes are issued under. Owned by the node's [`crate::store::Store`], which reads it
/// inside each key's atomic update and renews it before removing a key's state that
/// mentions it, so a write and a removal of the same key are ordered.
#[derive(Debug)]
pub struct ActorIdentity {
    node: NodeId,
    /// Where fresh incarnations take their wall-clock input (simulated under the
    /// simulator, so a seeded run renews identically every time).
    clock: Clock,
    /// The current incarnation: read on every coordinated write, so a lock-free load.
    incarnation: AtomicU64,
    /// Serialises renewals, so each derives from the one before and persists in order.
    renewing: Mutex<()>,
    /// Renewals since this identity was opened (a figure for tests and the simulator).
    renewals: AtomicU64,
}

impl ActorIdentity {
    /// An identity that is not persisted, for a store without a node (tests, tools):
    /// [`renew`](Self::renew) still persists to the engine it is given.
    pub fn new(node: NodeId, incarnation: u64, clock: Clock) -> Self {
        Self {
            node,
            clock,
            incarnation: AtomicU64::new(incarnation),
            renewing: Mutex::new(()),
            renewals: AtomicU64::new(0),
        }
    }

    /// The identity at start: the persisted incarnation if the node's storage is
    /// `complete` (the last stop was clean, so every write the node acknowledged or
    /// issued a dot for is on disk), otherwise a fresh one, persisted durably before
    /// it is returned.
    ///
    /// A node in sync mode is no exception: a put is acknowledged once W replicas
    /// have it, which need not include the coordinator's own flush (see
    /// `Coordinator::coordinate_put`), so an unclean stop can lose the coordinator's
    /// own dot of an acknowledged write in either mode.
    ///
    /// # Errors
    /// Storage failures or an unreadable incarnation record.
    pub fn open(
        engine: &dyn StorageEngine,
        node: NodeId,
        clock: Clock,
        complete: bool,
    ) -> Result<Self, IdentityError> {
        let stored = read_incarnation(engine)?;
        let incarnation = match stored {
            Some(incarnation) if complete => incarnation,
            _ => {
                let fresh = fresh_incarnation(&node, clock, stored);
                engine.meta_put(META_INCARNATION, &fresh.to_be_bytes(), Durability::Sync)?;
                fresh
            }
        };
        Ok(Self::new(node, incarnation, clock))
    }

    /// The node this identity belongs to.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::SeqCst)
    }

    /// The current actor: the node in its current incarnation.
    pub fn current(&self) -> Actor {
        Actor::new(self.node.clone(), self.incarnation())
    }

    /// How many times [`renew`](Self::renew) switched the actor since this identity was
    /// opened.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Whether `actor` is the current actor.
    pub fn is_current(&self, actor: &Actor) -> bool {
        actor.node == self.node && actor.incarnation == self.incarnation()
    }

    /// Switches to a fresh incarnation, persisted durably in `engine` before it takes
    /// effect, and returns it. Called before the node deletes a key's state that holds
    /// its current actor's dots: writes coordinated afterwards use the new actor, whose
    /// clock entry claims none of the deleted dots.
    ///
    /// # Errors
    /// Storage failures; the current incarnation is then unchanged.
    pub fn renew(&self, engine: &dyn StorageEngine) -> Result<u64, StorageError> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        let _renewing = self
            .renewing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = self.incarnation();
        let fresh = fresh_incarnation(&self.node, self.clock, Some(previous));
        engine.meta_put(META_INCARNATION, &fresh.to_be_bytes(), Durability::Sync)?;
        self.incarnation.store(fresh, Ordering::SeqCst);
        self.renewals.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = %self.node, previous, incarnation = fresh, "new clock incarnation");
        Ok(fresh)
    }
}

/// The persisted incarnation, if any.
fn read_incarnation(engine: &dyn StorageEngine) -> Result<Option<u64>, IdentityError> {
    engine
        .meta_get(META_INCARNATION)?
        .map(|bytes| {
            <[u8; 8]>::try_from(bytes.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| IdentityError::Corrupt(bytes.len()))
        })
        .transpose()
}

/// A new incarnation: a hash of the node id, the wall clock and the previous
/// incarnation; with the system clock also the process id and the clock's nanoseconds,
/// so two starts in one millisecond differ. Under the simulator's clock it depends on
/// simulated inputs only, so a seeded run picks the same incarnations every time.
/// Never equal to `previous`.
fn fresh_incarnation(node: &NodeId, clock: Clock, previous: Option<u64>) -> u64 {
    let mut hasher = Md5::new();
    hasher.update(node.as_str().as_bytes());
    hasher.update(clock.wall().0.to_be_bytes());
    if !clock.is_simulated() {
        hasher.update(std::process::id().to_be_bytes());
        hasher.update(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
                .to_be_bytes(),
        );
    }
    if let Some(previous) = previous {
        hasher.update(previous.to_be_bytes());
    }
    let digest: [u8; 16] = hasher.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let fresh = u64::from_be_bytes(first);
    if Some(fresh) == previous {
        fresh.wrapping_add(1)
    } else {
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;
    use crate::time::Millis;

    fn node() -> NodeId {
        NodeId::new("n0").unwrap()
    }

    #[test]
    fn a_first_start_persists_a_fresh_incarnation_and_a_complete_restart_keeps_it() {
        let engine = MemoryEngine::new();
        let first = ActorIdentity::open(&engine, node(), Clock::default(), true).unwrap();
        assert_eq!(
            read_incarnation(&engine).unwrap(),
            Some(first.incarnation())
        );
        let again = ActorIdentity::open(&engine, node(), Clock::default(), true).unwrap();
        assert_eq!(again.incarnation(), first.incarnation());
        let unclean = ActorIdentity::open(&engine, node(), Clock::default(), false).unwrap();
        assert_ne!(unclean.incarnation(), first.incarnation());
        assert_eq!(
            read_incarnation(&engine).unwrap(),
            Some(unclean.incarnation())
        );
    }

    #[test]
    fn renew_changes_the_actor_and_persists_it_first() {
        let engine = MemoryEngine::new();
        let identity = ActorIdentity::open(&engine, node(), Clock::default(), true).unwrap();
        let before = identity.current();
        let fresh = identity.renew(&engine).unwrap();
        assert_ne!(fresh, before.incarnation);
        assert!(!identity.is_current(&before));
        assert!(identity.is_current(&Actor::new(node(), fresh)));
        assert_eq!(read_incarnation(&engine).unwrap(), Some(fresh));
        assert_eq!(identity.renewals(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_simulated_clock_renewals_are_reproducible() {
        let clock = Clock::tokio(Millis(1_000));
        let run = || {
            let engine = MemoryEngine::new();
            let identity = ActorIdentity::new(node(), 7, clock);
            (0..3)
                .map(|_| identity.renew(&engine).unwrap())
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let mut unique = first.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 3, "each renewal is new: {first:?}");
    }

    #[test]
    fn a_corrupt_record_is_an_error() {
        let engine = MemoryEngine::new();
        engine
            .meta_put(META_INCARNATION, &[1, 2, 3], Durability::Sync)
            .unwrap();
        let err = ActorIdentity::open(&engine, node(), Clock::default(), true).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt(3)), "{err}");
    }
}
