//! The ledger of loaded objects and the transaction that makes a load exactly-once:
//!
//! ```text
//! BEGIN; LOCK ledger; SELECT (already loaded?) per object;
//!   load the new objects (Redshift: one COPY over a manifest; PostgreSQL: stream each object);
//!   INSERT INTO ledger (one row per object); COMMIT;
//! ```
//!
//! The lock serializes every importer on that warehouse, so two of them can never both find an
//! object missing and load it. A ledger row is keyed by (bucket, object_key, etag, version_id,
//! target): the same bytes under the same key load once per target table; new content under
//! the same key (another ETag) loads again.
//!
//! "Load the new objects" follows the target's insert mode (`APPEND`, `KEEP_EXISTING`,
//! `OVERWRITE_EXISTING`, `TRUNCATE`; see [`redshift::load_statements`] and
//! [`postgres::keyed_sql`]), always inside this transaction. A failure comes back classified
//! ([`LoadFailure`], [`classify`]: data, transient or other) and, for a data error, names the
//! objects at fault and, where the warehouse tells, line and column; [`quarantine`] writes their
//! record. Quarantined objects get no ledger row: the ledger lists loaded objects only.

use super::objects::{Body, Fetched, Source};
use super::postgres::{self, STAGE_DDL, StageError};
use super::redshift;
use super::rin::{Destination, InsertMode, RinConfig, Warehouse, quote_ident, split_qualified};
use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

/// One object to load into one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub version_id: String,
    /// Bytes as stored (from the event or listing; 0 when unknown): for the free-space check.
    pub size: u64,
}

impl Item {
    /// `s3://bucket/key`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// What a failed load calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad rows or a bad object (SQLSTATE classes 22 and 23, bad gzip or JSON, Redshift's
    /// "Load into table ... failed"): retrying cannot help; the object goes to quarantine.
    Data,
    /// The connection, a restart, resources, serialization, a lock timeout, an S3 read:
    /// retried with backoff, then left for redelivery.
    Transient,
    /// Anything else (a missing table or column, permissions, a bad manifest): the message
    /// stays on the queue for its redrive policy.
    Other,
}

impl ErrorKind {
    /// The `kind` label of `rin_import_load_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Data => "data",
            ErrorKind::Transient => "transient",
            ErrorKind::Other => "other",
        }
    }
}

