//! Positions on the hash ring and the ranges between them.
//!
//! Dynamo §4.2: "The output range of a hash function is treated as a fixed circular
//! space or ring". Keys are placed by the 128-bit MD5 of their bytes, read big-endian.

use std::fmt;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// A position on the 128-bit ring.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Token(pub u128);

impl Token {
    /// The token of `bytes`: their MD5 digest as a big-endian integer.
    pub fn of(bytes: &[u8]) -> Token {
        let digest = Md5::digest(bytes);
        Token(u128::from_be_bytes(digest.into()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:032x})", self.0)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The arc of the ring after `start` up to and including `end`: `(start, end]`.
///
/// Ranges wrap around zero when `end < start`. A range with `start == end` is the
/// whole ring, which is what a single-node ring owns.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenRange {
    /// Exclusive lower bound.
    pub start: Token,
    /// Inclusive upper bound.
    pub end: Token,
}

impl TokenRange {
    /// The range `(start, end]`.
    pub fn new(start: Token, end: Token) -> Self {
        Self { start, end }
    }

    /// The whole ring.
    pub fn full() -> Self {
        Self::new(Token(0), Token(0))
    }

    /// Whether this range is the whole ring.
    pub fn is_full(&self) -> bool {
        self.start == self.end
    }

    /// Whether `token` lies in `(start, end]`, wrapping around zero.
    pub fn contains(&self, token: Token) -> bool {
        if self.is_full() {
            return true;
        }
        let offset = token.0.wrapping_sub(self.start.0);
        offset != 0 && offset <= self.end.0.wrapping_sub(self.start.0)
    }

    /// The number of tokens in the range, minus one (so the full ring, 2^128 tokens,
    /// fits in a `u128`).
    pub fn width_minus_one(&self) -> u128 {
        self.end.0.wrapping_sub(self.start.0).wrapping_sub(1)
    }

    /// The fraction of the ring this range covers, in `(0, 1]`.
    pub fn fraction(&self) -> f64 {
        // 2^128 as f64 is exact; width = width_minus_one + 1.
        (self.width_minus_one() as f64 + 1.0) / 2f64.powi(128)
    }
}

impl fmt::Debug for TokenRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:?}, {:?}]", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_is_big_endian_md5() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e (RFC 1321 test suite).
        assert_eq!(Token::of(b""), Token(0xd41d8cd98f00b204e9800998ecf8427e));
    }

    #[test]
    fn range_bounds_are_exclusive_start_inclusive_end() {
        let r = TokenRange::new(Token(10), Token(20));
        assert!(!r.contains(Token(10)));
        assert!(r.contains(Token(11)));
        assert!(r.contains(Token(20)));
        assert!(!r.contains(Token(21)));
        assert_eq!(r.width_minus_one(), 9);
    }

    #[test]
    fn wrapping_range_spans_zero() {
        let r = TokenRange::new(Token(u128::MAX - 1), Token(1));
        assert!(r.contains(Token(u128::MAX)));
        assert!(r.contains(Token(0)));
        assert!(r.contains(Token(1)));
        assert!(!r.contains(Token(2)));
        assert!(!r.contains(Token(u128::MAX - 1)));
    }

    #[test]
    fn full_ring_contains_everything() {
        let r = TokenRange::full();
        assert!(r.contains(Token(0)) && r.contains(Token(u128::MAX)));
        assert_eq!(r.width_minus_one(), u128::MAX);
        assert_eq!(r.fraction(), 1.0);
    }

    proptest! {
        #[test]
        fn adjacent_ranges_partition_the_ring(a: u128, b: u128, t: u128) {
            prop_assume!(a != b);
            let left = TokenRange::new(Token(a), Token(b));
            let right = TokenRange::new(Token(b), Token(a));
            // Every token is in exactly one of (a, b] and (b, a].
            prop_assert!(left.contains(Token(t)) ^ right.contains(Token(t)));
        }
    }
}
