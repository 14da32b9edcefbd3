//! Forward-protocol frames: which mode a frame is in, its options, and its entries turned into
//! NDJSON lines. Facts from the spec and from real clients (see shared/reference):
//!
//! - `[tag, time, record, option?]` is Message mode (time: int, float or EventTime).
//! - `[tag, [[time, record], ...], option?]` is Forward mode.
//! - `[tag, str|bin, option?]` is PackedForward: concatenated `[time, record]` entries; fluentd
//!   sends them as str32, others as bin. With `compressed: "gzip"` the bytes are gzip, possibly
//!   several members (CompressedPackedForward); `"text"` means plain.
//! - Time may also be fluent-bit's `[time, {metadata}]`; negative times are fluent-bit group
//!   markers and carry no event.
//! - Unknown option keys are ignored; `chunk` asks for an ack echoing its bytes exactly.
//!
//! Pure functions over one frame's bytes (no I/O). A frame is transcoded whole or refused
//! whole: on error the caller drops what was written, so no part of a bad frame is stored.

use crate::intake::decompress::{Codec, DecompressError, Held, decompress_capped};
use crate::intake::msgpack::{DecodeError, EventTime, Reader, type_name};
use crate::intake::transcode::{LineFormat, TimeRenderer};
use std::borrow::Cow;

/// Why a frame was refused; `reason` is the metric label.
#[derive(Debug)]
pub struct FrameError {
    pub reason: &'static str,
    pub detail: String,
}

impl FrameError {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> FrameError {
        FrameError {
            reason,
            detail: detail.into(),
        }
    }
}

impl From<DecodeError> for FrameError {
    fn from(e: DecodeError) -> Self {
        FrameError::new("malformed", e.to_string())
    }
}

type Result<T> = std::result::Result<T, FrameError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Default)]
pub struct Options<'a> {
    /// Present: the client wants `{"ack": chunk}` once the events are durable.
    pub chunk: Option<&'a [u8]>,
    pub compressed: Option<Compression>,
    /// 0 logs, 1 metrics, 2 traces (forward protocol v1.5).
    pub signal: u64,
}

enum Entries<'a> {
    Message {
        time: Option<EventTime>,
        record: Reader<'a>,
    },
    Forward {
        entries: Reader<'a>,
        count: usize,
    },
    Packed {
        blob: &'a [u8],
    },
}

pub struct Frame<'a> {
    pub tag: &'a str,
    pub options: Options<'a>,
    entries: Entries<'a>,
}

/// Per-frame limits, so one frame cannot take unbounded memory or time.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest decompressed payload of a CompressedPackedForward frame (bomb guard).
    pub max_decompressed: usize,
    /// Most entries one frame may carry.
    pub max_entries: usize,
}

/// What transcoding a frame produced.
pub struct Lines {
    pub events: u64,
    pub first_time: Option<EventTime>,
}

/// Parses the frame's envelope. `Ok(None)` is a heartbeat (`nil`).
pub fn parse(bytes: &[u8]) -> Result<Option<Frame<'_>>> {
    let mut r = Reader::new(bytes);
    if r.nil()? {
        return Ok(None);
    }
    let Some(len) = r.array_len()? else {
        return Err(FrameError::new(
            "malformed",
            format!("a frame must be an array, got {}", type_name(r.peek()?)),
        ));
    };
    if !(2..=4).contains(&len) {
        return Err(FrameError::new(
            "malformed",
            format!("a frame has 2 to 4 elements, got {len}"),
        ));
    }
    let tag_bytes = r
        .bytes()?
        .ok_or_else(|| FrameError::new("malformed", "the tag (element 0) must be a string"))?;
    let tag = std::str::from_utf8(tag_bytes)
        .map_err(|_| FrameError::new("malformed", "the tag is not valid UTF-8"))?;
    if tag.is_empty() {
        return Err(FrameError::new("malformed", "the tag is empty"));
    }
    use rmp::Marker as M;
    let (entries, fixed) = match r.peek()? {
        M::FixArray(_) | M::Array16 | M::Array32 => {
            let count = r.array_len()?.unwrap_or(0);
            let start = r.clone();
            for _ in 0..count {
                r.skip()?;
            }
            (
                Entries::Forward {
                    entries: start,
                    count,
                },
                2,
            )
        }
        M::FixStr(_) | M::Str8 | M::Str16 | M::Str32 | M::Bin8 | M::Bin16 | M::Bin32 => {
            let blob = r.bytes()?.unwrap_or_default();
            (Entries::Packed { blob }, 2)
        }
        _ => {
            let time = r.event_time()?;
            let record = r.clone();
            r.skip()
                .map_err(|_| FrameError::new("malformed", "Message mode frame without a record"))?;
            (Entries::Message { time, record }, 3)
        }
    };
    if len < fixed || len > fixed + 1 {
        return Err(FrameError::new(
            "malformed",
            format!(
                "a frame of this mode has {fixed} or {} elements, got {len}",
                fixed + 1
            ),
        ));
    }
    let options = if len > fixed {
        parse_options(&mut r)?
    } else {
        Options::default()
    };
    if !r.is_empty() {
        return Err(FrameError::new(
            "malformed",
            "bytes after the frame's last element",
        ));
    }
    Ok(Some(Frame {
        tag,
        options,
        entries,
    }))
}

