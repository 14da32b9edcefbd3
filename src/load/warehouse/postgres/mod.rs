//! PostgreSQL as a warehouse: rin-ship reads each object itself, decompresses it and writes
//! its lines into the table, inside the ledger transaction ([`super::wire::LedgerTx`]), in the
//! target's insert mode:
//!
//! - `APPEND` and `TRUNCATE` write object by object (one ledger row each, with its row count;
//!   `TRUNCATE` empties the table with `DELETE` in the same transaction first).
//! - `KEEP_EXISTING` / `OVERWRITE_EXISTING` stage every new object, in order, then pick one
//!   row per key and write it (ledger rows carry each object's rows that were written).
//!
//! Two ways to write the lines, with the same results: [`direct`] (rin-ship turns each line
//! into a COPY row itself, [`rows`], so the server parses no JSON: into the table, or a typed
//! stage for the keyed modes), and [`jsonb`] (each line staged as `jsonb`, then
//! `jsonb_populate_record`), which tables with a composite column take. A data error the server
//! gives no line for is explained by [`explain`].
//!
//! Must never: write a row outside the ledger transaction; `TRUNCATE` (it would commit, and
//! readers would see an empty table).

pub mod columns;
mod copy;
mod direct;
mod explain;
mod jsonb;
mod rows;
mod stage;

use super::dry_run::LedgerShown;
use super::wire::{self, LedgerTx, pg_failure};
use super::{Driver, Env, Warehouse, open_object};
use crate::load::ledger::{Dialect, ErrorKind, Group, ItemResult, LoadFailure};
use crate::load::rin::{Destination, InsertMode, Redshift, RinConfig, quote_ident};
use async_trait::async_trait;
use columns::{Column, TYPED, insert_sql, table_columns, typed_stage_ddl};
use stage::STAGE_DDL;

/// The PostgreSQL driver (`rin_ship.warehouse: postgres`).
pub struct Postgres;

#[async_trait]
impl Driver for Postgres {
    async fn connect(
        &self,
        env: &Env<'_>,
        conn: &Redshift,
    ) -> Result<Box<dyn Warehouse>, LoadFailure> {
        Ok(Box::new(Session(
            wire::Session::open(env, conn, Dialect::Postgres).await?,
        )))
    }

    fn dry_run(
        &self,
        cfg: &RinConfig,
        dest: &Destination,
        objects: &[(&str, &str)],
    ) -> Vec<String> {
        let q = dest.qualified();
        let mode = cfg.target(dest.target).insert_mode;
        let shown = LedgerShown::new(cfg, Dialect::Postgres, dest, objects);
        let mut out = shown.on_connect();
        out.extend(shown.begin());
        out.push(STAGE_DDL.to_string());
        out.push(format!(
            "-- reads the columns of {q} (pg_attribute, pg_attrdef, pg_type); with a composite \
             column, each line is staged in rin_ship_stage and written by jsonb_populate_record \
             instead of the COPY below"
        ));
        // Each line is turned into a row by rin-ship; a run of rows ends where a line gives
        // values to other defaulted columns.
        let copy = |table: &str, bucket: &str, key: &str| {
            format!(
                "COPY {table} (<the columns the lines give values to>) FROM STDIN  -- \
                 s3://{bucket}/{key}, decompressed, each line a row"
            )
        };
        if mode.keyed() {
            out.push(typed_stage_ddl(&q));
            for (bucket, key) in objects {
                out.push(copy(TYPED, bucket, key).replace("(<", "(rin_ship_n, <"));
            }
            out.push(format!(
                "-- one row per key picked into rin_ship_pick, then DELETE ... USING and \
                 INSERT INTO {q} (<columns of {q}>) SELECT ... FROM rin_ship_pick (the \
                 statements follow the columns of {q})"
            ));
            out.extend(shown.record(
                "the rows written from the object",
                "the rows the load wrote",
            ));
        } else {
            if mode == InsertMode::Truncate {
                out.push(format!(
                    "DELETE FROM {q}  -- before the first object's rows"
                ));
            }
            let records = shown.record("the rows written from the object", "NULL");
            for ((bucket, key), record) in objects.iter().zip(records) {
                out.push(copy(&q, bucket, key));
                out.push(record);
            }
        }
        out.push("COMMIT".to_string());
        out
    }
}

/// One connection.
struct Session(wire::Session);

