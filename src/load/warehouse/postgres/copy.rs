//! One object streamed into a table as COPY rows: the object's bytes decoded as they arrive,
//! each line written as a row ([`super::rows`]), the rows sent in runs of one column list
//! (`COPY t (cols) FROM STDIN`; a new run when a line gives values to other defaulted
//! columns). What the server refuses comes back with the object's own line and the column, from
//! the COPY's error context.
//!
//! Must never: let a row of one column list go into a COPY of another; lose the object line of
//! a row whose run is still open (the server may refuse it only at the run's end).

use super::rows::{ColumnSet, JsonKind, Layout, Scratch};
use crate::load::ledger::failure::SqlState;
use crate::load::ledger::{ErrorDetail, ErrorKind, Item, LoadFailure};
use crate::load::warehouse::ndjson::Decoder;
use crate::load::warehouse::wire::pg_failure;
use crate::store::Body;
use futures::SinkExt;
use hyper::body::Bytes;
use tokio::io::AsyncReadExt;
use tokio_postgres::{CopyInSink, Transaction};

/// Rows are sent to the server in pieces of about this size.
const SEND_BYTES: usize = 256 << 10;

/// Where the rows of a load go.
pub struct CopyRows<'a> {
    pub tx: &'a Transaction<'a>,
    /// The quoted table.
    pub table: &'a str,
    pub layout: &'a Layout,
    /// The next stage position: with it, each row also gets its position (1, 2, ... across
    /// the objects of the load) in the leading column `rin_ship_n` (the typed stage of the
    /// keyed modes).
    pub position: Option<i64>,
    /// Reused from row to row: what a line holds, and the row written from it.
    scratch: Scratch,
    row: Vec<u8>,
}

/// What copying one object did.
#[derive(Debug, Default)]
pub struct Copied {
    pub rows: u64,
    /// Keys that matched no column (and had no catch-all), and a few of their names.
    pub unmatched: u64,
    pub unmatched_names: Vec<String>,
    /// Each distinct unmatched key with the kind of its values (`schema: evolve`), at most
    /// [`MAX_NEW_COLUMNS`]; `too_many_new`: there were more.
    pub new_columns: Vec<(String, JsonKind)>,
    pub too_many_new: bool,
}

/// Columns `schema: evolve` adds for one load at most: more new keys than this look like data
/// in key position (an id as a key), not a schema.
pub const MAX_NEW_COLUMNS: usize = 64;

/// An open `COPY ... FROM STDIN` of one column list.
struct Run {
    columns: ColumnSet,
    sink: std::pin::Pin<Box<CopyInSink<Bytes>>>,
    buf: Vec<u8>,
    /// The object line of each row sent in this run, in order.
    lines: Vec<u64>,
}

