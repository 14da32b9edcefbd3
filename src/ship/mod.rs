//! Shipping: uploads sealed chunks to their target's object store under deterministic keys,
//! announces each object when its store has a `notify` ([`crate::queue::notify`]), and deletes a chunk only
//! after the store confirmed the object and the queue accepted its notification. Owns retries
//! and upload concurrency; it must never delete a chunk that was not confirmed (or whose
//! notification was not accepted), and never invent a key that depends on anything but the
//! chunk itself (so a retry rewrites, never duplicates).

pub mod key;

use crate::buffer::chunk::{SealedChunk, retire};
use crate::buffer::{Sealed, Usage, chain_is_disk_full};
use crate::common::retry::{self, Backoff};
use crate::common::units::Span;
use crate::queue::local::LocalQueue;
use crate::queue::notify::Notifier;
use crate::store::config::StoreConfig;
use crate::store::{Store, Stored};
use anyhow::Result;
use key::{KeyInputs, KeyTemplate};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ShipConfig {
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// On SIGTERM, how long to keep uploading before exiting (the rest ships on next start).
    pub shutdown_timeout: Span,
    /// Upper bound of the retry backoff between failed uploads.
    pub max_backoff: Span,
}

impl Default for ShipConfig {
    fn default() -> Self {
        ShipConfig {
            concurrency: 4,
            shutdown_timeout: Span(Duration::from_secs(30)),
            max_backoff: Span(Duration::from_secs(60)),
        }
    }
}

/// A target as the shipper sees it (from serve's config).
pub struct TargetSpec<'a> {
    pub name: &'a str,
    /// The name of the store its objects go to.
    pub store: &'a str,
    /// The object key template.
    pub key: &'a str,
}

struct ShipTarget {
    name: String,
    key: KeyTemplate,
    store: Arc<Store>,
    /// Told about each object before its chunk is deleted.
    notifier: Option<Arc<Notifier>>,
    /// `rin_events_out_total{target}`, registered at start.
    events_out: metrics::Counter,
}

pub struct Shipper {
    targets: Vec<ShipTarget>,
    node: String,
    slots: Arc<Semaphore>,
    max_backoff: Duration,
    usage: Arc<Usage>,
}

impl Shipper {
    /// `targets` in the buffer's order; `stores` by name; `local_queue`: the queue stores
    /// with `notify: local` send to (open when one does).
    pub async fn new(
        config: &ShipConfig,
        targets: &[TargetSpec<'_>],
        stores: &BTreeMap<String, StoreConfig>,
        node: String,
        usage: Arc<Usage>,
        local_queue: Option<&LocalQueue>,
    ) -> Result<Shipper> {
        let mut open = std::collections::HashMap::new();
        let mut ship_targets = Vec::new();
        for t in targets {
            if !open.contains_key(t.store) {
                let cfg = &stores[t.store];
                let store = Store::from_config(t.store, cfg).await?;
                info!(store = %t.store, "object store: {}", store.describe());
                let notifier = Notifier::for_store(cfg, local_queue).await?;
                if let Some(n) = &notifier {
                    info!(store = %t.store, "object-created events to {}", n.describe());
                }
                open.insert(t.store, (Arc::new(store), notifier.map(Arc::new)));
            }
            let (store, notifier) = &open[t.store];
            ship_targets.push(ShipTarget {
                name: t.name.to_string(),
                key: KeyTemplate::parse(t.key).map_err(anyhow::Error::msg)?,
                store: store.clone(),
                notifier: notifier.clone(),
                events_out: metrics::counter!("rin_events_out_total", "target" => t.name.to_string()),
            });
        }
        Ok(Shipper {
            targets: ship_targets,
            node,
            slots: Arc::new(Semaphore::new(config.concurrency)),
            max_backoff: config.max_backoff.0,
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

    /// Uploads one chunk, retrying with exponential backoff and jitter until it succeeds, then
    /// sends its notification (if its store has one), retrying likewise, then deletes it.
    async fn ship(&self, target: usize, chunk: SealedChunk) {
        let key = self.key_for(target, &chunk);
        let store = &self.targets[target].store;
        let stored = retry::until_ok(
            self.backoff(),
            || async {
                let started = Instant::now();
                let stored = store
                    .put(&key, &chunk.data_path, chunk.size, chunk.codec)
                    .await?;
                metrics::histogram!("rin_upload_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                anyhow::Ok(stored)
            },
            |e, attempt, wait| {
                metrics::counter!("rin_upload_errors_total").increment(1);
                metrics::counter!("rin_upload_retries_total").increment(1);
                warn!(%key, attempt, retry_in = ?wait, "upload failed: {e:#}");
                if let Some(dir) = store.local_dir() {
                    self.disk_full_in("object_store", dir, e);
                }
            },
        )
        .await;
        metrics::counter!("rin_objects_uploaded_total").increment(1);
        metrics::counter!("rin_uploaded_bytes_total").increment(chunk.size);
        self.targets[target].events_out.increment(chunk.events);
        crate::telemetry::set_to_now("rin_last_upload_timestamp_seconds");
        debug!(%key, events = chunk.events, ndjson_bytes = chunk.bytes, object_bytes = chunk.size, "uploaded");
        if let Some(n) = &self.targets[target].notifier {
            // Before the delete: a crash in between uploads and notifies again.
            self.notify(n, &stored, chunk.size).await;
        }
        let disk = chunk.disk_bytes();
        match retire(&chunk) {
            Ok(()) => {
                self.usage.sub(disk);
                metrics::gauge!("rin_buffer_chunks", "state" => "sealed").decrement(1.0);
            }
            Err(e) => {
                warn!(%key, "uploaded, but cannot delete the chunk file (it will be uploaded again, to the same key): {e}")
            }
        }
    }

    /// Sends an object's notification, retrying with the upload backoff until the queue
    /// accepted it (the chunk is not deleted before).
    async fn notify(&self, n: &Notifier, stored: &Stored, size: u64) {
        retry::until_ok(
            self.backoff(),
            || n.send(stored, size),
            |e, attempt, wait| {
                metrics::counter!("rin_notification_errors_total").increment(1);
                warn!(key = %stored.key, attempt, retry_in = ?wait, "notification failed (the chunk is kept until it is sent): {e:#}");
                if let Some(dir) = n.local_dir() {
                    self.disk_full_in("queue", dir, e);
                }
            },
        )
        .await;
        metrics::counter!("rin_notifications_total").increment(1);
        debug!(key = %stored.key, etag = %stored.etag, "notified");
    }

    /// A failed write to a local folder for want of space pushes intake back as a full buffer
    /// disk does (the chunks cannot drain meanwhile); `usage` says so once and counts it.
    fn disk_full_in(&self, stage: &'static str, dir: &std::path::Path, e: &anyhow::Error) {
        if chain_is_disk_full(e) {
            let io = e
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .find(|io| crate::buffer::is_disk_full(io))
                .expect("chain_is_disk_full found one");
            self.usage.disk_full(stage, dir, io);
        }
    }

    /// Uploads and notifications: 200 ms doubling to `ship.max_backoff`, jittered.
    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_millis(200), self.max_backoff).jitter(0.5, 1.5)
    }
}
