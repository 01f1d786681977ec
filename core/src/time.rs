//! Time as a value: the pure core never reads a clock.
//!
//! The shell owns the clock and passes [`Millis`] into every state machine input; the
//! simulator passes virtual time. Two kinds of time are used and never mixed:
//! monotonic time for timeouts and failure detection, and wall-clock time (also
//! [`Millis`], since the Unix epoch) only for what must mean something across
//! restarts or between nodes: vector clock entry timestamps, which decide which entry
//! truncation drops, tombstone ages, and when a transfer's peer began failing (saved
//! with the transfer's progress, see `transfer::fallback::StallTracker`).

use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds from an origin chosen by the caller.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Millis {
    type Output = Millis;
    fn add(self, rhs: Duration) -> Millis {
        let ms = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(ms))
    }
}

impl Sub<Duration> for Millis {
    type Output = Millis;
    fn sub(self, rhs: Duration) -> Millis {
        let ms = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_sub(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        assert_eq!(Millis(u64::MAX) + Duration::from_secs(1), Millis(u64::MAX));
        assert_eq!(Millis(5) - Duration::from_secs(1), Millis(0));
        assert_eq!(Millis(3).saturating_since(Millis(10)), Duration::ZERO);
        assert_eq!(
            Millis(1500).saturating_since(Millis(500)),
            Duration::from_secs(1)
        );
    }
}
