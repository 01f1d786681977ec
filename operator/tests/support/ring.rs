//! Real `dynamo-node`s in this process, named `db-K` as the StatefulSet names its pods,
//! each requiring an admin token and joined into one ring through `Admin`: the setup a
//! controller scenario needs before its first pass.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use dynamo_node::node::RunningNode;
use dynamo_operator::admin::{AdminTarget, GrpcAdmin, NodeAdmin};
use dynamo_operator::planner::MemberState;

use super::{Loopback, WAIT, start_node, target, wait_for_states};

/// The token in the generated admin token Secret of the controller tests' clusters; the
/// nodes a [`Ring`] starts require it unless told otherwise.
pub const TOKEN: &str = "4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee0";

/// Nodes by ordinal, the admin client the test reaches them with, and their token.
pub struct Ring {
    /// The test's own `Admin` client (the controller's is its own).
    pub admin: GrpcAdmin,
    token: String,
    replication_factor: u32,
    nodes: BTreeMap<u32, RunningNode>,
}

/// The ordinal in a `db-K` node id.
fn ordinal_of(id: &str) -> u32 {
    id.strip_prefix("db-")
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("node id {id:?} is not db-<ordinal>"))
}

impl Ring {
    /// Starts a node per `(id, weight)` with replication factor `n`, each requiring
    /// [`TOKEN`]; joins them all through the first, each with its weight; and waits until
    /// every node lists every one as a member.
    pub async fn start(members: &[(&str, u32)], n: u32) -> Self {
        Self::start_with_token(TOKEN, members, n).await
    }

    /// [`Ring::start`] with nodes that require `token`.
    pub async fn start_with_token(token: &str, members: &[(&str, u32)], n: u32) -> Self {
        let mut ring = Self::empty(token, n);
        for (id, _) in members {
            ring.add(id, &[]).await;
        }
        for (id, weight) in members {
            ring.join(id, *weight).await;
        }
        let all: Vec<(&str, MemberState)> = members
            .iter()
            .map(|(id, _)| (*id, MemberState::Member))
            .collect();
        for (id, _) in members {
            ring.wait_for_states(ordinal_of(id), &all).await;
        }
        ring
    }

    /// No node yet: nodes are added with [`Ring::add`] and joined with [`Ring::join`].
    pub fn empty(token: &str, n: u32) -> Self {
        Self {
            admin: GrpcAdmin::new(WAIT),
            token: token.to_owned(),
            replication_factor: n,
            nodes: BTreeMap::new(),
        }
    }

    /// Starts node `id` requiring the ring's token, with `extra` flags, seeded with the
    /// lowest running node. It is not joined: its pod runs, its node is outside the ring.
    pub async fn add(&mut self, id: &str, extra: &[&str]) -> &RunningNode {
        let ordinal = ordinal_of(id);
        assert!(!self.nodes.contains_key(&ordinal), "{id} runs already");
        let seeds: Vec<SocketAddr> = self
            .nodes
            .values()
            .next()
            .map(|seed| seed.internode_addr)
            .into_iter()
            .collect();
        let mut args = vec!["--admin-token", self.token.as_str()];
        args.extend_from_slice(extra);
        let node = start_node(id, &seeds, self.replication_factor, &args).await;
        self.nodes.entry(ordinal).or_insert(node)
    }

    /// Joins `id` at its own address with `weight`, through the lowest running node.
    pub async fn join(&self, id: &str, weight: u32) {
        let via = *self.nodes.keys().next().expect("a running node");
        self.join_via(via, id, weight).await;
    }

    /// Joins `id` at its own address with `weight`, through node `via`.
    pub async fn join_via(&self, via: u32, id: &str, weight: u32) {
        let address = self.node(ordinal_of(id)).internode_addr.to_string();
        self.admin
            .join(&self.target(via), id, &address, weight)
            .await
            .unwrap_or_else(|e| panic!("joining {id} through db-{via}: {e}"));
    }

    /// The running node `ordinal`.
    pub fn node(&self, ordinal: u32) -> &RunningNode {
        self.nodes
            .get(&ordinal)
            .unwrap_or_else(|| panic!("no node db-{ordinal} runs"))
    }

    /// How the test reaches node `ordinal`: plain, with the ring's token.
    pub fn target(&self, ordinal: u32) -> AdminTarget {
        AdminTarget {
            token: Some(self.token.clone()),
            ..target(self.node(ordinal))
        }
    }

    /// The running nodes on loopback, by ordinal, for the controller's context.
    pub fn endpoints(&self) -> Loopback {
        Loopback(
            self.nodes
                .iter()
                .map(|(ordinal, node)| (*ordinal, node.internode_addr))
                .collect(),
        )
    }

    /// Waits until node `via` lists every `(node, state)` pair.
    pub async fn wait_for_states(&self, via: u32, expected: &[(&str, MemberState)]) {
        wait_for_states(&self.admin, &self.target(via), expected).await;
    }

    /// Shuts node `ordinal` down (its pod goes away); the others keep running.
    pub async fn stop(&mut self, ordinal: u32) {
        let node = self
            .nodes
            .remove(&ordinal)
            .unwrap_or_else(|| panic!("no node db-{ordinal} runs"));
        node.shutdown().await.expect("node shuts down");
    }

    /// Shuts every node down, the highest ordinal first.
    pub async fn shutdown(self) {
        for node in self.nodes.into_values().rev() {
            node.shutdown().await.expect("node shuts down");
        }
    }
}
