//! Connections to the warehouse (Redshift and PostgreSQL speak the same wire protocol) and the
//! PostgreSQL load path: rin-ship reads the object itself and streams it, decompressed, into
//! `COPY stage(doc) FROM STDIN`, then maps top-level JSON keys to same-named columns the way
//! Redshift's `JSON 'auto'` does (missing key: the column default or NULL; extra keys ignored;
//! an optional catch-all jsonb column takes the keys no column matched).

use super::rin::{Redshift, SslMode, quote_ident, quote_literal};
use anyhow::{Context, Result, anyhow};
use futures::SinkExt;
use hyper::body::Bytes;
use std::sync::Arc;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, warn};

/// Connects as Rin does (host, port, dbname, user, password), TLS per `sslmode`.
pub async fn connect(r: &Redshift, sslmode: SslMode) -> Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&r.host)
        .port(if r.port == 0 { 5439 } else { r.port })
        .dbname(&r.dbname)
        .user(&r.user)
        .application_name("rin-ship")
        .connect_timeout(std::time::Duration::from_secs(30));
    if !r.password.is_empty() {
        cfg.password(&r.password);
    }
    #[cfg(feature = "redshift")]
    if r.iam_auth {
        // Temporary credentials, fetched anew when the cached ones are near their expiry.
        let c = super::iam::credentials(r).await?;
        cfg.user(&c.user).password(c.password.expose());
    }
    let what = r.visible_dsn();
    let connected = match sslmode {
        SslMode::Disable => open(cfg, NoTls, &what).await,
        mode => {
            cfg.ssl_mode(if mode == SslMode::Require {
                tokio_postgres::config::SslMode::Require
            } else {
                tokio_postgres::config::SslMode::Prefer
            });
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config()?);
            open(cfg, tls, &what).await
        }
    };
    #[cfg(feature = "redshift")]
    if r.iam_auth && connected.is_err() {
        // Perhaps refused: the next attempt logs in with freshly fetched credentials.
        super::iam::invalidate(r).await;
    }
    connected
}

/// Connects and drives the connection in the background.
async fn open<T>(cfg: tokio_postgres::Config, tls: T, what: &str) -> Result<Client>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Send + 'static,
    T::Stream: Send + 'static,
{
    let (client, conn) = cfg
        .connect(tls)
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot connect to {what}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            warn!("warehouse connection closed: {e}");
        }
    });
    Ok(client)
}

/// A TLS client trusting the OS certificate store (warehouse connections, config URLs).
pub fn tls_config() -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for c in found.certs {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One column of a target table, as the catalog describes it.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub default: Option<String>,
    /// Identity or generated: never written.
    pub skip: bool,
}

