//! Choosing whom to gossip with (Dynamo §4.8.1, §4.8.2).
//!
//! Dynamo §4.8.1: "each node contacts a peer chosen at random every second" to
//! reconcile membership. §4.8.2: seeds are nodes every node knows about; because
//! "all nodes eventually reconcile their membership with a seed", two logical rings
//! created by joining nodes through different nodes heal into one. The randomness
//! comes from the shell as a `u64`, so simulations replay exactly.

use super::table::{MemberState, MemberTable};
use crate::NodeId;

/// A node that is not a seed gossips with a seed one round in this many.
pub const SEED_ONE_IN: u64 = 4;

/// Whom a gossip round talks to: a member of the table, or one of the configured seeds
/// (which the shell knows by address, since a seed may not be in the table yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipTarget<'a, S> {
    /// A member, by id.
    Member(NodeId),
    /// A seed, as the shell listed it.
    Seed(&'a S),
}

/// The peer to gossip with this round, or `None` when there is nobody to talk to.
///
/// Candidates are the table's members other than `self_id` that are not Removed and
/// that `available` accepts (the shell passes the failure detector's
/// `is_available`). A node that is not itself a seed (`i_am_a_seed`) picks a seed when
/// `random % SEED_ONE_IN == 0`, and whenever it has no other candidate (a freshly
/// started node knows only itself and its seeds); otherwise it picks a candidate
/// uniformly, using the bits of `random` above the ones that chose between the two.
/// `seeds` are the seeds the shell may contact (itself left out), in its own terms:
/// addresses from its configuration, or ids in tests.
pub fn choose_gossip_target<'a, S>(
    members: &MemberTable,
    self_id: &NodeId,
    random: u64,
    seeds: &'a [S],
    i_am_a_seed: bool,
    available: impl Fn(&NodeId) -> bool,
) -> Option<GossipTarget<'a, S>> {
    let usable = |id: &NodeId| {
        id != self_id
            && members
                .get(id)
                .is_none_or(|m| m.state() != MemberState::Removed)
            && available(id)
    };
    let peers = || members.iter().map(|m| m.id()).filter(|id| usable(id));
    let index = random / SEED_ONE_IN;

    let peer_count = peers().count();
    let seed_round = peer_count == 0 || (!i_am_a_seed && random % SEED_ONE_IN == 0);
    if seed_round && !seeds.is_empty() {
        return Some(GossipTarget::Seed(&seeds[pick(index, seeds.len())]));
    }
    if peer_count == 0 {
        return None;
    }
    peers()
        .nth(pick(index, peer_count))
        .map(|id| GossipTarget::Member(id.clone()))
}

/// `index` reduced to `0..len`; `len` is non-zero.
fn pick(index: u64, len: usize) -> usize {
    // `len` fits in a u64 and the remainder is below `len`, so both casts are lossless.
    (index % len as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::membership::table::tests::{id, tables};

    fn table(names: &[&str]) -> MemberTable {
        let mut t = MemberTable::new();
        for name in names {
            t.join(id(name), "h:1", 1).unwrap();
        }
        t
    }

    fn anyone(_: &NodeId) -> bool {
        true
    }

    /// The chooser as a shell whose seeds are node ids uses it: seeds other than itself
    /// that are not Removed and are available (what the tests below expect of seeds).
    fn choose(
        t: &MemberTable,
        me: &NodeId,
        random: u64,
        seeds: &[NodeId],
        available: impl Fn(&NodeId) -> bool,
    ) -> Option<NodeId> {
        let usable: Vec<NodeId> = seeds
            .iter()
            .filter(|s| *s != me)
            .filter(|s| t.get(s).is_none_or(|m| m.state() != MemberState::Removed))
            .filter(|s| available(s))
            .cloned()
            .collect();
        match choose_gossip_target(t, me, random, &usable, seeds.contains(me), &available)? {
            GossipTarget::Member(id) => Some(id),
            GossipTarget::Seed(id) => Some(id.clone()),
        }
    }

    #[test]
    fn alone_without_seeds_there_is_nobody_to_gossip_with() {
        let t = table(&["me"]);
        for random in 0..8 {
            assert_eq!(choose(&t, &id("me"), random, &[], anyone), None);
        }
        assert_eq!(
            choose(&t, &id("me"), 0, &[id("me")], anyone),
            None,
            "a lone seed does not gossip with itself"
        );
    }

    /// Dynamo §4.8.2: a new node learns the cluster from its seeds.
    #[test]
    fn a_fresh_node_gossips_with_a_seed() {
        let t = table(&["me"]);
        let seeds = [id("s1"), id("s2")];
        let chosen: BTreeSet<_> = (0..16)
            .filter_map(|r| choose(&t, &id("me"), r, &seeds, anyone))
            .collect();
        assert_eq!(chosen, seeds.into_iter().collect());
    }

    #[test]
    fn non_seeds_pick_a_seed_one_round_in_four() {
        let t = table(&["me", "p1", "p2", "p3", "s"]);
        let seeds = [id("s")];
        for random in 0..64 {
            let chosen = choose(&t, &id("me"), random, &seeds, anyone).unwrap();
            if random % SEED_ONE_IN == 0 {
                assert_eq!(chosen, id("s"), "random {random}");
            }
        }
        // A seed itself does not take the seed round: it only picks random peers.
        let from_seed: BTreeSet<_> = (0..64)
            .filter(|r| r % SEED_ONE_IN == 0)
            .filter_map(|r| choose(&t, &id("s"), r, &seeds, anyone))
            .collect();
        assert_eq!(from_seed.len(), 4);
        assert!(!from_seed.contains(&id("s")));
    }

    #[test]
    fn removed_unavailable_and_self_are_never_chosen() {
        let mut t = table(&["me", "gone", "down", "up"]);
        t.leave(&id("gone")).unwrap();
        t.mark_removed(&id("gone")).unwrap();
        let seeds = [id("gone"), id("down")];
        let not_down = |p: &NodeId| p.as_str() != "down";
        for random in 0..32 {
            assert_eq!(
                choose(&t, &id("me"), random, &seeds, not_down),
                Some(id("up"))
            );
        }
    }

    #[test]
    fn a_leaving_node_still_gossips() {
        let mut t = table(&["me", "leaving"]);
        t.leave(&id("leaving")).unwrap();
        assert_eq!(choose(&t, &id("me"), 1, &[], anyone), Some(id("leaving")));
    }

    proptest! {
        /// The choice is always a usable peer or seed, and some peer is chosen
        /// whenever one exists.
        #[test]
        fn the_target_is_a_live_peer_or_seed(
            ts in tables(1),
            me in 0..4usize,
            seeds in proptest::collection::vec(0..6usize, 0..3),
            random in any::<u64>(),
        ) {
            let names = ["a", "b", "c", "d", "s1", "s2"];
            let me = id(names[me]);
            let seeds: Vec<_> = seeds.into_iter().map(|i| id(names[i])).collect();
            let t = &ts[0];
            let removed = |p: &NodeId| t.get(p).is_some_and(|m| m.state() == MemberState::Removed);
            let chosen = choose(t, &me, random, &seeds, anyone);
            let any_peer = t.iter().any(|m| m.id() != &me && !removed(m.id()));
            let any_seed = seeds.iter().any(|s| s != &me && !removed(s));
            match chosen {
                None => prop_assert!(!any_peer && !any_seed),
                Some(p) => {
                    prop_assert_ne!(&p, &me);
                    prop_assert!(!removed(&p));
                    prop_assert!(t.get(&p).is_some() || seeds.contains(&p));
                }
            }
        }
    }
}
