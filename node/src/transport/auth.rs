//! Who may call `Replica`: internode authentication.
//!
//! `Replica` is the node's most powerful API: it overwrites any key with any clock,
//! dumps whole ranges, purges tombstones and merges member tables. So every call must
//! prove it comes from a node of the cluster, in one or both of two ways:
//!
//! * **The cluster secret** ([`InternodeTokens`], `--internode-token-file`): every call
//!   carries it in the [`TOKEN_HEADER`] metadata. The file holds one token per line;
//!   the first is sent and all are accepted, so a secret can be rotated without a
//!   window in which two nodes refuse each other (add the new token as a second line
//!   everywhere, then move it first, then drop the old one). Without TLS the token
//!   crosses the network in the clear, so it keeps out whoever can reach the port but
//!   not whoever can read its traffic; TLS closes that too.
//! * **Mutual TLS with a node name** (`--tls-ca`, `--tls-node-name`): the TLS layer
//!   already requires a certificate the CA signed; here the certificate must also
//!   carry the cluster's node name, so an admin client certificate from the same CA
//!   (which the README tells operators to issue for `dynamoctl`) cannot call
//!   `Replica`.
//!
//! The checks are pure ([`InternodeAuth::check`]); [`Authenticated`] applies them to
//! each HTTP/2 request before its body is read or decoded, and counts every call by
//! method and outcome.

use dynamo_config::settings::constant_time_eq;
use std::fmt;
use std::sync::Arc;

use crate::server::incoming::PeerInfo;
use tonic::Status;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;

use crate::grpc_gate::{CallGate, Gated};
use crate::log_gate::LogGate;
use crate::metrics::Metrics;

/// The request metadata carrying the cluster secret.
pub const TOKEN_HEADER: &str = "dynamo-internode-token";

/// The shortest accepted token, in bytes: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest accepted token, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// The most tokens one file may hold (the current one and a few being rotated).
pub const MAX_TOKENS: usize = 8;

/// Why a token file was refused. Messages name lines, never their content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// No line holds a token.
    #[error("holds no token")]
    Empty,
    /// More lines than [`MAX_TOKENS`].
    #[error("holds more than {MAX_TOKENS} tokens")]
    TooMany,
    /// A line is not a usable token.
    #[error("line {line}: the token {reason}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The cluster secrets of a token file: the one this node sends, and every one it
/// accepts. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct InternodeTokens {
    /// The first line's token, ready to be sent as metadata.
    send: AsciiMetadataValue,
    /// Every line's token, the first included.
    accept: Vec<Vec<u8>>,
}

impl fmt::Debug for InternodeTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "InternodeTokens({} accepted, {})",
            self.accept.len(),
            crate::config::REDACTED
        )
    }
}

impl InternodeTokens {
    /// Reads a token file's text: one token per line, surrounding whitespace and empty
    /// lines ignored (so a trailing newline, or a Kubernetes Secret written with one,
    /// does not matter).
    ///
    /// # Errors
    /// [`TokenFileError`] when no line holds a token, there are too many, or a token is
    /// shorter than [`MIN_TOKEN_LEN`], longer than [`MAX_TOKEN_LEN`], or not printable
    /// ASCII without spaces (what metadata can carry).
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut accept = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() {
                continue;
            }
            let reason = if token.len() < MIN_TOKEN_LEN {
                Some("is shorter than 16 bytes")
            } else if token.len() > MAX_TOKEN_LEN {
                Some("is longer than 1024 bytes")
            } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
                Some("may only hold printable ASCII without spaces")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(TokenFileError::Invalid {
                    line: index + 1,
                    reason,
                });
            }
            if accept.len() == MAX_TOKENS {
                return Err(TokenFileError::TooMany);
            }
            accept.push(token.as_bytes().to_vec());
        }
        let first = accept.first().ok_or(TokenFileError::Empty)?;
        let send =
            MetadataValue::try_from(first.as_slice()).map_err(|_| TokenFileError::Invalid {
                line: 1,
                reason: "may only hold printable ASCII without spaces",
            })?;
        Ok(Self { send, accept })
    }

    /// Whether `presented` is one of the accepted tokens.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        // Every token is compared, so timing does not tell which one matched.
        self.accept.iter().fold(false, |found, token| {
            constant_time_eq(token, presented) | found
        })
    }
}

