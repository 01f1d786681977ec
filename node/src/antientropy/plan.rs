//! The decisions of anti-entropy, free of I/O: which key ranges get a tree and of what
//! shape, which range and peer a round exchanges with, how two replicas' states of a
//! key are reconciled, how much a round may move, and when a tombstone may be purged.

use crate::NodeId;
use crate::merkle::MAX_DEPTH;
use crate::ring::{Ring, Token, TokenRange};
use crate::time::Millis;
use crate::version::SiblingSet;

pub use dynamo_config::settings::FULL_RING_DEPTH;

/// The shallowest tree: even a sliver of the ring is split in a few buckets.
pub const MIN_DEPTH: u8 = 2;

/// One key range this node replicates, on which the replica set is the same for every
/// key, and the shape of its tree.
///
/// Every node derives the specs from the ring alone, so two replicas whose rings agree
/// hold trees of the same shape for every range they share, and their trees compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSpec {
    /// The key range.
    pub range: TokenRange,
    /// The tree's depth ([`depth_for`] of the range).
    pub depth: u8,
    /// The range's replicas (the first N nodes of its preference list), sorted by id;
    /// this node among them.
    pub replicas: Vec<NodeId>,
}

/// The tree depth for `range` when a tree over the whole ring is `full_depth` deep: one
/// less for each halving of the width, never below [`MIN_DEPTH`] (nor above
/// [`MAX_DEPTH`]).
pub fn depth_for(range: TokenRange, full_depth: u8) -> u8 {
    // log2 of the width, rounded up; the full ring is 2^128 wide.
    let width_minus_one = range.width_minus_one();
    let log2_width = if range.is_full() || width_minus_one == u128::MAX {
        128
    } else {
        128 - width_minus_one.leading_zeros()
    };
    let shortfall = 128u32.saturating_sub(log2_width);
    let full_depth = full_depth.clamp(MIN_DEPTH, MAX_DEPTH);
    let depth = u32::from(full_depth).saturating_sub(shortfall);
    u8::try_from(depth)
        .unwrap_or(MAX_DEPTH)
        .clamp(MIN_DEPTH, full_depth)
}

/// The ranges `me` replicates under `ring` with replication factor `n`: the ring cut at
/// every virtual node, each piece labelled with its replica set, adjacent pieces with
/// the same set merged (the last with the first across zero), and the pieces holding
/// `me` kept, each with the depth [`depth_for`] gives it under `full_depth`. In ring
/// order from the lowest end token.
pub fn tree_specs(ring: &Ring, me: &NodeId, n: usize, full_depth: u8) -> Vec<TreeSpec> {
    let mut pieces: Vec<(TokenRange, Vec<NodeId>)> = Vec::new();
    for (range, _) in ring.vnodes() {
        let mut replicas = ring.preference_list(range.end, n);
        replicas.sort();
        match pieces.last_mut() {
            Some((last, set)) if *set == replicas => last.end = range.end,
            _ => pieces.push((range, replicas)),
        }
    }
    if pieces.len() > 1 && pieces[0].1 == pieces[pieces.len() - 1].1 {
        let (last, _) = pieces.pop().expect("more than one piece");
        pieces[0].0.start = last.start;
    }
    if let [(range, _)] = pieces.as_mut_slice() {
        // One replica set everywhere: the whole ring.
        *range = TokenRange::full();
    }
    pieces
        .into_iter()
        .filter(|(_, replicas)| replicas.contains(me))
        .map(|(range, replicas)| TreeSpec {
            range,
            depth: depth_for(range, full_depth),
            replicas,
        })
        .collect()
}

/// Picks the range and peer of one exchange: among the `ready` specs (trees built) with
/// at least one `available` other replica, the one `random` points at, and among its
/// available other replicas, the one `random / count` points at. `None` when no range
/// has a reachable peer. The shell passes its generator's next value; tests pass fixed
/// ones.
pub fn choose_exchange<'a>(
    ready: &'a [TreeSpec],
    me: &NodeId,
    available: impl Fn(&NodeId) -> bool,
    random: u64,
) -> Option<(&'a TreeSpec, &'a NodeId)> {
    let candidates: Vec<(&TreeSpec, Vec<&NodeId>)> = ready
        .iter()
        .map(|spec| {
            let peers = spec
                .replicas
                .iter()
                .filter(|peer| *peer != me && available(peer))
                .collect::<Vec<_>>();
            (spec, peers)
        })
        .filter(|(_, peers)| !peers.is_empty())
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let count = candidates.len() as u64;
    let (spec, peers) = &candidates[(random % count) as usize];
    let peer = peers[((random / count) % peers.len() as u64) as usize];
    Some((spec, peer))
}

