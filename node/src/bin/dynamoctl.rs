//! `dynamoctl`: the command-line client. Thin on purpose: everything lives in
//! [`dynamo_node::ctl`], which parses, runs and picks the exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    dynamo_node::ctl::main(std::env::args_os())
}
