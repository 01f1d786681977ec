//! The unchecked layer: every key optional, exactly as one source (flags, environment or
//! file) gave it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::settings::{Durability, ReadFanout, constant_time_eq};
use dynamo_core::NodeId;
use dynamo_core::version::Reconciliation;

/// What [`AdminToken`]'s `Debug` and every configuration printout show instead of it.
pub const REDACTED: &str = "<redacted>";

/// The settings one source gave, before defaults and validation.
///
/// One struct serves all three sources, so a YAML key, a flag and an environment
/// variable cannot drift apart: the key `read-quorum` is the flag `--read-quorum` and the
/// variable `DYNAMO_READ_QUORUM`. Layers combine with [`RawConfig::or`]; the
/// [`NodeConfig`](super::NodeConfig) built from the result with `TryFrom` fills in
/// defaults and checks everything.
///
/// Unknown YAML keys are rejected (`deny_unknown_fields`) so a misspelt key is an error,
/// not a silently ignored setting. Serializing shows [`REDACTED`] for `admin-token`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// This node's stable id, the pod name in Kubernetes (required).
    #[arg(long, env = "DYNAMO_NODE_ID", value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,

    /// Client API (gRPC `Kv`) listen address [default: 127.0.0.1:7000].
    #[arg(long, env = "DYNAMO_LISTEN", value_name = "IP:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// Node-to-node (gRPC `Replica`, `Admin`) listen address [default: listen's IP, port + 1].
    #[arg(long, env = "DYNAMO_INTERNODE_LISTEN", value_name = "IP:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internode_listen: Option<SocketAddr>,

    /// HTTP listen address for /metrics, /healthz and /readyz [default: off].
    #[arg(long, env = "DYNAMO_HTTP_LISTEN", value_name = "IP:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,

    /// The host:port peers use to reach the internode listener [default: internode-listen].
    #[arg(long, env = "DYNAMO_ADVERTISE", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,

    /// The host:port clients use to reach the client listener, gossiped so
    /// partition-aware clients can route [default: advertise's host with listen's port,
    /// or the bound client address].
    #[arg(long, env = "DYNAMO_ADVERTISE_CLIENT", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_client: Option<String>,

    /// The node's failure domain (a data center, an availability zone, a rack): a key's
    /// replicas spread over as many zones as there are (Dynamo §4.2). Letters, digits,
    /// '-', '_' and '.', at most 63 [default: none].
    #[arg(long, env = "DYNAMO_ZONE", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,

    /// Directory of the sled database (required with storage: sled).
    #[arg(long, env = "DYNAMO_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// Seed nodes' internode host:port, comma-separated or repeated (Dynamo §4.8.2).
    #[arg(
        long,
        env = "DYNAMO_SEEDS",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<String>>,

    /// Replicas per key, N (Dynamo §4.3) [default: 3].
    #[arg(long, env = "DYNAMO_REPLICATION_FACTOR", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,

    /// Replies a read waits for, R (Dynamo §4.5) [default: 2].
    #[arg(long, env = "DYNAMO_READ_QUORUM", value_name = "R")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_quorum: Option<u32>,

    /// Acknowledgements a write waits for, W (Dynamo §4.5) [default: 2].
    #[arg(long, env = "DYNAMO_WRITE_QUORUM", value_name = "W")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_quorum: Option<u32>,

    /// This node's relative capacity, in virtual nodes (Dynamo §4.2) [default: 1].
    #[arg(long, env = "DYNAMO_WEIGHT", value_name = "WEIGHT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,

    /// Partitioning strategy (Dynamo §6.2) [default: equal-partitions].
    #[arg(long, env = "DYNAMO_PARTITIONING", value_name = "STRATEGY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitioning: Option<Partitioning>,

    /// Tokens per unit of weight, with random-tokens [default: 256].
    #[arg(long, env = "DYNAMO_TOKENS_PER_WEIGHT", value_name = "COUNT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_weight: Option<u32>,

    /// Number of equal partitions Q, with equal-partitions [default: 256].
    #[arg(long, env = "DYNAMO_PARTITIONS", value_name = "Q")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,

    /// Storage engine [default: sled].
    #[arg(long, env = "DYNAMO_STORAGE", value_name = "ENGINE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageKind>,

    /// Write durability (Dynamo §6.1) [default: sync].
    #[arg(long, env = "DYNAMO_DURABILITY", value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<DurabilityMode>,

    /// How concurrent writes of a key reconcile, the same on every node of a cluster:
    /// `siblings` (a read returns every concurrent version; the client merges them and
    /// writes back with the read's context) or `last-write-wins` (a put keeps one value,
    /// the one with the latest timestamp; wall-clock skew between nodes can let an
    /// earlier write win) [default: siblings].
    #[arg(long, env = "DYNAMO_RECONCILIATION", value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciliation: Option<ReconciliationMode>,

    /// How many replicas a get asks at first: `all` N (Dynamo §4.5) or `quorum` (R
    /// first, more only on a failure, a slow read or disagreement) [default: all].
    #[arg(long, env = "DYNAMO_READ_FANOUT", value_name = "FANOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_fanout: Option<ReadFanout>,

    /// How often buffered writes are flushed to disk, e.g. 500ms [default: 500ms].
    #[arg(long, env = "DYNAMO_FLUSH_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub flush_interval: Option<Duration>,

    /// How long a coordinator waits for R or W replies, e.g. 2s [default: 2s].
    #[arg(long, env = "DYNAMO_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_timeout: Option<Duration>,

    /// Time between gossip rounds (Dynamo §4.8.1) [default: 1s].
    #[arg(long, env = "DYNAMO_GOSSIP_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub gossip_interval: Option<Duration>,

    /// Time between range transfer rounds (join and leave hand-over) [default: 250ms].
    #[arg(long, env = "DYNAMO_TRANSFER_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub transfer_interval: Option<Duration>,

    /// How long a range transfer's peer may fail (down, unreachable) before it is
    /// worked around, in both directions: the ranges a stalled source hands over are
    /// copied from N - W + 1 other replicas of each range, and the ranges a leaving
    /// node pushes to a stalled destination go to W other new replicas of each range
    /// (the destination is repaired later by anti-entropy); the time survives a
    /// restart of the node; 0s never works around a peer [default: 60s].
    #[arg(long, env = "DYNAMO_TRANSFER_SOURCE_STALL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub transfer_source_stall: Option<Duration>,

    /// Most key and state bytes one range transfer round sends [default: 4194304].
    #[arg(long, env = "DYNAMO_TRANSFER_BATCH_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_batch_bytes: Option<u64>,

    /// Most keys one range transfer round sends [default: 4096].
    #[arg(long, env = "DYNAMO_TRANSFER_BATCH_KEYS", value_name = "COUNT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_batch_keys: Option<u64>,

    /// Largest accepted key, in bytes [default: 1024].
    #[arg(long, env = "DYNAMO_MAX_KEY_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_key_bytes: Option<u32>,

    /// Largest accepted value, in bytes [default: 1048576].
    #[arg(long, env = "DYNAMO_MAX_VALUE_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<u32>,

    /// Most concurrent versions (siblings) kept per key [default: 100].
    #[arg(long, env = "DYNAMO_MAX_SIBLINGS", value_name = "COUNT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_siblings: Option<u32>,

    /// Most connections each listener (client gRPC, internode gRPC, HTTP) serves at
    /// once; past it a connection is closed at once (HTTP: `503` first). Lowered at
    /// start to what the open-files limit leaves room for [default: 1024].
    #[arg(long, env = "DYNAMO_MAX_CONNECTIONS", value_name = "COUNT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,

    /// Most client requests (gRPC `Kv` and HTTP `/v1/kv`) served at once; past it a
    /// request is refused at once with UNAVAILABLE or `503` and a retry hint, instead of
    /// queueing [default: 1024].
    #[arg(long, env = "DYNAMO_MAX_INFLIGHT_REQUESTS", value_name = "COUNT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_requests: Option<u32>,

    /// How long a client may take to send what it must: a new connection's first bytes
    /// (every listener), and over HTTP a request's headers and then its body
    /// [default: 10s].
    #[arg(long, env = "DYNAMO_CLIENT_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_read_timeout: Option<Duration>,

    /// Background work units (hints delivered, ...) allowed per interval at most
    /// (Dynamo §6.5) [default: 1000].
    #[arg(long, env = "DYNAMO_BACKGROUND_BUDGET", value_name = "UNITS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_budget: Option<u32>,

    /// Background work units per interval at least, however slow the foreground
    /// [default: 10].
    #[arg(long, env = "DYNAMO_BACKGROUND_BUDGET_MIN", value_name = "UNITS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_budget_min: Option<u32>,

    /// How often the background budget refills and adapts, in ms [default: 1000].
    #[arg(long, env = "DYNAMO_BACKGROUND_INTERVAL_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_interval_ms: Option<u32>,

    /// Foreground p99 above which the background budget shrinks, in ms [default: 100].
    #[arg(long, env = "DYNAMO_BACKGROUND_LATENCY_TARGET_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_latency_target_ms: Option<u32>,

    /// How much foreground history the p99 covers, in ms [default: 10000].
    #[arg(long, env = "DYNAMO_BACKGROUND_LATENCY_WINDOW_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_latency_window_ms: Option<u32>,

    /// Bearer token the Admin API requires [default: none, Admin API open].
    #[arg(long, env = "DYNAMO_ADMIN_TOKEN", value_name = "TOKEN")]
    #[serde(
        serialize_with = "serialize_redacted",
        skip_serializing_if = "Option::is_none"
    )]
    pub admin_token: Option<AdminToken>,

    /// TLS certificate (PEM) for every listener (gRPC and HTTP); needs tls-key.
    #[arg(long, env = "DYNAMO_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM); needs tls-cert.
    #[arg(long, env = "DYNAMO_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM) that peers' certificates must chain to; needs tls-cert and tls-key.
    #[arg(long, env = "DYNAMO_TLS_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,

    /// Name a peer's certificate must carry (a DNS subject alternative name, or the
    /// subject CN) for its `Replica` calls to be accepted under mutual TLS, which tells
    /// node certificates from admin client certificates signed by the same CA; needs
    /// tls-ca [default: the first DNS name of this node's own certificate].
    #[arg(long, env = "DYNAMO_TLS_NODE_NAME", value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_node_name: Option<String>,

    /// File holding the cluster's internode secret: every `Replica` call (gossip,
    /// replica reads and writes, transfer, anti-entropy, purge) must present it. One
    /// token per line: the first is sent, every line is accepted, so a new secret can
    /// be rolled in beside the old one.
    #[arg(long, env = "DYNAMO_INTERNODE_TOKEN_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internode_token_file: Option<PathBuf>,

    /// Serve `Replica` on a non-loopback address without internode authentication
    /// (neither internode-token-file nor tls-ca): anyone who reaches the port can then
    /// read, overwrite and delete every key and rewrite the membership [default: false].
    #[arg(
        long,
        env = "DYNAMO_INSECURE_INTERNODE",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_internode: Option<bool>,

    /// Time between anti-entropy rounds (Dynamo §4.7); 0s disables anti-entropy and its
    /// Merkle trees [default: 30s].
    #[arg(long, env = "DYNAMO_ANTI_ENTROPY_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub anti_entropy_interval: Option<Duration>,

    /// Most keys one anti-entropy round repairs or purges [default: 10000].
    #[arg(long, env = "DYNAMO_ANTI_ENTROPY_MAX_KEYS", value_name = "COUNT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_entropy_max_keys: Option<u32>,

    /// Most state bytes one anti-entropy round moves [default: 67108864].
    #[arg(long, env = "DYNAMO_ANTI_ENTROPY_MAX_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_entropy_max_bytes: Option<u32>,

    /// How old a delete (tombstone) must be before it may be purged (once every member
    /// answers and no member holds a live copy outside the key's replicas); hints older
    /// than three quarters of it are dropped instead of delivered, and node clocks must
    /// agree within a quarter of it [default: 24h].
    #[arg(long, env = "DYNAMO_TOMBSTONE_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub tombstone_grace: Option<Duration>,

    /// Log filter, e.g. info or dynamo_node=debug,info [default: info].
    #[arg(long, env = "DYNAMO_LOG", value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl RawConfig {
    /// Reads a YAML mapping with the same keys as the flags. An empty document (or one
    /// of comments only) sets nothing.
    ///
    /// # Errors
    /// [`YamlError::Document`] for text that is not a YAML mapping;
    /// [`YamlError::Key`], naming the key, for an unknown key or a value its setting
    /// cannot take (a bad enum value comes with the allowed ones).
    pub fn from_yaml(text: &str) -> Result<Self, YamlError> {
        // An empty document is YAML null; reading an Option accepts it.
        let Some(mapping) = serde_yaml::from_str::<Option<serde_yaml::Mapping>>(text)
            .map_err(YamlError::Document)?
        else {
            return Ok(Self::default());
        };
        // Each key on its own, so an error names the key: serde's messages for a bad
        // value ("invalid socket address syntax") do not.
        let mut config = Self::default();
        for (key, value) in mapping {
            let name = match key.as_str() {
                Some(name) => name.to_owned(),
                None => format!("{key:?}"),
            };
            let single = serde_yaml::Mapping::from_iter([(key, value)]);
            let setting: Self = serde_yaml::from_value(serde_yaml::Value::Mapping(single))
                .map_err(|error| YamlError::Key { key: name, error })?;
            config = setting.or(config);
        }
        Ok(config)
    }

    /// Each key from `self` if set there, else from `fallback`: layering, highest
    /// precedence first (`flags.or(env).or(file)`). A list (`seeds`) is replaced as a
    /// whole, never merged.
    #[must_use]
    pub fn or(self, fallback: RawConfig) -> RawConfig {
        RawConfig {
            node_id: self.node_id.or(fallback.node_id),
            listen: self.listen.or(fallback.listen),
            internode_listen: self.internode_listen.or(fallback.internode_listen),
            http_listen: self.http_listen.or(fallback.http_listen),
            advertise: self.advertise.or(fallback.advertise),
            advertise_client: self.advertise_client.or(fallback.advertise_client),
            zone: self.zone.or(fallback.zone),
            data_dir: self.data_dir.or(fallback.data_dir),
            seeds: self.seeds.or(fallback.seeds),
            replication_factor: self.replication_factor.or(fallback.replication_factor),
            read_quorum: self.read_quorum.or(fallback.read_quorum),
            write_quorum: self.write_quorum.or(fallback.write_quorum),
            weight: self.weight.or(fallback.weight),
            partitioning: self.partitioning.or(fallback.partitioning),
            tokens_per_weight: self.tokens_per_weight.or(fallback.tokens_per_weight),
            partitions: self.partitions.or(fallback.partitions),
            storage: self.storage.or(fallback.storage),
            durability: self.durability.or(fallback.durability),
            read_fanout: self.read_fanout.or(fallback.read_fanout),
            reconciliation: self.reconciliation.or(fallback.reconciliation),
            flush_interval: self.flush_interval.or(fallback.flush_interval),
            request_timeout: self.request_timeout.or(fallback.request_timeout),
            gossip_interval: self.gossip_interval.or(fallback.gossip_interval),
            transfer_interval: self.transfer_interval.or(fallback.transfer_interval),
            transfer_source_stall: self
                .transfer_source_stall
                .or(fallback.transfer_source_stall),
            transfer_batch_bytes: self.transfer_batch_bytes.or(fallback.transfer_batch_bytes),
            transfer_batch_keys: self.transfer_batch_keys.or(fallback.transfer_batch_keys),
            max_key_bytes: self.max_key_bytes.or(fallback.max_key_bytes),
            max_value_bytes: self.max_value_bytes.or(fallback.max_value_bytes),
            max_siblings: self.max_siblings.or(fallback.max_siblings),
            max_connections: self.max_connections.or(fallback.max_connections),
            max_inflight_requests: self
                .max_inflight_requests
                .or(fallback.max_inflight_requests),
            client_read_timeout: self.client_read_timeout.or(fallback.client_read_timeout),
            background_budget: self.background_budget.or(fallback.background_budget),
            background_budget_min: self
                .background_budget_min
                .or(fallback.background_budget_min),
            background_interval_ms: self
                .background_interval_ms
                .or(fallback.background_interval_ms),
            background_latency_target_ms: self
                .background_latency_target_ms
                .or(fallback.background_latency_target_ms),
            background_latency_window_ms: self
                .background_latency_window_ms
                .or(fallback.background_latency_window_ms),
            admin_token: self.admin_token.or(fallback.admin_token),
            tls_cert: self.tls_cert.or(fallback.tls_cert),
            tls_key: self.tls_key.or(fallback.tls_key),
            tls_ca: self.tls_ca.or(fallback.tls_ca),
            tls_node_name: self.tls_node_name.or(fallback.tls_node_name),
            internode_token_file: self.internode_token_file.or(fallback.internode_token_file),
            insecure_internode: self.insecure_internode.or(fallback.insecure_internode),
            log: self.log.or(fallback.log),
            anti_entropy_interval: self
                .anti_entropy_interval
                .or(fallback.anti_entropy_interval),
            anti_entropy_max_keys: self
                .anti_entropy_max_keys
                .or(fallback.anti_entropy_max_keys),
            anti_entropy_max_bytes: self
                .anti_entropy_max_bytes
                .or(fallback.anti_entropy_max_bytes),
            tombstone_grace: self.tombstone_grace.or(fallback.tombstone_grace),
        }
    }
}

