//! The membership planner: from the desired cluster and what was observed, the single next
//! step. No I/O.
//!
//! Dynamo leaves membership to an administrator who "uses a command line tool or a browser
//! to connect to a Dynamo node and issue a membership change" (Dynamo §4.3); adding or
//! removing a node moves key ranges between nodes (§4.9). The operator is that
//! administrator, and this module is its judgement: one change at a time, each only when
//! the previous one has finished moving data.
//!
//! The planner is level-triggered: [`plan`] looks only at the observed state (the
//! StatefulSet's replica count, pod readiness, and the member table read through
//! `Admin.Ring`), never at a record of what it did before, so a restarted or duplicated
//! operator makes the same decision. The order of precedence:
//!
//! 1. While a member is joining, leaving, or moving data, wait. A weight change moves
//!    data until its node settles the new weight (the member table then shows both
//!    weights equal; see [`crate::admin::MemberView::ring_member`]).
//! 2. Shrink the StatefulSet over ordinals at or above `size` whose nodes are removed
//!    (or never joined), so a pod and its volume go only after the ring let go of them.
//! 3. Grow the StatefulSet to hold `size` nodes and every node still in the ring.
//! 4. While a member's pod is not ready, wait: the ring is not healthy enough to move data.
//! 5. Join the lowest running pod below `size` that is not a member, with its weight
//!    (not "ready": a node reports ready only once it is in the ring).
//! 6. Decommission the highest member at or above `size`, unless fewer than `N` members
//!    would remain, or the remaining nodes obviously cannot hold the data (see
//!    [`capacity_shortfall`]): then refuse.
//! 7. Set the weight of the lowest member whose weight differs from the spec.
//! 8. Done.
//!
//! [`check`] states the safety rules every step must satisfy, independent of this order;
//! the tests check [`plan`] against it on arbitrary states.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::builders::ordinal_of;
use crate::crd::{DynamoClusterSpec, MAX_WEIGHT, Phase, SpecError};

/// A member's state in the ring, as `Admin.Ring` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Joined, taking over its ranges.
    Joining,
    /// A full member.
    Member,
    /// Decommissioned, handing its ranges off.
    Leaving,
    /// Out of the ring; its data has been handed off.
    Removed,
}

impl MemberState {
    /// Whether the node holds or is taking ranges (everything but `Removed`).
    #[must_use]
    pub fn is_active(self) -> bool {
        self != Self::Removed
    }
}

/// One row of the member table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedMember {
    /// Its state.
    pub state: MemberState,
    /// Its weight.
    pub weight: u32,
    /// Whether key ranges are still moving to or from it (after a join, a weight change
    /// or a decommission).
    pub transfers_pending: bool,
    /// The keys it stores (`Admin.Status.keys`, every replica it holds), when its status
    /// was read.
    pub keys: Option<u64>,
}

/// What the operator saw this pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The StatefulSet's `spec.replicas` (0 when it does not exist yet).
    pub statefulset_replicas: u32,
    /// Ordinals whose node process is up (pod Running, container started), in the ring
    /// or not: what a join needs.
    pub running: BTreeSet<u32>,
    /// Ordinals whose pod is Ready. The node's `/readyz` answers ready only while it is
    /// in the ring, so this is a member's health, and never true before its join.
    pub ready: BTreeSet<u32>,
    /// The member table, by ordinal (node ids are pod names, `<cluster>-<ordinal>`).
    pub members: BTreeMap<u32, ObservedMember>,
    /// How long each pod that is not Ready has been so (its Ready condition's last
    /// transition, or its creation), by ordinal. A member whose pod is missing is not
    /// in it: the StatefulSet recreates pods, so no time is known to have passed.
    pub unready_for: BTreeMap<u32, Duration>,
}

/// A row of `Admin.Ring`, with the node's transfer report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingMember<'a> {
    /// The node id (`<cluster>-<ordinal>` for this cluster's pods).
    pub node_id: &'a str,
    /// Its state.
    pub state: MemberState,
    /// Its weight.
    pub weight: u32,
    /// Whether key ranges are still moving to or from it.
    pub transfers_pending: bool,
}

/// Why a member table cannot be mapped onto this cluster's pods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// An active member is not one of this cluster's pods: the ring holds a node the
    /// operator does not manage, and it will not guess what to do with it.
    #[error("ring member {0:?} is not a pod of this cluster")]
    ForeignMember(String),
    /// The table lists a node twice.
    #[error("ring lists node {0:?} twice")]
    DuplicateMember(String),
}

/// Maps `Admin.Ring`'s member table onto ordinals, for [`Observed::members`]. Removed
/// nodes that are not this cluster's pods are ignored: they hold nothing.
///
/// # Errors
/// [`ObserveError`] for an active foreign member or a duplicate row.
pub fn members_from_ring<'a>(
    cluster_name: &str,
    ring: impl IntoIterator<Item = RingMember<'a>>,
) -> Result<BTreeMap<u32, ObservedMember>, ObserveError> {
    let mut members = BTreeMap::new();
    for row in ring {
        let Some(ordinal) = ordinal_of(cluster_name, row.node_id) else {
            if row.state.is_active() {
                return Err(ObserveError::ForeignMember(row.node_id.to_owned()));
            }
            continue;
        };
        let member = ObservedMember {
            state: row.state,
            weight: row.weight,
            transfers_pending: row.transfers_pending,
            keys: None,
        };
        if members.insert(ordinal, member).is_some() {
            return Err(ObserveError::DuplicateMember(row.node_id.to_owned()));
        }
    }
    Ok(members)
}

impl Observed {
    fn active(&self) -> impl DoubleEndedIterator<Item = (u32, &ObservedMember)> {
        self.members
            .iter()
            .filter(|(_, m)| m.state.is_active())
            .map(|(&o, m)| (o, m))
    }

    /// Whether the active member `ordinal` has been not Ready for `dead_after` or
    /// longer: dead, until it comes back.
    fn is_dead(&self, ordinal: u32, dead_after: Duration) -> bool {
        !self.ready.contains(&ordinal)
            && self
                .unready_for
                .get(&ordinal)
                .is_some_and(|&unready| unready >= dead_after)
    }

    fn is_active(&self, ordinal: u32) -> bool {
        self.members
            .get(&ordinal)
            .is_some_and(|m| m.state.is_active())
    }

    /// The first member still moving: with transfers pending, leaving, or joining.
    ///
    /// Transfers come first because they are the most specific report: a node that
    /// joins or leaves says whether its ranges still move; `Joining` or `Leaving`
    /// without transfers pending is the state flip spreading by gossip.
    fn in_flight(&self) -> Option<WaitReason> {
        let find = |pred: &dyn Fn(&ObservedMember) -> bool| {
            self.members.iter().find(|(_, m)| pred(m)).map(|(&o, _)| o)
        };
        if let Some(ordinal) = find(&|m| m.transfers_pending) {
            return Some(WaitReason::TransfersPending { ordinal });
        }
        if let Some(ordinal) = find(&|m| m.state == MemberState::Leaving) {
            return Some(WaitReason::Leaving { ordinal });
        }
        find(&|m| m.state == MemberState::Joining).map(|ordinal| WaitReason::Joining { ordinal })
    }
}

/// Why a desired cluster is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DesiredError {
    /// `size` is 0.
    #[error("size must be at least 1")]
    ZeroSize,
    /// The replication factor is 0.
    #[error("replication factor must be at least 1")]
    ZeroReplication,
    /// The weights do not cover exactly the ordinals `0..size`.
    #[error("expected {size} weights, got {weights}")]
    WeightCount {
        /// Desired size.
        size: u32,
        /// Number of weights given.
        weights: usize,
    },
    /// A weight is outside `1..=MAX_WEIGHT`.
    #[error("weight {0} is outside 1..=10000")]
    Weight(u32),
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// `storage.size` is not a Kubernetes quantity of bytes.
    #[error("storage size {0:?} is not a quantity of bytes")]
    StorageSize(String),
}

