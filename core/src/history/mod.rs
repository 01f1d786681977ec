//! Client histories and the checker that judges them (no I/O).
//!
//! A test that drives a cluster (the deterministic simulator, or a multi-process fault
//! suite) records every client operation in a [`History`]: its invocation, its
//! completion and what it returned, in the order the client saw them. After the faults
//! heal and background work has run, it marks the history [quiesced](History::quiesced),
//! reads every key once more (the *final reads*), and dumps each replica's versions of
//! each key into a [`ReplicaDump`]. [`check`] then gives the verdicts:
//!
//! 1. **No acknowledged write is lost**: every value whose put was acknowledged is
//!    returned by every final read of its key, unless a later write whose context
//!    covered it (acknowledged, or of unknown outcome) superseded it.
//! 2. **Replicas converge**: every replica of every key holds the same versions.
//! 3. **Nothing superseded comes back**: a value covered by the clock of an
//!    acknowledged delete's (or put's) context never shows up in a final read or a
//!    replica again. (A value the context knows only as a single dot, from a put's
//!    returned context, may stay as a sibling where the coordinator lacked it: see
//!    `version::context`.)
//!
//! Writes whose outcome is unknown (a timeout, a failed quorum: Dynamo keeps a write
//! its coordinator stored even when too few replicas acknowledged it) may or may not
//! survive; the checker demands nothing of them.
//!
//! **Causality without dots.** Clients never see the dot of the version a put created,
//! only contexts. A context is a *witness* for a value when it certainly covers it: the
//! context a put returned covers the value it wrote, and the context a read returned
//! covers every value the read returned. Contexts only grow (replicas merge clocks), so
//! a write whose context descends from a witness of `v` supersedes `v`.
//!
//! **Assumption.** Every put writes a value unique within its key (the simulator and
//! fault suites write counters); a value written twice makes the history ambiguous and
//! is reported as such.

mod check;

pub use check::{Verdict, Violation, check};

use std::collections::BTreeMap;

use md5::{Digest, Md5};

use crate::version::context::Context;

/// Index of an operation in its [`History`].
pub type OpId = usize;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// A put of `value` (`None`: a delete) with `context` (empty: a blind write).
    Put {
        /// The value written, or `None` for a delete.
        value: Option<Vec<u8>>,
        /// The context the client sent.
        context: Context,
    },
    /// A read.
    Get,
}

/// How an operation ended, as far as the client knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not completed (yet); judged like [`Outcome::Unknown`].
    Pending,
    /// The put was acknowledged with this context.
    PutOk {
        /// The context the put returned.
        context: Context,
    },
    /// The read returned these values (tombstones left out) and this context.
    GetOk {
        /// The data values returned.
        values: Vec<Vec<u8>>,
        /// The context returned.
        context: Context,
    },
    /// The operation certainly had no effect (refused before anything was written).
    Failed,
    /// The operation may or may not have taken effect (timeout, failed quorum, the
    /// serving node died).
    Unknown,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The key.
    pub key: Vec<u8>,
    /// What was asked.
    pub kind: OpKind,
    /// Position of the invocation in the history's event order.
    pub invoked_at: usize,
    /// Position of the completion, if it completed.
    pub completed_at: Option<usize>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    /// The value a put wrote (`None` for reads and deletes).
    pub fn written_value(&self) -> Option<&[u8]> {
        match &self.kind {
            OpKind::Put {
                value: Some(value), ..
            } => Some(value),
            _ => None,
        }
    }

    /// The context a put sent (`None` for reads).
    pub fn put_context(&self) -> Option<&Context> {
        match &self.kind {
            OpKind::Put { context, .. } => Some(context),
            OpKind::Get => None,
        }
    }

    /// Whether this is a delete.
    pub fn is_delete(&self) -> bool {
        matches!(self.kind, OpKind::Put { value: None, .. })
    }
}

/// Successful reads by how many versions they saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadVersions {
    /// Reads that found nothing.
    pub not_found: u64,
    /// Reads that saw exactly one version.
    pub one: u64,
    /// Reads that saw concurrent versions (siblings).
    pub several: u64,
}

impl ReadVersions {
    /// Of the reads that found a value, the percentage that saw one version (Dynamo
    /// §6.3: 99.94%); `None` when none found one.
    pub fn one_version_pct(&self) -> Option<f64> {
        let found = self.one + self.several;
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        (found > 0).then(|| 100.0 * self.one as f64 / found as f64)
    }
}

