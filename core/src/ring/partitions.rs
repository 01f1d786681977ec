//! Strategy 3 of Dynamo §6.2: `Q` equal partitions, quotas by weight, and reassignment
//! with minimal movement.
//!
//! The ring is cut into `Q` fixed ranges; partition `p` is `(start(p), start(p + 1)]`
//! with `start(p) = floor(p * 2^128 / Q)` (the last one wraps to token 0). A node's
//! quota is its weight's share of `Q` by largest-remainder rounding.
//!
//! Two assignments:
//! * [`assign_by_rank`] derives the layout from the member set alone, which is what every
//!   node does (so that all nodes agree from gossip without exchanging a layout):
//!   rendezvous hashing with bounded loads. Each partition, visited in a fixed hashed
//!   order, goes to the node that ranks it highest among those still below quota. A
//!   node that joins only takes partitions it ranks highest (plus a small cascade from
//!   the quotas shrinking), so a join or leave moves close to the ideal share instead
//!   of redealing the ring (BENCHMARKS.md, "Ownership balance and data movement").
//! * [`assign`] rebalances a previous layout: it keeps every partition whose owner is
//!   still within quota and hands only surplus and orphaned partitions to nodes below
//!   quota, which is the fewest moves any quota-respecting assignment can make. It needs
//!   the previous layout, which nodes do not share, so it serves tools and comparisons.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::iter;

use super::Token;

/// The exclusive start token of partition `p` of `q`: `floor(p * 2^128 / q)`.
pub(crate) fn partition_start(p: u32, q: u32) -> Token {
    debug_assert!(p < q, "partition {p} of {q}");
    if p == 0 {
        return Token(0);
    }
    // 2^128 = base * q + extra, computed without overflowing: q >= 2 here, since p < q.
    let q = u128::from(q);
    let (mut base, mut extra) = (u128::MAX / q, u128::MAX % q + 1);
    if extra == q {
        base += 1;
        extra = 0;
    }
    let p = u128::from(p);
    // p * extra < q^2 <= 2^32, and p * base + that < 2^128 since p < q.
    Token(p * base + p * extra / q)
}

/// The inclusive end token of partition `p` of `q` (the next partition's start).
pub(crate) fn partition_end(p: u32, q: u32) -> Token {
    partition_start((p + 1) % q, q)
}

/// Each node's number of partitions: its weight's share of `q`, largest remainders
/// rounded up first (ties to the lower index, i.e. the smaller node id, since members
/// are sorted by id).
///
/// If `q >= weights.len()`, every node gets at least one partition: a node whose share
/// rounds to zero takes one from the node furthest above its exact share, so that every
/// member stores data and appears in preference lists.
pub(crate) fn quotas(q: u32, weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let q64 = u64::from(q);
    // q * w <= 2^16 * 2^32 and total <= 2^32 * len: no overflow.
    let share = |w: u32| (q64 * u64::from(w) / total, q64 * u64::from(w) % total);
    let mut quotas: Vec<u32> = weights
        .iter()
        // share <= q, so it fits a u32.
        .map(|&w| share(w).0 as u32)
        .collect();
    let unassigned = q - quotas.iter().sum::<u32>();
    let mut by_remainder: Vec<usize> = (0..weights.len()).collect();
    by_remainder.sort_by_key(|&i| (Reverse(share(weights[i]).1), i));
    for &i in by_remainder.iter().take(unassigned as usize) {
        quotas[i] += 1;
    }

    // Surplus over the exact share q * w / total, scaled by total.
    let surplus =
        |quota: u32, w: u32| i128::from(quota) * i128::from(total) - i128::from(q64 * u64::from(w));
    let mut donors: BinaryHeap<(i128, Reverse<usize>)> = (0..weights.len())
        .filter(|&i| quotas[i] >= 2)
        .map(|i| (surplus(quotas[i], weights[i]), Reverse(i)))
        .collect();
    for taker in 0..weights.len() {
        if quotas[taker] != 0 {
            continue;
        }
        // While a node holds 0 and q >= nodes, some node holds 2 or more.
        let Some((_, Reverse(donor))) = donors.pop() else {
            break;
        };
        quotas[donor] -= 1;
        quotas[taker] = 1;
        if quotas[donor] >= 2 {
            donors.push((surplus(quotas[donor], weights[donor]), Reverse(donor)));
        }
    }
    quotas
}

