//! The PostgreSQL stage: one row per NDJSON line of the objects of a load
//! (`rin_ship_stage(doc jsonb, n)`, `n` its position), filled by streaming each object's
//! decompressed bytes into `COPY ... FROM STDIN`, so PostgreSQL never needs to read S3.
//!
//! Must never: stage a line that was not in the object (a corrupt stream fails the object);
//! let a staging failure lose which object and line it was.

use crate::load::ledger::{ErrorDetail, ErrorKind, Item, LoadFailure};
use crate::load::warehouse::ndjson::Decoder;
use crate::load::warehouse::wire::pg_failure;
use crate::store::Body;
use futures::SinkExt;
use hyper::body::Bytes;
use tokio::io::AsyncReadExt;
use tokio_postgres::Transaction;
use tracing::debug;

/// The stage: one row per line of the objects of a load, `n` its position (1, 2, ... from the
/// last [`reset_stage`]).
pub const STAGE_DDL: &str = "CREATE TEMP TABLE IF NOT EXISTS rin_ship_stage \
     (doc jsonb, n bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS";

/// `\x01` never occurs in JSON text and `\x02` only escaped, so CSV mode with these as quote
/// and delimiter passes every line through unchanged.
pub const STAGE_COPY: &str =
    "COPY rin_ship_stage (doc) FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')";

/// What [`reset_stage`] runs (also shown by `--dry-run`).
pub const STAGE_RESET: &str = "TRUNCATE rin_ship_stage RESTART IDENTITY";

/// Empties the stage and restarts its positions at 1.
pub async fn reset_stage(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(STAGE_RESET).await
}

/// Why streaming an object into the stage stopped.
enum StageError {
    /// Reading the object failed (transient).
    Read(std::io::Error),
    /// The bytes are not what they claim (bad or truncated gzip): a data error.
    Corrupt(String),
    /// The server refused (a line that is not JSON names its line) or the connection failed.
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for StageError {
    fn from(e: tokio_postgres::Error) -> StageError {
        StageError::Db(e)
    }
}

/// Streams object `i` (`it`) into the stage after the rows already there; returns the lines
/// staged. A failure is the object's, with the line of a line that is not JSON.
pub async fn stage(
    tx: &Transaction<'_>,
    body: Body,
    it: &Item,
    i: usize,
) -> Result<u64, LoadFailure> {
    let url = it.url();
    let failure = match stream_lines(tx, body, &url).await {
        Ok(n) => return Ok(n),
        Err(StageError::Read(e)) => LoadFailure::read(&url, e),
        Err(StageError::Corrupt(reason)) => LoadFailure::corrupt(&url, None, reason),
        Err(StageError::Db(pe)) => {
            let mut f = pg_failure(&pe, true, &format!("staging {url}"));
            if f.kind == ErrorKind::Data {
                let line = pe
                    .as_db_error()
                    .and_then(|d| d.where_())
                    .and_then(copy_error_line);
                f.details = vec![ErrorDetail {
                    url: url.clone(),
                    line,
                    column: None,
                    reason: f.reason().to_string(),
                }];
            }
            f
        }
    };
    Err(failure.of_item(i))
}

async fn stream_lines(tx: &Transaction<'_>, mut body: Body, url: &str) -> Result<u64, StageError> {
    let sink = tx.copy_in::<_, Bytes>(STAGE_COPY).await?;
    futures::pin_mut!(sink);
    let mut decoder = Decoder::new();
    let mut ends_with_newline = true;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = body.read(&mut buf).await.map_err(StageError::Read)?;
        if n == 0 {
            break;
        }
        let out = decoder
            .push(&buf[..n])
            .map_err(|e| StageError::Corrupt(e.0))?;
        if !out.is_empty() {
            ends_with_newline = out.last() == Some(&b'\n');
            sink.send(Bytes::from(out)).await?;
        }
    }
    let rest = decoder.finish().map_err(|e| StageError::Corrupt(e.0))?;
    if !rest.is_empty() {
        ends_with_newline = rest.last() == Some(&b'\n');
        sink.send(Bytes::from(rest)).await?;
    }
    if !ends_with_newline {
        sink.send(Bytes::from_static(b"\n")).await?;
    }
    let n = sink.as_mut().finish().await?;
    debug!(object = url, lines = n, "staged");
    Ok(n)
}

/// The line number in `COPY rin_ship_stage, line N` of a COPY error's context.
pub fn copy_error_line(context: &str) -> Option<u64> {
    let at = context.find("COPY rin_ship_stage, line ")?;
    let rest = &context[at + "COPY rin_ship_stage, line ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
