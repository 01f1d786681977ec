//! The Kubernetes suite's harness (`tests/kubernetes.rs`): `kubectl` and `helm` against
//! the cluster `e2e/k8s/cluster.sh up` made, as a platform team would use them, and a
//! DynamoCluster's pods as the replicas the history checker judges.
//!
//! The suite runs when `DYNAMO_K8S_SUITE=1` and `KUBECONFIG` names the cluster (what
//! `.ci/run` sets after `cluster.sh up`); elsewhere it says so and passes. The host
//! routes to the cluster's pod and Service ranges (`cluster.sh` makes them), so the
//! clients here reach the client Service's cluster IP and each pod directly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use dynamo_node::history::ReplicaDump;
use dynamo_node::proto::admin_client::AdminClient;
use dynamo_node::proto::kv_client::KvClient;
use dynamo_node::proto::{self};
use dynamo_node::transport::Transport;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cluster::replica_transport_with;
use crate::workload::Replicas;
use crate::{WAIT, eventually_every};
use dynamo_node::transport::auth::InternodeTokens;

/// The client API port of a node pod.
pub const CLIENT_PORT: u16 = 7000;
/// The internode (`Replica`, `Admin`) port of a node pod.
pub const INTERNODE_PORT: u16 = 7001;
/// The bound on one `kubectl` or `helm` call (`helm --wait` calls pass their own).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the suite cannot run here, or `None` when it should.
#[must_use]
pub fn skip_reason() -> Option<String> {
    if std::env::var("DYNAMO_K8S_SUITE").as_deref() != Ok("1") {
        return Some(
            "DYNAMO_K8S_SUITE is not 1: no cluster to run against \
             (eval \"$(e2e/k8s/cluster.sh up)\" makes one; .ci/run does)"
                .into(),
        );
    }
    if std::env::var_os("KUBECONFIG").is_none() {
        return Some("KUBECONFIG is not set".into());
    }
    None
}

/// The repository root (the suite applies manifests and installs the chart from it).
#[must_use]
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Runs `program args`, feeding `stdin`; its stdout, or an error with its stderr.
async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let output = tokio::time::timeout(CALL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("`{program} {}` took over {CALL_TIMEOUT:?}", args.join(" ")))?
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// `kubectl` in one namespace.
#[derive(Debug, Clone)]
pub struct Kubectl {
    namespace: String,
}

impl Kubectl {
    /// `kubectl --namespace namespace`.
    #[must_use]
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `kubectl -n NS args...`: stdout, or the error with stderr.
    pub async fn run(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["--namespace", &self.namespace];
        all.extend_from_slice(args);
        run("kubectl", &all, None).await
    }

    /// `kubectl -n NS args...` reading `stdin`.
    pub async fn run_with_input(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let mut all = vec!["--namespace", &self.namespace];
        all.extend_from_slice(args);
        run("kubectl", &all, Some(stdin)).await
    }

    /// [`run`](Self::run) that must succeed.
    ///
    /// # Panics
    /// When kubectl fails, with its message.
    pub async fn ok(&self, args: &[&str]) -> String {
        self.run(args).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kubectl apply -f -` of `yaml`, which must succeed.
    ///
    /// # Panics
    /// When kubectl fails, with its message.
    pub async fn apply(&self, yaml: &str) -> String {
        self.run_with_input(&["apply", "-f", "-"], yaml)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kubectl get args... -o json`, parsed.
    pub async fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.run(&all).await?;
        serde_json::from_str(&out).map_err(|e| format!("kubectl printed bad JSON: {e}"))
    }

    /// The pods matching `selector`, each with its name, IP, readiness and first
    /// container's image.
    pub async fn pods(&self, selector: &str) -> Result<Vec<PodInfo>, String> {
        let list = self.json(&["pods", "-l", selector]).await?;
        Ok(list["items"]
            .as_array()
            .map(|items| items.iter().map(PodInfo::from_json).collect())
            .unwrap_or_default())
    }
}

/// What the suite needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: tells a re-created pod from the one it replaced.
    pub uid: String,
    /// `status.podIP`, once it has one.
    pub ip: Option<IpAddr>,
    /// The `Ready` condition is true and the pod is not being deleted.
    pub ready: bool,
    /// The first container's image.
    pub image: String,
}

