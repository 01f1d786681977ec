//! The HTTP API listener (I/O shell): the [`http`](super::http) router, over TLS with
//! the node's certificate when the node has TLS material, within [`ServeLimits`]
//! (a connection cap, a header-read timeout, a bounded drain at shutdown) either way.
//!
//! Clients are not asked for a certificate: this port is for curl users, Prometheus and
//! kubelet probes (kubelet's HTTPS probes skip verification, so a self-signed cluster
//! certificate works in Kubernetes). Mutual TLS stays on the internode port.
//!
//! One task per connection: TCP accept (past the cap, a `503` and a close), TLS handshake (bounded by
//! [`HANDSHAKE_TIMEOUT`]), then hyper serving HTTP/1.1 or HTTP/2 (chosen by ALPN or by
//! the request preface). A failed handshake or a broken connection is logged at debug
//! and ends that connection only (a protocol error ends one connection, not the
//! server). Shutdown stops accepting, asks open connections to finish their in-flight
//! requests and close, and waits for them at most the drain bound.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

use crate::log_gate::LogGate;
use crate::metrics::Metrics;
use tokio_rustls::TlsAcceptor;

use super::limits::HANDSHAKE_TIMEOUT;
use super::tls_reload::{HttpsError, ReloadingCert};
use tokio_rustls::rustls::{self, ServerConfig};

/// Pause after a failed `accept` (out of file descriptors, say), so a persistent
/// failure does not spin the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The HTTP API's TLS settings from the node's certificate chain and private key
/// (PEM bytes, with the files they came from for error messages). No client
/// certificate is requested; ALPN offers `h2` and `http/1.1`.
///
/// # Errors
/// A file is not PEM, the certificate file holds no certificate, or the key does not
/// fit the certificate; each error names its file.
pub fn server_config(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<Arc<ServerConfig>, HttpsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = ReloadingCert::new(
        cert_pem,
        cert_path,
        key_pem,
        key_path,
        Arc::clone(&provider),
    )?;
    reloading_server_config(Arc::new(cert), provider)
}

