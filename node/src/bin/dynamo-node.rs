//! `dynamo-node`: runs one storage node.
//!
//! Thin on purpose: parsing and validation live in [`dynamo_node::config`]; this file
//! only hands it the process's arguments and environment and turns the outcome into
//! output and an exit code (0 ok, 2 for a configuration refused at start).

use std::process::ExitCode;

use dynamo_node::config::{self, ConfigError, Invocation};
use dynamo_node::node::{Node, NodeError};

/// mimalloc instead of glibc's malloc: a node allocates and frees many small buffers per
/// request (HTTP/2 frames, protobuf messages, sibling sets), and under load glibc's
/// allocator took about a fifth of the node's CPU (BENCHMARKS.md, "Speed").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration the node refuses (clap uses 2 for usage errors too).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let invocation = match config::load_from_args(std::env::args_os(), &env) {
        Ok(invocation) => invocation,
        // --help, --version and command-line errors: clap prints and picks the code.
        Err(ConfigError::Args(e)) => {
            // Printing to a closed stdout/stderr is not worth a second error.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_BAD_CONFIG));
        }
        Err(e) => return refuse(&e),
    };
    let Invocation {
        config,
        check_config,
        ..
    } = invocation;
    let yaml = match config.to_yaml() {
        Ok(yaml) => yaml,
        Err(e) => return refuse(&e),
    };
    if check_config {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    drop(yaml);
    init_logging(config.log());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dynamo-node: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dynamo-node: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the node, announces where it listens, and stops it cleanly on SIGTERM or
/// SIGINT (in-flight requests drain, storage is flushed).
async fn run(config: dynamo_node::config::NodeConfig) -> Result<(), NodeError> {
    let node = Node::start(config).await?;
    // One machine-readable line, so scripts and tests that asked for port 0 learn the
    // ports actually bound.
    let http = node
        .http_addr
        .map(|address| format!(" http={address}"))
        .unwrap_or_default();
    println!(
        "dynamo-node ready client={} internode={}{http}",
        node.client_addr, node.internode_addr
    );
    let trigger = node.shutdown_trigger();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        let _ = trigger.send(true);
    });
    node.wait().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the node runs until killed.
            std::future::pending::<()>().await;
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Reports why the configuration was refused and exits with 2. The message is
/// complete: the error's text already includes its cause.
fn refuse(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("dynamo-node: invalid configuration: {error}");
    ExitCode::from(EXIT_BAD_CONFIG)
}
