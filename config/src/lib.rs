//! The node's configuration: flags, `DYNAMO_*` environment variables and a YAML file,
//! merged and checked once.
//!
//! Part of the I/O shell, but with its I/O at the edges: [`load_from_args`] takes the
//! arguments and an environment lookup as parameters, and reads only the config file
//! the arguments name. Everything else is pure.
//!
//! Every setting has one name used everywhere: the YAML key `read-quorum`, the flag
//! `--read-quorum` and the variable `DYNAMO_READ_QUORUM`. Precedence is
//! flag > environment variable > config file (`--config FILE`) > default.
//!
//! The settings are the knobs the paper gives an operator: the replication factor `N`
//! and the quorum sizes `R` and `W` (Dynamo §4.5, "R + W > N yields a quorum-like
//! system", typically (3, 2, 2)), the node's weight in virtual nodes (§4.2), the
//! partitioning strategy (§6.2), seeds and the gossip period (§4.8), and the choice
//! between synchronous and buffered writes (§6.1).
//!
//! A [`NodeConfig`] is always valid: the only ways to make one are
//! `NodeConfig::try_from(RawConfig)` (which [`load_from_args`] and deserialization use),
//! and it refuses, with a [`ConfigError`] naming the key, anything the node could not
//! run with.
//!
//! ```
//! use dynamo_config::{RawConfig, NodeConfig};
//!
//! let yaml = "node-id: dynamo-0\nstorage: memory\nread-quorum: 1\n";
//! let config = NodeConfig::try_from(RawConfig::from_yaml(yaml).unwrap()).unwrap();
//! assert_eq!(config.read_quorum(), 1);
//! assert_eq!(config.write_quorum(), 2); // the default
//! assert_eq!(config.internode_listen().port(), 7001); // client port + 1
//!
//! let too_big = RawConfig::from_yaml("node-id: dynamo-0\nstorage: memory\nwrite-quorum: 4\n");
//! let err = NodeConfig::try_from(too_big.unwrap()).unwrap_err();
//! assert_eq!(err.to_string(), "write-quorum (4) is larger than replication-factor (3)");
//! ```

mod load;
mod raw;
pub mod settings;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use load::{Invocation, load_from_args};
pub use raw::{
    AdminToken, DurabilityMode, MAX_ADMIN_TOKEN_LEN, Partitioning, REDACTED, RawConfig,
    StorageKind, YamlError,
};

pub use dynamo_core::NodeId;
use dynamo_core::admission::{AdmissionConfig, AdmissionConfigError};
use dynamo_core::membership::{MAX_WEIGHT, check_address};
use dynamo_core::quorum::QuorumConfig;
use dynamo_core::ring::{MAX_VIRTUAL_NODES, PartitionStrategy, RingError};
use dynamo_core::version::SiblingLimits;
use settings::{
    AntiEntropyConfig, Durability, ReadFanout, ServingLimits, SledConfig, SledConfigError,
};

/// Default client API address: loopback, so a node exposes nothing until told to.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000));
/// Default replication factor `N` (Dynamo §4.5's common (3, 2, 2)).
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// Default read quorum `R`.
pub const DEFAULT_READ_QUORUM: u32 = 2;
/// Default write quorum `W`.
pub const DEFAULT_WRITE_QUORUM: u32 = 2;
pub use dynamo_core::limits::MAX_REPLICATION_FACTOR;
/// Default node weight.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Default tokens per unit of weight under strategy 1.
pub const DEFAULT_TOKENS_PER_WEIGHT: u32 = 256;
pub use settings::DEFAULT_FLUSH_INTERVAL;
/// Default coordinator timeout for R or W replies.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Default gossip period (Dynamo §4.8.1 gossips "every second").
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_secs(1);
/// Default time between range transfer rounds.
pub const DEFAULT_TRANSFER_INTERVAL: Duration = Duration::from_millis(250);
/// Default bytes per range transfer round.
pub const DEFAULT_TRANSFER_BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Default keys per range transfer round.
pub const DEFAULT_TRANSFER_BATCH_KEYS: u64 = 4096;
/// The largest accepted `transfer-batch-bytes` (1 GiB): a round's allowance, not a
/// message size (pages stay within the transport's limits).
pub const MAX_TRANSFER_BATCH_BYTES: u64 = 1 << 30;
/// The largest accepted `transfer-batch-keys`.
pub const MAX_TRANSFER_BATCH_KEYS: u64 = 1 << 24;
/// The longest accepted request timeout or gossip interval: longer is a unit mistake
/// (`2000s` for `2000ms`), not a setting.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Default largest key, in bytes.
pub const DEFAULT_MAX_KEY_BYTES: u32 = 1024;
/// The largest accepted `max-key-bytes`.
pub const MAX_KEY_BYTES_LIMIT: u32 = 64 * 1024;
/// Default largest value, in bytes (1 MiB; the paper's objects are "usually less than
/// 1 MB", Dynamo §2.1).
pub const DEFAULT_MAX_VALUE_BYTES: u32 = 1024 * 1024;
/// The largest accepted `max-value-bytes` (15.5 MiB): one value with the largest key
/// and its versioning must fit in what a key's state may take
/// ([`MAX_STATE_BYTES`](dynamo_core::limits::MAX_STATE_BYTES), one internode message), or it
/// could be written but never replicated. (It was 64 MiB, which no replica could
/// receive.)
pub const MAX_VALUE_BYTES_LIMIT: u32 = 31 * 512 * 1024;

// The value and key limits leave room for the state's clock and sibling headers.
const _: () = assert!(
    MAX_VALUE_BYTES_LIMIT as usize + MAX_KEY_BYTES_LIMIT as usize + 64 * 1024
        <= dynamo_core::limits::MAX_STATE_BYTES
);
/// Default most siblings kept per key.
pub const DEFAULT_MAX_SIBLINGS: u32 = 100;
/// The largest accepted `max-siblings`: the most a stored state may hold
/// ([`dynamo_core::version::MAX_SIBLINGS_LIMIT`]). It was 10,000 here while the node refused
/// more than 4096 at start, so a config `--check-config` passed could not run.
#[allow(
    clippy::cast_possible_truncation,
    reason = "4096 fits a u32; the assertion below keeps it so"
)]
pub const MAX_SIBLINGS_LIMIT: u32 = dynamo_core::version::MAX_SIBLINGS_LIMIT as u32;
const _: () = assert!(dynamo_core::version::MAX_SIBLINGS_LIMIT <= u32::MAX as usize);
/// Default most connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// The fewest accepted `max-connections`: probes, scrapes and peers need a few.
pub const MIN_MAX_CONNECTIONS: u32 = 16;
/// The most accepted `max-connections` and `max-inflight-requests`.
pub const MAX_CONNECTIONS_LIMIT: u32 = 1_000_000;
/// Default most client requests served at once.
pub const DEFAULT_MAX_INFLIGHT_REQUESTS: u32 = 1024;
/// Default time a client gets to send a connection's first bytes, a request's headers
/// or its body.
pub const DEFAULT_CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keys one anti-entropy round repairs.
pub const DEFAULT_ANTI_ENTROPY_MAX_KEYS: u32 = 10_000;
/// Default state bytes one anti-entropy round moves (64 MiB).
pub const DEFAULT_ANTI_ENTROPY_MAX_BYTES: u32 = 64 * 1024 * 1024;
/// The largest accepted `background-budget` and `background-budget-min`.
pub const MAX_BACKGROUND_BUDGET: u32 = 1_000_000_000;
/// The longest accepted background interval, latency target or window, in ms (1 h).
pub const MAX_BACKGROUND_MS: u32 = 3_600_000;
/// Default log filter.
pub const DEFAULT_LOG: &str = "info";

