//! A server certificate that follows its files, so a rotated certificate (a Kubernetes
//! Secret volume swaps its files atomically) is served without a restart: every new
//! TLS handshake gets the newest certificate, connections already open keep theirs.
//!
//! [`ReloadingCert`] is a rustls certificate resolver over the certificate chain and
//! key last read; [`ReloadingCert::reload`] reads the files again and swaps them in when
//! their contents changed and they still form a valid pair. A pair that does not parse
//! or whose key does not fit the certificate (the two files caught between writes) is
//! refused and the last good one kept; the next check tries again.
//!
//! The HTTP API and the gRPC listeners serve through it (the accept loop terminates
//! their TLS, `server::incoming`); the internode port only under a CA, since without one
//! peers pin the certificate they started with. The CA that verifies internode clients
//! and the identity the node presents on its own internode calls stay what they were at
//! start (operator README, Next).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::https::HttpsError;

/// The certificate and key served, and the file contents they came from.
struct Loaded {
    key: Arc<CertifiedKey>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

/// A certificate resolver that serves the last valid pair read from two files.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Arc<Loaded>>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// A resolver over `cert_pem` and `key_pem`, which came from `cert_path` and
    /// `key_path` (read again by [`reload`](Self::reload)).
    ///
    /// # Errors
    /// [`HttpsError`] when a file is not PEM, holds no certificate, or the key does not
    /// fit the certificate; each error names its file.
    pub fn new(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, HttpsError> {
        let key = certified_key(cert_pem, cert_path, key_pem, key_path, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            loaded: RwLock::new(Arc::new(Loaded {
                key: Arc::new(key),
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            })),
        })
    }

    /// Reads both files again; serves them from the next handshake on when they changed
    /// and form a valid pair. Returns whether the certificate changed.
    ///
    /// # Errors
    /// A file cannot be read or the pair is not valid; the certificate served stays.
    pub fn reload(&self) -> Result<bool, ReloadError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ReloadError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        let current = self.current();
        if cert_pem == current.cert_pem && key_pem == current.key_pem {
            return Ok(false);
        }
        let key = certified_key(
            &cert_pem,
            &self.cert_path,
            &key_pem,
            &self.key_path,
            &self.provider,
        )?;
        let next = Arc::new(Loaded {
            key: Arc::new(key),
            cert_pem,
            key_pem,
        });
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(true)
    }

    /// The end-entity certificate served now (DER).
    #[must_use]
    pub fn served_certificate(&self) -> Option<CertificateDer<'static>> {
        self.current().key.cert.first().cloned()
    }

    fn current(&self) -> Arc<Loaded> {
        // A panic while swapping leaves either the old or the new pair: both valid.
        Arc::clone(
            &self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().key))
    }
}

/// Why a reload kept the certificate it had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The files do not form a valid pair (yet).
    #[error(transparent)]
    Invalid(#[from] HttpsError),
}

/// The chain and key in `cert_pem` and `key_pem`, the key checked against the chain's
/// first certificate.
fn certified_key(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, HttpsError> {
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
    CertifiedKey::from_der(chain, key, provider).map_err(|source| HttpsError::Rejected {
        cert: cert_name(),
        key: key_name(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::crypto::ring::default_provider;

    struct Pair {
        cert: String,
        key: String,
        der: Vec<u8>,
    }

    fn generate(name: &str) -> Pair {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        Pair {
            cert: generated.cert.pem(),
            key: generated.signing_key.serialize_pem(),
            der: generated.cert.der().to_vec(),
        }
    }

    #[test]
    fn a_changed_pair_is_served_a_bad_one_is_refused_and_the_last_good_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let first = generate("first.test");
        std::fs::write(&cert_path, &first.cert).unwrap();
        std::fs::write(&key_path, &first.key).unwrap();
        let resolver = ReloadingCert::new(
            first.cert.as_bytes(),
            &cert_path,
            first.key.as_bytes(),
            &key_path,
            Arc::new(default_provider()),
        )
        .unwrap();
        assert_eq!(resolver.served_certificate().unwrap().as_ref(), first.der);
        // Unchanged files: nothing to do.
        assert!(!resolver.reload().unwrap());

        // Caught between writes: the new certificate with the old key.
        let second = generate("second.test");
        std::fs::write(&cert_path, &second.cert).unwrap();
        let error = resolver.reload().unwrap_err();
        assert!(
            matches!(error, ReloadError::Invalid(HttpsError::Rejected { .. })),
            "{error}"
        );
        assert_eq!(resolver.served_certificate().unwrap().as_ref(), first.der);

        // Both written: the new pair is served.
        std::fs::write(&key_path, &second.key).unwrap();
        assert!(resolver.reload().unwrap());
        assert_eq!(resolver.served_certificate().unwrap().as_ref(), second.der);

        // A file gone (a Secret being rewritten): an error naming it, nothing changes.
        std::fs::remove_file(&key_path).unwrap();
        let error = resolver.reload().unwrap_err();
        assert!(error.to_string().contains("tls.key"), "{error}");
        assert_eq!(resolver.served_certificate().unwrap().as_ref(), second.der);
    }
}
