//! The objects a `DynamoCluster` owns, as pure functions of it. No I/O: the controller
//! applies what these return (server-side apply) and never edits objects field by field.
//!
//! * [`config_map`]: the node configuration file shared by every pod.
//! * [`headless_service`]: stable per-pod DNS names (`<pod>.<name>-peers.<ns>.svc`), which
//!   are the nodes' advertised internode addresses and the seeds (Dynamo §4.8.2: seeds
//!   are "nodes that are discovered via an external mechanism").
//! * [`client_service`]: the client port only; internode and admin ports stay private.
//! * [`statefulset`]: the nodes, one stable identity and volume per ordinal.
//! * [`pod_disruption_budget`]: at most one node down for voluntary disruptions, so a
//!   drain never takes out more than one replica of a key at a time.
//! * [`network_policy`]: who may reach which port (see its doc for the table).
//! * [`admin_token_secret`]: the admin token the operator generates when the user names
//!   no Secret; the randomness is the caller's, so the builder stays pure.
//!
//! Ring membership is not the StatefulSet's business: a pod serves data only after the
//! operator joins it (Dynamo §4.3, explicit membership), so the replica count is an
//! argument chosen by the planner, not `spec.size`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, Secret, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;

use crate::crd::DynamoCluster;

/// Client gRPC port (`Kv`).
pub const CLIENT_PORT: i32 = 7000;
/// Internode gRPC port (`Replica` and `Admin`).
pub const INTERNODE_PORT: i32 = 7001;
/// HTTP port (`/healthz`, `/readyz`, `/metrics`).
pub const HTTP_PORT: i32 = 7002;
/// Where each node keeps its data (the image's `DYNAMO_DATA_DIR`).
pub const DATA_DIR: &str = "/var/lib/dynamo";
/// Where the config map is mounted.
pub const CONFIG_DIR: &str = "/etc/dynamo";
/// The config file's key in the config map.
pub const CONFIG_FILE: &str = "config.yaml";
/// Where the TLS secret is mounted.
pub const TLS_DIR: &str = "/etc/dynamo/tls";

/// The well-known label holding a node's zone, copied onto pods at binding.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// How many of the first ordinals are seeds.
pub const MAX_SEEDS: u32 = 3;
/// Seconds a node gets after SIGTERM to finish in-flight requests and flush buffered
/// writes before it is killed.
pub const TERMINATION_GRACE_SECONDS: i64 = 60;

/// How long a node pod must stay ready before a rolling update moves on to the next
/// pod (the StatefulSet's `minReadySeconds`). A restarted node is ready as soon as it
/// reads its own membership, a second or so after it starts, but its peers reach it by
/// its pod DNS name, which now points to a new pod IP: cluster DNS caches the old
/// record for up to 30 seconds (CoreDNS's default `cache 30` and the kubernetes
/// plugin's `ttl 30`), and until a probe through the new record succeeds the peers'
/// failure detectors hold the node Down. Moving on sooner took the next node down while
/// coordinators counted one live replica: writes at W = 2 failed during a rolling
/// upgrade on a real cluster (3 of 16,547 with no wait, 4 of 25,910 with 10 s;
/// e2e/tests/kubernetes.rs). 40 s covers the DNS cache and several probe rounds.
pub const MIN_READY_SECONDS: i32 = 40;

/// Seconds a node pod keeps serving after it is marked for deletion, before it gets
/// SIGTERM (a `preStop` sleep): the endpoints of the client Service drop it first, so
/// new client connections stop arriving at a node that closes its listeners. Without
/// it, a rolling upgrade on a real cluster refused a client connection routed to the
/// stopping pod (e2e/tests/kubernetes.rs).
pub const PRE_STOP_SECONDS: i64 = 5;
/// Pod template annotation holding a hash of the node config, so a config change rolls
/// the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "dynamo.example.org/config-hash";
/// StatefulSet annotation holding [`template_inputs_hash`]: the spec its pod template and
/// node config were rendered from. While the spec's hash stays the same, the controller
/// keeps the pod template and config the StatefulSet has, so a new operator release that
/// renders them differently restarts nothing; its rendering takes effect with the next
/// spec change that feeds the template.
pub const TEMPLATE_INPUTS_ANNOTATION: &str = "dynamo.example.org/template-inputs";
/// The uid and gid of the image's non-root user (distroless `nonroot`).
pub const NODE_UID: i64 = 65_532;
/// The key of the admin token in its Secret, user-named or generated.
pub const ADMIN_TOKEN_KEY: &str = "token";
/// Bytes of randomness in a generated admin token (256 bits; hex-encoded in the Secret).
pub const ADMIN_TOKEN_BYTES: usize = 32;
/// Where the internode secret is mounted in the node container; the node reads the
/// file `token` there (`internode-token-file`).
pub const INTERNODE_TOKEN_DIR: &str = "/etc/dynamo/internode";
/// The key of the internode secret in its Secret, and the file name it is mounted as.
pub const INTERNODE_TOKEN_KEY: &str = "token";
/// The `app.kubernetes.io/name` label of the operator's own pods (the Helm chart sets
/// it); the NetworkPolicy admits them to the internode/admin port.
pub const OPERATOR_APP_NAME: &str = "dynamo-operator";
/// The label every namespace carries with its own name (set by the API server since
/// Kubernetes 1.22), used to pick the operator's namespace in the NetworkPolicy.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

const CONTAINER_NAME: &str = "dynamo-node";
const DATA_VOLUME: &str = "data";
const CONFIG_VOLUME: &str = "config";
const TLS_VOLUME: &str = "tls";
const INTERNODE_TOKEN_VOLUME: &str = "internode-token";

/// Why an object cannot be built from a `DynamoCluster`: it lacks what the API server
/// always sets, so it was not read from a cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `metadata.name` is unset.
    #[error("cluster has no name")]
    MissingName,
    /// `metadata.namespace` is unset.
    #[error("cluster has no namespace")]
    MissingNamespace,
    /// `metadata.uid` is unset, so no owner reference can point at it.
    #[error("cluster has no uid")]
    MissingUid,
}

/// The name of the StatefulSet's pod with this ordinal, which is also the node's id.
#[must_use]
pub fn pod_name(cluster_name: &str, ordinal: u32) -> String {
    format!("{cluster_name}-{ordinal}")
}

/// The ordinal of a node id of this cluster (`<cluster>-<ordinal>`), or `None` when the
/// id is not one this cluster's StatefulSet would give.
#[must_use]
pub fn ordinal_of(cluster_name: &str, node_id: &str) -> Option<u32> {
    let digits = node_id.strip_prefix(cluster_name)?.strip_prefix('-')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    digits.parse().ok().filter(|_| canonical)
}

/// The headless Service's name.
#[must_use]
pub fn headless_service_name(cluster_name: &str) -> String {
    format!("{cluster_name}-peers")
}