/// Where in an object a data error is, as precisely as the warehouse tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    /// The object's `s3://` URL (from Redshift: as its load-error view keeps it).
    pub url: String,
    pub line: Option<u64>,
    pub column: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)?;
        if let Some(l) = self.line {
            write!(f, " line {l}")?;
        }
        if let Some(c) = &self.column {
            write!(f, " column {c}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A failed load, classified.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub kind: ErrorKind,
    /// The server's SQLSTATE, when the server refused.
    pub sqlstate: Option<String>,
    /// What failed (the statement or step) and why.
    pub message: String,
    /// The reason alone (the server's message and detail).
    pub reason: String,
    /// The objects (indexes into the group's items) the failure is theirs.
    pub items: Vec<usize>,
    pub details: Vec<ErrorDetail>,
    /// PostgreSQL: the objects to stage again, in this order, to find the bad row.
    pub restage: Vec<usize>,
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(s) = &self.sqlstate {
            write!(f, " (SQLSTATE {s})")?;
        }
        for d in self.details.iter().take(3) {
            write!(f, "; {d}")?;
        }
        if self.details.len() > 3 {
            write!(f, "; and {} more", self.details.len() - 3)?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadFailure {}

impl LoadFailure {
    pub fn new(kind: ErrorKind, message: String) -> LoadFailure {
        LoadFailure {
            kind,
            sqlstate: None,
            reason: message.clone(),
            message,
            items: Vec::new(),
            details: Vec::new(),
            restage: Vec::new(),
        }
    }

    /// A failure of `what` (a step, or a statement as shown) with `e`; with `data_possible`
    /// false (the ledger's own statements), a data-class SQLSTATE is not a data error.
    pub fn from_pg(e: &tokio_postgres::Error, data_possible: bool, what: String) -> LoadFailure {
        let (mut kind, sqlstate, reason) = match e.as_db_error() {
            Some(db) => (
                db_kind(db.code().code(), db.message()),
                Some(db.code().code().to_string()),
                db_reason(db),
            ),
            None => (pg_kind(e), None, e.to_string()),
        };
        if kind == ErrorKind::Data && !data_possible {
            kind = ErrorKind::Other;
        }
        LoadFailure {
            kind,
            sqlstate,
            message: format!("{what}: {reason}"),
            reason,
            items: Vec::new(),
            details: Vec::new(),
            restage: Vec::new(),
        }
    }

    /// The details of item `url` (all of them when none names it).
    pub fn details_of(&self, url: &str) -> Vec<ErrorDetail> {
        let mine: Vec<ErrorDetail> = self
            .details
            .iter()
            .filter(|d| redshift::match_file(&d.url, &[url.to_string()]).is_some())
            .cloned()
            .collect();
        if mine.is_empty() {
            self.details.clone()
        } else {
            mine
        }
    }
}

/// The server's message, with its detail when it has one.
fn db_reason(db: &tokio_postgres::error::DbError) -> String {
    match db.detail() {
        Some(d) if !d.is_empty() => format!("{}: {d}", db.message()),
        _ => db.message().to_string(),
    }
}

/// The kind of an error the server sent, by SQLSTATE (and, for Redshift's catch-all XX000,
/// by message).
pub fn db_kind(code: &str, message: &str) -> ErrorKind {
    match code {
        // connection_exception; admin_shutdown, crash_shutdown, cannot_connect_now,
        // query_canceled (statement_timeout); insufficient_resources; serialization_failure,
        // deadlock_detected; lock_not_available (lock_timeout).
        c if c.starts_with("08") => ErrorKind::Transient,
        "57P01" | "57P02" | "57P03" | "57014" => ErrorKind::Transient,
        c if c.starts_with("53") => ErrorKind::Transient,
        "40001" | "40P01" | "55P03" => ErrorKind::Transient,
        // data_exception, integrity_constraint_violation.
        c if c.starts_with("22") || c.starts_with("23") => ErrorKind::Data,
        _ if redshift::is_load_error_message(message) => ErrorKind::Data,
        // Redshift's error 1023.
        _ if message.contains("Serializable isolation violation") => ErrorKind::Transient,
        _ => ErrorKind::Other,
    }
}

/// The kind of a client-side error: a lost or broken connection is transient; a bug in what
/// was sent or read is not.
fn pg_kind(e: &tokio_postgres::Error) -> ErrorKind {
    let text = e.to_string();
    let client_side = [
        "error serializing",
        "error deserializing",
        "invalid column",
        "query returned an unexpected number of rows",
        "invalid configuration",
        "authentication error",
    ];
    if client_side.iter().any(|p| text.starts_with(p)) {
        ErrorKind::Other
    } else {
        ErrorKind::Transient
    }
}

/// The kind of any load error: a [`LoadFailure`]'s own; otherwise a server error by SQLSTATE
/// (data-class ones from steps that load no rows, such as the ledger's, count as other), an
/// I/O or connection error as transient, anything else as other.
pub fn classify(e: &anyhow::Error) -> ErrorKind {
    if let Some(f) = failure(e) {
        return f.kind;
    }
    for c in e.chain() {
        if let Some(pe) = c.downcast_ref::<tokio_postgres::Error>() {
            return LoadFailure::from_pg(pe, false, String::new()).kind;
        }
        if c.downcast_ref::<std::io::Error>().is_some() {
            return ErrorKind::Transient;
        }
    }
    ErrorKind::Other
}

/// The [`LoadFailure`] in `e`'s chain, if any.
pub fn failure(e: &anyhow::Error) -> Option<&LoadFailure> {
    e.chain().find_map(|c| c.downcast_ref::<LoadFailure>())
}

/// (bucket, key prefix) where quarantine records go.
pub fn quarantine_location(cfg: &RinConfig, target_bucket: &str) -> (String, String) {
    s3_location(
        &cfg.ext.quarantine_prefix,
        target_bucket,
        "rin-ship/quarantine/",
    )
}

/// The quarantine record's key: deterministic in (table, bucket, key, ETag), so a redelivery
/// rewrites the same record.
pub fn quarantine_key(prefix: &str, qualified: &str, it: &Item) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [qualified, &it.bucket, &it.key, &it.etag] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    format!("{prefix}{}.json", hex::encode(&h.finalize()[..16]))
}

/// The quarantine record: a manifest of the object (`entries`, as a COPY manifest lists it)
/// plus the table, the object's identity, the error and the time.
pub fn quarantine_record(
    dest: &Destination,
    it: &Item,
    f: &LoadFailure,
    at: chrono::DateTime<chrono::Utc>,
) -> String {
    serde_json::json!({
        "entries": [{"url": it.url(), "mandatory": true}],
        "table": dest.qualified(),
        "target": dest.target,
        "bucket": it.bucket,
        "key": it.key,
        "etag": it.etag,
        "version_id": it.version_id,
        "error": {
            "kind": f.kind.label(),
            "sqlstate": f.sqlstate,
            "message": f.message,
            "details": f.details_of(&it.url()),
        },
        "quarantined_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
    .to_string()
}

/// Writes the quarantine record of `it` (no ledger row: the ledger lists loaded objects only,
/// so sending the object's event again after a fix loads it). Returns the record's URL.
pub async fn quarantine(
    objects: &Source,
    cfg: &RinConfig,
    dest: &Destination,
    it: &Item,
    f: &LoadFailure,
) -> Result<String> {
    let (bucket, prefix) = quarantine_location(cfg, &cfg.target(dest.target).s3.bucket);
    let key = quarantine_key(&prefix, &dest.qualified(), it);
    let body = quarantine_record(dest, it, f, chrono::Utc::now());
    objects
        .put(&bucket, &key, body)
        .await
        .context("writing the quarantine record")?;
    Ok(format!("s3://{bucket}/{key}"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Loaded in this transaction, with the rows written. One Redshift COPY over several
    /// objects counts only their total: it is reported on the first object, the others `None`.
    Loaded(Option<u64>),
    /// Already in the ledger.
    Duplicate,
    /// The object no longer exists with that ETag (overwritten or deleted): its successor's
    /// own event loads the new content.
    Gone,
}

/// A batch for one destination table on one warehouse connection.
#[derive(Debug, Clone)]
pub struct Group {
    pub dest: Destination,
    pub items: Vec<Item>,
}

pub fn ledger_ident(cfg: &RinConfig) -> String {
    let (s, t) = split_qualified(&cfg.ext.ledger_table).expect("validated at load");
    format!("{}.{}", quote_ident(&s), quote_ident(&t))
}

/// Creates the ledger if missing (racing importers: a failed CREATE is retried once).
/// The statements that create the ledger (and its schema) if missing; on PostgreSQL also a
/// unique index (Redshift enforces none) as a second line of defence.
pub fn ledger_ddl(cfg: &RinConfig) -> Result<Vec<String>> {
    let (schema, table) = split_qualified(&cfg.ext.ledger_table)?;
    let ledger = ledger_ident(cfg);
    let mut ddl = Vec::new();
    if schema != "public" {
        ddl.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(&schema)
        ));
    }
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ledger} (bucket varchar(1024) NOT NULL, \
         object_key varchar(4096) NOT NULL, etag varchar(256) NOT NULL, \
         version_id varchar(1024) NOT NULL, target varchar(1024) NOT NULL, row_count bigint, \
         batch_id varchar(64) NOT NULL, batch_rows bigint, loaded_at timestamptz NOT NULL)"
    ));
    if cfg.ext.warehouse == Warehouse::Postgres {
        ddl.push(format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {ledger} \
             (bucket, object_key, etag, version_id, target)",
            quote_ident(&format!("{table}_object"))
        ));
    }
    Ok(ddl)
}

