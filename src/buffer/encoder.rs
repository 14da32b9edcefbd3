//! The chunk's compressor, in either codec, written so that every commit is a point where the
//! bytes so far can be closed into a whole object: gzip's sync flush ends a deflate block on a
//! byte boundary, zstd's flush ends a block. Closing at such a point is then a fixed tail, from
//! what the journal recorded: gzip's empty final block and trailer (CRC-32 and length), zstd's
//! empty last block (frames are written without a checksum or a content size, so nothing else
//! is needed). The same tail closes a chunk at its seal and at recovery after a crash.
//!
//! Must never: report a flush complete before every byte given so far is in the output.

use crate::common::codec::Codec;
use flate2::{Compress, Compression, FlushCompress};
use std::io;
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

pub enum Encoder {
    Gzip {
        deflate: Compress,
        crc: crc32fast::Hasher,
    },
    Zstd(zstd::stream::raw::Encoder<'static>),
}

impl Encoder {
    pub fn new(codec: Codec, level: i32) -> io::Result<Encoder> {
        Ok(match codec {
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
            Encoder::Zstd(_) => 0,
        }
    }
}

fn reserve(out: &mut Vec<u8>) {
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

    /// Closing at any commit gives an object that decodes to exactly what was committed, in
    /// both codecs, as the gzip and zstd tools read it.
    #[test]
    fn every_commit_can_be_closed() {
        for codec in [Codec::Gzip, Codec::Zstd] {
            let mut e = Encoder::new(codec, codec.default_level()).unwrap();
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
                    let decoded = match codec {
                        Codec::Gzip => {
                            let mut d = flate2::read::GzDecoder::new(&whole[..]);
                            let mut v = Vec::new();
                            std::io::Read::read_to_end(&mut d, &mut v).unwrap();
                            v
                        }
                        Codec::Zstd => zstd::decode_all(&whole[..]).unwrap(),
                    };
                    assert_eq!(decoded, text, "{codec:?} after line {n}");
                }
            }
        }
    }
}