fn parse_options<'a>(r: &mut Reader<'a>) -> Result<Options<'a>> {
    let mut options = Options::default();
    if r.nil()? {
        return Ok(options);
    }
    let Some(n) = r.map_len()? else {
        return Err(FrameError::new(
            "malformed",
            "the option element must be a map",
        ));
    };
    for _ in 0..n {
        let key = r.bytes()?;
        match key {
            Some(b"chunk") => {
                options.chunk = Some(r.bytes()?.ok_or_else(|| {
                    FrameError::new("malformed", "option `chunk` must be a string")
                })?);
            }
            Some(b"compressed") => {
                let v = r.bytes()?.ok_or_else(|| {
                    FrameError::new("malformed", "option `compressed` must be a string")
                })?;
                options.compressed = Some(match v {
                    b"gzip" => Compression::Gzip,
                    b"zstd" => Compression::Zstd,
                    b"text" => Compression::None,
                    other => {
                        return Err(FrameError::new(
                            "unsupported",
                            format!("unknown compression {:?}", String::from_utf8_lossy(other)),
                        ));
                    }
                });
            }
            Some(b"fluent_signal") => {
                options.signal = match r.int()? {
                    Some(v) if v >= 0 => v as u64,
                    _ => {
                        return Err(FrameError::new(
                            "malformed",
                            "option `fluent_signal` must be a non-negative integer",
                        ));
                    }
                };
            }
            _ => {
                if key.is_none() {
                    r.skip()?;
                }
                r.skip()?;
            }
        }
    }
    Ok(options)
}

