//! Coalescing of concurrent replica writes to one peer into `WriteBatch` calls (I/O
//! shell, used by [`GrpcTransport`](super::GrpcTransport)).
//!
//! Under load a coordinator sends many small replica writes to the same few peers at
//! once, and each gRPC call costs far more than the write it carries: an HTTP/2 stream
//! with its HEADERS, DATA and trailer frames, a server task, routing, a socket write and
//! a wake-up on each side. A [`WriteBatcher`] per peer queues the writes that arrive
//! while earlier calls to that peer are in flight (at most [`MAX_IN_FLIGHT`]) and sends
//! them as one call when a slot frees up. An idle peer's first write goes out at once,
//! so batching adds no delay when there is nothing to coalesce; under load, batches grow
//! with the queue, as a group commit does.
//!
//! What a caller sees does not change (Dynamo §4.5's replica write, one result each):
//!
//! * Every write keeps its own result: the peer answers each write of a batch
//!   separately, and a rejection of one does not fail the others.
//! * Every write keeps its own deadline: the caller waits at most the call timeout from
//!   when it queued its write and then reports [`TransportError::Timeout`] (outcome
//!   unknown); a write whose caller has given up before its batch leaves is not sent.
//! * Failure classes carry over to every write of the batch: a batch that was never
//!   sent (no connection) is [`TransportError::NotConnected`] for each write, one that
//!   failed mid-call is [`TransportError::Unreachable`] or `Timeout` for each, outcome
//!   unknown (see [`never_sent`](super::codec::never_sent)).
//! * A peer from before `WriteBatch` answers `UNIMPLEMENTED` without running anything;
//!   the batcher then sends that batch's writes, and all later ones, as single `Write`
//!   calls.
//!
//! Every queue is bounded: at most [`MAX_QUEUED_WRITES`] wait per peer (a write beyond
//! that, or one larger than [`MAX_BATCH_BYTES`], is sent on its own), and a batch holds
//! at most [`MAX_BATCH_WRITES`] writes and [`MAX_BATCH_BYTES`] of them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::codec;
use super::{MAX_BATCH_ENTRIES, TransportError};
use crate::proto;
use crate::proto::replica_client::ReplicaClient;

/// The most `WriteBatch` calls in flight to one peer. Two rather than one, so a batch
/// can be sent and merged while the previous one waits for its flush on the peer.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// The most writes one batch carries (the server accepts up to [`MAX_BATCH_ENTRIES`]).
pub(crate) const MAX_BATCH_WRITES: usize = 256;

/// The most encoded write bytes one batch carries; a larger single write goes alone, as
/// a plain `Write`, well inside [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES).
pub(crate) const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The most writes that may wait for one peer; more are sent as single calls.
pub(crate) const MAX_QUEUED_WRITES: usize = 4096;

const _: () = assert!(MAX_BATCH_WRITES <= MAX_BATCH_ENTRIES);

/// Something a batch is made of: its size counts against [`MAX_BATCH_BYTES`], and one
/// whose caller has given up is left out.
pub(crate) trait Batchable {
    /// Encoded bytes.
    fn size(&self) -> usize;
    /// Whether nobody waits for the result any more.
    fn abandoned(&self) -> bool;
}

/// Takes the next batch off the front of `queue`: abandoned entries are dropped, then
/// entries are taken in order while the batch stays within `max_writes` and
/// `max_bytes`; the first entry is always taken, whatever its size. Empty only when the
/// queue holds nothing that is still wanted.
pub(crate) fn take_batch<T: Batchable>(
    queue: &mut VecDeque<T>,
    max_writes: usize,
    max_bytes: usize,
) -> Vec<T> {
    let mut batch: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    while batch.len() < max_writes {
        let Some(next) = queue.front() else { break };
        if next.abandoned() {
            queue.pop_front();
            continue;
        }
        if !batch.is_empty() && bytes.saturating_add(next.size()) > max_bytes {
            break;
        }
        bytes = bytes.saturating_add(next.size());
        batch.extend(queue.pop_front());
    }
    batch
}

