//! `dynamoctl dev`: a local cluster in one command.
//!
//! Starts `--nodes` `dynamo-node` processes on 127.0.0.1 with port 0 for every listener,
//! learns each one's ports from its ready line, joins them all through node 1 (Dynamo
//! §4.8.1: membership changes are explicit; node 1 joins itself too), waits until every
//! node's member table lists all of them (gossip, §4.8.2), prints the endpoints, and then
//! runs until Ctrl-C or SIGTERM, when it stops the nodes with SIGTERM (SIGKILL after a
//! bound). Each node's stdout and stderr go to `<base-dir>/<id>.log`.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::args::{DevArgs, DevStorage};
use crate::connection::{AdminTarget, BearerToken, bearer};
use crate::error::CtlError;
use crate::output::{self, print_out};
use dynamo_proto as proto;

/// How long a node gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often the member tables are polled while waiting for agreement.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What a node's ready line says: the addresses it actually bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyLine {
    /// The client (`Kv`) listener.
    pub client: SocketAddr,
    /// The internode (`Replica`, `Admin`) listener.
    pub internode: SocketAddr,
    /// The HTTP listener, when the node has one and reports it.
    pub http: Option<SocketAddr>,
}

/// Parses `dynamo-node ready client=<ip:port> internode=<ip:port> [http=<ip:port>]`;
/// `None` for any other line. Unknown `name=value` fields are ignored so the node can
/// add some.
pub fn parse_ready_line(line: &str) -> Option<ReadyLine> {
    let mut words = line.split_whitespace();
    if words.next() != Some("dynamo-node") || words.next() != Some("ready") {
        return None;
    }
    let (mut client, mut internode, mut http) = (None, None, None);
    for word in words {
        let (name, value) = word.split_once('=')?;
        let slot = match name {
            "client" => &mut client,
            "internode" => &mut internode,
            "http" => &mut http,
            _ => continue,
        };
        *slot = Some(value.parse().ok()?);
    }
    Some(ReadyLine {
        client: client?,
        internode: internode?,
        http,
    })
}

/// Everything that differs between the nodes of one dev cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeSpec {
    /// 0 for node1, 1 for node2, ...: picks the node's ports from `--base-port`.
    pub(crate) ordinal: u16,
    pub(crate) id: String,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) seed: Option<SocketAddr>,
    /// The cluster secret's file, the same for every node.
    pub(crate) internode_token_file: PathBuf,
}

/// The `dynamo-node` flags for one node of the cluster.
pub(crate) fn node_args(spec: &NodeSpec, args: &DevArgs) -> Vec<OsString> {
    let (n, r, w) = args.quorum();
    let [client, internode, http] = args
        .ports(spec.ordinal)
        .map(|port| format!("127.0.0.1:{port}"));
    let mut flags: Vec<OsString> = [
        "--node-id",
        &spec.id,
        "--listen",
        &client,
        "--internode-listen",
        &internode,
        "--http-listen",
        &http,
        "--storage",
        args.storage.flag_value(),
        "--replication-factor",
        &n.to_string(),
        "--read-quorum",
        &r.to_string(),
        "--write-quorum",
        &w.to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if let Some(dir) = &spec.data_dir {
        flags.push("--data-dir".into());
        flags.push(dir.into());
    }
    if let Some(seed) = spec.seed {
        flags.push("--seeds".into());
        flags.push(seed.to_string().into());
    }
    flags.push("--internode-token-file".into());
    flags.push(spec.internode_token_file.clone().into());
    flags
}

/// Bytes of randomness in a dev cluster's internode secret (256 bits, hex-encoded).
const INTERNODE_TOKEN_BYTES: usize = 32;

/// Writes a fresh internode secret to `base_dir/internode-token`, readable by the owner
/// only. The dev cluster listens on loopback, where a node needs no secret, but it runs
/// the way a real cluster does so what works here works there.
fn write_internode_token(base_dir: &Path) -> Result<PathBuf, CtlError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut random = [0u8; INTERNODE_TOKEN_BYTES];
    getrandom::fill(&mut random)
        .map_err(|e| CtlError::Dev(format!("no randomness for the internode secret: {e}")))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = base_dir.join("internode-token");
    let failed = |e: std::io::Error| CtlError::Dev(format!("writing {}: {e}", path.display()));
    // A secret left by an earlier run in a kept base dir is replaced, never reused.
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(failed)?;
    writeln!(file, "{token}").map_err(failed)?;
    Ok(path)
}

