//! Object stores: where sealed chunks become objects and where the loader reads them back. The
//! shipper writes through a [`Store`] (one configured folder or bucket + prefix); the importer
//! and the embedded loader read through [`Objects`] (any bucket of one S3 client, or the local
//! stores by name), and write their manifests and quarantine records there. Table sync will
//! write through the same stores.
//!
//! Owns: the object's identity as both sides see it (bucket, key, ETag, version:
//! [`ObjectRef`], [`Stored`]), the meaning of "gone" ([`Fetched::Gone`]), the local ETag rule
//! (SHA-256 of the bytes, [`local::digest`]).
//!
//! Must never: report an object stored before the store confirmed it; hand back the bytes of
//! another version than asked for; depend on a stage (ship, load and sync all use it).

pub mod config;
pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

use crate::common::codec::Codec;
use anyhow::Result;
use config::StoreConfig;
use std::path::Path;
use tokio::io::AsyncRead;

/// An object a store confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The S3 bucket, or the store's name for a local store.
    pub bucket: String,
    /// The full object key (with the store's prefix).
    pub key: String,
    /// Without quotes; empty when the store gave none (the importer then asks for it).
    pub etag: String,
    /// `ObjectCreated:Put` or `ObjectCreated:CompleteMultipartUpload`.
    pub event_name: &'static str,
}

/// Exactly one version of one object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    /// Without quotes; empty: whatever is there.
    pub etag: &'a str,
    /// Empty: unversioned (the ETag decides). Folders keep no versions.
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub version_id: &'a str,
}

/// An object's bytes as they stream in.
pub type Body = Box<dyn AsyncRead + Send + Unpin>;

pub enum Fetched {
    Body(Body),
    /// Deleted, or replaced by another version since the event (its own event loads it).
    Gone,
}

/// Where one configured store puts objects (the shipper's side).
pub enum Store {
    /// A folder; `name` (the store's name) is the bucket its notifications give.
    Local {
        store: local::LocalStore,
        name: String,
    },
    #[cfg(feature = "s3")]
    S3(s3::S3Store),
}

impl Store {
    /// The folder of a local store (where a full disk would be).
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        match self {
            Store::Local { store, .. } => Some(store.dir()),
            #[cfg(feature = "s3")]
            Store::S3(_) => None,
        }
    }

    pub async fn from_config(name: &str, config: &StoreConfig) -> Result<Store> {
        Ok(match config {
            StoreConfig::Local { dir, .. } => Store::Local {
                store: local::LocalStore::new(dir.clone())?,
                name: name.to_string(),
            },
            #[cfg(feature = "s3")]
            StoreConfig::S3(s3) => Store::S3(s3::S3Store::new(s3).await?),
            #[cfg(not(feature = "s3"))]
            StoreConfig::S3(_) => anyhow::bail!("this rin-ship was built without the `s3` feature"),
        })
    }

    /// Uploads the file (`size` bytes in `codec`) as the object `key`. Returns only once the
    /// store confirmed it, with what a notification of it says.
    pub async fn put(&self, key: &str, path: &Path, size: u64, codec: Codec) -> Result<Stored> {
        #[cfg(not(feature = "s3"))]
        let _ = (size, codec);
        match self {
            Store::Local { store, name } => Ok(Stored {
                etag: store.put(key, path).await?,
                bucket: name.clone(),
                key: key.to_string(),
                event_name: "ObjectCreated:Put",
            }),
            #[cfg(feature = "s3")]
            Store::S3(s) => s.put(key, path, size, codec).await,
        }
    }

    /// A short description for logs (never credentials).
    pub fn describe(&self) -> String {
        match self {
            Store::Local { store, .. } => format!("folder {}", store.dir().display()),
            #[cfg(feature = "s3")]
            Store::S3(s) => s.describe(),
        }
    }
}

/// Where the loader reads objects and writes its manifests and quarantine records.
pub enum Objects {
    /// `rin-ship serve`'s local stores, by name.
    Local(local::Folders),
    /// Any bucket of S3 (or the configured S3-compatible server).
    #[cfg(feature = "s3")]
    S3(s3::Buckets),
}

impl Objects {
    /// The object's current ETag (without quotes), or `None` when it no longer exists.
    pub async fn etag(&self, bucket: &str, key: &str) -> Result<Option<String>> {
        match self {
            Objects::Local(f) => f.etag(bucket, key).await,
            #[cfg(feature = "s3")]
            Objects::S3(b) => b.etag(bucket, key).await,
        }
    }

    /// Opens exactly the version asked for.
    pub async fn open(&self, obj: ObjectRef<'_>) -> Result<Fetched> {
        match self {
            Objects::Local(f) => f.open(obj).await,
            #[cfg(feature = "s3")]
            Objects::S3(b) => b.open(obj).await,
        }
    }

    /// Writes a small JSON object (a COPY manifest, a quarantine record) whole.
    pub async fn put_small(&self, bucket: &str, key: &str, body: String) -> Result<()> {
        match self {
            Objects::Local(f) => f.put_small(bucket, key, body).await,
            #[cfg(feature = "s3")]
            Objects::S3(b) => b.put_small(bucket, key, body).await,
        }
    }
}