/// Why a configuration was refused. Each message names the offending key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The command line was refused by the argument parser, or asked for `--help` or
    /// `--version` (print it with [`clap::Error::print`] and exit with
    /// [`clap::Error::exit_code`]).
    #[error("{0}")]
    Args(clap::Error),
    /// An environment variable has a value its setting cannot take.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable, e.g. `DYNAMO_READ_QUORUM`.
        var: String,
        /// The argument parser's complaint.
        message: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {error}", path = path.display())]
    ReadFile {
        /// The file named by `--config`.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The config file is not valid YAML of the expected shape (an unknown key, a
    /// mistyped value, a bad enum value).
    #[error("config file {path}: {error}", path = path.display())]
    File {
        /// The file named by `--config`.
        path: PathBuf,
        /// What is wrong, naming the key.
        error: YamlError,
    },
    /// A required key is not set anywhere.
    #[error("{key} is required")]
    Missing {
        /// The key.
        key: &'static str,
    },
    /// A key is set to an empty value.
    #[error("{key} is empty")]
    Empty {
        /// The key.
        key: &'static str,
    },
    /// A number is outside its allowed range.
    #[error("{key} is {value}; allowed are {min}..={max}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The rejected value.
        value: u64,
        /// The smallest allowed value.
        min: u64,
        /// The largest allowed value.
        max: u64,
    },
    /// `read-quorum` or `write-quorum` exceeds `replication-factor`.
    #[error("{key} ({value}) is larger than replication-factor ({n})")]
    QuorumAboveReplicas {
        /// `read-quorum` or `write-quorum`.
        key: &'static str,
        /// The quorum size.
        value: u32,
        /// The replication factor.
        n: u32,
    },
    /// `tokens-per-weight` or `partitions` is out of the ring's bounds.
    #[error("{key}: {error}")]
    Partitioning {
        /// `tokens-per-weight` or `partitions`.
        key: &'static str,
        /// The ring's reason.
        error: RingError,
    },
    /// A partitioning parameter was set for the other strategy, where it would be
    /// silently ignored.
    #[error("{key} applies only with partitioning: {strategy}")]
    NotApplicable {
        /// `tokens-per-weight` or `partitions`.
        key: &'static str,
        /// The strategy it belongs to.
        strategy: &'static str,
    },
    /// `weight` times `tokens-per-weight` is more virtual nodes than a ring may hold.
    #[error(
        "weight ({weight}) times tokens-per-weight ({tokens_per_weight}) exceeds the ring's {MAX_VIRTUAL_NODES} virtual nodes"
    )]
    TooManyVirtualNodes {
        /// The node's weight.
        weight: u32,
        /// Tokens per unit of weight.
        tokens_per_weight: u32,
    },
    /// `storage: sled` without `data-dir`.
    #[error("storage: sled needs data-dir (or choose storage: memory, which keeps nothing)")]
    SledWithoutDataDir,
    /// `flush-interval` is out of sled's bounds.
    #[error("flush-interval: {0}")]
    FlushInterval(SledConfigError),
    /// A duration is under the 1 ms resolution of the node's timers.
    #[error("{key} must be at least 1ms")]
    DurationTooShort {
        /// The key.
        key: &'static str,
    },
    /// A duration is over [`MAX_INTERVAL`].
    #[error("{key} must be at most 1h")]
    DurationTooLong {
        /// The key.
        key: &'static str,
    },
    /// The background budget settings do not fit together (minimum above maximum,
    /// window shorter than the interval).
    #[error("background settings: {0}")]
    Background(AdmissionConfigError),
    /// Two listeners would bind the same port on overlapping addresses.
    #[error("{first} ({first_addr}) and {second} ({second_addr}) use the same port")]
    SamePort {
        /// The first listener's key.
        first: &'static str,
        /// Its address.
        first_addr: SocketAddr,
        /// The second listener's key.
        second: &'static str,
        /// Its address.
        second_addr: SocketAddr,
    },
    /// `internode-listen` was left to default while `listen` uses the last port.
    #[error("listen uses port 65535, so internode-listen cannot default to the next port; set it")]
    NoDefaultInternodePort,
    /// `advertise` was left to default while `internode-listen` binds a wildcard
    /// address, which peers cannot connect to.
    #[error(
        "advertise is required when internode-listen ({internode_listen}) is a wildcard address peers cannot connect to"
    )]
    WildcardAdvertise {
        /// The wildcard internode address.
        internode_listen: SocketAddr,
    },
    /// `advertise` or an entry of `seeds` is not a `host:port`.
    #[error("{key}: {value:?} is not host:port ({reason})")]
    Address {
        /// `advertise`, `advertise-client` or `seeds`.
        key: &'static str,
        /// The rejected address.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// N, R and W do not make a quorum configuration.
    #[error("quorum: {0}")]
    Quorum(dynamo_core::quorum::ConfigError),
    /// `max-siblings` does not make sibling bounds.
    #[error("max-siblings: {0}")]
    SiblingLimits(dynamo_core::version::LimitsError),
    /// `zone` is not a zone name.
    #[error("zone: {value:?} is not a zone name ({reason})")]
    Zone {
        /// The rejected zone.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The admin token is unusable. The message never includes the token.
    #[error("admin-token {reason}")]
    AdminToken {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The internode port is reachable from other hosts and nothing authenticates the
    /// `Replica` calls it serves.
    #[error(
        "internode-listen ({internode_listen}) is not a loopback address and nothing authenticates internode calls: set internode-token-file (a cluster secret) or mutual TLS (tls-ca), or insecure-internode to accept that anyone who reaches the port can read and overwrite every key"
    )]
    InternodeUnauthenticated {
        /// The non-loopback internode address.
        internode_listen: SocketAddr,
    },
    /// A TLS file was given without the others it needs.
    #[error("{given} needs {missing}")]
    TlsIncomplete {
        /// The key that was set.
        given: &'static str,
        /// The key or keys missing.
        missing: &'static str,
    },
}

/// Where the node keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// sled, opened with this config (path `data-dir`, flushing every
    /// `flush-interval`).
    Sled(SledConfig),
    /// The in-memory engine.
    Memory,
}

/// The TLS files for the gRPC and HTTP listeners and outgoing internode calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
    /// CA bundle (PEM) peers' certificates must chain to, for mutual TLS.
    pub ca: Option<PathBuf>,
    /// The name a peer's certificate must carry for `Replica` calls under mutual TLS;
    /// `None` takes the node's own certificate's first DNS name when it is read.
    pub node_name: Option<String>,
}

/// How the internode port authenticates `Replica` callers (see
/// [`transport::auth`](crate::transport::auth)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InternodeAuthConfig {
    /// The file holding the cluster secret, read at start.
    pub token_file: Option<PathBuf>,
    /// Whether the operator accepted an unauthenticated internode port on a
    /// non-loopback address.
    pub insecure: bool,
}

/// A node's complete, checked configuration (see the [module docs](self)).
///
/// Built only through `TryFrom<RawConfig>`, which fills in defaults and refuses
/// invalid combinations, so every value is usable as is. Deserializes from YAML the
/// same way (unknown keys rejected). `Debug` redacts the admin token, and
/// [`to_yaml`](Self::to_yaml) prints the effective settings with it redacted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct NodeConfig {
    node_id: NodeId,
    listen: SocketAddr,
    internode_listen: SocketAddr,
    http_listen: Option<SocketAddr>,
    advertise: Option<String>,
    advertise_client: Option<String>,
    zone: Option<String>,
    /// Kept beside `storage` so a memory node given a data dir prints it back.
    data_dir: Option<PathBuf>,
    seeds: Vec<String>,
    replication_factor: u32,
    read_quorum: u32,
    write_quorum: u32,
    weight: u32,
    partitioning: PartitionStrategy,
    storage: StorageConfig,
    durability: Durability,
    read_fanout: ReadFanout,
    reconciliation: dynamo_core::version::Reconciliation,
    flush_interval: Duration,
    request_timeout: Duration,
    gossip_interval: Duration,
    transfer_interval: Duration,
    transfer_source_stall: Duration,
    transfer_batch_bytes: u64,
    transfer_batch_keys: u64,
    max_key_bytes: u32,
    max_value_bytes: u32,
    max_siblings: u32,
    sibling_limits: SiblingLimits,
    quorum: QuorumConfig,
    serving: ServingLimits,
    admission: AdmissionConfig,
    admin_token: Option<AdminToken>,
    tls: Option<TlsConfig>,
    internode_auth: InternodeAuthConfig,
    log: String,
    anti_entropy_interval: Duration,
    anti_entropy_max_keys: u32,
    anti_entropy_max_bytes: u32,
    tombstone_grace: Duration,
}

impl NodeConfig {
    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Where the client API (`Kv`) listens.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Where the node-to-node services (`Replica`, `Admin`) listen.
    pub fn internode_listen(&self) -> SocketAddr {
        self.internode_listen
    }

    /// Where HTTP (metrics, health) listens, if it does.
    pub fn http_listen(&self) -> Option<SocketAddr> {
        self.http_listen
    }

    /// The `host:port` peers use to reach [`internode_listen`](Self::internode_listen),
    /// which the node puts in the member table; `None` means the address actually bound.
    pub fn advertise(&self) -> Option<&str> {
        self.advertise.as_deref()
    }

    /// The `host:port` clients use to reach [`listen`](Self::listen), if set explicitly;
    /// see [`client_advertise_for`](Self::client_advertise_for) for the default.
    pub fn advertise_client(&self) -> Option<&str> {
        self.advertise_client.as_deref()
    }

    /// The node's zone (failure domain), if it has one.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The client address the node announces in the member table, given the address
    /// the client listener actually bound: `advertise-client` if set; else, with
    /// `advertise` set, its host with the client port (a pod's stable DNS name serves
    /// both ports); else the bound address unless it is a wildcard, which no client can
    /// connect to (then `None`: the node announces nothing and clients reach it only
    /// through server-driven routing).
    pub fn client_advertise_for(&self, bound: SocketAddr) -> Option<String> {
        if let Some(explicit) = &self.advertise_client {
            return Some(explicit.clone());
        }
        if let Some(advertise) = &self.advertise {
            let host = advertise
                .rsplit_once(':')
                .map_or(advertise.as_str(), |(host, _)| host);
            return Some(format!("{host}:{}", bound.port()));
        }
        (!bound.ip().is_unspecified()).then(|| bound.to_string())
    }

    /// The data directory, if given.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// Seed nodes' internode `host:port`s (checked for shape, not resolved).
    pub fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// `N`, in `1..=`[`MAX_REPLICATION_FACTOR`].
    pub fn replication_factor(&self) -> usize {
        to_usize(self.replication_factor)
    }

