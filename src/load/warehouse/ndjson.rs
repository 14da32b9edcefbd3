//! An object's bytes as NDJSON lines, whatever they are stored as, recognised by their magic
//! bytes: gzip (one or more members), zstd (one or more frames) or plain NDJSON. The
//! PostgreSQL driver streams the lines into COPY as they arrive; the SQLite driver reads them
//! whole. One decoder, so every driver calls the same bytes the same thing.
//!
//! Must never: pass on bytes that a truncated or corrupt stream did not really contain (the
//! object is then a data error, [`Corrupt`]).

use crate::common::codec::{Codec, ZSTD_MAGIC};
use std::io::Write;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

/// The bytes are not what they claim.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Corrupt(pub String);

/// Decompresses an object as its bytes arrive.
pub struct Decoder {
    codec: Option<Stream>,
    /// The first bytes, until there are enough to tell the codec.
    start: Vec<u8>,
}

enum Stream {
    Plain,
    // Boxed: the inflate state is large, and most objects of a load share one codec anyway.
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Zstd {
        decoder: zstd::stream::raw::Decoder<'static>,
        /// Whether the last frame read is complete (zstd says so by a hint of 0).
        frame_done: bool,
    },
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Stream {
    /// The stream the first bytes of an object call for.
    fn of(start: &[u8]) -> Result<Stream, Corrupt> {
        Ok(match Codec::of_bytes(start) {
            Some(Codec::Gzip) => {
                Stream::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
            }
            Some(Codec::Zstd) => Stream::Zstd {
                decoder: zstd::stream::raw::Decoder::new()
                    .map_err(|e| Corrupt(format!("zstd: {e}")))?,
                frame_done: false,
            },
            None => Stream::Plain,
        })
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            codec: None,
            start: Vec::new(),
        }
    }

    /// The NDJSON bytes `chunk` (the next bytes of the object) yields.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Corrupt> {
        if self.codec.is_none() {
            // The magic is at most four bytes; a first read can be shorter.
            self.start.extend_from_slice(chunk);
            if self.start.len() < ZSTD_MAGIC.len() {
                return Ok(Vec::new());
            }
            let start = std::mem::take(&mut self.start);
            self.codec = Some(Stream::of(&start)?);
            return self.decode(&start);
        }
        self.decode(chunk)
    }

    fn decode(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Corrupt> {
        match self.codec.as_mut().expect("told by push") {
            Stream::Plain => Ok(chunk.to_vec()),
            Stream::Gzip(d) => {
                d.write_all(chunk)
                    .map_err(|e| Corrupt(format!("bad gzip data: {e}")))?;
                Ok(std::mem::take(d.get_mut()))
            }
            Stream::Zstd {
                decoder,
                frame_done,
            } => {
                let mut out = Vec::with_capacity(chunk.len() * 4);
                let mut src = InBuffer::around(chunk);
                loop {
                    if out.capacity() - out.len() < 64 << 10 {
                        out.reserve(256 << 10);
                    }
                    let pos = out.len();
                    let mut dst = OutBuffer::around_pos(&mut out, pos);
                    let hint = decoder
                        .run(&mut src, &mut dst)
                        .map_err(|e| Corrupt(format!("bad zstd data: {e}")))?;
                    let full = dst.pos() == dst.capacity();
                    *frame_done = hint == 0;
                    if src.pos() == chunk.len() && !full {
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// The last bytes, once the object ended.
    pub fn finish(mut self) -> Result<Vec<u8>, Corrupt> {
        if self.codec.is_none() {
            // An object shorter than a magic number.
            let start = std::mem::take(&mut self.start);
            self.codec = Some(Stream::of(&start)?);
            let out = self.decode(&start)?;
            return Ok([out, self.finish()?].concat());
        }
        match self.codec.expect("told above") {
            Stream::Plain => Ok(Vec::new()),
            Stream::Gzip(d) => d
                .finish()
                .map_err(|e| Corrupt(format!("truncated gzip data: {e}"))),
            Stream::Zstd { frame_done, .. } if !frame_done => Err(Corrupt(
                "truncated zstd data: the last frame does not end".into(),
            )),
            Stream::Zstd { .. } => Ok(Vec::new()),
        }
    }

    /// A whole object's NDJSON bytes.
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<u8>, Corrupt> {
        let mut d = Decoder::new();
        let mut out = d.push(bytes)?;
        out.extend(d.finish()?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_members_plain_and_broken() {
        let mut gz = Vec::new();
        for part in [&b"{\"a\":1}\n"[..], b"{\"a\":2}\n"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            gz.extend(e.finish().unwrap());
        }
        // Fed in small pieces, two members come out whole.
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for piece in gz.chunks(3) {
            out.extend(d.push(piece).unwrap());
        }
        out.extend(d.finish().unwrap());
        assert_eq!(out, b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(Decoder::decode_all(b"{\"b\":1}\n").unwrap(), b"{\"b\":1}\n");
        let e = Decoder::decode_all(b"\x1f\x8b\x08\x00 this is not gzip").unwrap_err();
        assert!(e.0.contains("gzip"), "{e}");
        let e = Decoder::decode_all(&gz[..gz.len() - 4]).unwrap_err();
        assert!(e.0.starts_with("truncated gzip data"), "{e}");
    }

    #[test]
    fn zstd_frames_fed_in_pieces() {
        let text: Vec<u8> = (0..5000)
            .flat_map(|n| format!("{{\"n\":{n}}}\n").into_bytes())
            .collect();
        let mut zst = zstd::encode_all(&text[..2000], 3).unwrap();
        zst.extend(zstd::encode_all(&text[2000..], 3).unwrap());
        for piece in [1, 3, 4096, zst.len()] {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            for p in zst.chunks(piece) {
                out.extend(d.push(p).unwrap());
            }
            out.extend(d.finish().unwrap());
            assert_eq!(out, text, "pieces of {piece}");
        }
        let e = Decoder::decode_all(&zst[..zst.len() - 10]).unwrap_err();
        assert!(e.0.starts_with("truncated zstd data"), "{e}");
        let mut bad = zst.clone();
        bad[8] ^= 0xff;
        bad[9] ^= 0xff;
        assert!(Decoder::decode_all(&bad).is_err());
        // Shorter than any magic number: plain text.
        assert_eq!(Decoder::decode_all(b"{}\n").unwrap(), b"{}\n");
        assert_eq!(Decoder::decode_all(b"").unwrap(), b"");
    }
}
