//! Coalescing of concurrent replica writes (and reads) to one peer into `WriteBatch`
//! (`ReadBatch`) calls (I/O shell, used by [`GrpcTransport`](super::GrpcTransport)).
//!
//! Under load a coordinator sends many small replica writes to the same few peers at
//! once, and each gRPC call costs far more than the write it carries: an HTTP/2 stream
//! with its HEADERS, DATA and trailer frames, a server task, routing, a socket write and
//! a wake-up on each side. A [`Batcher`] per peer and kind of call queues the calls that
//! arrive while earlier batches to that peer are in flight (at most [`MAX_IN_FLIGHT`])
//! and sends them as one call when a slot frees up. An idle peer's first call goes out
//! at once, so batching adds no delay when there is nothing to coalesce; under load,
//! batches grow with the queue, as a group commit does. [`Writes`] and [`Reads`] are the
//! two kinds; what follows says "write", and holds for reads the same way (a read that
//! a full batch reply had no room for is sent again as a single `Read`).
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

use std::future::Future;

use prost::Message as _;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Response, Status};

use super::auth::Credentials;
use super::codec;
use super::{BatchResults, MAX_BATCH_ENTRIES, TransportError};
use crate::proto;
use crate::proto::replica_client::ReplicaClient;
use crate::version::SiblingSet;

/// A `Replica` client that presents this node's [`Credentials`] on every call.
pub(crate) type PeerClient = ReplicaClient<InterceptedService<Channel, Credentials>>;

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

/// One kind of replica call that travels in batches: its single and batch RPCs and how
/// their replies map to each call's result.
pub(crate) trait BatchCall: Send + Sync + 'static {
    /// One call's request.
    type Request: prost::Message + Clone + Send + 'static;
    /// One call's result when it succeeds.
    type Reply: Send + 'static;
    /// The single RPC's response.
    type SingleResponse: Send + 'static;
    /// The batch RPC's response.
    type BatchResponse: Send + 'static;
    /// What the calls are, for logs.
    const WHAT: &'static str;

    /// The batch RPC.
    fn call_batch(
        client: PeerClient,
        requests: Vec<Self::Request>,
    ) -> impl Future<Output = Result<Response<Self::BatchResponse>, Status>> + Send;
    /// The single RPC.
    fn call_single(
        client: PeerClient,
        request: Self::Request,
    ) -> impl Future<Output = Result<Response<Self::SingleResponse>, Status>> + Send;
    /// Each call's outcome from a batch reply to `sent` calls; `None` for a call the
    /// peer did not run and that must go again as a single call.
    fn batch_reply(
        address: &str,
        sent: usize,
        response: Self::BatchResponse,
    ) -> Result<BatchResults<Self::Reply>, TransportError>;
    /// A single call's outcome.
    fn single_reply(
        address: &str,
        response: Self::SingleResponse,
    ) -> Result<Self::Reply, TransportError>;
}

/// Replica writes: `Write` and `WriteBatch`.
#[derive(Debug)]
pub(crate) struct Writes;

impl BatchCall for Writes {
    type Request = proto::ReplicaWriteRequest;
    type Reply = ();
    type SingleResponse = proto::ReplicaWriteResponse;
    type BatchResponse = proto::ReplicaWriteBatchResponse;
    const WHAT: &'static str = "writes";

    async fn call_batch(
        mut client: PeerClient,
        requests: Vec<Self::Request>,
    ) -> Result<Response<Self::BatchResponse>, Status> {
        client
            .write_batch(codec::write_batch_request(requests))
            .await
    }

    async fn call_single(
        mut client: PeerClient,
        request: Self::Request,
    ) -> Result<Response<Self::SingleResponse>, Status> {
        client.write(request).await
    }

    fn batch_reply(
        address: &str,
        sent: usize,
        response: Self::BatchResponse,
    ) -> Result<BatchResults<()>, TransportError> {
        codec::write_batch_reply(address, sent, response)
            .map(|results| results.into_iter().map(Some).collect())
    }

    fn single_reply(
        _address: &str,
        _response: proto::ReplicaWriteResponse,
    ) -> Result<(), TransportError> {
        Ok(())
    }
}

/// Replica reads: `Read` and `ReadBatch`.
#[derive(Debug)]
pub(crate) struct Reads;

impl BatchCall for Reads {
    type Request = proto::ReplicaReadRequest;
    type Reply = SiblingSet;
    type SingleResponse = proto::ReplicaReadResponse;
    type BatchResponse = proto::ReplicaReadBatchResponse;
    const WHAT: &'static str = "reads";

    async fn call_batch(
        mut client: PeerClient,
        requests: Vec<Self::Request>,
    ) -> Result<Response<Self::BatchResponse>, Status> {
        client
            .read_batch(proto::ReplicaReadBatchRequest { reads: requests })
            .await
    }

    async fn call_single(
        mut client: PeerClient,
        request: Self::Request,
    ) -> Result<Response<Self::SingleResponse>, Status> {
        client.read(request).await
    }

