//! The target table of a synced table: its DDL from the source schema, types mapped per
//! warehouse ([`column_type`]: Redshift, PostgreSQL, SQLite), created when missing, and the
//! source columns it lacks found before each pass: reported (log line, metric
//! `rin_sync_unmapped_columns_total{table}`) or, with `schema: evolve`, added
//! (`ALTER TABLE ADD COLUMN`, type mapped). A column is never dropped silently: COPY's
//! `JSON 'auto'` ignores keys without a column, so a missing column would be data lost.
//!
//! Must never: drop or alter an existing column; put a name into SQL other than quoted.

use super::source::{Column, Kind, TableSchema};
use crate::load::rin::{DriverKind, Target, quote_ident, quote_literal};
use anyhow::{Context, Result, anyhow};
use tracing::{info, warn};

/// The warehouse dialect a DDL is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Redshift,
    Postgres,
    Sqlite,
}

impl Dialect {
    pub fn of(driver: DriverKind) -> Dialect {
        match driver {
            DriverKind::Redshift | DriverKind::RedshiftData => Dialect::Redshift,
            DriverKind::Postgres => Dialect::Postgres,
            DriverKind::Sqlite => Dialect::Sqlite,
        }
    }
}

/// The warehouse type of a source column.
pub fn column_type(kind: &Kind, d: Dialect) -> String {
    use Dialect::*;
    match (kind, d) {
        (Kind::Bool, Sqlite) => "INTEGER".into(),
        (Kind::Bool, _) => "BOOLEAN".into(),
        (Kind::Int16 | Kind::Int32 | Kind::Int64, Sqlite) => "INTEGER".into(),
        (Kind::Int16, _) => "SMALLINT".into(),
        (Kind::Int32, _) => "INTEGER".into(),
        (Kind::Int64, _) => "BIGINT".into(),
        // SQLite's INTEGER is signed 64-bit; NUMERIC affinity would turn big ones into floats.
        (Kind::UInt64, Sqlite) => "TEXT".into(),
        (Kind::UInt64, _) => "DECIMAL(20,0)".into(),
        // Exact digits: SQLite's NUMERIC affinity would round through a double.
        (Kind::Decimal(..), Sqlite) => "TEXT".into(),
        (Kind::Decimal(0, _), Postgres) => "NUMERIC".into(),
        // Redshift's DECIMAL defaults to (18,0), and caps precision at 38.
        (Kind::Decimal(0, _), Redshift) => "DECIMAL(38,10)".into(),
        (Kind::Decimal(p, s), Redshift) => format!("DECIMAL({},{})", p.min(&38), s.min(&37)),
        (Kind::Decimal(p, s), _) => format!("NUMERIC({p},{s})"),
        (Kind::Float32 | Kind::Float64, Sqlite) => "REAL".into(),
        (Kind::Float32, _) => "REAL".into(),
        (Kind::Float64, _) => "DOUBLE PRECISION".into(),
        (Kind::Text(_) | Kind::Time | Kind::Binary | Kind::Uuid | Kind::Json, Sqlite) => {
            "TEXT".into()
        }
        (Kind::Date | Kind::Timestamp | Kind::TimestampTz | Kind::Array(_), Sqlite) => {
            "TEXT".into()
        }
        // Redshift sizes VARCHAR in bytes: 4 per character covers UTF-8.
        (Kind::Text(Some(n)), Redshift) => format!("VARCHAR({})", (n * 4).clamp(1, 65535)),
        (Kind::Text(None) | Kind::Binary, Redshift) => "VARCHAR(65535)".into(),
        (Kind::Text(Some(n)), Postgres) => format!("VARCHAR({n})"),
        (Kind::Text(None), Postgres) => "TEXT".into(),
        // MySQL's TIME spans ±838 hours: text, not a time of day.
        (Kind::Time, Redshift) => "VARCHAR(20)".into(),
        (Kind::Time, Postgres) => "TEXT".into(),
        (Kind::Date, _) => "DATE".into(),
        (Kind::Timestamp, _) => "TIMESTAMP".into(),
        (Kind::TimestampTz, _) => "TIMESTAMPTZ".into(),
        (Kind::Json | Kind::Array(_), Redshift) => "SUPER".into(),
        (Kind::Json, Postgres) => "JSONB".into(),
        (Kind::Array(elem), Postgres) => format!("{elem}[]"),
        // base64 text from MySQL; PostgreSQL's bytea text (`\x...`) from PostgreSQL.
        (Kind::Binary, Postgres) => "TEXT".into(),
        (Kind::Uuid, Redshift) => "VARCHAR(36)".into(),
        (Kind::Uuid, Postgres) => "UUID".into(),
    }
}

