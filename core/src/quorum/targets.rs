//! Sloppy quorum target selection (Dynamo §4.6).

use std::collections::{HashSet, VecDeque};

use crate::NodeId;

/// One replica a coordinator contacts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The node to send to.
    pub node: NodeId,
    /// The home replica this node stands in for, when it is not one of the key's first
    /// N nodes itself. The receiver keeps the write as a hint and hands it to that
    /// node once it recovers (hinted handoff, Dynamo §4.6).
    pub hint_for: Option<NodeId>,
}

/// The targets of one request, plus the healthy nodes left over for retries.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// The first N healthy nodes, in preference-list order.
    pub(crate) targets: Vec<Target>,
    /// Healthy nodes further down the list that are not targets, in order.
    pub(crate) spares: VecDeque<NodeId>,
}

/// The sloppy quorum for one key: the first `n` healthy nodes of the extended
/// preference list.
///
/// `extended` is every distinct node clockwise from the key; its first `n` entries are
/// the key's home replicas. Each target beyond them stands in for an unhealthy home
/// node, named in [`Target::hint_for`]: the k-th stand-in replaces the k-th unhealthy
/// home node, both counted in list order. With fewer than `n` healthy nodes, all of
/// them are returned (a quorum smaller than `n` may still be reachable). A node listed
/// twice counts once, at its first position. `is_healthy` is called once per distinct
/// node.
///
/// Dynamo §4.6: "if node A is temporarily down or unreachable during a write operation
/// then a replica that would normally have lived on A will now be sent to node D. ...
/// The replica sent to D will have a hint in its metadata that suggests which node was
/// the intended recipient of the replica."
pub fn select_targets(
    extended: &[NodeId],
    n: usize,
    is_healthy: impl FnMut(&NodeId) -> bool,
) -> Vec<Target> {
    place(extended, n, is_healthy).targets
}

