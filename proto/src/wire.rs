//! What the API says besides its messages: the metadata keys nodes set, and how a
//! caller reads a failed call's status. Nodes, the partition-aware client and
//! `dynamoctl` share these, so each rule has one home.

use tonic::{Code, Status};

/// The response header that carries the answering node's topology version.
pub const TOPOLOGY_HEADER: &str = "dynamo-topology";

/// The metadata key our server sets on every status it produces from a
/// `ReplicaError` (the node's transport). A status without it was produced by the transport (tonic, h2, a
/// proxy), so it says nothing about what the peer decided.
pub const ERROR_MARKER: &str = "x-dynamo-error";

/// The metadata key of gRPC's retry pushback: a node that sheds a call sets it, with
/// the milliseconds to wait, on its Unavailable answer.
pub const RETRY_PUSHBACK_METADATA: &str = "grpc-retry-pushback-ms";

/// Whether `status` is a node's answer to a call it shed under load (Unavailable with
/// [`RETRY_PUSHBACK_METADATA`]): nothing was done, and the request
/// may go to another node (or this one after the pushback).
pub fn is_shed(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status.metadata().contains_key(RETRY_PUSHBACK_METADATA)
}

/// Whether a failed call's status says the request never left this process: tonic
/// reports a failed connection attempt as Unavailable "tcp connect error", and hyper
/// cancels a request still queued when its connection closes (a node shutting down
/// closes its connections after its last answer) with a canceled error. Anything else
/// (a reset, a timeout, an h2 error after sending) may have reached the peer.
pub fn never_sent(status: &Status) -> bool {
    if status.metadata().get(ERROR_MARKER).is_some() {
        return false;
    }
    if status.code() == Code::Unavailable && status.message().contains("tcp connect error") {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            return hyper.is_canceled();
        }
        source = error.source();
    }
    false
}

/// "a: b: c" from an error and its sources, without tonic's bare "transport error"
/// wrapper: what a caller prints when a call fails on its side.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if text != "transport error" && parts.last() != Some(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    if parts.is_empty() {
        "transport error".to_owned()
    } else {
        parts.join(": ")
    }
}
