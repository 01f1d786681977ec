//! A gRPC service behind a gate: a [`CallGate`] admits each call, or refuses it with a
//! status before its body is read or decoded, and hears how every admitted call ended.
//! Internode authentication ([`crate::transport::auth`]) and the client API's in-flight
//! cap ([`crate::server::limits`]) are such gates.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// Decides, from a call's head alone, whether it runs.
pub trait CallGate: Send + Sync + 'static {
    /// What an admitted call holds until it ends (a slot, the labels to count it by).
    type Ticket: Send + 'static;

    /// Admits the call, or refuses it with the status its caller gets.
    ///
    /// # Errors
    /// The refusal.
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Self::Ticket, Status>;

    /// Hears how an admitted call ended, then drops its ticket.
    fn finished(&self, ticket: Self::Ticket, response: &http::Response<tonic::body::Body>) {
        let _ = (ticket, response);
    }
}

/// `inner` behind `gate`.
#[derive(Debug)]
pub struct Gated<S, G> {
    inner: S,
    gate: Arc<G>,
}

impl<S: Clone, G> Clone for Gated<S, G> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<S, G> Gated<S, G> {
    /// `inner` behind `gate`.
    pub fn new(inner: S, gate: G) -> Self {
        Self {
            inner,
            gate: Arc::new(gate),
        }
    }
}

impl<S: NamedService, G> NamedService for Gated<S, G> {
    const NAME: &'static str = S::NAME;
}

impl<S, G, B> Service<http::Request<B>> for Gated<S, G>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    G: CallGate,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let ticket = match self.gate.admit(&request) {
            Ok(ticket) => ticket,
            Err(refusal) => return Box::pin(std::future::ready(Ok(refusal.into_http()))),
        };
        // The clone that was made ready serves this call (tower's contract); a fresh
        // clone is left for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            let response = inner.call(request).await?;
            gate.finished(ticket, &response);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tower::ServiceExt as _;

    /// Admits calls to `/ok`, refuses the rest; records what it heard.
    #[derive(Default)]
    struct PathGate {
        finished: Mutex<Vec<String>>,
    }

    impl CallGate for PathGate {
        type Ticket = String;

        fn admit<B>(&self, request: &http::Request<B>) -> Result<String, Status> {
            match request.uri().path() {
                "/ok" => Ok("ok".to_owned()),
                other => Err(Status::permission_denied(format!("{other} is closed"))),
            }
        }

        fn finished(&self, ticket: String, response: &http::Response<tonic::body::Body>) {
            self.finished
                .lock()
                .unwrap()
                .push(format!("{ticket} {}", response.status()));
        }
    }

    #[derive(Clone)]
    struct Inner;

    impl Service<http::Request<()>> for Inner {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<()>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(tonic::body::Body::empty())))
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn refused_calls_get_the_gates_status_and_admitted_ones_are_reported() {
        let gated = Gated::new(Inner, PathGate::default());
        let refused = gated.clone().oneshot(request("/closed")).await.unwrap();
        let status = Status::from_header_map(refused.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "/closed is closed");
        let admitted = gated.clone().oneshot(request("/ok")).await.unwrap();
        assert_eq!(admitted.status(), http::StatusCode::OK);
        assert_eq!(*gated.gate.finished.lock().unwrap(), ["ok 200 OK"]);
    }
}