/// Why a `Replica` call was refused. Messages never include a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No token in the call.
    #[error("internode calls need the cluster secret ({TOKEN_HEADER} metadata)")]
    MissingToken,
    /// A token that is not the cluster's.
    #[error("the internode token does not match the cluster secret")]
    WrongToken,
    /// Mutual TLS is on and the caller presented no certificate.
    #[error("internode calls need a node certificate")]
    NoCertificate,
    /// The caller's certificate does not name the cluster's node name: an admin or
    /// other client certificate.
    #[error("the client certificate is not a node certificate (it does not name {expected:?})")]
    NotANode {
        /// The name node certificates carry.
        expected: String,
    },
    /// The caller's certificate could not be read.
    #[error("the client certificate cannot be read: {0}")]
    BadCertificate(String),
}

/// The names a certificate carries: its DNS subject alternative names, then its subject
/// common names.
///
/// # Errors
/// When `der` is not an X.509 certificate.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, certificate) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    for common_name in certificate.subject().iter_common_name() {
        if let Ok(text) = common_name.as_str() {
            names.push(text.to_owned());
        }
    }
    Ok(names)
}

/// What a `Replica` caller must prove. With neither part set every call is accepted
/// (loopback-only nodes, or `--insecure-internode`).
#[derive(Debug, Clone, Default)]
pub struct InternodeAuth {
    tokens: Option<InternodeTokens>,
    node_name: Option<String>,
}

impl InternodeAuth {
    /// Accepts every caller.
    pub fn open() -> Self {
        Self::default()
    }

    /// Requires one of `tokens` (when given) and, under mutual TLS, a certificate naming
    /// `node_name` (when given).
    pub fn new(tokens: Option<InternodeTokens>, node_name: Option<String>) -> Self {
        Self { tokens, node_name }
    }

    /// Whether nothing is checked.
    pub fn is_open(&self) -> bool {
        self.tokens.is_none() && self.node_name.is_none()
    }

