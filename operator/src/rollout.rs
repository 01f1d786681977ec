//! Health-gated pod template rollouts: which pods of the StatefulSet may run the new
//! template, one at a time, and only while the ring is healthy.
//!
//! The StatefulSet's own rolling update waits only for readiness: it restarts the next
//! pod as soon as the last one is Ready, while the restarted node may still be taking
//! back its hinted writes and ranges may still be moving. So the operator holds the
//! rollout with the StatefulSet's `rollingUpdate.partition` (pods with an ordinal at or
//! above it run the update revision, the others keep theirs) and lowers it one pod at a
//! time, from the highest ordinal down, only when
//! * every pod at or above the partition runs the update revision and is Ready,
//! * the cluster is not paused ([`PAUSE_ANNOTATION`]),
//! * the ring is healthy ([`ring_health`]): every active member Ready and answering, no
//!   range transfer pending, and the nodes' hinted-write backlog at most
//!   [`MAX_HINT_BACKLOG`].
//!
//! A pass that applies a different pod template sets the partition to the pods that
//! exist, so nothing restarts before the first health check. Pure: the controller
//! observes, [`next_partition`] decides.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;

use crate::builders::TEMPLATE_INPUTS_ANNOTATION;
use crate::planner::Observed;

/// Annotation on a `DynamoCluster`: `"true"` holds a pod template rollout where it is
/// (pods already updated stay updated); removing it or any other value lets it go on.
/// Membership work (joins, decommissions, weights) is not held.
pub const PAUSE_ANNOTATION: &str = "dynamo.example.org/rollout-paused";

/// The hinted writes the nodes may hold, in total, before the next pod restarts. A node
/// that just came back receives the hints written for it while it was down; restarting
/// the next node before they are delivered leaves those writes on fewer replicas than
/// their quorum promised for longer. Hints for a node that is gone for good are dropped
/// with its membership, so the bound is reachable.
pub const MAX_HINT_BACKLOG: u64 = 1_000;

/// Why the ring is not healthy enough for the next restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unhealthy {
    /// An active member's pod is not Ready (or its node did not answer).
    MemberNotReady {
        /// Its ordinal.
        ordinal: u32,
    },
    /// Key ranges are still moving to or from a member.
    TransfersPending {
        /// Its ordinal.
        ordinal: u32,
    },
    /// The nodes hold more hinted writes than [`MAX_HINT_BACKLOG`].
    HintBacklog {
        /// Hinted writes held, over all nodes.
        hints: u64,
    },
}

impl fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MemberNotReady { ordinal } => write!(f, "member {ordinal} is not ready"),
            Self::TransfersPending { ordinal } => {
                write!(f, "ranges are moving to or from member {ordinal}")
            }
            Self::HintBacklog { hints } => write!(
                f,
                "the nodes hold {hints} hinted writes (at most {MAX_HINT_BACKLOG} before a restart)"
            ),
        }
    }
}

/// Whether the ring can take the next restart: every active member Ready (its status
/// was read, so it answered), no transfer pending, and at most [`MAX_HINT_BACKLOG`] hints
/// held over all nodes (`hint_backlogs`: hints each answering node holds).
///
/// # Errors
/// The first [`Unhealthy`] found, members by ordinal.
pub fn ring_health(
    observed: &Observed,
    hint_backlogs: &BTreeMap<u32, u64>,
) -> Result<(), Unhealthy> {
    for (&ordinal, member) in observed.members.iter().filter(|(_, m)| m.state.is_active()) {
        if !observed.ready.contains(&ordinal) {
            return Err(Unhealthy::MemberNotReady { ordinal });
        }
        if member.transfers_pending {
            return Err(Unhealthy::TransfersPending { ordinal });
        }
    }
    let hints = hint_backlogs
        .values()
        .fold(0_u64, |sum, h| sum.saturating_add(*h));
    if hints > MAX_HINT_BACKLOG {
        return Err(Unhealthy::HintBacklog { hints });
    }
    Ok(())
}

/// What a rollout decision reads, as observed this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutView<'a> {
    /// Pods the StatefulSet has after this pass's resize (`spec.replicas`).
    pub replicas: u32,
    /// Pods it had before this pass (what may run the old template).
    pub existing: u32,
    /// Its `rollingUpdate.partition` now (0 when unset).
    pub partition: u32,
    /// Whether this pass applies a pod template other than the StatefulSet's.
    pub template_changes: bool,
    /// Whether the StatefulSet's status describes its current spec (its
    /// `observedGeneration` is its generation), so its update revision is the one
    /// pods are compared with.
    pub revisions_observed: bool,
    /// Ordinals whose pod runs the StatefulSet's update revision.
    pub updated: &'a BTreeSet<u32>,
    /// Ordinals whose pod is Ready.
    pub ready: &'a BTreeSet<u32>,
    /// Whether [`PAUSE_ANNOTATION`] holds the rollout.
    pub paused: bool,
    /// [`ring_health`].
    pub health: Result<(), Unhealthy>,
}

