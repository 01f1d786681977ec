//! Versioning hot paths: clock compare and merge, sibling-set merge and put, and the
//! client context codec.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dynamo_core::NodeId;
use dynamo_core::time::Millis;
use dynamo_core::version::context::Context;
use dynamo_core::version::{Actor, SiblingLimits, SiblingSet, Value, VectorClock, context};

fn actor(i: usize) -> Actor {
    Actor::new(NodeId::new(format!("dynamo-{i}")).unwrap(), 1)
}

/// Two ten-entry clocks over the same actors, each ahead on half of them.
fn clocks() -> (VectorClock, VectorClock) {
    let (mut a, mut b) = (VectorClock::new(), VectorClock::new());
    for i in 0..10 {
        let (mine, theirs) = if i % 2 == 0 { (3, 1) } else { (1, 3) };
        for n in 0..mine {
            a.increment(&actor(i), Millis(n));
        }
        for n in 0..theirs {
            b.increment(&actor(i), Millis(n));
        }
    }
    (a, b)
}

/// Two replica states with three concurrent siblings each, sharing history.
fn states() -> (SiblingSet, SiblingSet) {
    let limits = SiblingLimits::default();
    let mut base = SiblingSet::new();
    base.put(
        &Context::new(),
        Value::data(vec![0; 64]),
        &actor(0),
        Millis(1),
        &limits,
    )
    .unwrap();
    let ctx = base.context();
    let (mut a, mut b) = (base.clone(), base);
    for i in 0..3 {
        a.put(
            &ctx,
            Value::data(vec![1; 64]),
            &actor(1 + i),
            Millis(2),
            &limits,
        )
        .unwrap();
        b.put(
            &ctx,
            Value::data(vec![2; 64]),
            &actor(4 + i),
            Millis(3),
            &limits,
        )
        .unwrap();
    }
    (a, b)
}

fn bench(c: &mut Criterion) {
    let (a, b) = clocks();
    c.bench_function("clock_compare_10", |bench| {
        bench.iter(|| black_box(&a).compare(black_box(&b)))
    });
    c.bench_function("clock_merge_10", |bench| {
        bench.iter(|| {
            let mut m = a.clone();
            m.merge(black_box(&b));
            m
        })
    });

    let (x, y) = states();
    c.bench_function("sibling_set_merge_3x3", |bench| {
        bench.iter(|| {
            let mut m = x.clone();
            m.merge(black_box(&y));
            m
        })
    });

    let mut read = x.clone();
    read.merge(&y);
    let ctx = read.context();
    let limits = SiblingLimits::default();
    let writer = actor(0);
    c.bench_function("put_with_context_6_siblings", |bench| {
        bench.iter(|| {
            let mut s = read.clone();
            s.put(
                black_box(&ctx),
                Value::data(&b"v"[..]),
                &writer,
                Millis(9),
                &limits,
            )
            .unwrap()
        })
    });

    let a = Context::from(a);
    let bytes = context::encode(&a);
    c.bench_function("context_encode_10", |bench| {
        bench.iter(|| context::encode(black_box(&a)))
    });
    c.bench_function("context_decode_10", |bench| {
        bench.iter(|| context::decode(black_box(&bytes)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
