//! The controller: watches `DynamoCluster`s and the objects they own, and each pass
//!
//! 1. applies the builders' objects (server-side apply, field manager
//!    [`FIELD_MANAGER`], owner references set by the builders), skipping those whose
//!    last applied content is unchanged so a pass that changes nothing writes nothing;
//!    keeps the StatefulSet's pod template and the node config while the spec they are
//!    rendered from is unchanged (a new operator release restarts nothing);
//!    creates the generated admin token Secret once if the spec names none;
//! 2. reads the real state: the StatefulSet's replicas, the pods' own status, the
//!    member table through the nodes' `Admin.Ring`, and each ready member's transfer
//!    progress and key count through `Admin.Status`;
//! 3. asks [`planner::plan`](crate::planner::plan) for the one next step and executes
//!    exactly that step (join, set weight, decommission, resize the StatefulSet), and
//!    [`rollout::next_partition`](crate::rollout::next_partition) whether the next pod
//!    may restart on a new pod template;
//! 4. publishes an Event for every step taken, writes the status through the status
//!    subresource when it changed, and requeues: soon while something moves, rarely
//!    once converged, with backoff after errors.
//!
//! Level-triggered: nothing is carried from one pass to the next except the failure
//! count behind the backoff. Ring state changes (a join finishing, a node leaving) are
//! not Kubernetes events, so a pass that waits on one polls.
//!
//! Deleting a cluster goes through a finalizer ([`FINALIZER`]): the volumes are deleted
//! only if `storage.retainOnDelete` is false; garbage collection removes the rest.

mod observe;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalize, finalizer};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use observe::{
    PodStates, RingRead, apply_statuses, pod_states, read_ring, read_statuses, status_ordinals,
};

use crate::admin::{AdminError, AdminTarget, AdminTls, NodeAdmin, NodeStatus};
use crate::builders::{self, BuildError};
use crate::crd::DynamoCluster;
use crate::metrics::Metrics;
use crate::planner::{
    Desired, ObserveError, Observed, REPLACE_ANNOTATION, Step, WaitReason, members_from_ring, plan,
    replace_request,
};
use crate::rollout::{self, RolloutView};
use crate::storage::{self, VolumeChange};
use status::Refusal;

/// The server-side apply field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "dynamo-operator";
/// The finalizer that holds a deleted cluster until its volumes are dealt with.
pub const FINALIZER: &str = "dynamo.example.org/cleanup";
/// Annotation on each applied object: a hash of what was last applied, so an unchanged
/// object is not applied again (an apply can bump `resourceVersion` even when nothing
/// changed, and the watch on owned objects would then trigger another pass).
pub const APPLIED_HASH_ANNOTATION: &str = "dynamo.example.org/applied-hash";
/// Label selecting the objects the operator manages (the builders set it).
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=dynamo-operator";

/// Why a pass failed. Every failure requeues with backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks what the API server always sets.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// An `Admin` call failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// No node answered `Admin.Ring`, so the ring is unknown and nothing is decided.
    #[error("no node answered Admin.Ring: {0}")]
    RingUnreadable(String),
    /// The member table cannot be mapped onto this cluster's pods.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// A membership change needs a ready member to send it to, and none answered.
    #[error("no ready member answered to take the change")]
    NoAdminPeer,
    /// A Secret the spec names is missing or lacks a key.
    #[error("secret {name}: {reason}")]
    Secret {
        /// The Secret's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The system's random source failed while generating the admin token.
    #[error("no randomness for the admin token: {0}")]
    Random(String),
    /// A member did not answer `Admin.Status`, so whether its ranges still move is
    /// unknown and nothing is decided.
    #[error("member {node} did not answer Admin.Status: {error}")]
    StatusUnreadable {
        /// The member's node id.
        node: String,
        /// Why.
        error: AdminError,
    },
    /// An object could not be serialized for hashing.
    #[error("serializing {0}")]
    Serialize(#[from] serde_json::Error),
    /// Adding or removing the finalizer failed, or the wrapped pass failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The reason a failed pass is reported under on the resource (the Degraded
    /// condition and the Warning event), `PascalCase` as Kubernetes reasons are.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self.label() {
            "kube" => "KubernetesApiError",
            "build" => "MalformedObject",
            "admin" => "AdminCallFailed",
            "ring_unreadable" => "RingUnreadable",
            "foreign_member" => "ForeignMember",
            "no_admin_peer" => "NoAdminPeer",
            "secret" => "SecretUnusable",
            "random" => "NoRandomness",
            "status_unreadable" => "StatusUnreadable",
            "serialize" => "SerializeFailed",
            _ => "ReconcileFailed",
        }
    }

    /// A short label for metrics.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Build(_) => "build",
            Self::Admin(_) => "admin",
            Self::RingUnreadable(_) => "ring_unreadable",
            Self::Observe(_) => "foreign_member",
            Self::NoAdminPeer => "no_admin_peer",
            Self::Secret { .. } => "secret",
            Self::Random(_) => "random",
            Self::StatusUnreadable { .. } => "status_unreadable",
            Self::Serialize(_) => "serialize",
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.label(),
                _ => "finalizer",
            },
        }
    }
}

/// Where the nodes of a cluster are reached: their `Admin` URL and the internode address
/// they advertise (which a join records in the member table).
pub trait NodeEndpoints: Send + Sync {
    /// The `Admin` URL of a node (`https://` when the cluster uses TLS).
    fn admin_url(&self, namespace: &str, cluster: &str, ordinal: u32, tls: bool) -> String;
    /// The internode address the node advertises.
    fn advertise(&self, namespace: &str, cluster: &str, ordinal: u32) -> String;
}

/// Nodes by their stable DNS names in the headless Service, as the StatefulSet's pods
/// advertise themselves: `db-3.db-peers.prod.svc:7001`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerDns;

