//! Transfer progress: per task, the last key the destination acknowledged (no I/O; the
//! driver stores the encoding in the meta keyspace).
//!
//! The cursor only ever advances after the destination acknowledged the batch ending
//! at it, so after a crash of either side a transfer resumes from the cursor; a batch
//! that was merged but whose cursor was not yet saved is sent again, which is harmless
//! because merging by vector clock is idempotent.
//!
//! A task whose source stalled may be *replaced* by copies of the same range from
//! other replicas (see [`super::fallback`]); the record keeps which, so a restarted
//! driver goes on with the same fallback copies and their cursors.
//!
//! Likewise a task whose *destination* stalled (a leaving node pushing to a down new
//! owner) may be *redirected* to other target replicas of the range (see
//! [`super::fallback::choose_redirect`]), and the record keeps which.
//!
//! It also keeps when each failing peer of the transfer began failing (wall clock), so
//! a restarted driver does not start the stall time again (see
//! [`super::fallback::StallTracker`]).
//!
//! Format 2 added the replacements, format 3 the redirects and the failure times; an
//! older record reads as one without them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::plan::Task;
use crate::NodeId;
use crate::time::Millis;

/// The format byte that starts an encoded progress record.
pub const PROGRESS_FORMAT_VERSION: u8 = 3;

/// The first format: task progress only, no fallback replacements.
const PROGRESS_FORMAT_V1: u8 = 1;

/// The second format: task progress and fallback sources.
const PROGRESS_FORMAT_V2: u8 = 2;

/// Why a stored progress record is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    /// The record is empty.
    #[error("empty transfer progress record")]
    Empty,
    /// A format this build does not read.
    #[error("unsupported transfer progress format {0}")]
    UnsupportedFormat(u8),
    /// The bytes do not parse.
    #[error("malformed transfer progress record: {0}")]
    Malformed(String),
}

/// How far one task got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// The last key the destination acknowledged; the next page starts after it.
    pub cursor: Option<Vec<u8>>,
    /// The whole range was acknowledged.
    pub done: bool,
    /// Keys acknowledged so far.
    pub keys_sent: u64,
    /// Key and state bytes acknowledged so far.
    pub bytes_sent: u64,
}

/// Every task's progress, keyed by task, and the plan tasks replaced by fallback
/// copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    tasks: BTreeMap<Task, TaskProgress>,
    /// Plan tasks whose source stalled, and the replicas their range is copied from
    /// instead (each copy a task of its own in `tasks`, same range and destination).
    fallbacks: BTreeMap<Task, Vec<NodeId>>,
    /// Plan tasks whose destination stalled, and the target replicas their range is
    /// sent to instead (each copy a task of its own in `tasks`, same range and source).
    redirects: BTreeMap<Task, Vec<NodeId>>,
    /// When each failing peer of the transfer began failing (wall clock).
    unreachable_since: Vec<(NodeId, Millis)>,
}

/// A format 2 record after its format byte: task progress, then replaced tasks.
type StoredProgressV2 = (Vec<(Task, TaskProgress)>, Vec<(Task, Vec<NodeId>)>);

/// A format 3 record after its format byte: task progress, replaced tasks, redirected
/// tasks, failing peers.
type StoredProgress = (
    Vec<(Task, TaskProgress)>,
    Vec<(Task, Vec<NodeId>)>,
    Vec<(Task, Vec<NodeId>)>,
    Vec<(NodeId, Millis)>,
);

/// The copy of `task`'s range from `source` instead of `task.source`.
fn fallback_task(task: &Task, source: &NodeId) -> Task {
    Task {
        range: task.range,
        source: source.clone(),
        dest: task.dest.clone(),
    }
}

/// The copy of `task`'s range to `dest` instead of `task.dest`.
fn redirected_task(task: &Task, dest: &NodeId) -> Task {
    Task {
        range: task.range,
        source: task.source.clone(),
        dest: dest.clone(),
    }
}

impl Progress {
    /// No progress at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// The progress of `task` (none yet if unknown).
    pub fn of(&self, task: &Task) -> TaskProgress {
        self.tasks.get(task).cloned().unwrap_or_default()
    }

    /// Records that the destination acknowledged a batch of `keys` entries and `bytes`
    /// bytes ending at `cursor`; `done` when the range has nothing after it.
    pub fn acknowledge(
        &mut self,
        task: &Task,
        cursor: Option<Vec<u8>>,
        done: bool,
        keys: u64,
        bytes: u64,
    ) {
        let progress = self.tasks.entry(task.clone()).or_default();
        if cursor.is_some() {
            progress.cursor = cursor;
        }
        progress.done |= done;
        progress.keys_sent = progress.keys_sent.saturating_add(keys);
        progress.bytes_sent = progress.bytes_sent.saturating_add(bytes);
    }

