//! Generated gRPC types and services for package `dynamo.v1` (from `dynamo/v1/*.proto`
//! beside this crate): what nodes, clients, `dynamoctl` and the operator speak. A crate
//! of its own so a program that only calls a cluster (the operator) need not build the
//! node, and so the protos have one owner.

pub mod wire;

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("dynamo.v1");
}
pub use generated::*;

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dynamo_v1_descriptor");