impl NodeEndpoints for PeerDns {
    fn admin_url(&self, namespace: &str, cluster: &str, ordinal: u32, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!(
            "{scheme}://{}",
            builders::peer_address(cluster, namespace, ordinal)
        )
    }

    fn advertise(&self, namespace: &str, cluster: &str, ordinal: u32) -> String {
        builders::peer_address(cluster, namespace, ordinal)
    }
}

/// How often passes run when no watch event triggers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// While a step is in flight or waited on (a join finishing, a pod starting).
    pub poll: Duration,
    /// Once converged or refused: re-reads the ring to catch drift.
    pub resync: Duration,
    /// The first retry after an error; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(5),
            resync: Duration::from_secs(300),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl Intervals {
    /// The delay before retry number `failures` (1 after the first failure).
    #[must_use]
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.backoff_base
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }
}

/// What every pass shares.
pub struct Context {
    client: Client,
    admin: Arc<dyn NodeAdmin>,
    endpoints: Arc<dyn NodeEndpoints>,
    /// The operator's own namespace: the clusters' NetworkPolicies admit its pods from
    /// there to the nodes' admin port.
    operator_namespace: String,
    /// Namespaces whose pods may scrape the nodes' `/metrics` (a Prometheus elsewhere).
    metrics_namespaces: Vec<String>,
    recorder: Recorder,
    metrics: Metrics,
    intervals: Intervals,
    /// Consecutive failures per cluster (namespace, name), for the backoff. A std Mutex:
    /// held only to bump or clear a count, never across an await.
    failures: Mutex<HashMap<(String, String), u32>>,
}

impl Context {
    /// A context over an API client and the nodes' `Admin` API, for an operator running
    /// in `operator_namespace`.
    #[must_use]
    pub fn new(
        client: Client,
        admin: Arc<dyn NodeAdmin>,
        endpoints: Arc<dyn NodeEndpoints>,
        operator_namespace: String,
        reporter: Reporter,
        metrics: Metrics,
        intervals: Intervals,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            admin,
            endpoints,
            operator_namespace,
            metrics_namespaces: Vec::new(),
            metrics,
            intervals,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The same context, with every cluster's NetworkPolicy admitting the pods of
    /// `namespaces` to the nodes' HTTP port (`/metrics`).
    #[must_use]
    pub fn with_metrics_namespaces(self, namespaces: Vec<String>) -> Self {
        Self {
            metrics_namespaces: namespaces,
            ..self
        }
    }

    /// The metrics this context records into.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        // A panic elsewhere while holding this lock leaves only a counter behind.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn key(cluster: &DynamoCluster) -> (String, String) {
    (cluster.namespace().unwrap_or_default(), cluster.name_any())
}

/// One pass over a cluster: the finalizer, then [`apply`](Finalize::Apply) or
/// [`cleanup`](Finalize::Cleanup).
///
/// # Errors
/// Any [`Error`]; the controller then calls [`error_policy`].
pub async fn reconcile(cluster: Arc<DynamoCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = cluster.namespace().ok_or(BuildError::MissingNamespace)?;
    let api: Api<DynamoCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = key(&cluster);
    let action = finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            Finalize::Apply(cluster) => {
                let result = apply(&cluster, &ctx).await;
                if let Err(error) = &result {
                    report_failure(&ctx, &cluster, error).await;
                }
                result
            }
            Finalize::Cleanup(cluster) => cleanup(&cluster, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.failures().remove(&key);
    Ok(action)
}

/// After a failed pass: count it and retry with exponential backoff.
#[must_use]
pub fn error_policy(cluster: Arc<DynamoCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.label());
    let failures = {
        let mut failures = ctx.failures();
        let count = failures.entry(key(&cluster)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = ctx.intervals.backoff(failures);
    tracing::warn!(
        cluster = %cluster.name_any(), namespace = ?cluster.namespace(),
        error = %error, failures, retry_in = ?delay, "reconcile failed"
    );
    Action::requeue(delay)
}

/// Runs the controller until `shutdown` resolves: all namespaces, or only `namespace`.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Resource<DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    Controller::new(
        api::<DynamoCluster>(&client, namespace),
        watcher::Config::default(),
    )
    .owns(api::<ConfigMap>(&client, namespace), owned.clone())
    .owns(api::<Service>(&client, namespace), owned.clone())
    .owns(api::<StatefulSet>(&client, namespace), owned.clone())
    .owns(
        api::<PodDisruptionBudget>(&client, namespace),
        owned.clone(),
    )
    .owns(api::<NetworkPolicy>(&client, namespace), owned)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
            Err(error) => tracing::debug!(%error, "controller"),
        }
    })
    .await;
}

/// A stable hash of an object's JSON (FNV-1a, 64 bits): equal content, equal hash, across
/// operator restarts and versions.
fn content_hash<K: Serialize>(object: &K) -> Result<String, serde_json::Error> {
    let bytes = serde_json::to_vec(object)?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{hash:016x}"))
}

/// `object` as the controller applies it: with [`APPLIED_HASH_ANNOTATION`] set to the
/// hash of its content.
///
/// # Errors
/// The object does not serialize.
pub fn with_applied_hash<K: Resource + Serialize>(mut object: K) -> Result<K, serde_json::Error> {
    let hash = content_hash(&object)?;
    object
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash);
    Ok(object)
}

/// Server-side applies `object` unless `current` already carries the hash of the same
/// content. Returns whether it applied.
async fn ensure_applied<K>(api: &Api<K>, object: K, current: Option<&K>) -> Result<bool, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = object.meta().name.clone().ok_or(BuildError::MissingName)?;
    let object = with_applied_hash(object)?;
    let applied = current.and_then(|c| c.annotations().get(APPLIED_HASH_ANNOTATION));
    if applied.is_some() && applied == object.annotations().get(APPLIED_HASH_ANNOTATION) {
        return Ok(false);
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await?;
    Ok(true)
}

