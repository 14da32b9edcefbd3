//! The extract half of `rin-ship sync`: a source database ([`mysql`]: MySQL, Aurora MySQL,
//! MariaDB; [`postgres`]: PostgreSQL) read one table at a time. A source says what a table
//! looks like ([`TableSchema`]: columns with a source-neutral [`Kind`], and the primary key),
//! the newest watermark of a pass, and streams the pass's rows as JSON lines into an
//! [`ObjectWriter`] — no whole-table buffering, one row at a time.
//!
//! Each row's values are written as the loader reads them back exactly: integers (unsigned
//! 64-bit too) and floats as JSON numbers, `DECIMAL`/`numeric` as strings of their digits
//! (never through a float), times as text in a form every warehouse parses, JSON columns as
//! JSON, binary as base64 (see docs/sync.md for the table).
//!
//! Must never: read a table in one result held in memory; put a name into SQL unquoted (the
//! `where:` of the config excepted: it is the operator's own SQL); log a password.

#[cfg(feature = "mysql")]
pub mod mysql;
pub mod postgres;

use super::config::{Overlap, SourceConfig};
use super::objects::ObjectWriter;
use anyhow::{Result, bail};

/// A column type as the warehouse side needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int16,
    Int32,
    Int64,
    /// `BIGINT UNSIGNED`: beyond int8, so a 20-digit decimal in the warehouse.
    UInt64,
    /// Precision and scale (0, 0: unconstrained `numeric`).
    Decimal(u32, u32),
    Float32,
    Float64,
    /// Text of at most this many characters (`None`: unbounded).
    Text(Option<u32>),
    Date,
    /// A time of day (MySQL `TIME` may exceed 24 h: text in the warehouse).
    Time,
    /// Date and time without a zone (MySQL `DATETIME`, PostgreSQL `timestamp`).
    Timestamp,
    /// An instant (MySQL `TIMESTAMP`, read in UTC; PostgreSQL `timestamptz`).
    TimestampTz,
    Json,
    /// Bytes, written as base64 text.
    Binary,
    Uuid,
    /// A PostgreSQL array (element type as PostgreSQL names it): JSON array.
    Array(String),
}

impl Kind {
    /// Whether a watermark of this kind is a point in time (its overlap a duration).
    pub fn is_time(&self) -> bool {
        matches!(self, Kind::Date | Kind::Timestamp | Kind::TimestampTz)
    }

    /// Whether a watermark of this kind is a whole number (its overlap a count).
    pub fn is_integer(&self) -> bool {
        matches!(self, Kind::Int16 | Kind::Int32 | Kind::Int64 | Kind::UInt64)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// The source's own spelling (`bigint(20) unsigned`, `numeric(12,2)`), for reports.
    pub source_type: String,
    pub nullable: bool,
}

#[derive(Debug, Clone)]
pub struct TableSchema {
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// What one pass reads: the rows whose watermark is at least `since` (all rows when `None`).
#[derive(Debug, Clone)]
pub struct PassQuery<'a> {
    pub table: &'a str,
    pub schema: &'a TableSchema,
    pub filter: Option<&'a str>,
    pub watermark: Option<&'a Column>,
    /// The previous pass's watermark (as the source printed it) and the overlap before it.
    pub since: Option<(&'a str, Overlap)>,
}

/// An open connection to the source.
/// The keys [`Source::keys`] reads: `key`'s columns of `table`, on the rows `filter` selects.
pub struct KeyQuery<'a> {
    pub table: &'a str,
    pub key: &'a [String],
    pub filter: Option<&'a str>,
}

impl KeyQuery<'_> {
    /// `SELECT <each key column as text> FROM <table> [WHERE (filter)]`, the source's quoting
    /// and text cast given as `as_text` and `table`.
    fn select(&self, as_text: impl Fn(&str) -> String, table: String) -> String {
        let cols: Vec<String> = self.key.iter().map(|k| as_text(k)).collect();
        format!(
            "SELECT {} FROM {table}{}",
            cols.join(", "),
            self.filter
                .map(|f| format!(" WHERE ({f})"))
                .unwrap_or_default()
        )
    }
}

/// Where [`Source::keys`] sends its batches of keys (each key: one text per key column).
pub type KeySender = tokio::sync::mpsc::Sender<Vec<Vec<String>>>;

/// Keys per batch sent.
const KEY_BATCH: usize = 10_000;

/// Gathers keys into batches for a [`KeySender`].
pub struct KeyBatches {
    out: KeySender,
    batch: Vec<Vec<String>>,
    pub sent: u64,
}

impl KeyBatches {
    pub fn new(out: KeySender) -> KeyBatches {
        KeyBatches {
            out,
            batch: Vec::with_capacity(KEY_BATCH),
            sent: 0,
        }
    }