    /// Forgets tasks that are not in `plan` (the rings changed); returns whether any
    /// was dropped.
    /// The fallback copies of `plan` are kept with their replaced task.
    pub fn retain_plan(&mut self, plan: &[Task]) -> bool {
        let before = (self.tasks.len(), self.fallbacks.len(), self.redirects.len());
        self.fallbacks
            .retain(|task, _| plan.binary_search(task).is_ok());
        self.redirects
            .retain(|task, _| plan.binary_search(task).is_ok());
        let mut keep: Vec<Task> = plan.to_vec();
        for (task, sources) in &self.fallbacks {
            keep.extend(sources.iter().map(|source| fallback_task(task, source)));
        }
        for (task, dests) in &self.redirects {
            keep.extend(dests.iter().map(|dest| redirected_task(task, dest)));
        }
        keep.sort();
        self.tasks
            .retain(|task, _| keep.binary_search(task).is_ok());
        (self.tasks.len(), self.fallbacks.len(), self.redirects.len()) != before
    }

    /// Replaces plan task `task` by copies of its range from `sources`, or, with no
    /// sources, copies it from its own source again. A source already copying keeps
    /// its cursor.
    pub fn set_fallback(&mut self, task: &Task, sources: Vec<NodeId>) {
        if sources.is_empty() {
            self.fallbacks.remove(task);
        } else {
            self.fallbacks.insert(task.clone(), sources);
        }
    }

    /// The replicas `task`'s range is copied from instead of its source, if it was
    /// replaced.
    pub fn fallback_of(&self, task: &Task) -> Option<&[NodeId]> {
        self.fallbacks.get(task).map(Vec::as_slice)
    }

    /// Sends plan task `task`'s range to `dests` instead of its destination, or, with
    /// no destinations, to its own destination again. A destination already receiving
    /// keeps its cursor. A task is either replaced or redirected: the driver redirects
    /// only tasks without fallback sources.
    pub fn set_redirect(&mut self, task: &Task, dests: Vec<NodeId>) {
        if dests.is_empty() {
            self.redirects.remove(task);
        } else {
            self.redirects.insert(task.clone(), dests);
        }
    }

    /// The target replicas `task`'s range is sent to instead of its destination, if it
    /// was redirected.
    pub fn redirect_of(&self, task: &Task) -> Option<&[NodeId]> {
        self.redirects.get(task).map(Vec::as_slice)
    }

    /// When each failing peer began failing, as last saved (wall clock, id order).
    pub fn unreachable_since(&self) -> &[(NodeId, Millis)] {
        &self.unreachable_since
    }

    /// Records when each failing peer began failing; returns whether that changed.
    pub fn set_unreachable_since(&mut self, failing: Vec<(NodeId, Millis)>) -> bool {
        let changed = self.unreachable_since != failing;
        self.unreachable_since = failing;
        changed
    }

    /// The copies that carry out `plan`, sorted and distinct: each task itself, or its
    /// fallback (or redirected) copies once it was replaced (or redirected).
    pub fn copies(&self, plan: &[Task]) -> Vec<Task> {
        let mut copies: Vec<Task> = Vec::with_capacity(plan.len());
        for task in plan {
            match self.fallbacks.get(task) {
                Some(sources) => {
                    copies.extend(sources.iter().map(|source| fallback_task(task, source)));
                }
                None => match self.redirects.get(task) {
                    Some(dests) => {
                        copies.extend(dests.iter().map(|dest| redirected_task(task, dest)));
                    }
                    None => copies.push(task.clone()),
                },
            }
        }
        copies.sort();
        copies.dedup();
        copies
    }

    /// Whether plan task `task` is carried out: its own copy is done, or every one of
    /// its fallback copies is, or every one of its redirected copies is.
    pub fn is_complete(&self, task: &Task) -> bool {
        self.of(task).done
            || self.fallbacks.get(task).is_some_and(|sources| {
                sources
                    .iter()
                    .all(|source| self.of(&fallback_task(task, source)).done)
            })
            || self.redirects.get(task).is_some_and(|dests| {
                dests
                    .iter()
                    .all(|dest| self.of(&redirected_task(task, dest)).done)
            })
    }

    /// Whether every task of `plan` is carried out.
    pub fn all_done(&self, plan: &[Task]) -> bool {
        plan.iter().all(|task| self.is_complete(task))
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.fallbacks.is_empty()
            && self.redirects.is_empty()
            && self.unreachable_since.is_empty()
    }

