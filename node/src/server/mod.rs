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
use crate::membership::MemberState;
use crate::metrics::Outcome;
use crate::proto;
use crate::transport::ReplicaError;

/// A member state as the API spells it.
pub(crate) fn state_to_proto(state: MemberState) -> proto::MemberState {
    match state {
        MemberState::Joining => proto::MemberState::Joining,
        MemberState::Member => proto::MemberState::Member,
        MemberState::Leaving => proto::MemberState::Leaving,
        MemberState::Removed => proto::MemberState::Removed,
    }
}

/// The outcome a failed coordinator call is counted under: the API boundary classifies
/// errors, the metrics only count labels.
pub(crate) fn outcome_of(error: &CoordinatorError) -> Outcome {
    match error {
        CoordinatorError::InvalidArgument(_) => Outcome::Invalid,
        CoordinatorError::Conflict(_) => Outcome::Conflict,
        CoordinatorError::Quorum(_) | CoordinatorError::Unavailable(_) => Outcome::Unavailable,
        CoordinatorError::Forwarded { error, .. } => match error {
            ReplicaError::InvalidArgument(_) => Outcome::Invalid,
            ReplicaError::Conflict(_) => Outcome::Conflict,
            ReplicaError::Unavailable(_) => Outcome::Unavailable,
            _ => Outcome::Error,
        },
        _ => Outcome::Error,
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::{Operation, QuorumError};

    #[test]
    fn coordinator_errors_map_to_outcomes() {
        let quorum = QuorumError::new(Operation::Write, 2, 1, false);
        assert_eq!(
            outcome_of(&CoordinatorError::Quorum(quorum)),
            Outcome::Unavailable
        );
        assert_eq!(
            outcome_of(&CoordinatorError::InvalidArgument("x".into())),
            Outcome::Invalid
        );
        let forwarded = |error| CoordinatorError::Forwarded {
            address: "a:1".into(),
            error,
        };
        assert_eq!(
            outcome_of(&forwarded(ReplicaError::InvalidArgument("x".into()))),
            Outcome::Invalid
        );
        assert_eq!(
            outcome_of(&forwarded(ReplicaError::Internal("x".into()))),
            Outcome::Error
        );
    }
}
