//! Node-to-node calls (I/O shell).
//!
//! The coordinator, hinted handoff and gossip talk to peers only through [`Transport`], and
//! a node serves its peers through [`ReplicaHandler`]. Two implementations connect them:
//!
//! * [`GrpcTransport`] and [`replica_server`]: gRPC over real sockets (`tonic`), in
//!   production and multi-process tests. Concurrent replica writes to one peer travel
//!   together in `WriteBatch` calls, each with its own result and deadline (`batch.rs`).
//! * [`MemoryNetwork`]: an in-process network with deterministic faults (cut,
//!   partition, isolate, drop, delay) for tests that run many nodes in one process.
//!
//! Both put every payload through the same wire encodings (protobuf messages carrying
//! the versioned storage, context and member-table encodings) and classify failures
//! the same way: an error the peer's handler returned is [`TransportError::Rejected`]
//! with the original [`ReplicaError`]; no answer within the call timeout is
//! [`TransportError::Timeout`]; anything else that kept the answer from arriving is
//! [`TransportError::Unreachable`]; an answer that does not decode is
//! [`TransportError::BadReply`].
//!
//! Peers are addressed by their advertised `host:port` address, not by node id: a node
//! must gossip with its seeds before it knows their ids, and the member table maps ids
//! to addresses for everything else.

use async_trait::async_trait;

pub mod auth;
mod batch;
pub(crate) mod codec;
mod grpc;
mod memory;
#[cfg(test)]
mod testing;

pub use codec::MAX_MESSAGE_BYTES;
pub use codec::never_sent;
pub use grpc::{
    GrpcTransport, GrpcTransportConfig, ReplicaService, TransportConfigError, replica_server,
};
pub use memory::{MemoryNetwork, MemoryTransport};

use crate::NodeId;
use crate::membership::MemberTable;
use crate::merkle::Hash;
use crate::ring::TokenRange;
use crate::version::SiblingSet;
use crate::version::context::Context;

/// Each call's outcome from a batch reply: `None` for a call the peer did not run and
/// that goes again as a single call.
pub(crate) type BatchResults<R> = Vec<Option<Result<R, TransportError>>>;

/// The most entries one [`Transport::scan_range`] page carries, whatever the caller asks.
pub const MAX_SCAN_ENTRIES: u32 = 1024;

/// The most key and state bytes one scan page carries, whatever the caller asks (a single
/// larger entry still travels alone, so a scan always makes progress). Well below
/// [`MAX_MESSAGE_BYTES`], which bounds the encoded page.
pub const MAX_SCAN_BYTES: u32 = 4 * 1024 * 1024;

/// The most entries one [`Transport::merge_batch`] call may carry.
pub const MAX_BATCH_ENTRIES: usize = 1024;

/// The most node indices one [`Transport::merkle_hashes`] request may carry: a whole
/// level of a depth-12 tree. Callers split larger levels into several requests.
pub const MAX_MERKLE_INDICES: usize = 4096;

/// Why a call to a peer did not produce an answer.
///
/// Every variant except [`TransportError::Rejected`] means "the peer may be down": the
/// failure detector counts it. A rejection is an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection to the peer could be made, so the call was certainly never sent
    /// (connection refused, no route). Unlike [`TransportError::Unreachable`], the peer
    /// cannot have acted on it.
    #[error("{address} not connected: {reason}")]
    NotConnected {
        /// The peer's address.
        address: String,
        /// What the connection attempt reported.
        reason: String,
    },
    /// The call failed in a way that leaves open whether the peer received it
    /// (connection reset mid-call, the answer lost, a partition after sending).
    #[error("{address} unreachable: {reason}")]
    Unreachable {
        /// The peer's address.
        address: String,
        /// What the connection reported.
        reason: String,
    },
    /// The peer did not answer within the call's deadline.
    #[error("{address} timed out")]
    Timeout {
        /// The peer's address.
        address: String,
    },
    /// The peer answered with an error.
    #[error("{address} rejected the call: {error}")]
    Rejected {
        /// The peer's address.
        address: String,
        /// The error the peer returned.
        error: ReplicaError,
    },
    /// The peer's answer could not be decoded.
    #[error("bad reply from {address}: {reason}")]
    BadReply {
        /// The peer's address.
        address: String,
        /// What was wrong with the reply.
        reason: String,
    },
}

