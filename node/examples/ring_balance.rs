//! Prints ownership balance and data movement for both partitioning strategies
//! (Dynamo §6.2): max/mean ownership at 10 equal nodes, and the share of keys whose
//! primary owner (and whose N=3 replica set) changes when an 11th node joins, against the
//! ideal 1/11, and when the 10th leaves and node1's weight doubles; then the same with the
//! nodes in three zones (node i in zone i mod 3), where every replica set must span the
//! three zones.
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

/// `ring` with node `nodeK` in zone `K mod zones` (no zones when `zones` is 0).
fn in_zones(ring: Ring, zones: usize) -> Ring {
    if zones == 0 {
        return ring;
    }
    ring.zoned(|id| {
        let k: usize = id.as_str()["node".len()..].parse().ok()?;
        Some(format!("z{}", k % zones))
    })
}

/// The share of sampled keys whose N=3 replicas sit in 3 distinct zones.
fn spread(ring: &Ring) -> f64 {
    let spread = (0..SAMPLE_KEYS)
        .filter(|i| {
            let list = ring.preference_list(Token::of(format!("key-{i}").as_bytes()), 3);
            let mut zones: Vec<&str> = list.iter().filter_map(|n| ring.zone(n)).collect();
            zones.sort_unstable();
            zones.dedup();
            zones.len() == 3
        })
        .count();
    spread as f64 / f64::from(SAMPLE_KEYS)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ten = members(10);
    let eleven = members(11);
    let nine = members(9);
    let mut heavier = members(10);
    heavier[0].1 = 2;
    println!("ideal share moved by an 11th node: {:.4}", 1.0 / 11.0);
    println!(
        "{:<56} {:<14} {:>6} {:>10} {:>14} {:>18} {:>12}",
        "strategy", "change", "zones", "max/mean", "primary moved", "replica set moved", "3 zones"
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
    let changes: [(&str, &[(NodeId, u32)]); 3] = [
        ("11th joins", &eleven),
        ("10th leaves", &nine),
        ("node1 weight 2", &heavier),
    ];
    for zones in [0, 3] {
        for (change, after) in changes {
            for (name, strategy, from_previous) in cases {
                let old = Ring::build(&ten, strategy, 1, None)?;
                let previous = from_previous.then_some(&old);
                let new = in_zones(Ring::build(after, strategy, 2, previous)?, zones);
                let old = in_zones(old, zones);
                let (primary, replicas) = moved(&old, &new);
                println!(
                    "{name:<56} {change:<14} {zones:>6} {:>10.3} {:>14.4} {:>18.4} {:>12.4}",
                    balance(&old),
                    primary,
                    replicas,
                    spread(&new)
                );
            }
        }
    }
    Ok(())
}