/// What reconciling one key between this replica (`local`) and a peer (`remote`)
/// needs; an absent key is the empty state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRepair {
    /// The peer holds versions we lack: merge its state here.
    pub pull: bool,
    /// We hold versions the peer lacks: send it ours.
    pub push: bool,
}

/// Compares two replicas' states of a key (Dynamo §4.7: "missing or older versions
/// pushed both ways"): each side needs the other's state when merging it in would
/// change its own. Concurrent states need both.
pub fn key_repair(local: &SiblingSet, remote: &SiblingSet) -> KeyRepair {
    if local == remote {
        return KeyRepair {
            pull: false,
            push: false,
        };
    }
    let mut merged = local.clone();
    merged.merge(remote);
    KeyRepair {
        pull: merged != *local,
        push: merged != *remote,
    }
}

/// How much repair work a round may still do: the seam where the node's admission
/// budget (shared with hint delivery and range transfer) plugs in.
pub trait RepairBudget: Send {
    /// Takes `keys` keys of `bytes` bytes from the budget; `false` (taking nothing)
    /// when that would exceed it, and the round stops repairing.
    fn take(&mut self, keys: u64, bytes: u64) -> bool;
}

/// A round's own limit and the node's shared background budget (admission control)
/// together: a key is repaired only when both allow it, so anti-entropy backs off when
/// foreground latency rises, as hinted handoff and range transfer do.
pub(crate) struct AdmittedLimit<'a> {
    /// The per-round limit (`--anti-entropy-max-keys`, `--anti-entropy-max-bytes`).
    pub(crate) limit: RoundLimit,
    /// The node's budget; one unit per key.
    pub(crate) shared: &'a crate::background::BackgroundBudget,
}

impl RepairBudget for AdmittedLimit<'_> {
    fn take(&mut self, keys: u64, bytes: u64) -> bool {
        if keys > self.limit.keys || bytes > self.limit.bytes {
            return false;
        }
        if keys > 0
            && self
                .shared
                .take(crate::admission::WorkKind::AntiEntropy, keys)
                < keys
        {
            return false;
        }
        self.limit.take(keys, bytes)
    }
}

/// A fixed allowance of keys and bytes per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundLimit {
    /// Keys the round may still repair.
    pub keys: u64,
    /// Bytes (encoded states) the round may still move.
    pub bytes: u64,
}

impl RepairBudget for RoundLimit {
    fn take(&mut self, keys: u64, bytes: u64) -> bool {
        if keys > self.keys || bytes > self.bytes {
            return false;
        }
        self.keys -= keys;
        self.bytes -= bytes;
        true
    }
}

/// Whether `state` is a purge candidate at wall time `now`: it holds only tombstones
/// and the newest is older than `grace`. Whether it may be purged also needs every
/// replica to hold exactly this state, which only the shell can check.
pub fn tombstone_expired(state: &SiblingSet, now: Millis, grace: std::time::Duration) -> bool {
    if !state.tombstone_only() {
        return false;
    }
    let grace = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    state
        .siblings()
        .iter()
        .all(|sibling| sibling.timestamp.0.saturating_add(grace) <= now.0)
}

/// How old a hint may be and still be delivered: three quarters of the tombstone
/// grace. See [`deliverable`].
pub fn delivery_horizon(grace: std::time::Duration) -> std::time::Duration {
    grace - grace / 4
}

