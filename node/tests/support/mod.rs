//! Test harness: real `dynamo-node` processes on loopback, driven over gRPC.
//!
//! Every node binds port 0 on first start and announces its ports on stdout; a restart
//! reuses the same ports and data dir. Waits are bounded and say what they waited for.

#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dynamo_e2e::process::{NodeOptions, NodeProcess};
use dynamo_node::proto::admin_client::AdminClient;
use dynamo_node::proto::kv_client::KvClient;
use dynamo_node::proto::{self, MemberState};
use tonic::transport::{Channel, ClientTlsConfig};

/// The arguments of a single-node cluster: N = R = W = 1.
pub const ONE_REPLICA: [&str; 6] = [
    "--replication-factor",
    "1",
    "--read-quorum",
    "1",
    "--write-quorum",
    "1",
];

/// How long any single wait may take before the test fails with a message.
pub const WAIT: Duration = Duration::from_secs(30);

/// One `dynamo-node` process, started and hurt through the fault suite's
/// [`NodeProcess`] (one harness for both suites), plus this suite's gRPC and HTTP
/// helpers.
pub struct TestNode {
    pub id: String,
    pub client: SocketAddr,
    pub internode: SocketAddr,
    /// The HTTP API, when started with `--http-listen`.
    pub http: Option<SocketAddr>,
    process: NodeProcess,
    /// TLS for this harness's own gRPC clients, when the node serves TLS.
    pub tls: Option<ClientTlsConfig>,
}

impl TestNode {
    /// Starts a node with its own data dir under `root`. A `--listen` in `extra`
    /// replaces the client listener's default `127.0.0.1:0`, an `--http-listen`
    /// starts the HTTP API there, and `--test-ulimit-n N` (the harness's own flag)
    /// runs the node under `ulimit -n N`.
    pub async fn start(
        root: &std::path::Path,
        id: &str,
        seeds: &[SocketAddr],
        extra: &[&str],
    ) -> TestNode {
        let mut options = NodeOptions {
            http_listen: None,
            seeds: seeds.to_vec(),
            ..NodeOptions::on(Ipv4Addr::LOCALHOST.into())
        };
        let mut extra = extra.iter();
        while let Some(arg) = extra.next() {
            let mut value = |flag: &str| -> SocketAddr {
                extra
                    .next()
                    .unwrap_or_else(|| panic!("{flag} takes an address"))
                    .parse()
                    .unwrap_or_else(|_| panic!("{flag} takes IP:PORT"))
            };
            match *arg {
                "--listen" => options.client_listen = value(arg),
                "--http-listen" => options.http_listen = Some(value(arg)),
                // The harness's, not the node's: run it under `ulimit -n N`.
                "--test-ulimit-n" => {
                    options.open_files_limit = Some(
                        extra
                            .next()
                            .and_then(|n| n.parse().ok())
                            .expect("--test-ulimit-n takes a count"),
                    );
                }
                _ => options.extra.push(arg.to_string()),
            }
        }
        let process = NodeProcess::start_with(id, root.join(id), options).await;
        TestNode {
            id: id.into(),
            client: process.client,
            internode: process.internode,
            http: process.http_address(),
            process,
            tls: None,
        }
    }