    pub async fn push(&mut self, key: Vec<String>) -> Result<()> {
        self.batch.push(key);
        self.sent += 1;
        if self.batch.len() == KEY_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is left; returns how many keys were sent in all.
    pub async fn finish(mut self) -> Result<u64> {
        self.flush().await?;
        Ok(self.sent)
    }

    async fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(KEY_BATCH));
        self.out
            .send(full)
            .await
            .map_err(|_| anyhow::anyhow!("the warehouse stopped taking keys"))
    }
}

/// The newest watermark in a pass's snapshot.
#[derive(Debug, Default)]
pub struct Newest {
    /// As the source prints it; `None`: no rows, or no watermark column.
    pub watermark: Option<String>,
    /// How far it is behind the source's clock, in seconds, for a time watermark (computed by
    /// the source, in its own time zone: no guess about what zone a `DATETIME` is in).
    pub lag_seconds: Option<f64>,
}

pub enum Source {
    #[cfg(feature = "mysql")]
    Mysql(mysql::MysqlSource),
    Postgres(postgres::PgSource),
}

impl Source {
    pub async fn connect(cfg: &SourceConfig) -> Result<Source> {
        if cfg.url.starts_with("mysql://") {
            #[cfg(feature = "mysql")]
            return Ok(Source::Mysql(mysql::MysqlSource::connect(cfg).await?));
            #[cfg(not(feature = "mysql"))]
            bail!(
                "source.url is a MySQL database, and this rin-ship was built without the MySQL \
                 source: build it with `cargo build --release --features mysql`"
            );
        }
        if cfg.url.starts_with("postgres") {
            return Ok(Source::Postgres(postgres::PgSource::connect(cfg).await?));
        }
        bail!("source.url: expected mysql:// or postgres://")
    }

    /// The source's name for logs: host, port, database (never the password).
    pub fn describe(&self) -> String {
        match self {
            #[cfg(feature = "mysql")]
            Source::Mysql(s) => s.describe(),
            Source::Postgres(s) => s.describe(),
        }
    }

    pub async fn schema(&mut self, table: &str) -> Result<TableSchema> {
        let schema = match self {
            #[cfg(feature = "mysql")]
            Source::Mysql(s) => s.schema(table).await?,
            Source::Postgres(s) => s.schema(table).await?,
        };
        if schema.columns.is_empty() {
            bail!(
                "source table {table} not found on {} (or it has no columns the sync user can \
                 read: GRANT SELECT on it)",
                self.describe()
            );
        }
        Ok(schema)
    }

    /// Sends every key of `table` (rows matching `filter`), each column as text, in batches,
    /// in a snapshot of its own; returns how many. For the key reconciliation (`reconcile`).
    pub async fn keys(&mut self, q: &KeyQuery<'_>, out: KeySender) -> Result<u64> {
        match self {
            #[cfg(feature = "mysql")]
            Source::Mysql(s) => s.keys(q, out).await,
            Source::Postgres(s) => s.keys(q, out).await,
        }
    }

    /// The table's row count as the catalog estimates it (for the progress line's ETA).
    pub async fn estimate_rows(&mut self, table: &str) -> Option<u64> {
        match self {
            #[cfg(feature = "mysql")]
            Source::Mysql(s) => s.estimate_rows(table).await,
            Source::Postgres(s) => s.estimate_rows(table).await,
        }
    }

    /// Starts a pass: a consistent snapshot the pass's reads share, and the newest watermark
    /// in it.
    pub async fn begin(&mut self, q: &PassQuery<'_>) -> Result<Newest> {
        match self {
            #[cfg(feature = "mysql")]
            Source::Mysql(s) => s.begin(q).await,
            Source::Postgres(s) => s.begin(q).await,
        }
    }

    /// Streams the pass's rows (in the snapshot [`Source::begin`] opened) into `out`, then
    /// ends the snapshot. Returns the rows read.
    pub async fn stream(&mut self, q: &PassQuery<'_>, out: &mut ObjectWriter<'_>) -> Result<u64> {
        match self {
            #[cfg(feature = "mysql")]
            Source::Mysql(s) => s.stream(q, out).await,
            Source::Postgres(s) => s.stream(q, out).await,
        }
    }
}

/// Writes `s` as a JSON string.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping: the same as the rest of the pipeline's JSON.
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// The `"name":` prefix of each column, escaped once per pass.
pub fn key_prefixes(schema: &TableSchema) -> Vec<Vec<u8>> {
    schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut k = Vec::with_capacity(c.name.len() + 4);
            k.push(if i == 0 { b'{' } else { b',' });
            push_json_str(&mut k, &c.name);
            k.push(b':');
            k
        })
        .collect()
}
