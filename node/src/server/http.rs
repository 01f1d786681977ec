//! The node's HTTP API (I/O shell): a key-value interface for clients without gRPC,
//! Prometheus metrics, health and readiness probes, and a status page.
//!
//! Routes:
//!
//! * `GET /v1/kv/{key}`: the key's versions (Dynamo §4.4, §5). One version: `200` with
//!   the value as the body. Several concurrent versions (siblings): `300 Multiple
//!   Choices` with `{"siblings": ["<base64>", ...], "explanation": "..."}` (how to
//!   resolve them). None, or only deletes: `404`. All
//!   three carry the context covering what was read in `X-Dynamo-Context`.
//! * `PUT /v1/kv/{key}` (body = value) and `DELETE /v1/kv/{key}`, both with an optional
//!   `X-Dynamo-Context`: `204` with the new version's context in `X-Dynamo-Context`. A
//!   `PUT` without one is a blind write, concurrent with every version already there (a
//!   sibling beside them); a `DELETE` without one deletes what a read of the key at R
//!   finds ([`Coordinator::delete`](crate::coordinator::Coordinator::delete)).
//! * `?r=` on gets and `?w=` on puts and deletes override the node's R and W.
//! * `GET /metrics` (OpenMetrics text), `GET /healthz`, `GET /readyz`, and `GET /` (an
//!   HTML page drawing the ring and listing the members).
//!
//! The key is the percent-decoded path after `/v1/kv/` and may hold any bytes. The
//! context is the standard base64 of the opaque context bytes
//! ([`version::context`](crate::version::context)). Errors answer with
//! `{"error": "..."}`: `400` for a malformed key, context or quorum override, `409`
//! for a put refused because the key holds too many concurrent versions (read them and
//! put one merged value with the read's context), `413`
//! for a value over the node's limit (refused while reading the body, before it is
//! buffered whole), `503` when the quorum cannot be reached, `500` for a failure of
//! the node itself. Every key-value request is counted in [`Metrics`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::metrics::{Api, Metrics, OPENMETRICS_CONTENT_TYPE, Op, Outcome, RequestTotals};
use crate::server::limits::InflightLimit;
use crate::server::status_page::{self, StatusView};
use crate::version::SiblingSet;
use crate::version::context::{self, Context};

/// The header carrying the opaque client context, standard base64.
pub const CONTEXT_HEADER: HeaderName = HeaderName::from_static("x-dynamo-context");

/// The path prefix of the key-value routes; the key follows it.
pub const KV_PREFIX: &str = "/v1/kv/";

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Serves the key-value routes.
    pub coordinator: Coordinator,
    /// Counts requests; rendered by `/metrics`.
    pub metrics: Metrics,
    /// The member table and ring, for `/readyz` and the status page.
    pub cluster: Arc<Cluster>,
    /// The key-value routes' admission: the in-flight cap (shared with gRPC `Kv`) and
    /// the body-read deadline.
    pub admission: KvAdmission,
    /// The request totals when the status page was last drawn, for its rates.
    pub last_page: LastPage,
}

/// When the status page was last drawn and the request totals then.
pub type LastPage = Arc<std::sync::Mutex<Option<(Instant, BTreeMap<&'static str, RequestTotals>)>>>;

/// What a key-value request must get past before its handler runs.
#[derive(Debug, Clone)]
pub struct KvAdmission {
    /// Client requests in flight, shared with the gRPC API; past it `503`.
    pub inflight: InflightLimit,
    /// How long a client may take to send a request's body; past it `408`.
    pub body_read_timeout: Duration,
}

/// The HTTP API's routes over `state`.
///
/// Request bodies are limited to the coordinator's
/// [`max_value_bytes`](crate::coordinator::RequestLimits::max_value_bytes).
pub fn router(state: HttpState) -> Router {
    let max_body = state.coordinator.limits().max_value_bytes;
    let kv = get(get_value)
        .put(put_value)
        .delete(delete_value)
        .route_layer(middleware::from_fn_with_state(state.clone(), admit));
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // An empty key reaches the handlers too, so it is refused with a 400 and
        // counted, like any other invalid key.
        .route("/v1/kv", kv.clone())
        .route("/v1/kv/", kv.clone())
        // A wildcard: a key may contain unencoded slashes.
        .route("/v1/kv/{*key}", kv)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Admits a key-value request: sheds it (`503` + `Retry-After`) when
/// `max-inflight-requests` are in flight; refuses a `Content-Length` over the value
/// limit before reading a byte of the body (`413`); reads a put's body within the
/// client read timeout (`408` past it; `413` once the body crosses the limit); then
/// holds the in-flight slot until the handler has answered.
async fn admit(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let Some(slot) = state.admission.inflight.try_admit() else {
        state
            .admission
            .inflight
            .record_shed(&state.metrics, Api::Http);
        let mut response = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": state.admission.inflight.refusal() }).to_string(),
        );
        // Whole seconds only; the shortest hint HTTP can give.
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    if request.method() != Method::PUT {
        let response = next.run(request).await;
        drop(slot);
        return response;
    }
    let started = Instant::now();
    let max_body = state.coordinator.limits().max_value_bytes;
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > u64::try_from(max_body).unwrap_or(u64::MAX)) {
        return refuse_body(
            &state,
            started,
            StatusCode::PAYLOAD_TOO_LARGE,
            "value is larger than the limit".to_owned(),
        );
    }
    let timeout = state.admission.body_read_timeout;
    let body = match tokio::time::timeout(timeout, axum::body::to_bytes(body, max_body)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            return if too_large {
                refuse_body(
                    &state,
                    started,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value is larger than the limit".to_owned(),
                )
            } else {
                refuse_body(
                    &state,
                    started,
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {error}"),
                )
            };
        }
        Err(_) => {
            return refuse_body(
                &state,
                started,
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {timeout:?}"),
            );
        }
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    drop(slot);
    response
}

/// A put refused over its body, counted as invalid; the connection is not reused, as
/// the rest of the body may still be on its way.
fn refuse_body(
    state: &HttpState,
    started: Instant,
    status: StatusCode,
    message: String,
) -> Response {
    let mut response = state.finish(
        Op::Put,
        started,
        Err(ApiError {
            status,
            outcome: Outcome::Invalid,
            message,
        }),
    );
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Per-request quorum overrides.
#[derive(Debug, Deserialize)]
struct QuorumParams {
    r: Option<u32>,
    w: Option<u32>,
}

/// A failed request: its status, how it is counted, and the message for the client.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    outcome: Outcome,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            outcome: Outcome::Invalid,
            message: message.into(),
        }
    }

    fn query(rejection: &QueryRejection) -> Self {
        Self::invalid(format!("bad query: {}", rejection.body_text()))
    }

    fn body(rejection: &BytesRejection) -> Self {
        let status = rejection.status();
        Self {
            status,
            outcome: if status.is_client_error() {
                Outcome::Invalid
            } else {
                Outcome::Error
            },
            message: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "value is larger than the limit".to_owned()
            } else {
                rejection.body_text()
            },
        }
    }

    fn coordinator(error: &CoordinatorError) -> Self {
        let outcome = crate::server::outcome_of(error);
        let status = match outcome {
            Outcome::Invalid => StatusCode::BAD_REQUEST,
            Outcome::Conflict => StatusCode::CONFLICT,
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            outcome,
            message: error.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(
            self.status,
            &serde_json::json!({ "error": self.message }).to_string(),
        )
    }
}