    /// Whether the process runs (not killed or stopped by the test).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// SIGKILL: no flush, no goodbye.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) {
        self.process.terminate().await;
    }

    /// SIGSTOP: the process hangs with its sockets open (a stuck node).
    pub fn pause(&self) {
        self.process.pause();
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.process.resume();
    }

    /// SIGHUP: the node reads its TLS certificate files again.
    pub fn hangup(&self) {
        self.process.hangup();
    }

    /// Deletes the node's data dir (a wiped or replaced volume); the node must be stopped.
    pub fn wipe(&self) {
        self.process.delete_data();
    }

    /// Starts the node again on the same ports and data dir.
    pub async fn restart(&mut self) {
        self.process.restart().await;
    }

    /// A channel to `address`, over TLS when the harness has client TLS settings.
    pub async fn channel(&self, address: SocketAddr) -> Result<Channel, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Channel::from_shared(format!("{scheme}://{address}")).expect("valid uri");
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone())?.connect().await,
            None => endpoint.connect().await,
        }
    }

    /// The client (`Kv`) address as other processes dial it: a wildcard listener is
    /// reached on loopback.
    pub fn client_dial(&self) -> SocketAddr {
        let mut address = self.client;
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        address
    }

    /// The value of an unlabelled counter or gauge on the node's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let address = self.http.expect("the node was started with --http-listen");
        let response = http(address, "GET", "/metrics", &[], b"").await;
        let text = String::from_utf8(response.body).expect("utf-8 metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in /metrics of {}", self.id))
            .trim()
            .parse()
            .expect("a number")
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel(self.client).await.expect("connecting to Kv"))
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(
            self.channel(self.internode)
                .await
                .expect("connecting to Admin"),
        )
    }
}

