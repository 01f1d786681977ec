//! A Dynamo-style storage node (DeCandia et al., SOSP 2007).
//!
//! The crate has a pure protocol core and (in later modules) an I/O shell. The core
//! modules never touch a socket, a clock, or a disk: they take inputs, including the
//! current time as a [`time::Millis`], and return decisions.
//!
//! * [`membership`]: the member table and its gossip merge, seeds, failure detection.
//! * [`merkle`]: Merkle trees per key range and the stepwise exchange that finds the
//!   buckets two replicas disagree on (anti-entropy).
//! * [`storage`] (I/O shell): byte-level storage engines (sled, in-memory) for data,
//!   hints and meta records.
//! * [`ring`]: MD5 consistent hashing, weighted virtual nodes (random tokens or equal
//!   partitions), preference lists, and the ranges that move between ring versions.
//! * [`quorum`]: get and put coordinator state machines: sloppy quorum, hinted
//!   handoff targets, read repair.
//! * [`ring`]: MD5 consistent hashing, weighted virtual nodes, preference lists.
//! * [`version`]: vector clocks with actor incarnations, dotted sibling sets, client
//!   contexts and the stored state encoding.

pub mod membership;
pub mod merkle;
pub mod node_id;
pub mod quorum;
pub mod ring;
pub mod storage;
pub mod time;
pub mod version;

pub use node_id::NodeId;