fn json_response(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_owned(),
    )
        .into_response()
}

/// The user key named by a `/v1/kv/...` path: the percent-decoded bytes after the
/// prefix (empty for `/v1/kv` and `/v1/kv/`).
fn key_of(uri: &Uri) -> Vec<u8> {
    let encoded = uri.path().strip_prefix(KV_PREFIX).unwrap_or_default();
    percent_decode_str(encoded).collect()
}

/// The longest context header: the base64 form of the largest context.
const MAX_CONTEXT_HEADER_LEN: usize = context::MAX_CONTEXT_BYTES.div_ceil(3) * 4;

/// The client's context: absent or empty means a blind write (the empty clock).
fn context_of(headers: &HeaderMap) -> Result<Context, ApiError> {
    let Some(value) = headers.get(&CONTEXT_HEADER) else {
        return Ok(Context::new());
    };
    // Refused before decoding: no base64 work or buffer for a header that cannot hold
    // a valid context.
    if value.len() > MAX_CONTEXT_HEADER_LEN {
        return Err(ApiError::invalid(format!(
            "context header is {} bytes, the limit is {MAX_CONTEXT_HEADER_LEN}",
            value.len()
        )));
    }
    let bytes = BASE64
        .decode(value.as_bytes())
        .map_err(|e| ApiError::invalid(format!("context is not base64: {e}")))?;
    context::decode(&bytes).map_err(|e| ApiError::invalid(format!("bad context: {e}")))
}

/// Parses what the kv routes take from a request's head before the coordinator sees
/// it (the key, the context, the quorum overrides), checking that what parses
/// round-trips: for the fuzz targets and the hostile-input proptests.
///
/// # Panics
/// When a parsed key or context does not survive being encoded again (a bug).
#[cfg(any(test, fuzzing))]
pub(crate) fn check_request_head(uri: &Uri, headers: &HeaderMap) {
    use percent_encoding::{NON_ALPHANUMERIC, percent_encode};
    let key = key_of(uri);
    let encoded: String = percent_encode(&key, NON_ALPHANUMERIC).collect();
    let again: Uri = format!("{KV_PREFIX}{encoded}")
        .parse()
        .expect("a percent-encoded key is a valid path");
    assert_eq!(key_of(&again), key, "key survives percent-encoding");
    let _ = Query::<QuorumParams>::try_from_uri(uri).map(|Query(params)| (params.r, params.w));
    if let Ok(clock) = context_of(headers) {
        let (name, value) = context_header(&clock);
        let mut echoed = HeaderMap::new();
        echoed.insert(name, value);
        let back = context_of(&echoed).expect("an echoed context parses");
        assert_eq!(back, clock, "context survives the header");
    }
}

fn context_header(clock: &Context) -> (HeaderName, HeaderValue) {
    let encoded = BASE64.encode(context::encode(clock));
    // Base64 is always a valid header value.
    let value = HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""));
    (CONTEXT_HEADER, value)
}

