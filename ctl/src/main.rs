//! `dynamoctl`: the command-line client. Thin on purpose: everything lives in
//! the `dynamo_ctl` library, which parses, runs and picks the exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    dynamo_ctl::main(std::env::args_os())
}
