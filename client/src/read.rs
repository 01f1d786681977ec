//! Gets coordinated by the client (Dynamo §6.4): which replicas to read, and what their
//! answers say together. No I/O.
//!
//! "Read requests can be coordinated at the client node thereby avoiding the extra
//! network hop": the client reads R of the key's N replicas with `Kv.GetLocal` (each
//! answers from its own store) and merges the sibling sets by vector clock, as a node
//! coordinating the get would ([`SiblingSet::merge`]). Replicas that answered with
//! different states have diverged; the client then asks a node for an ordinary get of
//! the key, whose read repair brings them up to date (a client cannot write to a replica
//! directly: the `Replica` service is for nodes only).

use bytes::Bytes;

use super::{Context, RouteNode, Versions};
use dynamo_core::version::{SiblingSet, StorageFormatError, context};

/// What R replicas' answers say together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MergedRead {
    /// The merge of every answer.
    pub(super) state: SiblingSet,
    /// Whether the answers differed (some replica is behind, or holds versions another
    /// lacks): the key needs read repair.
    pub(super) diverged: bool,
}

/// Merges replica answers in the storage encoding.
///
/// The encoding is canonical (one byte string per state), so equal answers, the common
/// case, are recognised by comparing bytes and only one is decoded.
///
/// # Errors
/// The first answer that is not a valid stored state.
pub(super) fn merge_replies(replies: &[Bytes]) -> Result<MergedRead, StorageFormatError> {
    let Some((first, rest)) = replies.split_first() else {
        return Ok(MergedRead {
            state: SiblingSet::new(),
            diverged: false,
        });
    };
    let mut state = SiblingSet::from_bytes(first)?;
    let mut diverged = false;
    for reply in rest {
        if reply != first {
            diverged = true;
            state.merge(&SiblingSet::from_bytes(reply)?);
        }
    }
    Ok(MergedRead { state, diverged })
}

/// What a get returns for `state`: its data values and its clock as the context, as a
/// node's `Kv.Get` answers.
pub(super) fn versions(state: &SiblingSet) -> Versions {
    Versions {
        values: state.values().map(Bytes::copy_from_slice).collect(),
        context: Context(context::encode(&state.context()).into()),
    }
}