/// Creates the ledger if missing (racing importers: a failed CREATE is retried).
pub async fn ensure_ledger(client: &Client, cfg: &RinConfig) -> Result<()> {
    let ledger = ledger_ident(cfg);
    let ddl = ledger_ddl(cfg)?.join(";\n");
    for attempt in 0..3 {
        match client.batch_execute(&ddl).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 2 => {
                warn!("creating the ledger {ledger}: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow!("cannot create the ledger {ledger}: {e}")),
        }
    }
    Ok(())
}

/// Loads one group in one transaction. Any error rolls the whole group back; a data error
/// comes back as a [`LoadFailure`] naming the objects (and, where the warehouse tells, the
/// line and column) at fault.
pub async fn load_group(
    client: &mut Client,
    cfg: &RinConfig,
    objects: &Source,
    group: &Group,
) -> Result<Vec<ItemResult>> {
    let r = load_group_tx(client, cfg, objects, group).await;
    match r {
        Err(e) if client.is_closed() => Err(e),
        Err(e) => Err(match cfg.ext.warehouse {
            Warehouse::Redshift => explain_redshift(client, group, e).await,
            Warehouse::Postgres => explain_pg(client, cfg, objects, group, e).await,
        }),
        r => r,
    }
}

/// Rough disk need of a COPY per stored byte: gzip NDJSON inflates about 8x, Redshift's
/// compressed columns take back about two thirds of that.
const COPY_BYTES_PER_STORED_BYTE: f64 = 3.0;

/// Warns (log and `rin_import_disk_warnings_total`) before a Redshift COPY that may not fit in
/// the cluster's free space or would fill it past `maintenance.disk_warn_pct`. The cluster's
/// usage is read at most once a minute; the check never fails or delays a load for long.
async fn warn_if_disk_short(client: &Client, cfg: &RinConfig, group: &Group) {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static USAGE: Mutex<Option<(Instant, super::maintain::DiskUsage)>> = Mutex::new(None);
    let cached = USAGE
        .lock()
        .unwrap()
        .as_ref()
        .filter(|(at, _)| at.elapsed() < Duration::from_secs(60))
        .map(|(_, u)| *u);
    let usage = match cached {
        Some(u) => u,
        None => match super::maintain::disk_usage(client, Warehouse::Redshift).await {
            Ok(Some(u)) => {
                *USAGE.lock().unwrap() = Some((Instant::now(), u));
                u
            }
            Ok(None) => return,
            Err(e) => {
                debug!("free-space check skipped: {e:#}");
                return;
            }
        },
    };
    let stored: u64 = group.items.iter().map(|i| i.size).sum();
    let need_mb = stored as f64 * COPY_BYTES_PER_STORED_BYTE / (1024.0 * 1024.0);
    if let Some(w) = usage.warning(cfg.ext.maintenance.disk_warn_pct.0, need_mb) {
        metrics::counter!("rin_import_disk_warnings_total").increment(1);
        warn!(table = %group.dest.qualified(), objects = group.items.len(), "before COPY: {w}");
    }
}

async fn load_group_tx(
    client: &mut Client,
    cfg: &RinConfig,
    objects: &Source,
    group: &Group,
) -> Result<Vec<ItemResult>> {
    let ledger = ledger_ident(cfg);
    let qualified = group.dest.qualified();
    let batch_id = format!("{:016x}", rand::random::<u64>());
    if cfg.ext.warehouse == Warehouse::Redshift {
        warn_if_disk_short(client, cfg, group).await;
    }
    let tx = client.transaction().await?;
    let lock = match cfg.ext.warehouse {
        Warehouse::Postgres => format!("LOCK TABLE {ledger} IN SHARE ROW EXCLUSIVE MODE"),
        Warehouse::Redshift => format!("LOCK {ledger}"),
    };
    tx.batch_execute(&lock)
        .await
        .with_context(|| format!("LOCK {ledger}"))?;
    let check = format!(
        "SELECT 1 FROM {ledger} WHERE bucket = $1 AND object_key = $2 AND etag = $3 \
         AND version_id = $4 AND target = $5"
    );
    let mut results: Vec<Option<ItemResult>> = vec![None; group.items.len()];
    let mut new = Vec::new();
    for (i, it) in group.items.iter().enumerate() {
        let hit = tx
            .query_opt(
                &check,
                &[&it.bucket, &it.key, &it.etag, &it.version_id, &qualified],
            )
            .await
            .context("ledger lookup")?;
        if hit.is_some() {
            results[i] = Some(ItemResult::Duplicate);
        } else if !new.iter().any(|&j: &usize| group.items[j] == *it) {
            new.push(i);
        } else {
            results[i] = Some(ItemResult::Duplicate);
        }
    }
    let w = Writer {
        tx: &tx,
        cfg,
        group,
        qualified: &qualified,
        batch_id: &batch_id,
        insert: format!(
            "INSERT INTO {ledger} (bucket, object_key, etag, version_id, target, row_count, \
             batch_id, batch_rows, loaded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {})",
            match cfg.ext.warehouse {
                Warehouse::Postgres => "now()",
                Warehouse::Redshift => "SYSDATE",
            }
        ),
    };
    let loaded = match cfg.ext.warehouse {
        _ if new.is_empty() => Ok(0),
        Warehouse::Postgres => load_postgres(&w, objects, &new, &mut results).await,
        Warehouse::Redshift => load_redshift(&w, objects, &new, &mut results).await,
    };
    let loaded_rows = loaded.map_err(|e| attribute_single(e, &new))?;
    tx.commit().await.context("COMMIT")?;
    if !new.is_empty() {
        let mode = cfg.target(group.dest.target).insert_mode.name();
        info!(table = %qualified, objects = new.len(), rows = loaded_rows, batch_id, mode, "committed");
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(ItemResult::Duplicate))
        .collect())
}

