//! The ring value: members, their virtual nodes, and the placement questions the rest of
//! the node asks (Dynamo §4.2 partitioning, §4.3 replication, §6.2 strategies).
//!
//! No I/O. A [`Ring`] is computed from the member set (and, for strategy 3, the
//! previous ring), compared by epoch, and gossiped as a small wire form from which every
//! node rebuilds the same lookup tables.

use std::collections::BTreeMap;
use std::fmt;
use std::iter::{self, FusedIterator};

use serde::{Deserialize, Serialize};

use super::limits::MAX_VIRTUAL_NODES;
use super::partitions;
use super::zones::ZoneInterleave;
use super::{PartitionStrategy, RingError, Token, TokenRange};
use crate::NodeId;

/// A consistent-hashing ring: weighted physical nodes, their virtual nodes, and an epoch.
///
/// Every virtual node is a token; it owns the range from the previous token (exclusive)
/// to its own (inclusive), so a key belongs to the first virtual node at or clockwise
/// after the key's token (Dynamo §4.2). A key's preference list is the first `n`
/// distinct physical nodes met walking clockwise from there (§4.3).
///
/// Use: [`Ring::build`] when the member set changes (passing the current ring as
/// `previous` under strategy 3, so partitions move as little as possible), then ask
/// [`Ring::preference_list`] per request and [`moves`] to learn which ranges changed
/// hands. The empty member list gives a valid empty ring whose preference lists are
/// empty: a node that has not joined yet holds one.
///
/// Serialization carries only the epoch, strategy, members and (strategy 3) the
/// partition assignment; deserialization rebuilds the rest and rejects inconsistent
/// input (see [`RingError`]).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RingWire")]
pub struct Ring {
    /// Version of the ring, set by the caller (the membership layer), so peers can tell
    /// which of two rings is newer.
    epoch: u64,
    strategy: PartitionStrategy,
    /// Members sorted by id, with their weights; owners below index into this list.
    members: Vec<(NodeId, u32)>,
    /// Strategy 3: the owner of each partition. It depends on history, so it is part of
    /// the value and of the wire form. Empty under strategy 1 and for an empty ring.
    assignment: Vec<u32>,
    /// Sorted, distinct virtual-node tokens.
    tokens: Vec<Token>,
    /// `owners[i]` owns `(tokens[i - 1], tokens[i]]` (wrapping).
    owners: Vec<u32>,
    /// How many members own at least one virtual node: the longest preference list.
    placed: usize,
    /// The zone of each member (an index into `zone_names`), by member index; empty
    /// when no member has a zone.
    zones: Vec<u32>,
    /// The distinct zone names, sorted (`""`: no zone).
    zone_names: Vec<String>,
    /// How many distinct zones the placed members are in; above one, walks interleave
    /// by zone (see [`super::zones`]).
    placed_zones: usize,
}

/// A range whose replica set differs between two rings; see [`moves`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeMove {
    /// A maximal range on which both replica sets are constant.
    pub range: TokenRange,
    /// The replicas under the old ring, sorted by id.
    pub from: Vec<NodeId>,
    /// The replicas under the new ring, sorted by id.
    pub to: Vec<NodeId>,
}

impl Ring {
    /// Builds the ring of `members` (`(id, weight)` pairs, in any order) at `epoch`.
    ///
    /// Under [`PartitionStrategy::EqualPartitions`], `previous` (usually the current
    /// ring) is the assignment to change as little as possible: a partition stays with
    /// the node that owned its end token in `previous` while that node is a member
    /// within its quota. With no previous ring (what nodes do, so that every node
    /// derives the same ring from the member set) the assignment is a deterministic
    /// function of the members: rendezvous hashing with bounded loads, which moves close
    /// to the ideal share of partitions when one member joins or leaves. [`PartitionStrategy::RandomTokens`] ignores `previous`.
    ///
    /// # Errors
    /// [`RingError`] for an out-of-bounds strategy, a weight of 0, a repeated id, fewer
    /// partitions than nodes, or more than [`MAX_VIRTUAL_NODES`] virtual nodes.
    pub fn build(
        members: &[(NodeId, u32)],
        strategy: PartitionStrategy,
        epoch: u64,
        previous: Option<&Ring>,
    ) -> Result<Self, RingError> {
        strategy.validate()?;
        let mut members = members.to_vec();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        check_members(&members, strategy)?;
        let assignment = match strategy {
            PartitionStrategy::RandomTokens { .. } => Vec::new(),
            PartitionStrategy::EqualPartitions { .. } if members.is_empty() => Vec::new(),
            PartitionStrategy::EqualPartitions { q } => {
                let weights: Vec<u32> = members.iter().map(|(_, w)| *w).collect();
                let seeds: Vec<u64> = members
                    .iter()
                    .map(|(id, _)| partitions::node_seed(id.as_str()))
                    .collect();
                let quotas = partitions::quotas(q, &weights);
                match previous {
                    None => partitions::assign_by_rank(&quotas, &seeds),
                    Some(previous) => {
                        let previous_owner: Vec<Option<u32>> = (0..q)
                            .map(|p| {
                                let owner = previous.owner_at(partitions::partition_end(p, q))?;
                                index_of(&members, &previous.members[owner as usize].0)
                            })
                            .collect();
                        partitions::assign(&quotas, &seeds, &previous_owner)
                    }
                }
            }
        };
        Ok(Self::assemble(epoch, strategy, members, assignment))
    }

    /// The same ring with each member in the zone `zone_of` gives it (`None` or `""`:
    /// no zone). Zones change no ownership, only the order of walks: a key's preference
    /// list then spreads over as many zones as it can (see [`super::zones`]).
    #[must_use]
    pub fn zoned<S: AsRef<str>>(mut self, zone_of: impl Fn(&NodeId) -> Option<S>) -> Self {
        let names: Vec<String> = self
            .members
            .iter()
            .map(|(id, _)| {
                zone_of(id)
                    .map(|zone| zone.as_ref().to_owned())
                    .unwrap_or_default()
            })
            .collect();
        let mut zone_names: Vec<String> = names.clone();
        zone_names.sort_unstable();
        zone_names.dedup();
        if zone_names.len() <= 1 && zone_names.first().is_none_or(String::is_empty) {
            self.zones = Vec::new();
            self.zone_names = Vec::new();
            self.placed_zones = 1;
            return self;
        }
        self.zones = names
            .iter()
            .map(|name| {
                let index = zone_names.binary_search(name).unwrap_or(0);
                u32::try_from(index).unwrap_or(u32::MAX)
            })
            .collect();
        self.zone_names = zone_names;
        self.placed_zones = self.count_placed_zones();
        self
    }

