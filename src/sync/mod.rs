//! `rin-ship sync`: tables from MySQL / Aurora MySQL / MariaDB or PostgreSQL into the
//! warehouse, incrementally, through the same path as logs: rows become gzip (or zstd) NDJSON
//! objects under deterministic keys in a store, and those objects load exactly once through the
//! loader's ledger, with the table's insert mode (default `OVERWRITE_EXISTING` on the key).
//! What AWS Data Pipeline's RDS-to-Redshift template did once a day per pipeline, for many
//! tables, in one config (docs/sync.md).
//!
//! Parts: [`config`] (sync.yaml, and the Rin config of the load half), [`source`] (the
//! databases), [`objects`] (rows to stored objects), [`state`] (the watermark, kept in the
//! store beside the objects), [`ddl`] (target tables and their columns), [`pass`] (one table's
//! pass). The load half is [`crate::load`], unchanged.
//!
//! Must never: advance a watermark before its objects are in the store; write to the source.

pub mod config;
pub mod ddl;
pub mod objects;
pub mod pass;
pub mod reconcile;
pub mod source;
pub mod state;

use crate::common::shutdown;
use crate::load::Loader;
use crate::load::rin::maintenance::TableName;
use crate::queue::notify::Notifier;
use crate::store::config::StoreConfig;
use crate::store::local::Folders;
use crate::store::{Objects, Store};
use anyhow::{Context, Result, anyhow, bail};
use config::{LOCAL_STORE, SyncConfig, TableConfig};
use source::{Source, TableSchema};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, error, info};

/// `rin-ship sync`'s arguments.
pub struct SyncArgs {
    pub config: PathBuf,
    pub once: bool,
    pub dry_run: bool,
    pub import_config: bool,
}

/// What a run shares: the config, where objects go and are read, the loader, and each
/// table's key (from the config, or the source's primary key).
pub struct Sync {
    pub cfg: SyncConfig,
    pub store: Store,
    pub loader: Loader,
    pub keys: Vec<Vec<String>>,
    /// Set when the objects are announced on SQS (`store.notify`) for `rin-ship import` to
    /// load, instead of loaded here.
    pub announcer: Option<Notifier>,
    pub work_dir: PathBuf,
}

impl Sync {
    pub fn state_object(&self, t: &TableConfig) -> state::StateObject<'_> {
        state::StateObject {
            objects: &self.loader.objects,
            bucket: self.cfg.bucket(),
            key: format!(
                "{}{}_state/{}.json",
                self.cfg.store_prefix(),
                self.cfg.prefix,
                t.target_name()
            ),
        }
    }

    /// Table `i`'s target (schema, table) as the loader resolves it.
    pub fn destination(&self, i: usize) -> Result<(String, String)> {
        let t = &self.cfg.tables[i];
        let key = format!(
            "{}{}pass=00000000/000000.json.gz",
            self.cfg.store_prefix(),
            self.cfg.table_prefix(t)
        );
        match self.loader.cfg.route(&self.cfg.bucket(), &key)? {
            crate::load::rin::MatchOutcome::Load(d) if !d.is_empty() => {
                Ok((d[0].schema.clone(), d[0].table.clone()))
            }
            _ => Err(anyhow!("table {}: its objects route to no target", t.name)),
        }
    }
}

