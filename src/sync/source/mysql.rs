//! MySQL, Aurora MySQL and MariaDB as a sync source (`mysql_async`, the binary protocol: typed
//! values, no text parsing of numbers). The session reads in UTC (`time_zone = '+00:00'`, so a
//! `TIMESTAMP` is an instant) and utf8mb4; a pass is one `START TRANSACTION WITH CONSISTENT
//! SNAPSHOT`, so its watermark and its rows come from the same moment of the table.
//!
//! Types (the MySQL ones that bite, warehouse-loading.md): `DECIMAL` as a string of its digits;
//! `BIGINT UNSIGNED` as an unsigned JSON number; `TINYINT(1)` as a boolean; `DATETIME` as
//! `YYYY-MM-DD HH:MM:SS[.ffffff]`, `TIMESTAMP` the same with `+00:00`; zero dates
//! (`0000-00-00`) as null; `JSON` as JSON; `BLOB`/`BINARY` as base64; `BIT` as a number.
//!
//! Must never: interpolate a watermark into SQL (it is a bound parameter); hold a result set
//! in memory.

use super::{
    Column, KeyBatches, KeyQuery, KeySender, Kind, Newest, PassQuery, TableSchema, key_prefixes,
    push_json_str,
};
use crate::sync::config::{Overlap, SourceConfig, Tls};
use crate::sync::objects::ObjectWriter;
use anyhow::{Context, Result, anyhow};
use base64::Engine;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, SslOpts, Value};
use std::io::Write as _;

pub struct MysqlSource {
    conn: Conn,
    what: String,
}

/// `` `name` ``, backticks doubled.
fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `` `db`.`table` `` or `` `table` ``.
fn quote_table(table: &str) -> String {
    table.split('.').map(quote).collect::<Vec<_>>().join(".")
}

impl MysqlSource {
    pub async fn connect(cfg: &SourceConfig) -> Result<MysqlSource> {
        let opts = Opts::from_url(&cfg.url).map_err(|e| {
            // The URL error names the part that failed, never the password.
            anyhow!("source.url is not a MySQL URL (mysql://user:password@host:port/db): {e}")
        })?;
        let what = format!(
            "mysql://{}:{}/{}",
            opts.ip_or_hostname(),
            opts.tcp_port(),
            opts.db_name().unwrap_or_default()
        );
        let init = vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"];
        let plain = OptsBuilder::from_opts(opts).init(init).prefer_socket(false);
        // `prefer` and `require` encrypt without checking the certificate, as libpq's modes
        // of those names do (RDS and self-managed servers rarely carry a public CA's one).
        let tls = SslOpts::default()
            .with_danger_accept_invalid_certs(true)
            .with_danger_skip_domain_validation(true);
        let conn = match cfg.tls {
            Tls::Disable => Conn::new(plain).await,
            Tls::Require => Conn::new(plain.ssl_opts(tls)).await,
            Tls::Prefer => match Conn::new(plain.clone().ssl_opts(tls)).await {
                Err(mysql_async::Error::Driver(
                    mysql_async::DriverError::NoClientSslFlagFromServer,
                )) => Conn::new(plain).await,
                other => other,
            },
        }
        .with_context(|| format!("cannot connect to {what}"))?;
        Ok(MysqlSource { conn, what })
    }

    pub fn describe(&self) -> String {
        self.what.clone()
    }

