//! The delay before a get's speculative read: the recent p99 of remote replica reads.
//!
//! A get that reads R replicas first (see
//! [`GetCoordinator::read_first`](crate::quorum::GetCoordinator::read_first)) asks one
//! more replica when no outcome came within this delay. Too short and most gets pay a
//! third read; too long and a get stuck on one slow replica waits for nothing. Like
//! Cassandra's default `speculative_retry = 99p`, the delay is the 99th percentile of
//! recent replica reads, so about one get in a hundred speculates while replicas are
//! healthy.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets: bucket 0 holds reads under 1 ms, bucket `i` reads of
/// `[2^(i-1), 2^i)` ms; the last one everything longer.
const BUCKETS: usize = 17;
/// Samples per estimate: each window replaces the previous estimate, so the delay
/// follows load within a second or two at bench rates.
const WINDOW: u32 = 1024;
/// The delay before the first window completes.
const INITIAL: Duration = Duration::from_millis(20);
/// No speculation sooner than this: below it a spare read costs more than waiting.
const FLOOR: Duration = Duration::from_millis(2);

/// Recent remote read latencies, shared by every get of a coordinator (lock-free;
/// concurrent updates may lose a sample, which only blurs the estimate).
#[derive(Debug)]
pub(crate) struct ReadLatency {
    buckets: [AtomicU32; BUCKETS],
    samples: AtomicU32,
    /// The last window's p99 in ms (upper bound of its bucket), 0 before the first.
    p99_ms: AtomicU64,
}

impl ReadLatency {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            samples: AtomicU32::new(0),
            p99_ms: AtomicU64::new(0),
        }
    }

    /// Records one remote read that answered after `elapsed_ms`.
    pub(crate) fn record(&self, elapsed_ms: u64) {
        let bucket = usize::try_from(u64::BITS - elapsed_ms.leading_zeros())
            .unwrap_or(BUCKETS)
            .min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        if self.samples.fetch_add(1, Ordering::Relaxed) + 1 < WINDOW {
            return;
        }
        // This caller closes the window: estimate, then start the next one.
        self.samples.store(0, Ordering::Relaxed);
        let counts: Vec<u32> = self
            .buckets
            .iter()
            .map(|count| count.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        let wanted = total - total / 100; // the 99th percentile's rank, rounded up
        let mut seen = 0u64;
        for (bucket, &count) in counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= wanted {
                self.p99_ms.store(1u64 << bucket, Ordering::Relaxed);
                break;
            }
        }
    }

    /// The delay before a speculative read: the last window's p99, at least
    /// [`FLOOR`], at most a quarter of the request `timeout`.
    pub(crate) fn speculation_delay(&self, timeout: Duration) -> Duration {
        let p99 = match self.p99_ms.load(Ordering::Relaxed) {
            0 => INITIAL,
            ms => Duration::from_millis(ms),
        };
        p99.max(FLOOR).min(timeout / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[test]
    fn the_delay_starts_at_the_initial_value_and_follows_the_p99_of_a_window() {
        let latency = ReadLatency::new();
        assert_eq!(latency.speculation_delay(TIMEOUT), INITIAL);
        // 99.4% of reads at 3 ms (bucket [2, 4)), 0.6% at 40 ms (bucket [32, 64)).
        for i in 0..WINDOW {
            latency.record(if i % 200 == 0 { 40 } else { 3 });
        }
        assert_eq!(latency.speculation_delay(TIMEOUT), Duration::from_millis(4));
        // A slower window replaces it.
        for _ in 0..WINDOW {
            latency.record(12);
        }
        assert_eq!(
            latency.speculation_delay(TIMEOUT),
            Duration::from_millis(16)
        );
    }

    #[test]
    fn the_delay_is_bounded_by_the_floor_and_a_quarter_of_the_timeout() {
        let latency = ReadLatency::new();
        for _ in 0..WINDOW {
            latency.record(0);
        }
        assert_eq!(latency.speculation_delay(TIMEOUT), FLOOR);
        for _ in 0..WINDOW {
            latency.record(u64::MAX);
        }
        assert_eq!(latency.speculation_delay(TIMEOUT), TIMEOUT / 4);
    }
}