/// What the cluster should look like: `size` nodes with these weights, replication
/// factor `N`. Always valid once built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    size: u32,
    replication_factor: u32,
    weights: Vec<u32>,
    volume_bytes: Option<u64>,
    dead_after: Duration,
    replace: Option<u32>,
}

/// How long a member's pod may be not Ready before it is reported dead, unless the
/// spec says otherwise.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(600);

impl Desired {
    /// A desired cluster of `weights.len() == size` nodes.
    ///
    /// `size` may be below `replication_factor` (an object that predates the schema's
    /// rule); the planner then refuses to decommission below `N` rather than this
    /// constructor failing, so the refusal shows up in the status.
    ///
    /// # Errors
    /// [`DesiredError`] for a zero size or factor, or weights that do not match.
    pub fn new(
        size: u32,
        replication_factor: u32,
        weights: Vec<u32>,
    ) -> Result<Self, DesiredError> {
        if size == 0 {
            return Err(DesiredError::ZeroSize);
        }
        if replication_factor == 0 {
            return Err(DesiredError::ZeroReplication);
        }
        if usize::try_from(size).ok() != Some(weights.len()) {
            return Err(DesiredError::WeightCount {
                size,
                weights: weights.len(),
            });
        }
        if let Some(&bad) = weights.iter().find(|w| !(1..=MAX_WEIGHT).contains(*w)) {
            return Err(DesiredError::Weight(bad));
        }
        Ok(Self {
            size,
            replication_factor,
            weights,
            volume_bytes: None,
            dead_after: DEFAULT_DEAD_AFTER,
            replace: None,
        })
    }

    /// The same cluster with members dead after `after` not Ready.
    #[must_use]
    pub fn with_dead_after(self, after: Duration) -> Self {
        Self {
            dead_after: after,
            ..self
        }
    }

    /// The same cluster with a replace of member `ordinal` asked for: once it is not
    /// Ready, it is removed from the ring without a hand-off and its pod rebuilt.
    #[must_use]
    pub fn with_replace(self, ordinal: Option<u32>) -> Self {
        Self {
            replace: ordinal,
            ..self
        }
    }

    /// The member a replace asks for, if any.
    #[must_use]
    pub fn replace(&self) -> Option<u32> {
        self.replace
    }

    /// The same cluster with each node's volume holding `bytes` (`None`: unknown, no
    /// capacity check).
    #[must_use]
    pub fn with_volume_bytes(self, bytes: Option<u64>) -> Self {
        Self {
            volume_bytes: bytes,
            ..self
        }
    }

    /// The desired cluster of a `DynamoCluster` spec.
    ///
    /// # Errors
    /// [`DesiredError::Spec`] when a weight cannot be derived, [`DesiredError::ZeroSize`]
    /// for a size below 1, [`DesiredError::StorageSize`] for a volume size that is not
    /// a quantity of bytes.
    pub fn from_spec(spec: &DynamoClusterSpec) -> Result<Self, DesiredError> {
        // Rendered into every pod's config: a setting the node refuses would stop every
        // pod from starting.
        spec.check_node_config()?;
        let size = u32::try_from(spec.size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or(DesiredError::ZeroSize)?;
        let weights = (0..size)
            .map(|ordinal| spec.weight_of(ordinal))
            .collect::<Result<Vec<_>, _>>()?;
        let volume = volume_bytes(&spec.storage.size)
            .ok_or_else(|| DesiredError::StorageSize(spec.storage.size.clone()))?;
        Ok(Self::new(size, spec.replication.n, weights)?
            .with_volume_bytes(Some(volume))
            .with_dead_after(
                spec.dead_member_timeout_seconds
                    .map_or(DEFAULT_DEAD_AFTER, |s| Duration::from_secs(u64::from(s))),
            ))
    }

    /// Desired number of nodes.
    #[must_use]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Replication factor `N`.
    #[must_use]
    pub fn replication_factor(&self) -> u32 {
        self.replication_factor
    }

    /// The desired weight of an ordinal below `size`.
    #[must_use]
    pub fn weight(&self, ordinal: u32) -> Option<u32> {
        self.weights.get(usize::try_from(ordinal).ok()?).copied()
    }

    /// Bytes each node's volume holds, when known.
    #[must_use]
    pub fn volume_bytes(&self) -> Option<u64> {
        self.volume_bytes
    }
}

/// The bytes of a Kubernetes quantity (`10Gi`, `500M`, `1e9`), rounded down; `None` when
/// it is not one or is negative.
#[must_use]
pub fn volume_bytes(quantity: &str) -> Option<u64> {
    crate::crd::quantity_bytes(quantity)
}

/// The fewest bytes one stored key can take on a node's volume: the 16-byte ring
/// position every stored key is filed under, at least one byte of key, and the stored
/// version record (a format byte and a vector clock entry naming a node and a counter,
/// plus the value). Real records with the storage engine's own overhead are larger, so
/// an estimate with this floor errs towards allowing a decommission.
pub const MIN_STORED_BYTES_PER_KEY: u64 = 32;

/// Whether the nodes left after decommissioning `ordinal` obviously cannot hold the
/// data, and if so why.
///
/// The heuristic, deliberately simple and only ever an under-estimate of the need:
///
/// * The data to hold is every key every active member stores now (`Admin.Status.keys`
///   counts each replica a node holds), since the leaving node's replicas move to the
///   others and nodes keep what they already have.
/// * Each key takes at least [`MIN_STORED_BYTES_PER_KEY`] bytes.
/// * The room is the remaining nodes' volumes, `storage.size` each.
///
/// It refuses only when even that floor does not fit the room. It says nothing (no
/// refusal) when the volume size is unknown or any active member's key count was not
/// read: "obviously" needs every number. The nodes do not report their bytes on disk,
/// so a tighter estimate (real bytes per key, headroom for compaction) needs that
/// report first.
#[must_use]
pub fn capacity_shortfall(
    desired: &Desired,
    observed: &Observed,
    ordinal: u32,
) -> Option<RefuseReason> {
    let volume = desired.volume_bytes?;
    let mut keys: u64 = 0;
    for (_, member) in observed.active() {
        keys = keys.saturating_add(member.keys?);
    }
    let remaining = observed.active().filter(|&(o, _)| o != ordinal).count();
    let remaining = u64::try_from(remaining).unwrap_or(u64::MAX);
    let needed = u128::from(keys) * u128::from(MIN_STORED_BYTES_PER_KEY);
    let room = u128::from(remaining) * u128::from(volume);
    (needed > room).then(|| RefuseReason::InsufficientCapacity {
        ordinal,
        keys,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        volume_bytes: volume,
    })
}

/// Why the planner waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// A node is handing its ranges off.
    Leaving {
        /// Its ordinal.
        ordinal: u32,
    },
    /// A node is taking over its ranges.
    Joining {
        /// Its ordinal.
        ordinal: u32,
    },
    /// Ranges are moving to or from a member.
    TransfersPending {
        /// Its ordinal.
        ordinal: u32,
    },
    /// A member's pod is not ready.
    MemberNotReady {
        /// Its ordinal.
        ordinal: u32,
    },
    /// A member's pod has not been ready for the dead-member timeout: it is reported,
    /// and replaced only when asked ([`Desired::with_replace`]), unless it is above
    /// `size`, where the scale-down removes it.
    MemberDead {
        /// Its ordinal.
        ordinal: u32,
        /// The timeout, in seconds.
        after_seconds: u64,
    },
    /// The pod to join next is not running.
    PodNotRunning {
        /// Its ordinal.
        ordinal: u32,
    },
}

