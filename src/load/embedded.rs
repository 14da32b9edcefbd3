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
use super::consume::consume;
use super::ledger::{Dialect, Ledger};
use super::rin::RinConfig;
use crate::common::shutdown::{self, Trigger};
use crate::config::{Config, NotifyConfig, StoreConfig};
use crate::queue::Queue;
use crate::queue::local::LocalQueue;
use crate::ship::key::KeyTemplate;
use crate::store::Objects;
use crate::store::local::Folders;
use anyhow::{Context, Result};
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

/// The Rin config of the embedded loader (see the module docs).
pub fn rin_config(config: &Config) -> Result<RinConfig> {
    let mut targets = Vec::new();
    for t in &config.targets {
        let store = &config.stores[&t.store];
        if !matches!(store, StoreConfig::Local { .. }) || store.notify() != &NotifyConfig::Local {
            continue;
        }
        let (re, by_tag) = KeyTemplate::parse(&t.key)
            .map_err(anyhow::Error::msg)?
            .regex(&t.name);
        let table = if by_tag { "$1" } else { t.name.as_str() };
        targets.push(serde_json::json!({
            "redshift": {"table": table},
            "s3": {"bucket": t.store, "key_regexp": re},
            "break": true,
        }));
    }
    let doc = serde_json::json!({
        "redshift": {
            "driver": "sqlite",
            "dbname": config.warehouse_path().to_string_lossy(),
        },
        "targets": targets,
        "rin_ship": {
            "queue_url": format!("local:{}", config.queue_dir().display()),
            "concurrency": 1,
            "wait_time_seconds": 20,
            "visibility_timeout_seconds": 60,
        },
    });
    // JSON is YAML; no environment: nothing in it is a template.
    RinConfig::parse(&doc.to_string(), &|_| None).context("the embedded loader's Rin config")
}

/// Starts the loader on `queue` (opened by serve, which the shipper's notifications feed).
pub async fn start(config: &Config, queue: LocalQueue) -> Result<Embedded> {
    let cfg = Arc::new(rin_config(config)?);
    // Open the warehouse once now: a file that is not SQLite fails serve at start.
    let path = config.warehouse_path();
    let ledger = Ledger::new(&cfg, Dialect::Sqlite);
    let p = path.clone();
    tokio::task::spawn_blocking(move || super::warehouse::sqlite::open(&p, &ledger)).await??;
    let folders = config
        .stores
        .iter()
        .filter_map(|(name, s)| match s {
            StoreConfig::Local { dir, .. } => Some((name.clone(), dir.clone())),
            StoreConfig::S3(_) => None,
        })
        .collect();
    let loader = Arc::new(Loader::new(cfg, Objects::Local(Folders(folders))));
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
        false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::rin::{Destination, MatchOutcome};

    #[test]
    fn default_key_maps_tag_to_table() {
        let (re, by_tag) = KeyTemplate::parse(crate::config::DEFAULT_KEY)
            .unwrap()
            .regex("default");
        assert!(by_tag);
        let r = regex::Regex::new(&re).unwrap();
        let key = "logs/app.web/dt=2026-11-23/hour=09/myhost-1a2b3c4d-0000000001.json.gz";
        assert_eq!(&r.captures(key).unwrap()[1], "app.web");
        assert!(!r.is_match("logs/app.web/x/../y.json.gz"));
    }

    #[test]
    fn derived_config_routes_keys() {
        let mut c = Config::parse(
            "embedded_load: true\ndata_dir: /tmp/x\nstores: {other: {type: local, dir: /tmp/o}}\n\
             targets:\n  - {name: a, match: ['a.**'], store: other, key: 'flat/{seq}.gz'}\n  - {name: b, match: ['**']}\n",
        )
        .unwrap();
        c.fill_defaults();
        c.validate().unwrap();
        let cfg = rin_config(&c).unwrap();
        assert_eq!(cfg.targets.len(), 2);
        assert_eq!(cfg.targets[0].driver, crate::load::rin::DriverKind::Sqlite);
        assert_eq!(cfg.targets[0].redshift.dbname, "/tmp/x/warehouse.db");
        let load = |bucket: &str, key: &str| cfg.route(bucket, key).unwrap();
        assert_eq!(
            load("other", "flat/0000000001.gz"),
            MatchOutcome::Load(vec![Destination {
                target: 0,
                schema: String::new(),
                table: "a".into()
            }])
        );
        assert_eq!(
            load(
                "local",
                "logs/x.y-z/dt=2024-05-01/hour=12/n-0000000001.json.gz"
            ),
            MatchOutcome::Load(vec![Destination {
                target: 1,
                schema: String::new(),
                table: "x.y-z".into()
            }])
        );
        assert_eq!(load("local", "flat/0000000001.gz"), MatchOutcome::NoTarget);
        // A name only SQLite's own tables may have is refused, not loaded.
        assert!(
            cfg.route(
                "local",
                "logs/sqlite_master/dt=2024-05-01/hour=12/n-0000000001.json.gz"
            )
            .is_err()
        );
    }
}
