//! `dynamoctl`, the command-line client: the I/O shell around the gRPC `Kv` and `Admin`
//! APIs, plus `dev`, a one-command local cluster, and `bench`, a YCSB-style load generator.
//!
//! The paper's clients call `get(key)` and `put(key, context, value)` (Dynamo §4.1) and an
//! administrator issues membership changes from "a command line tool" (§4.8.1); this is
//! that tool. Contexts travel as standard base64 so a script can pass a get's context to
//! the next put. The binary `src/main.rs` only calls [`main`].
//!
//! TLS: `--tls-ca` trusts a CA (or the nodes' shared certificate), `--tls-cert` and
//! `--tls-key` present a client certificate for mutual TLS on the admin port; with any
//! of them, `host:port` endpoints mean `https://` and `http://` ones are refused.
//!
//! Exit codes: 0 success, 1 not found (a get of a missing key, an admin change naming an
//! unknown node), 2 usage error (bad flags, a bad `--context`, an argument the server
//! rejects as invalid), 3 server error or server unreachable, 4 conflict (a put refused
//! because the key holds too many concurrent versions: get it, then put one value with
//! the read's `--context`).

pub mod args;
pub mod bench;
mod connection;
pub mod dev;
mod error;
pub mod output;
mod wire;

pub use error::{CtlError, EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_SERVER, EXIT_USAGE, exit_code_for};

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::ExitCode;

use clap::Parser;

use args::{AdminCommand, Cli, Command};
use connection::{AdminTarget, bearer, connect};
use dynamo_proto::{self as proto, kv_client::KvClient};
use output::{GetJson, RingJson, StatusJson, WriteJson, print_out};

/// Runs `dynamoctl` with these arguments (the first is the program name): parses,
/// runs the command on a tokio runtime, prints errors as `dynamoctl: <message>` on
/// stderr, and returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and exit 0; errors exit 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dynamoctl: starting the runtime: {e}");
            return ExitCode::from(EXIT_SERVER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dynamoctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one parsed command.
///
/// # Errors
///
/// See [`CtlError`]; a get of a missing key is [`CtlError::NotFound`] after its output
/// (the JSON document, or the context on stderr) has been printed.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let Cli {
        endpoint,
        admin_endpoint,
        admin_token,
        timeout,
        json,
        tls,
        command,
    } = cli;
    let target = Target {
        endpoint,
        admin_endpoint,
        admin_token,
        timeout,
        tls,
    };
    match command {
        Command::Get { key, r } => get(&target, &key, r, json).await,
        Command::Put {
            key,
            value,
            file,
            context,
            w,
        } => {
            let context = args::decode_context(context.as_deref())?;
            let value = read_value(value.as_deref(), file.as_deref())?;
            put(&target, &key, context, value, w, json).await
        }
        Command::Delete { key, context, w } => {
            let context = args::decode_context(context.as_deref())?;
            delete(&target, &key, context, w, json).await
        }
        Command::Resolve {
            key,
            value,
            file,
            pick,
            w,
        } => {
            let choice = match pick {
                Some(n) => Choice::Pick(n),
                None => Choice::Value(read_value(value.as_deref(), file.as_deref())?),
            };
            resolve(&target, &key, choice, w, json).await
        }
        Command::Ring => ring(&target, json).await,
        Command::Status => status(&target, json).await,
        Command::Admin(change) => admin_change(&target, change, json).await,
        Command::Dev(dev_args) => dev::run(dev_args, target.admin_token, json).await,
        Command::Bench(bench_args) => {
            let config = target.tls.client_config()?;
            bench::run(
                &target.endpoint,
                bench_args,
                target.timeout,
                json,
                target.tls.enabled(),
                config.as_ref(),
            )
            .await
        }
    }
}

/// Where a command connects, from the global flags. TLS files are read when a command
/// connects (`dev` never does).
struct Target {
    endpoint: String,
    admin_endpoint: Option<String>,
    admin_token: Option<String>,
    timeout: std::time::Duration,
    tls: args::TlsArgs,
}

impl Target {
    /// A connected client of the `Kv` API.
    async fn kv(&self) -> Result<KvClient<tonic::transport::Channel>, CtlError> {
        let url = args::normalize_endpoint(&self.endpoint, self.tls.enabled())?;
        let config = self.tls.client_config()?;
        Ok(KvClient::new(
            connect(&url, self.timeout, config.as_ref()).await?,
        ))
    }

    /// A connected client of the `Admin` API, sending the admin token.
    async fn admin(&self) -> Result<connection::AdminChannel, CtlError> {
        AdminTarget {
            url: args::admin_endpoint(
                &self.endpoint,
                self.admin_endpoint.as_deref(),
                self.tls.enabled(),
            )?,
            token: bearer(self.admin_token.as_deref())?,
            timeout: self.timeout,
            tls: self.tls.client_config()?,
        }
        .client()
        .await
    }
}

