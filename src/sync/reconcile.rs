//! Deletes, optionally (`delete_missing: true` on a table): the key reconciliation. A
//! watermark pass sees only rows that exist, so a row deleted from the source stays in the
//! warehouse; every `reconcile_every` (after a pass has loaded), every key of the source table
//! is read in a snapshot of its own and streamed into a temporary table of the warehouse, and
//! the warehouse rows whose key is not there are deleted, in one transaction.
//!
//! Why a snapshot taken after the pass is safe: the warehouse holds only rows some earlier
//! snapshot had; a key absent from this later one was deleted from the source (or had its key
//! changed) by then, so deleting it is right; a row inserted since is not in the warehouse yet
//! and is not touched.
//!
//! Owns the temporary key table and the `DELETE`. Must never: delete a warehouse row whose key
//! the source has; hold the key set in memory (it streams in batches through a bounded
//! channel); run where the keys cannot be streamed into the warehouse (Redshift takes COPY only
//! from S3: refused at config load, see `docs/sync.md`).

use super::source::{KeyQuery, Source};
use crate::load::rin::{DriverKind, SslMode, Target, quote_ident};
use anyhow::{Context, Result, anyhow, bail};
use futures::SinkExt;
use tokio::sync::mpsc;

/// Batches of keys in flight between the source and the warehouse.
const IN_FLIGHT: usize = 4;

/// The temporary table the keys go to.
const KEYS: &str = "rin_ship_source_keys";

/// Deletes the rows of `qualified` (target `target`) whose `key` the source table no longer
/// has (among the rows matching `filter`). Returns (keys read, rows deleted).
pub async fn delete_missing(
    source: &mut Source,
    table: &str,
    filter: Option<&str>,
    target: &Target,
    sslmode: SslMode,
    qualified: &str,
    key: &[String],
) -> Result<(u64, u64)> {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let query = KeyQuery { table, key, filter };
    let read = source.keys(&query, tx);
    let delete = async {
        match target.driver {
            DriverKind::Postgres => delete_in_postgres(target, sslmode, qualified, key, rx).await,
            DriverKind::Sqlite => {
                let path = target.redshift.dbname.clone();
                let (qualified, key) = (qualified.to_string(), key.to_vec());
                tokio::task::spawn_blocking(move || delete_in_sqlite(&path, &qualified, &key, rx))
                    .await
                    .map_err(|e| anyhow!("{e}"))?
            }
            DriverKind::Redshift | DriverKind::RedshiftData => {
                bail!("delete_missing is not available on Redshift yet (see docs/sync.md)")
            }
        }
    };
    let (read, deleted) = tokio::join!(read, delete);
    // The warehouse side's error explains a failed read ("stopped taking keys") best.
    let deleted = deleted?;
    Ok((read?, deleted))
}

/// The keys into a temporary table by `COPY FROM STDIN` (text format), then one `DELETE`.
async fn delete_in_postgres(
    target: &Target,
    sslmode: SslMode,
    qualified: &str,
    key: &[String],
    mut rx: mpsc::Receiver<Vec<Vec<String>>>,
) -> Result<u64> {
    let mut client = crate::load::warehouse::wire::connect(&target.redshift, sslmode)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let tx = client.transaction().await?;
    let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    let cols = cols.join(", ");
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {KEYS} ON COMMIT DROP AS SELECT {cols} FROM {qualified} WITH NO DATA"
    ))
    .await
    .with_context(|| format!("creating the key table for {qualified}"))?;
    let sink = tx
        .copy_in::<_, hyper::body::Bytes>(&format!("COPY {KEYS} ({cols}) FROM STDIN"))
        .await?;
    futures::pin_mut!(sink);
    let mut line = Vec::new();
    while let Some(batch) = rx.recv().await {
        line.clear();
        for k in batch {
            for (i, v) in k.iter().enumerate() {
                if i > 0 {
                    line.push(b'\t');
                }
                copy_text(&mut line, v);
            }
            line.push(b'\n');
        }
        sink.send(hyper::body::Bytes::copy_from_slice(&line))
            .await?;
    }
    sink.as_mut().finish().await?;
    tx.batch_execute(&format!("ANALYZE {KEYS}")).await?;
    let matches: Vec<String> = key
        .iter()
        .map(|k| format!("k.{0} = t.{0}", quote_ident(k)))
        .collect();
    let deleted = tx
        .execute(
            &format!(
                "DELETE FROM {qualified} t WHERE NOT EXISTS (SELECT 1 FROM {KEYS} k WHERE {})",
                matches.join(" AND ")
            ),
            &[],
        )
        .await
        .with_context(|| format!("deleting the rows of {qualified} the source no longer has"))?;
    tx.commit().await?;
    Ok(deleted)
}

/// A value in COPY's text format: backslash, tab, newline and carriage return escaped.
fn copy_text(out: &mut Vec<u8>, v: &str) {
    for b in v.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// The keys into a temporary table (untyped columns: SQLite compares them with the table's
/// by its affinity rules), then one `DELETE`, in one transaction.
fn delete_in_sqlite(
    path: &str,
    qualified: &str,
    key: &[String],
    mut rx: mpsc::Receiver<Vec<Vec<String>>>,
) -> Result<u64> {
    let mut c = rusqlite::Connection::open(path).with_context(|| format!("opening {path}"))?;
    c.busy_timeout(std::time::Duration::from_secs(30))?;
    let tx = c.transaction()?;
    let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    tx.execute_batch(&format!("CREATE TEMP TABLE {KEYS} ({}); ", cols.join(", ")))?;
    {
        let marks = vec!["?"; key.len()].join(", ");
        let mut insert = tx.prepare(&format!("INSERT INTO temp.{KEYS} VALUES ({marks})"))?;
        while let Some(batch) = rx.blocking_recv() {
            for k in batch {
                insert.execute(rusqlite::params_from_iter(k.iter()))?;
            }
        }
    }
    let matches: Vec<String> = cols
        .iter()
        .map(|k| format!("k.{k} = {qualified}.{k}"))
        .collect();
    let deleted = tx.execute(
        &format!(
            "DELETE FROM {qualified} WHERE NOT EXISTS (SELECT 1 FROM temp.{KEYS} k WHERE {})",
            matches.join(" AND ")
        ),
        [],
    )?;
    tx.execute_batch(&format!("DROP TABLE temp.{KEYS}"))?;
    tx.commit()?;
    Ok(deleted as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = Vec::new();
        copy_text(&mut out, "a\tb\\c\nd\re");
        assert_eq!(out, b"a\\tb\\\\c\\nd\\re");
    }
}