/// Why a YAML config document was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum YamlError {
    /// The text is not YAML, or not a mapping of keys to values.
    #[error("{0}")]
    Document(serde_yaml::Error),
    /// A key is unknown, or its value is not one its setting can take.
    #[error("{key}: {error}")]
    Key {
        /// The key as written.
        key: String,
        /// What is wrong.
        error: serde_yaml::Error,
    },
}

/// The partitioning strategies of Dynamo §6.2, by name; the parameters are the keys
/// `tokens-per-weight` and `partitions`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Partitioning {
    /// Strategy 1: random tokens per unit of weight.
    RandomTokens,
    /// Strategy 3: `Q` equal partitions, shared out by weight.
    #[default]
    EqualPartitions,
}

/// Which storage engine holds the node's data.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum StorageKind {
    /// sled on disk, under `data-dir`.
    #[default]
    Sled,
    /// Memory only: everything is lost when the process ends (tests, caches).
    Memory,
}

/// The `reconciliation` key: the name of a [`Reconciliation`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ReconciliationMode {
    /// Every concurrent version is kept and returned; the client reconciles.
    #[default]
    Siblings,
    /// One value per key: the latest timestamp wins.
    LastWriteWins,
}

impl From<ReconciliationMode> for Reconciliation {
    fn from(mode: ReconciliationMode) -> Self {
        match mode {
            ReconciliationMode::Siblings => Reconciliation::Siblings,
            ReconciliationMode::LastWriteWins => Reconciliation::LastWriteWins,
        }
    }
}

