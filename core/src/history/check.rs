//! The verdicts over a [`History`] and a [`ReplicaDump`] (see the [module docs](super)).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{History, Op, OpId, OpKind, Outcome, ReplicaDump, StoredVersion};
use crate::version::context::Context;

/// A broken promise found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The history has no quiesced mark, so no read is known to be final.
    NotQuiesced,
    /// A key with acknowledged writes has no successful final read to judge them by.
    NoFinalRead {
        /// The key.
        key: Vec<u8>,
    },
    /// Verdict 1: an acknowledged value is missing from a final read and no write
    /// covering it superseded it.
    LostWrite {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The acknowledged put that wrote it.
        write: OpId,
        /// The final read that misses it.
        read: OpId,
    },
    /// Verdict 2: the replicas of a key hold different versions.
    Divergent {
        /// The key.
        key: Vec<u8>,
        /// Each replica's versions.
        replicas: BTreeMap<String, Vec<StoredVersion>>,
    },
    /// Verdict 3: a value covered by an acknowledged write's context is back, in a
    /// final read or on a replica.
    Resurrected {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The acknowledged write (a delete, or a put) whose context covered it.
        superseded_by: OpId,
        /// Whether that write was a delete.
        by_delete: bool,
        /// Where it showed up: "read #N" or "replica NAME".
        seen_in: String,
    },
    /// A read returned a value no put of that key wrote.
    Phantom {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The read.
        read: OpId,
    },
    /// Two puts of one key wrote the same value, so the history is ambiguous.
    DuplicateValue {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotQuiesced => write!(f, "the history was never marked quiesced"),
            Violation::NoFinalRead { key } => {
                write!(f, "key {:?}: no successful final read", show(key))
            }
            Violation::LostWrite {
                key,
                value,
                write,
                read,
            } => write!(
                f,
                "lost write: key {:?} value {:?} (acknowledged put #{write}) is missing from final read #{read} and nothing superseded it",
                show(key),
                show(value)
            ),
            Violation::Divergent { key, replicas } => {
                write!(f, "divergent replicas of key {:?}:", show(key))?;
                for (replica, versions) in replicas {
                    let versions: Vec<String> = versions
                        .iter()
                        .map(|v| v.as_deref().map_or("<tombstone>".into(), show))
                        .collect();
                    write!(f, " {replica}={versions:?}")?;
                }
                Ok(())
            }
            Violation::Resurrected {
                key,
                value,
                superseded_by,
                by_delete,
                seen_in,
            } => write!(
                f,
                "resurrected: key {:?} value {:?} was superseded by acknowledged {} #{superseded_by} but is back in {seen_in}",
                show(key),
                show(value),
                if *by_delete { "delete" } else { "put" }
            ),
            Violation::Phantom { key, value, read } => write!(
                f,
                "phantom: read #{read} of key {:?} returned {:?}, which no put wrote",
                show(key),
                show(value)
            ),
            Violation::DuplicateValue { key, value } => write!(
                f,
                "ambiguous history: key {:?} value {:?} was written twice",
                show(key),
                show(value)
            ),
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Every violation, in key order.
    pub violations: Vec<Violation>,
    /// Acknowledged values checked against the final reads.
    pub acknowledged_values: usize,
    /// Of those, superseded by a later write covering them.
    pub superseded_values: usize,
    /// Keys whose replicas were compared.
    pub keys_compared: usize,
}