    /// The zone of `node` (`""` for none), or `None` if it is not a member.
    pub fn zone(&self, node: &NodeId) -> Option<&str> {
        let index = index_of(&self.members, node)? as usize;
        Some(
            self.zones
                .get(index)
                .and_then(|&zone| self.zone_names.get(zone as usize))
                .map_or("", String::as_str),
        )
    }

    /// How many distinct zones hold virtual nodes (1 when no member has a zone).
    pub fn zone_count(&self) -> usize {
        self.placed_zones
    }

    fn count_placed_zones(&self) -> usize {
        if self.zones.is_empty() {
            return 1;
        }
        let mut placed = vec![false; self.zone_names.len()];
        for &owner in &self.owners {
            placed[self.zones[owner as usize] as usize] = true;
        }
        placed.iter().filter(|&&p| p).count().max(1)
    }

    /// The version the caller gave this ring.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The partitioning strategy.
    pub fn strategy(&self) -> PartitionStrategy {
        self.strategy
    }

    /// The members and their weights, sorted by id.
    pub fn members(&self) -> impl ExactSizeIterator<Item = (&NodeId, u32)> + '_ {
        self.members.iter().map(|(id, weight)| (id, *weight))
    }

    /// The number of physical nodes.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The weight of `node`, or `None` if it is not a member.
    pub fn weight(&self, node: &NodeId) -> Option<u32> {
        index_of(&self.members, node).map(|i| self.members[i as usize].1)
    }

    /// The number of virtual nodes (tokens, or partitions).
    pub fn vnode_count(&self) -> usize {
        self.tokens.len()
    }

    /// Every virtual node's range and owner, in token order.
    pub fn vnodes(&self) -> impl ExactSizeIterator<Item = (TokenRange, &NodeId)> + '_ {
        (0..self.tokens.len()).map(|i| (self.vnode_range(i), self.owner_id(self.owners[i])))
    }

    /// The node owning the range that holds `token` (its coordinator, Dynamo §4.3), or
    /// `None` for an empty ring.
    pub fn primary(&self, token: Token) -> Option<&NodeId> {
        self.owner_at(token).map(|owner| self.owner_id(owner))
    }

    /// All distinct physical nodes clockwise from `token`, primary first: the preference
    /// list extended as far as the ring goes, for the sloppy quorum (Dynamo §4.6).
    ///
    /// Lazy; allocates nothing for rings of up to 256 members.
    pub fn walk(&self, token: Token) -> Walk<'_> {
        self.walk_at(self.position_of(token).unwrap_or(0))
    }

    /// The first `n` distinct physical nodes clockwise from `token` (Dynamo §4.3), or all
    /// of them if there are fewer. `usize::MAX` gives the whole extended list.
    pub fn preference_list(&self, token: Token, n: usize) -> Vec<NodeId> {
        let mut list = Vec::with_capacity(n.min(self.placed));
        list.extend(self.walk(token).take(n).cloned());
        list
    }

    /// [`Ring::preference_list`] for the token of `key` (its MD5, Dynamo §4.2).
    pub fn preference_list_for_key(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.preference_list(Token::of(key), n)
    }

    /// The maximal ranges `node` owns as primary (adjacent virtual nodes merged), in
    /// token order; empty if it is not a member.
    pub fn ranges_of(&self, node: &NodeId) -> Vec<TokenRange> {
        let Some(target) = index_of(&self.members, node) else {
            return Vec::new();
        };
        let owned = self.owners.iter().map(|&owner| owner == target).collect();
        true_ranges(runs(&self.tokens, owned))
    }

    /// The maximal ranges for which `node` is among the first `n` nodes of the
    /// preference list: the key ranges it must store (Dynamo §4.3).
    pub fn replica_ranges(&self, node: &NodeId, n: usize) -> Vec<TokenRange> {
        let Some(target) = index_of(&self.members, node) else {
            return Vec::new();
        };
        let stored = (0..self.tokens.len())
            .map(|i| {
                let mut walk = self.walk_at(i);
                iter::from_fn(|| walk.next_owner())
                    .take(n)
                    .any(|owner| owner == target)
            })
            .collect();
        true_ranges(runs(&self.tokens, stored))
    }

    /// The fraction of the ring each member owns as primary; the fractions sum to 1
    /// (up to rounding) unless the ring is empty.
    pub fn ownership(&self) -> BTreeMap<NodeId, f64> {
        let mut shares: BTreeMap<NodeId, f64> = self
            .members
            .iter()
            .map(|(id, _)| (id.clone(), 0.0))
            .collect();
        for (range, owner) in self.vnodes() {
            if let Some(share) = shares.get_mut(owner) {
                *share += range.fraction();
            }
        }
        shares
    }

    /// Lays out the virtual nodes of checked, sorted `members`.
    fn assemble(
        epoch: u64,
        strategy: PartitionStrategy,
        members: Vec<(NodeId, u32)>,
        assignment: Vec<u32>,
    ) -> Self {
        let vnodes = match strategy {
            PartitionStrategy::RandomTokens { tokens_per_weight } => {
                let mut vnodes = Vec::new();
                for (owner, (id, weight)) in (0u32..).zip(&members) {
                    let count = u64::from(*weight) * u64::from(tokens_per_weight);
                    vnodes.extend((0..count).map(|i| (random_token(id, i), owner)));
                }
                vnodes
            }
            PartitionStrategy::EqualPartitions { q } => (0..q)
                .zip(&assignment)
                .map(|(p, &owner)| (partitions::partition_end(p, q), owner))
                .collect(),
        };
        Self::from_vnodes(epoch, strategy, members, assignment, vnodes)
    }

    /// Sorts `vnodes` into lookup tables. Colliding tokens (astronomically unlikely
    /// under MD5) go to the member with the smaller id; the other loses that one.
    fn from_vnodes(
        epoch: u64,
        strategy: PartitionStrategy,
        members: Vec<(NodeId, u32)>,
        assignment: Vec<u32>,
        mut vnodes: Vec<(Token, u32)>,
    ) -> Self {
        // Members are sorted by id, so the smaller owner index is the smaller id.
        vnodes.sort_unstable();
        vnodes.dedup_by_key(|(token, _)| *token);
        let (tokens, owners): (Vec<Token>, Vec<u32>) = vnodes.into_iter().unzip();
        let mut is_placed = vec![false; members.len()];
        for &owner in &owners {
            is_placed[owner as usize] = true;
        }
        let placed = is_placed.iter().filter(|&&p| p).count();
        Self {
            epoch,
            strategy,
            members,
            assignment,
            tokens,
            owners,
            placed,
            zones: Vec::new(),
            zone_names: Vec::new(),
            placed_zones: 1,
        }
    }

    /// The index of the virtual node whose range holds `token`.
    fn position_of(&self, token: Token) -> Option<usize> {
        if self.tokens.is_empty() {
            return None;
        }
        let i = self.tokens.partition_point(|t| *t < token);
        Some(if i == self.tokens.len() { 0 } else { i })
    }

    fn owner_at(&self, token: Token) -> Option<u32> {
        self.position_of(token).map(|i| self.owners[i])
    }

    fn owner_id(&self, owner: u32) -> &NodeId {
        &self.members[owner as usize].0
    }

    fn vnode_range(&self, i: usize) -> TokenRange {
        let previous = if i == 0 { self.tokens.len() } else { i } - 1;
        TokenRange::new(self.tokens[previous], self.tokens[i])
    }

    fn walk_at(&self, position: usize) -> Walk<'_> {
        let owners = Owners {
            ring: self,
            position,
            steps_left: self.tokens.len(),
            unseen: self.placed,
            seen: Seen::for_members(self.members.len()),
        };
        let order = if self.placed_zones > 1 {
            Order::Zoned(ZoneInterleave::new(
                owners,
                self.zones.clone(),
                self.zone_names.len(),
                self.placed_zones,
            ))
        } else {
            Order::Plain(owners)
        };
        Walk { ring: self, order }
    }
}

