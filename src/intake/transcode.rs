//! The hot path's transcoder: one msgpack record straight into one NDJSON line, appended to a
//! byte buffer that goes to the compressor as is. Owns the JSON rendering of every msgpack
//! type; it must never build an intermediate value tree and never emit invalid JSON or
//! invalid UTF-8, whatever the input.
//!
//! Decisions a reader of the output needs to know:
//! - A line is `{"<time_key>":<time>,"<tag_key>":"<tag>",<record keys...>}`; a record key
//!   equal to the time or tag key is dropped (the event's own time and tag win, as fluentd's
//!   `inject` does).
//! - str and bin values become JSON strings; bytes that are not UTF-8 are replaced by U+FFFD
//!   (binary payloads are rare in logs and a lossy string loads into any text column, where
//!   base64 would silently change meaning).
//! - Floats use the shortest representation that round-trips (f32 as f32); NaN and
//!   infinities, which JSON cannot express, become `null`.
//! - Integers keep full 64-bit range. Map keys that are not strings are written as strings of
//!   their JSON form (`1` becomes `"1"`).
//! - An EventTime ext inside a record is written as a time like the time field; any other ext
//!   value becomes `{"ext_type":N,"data":"<base64>"}`.

use crate::intake::msgpack::{DecodeError, EventTime, Reader, Result, invalid, type_name};
use base64::Engine;
use serde::Deserialize;

/// How a line's time field is written (a target's `time_format`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// `2024-05-01T12:34:56.789012Z`, with `time_precision` fractional digits.
    Rfc3339,
    /// Seconds since the epoch, with `time_precision` fractional digits.
    EpochSeconds,
    /// Whole milliseconds since the epoch.
    EpochMillis,
}

/// Nesting deeper than this is refused: logs never need it and recursion must stay bounded.
const MAX_DEPTH: usize = 64;

/// Renders event times, caching the calendar part of the last second seen (consecutive
/// events nearly always share it). It is the per-stream state of line writing, so it also
/// holds the record keys last seen at each position ([`KeyCache`]).
pub struct TimeRenderer {
    format: TimeFormat,
    precision: u8,
    cached_secs: i64,
    cached: [u8; 19],
    keys: KeyCache,
}

impl TimeRenderer {
    pub fn new(format: TimeFormat, precision: u8) -> Self {
        TimeRenderer {
            format,
            precision: precision.min(9),
            cached_secs: i64::MIN,
            cached: [0; 19],
            keys: KeyCache::default(),
        }
    }

    pub fn write(&mut self, out: &mut Vec<u8>, t: EventTime) -> Result<()> {
        match self.format {
            TimeFormat::Rfc3339 => {
                if t.secs != self.cached_secs {
                    let dt = chrono::DateTime::from_timestamp(t.secs, 0)
                        .filter(|d| chrono::Datelike::year(d) <= 9999)
                        .ok_or_else(|| {
                            DecodeError::Invalid(format!("time {} is out of range", t.secs))
                        })?;
                    let text = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
                    self.cached.copy_from_slice(text.as_bytes());
                    self.cached_secs = t.secs;
                }
                out.push(b'"');
                out.extend_from_slice(&self.cached);
                self.fraction(out, t.nanos);
                out.extend_from_slice(b"Z\"");
            }
            TimeFormat::EpochSeconds => {
                out.extend_from_slice(itoa::Buffer::new().format(t.secs).as_bytes());
                self.fraction(out, t.nanos);
            }
            TimeFormat::EpochMillis => {
                let ms = t.secs as i128 * 1000 + (t.nanos / 1_000_000) as i128;
                out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
            }
        }
        Ok(())
    }

    fn fraction(&self, out: &mut Vec<u8>, nanos: u32) {
        if self.precision == 0 {
            return;
        }
        // The first `precision` of the 9 digits of the nanoseconds (their lowest 9, whatever
        // the value), zero padded: the digits are cut first, then formatted by itoa.
        const CUT: [u32; 10] = [
            1_000_000_000,
            100_000_000,
            10_000_000,
            1_000_000,
            100_000,
            10_000,
            1_000,
            100,
            10,
            1,
        ];
        let p = self.precision as usize;
        let n = nanos % 1_000_000_000 / CUT[p];
        let mut digits = *b".000000000";
        let mut text = itoa::Buffer::new();
        let text = text.format(n).as_bytes();
        digits[1 + p - text.len()..1 + p].copy_from_slice(text);
        out.extend_from_slice(&digits[..1 + p]);
    }
}

/// How lines are shaped for one target.
pub struct LineFormat {
    /// `"time":` ready to copy, and the bare key for collision checks.
    time_prefix: Option<(Vec<u8>, Vec<u8>)>,
    tag_prefix: Option<(Vec<u8>, Vec<u8>)>,
    format: TimeFormat,
    precision: u8,
}

