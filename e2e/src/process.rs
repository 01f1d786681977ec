//! One `dynamo-node` process: started on an address of the test's choosing (loopback,
//! or inside a network namespace), with ports the OS picks on first start and keeps on
//! restart, and the faults a test injects into it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::WAIT;
use crate::netns::Host;

/// The bound on one readiness probe (Kubernetes' default probe timeout).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The `dynamo-node` binary: `$DYNAMO_NODE_BIN`, or the one cargo built next to this
/// test binary (`target/<profile>/dynamo-node`; `cargo test --workspace` builds it).
///
/// # Panics
/// When there is none, saying how to build it.
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DYNAMO_NODE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test binary> -> target/<profile>/dynamo-node
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir.join("dynamo-node");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p dynamo-node` (or `cargo test --workspace`), or \
         set DYNAMO_NODE_BIN",
        binary.display()
    );
    binary
}

/// The cluster secret every node the harness starts shares, unless the test passes
/// its own `--internode-token-file` or `--insecure-internode`: tests run nodes the way
/// production does, with internode authentication on.
pub const TEST_INTERNODE_TOKEN: &str = "e2e-cluster-secret-0123456789abcdef";

/// A node process and what the test needs to reach and hurt it.
#[derive(Debug)]
pub struct NodeProcess {
    /// The node id.
    pub id: String,
    /// The namespace it runs in, if any.
    pub host: Option<Host>,
    /// The client API (`Kv`) address.
    pub client: SocketAddr,
    /// The internode (`Replica`, `Admin`) address.
    pub internode: SocketAddr,
    /// The HTTP address (`/metrics`, `/healthz`, `/readyz`); the unbound port-0
    /// address when started without HTTP (see [`NodeProcess::http_address`]).
    pub http: SocketAddr,
    /// Whether the node serves HTTP.
    http_enabled: bool,
    data_dir: PathBuf,
    /// Where [`TEST_INTERNODE_TOKEN`] is written before each start (beside the data
    /// dir, so wiping the data keeps it); `None` when the test chose its own setting.
    token_file: Option<PathBuf>,
    args: Vec<String>,
    open_files_limit: Option<u32>,
    child: Option<Child>,
}

/// Where and how to start a node, beyond its id and data directory.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The namespace to run in, if any.
    pub host: Option<Host>,
    /// The client API's listen address (port 0: the OS picks, kept on restart).
    pub client_listen: SocketAddr,
    /// The internode API's listen address.
    pub internode_listen: SocketAddr,
    /// The HTTP API's listen address; `None` runs the node without HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Seed nodes' internode addresses.
    pub seeds: Vec<SocketAddr>,
    /// More flags (a 100 ms gossip interval is added unless they set one).
    pub extra: Vec<String>,
    /// Runs the node under `ulimit -n` this many open files (the node raises its soft
    /// limit to the hard one; this sets both).
    pub open_files_limit: Option<u32>,
}

impl NodeOptions {
    /// Every listener on `ip` with an OS-chosen port, HTTP included; no seeds, no
    /// extra flags, no namespace.
    pub fn on(ip: IpAddr) -> Self {
        Self {
            host: None,
            client_listen: SocketAddr::new(ip, 0),
            internode_listen: SocketAddr::new(ip, 0),
            http_listen: Some(SocketAddr::new(ip, 0)),
            seeds: Vec::new(),
            extra: Vec::new(),
            open_files_limit: None,
        }
    }
}

impl NodeProcess {
    /// Starts a node listening on `ip` (ports chosen by the OS) with its data in
    /// `data_dir`, seeded with `seeds`, plus `extra` flags (a 100 ms gossip interval
    /// unless they set one); inside `host`'s namespace when given.
    pub async fn start(
        id: &str,
        ip: IpAddr,
        host: Option<Host>,
        data_dir: PathBuf,
        seeds: &[SocketAddr],
        extra: &[String],
    ) -> NodeProcess {
        let options = NodeOptions {
            host,
            seeds: seeds.to_vec(),
            extra: extra.to_vec(),
            ..NodeOptions::on(ip)
        };
        Self::start_with(id, data_dir, options).await
    }

    /// Starts a node as `options` say, with its data in `data_dir`.
    pub async fn start_with(id: &str, data_dir: PathBuf, options: NodeOptions) -> NodeProcess {
        let NodeOptions {
            host,
            client_listen,
            internode_listen,
            http_listen,
            seeds,
            extra,
            open_files_limit,
        } = options;
        let mut args: Vec<String> = vec!["--node-id".into(), id.into()];
        // Quick gossip, so membership changes spread fast, unless the test chose.
        if !extra.iter().any(|flag| flag == "--gossip-interval") {
            args.extend(["--gossip-interval".into(), "100ms".into()]);
        }
        args.extend(["--request-timeout".into(), "1s".into()]);
        // Quiet nodes unless the test chose a filter; DYNAMO_E2E_LOG sets one for every
        // node of a run being debugged (e.g. `dynamo_node::handoff=debug,warn`).
        if !extra.iter().any(|flag| flag == "--log") {
            let filter = std::env::var("DYNAMO_E2E_LOG").unwrap_or_else(|_| "warn".into());
            args.extend(["--log".into(), filter]);
        }
        if !seeds.is_empty() {
            let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
            args.extend(["--seeds".into(), seeds.join(",")]);
        }
        let chose_internode_auth = extra.iter().any(|flag| {
            flag.starts_with("--internode-token-file") || flag.starts_with("--insecure-internode")
        });
        let token_file = (!chose_internode_auth).then(|| {
            let mut name = data_dir.file_name().unwrap_or_default().to_owned();
            name.push(".internode-token");
            data_dir.with_file_name(name)
        });
        if let Some(file) = &token_file {
            args.extend(["--internode-token-file".into(), file.display().to_string()]);
        }
        args.extend(extra.iter().cloned());
        let mut node = NodeProcess {
            id: id.into(),
            host,
            client: client_listen,
            internode: internode_listen,
            http: http_listen.unwrap_or_else(|| SocketAddr::new(client_listen.ip(), 0)),
            http_enabled: http_listen.is_some(),
            data_dir,
            token_file,
            args,
            open_files_limit,
            child: None,
        };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        if let Some(file) = &self.token_file {
            std::fs::write(file, format!("{TEST_INTERNODE_TOKEN}\n"))
                .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        }
        let binary = node_binary();
        // The program and its leading arguments: the node, inside `sh` when the test
        // limits its open files, inside `ip netns exec` when it runs in a namespace.
        let mut program: Vec<std::ffi::OsString> = Vec::new();
        if let Some(host) = &self.host {
            program.extend(["ip", "netns", "exec", host.namespace.as_str()].map(Into::into));
        }
        if let Some(limit) = self.open_files_limit {
            program.extend(
                [
                    "sh".to_owned(),
                    "-c".to_owned(),
                    format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                ]
                .map(Into::into),
            );
        }
        program.push(binary.into_os_string());
        let mut command = Command::new(&program[0]);
        command.args(&program[1..]);
        command
            .args(&self.args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.client.to_string())
            .arg("--internode-listen")
            .arg(self.internode.to_string());
        if self.http_enabled {
            command.arg("--http-listen").arg(self.http.to_string());
        }
        command
            // No DYNAMO_* settings from the environment running the tests.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawning dynamo-node");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{} did not announce its ports within {WAIT:?}", self.id))
            .expect("reading node stdout")
            .unwrap_or_else(|| panic!("{} exited before it was ready", self.id));
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name))
                .and_then(|address| address.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in ready line {line:?}"))
        };
        self.client = field("client=");
        self.internode = field("internode=");
        if self.http_enabled {
            self.http = field("http=");
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// The HTTP address, if the node serves HTTP.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_enabled.then_some(self.http)
    }

    /// Whether the process is running (not killed by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> rustix::process::Pid {
        let raw = self
            .child
            .as_ref()
            .and_then(Child::id)
            .unwrap_or_else(|| panic!("{} is not running", self.id));
        rustix::process::Pid::from_raw(raw as i32).expect("a child's pid is positive")
    }

    /// SIGKILL: no flush, no goodbye; waits until the process is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("killing node");
        }
    }

    /// SIGTERM, as Kubernetes stops a pod, and waits (bounded by [`WAIT`]) for the node to
    /// drain and exit.
    ///
    /// # Panics
    /// When the node does not exit in time, or exits with a failure status.
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let raw = child.id().expect("a running child has a pid");
        let pid = rustix::process::Pid::from_raw(raw as i32).expect("a child's pid is positive");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {WAIT:?} of SIGTERM", self.id))
            .expect("waiting for node");
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM",
            self.id
        );
    }

    /// Deletes the data directory of a stopped node: its volume deleted with its pod.
    ///
    /// # Panics
    /// When the node still runs.
    pub fn delete_data(&self) {
        assert!(
            self.child.is_none(),
            "deleting the data of running node {}",
            self.id
        );
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir).expect("deleting the data dir");
        }
    }

    /// Whether `GET /readyz` answers 200, as a Kubernetes readiness probe asks (the node
    /// says ready only while it is in the ring). `Err` when the probe gets no answer
    /// within [`PROBE_TIMEOUT`].
    pub async fn ready(&self) -> Result<bool, String> {
        self.http_get("/readyz")
            .await
            .map(|(status, _)| status == http::StatusCode::OK)
    }

    /// The value of the unlabelled `series` in the node's `GET /metrics` (say
    /// `dynamo_transfer_keys_sent_total`: counters count since the process started).
    /// `Err` without an answer within [`PROBE_TIMEOUT`] or without the series.
    pub async fn metric(&self, series: &str) -> Result<f64, String> {
        let (status, body) = self.http_get("/metrics").await?;
        if status != http::StatusCode::OK {
            return Err(format!("{}: GET /metrics answered {status}", self.id));
        }
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| format!("{}: no {series} in /metrics", self.id))
    }

    /// `GET path` on the node's HTTP port: the status and the body.
    async fn http_get(&self, path: &str) -> Result<(http::StatusCode, String), String> {
        use http_body_util::BodyExt;
        let address = self.http;
        let probe = async {
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            // Drives the connection; it ends when `sender` is dropped.
            tokio::spawn(connection);
            let request = http::Request::get(path)
                .header(http::header::HOST, address.to_string())
                .body(String::new())
                .map_err(|e| format!("building the request: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading {path}: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .map_err(|_| format!("{}: no answer within {PROBE_TIMEOUT:?}", self.id))?
            .map_err(|e: String| format!("{} at {address}: {e}", self.id))
    }

    /// SIGSTOP: the process hangs, its sockets stay open (a stuck node).
    pub fn pause(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::STOP).expect("SIGSTOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::CONT).expect("SIGCONT");
    }

    /// SIGHUP: the node reads its TLS certificate files again.
    pub fn hangup(&self) {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::HUP).expect("SIGHUP");
    }

    /// Starts the node again on the same addresses and data directory.
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart of a running node {}",
            self.id
        );
        self.spawn().await;
    }

    /// Kills the node and deletes its data directory: a disk replaced by an empty one.
    pub async fn kill_and_wipe(&mut self) {
        self.kill().await;
        if self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir).expect("wiping the data dir");
        }
    }
}
