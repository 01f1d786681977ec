//! The command line: global flags, subcommands, and the small parsers behind them
//! (endpoint URLs, the admin endpoint derived from the client one, base64 contexts, the
//! TLS files).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::bench::BenchArgs;
use crate::error::CtlError;
pub use crate::wire::{admin_endpoint, decode_context, encode_context, normalize_endpoint};

/// Default client endpoint: the node's default `listen` address. Without a scheme, so
/// it means `https://` when TLS flags are given and `http://` otherwise.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7000";

/// Command-line client for a Dynamo cluster.
#[derive(Debug, Parser)]
#[command(
    name = "dynamoctl",
    version,
    about = "Command-line client for a Dynamo cluster: get, put, delete, resolve, ring, status, admin, dev",
    after_help = "Exit codes: 0 success, 1 key not found (get) or unknown node (admin), \
                  2 usage error (bad flag, bad --context, rejected argument), \
                  3 server error or server unreachable, \
                  4 conflict (a put past the sibling cap: get the key, then put one value with its --context)."
)]
pub struct Cli {
    /// Client API (gRPC Kv) endpoint; `host:port` means https:// with TLS flags, http://
    /// without.
    #[arg(
        long,
        global = true,
        env = "DYNAMO_ENDPOINT",
        value_name = "URL",
        default_value = DEFAULT_ENDPOINT
    )]
    pub endpoint: String,

    /// Admin API (gRPC Admin, the internode port) endpoint [default: the endpoint's host,
    /// port + 1].
    #[arg(long, global = true, env = "DYNAMO_ADMIN_ENDPOINT", value_name = "URL")]
    pub admin_endpoint: Option<String>,

    /// Token sent as `authorization: Bearer <token>` on admin calls.
    #[arg(
        long,
        global = true,
        env = "DYNAMO_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Bound on connecting and on each call, e.g. 500ms, 5s.
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Print one machine-readable JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// TLS to the nodes (for every command but `dev`).
    #[command(flatten)]
    pub tls: TlsArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a key: prints its value, or every concurrent version (siblings); the context
    /// goes to stderr (or into the JSON). Exit code 1 when the key does not exist.
    Get {
        /// The key (UTF-8).
        key: String,
        /// Read quorum for this request (1..=N) [default: the node's R].
        #[arg(long, value_name = "N")]
        r: Option<u32>,
    },
    /// Write a value; prints the new version's context.
    Put {
        /// The key (UTF-8).
        key: String,
        /// The value; `-` reads it from stdin.
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from a file.
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Context (base64) from a previous get; the write supersedes what that get saw.
        /// Without it the write is blind and may create a sibling.
        #[arg(long, value_name = "B64")]
        context: Option<String>,
        /// Write quorum for this request (1..=N) [default: the node's W].
        #[arg(long, value_name = "N")]
        w: Option<u32>,
    },
    /// Delete a key (writes a tombstone); prints the tombstone's context.
    Delete {
        /// The key (UTF-8).
        key: String,
        /// Context (base64) from a previous get, so the delete supersedes what it saw.
        #[arg(long, value_name = "B64")]
        context: Option<String>,
        /// Write quorum for this request (1..=N) [default: the node's W].
        #[arg(long, value_name = "N")]
        w: Option<u32>,
    },
    /// Resolve concurrent versions (siblings): reads the key and writes one value with
    /// the read's context, replacing every version the read saw. The value is one of
    /// them (`--pick N`, numbered as `get` lists them, from 1) or one you supply (as
    /// `put` takes it, e.g. a merge). Prints the new context.
    #[command(group(clap::ArgGroup::new("choice").required(true).args(["value", "file", "pick"])))]
    Resolve {
        /// The key (UTF-8).
        key: String,
        /// The value to keep; `-` reads it from stdin.
        value: Option<String>,
        /// Read the value to keep from a file.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Keep the N-th version `get` lists (from 1).
        #[arg(long, value_name = "N")]
        pick: Option<usize>,
        /// Write quorum for this request (1..=N) [default: the node's W].
        #[arg(long, value_name = "N")]
        w: Option<u32>,
    },
    /// The member table as the admin endpoint's node sees it.
    Ring,
    /// The admin endpoint's node: id, state, keys, hint backlog, N/R/W, durability.
    Status,
    /// Explicit membership changes (Dynamo §4.8.1).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Start a local cluster of dynamo-node processes and wait for Ctrl-C.
    Dev(DevArgs),
    /// Load records, then run a YCSB-style workload and report throughput and latency.
    Bench(BenchArgs),
}

