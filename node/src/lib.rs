//! A Dynamo-style storage node (DeCandia et al., SOSP 2007).
//!
//! # The pure core
//!
//! The protocol (ring, versions, quorums, Merkle trees, membership, admission, histories)
//! lives in the `dynamo-core` crate, free of I/O; this crate re-exports its modules under
//! their old paths ([`ring`], [`version`], [`quorum`], [`merkle`], [`membership`],
//! [`admission`], [`history`], [`time`], [`node_id`]) and is the shell that drives them.
//!
//! # The shell
//!
//! * [`config`]: the node's settings from flags, `DYNAMO_*` environment variables and a
//!   YAML file, validated once.
//! * [`storage`]: byte-level storage engines (sled, in-memory) for data, hints and meta
//!   records.
//! * [`transport`]: node-to-node calls over gRPC, and an in-memory network with
//!   deterministic faults for multi-node tests in one process.
//! * [`store`]: sibling sets over a storage engine: coordinator writes, replica merges,
//!   hints.
//! * [`identity`]: the node's clock actor (node id and current incarnation), renewed
//!   whenever the node may have lost its own dots for a key.
//! * [`cluster`]: one node's view: member table, derived ring, peer health.
//! * [`coordinator`]: server-driven get/put coordination over the quorum machines.
//! * [`server`]: the `Kv` and `Admin` gRPC services, and the HTTP API
//!   ([`server::http`]): key-value routes, `/metrics`, health, readiness and a ring
//!   status page.
//! * [`antientropy`]: Merkle trees kept per replicated range, the rounds that compare
//!   them with other replicas and repair the differing keys both ways, and tombstone
//!   purge.
//! * [`background`]: the node's shared background budget over [`admission`]: hinted
//!   handoff (and range transfer, anti-entropy) take their work from it.
//! * [`metrics`]: Prometheus request counters, latency histograms and state gauges.
//! * [`transfer`]: range transfer on join, leave and weight change (Dynamo §4.9): the settled and
//!   target rings, the copy plan, resumable throttled rounds.
//! * [`node`]: the node that owns all of the above, its listeners and background loops
//!   (gossip and failure probes, hinted handoff delivery, range transfer).
//!
//! The partition-aware client (`dynamo-client`) and `dynamoctl` (`dynamoctl`) are crates of
//! their own: they speak the gRPC API (`dynamo-proto`) and never link this shell.

pub mod antientropy;
pub mod background;
pub mod cluster;
pub mod coordinator;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod gossip;
pub mod grpc_gate;
pub mod handoff;
pub mod identity;
pub mod log_gate;
pub mod members;
pub mod metrics;
pub mod node;
mod peer;
mod random;
/// The node's configuration, checked once (the `dynamo-config` crate, shared with the
/// operator).
pub use dynamo_config as config;
/// The gRPC API (`dynamo.v1`), generated in the `dynamo-proto` crate.
pub use dynamo_proto as proto;
pub mod server;
mod serving;
mod shutdown;
mod start;
pub mod storage;
pub mod store;
pub mod transfer;
pub mod transport;

pub use dynamo_core::{
    NodeId, admission, history, membership, merkle, node_id, quorum, ring, time, version,
};
