//! What makes a sled flush durable: `fdatasync` of the files the flush wrote.
//!
//! sled 0.34's `flush` writes the log with `pwrite` and then `sync_file_range`, which
//! pushes the written pages to the device but persists neither the file's metadata (the
//! log's new length) nor the device's volatile write cache, and large values go to blob
//! files it never syncs at all. An acknowledged `sync` write could therefore vanish in a
//! power failure. So every flush of a durable write goes through [`DurableFiles::flush`],
//! which around sled's flush:
//!
//! 1. `fdatasync`s every blob file not yet synced and then the `blobs` directory, so the
//!    blobs the flushed log records point at, and their names, are on disk before the
//!    records are (a blob is written before the record naming it, so every blob of a
//!    write acknowledged so far exists by now);
//! 2. runs sled's flush;
//! 3. `fdatasync`s the log file (`db`): its data, its length and the device cache.
//!
//! `fdatasync` works on the inode, not the descriptor, so syncing descriptors opened
//! here covers what sled wrote through its own. The group commit around this (see
//! [`super::group_commit`]) makes concurrent durable writes share one such flush, so
//! the extra syscalls are paid per group, not per write.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The sled files a durable flush syncs, and counts of the syncs done, which tests and
/// benchmarks read.
#[derive(Debug)]
pub(crate) struct DurableFiles {
    /// sled's log, opened read-only: enough for `fdatasync`.
    log: File,
    /// The directory sled writes large values to, one file each.
    blobs: PathBuf,
    /// Blob files already synced, by name; pruned of deleted ones on each pass.
    synced_blobs: Mutex<HashSet<OsString>>,
    /// `fdatasync`s of the log so far.
    log_syncs: AtomicU64,
    /// `fdatasync`s of blob files (and of the blobs directory) so far.
    blob_syncs: AtomicU64,
}

/// How many syncs a [`DurableFiles`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncCounts {
    /// `fdatasync` calls on sled's log file.
    pub log: u64,
    /// `fdatasync` calls on blob files and the blobs directory.
    pub blobs: u64,
}

impl DurableFiles {
    /// Opens the log of the sled database in `dir` (which sled has opened, so it exists)
    /// and syncs `dir` itself once, so the names sled created there (`db`, `conf`,
    /// `blobs`) survive a power failure too.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        let log = File::open(dir.join("db"))?;
        File::open(dir)?.sync_all()?;
        let files = Self {
            log,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
            log_syncs: AtomicU64::new(0),
            blob_syncs: AtomicU64::new(0),
        };
        // Blobs left by an earlier run may never have been synced either.
        files.sync_new_blobs()?;
        Ok(files)
    }

    /// Runs `flush` (sled's) between the blob and the log syncs described in the
    /// [module docs](self).
    /// A failed sync is `io_error`'s, so the caller keeps one error type.
    pub(crate) fn flush<E>(
        &self,
        flush: impl FnOnce() -> Result<(), E>,
        io_error: impl Fn(std::io::Error) -> E,
    ) -> Result<(), E> {
        self.sync_new_blobs().map_err(&io_error)?;
        flush()?;
        self.log.sync_data().map_err(&io_error)?;
        self.log_syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The syncs done so far.
    pub(crate) fn counts(&self) -> SyncCounts {
        SyncCounts {
            log: self.log_syncs.load(Ordering::Relaxed),
            blobs: self.blob_syncs.load(Ordering::Relaxed),
        }
    }

    /// Syncs every blob file not synced yet, then the directory when any was new.
    ///
    /// Cost: one directory listing per flush. Values under sled's blob threshold never
    /// make blob files, so the directory is usually empty; with large values it holds
    /// one entry per large value still referenced.
    fn sync_new_blobs(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            // sled creates the directory with the first blob.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut present = HashSet::new();
        for entry in entries {
            present.insert(entry?.file_name());
        }
        // Held across the syncs so two flushes never sync the same new blob twice; the
        // group commit runs one flush at a time anyway.
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        synced.retain(|name| present.contains(name));
        let mut new = 0u64;
        for name in present {
            if synced.contains(&name) {
                continue;
            }
            match File::open(self.blobs.join(&name)) {
                Ok(file) => file.sync_data()?,
                // Garbage-collected by sled since the listing: nothing to keep.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            }
            synced.insert(name);
            new += 1;
        }
        if new > 0 {
            File::open(&self.blobs)?.sync_all()?;
            self.blob_syncs.fetch_add(new + 1, Ordering::Relaxed);
        }
        Ok(())
    }
}