/// Membership changes, sent to the admin endpoint's node; gossip spreads them.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Add a node to the ring.
    Join {
        /// The node's id (its `--node-id`).
        node_id: String,
        /// The node's internode host:port.
        address: String,
        /// Relative capacity in virtual nodes.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// The node's failure domain [default: the node announces its own --zone].
        #[arg(long, value_name = "NAME", default_value = "")]
        zone: String,
    },
    /// Decommission a node: its ranges move to the others before it is removed.
    Leave {
        /// The node's id.
        node_id: String,
    },
    /// Remove a dead node at once, without a hand-off (for a node that will not come
    /// back; the endpoint's node must be unable to reach it). Its ranges' other
    /// replicas keep their copies.
    Remove {
        /// The node's id.
        node_id: String,
    },
    /// Change a node's weight (its share of the ring).
    Weight {
        /// The node's id.
        node_id: String,
        /// The new relative capacity.
        weight: u32,
    },
}

/// Storage engine for the nodes of a dev cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DevStorage {
    /// sled databases under the base directory.
    Sled,
    /// In-memory: nothing survives a restart.
    Memory,
}

impl DevStorage {
    /// The value of `dynamo-node --storage`.
    pub fn flag_value(self) -> &'static str {
        match self {
            Self::Sled => "sled",
            Self::Memory => "memory",
        }
    }
}

/// Flags of `dynamoctl dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Directory for data and logs [default: a fresh temporary directory, removed at exit].
    #[arg(long, value_name = "DIR")]
    pub base_dir: Option<PathBuf>,
    /// Replicas per key, N [default: min(3, nodes)].
    #[arg(long, value_name = "N")]
    pub replication_factor: Option<u32>,
    /// Read quorum R [default: min(2, N)].
    #[arg(long, value_name = "R")]
    pub read_quorum: Option<u32>,
    /// Write quorum W [default: min(2, N)].
    #[arg(long, value_name = "W")]
    pub write_quorum: Option<u32>,
    /// Storage engine of every node.
    #[arg(long, value_enum, default_value_t = DevStorage::Sled)]
    pub storage: DevStorage,
    /// The dynamo-node binary [default: next to this executable].
    #[arg(long, value_name = "PATH")]
    pub node_bin: Option<PathBuf>,
    /// First port of the cluster: node K (from 1) listens on base+10(K-1) (client API),
    /// +1 (internode and admin) and +2 (HTTP), so node1 answers on dynamoctl's default
    /// endpoints. 0 lets the OS pick every port (tests, several clusters at once).
    #[arg(long, value_name = "PORT", default_value_t = 7000)]
    pub base_port: u16,
    /// Bound on each node's start and on the cluster agreeing on its members.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
}

impl DevArgs {
    /// N, R and W after defaults: N is at most the node count unless given, so that a
    /// one-node cluster works out of the box.
    pub fn quorum(&self) -> (u32, u32, u32) {
        let nodes = u32::from(self.nodes);
        let n = self.replication_factor.unwrap_or(nodes.min(3));
        let r = self.read_quorum.unwrap_or(n.min(2));
        let w = self.write_quorum.unwrap_or(n.min(2));
        (n, r, w)
    }

    /// The client, internode and HTTP ports of the node with `ordinal` (0-based); all 0
    /// when `--base-port 0`, and 0 (OS-chosen) rather than a wrapped port past 65535.
    pub fn ports(&self, ordinal: u16) -> [u16; 3] {
        if self.base_port == 0 {
            return [0; 3];
        }
        let first = u32::from(self.base_port) + 10 * u32::from(ordinal);
        [0, 1, 2].map(|offset| u16::try_from(first + offset).unwrap_or(0))
    }
}

