//! Running the controller only while this replica holds the leader Lease.
//!
//! The Lease itself is kept by `kube-lease-manager` (it renews before expiry and reports
//! holding it on a watch channel); this module decides what runs when: wait for the
//! Lease, run the work while it is held, stop the work when it is lost or on shutdown.
//! A replica that lost the Lease does not wait to win it back: it reports
//! [`Outcome::Lost`] and the binary exits, so a restart begins from a clean state.

use std::future::Future;

use tokio::sync::{oneshot, watch};

/// How a [`run_while_leader`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down (before or after leading).
    ShutDown,
    /// The Lease was lost (or its keeper stopped) while leading; the work was stopped.
    Lost,
}

/// Waits until `leader` says this replica holds the Lease, then runs `work` with a
/// future that resolves when the work must stop: on `shutdown`, or when the Lease is
/// lost (`leader` turns false or its sender is dropped). `work` should return soon after
/// that future resolves; if it returns by itself, the outcome is
/// [`Outcome::ShutDown`].
pub async fn run_while_leader<W, F>(
    mut leader: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
    work: W,
) -> Outcome
where
    W: FnOnce(oneshot::Receiver<()>) -> F,
    F: Future<Output = ()>,
{
    let mut shutdown = Box::pin(shutdown);
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() {
                // The Lease keeper stopped before we ever led.
                return Outcome::Lost;
            },
            () = &mut shutdown => return Outcome::ShutDown,
        }
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let watcher = async move {
        let outcome = tokio::select! {
            () = &mut shutdown => Outcome::ShutDown,
            () = async {
                while leader.changed().await.is_ok() {
                    if !*leader.borrow() {
                        return;
                    }
                }
            } => Outcome::Lost,
        };
        let _ = stop_tx.send(());
        outcome
    };
    let work = work(stop_rx);
    tokio::pin!(watcher, work);
    tokio::select! {
        outcome = &mut watcher => {
            // Told to stop: let the work finish what it is doing.
            work.await;
            outcome
        }
        // The work ended by itself; there is nothing left to lead.
        () = &mut work => Outcome::ShutDown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Work that records it started and runs until told to stop.
    fn work(
        started: Arc<AtomicBool>,
    ) -> impl FnOnce(oneshot::Receiver<()>) -> futures::future::BoxFuture<'static, ()> {
        move |stop| {
            Box::pin(async move {
                started.store(true, Ordering::SeqCst);
                let _ = stop.await;
            })
        }
    }

    #[tokio::test]
    async fn works_only_after_winning_and_stops_when_the_lease_is_lost() {
        let (tx, rx) = watch::channel(false);
        let started = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_while_leader(
            rx,
            std::future::pending(),
            work(Arc::clone(&started)),
        ));
        tokio::task::yield_now().await;
        assert!(!started.load(Ordering::SeqCst), "ran before leading");
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !started.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("work started once leading");
        tx.send(false).unwrap();
        assert_eq!(task.await.unwrap(), Outcome::Lost);
    }

    #[tokio::test]
    async fn shutdown_before_leading_never_runs_the_work() {
        let (_tx, rx) = watch::channel(false);
        let started = Arc::new(AtomicBool::new(false));
        let outcome = run_while_leader(rx, async {}, work(Arc::clone(&started))).await;
        assert_eq!(outcome, Outcome::ShutDown);
        assert!(!started.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn shutdown_while_leading_stops_the_work() {
        let (_tx, rx) = watch::channel(true);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_while_leader(
            rx,
            async move {
                let _ = shutdown_rx.await;
            },
            work(Arc::clone(&started)),
        ));
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !started.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("work started");
        shutdown_tx.send(()).unwrap();
        assert_eq!(task.await.unwrap(), Outcome::ShutDown);
    }

    #[tokio::test]
    async fn a_stopped_lease_keeper_counts_as_lost() {
        let (tx, rx) = watch::channel(false);
        drop(tx);
        let started = Arc::new(AtomicBool::new(false));
        let outcome =
            run_while_leader(rx, std::future::pending(), work(Arc::clone(&started))).await;
        assert_eq!(outcome, Outcome::Lost);
        assert!(!started.load(Ordering::SeqCst));
    }
}