/// `CREATE TABLE` for the source `schema` as `qualified`, the key as primary key (and as
/// Redshift's sort key: the upserts of OVERWRITE_EXISTING join on it).
pub fn create_table(qualified: &str, schema: &TableSchema, key: &[String], d: Dialect) -> String {
    let mut cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| column_def(c, d, key))
        .collect();
    if !key.is_empty() {
        let k: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
        cols.push(format!("PRIMARY KEY ({})", k.join(", ")));
    }
    let mut sql = format!("CREATE TABLE {qualified} (\n  {}\n)", cols.join(",\n  "));
    if d == Dialect::Redshift && !key.is_empty() {
        let k: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
        sql.push_str(&format!(
            " DISTSTYLE AUTO COMPOUND SORTKEY ({})",
            k.join(", ")
        ));
    }
    sql
}

fn column_def(c: &Column, d: Dialect, key: &[String]) -> String {
    let not_null = if key.iter().any(|k| k.eq_ignore_ascii_case(&c.name)) {
        " NOT NULL"
    } else {
        ""
    };
    format!(
        "{} {}{not_null}",
        quote_ident(&c.name),
        column_type(&c.kind, d)
    )
}

/// `ALTER TABLE ... ADD COLUMN` for a source column the target lacks.
pub fn add_column(qualified: &str, c: &Column, d: Dialect) -> String {
    format!(
        "ALTER TABLE {qualified} ADD COLUMN {}",
        column_def(c, d, &[])
    )
}

/// What [`ensure_target`] found and did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TargetCheck {
    pub created: bool,
    /// Source columns the target lacks (after `evolve`, those it still lacks).
    pub missing: Vec<String>,
    pub added: Vec<String>,
}

/// Creates the target when missing; finds, and with `evolve` adds, the source columns it
/// lacks. `dry_run`: prints what it would run and runs nothing.
pub async fn ensure_target(
    target: &Target,
    sslmode: crate::load::rin::SslMode,
    qualified: (&str, &str),
    schema: &TableSchema,
    key: &[String],
    evolve: bool,
    dry_run: bool,
) -> Result<TargetCheck> {
    let d = Dialect::of(target.driver);
    let (tschema, table) = qualified;
    let qualified = if tschema.is_empty() {
        quote_ident(table)
    } else {
        format!("{}.{}", quote_ident(tschema), quote_ident(table))
    };
    let existing = match target.driver {
        DriverKind::Postgres | DriverKind::Redshift => {
            Some(wire_columns(target, sslmode, tschema, table).await?)
        }
        DriverKind::Sqlite => Some(sqlite_columns(&target.redshift.dbname, table)?),
        // The Data API runs statements asynchronously; creating tables through it is left to
        // the operator (`--dry-run` prints the DDL).
        DriverKind::RedshiftData => None,
    };
    let mut check = TargetCheck::default();
    let mut statements = Vec::new();
    match existing {
        None => {
            warn!(
                "target {qualified}: the Data API driver does not create or check tables; run `rin-ship sync --dry-run` for the DDL"
            );
            return Ok(check);
        }
        Some(cols) if cols.is_empty() => {
            statements.push(create_table(&qualified, schema, key, d));
            check.created = true;
        }
        Some(cols) => {
            for c in &schema.columns {
                if !cols.iter().any(|t| t.eq_ignore_ascii_case(&c.name)) {
                    if evolve {
                        statements.push(add_column(&qualified, c, d));
                        check.added.push(c.name.clone());
                    } else {
                        check.missing.push(c.name.clone());
                    }
                }
            }
        }
    }
    for c in &check.missing {
        metrics::counter!("rin_sync_unmapped_columns_total", "table" => qualified.clone())
            .increment(1);
        warn!(
            "target {qualified}: source column {c} has no column in the target, so its values \
             are not loaded; add it (ALTER TABLE {qualified} ADD COLUMN ...) or set \
             `schema: evolve` to let rin-ship add it"
        );
    }
    if dry_run {
        for s in &statements {
            println!("{s};");
        }
        return Ok(check);
    }
    if statements.is_empty() {
        return Ok(check);
    }
    match target.driver {
        DriverKind::Sqlite => {
            let c = rusqlite::Connection::open(&target.redshift.dbname)?;
            for s in &statements {
                c.execute_batch(s).with_context(|| s.clone())?;
            }
        }
        _ => {
            let client = crate::load::warehouse::wire::connect(&target.redshift, sslmode)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            for s in &statements {
                client.batch_execute(s).await.with_context(|| s.clone())?;
            }
        }
    }
    for s in &statements {
        info!("target {qualified}: ran {}", s.replace('\n', " "));
    }
    Ok(check)
}

