//! The direct path: rin-ship turns each line into a COPY row itself ([`super::rows`],
//! [`super::copy`]), so PostgreSQL parses no JSON. `APPEND` and `TRUNCATE` COPY straight into
//! the table; the keyed modes COPY into a typed stage (the table's columns and defaults), then
//! pick one row per key from it.
//!
//! Must never: leave a key no column takes unaccounted for (it goes to the catch-all column,
//! or is counted and logged).

use super::columns::{Column, TYPED, keyed_typed_sql, typed_stage_ddl};
use super::copy::{Copied, CopyRows, MAX_NEW_COLUMNS};
use super::rows::Layout;
use super::{empty_table, open_new, write_picked};
use crate::load::ledger::{Group, Item, ItemResult, LoadFailure};
use crate::load::rin::{InsertMode, SchemaPolicy};
use crate::load::warehouse::Env;
use crate::load::warehouse::wire::LedgerTx;
use tracing::{debug, warn};

/// `APPEND` / `TRUNCATE`: each new object copied into the table on its own.
pub async fn load_each(
    ltx: &mut LedgerTx<'_>,
    env: &Env<'_>,
    group: &Group,
    mode: InsertMode,
    layout: &Layout,
) -> Result<u64, LoadFailure> {
    let qualified = group.dest.qualified();
    let mut emptied = false;
    let mut loaded_rows = 0;
    for i in ltx.pending.new.clone() {
        let it = &group.items[i];
        let Some(body) = open_new(ltx, env, group, i).await? else {
            continue;
        };
        if mode == InsertMode::Truncate && !emptied {
            empty_table(ltx, &qualified).await?;
            emptied = true;
        }
        let mut into = CopyRows::new(&ltx.tx, &qualified, layout, None);
        let copied = into.object(body, it, i).await?;
        check_schema(env, group, it, i, &copied)?;
        ltx.record(it, Some(copied.rows as i64), None).await?;
        debug!(object = %it.url(), table = %qualified, rows = copied.rows, "written (commits with the group)");
        loaded_rows += copied.rows;
        ltx.pending.settle(i, ItemResult::Loaded(Some(copied.rows)));
    }
    Ok(loaded_rows)
}

/// `KEEP_EXISTING` / `OVERWRITE_EXISTING`: every new object copied in order into the typed
/// stage, then one row per key picked and written.
pub async fn load_keyed(
    ltx: &mut LedgerTx<'_>,
    env: &Env<'_>,
    group: &Group,
    mode: InsertMode,
    cols: &[Column],
    layout: &Layout,
) -> Result<u64, LoadFailure> {
    let qualified = group.dest.qualified();
    let target = env.cfg.target(group.dest.target);
    let sql = keyed_typed_sql(
        &qualified,
        cols,
        &env.cfg.ext.catch_all_column,
        mode == InsertMode::KeepExisting,
        &target.key_columns,
        &target.order_column,
    )?;
    ltx.tx.batch_execute(&typed_stage_ddl(&qualified)).await?;
    // (item, first position, last position) of each staged object.
    let mut ranges: Vec<(usize, i64, i64)> = Vec::new();
    let mut next = 1i64;
    for i in ltx.pending.new.clone() {
        let it = &group.items[i];
        let Some(body) = open_new(ltx, env, group, i).await? else {
            continue;
        };
        let mut into = CopyRows::new(&ltx.tx, TYPED, layout, Some(next));
        let copied = into.object(body, it, i).await?;
        check_schema(env, group, it, i, &copied)?;
        let after = into.position.expect("set above");
        ranges.push((i, next, after - 1));
        next = after;
    }
    write_picked(ltx, group, mode, &sql, &ranges).await
}

/// Keys of object `i` no column took, with no catch-all to keep them, as the target's
/// `schema` says: `report` counts and logs them (the row is loaded without them); `strict`
/// refuses the object as a data error; `evolve` fails the load with the columns to add, which
/// the driver adds before loading again (nothing of this attempt commits).
fn check_schema(
    env: &Env<'_>,
    group: &Group,
    it: &Item,
    i: usize,
    copied: &Copied,
) -> Result<(), LoadFailure> {
    if copied.unmatched == 0 {
        return Ok(());
    }
    let table = group.dest.qualified();
    match env.cfg.target(group.dest.target).schema {
        SchemaPolicy::Report => {}
        SchemaPolicy::Strict => {
            metrics::counter!("rin_import_unmatched_keys_total", "target" => group.dest.target.to_string())
                .increment(copied.unmatched);
            return Err(LoadFailure::corrupt(
                &it.url(),
                None,
                format!(
                    "keys with no column in {table}: {} (schema: strict refuses them; add the \
                     columns, or set schema: evolve or report)",
                    copied.unmatched_names.join(", ")
                ),
            )
            .of_item(i));
        }
        SchemaPolicy::Evolve if copied.too_many_new => {
            return Err(LoadFailure::corrupt(
                &it.url(),
                None,
                format!(
                    "more than {MAX_NEW_COLUMNS} keys with no column in {table} (first: {}): \
                     schema: evolve adds columns for a schema, not for data in key position",
                    copied.unmatched_names.join(", ")
                ),
            )
            .of_item(i));
        }
        SchemaPolicy::Evolve => {
            let mut f = LoadFailure::new(
                crate::load::ledger::ErrorKind::Transient,
                format!(
                    "loading {} into {table}: new keys {} (schema: evolve adds their columns, then loads again)",
                    it.url(),
                    copied.unmatched_names.join(", ")
                ),
            );
            f.new_columns = Some(Box::new(
                copied
                    .new_columns
                    .iter()
                    .map(|(k, kind)| (k.clone(), kind.pg_type()))
                    .collect(),
            ));
            return Err(f);
        }
    }
    report_unmatched(env, group, it, copied);
    Ok(())
}

/// Keys of an object no column took, with no catch-all to keep them: counted and logged.
fn report_unmatched(env: &Env<'_>, group: &Group, it: &Item, copied: &Copied) {
    metrics::counter!("rin_import_unmatched_keys_total", "target" => group.dest.target.to_string())
        .increment(copied.unmatched);
    warn!(
        table = %group.dest.qualified(),
        object = %it.url(),
        values = copied.unmatched,
        keys = %copied.unmatched_names.join(", "),
        "keys that match no column were left out{}",
        if env.cfg.ext.catch_all_column.is_empty() {
            " (set rin_ship.catch_all_column to a jsonb column to keep them)"
        } else {
            ""
        }
    );
}
