//! Merkle trees for anti-entropy (Dynamo §4.7).
//!
//! No I/O: a [`MerkleTree`] is a value updated by the caller as writes land in storage,
//! and an [`Exchange`] is a state machine the shell drives with hashes fetched from a
//! peer.
//!
//! Dynamo §4.7: "each node maintains a separate Merkle tree for each key range ... two
//! nodes exchange the root of the Merkle tree corresponding to the key ranges that they
//! host in common", then descend only into the subtrees whose hashes differ, so
//! replicas that agree cost one hash and replicas that differ in a few keys cost a few
//! paths.
//!
//! # Shape
//!
//! A tree covers the `(key, version digest)` pairs of one [`TokenRange`]. Its shape is
//! fixed by `(range, depth)` and independent of the data, so two replicas' trees of
//! the same shape compare node by node:
//!
//! * There are `2^depth` leaf buckets. A key belongs to the bucket of its token
//!   ([`Token::of`]`(key)`).
//! * A token's offset in the range is `token - range.start - 1` (wrapping), in
//!   `[0, range.width_minus_one()]`; the first token after `start` has offset 0.
//! * Every bucket is `ceil(width / 2^depth)` tokens wide and bucket `i` holds the
//!   offsets `[i * bucket_width, (i + 1) * bucket_width)`, clipped to the range. So the
//!   last non-empty bucket may be narrower, and when the range has fewer than `2^depth`
//!   tokens the buckets past its end are empty ([`MerkleTree::bucket_range`] is `None`
//!   for them) and always hash as empty.
//!
//! # Hashes
//!
//! * An entry hashes to `MD5(key_len as u64 big-endian || key || digest)`; the length
//!   prefix keeps `(key, digest)` boundaries unambiguous.
//! * A leaf hash is the wrapping sum, as big-endian `u128`s, of its entries' hashes
//!   (all zeroes when empty). A sum is order-independent, updatable in O(1) on insert,
//!   remove and update, and unlike XOR it does not cancel an entry present twice.
//!   Each leaf also keeps its entry count.
//! * An inner node hashes to `MD5(left || right)`. Inner nodes are recomputed lazily:
//!   an update marks the path from its leaf to the root dirty, and the next read
//!   recomputes only dirty nodes, so a burst of `k` updates costs `O(k)` plus one
//!   recomputation per dirty node instead of a rebuild.
//!
//! Levels are numbered from the root (level 0, one node) to the leaves (level
//! `depth`, `2^depth` nodes); node `index` of level `l` covers buckets
//! `[index << (depth - l), (index + 1) << (depth - l))`.

mod exchange;

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use md5::{Digest, Md5};

use crate::ring::{Token, TokenRange};

pub use exchange::Exchange;

/// A 128-bit hash: an MD5 digest, a leaf sum, or a version digest.
pub type Hash = [u8; 16];

/// The deepest tree allowed: `2^20` leaf buckets, about 40 MiB per tree.
pub const MAX_DEPTH: u8 = 20;

/// Why a Merkle tree operation or exchange step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    /// The requested depth is above [`MAX_DEPTH`].
    #[error("depth {0} exceeds the maximum of {MAX_DEPTH}")]
    DepthTooLarge(u8),
    /// The key's token is not in the tree's range.
    #[error("key token {0} is outside the tree's range")]
    KeyOutOfRange(Token),
    /// A remove or update found the key's bucket empty, so the entry was never inserted.
    #[error("bucket {0} has no entry to remove")]
    RemoveFromEmptyBucket(usize),
    /// Two trees (or a tree and an exchange) have a different range or depth.
    #[error("trees have different shapes")]
    ShapeMismatch,
    /// A level below the leaves was asked for.
    #[error("no level {level} in a tree of depth {depth}")]
    NoSuchLevel {
        /// The level asked for.
        level: u8,
        /// The tree's depth (its deepest level).
        depth: u8,
    },
    /// A node index past the end of its level was asked for.
    #[error("no node {index} at level {level}")]
    NoSuchNode {
        /// The level asked for.
        level: u8,
        /// The index asked for.
        index: usize,
    },
    /// More indices were asked for or answered than the level or request holds.
    #[error("{got} hashes where at most {limit} fit")]
    TooManyHashes {
        /// How many arrived.
        got: usize,
        /// How many the request allows.
        limit: usize,
    },
    /// Hashes arrived while no request was outstanding.
    #[error("hashes arrived without an outstanding request")]
    UnexpectedHashes,
    /// Hashes arrived for another level than the one requested.
    #[error("hashes for level {got}, expected level {expected}")]
    WrongLevel {
        /// The level of the outstanding request.
        expected: u8,
        /// The level of the answer.
        got: u8,
    },
    /// An answered index was not in the request.
    #[error("index {0} was not requested")]
    UnrequestedIndex(usize),
    /// An index was answered twice.
    #[error("index {0} answered twice")]
    DuplicateIndex(usize),
    /// Some requested indices were not answered.
    #[error("{0} requested hashes missing from the answer")]
    MissingHashes(usize),
}