/// The API's refusal of `kind`'s apply as a [`Refusal`] the pass goes on without: a
/// client error (4xx) other than throttling, which no retry fixes. Other errors are the
/// pass's.
fn refusal_of<T>(kind: &str, result: Result<T, Error>) -> Result<Option<Refusal>, Error> {
    match result {
        Ok(_) => Ok(None),
        Err(Error::Kube(kube::Error::Api(refused)))
            if (400..500).contains(&refused.code) && refused.code != 429 =>
        {
            Ok(Some(Refusal {
                reason: status::CHILD_REFUSED,
                message: format!("the API refused the {kind}: {}", refused.message),
            }))
        }
        Err(other) => Err(other),
    }
}

/// Reason of the Event of a storage growth carried out.
const EXPANDING_VOLUMES: &str = "ExpandingVolumes";

/// Grows the claims of the StatefulSet's `replicas` pods to `to` (those that ask for
/// less), then deletes the StatefulSet, orphaning its pods and claims, so the next pass
/// creates it again with the new claim template (see [`storage`]).
///
/// # Errors
/// The API's refusal of a claim patch (403 or 422 when the class cannot expand), or of
/// the deletion.
async fn expand_volumes(
    ctx: &Context,
    namespace: &str,
    name: &str,
    replicas: u32,
    current: &StatefulSet,
    to: &str,
) -> Result<(), Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    for ordinal in 0..replicas {
        let claim_name = claim_name(name, ordinal);
        let Some(claim) = claims.get_opt(&claim_name).await? else {
            continue;
        };
        if storage::claim_needs_growth(&claim, to) {
            let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": to}}}});
            claims
                .patch(&claim_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let params = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
        preconditions: current
            .metadata
            .uid
            .clone()
            .map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
        ..DeleteParams::default()
    };
    statefulsets.delete(name, &params).await?;
    Ok(())
}

/// The StatefulSet's `rollingUpdate.partition`, 0 when unset.
fn current_partition(statefulset: Option<&StatefulSet>) -> u32 {
    statefulset
        .and_then(|s| s.spec.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0)
}

/// A namespaced object the controller reads and applies.
trait Child:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
{
}

impl<K> Child for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
{
}

/// Creates `object` unless it exists, leaving an existing one as it is.
async fn create_child_if_absent<K>(
    client: &Client,
    namespace: &str,
    object: K,
) -> Result<bool, Error>
where
    K: Child,
{
    write_child(client, namespace, object, false).await
}

/// Reads the current object and applies `object` over it if it changed.
async fn apply_child<K>(client: &Client, namespace: &str, object: K) -> Result<bool, Error>
where
    K: Child,
{
    write_child(client, namespace, object, true).await
}

/// Reads the current object; applies `object` if there is none, or if `overwrite` and
/// its content changed. Returns whether it applied.
async fn write_child<K>(
    client: &Client,
    namespace: &str,
    object: K,
    overwrite: bool,
) -> Result<bool, Error>
where
    K: Child,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().ok_or(BuildError::MissingName)?;
    match api.get_opt(&name).await? {
        Some(_) if !overwrite => Ok(false),
        current => ensure_applied(&api, object, current.as_ref()).await,
    }
}