async fn get(target: &Target, key: &str, r: Option<u32>, json: bool) -> Result<(), CtlError> {
    let response = target
        .kv()
        .await?
        .get(proto::GetRequest {
            key: key.as_bytes().to_vec().into(),
            r,
        })
        .await
        .map_err(|s| CtlError::rpc("get", &s))?
        .into_inner();
    print_get(key, &response, json)
}

async fn put(
    target: &Target,
    key: &str,
    context: Vec<u8>,
    value: Vec<u8>,
    w: Option<u32>,
    json: bool,
) -> Result<(), CtlError> {
    let response = target
        .kv()
        .await?
        .put(proto::PutRequest {
            key: key.as_bytes().to_vec().into(),
            context: context.into(),
            value: value.into(),
            w,
        })
        .await
        .map_err(|s| CtlError::rpc("put", &s))?
        .into_inner();
    print_write(key, &response.context, json)
}

async fn delete(
    target: &Target,
    key: &str,
    context: Vec<u8>,
    w: Option<u32>,
    json: bool,
) -> Result<(), CtlError> {
    let response = target
        .kv()
        .await?
        .delete(proto::DeleteRequest {
            key: key.as_bytes().to_vec().into(),
            context: context.into(),
            w,
        })
        .await
        .map_err(|s| CtlError::rpc("delete", &s))?
        .into_inner();
    print_write(key, &response.context, json)
}

/// The value `resolve` keeps.
enum Choice {
    /// The N-th version the read finds (from 1).
    Pick(usize),
    /// A value the user supplied.
    Value(Vec<u8>),
}

/// Reads `key` and writes one value with the read's context, replacing every version
/// the read saw.
async fn resolve(
    target: &Target,
    key: &str,
    choice: Choice,
    w: Option<u32>,
    json: bool,
) -> Result<(), CtlError> {
    let mut client = target.kv().await?;
    let read = client
        .get(proto::GetRequest {
            key: key.as_bytes().to_vec().into(),
            r: None,
        })
        .await
        .map_err(|s| CtlError::rpc("get", &s))?
        .into_inner();
    let value = match choice {
        Choice::Pick(n) => chosen_version(key, &read.values, n)?,
        Choice::Value(value) => value,
    };
    let response = client
        .put(proto::PutRequest {
            key: key.as_bytes().to_vec().into(),
            context: read.context,
            value: value.into(),
            w,
        })
        .await
        .map_err(|s| CtlError::rpc("put", &s))?
        .into_inner();
    print_write(key, &response.context, json)
}

async fn ring(target: &Target, json: bool) -> Result<(), CtlError> {
    let ring = target
        .admin()
        .await?
        .ring(proto::RingRequest {})
        .await
        .map_err(|s| CtlError::rpc("ring", &s))?
        .into_inner();
    print_out(if json {
        output::to_json(&RingJson::from(&ring))
    } else {
        output::render_ring(&ring)
    })
}

async fn status(target: &Target, json: bool) -> Result<(), CtlError> {
    let status = target
        .admin()
        .await?
        .status(proto::StatusRequest {})
        .await
        .map_err(|s| CtlError::rpc("status", &s))?
        .into_inner();
    print_out(if json {
        output::to_json(&StatusJson::from(&status))
    } else {
        output::render_status(&status)
    })
}

/// An explicit membership change (Dynamo §4.8.1); prints the member it changed.
async fn admin_change(target: &Target, change: AdminCommand, json: bool) -> Result<(), CtlError> {
    let mut client = target.admin().await?;
    let response = match change {
        AdminCommand::Join {
            node_id,
            address,
            weight,
            zone,
        } => client
            .join(proto::JoinRequest {
                node_id,
                address,
                weight,
                zone,
            })
            .await
            .map_err(|s| CtlError::rpc("join", &s))?,
        AdminCommand::Leave { node_id } => client
            .leave(proto::LeaveRequest { node_id })
            .await
            .map_err(|s| CtlError::rpc("leave", &s))?,
        AdminCommand::Remove { node_id } => client
            .remove(proto::RemoveRequest { node_id })
            .await
            .map_err(|s| CtlError::rpc("remove", &s))?,
        AdminCommand::Weight { node_id, weight } => client
            .set_weight(proto::SetWeightRequest { node_id, weight })
            .await
            .map_err(|s| CtlError::rpc("weight", &s))?,
    }
    .into_inner();
    let member = response.member.unwrap_or_default();
    print_out(if json {
        output::to_json(&output::MemberJson::from(&member))
    } else {
        output::render_member(&member)
    })
}

fn print_get(key: &str, response: &proto::GetResponse, json: bool) -> Result<(), CtlError> {
    if json {
        print_out(output::to_json(&GetJson::new(key, response)))?;
    } else {
        std::io::stdout().write_all(&output::render_values(&response.values))?;
        if response.values.len() > 1 {
            eprintln!(
                "{} concurrent versions (siblings); put with this context to reconcile them",
                response.values.len()
            );
        }
        if !response.context.is_empty() {
            eprintln!("context: {}", args::encode_context(&response.context));
        }
    }
    if response.values.is_empty() {
        return Err(CtlError::NotFound(key.to_owned()));
    }
    Ok(())
}