    pub async fn schema(&mut self, table: &str) -> Result<TableSchema> {
        let (db, name) = match table.split_once('.') {
            Some((d, t)) => (Some(d.to_string()), t.to_string()),
            None => (None, table.to_string()),
        };
        let rows: Vec<(String, String, String, String, u64, u64, u64)> = self
            .conn
            .exec(
                "SELECT COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE), IS_NULLABLE, \
                        COALESCE(NUMERIC_PRECISION, 0), COALESCE(NUMERIC_SCALE, 0), \
                        COALESCE(CHARACTER_MAXIMUM_LENGTH, 0) \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                 ORDER BY ORDINAL_POSITION",
                (db.clone(), name.clone()),
            )
            .await
            .with_context(|| format!("reading the columns of {table} on {}", self.what))?;
        let columns = rows
            .into_iter()
            .map(
                |(name, data_type, column_type, nullable, p, s, len)| Column {
                    kind: kind_of(&data_type, &column_type, p, s, len),
                    name,
                    source_type: column_type,
                    nullable: nullable == "YES",
                },
            )
            .collect();
        let primary_key: Vec<String> = self
            .conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                   AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                (db, name),
            )
            .await
            .with_context(|| format!("reading the primary key of {table} on {}", self.what))?;
        Ok(TableSchema {
            columns,
            primary_key,
        })
    }

    pub async fn estimate_rows(&mut self, table: &str) -> Option<u64> {
        let (db, name) = match table.split_once('.') {
            Some((d, t)) => (Some(d.to_string()), t.to_string()),
            None => (None, table.to_string()),
        };
        let n: Option<Option<u64>> = self
            .conn
            .exec_first(
                "SELECT TABLE_ROWS FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                (db, name),
            )
            .await
            .ok()?;
        n.flatten()
    }

    pub async fn begin(&mut self, q: &PassQuery<'_>) -> Result<Newest> {
        self.conn
            .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .with_context(|| format!("starting a snapshot on {}", self.what))?;
        let Some(wm) = q.watermark else {
            return Ok(Newest::default());
        };
        let column = quote(&wm.name);
        let lag = if wm.kind.is_time() {
            format!("TIMESTAMPDIFF(MICROSECOND, MAX({column}), NOW(6)) / 1e6")
        } else {
            "NULL".to_string()
        };
        let sql = format!(
            "SELECT CAST(MAX({column}) AS CHAR), CAST({lag} AS DOUBLE) FROM {}{}",
            quote_table(q.table),
            q.filter
                .map(|f| format!(" WHERE ({f})"))
                .unwrap_or_default()
        );
        let row: Option<(Option<String>, Option<f64>)> = self
            .conn
            .exec_first(sql, ())
            .await
            .with_context(|| format!("reading the newest {} of {}", wm.name, q.table))?;
        let (watermark, lag_seconds) = row.unwrap_or_default();
        Ok(Newest {
            watermark,
            lag_seconds,
        })
    }

    pub async fn keys(&mut self, q: &KeyQuery<'_>, out: KeySender) -> Result<u64> {
        let sql = q.select(
            |k| format!("CAST({} AS CHAR)", quote(k)),
            quote_table(q.table),
        );
        let table = q.table;
        let what = || format!("reading the keys of {table} on {}", self.what);
        self.conn
            .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .with_context(what)?;
        let mut batches = KeyBatches::new(out);
        {
            let mut result = self.conn.exec_iter(sql, ()).await.with_context(what)?;
            while let Some(row) = result.next().await.with_context(what)? {
                let k: Vec<String> = (0..q.key.len())
                    .map(|i| {
                        row.get::<Option<String>, _>(i)
                            .flatten()
                            .unwrap_or_default()
                    })
                    .collect();
                batches.push(k).await?;
            }
        }
        let n = batches.finish().await?;
        self.conn.query_drop("COMMIT").await.with_context(what)?;
        Ok(n)
    }

    pub async fn stream(&mut self, q: &PassQuery<'_>, out: &mut ObjectWriter<'_>) -> Result<u64> {
        let (sql, params) = select(q)?;
        let keys = key_prefixes(q.schema);
        let kinds: Vec<&Kind> = q.schema.columns.iter().map(|c| &c.kind).collect();
        let mut rows = 0u64;
        {
            let mut result = self
                .conn
                .exec_iter(sql, params)
                .await
                .with_context(|| format!("reading {} on {}", q.table, self.what))?;
            while let Some(row) = result
                .next()
                .await
                .with_context(|| format!("reading {} on {}", q.table, self.what))?
            {
                let line = out.line();
                for (i, key) in keys.iter().enumerate() {
                    line.extend_from_slice(key);
                    write_value(line, kinds[i], row.as_ref(i).unwrap_or(&Value::NULL));
                }
                line.push(b'}');
                out.push_line().await?;
                rows += 1;
            }
        }
        self.conn.query_drop("COMMIT").await?;
        Ok(rows)
    }
}

