//! HTTP request bodies into NDJSON lines: decompression with a size cap, then one of the body
//! styles the HTTP intake accepts. Pure functions over bytes (no I/O), so every style is unit
//! tested here. A body is converted whole or refused whole: on error the caller drops `out`.
//!
//! Styles (see the module doc of `http` for how a request picks one):
//! - JSON: a stream of whitespace-separated JSON values, each an object (one record) or an array
//!   of objects. That one grammar covers fluentd in_http (object or array), fluent-bit `json`
//!   (array), `json_lines` and `json_stream`, and Vector's `codec: json` (array) and
//!   `framing.method: newline_delimited` (NDJSON).
//! - msgpack: a stream of values, each a record map, an array of record maps (fluentd in_http),
//!   or an event `[time, record]` (fluent-bit's raw chunk; time may be `[time, {metadata}]`,
//!   negative times are group markers and skipped).
//!
//! JSON records are never turned into a value tree: each object is split into `(key, raw value)`
//! pairs and the raw value text is copied (re-compacted only when it spans lines).

use crate::intake::decompress::{Codec, DecompressError, Held, decompress_capped};
use crate::intake::msgpack::{DecodeError, EventTime, FrameScanner, Reader, type_name};
use crate::intake::transcode::{LineFormat, TimeRenderer, write_str};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Why a body was refused: the HTTP status, a metric label and a message for the client.
#[derive(Debug)]
pub struct BodyError {
    pub status: u16,
    pub reason: &'static str,
    pub detail: String,
}

impl BodyError {
    pub fn new(status: u16, reason: &'static str, detail: impl Into<String>) -> BodyError {
        BodyError {
            status,
            reason,
            detail: detail.into(),
        }
    }

    fn malformed(detail: impl Into<String>) -> BodyError {
        BodyError::new(400, "malformed", detail)
    }
}

type Result<T> = std::result::Result<T, BodyError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
    Snappy,
}

/// Reads `Content-Encoding`. Only one coding is accepted (no client here stacks them).
pub fn content_encoding(header: Option<&str>) -> Result<Encoding> {
    let Some(h) = header else {
        return Ok(Encoding::Identity);
    };
    Ok(match h.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Encoding::Identity,
        "gzip" | "x-gzip" => Encoding::Gzip,
        "deflate" | "zlib" => Encoding::Deflate,
        "zstd" => Encoding::Zstd,
        "snappy" | "x-snappy-framed" => Encoding::Snappy,
        other => {
            return Err(BodyError::new(
                415,
                "unsupported_encoding",
                format!(
                    "Content-Encoding `{other}` is not supported (use gzip, zstd, deflate or snappy)"
                ),
            ));
        }
    })
}

