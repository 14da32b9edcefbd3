//! The chunk's compressor, in either codec, written so that every commit is a point where the
//! bytes so far can be closed into a whole object: gzip's sync flush ends a deflate block on a
//! byte boundary, zstd's flush ends a block. Closing at such a point is then a fixed tail, from
//! what the journal recorded: gzip's empty final block and trailer (CRC-32 and length), zstd's
//! empty last block (frames are written without a checksum or a content size, so nothing else
//! is needed). The same tail closes a chunk at its seal and at recovery after a crash.
//!
//! gzip has two engines (`buffer.gzip_engine`): zlib-rs through flate2 (always built) and
//! ISA-L ([`super::isal`], cargo feature `isal`). Both write raw deflate between the same
//! header and tail, so nothing after the encoder (journal, seal, recovery, upload, loaders)
//! knows or cares which one wrote a chunk.
//!
//! Must never: report a flush complete before every byte given so far is in the output.

use crate::common::codec::Codec;
use flate2::{Compress, Compression, FlushCompress};
use serde::Deserialize;
use std::io;
use std::ops::RangeInclusive;
use zstd::stream::raw::{CParameter, InBuffer, Operation, OutBuffer};

/// The gzip member header: deflate, no name, no time, unknown OS.
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
/// An empty final deflate block with fixed Huffman codes: BFINAL=1, BTYPE=01, end-of-block.
const GZIP_FINAL_BLOCK: [u8; 2] = [0x03, 0x00];
/// An empty last zstd block: Last_Block=1, Block_Type=Raw, Block_Size=0.
const ZSTD_LAST_BLOCK: [u8; 3] = [0x01, 0x00, 0x00];
/// zstd's window: 1 MiB (window log 20) keeps a context near 2 MB at the fast levels, so many
/// open chunks (one per tag) stay affordable; logs repeat within far less.
const ZSTD_WINDOW_LOG: u32 = 20;

/// The deflate implementation that writes gzip chunks (`buffer.gzip_engine`). The output is
/// the same format either way (one gzip member); only CPU and size differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GzipEngine {
    /// zlib-rs (flate2): gzip's levels 1..=9, default 6.
    #[default]
    Zlib,
    /// Intel ISA-L (igzip): levels 1..=3, default 1 (igzip's own); needs the `isal` feature.
    Isal,
}

impl GzipEngine {
    pub fn name(self) -> &'static str {
        match self {
            GzipEngine::Zlib => "zlib",
            GzipEngine::Isal => "isal",
        }
    }

    /// Whether this build has the engine (`isal` needs `--features isal`).
    pub fn built(self) -> bool {
        match self {
            GzipEngine::Zlib => true,
            GzipEngine::Isal => cfg!(feature = "isal"),
        }
    }

    /// The levels a config may ask for. ISA-L's level 0 (a small hash, weaker than zlib's 1)
    /// is left out: levels 1..=3 cover what it is for.
    pub fn levels(self) -> RangeInclusive<i32> {
        match self {
            GzipEngine::Zlib => Codec::Gzip.levels(),
            GzipEngine::Isal => 1..=3,
        }
    }

    pub fn default_level(self) -> i32 {
        match self {
            GzipEngine::Zlib => Codec::Gzip.default_level(),
            GzipEngine::Isal => 1,
        }
    }
}

/// What chunks are written with: the codec, its gzip engine (ignored for zstd) and the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressor {
    pub codec: Codec,
    pub engine: GzipEngine,
    pub level: i32,
}

impl Compressor {
    /// zlib-rs for gzip.
    #[cfg(test)]
    pub fn new(codec: Codec, level: i32) -> Compressor {
        Compressor {
            codec,
            engine: GzipEngine::Zlib,
            level,
        }
    }
}

pub enum Encoder {
    Gzip {
        deflate: Compress,
        crc: crc32fast::Hasher,
    },
    /// ISA-L's raw deflate with the same CRC-32 as `Gzip`.
    #[cfg(feature = "isal")]
    GzipIsal {
        deflate: super::isal::IsalDeflate,
        crc: crc32fast::Hasher,
    },
    Zstd(zstd::stream::raw::Encoder<'static>),
}

impl Encoder {
    pub fn new(c: Compressor) -> io::Result<Encoder> {
        let level = c.level;
        Ok(match c.codec {
            Codec::Gzip if c.engine == GzipEngine::Isal => Self::isal(level)?,
            Codec::Gzip => Encoder::Gzip {
                deflate: Compress::new(Compression::new(level as u32), false),
                crc: crc32fast::Hasher::new(),
            },
            Codec::Zstd => {
                let mut e = zstd::stream::raw::Encoder::new(level)?;
                e.set_parameter(CParameter::ChecksumFlag(false))?;
                e.set_parameter(CParameter::ContentSizeFlag(false))?;
                e.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
                Encoder::Zstd(e)
            }
        })
    }

