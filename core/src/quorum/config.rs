//! The replication parameters N, R and W (Dynamo §4.5), checked once.

/// The largest replication factor accepted. Dynamo runs with N = 3; the bound keeps a
/// hostile or mistyped request from making a coordinator fan out to the whole cluster.
pub const MAX_REPLICAS: u32 = 16;

/// Replication factor and quorum sizes: every value of this type is valid.
///
/// Dynamo §4.5: "R is the minimum number of nodes that must participate in a successful
/// read operation. W is the minimum number of nodes that must participate in a
/// successful write operation." Invariants: `1 <= n <= MAX_REPLICAS`, `1 <= r <= n`,
/// `1 <= w <= n`. `R + W > N` is not required: the paper's own low-latency
/// configurations (such as N = 3, R = 1, W = 1 for read-mostly caches, §6) trade that
/// for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuorumConfig {
    n: u32,
    r: u32,
    w: u32,
}

/// Why a set of N, R, W values was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// N was zero: a key must live somewhere.
    #[error("replication factor n must be at least 1")]
    NoReplicas,
    /// N exceeded [`MAX_REPLICAS`].
    #[error("replication factor n = {n} exceeds the limit of {MAX_REPLICAS}")]
    TooManyReplicas {
        /// The rejected N.
        n: u32,
    },
    /// R was zero or larger than N.
    #[error("read quorum r = {r} must be between 1 and n = {n}")]
    ReadQuorumOutOfRange {
        /// The rejected R.
        r: u32,
        /// The N it was checked against.
        n: u32,
    },
    /// W was zero or larger than N.
    #[error("write quorum w = {w} must be between 1 and n = {n}")]
    WriteQuorumOutOfRange {
        /// The rejected W.
        w: u32,
        /// The N it was checked against.
        n: u32,
    },
}

impl QuorumConfig {
    /// Checks and builds a configuration.
    ///
    /// # Errors
    /// [`ConfigError`] when `n` is 0 or above [`MAX_REPLICAS`], or `r` or `w` is
    /// outside `1..=n`.
    pub fn new(n: u32, r: u32, w: u32) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::NoReplicas);
        }
        if n > MAX_REPLICAS {
            return Err(ConfigError::TooManyReplicas { n });
        }
        if !(1..=n).contains(&r) {
            return Err(ConfigError::ReadQuorumOutOfRange { r, n });
        }
        if !(1..=n).contains(&w) {
            return Err(ConfigError::WriteQuorumOutOfRange { w, n });
        }
        Ok(Self { n, r, w })
    }

    /// This configuration with a client's per-request R and/or W in place of the
    /// node's defaults; N never changes per request, because it decides where data
    /// lives.
    ///
    /// # Errors
    /// [`ConfigError`] when an override is outside `1..=n`.
    pub fn with_overrides(self, r: Option<u32>, w: Option<u32>) -> Result<Self, ConfigError> {
        Self::new(self.n, r.unwrap_or(self.r), w.unwrap_or(self.w))
    }

    /// N: how many nodes hold each key.
    pub fn n(&self) -> u32 {
        self.n
    }

    /// R: how many replies a read waits for.
    pub fn r(&self) -> u32 {
        self.r
    }

    /// W: how many acknowledgements a write waits for.
    pub fn w(&self) -> u32 {
        self.w
    }

    /// N as a count, for indexing preference lists.
    pub(crate) fn replicas(&self) -> usize {
        widen(self.n)
    }

    /// R as a count.
    pub(crate) fn read_quorum(&self) -> usize {
        widen(self.r)
    }

    /// W as a count.
    pub(crate) fn write_quorum(&self) -> usize {
        widen(self.w)
    }
}

/// Dynamo's common configuration (§6: "The common (N,R,W) configuration used by
/// several instances of Dynamo is (3,2,2)").
impl Default for QuorumConfig {
    fn default() -> Self {
        Self { n: 3, r: 2, w: 2 }
    }
}

/// Values are at most [`MAX_REPLICAS`], so the conversion cannot truncate.
fn widen(count: u32) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        use ConfigError::*;
        /// (n, r, w) and whether it is accepted.
        type Case = ((u32, u32, u32), Result<(), ConfigError>);
        let cases: &[Case] = &[
            ((3, 2, 2), Ok(())),
            ((1, 1, 1), Ok(())),
            ((16, 16, 1), Ok(())),
            ((3, 1, 3), Ok(())),
            ((0, 0, 0), Err(NoReplicas)),
            ((0, 1, 1), Err(NoReplicas)),
            ((17, 1, 1), Err(TooManyReplicas { n: 17 })),
            ((u32::MAX, 1, 1), Err(TooManyReplicas { n: u32::MAX })),
            ((3, 4, 2), Err(ReadQuorumOutOfRange { r: 4, n: 3 })),
            ((3, 0, 2), Err(ReadQuorumOutOfRange { r: 0, n: 3 })),
            ((3, 2, 4), Err(WriteQuorumOutOfRange { w: 4, n: 3 })),
            ((3, 2, 0), Err(WriteQuorumOutOfRange { w: 0, n: 3 })),
        ];
        for &((n, r, w), ref expected) in cases {
            let got = QuorumConfig::new(n, r, w).map(|config| {
                assert_eq!((config.n(), config.r(), config.w()), (n, r, w));
            });
            assert_eq!(&got, expected, "n={n} r={r} w={w}");
        }
    }

    #[test]
    fn default_is_the_papers_common_configuration() {
        // Dynamo §6: "(N,R,W) ... is (3,2,2)".
        assert_eq!(QuorumConfig::default(), QuorumConfig::new(3, 2, 2).unwrap());
    }

    #[test]
    fn overrides_replace_r_and_w_within_bounds() {
        let base = QuorumConfig::new(3, 2, 2).unwrap();
        assert_eq!(base.with_overrides(None, None), Ok(base));
        assert_eq!(
            base.with_overrides(Some(1), Some(3)),
            QuorumConfig::new(3, 1, 3)
        );
        assert_eq!(
            base.with_overrides(Some(3), None),
            QuorumConfig::new(3, 3, 2)
        );
        assert_eq!(
            base.with_overrides(Some(4), None),
            Err(ConfigError::ReadQuorumOutOfRange { r: 4, n: 3 })
        );
        assert_eq!(
            base.with_overrides(None, Some(0)),
            Err(ConfigError::WriteQuorumOutOfRange { w: 0, n: 3 })
        );
    }

    #[test]
    fn errors_read_as_short_lowercase_messages() {
        assert_eq!(
            ConfigError::TooManyReplicas { n: 20 }.to_string(),
            "replication factor n = 20 exceeds the limit of 16"
        );
        assert_eq!(
            ConfigError::WriteQuorumOutOfRange { w: 5, n: 3 }.to_string(),
            "write quorum w = 5 must be between 1 and n = 3"
        );
    }
}