/// What the warehouse-specific halves of [`load_group_tx`] share.
struct Writer<'a> {
    tx: &'a tokio_postgres::Transaction<'a>,
    cfg: &'a RinConfig,
    group: &'a Group,
    qualified: &'a str,
    batch_id: &'a str,
    /// The ledger INSERT ($1..$8: bucket, key, etag, version, target, rows, batch, batch rows).
    insert: String,
}

impl Writer<'_> {
    async fn ledger_row(
        &self,
        it: &Item,
        rows: Option<i64>,
        batch_rows: Option<i64>,
    ) -> Result<()> {
        self.tx
            .execute(
                &self.insert,
                &[
                    &it.bucket,
                    &it.key,
                    &it.etag,
                    &it.version_id,
                    &self.qualified,
                    &rows,
                    &self.batch_id,
                    &batch_rows,
                ],
            )
            .await
            .context("ledger insert")?;
        Ok(())
    }
}

/// A data error of a load with one new object is that object's.
fn attribute_single(e: anyhow::Error, new: &[usize]) -> anyhow::Error {
    match e.downcast::<LoadFailure>() {
        Ok(mut f) => {
            if f.kind == ErrorKind::Data && f.items.is_empty() && new.len() == 1 {
                f.items = new.to_vec();
            }
            f.into()
        }
        Err(e) => e,
    }
}

/// Opens object `i` of the group: `None` when it is gone (its successor's event loads the new
/// content); a read failure is transient.
async fn open_object(objects: &Source, it: &Item, i: usize) -> Result<Option<Body>> {
    match objects.open(it).await {
        Ok(Fetched::Body(b)) => Ok(Some(b)),
        Ok(Fetched::Gone) => {
            warn!(object = %it.url(), "object gone or replaced; not loading it");
            Ok(None)
        }
        Err(e) => Err(LoadFailure {
            items: vec![i],
            ..LoadFailure::new(ErrorKind::Transient, format!("{e:#}"))
        }
        .into()),
    }
}

