//! The settings types the configuration produces and the node's subsystems take, with
//! their defaults and bounds: one place for each, shared by the node and the operator
//! (which checks a cluster's `nodeConfig` with the same code before any pod runs).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How durable a write must be before the call returns (Dynamo §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// On disk before the call returns: sled's flush, then `fdatasync` of the log and
    /// of any new blob files (see `durable_files`), so the write survives a power
    /// failure, not only a crash. Shared by the writes that wait for one at the same
    /// time (group commit).
    Sync,
    /// In the engine's memory when the call returns; on disk at the engine's next
    /// periodic flush, at an explicit flush of the engine, or at the next `Sync` write, which
    /// flushes everything before it.
    Buffered,
}

/// How many of a key's N healthy replicas a get asks at first (the `read-fanout`
/// setting).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ReadFanout {
    /// All N at once and answer after R (Dynamo §4.5): every read repairs every replica
    /// that answers.
    #[default]
    All,
    /// R first (this node's own read among them), more only when a read fails, is slow
    /// (past the recent p90) or two replies disagree (Cassandra's speculative retry):
    /// fewer remote reads; an unasked stale replica waits for anti-entropy.
    Quorum,
}

/// The longest accepted flush interval: past it, buffered writes would sit in memory
/// for so long that a crash loses far more than a write buffer should.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// The default page cache size: 128 MiB, small enough for a modest pod.
pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 128 * 1024 * 1024;

/// The default flush interval for buffered writes (sled's own default).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// How long the node's sled engine waits, by default, for a directory lock still held by
/// a handle of this process that is closing (see [`SledConfig::with_lock_wait`]).
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Why a [`SledConfig`] setting was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SledConfigError {
    /// The flush interval was under one millisecond (sled counts whole milliseconds).
    #[error("flush interval must be at least 1 ms")]
    FlushIntervalTooShort,
    /// The flush interval was over [`MAX_FLUSH_INTERVAL`].
    #[error("flush interval must be at most {MAX_FLUSH_INTERVAL:?}")]
    FlushIntervalTooLong,
    /// The page cache was given zero bytes.
    #[error("cache capacity must be at least 1 byte")]
    ZeroCacheCapacity,
}

/// Where and how the node opens its sled engine. Settings are checked when set, so a config
/// value is always valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledConfig {
    /// The database directory (created if missing).
    path: PathBuf,
    /// How often sled's background thread writes buffered writes to disk; `None` runs no
    /// such thread, for nodes that write everything with [`Durability::Sync`].
    flush_interval: Option<Duration>,
    /// Memory for sled's page cache.
    cache_capacity_bytes: u64,
    /// How long to keep retrying when the directory's lock is held.
    lock_wait: Duration,
}

impl SledConfig {
    /// A config for the database at `path`, flushing buffered writes every 500 ms, with
    /// a 128 MiB page cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            flush_interval: Some(DEFAULT_FLUSH_INTERVAL),
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }

    /// Sets how long opening the engine keeps retrying while the directory's file lock
    /// is held (default 5 s). sled releases the lock from its flusher thread a moment
    /// after the last handle drops, so reopening a directory right after closing it in
    /// the same process (a node restarted in place) can find it still locked; a lock
    /// held by a live process is still an error once the wait runs out.
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Sets the periodic flush interval (Dynamo §6.1's writer thread), or `None` for
    /// none: then [`Durability::Buffered`] writes reach disk only at a
    /// flush of the engine, a later `Sync` write, or a clean close.
    ///
    /// # Errors
    /// [`SledConfigError`] for an interval under 1 ms or over [`MAX_FLUSH_INTERVAL`].
    pub fn with_flush_interval(
        mut self,
        interval: Option<Duration>,
    ) -> Result<Self, SledConfigError> {
        if let Some(interval) = interval {
            if interval < Duration::from_millis(1) {
                return Err(SledConfigError::FlushIntervalTooShort);
            }
            if interval > MAX_FLUSH_INTERVAL {
                return Err(SledConfigError::FlushIntervalTooLong);
            }
        }
        self.flush_interval = interval;
        Ok(self)
    }

    /// Sets the page cache size in bytes.
    ///
    /// # Errors
    /// [`SledConfigError::ZeroCacheCapacity`] for zero.
    pub fn with_cache_capacity_bytes(mut self, bytes: u64) -> Result<Self, SledConfigError> {
        if bytes == 0 {
            return Err(SledConfigError::ZeroCacheCapacity);
        }
        self.cache_capacity_bytes = bytes;
        Ok(self)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The periodic flush interval, if any.
    pub fn flush_interval(&self) -> Option<Duration> {
        self.flush_interval
    }

    /// The page cache size in bytes.
    pub fn cache_capacity_bytes(&self) -> u64 {
        self.cache_capacity_bytes
    }

    /// How long opening the engine waits for a directory lock being released.
    pub fn lock_wait(&self) -> Duration {
        self.lock_wait
    }
}

/// The listeners' limits, from the node's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingLimits {
    /// Most connections each listener serves at once (before the node lowers it to fit the open-files limit).
    pub max_connections: usize,
    /// Most client requests served at once; past it they are shed.
    pub max_inflight_requests: usize,
    /// How long a client may take to send a connection's first bytes, and over HTTP a
    /// request's headers and then its body.
    pub client_read_timeout: Duration,
}

