//! How much a transfer round may send (no I/O).
//!
//! The driver asks a [`TransferThrottle`] for an [`Allowance`] before each round and
//! reports what it used after; [`FixedThrottle`] grants the same allowance every round
//! (`--transfer-batch-bytes`, `--transfer-batch-keys` per `--transfer-interval`). The
//! admission controller's shared budget of background work can implement the trait in
//! its place.

use crate::time::Millis;

/// What one round may send: it stops before starting a page once either is used up.
/// A single entry larger than the byte allowance still travels alone, so a transfer
/// always progresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Keys.
    pub keys: u64,
    /// Key and state bytes.
    pub bytes: u64,
}

impl Allowance {
    /// Nothing at all.
    pub const NONE: Allowance = Allowance { keys: 0, bytes: 0 };

    /// Whether nothing is left.
    pub fn is_exhausted(&self) -> bool {
        self.keys == 0 || self.bytes == 0
    }

    /// What is left after using `used`.
    #[must_use]
    pub fn minus(self, used: Allowance) -> Allowance {
        Allowance {
            keys: self.keys.saturating_sub(used.keys),
            bytes: self.bytes.saturating_sub(used.bytes),
        }
    }
}

/// Decides each round's [`Allowance`].
pub trait TransferThrottle: Send {
    /// The allowance of the round starting at `now`.
    fn allowance(&mut self, now: Millis) -> Allowance;
    /// What the round actually sent.
    fn consumed(&mut self, used: Allowance);
}

/// The same allowance every round.
#[derive(Debug, Clone, Copy)]
pub struct FixedThrottle {
    per_round: Allowance,
}

impl FixedThrottle {
    /// Grants `per_round` every round.
    pub fn new(per_round: Allowance) -> Self {
        Self { per_round }
    }
}

impl TransferThrottle for FixedThrottle {
    fn allowance(&mut self, _now: Millis) -> Allowance {
        self.per_round
    }

    fn consumed(&mut self, _used: Allowance) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowances_subtract_without_underflow() {
        let full = Allowance {
            keys: 10,
            bytes: 100,
        };
        let left = full.minus(Allowance { keys: 4, bytes: 40 });
        assert_eq!(left, Allowance { keys: 6, bytes: 60 });
        assert!(!left.is_exhausted());
        let over = left.minus(Allowance {
            keys: 1,
            bytes: 500,
        });
        assert_eq!(over, Allowance { keys: 5, bytes: 0 });
        assert!(over.is_exhausted());
        assert!(Allowance::NONE.is_exhausted());
        let mut fixed = FixedThrottle::new(full);
        fixed.consumed(full);
        assert_eq!(fixed.allowance(Millis(5)), full);
    }
}