/// Streams object `i` into the stage; a failure is attributed to it (with the line of a line
/// that is not JSON).
async fn stage(
    tx: &tokio_postgres::Transaction<'_>,
    body: Body,
    it: &Item,
    i: usize,
) -> Result<u64> {
    let url = it.url();
    postgres::stage_object(tx, body, &url).await.map_err(|e| {
        let f = match &e {
            StageError::Read(..) => LoadFailure::new(ErrorKind::Transient, e.to_string()),
            StageError::Corrupt(m) => {
                let reason = m.strip_prefix(&format!("{url}: ")).unwrap_or(m).to_string();
                LoadFailure {
                    details: vec![ErrorDetail {
                        url: url.clone(),
                        reason: reason.clone(),
                        ..Default::default()
                    }],
                    reason: reason.clone(),
                    ..LoadFailure::new(ErrorKind::Data, format!("staging {url}: {reason}"))
                }
            }
            StageError::Db(_, pe) => {
                let mut f = LoadFailure::from_pg(pe, true, format!("staging {url}"));
                if f.kind == ErrorKind::Data {
                    let line = pe
                        .as_db_error()
                        .and_then(|d| d.where_())
                        .and_then(postgres::copy_error_line);
                    f.details = vec![ErrorDetail {
                        url: url.clone(),
                        line,
                        column: None,
                        reason: f.reason.clone(),
                    }];
                }
                f
            }
        };
        LoadFailure {
            items: vec![i],
            ..f
        }
        .into()
    })
}

/// PostgreSQL: `APPEND` and `TRUNCATE` stage and insert object by object (one ledger row each,
/// with its row count); the keyed modes stage every new object, in order, then pick one row
/// per key and write it (ledger rows carry each object's rows that were written).
async fn load_postgres(
    w: &Writer<'_>,
    objects: &Source,
    new: &[usize],
    results: &mut [Option<ItemResult>],
) -> Result<u64> {
    let (tx, qualified) = (w.tx, w.qualified);
    let target = w.cfg.target(w.group.dest.target);
    let catch_all = w.cfg.ext.catch_all_column.as_str();
    tx.batch_execute(STAGE_DDL).await?;
    let cols = postgres::table_columns(tx, qualified).await?;
    let ins = postgres::insert_sql(qualified, &cols, catch_all)?;
    let mode = target.insert_mode;
    if mode.keyed() {
        let sql = postgres::keyed_sql(
            qualified,
            &cols,
            catch_all,
            mode == InsertMode::KeepExisting,
            &target.key_columns,
            &target.order_column,
        )?;
        postgres::reset_stage(tx).await?;
        // (item, first position, last position) of each staged object.
        let mut ranges: Vec<(usize, i64, i64)> = Vec::new();
        let mut next = 1i64;
        for &i in new {
            let it = &w.group.items[i];
            let Some(body) = open_object(objects, it, i).await? else {
                results[i] = Some(ItemResult::Gone);
                continue;
            };
            let lines = stage(tx, body, it, i).await? as i64;
            ranges.push((i, next, next + lines - 1));
            next += lines;
        }
        if ranges.is_empty() {
            return Ok(0);
        }
        let written = async {
            tx.batch_execute(&sql.pick).await?;
            let gone = tx.execute(&sql.delete, &[]).await?;
            let n = tx.execute(&sql.insert, &[]).await?;
            Ok::<_, tokio_postgres::Error>((gone, n))
        }
        .await;
        let (gone, rows) = match written {
            Ok(r) => r,
            Err(e) => return Err(insert_failure(w, &e, ranges.iter().map(|r| r.0))),
        };
        let per: Vec<(i64, i64)> = ranges.iter().map(|&(_, a, b)| (a, b)).collect();
        let counts = tx
            .query_one(&postgres::pick_counts_sql(&per), &[])
            .await
            .context("counting the written rows")?;
        for (k, &(i, a, b)) in ranges.iter().enumerate() {
            let n: i64 = counts.get(k);
            w.ledger_row(&w.group.items[i], Some(n), Some(rows as i64))
                .await?;
            debug!(object = %w.group.items[i].url(), table = %qualified, rows = n, staged = b - a + 1, mode = mode.name(), "written (commits with the group)");
            results[i] = Some(ItemResult::Loaded(Some(n as u64)));
        }
        if mode == InsertMode::OverwriteExisting {
            info!(table = %qualified, replaced = gone, written = rows, "rows replaced by key");
        } else {
            info!(table = %qualified, skipped_existing = gone, written = rows, "rows with a known key skipped");
        }
        return Ok(rows);
    }
    let mut emptied = false;
    let mut loaded_rows = 0;
    for &i in new {
        let it = &w.group.items[i];
        let Some(body) = open_object(objects, it, i).await? else {
            results[i] = Some(ItemResult::Gone);
            continue;
        };
        postgres::reset_stage(tx).await?;
        let staged = stage(tx, body, it, i).await?;
        if mode == InsertMode::Truncate && !emptied {
            // DELETE, not TRUNCATE: readers keep seeing the old rows until the COMMIT.
            let n = tx
                .execute(&format!("DELETE FROM {qualified}"), &[])
                .await
                .with_context(|| format!("emptying {qualified}"))?;
            info!(table = %qualified, deleted = n, "TRUNCATE mode: table emptied in the load's transaction");
            emptied = true;
        }
        let rows = match tx.execute(&ins, &[]).await {
            Ok(n) => n,
            Err(e) => return Err(insert_failure(w, &e, [i])),
        };
        w.ledger_row(it, Some(rows as i64), None).await?;
        debug!(object = %it.url(), table = %qualified, rows, staged, "written (commits with the group)");
        loaded_rows += rows;
        results[i] = Some(ItemResult::Loaded(Some(rows)));
    }
    Ok(loaded_rows)
}

