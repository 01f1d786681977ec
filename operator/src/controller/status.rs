//! The status the controller writes, as a pure function of what it observed and decided.
//! No I/O; the clock is a parameter.
//!
//! The status is deterministic: the same observation gives the same status, and a
//! condition's `lastTransitionTime` changes only when its `status` does, so writing it
//! again is a no-op and never retriggers the controller (a timestamp that changed on
//! every pass made kube-rs's controller-rs spin).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{DynamoClusterStatus, Phase};
use crate::planner::{Observed, RefuseReason, Step, WaitReason};

/// Condition type: enough ready members to serve every key at its replication factor.
pub const AVAILABLE: &str = "Available";
/// Condition type: a membership or StatefulSet change is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something needs a person (a refused step, an unready member, a bad
/// spec).
pub const DEGRADED: &str = "Degraded";

/// What a pass observed and decided, for [`cluster_status`].
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    /// The object's `metadata.generation`.
    pub generation: Option<i64>,
    /// The observation the step came from.
    pub observed: &'a Observed,
    /// The step chosen (and executed, unless it is a wait, a refusal or done).
    pub step: &'a Step,
    /// The replication factor `N` of the spec.
    pub replication_factor: u32,
    /// `status.selector`, for the scale subresource.
    pub selector: &'a str,
    /// The pod template rollout in progress (`status.rollout`), if any.
    pub rollout: Option<&'a str>,
    /// What the API refused this pass and the pass went on without.
    pub refusals: &'a [Refusal],
}

/// Something the pass could not do and went on without: a child object the API refused,
/// a storage edit that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The condition's and event's reason.
    pub reason: &'static str,
    /// What was refused and why.
    pub message: String,
}

/// Reason of `Degraded` (and the Warning event) while the API refuses a child object.
pub const CHILD_REFUSED: &str = "ChildObjectRefused";

/// Reason of `Degraded` (and the Warning event) while a storage edit cannot be carried
/// out: a shrink, or an expansion the storage class refuses.
pub const VOLUME_EXPANSION_REFUSED: &str = "VolumeExpansionRefused";

/// Reason of `Progressing` while the membership is converged but pods still wait for a
/// new pod template.
pub const ROLLING_OUT: &str = "RollingOut";

