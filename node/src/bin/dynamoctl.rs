//! `dynamoctl`: the command-line client.

use clap::Parser;

/// Command-line client for a Dynamo cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
