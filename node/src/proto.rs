//! Generated gRPC types and services for package `dynamo.v1` (from `node/proto/`).

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("dynamo.v1");

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dynamo_v1_descriptor");