/// The reason a step is reported under, `PascalCase` as Kubernetes reasons are.
#[must_use]
pub fn step_reason(step: &Step) -> &'static str {
    match step {
        Step::GrowStatefulSet { .. } => "GrowStatefulSet",
        Step::Join { .. } => "Join",
        Step::SetWeight { .. } => "SetWeight",
        Step::Decommission { .. } => "Decommission",
        Step::Remove { replace: true, .. } => "ReplaceMember",
        Step::Remove { replace: false, .. } => "RemoveDeadMember",
        Step::ShrinkStatefulSet { .. } => "ShrinkStatefulSet",
        Step::Wait { reason } => match reason {
            WaitReason::Leaving { .. } => "WaitingForLeave",
            WaitReason::Joining { .. } => "WaitingForJoin",
            WaitReason::TransfersPending { .. } => "WaitingForTransfers",
            WaitReason::MemberNotReady { .. } => "MemberNotReady",
            WaitReason::MemberDead { .. } => "MemberDead",
            WaitReason::PodNotRunning { .. } => "WaitingForPod",
        },
        Step::Refuse { reason } => match reason {
            RefuseReason::TooFewMembers { .. } => "DecommissionRefused",
            RefuseReason::InsufficientCapacity { .. } => "InsufficientCapacity",
        },
        Step::Done => "Converged",
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: Option<&DynamoClusterStatus>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status after a pass. `previous` is the status the object had, so unchanged
/// conditions keep their transition time; `now` is used for changed ones.
#[must_use]
pub fn cluster_status(
    pass: &Pass<'_>,
    previous: Option<&DynamoClusterStatus>,
    now: &Time,
) -> DynamoClusterStatus {
    let observed = pass.observed;
    let step = pass.step;
    let active: Vec<u32> = observed
        .members
        .iter()
        .filter(|(_, m)| m.state.is_active())
        .map(|(&o, _)| o)
        .collect();
    let ready_members = active.iter().filter(|o| observed.ready.contains(o)).count();
    let n = usize::try_from(pass.replication_factor).unwrap_or(usize::MAX);
    let available = ready_members >= n;
    let available = condition(
        AVAILABLE,
        available,
        if available {
            "MembersReady"
        } else {
            "TooFewReadyMembers"
        },
        format!(
            "{ready_members} of {} members ready, replication factor {n}",
            active.len()
        ),
        pass.generation,
        previous,
        now,
    );
    let rolling_out = matches!(step, Step::Done).then_some(pass.rollout).flatten();
    DynamoClusterStatus {
        observed_generation: pass.generation,
        ready_nodes: count(observed.ready.len()),
        members: count(active.len()),
        phase: Some(match step.phase(observed) {
            Phase::Running if rolling_out.is_some() => Phase::Progressing,
            phase => phase,
        }),
        conditions: vec![
            available,
            progressing_condition(pass, rolling_out, previous, now),
            degraded_condition(pass, previous, now),
        ],
        current_step: (!matches!(step, Step::Done)).then(|| step.to_string()),
        rollout: pass.rollout.map(str::to_owned),
        selector: Some(pass.selector.to_owned()),
    }
}

/// Progressing: a rollout under way once the ring is done, else whether a step other
/// than done or a refusal is under way.
fn progressing_condition(
    pass: &Pass<'_>,
    rolling_out: Option<&str>,
    previous: Option<&DynamoClusterStatus>,
    now: &Time,
) -> Condition {
    let step = pass.step;
    match rolling_out {
        Some(rollout) => condition(
            PROGRESSING,
            true,
            ROLLING_OUT,
            rollout.to_owned(),
            pass.generation,
            previous,
            now,
        ),
        None => condition(
            PROGRESSING,
            !matches!(step, Step::Done | Step::Refuse { .. }),
            step_reason(step),
            step.to_string(),
            pass.generation,
            previous,
            now,
        ),
    }
}

/// Degraded: a refused step or a wait on an unready or dead member, else the pass's
/// refusals (every message, the first's reason), else as expected.
fn degraded_condition(
    pass: &Pass<'_>,
    previous: Option<&DynamoClusterStatus>,
    now: &Time,
) -> Condition {
    let step = pass.step;
    let stuck = matches!(
        step,
        Step::Refuse { .. }
            | Step::Wait {
                reason: WaitReason::MemberNotReady { .. } | WaitReason::MemberDead { .. }
            }
    );
    let (degraded, reason, message) = if stuck {
        (true, step_reason(step), step.to_string())
    } else if let Some(first) = pass.refusals.first() {
        let messages: Vec<&str> = pass.refusals.iter().map(|r| r.message.as_str()).collect();
        (true, first.reason, messages.join("; "))
    } else {
        (false, "AsExpected", String::new())
    };
    condition(
        DEGRADED,
        degraded,
        reason,
        message,
        pass.generation,
        previous,
        now,
    )
}

/// Why a cluster is degraded outside a planned step: a spec that cannot be planned
/// (`InvalidSpec`, nothing in progress: `progressing: Some(false)`), or a pass that
/// failed (an unreadable ring, a refused child object, a missing Secret: the error's
/// reason, `progressing: None`, what the last successful pass saw kept).
#[derive(Debug, Clone, Copy)]
pub struct Degradation<'a> {
    /// The object's `metadata.generation`.
    pub generation: Option<i64>,
    /// The condition's reason.
    pub reason: &'a str,
    /// The condition's message.
    pub message: &'a str,
    /// Progressing's new value (with the same reason), or `None` to keep it (and the
    /// step in progress).
    pub progressing: Option<bool>,
}

