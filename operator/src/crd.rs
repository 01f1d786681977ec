//! The `DynamoCluster` custom resource (group `dynamo.example.org`, version `v1alpha1`).
//!
//! No I/O: types, defaults and the pure derivations the builders and the planner share
//! (per-node weights). The schema is generated from these types by `kube`'s derive; field
//! doc comments become the descriptions `kubectl explain` shows, and the rules the schema
//! cannot express (`r <= n`, `w <= n`, `size >= n`) are CEL rules in the CRD, checked by the
//! API server.
//!
//! The knobs are the paper's: the replication factor `N` and quorum sizes `R`/`W`
//! (Dynamo §4.5), per-node weights in virtual nodes for heterogeneous machines (§4.2), the
//! partitioning strategy (§6.2) and buffered or synchronous writes (§6.1).

// kube's `KubeSchema` derive re-declares each struct, `pub`, inside a function body to
// derive its schema; the lint flags those copies, not this module's API.
#![expect(unreachable_pub, reason = "copies made by the KubeSchema derive")]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The largest replication factor the node accepts (`dynamo-node`'s `MAX_REPLICATION_FACTOR`).
pub const MAX_REPLICATION_FACTOR: u32 = 16;
/// The largest weight the node accepts (`dynamo-node`'s `membership::MAX_WEIGHT`).
pub const MAX_WEIGHT: u32 = 10_000;
/// The largest `tokensPerWeight` (`dynamo-node`'s `ring::MAX_TOKENS_PER_WEIGHT`).
pub const MAX_TOKENS_PER_WEIGHT: u32 = 1024;
/// The largest `partitions` (`dynamo-node`'s `ring::MAX_PARTITIONS`).
pub const MAX_PARTITIONS: u32 = 65_536;
/// The longest DynamoCluster name. Its StatefulSet labels every pod
/// `controller-revision-hash: <name>-<hash>`, a label value of at most 63 characters
/// with a hash of up to 10 and a dash: a longer name is accepted by the API server and
/// then every pod is refused (found on a real cluster, e2e/k8s). The CRD's CEL rule
/// repeats the number.
pub const MAX_NAME_LEN: usize = 52;

/// Desired state of a Dynamo cluster: how many nodes, which image, and how they replicate
/// and partition data.
#[allow(
    clippy::duplicated_attributes,
    reason = "each kube printcolumn(...) repeats the type_ key"
)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dynamo.example.org",
    version = "v1alpha1",
    kind = "DynamoCluster",
    namespaced,
    status = "DynamoClusterStatus",
    shortname = "dyn",
    derive = "PartialEq",
    doc = "A Dynamo key-value store cluster: a StatefulSet of dynamo-node pods whose ring membership the operator changes one step at a time.",
    scale(
        spec_replicas_path = ".spec.size",
        status_replicas_path = ".status.readyNodes",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".spec.size",
        description = "Desired number of nodes"
    ),
    printcolumn(
        name = "Members",
        type_ = "integer",
        json_path = ".status.members",
        description = "Nodes in the ring"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyNodes",
        description = "Ready node pods"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Cluster phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("self.metadata.name.size() <= 52").message("metadata.name must be at most 52 characters: the StatefulSet labels each pod with the name and a 10-character revision hash, at most 63 in all"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label starting with a letter (lowercase letters, digits, '-'): it names the cluster's Services")
)]
#[x_kube(validation = Rule::new("self.size >= self.replication.n").message("size must be at least replication.n"))]
#[x_kube(validation = Rule::new(MANAGED_NODE_KEYS_RULE).message("nodeConfig may not set a key the operator manages (listen addresses, storage, replication, partitioning, durability, weights, TLS files, secrets, identity, seeds)"))]
#[x_kube(validation = Rule::new("self.replication.n == oldSelf.replication.n").message("replication.n cannot change on a live cluster: every key would need new replicas at once; create a new cluster with the new N and move the data to it"))]
#[x_kube(validation = Rule::new("self.partitioning == oldSelf.partitioning").message("partitioning cannot change on a live cluster: every key would change owners at once; create a new cluster with the new partitioning and move the data to it"))]
#[x_kube(validation = Rule::new("quantity(self.storage.size).compareTo(quantity(oldSelf.storage.size)) >= 0").message("storage.size can only grow: a volume cannot shrink in place; create a new cluster with the smaller volumes and move the data to it"))]
#[x_kube(validation = Rule::new("has(self.storage.storageClassName) == has(oldSelf.storage.storageClassName) && (!has(self.storage.storageClassName) || self.storage.storageClassName == oldSelf.storage.storageClassName)").message("storage.storageClassName cannot change on a live cluster: the StatefulSet's volume claim template is immutable; create a new cluster on the new class and move the data to it"))]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterSpec {
    /// Number of storage nodes (pods). Must be at least `replication.n`, at most 1000.
    /// There is no cap on one change: the operator joins and drains one node at a time
    /// whatever the jump; the bound catches a typo (`100000`) that would create pods by
    /// the thousand.
    #[schemars(range(min = 1, max = 1000))]
    pub size: i32,
    /// Container image of `dynamo-node`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Pull policy of the image; the Kubernetes default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Replication factor and quorum sizes (Dynamo §4.5).
    #[serde(default)]
    pub replication: Replication,
    /// How the ring is divided (Dynamo §6.2).
    #[serde(default)]
    pub partitioning: PartitioningSpec,
    /// Each node's weight, i.e. its share of the ring (Dynamo §4.2).
    #[serde(default)]
    pub weights: Weights,
    /// Persistent storage of each node.
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU and memory of each node's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Whether a write is on disk before it is acknowledged (Dynamo §6.1).
    #[serde(default)]
    pub durability: Durability,
    /// How concurrent writes of one key reconcile (Dynamo §4.4, §6): `siblings` (the
    /// default: a read returns every concurrent version and the application merges them)
    /// or `last-write-wins` (one value per key, the latest timestamp wins; clock skew
    /// between nodes can let an earlier write win).
    #[serde(default, skip_serializing_if = "Reconciliation::is_default")]
    pub reconciliation: Reconciliation,
    /// Extras merged into the node pods' template.
    #[serde(default)]
    pub pod_template: PodTemplateExtras,
    /// Seconds a member's pod may be not Ready before the operator reports it dead
    /// (condition `Degraded`, reason `MemberDead`, and a Warning event); 600 when unset.
    /// A dead member is replaced only when asked (annotation
    /// `dynamo.example.org/replace: <pod name>`), except one above `size`, which a
    /// scale-down removes without its hand-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 604_800))]
    pub dead_member_timeout_seconds: Option<u32>,
    /// Name of a Secret in the same namespace whose key `token` is the admin token the
    /// nodes require on `Admin` calls (1 to 1024 printable ASCII characters, no spaces).
    /// When unset, the operator creates a Secret `<name>-admin-token` with a random token
    /// and keeps it for the cluster's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub admin_token_secret: Option<String>,
    /// TLS for the gRPC listeners and internode calls; plaintext when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Node settings this spec does not manage, by the node's config key
    /// (`dynamo-node --help`), each value a YAML scalar written as a string: for example
    /// `max-connections: "4096"`, `max-inflight-requests: "2048"`,
    /// `client-read-timeout: 30s`, `tombstone-grace: 48h`, `anti-entropy-interval: 1m`,
    /// `log: debug`. Keys the operator sets itself (listen addresses, storage,
    /// replication, partitioning, durability, weights, TLS files, secrets, identity,
    /// seeds) are refused, as is a key or value the node would refuse. A change rolls
    /// the pods.
    // Bounded, so the API server can bound the cost of the CEL rule over its keys;
    // the node has fewer settings than that.
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_config: BTreeMap<String, String>,
}

