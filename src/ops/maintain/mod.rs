//! Table maintenance (`rin-ship maintain`, and optionally inside `rin-ship import`): `VACUUM`
//! and `ANALYZE` of the loaded tables when their statistics say so ([`plan`]), on an interval.
//! A command on top of the loader: it reads the Rin config, connects to each warehouse over the
//! wire protocol and reads its statistics ([`crate::load::warehouse::stats`]).
//!
//! A round, per warehouse connection: the tables to look after (the config's list, else every
//! fixed target table and every table the ledger names); a free-space warning; one plan per
//! table from its statistics; the plan's statements, one at a time, skipped while loads are
//! heavy or another VACUUM runs.
//!
//! Must never: run a VACUUM inside a transaction (it cannot); run two VACUUMs at once from this
//! process ([`VACUUM_LOCK`]); start one while at least `heavy_load_queries` COPY/INSERT
//! statements are running; stop the importer it runs inside (its errors are logged).

pub mod plan;

use crate::common::shutdown::{self, Shutdown};
use crate::load::ledger::{Dialect, Ledger};
use crate::load::rin::maintenance::TableName;
use crate::load::rin::template::expand_placeholders;
use crate::load::rin::{DriverKind, Redshift, RinConfig, Warehouse};
use crate::load::warehouse::stats::{self, DiskUsage};
use crate::load::warehouse::wire;
use anyhow::{Context, Result, anyhow, bail};
use plan::{Statement, plan, plan_pg};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use tracing::{debug, error, info, warn};

/// One VACUUM at a time from this process (Redshift allows one per cluster anyway).
pub static VACUUM_LOCK: Mutex<()> = Mutex::const_new(());

