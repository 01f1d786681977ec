//! The replica calls over gRPC (tonic): [`GrpcTransport`] calls peers,
//! [`ReplicaService`] serves them.
//!
//! Every call is bounded by the configured call timeout, enforced around the whole
//! call, so a peer that accepted the connection and then stopped answering (a
//! SIGSTOPped process, a black-holed link) still fails the call in time. Errors our
//! server produces from a [`ReplicaError`] carry a marker in the status metadata, so
//! the caller can tell the peer's answer ([`TransportError::Rejected`]) from a
//! transport failure ([`TransportError::Unreachable`]) even when both use the same
//! status code.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use super::auth::{Credentials, InternodeTokens};
use super::batch::{PeerClient, ReadBatcher, WriteBatcher};
use super::codec::{self, MAX_MESSAGE_BYTES};
use super::{
    ForwardedPut, MergeBatch, MerkleQuery, RangePage, RangeScan, ReplicaError, ReplicaHandler,
    ReplicaWrite, Transport, TransportError,
};
use crate::membership::MemberTable;
use crate::merkle::Hash;
use crate::proto;
use crate::proto::replica_client::ReplicaClient;
use crate::proto::replica_server::ReplicaServer;
use crate::version::SiblingSet;

/// Why a transport configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportConfigError {
    /// The call timeout was zero: every call would time out.
    #[error("call timeout must be positive")]
    ZeroCallTimeout,
    /// The connect timeout was zero: no connection could be made.
    #[error("connect timeout must be positive")]
    ZeroConnectTimeout,
}

/// Timeouts for [`GrpcTransport`], checked once at construction. TLS is given to the
/// transport itself ([`GrpcTransport::with_tls`], [`GrpcTransport::set_tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcTransportConfig {
    call_timeout: Duration,
    connect_timeout: Duration,
}