/// The largest `size` (the schema's `maximum`).
pub const MAX_SIZE: i32 = 1000;

/// Most `nodeConfig` entries (the schema's `maxProperties`).
pub const MAX_NODE_CONFIG_ENTRIES: usize = 64;

/// The CRD rule refusing [`MANAGED_NODE_KEYS`] in `nodeConfig` at `kubectl apply`
/// (a test checks the two lists agree); [`DynamoClusterSpec::validate`] refuses them
/// again for objects that bypassed the schema.
pub const MANAGED_NODE_KEYS_RULE: &str = "!has(self.nodeConfig) || self.nodeConfig.all(k, !(k in \
    ['node-id', 'listen', 'internode-listen', 'http-listen', 'advertise', 'advertise-client', \
    'data-dir', 'seeds', 'storage', 'replication-factor', 'read-quorum', 'write-quorum', \
    'weight', 'partitioning', 'partitions', 'tokens-per-weight', 'durability', 'admin-token', \
    'tls-cert', 'tls-key', 'tls-ca', 'internode-token-file', 'insecure-internode', 'zone', \
    'reconciliation']))";

/// Node config keys the operator sets itself (in the node config file or the pods'
/// environment), so `nodeConfig` may not.
pub const MANAGED_NODE_KEYS: &[&str] = &[
    "node-id",
    "listen",
    "internode-listen",
    "http-listen",
    "advertise",
    "advertise-client",
    "data-dir",
    "seeds",
    "storage",
    "replication-factor",
    "read-quorum",
    "write-quorum",
    "weight",
    "partitioning",
    "partitions",
    "tokens-per-weight",
    "durability",
    "admin-token",
    "tls-cert",
    "tls-key",
    "tls-ca",
    "internode-token-file",
    "insecure-internode",
    "zone",
    "reconciliation",
];

/// When the kubelet pulls the image.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the image is not on the machine.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Replication factor `N`, read quorum `R` and write quorum `W` (Dynamo §4.5; `R + W > N`
/// gives quorum-like reads, but the paper also runs smaller quorums for latency).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.r <= self.n").message("replication.r must not exceed replication.n"))]
#[x_kube(validation = Rule::new("self.w <= self.n").message("replication.w must not exceed replication.n"))]
pub struct Replication {
    /// Replication factor: how many nodes hold each key.
    #[serde(default = "default_n")]
    #[schemars(range(min = 1, max = 16))]
    pub n: u32,
    /// Read quorum: replies a read waits for.
    #[serde(default = "default_quorum")]
    #[schemars(range(min = 1, max = 16))]
    pub r: u32,
    /// Write quorum: acknowledgements a write waits for.
    #[serde(default = "default_quorum")]
    #[schemars(range(min = 1, max = 16))]
    pub w: u32,
}

fn default_n() -> u32 {
    3
}

fn default_quorum() -> u32 {
    2
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            n: default_n(),
            r: default_quorum(),
            w: default_quorum(),
        }
    }
}

/// The partitioning strategy and its parameter (Dynamo §6.2).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("!has(self.partitions) || self.strategy == 'equal-partitions'").message("partitions applies only to strategy equal-partitions"))]
#[x_kube(validation = Rule::new("!has(self.tokensPerWeight) || self.strategy == 'random-tokens'").message("tokensPerWeight applies only to strategy random-tokens"))]
#[serde(rename_all = "camelCase")]
pub struct PartitioningSpec {
    /// `equal-partitions` (strategy 3, the default) or `random-tokens` (strategy 1).
    #[serde(default)]
    pub strategy: Strategy,
    /// Number of equal partitions `Q` (strategy 3); the node's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub partitions: Option<u32>,
    /// Random tokens per unit of weight (strategy 1); the node's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub tokens_per_weight: Option<u32>,
}

