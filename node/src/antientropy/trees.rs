//! The node's Merkle trees, one per replicated range, kept current by every data
//! change the store reports ([`StoreObserver`]).
//!
//! A tree is built from one local scan when its range first appears (startup, a ring
//! change); until then writes to its range are ignored, since the scan will see them.
//! While the scan runs, a write to a key the scan has already passed updates the tree,
//! and a write to a key ahead of it is left for the scan to read. The store reports a
//! change while holding the key's lock, and the build reads each key under the same
//! lock, so every key is counted exactly once. A tree being built takes no part in
//! exchanges.
//!
//! A build may pause between any two keys (its share of the background budget ran
//! out) and resume later from the last key it read: the same rule keeps counting the
//! writes behind the scan meanwhile and leaves those ahead of it to the scan.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::plan::{TreeSpec, ring_position};
use crate::NodeId;
use crate::merkle::{Exchange, Hash, MerkleError, MerkleTree};
use crate::ring::{Token, TokenRange};
use crate::store::StoreObserver;

/// Where a tree's build stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BuildState {
    /// Not started: writes are ignored, the scan will read them.
    Pending,
    /// The scan has read every key up to `passed` (a ring position, see
    /// [`ring_position`]): writes to those keys update the tree, later ones wait for
    /// the scan.
    Building { passed: Option<(u128, Vec<u8>)> },
    /// Complete: every write updates the tree.
    Ready,
}

struct Slot {
    spec: TreeSpec,
    tree: MerkleTree,
    state: BuildState,
    /// Distinguishes this slot from an earlier one of the same range, so a build that
    /// raced with a ring change never writes into the new slot.
    generation: u64,
}

/// Why a tree lookup for a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeLookupError {
    /// No tree of that range (the nodes' rings differ, or we do not replicate it).
    #[error("no Merkle tree for range {0:?} here (the rings may differ)")]
    NoTree(TokenRange),
    /// A tree of that range with another depth.
    #[error("the Merkle tree for range {range:?} has depth {ours}, not {asked}")]
    OtherDepth {
        /// The range.
        range: TokenRange,
        /// Our tree's depth.
        ours: u8,
        /// The depth asked for.
        asked: u8,
    },
    /// The tree is still being built.
    #[error("the Merkle tree for range {0:?} is being built")]
    Building(TokenRange),
    /// The tree refused the coordinates.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

/// Counts of trees by build state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeCounts {
    /// Trees complete and exchanging.
    pub ready: u64,
    /// Trees waiting for or in their build scan.
    pub building: u64,
}

/// The node's trees by range, behind one lock.
///
/// A std `Mutex`: it is never held across an `.await`, and every critical section is
/// one tree update or lookup (taking an exchange snapshot copies one tree's hashes).
#[derive(Default)]
pub struct TreeSet {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// Non-overlapping ranges, keyed by end token: the range holding a token has the
    /// first end at or after it, wrapping to the first entry.
    by_end: BTreeMap<u128, Slot>,
    next_generation: u64,
    /// Tree updates that failed (a remove from an empty bucket): the tree has drifted
    /// and is rebuilt.
    drifted: Vec<TokenRange>,
}

impl std::fmt::Debug for TreeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeSet")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl Slots {
    fn slot_of(&mut self, token: Token) -> Option<&mut Slot> {
        let end = match self.by_end.range(token.0..).next() {
            Some((&end, _)) => end,
            None => *self.by_end.keys().next()?,
        };
        self.by_end
            .get_mut(&end)
            .filter(|slot| slot.spec.range.contains(token))
    }

    fn slot(&mut self, range: TokenRange) -> Option<&mut Slot> {
        self.by_end
            .get_mut(&range.end.0)
            .filter(|slot| slot.spec.range == range)
    }
}

impl TreeSet {
    /// No trees.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Every update leaves the slots consistent before it can panic.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the set match `specs`: keeps trees whose range and depth are unchanged
    /// (updating their replica sets), drops the others, adds empty pending trees for
    /// new ranges, and re-queues drifted trees. Returns the ranges that need a build, in
    /// order.
    pub fn reconcile(&self, specs: &[TreeSpec]) -> Vec<TokenRange> {
        let mut slots = self.lock();
        let drifted = std::mem::take(&mut slots.drifted);
        let mut old = std::mem::take(&mut slots.by_end);
        for spec in specs {
            let kept = old
                .remove(&spec.range.end.0)
                .filter(|slot| slot.spec.range == spec.range && slot.spec.depth == spec.depth)
                .filter(|slot| !drifted.contains(&slot.spec.range));
            let slot = match kept {
                Some(mut slot) => {
                    slot.spec = spec.clone();
                    slot
                }
                None => {
                    let Ok(tree) = MerkleTree::new(spec.range, spec.depth) else {
                        // depth_for never exceeds MAX_DEPTH; a spec that did would get
                        // no tree rather than a panic.
                        continue;
                    };
                    slots.next_generation += 1;
                    Slot {
                        spec: spec.clone(),
                        tree,
                        state: BuildState::Pending,
                        generation: slots.next_generation,
                    }
                }
            };
            slots.by_end.insert(spec.range.end.0, slot);
        }
        slots
            .by_end
            .values()
            .filter(|slot| slot.state != BuildState::Ready)
            .map(|slot| slot.spec.range)
            .collect()
    }