/// The pass's SELECT and its bound parameters.
fn select(q: &PassQuery<'_>) -> Result<(String, Vec<Value>)> {
    let cols: Vec<String> = q.schema.columns.iter().map(|c| quote(&c.name)).collect();
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let (Some(wm), Some((since, overlap))) = (q.watermark, q.since) {
        let name = quote(&wm.name);
        match overlap {
            Overlap::Time(d) => {
                conditions.push(format!(
                    "{name} >= CAST(? AS DATETIME(6)) - INTERVAL ? MICROSECOND"
                ));
                params.push(Value::from(since));
                params.push(Value::from(d.as_micros() as u64));
            }
            Overlap::Count(n) => {
                // Computed here: MySQL compares an integer column with a string as doubles,
                // which loses ids beyond 2^53.
                let last: i128 = since.parse().with_context(|| {
                    format!("watermark {since:?} of {} is not a number", wm.name)
                })?;
                let from = last - i128::from(n);
                conditions.push(format!("{name} >= ?"));
                params.push(match i64::try_from(from) {
                    Ok(v) => Value::Int(v),
                    Err(_) => Value::UInt(u64::try_from(from).unwrap_or(u64::MAX)),
                });
            }
        }
    }
    if let Some(f) = q.filter {
        conditions.push(format!("({f})"));
    }
    let mut sql = format!("SELECT {} FROM {}", cols.join(", "), quote_table(q.table));
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    Ok((sql, params))
}

/// A source-neutral kind from information_schema's DATA_TYPE and COLUMN_TYPE.
fn kind_of(data_type: &str, column_type: &str, precision: u64, scale: u64, len: u64) -> Kind {
    let unsigned = column_type.contains("unsigned");
    match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") => Kind::Bool,
        "bool" | "boolean" => Kind::Bool,
        "tinyint" => Kind::Int16,
        "smallint" if unsigned => Kind::Int32,
        "smallint" | "year" => Kind::Int16,
        "mediumint" => Kind::Int32,
        "int" | "integer" if unsigned => Kind::Int64,
        "int" | "integer" => Kind::Int32,
        "bigint" if unsigned => Kind::UInt64,
        "bigint" | "bit" => Kind::Int64,
        "decimal" | "numeric" => Kind::Decimal(precision as u32, scale as u32),
        "float" => Kind::Float32,
        "double" | "real" => Kind::Float64,
        "date" => Kind::Date,
        "datetime" => Kind::Timestamp,
        "timestamp" => Kind::TimestampTz,
        "time" => Kind::Time,
        "json" => Kind::Json,
        "char" | "varchar" => Kind::Text(u32::try_from(len).ok()),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Binary,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => Kind::Binary,
        // text types, enum, set, and what a later server adds: text.
        _ => Kind::Text(None),
    }
}

/// Writes one value as the JSON the module docs describe.
fn write_value(out: &mut Vec<u8>, kind: &Kind, v: &Value) {
    match (kind, v) {
        (_, Value::NULL) => out.extend_from_slice(b"null"),
        (Kind::Bool, Value::Int(i)) => {
            out.extend_from_slice(if *i != 0 { b"true" } else { b"false" })
        }
        (Kind::Bool, Value::UInt(u)) => {
            out.extend_from_slice(if *u != 0 { b"true" } else { b"false" })
        }
        (_, Value::Int(i)) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        (_, Value::UInt(u)) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
        (_, Value::Float(f)) => write_float(out, f64::from(*f)),
        (_, Value::Double(f)) => write_float(out, *f),
        (kind, Value::Date(y, m, d, h, mi, s, us)) => {
            if *y == 0 && *m == 0 && *d == 0 {
                // A zero date is no date: every warehouse refuses `0000-00-00`.
                out.extend_from_slice(b"null");
                return;
            }
            // Digits and separators only: nothing to escape, written straight into the line.
            out.push(b'"');
            let _ = write!(out, "{y:04}-{m:02}-{d:02}");
            if *kind != Kind::Date {
                let _ = write!(out, " {h:02}:{mi:02}:{s:02}");
                if *us != 0 {
                    let _ = write!(out, ".{us:06}");
                }
                if *kind == Kind::TimestampTz {
                    out.extend_from_slice(b"+00:00");
                }
            }
            out.push(b'"');
        }
        (_, Value::Time(neg, days, h, m, s, us)) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            let _ = write!(out, "\"{sign}{hours:02}:{m:02}:{s:02}");
            if *us != 0 {
                let _ = write!(out, ".{us:06}");
            }
            out.push(b'"');
        }
        (Kind::Binary, Value::Bytes(b)) => {
            push_json_str(out, &base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Kind::Json, Value::Bytes(b))
            if serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok() =>
        {
            out.extend_from_slice(b)
        }
        (Kind::Int64 | Kind::Int16 | Kind::Int32 | Kind::UInt64, Value::Bytes(b)) => {
            // BIT(n): big-endian bits.
            let n = b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
        }
        (_, Value::Bytes(b)) => match std::str::from_utf8(b) {
            Ok(s) => push_json_str(out, s),
            Err(_) => push_json_str(out, &String::from_utf8_lossy(b)),
        },
    }
}

