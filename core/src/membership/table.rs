//! The member table: explicit membership changes and their gossip merge (Dynamo §4.8.1).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::DecodeError;
use super::limits::{MAX_ADDRESS_LEN, MAX_MEMBERS, MAX_WEIGHT, MAX_ZONE_LEN};
use crate::NodeId;

/// Where a member is in its life cycle.
///
/// `Joining -> Member -> Leaving -> Removed`, with `Joining -> Leaving` for a join that
/// is abandoned and `Removed -> Joining` for a node that comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Joined by an operator; owns ranges in the ring while it receives their data.
    Joining,
    /// Holds the data for its ranges.
    Member,
    /// Being decommissioned: out of the ring, handing its data to the new owners.
    Leaving,
    /// Gone. Kept as a tombstone so stale gossip cannot bring the member back.
    Removed,
}

impl MemberState {
    /// Whether members in this state take part in placement.
    ///
    /// Joining and Member do. A Leaving node does not: the ring computed from the table
    /// already sends its ranges to their new owners, while the node itself still holds
    /// its data and hands it off until it is marked Removed.
    pub fn in_ring(self) -> bool {
        matches!(self, MemberState::Joining | MemberState::Member)
    }

    /// Tie-break between equal versions: later life-cycle states win, so a removal
    /// made concurrently with another change at the same version is never lost.
    fn rank(self) -> u8 {
        match self {
            MemberState::Joining => 0,
            MemberState::Member => 1,
            MemberState::Leaving => 2,
            MemberState::Removed => 3,
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Joining => "joining",
            MemberState::Member => "member",
            MemberState::Leaving => "leaving",
            MemberState::Removed => "removed",
        })
    }
}

/// One node's entry in the member table.
///
/// Fields are checked on construction and deserialization, so a `Member` always has
/// valid addresses (`host:port`, printable ASCII, at most [`MAX_ADDRESS_LEN`] bytes) and
/// weights (target and settled) in `1..=`[`MAX_WEIGHT`].
///
/// # Two weights
///
/// `weight` is where placement is heading (the target ring); `settled_weight` is the
/// weight the node's data is laid out for (the settled ring, which reads use). They
/// differ only while a weight change is handed over: [`MemberTable::set_weight`] moves
/// the target weight, and the node itself, once every range it gains or loses is
/// copied, calls [`MemberTable::settle_weight`] (see the node's `transfer` module).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawMember")]
pub struct Member {
    id: NodeId,
    address: String,
    weight: u32,
    state: MemberState,
    version: u64,
    /// Where clients reach the node's `Kv` API; `None` until the node announces it
    /// (and in tables written by nodes that predate client addresses).
    client_address: Option<String>,
    /// The weight the node's data is laid out for (table format 3; equal to `weight`
    /// in older formats).
    settled_weight: u32,
    /// The node's failure domain (table format 4; `""`, no zone, in older formats).
    zone: String,
}

/// A member as it arrives off the wire, before its fields are checked. Same field
/// order as [`Member`], so the two share one encoding (table format 4).
#[derive(Deserialize)]
pub(super) struct RawMember {
    id: String,
    address: String,
    weight: u32,
    state: MemberState,
    version: u64,
    client_address: Option<String>,
    settled_weight: u32,
    zone: String,
}

/// A member in table format 3, written before members carried a zone.
#[derive(Deserialize)]
pub(super) struct RawMemberV3 {
    id: String,
    address: String,
    weight: u32,
    state: MemberState,
    version: u64,
    client_address: Option<String>,
    settled_weight: u32,
}

impl From<RawMemberV3> for RawMember {
    fn from(v3: RawMemberV3) -> Self {
        RawMember {
            id: v3.id,
            address: v3.address,
            weight: v3.weight,
            state: v3.state,
            version: v3.version,
            client_address: v3.client_address,
            settled_weight: v3.settled_weight,
            zone: String::new(),
        }
    }
}

/// A member in table format 2, written before members carried a settled weight.
#[derive(Deserialize)]
pub(super) struct RawMemberV2 {
    id: String,
    address: String,
    weight: u32,
    state: MemberState,
    version: u64,
    client_address: Option<String>,
}

impl From<RawMemberV2> for RawMember {
    fn from(v2: RawMemberV2) -> Self {
        RawMember {
            id: v2.id,
            address: v2.address,
            weight: v2.weight,
            state: v2.state,
            version: v2.version,
            client_address: v2.client_address,
            settled_weight: v2.weight,
            zone: String::new(),
        }
    }
}

/// A member in table format 1, written before members carried a client address.
#[derive(Deserialize)]
pub(super) struct RawMemberV1 {
    id: String,
    address: String,
    weight: u32,
    state: MemberState,
    version: u64,
}

impl From<RawMemberV1> for RawMember {
    fn from(v1: RawMemberV1) -> Self {
        RawMember {
            id: v1.id,
            address: v1.address,
            weight: v1.weight,
            state: v1.state,
            version: v1.version,
            client_address: None,
            settled_weight: v1.weight,
            zone: String::new(),
        }
    }
}

impl TryFrom<RawMember> for Member {
    type Error = DecodeError;