impl fmt::Debug for Ring {
    // The lookup tables can hold a million tokens; they follow from the rest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("epoch", &self.epoch)
            .field("strategy", &self.strategy)
            .field("members", &self.members)
            .field("vnodes", &self.tokens.len())
            .field("zones", &self.zone_names)
            .finish()
    }
}

/// Every maximal range whose replica set (the first `n` distinct nodes) differs between
/// `old` and `new`, with both sets: the data that must move when the ring changes
/// (Dynamo §4.9 "Adding/Removing Storage Nodes").
///
/// The union of both rings' tokens cuts the ring into pieces on which both replica sets
/// are constant; adjacent pieces with the same (old, new) sets are merged. A change of
/// order within a replica set is not a move.
pub fn moves(old: &Ring, new: &Ring, n: usize) -> Vec<RangeMove> {
    let mut ends: Vec<Token> = old.tokens.iter().chain(&new.tokens).copied().collect();
    ends.sort_unstable();
    ends.dedup();
    let replicas = |ring: &Ring, token: Token| {
        let mut set = ring.preference_list(token, n);
        set.sort();
        set
    };
    let sets = ends
        .iter()
        .map(|&end| (replicas(old, end), replicas(new, end)))
        .collect();
    runs(&ends, sets)
        .into_iter()
        .filter(|(_, (from, to))| from != to)
        .map(|(range, (from, to))| RangeMove { range, from, to })
        .collect()
}

/// The distinct physical nodes clockwise from a token, interleaved by zone when the
/// members are in several; see [`Ring::walk`].
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    ring: &'a Ring,
    order: Order<'a>,
}

/// The order a walk yields nodes in.
#[derive(Debug, Clone)]
enum Order<'a> {
    /// Clockwise (one zone).
    Plain(Owners<'a>),
    /// Clockwise, interleaved by zone.
    Zoned(ZoneInterleave<Owners<'a>>),
}

/// The distinct owners (member indices) clockwise from a position.
#[derive(Debug, Clone)]
struct Owners<'a> {
    ring: &'a Ring,
    /// The next virtual node to visit.
    position: usize,
    /// Virtual nodes not yet visited: the walk goes round once at most.
    steps_left: usize,
    /// Placed members not yet yielded: the walk stops early once all are.
    unseen: usize,
    seen: Seen,
}

impl Iterator for Owners<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        while self.unseen > 0 && self.steps_left > 0 {
            let owner = self.ring.owners[self.position];
            self.position += 1;
            if self.position == self.ring.owners.len() {
                self.position = 0;
            }
            self.steps_left -= 1;
            if self.seen.insert(owner) {
                self.unseen -= 1;
                return Some(owner);
            }
        }
        None
    }
}

impl Walk<'_> {
    fn next_owner(&mut self) -> Option<u32> {
        match &mut self.order {
            Order::Plain(owners) => owners.next(),
            Order::Zoned(interleave) => interleave.next(),
        }
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = &'a NodeId;

    fn next(&mut self) -> Option<&'a NodeId> {
        let owner = self.next_owner()?;
        Some(self.ring.owner_id(owner))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.order {
            Order::Plain(owners) => (0, Some(owners.unseen)),
            Order::Zoned(_) => (0, Some(self.ring.placed)),
        }
    }
}

impl FusedIterator for Walk<'_> {}

/// A bit set of member indices; inline for small rings so walks need no allocation.
#[derive(Debug, Clone)]
enum Seen {
    Inline([u64; 4]),
    Heap(Vec<u64>),
}

impl Seen {
    fn for_members(members: usize) -> Self {
        if members <= 256 {
            Self::Inline([0; 4])
        } else {
            Self::Heap(vec![0; members.div_ceil(64)])
        }
    }

    /// Marks `index`; true if it was not marked before.
    fn insert(&mut self, index: u32) -> bool {
        let words = match self {
            Self::Inline(words) => &mut words[..],
            Self::Heap(words) => &mut words[..],
        };
        let (word, bit) = (index as usize / 64, 1u64 << (index % 64));
        let fresh = words[word] & bit == 0;
        words[word] |= bit;
        fresh
    }
}

/// Token `i` of node `id` under strategy 1: MD5 of `"{id}#{i}"`.
fn random_token(id: &NodeId, i: u64) -> Token {
    Token::of(format!("{id}#{i}").as_bytes())
}

/// The index of `id` in members sorted by id.
fn index_of(members: &[(NodeId, u32)], id: &NodeId) -> Option<u32> {
    let i = members.binary_search_by(|(m, _)| m.cmp(id)).ok()?;
    u32::try_from(i).ok()
}

