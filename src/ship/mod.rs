//! Shipping: uploads sealed chunks to their target's object store under deterministic keys,
//! and deletes a chunk only after the store confirmed the object. Owns retries and upload
//! concurrency; it must never delete a chunk that was not confirmed, and never invent a key
//! that depends on anything but the chunk itself (so a retry rewrites, never duplicates).

pub mod key;
pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

use crate::buffer::chunk::{SealedChunk, retire};
use crate::buffer::{Sealed, Usage};
use crate::config::{Config, StoreConfig};
use anyhow::Result;
use key::{KeyInputs, KeyTemplate};
use rand::Rng;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

/// Where objects go.
pub enum Store {
    Local(local::LocalStore),
    #[cfg(feature = "s3")]
    S3(s3::S3Store),
}

impl Store {
    pub async fn from_config(config: &StoreConfig) -> Result<Store> {
        Ok(match config {
            StoreConfig::Local { dir } => Store::Local(local::LocalStore::new(dir.clone())?),
            #[cfg(feature = "s3")]
            StoreConfig::S3(s3) => Store::S3(s3::S3Store::new(s3).await?),
            #[cfg(not(feature = "s3"))]
            StoreConfig::S3(_) => anyhow::bail!("this rin-ship was built without the `s3` feature"),
        })
    }

    /// Uploads the file as the object `key`. Returns only once the store confirmed it.
    pub async fn put(&self, key: &str, path: &Path, size: u64) -> Result<()> {
        #[cfg(not(feature = "s3"))]
        let _ = size;
        match self {
            Store::Local(s) => s.put(key, path).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.put(key, path, size).await,
        }
    }

    /// A short description for logs (never credentials).
    pub fn describe(&self) -> String {
        match self {
            Store::Local(s) => format!("folder {}", s.dir().display()),
            #[cfg(feature = "s3")]
            Store::S3(s) => s.describe(),
        }
    }
}

struct ShipTarget {
    name: String,
    key: KeyTemplate,
    store: Arc<Store>,
}

pub struct Shipper {
    targets: Vec<ShipTarget>,
    node: String,
    slots: Arc<Semaphore>,
    max_backoff: Duration,
    usage: Arc<Usage>,
}

impl Shipper {
    pub async fn new(config: &Config, node: String, usage: Arc<Usage>) -> Result<Shipper> {
        let mut stores = std::collections::HashMap::new();
        let mut targets = Vec::new();
        for t in &config.targets {
            if !stores.contains_key(&t.store) {
                let store = Store::from_config(&config.stores[&t.store]).await?;
                info!(store = %t.store, "object store: {}", store.describe());
                stores.insert(t.store.clone(), Arc::new(store));
            }
            targets.push(ShipTarget {
                name: t.name.clone(),
                key: KeyTemplate::parse(&t.key).map_err(anyhow::Error::msg)?,
                store: stores[&t.store].clone(),
            });
        }
        Ok(Shipper {
            targets,
            node,
            slots: Arc::new(Semaphore::new(config.ship.concurrency)),
            max_backoff: config.ship.max_backoff.0,
            usage,
        })
    }

    pub fn key_for(&self, target: usize, chunk: &SealedChunk) -> String {
        let t = &self.targets[target];
        t.key.render(&KeyInputs {
            target: &t.name,
            node: &self.node,
            seq: chunk.seq,
            tag: &chunk.partition,
            first_time: chunk.first_time,
        })
    }

    /// Uploads chunks as they are sealed, until the channel closes and all uploads finished.
    /// Chunks are taken in the order they were sealed; several upload at once.
    pub async fn run(self: Arc<Self>, mut sealed: mpsc::UnboundedReceiver<Sealed>) {
        let mut tasks = tokio::task::JoinSet::new();
        while let Some((target, chunk)) = sealed.recv().await {
            let permit = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore closed");
            let this = self.clone();
            tasks.spawn(async move {
                this.ship(target, chunk).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Uploads one chunk, retrying with exponential backoff and jitter until it succeeds.
    async fn ship(&self, target: usize, chunk: SealedChunk) {
        let key = self.key_for(target, &chunk);
        let store = &self.targets[target].store;
        let mut backoff = Duration::from_millis(200);
        let mut attempt = 1u32;
        loop {
            let started = Instant::now();
            match store.put(&key, &chunk.data_path, chunk.size).await {
                Ok(()) => {
                    metrics::counter!("rin_objects_uploaded_total").increment(1);
                    metrics::counter!("rin_uploaded_bytes_total").increment(chunk.size);
                    metrics::histogram!("rin_upload_seconds")
                        .record(started.elapsed().as_secs_f64());
                    debug!(%key, events = chunk.events, ndjson_bytes = chunk.bytes, object_bytes = chunk.size, "uploaded");
                    let disk = chunk.disk_bytes();
                    match retire(&chunk) {
                        Ok(()) => {
                            self.usage.sub(disk);
                            metrics::gauge!("rin_buffer_chunks", "state" => "sealed")
                                .decrement(1.0);
                        }
                        Err(e) => {
                            warn!(%key, "uploaded, but cannot delete the chunk file (it will be uploaded again, to the same key): {e}")
                        }
                    }
                    return;
                }
                Err(e) => {
                    metrics::counter!("rin_upload_errors_total").increment(1);
                    let jitter = rand::rng().random_range(0.5..1.5);
                    let wait = backoff.mul_f64(jitter).min(self.max_backoff);
                    warn!(%key, attempt, retry_in = ?wait, "upload failed: {e:#}");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                    attempt += 1;
                    metrics::counter!("rin_upload_retries_total").increment(1);
                }
            }
        }
    }
}
