//! Amazon Redshift over the wire protocol: the cluster reads S3 itself. A load writes a
//! manifest of the exact objects, runs the statements of the target's insert mode ([`sql`]:
//! one COPY over the manifest, or the keyed modes' stage + dedupe) inside the ledger
//! transaction ([`super::wire::LedgerTx`]), and on "Load into table ... failed" reads why from
//! the load-error views, naming the objects at fault. Before each COPY the cluster's free space
//! is checked (a warning, never a refusal). [`iam`]: password-less logins.
//!
//! Must never: COPY from a bare key (Redshift reads a key as a prefix); show a secret (every
//! statement is logged masked); `TRUNCATE` inside the transaction (it would commit).

#[cfg(feature = "redshift")]
pub mod iam;
pub mod sql;

use super::dry_run::LedgerShown;
use super::wire::{self, LedgerTx, first_value, pg_failure};
use super::{Driver, Env, Warehouse, stats};
use crate::common::codec::Codec;
use crate::load::ledger::{
    Dialect, ErrorDetail, ErrorKind, Group, Item, ItemResult, LoadFailure, failure::match_file,
};
use crate::load::rin::{
    Destination, Redshift as Connection, RinConfig, Target, Warehouse as Dialects,
};
use async_trait::async_trait;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

/// The Redshift wire-protocol driver (`rin_ship.warehouse: redshift`, Rin's default).
pub struct Redshift;

#[async_trait]
impl Driver for Redshift {
    async fn connect(
        &self,
        env: &Env<'_>,
        conn: &Connection,
    ) -> Result<Box<dyn Warehouse>, LoadFailure> {
        Ok(Box::new(Session(
            wire::Session::open(env, conn, Dialect::Redshift).await?,
        )))
    }

    fn dry_run(
        &self,
        cfg: &RinConfig,
        dest: &Destination,
        objects: &[(&str, &str)],
    ) -> Vec<String> {
        let t = cfg.target(dest.target);
        let q = dest.qualified();
        let m = Manifest::new(cfg, t, &q, objects);
        let shown = LedgerShown::new(cfg, Dialect::Redshift, dest, objects);
        let mut out = shown.on_connect();
        out.push(format!("-- writes the manifest {}: {}", m.url, m.body));
        out.extend(shown.begin());
        let option = m.sql_option(t);
        let plan = sql::LoadPlan {
            sql_option: &option,
            ..sql::LoadPlan::new(cfg, t, &q, &m.url)
        };
        out.extend(sql::load_statements(&plan, true));
        let (rows, batch_rows) = if plan.mode.keyed() {
            (
                "the rows written (one object; NULL for several)",
                "the same, for the load",
            )
        } else {
            out.push("SELECT pg_last_copy_count()".to_string());
            ("that count (one object; NULL for several)", "that count")
        };
        out.extend(shown.record(rows, batch_rows));
        out.push("COMMIT".to_string());
        out
    }
}

/// The manifest of one load: where it goes and what it lists.
pub struct Manifest {
    pub bucket: String,
    pub key: String,
    pub body: String,
    /// `s3://bucket/key`.
    pub url: String,
    /// The compression every listed key names (`None`: unknown, or not the same for all).
    pub codec: Option<Codec>,
}

impl Manifest {
    /// The manifest listing `objects` (bucket, key) for table `qualified` of target `t`, at a
    /// key deterministic in its entries, so a retried load rewrites the same manifest.
    pub fn new(cfg: &RinConfig, t: &Target, qualified: &str, objects: &[(&str, &str)]) -> Manifest {
        let (bucket, prefix) = cfg.manifest_location(&t.s3.bucket);
        let key = sql::manifest_key(&prefix, qualified, objects);
        let codecs: Vec<Option<Codec>> = objects.iter().map(|(_, k)| Codec::of_key(k)).collect();
        Manifest {
            url: format!("s3://{bucket}/{key}"),
            body: sql::manifest_json(objects),
            bucket,
            key,
            codec: codecs
                .first()
                .copied()
                .flatten()
                .filter(|c| codecs.iter().all(|x| *x == Some(*c))),
        }
    }

    /// Target `t`'s `sql_option` with the compression of these objects
    /// ([`sql::fit_compression`]); a keyword that had to change is logged and counted
    /// (`rin_import_compression_mismatch_total`).
    pub fn sql_option(&self, t: &Target) -> String {
        let (option, warning) = sql::fit_compression(&t.sql_option, self.codec);
        if let Some(w) = warning {
            metrics::counter!("rin_import_compression_mismatch_total").increment(1);
            warn!(target = t.index, "{w}");
        }
        option
    }

    /// The manifest of items `which` of `items`.
    pub fn of_items(
        cfg: &RinConfig,
        t: &Target,
        qualified: &str,
        items: &[Item],
        which: &[usize],
    ) -> Manifest {
        let listed: Vec<(&str, &str)> = which
            .iter()
            .map(|&i| (items[i].bucket.as_str(), items[i].key.as_str()))
            .collect();
        Manifest::new(cfg, t, qualified, &listed)
    }
}