    /// `R`, in `1..=N`.
    pub fn read_quorum(&self) -> usize {
        to_usize(self.read_quorum)
    }

    /// `W`, in `1..=N`.
    pub fn write_quorum(&self) -> usize {
        to_usize(self.write_quorum)
    }

    /// This node's weight, in `1..=`[`MAX_WEIGHT`].
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The partitioning strategy with its parameter.
    pub fn partitioning(&self) -> PartitionStrategy {
        self.partitioning
    }

    /// The storage engine and its settings.
    pub fn storage(&self) -> &StorageConfig {
        &self.storage
    }

    /// How durable a write must be before a replica acknowledges it.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How many replicas a get asks at first.
    pub fn read_fanout(&self) -> ReadFanout {
        self.read_fanout
    }

    /// How concurrent writes reconcile (cluster-wide).
    pub fn reconciliation(&self) -> dynamo_core::version::Reconciliation {
        self.reconciliation
    }

    /// How often buffered writes reach disk.
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval
    }

    /// How long a coordinator waits for a quorum.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The gossip period.
    pub fn gossip_interval(&self) -> Duration {
        self.gossip_interval
    }

    /// Time between range transfer rounds.
    pub fn transfer_interval(&self) -> Duration {
        self.transfer_interval
    }

    /// How long a range transfer's peer may fail before it is worked around: a source's
    /// ranges are copied from other replicas, a destination's sent to other new
    /// replicas; zero never works around a peer.
    pub fn transfer_source_stall(&self) -> Duration {
        self.transfer_source_stall
    }

    /// Most key and state bytes one range transfer round sends.
    pub fn transfer_batch_bytes(&self) -> u64 {
        self.transfer_batch_bytes
    }

    /// Most keys one range transfer round sends.
    pub fn transfer_batch_keys(&self) -> u64 {
        self.transfer_batch_keys
    }

    /// The largest accepted key, in bytes.
    pub fn max_key_bytes(&self) -> usize {
        to_usize(self.max_key_bytes)
    }

    /// The largest accepted value, in bytes.
    pub fn max_value_bytes(&self) -> usize {
        to_usize(self.max_value_bytes)
    }

    /// The most siblings kept per key.
    pub fn max_siblings(&self) -> usize {
        to_usize(self.max_siblings)
    }

    /// The sibling and clock bounds the store keeps (`max-siblings`, a warning above a
    /// fifth of it).
    pub fn sibling_limits(&self) -> SiblingLimits {
        self.sibling_limits
    }

    /// N, R and W as the quorum machines take them.
    pub fn quorum(&self) -> QuorumConfig {
        self.quorum
    }

    /// The default configuration of an in-memory node `node_id`: what tests and the
    /// simulator start from, with every default from this crate.
    pub fn in_memory(node_id: NodeId) -> NodeConfig {
        let raw = RawConfig {
            node_id: Some(node_id),
            storage: Some(StorageKind::Memory),
            ..RawConfig::default()
        };
        match NodeConfig::try_from(raw) {
            Ok(config) => config,
            // The defaults are checked by `the_in_memory_defaults_are_valid`.
            Err(error) => unreachable!("the default configuration is invalid: {error}"),
        }
    }

    /// What the listeners allow clients: connections, requests in flight, read timeouts.
    pub fn serving_limits(&self) -> ServingLimits {
        self.serving
    }

    /// Anti-entropy settings: round interval (zero disables), per-round limits and
    /// the tombstone grace period.
    pub fn anti_entropy(&self) -> AntiEntropyConfig {
        AntiEntropyConfig {
            interval: self.anti_entropy_interval,
            tombstone_grace: self.tombstone_grace,
            max_keys_per_round: u64::from(self.anti_entropy_max_keys),
            max_bytes_per_round: u64::from(self.anti_entropy_max_bytes),
            ..AntiEntropyConfig::default()
        }
    }

    /// The background work budget (admission control).
    pub fn admission(&self) -> AdmissionConfig {
        self.admission
    }

    /// The token the Admin API requires, if any.
    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.admin_token.as_ref()
    }

    /// TLS settings, if TLS is on.
    pub fn tls(&self) -> Option<&TlsConfig> {
        self.tls.as_ref()
    }

    /// How `Replica` callers are authenticated.
    pub fn internode_auth(&self) -> &InternodeAuthConfig {
        &self.internode_auth
    }

    /// The log filter.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// The effective settings as a [`RawConfig`] with every applicable key set: the
    /// partitioning parameter of the other strategy is left out, and `http-listen`,
    /// `data-dir`, `admin-token` and the TLS keys only when unset. Reading it back
    /// gives the same config.
    pub fn to_raw(&self) -> RawConfig {
        let (partitioning, tokens_per_weight, partitions) = match self.partitioning {
            PartitionStrategy::RandomTokens { tokens_per_weight } => {
                (Partitioning::RandomTokens, Some(tokens_per_weight), None)
            }
            PartitionStrategy::EqualPartitions { q } => {
                (Partitioning::EqualPartitions, None, Some(q))
            }
        };
        let tls = self.tls.as_ref();
        RawConfig {
            node_id: Some(self.node_id.clone()),
            listen: Some(self.listen),
            internode_listen: Some(self.internode_listen),
            http_listen: self.http_listen,
            advertise: self.advertise.clone(),
            advertise_client: self.advertise_client.clone(),
            zone: self.zone.clone(),
            data_dir: self.data_dir.clone(),
            seeds: Some(self.seeds.clone()),
            replication_factor: Some(self.replication_factor),
            read_quorum: Some(self.read_quorum),
            write_quorum: Some(self.write_quorum),
            weight: Some(self.weight),
            partitioning: Some(partitioning),
            tokens_per_weight,
            partitions,
            storage: Some(match self.storage {
                StorageConfig::Sled(_) => StorageKind::Sled,
                StorageConfig::Memory => StorageKind::Memory,
            }),
            durability: Some(self.durability.into()),
            read_fanout: Some(self.read_fanout),
            reconciliation: Some(self.reconciliation.into()),
            flush_interval: Some(self.flush_interval),
            request_timeout: Some(self.request_timeout),
            gossip_interval: Some(self.gossip_interval),
            transfer_interval: Some(self.transfer_interval),
            transfer_source_stall: Some(self.transfer_source_stall),
            transfer_batch_bytes: Some(self.transfer_batch_bytes),
            transfer_batch_keys: Some(self.transfer_batch_keys),
            max_key_bytes: Some(self.max_key_bytes),
            max_value_bytes: Some(self.max_value_bytes),
            max_siblings: Some(self.max_siblings),
            max_connections: Some(u32::try_from(self.serving.max_connections).unwrap_or(u32::MAX)),
            max_inflight_requests: Some(
                u32::try_from(self.serving.max_inflight_requests).unwrap_or(u32::MAX),
            ),
            client_read_timeout: Some(self.serving.client_read_timeout),
            background_budget: Some(to_u32(self.admission.max_budget())),
            background_budget_min: Some(to_u32(self.admission.min_budget())),
            background_interval_ms: Some(millis_u32(self.admission.interval())),
            background_latency_target_ms: Some(millis_u32(self.admission.latency_target())),
            background_latency_window_ms: Some(millis_u32(self.admission.window())),
            admin_token: self.admin_token.clone(),
            tls_cert: tls.map(|t| t.cert.clone()),
            tls_key: tls.map(|t| t.key.clone()),
            tls_ca: tls.and_then(|t| t.ca.clone()),
            tls_node_name: tls.and_then(|t| t.node_name.clone()),
            internode_token_file: self.internode_auth.token_file.clone(),
            insecure_internode: self.internode_auth.insecure.then_some(true),
            log: Some(self.log.clone()),
            anti_entropy_interval: Some(self.anti_entropy_interval),
            anti_entropy_max_keys: Some(self.anti_entropy_max_keys),
            anti_entropy_max_bytes: Some(self.anti_entropy_max_bytes),
            tombstone_grace: Some(self.tombstone_grace),
        }
    }

    /// The effective settings as YAML, every key named as its flag, `admin-token`
    /// shown as [`REDACTED`].
    ///
    /// # Errors
    /// When a path is not valid UTF-8 and so has no YAML form.
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(&self.to_raw())
    }
}

impl TryFrom<RawConfig> for NodeConfig {
    type Error = ConfigError;

    /// Fills in defaults and checks every rule; the one place a `NodeConfig` is made.
    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let node_id = raw
            .node_id
            .clone()
            .ok_or(ConfigError::Missing { key: "node-id" })?;
        let (listen, internode_listen, http_listen) = listeners(&raw)?;
        let (advertise, advertise_client) = advertised(&raw, internode_listen)?;
        let seeds = seeds(&raw)?;