/// A node's seed for choosing which partitions it gives up, derived from its id.
pub(crate) fn node_seed(id: &str) -> u64 {
    (Token::of(id.as_bytes()).0 >> 64) as u64
}

/// Assigns partitions to nodes: `previous_owner[p]` is the index of the node that owned
/// partition `p` before (if it is still a member); the result is each partition's owner.
///
/// Nodes keep their previous partitions up to their quota. An over-quota node gives up
/// the partitions it ranks lowest by a hash of its seed and the partition number, so the
/// released set is scattered over the ring and fixed by the inputs. Released and orphaned
/// partitions, ordered by a hash of their number, are dealt to the nodes below quota in
/// index (node id) order: each taker gets a scattered set, not a contiguous block, so a
/// failed node's load spreads over many nodes (Dynamo §4.2).
///
/// Precondition (a caller bug otherwise): `quotas` sums to `previous_owner.len()`, and
/// `seeds` and `quotas` have one entry per node.
pub(crate) fn assign(quotas: &[u32], seeds: &[u64], previous_owner: &[Option<u32>]) -> Vec<u32> {
    debug_assert_eq!(
        quotas.iter().map(|&x| x as usize).sum::<usize>(),
        previous_owner.len()
    );
    let mut held: Vec<Vec<u32>> = vec![Vec::new(); quotas.len()];
    let mut orphans = Vec::new();
    for (p, owner) in (0u32..).zip(previous_owner) {
        match owner {
            Some(node) => held[*node as usize].push(p),
            None => orphans.push(p),
        }
    }

    // Every entry is overwritten: kept partitions below, the rest by the deal.
    let mut assignment = vec![0u32; previous_owner.len()];
    let mut deficits = vec![0usize; quotas.len()];
    for (node, partitions) in (0u32..).zip(held.iter_mut()) {
        let quota = quotas[node as usize] as usize;
        if partitions.len() > quota {
            let seed = seeds[node as usize];
            partitions.sort_by_key(|&p| (mix64(seed ^ mix64(u64::from(p))), p));
            let surplus = partitions.len() - quota;
            orphans.extend(partitions.drain(..surplus));
        }
        deficits[node as usize] = quota - partitions.len();
        for &p in partitions.iter() {
            assignment[p as usize] = node;
        }
    }

    orphans.sort_by_key(|&p| (mix64(u64::from(p)), p));
    let takers = (0u32..)
        .zip(&deficits)
        .flat_map(|(node, &deficit)| iter::repeat_n(node, deficit));
    for (p, node) in orphans.into_iter().zip(takers) {
        assignment[p as usize] = node;
    }
    assignment
}

/// Assigns partitions to nodes from the member set alone: rendezvous (highest random
/// weight) hashing with bounded loads.
///
/// Partitions are visited in order of a hash of their number; each goes to the node
/// with the highest `mix64(seed ^ mix64(p))` (ties to the smaller index) among the
/// nodes still below quota. Since a node's rank of a partition does not depend on the
/// other members, adding a node moves only the partitions it ranks above their owner,
/// and those the shrunken quotas push on; removing one moves its own and a few more.
/// Balance is exact: every node ends at its quota.
///
/// Cost: `Q x nodes` hash mixes (at the bounds, 65,536 partitions and 4,096 members,
/// about 2.7 * 10^8, well under a second; a default ring of 256 partitions and ten nodes
/// takes microseconds). Rings are rebuilt only when the member table changes.
///
/// Precondition (a caller bug otherwise): `seeds` and `quotas` have one entry per node.
pub(crate) fn assign_by_rank(quotas: &[u32], seeds: &[u64]) -> Vec<u32> {
    debug_assert_eq!(quotas.len(), seeds.len());
    let q: u32 = quotas.iter().sum();
    let mut room = quotas.to_vec();
    let mut order: Vec<u32> = (0..q).collect();
    order.sort_by_key(|&p| (mix64(u64::from(p)), p));
    let mut assignment = vec![0u32; q as usize];
    for p in order {
        let key = mix64(u64::from(p));
        let mut best: Option<(u64, u32)> = None;
        for (node, &seed) in (0u32..).zip(seeds) {
            if room[node as usize] == 0 {
                continue;
            }
            let score = mix64(seed ^ key);
            // Strictly greater: on a tie the smaller index, met first, stays.
            if best.is_none_or(|(top, _)| score > top) {
                best = Some((score, node));
            }
        }
        // The quotas sum to q, so while a partition is left some node has room.
        if let Some((_, node)) = best {
            room[node as usize] -= 1;
            assignment[p as usize] = node;
        }
    }
    assignment
}