    fn try_from(raw: RawMember) -> Result<Self, DecodeError> {
        let id = NodeId::new(&raw.id)?;
        check_address(&raw.address).map_err(|reason| DecodeError::InvalidAddress {
            id: id.clone(),
            reason,
        })?;
        for weight in [raw.weight, raw.settled_weight] {
            if !weight_in_range(weight) {
                return Err(DecodeError::InvalidWeight { id, weight });
            }
        }
        if let Some(client_address) = &raw.client_address {
            check_address(client_address).map_err(|reason| DecodeError::InvalidAddress {
                id: id.clone(),
                reason,
            })?;
        }
        check_zone(&raw.zone).map_err(|reason| DecodeError::InvalidZone {
            id: id.clone(),
            reason,
        })?;
        Ok(Member {
            id,
            address: raw.address,
            weight: raw.weight,
            state: raw.state,
            version: raw.version,
            client_address: raw.client_address,
            settled_weight: raw.settled_weight,
            zone: raw.zone,
        })
    }
}

impl Member {
    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Where peers reach the node, `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The node's relative capacity, `1..=`[`MAX_WEIGHT`]: its weight in the target
    /// ring, where placement is heading.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The weight the node's data is laid out for: its weight in the settled ring,
    /// which reads use. Differs from [`weight`](Self::weight) only while a weight
    /// change is being handed over.
    pub fn settled_weight(&self) -> u32 {
        self.settled_weight
    }

    /// Whether a weight change of this member is still being handed over: a `Member`
    /// whose settled weight differs from its weight. (A joining or leaving node's
    /// transfer covers its weight as well; a removed node holds nothing.)
    pub fn is_reweighting(&self) -> bool {
        self.state == MemberState::Member && self.settled_weight != self.weight
    }

    /// Where the node is in its life cycle.
    pub fn state(&self) -> MemberState {
        self.state
    }

    /// How many changes this entry has seen; higher versions win merges.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Where clients reach the node's `Kv` API, `host:port`, once the node has
    /// announced it (see [`MemberTable::set_client_address`]).
    pub fn client_address(&self) -> Option<&str> {
        self.client_address.as_deref()
    }

    /// The node's failure domain (a data center, an availability zone), if it has one:
    /// a key's replicas spread over as many zones as there are (see [`crate::ring`]).
    pub fn zone(&self) -> Option<&str> {
        (!self.zone.is_empty()).then_some(self.zone.as_str())
    }

    /// The total order merge uses: version first, then contents, so two different
    /// entries with equal versions still have one winner whichever side merges.
    #[allow(clippy::type_complexity)]
    fn precedence(&self) -> (u64, u8, u32, u32, &str, Option<&str>, &str) {
        (
            self.version,
            self.state.rank(),
            self.weight,
            self.settled_weight,
            &self.address,
            self.client_address.as_deref(),
            &self.zone,
        )
    }
}

/// Why a membership operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The node is not in the table.
    #[error("{id} is not in the member table")]
    UnknownMember {
        /// The node asked about.
        id: NodeId,
    },
    /// `join` for a node that is already in the table and not removed.
    #[error("{id} has already joined and is {state}")]
    AlreadyJoined {
        /// The node asked about.
        id: NodeId,
        /// Its current state.
        state: MemberState,
    },
    /// The operation does not apply to the member's current state.
    #[error("cannot {operation} {id}: it is {state}")]
    InvalidTransition {
        /// The node asked about.
        id: NodeId,
        /// The refused operation, e.g. `"leave"`.
        operation: &'static str,
        /// Its current state.
        state: MemberState,
    },
    /// The address is not a valid `host:port`.
    #[error("invalid address: {reason}")]
    InvalidAddress {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The zone name is not a valid zone.
    #[error("invalid zone: {reason}")]
    InvalidZone {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The weight is outside `1..=MAX_WEIGHT`.
    #[error("weight {weight} is outside 1..={MAX_WEIGHT}")]
    InvalidWeight {
        /// The rejected weight.
        weight: u32,
    },
    /// The table already holds [`MAX_MEMBERS`] entries.
    #[error("member table is full ({MAX_MEMBERS} entries, tombstones included)")]
    TableFull,
    /// The member's version is at its maximum and cannot be bumped.
    #[error("the version of {id} cannot be bumped further")]
    VersionExhausted {
        /// The node asked about.
        id: NodeId,
    },
}

/// The cluster's membership: one [`Member`] per node ever joined, keyed by id.
///
/// Every node holds one. Changes are explicit operations, each bumping the changed
/// member's version by one over the version this table holds, and gossip spreads them
/// with [`merge`](Self::merge).
///
/// # Merge laws
///
/// Per member, merge keeps the entry that is greatest in the total order
/// `(version, state rank, weight, settled weight, address, client address)` with state rank
/// `Joining < Member < Leaving < Removed`; members only one side knows are copied.
/// This is a per-key maximum, so for all tables `a`, `b`, `c`:
///
/// * idempotent: `a ⊔ a = a`;
/// * commutative: `a ⊔ b = b ⊔ a`;
/// * associative: `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`;
///
/// hence any order or grouping of gossip converges to the same table. Merge never
/// removes an entry: a removed member stays as a `Removed` tombstone, and only a
/// `join` made after the removal (which has a higher version) brings it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberTable {
    pub(super) members: BTreeMap<NodeId, Member>,
}

impl MemberTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry for `id`, tombstones included.
    pub fn get(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// All entries in id order, tombstones included.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The nodes that take part in placement, with their weights, in id order: the
    /// Joining and Member ones (see [`MemberState::in_ring`]).
    pub fn ring_members(&self) -> Vec<(NodeId, u32)> {
        self.iter()
            .filter(|m| m.state.in_ring())
            .map(|m| (m.id.clone(), m.weight))
            .collect()
    }

    /// Merges gossip from a peer into this table (see the merge laws in the type doc).
    ///
    /// Returns whether this table changed, so the shell knows to persist it and to
    /// rebuild the ring.
    pub fn merge(&mut self, other: &MemberTable) -> bool {
        let mut changed = false;
        for theirs in other.iter() {
            match self.members.entry(theirs.id.clone()) {
                Entry::Vacant(slot) => {
                    slot.insert(theirs.clone());
                    changed = true;
                }
                Entry::Occupied(mut slot) => {
                    if theirs.precedence() > slot.get().precedence() {
                        slot.insert(theirs.clone());
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Adds a node as `Joining`, or brings a `Removed` one back as `Joining` with the
    /// next version.
    ///
    /// A node already in the table and not removed is refused rather than updated:
    /// changing its address or weight are separate, explicit operations.
    ///
    /// # Errors
    /// [`MembershipError::AlreadyJoined`] for a present, non-removed node;
    /// `InvalidAddress`, `InvalidWeight`, `TableFull` or `VersionExhausted` otherwise.
    pub fn join(
        &mut self,
        id: NodeId,
        address: &str,
        weight: u32,
    ) -> Result<Member, MembershipError> {
        self.join_in_zone(id, address, weight, "")
    }

    /// [`join`](Self::join) in `zone` (`""`: none).
    ///
    /// # Errors
    /// As [`join`](Self::join), and `InvalidZone`.
    pub fn join_in_zone(
        &mut self,
        id: NodeId,
        address: &str,
        weight: u32,
        zone: &str,
    ) -> Result<Member, MembershipError> {
        check_address(address).map_err(|reason| MembershipError::InvalidAddress { reason })?;
        check_weight(weight)?;
        check_zone(zone).map_err(|reason| MembershipError::InvalidZone { reason })?;
        let version = match self.members.get(&id) {
            None if self.members.len() >= MAX_MEMBERS => return Err(MembershipError::TableFull),
            None => 1,
            Some(current) if current.state == MemberState::Removed => next_version(current)?,
            Some(current) => {
                return Err(MembershipError::AlreadyJoined {
                    id,
                    state: current.state,
                });
            }
        };
        let member = Member {
            id: id.clone(),
            address: address.to_owned(),
            weight,
            state: MemberState::Joining,
            version,
            client_address: None,
            settled_weight: weight,
            zone: zone.to_owned(),
        };
        self.members.insert(id, member.clone());
        Ok(member)
    }

    /// `Joining -> Member`: the shell calls it once the node holds its ranges' data.
    /// The node then holds them for its (target) weight, which becomes its settled
    /// weight too.
    ///
    /// # Errors
    /// `UnknownMember`, `InvalidTransition` from any other state, `VersionExhausted`.
    pub fn mark_member(&mut self, id: &NodeId) -> Result<Member, MembershipError> {
        self.change(
            id,
            "mark as member",
            |s| s == MemberState::Joining,
            |m| {
                m.state = MemberState::Member;
                m.settled_weight = m.weight;
            },
        )
    }

    /// `Joining | Member -> Leaving`: starts decommissioning the node.
    ///
    /// # Errors
    /// `UnknownMember`, `InvalidTransition` from Leaving or Removed, `VersionExhausted`.
    pub fn leave(&mut self, id: &NodeId) -> Result<Member, MembershipError> {
        self.change(
            id,
            "leave",
            |s| matches!(s, MemberState::Joining | MemberState::Member),
            |m| m.state = MemberState::Leaving,
        )
    }

    /// `Leaving -> Removed`: the node has handed its data off. A removed node is in
    /// neither ring, so its settled weight is reset to its weight (a pending weight
    /// change has nothing left to hand over).
    ///
    /// # Errors
    /// `UnknownMember`, `InvalidTransition` from any other state, `VersionExhausted`.
    pub fn mark_removed(&mut self, id: &NodeId) -> Result<Member, MembershipError> {
        self.change(
            id,
            "remove",
            |s| s == MemberState::Leaving,
            |m| {
                m.state = MemberState::Removed;
                m.settled_weight = m.weight;
            },
        )
    }

    /// `Joining | Member | Leaving -> Removed` at once, without a hand-off: for a node
    /// that is gone for good. The shell checks it is unreachable first; its ranges'
    /// other replicas keep their copies.
    ///
    /// # Errors
    /// `UnknownMember`, `InvalidTransition` for a removed member, `VersionExhausted`.
    pub fn remove_dead(&mut self, id: &NodeId) -> Result<Member, MembershipError> {
        self.change(
            id,
            "remove",
            |s| s != MemberState::Removed,
            |m| {
                m.state = MemberState::Removed;
                m.settled_weight = m.weight;
            },
        )
    }

    /// Changes a non-removed member's (target) weight. The settled weight stays: the
    /// node's data is still laid out for it until the node hands the change over and
    /// calls [`settle_weight`](Self::settle_weight).
    ///
    /// # Errors
    /// `InvalidWeight`, `UnknownMember`, `InvalidTransition` for a removed member,
    /// `VersionExhausted`.
    pub fn set_weight(&mut self, id: &NodeId, weight: u32) -> Result<Member, MembershipError> {
        check_weight(weight)?;
        self.change(
            id,
            "set the weight of",
            |s| s != MemberState::Removed,
            |m| m.weight = weight,
        )
    }

    /// Ends a weight change's hand-over: a `Member`'s settled weight becomes its
    /// weight, so reads switch to the ring the data was copied for.
    ///
    /// `expected` is the weight the hand-over was planned for; if the weight changed
    /// since (a second change arrived mid-round), nothing changes and the caller
    /// re-plans. A member with no pending change is refused too, so a stale call
    /// cannot bump the version for nothing.
    ///
    /// # Errors
    /// `UnknownMember`; `InvalidTransition` for a member that is not a `Member`, or
    /// whose weight is not `expected` or already settled; `VersionExhausted`.
    pub fn settle_weight(&mut self, id: &NodeId, expected: u32) -> Result<Member, MembershipError> {
        let pending = self
            .members
            .get(id)
            .is_some_and(|m| m.weight == expected && m.settled_weight != m.weight);
        self.change(
            id,
            "settle the weight of",
            |s| s == MemberState::Member && pending,
            |m| m.settled_weight = m.weight,
        )
    }

    /// Changes a non-removed member's address (a Leaving node must stay reachable
    /// while it hands its data off).
    ///
    /// # Errors
    /// `InvalidAddress`, `UnknownMember`, `InvalidTransition` for a removed member,
    /// `VersionExhausted`.
    pub fn set_address(&mut self, id: &NodeId, address: &str) -> Result<Member, MembershipError> {
        check_address(address).map_err(|reason| MembershipError::InvalidAddress { reason })?;
        self.change(
            id,
            "set the address of",
            |s| s != MemberState::Removed,
            |m| address.clone_into(&mut m.address),
        )
    }

    /// Sets or changes a non-removed member's client address (where clients reach its
    /// `Kv` API). The node itself announces it; partition-aware clients route by it.
    ///
    /// # Errors
    /// `InvalidAddress`, `UnknownMember`, `InvalidTransition` for a removed member,
    /// `VersionExhausted`.
    pub fn set_client_address(
        &mut self,
        id: &NodeId,
        address: &str,
    ) -> Result<Member, MembershipError> {
        check_address(address).map_err(|reason| MembershipError::InvalidAddress { reason })?;
        self.change(
            id,
            "set the client address of",
            |s| s != MemberState::Removed,
            |m| m.client_address = Some(address.to_owned()),
        )
    }

    /// Sets the zone of a `Joining` node: the node announces its own `--zone` when an
    /// admin joined it without one. Only while joining, because the zone decides which
    /// nodes hold a key's replicas and a member's data is laid out already: changing a
    /// member's zone means leaving and joining again.
    ///
    /// # Errors
    /// `InvalidZone`, `UnknownMember`, `InvalidTransition` for any state but Joining,
    /// `VersionExhausted`.
    pub fn set_zone(&mut self, id: &NodeId, zone: &str) -> Result<Member, MembershipError> {
        check_zone(zone).map_err(|reason| MembershipError::InvalidZone { reason })?;
        self.change(
            id,
            "set the zone of",
            |s| s == MemberState::Joining,
            |m| zone.clone_into(&mut m.zone),
        )
    }

    /// Applies `edit` to member `id` if its state passes `allowed`, bumping its version.
    /// Leaves the table untouched on error.
    fn change(
        &mut self,
        id: &NodeId,
        operation: &'static str,
        allowed: impl Fn(MemberState) -> bool,
        edit: impl FnOnce(&mut Member),
    ) -> Result<Member, MembershipError> {
        let member = self
            .members
            .get_mut(id)
            .ok_or_else(|| MembershipError::UnknownMember { id: id.clone() })?;
        if !allowed(member.state) {
            return Err(MembershipError::InvalidTransition {
                id: id.clone(),
                operation,
                state: member.state,
            });
        }
        member.version = next_version(member)?;
        edit(member);
        Ok(member.clone())
    }
}

impl<'a> IntoIterator for &'a MemberTable {
    type Item = &'a Member;
    type IntoIter = std::collections::btree_map::Values<'a, NodeId, Member>;

    fn into_iter(self) -> Self::IntoIter {
        self.members.values()
    }
}

fn next_version(member: &Member) -> Result<u64, MembershipError> {
    member
        .version
        .checked_add(1)
        .ok_or_else(|| MembershipError::VersionExhausted {
            id: member.id.clone(),
        })
}

fn weight_in_range(weight: u32) -> bool {
    (1..=MAX_WEIGHT).contains(&weight)
}

fn check_weight(weight: u32) -> Result<(), MembershipError> {
    if weight_in_range(weight) {
        Ok(())
    } else {
        Err(MembershipError::InvalidWeight { weight })
    }
}

/// Checks a zone name (`""` is no zone): at most [`MAX_ZONE_LEN`] bytes of ASCII
/// letters, digits, `-`, `_` and `.` (a Kubernetes label value's characters).
pub fn check_zone(zone: &str) -> Result<(), &'static str> {
    if zone.len() > MAX_ZONE_LEN {
        return Err("longer than 63 bytes");
    }
    if !zone
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Checks that `address` looks like `host:port`; returns why not.
///
/// Only the shape is checked (the shell resolves the host): printable ASCII without
/// spaces, bounded, a non-empty host and a decimal port in `1..=65535`. The host is
/// everything before the last `:`, so `[::1]:7000` passes.
pub fn check_address(address: &str) -> Result<(), &'static str> {
    if address.len() > MAX_ADDRESS_LEN {
        return Err("longer than 256 bytes");
    }
    if !address.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("only printable ASCII without spaces is allowed");
    }
    let (host, port) = address.rsplit_once(':').ok_or("expected host:port")?;
    if host.is_empty() {
        return Err("the host is empty");
    }
    // `u16::from_str` also accepts a leading '+', which is not a port.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a decimal number");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port is outside 1..=65535"),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    /// A table where `n` has gone through join -> member -> leave -> removed.
    fn with_tombstone(n: &NodeId) -> MemberTable {
        let mut t = MemberTable::new();
        t.join(n.clone(), "n:1", 1).unwrap();
        t.mark_member(n).unwrap();
        t.leave(n).unwrap();
        t.mark_removed(n).unwrap();
        t
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        for ok in [
            "a:1",
            "dynamo-0.dynamo.default.svc:7000",
            "[::1]:65535",
            "10.0.0.1:80",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        let long = format!("{}:1", "h".repeat(MAX_ADDRESS_LEN));
        for bad in [
            "",
            "host",
            ":80",
            "host:",
            "host:0",
            "host:65536",
            "host:+80",
            "ho st:80",
            "hé:80",
            &long,
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn join_validates_address_and_weight() {
        let mut t = MemberTable::new();
        assert!(matches!(
            t.join(id("a"), "nope", 1),
            Err(MembershipError::InvalidAddress { .. })
        ));
        assert_eq!(
            t.join(id("a"), "a:1", 0),
            Err(MembershipError::InvalidWeight { weight: 0 })
        );
        assert_eq!(
            t.join(id("a"), "a:1", MAX_WEIGHT + 1),
            Err(MembershipError::InvalidWeight {
                weight: MAX_WEIGHT + 1
            })
        );
        assert!(t.is_empty());
        let joined = t.join(id("a"), "a:1", MAX_WEIGHT).unwrap();
        assert_eq!(
            (
                joined.state(),
                joined.version(),
                joined.weight(),
                joined.address()
            ),
            (MemberState::Joining, 1, MAX_WEIGHT, "a:1")
        );
        assert_eq!(t.get(&id("a")), Some(&joined));
    }

    #[test]
    fn a_dead_member_is_removed_from_any_active_state_and_can_join_again() {
        let mut t = MemberTable::new();
        for (name, steps) in [("j", 0), ("m", 1), ("l", 2)] {
            let n = id(name);
            t.join(n.clone(), &format!("{name}:1"), 2).unwrap();
            if steps >= 1 {
                t.mark_member(&n).unwrap();
            }
            if steps >= 2 {
                t.leave(&n).unwrap();
            }
            t.set_weight(&n, 5).unwrap();
            let before = t.get(&n).unwrap().version();
            let removed = t.remove_dead(&n).unwrap();
            assert_eq!(
                (removed.state(), removed.version(), removed.settled_weight()),
                (MemberState::Removed, before + 1, 5),
                "{name}"
            );
        }
        assert!(matches!(
            t.remove_dead(&id("m")),
            Err(MembershipError::InvalidTransition {
                state: MemberState::Removed,
                ..
            })
        ));
        assert!(matches!(
            t.remove_dead(&id("nobody")),
            Err(MembershipError::UnknownMember { .. })
        ));
        // A replacement under the same id joins with the next version.
        let again = t.join(id("m"), "m:2", 1).unwrap();
        assert_eq!(again.state(), MemberState::Joining);
    }

    /// Dynamo §4.8.1: membership changes are explicit; each one bumps the version.
    #[test]
    fn the_life_cycle_bumps_the_version_at_every_step() {
        let mut t = MemberTable::new();
        let n = id("n");
        assert_eq!(t.join(n.clone(), "n:1", 2).unwrap().version(), 1);
        assert_eq!(t.set_weight(&n, 3).unwrap().version(), 2);
        assert_eq!(t.mark_member(&n).unwrap().version(), 3);
        assert_eq!(t.set_address(&n, "n:2").unwrap().version(), 4);
        assert_eq!(t.leave(&n).unwrap().version(), 5);
        assert_eq!(t.set_weight(&n, 4).unwrap().version(), 6);
        let removed = t.mark_removed(&n).unwrap();
        assert_eq!(
            (
                removed.state(),
                removed.version(),
                removed.weight(),
                removed.address()
            ),
            (MemberState::Removed, 7, 4, "n:2")
        );
        let back = t.join(n.clone(), "n:3", 5).unwrap();
        assert_eq!((back.state(), back.version()), (MemberState::Joining, 8));
        assert_eq!(t.len(), 1);
    }

    /// A weight change moves the target weight only; the settled weight (the ring reads
    /// use) follows when the node settles it after the hand-over.
    #[test]
    fn set_weight_leaves_the_settled_weight_until_it_is_settled() {
        let mut t = MemberTable::new();
        let n = id("n");
        let joined = t.join(n.clone(), "n:1", 2).unwrap();
        assert_eq!((joined.weight(), joined.settled_weight()), (2, 2));
        t.mark_member(&n).unwrap();
        let changed = t.set_weight(&n, 5).unwrap();
        assert_eq!((changed.weight(), changed.settled_weight()), (5, 2));
        assert!(changed.is_reweighting());
        assert_eq!(t.ring_members(), vec![(n.clone(), 5)], "the target ring");
        // Settling for a weight other than the current one changes nothing: a second
        // change arrived, and the hand-over re-plans.
        assert!(matches!(
            t.settle_weight(&n, 2),
            Err(MembershipError::InvalidTransition { .. })
        ));
        let again = t.set_weight(&n, 7).unwrap();
        assert_eq!((again.weight(), again.settled_weight()), (7, 2));
        let settled = t.settle_weight(&n, 7).unwrap();
        assert_eq!(
            (
                settled.weight(),
                settled.settled_weight(),
                settled.version()
            ),
            (7, 7, 5)
        );
        assert!(!settled.is_reweighting());
        assert!(
            t.settle_weight(&n, 7).is_err(),
            "nothing pending: no version bump for nothing"
        );
        // A joining node takes its weight when it becomes a member; a removed one
        // holds nothing, so its pending change is dropped.
        let j = id("j");
        t.join(j.clone(), "j:1", 1).unwrap();
        let joining = t.set_weight(&j, 3).unwrap();
        assert_eq!(joining.settled_weight(), 1);
        assert!(!joining.is_reweighting(), "its join transfer covers it");
        assert_eq!(t.mark_member(&j).unwrap().settled_weight(), 3);
        t.set_weight(&j, 4).unwrap();
        let leaving = t.leave(&j).unwrap();
        assert_eq!((leaving.weight(), leaving.settled_weight()), (4, 3));
        assert!(!leaving.is_reweighting());
        assert_eq!(t.mark_removed(&j).unwrap().settled_weight(), 4);
    }

    #[test]
    fn invalid_transitions_name_the_current_state() {
        let mut t = MemberTable::new();
        let n = id("n");
        assert_eq!(
            t.leave(&n),
            Err(MembershipError::UnknownMember { id: n.clone() })
        );
        t.join(n.clone(), "n:1", 1).unwrap();
        let err = t.mark_removed(&n).unwrap_err();
        assert_eq!(err.to_string(), "cannot remove n: it is joining");
        let err = t.join(n.clone(), "n:1", 1).unwrap_err();
        assert_eq!(err.to_string(), "n has already joined and is joining");
        t.mark_member(&n).unwrap();
        assert!(matches!(
            t.mark_member(&n),
            Err(MembershipError::InvalidTransition {
                state: MemberState::Member,
                ..
            })
        ));
        t.leave(&n).unwrap();
        for result in [t.leave(&n), t.mark_member(&n), t.join(n.clone(), "n:1", 1)] {
            assert!(result.unwrap_err().to_string().contains("leaving"));
        }
        t.mark_removed(&n).unwrap();
        for result in [
            t.leave(&n),
            t.mark_member(&n),
            t.mark_removed(&n),
            t.set_weight(&n, 2),
            t.set_address(&n, "n:2"),
        ] {
            assert!(matches!(
                result,
                Err(MembershipError::InvalidTransition {
                    state: MemberState::Removed,
                    ..
                })
            ));
        }
        assert_eq!(
            t.get(&n).unwrap().version(),
            4,
            "refused operations change nothing"
        );
    }

    /// The client address is one more explicit, versioned change: absent until the node
    /// announces it, refused for tombstones and for bad addresses.
    #[test]
    fn the_client_address_is_announced_with_a_version_bump() {
        let mut t = MemberTable::new();
        let n = id("n");
        assert_eq!(t.join(n.clone(), "n:1", 1).unwrap().client_address(), None);
        let announced = t.set_client_address(&n, "n:2").unwrap();
        assert_eq!(
            (announced.client_address(), announced.version()),
            (Some("n:2"), 2)
        );
        assert!(matches!(
            t.set_client_address(&n, "no-port"),
            Err(MembershipError::InvalidAddress { .. })
        ));
        let mut stale = t.clone();
        t.set_client_address(&n, "n:3").unwrap();
        assert!(stale.merge(&t), "the newer address wins the merge");
        assert_eq!(stale.get(&n).unwrap().client_address(), Some("n:3"));
        t.leave(&n).unwrap();
        t.mark_removed(&n).unwrap();
        assert!(matches!(
            t.set_client_address(&n, "n:4"),
            Err(MembershipError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn a_zone_is_set_at_join_or_while_joining_and_checked() {
        let mut t = MemberTable::new();
        let joined = t.join_in_zone(id("a"), "a:1", 1, "eu-west-1a").unwrap();
        assert_eq!(joined.zone(), Some("eu-west-1a"));
        t.join(id("b"), "b:1", 1).unwrap();
        assert_eq!(t.get(&id("b")).unwrap().zone(), None);
        let announced = t.set_zone(&id("b"), "eu-west-1b").unwrap();
        assert_eq!(
            (announced.zone(), announced.version()),
            (Some("eu-west-1b"), 2)
        );
        for bad in ["a b", "zone/1", &"z".repeat(64)] {
            assert!(matches!(
                t.set_zone(&id("b"), bad),
                Err(MembershipError::InvalidZone { .. })
            ));
            assert!(matches!(
                t.join_in_zone(id("c"), "c:1", 1, bad),
                Err(MembershipError::InvalidZone { .. })
            ));
        }
        // A member's data is laid out for its zone: no change once it is a member.
        t.mark_member(&id("b")).unwrap();
        assert!(matches!(
            t.set_zone(&id("b"), "eu-west-1c"),
            Err(MembershipError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn a_joining_node_may_be_abandoned() {
        let mut t = MemberTable::new();
        t.join(id("n"), "n:1", 1).unwrap();
        assert_eq!(t.leave(&id("n")).unwrap().state(), MemberState::Leaving);
    }

    #[test]
    fn exhausted_versions_are_an_error_not_an_overflow() {
        let mut t = MemberTable::new();
        let n = id("n");
        t.join(n.clone(), "n:1", 1).unwrap();
        t.members.get_mut(&n).unwrap().version = u64::MAX;
        assert_eq!(
            t.mark_member(&n),
            Err(MembershipError::VersionExhausted { id: n.clone() })
        );
        assert_eq!(t.get(&n).unwrap().state(), MemberState::Joining);
    }

    #[test]
    fn join_refuses_a_new_member_beyond_the_limit() {
        let mut t = MemberTable::new();
        for i in 0..MAX_MEMBERS {
            t.join(id(&format!("n{i}")), "n:1", 1).unwrap();
        }
        assert_eq!(
            t.join(id("one-more"), "n:1", 1),
            Err(MembershipError::TableFull)
        );
        t.leave(&id("n0")).unwrap();
        t.mark_removed(&id("n0")).unwrap();
        assert!(
            t.join(id("n0"), "n:1", 1).is_ok(),
            "a tombstone's slot is reused"
        );
    }

    /// Leaving nodes are out of the new placement; Joining ones are in it.
    #[test]
    fn ring_members_are_the_joining_and_member_nodes() {
        let mut t = MemberTable::new();
        for (name, weight) in [("d", 4), ("c", 3), ("b", 2), ("a", 1)] {
            t.join(id(name), "h:1", weight).unwrap();
        }
        t.mark_member(&id("a")).unwrap();
        t.leave(&id("c")).unwrap();
        t.leave(&id("d")).unwrap();
        t.mark_removed(&id("d")).unwrap();
        assert_eq!(t.ring_members(), vec![(id("a"), 1), (id("b"), 2)]);
        let order: Vec<_> = (&t).into_iter().map(|m| m.id().as_str()).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }

    /// Dynamo §4.8.1: a removal must not be undone by a node that has not heard of it.
    #[test]
    fn stale_gossip_does_not_resurrect_a_removed_member() {
        let n = id("n");
        let mut stale = MemberTable::new();
        stale.join(n.clone(), "n:1", 1).unwrap();
        stale.mark_member(&n).unwrap();

        let mut current = with_tombstone(&n);
        assert!(!current.merge(&stale));
        assert_eq!(current.get(&n).unwrap().state(), MemberState::Removed);
        assert!(stale.merge(&current));
        assert_eq!(stale.get(&n).unwrap().state(), MemberState::Removed);
        assert!(stale.ring_members().is_empty());
    }

    #[test]
    fn an_explicit_rejoin_outranks_the_tombstone() {
        let n = id("n");
        let tombstone = with_tombstone(&n);
        let mut rejoined = tombstone.clone();
        rejoined.join(n.clone(), "n:9", 2).unwrap();

        let mut elsewhere = tombstone.clone();
        assert!(elsewhere.merge(&rejoined));
        assert_eq!(elsewhere, rejoined);
        assert_eq!(elsewhere.ring_members(), vec![(n.clone(), 2)]);
        assert!(!rejoined.merge(&tombstone));
    }

    /// Two operators change the same member at the same version on different nodes:
    /// both sides settle on the same winner, and a removal wins.
    #[test]
    fn equal_versions_resolve_the_same_way_on_both_sides() {
        let n = id("n");
        let mut base = MemberTable::new();
        base.join(n.clone(), "n:1", 1).unwrap();
        base.mark_member(&n).unwrap();
        base.leave(&n).unwrap();
        let mut removed = base.clone();
        removed.mark_removed(&n).unwrap();
        let mut reweighted = base.clone();
        reweighted.set_weight(&n, 7).unwrap();

        let mut left = removed.clone();
        left.merge(&reweighted);
        let mut right = reweighted.clone();
        right.merge(&removed);
        assert_eq!(left, right);
        assert_eq!(left.get(&n).unwrap().state(), MemberState::Removed);
    }

    /// An operation on one of a few tables, or gossip between two of them.
    #[derive(Debug, Clone)]
    pub(crate) enum Op {
        Join(usize, usize, u32, u8),
        MarkMember(usize, usize),
        Leave(usize, usize),
        Remove(usize, usize),
        SetWeight(usize, usize, u32),
        SettleWeight(usize, usize, u32),
        SetAddress(usize, usize, u8),
        SetClientAddress(usize, usize, u8),
        SetZone(usize, usize, u8),
        Gossip(usize, usize),
    }

    pub(crate) const NAMES: [&str; 4] = ["a", "b", "c", "d"];

    pub(crate) fn op(tables: usize) -> impl Strategy<Value = Op> {
        let t = 0..tables;
        let n = 0..NAMES.len();
        let w = 1..=4u32;
        prop_oneof![
            (t.clone(), n.clone(), w.clone(), 0..3u8).prop_map(|(t, n, w, p)| Op::Join(t, n, w, p)),
            (t.clone(), n.clone()).prop_map(|(t, n)| Op::MarkMember(t, n)),
            (t.clone(), n.clone()).prop_map(|(t, n)| Op::Leave(t, n)),
            (t.clone(), n.clone()).prop_map(|(t, n)| Op::Remove(t, n)),
            (t.clone(), n.clone(), w.clone()).prop_map(|(t, n, w)| Op::SetWeight(t, n, w)),
            (t.clone(), n.clone(), w).prop_map(|(t, n, w)| Op::SettleWeight(t, n, w)),
            (t.clone(), n.clone(), 0..3u8).prop_map(|(t, n, p)| Op::SetAddress(t, n, p)),
            (t.clone(), n.clone(), 0..3u8).prop_map(|(t, n, p)| Op::SetClientAddress(t, n, p)),
            (t.clone(), n.clone(), 0..3u8).prop_map(|(t, n, p)| Op::SetZone(t, n, p)),
            (t.clone(), t).prop_map(|(a, b)| Op::Gossip(a, b)),
        ]
    }

    /// Applies `op` to one table; returns the operation's result (`None` for gossip).
    pub(crate) fn apply(
        tables: &mut [MemberTable],
        op: &Op,
    ) -> Option<Result<Member, MembershipError>> {
        let addr = |p: u8| format!("host{p}:7000");
        Some(match *op {
            Op::Join(t, n, w, p) => tables[t].join(id(NAMES[n]), &addr(p), w),
            Op::MarkMember(t, n) => tables[t].mark_member(&id(NAMES[n])),
            Op::Leave(t, n) => tables[t].leave(&id(NAMES[n])),
            Op::Remove(t, n) => tables[t].mark_removed(&id(NAMES[n])),
            Op::SetWeight(t, n, w) => tables[t].set_weight(&id(NAMES[n]), w),
            Op::SettleWeight(t, n, w) => tables[t].settle_weight(&id(NAMES[n]), w),
            Op::SetAddress(t, n, p) => tables[t].set_address(&id(NAMES[n]), &addr(p)),
            Op::SetClientAddress(t, n, p) => {
                tables[t].set_client_address(&id(NAMES[n]), &format!("client{p}:7000"))
            }
            // Zone 0 is "no zone".
            Op::SetZone(t, n, p) => {
                let zone = if p == 0 {
                    String::new()
                } else {
                    format!("zone-{p}")
                };
                tables[t].set_zone(&id(NAMES[n]), &zone)
            }
            Op::Gossip(from, to) => {
                let gossip = tables[from].clone();
                tables[to].merge(&gossip);
                return None;
            }
        })
    }

    /// Tables produced by random operations at random nodes, with gossip between.
    pub(crate) fn tables(count: usize) -> impl Strategy<Value = Vec<MemberTable>> {
        proptest::collection::vec(op(count), 0..40).prop_map(move |ops| {
            let mut tables = vec![MemberTable::new(); count];
            for op in &ops {
                let _ = apply(&mut tables, op);
            }
            tables
        })
    }

    fn merged(a: &MemberTable, b: &MemberTable) -> MemberTable {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    fn merge_all<'a>(tables: impl IntoIterator<Item = &'a MemberTable>) -> MemberTable {
        tables
            .into_iter()
            .fold(MemberTable::new(), |acc, t| merged(&acc, t))
    }

    /// Merges neighbours pairwise until one table is left: a different grouping.
    fn merge_as_tree(mut tables: Vec<MemberTable>) -> MemberTable {
        while tables.len() > 1 {
            tables = tables
                .chunks(2)
                .map(|pair| {
                    pair.iter()
                        .fold(MemberTable::new(), |acc, t| merged(&acc, t))
                })
                .collect();
        }
        tables.pop().unwrap_or_default()
    }

    proptest! {
        #[test]
        fn merge_is_idempotent_commutative_and_associative(ts in tables(3)) {
            let (a, b, c) = (&ts[0], &ts[1], &ts[2]);
            prop_assert_eq!(&merged(a, a), a);
            prop_assert_eq!(merged(a, b), merged(b, a));
            prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
        }

        /// Dynamo §4.8.1: gossip leads to an eventually consistent view, whatever
        /// order and grouping the tables meet in.
        #[test]
        fn gossip_converges_in_any_order(
            (ts, shuffled) in tables(5).prop_flat_map(|ts| {
                let shuffled = Just(ts.clone()).prop_shuffle();
                (Just(ts), shuffled)
            })
        ) {
            let expected = merge_all(&ts);
            prop_assert_eq!(&merge_all(&shuffled), &expected);
            prop_assert_eq!(&merge_all(shuffled.iter().rev()), &expected);
            prop_assert_eq!(&merge_as_tree(shuffled.clone()), &expected);
            for t in &ts {
                prop_assert_eq!(&merged(t, &expected), &expected);
            }
        }

        #[test]
        fn merge_reports_exactly_whether_the_table_changed(ts in tables(2)) {
            let mut a = ts[0].clone();
            let changed = a.merge(&ts[1]);
            prop_assert_eq!(changed, a != ts[0]);
            prop_assert!(!a.merge(&ts[1]), "a second merge of the same gossip is a no-op");
        }

        /// Merge only picks among the entries it is given, never below either side.
        #[test]
        fn merge_keeps_the_greater_entry_of_each_member(ts in tables(2)) {
            let out = merged(&ts[0], &ts[1]);
            for member in &out {
                let sides = [ts[0].get(member.id()), ts[1].get(member.id())];
                prop_assert!(sides.contains(&Some(member)));
                for side in sides.into_iter().flatten() {
                    prop_assert!(side.precedence() <= member.precedence());
                }
            }
            prop_assert_eq!(out.len(), ts[0].iter().chain(&ts[1]).map(Member::id)
                .collect::<std::collections::BTreeSet<_>>().len());
        }

        /// Every operation either bumps exactly its member's version by one or fails
        /// and changes nothing.
        #[test]
        fn operations_bump_one_version_or_change_nothing(ops in proptest::collection::vec(op(1), 0..60)) {
            let mut tables = vec![MemberTable::new()];
            for op in &ops {
                let before = tables[0].clone();
                match apply(&mut tables, op) {
                    None => {}
                    Some(Err(_)) => prop_assert_eq!(&tables[0], &before),
                    Some(Ok(member)) => {
                        let old = before.get(member.id()).map_or(0, Member::version);
                        prop_assert_eq!(member.version(), old + 1);
                        prop_assert_eq!(tables[0].get(member.id()), Some(&member));
                        prop_assert_eq!(tables[0].len() - before.len(), usize::from(old == 0));
                        for other in &before {
                            if other.id() != member.id() {
                                prop_assert_eq!(tables[0].get(other.id()), Some(other));
                            }
                        }
                    }
                }
            }
        }
    }
}
