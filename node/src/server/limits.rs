//! What the node's listeners allow their clients, so overload and slow or idle clients
//! cannot take the node down: a connection cap per listener (kept within the process's
//! open-files limit), a cap on client requests in flight that sheds the excess at once
//! (gRPC UNAVAILABLE, HTTP `503`, each with a retry hint) instead of queueing it, and a
//! time limit on what a client must send.
//!
//! The cap arithmetic is pure ([`connection_cap`]); the in-flight gate
//! ([`InflightLimit`], [`ShedWhenBusy`], a [`Gated`] service) wraps the gRPC `Kv` service and the HTTP
//! `/v1/kv` routes, which share one gate: both reach the same coordinator.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::codegen::http;

pub use dynamo_config::settings::ServingLimits;
pub use dynamo_proto::wire::{RETRY_PUSHBACK_METADATA, is_shed};

use crate::grpc_gate::{CallGate, Gated};
use crate::log_gate::LogGate;
use crate::metrics::{Api, Metrics};

/// How long a shed client is told to wait before trying again (gRPC's
/// `grpc-retry-pushback-ms`; HTTP's `Retry-After` is in whole seconds, so 1).
pub const RETRY_PUSHBACK: Duration = Duration::from_millis(100);

/// Bound on a client's TLS handshake: a peer that connects and stays silent must not
/// hold a task forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often refusals at the cap are logged at most (each is counted).
pub const CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// File descriptors kept out of the connection budget: the storage engine's files,
/// outgoing connections to peers, value blobs being read, logs.
pub const RESERVED_FILES: u64 = 64;

/// The node's three listeners (client gRPC, internode gRPC, HTTP) share the budget.
pub const LISTENERS: u64 = 3;

/// The per-listener connection cap: `configured`, lowered so that every listener at its
/// cap together with [`RESERVED_FILES`] stays within `open_files` (the process's
/// `RLIMIT_NOFILE`), and never below 4. Past the open-files limit `accept` fails for
/// every listener at once, and with it the storage engine's and peers' files; a cap
/// that is reached first refuses only the newest connections.
///
/// Returns the cap and whether it had to be lowered.
pub fn connection_cap(configured: usize, open_files: u64) -> (usize, bool) {
    let budget = open_files.saturating_sub(RESERVED_FILES) / LISTENERS;
    let budget = usize::try_from(budget).unwrap_or(usize::MAX).max(4);
    if configured > budget {
        (budget, true)
    } else {
        (configured, false)
    }
}

/// Raises the process's soft open-files limit to its hard limit (what Go's runtime and
/// most servers do at start: the soft default of 1024 is a relic of `select`), and
/// returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum.unwrap_or(u64::MAX),
            Err(error) => {
                tracing::debug!(%error, current, "could not raise the open-files limit");
            }
        }
    }
    current
}

/// The cap on client requests in flight, shared by the gRPC and HTTP client APIs.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct InflightLimit {
    slots: Arc<Semaphore>,
    limit: usize,
    log: Arc<LogGate>,
}

/// How often shedding is logged at most (every shed request is counted).
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl InflightLimit {
    /// At most `limit` requests at once.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            log: Arc::new(LogGate::new(SHED_LOG_INTERVAL)),
        }
    }

    /// Counts a request shed through `api` in `metrics`, and logs it (at most every
    /// ten seconds, with how many went unlogged).
    pub fn record_shed(&self, metrics: &Metrics, api: Api) {
        metrics.count_shed(api);
        if let Some(skipped) = self.log.admit() {
            tracing::warn!(
                ?api,
                max_inflight_requests = self.limit,
                also_shed_unlogged = skipped,
                "shedding client requests: max-inflight-requests are in flight"
            );
        }
    }

    /// A slot for one request, held until the request is answered; `None` when all
    /// are taken (the request is then shed).
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Why a request was shed, for the client.
    pub fn refusal(&self) -> String {
        format!(
            "node overloaded: {} client requests in flight; retry after {} ms",
            self.limit,
            RETRY_PUSHBACK.as_millis()
        )
    }
}