/// Why the partition stays where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The template changed this pass; the first restart waits for the next pass's checks.
    Started,
    /// The StatefulSet controller has not yet observed the StatefulSet's latest spec.
    Observing,
    /// A pod at or above the partition is not yet on the update revision or not Ready.
    PodUpdating {
        /// Its ordinal.
        ordinal: u32,
    },
    /// [`PAUSE_ANNOTATION`] is set.
    Paused,
    /// The ring cannot take a restart now.
    Unhealthy(Unhealthy),
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Started => f.write_str("new pod template; restarts wait for a health check"),
            Self::Observing => f.write_str("waiting for the StatefulSet controller"),
            Self::PodUpdating { ordinal } => {
                write!(
                    f,
                    "waiting for pod {ordinal} to run the new template and be ready"
                )
            }
            Self::Paused => write!(f, "paused by the {PAUSE_ANNOTATION} annotation"),
            Self::Unhealthy(why) => write!(f, "waiting: {why}"),
        }
    }
}

/// The partition to apply this pass, and why it stays if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    /// `rollingUpdate.partition`: pods at or above it run the update revision.
    pub partition: u32,
    /// Set while pods still wait for the new template.
    pub hold: Option<Hold>,
}

impl Rollout {
    /// Whether pods still wait for the new template.
    #[must_use]
    pub fn in_progress(&self) -> bool {
        self.partition > 0 || self.hold.is_some()
    }

    /// `status.rollout` while in progress: `updated` of `replicas` pods run the new
    /// template, and what the next restart waits for (or which pod restarts now).
    #[must_use]
    pub fn describe(&self, updated: usize, replicas: u32) -> Option<String> {
        self.in_progress().then(|| {
            let next = match self.hold {
                Some(hold) => hold.to_string(),
                None => format!("restarting pod {}", self.partition),
            };
            format!("{updated} of {replicas} pods on the new template; {next}")
        })
    }
}

/// Whether the pass keeps the StatefulSet's pod template (and node config) rather than
/// render them anew: the StatefulSet exists and was rendered from the same template
/// inputs (`inputs`, [`crate::builders::template_inputs_hash`]), or predates the
/// annotation (an operator release without it rendered the current spec; adopting
/// that template is what keeps an upgrade from restarting the cluster).
#[must_use]
pub fn keeps_template(inputs: &str, current: Option<&StatefulSet>) -> bool {
    current.is_some_and(|sts| {
        sts.spec.template.spec.is_some()
            && sts
                .annotations()
                .get(TEMPLATE_INPUTS_ANNOTATION)
                .is_none_or(|applied| applied == inputs)
    })
}

