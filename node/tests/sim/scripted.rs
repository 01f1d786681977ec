//! Scripted runs: one fault sequence, written out step by step, for a danger the random
//! schedule reaches too rarely to count on. Same world, nodes and checker as the random
//! runs.

use std::sync::Arc;
use std::time::Duration;

use dynamo_node::history::{ReplicaDump, Verdict, check};
use dynamo_node::storage::{CrashMode, Durability};
use dynamo_node::version::context::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    ROUND_INTERVAL, Session, Shared, background_round, dump_replicas, lock, quiesce, start_world,
};

/// What a scripted run found.
#[derive(Debug)]
pub(crate) struct ScriptedReport {
    /// The checker's verdict over the history and the final replicas.
    pub(crate) verdict: Verdict,
    /// Whether the stand-in held a hint for the down home replica (the danger's
    /// precondition).
    pub(crate) hint_held: bool,
    /// Whether the tombstone was purged from the home replicas while the stand-in
    /// was cut off (it must not be: the purge waits for every member).
    pub(crate) purged_while_cut_off: bool,
    /// Whether the key was purged from every node after the heal.
    pub(crate) purged_after_heal: bool,
    /// Hints the stand-in dropped as too old to deliver.
    pub(crate) stale_dropped: u64,
    /// Whether background work settled after the heal.
    pub(crate) quiesced: bool,
    /// What the final read (R = N) returned.
    pub(crate) final_values: Vec<Vec<u8>>,
    /// The replicas' final state.
    pub(crate) dump: ReplicaDump,
    /// Each step, for a failure's message.
    pub(crate) log: Vec<String>,
}

/// Dynamo §4.6's hinted stand-in, cut off for longer than the tombstone grace: a put
/// is acknowledged while one home replica is down, so a stand-in keeps a hint for it
/// (and a copy in its own data); the stand-in is then partitioned away, the home comes
/// back, the key is deleted and the grace passes. The purge must wait for the stand-in
/// (it used to go ahead, and the stand-in's hint then brought the value back); once
/// it reconnects, its hint is too old to deliver and is dropped, its own copy is
/// handed over (and superseded by the tombstone), and only then is the key purged.
pub(crate) fn hinted_stand_in_cut_off_past_the_grace() -> ScriptedReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("building a current-thread runtime");
    runtime.block_on(stand_in_script())
}

async fn stand_in_script() -> ScriptedReport {
    let grace = Duration::from_secs(10);
    let world = start_world(&[Durability::Sync; 5], grace, 0);
    let mut log = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let key = b"cart".to_vec();
    // The key's home replicas A, B, C and its first stand-in S.
    let (a, c, s) = {
        let w = lock(&world);
        let (any, _) = w.up(0).expect("started");
        let order = any.cluster().extended_preference_list(&key);
        let index = |position: usize| {
            w.nodes
                .iter()
                .position(|node| node.id == order[position])
                .expect("a node of the world")
        };
        (index(0), index(2), index(3))
    };
    let others: Vec<usize> = (0..5).filter(|i| *i != s).collect();
    log.push(format!(
        "home replicas start with n{a}, third n{c}; stand-in n{s}"
    ));

    // C goes down; the others notice, and the put's third copy goes to S as a hint.
    lock(&world).crash(c, CrashMode::KeepUnflushed);
    rounds(&world, &others, 2, &mut rng).await;
    let client = Session {
        world: Arc::clone(&world),
        node: a,
    };
    let put = client
        .put(&key, Some(b"before-delete".to_vec()), Context::new())
        .await;
    log.push(format!("put acknowledged: {}", put.is_some()));
    let hint_held = {
        let w = lock(&world);
        let (stand_in, _) = w.up(s).expect("up");
        let targets = stand_in
            .store()
            .engine()
            .hint_targets()
            .expect("hint targets");
        targets.iter().any(|(target, _)| *target == w.nodes[c].id)
    };
    log.push(format!("stand-in holds a hint for n{c}: {hint_held}"));

    // S is cut off; C comes back and the key is deleted on its home replicas.
    {
        let mut w = lock(&world);
        let stand_in = w.nodes[s].address.clone();
        let rest: Vec<String> = others.iter().map(|i| w.nodes[*i].address.clone()).collect();
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        w.network.partition(&[stand_in.as_str()], &rest);
        w.network_fault_began();
        w.start(c);
    }
    let up: Vec<usize> = others.clone();
    rounds(&world, &up, 3, &mut rng).await;
    let read = client.get(&key, Some(2)).await;
    log.push(format!(
        "read before the delete: {:?}",
        read.as_ref().map(|(state, _)| state.values().count())
    ));
    let context = read.map(|(_, context)| context).unwrap_or_default();
    let deleted = client.put(&key, None, context).await;
    log.push(format!("delete acknowledged: {}", deleted.is_some()));

    // The grace passes; anti-entropy spreads the tombstone, but its purger must wait
    // for the cut-off stand-in, which may hold a copy the tombstone does not reach.
    tokio::time::sleep(grace + ROUND_INTERVAL).await;
    let homes: Vec<usize> = others.clone();
    let purged_while_cut_off = purge_rounds(&world, &homes, &key, 20, &mut rng).await;
    log.push(format!(
        "tombstone purged while the stand-in was cut off: {purged_while_cut_off}"
    ));

    // S reconnects: hints, strays and anti-entropy run until everything settles, then
    // the purge goes ahead everywhere.
    {
        let mut w = lock(&world);
        w.heal_network();
        w.quiescing = true;
    }
    let mut blocker = String::new();
    let quiesced = quiesce(&world, &mut rng, None, &mut blocker).await;
    log.push(format!("quiesced: {quiesced} ({blocker})"));
    let everyone: Vec<usize> = (0..5).collect();
    let purged_after_heal = purge_rounds(&world, &everyone, &key, 40, &mut rng).await;
    log.push(format!(
        "key purged from every node after the heal: {purged_after_heal}"
    ));
    let dump = dump_replicas(&world, std::slice::from_ref(&key));
    lock(&world).history.quiesced();
    let final_values = client
        .get(&key, Some(3))
        .await
        .map(|(state, _)| state.values().map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let w = lock(&world);
    let stale_dropped = w
        .up(s)
        .map_or(0, |(stand_in, _)| stand_in.metrics().stale_copies("hint"));
    ScriptedReport {
        verdict: check(&w.history, &dump),
        hint_held,
        purged_while_cut_off,
        purged_after_heal,
        stale_dropped,
        quiesced,
        final_values,
        dump,
        log,
    }
}

/// Background rounds on `nodes`, at most `limit`, until none of them holds `key`;
/// whether that happened.
async fn purge_rounds(
    world: &Shared,
    nodes: &[usize],
    key: &[u8],
    limit: usize,
    rng: &mut ChaCha8Rng,
) -> bool {
    for _ in 0..limit {
        tokio::time::sleep(ROUND_INTERVAL).await;
        rounds(world, nodes, 1, rng).await;
        let w = lock(world);
        let gone = nodes.iter().all(|i| {
            let (node, _) = w.up(*i).expect("up");
            node.store().engine().get(key).expect("reading").is_none()
        });
        if gone {
            return true;
        }
    }
    false
}

/// `count` background rounds on each of `nodes`, one node after the other, each
/// exchanging a range drawn from `rng`.
async fn rounds(world: &Shared, nodes: &[usize], count: u64, rng: &mut ChaCha8Rng) {
    for _ in 0..count {
        for &node in nodes {
            background_round(Arc::clone(world), node, rng.random()).await;
        }
    }
}
