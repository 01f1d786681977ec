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
//!
//! [`GroupCommit::sync`] blocks its thread; [`GroupCommit::sync_async`] is the same for
//! the async request path, where a blocked thread per waiting write would cost a
//! blocking-pool thread and a wake-up each.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::{Result, StorageError};

/// Coordinates the flushes of one storage engine (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    /// Signalled whenever a flush ends, for [`GroupCommit::sync`].
    flush_ended: Condvar,
    /// Signalled whenever a flush ends, for [`GroupCommit::sync_async`].
    flush_ended_async: Notify,
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

    /// What a caller that needs flush number `needed` does now.
    fn next_step(&mut self, needed: u64) -> Step {
        if self.ended >= needed {
            // Any flush numbered `needed` or later started after the caller's write.
            return Step::Done(if self.last_success >= needed {
                Ok(())
            } else {
                Err(shared_failure(self.last_failure.as_deref()))
            });
        }
        if self.running() {
            return Step::Wait;
        }
        // Flushes start in order and `needed` has not ended, so none has started it
        // yet: the caller leads flush `needed`.
        self.started += 1;
        Step::Lead(self.started)
    }
}

/// See [`State::next_step`].
enum Step {
    /// The flush the caller needed has ended, with this result.
    Done(Result<()>),
    /// The caller runs flush number `.0`.
    Lead(u64),
    /// A flush that may predate the caller's write is running: wait for it to end.
    Wait,
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

    /// The number of the first flush sure to start after now (a running flush may
    /// have started before the caller's write).
    fn needed(&self) -> u64 {
        self.lock().started + 1
    }

    /// Returns once a flush that started after this call has succeeded, running
    /// `flush` itself when it is this caller's turn to lead. Blocks the calling thread.
    ///
    /// # Errors
    /// The error of the flush this caller needed: the leader gets `flush`'s own error;
    /// callers that waited on a failed flush get a [`StorageError::Backend`] carrying its
    /// message. A later call tries again with a new flush.
    pub(crate) fn sync(&self, flush: impl FnOnce() -> Result<()>) -> Result<()> {
        let needed = self.needed();
        let mut state = self.lock();
        loop {
            match state.next_step(needed) {
                Step::Done(result) => return result,
                Step::Lead(number) => {
                    drop(state);
                    return self.lead(number, flush);
                }
                Step::Wait => {
                    state.waiting += 1;
                    state = self
                        .flush_ended
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                    state.waiting -= 1;
                }
            }
        }
    }

    /// [`sync`](Self::sync) for async callers: waiting holds no thread, and only a
    /// group's leader takes a blocking-pool thread, to run `flush`. The flush and its
    /// bookkeeping run to the end even if the returned future is dropped, so the
    /// callers sharing it are never left waiting.
    ///
    /// # Errors
    /// As [`sync`](Self::sync); also a [`StorageError::Backend`] if the flush task
    /// panicked.
    pub(crate) async fn sync_async(
        self: &Arc<Self>,
        flush: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let needed = self.needed();
        loop {
            // Registered before the state is read, so an end signalled in between is
            // not missed.
            let ended = self.flush_ended_async.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            let step = self.lock().next_step(needed);
            match step {
                Step::Done(result) => return result,
                Step::Lead(number) => {
                    let commit = Arc::clone(self);
                    let flushing = tokio::task::spawn_blocking(move || commit.lead(number, flush));
                    return flushing.await.unwrap_or_else(|error| {
                        Err(shared_failure(Some(&format!("flush task failed: {error}"))))
                    });
                }
                Step::Wait => {
                    let _counted = CountedWaiter::new(self);
                    ended.await;
                }
            }
        }
    }

