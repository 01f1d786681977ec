//! The client's errors.

use std::fmt;
use std::time::Duration;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client's settings are unusable (no seeds, a malformed address, bad TLS).
    #[error("client configuration: {0}")]
    Config(String),
    /// A node answered the call with an error status (invalid key or value, a quorum
    /// that could not be reached, a storage failure). Not retried on other nodes: the
    /// node did coordinate the request.
    #[error("{address} answered {code:?}: {message}")]
    Status {
        /// The node that answered.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
    /// No node could be reached for the call: every node tried failed to answer (a
    /// refused connection, a reset, or a per-call timeout).
    #[error("no node answered: {}", Attempts(.attempts))]
    Unavailable {
        /// Each node tried and why it failed, in order.
        attempts: Vec<(String, String)>,
    },
    /// A write reached a node, or may have, and its answer was lost (a timeout, a
    /// connection reset mid-call): it may or may not have been applied. Not retried on
    /// another node, which could apply it a second time as a concurrent version of the
    /// same value; read the key to find out.
    #[error("outcome unknown: the write may or may not have been applied ({}) ", Attempts(.attempts))]
    OutcomeUnknown {
        /// Each node tried and why it failed, in order; the last one may hold the write.
        attempts: Vec<(String, String)>,
    },
    /// The call's deadline passed before any node answered.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// [`Client::update`](super::Client::update) still found concurrent versions after
    /// its last read-merge-write round: other writers keep racing on the key.
    #[error(
        "siblings remained after {attempts} read-merge-write rounds: writers keep racing on the key"
    )]
    Contended {
        /// The rounds tried.
        attempts: usize,
    },
}

impl ClientError {
    /// The gRPC status code closest to this error, for reports that count errors by
    /// code.
    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::Config(_) => tonic::Code::InvalidArgument,
            ClientError::Status { code, .. } => *code,
            ClientError::Unavailable { .. } => tonic::Code::Unavailable,
            ClientError::OutcomeUnknown { .. } => tonic::Code::Unknown,
            ClientError::Timeout(_) => tonic::Code::DeadlineExceeded,
            ClientError::Contended { .. } => tonic::Code::Aborted,
        }
    }
}

/// Renders attempts as `a: why, b: why`.
struct Attempts<'a>(&'a [(String, String)]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no node to try");
        }
        for (i, (address, reason)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{address}: {reason}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_explain_themselves_and_map_to_codes() {
        let unavailable = ClientError::Unavailable {
            attempts: vec![
                ("a:1".into(), "connection refused".into()),
                ("b:1".into(), "timed out".into()),
            ],
        };
        assert_eq!(
            unavailable.to_string(),
            "no node answered: a:1: connection refused, b:1: timed out"
        );
        assert_eq!(unavailable.code(), tonic::Code::Unavailable);
        let none = ClientError::Unavailable { attempts: vec![] };
        assert_eq!(none.to_string(), "no node answered: no node to try");
        let status = ClientError::Status {
            address: "a:1".into(),
            code: tonic::Code::InvalidArgument,
            message: "key is empty".into(),
        };
        assert_eq!(
            status.to_string(),
            "a:1 answered InvalidArgument: key is empty"
        );
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            ClientError::Timeout(Duration::from_secs(1)).code(),
            tonic::Code::DeadlineExceeded
        );
    }
}
