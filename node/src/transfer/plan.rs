//! What moves where while membership changes (no I/O).
//!
//! Two rings describe a cluster in the middle of a change:
//!
//! * the **settled** ring, of the members that hold their data: `Member` and `Leaving`
//!   (a leaving node still holds everything until it is removed), each with its
//!   *settled* weight, the weight its data is laid out for;
//! * the **target** ring, of the members placement is heading to: `Joining` and
//!   `Member` (the ring every node used before range transfer existed), each with its
//!   (target) weight, so a weight change moves the target ring only until it is
//!   handed over.
//!
//! Reads use the settled ring ([`read_ring`]), writes go to the union of both
//! preference lists ([`write_set`]), and [`plan`] lists the copies that make the target
//! ring's replicas hold what the settled ring's replicas hold. When the plan is done the
//! changing node flips its member state and both rings agree again.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::membership::{MemberState, MemberTable};
use crate::ring::{Ring, Token, TokenRange, moves};

/// The members that hold their data, with their settled weights (the weights their
/// data is laid out for), in id order: `Member` and `Leaving`.
pub fn settled_members(table: &MemberTable) -> Vec<(NodeId, u32)> {
    table
        .iter()
        .filter(|m| matches!(m.state(), MemberState::Member | MemberState::Leaving))
        .map(|m| (m.id().clone(), m.settled_weight()))
        .collect()
}

/// The members placement is heading to, with weights, in id order: `Joining` and
/// `Member` (the same as [`MemberTable::ring_members`]).
pub fn target_members(table: &MemberTable) -> Vec<(NodeId, u32)> {
    table.ring_members()
}

/// One copy of a range: page the range out of `source` and merge it into `dest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Task {
    /// The token range to copy.
    pub range: TokenRange,
    /// The node that holds the range under the settled ring.
    pub source: NodeId,
    /// The node that gains the range under the target ring.
    pub dest: NodeId,
}

/// Every copy needed so that the target ring's replicas of each range hold what its
/// settled replicas hold (Dynamo §4.9), sorted (by range, then source, then dest).
///
/// For each range whose replica set changes ([`moves`] with `n` replicas), every
/// gaining node (in the target set, not in the settled one) receives the range from
/// every losing node (in the settled set, not in the target one). When no node loses
/// the range (the cluster grows towards `n` nodes) the gainers receive it from every
/// settled replica instead. Copying from every loser to every gainer keeps, for every
/// key, at least as many target replicas holding it as settled replicas held it: the
/// replicas that stay keep their copy, and each gainer gets the union of the losers'.
/// Ranges with no settled replica (the first nodes of a new cluster) need no copy.
pub fn plan(settled: &Ring, target: &Ring, n: usize) -> Vec<Task> {
    let mut tasks = Vec::new();
    for change in moves(settled, target, n) {
        if change.from.is_empty() {
            continue;
        }
        let gainers: Vec<&NodeId> = change
            .to
            .iter()
            .filter(|node| !change.from.contains(node))
            .collect();
        let losers: Vec<&NodeId> = change
            .from
            .iter()
            .filter(|node| !change.to.contains(node))
            .collect();
        let sources = if losers.is_empty() {
            change.from.iter().collect()
        } else {
            losers
        };
        for source in &sources {
            for dest in &gainers {
                tasks.push(Task {
                    range: change.range,
                    source: (*source).clone(),
                    dest: (*dest).clone(),
                });
            }
        }
    }
    tasks.sort();
    tasks
}

/// The ring reads use: the settled ring, or the target ring while no member is settled
/// (a new cluster's first nodes hold no data anyone could miss).
pub fn read_ring<'a>(settled: &'a Ring, target: &'a Ring) -> &'a Ring {
    if settled.is_empty() { target } else { settled }
}

/// Where a write goes while a change is in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSet {
    /// Every distinct node to consider, the `home` replicas first, then the rest of
    /// the target ring clockwise (stand-ins for the sloppy quorum).
    pub extended: Vec<NodeId>,
    /// How many leading entries of `extended` are home replicas: the union of the
    /// settled and the target preference lists.
    pub home: usize,
    /// How many home replicas are in the target list only (gaining the key): a write
    /// needs that many acknowledgements on top of W, so that W settled and W target
    /// replicas hold it whichever home replicas answer.
    pub pending: usize,
}