    /// Starts the build of `range`'s tree from empty; returns its generation, or `None`
    /// if the set has no such tree.
    pub(crate) fn start_build(&self, range: TokenRange) -> Option<u64> {
        let mut slots = self.lock();
        let slot = slots.slot(range)?;
        slot.tree = MerkleTree::new(slot.spec.range, slot.spec.depth).ok()?;
        slot.state = BuildState::Building { passed: None };
        Some(slot.generation)
    }

    /// Where the build of `range`'s tree goes on from: a pending tree starts from empty
    /// (as [`start_build`](Self::start_build)), a tree whose build paused (its budget ran
    /// out) resumes after the last key its scan read, keeping what it hashed so far and
    /// every change made since behind the scan. Returns the generation and the key to
    /// scan after; `None` if there is no such tree or it is ready.
    pub(crate) fn resume_build(&self, range: TokenRange) -> Option<(u64, Option<Vec<u8>>)> {
        let mut slots = self.lock();
        let slot = slots.slot(range)?;
        match &slot.state {
            BuildState::Ready => None,
            BuildState::Building { passed } => {
                Some((slot.generation, passed.as_ref().map(|(_, key)| key.clone())))
            }
            BuildState::Pending => {
                drop(slots);
                self.start_build(range).map(|generation| (generation, None))
            }
        }
    }

    /// The build scan read `key` with state digest `digest` (`None`: absent). Call with
    /// the key's store lock held. Returns `false` if the build was superseded.
    pub(crate) fn build_visit(
        &self,
        range: TokenRange,
        generation: u64,
        key: &[u8],
        digest: Option<Hash>,
    ) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots.slot(range).filter(|s| s.generation == generation) else {
            return false;
        };
        if let Some(digest) = digest {
            if slot.tree.insert(key, digest).is_err() {
                return false;
            }
        }
        let (position, key) = ring_position(range, key);
        slot.state = BuildState::Building {
            passed: Some((position, key.to_vec())),
        };
        true
    }

    /// Marks the build of `range` complete; `false` if it was superseded.
    pub(crate) fn finish_build(&self, range: TokenRange, generation: u64) -> bool {
        let mut slots = self.lock();
        match slots.slot(range).filter(|s| s.generation == generation) {
            Some(slot) => {
                slot.state = BuildState::Ready;
                true
            }
            None => false,
        }
    }

    /// The specs of the trees ready to exchange.
    pub fn ready_specs(&self) -> Vec<TreeSpec> {
        self.lock()
            .by_end
            .values()
            .filter(|slot| slot.state == BuildState::Ready)
            .map(|slot| slot.spec.clone())
            .collect()
    }

    /// The spec of the tree holding `key`'s token, if we keep one.
    pub fn spec_of(&self, key: &[u8]) -> Option<TreeSpec> {
        self.lock()
            .slot_of(Token::of(key))
            .map(|slot| slot.spec.clone())
    }

    /// A snapshot exchange of the ready tree of `range`, and its generation.
    pub(crate) fn exchange(&self, range: TokenRange) -> Option<(Exchange, u64)> {
        let mut slots = self.lock();
        let slot = slots
            .slot(range)
            .filter(|slot| slot.state == BuildState::Ready)?;
        Some((Exchange::new(&slot.tree), slot.generation))
    }

    /// The key ranges of `buckets` of `range`'s tree, if it is still the generation
    /// the exchange ran on.
    pub(crate) fn bucket_ranges(
        &self,
        range: TokenRange,
        generation: u64,
        buckets: &[usize],
    ) -> Option<Vec<TokenRange>> {
        let mut slots = self.lock();
        let slot = slots.slot(range).filter(|s| s.generation == generation)?;
        Some(
            buckets
                .iter()
                .filter_map(|&bucket| slot.tree.bucket_range(bucket))
                .collect(),
        )
    }

    /// Answers a peer's exchange request: hashes of `indices` at `level` of the ready
    /// tree of shape `(range, depth)`, in request order.
    ///
    /// # Errors
    /// [`TreeLookupError`] when there is no such ready tree or the coordinates are out
    /// of the tree.
    pub fn hashes(
        &self,
        range: TokenRange,
        depth: u8,
        level: u8,
        indices: &[usize],
    ) -> Result<Vec<Hash>, TreeLookupError> {
        let mut slots = self.lock();
        let slot = slots.slot(range).ok_or(TreeLookupError::NoTree(range))?;
        if slot.spec.depth != depth {
            return Err(TreeLookupError::OtherDepth {
                range,
                ours: slot.spec.depth,
                asked: depth,
            });
        }
        if slot.state != BuildState::Ready {
            return Err(TreeLookupError::Building(range));
        }
        Ok(slot
            .tree
            .hashes_at(level, indices)?
            .into_iter()
            .map(|(_, hash)| hash)
            .collect())
    }

    /// The root hash of the tree of `range` when it is ready (for tests and tools).
    pub fn root(&self, range: TokenRange) -> Option<Hash> {
        let mut slots = self.lock();
        let slot = slots.slot(range).filter(|s| s.state == BuildState::Ready)?;
        Some(slot.tree.root())
    }

    /// How many trees are ready and how many are being built.
    pub fn counts(&self) -> TreeCounts {
        let slots = self.lock();
        let ready = slots
            .by_end
            .values()
            .filter(|slot| slot.state == BuildState::Ready)
            .count() as u64;
        TreeCounts {
            ready,
            building: slots.by_end.len() as u64 - ready,
        }
    }

    /// The replicas of the range holding `key`, if we keep a tree for it.
    pub fn replicas_of(&self, key: &[u8]) -> Option<Vec<NodeId>> {
        self.spec_of(key).map(|spec| spec.replicas)
    }
}