    /// Checks a call's token and the leaf certificate (DER) its TLS connection presented.
    ///
    /// # Errors
    /// The first [`Refusal`] that applies.
    pub fn check(&self, token: Option<&[u8]>, certificate: Option<&[u8]>) -> Result<(), Refusal> {
        if let Some(tokens) = &self.tokens {
            match token {
                None => return Err(Refusal::MissingToken),
                Some(token) if !tokens.accepts(token) => return Err(Refusal::WrongToken),
                Some(_) => {}
            }
        }
        if let Some(expected) = &self.node_name {
            let der = certificate.ok_or(Refusal::NoCertificate)?;
            let names = certificate_names(der).map_err(Refusal::BadCertificate)?;
            if !names.iter().any(|name| name.eq_ignore_ascii_case(expected)) {
                return Err(Refusal::NotANode {
                    expected: expected.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Adds the cluster secret to every outgoing `Replica` call (the client half).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    token: Option<AsciiMetadataValue>,
}

impl Credentials {
    /// Sends nothing: peers must accept unauthenticated calls.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sends the first of `tokens`.
    pub fn token(tokens: &InternodeTokens) -> Self {
        Self {
            token: Some(tokens.send.clone()),
        }
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.token {
            request.metadata_mut().insert(TOKEN_HEADER, token.clone());
        }
        Ok(request)
    }
}

/// The `Replica` methods by their gRPC names, with the label `/metrics` counts them
/// under. Anything else is counted as `unknown`, so callers cannot grow the label set.
const METHODS: [(&str, &str); 10] = [
    ("Read", "read"),
    ("ReadBatch", "read_batch"),
    ("Write", "write"),
    ("WriteBatch", "write_batch"),
    ("CoordinatePut", "coordinate_put"),
    ("Gossip", "gossip"),
    ("ScanRange", "scan_range"),
    ("MergeBatch", "merge_batch"),
    ("MerkleHashes", "merkle_hashes"),
    ("PurgeTombstone", "purge_tombstone"),
];

/// The metrics label of the method a request path names.
pub(crate) fn method_label(path: &str) -> &'static str {
    let method = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map_or("unknown", |(_, label)| label)
}

/// The metrics label of a gRPC status code.
pub(crate) fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The outcome of an answered call: a gRPC error travels in the response headers
/// (a trailers-only response), success in the trailers, so headers without a status
/// mean the handler answered.
fn response_code<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .map_or(tonic::Code::Ok, |value| {
            tonic::Code::from_bytes(value.as_bytes())
        })
}

/// How often a refusal is logged at most: a caller hammering the port must not flood
/// the log (every refusal is still counted in `/metrics`).
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Logs refusals at most once per [`REFUSAL_LOG_INTERVAL`], saying how many were not
/// logged in between.
#[derive(Debug)]
struct RefusalLog(LogGate);

impl Default for RefusalLog {
    fn default() -> Self {
        Self(LogGate::new(REFUSAL_LOG_INTERVAL))
    }
}

impl RefusalLog {
    fn refused(&self, method: &str, peer: Option<std::net::SocketAddr>, refusal: &Refusal) {
        if let Some(skipped) = self.0.admit() {
            tracing::warn!(method, ?peer, %refusal, also_refused_unlogged = skipped, "refused an internode call");
        }
    }
}

/// A `Replica` server behind [`InternodeAuth`]: refuses a call with `UNAUTHENTICATED`
/// before its body is read, and counts every call in `dynamo_replica_calls_total`.
pub type Authenticated<S> = Gated<S, AuthGate>;

/// `inner` behind `auth`, counting into `metrics`.
pub fn authenticated<S>(inner: S, auth: Arc<InternodeAuth>, metrics: Metrics) -> Authenticated<S> {
    Gated::new(
        inner,
        AuthGate {
            auth,
            metrics,
            log: RefusalLog::default(),
        },
    )
}

/// The [`CallGate`] of [`Authenticated`]: the internode checks, the call counts, the
/// refusal log.
#[derive(Debug)]
pub struct AuthGate {
    auth: Arc<InternodeAuth>,
    metrics: Metrics,
    log: RefusalLog,
}

impl CallGate for AuthGate {
    /// The method's label, to count the call by when it ends.
    type Ticket = &'static str;

    fn admit<B>(&self, request: &http::Request<B>) -> Result<&'static str, Status> {
        let method = method_label(request.uri().path());
        let token = request.headers().get(TOKEN_HEADER).map(|v| v.as_bytes());
        let connection = request.extensions().get::<PeerInfo>();
        let leaf = connection
            .and_then(|info| info.certificates.as_ref())
            .and_then(|chain| chain.first())
            .map(|certificate| certificate.as_ref());
        if let Err(refusal) = self.auth.check(token, leaf) {
            let peer = connection.and_then(|info| info.tcp.remote_addr());
            self.log.refused(method, peer, &refusal);
            self.metrics
                .replica_call(method, code_label(tonic::Code::Unauthenticated));
            return Err(Status::unauthenticated(refusal.to_string()));
        }
        Ok(method)
    }

    fn finished(&self, method: &'static str, response: &http::Response<tonic::body::Body>) {
        self.metrics
            .replica_call(method, code_label(response_code(response)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const NEXT: &str = "fedcba9876543210fedcba9876543210";

    fn tokens(text: &str) -> InternodeTokens {
        InternodeTokens::parse(text).unwrap()
    }

    #[test]
    fn a_token_file_sends_its_first_line_and_accepts_every_line() {
        let tokens = tokens(&format!("\n  {TOKEN}  \n\n{NEXT}\n"));
        assert_eq!(tokens.send.as_bytes(), TOKEN.as_bytes());
        assert!(tokens.accepts(TOKEN.as_bytes()));
        assert!(tokens.accepts(NEXT.as_bytes()));
        assert!(!tokens.accepts(&TOKEN.as_bytes()[1..]));
        assert!(!tokens.accepts(b""));
        assert!(!tokens.accepts(format!("{TOKEN}x").as_bytes()));
    }

    #[test]
    fn unusable_token_files_are_refused_without_showing_the_token() {
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        let many = format!("{TOKEN}\n").repeat(MAX_TOKENS + 1);
        let cases = [
            ("", "holds no token".to_owned()),
            (" \n\t\n", "holds no token".to_owned()),
            (
                "short-secret",
                "line 1: the token is shorter than 16 bytes".to_owned(),
            ),
            (
                long.as_str(),
                "line 1: the token is longer than 1024 bytes".to_owned(),
            ),
            (
                "0123456789abcdef\n01234567 89abcdef",
                "line 2: the token may only hold printable ASCII without spaces".to_owned(),
            ),
            (
                "0123456789abcdé01",
                "line 1: the token may only hold".to_owned(),
            ),
            (
                many.as_str(),
                format!("holds more than {MAX_TOKENS} tokens"),
            ),
        ];
        for (text, expected) in cases {
            let error = InternodeTokens::parse(text).unwrap_err().to_string();
            assert!(error.starts_with(&expected), "{text:?}: {error}");
            assert!(!error.contains("0123"), "{error} shows the token");
        }
        assert!(!format!("{:?}", tokens(TOKEN)).contains("0123"));
    }

    #[test]
    fn the_token_check_refuses_missing_and_wrong_tokens() {
        let auth = InternodeAuth::new(Some(tokens(&format!("{TOKEN}\n{NEXT}"))), None);
        assert!(!auth.is_open());
        assert_eq!(auth.check(None, None), Err(Refusal::MissingToken));
        assert_eq!(auth.check(Some(b"guess"), None), Err(Refusal::WrongToken));
        assert_eq!(auth.check(Some(TOKEN.as_bytes()), None), Ok(()));
        assert_eq!(auth.check(Some(NEXT.as_bytes()), None), Ok(()));
        let open = InternodeAuth::open();
        assert!(open.is_open());
        assert_eq!(open.check(None, None), Ok(()));
    }

    fn certificate(names: &[&str], common_name: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn certificates_name_their_dns_names_then_their_common_name() {
        let der = certificate(&["a.example", "b.example"], Some("dynamo admin"));
        assert_eq!(
            certificate_names(&der).unwrap(),
            ["a.example", "b.example", "dynamo admin"]
        );
        assert!(certificate_names(b"not a certificate").is_err());
    }

    #[test]
    fn under_mutual_tls_only_certificates_naming_the_node_name_may_call() {
        let auth = InternodeAuth::new(None, Some("dynamo-node.cluster".into()));
        let node = certificate(&["pod-0.x", "Dynamo-Node.Cluster"], None);
        let by_common_name = certificate(&[], Some("dynamo-node.cluster"));
        let admin = certificate(&["admin"], Some("dynamoctl"));
        assert_eq!(auth.check(None, Some(&node)), Ok(()));
        assert_eq!(auth.check(None, Some(&by_common_name)), Ok(()));
        assert_eq!(
            auth.check(None, Some(&admin)),
            Err(Refusal::NotANode {
                expected: "dynamo-node.cluster".into()
            })
        );
        assert_eq!(auth.check(None, None), Err(Refusal::NoCertificate));
        assert!(matches!(
            auth.check(None, Some(b"garbage")),
            Err(Refusal::BadCertificate(_))
        ));
        // Both parts set: both must hold.
        let both = InternodeAuth::new(Some(tokens(TOKEN)), Some("dynamo-node.cluster".into()));
        assert_eq!(both.check(None, Some(&node)), Err(Refusal::MissingToken));
        assert_eq!(
            both.check(Some(TOKEN.as_bytes()), Some(&admin)),
            Err(Refusal::NotANode {
                expected: "dynamo-node.cluster".into()
            })
        );
        assert_eq!(both.check(Some(TOKEN.as_bytes()), Some(&node)), Ok(()));
    }

    #[test]
    fn methods_are_labelled_from_the_path_and_unknown_ones_share_a_label() {
        assert_eq!(method_label("/dynamo.v1.Replica/Gossip"), "gossip");
        assert_eq!(
            method_label("/dynamo.v1.Replica/PurgeTombstone"),
            "purge_tombstone"
        );
        assert_eq!(method_label("/dynamo.v1.Replica/Nope"), "unknown");
        assert_eq!(method_label(""), "unknown");
        assert_eq!(code_label(tonic::Code::Unauthenticated), "unauthenticated");
    }
}