/// The failure of writing the staged rows of `staged` (in stage order): a data error without
/// a line is explained later, by [`explain_pg`].
fn insert_failure(
    w: &Writer<'_>,
    e: &tokio_postgres::Error,
    staged: impl IntoIterator<Item = usize>,
) -> anyhow::Error {
    let mut f = LoadFailure::from_pg(e, true, format!("loading into {}", w.qualified));
    if f.kind == ErrorKind::Data {
        f.restage = staged.into_iter().collect();
    }
    f.into()
}

/// After a PostgreSQL load failed with a data error no line was given for (a value that does
/// not convert, a constraint; its transaction rolled back), a diagnostic transaction, rolled
/// back too, stages the objects again and finds the first staged row that fails alone (see
/// [`postgres::first_bad_row`]), naming its object, line and, when one key alone fails to
/// convert, column. Only this error path pays for the savepoints the probes need.
async fn explain_pg(
    client: &mut Client,
    cfg: &RinConfig,
    objects: &Source,
    group: &Group,
    e: anyhow::Error,
) -> anyhow::Error {
    let mut f = match e.downcast::<LoadFailure>() {
        Ok(f) if f.kind == ErrorKind::Data && !f.restage.is_empty() => f,
        Ok(f) => return f.into(),
        Err(e) => return e,
    };
    let qualified = group.dest.qualified();
    match find_bad_row(client, cfg, objects, group, &f.restage).await {
        Ok(Some((i, line, column, reason))) => {
            f.items = vec![i];
            f.details = vec![ErrorDetail {
                url: group.items[i].url(),
                line: Some(line),
                column,
                reason,
            }];
        }
        Ok(None) => {
            warn!(table = %qualified, "no single row fails alone; reporting the load error without a line")
        }
        Err(pe) => warn!(table = %qualified, "cannot look for the bad row: {pe:#}"),
    }
    f.restage.clear();
    f.into()
}

/// (object, line, column, reason) of the first row of `items` (staged in this order) that
/// fails alone.
async fn find_bad_row(
    client: &mut Client,
    cfg: &RinConfig,
    objects: &Source,
    group: &Group,
    items: &[usize],
) -> Result<Option<(usize, u64, Option<String>, String)>> {
    let qualified = group.dest.qualified();
    let catch_all = cfg.ext.catch_all_column.as_str();
    let tx = client.transaction().await?;
    tx.batch_execute(STAGE_DDL).await?;
    let cols = postgres::table_columns(&tx, &qualified).await?;
    let ins = postgres::insert_sql(&qualified, &cols, catch_all)?;
    postgres::reset_stage(&tx).await?;
    let mut ranges: Vec<(usize, i64, i64)> = Vec::new();
    let mut next = 1i64;
    for &i in items {
        let it = &group.items[i];
        let Some(body) = open_object(objects, it, i).await? else {
            continue;
        };
        let lines = stage(&tx, body, it, i).await? as i64;
        ranges.push((i, next, next + lines - 1));
        next += lines;
    }
    let Some((n, row_err)) = postgres::first_bad_row(&tx, &ins, 1, next - 1).await? else {
        return Ok(None);
    };
    let Some(&(i, first, _)) = ranges.iter().find(|r| r.1 <= n && n <= r.2) else {
        return Ok(None);
    };
    let db = row_err.as_db_error();
    let mut column = db.and_then(|d| d.column()).map(str::to_string);
    if column.is_none() {
        column = postgres::bad_column(&tx, &qualified, &cols, catch_all, n).await?;
    }
    let reason = db.map(db_reason).unwrap_or_else(|| row_err.to_string());
    Ok(Some((i, (n - first + 1) as u64, column, reason)))
}

