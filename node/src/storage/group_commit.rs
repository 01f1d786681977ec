//! Group commit: concurrent durable writes share one flush.
//!
//! A flush (sled's log write and `sync_file_range`) costs the same whether it covers one
//! write or a hundred, so a node taking many [`Durability::Sync`](super::Durability)
//! writes at once should not flush once per write. [`GroupCommit::sync`] lets every
//! caller that finished its write wait for **one shared flush that started after its
//! write**: when no flush is running, the caller runs one itself (it leads the group);
//! while one runs, callers queue, and when it ends one of them leads the next flush on
//! behalf of all of them. This is etcd's batched fsync and PostgreSQL's group commit;
//! with `k` writers arriving during a flush, `k` writes cost one more flush.
//!
//! The contract stays exact: `sync` returns `Ok` only after a flush that began after
//! `sync` was called has succeeded, so every write applied before the call is on disk. A
//! flush already running when the caller arrives may have read the log's end before the
//! caller's write, so it does not count.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::{Result, StorageError};

/// Coordinates the flushes of one storage engine (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    /// Signalled whenever a flush ends.
    flush_ended: Condvar,
}

/// Flushes are numbered 1, 2, ... in the order they start; they run one at a time.
#[derive(Debug, Default)]
struct State {
    /// Flushes started so far (the number of the latest).
    started: u64,
    /// Flushes ended so far, successfully or not; `started - 1` while one runs.
    ended: u64,
    /// The number of the latest flush that succeeded (0: none yet).
    last_success: u64,
    /// Why the latest failed flush failed, for the callers that waited on it.
    last_failure: Option<String>,
    /// Callers blocked waiting for a flush to end.
    waiting: usize,
}

impl State {
    fn running(&self) -> bool {
        self.started > self.ended
    }
}

impl GroupCommit {
    /// No flush run yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across `flush`, so a panic cannot poison a half-made
        // change; recover the state rather than propagate the poison.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once a flush that started after this call has succeeded, running
    /// `flush` itself when it is this caller's turn to lead. Blocks the calling thread.
    ///
    /// # Errors
    /// The error of the flush this caller needed: the leader gets `flush`'s own error;
    /// callers that waited on a failed flush get a [`StorageError::Backend`] carrying its
    /// message. A later call tries again with a new flush.
    pub(crate) fn sync(&self, flush: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut state = self.lock();
        // A running flush may have started before our write: only the next one is sure
        // to cover it.
        let needed = state.started + 1;
        loop {
            if state.ended >= needed {
                // Any flush numbered `needed` or later started after our write.
                return if state.last_success >= needed {
                    Ok(())
                } else {
                    Err(shared_failure(state.last_failure.as_deref()))
                };
            }
            if !state.running() {
                // Flushes start in order and `needed` has not ended, so none has started
                // it yet: this caller leads flush `needed`.
                state.started += 1;
                let number = state.started;
                drop(state);
                let mut ending = EndOnDrop {
                    commit: self,
                    number,
                    outcome: Err("the flush panicked".to_owned()),
                };
                let result = flush();
                ending.outcome = result.as_ref().map(|()| ()).map_err(describe);
                drop(ending);
                return result;
            }
            state.waiting += 1;
            state = self
                .flush_ended
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
        }
    }

    /// Flushes started so far: with concurrent durable writes, far fewer than writes.
    pub(crate) fn flushes(&self) -> u64 {
        self.lock().started
    }

    /// Callers now blocked waiting for a flush (for tests that stage a group).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting
    }
}

/// The error handed to the callers that shared a failed flush (the leader keeps the
/// original, which is not `Clone`).
fn shared_failure(reason: Option<&str>) -> StorageError {
    let reason = reason.unwrap_or("unknown failure");
    StorageError::Backend {
        op: "flush to disk (group commit)",
        source: Box::new(std::io::Error::other(reason.to_owned())),
    }
}