impl LineFormat {
    pub fn new(time_key: &str, format: TimeFormat, precision: u8, tag_key: &str) -> Self {
        let prefix = |key: &str| {
            (!key.is_empty()).then(|| {
                let mut p = Vec::new();
                write_str(&mut p, key);
                p.push(b':');
                (p, key.as_bytes().to_vec())
            })
        };
        LineFormat {
            time_prefix: prefix(time_key),
            tag_prefix: prefix(tag_key),
            format,
            precision,
        }
    }

    /// Whether a record key is replaced by the time or tag field (and so left out).
    pub fn is_reserved(&self, key: &[u8]) -> bool {
        self.time_prefix.as_ref().is_some_and(|(_, k)| k == key)
            || self.tag_prefix.as_ref().is_some_and(|(_, k)| k == key)
    }

    pub fn renderer(&self) -> TimeRenderer {
        TimeRenderer::new(self.format, self.precision)
    }

    /// Writes the time and tag fields that open a line (after its `{`); returns whether it
    /// wrote any. For intakes that write the record's fields themselves (HTTP JSON).
    pub fn write_prefix(
        &self,
        out: &mut Vec<u8>,
        times: &mut TimeRenderer,
        tag_json: &[u8],
        time: EventTime,
    ) -> Result<bool> {
        let mut first = true;
        if let Some((prefix, _)) = &self.time_prefix {
            out.extend_from_slice(prefix);
            times.write(out, time)?;
            first = false;
        }
        if let Some((prefix, _)) = &self.tag_prefix {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(prefix);
            out.extend_from_slice(tag_json);
            first = false;
        }
        Ok(!first)
    }