/// The answer to a get: 200, 300 or 404 by the number of data versions.
fn found(state: &SiblingSet) -> (Response, Outcome) {
    let context = context_header(&state.context());
    let values: Vec<&[u8]> = state.values().collect();
    match values.as_slice() {
        [] => {
            let mut response = ApiError {
                status: StatusCode::NOT_FOUND,
                outcome: Outcome::NotFound,
                message: "not found".to_owned(),
            }
            .into_response();
            response.headers_mut().insert(context.0, context.1);
            (response, Outcome::NotFound)
        }
        [value] => {
            let response = (
                StatusCode::OK,
                [
                    context,
                    (
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                ],
                Body::from(value.to_vec()),
            )
                .into_response();
            (response, Outcome::Ok)
        }
        several => {
            let siblings: Vec<String> = several.iter().map(|v| BASE64.encode(v)).collect();
            let body = serde_json::json!({
                "siblings": siblings,
                "explanation": SIBLINGS_EXPLANATION,
            })
            .to_string();
            let mut response = json_response(StatusCode::MULTIPLE_CHOICES, &body);
            response.headers_mut().insert(context.0, context.1);
            (response, Outcome::Ok)
        }
    }
}

/// What a `300` says to whoever meets siblings for the first time (a curl user whose
/// second blind `PUT` made one).
pub const SIBLINGS_EXPLANATION: &str = "These versions were written concurrently: no writer \
     saw the others (a PUT without X-Dynamo-Context is concurrent with every version \
     already there). PUT the value you want, for example a merge of these, with this \
     response's X-Dynamo-Context header to replace them all.";

impl HttpState {
    /// Counts a finished key-value request and turns it into a response.
    fn finish(
        &self,
        op: Op,
        started: Instant,
        result: Result<(Response, Outcome), ApiError>,
    ) -> Response {
        let (response, outcome) = match result {
            Ok(done) => done,
            Err(error) => {
                let outcome = error.outcome;
                (error.into_response(), outcome)
            }
        };
        self.metrics
            .observe(Api::Http, op, outcome, started.elapsed());
        response
    }

    async fn write(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        query: Result<Query<QuorumParams>, QueryRejection>,
        value: Option<Vec<u8>>,
    ) -> Result<(Response, Outcome), ApiError> {
        let key = key_of(uri);
        let params = query.map_err(|e| ApiError::query(&e))?;
        let context = context_of(headers)?;
        let written = match value {
            Some(value) => {
                self.coordinator
                    .put(&key, context, Some(value), params.w)
                    .await
            }
            None => self.coordinator.delete(&key, context, params.w).await,
        };
        let clock = written.map_err(|e| ApiError::coordinator(&e))?;
        let response = (StatusCode::NO_CONTENT, [context_header(&clock)]).into_response();
        Ok((response, Outcome::Ok))
    }
}

async fn get_value(
    State(state): State<HttpState>,
    uri: Uri,
    query: Result<Query<QuorumParams>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let key = key_of(&uri);
        let params = query.map_err(|e| ApiError::query(&e))?;
        let siblings = state
            .coordinator
            .get(&key, params.r)
            .await
            .map_err(|e| ApiError::coordinator(&e))?;
        Ok(found(&siblings))
    }
    .await;
    state.finish(Op::Get, started, result)
}

async fn put_value(
    State(state): State<HttpState>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<QuorumParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = match body {
        Ok(value) => {
            state
                .write(&uri, &headers, query, Some(value.to_vec()))
                .await
        }
        Err(rejection) => Err(ApiError::body(&rejection)),
    };
    state.finish(Op::Put, started, result)
}

