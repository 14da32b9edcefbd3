//! PostgreSQL as a sync source (`tokio-postgres`, TLS as the warehouse connections do it).
//! The server writes each row's JSON itself (`row_to_json`): `numeric` as the text of its
//! digits,
//! `timestamptz` is ISO 8601 with its offset, `jsonb` and arrays are JSON, `bytea` is its
//! `\x...` text. A pass is one `REPEATABLE READ READ ONLY` transaction, so the watermark and the
//! rows come from one snapshot; rows arrive as the server sends them (tokio-postgres reads the
//! socket only as fast as they are consumed), never as one result in memory.
//!
//! Must never: interpolate a watermark into SQL (bound parameters); put a name into SQL other
//! than through `quote_ident`.

use super::{Column, KeyBatches, KeyQuery, KeySender, Kind, Newest, PassQuery, TableSchema};
use crate::load::rin::quote_ident;
use crate::sync::config::{Overlap, SourceConfig, Tls};
use crate::sync::objects::ObjectWriter;
use anyhow::{Context, Result, anyhow};
use futures::{StreamExt, pin_mut};
use tokio_postgres::Client;

pub struct PgSource {
    client: Client,
    what: String,
}

/// `"schema"."table"` or `"table"`.
fn quote_table(table: &str) -> String {
    table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

impl PgSource {
    pub async fn connect(cfg: &SourceConfig) -> Result<PgSource> {
        let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e| {
            anyhow!(
                "source.url is not a PostgreSQL URL (postgres://user:password@host:port/db): {e}"
            )
        })?;
        pg.application_name("rin-ship sync");
        let what = format!(
            "postgres://{}/{}",
            pg.get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_default(),
            pg.get_dbname().unwrap_or_default()
        );
        let client = match cfg.tls {
            Tls::Disable => {
                let (client, conn) = pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .with_context(|| format!("cannot connect to {what}"))?;
                tokio::spawn(conn);
                client
            }
            mode => {
                pg.ssl_mode(if mode == Tls::Require {
                    tokio_postgres::config::SslMode::Require
                } else {
                    tokio_postgres::config::SslMode::Prefer
                });
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
                    crate::common::tls::client_config()?,
                );
                let (client, conn) = pg
                    .connect(tls)
                    .await
                    .with_context(|| format!("cannot connect to {what}"))?;
                tokio::spawn(conn);
                client
            }
        };
        Ok(PgSource { client, what })
    }

    pub fn describe(&self) -> String {
        self.what.clone()
    }

    pub async fn schema(&mut self, table: &str) -> Result<TableSchema> {
        let regclass = quote_table(table);
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull \
                 FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&regclass],
            )
            .await
            .with_context(|| format!("reading the columns of {table} on {}", self.what))?;
        let columns = rows
            .iter()
            .map(|r| {
                let source_type: String = r.get(1);
                Column {
                    name: r.get(0),
                    kind: kind_of(&source_type),
                    source_type,
                    nullable: r.get(2),
                }
            })
            .collect();
        let pk = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
                 ORDER BY array_position(i.indkey, a.attnum)",
                &[&regclass],
            )
            .await
            .with_context(|| format!("reading the primary key of {table} on {}", self.what))?;
        Ok(TableSchema {
            columns,
            primary_key: pk.iter().map(|r| r.get(0)).collect(),
        })
    }

    pub async fn estimate_rows(&mut self, table: &str) -> Option<u64> {
        let row = self
            .client
            .query_one(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($1)",
                &[&quote_table(table)],
            )
            .await
            .ok()?;
        let n: i64 = row.get(0);
        u64::try_from(n).ok()
    }

    pub async fn begin(&mut self, q: &PassQuery<'_>) -> Result<Newest> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .with_context(|| format!("starting a snapshot on {}", self.what))?;
        let Some(wm) = q.watermark else {
            return Ok(Newest::default());
        };
        let column = quote_ident(&wm.name);
        // now() is the transaction's start: the snapshot's own clock. (A `date` or
        // `timestamp` column is read in the session's time zone, as it was written.)
        let lag = if wm.kind.is_time() {
            format!("EXTRACT(EPOCH FROM (now() - MAX({column})))::float8")
        } else {
            "NULL::float8".to_string()
        };
        let sql = format!(
            "SELECT MAX({column})::text, {lag} FROM {}{}",
            quote_table(q.table),
            q.filter
                .map(|f| format!(" WHERE ({f})"))
                .unwrap_or_default()
        );
        let row = self
            .client
            .query_one(sql.as_str(), &[])
            .await
            .with_context(|| format!("reading the newest {} of {}", wm.name, q.table))?;
        Ok(Newest {
            watermark: row.get(0),
            lag_seconds: row.get(1),
        })
    }

    pub async fn keys(&mut self, q: &KeyQuery<'_>, out: KeySender) -> Result<u64> {
        let sql = q.select(
            |k| format!("{}::text", quote_ident(k)),
            quote_table(q.table),
        );
        let table = q.table;
        let what = || format!("reading the keys of {table} on {}", self.what);
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .with_context(what)?;
        let rows = self
            .client
            .query_raw(sql.as_str(), std::iter::empty::<String>())
            .await
            .with_context(what)?;
        pin_mut!(rows);
        let mut batches = KeyBatches::new(out);
        while let Some(row) = rows.next().await {
            let row = row.with_context(what)?;
            let k: Vec<String> = (0..q.key.len())
                .map(|i| row.get::<_, Option<String>>(i).unwrap_or_default())
                .collect();
            batches.push(k).await?;
        }
        let n = batches.finish().await?;
        self.client
            .batch_execute("COMMIT")
            .await
            .with_context(what)?;
        Ok(n)
    }

    pub async fn stream(&mut self, q: &PassQuery<'_>, out: &mut ObjectWriter<'_>) -> Result<u64> {
        let (sql, params) = select(q)?;
        let rows = self
            .client
            .query_raw(sql.as_str(), params.iter())
            .await
            .with_context(|| format!("reading {} on {}", q.table, self.what))?;
        pin_mut!(rows);
        let mut n = 0u64;
        while let Some(row) = rows.next().await {
            let row = row.with_context(|| format!("reading {} on {}", q.table, self.what))?;
            let json: &str = row.get(0);
            out.line().extend_from_slice(json.as_bytes());
            out.push_line().await?;
            n += 1;
        }
        self.client.batch_execute("COMMIT").await?;
        Ok(n)
    }
}

