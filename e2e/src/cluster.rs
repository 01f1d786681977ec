//! A cluster of node processes: explicit membership changes through `Admin`, waiting for
//! the members to agree, and the dump of every replica's versions the checker needs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use dynamo_node::NodeId;
use dynamo_node::history::{ReplicaDump, StoredVersion};
use dynamo_node::proto::admin_client::AdminClient;
use dynamo_node::proto::kv_client::KvClient;
use dynamo_node::proto::{self, MemberState};
use dynamo_node::ring::{PartitionStrategy, Ring};
use dynamo_node::transport::{GrpcTransport, GrpcTransportConfig, Transport};
use tonic::transport::Channel;

use crate::netns::Namespaces;
use crate::process::NodeProcess;
use crate::{WAIT, eventually};

/// Replicas per key in every e2e cluster (N=3, R=W=2).
pub const REPLICATION: usize = 3;

/// The ring strategy every e2e cluster runs: strategy 1, derivable from the member set
/// alone, so the harness can compute each key's replicas exactly as the nodes do.
const TOKENS_PER_WEIGHT: u32 = 64;

/// Where the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On 127.0.0.1 with OS-chosen ports.
    Loopback,
    /// Each node in a network namespace of its own, so links can be cut.
    Namespaces,
}

/// How the harness names the nodes it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeNaming {
    /// `n1`, `n2`, ...
    Numbered,
    /// `<name>-0`, `<name>-1`, ...: a StatefulSet's pod names, which the operator's
    /// planner maps to ordinals.
    Ordinals {
        /// The cluster (StatefulSet) name.
        name: String,
    },
}

impl NodeNaming {
    /// The id of the node started at `index`.
    #[must_use]
    pub fn id(&self, index: usize) -> String {
        match self {
            Self::Numbered => format!("n{}", index + 1),
            Self::Ordinals { name } => format!("{name}-{index}"),
        }
    }
}

/// Node processes, their data directories and (when used) their network.
///
/// Field order matters: the nodes drop (and are killed) before the directories and the
/// namespaces they use are removed.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, in start order; `nodes[i].id` is [`NodeNaming::id`]`(i)`.
    pub nodes: Vec<NodeProcess>,
    root: tempfile::TempDir,
    /// The namespaces, when the placement uses them.
    pub network: Option<Namespaces>,
    extra: Vec<String>,
    naming: NodeNaming,
}

/// The partitioning every node of these clusters uses (random tokens, a few per unit of
/// weight), so a test can rebuild the ring the nodes compute from a member table.
pub fn ring_strategy() -> PartitionStrategy {
    PartitionStrategy::RandomTokens {
        tokens_per_weight: TOKENS_PER_WEIGHT,
    }
}

impl Cluster {
    /// Starts `size` nodes named `n1`, `n2`, ..., joins them all and waits until every
    /// node sees every other as a member. `extra` flags go to every node. `Err` only when
    /// the placement cannot be had on this machine (namespaces without root), with the
    /// reason.
    pub async fn start(
        size: usize,
        placement: Placement,
        extra: &[&str],
    ) -> Result<Cluster, String> {
        let mut cluster = Cluster::empty(placement, extra, NodeNaming::Numbered)?;
        for _ in 0..size {
            let index = cluster.add_node().await;
            cluster.join(index).await;
        }
        let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
        cluster.wait_for_members(&ids).await;
        Ok(cluster)
    }

    /// A cluster with no node yet, whose nodes [`add_node`](Self::add_node) starts with
    /// ids from `naming` and `extra` flags (plus the suite's replication and ring
    /// settings). `Err` only when the placement cannot be had on this machine.
    pub fn empty(
        placement: Placement,
        extra: &[&str],
        naming: NodeNaming,
    ) -> Result<Cluster, String> {
        let network = match placement {
            Placement::Loopback => None,
            Placement::Namespaces => Some(Namespaces::create()?),
        };
        let mut extra: Vec<String> = extra.iter().map(ToString::to_string).collect();
        extra.extend([
            "--replication-factor".into(),
            REPLICATION.to_string(),
            "--read-quorum".into(),
            "2".into(),
            "--write-quorum".into(),
            "2".into(),
            "--partitioning".into(),
            "random-tokens".into(),
            "--tokens-per-weight".into(),
            TOKENS_PER_WEIGHT.to_string(),
        ]);
        Ok(Cluster {
            nodes: Vec::new(),
            root: tempfile::tempdir().expect("a temporary directory"),
            network,
            extra,
            naming,
        })
    }

