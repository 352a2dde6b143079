//! Content-addressed blobs in a directory: a blob is the file
//! `<dir>/ab/cd/<sha256 hex>` (two levels of fan-out keep directories small).
//! In a cluster the directory is a shared volume.
//!
//! A put is durable before it returns: the data goes to a temporary file in
//! the final directory, which is fsynced, renamed into place, and the
//! directory fsynced, so a crash leaves either no blob or the whole blob.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::*;

/// Prefix of files being written; never a valid id, so never read as a blob.
/// Leftovers of a crash are harmless and may be removed by hand.
const TEMP_PREFIX: &str = ".tmp-";

pub struct DirBlobs {
    root: PathBuf,
}

impl DirBlobs {
    /// Opens the store in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<DirBlobs> {
        fs::create_dir_all(dir)?;
        Ok(DirBlobs {
            root: dir.to_path_buf(),
        })
    }

    /// Where blob `id` lives; `None` for anything but 64 lowercase hex
    /// digits, so an id can never name a path outside the store.
    fn path(&self, id: &str) -> Option<PathBuf> {
        let valid = id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| self.root.join(&id[0..2]).join(&id[2..4]).join(id))
    }

    fn checked_path(&self, id: &str) -> Result<PathBuf> {
        self.path(id)
            .ok_or_else(|| BackendError::Other(format!("invalid blob id {id:?}")))
    }
}

#[async_trait]
impl BlobStore for DirBlobs {
    async fn put(&self, data: &[u8]) -> Result<String> {
        // Hashing and fsyncs block: one blocking task does both. The copy
        // is what spawn_blocking costs for a borrowed slice.
        let data = data.to_vec();
        let root = self.root.clone();
        let (id, written) = tokio::task::spawn_blocking(move || put_blocking(&root, &data))
            .await
            .map_err(|e| BackendError::Other(format!("blob writer task failed: {e}")))??;
        debug!(blob = %id, written, "blob stored");
        Ok(id)
    }

    async fn get(&self, id: &str) -> Result<Vec<u8>> {
        let path = self.checked_path(id)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(BackendError::BlobNotFound(id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn exists(&self, id: &str) -> Result<bool> {
        let path = self.checked_path(id)?;
        // A file is renamed into place only once complete (see put), so
        // its presence means the whole blob.
        match tokio::fs::metadata(&path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let path = self.checked_path(id)?;
        // No directory fsync: a delete undone by a crash leaves an
        // unreferenced blob, which wastes space but loses nothing.
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Stores `data` under its hash; returns the id and whether it was written
/// (false: the same content was already there).
fn put_blocking(root: &Path, data: &[u8]) -> Result<(String, bool)> {
    let id = hex::encode(Sha256::digest(data));
    let dir = root.join(&id[0..2]).join(&id[2..4]);
    let path = dir.join(&id);
    // Same content, same file: a blob is renamed into place only once
    // complete, so an existing file is the whole blob.
    if path.exists() {
        return Ok((id, false));
    }
    ensure_dir(root, &dir)?;

    let temp = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::now_v7()));
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        sync_dir(&dir)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e.into());
    }
    Ok((id, true))
}

/// Creates the fan-out directories of a blob; when it had to, fsyncs their
/// parents so the new directory entries survive a crash too.
fn ensure_dir(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    let mut current = dir;
    while let Some(parent) = current.parent() {
        sync_dir(parent)?;
        if parent == root {
            break;
        }
        current = parent;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
