//! The objects of one sync pass: rows (JSON lines) compressed into a work file, each file put
//! into the store under a deterministic key once it holds `rows_per_object` rows:
//! `<prefix><target>/pass=<pass>/<seq>.json.gz` (or `.json.zst`). The same pass run again (after
//! a crash before its watermark moved) writes the same keys again, so a store never collects
//! the leftovers of an interrupted pass beside its redo.
//!
//! It also shows the read's progress: a bar on a terminal (rows of about how many, bytes,
//! objects, ETA; its last state stays on screen), else a log line every few seconds.
//!
//! Must never: report an object as written before the store confirmed it; keep more than one
//! object's work file on disk.

use super::config::Compression;
use crate::common::codec::Codec;
use crate::store::{Store, Stored};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::info;

/// One object the store confirmed.
#[derive(Debug, Clone)]
pub struct Written {
    pub stored: Stored,
    pub size: u64,
    pub rows: u64,
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<BufWriter<std::fs::File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<std::fs::File>>),
}

impl Encoder {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Gzip(e) => e,
            Encoder::Zstd(e) => e,
        }
    }

    fn finish(self) -> std::io::Result<()> {
        let mut file = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Zstd(e) => e.finish()?,
        };
        file.flush()
    }
}

struct Current {
    encoder: Encoder,
    rows: u64,
}

pub struct ObjectWriter<'a> {
    store: &'a Store,
    /// `<store prefix><prefix><target>/pass=<n>/`.
    key_base: String,
    compression: Compression,
    rows_per_object: u64,
    work_file: PathBuf,
    current: Option<Current>,
    line: Vec<u8>,
    pub written: Vec<Written>,
    /// Uncompressed bytes of every row so far.
    pub raw_bytes: u64,
    /// Rows so far, and the progress line's clock.
    pub rows: u64,
    progress: Progress,
}

/// The read's progress: a bar on a terminal, else a log line every few seconds (rows, bytes,
/// rate, ETA when the source gave an estimate of the table's rows); a line when it ends.
struct Progress {
    table: String,
    estimate: Option<u64>,
    started: Instant,
    last: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn start(table: &str, estimate: Option<u64>) -> Progress {
        info!(table, of_about = estimate, "sync: reading");
        let bar = crate::telemetry::progress::terminal_bar().inspect(|bar| {
            let template = match estimate {
                Some(rows) => {
                    bar.set_length(rows.max(1));
                    "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/~{human_len} rows, {msg}, ETA {eta}"
                }
                None => "{spinner} {prefix} [{elapsed_precise}] {human_pos} rows, {msg}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(table.to_string());
            bar.set_message("0 MiB, 0 objects");
            bar.enable_steady_tick(Duration::from_millis(200));
        });
        let now = Instant::now();
        Progress {
            table: table.to_string(),
            estimate,
            started: now,
            last: now,
            bar,
        }
    }
}

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl<'a> ObjectWriter<'a> {
    pub fn new(
        store: &'a Store,
        key_base: String,
        compression: Compression,
        rows_per_object: u64,
        work_file: PathBuf,
        table: &str,
        estimate: Option<u64>,
    ) -> ObjectWriter<'a> {
        ObjectWriter {
            rows: 0,
            progress: Progress::start(table, estimate),
            store,
            key_base,
            compression,
            rows_per_object,
            work_file,
            current: None,
            line: Vec::with_capacity(4096),
            written: Vec::new(),
            raw_bytes: 0,
        }
    }

    /// The reusable buffer a source builds the next row in (cleared).
    pub fn line(&mut self) -> &mut Vec<u8> {
        self.line.clear();
        &mut self.line
    }

    /// Appends the row in [`Self::line`]; puts the object once it is full.
    pub async fn push_line(&mut self) -> Result<()> {
        if self.current.is_none() {
            self.current = Some(self.open()?);
        }
        let cur = self.current.as_mut().expect("opened above");
        self.line.push(b'\n');
        cur.encoder
            .writer()
            .write_all(&self.line)
            .with_context(|| format!("writing {}", self.work_file.display()))?;
        self.raw_bytes += self.line.len() as u64;
        cur.rows += 1;
        let full = cur.rows >= self.rows_per_object;
        self.rows += 1;
        if self.rows.is_multiple_of(4096) {
            if let Some(bar) = &self.progress.bar {
                bar.set_position(self.rows);
                bar.set_message(self.progress_message());
            } else if self.progress.last.elapsed() >= PROGRESS_EVERY {
                self.report();
            }
        }
        if full {
            self.put_current().await?;
        }
        Ok(())
    }

    /// Puts the last, partly filled object. Returns every object of the pass.
    pub async fn finish(mut self) -> Result<Vec<Written>> {
        self.put_current().await?;
        let s = self.progress.started.elapsed().as_secs_f64();
        if let Some(bar) = &self.progress.bar {
            // The estimate was only that: the bar ends full, at the rows read.
            bar.set_length(self.rows.max(1));
            bar.set_position(self.rows);
            bar.set_message(self.progress_message());
            bar.finish();
        }
        info!(
            table = %self.progress.table,
            rows = self.rows,
            objects = self.written.len(),
            seconds = format!("{s:.1}"),
            rows_per_second = (self.rows as f64 / s.max(1e-3)) as u64,
            "sync: read"
        );
        Ok(std::mem::take(&mut self.written))
    }

    fn progress_message(&self) -> String {
        format!(
            "{} MiB, {} object{}",
            self.raw_bytes >> 20,
            self.written.len(),
            if self.written.len() == 1 { "" } else { "s" }
        )
    }

    fn report(&mut self) {
        let p = &mut self.progress;
        p.last = Instant::now();
        let secs = p.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.rows as f64 / secs;
        let eta = p
            .estimate
            .filter(|&e| e > self.rows && rate > 0.0)
            .map(|e| {
                humantime::format_duration(Duration::from_secs(
                    ((e - self.rows) as f64 / rate) as u64,
                ))
                .to_string()
            });
        info!(
            table = %p.table,
            rows = self.rows,
            of_about = p.estimate,
            objects = self.written.len(),
            mib = self.raw_bytes >> 20,
            rows_per_second = rate as u64,
            eta = eta.as_deref().unwrap_or("?"),
            "sync: reading"
        );
    }

    fn codec(&self) -> Codec {
        match self.compression {
            Compression::Gzip => Codec::Gzip,
            Compression::Zstd => Codec::Zstd,
        }
    }

    fn open(&self) -> Result<Current> {
        let file = std::fs::File::create(&self.work_file)
            .with_context(|| format!("cannot create {}", self.work_file.display()))?;
        let file = BufWriter::with_capacity(1 << 20, file);
        let encoder = match self.compression {
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::new(Codec::Gzip.default_level() as u32),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(
                file,
                Codec::Zstd.default_level(),
            )?),
        };
        Ok(Current { encoder, rows: 0 })
    }

    async fn put_current(&mut self) -> Result<()> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        cur.encoder
            .finish()
            .with_context(|| format!("writing {}", self.work_file.display()))?;
        let key = format!(
            "{}{:06}{}",
            self.key_base,
            self.written.len(),
            self.codec().extension()
        );
        let size = std::fs::metadata(&self.work_file)?.len();
        let stored = self
            .store
            .put(&key, &self.work_file, size, self.codec())
            .await
            .with_context(|| format!("putting {key} into {}", self.store.describe()))?;
        self.written.push(Written {
            stored,
            size,
            rows: cur.rows,
        });
        Ok(())
    }
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.work_file);
    }
}
