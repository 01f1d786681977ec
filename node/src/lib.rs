//! A Dynamo-style storage node (DeCandia et al., SOSP 2007).
//!
//! The crate has a pure protocol core and (in later modules) an I/O shell. The core
//! modules never touch a socket, a clock, or a disk: they take inputs, including the
//! current time as a [`time::Millis`], and return decisions.
//!
//! * [`ring`]: MD5 consistent hashing, weighted virtual nodes, preference lists.
//! * [`version`]: vector clocks with actor incarnations, dotted sibling sets, client
//!   contexts and the stored state encoding.

pub mod node_id;
pub mod ring;
pub mod time;
pub mod version;

pub use node_id::NodeId;