/// A partitioning strategy of Dynamo §6.2, spelled as the node's `partitioning` key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Strategy 3: `Q` equal partitions shared out by weight.
    #[default]
    EqualPartitions,
    /// Strategy 1: random tokens per unit of weight.
    RandomTokens,
}

impl Strategy {
    /// The node's spelling of the strategy.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EqualPartitions => "equal-partitions",
            Self::RandomTokens => "random-tokens",
        }
    }
}

/// Node weights: bigger nodes own more of the ring (Dynamo §4.2, heterogeneity).
///
/// A node's weight is its entry in `overrides` if any, else the weight derived from its
/// requested CPU and volume size if `fromResources`, else `default`.
///
/// Every pod of a cluster has the same `resources` and `storage` (one StatefulSet
/// template), so a derived weight is the same for all of them: it scales the whole ring
/// when the pods grow, and `overrides` set per-node differences.
///
/// Override keys are checked by the operator (a structural schema cannot constrain map
/// keys, and a CEL rule over an unbounded map may exceed the API server's cost budget);
/// a bad key shows up as a `Degraded` condition.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!has(self.storagePerWeight) || self.fromResources").message("storagePerWeight applies only with fromResources"))]
#[serde(rename_all = "camelCase")]
pub struct Weights {
    /// Weight of every node without an override.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 10000))]
    pub default: u32,
    /// Weight by pod ordinal (`"0"`, `"1"`, ...), overriding the others.
    #[serde(default)]
    #[schemars(extend("additionalProperties" = {"type": "integer", "format": "uint32", "minimum": 1, "maximum": 10000}))]
    pub overrides: BTreeMap<String, u32>,
    /// Derive the weight from the requested resources instead of `default`: one unit per
    /// whole requested core (rounded up) and, with `storagePerWeight`, one unit per
    /// `storagePerWeight` of `storage.size` (rounded up). With both, the smaller wins: the
    /// scarcer resource bounds how much of the ring a node can serve. At least 1.
    #[serde(default)]
    pub from_resources: bool,
    /// The volume size worth one unit of weight when `fromResources`, a Kubernetes
    /// quantity such as `100Gi`; unset: storage does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1),
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
    )]
    pub storage_per_weight: Option<String>,
}

fn default_weight() -> u32 {
    1
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            default: default_weight(),
            overrides: BTreeMap::new(),
            from_resources: false,
            storage_per_weight: None,
        }
    }
}

/// Each node's PersistentVolumeClaim.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested volume size, a Kubernetes quantity such as `10Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(
        length(min = 1),
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
    )]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Keep a node's volume after it is decommissioned and its pod removed (default true).
    /// A volume is only ever deleted after its node reports "removed".
    #[serde(default = "default_true")]
    pub retain_on_scale_down: bool,
    /// Keep the volumes when the DynamoCluster is deleted (default true).
    #[serde(default = "default_true")]
    pub retain_on_delete: bool,
}

fn default_storage_size() -> String {
    "10Gi".to_owned()
}

fn default_true() -> bool {
    true
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            retain_on_scale_down: true,
            retain_on_delete: true,
        }
    }
}

/// The node's `reconciliation` setting.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Reconciliation {
    /// Every concurrent version is kept and returned; the application reconciles.
    #[default]
    Siblings,
    /// One value per key: the version with the latest timestamp.
    LastWriteWins,
}

impl Reconciliation {
    /// The node's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Siblings => "siblings",
            Self::LastWriteWins => "last-write-wins",
        }
    }

    /// Whether this is the default (left out of the serialized spec, so clusters made
    /// before the field keep their template inputs).
    #[must_use]
    pub fn is_default(&self) -> bool {
        *self == Self::Siblings
    }
}

/// The node's `durability` setting (Dynamo §6.1).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Every write is on disk before it is acknowledged.
    #[default]
    Sync,
    /// Writes are buffered in memory and flushed periodically.
    Buffered,
}

impl Durability {
    /// The node's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Buffered => "buffered",
        }
    }
}

/// Extras for the node pods. When `affinity` is unset the operator spreads nodes across
/// machines with a preferred pod anti-affinity.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateExtras {
    /// Labels added to the pods (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node selector of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods, replacing the default anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// TLS material for the nodes, from a Secret the user names (cert-manager's layout).
///
/// Every listener then serves TLS with `tls.crt` and `tls.key`, and the HTTP probes use
/// HTTPS. The certificate must be valid for the nodes' peer names
/// (`<pod>.<name>-peers.<namespace>.svc`) and the client Service's name.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Name of a Secret in the same namespace holding `tls.crt`, `tls.key` and, when
    /// `mutual`, `ca.crt` (the keys cert-manager writes).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,
    /// Mutual TLS on the internode/admin port (default true): nodes verify each other
    /// against `ca.crt` and require a certificate signed by it from peers and admin
    /// clients (the operator included). When false, `ca.crt` is not read and nodes trust
    /// only their own certificate, which suits one certificate shared by every node.
    #[serde(default = "default_true")]
    pub mutual: bool,
}