    #[cfg(feature = "isal")]
    fn isal(level: i32) -> io::Result<Encoder> {
        Ok(Encoder::GzipIsal {
            deflate: super::isal::IsalDeflate::new(level)?,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Config validation refuses `gzip_engine: isal` in a build without it; this is the
    /// backstop.
    #[cfg(not(feature = "isal"))]
    fn isal(_level: i32) -> io::Result<Encoder> {
        Err(io::Error::other(
            "gzip engine `isal` is not in this build (cargo build --release --features isal)",
        ))
    }

    /// What a chunk file starts with before any data (zstd's frame header comes with the
    /// first flush).
    pub fn header(codec: Codec) -> &'static [u8] {
        match codec {
            Codec::Gzip => &GZIP_HEADER,
            Codec::Zstd => &[],
        }
    }

    /// What closes a chunk at a commit with `crc` and `bytes` (uncompressed) so far.
    pub fn tail(codec: Codec, crc: u32, bytes: u64) -> Vec<u8> {
        match codec {
            Codec::Gzip => {
                let mut tail = Vec::with_capacity(10);
                tail.extend_from_slice(&GZIP_FINAL_BLOCK);
                tail.extend_from_slice(&crc.to_le_bytes());
                tail.extend_from_slice(&(bytes as u32).to_le_bytes());
                tail
            }
            Codec::Zstd => ZSTD_LAST_BLOCK.to_vec(),
        }
    }

    /// The length of [`Encoder::tail`].
    pub fn tail_len(codec: Codec) -> u64 {
        match codec {
            Codec::Gzip => (GZIP_FINAL_BLOCK.len() + 8) as u64,
            Codec::Zstd => ZSTD_LAST_BLOCK.len() as u64,
        }
    }

    /// Compresses `input` into `out`, growing it as needed. Not a durable point yet.
    pub fn append(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Encoder::Gzip { deflate: d, crc } => {
                crc.update(input);
                deflate(d, input, out, FlushCompress::None)
            }
            #[cfg(feature = "isal")]
            Encoder::GzipIsal { deflate, crc } => {
                crc.update(input);
                deflate.append(input, out)
            }
            Encoder::Zstd(e) => {
                let mut src = InBuffer::around(input);
                while src.pos() < input.len() {
                    reserve(out);
                    let pos = out.len();
                    let mut dst = OutBuffer::around_pos(out, pos);
                    e.run(&mut src, &mut dst)?;
                }
                Ok(())
            }
        }
    }

    /// Ends the current block, so that everything appended so far is in `out` and the bytes
    /// up to here can be closed with [`Encoder::tail`].
    pub fn flush(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Encoder::Gzip { deflate: d, .. } => deflate(d, &[], out, FlushCompress::Sync),
            #[cfg(feature = "isal")]
            Encoder::GzipIsal { deflate, .. } => deflate.flush(out),
            Encoder::Zstd(e) => loop {
                reserve(out);
                let pos = out.len();
                let mut dst = OutBuffer::around_pos(out, pos);
                if e.flush(&mut dst)? == 0 {
                    return Ok(());
                }
            },
        }
    }

