//! What a wire-protocol warehouse says about itself: per-table statistics (Redshift
//! `SVV_TABLE_INFO`, PostgreSQL `pg_stat_user_tables`), disk space (Redshift `STV_PARTITIONS`),
//! the loads running now (`STV_RECENTS`, `pg_stat_activity`) and the tables the ledger names.
//! Read by `rin-ship maintain` and by the Redshift driver's free-space check before a COPY.
//!
//! Must never: change anything (every statement here is a read, except [`cancel`], which asks
//! the server to stop our own statement).

use crate::load::ledger::Ledger;
use crate::load::rin::Warehouse;
use anyhow::{Result, anyhow};
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::{debug, warn};

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

/// A percentage as the messages show it: at most two decimals, no trailing zeros.
pub fn pct(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The text of a server error (tokio-postgres' Display says only "db error").
pub fn db_error(e: &tokio_postgres::Error) -> String {
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

/// Redshift: one row per (non-empty) user table.
pub async fn table_info(client: &Client) -> Result<Vec<TableInfo>> {
    Ok(text_rows(client, RS_TABLE_INFO)
        .await?
        .iter()
        .map(|r| TableInfo {
            schema: text(&r[0]),
            table: text(&r[1]),
            unsorted: num(&r[2]),
            stats_off: num(&r[3]),
            tbl_rows: num(&r[4]),
            estimated_visible_rows: num(&r[5]),
            size: num(&r[6]),
            pct_used: num(&r[7]),
        })
        .collect())
}

/// PostgreSQL: one row per user table.
pub async fn pg_table_stats(client: &Client) -> Result<Vec<PgTableStats>> {
    Ok(text_rows(client, PG_TABLE_STATS)
        .await?
        .iter()
        .map(|r| PgTableStats {
            schema: text(&r[0]),
            table: text(&r[1]),
            n_live_tup: int(&r[2]),
            n_dead_tup: int(&r[3]),
            n_mod_since_analyze: int(&r[4]),
            size_bytes: int(&r[5]),
        })
        .collect())
}

/// COPY / INSERT statements, also behind a leading comment such as rin-ship's `/* rin-ship */`.
pub fn load_statement_filter(col: &str) -> String {
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

/// The distinct values of the ledger's `target` column (none when there is no ledger yet).
pub async fn ledger_targets(client: &Client, ledger: &Ledger) -> Vec<String> {
    let sql = format!("SELECT DISTINCT target FROM {}", ledger.ident());
    match text_rows(client, &sql).await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| r.first().cloned().flatten())
            .collect(),
        Err(e) => {
            debug!("no ledger tables: {e:#}");
            Vec::new()
        }
    }
}

/// Asks the server to cancel the statement in flight (at shutdown); best effort.
pub async fn cancel(client: &Client, sql: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(crate::load::warehouse::redshift::sql::SQL_PREFIX.starts_with("/*"));
        assert!(crate::load::warehouse::redshift::sql::SQL_PREFIX.ends_with("*/ "));
    }
}