/// A Merkle tree over the `(key, version digest)` entries of one key range.
///
/// See the [module docs](self) for the shape and hash rules. Updates take `&mut self`
/// and only mark dirty paths; reads take `&self` and first bring the inner hashes up
/// to date, under an internal lock held for the duration of one call. The tree is
/// `Send + Sync`.
///
/// The tree stores hashes, not entries: [`remove`](Self::remove) and
/// [`update`](Self::update) trust the caller to pass the digest it inserted (read from
/// storage). An unknown digest can only be detected when the bucket is empty.
pub struct MerkleTree {
    range: TokenRange,
    depth: u8,
    /// Bucket width minus one, so the one-bucket tree of the full ring (width `2^128`)
    /// fits in a `u128`.
    bucket_width_minus_one: u128,
    /// Per bucket: wrapping sum of entry hashes, the leaf hash as a `u128`.
    leaf_sums: Vec<u128>,
    /// Per bucket: number of entries.
    leaf_counts: Vec<u64>,
    /// Sum of `leaf_counts`.
    len: u64,
    /// The lazily recomputed inner nodes. A lock rather than a `RefCell` so reads can
    /// refresh them through `&self` while the tree stays `Sync`; updates reach them
    /// through `&mut self` without locking.
    inner: Mutex<InnerNodes>,
}

/// Inner node hashes in heap order: node `(level, index)` is at `(1 << level) + index`
/// for `level < depth`; slot 0 is unused.
#[derive(Clone)]
struct InnerNodes {
    hashes: Vec<Hash>,
    /// Invariant: a dirty node's ancestors are all dirty.
    dirty: Vec<bool>,
}

impl MerkleTree {
    /// An empty tree of shape `(range, depth)`.
    ///
    /// # Errors
    ///
    /// [`MerkleError::DepthTooLarge`] if `depth > MAX_DEPTH`.
    pub fn new(range: TokenRange, depth: u8) -> Result<Self, MerkleError> {
        if depth > MAX_DEPTH {
            return Err(MerkleError::DepthTooLarge(depth));
        }
        let buckets = 1usize << depth;
        Ok(MerkleTree {
            range,
            depth,
            bucket_width_minus_one: range.width_minus_one() >> depth,
            leaf_sums: vec![0; buckets],
            leaf_counts: vec![0; buckets],
            len: 0,
            // All inner nodes start dirty: the first read hashes them once.
            inner: Mutex::new(InnerNodes {
                hashes: vec![[0; 16]; buckets],
                dirty: vec![true; buckets],
            }),
        })
    }

    /// A tree of shape `(range, depth)` holding `entries`. Inner nodes are hashed once,
    /// on the first read.
    ///
    /// # Errors
    ///
    /// [`MerkleError::DepthTooLarge`] if `depth > MAX_DEPTH`;
    /// [`MerkleError::KeyOutOfRange`] if a key's token is not in `range`.
    pub fn from_entries<K, I>(range: TokenRange, depth: u8, entries: I) -> Result<Self, MerkleError>
    where
        K: AsRef<[u8]>,
        I: IntoIterator<Item = (K, Hash)>,
    {
        let mut tree = Self::new(range, depth)?;
        for (key, digest) in entries {
            let bucket = tree.bucket_of_key(key.as_ref())?;
            tree.leaf_sums[bucket] =
                tree.leaf_sums[bucket].wrapping_add(entry_hash(key.as_ref(), &digest));
            tree.leaf_counts[bucket] += 1;
            tree.len += 1;
        }
        Ok(tree)
    }

    /// The key range the tree covers.
    pub fn range(&self) -> TokenRange {
        self.range
    }

    /// The depth: the leaves are level `depth`.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The number of leaf buckets, `2^depth`.
    pub fn bucket_count(&self) -> usize {
        self.leaf_sums.len()
    }

    /// The number of entries in the tree.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the tree holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `other` has the same range and depth, so the two compare bucket by bucket.
    pub fn same_shape(&self, other: &MerkleTree) -> bool {
        self.range == other.range && self.depth == other.depth
    }

    /// Adds the entry `(key, digest)`.
    ///
    /// # Errors
    ///
    /// [`MerkleError::KeyOutOfRange`] if the key's token is not in the tree's range.
    pub fn insert(&mut self, key: &[u8], digest: Hash) -> Result<(), MerkleError> {
        let bucket = self.bucket_of_key(key)?;
        self.leaf_sums[bucket] = self.leaf_sums[bucket].wrapping_add(entry_hash(key, &digest));
        self.leaf_counts[bucket] += 1;
        self.len += 1;
        self.mark_dirty(bucket);
        Ok(())
    }

    /// Removes the entry `(key, digest)`, which must have been inserted.
    ///
    /// # Errors
    ///
    /// [`MerkleError::KeyOutOfRange`] if the key's token is not in the tree's range;
    /// [`MerkleError::RemoveFromEmptyBucket`] if its bucket holds no entry.
    pub fn remove(&mut self, key: &[u8], digest: Hash) -> Result<(), MerkleError> {
        let bucket = self.bucket_of_key(key)?;
        if self.leaf_counts[bucket] == 0 {
            return Err(MerkleError::RemoveFromEmptyBucket(bucket));
        }
        self.leaf_sums[bucket] = self.leaf_sums[bucket].wrapping_sub(entry_hash(key, &digest));
        self.leaf_counts[bucket] -= 1;
        self.len -= 1;
        self.mark_dirty(bucket);
        Ok(())
    }