/// The data of a Secret, `None` when it does not exist.
async fn secret_data(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<Option<std::collections::BTreeMap<String, Vec<u8>>>, Error> {
    Ok(secrets.get_opt(name).await?.map(|secret| {
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

/// The admin token from its Secret: the one `spec.adminTokenSecret` names, else the
/// generated one, which is created here if it does not exist yet. Never re-applied or
/// rotated: the running nodes hold the token they started with.
async fn admin_token(secrets: &Api<Secret>, cluster: &DynamoCluster) -> Result<String, Error> {
    let name = builders::admin_token_secret_name(cluster)?;
    let secret_error = |reason: &str| Error::Secret {
        name: name.clone(),
        reason: reason.to_owned(),
    };
    let data = match secret_data(secrets, &name).await? {
        Some(data) => data,
        None if cluster.spec.admin_token_secret.is_none() => {
            create_admin_token(secrets, cluster, &name).await?
        }
        None => return Err(secret_error("not found")),
    };
    let token = data
        .get(builders::ADMIN_TOKEN_KEY)
        .ok_or_else(|| secret_error("no key `token`"))?;
    let token = std::str::from_utf8(token).map_err(|_| secret_error("`token` is not UTF-8"))?;
    Ok(token.trim_end_matches(['\r', '\n']).to_owned())
}

/// Creates the generated admin token Secret.
async fn create_admin_token(
    secrets: &Api<Secret>,
    cluster: &DynamoCluster,
    name: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, Error> {
    let random = random_token_bytes()?;
    let secret = builders::admin_token_secret(cluster, &random)?.ok_or_else(|| Error::Secret {
        name: name.to_owned(),
        reason: "not found".to_owned(),
    })?;
    create_once(secrets, cluster, secret, "the admin token").await
}

/// Randomness for a generated token, from the OS's cryptographic generator.
fn random_token_bytes() -> Result<[u8; builders::ADMIN_TOKEN_BYTES], Error> {
    let mut random = [0u8; builders::ADMIN_TOKEN_BYTES];
    getrandom::fill(&mut random).map_err(|e| Error::Random(e.to_string()))?;
    Ok(random)
}

/// Makes sure the cluster's internode secret exists (see
/// [`builders::internode_token_secret`]): the pods mount it and refuse to start
/// without it. Created once, never re-applied: a new secret on every pass would split
/// the running nodes from the ones that restart.
async fn ensure_internode_token(
    secrets: &Api<Secret>,
    cluster: &DynamoCluster,
) -> Result<(), Error> {
    let name = builders::internode_token_secret_name(&cluster.name_any());
    if secret_data(secrets, &name).await?.is_some() {
        return Ok(());
    }
    let secret = builders::internode_token_secret(cluster, &random_token_bytes()?)?;
    create_once(secrets, cluster, secret, "the internode secret").await?;
    Ok(())
}

/// Creates a generated Secret (`create`, not apply: an existing one is never
/// overwritten) and returns its data. If another writer created it first (a previous
/// leader, or a pass whose reply was lost), theirs is read and used.
async fn create_once(
    secrets: &Api<Secret>,
    cluster: &DynamoCluster,
    secret: Secret,
    what: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, Error> {
    let name = secret.name_any();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match secrets.create(&params, &secret).await {
        Ok(created) => {
            tracing::info!(cluster = %cluster.name_any(), secret = %name, "created {what}");
            let data = created.data.or(secret.data).unwrap_or_default();
            Ok(data.into_iter().map(|(k, v)| (k, v.0)).collect())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => secret_data(secrets, &name)
            .await?
            .ok_or_else(|| Error::Secret {
                name,
                reason: "not found".to_owned(),
            }),
        Err(e) => Err(e.into()),
    }
}

/// The TLS material `spec.tls` names: the CA the nodes' certificates chain to, and the
/// client identity for mutual TLS.
async fn admin_tls(
    secrets: &Api<Secret>,
    cluster: &DynamoCluster,
) -> Result<Option<AdminTls>, Error> {
    let Some(spec) = &cluster.spec.tls else {
        return Ok(None);
    };
    let secret_error = |reason: &str| Error::Secret {
        name: spec.secret_name.clone(),
        reason: reason.to_owned(),
    };
    let mut data = secret_data(secrets, &spec.secret_name)
        .await?
        .ok_or_else(|| secret_error("not found"))?;
    let ca_pem = data.remove("ca.crt").ok_or_else(|| {
        secret_error("no key `ca.crt`: the operator needs it to verify the nodes")
    })?;
    let identity = data.remove("tls.crt").zip(data.remove("tls.key"));
    Ok(Some(AdminTls { ca_pem, identity }))
}

/// The admin token and TLS material, read fresh each pass.
async fn credentials(
    client: &Client,
    namespace: &str,
    cluster: &DynamoCluster,
) -> Result<(Option<String>, Option<AdminTls>), Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let token = admin_token(&secrets, cluster).await?;
    ensure_internode_token(&secrets, cluster).await?;
    let tls = admin_tls(&secrets, cluster).await?;
    Ok((Some(token), tls))
}

/// The pass for a live cluster: apply the children, observe the pods and the ring,
/// plan one step, apply the StatefulSet (its size, its volumes, the rollout's partition),
/// take the step, and report it in the status.
async fn apply(cluster: &DynamoCluster, ctx: &Context) -> Result<Action, Error> {
    let name = cluster
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingName)?;
    let namespace = cluster.namespace().ok_or(BuildError::MissingNamespace)?;
    let selector = builders::selector_string(name);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let desired = match Desired::from_spec(&cluster.spec) {
        Ok(desired) => desired,
        Err(error) => {
            report_invalid_spec(ctx, cluster, &namespace, &selector, &now, &error).await?;
            return Ok(Action::requeue(ctx.intervals.resync));
        }
    };
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    // Read first: whether the pod template is kept decides whether the node config is.
    let current = CurrentSet::read(cluster, &statefulsets).await?;
    let mut refusals = apply_children(ctx, cluster, &namespace, current.keep_template).await?;
    let pod_states = list_pods(ctx, &namespace, name, &selector).await?;

    let (token, tls) = credentials(&ctx.client, &namespace, cluster).await?;
    let target = |ordinal: u32| AdminTarget {
        url: ctx
            .endpoints
            .admin_url(&namespace, name, ordinal, tls.is_some()),
        token: token.clone(),
        tls: tls.clone(),
    };
    let seen = observe(ctx, name, pod_states, current.replicas, now.0, &target).await?;
    let replace = replace_requested(ctx, cluster, &namespace, &seen.observed).await?;
    let desired = desired.with_replace(replace);
    let step = plan(&desired, &seen.observed);
    tracing::info!(cluster = name, namespace, %step, detail = ?step, "planned");

    let Some(applied) = apply_statefulset(
        ctx,
        cluster,
        &statefulsets,
        &current,
        &seen,
        &step,
        &mut refusals,
    )
    .await?
    else {
        // The StatefulSet is being re-created around its pods (a volume growth).
        return Ok(Action::requeue(ctx.intervals.poll));
    };
    publish_refusals(ctx, cluster, &refusals).await;

    // A resize needs the StatefulSet the API just refused; every other step does not.
    let took_step = if applied.statefulset_applied
        || !matches!(
            step,
            Step::GrowStatefulSet { .. } | Step::ShrinkStatefulSet { .. }
        ) {
        let replicas = current.replicas;
        execute(
            ctx, cluster, &namespace, &step, replicas, &seen.ring, &target,
        )
        .await?
    } else {
        false
    };
    publish_step(ctx, cluster, &step, took_step).await;

    let pass = status::Pass {
        generation: cluster.metadata.generation,
        observed: &seen.observed,
        step: &step,
        replication_factor: desired.replication_factor(),
        selector: &selector,
        rollout: applied.rollout_status.as_deref(),
        refusals: &refusals,
    };
    let status = status::cluster_status(&pass, cluster.status.as_ref(), &now);
    write_status(ctx, cluster, &namespace, status).await?;

    // Node-side conditions (transfers, hints) change without Kubernetes events, so a
    // pass that waits on one polls.
    Ok(match step {
        Step::Done | Step::Refuse { .. } if !applied.rollout.in_progress() => {
            Action::requeue(ctx.intervals.resync)
        }
        _ => Action::requeue(ctx.intervals.poll),
    })
}

/// The StatefulSet as the pass found it.
struct CurrentSet {
    statefulset: Option<StatefulSet>,
    /// Its `spec.replicas` (0 without one).
    replicas: u32,
    /// Whether its pod template stays this pass (see [`rollout::keeps_template`]).
    keep_template: bool,
}

impl CurrentSet {
    async fn read(cluster: &DynamoCluster, statefulsets: &Api<StatefulSet>) -> Result<Self, Error> {
        let statefulset = statefulsets.get_opt(&cluster.name_any()).await?;
        let replicas = statefulset
            .as_ref()
            .and_then(|s| s.spec.replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0);
        let keep_template = rollout::keeps_template(
            &builders::template_inputs_hash(cluster),
            statefulset.as_ref(),
        );
        Ok(Self {
            statefulset,
            replicas,
            keep_template,
        })
    }
}

/// What the pass read before planning.
struct Observation {
    pod_states: PodStates,
    ring: RingRead,
    statuses: BTreeMap<u32, NodeStatus>,
    observed: Observed,
}

/// What applying the StatefulSet did.
struct StatefulSetApplied {
    /// False when the API refused it (the refusal is in the pass's list).
    statefulset_applied: bool,
    rollout: rollout::Rollout,
    /// The rollout for the status, while one is in progress.
    rollout_status: Option<String>,
}

/// Applies the StatefulSet: the planner's replica count, the storage edit, the
/// rollout's partition. `None` when the StatefulSet is being re-created around its pods
/// after its claims grew (the pass ends there); refusals go to `refusals`.
async fn apply_statefulset(
    ctx: &Context,
    cluster: &DynamoCluster,
    statefulsets: &Api<StatefulSet>,
    current: &CurrentSet,
    seen: &Observation,
    step: &Step,
    refusals: &mut Vec<Refusal>,
) -> Result<Option<StatefulSetApplied>, Error> {
    let sts_replicas = match *step {
        Step::GrowStatefulSet { to } | Step::ShrinkStatefulSet { to } => to,
        _ => current.replicas,
    };
    let mut statefulset = builders::statefulset(cluster, sts_replicas)?;
    let existing = current.statefulset.as_ref();
    if let Some(running) = existing.filter(|_| current.keep_template) {
        statefulset.spec.template = running.spec.template.clone();
    }
    if let Some(running) = existing {
        match storage_edit(ctx, cluster, current.replicas, running).await? {
            StorageEdit::None => {}
            StorageEdit::Recreating => return Ok(None),
            StorageEdit::Refused(message) => {
                storage::keep_claim_templates(&mut statefulset, running);
                refusals.push(Refusal {
                    reason: status::VOLUME_EXPANSION_REFUSED,
                    message,
                });
            }
        }
    }
    let (rollout, updated) = plan_rollout(cluster, current, seen, sts_replicas);
    builders::set_partition(&mut statefulset, rollout.partition);
    let refused = refusal_of(
        "StatefulSet",
        ensure_applied(statefulsets, statefulset, existing).await,
    )?;
    let statefulset_applied = refused.is_none();
    refusals.extend(refused);
    announce_rollout(ctx, cluster, &rollout, current_partition(existing)).await;
    Ok(Some(StatefulSetApplied {
        statefulset_applied,
        rollout_status: rollout.describe(updated, sts_replicas),
        rollout,
    }))
}

/// A spec the planner cannot read: the status says why, and nothing else changes.
async fn report_invalid_spec(
    ctx: &Context,
    cluster: &DynamoCluster,
    namespace: &str,
    selector: &str,
    now: &Time,
    error: &impl std::fmt::Display,
) -> Result<(), Error> {
    tracing::warn!(cluster = %cluster.name_any(), %error, "invalid spec");
    let message = error.to_string();
    let status = status::degraded_status(
        status::Degradation {
            generation: cluster.metadata.generation,
            reason: "InvalidSpec",
            message: &message,
            progressing: Some(false),
        },
        selector,
        cluster.status.as_ref(),
        now,
    );
    write_status(ctx, cluster, namespace, status).await
}

/// Applies the children beside the StatefulSet (config, Services, disruption budget,
/// network policy); returns what the API refused.
///
/// What the API refuses (an invalid object, a webhook, a quota) is reported and the
/// pass goes on: membership work that does not depend on the refused object must not
/// wait behind it. Errors that may pass (the API unreachable, throttling) fail it.
async fn apply_children(
    ctx: &Context,
    cluster: &DynamoCluster,
    namespace: &str,
    keep_template: bool,
) -> Result<Vec<Refusal>, Error> {
    let client = &ctx.client;
    let mut refusals: Vec<Refusal> = Vec::new();
    let config = if keep_template {
        // The running pods' config stays with their template: a new operator release
        // may render keys their image does not know.
        create_child_if_absent(client, namespace, builders::config_map(cluster)?).await
    } else {
        apply_child(client, namespace, builders::config_map(cluster)?).await
    };
    refusals.extend(refusal_of("ConfigMap", config)?);
    refusals.extend(refusal_of(
        "Service",
        apply_child(client, namespace, builders::headless_service(cluster)?).await,
    )?);
    refusals.extend(refusal_of(
        "Service",
        apply_child(client, namespace, builders::client_service(cluster)?).await,
    )?);
    refusals.extend(refusal_of(
        "PodDisruptionBudget",
        apply_child(client, namespace, builders::pod_disruption_budget(cluster)?).await,
    )?);
    let policy = builders::network_policy_admitting(
        cluster,
        &ctx.operator_namespace,
        &ctx.metrics_namespaces,
    )?;
    refusals.extend(refusal_of(
        "NetworkPolicy",
        apply_child(client, namespace, policy).await,
    )?);
    Ok(refusals)
}

/// The cluster's pods, by ordinal.
async fn list_pods(
    ctx: &Context,
    namespace: &str,
    name: &str,
    selector: &str,
) -> Result<PodStates, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pod_list = pods.list(&ListParams::default().labels(selector)).await?;
    Ok(pod_states(name, &pod_list.items))
}

/// What the planner sees: the pods (listed by the caller), the ring as the nodes report
/// it, and each member's status.
async fn observe(
    ctx: &Context,
    name: &str,
    pod_states: PodStates,
    replicas: u32,
    now: k8s_openapi::jiff::Timestamp,
    target: &impl Fn(u32) -> AdminTarget,
) -> Result<Observation, Error> {
    let ring = read_ring(ctx.admin.as_ref(), &pod_states, target)
        .await
        .map_err(|unanswered| {
            Error::RingUnreadable(
                unanswered
                    .iter()
                    .map(|(o, e)| format!("{}: {e}", builders::pod_name(name, *o)))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
    for (ordinal, error) in &ring.unanswered {
        tracing::warn!(cluster = %name, ordinal, %error, "node did not answer Admin.Ring");
    }
    let mut members = members_from_ring(name, ring.members.iter().map(|m| m.ring_member()))?;
    let statuses = read_statuses(
        ctx.admin.as_ref(),
        status_ordinals(&members, &pod_states),
        target,
    )
    .await
    .map_err(|(ordinal, error)| Error::StatusUnreadable {
        node: builders::pod_name(name, ordinal),
        error,
    })?;
    apply_statuses(&mut members, &statuses);
    let observed = Observed {
        statefulset_replicas: replicas,
        running: pod_states.running.clone(),
        ready: pod_states.ready.clone(),
        members,
        unready_for: pod_states.unready_for(now),
    };
    Ok(Observation {
        pod_states,
        ring,
        statuses,
        observed,
    })
}

/// The node the replace annotation asks to replace, if the request is valid; an
/// invalid one is reported (an event) and its annotation cleared.
async fn replace_requested(
    ctx: &Context,
    cluster: &DynamoCluster,
    namespace: &str,
    observed: &Observed,
) -> Result<Option<u32>, Error> {
    let Some(value) = cluster.annotations().get(REPLACE_ANNOTATION) else {
        return Ok(None);
    };
    let name = cluster.name_any();
    match replace_request(&name, value, observed) {
        Ok(ordinal) => Ok(Some(ordinal)),
        Err(refusal) => {
            tracing::warn!(cluster = %name, %refusal, "replace refused");
            publish(
                ctx,
                cluster,
                EventType::Warning,
                "ReplaceRefused",
                refusal.to_string(),
            )
            .await;
            clear_replace_annotation(ctx, cluster, namespace).await?;
            Ok(None)
        }
    }
}

/// What a storage size edit does this pass.
enum StorageEdit {
    /// The size is unchanged.
    None,
    /// The claims were grown and the StatefulSet is being re-created around its pods.
    Recreating,
    /// The edit cannot be made; the claim template stays and this says why.
    Refused(String),
}

/// A storage edit: grow the claims and re-create the StatefulSet around its pods, or
/// keep its claim template (and say why) when that cannot be done.
async fn storage_edit(
    ctx: &Context,
    cluster: &DynamoCluster,
    replicas: u32,
    current: &StatefulSet,
) -> Result<StorageEdit, Error> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().ok_or(BuildError::MissingNamespace)?;
    let change = storage::volume_change(
        &cluster.spec.storage.size,
        storage::claim_template_size(current),
    );
    match change {
        VolumeChange::Unchanged => Ok(StorageEdit::None),
        VolumeChange::Shrink { from, to } => Ok(StorageEdit::Refused(format!(
            "storage.size {to} is smaller than the volumes' {from}: volumes cannot shrink \
             in place; the volumes stay at {from}"
        ))),
        VolumeChange::Grow { from, to } => {
            match expand_volumes(ctx, &namespace, &name, replicas, current, &to).await {
                Ok(()) => {
                    publish(
                        ctx,
                        cluster,
                        EventType::Normal,
                        EXPANDING_VOLUMES,
                        format!(
                            "volume claims grown from {from} to {to}; the StatefulSet is \
                             re-created around its running pods"
                        ),
                    )
                    .await;
                    Ok(StorageEdit::Recreating)
                }
                Err(Error::Kube(kube::Error::Api(refused)))
                    if matches!(refused.code, 403 | 422) =>
                {
                    Ok(StorageEdit::Refused(format!(
                        "growing the volumes from {from} to {to} was refused: {}; the \
                         volumes stay at {from} (the storage class must allow volume \
                         expansion)",
                        refused.message
                    )))
                }
                Err(other) => Err(other),
            }
        }
    }
}

/// The pod template rollout's next partition, and how many pods run the new template.
fn plan_rollout(
    cluster: &DynamoCluster,
    current: &CurrentSet,
    seen: &Observation,
    sts_replicas: u32,
) -> (rollout::Rollout, usize) {
    let hint_backlogs: BTreeMap<u32, u64> = seen
        .statuses
        .iter()
        .map(|(&ordinal, status)| {
            let hints = status
                .hint_backlog
                .values()
                .fold(0_u64, |sum, h| sum.saturating_add(*h));
            (ordinal, hints)
        })
        .collect();
    let existing_sts = current.statefulset.as_ref();
    let update_revision = existing_sts
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.update_revision.as_deref());
    // The pods that may run another template: the StatefulSet's, or, while it is being
    // re-created around its pods (a volume growth), the pods that are there.
    let existing = if existing_sts.is_some() {
        current.replicas
    } else {
        seen.pod_states
            .revisions
            .keys()
            .next_back()
            .map_or(0, |&ordinal| ordinal + 1)
    };
    let template_changes = existing > 0 && !current.keep_template;
    // After a template change no pod runs the revision it will make.
    let updated = update_revision
        .filter(|_| !template_changes)
        .map(|revision| seen.pod_states.on_revision(revision))
        .unwrap_or_default();
    let rollout = rollout::next_partition(&RolloutView {
        replicas: sts_replicas,
        existing,
        partition: current_partition(existing_sts),
        template_changes,
        revisions_observed: existing_sts.is_some_and(|s| {
            s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
        }),
        updated: &updated,
        ready: &seen.pod_states.ready,
        paused: cluster
            .annotations()
            .get(rollout::PAUSE_ANNOTATION)
            .is_some_and(|v| v == "true"),
        health: rollout::ring_health(&seen.observed, &hint_backlogs),
    });
    (rollout, updated.len())
}

/// Says when the rollout restarts a pod, and logs why it holds.
async fn announce_rollout(
    ctx: &Context,
    cluster: &DynamoCluster,
    rollout: &rollout::Rollout,
    partition_before: u32,
) {
    let name = cluster.name_any();
    if rollout.hold.is_none() && rollout.partition < partition_before {
        let pod = builders::pod_name(&name, rollout.partition);
        tracing::info!(cluster = %name, pod, "rolling out the pod template");
        publish(
            ctx,
            cluster,
            EventType::Normal,
            status::ROLLING_OUT,
            format!("restarting {pod} on the new pod template"),
        )
        .await;
    } else if let Some(hold) = rollout.hold {
        tracing::info!(cluster = %name, %hold, "pod template rollout held");
    }
}

/// One warning event per refusal, not one per pass: the status carries it meanwhile.
async fn publish_refusals(ctx: &Context, cluster: &DynamoCluster, refusals: &[Refusal]) {
    let name = cluster.name_any();
    let reported = cluster
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::DEGRADED))
        .filter(|c| c.status == "True")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    for refusal in refusals {
        tracing::warn!(cluster = %name, reason = refusal.reason, message = %refusal.message, "refused");
        if !reported.contains(&refusal.message) {
            publish(
                ctx,
                cluster,
                EventType::Warning,
                refusal.reason,
                refusal.message.clone(),
            )
            .await;
        }
    }
}

/// An event for a step taken, and a warning, once, for a step that refuses or waits on
/// a dead member.
async fn publish_step(ctx: &Context, cluster: &DynamoCluster, step: &Step, took_step: bool) {
    let previous_step = cluster
        .status
        .as_ref()
        .and_then(|s| s.current_step.as_deref());
    let reason = status::step_reason(step);
    if took_step {
        ctx.metrics.step_taken(reason);
        publish(ctx, cluster, EventType::Normal, reason, step.to_string()).await;
    } else if matches!(
        step,
        Step::Refuse { .. }
            | Step::Wait {
                reason: WaitReason::MemberDead { .. }
            }
    ) && previous_step != Some(step.to_string().as_str())
    {
        publish(ctx, cluster, EventType::Warning, reason, step.to_string()).await;
    }
}

/// Executes a step (StatefulSet resizes were applied already, volumes of shrunk-away
/// nodes are deleted here; membership changes go through [`change_membership`]).
/// Returns whether a step was taken.
async fn execute(
    ctx: &Context,
    cluster: &DynamoCluster,
    namespace: &str,
    step: &Step,
    replicas_before: u32,
    ring: &RingRead,
    target: &impl Fn(u32) -> AdminTarget,
) -> Result<bool, Error> {
    let name = cluster.name_any();
    match *step {
        Step::ShrinkStatefulSet { to } => {
            // The planner shrinks only over nodes the ring has removed (or never
            // joined), so their volumes hold nothing the ring needs.
            if !cluster.spec.storage.retain_on_scale_down {
                let claims: Api<PersistentVolumeClaim> =
                    Api::namespaced(ctx.client.clone(), namespace);
                for ordinal in to..replicas_before {
                    delete_if_present(&claims, &claim_name(&name, ordinal)).await?;
                }
            }
            Ok(true)
        }
        Step::GrowStatefulSet { .. } => Ok(true),
        Step::Remove {
            ordinal,
            replace: true,
        } => {
            let advertise = |ordinal| ctx.endpoints.advertise(namespace, &name, ordinal);
            change_membership(ctx.admin.as_ref(), &name, step, ring, target, &advertise).await?;
            // Out of the ring: its volume holds nothing the ring needs, and a node that
            // came back on it would bring deletes purged since back to life. The claim
            // goes once the pod has (its protection finalizer), and the StatefulSet
            // recreates both, empty; the planner then joins the new node.
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
            delete_if_present(&claims, &claim_name(&name, ordinal)).await?;
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
            delete_if_present(&pods, &builders::pod_name(&name, ordinal)).await?;
            clear_replace_annotation(ctx, cluster, namespace).await?;
            Ok(true)
        }
        _ => {
            let advertise = |ordinal| ctx.endpoints.advertise(namespace, &name, ordinal);
            change_membership(ctx.admin.as_ref(), &name, step, ring, target, &advertise).await
        }
    }
}

/// Removes [`REPLACE_ANNOTATION`] from the cluster once acted on or refused: a replace
/// is a one-time request, never a standing order to replace whatever is not ready.
async fn clear_replace_annotation(
    ctx: &Context,
    cluster: &DynamoCluster,
    namespace: &str,
) -> Result<(), Error> {
    let clusters: Api<DynamoCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {REPLACE_ANNOTATION: null}}});
    clusters
        .patch(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Executes a membership step (`Join`, `SetWeight`, `Decommission`) through `Admin`, as
/// every pass of the controller does; any other step is no membership change and is
/// left to the caller (`Ok(false)`). Returns whether a change was made.
///
/// A join goes through the lowest ready member ([`RingRead::admin_peer`]) or, with no
/// member yet, to the joining node itself (bootstrap); the node's id is its pod name
/// and its address `advertise(ordinal)`. A join the node refuses as already done
/// (`FailedPrecondition`: the merged view was behind) is no error: the next pass reads
/// the ring again.
///
/// # Errors
/// [`Error::Admin`] when the call fails, [`Error::NoAdminPeer`] when a weight change or
/// decommission has no ready member to go to.
pub async fn change_membership(
    admin: &dyn NodeAdmin,
    cluster_name: &str,
    step: &Step,
    ring: &RingRead,
    target: &impl Fn(u32) -> AdminTarget,
    advertise: &impl Fn(u32) -> String,
) -> Result<bool, Error> {
    let peer = || ring.admin_peer.map(target).ok_or(Error::NoAdminPeer);
    match *step {
        Step::Join { ordinal, weight } => {
            // Bootstrap: with no member yet, the first node joins itself.
            let via = ring.admin_peer.map_or_else(|| target(ordinal), target);
            let node_id = builders::pod_name(cluster_name, ordinal);
            match admin
                .join(&via, &node_id, &advertise(ordinal), weight)
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some(tonic::Code::FailedPrecondition) => {
                    tracing::info!(cluster = cluster_name, node = node_id, error = %e, "join not needed");
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        }
        Step::SetWeight { ordinal, weight } => {
            let node_id = builders::pod_name(cluster_name, ordinal);
            admin.set_weight(&peer()?, &node_id, weight).await?;
            Ok(true)
        }
        Step::Decommission { ordinal } => {
            let node_id = builders::pod_name(cluster_name, ordinal);
            admin.leave(&peer()?, &node_id).await?;
            Ok(true)
        }
        Step::Remove { ordinal, .. } => {
            // The node refuses (FailedPrecondition) while it can still reach the member:
            // the pass fails and says so, and nothing is removed.
            let node_id = builders::pod_name(cluster_name, ordinal);
            admin.remove(&peer()?, &node_id).await?;
            Ok(true)
        }
        Step::GrowStatefulSet { .. }
        | Step::ShrinkStatefulSet { .. }
        | Step::Wait { .. }
        | Step::Refuse { .. }
        | Step::Done => Ok(false),
    }
}

/// The PVC the StatefulSet creates for a pod: `<template>-<pod>`.
fn claim_name(cluster_name: &str, ordinal: u32) -> String {
    format!("data-{}", builders::pod_name(cluster_name, ordinal))
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes the status (server-side apply on the status subresource) when it changed.
async fn write_status(
    ctx: &Context,
    cluster: &DynamoCluster,
    namespace: &str,
    status: crate::crd::DynamoClusterStatus,
) -> Result<(), Error> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<DynamoCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": DynamoCluster::api_version(&()),
        "kind": DynamoCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Shows a failed pass on the resource: a Warning event and the Degraded condition
/// with the error's reason and message, once per distinct failure (a retry that fails
/// the same way writes nothing). Best effort: the failure itself is what the pass
/// returns, and a report that cannot be written is logged. Membership work waits for
/// the next successful pass, whose status replaces this one.
async fn report_failure(ctx: &Context, cluster: &DynamoCluster, error: &Error) {
    let reason = error.reason();
    let message = error.to_string();
    let reported = cluster
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::DEGRADED))
        .is_some_and(|c| c.status == "True" && c.reason == reason && c.message == message);
    if reported {
        return;
    }
    publish(ctx, cluster, EventType::Warning, reason, message.clone()).await;
    let Some(namespace) = cluster.namespace() else {
        return;
    };
    let status = status::degraded_status(
        status::Degradation {
            generation: cluster.metadata.generation,
            reason,
            message: &message,
            progressing: None,
        },
        &builders::selector_string(&cluster.name_any()),
        cluster.status.as_ref(),
        &Time(k8s_openapi::jiff::Timestamp::now()),
    );
    if let Err(error) = write_status(ctx, cluster, &namespace, status).await {
        tracing::warn!(cluster = %cluster.name_any(), %error, "writing the status of a failed pass");
    }
}

/// Publishes an Event on the cluster. Best effort: a lost event is logged, and the pass
/// goes on (the step was taken; the status tells it too).
async fn publish(
    ctx: &Context,
    cluster: &DynamoCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: reason.to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(cluster = %cluster.name_any(), %error, reason, "publishing event");
    }
}

/// The pass for a deleted cluster: delete the volumes if the spec says so. The owned
/// objects go by garbage collection once the finalizer is removed.
async fn cleanup(cluster: &DynamoCluster, ctx: &Context) -> Result<Action, Error> {
    let name = cluster.name_any();
    let namespace = cluster.namespace().ok_or(BuildError::MissingNamespace)?;
    let note = if cluster.spec.storage.retain_on_delete {
        "cluster deleted; volumes retained (storage.retainOnDelete)".to_owned()
    } else {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &namespace);
        let selector = builders::selector_string(&name);
        let list = claims
            .list(&ListParams::default().labels(&selector))
            .await?;
        let mut deleted = 0;
        for claim in list
            .items
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
        {
            delete_if_present(&claims, &claim.name_any()).await?;
            deleted += 1;
        }
        format!("cluster deleted; {deleted} volumes deleted")
    };
    publish(ctx, cluster, EventType::Normal, "Deleted", note).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let intervals = Intervals::default();
        let delays: Vec<u64> = (1..=8).map(|f| intervals.backoff(f).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(intervals.backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn content_hash_is_stable_and_sensitive() {
        let a = serde_json::json!({"spec": {"replicas": 3}});
        let b = serde_json::json!({"spec": {"replicas": 4}});
        assert_eq!(content_hash(&a).unwrap(), content_hash(&a.clone()).unwrap());
        assert_ne!(content_hash(&a).unwrap(), content_hash(&b).unwrap());
        assert_eq!(content_hash(&a).unwrap().len(), 16);
    }

    #[test]
    fn peers_are_reached_by_their_stable_names() {
        assert_eq!(
            PeerDns.admin_url("prod", "db", 3, false),
            "http://db-3.db-peers.prod.svc:7001"
        );
        assert_eq!(
            PeerDns.admin_url("prod", "db", 0, true),
            "https://db-0.db-peers.prod.svc:7001"
        );
        assert_eq!(
            PeerDns.advertise("prod", "db", 1),
            "db-1.db-peers.prod.svc:7001"
        );
        assert_eq!(claim_name("db", 4), "data-db-4");
    }
}