impl From<Reconciliation> for ReconciliationMode {
    fn from(mode: Reconciliation) -> Self {
        match mode {
            Reconciliation::Siblings => ReconciliationMode::Siblings,
            Reconciliation::LastWriteWins => ReconciliationMode::LastWriteWins,
        }
    }
}

/// The `durability` key: the name of a [`Durability`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityMode {
    /// Every write is on disk (`fdatasync`ed, group-committed) before it is
    /// acknowledged.
    #[default]
    Sync,
    /// Writes go to memory and are flushed every `flush-interval` (Dynamo §6.1).
    Buffered,
}

impl From<DurabilityMode> for Durability {
    fn from(mode: DurabilityMode) -> Self {
        match mode {
            DurabilityMode::Sync => Durability::Sync,
            DurabilityMode::Buffered => Durability::Buffered,
        }
    }
}

impl From<Durability> for DurabilityMode {
    fn from(durability: Durability) -> Self {
        match durability {
            Durability::Sync => DurabilityMode::Sync,
            Durability::Buffered => DurabilityMode::Buffered,
        }
    }
}

/// The longest accepted admin token, in bytes.
pub const MAX_ADMIN_TOKEN_LEN: usize = 1024;

/// A secret that callers of the Admin API must present. Its `Debug` shows
/// [`REDACTED`], so it cannot leak through a logged config.
///
/// Any string converts into one; [`NodeConfig`](super::NodeConfig) validation accepts
/// only 1 to [`MAX_ADMIN_TOKEN_LEN`] bytes of printable ASCII without spaces (what a
/// gRPC metadata value can carry), and its error messages never include the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The secret itself, for the server's authentication check.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token, in time that depends only on the lengths, so
    /// response timing does not reveal how much of a guess was right.
    pub fn verify(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), presented)
    }

    /// Why the token is unusable, if it is.
    pub(super) fn problem(&self) -> Option<&'static str> {
        if self.0.is_empty() {
            Some("is empty")
        } else if self.0.len() > MAX_ADMIN_TOKEN_LEN {
            Some("is longer than 1024 bytes")
        } else if !self.0.bytes().all(|b| b.is_ascii_graphic()) {
            Some("may only hold printable ASCII without spaces")
        } else {
            None
        }
    }
}