impl Verdict {
    /// Whether every verdict passed.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// How a write's context must cover a value's witness for the write to supersede it.
#[derive(Debug, Clone, Copy)]
enum Coverage {
    /// The clock or the single dots of the context: the write may have superseded the
    /// value (a dot supersedes it where the coordinator holds that version).
    Any,
    /// The clock alone: the write superseded the value on every replica it reaches. A
    /// version the context knows only as a single dot stays a sibling where the
    /// coordinator lacked it (see `version::context`), so it may come back, as a
    /// sibling beside the write, without a violation.
    Clock,
}

impl Coverage {
    fn covers(self, context: &Context, witness: &Context) -> bool {
        match self {
            Self::Any => context.descends(witness),
            Self::Clock => {
                context.clock().descends(witness.clock())
                    && witness.dots().iter().all(|dot| context.clock().covers(dot))
            }
        }
    }
}

/// One key's operations, with what the verdicts need precomputed.
struct KeyOps<'h> {
    key: &'h [u8],
    ops: Vec<(OpId, &'h Op)>,
    /// Value to the put that wrote it.
    writer: BTreeMap<&'h [u8], OpId>,
    /// Value to the contexts known to cover it.
    witnesses: BTreeMap<&'h [u8], Vec<&'h Context>>,
}

impl<'h> KeyOps<'h> {
    /// The first write (other than `writer`) whose context covers `value` and whose
    /// outcome is accepted by `counts`; with [`Coverage::Clock`], only coverage by the
    /// context's clock counts.
    fn superseded_by(
        &self,
        value: &[u8],
        counts: impl Fn(&Outcome) -> bool,
        coverage: Coverage,
    ) -> Option<(OpId, &'h Op)> {
        let witnesses = self.witnesses.get(value)?;
        self.ops.iter().copied().find(|(_, op)| {
            op.put_context().is_some_and(|context| {
                counts(&op.outcome)
                    && witnesses
                        .iter()
                        .any(|w| !w.is_empty() && coverage.covers(context, w))
            })
        })
    }

    fn final_reads(&self, quiesced_at: usize) -> Vec<(OpId, &'h [Vec<u8>])> {
        self.ops
            .iter()
            .filter(|(_, op)| op.kind == OpKind::Get && op.invoked_at > quiesced_at)
            .filter_map(|(id, op)| match &op.outcome {
                Outcome::GetOk { values, .. } => Some((*id, values.as_slice())),
                _ => None,
            })
            .collect()
    }
}

/// Groups the history by key and finds writers and witnesses; reports duplicates.
fn by_key<'h>(history: &'h History, violations: &mut Vec<Violation>) -> Vec<KeyOps<'h>> {
    let mut keys: BTreeMap<&[u8], KeyOps<'_>> = BTreeMap::new();
    for (id, op) in history.ops().iter().enumerate() {
        let entry = keys.entry(&op.key).or_insert_with(|| KeyOps {
            key: &op.key,
            ops: Vec::new(),
            writer: BTreeMap::new(),
            witnesses: BTreeMap::new(),
        });
        entry.ops.push((id, op));
        if let Some(value) = op.written_value() {
            if entry.writer.insert(value, id).is_some() {
                violations.push(Violation::DuplicateValue {
                    key: op.key.clone(),
                    value: value.to_vec(),
                });
            }
            if let Outcome::PutOk { context } = &op.outcome {
                entry.witnesses.entry(value).or_default().push(context);
            }
        }
    }
    for entry in keys.values_mut() {
        for (_, op) in &entry.ops {
            if let Outcome::GetOk { values, context } = &op.outcome {
                for value in values {
                    entry.witnesses.entry(value).or_default().push(context);
                }
            }
        }
    }
    keys.into_values().collect()
}

/// Whether every replica holds the same versions.
fn converged(replicas: &BTreeMap<String, Vec<StoredVersion>>) -> bool {
    let mut states = replicas.values();
    states
        .next()
        .is_none_or(|first| states.all(|state| state == first))
}

/// Judges a history and the replicas' final state (see the [module docs](super)).
pub fn check(history: &History, dump: &ReplicaDump) -> Verdict {
    let mut verdict = Verdict::default();
    let mut violations = Vec::new();
    let keys = by_key(history, &mut violations);
    let Some(quiesced_at) = history.quiesced_at() else {
        violations.push(Violation::NotQuiesced);
        verdict.violations = violations;
        return verdict;
    };
    for key in &keys {
        phantoms(key, &mut violations);
        let final_reads = key.final_reads(quiesced_at);
        lost_writes(key, &final_reads, &mut verdict, &mut violations);
        resurrections(key, &final_reads, dump, &mut violations);
    }
    // Verdict 2: replicas converge.
    for (key, replicas) in dump.keys() {
        verdict.keys_compared += 1;
        if !converged(replicas) {
            violations.push(Violation::Divergent {
                key: key.clone(),
                replicas: replicas.clone(),
            });
        }
    }
    verdict.violations = violations;
    verdict
}

fn acknowledged(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::PutOk { .. })
}

fn may_have_landed(outcome: &Outcome) -> bool {
    !matches!(outcome, Outcome::Failed)
}

