//! TLS material that follows its files, so a rotated certificate or CA (a Kubernetes
//! Secret volume swaps its files atomically) takes effect without a restart: every new
//! TLS handshake gets the newest material, connections already open keep theirs.
//!
//! [`ReloadingCert`] is a rustls certificate resolver over the certificate chain and
//! key last read; [`ReloadingClientCa`] a client-certificate verifier over the CA last
//! read (mutual TLS on the internode port). Their `reload` reads the files again and
//! swaps them in when their contents changed and are still valid. Material that does
//! not parse, or a key that does not fit the certificate (the two files caught between
//! writes), is refused and the last good one kept; the next check tries again.
//!
//! The HTTP API and the gRPC listeners serve through them (the accept loop terminates
//! their TLS, `server::incoming`); the internode port's certificate only under a CA,
//! since without one peers pin the certificate they started with. The node's own
//! internode calls are re-dialled with the new material (`server::tls`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

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
        source: tokio_rustls::rustls::Error,
    },
    /// The CA file holds no certificate a client verifier can trust.
    #[error("{path}: not a usable CA: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
}

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

    /// The certificate chain and key served now, as the PEM they were read from (the
    /// identity the node's own internode calls present).
    #[must_use]
    pub fn pem_pair(&self) -> (Vec<u8>, Vec<u8>) {
        let current = self.current();
        (current.cert_pem.clone(), current.key_pem.clone())
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

/// The CA last read and the verifier built over it.
struct LoadedCa {
    pem: Vec<u8>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// A client-certificate verifier (mutual TLS) over the last valid CA read from a file:
/// a CA bundle extended with a new CA before the certificates are re-issued, or trimmed
/// of the old one after, applies to the next handshake.
pub struct ReloadingClientCa {
    path: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Arc<LoadedCa>>,
}

impl fmt::Debug for ReloadingClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientCa")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ReloadingClientCa {
    /// A verifier requiring a client certificate that chains to a CA in `pem`, which
    /// came from `path` (read again by [`reload`](Self::reload)).
    ///
    /// # Errors
    /// [`HttpsError`] when the file is not PEM or holds no usable CA certificate.
    pub fn new(pem: &[u8], path: &Path, provider: Arc<CryptoProvider>) -> Result<Self, HttpsError> {
        let verifier = client_verifier(pem, path, &provider)?;
        Ok(Self {
            path: path.to_owned(),
            provider,
            loaded: RwLock::new(Arc::new(LoadedCa {
                pem: pem.to_owned(),
                verifier,
            })),
        })
    }

    /// Reads the file again; verifies clients against it from the next handshake on
    /// when it changed and holds a usable CA. Returns whether the CA changed.
    ///
    /// # Errors
    /// The file cannot be read or holds no usable CA; the CA in use stays.
    pub fn reload(&self) -> Result<bool, ReloadError> {
        let pem = read(&self.path)?;
        if pem == self.current().pem {
            return Ok(false);
        }
        let verifier = client_verifier(&pem, &self.path, &self.provider)?;
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(LoadedCa { pem, verifier });
        Ok(true)
    }

    /// The CA in use, as the PEM it was read from (what the node's own internode calls
    /// trust).
    #[must_use]
    pub fn pem(&self) -> Vec<u8> {
        self.current().pem.clone()
    }

    fn current(&self) -> Arc<LoadedCa> {
        Arc::clone(
            &self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ClientCertVerifier for ReloadingClientCa {
    /// No hints: the CA may change between the hint and the check, and the node's
    /// clients hold one certificate each, so a hint would not change their choice.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, tokio_rustls::rustls::Error> {
        self.current()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.current()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.current()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().verifier.supported_verify_schemes()
    }
}

/// A WebPKI client verifier over the CA certificates in `pem`.
fn client_verifier(
    pem: &[u8],
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, HttpsError> {
    let name = || path.display().to_string();
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate = certificate.map_err(|source| HttpsError::Pem {
            path: name(),
            source,
        })?;
        roots.add(certificate).map_err(|e| HttpsError::Ca {
            path: name(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(HttpsError::NoCertificate { path: name() });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| HttpsError::Ca {
            path: name(),
            reason: e.to_string(),
        })
}

/// A whole TLS file, its error naming it.
fn read(path: &Path) -> Result<Vec<u8>, ReloadError> {
    std::fs::read(path).map_err(|source| ReloadError::Read {
        path: path.display().to_string(),
        source,
    })
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

    /// A CA and a client certificate it issued (DER).
    fn ca_and_client(name: &str) -> (String, Vec<u8>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec![format!("{name}.test")]).unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let client = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (ca.pem(), client.der().to_vec())
    }

    #[test]
    fn a_changed_ca_verifies_the_next_client_and_a_bad_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let (old_ca, old_client) = ca_and_client("old");
        let (new_ca, new_client) = ca_and_client("new");
        std::fs::write(&path, &old_ca).unwrap();
        let verifier =
            ReloadingClientCa::new(old_ca.as_bytes(), &path, Arc::new(default_provider())).unwrap();
        let accepts = |der: &[u8]| {
            verifier
                .verify_client_cert(&CertificateDer::from(der.to_vec()), &[], UnixTime::now())
                .is_ok()
        };
        assert!(accepts(&old_client));
        assert!(!accepts(&new_client));
        assert!(!verifier.reload().unwrap());

        // The bundle step of a CA rotation: both CAs trusted.
        std::fs::write(&path, format!("{old_ca}{new_ca}")).unwrap();
        assert!(verifier.reload().unwrap());
        assert!(accepts(&old_client) && accepts(&new_client));

        // The old CA dropped.
        std::fs::write(&path, &new_ca).unwrap();
        assert!(verifier.reload().unwrap());
        assert!(!accepts(&old_client));
        assert!(accepts(&new_client));
        assert_eq!(verifier.pem(), new_ca.as_bytes());

        // A file caught mid-write, then an empty one: refused, the last CA kept.
        std::fs::write(&path, &new_ca[..new_ca.len() / 2]).unwrap();
        assert!(verifier.reload().is_err());
        std::fs::write(&path, "").unwrap();
        let error = verifier.reload().unwrap_err();
        assert!(error.to_string().contains("ca.crt"), "{error}");
        assert!(accepts(&new_client));
        assert!(!accepts(&old_client));
    }

    #[test]
    fn a_file_without_a_ca_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let error = ReloadingClientCa::new(b"", &path, Arc::new(default_provider())).unwrap_err();
        assert!(matches!(error, HttpsError::NoCertificate { .. }), "{error}");
    }
}
