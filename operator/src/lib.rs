//! The Kubernetes operator of the Dynamo store: the `DynamoCluster` custom resource and
//! the pure parts of its reconciler.
//!
//! It replaces the paper's administrator with a command-line tool (Dynamo §4.3: "an
//! administrator uses a command line tool ... to explicitly add and remove nodes"): the
//! operator turns a `DynamoCluster` into Kubernetes objects and changes ring membership
//! one explicit step at a time through the nodes' `Admin` API.
//!
//! The pure parts (no I/O), tested without a cluster:
//! * [`crd`]: the resource, its schema and defaults, per-node weights.
//! * [`builders`]: the owned objects (ConfigMap, Services, StatefulSet,
//!   PodDisruptionBudget, NetworkPolicy, admin token Secret) as functions of the resource.
//! * [`planner`]: the membership planner, from desired and observed state to the single
//!   next step.
//! * [`rollout`]: health-gated pod template rollouts, one pod at a time.
//! * [`storage`]: growing the volumes in place.
//! * [`yaml`]: YAML that kubectl and Helm (YAML 1.1) read as serde does (YAML 1.2).
//! * [`controller::status`]: the status a pass writes.
//!
//! The shell:
//! * [`admin`]: the nodes' `Admin` gRPC API behind the [`admin::NodeAdmin`] trait.
//! * [`controller`]: the kube-rs controller: apply the objects, read pods and the ring,
//!   execute the planner's step, write status and events; finalizer on deletion.
//! * [`metrics`]: Prometheus metrics of the reconciler; [`http`]: `/metrics`, `/healthz`,
//!   `/readyz`.
//!
//! * [`leader`]: run the controller only while holding the leader Lease.
//! * [`apply_cluster`]: the `apply-cluster` task (a DynamoCluster from a file, once its
//!   CRD is served), which the Helm chart runs for `cluster.enabled`.
//!
//! The `dynamo-operator` binary wires these together with logs and flags.

pub mod admin;
pub mod apply_cluster;
pub mod builders;
pub mod controller;
pub mod crd;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod planner;
pub mod rollout;
pub mod storage;
pub mod yaml;

#[cfg(test)]
pub(crate) mod fixtures;
