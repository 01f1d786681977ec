//! HTTPS for the HTTP API listener (I/O shell): when the node has TLS material, the
//! [`http`](super::http) router is served over TLS with the node's certificate.
//!
//! Clients are not asked for a certificate: this port is for curl users, Prometheus and
//! kubelet probes (kubelet's HTTPS probes skip verification, so a self-signed cluster
//! certificate works in Kubernetes). Mutual TLS stays on the internode port.
//!
//! One task per connection: TCP accept, TLS handshake (bounded by
//! [`HANDSHAKE_TIMEOUT`]), then hyper serving HTTP/1.1 or HTTP/2 (chosen by ALPN or by
//! the request preface). A failed handshake or a broken connection is logged at debug
//! and ends that connection only (a protocol error ends one connection, not the
//! server). Shutdown stops accepting, asks open connections to finish their in-flight
//! requests and close, and waits for them at most the drain bound.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Bound on a client's TLS handshake: a peer that connects and stays silent must not
/// hold a task forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (out of file descriptors, say), so a persistent
/// failure does not spin the accept loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the HTTPS listener's TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpsError {
    /// A PEM file could not be parsed.
    #[error("{path}: bad pem: {source}")]
    Pem {
        /// The file.
        path: String,
        /// What the parser found.
        source: pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{path}: no certificate in pem")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// rustls refused the certificate and key (for instance, they do not match).
    #[error("certificate {cert} with key {key}: {source}")]
    Rejected {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's reason.
        source: rustls::Error,
    },
}

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
    let cert_name = || cert_path.display().to_string();
    let key_name = || key_path.display().to_string();
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HttpsError::Pem {
            path: cert_name(),
            source,
        })?;
    if chain.is_empty() {
        return Err(HttpsError::NoCertificate { path: cert_name() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| HttpsError::Pem {
        path: key_name(),
        source,
    })?;
    let rejected = |source| HttpsError::Rejected {
        cert: cert_name(),
        key: key_name(),
        source,
    };
    // An explicit provider: the process-wide default is ambiguous when several crypto
    // backends are compiled in.
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(rejected)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS (`tls`, from [`server_config`]) on `listener` until `shutdown` completes, then stops
/// accepting and gives open connections up to `drain` to finish their requests.
/// Connections still open after that are dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer lets hyper bound how long a client may take to send request headers.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "HTTPS accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses must not wait on Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "setting TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let builder = Arc::clone(&builder);
        let service = TowerToHyperService::new(router.clone());
        // Taken before the handshake, so a shutdown during it still reaches this
        // connection (and the drain waits for it).
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "HTTPS connection ended with an error");
            }
        });
    }
    // Stop accepting before draining: new clients get a refused connection.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::debug!(?drain, "HTTPS connections still open after the drain bound");
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
            server_tls(cert),
            router,
            async move {
                let _ = stopped.await;
            },
            drain,
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
}