    /// The record's encoding: a format byte, then the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        let entries: Vec<(&Task, &TaskProgress)> = self.tasks.iter().collect();
        let fallbacks: Vec<(&Task, &Vec<NodeId>)> = self.fallbacks.iter().collect();
        let redirects: Vec<(&Task, &Vec<NodeId>)> = self.redirects.iter().collect();
        // Postcard cannot fail on strings, integers, byte vectors and options written to
        // a growable buffer.
        postcard::to_extend(
            &(entries, fallbacks, redirects, &self.unreachable_since),
            vec![PROGRESS_FORMAT_VERSION],
        )
        .expect("postcard encodes transfer progress")
    }

    /// Reads a record written by [`Progress::encode`].
    ///
    /// # Errors
    /// [`ProgressError`] for an empty, unknown or malformed record.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProgressError> {
        let (&format, rest) = bytes.split_first().ok_or(ProgressError::Empty)?;
        let malformed = |e: postcard::Error| ProgressError::Malformed(e.to_string());
        let (entries, fallbacks, redirects, unreachable_since): StoredProgress = match format {
            PROGRESS_FORMAT_V1 => (
                postcard::from_bytes(rest).map_err(malformed)?,
                Vec::new(),
                Vec::new(),
                Vec::new(),
            ),
            PROGRESS_FORMAT_V2 => {
                let (entries, fallbacks): StoredProgressV2 =
                    postcard::from_bytes(rest).map_err(malformed)?;
                (entries, fallbacks, Vec::new(), Vec::new())
            }
            PROGRESS_FORMAT_VERSION => postcard::from_bytes(rest).map_err(malformed)?,
            other => return Err(ProgressError::UnsupportedFormat(other)),
        };
        Ok(Self {
            tasks: entries.into_iter().collect(),
            fallbacks: fallbacks.into_iter().collect(),
            redirects: redirects.into_iter().collect(),
            unreachable_since,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Token, TokenRange};

    fn task(start: u128, source: &str, dest: &str) -> Task {
        Task {
            range: TokenRange::new(Token(start), Token(start + 100)),
            source: NodeId::new(source).unwrap(),
            dest: NodeId::new(dest).unwrap(),
        }
    }

    #[test]
    fn progress_round_trips_and_rejects_bad_records() {
        let mut progress = Progress::new();
        progress.acknowledge(&task(1, "a", "x"), Some(b"k1".to_vec()), false, 3, 30);
        progress.acknowledge(&task(1, "a", "x"), Some(b"k9".to_vec()), true, 2, 20);
        progress.acknowledge(&task(500, "b", "x"), None, true, 0, 0);
        let decoded = Progress::decode(&progress.encode()).unwrap();
        assert_eq!(decoded, progress);
        let first = decoded.of(&task(1, "a", "x"));
        assert_eq!(
            first,
            TaskProgress {
                cursor: Some(b"k9".to_vec()),
                done: true,
                keys_sent: 5,
                bytes_sent: 50
            }
        );
        assert_eq!(Progress::decode(&[]), Err(ProgressError::Empty));
        assert_eq!(
            Progress::decode(&[9]),
            Err(ProgressError::UnsupportedFormat(9))
        );
        assert!(matches!(
            Progress::decode(&[PROGRESS_FORMAT_VERSION, 0xff, 0xff]),
            Err(ProgressError::Malformed(_))
        ));
    }

    #[test]
    fn tasks_outside_the_plan_are_forgotten() {
        let mut progress = Progress::new();
        progress.acknowledge(&task(1, "a", "x"), Some(b"k".to_vec()), false, 1, 1);
        progress.acknowledge(&task(500, "b", "x"), None, true, 0, 0);
        let plan = vec![task(500, "b", "x"), task(900, "c", "x")];
        assert!(progress.retain_plan(&plan));
        assert_eq!(progress.of(&task(1, "a", "x")), TaskProgress::default());
        assert!(!progress.all_done(&plan));
        progress.acknowledge(&task(900, "c", "x"), None, true, 0, 0);
        assert!(progress.all_done(&plan));
        assert!(!progress.retain_plan(&plan));
    }

    #[test]
    fn a_format_1_record_reads_as_progress_without_fallbacks() {
        let mut progress = Progress::new();
        progress.acknowledge(&task(1, "a", "x"), Some(b"k1".to_vec()), false, 3, 30);
        let entries: Vec<(&Task, &TaskProgress)> = progress.tasks.iter().collect();
        let v1 = postcard::to_extend(&entries, vec![PROGRESS_FORMAT_V1]).unwrap();
        assert_eq!(Progress::decode(&v1).unwrap(), progress);
    }

    #[test]
    fn a_replaced_task_is_carried_out_by_its_fallback_copies_and_survives_a_restart() {
        let stalled = task(1, "a", "x");
        let other = task(500, "b", "x");
        let plan = vec![stalled.clone(), other.clone()];
        let mut progress = Progress::new();
        progress.acknowledge(&stalled, Some(b"k1".to_vec()), false, 3, 30);
        assert_eq!(progress.copies(&plan), plan);

        progress.set_fallback(
            &stalled,
            vec![NodeId::new("b").unwrap(), NodeId::new("c").unwrap()],
        );
        let from_b = task(1, "b", "x");
        let from_c = task(1, "c", "x");
        assert_eq!(
            progress.copies(&plan),
            vec![from_b.clone(), from_c.clone(), other.clone()]
        );
        progress.acknowledge(&from_b, None, true, 5, 50);
        assert!(!progress.is_complete(&stalled));
        // The plan does not know the fallback copies, yet they are kept with it.
        assert!(!progress.retain_plan(&plan));
        let restarted = Progress::decode(&progress.encode()).unwrap();
        assert_eq!(restarted, progress);
        assert_eq!(restarted.of(&from_b).keys_sent, 5);
        progress.acknowledge(&from_c, None, true, 5, 50);
        assert!(progress.is_complete(&stalled));
        assert!(!progress.all_done(&plan));
        progress.acknowledge(&other, None, true, 0, 0);
        assert!(progress.all_done(&plan));

        // A plan without the replaced task drops it and its copies.
        assert!(progress.retain_plan(std::slice::from_ref(&other)));
        assert_eq!(progress.fallback_of(&stalled), None);
        assert_eq!(progress.of(&from_b), TaskProgress::default());
        // No sources: the task copies from its own source again.
        progress.set_fallback(&other, vec![NodeId::new("c").unwrap()]);
        progress.set_fallback(&other, Vec::new());
        assert_eq!(progress.copies(std::slice::from_ref(&other)), vec![other]);
    }

    #[test]
    fn a_format_2_record_reads_as_progress_without_redirects_or_failure_times() {
        let mut progress = Progress::new();
        progress.acknowledge(&task(1, "a", "x"), Some(b"k1".to_vec()), false, 3, 30);
        progress.set_fallback(&task(1, "a", "x"), vec![NodeId::new("b").unwrap()]);
        let entries: Vec<(&Task, &TaskProgress)> = progress.tasks.iter().collect();
        let fallbacks: Vec<(&Task, &Vec<NodeId>)> = progress.fallbacks.iter().collect();
        let v2 = postcard::to_extend(&(entries, fallbacks), vec![PROGRESS_FORMAT_V2]).unwrap();
        let decoded = Progress::decode(&v2).unwrap();
        assert_eq!(decoded, progress);
        assert!(decoded.unreachable_since().is_empty());
    }

    #[test]
    fn a_redirected_task_is_carried_out_by_its_redirected_copies_and_survives_a_restart() {
        // "l" leaves and was to push a range to "x", which is down: the range goes to
        // the stayers "b" and "c" instead.
        let stalled = task(1, "l", "x");
        let other = task(500, "l", "y");
        let plan = vec![stalled.clone(), other.clone()];
        let mut progress = Progress::new();
        progress.acknowledge(&stalled, Some(b"k1".to_vec()), false, 3, 30);
        let (b, c) = (NodeId::new("b").unwrap(), NodeId::new("c").unwrap());
        progress.set_redirect(&stalled, vec![b.clone(), c.clone()]);
        let (to_b, to_c) = (task(1, "l", "b"), task(1, "l", "c"));
        assert_eq!(
            progress.copies(&plan),
            vec![to_b.clone(), to_c.clone(), other.clone()]
        );
        progress.acknowledge(&to_b, None, true, 5, 50);
        assert!(!progress.is_complete(&stalled));
        assert!(!progress.retain_plan(&plan), "redirected copies stay");
        assert!(progress.set_unreachable_since(vec![(NodeId::new("x").unwrap(), Millis(7))]));
        assert!(!progress.set_unreachable_since(vec![(NodeId::new("x").unwrap(), Millis(7))]));

        let restarted = Progress::decode(&progress.encode()).unwrap();
        assert_eq!(restarted, progress);
        assert_eq!(restarted.redirect_of(&stalled), Some(&[b, c][..]));
        assert_eq!(
            restarted.unreachable_since(),
            &[(NodeId::new("x").unwrap(), Millis(7))]
        );
        progress.acknowledge(&to_c, None, true, 5, 50);
        assert!(progress.is_complete(&stalled));
        progress.acknowledge(&other, None, true, 0, 0);
        assert!(progress.all_done(&plan));

        // A plan without the redirected task drops it and its copies.
        assert!(progress.retain_plan(std::slice::from_ref(&other)));
        assert_eq!(progress.redirect_of(&stalled), None);
        assert_eq!(progress.of(&to_b), TaskProgress::default());
        progress.set_redirect(&other, vec![NodeId::new("c").unwrap()]);
        progress.set_redirect(&other, Vec::new());
        assert_eq!(progress.copies(std::slice::from_ref(&other)), vec![other]);
    }
}
