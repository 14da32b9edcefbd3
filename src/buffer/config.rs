//! The buffer's settings (`buffer:` in the config file): where chunks live, how many writer
//! threads, when a chunk seals, the disk quota, compression (codec, gzip engine, level), fsync
//! and the dedupe window. Owns their defaults and the checks that concern only them (among them
//! that the build has the gzip engine asked for); it must never default to a weaker guarantee
//! than fsync before ack, nor accept a setting the build cannot honour.

use super::encoder::{Compressor, GzipEngine};
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
    /// What deflates gzip chunks: `zlib` (zlib-rs, the default) or `isal` (Intel ISA-L, levels
    /// 1..=3: several times cheaper, somewhat larger output; needs a build with the `isal`
    /// cargo feature, which links the system libisal). The objects are the same format either
    /// way. Only for `compression: gzip`.
    pub gzip_engine: GzipEngine,
    /// gzip 1..=9 (default 6, gzip's own; with `gzip_engine: isal` 1..=3, default 1, igzip's
    /// own), zstd 1..=19 (default 3, zstd's own).
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
            gzip_engine: GzipEngine::Zlib,
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
        self.compression_level.unwrap_or(match self.compression {
            Codec::Gzip => self.gzip_engine.default_level(),
            Codec::Zstd => Codec::Zstd.default_level(),
        })
    }

    /// What chunks are written with.
    pub fn compressor(&self) -> Compressor {
        Compressor {
            codec: self.compression,
            engine: self.gzip_engine,
            level: self.level(),
        }
    }

    /// Checks what serde cannot; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let engine = self.gzip_engine;
        if engine != GzipEngine::Zlib && self.compression != Codec::Gzip {
            bail!(
                "field `buffer.gzip_engine`: `{}` is a gzip engine, and `buffer.compression` is \
                 `{}`; remove `gzip_engine` or set `compression: gzip`",
                engine.name(),
                self.compression.name()
            );
        }
        if !engine.built() {
            bail!(
                "field `buffer.gzip_engine`: this rin-ship was built without the `{0}` engine; \
                 build with `cargo build --release --features {0}` (it links the system \
                 libisal: `apt-get install libisal-dev`), or use `gzip_engine: zlib`",
                engine.name()
            );
        }
        let (levels, what) = match self.compression {
            Codec::Gzip if engine == GzipEngine::Isal => (engine.levels(), "gzip (isal engine)"),
            codec => (codec.levels(), codec.name()),
        };
        if !levels.contains(&self.level()) {
            let hint = if engine == GzipEngine::Isal {
                "; for other levels use `gzip_engine: zlib` (gzip 1..=9), or `compression: zstd`"
            } else {
                ""
            };
            bail!(
                "field `buffer.compression_level`: {what} levels are {}..={}{hint}",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(yaml: &str) -> Result<BufferConfig> {
        let c: BufferConfig = serde_norway::from_str(yaml)?;
        c.validate()?;
        Ok(c)
    }

    fn err(yaml: &str) -> String {
        format!("{:#}", checked(yaml).unwrap_err())
    }

    #[test]
    fn gzip_engines_and_their_levels() {
        let c = checked("compression: gzip\n").unwrap();
        assert_eq!(c.compressor(), Compressor::new(Codec::Gzip, 6));
        assert!(err("gzip_engine: igzip\n").contains("unknown variant"));
        let e = err("compression: zstd\ngzip_engine: isal\n");
        assert!(
            e.contains("buffer.gzip_engine") && e.contains("compression: gzip"),
            "{e}"
        );
        if cfg!(feature = "isal") {
            let c = checked("gzip_engine: isal\n").unwrap();
            assert_eq!((c.compressor().engine, c.level()), (GzipEngine::Isal, 1));
            let c = checked("gzip_engine: isal\ncompression_level: 3\n").unwrap();
            assert_eq!(c.level(), 3);
            for level in [0, 4, 6] {
                let e = err(&format!("gzip_engine: isal\ncompression_level: {level}\n"));
                assert!(
                    e.contains("buffer.compression_level")
                        && e.contains("1..=3")
                        && e.contains("gzip_engine: zlib"),
                    "{e}"
                );
            }
        } else {
            // Refused at load, naming the cargo feature to build with: never a panic later.
            let e = err("gzip_engine: isal\n");
            assert!(
                e.contains("buffer.gzip_engine")
                    && e.contains("cargo build --release --features isal"),
                "{e}"
            );
        }
    }
}