impl GrpcTransportConfig {
    /// Checks and builds a configuration.
    ///
    /// * `call_timeout`: the most a call may take, connecting included; past it the
    ///   call fails with [`TransportError::Timeout`].
    /// * `connect_timeout`: the most establishing a connection may take; past it the
    ///   call fails with [`TransportError::Unreachable`].
    ///
    /// # Errors
    /// [`TransportConfigError`] if either timeout is zero.
    pub fn new(
        call_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, TransportConfigError> {
        if call_timeout.is_zero() {
            return Err(TransportConfigError::ZeroCallTimeout);
        }
        if connect_timeout.is_zero() {
            return Err(TransportConfigError::ZeroConnectTimeout);
        }
        Ok(Self {
            call_timeout,
            connect_timeout,
        })
    }

    /// The bound on a whole call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The bound on establishing a connection.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

impl Default for GrpcTransportConfig {
    /// Calls bounded at 2 s, connections at 1 s: well above a replica write's
    /// latency inside a cluster, well below a client's patience.
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// A client on `channel` presenting `credentials`, with message sizes bounded by
/// [`MAX_MESSAGE_BYTES`] both ways.
fn bounded_client(channel: Channel, credentials: Credentials) -> PeerClient {
    ReplicaClient::with_interceptor(channel, credentials)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// [`Transport`] over gRPC: one lazily connected HTTP/2 channel per peer address,
/// reused by every call to that peer (a channel reconnects by itself after the peer
/// restarts).
///
/// Must be used inside a tokio runtime.
#[derive(Debug)]
pub struct GrpcTransport {
    config: GrpcTransportConfig,
    /// TLS for every peer call (`https`), verifying peers against the configured CA and
    /// presenting this node's certificate; `None` calls peers over plain HTTP/2. Read
    /// when a channel is made, replaced by [`set_tls`](Self::set_tls). A std lock, never
    /// held across an `.await`; taken inside `channels`' lock, never around it.
    tls: RwLock<Option<ClientTlsConfig>>,
    /// What every call presents to the peer's internode authentication.
    credentials: Credentials,
    /// Channels and write batchers by peer address. A std mutex: it guards a map lookup
    /// and is never held across an `.await`. The map grows with the addresses ever
    /// called, which the member table bounds.
    channels: Mutex<HashMap<String, Peer>>,
}

/// What the transport keeps per peer address.
#[derive(Debug, Clone)]
struct Peer {
    /// The peer's HTTP/2 channel, shared by every call.
    channel: Channel,
    /// Coalesces concurrent replica writes to the peer into batches.
    writes: Arc<WriteBatcher>,
    /// Coalesces concurrent replica reads from the peer into batches.
    reads: Arc<ReadBatcher>,
}

impl GrpcTransport {
    /// A transport with no connections yet.
    pub fn new(config: GrpcTransportConfig) -> Self {
        Self {
            config,
            tls: RwLock::new(None),
            credentials: Credentials::none(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A transport that calls every peer over TLS with `tls`.
    pub fn with_tls(config: GrpcTransportConfig, tls: ClientTlsConfig) -> Self {
        Self {
            config,
            tls: RwLock::new(Some(tls)),
            credentials: Credentials::none(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The same transport presenting the first of `tokens` on every call.
    #[must_use]
    pub fn with_token(self, tokens: &InternodeTokens) -> Self {
        Self {
            credentials: Credentials::token(tokens),
            ..self
        }
    }

    /// Calls peers with `tls` from now on (rotated TLS material): the channels made with
    /// the old settings are dropped, so the next call to each peer dials it again; calls
    /// in flight finish on the connection they started on.
    pub fn set_tls(&self, tls: ClientTlsConfig) {
        *self
            .tls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tls);
        // After the settings: a channel made between the two lines is made with the new
        // settings or cleared here.
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The configuration the transport was built with.
    pub fn config(&self) -> &GrpcTransportConfig {
        &self.config
    }

    /// The endpoint for a peer; the TLS seam (scheme and `tls_config`) is here.
    fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        let tls = self
            .tls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true);
        match tls {
            Some(tls) => endpoint.tls_config(tls),
            None => Ok(endpoint),
        }
    }

    /// The peer's channel and batcher, made on first use.
    fn peer(&self, address: &str) -> Result<Peer, TransportError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(peer) = channels.get(address) {
            return Ok(peer.clone());
        }
        let channel = self
            .endpoint(address)
            .map_err(|e| TransportError::NotConnected {
                address: address.to_owned(),
                reason: format!("invalid address: {e}"),
            })?
            .connect_lazy();
        let writes = Arc::new(WriteBatcher::new(
            address.to_owned(),
            bounded_client(channel.clone(), self.credentials.clone()),
            self.config.call_timeout,
        ));
        let reads = Arc::new(ReadBatcher::new(
            address.to_owned(),
            bounded_client(channel.clone(), self.credentials.clone()),
            self.config.call_timeout,
        ));
        let peer = Peer {
            channel,
            writes,
            reads,
        };
        channels.insert(address.to_owned(), peer.clone());
        Ok(peer)
    }

    fn client(&self, address: &str) -> Result<PeerClient, TransportError> {
        Ok(bounded_client(
            self.peer(address)?.channel,
            self.credentials.clone(),
        ))
    }

    /// Runs one call under the call timeout and classifies its failure.
    async fn call<T>(
        &self,
        address: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, TransportError> {
        match tokio::time::timeout(self.config.call_timeout, call).await {
            Err(_elapsed) => Err(TransportError::Timeout {
                address: address.to_owned(),
            }),
            Ok(Err(status)) => Err(codec::status_to_error(address, &status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

#[async_trait]
impl Transport for GrpcTransport {
    /// Batched with concurrent reads from the same peer (see [`super::batch`]).
    async fn read(&self, to: &str, key: &[u8]) -> Result<SiblingSet, TransportError> {
        let reads = self.peer(to)?.reads;
        reads.call(codec::read_request(key)).await
    }

    /// Batched with concurrent writes to the same peer (see [`super::batch`]).
    async fn write(&self, to: &str, write: ReplicaWrite) -> Result<(), TransportError> {
        let writes = self.peer(to)?.writes;
        writes.call(codec::write_request(write)).await
    }

    async fn coordinate_put(&self, to: &str, put: ForwardedPut) -> Result<Vec<u8>, TransportError> {
        let mut client = self.client(to)?;
        let reply = self
            .call(
                to,
                client.coordinate_put(codec::coordinate_put_request(put)),
            )
            .await?;
        codec::coordinate_put_reply(to, reply)
    }

    async fn gossip(&self, to: &str, table: MemberTable) -> Result<MemberTable, TransportError> {
        let mut client = self.client(to)?;
        let reply = self
            .call(to, client.gossip(codec::gossip_request(&table)))
            .await?;
        codec::gossip_reply(to, reply)
    }

    async fn scan_range(&self, to: &str, scan: RangeScan) -> Result<RangePage, TransportError> {
        let mut client = self.client(to)?;
        let request = codec::scan_range_request(scan);
        let reply = self.call(to, client.scan_range(request.clone())).await?;
        codec::scan_range_reply(to, &request, reply)
    }

    async fn merge_batch(&self, to: &str, batch: MergeBatch) -> Result<(), TransportError> {
        let mut client = self.client(to)?;
        self.call(to, client.merge_batch(codec::merge_batch_request(batch)))
            .await
            .map(|proto::MergeBatchResponse {}| ())
    }

    async fn merkle_hashes(
        &self,
        to: &str,
        query: MerkleQuery,
    ) -> Result<Vec<(usize, Hash)>, TransportError> {
        let mut client = self.client(to)?;
        let indices = query.indices.clone();
        let reply = self
            .call(
                to,
                client.merkle_hashes(codec::merkle_hashes_request(query)),
            )
            .await?;
        codec::merkle_hashes_reply(to, &indices, reply)
    }

    async fn purge_tombstone(
        &self,
        to: &str,
        key: &[u8],
        digest: Hash,
    ) -> Result<bool, TransportError> {
        let mut client = self.client(to)?;
        self.call(
            to,
            client.purge_tombstone(codec::purge_tombstone_request(key, digest)),
        )
        .await
        .map(|reply| reply.removed)
    }
}

/// The gRPC `Replica` service: decodes each request with the bounded decoders,
/// answers malformed input with `InvalidArgument` (never panics), calls the handler
/// and encodes its answer.
///
/// `H` may be unsized, so one service type serves any `Arc<dyn ReplicaHandler>`.
#[derive(Debug)]
pub struct ReplicaService<H: ?Sized> {
    handler: Arc<H>,
}

impl<H: ReplicaHandler + ?Sized> ReplicaService<H> {
    /// A service answering with `handler`.
    pub fn new(handler: Arc<H>) -> Self {
        Self { handler }
    }
}

/// The `Replica` gRPC server for `handler`, with message sizes bounded by
/// [`MAX_MESSAGE_BYTES`] both ways.
pub fn replica_server<H: ReplicaHandler + ?Sized>(
    handler: Arc<H>,
) -> ReplicaServer<ReplicaService<H>> {
    ReplicaServer::new(ReplicaService::new(handler))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Answers a request the service could not decode, logging it: it is a peer bug or
/// an attack, not a reason to stop serving.
fn refuse(method: &str, error: ReplicaError) -> Status {
    tracing::debug!(method, %error, "refused a malformed replica request");
    codec::error_to_status(error)
}

#[async_trait]
impl<H: ReplicaHandler + ?Sized> proto::replica_server::Replica for ReplicaService<H> {
    async fn read(
        &self,
        request: Request<proto::ReplicaReadRequest>,
    ) -> Result<Response<proto::ReplicaReadResponse>, Status> {
        let key = request.into_inner().key.to_vec();
        let state = self
            .handler
            .read(key)
            .await
            .map_err(codec::error_to_status)?;
        Ok(Response::new(proto::ReplicaReadResponse {
            state: codec::encode_state(&state),
        }))
    }

    async fn read_batch(
        &self,
        request: Request<proto::ReplicaReadBatchRequest>,
    ) -> Result<Response<proto::ReplicaReadBatchResponse>, Status> {
        let keys =
            codec::decode_read_batch(request.into_inner()).map_err(|e| refuse("read_batch", e))?;
        let asked = keys.len();
        let results = self.handler.read_batch(keys).await;
        if results.len() != asked {
            return Err(codec::error_to_status(ReplicaError::Internal(format!(
                "{} results for {asked} reads",
                results.len()
            ))));
        }
        Ok(Response::new(codec::read_batch_response(results)))
    }

    async fn write(
        &self,
        request: Request<proto::ReplicaWriteRequest>,
    ) -> Result<Response<proto::ReplicaWriteResponse>, Status> {
        let write = codec::decode_write(request.into_inner()).map_err(|e| refuse("write", e))?;
        self.handler
            .write(write)
            .await
            .map_err(codec::error_to_status)?;
        Ok(Response::new(proto::ReplicaWriteResponse {}))
    }

    async fn write_batch(
        &self,
        request: Request<proto::ReplicaWriteBatchRequest>,
    ) -> Result<Response<proto::ReplicaWriteBatchResponse>, Status> {
        let decoded = codec::decode_write_batch(request.into_inner())
            .map_err(|e| refuse("write_batch", e))?;
        // Writes that decoded go to the handler together; the others keep their own
        // error, in their place.
        let mut writes = Vec::with_capacity(decoded.len());
        let mut slots = Vec::with_capacity(decoded.len());
        for write in decoded {
            match write {
                Ok(write) => {
                    writes.push(write);
                    slots.push(None);
                }
                Err(error) => {
                    tracing::debug!(%error, "refused a malformed write of a batch");
                    slots.push(Some(Err(error)));
                }
            }
        }
        let asked = writes.len();
        let handled = self.handler.write_batch(writes).await;
        if handled.len() != asked {
            return Err(codec::error_to_status(ReplicaError::Internal(format!(
                "{} results for {asked} writes",
                handled.len()
            ))));
        }
        let mut handled = handled.into_iter();
        let results = slots
            .into_iter()
            .map(|slot| {
                let result = slot.or_else(|| handled.next()).unwrap_or_else(|| {
                    Err(ReplicaError::Internal(
                        "a write of the batch has no result".into(),
                    ))
                });
                codec::write_result(result)
            })
            .collect();
        Ok(Response::new(proto::ReplicaWriteBatchResponse { results }))
    }

    async fn coordinate_put(
        &self,
        request: Request<proto::CoordinatePutRequest>,
    ) -> Result<Response<proto::PutResponse>, Status> {
        let put = codec::decode_coordinate_put(request.into_inner())
            .map_err(|e| refuse("coordinate_put", e))?;
        let context = self
            .handler
            .coordinate_put(put)
            .await
            .map_err(codec::error_to_status)?;
        Ok(Response::new(proto::PutResponse {
            context: context.into(),
        }))
    }

    async fn gossip(
        &self,
        request: Request<proto::GossipRequest>,
    ) -> Result<Response<proto::GossipResponse>, Status> {
        let table = codec::decode_gossip(request.into_inner()).map_err(|e| refuse("gossip", e))?;
        let merged = self
            .handler
            .gossip(table)
            .await
            .map_err(codec::error_to_status)?;
        Ok(Response::new(proto::GossipResponse {
            table: merged.encode().into(),
        }))
    }

    async fn scan_range(
        &self,
        request: Request<proto::ScanRangeRequest>,
    ) -> Result<Response<proto::ScanRangeResponse>, Status> {
        let scan =
            codec::decode_scan_range(request.into_inner()).map_err(|e| refuse("scan_range", e))?;
        let page = self
            .handler
            .scan_range(scan)
            .await
            .map_err(codec::error_to_status)?;
        Ok(Response::new(codec::scan_range_response(page)))
    }

    async fn merge_batch(
        &self,
        request: Request<proto::MergeBatchRequest>,
    ) -> Result<Response<proto::MergeBatchResponse>, Status> {
        let batch = codec::decode_merge_batch(request.into_inner())
            .map_err(|e| refuse("merge_batch", e))?;
        self.handler
            .merge_batch(batch)
            .await
            .map_err(codec::error_to_status)?;
        Ok(Response::new(proto::MergeBatchResponse {}))
    }

    async fn merkle_hashes(
        &self,
        request: Request<proto::MerkleHashesRequest>,
    ) -> Result<Response<proto::MerkleHashesResponse>, Status> {
        let query = codec::decode_merkle_hashes(request.into_inner())
            .map_err(|e| refuse("merkle_hashes", e))?;
        let asked = query.indices.len();
        let hashes = self
            .handler
            .merkle_hashes(query)
            .await
            .map_err(codec::error_to_status)?;
        if hashes.len() != asked {
            return Err(codec::error_to_status(ReplicaError::Internal(format!(
                "{} hashes for {asked} requested nodes",
                hashes.len()
            ))));
        }
        Ok(Response::new(codec::merkle_hashes_response(&hashes)))
    }

    async fn purge_tombstone(
        &self,
        request: Request<proto::PurgeTombstoneRequest>,
    ) -> Result<Response<proto::PurgeTombstoneResponse>, Status> {
        let (key, digest) = codec::decode_purge_tombstone(request.into_inner())
            .map_err(|e| refuse("purge_tombstone", e))?;
        let removed = self
            .handler
            .purge_tombstone(key, digest)
            .await
            .map_err(codec::error_to_status)?;
        Ok(Response::new(proto::PurgeTombstoneResponse { removed }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::Code;

    use super::*;
    use crate::transport::testing::{
        NeverAnswers, TestReplica, concurrent_state_with_tombstone, node,
    };
    use crate::version::context::Context;
    use crate::version::{SiblingLimits, context};

    /// Serves `handler` on a fresh 127.0.0.1 port and returns the address. The server
    /// task ends with the test's runtime.
    async fn serve<H: ReplicaHandler + ?Sized>(handler: Arc<H>) -> String {
        serve_service(replica_server(handler)).await
    }

    /// Serves `service` on a fresh 127.0.0.1 port and returns the address.
    async fn serve_service<S>(service: S) -> String
    where
        S: tower::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Response = tonic::codegen::http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        address
    }

    /// A "server" test replica, served on a fresh port; and that port's address.
    async fn served() -> (Arc<TestReplica>, String) {
        let replica = Arc::new(TestReplica::new("server"));
        let address = serve(replica.clone()).await;
        (replica, address)
    }

    /// What a caller gets for a key the test replica at `address` refuses.
    fn refused_key(address: &str) -> TransportError {
        TransportError::Rejected {
            address: address.to_owned(),
            error: ReplicaError::InvalidArgument("refused key".into()),
        }
    }

    /// 64 concurrent `what` (a replica's single calls and batch sizes, `calls`) all
    /// went out in batches, in a few calls.
    fn assert_64_in_a_few_batches((single, batches): (usize, Vec<usize>), what: &str) {
        assert_eq!(single, 0);
        assert_eq!(batches.iter().sum::<usize>(), 64);
        assert!(
            batches.len() <= 8,
            "64 concurrent {what} took {} calls: {batches:?}",
            batches.len()
        );
    }

    /// Every call failed before it was sent: the peer was never connected.
    fn assert_never_sent<T: std::fmt::Debug>(results: Vec<Result<T, TransportError>>) {
        for result in results {
            let error = result.unwrap_err();
            assert!(
                matches!(error, TransportError::NotConnected { .. }),
                "{error:?}"
            );
        }
    }

    /// Every call to `address` was sent and timed out.
    fn assert_all_timed_out<T: std::fmt::Debug + PartialEq>(
        results: Vec<Result<T, TransportError>>,
        address: &str,
    ) {
        for result in results {
            assert_eq!(
                result,
                Err(TransportError::Timeout {
                    address: address.to_owned()
                })
            );
        }
    }

    /// The address of a 127.0.0.1 port that was just bound and closed again.
    async fn closed_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        address
    }

    /// A raw gRPC client of the Replica service at `address`.
    async fn raw_client(address: &str) -> ReplicaClient<tonic::transport::Channel> {
        ReplicaClient::connect(format!("http://{address}"))
            .await
            .unwrap()
    }

    /// A first version of a key, of `value`, written by `actor`.
    fn one_version(value: Vec<u8>, actor: &str) -> SiblingSet {
        let mut state = SiblingSet::new();
        state
            .put(
                &Context::new(),
                crate::version::Value::data(value),
                &crate::version::Actor::new(node(actor), 1),
                crate::time::Millis(1),
                &SiblingLimits::default(),
            )
            .unwrap();
        state
    }

    fn transport(call_timeout: Duration) -> GrpcTransport {
        GrpcTransport::new(GrpcTransportConfig::new(call_timeout, Duration::from_secs(1)).unwrap())
    }

    #[test]
    fn config_refuses_zero_timeouts() {
        let second = Duration::from_secs(1);
        assert_eq!(
            GrpcTransportConfig::new(Duration::ZERO, second),
            Err(TransportConfigError::ZeroCallTimeout)
        );
        assert_eq!(
            GrpcTransportConfig::new(second, Duration::ZERO),
            Err(TransportConfigError::ZeroConnectTimeout)
        );
    }

    #[tokio::test]
    async fn write_then_read_round_trips_siblings_and_tombstones() {
        // Dynamo §4.4: concurrent versions and deletes travel between replicas intact.
        let (replica, address) = served().await;
        let transport = transport(Duration::from_secs(5));

        assert_eq!(
            transport.read(&address, b"k").await.unwrap(),
            SiblingSet::new()
        );
        let state = concurrent_state_with_tombstone();
        assert_eq!(state.len(), 3);
        transport
            .write(
                &address,
                ReplicaWrite {
                    key: b"k".to_vec(),
                    state: state.clone(),
                    durable: true,
                    hint_for: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(transport.read(&address, b"k").await.unwrap(), state);
        assert!(replica.hints().is_empty());
    }

    #[tokio::test]
    async fn a_hinted_write_names_the_home_replica() {
        // Dynamo §4.6: the stand-in learns which node the write was meant for.
        let (replica, address) = served().await;
        let write = ReplicaWrite {
            key: b"k".to_vec(),
            state: concurrent_state_with_tombstone(),
            durable: false,
            hint_for: Some(node("home")),
        };
        transport(Duration::from_secs(5))
            .write(&address, write.clone())
            .await
            .unwrap();
        assert_eq!(replica.hints(), vec![(b"k".to_vec(), node("home"))]);
        assert_eq!(replica.stored(b"k"), write.state);
    }

    #[tokio::test]
    async fn gossip_merges_on_both_sides() {
        // Dynamo §4.8: push-pull; each side ends with the union of both views.
        let (replica, address) = served().await;
        let mut ours = MemberTable::new();
        ours.join(node("client"), "10.0.0.1:7000", 2).unwrap();

        let merged = transport(Duration::from_secs(5))
            .gossip(&address, ours.clone())
            .await
            .unwrap();
        assert!(merged.get(&node("client")).is_some());
        assert!(merged.get(&node("server")).is_some());
        assert_eq!(replica.table(), merged);
    }

    #[tokio::test]
    async fn coordinate_put_returns_a_context_that_supersedes() {
        // Dynamo §4.5: a node that is not a replica forwards the put; the context
        // it gets back lets the client overwrite what it wrote.
        let (replica, address) = served().await;
        let transport = transport(Duration::from_secs(5));
        let put = |context: Context, value: &[u8]| ForwardedPut {
            key: b"k".to_vec(),
            context,
            value: Some(value.to_vec()),
            w: None,
            deadline: None,
        };

        let first = transport
            .coordinate_put(&address, put(Context::new(), b"v1"))
            .await
            .unwrap();
        let first = context::decode(&first).unwrap();
        transport
            .coordinate_put(&address, put(first.clone(), b"v2"))
            .await
            .unwrap();
        let values: Vec<Vec<u8>> = replica.stored(b"k").values().map(<[u8]>::to_vec).collect();
        assert_eq!(values, vec![b"v2".to_vec()]);
        // A second write with the stale context is concurrent: both survive.
        transport
            .coordinate_put(&address, put(first, b"v3"))
            .await
            .unwrap();
        assert_eq!(replica.stored(b"k").len(), 2);
        // A delete (no value) is a tombstone.
        let tombstone = ForwardedPut {
            key: b"k".to_vec(),
            context: replica.stored(b"k").context(),
            value: None,
            w: None,
            deadline: None,
        };
        transport.coordinate_put(&address, tombstone).await.unwrap();
        assert!(replica.stored(b"k").is_deleted());
    }

    #[tokio::test]
    async fn handler_errors_arrive_as_the_same_replica_error() {
        let (replica, address) = served().await;
        let transport = transport(Duration::from_secs(5));
        for error in [
            ReplicaError::InvalidArgument("key too long".into()),
            ReplicaError::Unavailable("shutting down".into()),
            ReplicaError::Unauthenticated("no credentials".into()),
            ReplicaError::Internal("disk failed".into()),
        ] {
            replica.refuse_with(Some(error.clone()));
            let got = transport.read(&address, b"k").await.unwrap_err();
            assert_eq!(
                got,
                TransportError::Rejected {
                    address: address.clone(),
                    error
                }
            );
            assert!(got.is_answer());
        }
    }

    #[tokio::test]
    async fn a_refused_put_is_rejected_not_unreachable() {
        // The sibling cap (Dynamo §4.4 leaves siblings to the client; we bound them).
        let replica = Arc::new(TestReplica::with_limits(
            "server",
            SiblingLimits::new(1, 1, 10).unwrap(),
        ));
        let address = serve(replica.clone()).await;
        let transport = transport(Duration::from_secs(5));
        let blind = ForwardedPut {
            key: b"k".to_vec(),
            context: Context::new(),
            value: Some(b"v".to_vec()),
            w: None,
            deadline: None,
        };
        transport
            .coordinate_put(&address, blind.clone())
            .await
            .unwrap();
        let error = transport.coordinate_put(&address, blind).await.unwrap_err();
        assert!(
            matches!(
                &error,
                TransportError::Rejected { error: ReplicaError::InvalidArgument(m), .. }
                    if m.contains("siblings")
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_without_waiting_for_the_timeout() {
        let address = closed_address().await;
        let transport = transport(Duration::from_secs(30));
        let error = transport.read(&address, b"k").await.unwrap_err();
        // Never connected, so never sent: a forwarded put may safely go elsewhere.
        assert!(
            matches!(error, TransportError::NotConnected { .. }),
            "{error:?}"
        );
        assert!(!error.is_answer());
    }

    #[tokio::test]
    async fn a_cached_channel_reaches_a_peer_that_restarts_on_the_same_address() {
        // Dynamo §4.6: temporary failures end; the caller must not need a new transport.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(replica_server(Arc::new(TestReplica::new("first"))))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        let transport = transport(Duration::from_secs(5));
        transport.read(&address, b"k").await.unwrap();

        stop.send(()).unwrap();
        first.await.unwrap().unwrap();
        let error = transport.read(&address, b"k").await.unwrap_err();
        assert!(
            matches!(
                error,
                TransportError::Unreachable { .. } | TransportError::NotConnected { .. }
            ),
            "{error:?}"
        );

        let listener = TcpListener::bind(&address).await.unwrap();
        let replica = Arc::new(TestReplica::new("second"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(replica_server(replica.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let merged = transport
            .gossip(&address, MemberTable::new())
            .await
            .unwrap();
        assert!(merged.get(&node("second")).is_some());
    }

    #[tokio::test]
    async fn an_invalid_address_is_unreachable() {
        let error = transport(Duration::from_secs(1))
            .read("not an address", b"k")
            .await
            .unwrap_err();
        assert!(
            matches!(error, TransportError::NotConnected { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_times_out() {
        let address = serve(Arc::new(NeverAnswers)).await;
        let call_timeout = Duration::from_millis(200);
        let transport = transport(call_timeout);
        let started = Instant::now();
        let error = transport.read(&address, b"k").await.unwrap_err();
        assert_eq!(error, TransportError::Timeout { address });
        // The bound holds from below too: the call was not cut short.
        assert!(started.elapsed() >= call_timeout);
    }

    #[tokio::test]
    async fn garbage_requests_get_invalid_argument_and_the_server_keeps_serving() {
        let (replica, address) = served().await;
        let mut raw = raw_client(&address).await;
        let garbage = Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]);

        let write = raw
            .write(proto::ReplicaWriteRequest {
                key: Bytes::from_static(b"k"),
                state: garbage.clone(),
                durable: false,
                hint_for: None,
            })
            .await
            .unwrap_err();
        let hint = raw
            .write(proto::ReplicaWriteRequest {
                key: Bytes::from_static(b"k"),
                state: Bytes::new(),
                durable: false,
                hint_for: Some(String::new()),
            })
            .await
            .unwrap_err();
        let put = raw
            .coordinate_put(proto::CoordinatePutRequest {
                key: Bytes::from_static(b"k"),
                context: garbage.clone(),
                value: None,
                w: None,
                deadline_unix_ms: None,
            })
            .await
            .unwrap_err();
        let gossip = raw
            .gossip(proto::GossipRequest { table: garbage })
            .await
            .unwrap_err();
        for status in [write, hint, put, gossip] {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.metadata().get(codec::ERROR_MARKER).is_some());
        }
        assert_eq!(replica.stored(b"k"), SiblingSet::new());
        // One bad request refuses that request, not the server.
        assert_eq!(
            transport(Duration::from_secs(5))
                .read(&address, b"k")
                .await
                .unwrap(),
            SiblingSet::new()
        );
    }

    /// A gRPC request body that announces a message of `len` bytes in its frame header
    /// and then sends nothing, ever: a server that buffered the announced message
    /// before checking its size would wait forever.
    struct AnnouncesOnly {
        header: Option<Bytes>,
    }

    impl AnnouncesOnly {
        fn new(len: usize) -> Self {
            let mut header = vec![0u8]; // not compressed
            header.extend(u32::try_from(len).unwrap().to_be_bytes());
            Self {
                header: Some(Bytes::from(header)),
            }
        }
    }

    impl http_body::Body for AnnouncesOnly {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            match self.header.take() {
                Some(header) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(header)))),
                None => std::task::Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_from_its_length_prefix() {
        use tonic::codegen::http;
        use tower::ServiceExt as _;

        let (_, address) = served().await;
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{address}/dynamo.v1.Replica/Write"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(AnnouncesOnly::new(
                MAX_MESSAGE_BYTES + 1,
            )))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), channel.oneshot(request))
            .await
            .expect("the server answers from the frame header, without the body")
            .expect("an HTTP response");
        let status =
            Status::from_header_map(response.headers()).expect("a trailers-only gRPC status");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        // Our limit, not tonic's 4 MiB default.
        assert!(
            status
                .message()
                .contains(&format!("the limit is: {MAX_MESSAGE_BYTES} bytes")),
            "{status:?}"
        );
        // The refusal ends that call only.
        assert_eq!(
            transport(Duration::from_secs(5))
                .read(&address, b"k")
                .await
                .unwrap(),
            SiblingSet::new()
        );
    }

    #[tokio::test]
    async fn an_oversized_reply_is_refused_by_the_caller() {
        // A peer without our server's encoding limit (a bug or a hostile node) sends a
        // state larger than MAX_MESSAGE_BYTES: the caller refuses it, it does not
        // buffer it.
        let replica = Arc::new(TestReplica::new("server"));
        let huge = one_version(vec![7u8; MAX_MESSAGE_BYTES], "server");
        replica
            .write(ReplicaWrite {
                key: b"big".to_vec(),
                state: huge,
                durable: false,
                hint_for: None,
            })
            .await
            .unwrap();
        let address = serve_service(ReplicaServer::new(ReplicaService::new(replica))).await;
        let error = transport(Duration::from_secs(10))
            .read(&address, b"big")
            .await
            .unwrap_err();
        assert!(
            matches!(&error, TransportError::Unreachable { reason, .. }
                if reason.contains(&format!("the limit is: {MAX_MESSAGE_BYTES} bytes"))),
            "{error:?}"
        );
    }

    /// A write of 1 KiB to `key`, as a coordinator sends to a replica.
    fn replica_write(key: &str) -> ReplicaWrite {
        ReplicaWrite {
            key: key.as_bytes().to_vec(),
            state: one_version(vec![b'v'; 1024], "coordinator"),
            durable: true,
            hint_for: None,
        }
    }

    /// Runs `call` for every key at once, each in its own task; the results in key
    /// order.
    async fn at_once<T, F>(keys: &[String], call: impl Fn(&String) -> F) -> Vec<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let tasks: Vec<_> = keys.iter().map(|key| tokio::spawn(call(key))).collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    }

    /// Sends `keys.len()` writes at once from as many tasks; their results in key order.
    async fn concurrent_writes(
        transport: &Arc<GrpcTransport>,
        address: &str,
        keys: &[String],
    ) -> Vec<Result<(), TransportError>> {
        at_once(keys, |key| {
            let (transport, address, write) = (
                Arc::clone(transport),
                address.to_owned(),
                replica_write(key),
            );
            async move { transport.write(&address, write).await }
        })
        .await
    }

    fn keys(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("key-{i}")).collect()
    }

    #[tokio::test]
    async fn concurrent_writes_to_one_peer_share_calls() {
        // 64 writes queued at once travel in a few WriteBatch calls, not 64 Write calls,
        // and every one lands.
        let (replica, address) = served().await;
        let transport = Arc::new(transport(Duration::from_secs(5)));
        let keys = keys(64);
        for result in concurrent_writes(&transport, &address, &keys).await {
            result.unwrap();
        }
        for key in &keys {
            assert_eq!(replica.stored(key.as_bytes()), replica_write(key).state);
        }
        assert_64_in_a_few_batches(replica.write_calls(), "writes");
    }

    #[tokio::test]
    async fn each_write_of_a_batch_keeps_its_own_result() {
        let (replica, address) = served().await;
        replica.refuse_key(b"key-3");
        let transport = Arc::new(transport(Duration::from_secs(5)));
        let keys = keys(8);
        let results = concurrent_writes(&transport, &address, &keys).await;
        for (key, result) in keys.iter().zip(results) {
            if key == "key-3" {
                assert_eq!(result, Err(refused_key(&address)));
                assert!(replica.stored(key.as_bytes()).is_empty());
            } else {
                result.unwrap();
                assert!(!replica.stored(key.as_bytes()).is_empty());
            }
        }
        let (_, batches) = replica.write_calls();
        assert!(batches.iter().any(|&size| size > 1), "{batches:?}");
    }

    /// The Replica service of a node from before `WriteBatch` and `ReadBatch`: tonic
    /// answers `UNIMPLEMENTED` for them, as for any method a server does not know.
    #[derive(Clone)]
    struct WithoutWriteBatch<S>(S);

    impl<S: tonic::server::NamedService> tonic::server::NamedService for WithoutWriteBatch<S> {
        const NAME: &'static str = S::NAME;
    }

    impl<S> tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for WithoutWriteBatch<S>
    where
        S: tower::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Response = tonic::codegen::http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            >,
        S::Future: Send + 'static,
    {
        type Response = tonic::codegen::http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::pin::Pin<
            Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
        >;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(
            &mut self,
            request: tonic::codegen::http::Request<tonic::body::Body>,
        ) -> Self::Future {
            if matches!(
                request.uri().path(),
                "/dynamo.v1.Replica/WriteBatch" | "/dynamo.v1.Replica/ReadBatch"
            ) {
                let response = Status::unimplemented("").into_http();
                return Box::pin(async move { Ok(response) });
            }
            Box::pin(self.0.call(request))
        }
    }

    #[tokio::test]
    async fn a_peer_without_write_batch_gets_single_writes() {
        // A rolling upgrade: the caller is newer than the peer. The refused batch had
        // no effect, so its writes are sent again as single calls, and so is what follows.
        let replica = Arc::new(TestReplica::new("old"));
        let address = serve_service(WithoutWriteBatch(replica_server(replica.clone()))).await;
        let transport = Arc::new(transport(Duration::from_secs(5)));
        let keys = keys(16);
        for result in concurrent_writes(&transport, &address, &keys).await {
            result.unwrap();
        }
        transport
            .write(&address, replica_write("later"))
            .await
            .unwrap();
        for key in keys.iter().map(String::as_str).chain(["later"]) {
            assert_eq!(replica.stored(key.as_bytes()), replica_write(key).state);
        }
        assert_eq!(replica.write_calls(), (17, vec![]));
    }

    /// Reads `keys` at once from as many tasks; their results in key order.
    async fn concurrent_reads(
        transport: &Arc<GrpcTransport>,
        address: &str,
        keys: &[String],
    ) -> Vec<Result<SiblingSet, TransportError>> {
        at_once(keys, |key| {
            let (transport, address, key) =
                (Arc::clone(transport), address.to_owned(), key.clone());
            async move { transport.read(&address, key.as_bytes()).await }
        })
        .await
    }

    /// A replica holding `replica_write(key)` for every key.
    async fn replica_with(keys: &[String]) -> Arc<TestReplica> {
        let replica = Arc::new(TestReplica::new("server"));
        for key in keys {
            replica.write(replica_write(key)).await.unwrap();
        }
        replica
    }

    #[tokio::test]
    async fn concurrent_reads_from_one_peer_share_calls_and_each_gets_its_own_state() {
        let keys = keys(64);
        let replica = replica_with(&keys[..60]).await;
        let address = serve(replica.clone()).await;
        let transport = Arc::new(transport(Duration::from_secs(5)));
        let results = concurrent_reads(&transport, &address, &keys).await;
        for (i, (key, result)) in keys.iter().zip(results).enumerate() {
            let expected = if i < 60 {
                replica_write(key).state
            } else {
                SiblingSet::new() // never written: the empty state
            };
            assert_eq!(result.unwrap(), expected, "{key}");
        }
        assert_64_in_a_few_batches(replica.read_calls(), "reads");
    }

    #[tokio::test]
    async fn a_failing_read_of_a_batch_fails_alone() {
        let keys = keys(8);
        let replica = replica_with(&keys).await;
        replica.refuse_key(b"key-3");
        let address = serve(replica.clone()).await;
        let transport = Arc::new(transport(Duration::from_secs(5)));
        let results = concurrent_reads(&transport, &address, &keys).await;
        for (key, result) in keys.iter().zip(results) {
            if key == "key-3" {
                assert_eq!(result, Err(refused_key(&address)));
            } else {
                assert_eq!(result.unwrap(), replica_write(key).state);
            }
        }
        let (_, batches) = replica.read_calls();
        assert!(batches.iter().any(|&size| size > 1), "{batches:?}");
    }

    #[tokio::test]
    async fn reads_a_full_batch_reply_has_no_room_for_go_again_alone() {
        // Three states of 3 MiB: a batch reply holds the first within its 4 MiB budget
        // and defers the rest, which come back through single reads.
        let keys = keys(3);
        let replica = Arc::new(TestReplica::new("server"));
        let big = |key: &str| {
            let mut write = replica_write(key);
            write.state = one_version(vec![b'b'; 3 * 1024 * 1024], "coordinator");
            write
        };
        for key in &keys {
            replica.write(big(key)).await.unwrap();
        }
        let address = serve(replica.clone()).await;
        let transport = Arc::new(transport(Duration::from_secs(10)));
        // Queued at once, they usually leave as one batch (whatever the split, each
        // read a batch reply deferred goes again alone; the codec tests pin the rule).
        let results = concurrent_reads(&transport, &address, &keys).await;
        for (key, result) in keys.iter().zip(results) {
            assert_eq!(result.unwrap(), big(key).state, "{key}");
        }
        let (single, batches) = replica.read_calls();
        let batched: usize = batches.iter().sum();
        assert_eq!(
            batched, 3,
            "every read went out in a batch first: {batches:?}"
        );
        assert!(
            single
                >= batches
                    .iter()
                    .filter(|&&size| size > 1)
                    .map(|size| size - 1)
                    .sum(),
            "each deferred read went again alone: {single} single, batches {batches:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_without_read_batch_gets_single_reads() {
        let keys = keys(16);
        let replica = replica_with(&keys).await;
        let address = serve_service(WithoutWriteBatch(replica_server(replica.clone()))).await;
        let transport = Arc::new(transport(Duration::from_secs(5)));
        for (key, result) in keys
            .iter()
            .zip(concurrent_reads(&transport, &address, &keys).await)
        {
            assert_eq!(result.unwrap(), replica_write(key).state);
        }
        assert_eq!(
            transport.read(&address, b"key-0").await.unwrap(),
            replica_write("key-0").state
        );
        assert_eq!(replica.read_calls(), (17, vec![]));
    }

    #[tokio::test]
    async fn batched_reads_from_a_closed_port_are_never_sent_and_a_silent_peer_times_out() {
        let closed = closed_address().await;
        let transport = Arc::new(transport(Duration::from_millis(300)));
        assert_never_sent(concurrent_reads(&transport, &closed, &keys(8)).await);
        let silent = serve(Arc::new(NeverAnswers)).await;
        assert_all_timed_out(
            concurrent_reads(&transport, &silent, &keys(8)).await,
            &silent,
        );
    }

    #[tokio::test]
    async fn an_oversized_read_batch_is_refused_whole() {
        let (replica, address) = served().await;
        let mut raw = raw_client(&address).await;
        let too_many = proto::ReplicaReadBatchRequest {
            reads: vec![codec::read_request(b"k"); crate::transport::MAX_BATCH_ENTRIES + 1],
        };
        let status = raw.read_batch(too_many).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("at most"), "{}", status.message());
        assert_eq!(replica.read_calls(), (0, vec![]), "nothing was read");
    }

    #[tokio::test]
    async fn batched_writes_to_a_closed_port_are_never_sent() {
        let address = closed_address().await;
        let transport = Arc::new(transport(Duration::from_secs(30)));
        assert_never_sent(concurrent_writes(&transport, &address, &keys(8)).await);
    }

    #[tokio::test]
    async fn batched_writes_to_a_peer_that_never_answers_time_out() {
        // Sent, never answered: outcome unknown for each write, within its own deadline.
        let address = serve(Arc::new(NeverAnswers)).await;
        let transport = Arc::new(transport(Duration::from_millis(200)));
        assert_all_timed_out(
            concurrent_writes(&transport, &address, &keys(8)).await,
            &address,
        );
    }

    #[tokio::test]
    async fn a_batch_refuses_malformed_writes_one_by_one_and_oversized_batches_whole() {
        let (replica, address) = served().await;
        let mut raw = raw_client(&address).await;
        let good = codec::write_request(replica_write("good"));
        let garbage = proto::ReplicaWriteRequest {
            key: Bytes::from_static(b"bad"),
            state: Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
            durable: false,
            hint_for: None,
        };
        let reply = raw
            .write_batch(proto::ReplicaWriteBatchRequest {
                writes: vec![garbage.clone(), good.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.results.len(), 2);
        assert_eq!(reply.results[0].code, Code::InvalidArgument as u32);
        assert!(reply.results[0].message.contains("state"), "{reply:?}");
        assert_eq!(reply.results[1], proto::ReplicaWriteResult::default());
        assert_eq!(replica.stored(b"good"), replica_write("good").state);
        assert!(replica.stored(b"bad").is_empty());

        let too_many = proto::ReplicaWriteBatchRequest {
            writes: vec![good; crate::transport::MAX_BATCH_ENTRIES + 1],
        };
        let status = raw.write_batch(too_many).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.metadata().get(codec::ERROR_MARKER).is_some());
        assert_eq!(replica.write_calls().1, vec![1]);
    }
}
