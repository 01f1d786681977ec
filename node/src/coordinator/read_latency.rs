//! The delay before a get's speculative read: the recent p90 of remote replica reads.
//!
//! A get that reads R replicas first (see
//! [`GetCoordinator::read_first`](crate::quorum::GetCoordinator::read_first)) asks one
//! more replica when no outcome came within this delay. Too short and most gets pay a
//! third read; too long and a get stuck on one slow replica waits for nothing. Like
//! Cassandra's `speculative_retry = 90p`, the delay is the 90th percentile of recent
//! replica reads, so about one get in ten sends a third (batched, cheap) read while
//! replicas are healthy. The 99th percentile, Cassandra's default, was measured first:
//! on this shared 2-core machine a replica's reads stall together (one HTTP/2
//! connection, one batch in flight), and waiting a read's p99 before asking another
//! replica left the gets' p99 at 86-109 ms while their p90 was 8-11 ms (BENCHMARKS.md).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Latencies above this many ms count as this many (about 17 minutes).
const MAX_MS: u64 = 1 << 20;
/// Latency buckets: 0-3 ms one each, then four per power of two (each at most a
/// quarter of its values wide), up to [`MAX_MS`].
const BUCKETS: usize = 80;
/// The percentile the delay follows.
const PERCENTILE: u64 = 90;
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
    /// The last window's percentile in ms (the upper bound of its bucket), 0 before
    /// the first.
    delay_ms: AtomicU64,
}

impl ReadLatency {
    pub(crate) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            samples: AtomicU32::new(0),
            delay_ms: AtomicU64::new(0),
        }
    }

    /// Records one remote read that answered after `elapsed_ms`.
    pub(crate) fn record(&self, elapsed_ms: u64) {
        self.buckets[bucket_of(elapsed_ms)].fetch_add(1, Ordering::Relaxed);
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
        // The percentile's rank, rounded up.
        let wanted = total - total * (100 - PERCENTILE) / 100;
        let mut seen = 0u64;
        for (bucket, &count) in counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= wanted {
                self.delay_ms.store(upper_bound(bucket), Ordering::Relaxed);
                break;
            }
        }
    }

    /// The delay before a speculative read: the last window's percentile, at least
    /// [`FLOOR`], at most a quarter of the request `timeout`.
    pub(crate) fn speculation_delay(&self, timeout: Duration) -> Duration {
        let delay = match self.delay_ms.load(Ordering::Relaxed) {
            0 => INITIAL,
            ms => Duration::from_millis(ms),
        };
        delay.max(FLOOR).min(timeout / 4)
    }
}

/// The bucket of a latency of `ms` milliseconds.
fn bucket_of(ms: u64) -> usize {
    let ms = ms.min(MAX_MS);
    if ms < 4 {
        return usize::try_from(ms).unwrap_or(0);
    }
    let exponent = u64::from(u64::BITS - 1 - ms.leading_zeros()); // >= 2
    let quarter = (ms >> (exponent - 2)) & 3;
    usize::try_from(4 * (exponent - 1) + quarter)
        .unwrap_or(BUCKETS - 1)
        .min(BUCKETS - 1)
}

/// The first latency above bucket `bucket` (in ms).
fn upper_bound(bucket: usize) -> u64 {
    let bucket = u64::try_from(bucket).unwrap_or(u64::MAX);
    if bucket < 4 {
        return bucket + 1;
    }
    let (exponent, quarter) = (bucket / 4 + 1, bucket % 4);
    (5 + quarter) << (exponent - 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[test]
    fn buckets_cover_every_latency_within_a_quarter() {
        let mut last = 0;
        for ms in 0..5000u64 {
            let bucket = bucket_of(ms);
            assert!(bucket >= last, "buckets grow with the latency");
            last = bucket;
            let upper = upper_bound(bucket);
            assert!(ms < upper, "{ms} ms below its bucket's bound {upper}");
            assert!(
                upper - ms <= ms / 4 + 1,
                "{ms} ms: bound {upper} within a quarter"
            );
        }
        assert_eq!(bucket_of(u64::MAX), bucket_of(MAX_MS));
        assert!(bucket_of(MAX_MS) < BUCKETS);
    }

    #[test]
    fn the_delay_starts_at_the_initial_value_and_follows_the_p90_of_a_window() {
        let latency = ReadLatency::new();
        assert_eq!(latency.speculation_delay(TIMEOUT), INITIAL);
        // 95% of reads at 3 ms, 5% at 40 ms: the p90 is 3 ms (bound 4).
        for i in 0..WINDOW {
            latency.record(if i % 20 == 0 { 40 } else { 3 });
        }
        assert_eq!(latency.speculation_delay(TIMEOUT), Duration::from_millis(4));
        // A slower window replaces it: 85% at 12 ms, 15% at 40 ms (bucket [40, 48)).
        for i in 0..WINDOW {
            latency.record(if i % 7 == 0 { 40 } else { 12 });
        }
        assert_eq!(
            latency.speculation_delay(TIMEOUT),
            Duration::from_millis(48)
        );
        for _ in 0..WINDOW {
            latency.record(12);
        }
        assert_eq!(
            latency.speculation_delay(TIMEOUT),
            Duration::from_millis(14)
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
