//! One pass of one table, in four named steps:
//! 1. [`finish_pending`]: a pass a crash left with its objects stored but not known loaded is
//!    loaded first (the ledger skips what committed), and only then does its watermark count;
//! 2. read: a snapshot of the source, its newest watermark, and the rows at or after the last
//!    watermark minus the overlap (every row on the first pass), streamed into objects;
//! 3. record: the objects and the new watermark as `pending` ([`super::state`]);
//! 4. load: every object through the loader's ledger, then the state says the pass is done.
//!
//! Must never: record a watermark before every object of its pass is in the store; delete
//! anything from the source.

use super::Sync;
use super::config::TableConfig;
use super::ddl::{TargetCheck, ensure_target};
use super::objects::ObjectWriter;
use super::source::{PassQuery, Source, TableSchema};
use super::state::{Pending, PendingObject, StateObject, TableState};
use crate::load::deliver::load_objects;
use crate::load::stats::get;
use crate::load::warehouse::Sessions;
use crate::queue::event::ObjectEvent;
use crate::queue::notify::Notifier;
use crate::store::Stored;
use anyhow::{Result, anyhow, bail};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What one pass of one table did (a line of `--once`'s JSON summary).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TableSummary {
    pub table: String,
    pub target: String,
    pub pass: u64,
    /// Whether it started from the last watermark (false: a full snapshot).
    pub incremental: bool,
    pub watermark_from: Option<String>,
    pub watermark_to: Option<String>,
    /// Rows deleted from the target because their key is gone from the source
    /// (`delete_missing`; absent when the reconciliation did not run this pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_rows: Option<u64>,
    /// How far the newest watermark was behind the source's clock when the pass began.
    pub watermark_lag_seconds: Option<f64>,
    pub rows: u64,
    pub objects: usize,
    pub bytes: u64,
    pub raw_bytes: u64,
    /// Objects of a pass a crash interrupted, loaded before this one.
    pub recovered_objects: usize,
    pub loaded_rows: u64,
    pub duplicate_objects: u64,
    pub target_check: TargetCheck,
    pub seconds: f64,
}

/// Runs one pass of table `i`.
pub async fn run_table(
    sync: &Sync,
    source: &mut Source,
    i: usize,
    schema: &TableSchema,
) -> Result<TableSummary> {
    let started = Instant::now();
    let t = &sync.cfg.tables[i];
    let state_obj = sync.state_object(t);
    let mut state = state_obj.read().await?;
    let before = (
        get(&sync.loader.stats.loaded_rows),
        get(&sync.loader.stats.duplicates),
    );
    let mut summary = TableSummary {
        table: t.name.clone(),
        target: t.target_name(),
        ..TableSummary::default()
    };
    summary.recovered_objects = finish_pending(sync, &state_obj, &mut state).await?;
    let (tschema, ttable) = sync.destination(i)?;
    summary.target_check = ensure_target(
        sync.loader.cfg.target(i),
        sync.loader.cfg.ext.sslmode,
        (&tschema, &ttable),
        schema,
        &sync.keys[i],
        sync.cfg.schema == super::config::SchemaMode::Evolve,
        false,
    )
    .await?;

    // 2. read
    let query = pass_query(sync, t, schema, &state)?;
    summary.incremental = query.since.is_some();
    summary.watermark_from = state.watermark.clone();
    let pass = state.pass + 1;
    summary.pass = pass;
    let newest = source.begin(&query).await?;
    let key_base = format!("{}pass={pass:08}/", sync.cfg.table_prefix(t));
    let work = sync.work_dir.join(format!("{}.part", t.target_name()));
    let estimate = source.estimate_rows(&t.name).await;
    let mut writer = ObjectWriter::new(
        &sync.store,
        key_base,
        sync.cfg.compression,
        sync.cfg.rows_per_object,
        work,
        &t.name,
        estimate,
    );
    summary.rows = source.stream(&query, &mut writer).await?;
    summary.raw_bytes = writer.raw_bytes;
    let written = writer.finish().await?;
    summary.objects = written.len();
    summary.bytes = written.iter().map(|w| w.size).sum();
    let watermark = newest.watermark.or(state.watermark.clone());
    summary.watermark_to = watermark.clone();
    if written.is_empty() {
        info!(table = %t.name, pass, "sync: no rows changed since the last pass");
    } else {
        // 3. record
        state.pending = Some(Pending {
            pass,
            watermark,
            objects: written.iter().map(PendingObject::of).collect(),
        });
        state_obj.write(&state).await?;
        // 4. load
        finish_pending(sync, &state_obj, &mut state).await?;
    }
    // 5. deletes (delete_missing): once the pass is in, the keys the source no longer has.
    if t.delete_missing && reconcile_due(t, &state) {
        let qualified = if tschema.is_empty() {
            crate::load::rin::quote_ident(&ttable)
        } else {
            format!(
                "{}.{}",
                crate::load::rin::quote_ident(&tschema),
                crate::load::rin::quote_ident(&ttable)
            )
        };
        let (keys, deleted) = super::reconcile::delete_missing(
            source,
            &t.name,
            t.filter.as_deref(),
            sync.loader.cfg.target(i),
            sync.loader.cfg.ext.sslmode,
            &qualified,
            &sync.keys[i],
        )
        .await?;
        info!(table = %t.name, source_keys = keys, deleted, "sync: rows whose key is gone from the source deleted");
        metrics::counter!("rin_sync_deleted_rows_total", "table" => t.target_name())
            .increment(deleted);
        state.reconciled_at = Some(crate::telemetry::unix_now() as u64);
        state_obj.write(&state).await?;
        summary.deleted_rows = Some(deleted);
    }
    summary.loaded_rows = get(&sync.loader.stats.loaded_rows) - before.0;
    summary.duplicate_objects = get(&sync.loader.stats.duplicates) - before.1;
    summary.seconds = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    metrics::counter!("rin_sync_rows_total", "table" => t.target_name()).increment(summary.rows);
    metrics::histogram!("rin_sync_pass_duration_seconds", "table" => t.target_name())
        .record(summary.seconds);
    metrics::gauge!("rin_sync_last_pass_timestamp_seconds", "table" => t.target_name())
        .set(crate::telemetry::unix_now());
    if let Some(lag) = newest.lag_seconds {
        metrics::gauge!("rin_sync_watermark_lag_seconds", "table" => t.target_name()).set(lag);
    }
    summary.watermark_lag_seconds = newest.lag_seconds.map(|l| (l * 10.0).round() / 10.0);
    Ok(summary)
}