/// Redshift: the manifest, then [`redshift::load_statements`] in the plan's insert mode, then
/// one ledger row per object (the row count per object only when there is one object).
async fn load_redshift(
    w: &Writer<'_>,
    objects: &Source,
    new: &[usize],
    results: &mut [Option<ItemResult>],
) -> Result<u64> {
    let (tx, qualified, group) = (w.tx, w.qualified, w.group);
    let target = w.cfg.target(group.dest.target);
    let listed: Vec<(&str, &str)> = new
        .iter()
        .map(|&i| (group.items[i].bucket.as_str(), group.items[i].key.as_str()))
        .collect();
    let (mbucket, mprefix) = manifest_location(w.cfg, &target.s3.bucket);
    let mkey = redshift::manifest_key(&mprefix, qualified, &listed);
    let body = redshift::manifest_json(&listed);
    objects.put(&mbucket, &mkey, body).await.map_err(|e| {
        LoadFailure::new(ErrorKind::Transient, format!("writing the manifest: {e:#}"))
    })?;
    let url = format!("s3://{mbucket}/{mkey}");
    let plan = redshift::LoadPlan::new(w.cfg, target, qualified, &url);
    let sqls = redshift::load_statements(&plan, false);
    let shown = redshift::load_statements(&plan, true);
    let mut counts = Vec::new();
    for (sql, shown) in sqls.iter().zip(&shown) {
        info!(sql = %shown, objects = listed.len(), mode = plan.mode.name(), "load statement");
        let msgs = tx
            .simple_query(sql)
            .await
            .map_err(|e| LoadFailure::from_pg(&e, true, shown.clone()))?;
        counts.push(
            msgs.iter()
                .rev()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(0),
        );
    }
    let count = if plan.mode.keyed() {
        counts[plan.rows_statement()] as i64
    } else {
        first_value(tx, "SELECT pg_last_copy_count()").await?
    };
    for (n, &i) in new.iter().enumerate() {
        let it = &group.items[i];
        let single = (new.len() == 1).then_some(count);
        w.ledger_row(it, single, Some(count)).await?;
        results[i] = Some(ItemResult::Loaded((n == 0).then_some(count as u64)));
    }
    Ok(count as u64)
}

/// After a Redshift load failed with "check sys_load_error_detail" (its transaction rolled
/// back), reads why from the load-error views and names the objects at fault.
async fn explain_redshift(client: &Client, group: &Group, e: anyhow::Error) -> anyhow::Error {
    let mut f = match e.downcast::<LoadFailure>() {
        Ok(f)
            if f.kind == ErrorKind::Data
                && f.details.is_empty()
                && redshift::is_load_error_message(&f.reason) =>
        {
            f
        }
        Ok(f) => return f.into(),
        Err(e) => return e,
    };
    if client.is_closed() {
        return f.into();
    }
    let mut rows = Vec::new();
    for q in redshift::LOAD_ERROR_QUERIES {
        match client.simple_query(q).await {
            Ok(msgs) => {
                rows = redshift::parse_load_errors(msgs.iter().filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some([r.get(0), r.get(1), r.get(2), r.get(3)])
                    }
                    _ => None,
                }));
                if !rows.is_empty() {
                    break;
                }
            }
            Err(qe) => warn!("reading the load errors: {qe}"),
        }
    }
    // Rows of this group's objects (the view may hold older ones of this session too); all of
    // them when none is.
    let urls: Vec<String> = group.items.iter().map(Item::url).collect();
    let ours: Vec<bool> = rows
        .iter()
        .map(|r| redshift::match_file(&r.file, &urls).is_some())
        .collect();
    let any_ours = ours.contains(&true);
    for (r, mine) in rows.iter().zip(ours) {
        if any_ours && !mine {
            continue;
        }
        if let Some(i) = redshift::match_file(&r.file, &urls)
            && !f.items.contains(&i)
        {
            f.items.push(i);
        }
        f.details.push(ErrorDetail {
            url: r.file.clone(),
            line: r.line,
            column: (!r.column.is_empty()).then(|| r.column.clone()),
            reason: r.reason.clone(),
        });
    }
    f.into()
}

async fn first_value(tx: &tokio_postgres::Transaction<'_>, sql: &str) -> Result<i64> {
    for m in tx.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r
                .get(0)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("{sql}: no number"));
        }
    }
    Err(anyhow!("{sql}: no row"))
}

/// (bucket, key prefix) where manifests go.
pub fn manifest_location(cfg: &RinConfig, target_bucket: &str) -> (String, String) {
    s3_location(
        &cfg.ext.manifest_prefix,
        target_bucket,
        "rin-ship/manifests/",
    )
}

