//! Table maintenance (`rin-ship maintain`, and optionally inside `rin-ship import`): `VACUUM`
//! and `ANALYZE` of the loaded tables when their statistics say so, on an interval.
//!
//! - Redshift: one `SVV_TABLE_INFO` row per table decides ([`plan`]): `unsorted` above
//!   `vacuum_unsorted_pct`, or rows marked for deletion (`tbl_rows - estimated_visible_rows`)
//!   above `vacuum_deleted_pct`, give `VACUUM <mode> t [TO n PERCENT]`; `stats_off` above
//!   `analyze_stats_off_pct` gives `ANALYZE t`. Heavy load: `STV_RECENTS`; free space:
//!   `STV_PARTITIONS`.
//! - PostgreSQL: one `pg_stat_user_tables` row decides ([`plan_pg`]): dead tuples
//!   (`n_dead_tup / (n_live_tup + n_dead_tup)`) give `VACUUM (ANALYZE) t`, rows modified since
//!   the last analyze (`n_mod_since_analyze / n_live_tup`) give `ANALYZE t`. Heavy load:
//!   `pg_stat_activity`.
//!
//! Must never: run a VACUUM inside a transaction (it cannot); run two VACUUMs at once from this
//! process ([`VACUUM_LOCK`]); start one while at least `heavy_load_queries` COPY/INSERT
//! statements are running; put a table name into SQL other than through [`quote_ident`].

use super::postgres;
use super::rin::{
    Redshift, RinConfig, Warehouse, expand_placeholders, quote_ident, split_qualified,
};
use crate::common::units::Span;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Deserializer, de};
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, watch};
use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::{debug, error, info, warn};

/// One VACUUM at a time from this process (Redshift allows one per cluster anyway).
pub static VACUUM_LOCK: Mutex<()> = Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------------------------

/// `rin_ship.maintenance:` in the Rin config. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Maintenance {
    /// Tables to look after (`schema.table`, `table` meaning `public.table`, `"odd.name"`
    /// quoted). Empty: every target table that is a fixed name (no `$n`) plus every table
    /// named in the ledger's `target` column.
    pub tables: Vec<TableName>,
    /// Redshift: VACUUM when `unsorted` is above this percentage.
    pub vacuum_unsorted_pct: Pct,
    /// Rows marked for deletion (Redshift) / dead tuples (PostgreSQL) above this percentage
    /// VACUUM. Default: `vacuum_unsorted_pct`.
    pub vacuum_deleted_pct: Option<Pct>,
    /// ANALYZE when `stats_off` (Redshift) / rows modified since the last analyze
    /// (PostgreSQL) is above this percentage.
    pub analyze_stats_off_pct: Pct,
    /// Redshift VACUUM flavour.
    pub vacuum_mode: VacuumMode,
    /// Redshift `TO n PERCENT` (sort / delete threshold); `null` leaves it out. Never used
    /// with `REINDEX`.
    #[serde(deserialize_with = "de_to_pct")]
    pub vacuum_to_pct: Option<u8>,
    /// Time between rounds (`rin-ship maintain` without `--once`, and inside `import`).
    #[serde(alias = "schedule")]
    pub interval: Span,
    /// Skip a table's statements while at least this many COPY/INSERT statements run on its
    /// warehouse; 0 never skips.
    pub heavy_load_queries: u32,
    /// Redshift: warn when the cluster's disks are fuller than this percentage.
    pub disk_warn_pct: Pct,
    /// VACUUM and ANALYZE every non-empty table every round, whatever its statistics (a plain
    /// schedule).
    pub always: bool,
    /// Run the rounds inside `rin-ship import` too.
    pub enabled_in_import: bool,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            tables: Vec::new(),
            vacuum_unsorted_pct: Pct(10.0),
            vacuum_deleted_pct: None,
            analyze_stats_off_pct: Pct(10.0),
            vacuum_mode: VacuumMode::Full,
            vacuum_to_pct: Some(95),
            interval: Span(Duration::from_secs(6 * 3600)),
            heavy_load_queries: 2,
            disk_warn_pct: Pct(80.0),
            always: false,
            enabled_in_import: false,
        }
    }
}

impl Maintenance {
    fn deleted_pct(&self) -> f64 {
        self.vacuum_deleted_pct
            .unwrap_or(self.vacuum_unsorted_pct)
            .0
    }

    fn validate(&self) -> Result<()> {
        if self.interval.0 < Duration::from_secs(1) {
            bail!("rin_ship.maintenance.interval must be at least 1s");
        }
        Ok(())
    }
}

/// A percentage, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Pct(pub f64);

impl<'de> Deserialize<'de> for Pct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=100.0).contains(&v) {
            return Err(de::Error::custom(format!(
                "{v} is not a percentage (0..=100)"
            )));
        }
        Ok(Pct(v))
    }
}

fn de_to_pct<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        None => Ok(None),
        Some(n) if n <= 100 => Ok(Some(n as u8)),
        Some(n) => Err(de::Error::custom(format!(
            "{n} is not a percentage (0..=100)"
        ))),
    }
}

/// Redshift's VACUUM options.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
pub enum VacuumMode {
    /// Sort and reclaim deleted rows (Redshift's default).
    #[default]
    #[serde(rename = "FULL", alias = "full")]
    Full,
    #[serde(rename = "SORT ONLY", alias = "sort only", alias = "sort_only")]
    SortOnly,
    #[serde(rename = "DELETE ONLY", alias = "delete only", alias = "delete_only")]
    DeleteOnly,
    /// Interleaved sort keys: re-analyze their distribution, then a full vacuum.
    #[serde(rename = "REINDEX", alias = "reindex")]
    Reindex,
}

impl VacuumMode {
    fn keyword(self) -> &'static str {
        match self {
            VacuumMode::Full => "FULL",
            VacuumMode::SortOnly => "SORT ONLY",
            VacuumMode::DeleteOnly => "DELETE ONLY",
            VacuumMode::Reindex => "REINDEX",
        }
    }
}

