//! PostgreSQL as a warehouse: rin-ship reads each object itself and streams it, decompressed,
//! into `COPY rin_ship_stage(doc) FROM STDIN` ([`stage`]), then moves the staged documents
//! into the table in the target's insert mode ([`columns`]), inside the ledger transaction
//! ([`super::wire::LedgerTx`]). A data error the server gives no line for is explained by
//! [`explain`].
//!
//! - `APPEND` and `TRUNCATE` stage and insert object by object (one ledger row each, with its
//!   row count; `TRUNCATE` empties the table with `DELETE` in the same transaction first).
//! - `KEEP_EXISTING` / `OVERWRITE_EXISTING` stage every new object, in order, then pick one
//!   row per key and write it (ledger rows carry each object's rows that were written).
//!
//! Must never: write a row outside the ledger transaction; `TRUNCATE` (it would commit, and
//! readers would see an empty table).

pub mod columns;
mod explain;
mod stage;

use super::dry_run::LedgerShown;
use super::wire::{self, LedgerTx, pg_failure};
use super::{Driver, Env, Warehouse, open_object};
use crate::load::ledger::{Dialect, ErrorKind, Group, ItemResult, LoadFailure};
use crate::load::rin::{Destination, InsertMode, Redshift, RinConfig};
use async_trait::async_trait;
use columns::{insert_sql, keyed_sql, pick_counts_sql, table_columns};
use stage::{STAGE_COPY, STAGE_DDL, STAGE_RESET, reset_stage, stage};
use tracing::{debug, info};

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
            "-- reads the columns of {q} (pg_attribute, pg_attrdef)"
        ));
        let copy =
            |bucket: &str, key: &str| format!("{STAGE_COPY}  -- s3://{bucket}/{key}, decompressed");
        let insert = format!(
            "INSERT INTO {q} (<columns of {q}>) SELECT ... FROM rin_ship_stage s, LATERAL jsonb_populate_record(NULL::{q}, s.doc) r"
        );
        if mode.keyed() {
            for (bucket, key) in objects {
                out.push(copy(bucket, key));
            }
            out.push(format!(
                "-- one row per key picked into rin_ship_pick, then DELETE ... USING and \
                 {insert} FROM rin_ship_pick (the statements follow the columns of {q})"
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
            for (i, (bucket, key)) in objects.iter().enumerate() {
                out.push(STAGE_RESET.to_string());
                out.push(copy(bucket, key));
                out.push(insert.clone());
                out.push(shown.record("the rows written from the object", "NULL")[i].clone());
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
        let mode = env.cfg.target(group.dest.target).insert_mode;
        let loaded = self
            .0
            .load_in_transaction(env, group, async |ltx, _new| {
                if mode.keyed() {
                    load_keyed(ltx, env, group, mode).await
                } else {
                    load_each(ltx, env, group, mode).await
                }
            })
            .await;
        match loaded {
            Err(f) if self.0.is_open() => {
                Err(explain::explain(&mut self.0.client, env, group, f).await)
            }
            r => r,
        }
    }

    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// What every insert mode starts from: the stage exists, the table's columns are known, and
/// the plain insert of staged rows is written (which checks the catch-all column before any
/// object is read).
async fn prepare(
    ltx: &LedgerTx<'_>,
    env: &Env<'_>,
    qualified: &str,
) -> Result<(Vec<columns::Column>, String), LoadFailure> {
    ltx.tx.batch_execute(STAGE_DDL).await?;
    let cols = table_columns(&ltx.tx, qualified).await?;
    let insert = insert_sql(qualified, &cols, &env.cfg.ext.catch_all_column)?;
    Ok((cols, insert))
}

/// Opens new object `i`; one that is gone is settled as such.
async fn open_new(
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

/// `APPEND` / `TRUNCATE`: each new object staged and inserted on its own.
async fn load_each(
    ltx: &mut LedgerTx<'_>,
    env: &Env<'_>,
    group: &Group,
    mode: InsertMode,
) -> Result<u64, LoadFailure> {
    let qualified = group.dest.qualified();
    let (_, ins) = prepare(ltx, env, &qualified).await?;
    let mut emptied = false;
    let mut loaded_rows = 0;
    for i in ltx.pending.new.clone() {
        let it = &group.items[i];
        let Some(body) = open_new(ltx, env, group, i).await? else {
            continue;
        };
        reset_stage(&ltx.tx).await?;
        let staged = stage(&ltx.tx, body, it, i).await?;
        if mode == InsertMode::Truncate && !emptied {
            // DELETE, not TRUNCATE: readers keep seeing the old rows until the COMMIT.
            let n = ltx
                .tx
                .execute(&format!("DELETE FROM {qualified}"), &[])
                .await
                .map_err(|e| pg_failure(&e, false, &format!("emptying {qualified}")))?;
            info!(table = %qualified, deleted = n, "TRUNCATE mode: table emptied in the load's transaction");
            emptied = true;
        }
        let rows = match ltx.tx.execute(&ins, &[]).await {
            Ok(n) => n,
            Err(e) => return Err(insert_failure(&qualified, &e, [i])),
        };
        ltx.record(it, Some(rows as i64), None).await?;
        debug!(object = %it.url(), table = %qualified, rows, staged, "written (commits with the group)");
        loaded_rows += rows;
        ltx.pending.settle(i, ItemResult::Loaded(Some(rows)));
    }
    Ok(loaded_rows)
}

/// `KEEP_EXISTING` / `OVERWRITE_EXISTING`: every new object staged in order, then one row per
/// key picked and written.
async fn load_keyed(
    ltx: &mut LedgerTx<'_>,
    env: &Env<'_>,
    group: &Group,
    mode: InsertMode,
) -> Result<u64, LoadFailure> {
    let qualified = group.dest.qualified();
    let target = env.cfg.target(group.dest.target);
    let (cols, _) = prepare(ltx, env, &qualified).await?;
    let sql = keyed_sql(
        &qualified,
        &cols,
        &env.cfg.ext.catch_all_column,
        mode == InsertMode::KeepExisting,
        &target.key_columns,
        &target.order_column,
    )?;
    reset_stage(&ltx.tx).await?;
    // (item, first position, last position) of each staged object.
    let mut ranges: Vec<(usize, i64, i64)> = Vec::new();
    let mut next = 1i64;
    for i in ltx.pending.new.clone() {
        let it = &group.items[i];
        let Some(body) = open_new(ltx, env, group, i).await? else {
            continue;
        };
        let lines = stage(&ltx.tx, body, it, i).await? as i64;
        ranges.push((i, next, next + lines - 1));
        next += lines;
    }
    if ranges.is_empty() {
        return Ok(0);
    }
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
        .query_one(&pick_counts_sql(&per), &[])
        .await
        .map_err(|e| pg_failure(&e, false, "counting the written rows"))?;
    for (k, &(i, a, b)) in ranges.iter().enumerate() {
        let n: i64 = counts.get(k);
        ltx.record(&group.items[i], Some(n), Some(rows as i64))
            .await?;
        debug!(object = %group.items[i].url(), table = %qualified, rows = n, staged = b - a + 1, mode = mode.name(), "written (commits with the group)");
        ltx.pending.settle(i, ItemResult::Loaded(Some(n as u64)));
    }
    if mode == InsertMode::OverwriteExisting {
        info!(table = %qualified, replaced = gone, written = rows, "rows replaced by key");
    } else {
        info!(table = %qualified, skipped_existing = gone, written = rows, "rows with a known key skipped");
    }
    Ok(rows)
}

/// The failure of writing the staged rows of `staged` (in stage order): a data error without
/// a line is explained later, by [`explain::explain`].
fn insert_failure(
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
