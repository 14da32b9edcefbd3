//! Where the importer reads objects (PostgreSQL path) and writes Redshift manifests: S3 or an
//! S3-compatible server. Owns the mapping of "object gone or replaced" answers to
//! [`Fetched::Gone`]; it must never hand back the bytes of a different version than asked for.

use super::ledger::Item;
use anyhow::{Result, anyhow};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use tokio::io::AsyncRead;

/// An object's bytes as they stream in.
pub type Body = Box<dyn AsyncRead + Send + Unpin>;

pub enum Fetched {
    Body(Body),
    /// Deleted, or replaced by another version since the event (its own event loads it).
    Gone,
}

pub enum Source {
    S3(aws_sdk_s3::Client),
    /// `rin-ship serve`'s local stores: bucket (the store's name) -> folder. ETags are
    /// [`crate::ship::local::digest`]s of the file.
    Local(std::collections::BTreeMap<String, std::path::PathBuf>),
}

impl Source {
    /// The object's current ETag (without quotes), or `None` when it no longer exists.
    pub async fn etag(&self, bucket: &str, key: &str) -> Result<Option<String>> {
        match self {
            Source::Local(dirs) => {
                let path = local_path(dirs, bucket, key)?;
                tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
                    Ok(f) => Ok(Some(crate::ship::local::digest(f)?)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(anyhow!("{}: {e}", path.display())),
                })
                .await?
            }
            Source::S3(s3) => match s3.head_object().bucket(bucket).key(key).send().await {
                Ok(o) => Ok(Some(
                    o.e_tag.unwrap_or_default().trim_matches('"').to_string(),
                )),
                Err(e) => {
                    if matches!(e.code(), Some("NotFound" | "NoSuchKey"))
                        || e.raw_response().map(|r| r.status().as_u16()) == Some(404)
                    {
                        Ok(None)
                    } else {
                        Err(anyhow!(
                            "HeadObject s3://{bucket}/{key}: {}",
                            DisplayErrorContext(&e)
                        ))
                    }
                }
            },
        }
    }

    /// Opens exactly the version the event named (by version id, else by ETag).
    pub async fn open(&self, it: &Item) -> Result<Fetched> {
        match self {
            Source::Local(dirs) => {
                let path = local_path(dirs, &it.bucket, &it.key)?;
                let etag = it.etag.clone();
                // Digest and bytes from the same descriptor: a file renamed over the key
                // meanwhile cannot mix in.
                let file = tokio::task::spawn_blocking(move || -> Result<Option<std::fs::File>> {
                    use std::io::Seek;
                    let mut f = match std::fs::File::open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
                    };
                    if !etag.is_empty() && crate::ship::local::digest(&mut f)? != etag {
                        return Ok(None);
                    }
                    f.rewind()?;
                    Ok(Some(f))
                })
                .await??;
                Ok(match file {
                    Some(f) => Fetched::Body(Box::new(tokio::fs::File::from_std(f))),
                    None => Fetched::Gone,
                })
            }
            Source::S3(s3) => {
                let mut req = s3.get_object().bucket(&it.bucket).key(&it.key);
                if !it.version_id.is_empty() {
                    req = req.version_id(&it.version_id);
                } else if !it.etag.is_empty() {
                    req = req.if_match(format!("\"{}\"", it.etag));
                }
                match req.send().await {
                    Ok(o) => Ok(Fetched::Body(Box::new(o.body.into_async_read()))),
                    Err(e) => {
                        let code = e.code().unwrap_or("");
                        if matches!(code, "NoSuchKey" | "PreconditionFailed" | "NoSuchVersion") {
                            Ok(Fetched::Gone)
                        } else {
                            Err(anyhow!(
                                "GetObject s3://{}/{}: {}",
                                it.bucket,
                                it.key,
                                DisplayErrorContext(&e)
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Writes a (small) object, such as a COPY manifest.
    pub async fn put(&self, bucket: &str, key: &str, body: String) -> Result<()> {
        match self {
            Source::Local(_) => Err(anyhow!(
                "cannot write s3://{bucket}/{key}: local objects take no manifests"
            )),
            Source::S3(s3) => s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .content_type("application/json")
                .body(body.into_bytes().into())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| anyhow!("PutObject s3://{bucket}/{key}: {}", DisplayErrorContext(&e))),
        }
    }
}

/// The file of a local object; the key must stay inside its folder.
fn local_path(
    dirs: &std::collections::BTreeMap<String, std::path::PathBuf>,
    bucket: &str,
    key: &str,
) -> Result<std::path::PathBuf> {
    let dir = dirs
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