fn write_float(out: &mut Vec<u8>, f: f64) {
    if f.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(kind: Kind, v: Value) -> String {
        let mut out = Vec::new();
        write_value(&mut out, &kind, &v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_types_that_bite() {
        assert_eq!(
            json(
                Kind::Decimal(30, 10),
                Value::Bytes(b"12345678901234567890.0123456789".to_vec())
            ),
            "\"12345678901234567890.0123456789\""
        );
        assert_eq!(
            json(Kind::UInt64, Value::UInt(u64::MAX)),
            "18446744073709551615"
        );
        assert_eq!(json(Kind::Bool, Value::Int(1)), "true");
        assert_eq!(
            json(Kind::Timestamp, Value::Date(0, 0, 0, 0, 0, 0, 0)),
            "null"
        );
        assert_eq!(
            json(Kind::Timestamp, Value::Date(2024, 2, 29, 23, 59, 58, 5)),
            "\"2024-02-29 23:59:58.000005\""
        );
        assert_eq!(
            json(Kind::TimestampTz, Value::Date(2024, 1, 2, 3, 4, 5, 0)),
            "\"2024-01-02 03:04:05+00:00\""
        );
        assert_eq!(
            json(Kind::Date, Value::Date(2024, 1, 2, 0, 0, 0, 0)),
            "\"2024-01-02\""
        );
        assert_eq!(
            json(Kind::Time, Value::Time(true, 1, 2, 3, 4, 0)),
            "\"-26:03:04\""
        );
        assert_eq!(
            json(Kind::Json, Value::Bytes(br#"{"a": [1]}"#.to_vec())),
            r#"{"a": [1]}"#
        );
        assert_eq!(
            json(Kind::Json, Value::Bytes(b"not json".to_vec())),
            "\"not json\""
        );
        assert_eq!(json(Kind::Binary, Value::Bytes(vec![0, 255])), "\"AP8=\"");
        assert_eq!(json(Kind::Int64, Value::Bytes(vec![1, 0])), "256");
        assert_eq!(
            json(
                Kind::Text(None),
                Value::Bytes("tab\there \"q\"".as_bytes().to_vec())
            ),
            r#""tab\there \"q\"""#
        );
        assert_eq!(json(Kind::Float64, Value::Double(0.1)), "0.1");
    }

    #[test]
    fn kinds_from_information_schema() {
        assert_eq!(kind_of("tinyint", "tinyint(1)", 3, 0, 0), Kind::Bool);
        assert_eq!(
            kind_of("bigint", "bigint(20) unsigned", 20, 0, 0),
            Kind::UInt64
        );
        assert_eq!(
            kind_of("decimal", "decimal(12,2)", 12, 2, 0),
            Kind::Decimal(12, 2)
        );
        assert_eq!(
            kind_of("varchar", "varchar(40)", 0, 0, 40),
            Kind::Text(Some(40))
        );
        assert_eq!(kind_of("longblob", "longblob", 0, 0, 0), Kind::Binary);
    }
}
