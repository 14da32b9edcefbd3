//! `serve`'s embedded loader (`embedded_load`): the COPY stage run in-process against the
//! embedded warehouse, so `rin-ship serve` with no cloud shows the whole pipeline from forward
//! record to table row.
//!
//! Local stores notify the local queue ([`crate::queue::local`]); this consumes it with the
//! importer's own loop ([`super::consume`]), reading objects from the stores' folders
//! ([`Objects::Local`]) into SQLite ([`super::warehouse::sqlite`]). The Rin config is derived
//! from serve's targets: each key template becomes a `key_regexp` over the store's bucket (its
//! name; [`KeyTemplate::regex`], the shipper's own grammar), the first `{tag}` the table (`logs/{tag}/dt=%Y-%m-%d/hour=%H/{node}-{seq}.json.gz` loads
//! `logs/app.web/...` into the table `"app.web"`); a template without `{tag}` loads into a
//! table named after the target.
//!
//! Shutdown: after shipping finished, the queue is drained (until nothing is waiting and the
//! loader waits for more) within serve's shutdown deadline; what is left stays queued for the
//! next start.

use super::Loader;
use super::consume::{Until, consume};
use super::ledger::{Dialect, Ledger};
use super::rin::RinConfig;
use crate::common::shutdown::{self, Trigger};
use crate::queue::Queue;
use crate::queue::local::LocalQueue;
use crate::ship::key::KeyTemplate;
use crate::store::Objects;
use crate::store::local::Folders;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The running loader.
pub struct Embedded {
    loader: Arc<Loader>,
    queue: LocalQueue,
    stop: Trigger,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// What `serve` tells the embedded loader: where its objects, queue and warehouse are.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The targets that ship to a local store notifying the local queue: (target name, store
    /// name, key template).
    pub targets: Vec<(String, String, String)>,
    /// The local stores' folders, by store name.
    pub folders: BTreeMap<String, PathBuf>,
    /// The SQLite file.
    pub warehouse: PathBuf,
    /// The local queue's folder.
    pub queue_dir: PathBuf,
}

/// The Rin config of the embedded loader (see the module docs).
pub fn rin_config(setup: &Setup) -> Result<RinConfig> {
    let mut targets = Vec::new();
    for (name, store, key) in &setup.targets {
        let (re, by_tag) = KeyTemplate::parse(key)
            .map_err(anyhow::Error::msg)?
            .regex(name);
        let table = if by_tag { "$1" } else { name.as_str() };
        targets.push(serde_json::json!({
            "redshift": {"table": table},
            "s3": {"bucket": store, "key_regexp": re},
            "break": true,
        }));
    }
    let doc = serde_json::json!({
        "redshift": {
            "driver": "sqlite",
            "dbname": setup.warehouse.to_string_lossy(),
        },
        "targets": targets,
        "rin_ship": {
            "queue_url": format!("local:{}", setup.queue_dir.display()),
            "concurrency": 1,
            "wait_time_seconds": 20,
            "visibility_timeout_seconds": 60,
        },
    });
    // JSON is YAML; no environment: nothing in it is a template.
    RinConfig::parse(&doc.to_string(), &|_| None).context("the embedded loader's Rin config")
}

/// Starts the loader on `queue` (opened by serve, which the shipper's notifications feed).
pub async fn start(setup: &Setup, queue: LocalQueue) -> Result<Embedded> {
    let cfg = Arc::new(rin_config(setup)?);
    // Open the warehouse once now: a file that is not SQLite fails serve at start.
    let path = setup.warehouse.clone();
    let ledger = Ledger::new(&cfg, Dialect::Sqlite);
    let p = path.clone();
    tokio::task::spawn_blocking(move || super::warehouse::sqlite::open(&p, &ledger)).await??;
    let folders = Folders(setup.folders.clone());
    let loader = Arc::new(Loader::new(cfg, Objects::Local(folders)));
    let (stop, stopping) = shutdown::channel();
    let (ready, inflight) = queue.depth();
    info!(
        warehouse = %path.display(),
        queue = %queue.describe(),
        queued = ready + inflight,
        "embedded loader running"
    );
    for t in &loader.cfg.targets {
        info!("embedded target {}: {}", t.index, t.describe());
    }
    let task = tokio::spawn(consume(
        loader.clone(),
        Queue::Local(queue.clone()),
        stopping,
        Until::Stopped,
    ));
    Ok(Embedded {
        loader,
        queue,
        stop,
        task,
    })
}

impl Embedded {
    /// Loads what is queued until `deadline` (call it once shipping finished), then stops.
    /// Loads in flight at the deadline get a short grace; what is left stays queued.
    pub async fn shutdown(self, deadline: Instant) {
        let consumers = self.loader.cfg.ext.concurrency;
        while !self.queue.drained(consumers) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.trigger();
        let grace = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(2));
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!("embedded loader: {e:#}"),
            Ok(Err(e)) => warn!("embedded loader task: {e}"),
            Err(_) => warn!(
                "embedded loader still loading at the deadline; the load is rolled back and retried at the next start"
            ),
        }
        let (ready, inflight) = self.queue.depth();
        let summary = self.loader.stats.json();
        if ready + inflight == 0 {
            info!(%summary, "embedded loader stopped; queue empty");
        } else {
            warn!(
                %summary,
                queued = ready + inflight,
                "embedded loader stopped with messages queued; they load at the next start"
            );
        }
    }
}
