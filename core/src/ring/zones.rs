//! Replicas across failure domains (Dynamo §4.2: a key's preference list is built "such
//! that the storage nodes are spread across multiple data centers"; §4.6 hinted
//! stand-ins).
//!
//! No I/O. A node may carry a zone (a data center, an availability zone, a rack). The
//! ring's clockwise walk of distinct nodes is reordered so that every prefix spreads
//! over as many zones as it can: round 0 takes the first node of each zone in the order
//! the walk meets the zones, round 1 the second node of each, and so on. So the first N
//! nodes (the home replicas) sit in N distinct zones whenever at least N zones exist,
//! and otherwise in every zone with counts that differ by at most one; and the nodes
//! after them (the sloppy quorum's stand-ins) come from the zones the home replicas use
//! least. With one zone (none configured) the order is the walk's own, as before zones.
//!
//! The reordering is lazy: a preference list of N reads only as far round the ring as
//! it needs to meet N zones (or all of them).

use std::collections::VecDeque;

/// Interleaves a walk of distinct nodes (member indices, in clockwise order) by zone;
/// see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ZoneInterleave<I> {
    walk: I,
    /// The zone of each member index.
    zone_of: Vec<u32>,
    /// Whether each zone has been met.
    met: Vec<bool>,
    /// Zones in the order the walk met them.
    order: Vec<u32>,
    /// Nodes met but not yet yielded, by zone.
    waiting: Vec<VecDeque<u32>>,
    /// Zones that can still hold nodes of the walk: those of placed members.
    zones: usize,
    /// Round 0 (one node per newly met zone) is over.
    first_round_done: bool,
    /// The next zone (index into `order`) to give a node in the later rounds.
    next: usize,
    exhausted: bool,
}

impl<I: Iterator<Item = u32>> ZoneInterleave<I> {
    /// Interleaves `walk` by `zone_of` (the zone index of each member, below
    /// `zone_count`); `zones` is how many distinct zones the walk can meet.
    pub fn new(walk: I, zone_of: Vec<u32>, zone_count: usize, zones: usize) -> Self {
        Self {
            walk,
            zone_of,
            met: vec![false; zone_count],
            order: Vec::with_capacity(zones),
            waiting: vec![VecDeque::new(); zone_count],
            zones,
            first_round_done: false,
            next: 0,
            exhausted: false,
        }
    }

    /// The walk's next node, or `None` (and `exhausted`) at its end.
    fn pull(&mut self) -> Option<u32> {
        let node = self.walk.next();
        self.exhausted = node.is_none();
        node
    }

    fn zone(&self, node: u32) -> usize {
        self.zone_of
            .get(node as usize)
            .map_or(0, |&zone| zone as usize)
    }

    /// Round 0: the first node of each zone, as the walk meets the zone.
    fn first_of_a_new_zone(&mut self) -> Option<u32> {
        while self.order.len() < self.zones && !self.exhausted {
            let Some(node) = self.pull() else { break };
            let zone = self.zone(node);
            if self.met[zone] {
                self.waiting[zone].push_back(node);
            } else {
                self.met[zone] = true;
                self.order.push(u32::try_from(zone).unwrap_or(u32::MAX));
                return Some(node);
            }
        }
        None
    }

    /// Later rounds: zones in the order met, each giving its next node.
    fn next_in_turn(&mut self) -> Option<u32> {
        for _ in 0..self.order.len() {
            let zone = self.order[self.next] as usize;
            self.next = (self.next + 1) % self.order.len();
            if let Some(node) = self.waiting[zone].pop_front() {
                return Some(node);
            }
            while !self.exhausted {
                let Some(node) = self.pull() else { break };
                let met = self.zone(node);
                if met == zone {
                    return Some(node);
                }
                self.waiting[met].push_back(node);
            }
        }
        None
    }
}

impl<I: Iterator<Item = u32>> Iterator for ZoneInterleave<I> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if !self.first_round_done {
            if let Some(node) = self.first_of_a_new_zone() {
                return Some(node);
            }
            self.first_round_done = true;
        }
        self.next_in_turn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn interleave(walk: &[u32], zone_of: &[u32]) -> Vec<u32> {
        let zone_count = zone_of.iter().max().map_or(0, |&z| z as usize + 1);
        let mut zones: Vec<u32> = walk.iter().map(|&n| zone_of[n as usize]).collect();
        zones.sort_unstable();
        zones.dedup();
        ZoneInterleave::new(
            walk.iter().copied(),
            zone_of.to_vec(),
            zone_count,
            zones.len(),
        )
        .collect()
    }

    #[test]
    fn rounds_take_one_node_per_zone_in_the_order_the_walk_meets_them() {
        // Nodes 0..6 in the walk's order; zones a=0 (0, 1, 2), b=1 (3, 4), c=2 (5).
        let zone_of = [0, 0, 0, 1, 1, 2];
        assert_eq!(
            interleave(&[0, 1, 2, 3, 4, 5], &zone_of),
            [0, 3, 5, 1, 4, 2]
        );
        // Another starting point: b is met first.
        assert_eq!(
            interleave(&[4, 0, 5, 3, 1, 2], &zone_of),
            [4, 0, 5, 3, 1, 2]
        );
        assert_eq!(
            interleave(&[3, 4, 0, 1, 2, 5], &zone_of),
            [3, 0, 5, 4, 1, 2]
        );
    }

    #[test]
    fn one_zone_keeps_the_walk_order() {
        assert_eq!(interleave(&[2, 0, 1], &[0, 0, 0]), [2, 0, 1]);
        assert!(interleave(&[], &[]).is_empty());
    }

    /// A walk (a permutation of `0..nodes`) and a zone for each node.
    fn walks() -> impl Strategy<Value = (Vec<u32>, Vec<u32>)> {
        (1usize..24, 1u32..6).prop_flat_map(|(nodes, zones)| {
            (
                Just((0..u32::try_from(nodes).unwrap()).collect::<Vec<_>>()).prop_shuffle(),
                proptest::collection::vec(0..zones, nodes),
            )
        })
    }

    proptest! {
        /// Every node once; every prefix as spread as the zones allow: as many distinct
        /// zones as its length or the zones there are, and counts per zone that differ
        /// by at most one among zones with nodes left to give.
        #[test]
        fn every_prefix_spreads_over_as_many_zones_as_it_can((walk, zone_of) in walks()) {
            let order = interleave(&walk, &zone_of);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            let mut all = walk.clone();
            all.sort_unstable();
            prop_assert_eq!(sorted, all);
            let total = |zone: u32| walk.iter().filter(|&&n| zone_of[n as usize] == zone).count();
            let zones: std::collections::BTreeSet<u32> =
                walk.iter().map(|&n| zone_of[n as usize]).collect();
            for len in 1..=order.len() {
                let prefix = &order[..len];
                let count = |zone: u32| prefix.iter().filter(|&&n| zone_of[n as usize] == zone).count();
                let distinct = zones.iter().filter(|&&z| count(z) > 0).count();
                prop_assert_eq!(distinct, len.min(zones.len()), "prefix {:?}", prefix);
                // Zones not yet used up hold within one of each other.
                let open: Vec<usize> = zones.iter().filter(|&&z| count(z) < total(z)).map(|&z| count(z)).collect();
                if let (Some(min), Some(max)) = (open.iter().min(), zones.iter().map(|&z| count(z)).max()) {
                    prop_assert!(max - min <= 1, "prefix {:?}", prefix);
                }
            }
        }
    }
}
