//! The node's TLS: the material read from `tls-cert`, `tls-key` and `tls-ca`, the
//! listeners' rustls settings built over it, the settings of the node's own internode
//! calls, and the watcher that reads the files again so a rotated Secret takes effect
//! without a restart.
//!
//! Every listener serves TLS with the node's certificate (the HTTP API through
//! [`https`](crate::server::https), without asking clients for a certificate). Internode
//! calls verify the peer against `tls-ca`, or, without a CA, against the node's own
//! certificate (a cluster sharing one self-signed certificate). With a CA, the internode
//! listener also requires peers (and admin tools) to present a certificate signed by it
//! (mutual TLS); the client API never asks clients for one.
//!
//! What follows the files, and why:
//! * The certificate served on the HTTP API and the client port: always.
//! * With a CA (mutual TLS): the internode port's certificate, the CA that verifies its
//!   callers, and the CA and identity of the node's own internode calls (the transport
//!   re-dials its peers with them). A CA rotation is done in three Secret updates, each
//!   reaching every node before the next: add the new CA to `ca.crt`, re-issue the
//!   certificates from it, drop the old CA. A certificate re-issued by the same CA (the
//!   usual renewal) is one update.
//! * Without a CA the internode port and internode calls keep the certificate the node
//!   started with: peers pin it, so a node serving or presenting a new one would fail
//!   every internode call until all had restarted.
//! * The name a `Replica` caller must carry under mutual TLS is fixed at start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::TlsConfig;
use crate::metrics::Metrics;
use crate::server::tls_reload::HttpsError;
use crate::server::tls_reload::{ReloadError, ReloadingCert, ReloadingClientCa};
use crate::transport::GrpcTransport;
use crate::transport::auth::certificate_names;

/// Why the node's TLS material could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The files do not form valid TLS material.
    #[error("TLS: {0}")]
    Invalid(#[from] HttpsError),
    /// rustls refused the settings.
    #[error("TLS: {0}")]
    Rustls(#[from] tokio_rustls::rustls::Error),
    /// Under mutual TLS without `tls-node-name`, the certificate names nothing to use.
    #[error("{path}: cannot take tls-node-name from the certificate: {reason}")]
    NodeName {
        /// The certificate file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// The node's TLS material and the listeners' settings over it.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The HTTP API's TLS settings, built here so a bad PEM fails the start.
    pub https: Arc<ServerConfig>,
    /// The client API's (gRPC): the same certificate, ALPN `h2`.
    pub client_grpc: Arc<ServerConfig>,
    /// The internode API's: under mutual TLS the same certificate and a client
    /// certificate signed by the CA required; without a CA the certificate at start.
    pub internode_grpc: Arc<ServerConfig>,
    /// Under mutual TLS, the name a `Replica` caller's certificate must carry.
    pub node_name: Option<String>,
    /// What is read again when the files change.
    files: TlsFiles,
}

/// The material that follows its files, and what the node's internode calls use.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate the listeners serve (the internode one only under a CA).
    cert: Arc<ReloadingCert>,
    /// Under mutual TLS, the CA; `None` pins the certificate at start.
    ca: Option<Arc<ReloadingClientCa>>,
    /// The certificate and key at start: without a CA, what internode calls trust and
    /// present for the node's whole life.
    pinned: (Vec<u8>, Vec<u8>),
}

impl TlsMaterial {
    /// Reads the files `tls` names and builds every listener's settings.
    ///
    /// # Errors
    /// [`TlsSetupError`] when a file cannot be read or the material is not valid; each
    /// error names its file.
    pub async fn load(tls: &TlsConfig) -> Result<Self, TlsSetupError> {
        let read = |path: std::path::PathBuf| async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| TlsSetupError::Read {
                    path: path.display().to_string(),
                    source,
                })
        };
        let cert = read(tls.cert.clone()).await?;
        let key = read(tls.key.clone()).await?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let reloading_cert = || {
            ReloadingCert::new(&cert, &tls.cert, &key, &tls.key, Arc::clone(&provider))
                .map(Arc::new)
        };
        let served = reloading_cert()?;
        let https = crate::server::https::reloading_server_config(
            Arc::clone(&served),
            Arc::clone(&provider),
        )?;
        let client_grpc = grpc_server_tls(&served, &provider, None)?;
        let (ca, internode_grpc) = match &tls.ca {
            Some(path) => {
                let pem = read(path.clone()).await?;
                let ca = Arc::new(ReloadingClientCa::new(&pem, path, Arc::clone(&provider))?);
                let verifier = Arc::clone(&ca) as Arc<dyn ClientCertVerifier>;
                let internode = grpc_server_tls(&served, &provider, Some(verifier))?;
                (Some(ca), internode)
            }
            // A resolver of its own that is never reloaded: the pinned certificate.
            None => (None, grpc_server_tls(&reloading_cert()?, &provider, None)?),
        };
        let node_name = match (&tls.node_name, &ca) {
            (_, None) => None,
            (Some(name), Some(_)) => Some(name.clone()),
            (None, Some(_)) => Some(own_node_name(&cert, &tls.cert)?),
        };
        Ok(Self {
            https,
            client_grpc,
            internode_grpc,
            node_name,
            files: TlsFiles {
                cert: served,
                ca,
                pinned: (cert, key),
            },
        })
    }

    /// The files to watch, and the internode client settings built over them.
    pub fn files(&self) -> TlsFiles {
        self.files.clone()
    }
}

