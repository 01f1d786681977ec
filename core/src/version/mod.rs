//! Versioning: vector clocks, sibling sets and client contexts (Dynamo §4.4).
//!
//! No I/O: every function here maps values to values; wall-clock time comes in as
//! [`Millis`](crate::time::Millis) parameters.
//!
//! Dynamo §4.4 gives every write a vector clock, returns all concurrent versions of a
//! key to the client with one context, and lets the client's next write (with that
//! context) supersede them. This module keeps that contract with two fixes Riak
//! learned in production:
//!
//! * **Dotted version vectors** ([`SiblingSet`]): the key's state has one clock for
//!   everything seen and each live version keeps only the [`Dot`] of the write that
//!   made it. Two writes with the same context through one coordinator both survive,
//!   and siblings do not pile up as with per-version clocks.
//! * **Actor incarnations** ([`Actor`]): clock entries belong to a node *in one life
//!   of its storage*. A clock entry `actor:n` claims every dot `actor:1..=n`, so an
//!   actor may issue a dot for a key only while its node holds every earlier dot of
//!   that actor for the key. A node that may have lost some (a start without all its
//!   data, or a removal of a key's state that held them: stray sweep, purge) takes a
//!   new incarnation, so it cannot make a new write cover, or look covered by, one it
//!   no longer holds (KV679). The node's current actor lives in
//!   the node's `identity::ActorIdentity`.
//!
//! Clocks are truncated past a threshold, oldest entry first, as in the paper, but
//! never an entry that a live version's dot needs.
//!
//! The pieces: [`VectorClock`] and [`Dot`]; [`SiblingSet`] with
//! [`put`](SiblingSet::put) (coordinator write) and [`merge`](SiblingSet::merge)
//! (replica sync, read reconciliation, repair, handoff, anti-entropy);
//! [`context::encode`] / [`context::decode`] for the opaque client context; and
//! [`SiblingSet::to_bytes`] / [`SiblingSet::from_bytes`] for storage.

mod clock;
pub mod context;
mod siblings;
mod stored;

#[cfg(test)]
mod history_tests;

pub use clock::{Actor, Causality, ClockEntry, Dot, VectorClock};
pub use context::ContextError;
pub use siblings::{
    LimitsError, MAX_SIBLINGS_LIMIT, PutOutcome, Sibling, SiblingLimits, SiblingSet, Value,
    VersionError,
};
pub use stored::{
    MAX_STORED_CLOCK_ENTRIES, MAX_STORED_SIBLINGS, STORAGE_FORMAT_VERSION, StorageFormatError,
};

/// How a cluster reconciles concurrent writes of one key (Dynamo §4.4 and §6: the two
/// patterns the paper's services used). The choice is per cluster: every node must
/// run with the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reconciliation {
    /// Business-logic reconciliation: a read returns every concurrent version
    /// (siblings) and the client writes back one with the read's context.
    #[default]
    Siblings,
    /// Timestamp reconciliation: a put supersedes every version its coordinator holds
    /// as well as its context, and a read returns only the version with the latest
    /// timestamp (ties broken by the write's dot, so every replica picks the same).
    /// Wall clocks decide: a write from a node whose clock runs behind can lose to an
    /// earlier one.
    LastWriteWins,
}

impl Reconciliation {
    /// The setting's name (`siblings`, `last-write-wins`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reconciliation::Siblings => "siblings",
            Reconciliation::LastWriteWins => "last-write-wins",
        }
    }

    /// What a read returns of `state`: all of it, or under last-write-wins only the
    /// winning version, with the whole clock (so a put with the read's context still
    /// supersedes every version the state holds).
    pub fn view(self, state: SiblingSet) -> SiblingSet {
        match self {
            Reconciliation::Siblings => state,
            Reconciliation::LastWriteWins => state.last_write_view(),
        }
    }
}

/// Sibling sets are what the quorum machines reconcile: merging replies is the replica
/// merge (a join-semilattice: commutative, associative, idempotent).
impl crate::quorum::Reconcile for SiblingSet {
    fn reconcile(&mut self, other: &Self) {
        self.merge(other);
    }
}