/// TLS to the nodes: whom to trust and, for mutual TLS on the admin port, who we are.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Trust this CA bundle or certificate (PEM) for the nodes' certificates [default:
    /// the --tls-cert certificate, as nodes sharing one self-signed certificate do].
    #[arg(
        id = "tls_ca",
        long = "tls-ca",
        global = true,
        env = "DYNAMO_TLS_CA",
        value_name = "PATH"
    )]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (the admin port of nodes with tls-ca);
    /// needs --tls-key.
    #[arg(
        id = "tls_cert",
        long = "tls-cert",
        global = true,
        env = "DYNAMO_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs --tls-cert.
    #[arg(
        id = "tls_key",
        long = "tls-key",
        global = true,
        env = "DYNAMO_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert",
        hide_env_values = true
    )]
    pub key: Option<PathBuf>,
}

impl TlsArgs {
    /// Whether any TLS flag is given (endpoints then default to `https://`).
    pub fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The gRPC client TLS settings the flags describe, `None` without flags. The files
    /// are read and checked here, so a bad one is a usage error naming it.
    ///
    /// # Errors
    ///
    /// [`CtlError::Usage`] when a file cannot be read or holds no usable PEM, or only
    /// one of --tls-cert and --tls-key is given.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, CtlError> {
        if !self.enabled() {
            return Ok(None);
        }
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                read_certificates("--tls-cert", cert)?,
                read_key("--tls-key", key)?,
            )),
            (None, None) => None,
            _ => {
                return Err(CtlError::Usage(
                    "--tls-cert and --tls-key go together".to_owned(),
                ));
            }
        };
        let trust = match (&self.ca, &identity) {
            (Some(ca), _) => Some(read_certificates("--tls-ca", ca)?),
            (None, Some((cert, _))) => Some(cert.clone()),
            (None, None) => None,
        };
        let mut config = ClientTlsConfig::new();
        if let Some(trust) = trust {
            config = config.ca_certificate(Certificate::from_pem(trust));
        }
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        Ok(Some(config))
    }
}

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, CtlError> {
    std::fs::read(path)
        .map_err(|e| CtlError::Usage(format!("reading {flag} {}: {e}", path.display())))
}