/// A table name from the config or the ledger: exact (case-sensitive) parts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// `public.logs`, `logs` (schema `public`), `"my.schema"."odd ""name"""`.
    pub fn parse(s: &str) -> Result<TableName> {
        let mut parts: Vec<String> = Vec::new();
        let mut chars = s.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => bail!("{s:?}: unterminated quoted name"),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' {
                        bail!("{s:?}: a quote inside an unquoted name");
                    }
                    part.push(c);
                    chars.next();
                }
                part = part.trim().to_string();
            }
            if part.is_empty() {
                bail!("{s:?}: empty name");
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => bail!("{s:?}: unexpected {c:?} after a quoted name"),
            }
        }
        match parts.len() {
            1 => Ok(TableName {
                schema: "public".into(),
                table: parts.remove(0),
            }),
            2 => {
                let table = parts.pop().expect("two parts");
                Ok(TableName {
                    schema: parts.pop().expect("two parts"),
                    table,
                })
            }
            _ => bail!("{s:?}: expected table or schema.table"),
        }
    }

    /// `"schema"."table"`, each part through [`quote_ident`].
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// Redshift folds identifiers to lower case (unless `enable_case_sensitive_identifier`),
    /// so its catalog names are matched without regard to case there.
    fn matches(&self, schema: &str, table: &str, warehouse: Warehouse) -> bool {
        match warehouse {
            Warehouse::Postgres => self.schema == schema && self.table == table,
            Warehouse::Redshift => {
                self.schema.eq_ignore_ascii_case(schema) && self.table.eq_ignore_ascii_case(table)
            }
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TableName::parse(&s).map_err(|e| de::Error::custom(format!("{e:#}")))
    }
}

// ---------------------------------------------------------------------------------------------
// planning (pure)
// ---------------------------------------------------------------------------------------------

/// One `SVV_TABLE_INFO` row (Redshift). `unsorted` is NULL for a table without a sort key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableInfo {
    pub schema: String,
    pub table: String,
    pub unsorted: Option<f64>,
    pub stats_off: Option<f64>,
    pub tbl_rows: Option<f64>,
    pub estimated_visible_rows: Option<f64>,
    /// 1 MB blocks.
    pub size: Option<f64>,
    pub pct_used: Option<f64>,
}

/// One `pg_stat_user_tables` row (PostgreSQL).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgTableStats {
    pub schema: String,
    pub table: String,
    pub n_live_tup: i64,
    pub n_dead_tup: i64,
    pub n_mod_since_analyze: i64,
    pub size_bytes: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Vacuum,
    Analyze,
    /// PostgreSQL `VACUUM (ANALYZE)`: both in one statement.
    VacuumAnalyze,
}

impl Action {
    fn vacuums(self) -> bool {
        matches!(self, Action::Vacuum | Action::VacuumAnalyze)
    }
    fn analyzes(self) -> bool {
        matches!(self, Action::Analyze | Action::VacuumAnalyze)
    }
}

/// A maintenance statement, run on its own (never inside a transaction).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub action: Action,
    /// The quoted table name.
    pub table: String,
    pub sql: String,
    /// Why it was chosen, for logs and `--dry-run`.
    pub reason: String,
}

fn pct(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The statements one `SVV_TABLE_INFO` row calls for: VACUUM first, then ANALYZE. Thresholds
/// are exclusive ("above"): a value equal to its threshold does nothing. An empty table
/// (`tbl_rows` 0) gets nothing.
pub fn plan(row: &TableInfo, cfg: &Maintenance) -> Vec<Statement> {
    let table = TableName {
        schema: row.schema.clone(),
        table: row.table.clone(),
    }
    .quoted();
    let mut out = Vec::new();
    if row.tbl_rows.is_some_and(|n| n <= 0.0) {
        return out;
    }
    let deleted = match (row.tbl_rows, row.estimated_visible_rows) {
        (Some(total), Some(visible)) if total > 0.0 => {
            Some(((total - visible).max(0.0) * 100.0 / total).min(100.0))
        }
        _ => None,
    };
    let mut reasons = Vec::new();
    if cfg.always {
        reasons.push("every round (always: true)".to_string());
    } else {
        let sort = row
            .unsorted
            .filter(|u| *u > cfg.vacuum_unsorted_pct.0)
            .map(|u| format!("unsorted {}% > {}%", pct(u), pct(cfg.vacuum_unsorted_pct.0)));
        let del = deleted.filter(|d| *d > cfg.deleted_pct()).map(|d| {
            format!(
                "rows marked for deletion {}% > {}%",
                pct(d),
                pct(cfg.deleted_pct())
            )
        });
        // Each mode acts only on what it fixes.
        match cfg.vacuum_mode {
            VacuumMode::SortOnly => reasons.extend(sort),
            VacuumMode::DeleteOnly => reasons.extend(del),
            VacuumMode::Full | VacuumMode::Reindex => reasons.extend(sort.into_iter().chain(del)),
        }
    }
    if !reasons.is_empty() {
        let mut sql = format!("VACUUM {} {table}", cfg.vacuum_mode.keyword());
        if let Some(n) = cfg.vacuum_to_pct
            && cfg.vacuum_mode != VacuumMode::Reindex
        {
            sql.push_str(&format!(" TO {n} PERCENT"));
        }
        out.push(Statement {
            action: Action::Vacuum,
            table: table.clone(),
            sql,
            reason: reasons.join(", "),
        });
    }
    let analyze = if cfg.always {
        Some("every round (always: true)".to_string())
    } else {
        row.stats_off
            .filter(|s| *s > cfg.analyze_stats_off_pct.0)
            .map(|s| {
                format!(
                    "stats_off {}% > {}%",
                    pct(s),
                    pct(cfg.analyze_stats_off_pct.0)
                )
            })
    };
    if let Some(reason) = analyze {
        out.push(Statement {
            action: Action::Analyze,
            sql: format!("ANALYZE {table}"),
            table,
            reason,
        });
    }
    out
}

/// The statement one `pg_stat_user_tables` row calls for: `VACUUM (ANALYZE)` when dead tuples
/// are above `vacuum_deleted_pct` (default `vacuum_unsorted_pct`), else `ANALYZE` when rows
/// modified since the last analyze are above `analyze_stats_off_pct` of the live rows.
pub fn plan_pg(row: &PgTableStats, cfg: &Maintenance) -> Vec<Statement> {
    let table = TableName {
        schema: row.schema.clone(),
        table: row.table.clone(),
    }
    .quoted();
    let live = row.n_live_tup.max(0) as f64;
    let dead = row.n_dead_tup.max(0) as f64;
    let modified = row.n_mod_since_analyze.max(0) as f64;
    if live + dead == 0.0 && modified == 0.0 {
        return Vec::new();
    }
    let dead_pct = if live + dead > 0.0 {
        dead * 100.0 / (live + dead)
    } else {
        0.0
    };
    let stats_off = if live > 0.0 {
        (modified * 100.0 / live).min(100.0)
    } else if modified > 0.0 {
        100.0
    } else {
        0.0
    };
    let mut reasons = Vec::new();
    if cfg.always {
        reasons.push("every round (always: true)".to_string());
    } else if dead_pct > cfg.deleted_pct() {
        reasons.push(format!(
            "dead tuples {}% > {}%",
            pct(dead_pct),
            pct(cfg.deleted_pct())
        ));
    }
    if !reasons.is_empty() {
        return vec![Statement {
            action: Action::VacuumAnalyze,
            sql: format!("VACUUM (ANALYZE) {table}"),
            table,
            reason: reasons.join(", "),
        }];
    }
    if stats_off > cfg.analyze_stats_off_pct.0 {
        return vec![Statement {
            action: Action::Analyze,
            sql: format!("ANALYZE {table}"),
            table,
            reason: format!(
                "modified since analyze {}% > {}%",
                pct(stats_off),
                pct(cfg.analyze_stats_off_pct.0)
            ),
        }];
    }
    Vec::new()
}

/// Free space on the warehouse's disks (Redshift `STV_PARTITIONS`, 1 MB blocks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskUsage {
    pub capacity_mb: f64,
    pub used_mb: f64,
}

