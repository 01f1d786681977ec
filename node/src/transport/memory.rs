//! An in-process network of nodes with deterministic fault injection, for tests that
//! run a whole cluster in one process.
//!
//! A call is two messages: the request from caller to callee, then the reply back.
//! Each message crosses a directed link, and faults apply per link:
//!
//! * **unregistered** callee (a crashed node, [`MemoryNetwork::unregister`]): the call
//!   fails at once with [`TransportError::NotConnected`] (it was never sent). A node
//!   unregistered while serving a call never delivers the reply: `Unreachable`.
//! * **cut** link ([`MemoryNetwork::cut`], [`MemoryNetwork::partition`],
//!   [`MemoryNetwork::isolate`]): the message is refused at once, like a connection
//!   refused or reset. A cut request never reaches the callee: `NotConnected`; a cut
//!   reply is lost after the callee acted (an asymmetric partition: the write landed,
//!   the caller cannot know): `Unreachable`.
//! * **dropped** message ([`MemoryNetwork::set_drop`]): it vanishes silently, so the
//!   caller waits out its call timeout and gets [`TransportError::Timeout`], as with a
//!   lost packet on a real network. That is the difference between a drop and a cut.
//! * **delayed** link ([`MemoryNetwork::set_delay`]): every message waits
//!   (`tokio::time::sleep`, so a test with a paused clock stays deterministic). A call
//!   whose messages take longer than the call timeout fails with `Timeout`; a message
//!   still in flight when the caller gives up is never delivered.
//!
//! Payloads go through the same encodings as over gRPC: each message is encoded to
//! protobuf bytes and decoded again, and the callee is served by the same
//! [`ReplicaService`] the gRPC server uses, so replies, errors and their
//! classification are exactly those of [`super::GrpcTransport`], minus HTTP/2.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use tonic::{Request, Response, Status};

use super::codec::{self, MAX_MESSAGE_BYTES};
use super::grpc::{ReplicaService, TransportConfigError};
use super::{
    ForwardedPut, MergeBatch, MerkleQuery, RangePage, RangeScan, ReplicaHandler, ReplicaWrite,
    Transport, TransportError,
};
use crate::membership::MemberTable;
use crate::merkle::Hash;
use crate::proto::replica_server::Replica;
use crate::version::SiblingSet;

type Service = Arc<ReplicaService<dyn ReplicaHandler>>;

/// A directed link: (sender, receiver).
type Link = (String, String);

/// A cloneable handle on one simulated network; every clone sees the same nodes and
/// faults.
#[derive(Clone)]
pub struct MemoryNetwork {
    /// A std mutex: every operation is a few map lookups and none holds it across an
    /// `.await`.
    state: Arc<Mutex<NetworkState>>,
    call_timeout: Duration,
}

#[derive(Default)]
struct NetworkState {
    nodes: HashMap<String, Service>,
    cut: HashSet<Link>,
    isolated: HashSet<String>,
    /// How many more messages each link loses.
    drops: HashMap<Link, u64>,
    delays: HashMap<Link, Duration>,
}

/// What happens to one message on a link that is not cut.
enum Hop {
    Deliver(Duration),
    Lose,
}

impl NetworkState {
    /// Sends one message over `from -> to`: refused (the reason), lost, or delivered
    /// after a delay. Consumes one pending drop.
    fn hop(&mut self, from: &str, to: &str) -> Result<Hop, &'static str> {
        if self.isolated.contains(from) || self.isolated.contains(to) {
            return Err("node isolated");
        }
        let link = (from.to_owned(), to.to_owned());
        if self.cut.contains(&link) {
            return Err("link cut");
        }
        if let Some(left) = self.drops.get_mut(&link).filter(|left| **left > 0) {
            *left -= 1;
            return Ok(Hop::Lose);
        }
        Ok(Hop::Deliver(
            self.delays.get(&link).copied().unwrap_or_default(),
        ))
    }
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        let mut nodes: Vec<&String> = state.nodes.keys().collect();
        nodes.sort();
        f.debug_struct("MemoryNetwork")
            .field("nodes", &nodes)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryNetwork {
    /// A network whose calls time out after 2 s, like the gRPC default.
    fn default() -> Self {
        Self::with_call_timeout(super::GrpcTransportConfig::default().call_timeout())
    }
}

