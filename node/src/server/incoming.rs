//! The gRPC listeners' accept loop (I/O shell): the connections tonic serves, within a
//! connection cap, each having sent its first bytes within the client read timeout.
//!
//! tonic serves whatever stream of connections it is given and bounds neither how many
//! nor how quiet they are. Here a connection past the cap is closed at once (the client
//! sees the connection refused and retries elsewhere or later), and one that sends
//! nothing (no HTTP/2 preface, no TLS hello) within the timeout is closed, so idle
//! sockets cannot pile up until the process runs out of file descriptors and every
//! listener, probes included, stops answering. Connections that did speak are then
//! kept in check by HTTP/2 keepalive pings (see the node's server settings).
//!
//! Every connection is counted in `dynamo_connections{listener}` while open, and every
//! refusal in `dynamo_connections_refused_total{listener,reason}`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::limits::{CAP_LOG_INTERVAL, HANDSHAKE_TIMEOUT};
use crate::log_gate::LogGate;
use crate::metrics::Metrics;

/// Pause after a failed `accept` (out of file descriptors, say), so a persistent
/// failure does not spin the accept loop.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections accepted and waiting for tonic to take them.
const HANDOFF_QUEUE: usize = 64;

/// One listener's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a new connection may stay silent.
    pub first_bytes_timeout: Duration,
}

/// An accepted connection holding one of its listener's slots until it closes.
#[derive(Debug)]
pub struct Admitted {
    stream: Connection,
    _slot: OwnedSemaphorePermit,
    _open: OpenConnection,
}

/// The connection tonic speaks HTTP/2 over: the TCP stream, or the TLS session the
/// accept loop established on it.
#[derive(Debug)]
enum Connection {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a request knows of its connection (in its extensions): the TCP endpoints and,
/// over TLS, the certificate chain the peer presented (mutual TLS), which the internode
/// authentication checks.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The TCP endpoints.
    pub tcp: TcpConnectInfo,
    /// The peer's certificate chain, leaf first, when it presented one.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// Counts a connection in `dynamo_connections` while it exists.
#[derive(Debug)]
struct OpenConnection {
    listener: &'static str,
    metrics: Metrics,
}

impl OpenConnection {
    fn new(listener: &'static str, metrics: &Metrics) -> Self {
        metrics.connection_changed(listener, true);
        Self {
            listener,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connection_changed(self.listener, false);
    }
}

/// Accepts on `listener` (named `name` in metrics and logs) within `limits`, until the
/// returned stream is dropped (tonic drops it when the server stops), which also closes
/// the listening socket.
pub fn admitted_connections(
    listener: TcpListener,
    name: &'static str,
    limits: AcceptLimits,
    metrics: Metrics,
) -> ReceiverStream<io::Result<Admitted>> {
    admitted_tls_connections(listener, name, limits, None, metrics)
}

/// [`admitted_connections`], each over a TLS session established with `tls` (when
/// given) before tonic sees it. Terminating TLS here, not in tonic, lets the
/// certificate follow its files ([`super::tls_reload`]); a handshake that fails or does
/// not finish within [`HANDSHAKE_TIMEOUT`] closes the connection.
pub fn admitted_tls_connections(
    listener: TcpListener,
    name: &'static str,
    limits: AcceptLimits,
    tls: Option<Arc<ServerConfig>>,
    metrics: Metrics,
) -> ReceiverStream<io::Result<Admitted>> {
    let (admitted, stream) = mpsc::channel(HANDOFF_QUEUE);
    metrics.set_connection_limit(name, limits.max_connections);
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(accept_loop(
        listener, name, limits, acceptor, metrics, admitted,
    ));
    ReceiverStream::new(stream)
}

async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    limits: AcceptLimits,
    acceptor: Option<TlsAcceptor>,
    metrics: Metrics,
    admitted: mpsc::Sender<io::Result<Admitted>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let at_cap = LogGate::new(CAP_LOG_INTERVAL);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = admitted.closed() => return,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.count_refused_connection(name, "cap");
            if let Some(skipped) = at_cap.admit() {
                tracing::warn!(
                    listener = name,
                    %peer,
                    max_connections = limits.max_connections,
                    also_refused_unlogged = skipped,
                    "connection refused: the listener is at its connection cap (max-connections)"
                );
            }
            continue;
        };
        // gRPC replies are small writes; Nagle plus the peer's delayed ACK would hold
        // each back for tens of milliseconds.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(listener = name, %peer, %error, "setting TCP_NODELAY");
        }
        let open = OpenConnection::new(name, &metrics);
        let admitted = admitted.clone();
        let metrics = metrics.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A client speaks first (the HTTP/2 preface or a TLS hello). `peek` waits
            // for a byte without taking it (`readable` may report ready spuriously),
            // and also completes on a close, which tonic then sees.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.first_bytes_timeout, stream.peek(&mut first)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::debug!(listener = name, %peer, %error, "connection failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = name, %peer, "connection closed: it sent nothing");
                    metrics.count_refused_connection(name, "silent");
                    return;
                }
            }
            let stream = match acceptor {
                None => Connection::Plain(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Connection::Tls(Box::new(tls)),
                        Ok(Err(error)) => {
                            tracing::debug!(listener = name, %peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let connection = Admitted {
                stream,
                _slot: slot,
                _open: open,
            };
            // A closed channel means the server stopped: the connection just closes.
            let _ = admitted.send(Ok(connection)).await;
        });
    }
}