impl WaitReason {
    /// The member waited on.
    #[must_use]
    pub fn ordinal(&self) -> u32 {
        match *self {
            Self::Leaving { ordinal }
            | Self::Joining { ordinal }
            | Self::TransfersPending { ordinal }
            | Self::MemberNotReady { ordinal }
            | Self::MemberDead { ordinal, .. }
            | Self::PodNotRunning { ordinal } => ordinal,
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Leaving { ordinal } => write!(f, "node {ordinal} is leaving"),
            Self::Joining { ordinal } => write!(f, "node {ordinal} is joining"),
            Self::TransfersPending { ordinal } => {
                write!(f, "transfers pending on node {ordinal}")
            }
            Self::MemberNotReady { ordinal } => write!(f, "member {ordinal} is not ready"),
            Self::MemberDead {
                ordinal,
                after_seconds,
            } => write!(
                f,
                "member {ordinal} has not been ready for {after_seconds} s or more; if it \
                 will not come back, replace it (annotation dynamo.example.org/replace)"
            ),
            Self::PodNotRunning { ordinal } => write!(f, "pod {ordinal} is not running"),
        }
    }
}

/// Why the planner refuses to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// Decommissioning would leave fewer members than the replication factor, so some
    /// keys would have fewer than `N` replicas (Dynamo §4.3's preference list of `N`).
    TooFewMembers {
        /// The node that would be decommissioned.
        ordinal: u32,
        /// Members that would remain.
        remaining: u32,
        /// The replication factor.
        replication_factor: u32,
    },
    /// The nodes that would remain obviously cannot hold the data (see
    /// [`capacity_shortfall`]).
    InsufficientCapacity {
        /// The node that would be decommissioned.
        ordinal: u32,
        /// Keys the active members store now, every replica counted.
        keys: u64,
        /// Members that would remain.
        remaining: u32,
        /// Bytes of each node's volume.
        volume_bytes: u64,
    },
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooFewMembers {
                ordinal,
                remaining,
                replication_factor,
            } => write!(
                f,
                "decommissioning node {ordinal} would leave {remaining} members, fewer than \
                 the replication factor {replication_factor}"
            ),
            // Not the key count: it changes with every write, and the status carries
            // this text, so a refusal would rewrite the status (and retrigger the
            // controller) on every pass.
            Self::InsufficientCapacity {
                ordinal,
                remaining,
                volume_bytes,
                ..
            } => write!(
                f,
                "decommissioning node {ordinal} would leave the stored keys (at least \
                 {MIN_STORED_BYTES_PER_KEY} bytes each) on {remaining} members with \
                 {volume_bytes}-byte volumes: they cannot hold them"
            ),
        }
    }
}

/// The one next thing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Set the StatefulSet's replicas to `to` (larger), creating pods to join.
    GrowStatefulSet {
        /// New replica count.
        to: u32,
    },
    /// `Admin.Join` the node with this ordinal.
    Join {
        /// Its ordinal.
        ordinal: u32,
        /// Its weight.
        weight: u32,
    },
    /// `Admin.SetWeight` on a member.
    SetWeight {
        /// Its ordinal.
        ordinal: u32,
        /// The new weight.
        weight: u32,
    },
    /// `Admin.Leave` the node with this ordinal: it hands off its ranges.
    Decommission {
        /// Its ordinal.
        ordinal: u32,
    },
    /// `Admin.Remove` a dead member: out of the ring at once, without a hand-off (its
    /// ranges' other replicas hold their copies). Asked for by a replace, or a member
    /// above `size` dead for the timeout.
    Remove {
        /// Its ordinal.
        ordinal: u32,
        /// Whether a replace asked for it (the pod and its volume are then deleted so
        /// the StatefulSet recreates them empty, and the new node joins).
        replace: bool,
    },
    /// Set the StatefulSet's replicas to `to` (smaller): every node at or above `to` is
    /// removed from the ring or never joined.
    ShrinkStatefulSet {
        /// New replica count.
        to: u32,
    },
    /// Nothing to do until the observed state changes.
    Wait {
        /// Why.
        reason: WaitReason,
    },
    /// The spec asks for something unsafe; nothing is done until it changes.
    Refuse {
        /// Why.
        reason: RefuseReason,
    },
    /// The cluster matches the spec.
    Done,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GrowStatefulSet { to } => write!(f, "grow statefulset to {to}"),
            Self::Join { ordinal, weight } => write!(f, "join {ordinal} with weight {weight}"),
            Self::SetWeight { ordinal, weight } => {
                write!(f, "set weight of {ordinal} to {weight}")
            }
            Self::Decommission { ordinal } => write!(f, "decommission {ordinal}"),
            Self::Remove {
                ordinal,
                replace: true,
            } => write!(f, "remove dead member {ordinal} to replace it"),
            Self::Remove {
                ordinal,
                replace: false,
            } => write!(f, "remove dead member {ordinal}"),
            Self::ShrinkStatefulSet { to } => write!(f, "shrink statefulset to {to}"),
            Self::Wait { reason } => write!(f, "wait: {reason}"),
            Self::Refuse { reason } => write!(f, "refused: {reason}"),
            Self::Done => f.write_str("done"),
        }
    }
}

impl Step {
    /// The cluster phase this step implies, for `status.phase`.
    #[must_use]
    pub fn phase(&self, observed: &Observed) -> Phase {
        match self {
            Self::Done => Phase::Running,
            Self::Refuse { .. }
            | Self::Wait {
                reason: WaitReason::MemberNotReady { .. } | WaitReason::MemberDead { .. },
            } => Phase::Degraded,
            _ if observed.members.values().all(|m| !m.state.is_active()) => Phase::Pending,
            _ => Phase::Progressing,
        }
    }
}

/// The StatefulSet must hold every node still in the ring (so its pod and volume stay
/// until it is removed) and every wanted node.
fn replicas_target(size: u32, highest_active: Option<u32>) -> u32 {
    highest_active.map_or(0, |o| o + 1).max(size)
}

/// The next step from `observed` towards `desired` (see the [module docs](self) for the
/// order of precedence).
#[must_use]
pub fn plan(desired: &Desired, observed: &Observed) -> Step {
    let size = desired.size;
    if let Some(step) = remove_dead(desired, observed) {
        return step;
    }
    if let Some(reason) = observed.in_flight() {
        return Step::Wait { reason };
    }
    let highest_active = observed.active().map(|(o, _)| o).next_back();
    let replicas = replicas_target(size, highest_active);
    if replicas < observed.statefulset_replicas {
        return Step::ShrinkStatefulSet { to: replicas };
    }
    if replicas > observed.statefulset_replicas {
        return Step::GrowStatefulSet { to: replicas };
    }
    if let Some((ordinal, _)) = observed.active().find(|(o, _)| !observed.ready.contains(o)) {
        let reason = if observed.is_dead(ordinal, desired.dead_after) {
            WaitReason::MemberDead {
                ordinal,
                after_seconds: desired.dead_after.as_secs(),
            }
        } else {
            WaitReason::MemberNotReady { ordinal }
        };
        return Step::Wait { reason };
    }
    if let Some(ordinal) = (0..size).find(|&o| !observed.is_active(o)) {
        let running =
            (ordinal..size).find(|&o| !observed.is_active(o) && observed.running.contains(&o));
        return match running {
            Some(ordinal) => Step::Join {
                ordinal,
                weight: desired.weights[ordinal as usize],
            },
            None => Step::Wait {
                reason: WaitReason::PodNotRunning { ordinal },
            },
        };
    }
    if let Some(ordinal) = highest_active.filter(|&o| o >= size) {
        let remaining = u32::try_from(observed.active().count()).unwrap_or(u32::MAX) - 1;
        if remaining < desired.replication_factor {
            return Step::Refuse {
                reason: RefuseReason::TooFewMembers {
                    ordinal,
                    remaining,
                    replication_factor: desired.replication_factor,
                },
            };
        }
        if let Some(reason) = capacity_shortfall(desired, observed, ordinal) {
            return Step::Refuse { reason };
        }
        return Step::Decommission { ordinal };
    }
    for (ordinal, member) in observed.active() {
        if let Some(weight) = desired.weight(ordinal)
            && member.weight != weight
        {
            return Step::SetWeight { ordinal, weight };
        }
    }
    Step::Done
}

