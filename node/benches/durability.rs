//! What `--durability sync` costs per write on this machine's disk: a 1 KiB update of
//! a sled engine acknowledged buffered (in memory) and sync (sled's flush, then
//! `fdatasync` of the log: see `storage::durable_files`), one writer at a time, so
//! every sync write pays a whole flush (concurrent writers share one: group commit).
//!
//! Run: `cargo bench -p dynamo-node --bench durability`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dynamo_node::storage::{Durability, SledConfig, SledEngine, StorageEngine};

fn durability(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // No periodic flush: the buffered figure is the write alone.
    let config = SledConfig::new(dir.path())
        .with_flush_interval(None)
        .expect("a valid config");
    let engine = SledEngine::open(&config).expect("sled opens");
    let value = vec![7u8; 1024];
    let mut key = 0u64;
    for (name, durability) in [
        ("sled_update_1KiB_buffered", Durability::Buffered),
        ("sled_update_1KiB_sync", Durability::Sync),
    ] {
        c.bench_function(name, |bench| {
            bench.iter(|| {
                key += 1;
                engine
                    .update(
                        &key.to_be_bytes(),
                        &mut |_| Some(black_box(value.clone())),
                        durability,
                    )
                    .expect("the write succeeds")
            })
        });
    }
    let counts = engine.sync_counts();
    println!(
        "fdatasync calls: {} of the log, {} of blob files (flushes: {})",
        counts.log,
        counts.blobs,
        engine.flush_count()
    );
}

criterion_group!(benches, durability);
criterion_main!(benches);