impl From<String> for AdminToken {
    fn from(token: String) -> Self {
        Self(token)
    }
}

impl std::str::FromStr for AdminToken {
    type Err = std::convert::Infallible;
    fn from_str(token: &str) -> Result<Self, Self::Err> {
        Ok(Self(token.to_owned()))
    }
}

impl<'de> Deserialize<'de> for AdminToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({REDACTED})")
    }
}

fn serialize_redacted<S: Serializer>(
    _token: &Option<AdminToken>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(REDACTED)
}

/// Parses a human-readable duration such as `500ms`, `2s` or `1m 30s`.
fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Durations as humantime text (`500ms`, `2s`) in YAML, both ways.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => {
                serializer.serialize_str(&humantime::format_duration(*duration).to_string())
            }
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            de::Error::custom(format_args!(
                "invalid duration {text:?} ({e}); write e.g. 500ms or 2s"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_keys_are_the_flag_names_in_kebab_case() {
        let raw = RawConfig::from_yaml(
            "node-id: n1\nread-quorum: 1\nflush-interval: 250ms\nseeds: [a:7001, b:7001]\n\
             partitioning: random-tokens\nstorage: memory\ndurability: buffered\n",
        )
        .unwrap();
        assert_eq!(raw.node_id, Some(NodeId::new("n1").unwrap()));
        assert_eq!(raw.read_quorum, Some(1));
        assert_eq!(raw.flush_interval, Some(Duration::from_millis(250)));
        assert_eq!(raw.seeds, Some(vec!["a:7001".into(), "b:7001".into()]));
        assert_eq!(raw.partitioning, Some(Partitioning::RandomTokens));
        assert_eq!(raw.storage, Some(StorageKind::Memory));
        assert_eq!(raw.durability, Some(DurabilityMode::Buffered));
    }

    #[test]
    fn empty_and_comment_only_documents_set_nothing() {
        assert_eq!(RawConfig::from_yaml("").unwrap(), RawConfig::default());
        assert_eq!(
            RawConfig::from_yaml("# nothing yet\n").unwrap(),
            RawConfig::default()
        );
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let err = RawConfig::from_yaml("node-id: n1\nreplicaton-factor: 3\n").unwrap_err();
        assert!(err.to_string().contains("replicaton-factor"), "{err}");
        // Snake case is not an alias: the keys are exactly the flag names.
        let err = RawConfig::from_yaml("read_quorum: 1\n").unwrap_err();
        assert!(err.to_string().contains("read_quorum"), "{err}");
    }

    #[test]
    fn bad_enum_values_list_the_allowed_ones() {
        let err = RawConfig::from_yaml("storage: rocksdb\n").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("rocksdb"), "{message}");
        assert!(
            message.contains("sled") && message.contains("memory"),
            "{message}"
        );
        let err = RawConfig::from_yaml("durability: eventually\n").unwrap_err();
        assert!(err.to_string().starts_with("durability: "), "{err}");
        assert!(err.to_string().contains("buffered"), "{err}");
        let err = RawConfig::from_yaml("read-fanout: some\n").unwrap_err();
        assert!(err.to_string().starts_with("read-fanout: "), "{err}");
        assert!(err.to_string().contains("quorum"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            ("listen: localhost\n", "listen: "),
            (
                "node-id: n1\ninternode-listen: 1.2.3.4\n",
                "internode-listen: ",
            ),
            ("node-id: 'a b'\n", "node-id: "),
            ("read-quorum: -1\n", "read-quorum: "),
            ("seeds: a:1\n", "seeds: "),
        ] {
            let err = RawConfig::from_yaml(yaml).unwrap_err();
            assert!(matches!(err, YamlError::Key { .. }), "{yaml:?}: {err}");
            assert!(err.to_string().starts_with(key), "{yaml:?}: {err}");
        }
    }

    #[test]
    fn documents_that_are_not_mappings_are_refused() {
        for yaml in [
            "just text",
            "- a\n- b\n",
            "a: [unclosed\n",
            "k: 1\nk: 2\n",
            "log: a\nlog: b\n",
        ] {
            assert!(RawConfig::from_yaml(yaml).is_err(), "{yaml:?}");
        }
    }

    #[test]
    fn durations_must_be_text_with_a_unit() {
        assert!(RawConfig::from_yaml("request-timeout: 2\n").is_err());
        let err = RawConfig::from_yaml("request-timeout: 2 parsecs\n").unwrap_err();
        assert!(err.to_string().contains("write e.g. 500ms"), "{err}");
    }

    #[test]
    fn or_prefers_self_and_replaces_lists_whole() {
        let high = RawConfig {
            read_quorum: Some(1),
            seeds: Some(vec!["a:1".into()]),
            ..RawConfig::default()
        };
        let low = RawConfig {
            read_quorum: Some(3),
            write_quorum: Some(3),
            seeds: Some(vec!["b:1".into(), "c:1".into()]),
            ..RawConfig::default()
        };
        let merged = high.or(low);
        assert_eq!(merged.read_quorum, Some(1));
        assert_eq!(merged.write_quorum, Some(3));
        assert_eq!(merged.seeds, Some(vec!["a:1".into()]));
    }

    #[test]
    fn admin_token_is_redacted_in_debug_and_yaml() {
        let raw = RawConfig {
            admin_token: Some(AdminToken::from("hunter2".to_owned())),
            ..RawConfig::default()
        };
        let debug = format!("{raw:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains(REDACTED),
            "{debug}"
        );
        let yaml = serde_yaml::to_string(&raw).unwrap();
        assert!(
            !yaml.contains("hunter2") && yaml.contains(REDACTED),
            "{yaml}"
        );
    }

    #[test]
    fn admin_token_verify_compares_whole_tokens() {
        let token = AdminToken::from("s3cret".to_owned());
        assert!(token.verify(b"s3cret"));
        assert!(!token.verify(b"s3cre"));
        assert!(!token.verify(b"s3cret!"));
        assert!(!token.verify(b"S3cret"));
        assert!(!token.verify(b""));
    }

    #[test]
    fn admin_token_problems() {
        let problem = |t: &str| AdminToken::from(t.to_owned()).problem();
        assert_eq!(problem("ok-token_1"), None);
        assert_eq!(problem(""), Some("is empty"));
        assert!(problem("two words").is_some());
        assert!(problem(&"x".repeat(MAX_ADMIN_TOKEN_LEN + 1)).is_some());
        assert_eq!(problem(&"x".repeat(MAX_ADMIN_TOKEN_LEN)), None);
    }

    #[test]
    fn durability_names_map_both_ways() {
        for mode in [DurabilityMode::Sync, DurabilityMode::Buffered] {
            assert_eq!(DurabilityMode::from(Durability::from(mode)), mode);
        }
    }
}
