//! A borrowing msgpack reader over byte slices: the type table comes from `rmp::Marker` (the
//! hot readers match msgpack's marker byte ranges directly, which is cheaper), the rest is
//! slicing, because the hot path wants to borrow strings and skip values without
//! copying or allocating. Skipping is iterative (a count of pending items, not recursion), so
//! no input can overflow the stack, and every declared length is checked against the bytes
//! actually present before anything is allocated. It must never panic, whatever the bytes.

pub use crate::common::time::EventTime;
use rmp::Marker;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    /// The value continues past the end of the input.
    #[error("truncated msgpack value")]
    Truncated,
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DecodeError>;

pub fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(DecodeError::Invalid(msg.into()))
}

/// What one element's header says: how many header bytes, how many payload bytes follow,
/// and how many child values follow (arrays: n, maps: 2n).
struct Header {
    header_len: usize,
    payload_len: usize,
    children: u64,
}

fn be(buf: &[u8], at: usize, n: usize) -> Result<u64> {
    let bytes = buf.get(at..at + n).ok_or(DecodeError::Truncated)?;
    Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64))
}

fn header(buf: &[u8], at: usize) -> Result<Header> {
    let byte = *buf.get(at).ok_or(DecodeError::Truncated)?;
    let h = |header_len, payload_len, children| Header {
        header_len,
        payload_len,
        children,
    };
    Ok(match Marker::from_u8(byte) {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            h(1, 0, 0)
        }
        Marker::U8 | Marker::I8 => h(1, 1, 0),
        Marker::U16 | Marker::I16 => h(1, 2, 0),
        Marker::U32 | Marker::I32 | Marker::F32 => h(1, 4, 0),
        Marker::U64 | Marker::I64 | Marker::F64 => h(1, 8, 0),
        Marker::FixStr(n) => h(1, n as usize, 0),
        Marker::Str8 | Marker::Bin8 => h(2, be(buf, at + 1, 1)? as usize, 0),
        Marker::Str16 | Marker::Bin16 => h(3, be(buf, at + 1, 2)? as usize, 0),
        Marker::Str32 | Marker::Bin32 => h(5, be(buf, at + 1, 4)? as usize, 0),
        Marker::FixArray(n) => h(1, 0, n as u64),
        Marker::Array16 => h(3, 0, be(buf, at + 1, 2)?),
        Marker::Array32 => h(5, 0, be(buf, at + 1, 4)?),
        Marker::FixMap(n) => h(1, 0, 2 * n as u64),
        Marker::Map16 => h(3, 0, 2 * be(buf, at + 1, 2)?),
        Marker::Map32 => h(5, 0, 2 * be(buf, at + 1, 4)?),
        Marker::FixExt1 => h(2, 1, 0),
        Marker::FixExt2 => h(2, 2, 0),
        Marker::FixExt4 => h(2, 4, 0),
        Marker::FixExt8 => h(2, 8, 0),
        Marker::FixExt16 => h(2, 16, 0),
        Marker::Ext8 => h(3, be(buf, at + 1, 1)? as usize, 0),
        Marker::Ext16 => h(4, be(buf, at + 1, 2)? as usize, 0),
        Marker::Ext32 => h(6, be(buf, at + 1, 4)? as usize, 0),
        Marker::Reserved => return invalid(format!("reserved msgpack byte 0x{byte:02x}")),
    })
}

/// Finds where complete top-level values end in a growing buffer, resumably: feeding it the
/// same buffer again after more bytes arrive continues where it stopped instead of rescanning.
#[derive(Default, Debug)]
pub struct FrameScanner {
    pos: usize,
    pending: u64,
}