    /// Runs flush `number` and records its end, also when `flush` panics.
    fn lead(&self, number: u64, flush: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut ending = EndOnDrop {
            commit: self,
            number,
            outcome: Err("the flush panicked".to_owned()),
        };
        let result = flush();
        ending.outcome = match &result {
            Ok(()) => Ok(()),
            Err(error) => Err(describe(error)),
        };
        drop(ending);
        result
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

/// Counts an async caller in [`State::waiting`] while it lives (also if its future is
/// dropped mid-wait).
struct CountedWaiter<'a>(&'a GroupCommit);

impl<'a> CountedWaiter<'a> {
    fn new(commit: &'a GroupCommit) -> Self {
        commit.lock().waiting += 1;
        Self(commit)
    }
}

impl Drop for CountedWaiter<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
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
        self.commit.flush_ended_async.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
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
        commit: Arc<GroupCommit>,
        events: Mutex<Vec<Event>>,
        gate: Mutex<mpsc::Receiver<bool>>,
        flushes_run: Mutex<u64>,
    }

    impl Harness {
        fn new() -> (Arc<Self>, mpsc::Sender<bool>) {
            let (open, gate) = mpsc::channel();
            let harness = Arc::new(Self {
                commit: Arc::new(GroupCommit::new()),
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

        /// A flush held open until the test sends a token: `true` succeeds, `false`
        /// fails.
        fn gated_flush(&self) -> Result<()> {
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
        }

        /// A durable write's wait, with a gated flush; logs when the caller returns.
        fn sync(&self, caller: usize) -> Result<()> {
            let result = self.commit.sync(|| self.gated_flush());
            self.log(Event::Returned(caller, result.is_ok()));
            result
        }

        /// [`Harness::sync`] through the async wait.
        async fn sync_async(self: Arc<Self>, caller: usize) -> Result<()> {
            let flusher = Arc::clone(&self);
            let result = self.commit.sync_async(move || flusher.gated_flush()).await;
            self.log(Event::Returned(caller, result.is_ok()));
            result
        }

        fn follower_returned(&self) -> bool {
            self.events()
                .iter()
                .any(|e| matches!(e, Event::Returned(caller, _) if *caller != 0))
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
            !harness.follower_returned(),
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

    /// [`eventually`] for async tests: polls without blocking a runtime thread.
    async fn eventually_async(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_callers_share_the_next_flush_even_when_the_leader_goes_away() {
        const FOLLOWERS: usize = 10;
        let (harness, open) = Harness::new();
        let leader = tokio::spawn(Arc::clone(&harness).sync_async(0));
        eventually_async("the leader's flush to start", || {
            harness.events().contains(&Event::FlushStarted(1))
        })
        .await;
        let followers: Vec<_> = (1..=FOLLOWERS)
            .map(|caller| tokio::spawn(Arc::clone(&harness).sync_async(caller)))
            .collect();
        eventually_async("every follower to wait", || {
            harness.commit.waiting() == FOLLOWERS
        })
        .await;
        // The leader's request is cancelled mid-flush: the flush still ends and is
        // recorded, so the followers move on.
        leader.abort();
        open.send(true).unwrap();
        eventually_async("the followers' shared flush to start", || {
            harness.events().contains(&Event::FlushStarted(2))
        })
        .await;
        assert!(
            !harness.follower_returned(),
            "a follower returned on a flush that started before its write: {:?}",
            harness.events()
        );
        open.send(true).unwrap();
        for follower in followers {
            follower.await.unwrap().unwrap();
        }
        assert_eq!(harness.commit.flushes(), 2, "11 durable waits, 2 flushes");
        assert_eq!(harness.commit.waiting(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_async_caller_gets_the_failure_of_the_flush_it_needed() {
        let (harness, open) = Harness::new();
        open.send(false).unwrap();
        let error = Arc::clone(&harness).sync_async(0).await.unwrap_err();
        assert!(error.to_string().contains("flush"), "{error}");
        open.send(true).unwrap();
        Arc::clone(&harness).sync_async(1).await.unwrap();
        assert_eq!(harness.commit.flushes(), 2);
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
