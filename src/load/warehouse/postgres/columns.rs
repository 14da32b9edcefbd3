//! How NDJSON keys become PostgreSQL columns, the way Redshift's `JSON 'auto'` maps them:
//! top-level keys to same-named columns (missing key: the column default or NULL; identity and
//! generated columns never written; extra keys ignored, or gathered in the optional jsonb
//! `catch_all_column`), and the SQL of each insert mode over the stage
//! ([`insert_sql`], [`keyed_sql`]).
//!
//! Must never: put a column name into SQL other than through [`quote_ident`].

use crate::load::ledger::LoadFailure;
use crate::load::rin::{quote_ident, quote_literal};
use crate::load::warehouse::wire::pg_failure;
use anyhow::{Result, anyhow};

/// One column of a target table, as the catalog describes it.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub default: Option<String>,
    /// Identity or generated: never written.
    pub skip: bool,
    pub kind: ColumnKind,
}

/// How a JSON value becomes the input text of a column (see `rows.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `json` / `jsonb`: the value's JSON text.
    Json,
    /// An array type: a JSON array becomes an array literal.
    Array,
    /// Every other base, enum, range or domain type: a string's text, or the JSON text.
    Scalar,
    /// A composite type (`jsonb_populate_record` builds it from an object): only the jsonb
    /// stage loads tables with one.
    Other,
}

/// The columns of `qualified`, in order (a missing table is the server's "does not exist").
pub async fn table_columns(
    tx: &tokio_postgres::Transaction<'_>,
    qualified: &str,
) -> Result<Vec<Column>, LoadFailure> {
    let rows = tx
        .query(
            "SELECT a.attname::text, pg_get_expr(d.adbin, d.adrelid), \
                    (a.attidentity <> '' OR a.attgenerated <> ''), \
                    CASE WHEN b.typname IN ('json', 'jsonb') THEN 'json' \
                         WHEN b.typcategory = 'A' THEN 'array' \
                         WHEN b.typtype = 'c' THEN 'other' ELSE 'scalar' END \
             FROM pg_attribute a LEFT JOIN pg_attrdef d \
               ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&qualified],
        )
        .await
        .map_err(|e| {
            pg_failure(
                &e,
                false,
                &format!("cannot read the columns of {qualified}"),
            )
        })?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            default: r.get(1),
            skip: r.get(2),
            kind: match r.get::<_, &str>(3) {
                "json" => ColumnKind::Json,
                "array" => ColumnKind::Array,
                "other" => ColumnKind::Other,
                _ => ColumnKind::Scalar,
            },
        })
        .collect())
}

/// The INSERT that moves the staged documents of one object into the target table.
pub fn insert_sql(qualified: &str, columns: &[Column], catch_all: &str) -> Result<String> {
    let (names, exprs) = select_list(qualified, columns, catch_all)?;
    Ok(format!(
        "INSERT INTO {qualified} ({}) SELECT {} FROM rin_ship_stage s, \
         LATERAL jsonb_populate_record(NULL::{qualified}, s.doc) r WHERE s.doc IS NOT NULL",
        names.join(", "),
        exprs.join(", ")
    ))
}

/// The written columns of the target (quoted) and, for each, its value computed from a staged
/// document `s.doc` and its `jsonb_populate_record` row `r`.
fn select_list(
    qualified: &str,
    columns: &[Column],
    catch_all: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let mut names = Vec::new();
    let mut exprs = Vec::new();
    let mut known = Vec::new();
    for c in columns {
        known.push(quote_literal(&c.name));
    }
    for c in columns.iter().filter(|c| !c.skip) {
        names.push(quote_ident(&c.name));
        if !catch_all.is_empty() && c.name == catch_all {
            exprs.push(format!(
                "NULLIF(s.doc - ARRAY[{}]::text[], '{{}}'::jsonb)",
                known.join(",")
            ));
            continue;
        }
        let missing = c.default.clone().unwrap_or_else(|| "NULL".to_string());
        exprs.push(format!(
            "CASE WHEN s.doc ? {} THEN r.{} ELSE {missing} END",
            quote_literal(&c.name),
            quote_ident(&c.name)
        ));
    }
    if names.is_empty() {
        return Err(anyhow!("{qualified} has no writable columns"));
    }
    if !catch_all.is_empty() && !columns.iter().any(|c| c.name == catch_all) {
        return Err(anyhow!(
            "rin_ship.catch_all_column {catch_all:?} is not a column of {qualified}"
        ));
    }
    Ok((names, exprs))
}

/// The statements of the keyed insert modes, run after every new object of the group was
/// staged in order (so a later object, then a later line, has a higher `s.n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedSql {
    /// `CREATE TEMP TABLE rin_ship_pick ON COMMIT DROP AS ...`: one row per key (rows with a
    /// NULL key column all stay), with its stage position `rin_ship_n`.
    pub pick: String,
    /// Overwrite: the table's rows with a picked key go. Keep: picked rows whose key the table
    /// has go.
    pub delete: String,
    /// Moves what is left of the pick into the table.
    pub insert: String,
}

