//! The node's shutdown signal: a `watch` channel that turns `true` once, which every
//! listener and background loop selects on.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves once `shutdown` turns `true`, or its sender is gone (the node was dropped).
pub(crate) async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Waits for each task to end on its own (they watch the shutdown signal), all within
/// `bound`; a task still running then is aborted, with a warning naming it.
pub(crate) async fn drain(tasks: Vec<(&'static str, JoinHandle<()>)>, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    for (name, mut task) in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) if error.is_panic() => {
                tracing::error!(task = name, %error, "background task panicked");
            }
            Ok(Err(_)) => {}
            Err(_) => {
                tracing::warn!(task = name, ?bound, "still busy at shutdown; stopped");
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_that_stop_and_aborts_the_rest_at_the_bound() {
        let (stop, signal) = watch::channel(false);
        let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
        let polite = {
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                wait_for(signal).await;
                ended_tx.send("polite").unwrap();
            })
        };
        let stuck = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            ended_tx.send("stuck").unwrap();
        });
        stop.send(true).unwrap();
        let started = tokio::time::Instant::now();
        drain(
            vec![("polite", polite), ("stuck", stuck)],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(ended.recv().await, Some("polite"));
        // The stuck task was aborted: its sender is gone without a message.
        assert_eq!(ended.recv().await, None);
    }
}
