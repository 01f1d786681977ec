//! The client's routing table: which nodes hold a key, from a node's `Kv.Topology`
//! answer. No I/O.
//!
//! The table is the ring as the node sent it (virtual node tokens in order and their
//! owners), so the client never re-derives placement: a key's preference list is the
//! first N distinct owners walking clockwise from the first virtual node at or after
//! the key's token (Dynamo §4.2, §4.3), exactly as [`Ring::preference_list`] walks.
//!
//! [`RoutingTable::from_topology`] treats the answer as hostile: every count is bounded
//! and every index checked, so a broken or malicious node cannot make the client panic
//! or allocate without bound.
//!
//! [`Ring::preference_list`]: dynamo_core::ring::Ring::preference_list

use std::fmt;

use dynamo_core::limits::MAX_REPLICATION_FACTOR;
use dynamo_core::membership::{MAX_ADDRESS_LEN, MAX_MEMBERS, check_address};
use dynamo_core::node_id::MAX_NODE_ID_LEN;
use dynamo_core::ring::{MAX_VIRTUAL_NODES, Token, ZoneInterleave};
use dynamo_proto::{self as proto, TopologyResponse};

/// The longest topology version accepted: nodes send a 32-character hex digest.
pub const MAX_VERSION_LEN: usize = 64;

/// Why a topology answer cannot be used for routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The answer says the client's version is current, so there is nothing to build.
    #[error("the topology is unchanged")]
    Unchanged,
    /// The version is empty or longer than [`MAX_VERSION_LEN`].
    #[error("topology version of {len} bytes (expected 1..={MAX_VERSION_LEN})")]
    BadVersion {
        /// Its length.
        len: usize,
    },
    /// More than [`MAX_MEMBERS`] members.
    #[error("topology has {count} members, the limit is {MAX_MEMBERS}")]
    TooManyMembers {
        /// How many the answer listed.
        count: usize,
    },
    /// More than [`MAX_VIRTUAL_NODES`] virtual nodes.
    #[error("topology has {count} virtual nodes, the limit is {MAX_VIRTUAL_NODES}")]
    TooManyVirtualNodes {
        /// How many the answer listed.
        count: usize,
    },
    /// N is outside `1..=`[`MAX_REPLICATION_FACTOR`].
    #[error("replication factor {n} is outside 1..={MAX_REPLICATION_FACTOR}")]
    BadReplicationFactor {
        /// The factor sent.
        n: u32,
    },
    /// R is larger than N.
    #[error("read quorum {r} is larger than the replication factor {n}")]
    BadReadQuorum {
        /// The read quorum sent.
        r: u32,
        /// The replication factor sent.
        n: u32,
    },
    /// A structural problem: token bytes not a multiple of 16 or not matching the
    /// owners, tokens out of order, an owner index out of range, a bad member field.
    #[error("malformed topology: {0}")]
    Malformed(String),
}

/// One member as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteNode {
    /// The node's id.
    pub id: String,
    /// Where its `Kv` API listens, if the node has announced it.
    pub client_address: Option<String>,
    /// Its life-cycle state.
    pub state: proto::MemberState,
    /// Whether the node that answered considered it reachable.
    pub reachable: bool,
}

/// Where requests for each key go: the members, the ring's virtual nodes, and N.
#[derive(Clone, PartialEq, Eq)]
pub struct RoutingTable {
    version: String,
    n: usize,
    members: Vec<RouteNode>,
    /// Sorted, distinct ring positions; `owners[i]` owns `(tokens[i - 1], tokens[i]]`.
    tokens: Vec<u128>,
    owners: Vec<u32>,
    partitioning: String,
    /// The node's default R, when it serves replica-local reads (`Kv.GetLocal`).
    read_quorum: Option<usize>,
    /// Each member's zone, as an index into the distinct zone names; preference lists
    /// interleave by zone when the owners are in more than one (as the nodes' do).
    zones: Vec<u32>,
    zone_names: usize,
    /// How many distinct zones own virtual nodes.
    placed_zones: usize,
    /// The cluster reconciles last-write-wins (reads show the latest version only).
    last_write_wins: bool,
}

