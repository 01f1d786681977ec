//! The bounds of a ring's strategies, shared by the strategies and their errors.

/// The largest accepted [`PartitionStrategy::RandomTokens::tokens_per_weight`](super::PartitionStrategy::RandomTokens::tokens_per_weight).
pub const MAX_TOKENS_PER_WEIGHT: u32 = 1024;

/// The largest accepted [`PartitionStrategy::EqualPartitions::q`](super::PartitionStrategy::EqualPartitions::q).
pub const MAX_PARTITIONS: u32 = 65536;

/// The most virtual nodes (tokens or partitions) a ring may hold, so that building a ring
/// from a gossiped member table stays cheap whatever weights a peer claims.
pub const MAX_VIRTUAL_NODES: u64 = 1 << 20;

/// The default partition count of [`PartitionStrategy::EqualPartitions`](super::PartitionStrategy::EqualPartitions).
pub const DEFAULT_PARTITIONS: u32 = 256;