/// Whether the key reconciliation is due: never ran, or ran `reconcile_every` (24h) ago.
fn reconcile_due(t: &TableConfig, state: &TableState) -> bool {
    let every = t.reconcile_every.map_or(86_400, |s| s.0.as_secs());
    let now = crate::telemetry::unix_now() as u64;
    state
        .reconciled_at
        .is_none_or(|at| now.saturating_sub(at) >= every)
}

/// The rows this pass reads.
fn pass_query<'a>(
    sync: &Sync,
    t: &'a TableConfig,
    schema: &'a TableSchema,
    state: &'a TableState,
) -> Result<PassQuery<'a>> {
    let watermark = match &t.watermark {
        None => None,
        Some(w) => Some(schema.column(w).ok_or_else(|| {
            anyhow!(
                "table {}: watermark column {w} is not a column of the source table",
                t.name
            )
        })?),
    };
    if let Some(w) = watermark
        && !(w.kind.is_time() || w.kind.is_integer())
    {
        bail!(
            "table {}: watermark column {} is {}: a watermark is a time or an integer column",
            t.name,
            w.name,
            w.source_type
        );
    }
    let since = match (watermark, &state.watermark) {
        (Some(w), Some(last)) => Some((
            last.as_str(),
            t.overlap(sync.cfg.overlap.0, w.kind.is_time())?,
        )),
        _ => None,
    };
    Ok(PassQuery {
        table: &t.name,
        schema,
        filter: t.filter.as_deref(),
        watermark,
        since,
    })
}

/// Loads the objects of the pending pass, if any, then marks the pass done. Returns how many
/// objects it held.
async fn finish_pending(
    sync: &Sync,
    state_obj: &StateObject<'_>,
    state: &mut TableState,
) -> Result<usize> {
    let Some(p) = state.pending.clone() else {
        return Ok(0);
    };
    match &sync.announcer {
        None => load_all(sync, &p).await?,
        Some(announcer) => announce_all(sync, announcer, &p).await?,
    }
    state.pass = p.pass;
    state.watermark = p.watermark.clone();
    state.pending = None;
    state_obj.write(state).await?;
    Ok(p.objects.len())
}

/// Announces every object of a pass on the queue, as the shipper announces a chunk, for
/// `rin-ship import` to load. A crash before the pass is marked done announces them all again
/// on the next run: the importer's ledger takes a repeat as a duplicate (same key and ETag).
async fn announce_all(sync: &Sync, announcer: &Notifier, p: &Pending) -> Result<()> {
    let bucket = sync.cfg.bucket();
    for o in &p.objects {
        let stored = Stored {
            bucket: bucket.clone(),
            key: o.key.clone(),
            etag: o.etag.clone(),
            event_name: "ObjectCreated:Put",
        };
        let mut attempt = 0u32;
        while let Err(e) = announcer.send(&stored, o.size).await {
            attempt += 1;
            metrics::counter!("rin_notification_errors_total").increment(1);
            if attempt >= 4 {
                bail!(
                    "cannot announce {} on {} ({e:#}); the pass stays recorded and the next run \
                     announces its objects again",
                    o.key,
                    announcer.describe()
                );
            }
            warn!(key = %o.key, attempt, "sync: announcing failed, retrying: {e:#}");
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        }
        metrics::counter!("rin_notifications_total").increment(1);
    }
    info!(
        pass = p.pass,
        objects = p.objects.len(),
        "sync: objects announced"
    );
    Ok(())
}

/// Every object of a pass, in one call of the loader (one group per target: a TRUNCATE pass
/// replaces the table once), retried a few times while some fail.
async fn load_all(sync: &Sync, p: &Pending) -> Result<()> {
    let bucket = sync.cfg.bucket();
    let mut left: Vec<&PendingObject> = p.objects.iter().collect();
    for attempt in 0u32..4 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        }
        let events: Vec<(ObjectEvent, usize, &str)> = left
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let event = ObjectEvent {
                    bucket: bucket.clone(),
                    key: o.key.clone(),
                    etag: o.etag.clone(),
                    version_id: String::new(),
                    size: o.size,
                    event_name: "ObjectCreated:Put".into(),
                    created: true,
                };
                (event, i, "sync")
            })
            .collect();
        let mut failed = vec![false; left.len()];
        let mut sessions = Sessions::default();
        load_objects(&sync.loader, &mut sessions, events, &mut failed).await;
        left = left
            .into_iter()
            .zip(&failed)
            .filter(|(_, f)| **f)
            .map(|(o, _)| o)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        warn!(
            pass = p.pass,
            failed = left.len(),
            attempt = attempt + 1,
            "sync: objects did not load (see the errors above); retrying"
        );
    }
    bail!(
        "{} object(s) of pass {} did not load (first: {}); they stay recorded, and the next run \
         loads them before reading on",
        left.len(),
        p.pass,
        left[0].key
    )
}