/// The splitmix64 finalizer: a fixed, well-mixing permutation of `u64`.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::TokenRange;
    use proptest::prelude::*;

    #[test]
    fn power_of_two_partitions_are_exact() {
        assert_eq!(partition_start(1, 2), Token(1 << 127));
        assert_eq!(partition_start(3, 4), Token(3 << 126));
        assert_eq!(partition_end(3, 4), Token(0));
        assert!(TokenRange::new(partition_start(0, 1), partition_end(0, 1)).is_full());
    }

    #[test]
    fn uneven_partition_counts_round_down() {
        // 3 divides 2^128 - 1, so k * 2^128 / 3 = k * (2^128 - 1) / 3 + k / 3.
        assert_eq!(partition_start(1, 3), Token(u128::MAX / 3));
        assert_eq!(partition_start(2, 3), Token(u128::MAX / 3 * 2));
    }

    #[test]
    fn largest_remainder_with_ties_to_the_smaller_id() {
        // Exact shares 10/3 each: floors 3, 3, 3; the one spare goes to index 0.
        assert_eq!(quotas(10, &[1, 1, 1]), vec![4, 3, 3]);
        // Exact shares 2.5, 7.5: equal remainders, index 0 first.
        assert_eq!(quotas(10, &[1, 3]), vec![3, 7]);
        // Exact shares 1.6, 3.2, 3.2, 8: remainders .6, .2, .2 -> spare to index 0.
        assert_eq!(quotas(16, &[1, 2, 2, 5]), vec![2, 3, 3, 8]);
        assert_eq!(quotas(8, &[]), Vec::<u32>::new());
    }

    #[test]
    fn every_node_gets_a_partition_when_q_allows() {
        // Exact shares ~0.0001, ~0.0001, ~3.9998: largest remainder gives 0, 0, 4.
        assert_eq!(quotas(4, &[1, 1, 20_000]), vec![1, 1, 2]);
        // Two donors: the one furthest above its share gives first.
        assert_eq!(quotas(5, &[1, 5000, 5000]), vec![1, 2, 2]);
    }

    #[test]
    fn within_quota_owners_keep_their_partitions() {
        // Node 0 held 0..4, node 1 held 4..8; node 2 joins with quota 2.
        let previous: Vec<Option<u32>> = (0..8).map(|p| Some(p / 4)).collect();
        let assignment = assign(&[3, 3, 2], &[1, 2, 3], &previous);
        let changed = (0..8).filter(|&p| Some(assignment[p]) != previous[p]);
        assert_eq!(changed.count(), 2);
        assert_eq!(assignment.iter().filter(|&&n| n == 2).count(), 2);
    }

    fn count(assignment: &[u32], nodes: usize) -> Vec<u32> {
        let mut counts = vec![0; nodes];
        for &n in assignment {
            counts[n as usize] += 1;
        }
        counts
    }

    proptest! {
        #[test]
        fn partitions_tile_the_ring_equally(q in 1u32..=2048, t: u128) {
            let owners: Vec<u32> = (0..q)
                .filter(|&p| TokenRange::new(partition_start(p, q), partition_end(p, q)).contains(Token(t)))
                .collect();
            prop_assert_eq!(owners.len(), 1);
            let widths: Vec<u128> = (0..q)
                .map(|p| TokenRange::new(partition_start(p, q), partition_end(p, q)).width_minus_one())
                .collect();
            let (min, max) = (widths.iter().min().unwrap(), widths.iter().max().unwrap());
            prop_assert!(max - min <= 1);
        }

        #[test]
        fn quotas_sum_to_q_and_track_weights(
            weights in prop::collection::vec(1u32..=1000, 1..20),
            extra in 0u32..500,
        ) {
            let q = weights.len() as u32 + extra;
            let quotas = quotas(q, &weights);
            prop_assert_eq!(quotas.iter().sum::<u32>(), q);
            prop_assert!(quotas.iter().all(|&n| n >= 1));
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            let zeros = weights.iter().filter(|&&w| f64::from(q) * f64::from(w) / total < 1.0).count();
            for (&quota, &w) in quotas.iter().zip(&weights) {
                let exact = f64::from(q) * f64::from(w) / total;
                // Largest remainder is within 1 of the exact share; each node lifted
                // to one partition can cost a donor one more.
                prop_assert!((f64::from(quota) - exact).abs() < 1.0 + zeros as f64);
            }
        }

        #[test]
        fn assignment_meets_quotas_with_fewest_moves(
            previous in prop::collection::vec(prop::option::of(0u32..6), 1..200),
            weights in prop::collection::vec(1u32..=10, 6),
        ) {
            let q = previous.len() as u32;
            prop_assume!(q >= 6);
            let quotas = quotas(q, &weights);
            let seeds: Vec<u64> = (0..6).collect();
            let assignment = assign(&quotas, &seeds, &previous);
            prop_assert_eq!(count(&assignment, 6), quotas.clone());
            let held = count(&previous.iter().flatten().copied().collect::<Vec<_>>(), 6);
            let keepable: u32 = held.iter().zip(&quotas).map(|(&h, &quota)| h.min(quota)).sum();
            let moved = (0..previous.len()).filter(|&p| previous[p] != Some(assignment[p])).count();
            prop_assert_eq!(moved as u32, q - keepable);
        }

        #[test]
        fn ranked_assignment_meets_quotas(
            weights in prop::collection::vec(1u32..=10, 1..12),
            extra in 0u32..300,
            seeds in prop::collection::vec(any::<u64>(), 12),
        ) {
            let q = weights.len() as u32 + extra;
            let quotas = quotas(q, &weights);
            let seeds = &seeds[..weights.len()];
            let assignment = assign_by_rank(&quotas, seeds);
            prop_assert_eq!(assignment.len(), q as usize);
            prop_assert_eq!(count(&assignment, weights.len()), quotas.clone());
            prop_assert_eq!(assign_by_rank(&quotas, seeds), assignment);
        }
    }

    /// Seeds of nodes `node-0`, `node-1`, ... as the ring derives them.
    fn seeds_of(nodes: usize) -> Vec<u64> {
        (0..nodes)
            .map(|i| node_seed(&format!("node-{i}")))
            .collect()
    }

    #[test]
    fn ranked_assignment_moves_close_to_the_ideal_share_on_a_join() {
        // Rebuilt from the member set alone, a join should move about the newcomer's
        // share (1/(S+1)) of the partitions, not redeal the ring. The bound allows for
        // the cascade of shrinking quotas; a redeal moves several times the share.
        // Node ids sort as strings, but each node's seed depends only on its id, so the
        // newcomer may take any index: compare by id.
        let q = 1024;
        for before in 3..=12 {
            let ids = |n: usize| -> Vec<String> {
                let mut ids: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
                ids.sort();
                ids
            };
            let layout = |n: usize| -> Vec<String> {
                let ids = ids(n);
                let seeds: Vec<u64> = ids.iter().map(|id| node_seed(id)).collect();
                let assignment = assign_by_rank(&quotas(q, &vec![1; n]), &seeds);
                assignment
                    .iter()
                    .map(|&i| ids[i as usize].clone())
                    .collect()
            };
            let (old, new) = (layout(before), layout(before + 1));
            let moved = old.iter().zip(&new).filter(|(a, b)| a != b).count();
            let ideal = f64::from(q) / (before + 1) as f64;
            assert!(
                (moved as f64) < 1.6 * ideal,
                "{before} -> {} nodes moved {moved} of {q} partitions, ideal {ideal:.0}",
                before + 1
            );
            let newcomer = format!("node-{before}");
            let gained = new.iter().filter(|owner| **owner == newcomer).count();
            assert!(
                moved >= gained,
                "every partition the newcomer holds moved to it"
            );
        }
    }

    #[test]
    fn ranked_assignment_moves_close_to_the_ideal_share_on_a_leave() {
        let q = 1024;
        let seeds = seeds_of(10);
        let old = assign_by_rank(&quotas(q, &[1; 10]), &seeds);
        // Node index 9 leaves; the others keep their indices and seeds.
        let new = assign_by_rank(&quotas(q, &[1; 9]), &seeds[..9]);
        let moved = old.iter().zip(&new).filter(|(a, b)| a != b).count();
        let orphaned = old.iter().filter(|&&owner| owner == 9).count();
        assert!(moved >= orphaned);
        assert!(
            (moved as f64) < 1.6 * f64::from(q) / 10.0,
            "moved {moved} of {q} partitions, ideal {orphaned}"
        );
    }
}