/// Checks members sorted by id: no repeats, no zero weight, within the size bounds.
fn check_members(members: &[(NodeId, u32)], strategy: PartitionStrategy) -> Result<(), RingError> {
    if let Some(pair) = members.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(RingError::DuplicateNode(pair[0].0.clone()));
    }
    if let Some((id, _)) = members.iter().find(|(_, weight)| *weight == 0) {
        return Err(RingError::ZeroWeight(id.clone()));
    }
    match strategy {
        PartitionStrategy::RandomTokens { tokens_per_weight } => {
            let weight: u64 = members.iter().map(|(_, w)| u64::from(*w)).sum();
            let vnodes = weight.saturating_mul(u64::from(tokens_per_weight));
            if vnodes > MAX_VIRTUAL_NODES {
                return Err(RingError::TooManyVirtualNodes(vnodes));
            }
        }
        PartitionStrategy::EqualPartitions { q } => {
            if members.len() > q as usize {
                return Err(RingError::FewerPartitionsThanNodes {
                    q,
                    nodes: members.len(),
                });
            }
        }
    }
    Ok(())
}

/// Merges consecutive virtual nodes with equal values, wrapping around the ring.
/// `values[i]` belongs to the range ending at `ends[i]`; `ends` is sorted and distinct.
fn runs<T: PartialEq>(ends: &[Token], values: Vec<T>) -> Vec<(TokenRange, T)> {
    let count = ends.len();
    let before = |i: usize| if i == 0 { count - 1 } else { i - 1 };
    let starts: Vec<usize> = (0..count)
        .filter(|&i| values[i] != values[before(i)])
        .collect();
    if starts.is_empty() {
        // One value all round (or no virtual nodes at all).
        return values
            .into_iter()
            .next()
            .map(|value| vec![(TokenRange::full(), value)])
            .unwrap_or_default();
    }
    let mut values: Vec<Option<T>> = values.into_iter().map(Some).collect();
    starts
        .iter()
        .zip(starts.iter().cycle().skip(1))
        .filter_map(|(&start, &next_start)| {
            let range = TokenRange::new(ends[before(start)], ends[before(next_start)]);
            values[start].take().map(|value| (range, value))
        })
        .collect()
}

fn true_ranges(runs: Vec<(TokenRange, bool)>) -> Vec<TokenRange> {
    runs.into_iter()
        .filter_map(|(range, hit)| hit.then_some(range))
        .collect()
}

/// The wire form of a [`Ring`]: what cannot be recomputed.
#[derive(Serialize)]
struct RingWireRef<'a> {
    epoch: u64,
    strategy: PartitionStrategy,
    members: &'a [(NodeId, u32)],
    assignment: &'a [u32],
    /// Each member's zone name, or empty when no member has one.
    zones: Vec<&'a str>,
}

/// The owned wire form of a [`Ring`], before it is checked.
#[derive(Deserialize)]
struct RingWire {
    epoch: u64,
    strategy: PartitionStrategy,
    members: Vec<(NodeId, u32)>,
    assignment: Vec<u32>,
    zones: Vec<String>,
}

impl Serialize for Ring {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RingWireRef {
            epoch: self.epoch,
            strategy: self.strategy,
            members: &self.members,
            assignment: &self.assignment,
            zones: self
                .zones
                .iter()
                .map(|&zone| self.zone_names[zone as usize].as_str())
                .collect(),
        }
        .serialize(serializer)
    }
}

impl TryFrom<RingWire> for Ring {
    type Error = RingError;