impl Connected for Admitted {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.stream {
            Connection::Plain(stream) => PeerInfo {
                tcp: stream.connect_info(),
                certificates: None,
            },
            Connection::Tls(tls) => {
                let (stream, session) = tls.get_ref();
                PeerInfo {
                    tcp: stream.connect_info(),
                    certificates: session.peer_certificates().map(|chain| {
                        Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect())
                    }),
                }
            }
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Connection::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Connection::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Connection::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Connection::Plain(stream) => stream.is_write_vectored(),
            Connection::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;
    use tokio_stream::StreamExt as _;

    const LIMITS: AcceptLimits = AcceptLimits {
        max_connections: 2,
        first_bytes_timeout: Duration::from_millis(200),
    };
    const WAIT: Duration = Duration::from_secs(10);

    async fn listen() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (listener, address)
    }

    async fn next(stream: &mut ReceiverStream<io::Result<Admitted>>) -> Admitted {
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a connection is handed over within 10 s")
            .expect("the stream runs")
            .expect("no error")
    }

    /// Waits (bounded) until `metric` reads `want`.
    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn gauge(metrics: &Metrics, line_start: &str) -> Option<String> {
        metrics
            .encode()
            .lines()
            .find(|line| line.starts_with(line_start))
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_a_freed_slot_admits_again() {
        let (listener, address) = listen().await;
        let metrics = Metrics::new();
        let mut admitted = admitted_connections(listener, "client", LIMITS, metrics.clone());
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(b"hello").await.unwrap();
            clients.push(client);
        }
        let first = next(&mut admitted).await;
        let _second = next(&mut admitted).await;
        // The third is closed by the node without being handed over.
        let mut third = TcpStream::connect(address).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut third, &mut byte))
            .await
            .expect("the refused connection is closed within 10 s");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed, not served: {read:?}"
        );
        until("the refusal to be counted", || {
            gauge(
                &metrics,
                "dynamo_connections_refused_total{listener=\"client\",reason=\"cap\"} 1",
            )
            .is_some()
        })
        .await;
        assert!(
            gauge(&metrics, "dynamo_connections{listener=\"client\"} 2").is_some(),
            "{}",
            metrics.encode()
        );
        drop(first);
        let mut fourth = TcpStream::connect(address).await.unwrap();
        fourth.write_all(b"hello").await.unwrap();
        let _fourth = next(&mut admitted).await;
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_timeout_and_frees_its_slot() {
        let (listener, address) = listen().await;
        let metrics = Metrics::new();
        let mut admitted = admitted_connections(listener, "internode", LIMITS, metrics.clone());
        let mut silent = TcpStream::connect(address).await.unwrap();
        let mut byte = [0u8; 1];
        let read =
            tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut silent, &mut byte))
                .await
                .expect("the silent connection is closed within 10 s");
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
        assert!(
            gauge(
                &metrics,
                "dynamo_connections_refused_total{listener=\"internode\",reason=\"silent\"} 1"
            )
            .is_some(),
            "{}",
            metrics.encode()
        );
        // Its slot is free again: two speaking clients are both admitted.
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(b"hi").await.unwrap();
            clients.push(client);
        }
        next(&mut admitted).await;
        next(&mut admitted).await;
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_listener() {
        let (listener, address) = listen().await;
        let admitted = admitted_connections(listener, "client", LIMITS, Metrics::new());
        drop(admitted);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if TcpStream::connect(address).await.is_err() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the listener still accepts 10 s after the server stopped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