/// `None` when every node's member table lists every expected node, at its current
/// address, as a member; otherwise which node lacks what, for progress and timeout
/// messages. `expected` holds (id, internode address) pairs.
///
/// A node still joining does not count: reads use the settled ring (members whose data
/// is in place), so until the joins' (empty) hand-overs finish a fresh cluster has
/// fewer read replicas than R and a client's first reads fail as unavailable.
pub(crate) fn agreement_gap(
    expected: &[(String, String)],
    views: &[(String, Vec<proto::MemberInfo>)],
) -> Option<String> {
    let mut gaps = Vec::new();
    for (viewer, members) in views {
        let state_of = |id: &str, address: &str| {
            members
                .iter()
                .find(|m| m.node_id == id && m.address == address)
                .map(|m| output::state_name(m.state))
        };
        let mut missing = Vec::new();
        let mut joining = Vec::new();
        for (id, address) in expected {
            match state_of(id, address) {
                Some("member") => {}
                Some("joining") => joining.push(id.as_str()),
                _ => missing.push(id.as_str()),
            }
        }
        if !missing.is_empty() {
            gaps.push(format!("{viewer} is missing {}", missing.join(", ")));
        }
        if !joining.is_empty() {
            gaps.push(format!(
                "{viewer} sees {} still joining",
                joining.join(", ")
            ));
        }
    }
    if gaps.is_empty() && views.len() == expected.len() {
        None
    } else if gaps.is_empty() {
        Some(format!(
            "{} of {} nodes answered",
            views.len(),
            expected.len()
        ))
    } else {
        Some(gaps.join("; "))
    }
}

/// A started node.
#[derive(Debug, Clone)]
struct DevNode {
    id: String,
    ready: ReadyLine,
    log: PathBuf,
}

/// `dev --json`: where the cluster listens.
#[derive(Debug, Serialize)]
struct DevJson {
    base_dir: String,
    replication_factor: u32,
    read_quorum: u32,
    write_quorum: u32,
    nodes: Vec<DevNodeJson>,
}

#[derive(Debug, Serialize)]
struct DevNodeJson {
    id: String,
    client: String,
    admin: String,
    http: Option<String>,
    log: String,
}

/// The running nodes and the tasks that watch them.
struct Cluster {
    nodes: Vec<DevNode>,
    /// Set to true to make every supervisor stop its node.
    stop: watch::Sender<bool>,
    /// Supervisors report a node that exited on its own; kept here so the channel
    /// never closes while the cluster lives.
    exits: mpsc::UnboundedSender<(String, String)>,
    exited: mpsc::UnboundedReceiver<(String, String)>,
    supervisors: Vec<JoinHandle<()>>,
}

impl Cluster {
    fn new() -> Self {
        let (exits, exited) = mpsc::unbounded_channel();
        Self {
            nodes: Vec::new(),
            stop: watch::Sender::new(false),
            exits,
            exited,
            supervisors: Vec::new(),
        }
    }