impl FrameScanner {
    /// Returns the length of the first complete value in `buf`, or `None` if more bytes are
    /// needed. `limit` bounds the value's size: a value that cannot fit is an error at once.
    pub fn scan(&mut self, buf: &[u8], limit: usize) -> Result<Option<usize>> {
        loop {
            if self.pos > 0 && self.pending == 0 {
                let len = self.pos;
                *self = FrameScanner::default();
                return Ok(Some(len));
            }
            let h = match header(buf, self.pos) {
                Ok(h) => h,
                Err(DecodeError::Truncated) => {
                    if buf.len() > limit {
                        return invalid(format!("frame larger than {limit} bytes"));
                    }
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let end = self.pos as u64 + h.header_len as u64 + h.payload_len as u64;
            // Every pending child needs at least one byte: a declared count or length that
            // cannot fit within the limit is rejected before we wait for it.
            if end + self.pending + h.children > limit as u64 + 1 {
                return invalid(format!(
                    "frame declares more than {limit} bytes (length or element count too large)"
                ));
            }
            if end > buf.len() as u64 {
                return Ok(None);
            }
            self.pos = end as usize;
            if self.pending > 0 {
                self.pending -= 1;
            }
            self.pending += h.children;
            if self.pos > 0 && self.pending == 0 {
                continue;
            }
        }
    }
}

/// A cursor over one complete msgpack value (or a concatenation of values).
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn peek(&self) -> Result<Marker> {
        self.buf
            .get(self.pos)
            .map(|b| Marker::from_u8(*b))
            .ok_or(DecodeError::Truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let v = be(self.buf, self.pos, n)?;
        self.pos += n;
        Ok(v)
    }

    /// Skips one whole value (nested ones included) and returns its bytes.
    pub fn skip(&mut self) -> Result<&'a [u8]> {
        let start = self.pos;
        let mut pending: u64 = 1;
        while pending > 0 {
            let h = header(self.buf, self.pos)?;
            let end = self
                .pos
                .checked_add(h.header_len + h.payload_len)
                .ok_or(DecodeError::Truncated)?;
            if end > self.buf.len() {
                return Err(DecodeError::Truncated);
            }
            self.pos = end;
            pending = pending - 1 + h.children;
            // A declared count beyond the remaining bytes can never be satisfied.
            if pending > (self.buf.len() - self.pos) as u64 {
                return Err(DecodeError::Truncated);
            }
        }
        Ok(&self.buf[start..self.pos])
    }

    /// The next byte, undecoded: for callers that dispatch on the marker byte themselves
    /// (the transcoder's hot loop), which is cheaper than building a `Marker` per value.
    #[inline]
    pub fn peek_byte(&self) -> Result<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    /// The bytes from the cursor to the end of the buffer (what is left to read).
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    /// Moves the cursor `n` bytes on, no further than the end: for a caller that has already
    /// matched the next value's bytes in [`Reader::rest`].
    #[inline]
    pub fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
    }

    // The readers below match on the marker byte directly (the ranges are msgpack's): one
    // byte compare per value instead of `Marker::from_u8`'s table and a second match.

    /// Reads an array header; `None` (nothing consumed) if the next value is not an array.
    pub fn array_len(&mut self) -> Result<Option<usize>> {
        let m = self.peek_byte()?;
        let n = match m {
            0x90..=0x9f => {
                self.pos += 1;
                (m & 0x0f) as u64
            }
            0xdc => {
                self.pos += 1;
                self.uint(2)?
            }
            0xdd => {
                self.pos += 1;
                self.uint(4)?
            }
            _ => return Ok(None),
        };
        self.check_count(n)
    }

    /// Reads a map header; `None` (nothing consumed) if the next value is not a map.
    pub fn map_len(&mut self) -> Result<Option<usize>> {
        let m = self.peek_byte()?;
        let n = match m {
            0x80..=0x8f => {
                self.pos += 1;
                (m & 0x0f) as u64
            }
            0xde => {
                self.pos += 1;
                self.uint(2)?
            }
            0xdf => {
                self.pos += 1;
                self.uint(4)?
            }
            _ => return Ok(None),
        };
        self.check_count(n)
    }

