//! Consistent hashing: tokens, virtual nodes, and preference lists (Dynamo §4.2, §4.3,
//! §6.2).
//!
//! No I/O: a ring is a value computed from the member set (and, under strategy 3, the
//! previous ring). Keys are placed by the MD5 of their bytes; physical nodes own virtual
//! nodes in proportion to their weight, either as pseudo-random tokens (strategy 1) or
//! as a share of `Q` equal partitions (strategy 3). A key's preference list is the first
//! `N` distinct physical nodes clockwise from its token, interleaved by zone when the
//! members are in several ([`Ring::zoned`]), so its replicas sit in distinct zones.
//!
//! ```
//! use dynamo_core::NodeId;
//! use dynamo_core::ring::{PartitionStrategy, Ring, moves};
//!
//! let id = |s: &str| NodeId::new(s).unwrap();
//! let strategy = PartitionStrategy::equal_partitions(64).unwrap();
//! let ring = Ring::build(&[(id("a"), 1), (id("b"), 1), (id("c"), 2)], strategy, 1, None).unwrap();
//! assert_eq!(ring.preference_list_for_key(b"cart:42", 3).len(), 3);
//!
//! // Node d joins: rebuild from the current ring so partitions move as little as
//! // possible, and list the key ranges whose replicas change.
//! let next = Ring::build(
//!     &[(id("a"), 1), (id("b"), 1), (id("c"), 2), (id("d"), 1)],
//!     strategy,
//!     2,
//!     Some(&ring),
//! )
//! .unwrap();
//! assert!(moves(&ring, &next, 3).iter().all(|m| m.to.contains(&id("d"))));
//! ```

mod error;
mod limits;
mod partitions;
mod placement;
mod strategy;
mod token;
mod zones;

pub use error::RingError;
pub use limits::{DEFAULT_PARTITIONS, MAX_PARTITIONS, MAX_TOKENS_PER_WEIGHT, MAX_VIRTUAL_NODES};
pub use placement::{RangeMove, Ring, Walk, moves};
pub use strategy::PartitionStrategy;
pub use token::{Token, TokenRange};
pub use zones::ZoneInterleave;