/// Decompresses `body`; more than `cap` decompressed bytes is refused (413), before they are
/// all produced.
/// The share of the decompression budget comes back with the bytes: keep it as long as them.
pub fn decompress(
    encoding: Encoding,
    body: &[u8],
    cap: usize,
) -> Result<(Cow<'_, [u8]>, Option<Held<'static>>)> {
    let codec = match encoding {
        Encoding::Identity => return Ok((Cow::Borrowed(body), None)),
        Encoding::Gzip => Codec::Gzip,
        Encoding::Deflate => Codec::Deflate,
        Encoding::Zstd => Codec::Zstd,
        Encoding::Snappy => Codec::Snappy,
    };
    decompress_capped(codec, body, cap)
        .map(|d| (Cow::Owned(d.data), Some(d.held)))
        .map_err(|e| match e {
            // 503: clients retry it after Retry-After, as at the disk quota.
            DecompressError::Busy { budget } => BodyError::new(
                503,
                "busy",
                format!(
                    "decompressed bodies of all connections hold the whole decompress_memory \
                     budget ({budget} bytes) right now; retry"
                ),
            ),
            DecompressError::TooLarge => BodyError::new(
                413,
                "too_large",
                format!(
                    "the decompressed body is larger than {cap} bytes (http.max_decompressed_bytes)"
                ),
            ),
            DecompressError::Corrupt(e) => BodyError::malformed(format!(
                "Content-Encoding {}: cannot decompress the body: {e}",
                codec.name()
            )),
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Msgpack,
    Form,
}

/// The body style from `Content-Type`: msgpack and form types by name, everything else JSON
/// (`application/json`, `application/x-ndjson`, `text/plain`, none...).
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind> {
    let mime = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    Ok(match mime.as_str() {
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
            BodyKind::Msgpack
        }
        "application/x-www-form-urlencoded" => BodyKind::Form,
        "multipart/form-data" => {
            return Err(BodyError::new(
                415,
                "unsupported_type",
                "multipart/form-data is not supported: send the JSON as the body or as a urlencoded `json=` field",
            ));
        }
        _ => BodyKind::Json,
    })
}

/// Decodes an `application/x-www-form-urlencoded` body or query into raw byte pairs (values
/// may be binary msgpack, so no UTF-8 conversion happens here, which is why this is not
/// `form_urlencoded::parse`: that one decodes to lossy UTF-8).
pub fn form_pairs(text: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    // `+` is a space in a form (a `%2B` is a `+`); a `%` without two hex digits stays as is.
    fn decode(s: &[u8]) -> Vec<u8> {
        let spaced: Cow<[u8]> = if s.contains(&b'+') {
            Cow::Owned(
                s.iter()
                    .map(|&b| if b == b'+' { b' ' } else { b })
                    .collect(),
            )
        } else {
            Cow::Borrowed(s)
        };
        percent_encoding::percent_decode(&spaced).collect()
    }
    text.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(eq) => (decode(&p[..eq]), decode(&p[eq + 1..])),
            None => (decode(p), Vec::new()),
        })
        .collect()
}

/// Parses a time given as text: decimal epoch seconds (`1714566896.5`, exact to the
/// nanosecond), or RFC 3339 / ISO 8601 (`2024-05-01T12:34:56.789Z`, also with a space for `T`).
pub fn parse_time_text(text: &str) -> Option<EventTime> {
    parse_time_inner(text).filter(in_range)
}

/// Latest time the line format can write (9999-12-31T23:59:59Z): a field holding, say, epoch
/// milliseconds is not taken for a time (the receive time is used and the field kept).
fn in_range(t: &EventTime) -> bool {
    (0..=253_402_300_799).contains(&t.secs)
}

fn parse_time_inner(text: &str) -> Option<EventTime> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if frac.contains('.') {
            return None;
        }
        let secs: i64 = int.parse().ok()?;
        let mut nanos = 0u32;
        for (i, d) in frac.bytes().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        return Some(EventTime { secs, nanos });
    }
    if t.bytes().any(|b| b == b'e' || b == b'E') && t.parse::<f64>().is_ok() {
        let f: f64 = t.parse().ok()?;
        if !(0.0..9.2e18).contains(&f) {
            return None;
        }
        let secs = f.floor();
        return Some(EventTime {
            secs: secs as i64,
            nanos: (((f - secs) * 1e9).round() as u32).min(999_999_999),
        });
    }
    let dt = chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
        })
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc())
        })
        .ok()?;
    if dt.timestamp() < 0 {
        return None;
    }
    Some(EventTime {
        secs: dt.timestamp(),
        nanos: dt.timestamp_subsec_nanos().min(999_999_999),
    })
}

/// How the lines of one request are shaped.
pub struct Shape<'a> {
    pub format: &'a LineFormat,
    /// The tag, already a JSON string.
    pub tag_json: &'a [u8],
    /// Record field that gives the event time, when present and readable ("" none).
    pub time_key: &'a str,
    /// `?time=` (fluentd in_http): wins over the record's field, as in fluentd.
    pub time_param: Option<EventTime>,
    /// The receive time, for records without a time.
    pub now: EventTime,
}

/// The lines of one request.
pub struct Lines {
    pub lines: Vec<u8>,
    pub events: u64,
    pub first_time: Option<EventTime>,
}

