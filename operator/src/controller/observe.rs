//! Reading the real state each pass: which pods run and are ready (from the pods
//! themselves), and the member table (from the nodes, through `Admin.Ring`). Nothing is
//! read from labels, annotations or memory of earlier passes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::admin::{
    AdminError, AdminTarget, MemberView, NodeAdmin, NodeStatus, RingView, merge_views,
};
use crate::builders::ordinal_of;
use crate::planner::ObservedMember;

/// The container whose start means the node process is up.
const NODE_CONTAINER: &str = "dynamo-node";

/// Which of this cluster's pods run the node and which are ready, by ordinal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStates {
    /// Pod Running, node container started, not being deleted.
    pub running: BTreeSet<u32>,
    /// Additionally the pod's Ready condition is True.
    pub ready: BTreeSet<u32>,
    /// The StatefulSet revision each pod not being deleted was created from (its
    /// `controller-revision-hash` label).
    pub revisions: BTreeMap<u32, String>,
    /// Since when each pod not being deleted and not Ready has been so: its Ready
    /// condition's last transition, or its creation when it has none.
    pub unready_since: BTreeMap<u32, Timestamp>,
}

/// The label the StatefulSet controller puts on each pod: the revision it was created
/// from.
pub(super) const REVISION_LABEL: &str = "controller-revision-hash";

impl PodStates {
    /// How long each pod in [`unready_since`](Self::unready_since) has not been Ready,
    /// at `now` (zero for a time in the future: clocks disagree).
    #[must_use]
    pub fn unready_for(&self, now: Timestamp) -> BTreeMap<u32, Duration> {
        self.unready_since
            .iter()
            .map(|(&o, &since)| {
                let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or_default();
                (o, elapsed)
            })
            .collect()
    }

    /// Ordinals whose pod was created from `revision`.
    #[must_use]
    pub fn on_revision(&self, revision: &str) -> BTreeSet<u32> {
        self.revisions
            .iter()
            .filter(|(_, r)| r.as_str() == revision)
            .map(|(&o, _)| o)
            .collect()
    }
}

/// Classifies the pods of cluster `cluster_name`; pods whose names are not its ordinals
/// are ignored.
#[must_use]
pub fn pod_states(cluster_name: &str, pods: &[Pod]) -> PodStates {
    let mut states = PodStates::default();
    for pod in pods {
        let Some(ordinal) = pod
            .metadata
            .name
            .as_deref()
            .and_then(|name| ordinal_of(cluster_name, name))
        else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(revision) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(REVISION_LABEL))
        {
            states.revisions.insert(ordinal, revision.clone());
        }
        let ready_condition = pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_ == "Ready");
        if ready_condition.is_none_or(|c| c.status != "True") {
            let since = ready_condition
                .and_then(|c| c.last_transition_time.as_ref())
                .or(pod.metadata.creation_timestamp.as_ref());
            if let Some(since) = since {
                states.unready_since.insert(ordinal, since.0);
            }
        }
        let Some(status) = &pod.status else { continue };
        let started = status.phase.as_deref() == Some("Running")
            && status.container_statuses.iter().flatten().any(|c| {
                c.name == NODE_CONTAINER
                    && (c.started == Some(true)
                        || c.state.as_ref().is_some_and(|s| s.running.is_some()))
            });
        if !started {
            continue;
        }
        states.running.insert(ordinal);
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            states.ready.insert(ordinal);
        }
    }
    states
}

/// The member table as the nodes report it, and which node to send changes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingRead {
    /// The merged table (see [`merge_views`]).
    pub members: Vec<MemberView>,
    /// The lowest ready ordinal that answered: a member, so a change sent to it is in
    /// the ring's table and gossips from there. `None` when no ready pod answered.
    pub admin_peer: Option<u32>,
    /// Nodes asked but not heard from, with why.
    pub unanswered: BTreeMap<u32, AdminError>,
}

