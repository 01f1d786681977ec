//! Transfer progress: per task, the last key the destination acknowledged (no I/O; the
//! driver stores the encoding in the meta keyspace).
//!
//! The cursor only ever advances after the destination acknowledged the batch ending
//! at it, so after a crash of either side a transfer resumes from the cursor; a batch
//! that was merged but whose cursor was not yet saved is sent again, which is harmless
//! because merging by vector clock is idempotent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::plan::Task;

/// The format byte that starts an encoded progress record.
pub const PROGRESS_FORMAT_VERSION: u8 = 1;

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

/// Every task's progress, keyed by task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    tasks: BTreeMap<Task, TaskProgress>,
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
    pub fn retain_plan(&mut self, plan: &[Task]) -> bool {
        let before = self.tasks.len();
        self.tasks
            .retain(|task, _| plan.binary_search(task).is_ok());
        self.tasks.len() != before
    }

    /// Whether every task of `plan` is done.
    pub fn all_done(&self, plan: &[Task]) -> bool {
        plan.iter().all(|task| self.of(task).done)
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The record's encoding: a format byte, then the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        let entries: Vec<(&Task, &TaskProgress)> = self.tasks.iter().collect();
        // Postcard cannot fail on strings, integers, byte vectors and options written to
        // a growable buffer.
        postcard::to_extend(&entries, vec![PROGRESS_FORMAT_VERSION])
            .expect("postcard encodes transfer progress")
    }

    /// Reads a record written by [`Progress::encode`].
    ///
    /// # Errors
    /// [`ProgressError`] for an empty, unknown or malformed record.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProgressError> {
        let (&format, rest) = bytes.split_first().ok_or(ProgressError::Empty)?;
        if format != PROGRESS_FORMAT_VERSION {
            return Err(ProgressError::UnsupportedFormat(format));
        }
        let entries: Vec<(Task, TaskProgress)> =
            postcard::from_bytes(rest).map_err(|e| ProgressError::Malformed(e.to_string()))?;
        Ok(Self {
            tasks: entries.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
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
}