impl fmt::Debug for RoutingTable {
    // The token list can be a million entries long.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingTable")
            .field("version", &self.version)
            .field("n", &self.n)
            .field("members", &self.members)
            .field("vnodes", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// The answer's version, member count, N and R, within their bounds.
fn check_header(answer: &TopologyResponse) -> Result<(), TopologyError> {
    if answer.unchanged {
        return Err(TopologyError::Unchanged);
    }
    if answer.version.is_empty() || answer.version.len() > MAX_VERSION_LEN {
        return Err(TopologyError::BadVersion {
            len: answer.version.len(),
        });
    }
    if answer.members.len() > MAX_MEMBERS {
        return Err(TopologyError::TooManyMembers {
            count: answer.members.len(),
        });
    }
    let n = answer.replication_factor;
    if n == 0 || n > MAX_REPLICATION_FACTOR {
        return Err(TopologyError::BadReplicationFactor { n });
    }
    if answer.read_quorum > n {
        return Err(TopologyError::BadReadQuorum {
            r: answer.read_quorum,
            n,
        });
    }
    Ok(())
}

/// The virtual nodes' tokens, checked: as many as owners, strictly increasing, each
/// owned by a member.
fn ring_tokens(answer: &TopologyResponse) -> Result<Vec<u128>, TopologyError> {
    let count = answer.vnode_owners.len();
    if count as u64 > MAX_VIRTUAL_NODES {
        return Err(TopologyError::TooManyVirtualNodes { count });
    }
    if answer.vnode_tokens.len() != count * 16 {
        return Err(TopologyError::Malformed(format!(
            "{} token bytes for {count} virtual nodes",
            answer.vnode_tokens.len()
        )));
    }
    let tokens: Vec<u128> = answer
        .vnode_tokens
        .chunks_exact(16)
        .map(|chunk| {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(chunk);
            u128::from_be_bytes(bytes)
        })
        .collect();
    if tokens.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(TopologyError::Malformed(
            "virtual node tokens are not strictly increasing".into(),
        ));
    }
    if let Some(bad) = answer
        .vnode_owners
        .iter()
        .find(|&&owner| owner as usize >= answer.members.len())
    {
        return Err(TopologyError::Malformed(format!(
            "virtual node owner {bad} is not one of the {} members",
            answer.members.len()
        )));
    }
    Ok(tokens)
}

/// The members' zones as indexes into their sorted distinct names, how many names
/// there are, and how many of them own a virtual node.
struct Zoning {
    zones: Vec<u32>,
    names: usize,
    placed: usize,
}

impl Zoning {
    /// Expects the owners checked ([`ring_tokens`]).
    fn of(answer: &TopologyResponse) -> Result<Self, TopologyError> {
        let mut names: Vec<&str> = answer.members.iter().map(|m| m.zone.as_str()).collect();
        if let Some(bad) = names
            .iter()
            .find(|zone| dynamo_core::membership::check_zone(zone).is_err())
        {
            return Err(TopologyError::Malformed(format!(
                "zone {bad:?} is not a zone name"
            )));
        }
        names.sort_unstable();
        names.dedup();
        let zones: Vec<u32> = answer
            .members
            .iter()
            .map(|m| {
                let index = names.binary_search(&m.zone.as_str()).unwrap_or(0);
                u32::try_from(index).unwrap_or(0)
            })
            .collect();
        let mut placed = vec![false; names.len()];
        for &owner in &answer.vnode_owners {
            placed[zones[owner as usize] as usize] = true;
        }
        Ok(Self {
            placed: placed.iter().filter(|&&p| p).count(),
            names: names.len(),
            zones,
        })
    }
}

impl RoutingTable {
    /// Builds the table from a `Kv.Topology` answer, checking every bound.
    ///
    /// # Errors
    /// [`TopologyError::Unchanged`] for an `unchanged` answer; the other variants for
    /// input that breaks a bound or does not describe a ring.
    pub fn from_topology(answer: TopologyResponse) -> Result<Self, TopologyError> {
        check_header(&answer)?;
        let tokens = ring_tokens(&answer)?;
        let zoning = Zoning::of(&answer)?;
        let members = answer
            .members
            .into_iter()
            .map(route_node)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            last_write_wins: answer.last_write_wins,
            zones: zoning.zones,
            zone_names: zoning.names,
            placed_zones: zoning.placed,
            version: answer.version,
            n: answer.replication_factor as usize,
            members,
            tokens,
            owners: answer.vnode_owners,
            partitioning: answer.partitioning.chars().take(32).collect(),
            // 0: a node that predates `Kv.GetLocal`.
            read_quorum: (answer.read_quorum > 0).then_some(answer.read_quorum as usize),
        })
    }

    /// The version the node gave this topology; compared with the `dynamo-topology`
    /// header of later answers to notice changes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Replicas per key.
    pub fn replication_factor(&self) -> usize {
        self.n
    }

    /// The members (not removed), in id order.
    pub fn members(&self) -> &[RouteNode] {
        &self.members
    }

    /// The number of virtual nodes.
    pub fn vnode_count(&self) -> usize {
        self.tokens.len()
    }

    /// The partitioning strategy's name, as the node reported it.
    pub fn partitioning(&self) -> &str {
        &self.partitioning
    }

    /// The nodes' default read quorum R, if they serve replica-local reads (a
    /// client-coordinated get reads this many replicas); `None` from older nodes.
    pub fn read_quorum(&self) -> Option<usize> {
        self.read_quorum
    }

    /// Whether the cluster reconciles last-write-wins.
    pub fn last_write_wins(&self) -> bool {
        self.last_write_wins
    }

    /// Whether the table can route: it has virtual nodes.
    pub fn is_routable(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The key's preference list: its first N distinct owners clockwise from the key's
    /// token (Dynamo §4.3), as indices into [`members`](Self::members), coordinator
    /// first. Empty when the ring is.
    pub fn preference_list(&self, key: &[u8]) -> Vec<usize> {
        self.preference_list_at(Token::of(key))
    }

    /// [`preference_list`](Self::preference_list) for a ring position.
    pub fn preference_list_at(&self, token: Token) -> Vec<usize> {
        if self.tokens.is_empty() {
            return Vec::new();
        }
        let start = self.tokens.partition_point(|t| *t < token.0);
        let start = if start == self.tokens.len() { 0 } else { start };
        let mut seen = vec![false; self.members.len()];
        let walk = (0..self.tokens.len()).filter_map(move |step| {
            let owner = self.owners[(start + step) % self.tokens.len()];
            let fresh = !std::mem::replace(&mut seen[owner as usize], true);
            fresh.then_some(owner)
        });
        if self.placed_zones > 1 {
            ZoneInterleave::new(walk, self.zones.clone(), self.zone_names, self.placed_zones)
                .take(self.n)
                .map(|owner| owner as usize)
                .collect()
        } else {
            walk.take(self.n).map(|owner| owner as usize).collect()
        }
    }
}