impl DiskUsage {
    pub fn used_pct(&self) -> f64 {
        if self.capacity_mb <= 0.0 {
            return 0.0;
        }
        self.used_mb * 100.0 / self.capacity_mb
    }

    pub fn free_mb(&self) -> f64 {
        (self.capacity_mb - self.used_mb).max(0.0)
    }

    /// A warning when the disks are fuller than `warn_pct`, or would be after writing
    /// `need_mb` more, or `need_mb` does not fit at all. For a COPY, `need_mb` is an estimate of
    /// the loaded size; for a VACUUM, about 2.5 times the table's size.
    pub fn warning(&self, warn_pct: f64, need_mb: f64) -> Option<String> {
        if need_mb > self.free_mb() {
            return Some(format!(
                "needs about {need_mb:.0} MB but only {:.0} MB of {:.0} MB are free",
                self.free_mb(),
                self.capacity_mb
            ));
        }
        let after = if self.capacity_mb > 0.0 {
            (self.used_mb + need_mb) * 100.0 / self.capacity_mb
        } else {
            0.0
        };
        if after > warn_pct {
            return Some(format!(
                "disks {}% used{} (warning above {}%)",
                pct(self.used_pct()),
                if need_mb > 0.0 {
                    format!(", {}% after about {need_mb:.0} MB more", pct(after))
                } else {
                    String::new()
                },
                pct(warn_pct)
            ));
        }
        None
    }
}

/// Whether a warehouse error says another VACUUM is running (Redshift allows one per cluster).
pub fn is_vacuum_running(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("vacuum")
        && (m.contains("is running")
            || m.contains("already running")
            || m.contains("in progress")
            || m.contains("concurrent"))
}

// ---------------------------------------------------------------------------------------------
// warehouse queries
// ---------------------------------------------------------------------------------------------

/// The text of a server error (tokio-postgres' Display says only "db error").
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

async fn text_rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let msgs = client
        .simple_query(sql)
        .await
        .map_err(|e| anyhow!("{sql}: {}", db_error(&e)))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

fn num(v: &Option<String>) -> Option<f64> {
    v.as_deref().and_then(|s| s.trim().parse().ok())
}

fn int(v: &Option<String>) -> i64 {
    num(v).map(|f| f as i64).unwrap_or(0)
}

fn text(v: &Option<String>) -> String {
    v.as_deref().unwrap_or_default().trim_end().to_string()
}

const RS_TABLE_INFO: &str = "SELECT \"schema\", \"table\", unsorted, stats_off, tbl_rows, \
    estimated_visible_rows, size, pct_used FROM svv_table_info";
const PG_TABLE_STATS: &str = "SELECT schemaname, relname, n_live_tup, n_dead_tup, \
    n_mod_since_analyze, pg_total_relation_size(relid) FROM pg_stat_user_tables";