/// A PEM file holding at least one certificate.
fn read_certificates(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, CtlError> {
    let pem = read_pem(flag, path)?;
    let bad = |why: String| CtlError::Usage(format!("{flag} {}: {why}", path.display()));
    let count = CertificateDer::pem_slice_iter(&pem)
        .try_fold(0usize, |n, cert| cert.map(|_| n + 1))
        .map_err(|e| bad(format!("bad pem: {e}")))?;
    if count == 0 {
        return Err(bad("no certificate in pem".to_owned()));
    }
    Ok(pem)
}

/// A PEM file holding a private key.
fn read_key(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, CtlError> {
    let pem = read_pem(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| CtlError::Usage(format!("{flag} {}: {e}", path.display())))?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dynamoctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = parse(&["get", "k", "--endpoint", "http://10.0.0.1:9000", "--json"]).unwrap();
        assert_eq!(cli.endpoint, "http://10.0.0.1:9000");
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Get { ref key, r: None } if key == "k"));
    }

    #[test]
    fn defaults_are_the_local_node_and_five_seconds() {
        // Env may set DYNAMO_ENDPOINT in a developer's shell; only check when it does not.
        if std::env::var_os("DYNAMO_ENDPOINT").is_none() {
            let cli = parse(&["ring"]).unwrap();
            assert_eq!(cli.endpoint, DEFAULT_ENDPOINT);
        }
        let cli = parse(&["status"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_secs(5));
        assert!(!cli.json);
    }

    #[test]
    fn timeout_takes_human_durations() {
        let cli = parse(&["--timeout", "250ms", "ring"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_millis(250));
        assert!(parse(&["--timeout", "soon", "ring"]).is_err());
    }

    #[test]
    fn put_needs_a_value_or_a_file_but_not_both() {
        let err = parse(&["put", "k"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(parse(&["put", "k", "v", "--file", "/tmp/x"]).is_err());
        let cli = parse(&["put", "k", "--file", "/tmp/x", "--w", "1"]).unwrap();
        match cli.command {
            Command::Put { value, file, w, .. } => {
                assert_eq!(value, None);
                assert_eq!(file, Some(PathBuf::from("/tmp/x")));
                assert_eq!(w, Some(1));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn resolve_takes_exactly_one_choice() {
        let cli = parse(&["resolve", "k", "--pick", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Resolve {
                pick: Some(2),
                value: None,
                file: None,
                ..
            }
        ));
        let cli = parse(&["resolve", "k", "merged"]).unwrap();
        assert!(
            matches!(cli.command, Command::Resolve { value: Some(ref v), .. } if v == "merged")
        );
        assert!(parse(&["resolve", "k"]).is_err(), "a choice is required");
        assert!(parse(&["resolve", "k", "v", "--pick", "1"]).is_err());
        assert!(parse(&["resolve", "k", "--file", "/tmp/x", "--pick", "1"]).is_err());
    }

    #[test]
    fn put_value_dash_means_stdin_and_is_not_a_flag() {
        let cli = parse(&["put", "k", "-"]).unwrap();
        assert!(matches!(cli.command, Command::Put { value: Some(ref v), .. } if v == "-"));
    }

    #[test]
    fn admin_subcommands_parse() {
        let cli = parse(&["admin", "join", "node4", "10.0.0.4:7001", "--weight", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Admin(AdminCommand::Join { ref node_id, ref address, weight: 2, ref zone })
                if node_id == "node4" && address == "10.0.0.4:7001" && zone.is_empty()
        ));
        let cli = parse(&["admin", "weight", "node4", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Admin(AdminCommand::Weight { weight: 3, .. })
        ));
        assert!(parse(&["admin", "weight", "node4", "heavy"]).is_err());
    }

    #[test]
    fn dev_defaults_fit_the_node_count() {
        let cli = parse(&["dev"]).unwrap();
        let Command::Dev(dev) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(dev.nodes, 3);
        assert_eq!(dev.storage, DevStorage::Sled);
        assert_eq!(dev.quorum(), (3, 2, 2));
        let Command::Dev(one) = parse(&["dev", "--nodes", "1", "--storage", "memory"])
            .unwrap()
            .command
        else {
            panic!("not dev")
        };
        assert_eq!(one.quorum(), (1, 1, 1));
        assert_eq!(one.storage.flag_value(), "memory");
        let Command::Dev(explicit) = parse(&[
            "dev",
            "--nodes",
            "5",
            "--replication-factor",
            "3",
            "--read-quorum",
            "1",
            "--write-quorum",
            "3",
        ])
        .unwrap()
        .command
        else {
            panic!("not dev")
        };
        assert_eq!(explicit.quorum(), (3, 1, 3));
        assert!(parse(&["dev", "--nodes", "0"]).is_err());
    }

    #[test]
    fn dev_ports_start_at_dynamoctls_default_endpoints() {
        let Command::Dev(dev) = parse(&["dev"]).unwrap().command else {
            panic!("not dev")
        };
        // node1 on 7000 (client) and 7001 (admin): dynamoctl's defaults.
        assert_eq!(dev.ports(0), [7000, 7001, 7002]);
        assert_eq!(dev.ports(2), [7020, 7021, 7022]);
        let Command::Dev(any) = parse(&["dev", "--base-port", "0"]).unwrap().command else {
            panic!("not dev")
        };
        assert_eq!(any.ports(5), [0, 0, 0]);
        let Command::Dev(high) = parse(&["dev", "--base-port", "65530"]).unwrap().command else {
            panic!("not dev")
        };
        assert_eq!(
            high.ports(1),
            [0, 0, 0],
            "ports past 65535 fall back to OS-chosen"
        );
    }

    #[test]
    fn admin_endpoint_is_the_client_port_plus_one() {
        assert_eq!(
            admin_endpoint("http://127.0.0.1:7000", None, false).unwrap(),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            admin_endpoint("db.example.org:9000", None, false).unwrap(),
            "http://db.example.org:9001"
        );
        assert_eq!(
            admin_endpoint("https://[::1]:443", None, false).unwrap(),
            "https://[::1]:444"
        );
        assert_eq!(
            admin_endpoint("http://a:1", Some("b:2"), false).unwrap(),
            "http://b:2"
        );
    }

    #[test]
    fn admin_endpoint_without_a_port_is_a_usage_error() {
        for endpoint in [
            "http://127.0.0.1",
            "http://127.0.0.1:65535",
            "http://bad host:1",
        ] {
            let err = admin_endpoint(endpoint, None, false).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{endpoint}: {err}");
        }
    }

    #[test]
    fn empty_or_absent_context_is_a_blind_write() {
        assert!(decode_context(None).unwrap().is_empty());
        assert!(decode_context(Some("")).unwrap().is_empty());
    }

    #[test]
    fn bad_base64_context_is_a_usage_error_with_a_message() {
        let err = decode_context(Some("not base64!")).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("invalid --context"), "{err}");
    }

    #[test]
    fn tls_flags_parse_globally_and_cert_needs_key() {
        let cli = parse(&[
            "get",
            "k",
            "--tls-ca",
            "/ca.pem",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
        ])
        .unwrap();
        assert_eq!(cli.tls.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(cli.tls.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(cli.tls.key, Some(PathBuf::from("/k.pem")));
        assert!(cli.tls.enabled());
        let ca_only = parse(&["--tls-ca", "/ca.pem", "ring"]).unwrap();
        assert!(ca_only.tls.enabled() && ca_only.tls.cert.is_none());
        for lone in [
            &["--tls-cert", "/c.pem", "ring"][..],
            &["--tls-key", "/k.pem", "ring"],
        ] {
            let err = parse(lone).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{lone:?}");
        }
        if std::env::vars_os().all(|(name, _)| !name.to_string_lossy().starts_with("DYNAMO_TLS")) {
            assert!(!parse(&["ring"]).unwrap().tls.enabled());
        }
    }

    #[test]
    fn endpoints_default_to_https_with_tls_and_refuse_plain_http() {
        assert_eq!(normalize_endpoint("h:1", false).unwrap(), "http://h:1");
        assert_eq!(normalize_endpoint("h:1", true).unwrap(), "https://h:1");
        assert_eq!(
            normalize_endpoint("https://h:1", true).unwrap(),
            "https://h:1"
        );
        assert_eq!(
            normalize_endpoint("https://h:1", false).unwrap(),
            "https://h:1"
        );
        let err = normalize_endpoint("http://h:1", true).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("plain http://"), "{err}");
        assert_eq!(
            admin_endpoint(DEFAULT_ENDPOINT, None, true).unwrap(),
            "https://127.0.0.1:7001"
        );
        assert_eq!(
            admin_endpoint("a:1", Some("http://b:2"), true)
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            admin_endpoint("http://a:1", None, true)
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    /// A self-signed certificate and its key as PEM files in `dir`.
    fn write_identity(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn tls_files_load_into_a_client_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_identity(dir.path());
        assert!(TlsArgs::default().client_config().unwrap().is_none());
        let ca_only = TlsArgs {
            ca: Some(cert.clone()),
            ..TlsArgs::default()
        };
        assert!(ca_only.client_config().unwrap().is_some());
        let mutual = TlsArgs {
            ca: None,
            cert: Some(cert),
            key: Some(key),
        };
        assert!(mutual.client_config().unwrap().is_some());
    }

    #[test]
    fn unreadable_or_bad_tls_files_are_usage_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_identity(dir.path());
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let cases = [
            (
                TlsArgs {
                    ca: Some(missing.clone()),
                    ..TlsArgs::default()
                },
                "reading --tls-ca",
                &missing,
            ),
            (
                TlsArgs {
                    ca: Some(garbage.clone()),
                    ..TlsArgs::default()
                },
                "--tls-ca",
                &garbage,
            ),
            (
                TlsArgs {
                    ca: None,
                    cert: Some(key.clone()),
                    key: Some(key.clone()),
                },
                "--tls-cert",
                &key,
            ),
            (
                TlsArgs {
                    ca: None,
                    cert: Some(cert.clone()),
                    key: Some(cert.clone()),
                },
                "--tls-key",
                &cert,
            ),
            (
                TlsArgs {
                    ca: None,
                    cert: Some(cert.clone()),
                    key: None,
                },
                "go together",
                &cert,
            ),
        ];
        for (args, flag, path) in cases {
            let err = args.client_config().unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            let text = err.to_string();
            assert!(text.contains(flag), "{text}");
            if flag != "go together" {
                assert!(text.contains(&path.display().to_string()), "{text}");
            }
        }
    }

    proptest! {
        #[test]
        fn context_base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = encode_context(&bytes);
            prop_assert_eq!(decode_context(Some(&text)).unwrap(), bytes);
        }
    }
}