impl Lines {
    pub fn with_capacity(n: usize) -> Lines {
        Lines {
            lines: Vec::with_capacity(n),
            events: 0,
            first_time: None,
        }
    }

    fn count(&mut self, time: EventTime) {
        self.events += 1;
        if self.first_time.is_none() {
            self.first_time = Some(time);
        }
    }
}

// ----------------------------------------------------------------------------------- JSON

/// Appends the lines of a JSON body (see the module doc for the grammar).
///
/// One pass: each top-level value is parsed once into borrowed (key, raw value) pairs, then
/// written as a line; values are copied as the client wrote them, never re-encoded.
pub fn json_lines(body: &[u8], shape: &Shape, out: &mut Lines) -> Result<()> {
    let mut writer = JsonWriter {
        shape,
        times: shape.format.renderer(),
        out,
    };
    let stream = serde_json::Deserializer::from_slice(body).into_iter::<Top>();
    for value in stream {
        let value = value.map_err(|e| {
            BodyError::malformed(format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ))
        })?;
        match value {
            Top::Record(fields) => writer.record(&fields)?,
            Top::Records(records) => {
                for fields in &records {
                    writer.record(fields)?;
                }
            }
        }
    }
    Ok(())
}

struct JsonWriter<'s> {
    shape: &'s Shape<'s>,
    times: TimeRenderer,
    out: &'s mut Lines,
}

/// A record's fields as they appear: keys unescaped (borrowed when they have no escapes),
/// values raw.
type Fields<'de> = Vec<(Cow<'de, str>, &'de RawValue)>;

impl JsonWriter<'_> {
    fn record(&mut self, fields: &Fields<'_>) -> Result<()> {
        let shape = self.shape;
        let record_time = || {
            if shape.time_key.is_empty() {
                return None;
            }
            fields
                .iter()
                .find(|(k, _)| k == shape.time_key)
                .and_then(|(_, v)| json_time(v.get()))
        };
        let time = shape.time_param.or_else(record_time).unwrap_or(shape.now);
        let out = &mut self.out.lines;
        out.push(b'{');
        let mut first = !shape
            .format
            .write_prefix(out, &mut self.times, shape.tag_json, time)
            .map_err(|e| BodyError::malformed(e.to_string()))?;
        for (key, value) in fields {
            if shape.format.is_reserved(key.as_bytes()) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            let raw = value.get().as_bytes();
            if let Some(number) = number_out_of_range(raw) {
                return Err(BodyError::malformed(format!(
                    "invalid JSON: the number {} in field {key:?} is out of range \
                     (beyond a 64-bit float: no JSON loader could read it)",
                    String::from_utf8_lossy(&number[..number.len().min(40)])
                )));
            }
            write_str(out, key);
            out.push(b':');
            write_raw(out, raw);
        }
        out.extend_from_slice(b"}\n");
        self.out.count(time);
        Ok(())
    }
}

/// The event time from a JSON value: a number of epoch seconds or a time string.
fn json_time(raw: &str) -> Option<EventTime> {
    if raw.starts_with('"') {
        let s: Cow<str> = serde_json::from_str(raw).ok()?;
        parse_time_text(&s)
    } else {
        parse_time_text(raw)
    }
}

