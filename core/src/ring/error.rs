//! Why a ring cannot be built or decoded.

use crate::NodeId;

use super::limits::{MAX_PARTITIONS, MAX_TOKENS_PER_WEIGHT, MAX_VIRTUAL_NODES};

/// Why a [`Ring`](super::Ring) or [`PartitionStrategy`](super::PartitionStrategy) was
/// rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// Strategy 1's tokens per unit of weight is out of bounds.
    #[error("tokens per weight is {0}; allowed are 1..={MAX_TOKENS_PER_WEIGHT}")]
    TokensPerWeight(u32),
    /// Strategy 3's partition count is out of bounds.
    #[error("partition count is {0}; allowed are 1..={MAX_PARTITIONS}")]
    PartitionCount(u32),
    /// A member has weight 0.
    #[error("node {0} has weight 0")]
    ZeroWeight(NodeId),
    /// A member is listed twice.
    #[error("node {0} is listed more than once")]
    DuplicateNode(NodeId),
    /// Strategy 3 needs at least one partition per node.
    #[error("{nodes} nodes need at least as many partitions, but q is {q}")]
    FewerPartitionsThanNodes {
        /// The configured partition count.
        q: u32,
        /// The number of members.
        nodes: usize,
    },
    /// The weights add up to more virtual nodes than a ring may hold.
    #[error("the ring would hold {0} virtual nodes; the limit is {MAX_VIRTUAL_NODES}")]
    TooManyVirtualNodes(u64),
    /// A decoded ring is inconsistent.
    #[error("malformed ring: {0}")]
    Malformed(&'static str),
}
