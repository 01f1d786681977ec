//! A Dynamo-style storage node (DeCandia et al., SOSP 2007).
//!
//! The crate has a pure protocol core and (in later modules) an I/O shell. The core
//! modules never touch a socket, a clock, or a disk: they take inputs, including the
//! current time as a [`time::Millis`], and return decisions.
//!
//! * [`config`] (I/O shell): the node's settings from flags, `DYNAMO_*` environment
//!   variables and a YAML file, defaulted and validated once.
//! * [`membership`]: the member table and its gossip merge, seeds, failure detection.
//! * [`storage`] (I/O shell): byte-level storage engines (sled, in-memory) for data,
//!   hints and meta records.
//! * [`ring`]: MD5 consistent hashing, weighted virtual nodes (random tokens or equal
//!   partitions), preference lists, and the ranges that move between ring versions.

pub mod config;
pub mod membership;
pub mod node_id;
pub mod ring;
pub mod storage;
pub mod time;

pub use node_id::NodeId;