/// Phantoms: every value read must have been written.
fn phantoms(key: &KeyOps<'_>, violations: &mut Vec<Violation>) {
    for (id, op) in &key.ops {
        if let Outcome::GetOk { values, .. } = &op.outcome {
            for value in values {
                if !key.writer.contains_key(value.as_slice()) {
                    violations.push(Violation::Phantom {
                        key: key.key.to_vec(),
                        value: value.clone(),
                        read: *id,
                    });
                }
            }
        }
    }
}

/// Verdict 1: acknowledged values are in every final read unless superseded.
fn lost_writes(
    key: &KeyOps<'_>,
    final_reads: &[(OpId, &[Vec<u8>])],
    verdict: &mut Verdict,
    violations: &mut Vec<Violation>,
) {
    let mut missing_final_read = false;
    for (value, &write) in &key.writer {
        if !acknowledged(
            &key.ops
                .iter()
                .find(|(id, _)| *id == write)
                .map_or(Outcome::Pending, |(_, op)| op.outcome.clone()),
        ) {
            continue;
        }
        verdict.acknowledged_values += 1;
        if key
            .superseded_by(value, may_have_landed, Coverage::Any)
            .is_some()
        {
            verdict.superseded_values += 1;
            continue;
        }
        if final_reads.is_empty() {
            missing_final_read = true;
            continue;
        }
        for (read, values) in final_reads {
            if !values.iter().any(|v| v.as_slice() == *value) {
                violations.push(Violation::LostWrite {
                    key: key.key.to_vec(),
                    value: value.to_vec(),
                    write,
                    read: *read,
                });
            }
        }
    }
    if missing_final_read {
        violations.push(Violation::NoFinalRead {
            key: key.key.to_vec(),
        });
    }
}

