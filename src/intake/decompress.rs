//! Decompression of client payloads, shared by the forward and HTTP intakes. Every codec is
//! read through a cap: more than `cap` decompressed bytes is refused before they are all
//! produced, so a small bomb cannot exhaust memory. It must never hand back more than `cap`
//! bytes, whatever the codec.

use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// One or several concatenated gzip members.
    Gzip,
    /// zlib-wrapped deflate (RFC 9110's "deflate"), or raw deflate as some clients send it.
    Deflate,
    /// One or several zstd frames.
    Zstd,
    /// Snappy, framed (stream identifier first) or raw block format.
    Snappy,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Deflate => "deflate",
            Codec::Zstd => "zstd",
            Codec::Snappy => "snappy",
        }
    }
}

#[derive(Debug)]
pub enum DecompressError {
    /// More than the cap.
    TooLarge,
    /// Not valid data for the codec.
    Corrupt(String),
}

pub fn decompress_capped(
    codec: Codec,
    data: &[u8],
    cap: usize,
) -> Result<Vec<u8>, DecompressError> {
    let read_capped = |reader: &mut dyn Read| -> Result<Vec<u8>, DecompressError> {
        let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(cap).min(64 << 20));
        reader
            .take(cap as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
        if out.len() > cap {
            return Err(DecompressError::TooLarge);
        }
        Ok(out)
    };
    match codec {
        Codec::Gzip => read_capped(&mut flate2::read::MultiGzDecoder::new(data)),
        Codec::Deflate => {
            let zlib = data.len() >= 2
                && data[0] & 0x0f == 8
                && (u16::from(data[0]) << 8 | u16::from(data[1])) % 31 == 0;
            if zlib {
                read_capped(&mut flate2::read::ZlibDecoder::new(data))
            } else {
                read_capped(&mut flate2::read::DeflateDecoder::new(data))
            }
        }
        Codec::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
            read_capped(&mut decoder)
        }
        Codec::Snappy => {
            const STREAM_ID: &[u8] = b"\xff\x06\x00\x00sNaPpY";
            if data.starts_with(STREAM_ID) {
                return read_capped(&mut snap::read::FrameDecoder::new(data));
            }
            // Raw (block) snappy declares its length up front.
            let len = snap::raw::decompress_len(data)
                .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
            if len > cap {
                return Err(DecompressError::TooLarge);
            }
            snap::raw::Decoder::new()
                .decompress_vec(data)
                .map_err(|e| DecompressError::Corrupt(e.to_string()))
        }
    }
}