/// [`server_config`] serving whatever `cert` holds at each handshake, so a reloaded
/// certificate takes effect without a restart.
///
/// # Errors
/// rustls refuses the protocol versions of `provider`.
pub fn reloading_server_config(
    cert: Arc<ReloadingCert>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<ServerConfig>, HttpsError> {
    // An explicit provider: the process-wide default is ambiguous when several crypto
    // backends are compiled in.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| HttpsError::Rejected {
            cert: String::new(),
            key: String::new(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Bounds on the HTTP API listener, so slow or idle clients cannot hold the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// How long open connections get to finish their requests after shutdown begins;
    /// connections still open then are dropped, so a stop always ends.
    pub drain: Duration,
    /// Most connections served at once. Past it a plain-HTTP client gets `503` with
    /// `Retry-After` and the connection is closed (a TLS client is closed), so idle or
    /// slow connections cannot use up the process's file descriptors.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, the first and each
    /// next on a kept-alive connection (slowloris, idle keep-alive).
    pub header_read_timeout: Duration,
}

impl ServeLimits {
    /// The node's limits: `drain` from its request timeout, the rest fixed.
    pub fn with_drain(drain: Duration) -> Self {
        Self {
            drain,
            max_connections: MAX_HTTP_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

/// Most HTTP API connections served at once (probes, scrapes, the status page and the
/// `/v1/kv` API share them).
pub const MAX_HTTP_CONNECTIONS: usize = 512;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What an over-the-cap plain-HTTP client reads before the connection closes.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Length: 30\r\nConnection: close\r\n\r\ntoo many connections; try again\n";

/// Most over-the-cap connections being answered `503` at once. They fit in the
/// open-files reserve ([`RESERVED_FILES`](super::limits::RESERVED_FILES)).
const MAX_REFUSALS_ANSWERED: usize = 16;

/// How long an over-the-cap connection may take to get its `503` and close.
const OVERLOADED_LINGER: Duration = Duration::from_millis(250);

/// Answers an over-the-cap client with [`OVERLOADED`] and closes. What the client sent
/// is read first (up to 64 KiB): closing a socket with unread data resets it, and the
/// reset can reach the client before the answer does.
async fn refuse_overloaded(stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(OVERLOADED).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    let mut read = 0;
    while read < 64 * 1024 {
        match stream.read(&mut sink).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(())
}

/// The HTTP listener's name in metrics.
const LISTENER: &str = "http";

/// Counts a connection in `dynamo_connections{listener="http"}` while it exists.
struct OpenConnection(Metrics);

impl OpenConnection {
    fn new(metrics: &Metrics) -> Self {
        metrics.connection_changed(LISTENER, true);
        Self(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_changed(LISTENER, false);
    }
}

/// A connection whose client must send its first bytes within a deadline.
///
/// hyper's header-read timeout starts only once the protocol is known, and the
/// HTTP/1-or-2 detection before it waits for the client's first bytes without a bound:
/// a connection that sends nothing would hold its slot forever. Once the first read
/// completes, this is a plain pass-through.
struct FirstBytesWithin<T> {
    inner: T,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Metrics,
}

impl<T> FirstBytesWithin<T> {
    fn new(inner: T, within: Duration, metrics: &Metrics) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            metrics: metrics.clone(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytesWithin<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                // Bytes or a close: either way the client is no longer silent.
                this.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                this.deadline = None;
                this.metrics.count_refused_connection(LISTENER, "silent");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing",
                )))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstBytesWithin<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves `router` on `listener`, over TLS when `tls` is given (from
/// [`server_config`]), until `shutdown` completes; then stops accepting and gives open
/// connections up to `limits.drain` to finish their requests. Connections still open
/// after that are dropped: a half-sent request cannot keep the node from stopping.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    limits: ServeLimits,
    metrics: Metrics,
) {
    metrics.set_connection_limit(LISTENER, limits.max_connections);
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS_ANSWERED));
    let at_cap = LogGate::new(super::limits::CAP_LOG_INTERVAL);
    let builder = connection_builder(&limits);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.count_refused_connection(LISTENER, "cap");
            if let Some(skipped) = at_cap.admit() {
                tracing::warn!(
                    %peer,
                    max_connections = limits.max_connections,
                    also_refused_unlogged = skipped,
                    "HTTP connection refused: the listener is at its connection cap (max-connections)"
                );
            }
            // Answering takes a file descriptor for up to the linger; past a few at
            // once the connection is just closed, or a flood of refusals would use up
            // the descriptors the cap is there to save.
            if let (None, Ok(refusing)) = (&acceptor, Arc::clone(&refusals).try_acquire_owned()) {
                let mut stream = stream;
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(OVERLOADED_LINGER, refuse_overloaded(&mut stream))
                        .await;
                    drop(refusing);
                });
            }
            continue;
        };
        // Small responses must not wait on Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "setting TCP_NODELAY");
        }
        let connection = Connection {
            acceptor: acceptor.clone(),
            builder: Arc::clone(&builder),
            service: TowerToHyperService::new(router.clone()),
            // Taken before the handshake, so a shutdown during it still reaches this
            // connection (and the drain waits for it).
            watcher: graceful.watcher(),
            open: OpenConnection::new(&metrics),
            metrics: metrics.clone(),
            header_read_timeout: limits.header_read_timeout,
        };
        tokio::spawn(async move {
            // Held until the connection ends.
            let _slot = slot;
            connection.serve(stream, peer).await;
        });
    }
    // Stop accepting before draining: new clients get a refused connection.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain) => {
            tracing::debug!(drain = ?limits.drain, "HTTP connections still open after the drain bound");
        }
    }
}

/// The HTTP/1 and HTTP/2 connection builder: a bound on how long a client may take to
/// send request headers, and pings that find HTTP/2 clients that vanished, so they stop
/// holding a slot.
fn connection_builder(limits: &ServeLimits) -> Arc<auto::Builder<TokioExecutor>> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    Arc::new(builder)
}