    /// Appends one line for `record` (the reader is positioned on it and is advanced past it).
    /// `tag_json` is the tag already written as a JSON string. On error, `out` may hold a
    /// partial line: the caller discards the whole frame.
    pub fn write_line(
        &self,
        out: &mut Vec<u8>,
        times: &mut TimeRenderer,
        tag_json: &[u8],
        time: EventTime,
        record: &mut Reader,
    ) -> Result<()> {
        let Some(len) = record.map_len()? else {
            return invalid(format!(
                "record is a {}, expected a map",
                type_name(record.peek()?)
            ));
        };
        out.push(b'{');
        let mut first = !self.write_prefix(out, times, tag_json, time)?;
        for i in 0..len {
            if let Some(key) = times.keys.get(i, record.rest()) {
                record.advance(key.raw_len as usize);
                if key.reserved {
                    record.skip()?;
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                // The whole padded block is one fixed-size copy; the padding is cut off.
                let at = out.len();
                out.extend_from_slice(&key.json);
                out.truncate(at + key.json_len as usize);
                // Most values are strings: written here, without write_value's call.
                match record.bytes_and_rest()? {
                    Some((bytes, rest)) => write_short_or_str(out, bytes, rest),
                    None => write_value(out, record, times, 1)?,
                }
                first = false;
                continue;
            }
            let rest = record.rest();
            let key_start = out.len();
            if !first {
                out.push(b',');
            }
            let json_start = out.len();
            let key = write_key(out, record, times, 1, false)?;
            let reserved = key.is_some_and(|k| self.is_reserved(k));
            if !reserved {
                out.push(b':');
            }
            times.keys.put(i, rest, &out[json_start..], reserved);
            if reserved {
                out.truncate(key_start);
                record.skip()?;
                continue;
            }
            write_value(out, record, times, 1)?;
            first = false;
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// The top-level keys of the last records, by position: records from one source repeat their
/// keys in the same order, so a key that matches the one last seen at its position is written
/// from its cached JSON (`"key":`) without decoding, scanning or escaping it again. Only fixstr
/// keys of up to 15 bytes are cached, compared as two masked words of their msgpack bytes
/// (marker included, so the length is compared too).
#[derive(Default)]
struct KeyCache {
    slots: Vec<Option<CachedKey>>,
}

#[derive(Clone, Copy)]
struct CachedKey {
    /// The key's msgpack bytes (marker and payload) as two little-endian words, zero past
    /// `raw_len`, and the masks that keep the first `raw_len` bytes of a word pair.
    raw: [u64; 2],
    mask: [u64; 2],
    raw_len: u8,
    /// Whether the key is the time or tag key (the pair is left out).
    reserved: bool,
    /// `"key":` as written, zero padded.
    json: [u8; 24],
    json_len: u8,
}

/// Positions past this are not cached (records rarely have more keys).
const CACHED_POSITIONS: usize = 64;

impl KeyCache {
    /// Reads the first 16 bytes of `rest` as two words, if there are 16.
    #[inline(always)]
    fn words(rest: &[u8]) -> Option<[u64; 2]> {
        let head: &[u8; 16] = rest.get(..16)?.try_into().ok()?;
        Some([
            u64::from_le_bytes(head[..8].try_into().unwrap()),
            u64::from_le_bytes(head[8..].try_into().unwrap()),
        ])
    }

    /// The cached key at `position` if `rest` (the reader's bytes) starts with it.
    #[inline(always)]
    fn get(&self, position: usize, rest: &[u8]) -> Option<&CachedKey> {
        let key = self.slots.get(position)?.as_ref()?;
        let [lo, hi] = Self::words(rest)?;
        (lo & key.mask[0] == key.raw[0] && hi & key.mask[1] == key.raw[1]).then_some(key)
    }

    /// Remembers the key at `position`: `rest` was the reader's bytes before it, `json` what
    /// was written for it (`"key":`; anything when `reserved`). Keys that are not short
    /// fixstrs, and keys too close to the end of the buffer to be read as two words, are not
    /// cached (the slot is cleared).
    fn put(&mut self, position: usize, rest: &[u8], json: &[u8], reserved: bool) {
        if position >= CACHED_POSITIONS {
            return;
        }
        if self.slots.len() <= position {
            self.slots.resize(position + 1, None);
        }
        self.slots[position] = (|| {
            let marker = *rest.first()?;
            if !(0xa0..=0xaf).contains(&marker) || json.len() > 24 {
                return None;
            }
            let raw_len = 1 + (marker & 0x1f) as usize;
            let [lo, hi] = Self::words(rest)?;
            let keep = |n: usize| match n {
                0 => 0,
                1..=7 => (1u64 << (8 * n)) - 1,
                _ => !0,
            };
            let mask = [keep(raw_len), keep(raw_len.saturating_sub(8))];
            let mut padded = [0u8; 24];
            padded[..json.len()].copy_from_slice(json);
            Some(CachedKey {
                raw: [lo & mask[0], hi & mask[1]],
                mask,
                raw_len: raw_len as u8,
                reserved,
                json: padded,
                json_len: json.len() as u8,
            })
        })();
    }
}

/// Writes a map key as a JSON string; returns the raw key when it was a str or bin.
///
/// Another key (a map, an int...) is rendered as JSON and written as a string, which escapes
/// its quotes: once is linear, but a non-string key inside a non-string key doubles the
/// escapes per level, and a 600-byte frame grew to gigabytes. So such a key inside a key
/// (`in_key`) is refused, and a key's value counts against the record's nesting `depth`.
fn write_key<'a>(
    out: &mut Vec<u8>,
    r: &mut Reader<'a>,
    times: &mut TimeRenderer,
    depth: usize,
    in_key: bool,
) -> Result<Option<&'a [u8]>> {
    if let Some(bytes) = r.bytes()? {
        write_bytes_as_str(out, bytes);
        return Ok(Some(bytes));
    }
    if in_key {
        return invalid("a map key that is not a string holds another such key");
    }
    let mut scratch = Vec::new();
    write_value_in(&mut scratch, r, times, depth + 1, true)?;
    let text = String::from_utf8_lossy(&scratch);
    write_str(out, text.trim_matches('"'));
    Ok(None)
}

fn write_value(
    out: &mut Vec<u8>,
    r: &mut Reader,
    times: &mut TimeRenderer,
    depth: usize,
) -> Result<()> {
    write_value_in(out, r, times, depth, false)
}

/// [`write_value`], `in_key` when the value is (inside) a map key being rendered.
fn write_value_in(
    out: &mut Vec<u8>,
    r: &mut Reader,
    times: &mut TimeRenderer,
    depth: usize,
    in_key: bool,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return invalid(format!("record nests deeper than {MAX_DEPTH} levels"));
    }
    // Dispatch on the marker byte (msgpack's ranges), commonest first: strings, integers.
    match r.peek_byte()? {
        0xa0..=0xbf | 0xc4..=0xc6 | 0xd9..=0xdb => {
            let (bytes, rest) = r.bytes_and_rest()?.unwrap_or_default();
            write_short_or_str(out, bytes, rest);
        }
        0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => {
            let v = r
                .int()?
                .ok_or_else(|| DecodeError::Invalid("unexpected msgpack type".into()))?;
            // i64 where it fits (all but u64 values past i64::MAX): itoa's 128-bit path costs
            // about twice as much.
            let mut digits = itoa::Buffer::new();
            let text = match i64::try_from(v) {
                Ok(small) => digits.format(small),
                Err(_) => digits.format(v),
            };
            out.extend_from_slice(text.as_bytes());
        }
        0xcb => write_f64(out, r.float()?.unwrap_or(f64::NAN)),
        0xc0 => {
            r.nil()?;
            out.extend_from_slice(b"null");
        }
        0xc3 => {
            r.skip()?;
            out.extend_from_slice(b"true");
        }
        0xc2 => {
            r.skip()?;
            out.extend_from_slice(b"false");
        }
        0xca => {
            let bits = r.skip()?;
            let v = f32::from_be_bytes(bits[1..5].try_into().unwrap());
            if v.is_finite() {
                out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
            } else {
                out.extend_from_slice(b"null");
            }
        }
        0x90..=0x9f | 0xdc | 0xdd => {
            let n = r.array_len()?.unwrap_or(0);
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                write_value_in(out, r, times, depth + 1, in_key)?;
            }
            out.push(b']');
        }
        0x80..=0x8f | 0xde | 0xdf => {
            let n = r.map_len()?.unwrap_or(0);
            out.push(b'{');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                let _ = write_key(out, r, times, depth, in_key)?;
                out.push(b':');
                write_value_in(out, r, times, depth + 1, in_key)?;
            }
            out.push(b'}');
        }
        0xc7..=0xc9 | 0xd4..=0xd8 => {
            let (kind, data) = r.ext()?.unwrap_or((0, &[]));
            if kind == 0 && data.len() == 8 {
                let secs = u32::from_be_bytes(data[..4].try_into().unwrap()) as i64;
                let nanos = u32::from_be_bytes(data[4..].try_into().unwrap()).min(999_999_999);
                times.write(out, EventTime { secs, nanos })?;
            } else {
                out.extend_from_slice(b"{\"ext_type\":");
                out.extend_from_slice(itoa::Buffer::new().format(kind).as_bytes());
                out.extend_from_slice(b",\"data\":\"");
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(data)
                        .as_bytes(),
                );
                out.extend_from_slice(b"\"}");
            }
        }
        0xc1 => return invalid("reserved msgpack byte 0xc1 in record"),
    }
    Ok(())
}

