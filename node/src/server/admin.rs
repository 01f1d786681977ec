//! Administration: the member table and ring, explicit membership changes (Dynamo §4.8.1:
//! "an administrator uses a command line tool or a browser to connect to a Dynamo node
//! and issue a membership change"), and node status.

use super::state_to_proto;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::NodeId;
use crate::antientropy::AntiEntropy;
use crate::cluster::ChangeError;
use crate::cluster::Cluster;
use crate::members::{Members, MembershipChangeError};
use crate::membership::{Member, MembershipError};
use crate::metrics::Metrics;
use crate::proto::{self, admin_server};
use crate::quorum::QuorumConfig;
use crate::ring::PartitionStrategy;
use crate::storage::Durability;
use crate::store::Store;
use crate::transfer::{TransferRole, TransferShared};

/// Serves `dynamo.v1.Admin`: the member table and ring, membership changes, and the
/// node's status, over the handles those need (the node wires it with a struct literal).
#[derive(Clone)]
pub struct AdminService {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) members: Arc<Members>,
    pub(crate) store: Store,
    pub(crate) transfer: Arc<TransferShared>,
    pub(crate) antientropy: Arc<AntiEntropy>,
    pub(crate) metrics: Metrics,
    pub(crate) quorum: QuorumConfig,
    pub(crate) durability: Durability,
    pub(crate) strategy: PartitionStrategy,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService")
            .field("node", self.cluster.me())
            .finish_non_exhaustive()
    }
}

impl AdminService {
    fn partitioning_name(&self) -> &'static str {
        match self.strategy {
            PartitionStrategy::RandomTokens { .. } => "random-tokens",
            PartitionStrategy::EqualPartitions { .. } => "equal-partitions",
        }
    }

    fn durability_name(&self) -> &'static str {
        match self.durability {
            Durability::Sync => "sync",
            Durability::Buffered => "buffered",
        }
    }
}

/// Refuses requests without `authorization: Bearer <token>` when a token is configured.
pub fn admin_token_interceptor(
    token: Option<crate::config::AdminToken>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let Some(token) = &token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(p) if token.verify(p.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("admin token does not match")),
            None => Err(Status::unauthenticated(
                "admin calls need 'authorization: Bearer <token>'",
            )),
        }
    }
}

fn change_status(error: ChangeError) -> Status {
    match error {
        ChangeError::Membership(MembershipError::UnknownMember { .. }) => {
            Status::not_found(error.to_string())
        }
        ChangeError::Membership(
            MembershipError::AlreadyJoined { .. } | MembershipError::InvalidTransition { .. },
        ) => Status::failed_precondition(error.to_string()),
        _ => Status::invalid_argument(error.to_string()),
    }
}

fn parse_node_id(id: &str) -> Result<NodeId, Status> {
    NodeId::new(id).map_err(|e| Status::invalid_argument(format!("node_id: {e}")))
}

impl AdminService {
    fn member_info(&self, member: &Member) -> proto::MemberInfo {
        let ring = self.cluster.ring();
        let ownership = ring.ownership();
        proto::MemberInfo {
            node_id: member.id().to_string(),
            address: member.address().to_owned(),
            weight: member.weight(),
            state: state_to_proto(member.state()) as i32,
            version: member.version(),
            ownership: ownership.get(member.id()).copied().unwrap_or(0.0),
            reachable: self.cluster.is_available(member.id()),
            client_address: member.client_address().unwrap_or_default().to_owned(),
            settled_weight: member.settled_weight(),
            zone: member.zone().unwrap_or_default().to_owned(),
        }
    }

    async fn apply(
        &self,
        change: impl FnOnce(&mut crate::membership::MemberTable) -> Result<Member, MembershipError>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        let member = self
            .members
            .change_membership(change)
            .map_err(|e| match e {
                MembershipChangeError::Refused(e) => change_status(e),
                other => Status::internal(other.to_string()),
            })?;
        Ok(Response::new(proto::MemberChangeResponse {
            member: Some(self.member_info(&member)),
        }))
    }
}

impl AdminService {
    /// Anti-entropy's figures since start, with its settings; `None` when disabled.
    fn anti_entropy_status(&self) -> Option<proto::AntiEntropyStatus> {
        let config = self.antientropy.config();
        config.enabled().then(|| {
            let stats = self.metrics.anti_entropy_stats();
            proto::AntiEntropyStatus {
                exchanges: stats.exchanges,
                exchange_failures: stats.exchange_failures,
                differing_buckets: stats.differing_buckets,
                keys_pushed: stats.keys_pushed,
                keys_pulled: stats.keys_pulled,
                tombstones_purged: stats.tombstones_purged,
                trees_ready: stats.trees_ready,
                trees_building: stats.trees_building,
                interval_ms: millis(config.interval),
                tombstone_grace_ms: millis(config.tombstone_grace),
            }
        })
    }
}

