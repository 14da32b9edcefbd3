//! The compression of an object's bytes, as every stage that touches them names it: the buffer
//! writes chunks in it (`buffer.compression`), the store labels uploads with it, the loader
//! reads objects by it (the Redshift COPY's `GZIP`/`ZSTD`, the decoder of the PostgreSQL and
//! SQLite drivers). gzip is one member (what `gzip -t` and Redshift accept); zstd is one frame.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[default]
    Gzip,
    Zstd,
}

impl Codec {
    /// The end of an object key (and of a chunk file's name) in this codec.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::Gzip => ".json.gz",
            Codec::Zstd => ".json.zst",
        }
    }

    /// The level when none is configured: gzip's own default, zstd's.
    pub fn default_level(self) -> i32 {
        match self {
            Codec::Gzip => 6,
            Codec::Zstd => 3,
        }
    }

    /// The levels a config may ask for.
    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Codec::Gzip => 1..=9,
            Codec::Zstd => 1..=19,
        }
    }

    /// The `Content-Type` of an upload (only S3 stores say one).
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Gzip => "application/gzip",
            Codec::Zstd => "application/zstd",
        }
    }

    /// The keyword of Redshift's COPY for it.
    pub fn copy_keyword(self) -> &'static str {
        match self {
            Codec::Gzip => "GZIP",
            Codec::Zstd => "ZSTD",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// The codec an object key names by its extension (`.gz`, `.gzip`, `.zst`, `.zstd`);
    /// `None` for any other key.
    pub fn of_key(key: &str) -> Option<Codec> {
        let lower = key.to_ascii_lowercase();
        if lower.ends_with(".gz") || lower.ends_with(".gzip") {
            Some(Codec::Gzip)
        } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
            Some(Codec::Zstd)
        } else {
            None
        }
    }

    /// The codec bytes start with (their magic number); `None`: not compressed by either.
    pub fn of_bytes(bytes: &[u8]) -> Option<Codec> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Some(Codec::Gzip)
        } else if bytes.starts_with(&ZSTD_MAGIC) {
            Some(Codec::Zstd)
        } else {
            None
        }
    }
}

/// The first four bytes of a zstd frame.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_magic() {
        assert_eq!(Codec::of_key("logs/a/x.json.gz"), Some(Codec::Gzip));
        assert_eq!(Codec::of_key("logs/a/X.JSON.ZST"), Some(Codec::Zstd));
        assert_eq!(Codec::of_key("logs/a/x.json"), None);
        assert_eq!(Codec::of_bytes(&[0x1f, 0x8b, 8]), Some(Codec::Gzip));
        assert_eq!(
            Codec::of_bytes(&zstd::encode_all(&b"{}"[..], 1).unwrap()),
            Some(Codec::Zstd)
        );
        assert_eq!(Codec::of_bytes(b"{\"a\":1}"), None);
        assert!(Codec::Zstd.levels().contains(&Codec::Zstd.default_level()));
        assert!(Codec::Gzip.levels().contains(&Codec::Gzip.default_level()));
    }
}