    /// Replaces the entry `(key, old_digest)`, which must have been inserted, by
    /// `(key, new_digest)`: a new version of a stored key.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove).
    pub fn update(
        &mut self,
        key: &[u8],
        old_digest: Hash,
        new_digest: Hash,
    ) -> Result<(), MerkleError> {
        let bucket = self.bucket_of_key(key)?;
        if self.leaf_counts[bucket] == 0 {
            return Err(MerkleError::RemoveFromEmptyBucket(bucket));
        }
        if old_digest != new_digest {
            self.leaf_sums[bucket] = self.leaf_sums[bucket]
                .wrapping_sub(entry_hash(key, &old_digest))
                .wrapping_add(entry_hash(key, &new_digest));
            self.mark_dirty(bucket);
        }
        Ok(())
    }

    /// The root hash: equal on two replicas of the same shape iff (barring hash
    /// collisions) they hold the same entries.
    pub fn root(&self) -> Hash {
        let inner = self.refreshed();
        self.node_hash(&inner, 1)
    }

    /// The hash of node `index` at `level`.
    ///
    /// # Errors
    ///
    /// [`MerkleError::NoSuchLevel`] if `level > depth`; [`MerkleError::NoSuchNode`] if
    /// `index >= 2^level`.
    pub fn hash_at(&self, level: u8, index: usize) -> Result<Hash, MerkleError> {
        let node = self.heap_index(level, index)?;
        let inner = self.refreshed();
        Ok(self.node_hash(&inner, node))
    }

    /// All `2^level` hashes of `level`, left to right.
    ///
    /// # Errors
    ///
    /// [`MerkleError::NoSuchLevel`] if `level > depth`.
    pub fn level(&self, level: u8) -> Result<Vec<Hash>, MerkleError> {
        let first = self.heap_index(level, 0)?;
        let inner = self.refreshed();
        Ok((first..2 * first)
            .map(|node| self.node_hash(&inner, node))
            .collect())
    }

    /// The hashes of `indices` at `level`, paired with their index: the answer to an
    /// [`Exchange`] request from a peer. Hostile input is an error, never a panic.
    ///
    /// # Errors
    ///
    /// [`MerkleError::NoSuchLevel`], [`MerkleError::NoSuchNode`], or
    /// [`MerkleError::TooManyHashes`] if more indices are asked for than the level has.
    pub fn hashes_at(
        &self,
        level: u8,
        indices: &[usize],
    ) -> Result<Vec<(usize, Hash)>, MerkleError> {
        let first = self.heap_index(level, 0)?;
        if indices.len() > first {
            return Err(MerkleError::TooManyHashes {
                got: indices.len(),
                limit: first,
            });
        }
        let nodes = indices
            .iter()
            .map(|&index| self.heap_index(level, index))
            .collect::<Result<Vec<_>, _>>()?;
        let inner = self.refreshed();
        Ok(indices
            .iter()
            .zip(nodes)
            .map(|(&index, node)| (index, self.node_hash(&inner, node)))
            .collect())
    }

    /// The number of entries in bucket `bucket`, or `None` past the last bucket.
    pub fn leaf_count(&self, bucket: usize) -> Option<u64> {
        self.leaf_counts.get(bucket).copied()
    }

    /// The bucket holding `token`, or `None` if the token is outside the tree's range.
    pub fn bucket_of(&self, token: Token) -> Option<usize> {
        self.range.contains(token).then(|| {
            self.bucket_of_offset(token.0.wrapping_sub(self.range.start.0).wrapping_sub(1))
        })
    }

    /// The tokens of bucket `bucket`, or `None` past the last bucket or when the bucket
    /// is empty because the range has fewer than `2^depth` tokens.
    ///
    /// The non-empty buckets tile the tree's range in order, without gaps or overlap.
    pub fn bucket_range(&self, bucket: usize) -> Option<TokenRange> {
        if bucket >= self.bucket_count() {
            return None;
        }
        let width_minus_one = self.range.width_minus_one();
        let (first, last) = match self.bucket_width_minus_one.checked_add(1) {
            // Only the one-bucket tree of the full ring has a bucket 2^128 wide.
            None => (0, width_minus_one),
            Some(width) => {
                // bucket < 2^depth and width <= 2^(128 - depth): no overflow.
                let first = bucket as u128 * width;
                if first > width_minus_one {
                    return None;
                }
                (
                    first,
                    (first + self.bucket_width_minus_one).min(width_minus_one),
                )
            }
        };
        // Offset o is token start + 1 + o, so (start + first, start + last + 1].
        let start = self.range.start.0;
        Some(TokenRange::new(
            Token(start.wrapping_add(first)),
            Token(start.wrapping_add(last).wrapping_add(1)),
        ))
    }

    /// The leaf buckets whose hashes differ between `self` and `other`, in increasing
    /// order, found top-down: only subtrees whose roots differ are visited.
    ///
    /// # Errors
    ///
    /// [`MerkleError::ShapeMismatch`] if the trees differ in range or depth.
    pub fn diff(&self, other: &MerkleTree) -> Result<Vec<usize>, MerkleError> {
        if !self.same_shape(other) {
            return Err(MerkleError::ShapeMismatch);
        }
        if std::ptr::eq(self, other) {
            // Locking the same tree twice would deadlock; a tree equals itself.
            return Ok(Vec::new());
        }
        let mine = self.refreshed();
        let theirs = other.refreshed();
        let mut differing = vec![0usize];
        for level in 0..=self.depth {
            let first = 1usize << level;
            differing.retain(|&index| {
                self.node_hash(&mine, first + index) != other.node_hash(&theirs, first + index)
            });
            if level < self.depth {
                differing = differing
                    .into_iter()
                    .flat_map(|index| [2 * index, 2 * index + 1])
                    .collect();
            }
        }
        Ok(differing)
    }

