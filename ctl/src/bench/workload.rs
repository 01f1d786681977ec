//! What a benchmark client does next: the operation mix of a YCSB core workload and the
//! key it touches. Pure and deterministic: every draw takes the caller's seeded rng, so a
//! run is reproducible from `--seed`.
//!
//! The key choosers follow YCSB's core generators (Cooper et al., "Benchmarking Cloud
//! Serving Systems with YCSB", SoCC 2010): uniform, scrambled zipfian (a zipfian rank,
//! hashed so the popular keys spread over the key space and so over the ring) and
//! latest (zipfian counted back from the most recently inserted key).

use clap::ValueEnum;
use rand::Rng;
use serde::Serialize;

/// YCSB's zipfian constant: item of rank `i` is picked with probability ∝ 1/i^0.99.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// The item count YCSB's scrambled zipfian draws ranks from before hashing them into the
/// key space, and its precomputed zeta(10^10, 0.99), so a draw never depends on the
/// record count's zeta (which would cost one `powf` per record to compute).
const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// One client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A get.
    Read,
    /// A put with the latest context this client has seen for the key.
    Update,
    /// A put of a new key (the load phase).
    Insert,
    /// A get, then a put with the context it returned (Dynamo §4.1's read-modify-write).
    Rmw,
}

impl Operation {
    /// Every operation, in report order.
    pub const ALL: [Self; 4] = [Self::Read, Self::Update, Self::Insert, Self::Rmw];

    /// The lowercase name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Update => "update",
            Self::Insert => "insert",
            Self::Rmw => "rmw",
        }
    }
}

/// A YCSB core workload: the proportions of operations in the run phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Update heavy: 50% reads, 50% updates.
    A,
    /// Read mostly: 95% reads, 5% updates.
    B,
    /// Read only.
    C,
    /// Read-modify-write: 50% reads, 50% get-then-put with the get's context.
    F,
    /// Write only: 100% updates. Not a YCSB core workload: the overwrite-heavy phase of
    /// `bench/growth.py`, which measures the disk a store takes per live byte after its
    /// records were rewritten.
    W,
}

impl Workload {
    /// The fraction of operations that are plain reads.
    pub fn read_proportion(self) -> f64 {
        match self {
            Self::A | Self::F => 0.5,
            Self::B => 0.95,
            Self::C => 1.0,
            Self::W => 0.0,
        }
    }

    /// Draws the next operation.
    pub fn next_operation(self, rng: &mut impl Rng) -> Operation {
        if rng.random::<f64>() < self.read_proportion() {
            Operation::Read
        } else if self == Self::F {
            Operation::Rmw
        } else {
            Operation::Update
        }
    }
}

/// How run-phase keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every record equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (constant 0.99): a few hot keys spread over the ring.
    Zipfian,
    /// Zipfian over recency: the most recently inserted records are the hottest.
    Latest,
}

/// YCSB's `ZipfianGenerator` over ranks `0..items` (Gray et al., "Quickly generating
/// billion-record synthetic databases", SIGMOD 1994): rank 0 is the most popular.
#[derive(Debug, Clone, PartialEq)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `items` ranks with YCSB's constant, computing zeta(items) (one
    /// `powf` per item, done once).
    ///
    /// # Panics
    ///
    /// If `items` is zero: there is nothing to pick.
    pub fn new(items: u64) -> Self {
        Self::with_zetan(items, zeta(items, ZIPFIAN_CONSTANT))
    }

    fn with_zetan(items: u64, zetan: f64) -> Self {
        assert!(items > 0, "a zipfian distribution needs at least one item");
        let theta = ZIPFIAN_CONSTANT;
        let zeta2theta = zeta(2, theta);
        #[allow(clippy::cast_precision_loss)] // item counts far below 2^52 in practice
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2theta / zetan);
        Self {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    /// The next rank, in `0..items`.
    pub fn next_rank(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5_f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )] // the product is in [0, items], floored as YCSB does
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        // Rounding can land on `items` itself.
        rank.min(self.items - 1)
    }
}