fn print_write(key: &str, context: &[u8], json: bool) -> Result<(), CtlError> {
    let context = args::encode_context(context);
    print_out(if json {
        output::to_json(&WriteJson {
            key: key.to_owned(),
            context,
        })
    } else {
        format!("{context}\n")
    })
}

/// The value of a put: the argument, stdin for `-`, or a file's contents.
fn read_value(value: Option<&str>, file: Option<&std::path::Path>) -> Result<Vec<u8>, CtlError> {
    match (value, file) {
        (_, Some(path)) => std::fs::read(path)
            .map_err(|e| CtlError::Usage(format!("reading --file {}: {e}", path.display()))),
        (Some("-"), None) => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| CtlError::Usage(format!("reading the value from stdin: {e}")))?;
            Ok(bytes)
        }
        (Some(value), None) => Ok(value.as_bytes().to_vec()),
        // clap requires one of the two.
        (None, None) => Err(CtlError::Usage("put needs a VALUE or --file".to_owned())),
    }
}

/// Version `n` (from 1, in the order `get` lists them) of the versions a read found.
fn chosen_version(key: &str, versions: &[bytes::Bytes], n: usize) -> Result<Vec<u8>, CtlError> {
    if versions.is_empty() {
        return Err(CtlError::NotFound(key.to_owned()));
    }
    n.checked_sub(1)
        .and_then(|index| versions.get(index))
        .map(|version| version.to_vec())
        .ok_or_else(|| {
            CtlError::Usage(format!(
                "{key} has {} version(s) now; --pick takes 1..={}",
                versions.len(),
                versions.len()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use tonic::service::Interceptor as _;

    #[test]
    fn exit_codes_follow_the_grpc_code() {
        assert_eq!(exit_code_for(tonic::Code::Ok), 0);
        assert_eq!(exit_code_for(tonic::Code::NotFound), EXIT_NOT_FOUND);
        assert_eq!(exit_code_for(tonic::Code::InvalidArgument), EXIT_USAGE);
        assert_eq!(exit_code_for(tonic::Code::OutOfRange), EXIT_USAGE);
        assert_eq!(exit_code_for(tonic::Code::Aborted), EXIT_CONFLICT);
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Internal,
            tonic::Code::Unauthenticated,
            tonic::Code::FailedPrecondition,
            tonic::Code::Unknown,
        ] {
            assert_eq!(exit_code_for(code), EXIT_SERVER, "{code:?}");
        }
    }

    #[test]
    fn rpc_errors_carry_the_status_message_and_its_exit_code() {
        // Dynamo §4.5: a put that cannot reach W replicas fails; the reason must show.
        let status = tonic::Status::unavailable("2 of 2 write acknowledgements needed, got 1");
        let err = CtlError::rpc("put", &status);
        assert_eq!(
            err.to_string(),
            "put failed (Unavailable): 2 of 2 write acknowledgements needed, got 1"
        );
        assert_eq!(err.exit_code(), EXIT_SERVER);
        let refused = CtlError::rpc("get", &tonic::Status::invalid_argument("r must be 1..=3"));
        assert_eq!(refused.exit_code(), EXIT_USAGE);
    }

    #[test]
    fn not_found_and_unreachable_exit_codes() {
        assert_eq!(CtlError::NotFound("k".into()).exit_code(), EXIT_NOT_FOUND);
        let down = CtlError::Unavailable {
            endpoint: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(down.exit_code(), EXIT_SERVER);
        assert_eq!(
            down.to_string(),
            "cannot reach http://127.0.0.1:1: connection refused"
        );
    }

    #[test]
    fn bearer_token_is_sent_only_when_set() {
        let mut with = bearer(Some("s3cret")).unwrap();
        let request = with.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        let mut without = bearer(None).unwrap();
        let request = without.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
        assert_eq!(
            bearer(Some("bad\ntoken")).unwrap_err().exit_code(),
            EXIT_USAGE
        );
    }

    #[test]
    fn values_come_from_the_argument_or_a_file() {
        assert_eq!(read_value(Some("v"), None).unwrap(), b"v");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value.bin");
        std::fs::write(&path, [0u8, 1, 2]).unwrap();
        assert_eq!(read_value(None, Some(&path)).unwrap(), vec![0, 1, 2]);
        let missing = read_value(None, Some(&dir.path().join("missing"))).unwrap_err();
        assert_eq!(missing.exit_code(), EXIT_USAGE);
        assert!(missing.to_string().contains("reading --file"), "{missing}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unavailable_with_the_cause() {
        let err = connect("http://127.0.0.1:1", Duration::from_secs(2), None)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), EXIT_SERVER);
        let text = err.to_string();
        assert!(
            text.starts_with("cannot reach http://127.0.0.1:1: "),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }

    #[tokio::test]
    async fn a_malformed_endpoint_is_a_usage_error() {
        let err = connect("http://bad host:1", Duration::from_secs(1), None)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE, "{err}");
    }
}