/// Whether `state`, a hint, may still be handed to the key's replicas at wall time
/// `now`: its newest version (the hinted write) is younger than the
/// [`delivery_horizon`]. An older hint is dropped instead of delivered.
///
/// Hints are the one copy outside the replicas a purge does not see (it reads every
/// member's data, see the [module docs](super)); this keeps them from outliving a
/// purge. A value V that
/// a delete's tombstone T supersedes was written before T, so V's newest timestamp is
/// below T's (clocks agreeing within the quarter of the grace the horizon leaves).
/// T is purged only once it is older than the grace ([`tombstone_expired`]), and by
/// then every hint of V is older than the horizon, so none can be delivered after the
/// purge; a hint delivered before it meets T (or a replica not yet holding T, which
/// blocks the purge). The price: a write held only by a stand-in that could not reach
/// any home replica for that long is dropped, as Cassandra drops hints past its hint
/// window.
pub fn deliverable(state: &SiblingSet, now: Millis, grace: std::time::Duration) -> bool {
    let horizon = u64::try_from(delivery_horizon(grace).as_millis()).unwrap_or(u64::MAX);
    state
        .siblings()
        .iter()
        .map(|sibling| sibling.timestamp.0)
        .max()
        .is_none_or(|newest| newest.saturating_add(horizon) > now.0)
}

/// The node that runs the purge of a key: the first node of its preference list (its
/// coordinator, Dynamo §4.3), so exactly one replica tries per key.
pub fn purger(preference_list: &[NodeId]) -> Option<&NodeId> {
    preference_list.first()
}