/// The first number in a raw JSON value that a 64-bit float cannot hold (`1e400`, or 400
/// digits), if any. Values are copied unparsed, and serde_json's syntax check of a raw value
/// does not range-check its numbers; but serde_json itself (and so every loader that parses
/// the line: the importer, Redshift's JSON reader) refuses such a number, so an event holding
/// one would be acked and then never load. Refused here instead, with the body.
///
/// Cheap on the common value: a string holds no number, and a number can only overflow with
/// an exponent (`e`/`E`) or with more than 308 digits, so neither kind is scanned byte by byte.
fn number_out_of_range(raw: &[u8]) -> Option<&[u8]> {
    const MAX_PLAIN_DIGITS: usize = 308;
    if raw.first() == Some(&b'"')
        || (raw.len() <= MAX_PLAIN_DIGITS && memchr::memchr2(b'e', b'E', raw).is_none())
    {
        return None;
    }
    let overflows = |number: &[u8]| {
        std::str::from_utf8(number)
            .ok()
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|v| v.is_infinite())
    };
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                // Skip the string: to the closing quote that is not escaped.
                i += 1;
                while i < raw.len() && raw[i] != b'"' {
                    i += if raw[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < raw.len()
                    && matches!(raw[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                if overflows(&raw[start..i]) {
                    return Some(&raw[start..i]);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Copies a raw JSON value; one that spans lines (pretty-printed input) is compacted, since a
/// line break outside a string would split the NDJSON line. (Inside strings JSON has no raw
/// line breaks, so any is whitespace between tokens.)
fn write_raw(out: &mut Vec<u8>, raw: &[u8]) {
    if !raw.iter().any(|b| *b == b'\n' || *b == b'\r') {
        out.extend_from_slice(raw);
        return;
    }
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                _ => out.push(b),
            }
        }
    }
}

/// A map key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A top-level JSON value: one record, or an array of records.
enum Top<'de> {
    Record(Fields<'de>),
    Records(Vec<Fields<'de>>),
}

impl<'de> de::Deserialize<'de> for Top<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object (a record) or an array of objects")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Top<'de>, A::Error> {
                fields(map).map(Top::Record)
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Top<'de>, A::Error> {
                let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(Record(f)) = seq.next_element()? {
                    records.push(f);
                }
                Ok(Top::Records(records))
            }
        }
        d.deserialize_any(V)
    }
}

/// An element of a top-level array: must be a record.
struct Record<'de>(Fields<'de>);

impl<'de> de::Deserialize<'de> for Record<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Record<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object (each element of an array must be a record)")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Record<'de>, A::Error> {
                fields(map).map(Record)
            }
        }
        d.deserialize_map(V)
    }
}

fn fields<'de, A: MapAccess<'de>>(mut map: A) -> std::result::Result<Fields<'de>, A::Error> {
    let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
    while let Some(key) = map.next_key::<Key<'de>>()? {
        let value: &'de RawValue = map.next_value()?;
        fields.push((key.0, value));
    }
    Ok(fields)
}

// -------------------------------------------------------------------------------- msgpack

/// Appends the lines of a msgpack body (see the module doc for the shapes).
pub fn msgpack_lines(body: &[u8], shape: &Shape, out: &mut Lines) -> Result<()> {
    let mut times = shape.format.renderer();
    let mut offset = 0;
    while offset < body.len() {
        let len = match FrameScanner::default().scan(&body[offset..], body.len() - offset) {
            Ok(Some(len)) => len,
            Ok(None) | Err(DecodeError::Truncated) => {
                return Err(BodyError::malformed(format!(
                    "msgpack value at byte offset {offset} is truncated"
                )));
            }
            Err(e) => {
                return Err(BodyError::malformed(format!(
                    "msgpack value at byte offset {offset}: {e}"
                )));
            }
        };
        let value = &body[offset..offset + len];
        msgpack_value(value, shape, &mut times, out).map_err(|e| {
            BodyError::malformed(format!("msgpack value at byte offset {offset}: {e}"))
        })?;
        offset += len;
    }
    Ok(())
}

