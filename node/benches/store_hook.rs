//! The write path's cost of keeping Merkle trees (Dynamo §4.7): `Store::merge` and
//! `Store::coordinate` of 1 KiB values into an in-memory engine holding 10,000 keys,
//! on a node with anti-entropy disabled (no trees, no observer) and enabled (a ready
//! full-ring tree updated on every write, under the per-key lock).
//!
//! Run: `cargo bench -p dynamo-node --bench store_hook`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dynamo_node::NodeId;
use dynamo_node::antientropy::AntiEntropyConfig;
use dynamo_node::node::{NodeSettings, NodeShared};
use dynamo_node::storage::{Durability, MemoryEngine};
use dynamo_node::time::Millis;
use dynamo_node::transport::MemoryNetwork;
use dynamo_node::version::context::Context;
use dynamo_node::version::{Actor, SiblingLimits, SiblingSet, Value};

const KEYS: u32 = 10_000;

/// A one-node cluster holding `KEYS` keys, with its trees built when `trees` is set.
fn node(trees: bool) -> Arc<NodeShared> {
    let id = NodeId::new("bench").expect("valid id");
    let mut settings = NodeSettings::new(id.clone());
    settings.anti_entropy = AntiEntropyConfig {
        interval: if trees {
            Duration::from_secs(30)
        } else {
            Duration::ZERO
        },
        ..AntiEntropyConfig::default()
    };
    let network = MemoryNetwork::default();
    let node = NodeShared::assemble(
        settings,
        Arc::new(MemoryEngine::new()),
        Arc::new(network.endpoint("bench:1")),
        "bench:1".into(),
    )
    .expect("assembling a node");
    node.change_membership(|table| {
        table.join(id.clone(), "bench:1", 1)?;
        table.mark_member(&id)
    })
    .expect("joining");
    for n in 0..KEYS {
        node.store()
            .merge(&key(n), &state(n, 0), Durability::Buffered)
            .expect("filling");
    }
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(node.refresh_trees());
    assert_eq!(node.antientropy().trees().counts().ready, u64::from(trees));
    node
}

fn key(n: u32) -> Vec<u8> {
    format!("key-{n}").into_bytes()
}

/// Version `version` of key `n`'s state: a 1 KiB value from a replica.
fn state(n: u32, version: u64) -> SiblingSet {
    let mut state = SiblingSet::new();
    let actor = Actor::new(NodeId::new("writer").expect("valid id"), version + 1);
    state
        .put(
            &Context::new(),
            Value::data(vec![(n % 251) as u8; 1024]),
            &actor,
            Millis(version),
            &SiblingLimits::default(),
        )
        .expect("put");
    state
}

fn store_hook(c: &mut Criterion) {
    for trees in [false, true] {
        let label = if trees { "with trees" } else { "without trees" };
        let node = node(trees);
        let updates: Vec<(Vec<u8>, SiblingSet)> =
            (0..KEYS).map(|n| (key(n), state(n, 1))).collect();
        let mut next = 0usize;
        c.bench_function(&format!("Store::merge 1 KiB, {label}"), |b| {
            b.iter(|| {
                let (key, state) = &updates[next % updates.len()];
                next += 1;
                black_box(
                    node.store()
                        .merge(key, state, Durability::Buffered)
                        .unwrap(),
                )
            })
        });
        let value = Value::data(vec![7u8; 1024]);
        let mut n = 0u32;
        c.bench_function(&format!("Store::coordinate 1 KiB, {label}"), |b| {
            b.iter(|| {
                n = (n + 1) % KEYS;
                let key = key(n);
                let current = node.store().read(&key).unwrap();
                black_box(
                    node.store()
                        .coordinate(
                            &key,
                            &current.context(),
                            value.clone(),
                            Millis(1),
                            Durability::Buffered,
                        )
                        .unwrap(),
                )
            })
        });
    }
}

criterion_group!(benches, store_hook);
criterion_main!(benches);