impl<'a> CopyRows<'a> {
    pub fn new(
        tx: &'a Transaction<'a>,
        table: &'a str,
        layout: &'a Layout,
        position: Option<i64>,
    ) -> CopyRows<'a> {
        CopyRows {
            tx,
            table,
            layout,
            position,
            scratch: Scratch::default(),
            row: Vec::with_capacity(1024),
        }
    }

    /// Copies object `i` (`it`, read from `body`) into the table.
    pub async fn object(&mut self, body: Body, it: &Item, i: usize) -> Result<Copied, LoadFailure> {
        let url = it.url();
        self.stream(body, &url).await.map_err(|f| f.of_item(i))
    }

    async fn stream(&mut self, mut body: Body, url: &str) -> Result<Copied, LoadFailure> {
        let mut decoder = Decoder::new();
        let mut copied = Copied::default();
        let mut run: Option<Run> = None;
        let mut partial: Vec<u8> = Vec::new();
        let mut line_no = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = body
                .read(&mut buf)
                .await
                .map_err(|e| LoadFailure::read(url, e))?;
            let decoded = if n == 0 {
                std::mem::take(&mut decoder)
                    .finish()
                    .map_err(|e| LoadFailure::corrupt(url, None, e.0))?
            } else {
                decoder
                    .push(&buf[..n])
                    .map_err(|e| LoadFailure::corrupt(url, None, e.0))?
            };
            partial.extend_from_slice(&decoded);
            let mut consumed = 0;
            loop {
                let rest = &partial[consumed..];
                // The last piece has no newline yet: it waits for more bytes, unless the
                // object ended.
                let line = match memchr::memchr(b'\n', rest) {
                    Some(end) => &rest[..end],
                    None if n == 0 && !rest.is_empty() => rest,
                    None => break,
                };
                consumed += line.len() + 1;
                line_no += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                self.row(&mut run, line, line_no, url, &mut copied).await?;
            }
            if n == 0 {
                break;
            }
            partial.drain(..consumed.min(partial.len()));
        }
        if let Some(r) = run.take() {
            copied.rows += self.finish(r, url).await?;
        }
        Ok(copied)
    }

    /// One line as a row, in the run of its column list.
    async fn row(
        &mut self,
        run: &mut Option<Run>,
        line: &[u8],
        line_no: u64,
        url: &str,
        copied: &mut Copied,
    ) -> Result<(), LoadFailure> {
        let out = &mut self.row;
        out.clear();
        if let Some(n) = self.position.as_mut() {
            out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
            out.push(b'\t');
            *n += 1;
        }
        let sc = &mut self.scratch;
        self.layout.write_row(line, sc, out).map_err(|e| {
            let mut f = LoadFailure::corrupt(url, Some(line_no), format!("invalid JSON: {}", e.0));
            // As PostgreSQL names a text that is not valid JSON.
            f.sqlstate = SqlState::new("22P02");
            f
        })?;
        copied.unmatched += sc.unmatched.len() as u64;
        for (k, kind) in &sc.unmatched {
            if copied.unmatched_names.len() < 10 && !copied.unmatched_names.contains(k) {
                copied.unmatched_names.push(k.clone());
            }
            let room = copied.new_columns.len() < MAX_NEW_COLUMNS;
            match copied.new_columns.iter_mut().find(|(n, _)| n == k) {
                Some((_, seen)) => *seen = seen.widen(*kind),
                None if room => copied.new_columns.push((k.clone(), *kind)),
                None => copied.too_many_new = true,
            }
        }
        let empty = sc.columns.iter().all(|w| *w == 0);
        if self.position.is_some() && empty {
            // Only the position: `n\t\n` becomes `n\n`.
            out.truncate(out.len() - 2);
            out.push(b'\n');
        }
        if run
            .as_ref()
            .is_some_and(|r| r.columns != self.scratch.columns)
        {
            let r = run.take().expect("checked");
            copied.rows += self.finish(r, url).await?;
        }
        if empty && self.position.is_none() {
            // A line with no value for any column (`{}`): a row of defaults.
            let sql = format!("INSERT INTO {} DEFAULT VALUES", self.table);
            self.tx
                .execute(&sql, &[])
                .await
                .map_err(|e| refused(&e, url, &[line_no]))?;
            copied.rows += 1;
            return Ok(());
        }
        if run.is_none() {
            *run = Some(self.open(self.scratch.columns.clone(), url).await?);
        }
        let r = run.as_mut().expect("opened above");
        r.buf.extend_from_slice(&self.row);
        r.lines.push(line_no);
        if r.buf.len() >= SEND_BYTES {
            let piece = Bytes::from(std::mem::take(&mut r.buf));
            if let Err(e) = r.sink.send(piece).await {
                return Err(refused(&e, url, &r.lines));
            }
        }
        Ok(())
    }

    async fn open(&self, columns: ColumnSet, url: &str) -> Result<Run, LoadFailure> {
        let mut list = Vec::new();
        if self.position.is_some() {
            list.push("rin_ship_n".to_string());
        }
        list.extend(self.layout.column_list(&columns));
        let sql = format!("COPY {} ({}) FROM STDIN", self.table, list.join(", "));
        let sink =
            self.tx.copy_in::<_, Bytes>(&sql).await.map_err(|e| {
                pg_failure(&e, false, &format!("COPY into {} for {url}", self.table))
            })?;
        Ok(Run {
            columns,
            sink: Box::pin(sink),
            buf: Vec::with_capacity(SEND_BYTES + (64 << 10)),
            lines: Vec::new(),
        })
    }

    /// Sends the run's last rows and ends its COPY; the rows it wrote.
    async fn finish(&self, mut r: Run, url: &str) -> Result<u64, LoadFailure> {
        let rest = Bytes::from(std::mem::take(&mut r.buf));
        let done = async {
            if !rest.is_empty() {
                r.sink.send(rest).await?;
            }
            r.sink.as_mut().finish().await
        }
        .await;
        done.map_err(|e| refused(&e, url, &r.lines))
    }
}

/// What the server said of a run's rows, named by the object line of the row it refused.
fn refused(e: &tokio_postgres::Error, url: &str, lines: &[u64]) -> LoadFailure {
    let mut f = pg_failure(e, true, &format!("loading {url}"));
    if f.kind == ErrorKind::Data {
        let context = e.as_db_error().and_then(|d| d.where_()).unwrap_or("");
        let (line, column) = copy_context(context);
        let line = match (line, lines) {
            (Some(n), _) => lines.get(n as usize - 1).copied(),
            // One row (a row of defaults): its line.
            (None, [only]) => Some(*only),
            _ => None,
        };
        f.details = vec![ErrorDetail {
            url: url.to_string(),
            line,
            column: column.or_else(|| e.as_db_error().and_then(|d| d.column()).map(str::to_string)),
            reason: f.reason().to_string(),
        }];
    }
    f
}

/// The line and column of a COPY error's context: `COPY t, line 3, column i: "x"`.
fn copy_context(context: &str) -> (Option<u64>, Option<String>) {
    let Some(at) = context.find(", line ") else {
        return (None, None);
    };
    let rest = &context[at + ", line ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let line = digits.parse().ok().filter(|n| *n > 0);
    let column = rest[digits.len()..]
        .strip_prefix(", column ")
        .map(|c| c.split(':').next().unwrap_or("").trim().to_string());
    (line, column.filter(|c| !c.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_contexts() {
        assert_eq!(
            copy_context("COPY logs, line 3, column i: \"not a number\""),
            (Some(3), Some("i".to_string()))
        );
        assert_eq!(
            copy_context("COPY logs, line 12: \"1\\t2\""),
            (Some(12), None)
        );
        assert_eq!(copy_context("SQL statement"), (None, None));
    }
}
