//! `dynamo-node`: runs one storage node.

use clap::Parser;

/// A Dynamo-style storage node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
