//! How the ring is cut into virtual nodes: the partitioning strategies of Dynamo §6.2.

use serde::{Deserialize, Serialize};

use super::RingError;
use super::limits::{DEFAULT_PARTITIONS, MAX_PARTITIONS, MAX_TOKENS_PER_WEIGHT};

/// How the ring is divided among physical nodes (Dynamo §6.2).
///
/// Both strategies give a node virtual nodes in proportion to its integer weight.
/// [`PartitionStrategy::random_tokens`] and [`PartitionStrategy::equal_partitions`]
/// check the bounds; deserialization checks them too. A variant built directly is checked
/// again by [`Ring::build`](super::Ring::build), so no ring holds an invalid strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "UncheckedStrategy")]
pub enum PartitionStrategy {
    /// Strategy 1: `tokens_per_weight * weight` pseudo-random tokens per node; a node owns
    /// the range ending at each of its tokens.
    ///
    /// Token `i` of node `X` is `Token::of("X#i")` (MD5 of the id, `#`, and `i` in
    /// decimal), so every node derives the same ring from the member set alone, and a
    /// weight change adds or drops only the node's highest-numbered tokens.
    RandomTokens {
        /// Tokens per unit of weight, `1..=`[`MAX_TOKENS_PER_WEIGHT`].
        tokens_per_weight: u32,
    },
    /// Strategy 3: `q` fixed, equal-sized partitions, each owned by one node; a node owns
    /// a number of partitions proportional to its weight, and membership changes move
    /// as few partitions as the new quotas allow.
    EqualPartitions {
        /// Number of partitions, `1..=`[`MAX_PARTITIONS`], at least the number of nodes.
        q: u32,
    },
}

impl PartitionStrategy {
    /// Strategy 1 with `tokens_per_weight` tokens per unit of weight.
    ///
    /// # Errors
    /// [`RingError::TokensPerWeight`] outside `1..=`[`MAX_TOKENS_PER_WEIGHT`].
    pub fn random_tokens(tokens_per_weight: u32) -> Result<Self, RingError> {
        let strategy = Self::RandomTokens { tokens_per_weight };
        strategy.validate()?;
        Ok(strategy)
    }

    /// Strategy 3 with `q` equal partitions.
    ///
    /// # Errors
    /// [`RingError::PartitionCount`] outside `1..=`[`MAX_PARTITIONS`].
    pub fn equal_partitions(q: u32) -> Result<Self, RingError> {
        let strategy = Self::EqualPartitions { q };
        strategy.validate()?;
        Ok(strategy)
    }

    /// Checks the bounds of the strategy's parameter.
    ///
    /// # Errors
    /// [`RingError::TokensPerWeight`] or [`RingError::PartitionCount`] when out of bounds.
    pub fn validate(&self) -> Result<(), RingError> {
        match *self {
            Self::RandomTokens { tokens_per_weight }
                if !(1..=MAX_TOKENS_PER_WEIGHT).contains(&tokens_per_weight) =>
            {
                Err(RingError::TokensPerWeight(tokens_per_weight))
            }
            Self::EqualPartitions { q } if !(1..=MAX_PARTITIONS).contains(&q) => {
                Err(RingError::PartitionCount(q))
            }
            _ => Ok(()),
        }
    }
}

impl Default for PartitionStrategy {
    /// Strategy 3 with [`DEFAULT_PARTITIONS`] partitions: the paper found it has the best
    /// load balance and the smallest membership metadata (Dynamo §6.2).
    fn default() -> Self {
        Self::EqualPartitions {
            q: DEFAULT_PARTITIONS,
        }
    }
}

/// The wire shape of [`PartitionStrategy`], before its bounds are checked.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum UncheckedStrategy {
    RandomTokens { tokens_per_weight: u32 },
    EqualPartitions { q: u32 },
}

impl TryFrom<UncheckedStrategy> for PartitionStrategy {
    type Error = RingError;

    fn try_from(value: UncheckedStrategy) -> Result<Self, Self::Error> {
        match value {
            UncheckedStrategy::RandomTokens { tokens_per_weight } => {
                Self::random_tokens(tokens_per_weight)
            }
            UncheckedStrategy::EqualPartitions { q } => Self::equal_partitions(q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_by_constructors() {
        assert!(PartitionStrategy::random_tokens(1).is_ok());
        assert!(PartitionStrategy::random_tokens(MAX_TOKENS_PER_WEIGHT).is_ok());
        assert_eq!(
            PartitionStrategy::random_tokens(0),
            Err(RingError::TokensPerWeight(0))
        );
        assert_eq!(
            PartitionStrategy::random_tokens(MAX_TOKENS_PER_WEIGHT + 1),
            Err(RingError::TokensPerWeight(MAX_TOKENS_PER_WEIGHT + 1))
        );
        assert!(PartitionStrategy::equal_partitions(1).is_ok());
        assert!(PartitionStrategy::equal_partitions(MAX_PARTITIONS).is_ok());
        assert_eq!(
            PartitionStrategy::equal_partitions(0),
            Err(RingError::PartitionCount(0))
        );
        assert_eq!(
            PartitionStrategy::equal_partitions(MAX_PARTITIONS + 1),
            Err(RingError::PartitionCount(MAX_PARTITIONS + 1))
        );
        assert!(PartitionStrategy::default().validate().is_ok());
    }

    #[test]
    fn deserialization_checks_bounds() {
        let good = PartitionStrategy::EqualPartitions { q: 8 };
        let bytes = postcard::to_allocvec(&good).unwrap();
        assert_eq!(
            postcard::from_bytes::<PartitionStrategy>(&bytes).unwrap(),
            good
        );
        let bad = postcard::to_allocvec(&PartitionStrategy::RandomTokens {
            tokens_per_weight: 0,
        })
        .unwrap();
        assert!(postcard::from_bytes::<PartitionStrategy>(&bad).is_err());
        assert!(postcard::from_bytes::<PartitionStrategy>(&[7, 1]).is_err());
    }
}
