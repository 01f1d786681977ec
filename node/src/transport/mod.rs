//! Node-to-node calls (I/O shell).
//!
//! The coordinator, hinted handoff and gossip talk to peers only through [`Transport`], and
//! a node serves its peers through [`ReplicaHandler`]. Two implementations connect them:
//!
//! * [`GrpcTransport`] and [`replica_server`]: gRPC over real sockets (`tonic`), in
//!   production and multi-process tests.
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

pub(crate) mod codec;
mod grpc;
mod memory;
#[cfg(test)]
mod testing;

pub use codec::MAX_MESSAGE_BYTES;
pub use grpc::{
    GrpcTransport, GrpcTransportConfig, ReplicaService, TransportConfigError, replica_server,
};
pub use memory::{MemoryNetwork, MemoryTransport};

use crate::NodeId;
use crate::membership::MemberTable;
use crate::version::{SiblingSet, VectorClock};

/// Why a call to a peer did not produce an answer.
///
/// Every variant except [`TransportError::Rejected`] means "the peer may be down": the
/// failure detector counts it. A rejection is an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer could not be reached (connection refused, reset, partitioned).
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
    pub context: VectorClock,
    /// The value; `None` writes a tombstone (delete).
    pub value: Option<Vec<u8>>,
    /// Per-request write quorum override.
    pub w: Option<u32>,
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
}

/// What a node serves to its peers: the receiving end of [`Transport`].
#[async_trait]
pub trait ReplicaHandler: Send + Sync + 'static {
    /// Serves [`Transport::read`].
    async fn read(&self, key: Vec<u8>) -> Result<SiblingSet, ReplicaError>;
    /// Serves [`Transport::write`].
    async fn write(&self, write: ReplicaWrite) -> Result<(), ReplicaError>;
    /// Serves [`Transport::coordinate_put`].
    async fn coordinate_put(&self, put: ForwardedPut) -> Result<Vec<u8>, ReplicaError>;
    /// Serves [`Transport::gossip`].
    async fn gossip(&self, table: MemberTable) -> Result<MemberTable, ReplicaError>;
}