/// The gRPC status a shed request gets: UNAVAILABLE (safe to retry: nothing was done)
/// with `grpc-retry-pushback-ms`, the hint gRPC's retry policy honours.
pub fn shed_status(limit: &InflightLimit) -> Status {
    let mut status = Status::unavailable(limit.refusal());
    status.metadata_mut().insert(
        RETRY_PUSHBACK_METADATA,
        tonic::metadata::MetadataValue::from(
            u64::try_from(RETRY_PUSHBACK.as_millis()).unwrap_or(100),
        ),
    );
    status
}

/// A gRPC service behind the [`InflightLimit`]: a call beyond it is answered at once
/// with [`shed_status`] and counted, before its body is read.
pub type ShedWhenBusy<S> = Gated<S, ShedGate>;

/// `inner` behind `limit`, counting sheds into `metrics`.
pub fn shed_when_busy<S>(inner: S, limit: InflightLimit, metrics: Metrics) -> ShedWhenBusy<S> {
    Gated::new(inner, ShedGate { limit, metrics })
}

/// The [`CallGate`] of [`ShedWhenBusy`].
#[derive(Debug)]
pub struct ShedGate {
    limit: InflightLimit,
    metrics: Metrics,
}

impl CallGate for ShedGate {
    /// Held until the handler has answered; a streamed reply's tail is not counted
    /// (`Kv` replies are unary).
    type Ticket = OwnedSemaphorePermit;

    fn admit<B>(&self, _request: &http::Request<B>) -> Result<OwnedSemaphorePermit, Status> {
        self.limit.try_admit().ok_or_else(|| {
            self.limit.record_shed(&self.metrics, Api::Grpc);
            shed_status(&self.limit)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_cap_is_kept_when_the_open_files_limit_has_room_for_it() {
        assert_eq!(connection_cap(1024, 1_048_576), (1024, false));
        assert_eq!(
            connection_cap(1024, 3 * 1024 + RESERVED_FILES),
            (1024, false)
        );
    }

    #[test]
    fn the_cap_is_lowered_to_fit_the_open_files_limit() {
        // The issue's `ulimit -n 256`: (256 - 64) / 3.
        assert_eq!(connection_cap(1024, 256), (64, true));
        assert_eq!(
            connection_cap(1024, 3 * 1024 + RESERVED_FILES - 1),
            (1023, true)
        );
        // Absurdly low limits still leave a few connections per listener.
        assert_eq!(connection_cap(1024, 10), (4, true));
    }

    proptest! {
        /// Whatever the limit, the listeners at their caps plus the reserve fit it
        /// (above the floor of 4), and the cap never exceeds what was configured.
        #[test]
        fn the_caps_fit_the_limit(configured in 4usize..2_000_000, open_files in 0u64..10_000_000) {
            let (cap, lowered) = connection_cap(configured, open_files);
            prop_assert!(cap <= configured);
            prop_assert_eq!(lowered, cap < configured);
            if cap > 4 {
                prop_assert!(cap as u64 * LISTENERS + RESERVED_FILES <= open_files);
            }
        }
    }

    #[test]
    fn admission_sheds_past_the_limit_and_frees_the_slot_when_done() {
        let limit = InflightLimit::new(2);
        let first = limit.try_admit().expect("a first slot");
        let _second = limit.try_admit().expect("a second slot");
        assert!(limit.try_admit().is_none(), "a third request is shed");
        drop(first);
        assert!(limit.try_admit().is_some(), "a freed slot admits again");
    }

    #[test]
    fn the_shed_status_is_unavailable_with_a_retry_hint() {
        let status = shed_status(&InflightLimit::new(7));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("7 client requests in flight"),
            "{status:?}"
        );
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "100"
        );
        assert!(is_shed(&status));
        assert!(!is_shed(&Status::unavailable("quorum not reached")));
    }
}
