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

    pub async fn put(&self, key: &str, source: &Path) -> Result<()> {
        let dest = self.dir.join(key);
        let source = source.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let parent = dest.parent().context("object key has no file name")?;
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            let name = dest.file_name().context("object key has no file name")?;
            let tmp = parent.join(format!(".{}.partial", name.to_string_lossy()));
            std::fs::copy(&source, &tmp).with_context(|| {
                format!("cannot copy {} to {}", source.display(), tmp.display())
            })?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &dest).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), dest.display())
            })?;
            std::fs::File::open(parent)?.sync_all()?;
            Ok(())
        })
        .await?
    }
}
