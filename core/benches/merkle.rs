//! Merkle tree costs for anti-entropy (Dynamo §4.7): bulk build, one incremental
//! update, and a top-down diff.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dynamo_core::merkle::{Exchange, MerkleTree};
use dynamo_core::ring::TokenRange;

const DEPTH: u8 = 10;
const ENTRIES: u32 = 100_000;

fn key(n: u32) -> Vec<u8> {
    format!("key-{n}").into_bytes()
}

fn entries() -> Vec<(Vec<u8>, [u8; 16])> {
    (0..ENTRIES).map(|n| (key(n), [1; 16])).collect()
}

fn merkle(c: &mut Criterion) {
    let entries = entries();
    c.bench_function("build depth-10 tree from 100k entries", |b| {
        b.iter(|| {
            let tree = MerkleTree::from_entries(TokenRange::full(), DEPTH, entries.iter().cloned())
                .unwrap();
            black_box(tree.root())
        })
    });

    let mut tree = MerkleTree::from_entries(TokenRange::full(), DEPTH, entries.clone()).unwrap();
    let mut version = [1u8; 16];
    c.bench_function("update one key and read the root", |b| {
        b.iter(|| {
            let old = version;
            version[0] = version[0].wrapping_add(1);
            tree.update(black_box(b"key-42"), old, version).unwrap();
            black_box(tree.root())
        })
    });

    let ours = MerkleTree::from_entries(TokenRange::full(), DEPTH, entries.clone()).unwrap();
    let mut theirs = ours.clone();
    for n in (0..10).map(|i| i * 9_973) {
        theirs.update(&key(n), [1; 16], [2; 16]).unwrap();
    }
    // Hash both trees before timing, so the diff measures only the walk.
    black_box((ours.root(), theirs.root()));
    c.bench_function("diff two trees with 10 differing keys", |b| {
        b.iter(|| black_box(ours.diff(black_box(&theirs)).unwrap()))
    });
    c.bench_function("exchange with 10 differing keys", |b| {
        b.iter(|| {
            let mut exchange = Exchange::new(&ours);
            loop {
                if let Some(differing) = exchange.poll_result() {
                    break black_box(differing);
                }
                let (level, indices) = exchange.poll_request().unwrap();
                let answer = theirs.hashes_at(level, &indices).unwrap();
                exchange.handle_hashes(level, answer).unwrap();
            }
        })
    });
}

criterion_group!(benches, merkle);
criterion_main!(benches);