/// Annotation on a `DynamoCluster` asking to replace a dead member: its value is the
/// member's pod name (`<cluster>-<ordinal>`). The operator removes the member from the
/// ring without its hand-off, deletes its pod and volume so the StatefulSet recreates
/// them empty, clears the annotation, and the new node joins and pulls its ranges.
pub const REPLACE_ANNOTATION: &str = "dynamo.example.org/replace";

/// Why a replace annotation is refused (and cleared).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplaceRefusal {
    /// The value is not one of this cluster's pod names.
    #[error("{0:?} is not a pod of this cluster: name the member's pod, e.g. <cluster>-2")]
    NotAPod(String),
    /// The pod's node is not in the ring.
    #[error("member {0} is not in the ring: nothing to replace")]
    NotAMember(u32),
    /// The member is Ready: it is alive, and replacing it would throw its data away.
    #[error(
        "member {0} is ready: only a member that is not ready can be replaced (a live one \
         is decommissioned by scaling down, or restarted by deleting its pod)"
    )]
    Ready(u32),
}

/// The member a replace annotation's `value` names, if it can be replaced now: one of
/// this cluster's pods, in the ring, not Ready.
///
/// # Errors
/// [`ReplaceRefusal`] otherwise.
pub fn replace_request(
    cluster_name: &str,
    value: &str,
    observed: &Observed,
) -> Result<u32, ReplaceRefusal> {
    let ordinal = ordinal_of(cluster_name, value.trim())
        .ok_or_else(|| ReplaceRefusal::NotAPod(value.to_owned()))?;
    if !observed.is_active(ordinal) {
        return Err(ReplaceRefusal::NotAMember(ordinal));
    }
    if observed.ready.contains(&ordinal) {
        return Err(ReplaceRefusal::Ready(ordinal));
    }
    Ok(ordinal)
}

/// The dead member to remove now, if any: one a replace names, or one above `size`
/// dead for the timeout (scaling down past a node that will not come back), and not
/// Ready either way. A change in flight on another member comes first; the dead
/// member's own (a join or a leave it will never finish) does not hold it. Removing one
/// above `size` must leave `N` members, as a decommission must; a replace may go below
/// for the moment, since its new node joins next.
fn remove_dead(desired: &Desired, observed: &Observed) -> Option<Step> {
    let (ordinal, replace) = observed
        .active()
        .filter(|(o, _)| !observed.ready.contains(o))
        .find_map(|(o, _)| {
            if desired.replace == Some(o) {
                Some((o, true))
            } else if o >= desired.size && observed.is_dead(o, desired.dead_after) {
                Some((o, false))
            } else {
                None
            }
        })?;
    if observed
        .in_flight()
        .is_some_and(|reason| reason.ordinal() != ordinal)
    {
        return None;
    }
    let remaining = u32::try_from(observed.active().count()).unwrap_or(u32::MAX) - 1;
    if !replace && remaining < desired.replication_factor {
        return Some(Step::Refuse {
            reason: RefuseReason::TooFewMembers {
                ordinal,
                remaining,
                replication_factor: desired.replication_factor,
            },
        });
    }
    Some(Step::Remove { ordinal, replace })
}

/// A step that breaks a safety rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A membership change while another is still moving data.
    #[error("{step} while a change is in flight")]
    ConcurrentChange {
        /// The step.
        step: Step,
    },
    /// A join of a pod that is not running, already active, or not wanted.
    #[error("{step} is not a wanted, running, inactive node with its desired weight")]
    BadJoin {
        /// The step.
        step: Step,
    },
    /// A weight change that is not to the desired weight of a full member.
    #[error("{step} does not set a member to its desired weight")]
    BadSetWeight {
        /// The step.
        step: Step,
    },
    /// A decommission that is not of the highest active node above `size`, leaves
    /// fewer than `N` members, or leaves obviously too little room for the data.
    #[error("{step} is not a safe decommission")]
    BadDecommission {
        /// The step.
        step: Step,
    },
    /// A removal without a hand-off of a member that is Ready, not asked for and not
    /// dead above `size`, that leaves fewer than `N` members when not a replace, or
    /// while another member's change is in flight.
    #[error("{step} is not a removal of a dead or replaced member")]
    BadRemove {
        /// The step.
        step: Step,
    },
    /// A shrink that would delete a pod whose node is still in the ring, or go below
    /// `size`.
    #[error("{step} would drop an active node or go below size")]
    BadShrink {
        /// The step.
        step: Step,
    },
    /// A grow to anything but what holds `size` nodes and every active one, or while a
    /// change is in flight.
    #[error("{step} does not grow to the needed replicas")]
    BadGrow {
        /// The step.
        step: Step,
    },
    /// `Done` although the cluster does not match the spec.
    #[error("done before the cluster matches the spec")]
    NotConverged,
}

/// Checks the safety rules of a step, independent of how it was chosen.
///
/// # Errors
/// The [`Violation`] the step commits.
pub fn check(desired: &Desired, observed: &Observed, step: &Step) -> Result<(), Violation> {
    let changes_membership = matches!(
        step,
        Step::Join { .. } | Step::SetWeight { .. } | Step::Decommission { .. }
    );
    if changes_membership && observed.in_flight().is_some() {
        return Err(Violation::ConcurrentChange { step: *step });
    }
    let ok = match *step {
        Step::Join { .. }
        | Step::SetWeight { .. }
        | Step::Decommission { .. }
        | Step::Remove { .. } => membership_step_allowed(desired, observed, step),
        Step::ShrinkStatefulSet { .. } | Step::GrowStatefulSet { .. } => {
            resize_allowed(desired, observed, step)
        }
        Step::Done => {
            if !converged(desired, observed) {
                return Err(Violation::NotConverged);
            }
            true
        }
        Step::Wait { .. } | Step::Refuse { .. } => true,
    };
    if ok {
        return Ok(());
    }
    Err(match step {
        Step::Join { .. } => Violation::BadJoin { step: *step },
        Step::SetWeight { .. } => Violation::BadSetWeight { step: *step },
        Step::Decommission { .. } => Violation::BadDecommission { step: *step },
        Step::Remove { .. } => Violation::BadRemove { step: *step },
        Step::ShrinkStatefulSet { .. } => Violation::BadShrink { step: *step },
        _ => Violation::BadGrow { step: *step },
    })
}

/// Whether a join, weight change, decommission or removal is one the desired state
/// asks for and the ring can take.
fn membership_step_allowed(desired: &Desired, observed: &Observed, step: &Step) -> bool {
    let size = desired.size;
    let active_count = observed.active().count();
    match *step {
        Step::Join { ordinal, weight } => {
            ordinal < size
                && ordinal < observed.statefulset_replicas
                && observed.running.contains(&ordinal)
                && !observed.is_active(ordinal)
                && desired.weight(ordinal) == Some(weight)
        }
        Step::SetWeight { ordinal, weight } => {
            observed
                .members
                .get(&ordinal)
                .is_some_and(|m| m.state == MemberState::Member && m.weight != weight)
                && desired.weight(ordinal) == Some(weight)
        }
        Step::Decommission { ordinal } => {
            ordinal >= size
                && observed
                    .members
                    .get(&ordinal)
                    .is_some_and(|m| m.state == MemberState::Member)
                && observed.active().all(|(o, _)| o <= ordinal)
                && active_count > desired.replication_factor as usize
                && capacity_shortfall(desired, observed, ordinal).is_none()
        }
        Step::Remove { ordinal, replace } => {
            let asked = if replace {
                desired.replace == Some(ordinal)
            } else {
                ordinal >= size
                    && observed.is_dead(ordinal, desired.dead_after)
                    && active_count > desired.replication_factor as usize
            };
            asked
                && observed.is_active(ordinal)
                && !observed.ready.contains(&ordinal)
                && observed
                    .in_flight()
                    .is_none_or(|reason| reason.ordinal() == ordinal)
        }
        _ => false,
    }
}