    fn check_count(&self, n: u64) -> Result<Option<usize>> {
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(DecodeError::Truncated);
        }
        Ok(Some(n as usize))
    }

    /// Reads a str or bin payload as bytes; `None` (nothing consumed) for other types.
    #[inline]
    pub fn bytes(&mut self) -> Result<Option<&'a [u8]>> {
        Ok(self.bytes_and_rest()?.map(|(b, _)| b))
    }

    /// [`Reader::bytes`], with the buffer from the payload's first byte to its end (the
    /// payload and whatever follows it), so a writer can copy a fixed-size block and keep
    /// the payload's part of it.
    #[inline]
    pub fn bytes_and_rest(&mut self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        let m = self.peek_byte()?;
        let (skip, len) = match m {
            0xa0..=0xbf => (1, (m & 0x1f) as u64),
            0xc4 | 0xd9 => (2, be(self.buf, self.pos + 1, 1)?),
            0xc5 | 0xda => (3, be(self.buf, self.pos + 1, 2)?),
            0xc6 | 0xdb => (5, be(self.buf, self.pos + 1, 4)?),
            _ => return Ok(None),
        };
        let save = self.pos;
        self.pos += skip;
        let rest = self.rest();
        match self.take(len as usize) {
            Ok(b) => Ok(Some((b, rest))),
            Err(e) => {
                self.pos = save;
                Err(e)
            }
        }
    }

    /// Reads an integer of any width; `None` (nothing consumed) for other types.
    /// Values beyond i64 come back as `i128` so callers can judge them.
    pub fn int(&mut self) -> Result<Option<i128>> {
        let m = self.peek_byte()?;
        let v: i128 = match m {
            0x00..=0x7f => {
                self.pos += 1;
                m as i128
            }
            0xe0..=0xff => {
                self.pos += 1;
                m as i8 as i128
            }
            0xcc => {
                self.pos += 1;
                self.uint(1)? as i128
            }
            0xcd => {
                self.pos += 1;
                self.uint(2)? as i128
            }
            0xce => {
                self.pos += 1;
                self.uint(4)? as i128
            }
            0xcf => {
                self.pos += 1;
                self.uint(8)? as i128
            }
            0xd0 => {
                self.pos += 1;
                self.uint(1)? as u8 as i8 as i128
            }
            0xd1 => {
                self.pos += 1;
                self.uint(2)? as u16 as i16 as i128
            }
            0xd2 => {
                self.pos += 1;
                self.uint(4)? as u32 as i32 as i128
            }
            0xd3 => {
                self.pos += 1;
                self.uint(8)? as i64 as i128
            }
            _ => return Ok(None),
        };
        Ok(Some(v))
    }

    /// Reads a float; `None` (nothing consumed) for other types.
    pub fn float(&mut self) -> Result<Option<f64>> {
        match self.peek_byte()? {
            0xca => {
                self.pos += 1;
                Ok(Some(f32::from_bits(self.uint(4)? as u32) as f64))
            }
            0xcb => {
                self.pos += 1;
                Ok(Some(f64::from_bits(self.uint(8)?)))
            }
            _ => Ok(None),
        }
    }

    /// Reads an ext value as (type, payload); `None` (nothing consumed) for other types.
    pub fn ext(&mut self) -> Result<Option<(i8, &'a [u8])>> {
        let (skip, len) = match self.peek()? {
            Marker::FixExt1 => (1, 1),
            Marker::FixExt2 => (1, 2),
            Marker::FixExt4 => (1, 4),
            Marker::FixExt8 => (1, 8),
            Marker::FixExt16 => (1, 16),
            Marker::Ext8 => (2, be(self.buf, self.pos + 1, 1)?),
            Marker::Ext16 => (3, be(self.buf, self.pos + 1, 2)?),
            Marker::Ext32 => (5, be(self.buf, self.pos + 1, 4)?),
            _ => return Ok(None),
        };
        let save = self.pos;
        self.pos += skip;
        let result = self
            .take(1)
            .and_then(|t| Ok((t[0] as i8, self.take(len as usize)?)));
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.pos = save;
                Err(e)
            }
        }
    }

    /// Reads `nil`; returns whether it was one.
    pub fn nil(&mut self) -> Result<bool> {
        if self.peek_byte()? == 0xc0 {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads an event time in any shape clients send: integer seconds, float seconds,
    /// EventTime (ext 0, fixext8 or ext8), or fluent-bit's `[time, {metadata}]`.
    /// `Ok(None)` means a negative time: a fluent-bit group marker, to be skipped.
    pub fn event_time(&mut self) -> Result<Option<EventTime>> {
        if let Some(i) = self.int()? {
            if i < 0 {
                return Ok(None);
            }
            let secs =
                i64::try_from(i).map_err(|_| DecodeError::Invalid("time out of range".into()))?;
            return Ok(Some(EventTime { secs, nanos: 0 }));
        }
        if let Some(f) = self.float()? {
            if !f.is_finite() || f >= 9.2e18 {
                return invalid("time is not a finite number");
            }
            if f < 0.0 {
                return Ok(None);
            }
            let secs = f.floor();
            let nanos = (((f - secs) * 1e9).round() as u32).min(999_999_999);
            return Ok(Some(EventTime {
                secs: secs as i64,
                nanos,
            }));
        }
        if let Some((kind, data)) = self.ext()? {
            if kind != 0 || data.len() != 8 {
                return invalid(format!(
                    "time is an ext value of type {kind} and {} bytes, expected EventTime (type 0, 8 bytes)",
                    data.len()
                ));
            }
            let secs = u32::from_be_bytes(data[..4].try_into().unwrap()) as i64;
            let nanos = u32::from_be_bytes(data[4..].try_into().unwrap());
            return Ok(Some(EventTime {
                secs,
                nanos: nanos.min(999_999_999),
            }));
        }
        if let Some(n) = self.array_len()? {
            if n == 0 {
                return invalid("time is an empty array");
            }
            let time = self.event_time()?;
            for _ in 1..n {
                self.skip()?;
            }
            return Ok(time);
        }
        invalid(format!(
            "time has type {}, expected integer, float or EventTime",
            type_name(self.peek()?)
        ))
    }
}

pub fn type_name(marker: Marker) -> &'static str {
    match marker {
        Marker::FixPos(_)
        | Marker::FixNeg(_)
        | Marker::U8
        | Marker::U16
        | Marker::U32
        | Marker::U64
        | Marker::I8
        | Marker::I16
        | Marker::I32
        | Marker::I64 => "integer",
        Marker::Null => "nil",
        Marker::True | Marker::False => "boolean",
        Marker::F32 | Marker::F64 => "float",
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "str",
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "bin",
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "array",
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "map",
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => "ext",
        Marker::Reserved => "reserved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn scanner_finds_frames_incrementally() {
        use rmpv::Value;
        let a = enc(&Value::Array(vec![
            Value::from("tag"),
            Value::from(1),
            Value::Map(vec![(Value::from("k"), Value::from("v"))]),
        ]));
        let b = enc(&Value::Nil);
        let mut stream = a.clone();
        stream.extend(&b);
        for cut in 0..a.len() {
            let mut s = FrameScanner::default();
            assert_eq!(s.scan(&stream[..cut], 1 << 20).unwrap(), None, "cut {cut}");
            assert_eq!(s.scan(&stream, 1 << 20).unwrap(), Some(a.len()));
        }
        let mut s = FrameScanner::default();
        assert_eq!(s.scan(&stream[a.len()..], 1 << 20).unwrap(), Some(1));
    }

    #[test]
    fn scanner_rejects_impossible_declarations_early() {
        let mut s = FrameScanner::default();
        // str32 declaring 4 GiB, with 3 bytes present.
        let err = s.scan(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c'], 1 << 20);
        assert!(matches!(err, Err(DecodeError::Invalid(_))));
        let mut s = FrameScanner::default();
        let err = s.scan(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1 << 20);
        assert!(matches!(err, Err(DecodeError::Invalid(_))));
        let mut s = FrameScanner::default();
        assert!(s.scan(&[0xc1], 1 << 20).is_err());
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut deep = vec![0x91u8; 1_000_000];
        deep.push(0xc0);
        let mut s = FrameScanner::default();
        assert_eq!(s.scan(&deep, 2 << 20).unwrap(), Some(deep.len()));
        assert_eq!(Reader::new(&deep).skip().unwrap().len(), deep.len());
    }

    #[test]
    fn event_time_shapes() {
        let cases: Vec<(Vec<u8>, Option<EventTime>)> = vec![
            (
                vec![0xce, 0x65, 0x00, 0x00, 0x00],
                Some(EventTime {
                    secs: 0x6500_0000,
                    nanos: 0,
                }),
            ),
            (
                vec![0xd7, 0x00, 0, 0, 0, 10, 0, 0, 0, 5],
                Some(EventTime { secs: 10, nanos: 5 }),
            ),
            (
                vec![0xc7, 0x08, 0x00, 0, 0, 0, 10, 0, 0, 0, 5],
                Some(EventTime { secs: 10, nanos: 5 }),
            ),
            (vec![0xff], None),
            (
                vec![0x92, 0x0a, 0x80],
                Some(EventTime { secs: 10, nanos: 0 }),
            ),
        ];
        for (bytes, want) in cases {
            let mut r = Reader::new(&bytes);
            assert_eq!(r.event_time().unwrap(), want, "{bytes:02x?}");
            assert!(r.is_empty());
        }
        let mut f = vec![0xcb];
        f.extend(1.5f64.to_be_bytes());
        assert_eq!(
            Reader::new(&f).event_time().unwrap(),
            Some(EventTime {
                secs: 1,
                nanos: 500_000_000
            })
        );
        assert!(Reader::new(&[0xa1, b'x']).event_time().is_err());
    }
}