pub fn main(args: SyncArgs) -> Result<()> {
    let cfg = SyncConfig::load(&args.config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rin-sync")
        .build()?
        .block_on(run(cfg, args))
}

async fn run(cfg: SyncConfig, args: SyncArgs) -> Result<()> {
    if args.dry_run {
        return dry_run(cfg).await;
    }
    if args.import_config {
        let (_, _, keys) = open(&cfg).await?;
        let order: Vec<Option<String>> = cfg.tables.iter().map(|t| t.watermark.clone()).collect();
        println!("{:#}", cfg.rin_document(&keys, &order)?);
        return Ok(());
    }
    if let Some(bind) = &cfg.metrics_bind {
        serve_metrics(bind).await?;
    }
    if args.once {
        let ok = one_round(&cfg).await?;
        return if ok {
            Ok(())
        } else {
            Err(anyhow!("some tables did not sync (see the errors above)"))
        };
    }
    let schedule = cfg.schedule()?;
    info!(
        tables = cfg.tables.len(),
        "sync: running {}",
        schedule.describe()
    );
    let mut stop = Box::pin(shutdown::signal());
    loop {
        let started = Instant::now();
        if let Err(e) = one_round(&cfg).await {
            error!("sync: {e:#}");
        }
        let wait = schedule.wait_after(started);
        debug!("sync: next pass in {}", humantime::format_duration(wait));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => {
                info!("sync: signal received, stopping");
                return Ok(());
            }
        }
    }
}

/// The operations endpoint (`metrics_bind`): the loader's series and sync's own.
async fn serve_metrics(bind: &str) -> Result<()> {
    use crate::telemetry::catalog::Part;
    use crate::telemetry::{self, Health, Listen, Ops};
    let addr = crate::common::net::parse_bind(bind).map_err(|e| anyhow!("metrics_bind: {e}"))?;
    let handle = telemetry::install_metrics(&[Part::Process, Part::Load, Part::Sync])?;
    let ops = Ops {
        handle,
        health: Health::exported(),
        collectors: Vec::new(),
    };
    let listen = Listen {
        addr,
        setting: "metrics_bind",
        env: None,
    };
    telemetry::serve_ops(listen, ops).await
}

/// Opens the source, reads each table's schema and key.
async fn open(cfg: &SyncConfig) -> Result<(Source, Vec<TableSchema>, Vec<Vec<String>>)> {
    let mut source = Source::connect(&cfg.source).await?;
    let mut schemas = Vec::new();
    let mut keys = Vec::new();
    for t in &cfg.tables {
        let schema = source.schema(&t.name).await?;
        let key = if t.key.is_empty() {
            schema.primary_key.clone()
        } else {
            t.key.clone()
        };
        for k in &key {
            if schema.column(k).is_none() {
                bail!(
                    "table {}: key column {k} is not a column of the source table",
                    t.name
                );
            }
        }
        if t.delete_missing && key.is_empty() {
            bail!(
                "table {}: delete_missing compares keys, and the table has no primary key: \
                 name the columns that identify a row (`key: [id]`)",
                t.name
            );
        }
        if t.mode().keyed() && key.is_empty() {
            bail!(
                "table {}: it has no primary key, and mode {} matches rows on one: name the \
                 columns that identify a row (`key: [id]`)",
                t.name,
                t.mode().name()
            );
        }
        keys.push(key);
        schemas.push(schema);
    }
    Ok((source, schemas, keys))
}

/// One pass of every table; prints the JSON summary. False when a table failed.
async fn one_round(cfg: &SyncConfig) -> Result<bool> {
    let (mut source, schemas, keys) = open(cfg).await?;
    let sync = build(cfg.clone(), keys).await?;
    let mut ok = true;
    let mut tables = Vec::new();
    let mut changed_much = Vec::new();
    for (i, schema) in schemas.iter().enumerate() {
        let t = &cfg.tables[i];
        match pass::run_table(&sync, &mut source, i, schema).await {
            Ok(s) => {
                info!(table = %t.name, rows = s.rows, objects = s.objects, pass = s.pass, "sync: pass done");
                if cfg.maintain_after_rows > 0 && s.loaded_rows >= cfg.maintain_after_rows {
                    let (schema, table) = sync.destination(i)?;
                    changed_much.push(TableName {
                        schema: if schema.is_empty() {
                            "public".into()
                        } else {
                            schema
                        },
                        table,
                    });
                }
                tables.push(serde_json::to_value(&s)?);
            }
            Err(e) => {
                ok = false;
                error!(table = %t.name, "sync: {e:#}");
                metrics::counter!("rin_sync_failures_total", "table" => t.target_name())
                    .increment(1);
                tables.push(serde_json::json!({"table": t.name, "error": format!("{e:#}")}));
            }
        }
    }
    let mut summary = serde_json::json!({"ok": ok, "tables": tables});
    // Announced objects load later, in the importer: nothing changed here yet.
    if sync.announcer.is_none()
        && let Some(m) = maintain(&sync, changed_much).await
    {
        summary["maintenance"] = m;
    }
    println!("{summary}");
    Ok(ok)
}

