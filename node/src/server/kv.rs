//! The client API: Dynamo's get() and put() (§4.1), plus delete, the topology a
//! partition-aware client routes by (§4.5), and the replica-local read a client
//! coordinates gets with (§6.4).

pub use dynamo_proto::wire::TOPOLOGY_HEADER;
use tonic::{Request, Response, Status};

use super::coordinator_status;
use std::time::Instant;

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::membership::MemberState;
use crate::metrics::{Api, Metrics, Op, Outcome};
use crate::proto::{
    DeleteRequest, DeleteResponse, GetLocalRequest, GetLocalResponse, GetRequest, GetResponse,
    PutRequest, PutResponse, TopologyMember, TopologyRequest, TopologyResponse, kv_server,
};
use crate::store::Store;
use crate::version::context::{self, Context};

/// Serves `dynamo.v1.Kv` through the node's coordinator, and replica-local reads from
/// the node's store.
#[derive(Clone)]
pub struct KvService {
    coordinator: Coordinator,
    /// The store the coordinator writes through: `GetLocal` reads it directly, as the
    /// coordinator reads its own replica.
    store: Store,
    metrics: Metrics,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService")
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

impl KvService {
    /// A service over `coordinator` and the node's `store`, counting requests in
    /// `metrics`.
    pub fn new(coordinator: Coordinator, store: Store, metrics: Metrics) -> Self {
        Self {
            coordinator,
            store,
            metrics,
        }
    }

    /// Records one request's outcome and latency.
    fn observe<T>(&self, op: Op, started: Instant, result: &Result<T, CoordinatorError>) {
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(error) => super::outcome_of(error),
        };
        self.metrics
            .observe(Api::Grpc, op, outcome, started.elapsed());
    }
}

impl KvService {
    /// `message` as a response carrying this node's topology version, so a
    /// partition-aware client notices membership changes without polling.
    fn respond<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        let version = self.coordinator.cluster().table_digest().to_string();
        if let Ok(value) = version.parse() {
            response.metadata_mut().insert(TOPOLOGY_HEADER, value);
        }
        response
    }

    /// The routing view of this node's membership.
    fn topology_view(&self, known_version: &str) -> TopologyResponse {
        let cluster = self.coordinator.cluster();
        let current = cluster.table_digest().to_string();
        if known_version == current {
            return TopologyResponse {
                version: current,
                unchanged: true,
                ..TopologyResponse::default()
            };
        }
        let (table, digest, ring) = cluster.snapshot();
        let members: Vec<_> = table
            .iter()
            .filter(|m| m.state() != MemberState::Removed)
            .collect();
        let index: std::collections::HashMap<_, u32> = members
            .iter()
            .zip(0u32..)
            .map(|(m, i)| (m.id(), i))
            .collect();
        let mut vnode_tokens = Vec::with_capacity(ring.vnode_count() * 16);
        let mut vnode_owners = Vec::with_capacity(ring.vnode_count());
        for (range, owner) in ring.vnodes() {
            // Ring owners are members in the ring (Joining or Member), never removed.
            if let Some(&owner) = index.get(owner) {
                vnode_tokens.extend_from_slice(&range.end.0.to_be_bytes());
                vnode_owners.push(owner);
            }
        }
        TopologyResponse {
            version: digest.to_string(),
            unchanged: false,
            members: members
                .iter()
                .map(|m| TopologyMember {
                    node_id: m.id().to_string(),
                    client_address: m.client_address().unwrap_or_default().to_owned(),
                    state: super::state_to_proto(m.state()) as i32,
                    reachable: cluster.is_available(m.id()),
                    zone: m.zone().unwrap_or_default().to_owned(),
                })
                .collect(),
            replication_factor: self.coordinator.quorum().n(),
            read_quorum: self.coordinator.quorum().r(),
            last_write_wins: self.store.reconciliation()
                == crate::version::Reconciliation::LastWriteWins,
            vnode_tokens: vnode_tokens.into(),
            vnode_owners,
            partitioning: match ring.strategy() {
                crate::ring::PartitionStrategy::RandomTokens { .. } => "random-tokens",
                crate::ring::PartitionStrategy::EqualPartitions { .. } => "equal-partitions",
            }
            .to_owned(),
        }
    }
}