/// Distinct warehouse connections of the (non-discarding) targets, each with its fixed target
/// tables.
fn connections(cfg: &RinConfig) -> Vec<(Redshift, DriverKind, Vec<TableName>)> {
    let mut out: Vec<(Redshift, DriverKind, Vec<TableName>)> = Vec::new();
    for t in cfg.targets.iter().filter(|t| !t.discard) {
        let conn = t.redshift.without_table();
        let i = match out.iter().position(|(c, _, _)| *c == conn) {
            Some(i) => i,
            None => {
                out.push((conn, t.driver, Vec::new()));
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
            if !out[i].2.contains(&name) {
                out[i].2.push(name);
            }
        }
    }
    out
}

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
async fn round(cfg: &RinConfig, mode: Mode, stats: &Stats, stop: &mut Shutdown) -> bool {
    stats.rounds.fetch_add(1, Ordering::Relaxed);
    for (conn, driver, fixed) in connections(cfg) {
        if stop.is_triggered() {
            return false;
        }
        if !matches!(driver, DriverKind::Postgres | DriverKind::Redshift) {
            let which = match driver {
                DriverKind::RedshiftData => "the Data API driver",
                _ => "the embedded warehouse",
            };
            warn!(warehouse = %conn.visible_dsn(),
                "maintenance needs a wire-protocol connection; {which} is skipped");
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

/// One table's plan: its statements and its size in MB (for the VACUUM free-space check).
struct Work {
    table: TableName,
    statements: Vec<Statement>,
    size_mb: f64,
}

/// A round on one warehouse. Returns false when stopped.
async fn round_on(
    cfg: &RinConfig,
    conn: &Redshift,
    fixed: Vec<TableName>,
    mode: Mode,
    stats: &Stats,
    stop: &mut Shutdown,
) -> Result<bool> {
    let client = wire::connect(conn, cfg.ext.sslmode).await?;
    let wanted = tables_to_look_after(&client, cfg, fixed).await;
    if wanted.is_empty() {
        info!(warehouse = %conn.visible_dsn(), "maintenance: no tables to look after");
        return Ok(true);
    }
    let disk = check_free_space(&client, cfg, conn, stats).await;
    let work = plan_tables(&client, cfg, &wanted).await?;
    run_work(&client, cfg, work, disk, mode, stats, stop).await
}

/// The config's `tables`, else the fixed target tables and every table the ledger names.
async fn tables_to_look_after(
    client: &Client,
    cfg: &RinConfig,
    fixed: Vec<TableName>,
) -> BTreeSet<TableName> {
    let m = &cfg.ext.maintenance;
    let mut wanted: BTreeSet<TableName> = BTreeSet::new();
    if !m.tables.is_empty() {
        wanted.extend(m.tables.iter().cloned());
        return wanted;
    }
    wanted.extend(fixed);
    let dialect = match cfg.ext.warehouse {
        Warehouse::Redshift => Dialect::Redshift,
        Warehouse::Postgres => Dialect::Postgres,
    };
    let ledger = Ledger::new(cfg, dialect);
    for v in stats::ledger_targets(client, &ledger).await {
        match TableName::parse(&v) {
            Ok(n) => {
                wanted.insert(n);
            }
            Err(e) => debug!("ledger target {v:?}: {e:#}"),
        }
    }
    wanted
}

/// The cluster's disk space (Redshift), with a warning when it is fuller than
/// `disk_warn_pct`.
async fn check_free_space(
    client: &Client,
    cfg: &RinConfig,
    conn: &Redshift,
    stats: &Stats,
) -> Option<DiskUsage> {
    let wh = cfg.ext.warehouse;
    let disk = match stats::disk_usage(client, wh).await {
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
            if let Some(w) = d.warning(cfg.ext.maintenance.disk_warn_pct.0, 0.0) {
                disk_warning(stats);
                warn!(warehouse = %conn.visible_dsn(), "free space: {w}");
            }
        }
    }
    disk
}

/// The plan of every wanted table the statistics know, in name order.
async fn plan_tables(
    client: &Client,
    cfg: &RinConfig,
    wanted: &BTreeSet<TableName>,
) -> Result<Vec<Work>> {
    let m = &cfg.ext.maintenance;
    let wh = cfg.ext.warehouse;
    let find = |schema: &str, table: &str| wanted.iter().find(|n| n.matches(schema, table, wh));
    let mut work = Vec::new();
    match wh {
        Warehouse::Redshift => {
            for info in stats::table_info(client).await? {
                if let Some(n) = find(&info.schema, &info.table) {
                    debug!(?info, "table statistics");
                    work.push(Work {
                        table: n.clone(),
                        statements: plan(&info, m),
                        size_mb: info.size.unwrap_or(0.0),
                    });
                }
            }
        }
        Warehouse::Postgres => {
            for st in stats::pg_table_stats(client).await? {
                if let Some(n) = find(&st.schema, &st.table) {
                    debug!(?st, "table statistics");
                    work.push(Work {
                        table: n.clone(),
                        statements: plan_pg(&st, m),
                        size_mb: st.size_bytes as f64 / 1_048_576.0,
                    });
                }
            }
        }
    }
    for n in wanted {
        if !work.iter().any(|w| w.table == *n) {
            debug!(table = %n, "no statistics for this table (missing, or empty on Redshift)");
        }
    }
    work.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(work)
}

/// Runs (or, in a dry run, prints) the planned statements. Returns false when stopped.
async fn run_work(
    client: &Client,
    cfg: &RinConfig,
    work: Vec<Work>,
    disk: Option<DiskUsage>,
    mode: Mode,
    stats: &Stats,
    stop: &mut Shutdown,
) -> Result<bool> {
    let mut vacuum_busy = false;
    for Work {
        table: name,
        statements,
        size_mb,
    } in work
    {
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
        if stop.is_triggered() {
            return Ok(false);
        }
        if loads_are_heavy(client, cfg, &name, stats).await {
            continue;
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
                _ = stop.wait() => {
                    stats::cancel(client, &s.sql).await;
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
                    let msg = stats::db_error(&e);
                    if s.action.vacuums() && stats::is_vacuum_running(&msg) {
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

/// Whether at least `heavy_load_queries` COPY/INSERT statements run now (then this table's
/// maintenance waits for the next round).
async fn loads_are_heavy(
    client: &Client,
    cfg: &RinConfig,
    name: &TableName,
    stats: &Stats,
) -> bool {
    let threshold = cfg.ext.maintenance.heavy_load_queries;
    if threshold == 0 {
        return false;
    }
    // Not knowing is not a reason to skip: a VACUUM during loads only slows both.
    let running = match stats::running_loads(client, cfg.ext.warehouse).await {
        Ok(n) => n,
        Err(e) => {
            warn!("cannot count the running loads: {e:#}");
            0
        }
    };
    if running >= i64::from(threshold) {
        count(&stats.skipped_heavy_load, "skipped_heavy_load");
        info!(table = %name, running, threshold,
            "loads are heavy: maintenance of this table skipped this round");
        return true;
    }
    false
}

/// One round over just `tables` (what `rin-ship sync` runs after passes that changed many
/// rows): each gets what its statistics call for under `cfg`'s thresholds. Errors are logged,
/// never returned; the summary (JSON) says what ran.
pub async fn round_over(cfg: &RinConfig, tables: Vec<TableName>) -> serde_json::Value {
    let mut cfg = cfg.clone();
    cfg.ext.maintenance.tables = tables;
    let stats = Stats::default();
    // Never triggered: the round runs to its end (the caller is between passes).
    let (_trigger, mut stop) = shutdown::channel();
    round(&cfg, Mode::Run, &stats, &mut stop).await;
    serde_json::from_str(&stats.json()).unwrap_or_default()
}

/// Rounds every `interval` until `stop` (the first at once); `once`: a single round.
async fn rounds(cfg: &RinConfig, mode: Mode, once: bool, stats: &Stats, mut stop: Shutdown) {
    let every = cfg.ext.maintenance.interval.0;
    loop {
        if !round(cfg, mode, stats, &mut stop).await || once {
            return;
        }
        info!(summary = %stats.json(), next_in = ?every, "maintenance round done");
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait() => return,
        }
    }
}

/// Maintenance inside `rin-ship import`: rounds every `rin_ship.maintenance.interval` until
/// `stop`. Returns at once unless `rin_ship.maintenance.enabled_in_import` is set. Errors are
/// logged, never returned: maintenance must not stop the importer.
#[cfg(all(feature = "s3", feature = "sqs"))]
pub async fn run_in_background(cfg: std::sync::Arc<RinConfig>, stop: Shutdown) {
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
            crate::load::warehouse::redshift::iam::init(&cfg).await;
            let (trigger, stop) = shutdown::channel();
            shutdown::trigger_on_signal(trigger, "stopping maintenance");
            let mode = if args.dry_run {
                Mode::DryRun
            } else {
                Mode::Run
            };
            let stats = Stats::default();
            rounds(&cfg, mode, args.once || args.dry_run, &stats, stop).await;
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
    use crate::load::rin::maintenance::{Pct, VacuumMode};
    use std::time::Duration;

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
            conns[0].2,
            vec![TableName::parse("public.logs").unwrap()],
            "the $1 target is not a fixed table"
        );
        assert_eq!(conns[1].2, vec![TableName::parse("app.web").unwrap()]);

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