fn msgpack_value(
    value: &[u8],
    shape: &Shape,
    times: &mut TimeRenderer,
    out: &mut Lines,
) -> std::result::Result<(), DecodeError> {
    let mut r = Reader::new(value);
    let record = |r: &mut Reader, times: &mut TimeRenderer, out: &mut Lines| {
        let time = shape
            .time_param
            .or_else(|| msgpack_record_time(r, shape.time_key))
            .unwrap_or(shape.now);
        shape
            .format
            .write_line(&mut out.lines, times, shape.tag_json, time, r)?;
        out.count(time);
        Ok::<(), DecodeError>(())
    };
    use rmp::Marker as M;
    match r.peek()? {
        M::FixMap(_) | M::Map16 | M::Map32 => record(&mut r, times, out),
        M::FixArray(_) | M::Array16 | M::Array32 => {
            let n = r.array_len()?.unwrap_or(0);
            let first_is_map = n > 0 && matches!(r.peek()?, M::FixMap(_) | M::Map16 | M::Map32);
            if n == 2 && !first_is_map {
                // An event: [time, record] (fluent-bit), time maybe [time, {metadata}].
                let Some(time) = r.event_time()? else {
                    return Ok(()); // group marker
                };
                let time = shape.time_param.unwrap_or(time);
                shape
                    .format
                    .write_line(&mut out.lines, times, shape.tag_json, time, &mut r)?;
                out.count(time);
                return Ok(());
            }
            for i in 0..n {
                if !matches!(r.peek()?, M::FixMap(_) | M::Map16 | M::Map32) {
                    return Err(DecodeError::Invalid(format!(
                        "array element {i} is a {}, expected a record (map)",
                        type_name(r.peek()?)
                    )));
                }
                record(&mut r, times, out)?;
            }
            Ok(())
        }
        other => Err(DecodeError::Invalid(format!(
            "a {} where a record (map), an array of records or an event [time, record] was expected",
            type_name(other)
        ))),
    }
}

