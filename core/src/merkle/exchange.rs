//! The stepwise, network-facing form of [`MerkleTree::diff`] (Dynamo §4.7).
//!
//! No I/O: the shell carries requests to the peer and hashes back.

use super::{Hash, MerkleError, MerkleTree};
use crate::ring::TokenRange;

/// A top-down comparison of a local tree with a peer's tree of the same shape, that
/// needs only hashes from the peer, one level per round trip.
///
/// It compares against a snapshot of the local tree taken by [`Exchange::new`], so
/// the local tree can take writes while the exchange waits on the network. It finds
/// the same buckets as [`MerkleTree::diff`] would on the two trees.
///
/// Call order:
/// 1. [`Exchange::new`]; tell the peer the [`range`](Self::range) and
///    [`depth`](Self::depth), so it can refuse if its tree has another shape.
/// 2. [`poll_request`](Self::poll_request): if it returns `(level, indices)`, ask the
///    peer for those hashes (it answers with [`MerkleTree::hashes_at`]), and pass the
///    answer to [`handle_hashes`](Self::handle_hashes).
/// 3. Repeat 2 until [`poll_result`](Self::poll_result) returns the differing leaf
///    buckets, in increasing order; the shell then repairs the keys of those buckets
///    ([`MerkleTree::bucket_range`]).
///
/// At most one request is outstanding. The exchange has no timer: if the peer does not
/// answer, or answers with an error, the shell abandons the exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    range: TokenRange,
    depth: u8,
    /// The local tree's node hashes in heap order (see `MerkleTree::all_hashes`).
    local: Vec<Hash>,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    /// Hashes of `indices` (sorted, distinct) at `level` are needed; `sent` once
    /// `poll_request` has handed the request out.
    Pending {
        level: u8,
        indices: Vec<usize>,
        sent: bool,
    },
    /// The differing buckets, waiting for `poll_result`.
    Done(Vec<usize>),
    /// The result has been taken.
    Finished,
}

impl Exchange {
    /// An exchange comparing a snapshot of `local` with a peer's tree, starting from
    /// the root.
    pub fn new(local: &MerkleTree) -> Self {
        Exchange {
            range: local.range(),
            depth: local.depth(),
            local: local.all_hashes(),
            state: State::Pending {
                level: 0,
                indices: vec![0],
                sent: false,
            },
        }
    }

    /// The key range of the compared trees.
    pub fn range(&self) -> TokenRange {
        self.range
    }

    /// The depth of the compared trees.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The next hashes to ask the peer for, `(level, indices)` with the indices sorted
    /// and distinct. Returns each request once.
    #[must_use]
    pub fn poll_request(&mut self) -> Option<(u8, Vec<usize>)> {
        match &mut self.state {
            State::Pending {
                level,
                indices,
                sent,
            } if !*sent => {
                *sent = true;
                Some((*level, indices.clone()))
            }
            _ => None,
        }
    }