/// The operations of a run, in the order their events happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
    /// Events so far (invocations, completions, the quiesced mark).
    events: usize,
    /// Event position of [`History::quiesced`].
    quiesced_at: Option<usize>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_event(&mut self) -> usize {
        self.events += 1;
        self.events
    }

    fn invoke(&mut self, key: &[u8], kind: OpKind) -> OpId {
        let invoked_at = self.next_event();
        self.ops.push(Op {
            key: key.to_vec(),
            kind,
            invoked_at,
            completed_at: None,
            outcome: Outcome::Pending,
        });
        self.ops.len() - 1
    }

    /// Records the invocation of a put of `value` with `context`.
    pub fn invoke_put(&mut self, key: &[u8], value: &[u8], context: Context) -> OpId {
        let kind = OpKind::Put {
            value: Some(value.to_vec()),
            context,
        };
        self.invoke(key, kind)
    }

    /// Records the invocation of a delete with `context`.
    pub fn invoke_delete(&mut self, key: &[u8], context: Context) -> OpId {
        self.invoke(
            key,
            OpKind::Put {
                value: None,
                context,
            },
        )
    }

    /// Records the invocation of a read.
    pub fn invoke_get(&mut self, key: &[u8]) -> OpId {
        self.invoke(key, OpKind::Get)
    }

    /// Records how operation `op` ended.
    ///
    /// # Panics
    /// If `op` is not an operation of this history, already completed, or the outcome
    /// does not fit its kind (a read outcome for a put): mistakes of the recording code.
    pub fn complete(&mut self, op: OpId, outcome: Outcome) {
        let completed_at = self.next_event();
        let entry = &mut self.ops[op];
        assert!(
            entry.completed_at.is_none(),
            "operation {op} completed twice"
        );
        let fits = matches!(
            (&entry.kind, &outcome),
            (OpKind::Put { .. }, Outcome::PutOk { .. })
                | (OpKind::Get, Outcome::GetOk { .. })
                | (_, Outcome::Failed | Outcome::Unknown)
        );
        assert!(fits, "outcome {outcome:?} does not fit operation {op}");
        entry.completed_at = Some(completed_at);
        entry.outcome = outcome;
    }

    /// Marks the point after which faults are healed and background work has run:
    /// reads invoked after it are the final reads the verdicts judge.
    pub fn quiesced(&mut self) {
        self.quiesced_at = Some(self.next_event());
    }

    /// The operations, in invocation order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// How many versions the successful reads saw (Dynamo §6.3's divergence figure).
    pub fn read_versions(&self) -> ReadVersions {
        let mut counts = ReadVersions::default();
        for op in &self.ops {
            if let Outcome::GetOk { values, .. } = &op.outcome {
                match values.len() {
                    0 => counts.not_found += 1,
                    1 => counts.one += 1,
                    _ => counts.several += 1,
                }
            }
        }
        counts
    }

    /// Event position of the quiesced mark, if set.
    pub fn quiesced_at(&self) -> Option<usize> {
        self.quiesced_at
    }

    /// MD5 over the whole history (every operation, its outcome and event positions):
    /// equal digests mean identical histories, which is how a seeded run shows that it
    /// is reproducible.
    pub fn digest(&self) -> [u8; 16] {
        let mut hasher = Md5::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        let context = |clock: &Context| crate::version::context::encode(clock);
        for op in &self.ops {
            field(&op.key);
            field(&(op.invoked_at as u64).to_be_bytes());
            field(&op.completed_at.map_or(0, |at| at as u64).to_be_bytes());
            match &op.kind {
                OpKind::Put { value, context: c } => {
                    field(b"put");
                    field(value.as_deref().unwrap_or(b"<delete>"));
                    field(&context(c));
                }
                OpKind::Get => field(b"get"),
            }
            match &op.outcome {
                Outcome::Pending => field(b"pending"),
                Outcome::PutOk { context: c } => {
                    field(b"put-ok");
                    field(&context(c));
                }
                Outcome::GetOk { values, context: c } => {
                    field(b"get-ok");
                    for value in values {
                        field(value);
                    }
                    field(&context(c));
                }
                Outcome::Failed => field(b"failed"),
                Outcome::Unknown => field(b"unknown"),
            }
        }
        field(&self.quiesced_at.map_or(0, |at| at as u64).to_be_bytes());
        hasher.finalize().into()
    }
}

/// One version a replica holds: data bytes, or a tombstone (`None`).
pub type StoredVersion = Option<Vec<u8>>;

/// Each replica's versions of each key, taken after the final reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaDump {
    /// Key to replica name to the versions it holds (sorted on insertion).
    keys: BTreeMap<Vec<u8>, BTreeMap<String, Vec<StoredVersion>>>,
}

impl ReplicaDump {
    /// An empty dump.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `replica` (one of the key's replicas) holds `versions` of `key`
    /// (empty: nothing).
    pub fn record(&mut self, key: &[u8], replica: &str, mut versions: Vec<StoredVersion>) {
        versions.sort();
        self.keys
            .entry(key.to_vec())
            .or_default()
            .insert(replica.to_owned(), versions);
    }

    /// The recorded keys with each replica's versions.
    pub fn keys(&self) -> &BTreeMap<Vec<u8>, BTreeMap<String, Vec<StoredVersion>>> {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_by_the_versions_they_saw() {
        let mut history = History::new();
        let empty = Context::default();
        for values in [
            vec![],
            vec![b"a".to_vec()],
            vec![b"a".to_vec()],
            vec![b"a".to_vec(), b"b".to_vec()],
        ] {
            let op = history.invoke_get(b"k");
            history.complete(
                op,
                Outcome::GetOk {
                    values,
                    context: empty.clone(),
                },
            );
        }
        // Puts and failed reads are not reads that saw versions.
        let put = history.invoke_put(b"k", b"c", empty.clone());
        history.complete(put, Outcome::PutOk { context: empty });
        let failed = history.invoke_get(b"k");
        history.complete(failed, Outcome::Failed);
        let counts = history.read_versions();
        assert_eq!(
            counts,
            ReadVersions {
                not_found: 1,
                one: 2,
                several: 1
            }
        );
        let pct = counts.one_version_pct().unwrap();
        assert!((pct - 200.0 / 3.0).abs() < 1e-9, "{pct}");
        assert_eq!(ReadVersions::default().one_version_pct(), None);
    }
}