/// One connection.
struct Session(wire::Session);

#[async_trait]
impl Warehouse for Session {
    async fn load(&mut self, env: &Env<'_>, group: &Group) -> Result<Vec<ItemResult>, LoadFailure> {
        warn_if_disk_short(&self.0.client, env.cfg, group).await;
        let loaded = self
            .0
            .load_in_transaction(env, group, async |ltx, new| {
                copy(ltx, env, group, new).await
            })
            .await;
        match loaded {
            Err(f) if self.0.is_open() => Err(explain(&self.0.client, group, f).await),
            r => r,
        }
    }

    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// The manifest, then [`sql::load_statements`] in the plan's insert mode, then one ledger row
/// per object (the row count per object only when there is one object).
async fn copy(
    ltx: &mut LedgerTx<'_>,
    env: &Env<'_>,
    group: &Group,
    new: &[usize],
) -> Result<u64, LoadFailure> {
    let qualified = group.dest.qualified();
    let target = env.cfg.target(group.dest.target);
    let m = Manifest::of_items(env.cfg, target, &qualified, &group.items, new);
    env.objects
        .put_small(&m.bucket, &m.key, m.body.clone())
        .await
        .map_err(|e| {
            LoadFailure::new(ErrorKind::Transient, format!("writing the manifest: {e:#}"))
        })?;
    let option = m.sql_option(target);
    let plan = sql::LoadPlan {
        sql_option: &option,
        ..sql::LoadPlan::new(env.cfg, target, &qualified, &m.url)
    };
    let sqls = sql::load_statements(&plan, false);
    let shown = sql::load_statements(&plan, true);
    let mut counts = Vec::new();
    for (statement, shown) in sqls.iter().zip(&shown) {
        info!(sql = %shown, objects = new.len(), mode = plan.mode.name(), "load statement");
        let msgs = ltx
            .tx
            .simple_query(statement)
            .await
            .map_err(|e| pg_failure(&e, true, shown))?;
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
        first_value(&ltx.tx, "SELECT pg_last_copy_count()").await?
    };
    for (n, &i) in new.iter().enumerate() {
        let single = (new.len() == 1).then_some(count);
        ltx.record(&group.items[i], single, Some(count)).await?;
        ltx.pending
            .settle(i, ItemResult::Loaded((n == 0).then_some(count as u64)));
    }
    Ok(count as u64)
}

/// After a load failed with "check sys_load_error_detail" (its transaction rolled back), reads
/// why from the load-error views and names the objects at fault.
async fn explain(client: &Client, group: &Group, mut f: LoadFailure) -> LoadFailure {
    let wanted = f.kind == ErrorKind::Data
        && f.details.is_empty()
        && crate::load::ledger::failure::is_load_error_message(f.reason());
    if !wanted || client.is_closed() {
        return f;
    }
    let mut rows = Vec::new();
    for q in sql::LOAD_ERROR_QUERIES {
        match client.simple_query(q).await {
            Ok(msgs) => {
                rows = sql::parse_load_errors(msgs.iter().filter_map(|m| match m {
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
    attribute_load_errors(&mut f, group, &rows);
    f
}

/// Adds the load-error rows of this group's objects (the views may hold older ones of this
/// session too; all of them when none is ours) to `f`, naming the objects at fault.
pub fn attribute_load_errors(f: &mut LoadFailure, group: &Group, rows: &[sql::LoadErrorRow]) {
    let urls: Vec<String> = group.items.iter().map(Item::url).collect();
    let ours: Vec<bool> = rows
        .iter()
        .map(|r| match_file(&r.file, &urls).is_some())
        .collect();
    let any_ours = ours.contains(&true);
    for (r, mine) in rows.iter().zip(ours) {
        if any_ours && !mine {
            continue;
        }
        if let Some(i) = match_file(&r.file, &urls)
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
}

/// Rough disk need of a COPY per stored byte: gzip NDJSON inflates about 8x, Redshift's
/// compressed columns take back about two thirds of that.
const COPY_BYTES_PER_STORED_BYTE: f64 = 3.0;

/// Warns (log and `rin_import_disk_warnings_total`) before a COPY that may not fit in the
/// cluster's free space or would fill it past `maintenance.disk_warn_pct`. The cluster's usage
/// is read at most once a minute; the check never fails or delays a load for long.
async fn warn_if_disk_short(client: &Client, cfg: &RinConfig, group: &Group) {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static USAGE: Mutex<Option<(Instant, stats::DiskUsage)>> = Mutex::new(None);
    let cached = USAGE
        .lock()
        .unwrap()
        .as_ref()
        .filter(|(at, _)| at.elapsed() < Duration::from_secs(60))
        .map(|(_, u)| *u);
    let usage = match cached {
        Some(u) => u,
        None => match stats::disk_usage(client, Dialects::Redshift).await {
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