    /// The peer's answer to the outstanding request: a hash for each requested index,
    /// in any order.
    ///
    /// # Errors
    ///
    /// The answer must hold exactly the requested indices of the requested level:
    /// [`MerkleError::UnexpectedHashes`], [`MerkleError::WrongLevel`],
    /// [`MerkleError::TooManyHashes`], [`MerkleError::UnrequestedIndex`],
    /// [`MerkleError::DuplicateIndex`] or [`MerkleError::MissingHashes`] otherwise. A
    /// rejected answer changes nothing; the peer is misbehaving and the shell should
    /// abandon the exchange.
    pub fn handle_hashes(
        &mut self,
        level: u8,
        hashes: Vec<(usize, Hash)>,
    ) -> Result<(), MerkleError> {
        let State::Pending {
            level: expected,
            indices,
            sent: true,
        } = &self.state
        else {
            return Err(MerkleError::UnexpectedHashes);
        };
        if level != *expected {
            return Err(MerkleError::WrongLevel {
                expected: *expected,
                got: level,
            });
        }
        if hashes.len() > indices.len() {
            return Err(MerkleError::TooManyHashes {
                got: hashes.len(),
                limit: indices.len(),
            });
        }
        // The peer's hash for each requested index, by position in `indices`.
        let mut remote: Vec<Option<Hash>> = vec![None; indices.len()];
        for (index, hash) in hashes {
            let position = indices
                .binary_search(&index)
                .map_err(|_| MerkleError::UnrequestedIndex(index))?;
            if remote[position].replace(hash).is_some() {
                return Err(MerkleError::DuplicateIndex(index));
            }
        }
        let missing = remote.iter().filter(|hash| hash.is_none()).count();
        if missing > 0 {
            return Err(MerkleError::MissingHashes(missing));
        }

        let first = 1usize << level;
        let differing = indices
            .iter()
            .zip(remote)
            .filter(|&(&index, remote)| remote != Some(self.local[first + index]))
            .map(|(&index, _)| index);
        self.state = if level == self.depth {
            State::Done(differing.collect())
        } else {
            let children: Vec<usize> = differing
                .flat_map(|index| [2 * index, 2 * index + 1])
                .collect();
            if children.is_empty() {
                State::Done(Vec::new())
            } else {
                State::Pending {
                    level: level + 1,
                    indices: children,
                    sent: false,
                }
            }
        };
        Ok(())
    }