/// What a reload found.
#[derive(Debug)]
pub struct Reloaded {
    /// Whether anything read differs from what was in use (and was swapped in).
    pub changed: bool,
    /// The new settings for the node's own internode calls, when they changed.
    pub internode_client: Option<ClientTlsConfig>,
    /// The first file refused (unreadable or not valid); the material in use for it
    /// stays, and what else changed is still applied.
    pub refused: Option<ReloadError>,
}

impl TlsFiles {
    /// The settings the node's own internode calls use now: under mutual TLS the CA and
    /// the certificate last read, otherwise the certificate at start, trusted and
    /// presented.
    pub fn internode_client(&self) -> ClientTlsConfig {
        let (trust, (cert, key)) = match &self.ca {
            Some(ca) => (ca.pem(), self.cert.pem_pair()),
            None => (self.pinned.0.clone(), self.pinned.clone()),
        };
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(trust))
            .identity(Identity::from_pem(cert, key))
    }

    /// Reads the files again and swaps in what changed and is valid. The certificate
    /// and the CA are each tried even when the other is refused.
    pub fn reload(&self) -> Reloaded {
        let cert = self.cert.reload();
        let ca = self.ca.as_ref().map(|ca| ca.reload()).unwrap_or(Ok(false));
        let changed = matches!(cert, Ok(true)) || matches!(ca, Ok(true));
        // Without a CA, internode calls keep the pinned certificate whatever changed.
        let internode_client = (changed && self.ca.is_some()).then(|| self.internode_client());
        Reloaded {
            changed,
            internode_client,
            refused: cert.err().or(ca.err()),
        }
    }
}

