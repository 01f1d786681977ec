//! Prints ownership balance and data movement for both partitioning strategies
//! (Dynamo §6.2): max/mean ownership at 10 equal nodes, and the share of keys whose
//! primary owner (and whose N=3 replica set) changes when an 11th node joins, against the
//! ideal 1/11.
//!
//! Run: `cargo run --release -p dynamo-node --example ring_balance`

use dynamo_node::NodeId;
use dynamo_node::ring::{PartitionStrategy, Ring, Token};

const SAMPLE_KEYS: u32 = 200_000;

fn members(count: usize) -> Vec<(NodeId, u32)> {
    (1..=count)
        .map(|i| (NodeId::new(format!("node{i}")).expect("valid id"), 1))
        .collect()
}

fn balance(ring: &Ring) -> f64 {
    let ownership = ring.ownership();
    let max = ownership.values().copied().fold(0.0_f64, f64::max);
    let mean = 1.0 / ownership.len() as f64;
    max / mean
}

/// Fractions of sampled keys whose primary, and whose first-3 replica set, moved.
fn moved(old: &Ring, new: &Ring) -> (f64, f64) {
    let (mut primary, mut replicas) = (0u32, 0u32);
    for i in 0..SAMPLE_KEYS {
        let token = Token::of(format!("key-{i}").as_bytes());
        let before = old.preference_list(token, 3);
        let after = new.preference_list(token, 3);
        primary += u32::from(before.first() != after.first());
        let mut b = before.clone();
        let mut a = after.clone();
        b.sort();
        a.sort();
        replicas += u32::from(a != b);
    }
    (
        f64::from(primary) / f64::from(SAMPLE_KEYS),
        f64::from(replicas) / f64::from(SAMPLE_KEYS),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ten = members(10);
    let eleven = members(11);
    println!("ideal share moved by an 11th node: {:.4}", 1.0 / 11.0);
    println!(
        "{:<56} {:>12} {:>14} {:>16}",
        "strategy", "max/mean", "primary moved", "replica set moved"
    );
    let cases: [(&str, PartitionStrategy, bool); 3] = [
        (
            "1: random tokens, T=256 per weight",
            PartitionStrategy::random_tokens(256)?,
            false,
        ),
        (
            "3: Q=1024, rebalanced from the previous ring",
            PartitionStrategy::equal_partitions(1024)?,
            true,
        ),
        (
            "3: Q=1024, rebuilt from the member set (what nodes do)",
            PartitionStrategy::equal_partitions(1024)?,
            false,
        ),
    ];
    for (name, strategy, from_previous) in cases {
        let old = Ring::build(&ten, strategy, 1, None)?;
        let previous = from_previous.then_some(&old);
        let new = Ring::build(&eleven, strategy, 2, previous)?;
        let (primary, replicas) = moved(&old, &new);
        println!(
            "{name:<56} {:>12.3} {:>14.4} {:>16.4}",
            balance(&old),
            primary,
            replicas
        );
    }
    Ok(())
}