/// The temporary table of [`KeyedSql`]; `rin_ship_n` is the staged row's position.
pub const PICK: &str = "rin_ship_pick";

/// [`KeyedSql`] for `KEEP_EXISTING` (`keep`: the earliest row of a key wins, and only when the
/// table lacks the key) or `OVERWRITE_EXISTING` (the latest row of a key wins and replaces the
/// table's rows with that key). "Earliest"/"latest": by `order` when given (NULLs lose), then
/// by stage position. No unique index is needed: matching is a join on the key columns.
pub fn keyed_sql(
    qualified: &str,
    columns: &[Column],
    catch_all: &str,
    keep: bool,
    keys: &[String],
    order: &str,
) -> Result<KeyedSql> {
    let (names, exprs) = select_list(qualified, columns, catch_all)?;
    let selected: Vec<String> = names
        .iter()
        .zip(&exprs)
        .map(|(n, e)| format!("{e} AS {n}"))
        .collect();
    let rows = format!(
        "SELECT s.n AS rin_ship_n, {} FROM rin_ship_stage s, \
         LATERAL jsonb_populate_record(NULL::{qualified}, s.doc) r WHERE s.doc IS NOT NULL",
        selected.join(", ")
    );
    keyed_over(
        qualified,
        columns,
        catch_all,
        &names,
        &rows,
        (keep, keys, order),
    )
}

/// The typed stage of the keyed modes on the direct path: the table's columns (and their
/// defaults), plus each row's stage position.
pub fn typed_stage_ddl(qualified: &str) -> String {
    format!(
        "CREATE TEMP TABLE {TYPED} (LIKE {qualified} INCLUDING DEFAULTS, rin_ship_n bigint) \
         ON COMMIT DROP"
    )
}

/// The typed stage's name.
pub const TYPED: &str = "rin_ship_typed";