/// One queued write and where its result goes.
struct Queued {
    request: proto::ReplicaWriteRequest,
    size: usize,
    reply: oneshot::Sender<Result<(), TransportError>>,
}

impl Batchable for Queued {
    fn size(&self) -> usize {
        self.size
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// What the batcher knows of the peer's `WriteBatch` support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Support {
    /// Not refused so far: batch.
    Batches,
    /// The peer answered `UNIMPLEMENTED`: single `Write` calls only.
    SingleWrites,
}

struct State {
    queue: VecDeque<Queued>,
    /// Sender tasks running, at most [`MAX_IN_FLIGHT`]; each sends one batch at a time
    /// and ends when the queue is empty.
    senders: usize,
    support: Support,
}

/// Coalesces one peer's replica writes (see the [module docs](self)).
pub(crate) struct WriteBatcher {
    address: String,
    client: ReplicaClient<Channel>,
    call_timeout: Duration,
    /// A std mutex: it guards queue operations and is never held across an `.await`.
    state: Mutex<State>,
}

impl std::fmt::Debug for WriteBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatcher")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl WriteBatcher {
    /// A batcher for the peer at `address`, calling it through `client`.
    pub(crate) fn new(
        address: String,
        client: ReplicaClient<Channel>,
        call_timeout: Duration,
    ) -> Self {
        Self {
            address,
            client,
            call_timeout,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                senders: 0,
                support: Support::Batches,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Queue operations cannot panic halfway; recover rather than propagate poison.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one replica write, batched with other writes to the same peer, and returns
    /// its own result within the call timeout.
    pub(crate) async fn write(
        self: &Arc<Self>,
        request: proto::ReplicaWriteRequest,
    ) -> Result<(), TransportError> {
        let size = request.encoded_len();
        let (reply, result) = oneshot::channel();
        let alone = {
            let mut state = self.lock();
            if state.support == Support::SingleWrites
                || size > MAX_BATCH_BYTES
                || state.queue.len() >= MAX_QUEUED_WRITES
            {
                Some(request)
            } else {
                state.queue.push_back(Queued {
                    request,
                    size,
                    reply,
                });
                if state.senders < MAX_IN_FLIGHT {
                    state.senders += 1;
                    tokio::spawn(Arc::clone(self).send_queued());
                }
                None
            }
        };
        if let Some(request) = alone {
            return self.single_write(request).await;
        }
        match tokio::time::timeout(self.call_timeout, result).await {
            Err(_elapsed) => Err(TransportError::Timeout {
                address: self.address.clone(),
            }),
            Ok(Ok(result)) => result,
            // The sender dropped the write without an answer: only when the runtime
            // shuts down, and the write may have left by then.
            Ok(Err(_closed)) => Err(TransportError::Unreachable {
                address: self.address.clone(),
                reason: "the write's batch was dropped".to_owned(),
            }),
        }
    }

    /// One sender: sends the queued writes a batch at a time until none are left.
    async fn send_queued(self: Arc<Self>) {
        loop {
            let batch = {
                let mut state = self.lock();
                let batch = take_batch(&mut state.queue, MAX_BATCH_WRITES, MAX_BATCH_BYTES);
                if batch.is_empty() {
                    // Decided under the lock, so a write queued after this sees the
                    // free slot and starts a sender of its own.
                    state.senders -= 1;
                    return;
                }
                batch
            };
            self.send_batch(batch).await;
        }
    }

    /// Sends one batch and hands every write its result.
    async fn send_batch(self: &Arc<Self>, batch: Vec<Queued>) {
        let (requests, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|queued| (queued.request, queued.reply))
            .unzip();
        let sent = requests.len();
        let mut client = self.client.clone();
        // Cheap: the keys and states are reference-counted `Bytes`. Kept for the
        // fallback to single writes.
        let call = client.write_batch(codec::write_batch_request(requests.clone()));
        let results = match tokio::time::timeout(self.call_timeout, call).await {
            Err(_elapsed) => Err(TransportError::Timeout {
                address: self.address.clone(),
            }),
            Ok(Err(status)) if codec::unimplemented(&status) => {
                tracing::info!(
                    peer = %self.address,
                    "peer does not take batched writes; sending single writes"
                );
                self.lock().support = Support::SingleWrites;
                // The batch had no effect: send each write again, concurrently, as
                // single calls would have been.
                for (request, reply) in requests.into_iter().zip(replies) {
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        let _ = reply.send(this.single_write(request).await);
                    });
                }
                return;
            }
            Ok(Err(status)) => Err(codec::status_to_error(&self.address, &status)),
            Ok(Ok(response)) => {
                codec::write_batch_reply(&self.address, sent, response.into_inner())
            }
        };
        match results {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            // The whole call failed: each write shares its class (never sent, or
            // outcome unknown, or refused as a whole).
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// One write as its own `Write` call, under the call timeout.
    async fn single_write(
        &self,
        request: proto::ReplicaWriteRequest,
    ) -> Result<(), TransportError> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.call_timeout, client.write(request)).await {
            Err(_elapsed) => Err(TransportError::Timeout {
                address: self.address.clone(),
            }),
            Ok(Err(status)) => Err(codec::status_to_error(&self.address, &status)),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue entry for the pure batching rule.
    #[derive(Debug, PartialEq, Eq)]
    struct Entry {
        id: u32,
        size: usize,
        abandoned: bool,
    }

    impl Batchable for Entry {
        fn size(&self) -> usize {
            self.size
        }
        fn abandoned(&self) -> bool {
            self.abandoned
        }
    }

    fn queue(entries: &[(u32, usize, bool)]) -> VecDeque<Entry> {
        entries
            .iter()
            .map(|&(id, size, abandoned)| Entry {
                id,
                size,
                abandoned,
            })
            .collect()
    }

    fn ids(batch: &[Entry]) -> Vec<u32> {
        batch.iter().map(|e| e.id).collect()
    }

    #[test]
    fn a_batch_takes_queued_writes_in_order_up_to_the_count() {
        let mut q = queue(&[(1, 10, false), (2, 10, false), (3, 10, false)]);
        assert_eq!(ids(&take_batch(&mut q, 2, 1000)), vec![1, 2]);
        assert_eq!(ids(&take_batch(&mut q, 2, 1000)), vec![3]);
        assert!(take_batch(&mut q, 2, 1000).is_empty());
    }

    #[test]
    fn a_batch_stops_before_the_byte_bound_but_always_takes_one() {
        let mut q = queue(&[
            (1, 60, false),
            (2, 50, false),
            (3, 200, false),
            (4, 1, false),
        ]);
        assert_eq!(ids(&take_batch(&mut q, 10, 100)), vec![1]);
        assert_eq!(ids(&take_batch(&mut q, 10, 100)), vec![2]);
        // Larger than the bound on its own: it still leaves, alone.
        assert_eq!(ids(&take_batch(&mut q, 10, 100)), vec![3]);
        assert_eq!(ids(&take_batch(&mut q, 10, 100)), vec![4]);
    }

    #[test]
    fn writes_whose_callers_gave_up_are_not_sent() {
        let mut q = queue(&[(1, 10, true), (2, 10, false), (3, 10, true), (4, 10, false)]);
        assert_eq!(ids(&take_batch(&mut q, 10, 1000)), vec![2, 4]);
        assert!(q.is_empty());
        let mut only_abandoned = queue(&[(1, 10, true), (2, 10, true)]);
        assert!(take_batch(&mut only_abandoned, 10, 1000).is_empty());
        assert!(only_abandoned.is_empty());
    }
}