/// The time in a msgpack record's `time_key` field, if present and readable (the reader is
/// left where it was).
fn msgpack_record_time(r: &Reader, time_key: &str) -> Option<EventTime> {
    if time_key.is_empty() {
        return None;
    }
    let mut r = r.clone();
    let n = r.map_len().ok()??;
    for _ in 0..n {
        let key = r.bytes().ok()?;
        if key == Some(time_key.as_bytes()) {
            if let Ok(Some(text)) = r.clone().bytes() {
                return parse_time_text(std::str::from_utf8(text).ok()?);
            }
            return r.event_time().ok()?.filter(in_range);
        }
        if key.is_none() {
            r.skip().ok()?;
        }
        r.skip().ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::transcode::TimeFormat;

    const T0: i64 = 1_714_566_896;

    fn run(
        kind: BodyKind,
        body: &[u8],
        time_key: &str,
        param: Option<EventTime>,
    ) -> Result<Vec<String>> {
        let format = LineFormat::new("time", TimeFormat::EpochSeconds, 3, "tag");
        let mut tag = Vec::new();
        write_str(&mut tag, "app.web");
        let shape = Shape {
            format: &format,
            tag_json: &tag,
            time_key,
            time_param: param,
            now: EventTime { secs: 1, nanos: 0 },
        };
        let mut out = Lines::with_capacity(0);
        match kind {
            BodyKind::Json => json_lines(body, &shape, &mut out)?,
            BodyKind::Msgpack => msgpack_lines(body, &shape, &mut out)?,
            BodyKind::Form => unreachable!(),
        }
        let text = String::from_utf8(out.lines).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert_eq!(lines.len() as u64, out.events);
        for l in &lines {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        Ok(lines)
    }

    #[test]
    fn json_styles() {
        let one = run(BodyKind::Json, br#"{"a":1,"b":"x"}"#, "time", None).unwrap();
        assert_eq!(one, [r#"{"time":1.000,"tag":"app.web","a":1,"b":"x"}"#]);
        let arr = run(BodyKind::Json, br#"[{"a":1},{"a":2}]"#, "time", None).unwrap();
        assert_eq!(arr.len(), 2);
        let nd = run(
            BodyKind::Json,
            b"{\"a\":1}\n{\"a\":2}\r\n\n{\"a\":3}\n",
            "",
            None,
        )
        .unwrap();
        assert_eq!(nd.len(), 3);
        let stream = run(BodyKind::Json, br#"{"a":1}{"a":2}[{"a":3}]"#, "", None).unwrap();
        assert_eq!(stream.len(), 3);
        assert!(run(BodyKind::Json, b"  \n", "", None).unwrap().is_empty());
    }

    #[test]
    fn json_time_key_and_reserved_keys() {
        let lines = run(
            BodyKind::Json,
            br#"{"date":1714566896.25,"time":"x","tag":"y","k":[1, 2]}"#,
            "date",
            None,
        )
        .unwrap();
        assert_eq!(
            lines,
            [r#"{"time":1714566896.250,"tag":"app.web","date":1714566896.25,"k":[1, 2]}"#]
        );
        let iso = run(
            BodyKind::Json,
            br#"{"ts":"2024-05-01T12:34:56.5Z"}"#,
            "ts",
            None,
        )
        .unwrap();
        assert!(iso[0].starts_with(r#"{"time":1714566896.500,"#), "{iso:?}");
        // ?time= wins; an unreadable time falls back to now and stays in the record.
        let p = run(
            BodyKind::Json,
            br#"{"time":5}"#,
            "time",
            Some(EventTime { secs: T0, nanos: 0 }),
        )
        .unwrap();
        assert!(p[0].starts_with(r#"{"time":1714566896.000"#));
        let bad = run(BodyKind::Json, br#"{"d":"soon"}"#, "d", None).unwrap();
        assert_eq!(bad, [r#"{"time":1.000,"tag":"app.web","d":"soon"}"#]);
    }

    #[test]
    fn json_pretty_is_compacted_and_escapes_kept() {
        let body =
            b"{\n  \"a\": {\n    \"b\": \"line\\nbreak \\u00e9\"\n  },\n  \"k\\\"q\": [1,\n 2]\n}";
        let lines = run(BodyKind::Json, body, "", None).unwrap();
        assert_eq!(
            lines,
            [r#"{"time":1.000,"tag":"app.web","a":{"b":"line\nbreak \u00e9"},"k\"q":[1,2]}"#]
        );
    }

    #[test]
    fn json_errors_name_the_position() {
        let e = run(BodyKind::Json, b"{\"a\":1}\n{\"a\":2\n", "", None).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.detail.contains("line 3"), "{}", e.detail);
        let e = run(BodyKind::Json, b"{\"a\":1}\n[{\"a\":1}, 5]", "", None).unwrap_err();
        assert!(e.detail.contains("line 2"), "{}", e.detail);
        let e = run(BodyKind::Json, b"\"just a string\"", "", None).unwrap_err();
        assert!(e.detail.contains("line 1 column 15"), "{}", e.detail);
    }

    fn mp(v: &rmpv::Value) -> Vec<u8> {
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, v).unwrap();
        b
    }

    #[test]
    fn numbers_beyond_a_float_are_refused_like_serde_json_refuses_them() {
        // Each value: is it refused by serde_json's parser (what loaders use)? The body must
        // be refused exactly then.
        let values = [
            "1",
            "-0",
            "1.5e10",
            "1e308",
            "1.7976931348623157e308",
            "1e309",
            "-1e400",
            "1e-400",
            "0.0e99999",
            "[1, 2e5, {\"e\": 3E400}]",
            "{\"k\": \"1e400\"}",
            "[true, false, 1e999]",
            "\"\\\"1e999\"",
            "[1E+400]",
            "[1e-99999999]",
        ];
        let long_digits = "9".repeat(400);
        let long_ok = format!("0.{long_digits}");
        for v in values
            .iter()
            .copied()
            .chain([long_digits.as_str(), long_ok.as_str()])
        {
            let loader_refuses = serde_json::from_str::<serde_json::Value>(v).is_err();
            let body = format!("{{\"a\": {v}}}");
            let result = run(BodyKind::Json, body.as_bytes(), "", None);
            assert_eq!(result.is_err(), loader_refuses, "value {v}: {result:?}");
            if let Err(e) = result {
                assert_eq!(e.status, 400);
                assert!(e.detail.contains("out of range"), "{}", e.detail);
            }
        }
    }

    #[test]
    fn msgpack_styles() {
        use rmpv::Value as V;
        let rec = |i: i64| V::Map(vec![(V::from("i"), V::from(i))]);
        let et = V::Ext(0, [(T0 as u32).to_be_bytes(), 5u32.to_be_bytes()].concat());
        let mut body = mp(&rec(1));
        body.extend(mp(&V::Array(vec![rec(2), rec(3)])));
        body.extend(mp(&V::Array(vec![
            V::Array(vec![et.clone(), V::Map(vec![])]),
            rec(4),
        ])));
        body.extend(mp(&V::Array(vec![V::from(T0), rec(5)])));
        body.extend(mp(&V::Array(vec![
            V::Array(vec![V::from(-1), V::Map(vec![])]),
            V::Map(vec![]),
        ])));
        let lines = run(BodyKind::Msgpack, &body, "time", None).unwrap();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[3], r#"{"time":1714566896.000,"tag":"app.web","i":4}"#);
        assert_eq!(lines[4], r#"{"time":1714566896.000,"tag":"app.web","i":5}"#);
        let timed = mp(&V::Map(vec![(V::from("date"), V::F64(T0 as f64 + 0.5))]));
        let lines = run(BodyKind::Msgpack, &timed, "date", None).unwrap();
        assert!(
            lines[0].starts_with(r#"{"time":1714566896.500"#),
            "{lines:?}"
        );
    }

    #[test]
    fn msgpack_errors_name_the_offset() {
        use rmpv::Value as V;
        let mut body = mp(&V::Map(vec![]));
        let at = body.len();
        body.extend(mp(&V::from(7)));
        let e = run(BodyKind::Msgpack, &body, "", None).unwrap_err();
        assert!(
            e.detail.contains(&format!("byte offset {at}")),
            "{}",
            e.detail
        );
        let e = run(BodyKind::Msgpack, &[0x81, 0xa1], "", None).unwrap_err();
        assert!(e.detail.contains("byte offset 0"), "{}", e.detail);
    }

    #[test]
    fn decompression_and_cap() {
        use std::io::Write;
        let data = b"{\"a\":1}\n".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            decompress(Encoding::Gzip, &gz, 1 << 20).unwrap().0.as_ref(),
            &data[..]
        );
        assert_eq!(
            decompress(Encoding::Gzip, &gz, 100).unwrap_err().status,
            413
        );
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            decompress(Encoding::Zstd, &z, 1 << 20).unwrap().0.as_ref(),
            &data[..]
        );
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(&data).unwrap();
        let zl = zl.finish().unwrap();
        assert_eq!(
            decompress(Encoding::Deflate, &zl, 1 << 20)
                .unwrap()
                .0
                .as_ref(),
            &data[..]
        );
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            decompress(Encoding::Snappy, &raw, 1 << 20)
                .unwrap()
                .0
                .as_ref(),
            &data[..]
        );
        assert_eq!(
            decompress(Encoding::Snappy, &raw, 10).unwrap_err().status,
            413
        );
        let mut fr = snap::write::FrameEncoder::new(Vec::new());
        fr.write_all(&data).unwrap();
        let fr = fr.into_inner().unwrap();
        assert_eq!(
            decompress(Encoding::Snappy, &fr, 1 << 20)
                .unwrap()
                .0
                .as_ref(),
            &data[..]
        );
        assert_eq!(
            decompress(Encoding::Gzip, b"nope", 100).unwrap_err().status,
            400
        );
        assert_eq!(content_encoding(Some("br")).unwrap_err().status, 415);
    }

    #[test]
    fn form_and_times() {
        let pairs = form_pairs(b"json=%7B%22a%22%3A1%7D&time=1714566896.5&x=a+b%zz");
        assert_eq!(pairs[0], (b"json".to_vec(), br#"{"a":1}"#.to_vec()));
        assert_eq!(pairs[2].1, b"a b%zz".to_vec());
        assert_eq!(
            parse_time_text("1714566896.123456789"),
            Some(EventTime {
                secs: T0,
                nanos: 123_456_789
            })
        );
        assert_eq!(
            parse_time_text("2024-05-01 12:34:56.25"),
            Some(EventTime {
                secs: T0,
                nanos: 250_000_000
            })
        );
        assert_eq!(parse_time_text("-5"), None);
        assert_eq!(parse_time_text("1714566896000"), None); // milliseconds: not a time

        assert_eq!(parse_time_text("1.2.3"), None);
    }
}