/// The target's column names (none: it does not exist).
async fn wire_columns(
    target: &Target,
    sslmode: crate::load::rin::SslMode,
    schema: &str,
    table: &str,
) -> Result<Vec<String>> {
    let client = crate::load::warehouse::wire::connect(&target.redshift, sslmode)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let schema = if schema.is_empty() { "public" } else { schema };
    let sql = format!(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = {} AND table_name = {} ORDER BY ordinal_position",
        quote_literal(schema),
        quote_literal(table)
    );
    let rows = client
        .query(sql.as_str(), &[])
        .await
        .with_context(|| format!("reading the columns of {schema}.{table}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn sqlite_columns(path: &str, table: &str) -> Result<Vec<String>> {
    let c = rusqlite::Connection::open(path).with_context(|| format!("opening {path}"))?;
    let mut s = c.prepare(&format!("PRAGMA table_info({})", quote_ident(table)))?;
    let names = s
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> TableSchema {
        let col = |name: &str, kind: Kind| Column {
            name: name.into(),
            kind,
            source_type: String::new(),
            nullable: true,
        };
        TableSchema {
            columns: vec![
                col("id", Kind::UInt64),
                col("total", Kind::Decimal(12, 2)),
                col("paid", Kind::Bool),
                col("note", Kind::Text(Some(200))),
                col("doc", Kind::Json),
                col("updated_at", Kind::TimestampTz),
            ],
            primary_key: vec!["id".into()],
        }
    }

    #[test]
    fn redshift_ddl_golden() {
        let sql = create_table(
            "\"sales\".\"orders\"",
            &orders(),
            &["id".into()],
            Dialect::Redshift,
        );
        assert_eq!(
            sql,
            "CREATE TABLE \"sales\".\"orders\" (\n  \"id\" DECIMAL(20,0) NOT NULL,\n  \
             \"total\" DECIMAL(12,2),\n  \"paid\" BOOLEAN,\n  \"note\" VARCHAR(800),\n  \
             \"doc\" SUPER,\n  \"updated_at\" TIMESTAMPTZ,\n  PRIMARY KEY (\"id\")\n) \
             DISTSTYLE AUTO COMPOUND SORTKEY (\"id\")"
        );
    }

    #[test]
    fn postgres_and_sqlite_ddl() {
        let pg = create_table("\"orders\"", &orders(), &["id".into()], Dialect::Postgres);
        assert!(
            pg.contains("\"total\" NUMERIC(12,2)") && pg.contains("\"doc\" JSONB"),
            "{pg}"
        );
        let lite = create_table("\"orders\"", &orders(), &["id".into()], Dialect::Sqlite);
        assert!(
            lite.contains("\"total\" TEXT") && lite.contains("\"id\" TEXT NOT NULL"),
            "{lite}"
        );
        let add = add_column("\"orders\"", &orders().columns[4], Dialect::Redshift);
        assert_eq!(add, "ALTER TABLE \"orders\" ADD COLUMN \"doc\" SUPER");
    }
}