fn route_node(member: proto::TopologyMember) -> Result<RouteNode, TopologyError> {
    if member.node_id.is_empty() || member.node_id.len() > MAX_NODE_ID_LEN {
        return Err(TopologyError::Malformed(format!(
            "member id of {} bytes",
            member.node_id.len()
        )));
    }
    let client_address = if member.client_address.is_empty() {
        None
    } else {
        check_address(&member.client_address).map_err(|reason| {
            TopologyError::Malformed(format!(
                "client address of {} ({} bytes at most): {reason}",
                member.node_id, MAX_ADDRESS_LEN
            ))
        })?;
        Some(member.client_address)
    };
    Ok(RouteNode {
        id: member.node_id,
        client_address,
        state: proto::MemberState::try_from(member.state)
            .unwrap_or(proto::MemberState::Unspecified),
        reachable: member.reachable,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use dynamo_core::NodeId;
    use dynamo_core::ring::{PartitionStrategy, Ring};

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    /// What a node sends for `ring`: members in id order, each with a client address.
    fn topology_of(ring: &Ring, n: u32) -> TopologyResponse {
        let members: Vec<NodeId> = ring.members().map(|(id, _)| id.clone()).collect();
        let mut tokens = Vec::new();
        let mut owners = Vec::new();
        for (range, owner) in ring.vnodes() {
            tokens.extend_from_slice(&range.end.0.to_be_bytes());
            owners.push(members.iter().position(|m| m == owner).unwrap() as u32);
        }
        TopologyResponse {
            version: "v1".into(),
            unchanged: false,
            members: members
                .iter()
                .map(|m| proto::TopologyMember {
                    node_id: m.to_string(),
                    client_address: format!("{m}:7000"),
                    state: proto::MemberState::Member as i32,
                    reachable: true,
                    zone: ring.zone(m).unwrap_or_default().to_owned(),
                })
                .collect(),
            replication_factor: n,
            vnode_tokens: tokens.into(),
            vnode_owners: owners,
            partitioning: "test".into(),
            read_quorum: n.min(2),
            last_write_wins: false,
        }
    }

    fn names(table: &RoutingTable, list: &[usize]) -> Vec<String> {
        list.iter()
            .map(|&i| table.members()[i].id.clone())
            .collect()
    }

    /// The client's N=3 preference list of `keys` sampled keys is the ring's.
    fn assert_lists_match(ring: &Ring, table: &RoutingTable, keys: u32) {
        for key in 0..keys {
            let key = format!("key-{key}");
            let expected: Vec<String> = ring
                .preference_list_for_key(key.as_bytes(), 3)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(
                names(table, &table.preference_list(key.as_bytes())),
                expected
            );
        }
    }

    /// With zones the client interleaves its walk by zone exactly as the nodes do.
    #[test]
    fn preference_lists_match_a_zoned_ring() {
        let members: Vec<(NodeId, u32)> = ["a1", "a2", "b1", "b2", "c1", "c2"]
            .iter()
            .map(|n| (id(n), 1))
            .collect();
        for strategy in [
            PartitionStrategy::random_tokens(8).unwrap(),
            PartitionStrategy::equal_partitions(64).unwrap(),
        ] {
            let ring = Ring::build(&members, strategy, 1, None)
                .unwrap()
                .zoned(|node| Some(node.as_str()[..1].to_owned()));
            let table = RoutingTable::from_topology(topology_of(&ring, 3)).unwrap();
            assert_lists_match(&ring, &table, 300);
        }
        let mut bad = topology_of(
            &Ring::build(&members, PartitionStrategy::default(), 1, None).unwrap(),
            3,
        );
        bad.members[0].zone = "not a zone".into();
        assert!(matches!(
            RoutingTable::from_topology(bad),
            Err(TopologyError::Malformed(_))
        ));
    }

    /// Dynamo §4.3: the client's preference list is the ring's, for either strategy.
    #[test]
    fn preference_lists_match_the_ring() {
        let members = [(id("a"), 1), (id("b"), 2), (id("c"), 1), (id("d"), 3)];
        for strategy in [
            PartitionStrategy::random_tokens(8).unwrap(),
            PartitionStrategy::equal_partitions(64).unwrap(),
        ] {
            let ring = Ring::build(&members, strategy, 1, None).unwrap();
            let table = RoutingTable::from_topology(topology_of(&ring, 3)).unwrap();
            assert_eq!(table.vnode_count(), ring.vnode_count());
            assert_lists_match(&ring, &table, 500);
        }
    }

    #[test]
    fn lists_are_capped_by_the_member_count_and_empty_for_an_empty_ring() {
        let ring = Ring::build(
            &[(id("a"), 1), (id("b"), 1)],
            PartitionStrategy::random_tokens(4).unwrap(),
            1,
            None,
        )
        .unwrap();
        let table = RoutingTable::from_topology(topology_of(&ring, 3)).unwrap();
        assert_eq!(table.preference_list(b"k").len(), 2);
        let empty = Ring::build(&[], PartitionStrategy::default(), 1, None).unwrap();
        let table = RoutingTable::from_topology(topology_of(&empty, 3)).unwrap();
        assert!(!table.is_routable());
        assert!(table.preference_list(b"k").is_empty());
    }

    /// A key whose token equals a virtual node's token belongs to that virtual node;
    /// one past the last token wraps to the first.
    #[test]
    fn range_ends_are_inclusive_and_the_ring_wraps() {
        let answer = TopologyResponse {
            version: "v".into(),
            members: ["x", "y"]
                .iter()
                .map(|m| proto::TopologyMember {
                    node_id: (*m).into(),
                    ..Default::default()
                })
                .collect(),
            replication_factor: 1,
            vnode_tokens: [10u128.to_be_bytes(), 20u128.to_be_bytes()].concat().into(),
            vnode_owners: vec![0, 1],
            ..Default::default()
        };
        let table = RoutingTable::from_topology(answer).unwrap();
        assert_eq!(table.preference_list_at(Token(10)), [0]);
        assert_eq!(table.preference_list_at(Token(11)), [1]);
        assert_eq!(table.preference_list_at(Token(20)), [1]);
        assert_eq!(table.preference_list_at(Token(21)), [0]);
        assert_eq!(table.preference_list_at(Token(0)), [0]);
        assert_eq!(table.members()[0].client_address, None);
    }

    #[test]
    fn hostile_answers_are_refused() {
        let ring = Ring::build(
            &[(id("a"), 1), (id("b"), 1)],
            PartitionStrategy::equal_partitions(8).unwrap(),
            1,
            None,
        )
        .unwrap();
        let good = topology_of(&ring, 2);
        let cases: Vec<(TopologyResponse, &str)> = vec![
            (
                TopologyResponse {
                    unchanged: true,
                    ..good.clone()
                },
                "unchanged",
            ),
            (
                TopologyResponse {
                    version: String::new(),
                    ..good.clone()
                },
                "version",
            ),
            (
                TopologyResponse {
                    version: "v".repeat(MAX_VERSION_LEN + 1),
                    ..good.clone()
                },
                "version",
            ),
            (
                TopologyResponse {
                    replication_factor: 0,
                    ..good.clone()
                },
                "replication factor",
            ),
            (
                TopologyResponse {
                    replication_factor: MAX_REPLICATION_FACTOR + 1,
                    ..good.clone()
                },
                "replication factor",
            ),
            (
                TopologyResponse {
                    read_quorum: 3,
                    ..good.clone()
                },
                "read quorum 3",
            ),
            (
                TopologyResponse {
                    vnode_tokens: good.vnode_tokens.slice(1..),
                    ..good.clone()
                },
                "token bytes",
            ),
            (
                TopologyResponse {
                    vnode_owners: good.vnode_owners.iter().map(|_| 2).collect(),
                    ..good.clone()
                },
                "owner 2",
            ),
            (
                TopologyResponse {
                    vnode_tokens: [
                        good.vnode_tokens.slice(16..32),
                        good.vnode_tokens.slice(..16),
                    ]
                    .concat()
                    .into_iter()
                    .chain(good.vnode_tokens.slice(32..))
                    .collect(),
                    ..good.clone()
                },
                "strictly increasing",
            ),
            (
                TopologyResponse {
                    members: vec![
                        proto::TopologyMember {
                            node_id: "a".into(),
                            client_address: "no-port".into(),
                            ..Default::default()
                        },
                        good.members[1].clone(),
                    ],
                    ..good.clone()
                },
                "client address of a",
            ),
            (
                TopologyResponse {
                    members: vec![proto::TopologyMember::default(); MAX_MEMBERS + 1],
                    ..good.clone()
                },
                "members",
            ),
        ];
        for (answer, expected) in cases {
            let error = RoutingTable::from_topology(answer).unwrap_err();
            assert!(
                error.to_string().contains(expected),
                "{error} should mention {expected:?}"
            );
        }
        let table = RoutingTable::from_topology(good.clone()).unwrap();
        assert_eq!(table.read_quorum(), Some(2));
        assert!(!table.last_write_wins());
        let lww = RoutingTable::from_topology(TopologyResponse {
            last_write_wins: true,
            ..good.clone()
        })
        .unwrap();
        assert!(
            lww.last_write_wins(),
            "a last-write-wins cluster's reads show one version"
        );
        let older = RoutingTable::from_topology(TopologyResponse {
            read_quorum: 0,
            ..good
        })
        .unwrap();
        assert_eq!(older.read_quorum(), None, "a node without GetLocal sends 0");
    }

    proptest! {
        /// Random rings: the client's walk equals the ring's for every key position.
        #[test]
        fn any_ring_routes_like_the_node(
            weights in proptest::collection::vec(1u32..4, 1..7),
            n in 1u32..5,
            tokens in proptest::collection::vec(any::<u128>(), 1..50),
            random in any::<bool>(),
        ) {
            let members: Vec<(NodeId, u32)> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (id(&format!("n{i}")), w))
                .collect();
            let strategy = if random {
                PartitionStrategy::random_tokens(4).unwrap()
            } else {
                PartitionStrategy::equal_partitions(32).unwrap()
            };
            let ring = Ring::build(&members, strategy, 1, None).unwrap();
            let table = RoutingTable::from_topology(topology_of(&ring, n)).unwrap();
            for token in tokens {
                let expected: Vec<String> = ring
                    .preference_list(Token(token), n as usize)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                prop_assert_eq!(names(&table, &table.preference_list_at(Token(token))), expected);
            }
        }

        /// Garbage never panics: it is refused or routes within the member list.
        #[test]
        fn garbage_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            owners in proptest::collection::vec(0u32..5, 0..12),
            members in 0usize..4,
            n in 0u32..20,
        ) {
            let answer = TopologyResponse {
                version: "v".into(),
                members: (0..members)
                    .map(|i| proto::TopologyMember { node_id: format!("m{i}"), ..Default::default() })
                    .collect(),
                replication_factor: n,
                vnode_tokens: bytes.into(),
                vnode_owners: owners,
                ..Default::default()
            };
            if let Ok(table) = RoutingTable::from_topology(answer) {
                for list in [table.preference_list(b"a"), table.preference_list_at(Token(u128::MAX))] {
                    prop_assert!(list.iter().all(|&i| i < table.members().len()));
                    prop_assert!(list.len() <= table.replication_factor());
                }
            }
        }
    }
}