/// [`keyed_sql`] over the typed stage ([`typed_stage_ddl`]), whose rows are already the
/// table's values.
pub fn keyed_typed_sql(
    qualified: &str,
    columns: &[Column],
    catch_all: &str,
    keep: bool,
    keys: &[String],
    order: &str,
) -> Result<KeyedSql> {
    let (names, _) = select_list(qualified, columns, catch_all)?;
    let rows = format!(
        "SELECT s.rin_ship_n, {} FROM {TYPED} s",
        names
            .iter()
            .map(|n| format!("s.{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    keyed_over(
        qualified,
        columns,
        catch_all,
        &names,
        &rows,
        (keep, keys, order),
    )
}

/// The keyed statements over `rows`, a query giving `rin_ship_n` and the written columns
/// `names`.
fn keyed_over(
    qualified: &str,
    columns: &[Column],
    catch_all: &str,
    names: &[String],
    rows: &str,
    (keep, keys, order): (bool, &[String], &str),
) -> Result<KeyedSql> {
    let writable = |c: &str| columns.iter().any(|x| x.name == c && !x.skip) && c != catch_all;
    for k in keys {
        if !writable(k) {
            return Err(anyhow!(
                "key_columns: {k:?} is not a written column of {qualified}"
            ));
        }
    }
    if !order.is_empty() && !writable(order) {
        return Err(anyhow!(
            "order_column {order:?} is not a written column of {qualified}"
        ));
    }
    let keys: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
    let dir = if keep { "ASC" } else { "DESC" };
    let mut order_by = Vec::new();
    if !order.is_empty() {
        order_by.push(format!("c.{} {dir} NULLS LAST", quote_ident(order)));
    }
    order_by.push(format!("c.rin_ship_n {dir}"));
    let null_keys: String = keys.iter().map(|k| format!(" OR w.{k} IS NULL")).collect();
    let pick = format!(
        "CREATE TEMP TABLE {PICK} ON COMMIT DROP AS SELECT w.rin_ship_n, {} FROM (\
         SELECT c.*, row_number() OVER (PARTITION BY {} ORDER BY {}) AS rin_ship_rn FROM (\
         {rows}) c) w WHERE w.rin_ship_rn = 1{null_keys}",
        names
            .iter()
            .map(|n| format!("w.{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        keys.iter()
            .map(|k| format!("c.{k}"))
            .collect::<Vec<_>>()
            .join(", "),
        order_by.join(", "),
    );
    let on = keys
        .iter()
        .map(|k| format!("t.{k} = p.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let delete = if keep {
        format!("DELETE FROM {PICK} p USING {qualified} t WHERE {on}")
    } else {
        format!("DELETE FROM {qualified} t USING {PICK} p WHERE {on}")
    };
    let insert = format!(
        "INSERT INTO {qualified} ({}) SELECT {} FROM {PICK} ORDER BY rin_ship_n",
        names.join(", "),
        names.join(", ")
    );
    Ok(KeyedSql {
        pick,
        delete,
        insert,
    })
}

/// Rows of the pick per object: `ranges[k]` are the stage positions of object `k`.
pub fn pick_counts_sql(ranges: &[(i64, i64)]) -> String {
    let each: Vec<String> = ranges
        .iter()
        .map(|(lo, hi)| format!("count(*) FILTER (WHERE rin_ship_n BETWEEN {lo} AND {hi})"))
        .collect();
    format!("SELECT {} FROM {PICK}", each.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_shape() {
        let cols = vec![
            Column {
                name: "id".into(),
                default: None,
                skip: true,
                kind: ColumnKind::Scalar,
            },
            Column {
                name: "time".into(),
                default: None,
                skip: false,
                kind: ColumnKind::Scalar,
            },
            Column {
                name: "status".into(),
                default: Some("0".into()),
                skip: false,
                kind: ColumnKind::Scalar,
            },
            Column {
                name: "extra".into(),
                default: None,
                skip: false,
                kind: ColumnKind::Scalar,
            },
        ];
        let s = insert_sql("\"public\".\"t\"", &cols, "extra").unwrap();
        assert_eq!(
            s,
            "INSERT INTO \"public\".\"t\" (\"time\", \"status\", \"extra\") SELECT \
             CASE WHEN s.doc ? 'time' THEN r.\"time\" ELSE NULL END, \
             CASE WHEN s.doc ? 'status' THEN r.\"status\" ELSE 0 END, \
             NULLIF(s.doc - ARRAY['id','time','status','extra']::text[], '{}'::jsonb) \
             FROM rin_ship_stage s, LATERAL jsonb_populate_record(NULL::\"public\".\"t\", s.doc) r \
             WHERE s.doc IS NOT NULL"
        );
        assert!(insert_sql("\"t\"", &cols, "nope").is_err());
    }

    fn cols() -> Vec<Column> {
        ["id", "v", "time"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                default: None,
                skip: false,
                kind: ColumnKind::Scalar,
            })
            .collect()
    }

    #[test]
    fn keyed_sql_shape() {
        let k = vec!["id".to_string()];
        let s = keyed_sql("\"public\".\"t\"", &cols(), "", false, &k, "").unwrap();
        let sel = "CASE WHEN s.doc ? 'id' THEN r.\"id\" ELSE NULL END AS \"id\", \
                   CASE WHEN s.doc ? 'v' THEN r.\"v\" ELSE NULL END AS \"v\", \
                   CASE WHEN s.doc ? 'time' THEN r.\"time\" ELSE NULL END AS \"time\"";
        assert_eq!(
            s.pick,
            format!(
                "CREATE TEMP TABLE rin_ship_pick ON COMMIT DROP AS SELECT w.rin_ship_n, w.\"id\", \
                 w.\"v\", w.\"time\" FROM (SELECT c.*, row_number() OVER (PARTITION BY c.\"id\" \
                 ORDER BY c.rin_ship_n DESC) AS rin_ship_rn FROM (SELECT s.n AS rin_ship_n, {sel} \
                 FROM rin_ship_stage s, LATERAL jsonb_populate_record(NULL::\"public\".\"t\", s.doc) r \
                 WHERE s.doc IS NOT NULL) c) w WHERE w.rin_ship_rn = 1 OR w.\"id\" IS NULL"
            )
        );
        assert_eq!(
            s.delete,
            "DELETE FROM \"public\".\"t\" t USING rin_ship_pick p WHERE t.\"id\" = p.\"id\""
        );
        assert_eq!(
            s.insert,
            "INSERT INTO \"public\".\"t\" (\"id\", \"v\", \"time\") SELECT \"id\", \"v\", \"time\" \
             FROM rin_ship_pick ORDER BY rin_ship_n"
        );
        let k2 = vec!["id".to_string(), "v".to_string()];
        let s = keyed_sql("\"t\"", &cols(), "", true, &k2, "time").unwrap();
        assert!(
            s.pick.contains(
                "PARTITION BY c.\"id\", c.\"v\" ORDER BY c.\"time\" ASC NULLS LAST, c.rin_ship_n ASC"
            ),
            "{}",
            s.pick
        );
        assert!(s.pick.ends_with("OR w.\"id\" IS NULL OR w.\"v\" IS NULL"));
        assert_eq!(
            s.delete,
            "DELETE FROM rin_ship_pick p USING \"t\" t WHERE t.\"id\" = p.\"id\" AND t.\"v\" = p.\"v\""
        );
        let e = keyed_sql("\"t\"", &cols(), "", true, &["nope".to_string()], "").unwrap_err();
        assert!(
            e.to_string().contains("\"nope\" is not a written column"),
            "{e}"
        );
        let e = keyed_sql("\"t\"", &cols(), "", true, &k, "when").unwrap_err();
        assert!(e.to_string().contains("order_column"), "{e}");
        assert_eq!(
            pick_counts_sql(&[(1, 3), (4, 4)]),
            "SELECT count(*) FILTER (WHERE rin_ship_n BETWEEN 1 AND 3), \
             count(*) FILTER (WHERE rin_ship_n BETWEEN 4 AND 4) FROM rin_ship_pick"
        );
    }
}