    /// Hands a started node to a task that reports its exit or stops it on request.
    fn supervise(&mut self, node: DevNode, mut child: Child) {
        let mut stop = self.stop.subscribe();
        let exits = self.exits.clone();
        let id = node.id.clone();
        self.supervisors.push(tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    // The receiver lives as long as the cluster; a send error only
                    // means nobody is listening any more.
                    let _ = exits.send((id, status));
                }
                () = async {
                    // Err means the cluster is gone: stop too.
                    let _ = stop.wait_for(|stop| *stop).await;
                } => terminate(&mut child, &id).await,
            }
        }));
        self.nodes.push(node);
    }

    /// An error if a node has exited since the last look.
    fn check_exits(&mut self) -> Result<(), CtlError> {
        match self.exited.try_recv() {
            Ok((id, status)) => Err(self.died(&id, &status)),
            Err(_) => Ok(()),
        }
    }

    fn died(&self, id: &str, status: &str) -> CtlError {
        let log = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| log_tail(&n.log))
            .unwrap_or_default();
        CtlError::Dev(format!("{id} exited unexpectedly ({status}){log}"))
    }

    /// Runs until a signal (Ok) or until a node dies (Err).
    async fn wait(&mut self, signals: &mut Signals) -> Result<(), CtlError> {
        tokio::select! {
            () = signals.recv() => {
                eprintln!("dynamoctl: stopping the cluster");
                Ok(())
            }
            Some((id, status)) = self.exited.recv() => Err(self.died(&id, &status)),
        }
    }

    /// Stops every node (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and waits.
    async fn stop(self) {
        self.stop.send_replace(true);
        for supervisor in self.supervisors {
            // A panicked supervisor has nothing left to stop: kill_on_drop did it.
            let _ = supervisor.await;
        }
    }
}

/// SIGTERM, a bounded wait, then SIGKILL.
async fn terminate(child: &mut Child, id: &str) {
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid
        && rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_ok()
    {
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
        eprintln!(
            "dynamoctl: {id} still running {} after SIGTERM; killing it",
            humantime::format_duration(STOP_GRACE)
        );
    }
    // Already exited, or refused SIGTERM: make sure it is gone and reaped.
    let _ = child.kill().await;
}

/// Ctrl-C and SIGTERM.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, CtlError> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind| {
            signal(kind).map_err(|e| CtlError::Dev(format!("installing a signal handler: {e}")))
        };
        Ok(Self {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Runs `dynamoctl dev` until Ctrl-C or SIGTERM.
///
/// # Errors
///
/// [`CtlError::Usage`] for a missing node binary or quorums larger than N;
/// [`CtlError::Dev`] when a node fails to start, the cluster does not agree on its
/// members in time, or a node dies while running.
pub async fn run(args: DevArgs, admin_token: Option<String>, json: bool) -> Result<(), CtlError> {
    let node_bin = match &args.node_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| CtlError::Dev(format!("locating this executable: {e}")))?
            .with_file_name("dynamo-node"),
    };
    if !node_bin.is_file() {
        return Err(CtlError::Usage(format!(
            "no dynamo-node binary at {}; build it (cargo build --bins) or pass --node-bin",
            node_bin.display()
        )));
    }
    let (n, r, w) = args.quorum();
    if r > n || w > n || n == 0 || r == 0 || w == 0 {
        return Err(CtlError::Usage(format!(
            "quorums must satisfy 1 <= R, W <= N (got N={n} R={r} W={w})"
        )));
    }
    if n > u32::from(args.nodes) {
        eprintln!(
            "dynamoctl: warning: N={n} with {} nodes: every write lands on fewer than N distinct nodes",
            args.nodes
        );
    }
    let (base_dir, temp) = match &args.base_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CtlError::Dev(format!("creating {}: {e}", dir.display())))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("dynamo-dev-")
                .tempdir()
                .map_err(|e| CtlError::Dev(format!("creating a temporary directory: {e}")))?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let mut signals = Signals::new()?;
    let mut cluster = Cluster::new();
    let token = bearer(admin_token.as_deref())?;
    let started = tokio::select! {
        started = start(&mut cluster, &args, &node_bin, &base_dir, admin_token.as_deref(), &token) => started,
        () = signals.recv() => Err(CtlError::Dev("interrupted while starting the cluster".to_owned())),
    };
    let outcome = match started {
        Ok(()) => {
            announce(&cluster.nodes, &args, &base_dir, temp.is_some(), json)?;
            cluster.wait(&mut signals).await
        }
        Err(e) => Err(e),
    };
    cluster.stop().await;
    if let Some(temp) = temp
        && let Err(e) = temp.close()
    {
        eprintln!("dynamoctl: removing the temporary base dir: {e}");
    }
    outcome
}