/// Observed state of a Dynamo cluster, written by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Node pods that are ready.
    #[serde(default)]
    pub ready_nodes: i32,
    /// Nodes in the ring (joining, member or leaving).
    #[serde(default)]
    pub members: i32,
    /// Summary of the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `Available`, `Progressing` and `Degraded`, each with a reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The membership step in progress, e.g. `decommission 4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    /// The pod template rollout in progress: how many pods run the new template and what
    /// the next restart waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// Label selector of the node pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// One-word summary of a cluster's state.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Objects created; no node has joined yet.
    Pending,
    /// A membership step is in progress.
    Progressing,
    /// Membership matches the spec.
    Running,
    /// A step was refused or nodes are unavailable.
    Degraded,
}

/// Why a spec cannot be turned into nodes. The schema rejects most of these first; the
/// operator checks again because objects may predate the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// `size` is below 1.
    #[error("size must be 1..=1000, got {0}")]
    Size(i32),
    /// `n`, `r` or `w` is out of range or a quorum exceeds `n`.
    #[error("invalid replication n={n} r={r} w={w}")]
    Replication {
        /// Replication factor.
        n: u32,
        /// Read quorum.
        r: u32,
        /// Write quorum.
        w: u32,
    },
    /// `size` is smaller than `n`.
    #[error("size {size} is smaller than replication factor {n}")]
    SizeBelowReplication {
        /// Desired size.
        size: i32,
        /// Replication factor.
        n: u32,
    },
    /// A weight is outside `1..=MAX_WEIGHT`.
    #[error("weight {0} is outside 1..=10000")]
    Weight(u32),
    /// A `weights.overrides` key is not an ordinal.
    #[error("weights.overrides key {0:?} is not a pod ordinal")]
    OverrideKey(String),
    /// `weights.fromResources` is set but neither CPU is requested nor
    /// `weights.storagePerWeight` set.
    #[error(
        "weights.fromResources needs resources.requests.cpu, resources.limits.cpu or \
         weights.storagePerWeight"
    )]
    NoCpuRequest,
    /// `weights.storagePerWeight` is set without `weights.fromResources`.
    #[error("weights.storagePerWeight applies only with weights.fromResources")]
    StoragePerWeightUnused,
    /// A storage quantity is not a positive number of bytes.
    #[error("{field} {quantity:?} is not a positive quantity of bytes")]
    StorageQuantity {
        /// The field (`storage.size` or `weights.storagePerWeight`).
        field: &'static str,
        /// Its value.
        quantity: String,
    },
    /// The CPU quantity is not a plain number of cores or millicores.
    #[error("unsupported cpu quantity {0:?}")]
    CpuQuantity(String),
    /// A `nodeConfig` key the operator sets itself.
    #[error("nodeConfig.{0} is set by the operator (from the rest of the spec)")]
    ManagedNodeKey(String),
    /// A `nodeConfig` entry the node would refuse.
    #[error("nodeConfig: {0}")]
    NodeConfig(String),
}

impl DynamoClusterSpec {
    /// Checks what the schema checks, for objects that bypassed it.
    ///
    /// # Errors
    /// The first [`SpecError`] found.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(1..=MAX_SIZE).contains(&self.size) {
            return Err(SpecError::Size(self.size));
        }
        let Replication { n, r, w } = self.replication;
        let in_range = |v: u32| (1..=MAX_REPLICATION_FACTOR).contains(&v);
        if !in_range(n) || !in_range(r) || !in_range(w) || r > n || w > n {
            return Err(SpecError::Replication { n, r, w });
        }
        if i64::from(self.size) < i64::from(n) {
            return Err(SpecError::SizeBelowReplication { size: self.size, n });
        }
        check_weight(self.weights.default)?;
        for (key, &weight) in &self.weights.overrides {
            parse_ordinal(key)?;
            check_weight(weight)?;
        }
        if self.weights.from_resources {
            self.resource_weight()?;
        } else if self.weights.storage_per_weight.is_some() {
            return Err(SpecError::StoragePerWeightUnused);
        }
        self.check_node_config()
    }

    /// `nodeConfig` as a YAML mapping of the node's config keys, each value parsed as
    /// the YAML scalar it spells (`"4096"` a number, `"true"` a boolean, `30s` text).
    pub fn node_config_mapping(&self) -> serde_yaml::Mapping {
        self.node_config
            .iter()
            .map(|(key, value)| {
                let value = serde_yaml::from_str::<serde_yaml::Value>(value)
                    .ok()
                    .filter(|parsed| {
                        !matches!(
                            parsed,
                            serde_yaml::Value::Mapping(_) | serde_yaml::Value::Sequence(_)
                        )
                    })
                    .unwrap_or_else(|| serde_yaml::Value::String(value.clone()));
                (serde_yaml::Value::String(key.clone()), value)
            })
            .collect()
    }

    /// Refuses a `nodeConfig` key the operator manages, and a key or value the node
    /// would refuse at start, with the node's own message naming the key. The planner
    /// runs it before every pass, so a typo shows in the cluster's status
    /// (`InvalidSpec`) instead of crash-looping pods.
    ///
    /// # Errors
    /// [`SpecError::ManagedNodeKey`] or [`SpecError::NodeConfig`].
    pub fn check_node_config(&self) -> Result<(), SpecError> {
        use dynamo_config::{NodeConfig, RawConfig};
        if self.node_config.is_empty() {
            return Ok(());
        }
        if self.node_config.len() > MAX_NODE_CONFIG_ENTRIES {
            return Err(SpecError::NodeConfig(format!(
                "{} entries, at most {MAX_NODE_CONFIG_ENTRIES}",
                self.node_config.len()
            )));
        }
        if let Some(key) = self
            .node_config
            .keys()
            .find(|key| MANAGED_NODE_KEYS.contains(&key.as_str()))
        {
            return Err(SpecError::ManagedNodeKey(key.clone()));
        }
        let yaml = serde_yaml::to_string(&self.node_config_mapping())
            .map_err(|e| SpecError::NodeConfig(e.to_string()))?;
        let settings =
            RawConfig::from_yaml(&yaml).map_err(|e| SpecError::NodeConfig(e.to_string()))?;
        // Checked beside what any node of the cluster has; the managed keys are the
        // operator's to get right.
        let placeholder = RawConfig {
            node_id: dynamo_config::NodeId::new("dynamo-0").ok(),
            data_dir: Some("/var/lib/dynamo".into()),
            ..RawConfig::default()
        };
        NodeConfig::try_from(settings.or(placeholder))
            .map(drop)
            .map_err(|e| SpecError::NodeConfig(e.to_string()))
    }

    /// The weight of the node with this ordinal (see [`Weights`]).
    ///
    /// # Errors
    /// A malformed override key, `fromResources` without a usable CPU or storage
    /// quantity, or `storagePerWeight` without `fromResources`.
    pub fn weight_of(&self, ordinal: u32) -> Result<u32, SpecError> {
        // A unit the spec sets but nothing reads would be silently ignored: refuse it
        // here too, as every pass plans through this.
        if !self.weights.from_resources && self.weights.storage_per_weight.is_some() {
            return Err(SpecError::StoragePerWeightUnused);
        }
        for (key, &weight) in &self.weights.overrides {
            if parse_ordinal(key)? == ordinal {
                return check_weight(weight);
            }
        }
        if self.weights.from_resources {
            self.resource_weight()
        } else {
            check_weight(self.weights.default)
        }
    }

    /// The weight `fromResources` derives: the smaller of one unit per whole requested
    /// core and one unit per `storagePerWeight` of volume, each rounded up, at least 1.
    /// Requests default to limits in Kubernetes, so CPU limits are the fallback.
    fn resource_weight(&self) -> Result<u32, SpecError> {
        let cpu = self.resources.as_ref().and_then(|resources| {
            resources
                .requests
                .as_ref()
                .and_then(|r| r.get("cpu"))
                .or_else(|| resources.limits.as_ref().and_then(|l| l.get("cpu")))
        });
        let cpu_units = match cpu {
            Some(cpu) => Some(cpu_millicores(&cpu.0)?.div_ceil(1000)),
            None => None,
        };
        let storage_units = match &self.weights.storage_per_weight {
            Some(per_weight) => {
                let unit = positive_bytes("weights.storagePerWeight", per_weight)?;
                let volume = positive_bytes("storage.size", &self.storage.size)?;
                Some(volume.div_ceil(unit))
            }
            None => None,
        };
        let units = match (cpu_units, storage_units) {
            (Some(cpu), Some(storage)) => cpu.min(storage),
            (Some(units), None) | (None, Some(units)) => units,
            (None, None) => return Err(SpecError::NoCpuRequest),
        };
        check_weight(u32::try_from(units.max(1)).unwrap_or(u32::MAX))
    }
}