/// Writes an f64 as ryu writes it (shortest round trip), `null` if it is not finite.
#[inline]
fn write_f64(out: &mut Vec<u8>, v: f64) {
    let Some((m, k)) = few_decimals(v.abs()) else {
        if v.is_finite() {
            out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
        return;
    };
    // `m` with a point before its last `k` digits, as ryu writes values of this size
    // (`12.34`, `0.05`: no exponent between 1e-5 and 1e16).
    let mut text = [0u8; 24];
    let mut i = text.len();
    let mut frac = m % POW10[k];
    for _ in 0..k {
        i -= 1;
        text[i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    i -= 1;
    text[i] = b'.';
    let mut int = m / POW10[k];
    loop {
        i -= 1;
        text[i] = b'0' + (int % 10) as u8;
        int /= 10;
        if int == 0 {
            break;
        }
    }
    if v.is_sign_negative() {
        i -= 1;
        text[i] = b'-';
    }
    out.extend_from_slice(&text[i..]);
}

const POW10: [u64; 4] = [1, 10, 100, 1000];

/// Measurements in logs are mostly decimals of 1 to 3 places (`0.123` s, `12.5` ms), for
/// which ryu's general algorithm costs several times the rest of the line's numbers. `a`
/// (not negative) as `m / 10^k` with the fewest places `k` in 1..=3, when that decimal reads
/// back as `a`; `None` for anything else (integral values, more places, outside 1e-3..1e12,
/// not finite), which ryu writes.
///
/// Why this is ryu's output: `m / 10^k` computed in f64 is the exact decimal correctly
/// rounded, so it equals `a` exactly when the decimal is in `a`'s rounding interval, ryu's
/// candidates. Below 1e12 `a * 10^k` is under 2^50, where the interval is narrower than 1,
/// so `m` (the nearest integer) is the only candidate with `k` places; fewer places were
/// tried first (none for `k` = 0: a non-integral `a` this small is not within reach of an
/// integer), so `m` has the fewest digits, and it is the closest with that many. The
/// property test `floats_are_ryus` holds the two to the same bytes.
#[inline]
fn few_decimals(a: f64) -> Option<(u64, usize)> {
    if !(1e-3..1e12).contains(&a) || a.fract() == 0.0 {
        return None;
    }
    for (k, &p) in POW10.iter().enumerate().skip(1) {
        let m = (a * p as f64).round();
        if m / p as f64 == a {
            let m = m as u64;
            // Fewest places means no trailing zero; should that ever fail, ryu decides.
            return (!m.is_multiple_of(10)).then_some((m, k));
        }
    }
    None
}

/// Writes bytes as a JSON string, replacing invalid UTF-8 with U+FFFD.
///
/// One pass for the common case: 8 bytes at a time are checked for anything needing
/// attention (control characters, `"`, `\\`, non-ASCII). UTF-8 is validated only from the first
/// non-ASCII byte on, so ASCII logs are copied almost at memcpy speed.
pub fn write_bytes_as_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    write_escaped(out, bytes, false);
    out.push(b'"');
}

/// Strings this short, read from a buffer with at least [`SHORT`] bytes left, are scanned in
/// up to 4 words and copied as one fixed-size block (then cut to length): a variable-length
/// copy is a `memcpy` call, which costs more than the copy itself at these sizes.
const SHORT: usize = 32;

/// [`write_bytes_as_str`] for `bytes`, the start of `rest` (the reader's buffer from the
/// string on).
#[inline(always)]
fn write_short_or_str(out: &mut Vec<u8>, bytes: &[u8], rest: &[u8]) {
    let n = bytes.len();
    if let Some(block) = rest.get(..SHORT).filter(|_| n <= SHORT) {
        let block: &[u8; SHORT] = block.try_into().unwrap();
        let mut flagged = 0;
        let mut at = 0;
        while at < n {
            let x = u64::from_le_bytes(block[at..at + 8].try_into().unwrap());
            // Only this string's bytes count; a borrow never flags a byte below its cause,
            // so what follows the string cannot flag a byte of it.
            let keep = match n - at {
                k @ 1..=7 => (1u64 << (8 * k)) - 1,
                _ => !0,
            };
            flagged |= attention_mask(x, false) & keep;
            at += 8;
        }
        if flagged == 0 {
            out.push(b'"');
            let start = out.len();
            out.extend_from_slice(block);
            out.truncate(start + n);
            out.push(b'"');
            return;
        }
    }
    write_bytes_as_str(out, bytes);
}

/// Writes a JSON string literal with the escapes JSON requires.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_escaped(out, s.as_bytes(), true);
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each of the 8 bytes (little-endian: byte 0 is the lowest) that is a
/// control character, `"` or `\\` (or non-ASCII, unless `utf8_known` says the rest is valid
/// UTF-8, whose bytes JSON takes as they are). A borrow can also flag a byte above a flagged
/// one, never below it: the lowest set bit is always exact, which is all the callers read.
#[inline(always)]
fn attention_mask(x: u64, utf8_known: bool) -> u64 {
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
    let quote = has_zero(x ^ (ONES * b'"' as u64));
    let backslash = has_zero(x ^ (ONES * b'\\' as u64));
    let high = if utf8_known { 0 } else { x & HIGHS };
    control | quote | backslash | high
}

/// The index of the first byte at or after `i` that needs attention ([`attention_mask`]), or
/// `bytes.len()`. Whole words, then the last few bytes in one overlapping word; a string
/// shorter than a word (most keys) byte by byte, which costs less than assembling a word.
#[inline(always)]
fn skip_clean(bytes: &[u8], mut i: usize, utf8_known: bool) -> usize {
    if bytes.len() < 8 {
        let needs = |b: u8| ESCAPE[b as usize] != 0 || (b >= 0x80 && !utf8_known);
        return bytes[i..]
            .iter()
            .position(|&b| needs(b))
            .map_or(bytes.len(), |p| i + p);
    }
    let first_flagged = |mask: u64| (mask.trailing_zeros() / 8) as usize;
    while i + 8 <= bytes.len() {
        let x = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        let mask = attention_mask(x, utf8_known);
        if mask != 0 {
            return i + first_flagged(mask);
        }
        i += 8;
    }
    let rest = bytes.len() - i;
    if rest == 0 {
        return i;
    }
    // The last 8 bytes, the first `8 - rest` of them already found clean: masked off (a clean
    // byte flags nothing, so nothing is borrowed into the rest).
    let x = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().unwrap());
    match attention_mask(x, utf8_known) & (!0u64 << (8 * (8 - rest))) {
        0 => bytes.len(),
        m => bytes.len() - 8 + first_flagged(m),
    }
}

/// Most strings need no escape at all: one scan, one copy, inlined where strings are written.
#[inline(always)]
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8], utf8_known: bool) {
    let i = skip_clean(bytes, 0, utf8_known);
    if i == bytes.len() {
        out.extend_from_slice(bytes);
    } else {
        write_escaped_from(out, bytes, i, utf8_known);
    }
}