impl TransportError {
    /// Whether the failure says nothing about the peer's health (it answered).
    pub fn is_answer(&self) -> bool {
        matches!(self, TransportError::Rejected { .. })
    }
}

/// An error a node returns to a peer's call; carried over gRPC as a status code and
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The request was malformed (bad encoding, oversized key or value).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node cannot serve the request now (shutting down, quorum not reached).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The caller lacks the credentials the node requires.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A forwarded put met a conflict the client must resolve by reading (the
    /// sibling cap).
    #[error("{0}")]
    Conflict(String),
    /// The node failed (storage error).
    #[error("internal: {0}")]
    Internal(String),
}

/// A replica write: merge `state` into the receiver's copy of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaWrite {
    /// The user key.
    pub key: Vec<u8>,
    /// The sibling set to merge.
    pub state: SiblingSet,
    /// Make the write durable before acknowledging (Dynamo §6.1).
    pub durable: bool,
    /// The home replica this write stands in for (sloppy quorum, Dynamo §4.6).
    pub hint_for: Option<NodeId>,
}

/// A client put or delete handed to a node in the key's preference list to coordinate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedPut {
    /// The user key.
    pub key: Vec<u8>,
    /// The decoded client context.
    pub context: Context,
    /// The value; `None` writes a tombstone (delete).
    pub value: Option<Vec<u8>>,
    /// Per-request write quorum override.
    pub w: Option<u32>,
    /// Wall-clock time after which the receiver refuses the put (the sender gave up).
    pub deadline: Option<crate::time::Millis>,
}

/// One key's whole replica state, as range scans and batches carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeEntry {
    /// The user key.
    pub key: Vec<u8>,
    /// Every version the replica holds (tombstones included).
    pub state: SiblingSet,
}

/// A request for one page of a replica's entries in a token range (range transfer,
/// anti-entropy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeScan {
    /// The token range to list, in ring order from its start.
    pub range: TokenRange,
    /// Continue after this key (the last key of the previous page).
    pub after: Option<Vec<u8>>,
    /// At most this many entries; capped at [`MAX_SCAN_ENTRIES`]; must be at least 1.
    pub max_entries: u32,
    /// Stop once the page holds this many key and state bytes; capped at
    /// [`MAX_SCAN_BYTES`].
    pub max_bytes: u32,
}

/// One page of a range scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangePage {
    /// Entries in ring order; continue after the last one's key.
    pub entries: Vec<RangeEntry>,
    /// Nothing remains in the range after the last entry.
    pub done: bool,
}

/// A batch of states to merge into a replica (range transfer, anti-entropy push).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeBatch {
    /// At most [`MAX_BATCH_ENTRIES`] entries.
    pub entries: Vec<RangeEntry>,
    /// Make the batch durable before acknowledging.
    pub durable: bool,
}

/// A request for hashes of one level of a peer's Merkle tree (anti-entropy, Dynamo
/// §4.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleQuery {
    /// The tree's key range.
    pub range: TokenRange,
    /// The tree's depth; with the range, the tree's shape.
    pub depth: u8,
    /// The level asked for: 0 is the root, `depth` the leaf buckets.
    pub level: u8,
    /// Node indices within the level, at most [`MAX_MERKLE_INDICES`], each below
    /// `2^level`.
    pub indices: Vec<usize>,
}