/// A cluster of started and joined nodes.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    _root: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `size` nodes (node 1 is every other node's seed), joins them all through
    /// node 1's Admin API, and waits until every node sees every member.
    pub async fn start(size: usize, extra: &[&str]) -> TestCluster {
        Self::start_with(size, extra, None).await
    }

    /// Like [`TestCluster::start`], with the harness talking TLS to the nodes.
    pub async fn start_with(
        size: usize,
        extra: &[&str],
        tls: Option<ClientTlsConfig>,
    ) -> TestCluster {
        Self::start_each(
            size,
            |_| extra.iter().map(|a| (*a).to_owned()).collect(),
            tls,
        )
        .await
    }

    /// Like [`TestCluster::start_with`], node `i` (from 0) started with `args(i)`.
    pub async fn start_each(
        size: usize,
        args: impl Fn(usize) -> Vec<String>,
        tls: Option<ClientTlsConfig>,
    ) -> TestCluster {
        let root = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        let first_args = args(0);
        let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
        let mut first = TestNode::start(root.path(), "n1", &[], &first_args).await;
        first.tls = tls.clone();
        let seed = first.internode;
        nodes.push(first);
        for i in 2..=size {
            let node_args = args(i - 1);
            let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
            let mut node =
                TestNode::start(root.path(), &format!("n{i}"), &[seed], &node_args).await;
            node.tls = tls.clone();
            nodes.push(node);
        }
        let mut admin = nodes[0].admin().await;
        for node in &nodes {
            admin
                .join(proto::JoinRequest {
                    node_id: node.id.clone(),
                    address: node.internode.to_string(),
                    weight: 1,
                    zone: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("joining {}: {e}", node.id));
        }
        let cluster = TestCluster { nodes, _root: root };
        cluster.wait_for_members(size).await;
        cluster
    }

    /// Waits until every running node lists `count` members in state Member.
    pub async fn wait_for_members(&self, count: usize) {
        let deadline = Instant::now() + WAIT;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let mut admin = node.admin().await;
            loop {
                let ring = admin
                    .ring(proto::RingRequest {})
                    .await
                    .expect("Admin.Ring")
                    .into_inner();
                let members = ring
                    .members
                    .iter()
                    .filter(|m| m.state == MemberState::Member as i32)
                    .count();
                if members == count {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} sees {members} members, expected {count}, after {WAIT:?}",
                    node.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Polls `check` until it returns true, failing with `what` after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A response from [`http`].
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, with its PEM files in a
/// temp dir that lives as long as this value.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCert {
    pub fn generate() -> TestCert {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("generating a certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        let cert_path = dir.path().join("node.pem");
        let key_path = dir.path().join("node.key");
        let (cert_pem, key_pem) = (cert.pem(), signing_key.serialize_pem());
        std::fs::write(&cert_path, &cert_pem).expect("writing the certificate");
        std::fs::write(&key_path, &key_pem).expect("writing the key");
        TestCert {
            cert_pem,
            key_pem,
            cert_path,
            key_path,
            _dir: dir,
        }
    }

    /// `--tls-cert` as a command-line argument.
    pub fn cert_arg(&self) -> &str {
        self.cert_path.to_str().expect("utf-8 temp path")
    }

    /// `--tls-key` as a command-line argument.
    pub fn key_arg(&self) -> &str {
        self.key_path.to_str().expect("utf-8 temp path")
    }

    /// The node flags serving TLS with this certificate, and trusting it as the CA
    /// (so peers presenting it pass mutual TLS).
    pub fn node_args(&self) -> [&str; 6] {
        [
            "--tls-cert",
            self.cert_arg(),
            "--tls-key",
            self.key_arg(),
            "--tls-ca",
            self.cert_arg(),
        ]
    }

    /// A gRPC client config trusting this certificate and presenting it (mutual TLS).
    pub fn client_tls(&self) -> ClientTlsConfig {
        use tonic::transport::{Certificate, Identity};
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), bounded by [`WAIT`].
pub async fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connecting to HTTP");
        exchange(stream, address, method, path, headers, body).await
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("HTTP request timed out");
    parse_response(&raw)
}

/// [`http`] over TLS, trusting only `trusted` (a PEM certificate).
pub async fn https(
    address: SocketAddr,
    trusted: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_https(address, trusted, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`https`], with a failed connection or TLS handshake (a certificate `trusted` does
/// not cover) as an error rather than a panic.
pub async fn try_https(
    address: SocketAddr,
    trusted: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots
            .add(cert.expect("trusted PEM"))
            .expect("a usable root");
    }
    let config = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting to HTTPS: {e}"))?;
        let name = ServerName::from(address.ip());
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with the HTTP API: {e}"))?;
        Ok::<_, String>(exchange(stream, address, method, path, headers, body).await)
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| "HTTPS request timed out".to_owned())??;
    Ok(parse_response(&raw))
}

/// Writes one request and reads the whole response.
async fn exchange<S>(
    mut stream: S,
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("writing request");
    stream.write_all(body).await.expect("writing body");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .expect("reading response");
    raw
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a header end");
    let head = String::from_utf8(raw[..split].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16)
                .expect("chunk size");
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        body = decoded;
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// A test CA and certificates it signed, as files: what an operator issues for mutual
/// TLS, including an admin client certificate from the same CA.
pub struct TestCa {
    pub ca_path: PathBuf,
    ca_pem: String,
    _dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and key a [`TestCa`] signed, with the files holding them.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl TestCa {
    pub fn generate() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dynamo test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signing the CA");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_path = dir.path().join("ca.pem");
        let ca_pem = cert.pem();
        std::fs::write(&ca_path, &ca_pem).expect("writing the CA");
        TestCa {
            ca_path,
            ca_pem,
            _dir: dir,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IPs) with common name `common_name`,
    /// valid for both TLS server and client use, written as `<file>.pem`/`<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str], common_name: &str) -> IssuedCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("certificate params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        let cert_path = self._dir.path().join(format!("{file}.pem"));
        let key_path = self._dir.path().join(format!("{file}.key"));
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        std::fs::write(&cert_path, &cert_pem).expect("writing the certificate");
        std::fs::write(&key_path, &key_pem).expect("writing the key");
        IssuedCert {
            cert_pem,
            key_pem,
            cert_path,
            key_path,
        }
    }

    /// A gRPC client config trusting this CA and presenting `identity`.
    pub fn client_tls(&self, identity: &IssuedCert) -> ClientTlsConfig {
        use tonic::transport::{Certificate, Identity};
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA file as a command-line argument.
    pub fn ca_arg(&self) -> &str {
        self.ca_path.to_str().expect("utf-8 temp path")
    }
}

impl IssuedCert {
    /// `--tls-cert PATH --tls-key PATH`.
    pub fn args(&self) -> [&str; 4] {
        [
            "--tls-cert",
            self.cert_path.to_str().expect("utf-8 temp path"),
            "--tls-key",
            self.key_path.to_str().expect("utf-8 temp path"),
        ]
    }
}