/// Degraded for `degradation`; Available and the counts kept.
#[must_use]
pub fn degraded_status(
    degradation: Degradation<'_>,
    selector: &str,
    previous: Option<&DynamoClusterStatus>,
    now: &Time,
) -> DynamoClusterStatus {
    let Degradation {
        generation,
        reason,
        message,
        progressing,
    } = degradation;
    let kept = previous.cloned().unwrap_or_default();
    let keep = |type_: &str| {
        kept.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .cloned()
            .into_iter()
    };
    let mut conditions: Vec<Condition> = keep(AVAILABLE).collect();
    match progressing {
        Some(progressing) => conditions.push(condition(
            PROGRESSING,
            progressing,
            reason,
            message.to_owned(),
            generation,
            previous,
            now,
        )),
        None => conditions.extend(keep(PROGRESSING)),
    }
    conditions.push(condition(
        DEGRADED,
        true,
        reason,
        message.to_owned(),
        generation,
        previous,
        now,
    ));
    // A failed pass leaves the step it found in progress (Progressing kept) as it was.
    let current_step = progressing
        .is_none()
        .then(|| kept.current_step.clone())
        .flatten();
    DynamoClusterStatus {
        observed_generation: generation,
        phase: Some(Phase::Degraded),
        conditions,
        current_step,
        selector: Some(selector.to_owned()),
        ..kept
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{MemberState, ObservedMember, RefuseReason};
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn observed(replicas: u32, members: &[u32], ready: &[u32]) -> Observed {
        Observed {
            statefulset_replicas: replicas,
            running: (0..replicas).collect(),
            ready: ready.iter().copied().collect(),
            members: members
                .iter()
                .map(|&o| {
                    let m = ObservedMember {
                        state: MemberState::Member,
                        weight: 1,
                        transfers_pending: false,
                        keys: None,
                    };
                    (o, m)
                })
                .collect(),
            unready_for: std::collections::BTreeMap::new(),
        }
    }

    fn find<'a>(status: &'a DynamoClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_converged_cluster_rolling_out_a_template_is_progressing() {
        let o = observed(3, &[0, 1, 2], &[0, 1, 2]);
        let pass = Pass {
            generation: Some(4),
            observed: &o,
            step: &Step::Done,
            replication_factor: 3,
            selector: "app=x",
            rollout: Some("1 of 3 pods on the new template; waiting: member 1 is not ready"),
            refusals: &[],
        };
        let s = cluster_status(&pass, None, &at(10));
        assert_eq!(s.phase, Some(Phase::Progressing));
        assert_eq!(find(&s, PROGRESSING).status, "True");
        assert_eq!(find(&s, PROGRESSING).reason, ROLLING_OUT);
        assert_eq!(s.rollout.as_deref(), pass.rollout);
        assert_eq!(s.current_step, None);
        // A membership step in progress is what Progressing reports; the rollout stays
        // in its own field.
        let join = Step::Join {
            ordinal: 3,
            weight: 1,
        };
        let s = cluster_status(
            &Pass {
                step: &join,
                ..pass
            },
            None,
            &at(10),
        );
        assert_eq!(find(&s, PROGRESSING).reason, "Join");
        assert_eq!(s.rollout.as_deref(), pass.rollout);
    }

    #[test]
    fn converged_cluster_is_available_and_idle() {
        let o = observed(3, &[0, 1, 2], &[0, 1, 2]);
        let pass = Pass {
            generation: Some(4),
            observed: &o,
            step: &Step::Done,
            replication_factor: 3,
            selector: "app=x",
            rollout: None,
            refusals: &[],
        };
        let s = cluster_status(&pass, None, &at(10));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!((s.members, s.ready_nodes), (3, 3));
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(s.current_step, None);
        assert_eq!(find(&s, AVAILABLE).status, "True");
        assert_eq!(find(&s, PROGRESSING).status, "False");
        assert_eq!(find(&s, PROGRESSING).reason, "Converged");
        assert_eq!(find(&s, DEGRADED).status, "False");
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
    }

    #[test]
    fn refusal_is_degraded_not_progressing() {
        let o = observed(3, &[0, 1, 2], &[0, 1, 2]);
        let step = Step::Refuse {
            reason: RefuseReason::TooFewMembers {
                ordinal: 2,
                remaining: 2,
                replication_factor: 3,
            },
        };
        let pass = Pass {
            generation: Some(2),
            observed: &o,
            step: &step,
            replication_factor: 3,
            selector: "app=x",
            rollout: None,
            refusals: &[],
        };
        let s = cluster_status(&pass, None, &at(10));
        assert_eq!(s.phase, Some(Phase::Degraded));
        let degraded = find(&s, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "DecommissionRefused")
        );
        assert!(
            degraded
                .message
                .contains("fewer than the replication factor 3")
        );
        assert_eq!(find(&s, PROGRESSING).status, "False");
        assert_eq!(s.current_step.as_deref(), Some(step.to_string().as_str()));

        let step = Step::Refuse {
            reason: RefuseReason::InsufficientCapacity {
                ordinal: 2,
                keys: 1 << 40,
                remaining: 2,
                volume_bytes: 1 << 30,
            },
        };
        let s = cluster_status(
            &Pass {
                step: &step,
                ..pass
            },
            None,
            &at(10),
        );
        let degraded = find(&s, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InsufficientCapacity")
        );
        assert!(
            degraded.message.contains("cannot hold them"),
            "{}",
            degraded.message
        );
        assert_eq!(s.phase, Some(Phase::Degraded));
    }

    #[test]
    fn pending_transfers_are_progress_not_degradation() {
        let o = observed(5, &[0, 1, 2, 3], &[0, 1, 2, 3]);
        let step = Step::Wait {
            reason: WaitReason::TransfersPending { ordinal: 3 },
        };
        let pass = Pass {
            generation: Some(1),
            observed: &o,
            step: &step,
            replication_factor: 3,
            selector: "app=x",
            rollout: None,
            refusals: &[],
        };
        let s = cluster_status(&pass, None, &at(1));
        assert_eq!(s.phase, Some(Phase::Progressing));
        let progressing = find(&s, PROGRESSING);
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "WaitingForTransfers")
        );
        assert_eq!(progressing.message, "wait: transfers pending on node 3");
        assert_eq!(find(&s, DEGRADED).status, "False");
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let o = observed(3, &[0, 1, 2], &[0, 1, 2]);
        let join = Step::Join {
            ordinal: 3,
            weight: 1,
        };
        let pass = |step| Pass {
            generation: Some(1),
            observed: &o,
            step,
            replication_factor: 3,
            selector: "app=x",
            rollout: None,
            refusals: &[],
        };
        let first = cluster_status(&pass(&join), None, &at(10));
        // The same pass later: identical status, so writing it is a no-op.
        assert_eq!(cluster_status(&pass(&join), Some(&first), &at(20)), first);
        let done = cluster_status(&pass(&Step::Done), Some(&first), &at(30));
        assert_eq!(find(&done, PROGRESSING).last_transition_time, at(30));
        assert_eq!(find(&done, AVAILABLE).last_transition_time, at(10));
        assert_eq!(find(&done, DEGRADED).last_transition_time, at(10));
    }

    #[test]
    fn too_few_ready_members_is_unavailable() {
        let o = observed(3, &[0, 1, 2], &[0]);
        let step = Step::Wait {
            reason: WaitReason::MemberNotReady { ordinal: 1 },
        };
        let pass = Pass {
            generation: None,
            observed: &o,
            step: &step,
            replication_factor: 3,
            selector: "app=x",
            rollout: None,
            refusals: &[],
        };
        let s = cluster_status(&pass, None, &at(1));
        assert_eq!(find(&s, AVAILABLE).status, "False");
        assert_eq!(find(&s, AVAILABLE).reason, "TooFewReadyMembers");
        assert_eq!(find(&s, DEGRADED).reason, "MemberNotReady");
        assert_eq!(s.ready_nodes, 1);
    }

    #[test]
    fn invalid_spec_keeps_counts_and_says_why() {
        let o = observed(3, &[0, 1, 2], &[0, 1, 2]);
        let pass = Pass {
            generation: Some(1),
            observed: &o,
            step: &Step::Done,
            replication_factor: 3,
            selector: "app=x",
            rollout: None,
            refusals: &[],
        };
        let before = cluster_status(&pass, None, &at(1));
        let s = degraded_status(
            Degradation {
                generation: Some(2),
                reason: "InvalidSpec",
                message: "bad key",
                progressing: Some(false),
            },
            "app=x",
            Some(&before),
            &at(5),
        );
        assert_eq!((s.members, s.ready_nodes), (3, 3));
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(find(&s, DEGRADED).reason, "InvalidSpec");
        assert_eq!(find(&s, DEGRADED).message, "bad key");
        assert_eq!(find(&s, AVAILABLE), find(&before, AVAILABLE));
    }

    #[test]
    fn a_failed_pass_is_degraded_and_keeps_what_the_last_pass_saw() {
        let o = observed(4, &[0, 1, 2], &[0, 1, 2]);
        let pass = Pass {
            generation: Some(3),
            observed: &o,
            step: &Step::Wait {
                reason: WaitReason::MemberNotReady { ordinal: 3 },
            },
            replication_factor: 3,
            selector: "app=x",
            rollout: None,
            refusals: &[],
        };
        let before = cluster_status(&pass, None, &at(1));
        let s = degraded_status(
            Degradation {
                generation: Some(3),
                reason: "RingUnreadable",
                message: "no node answered Admin.Ring: db-0: refused",
                progressing: None,
            },
            "app=x",
            Some(&before),
            &at(9),
        );
        assert_eq!((s.members, s.ready_nodes), (3, 3));
        assert_eq!(s.phase, Some(Phase::Degraded));
        let degraded = find(&s, DEGRADED);
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "RingUnreadable");
        assert_eq!(
            degraded.message,
            "no node answered Admin.Ring: db-0: refused"
        );
        // What was in progress still is, as far as anyone knows.
        assert_eq!(find(&s, PROGRESSING), find(&before, PROGRESSING));
        assert_eq!(find(&s, AVAILABLE), find(&before, AVAILABLE));
        assert_eq!(s.current_step, before.current_step);
    }
}