impl PodInfo {
    fn from_json(pod: &Value) -> Self {
        let ready = pod["metadata"]["deletionTimestamp"].is_null()
            && pod["status"]["conditions"]
                .as_array()
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
        Self {
            name: pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            uid: pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ip: pod["status"]["podIP"]
                .as_str()
                .and_then(|ip| ip.parse().ok()),
            ready,
            image: pod["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// `helm args...`: stdout, or the error with stderr.
pub async fn helm(args: &[&str]) -> Result<String, String> {
    run("helm", args, None).await
}

/// Polls `check` every `period` until it returns `Ok`, or panics after `within` naming
/// `what` and the last reason: [`eventually_every`] for calls that cost a process.
pub async fn wait<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    eventually_every(what, within, Duration::from_millis(500), check).await
}

/// Adds `authorization: Bearer <token>` to admin calls.
#[derive(Debug, Clone)]
pub struct BearerToken(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A DynamoCluster's node pods as the checker sees them: each pod's client and
/// internode addresses, and the cluster's admin token (from the Secret the operator
/// made).
#[derive(Debug, Clone)]
pub struct PodCluster {
    /// Pod name (the node id) and IP, ready pods only.
    pub pods: Vec<(String, IpAddr)>,
    token: BearerToken,
    /// The cluster secret the operator generated, which every `Replica` call needs.
    internode: InternodeTokens,
}

impl PodCluster {
    /// The ready pods of DynamoCluster `name` and its admin token.
    ///
    /// # Panics
    /// When the token Secret cannot be read or holds no valid token.
    pub async fn observe(kubectl: &Kubectl, name: &str) -> Result<Self, String> {
        let pods = kubectl
            .pods(&format!(
                "app.kubernetes.io/instance={name},app.kubernetes.io/component=node"
            ))
            .await?
            .into_iter()
            .filter(|pod| pod.ready)
            .filter_map(|pod| pod.ip.map(|ip| (pod.name, ip)))
            .collect();
        let encoded = kubectl
            .ok(&[
                "get",
                "secret",
                &format!("{name}-admin-token"),
                "-o",
                "jsonpath={.data.token}",
            ])
            .await;
        let token = base64_decode(encoded.trim())
            .ok_or_else(|| format!("secret {name}-admin-token holds no base64 token"))?;
        let header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| format!("the admin token is not a header value: {e}"))?;
        let secret = format!("{name}-internode");
        let encoded = kubectl
            .ok(&["get", "secret", &secret, "-o", "jsonpath={.data.token}"])
            .await;
        let internode = base64_decode(encoded.trim())
            .ok_or_else(|| format!("secret {secret} holds no base64 token"))?;
        let internode = InternodeTokens::parse(&internode)
            .map_err(|e| format!("secret {secret}: the token {e}"))?;
        Ok(Self {
            pods,
            token: BearerToken(header),
            internode,
        })
    }

    /// Pod `index`'s answer to a `Replica` read from a caller without the cluster
    /// secret: `Ok` if it served it (it must not).
    ///
    /// # Errors
    /// The transport error, which should be the refusal.
    pub async fn outsider_read(&self, index: usize) -> Result<(), String> {
        replica_transport_with(None)
            .read(&self.internode(index).to_string(), b"probe")
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Each pod's client API address.
    #[must_use]
    pub fn client_addresses(&self) -> Vec<SocketAddr> {
        self.pods
            .iter()
            .map(|(_, ip)| SocketAddr::new(*ip, CLIENT_PORT))
            .collect()
    }

    fn internode(&self, index: usize) -> SocketAddr {
        SocketAddr::new(self.pods[index].1, INTERNODE_PORT)
    }

    /// The `Admin` client of pod `index`, with the token.
    pub fn admin(&self, index: usize) -> AdminClient<InterceptedService<Channel, BearerToken>> {
        AdminClient::with_interceptor(lazy_channel(self.internode(index)), self.token.clone())
    }

    /// Pod `index`'s `Admin.Status` over TLS with `tls` (which names the CA to trust,
    /// the certificate to present, and the pod's name in its certificate), on a new
    /// connection: the handshake is part of the answer.
    ///
    /// # Errors
    /// The handshake or the call failed.
    pub async fn status_over_tls(
        &self,
        index: usize,
        tls: tonic::transport::ClientTlsConfig,
    ) -> Result<proto::StatusResponse, String> {
        let pod = &self.pods[index].0;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("https://{}", self.internode(index)))
                .map_err(|e| e.to_string())?
                .tls_config(tls)
                .map_err(|e| format!("TLS settings for {pod}: {e}"))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .map_err(|e| format!("connecting to {pod} over TLS: {e:?}"))?;
        AdminClient::with_interceptor(channel, self.token.clone())
            .status(proto::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("status of {pod} over TLS: {s}"))
    }

    /// Pod `index`'s `Admin.Status`.
    pub async fn status(&self, index: usize) -> Result<proto::StatusResponse, String> {
        self.admin(index)
            .status(proto::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("status of {}: {s}", self.pods[index].0))
    }

    /// The member table as pod `index` sees it.
    pub async fn ring(&self, index: usize) -> Result<proto::RingResponse, String> {
        self.admin(index)
            .ring(proto::RingRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("ring from {}: {s}", self.pods[index].0))
    }
}

impl Replicas for PodCluster {
    async fn wait_for_hints_delivered(&self) {
        wait("every pod's hints delivered", WAIT, || async {
            for index in 0..self.pods.len() {
                let status = self.status(index).await?;
                if let Some(backlog) = status.hints.iter().find(|h| h.keys > 0) {
                    return Err(format!(
                        "{} holds {} hints for {}",
                        self.pods[index].0, backlog.keys, backlog.target
                    ));
                }
            }
            Ok(())
        })
        .await;
    }

    /// Every pod's versions of every key: the suite's final checks run with as many
    /// pods as replicas (N = 3), so every pod is a replica of every key.
    async fn replica_dump(&self, keys: &[Vec<u8>]) -> Result<ReplicaDump, String> {
        let transport = replica_transport_with(Some(&self.internode));
        let mut dump = ReplicaDump::new();
        for key in keys {
            for (index, (name, _)) in self.pods.iter().enumerate() {
                let state = transport
                    .read(&self.internode(index).to_string(), key)
                    .await
                    .map_err(|e| format!("reading {key:?} from {name}: {e}"))?;
                let versions = state
                    .siblings()
                    .iter()
                    .map(|sibling| sibling.value.as_data().map(<[u8]>::to_vec))
                    .collect();
                dump.record(key, name, versions);
            }
        }
        Ok(dump)
    }

    async fn client(&self) -> KvClient<Channel> {
        KvClient::new(lazy_channel(self.client_addresses()[0]))
    }
}

fn lazy_channel(address: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

fn base64_decode(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    String::from_utf8(bytes).ok()
}
