//! The jsonb path: each line staged as a `jsonb` document (`rin_ship_stage`, [`super::stage`]),
//! then moved into the table with `jsonb_populate_record` ([`super::columns`]). It takes every
//! table, composite columns included; [`super::direct`] is the faster way for the rest.
//!
//! Must never: write a staged row anywhere but the load's table, in its transaction.

use super::columns::{Column, keyed_sql};
use super::stage::{reset_stage, stage};
use super::{empty_table, insert_failure, open_new, write_picked};
use crate::load::ledger::{Group, ItemResult, LoadFailure};
use crate::load::rin::InsertMode;
use crate::load::warehouse::Env;
use crate::load::warehouse::wire::LedgerTx;
use tracing::debug;

/// `APPEND` / `TRUNCATE`: each new object staged and inserted on its own (`insert`: the plain
/// insert of staged documents).
pub async fn load_each(
    ltx: &mut LedgerTx<'_>,
    env: &Env<'_>,
    group: &Group,
    mode: InsertMode,
    insert: &str,
) -> Result<u64, LoadFailure> {
    let qualified = group.dest.qualified();
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
            empty_table(ltx, &qualified).await?;
            emptied = true;
        }
        let rows = match ltx.tx.execute(insert, &[]).await {
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
pub async fn load_keyed(
    ltx: &mut LedgerTx<'_>,
    env: &Env<'_>,
    group: &Group,
    mode: InsertMode,
    cols: &[Column],
) -> Result<u64, LoadFailure> {
    let qualified = group.dest.qualified();
    let target = env.cfg.target(group.dest.target);
    let sql = keyed_sql(
        &qualified,
        cols,
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
    write_picked(ltx, group, mode, &sql, &ranges).await
}
