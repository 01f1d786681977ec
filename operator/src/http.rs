//! The operator's HTTP endpoints: `/metrics` (OpenMetrics), `/healthz` (the process
//! runs) and `/readyz` (set up: API client built, leader election joined; a follower
//! waiting for the Lease is ready too).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};

/// What the endpoints report.
#[derive(Debug, Clone)]
pub struct Health {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Endpoints over `metrics`, not ready until [`Health::set_ready`].
    #[must_use]
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the operator ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
}

async fn serve_metrics(State(health): State<Health>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        health.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// The router serving the three endpoints.
pub fn router(health: Health) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GET `path` from the router served on a loopback port, with a raw HTTP/1.1 request.
    async fn get_path(router: axum::Router, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        server.abort();
        let code = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }

    #[tokio::test]
    async fn endpoints_report_health_readiness_and_metrics() {
        let metrics = Metrics::new();
        metrics.step_taken("Join");
        let health = Health::new(metrics);
        let app = router(health.clone());
        assert_eq!(get_path(app.clone(), "/healthz").await, (200, "ok".into()));
        assert_eq!(get_path(app.clone(), "/readyz").await.0, 503);
        health.set_ready();
        assert_eq!(
            get_path(app.clone(), "/readyz").await,
            (200, "ready".into())
        );
        let (code, body) = get_path(app.clone(), "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            body.contains("dynamo_operator_membership_steps_total{step=\"Join\"} 1"),
            "{body}"
        );
        assert_eq!(get_path(app, "/nope").await.0, 404);
    }
}