    fn try_from(wire: RingWire) -> Result<Self, RingError> {
        let RingWire {
            epoch,
            strategy,
            members,
            assignment,
            zones,
        } = wire;
        if !zones.is_empty() && zones.len() != members.len() {
            return Err(RingError::Malformed("zones do not match the members"));
        }
        strategy.validate()?;
        if members.windows(2).any(|pair| pair[0].0 > pair[1].0) {
            return Err(RingError::Malformed("members are not sorted by id"));
        }
        check_members(&members, strategy)?;
        match strategy {
            PartitionStrategy::RandomTokens { .. } if !assignment.is_empty() => {
                return Err(RingError::Malformed(
                    "a random-token ring carries a partition assignment",
                ));
            }
            PartitionStrategy::RandomTokens { .. } => {}
            PartitionStrategy::EqualPartitions { q } => {
                let expected_len = if members.is_empty() { 0 } else { q as usize };
                if assignment.len() != expected_len {
                    return Err(RingError::Malformed(
                        "partition assignment has the wrong length",
                    ));
                }
                let mut counts = vec![0u32; members.len()];
                for &owner in &assignment {
                    let count = counts.get_mut(owner as usize).ok_or(RingError::Malformed(
                        "partition assignment names an unknown member",
                    ))?;
                    *count += 1;
                }
                let weights: Vec<u32> = members.iter().map(|(_, w)| *w).collect();
                if !members.is_empty() && counts != partitions::quotas(q, &weights) {
                    return Err(RingError::Malformed(
                        "partition assignment does not match the quotas",
                    ));
                }
            }
        }
        let zone_of: BTreeMap<NodeId, String> = members
            .iter()
            .map(|(id, _)| id.clone())
            .zip(zones)
            .collect();
        Ok(Self::assemble(epoch, strategy, members, assignment)
            .zoned(|id| zone_of.get(id).map(String::as_str)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn random(tokens_per_weight: u32) -> PartitionStrategy {
        PartitionStrategy::random_tokens(tokens_per_weight).unwrap()
    }

    fn equal(q: u32) -> PartitionStrategy {
        PartitionStrategy::equal_partitions(q).unwrap()
    }

    fn build(members: &[(NodeId, u32)], strategy: PartitionStrategy) -> Ring {
        Ring::build(members, strategy, 1, None).unwrap()
    }

    fn set(list: Vec<NodeId>) -> Vec<NodeId> {
        let mut list = list;
        list.sort();
        list
    }

    /// How many partitions changed owner between two strategy-3 rings with the same q.
    fn moved_partitions(old: &Ring, new: &Ring) -> usize {
        let owner = |ring: &Ring, p: usize| ring.owner_id(ring.assignment[p]).clone();
        (0..new.assignment.len())
            .filter(|&p| owner(old, p) != owner(new, p))
            .count()
    }

    fn partition_counts(ring: &Ring) -> BTreeMap<NodeId, u32> {
        let mut counts = BTreeMap::new();
        for &owner in &ring.assignment {
            *counts.entry(ring.owner_id(owner).clone()).or_insert(0) += 1;
        }
        counts
    }

    fn quotas_of(ring: &Ring) -> BTreeMap<NodeId, u32> {
        let PartitionStrategy::EqualPartitions { q } = ring.strategy else {
            panic!("not a strategy 3 ring");
        };
        let weights: Vec<u32> = ring.members.iter().map(|(_, w)| *w).collect();
        let ids = ring.members.iter().map(|(id, _)| id.clone());
        ids.zip(partitions::quotas(q, &weights)).collect()
    }

    #[test]
    fn empty_ring_places_nothing() {
        for strategy in [random(8), equal(16)] {
            let ring = build(&[], strategy);
            assert!(ring.is_empty());
            assert_eq!(ring.vnode_count(), 0);
            assert_eq!(ring.primary(Token(5)), None);
            assert!(ring.preference_list_for_key(b"k", 3).is_empty());
            assert_eq!(ring.walk(Token(0)).count(), 0);
            assert!(ring.ownership().is_empty());
            assert!(moves(&ring, &ring, 3).is_empty());
        }
    }

    #[test]
    fn single_node_owns_the_whole_ring() {
        for strategy in [random(4), equal(1), equal(16)] {
            let ring = build(&[(id("solo"), 3)], strategy);
            assert_eq!(ring.ranges_of(&id("solo")), vec![TokenRange::full()]);
            assert_eq!(
                ring.replica_ranges(&id("solo"), 3),
                vec![TokenRange::full()]
            );
            assert_eq!(ring.ownership()[&id("solo")], 1.0);
            assert_eq!(ring.preference_list(Token(0), 3), vec![id("solo")]);
            assert!(ring.ranges_of(&id("other")).is_empty());
        }
    }

    #[test]
    fn key_belongs_to_the_first_vnode_at_or_after_its_token() {
        // Dynamo §4.2: a key goes to "the first node with a position larger than the
        // item's position", i.e. the range (a, b] belongs to the node at b.
        let members = vec![(id("a"), 1), (id("b"), 1), (id("c"), 1)];
        let vnodes = vec![
            (Token(100), 0),
            (Token(200), 1),
            (Token(300), 2),
            (Token(400), 0),
        ];
        let ring = Ring::from_vnodes(0, random(2), members, Vec::new(), vnodes);
        assert_eq!(ring.primary(Token(100)), Some(&id("a")));
        assert_eq!(ring.primary(Token(101)), Some(&id("b")));
        assert_eq!(
            ring.preference_list(Token(150), 3),
            vec![id("b"), id("c"), id("a")]
        );
        // Past the last token the walk wraps round to the first.
        assert_eq!(ring.preference_list(Token(401), 2), vec![id("a"), id("b")]);
        assert_eq!(
            ring.preference_list(Token(350), 3),
            vec![id("a"), id("b"), id("c")]
        );
        assert_eq!(
            ring.ranges_of(&id("a")),
            vec![TokenRange::new(Token(300), Token(100))]
        );
        assert_eq!(
            ring.replica_ranges(&id("c"), 2),
            vec![TokenRange::new(Token(100), Token(300))]
        );
    }

    #[test]
    fn colliding_tokens_go_to_the_smaller_id() {
        let members = vec![(id("a"), 1), (id("b"), 1)];
        let one = vec![(Token(7), 1), (Token(7), 0), (Token(9), 1)];
        let other = vec![(Token(9), 1), (Token(7), 0), (Token(7), 1)];
        let ring = Ring::from_vnodes(0, random(2), members.clone(), Vec::new(), one);
        let again = Ring::from_vnodes(0, random(2), members, Vec::new(), other);
        assert_eq!(ring, again);
        assert_eq!(ring.vnode_count(), 2);
        assert_eq!(ring.primary(Token(7)), Some(&id("a")));
        assert_eq!(ring.primary(Token(8)), Some(&id("b")));
    }

    #[test]
    fn strategy_one_tokens_are_md5_of_id_and_index() {
        let ring = build(&[(id("a"), 2)], random(3));
        let expected: Vec<Token> = {
            let mut tokens: Vec<Token> = (0..6)
                .map(|i| Token::of(format!("a#{i}").as_bytes()))
                .collect();
            tokens.sort();
            tokens
        };
        let tokens: Vec<Token> = ring.vnodes().map(|(range, _)| range.end).collect();
        assert_eq!(tokens, expected);
    }

    #[test]
    fn bad_member_lists_are_rejected() {
        let both = [random(4), equal(4)];
        for strategy in both {
            assert_eq!(
                Ring::build(&[(id("a"), 1), (id("b"), 0)], strategy, 1, None),
                Err(RingError::ZeroWeight(id("b")))
            );
            assert_eq!(
                Ring::build(
                    &[(id("a"), 1), (id("b"), 1), (id("a"), 2)],
                    strategy,
                    1,
                    None
                ),
                Err(RingError::DuplicateNode(id("a")))
            );
        }
        let five: Vec<(NodeId, u32)> = (0..5).map(|i| (id(&format!("n{i}")), 1)).collect();
        assert_eq!(
            Ring::build(&five, equal(4), 1, None),
            Err(RingError::FewerPartitionsThanNodes { q: 4, nodes: 5 })
        );
        assert_eq!(
            Ring::build(&[(id("a"), 1025)], random(1024), 1, None),
            Err(RingError::TooManyVirtualNodes(1025 * 1024))
        );
        assert_eq!(
            Ring::build(
                &[(id("a"), 1)],
                PartitionStrategy::EqualPartitions { q: 0 },
                1,
                None
            ),
            Err(RingError::PartitionCount(0))
        );
    }

    #[test]
    fn rebuilding_from_the_same_members_moves_nothing() {
        let members = vec![(id("a"), 1), (id("b"), 2), (id("c"), 3)];
        let ring = build(&members, equal(96));
        let again = Ring::build(&members, equal(96), 2, Some(&ring)).unwrap();
        assert_eq!(again.assignment, ring.assignment);
        assert_eq!(again.epoch(), 2);
        assert!(moves(&ring, &again, 3).is_empty());
    }

    #[test]
    fn strategy_three_interleaves_owners() {
        // Dynamo §4.2: with virtual nodes a failed node's load spreads over many
        // nodes, which needs each node's partitions scattered, not in one block.
        let members: Vec<(NodeId, u32)> = (0..4).map(|i| (id(&format!("n{i}")), 1)).collect();
        let ring = build(&members, equal(64));
        for (node, _) in &members {
            assert!(ring.ranges_of(node).len() > 4, "{node} holds few blocks");
        }
    }

    #[test]
    fn changing_q_keeps_quotas_and_most_owners() {
        let members = vec![(id("a"), 1), (id("b"), 1), (id("c"), 2)];
        let small = build(&members, equal(64));
        let large = Ring::build(&members, equal(256), 2, Some(&small)).unwrap();
        assert_eq!(partition_counts(&large), quotas_of(&large));
        // Each new partition lies inside an old one; only rounding moves any.
        let kept = large
            .vnodes()
            .filter(|(range, owner)| small.primary(range.end) == Some(*owner))
            .count();
        assert_eq!(kept, 256);
    }

    #[test]
    fn wire_form_round_trips_and_rebuilds_the_tables() {
        for strategy in [random(16), equal(64)] {
            let ring = build(&[(id("a"), 1), (id("b"), 3)], strategy);
            let bytes = postcard::to_allocvec(&ring).unwrap();
            assert_eq!(postcard::from_bytes::<Ring>(&bytes).unwrap(), ring);
        }
        // The wire form carries no tokens: a 1,024-token ring stays small.
        let ring = build(&[(id("a"), 1), (id("b"), 3)], random(256));
        assert!(postcard::to_allocvec(&ring).unwrap().len() < 64);
    }

    /// Six nodes in three zones, two per zone.
    fn zoned_ring(strategy: PartitionStrategy) -> Ring {
        let members: Vec<(NodeId, u32)> = ["a1", "a2", "b1", "b2", "c1", "c2"]
            .iter()
            .map(|n| (id(n), 1))
            .collect();
        build(&members, strategy).zoned(|node| Some(node.as_str()[..1].to_owned()))
    }

    #[test]
    fn with_zones_every_preference_list_spans_distinct_zones() {
        for strategy in [random(16), equal(64)] {
            let ring = zoned_ring(strategy);
            assert_eq!(ring.zone_count(), 3);
            assert_eq!(ring.zone(&id("b2")), Some("b"));
            assert_eq!(ring.zone(&id("z9")), None);
            for key in 0..500u32 {
                let key = format!("key-{key}");
                let list = ring.preference_list_for_key(key.as_bytes(), 3);
                let mut zones: Vec<&str> = list.iter().map(|n| &n.as_str()[..1]).collect();
                zones.sort_unstable();
                assert_eq!(zones, ["a", "b", "c"], "{key}: {list:?}");
                // The primary (the coordinator) is still the key's first node clockwise.
                assert_eq!(Some(&list[0]), ring.primary(Token::of(key.as_bytes())));
                // Stand-ins after the home replicas: one more of each zone.
                let walk: Vec<&NodeId> = ring.walk(Token::of(key.as_bytes())).collect();
                assert_eq!(walk.len(), 6);
                let mut next: Vec<&str> = walk[3..].iter().map(|n| &n.as_str()[..1]).collect();
                next.sort_unstable();
                assert_eq!(next, ["a", "b", "c"]);
                // replica_ranges agrees with the preference lists.
                for node in &list {
                    let token = Token::of(key.as_bytes());
                    assert!(
                        ring.replica_ranges(node, 3)
                            .iter()
                            .any(|r| r.contains(token)),
                        "{node} holds {key}"
                    );
                }
            }
            // The wire form carries the zones.
            let bytes = postcard::to_allocvec(&ring).unwrap();
            assert_eq!(postcard::from_bytes::<Ring>(&bytes).unwrap(), ring);
        }
    }

    #[test]
    fn without_zones_or_with_one_the_walk_is_unchanged() {
        for strategy in [random(16), equal(64)] {
            let members: Vec<(NodeId, u32)> =
                ["a", "b", "c", "d"].iter().map(|n| (id(n), 1)).collect();
            let plain = build(&members, strategy);
            let one_zone = plain.clone().zoned(|_| Some("eu-west-1a"));
            let no_zone = plain.clone().zoned(|_| None::<&str>);
            assert_eq!(no_zone, plain);
            assert_eq!(one_zone.zone_count(), 1);
            for key in 0..200u32 {
                let token = Token::of(format!("k{key}").as_bytes());
                let expected: Vec<&NodeId> = plain.walk(token).collect();
                assert_eq!(one_zone.walk(token).collect::<Vec<_>>(), expected);
            }
        }
    }

    #[test]
    fn fewer_zones_than_replicas_spread_as_evenly_as_they_allow() {
        let members: Vec<(NodeId, u32)> = ["a1", "a2", "a3", "b1", "b2", "b3"]
            .iter()
            .map(|n| (id(n), 1))
            .collect();
        let ring = build(&members, equal(64)).zoned(|node| Some(node.as_str()[..1].to_owned()));
        for key in 0..300u32 {
            let list = ring.preference_list_for_key(format!("k{key}").as_bytes(), 5);
            let in_a = list.iter().filter(|n| n.as_str().starts_with('a')).count();
            assert!(in_a == 2 || in_a == 3, "{list:?}");
        }
    }

    #[test]
    fn moving_a_node_to_another_zone_is_a_ring_change_with_moves() {
        let ring = zoned_ring(equal(64));
        let members: Vec<(NodeId, u32)> = ring.members().map(|(n, w)| (n.clone(), w)).collect();
        let moved = build(&members, equal(64)).zoned(|node| {
            Some(if node.as_str() == "c2" {
                "a".to_owned()
            } else {
                node.as_str()[..1].to_owned()
            })
        });
        assert_ne!(moved, ring);
        assert!(!moves(&ring, &moved, 3).is_empty());
    }

    fn wire(ring: &Ring) -> RingWire {
        RingWire {
            epoch: ring.epoch,
            strategy: ring.strategy,
            members: ring.members.clone(),
            assignment: ring.assignment.clone(),
            zones: Vec::new(),
        }
    }

    #[test]
    fn inconsistent_wire_forms_are_rejected() {
        let ring = build(&[(id("a"), 1), (id("b"), 1)], equal(8));
        let decode = |wire: RingWire| {
            let bytes = postcard::to_allocvec(&RingWireRef {
                epoch: wire.epoch,
                strategy: wire.strategy,
                members: &wire.members,
                assignment: &wire.assignment,
                zones: wire.zones.iter().map(String::as_str).collect(),
            })
            .unwrap();
            postcard::from_bytes::<Ring>(&bytes)
        };
        assert!(decode(wire(&ring)).is_ok());

        let mut unbalanced = wire(&ring);
        unbalanced.assignment = vec![0, 0, 0, 0, 0, 1, 1, 1];
        assert!(decode(unbalanced).is_err());
        let mut unknown = wire(&ring);
        unknown.assignment[3] = 2;
        assert!(decode(unknown).is_err());
        let mut short = wire(&ring);
        short.assignment.pop();
        assert!(decode(short).is_err());
        let mut unsorted = wire(&ring);
        unsorted.members.reverse();
        assert!(decode(unsorted).is_err());
        let mut heavy = wire(&ring);
        heavy.members[0].1 = 0;
        assert!(decode(heavy).is_err());

        let tokens = build(&[(id("a"), 1)], random(2));
        let mut assigned = wire(&tokens);
        assigned.assignment = vec![0];
        assert!(decode(assigned).is_err());
        assert!(decode(wire(&tokens)).is_ok());
    }

    /// Parses `id:weight,...`.
    fn parse_members(text: &str) -> Vec<(NodeId, u32)> {
        text.split(',')
            .map(|pair| {
                let (name, weight) = pair.split_once(':').expect("member is id:weight");
                (id(name), weight.parse().expect("weight is a number"))
            })
            .collect()
    }

    fn parse_strategy(text: &str) -> PartitionStrategy {
        match text.split_once(' ') {
            Some(("tokens", t)) => random(t.parse().expect("token count")),
            Some(("partitions", q)) => equal(q.parse().expect("partition count")),
            _ => panic!("unknown strategy {text:?}"),
        }
    }

    #[test]
    fn placement_table() {
        // Hand-checked placements of small rings (Dynamo §4.2, §4.3); see the file.
        let table = include_str!("testdata/placement.txt");
        let mut cases = 0;
        for (number, line) in table.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let [members, strategy, key, n, expected] = fields[..] else {
                panic!("line {}: expected 5 fields", number + 1);
            };
            let ring = build(&parse_members(members), parse_strategy(strategy));
            let list = ring.preference_list_for_key(key.as_bytes(), n.parse().unwrap());
            let list: Vec<&str> = list.iter().map(NodeId::as_str).collect();
            let expected: Vec<&str> = expected.split(',').collect();
            assert_eq!(list, expected, "line {}: {line}", number + 1);
            cases += 1;
        }
        assert_eq!(cases, 27);
    }

    /// Up to `max` members named `n0`..`n31`, weights 1..=4.
    fn members(max: usize) -> impl Strategy<Value = Vec<(NodeId, u32)>> {
        prop::collection::btree_map(0u8..32, 1u32..=4, 1..=max).prop_map(|members| {
            members
                .into_iter()
                .map(|(i, weight)| (id(&format!("n{i}")), weight))
                .collect()
        })
    }

    fn strategies() -> impl Strategy<Value = PartitionStrategy> {
        prop_oneof![(1u32..=16).prop_map(random), (8u32..=128).prop_map(equal),]
    }

    /// A token near a vnode boundary half of the time, where off-by-one errors live.
    fn probe(ring: &Ring, pick: usize, offset: i8, uniform: u128) -> Token {
        if ring.tokens.is_empty() || pick % 2 == 0 {
            return Token(uniform);
        }
        let base = ring.tokens[pick % ring.tokens.len()].0;
        Token(base.wrapping_add_signed(i128::from(offset % 2)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn preference_lists_are_distinct_and_start_at_the_owner(
            members in members(8),
            strategy in strategies(),
            n in 0usize..10,
            tokens in prop::collection::vec(any::<u128>(), 8),
        ) {
            // Dynamo §4.3: the preference list holds N distinct physical nodes, and
            // its first node is the coordinator owning the key's range.
            let ring = build(&members, strategy);
            for t in tokens.into_iter().map(Token) {
                let list = ring.preference_list(t, n);
                prop_assert_eq!(list.len(), n.min(members.len()));
                prop_assert_eq!(set(list.clone()).windows(2).filter(|w| w[0] == w[1]).count(), 0);
                let full: Vec<NodeId> = ring.walk(t).cloned().collect();
                prop_assert_eq!(full.len(), members.len());
                prop_assert_eq!(&full[..list.len()], &list[..]);
                let primary = ring.primary(t).unwrap();
                prop_assert_eq!(&full[0], primary);
                prop_assert!(ring.ranges_of(primary).iter().any(|r| r.contains(t)));
            }
            // ranges_of gives maximal ranges: two of them never touch.
            for (node, _) in &members {
                let ranges = ring.ranges_of(node);
                for (i, r) in ranges.iter().enumerate() {
                    prop_assert!(ranges.len() == 1 || r.end != ranges[(i + 1) % ranges.len()].start);
                }
            }
        }

        #[test]
        fn building_ignores_member_order(
            members in members(8),
            strategy in strategies(),
            rotation in 0usize..8,
        ) {
            let ring = build(&members, strategy);
            let mut shuffled = members.clone();
            shuffled.reverse();
            shuffled.rotate_left(rotation % members.len());
            prop_assert_eq!(build(&shuffled, strategy), ring);
        }

        #[test]
        fn replica_ranges_hold_exactly_the_tokens_a_node_replicates(
            members in members(6),
            strategy in strategies(),
            n in 1usize..5,
            picks in prop::collection::vec((any::<usize>(), any::<i8>(), any::<u128>()), 16),
        ) {
            let ring = build(&members, strategy);
            let (node, _) = &members[picks[0].0 % members.len()];
            let ranges = ring.replica_ranges(node, n);
            let primary = ring.ranges_of(node);
            for (pick, offset, uniform) in picks {
                let t = probe(&ring, pick, offset, uniform);
                let list = ring.preference_list(t, n);
                prop_assert_eq!(ranges.iter().any(|r| r.contains(t)), list.contains(node));
                prop_assert_eq!(primary.iter().any(|r| r.contains(t)), &list[0] == node);
            }
        }

        #[test]
        fn ownership_sums_to_one(members in members(8), strategy in strategies()) {
            let total: f64 = build(&members, strategy).ownership().values().sum();
            prop_assert!((total - 1.0).abs() < 1e-9);
        }

        #[test]
        fn moves_are_exactly_the_changed_replica_sets(
            old_members in members(6),
            new_members in members(6),
            old_strategy in strategies(),
            new_strategy in strategies(),
            n in 1usize..4,
            picks in prop::collection::vec((any::<usize>(), any::<i8>(), any::<u128>(), any::<bool>()), 24),
        ) {
            let old = build(&old_members, old_strategy);
            let new = Ring::build(&new_members, new_strategy, 2, Some(&old)).unwrap();
            let moved = moves(&old, &new, n);
            for (pick, offset, uniform, from_new) in picks {
                let t = probe(if from_new { &new } else { &old }, pick, offset, uniform);
                let from = set(old.preference_list(t, n));
                let to = set(new.preference_list(t, n));
                let hits: Vec<&RangeMove> = moved.iter().filter(|m| m.range.contains(t)).collect();
                if from == to {
                    prop_assert!(hits.is_empty(), "{t:?} reported as moved");
                } else {
                    prop_assert_eq!(hits.len(), 1);
                    prop_assert_eq!(&hits[0].from, &from);
                    prop_assert_eq!(&hits[0].to, &to);
                }
            }
            // Maximal: touching moves, including the last and the first, never carry
            // the same sets.
            for (i, a) in moved.iter().enumerate() {
                let b = &moved[(i + 1) % moved.len()];
                if moved.len() > 1 && a.range.end == b.range.start {
                    prop_assert!((&a.from, &a.to) != (&b.from, &b.to));
                }
            }
        }

        #[test]
        fn random_tokens_are_stable_under_unrelated_joins(
            members in members(6),
            weight in 1u32..=4,
            tokens_per_weight in 1u32..=32,
            n in 1usize..5,
            tokens in prop::collection::vec(any::<u128>(), 32),
        ) {
            // Dynamo §4.2: a joining node takes ranges from its neighbours; every
            // other key keeps its place, and lists keep their relative order.
            let joiner = id("joiner");
            let strategy = random(tokens_per_weight);
            let old = build(&members, strategy);
            let mut joined = members.clone();
            joined.push((joiner.clone(), weight));
            let new = build(&joined, strategy);
            for t in tokens.into_iter().map(Token) {
                let old_walk: Vec<&NodeId> = old.walk(t).collect();
                let new_walk: Vec<&NodeId> = new.walk(t).filter(|&x| *x != joiner).collect();
                prop_assert_eq!(&old_walk, &new_walk);
                let old_list = old.preference_list(t, n);
                let new_list: Vec<NodeId> =
                    new.preference_list(t, n).into_iter().filter(|x| *x != joiner).collect();
                prop_assert!(new_list.len() + 1 >= old_list.len());
                prop_assert_eq!(&old_list[..new_list.len()], &new_list[..]);
            }
        }

        #[test]
        fn equal_partitions_move_only_what_quotas_demand(
            members in members(8),
            change in 0usize..3,
            pick in any::<usize>(),
            weight in 1u32..=4,
            q in 64u32..=256,
        ) {
            // Dynamo §6.2, strategy 3: a membership change moves partitions only to
            // or from the node whose share changed, plus rounding.
            let old = build(&members, equal(q));
            let mut changed = members.clone();
            let mut target_shift = 0;
            match change {
                0 => changed.push((id("joiner"), weight)),
                1 if members.len() > 1 => {
                    let (leaver, _) = changed.remove(pick % members.len());
                    target_shift = quotas_of(&old)[&leaver];
                }
                _ => changed[pick % members.len()].1 = weight,
            }
            let new = Ring::build(&changed, equal(q), 2, Some(&old)).unwrap();

            // Every partition has one owner, and owners hold exactly their quotas.
            prop_assert_eq!(new.assignment.len(), q as usize);
            prop_assert_eq!(partition_counts(&new), quotas_of(&new));

            // The fewest moves possible: every node keeps min(held, quota).
            let held = partition_counts(&old);
            let quotas = quotas_of(&new);
            let keepable: u32 = quotas
                .iter()
                .map(|(node, quota)| held.get(node).copied().unwrap_or(0).min(*quota))
                .sum();
            let moved = moved_partitions(&old, &new);
            prop_assert_eq!(moved as u32, q - keepable);

            // And few in absolute terms: the changed node's share, plus at most one
            // partition of rounding per node.
            if change == 0 {
                let total: u32 = changed.iter().map(|(_, w)| w).sum();
                target_shift = (q * weight).div_ceil(total);
            } else if change == 2 {
                let node = &changed[pick % members.len()].0;
                target_shift = quotas_of(&old)[node].abs_diff(quotas[node]);
            }
            prop_assert!(
                moved <= (target_shift as usize) + members.len(),
                "moved {} partitions, expected about {}", moved, target_shift
            );
        }

        #[test]
        fn equal_partitions_ownership_tracks_weight(members in members(8), q in 64u32..=512) {
            let ring = build(&members, equal(q));
            let total: u32 = members.iter().map(|(_, w)| w).sum();
            for (node, share) in ring.ownership() {
                let expected = f64::from(ring.weight(&node).unwrap()) / f64::from(total);
                prop_assert!((share - expected).abs() < 1.0 / f64::from(q) + 1e-9);
            }
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(ring) = postcard::from_bytes::<Ring>(&bytes) {
                prop_assert!(ring.vnode_count() as u64 <= MAX_VIRTUAL_NODES);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn random_token_ownership_tracks_weight(
            members in prop::collection::btree_map(0u8..32, 1u32..=3, 4..=6),
        ) {
            // Dynamo §6.2: with enough tokens per node, strategy 1 spreads load by
            // weight; 256 tokens per unit give a relative spread of about 6%.
            let members: Vec<(NodeId, u32)> =
                members.into_iter().map(|(i, w)| (id(&format!("n{i}")), w)).collect();
            let ring = build(&members, random(256));
            let total: u32 = members.iter().map(|(_, w)| w).sum();
            for (node, share) in ring.ownership() {
                let expected = f64::from(ring.weight(&node).unwrap()) / f64::from(total);
                prop_assert!((share / expected - 1.0).abs() < 0.3, "{node}: {share} vs {expected}");
            }
        }
    }
}
