//! The client API: Dynamo's get() and put() (§4.1), plus delete.

use tonic::{Request, Response, Status};

use super::coordinator_status;
use std::time::Instant;

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::metrics::{Api, Metrics, Op, Outcome};
use crate::proto::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse, kv_server,
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
        Ok(Response::new(GetResponse {
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
        // Every client put counts, and its latency steers the background budget.
        self.observe(Op::Put, started, &result);
        let new_context = result.map_err(|e| coordinator_status(&e))?;
        Ok(Response::new(PutResponse {
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
        Ok(Response::new(DeleteResponse {
            context: context::encode(&new_context).into(),
        }))
    }
}