/// The replicas a write of the key at `token` goes to: the first `n` nodes of the
/// settled ring's list, then the target list's nodes not among them, then the rest of
/// the target ring as stand-ins (never a node that is leaving).
///
/// With `W + pending` acknowledgements out of the union, at least W come from the
/// settled replicas and at least W from the target replicas (each side misses only
/// the `pending` nodes of the other), so a write acknowledged during a transfer is
/// quorum-readable both before and after the hand-over (Cassandra's pending-range
/// rule).
pub fn write_set(settled: &Ring, target: &Ring, token: Token, n: usize) -> WriteSet {
    let base = read_ring(settled, target);
    let mut home: Vec<NodeId> = base.preference_list(token, n);
    let mut pending = 0;
    if !std::ptr::eq(base, target) {
        for node in target.preference_list(token, n) {
            if !home.contains(&node) {
                home.push(node);
                pending += 1;
            }
        }
    }
    let mut seen: BTreeSet<NodeId> = home.iter().cloned().collect();
    let home_len = home.len();
    let mut extended = home;
    // Stand-ins come from the target ring only: a node in the settled ring alone is
    // leaving, and a hint it took would have to move again before it may go; under a
    // steady write load, hints for a down home would keep arriving and its leave would
    // never see its hint backlog empty (Cassandra likewise writes no hints to a
    // leaving endpoint).
    for node in target.walk(token) {
        if seen.insert(node.clone()) {
            extended.push(node.clone());
        }
    }
    WriteSet {
        extended,
        home: home_len,
        pending,
    }
}