impl Frame<'_> {
    /// Appends one NDJSON line per event to `out`. On error `out` holds a partial result that
    /// the caller must discard: a frame is stored whole or not at all.
    pub fn transcode(
        &self,
        format: &LineFormat,
        times: &mut TimeRenderer,
        tag_json: &[u8],
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Result<Lines> {
        let mut lines = Lines {
            events: 0,
            first_time: None,
        };
        let mut entries = 0usize;
        let mut emit =
            |time: Option<EventTime>, record: &mut Reader, out: &mut Vec<u8>| -> Result<()> {
                entries += 1;
                if entries > limits.max_entries {
                    return Err(FrameError::new(
                        "too_many_entries",
                        format!("more than {} entries in one frame", limits.max_entries),
                    ));
                }
                match time {
                    Some(time) => {
                        format.write_line(out, times, tag_json, time, record)?;
                        lines.events += 1;
                        lines.first_time.get_or_insert(time);
                    }
                    None => {
                        record.skip()?;
                    }
                }
                Ok(())
            };
        match &self.entries {
            Entries::Message { time, record } => emit(*time, &mut record.clone(), out)?,
            Entries::Forward { entries, count } => {
                let mut r = entries.clone();
                for i in 0..*count {
                    read_entry(&mut r, i, &mut emit, out)?;
                }
            }
            Entries::Packed { blob } => {
                // `_held`: the payload's share of the decompression budget, until it is read.
                let (data, _held) = self.decompress(blob, limits.max_decompressed)?;
                let mut r = Reader::new(&data);
                let mut i = 0;
                while !r.is_empty() {
                    read_entry(&mut r, i, &mut emit, out)?;
                    i += 1;
                }
            }
        }
        Ok(lines)
    }

    fn decompress<'b>(
        &self,
        blob: &'b [u8],
        max: usize,
    ) -> Result<(Cow<'b, [u8]>, Option<Held<'static>>)> {
        let codec = match self.options.compressed.unwrap_or(Compression::None) {
            Compression::None => return Ok((Cow::Borrowed(blob), None)),
            Compression::Gzip => Codec::Gzip,
            Compression::Zstd => Codec::Zstd,
        };
        decompress_capped(codec, blob, max)
            .map(|d| (Cow::Owned(d.data), Some(d.held)))
            .map_err(|e| match e {
                DecompressError::Busy { budget } => FrameError::new(
                    "busy",
                    format!(
                        "decompressed payloads of all connections hold the whole \
                         decompress_memory budget ({budget} bytes) right now; the frame is not \
                         acked (resend it)"
                    ),
                ),
                DecompressError::TooLarge => FrameError::new(
                    "too_large",
                    format!(
                        "{} payload decompresses to more than {max} bytes",
                        codec.name()
                    ),
                ),
                DecompressError::Corrupt(e) => {
                    FrameError::new("decompress", format!("{} payload: {e}", codec.name()))
                }
            })
    }
}

/// Reads one `[time, record]` entry.
fn read_entry(
    r: &mut Reader,
    index: usize,
    emit: &mut impl FnMut(Option<EventTime>, &mut Reader, &mut Vec<u8>) -> Result<()>,
    out: &mut Vec<u8>,
) -> Result<()> {
    match r.array_len()? {
        Some(2) => {}
        Some(n) => {
            return Err(FrameError::new(
                "malformed",
                format!("entry {index} has {n} elements, expected [time, record]"),
            ));
        }
        None => {
            return Err(FrameError::new(
                "malformed",
                format!(
                    "entry {index} is a {}, expected [time, record]",
                    type_name(r.peek()?)
                ),
            ));
        }
    }
    let time = r
        .event_time()
        .map_err(|e| FrameError::new("malformed", format!("entry {index}: {e}")))?;
    emit(time, r, out)
        .map_err(|e| FrameError::new(e.reason, format!("entry {index}: {}", e.detail)))
}