/// The config map's name.
#[must_use]
pub fn config_map_name(cluster_name: &str) -> String {
    format!("{cluster_name}-config")
}

/// The name of the Secret the operator generates for the admin token when the user names
/// none.
#[must_use]
pub fn generated_admin_token_secret_name(cluster_name: &str) -> String {
    format!("{cluster_name}-admin-token")
}

/// The name of the Secret holding the cluster's internode secret (generated, always).
#[must_use]
pub fn internode_token_secret_name(cluster_name: &str) -> String {
    format!("{cluster_name}-internode")
}

/// The Secret whose key [`ADMIN_TOKEN_KEY`] holds the cluster's admin token: the one
/// `spec.adminTokenSecret` names, else the generated one. The pods read it from there
/// and so must the operator's `Admin` client.
///
/// # Errors
/// [`BuildError::MissingName`] when the cluster has no name.
pub fn admin_token_secret_name(cluster: &DynamoCluster) -> Result<String, BuildError> {
    match &cluster.spec.admin_token_secret {
        Some(name) => Ok(name.clone()),
        None => {
            let name = cluster
                .metadata
                .name
                .as_deref()
                .ok_or(BuildError::MissingName)?;
            Ok(generated_admin_token_secret_name(name))
        }
    }
}

/// The labels of the operator's own pods, as the Helm chart sets them.
#[must_use]
pub fn operator_selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/name".to_owned(),
        OPERATOR_APP_NAME.to_owned(),
    )])
}

/// The internode address (`host:port`) of a node: its stable DNS name in the headless
/// Service.
#[must_use]
pub fn peer_address(cluster_name: &str, namespace: &str, ordinal: u32) -> String {
    format!(
        "{}.{}.{namespace}.svc:{INTERNODE_PORT}",
        pod_name(cluster_name, ordinal),
        headless_service_name(cluster_name)
    )
}

/// The seeds: the first `min(3, size)` ordinals' internode addresses.
#[must_use]
pub fn seeds(cluster_name: &str, namespace: &str, size: u32) -> Vec<String> {
    (0..size.clamp(1, MAX_SEEDS))
        .map(|ordinal| peer_address(cluster_name, namespace, ordinal))
        .collect()
}

/// The labels that select this cluster's pods.
#[must_use]
pub fn selector_labels(cluster_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "dynamo".to_owned()),
        (
            "app.kubernetes.io/instance".to_owned(),
            cluster_name.to_owned(),
        ),
    ])
}

/// [`selector_labels`] as a label selector string, for `status.selector` (the scale
/// subresource).
#[must_use]
pub fn selector_string(cluster_name: &str) -> String {
    selector_labels(cluster_name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn object_labels(cluster_name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cluster_name);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "dynamo-operator".to_owned(),
    );
    labels.insert("app.kubernetes.io/component".to_owned(), "node".to_owned());
    labels
}

/// What every builder needs from the cluster's metadata, checked once.
struct Owner<'a> {
    cluster: &'a DynamoCluster,
    name: &'a str,
    namespace: &'a str,
}

impl<'a> Owner<'a> {
    fn of(cluster: &'a DynamoCluster) -> Result<Self, BuildError> {
        let meta = &cluster.metadata;
        let name = meta.name.as_deref().ok_or(BuildError::MissingName)?;
        let namespace = meta
            .namespace
            .as_deref()
            .ok_or(BuildError::MissingNamespace)?;
        if meta.uid.is_none() {
            return Err(BuildError::MissingUid);
        }
        Ok(Self {
            cluster,
            name,
            namespace,
        })
    }

    fn metadata(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(object_labels(self.name)),
            // Checked in `of`: name and uid are set, so this is always `Some`.
            owner_references: self.cluster.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        }
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(selector_labels(self.name)),
            ..LabelSelector::default()
        }
    }
}

/// The node config file: the settings every node shares, under the node's YAML keys.
/// Per-node settings (id, advertised address) come from the environment.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct NodeConfigFile<'a> {
    listen: String,
    internode_listen: String,
    http_listen: String,
    storage: &'a str,
    data_dir: &'a str,
    replication_factor: u32,
    read_quorum: u32,
    write_quorum: u32,
    partitioning: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_per_weight: Option<u32>,
    durability: &'a str,
    /// Only when not the node's default, so existing clusters' config stays as it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    reconciliation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<String>,
    internode_token_file: String,
}

/// The node config YAML for this cluster (the config map's `config.yaml`).
#[must_use]
pub fn node_config_yaml(cluster: &DynamoCluster) -> String {
    let spec = &cluster.spec;
    let tls_file = |file: &str| spec.tls.as_ref().map(|_| format!("{TLS_DIR}/{file}"));
    // Without `mutual` the node trusts its own certificate and never reads `ca.crt`, so a
    // Secret without that key works.
    let tls_ca = spec
        .tls
        .as_ref()
        .filter(|tls| tls.mutual)
        .map(|_| format!("{TLS_DIR}/ca.crt"));
    let file = NodeConfigFile {
        listen: format!("0.0.0.0:{CLIENT_PORT}"),
        internode_listen: format!("0.0.0.0:{INTERNODE_PORT}"),
        http_listen: format!("0.0.0.0:{HTTP_PORT}"),
        storage: "sled",
        data_dir: DATA_DIR,
        replication_factor: spec.replication.n,
        read_quorum: spec.replication.r,
        write_quorum: spec.replication.w,
        partitioning: spec.partitioning.strategy.as_str(),
        partitions: spec.partitioning.partitions,
        tokens_per_weight: spec.partitioning.tokens_per_weight,
        durability: spec.durability.as_str(),
        reconciliation: (!spec.reconciliation.is_default()).then(|| spec.reconciliation.as_str()),
        tls_cert: tls_file("tls.crt"),
        tls_key: tls_file("tls.key"),
        tls_ca,
        // The node listens on every address, so it needs the cluster secret to start
        // (and every peer call carries it).
        internode_token_file: format!("{INTERNODE_TOKEN_DIR}/{INTERNODE_TOKEN_KEY}"),
    };
    // A struct of strings and integers always serializes.
    let mut yaml = serde_yaml::to_string(&file).expect("node config serializes");
    // The user's settings after the managed ones, as more lines of the same mapping.
    // Validation refuses a managed key; one that slipped through is left out here, so
    // it can neither replace the operator's nor repeat a key.
    let mut extra = spec.node_config_mapping();
    extra.retain(|key, _| {
        key.as_str()
            .is_some_and(|key| !crate::crd::MANAGED_NODE_KEYS.contains(&key))
    });
    if !extra.is_empty() {
        // Scalars under string keys always serialize.
        yaml.push_str(&serde_yaml::to_string(&extra).expect("node settings serialize"));
    }
    yaml
}