impl MemoryNetwork {
    /// An empty network whose calls give up after `call_timeout`.
    ///
    /// # Errors
    /// [`TransportConfigError::ZeroCallTimeout`] if `call_timeout` is zero.
    pub fn new(call_timeout: Duration) -> Result<Self, TransportConfigError> {
        if call_timeout.is_zero() {
            return Err(TransportConfigError::ZeroCallTimeout);
        }
        Ok(Self::with_call_timeout(call_timeout))
    }

    fn with_call_timeout(call_timeout: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetworkState::default())),
            call_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        // The state stays consistent even if a holder panicked: each operation is a
        // single map update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves calls to `address` with `handler`, replacing any node there (a restart).
    pub fn register(&self, address: impl Into<String>, handler: Arc<dyn ReplicaHandler>) {
        self.lock()
            .nodes
            .insert(address.into(), Arc::new(ReplicaService::new(handler)));
    }

    /// Removes the node at `address` (a crash); returns whether there was one. Faults
    /// set on its links stay.
    pub fn unregister(&self, address: &str) -> bool {
        self.lock().nodes.remove(address).is_some()
    }

    /// The transport a node at `from` uses to call its peers. `from` need not be
    /// registered (a client that serves nothing).
    pub fn endpoint(&self, from: impl Into<String>) -> MemoryTransport {
        MemoryTransport {
            network: self.clone(),
            from: from.into(),
        }
    }

    /// Cuts the link `from -> to` (one direction only).
    pub fn cut(&self, from: &str, to: &str) {
        self.lock().cut.insert((from.to_owned(), to.to_owned()));
    }

    /// Restores the link `from -> to` cut by [`cut`](Self::cut) or
    /// [`partition`](Self::partition).
    pub fn heal(&self, from: &str, to: &str) {
        self.lock().cut.remove(&(from.to_owned(), to.to_owned()));
    }

    /// Cuts every link between the two groups, both directions. Links inside a group
    /// are untouched.
    pub fn partition(&self, group_a: &[&str], group_b: &[&str]) {
        let mut state = self.lock();
        for a in group_a {
            for b in group_b {
                state.cut.insert(((*a).to_owned(), (*b).to_owned()));
                state.cut.insert(((*b).to_owned(), (*a).to_owned()));
            }
        }
    }

    /// Cuts every link to and from `address`, including links to nodes registered
    /// later, until [`reconnect`](Self::reconnect).
    pub fn isolate(&self, address: &str) {
        self.lock().isolated.insert(address.to_owned());
    }

    /// Ends [`isolate`](Self::isolate) for `address`; links cut one by one stay cut.
    pub fn reconnect(&self, address: &str) {
        self.lock().isolated.remove(address);
    }

    /// Loses the next `count` messages sent over `from -> to` (requests of calls
    /// from `from`, and replies to calls `to` made); 0 ends dropping.
    pub fn set_drop(&self, from: &str, to: &str, count: u64) {
        self.lock()
            .drops
            .insert((from.to_owned(), to.to_owned()), count);
    }

    /// Delays every message sent over `from -> to` by `delay`; zero ends the delay.
    pub fn set_delay(&self, from: &str, to: &str, delay: Duration) {
        self.lock()
            .delays
            .insert((from.to_owned(), to.to_owned()), delay);
    }

    /// Removes every fault: cuts, partitions, isolation, pending drops and delays.
    /// Unregistered nodes stay down.
    pub fn heal_all(&self) {
        let mut state = self.lock();
        state.cut.clear();
        state.isolated.clear();
        state.drops.clear();
        state.delays.clear();
    }

    /// Sends a request: the callee's service and what happens to the message.
    fn send_request(&self, from: &str, to: &str) -> Result<(Service, Hop), TransportError> {
        let mut state = self.lock();
        let service = state
            .nodes
            .get(to)
            .cloned()
            .ok_or_else(|| not_connected(to, "no node at this address"))?;
        let hop = state
            .hop(from, to)
            .map_err(|reason| not_connected(to, reason))?;
        Ok((service, hop))
    }

    /// Sends the reply of a call `caller -> callee`.
    fn send_reply(&self, callee: &str, caller: &str) -> Result<Hop, TransportError> {
        let mut state = self.lock();
        if !state.nodes.contains_key(callee) {
            return Err(unreachable(callee, "node went down during the call"));
        }
        state
            .hop(callee, caller)
            .map_err(|reason| unreachable(callee, reason))
    }
}