    /// The CRC-32 of everything appended (gzip's trailer needs it; zstd frames carry none).
    pub fn crc(&self) -> u32 {
        match self {
            Encoder::Gzip { crc, .. } => crc.clone().finalize(),
            #[cfg(feature = "isal")]
            Encoder::GzipIsal { crc, .. } => crc.clone().finalize(),
            Encoder::Zstd(_) => 0,
        }
    }
}

/// Keeps at least 32 KiB free at the end of `out`.
pub(super) fn reserve(out: &mut Vec<u8>) {
    if out.capacity() - out.len() < 32 << 10 {
        out.reserve(256 << 10);
    }
}

/// Compresses `input` into `out` (growing it as needed) with the given flush mode.
fn deflate(
    c: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> io::Result<()> {
    let flushing = !matches!(flush, FlushCompress::None);
    loop {
        reserve(out);
        let before = c.total_in();
        c.compress_vec(input, out, flush)
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        input = &input[(c.total_in() - before) as usize..];
        // A flush is complete once the compressor stops filling the output buffer.
        if input.is_empty() && (!flushing || out.len() < out.capacity()) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine and codec the build has, at its default level, and ISA-L at each level.
    fn compressors() -> Vec<Compressor> {
        let mut all = vec![
            Compressor::new(Codec::Gzip, Codec::Gzip.default_level()),
            Compressor::new(Codec::Zstd, Codec::Zstd.default_level()),
        ];
        if GzipEngine::Isal.built() {
            all.extend(GzipEngine::Isal.levels().map(|level| Compressor {
                codec: Codec::Gzip,
                engine: GzipEngine::Isal,
                level,
            }));
        }
        all
    }

    /// The object's bytes decoded as the gzip and zstd tools read them (flate2's `GzDecoder`
    /// reads exactly one member and checks its CRC-32 and length).
    fn decode(codec: Codec, whole: &[u8]) -> Vec<u8> {
        match codec {
            Codec::Gzip => {
                let mut d = flate2::read::GzDecoder::new(whole);
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut d, &mut v).unwrap();
                v
            }
            Codec::Zstd => zstd::decode_all(whole).unwrap(),
        }
    }

    /// Closing at any commit gives an object that decodes to exactly what was committed, in
    /// both codecs and every gzip engine, as the gzip and zstd tools read it.
    #[test]
    fn every_commit_can_be_closed() {
        for c in compressors() {
            let codec = c.codec;
            let mut e = Encoder::new(c).unwrap();
            let mut out = Encoder::header(codec).to_vec();
            let mut text = Vec::new();
            let mut bytes = 0u64;
            for n in 0..50 {
                let line = format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(n * 37));
                e.append(line.as_bytes(), &mut out).unwrap();
                text.extend_from_slice(line.as_bytes());
                bytes += line.len() as u64;
                if n % 7 == 3 {
                    e.flush(&mut out).unwrap();
                    let mut whole = out.clone();
                    whole.extend(Encoder::tail(codec, e.crc(), bytes));
                    assert_eq!(decode(codec, &whole), text, "{c:?} after line {n}");
                }
            }
        }
    }

    /// Log-like lines: repetitive keys, varying values, a few MB, so the engines' internal
    /// buffers (ISA-L's token buffer, zlib's window) fill and wrap between commits.
    fn log_lines(from: usize, count: usize) -> Vec<u8> {
        let mut text = Vec::new();
        for i in from..from + count {
            let x = i.wrapping_mul(2654435761) % 100_000;
            text.extend_from_slice(
                format!(
                    "{{\"time\":\"2026-12-01T13:{:02}:{:02}.{:06}Z\",\"method\":\"GET\",\"path\":\"/api/v1/items/{x}\",\"status\":{},\"bytes\":{},\"ua\":\"curl/8.{}\",\"request_id\":\"{:016x}\"}}\n",
                    i / 60 % 60,
                    i % 60,
                    x,
                    [200, 200, 200, 404, 500][i % 5],
                    x * 7 % 65536,
                    i % 13,
                    x as u64 * 0x9e37_79b9
                )
                .as_bytes(),
            );
        }
        text
    }

    /// A chunk cut back to an earlier commit (as recovery does: later blocks were written but
    /// never committed) and closed with that commit's tail decodes to exactly the bytes committed
    /// by then, at every commit point; appends of every size, and flushes with nothing new.
    #[test]
    fn cut_back_to_any_commit_decodes_to_what_it_committed() {
        for c in compressors() {
            let codec = c.codec;
            let mut e = Encoder::new(c).unwrap();
            let mut out = Encoder::header(codec).to_vec();
            // A flush before any data (a chunk never commits one: recovery removes a chunk with
            // no commit, see `chunk::recover`), and one right after another, must not break the
            // stream.
            e.flush(&mut out).unwrap();
            let mut commits = Vec::new();
            let mut text = Vec::new();
            let mut line = 0;
            for (round, count) in [1usize, 3, 200, 5000, 40, 20000, 1, 9000]
                .iter()
                .enumerate()
            {
                let lines = log_lines(line, *count);
                line += count;
                // In one piece, or in 64 KiB writes, or line by line.
                match round % 3 {
                    0 => e.append(&lines, &mut out).unwrap(),
                    1 => lines
                        .chunks(64 << 10)
                        .for_each(|p| e.append(p, &mut out).unwrap()),
                    _ => lines
                        .split_inclusive(|&b| b == b'\n')
                        .for_each(|l| e.append(l, &mut out).unwrap()),
                }
                text.extend_from_slice(&lines);
                e.flush(&mut out).unwrap();
                if round == 4 {
                    e.flush(&mut out).unwrap();
                }
                commits.push((out.len(), e.crc(), text.len()));
            }
            assert!(text.len() > 5 << 20, "{}", text.len());
            // Appended but never committed: what a crash leaves past the last commit.
            e.append(&log_lines(line, 3000), &mut out).unwrap();
            e.flush(&mut out).unwrap();
            for &(offset, crc, len) in &commits {
                let mut whole = out[..offset].to_vec();
                whole.extend(Encoder::tail(codec, crc, len as u64));
                let decoded = decode(codec, &whole);
                assert!(
                    decoded == text[..len],
                    "{c:?} cut at {offset} ({len} bytes)"
                );
            }
            let (offset, _, len) = commits.last().unwrap();
            eprintln!("{c:?}: {len} bytes -> {offset}");
        }
    }

    #[test]
    fn engines_and_levels() {
        assert!(GzipEngine::Zlib.built());
        assert_eq!(GzipEngine::Isal.built(), cfg!(feature = "isal"));
        for engine in [GzipEngine::Zlib, GzipEngine::Isal] {
            assert!(engine.levels().contains(&engine.default_level()));
        }
        let isal = Compressor {
            codec: Codec::Gzip,
            engine: GzipEngine::Isal,
            level: 1,
        };
        let built = Encoder::new(isal);
        assert_eq!(built.is_ok(), GzipEngine::Isal.built());
        if let Err(e) = built {
            assert!(e.to_string().contains("--features isal"), "{e}");
        }
        // zstd has one engine: the gzip engine setting does not touch it.
        let zstd = Compressor {
            codec: Codec::Zstd,
            engine: GzipEngine::Isal,
            level: 3,
        };
        assert!(matches!(Encoder::new(zstd).unwrap(), Encoder::Zstd(_)));
    }
}
