//! The Kubernetes operator of the Dynamo store: the `DynamoCluster` custom resource and
//! the pure parts of its reconciler.
//!
//! It replaces the paper's administrator with a command-line tool (Dynamo §4.3: "an
//! administrator uses a command line tool ... to explicitly add and remove nodes"): the
//! operator turns a `DynamoCluster` into Kubernetes objects and changes ring membership
//! one explicit step at a time through the nodes' `Admin` API.
//!
//! Everything here is pure (no I/O), so it is tested without a cluster:
//! * [`crd`]: the resource, its schema and defaults, per-node weights.
//! * [`builders`]: the owned objects (ConfigMap, Services, StatefulSet,
//!   PodDisruptionBudget, NetworkPolicy, admin token Secret) as functions of the resource.
//! * [`planner`]: the membership planner, from desired and observed state to the single
//!   next step.
//! * [`yaml`]: YAML that kubectl and Helm (YAML 1.1) read as serde does (YAML 1.2).
//!
//! The controller that reads the cluster, applies the objects and executes the steps
//! comes next; see `operator/README.md`.

pub mod builders;
pub mod crd;
pub mod planner;
pub mod yaml;

#[cfg(test)]
pub(crate) mod fixtures;