/// COPY / INSERT statements, also behind a leading comment such as rin-ship's `/* rin-ship */`.
fn load_statement_filter(col: &str) -> String {
    let c = format!("ltrim({col})");
    ["copy%", "insert%", "/*%*/ copy%", "/*%*/ insert%"]
        .iter()
        .map(|p| format!("{c} ILIKE '{p}'"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// How many COPY/INSERT statements run now on this warehouse (other sessions than ours).
pub async fn running_loads(client: &Client, warehouse: Warehouse) -> Result<i64> {
    let sql = match warehouse {
        Warehouse::Redshift => format!(
            "SELECT count(*) FROM stv_recents WHERE trim(status) = 'Running' \
             AND pid <> pg_backend_pid() AND ({})",
            load_statement_filter("query")
        ),
        Warehouse::Postgres => format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND pid <> pg_backend_pid() AND ({})",
            load_statement_filter("query")
        ),
    };
    let rows = text_rows(client, &sql).await?;
    Ok(rows.first().and_then(|r| r.first()).map(int).unwrap_or(0))
}

/// Redshift: the cluster's disk space (`STV_PARTITIONS`, needs a superuser to see every
/// partition). PostgreSQL: `None` (it has no such view).
pub async fn disk_usage(client: &Client, warehouse: Warehouse) -> Result<Option<DiskUsage>> {
    if warehouse == Warehouse::Postgres {
        return Ok(None);
    }
    let rows = text_rows(
        client,
        "SELECT SUM(capacity), SUM(used) FROM stv_partitions WHERE part_begin = 0",
    )
    .await?;
    Ok(rows.first().and_then(|r| match (num(&r[0]), num(&r[1])) {
        (Some(capacity_mb), Some(used_mb)) => Some(DiskUsage {
            capacity_mb,
            used_mb,
        }),
        _ => None,
    }))
}

/// The distinct tables in the ledger's `target` column (none when there is no ledger yet).
async fn ledger_tables(client: &Client, cfg: &RinConfig) -> Vec<TableName> {
    let Ok((s, t)) = split_qualified(&cfg.ext.ledger_table) else {
        return Vec::new();
    };
    let sql = format!(
        "SELECT DISTINCT target FROM {}.{}",
        quote_ident(&s),
        quote_ident(&t)
    );
    match text_rows(client, &sql).await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| r.first().cloned().flatten())
            .filter_map(|v| match TableName::parse(&v) {
                Ok(n) => Some(n),
                Err(e) => {
                    debug!("ledger target {v:?}: {e:#}");
                    None
                }
            })
            .collect(),
        Err(e) => {
            debug!("no ledger tables: {e:#}");
            Vec::new()
        }
    }
}

/// Distinct warehouse connections of the (non-discarding) targets, each with its fixed target
/// tables.
fn connections(cfg: &RinConfig) -> Vec<(Redshift, Vec<TableName>)> {
    let mut out: Vec<(Redshift, Vec<TableName>)> = Vec::new();
    for t in cfg.targets.iter().filter(|t| !t.discard) {
        let mut conn = t.redshift.clone();
        conn.schema.clear();
        conn.table.clear();
        let i = match out.iter().position(|(c, _)| *c == conn) {
            Some(i) => i,
            None => {
                out.push((conn, Vec::new()));
                out.len() - 1
            }
        };
        let fixed = !expand_placeholders(&t.redshift.schema, &[]).1
            && !expand_placeholders(&t.redshift.table, &[]).1;
        if fixed && !t.redshift.table.is_empty() {
            let name = TableName {
                schema: if t.redshift.schema.is_empty() {
                    "public".into()
                } else {
                    t.redshift.schema.clone()
                },
                table: t.redshift.table.clone(),
            };
            if !out[i].1.contains(&name) {
                out[i].1.push(name);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// rounds
// ---------------------------------------------------------------------------------------------

/// Counters of a run (also `rin_maintenance_total{action}`), printed as JSON at exit.
#[derive(Default)]
pub struct Stats {
    rounds: AtomicU64,
    tables_checked: AtomicU64,
    planned: AtomicU64,
    vacuumed: AtomicU64,
    analyzed: AtomicU64,
    skipped_heavy_load: AtomicU64,
    skipped_vacuum_running: AtomicU64,
    failed: AtomicU64,
    disk_warnings: AtomicU64,
}

impl Stats {
    pub fn json(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "rounds": g(&self.rounds),
            "tables_checked": g(&self.tables_checked),
            "planned": g(&self.planned),
            "vacuumed": g(&self.vacuumed),
            "analyzed": g(&self.analyzed),
            "skipped_heavy_load": g(&self.skipped_heavy_load),
            "skipped_vacuum_running": g(&self.skipped_vacuum_running),
            "failed": g(&self.failed),
            "disk_warnings": g(&self.disk_warnings),
        })
        .to_string()
    }
}

fn disk_warning(stats: &Stats) {
    stats.disk_warnings.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("rin_maintenance_disk_warnings_total").increment(1);
}

fn count(stat: &AtomicU64, action: &'static str) {
    stat.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("rin_maintenance_total", "action" => action).increment(1);
}

/// What a round does with its plan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    /// Print the statements on stdout, run nothing.
    DryRun,
}

/// One round over every warehouse connection of the config. Returns false when stopped.
async fn round(
    cfg: &RinConfig,
    mode: Mode,
    stats: &Stats,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    stats.rounds.fetch_add(1, Ordering::Relaxed);
    for (conn, fixed) in connections(cfg) {
        if *stop.borrow() {
            return false;
        }
        if conn.driver == "redshift-data" {
            warn!(warehouse = %conn.visible_dsn(),
                "maintenance needs a wire-protocol connection; the Data API driver is skipped");
            continue;
        }
        match round_on(cfg, &conn, fixed, mode, stats, stop).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                count(&stats.failed, "failed");
                error!(warehouse = %conn.visible_dsn(), "maintenance round failed: {e:#}");
            }
        }
    }
    true
}