        let quorum = quorum(&raw)?;
        let weight = raw.weight.unwrap_or(DEFAULT_WEIGHT);
        in_range("weight", weight, 1, MAX_WEIGHT)?;
        let partitioning = partitioning(&raw, weight)?;
        let (storage, flush_interval) = storage(&raw)?;
        let timings = Timings::of(&raw)?;
        let values = ValueLimits::of(&raw)?;
        let anti_entropy = AntiEntropyFlags::of(&raw)?;
        if let Some(reason) = raw.admin_token.as_ref().and_then(AdminToken::problem) {
            return Err(ConfigError::AdminToken { reason });
        }
        let tls = tls(
            raw.tls_cert.clone(),
            raw.tls_key.clone(),
            raw.tls_ca.clone(),
            raw.tls_node_name.clone(),
        )?;
        let internode_auth = internode_auth(
            internode_listen,
            tls.as_ref(),
            raw.internode_token_file.clone(),
            raw.insecure_internode.unwrap_or(false),
        )?;
        let log = raw.log.clone().unwrap_or_else(|| DEFAULT_LOG.to_owned());
        if log.trim().is_empty() {
            return Err(ConfigError::Empty { key: "log" });
        }
        Ok(NodeConfig {
            node_id,
            listen,
            internode_listen,
            http_listen,
            advertise,
            advertise_client,
            zone: zone(&raw)?,
            seeds,
            replication_factor: quorum.n(),
            read_quorum: quorum.r(),
            write_quorum: quorum.w(),
            weight,
            partitioning,
            storage,
            durability: raw.durability.unwrap_or_default().into(),
            read_fanout: raw.read_fanout.unwrap_or_default(),
            reconciliation: raw.reconciliation.unwrap_or_default().into(),
            flush_interval,
            request_timeout: timings.request_timeout,
            gossip_interval: timings.gossip_interval,
            transfer_interval: timings.transfer_interval,
            transfer_source_stall: timings.transfer_source_stall,
            transfer_batch_bytes: timings.transfer_batch_bytes,
            transfer_batch_keys: timings.transfer_batch_keys,
            max_key_bytes: values.max_key_bytes,
            max_value_bytes: values.max_value_bytes,
            max_siblings: values.max_siblings,
            sibling_limits: values.sibling_limits,
            quorum,
            serving: serving_limits(&raw)?,
            admission: admission(&raw)?,
            tls,
            internode_auth,
            log,
            anti_entropy_interval: anti_entropy.interval,
            anti_entropy_max_keys: anti_entropy.max_keys,
            anti_entropy_max_bytes: anti_entropy.max_bytes,
            tombstone_grace: raw
                .tombstone_grace
                .unwrap_or(settings::DEFAULT_TOMBSTONE_GRACE),
            admin_token: raw.admin_token,
            data_dir: raw.data_dir,
        })
    }
}

/// N, R and W, checked, in the typed form the node runs with: built here so a
/// configuration that passes `--check-config` cannot fail at start.
fn quorum(raw: &RawConfig) -> Result<QuorumConfig, ConfigError> {
    let replication_factor = raw.replication_factor.unwrap_or(DEFAULT_REPLICATION_FACTOR);
    in_range(
        "replication-factor",
        replication_factor,
        1,
        MAX_REPLICATION_FACTOR,
    )?;
    let read_quorum = raw.read_quorum.unwrap_or(DEFAULT_READ_QUORUM);
    check_quorum("read-quorum", read_quorum, replication_factor)?;
    let write_quorum = raw.write_quorum.unwrap_or(DEFAULT_WRITE_QUORUM);
    check_quorum("write-quorum", write_quorum, replication_factor)?;
    QuorumConfig::new(replication_factor, read_quorum, write_quorum).map_err(ConfigError::Quorum)
}

/// `advertise` and `advertise-client`, checked. Unset `advertise` means "the internode
/// address actually bound", which the node resolves at start: with internode-listen on
/// port 0 (tests) the port is only known then.
fn advertised(
    raw: &RawConfig,
    internode_listen: SocketAddr,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    let checked = |key: &'static str, address: &String| {
        check_address(address).map_err(|reason| ConfigError::Address {
            key,
            value: address.clone(),
            reason,
        })
    };
    let advertise = match &raw.advertise {
        Some(advertise) => {
            checked("advertise", advertise)?;
            Some(advertise.clone())
        }
        None if internode_listen.ip().is_unspecified() => {
            return Err(ConfigError::WildcardAdvertise { internode_listen });
        }
        None => None,
    };
    if let Some(address) = &raw.advertise_client {
        checked("advertise-client", address)?;
    }
    Ok((advertise, raw.advertise_client.clone()))
}

/// The seeds, each a checked `host:port`.
fn seeds(raw: &RawConfig) -> Result<Vec<String>, ConfigError> {
    let seeds = raw.seeds.clone().unwrap_or_default();
    for seed in &seeds {
        check_address(seed).map_err(|reason| ConfigError::Address {
            key: "seeds",
            value: seed.clone(),
            reason,
        })?;
    }
    Ok(seeds)
}

/// The storage engine and the buffered writes' flush interval.
fn storage(raw: &RawConfig) -> Result<(StorageConfig, Duration), ConfigError> {
    let flush_interval = raw.flush_interval.unwrap_or(DEFAULT_FLUSH_INTERVAL);
    // Sled's builder owns the flush interval's bounds; checking with it here keeps one
    // rule for both engines.
    let sled = SledConfig::new(raw.data_dir.clone().unwrap_or_default())
        .with_flush_interval(Some(flush_interval))
        .map_err(ConfigError::FlushInterval)?;
    if raw
        .data_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        return Err(ConfigError::Empty { key: "data-dir" });
    }
    let storage = match raw.storage.unwrap_or_default() {
        StorageKind::Sled if raw.data_dir.is_none() => {
            return Err(ConfigError::SledWithoutDataDir);
        }
        StorageKind::Sled => StorageConfig::Sled(sled),
        StorageKind::Memory => StorageConfig::Memory,
    };
    Ok((storage, flush_interval))
}

/// The request, gossip and transfer timings and the transfer batch bounds, checked.
struct Timings {
    request_timeout: Duration,
    gossip_interval: Duration,
    transfer_interval: Duration,
    transfer_source_stall: Duration,
    transfer_batch_bytes: u64,
    transfer_batch_keys: u64,
}

impl Timings {
    fn of(raw: &RawConfig) -> Result<Self, ConfigError> {
        let request_timeout = raw.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        check_interval("request-timeout", request_timeout)?;
        let gossip_interval = raw.gossip_interval.unwrap_or(DEFAULT_GOSSIP_INTERVAL);
        check_interval("gossip-interval", gossip_interval)?;
        let transfer_interval = raw.transfer_interval.unwrap_or(DEFAULT_TRANSFER_INTERVAL);
        check_interval("transfer-interval", transfer_interval)?;
        let transfer_source_stall = raw
            .transfer_source_stall
            .unwrap_or(settings::DEFAULT_SOURCE_STALL);
        if !transfer_source_stall.is_zero() {
            check_interval("transfer-source-stall", transfer_source_stall)?;
        }
        let transfer_batch_bytes = raw
            .transfer_batch_bytes
            .unwrap_or(DEFAULT_TRANSFER_BATCH_BYTES);
        in_range_u64(
            "transfer-batch-bytes",
            transfer_batch_bytes,
            1,
            MAX_TRANSFER_BATCH_BYTES,
        )?;
        let transfer_batch_keys = raw
            .transfer_batch_keys
            .unwrap_or(DEFAULT_TRANSFER_BATCH_KEYS);
        in_range_u64(
            "transfer-batch-keys",
            transfer_batch_keys,
            1,
            MAX_TRANSFER_BATCH_KEYS,
        )?;
        Ok(Self {
            request_timeout,
            gossip_interval,
            transfer_interval,
            transfer_source_stall,
            transfer_batch_bytes,
            transfer_batch_keys,
        })
    }
}

/// The key, value and sibling bounds, checked, with the typed sibling limits.
struct ValueLimits {
    max_key_bytes: u32,
    max_value_bytes: u32,
    max_siblings: u32,
    sibling_limits: SiblingLimits,
}

impl ValueLimits {
    fn of(raw: &RawConfig) -> Result<Self, ConfigError> {
        let max_key_bytes = raw.max_key_bytes.unwrap_or(DEFAULT_MAX_KEY_BYTES);
        in_range("max-key-bytes", max_key_bytes, 1, MAX_KEY_BYTES_LIMIT)?;
        let max_value_bytes = raw.max_value_bytes.unwrap_or(DEFAULT_MAX_VALUE_BYTES);
        in_range("max-value-bytes", max_value_bytes, 1, MAX_VALUE_BYTES_LIMIT)?;
        let max_siblings = raw.max_siblings.unwrap_or(DEFAULT_MAX_SIBLINGS);
        in_range("max-siblings", max_siblings, 1, MAX_SIBLINGS_LIMIT)?;
        // Built here so a configuration that passes `--check-config` cannot fail at
        // start: a warning above a fifth of the cap.
        let sibling_limits = SiblingLimits::new(
            to_usize(max_siblings),
            (to_usize(max_siblings) / 5).max(1),
            SiblingLimits::default().max_clock_entries(),
        )
        .map_err(ConfigError::SiblingLimits)?;
        Ok(Self {
            max_key_bytes,
            max_value_bytes,
            max_siblings,
            sibling_limits,
        })
    }
}