/// The ranges where `me` is no home replica in either ring (neither among the first
/// `n` of the settled preference list nor of the target one): data this node holds
/// there is *stray*, left from ranges it handed over or written by a coordinator whose
/// view of the ring was stale, and belongs on the key's current replicas (see
/// `NodeShared::sweep_round`). The rings are cut at every vnode boundary of both, so
/// every key of one piece has the same home replicas; adjacent stray pieces are
/// merged. Empty when both rings are (a node that knows no ring decides nothing).
pub fn stray_ranges(settled: &Ring, target: &Ring, me: &NodeId, n: usize) -> Vec<TokenRange> {
    let mut cuts: Vec<Token> = settled
        .vnodes()
        .chain(target.vnodes())
        .map(|(range, _)| range.end)
        .collect();
    cuts.sort();
    cuts.dedup();
    let pieces: Vec<TokenRange> = match cuts.as_slice() {
        [] => return Vec::new(),
        [_] => vec![TokenRange::full()],
        _ => {
            let mut pieces: Vec<TokenRange> = cuts
                .windows(2)
                .map(|pair| TokenRange::new(pair[0], pair[1]))
                .collect();
            pieces.push(TokenRange::new(cuts[cuts.len() - 1], cuts[0]));
            pieces
        }
    };
    let mut stray: Vec<TokenRange> = Vec::new();
    for piece in pieces {
        let writes = write_set(settled, target, piece.end, n);
        if writes.home == 0 || writes.extended[..writes.home].contains(me) {
            continue;
        }
        match stray.last_mut() {
            Some(last) if last.end == piece.start && !last.is_full() => last.end = piece.end,
            _ => stray.push(piece),
        }
    }
    // The last piece wraps into the first.
    if stray.len() > 1 && stray[stray.len() - 1].end == stray[0].start {
        let last = stray.pop().expect("more than one piece");
        stray[0].start = last.start;
    }
    stray
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::ring::PartitionStrategy;

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn ring(members: &[(&str, u32)], strategy: PartitionStrategy) -> Ring {
        let members: Vec<(NodeId, u32)> = members.iter().map(|(n, w)| (id(n), *w)).collect();
        Ring::build(&members, strategy, 1, None).unwrap()
    }

    /// Simulates a completed plan: every replica of the settled ring holds the keys it
    /// replicates, then every task copies its range's keys; returns who holds what.
    fn run_plan(
        settled: &Ring,
        target: &Ring,
        n: usize,
        keys: &[Vec<u8>],
    ) -> BTreeMap<NodeId, BTreeSet<Vec<u8>>> {
        let mut held: BTreeMap<NodeId, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for key in keys {
            for node in settled.preference_list_for_key(key, n) {
                held.entry(node).or_default().insert(key.clone());
            }
        }
        for task in plan(settled, target, n) {
            let copied: Vec<Vec<u8>> = held
                .get(&task.source)
                .map(|keys| {
                    keys.iter()
                        .filter(|k| task.range.contains(Token::of(k)))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            held.entry(task.dest).or_default().extend(copied);
        }
        held
    }

    fn keys(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| format!("key-{i}").into_bytes())
            .collect()
    }

    fn assert_target_replicas_hold_every_key(settled: &Ring, target: &Ring, n: usize) {
        let keys = keys(500);
        let held = run_plan(settled, target, n, &keys);
        for key in &keys {
            for node in target.preference_list_for_key(key, n) {
                assert!(
                    held.get(&node).is_some_and(|k| k.contains(key)),
                    "{node} should hold {:?} after the plan",
                    String::from_utf8_lossy(key)
                );
            }
        }
    }

    #[test]
    fn a_join_copies_only_into_the_new_node_from_the_replicas_it_replaces() {
        // Dynamo §4.9: "When a new node (say X) is added into the system ... Some
        // existing nodes no longer have to some of their keys and these nodes transfer
        // those keys to X."
        let strategy = PartitionStrategy::random_tokens(8).unwrap();
        let settled = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], strategy);
        let target = ring(
            &[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("x", 1)],
            strategy,
        );
        let tasks = plan(&settled, &target, 3);
        assert!(!tasks.is_empty());
        // Random tokens: the old nodes keep their tokens, so only x gains.
        assert!(tasks.iter().all(|t| t.dest == id("x")), "{tasks:?}");
        assert_target_replicas_hold_every_key(&settled, &target, 3);
        // Strategy 3 rebuilt from scratch (each node derives both rings from the member
        // table alone) also trades partitions between old nodes; the plan copies those
        // too, and never out of the node that holds nothing yet.
        let strategy = PartitionStrategy::equal_partitions(64).unwrap();
        let settled = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], strategy);
        let target = ring(
            &[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("x", 1)],
            strategy,
        );
        let tasks = plan(&settled, &target, 3);
        assert!(tasks.iter().any(|t| t.dest == id("x")));
        assert!(tasks.iter().all(|t| t.source != id("x")));
        assert_target_replicas_hold_every_key(&settled, &target, 3);
    }

    #[test]
    fn a_leave_copies_only_out_of_the_leaving_node_where_it_was_the_only_loser() {
        // Dynamo §4.9: "when a node is removed from the system, the reallocation of
        // keys happens in a reverse process".
        let strategy = PartitionStrategy::random_tokens(8).unwrap();
        let settled = ring(
            &[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("l", 1)],
            strategy,
        );
        let target = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], strategy);
        let tasks = plan(&settled, &target, 3);
        assert!(!tasks.is_empty());
        // Random tokens: the other nodes keep their tokens, so only l loses ranges.
        assert!(tasks.iter().all(|t| t.source == id("l")), "{tasks:?}");
        assert_target_replicas_hold_every_key(&settled, &target, 3);
        // Under strategy 3 rebuilt from scratch, other nodes may trade partitions too;
        // the plan still covers every key.
        let strategy = PartitionStrategy::equal_partitions(64).unwrap();
        let settled = ring(
            &[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("l", 1)],
            strategy,
        );
        let target = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], strategy);
        assert!(
            plan(&settled, &target, 3)
                .iter()
                .any(|t| t.source == id("l"))
        );
        assert_target_replicas_hold_every_key(&settled, &target, 3);
    }

    #[test]
    fn a_weight_increase_moves_ranges_to_the_heavier_node() {
        let strategy = PartitionStrategy::random_tokens(8).unwrap();
        let settled = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], strategy);
        let target = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 3)], strategy);
        let tasks = plan(&settled, &target, 3);
        assert!(!tasks.is_empty());
        assert!(tasks.iter().all(|t| t.dest == id("d")), "{tasks:?}");
        assert_target_replicas_hold_every_key(&settled, &target, 3);
        // And back down: d's extra ranges return to the others.
        let tasks = plan(&target, &settled, 3);
        assert!(tasks.iter().all(|t| t.source == id("d")), "{tasks:?}");
        assert_target_replicas_hold_every_key(&target, &settled, 3);
    }

    /// From the member table: `set_weight` moves the target ring only, so the plan
    /// between the rings of the settled and the target weights moves the ranges a
    /// weight rise gains into the node, and a fall's out of it; once settled, nothing.
    #[test]
    fn a_weight_change_in_the_table_plans_a_rise_into_and_a_fall_out_of_the_node() {
        let strategy = PartitionStrategy::random_tokens(8).unwrap();
        let mut table = MemberTable::new();
        for name in ["a", "b", "c", "d"] {
            table.join(id(name), "h:1", 2).unwrap();
            table.mark_member(&id(name)).unwrap();
        }
        let rings = |table: &MemberTable| {
            (
                Ring::build(&settled_members(table), strategy, 1, None).unwrap(),
                Ring::build(&target_members(table), strategy, 2, None).unwrap(),
            )
        };
        table.set_weight(&id("d"), 5).unwrap();
        assert_eq!(settled_members(&table)[3], (id("d"), 2));
        assert_eq!(target_members(&table)[3], (id("d"), 5));
        let (settled, target) = rings(&table);
        let rise = plan(&settled, &target, 3);
        assert!(!rise.is_empty());
        assert!(rise.iter().all(|t| t.dest == id("d")), "{rise:?}");
        assert_target_replicas_hold_every_key(&settled, &target, 3);
        table.settle_weight(&id("d"), 5).unwrap();
        let (settled, target) = rings(&table);
        assert!(plan(&settled, &target, 3).is_empty());

        table.set_weight(&id("d"), 1).unwrap();
        let (settled, target) = rings(&table);
        let fall = plan(&settled, &target, 3);
        assert!(!fall.is_empty());
        assert!(fall.iter().all(|t| t.source == id("d")), "{fall:?}");
        assert_target_replicas_hold_every_key(&settled, &target, 3);
    }

    #[test]
    fn a_growing_cluster_copies_from_every_settled_replica() {
        let strategy = PartitionStrategy::equal_partitions(16).unwrap();
        let settled = ring(&[("a", 1)], strategy);
        let target = ring(&[("a", 1), ("b", 1), ("c", 1)], strategy);
        let tasks = plan(&settled, &target, 3);
        let pairs: BTreeSet<(NodeId, NodeId)> = tasks
            .iter()
            .map(|t| (t.source.clone(), t.dest.clone()))
            .collect();
        assert_eq!(
            pairs,
            BTreeSet::from([(id("a"), id("b")), (id("a"), id("c"))])
        );
        assert_target_replicas_hold_every_key(&settled, &target, 3);
    }

    #[test]
    fn nothing_moves_without_a_settled_member_or_without_a_change() {
        let strategy = PartitionStrategy::equal_partitions(16).unwrap();
        let empty = ring(&[], strategy);
        let three = ring(&[("a", 1), ("b", 1), ("c", 1)], strategy);
        assert!(plan(&empty, &three, 3).is_empty());
        assert!(plan(&three, &three, 3).is_empty());
    }

    #[test]
    fn reads_use_the_settled_ring_unless_it_is_empty() {
        let strategy = PartitionStrategy::equal_partitions(16).unwrap();
        let empty = ring(&[], strategy);
        let three = ring(&[("a", 1), ("b", 1), ("c", 1)], strategy);
        let four = ring(&[("a", 1), ("b", 1), ("c", 1), ("x", 1)], strategy);
        assert!(std::ptr::eq(read_ring(&empty, &three), &three));
        assert!(std::ptr::eq(read_ring(&three, &four), &three));
    }

    #[test]
    fn stray_ranges_hold_exactly_the_keys_a_node_is_no_home_replica_of() {
        let members = [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)];
        for strategy in [
            PartitionStrategy::equal_partitions(32).unwrap(),
            PartitionStrategy::random_tokens(8).unwrap(),
        ] {
            let settled = ring(&members[..4], strategy);
            let target = ring(&members, strategy);
            for (settled, target) in [(&settled, &target), (&target, &target)] {
                for (name, _) in members {
                    let me = id(name);
                    let stray = stray_ranges(settled, target, &me, 3);
                    for key in keys(500) {
                        let token = Token::of(&key);
                        let set = write_set(settled, target, token, 3);
                        let home = set.extended[..set.home].contains(&me);
                        let in_stray = stray.iter().any(|r| r.contains(token));
                        assert_eq!(in_stray, !home, "{name}, {key:?}");
                    }
                    // Merged: no two stray ranges touch.
                    for pair in stray.windows(2) {
                        assert_ne!(pair[0].end, pair[1].start);
                    }
                }
            }
        }
        // A node in no ring: everything is stray; no ring at all: nothing is decided.
        let strategy = PartitionStrategy::equal_partitions(32).unwrap();
        let three = ring(&members[..3], strategy);
        assert_eq!(
            stray_ranges(&three, &three, &id("z"), 3),
            vec![TokenRange::full()]
        );
        let empty = Ring::build(&[], strategy, 1, None).unwrap();
        assert!(stray_ranges(&empty, &empty, &id("a"), 3).is_empty());
    }

    #[test]
    fn writes_during_a_join_go_to_old_and_new_replicas_and_wait_for_one_more_ack() {
        let strategy = PartitionStrategy::equal_partitions(64).unwrap();
        let settled = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], strategy);
        let target = ring(
            &[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("x", 1)],
            strategy,
        );
        let key = keys(10_000)
            .into_iter()
            .find(|k| target.preference_list_for_key(k, 3).contains(&id("x")))
            .unwrap();
        let token = Token::of(&key);
        let set = write_set(&settled, &target, token, 3);
        let old = settled.preference_list(token, 3);
        let new = target.preference_list(token, 3);
        let home: BTreeSet<&NodeId> = set.extended[..set.home].iter().collect();
        let union: BTreeSet<&NodeId> = old.iter().chain(&new).collect();
        assert_eq!(home, union);
        assert_eq!(set.extended[..3], old[..]);
        assert_eq!(set.pending, new.iter().filter(|n| !old.contains(n)).count());
        assert!(set.pending >= 1);
        // Every node appears once.
        let distinct: BTreeSet<&NodeId> = set.extended.iter().collect();
        assert_eq!(distinct.len(), set.extended.len());
        assert_eq!(set.extended.len(), 5);
        // No change: the plain preference list.
        let same = write_set(&target, &target, token, 3);
        assert_eq!((same.home, same.pending), (3, 0));
        assert_eq!(same.extended, target.preference_list(token, usize::MAX));
    }

    #[test]
    fn a_leaving_node_stays_a_home_replica_but_never_stands_in() {
        let strategy = PartitionStrategy::equal_partitions(64).unwrap();
        let settled = ring(
            &[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("x", 1)],
            strategy,
        );
        let target = ring(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)], strategy);
        let (mut homed, mut not_homed) = (0, 0);
        for key in keys(500) {
            let token = Token::of(&key);
            let set = write_set(&settled, &target, token, 3);
            let position = set.extended.iter().position(|n| *n == id("x"));
            if settled.preference_list(token, 3).contains(&id("x")) {
                // It still holds the range until the hand-over: a home replica.
                assert!(position.is_some_and(|p| p < set.home), "{key:?}: {set:?}");
                homed += 1;
            } else {
                assert_eq!(position, None, "{key:?}: {set:?}");
                not_homed += 1;
            }
            // Every staying node is still reachable as a home replica or stand-in.
            assert_eq!(set.extended.len(), 4 + usize::from(position.is_some()));
        }
        assert!(homed > 0 && not_homed > 0, "{homed} {not_homed}");
    }

    fn members_strategy() -> impl Strategy<Value = Vec<(NodeId, u32)>> {
        proptest::collection::btree_map(0u8..12, 1u32..4, 1..8).prop_map(|m| {
            m.into_iter()
                .map(|(i, w)| (id(&format!("n{i}")), w))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// After a completed plan, every key's new preference list holds it, for any
        /// pair of member sets (joins, leaves and weight changes at once), and the
        /// write set's quorum arithmetic holds.
        #[test]
        fn a_completed_plan_leaves_every_key_on_its_new_replicas(
            old in members_strategy(),
            new in members_strategy(),
            n in 1usize..4,
            random in any::<bool>(),
        ) {
            let strategy = if random {
                PartitionStrategy::random_tokens(4).unwrap()
            } else {
                PartitionStrategy::equal_partitions(32).unwrap()
            };
            let settled = Ring::build(&old, strategy, 1, None).unwrap();
            let target = Ring::build(&new, strategy, 2, None).unwrap();
            assert_target_replicas_hold_every_key(&settled, &target, n);
            for key in keys(20) {
                let set = write_set(&settled, &target, Token::of(&key), n);
                let old = settled.preference_list_for_key(&key, n);
                let new = target.preference_list_for_key(&key, n);
                prop_assert!(set.home <= old.len() + new.len());
                prop_assert!(new.iter().all(|x| set.extended[..set.home].contains(x)));
                prop_assert!(old.iter().all(|x| set.extended[..set.home].contains(x)));
            }
        }
    }
}