/// After passes that changed many rows (`maintain_after_rows`), the maintenance round over
/// those tables (the dead rows of OVERWRITE_EXISTING's deletes, fresh statistics): the
/// article's cron'd VACUUM and ANALYZE, done when needed. Wire-protocol warehouses only.
async fn maintain(sync: &Sync, tables: Vec<TableName>) -> Option<serde_json::Value> {
    use crate::load::rin::DriverKind;
    let wire = matches!(
        sync.loader.cfg.targets.first().map(|t| t.driver),
        Some(DriverKind::Postgres | DriverKind::Redshift)
    );
    if tables.is_empty() || !wire {
        return None;
    }
    info!(
        tables = tables.len(),
        "sync: maintenance of the tables that changed the most"
    );
    Some(crate::ops::maintain::round_over(&sync.loader.cfg, tables).await)
}

/// The store, the loader over it, and the work folder.
async fn build(cfg: SyncConfig, keys: Vec<Vec<String>>) -> Result<Sync> {
    let order: Vec<Option<String>> = cfg.tables.iter().map(|t| t.watermark.clone()).collect();
    let rin = Arc::new(cfg.rin_config(&keys, &order)?);
    let store = Store::from_config(LOCAL_STORE, &cfg.store).await?;
    let (loader, work_dir) = match &cfg.store {
        StoreConfig::Local { dir, .. } => {
            let folders = Folders(BTreeMap::from([(LOCAL_STORE.to_string(), dir.clone())]));
            (
                Loader::new(rin, Objects::Local(folders)),
                dir.join(".sync-work"),
            )
        }
        #[cfg(feature = "s3")]
        StoreConfig::S3(_) => (
            Loader::over_s3(rin).await,
            std::env::temp_dir().join("rin-ship-sync"),
        ),
        #[cfg(not(feature = "s3"))]
        StoreConfig::S3(_) => bail!("this rin-ship was built without the `s3` feature"),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    let announcer = Notifier::for_store(&cfg.store, None).await?;
    if let Some(a) = &announcer {
        info!(
            "sync: the objects of each pass are announced on {} for rin-ship import (print its config with --import-config)",
            a.describe()
        );
    }
    Ok(Sync {
        cfg,
        store,
        loader,
        keys,
        work_dir,
        announcer,
    })
}

/// Prints, per table, the source schema, the target DDL (when the target is missing) and the
/// first pass's query; writes and loads nothing.
async fn dry_run(cfg: SyncConfig) -> Result<()> {
    let (_source, schemas, keys) = open(&cfg).await?;
    let sync = build(cfg.clone(), keys).await?;
    for (i, schema) in schemas.iter().enumerate() {
        let t = &cfg.tables[i];
        let (ts, tt) = sync.destination(i)?;
        println!("-- table {} -> {}", t.name, t.target_name());
        for c in &schema.columns {
            println!("--   {} {}", c.name, c.source_type);
        }
        let st = sync.state_object(t).read().await?;
        println!(
            "-- pass {}: {}",
            st.pass + 1,
            match (&t.watermark, &st.watermark) {
                (Some(w), Some(last)) => format!("rows with {w} >= {last} minus the overlap"),
                _ => "a full snapshot".to_string(),
            }
        );
        ddl::ensure_target(
            sync.loader.cfg.target(i),
            sync.loader.cfg.ext.sslmode,
            (&ts, &tt),
            schema,
            &sync.keys[i],
            cfg.schema == config::SchemaMode::Evolve,
            true,
        )
        .await?;
    }
    Ok(())
}