/// Whether a StatefulSet resize keeps every active node's pod (shrink) or grows to the
/// size the ring needs (grow).
fn resize_allowed(desired: &Desired, observed: &Observed, step: &Step) -> bool {
    let size = desired.size;
    match *step {
        Step::ShrinkStatefulSet { to } => {
            to >= size
                && to < observed.statefulset_replicas
                && observed.active().all(|(o, _)| o < to)
                && !observed
                    .members
                    .values()
                    .any(|m| m.state == MemberState::Leaving)
        }
        Step::GrowStatefulSet { to } => {
            let highest_active = observed.active().map(|(o, _)| o).next_back();
            observed.in_flight().is_none()
                && to == replicas_target(size, highest_active)
                && observed.statefulset_replicas < to
        }
        _ => false,
    }
}

/// Whether the cluster is as desired: every pod a member at its weight, nothing
/// moving.
fn converged(desired: &Desired, observed: &Observed) -> bool {
    let size = desired.size;
    observed.statefulset_replicas == size
        && observed.active().count() == size as usize
        && (0..size).all(|o| {
            observed.members.get(&o).is_some_and(|m| {
                m.state == MemberState::Member
                    && !m.transfers_pending
                    && desired.weight(o) == Some(m.weight)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;
    use proptest::prelude::*;

    use MemberState::{Joining, Leaving, Member, Removed};

    fn desired(size: u32, n: u32) -> Desired {
        Desired::new(size, n, vec![1; size as usize]).unwrap()
    }

    fn member(state: MemberState) -> ObservedMember {
        ObservedMember {
            state,
            weight: 1,
            transfers_pending: false,
            keys: None,
        }
    }

    /// A StatefulSet of `replicas` running pods whose nodes are in `states` (by
    /// ordinal); pods of nodes in the ring are ready.
    fn observed(replicas: u32, states: &[MemberState]) -> Observed {
        let mut o = Observed {
            statefulset_replicas: replicas,
            running: (0..replicas).collect(),
            ready: BTreeSet::new(),
            members: states
                .iter()
                .enumerate()
                .map(|(o, &s)| (o as u32, member(s)))
                .collect(),
            unready_for: BTreeMap::new(),
        };
        o.ready = ready_pods(&o);
        o
    }

    /// `o` with pod `ordinal` not Ready for `seconds`.
    fn unready(mut o: Observed, ordinal: u32, seconds: u64) -> Observed {
        o.ready.remove(&ordinal);
        o.unready_for.insert(ordinal, Duration::from_secs(seconds));
        o
    }

    /// Pods whose node's `/readyz` passes: running and in the ring.
    fn ready_pods(o: &Observed) -> BTreeSet<u32> {
        o.running
            .iter()
            .copied()
            .filter(|p| {
                o.members
                    .get(p)
                    .is_some_and(|m| matches!(m.state, Joining | Member))
            })
            .collect()
    }

    /// The model's view of a step's effect, as the controller and the nodes would make it.
    fn apply(observed: &mut Observed, step: Step) {
        match step {
            Step::GrowStatefulSet { to } | Step::ShrinkStatefulSet { to } => {
                observed.statefulset_replicas = to;
                observed.running.retain(|&o| o < to);
                observed.ready.retain(|&o| o < to);
            }
            Step::Join { ordinal, weight } => {
                observed.members.insert(
                    ordinal,
                    ObservedMember {
                        state: Joining,
                        weight,
                        transfers_pending: true,
                        keys: Some(0),
                    },
                );
            }
            Step::SetWeight { ordinal, weight } => {
                let m = observed.members.get_mut(&ordinal).unwrap();
                m.weight = weight;
                m.transfers_pending = true;
            }
            Step::Decommission { ordinal } => {
                let m = observed.members.get_mut(&ordinal).unwrap();
                m.state = Leaving;
                m.transfers_pending = true;
            }
            Step::Remove { ordinal, replace } => {
                let m = observed.members.get_mut(&ordinal).unwrap();
                m.state = Removed;
                m.transfers_pending = false;
                if replace {
                    // The pod and its volume are deleted; the StatefulSet recreates them.
                    observed.running.remove(&ordinal);
                    observed.ready.remove(&ordinal);
                    observed.unready_for.remove(&ordinal);
                }
            }
            Step::Wait { .. } | Step::Refuse { .. } | Step::Done => {}
        }
    }

    /// The world moving on: transfers finish, pods of the StatefulSet start, and those in
    /// the ring become ready.
    fn settle(observed: &mut Observed) {
        for m in observed.members.values_mut() {
            m.transfers_pending = false;
            m.state = match m.state {
                Joining => Member,
                Leaving => Removed,
                s => s,
            };
        }
        observed.running = (0..observed.statefulset_replicas).collect();
        observed.ready = ready_pods(observed);
        let ready = observed.ready.clone();
        observed.unready_for.retain(|o, _| !ready.contains(o));
    }

    fn checked_plan(d: &Desired, o: &Observed) -> Step {
        let step = plan(d, o);
        check(d, o, &step).unwrap_or_else(|v| panic!("{v} for {o:?}"));
        step
    }

    fn wait(reason: WaitReason) -> Step {
        Step::Wait { reason }
    }

    /// A join with weight 1, the weight of every node in [`desired`].
    fn join(ordinal: u32) -> Step {
        Step::Join { ordinal, weight: 1 }
    }

    #[test]
    fn desired_validates_once() {
        assert_eq!(Desired::new(0, 3, vec![]), Err(DesiredError::ZeroSize));
        assert_eq!(
            Desired::new(3, 0, vec![1; 3]),
            Err(DesiredError::ZeroReplication)
        );
        assert_eq!(
            Desired::new(3, 3, vec![1; 2]),
            Err(DesiredError::WeightCount {
                size: 3,
                weights: 2
            })
        );
        assert_eq!(Desired::new(1, 1, vec![0]), Err(DesiredError::Weight(0)));
        let mut s = spec(4);
        s.weights.overrides.insert("3".into(), 5);
        let d = Desired::from_spec(&s).unwrap();
        assert_eq!((d.size(), d.replication_factor()), (4, 3));
        assert_eq!(
            (d.weight(0), d.weight(3), d.weight(4)),
            (Some(1), Some(5), None)
        );
    }

    /// The table: (name, desired size and N, observed, expected step).
    #[test]
    fn table() {
        let mut pending = observed(3, &[Member, Member, Member]);
        pending.members.get_mut(&1).unwrap().transfers_pending = true;
        let mut not_ready = observed(3, &[Member, Member, Member]);
        not_ready.ready.remove(&2);
        let mut new_pod_not_running = observed(5, &[Member, Member, Member]);
        new_pod_not_running.running.remove(&3);
        let mut no_new_pod_running = new_pod_not_running.clone();
        no_new_pod_running.running.remove(&4);
        let mut heavier = observed(3, &[Member, Member, Member]);
        heavier.members.get_mut(&1).unwrap().weight = 4;
        // The ring is unhealthy (member 1's pod is not ready) while a join, a
        // decommission or a weight change is due: each waits.
        let mut join_due_unhealthy = observed(5, &[Member, Member, Member]);
        join_due_unhealthy.ready.remove(&1);
        let mut decommission_due_unhealthy = observed(5, &[Member; 5]);
        decommission_due_unhealthy.ready.remove(&1);
        let mut weight_due_unhealthy = heavier.clone();
        weight_due_unhealthy.ready.remove(&2);

        let cases: Vec<(&str, Desired, Observed, Step)> = vec![
            (
                "new cluster creates pods",
                desired(3, 3),
                observed(0, &[]),
                Step::GrowStatefulSet { to: 3 },
            ),
            (
                "bootstrap joins ordinal 0",
                desired(3, 3),
                observed(3, &[]),
                join(0),
            ),
            (
                "converged",
                desired(3, 3),
                observed(3, &[Member, Member, Member]),
                Step::Done,
            ),
            (
                "scale up grows first",
                desired(5, 3),
                observed(3, &[Member, Member, Member]),
                Step::GrowStatefulSet { to: 5 },
            ),
            (
                "scale up joins lowest",
                desired(5, 3),
                observed(5, &[Member, Member, Member]),
                join(3),
            ),
            (
                "join skips a pod not running",
                desired(5, 3),
                new_pod_not_running,
                join(4),
            ),
            (
                "pod not running",
                desired(5, 3),
                no_new_pod_running,
                wait(WaitReason::PodNotRunning { ordinal: 3 }),
            ),
            (
                "joining waits",
                desired(5, 3),
                observed(5, &[Member, Member, Member, Joining]),
                wait(WaitReason::Joining { ordinal: 3 }),
            ),
            (
                "transfer pending",
                desired(3, 3),
                pending.clone(),
                wait(WaitReason::TransfersPending { ordinal: 1 }),
            ),
            (
                "member not ready",
                desired(3, 3),
                not_ready,
                wait(WaitReason::MemberNotReady { ordinal: 2 }),
            ),
            (
                "scale down decommissions highest",
                desired(3, 3),
                observed(5, &[Member; 5]),
                Step::Decommission { ordinal: 4 },
            ),
            (
                "leaving in progress",
                desired(3, 3),
                observed(5, &[Member, Member, Member, Member, Leaving]),
                wait(WaitReason::Leaving { ordinal: 4 }),
            ),
            (
                "size change waits while leaving",
                desired(6, 3),
                observed(5, &[Member, Member, Member, Member, Leaving]),
                wait(WaitReason::Leaving { ordinal: 4 }),
            ),
            (
                "shrink after removed",
                desired(3, 3),
                observed(5, &[Member, Member, Member, Member, Removed]),
                Step::ShrinkStatefulSet { to: 4 },
            ),
            (
                "then decommission next",
                desired(3, 3),
                observed(4, &[Member, Member, Member, Member, Removed]),
                Step::Decommission { ordinal: 3 },
            ),
            (
                "shrink over never-joined pods",
                desired(3, 3),
                observed(5, &[Member, Member, Member]),
                Step::ShrinkStatefulSet { to: 3 },
            ),
            (
                "N larger than remaining",
                desired(2, 3),
                observed(3, &[Member, Member, Member]),
                Step::Refuse {
                    reason: RefuseReason::TooFewMembers {
                        ordinal: 2,
                        remaining: 2,
                        replication_factor: 3,
                    },
                },
            ),
            (
                "weight change",
                desired(3, 3),
                heavier,
                Step::SetWeight {
                    ordinal: 1,
                    weight: 1,
                },
            ),
            (
                "join waits until the ring is healthy",
                desired(5, 3),
                join_due_unhealthy,
                wait(WaitReason::MemberNotReady { ordinal: 1 }),
            ),
            (
                "decommission waits until the ring is healthy",
                desired(3, 3),
                decommission_due_unhealthy,
                wait(WaitReason::MemberNotReady { ordinal: 1 }),
            ),
            (
                "weight change waits until the ring is healthy",
                desired(3, 3),
                weight_due_unhealthy,
                wait(WaitReason::MemberNotReady { ordinal: 2 }),
            ),
            (
                "size change waits while a transfer is pending",
                desired(5, 3),
                pending.clone(),
                wait(WaitReason::TransfersPending { ordinal: 1 }),
            ),
            (
                "removed below size rejoins",
                desired(3, 3),
                observed(3, &[Member, Removed, Member]),
                join(1),
            ),
            (
                "not ready for less than the timeout",
                desired(3, 3),
                unready(observed(3, &[Member; 3]), 2, 599),
                wait(WaitReason::MemberNotReady { ordinal: 2 }),
            ),
            (
                "dead member reported, not removed",
                desired(3, 3),
                unready(observed(3, &[Member; 3]), 2, 600),
                wait(WaitReason::MemberDead {
                    ordinal: 2,
                    after_seconds: 600,
                }),
            ),
            (
                "the timeout is the spec's",
                desired(3, 3).with_dead_after(Duration::from_secs(60)),
                unready(observed(3, &[Member; 3]), 2, 61),
                wait(WaitReason::MemberDead {
                    ordinal: 2,
                    after_seconds: 60,
                }),
            ),
            (
                "replace removes a member that is not ready, dead or not",
                desired(3, 3).with_replace(Some(1)),
                unready(observed(3, &[Member; 3]), 1, 5),
                Step::Remove {
                    ordinal: 1,
                    replace: true,
                },
            ),
            (
                "replace of a ready member does nothing",
                desired(3, 3).with_replace(Some(1)),
                observed(3, &[Member; 3]),
                Step::Done,
            ),
            (
                "replace may go below N: the new node joins next",
                desired(3, 3).with_replace(Some(0)),
                unready(observed(3, &[Member; 3]), 0, 5),
                Step::Remove {
                    ordinal: 0,
                    replace: true,
                },
            ),
            (
                "scale down past a dead highest member removes it",
                desired(3, 3),
                unready(observed(4, &[Member; 4]), 3, 900),
                Step::Remove {
                    ordinal: 3,
                    replace: false,
                },
            ),
            (
                "a dead member that was leaving is removed",
                desired(3, 3),
                unready(observed(4, &[Member, Member, Member, Leaving]), 3, 900),
                Step::Remove {
                    ordinal: 3,
                    replace: false,
                },
            ),
            (
                "a dead member above size waits for another's join",
                desired(3, 3),
                unready(
                    observed(5, &[Member, Member, Member, Joining, Member]),
                    4,
                    900,
                ),
                wait(WaitReason::Joining { ordinal: 3 }),
            ),
            (
                "removing a dead member above size below N is refused",
                desired(2, 3),
                unready(observed(3, &[Member; 3]), 2, 900),
                Step::Refuse {
                    reason: RefuseReason::TooFewMembers {
                        ordinal: 2,
                        remaining: 2,
                        replication_factor: 3,
                    },
                },
            ),
        ];
        for (name, d, obs, expected) in cases {
            assert_eq!(plan(&d, &obs), expected, "{name}");
            assert_eq!(check(&d, &obs, &expected), Ok(()), "{name}");
            // Level-triggered: the same observation gives the same step.
            assert_eq!(plan(&d, &obs), plan(&d.clone(), &obs.clone()), "{name}");
        }
    }

    #[test]
    fn a_replace_names_a_member_that_is_not_ready() {
        let o = unready(observed(3, &[Member, Member, Removed]), 1, 5);
        assert_eq!(replace_request("db", "db-1", &o), Ok(1));
        assert_eq!(replace_request("db", " db-1\n", &o), Ok(1));
        assert_eq!(
            replace_request("db", "db-0", &o),
            Err(ReplaceRefusal::Ready(0))
        );
        assert_eq!(
            replace_request("db", "db-2", &o),
            Err(ReplaceRefusal::NotAMember(2))
        );
        for bad in ["", "db", "other-1", "db-x", "1"] {
            assert_eq!(
                replace_request("db", bad, &o),
                Err(ReplaceRefusal::NotAPod(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn weights_follow_the_spec() {
        // Dynamo §4.2: a node's virtual nodes follow its capacity.
        let d = Desired::new(3, 3, vec![1, 2, 3]).unwrap();
        let mut o = observed(3, &[Member, Member, Member]);
        assert_eq!(
            plan(&d, &o),
            Step::SetWeight {
                ordinal: 1,
                weight: 2
            }
        );
        apply(
            &mut o,
            Step::SetWeight {
                ordinal: 1,
                weight: 2,
            },
        );
        assert_eq!(
            plan(&d, &o),
            wait(WaitReason::TransfersPending { ordinal: 1 })
        );
        settle(&mut o);
        assert_eq!(
            plan(&d, &o),
            Step::SetWeight {
                ordinal: 2,
                weight: 3
            }
        );
    }

    #[test]
    fn applying_a_step_moves_forward() {
        // Scale 3 -> 5 -> 3; every step, once applied and settled, is not repeated.
        let mut o = observed(3, &[Member, Member, Member]);
        let mut log = Vec::new();
        for size in [5, 3] {
            let d = desired(size, 3);
            loop {
                let step = checked_plan(&d, &o);
                if step == Step::Done {
                    break;
                }
                apply(&mut o, step);
                if !matches!(step, Step::Wait { .. }) {
                    log.push(step);
                    assert_ne!(
                        checked_plan(&d, &o),
                        step,
                        "step repeated after applying it"
                    );
                }
                settle(&mut o);
            }
        }
        assert_eq!(
            log,
            [
                Step::GrowStatefulSet { to: 5 },
                join(3),
                join(4),
                Step::Decommission { ordinal: 4 },
                Step::ShrinkStatefulSet { to: 4 },
                Step::Decommission { ordinal: 3 },
                Step::ShrinkStatefulSet { to: 3 },
            ]
        );
    }

    #[test]
    fn check_catches_unsafe_steps() {
        let d = desired(3, 3);
        let o = observed(5, &[Member, Member, Member, Member, Leaving]);
        assert!(matches!(
            check(&d, &o, &Step::ShrinkStatefulSet { to: 3 }),
            Err(Violation::BadShrink { .. })
        ));
        assert!(matches!(
            check(&d, &o, &Step::Decommission { ordinal: 3 }),
            Err(Violation::ConcurrentChange { .. })
        ));
        let o = observed(5, &[Member; 5]);
        assert!(matches!(
            check(&d, &o, &Step::Decommission { ordinal: 3 }),
            Err(Violation::BadDecommission { .. })
        ));
        assert!(matches!(
            check(&d, &o, &Step::Done),
            Err(Violation::NotConverged)
        ));
        assert!(matches!(
            check(
                &d,
                &observed(3, &[Member, Member]),
                &Step::Join {
                    ordinal: 2,
                    weight: 9
                }
            ),
            Err(Violation::BadJoin { .. })
        ));
        let d = desired(3, 4);
        assert!(matches!(
            check(
                &d,
                &observed(4, &[Member; 4]),
                &Step::Decommission { ordinal: 3 }
            ),
            Err(Violation::BadDecommission { .. })
        ));
        // A removal without a hand-off: never of a ready member, never unasked below
        // size, never of one not yet dead.
        let d = desired(3, 3);
        let remove = |ordinal, replace| Step::Remove { ordinal, replace };
        let all = observed(4, &[Member; 4]);
        for (o, step) in [
            (all.clone(), remove(3, false)),
            (all.clone(), remove(3, true)),
            (unready(all.clone(), 1, 900), remove(1, false)),
            (unready(all.clone(), 3, 10), remove(3, false)),
        ] {
            assert!(
                matches!(check(&d, &o, &step), Err(Violation::BadRemove { .. })),
                "{step} {o:?}"
            );
        }
        let mut joining = unready(all, 3, 900);
        joining.members.get_mut(&1).unwrap().state = Joining;
        assert!(matches!(
            check(&d, &joining, &remove(3, false)),
            Err(Violation::BadRemove { .. })
        ));
    }

    #[test]
    fn ring_rows_map_to_ordinals() {
        let row = |node_id, state| RingMember {
            node_id,
            state,
            weight: 2,
            transfers_pending: false,
        };
        let members = members_from_ring(
            "db",
            [
                row("db-1", Joining),
                row("db-0", Member),
                row("old-7", Removed),
            ],
        )
        .unwrap();
        assert_eq!(members.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(members[&1].state, Joining);
        assert_eq!(members[&0].weight, 2);
        assert_eq!(
            members_from_ring("db", [row("other-0", Member)]),
            Err(ObserveError::ForeignMember("other-0".into()))
        );
        assert_eq!(
            members_from_ring("db", [row("db-0", Member), row("db-0", Leaving)]),
            Err(ObserveError::DuplicateMember("db-0".into()))
        );
    }

    #[test]
    fn phases_summarise_the_step() {
        let empty = observed(3, &[]);
        let full = observed(3, &[Member, Member, Member]);
        assert_eq!(
            Step::GrowStatefulSet { to: 3 }.phase(&empty),
            Phase::Pending
        );
        assert_eq!(join(0).phase(&empty), Phase::Pending);
        assert_eq!(
            Step::Decommission { ordinal: 2 }.phase(&full),
            Phase::Progressing
        );
        assert_eq!(Step::Done.phase(&full), Phase::Running);
        let unready = wait(WaitReason::MemberNotReady { ordinal: 1 });
        assert_eq!(unready.phase(&full), Phase::Degraded);
    }

    #[test]
    fn step_and_reasons_read_well() {
        assert_eq!(
            Step::Decommission { ordinal: 4 }.to_string(),
            "decommission 4"
        );
        assert_eq!(
            wait(WaitReason::Leaving { ordinal: 4 }).to_string(),
            "wait: node 4 is leaving"
        );
        assert_eq!(
            Step::Remove {
                ordinal: 2,
                replace: true
            }
            .to_string(),
            "remove dead member 2 to replace it"
        );
        assert_eq!(
            wait(WaitReason::MemberDead {
                ordinal: 2,
                after_seconds: 600
            })
            .to_string(),
            "wait: member 2 has not been ready for 600 s or more; if it will not come back, \
             replace it (annotation dynamo.example.org/replace)"
        );
    }

    /// A pending transfer holds back everything else, a shrink included, even on a
    /// member the ring already shows as settled.
    #[test]
    fn pending_transfers_hold_back_a_shrink() {
        let d = desired(3, 3);
        let mut o = observed(5, &[Member, Member, Member, Member, Removed]);
        assert_eq!(plan(&d, &o), Step::ShrinkStatefulSet { to: 4 });
        o.members.get_mut(&1).unwrap().transfers_pending = true;
        let step = plan(&d, &o);
        assert_eq!(step, wait(WaitReason::TransfersPending { ordinal: 1 }));
        assert_eq!(step.to_string(), "wait: transfers pending on node 1");
        // A joining node still pulling ranges reports the transfer, the more specific
        // reason; once its ranges are in, the flip to member is what is waited on.
        let mut joining = observed(5, &[Member, Member, Member, Joining]);
        joining.members.get_mut(&3).unwrap().transfers_pending = true;
        assert_eq!(
            plan(&desired(5, 3), &joining),
            wait(WaitReason::TransfersPending { ordinal: 3 })
        );
        joining.members.get_mut(&3).unwrap().transfers_pending = false;
        assert_eq!(
            plan(&desired(5, 3), &joining),
            wait(WaitReason::Joining { ordinal: 3 })
        );
    }

    #[test]
    fn volume_sizes_parse_as_kubernetes_quantities() {
        assert_eq!(volume_bytes("10Gi"), Some(10 << 30));
        assert_eq!(volume_bytes("500M"), Some(500_000_000));
        assert_eq!(volume_bytes("1e3"), Some(1000));
        assert_eq!(volume_bytes("1024"), Some(1024));
        for bad in ["", "ten", "10 Gi", "10GB", "-1Gi"] {
            assert_eq!(volume_bytes(bad), None, "{bad}");
        }
        let mut s = spec(3);
        assert_eq!(
            Desired::from_spec(&s).unwrap().volume_bytes(),
            Some(10 << 30)
        );
        s.storage.size = "lots".into();
        assert_eq!(
            Desired::from_spec(&s),
            Err(DesiredError::StorageSize("lots".into()))
        );
    }

    /// The capacity check before a decommission: (name, volume bytes, keys per member
    /// of 5 (ordinal 4 leaves), expected refusal).
    #[test]
    fn capacity_table() {
        const GI: u64 = 1 << 30;
        let floor = MIN_STORED_BYTES_PER_KEY;
        // Four remaining 1 KiB volumes hold exactly 128 keys at the floor.
        let exact = 4 * 1024 / floor;
        /// Keys per member, ordinals 0..5; `None` when its status was not read.
        type Keys = [Option<u64>; 5];
        let cases: Vec<(&str, Option<u64>, Keys, bool)> = vec![
            ("unknown volume size", None, [Some(u64::MAX); 5], false),
            (
                "a member's keys unknown",
                Some(1),
                [Some(1_000_000), None, Some(0), Some(0), Some(0)],
                false,
            ),
            ("empty cluster", Some(1), [Some(0); 5], false),
            ("ample room", Some(10 * GI), [Some(1_000_000); 5], false),
            (
                "exactly full at the floor",
                Some(1024),
                [Some(exact), Some(0), Some(0), Some(0), Some(0)],
                false,
            ),
            (
                "one key past the floor",
                Some(1024),
                [Some(exact - 1), Some(0), Some(0), Some(0), Some(2)],
                true,
            ),
            (
                "the leaving node's keys count",
                Some(1024),
                [Some(0), Some(0), Some(0), Some(0), Some(exact + 1)],
                true,
            ),
            (
                "a billion keys do not fit 4 x 1Gi",
                Some(GI),
                [
                    Some(250_000_000),
                    Some(250_000_000),
                    Some(250_000_000),
                    Some(250_000_000),
                    Some(10),
                ],
                true,
            ),
            (
                "counts near u64::MAX do not overflow",
                Some(u64::MAX),
                [Some(u64::MAX); 5],
                true,
            ),
        ];
        for (name, volume, keys, refused) in cases {
            let d = desired(4, 3).with_volume_bytes(volume);
            let mut o = observed(5, &[Member; 5]);
            for (ordinal, k) in keys.iter().enumerate() {
                o.members.get_mut(&(ordinal as u32)).unwrap().keys = *k;
            }
            let step = plan(&d, &o);
            assert_eq!(check(&d, &o, &step), Ok(()), "{name}");
            if refused {
                assert!(
                    matches!(
                        step,
                        Step::Refuse {
                            reason: RefuseReason::InsufficientCapacity {
                                ordinal: 4,
                                remaining: 4,
                                ..
                            }
                        }
                    ),
                    "{name}: {step}"
                );
                assert!(
                    check(&d, &o, &Step::Decommission { ordinal: 4 }).is_err(),
                    "{name}"
                );
            } else {
                assert_eq!(step, Step::Decommission { ordinal: 4 }, "{name}");
            }
        }
        let reason = capacity_shortfall(
            &desired(1, 1).with_volume_bytes(Some(64)),
            &observed(2, &[Member; 2]).with_keys(&[3, 2]),
            1,
        )
        .unwrap();
        assert_eq!(
            Step::Refuse { reason }.to_string(),
            "refused: decommissioning node 1 would leave the stored keys (at least 32 bytes \
             each) on 1 members with 64-byte volumes: they cannot hold them"
        );
        assert!(matches!(
            reason,
            RefuseReason::InsufficientCapacity { keys: 5, .. }
        ));
    }

    impl Observed {
        /// Sets the members' key counts by ordinal.
        fn with_keys(mut self, keys: &[u64]) -> Self {
            for (ordinal, k) in keys.iter().enumerate() {
                self.members.get_mut(&(ordinal as u32)).unwrap().keys = Some(*k);
            }
            self
        }
    }

    fn arb_state() -> impl Strategy<Value = MemberState> {
        prop_oneof![Just(Joining), Just(Member), Just(Leaving), Just(Removed)]
    }

    /// Any observation, reachable or not.
    fn arb_observed() -> impl Strategy<Value = Observed> {
        (
            0u32..8,
            proptest::collection::btree_set(0u32..8, 0..8),
            proptest::collection::btree_set(0u32..8, 0..8),
            proptest::collection::btree_map(
                0u32..8,
                (
                    arb_state(),
                    1u32..4,
                    any::<bool>(),
                    proptest::option::of(0u64..200),
                ),
                0..8,
            ),
            proptest::collection::btree_map(0u32..8, 0u64..1200, 0..8),
        )
            .prop_map(
                |(replicas, running, ready, members, unready_for)| Observed {
                    unready_for: unready_for
                        .into_iter()
                        .filter(|(o, _)| !ready.contains(o))
                        .map(|(o, s)| (o, Duration::from_secs(s)))
                        .collect(),
                    statefulset_replicas: replicas,
                    running: running.into_iter().filter(|&o| o < replicas).collect(),
                    ready: ready.into_iter().filter(|&o| o < replicas).collect(),
                    members: members
                        .into_iter()
                        .map(|(o, (state, weight, transfers_pending, keys))| {
                            let member = ObservedMember {
                                state,
                                weight,
                                transfers_pending,
                                keys,
                            };
                            (o, member)
                        })
                        .collect(),
                },
            )
    }

    /// Volumes from tiny (a few keys' worth, so capacity refusals happen) to unknown.
    fn arb_desired() -> impl Strategy<Value = Desired> {
        (
            1u32..7,
            1u32..4,
            proptest::option::of(0u64..4096),
            proptest::option::of(0u32..8),
        )
            .prop_flat_map(|(size, n, volume, replace)| {
                proptest::collection::vec(1u32..4, size as usize).prop_map(move |weights| {
                    Desired::new(size, n, weights)
                        .unwrap()
                        .with_volume_bytes(volume)
                        .with_replace(replace)
                })
            })
    }

    proptest! {
        /// Every planned step is safe, whatever was observed.
        #[test]
        fn plan_is_always_safe(d in arb_desired(), o in arb_observed()) {
            let step = plan(&d, &o);
            prop_assert_eq!(check(&d, &o, &step), Ok(()), "{:?}", step);
        }

        /// Against the reference model (steps take effect, transfers finish, pods become
        /// ready), the planner reaches the spec or a refusal, safely, from any state the
        /// model can reach.
        #[test]
        fn model_converges(d in arb_desired(), start in arb_observed()) {
            let mut d = d;
            let mut o = start;
            let mut finished = false;
            for _ in 0..100 {
                let step = plan(&d, &o);
                prop_assert_eq!(check(&d, &o, &step), Ok(()), "{:?} {:?}", step, o);
                match step {
                    Step::Done => { finished = true; break; }
                    Step::Refuse { reason: RefuseReason::TooFewMembers { .. } } => {
                        prop_assert!(o.active().count() <= d.replication_factor() as usize);
                        finished = true;
                        break;
                    }
                    Step::Refuse { reason: RefuseReason::InsufficientCapacity { ordinal, .. } } => {
                        prop_assert!(capacity_shortfall(&d, &o, ordinal).is_some());
                        finished = true;
                        break;
                    }
                    _ => {}
                }
                if let Step::Remove { replace: true, .. } = step {
                    // The controller clears the annotation when it acts on it.
                    d = d.with_replace(None);
                }
                apply(&mut o, step);
                settle(&mut o);
            }
            prop_assert!(finished, "no progress from {:?}", o);
        }
    }
}