/// Reads `Admin.Ring` from the ready pods, or from the running ones while none is
/// ready (bootstrap), and merges the tables.
///
/// Ready pods are members (a node reports ready only in the ring), so their tables are
/// the ring's; a running pod that was never joined may hold only what it gossiped, and
/// is asked only when there is nobody better.
///
/// # Errors
/// Every asked node failed to answer: the ring is unknown, and nothing may be decided.
pub async fn read_ring(
    admin: &dyn NodeAdmin,
    pods: &PodStates,
    target: impl Fn(u32) -> AdminTarget,
) -> Result<RingRead, BTreeMap<u32, AdminError>> {
    let asked: Vec<u32> = if pods.ready.is_empty() {
        pods.running.iter().copied().collect()
    } else {
        pods.ready.iter().copied().collect()
    };
    if asked.is_empty() {
        return Ok(RingRead::default());
    }
    let replies = join_all(asked.iter().map(|&ordinal| {
        let target = target(ordinal);
        async move { (ordinal, admin.ring(&target).await) }
    }))
    .await;
    let mut views: Vec<RingView> = Vec::new();
    let mut answered = BTreeSet::new();
    let mut unanswered = BTreeMap::new();
    for (ordinal, reply) in replies {
        match reply {
            Ok(view) => {
                views.push(view);
                answered.insert(ordinal);
            }
            Err(e) => {
                unanswered.insert(ordinal, e);
            }
        }
    }
    if views.is_empty() {
        return Err(unanswered);
    }
    Ok(RingRead {
        members: merge_views(&views),
        admin_peer: answered.into_iter().find(|o| pods.ready.contains(o)),
        unanswered,
    })
}

/// Reads `Admin.Status` from each of `ordinals` (the active members whose pods are
/// ready), for their range transfer progress and key counts.
///
/// # Errors
/// The first node that did not answer, with why: a member whose transfers are unknown
/// may still be moving data, so nothing is decided this pass.
pub async fn read_statuses(
    admin: &dyn NodeAdmin,
    ordinals: impl IntoIterator<Item = u32>,
    target: impl Fn(u32) -> AdminTarget,
) -> Result<BTreeMap<u32, NodeStatus>, (u32, AdminError)> {
    let replies = join_all(ordinals.into_iter().map(|ordinal| {
        let target = target(ordinal);
        async move { (ordinal, admin.status(&target).await) }
    }))
    .await;
    replies
        .into_iter()
        .map(|(ordinal, reply)| {
            reply
                .map(|status| (ordinal, status))
                .map_err(|e| (ordinal, e))
        })
        .collect()
}

/// The ordinals whose status a pass reads: active members whose pods are ready. An
/// unready member is waited on by the planner before any membership change anyway.
#[must_use]
pub fn status_ordinals(members: &BTreeMap<u32, ObservedMember>, pods: &PodStates) -> Vec<u32> {
    members
        .iter()
        .filter(|(o, m)| m.state.is_active() && pods.ready.contains(o))
        .map(|(&o, _)| o)
        .collect()
}