/// The connection and in-flight request caps and the client read timeout, checked.
fn serving_limits(raw: &RawConfig) -> Result<ServingLimits, ConfigError> {
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    in_range(
        "max-connections",
        max_connections,
        MIN_MAX_CONNECTIONS,
        MAX_CONNECTIONS_LIMIT,
    )?;
    let max_inflight_requests = raw
        .max_inflight_requests
        .unwrap_or(DEFAULT_MAX_INFLIGHT_REQUESTS);
    in_range(
        "max-inflight-requests",
        max_inflight_requests,
        1,
        MAX_CONNECTIONS_LIMIT,
    )?;
    let client_read_timeout = raw
        .client_read_timeout
        .unwrap_or(DEFAULT_CLIENT_READ_TIMEOUT);
    check_interval("client-read-timeout", client_read_timeout)?;
    Ok(ServingLimits {
        max_connections: to_usize(max_connections),
        max_inflight_requests: to_usize(max_inflight_requests),
        client_read_timeout,
    })
}

/// The anti-entropy interval (0 disables it) and per-round bounds, checked.
struct AntiEntropyFlags {
    interval: Duration,
    max_keys: u32,
    max_bytes: u32,
}

impl AntiEntropyFlags {
    fn of(raw: &RawConfig) -> Result<Self, ConfigError> {
        let interval = raw
            .anti_entropy_interval
            .unwrap_or(settings::DEFAULT_INTERVAL);
        if !interval.is_zero() {
            check_interval("anti-entropy-interval", interval)?;
        }
        let max_keys = raw
            .anti_entropy_max_keys
            .unwrap_or(DEFAULT_ANTI_ENTROPY_MAX_KEYS);
        in_range("anti-entropy-max-keys", max_keys, 1, u32::MAX)?;
        let max_bytes = raw
            .anti_entropy_max_bytes
            .unwrap_or(DEFAULT_ANTI_ENTROPY_MAX_BYTES);
        in_range("anti-entropy-max-bytes", max_bytes, 1, u32::MAX)?;
        Ok(Self {
            interval,
            max_keys,
            max_bytes,
        })
    }
}

/// The zone, checked; an empty one is no zone (a `DYNAMO_ZONE` set from an unlabelled
/// node).
fn zone(raw: &RawConfig) -> Result<Option<String>, ConfigError> {
    match raw.zone.clone().filter(|zone| !zone.is_empty()) {
        Some(zone) => {
            dynamo_core::membership::check_zone(&zone).map_err(|reason| ConfigError::Zone {
                value: zone.clone(),
                reason,
            })?;
            Ok(Some(zone))
        }
        None => Ok(None),
    }
}

/// The client, internode and HTTP listen addresses, with the internode default applied
/// and no two of them on one port.
fn listeners(raw: &RawConfig) -> Result<(SocketAddr, SocketAddr, Option<SocketAddr>), ConfigError> {
    let listen = raw.listen.unwrap_or(DEFAULT_LISTEN);
    let internode_listen = match raw.internode_listen {
        Some(addr) => addr,
        // Port 0 asks the OS for any free port; the internode listener gets its own.
        None if listen.port() == 0 => listen,
        None => {
            let port = listen
                .port()
                .checked_add(1)
                .ok_or(ConfigError::NoDefaultInternodePort)?;
            SocketAddr::new(listen.ip(), port)
        }
    };
    let mut bound = vec![("listen", listen), ("internode-listen", internode_listen)];
    bound.extend(raw.http_listen.map(|addr| ("http-listen", addr)));
    for (i, &(first, first_addr)) in bound.iter().enumerate() {
        for &(second, second_addr) in &bound[i + 1..] {
            if conflicts(first_addr, second_addr) {
                return Err(ConfigError::SamePort {
                    first,
                    first_addr,
                    second,
                    second_addr,
                });
            }
        }
    }
    Ok((listen, internode_listen, raw.http_listen))
}

/// Whether two listeners cannot both bind: the same fixed port on the same address, or
/// on any address if either binds all of them.
fn conflicts(a: SocketAddr, b: SocketAddr) -> bool {
    let overlapping = |x: IpAddr, y: IpAddr| x == y || x.is_unspecified() || y.is_unspecified();
    a.port() != 0 && a.port() == b.port() && overlapping(a.ip(), b.ip())
}

/// The partitioning strategy, built by the ring's own checked constructors.
fn partitioning(raw: &RawConfig, weight: u32) -> Result<PartitionStrategy, ConfigError> {
    match raw.partitioning.unwrap_or_default() {
        Partitioning::RandomTokens => {
            if raw.partitions.is_some() {
                return Err(ConfigError::NotApplicable {
                    key: "partitions",
                    strategy: "equal-partitions",
                });
            }
            let tokens_per_weight = raw.tokens_per_weight.unwrap_or(DEFAULT_TOKENS_PER_WEIGHT);
            let strategy =
                PartitionStrategy::random_tokens(tokens_per_weight).map_err(|error| {
                    ConfigError::Partitioning {
                        key: "tokens-per-weight",
                        error,
                    }
                })?;
            if u64::from(weight) * u64::from(tokens_per_weight) > MAX_VIRTUAL_NODES {
                return Err(ConfigError::TooManyVirtualNodes {
                    weight,
                    tokens_per_weight,
                });
            }
            Ok(strategy)
        }
        Partitioning::EqualPartitions => {
            if raw.tokens_per_weight.is_some() {
                return Err(ConfigError::NotApplicable {
                    key: "tokens-per-weight",
                    strategy: "random-tokens",
                });
            }
            let q = raw
                .partitions
                .unwrap_or(dynamo_core::ring::DEFAULT_PARTITIONS);
            PartitionStrategy::equal_partitions(q).map_err(|error| ConfigError::Partitioning {
                key: "partitions",
                error,
            })
        }
    }
}

/// The background budget settings, each in range, checked together by
/// [`AdmissionConfig::new`].
fn admission(raw: &RawConfig) -> Result<AdmissionConfig, ConfigError> {
    let defaults = AdmissionConfig::default();
    let max = raw
        .background_budget
        .unwrap_or(to_u32(defaults.max_budget()));
    in_range("background-budget", max, 1, MAX_BACKGROUND_BUDGET)?;
    let min = raw
        .background_budget_min
        .unwrap_or(to_u32(defaults.min_budget()).min(max));
    in_range("background-budget-min", min, 1, max)?;
    let millis = |key, value: Option<u32>, default: Duration| {
        let ms = value.unwrap_or(millis_u32(default));
        in_range(key, ms, 1, MAX_BACKGROUND_MS).map(|()| Duration::from_millis(u64::from(ms)))
    };
    let interval = millis(
        "background-interval-ms",
        raw.background_interval_ms,
        defaults.interval(),
    )?;
    let target = millis(
        "background-latency-target-ms",
        raw.background_latency_target_ms,
        defaults.latency_target(),
    )?;
    let window = millis(
        "background-latency-window-ms",
        raw.background_latency_window_ms,
        defaults.window(),
    )?;
    AdmissionConfig::new(target, window, interval, u64::from(min), u64::from(max))
        .map_err(ConfigError::Background)
}

fn to_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn millis_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    node_name: Option<String>,
) -> Result<Option<TlsConfig>, ConfigError> {
    for (name, path) in [("tls-cert", &cert), ("tls-key", &key), ("tls-ca", &ca)] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::Empty { key: name });
        }
    }
    if let Some(name) = &node_name {
        if name.trim().is_empty() {
            return Err(ConfigError::Empty {
                key: "tls-node-name",
            });
        }
        if ca.is_none() {
            // Without a CA no peer presents a certificate, so there is nothing to check.
            return Err(ConfigError::TlsIncomplete {
                given: "tls-node-name",
                missing: "tls-ca",
            });
        }
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsConfig {
            cert,
            key,
            ca,
            node_name,
        })),
        (Some(_), None) => Err(ConfigError::TlsIncomplete {
            given: "tls-cert",
            missing: "tls-key",
        }),
        (None, Some(_)) => Err(ConfigError::TlsIncomplete {
            given: "tls-key",
            missing: "tls-cert",
        }),
        (None, None) if ca.is_some() => Err(ConfigError::TlsIncomplete {
            given: "tls-ca",
            missing: "tls-cert and tls-key",
        }),
        (None, None) => Ok(None),
    }
}

/// The internode authentication settings, refusing a `Replica` port that other hosts
/// can reach with nothing in front of it unless the operator said `insecure-internode`.
/// Mutual TLS (`tls-ca`) authenticates on its own; the token adds a check either way.
fn internode_auth(
    internode_listen: SocketAddr,
    tls: Option<&TlsConfig>,
    token_file: Option<PathBuf>,
    insecure: bool,
) -> Result<InternodeAuthConfig, ConfigError> {
    if token_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(ConfigError::Empty {
            key: "internode-token-file",
        });
    }
    let mutual_tls = tls.is_some_and(|tls| tls.ca.is_some());
    let authenticated = token_file.is_some() || mutual_tls;
    if !authenticated && !insecure && !internode_listen.ip().is_loopback() {
        return Err(ConfigError::InternodeUnauthenticated { internode_listen });
    }
    Ok(InternodeAuthConfig {
        token_file,
        insecure,
    })
}

fn in_range(key: &'static str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value: value.into(),
            min: min.into(),
            max: max.into(),
        })
    }
}

fn in_range_u64(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value,
            min,
            max,
        })
    }
}