/// `s3://bucket/prefix/` as (bucket, prefix ending in `/`); empty: the target's bucket under
/// `default_prefix`.
fn s3_location(url: &str, target_bucket: &str, default_prefix: &str) -> (String, String) {
    match url.strip_prefix("s3://") {
        Some(rest) => {
            let (b, k) = rest.split_once('/').unwrap_or((rest, ""));
            let mut k = k.to_string();
            if !k.is_empty() && !k.ends_with('/') {
                k.push('/');
            }
            (b.to_string(), k)
        }
        None => (target_bucket.to_string(), default_prefix.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds() {
        use ErrorKind::*;
        for (code, msg, want) in [
            ("08006", "connection failure", Transient),
            (
                "57P01",
                "terminating connection due to administrator command",
                Transient,
            ),
            ("57P03", "the database system is starting up", Transient),
            ("53300", "too many connections", Transient),
            ("40001", "could not serialize access", Transient),
            ("40P01", "deadlock detected", Transient),
            (
                "55P03",
                "canceling statement due to lock timeout",
                Transient,
            ),
            ("22P02", "invalid input syntax for type bigint: \"x\"", Data),
            ("22003", "value out of range", Data),
            ("23502", "null value in column \"id\"", Data),
            ("42P01", "relation \"t\" does not exist", Other),
            ("42501", "permission denied", Other),
            (
                "XX000",
                "Load into table 'rin_ship_stage' failed. Check 'sys_load_error_detail' system table for details.",
                Data,
            ),
            ("XX000", "S3ServiceException:Access Denied", Other),
            (
                "XX000",
                "1023 Serializable isolation violation on table",
                Transient,
            ),
        ] {
            assert_eq!(db_kind(code, msg), want, "{code} {msg}");
        }
        let io = anyhow::Error::new(std::io::Error::other("reset")).context("loading");
        assert_eq!(classify(&io), Transient);
        assert_eq!(classify(&anyhow!("something else")), Other);
        let f = LoadFailure {
            items: vec![1],
            ..LoadFailure::new(Data, "bad".into())
        };
        let e = anyhow::Error::new(f).context("outer");
        assert_eq!(classify(&e), Data);
        assert_eq!(failure(&e).unwrap().items, vec![1]);
    }

    #[test]
    fn quarantine_records() {
        let cfg = RinConfig::parse(
            "queue_name: q\ns3: {bucket: logs}\ntargets:\n  - redshift: {schema: s, table: t}\n    s3: {key_prefix: a/}\nrin_ship: {warehouse: postgres}\n",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            quarantine_location(&cfg, "logs"),
            ("logs".to_string(), "rin-ship/quarantine/".to_string())
        );
        let mut cfg2 = cfg.clone();
        cfg2.ext.quarantine_prefix = "s3://q/bad".into();
        assert_eq!(
            quarantine_location(&cfg2, "logs"),
            ("q".to_string(), "bad/".to_string())
        );
        let it = Item {
            bucket: "logs".into(),
            key: "a/x.json.gz".into(),
            etag: "e1".into(),
            version_id: String::new(),
            size: 0,
        };
        let k = quarantine_key("p/", "\"s\".\"t\"", &it);
        assert!(k.starts_with("p/") && k.ends_with(".json"), "{k}");
        assert_eq!(k, quarantine_key("p/", "\"s\".\"t\"", &it.clone()));
        let other = Item {
            etag: "e2".into(),
            ..it.clone()
        };
        assert_ne!(k, quarantine_key("p/", "\"s\".\"t\"", &other));
        assert_ne!(k, quarantine_key("p/", "\"s\".\"u\"", &it));
        let dest = Destination {
            target: 0,
            schema: "s".into(),
            table: "t".into(),
        };
        let f = LoadFailure {
            sqlstate: Some("22P02".into()),
            items: vec![0],
            details: vec![
                ErrorDetail {
                    url: "s3://logs/a/x.json.gz".into(),
                    line: Some(3),
                    column: Some("i".into()),
                    reason: "invalid input syntax for type bigint: \"x\"".into(),
                },
                ErrorDetail {
                    url: "s3://logs/a/other.json.gz".into(),
                    line: Some(1),
                    column: None,
                    reason: "other".into(),
                },
            ],
            ..LoadFailure::new(ErrorKind::Data, "loading into \"s\".\"t\": bad".into())
        };
        let at = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let v: serde_json::Value =
            serde_json::from_str(&quarantine_record(&dest, &it, &f, at)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "entries": [{"url": "s3://logs/a/x.json.gz", "mandatory": true}],
                "table": "\"s\".\"t\"",
                "target": 0,
                "bucket": "logs",
                "key": "a/x.json.gz",
                "etag": "e1",
                "version_id": "",
                "error": {
                    "kind": "data",
                    "sqlstate": "22P02",
                    "message": "loading into \"s\".\"t\": bad",
                    "details": [{
                        "url": "s3://logs/a/x.json.gz",
                        "line": 3,
                        "column": "i",
                        "reason": "invalid input syntax for type bigint: \"x\""
                    }]
                },
                "quarantined_at": "2024-05-01T00:00:00.000Z"
            })
        );
        assert_eq!(
            f.to_string(),
            "loading into \"s\".\"t\": bad (SQLSTATE 22P02); s3://logs/a/x.json.gz line 3 column i: \
             invalid input syntax for type bigint: \"x\"; s3://logs/a/other.json.gz line 1: other"
        );
    }
}
