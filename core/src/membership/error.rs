//! Why bytes are not a valid encoded member table.

use super::limits::{MAX_ENCODED_LEN, MAX_MEMBERS};
use crate::NodeId;
use crate::node_id::NodeIdError;

/// Why bytes are not a valid encoded member table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty member table encoding")]
    Empty,
    /// Longer than [`MAX_ENCODED_LEN`].
    #[error("member table encoding is {len} bytes, the limit is {MAX_ENCODED_LEN}")]
    TooLarge {
        /// Length of the input.
        len: usize,
    },
    /// The format byte is not one this build reads.
    #[error("unsupported member table format {found}")]
    UnsupportedFormat {
        /// The format byte found.
        found: u8,
    },
    /// More than [`MAX_MEMBERS`] members.
    #[error("member table has {count} members, the limit is {MAX_MEMBERS}")]
    TooManyMembers {
        /// The member count the input declared.
        count: u64,
    },
    /// The bytes do not parse (truncated, bad varint, unknown state, bad UTF-8, ...).
    #[error("malformed member table: {0}")]
    Malformed(#[source] postcard::Error),
    /// Bytes are left after the last member.
    #[error("{len} trailing bytes after the member table")]
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// A member's id is not a valid node id.
    #[error("invalid member id: {0}")]
    InvalidId(#[from] NodeIdError),
    /// A member's address is not a valid `host:port`.
    #[error("invalid address for {id}: {reason}")]
    InvalidAddress {
        /// The member.
        id: NodeId,
        /// What is wrong with the address.
        reason: &'static str,
    },
    /// A member's zone is not a valid zone name.
    #[error("invalid zone for {id}: {reason}")]
    InvalidZone {
        /// The member.
        id: NodeId,
        /// What is wrong with the zone.
        reason: &'static str,
    },
    /// A member's weight is outside `1..=MAX_WEIGHT`.
    #[error("invalid weight {weight} for {id}")]
    InvalidWeight {
        /// The member.
        id: NodeId,
        /// The rejected weight.
        weight: u32,
    },
    /// Members are not in strictly increasing id order (a duplicate, or a
    /// non-canonical encoding).
    #[error("members are not in strictly increasing id order at {id}")]
    Unordered {
        /// The first member out of order.
        id: NodeId,
    },
}
