//! Test helpers shared by the quorum tests.

use std::collections::BTreeSet;

use super::Reconcile;
use crate::NodeId;

pub(crate) fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

pub(crate) fn nodes(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|name| node(name)).collect()
}

/// A grow-only set under union: a real join-semilattice standing in for the sibling
/// set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Union(pub(crate) BTreeSet<u32>);

impl Union {
    pub(crate) fn of(items: &[u32]) -> Self {
        Union(items.iter().copied().collect())
    }
}

impl Reconcile for Union {
    fn reconcile(&mut self, other: &Self) {
        self.0.extend(other.0.iter().copied());
    }
}
