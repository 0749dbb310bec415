//! The data directory's identity: the directory the store opened, held open.
//!
//! A directory removed (or replaced) under a running server goes on working for the files
//! the process holds open: commits still succeed and sync, into files no restart will find.
//! So the committer checks the identity after every commit, before answering: if the
//! directory is gone or another one stands in its place, the group is refused, the store
//! stops taking writes, and `/readyz` says why.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::StoreError;

/// The store's directory, held open: an open handle sees the directory it was opened on even
/// after it is removed (its link count drops to 0), which a device and inode comparison alone
/// cannot tell from a new directory that reuses the inode number.
#[derive(Debug, Clone)]
pub(crate) struct DirIdentity {
    dir: PathBuf,
    handle: std::sync::Arc<std::fs::File>,
}

/// Why writes stopped: the directory is not the one opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "the data directory {0} was removed or replaced while the server ran; nothing more is acknowledged: restore it and restart the server"
)]
pub(crate) struct DataDirGone(pub PathBuf);

impl DirIdentity {
    pub fn of(dir: &Path) -> Result<Self, StoreError> {
        let handle = std::fs::File::open(dir).map_err(StoreError::unavailable)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            handle: std::sync::Arc::new(handle),
        })
    }

    /// Fails when the directory is gone, or the path names another one now.
    pub fn check(&self) -> Result<(), StoreError> {
        let opened = self.handle.metadata();
        let named = std::fs::metadata(&self.dir);
        match (opened, named) {
            (Ok(opened), Ok(named))
                if opened.nlink() > 0
                    && opened.dev() == named.dev()
                    && opened.ino() == named.ino() =>
            {
                Ok(())
            }
            _ => Err(StoreError::unavailable(DataDirGone(self.dir.clone()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_or_replaced_directory_is_noticed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let identity = DirIdentity::of(&dir).unwrap();
        assert!(identity.check().is_ok());
        std::fs::remove_dir(&dir).unwrap();
        assert!(identity.check().is_err(), "removed");
        std::fs::create_dir(&dir).unwrap();
        assert!(identity.check().is_err(), "replaced by a new directory");
    }
}