/// The config map holding [`node_config_yaml`].
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn config_map(cluster: &DynamoCluster) -> Result<ConfigMap, BuildError> {
    let owner = Owner::of(cluster)?;
    Ok(ConfigMap {
        metadata: owner.metadata(config_map_name(owner.name)),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_owned(),
            node_config_yaml(cluster),
        )])),
        ..ConfigMap::default()
    })
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// The headless Service giving each pod a stable DNS name. It publishes pods before they
/// are ready: a node must be reachable by its peers (and the operator) to join.
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn headless_service(cluster: &DynamoCluster) -> Result<Service, BuildError> {
    let owner = Owner::of(cluster)?;
    Ok(Service {
        metadata: owner.metadata(headless_service_name(owner.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(owner.name)),
            ports: Some(vec![
                service_port("internode", INTERNODE_PORT),
                service_port("http", HTTP_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The client Service: the client port only, so `Replica` and `Admin` are not exposed.
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn client_service(cluster: &DynamoCluster) -> Result<Service, BuildError> {
    let owner = Owner::of(cluster)?;
    Ok(Service {
        metadata: owner.metadata(owner.name.to_owned()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(owner.name)),
            ports: Some(vec![service_port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The PodDisruptionBudget: at most one node voluntarily down at a time.
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn pod_disruption_budget(cluster: &DynamoCluster) -> Result<PodDisruptionBudget, BuildError> {
    let owner = Owner::of(cluster)?;
    Ok(PodDisruptionBudget {
        metadata: owner.metadata(owner.name.to_owned()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(owner.selector()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(source),
        ..EnvVar::default()
    }
}

fn node_env(owner: &Owner<'_>) -> Vec<EnvVar> {
    let size = u32::try_from(owner.cluster.spec.size).unwrap_or(1);
    let pod_name = EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: "metadata.name".to_owned(),
            ..ObjectFieldSelector::default()
        }),
        ..EnvVarSource::default()
    };
    let mut vars = vec![
        env_from("POD_NAME", pod_name.clone()),
        // The node id is the pod name: stable across restarts, and the ordinal in it is
        // how the planner maps ring members to pods.
        env_from("DYNAMO_NODE_ID", pod_name),
        // `$(POD_NAME)` is expanded by the kubelet from the variable above.
        env(
            "DYNAMO_ADVERTISE",
            format!(
                "$(POD_NAME).{}.{}.svc:{INTERNODE_PORT}",
                headless_service_name(owner.name),
                owner.namespace
            ),
        ),
        env(
            "DYNAMO_SEEDS",
            seeds(owner.name, owner.namespace, size).join(","),
        ),
        // The pod's zone, for replicas across zones (Dynamo §4.2): the API server copies
        // its node's `topology.kubernetes.io/zone` label onto the pod when it is bound
        // (Kubernetes 1.35+, the PodTopologyLabelsAdmission feature); without the label
        // the value is empty, which the node reads as no zone.
        env_from(
            "DYNAMO_ZONE",
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.labels['{ZONE_LABEL}']"),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            },
        ),
    ];
    // Always set: without a token the Admin API would be open to anyone who can reach
    // the internode port. `optional: false` keeps the pod from starting without it.
    let secret = owner
        .cluster
        .spec
        .admin_token_secret
        .clone()
        .unwrap_or_else(|| generated_admin_token_secret_name(owner.name));
    vars.push(env_from(
        "DYNAMO_ADMIN_TOKEN",
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: ADMIN_TOKEN_KEY.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        },
    ));
    vars
}

/// An HTTP probe; over HTTPS when the node serves TLS (the kubelet does not verify the
/// certificate, and the HTTP listener never asks for a client certificate).
fn http_probe(path: &str, tls: bool, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            scheme: tls.then(|| "HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn node_container(owner: &Owner<'_>) -> Container {
    let spec = &owner.cluster.spec;
    let mut mounts = vec![
        VolumeMount {
            name: DATA_VOLUME.to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: CONFIG_VOLUME.to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    if spec.tls.is_some() {
        mounts.push(VolumeMount {
            name: TLS_VOLUME.to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    mounts.push(VolumeMount {
        name: INTERNODE_TOKEN_VOLUME.to_owned(),
        mount_path: INTERNODE_TOKEN_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(node_env(owner)),
        ports: Some(vec![
            container_port("client", CLIENT_PORT),
            container_port("internode", INTERNODE_PORT),
            container_port("http", HTTP_PORT),
        ]),
        // Ready means the node serves; live means the process answers at all. Liveness is
        // lenient so a node busy with a long transfer is not restarted.
        readiness_probe: Some(http_probe("/readyz", spec.tls.is_some(), 5, 3)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..http_probe("/healthz", spec.tls.is_some(), 10, 6)
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Spread nodes over machines so one machine failure takes out one replica, not several
/// (Dynamo §4.6 places replicas across data centers for the same reason).
fn default_affinity(cluster_name: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(cluster_name)),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn zone_spread(cluster_name: &str) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".to_owned(),
        when_unsatisfiable: "ScheduleAnyway".to_owned(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(cluster_name)),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    }
}

/// A hash of what the pod template and node config are rendered from: the spec, except
/// what only drives membership (the size beyond the seeds it names, the weights, which
/// the operator sets through `Admin`, the dead-member timeout). Scaling from 5 to 7 nodes or a weight change
/// leaves it alone; an image, resource, config or TLS change does not.
///
/// It must be the same for the same spec across operator releases (a change would roll
/// every cluster on upgrade; `template_inputs_hash_is_stable_across_releases` pins it): a
/// new spec field skips serializing its default.
#[must_use]
pub fn template_inputs_hash(cluster: &DynamoCluster) -> String {
    let mut spec = cluster.spec.clone();
    spec.size = spec.size.clamp(1, MAX_SEEDS.try_into().unwrap_or(i32::MAX));
    spec.weights = crate::crd::Weights::default();
    spec.dead_member_timeout_seconds = None;
    // A struct of strings, numbers, maps and Kubernetes types always serializes.
    let json = serde_json::to_vec(&spec).expect("the spec serializes");
    format!("{:016x}", fnv1a(&json))
}

/// Sets the StatefulSet's `rollingUpdate.partition`: pods with an ordinal at or above it
/// run the update revision. 0 is left unset (the API's default), so a StatefulSet at rest
/// reads as one without a partition.
pub fn set_partition(statefulset: &mut StatefulSet, partition: u32) {
    let strategy = statefulset
        .spec
        .update_strategy
        .get_or_insert_with(StatefulSetUpdateStrategy::default);
    strategy.rolling_update = (partition > 0).then(|| RollingUpdateStatefulSetStrategy {
        partition: Some(i32::try_from(partition).unwrap_or(i32::MAX)),
        ..RollingUpdateStatefulSetStrategy::default()
    });
}

/// FNV-1a: a stable hash (unlike `DefaultHasher`, which may change between Rust
/// releases and would roll every pod on an operator upgrade).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn retention(retain: bool) -> String {
    if retain { "Retain" } else { "Delete" }.to_owned()
}

/// The StatefulSet running `replicas` nodes. `replicas` is the planner's choice: it grows
/// to `spec.size` at once but shrinks only after the nodes above the new size are
/// removed from the ring.
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn statefulset(cluster: &DynamoCluster, replicas: u32) -> Result<StatefulSet, BuildError> {
    let owner = Owner::of(cluster)?;
    let spec = &cluster.spec;
    let extras = &spec.pod_template;

    let mut pod_labels = extras.labels.clone();
    pod_labels.extend(object_labels(owner.name));
    let mut pod_annotations = extras.annotations.clone();
    pod_annotations.insert(
        CONFIG_HASH_ANNOTATION.to_owned(),
        format!("{:016x}", fnv1a(node_config_yaml(cluster).as_bytes())),
    );
    let mut metadata = owner.metadata(owner.name.to_owned());
    metadata.annotations = Some(BTreeMap::from([(
        TEMPLATE_INPUTS_ANNOTATION.to_owned(),
        template_inputs_hash(cluster),
    )]));
    Ok(StatefulSet {
        metadata,
        spec: StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            service_name: Some(headless_service_name(owner.name)),
            // Pods start together; the operator, not pod order, sequences ring joins.
            pod_management_policy: Some("Parallel".to_owned()),
            min_ready_seconds: Some(MIN_READY_SECONDS),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: owner.selector(),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(node_pod_spec(cluster, &owner)),
            },
            volume_claim_templates: Some(vec![data_claim(cluster, &owner)]),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some(retention(spec.storage.retain_on_scale_down)),
                    when_deleted: Some(retention(spec.storage.retain_on_delete)),
                },
            ),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
}

/// The node pods' volumes: the node config, the TLS Secret (with `spec.tls`) and the
/// internode token.
fn node_volumes(cluster: &DynamoCluster, owner: &Owner<'_>) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: CONFIG_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(owner.name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(tls) = &cluster.spec.tls {
        volumes.push(Volume {
            name: TLS_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes.push(Volume {
        name: INTERNODE_TOKEN_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(internode_token_secret_name(owner.name)),
            // Readable by the node's user only (fsGroup makes the group the node's).
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    volumes
}

/// The node pods' spec: one container, non-root, spread over zones, placed as the
/// pod template extras say.
fn node_pod_spec(cluster: &DynamoCluster, owner: &Owner<'_>) -> PodSpec {
    let extras = &cluster.spec.pod_template;
    PodSpec {
        containers: vec![node_container(owner)],
        volumes: Some(node_volumes(cluster, owner)),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            // Makes the volume writable by the non-root user.
            fs_group: Some(NODE_UID),
            ..PodSecurityContext::default()
        }),
        affinity: Some(
            extras
                .affinity
                .clone()
                .unwrap_or_else(|| default_affinity(owner.name)),
        ),
        topology_spread_constraints: Some(vec![zone_spread(owner.name)]),
        node_selector: (!extras.node_selector.is_empty()).then(|| extras.node_selector.clone()),
        tolerations: (!extras.tolerations.is_empty()).then(|| extras.tolerations.clone()),
        ..PodSpec::default()
    }
}

/// The claim template of each node's data volume.
fn data_claim(cluster: &DynamoCluster, owner: &Owner<'_>) -> PersistentVolumeClaim {
    let storage = &cluster.spec.storage;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_owned()),
            labels: Some(selector_labels(owner.name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn policy_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn pods_labelled(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

/// The NetworkPolicy of the node pods (ingress only; egress is not restricted):
///
/// | port | who may connect |
/// |---|---|
/// | 7001 internode/admin (`Replica`, `Admin`) | this cluster's own pods, and pods labelled `app.kubernetes.io/name: dynamo-operator` in `operator_namespace` |
/// | 7000 client (`Kv`) | any pod in the cluster's namespace |
/// | 7002 HTTP (`/metrics`, `/healthz`, `/readyz`) | any pod in the cluster's namespace |
///
/// Anything else, including every pod of other namespaces, is refused: a client or a
/// Prometheus in another namespace needs a policy of its own that adds to this one
/// (NetworkPolicies are additive). The kubelet's probes are not pod traffic and pass on
/// the common network plugins; `kubectl port-forward` enters the pod's own network
/// namespace and is not filtered either. A policy only takes effect where the network
/// plugin enforces NetworkPolicies.
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn network_policy(
    cluster: &DynamoCluster,
    operator_namespace: &str,
) -> Result<NetworkPolicy, BuildError> {
    network_policy_admitting(cluster, operator_namespace, &[])
}

/// [`network_policy`], also admitting every pod of `metrics_namespaces` (a Prometheus in
/// a monitoring namespace) to the nodes' HTTP port, where `/metrics` is served; the
/// client and internode ports stay closed to them.
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn network_policy_admitting(
    cluster: &DynamoCluster,
    operator_namespace: &str,
    metrics_namespaces: &[String],
) -> Result<NetworkPolicy, BuildError> {
    let owner = Owner::of(cluster)?;
    let members = NetworkPolicyPeer {
        pod_selector: Some(owner.selector()),
        ..NetworkPolicyPeer::default()
    };
    let operator = NetworkPolicyPeer {
        pod_selector: Some(pods_labelled(operator_selector_labels())),
        namespace_selector: Some(pods_labelled(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            operator_namespace.to_owned(),
        )]))),
        ..NetworkPolicyPeer::default()
    };
    // An empty pod selector without a namespace selector: every pod of this namespace.
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    Ok(NetworkPolicy {
        metadata: owner.metadata(owner.name.to_owned()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(owner.selector()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(
                vec![
                    NetworkPolicyIngressRule {
                        from: Some(vec![members, operator]),
                        ports: Some(vec![policy_port(INTERNODE_PORT)]),
                    },
                    NetworkPolicyIngressRule {
                        from: Some(vec![same_namespace]),
                        ports: Some(vec![policy_port(CLIENT_PORT), policy_port(HTTP_PORT)]),
                    },
                ]
                .into_iter()
                .chain(
                    (!metrics_namespaces.is_empty()).then(|| NetworkPolicyIngressRule {
                        from: Some(vec![NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector {
                                match_expressions: Some(vec![LabelSelectorRequirement {
                                    key: NAMESPACE_NAME_LABEL.to_owned(),
                                    operator: "In".to_owned(),
                                    values: Some(metrics_namespaces.to_vec()),
                                }]),
                                ..LabelSelector::default()
                            }),
                            ..NetworkPolicyPeer::default()
                        }]),
                        ports: Some(vec![policy_port(HTTP_PORT)]),
                    }),
                )
                .collect(),
            ),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// Lowercase hex: printable ASCII without spaces, as the node requires of a token.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The generated admin token Secret, or `None` when `spec.adminTokenSecret` names the
/// user's own. The token is `random` hex-encoded under [`ADMIN_TOKEN_KEY`]; the caller
/// draws `random` from a cryptographic generator.
///
/// The controller creates this Secret only when it does not exist yet and never
/// re-applies it: a new token on every pass would lock the running nodes' admin API
/// against the operator itself. It is owned by the cluster, so it goes with it.
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn admin_token_secret(
    cluster: &DynamoCluster,
    random: &[u8; ADMIN_TOKEN_BYTES],
) -> Result<Option<Secret>, BuildError> {
    let owner = Owner::of(cluster)?;
    if cluster.spec.admin_token_secret.is_some() {
        return Ok(None);
    }
    Ok(Some(token_secret(
        &owner,
        generated_admin_token_secret_name(owner.name),
        ADMIN_TOKEN_KEY,
        random,
    )))
}

/// An owned Opaque Secret holding `random`, hex-encoded, under `key`.
fn token_secret(
    owner: &Owner<'_>,
    name: String,
    key: &str,
    random: &[u8; ADMIN_TOKEN_BYTES],
) -> Secret {
    Secret {
        metadata: owner.metadata(name),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(hex(random).into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// The generated internode secret: `random` hex-encoded under
/// [`INTERNODE_TOKEN_KEY`]; the caller draws `random` from a cryptographic generator.
/// Every node mounts it and presents it on every `Replica` call, and refuses calls
/// without it. Created once and never re-applied, like the admin token; owned by the
/// cluster, so it goes with it.
///
/// # Errors
/// [`BuildError`] when the cluster lacks a name, namespace or uid.
pub fn internode_token_secret(
    cluster: &DynamoCluster,
    random: &[u8; ADMIN_TOKEN_BYTES],
) -> Result<Secret, BuildError> {
    let owner = Owner::of(cluster)?;
    Ok(token_secret(
        &owner,
        internode_token_secret_name(owner.name),
        INTERNODE_TOKEN_KEY,
        random,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Durability, ImagePullPolicy, Strategy, TlsSpec};
    use crate::fixtures::cluster;
    use k8s_openapi::api::core::v1::Toleration;

    fn volume_named<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a Volume> {
        pod.volumes.as_ref()?.iter().find(|v| v.name == name)
    }

    fn pod_spec(sts: &StatefulSet) -> &PodSpec {
        sts.spec.template.spec.as_ref().unwrap()
    }

    fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a EnvVar> {
        container.env.as_ref()?.iter().find(|e| e.name == name)
    }

    #[test]
    fn names_and_ordinals_round_trip() {
        assert_eq!(pod_name("db", 4), "db-4");
        assert_eq!(ordinal_of("db", "db-4"), Some(4));
        assert_eq!(ordinal_of("db", "db-0"), Some(0));
        for foreign in ["db-", "db-04", "db-x", "dbx-1", "other-1", "db-1-2", "db"] {
            assert_eq!(ordinal_of("db", foreign), None, "{foreign}");
        }
        // A cluster whose name ends like another's pod is not confused with it.
        assert_eq!(ordinal_of("db-1", "db-1-3"), Some(3));
        assert_eq!(ordinal_of("db", "db-1-3"), None);
    }

    #[test]
    fn seeds_are_the_first_three_ordinals() {
        assert_eq!(
            seeds("db", "prod", 5),
            [
                "db-0.db-peers.prod.svc:7001",
                "db-1.db-peers.prod.svc:7001",
                "db-2.db-peers.prod.svc:7001"
            ]
        );
        assert_eq!(seeds("db", "prod", 1), ["db-0.db-peers.prod.svc:7001"]);
    }

    #[test]
    fn builders_refuse_clusters_not_from_the_api_server() {
        let mut c = cluster("db", "prod", 3);
        c.metadata.uid = None;
        assert_eq!(statefulset(&c, 3).unwrap_err(), BuildError::MissingUid);
        c.metadata.namespace = None;
        assert_eq!(config_map(&c).unwrap_err(), BuildError::MissingNamespace);
        assert_eq!(
            network_policy(&c, "ops").unwrap_err(),
            BuildError::MissingNamespace
        );
        c.metadata.name = None;
        assert_eq!(client_service(&c).unwrap_err(), BuildError::MissingName);
        assert_eq!(
            admin_token_secret_name(&c).unwrap_err(),
            BuildError::MissingName
        );
    }

    #[test]
    fn every_object_is_owned_by_the_cluster_and_labelled() {
        let c = cluster("db", "prod", 3);
        let metas = [
            config_map(&c).unwrap().metadata,
            headless_service(&c).unwrap().metadata,
            client_service(&c).unwrap().metadata,
            statefulset(&c, 3).unwrap().metadata,
            pod_disruption_budget(&c).unwrap().metadata,
            network_policy(&c, "ops").unwrap().metadata,
            admin_token_secret(&c, &[0; ADMIN_TOKEN_BYTES])
                .unwrap()
                .unwrap()
                .metadata,
            internode_token_secret(&c, &[0; ADMIN_TOKEN_BYTES])
                .unwrap()
                .metadata,
        ];
        for meta in &metas {
            assert_eq!(meta.namespace.as_deref(), Some("prod"));
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "DynamoCluster");
            assert_eq!(owners[0].api_version, "dynamo.example.org/v1alpha1");
            assert_eq!(owners[0].name, "db");
            assert_eq!(owners[0].controller, Some(true));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "db");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "dynamo-operator");
        }
        let names: Vec<_> = metas.iter().map(|m| m.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "db-config",
                "db-peers",
                "db",
                "db",
                "db",
                "db",
                "db-admin-token",
                "db-internode"
            ]
        );
    }

    #[test]
    fn config_map_carries_the_replication_settings() {
        let mut c = cluster("db", "prod", 5);
        c.spec.replication.n = 5;
        c.spec.replication.r = 3;
        c.spec.replication.w = 1;
        c.spec.partitioning.strategy = Strategy::RandomTokens;
        c.spec.partitioning.tokens_per_weight = Some(64);
        c.spec.durability = Durability::Buffered;
        let cm = config_map(&c).unwrap();
        let yaml = &cm.data.as_ref().unwrap()[CONFIG_FILE];
        let parsed: BTreeMap<String, serde_yaml::Value> = serde_yaml::from_str(yaml).unwrap();
        let key = |k: &str| parsed[k].clone();
        assert_eq!(key("replication-factor"), 5);
        assert_eq!(key("read-quorum"), 3);
        assert_eq!(key("write-quorum"), 1);
        assert_eq!(key("partitioning"), "random-tokens");
        assert_eq!(key("tokens-per-weight"), 64);
        assert_eq!(key("durability"), "buffered");
        assert!(
            !parsed.contains_key("reconciliation"),
            "the default is not written"
        );
        assert_eq!(key("storage"), "sled");
        assert_eq!(key("data-dir"), DATA_DIR);
        assert_eq!(key("internode-listen"), "0.0.0.0:7001");
        assert!(!parsed.contains_key("partitions"));
        assert!(!parsed.contains_key("tls-cert"));
    }

    #[test]
    fn node_config_settings_follow_the_managed_ones_typed_and_roll_the_pods() {
        let plain = cluster("db", "prod", 3);
        let mut c = plain.clone();
        c.spec.node_config = BTreeMap::from([
            ("max-connections".to_owned(), "4096".to_owned()),
            ("client-read-timeout".to_owned(), "30s".to_owned()),
            ("log".to_owned(), "dynamo_node=debug,info".to_owned()),
            ("insecure-internode".to_owned(), "true".to_owned()),
        ]);
        let yaml = node_config_yaml(&c);
        // What the node reads: numbers as numbers, durations as text.
        let node = dynamo_config::RawConfig::from_yaml(&yaml).unwrap();
        assert_eq!(node.max_connections, Some(4096));
        assert_eq!(
            node.client_read_timeout,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(node.log.as_deref(), Some("dynamo_node=debug,info"));
        // A managed key is the operator's, whatever nodeConfig says.
        assert_eq!(node.insecure_internode, None);
        assert_eq!(node.replication_factor, Some(3));
        // A change rolls the pods: the config hash differs.
        let hash = |c: &DynamoCluster| {
            statefulset(c, 3)
                .unwrap()
                .spec
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(hash(&plain), hash(&c));
        assert_eq!(node_config_yaml(&plain), {
            let mut again = plain.clone();
            again.spec.node_config.clear();
            node_config_yaml(&again)
        });
    }

    #[test]
    fn every_node_mounts_the_internode_secret_and_reads_it() {
        let c = cluster("db", "prod", 3);
        let secret = internode_token_secret(&c, &[0xab; ADMIN_TOKEN_BYTES]).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("db-internode"));
        let token = &secret.data.as_ref().unwrap()[INTERNODE_TOKEN_KEY].0;
        assert_eq!(token, &"ab".repeat(ADMIN_TOKEN_BYTES).into_bytes());

        let config: serde_yaml::Value = serde_yaml::from_str(&node_config_yaml(&c)).unwrap();
        assert_eq!(
            config["internode-token-file"].as_str(),
            Some("/etc/dynamo/internode/token")
        );
        let sts = statefulset(&c, 3).unwrap();
        let pod = pod_spec(&sts);
        let volume = volume_named(pod, INTERNODE_TOKEN_VOLUME).expect("an internode secret volume");
        let source = volume.secret.as_ref().unwrap();
        assert_eq!(source.secret_name.as_deref(), Some("db-internode"));
        assert_eq!(
            source.optional,
            Some(false),
            "a pod must not start without it"
        );
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m.name == INTERNODE_TOKEN_VOLUME)
            .unwrap();
        assert_eq!(mount.mount_path, INTERNODE_TOKEN_DIR);
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn tls_adds_files_volume_and_mount() {
        let mut c = cluster("db", "prod", 3);
        c.spec.tls = Some(TlsSpec {
            secret_name: "db-tls".into(),
            mutual: true,
        });
        let yaml = node_config_yaml(&c);
        assert!(yaml.contains("tls-cert: /etc/dynamo/tls/tls.crt"), "{yaml}");
        assert!(yaml.contains("tls-key: /etc/dynamo/tls/tls.key"), "{yaml}");
        assert!(yaml.contains("tls-ca: /etc/dynamo/tls/ca.crt"), "{yaml}");
        let sts = statefulset(&c, 3).unwrap();
        let pod = pod_spec(&sts);
        let volume = volume_named(pod, TLS_VOLUME);
        let secret = volume.unwrap().secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("db-tls"));
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        let mount = mounts.iter().find(|m| m.mount_path == TLS_DIR).unwrap();
        assert_eq!(mount.read_only, Some(true));
        // The node serves HTTPS, so the kubelet must probe with it.
        for probe in [
            &pod.containers[0].readiness_probe,
            &pod.containers[0].liveness_probe,
        ] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
    }

    #[test]
    fn tls_without_mutual_does_not_read_the_ca() {
        let mut c = cluster("db", "prod", 3);
        c.spec.tls = Some(TlsSpec {
            secret_name: "db-tls".into(),
            mutual: false,
        });
        let yaml = node_config_yaml(&c);
        assert!(yaml.contains("tls-cert: /etc/dynamo/tls/tls.crt"), "{yaml}");
        assert!(!yaml.contains("tls-ca"), "{yaml}");
    }

    #[test]
    fn plaintext_probes_use_the_default_scheme() {
        let sts = statefulset(&cluster("db", "prod", 3), 3).unwrap();
        let container = &pod_spec(&sts).containers[0];
        let get = container
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref();
        assert_eq!(get.unwrap().scheme, None);
        assert!(!node_config_yaml(&cluster("db", "prod", 3)).contains("tls"));
    }

    #[test]
    fn tls_mutual_defaults_to_true() {
        let spec: TlsSpec = serde_json::from_value(serde_json::json!({"secretName": "t"})).unwrap();
        assert!(spec.mutual);
    }

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let svc = headless_service(&cluster("db", "prod", 3)).unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap(), selector_labels("db"));
        let ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [INTERNODE_PORT, HTTP_PORT]);
    }

    #[test]
    fn client_service_exposes_only_the_client_port() {
        let spec = client_service(&cluster("db", "prod", 3))
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.cluster_ip, None);
        assert_eq!(spec.publish_not_ready_addresses, None);
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, CLIENT_PORT);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("client".into()))
        );
    }

    #[test]
    fn pdb_allows_one_node_down() {
        let spec = pod_disruption_budget(&cluster("db", "prod", 3))
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap(),
            selector_labels("db")
        );
    }

    #[test]
    fn statefulset_runs_parallel_with_planner_replicas() {
        let sts = statefulset(&cluster("db", "prod", 3), 5).unwrap();
        let spec = &sts.spec;
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        // A rolling update waits for the restarted node's peers to see it alive.
        assert_eq!(spec.min_ready_seconds, Some(MIN_READY_SECONDS));
        // A stopping node leaves the client Service before it closes its listeners.
        let container = &spec.template.spec.as_ref().unwrap().containers[0];
        let pre_stop = container
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap();
        assert_eq!(pre_stop.sleep.as_ref().unwrap().seconds, PRE_STOP_SECONDS);
        assert_eq!(spec.service_name.as_deref(), Some("db-peers"));
        assert_eq!(
            spec.selector.match_labels.as_ref(),
            Some(&selector_labels("db"))
        );
        let template_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref();
        for (k, v) in selector_labels("db") {
            assert_eq!(
                template_labels.unwrap()[&k],
                v,
                "selector must match the pods"
            );
        }
        let pod = pod_spec(&sts);
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        assert_eq!(
            pod.security_context.as_ref().unwrap().fs_group,
            Some(NODE_UID)
        );
    }

    #[test]
    fn node_container_has_identity_seeds_and_probes() {
        let mut c = cluster("db", "prod", 5);
        c.spec.image_pull_policy = Some(ImagePullPolicy::IfNotPresent);
        c.spec.admin_token_secret = Some("db-admin".into());
        let sts = statefulset(&c, 5).unwrap();
        let container = &pod_spec(&sts).containers[0];
        assert_eq!(container.image.as_deref(), Some("dynamo-node:dev"));
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            container.args.as_deref(),
            Some(&["--config".to_owned(), "/etc/dynamo/config.yaml".to_owned()][..])
        );

        let node_id = env_value(container, "DYNAMO_NODE_ID").unwrap();
        let field = node_id
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "metadata.name");
        // POD_NAME must come before DYNAMO_ADVERTISE for `$(POD_NAME)` to expand.
        let names: Vec<&str> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert!(
            names.iter().position(|n| *n == "POD_NAME")
                < names.iter().position(|n| *n == "DYNAMO_ADVERTISE")
        );
        assert_eq!(
            env_value(container, "DYNAMO_ADVERTISE")
                .unwrap()
                .value
                .as_deref(),
            Some("$(POD_NAME).db-peers.prod.svc:7001")
        );
        // The zone comes from the pod's copy of its node's zone label.
        let zone = env_value(container, "DYNAMO_ZONE").unwrap();
        assert_eq!(
            zone.value_from
                .as_ref()
                .and_then(|source| source.field_ref.as_ref())
                .map(|field| field.field_path.as_str()),
            Some("metadata.labels['topology.kubernetes.io/zone']")
        );
        assert_eq!(
            env_value(container, "DYNAMO_SEEDS")
                .unwrap()
                .value
                .as_deref(),
            Some(
                "db-0.db-peers.prod.svc:7001,db-1.db-peers.prod.svc:7001,db-2.db-peers.prod.svc:7001"
            )
        );
        let token = env_value(container, "DYNAMO_ADMIN_TOKEN").unwrap();
        let secret = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("db-admin", "token")
        );

        let readiness = container
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
        assert_eq!(readiness.port, IntOrString::String("http".into()));
        let liveness = container
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
        let http = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("http"));
        assert_eq!(http.unwrap().container_port, HTTP_PORT);
    }

    fn admin_token_ref(sts: &StatefulSet) -> SecretKeySelector {
        let var = env_value(&pod_spec(sts).containers[0], "DYNAMO_ADMIN_TOKEN").unwrap();
        let source = var.value_from.as_ref().unwrap();
        source.secret_key_ref.clone().unwrap()
    }

    #[test]
    fn admin_token_comes_from_the_generated_secret_when_none_is_named() {
        let c = cluster("db", "prod", 3);
        let random = [0xa5; ADMIN_TOKEN_BYTES];
        let secret = admin_token_secret(&c, &random).unwrap().unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("db-admin-token"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let token = &secret.data.as_ref().unwrap()[ADMIN_TOKEN_KEY].0;
        assert_eq!(token.len(), 2 * ADMIN_TOKEN_BYTES);
        assert_eq!(token, &"a5".repeat(ADMIN_TOKEN_BYTES).into_bytes());
        // The pods read exactly that Secret and key, and must not start without it.
        let selector = admin_token_ref(&statefulset(&c, 3).unwrap());
        assert_eq!(
            Some(selector.name.as_str()),
            secret.metadata.name.as_deref()
        );
        assert_eq!(selector.key, ADMIN_TOKEN_KEY);
        assert_eq!(selector.optional, Some(false));
        assert_eq!(admin_token_secret_name(&c).unwrap(), "db-admin-token");
    }

    #[test]
    fn generated_token_is_the_hex_of_the_callers_bytes() {
        let c = cluster("db", "prod", 3);
        let mut random = [0u8; ADMIN_TOKEN_BYTES];
        random[0] = 0x01;
        random[ADMIN_TOKEN_BYTES - 1] = 0xff;
        let secret = admin_token_secret(&c, &random).unwrap().unwrap();
        let token = String::from_utf8(secret.data.unwrap()[ADMIN_TOKEN_KEY].0.clone()).unwrap();
        assert!(token.starts_with("0100"), "{token}");
        assert!(token.ends_with("00ff"), "{token}");
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let other = admin_token_secret(&c, &[7; ADMIN_TOKEN_BYTES])
            .unwrap()
            .unwrap();
        assert_ne!(other.data.unwrap()[ADMIN_TOKEN_KEY].0, token.into_bytes());
    }

    #[test]
    fn no_generated_secret_when_the_user_names_one() {
        let mut c = cluster("db", "prod", 3);
        c.spec.admin_token_secret = Some("mine".into());
        assert_eq!(admin_token_secret(&c, &[1; ADMIN_TOKEN_BYTES]), Ok(None));
        assert_eq!(admin_token_secret_name(&c).unwrap(), "mine");
        assert_eq!(admin_token_ref(&statefulset(&c, 3).unwrap()).name, "mine");
        c.metadata.uid = None;
        assert_eq!(
            admin_token_secret(&c, &[1; ADMIN_TOKEN_BYTES]),
            Err(BuildError::MissingUid)
        );
    }

    fn peers(rule: &NetworkPolicyIngressRule) -> &[NetworkPolicyPeer] {
        rule.from.as_deref().unwrap()
    }

    fn ports(rule: &NetworkPolicyIngressRule) -> Vec<i32> {
        rule.ports
            .as_deref()
            .unwrap()
            .iter()
            .map(|p| match p.port {
                Some(IntOrString::Int(port)) => port,
                ref other => panic!("port {other:?}"),
            })
            .collect()
    }

    #[test]
    fn network_policy_admits_only_members_and_the_operator_to_the_internode_port() {
        let policy = network_policy(&cluster("db", "prod", 3), "dynamo-system").unwrap();
        assert_eq!(policy.metadata.name.as_deref(), Some("db"));
        let spec = policy.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            selector_labels("db")
        );
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        assert_eq!(spec.egress, None);
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 2);

        let internode: Vec<_> = rules
            .iter()
            .filter(|r| ports(r).contains(&INTERNODE_PORT))
            .collect();
        assert_eq!(internode.len(), 1, "one rule names the internode port");
        assert_eq!(ports(internode[0]), [INTERNODE_PORT]);
        let [members, operator] = peers(internode[0]) else {
            panic!("two peers: members and operator");
        };
        assert_eq!(
            members.pod_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&selector_labels("db"))
        );
        assert_eq!(members.namespace_selector, None, "this namespace only");
        assert_eq!(members.ip_block, None);
        assert_eq!(
            operator
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref(),
            Some(&operator_selector_labels())
        );
        assert_eq!(
            operator_selector_labels()["app.kubernetes.io/name"],
            "dynamo-operator"
        );
        let namespace = operator.namespace_selector.as_ref().unwrap();
        assert_eq!(
            namespace.match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "dynamo-system"
        );
    }

    #[test]
    fn network_policy_admits_the_namespace_to_client_and_http_ports() {
        let spec = network_policy(&cluster("db", "prod", 3), "ops")
            .unwrap()
            .spec
            .unwrap();
        let rules = spec.ingress.unwrap();
        let open = rules
            .iter()
            .find(|r| ports(r).contains(&CLIENT_PORT))
            .unwrap();
        assert_eq!(ports(open), [CLIENT_PORT, HTTP_PORT]);
        let [anyone_here] = peers(open) else {
            panic!("one peer");
        };
        // An empty pod selector and no namespace selector: every pod in `prod`, nothing else.
        assert_eq!(anyone_here.pod_selector, Some(LabelSelector::default()));
        assert_eq!(anyone_here.namespace_selector, None);
        assert_eq!(anyone_here.ip_block, None);
        // No rule admits the internode port from the namespace at large.
        assert!(!ports(open).contains(&INTERNODE_PORT));
    }

    #[test]
    fn metrics_namespaces_reach_only_the_http_port() {
        let c = cluster("db", "prod", 3);
        let plain = network_policy(&c, "ops").unwrap();
        assert_eq!(network_policy_admitting(&c, "ops", &[]).unwrap(), plain);
        let monitoring = ["monitoring".to_owned(), "observability".to_owned()];
        let rules = network_policy_admitting(&c, "ops", &monitoring)
            .unwrap()
            .spec
            .unwrap()
            .ingress
            .unwrap();
        assert_eq!(rules.len(), 3);
        let scrape = &rules[2];
        assert_eq!(ports(scrape), [HTTP_PORT]);
        let [prometheus] = peers(scrape) else {
            panic!("one peer");
        };
        let selector = prometheus.namespace_selector.as_ref().unwrap();
        let [requirement] = selector.match_expressions.as_deref().unwrap() else {
            panic!("one requirement");
        };
        assert_eq!(
            (
                requirement.key.as_str(),
                requirement.operator.as_str(),
                requirement.values.as_deref().unwrap()
            ),
            ("kubernetes.io/metadata.name", "In", &monitoring[..])
        );
        // Every pod of those namespaces, and no other port for them.
        assert_eq!(prometheus.pod_selector, None);
    }

    #[test]
    fn volume_claim_template_follows_storage_spec() {
        let mut c = cluster("db", "prod", 3);
        c.spec.storage.size = "50Gi".into();
        c.spec.storage.storage_class_name = Some("fast".into());
        c.spec.storage.retain_on_scale_down = false;
        let sts = statefulset(&c, 3).unwrap();
        let spec = &sts.spec;
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        assert_eq!(claim.metadata.name.as_deref(), Some(DATA_VOLUME));
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        let requests = claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert_eq!(requests["storage"], Quantity("50Gi".into()));
        let policy = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(policy.when_scaled.as_deref(), Some("Delete"));
        assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
        let mounts = pod_spec(&sts).containers[0].volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.name == DATA_VOLUME && m.mount_path == DATA_DIR)
        );
    }

    #[test]
    fn default_scheduling_spreads_nodes() {
        let sts = statefulset(&cluster("db", "prod", 3), 3).unwrap();
        let pod = pod_spec(&sts);
        let anti = pod
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap();
        let term = &anti
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            term.pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        let spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
        assert_eq!(spread.max_skew, 1);
        assert_eq!(spread.when_unsatisfiable, "ScheduleAnyway");
        assert_eq!(pod.node_selector, None);
        assert_eq!(pod.tolerations, None);
    }

    #[test]
    fn pod_template_extras_are_merged() {
        let mut c = cluster("db", "prod", 3);
        let extras = &mut c.spec.pod_template;
        extras.labels.insert("team".into(), "storage".into());
        // An operator label cannot be overridden: the selector depends on it.
        extras
            .labels
            .insert("app.kubernetes.io/instance".into(), "evil".into());
        extras.annotations.insert("note".into(), "x".into());
        extras.node_selector.insert("disk".into(), "ssd".into());
        extras.tolerations.push(Toleration {
            key: Some("dedicated".into()),
            ..Toleration::default()
        });
        extras.affinity = Some(Affinity::default());
        let sts = statefulset(&c, 3).unwrap();
        let template = &sts.spec.template;
        let meta = template.metadata.as_ref().unwrap();
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "storage");
        assert_eq!(labels["app.kubernetes.io/instance"], "db");
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations["note"], "x");
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        let pod = template.spec.as_ref().unwrap();
        assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "ssd");
        assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(pod.affinity, Some(Affinity::default()));
    }

    #[test]
    fn config_change_changes_the_pod_template_hash() {
        let hash = |c: &DynamoCluster| {
            let sts = statefulset(c, 3).unwrap();
            let meta = sts.spec.template.metadata.unwrap();
            meta.annotations.unwrap()[CONFIG_HASH_ANNOTATION].clone()
        };
        let a = cluster("db", "prod", 3);
        let mut b = a.clone();
        assert_eq!(hash(&a), hash(&b));
        b.spec.durability = Durability::Buffered;
        assert_ne!(hash(&a), hash(&b));
        // Scaling alone does not restart nodes.
        let mut c = a.clone();
        c.spec.size = 4;
        assert_eq!(hash(&a), hash(&c));
    }

    #[test]
    fn template_inputs_hash_is_stable_across_releases() {
        // Pinned: a release that changes this value restarts every cluster it
        // upgrades. Change it only with a note in the release (see
        // `TEMPLATE_INPUTS_ANNOTATION`).
        let a = cluster("db", "prod", 5);
        assert_eq!(template_inputs_hash(&a), "819e3e27d7878b1c");
        // Membership alone leaves it; the template's inputs change it.
        let mut b = a.clone();
        b.spec.size = 7;
        b.spec.weights.default = 3;
        assert_eq!(template_inputs_hash(&a), template_inputs_hash(&b));
        b.spec.size = 2;
        assert_ne!(template_inputs_hash(&a), template_inputs_hash(&b), "seeds");
        let mut c = a.clone();
        c.spec.image = "dynamo-node:next".into();
        assert_ne!(template_inputs_hash(&a), template_inputs_hash(&c));
        let built = statefulset(&a, 5).unwrap();
        assert_eq!(
            built.metadata.annotations.unwrap()[TEMPLATE_INPUTS_ANNOTATION],
            template_inputs_hash(&a)
        );
    }

    #[test]
    fn a_partition_is_set_above_zero_and_unset_at_zero() {
        let mut sts = statefulset(&cluster("db", "prod", 3), 3).unwrap();
        set_partition(&mut sts, 2);
        let strategy = sts.spec.update_strategy.clone().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(strategy.rolling_update.unwrap().partition, Some(2));
        set_partition(&mut sts, 0);
        assert_eq!(sts.spec.update_strategy.unwrap().rolling_update, None);
    }

    #[test]
    fn selector_string_matches_labels() {
        assert_eq!(
            selector_string("db"),
            "app.kubernetes.io/instance=db,app.kubernetes.io/name=dynamo"
        );
    }
}