/// The request never left the caller.
fn not_connected(address: &str, reason: &str) -> TransportError {
    TransportError::NotConnected {
        address: address.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The request may have reached the callee; the reply did not come back.
fn unreachable(address: &str, reason: &str) -> TransportError {
    TransportError::Unreachable {
        address: address.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Waits out one message's trip; a lost message never arrives.
async fn travel(hop: Hop) {
    match hop {
        Hop::Deliver(delay) if delay.is_zero() => {}
        Hop::Deliver(delay) => tokio::time::sleep(delay).await,
        Hop::Lose => std::future::pending().await,
    }
}

/// Puts a message through its protobuf encoding, with gRPC's size bound. Failures are
/// the statuses tonic itself would produce (no application-error marker).
fn transit<M: Message + Default>(message: &M) -> Result<M, Status> {
    let bytes = message.encode_to_vec();
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Status::out_of_range(format!(
            "message of {} bytes exceeds the limit of {MAX_MESSAGE_BYTES}",
            bytes.len()
        )));
    }
    M::decode(bytes.as_slice()).map_err(|e| Status::internal(format!("undecodable message: {e}")))
}

/// [`Transport`] over a [`MemoryNetwork`], calling from one address.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    from: String,
}

impl MemoryTransport {
    /// The address calls come from.
    pub fn address(&self) -> &str {
        &self.from
    }

    /// One call: request hop, service, reply hop, all under the call timeout.
    async fn call<Req, Resp, Serve, Served>(
        &self,
        to: &str,
        request: Req,
        serve: Serve,
    ) -> Result<Resp, TransportError>
    where
        Req: Message + Default,
        Resp: Message + Default,
        Serve: FnOnce(Service, Request<Req>) -> Served,
        Served: Future<Output = Result<Response<Resp>, Status>>,
    {
        let exchange = async {
            let (service, hop) = self.network.send_request(&self.from, to)?;
            travel(hop).await;
            let outcome = match transit(&request) {
                Ok(request) => serve(service, Request::new(request))
                    .await
                    .and_then(|response| transit(response.get_ref())),
                Err(status) => Err(status),
            };
            travel(self.network.send_reply(to, &self.from)?).await;
            outcome.map_err(|status| codec::status_to_error(to, &status))
        };
        tokio::time::timeout(self.network.call_timeout, exchange)
            .await
            .unwrap_or_else(|_elapsed| {
                Err(TransportError::Timeout {
                    address: to.to_owned(),
                })
            })
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn read(&self, to: &str, key: &[u8]) -> Result<SiblingSet, TransportError> {
        let reply = self
            .call(
                to,
                codec::read_request(key),
                |service, request| async move { service.read(request).await },
            )
            .await?;
        codec::read_reply(to, reply)
    }

    async fn write(&self, to: &str, write: ReplicaWrite) -> Result<(), TransportError> {
        self.call(
            to,
            codec::write_request(write),
            |service, request| async move { service.write(request).await },
        )
        .await
        .map(|crate::proto::ReplicaWriteResponse {}| ())
    }

    async fn coordinate_put(&self, to: &str, put: ForwardedPut) -> Result<Vec<u8>, TransportError> {
        let reply = self
            .call(
                to,
                codec::coordinate_put_request(put),
                |service, request| async move { service.coordinate_put(request).await },
            )
            .await?;
        codec::coordinate_put_reply(to, reply)
    }

    async fn gossip(&self, to: &str, table: MemberTable) -> Result<MemberTable, TransportError> {
        let reply = self
            .call(
                to,
                codec::gossip_request(&table),
                |service, request| async move { service.gossip(request).await },
            )
            .await?;
        codec::gossip_reply(to, reply)
    }

    async fn scan_range(&self, to: &str, scan: RangeScan) -> Result<RangePage, TransportError> {
        let request = codec::scan_range_request(scan);
        let reply = self
            .call(to, request.clone(), |service, request| async move {
                service.scan_range(request).await
            })
            .await?;
        codec::scan_range_reply(to, &request, reply)
    }

    async fn merge_batch(&self, to: &str, batch: MergeBatch) -> Result<(), TransportError> {
        self.call(
            to,
            codec::merge_batch_request(batch),
            |service, request| async move { service.merge_batch(request).await },
        )
        .await
        .map(|crate::proto::MergeBatchResponse {}| ())
    }

    async fn merkle_hashes(
        &self,
        to: &str,
        query: MerkleQuery,
    ) -> Result<Vec<(usize, Hash)>, TransportError> {
        let indices = query.indices.clone();
        let reply = self
            .call(
                to,
                codec::merkle_hashes_request(query),
                |service, request| async move { service.merkle_hashes(request).await },
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
        self.call(
            to,
            codec::purge_tombstone_request(key, digest),
            |service, request| async move { service.purge_tombstone(request).await },
        )
        .await
        .map(|reply| reply.removed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use tokio::time::Instant;

    use super::*;
    use crate::transport::ReplicaError;
    use crate::transport::testing::{
        NeverAnswers, TestReplica, concurrent_state_with_tombstone, node,
    };
    use crate::version::context;

    const TIMEOUT: Duration = Duration::from_millis(500);

    /// Three replicas "a", "b", "c" on one network.
    fn cluster() -> (MemoryNetwork, Vec<Arc<TestReplica>>) {
        let network = MemoryNetwork::new(TIMEOUT).unwrap();
        let replicas: Vec<Arc<TestReplica>> = ["a", "b", "c"]
            .iter()
            .map(|name| {
                let replica = Arc::new(TestReplica::new(name));
                network.register(*name, replica.clone());
                replica
            })
            .collect();
        (network, replicas)
    }

    fn write_of(key: &[u8]) -> ReplicaWrite {
        ReplicaWrite {
            key: key.to_vec(),
            state: concurrent_state_with_tombstone(),
            durable: true,
            hint_for: None,
        }
    }

    /// Refused without an answer: never sent, or sent with the reply lost.
    fn is_unreachable(result: &Result<impl std::fmt::Debug, TransportError>) -> bool {
        matches!(
            result,
            Err(TransportError::Unreachable { .. } | TransportError::NotConnected { .. })
        )
    }

    #[test]
    fn a_zero_call_timeout_is_refused() {
        assert!(matches!(
            MemoryNetwork::new(Duration::ZERO),
            Err(TransportConfigError::ZeroCallTimeout)
        ));
    }

    #[tokio::test]
    async fn every_call_round_trips_through_the_wire_encodings() {
        let (network, replicas) = cluster();
        let a = network.endpoint("a");
        assert_eq!(a.address(), "a");

        assert_eq!(a.read("b", b"k").await.unwrap(), SiblingSet::new());
        let hinted = ReplicaWrite {
            hint_for: Some(node("c")),
            ..write_of(b"k")
        };
        a.write("b", hinted.clone()).await.unwrap();
        assert_eq!(a.read("b", b"k").await.unwrap(), hinted.state);
        assert_eq!(replicas[1].hints(), vec![(b"k".to_vec(), node("c"))]);

        let put = ForwardedPut {
            key: b"p".to_vec(),
            context: crate::version::context::Context::new(),
            value: Some(b"v".to_vec()),
            w: Some(2),
            deadline: None,
        };
        let returned = context::decode(&a.coordinate_put("b", put).await.unwrap()).unwrap();
        // Contexts carry no timestamps: compare what they cover.
        let stored = replicas[1].stored(b"p").context();
        assert!(returned.descends(&stored) && stored.descends(&returned));

        let merged = a.gossip("b", replicas[0].table()).await.unwrap();
        assert!(merged.get(&node("a")).is_some() && merged.get(&node("b")).is_some());
    }

    #[tokio::test]
    async fn a_range_moves_between_replicas_with_scan_and_merge_batch() {
        use crate::ring::TokenRange;
        use crate::transport::{MergeBatch, RangeEntry, RangeScan};

        let (network, replicas) = cluster();
        let a = network.endpoint("a");
        for i in 0..30 {
            a.write("b", write_of(format!("k{i}").as_bytes()))
                .await
                .unwrap();
        }
        // Page through b's whole ring three keys at a time and push each page to c.
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = a
                .scan_range(
                    "b",
                    RangeScan {
                        range: TokenRange::full(),
                        after: after.clone(),
                        max_entries: 3,
                        max_bytes: u32::MAX,
                    },
                )
                .await
                .unwrap();
            pages += 1;
            assert!(page.entries.len() <= 3 && pages < 100);
            after = page.entries.last().map(|e: &RangeEntry| e.key.clone());
            a.merge_batch(
                "c",
                MergeBatch {
                    entries: page.entries,
                    durable: true,
                },
            )
            .await
            .unwrap();
            if page.done {
                break;
            }
        }
        assert!(pages >= 10, "30 keys in pages of 3");
        for i in 0..30 {
            let key = format!("k{i}");
            assert_eq!(
                replicas[2].stored(key.as_bytes()),
                concurrent_state_with_tombstone(),
                "{key}"
            );
        }
    }

    #[tokio::test]
    async fn handler_errors_are_rejections_with_the_same_variant() {
        let (network, replicas) = cluster();
        let error = ReplicaError::Unavailable("shutting down".into());
        replicas[1].refuse_with(Some(error.clone()));
        let result = network.endpoint("a").read("b", b"k").await;
        assert_eq!(
            result,
            Err(TransportError::Rejected {
                address: "b".into(),
                error
            })
        );
        // A request the callee cannot decode is its answer too.
        let bad = ForwardedPut {
            key: b"k".to_vec(),
            context: crate::version::context::Context::new(),
            value: None,
            w: Some(0),
            deadline: None,
        };
        replicas[1].refuse_with(None);
        assert!(matches!(
            network.endpoint("a").coordinate_put("b", bad).await,
            Err(TransportError::Rejected {
                error: ReplicaError::InvalidArgument(_),
                ..
            })
        ));
    }

    #[tokio::test]
    async fn an_unregistered_node_is_unreachable_until_it_returns() {
        let (network, _replicas) = cluster();
        let a = network.endpoint("a");
        assert!(is_unreachable(&a.read("nowhere", b"k").await));

        assert!(network.unregister("b"));
        assert!(!network.unregister("b"));
        assert!(is_unreachable(&a.read("b", b"k").await));

        // Dynamo §4.6: a node that comes back (here with empty storage) answers again.
        network.register("b", Arc::new(TestReplica::new("b")));
        assert_eq!(a.read("b", b"k").await.unwrap(), SiblingSet::new());
    }

    #[tokio::test]
    async fn a_cut_is_one_directional() {
        let (network, replicas) = cluster();
        network.cut("a", "b");

        // a -> b: the request never arrives.
        assert!(is_unreachable(
            &network.endpoint("a").write("b", write_of(b"1")).await
        ));
        assert_eq!(replicas[1].stored(b"1"), SiblingSet::new());

        // b -> a: the write lands, but the reply over a -> b is refused.
        assert!(is_unreachable(
            &network.endpoint("b").write("a", write_of(b"2")).await
        ));
        assert_eq!(replicas[0].stored(b"2"), write_of(b"2").state);

        // Other links are untouched.
        network
            .endpoint("a")
            .write("c", write_of(b"3"))
            .await
            .unwrap();

        network.heal("a", "b");
        network
            .endpoint("a")
            .write("b", write_of(b"1"))
            .await
            .unwrap();
        assert_eq!(replicas[1].stored(b"1"), write_of(b"1").state);
    }

    #[tokio::test]
    async fn a_partition_splits_groups_both_ways_and_heal_all_joins_them() {
        // Dynamo §4.6: each side of a partition keeps serving its own members.
        let (network, _replicas) = cluster();
        network.partition(&["a", "b"], &["c"]);
        for (from, to) in [("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")] {
            assert!(
                is_unreachable(&network.endpoint(from).read(to, b"k").await),
                "{from} -> {to}"
            );
        }
        network.endpoint("a").read("b", b"k").await.unwrap();
        network.endpoint("b").read("a", b"k").await.unwrap();

        network.heal_all();
        network.endpoint("c").read("a", b"k").await.unwrap();
        network.endpoint("a").read("c", b"k").await.unwrap();
    }

    #[tokio::test]
    async fn an_isolated_node_reaches_no_one_until_reconnected() {
        let (network, _replicas) = cluster();
        network.isolate("b");
        assert!(is_unreachable(&network.endpoint("a").read("b", b"k").await));
        assert!(is_unreachable(&network.endpoint("b").read("c", b"k").await));
        network.endpoint("a").read("c", b"k").await.unwrap();

        network.reconnect("b");
        network.endpoint("a").read("b", b"k").await.unwrap();
        network.endpoint("b").read("c", b"k").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_requests_time_out_then_the_link_recovers() {
        let (network, replicas) = cluster();
        let a = network.endpoint("a");
        network.set_drop("a", "b", 2);
        for _ in 0..2 {
            let started = Instant::now();
            let result = a.write("b", write_of(b"k")).await;
            assert_eq!(
                result,
                Err(TransportError::Timeout {
                    address: "b".into()
                })
            );
            assert_eq!(started.elapsed(), TIMEOUT);
            assert_eq!(replicas[1].stored(b"k"), SiblingSet::new());
        }
        a.write("b", write_of(b"k")).await.unwrap();
        assert_eq!(replicas[1].stored(b"k"), write_of(b"k").state);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_reply_times_out_after_the_callee_acted() {
        // The case sloppy quorum must tolerate: the write is on the replica, but the
        // coordinator counts it as failed (Dynamo §4.6).
        let (network, replicas) = cluster();
        network.set_drop("b", "a", 1);
        let result = network.endpoint("a").write("b", write_of(b"k")).await;
        assert!(matches!(result, Err(TransportError::Timeout { .. })));
        assert_eq!(replicas[1].stored(b"k"), write_of(b"k").state);
        network.endpoint("a").read("b", b"k").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn delays_add_up_per_direction_and_past_the_timeout_the_call_fails() {
        let (network, replicas) = cluster();
        let a = network.endpoint("a");
        network.set_delay("a", "b", Duration::from_millis(300));
        network.set_delay("b", "a", Duration::from_millis(100));

        let started = Instant::now();
        a.read("b", b"k").await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(400));

        // Other directions and links are not delayed.
        let started = Instant::now();
        a.read("c", b"k").await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);

        // A request slower than the timeout never arrives.
        network.set_delay("a", "b", TIMEOUT + Duration::from_millis(1));
        let result = a.write("b", write_of(b"k")).await;
        assert!(matches!(result, Err(TransportError::Timeout { .. })));
        assert_eq!(replicas[1].stored(b"k"), SiblingSet::new());

        network.set_delay("a", "b", Duration::ZERO);
        network.set_delay("b", "a", Duration::ZERO);
        let started = Instant::now();
        a.read("b", b"k").await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn heal_all_clears_drops_and_delays() {
        let (network, _replicas) = cluster();
        network.set_drop("a", "b", 10);
        network.set_delay("a", "c", Duration::from_secs(1));
        network.heal_all();
        let a = network.endpoint("a");
        let started = Instant::now();
        a.read("b", b"k").await.unwrap();
        a.read("c", b"k").await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// The fault operations of the model test, on nodes 0..3.
    #[derive(Debug, Clone)]
    enum Op {
        Cut(usize, usize),
        Heal(usize, usize),
        PartitionOff(usize),
        Isolate(usize),
        Reconnect(usize),
        Drop(usize, usize, u64),
        Crash(usize),
        Restart(usize),
        HealAll,
        Write(usize, usize),
    }

    fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let node = || 0usize..3;
        prop_oneof![
            (node(), node()).prop_map(|(a, b)| Op::Cut(a, b)),
            (node(), node()).prop_map(|(a, b)| Op::Heal(a, b)),
            node().prop_map(Op::PartitionOff),
            node().prop_map(Op::Isolate),
            node().prop_map(Op::Reconnect),
            (node(), node(), 0u64..3).prop_map(|(a, b, n)| Op::Drop(a, b, n)),
            node().prop_map(Op::Crash),
            node().prop_map(Op::Restart),
            Just(Op::HealAll),
            (node(), node()).prop_map(|(a, b)| Op::Write(a, b)),
            (node(), node()).prop_map(|(a, b)| Op::Write(a, b)),
        ]
    }

    /// What a call should end with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Ok,
        Unreachable,
        Timeout,
    }

    /// A reference model of the documented fault semantics.
    #[derive(Default)]
    struct Model {
        cut: HashSet<(usize, usize)>,
        isolated: HashSet<usize>,
        drops: HashMap<(usize, usize), u64>,
        down: HashSet<usize>,
    }

    impl Model {
        /// `None`: refused; `Some(false)`: lost; `Some(true)`: delivered.
        fn hop(&mut self, from: usize, to: usize) -> Option<bool> {
            if self.isolated.contains(&from)
                || self.isolated.contains(&to)
                || self.cut.contains(&(from, to))
            {
                return None;
            }
            match self.drops.get_mut(&(from, to)) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    Some(false)
                }
                _ => Some(true),
            }
        }

        /// The outcome of a write `from -> to`, and whether the callee applied it.
        fn write(&mut self, from: usize, to: usize) -> (Outcome, bool) {
            if self.down.contains(&to) {
                return (Outcome::Unreachable, false);
            }
            match self.hop(from, to) {
                None => (Outcome::Unreachable, false),
                Some(false) => (Outcome::Timeout, false),
                Some(true) => match self.hop(to, from) {
                    None => (Outcome::Unreachable, true),
                    Some(false) => (Outcome::Timeout, true),
                    Some(true) => (Outcome::Ok, true),
                },
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn faults_behave_as_documented(ops in proptest::collection::vec(arb_op(), 1..24)) {
            const NAMES: [&str; 3] = ["a", "b", "c"];
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let (network, replicas) = cluster();
                let mut model = Model::default();
                for (step, op) in ops.into_iter().enumerate() {
                    match op {
                        Op::Cut(a, b) => {
                            network.cut(NAMES[a], NAMES[b]);
                            model.cut.insert((a, b));
                        }
                        Op::Heal(a, b) => {
                            network.heal(NAMES[a], NAMES[b]);
                            model.cut.remove(&(a, b));
                        }
                        Op::PartitionOff(a) => {
                            let rest: Vec<&str> =
                                (0..3).filter(|&b| b != a).map(|b| NAMES[b]).collect();
                            network.partition(&[NAMES[a]], &rest);
                            for b in (0..3).filter(|&b| b != a) {
                                model.cut.insert((a, b));
                                model.cut.insert((b, a));
                            }
                        }
                        Op::Isolate(a) => {
                            network.isolate(NAMES[a]);
                            model.isolated.insert(a);
                        }
                        Op::Reconnect(a) => {
                            network.reconnect(NAMES[a]);
                            model.isolated.remove(&a);
                        }
                        Op::Drop(a, b, n) => {
                            network.set_drop(NAMES[a], NAMES[b], n);
                            model.drops.insert((a, b), n);
                        }
                        Op::Crash(a) => {
                            network.unregister(NAMES[a]);
                            model.down.insert(a);
                        }
                        Op::Restart(a) => {
                            network.register(NAMES[a], replicas[a].clone());
                            model.down.remove(&a);
                        }
                        Op::HealAll => {
                            network.heal_all();
                            model = Model { down: model.down, ..Model::default() };
                        }
                        Op::Write(from, to) => {
                            let key = step.to_be_bytes();
                            let result = network.endpoint(NAMES[from]).write(NAMES[to], write_of(&key)).await;
                            let got = match result {
                                Ok(()) => Outcome::Ok,
                                Err(TransportError::Unreachable { .. } | TransportError::NotConnected { .. }) => Outcome::Unreachable,
                                Err(TransportError::Timeout { .. }) => Outcome::Timeout,
                                Err(other) => panic!("unexpected {other:?}"),
                            };
                            let applied = !replicas[to].stored(&key).is_empty();
                            assert_eq!((got, applied), model.write(from, to), "step {step}");
                        }
                    }
                }
            });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_answers_times_out() {
        let network = MemoryNetwork::new(TIMEOUT).unwrap();
        network.register("stuck", Arc::new(NeverAnswers));
        let started = Instant::now();
        let result = network
            .endpoint("a")
            .gossip("stuck", MemberTable::new())
            .await;
        assert!(matches!(result, Err(TransportError::Timeout { .. })));
        assert_eq!(started.elapsed(), TIMEOUT);
    }
}
