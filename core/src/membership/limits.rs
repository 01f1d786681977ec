//! The bounds of a member table and its encoding, shared by the table, its codec and
//! their errors.

use crate::node_id::MAX_NODE_ID_LEN;

/// The longest member address accepted, in bytes.
pub const MAX_ADDRESS_LEN: usize = 256;

/// The largest weight a member may have.
///
/// A weight is a node's relative capacity, which the ring turns into virtual nodes;
/// the bound keeps a mistaken or hostile weight from making every node build a ring
/// with billions of tokens.
pub const MAX_WEIGHT: u32 = 10_000;

/// The most members a table may hold, tombstones included.
///
/// [`MemberTable::join`](super::MemberTable::join) refuses a new member beyond it and
/// [`MemberTable::decode`](super::MemberTable::decode) rejects larger tables. Merge does not enforce it (a merge
/// that dropped members would not converge), so two tables that filled up
/// independently can merge into one that peers refuse; that needs more than 4096
/// membership changes made concurrently, which an operator making one change at a
/// time does not do.
pub const MAX_MEMBERS: usize = 4096;

/// The longest zone name: a Kubernetes label value's limit, so a node's
/// `topology.kubernetes.io/zone` label always fits.
pub const MAX_ZONE_LEN: usize = 63;

/// The most bytes one encoded member can take: id and address (each a 2-byte length
/// and its bytes), the weight, state and version as varints (5, 1 and 10 bytes at
/// most), the optional client address (a tag byte, a 2-byte length and its bytes),
/// then the settled weight (a varint, 5 bytes at most).
pub(super) const MAX_MEMBER_LEN: usize = (2 + MAX_NODE_ID_LEN)
    + (2 + MAX_ADDRESS_LEN)
    + 5
    + 1
    + 10
    + (1 + 2 + MAX_ADDRESS_LEN)
    + 5
    + (1 + MAX_ZONE_LEN);

/// The longest encoded table [`MemberTable::decode`](super::MemberTable::decode) reads: the format byte, the
/// member count (a 2-byte varint up to [`MAX_MEMBERS`]) and [`MAX_MEMBERS`] members of
/// the largest size. About 2 MiB.
pub const MAX_ENCODED_LEN: usize = 1 + 2 + MAX_MEMBERS * MAX_MEMBER_LEN;