/// The partition for this pass (see the [module docs](self)). A partition of 0 is the
/// resting state: every pod runs the update revision or the StatefulSet rolls the rest
/// itself, which happens only for pods the operator already let through.
#[must_use]
pub fn next_partition(view: &RolloutView<'_>) -> Rollout {
    if view.template_changes {
        // The pods that exist keep their template; new ordinals start on the new one.
        let partition = view.existing.min(view.replicas);
        return Rollout {
            partition,
            hold: (partition > 0).then_some(Hold::Started),
        };
    }
    let partition = view.partition.min(view.replicas);
    if partition == 0 {
        return Rollout {
            partition: 0,
            hold: None,
        };
    }
    let hold = |hold| Rollout {
        partition,
        hold: Some(hold),
    };
    if !view.revisions_observed {
        // Pods would be compared with a stale update revision and look updated.
        return hold(Hold::Observing);
    }
    if let Some(ordinal) =
        (partition..view.replicas).find(|o| !view.updated.contains(o) || !view.ready.contains(o))
    {
        return hold(Hold::PodUpdating { ordinal });
    }
    if view.paused {
        return hold(Hold::Paused);
    }
    if let Err(why) = view.health {
        return hold(Hold::Unhealthy(why));
    }
    // The next pod to restart is the highest one below the partition still on the old
    // revision; pods already updated (restarted for another reason) are skipped.
    let next = (0..partition)
        .rev()
        .find(|o| !view.updated.contains(o))
        .unwrap_or(0);
    Rollout {
        partition: next,
        hold: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{MemberState, ObservedMember};
    use proptest::prelude::*;

    fn set(ordinals: impl IntoIterator<Item = u32>) -> BTreeSet<u32> {
        ordinals.into_iter().collect()
    }

    fn view<'a>(
        replicas: u32,
        partition: u32,
        updated: &'a BTreeSet<u32>,
        ready: &'a BTreeSet<u32>,
    ) -> RolloutView<'a> {
        RolloutView {
            replicas,
            existing: replicas,
            partition,
            template_changes: false,
            revisions_observed: true,
            updated,
            ready,
            paused: false,
            health: Ok(()),
        }
    }

    #[test]
    fn a_new_template_holds_every_existing_pod() {
        let (updated, ready) = (set([]), set(0..3));
        let mut v = view(5, 0, &updated, &ready);
        v.template_changes = true;
        v.existing = 3;
        // Pods 3 and 4 are new: they start on the new template.
        assert_eq!(
            next_partition(&v),
            Rollout {
                partition: 3,
                hold: Some(Hold::Started)
            }
        );
        v.existing = 0;
        assert_eq!(
            next_partition(&v),
            Rollout {
                partition: 0,
                hold: None
            }
        );
    }

    #[test]
    fn pods_restart_one_at_a_time_from_the_highest_ordinal() {
        let ready = set(0..3);
        let updated = set([]);
        assert_eq!(next_partition(&view(3, 3, &updated, &ready)).partition, 2);
        // Pod 2 restarted on the new revision and is ready: pod 1 next.
        let updated = set([2]);
        assert_eq!(next_partition(&view(3, 2, &updated, &ready)).partition, 1);
        let updated = set([1, 2]);
        let last = next_partition(&view(3, 1, &updated, &ready));
        assert_eq!(last.partition, 0);
        assert!(!last.in_progress());
    }

    #[test]
    fn an_updating_pod_holds_the_partition() {
        let updated = set([]);
        let ready = set(0..3);
        // Pod 2 is let through but still runs the old revision.
        assert_eq!(
            next_partition(&view(3, 2, &updated, &ready)).hold,
            Some(Hold::PodUpdating { ordinal: 2 })
        );
        // Updated but not ready yet.
        let updated = set([2]);
        let ready = set([0, 1]);
        assert_eq!(
            next_partition(&view(3, 2, &updated, &ready)).hold,
            Some(Hold::PodUpdating { ordinal: 2 })
        );
    }

    #[test]
    fn a_pause_or_an_unhealthy_ring_holds_the_partition() {
        let updated = set([2]);
        let ready = set(0..3);
        let mut v = view(3, 2, &updated, &ready);
        v.paused = true;
        assert_eq!(next_partition(&v).hold, Some(Hold::Paused));
        assert_eq!(next_partition(&v).partition, 2);
        v.paused = false;
        v.health = Err(Unhealthy::HintBacklog { hints: 5_000 });
        assert_eq!(
            next_partition(&v),
            Rollout {
                partition: 2,
                hold: Some(Hold::Unhealthy(Unhealthy::HintBacklog { hints: 5_000 }))
            }
        );
    }

    #[test]
    fn pods_already_updated_are_skipped_and_a_shrink_lowers_the_partition() {
        let updated = set([0, 3, 4]);
        let ready = set(0..5);
        // Pods 3 and 4 done; 2 next, then 1; 0 was restarted for another reason.
        assert_eq!(next_partition(&view(5, 3, &updated, &ready)).partition, 2);
        let updated = set([0, 1, 2, 3, 4]);
        assert_eq!(next_partition(&view(5, 1, &updated, &ready)).partition, 0);
        // Scaled down to 2 pods while the partition stood at 4.
        let updated = set([]);
        assert_eq!(next_partition(&view(2, 4, &updated, &ready)).partition, 1);
    }

    #[test]
    fn a_stale_statefulset_status_holds_the_partition() {
        // Every pod looks updated against the old update revision.
        let updated = set(0..3);
        let ready = set(0..3);
        let mut v = view(3, 3, &updated, &ready);
        v.revisions_observed = false;
        assert_eq!(
            next_partition(&v),
            Rollout {
                partition: 3,
                hold: Some(Hold::Observing)
            }
        );
    }

    #[test]
    fn the_template_is_kept_while_its_inputs_are_the_same_or_unrecorded() {
        use k8s_openapi::api::core::v1::PodSpec;
        let sts = |inputs: Option<&str>| {
            let mut sts = StatefulSet::default();
            sts.spec.template.spec = Some(PodSpec::default());
            sts.metadata.annotations = inputs.map(|inputs| {
                BTreeMap::from([(TEMPLATE_INPUTS_ANNOTATION.to_owned(), inputs.to_owned())])
            });
            sts
        };
        assert!(!keeps_template("a", None));
        assert!(keeps_template("a", Some(&sts(Some("a")))));
        assert!(!keeps_template("b", Some(&sts(Some("a")))));
        // Rendered by a release that did not record its inputs: adopted.
        assert!(keeps_template("b", Some(&sts(None))));
        // A StatefulSet without a pod spec is rendered anew.
        assert!(!keeps_template("a", Some(&StatefulSet::default())));
    }

    #[test]
    fn the_status_says_how_far_and_what_it_waits_for() {
        let held = Rollout {
            partition: 2,
            hold: Some(Hold::Paused),
        };
        assert_eq!(
            held.describe(1, 3).as_deref(),
            Some(
                "1 of 3 pods on the new template; paused by the dynamo.example.org/rollout-paused annotation"
            )
        );
        let going = Rollout {
            partition: 1,
            hold: None,
        };
        assert_eq!(
            going.describe(1, 3).as_deref(),
            Some("1 of 3 pods on the new template; restarting pod 1")
        );
        let done = Rollout {
            partition: 0,
            hold: None,
        };
        assert_eq!(done.describe(3, 3), None);
    }

    #[test]
    fn ring_health_needs_ready_members_no_transfers_and_few_hints() {
        let member = |state, transfers_pending| ObservedMember {
            state,
            weight: 1,
            transfers_pending,
            keys: None,
        };
        let mut observed = Observed {
            statefulset_replicas: 3,
            running: set(0..3),
            ready: set([0, 1]),
            members: BTreeMap::from([
                (0, member(MemberState::Member, false)),
                (1, member(MemberState::Member, false)),
                // Removed: its pod's readiness does not matter.
                (2, member(MemberState::Removed, false)),
            ]),
            unready_for: BTreeMap::new(),
        };
        let hints = BTreeMap::from([(0, 600), (1, 400)]);
        assert_eq!(ring_health(&observed, &hints), Ok(()));
        let hints = BTreeMap::from([(0, 600), (1, 401)]);
        assert_eq!(
            ring_health(&observed, &hints),
            Err(Unhealthy::HintBacklog { hints: 1_001 })
        );
        observed
            .members
            .insert(1, member(MemberState::Joining, true));
        assert_eq!(
            ring_health(&observed, &BTreeMap::new()),
            Err(Unhealthy::TransfersPending { ordinal: 1 })
        );
        observed
            .members
            .insert(2, member(MemberState::Leaving, false));
        observed
            .members
            .insert(1, member(MemberState::Member, false));
        assert_eq!(
            ring_health(&observed, &BTreeMap::new()),
            Err(Unhealthy::MemberNotReady { ordinal: 2 })
        );
    }

    proptest! {
        /// Whatever is observed, at most one pod below the old partition is let
        /// through per pass, and only a healthy, unpaused ring with every let-through
        /// pod updated and ready lowers it.
        #[test]
        fn at_most_one_more_pod_per_pass(
            replicas in 0_u32..8,
            existing in 0_u32..8,
            partition in 0_u32..10,
            template_changes: bool,
            updated in proptest::collection::btree_set(0_u32..8, 0..8),
            ready in proptest::collection::btree_set(0_u32..8, 0..8),
            paused: bool,
            healthy: bool,
        ) {
            let v = RolloutView {
                replicas,
                existing,
                partition,
                template_changes,
                revisions_observed: true,
                updated: &updated,
                ready: &ready,
                paused,
                health: if healthy { Ok(()) } else { Err(Unhealthy::MemberNotReady { ordinal: 0 }) },
            };
            let next = next_partition(&v);
            prop_assert!(next.partition <= replicas);
            if template_changes {
                prop_assert_eq!(next.partition, existing.min(replicas));
                return Ok(());
            }
            let old = partition.min(replicas);
            prop_assert!(next.partition <= old);
            if next.partition < old {
                prop_assert!(!paused && healthy);
                prop_assert!((old..replicas).all(|o| updated.contains(&o) && ready.contains(&o)));
                // Exactly one old-revision pod is let through (or none are left).
                let let_through = (next.partition..old).filter(|o| !updated.contains(o)).count();
                prop_assert!(let_through <= 1);
            }
        }
    }
}