/// The bytes of a Kubernetes quantity (`10Gi`, `500M`, `1e9`), rounded down; `None` when
/// it is not one or is negative.
#[must_use]
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let quantity = k8s_openapi::apimachinery::pkg::api::resource::Quantity(quantity.to_owned());
    kube_quantity::ParsedQuantity::try_from(&quantity)
        .ok()?
        .to_bytes_u64()
}

fn positive_bytes(field: &'static str, quantity: &str) -> Result<u64, SpecError> {
    quantity_bytes(quantity)
        .filter(|&bytes| bytes > 0)
        .ok_or_else(|| SpecError::StorageQuantity {
            field,
            quantity: quantity.to_owned(),
        })
}

fn check_weight(weight: u32) -> Result<u32, SpecError> {
    if (1..=MAX_WEIGHT).contains(&weight) {
        Ok(weight)
    } else {
        Err(SpecError::Weight(weight))
    }
}

fn parse_ordinal(key: &str) -> Result<u32, SpecError> {
    let canonical = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'));
    key.parse()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| SpecError::OverrideKey(key.to_owned()))
}

/// Parses a CPU quantity (`2`, `1.5`, `500m`) into millicores, rounding up.
fn cpu_millicores(quantity: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::CpuQuantity(quantity.to_owned());
    let (number, scale) = match quantity.strip_suffix('m') {
        Some(millis) => (millis, 1),
        None => (quantity, 1000),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty()
        || !digits_only(whole)
        || !digits_only(fraction)
        || whole.len() > 12
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    // Fractions of a millicore round up, as Kubernetes does for CPU.
    let mut fraction_millis = 0u64;
    let mut unit = scale;
    let mut remainder = false;
    for digit in fraction.bytes() {
        let d = u64::from(digit - b'0');
        if unit >= 10 {
            unit /= 10;
            fraction_millis += d * unit;
        } else if d > 0 {
            remainder = true;
        }
    }
    Ok(whole * scale + fraction_millis + u64::from(remainder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::CustomResourceExt;
    use proptest::prelude::{prop_assert_eq, proptest};

    #[test]
    fn minimal_spec_takes_the_papers_defaults() {
        let spec = spec(3);
        // Dynamo §4.5: "(N,R,W) ... (3,2,2)".
        assert_eq!(spec.replication, Replication { n: 3, r: 2, w: 2 });
        assert_eq!(spec.partitioning.strategy, Strategy::EqualPartitions);
        assert_eq!(spec.durability, Durability::Sync);
        assert_eq!(spec.storage.size, "10Gi");
        assert!(spec.storage.retain_on_scale_down && spec.storage.retain_on_delete);
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn crd_has_names_subresources_and_columns() {
        let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "dynamoclusters.dynamo.example.org");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "dyn");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        let scale = &version["subresources"]["scale"];
        assert_eq!(scale["specReplicasPath"], ".spec.size");
        assert_eq!(scale["statusReplicasPath"], ".status.readyNodes");
        assert_eq!(scale["labelSelectorPath"], ".status.selector");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Size", "Members", "Ready", "Phase", "Age"]);
    }

    #[test]
    fn crd_schema_carries_bounds_cel_rules_and_descriptions() {
        let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["size"]["minimum"].as_f64(), Some(1.0));
        assert!(
            spec["properties"]["size"]["description"]
                .as_str()
                .unwrap()
                .contains("replication.n")
        );
        let rules = |schema: &serde_json::Value| -> Vec<String> {
            schema["x-kubernetes-validations"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| r["rule"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let spec_rules = rules(spec);
        assert_eq!(
            spec_rules[..2],
            ["self.size >= self.replication.n", MANAGED_NODE_KEYS_RULE]
        );
        // And the transition rules (`oldSelf`), evaluated on updates only.
        assert_eq!(spec_rules.len(), 6, "{spec_rules:?}");
        assert!(spec_rules[2..].iter().all(|rule| rule.contains("oldSelf")));
        let replication = &spec["properties"]["replication"];
        assert_eq!(rules(replication), ["self.r <= self.n", "self.w <= self.n"]);
        assert_eq!(
            replication["properties"]["n"]["maximum"].as_f64(),
            Some(16.0)
        );
        let overrides = &spec["properties"]["weights"]["properties"]["overrides"];
        let weight = &overrides["additionalProperties"];
        assert_eq!(weight["minimum"].as_f64(), Some(1.0));
        assert_eq!(weight["maximum"].as_f64(), Some(10000.0));
        // Defaults are in the schema, so CEL sees `replication` even when omitted.
        assert_eq!(replication["default"]["n"], 3);
    }

    /// Evaluates the CRD's CEL rules on a cluster with this spec, as the API server would.
    fn cel_accepts(spec: DynamoClusterSpec) -> bool {
        kube::core::cel::validate_cel(&DynamoCluster::new("db", spec)).is_ok()
    }

    #[test]
    fn cel_rules_refuse_quorums_above_n_and_size_below_n() {
        // Dynamo §4.5: R and W are at most N, and N nodes must exist to hold N replicas.
        assert!(cel_accepts(spec(3)));
        let mut s = spec(5);
        s.replication = Replication { n: 5, r: 5, w: 1 };
        assert!(cel_accepts(s.clone()));
        s.replication.r = 6;
        assert!(!cel_accepts(s.clone()), "r > n");
        s.replication = Replication { n: 3, r: 2, w: 4 };
        assert!(!cel_accepts(s), "w > n");
        assert!(!cel_accepts(spec(2)), "size < n");
        let mut s = spec(2);
        s.replication = Replication { n: 2, r: 1, w: 1 };
        assert!(cel_accepts(s));
    }

    #[test]
    fn cel_rules_refuse_names_the_derived_objects_cannot_carry() {
        let named = |name: &str| {
            kube::core::cel::validate_cel(&DynamoCluster::new(name, spec(3)))
                .map_err(|e| e.to_string())
        };
        assert!(named(&"a".repeat(MAX_NAME_LEN)).is_ok());
        let too_long = named(&"a".repeat(MAX_NAME_LEN + 1)).unwrap_err();
        assert!(too_long.contains("at most 52 characters"), "{too_long}");
        for bad in ["1db", "db-", "Db", "db.example"] {
            let refused = named(bad).unwrap_err();
            assert!(refused.contains("DNS label"), "{bad}: {refused}");
        }
        assert!(named("db-2").is_ok());
    }

    #[test]
    fn cel_rules_tie_partitioning_parameters_to_their_strategy() {
        let mut s = spec(3);
        s.partitioning.partitions = Some(1024);
        assert!(cel_accepts(s.clone()));
        s.partitioning.strategy = Strategy::RandomTokens;
        assert!(!cel_accepts(s.clone()), "partitions with random-tokens");
        s.partitioning.partitions = None;
        s.partitioning.tokens_per_weight = Some(64);
        assert!(cel_accepts(s.clone()));
        s.partitioning.strategy = Strategy::EqualPartitions;
        assert!(!cel_accepts(s), "tokensPerWeight with equal-partitions");
    }

    /// Evaluates the CRD's CEL rules on an update from `old` to `new`, as the API
    /// server would; the refusal's text when refused.
    fn cel_update(old: DynamoClusterSpec, new: DynamoClusterSpec) -> Result<(), String> {
        kube::core::cel::validate_cel_update(
            &DynamoCluster::new("db", new),
            &DynamoCluster::new("db", old),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn cel_transition_rules_refuse_what_a_live_cluster_cannot_change() {
        let old = spec(5);
        // What a live cluster can change: size, quorums, weights, durability, ...
        let mut new = old.clone();
        new.size = 7;
        new.replication.r = 1;
        new.replication.w = 3;
        new.weights.default = 2;
        new.durability = Durability::Buffered;
        new.node_config.insert("log".into(), "debug".into());
        // Volumes grow in place (the operator expands the claims), in any unit.
        new.storage.size = "10240Mi".into();
        assert_eq!(cel_update(old.clone(), new.clone()), Ok(()));
        new.storage.size = "11Gi".into();
        assert_eq!(cel_update(old.clone(), new), Ok(()));
        // What it cannot, each with a message saying what to do instead.
        let refused = |change: &dyn Fn(&mut DynamoClusterSpec), message: &str| {
            let mut new = old.clone();
            change(&mut new);
            let refusal = cel_update(old.clone(), new).unwrap_err();
            assert!(refusal.contains(message), "{refusal}");
            assert!(refusal.contains("create a new cluster"), "{refusal}");
        };
        refused(&|s| s.replication.n = 5, "replication.n cannot change");
        refused(
            &|s| s.partitioning.partitions = Some(512),
            "partitioning cannot change",
        );
        refused(
            &|s| s.partitioning.strategy = Strategy::RandomTokens,
            "partitioning cannot change",
        );
        refused(
            &|s| s.storage.size = "5Gi".into(),
            "storage.size can only grow",
        );
        refused(
            &|s| s.storage.size = "10000Mi".into(),
            "storage.size can only grow",
        );
        refused(
            &|s| s.storage.storage_class_name = Some("fast".into()),
            "storage.storageClassName cannot change",
        );
        let mut classed = old.clone();
        classed.storage.storage_class_name = Some("fast".into());
        let mut other = classed.clone();
        other.storage.storage_class_name = Some("slow".into());
        assert!(cel_update(classed.clone(), other).is_err());
        assert_eq!(cel_update(classed.clone(), classed), Ok(()));
    }

    #[test]
    fn validate_refuses_what_the_schema_refuses() {
        let mut s = spec(3);
        s.replication.r = 4;
        assert!(matches!(s.validate(), Err(SpecError::Replication { .. })));
        let mut s = spec(2);
        assert_eq!(
            s.validate(),
            Err(SpecError::SizeBelowReplication { size: 2, n: 3 })
        );
        s.size = 0;
        assert_eq!(s.validate(), Err(SpecError::Size(0)));
        s.size = MAX_SIZE + 1;
        assert_eq!(s.validate(), Err(SpecError::Size(1001)));
        let mut s = spec(3);
        s.weights.overrides.insert("01".into(), 2);
        assert_eq!(s.validate(), Err(SpecError::OverrideKey("01".into())));
        let mut s = spec(3);
        s.weights.default = 0;
        assert_eq!(s.validate(), Err(SpecError::Weight(0)));
    }

    /// What the API server refuses by the schema alone (no CEL): an absurd size, a
    /// signed or malformed quantity, a Secret name that is no DNS subdomain.
    #[test]
    fn the_schema_bounds_sizes_quantities_and_secret_names() {
        let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["size"]["maximum"].as_f64(), Some(1000.0));
        let pattern = |schema: &serde_json::Value| {
            regex::Regex::new(schema["pattern"].as_str().expect("a pattern")).unwrap()
        };
        let quantity = pattern(&spec["properties"]["storage"]["properties"]["size"]);
        for good in ["10Gi", "1.5Ti", "500M", "1000"] {
            assert!(quantity.is_match(good), "{good}");
        }
        for bad in ["-5Gi", "+5Gi", "5 Gi", "5gi", "1e3", ""] {
            assert!(!quantity.is_match(bad), "{bad}");
        }
        assert_eq!(
            spec["properties"]["weights"]["properties"]["storagePerWeight"]["pattern"],
            spec["properties"]["storage"]["properties"]["size"]["pattern"]
        );
        let secret = pattern(&spec["properties"]["adminTokenSecret"]);
        for good in ["db-admin", "db.admin", "a"] {
            assert!(secret.is_match(good), "{good}");
        }
        for bad in ["Db-admin", "db_admin", "-db", "db-", "db..admin"] {
            assert!(!secret.is_match(bad), "{bad}");
        }
        assert_eq!(spec["properties"]["adminTokenSecret"]["maxLength"], 253);
        assert_eq!(
            spec["properties"]["tls"]["properties"]["secretName"]["pattern"],
            spec["properties"]["adminTokenSecret"]["pattern"]
        );
    }

    #[test]
    fn the_crd_rule_refuses_exactly_the_managed_keys() {
        let listed: Vec<&str> = MANAGED_NODE_KEYS_RULE
            .split('\'')
            .skip(1)
            .step_by(2)
            .collect();
        assert_eq!(listed, MANAGED_NODE_KEYS);
    }

    #[test]
    fn node_config_takes_node_settings_and_refuses_managed_unknown_or_bad_ones() {
        let with = |entries: &[(&str, &str)]| {
            let mut s = spec(3);
            s.node_config = entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            s.validate()
        };
        assert_eq!(
            with(&[
                ("max-connections", "4096"),
                ("max-inflight-requests", "2048"),
                ("client-read-timeout", "30s"),
                ("tombstone-grace", "48h"),
                ("log", "debug"),
            ]),
            Ok(())
        );
        assert_eq!(
            with(&[("listen", "0.0.0.0:9000")]),
            Err(SpecError::ManagedNodeKey("listen".into()))
        );
        assert_eq!(
            with(&[("durability", "buffered")]),
            Err(SpecError::ManagedNodeKey("durability".into()))
        );
        let unknown = with(&[("max-conections", "10")]).unwrap_err().to_string();
        assert!(unknown.contains("max-conections"), "{unknown}");
        let out_of_range = with(&[("max-connections", "15")]).unwrap_err().to_string();
        assert!(
            out_of_range.contains("max-connections is 15; allowed are 16..=1000000"),
            "{out_of_range}"
        );
        let bad_duration = with(&[("client-read-timeout", "soon")])
            .unwrap_err()
            .to_string();
        assert!(
            bad_duration.contains("client-read-timeout"),
            "{bad_duration}"
        );
    }

    fn with_cpu(mut s: DynamoClusterSpec, cpu: &str) -> DynamoClusterSpec {
        s.weights.from_resources = true;
        s.resources = Some(ResourceRequirements {
            requests: Some([("cpu".to_owned(), Quantity(cpu.to_owned()))].into()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn weights_prefer_override_then_resources_then_default() {
        // Dynamo §4.2: more capable machines get more virtual nodes.
        let mut s = spec(3);
        s.weights.default = 2;
        s.weights.overrides.insert("1".into(), 7);
        assert_eq!(s.weight_of(0), Ok(2));
        assert_eq!(s.weight_of(1), Ok(7));
        let s = with_cpu(s, "2500m");
        assert_eq!(s.weight_of(0), Ok(3));
        assert_eq!(s.weight_of(1), Ok(7));
    }

    #[test]
    fn cpu_quantities_round_up_to_whole_cores() {
        for (cpu, weight) in [("1", 1), ("2", 2), ("100m", 1), ("1.5", 2), ("4000m", 4)] {
            assert_eq!(with_cpu(spec(3), cpu).weight_of(0), Ok(weight), "{cpu}");
        }
        for cpu in ["", "m", "1Ki", "-1", "1e3", "abc", "1.2.3"] {
            assert_eq!(
                with_cpu(spec(3), cpu).weight_of(0),
                Err(SpecError::CpuQuantity(cpu.into())),
                "{cpu}"
            );
        }
        let mut s = spec(3);
        s.weights.from_resources = true;
        assert_eq!(s.weight_of(0), Err(SpecError::NoCpuRequest));
    }

    fn with_storage(mut s: DynamoClusterSpec, size: &str, per_weight: &str) -> DynamoClusterSpec {
        s.weights.from_resources = true;
        s.storage.size = size.to_owned();
        s.weights.storage_per_weight = Some(per_weight.to_owned());
        s
    }

    #[test]
    fn weights_derive_from_volume_size_and_the_scarcer_resource_wins() {
        // Dynamo §4.2: a node's share of the ring follows its capacity. Storage alone:
        // one unit per `storagePerWeight`, rounded up.
        for (size, per_weight, weight) in [
            ("10Gi", "5Gi", 2),
            ("10Gi", "3Gi", 4),
            ("1Gi", "100Gi", 1),
            ("1Ti", "1Gi", 1024),
        ] {
            let s = with_storage(spec(3), size, per_weight);
            assert_eq!(s.weight_of(0), Ok(weight), "{size} / {per_weight}");
            assert_eq!(s.validate(), Ok(()));
        }
        // CPU and storage: the smaller, so a big-CPU pod with a small disk does not take
        // more data than it can hold, nor the reverse.
        let s = with_storage(with_cpu(spec(3), "8"), "10Gi", "5Gi");
        assert_eq!(s.weight_of(0), Ok(2));
        let s = with_storage(with_cpu(spec(3), "1500m"), "100Gi", "5Gi");
        assert_eq!(s.weight_of(0), Ok(2));
        // An override still wins.
        let mut s = with_storage(spec(3), "10Gi", "5Gi");
        s.weights.overrides.insert("2".into(), 9);
        assert_eq!((s.weight_of(1), s.weight_of(2)), (Ok(2), Ok(9)));
    }

    #[test]
    fn storage_weights_refuse_bad_quantities_and_units_past_the_limit() {
        for (size, per_weight, field) in [
            ("10Gi", "0", "weights.storagePerWeight"),
            ("10Gi", "lots", "weights.storagePerWeight"),
            ("10Gi", "-1Gi", "weights.storagePerWeight"),
            ("big", "1Gi", "storage.size"),
        ] {
            let bad = if field == "storage.size" {
                size
            } else {
                per_weight
            };
            assert_eq!(
                with_storage(spec(3), size, per_weight).weight_of(0),
                Err(SpecError::StorageQuantity {
                    field,
                    quantity: bad.into()
                }),
                "{size} / {per_weight}"
            );
        }
        // 1 TiB at 1 MiB per unit is 1048576 units, above the node's MAX_WEIGHT.
        assert_eq!(
            with_storage(spec(3), "1Ti", "1Mi").validate(),
            Err(SpecError::Weight(1 << 20))
        );
    }

    #[test]
    fn storage_per_weight_needs_from_resources() {
        let mut s = spec(3);
        s.weights.storage_per_weight = Some("5Gi".into());
        assert_eq!(s.validate(), Err(SpecError::StoragePerWeightUnused));
        // The planner's path refuses it too (an object from before the rule).
        assert_eq!(s.weight_of(0), Err(SpecError::StoragePerWeightUnused));
        assert!(!cel_accepts(s.clone()), "the schema refuses it too");
        s.weights.from_resources = true;
        assert_eq!(s.validate(), Ok(()));
        assert!(cel_accepts(s));
        let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
        let weights = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["weights"];
        assert!(
            weights["properties"]["storagePerWeight"]["description"]
                .as_str()
                .unwrap()
                .contains("fromResources")
        );
    }

    #[test]
    fn millicores_parse_fractions() {
        assert_eq!(cpu_millicores("0.25"), Ok(250));
        assert_eq!(cpu_millicores(".5"), Ok(500));
        assert_eq!(cpu_millicores("0.0001"), Ok(1));
        assert_eq!(cpu_millicores("1.5m"), Ok(2));
    }

    proptest! {
        #[test]
        fn cpu_parser_never_panics(s in "\\PC{0,20}") {
            let _ = cpu_millicores(&s);
        }

        #[test]
        fn whole_millicores_round_trip(m in 0u64..10_000_000) {
            prop_assert_eq!(cpu_millicores(&format!("{m}m")), Ok(m));
            prop_assert_eq!(cpu_millicores(&format!("{}.{:03}", m / 1000, m % 1000)), Ok(m));
        }
    }
}
