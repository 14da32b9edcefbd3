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
    let what = r.visible_dsn();
    match sslmode {
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
    }
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
        .map_err(|e| anyhow!("cannot connect to {what}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            warn!("warehouse connection closed: {e}");
        }
    });
    Ok(client)
}

fn tls_config() -> Result<rustls::ClientConfig> {
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
    Ok(format!(
        "INSERT INTO {qualified} ({}) SELECT {} FROM rin_ship_stage s, \
         LATERAL jsonb_populate_record(NULL::{qualified}, s.doc) r WHERE s.doc IS NOT NULL",
        names.join(", "),
        exprs.join(", ")
    ))
}

pub const STAGE_DDL: &str =
    "CREATE TEMP TABLE IF NOT EXISTS rin_ship_stage (doc jsonb) ON COMMIT DELETE ROWS";
const STAGE_COPY: &str =
    "COPY rin_ship_stage (doc) FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')";

/// Streams one object's bytes (gzip or plain NDJSON) into the stage table, decompressing on
/// the way. Returns the number of lines staged.
pub async fn stage_object(
    tx: &tokio_postgres::Transaction<'_>,
    mut body: super::objects::Body,
    what: &str,
) -> Result<u64> {
    use tokio::io::AsyncReadExt;
    tx.batch_execute("TRUNCATE rin_ship_stage").await?;
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
            .map_err(|e| anyhow!("reading {what}: {e}"))?;
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
}
