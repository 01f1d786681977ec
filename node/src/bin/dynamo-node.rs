//! `dynamo-node`: runs one storage node.
//!
//! Thin on purpose: parsing and validation live in [`dynamo_node::config`]; this file
//! only hands it the process's arguments and environment and turns the outcome into
//! output and an exit code (0 ok, 2 for a configuration refused at start).

use std::process::ExitCode;

use dynamo_node::config::{self, ConfigError, Invocation};

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
    // PLACEHOLDER until the node runtime exists: replace this line with `Node::run(config)`.
    print!("{yaml}");
    ExitCode::SUCCESS
}

/// Reports why the configuration was refused and exits with 2. The message is
/// complete: the error's text already includes its cause.
fn refuse(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("dynamo-node: invalid configuration: {error}");
    ExitCode::from(EXIT_BAD_CONFIG)
}