    /// Starts one more node (seeded with the first node, not yet joined) and returns its
    /// index.
    pub async fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let id = self.naming.id(index);
        let (ip, host) = match &mut self.network {
            Some(network) => {
                let host = network.add_host();
                (IpAddr::V4(host.ip), Some(host))
            }
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), None),
        };
        let seeds: Vec<SocketAddr> = self
            .nodes
            .first()
            .map(|n| n.internode)
            .into_iter()
            .collect();
        let node = NodeProcess::start(
            &id,
            ip,
            host,
            self.root.path().join(&id),
            &seeds,
            &self.extra,
        )
        .await;
        self.nodes.push(node);
        index
    }

    /// The index of a running node other than `except`, to send requests through.
    ///
    /// # Panics
    /// When no other node runs.
    pub fn other_running(&self, except: &[usize]) -> usize {
        (0..self.nodes.len())
            .find(|i| !except.contains(i) && self.nodes[*i].is_running())
            .expect("another running node")
    }

    /// An `Admin` client of node `index`.
    pub async fn admin(&self, index: usize) -> AdminClient<Channel> {
        AdminClient::new(channel(self.nodes[index].internode).await)
    }

    /// A `Kv` client of node `index`.
    pub async fn kv(&self, index: usize) -> KvClient<Channel> {
        KvClient::new(channel(self.nodes[index].client).await)
    }

    /// Joins node `index` through a running node (Dynamo §4.8.1: explicit).
    pub async fn join(&self, index: usize) {
        let via = if index == 0 {
            0
        } else {
            self.other_running(&[index])
        };
        let node = &self.nodes[index];
        self.admin(via)
            .await
            .join(proto::JoinRequest {
                node_id: node.id.clone(),
                address: node.internode.to_string(),
                weight: 1,
                zone: String::new(),
            })
            .await
            .unwrap_or_else(|status| panic!("joining {}: {status}", node.id));
    }

    /// Asks for node `index`'s decommission through another running node.
    pub async fn leave(&self, index: usize) {
        let via = self.other_running(&[index]);
        self.admin(via)
            .await
            .leave(proto::LeaveRequest {
                node_id: self.nodes[index].id.clone(),
            })
            .await
            .unwrap_or_else(|status| panic!("decommissioning {}: {status}", self.nodes[index].id));
    }

    /// Waits until every running node's table lists exactly `ids` as members (state
    /// Member) and the tables agree.
    pub async fn wait_for_members(&self, ids: &[String]) {
        let mut want: Vec<String> = ids.to_vec();
        want.sort();
        eventually(&format!("members {want:?} everywhere"), WAIT, || async {
            let mut digests = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let ring = fetch_ring(node.internode).await?;
                let mut members: Vec<String> = ring
                    .members
                    .iter()
                    .filter(|m| m.state == MemberState::Member as i32)
                    .map(|m| m.node_id.clone())
                    .collect();
                members.sort();
                if members != want {
                    return Err(format!("{} sees members {members:?}", node.id));
                }
                digests.push(ring.table_digest);
            }
            digests.dedup();
            if digests.len() > 1 {
                return Err(format!("tables differ: {digests:?}"));
            }
            Ok(())
        })
        .await
    }

    /// The state node `index` has in the table of node `via`.
    pub async fn state_of(&self, index: usize, via: usize) -> Option<MemberState> {
        let ring = fetch_ring(self.nodes[via].internode).await.ok()?;
        ring.members
            .iter()
            .find(|m| m.node_id == self.nodes[index].id)
            .and_then(|m| MemberState::try_from(m.state).ok())
    }

    /// Waits until no running node holds hints for another.
    pub async fn wait_for_hints_delivered(&self) {
        eventually("every hint delivered", WAIT, || async {
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                let status = AdminClient::new(channel(node.internode).await)
                    .status(proto::StatusRequest {})
                    .await
                    .map_err(|s| format!("status of {}: {s}", node.id))?
                    .into_inner();
                if let Some(backlog) = status.hints.iter().find(|h| h.keys > 0) {
                    return Err(format!(
                        "{} holds {} hints for {}",
                        node.id, backlog.keys, backlog.target
                    ));
                }
            }
            Ok(())
        })
        .await
    }

    /// The ring placement is heading to (Joining and Member nodes), as a running node's
    /// member table describes it and every node computes it: each key's replicas are
    /// the first [`REPLICATION`] nodes of its preference list.
    pub async fn target_ring(&self) -> Result<Ring, String> {
        let via = self.other_running(&[]);
        let ring = fetch_ring(self.nodes[via].internode).await?;
        let members: Vec<(NodeId, u32)> = ring
            .members
            .iter()
            .filter(|m| {
                m.state == MemberState::Member as i32 || m.state == MemberState::Joining as i32
            })
            .map(|m| (NodeId::new(&m.node_id).expect("a valid id"), m.weight))
            .collect();
        Ring::build(&members, ring_strategy(), 0, None)
            .map_err(|e| format!("rebuilding the ring: {e}"))
    }

    /// The versions node `index` stores for `key` (`None` for a tombstone), read over
    /// the internode `Replica` API: what this one replica holds, no quorum involved.
    pub async fn stored(&self, index: usize, key: &[u8]) -> Result<Vec<StoredVersion>, String> {
        let node = &self.nodes[index];
        let state = replica_transport()
            .read(&node.internode.to_string(), key)
            .await
            .map_err(|e| format!("reading {key:?} from {}: {e}", node.id))?;
        Ok(state
            .siblings()
            .iter()
            .map(|sibling| sibling.value.as_data().map(<[u8]>::to_vec))
            .collect())
    }

    /// Each key's replicas (its preference list's first N ring members, as the nodes
    /// compute it) and the versions each holds, read over the internode `Replica` API.
    pub async fn replica_dump(&self, keys: &[Vec<u8>]) -> Result<ReplicaDump, String> {
        let ring = self.target_ring().await?;
        let mut dump = ReplicaDump::new();
        for key in keys {
            for replica in ring.preference_list_for_key(key, REPLICATION) {
                let index = self
                    .nodes
                    .iter()
                    .position(|n| n.id == replica.as_str())
                    .ok_or_else(|| format!("{replica} is not a node of this cluster"))?;
                let versions = self.stored(index, key).await?;
                dump.record(key, &self.nodes[index].id, versions);
            }
        }
        Ok(dump)
    }

    /// Node `index`'s `Admin.Status`.
    pub async fn status(&self, index: usize) -> Result<proto::StatusResponse, String> {
        self.admin(index)
            .await
            .status(proto::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("status of {}: {s}", self.nodes[index].id))
    }
}

/// The internode transport the harness reads single replicas with, presenting the
/// cluster secret the harness starts nodes with.
pub fn replica_transport() -> GrpcTransport {
    let tokens =
        dynamo_node::transport::auth::InternodeTokens::parse(crate::process::TEST_INTERNODE_TOKEN)
            .expect("the test token is valid");
    replica_transport_with(Some(&tokens))
}

/// An internode transport presenting `tokens` (none: an outsider's calls).
pub fn replica_transport_with(
    tokens: Option<&dynamo_node::transport::auth::InternodeTokens>,
) -> GrpcTransport {
    let transport = GrpcTransport::new(
        GrpcTransportConfig::new(Duration::from_secs(5), Duration::from_secs(2))
            .expect("valid timeouts"),
    );
    match tokens {
        Some(tokens) => transport.with_token(tokens),
        None => transport,
    }
}

async fn channel(address: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

async fn fetch_ring(internode: SocketAddr) -> Result<proto::RingResponse, String> {
    AdminClient::new(channel(internode).await)
        .ring(proto::RingRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("ring from {internode}: {status}"))
}