    /// The leaf buckets whose hashes differ, in increasing order, once the comparison
    /// is complete. Returns the result once.
    #[must_use]
    pub fn poll_result(&mut self) -> Option<Vec<usize>> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Done(differing) => Some(differing),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Whether the result is ready or already taken: no request will follow.
    pub fn is_done(&self) -> bool {
        !matches!(self.state, State::Pending { .. })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A depth-3 tree over the full ring with keys `0..n`, each at digest `version`.
    fn tree(n: u32, version: u8) -> MerkleTree {
        MerkleTree::from_entries(
            TokenRange::full(),
            3,
            (0..n).map(|k| (format!("key-{k}"), [version; 16])),
        )
        .unwrap()
    }

    /// An exchange of `tree(40, 1)` against `tree(40, 2)` advanced to its level-1
    /// request: every node differs, so the request is for both level-1 nodes.
    fn at_level_one() -> (Exchange, MerkleTree) {
        let remote = tree(40, 2);
        let mut exchange = Exchange::new(&tree(40, 1));
        assert_eq!(exchange.poll_request(), Some((0, vec![0])));
        exchange
            .handle_hashes(0, remote.hashes_at(0, &[0]).unwrap())
            .unwrap();
        assert_eq!(exchange.poll_request(), Some((1, vec![0, 1])));
        (exchange, remote)
    }

    #[test]
    fn equal_trees_settle_on_the_root() {
        // Dynamo §4.7: "If the hash values of the root of two trees are equal, then the
        // values of the leaf nodes in the tree are equal and the nodes require no
        // synchronization."
        let mut exchange = Exchange::new(&tree(40, 1));
        assert_eq!(
            (exchange.range(), exchange.depth()),
            (TokenRange::full(), 3)
        );
        let (level, indices) = exchange.poll_request().unwrap();
        assert_eq!(exchange.poll_request(), None, "one request at a time");
        assert!(!exchange.is_done());
        exchange
            .handle_hashes(level, tree(40, 1).hashes_at(level, &indices).unwrap())
            .unwrap();
        assert!(exchange.is_done());
        assert_eq!(exchange.poll_request(), None);
        assert_eq!(exchange.poll_result(), Some(vec![]));
        assert_eq!(
            exchange.poll_result(),
            None,
            "the result is handed out once"
        );
    }

    #[test]
    fn the_snapshot_ignores_later_local_writes() {
        let mut local = tree(40, 1);
        let mut exchange = Exchange::new(&local);
        local.insert(b"late", [9; 16]).unwrap();
        let (level, indices) = exchange.poll_request().unwrap();
        exchange
            .handle_hashes(level, tree(40, 1).hashes_at(level, &indices).unwrap())
            .unwrap();
        assert_eq!(exchange.poll_result(), Some(vec![]));
    }

    #[test]
    fn answers_in_any_order_are_accepted() {
        let (mut exchange, remote) = at_level_one();
        let mut answer = remote.hashes_at(1, &[0, 1]).unwrap();
        answer.reverse();
        exchange.handle_hashes(1, answer).unwrap();
        assert_eq!(exchange.poll_request(), Some((2, vec![0, 1, 2, 3])));
    }

    #[test]
    fn hostile_answers_are_errors_and_change_nothing() {
        let (mut exchange, remote) = at_level_one();
        let [left, right] = [0, 1].map(|i| remote.hash_at(1, i).unwrap());
        let cases = [
            (
                2,
                vec![(0, left), (1, right)],
                MerkleError::WrongLevel {
                    expected: 1,
                    got: 2,
                },
            ),
            (
                1,
                vec![(0, left), (1, right), (2, right)],
                MerkleError::TooManyHashes { got: 3, limit: 2 },
            ),
            (
                1,
                vec![(0, left), (7, right)],
                MerkleError::UnrequestedIndex(7),
            ),
            (
                1,
                vec![(usize::MAX, left)],
                MerkleError::UnrequestedIndex(usize::MAX),
            ),
            (
                1,
                vec![(0, left), (0, right)],
                MerkleError::DuplicateIndex(0),
            ),
            (1, vec![(1, right)], MerkleError::MissingHashes(1)),
            (1, vec![], MerkleError::MissingHashes(2)),
        ];
        for (level, answer, error) in cases {
            assert_eq!(exchange.handle_hashes(level, answer), Err(error));
        }
        // Still waiting for the same request; a correct answer goes through.
        assert_eq!(exchange.poll_request(), None);
        assert!(!exchange.is_done());
        exchange
            .handle_hashes(1, vec![(0, left), (1, right)])
            .unwrap();
        assert_eq!(exchange.poll_request(), Some((2, vec![0, 1, 2, 3])));
    }

    #[test]
    fn hashes_out_of_turn_are_errors() {
        let remote = tree(40, 2);
        let mut exchange = Exchange::new(&tree(40, 1));
        let root = remote.hashes_at(0, &[0]).unwrap();
        // Before the request was handed out.
        assert_eq!(
            exchange.handle_hashes(0, root.clone()),
            Err(MerkleError::UnexpectedHashes)
        );
        // After the result is known.
        let mut done = Exchange::new(&remote);
        let _ = done.poll_request();
        done.handle_hashes(0, root.clone()).unwrap();
        assert_eq!(
            done.handle_hashes(0, root.clone()),
            Err(MerkleError::UnexpectedHashes)
        );
        let _ = done.poll_result();
        assert_eq!(
            done.handle_hashes(0, root),
            Err(MerkleError::UnexpectedHashes)
        );
    }

    proptest! {
        #[test]
        fn garbage_answers_never_panic(
            answers in prop::collection::vec(
                (0u8..6, prop::collection::vec((0usize..20, any::<[u8; 16]>()), 0..12)),
                0..8,
            ),
        ) {
            let mut exchange = Exchange::new(&tree(40, 1));
            for (level, hashes) in answers {
                let _ = exchange.poll_request();
                let _ = exchange.handle_hashes(level, hashes);
                if let Some(differing) = exchange.poll_result() {
                    // Whatever the peer claims, results name real buckets, in order.
                    prop_assert!(differing.windows(2).all(|w| w[0] < w[1]));
                    prop_assert!(differing.iter().all(|&b| b < 8));
                }
            }
        }
    }
}
