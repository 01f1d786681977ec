//! The bytes a directory takes on disk.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How deep [`disk_usage`] descends: sled's directory holds its files and one level of
/// blobs; anything deeper is not the engine's.
const MAX_DEPTH: usize = 4;

/// Bytes allocated to the files under `dir` (512-byte blocks, as `du` counts them, so a
/// sparse or preallocated file counts what it holds, not its length). Symbolic links are
/// not followed. Entries that vanish during the walk (sled removes blobs lazily) count 0.
///
/// # Errors
/// When `dir` itself cannot be read.
pub(crate) fn disk_usage(dir: &Path) -> io::Result<u64> {
    let metadata = std::fs::symlink_metadata(dir)?;
    let mut total = metadata.blocks() * 512;
    if metadata.is_dir() {
        total += directory_usage(dir, MAX_DEPTH)?;
    }
    Ok(total)
}

fn directory_usage(dir: &Path, depth: usize) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(metadata) = entry.path().symlink_metadata() else {
            continue;
        };
        total += metadata.blocks() * 512;
        if metadata.is_dir() && depth > 0 {
            total += directory_usage(&entry.path(), depth - 1).unwrap_or(0);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn counts_the_blocks_of_nested_files_and_not_the_length_of_sparse_ones() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_usage(dir.path()).unwrap();
        let mut data = std::fs::File::create(dir.path().join("data")).unwrap();
        data.write_all(&vec![7u8; 1 << 20]).unwrap();
        data.sync_all().unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        let mut blob = std::fs::File::create(dir.path().join("blobs/1")).unwrap();
        blob.write_all(&vec![1u8; 64 << 10]).unwrap();
        blob.sync_all().unwrap();
        // A 1 GiB file with nothing written: its length is not disk use.
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();

        let used = disk_usage(dir.path()).unwrap() - empty;
        assert!(
            ((1 << 20) + (64 << 10)..(1 << 20) + (64 << 10) + (1 << 20)).contains(&used),
            "{used} bytes"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(disk_usage(&dir.path().join("absent")).is_err());
    }
}