    /// Every node hash in heap order (slot 0 unused, node `(level, index)` at
    /// `(1 << level) + index`): the snapshot an [`Exchange`] compares against.
    pub(crate) fn all_hashes(&self) -> Vec<Hash> {
        let inner = self.refreshed();
        (0..2 * self.bucket_count())
            .map(|node| {
                if node == 0 {
                    [0; 16]
                } else {
                    self.node_hash(&inner, node)
                }
            })
            .collect()
    }

    fn bucket_of_key(&self, key: &[u8]) -> Result<usize, MerkleError> {
        let token = Token::of(key);
        self.bucket_of(token)
            .ok_or(MerkleError::KeyOutOfRange(token))
    }

    fn bucket_of_offset(&self, offset: u128) -> usize {
        match self.bucket_width_minus_one.checked_add(1) {
            // The quotient is below 2^depth <= 2^MAX_DEPTH, so it fits in a usize.
            Some(width) => (offset / width) as usize,
            None => 0,
        }
    }

    /// The heap slot of node `(level, index)`, validated.
    fn heap_index(&self, level: u8, index: usize) -> Result<usize, MerkleError> {
        if level > self.depth {
            return Err(MerkleError::NoSuchLevel {
                level,
                depth: self.depth,
            });
        }
        let first = 1usize << level;
        if index >= first {
            return Err(MerkleError::NoSuchNode { level, index });
        }
        Ok(first + index)
    }

    /// The hash of heap slot `node`: a leaf sum or a cached inner hash.
    fn node_hash(&self, inner: &InnerNodes, node: usize) -> Hash {
        let buckets = self.bucket_count();
        if node >= buckets {
            self.leaf_sums[node - buckets].to_be_bytes()
        } else {
            inner.hashes[node]
        }
    }

    /// Marks the path from `bucket`'s parent to the root dirty, stopping at the first
    /// node already dirty (whose ancestors are dirty by the invariant).
    fn mark_dirty(&mut self, bucket: usize) {
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut node = (self.leaf_sums.len() + bucket) / 2;
        while node >= 1 && !inner.dirty[node] {
            inner.dirty[node] = true;
            node /= 2;
        }
    }

    /// The inner nodes, with every dirty node recomputed.
    fn refreshed(&self) -> MutexGuard<'_, InnerNodes> {
        // A panic while refreshing leaves the unfinished nodes dirty, so a poisoned
        // cache is still consistent.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if self.depth > 0 {
            self.refresh(&mut inner, 1);
        }
        inner
    }

    fn refresh(&self, inner: &mut InnerNodes, node: usize) {
        if !inner.dirty[node] {
            return;
        }
        let buckets = self.bucket_count();
        let (left, right) = (2 * node, 2 * node + 1);
        if left < buckets {
            self.refresh(inner, left);
            self.refresh(inner, right);
        }
        inner.hashes[node] =
            parent_hash(&self.node_hash(inner, left), &self.node_hash(inner, right));
        inner.dirty[node] = false;
    }
}

impl Clone for MerkleTree {
    fn clone(&self) -> Self {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        MerkleTree {
            range: self.range,
            depth: self.depth,
            bucket_width_minus_one: self.bucket_width_minus_one,
            leaf_sums: self.leaf_sums.clone(),
            leaf_counts: self.leaf_counts.clone(),
            len: self.len,
            inner: Mutex::new(inner),
        }
    }
}

impl fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleTree")
            .field("range", &self.range)
            .field("depth", &self.depth)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The hash of one entry, as the `u128` a leaf sums.
fn entry_hash(key: &[u8], digest: &Hash) -> u128 {
    let mut md5 = Md5::new();
    md5.update((key.len() as u64).to_be_bytes());
    md5.update(key);
    md5.update(digest);
    u128::from_be_bytes(md5.finalize().into())
}