impl StoreObserver for TreeSet {
    fn changed(&self, key: &[u8], old: Option<Hash>, new: Option<Hash>) {
        if old == new {
            return;
        }
        let mut slots = self.lock();
        let Some(slot) = slots.slot_of(Token::of(key)) else {
            return;
        };
        let counted = match &slot.state {
            BuildState::Pending => false,
            BuildState::Building { passed } => passed.as_ref().is_some_and(|(position, last)| {
                ring_position(slot.spec.range, key) <= (*position, last.as_slice())
            }),
            BuildState::Ready => true,
        };
        if !counted {
            return;
        }
        let result = match (old, new) {
            (None, Some(new)) => slot.tree.insert(key, new),
            (Some(old), None) => slot.tree.remove(key, old),
            (Some(old), Some(new)) => slot.tree.update(key, old, new),
            (None, None) => Ok(()),
        };
        if let Err(error) = result {
            // Only a change the tree never saw can cause this; rebuild rather than
            // exchange a tree known to be wrong.
            tracing::warn!(%error, range = ?slot.spec.range, "Merkle tree drifted; rebuilding it");
            let range = slot.spec.range;
            slot.state = BuildState::Pending;
            slots.drifted.push(range);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MerkleTree;
    use crate::ring::Token;

    fn spec(range: TokenRange, depth: u8) -> TreeSpec {
        TreeSpec {
            range,
            depth,
            replicas: vec![NodeId::new("a").unwrap()],
        }
    }

    fn digest(n: u8) -> Hash {
        [n; 16]
    }

    /// The tree a complete scan of `entries` would build.
    fn expected(range: TokenRange, depth: u8, entries: &[(&[u8], Hash)]) -> Hash {
        MerkleTree::from_entries(range, depth, entries.iter().map(|(k, d)| (k.to_vec(), *d)))
            .unwrap()
            .root()
    }

    #[test]
    fn writes_during_a_build_are_counted_once_whichever_side_of_the_scan_they_fall() {
        let range = TokenRange::full();
        let set = TreeSet::new();
        assert_eq!(set.reconcile(&[spec(range, 4)]), vec![range]);
        // Order three keys as the scan would meet them.
        let mut keys: Vec<&[u8]> = vec![b"k1", b"k2", b"k3"];
        keys.sort_by_key(|k| ring_position(range, k));
        let (first, second, third) = (keys[0], keys[1], keys[2]);

        // Before the build starts, writes are left to the scan.
        set.changed(first, None, Some(digest(1)));
        let generation = set.start_build(range).unwrap();
        assert!(set.build_visit(range, generation, first, Some(digest(1))));
        // A write behind the scan counts; one ahead of it waits for the scan.
        set.changed(first, Some(digest(1)), Some(digest(2)));
        set.changed(third, None, Some(digest(3)));
        assert!(set.build_visit(range, generation, second, None));
        assert!(set.build_visit(range, generation, third, Some(digest(3))));
        assert_eq!(set.root(range), None, "not ready while building");
        assert!(matches!(
            set.hashes(range, 4, 0, &[0]),
            Err(TreeLookupError::Building(_))
        ));
        assert!(set.finish_build(range, generation));
        assert_eq!(
            set.root(range).unwrap(),
            expected(range, 4, &[(first, digest(2)), (third, digest(3))])
        );
        // Ready: every change counts.
        set.changed(second, None, Some(digest(4)));
        set.changed(third, Some(digest(3)), None);
        assert_eq!(
            set.root(range).unwrap(),
            expected(range, 4, &[(first, digest(2)), (second, digest(4))])
        );
        assert_eq!(
            set.counts(),
            TreeCounts {
                ready: 1,
                building: 0
            }
        );
    }

    #[test]
    fn a_paused_build_resumes_after_the_last_key_it_read_keeping_its_progress() {
        let range = TokenRange::full();
        let set = TreeSet::new();
        set.reconcile(&[spec(range, 4)]);
        let mut keys: Vec<&[u8]> = vec![b"k1", b"k2", b"k3"];
        keys.sort_by_key(|k| ring_position(range, k));
        let (first, second, third) = (keys[0], keys[1], keys[2]);

        // A pending tree starts from the beginning of its range.
        let (generation, after) = set.resume_build(range).unwrap();
        assert_eq!(after, None);
        assert!(set.build_visit(range, generation, first, Some(digest(1))));
        // Paused here: resuming gives the same build and the key to scan after.
        assert_eq!(
            set.resume_build(range),
            Some((generation, Some(first.to_vec())))
        );
        // While paused, a write behind the cursor counts, one ahead waits for the scan.
        set.changed(first, Some(digest(1)), Some(digest(5)));
        set.changed(third, None, Some(digest(3)));
        assert!(set.build_visit(range, generation, second, None));
        assert!(set.build_visit(range, generation, third, Some(digest(3))));
        assert!(set.finish_build(range, generation));
        assert_eq!(
            set.root(range).unwrap(),
            expected(range, 4, &[(first, digest(5)), (third, digest(3))])
        );
        // A ready tree has nothing to resume.
        assert_eq!(set.resume_build(range), None);
        // A ring change that replaces the tree voids the paused build's generation.
        let other = TokenRange::new(Token(0), Token(1 << 127));
        set.reconcile(&[spec(other, 3)]);
        let (fresh, after) = set.resume_build(other).unwrap();
        assert_eq!(after, None);
        assert_ne!(fresh, generation);
        assert!(!set.build_visit(range, generation, first, Some(digest(1))));
    }

    #[test]
    fn reconcile_keeps_unchanged_trees_and_drops_or_adds_the_rest() {
        let left = TokenRange::new(Token(0), Token(1 << 127));
        let right = TokenRange::new(Token(1 << 127), Token(0));
        let set = TreeSet::new();
        assert_eq!(set.reconcile(&[spec(left, 3)]), vec![left]);
        let generation = set.start_build(left).unwrap();
        assert!(set.finish_build(left, generation));
        set.changed(b"k", None, Some(digest(1)));
        // An unchanged range keeps its tree; a new one starts pending.
        assert_eq!(set.reconcile(&[spec(left, 3), spec(right, 3)]), vec![right]);
        assert_eq!(
            set.counts(),
            TreeCounts {
                ready: 1,
                building: 1
            }
        );
        // A dropped range's build is superseded.
        let stale = set.start_build(right).unwrap();
        assert_eq!(set.reconcile(&[spec(left, 3)]), Vec::<TokenRange>::new());
        assert!(!set.finish_build(right, stale));
        assert!(matches!(
            set.hashes(right, 3, 0, &[0]),
            Err(TreeLookupError::NoTree(_))
        ));
        assert!(matches!(
            set.hashes(left, 5, 0, &[0]),
            Err(TreeLookupError::OtherDepth {
                ours: 3,
                asked: 5,
                ..
            })
        ));
        assert!(matches!(
            set.hashes(left, 3, 4, &[0]),
            Err(TreeLookupError::Merkle(MerkleError::NoSuchLevel { .. }))
        ));
    }

    #[test]
    fn a_tree_that_drifts_is_rebuilt() {
        let range = TokenRange::full();
        let set = TreeSet::new();
        set.reconcile(&[spec(range, 2)]);
        let generation = set.start_build(range).unwrap();
        assert!(set.finish_build(range, generation));
        // A remove the tree never saw an insert for.
        set.changed(b"ghost", Some(digest(1)), None);
        assert_eq!(
            set.counts(),
            TreeCounts {
                ready: 0,
                building: 1
            }
        );
        assert_eq!(set.reconcile(&[spec(range, 2)]), vec![range]);
    }
}