/// Verdict 3: values an acknowledged write superseded stay gone, from the final reads
/// and from the replicas.
fn resurrections(
    key: &KeyOps<'_>,
    final_reads: &[(OpId, &[Vec<u8>])],
    dump: &ReplicaDump,
    violations: &mut Vec<Violation>,
) {
    let mut seen: Vec<(&[u8], String)> = Vec::new();
    for (read, values) in final_reads {
        seen.extend(
            values
                .iter()
                .map(|v| (v.as_slice(), format!("read #{read}"))),
        );
    }
    // On replicas only once they agree: a stale replica of a divergent key holds old
    // versions by definition, and verdict 2 reports that.
    if let Some(replicas) = dump.keys().get(key.key).filter(|r| converged(r)) {
        for (replica, versions) in replicas {
            for value in versions.iter().flatten() {
                seen.push((value.as_slice(), format!("replica {replica}")));
            }
        }
    }
    let mut reported = BTreeSet::new();
    for (value, seen_in) in seen {
        if reported.contains(value) {
            continue;
        }
        if let Some((by, op)) = key.superseded_by(value, acknowledged, Coverage::Clock) {
            reported.insert(value);
            violations.push(Violation::Resurrected {
                key: key.key.to_vec(),
                value: value.to_vec(),
                superseded_by: by,
                by_delete: op.is_delete(),
                seen_in,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use crate::time::Millis;
    use crate::version::{Actor, SiblingLimits, SiblingSet, Value};

    /// Real contexts, made the way a coordinator makes them: a sibling set per key on
    /// which puts are applied.
    struct Key {
        state: SiblingSet,
        actor: Actor,
    }

    impl Key {
        fn new() -> Self {
            Self {
                state: SiblingSet::new(),
                actor: Actor::new(NodeId::new("n1").unwrap(), 1),
            }
        }

        /// Applies a put with `context` and returns the context a client gets back.
        fn put(&mut self, context: &Context, value: Option<&str>) -> Context {
            let value = value.map_or(Value::Tombstone, |v| Value::data(v.as_bytes()));
            let written = self
                .state
                .put(
                    context,
                    value,
                    &self.actor,
                    Millis(1),
                    &SiblingLimits::default(),
                )
                .unwrap();
            self.state.put_context(context, &written.dot)
        }

        fn values(&self) -> Vec<Vec<u8>> {
            self.state.values().map(<[u8]>::to_vec).collect()
        }
    }

    const K: &[u8] = b"k";

    fn put_ok(h: &mut History, value: &str, context: &Context, returned: Context) -> OpId {
        let op = h.invoke_put(K, value.as_bytes(), context.clone());
        h.complete(op, Outcome::PutOk { context: returned });
        op
    }

    fn read(h: &mut History, values: &[&str], context: Context) -> OpId {
        let op = h.invoke_get(K);
        let values = values.iter().map(|v| v.as_bytes().to_vec()).collect();
        h.complete(op, Outcome::GetOk { values, context });
        op
    }

    fn dump_of(versions: &[(&str, &[Option<&str>])]) -> ReplicaDump {
        let mut dump = ReplicaDump::new();
        for (replica, values) in versions {
            let values = values
                .iter()
                .map(|v| v.map(|v| v.as_bytes().to_vec()))
                .collect();
            dump.record(K, replica, values);
        }
        dump
    }

    fn kinds(verdict: &Verdict) -> Vec<&'static str> {
        verdict
            .violations
            .iter()
            .map(|v| match v {
                Violation::NotQuiesced => "not-quiesced",
                Violation::NoFinalRead { .. } => "no-final-read",
                Violation::LostWrite { .. } => "lost",
                Violation::Divergent { .. } => "divergent",
                Violation::Resurrected { .. } => "resurrected",
                Violation::Phantom { .. } => "phantom",
                Violation::DuplicateValue { .. } => "duplicate",
            })
            .collect()
    }

    #[test]
    fn an_acknowledged_value_in_the_final_read_passes() {
        let mut key = Key::new();
        let mut h = History::new();
        let returned = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), returned);
        h.quiesced();
        read(&mut h, &["a"], key.state.context());
        let verdict = check(&h, &dump_of(&[("n1", &[Some("a")]), ("n2", &[Some("a")])]));
        assert!(verdict.is_ok(), "{:?}", verdict.violations);
        assert_eq!(verdict.acknowledged_values, 1);
    }

    #[test]
    fn an_acknowledged_value_missing_from_the_final_read_is_a_lost_write() {
        let mut key = Key::new();
        let mut h = History::new();
        let returned = key.put(&Context::new(), Some("a"));
        let write = put_ok(&mut h, "a", &Context::new(), returned);
        h.quiesced();
        let read = read(&mut h, &[], Context::new());
        let verdict = check(&h, &ReplicaDump::new());
        assert_eq!(
            verdict.violations,
            vec![Violation::LostWrite {
                key: K.to_vec(),
                value: b"a".to_vec(),
                write,
                read
            }]
        );
        assert!(verdict.violations[0].to_string().contains("lost write"));
    }

    #[test]
    fn a_value_superseded_by_a_write_with_a_covering_context_may_be_gone() {
        // Dynamo §4.4: read "a", write "b" with the read's context: "a" is superseded.
        let mut key = Key::new();
        let mut h = History::new();
        let first = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), first);
        let context = key.state.context();
        read(&mut h, &["a"], context.clone());
        let second = key.put(&context, Some("b"));
        put_ok(&mut h, "b", &context, second);
        h.quiesced();
        read(&mut h, &["b"], key.state.context());
        let verdict = check(&h, &dump_of(&[("n1", &[Some("b")])]));
        assert!(verdict.is_ok(), "{:?}", verdict.violations);
        assert_eq!(verdict.superseded_values, 1);
    }

    #[test]
    fn a_write_of_unknown_outcome_covering_a_value_excuses_its_absence() {
        let mut key = Key::new();
        let mut h = History::new();
        let first = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), first.clone());
        let op = h.invoke_delete(K, first.clone());
        h.complete(op, Outcome::Unknown);
        h.quiesced();
        read(&mut h, &[], Context::new());
        assert!(check(&h, &ReplicaDump::new()).is_ok());
    }

    #[test]
    fn a_put_with_the_context_of_a_blind_put_supersedes_only_that_put() {
        // Blind A, blind B at the same coordinator, then C with the context B's put
        // returned: the writer of C saw B, never A, so A must survive as C's sibling.
        let mut key = Key::new();
        let mut h = History::new();
        let a = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), a);
        let b = key.put(&Context::new(), Some("b"));
        put_ok(&mut h, "b", &Context::new(), b.clone());
        let c = key.put(&b, Some("c"));
        put_ok(&mut h, "c", &b, c);
        assert_eq!(key.values(), [b"a".to_vec(), b"c".to_vec()]);
        h.quiesced();
        let mut lost = h.clone();
        read(&mut h, &["a", "c"], key.state.context());
        assert!(check(&h, &ReplicaDump::new()).is_ok());
        // A final read without A is a lost update, and the checker says so: B's
        // returned context is no witness for A.
        read(&mut lost, &["c"], key.state.context());
        assert_eq!(kinds(&check(&lost, &ReplicaDump::new())), vec!["lost"]);
    }

    #[test]
    fn a_version_known_only_as_a_single_dot_may_stay_a_sibling() {
        // c's writer saw b (its own put) only as a dot; a coordinator that lacked b
        // could not record it as superseded, so b coming back beside c is neither a
        // lost write nor a resurrection. Covered by a clock, it would be one.
        let dot = |node: &str, counter| crate::version::Dot {
            actor: Actor::new(NodeId::new(node).unwrap(), 1),
            counter,
        };
        let mut h = History::new();
        let b = Context::new().with_dot(dot("n1", 2));
        put_ok(&mut h, "b", &Context::new(), b.clone());
        put_ok(&mut h, "c", &b, b.clone().with_dot(dot("n2", 3)));
        h.quiesced();
        let mut clocked = h.clone();
        read(&mut h, &["b", "c"], Context::new());
        assert!(check(&h, &ReplicaDump::new()).is_ok());
        // The same history where b's context was a clock: b must stay gone.
        let b_clock = Context::from({
            let mut clock = crate::version::VectorClock::new();
            clock.increment(&dot("n1", 2).actor, Millis(0));
            clock.increment(&dot("n1", 2).actor, Millis(0));
            clock
        });
        clocked.ops[0].outcome = Outcome::PutOk {
            context: b_clock.clone(),
        };
        if let OpKind::Put { context, .. } = &mut clocked.ops[1].kind {
            *context = b_clock;
        }
        read(&mut clocked, &["b", "c"], Context::new());
        assert_eq!(
            kinds(&check(&clocked, &ReplicaDump::new())),
            vec!["resurrected"]
        );
    }

    #[test]
    fn a_blind_write_does_not_supersede_an_earlier_value() {
        // Two blind writes are concurrent: both must survive as siblings.
        let mut key = Key::new();
        let mut h = History::new();
        let first = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), first);
        let second = key.put(&Context::new(), Some("b"));
        put_ok(&mut h, "b", &Context::new(), second);
        h.quiesced();
        read(&mut h, &["b"], Context::new());
        assert_eq!(kinds(&check(&h, &ReplicaDump::new())), vec!["lost"]);
        // With both siblings the history passes.
        let mut h2 = h.clone();
        let last = h2.ops().len() - 1;
        h2.ops.truncate(last);
        read(&mut h2, &["a", "b"], key.state.context());
        assert_eq!(key.values().len(), 2);
        assert!(check(&h2, &ReplicaDump::new()).is_ok());
    }

    #[test]
    fn failed_and_unknown_writes_need_not_survive() {
        let mut h = History::new();
        let op = h.invoke_put(K, b"a", Context::new());
        h.complete(op, Outcome::Unknown);
        let op = h.invoke_put(K, b"b", Context::new());
        h.complete(op, Outcome::Failed);
        h.invoke_put(K, b"c", Context::new()); // still pending
        h.quiesced();
        read(&mut h, &[], Context::new());
        assert!(check(&h, &ReplicaDump::new()).is_ok());
    }

    #[test]
    fn acknowledged_writes_without_a_final_read_cannot_be_judged() {
        let mut key = Key::new();
        let mut h = History::new();
        let first = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), first);
        // A read before the quiesced mark is not final.
        read(&mut h, &["a"], key.state.context());
        h.quiesced();
        assert_eq!(
            kinds(&check(&h, &ReplicaDump::new())),
            vec!["no-final-read"]
        );
        let unmarked = History::new();
        assert_eq!(
            kinds(&check(&unmarked, &ReplicaDump::new())),
            vec!["not-quiesced"]
        );
    }

    #[test]
    fn replicas_with_different_versions_are_divergent() {
        let mut h = History::new();
        h.quiesced();
        let same = dump_of(&[("n1", &[Some("a"), None]), ("n2", &[None, Some("a")])]);
        assert!(check(&h, &same).is_ok(), "order does not matter");
        let missing_tombstone = dump_of(&[("n1", &[Some("a"), None]), ("n2", &[Some("a")])]);
        assert_eq!(kinds(&check(&h, &missing_tombstone)), vec!["divergent"]);
        let empty = dump_of(&[("n1", &[Some("a")]), ("n2", &[]), ("n3", &[Some("a")])]);
        let verdict = check(&h, &empty);
        assert_eq!(kinds(&verdict), vec!["divergent"]);
        assert!(verdict.violations[0].to_string().contains("n2=[]"));
        assert_eq!(verdict.keys_compared, 1);
    }

    #[test]
    fn a_deleted_value_that_comes_back_is_resurrected() {
        let mut key = Key::new();
        let mut h = History::new();
        let first = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), first);
        let context = key.state.context();
        read(&mut h, &["a"], context.clone());
        let deleted = key.put(&context, None);
        let delete = h.invoke_delete(K, context.clone());
        h.complete(delete, Outcome::PutOk { context: deleted });
        h.quiesced();
        // In a final read.
        let mut in_read = h.clone();
        read(&mut in_read, &["a"], key.state.context());
        let verdict = check(&in_read, &ReplicaDump::new());
        assert_eq!(kinds(&verdict), vec!["resurrected"]);
        assert!(matches!(
            &verdict.violations[0],
            Violation::Resurrected { superseded_by, by_delete: true, .. } if *superseded_by == delete
        ));
        // On a replica only.
        let mut clean_read = h.clone();
        read(&mut clean_read, &[], key.state.context());
        let dump = dump_of(&[("n1", &[None]), ("n2", &[None, Some("a")])]);
        assert_eq!(
            kinds(&check(&clean_read, &dump)),
            vec!["divergent"],
            "a stale replica is divergence"
        );
        let dump = dump_of(&[("n1", &[None, Some("a")]), ("n2", &[None, Some("a")])]);
        assert_eq!(kinds(&check(&clean_read, &dump)), vec!["resurrected"]);
        // Gone everywhere: passes.
        let dump = dump_of(&[("n1", &[None]), ("n2", &[None])]);
        assert!(check(&clean_read, &dump).is_ok());
    }

    #[test]
    fn a_delete_of_unknown_outcome_may_leave_the_value() {
        let mut key = Key::new();
        let mut h = History::new();
        let first = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), first.clone());
        let delete = h.invoke_delete(K, first);
        h.complete(delete, Outcome::Unknown);
        h.quiesced();
        read(&mut h, &["a"], key.state.context());
        assert!(check(&h, &dump_of(&[("n1", &[Some("a")])])).is_ok());
    }

    #[test]
    fn a_delete_with_an_older_context_does_not_cover_a_newer_value() {
        // Delete-then-recreate: the recreated value is not covered by the delete.
        let mut key = Key::new();
        let mut h = History::new();
        let first = key.put(&Context::new(), Some("a"));
        put_ok(&mut h, "a", &Context::new(), first.clone());
        let deleted = key.put(&first, None);
        let delete = h.invoke_delete(K, first);
        h.complete(
            delete,
            Outcome::PutOk {
                context: deleted.clone(),
            },
        );
        let recreated = key.put(&deleted, Some("b"));
        put_ok(&mut h, "b", &deleted, recreated);
        h.quiesced();
        read(&mut h, &["b"], key.state.context());
        assert!(check(&h, &dump_of(&[("n1", &[Some("b")])])).is_ok());
    }

    #[test]
    fn values_nobody_wrote_and_values_written_twice_are_reported() {
        let mut h = History::new();
        let op = h.invoke_put(K, b"a", Context::new());
        h.complete(op, Outcome::Failed);
        let op = h.invoke_put(K, b"a", Context::new());
        h.complete(op, Outcome::Failed);
        h.quiesced();
        read(&mut h, &["zzz"], Context::new());
        let mut found = kinds(&check(&h, &ReplicaDump::new()));
        found.sort();
        assert_eq!(found, vec!["duplicate", "phantom"]);
    }

    #[test]
    fn the_digest_tells_histories_apart() {
        let mut a = History::new();
        let op = a.invoke_put(K, b"a", Context::new());
        let mut b = a.clone();
        a.complete(op, Outcome::Unknown);
        b.complete(op, Outcome::Failed);
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), a.clone().digest());
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn recording_a_read_outcome_for_a_put_is_a_caller_bug() {
        let mut h = History::new();
        let op = h.invoke_put(K, b"a", Context::new());
        h.complete(
            op,
            Outcome::GetOk {
                values: vec![],
                context: Context::new(),
            },
        );
    }
}
