//! Why a command failed, and the exit code each failure gives.

pub(crate) use dynamo_proto::wire::error_chain;

/// Exit code of a get that found nothing, or an admin change naming an unknown node.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code of a usage error (clap's code too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a server error or an unreachable server.
pub const EXIT_SERVER: u8 = 3;
/// Exit code of a put refused because the key holds too many concurrent versions:
/// read them (`dynamoctl get`) and put one value with the read's `--context`.
pub const EXIT_CONFLICT: u8 = 4;

/// Why a command failed; each maps to an exit code ([`CtlError::exit_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The command line is wrong (a flag value, a context, an input file).
    #[error("{0}")]
    Usage(String),
    /// No connection to the server.
    #[error("cannot reach {endpoint}: {reason}")]
    Unavailable {
        /// The URL tried.
        endpoint: String,
        /// The transport's explanation, causes included.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{call} failed ({code:?}): {message}")]
    Rpc {
        /// The call, e.g. `get`.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's status message.
        message: String,
    },
    /// A get found no value.
    #[error("key not found: {0}")]
    NotFound(String),
    /// The local dev cluster failed to start or a node of it died.
    #[error("{0}")]
    Dev(String),
    /// Writing to stdout failed (e.g. a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::NotFound(_) => EXIT_NOT_FOUND,
            Self::Rpc { code, .. } => exit_code_for(*code),
            Self::Unavailable { .. } | Self::Dev(_) | Self::Output(_) => EXIT_SERVER,
        }
    }

    pub(crate) fn rpc(call: &'static str, status: &tonic::Status) -> Self {
        Self::Rpc {
            call,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Maps a gRPC status code to the exit code: arguments the server refuses are usage
/// errors, a missing entity is "not found", everything else is the server's problem.
pub fn exit_code_for(code: tonic::Code) -> u8 {
    match code {
        tonic::Code::Ok => 0,
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => EXIT_USAGE,
        tonic::Code::NotFound => EXIT_NOT_FOUND,
        tonic::Code::Aborted => EXIT_CONFLICT,
        _ => EXIT_SERVER,
    }
}
