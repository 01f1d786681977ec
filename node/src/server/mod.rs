//! The node's client-facing servers (I/O shell): the gRPC services `Kv` for clients and
//! `Admin` for operators, the [`http`] API (served over TLS by [`https`] when the node
//! has a certificate), and the mapping of internal errors to gRPC
//! statuses at this boundary only.

mod admin;
pub mod http;
pub mod https;
pub mod incoming;
mod kv;
pub mod limits;
pub mod status_page;
pub mod tls;
pub mod tls_reload;

pub use admin::{AdminService, admin_token_interceptor};
pub use kv::{KvService, TOPOLOGY_HEADER};

use tonic::Status;

use crate::coordinator::CoordinatorError;
use crate::transport::ReplicaError;

/// The gRPC status for a failed client request.
pub(crate) fn coordinator_status(error: &CoordinatorError) -> Status {
    match error {
        CoordinatorError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
        // ABORTED is gRPC's code for a concurrency conflict the client resolves by
        // re-running its read-modify-write.
        CoordinatorError::Conflict(_) => Status::aborted(error.to_string()),
        CoordinatorError::Quorum(_) | CoordinatorError::Unavailable(_) => {
            Status::unavailable(error.to_string())
        }
        CoordinatorError::Store(_) => Status::internal(error.to_string()),
        CoordinatorError::Forwarded { error: inner, .. } => match inner {
            ReplicaError::InvalidArgument(_) => Status::invalid_argument(error.to_string()),
            ReplicaError::Unauthenticated(_) => Status::unauthenticated(error.to_string()),
            ReplicaError::Internal(_) => Status::internal(error.to_string()),
            // The home replica's own words ("conflict: read and resolve: ...").
            ReplicaError::Conflict(m) => Status::aborted(m.clone()),
            _ => Status::unavailable(error.to_string()),
        },
    }
}

/// The [`ReplicaError`] a node returns to a peer for a failed coordination.
pub(crate) fn coordinator_replica_error(error: &CoordinatorError) -> ReplicaError {
    match error {
        CoordinatorError::InvalidArgument(m) => ReplicaError::InvalidArgument(m.clone()),
        CoordinatorError::Conflict(_) => ReplicaError::Conflict(error.to_string()),
        CoordinatorError::Store(_) => ReplicaError::Internal(error.to_string()),
        CoordinatorError::Forwarded { error, .. } => error.clone(),
        _ => ReplicaError::Unavailable(error.to_string()),
    }
}
