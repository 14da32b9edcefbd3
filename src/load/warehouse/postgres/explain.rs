//! Finding the bad row: after a PostgreSQL load failed with a data error the server gave no
//! line for (a value that does not convert, a constraint; its transaction rolled back), a
//! diagnostic transaction, rolled back too, stages the objects again and bisects for the first
//! row that fails alone, naming its object, line and, when one key alone fails to convert, its
//! column. Only this error path pays for the savepoints the probes need.
//!
//! Must never: commit anything (every probe is under a savepoint rolled back, and the whole
//! transaction is dropped).

use super::columns::{Column, insert_sql, table_columns};
use super::stage::{STAGE_DDL, reset_stage, stage};
use crate::load::ledger::{ErrorDetail, ErrorKind, Group, LoadFailure};
use crate::load::warehouse::wire::db_reason;
use crate::load::warehouse::{Env, open_object};
use tokio_postgres::Client;
use tracing::warn;

/// After a PostgreSQL load failed with a data error no line was given for (a value that does
/// not convert, a constraint; its transaction rolled back), a diagnostic transaction, rolled
/// back too, stages the objects again and finds the first staged row that fails alone (see
/// [`postgres::first_bad_row`]), naming its object, line and, when one key alone fails to
/// convert, column. Only this error path pays for the savepoints the probes need.
pub async fn explain(
    client: &mut Client,
    env: &Env<'_>,
    group: &Group,
    mut f: LoadFailure,
) -> LoadFailure {
    if f.kind != ErrorKind::Data || f.restage.is_empty() {
        return f;
    }
    let qualified = group.dest.qualified();
    match find_bad_row(client, env, group, &f.restage).await {
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
    f
}

/// (object, line, column, reason) of the first row of `items` (staged in this order) that
/// fails alone.
async fn find_bad_row(
    client: &mut Client,
    env: &Env<'_>,
    group: &Group,
    items: &[usize],
) -> Result<Option<(usize, u64, Option<String>, String)>, LoadFailure> {
    let qualified = group.dest.qualified();
    let catch_all = env.cfg.ext.catch_all_column.as_str();
    let tx = client.transaction().await?;
    tx.batch_execute(STAGE_DDL).await?;
    let cols = table_columns(&tx, &qualified).await?;
    let ins = insert_sql(&qualified, &cols, catch_all)?;
    reset_stage(&tx).await?;
    let mut ranges: Vec<(usize, i64, i64)> = Vec::new();
    let mut next = 1i64;
    for &i in items {
        let it = &group.items[i];
        let Some(body) = open_object(env.objects, it, i).await? else {
            continue;
        };
        let lines = stage(&tx, body, it, i).await? as i64;
        ranges.push((i, next, next + lines - 1));
        next += lines;
    }
    let Some((n, row_err)) = first_bad_row(&tx, &ins, 1, next - 1).await? else {
        return Ok(None);
    };
    let Some(&(i, first, _)) = ranges.iter().find(|r| r.1 <= n && n <= r.2) else {
        return Ok(None);
    };
    let db = row_err.as_db_error();
    let mut column = db.and_then(|d| d.column()).map(str::to_string);
    if column.is_none() {
        column = bad_column(&tx, &qualified, &cols, catch_all, n).await?;
    }
    let reason = db.map(db_reason).unwrap_or_else(|| row_err.to_string());
    Ok(Some((i, (n - first + 1) as u64, column, reason)))
}

/// Runs `sql` with `params` under a savepoint that is rolled back either way: `Ok(None)` when
/// it ran, `Ok(Some(error))` when the server refused it. The transaction stays usable.
async fn probe(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<tokio_postgres::Error>, tokio_postgres::Error> {
    tx.batch_execute("SAVEPOINT rin_ship_probe").await?;
    let r = tx.execute(sql, params).await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT rin_ship_probe; RELEASE SAVEPOINT rin_ship_probe")
        .await?;
    match r {
        Ok(_) => Ok(None),
        Err(e) if e.as_db_error().is_some() => Ok(Some(e)),
        Err(e) => Err(e),
    }
}

/// Finds the first staged row in `lo..=hi` that fails alone (after a load of those rows
/// failed): the plain insert `insert` ([`insert_sql`]) is tried, each time under a savepoint
/// rolled back, over halving ranges (about log2(rows) tries, rows read about twice in all).
/// Returns its position and error, or `None` when no row fails alone.
async fn first_bad_row(
    tx: &tokio_postgres::Transaction<'_>,
    insert: &str,
    mut lo: i64,
    mut hi: i64,
) -> Result<Option<(i64, tokio_postgres::Error)>, tokio_postgres::Error> {
    let sql = format!("{insert} AND s.n BETWEEN $1 AND $2");
    let Some(mut err) = probe(tx, &sql, &[&lo, &hi]).await? else {
        return Ok(None);
    };
    let mut single = lo == hi;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match probe(tx, &sql, &[&lo, &mid]).await? {
            Some(e) => {
                hi = mid;
                single = lo == mid;
                err = e;
            }
            None => {
                lo = mid + 1;
                single = false;
            }
        }
    }
    if !single && let Some(e) = probe(tx, &sql, &[&lo, &lo]).await? {
        err = e;
    }
    Ok(Some((lo, err)))
}

/// The column whose value fails to convert in staged row `n`: each written column's key alone
/// is converted with `jsonb_populate_record` (at most 200 columns are tried).
async fn bad_column(
    tx: &tokio_postgres::Transaction<'_>,
    qualified: &str,
    columns: &[Column],
    catch_all: &str,
    n: i64,
) -> Result<Option<String>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT r::text FROM rin_ship_stage s, LATERAL jsonb_populate_record(NULL::{qualified}, \
         jsonb_build_object($1::text, s.doc -> $1::text)) r WHERE s.n = $2 AND s.doc ? $1::text"
    );
    for c in columns
        .iter()
        .filter(|c| !c.skip && c.name != catch_all)
        .take(200)
    {
        if probe(tx, &sql, &[&c.name, &n]).await?.is_some() {
            return Ok(Some(c.name.clone()));
        }
    }
    Ok(None)
}