/// The pass's SELECT (one JSON text per row) and its parameters, all text.
fn select(q: &PassQuery<'_>) -> Result<(String, Vec<String>)> {
    // numeric as a string of its digits, as the MySQL source writes DECIMAL: a JSON number
    // would reach SQLite (and some JSON readers) through a double.
    let cols: Vec<String> = q
        .schema
        .columns
        .iter()
        .map(|c| match c.kind {
            Kind::Decimal(..) => format!("{0}::text AS {0}", quote_ident(&c.name)),
            _ => quote_ident(&c.name),
        })
        .collect();
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let (Some(wm), Some((since, overlap))) = (q.watermark, q.since) {
        let name = quote_ident(&wm.name);
        match overlap {
            Overlap::Time(d) => {
                conditions.push(format!(
                    "{name} >= ($1::text)::{} - ($2::text)::interval",
                    wm.source_type
                ));
                params.push(since.to_string());
                params.push(format!("{} microseconds", d.as_micros()));
            }
            Overlap::Count(n) => {
                let last: i128 = since.parse().with_context(|| {
                    format!("watermark {since:?} of {} is not a number", wm.name)
                })?;
                conditions.push(format!("{name} >= ($1::text)::numeric"));
                params.push((last - i128::from(n)).to_string());
            }
        }
    }
    if let Some(f) = q.filter {
        conditions.push(format!("({f})"));
    }
    let mut sql = format!(
        "SELECT row_to_json(r)::text FROM (SELECT {} FROM {}",
        cols.join(", "),
        quote_table(q.table)
    );
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(") r");
    Ok((sql, params))
}

/// A source-neutral kind from `format_type`'s spelling.
fn kind_of(t: &str) -> Kind {
    if let Some(elem) = t.strip_suffix("[]") {
        return Kind::Array(elem.to_string());
    }
    // `numeric(12,2)`, `character varying(40)`, `timestamp(3) with time zone`.
    let (base, args) = match (t.find('('), t.find(')')) {
        (Some(a), Some(b)) if b > a => (format!("{}{}", &t[..a], &t[b + 1..]), &t[a + 1..b]),
        _ => (t.to_string(), ""),
    };
    let nums: Vec<u32> = args
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    match base.as_str() {
        "boolean" => Kind::Bool,
        "smallint" => Kind::Int16,
        "integer" => Kind::Int32,
        "bigint" => Kind::Int64,
        "numeric" => Kind::Decimal(
            nums.first().copied().unwrap_or(0),
            nums.get(1).copied().unwrap_or(0),
        ),
        "real" => Kind::Float32,
        "double precision" => Kind::Float64,
        "character varying" | "character" => Kind::Text(nums.first().copied()),
        "date" => Kind::Date,
        "time without time zone" | "time with time zone" => Kind::Time,
        "timestamp without time zone" => Kind::Timestamp,
        "timestamp with time zone" => Kind::TimestampTz,
        "json" | "jsonb" => Kind::Json,
        "bytea" => Kind::Binary,
        "uuid" => Kind::Uuid,
        _ => Kind::Text(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_format_type() {
        assert_eq!(kind_of("numeric(12,2)"), Kind::Decimal(12, 2));
        assert_eq!(kind_of("character varying(40)"), Kind::Text(Some(40)));
        assert_eq!(kind_of("timestamp(3) with time zone"), Kind::TimestampTz);
        assert_eq!(kind_of("timestamp with time zone"), Kind::TimestampTz);
        assert_eq!(kind_of("integer[]"), Kind::Array("integer".into()));
        assert_eq!(kind_of("jsonb"), Kind::Json);
    }
}