/// The hash of an inner node from its children's.
fn parent_hash(left: &Hash, right: &Hash) -> Hash {
    let mut md5 = Md5::new();
    md5.update(left);
    md5.update(right);
    md5.finalize().into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn key(n: u32) -> Vec<u8> {
        format!("key-{n}").into_bytes()
    }

    fn digest(n: u8) -> Hash {
        [n; 16]
    }

    fn md5(parts: &[&[u8]]) -> Hash {
        let mut md5 = Md5::new();
        for part in parts {
            md5.update(part);
        }
        md5.finalize().into()
    }

    fn all_levels(tree: &MerkleTree) -> Vec<Vec<Hash>> {
        (0..=tree.depth()).map(|l| tree.level(l).unwrap()).collect()
    }

    /// Drives an [`Exchange`] of `local` against `remote` to its end, the peer
    /// answering with [`MerkleTree::hashes_at`].
    fn exchange(local: &MerkleTree, remote: &MerkleTree) -> Vec<usize> {
        let mut exchange = Exchange::new(local);
        let mut round_trips = 0;
        loop {
            if let Some(differing) = exchange.poll_result() {
                // One level per round trip, and never more than the tree is deep.
                assert!(round_trips <= usize::from(local.depth()) + 1);
                return differing;
            }
            let (level, indices) = exchange.poll_request().expect("a pending exchange asks");
            let answer = remote.hashes_at(level, &indices).unwrap();
            exchange.handle_hashes(level, answer).unwrap();
            round_trips += 1;
        }
    }

    /// A range of width at least 2^127 (so most keys fall in it) or the full ring.
    fn wide_range() -> impl Strategy<Value = TokenRange> {
        prop_oneof![
            Just(TokenRange::full()),
            (any::<u128>(), 0..=u128::MAX >> 1).prop_map(|(start, extra)| TokenRange::new(
                Token(start),
                Token(start.wrapping_add(1 << 127).wrapping_add(extra)),
            )),
        ]
    }

    /// Any range, weighted towards the full ring and ranges wrapping through zero.
    fn any_range() -> impl Strategy<Value = TokenRange> {
        prop_oneof![
            Just(TokenRange::full()),
            (any::<u128>(), any::<u128>()).prop_map(|(a, b)| TokenRange::new(Token(a), Token(b))),
            (1u128..1 << 20, 1u128..1 << 20).prop_map(|(before, after)| TokenRange::new(
                Token(0u128.wrapping_sub(before)),
                Token(after),
            )),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u8),
        Remove(usize),
        Update(usize, u8),
        /// Read the root between updates, so later updates find some paths clean.
        Read,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..400, any::<u8>()).prop_map(|(k, d)| Op::Insert(k, d)),
            any::<usize>().prop_map(Op::Remove),
            (any::<usize>(), any::<u8>()).prop_map(|(i, d)| Op::Update(i, d)),
            Just(Op::Read),
        ]
    }

    fn base() -> impl Strategy<Value = BTreeMap<u32, u8>> {
        prop::collection::btree_map(0u32..400, any::<u8>(), 0..60)
    }

    /// Applies `ops` to both `tree` and the model `entries` (key -> digest), checking
    /// that out-of-range keys are refused and leave the tree alone.
    fn apply(tree: &mut MerkleTree, entries: &mut BTreeMap<u32, u8>, ops: &[Op]) {
        for op in ops {
            match *op {
                Op::Insert(k, d) if !entries.contains_key(&k) => {
                    if tree.range().contains(Token::of(&key(k))) {
                        tree.insert(&key(k), digest(d)).unwrap();
                        entries.insert(k, d);
                    } else {
                        let root = tree.root();
                        assert_eq!(
                            tree.insert(&key(k), digest(d)),
                            Err(MerkleError::KeyOutOfRange(Token::of(&key(k))))
                        );
                        assert_eq!(tree.root(), root);
                    }
                }
                Op::Insert(..) | Op::Read => {
                    tree.root();
                }
                Op::Remove(i) if !entries.is_empty() => {
                    let k = *entries.keys().nth(i % entries.len()).unwrap();
                    let d = entries.remove(&k).unwrap();
                    tree.remove(&key(k), digest(d)).unwrap();
                }
                Op::Update(i, new) if !entries.is_empty() => {
                    let k = *entries.keys().nth(i % entries.len()).unwrap();
                    let old = entries.insert(k, new).unwrap();
                    tree.update(&key(k), digest(old), digest(new)).unwrap();
                }
                Op::Remove(_) | Op::Update(..) => {}
            }
        }
    }

    fn in_range(range: TokenRange, entries: &BTreeMap<u32, u8>) -> BTreeMap<u32, u8> {
        entries
            .iter()
            .filter(|&(&k, _)| range.contains(Token::of(&key(k))))
            .map(|(&k, &d)| (k, d))
            .collect()
    }

    fn build(range: TokenRange, depth: u8, entries: &BTreeMap<u32, u8>) -> MerkleTree {
        MerkleTree::from_entries(
            range,
            depth,
            entries.iter().map(|(&k, &d)| (key(k), digest(d))),
        )
        .unwrap()
    }

    /// Checks that the non-empty buckets tile `tree`'s range in order and that the
    /// empty ones (tiny ranges) come last; returns the number of non-empty buckets.
    fn check_tiling(tree: &MerkleTree) -> usize {
        let range = tree.range();
        let mut next_start = range.start;
        let mut covered_minus_one: Option<u128> = None;
        let mut non_empty = 0;
        for bucket in 0..tree.bucket_count() {
            let Some(part) = tree.bucket_range(bucket) else {
                // Only past the end of a range narrower than 2^depth.
                assert!(range.width_minus_one() < tree.bucket_count() as u128 - 1);
                assert!(covered_minus_one == Some(range.width_minus_one()));
                continue;
            };
            non_empty += 1;
            assert_eq!(
                part.start, next_start,
                "gap or overlap before bucket {bucket}"
            );
            // The bucket's first and last tokens map back to it.
            assert_eq!(
                tree.bucket_of(Token(part.start.0.wrapping_add(1))),
                Some(bucket)
            );
            assert_eq!(tree.bucket_of(part.end), Some(bucket));
            covered_minus_one = Some(match covered_minus_one {
                None => part.width_minus_one(),
                Some(covered) => covered + part.width_minus_one() + 1,
            });
            next_start = part.end;
        }
        assert_eq!(next_start, range.end, "buckets end where the range ends");
        assert_eq!(covered_minus_one, Some(range.width_minus_one()));
        non_empty
    }

    #[test]
    fn depth_is_bounded() {
        assert!(MerkleTree::new(TokenRange::full(), MAX_DEPTH).is_ok());
        assert_eq!(
            MerkleTree::new(TokenRange::full(), MAX_DEPTH + 1).unwrap_err(),
            MerkleError::DepthTooLarge(MAX_DEPTH + 1)
        );
        assert_eq!(
            MerkleTree::from_entries(TokenRange::full(), u8::MAX, [(b"k", digest(1))]).unwrap_err(),
            MerkleError::DepthTooLarge(u8::MAX)
        );
    }

    #[test]
    fn empty_trees_hash_zero_leaves() {
        let zero = [0u8; 16];
        assert_eq!(MerkleTree::new(TokenRange::full(), 0).unwrap().root(), zero);
        let level1 = md5(&[&zero, &zero]);
        assert_eq!(
            MerkleTree::new(TokenRange::full(), 1).unwrap().root(),
            level1
        );
        assert_eq!(
            MerkleTree::new(TokenRange::full(), 2).unwrap().root(),
            md5(&[&level1, &level1])
        );
    }

    #[test]
    fn entry_hash_is_md5_of_length_prefixed_key_and_digest() {
        let mut tree = MerkleTree::new(TokenRange::full(), 0).unwrap();
        tree.insert(b"k", digest(7)).unwrap();
        // A one-entry leaf sums to the entry hash itself.
        assert_eq!(
            tree.root(),
            md5(&[&[0, 0, 0, 0, 0, 0, 0, 1], b"k", &digest(7)])
        );
        // The length prefix separates ("ab", d) from ("a", "b" || d[..15]).
        let mut shifted = MerkleTree::new(TokenRange::full(), 0).unwrap();
        let mut other_digest = [7u8; 16];
        other_digest[0] = b'b';
        shifted.insert(b"a", other_digest).unwrap();
        let mut plain = MerkleTree::new(TokenRange::full(), 0).unwrap();
        plain.insert(b"ab", [7; 16]).unwrap();
        assert_ne!(shifted.root(), plain.root());
    }

    #[test]
    fn inner_nodes_hash_their_children() {
        let entries: BTreeMap<u32, u8> = (0..50).map(|k| (k, k as u8)).collect();
        let tree = build(TokenRange::full(), 4, &entries);
        let levels = all_levels(&tree);
        assert_eq!(levels[0], vec![tree.root()]);
        for level in 0..4 {
            for (index, hash) in levels[level].iter().enumerate() {
                let (left, right) = (
                    &levels[level + 1][2 * index],
                    &levels[level + 1][2 * index + 1],
                );
                assert_eq!(*hash, md5(&[left, right]));
                assert_eq!(tree.hash_at(level as u8, index).unwrap(), *hash);
            }
        }
        let counts: u64 = (0..16).map(|b| tree.leaf_count(b).unwrap()).sum();
        assert_eq!(counts, 50);
        assert_eq!(tree.len(), 50);
        assert_eq!(tree.leaf_count(16), None);
    }

    #[test]
    fn keys_outside_the_range_are_refused() {
        // (t, t + 1] holds one token, t + 1, so the key whose token is t is outside.
        let outside = Token::of(b"outside");
        let range = TokenRange::new(outside, Token(outside.0.wrapping_add(1)));
        let mut tree = MerkleTree::new(range, 3).unwrap();
        let refused = Err(MerkleError::KeyOutOfRange(outside));
        assert_eq!(tree.insert(b"outside", digest(1)), refused);
        assert_eq!(tree.remove(b"outside", digest(1)), refused);
        assert_eq!(tree.update(b"outside", digest(1), digest(2)), refused);
        assert_eq!(
            MerkleTree::from_entries(range, 3, [(b"outside", digest(1))]).unwrap_err(),
            MerkleError::KeyOutOfRange(outside)
        );
        assert!(tree.is_empty());
        assert_eq!(tree.root(), MerkleTree::new(range, 3).unwrap().root());
    }

    #[test]
    fn removing_from_an_empty_bucket_is_refused() {
        let mut tree = MerkleTree::new(TokenRange::full(), 2).unwrap();
        let bucket = tree.bucket_of(Token::of(b"k")).unwrap();
        assert_eq!(
            tree.remove(b"k", digest(1)),
            Err(MerkleError::RemoveFromEmptyBucket(bucket))
        );
        assert_eq!(
            tree.update(b"k", digest(1), digest(2)),
            Err(MerkleError::RemoveFromEmptyBucket(bucket))
        );
        assert_eq!(tree.leaf_count(bucket), Some(0));
    }

    #[test]
    fn an_entry_held_twice_does_not_cancel_out() {
        // XOR leaves would hash {x, x} like {}; sums do not.
        let empty = MerkleTree::new(TokenRange::full(), 2).unwrap();
        let mut twice = empty.clone();
        twice.insert(b"k", digest(1)).unwrap();
        twice.insert(b"k", digest(1)).unwrap();
        assert_ne!(twice.root(), empty.root());
        assert_eq!(
            twice.diff(&empty).unwrap(),
            vec![empty.bucket_of(Token::of(b"k")).unwrap()]
        );
        assert_eq!(
            twice.leaf_count(empty.bucket_of(Token::of(b"k")).unwrap()),
            Some(2)
        );
    }

    #[test]
    fn update_changes_the_hash_but_not_the_count() {
        let mut tree = MerkleTree::new(TokenRange::full(), 3).unwrap();
        tree.insert(b"k", digest(1)).unwrap();
        let before = tree.root();
        tree.update(b"k", digest(1), digest(1)).unwrap();
        assert_eq!(tree.root(), before);
        tree.update(b"k", digest(1), digest(2)).unwrap();
        assert_ne!(tree.root(), before);
        assert_eq!(tree.len(), 1);
        let mut direct = MerkleTree::new(TokenRange::full(), 3).unwrap();
        direct.insert(b"k", digest(2)).unwrap();
        assert_eq!(tree.root(), direct.root());
    }

    #[test]
    fn trees_of_another_shape_do_not_compare() {
        let tree = MerkleTree::new(TokenRange::full(), 3).unwrap();
        let deeper = MerkleTree::new(TokenRange::full(), 4).unwrap();
        let shifted = MerkleTree::new(TokenRange::new(Token(1), Token(1)), 3).unwrap();
        assert_eq!(tree.diff(&deeper), Err(MerkleError::ShapeMismatch));
        assert_eq!(tree.diff(&shifted), Err(MerkleError::ShapeMismatch));
        assert_eq!(tree.diff(&tree), Ok(vec![]));
    }

    #[test]
    fn one_changed_key_is_found_in_its_bucket() {
        // Dynamo §4.7: replicas that differ in one key differ in one leaf, and the
        // top-down walk finds it.
        let entries: BTreeMap<u32, u8> = (0..200).map(|k| (k, 1)).collect();
        let ours = build(TokenRange::full(), 6, &entries);
        let mut theirs = ours.clone();
        assert_eq!(ours.root(), theirs.root());
        assert_eq!(ours.diff(&theirs).unwrap(), Vec::<usize>::new());
        theirs.update(&key(42), digest(1), digest(2)).unwrap();
        let bucket = ours.bucket_of(Token::of(&key(42))).unwrap();
        assert_eq!(ours.diff(&theirs).unwrap(), vec![bucket]);
        assert_eq!(exchange(&ours, &theirs), vec![bucket]);
        assert_eq!(exchange(&theirs, &ours), vec![bucket]);
    }

    #[test]
    fn node_lookups_reject_bad_coordinates() {
        let tree = MerkleTree::new(TokenRange::full(), 3).unwrap();
        assert_eq!(
            tree.hash_at(4, 0),
            Err(MerkleError::NoSuchLevel { level: 4, depth: 3 })
        );
        assert_eq!(
            tree.hash_at(2, 4),
            Err(MerkleError::NoSuchNode { level: 2, index: 4 })
        );
        assert_eq!(
            tree.level(u8::MAX),
            Err(MerkleError::NoSuchLevel {
                level: u8::MAX,
                depth: 3
            })
        );
        assert_eq!(
            tree.hashes_at(1, &[0, usize::MAX]),
            Err(MerkleError::NoSuchNode {
                level: 1,
                index: usize::MAX
            })
        );
        assert_eq!(
            tree.hashes_at(1, &[0, 1, 0]),
            Err(MerkleError::TooManyHashes { got: 3, limit: 2 })
        );
        assert_eq!(tree.hashes_at(3, &[]), Ok(vec![]));
        assert_eq!(tree.level(3).unwrap().len(), 8);
    }

    #[test]
    fn full_ring_splits_in_halves() {
        let whole = MerkleTree::new(TokenRange::full(), 0).unwrap();
        assert_eq!(whole.bucket_range(0), Some(TokenRange::full()));
        assert_eq!(whole.bucket_of(Token(u128::MAX)), Some(0));
        let halves = MerkleTree::new(TokenRange::full(), 1).unwrap();
        assert_eq!(
            halves.bucket_range(0),
            Some(TokenRange::new(Token(0), Token(1 << 127)))
        );
        assert_eq!(
            halves.bucket_range(1),
            Some(TokenRange::new(Token(1 << 127), Token(0)))
        );
        assert_eq!(halves.bucket_of(Token(1 << 127)), Some(0));
        assert_eq!(halves.bucket_of(Token((1 << 127) + 1)), Some(1));
        assert_eq!(halves.bucket_of(Token(0)), Some(1));
        assert_eq!(halves.bucket_range(2), None);
    }

    #[test]
    fn a_range_narrower_than_the_buckets_leaves_the_last_ones_empty() {
        // (10, 13] has three tokens for four buckets: one token each, then nothing.
        let tree = MerkleTree::new(TokenRange::new(Token(10), Token(13)), 2).unwrap();
        for (bucket, token) in [(0, 11), (1, 12), (2, 13)] {
            assert_eq!(tree.bucket_of(Token(token)), Some(bucket));
            assert_eq!(
                tree.bucket_range(bucket),
                Some(TokenRange::new(Token(token - 1), Token(token)))
            );
        }
        assert_eq!(tree.bucket_range(3), None);
        assert_eq!(tree.bucket_of(Token(10)), None);
        assert_eq!(tree.bucket_of(Token(14)), None);
        assert_eq!(check_tiling(&tree), 3);
    }

    #[test]
    fn buckets_tile_the_deepest_trees() {
        for range in [
            TokenRange::full(),
            TokenRange::new(Token(u128::MAX - 1000), Token(1 << 100)),
            TokenRange::new(Token(5), Token(5 + 1000)),
        ] {
            let tree = MerkleTree::new(range, MAX_DEPTH).unwrap();
            let expected = (range.width_minus_one().min(1 << MAX_DEPTH) + 1).min(1 << MAX_DEPTH);
            assert_eq!(check_tiling(&tree) as u128, expected);
        }
    }

    #[test]
    fn trees_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<MerkleTree>();
        shareable::<Exchange>();
    }

    proptest! {
        #[test]
        fn buckets_tile_any_range(range in any_range(), depth in 0u8..=8) {
            let tree = MerkleTree::new(range, depth).unwrap();
            check_tiling(&tree);
        }

        #[test]
        fn every_token_lands_in_the_bucket_that_contains_it(
            range in any_range(),
            depth in 0..=MAX_DEPTH,
            pick: u128,
        ) {
            let tree = MerkleTree::new(range, depth).unwrap();
            let offset = match range.width_minus_one().checked_add(1) {
                Some(width) => pick % width,
                None => pick,
            };
            let token = Token(range.start.0.wrapping_add(offset).wrapping_add(1));
            let bucket = tree.bucket_of(token).unwrap();
            prop_assert!(tree.bucket_range(bucket).unwrap().contains(token));
            if !range.is_full() {
                prop_assert_eq!(tree.bucket_of(range.start), None);
                prop_assert_eq!(tree.bucket_of(Token(range.end.0.wrapping_add(1))), None);
            }
        }

        #[test]
        fn tiny_ranges_give_one_token_per_bucket(
            start: u128,
            depth in 0u8..=10,
            width_pick: u128,
        ) {
            let width = width_pick % (1u128 << depth) + 1;
            let range = TokenRange::new(Token(start), Token(start.wrapping_add(width)));
            let tree = MerkleTree::new(range, depth).unwrap();
            for bucket in 0..tree.bucket_count() {
                let expected = (bucket as u128) < width;
                prop_assert_eq!(tree.bucket_range(bucket).is_some(), expected);
            }
            prop_assert_eq!(check_tiling(&tree) as u128, width);
        }

        #[test]
        fn diff_and_exchange_find_exactly_the_differing_buckets(
            range in wide_range(),
            depth in 0u8..=5,
            base in base(),
            ours_ops in prop::collection::vec(op(), 0..20),
            theirs_ops in prop::collection::vec(op(), 0..20),
        ) {
            // Dynamo §4.7: replicas "determine if they have any differences" and
            // which ranges to synchronise, here bucket by bucket.
            let base = in_range(range, &base);
            let mut ours = build(range, depth, &base);
            let mut theirs = ours.clone();
            let (mut our_entries, mut their_entries) = (base.clone(), base);
            apply(&mut ours, &mut our_entries, &ours_ops);
            apply(&mut theirs, &mut their_entries, &theirs_ops);

            let by_bucket = |entries: &BTreeMap<u32, u8>| {
                let mut buckets: BTreeMap<usize, BTreeMap<u32, u8>> = BTreeMap::new();
                for (&k, &d) in entries {
                    let bucket = ours.bucket_of(Token::of(&key(k))).unwrap();
                    buckets.entry(bucket).or_default().insert(k, d);
                }
                buckets
            };
            let (our_buckets, their_buckets) = (by_bucket(&our_entries), by_bucket(&their_entries));
            let expected: Vec<usize> = (0..ours.bucket_count())
                .filter(|b| our_buckets.get(b) != their_buckets.get(b))
                .collect();

            prop_assert_eq!(&ours.diff(&theirs).unwrap(), &expected);
            prop_assert_eq!(&theirs.diff(&ours).unwrap(), &expected);
            prop_assert_eq!(&exchange(&ours, &theirs), &expected);
            prop_assert_eq!(&exchange(&theirs, &ours), &expected);
            prop_assert_eq!(ours.root() == theirs.root(), expected.is_empty());
        }

        #[test]
        fn incremental_updates_equal_a_bulk_build(
            range in wide_range(),
            depth in 0u8..=6,
            base in base(),
            ops in prop::collection::vec(op(), 0..40),
        ) {
            let mut entries = in_range(range, &base);
            let mut tree = build(range, depth, &entries);
            apply(&mut tree, &mut entries, &ops);
            let rebuilt = build(range, depth, &entries);
            prop_assert_eq!(all_levels(&tree), all_levels(&rebuilt));
            prop_assert_eq!(tree.len(), rebuilt.len());
            for bucket in 0..tree.bucket_count() {
                prop_assert_eq!(tree.leaf_count(bucket), rebuilt.leaf_count(bucket));
            }
        }

        #[test]
        fn insert_then_remove_restores_the_root(
            range in wide_range(),
            depth in 0u8..=6,
            base in base(),
            added in prop::collection::btree_map(400u32..500, any::<u8>(), 1..10),
        ) {
            let base = in_range(range, &base);
            let added = in_range(range, &added);
            let mut tree = build(range, depth, &base);
            let original = all_levels(&tree);
            for (&k, &d) in &added {
                tree.insert(&key(k), digest(d)).unwrap();
            }
            prop_assert_eq!(tree.len(), (base.len() + added.len()) as u64);
            for (&k, &d) in added.iter().rev() {
                tree.remove(&key(k), digest(d)).unwrap();
            }
            prop_assert_eq!(all_levels(&tree), original);
        }

        #[test]
        fn insertion_order_does_not_matter(
            entries in prop::collection::vec((0u32..400, any::<u8>()), 0..40)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
            depth in 0u8..=6,
        ) {
            let (in_order, shuffled) = entries;
            let mut forward = MerkleTree::new(TokenRange::full(), depth).unwrap();
            let mut other = forward.clone();
            for (k, d) in &in_order {
                forward.insert(&key(*k), digest(*d)).unwrap();
            }
            for (k, d) in &shuffled {
                other.insert(&key(*k), digest(*d)).unwrap();
                other.root();
            }
            prop_assert_eq!(all_levels(&forward), all_levels(&other));
        }
    }
}