/// zeta(n, θ) = Σ_{i=1..n} 1/i^θ.
fn zeta(n: u64, theta: f64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// YCSB's `fnvhash64`: FNV-1a over the 8 little-endian bytes, absolute value.
fn fnv_hash64(value: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 1_099_511_628_211;
    let hash = value
        .to_le_bytes()
        .iter()
        .fold(OFFSET_BASIS, |hash, &octet| {
            (hash ^ u64::from(octet)).wrapping_mul(PRIME)
        });
    #[allow(clippy::cast_possible_wrap)] // Java's signed long, as YCSB computes it
    (hash as i64).unsigned_abs()
}

/// Picks record indexes in `0..records` by a [`Distribution`].
#[derive(Debug, Clone, PartialEq)]
pub struct KeyChooser {
    records: u64,
    kind: Chooser,
}

#[derive(Debug, Clone, PartialEq)]
enum Chooser {
    Uniform,
    /// Ranks of a 10^10-item zipfian, hashed into the records.
    Scrambled(Zipfian),
    /// Ranks counted back from the last record.
    Latest(Zipfian),
}

impl KeyChooser {
    /// A chooser over `records` records.
    ///
    /// # Panics
    ///
    /// If `records` is zero.
    pub fn new(distribution: Distribution, records: u64) -> Self {
        assert!(records > 0, "a key chooser needs at least one record");
        let kind = match distribution {
            Distribution::Uniform => Chooser::Uniform,
            Distribution::Zipfian => {
                Chooser::Scrambled(Zipfian::with_zetan(SCRAMBLED_ITEM_COUNT, SCRAMBLED_ZETAN))
            }
            Distribution::Latest => Chooser::Latest(Zipfian::new(records)),
        };
        Self { records, kind }
    }

    /// The next record index, in `0..records`.
    pub fn next_index(&self, rng: &mut impl Rng) -> u64 {
        match &self.kind {
            Chooser::Uniform => rng.random_range(0..self.records),
            Chooser::Scrambled(zipfian) => fnv_hash64(zipfian.next_rank(rng)) % self.records,
            Chooser::Latest(zipfian) => self.records - 1 - zipfian.next_rank(rng),
        }
    }
}

/// The key of record `index`: `user` and the index zero-padded to ten digits, YCSB-style.
/// The padding is fixed so a `--skip-load` run with another `--records` finds the same
/// keys.
pub fn record_key(index: u64) -> String {
    format!("user{index:010}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The share of `draws` picks that land on the `top` most picked records.
    fn top_share(chooser: &KeyChooser, records: u64, top: usize, draws: usize) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut counts = vec![0_u64; usize::try_from(records).unwrap()];
        for _ in 0..draws {
            counts[usize::try_from(chooser.next_index(&mut rng)).unwrap()] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let hot: u64 = counts[..top].iter().sum();
        hot as f64 / draws as f64
    }

    #[test]
    fn zipfian_picks_are_skewed_to_a_few_keys() {
        // YCSB's skew: the most popular 1% of 10,000 records gets far more than 1%.
        let chooser = KeyChooser::new(Distribution::Zipfian, 10_000);
        let share = top_share(&chooser, 10_000, 100, 100_000);
        assert!(share > 0.10, "top 1% got {share}");
    }

    #[test]
    fn latest_picks_are_skewed_to_the_last_records() {
        let chooser = KeyChooser::new(Distribution::Latest, 10_000);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let draws = 100_000;
        let recent = (0..draws)
            .filter(|_| chooser.next_index(&mut rng) >= 9_900)
            .count();
        assert!(recent > draws / 10, "last 1% got {recent} of {draws}");
    }

    #[test]
    fn uniform_picks_are_not_skewed() {
        let chooser = KeyChooser::new(Distribution::Uniform, 10_000);
        let share = top_share(&chooser, 10_000, 100, 100_000);
        // Expected 1%; the top 100 of 10,000 Poisson(10) counts sum to about 2%.
        assert!(share < 0.03, "top 1% got {share}");
    }

    #[test]
    fn zipfian_rank_zero_is_the_most_popular() {
        let zipfian = Zipfian::new(1_000);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut counts = [0_u32; 1_000];
        for _ in 0..50_000 {
            counts[usize::try_from(zipfian.next_rank(&mut rng)).unwrap()] += 1;
        }
        // P(rank 0) = 1/zeta(1000, 0.99) ≈ 0.13; rank 1 about half that.
        assert!(
            counts[0] > counts[1] && counts[1] > counts[10],
            "{:?}",
            &counts[..11]
        );
        let p0 = f64::from(counts[0]) / 50_000.0;
        assert!((0.11..0.15).contains(&p0), "p(rank 0) = {p0}");
    }

    #[test]
    fn scrambled_zetan_is_the_zeta_of_its_item_count_prefix() {
        // The precomputed constant must exceed zeta of any smaller count (a cheap check
        // that the digits were not mistyped): zeta(10^6) ≈ 14.39.
        let small = zeta(1_000_000, ZIPFIAN_CONSTANT);
        assert!(small > 14.0 && small < SCRAMBLED_ZETAN, "{small}");
    }

    #[test]
    fn fnv_hash_matches_ycsb() {
        // FNV-1a of eight zero bytes, from the published FNV test vectors' algorithm.
        let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
        for _ in 0..8 {
            hash = hash.wrapping_mul(1_099_511_628_211);
        }
        assert_eq!(fnv_hash64(0), (hash as i64).unsigned_abs());
        assert_ne!(fnv_hash64(1), fnv_hash64(2));
    }

    #[test]
    fn workload_mixes_match_their_proportions() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (workload, reads, other) in [
            (Workload::A, 0.5, Operation::Update),
            (Workload::B, 0.95, Operation::Update),
            (Workload::C, 1.0, Operation::Update),
            (Workload::F, 0.5, Operation::Rmw),
            (Workload::W, 0.0, Operation::Update),
        ] {
            let draws = 10_000;
            let mut read_count = 0;
            for _ in 0..draws {
                match workload.next_operation(&mut rng) {
                    Operation::Read => read_count += 1,
                    op => assert_eq!(op, other, "{workload:?}"),
                }
            }
            let share = f64::from(read_count) / f64::from(draws);
            assert!((share - reads).abs() < 0.02, "{workload:?}: {share} reads");
        }
    }

    #[test]
    fn keys_are_zero_padded_and_ordered() {
        assert_eq!(record_key(0), "user0000000000");
        assert_eq!(record_key(42), "user0000000042");
        assert!(record_key(9) < record_key(10));
    }

    #[test]
    fn the_same_seed_gives_the_same_picks() {
        let chooser = KeyChooser::new(Distribution::Zipfian, 500);
        let picks = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..100)
                .map(|_| chooser.next_index(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(9), picks(9));
        assert_ne!(picks(9), picks(10));
    }

    proptest! {
        #[test]
        fn every_chooser_stays_in_range(records in 1_u64..5_000, seed: u64, which in 0_usize..3) {
            let distribution = [Distribution::Uniform, Distribution::Zipfian, Distribution::Latest][which];
            let chooser = KeyChooser::new(distribution, records);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..200 {
                prop_assert!(chooser.next_index(&mut rng) < records);
            }
        }
    }
}
