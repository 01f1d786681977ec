//! One self-signed certificate for `localhost` and `127.0.0.1`, written to a temporary
//! directory, that a node serves and requires of its clients (mutual TLS), and that the
//! operator presents from its Secret.

use dynamo_operator::admin::AdminTls;

/// The certificate and its key, in PEM and as files the node reads.
pub struct SelfSigned {
    /// The certificate, which is also the CA.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    cert_path: String,
    key_path: String,
    // Removed on drop, with the files.
    _dir: tempfile::TempDir,
}

impl SelfSigned {
    /// Generates the certificate and writes `tls.crt` and `tls.key`.
    pub fn generate() -> Self {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("self-signed certificate");
        let (cert_pem, key_pem) = (cert.pem(), signing_key.serialize_pem());
        let dir = tempfile::tempdir().expect("temporary directory");
        let cert_path = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert_path, &cert_pem).expect("write tls.crt");
        std::fs::write(&key_path, &key_pem).expect("write tls.key");
        Self {
            cert_pem,
            key_pem,
            cert_path: cert_path.to_str().expect("UTF-8 path").to_owned(),
            key_path: key_path.to_str().expect("UTF-8 path").to_owned(),
            _dir: dir,
        }
    }

    /// The node flags that serve this certificate and require it of clients.
    pub fn node_args(&self) -> [&str; 6] {
        [
            "--tls-cert",
            &self.cert_path,
            "--tls-key",
            &self.key_path,
            "--tls-ca",
            &self.cert_path,
        ]
    }

    /// What the operator presents: this certificate as the CA and as its identity.
    pub fn admin_tls(&self) -> AdminTls {
        AdminTls {
            ca_pem: self.cert_pem.clone().into_bytes(),
            identity: Some((
                self.cert_pem.clone().into_bytes(),
                self.key_pem.clone().into_bytes(),
            )),
        }
    }
}
