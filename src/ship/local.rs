//! The local-folder object store: each object is a file `<dir>/<key>`. Writes go to a
//! temporary name, are fsynced, then renamed, so a reader never sees half an object and a
//! rewrite of the same key replaces it whole.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    pub fn new(dir: PathBuf) -> Result<LocalStore> {
        std::fs::create_dir_all(&dir)
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
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            let name = dest.file_name().context("object key has no file name")?;
            let tmp = parent.join(format!(".{}.partial", name.to_string_lossy()));
            let etag = copy_with_digest(&source, &tmp).with_context(|| {
                format!("cannot copy {} to {}", source.display(), tmp.display())
            })?;
            std::fs::rename(&tmp, &dest).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), dest.display())
            })?;
            std::fs::File::open(parent)?.sync_all()?;
            Ok(etag)
        })
        .await?
    }
}

/// The ETag of a local object: the hex SHA-256 of its bytes. Deterministic, so the same chunk
/// uploaded again after a crash has the same ETag, and its second notification is a ledger
/// duplicate; an object replaced by other bytes has another.
#[cfg_attr(not(all(feature = "s3", feature = "sqs")), allow(dead_code))]
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