/// The order of `key` in a ring-order scan of `range`: its token's clockwise distance
/// from the range start, then its bytes, as [`crate::storage::StorageEngine::scan`]
/// returns keys.
pub fn ring_position(range: TokenRange, key: &[u8]) -> (u128, &[u8]) {
    (
        Token::of(key).0.wrapping_sub(range.start.0).wrapping_sub(1),
        key,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ring::PartitionStrategy;
    use crate::version::{Actor, SiblingLimits, Value};

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn ring(names: &[&str], strategy: PartitionStrategy) -> Ring {
        let members: Vec<(NodeId, u32)> = names.iter().map(|n| (id(n), 1)).collect();
        Ring::build(&members, strategy, 1, None).unwrap()
    }

    fn put(state: &mut SiblingSet, value: Option<&[u8]>, actor: &str, at: u64) {
        let context = state.context();
        state
            .put(
                &context,
                value.map_or(Value::Tombstone, Value::data),
                &Actor::new(id(actor), 1),
                Millis(at),
                &SiblingLimits::default(),
            )
            .unwrap();
    }

    #[test]
    fn depth_shrinks_by_one_per_halving() {
        let full = FULL_RING_DEPTH;
        assert_eq!(depth_for(TokenRange::full(), full), FULL_RING_DEPTH);
        let half = TokenRange::new(Token(0), Token(1 << 127));
        assert_eq!(depth_for(half, full), FULL_RING_DEPTH - 1);
        let sixteenth = TokenRange::new(Token(5), Token(5 + (1 << 124)));
        assert_eq!(depth_for(sixteenth, full), FULL_RING_DEPTH - 4);
        assert_eq!(
            depth_for(TokenRange::new(Token(5), Token(6)), full),
            MIN_DEPTH
        );
        // Wrapping ranges are measured the same way.
        let wrapping = TokenRange::new(Token(u128::MAX - (1 << 126) + 1), Token(1 << 126));
        assert_eq!(depth_for(wrapping, full), FULL_RING_DEPTH - 1);
        // A shallower full-ring depth shrinks every tree alike, down to the minimum.
        assert_eq!(depth_for(TokenRange::full(), 6), 6);
        assert_eq!(depth_for(sixteenth, 6), MIN_DEPTH);
        assert_eq!(depth_for(half, 6), 5);
        // Out-of-bounds settings are clamped.
        assert_eq!(depth_for(TokenRange::full(), 0), MIN_DEPTH);
        assert_eq!(depth_for(TokenRange::full(), u8::MAX), MAX_DEPTH);
    }

    #[test]
    fn with_as_many_nodes_as_replicas_one_tree_covers_the_ring() {
        // Dynamo §4.3: with N nodes and N replicas every node stores every key.
        let ring = ring(&["a", "b", "c"], PartitionStrategy::default());
        for me in ["a", "b", "c"] {
            let specs = tree_specs(&ring, &id(me), 3, FULL_RING_DEPTH);
            assert_eq!(specs.len(), 1);
            assert_eq!(specs[0].range, TokenRange::full());
            assert_eq!(specs[0].depth, FULL_RING_DEPTH);
            assert_eq!(specs[0].replicas, vec![id("a"), id("b"), id("c")]);
        }
    }

    #[test]
    fn replicas_of_a_range_derive_the_same_spec_and_specs_tile_the_ring() {
        for strategy in [
            PartitionStrategy::default(),
            PartitionStrategy::equal_partitions(64).unwrap(),
        ] {
            let names = ["a", "b", "c", "d", "e"];
            let ring = ring(&names, strategy);
            let all: Vec<Vec<TreeSpec>> = names
                .iter()
                .map(|n| tree_specs(&ring, &id(n), 3, FULL_RING_DEPTH))
                .collect();
            for (me, specs) in names.iter().zip(&all) {
                assert!(!specs.is_empty());
                for spec in specs {
                    assert!(spec.replicas.contains(&id(me)));
                    assert_eq!(spec.replicas.len(), 3);
                    // Every other replica of the range holds the identical spec.
                    for peer in &spec.replicas {
                        let index = names.iter().position(|n| id(n) == *peer).unwrap();
                        assert!(all[index].contains(spec), "{peer} lacks {spec:?}");
                    }
                    // The spec's replica set is the preference list of its keys.
                    let mut expected = ring.preference_list(spec.range.end, 3);
                    expected.sort();
                    assert_eq!(spec.replicas, expected);
                }
            }
            // Each piece of the ring is replicated by exactly three nodes.
            let fraction: f64 = all.iter().flatten().map(|s| s.range.fraction()).sum();
            assert!((fraction - 3.0).abs() < 1e-9, "{fraction}");
        }
    }

    #[test]
    fn the_chosen_peer_is_an_available_other_replica() {
        let spec = |start: u128, names: &[&str]| TreeSpec {
            range: TokenRange::new(Token(start), Token(start + 10)),
            depth: MIN_DEPTH,
            replicas: names.iter().map(|n| id(n)).collect(),
        };
        let specs = vec![spec(0, &["a", "b", "c"]), spec(100, &["a", "c", "d"])];
        let me = id("a");
        let everyone = |_: &NodeId| true;
        let mut seen = std::collections::BTreeSet::new();
        for random in 0..20 {
            let (chosen, peer) = choose_exchange(&specs, &me, everyone, random).unwrap();
            assert_ne!(*peer, me);
            assert!(chosen.replicas.contains(peer));
            seen.insert((chosen.range.start, peer.clone()));
        }
        assert_eq!(seen.len(), 4, "every (range, peer) pair comes up");
        // Unavailable peers are never chosen; a range without any is skipped.
        let only_d = |n: &NodeId| *n == id("d");
        for random in 0..10 {
            let (chosen, peer) = choose_exchange(&specs, &me, only_d, random).unwrap();
            assert_eq!((chosen.range.start, peer), (Token(100), &id("d")));
        }
        assert_eq!(choose_exchange(&specs, &me, |_| false, 7), None);
        assert_eq!(choose_exchange(&[], &me, everyone, 7), None);
    }

    #[test]
    fn key_repair_moves_only_what_each_side_lacks() {
        let empty = SiblingSet::new();
        let mut v1 = SiblingSet::new();
        put(&mut v1, Some(b"v1"), "x", 1);
        let mut v2 = v1.clone();
        put(&mut v2, Some(b"v2"), "x", 2);
        let mut concurrent = v1.clone();
        put(&mut concurrent, Some(b"other"), "y", 2);
        let none = KeyRepair {
            pull: false,
            push: false,
        };
        assert_eq!(key_repair(&v1, &v1), none);
        assert_eq!(key_repair(&empty, &empty), none);
        // Missing here: pull. Missing there: push.
        assert_eq!(
            key_repair(&empty, &v1),
            KeyRepair {
                pull: true,
                push: false
            }
        );
        assert_eq!(
            key_repair(&v1, &empty),
            KeyRepair {
                pull: false,
                push: true
            }
        );
        // Older here: pull the newer version; older there: push ours.
        assert_eq!(
            key_repair(&v1, &v2),
            KeyRepair {
                pull: true,
                push: false
            }
        );
        assert_eq!(
            key_repair(&v2, &v1),
            KeyRepair {
                pull: false,
                push: true
            }
        );
        // Concurrent versions go both ways and end as siblings on both.
        assert_eq!(
            key_repair(&v2, &concurrent),
            KeyRepair {
                pull: true,
                push: true
            }
        );
    }

    #[test]
    fn a_round_limit_refuses_what_would_exceed_it() {
        let mut limit = RoundLimit {
            keys: 3,
            bytes: 100,
        };
        assert!(limit.take(1, 60));
        assert!(!limit.take(1, 41), "bytes would exceed");
        assert!(limit.take(2, 40));
        assert!(!limit.take(1, 0), "keys would exceed");
        assert_eq!(limit, RoundLimit { keys: 0, bytes: 0 });
    }

    #[test]
    fn only_old_tombstone_only_states_expire() {
        let grace = Duration::from_millis(1000);
        let mut deleted = SiblingSet::new();
        put(&mut deleted, Some(b"v"), "x", 10);
        put(&mut deleted, None, "x", 100);
        assert!(deleted.tombstone_only());
        assert!(!tombstone_expired(&deleted, Millis(1099), grace));
        assert!(tombstone_expired(&deleted, Millis(1100), grace));
        // A live sibling beside the tombstone: never a candidate.
        let mut mixed = deleted.clone();
        let mut live = SiblingSet::new();
        put(&mut live, Some(b"w"), "y", 5);
        mixed.merge(&live);
        assert!(!tombstone_expired(&mixed, Millis(1_000_000), grace));
        // Two concurrent tombstones: the newer one decides.
        let mut other = SiblingSet::new();
        put(&mut other, None, "z", 900);
        let mut both = deleted.clone();
        both.merge(&other);
        assert!(!tombstone_expired(&both, Millis(1100), grace));
        assert!(tombstone_expired(&both, Millis(1900), grace));
        assert!(!tombstone_expired(
            &SiblingSet::new(),
            Millis(u64::MAX),
            grace
        ));
        assert_eq!(purger(&[id("a"), id("b")]), Some(&id("a")));
        assert_eq!(purger(&[]), None);
    }

    #[test]
    fn copies_older_than_three_quarters_of_the_grace_are_not_delivered() {
        let grace = Duration::from_millis(1000);
        assert_eq!(delivery_horizon(grace), Duration::from_millis(750));
        let mut state = SiblingSet::new();
        put(&mut state, Some(b"v"), "x", 100);
        assert!(deliverable(&state, Millis(849), grace));
        assert!(!deliverable(&state, Millis(850), grace));
        // A newer concurrent sibling keeps the whole state deliverable.
        let mut newer = SiblingSet::new();
        put(&mut newer, Some(b"w"), "y", 600);
        state.merge(&newer);
        assert!(deliverable(&state, Millis(1349), grace));
        assert!(!deliverable(&state, Millis(1350), grace));
        assert!(deliverable(&SiblingSet::new(), Millis(u64::MAX), grace));
    }

    proptest::proptest! {
        /// Whenever a tombstone may be purged, no value it superseded (written before
        /// it, by a clock up to a quarter of the grace ahead of the tombstone's) can
        /// still be delivered: the purge window is closed.
        #[test]
        fn nothing_a_purgeable_tombstone_superseded_is_deliverable(
            grace_ms in 4u64..10_000_000,
            deleted_at in 0u64..1_000_000_000,
            written_before in 0u64..1_000_000,
            skew in 0u64..=1_000_000,
            after in 0u64..1_000_000,
        ) {
            let grace = Duration::from_millis(grace_ms);
            // The value's clock may run ahead of the tombstone's by up to grace / 4.
            let skew = skew % (grace_ms / 4 + 1);
            let value_at = deleted_at.saturating_sub(written_before) + skew;
            let mut value = SiblingSet::new();
            put(&mut value, Some(b"v"), "x", value_at);
            let mut tombstone = value.clone();
            put(&mut tombstone, None, "y", deleted_at);
            let now = Millis(deleted_at + grace_ms + after);
            proptest::prop_assert!(tombstone_expired(&tombstone, now, grace));
            proptest::prop_assert!(!deliverable(&value, now, grace));
        }
    }

    #[test]
    fn ring_position_orders_a_wrapping_range_from_its_start() {
        let key = b"k";
        let token = Token::of(key);
        let range = TokenRange::new(Token(token.0.wrapping_sub(1)), token);
        assert_eq!(ring_position(range, key), (0, &key[..]));
        let after = TokenRange::new(token, Token(token.0.wrapping_sub(1)));
        assert_eq!(ring_position(after, key).0, u128::MAX);
    }
}
