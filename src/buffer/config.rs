//! The buffer's settings (`buffer:` in the config file): where chunks live, how many writer
//! threads, when a chunk seals, the disk quota, compression, fsync and the dedupe window.
//! Owns their defaults and the checks that concern only them; it must never default to a
//! weaker guarantee than fsync before ack.

use crate::common::codec::Codec;
use crate::common::units::{ByteSize, Span};
use anyhow::{Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Where chunks live. Empty: `<data_dir>/buffer`.
    pub dir: PathBuf,
    /// Open chunks (compressor threads) per target. 0: one per CPU core.
    pub shards: usize,
    /// Seal a chunk once it holds this many uncompressed NDJSON bytes.
    pub seal_bytes: ByteSize,
    /// Seal a chunk this long after its first event, however small.
    pub seal_age: Span,
    /// Disk quota for the buffer; at the quota intake stops reading and acking.
    pub quota: ByteSize,
    /// How chunks (and so objects) are compressed: `gzip` (one member, `.json.gz`) or `zstd`
    /// (one frame, `.json.zst`; several times cheaper for the same size, and Redshift's COPY
    /// reads it with `ZSTD`).
    pub compression: Codec,
    /// gzip 1..=9 (default 6, gzip's own), zstd 1..=19 (default 3, zstd's own).
    pub compression_level: Option<i32>,
    /// fsync before acking. Turning this off trades the ack guarantee for speed.
    pub fsync: bool,
    /// How long a forward `chunk` id is remembered, so a client's resend of a chunk whose ack
    /// it missed is acked again instead of stored twice.
    pub dedupe_window: Span,
    /// Open chunks one writer thread keeps (one per tag when the key uses `{tag}`; each holds
    /// a compressor, about 300 KB). At the cap the oldest open chunk is sealed early, so many
    /// distinct tags cost more, smaller objects instead of unbounded memory.
    pub max_open_chunks: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            dir: PathBuf::new(),
            shards: 0,
            seal_bytes: ByteSize(64 << 20),
            seal_age: Span(Duration::from_secs(60)),
            quota: ByteSize(2 << 30),
            compression: Codec::Gzip,
            compression_level: None,
            fsync: true,
            dedupe_window: Span(Duration::from_secs(600)),
            max_open_chunks: 32,
        }
    }
}

impl BufferConfig {
    /// Resolves the "empty means default" fields: the folder under `data_dir`, one shard per
    /// CPU core.
    pub fn fill_defaults(&mut self, data_dir: &Path) {
        if self.dir.as_os_str().is_empty() {
            self.dir = data_dir.join("buffer");
        }
        if self.shards == 0 {
            self.shards = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
    }

    /// The compression level chunks are written at.
    pub fn level(&self) -> i32 {
        self.compression_level
            .unwrap_or(self.compression.default_level())
    }

    /// Checks what serde cannot; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let levels = self.compression.levels();
        if !levels.contains(&self.level()) {
            bail!(
                "field `buffer.compression_level`: {} levels are {}..={}",
                self.compression.name(),
                levels.start(),
                levels.end()
            );
        }
        if self.shards > 256 {
            bail!("field `buffer.shards`: at most 256");
        }
        if self.seal_bytes.0 < 1024 {
            bail!("field `buffer.seal_bytes`: at least 1KiB");
        }
        Ok(())
    }
}
