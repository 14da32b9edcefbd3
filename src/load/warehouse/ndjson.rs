//! An object's bytes as NDJSON lines, whatever they are stored as: gzip (one or more members,
//! as the buffer writes them; recognised by its magic bytes) or plain NDJSON. The PostgreSQL
//! driver streams the lines into COPY as they arrive; the SQLite driver reads them whole. One
//! decoder, so every driver calls the same bytes the same thing.
//!
//! Must never: pass on bytes that a truncated or corrupt stream did not really contain (the
//! object is then a data error, [`Corrupt`]).

use std::io::Write;

/// The bytes are not what they claim.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Corrupt(pub String);

/// Decompresses an object as its bytes arrive.
pub struct Decoder {
    gzip: Option<flate2::write::MultiGzDecoder<Vec<u8>>>,
    started: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            gzip: None,
            started: false,
        }
    }

    /// The NDJSON bytes `chunk` (the next bytes of the object) yields.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Corrupt> {
        if !self.started && !chunk.is_empty() {
            self.started = true;
            if chunk.starts_with(&[0x1f, 0x8b]) {
                self.gzip = Some(flate2::write::MultiGzDecoder::new(Vec::new()));
            }
        }
        match self.gzip.as_mut() {
            Some(d) => {
                d.write_all(chunk)
                    .map_err(|e| Corrupt(format!("bad gzip data: {e}")))?;
                Ok(std::mem::take(d.get_mut()))
            }
            None => Ok(chunk.to_vec()),
        }
    }

    /// The last bytes, once the object ended.
    pub fn finish(self) -> Result<Vec<u8>, Corrupt> {
        match self.gzip {
            Some(d) => d
                .finish()
                .map_err(|e| Corrupt(format!("truncated gzip data: {e}"))),
            None => Ok(Vec::new()),
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
}
