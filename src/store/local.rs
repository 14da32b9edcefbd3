//! Folders as object stores: each object is a file `<dir>/<key>`. The shipper writes them
//! ([`LocalStore::put`]); the embedded loader reads them back by (store name, key)
//! ([`Folders`]). Writes go to a temporary name, are fsynced, then renamed (and the folder
//! fsynced), so a reader never sees half an object and a rewrite of the same key replaces it
//! whole. An object's ETag is the SHA-256 of its bytes ([`digest`]).
//!
//! Must never: read or write outside the store's folder (a key is a plain relative path);
//! hand back the bytes of an object other than the ETag asked for.

use super::{Body, Fetched, ObjectRef};
use anyhow::{Context, Result, anyhow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    pub fn new(dir: PathBuf) -> Result<LocalStore> {
        crate::common::durable::create_dir_all(&dir)
            .with_context(|| format!("cannot create object folder {}", dir.display()))?;
        Ok(LocalStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores the file as `<dir>/<key>`; returns its ETag ([`digest`] of its bytes).
    pub async fn put(&self, key: &str, source: &Path) -> Result<String> {
        let dest = self.dir.join(key);
        let source = source.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<String> {
            let parent = dest.parent().context("object key has no file name")?;
            // Fsynced into their parents: the object's own folder fsync does not keep a new
            // folder's entry, and a lost object whose chunk is retired is a lost chunk.
            crate::common::durable::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            let name = dest.file_name().context("object key has no file name")?;
            let tmp = parent.join(format!(".{}.partial", name.to_string_lossy()));
            let etag = copy_with_digest(&source, &tmp).with_context(|| {
                // Half an object is no object: on a full disk it holds the room its retry needs.
                let _ = std::fs::remove_file(&tmp);
                format!("cannot copy {} to {}", source.display(), tmp.display())
            })?;
            publish(&tmp, &dest)?;
            Ok(etag)
        })
        .await?
    }
}

/// Renames a written and fsynced `tmp` over `dest`, then fsyncs the folder: from then on the
/// object is there whole, across a crash.
fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    std::fs::rename(tmp, dest)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    let parent = dest.parent().context("object key has no file name")?;
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}

/// The folders of `serve`'s local stores, by store name (the "bucket" their notifications
/// give), as the embedded loader reads them.
#[derive(Debug, Clone, Default)]
pub struct Folders(pub BTreeMap<String, PathBuf>);

impl Folders {
    /// The object's current ETag, or `None` when it does not exist.
    pub async fn etag(&self, bucket: &str, key: &str) -> Result<Option<String>> {
        let path = self.path(bucket, key)?;
        tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
            Ok(f) => Ok(Some(digest(f)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!("{}: {e}", path.display())),
        })
        .await?
    }

    /// Opens the object if it still has the ETag asked for (any, when none is given).
    pub async fn open(&self, obj: ObjectRef<'_>) -> Result<Fetched> {
        let path = self.path(obj.bucket, obj.key)?;
        let etag = obj.etag.to_string();
        // Digest and bytes from the same descriptor: a file renamed over the key meanwhile
        // cannot mix in.
        let file = tokio::task::spawn_blocking(move || -> Result<Option<std::fs::File>> {
            use std::io::Seek;
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(anyhow!("{}: {e}", path.display())),
            };
            if !etag.is_empty() && digest(&mut f)? != etag {
                return Ok(None);
            }
            f.rewind()?;
            Ok(Some(f))
        })
        .await??;
        Ok(match file {
            Some(f) => Fetched::Body(Box::new(tokio::fs::File::from_std(f)) as Body),
            None => Fetched::Gone,
        })
    }

    /// Writes a small object (a quarantine record) whole, as [`LocalStore::put`] does.
    pub async fn put_small(&self, bucket: &str, key: &str, body: String) -> Result<()> {
        let dest = self.path(bucket, key)?;
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            let parent = dest.parent().context("object key has no file name")?;
            // Fsynced into their parents: the object's own folder fsync does not keep a new
            // folder's entry, and a lost object whose chunk is retired is a lost chunk.
            crate::common::durable::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            let name = dest.file_name().context("object key has no file name")?;
            let tmp = parent.join(format!(".{}.partial", name.to_string_lossy()));
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
            publish(&tmp, &dest)
        })
        .await?
    }

    /// The file of an object; the key must stay inside its folder.
    fn path(&self, bucket: &str, key: &str) -> Result<PathBuf> {
        let dir = self
            .0
            .get(bucket)
            .ok_or_else(|| anyhow!("no local store named {bucket:?}"))?;
        if key.is_empty()
            || key.contains('\0')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(anyhow!("object key {key:?} is not a plain relative path"));
        }
        Ok(dir.join(key))
    }
}

/// The ETag of a local object: the hex SHA-256 of its bytes. Deterministic, so the same chunk
/// uploaded again after a crash has the same ETag, and its second notification is a ledger
/// duplicate; an object replaced by other bytes has another.
pub fn digest(mut reader: impl std::io::Read) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Copies `from` to `to` (fsynced), returning the [`digest`] of the bytes written.
fn copy_with_digest(from: &Path, to: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::File::create(to)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_returns_a_deterministic_digest() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("chunk");
        std::fs::write(&src, b"hello").unwrap();
        let store = LocalStore::new(d.path().join("objects")).unwrap();
        let e1 = store.put("a/b.json.gz", &src).await.unwrap();
        let e2 = store.put("a/b.json.gz", &src).await.unwrap();
        assert_eq!(e1, e2);
        assert_eq!(
            e1,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let stored = d.path().join("objects/a/b.json.gz");
        assert_eq!(std::fs::read(&stored).unwrap(), b"hello");
        assert_eq!(digest(std::fs::File::open(&stored).unwrap()).unwrap(), e1);
    }
}