async fn round_on(
    cfg: &RinConfig,
    conn: &Redshift,
    fixed: Vec<TableName>,
    mode: Mode,
    stats: &Stats,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool> {
    let m = &cfg.ext.maintenance;
    let wh = cfg.ext.warehouse;
    let client = postgres::connect(conn, cfg.ext.sslmode).await?;
    let mut wanted: BTreeSet<TableName> = BTreeSet::new();
    if m.tables.is_empty() {
        wanted.extend(fixed);
        wanted.extend(ledger_tables(&client, cfg).await);
    } else {
        wanted.extend(m.tables.iter().cloned());
    }
    if wanted.is_empty() {
        info!(warehouse = %conn.visible_dsn(), "maintenance: no tables to look after");
        return Ok(true);
    }
    let disk = match disk_usage(&client, wh).await {
        Ok(d) => d,
        Err(e) => {
            warn!("cannot read the free disk space: {e:#}");
            None
        }
    };
    match &disk {
        None if wh == Warehouse::Postgres => {
            debug!("free-space check skipped: PostgreSQL has no STV_PARTITIONS")
        }
        None => {}
        Some(d) => {
            if let Some(w) = d.warning(m.disk_warn_pct.0, 0.0) {
                disk_warning(stats);
                warn!(warehouse = %conn.visible_dsn(), "free space: {w}");
            }
        }
    }
    // (table, statements, size in MB)
    let mut work: Vec<(TableName, Vec<Statement>, f64)> = Vec::new();
    match wh {
        Warehouse::Redshift => {
            for r in text_rows(&client, RS_TABLE_INFO).await? {
                let info = TableInfo {
                    schema: text(&r[0]),
                    table: text(&r[1]),
                    unsorted: num(&r[2]),
                    stats_off: num(&r[3]),
                    tbl_rows: num(&r[4]),
                    estimated_visible_rows: num(&r[5]),
                    size: num(&r[6]),
                    pct_used: num(&r[7]),
                };
                if let Some(n) = wanted
                    .iter()
                    .find(|n| n.matches(&info.schema, &info.table, wh))
                {
                    debug!(?info, "table statistics");
                    work.push((n.clone(), plan(&info, m), info.size.unwrap_or(0.0)));
                }
            }
        }
        Warehouse::Postgres => {
            for r in text_rows(&client, PG_TABLE_STATS).await? {
                let st = PgTableStats {
                    schema: text(&r[0]),
                    table: text(&r[1]),
                    n_live_tup: int(&r[2]),
                    n_dead_tup: int(&r[3]),
                    n_mod_since_analyze: int(&r[4]),
                    size_bytes: int(&r[5]),
                };
                if let Some(n) = wanted.iter().find(|n| n.matches(&st.schema, &st.table, wh)) {
                    debug!(?st, "table statistics");
                    let mb = st.size_bytes as f64 / 1_048_576.0;
                    work.push((n.clone(), plan_pg(&st, m), mb));
                }
            }
        }
    }
    for n in &wanted {
        if !work.iter().any(|(w, _, _)| w == n) {
            debug!(table = %n, "no statistics for this table (missing, or empty on Redshift)");
        }
    }
    work.sort_by(|a, b| a.0.cmp(&b.0));
    let mut vacuum_busy = false;
    for (name, statements, size_mb) in work {
        stats.tables_checked.fetch_add(1, Ordering::Relaxed);
        if statements.is_empty() {
            debug!(table = %name, "nothing to do");
            continue;
        }
        if mode == Mode::DryRun {
            for s in &statements {
                stats.planned.fetch_add(1, Ordering::Relaxed);
                println!("{};  -- {}", s.sql, s.reason);
            }
            continue;
        }
        if *stop.borrow() {
            return Ok(false);
        }
        if m.heavy_load_queries > 0 {
            // Not knowing is not a reason to skip: a VACUUM during loads only slows both.
            let running = match running_loads(&client, wh).await {
                Ok(n) => n,
                Err(e) => {
                    warn!("cannot count the running loads: {e:#}");
                    0
                }
            };
            if running >= i64::from(m.heavy_load_queries) {
                count(&stats.skipped_heavy_load, "skipped_heavy_load");
                info!(table = %name, running, threshold = m.heavy_load_queries,
                    "loads are heavy: maintenance of this table skipped this round");
                continue;
            }
        }
        for s in statements {
            stats.planned.fetch_add(1, Ordering::Relaxed);
            if s.action.vacuums() && vacuum_busy {
                count(&stats.skipped_vacuum_running, "skipped_vacuum_running");
                info!(table = %name, "another VACUUM is running: skipped this round");
                continue;
            }
            let guard = if s.action.vacuums() {
                if let Some(w) = disk.and_then(|d| d.warning(100.0, 2.5 * size_mb)) {
                    disk_warning(stats);
                    warn!(table = %name, "VACUUM may run short of disk space: {w}");
                }
                Some(VACUUM_LOCK.lock().await)
            } else {
                None
            };
            let started = Instant::now();
            info!(table = %name, sql = %s.sql, reason = %s.reason, "maintenance");
            let r = tokio::select! {
                r = client.batch_execute(&s.sql) => r,
                _ = stopped(stop) => {
                    cancel(&client, &s.sql).await;
                    return Ok(false);
                }
            };
            drop(guard);
            match r {
                Ok(()) => {
                    info!(table = %name, sql = %s.sql,
                        elapsed_ms = started.elapsed().as_millis() as u64, "done");
                    if s.action.vacuums() {
                        count(&stats.vacuumed, "vacuum");
                    }
                    if s.action.analyzes() {
                        count(&stats.analyzed, "analyze");
                    }
                }
                Err(e) => {
                    let msg = db_error(&e);
                    if s.action.vacuums() && is_vacuum_running(&msg) {
                        vacuum_busy = true;
                        count(&stats.skipped_vacuum_running, "skipped_vacuum_running");
                        warn!(table = %name, "{msg}: another VACUUM is running; skipping VACUUM this round");
                    } else {
                        count(&stats.failed, "failed");
                        error!(table = %name, sql = %s.sql, "maintenance statement failed: {msg}");
                    }
                    if client.is_closed() {
                        bail!("the warehouse connection closed");
                    }
                }
            }
        }
    }
    Ok(true)
}

/// Resolves once `stop` is true. A dropped sender never stops maintenance by itself.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            if *stop.borrow() {
                return;
            }
            std::future::pending::<()>().await;
        }
    }
}

/// Asks the server to cancel the statement in flight (at shutdown); best effort.
async fn cancel(client: &Client, sql: &str) {
    let token = client.cancel_token();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        token.cancel_query(tokio_postgres::NoTls),
    )
    .await;
    match r {
        Ok(Ok(())) => warn!(sql, "stopping: cancelled the statement in flight"),
        Ok(Err(e)) => warn!(sql, "stopping: cannot cancel the statement in flight: {e}"),
        Err(_) => warn!(sql, "stopping: cancel request timed out"),
    }
}