/// The default time between anti-entropy rounds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The default tombstone grace period: how old a tombstone-only state must be before
/// anti-entropy may purge it (the node's `antientropy` module explains why).
pub const DEFAULT_TOMBSTONE_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// Anti-entropy settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AntiEntropyConfig {
    /// Time between rounds; zero disables anti-entropy (no trees are kept).
    pub interval: Duration,
    /// How old a tombstone-only state must be before it may be purged.
    pub tombstone_grace: Duration,
    /// The most keys one round repairs (or purges).
    pub max_keys_per_round: u64,
    /// The most state bytes one round moves.
    pub max_bytes_per_round: u64,
    /// The depth of a tree covering the whole ring ([`FULL_RING_DEPTH`] by default);
    /// narrower ranges get proportionally shallower trees (the node's
    /// `antientropy::plan::depth_for`). Every node of a cluster must use the same value: trees of
    /// different shapes do not compare, and peers refuse an exchange with the wrong
    /// depth. Small data sets (tests, the simulator) need far fewer buckets.
    pub tree_depth: u8,
}

/// The default depth of a tree covering the whole ring: `2^14` leaf buckets (about
/// 670 KB of hashes and counts), about 60 keys per bucket at a million keys. Narrower
/// ranges get proportionally shallower trees, so a node's trees together hold about
/// `2^14 × (the fraction of the ring it replicates)` buckets however the ring is cut.
pub const FULL_RING_DEPTH: u8 = 14;

/// The default keys repaired per round.
pub const DEFAULT_MAX_KEYS_PER_ROUND: u64 = 10_000;
/// The default bytes moved per round.
pub const DEFAULT_MAX_BYTES_PER_ROUND: u64 = 64 * 1024 * 1024;

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            tombstone_grace: DEFAULT_TOMBSTONE_GRACE,
            max_keys_per_round: DEFAULT_MAX_KEYS_PER_ROUND,
            max_bytes_per_round: DEFAULT_MAX_BYTES_PER_ROUND,
            tree_depth: FULL_RING_DEPTH,
        }
    }
}

impl AntiEntropyConfig {
    /// Whether rounds run (and trees are kept).
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }
}

/// Default time a source may fail before its copies are taken from other replicas:
/// long enough for a node to restart (a crashed process, a rescheduled pod), short
/// enough that a dead node does not hold a join or leave up for long.
pub const DEFAULT_SOURCE_STALL: Duration = Duration::from_secs(60);

/// Whether `a` equals `b`, in time that depends only on the lengths, so response
/// timing does not reveal how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_out_of_range_settings() {
        let config = SledConfig::new("/tmp/x");
        assert_eq!(
            config.clone().with_flush_interval(Some(Duration::ZERO)),
            Err(SledConfigError::FlushIntervalTooShort)
        );
        assert_eq!(
            config
                .clone()
                .with_flush_interval(Some(Duration::from_micros(999))),
            Err(SledConfigError::FlushIntervalTooShort)
        );
        assert_eq!(
            config
                .clone()
                .with_flush_interval(Some(MAX_FLUSH_INTERVAL + Duration::from_millis(1))),
            Err(SledConfigError::FlushIntervalTooLong)
        );
        assert_eq!(
            config.clone().with_cache_capacity_bytes(0),
            Err(SledConfigError::ZeroCacheCapacity)
        );
        let tuned = config
            .with_flush_interval(None)
            .unwrap()
            .with_cache_capacity_bytes(1 << 20)
            .unwrap();
        assert_eq!(tuned.flush_interval(), None);
        assert_eq!(tuned.cache_capacity_bytes(), 1 << 20);
        assert_eq!(tuned.path(), Path::new("/tmp/x"));
    }
}