/// Starts every node, joins them through node 1 and waits for agreement.
async fn start(
    cluster: &mut Cluster,
    args: &DevArgs,
    node_bin: &Path,
    base_dir: &Path,
    admin_token: Option<&str>,
    token: &BearerToken,
) -> Result<(), CtlError> {
    let internode_token_file = write_internode_token(base_dir)?;
    for index in 1..=args.nodes {
        let id = format!("node{index}");
        let spec = NodeSpec {
            ordinal: index - 1,
            data_dir: (args.storage == DevStorage::Sled).then(|| base_dir.join(&id)),
            seed: cluster.nodes.first().map(|first| first.ready.internode),
            internode_token_file: internode_token_file.clone(),
            id,
        };
        let (node, child) = spawn_node(&spec, args, node_bin, base_dir, admin_token).await?;
        eprintln!(
            "dynamoctl: {} ready: client {} internode {}",
            node.id, node.ready.client, node.ready.internode
        );
        cluster.supervise(node, child);
    }
    join_all(cluster, args.ready_timeout, token).await?;
    wait_for_agreement(cluster, args.ready_timeout, token).await
}

/// Starts one node and reads its ready line.
async fn spawn_node(
    spec: &NodeSpec,
    args: &DevArgs,
    node_bin: &Path,
    base_dir: &Path,
    admin_token: Option<&str>,
) -> Result<(DevNode, Child), CtlError> {
    let log_path = base_dir.join(format!("{}.log", spec.id));
    let mut command = node_command(spec, args, node_bin, &open_log(&log_path)?, admin_token)?;
    let mut child = command.spawn().map_err(|e| {
        CtlError::Dev(format!(
            "starting {} for {}: {e}",
            node_bin.display(),
            spec.id
        ))
    })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CtlError::Dev(format!("no stdout pipe from {}", spec.id)))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(args.ready_timeout, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(ready) = parse_ready_line(&line) {
                return Some(ready);
            }
        }
        None
    })
    .await;
    let ready = match ready {
        Ok(Some(ready)) => ready,
        Ok(None) => {
            let status = child
                .wait()
                .await
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(CtlError::Dev(format!(
                "{} exited before it was ready ({status}){}",
                spec.id,
                log_tail(&log_path)
            )));
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(CtlError::Dev(format!(
                "{} printed no ready line within {}{}",
                spec.id,
                humantime::format_duration(args.ready_timeout),
                log_tail(&log_path)
            )));
        }
    };
    // Keep draining stdout into the log so the node never blocks on a full pipe.
    let mut log = open_log(&log_path)?;
    tokio::spawn(async move {
        // Ends when the node exits. The writes are small appends to a local file; a
        // failed one only loses a log line.
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(log, "{line}");
        }
    });
    Ok((
        DevNode {
            id: spec.id.clone(),
            ready,
            log: log_path,
        },
        child,
    ))
}

/// A node's log file, opened for appending.
fn open_log(path: &Path) -> Result<std::fs::File, CtlError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| CtlError::Dev(format!("opening {}: {e}", path.display())))
}

/// The command that starts one node: its flags, stderr to `log`, stdout piped for the
/// ready line, and an environment without the caller's `DYNAMO_*` settings.
fn node_command(
    spec: &NodeSpec,
    args: &DevArgs,
    node_bin: &Path,
    log: &std::fs::File,
    admin_token: Option<&str>,
) -> Result<Command, CtlError> {
    let stderr = log
        .try_clone()
        .map_err(|e| CtlError::Dev(format!("sharing the log of {}: {e}", spec.id)))?;
    let mut command = Command::new(node_bin);
    command
        .args(node_args(spec, args))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    // The cluster is self-contained: a DYNAMO_* setting meant for a real node (seeds,
    // advertise, data dir) must not leak into it. Logging filters may.
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("DYNAMO_") && name_text != "DYNAMO_LOG" {
            command.env_remove(&name);
        }
    }
    if let Some(token) = admin_token {
        // Through the environment, not argv, so `ps` does not show it.
        command.env("DYNAMO_ADMIN_TOKEN", token);
    }
    Ok(command)
}

/// The admin endpoint of a node.
fn admin_url(node: &DevNode) -> String {
    format!("http://{}", node.ready.internode)
}