/// Rounds every `interval` until `stop` (the first at once); `once`: a single round.
async fn rounds(
    cfg: &RinConfig,
    mode: Mode,
    once: bool,
    stats: &Stats,
    mut stop: watch::Receiver<bool>,
) {
    let every = cfg.ext.maintenance.interval.0;
    loop {
        if !round(cfg, mode, stats, &mut stop).await || once {
            return;
        }
        info!(summary = %stats.json(), next_in = ?every, "maintenance round done");
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Maintenance inside `rin-ship import`: rounds every `rin_ship.maintenance.interval` until
/// `stop` turns true. Returns at once unless `rin_ship.maintenance.enabled_in_import` is set.
/// Errors are logged, never returned: maintenance must not stop the importer.
pub async fn run_in_background(cfg: Arc<RinConfig>, stop: watch::Receiver<bool>) {
    let m = &cfg.ext.maintenance;
    if !m.enabled_in_import {
        return;
    }
    if let Err(e) = m.validate() {
        error!("maintenance disabled: {e:#}");
        return;
    }
    info!(interval = ?m.interval.0, "table maintenance running inside the importer");
    let stats = Stats::default();
    rounds(&cfg, Mode::Run, false, &stats, stop).await;
    info!(summary = %stats.json(), "table maintenance stopped");
}

/// Command-line options of `rin-ship maintain`.
#[derive(Debug, Clone)]
pub struct MaintainArgs {
    pub config: PathBuf,
    pub once: bool,
    pub dry_run: bool,
}

/// `rin-ship maintain`.
pub fn main(args: MaintainArgs) -> Result<()> {
    let cfg = RinConfig::load(&args.config)?;
    cfg.ext
        .maintenance
        .validate()
        .with_context(|| format!("invalid Rin config {}", args.config.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rin-maintain")
        .build()?
        .block_on(async move {
            #[cfg(feature = "redshift")]
            super::iam::init(&cfg).await;
            let (stop_tx, stop_rx) = watch::channel(false);
            tokio::spawn(async move {
                super::termination().await;
                info!("signal received: stopping maintenance");
                let _ = stop_tx.send(true);
            });
            let mode = if args.dry_run {
                Mode::DryRun
            } else {
                Mode::Run
            };
            let stats = Stats::default();
            rounds(&cfg, mode, args.once || args.dry_run, &stats, stop_rx).await;
            println!("{}", stats.json());
            info!(summary = %stats.json(), "maintenance stopped");
            // A daemon's failed rounds were logged and retried; --once reports them.
            if (args.once || args.dry_run) && stats.failed.load(Ordering::Relaxed) > 0 {
                return Err(anyhow!(
                    "{} maintenance step(s) failed (see the log)",
                    stats.failed.load(Ordering::Relaxed)
                ));
            }
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Maintenance {
        Maintenance::default()
    }

    fn row(unsorted: Option<f64>, stats_off: Option<f64>, rows: f64) -> TableInfo {
        TableInfo {
            schema: "public".into(),
            table: "logs".into(),
            unsorted,
            stats_off,
            tbl_rows: Some(rows),
            estimated_visible_rows: Some(rows),
            size: Some(100.0),
            pct_used: Some(0.5),
        }
    }

    fn sqls(v: &[Statement]) -> Vec<&str> {
        v.iter().map(|s| s.sql.as_str()).collect()
    }

    /// (description, row, config, expected SQL)
    #[test]
    fn golden_redshift_plans() {
        let with = |f: &dyn Fn(&mut Maintenance)| {
            let mut c = cfg();
            f(&mut c);
            c
        };
        let deleted = |total: f64, visible: f64| TableInfo {
            estimated_visible_rows: Some(visible),
            tbl_rows: Some(total),
            ..row(Some(0.0), Some(0.0), total)
        };
        let cases: Vec<(&str, TableInfo, Maintenance, Vec<&str>)> = vec![
            ("clean", row(Some(0.0), Some(0.0), 1e6), cfg(), vec![]),
            (
                "unsorted above",
                row(Some(10.01), Some(0.0), 1e6),
                cfg(),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "unsorted exactly at the threshold",
                row(Some(10.0), Some(10.0), 1e6),
                cfg(),
                vec![],
            ),
            (
                "stats_off above",
                row(Some(1.0), Some(10.5), 1e6),
                cfg(),
                vec![r#"ANALYZE "public"."logs""#],
            ),
            (
                "both: VACUUM first",
                row(Some(50.0), Some(100.0), 1e6),
                cfg(),
                vec![
                    r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#,
                    r#"ANALYZE "public"."logs""#,
                ],
            ),
            (
                "no sort key: NULL unsorted never sorts",
                row(None, Some(0.0), 1e6),
                cfg(),
                vec![],
            ),
            (
                "no sort key, deleted rows above",
                TableInfo {
                    unsorted: None,
                    ..deleted(1000.0, 850.0)
                },
                cfg(),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "deleted rows exactly at the threshold",
                deleted(1000.0, 900.0),
                cfg(),
                vec![],
            ),
            (
                "empty table",
                row(Some(100.0), Some(100.0), 0.0),
                cfg(),
                vec![],
            ),
            (
                "unknown row count: statistics still decide",
                TableInfo {
                    tbl_rows: None,
                    estimated_visible_rows: None,
                    ..row(Some(30.0), None, 0.0)
                },
                cfg(),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            ("null stats_off", row(Some(0.0), None, 5.0), cfg(), vec![]),
            (
                "SORT ONLY ignores deleted rows",
                deleted(1000.0, 500.0),
                with(&|c| c.vacuum_mode = VacuumMode::SortOnly),
                vec![],
            ),
            (
                "SORT ONLY on unsorted rows",
                row(Some(20.0), Some(0.0), 10.0),
                with(&|c| {
                    c.vacuum_mode = VacuumMode::SortOnly;
                    c.vacuum_to_pct = Some(75)
                }),
                vec![r#"VACUUM SORT ONLY "public"."logs" TO 75 PERCENT"#],
            ),
            (
                "DELETE ONLY ignores unsorted rows",
                row(Some(90.0), Some(0.0), 10.0),
                with(&|c| c.vacuum_mode = VacuumMode::DeleteOnly),
                vec![],
            ),
            (
                "DELETE ONLY on deleted rows",
                deleted(1000.0, 800.0),
                with(&|c| c.vacuum_mode = VacuumMode::DeleteOnly),
                vec![r#"VACUUM DELETE ONLY "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "REINDEX never takes TO n PERCENT",
                row(Some(20.0), Some(0.0), 10.0),
                with(&|c| c.vacuum_mode = VacuumMode::Reindex),
                vec![r#"VACUUM REINDEX "public"."logs""#],
            ),
            (
                "vacuum_to_pct null",
                row(Some(20.0), Some(0.0), 10.0),
                with(&|c| c.vacuum_to_pct = None),
                vec![r#"VACUUM FULL "public"."logs""#],
            ),
            (
                "separate deleted threshold",
                deleted(1000.0, 960.0),
                with(&|c| c.vacuum_deleted_pct = Some(Pct(3.0))),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "zero thresholds: anything above zero",
                row(Some(0.01), Some(0.0), 10.0),
                with(&|c| {
                    c.vacuum_unsorted_pct = Pct(0.0);
                    c.analyze_stats_off_pct = Pct(0.0)
                }),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "always: a schedule, whatever the statistics",
                row(Some(0.0), Some(0.0), 10.0),
                with(&|c| c.always = true),
                vec![
                    r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#,
                    r#"ANALYZE "public"."logs""#,
                ],
            ),
            (
                "always still skips empty tables",
                row(Some(0.0), Some(0.0), 0.0),
                with(&|c| c.always = true),
                vec![],
            ),
            (
                "odd identifiers are quoted",
                TableInfo {
                    schema: "My\"Schema".into(),
                    table: "log table; DROP TABLE x".into(),
                    ..row(Some(11.0), Some(11.0), 10.0)
                },
                cfg(),
                vec![
                    r#"VACUUM FULL "My""Schema"."log table; DROP TABLE x" TO 95 PERCENT"#,
                    r#"ANALYZE "My""Schema"."log table; DROP TABLE x""#,
                ],
            ),
        ];
        for (what, r, c, want) in cases {
            let got = plan(&r, &c);
            assert_eq!(sqls(&got), want, "{what}");
            for s in &got {
                assert!(!s.reason.is_empty(), "{what}: no reason");
            }
        }
    }

    #[test]
    fn reasons_name_the_numbers() {
        let p = plan(&row(Some(12.5), Some(40.0), 10.0), &cfg());
        assert_eq!(p[0].action, Action::Vacuum);
        assert_eq!(p[0].reason, "unsorted 12.5% > 10%");
        assert_eq!(p[1].action, Action::Analyze);
        assert_eq!(p[1].reason, "stats_off 40% > 10%");
        let d = TableInfo {
            estimated_visible_rows: Some(700.0),
            ..row(Some(12.5), Some(0.0), 1000.0)
        };
        assert_eq!(
            plan(&d, &cfg())[0].reason,
            "unsorted 12.5% > 10%, rows marked for deletion 30% > 10%"
        );
    }

    fn pg(live: i64, dead: i64, modified: i64) -> PgTableStats {
        PgTableStats {
            schema: "public".into(),
            table: "t".into(),
            n_live_tup: live,
            n_dead_tup: dead,
            n_mod_since_analyze: modified,
            size_bytes: 8192,
        }
    }

    #[test]
    fn golden_postgres_plans() {
        let mut c15 = cfg();
        c15.vacuum_deleted_pct = Some(Pct(15.0));
        let mut always = cfg();
        always.always = true;
        let cases: Vec<(&str, PgTableStats, Maintenance, Vec<&str>)> = vec![
            ("clean", pg(1000, 0, 0), cfg(), vec![]),
            ("empty", pg(0, 0, 0), cfg(), vec![]),
            (
                "dead tuples above",
                pg(500, 500, 1500),
                cfg(),
                vec![r#"VACUUM (ANALYZE) "public"."t""#],
            ),
            ("dead tuples exactly at 10%", pg(900, 100, 0), cfg(), vec![]),
            (
                "dead tuples just above 10%",
                pg(899, 101, 0),
                cfg(),
                vec![r#"VACUUM (ANALYZE) "public"."t""#],
            ),
            (
                "modified since analyze above",
                pg(1200, 0, 200),
                cfg(),
                vec![r#"ANALYZE "public"."t""#],
            ),
            ("modified exactly at 10%", pg(1000, 0, 100), cfg(), vec![]),
            (
                "every row deleted",
                pg(0, 300, 600),
                cfg(),
                vec![r#"VACUUM (ANALYZE) "public"."t""#],
            ),
            (
                "never analyzed, rows just inserted",
                pg(0, 0, 50),
                cfg(),
                vec![r#"ANALYZE "public"."t""#],
            ),
            ("own dead-tuple threshold", pg(880, 120, 0), c15, vec![]),
            (
                "always",
                pg(10, 0, 0),
                always,
                vec![r#"VACUUM (ANALYZE) "public"."t""#],
            ),
        ];
        for (what, r, c, want) in cases {
            assert_eq!(sqls(&plan_pg(&r, &c)), want, "{what}");
        }
        let odd = PgTableStats {
            schema: "we.ird".into(),
            table: "Odd \"Name\"".into(),
            ..pg(1, 9, 0)
        };
        assert_eq!(
            sqls(&plan_pg(&odd, &cfg())),
            vec![r#"VACUUM (ANALYZE) "we.ird"."Odd ""Name""""#]
        );
    }

    #[test]
    fn table_names() {
        let p = |s: &str| TableName::parse(s).map(|n| (n.schema, n.table));
        assert_eq!(p("logs").unwrap(), ("public".into(), "logs".into()));
        assert_eq!(p("app.Logs").unwrap(), ("app".into(), "Logs".into()));
        assert_eq!(
            p(r#""my.schema"."odd ""name""""#).unwrap(),
            ("my.schema".into(), "odd \"name\"".into())
        );
        assert_eq!(
            p(r#""public"."logs""#).unwrap(),
            ("public".into(), "logs".into())
        );
        assert_eq!(p(r#""logs""#).unwrap(), ("public".into(), "logs".into()));
        assert!(p("a.b.c").is_err());
        assert!(p("").is_err());
        assert!(p("a.").is_err());
        assert!(p(r#""unterminated"#).is_err());
        assert!(p(r#"a"b"#).is_err());
        assert!(p(r#""a"x.b"#).is_err());
        // What the ledger stores (Destination::qualified) reads back.
        let n = TableName::parse(r#""s"."t""x""#).unwrap();
        assert_eq!(n.quoted(), r#""s"."t""x""#);
        assert!(n.matches("s", "t\"x", Warehouse::Postgres));
        assert!(!n.matches("S", "t\"x", Warehouse::Postgres));
        assert!(n.matches("S", "T\"X", Warehouse::Redshift));
    }

    #[test]
    fn disk_warnings() {
        let d = DiskUsage {
            capacity_mb: 1000.0,
            used_mb: 700.0,
        };
        assert_eq!(d.used_pct(), 70.0);
        assert_eq!(d.warning(80.0, 0.0), None);
        assert_eq!(
            d.warning(80.0, 150.0).unwrap(),
            "disks 70% used, 85% after about 150 MB more (warning above 80%)"
        );
        assert_eq!(
            d.warning(80.0, 400.0).unwrap(),
            "needs about 400 MB but only 300 MB of 1000 MB are free"
        );
        let full = DiskUsage {
            capacity_mb: 1000.0,
            used_mb: 850.0,
        };
        assert_eq!(
            full.warning(80.0, 0.0).unwrap(),
            "disks 85% used (warning above 80%)"
        );
        assert_eq!(full.warning(85.0, 0.0), None);
    }

    #[test]
    fn vacuum_running_errors() {
        assert!(is_vacuum_running(
            "XX000: VACUUM is running. HINT: re-execute after other vacuum finished"
        ));
        assert!(is_vacuum_running("another vacuum is already running"));
        assert!(!is_vacuum_running("42P01: relation \"x\" does not exist"));
        assert!(!is_vacuum_running("query is running too long"));
    }

    #[test]
    fn heavy_load_filter_matches_rin_ship_copy() {
        let f = load_statement_filter("query");
        assert!(f.contains("ltrim(query) ILIKE 'copy%'"));
        assert!(f.contains("ltrim(query) ILIKE '/*%*/ copy%'"));
        assert!(super::super::redshift::SQL_PREFIX.starts_with("/*"));
        assert!(super::super::redshift::SQL_PREFIX.ends_with("*/ "));
    }

    const BASE: &str = "queue_name: q\nredshift: {host: h, dbname: d, user: u}\n\
        s3: {bucket: b}\ntargets:\n  - redshift: {table: logs}\n    s3: {key_prefix: a/}\n  \
        - redshift: {schema: $1, table: t}\n    s3: {key_regexp: '^b/([a-z]+)/'}\n  \
        - redshift: {schema: app, table: web, host: other}\n    s3: {key_prefix: c/}\n  \
        - s3: {key_prefix: d/}\n    discard: true\n";

    fn parse(extra: &str) -> Result<RinConfig> {
        RinConfig::parse(&format!("{BASE}{extra}"), &|_| None)
    }

    #[test]
    fn config_and_default_tables() {
        let c = parse("").unwrap();
        let m = &c.ext.maintenance;
        assert_eq!(m.vacuum_unsorted_pct, Pct(10.0));
        assert_eq!(m.interval.0, Duration::from_secs(6 * 3600));
        assert_eq!(m.heavy_load_queries, 2);
        assert!(!m.enabled_in_import);
        let conns = connections(&c);
        assert_eq!(conns.len(), 2, "{conns:?}");
        assert_eq!(conns[0].0.host, "h");
        assert_eq!(
            conns[0].1,
            vec![TableName::parse("public.logs").unwrap()],
            "the $1 target is not a fixed table"
        );
        assert_eq!(conns[1].1, vec![TableName::parse("app.web").unwrap()]);

        let c = parse(
            "rin_ship:\n  maintenance:\n    tables: [app.web, '\"odd.s\".\"T x\"']\n    \
             vacuum_mode: SORT ONLY\n    vacuum_to_pct: null\n    schedule: 30m\n    \
             heavy_load_queries: 0\n    enabled_in_import: true\n",
        )
        .unwrap();
        let m = &c.ext.maintenance;
        assert_eq!(m.tables[1].quoted(), r#""odd.s"."T x""#);
        assert_eq!(m.vacuum_mode, VacuumMode::SortOnly);
        assert_eq!(m.vacuum_to_pct, None);
        assert_eq!(m.interval.0, Duration::from_secs(1800));
        assert!(m.enabled_in_import);

        for (bad, field) in [
            ("vacuum_unsorted_pct: 101", "vacuum_unsorted_pct"),
            ("vacuum_mode: SOMETIMES", "vacuum_mode"),
            ("vacuum_to_pct: 200", "vacuum_to_pct"),
            ("tables: ['a.b.c']", "tables"),
            ("bogus: 1", "bogus"),
        ] {
            let e = parse(&format!("rin_ship:\n  maintenance:\n    {bad}\n")).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(field), "{bad}: {e}");
        }
        let c = parse("rin_ship:\n  maintenance:\n    interval: 0s\n").unwrap();
        assert!(c.ext.maintenance.validate().is_err());
    }
}
