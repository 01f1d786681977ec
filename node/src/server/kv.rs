//! The client API: Dynamo's get() and put() (§4.1), plus delete, and the topology a
//! partition-aware client routes by (§4.5).

use tonic::{Request, Response, Status};

use super::coordinator_status;
use std::time::Instant;

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::metrics::{Api, Metrics, Op, Outcome};
use crate::membership::MemberState;
use crate::proto::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse,
    TopologyMember, TopologyRequest, TopologyResponse, kv_server,
};
use crate::version::{VectorClock, context};

/// Serves `dynamo.v1.Kv` through the node's coordinator.
#[derive(Debug, Clone)]
pub struct KvService {
    coordinator: Coordinator,
    metrics: Metrics,
}

impl KvService {
    /// A service over `coordinator`, counting requests in `metrics`.
    pub fn new(coordinator: Coordinator, metrics: Metrics) -> Self {
        Self {
            coordinator,
            metrics,
        }
    }

    /// Records one request's outcome and latency.
    fn observe<T>(&self, op: Op, started: Instant, result: &Result<T, CoordinatorError>) {
        let outcome = match result {
            Ok(_) => Outcome::Ok,
            Err(error) => Outcome::of_error(error),
        };
        self.metrics
            .observe(Api::Grpc, op, outcome, started.elapsed());
    }
}

/// The response header that carries the answering node's topology version.
pub const TOPOLOGY_HEADER: &str = "dynamo-topology";

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
    fn topology(&self, known_version: &str) -> TopologyResponse {
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
                    state: super::admin::state_to_proto(m.state()) as i32,
                    reachable: cluster.is_available(m.id()),
                })
                .collect(),
            replication_factor: self.coordinator.quorum().n(),
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

fn decode_context(bytes: &[u8]) -> Result<VectorClock, Status> {
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
            .put(&request.key, context, None, request.w)
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
        Ok(Response::new(self.topology(&request.known_version)))
    }
}