/// An error with its chain of causes, on one line.
fn describe(error: &StorageError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Records the end of the leader's flush and wakes the waiters, even if the flush
/// panicked, so that no waiter blocks forever.
struct EndOnDrop<'a> {
    commit: &'a GroupCommit,
    number: u64,
    outcome: Result<(), String>,
}

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        let mut state = self.commit.lock();
        state.ended = self.number;
        match &self.outcome {
            Ok(()) => state.last_success = self.number,
            Err(reason) => state.last_failure = Some(reason.clone()),
        }
        drop(state);
        self.commit.flush_ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// What happened, in order, across the threads of a test.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        FlushStarted(u64),
        FlushEnded(u64),
        Returned(usize, bool),
    }

    /// A flush that can be held open by the test: each flush takes one token from the
    /// gate before it ends.
    struct Harness {
        commit: GroupCommit,
        events: Mutex<Vec<Event>>,
        gate: Mutex<mpsc::Receiver<bool>>,
        flushes_run: Mutex<u64>,
    }

    impl Harness {
        fn new() -> (Arc<Self>, mpsc::Sender<bool>) {
            let (open, gate) = mpsc::channel();
            let harness = Arc::new(Self {
                commit: GroupCommit::new(),
                events: Mutex::new(Vec::new()),
                gate: Mutex::new(gate),
                flushes_run: Mutex::new(0),
            });
            (harness, open)
        }

        fn log(&self, event: Event) {
            self.events.lock().unwrap().push(event);
        }

        fn events(&self) -> Vec<Event> {
            self.events.lock().unwrap().clone()
        }

        /// A durable write's wait, with a gated flush; logs when the caller returns.
        fn sync(&self, caller: usize) -> Result<()> {
            let result = self.commit.sync(|| {
                let number = {
                    let mut run = self.flushes_run.lock().unwrap();
                    *run += 1;
                    *run
                };
                self.log(Event::FlushStarted(number));
                let succeed = self.gate.lock().unwrap().recv().unwrap();
                self.log(Event::FlushEnded(number));
                if succeed {
                    Ok(())
                } else {
                    Err(StorageError::Backend {
                        op: "flush to disk",
                        source: Box::new(std::io::Error::other("disk full")),
                    })
                }
            });
            self.log(Event::Returned(caller, result.is_ok()));
            result
        }
    }

    /// Polls `condition` until it holds, failing the test after 10 s.
    fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Starts a leader whose flush is held open, then `followers` callers that arrive
    /// while it runs; returns the threads (leader first) once all followers wait.
    fn stage_group(
        harness: &Arc<Harness>,
        followers: usize,
    ) -> Vec<std::thread::JoinHandle<Result<()>>> {
        let mut threads = Vec::new();
        let leader = Arc::clone(harness);
        threads.push(std::thread::spawn(move || leader.sync(0)));
        eventually("the leader's flush to start", || {
            harness.events().contains(&Event::FlushStarted(1))
        });
        for caller in 1..=followers {
            let follower = Arc::clone(harness);
            threads.push(std::thread::spawn(move || follower.sync(caller)));
        }
        eventually("every follower to wait", || {
            harness.commit.waiting() == followers
        });
        threads
    }

    #[test]
    fn callers_arriving_during_a_flush_share_the_next_one() {
        const FOLLOWERS: usize = 10;
        let (harness, open) = Harness::new();
        let threads = stage_group(&harness, FOLLOWERS);
        // End flush 1: only the leader may return; one follower leads flush 2 for all.
        open.send(true).unwrap();
        eventually("the followers' shared flush to start", || {
            harness.events().contains(&Event::FlushStarted(2))
        });
        assert!(
            !harness
                .events()
                .iter()
                .any(|e| matches!(e, Event::Returned(caller, _) if *caller != 0)),
            "a follower returned on a flush that started before its write: {:?}",
            harness.events()
        );
        open.send(true).unwrap();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(harness.commit.flushes(), 2, "11 durable waits, 2 flushes");
        let events = harness.events();
        let second_ended = events
            .iter()
            .position(|e| *e == Event::FlushEnded(2))
            .unwrap();
        for caller in 1..=FOLLOWERS {
            let returned = events
                .iter()
                .position(|e| *e == Event::Returned(caller, true))
                .unwrap();
            assert!(
                returned > second_ended,
                "{caller} returned early: {events:?}"
            );
        }
    }

    #[test]
    fn a_failed_flush_fails_every_caller_that_shared_it_and_the_next_one_retries() {
        let (harness, open) = Harness::new();
        let threads = stage_group(&harness, 3);
        open.send(true).unwrap();
        // The followers' shared flush fails.
        open.send(false).unwrap();
        let mut results = threads.into_iter().map(|t| t.join().unwrap());
        assert!(
            results.next().unwrap().is_ok(),
            "the leader's flush succeeded"
        );
        for result in results {
            let error = result.unwrap_err();
            assert!(
                std::error::Error::source(&error)
                    .unwrap()
                    .to_string()
                    .contains("disk full"),
                "{error}"
            );
        }
        // Nothing is stuck: the next caller flushes again.
        open.send(true).unwrap();
        harness.sync(99).unwrap();
        assert_eq!(harness.commit.flushes(), 3);
    }

    #[test]
    fn a_panicking_flush_releases_its_waiters() {
        let commit = Arc::new(GroupCommit::new());
        let (started_tx, started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let leader = {
            let commit = Arc::clone(&commit);
            std::thread::spawn(move || {
                commit.sync(|| {
                    started_tx.send(()).unwrap();
                    released.recv().unwrap();
                    panic!("flush blew up");
                })
            })
        };
        started.recv().unwrap();
        let follower = {
            let commit = Arc::clone(&commit);
            std::thread::spawn(move || commit.sync(|| Ok(())))
        };
        eventually("the follower to wait", || commit.waiting() == 1);
        release.send(()).unwrap();
        assert!(leader.join().is_err(), "the leader's panic propagates");
        // The follower needed flush 2, which it led itself after the panic ended flush 1.
        follower.join().unwrap().unwrap();
        assert_eq!(commit.flushes(), 2);
    }

    #[test]
    fn sequential_callers_each_get_their_own_flush() {
        let commit = GroupCommit::new();
        for _ in 0..3 {
            commit.sync(|| Ok(())).unwrap();
        }
        assert_eq!(commit.flushes(), 3);
    }
}