fn check_quorum(key: &'static str, value: u32, n: u32) -> Result<(), ConfigError> {
    if value > n {
        return Err(ConfigError::QuorumAboveReplicas { key, value, n });
    }
    in_range(key, value, 1, n)
}

fn check_interval(key: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value < Duration::from_millis(1) {
        Err(ConfigError::DurationTooShort { key })
    } else if value > MAX_INTERVAL {
        Err(ConfigError::DurationTooLong { key })
    } else {
        Ok(())
    }
}

/// Widens a validated count; every bound here is far below `usize::MAX` on the 32-
/// and 64-bit targets the node runs on.
fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_in_memory_defaults_are_valid() {
        let config = NodeConfig::in_memory(NodeId::new("n1").unwrap());
        assert_eq!(config.quorum(), QuorumConfig::default());
        assert_eq!(config.sibling_limits(), SiblingLimits::default());
        assert_eq!(config.request_timeout(), DEFAULT_REQUEST_TIMEOUT);
    }

    fn raw(yaml: &str) -> RawConfig {
        RawConfig::from_yaml(yaml).unwrap()
    }

    /// `yaml` over a minimal valid config (node n1, memory storage).
    /// A config from `yaml` over a node id and memory storage.
    fn build(yaml: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::try_from(raw(yaml).or(raw("node-id: n1\nstorage: memory\n")))
    }

    /// [`build`] with a cluster secret too, so non-loopback listeners pass.
    fn build_authenticated(yaml: &str) -> Result<NodeConfig, ConfigError> {
        build(&format!("internode-token-file: /t\n{yaml}"))
    }

    /// The client address a node gossips for partition-aware clients: explicit, else
    /// the internode advertise host with the client port, else the bound address
    /// unless it is a wildcard.
    #[test]
    fn the_client_advertise_address_defaults_like_the_internode_one() {
        let bound: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let config =
            build_authenticated("listen: 0.0.0.0:7000\nadvertise: dynamo-0.dynamo:7001").unwrap();
        assert_eq!(config.advertise_client(), None);
        assert_eq!(
            config.client_advertise_for(bound).as_deref(),
            Some("dynamo-0.dynamo:7000")
        );
        let config = build_authenticated(
            "listen: 0.0.0.0:7000\nadvertise: '[fd00::1]:7001'\nadvertise-client: lb.example:443",
        )
        .unwrap();
        assert_eq!(config.advertise_client(), Some("lb.example:443"));
        assert_eq!(
            config.client_advertise_for(bound).as_deref(),
            Some("lb.example:443")
        );
        let config =
            build_authenticated("listen: 0.0.0.0:7000\nadvertise: '[fd00::1]:7001'").unwrap();
        assert_eq!(
            config.client_advertise_for(bound).as_deref(),
            Some("[fd00::1]:7000")
        );
        let config = build("listen: 127.0.0.1:0").unwrap();
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(
            config.client_advertise_for(bound).as_deref(),
            Some("127.0.0.1:41234")
        );
        let config = build("listen: 0.0.0.0:7000\ninternode-listen: 127.0.0.1:7001").unwrap();
        assert_eq!(
            config.client_advertise_for("0.0.0.0:7000".parse().unwrap()),
            None
        );
        let err = build("advertise-client: nope").unwrap_err();
        assert!(err.to_string().contains("advertise-client"), "{err}");
        assert_eq!(
            build("zone: eu-west-1a").unwrap().zone(),
            Some("eu-west-1a")
        );
        assert_eq!(build("zone: ''").unwrap().zone(), None);
        let err = build("zone: eu west").unwrap_err();
        assert!(err.to_string().contains("zone"), "{err}");
    }

    #[test]
    fn anti_entropy_settings_have_defaults_zero_disables_and_bad_values_are_refused() {
        let defaults = build("").unwrap().anti_entropy();
        assert_eq!(defaults, AntiEntropyConfig::default());
        assert_eq!(defaults.interval, Duration::from_secs(30));
        assert_eq!(defaults.tombstone_grace, Duration::from_secs(24 * 3600));
        let set = build(
            "anti-entropy-interval: 0s\ntombstone-grace: 50ms\n\
             anti-entropy-max-keys: 7\nanti-entropy-max-bytes: 4096\n",
        )
        .unwrap();
        let anti_entropy = set.anti_entropy();
        assert!(!anti_entropy.enabled());
        assert_eq!(anti_entropy.tombstone_grace, Duration::from_millis(50));
        assert_eq!(
            (
                anti_entropy.max_keys_per_round,
                anti_entropy.max_bytes_per_round
            ),
            (7, 4096)
        );
        // The effective YAML reads back to the same settings.
        let yaml = set.to_yaml().unwrap();
        assert!(yaml.lines().any(|l| l == "tombstone-grace: 50ms"), "{yaml}");
        assert_eq!(build(&yaml).unwrap().anti_entropy(), anti_entropy);
        for (yaml, needle) in [
            ("anti-entropy-interval: 2h", "anti-entropy-interval"),
            ("anti-entropy-max-keys: 0", "anti-entropy-max-keys"),
            ("anti-entropy-max-bytes: 0", "anti-entropy-max-bytes"),
        ] {
            let error = build(yaml).unwrap_err().to_string();
            assert!(error.contains(needle), "{yaml}: {error}");
        }
    }

    #[test]
    fn defaults_fill_everything_but_node_id_and_data_dir() {
        let config =
            NodeConfig::try_from(raw("node-id: dynamo-0\ndata-dir: /var/lib/dynamo\n")).unwrap();
        assert_eq!(config.node_id().as_str(), "dynamo-0");
        assert_eq!(config.listen(), "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.internode_listen(), "127.0.0.1:7001".parse().unwrap());
        assert_eq!(config.http_listen(), None);
        assert_eq!(config.advertise(), None);
        assert_eq!(config.data_dir(), Some(Path::new("/var/lib/dynamo")));
        assert!(config.seeds().is_empty());
        // Dynamo §4.5: "(N,R,W) ... (3,2,2)" is the common configuration.
        assert_eq!(
            (
                config.replication_factor(),
                config.read_quorum(),
                config.write_quorum()
            ),
            (3, 2, 2)
        );
        assert_eq!(config.weight(), 1);
        // Dynamo §6.2: strategy 3 balances load best; it is the default.
        assert_eq!(
            config.partitioning(),
            PartitionStrategy::EqualPartitions {
                q: dynamo_core::ring::DEFAULT_PARTITIONS
            }
        );
        let StorageConfig::Sled(sled) = config.storage() else {
            panic!("sled is the default engine")
        };
        assert_eq!(sled.path(), Path::new("/var/lib/dynamo"));
        assert_eq!(sled.flush_interval(), Some(Duration::from_millis(500)));
        assert_eq!(config.durability(), Durability::Sync);
        // Dynamo §4.5: a get asks all N.
        assert_eq!(config.read_fanout(), ReadFanout::All);
        assert_eq!(config.flush_interval(), Duration::from_millis(500));
        assert_eq!(config.request_timeout(), Duration::from_secs(2));
        assert_eq!(config.gossip_interval(), Duration::from_secs(1));
        assert_eq!(config.max_key_bytes(), 1024);
        assert_eq!(config.max_value_bytes(), 1 << 20);
        assert_eq!(config.max_siblings(), 100);
        assert_eq!(
            config.serving_limits(),
            ServingLimits {
                max_connections: 1024,
                max_inflight_requests: 1024,
                client_read_timeout: Duration::from_secs(10),
            }
        );
        assert_eq!(config.admission(), AdmissionConfig::default());
        assert!(config.admin_token().is_none());
        assert!(config.tls().is_none());
        assert_eq!(config.log(), "info");
    }

    #[test]
    fn explicit_settings_are_kept() {
        let config = build_authenticated(
            "listen: 0.0.0.0:8000\ninternode-listen: 0.0.0.0:9000\nhttp-listen: 0.0.0.0:9100\n\
             advertise: dynamo-0.dynamo:9000\nseeds: [dynamo-0.dynamo:9000]\n\
             replication-factor: 5\nread-quorum: 1\nwrite-quorum: 5\nweight: 4\n\
             partitioning: random-tokens\ntokens-per-weight: 64\ndurability: buffered\n\
             read-fanout: quorum\nadmin-token: s3cret\ntls-cert: /tls/crt\ntls-key: /tls/key\nlog: debug\n",
        )
        .unwrap();
        assert_eq!(config.internode_listen().port(), 9000);
        assert_eq!(config.http_listen().map(|a| a.port()), Some(9100));
        assert_eq!(config.advertise(), Some("dynamo-0.dynamo:9000"));
        assert_eq!(config.seeds(), ["dynamo-0.dynamo:9000"]);
        assert_eq!(config.read_quorum(), 1);
        assert_eq!(config.write_quorum(), 5);
        assert_eq!(
            config.partitioning(),
            PartitionStrategy::RandomTokens {
                tokens_per_weight: 64
            }
        );
        assert_eq!(config.storage(), &StorageConfig::Memory);
        assert_eq!(config.durability(), Durability::Buffered);
        assert_eq!(config.read_fanout(), ReadFanout::Quorum);
        assert_eq!(config.admin_token().map(AdminToken::expose), Some("s3cret"));
        assert_eq!(
            config.tls(),
            Some(&TlsConfig {
                cert: "/tls/crt".into(),
                key: "/tls/key".into(),
                ca: None,
                node_name: None,
            })
        );
    }

    #[test]
    fn each_invalid_setting_is_refused_with_its_key_named() {
        let cases: &[(&str, &str)] = &[
            // Dynamo §4.5: R and W count replies among the N replicas.
            (
                "read-quorum: 4",
                "read-quorum (4) is larger than replication-factor (3)",
            ),
            (
                "write-quorum: 4",
                "write-quorum (4) is larger than replication-factor (3)",
            ),
            (
                "replication-factor: 2\nread-quorum: 3",
                "read-quorum (3) is larger than replication-factor (2)",
            ),
            (
                "replication-factor: 0",
                "replication-factor is 0; allowed are 1..=16",
            ),
            (
                "replication-factor: 17",
                "replication-factor is 17; allowed are 1..=16",
            ),
            ("read-quorum: 0", "read-quorum is 0; allowed are 1..=3"),
            ("write-quorum: 0", "write-quorum is 0; allowed are 1..=3"),
            ("weight: 0", "weight is 0; allowed are 1..=10000"),
            ("weight: 10001", "weight is 10001; allowed are 1..=10000"),
            (
                "max-connections: 15",
                "max-connections is 15; allowed are 16..=1000000",
            ),
            (
                "max-inflight-requests: 0",
                "max-inflight-requests is 0; allowed are 1..=1000000",
            ),
            (
                "client-read-timeout: 0s",
                "client-read-timeout must be at least 1ms",
            ),
            (
                "partitioning: random-tokens\ntokens-per-weight: 0",
                "tokens-per-weight: tokens per weight is 0",
            ),
            (
                "partitioning: random-tokens\ntokens-per-weight: 1025",
                "tokens-per-weight: tokens per weight is 1025",
            ),
            ("partitions: 0", "partitions: partition count is 0"),
            ("partitions: 65537", "partitions: partition count is 65537"),
            (
                "partitioning: random-tokens\npartitions: 8",
                "partitions applies only with partitioning: equal-partitions",
            ),
            (
                "tokens-per-weight: 8",
                "tokens-per-weight applies only with partitioning: random-tokens",
            ),
            (
                "partitioning: random-tokens\ntokens-per-weight: 1024\nweight: 2000",
                "weight (2000) times tokens-per-weight (1024)",
            ),
            ("storage: sled", "storage: sled needs data-dir"),
            ("storage: sled\ndata-dir: ''", "data-dir is empty"),
            (
                "listen: 127.0.0.1:7000\ninternode-listen: 127.0.0.1:7000",
                "listen (127.0.0.1:7000) and internode-listen (127.0.0.1:7000) use the same port",
            ),
            (
                "http-listen: 0.0.0.0:7001",
                "internode-listen (127.0.0.1:7001) and http-listen (0.0.0.0:7001) use the same port",
            ),
            (
                "http-listen: 127.0.0.1:7000",
                "listen (127.0.0.1:7000) and http-listen (127.0.0.1:7000) use the same port",
            ),
            ("listen: 127.0.0.1:65535", "listen uses port 65535"),
            (
                "listen: 0.0.0.0:7000",
                "advertise is required when internode-listen (0.0.0.0:7001)",
            ),
            (
                "advertise: dynamo-0",
                "advertise: \"dynamo-0\" is not host:port",
            ),
            (
                "seeds: ['a:7001', 'b:0']",
                "seeds: \"b:0\" is not host:port",
            ),
            (
                "max-key-bytes: 0",
                "max-key-bytes is 0; allowed are 1..=65536",
            ),
            ("max-key-bytes: 65537", "max-key-bytes is 65537"),
            (
                "max-value-bytes: 0",
                "max-value-bytes is 0; allowed are 1..=16252928",
            ),
            ("max-value-bytes: 67108865", "max-value-bytes is 67108865"),
            ("max-siblings: 0", "max-siblings is 0; allowed are 1..=4096"),
            (
                "request-timeout: 0s",
                "request-timeout must be at least 1ms",
            ),
            (
                "request-timeout: 500us",
                "request-timeout must be at least 1ms",
            ),
            (
                "gossip-interval: 0s",
                "gossip-interval must be at least 1ms",
            ),
            ("gossip-interval: 2h", "gossip-interval must be at most 1h"),
            (
                "flush-interval: 0s",
                "flush-interval: flush interval must be at least 1 ms",
            ),
            (
                "flush-interval: 2m",
                "flush-interval: flush interval must be at most",
            ),
            ("tls-cert: /c", "tls-cert needs tls-key"),
            ("tls-key: /k", "tls-key needs tls-cert"),
            ("tls-ca: /ca", "tls-ca needs tls-cert and tls-key"),
            ("tls-cert: ''\ntls-key: /k", "tls-cert is empty"),
            (
                "tls-cert: /c\ntls-key: /k\ntls-node-name: dynamo-node",
                "tls-node-name needs tls-ca",
            ),
            (
                "tls-cert: /c\ntls-key: /k\ntls-ca: /ca\ntls-node-name: ' '",
                "tls-node-name is empty",
            ),
            ("internode-token-file: ''", "internode-token-file is empty"),
            ("admin-token: ''", "admin-token is empty"),
            (
                "admin-token: 'top secret'",
                "admin-token may only hold printable ASCII",
            ),
            ("log: ' '", "log is empty"),
        ];
        for (yaml, expected) in cases {
            match build(yaml) {
                Ok(config) => panic!("{yaml:?} was accepted: {config:?}"),
                Err(err) => {
                    let message = err.to_string();
                    assert!(message.contains(expected), "{yaml:?}: got {message:?}");
                    assert!(!message.contains("secret"), "token leaked: {message}");
                }
            }
        }
    }

    #[test]
    fn a_reachable_internode_port_needs_authentication_or_consent() {
        let reachable = "listen: 0.0.0.0:7000\nadvertise: dynamo-0.dynamo:7001";
        for refused in [
            reachable.to_owned(),
            // TLS without a CA encrypts, but any caller may still connect.
            format!("{reachable}\ntls-cert: /c\ntls-key: /k"),
            format!("{reachable}\ninsecure-internode: false"),
            "listen: 127.0.0.1:7000\ninternode-listen: 10.0.0.1:7001".to_owned(),
        ] {
            let error = build(&refused).unwrap_err();
            assert!(
                matches!(error, ConfigError::InternodeUnauthenticated { .. }),
                "{refused:?}: {error}"
            );
            let message = error.to_string();
            for named in ["internode-token-file", "tls-ca", "insecure-internode"] {
                assert!(message.contains(named), "{message} does not name {named}");
            }
        }
        for accepted in [
            format!("{reachable}\ninternode-token-file: /etc/dynamo/internode/token"),
            format!("{reachable}\ntls-cert: /c\ntls-key: /k\ntls-ca: /ca"),
            format!("{reachable}\ninsecure-internode: true"),
            // Loopback only: nobody else can reach the port.
            "listen: 127.0.0.1:7000".to_owned(),
            "listen: '[::1]:7000'".to_owned(),
        ] {
            let config = build(&accepted).unwrap_or_else(|e| panic!("{accepted:?}: {e}"));
            let printed =
                NodeConfig::try_from(RawConfig::from_yaml(&config.to_yaml().unwrap()).unwrap())
                    .unwrap();
            assert_eq!(printed, config, "{accepted:?} does not print back");
        }
        let insecure = build(&format!("{reachable}\ninsecure-internode: true")).unwrap();
        assert!(insecure.internode_auth().insecure);
        let token = build(&format!("{reachable}\ninternode-token-file: /t")).unwrap();
        assert_eq!(
            token.internode_auth().token_file.as_deref(),
            Some(std::path::Path::new("/t"))
        );
    }

    #[test]
    fn node_id_is_required_and_checked() {
        let err = NodeConfig::try_from(raw("storage: memory")).unwrap_err();
        assert_eq!(err.to_string(), "node-id is required");
        let err = RawConfig::from_yaml("node-id: 'a b'\n").unwrap_err();
        assert!(
            err.to_string().starts_with("node-id: node id contains"),
            "{err}"
        );
    }

    #[test]
    fn bounds_themselves_are_accepted() {
        for yaml in [
            "replication-factor: 16\nread-quorum: 16\nwrite-quorum: 16",
            "replication-factor: 1\nread-quorum: 1\nwrite-quorum: 1",
            "weight: 10000",
            "partitioning: random-tokens\ntokens-per-weight: 104\nweight: 10000",
            "max-key-bytes: 65536\nmax-value-bytes: 16252928\nmax-siblings: 4096",
            "request-timeout: 1ms\ngossip-interval: 1h\nflush-interval: 1m",
            // Different addresses may share a port; port 0 (any free port) never clashes.
            "listen: 127.0.0.1:7000\ninternode-listen: 10.0.0.1:7000\nhttp-listen: '[::1]:7000'\n\
             insecure-internode: true",
            "listen: 127.0.0.1:0\nhttp-listen: 127.0.0.1:0\nadvertise: n1:7001",
            "listen: 0.0.0.0:7000\nadvertise: dynamo-0.dynamo:7001\ninternode-token-file: /t",
            "tls-cert: /c\ntls-key: /k\ntls-ca: /ca",
        ] {
            if let Err(err) = build(yaml) {
                panic!("{yaml:?} was refused: {err}");
            }
        }
    }

    #[test]
    fn node_config_deserializes_through_validation() {
        let config: NodeConfig = serde_yaml::from_str("node-id: n1\nstorage: memory\n").unwrap();
        assert_eq!(config.node_id().as_str(), "n1");
        let err =
            serde_yaml::from_str::<NodeConfig>("node-id: n1\nstorage: memory\nread-quorum: 9\n")
                .unwrap_err();
        assert!(err.to_string().contains("read-quorum"), "{err}");
        let err = serde_yaml::from_str::<NodeConfig>("node-id: n1\nstorage: memory\nbogus: 1\n")
            .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn background_budget_settings_are_checked() {
        let config = build(
            "background-budget: 50\nbackground-interval-ms: 200\n\
             background-latency-target-ms: 20\nbackground-latency-window-ms: 4000\n",
        )
        .unwrap();
        let admission = config.admission();
        assert_eq!(admission.max_budget(), 50);
        // The default minimum (10) applies, capped by a smaller maximum below.
        assert_eq!(admission.min_budget(), 10);
        assert_eq!(admission.interval(), Duration::from_millis(200));
        assert_eq!(admission.latency_target(), Duration::from_millis(20));
        assert_eq!(admission.window(), Duration::from_secs(4));
        assert_eq!(
            build("background-budget: 3\n")
                .unwrap()
                .admission()
                .min_budget(),
            3
        );
        for (yaml, message) in [
            (
                "background-budget: 0\n",
                "background-budget is 0; allowed are 1..=1000000000",
            ),
            (
                "background-budget: 5\nbackground-budget-min: 6\n",
                "background-budget-min is 6; allowed are 1..=5",
            ),
            (
                "background-latency-target-ms: 0\n",
                "background-latency-target-ms is 0; allowed are 1..=3600000",
            ),
            (
                "background-interval-ms: 5000\nbackground-latency-window-ms: 1000\n",
                "background settings: latency window (1s) must be at least one interval (5s)",
            ),
        ] {
            assert_eq!(build(yaml).unwrap_err().to_string(), message, "{yaml}");
        }
    }

    #[test]
    fn admin_token_never_shows_in_debug_or_yaml() {
        let config = build("admin-token: hunter2-token").unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let yaml = config.to_yaml().unwrap();
        assert!(!yaml.contains("hunter2"), "{yaml}");
        assert!(yaml.contains(&format!("admin-token: {REDACTED}")), "{yaml}");
    }

    #[test]
    fn effective_yaml_lists_the_applicable_keys() {
        let yaml = build("").unwrap().to_yaml().unwrap();
        for line in [
            "node-id: n1",
            "read-quorum: 2",
            "partitioning: equal-partitions",
            "partitions: 256",
            "flush-interval: 500ms",
            "request-timeout: 2s",
            "log: info",
        ] {
            assert!(
                yaml.lines().any(|l| l == line),
                "{line:?} missing from\n{yaml}"
            );
        }
        assert!(!yaml.contains("tokens-per-weight"), "{yaml}");
        assert!(!yaml.contains("admin-token"), "{yaml}");
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        let ip = prop_oneof![
            Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        (ip, 0u16..=3).prop_map(|(ip, port)| SocketAddr::new(ip, 7000 + port))
    }

    fn raw_config() -> impl Strategy<Value = RawConfig> {
        (
            (
                addr(),
                proptest::option::of(addr()),
                proptest::option::of(addr()),
            ),
            proptest::option::of("[a-z]{1,8}:[1-9][0-9]{0,3}"),
            proptest::collection::vec("[a-z]{1,8}:[1-9][0-9]{0,3}", 0..3),
            (1u32..=16, 1u32..=16, 1u32..=16, 1u32..=100),
            (any::<bool>(), 1u32..=1024, 1u32..=4096),
            (
                any::<bool>(),
                any::<bool>(),
                1u64..=60_000,
                1u64..=3_600_000,
                1u64..=3_600_000,
            ),
            (
                1u32..=MAX_KEY_BYTES_LIMIT,
                1u32..=MAX_VALUE_BYTES_LIMIT,
                1u32..=MAX_SIBLINGS_LIMIT,
            ),
            (any::<bool>(), any::<bool>(), "[a-z_=,]{1,20}"),
            (
                proptest::option::of(0u32..3000),
                proptest::option::of(0u32..100),
                proptest::option::of(0u32..5000),
                proptest::option::of(0u32..500),
                proptest::option::of(0u32..20_000),
            ),
        )
            .prop_map(
                |(
                    (listen, internode, http),
                    advertise,
                    seeds,
                    (n, r, w, weight),
                    (random, tokens, q),
                    (sled, buffered, flush, timeout, gossip),
                    (key, value, siblings),
                    (tls, ca, log),
                    (budget, budget_min, interval, target, window),
                )| {
                    let ms = Duration::from_millis;
                    RawConfig {
                        node_id: Some(NodeId::new("n1").unwrap()),
                        listen: Some(listen),
                        internode_listen: internode,
                        http_listen: http,
                        advertise_client: advertise.clone(),
                        zone: None,
                        reconciliation: None,
                        advertise,
                        data_dir: sled.then(|| "/data".into()),
                        seeds: Some(seeds),
                        replication_factor: Some(n),
                        // Quorums within N, so most cases pass and round-trip.
                        read_quorum: Some(1 + r % n),
                        write_quorum: Some(1 + w % n),
                        weight: Some(weight),
                        partitioning: Some(if random {
                            Partitioning::RandomTokens
                        } else {
                            Partitioning::EqualPartitions
                        }),
                        tokens_per_weight: random.then_some(tokens),
                        partitions: (!random).then_some(q),
                        storage: Some(if sled {
                            StorageKind::Sled
                        } else {
                            StorageKind::Memory
                        }),
                        durability: Some(if buffered {
                            DurabilityMode::Buffered
                        } else {
                            DurabilityMode::Sync
                        }),
                        read_fanout: Some(if buffered {
                            ReadFanout::Quorum
                        } else {
                            ReadFanout::All
                        }),
                        flush_interval: Some(ms(flush)),
                        request_timeout: Some(ms(timeout)),
                        gossip_interval: Some(ms(gossip)),
                        // Derived from other draws: the tuple is at its size limit.
                        transfer_interval: Some(ms(gossip)),
                        transfer_source_stall: Some(ms(timeout)),
                        transfer_batch_bytes: Some(u64::from(value)),
                        transfer_batch_keys: Some(u64::from(key)),
                        max_key_bytes: Some(key),
                        max_value_bytes: Some(value),
                        max_siblings: Some(siblings),
                        // Derived from other draws: the tuple is at its size limit.
                        max_connections: Some(16 + siblings),
                        max_inflight_requests: Some(siblings),
                        client_read_timeout: Some(ms(flush)),
                        background_budget: budget,
                        background_budget_min: budget_min,
                        background_interval_ms: interval,
                        background_latency_target_ms: target,
                        background_latency_window_ms: window,
                        admin_token: None,
                        tls_cert: tls.then(|| "/c".into()),
                        tls_key: tls.then(|| "/k".into()),
                        tls_ca: (tls && ca).then(|| "/ca".into()),
                        // Derived from other draws: the tuple is at its size limit.
                        tls_node_name: (tls && ca && random).then(|| "dynamo-node".into()),
                        internode_token_file: buffered.then(|| "/token".into()),
                        insecure_internode: (!buffered && sled).then_some(true),
                        log: Some(log),
                        anti_entropy_interval: Some(ms(gossip)),
                        anti_entropy_max_keys: Some(key),
                        anti_entropy_max_bytes: Some(value),
                        tombstone_grace: Some(ms(timeout)),
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The printed effective config reads back as the same config, so
        /// `--check-config` output is a faithful config file.
        #[test]
        fn effective_yaml_round_trips(raw in raw_config()) {
            let Ok(config) = NodeConfig::try_from(raw) else {
                return Err(TestCaseError::reject("invalid combination"));
            };
            let yaml = config.to_yaml().unwrap();
            let again = NodeConfig::try_from(RawConfig::from_yaml(&yaml).unwrap()).unwrap();
            prop_assert_eq!(again, config);
        }

        /// Whatever is accepted satisfies the invariants the node relies on.
        #[test]
        fn accepted_configs_hold_their_invariants(raw in raw_config()) {
            if let Ok(config) = NodeConfig::try_from(raw) {
                let n = config.replication_factor();
                prop_assert!((1..=16).contains(&n));
                prop_assert!((1..=n).contains(&config.read_quorum()));
                prop_assert!((1..=n).contains(&config.write_quorum()));
                prop_assert!(config.partitioning().validate().is_ok());
                if let Some(advertise) = config.advertise() {
                    prop_assert!(check_address(advertise).is_ok());
                }
                let ports = [Some(config.listen()), Some(config.internode_listen()), config.http_listen()];
                let ports: Vec<_> = ports.into_iter().flatten().collect();
                for (i, a) in ports.iter().enumerate() {
                    for b in &ports[i + 1..] {
                        prop_assert!(!conflicts(*a, *b));
                    }
                }
            }
        }
    }
}