/// One admitted connection, with what serving it needs.
struct Connection {
    acceptor: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
    /// Counts the connection open until it is dropped.
    open: OpenConnection,
    metrics: Metrics,
    header_read_timeout: Duration,
}

impl Connection {
    /// Serves `stream` (after the TLS handshake, when there is an acceptor) until it
    /// closes or the shutdown's drain ends it.
    async fn serve(self, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
        let Self {
            acceptor,
            builder,
            service,
            watcher,
            open,
            metrics,
            header_read_timeout,
        } = self;
        let _open = open;
        let result = match acceptor {
            None => {
                let io = FirstBytesWithin::new(stream, header_read_timeout, &metrics);
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                watcher.watch(connection).await
            }
            Some(acceptor) => {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "HTTPS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "HTTPS handshake timed out");
                            return;
                        }
                    };
                let io = FirstBytesWithin::new(tls, header_read_timeout, &metrics);
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                watcher.watch(connection).await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%peer, %error, "HTTP connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    #[derive(Clone)]
    struct TestCert {
        cert: Vec<u8>,
        key: Vec<u8>,
    }

    fn self_signed() -> TestCert {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        TestCert {
            cert: cert.pem().into_bytes(),
            key: signing_key.serialize_pem().into_bytes(),
        }
    }

    fn server_tls(cert: &TestCert) -> Arc<ServerConfig> {
        server_config(
            &cert.cert,
            Path::new("node.pem"),
            &cert.key,
            Path::new("node.key"),
        )
        .unwrap()
    }

    fn connector(trusted: &TestCert) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&trusted.cert) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    /// Starts [`serve`] with a router answering `/ok` at once and `/slow` after
    /// `slow`; returns the address and the shutdown trigger.
    async fn start(
        cert: &TestCert,
        slow: Duration,
        drain: Duration,
    ) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/ok", get(|| async { "fine" })).route(
            "/slow",
            get(move || async move {
                tokio::time::sleep(slow).await;
                "late"
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Some(server_tls(cert)),
            router,
            async move {
                let _ = stopped.await;
            },
            ServeLimits::with_drain(drain),
            Metrics::new(),
        ));
        (address, stop, task)
    }

    /// One HTTP/1.1 request over TLS; the raw response text.
    async fn https_get(address: SocketAddr, trusted: &TestCert, path: &str) -> String {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector(trusted).connect(name, tcp).await.unwrap();
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    }

    #[test]
    fn bad_pem_is_an_error_naming_the_file() {
        let cert = self_signed();
        let err = server_config(
            b"not pem",
            Path::new("/etc/dynamo/node.pem"),
            &cert.key,
            Path::new("/etc/dynamo/node.key"),
        )
        .unwrap_err();
        assert!(matches!(err, HttpsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("/etc/dynamo/node.pem"), "{err}");

        let truncated = &cert.cert[..cert.cert.len() / 2];
        let err = server_config(truncated, Path::new("c.pem"), &cert.key, Path::new("k.pem"))
            .unwrap_err();
        assert!(err.to_string().starts_with("c.pem: bad pem"), "{err}");

        let err =
            server_config(&cert.cert, Path::new("c.pem"), b"", Path::new("k.pem")).unwrap_err();
        assert!(err.to_string().starts_with("k.pem: "), "{err}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_rejected() {
        let (one, other) = (self_signed(), self_signed());
        let err = server_config(
            &one.cert,
            Path::new("one.pem"),
            &other.key,
            Path::new("other.key"),
        )
        .unwrap_err();
        assert!(matches!(err, HttpsError::Rejected { .. }), "{err}");
        assert!(err.to_string().contains("other.key"), "{err}");
    }

    #[tokio::test]
    async fn serves_the_router_over_tls_and_survives_bad_clients() {
        let cert = self_signed();
        let (address, stop, task) = start(&cert, Duration::ZERO, Duration::from_secs(5)).await;
        // Plaintext and a client that distrusts the certificate: their connections fail.
        let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
        plain
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        assert!(
            connector(&self_signed()).connect(name, tcp).await.is_err(),
            "a client trusting another certificate completed the handshake"
        );
        // The server still answers well-behaved clients.
        let response = https_get(address, &cert, "/ok").await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with("fine"), "{response}");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(address).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_lets_an_in_flight_request_finish() {
        let cert = self_signed();
        let (address, stop, task) =
            start(&cert, Duration::from_millis(300), Duration::from_secs(5)).await;
        let request = tokio::spawn({
            let cert = cert.clone();
            async move { https_get(address, &cert, "/slow").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let response = request.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with("late"), "{response}");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_drain_is_bounded() {
        let cert = self_signed();
        let (address, stop, task) =
            start(&cert, Duration::from_secs(60), Duration::from_millis(200)).await;
        let _stuck = tokio::spawn({
            let cert = cert.clone();
            async move { https_get(address, &cert, "/slow").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve gives up on a stuck request after the drain bound")
            .unwrap();
    }

    /// A plain-HTTP listener for `/ok` within `limits`.
    async fn start_plain(
        limits: ServeLimits,
    ) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/ok", get(|| async { "fine" }));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            None,
            router,
            async move {
                let _ = stopped.await;
            },
            limits,
            Metrics::new(),
        ));
        (address, stop, task)
    }

    /// Sends `request` on a fresh connection and reads until the server closes it.
    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
            .await
            .expect("the server answers and closes within 10 s")
            .unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    }

    const GET_OK: &[u8] = b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn past_the_connection_cap_a_client_gets_503_and_the_held_ones_keep_working() {
        let limits = ServeLimits {
            max_connections: 2,
            ..ServeLimits::with_drain(Duration::from_secs(1))
        };
        let (address, stop, task) = start_plain(limits).await;
        // Two idle connections hold both slots (the server has accepted them once a
        // request on a third is answered with the cap's 503).
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        let refused = exchange(address, GET_OK).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("Retry-After: 1"), "{refused}");
        // A held connection still serves.
        let mut first = held.remove(0);
        first.write_all(GET_OK).await.unwrap();
        let mut raw = Vec::new();
        first.read_to_end(&mut raw).await.unwrap();
        assert!(String::from_utf8_lossy(&raw).contains("fine"));
        // Its slot is free again once it closed: a new client is served.
        drop(first);
        // The closed connection's task ends asynchronously: poll, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut served = exchange(address, GET_OK).await;
        while !served.contains("fine") && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            served = exchange(address, GET_OK).await;
        }
        assert!(
            served.contains("fine"),
            "no slot freed within 10 s: {served}"
        );
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_too_slow_to_send_its_headers_is_cut_off() {
        let limits = ServeLimits {
            header_read_timeout: Duration::from_millis(300),
            ..ServeLimits::with_drain(Duration::from_secs(1))
        };
        let (address, stop, task) = start_plain(limits).await;
        // A slowloris: half a request line, then nothing. The server closes it (with or
        // without a 408) instead of holding it.
        let answer = exchange(address, b"GET /ok HTTP/1.1\r\nHost: x\r\n").await;
        assert!(!answer.contains("fine"), "{answer}");
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_half_sent_request_does_not_hold_the_shutdown() {
        let limits = ServeLimits {
            // Long enough that only the drain bound can end this test in time.
            header_read_timeout: Duration::from_secs(600),
            ..ServeLimits::with_drain(Duration::from_millis(300))
        };
        let (address, stop, task) = start_plain(limits).await;
        let mut partial = tokio::net::TcpStream::connect(address).await.unwrap();
        partial.write_all(b"GET /ok HTTP/1.1\r\nHo").await.unwrap();
        // The server is serving that connection once a full request on another works.
        assert!(exchange(address, GET_OK).await.contains("fine"));
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve stops within the drain bound despite the half-sent request")
            .unwrap();
    }
}