/// Calls from this node to its peers.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Reads a replica's sibling set for `key` (empty if it has none).
    async fn read(&self, to: &str, key: &[u8]) -> Result<SiblingSet, TransportError>;
    /// Merges a sibling set into a replica.
    async fn write(&self, to: &str, write: ReplicaWrite) -> Result<(), TransportError>;
    /// Asks a node in the key's preference list to coordinate a put; returns the new
    /// context, encoded.
    async fn coordinate_put(&self, to: &str, put: ForwardedPut) -> Result<Vec<u8>, TransportError>;
    /// Push-pull gossip: sends our member table, returns the peer's merged table.
    async fn gossip(&self, to: &str, table: MemberTable) -> Result<MemberTable, TransportError>;
    /// One page of the peer's entries in a token range.
    async fn scan_range(&self, to: &str, scan: RangeScan) -> Result<RangePage, TransportError>;
    /// Merges a batch of states into the peer.
    async fn merge_batch(&self, to: &str, batch: MergeBatch) -> Result<(), TransportError>;
    /// Hashes of nodes of the peer's Merkle tree, paired with their indices.
    async fn merkle_hashes(
        &self,
        to: &str,
        query: MerkleQuery,
    ) -> Result<Vec<(usize, Hash)>, TransportError>;
    /// Asks the peer to remove `key` if its state is only tombstones and its digest is
    /// still `digest`; returns whether it did.
    async fn purge_tombstone(
        &self,
        to: &str,
        key: &[u8],
        digest: Hash,
    ) -> Result<bool, TransportError>;
}

/// What a node serves to its peers: the receiving end of [`Transport`].
#[async_trait]
pub trait ReplicaHandler: Send + Sync + 'static {
    /// Serves [`Transport::read`].
    async fn read(&self, key: Vec<u8>) -> Result<SiblingSet, ReplicaError>;
    /// Serves [`Transport::write`].
    async fn write(&self, write: ReplicaWrite) -> Result<(), ReplicaError>;
    /// Serves several independent writes that a peer's transport coalesced into one call
    /// (at most [`MAX_BATCH_ENTRIES`]): one result per write, in order, each what
    /// [`write`](Self::write) would have returned for it. The default handles them one
    /// after another; a handler can share work between them, such as one flush.
    async fn write_batch(&self, writes: Vec<ReplicaWrite>) -> Vec<Result<(), ReplicaError>> {
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(self.write(write).await);
        }
        results
    }
    /// Serves several independent reads that a peer's transport coalesced into one call
    /// (at most [`MAX_BATCH_ENTRIES`]): one result per key, in order, each what
    /// [`read`](Self::read) would have returned for it. The default reads them one
    /// after another.
    async fn read_batch(&self, keys: Vec<Vec<u8>>) -> Vec<Result<SiblingSet, ReplicaError>> {
        let mut results = Vec::with_capacity(keys.len());
        for key in keys {
            results.push(self.read(key).await);
        }
        results
    }
    /// Serves [`Transport::coordinate_put`].
    async fn coordinate_put(&self, put: ForwardedPut) -> Result<Vec<u8>, ReplicaError>;
    /// Serves [`Transport::gossip`].
    async fn gossip(&self, table: MemberTable) -> Result<MemberTable, ReplicaError>;
    /// Serves [`Transport::scan_range`]. The request arrives with `max_entries` in
    /// `1..=MAX_SCAN_ENTRIES` and `max_bytes <= MAX_SCAN_BYTES`.
    async fn scan_range(&self, scan: RangeScan) -> Result<RangePage, ReplicaError>;
    /// Serves [`Transport::merge_batch`]. The batch arrives with at most
    /// [`MAX_BATCH_ENTRIES`] entries.
    async fn merge_batch(&self, batch: MergeBatch) -> Result<(), ReplicaError>;
    /// Serves [`Transport::merkle_hashes`]: one hash per requested index, in request
    /// order. The query arrives with `level <= depth <= MAX_DEPTH`, at most
    /// [`MAX_MERKLE_INDICES`] indices, each below `2^level`.
    ///
    /// [`MAX_DEPTH`]: crate::merkle::MAX_DEPTH
    async fn merkle_hashes(&self, query: MerkleQuery) -> Result<Vec<Hash>, ReplicaError>;
    /// Serves [`Transport::purge_tombstone`].
    async fn purge_tombstone(&self, key: Vec<u8>, digest: Hash) -> Result<bool, ReplicaError>;
}