    fn batch_reply(
        address: &str,
        sent: usize,
        response: Self::BatchResponse,
    ) -> Result<BatchResults<SiblingSet>, TransportError> {
        codec::read_batch_reply(address, sent, response)
    }

    fn single_reply(
        address: &str,
        response: proto::ReplicaReadResponse,
    ) -> Result<SiblingSet, TransportError> {
        codec::read_reply(address, response)
    }
}

/// Coalesces one peer's replica writes.
pub(crate) type WriteBatcher = Batcher<Writes>;
/// Coalesces one peer's replica reads.
pub(crate) type ReadBatcher = Batcher<Reads>;

/// One queued call and where its result goes.
struct Queued<C: BatchCall> {
    request: C::Request,
    size: usize,
    reply: oneshot::Sender<Result<C::Reply, TransportError>>,
}

impl<C: BatchCall> Batchable for Queued<C> {
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
    /// The peer answered `UNIMPLEMENTED`: single calls (`Write`, `Read`) only.
    SingleCalls,
}

struct State<C: BatchCall> {
    queue: VecDeque<Queued<C>>,
    /// Sender tasks running, at most [`MAX_IN_FLIGHT`]; each sends one batch at a time
    /// and ends when the queue is empty.
    senders: usize,
    support: Support,
}

/// Coalesces one peer's replica calls of one kind (see the [module docs](self)).
pub(crate) struct Batcher<C: BatchCall> {
    address: String,
    client: PeerClient,
    call_timeout: Duration,
    /// A std mutex: it guards queue operations and is never held across an `.await`.
    state: Mutex<State<C>>,
}

impl<C: BatchCall> std::fmt::Debug for Batcher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("what", &C::WHAT)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl<C: BatchCall> Batcher<C> {
    /// A batcher for the peer at `address`, calling it through `client`.
    pub(crate) fn new(address: String, client: PeerClient, call_timeout: Duration) -> Self {
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

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // Queue operations cannot panic halfway; recover rather than propagate poison.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one replica call, batched with other calls of its kind to the same peer,
    /// and returns its own result within the call timeout.
    pub(crate) async fn call(
        self: &Arc<Self>,
        request: C::Request,
    ) -> Result<C::Reply, TransportError> {
        let size = request.encoded_len();
        let (reply, result) = oneshot::channel();
        let alone = {
            let mut state = self.lock();
            if state.support == Support::SingleCalls
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
            return self.single_call(request).await;
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
                reason: format!("the batch of {} was dropped", C::WHAT),
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
    async fn send_batch(self: &Arc<Self>, batch: Vec<Queued<C>>) {
        let (requests, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|queued| (queued.request, queued.reply))
            .unzip();
        let sent = requests.len();
        // Cheap: the keys and states are reference-counted `Bytes`. Kept for the
        // fallback to single calls.
        let call = C::call_batch(self.client.clone(), requests.clone());
        let results = match tokio::time::timeout(self.call_timeout, call).await {
            Err(_elapsed) => Err(TransportError::Timeout {
                address: self.address.clone(),
            }),
            Ok(Err(status)) if codec::unimplemented(&status) => {
                tracing::info!(
                    peer = %self.address,
                    what = C::WHAT,
                    "peer does not take batched calls; sending single calls"
                );
                self.lock().support = Support::SingleCalls;
                // The batch had no effect: send each write again, concurrently, as
                // single calls would have been.
                for (request, reply) in requests.into_iter().zip(replies) {
                    self.resend_single(request, reply);
                }
                return;
            }
            Ok(Err(status)) => Err(codec::status_to_error(&self.address, &status)),
            Ok(Ok(response)) => C::batch_reply(&self.address, sent, response.into_inner()),
        };
        match results {
            Ok(results) => {
                for ((request, reply), result) in requests.into_iter().zip(replies).zip(results) {
                    match result {
                        Some(result) => {
                            let _ = reply.send(result);
                        }
                        // The peer had no room for it in the reply: on its own, then.
                        None => self.resend_single(request, reply),
                    }
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

    /// Sends one call of a batch again as a single call, in a task of its own, so the
    /// batch's other results are not held up.
    fn resend_single(
        self: &Arc<Self>,
        request: C::Request,
        reply: oneshot::Sender<Result<C::Reply, TransportError>>,
    ) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _ = reply.send(this.single_call(request).await);
        });
    }

    /// One call on its own (`Write`, `Read`), under the call timeout.
    async fn single_call(&self, request: C::Request) -> Result<C::Reply, TransportError> {
        let call = C::call_single(self.client.clone(), request);
        match tokio::time::timeout(self.call_timeout, call).await {
            Err(_elapsed) => Err(TransportError::Timeout {
                address: self.address.clone(),
            }),
            Ok(Err(status)) => Err(codec::status_to_error(&self.address, &status)),
            Ok(Ok(response)) => C::single_reply(&self.address, response.into_inner()),
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