/// `{"ack": chunk}` with the chunk echoed byte for byte as a msgpack str.
pub fn ack_message(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 10);
    out.extend_from_slice(&[0x81, 0xa3, b'a', b'c', b'k']);
    let n = chunk.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 65536 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(chunk);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::transcode::TimeFormat;
    use rmpv::Value;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    const TEST_LIMITS: Limits = Limits {
        max_decompressed: 1 << 20,
        max_entries: 1000,
    };

    fn rec(i: i64) -> Value {
        Value::Map(vec![(Value::from("i"), Value::from(i))])
    }

    fn lines_of(frame: &[u8]) -> (String, Lines) {
        let f = parse(frame).unwrap().unwrap();
        let fmt = LineFormat::new("", TimeFormat::Rfc3339, 0, "");
        let mut out = Vec::new();
        let lines = f
            .transcode(&fmt, &mut fmt.renderer(), b"\"t\"", &TEST_LIMITS, &mut out)
            .unwrap();
        (String::from_utf8(out).unwrap(), lines)
    }

    #[test]
    fn every_mode() {
        let message = enc(&Value::Array(vec![
            Value::from("t"),
            Value::from(5),
            rec(1),
        ]));
        assert_eq!(lines_of(&message).0, "{\"i\":1}\n");
        let forward = enc(&Value::Array(vec![
            Value::from("t"),
            Value::Array(vec![
                Value::Array(vec![Value::from(5), rec(1)]),
                Value::Array(vec![Value::from(-1), rec(99)]),
                Value::Array(vec![
                    Value::Array(vec![Value::from(6), Value::Map(vec![])]),
                    rec(2),
                ]),
            ]),
            Value::Map(vec![
                (Value::from("chunk"), Value::from("abc")),
                (Value::from("x"), Value::from(1)),
            ]),
        ]));
        let (text, lines) = lines_of(&forward);
        assert_eq!(text, "{\"i\":1}\n{\"i\":2}\n");
        assert_eq!(lines.events, 2);
        assert_eq!(
            parse(&forward).unwrap().unwrap().options.chunk,
            Some(&b"abc"[..])
        );
        let mut blob = enc(&Value::Array(vec![Value::from(5), rec(1)]));
        blob.extend(enc(&Value::Array(vec![Value::from(6), rec(2)])));
        let packed = enc(&Value::Array(vec![
            Value::from("t"),
            Value::Binary(blob.clone()),
        ]));
        assert_eq!(lines_of(&packed).0, "{\"i\":1}\n{\"i\":2}\n");
        let mut gz = Vec::new();
        for half in [&blob[..blob.len() / 2], &blob[blob.len() / 2..]] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, half).unwrap();
            gz.extend(e.finish().unwrap());
        }
        let compressed = enc(&Value::Array(vec![
            Value::from("t"),
            Value::Binary(gz),
            Value::Map(vec![(Value::from("compressed"), Value::from("gzip"))]),
        ]));
        assert_eq!(lines_of(&compressed).0, "{\"i\":1}\n{\"i\":2}\n");
        assert!(parse(&[0xc0]).unwrap().is_none());
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let cases = [
            enc(&Value::from("nope")),
            enc(&Value::Array(vec![Value::from(1), Value::from(2), rec(1)])),
            enc(&Value::Array(vec![Value::from("t")])),
            enc(&Value::Array(vec![
                Value::from("t"),
                Value::from(1),
                Value::from("not a map"),
            ])),
            enc(&Value::Array(vec![
                Value::from("t"),
                Value::Array(vec![Value::from(1)]),
            ])),
            enc(&Value::Array(vec![
                Value::from("t"),
                Value::Binary(vec![0x92, 0x01]),
            ])),
        ];
        for case in cases {
            let fmt = LineFormat::new("", TimeFormat::Rfc3339, 0, "");
            let result = parse(&case).and_then(|f| {
                f.map(|f| {
                    f.transcode(
                        &fmt,
                        &mut fmt.renderer(),
                        b"\"t\"",
                        &TEST_LIMITS,
                        &mut Vec::new(),
                    )
                    .map(|_| ())
                })
                .unwrap_or(Ok(()))
            });
            assert!(result.is_err(), "{case:02x?}");
        }
    }

    #[test]
    fn gzip_bomb_is_capped() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, &vec![0x90u8; 10 << 20]).unwrap();
        let frame = enc(&Value::Array(vec![
            Value::from("t"),
            Value::Binary(e.finish().unwrap()),
            Value::Map(vec![(Value::from("compressed"), Value::from("gzip"))]),
        ]));
        let f = parse(&frame).unwrap().unwrap();
        let fmt = LineFormat::new("", TimeFormat::Rfc3339, 0, "");
        let err = f
            .transcode(
                &fmt,
                &mut fmt.renderer(),
                b"\"t\"",
                &TEST_LIMITS,
                &mut Vec::new(),
            )
            .err()
            .unwrap();
        assert_eq!(err.reason, "too_large");
    }

    #[test]
    fn ack_echoes_bytes() {
        for n in [0usize, 5, 31, 32, 255, 256, 70000] {
            let chunk: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let msg = ack_message(&chunk);
            let v = rmpv::decode::read_value(&mut &msg[..]).unwrap();
            let Value::Map(m) = v else { panic!() };
            assert_eq!(m[0].0.as_str(), Some("ack"));
            assert_eq!(
                m[0].1
                    .as_str()
                    .map(|s| s.as_bytes().to_vec())
                    .unwrap_or_else(|| match &m[0].1 {
                        Value::String(s) => s.as_bytes().to_vec(),
                        _ => panic!(),
                    }),
                chunk
            );
        }
    }
}