#[async_trait]
impl Warehouse for Session {
    async fn load(&mut self, env: &Env<'_>, group: &Group) -> Result<Vec<ItemResult>, LoadFailure> {
        // `schema: evolve`: an attempt that met new keys added their columns; load again with
        // them (a few times: a later object of the group may bring more).
        for _ in 0..EVOLVE_ATTEMPTS {
            match self.load_once(env, group).await {
                Err(LoadFailure {
                    new_columns: Some(columns),
                    ..
                }) if self.0.is_open() => add_columns(&self.0.client, group, &columns).await?,
                other => return other,
            }
        }
        self.load_once(env, group).await
    }

    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// Loads (`schema: evolve`) that add columns before one goes through with them all.
const EVOLVE_ATTEMPTS: usize = 3;

/// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` for each new key, committed on its own (so the
/// next attempt's transaction sees them), counted and logged.
async fn add_columns(
    client: &tokio_postgres::Client,
    group: &Group,
    columns: &[(String, &'static str)],
) -> Result<(), LoadFailure> {
    let table = group.dest.qualified();
    let adds: Vec<String> = columns
        .iter()
        .map(|(name, ty)| format!("ADD COLUMN IF NOT EXISTS {} {ty}", quote_ident(name)))
        .collect();
    let sql = format!("ALTER TABLE {table} {}", adds.join(", "));
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| pg_failure(&e, false, &sql))?;
    metrics::counter!("rin_import_columns_added_total", "target" => group.dest.target.to_string())
        .increment(columns.len() as u64);
    let names: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
    tracing::info!(table = %table, columns = %names.join(", "), "schema: evolve added columns for new keys");
    Ok(())
}

impl Session {
    async fn load_once(
        &mut self,
        env: &Env<'_>,
        group: &Group,
    ) -> Result<Vec<ItemResult>, LoadFailure> {
        let mode = env.cfg.target(group.dest.target).insert_mode;
        let loaded = self
            .0
            .load_in_transaction(env, group, async |ltx, _new| {
                let qualified = group.dest.qualified();
                let (cols, insert) = prepare(ltx, env, &qualified).await?;
                let catch_all = env.cfg.ext.catch_all_column.as_str();
                match rows::Layout::new(&cols, catch_all) {
                    Some(layout) if mode.keyed() => {
                        direct::load_keyed(ltx, env, group, mode, &cols, &layout).await
                    }
                    Some(layout) => direct::load_each(ltx, env, group, mode, &layout).await,
                    None if mode.keyed() => jsonb::load_keyed(ltx, env, group, mode, &cols).await,
                    None => jsonb::load_each(ltx, env, group, mode, &insert).await,
                }
            })
            .await;
        match loaded {
            Err(f) if self.0.is_open() && f.new_columns.is_none() => {
                Err(explain::explain(&mut self.0.client, env, group, f).await)
            }
            r => r,
        }
    }
}

/// What every insert mode starts from: the jsonb stage exists (the explanation of a failure
/// uses it whatever the path), the table's columns are known, and the plain insert of staged
/// rows is written (which checks the catch-all column before any object is read).
async fn prepare(
    ltx: &LedgerTx<'_>,
    env: &Env<'_>,
    qualified: &str,
) -> Result<(Vec<Column>, String), LoadFailure> {
    ltx.tx.batch_execute(STAGE_DDL).await?;
    let cols = table_columns(&ltx.tx, qualified).await?;
    let insert = insert_sql(qualified, &cols, &env.cfg.ext.catch_all_column)?;
    Ok((cols, insert))
}

/// Opens new object `i`; one that is gone is settled as such.
pub(super) async fn open_new(
    ltx: &mut LedgerTx<'_>,
    env: &Env<'_>,
    group: &Group,
    i: usize,
) -> Result<Option<crate::store::Body>, LoadFailure> {
    let body = open_object(env.objects, &group.items[i], i).await?;
    if body.is_none() {
        ltx.pending.settle(i, ItemResult::Gone);
    }
    Ok(body)
}

/// The keyed modes' second half, whichever stage the rows are in: pick one row per key,
/// delete what the mode replaces, insert the pick, then each object's ledger row with the rows
/// of it that were written. `ranges`: (item, first, last stage position) of each staged object.
async fn write_picked(
    ltx: &mut LedgerTx<'_>,
    group: &Group,
    mode: InsertMode,
    sql: &columns::KeyedSql,
    ranges: &[(usize, i64, i64)],
) -> Result<u64, LoadFailure> {
    if ranges.is_empty() {
        return Ok(0);
    }
    let qualified = group.dest.qualified();
    let tx = &ltx.tx;
    let written = async {
        tx.batch_execute(&sql.pick).await?;
        let gone = tx.execute(&sql.delete, &[]).await?;
        let n = tx.execute(&sql.insert, &[]).await?;
        Ok::<_, tokio_postgres::Error>((gone, n))
    }
    .await;
    let (gone, rows) = match written {
        Ok(r) => r,
        Err(e) => return Err(insert_failure(&qualified, &e, ranges.iter().map(|r| r.0))),
    };
    let per: Vec<(i64, i64)> = ranges.iter().map(|&(_, a, b)| (a, b)).collect();
    let counts = tx
        .query_one(&columns::pick_counts_sql(&per), &[])
        .await
        .map_err(|e| pg_failure(&e, false, "counting the written rows"))?;
    for (k, &(i, a, b)) in ranges.iter().enumerate() {
        let n: i64 = counts.get(k);
        ltx.record(&group.items[i], Some(n), Some(rows as i64))
            .await?;
        tracing::debug!(object = %group.items[i].url(), table = %qualified, rows = n, staged = b - a + 1, mode = mode.name(), "written (commits with the group)");
        ltx.pending.settle(i, ItemResult::Loaded(Some(n as u64)));
    }
    if mode == InsertMode::OverwriteExisting {
        tracing::info!(table = %qualified, replaced = gone, written = rows, "rows replaced by key");
    } else {
        tracing::info!(table = %qualified, skipped_existing = gone, written = rows, "rows with a known key skipped");
    }
    Ok(rows)
}

/// `DELETE FROM` the table (`TRUNCATE` mode), in the load's transaction: readers keep seeing
/// the old rows until the COMMIT.
async fn empty_table(ltx: &LedgerTx<'_>, qualified: &str) -> Result<(), LoadFailure> {
    let n = ltx
        .tx
        .execute(&format!("DELETE FROM {qualified}"), &[])
        .await
        .map_err(|e| pg_failure(&e, false, &format!("emptying {qualified}")))?;
    tracing::info!(table = %qualified, deleted = n, "TRUNCATE mode: table emptied in the load's transaction");
    Ok(())
}

/// The failure of writing the staged rows of `staged` (in stage order): a data error without
/// a line is explained later, by [`explain::explain`].
pub(super) fn insert_failure(
    qualified: &str,
    e: &tokio_postgres::Error,
    staged: impl IntoIterator<Item = usize>,
) -> LoadFailure {
    let mut f = pg_failure(e, true, &format!("loading into {qualified}"));
    if f.kind == ErrorKind::Data {
        f.restage = staged.into_iter().collect();
    }
    f
}