/// Admin.Join for every node, sent to node 1 (which joins itself first). A node that is
/// already in the table (a restart over a kept `--base-dir`) is fine.
async fn join_all(
    cluster: &mut Cluster,
    timeout: Duration,
    token: &BearerToken,
) -> Result<(), CtlError> {
    let Some(first) = cluster.nodes.first() else {
        return Ok(());
    };
    let target = AdminTarget {
        url: admin_url(first),
        token: token.clone(),
        timeout,
        tls: None,
    };
    let mut admin = target.client().await?;
    for node in cluster.nodes.clone() {
        let request = proto::JoinRequest {
            node_id: node.id.clone(),
            address: node.ready.internode.to_string(),
            weight: 1,
            zone: String::new(),
        };
        match admin.join(request).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                // A restart over a kept --base-dir. The listeners moved (port 0), so
                // wait_for_agreement also waits for the new addresses to spread.
                eprintln!(
                    "dynamoctl: {} already joined: {}",
                    node.id,
                    status.message()
                );
            }
            Err(status) => return Err(CtlError::rpc("join", &status)),
        }
        cluster.check_exits()?;
    }
    Ok(())
}

/// Polls every node's Admin.Ring until all list all members, bounded by `timeout`.
async fn wait_for_agreement(
    cluster: &mut Cluster,
    timeout: Duration,
    token: &BearerToken,
) -> Result<(), CtlError> {
    let expected: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.ready.internode.to_string()))
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let call_timeout = POLL_INTERVAL.max(Duration::from_secs(2));
    loop {
        let mut views = Vec::new();
        for node in &cluster.nodes {
            let target = AdminTarget {
                url: admin_url(node),
                token: token.clone(),
                timeout: call_timeout,
                tls: None,
            };
            // A node that does not answer this round simply has no view yet.
            if let Ok(mut admin) = target.client().await
                && let Ok(ring) = admin.ring(proto::RingRequest {}).await
            {
                views.push((node.id.clone(), ring.into_inner().members));
            }
        }
        let Some(gap) = agreement_gap(&expected, &views) else {
            return Ok(());
        };
        cluster.check_exits()?;
        if tokio::time::Instant::now() >= deadline {
            return Err(CtlError::Dev(format!(
                "the nodes did not agree on their {} members within {}: {gap}; see the logs in {}",
                expected.len(),
                humantime::format_duration(timeout),
                cluster
                    .nodes
                    .first()
                    .and_then(|n| n.log.parent())
                    .map_or_else(String::new, |d| d.display().to_string())
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Prints the endpoints and example commands (or the JSON document).
fn announce(
    nodes: &[DevNode],
    args: &DevArgs,
    base_dir: &Path,
    temporary: bool,
    json: bool,
) -> Result<(), CtlError> {
    let (n, r, w) = args.quorum();
    if json {
        let doc = DevJson {
            base_dir: base_dir.display().to_string(),
            replication_factor: n,
            read_quorum: r,
            write_quorum: w,
            nodes: nodes
                .iter()
                .map(|node| DevNodeJson {
                    id: node.id.clone(),
                    client: format!("http://{}", node.ready.client),
                    admin: admin_url(node),
                    http: node.ready.http.map(|a| format!("http://{a}")),
                    log: node.log.display().to_string(),
                })
                .collect(),
        };
        return print_out(output::to_json(&doc));
    }
    print_out(banner(nodes, args, base_dir, temporary))
}

fn banner(nodes: &[DevNode], args: &DevArgs, base_dir: &Path, temporary: bool) -> String {
    let (n, r, w) = args.quorum();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            vec![
                node.id.clone(),
                format!("http://{}", node.ready.client),
                admin_url(node),
                node.ready
                    .http
                    .map_or_else(|| "-".to_owned(), |a| format!("http://{a}")),
                node.log.display().to_string(),
            ]
        })
        .collect();
    let mut text = format!(
        "dynamo dev cluster ready: {} nodes, N={n} R={r} W={w}, storage {}\nbase dir {}{}\n\n{}",
        nodes.len(),
        args.storage.flag_value(),
        base_dir.display(),
        if temporary { " (removed at exit)" } else { "" },
        output::render_table(&["NODE", "CLIENT", "ADMIN", "HTTP", "LOG"], &rows)
    );
    if let Some(first) = nodes.first() {
        text.push_str(&format!(
            "\nTry:\n  export DYNAMO_ENDPOINT=http://{} DYNAMO_ADMIN_ENDPOINT={}\n  \
             dynamoctl put greeting hello\n  dynamoctl get greeting\n  dynamoctl ring\n  \
             dynamoctl status\n",
            first.ready.client,
            admin_url(first)
        ));
        if let Some(http) = first.ready.http {
            text.push_str(&format!("  curl http://{http}/metrics\n"));
        }
    }
    text.push_str("\nCtrl-C stops the cluster.\n");
    text
}

/// The last lines of a log, for error messages ("" when it cannot be read).
fn log_tail(path: &Path) -> String {
    const LINES: usize = 10;
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    if tail.is_empty() {
        format!("; its log {} is empty", path.display())
    } else {
        format!(
            "; last lines of {}:\n  {}",
            path.display(),
            tail.join("\n  ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn dev_args(extra: &[&str]) -> DevArgs {
        let cli =
            super::super::Cli::try_parse_from(["dynamoctl", "dev"].iter().chain(extra)).unwrap();
        match cli.command {
            super::super::Command::Dev(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn ready_line_gives_the_bound_ports() {
        let ready =
            parse_ready_line("dynamo-node ready client=127.0.0.1:41000 internode=127.0.0.1:41001")
                .unwrap();
        assert_eq!(ready.client, "127.0.0.1:41000".parse().unwrap());
        assert_eq!(ready.internode, "127.0.0.1:41001".parse().unwrap());
        assert_eq!(ready.http, None);
    }

    #[test]
    fn ready_line_http_is_optional_and_unknown_fields_are_ignored() {
        let ready = parse_ready_line(
            "dynamo-node ready client=127.0.0.1:1 internode=127.0.0.1:2 http=127.0.0.1:3 grpc-web=on",
        )
        .unwrap();
        assert_eq!(ready.http, Some("127.0.0.1:3".parse().unwrap()));
    }

    #[test]
    fn other_lines_are_not_ready_lines() {
        for line in [
            "",
            "node-id: n1",
            "dynamo-node ready client=127.0.0.1:1",
            "dynamo-node ready client=nope internode=127.0.0.1:2",
            "dynamo-node starting client=127.0.0.1:1 internode=127.0.0.1:2",
            "dynamo-node ready client=127.0.0.1:1 internode",
        ] {
            assert_eq!(parse_ready_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn first_node_has_no_seed_and_the_others_seed_from_it() {
        let args = dev_args(&["--nodes", "2"]);
        let first = NodeSpec {
            ordinal: 0,
            id: "node1".into(),
            data_dir: Some("/tmp/d/node1".into()),
            seed: None,
            internode_token_file: "/tmp/d/internode-token".into(),
        };
        let flags: Vec<String> = node_args(&first, &args)
            .into_iter()
            .map(|f| f.into_string().unwrap())
            .collect();
        assert_eq!(
            flags.join(" "),
            "--node-id node1 --listen 127.0.0.1:7000 --internode-listen 127.0.0.1:7001 \
             --http-listen 127.0.0.1:7002 --storage sled --replication-factor 2 \
             --read-quorum 2 --write-quorum 2 --data-dir /tmp/d/node1 \
             --internode-token-file /tmp/d/internode-token"
        );
        let second = NodeSpec {
            ordinal: 1,
            id: "node2".into(),
            data_dir: None,
            seed: Some("127.0.0.1:41001".parse().unwrap()),
            internode_token_file: "/tmp/d/internode-token".into(),
        };
        let flags: Vec<String> = node_args(&second, &dev_args(&["--storage", "memory"]))
            .into_iter()
            .map(|f| f.into_string().unwrap())
            .collect();
        assert!(
            flags
                .windows(2)
                .any(|w| w == ["--seeds", "127.0.0.1:41001"])
        );
        assert!(
            flags
                .windows(2)
                .any(|w| w == ["--listen", "127.0.0.1:7010"])
        );
        assert!(!flags.contains(&"--data-dir".to_owned()));
        assert!(flags.windows(2).any(|w| w == ["--storage", "memory"]));
    }

    fn member(id: &str, state: proto::MemberState) -> proto::MemberInfo {
        proto::MemberInfo {
            node_id: id.into(),
            address: format!("{id}:1"),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn agreement_needs_every_node_to_list_every_member() {
        // Dynamo §4.8.2: gossip makes every node's view of membership converge.
        use proto::MemberState::{Joining, Leaving, Member};
        let expected = vec![
            ("node1".to_owned(), "node1:1".to_owned()),
            ("node2".to_owned(), "node2:1".to_owned()),
        ];
        let full = vec![member("node1", Member), member("node2", Member)];
        let agreed = vec![
            ("node1".to_owned(), full.clone()),
            ("node2".to_owned(), full.clone()),
        ];
        assert_eq!(agreement_gap(&expected, &agreed), None);

        // A join whose hand-over has not finished: reads would not use node2 yet.
        let joining = vec![member("node1", Member), member("node2", Joining)];
        let settling = vec![
            ("node1".to_owned(), joining.clone()),
            ("node2".to_owned(), full.clone()),
        ];
        assert_eq!(
            agreement_gap(&expected, &settling).as_deref(),
            Some("node1 sees node2 still joining")
        );

        let lagging = vec![
            ("node1".to_owned(), full.clone()),
            ("node2".to_owned(), vec![member("node2", Member)]),
        ];
        assert_eq!(
            agreement_gap(&expected, &lagging).as_deref(),
            Some("node2 is missing node1")
        );

        let leaving = vec![
            (
                "node1".to_owned(),
                vec![member("node1", Member), member("node2", Leaving)],
            ),
            ("node2".to_owned(), full.clone()),
        ];
        assert_eq!(
            agreement_gap(&expected, &leaving).as_deref(),
            Some("node1 is missing node2")
        );

        // A restart over a kept base dir: node2 listens on a new port, and node1 must
        // learn it before the cluster counts as agreed.
        let moved = vec![
            ("node1".to_owned(), full.clone()),
            ("node2".to_owned(), full.clone()),
        ];
        let expected_moved = vec![
            ("node1".to_owned(), "node1:1".to_owned()),
            ("node2".to_owned(), "node2:2".to_owned()),
        ];
        assert_eq!(
            agreement_gap(&expected_moved, &moved).as_deref(),
            Some("node1 is missing node2; node2 is missing node2")
        );

        let silent = vec![("node1".to_owned(), full)];
        assert_eq!(
            agreement_gap(&expected, &silent).as_deref(),
            Some("1 of 2 nodes answered")
        );
    }

    #[test]
    fn banner_shows_endpoints_and_example_commands() {
        let nodes = vec![DevNode {
            id: "node1".into(),
            ready: ReadyLine {
                client: "127.0.0.1:41000".parse().unwrap(),
                internode: "127.0.0.1:41001".parse().unwrap(),
                http: Some("127.0.0.1:41002".parse().unwrap()),
            },
            log: "/tmp/d/node1.log".into(),
        }];
        let text = banner(
            &nodes,
            &dev_args(&["--nodes", "1"]),
            Path::new("/tmp/d"),
            true,
        );
        assert!(text.starts_with("dynamo dev cluster ready: 1 nodes, N=1 R=1 W=1, storage sled\n"));
        assert!(text.contains("base dir /tmp/d (removed at exit)"), "{text}");
        assert!(
            text.contains("export DYNAMO_ENDPOINT=http://127.0.0.1:41000 DYNAMO_ADMIN_ENDPOINT=http://127.0.0.1:41001"),
            "{text}"
        );
        assert!(
            text.contains("curl http://127.0.0.1:41002/metrics"),
            "{text}"
        );
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.log");
        let text: String = (1..=12).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path);
        assert!(
            tail.contains("line 12") && tail.contains("line 3"),
            "{tail}"
        );
        assert!(!tail.contains("line 2\n"), "{tail}");
        std::fs::write(&path, "").unwrap();
        assert!(log_tail(&path).contains("is empty"));
    }
}
