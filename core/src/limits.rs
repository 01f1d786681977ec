//! The bounds every part of the system agrees on: a node refuses what a peer could not
//! accept, so nothing is stored that could never be replicated, read or moved again.

/// The largest gRPC message either side encodes or accepts. A replica state is one
/// key's siblings, far below this; the bound stops a confused or hostile peer from
/// making us buffer arbitrary amounts.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The most bytes one key's stored state may take: one internode message's worth,
/// less room for the key and the message around it. Every replica write, replica read,
/// hint, range transfer and anti-entropy exchange carries a key's whole state, so a
/// larger one could be written once and never replicated, read or moved again (a put
/// acknowledged on one copy, a leave that never completes). Puts and merges that
/// would exceed it are refused before anything is written.
pub const MAX_STATE_BYTES: usize = MAX_MESSAGE_BYTES - 256 * 1024;

/// The largest accepted replication factor: more replicas than this cost every write
/// far more than they add in durability.
pub const MAX_REPLICATION_FACTOR: u32 = 16;