/// Fills each member's transfer progress and key count from its own status.
pub fn apply_statuses(
    members: &mut BTreeMap<u32, ObservedMember>,
    statuses: &BTreeMap<u32, NodeStatus>,
) {
    for (ordinal, status) in statuses {
        if let Some(member) = members.get_mut(ordinal) {
            member.transfers_pending |= status.transfers_pending;
            member.keys = Some(status.keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(name: &str, phase: &str, started: bool, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                container_statuses: Some(vec![ContainerStatus {
                    name: NODE_CONTAINER.to_owned(),
                    started: Some(started),
                    ready,
                    ..ContainerStatus::default()
                }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".to_owned(),
                    status: if ready { "True" } else { "False" }.to_owned(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn statuses_fill_transfers_and_keys_of_ready_members() {
        use crate::planner::MemberState;
        let member = |state| ObservedMember {
            state,
            weight: 1,
            transfers_pending: false,
            keys: None,
        };
        let mut members = BTreeMap::from([
            (0, member(MemberState::Member)),
            (1, member(MemberState::Joining)),
            (2, member(MemberState::Member)),
            (3, member(MemberState::Removed)),
        ]);
        let pods = PodStates {
            running: BTreeSet::from([0, 1, 2, 3]),
            ready: BTreeSet::from([0, 1, 3]),
            revisions: BTreeMap::new(),
            unready_since: BTreeMap::new(),
        };
        // Removed (3) and unready (2) members are not asked.
        assert_eq!(status_ordinals(&members, &pods), [0, 1]);
        let status = |keys, transfers_pending| NodeStatus {
            node_id: String::new(),
            state: None,
            keys,
            hint_backlog: BTreeMap::new(),
            transfer: None,
            transfer_pending_ranges: 0,
            transfers_pending,
        };
        apply_statuses(
            &mut members,
            &BTreeMap::from([
                (0, status(10, false)),
                (1, status(7, true)),
                (9, status(1, true)),
            ]),
        );
        assert_eq!(
            (members[&0].keys, members[&0].transfers_pending),
            (Some(10), false)
        );
        assert_eq!(
            (members[&1].keys, members[&1].transfers_pending),
            (Some(7), true)
        );
        assert_eq!(
            (members[&2].keys, members[&2].transfers_pending),
            (None, false)
        );
        assert_eq!(members.len(), 4, "a status of a non-member adds nothing");
    }

    #[test]
    fn pods_are_classified_by_their_own_status() {
        let mut terminating = pod("db-4", "Running", true, true);
        terminating.metadata.deletion_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = [
            pod("db-0", "Running", true, true),
            pod("db-1", "Running", true, false),
            pod("db-2", "Pending", false, false),
            pod("db-3", "Running", false, false),
            terminating,
            pod("other-5", "Running", true, true),
        ];
        let states = pod_states("db", &pods);
        assert_eq!(states.running, BTreeSet::from([0, 1]));
        assert_eq!(states.ready, BTreeSet::from([0]));
    }

    #[test]
    fn unready_pods_count_from_their_ready_transition_or_their_creation() {
        let at = |seconds| Time(Timestamp::from_second(seconds).unwrap());
        let mut flipped = pod("db-0", "Running", true, false);
        if let Some(conditions) = flipped.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            conditions[0].last_transition_time = Some(at(1_000));
        }
        let mut pending = pod("db-1", "Pending", false, false);
        pending.status = None;
        pending.metadata.creation_timestamp = Some(at(1_500));
        let mut ready = pod("db-2", "Running", true, true);
        ready.metadata.creation_timestamp = Some(at(10));
        let mut terminating = pod("db-3", "Running", true, false);
        terminating.metadata.deletion_timestamp = Some(at(1_900));
        let states = pod_states("db", &[flipped, pending, ready, terminating]);
        let now = Timestamp::from_second(2_000).unwrap();
        assert_eq!(
            states.unready_for(now),
            BTreeMap::from([
                (0, Duration::from_secs(1_000)),
                (1, Duration::from_secs(500))
            ])
        );
        // A clock behind the API server's: no negative time.
        let early = Timestamp::from_second(900).unwrap();
        assert_eq!(states.unready_for(early)[&0], Duration::ZERO);
    }

    #[test]
    fn pod_revisions_come_from_their_label_and_skip_terminating_pods() {
        let revision = |name: &str, revision: &str| {
            let mut pod = pod(name, "Pending", false, false);
            pod.metadata.labels = Some(BTreeMap::from([(
                REVISION_LABEL.to_owned(),
                revision.to_owned(),
            )]));
            pod
        };
        let mut terminating = revision("db-3", "db-new");
        terminating.metadata.deletion_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = [
            revision("db-0", "db-old"),
            // Not started yet: still created from the new revision.
            revision("db-1", "db-new"),
            revision("db-2", "db-new"),
            terminating,
            pod("db-4", "Running", true, true),
        ];
        let states = pod_states("db", &pods);
        assert_eq!(states.on_revision("db-new"), BTreeSet::from([1, 2]));
        assert_eq!(states.on_revision("db-old"), BTreeSet::from([0]));
    }
}