async fn delete_value(
    State(state): State<HttpState>,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<QuorumParams>, QueryRejection>,
) -> Response {
    let started = Instant::now();
    let result = state.write(&uri, &headers, query, None).await;
    state.finish(Op::Delete, started, result)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready once this node is in the ring (Joining or Member in its own member table):
/// before that it owns no range, and a load balancer should not send it clients.
async fn readyz(State(state): State<HttpState>) -> Response {
    let me = state.cluster.me();
    let reason = match state.cluster.table().get(me) {
        Some(member) if member.state().in_ring() => return "ready".into_response(),
        Some(member) => format!(
            "not ready: this node is {}, not in the ring",
            member.state()
        ),
        None => "not ready: this node has not joined the ring".to_owned(),
    };
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        outcome: Outcome::Unavailable,
        message: reason,
    }
    .into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn status_page(State(state): State<HttpState>) -> Response {
    let metrics = state.metrics.page_snapshot();
    let now = Instant::now();
    let previous = state
        .last_page
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .replace((now, metrics.requests.clone()))
        .map(|(at, totals)| (totals, now.duration_since(at)));
    let quorum = state.coordinator.quorum();
    let view = StatusView {
        cluster: &state.cluster,
        version: env!("CARGO_PKG_VERSION"),
        quorum: (quorum.n(), quorum.r(), quorum.w()),
        metrics,
        previous,
    };
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        status_page::render(&view),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use axum::http::Request;
    use http_body::Frame;
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use proptest::prelude::*;
    use tower::ServiceExt as _;

    use super::*;
    use crate::NodeId;
    use crate::cluster::Clock;
    use crate::coordinator::{CoordinatorConfig, RequestLimits};
    use crate::identity::ActorIdentity;
    use crate::membership::{DetectorConfig, MemberTable};
    use crate::quorum::QuorumConfig;
    use crate::ring::PartitionStrategy;
    use crate::server::status_page::{escape_html, owned_arcs};
    use crate::storage::{Durability, MemoryEngine};
    use crate::store::Store;
    use crate::transport::MemoryNetwork;
    use crate::version::SiblingLimits;

    const LIMITS: RequestLimits = RequestLimits {
        max_key_bytes: 64,
        max_value_bytes: 1024,
    };

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// Node `me`, whose table holds `members` (id, address) as Members, alone on an
    /// in-memory network (no peer answers). An empty list gives a node that has not
    /// joined.
    fn node_with(me: &str, members: &[(&str, &str)], quorum: QuorumConfig) -> HttpState {
        node_with_store(me, members, quorum, |store| store).0
    }

    /// [`node_with`], its store shaped by `shape` and handed back too.
    fn node_with_store(
        me: &str,
        members: &[(&str, &str)],
        quorum: QuorumConfig,
        shape: impl FnOnce(Store) -> Store,
    ) -> (HttpState, Store) {
        let mut table = MemberTable::new();
        for (member, address) in members {
            table.join(id(member), address, 1).unwrap();
            table.mark_member(&id(member)).unwrap();
        }
        // One registry for the coordinator and the handlers, as in a node.
        let metrics = Metrics::new();
        let store = shape(Store::new(
            Arc::new(MemoryEngine::new()),
            SiblingLimits::default(),
            Arc::new(ActorIdentity::new(id(me), 1, Clock::default())),
        ));
        let cluster = Arc::new(
            Cluster::new(
                id(me),
                table,
                PartitionStrategy::random_tokens(8).unwrap(),
                DetectorConfig::default(),
                Clock::default(),
            )
            .unwrap(),
        );
        let coordinator = Coordinator::new(
            CoordinatorConfig {
                quorum,
                timeout: Duration::from_secs(2),
                durability: Durability::Sync,
                limits: LIMITS,
                metrics: metrics.clone(),
                read_fanout: crate::coordinator::ReadFanout::All,
            },
            store.clone(),
            Arc::clone(&cluster),
            // No peer is registered on the network: every call to one fails as a
            // refused connection would.
            Arc::new(
                MemoryNetwork::new(Duration::from_millis(200))
                    .unwrap()
                    .endpoint(me),
            ),
        );
        let state = HttpState {
            coordinator,
            metrics,
            last_page: LastPage::default(),
            cluster,
            admission: KvAdmission {
                inflight: InflightLimit::new(64),
                body_read_timeout: Duration::from_secs(10),
            },
        };
        (state, store)
    }

    /// A one-node ring with N = R = W = 1.
    fn single_node() -> HttpState {
        node_with(
            "n1",
            &[("n1", "127.0.0.1:7000")],
            QuorumConfig::new(1, 1, 1).unwrap(),
        )
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Reply {
        fn context(&self) -> &str {
            self.headers
                .get(&CONTEXT_HEADER)
                .expect("context header")
                .to_str()
                .unwrap()
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(|value| value.to_str().unwrap())
        }
    }

    async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        context: Option<&str>,
        body: Body,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(context) = context {
            request = request.header(CONTEXT_HEADER, context);
        }
        let response = app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn put(app: &Router, uri: &str, context: Option<&str>, value: &str) -> Reply {
        send(app, "PUT", uri, context, Body::from(value.to_owned())).await
    }

    async fn get(app: &Router, uri: &str) -> Reply {
        send(app, "GET", uri, None, Body::empty()).await
    }

    #[tokio::test]
    async fn put_then_get_returns_the_value_and_its_context() {
        let app = router(single_node());
        let written = put(&app, "/v1/kv/cart", None, "milk").await;
        assert_eq!(written.status, StatusCode::NO_CONTENT);
        assert!(!written.context().is_empty());
        let read = get(&app, "/v1/kv/cart").await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.body, b"milk");
        // Dynamo §5: the context a get returns is the clock of what it read.
        assert_eq!(read.context(), written.context());
    }

    #[tokio::test]
    async fn a_put_with_the_read_context_replaces_the_value() {
        let app = router(single_node());
        put(&app, "/v1/kv/cart", None, "milk").await;
        let read = get(&app, "/v1/kv/cart").await;
        let context = read.context().to_owned();
        let replaced = put(&app, "/v1/kv/cart", Some(&context), "milk,eggs").await;
        assert_eq!(replaced.status, StatusCode::NO_CONTENT);
        assert_ne!(replaced.context(), context);
        let read = get(&app, "/v1/kv/cart").await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.body, b"milk,eggs");
    }

    #[tokio::test]
    async fn blind_puts_are_siblings_until_a_put_with_their_context() {
        let app = router(single_node());
        put(&app, "/v1/kv/cart", None, "milk").await;
        put(&app, "/v1/kv/cart", None, "eggs").await;
        // Dynamo §4.4: two writes that did not see each other are concurrent; a read
        // returns both, with one context covering them.
        let read = get(&app, "/v1/kv/cart").await;
        assert_eq!(read.status, StatusCode::MULTIPLE_CHOICES);
        let mut siblings: Vec<Vec<u8>> = read.json()["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| BASE64.decode(v.as_str().unwrap()).unwrap())
            .collect();
        siblings.sort();
        assert_eq!(siblings, vec![b"eggs".to_vec(), b"milk".to_vec()]);
        assert_eq!(read.json()["explanation"], SIBLINGS_EXPLANATION);
        // The client reconciles and writes back with that context (§4.4 "semantic
        // reconciliation"): one version remains.
        let merged = put(&app, "/v1/kv/cart", Some(read.context()), "eggs,milk").await;
        assert_eq!(merged.status, StatusCode::NO_CONTENT);
        let read = get(&app, "/v1/kv/cart").await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.body, b"eggs,milk");
    }

    #[tokio::test]
    async fn missing_and_deleted_keys_are_404_with_a_context() {
        let app = router(single_node());
        let missing = get(&app, "/v1/kv/nothing").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.context(), "");
        assert_eq!(missing.json()["error"], "not found");

        put(&app, "/v1/kv/cart", None, "milk").await;
        let context = get(&app, "/v1/kv/cart").await.context().to_owned();
        let deleted = send(&app, "DELETE", "/v1/kv/cart", Some(&context), Body::empty()).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        // A delete is a tombstone with a clock (Dynamo §4.4): the 404 still carries a
        // context, so a later write can supersede the delete.
        let gone = get(&app, "/v1/kv/cart").await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(gone.context(), deleted.context());
        assert!(!gone.context().is_empty());
    }

    /// A `DELETE` without a context deletes what a read finds (it used to write a
    /// tombstone that superseded nothing, so the value read back 200).
    #[tokio::test]
    async fn a_delete_without_a_context_deletes_what_a_read_finds() {
        let app = router(single_node());
        put(&app, "/v1/kv/cart", None, "milk").await;
        put(&app, "/v1/kv/cart", None, "eggs").await;
        let deleted = send(&app, "DELETE", "/v1/kv/cart", None, Body::empty()).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        let gone = get(&app, "/v1/kv/cart").await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(gone.context(), deleted.context());
        // Nothing there: nothing written, 204 all the same (a delete is idempotent).
        let nothing = send(&app, "DELETE", "/v1/kv/never", None, Body::empty()).await;
        assert_eq!(nothing.status, StatusCode::NO_CONTENT);
        assert_eq!(get(&app, "/v1/kv/never").await.context(), "");
        // A bad W override is refused before anything is read or written.
        put(&app, "/v1/kv/kept", None, "v").await;
        let refused = send(&app, "DELETE", "/v1/kv/kept?w=9", None, Body::empty()).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(get(&app, "/v1/kv/kept").await.status, StatusCode::OK);
    }

    /// At the sibling cap a blind put is a conflict the client resolves by reading:
    /// `409` with a message that says so, counted as `outcome="conflict"`; a put with
    /// the read's context then replaces every sibling.
    #[tokio::test]
    async fn a_put_past_the_sibling_cap_is_a_409_that_says_read_and_resolve() {
        let app = router(single_node());
        let cap = SiblingLimits::default().max_siblings();
        for i in 0..cap {
            let written = put(&app, "/v1/kv/hot", None, &format!("v{i}")).await;
            assert_eq!(written.status, StatusCode::NO_CONTENT, "put {i}");
        }
        let refused = put(&app, "/v1/kv/hot", None, "one too many").await;
        assert_eq!(refused.status, StatusCode::CONFLICT);
        let message = refused.json()["error"].as_str().unwrap().to_owned();
        assert!(message.contains("read and resolve"), "{message}");
        let read = get(&app, "/v1/kv/hot").await;
        assert_eq!(read.status, StatusCode::MULTIPLE_CHOICES);
        assert_eq!(read.json()["siblings"].as_array().unwrap().len(), cap);
        let resolved = put(&app, "/v1/kv/hot", Some(read.context()), "merged").await;
        assert_eq!(resolved.status, StatusCode::NO_CONTENT);
        let read = get(&app, "/v1/kv/hot").await;
        assert_eq!(
            (read.status, read.body.as_slice()),
            (StatusCode::OK, &b"merged"[..])
        );
        let text = String::from_utf8(get(&app, "/metrics").await.body).unwrap();
        let line = r#"dynamo_requests_total{api="http",op="put",outcome="conflict"} 1"#;
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }

    /// Last-write-wins (#15): concurrent versions a replica holds (merged in from two
    /// coordinators) read as the later one, 200 not 300; a put with that read's context
    /// replaces both.
    #[tokio::test]
    async fn under_last_write_wins_stored_siblings_read_as_the_latest() {
        use crate::version::{Actor, Reconciliation, Value};
        let (state, store) = node_with_store(
            "n1",
            &[("n1", "127.0.0.1:7000")],
            QuorumConfig::new(1, 1, 1).unwrap(),
            |store| store.with_reconciliation(Reconciliation::LastWriteWins),
        );
        let limits = SiblingLimits::default();
        let mut siblings = SiblingSet::new();
        for (actor, value, at) in [("a", "older", 1_000), ("b", "newer", 2_000)] {
            let mut one = SiblingSet::new();
            one.put(
                &crate::version::context::Context::new(),
                Value::data(value.as_bytes()),
                &Actor::new(id(actor), 1),
                crate::time::Millis(at),
                &limits,
            )
            .unwrap();
            siblings.merge(&one);
        }
        assert_eq!(siblings.values().count(), 2);
        store.merge(b"cart", &siblings, Durability::Sync).unwrap();
        let app = router(state);
        let read = get(&app, "/v1/kv/cart").await;
        assert_eq!(
            (read.status, read.body.as_slice()),
            (StatusCode::OK, &b"newer"[..])
        );
        let written = put(&app, "/v1/kv/cart", Some(read.context()), "latest").await;
        assert_eq!(written.status, StatusCode::NO_CONTENT);
        let stored = store.read(b"cart").unwrap();
        assert_eq!(stored.values().collect::<Vec<_>>(), [&b"latest"[..]]);
    }

    #[tokio::test]
    async fn malformed_contexts_are_400() {
        let app = router(single_node());
        let not_base64 = put(&app, "/v1/kv/k", Some("!!!"), "v").await;
        assert_eq!(not_base64.status, StatusCode::BAD_REQUEST);
        assert!(
            not_base64.json()["error"]
                .as_str()
                .unwrap()
                .contains("base64")
        );
        // Valid base64 of bytes that are not a context (unknown format version 9).
        let bad_bytes = BASE64.encode([9u8, 1, 2]);
        let rejected = send(&app, "DELETE", "/v1/kv/k", Some(&bad_bytes), Body::empty()).await;
        assert_eq!(rejected.status, StatusCode::BAD_REQUEST);
        // A header longer than any context's base64 form is refused by its length.
        let oversized = "A".repeat(MAX_CONTEXT_HEADER_LEN + 4);
        let too_long = put(&app, "/v1/kv/k", Some(&oversized), "v").await;
        assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
        assert!(
            too_long.json()["error"]
                .as_str()
                .unwrap()
                .contains("context header is"),
            "{:?}",
            too_long.json()
        );
        // The largest context's header still fits.
        assert_eq!(
            MAX_CONTEXT_HEADER_LEN,
            BASE64.encode(vec![0u8; context::MAX_CONTEXT_BYTES]).len()
        );
        assert_eq!(get(&app, "/v1/kv/k").await.status, StatusCode::NOT_FOUND);
    }

    /// A put of `declared` bytes whose body never comes.
    async fn stalled_put(app: &Router, declared: usize) -> Reply {
        let request = Request::builder()
            .method("PUT")
            .uri("/v1/kv/k")
            .header(CONTENT_LENGTH, declared)
            .body(Body::new(Hostile::Stalled))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec(),
        }
    }

    #[tokio::test]
    async fn a_content_length_over_the_limit_is_refused_before_the_body_is_read() {
        let state = single_node();
        let metrics = state.metrics.clone();
        let app = router(state);
        let refused = stalled_put(&app, LIMITS.max_value_bytes + 1).await;
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(refused.header("connection"), Some("close"));
        assert!(refused.json()["error"].as_str().unwrap().contains("limit"));
        assert!(
            metrics
                .encode()
                .contains(r#"dynamo_requests_total{api="http",op="put",outcome="invalid"} 1"#)
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_408() {
        let mut state = single_node();
        state.admission.body_read_timeout = Duration::from_millis(100);
        let app = router(state);
        let refused = stalled_put(&app, 10).await;
        assert_eq!(refused.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(refused.header("connection"), Some("close"));
        assert!(
            refused.json()["error"]
                .as_str()
                .unwrap()
                .contains("did not arrive within 100ms"),
            "{:?}",
            refused.json()
        );
        // The slot it held is free again.
        assert_eq!(
            put(&app, "/v1/kv/k", None, "v").await.status,
            StatusCode::NO_CONTENT
        );
    }

    #[tokio::test]
    async fn requests_past_the_inflight_cap_are_shed_with_a_retry_hint() {
        let mut state = single_node();
        state.admission.inflight = InflightLimit::new(1);
        let busy = state.admission.inflight.try_admit().expect("the only slot");
        let metrics = state.metrics.clone();
        let app = router(state);
        for (method, body) in [("GET", ""), ("PUT", "v"), ("DELETE", "")] {
            let shed = send(&app, method, "/v1/kv/k", None, Body::from(body)).await;
            assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{method}");
            assert_eq!(shed.header("retry-after"), Some("1"), "{method}");
            assert!(
                shed.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("1 client requests in flight"),
                "{method}: {:?}",
                shed.json()
            );
        }
        assert_eq!(metrics.shed(Api::Http), 3);
        // Probes and scrapes are not client requests: never shed.
        assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
        assert_eq!(get(&app, "/metrics").await.status, StatusCode::OK);
        drop(busy);
        assert_eq!(
            put(&app, "/v1/kv/k", None, "v").await.status,
            StatusCode::NO_CONTENT
        );
    }

    /// A hostile request body: `Endless` never ends, `Stalled` never sends a byte (a
    /// client that sent the headers only).
    enum Hostile {
        Endless,
        Stalled,
    }

    impl http_body::Body for Hostile {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match *self {
                Self::Endless => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[7; 512]))))),
                Self::Stalled => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn oversized_values_are_413_before_the_body_is_buffered() {
        let state = single_node();
        let metrics = state.metrics.clone();
        let app = router(state);
        let at_limit = "x".repeat(LIMITS.max_value_bytes);
        assert_eq!(
            put(&app, "/v1/kv/k", None, &at_limit).await.status,
            StatusCode::NO_CONTENT
        );
        let over = format!("{at_limit}x");
        let refused = put(&app, "/v1/kv/k", None, &over).await;
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(refused.json()["error"].as_str().unwrap().contains("limit"));
        // An endless body is refused once the limit is crossed: were it buffered
        // whole, this request would never finish.
        let endless = tokio::time::timeout(
            Duration::from_secs(10),
            send(&app, "PUT", "/v1/kv/k", None, Body::new(Hostile::Endless)),
        )
        .await
        .expect("the body limit ends the request");
        assert_eq!(endless.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(get(&app, "/v1/kv/k").await.body, at_limit.as_bytes());
        assert!(
            metrics
                .encode()
                .contains(r#"dynamo_requests_total{api="http",op="put",outcome="invalid"} 2"#)
        );
    }

    #[tokio::test]
    async fn keys_are_percent_decoded_bytes_within_the_limit() {
        let app = router(single_node());
        for empty in ["/v1/kv/", "/v1/kv"] {
            let reply = get(&app, empty).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{empty}");
            assert!(reply.json()["error"].as_str().unwrap().contains("empty"));
            assert_eq!(
                put(&app, empty, None, "v").await.status,
                StatusCode::BAD_REQUEST
            );
        }
        let too_long = format!("/v1/kv/{}", "k".repeat(LIMITS.max_key_bytes + 1));
        assert_eq!(get(&app, &too_long).await.status, StatusCode::BAD_REQUEST);
        // Three encoded bytes are one byte each: 64 of them is a 64-byte key.
        let longest = format!("/v1/kv/{}", "%FF".repeat(LIMITS.max_key_bytes));
        assert_eq!(
            put(&app, &longest, None, "v").await.status,
            StatusCode::NO_CONTENT
        );
        // Binary keys, and slashes encoded or not, name the same bytes.
        put(&app, "/v1/kv/%00%FF%2Fa", None, "binary").await;
        assert_eq!(get(&app, "/v1/kv/%00%ff/a").await.body, b"binary");
        assert_eq!(
            get(&app, "/v1/kv/%00%FF").await.status,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn quorum_overrides_are_checked() {
        let app = router(single_node());
        put(&app, "/v1/kv/k?w=1", None, "v").await;
        assert_eq!(get(&app, "/v1/kv/k?r=1").await.status, StatusCode::OK);
        for bad in ["?r=0", "?r=9", "?r=-1", "?r=abc", "?r=99999999999"] {
            let reply = get(&app, &format!("/v1/kv/k{bad}")).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(reply.json()["error"].is_string());
        }
        for bad in ["?w=0", "?w=2"] {
            let reply = put(&app, &format!("/v1/kv/k{bad}"), None, "v").await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[tokio::test]
    async fn metrics_count_every_kv_request() {
        let app = router(single_node());
        put(&app, "/v1/kv/k", None, "v").await;
        get(&app, "/v1/kv/k").await;
        get(&app, "/v1/kv/missing").await;
        get(&app, "/v1/kv/k?r=0").await;
        send(&app, "DELETE", "/v1/kv/k", None, Body::empty()).await;
        let reply = get(&app, "/metrics").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.headers.get(CONTENT_TYPE).unwrap(),
            OPENMETRICS_CONTENT_TYPE
        );
        let text = String::from_utf8(reply.body).unwrap();
        for line in [
            r#"dynamo_requests_total{api="http",op="put",outcome="ok"} 1"#,
            r#"dynamo_requests_total{api="http",op="get",outcome="ok"} 1"#,
            r#"dynamo_requests_total{api="http",op="get",outcome="not_found"} 1"#,
            r#"dynamo_requests_total{api="http",op="get",outcome="invalid"} 1"#,
            r#"dynamo_requests_total{api="http",op="delete",outcome="ok"} 1"#,
            r#"dynamo_request_duration_seconds_count{api="http",op="get"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    /// Dynamo §6.3's figure: how many versions each get returned, on `/metrics`.
    #[tokio::test]
    async fn metrics_count_the_versions_each_get_returned() {
        let app = router(single_node());
        put(&app, "/v1/kv/one", None, "v").await;
        // Two blind puts of one key: two concurrent versions.
        put(&app, "/v1/kv/two", None, "a").await;
        put(&app, "/v1/kv/two", None, "b").await;
        get(&app, "/v1/kv/one").await;
        get(&app, "/v1/kv/one").await;
        get(&app, "/v1/kv/two").await;
        get(&app, "/v1/kv/missing").await;
        let text = String::from_utf8(get(&app, "/metrics").await.body).unwrap();
        for line in [
            r#"dynamo_get_versions_bucket{le="1.0"} 2"#,
            r#"dynamo_get_versions_bucket{le="2.0"} 3"#,
            "dynamo_get_versions_count 3",
            "dynamo_get_versions_sum 4.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[tokio::test]
    async fn healthz_answers_while_serving() {
        let reply = get(&router(single_node()), "/healthz").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, b"ok");
    }

    #[tokio::test]
    async fn readyz_waits_for_this_node_to_join_the_ring() {
        let state = node_with("n1", &[], QuorumConfig::new(1, 1, 1).unwrap());
        let cluster = Arc::clone(&state.cluster);
        let app = router(state);
        let before = get(&app, "/readyz").await;
        assert_eq!(before.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            before.json()["error"]
                .as_str()
                .unwrap()
                .contains("not joined")
        );
        // Dynamo §4.8.1: an explicit join puts the node in the ring (as Joining).
        cluster
            .change(|table| table.join(id("n1"), "n1:7000", 1))
            .unwrap();
        assert_eq!(get(&app, "/readyz").await.status, StatusCode::OK);
        cluster.change(|table| table.leave(&id("n1"))).unwrap();
        let leaving = get(&app, "/readyz").await;
        assert_eq!(leaving.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            leaving.json()["error"]
                .as_str()
                .unwrap()
                .contains("leaving")
        );
    }

    #[tokio::test]
    async fn status_page_draws_the_ring_and_escapes_member_fields() {
        let hostile = "<script>\"a&'b:7001";
        let state = node_with(
            "n1",
            &[("n1", "127.0.0.1:7000"), ("n2", hostile)],
            QuorumConfig::new(1, 1, 1).unwrap(),
        );
        let reply = get(&router(state), "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply
                .headers
                .get(CONTENT_TYPE)
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = String::from_utf8(reply.body).unwrap();
        assert!(html.contains("<svg"));
        assert!(html.contains("<path"), "two members own arcs");
        assert!(html.contains(">n2</td>"));
        assert!(html.contains("&lt;script&gt;&quot;a&amp;&#39;b:7001"));
        assert!(!html.contains("<script"));
        // Self-contained: nothing is loaded from elsewhere; one link, to /metrics.
        assert!(!html.contains("src="));
        assert_eq!(html.matches("href=").count(), 1, "{html}");
        assert!(html.contains("<a href=\"/metrics\">"));
    }

    /// The page an operator keeps open: quorum, version, keys, requests with rates
    /// between two drawings, backlogs, zones, and it redraws itself.
    #[tokio::test]
    async fn status_page_shows_requests_rates_backlogs_and_quorum() {
        let state = single_node();
        let metrics = state.metrics.clone();
        let app = router(state);
        let first = String::from_utf8(get(&app, "/").await.body).unwrap();
        assert!(first.contains("no requests yet"), "{first}");
        assert!(first.contains("http-equiv=\"refresh\" content=\"5\""));
        assert!(first.contains("N=1 R=1 W=1"));
        assert!(first.contains(env!("CARGO_PKG_VERSION")));
        put(&app, "/v1/kv/k", None, "v").await;
        get(&app, "/v1/kv/k").await;
        get(&app, "/v1/kv/k?r=0").await;
        metrics.set_hint_backlogs([(&id("n9"), 7)]);
        let second = String::from_utf8(get(&app, "/").await.body).unwrap();
        // get: one served, one refused; the rate columns now have numbers.
        let row = second
            .split("<tr>")
            .find(|row| row.starts_with("<td>get</td>"))
            .unwrap_or_else(|| panic!("a get row: {second}"));
        assert!(
            row.starts_with("<td>get</td><td>1</td><td>1</td><td>0</td>"),
            "{row}"
        );
        assert!(
            !row.contains("<td>-</td>"),
            "rates after a second drawing: {row}"
        );
        assert!(second.contains("n9 (7 keys)"), "{second}");
        assert!(second.contains("<td>this node</td>"));
    }

    #[test]
    fn a_single_owner_is_drawn_as_a_full_circle() {
        let state = single_node();
        let arcs = owned_arcs(&state.cluster.ring());
        assert_eq!(arcs.len(), 1);
        assert!(arcs[0].0.is_full());
        assert_eq!(arcs[0].1, id("n1"));
    }

    #[tokio::test]
    async fn unreachable_quorum_is_503() {
        // Dynamo §4.6: with N = 3 and W = 2, a write needs one peer besides the
        // coordinator; here no peer answers.
        let state = node_with(
            "n1",
            &[("n1", "n1:7000"), ("n2", "n2:7000"), ("n3", "n3:7000")],
            QuorumConfig::new(3, 2, 2).unwrap(),
        );
        let metrics = state.metrics.clone();
        let app = router(state);
        let write = put(&app, "/v1/kv/k", None, "v").await;
        assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(write.json()["error"].as_str().unwrap().contains("quorum"));
        let read = get(&app, "/v1/kv/k").await;
        assert_eq!(read.status, StatusCode::SERVICE_UNAVAILABLE);
        // With W = 1 the coordinator's own write is enough.
        assert_eq!(
            put(&app, "/v1/kv/k?w=1", None, "v").await.status,
            StatusCode::NO_CONTENT
        );
        let text = metrics.encode();
        assert!(
            text.contains(r#"dynamo_requests_total{api="http",op="put",outcome="unavailable"} 1"#)
        );
        assert!(
            text.contains(r#"dynamo_requests_total{api="http",op="get",outcome="unavailable"} 1"#)
        );
    }

    /// Sends one raw HTTP/1.1 request and reads the whole response.
    async fn raw_request(address: std::net::SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn serves_over_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, router(single_node())).into_future());
        let written = raw_request(
            address,
            "PUT /v1/kv/hello%20world HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\
             Connection: close\r\n\r\nthere",
        )
        .await;
        assert!(written.starts_with("HTTP/1.1 204"), "{written}");
        assert!(written.to_ascii_lowercase().contains("x-dynamo-context: "));
        let read = raw_request(
            address,
            "GET /v1/kv/hello%20world HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(read.starts_with("HTTP/1.1 200"), "{read}");
        assert!(read.ends_with("\r\n\r\nthere"), "{read}");
        server.abort();
    }

    proptest! {
        #[test]
        fn any_key_bytes_survive_percent_encoding(key in proptest::collection::vec(any::<u8>(), 0..80)) {
            let encoded: String = percent_encoding::percent_encode(&key, NON_ALPHANUMERIC).collect();
            let uri: Uri = format!("{KV_PREFIX}{encoded}").parse().unwrap();
            prop_assert_eq!(key_of(&uri), key);
        }

        #[test]
        fn escaped_text_has_no_markup(text in ".*") {
            let escaped = escape_html(&text);
            prop_assert!(!escaped.contains(['<', '>', '"', '\'']));
            // Every '&' starts one of the entities written.
            for (at, _) in escaped.match_indices('&') {
                let rest = &escaped[at..];
                prop_assert!(["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().any(|e| rest.starts_with(e)));
            }
        }

        #[test]
        fn utf8_keys_round_trip_through_the_router(
            key in "[^/?#]{1,16}",
            value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (status, body) = runtime.block_on(async {
                let app = router(single_node());
                let path = format!("{KV_PREFIX}{}", utf8_percent_encode(&key, NON_ALPHANUMERIC));
                let written = send(&app, "PUT", &path, None, Body::from(value.clone())).await;
                assert_eq!(written.status, StatusCode::NO_CONTENT);
                let read = get(&app, &path).await;
                (read.status, read.body)
            });
            prop_assert_eq!(status, StatusCode::OK);
            prop_assert_eq!(body, value);
        }
    }
}