impl KvService {
    /// This node's own state of `key`, encoded, if the node is one of the key's N read
    /// replicas (the replicas a server-coordinated get would read first).
    fn read_local(&self, key: &[u8]) -> Result<Vec<u8>, Status> {
        self.coordinator
            .limits()
            .check_key(key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cluster = self.coordinator.cluster();
        let n = usize::try_from(self.coordinator.quorum().n()).unwrap_or(usize::MAX);
        // While ranges move, reads stay on the replicas that hold the data (the settled
        // ring): a new owner that has not received the key yet would answer "nothing".
        let replicas = cluster.read_preference_list(key);
        if !replicas.iter().take(n).any(|node| node == cluster.me()) {
            return Err(Status::failed_precondition(format!(
                "{} is not one of the key's {n} read replicas; refresh the topology or \
                 send a Get",
                cluster.me()
            )));
        }
        let state = self
            .store
            .read(key)
            .map_err(|e| Status::internal(format!("local read: {e}")))?;
        Ok(state.to_bytes())
    }
}

fn decode_context(bytes: &[u8]) -> Result<Context, Status> {
    context::decode(bytes).map_err(|e| Status::invalid_argument(format!("malformed context: {e}")))
}

#[tonic::async_trait]
impl kv_server::Kv for KvService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let request = request.into_inner();
        let started = Instant::now();
        let result = self.coordinator.get(&request.key, request.r).await;
        self.observe(Op::Get, started, &result);
        let state = result.map_err(|e| coordinator_status(&e))?;
        Ok(self.respond(GetResponse {
            values: state.values().map(|v| v.to_vec().into()).collect(),
            context: context::encode(&state.context()).into(),
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        let started = Instant::now();
        let context = decode_context(&request.context).inspect_err(|_| {
            self.metrics
                .observe(Api::Grpc, Op::Put, Outcome::Invalid, started.elapsed());
        })?;
        let result = self
            .coordinator
            .put(
                &request.key,
                context,
                Some(request.value.to_vec()),
                request.w,
            )
            .await;
        self.observe(Op::Put, started, &result);
        let new_context = result.map_err(|e| coordinator_status(&e))?;
        Ok(self.respond(PutResponse {
            context: context::encode(&new_context).into(),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let request = request.into_inner();
        let started = Instant::now();
        let context = decode_context(&request.context).inspect_err(|_| {
            self.metrics
                .observe(Api::Grpc, Op::Delete, Outcome::Invalid, started.elapsed());
        })?;
        let result = self
            .coordinator
            .delete(&request.key, context, request.w)
            .await;
        self.observe(Op::Delete, started, &result);
        let new_context = result.map_err(|e| coordinator_status(&e))?;
        Ok(self.respond(DeleteResponse {
            context: context::encode(&new_context).into(),
        }))
    }

    async fn topology(
        &self,
        request: Request<TopologyRequest>,
    ) -> Result<Response<TopologyResponse>, Status> {
        let request = request.into_inner();
        if request.known_version.len() > 64 {
            return Err(Status::invalid_argument(
                "known_version is longer than any version this node issues",
            ));
        }
        Ok(Response::new(self.topology_view(&request.known_version)))
    }

    async fn get_local(
        &self,
        request: Request<GetLocalRequest>,
    ) -> Result<Response<GetLocalResponse>, Status> {
        let request = request.into_inner();
        let started = Instant::now();
        let result = self.read_local(&request.key);
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(status) if status.code() == tonic::Code::Internal => Outcome::Error,
            Err(_) => Outcome::Invalid,
        };
        self.metrics
            .observe(Api::Grpc, Op::GetLocal, outcome, started.elapsed());
        Ok(self.respond(GetLocalResponse {
            state: result?.into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tonic::Request;

    use super::*;
    use crate::NodeId;
    use crate::node::{NodeSettings, NodeShared};
    use crate::proto::kv_server::Kv as _;
    use crate::storage::MemoryEngine;
    use crate::transport::MemoryNetwork;
    use dynamo_client::RoutingTable;

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    /// A node `n1` whose table has `members` (n1 announcing its client address) and a
    /// removed `gone`.
    fn node(members: &[&str]) -> Arc<NodeShared> {
        let network = MemoryNetwork::new(Duration::from_millis(100)).unwrap();
        let mut settings = NodeSettings::new(id("n1"));
        settings.client_advertise = Some("n1:7000".into());
        let shared = NodeShared::assemble(
            settings,
            Arc::new(MemoryEngine::new()),
            Arc::new(network.endpoint("n1:7001")),
            "n1:7001".into(),
        )
        .unwrap();
        for member in members.iter().chain(&["gone"]) {
            shared
                .change_membership(|t| {
                    t.join(id(member), &format!("{member}:7001"), 1)?;
                    t.mark_member(&id(member))
                })
                .unwrap();
        }
        shared
            .change_membership(|t| {
                t.leave(&id("gone"))?;
                t.mark_removed(&id("gone"))
            })
            .unwrap();
        shared.learn_table(&shared.cluster().table()).unwrap();
        shared
    }

    fn service(node: &NodeShared) -> KvService {
        KvService::new(
            node.coordinator().clone(),
            node.store().clone(),
            Metrics::new(),
        )
    }

    /// Dynamo §4.5: the client routes by the node's own placement, so the preference
    /// lists the client derives from the answer are the node's.
    #[tokio::test]
    async fn topology_describes_the_nodes_placement() {
        let node = node(&["n1", "n2", "n3", "n4"]);
        let answer = service(&node)
            .topology(Request::new(TopologyRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.version, node.cluster().table_digest().to_string());
        assert_eq!(answer.replication_factor, 3);
        let ids: Vec<&str> = answer.members.iter().map(|m| m.node_id.as_str()).collect();
        assert_eq!(
            ids,
            ["n1", "n2", "n3", "n4"],
            "the removed member is left out"
        );
        assert_eq!(answer.members[0].client_address, "n1:7000");
        assert_eq!(answer.members[1].client_address, "", "n2 has not announced");
        let table = RoutingTable::from_topology(answer).unwrap();
        for key in 0..200 {
            let key = format!("k{key}");
            let ours: Vec<String> = table
                .preference_list(key.as_bytes())
                .into_iter()
                .map(|i| table.members()[i].id.clone())
                .collect();
            let theirs: Vec<String> = node.cluster().extended_preference_list(key.as_bytes())[..3]
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(ours, theirs, "{key}");
        }
    }

    #[tokio::test]
    async fn a_current_version_gets_a_short_answer_and_responses_carry_it() {
        let node = node(&["n1", "n2"]);
        let service = service(&node);
        let version = node.cluster().table_digest().to_string();
        let answer = service
            .topology(Request::new(TopologyRequest {
                known_version: version.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.unchanged);
        assert!(answer.members.is_empty() && answer.vnode_owners.is_empty());
        let long = service
            .topology(Request::new(TopologyRequest {
                known_version: "x".repeat(65),
            }))
            .await
            .unwrap_err();
        assert_eq!(long.code(), tonic::Code::InvalidArgument);
        let put = service
            .put(Request::new(PutRequest {
                key: "k".into(),
                context: Default::default(),
                value: "v".into(),
                w: Some(1),
            }))
            .await
            .unwrap();
        assert_eq!(
            put.metadata()
                .get(TOPOLOGY_HEADER)
                .unwrap()
                .to_str()
                .unwrap(),
            version
        );
    }
}