/// [`write_escaped`] from `i`, the first byte that needs attention.
#[inline(never)]
fn write_escaped_from(out: &mut Vec<u8>, bytes: &[u8], mut i: usize, mut utf8_known: bool) {
    let mut run_start = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b >= 0x80 && !utf8_known {
            if std::str::from_utf8(&bytes[i..]).is_ok() {
                utf8_known = true;
                i = skip_clean(bytes, i, utf8_known);
                continue;
            }
            // Invalid UTF-8 somewhere ahead: the rest goes through the lossy conversion.
            out.extend_from_slice(&bytes[run_start..i]);
            let fixed = String::from_utf8_lossy(&bytes[i..]);
            write_escaped(out, fixed.as_bytes(), true);
            return;
        }
        let esc = ESCAPE[b as usize];
        if esc != 0 {
            out.extend_from_slice(&bytes[run_start..i]);
            run_start = i + 1;
            if esc == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 15) as usize],
                ]);
            } else {
                out.extend_from_slice(&[b'\\', esc]);
            }
        }
        i = skip_clean(bytes, i + 1, utf8_known);
    }
    out.extend_from_slice(&bytes[run_start..]);
}

/// 0: copy as is; otherwise the escape to use (`u` for `\\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn line(record: Value, fmt: &LineFormat) -> String {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &record).unwrap();
        line_raw(&bytes, fmt)
    }

    fn line_raw(bytes: &[u8], fmt: &LineFormat) -> String {
        let mut out = Vec::new();
        let mut tag = Vec::new();
        write_str(&mut tag, "app.web");
        let mut times = fmt.renderer();
        fmt.write_line(
            &mut out,
            &mut times,
            &tag,
            EventTime {
                secs: 1_700_000_000,
                nanos: 123_456_789,
            },
            &mut Reader::new(bytes),
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn default_fmt() -> LineFormat {
        LineFormat::new("time", TimeFormat::Rfc3339, 6, "")
    }

    #[test]
    fn basic_line_is_valid_json_with_time_first() {
        let rec = Value::Map(vec![
            (Value::from("msg"), Value::from("hello \"world\"\n\u{1}")),
            (Value::from("n"), Value::from(-5)),
            (Value::from("big"), Value::from(u64::MAX)),
            (Value::from("f"), Value::F64(0.1)),
            (Value::from("f32"), Value::F32(0.1)),
            (Value::from("nan"), Value::F64(f64::NAN)),
            (Value::from("ok"), Value::Boolean(true)),
            (Value::from("nil"), Value::Nil),
            (
                Value::from("arr"),
                Value::Array(vec![Value::from(1), Value::from("x")]),
            ),
            (
                Value::from("map"),
                Value::Map(vec![(Value::from(7), Value::from("seven"))]),
            ),
        ]);
        let text = line(rec, &default_fmt());
        assert!(text.ends_with('\n'));
        assert_eq!(
            text,
            "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"msg\":\"hello \\\"world\\\"\\n\\u0001\",\"n\":-5,\
             \"big\":18446744073709551615,\"f\":0.1,\"f32\":0.1,\"nan\":null,\"ok\":true,\"nil\":null,\
             \"arr\":[1,\"x\"],\"map\":{\"7\":\"seven\"}}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["big"], serde_json::json!(u64::MAX));
    }

    #[test]
    fn invalid_utf8_and_bin() {
        // {"s": str "a\xffb", "b": bin "plain"}
        let rec = [
            &[
                0x82, 0xa1, b's', 0xa3, b'a', 0xff, b'b', 0xa1, b'b', 0xc4, 5,
            ][..],
            b"plain",
        ]
        .concat();
        let text = line_raw(&rec, &default_fmt());
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["s"], "a\u{fffd}b");
        assert_eq!(parsed["b"], "plain");
    }

    #[test]
    fn reserved_keys_are_replaced_and_tag_added() {
        let fmt = LineFormat::new("ts", TimeFormat::EpochMillis, 3, "tag");
        let rec = Value::Map(vec![
            (Value::from("ts"), Value::from("theirs")),
            (Value::from("a"), Value::from(1)),
            (Value::from("tag"), Value::from("theirs")),
        ]);
        assert_eq!(
            line(rec, &fmt),
            "{\"ts\":1700000000123,\"tag\":\"app.web\",\"a\":1}\n"
        );
        let only = Value::Map(vec![(Value::from("ts"), Value::from(1))]);
        assert_eq!(
            line(only, &fmt),
            "{\"ts\":1700000000123,\"tag\":\"app.web\"}\n"
        );
        let none = LineFormat::new("", TimeFormat::Rfc3339, 6, "");
        let rec = Value::Map(vec![
            (Value::from("a"), Value::from(1)),
            (Value::from("b"), Value::from(2)),
        ]);
        assert_eq!(line(rec, &none), "{\"a\":1,\"b\":2}\n");
    }

    #[test]
    fn epoch_seconds_precision() {
        let fmt = LineFormat::new("t", TimeFormat::EpochSeconds, 3, "");
        let rec = Value::Map(vec![]);
        assert_eq!(line(rec, &fmt), "{\"t\":1700000000.123}\n");
    }

    #[test]
    fn non_map_record_and_deep_nesting_are_errors() {
        let fmt = default_fmt();
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &Value::from("not a map")).unwrap();
        let mut times = fmt.renderer();
        let err = fmt
            .write_line(
                &mut Vec::new(),
                &mut times,
                b"\"t\"",
                EventTime { secs: 0, nanos: 0 },
                &mut Reader::new(&bytes),
            )
            .unwrap_err();
        assert!(err.to_string().contains("expected a map"), "{err}");
        let mut deep = vec![0x81, 0xa1, b'k'];
        deep.extend(vec![0x91; 100]);
        deep.push(0xc0);
        assert!(
            fmt.write_line(
                &mut Vec::new(),
                &mut times,
                b"\"t\"",
                EventTime { secs: 0, nanos: 0 },
                &mut Reader::new(&deep)
            )
            .is_err()
        );
    }

    /// A non-string key is written as its JSON text; one holding another such key is refused.
    /// Each level of keys inside keys doubled the escapes: the `forward_frame` fuzz target's
    /// 623-byte frame ran for a minute and took 450 MB (docs/fuzzing.md).
    #[test]
    fn keys_inside_non_string_keys_are_refused_not_escaped_again() {
        let fmt = LineFormat::new("", TimeFormat::Rfc3339, 6, "");
        let int_key = Value::Map(vec![(Value::from(7), Value::from("a"))]);
        assert_eq!(line(int_key, &fmt), "{\"7\":\"a\"}\n");
        let map_key = Value::Map(vec![(
            Value::Map(vec![(Value::from("k"), Value::from("v"))]),
            Value::from(1),
        )]);
        assert_eq!(line(map_key, &fmt), "{\"{\\\"k\\\":\\\"v\\\"}\":1}\n");
        // Maps as keys of maps as keys, 40 levels: 2^40 escapes before the fix.
        let mut nested = vec![0x81; 40];
        nested.extend_from_slice(&[0xa1, b'"', 0xc0]);
        nested.extend_from_slice(&[0xc0; 39]);
        let mut times = fmt.renderer();
        let mut out = Vec::new();
        let err = fmt
            .write_line(
                &mut out,
                &mut times,
                b"\"t\"",
                EventTime { secs: 0, nanos: 0 },
                &mut Reader::new(&nested),
            )
            .unwrap_err();
        assert!(err.to_string().contains("holds another such key"), "{err}");
        assert!(out.len() < 1024, "{} bytes written", out.len());
    }

    #[test]
    fn escaping_agrees_with_serde_json() {
        let cases: Vec<Vec<u8>> = vec![
            b"plain ascii text that is long enough".to_vec(),
            b"tab\there \"quoted\" back\\slash \x01\x1f\x7f end".to_vec(),
            "héllo wörld, 日本語のログ, emoji 🎉 mixed \n with escapes"
                .as_bytes()
                .to_vec(),
            vec![b'a'; 7],
            [&b"12345678"[..], &[0xff, 0xfe], b"abcdefgh\"", &[0xc3]].concat(),
            ["ééééé".as_bytes(), &[0x80], b"tail\\"].concat(),
        ];
        for case in cases {
            for prefix in 0..9 {
                let bytes = [&b"xxxxxxxxx"[..prefix], &case].concat();
                let mut out = Vec::new();
                write_bytes_as_str(&mut out, &bytes);
                let want = serde_json::to_string(&String::from_utf8_lossy(&bytes)).unwrap();
                let got: String = serde_json::from_slice(&out).unwrap();
                assert_eq!(got, String::from_utf8_lossy(&bytes), "{bytes:?}");
                assert_eq!(serde_json::from_str::<String>(&want).unwrap(), got);
            }
        }
    }

    proptest::proptest! {
        /// Every length around the word size, with what needs escaping (and bad UTF-8) at
        /// every position: the same bytes as serde_json writes for the lossy string.
        #[test]
        fn escaping_is_serde_jsons_at_every_length_and_position(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => proptest::prelude::Just(b'a'),
                    1 => proptest::prelude::Just(b'"'),
                    1 => proptest::prelude::Just(b'\\'),
                    1 => 0u8..0x20,
                    1 => proptest::prelude::Just(0x7f),
                    1 => 0x80u8..=0xff,
                ],
                0..40,
            ),
            utf8 in "[a-zé日\"\\\\\n\u{1}]{0,20}",
        ) {
            for case in [bytes.clone(), utf8.into_bytes()] {
                let mut out = Vec::new();
                write_bytes_as_str(&mut out, &case);
                let want = serde_json::to_string(&String::from_utf8_lossy(&case)).unwrap();
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), want);
            }
        }
    }

    proptest::proptest! {
        /// The fixed-block copy of short strings writes what the general path writes, whatever
        /// follows the string in the buffer.
        #[test]
        fn short_strings_are_written_as_the_general_path_writes_them(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => proptest::prelude::Just(b'a'),
                    1 => proptest::prelude::Just(b'"'),
                    1 => proptest::prelude::Just(b'\\'),
                    1 => 0u8..0x20,
                    1 => 0x80u8..=0xff,
                ],
                0..40,
            ),
            after in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let rest = [&bytes[..], &after].concat();
            let mut fast = Vec::new();
            write_short_or_str(&mut fast, &bytes, &rest);
            let mut general = Vec::new();
            write_bytes_as_str(&mut general, &bytes);
            proptest::prop_assert_eq!(fast, general);
        }

        /// Records written one after another with one renderer (keys from the cache) give the
        /// lines a fresh renderer gives each of them (keys decoded), reserved keys included.
        #[test]
        fn cached_keys_write_the_lines_decoded_keys_write(
            records in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        proptest::prop_oneof![
                            proptest::prelude::Just("ts".to_string()),
                            proptest::prelude::Just("tag".to_string()),
                            proptest::prelude::Just("a".to_string()),
                            proptest::prelude::Just("abcdefghijklmno".to_string()),
                            proptest::prelude::Just("abcdefghijklmnop".to_string()),
                            proptest::prelude::Just("k\"q".to_string()),
                            "[a-c]{0,9}",
                        ],
                        0i64..3,
                    ),
                    0..6,
                ),
                1..8,
            ),
        ) {
            let fmt = LineFormat::new("ts", TimeFormat::EpochMillis, 3, "tag");
            let mut bytes = Vec::new();
            for rec in &records {
                let map = rec
                    .iter()
                    .map(|(k, v)| (Value::from(k.as_str()), Value::from(*v)))
                    .collect();
                rmpv::encode::write_value(&mut bytes, &Value::Map(map)).unwrap();
            }
            let time = EventTime { secs: 1, nanos: 0 };
            let (mut cached, mut fresh) = (Vec::new(), Vec::new());
            let mut times = fmt.renderer();
            let mut r = Reader::new(&bytes);
            let mut r2 = Reader::new(&bytes);
            for _ in &records {
                fmt.write_line(&mut cached, &mut times, b"\"t\"", time, &mut r).unwrap();
                fmt.write_line(&mut fresh, &mut fmt.renderer(), b"\"t\"", time, &mut r2)
                    .unwrap();
            }
            proptest::prop_assert_eq!(String::from_utf8(cached).unwrap(), String::from_utf8(fresh).unwrap());
        }
    }

    fn ryu_text(v: f64) -> String {
        if v.is_finite() {
            ryu::Buffer::new().format_finite(v).to_string()
        } else {
            "null".to_string()
        }
    }

    #[test]
    fn floats_are_ryus_for_every_short_decimal() {
        // Every decimal of 1 to 3 places below 200 and around the range's edges, both signs,
        // and their neighbouring floats (which take the ryu path).
        let mut values = Vec::new();
        for n in 0..200_000u64 {
            for p in [10.0, 100.0, 1000.0] {
                values.push(n as f64 / p);
            }
        }
        for base in [1e-3f64, 1e12, 1e11, 999_999_999_999.9, 4503599627370.5] {
            for d in -3i64..=3 {
                values.push(f64::from_bits(base.to_bits().wrapping_add_signed(d)));
            }
        }
        values.extend([
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            5e-324,
            1e300,
        ]);
        for v in values {
            for v in [
                v,
                -v,
                f64::from_bits(v.to_bits().wrapping_add(1)),
                f64::from_bits(v.to_bits().wrapping_sub(1)),
            ] {
                let mut out = Vec::new();
                write_f64(&mut out, v);
                assert_eq!(String::from_utf8(out).unwrap(), ryu_text(v), "{v:e}");
            }
        }
    }

    proptest::proptest! {
        /// Any float (short decimals scaled anywhere, and arbitrary bits): ryu's bytes.
        #[test]
        fn floats_are_ryus(
            n in 0u64..10_000_000_000_000,
            k in 0i32..8,
            bits in proptest::prelude::any::<u64>(),
        ) {
            for v in [n as f64 / 10f64.powi(k), f64::from_bits(bits)] {
                let mut out = Vec::new();
                write_f64(&mut out, v);
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), ryu_text(v));
            }
        }
    }

    #[test]
    fn fractions_of_every_precision() {
        for precision in 0..=9u8 {
            let fmt = LineFormat::new("t", TimeFormat::EpochSeconds, precision, "");
            for nanos in [
                0,
                1,
                5,
                123_456_789,
                999_999_999,
                100_000_000,
                1_000_000_007,
            ] {
                let mut out = Vec::new();
                fmt.renderer().fraction(&mut out, nanos);
                let digits = format!("{:09}", nanos % 1_000_000_000);
                let want = if precision == 0 {
                    String::new()
                } else {
                    format!(".{}", &digits[..precision as usize])
                };
                assert_eq!(String::from_utf8(out).unwrap(), want);
            }
        }
    }

    #[test]
    fn ext_values() {
        let rec = Value::Map(vec![
            (
                Value::from("at"),
                Value::Ext(0, vec![0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 1]),
            ),
            (Value::from("x"), Value::Ext(5, vec![1, 2, 3])),
        ]);
        let text = line(rec, &default_fmt());
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["at"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(
            parsed["x"],
            serde_json::json!({"ext_type": 5, "data": "AQID"})
        );
    }
}