/// One peer's part of this node's transfer, for `Admin.Status`.
fn transfer_pending(peer: &crate::transfer::PeerTransfer) -> proto::TransferPending {
    proto::TransferPending {
        peer: peer.peer.to_string(),
        ranges: peer.pending_ranges,
        ring_fraction: peer.ring_fraction_remaining,
        estimated_keys: peer.estimated_keys_remaining,
        keys_sent: peer.keys_sent,
        bytes_sent: peer.bytes_sent,
        unreachable_ms: peer.unreachable_for.map(millis),
        ranges_on_fallback: peer.ranges_on_fallback,
        ranges_waiting: peer.ranges_waiting,
    }
}

/// Whole milliseconds, saturating.
fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn ring(
        &self,
        _request: Request<proto::RingRequest>,
    ) -> Result<Response<proto::RingResponse>, Status> {
        let table = self.cluster.table();
        Ok(Response::new(proto::RingResponse {
            members: table.iter().map(|m| self.member_info(m)).collect(),
            table_digest: table.digest().to_string(),
            partitioning: self.partitioning_name().to_owned(),
            replication_factor: self.quorum.n(),
        }))
    }

    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        let request = request.into_inner();
        let id = parse_node_id(&request.node_id)?;
        let weight = if request.weight == 0 {
            1
        } else {
            request.weight
        };
        self.apply(|table| table.join_in_zone(id, &request.address, weight, &request.zone))
            .await
    }

    async fn leave(
        &self,
        request: Request<proto::LeaveRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        let id = parse_node_id(&request.into_inner().node_id)?;
        self.apply(|table| table.leave(&id)).await
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        let id = parse_node_id(&request.into_inner().node_id)?;
        if &id == self.cluster.me() {
            return Err(Status::failed_precondition(format!(
                "{id} is this node: ask another member to remove it, or decommission it with Leave"
            )));
        }
        if self.cluster.table().get(&id).is_none() {
            return Err(Status::not_found(format!(
                "{id} is not in the member table"
            )));
        }
        // Only a node this one cannot reach: a live node is decommissioned with Leave,
        // which hands its data off first.
        if self.cluster.is_available(&id) {
            return Err(Status::failed_precondition(format!(
                "{id} is reachable: decommission it with Leave, so its data is handed off"
            )));
        }
        self.apply(|table| table.remove_dead(&id)).await
    }

    async fn set_weight(
        &self,
        request: Request<proto::SetWeightRequest>,
    ) -> Result<Response<proto::MemberChangeResponse>, Status> {
        let request = request.into_inner();
        let id = parse_node_id(&request.node_id)?;
        self.apply(|table| table.set_weight(&id, request.weight))
            .await
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let node = self;
        let hints = node
            .store
            .engine()
            .hint_targets()
            .map_err(|e| Status::internal(format!("reading hint backlog: {e}")))?;
        let space = node
            .store
            .engine()
            .space()
            .map_err(|e| Status::internal(format!("measuring the storage: {e}")))?;
        let state = node
            .cluster
            .table()
            .get(node.cluster.me())
            .map_or(proto::MemberState::Unspecified, |m| {
                state_to_proto(m.state())
            });
        let mut transfer = node.transfer.status();
        // A change this node has not run a round for yet is still a transfer to come:
        // report its role at once, so no one reads "nothing moving" in between.
        if transfer.role.is_none() {
            transfer.role = node
                .cluster
                .table()
                .get(node.cluster.me())
                .and_then(TransferRole::of);
        }
        Ok(Response::new(proto::StatusResponse {
            node_id: node.cluster.me().to_string(),
            // The current clock incarnation, renewed at run time (see `crate::identity`).
            incarnation: node.store.identity().incarnation(),
            state: state as i32,
            keys: node.store.engine().approximate_len(),
            hints: hints
                .into_iter()
                .map(|(target, keys)| proto::HintBacklog {
                    target: target.to_string(),
                    keys,
                })
                .collect(),
            durability: node.durability_name().to_owned(),
            n: node.quorum.n(),
            r: node.quorum.r(),
            w: node.quorum.w(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            transfer: transfer
                .role
                .map(|role| role.name().to_owned())
                .unwrap_or_default(),
            transfer_pending_ranges: transfer.pending_ranges(),
            transfers: transfer.peers.iter().map(transfer_pending).collect(),
            zone: node.members.zone().unwrap_or_default().to_owned(),
            storage: Some(proto::StorageSpace {
                live_bytes: space.live_bytes,
                disk_bytes: space.disk_bytes,
            }),
            anti_entropy: node.anti_entropy_status(),
        }))
    }
}
