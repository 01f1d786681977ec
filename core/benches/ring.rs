//! Ring benchmarks: preference-list lookup and ring build for a 10-node ring under
//! both partitioning strategies (Dynamo §6.2).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dynamo_core::NodeId;
use dynamo_core::ring::{PartitionStrategy, Ring, Token, moves};

fn members(count: u32) -> Vec<(NodeId, u32)> {
    (0..count)
        .map(|i| (NodeId::new(format!("dynamo-{i}")).unwrap(), 1))
        .collect()
}

fn strategies() -> [(&'static str, PartitionStrategy); 2] {
    [
        ("tokens256", PartitionStrategy::random_tokens(256).unwrap()),
        ("q1024", PartitionStrategy::equal_partitions(1024).unwrap()),
    ]
}

fn lookup(c: &mut Criterion) {
    let members = members(10);
    for (name, strategy) in strategies() {
        let ring = Ring::build(&members, strategy, 1, None).unwrap();
        let mut key = 0u128;
        c.bench_function(&format!("preference_list_n3/{name}/10_nodes"), |b| {
            b.iter(|| {
                // A cheap odd-step walk over the ring instead of hashing a key.
                key = key.wrapping_add(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
                black_box(ring.preference_list(black_box(Token(key)), 3))
            })
        });
    }
}

fn build(c: &mut Criterion) {
    let members = members(10);
    for (name, strategy) in strategies() {
        c.bench_function(&format!("build/{name}/10_nodes"), |b| {
            b.iter(|| Ring::build(black_box(&members), strategy, 1, None).unwrap())
        });
    }
}

fn join_moves(c: &mut Criterion) {
    let before = members(10);
    let after = members(11);
    for (name, strategy) in strategies() {
        let old = Ring::build(&before, strategy, 1, None).unwrap();
        let new = Ring::build(&after, strategy, 2, Some(&old)).unwrap();
        c.bench_function(&format!("moves_n3/{name}/join_11th"), |b| {
            b.iter(|| moves(black_box(&old), black_box(&new), 3))
        });
    }
}

criterion_group!(benches, lookup, build, join_moves);
criterion_main!(benches);