/// [`select_targets`], also keeping the unused healthy nodes as spares.
pub(crate) fn place(
    extended: &[NodeId],
    n: usize,
    mut is_healthy: impl FnMut(&NodeId) -> bool,
) -> Placement {
    let mut seen = HashSet::with_capacity(extended.len());
    let distinct = extended.iter().filter(|node| seen.insert(*node));
    let mut targets = Vec::with_capacity(n);
    let mut spares = VecDeque::new();
    // Home nodes found unhealthy, waiting for a stand-in, in list order.
    let mut unserved_homes = VecDeque::new();
    for (position, node) in distinct.enumerate() {
        let is_home = position < n;
        if !is_healthy(node) {
            if is_home {
                unserved_homes.push_back(node.clone());
            }
            continue;
        }
        if targets.len() == n {
            spares.push_back(node.clone());
            continue;
        }
        // Every healthy home node fits (there are at most n home nodes), so a node
        // reaching here beyond the home prefix fills an unhealthy home node's place.
        let hint_for = if is_home {
            None
        } else {
            unserved_homes.pop_front()
        };
        targets.push(Target {
            node: node.clone(),
            hint_for,
        });
    }
    Placement { targets, spares }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::quorum::testing::{node, nodes};

    fn target(name: &str, hint_for: Option<&str>) -> Target {
        Target {
            node: node(name),
            hint_for: hint_for.map(node),
        }
    }

    #[test]
    fn all_healthy_targets_are_the_home_nodes_without_hints() {
        let list = nodes(&["a", "b", "c", "d", "e"]);
        let targets = select_targets(&list, 3, |_| true);
        assert_eq!(
            targets,
            vec![target("a", None), target("b", None), target("c", None)]
        );
    }

    #[test]
    fn unhealthy_home_node_is_replaced_by_the_next_node_with_a_hint() {
        // Dynamo §4.6: "if node A is temporarily down ... a replica that would normally
        // have lived on A will now be sent to node D ... [with] a hint". Here home node
        // 2 of 3 is down, so node 4 stands in for it.
        let list = nodes(&["n1", "n2", "n3", "n4", "n5"]);
        let down = node("n2");
        let targets = select_targets(&list, 3, |id| *id != down);
        assert_eq!(
            targets,
            vec![
                target("n1", None),
                target("n3", None),
                target("n4", Some("n2"))
            ]
        );
    }

    #[test]
    fn stand_ins_pair_with_unhealthy_home_nodes_in_order() {
        let list = nodes(&["a", "b", "c", "d", "e", "f"]);
        let down = nodes(&["a", "c", "d"]);
        let targets = select_targets(&list, 3, |id| !down.contains(id));
        assert_eq!(
            targets,
            vec![
                target("b", None),
                target("e", Some("a")),
                target("f", Some("c"))
            ]
        );
    }

    #[test]
    fn fewer_healthy_nodes_than_n_yields_what_there_is() {
        let list = nodes(&["a", "b", "c", "d"]);
        let up = nodes(&["b", "d"]);
        let targets = select_targets(&list, 3, |id| up.contains(id));
        assert_eq!(targets, vec![target("b", None), target("d", Some("a"))]);
        assert!(select_targets(&[], 3, |_| true).is_empty());
    }

    #[test]
    fn duplicates_count_once_and_health_is_asked_once_per_node() {
        let list = nodes(&["a", "a", "b", "c", "b", "d"]);
        let mut asked = Vec::new();
        let placement = place(&list, 3, |id| {
            asked.push(id.clone());
            id.as_str() != "b"
        });
        assert_eq!(asked, nodes(&["a", "b", "c", "d"]));
        assert_eq!(
            placement.targets,
            vec![target("a", None), target("c", None), target("d", Some("b"))]
        );
        assert!(placement.spares.is_empty());
    }

    #[test]
    fn spares_are_the_unused_healthy_nodes_in_order() {
        let list = nodes(&["a", "b", "c", "d", "e", "f"]);
        let placement = place(&list, 2, |id| id.as_str() != "d");
        assert_eq!(Vec::from(placement.spares), nodes(&["c", "e", "f"]));
    }

    proptest! {
        /// The laws of the sloppy quorum, for any list and any health.
        #[test]
        fn targets_are_the_first_n_healthy_nodes_with_paired_hints(
            len in 0usize..12,
            n in 1usize..6,
            healthy_mask in any::<u16>(),
        ) {
            let list: Vec<NodeId> = (0..len).map(|i| node(&format!("n{i}"))).collect();
            let healthy = |id: &NodeId| {
                let index = list.iter().position(|x| x == id).unwrap();
                healthy_mask & (1 << index) != 0
            };
            let placement = place(&list, n, healthy);
            let expected: Vec<&NodeId> = list.iter().filter(|id| healthy(id)).take(n).collect();
            let chosen: Vec<&NodeId> = placement.targets.iter().map(|t| &t.node).collect();
            prop_assert_eq!(chosen, expected);

            let home = &list[..n.min(len)];
            let unhealthy_home: Vec<&NodeId> = home.iter().filter(|id| !healthy(id)).collect();
            let stand_ins: Vec<&Target> =
                placement.targets.iter().filter(|t| !home.contains(&t.node)).collect();
            prop_assert!(stand_ins.len() <= unhealthy_home.len());
            for (k, stand_in) in stand_ins.iter().enumerate() {
                prop_assert_eq!(stand_in.hint_for.as_ref(), Some(unhealthy_home[k]));
            }
            for home_target in placement.targets.iter().filter(|t| home.contains(&t.node)) {
                prop_assert_eq!(&home_target.hint_for, &None);
            }
            let hinted: BTreeSet<_> = placement.targets.iter().filter_map(|t| t.hint_for.as_ref()).collect();
            prop_assert_eq!(hinted.len(), stand_ins.len(), "each home node has at most one stand-in");

            let targets: BTreeSet<&NodeId> = placement.targets.iter().map(|t| &t.node).collect();
            let spares: Vec<&NodeId> = placement.spares.iter().collect();
            let expected_spares: Vec<&NodeId> =
                list.iter().filter(|id| healthy(id) && !targets.contains(id)).collect();
            prop_assert_eq!(spares, expected_spares);
        }
    }
}