/// TLS settings of a gRPC listener: the node's (reloading) certificate, ALPN `h2`, and
/// with `client_verifier` a client certificate it accepts required (mutual TLS).
fn grpc_server_tls(
    cert: &Arc<ReloadingCert>,
    provider: &Arc<CryptoProvider>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_cert_resolver(Arc::clone(cert) as _);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The default node name under mutual TLS: the first name (DNS name, else common name)
/// of the node's own certificate, which every node shares when the cluster shares one
/// certificate, or which per-node certificates share as a common SAN.
fn own_node_name(cert_pem: &[u8], path: &Path) -> Result<String, TlsSetupError> {
    let unreadable = |reason: String| TlsSetupError::NodeName {
        path: path.display().to_string(),
        reason,
    };
    let leaf = CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .ok_or_else(|| unreadable("no certificate".into()))?
        .map_err(|e| unreadable(e.to_string()))?;
    certificate_names(&leaf)
        .map_err(unreadable)?
        .into_iter()
        .next()
        .ok_or_else(|| unreadable("it names nothing; set tls-node-name".into()))
}

/// How often the node checks its TLS files for new material (also on SIGHUP).
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Reads the TLS files again every `every` and on SIGHUP, until shutdown. New valid
/// material serves from the next handshake on (`dynamo_tls_reloads_total{result=
/// "changed"}`), and under mutual TLS the transport re-dials its peers with it; material
/// that is not valid yet (files caught mid-rotation) keeps what is in use and is logged
/// (`result="refused"`).
pub async fn watch_tls_files(
    files: TlsFiles,
    transport: Arc<GrpcTransport>,
    every: Duration,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let refusals = crate::log_gate::LogGate::new(Duration::from_secs(60));
    let stop = crate::shutdown::wait_for(shutdown);
    tokio::pin!(stop);
    loop {
        #[cfg(unix)]
        let hung_up = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hung_up = std::future::pending::<()>();
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
            () = hung_up => {}
        }
        let reload = files.clone();
        let reloaded = match tokio::task::spawn_blocking(move || reload.reload()).await {
            Ok(reloaded) => reloaded,
            Err(error) => {
                tracing::warn!(%error, "TLS reload task failed");
                continue;
            }
        };
        if let Some(client) = reloaded.internode_client {
            transport.set_tls(client);
        }
        if reloaded.changed {
            metrics.count_tls_reload("changed");
            tracing::info!("TLS material reloaded");
        }
        if let Some(error) = reloaded.refused {
            metrics.count_tls_reload("refused");
            if let Some(held_back) = refusals.admit() {
                tracing::warn!(%error, held_back, "TLS material not reloaded; keeping what is in use");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a fresh self-signed pair for `name` to `dir`/tls.crt and tls.key.
    fn write_pair(dir: &Path, name: &str) {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        std::fs::write(dir.join("tls.crt"), generated.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), generated.signing_key.serialize_pem()).unwrap();
    }

    fn config(dir: &Path, ca: bool) -> TlsConfig {
        TlsConfig {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            // The node's own self-signed certificate as the CA: enough for mutual TLS.
            ca: ca.then(|| dir.join("tls.crt")),
            node_name: None,
        }
    }

    #[tokio::test]
    async fn without_a_ca_internode_calls_keep_the_certificate_peers_pinned() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "first.test");
        let material = TlsMaterial::load(&config(dir.path(), false)).await.unwrap();
        assert_eq!(material.node_name, None);
        write_pair(dir.path(), "second.test");
        let reloaded = material.files().reload();
        assert!(reloaded.changed, "the served certificate follows the files");
        assert!(reloaded.refused.is_none());
        assert!(reloaded.internode_client.is_none());
    }

    #[tokio::test]
    async fn with_a_ca_internode_calls_follow_the_files_and_a_refusal_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "first.test");
        let material = TlsMaterial::load(&config(dir.path(), true)).await.unwrap();
        assert_eq!(material.node_name.as_deref(), Some("first.test"));
        let files = material.files();
        let unchanged = files.reload();
        assert!(!unchanged.changed && unchanged.internode_client.is_none());

        write_pair(dir.path(), "second.test");
        let reloaded = files.reload();
        assert!(reloaded.changed);
        assert!(reloaded.internode_client.is_some());
        assert!(reloaded.refused.is_none(), "{:?}", reloaded.refused);

        // The key vanishes mid-rotation: refused and reported, nothing changes.
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        let refused = files.reload();
        assert!(!refused.changed && refused.internode_client.is_none());
        let error = refused.refused.expect("a refusal");
        assert!(error.to_string().contains("tls.key"), "{error}");
    }

    #[tokio::test]
    async fn material_that_is_not_valid_fails_the_start_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "first.test");
        std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
        let mut bad_ca = config(dir.path(), true);
        bad_ca.ca = Some(dir.path().join("ca.crt"));
        let error = TlsMaterial::load(&bad_ca).await.unwrap_err();
        assert!(error.to_string().contains("ca.crt"), "{error}");
        let mut missing = config(dir.path(), false);
        missing.key = dir.path().join("absent.key");
        let error = TlsMaterial::load(&missing).await.unwrap_err();
        assert!(
            matches!(&error, TlsSetupError::Read { path, .. } if path.ends_with("absent.key")),
            "{error}"
        );
    }
}