/// The replicas a client-coordinated get reads, in the order to try them: the key's
/// replicas with a client address that are believed up (`up`), rotated by `turn` so
/// reads spread over all of them, then the others. `None` when fewer than `r` are
/// believed up: the client cannot gather R answers and leaves the read to a node, whose
/// sloppy quorum can also read stand-ins.
pub(super) fn read_targets<'a>(
    replicas: &[&'a RouteNode],
    r: usize,
    turn: usize,
    up: impl Fn(&RouteNode) -> bool,
) -> Option<Vec<&'a str>> {
    if r == 0 {
        return None;
    }
    let (mut healthy, others): (Vec<&RouteNode>, Vec<&RouteNode>) = replicas
        .iter()
        .copied()
        .filter(|node| node.client_address.is_some())
        .partition(|node| up(node));
    if healthy.len() < r {
        return None;
    }
    let len = healthy.len();
    healthy.rotate_left(turn % len);
    Some(
        healthy
            .into_iter()
            .chain(others)
            .filter_map(|node| node.client_address.as_deref())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::NodeId;
    use dynamo_core::time::Millis;
    use dynamo_core::version::context::Context;
    use dynamo_core::version::{Actor, SiblingLimits, Value};
    use dynamo_proto::MemberState;

    fn actor(name: &str) -> Actor {
        Actor::new(NodeId::new(name).unwrap(), 1)
    }

    fn put(state: &SiblingSet, context: &Context, value: &str, by: &str) -> SiblingSet {
        let mut next = state.clone();
        next.put(
            context,
            Value::data(value.as_bytes()),
            &actor(by),
            Millis(1),
            &SiblingLimits::default(),
        )
        .unwrap();
        next
    }

    fn encoded(state: &SiblingSet) -> Bytes {
        state.to_bytes().into()
    }

    /// Dynamo §6.4: equal answers are the answer, and nothing needs repair.
    #[test]
    fn equal_answers_are_the_result_and_need_no_repair() {
        let v1 = put(&SiblingSet::new(), &Context::new(), "v1", "a");
        let merged = merge_replies(&[encoded(&v1), encoded(&v1)]).unwrap();
        assert_eq!(
            merged,
            MergedRead {
                state: v1.clone(),
                diverged: false
            }
        );
        let read = versions(&merged.state);
        assert_eq!(read.values, [Bytes::from_static(b"v1")]);
        // The context a node's get would return for the same state.
        assert_eq!(
            read.context.as_bytes().as_ref(),
            context::encode(&v1.context())
        );
    }

    /// Dynamo §4.4, §5: a stale replica's answer is superseded by the newer one, and
    /// concurrent versions on two replicas both come back, with a context covering both;
    /// either way the replicas diverged and the key needs read repair.
    #[test]
    fn differing_answers_merge_by_vector_clock_and_call_for_repair() {
        let v1 = put(&SiblingSet::new(), &Context::new(), "v1", "a");
        let v2 = put(&v1, &v1.context(), "v2", "a");
        let stale = merge_replies(&[encoded(&v1), encoded(&v2)]).unwrap();
        assert!(stale.diverged);
        assert_eq!(stale.state, v2, "v2 descends from v1");

        let on_b = put(&v1, &v1.context(), "from b", "b");
        let concurrent = merge_replies(&[encoded(&v2), encoded(&on_b)]).unwrap();
        assert!(concurrent.diverged);
        let read = versions(&concurrent.state);
        assert_eq!(
            read.values,
            [Bytes::from_static(b"v2"), Bytes::from_static(b"from b")]
        );
        let context = context::decode(read.context.as_bytes()).unwrap();
        assert!(context.descends(&v2.context()) && context.descends(&on_b.context()));

        let missing = merge_replies(&[encoded(&SiblingSet::new()), encoded(&v1)]).unwrap();
        assert!(missing.diverged, "a replica without the key is behind");
        assert_eq!(missing.state, v1);
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_a_panic() {
        let v1 = put(&SiblingSet::new(), &Context::new(), "v1", "a");
        for bad in [
            Bytes::new(),
            Bytes::from_static(&[9, 0, 0]),
            Bytes::from_static(&[1, 5]),
        ] {
            assert!(
                merge_replies(&[encoded(&v1), bad.clone()]).is_err(),
                "{bad:?}"
            );
            assert!(
                merge_replies(std::slice::from_ref(&bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    fn node(id: &str, address: Option<&str>, reachable: bool) -> RouteNode {
        RouteNode {
            id: id.into(),
            client_address: address.map(Into::into),
            state: MemberState::Member,
            reachable,
        }
    }

    #[test]
    fn reads_spread_over_the_replicas_believed_up() {
        let nodes = [
            node("a", Some("a:1"), true),
            node("b", Some("b:1"), true),
            node("c", Some("c:1"), true),
        ];
        let replicas: Vec<&RouteNode> = nodes.iter().collect();
        let up = |n: &RouteNode| n.reachable;
        let firsts: Vec<&str> = (0..3)
            .map(|turn| read_targets(&replicas, 2, turn, up).unwrap()[0])
            .collect();
        assert_eq!(firsts, ["a:1", "b:1", "c:1"], "every replica takes reads");
        assert_eq!(
            read_targets(&replicas, 2, 1, up).unwrap(),
            ["b:1", "c:1", "a:1"]
        );
    }

    /// A replica believed down (or without an address) is tried only after the others;
    /// with fewer than R up the client leaves the read to a node.
    #[test]
    fn down_replicas_go_last_and_too_few_up_means_no_client_read() {
        let nodes = [
            node("a", Some("a:1"), false),
            node("b", Some("b:1"), true),
            node("c", None, true),
            node("d", Some("d:1"), true),
        ];
        let replicas: Vec<&RouteNode> = nodes.iter().collect();
        let up = |n: &RouteNode| n.reachable;
        assert_eq!(
            read_targets(&replicas, 2, 0, up).unwrap(),
            ["b:1", "d:1", "a:1"]
        );
        assert_eq!(read_targets(&replicas, 3, 0, up), None);
        assert_eq!(read_targets(&replicas, 0, 0, up), None);
    }
}
