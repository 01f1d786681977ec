//! Growing the nodes' volumes in place (#14: a storage edit used to wedge the cluster).
//!
//! A StatefulSet's volume claim templates are immutable, so a new `storage.size` cannot
//! simply be applied: the API refuses the StatefulSet on every pass. What the best
//! operators do (cass-operator, Strimzi) is what happens here:
//!
//! 1. each existing claim's request is raised to the new size (the storage class must
//!    allow expansion; its resizer grows the volume, the filesystem follows);
//! 2. the StatefulSet is deleted with `propagationPolicy: Orphan`, so its pods and claims
//!    stay and keep serving;
//! 3. the next pass creates it again with the new claim template; it adopts the running
//!    pods, and since their template did not change neither does their revision, so no
//!    pod restarts (the rollout's partition holds them until that is checked).
//!
//! Shrinking is refused at admission (a CEL transition rule); an edit that got past it
//! (an object older than the rule), or an expansion the API refuses (a class without
//! `allowVolumeExpansion`), keeps the StatefulSet's current claim template, so the
//! StatefulSet still applies and membership work goes on, and shows on the status.
//! Pure: the controller patches and deletes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use crate::planner::volume_bytes;

/// How the spec's volume size compares with the StatefulSet's claim template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeChange {
    /// The same size, or one side is not a quantity of bytes (nothing to do).
    Unchanged,
    /// The spec asks for larger volumes.
    Grow {
        /// The claim template's size.
        from: String,
        /// The spec's.
        to: String,
    },
    /// The spec asks for smaller volumes, which cannot be done in place.
    Shrink {
        /// The claim template's size.
        from: String,
        /// The spec's.
        to: String,
    },
}

/// The storage request of a StatefulSet's first volume claim template (the nodes'
/// data volume; there is only one).
#[must_use]
pub fn claim_template_size(statefulset: &StatefulSet) -> Option<&str> {
    statefulset
        .spec
        .volume_claim_templates
        .as_ref()?
        .first()
        .and_then(claim_request)
}

/// A claim's requested storage.
#[must_use]
pub fn claim_request(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.as_str())
}

/// How `desired` (the spec's `storage.size`) compares with the claim template's `current`
/// size, as quantities of bytes (`10Gi` equals `10240Mi`).
#[must_use]
pub fn volume_change(desired: &str, current: Option<&str>) -> VolumeChange {
    let Some(current) = current else {
        return VolumeChange::Unchanged;
    };
    match (volume_bytes(current), volume_bytes(desired)) {
        (Some(from), Some(to)) if to > from => VolumeChange::Grow {
            from: current.to_owned(),
            to: desired.to_owned(),
        },
        (Some(from), Some(to)) if to < from => VolumeChange::Shrink {
            from: current.to_owned(),
            to: desired.to_owned(),
        },
        _ => VolumeChange::Unchanged,
    }
}

/// Whether `claim` requests less than `to` (so it needs the expansion patch); a claim
/// whose request cannot be read is patched too.
#[must_use]
pub fn claim_needs_growth(claim: &PersistentVolumeClaim, to: &str) -> bool {
    match (
        claim_request(claim).and_then(volume_bytes),
        volume_bytes(to),
    ) {
        (Some(has), Some(wanted)) => has < wanted,
        _ => true,
    }
}

/// Keeps `current`'s claim templates in `statefulset` (an edit that cannot be carried
/// out must not make the StatefulSet unappliable).
pub fn keep_claim_templates(statefulset: &mut StatefulSet, current: &StatefulSet) {
    statefulset
        .spec
        .volume_claim_templates
        .clone_from(&current.spec.volume_claim_templates);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::statefulset;
    use crate::crd::DynamoCluster;

    fn cluster(size: &str) -> DynamoCluster {
        let mut c = crate::fixtures::cluster("db", "prod", 3);
        c.spec.storage.size = size.to_owned();
        c
    }

    #[test]
    fn sizes_compare_as_bytes() {
        assert_eq!(
            volume_change("10Gi", Some("10240Mi")),
            VolumeChange::Unchanged
        );
        assert_eq!(
            volume_change("20Gi", Some("10Gi")),
            VolumeChange::Grow {
                from: "10Gi".into(),
                to: "20Gi".into()
            }
        );
        assert_eq!(
            volume_change("5Gi", Some("10Gi")),
            VolumeChange::Shrink {
                from: "10Gi".into(),
                to: "5Gi".into()
            }
        );
        // Nothing to compare: nothing to do.
        assert_eq!(volume_change("20Gi", None), VolumeChange::Unchanged);
        assert_eq!(volume_change("lots", Some("10Gi")), VolumeChange::Unchanged);
    }

    #[test]
    fn the_claim_template_size_is_the_specs_and_can_be_kept() {
        let small = statefulset(&cluster("1Gi"), 3).unwrap();
        assert_eq!(claim_template_size(&small), Some("1Gi"));
        let mut large = statefulset(&cluster("2Gi"), 3).unwrap();
        assert_eq!(claim_template_size(&large), Some("2Gi"));
        keep_claim_templates(&mut large, &small);
        assert_eq!(claim_template_size(&large), Some("1Gi"));
        assert_eq!(claim_template_size(&StatefulSet::default()), None);
    }

    #[test]
    fn only_smaller_claims_need_the_patch() {
        let template = statefulset(&cluster("1Gi"), 3).unwrap();
        let claim = template.spec.volume_claim_templates.unwrap()[0].clone();
        assert!(claim_needs_growth(&claim, "2Gi"));
        assert!(!claim_needs_growth(&claim, "1024Mi"));
        assert!(!claim_needs_growth(&claim, "512Mi"));
        assert!(claim_needs_growth(&PersistentVolumeClaim::default(), "2Gi"));
    }
}
