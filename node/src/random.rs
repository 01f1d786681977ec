//! The node's one source of randomness for background choices (gossip peers,
//! anti-entropy ranges and peers): a seeded ChaCha8 stream, so a node's choices replay
//! from its seed and nodes started together do not move in step.

use rand::{RngCore as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// Which subsystem draws from a stream: each gets its own, so one drawing more often
/// does not change the other's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Gossip and failure probes.
    Gossip = 1,
    /// Anti-entropy's range and peer picks.
    AntiEntropy = 2,
}

/// A seeded random stream; not for anything secret.
#[derive(Debug, Clone)]
pub(crate) struct SeededRandom(ChaCha8Rng);

impl SeededRandom {
    /// The stream `stream` of the node whose seed is `seed` (its clock incarnation: it
    /// differs between nodes and between starts of one node).
    pub(crate) fn new(seed: u64, stream: Stream) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream as u64);
        SeededRandom(rng)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_streams_and_seeds_differ() {
        let draw = |seed, stream| {
            let mut random = SeededRandom::new(seed, stream);
            (0..4).map(|_| random.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, Stream::Gossip), draw(7, Stream::Gossip));
        assert_ne!(draw(7, Stream::Gossip), draw(7, Stream::AntiEntropy));
        assert_ne!(draw(7, Stream::Gossip), draw(8, Stream::Gossip));
    }
}