pub async fn table_columns(
    tx: &tokio_postgres::Transaction<'_>,
    qualified: &str,
) -> Result<Vec<Column>> {
    let rows = tx
        .query(
            "SELECT a.attname::text, pg_get_expr(d.adbin, d.adrelid), \
                    (a.attidentity <> '' OR a.attgenerated <> '') \
             FROM pg_attribute a LEFT JOIN pg_attrdef d \
               ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&qualified],
        )
        .await
        .with_context(|| format!("cannot read the columns of {qualified}"))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            default: r.get(1),
            skip: r.get(2),
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
    let selected: Vec<String> = names
        .iter()
        .zip(&exprs)
        .map(|(n, e)| format!("{e} AS {n}"))
        .collect();
    let null_keys: String = keys.iter().map(|k| format!(" OR w.{k} IS NULL")).collect();
    let pick = format!(
        "CREATE TEMP TABLE {PICK} ON COMMIT DROP AS SELECT w.rin_ship_n, {} FROM (\
         SELECT c.*, row_number() OVER (PARTITION BY {} ORDER BY {}) AS rin_ship_rn FROM (\
         SELECT s.n AS rin_ship_n, {} FROM rin_ship_stage s, \
         LATERAL jsonb_populate_record(NULL::{qualified}, s.doc) r WHERE s.doc IS NOT NULL) c\
         ) w WHERE w.rin_ship_rn = 1{null_keys}",
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
        selected.join(", "),
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

/// The stage: one row per line of the objects of a load, `n` its position (1, 2, ... from the
/// last [`reset_stage`]).
pub const STAGE_DDL: &str = "CREATE TEMP TABLE IF NOT EXISTS rin_ship_stage \
     (doc jsonb, n bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS";

/// Empties the stage and restarts its positions at 1.
pub async fn reset_stage(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute("TRUNCATE rin_ship_stage RESTART IDENTITY")
        .await
}

/// Why staging an object failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Reading the object from S3 failed (transient).
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// The bytes are not what they claim (bad or truncated gzip): a data error.
    #[error("{0}")]
    Corrupt(String),
    /// The server refused (a line that is not JSON names its line) or the connection failed.
    #[error("staging {0}: {1}")]
    Db(String, #[source] tokio_postgres::Error),
}

/// The line number in `COPY rin_ship_stage, line N` of a COPY error's context.
pub fn copy_error_line(context: &str) -> Option<u64> {
    let at = context.find("COPY rin_ship_stage, line ")?;
    let rest = &context[at + "COPY rin_ship_stage, line ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
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
pub async fn first_bad_row(
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
pub async fn bad_column(
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
const STAGE_COPY: &str =
    "COPY rin_ship_stage (doc) FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')";

/// Streams one object's bytes (gzip or plain NDJSON) into the stage table, decompressing on
/// the way, after the rows already there. Returns the number of lines staged.
pub async fn stage_object(
    tx: &tokio_postgres::Transaction<'_>,
    body: super::objects::Body,
    what: &str,
) -> Result<u64, StageError> {
    stage_lines(tx, body, what)
        .await
        .map_err(|e| match e.downcast::<StageError>() {
            Ok(s) => s,
            Err(e) => match e.downcast::<tokio_postgres::Error>() {
                Ok(pe) => StageError::Db(what.to_string(), pe),
                Err(e) => StageError::Corrupt(format!("{e:#}")),
            },
        })
}

async fn stage_lines(
    tx: &tokio_postgres::Transaction<'_>,
    mut body: super::objects::Body,
    what: &str,
) -> Result<u64> {
    use tokio::io::AsyncReadExt;
    let sink = tx.copy_in::<_, Bytes>(STAGE_COPY).await?;
    futures::pin_mut!(sink);
    let mut decoder: Option<flate2::write::MultiGzDecoder<Vec<u8>>> = None;
    let mut first = true;
    let mut ends_with_newline = true;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = body
            .read(&mut buf)
            .await
            .map_err(|e| StageError::Read(what.to_string(), e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if first {
            first = false;
            if chunk.len() >= 2 && chunk[0] == 0x1f && chunk[1] == 0x8b {
                decoder = Some(flate2::write::MultiGzDecoder::new(Vec::new()));
            }
        }
        let out: Vec<u8> = match decoder.as_mut() {
            Some(d) => {
                use std::io::Write;
                d.write_all(chunk)
                    .with_context(|| format!("{what}: bad gzip data"))?;
                std::mem::take(d.get_mut())
            }
            None => chunk.to_vec(),
        };
        if !out.is_empty() {
            ends_with_newline = out.last() == Some(&b'\n');
            sink.send(Bytes::from(out)).await?;
        }
    }
    if let Some(d) = decoder {
        let rest = d
            .finish()
            .with_context(|| format!("{what}: truncated gzip data"))?;
        if !rest.is_empty() {
            ends_with_newline = rest.last() == Some(&b'\n');
            sink.send(Bytes::from(rest)).await?;
        }
    }
    if !ends_with_newline {
        sink.send(Bytes::from_static(b"\n")).await?;
    }
    let n = sink.as_mut().finish().await?;
    debug!(object = what, lines = n, "staged");
    Ok(n)
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
            },
            Column {
                name: "time".into(),
                default: None,
                skip: false,
            },
            Column {
                name: "status".into(),
                default: Some("0".into()),
                skip: false,
            },
            Column {
                name: "extra".into(),
                default: None,
                skip: false,
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

    #[test]
    fn copy_error_lines() {
        assert_eq!(
            copy_error_line(
                "JSON data, line 1: nope\nCOPY rin_ship_stage, line 3, column doc: \"nope\""
            ),
            Some(3)
        );
        assert_eq!(copy_error_line("COPY rin_ship_stage, line 12"), Some(12));
        assert_eq!(copy_error_line("SQL statement"), None);
    }
}
