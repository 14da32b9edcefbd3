//! Framing: a forward connection's read buffer, cut into whole frames. Owns the bytes read
//! and not yet taken, and the choice, made once per connection, between msgpack framing and
//! fluentd's JSON framing (a connection that starts with `[` or `{`; neither byte can start a
//! msgpack frame). It must never hand out part of a frame, and never buffer more than
//! `max_frame_bytes` of one frame.

use super::frame::FrameError;
use super::json::{self, JsonScanner};
use crate::intake::msgpack::FrameScanner;
use std::borrow::Cow;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How this connection's frames are delimited; decided by its first byte.
enum Framing {
    Unknown,
    Msgpack(FrameScanner),
    Json(JsonScanner),
}

pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the first byte not yet taken as a frame is.
    start: usize,
    framing: Framing,
    max_frame: usize,
    eof: bool,
}

/// Buffered bytes kept before the ones already taken are moved out of the way.
const COMPACT_AFTER: usize = 1 << 20;
/// Room kept free for one read, and how much more is reserved when it runs short.
const MIN_READ_ROOM: usize = 32 << 10;
const READ_RESERVE: usize = 64 << 10;

impl FrameReader {
    /// Starts on `buf`, of which `buf[start..]` is not yet taken (bytes a client sent after
    /// its handshake).
    pub fn new(buf: Vec<u8>, start: usize, max_frame: usize) -> FrameReader {
        FrameReader {
            buf,
            start,
            framing: Framing::Unknown,
            max_frame,
            eof: false,
        }
    }

    /// Whether the client frames in JSON (then acks are JSON too).
    pub fn is_json(&self) -> bool {
        matches!(self.framing, Framing::Json(_))
    }

    /// The client closed its side: no more bytes will come.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Bytes read that are not (yet) a whole frame.
    pub fn unread(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame already read, as msgpack (a JSON frame is converted). `Ok(None)`:
    /// more bytes are needed. Counts the frame's bytes as sent.
    pub fn next_frame(&mut self) -> Result<Option<Cow<'_, [u8]>>, FrameError> {
        let pending = &self.buf[self.start..];
        if matches!(self.framing, Framing::Unknown) {
            let Some(&first) = pending.first() else {
                return Ok(None);
            };
            self.framing = if matches!(first, b'[' | b'{') {
                Framing::Json(JsonScanner::default())
            } else {
                Framing::Msgpack(FrameScanner::default())
            };
        }
        let scanned = match &mut self.framing {
            Framing::Msgpack(scanner) => scanner
                .scan(pending, self.max_frame)
                .map_err(|e| e.to_string()),
            Framing::Json(scanner) => scanner.scan(pending, self.max_frame),
            Framing::Unknown => unreachable!("framing is chosen above"),
        };
        let len = match scanned {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => return Err(FrameError::new("malformed", e)),
        };
        let raw = &self.buf[self.start..self.start + len];
        self.start += len;
        metrics::counter!("rin_forward_bytes_total").increment(len as u64);
        match self.framing {
            Framing::Json(_) => json::to_msgpack(raw)
                .map(|frame| Some(Cow::Owned(frame)))
                .map_err(|e| FrameError::new("malformed", e)),
            _ => Ok(Some(Cow::Borrowed(raw))),
        }
    }

    /// Drops the bytes already taken: all of them once everything is taken, else once they
    /// are more than a MiB and more than half the buffer.
    pub fn compact(&mut self) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > COMPACT_AFTER && self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Makes sure the next read has room.
    pub fn reserve_for_read(&mut self) {
        if self.buf.capacity() - self.buf.len() < MIN_READ_ROOM {
            self.buf.reserve(READ_RESERVE);
        }
    }

    /// Reads what the client sent; 0 bytes read means the client closed its side.
    pub async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<usize> {
        let n = reader.read_buf(&mut self.buf).await?;
        if n == 0 {
            self.eof = true;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::forward::frame;

    fn msgpack(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn tag_of(bytes: &[u8]) -> String {
        frame::parse(bytes).unwrap().unwrap().tag.to_string()
    }

    #[test]
    fn msgpack_frames_come_out_whole_and_a_partial_one_stays() {
        use rmpv::Value;
        let a = msgpack(&Value::Array(vec![
            "a".into(),
            1.into(),
            Value::Map(vec![]),
        ]));
        let b = msgpack(&Value::Array(vec![
            "b".into(),
            2.into(),
            Value::Map(vec![]),
        ]));
        let mut buf = [a.clone(), b.clone()].concat();
        buf.extend_from_slice(&a[..3]);
        let mut frames = FrameReader::new(buf, 0, 1 << 20);
        assert_eq!(tag_of(&frames.next_frame().unwrap().unwrap()), "a");
        assert_eq!(tag_of(&frames.next_frame().unwrap().unwrap()), "b");
        assert!(frames.next_frame().unwrap().is_none());
        assert!(!frames.is_json());
        assert_eq!(frames.unread(), 3);
        frames.compact();
        assert_eq!(frames.unread(), 3);
    }

    #[test]
    fn a_connection_that_starts_with_a_bracket_is_json_framed() {
        let buf = br#"["app.json", 1700000000, {"a": 1}] ["app.two", 1, {}]"#.to_vec();
        let mut frames = FrameReader::new(buf, 0, 1 << 20);
        assert_eq!(tag_of(&frames.next_frame().unwrap().unwrap()), "app.json");
        assert!(frames.is_json());
        assert_eq!(tag_of(&frames.next_frame().unwrap().unwrap()), "app.two");
        assert!(frames.next_frame().unwrap().is_none());
        frames.compact();
        assert_eq!(frames.unread(), 0);
    }

    #[test]
    fn bytes_after_a_handshake_are_framed_from_start() {
        let frame = msgpack(&rmpv::Value::Array(vec![
            "t".into(),
            1.into(),
            rmpv::Value::Map(vec![]),
        ]));
        let buf = [b"PING-bytes".to_vec(), frame].concat();
        let mut frames = FrameReader::new(buf, 10, 1 << 20);
        assert_eq!(tag_of(&frames.next_frame().unwrap().unwrap()), "t");
    }

    #[test]
    fn garbage_is_a_malformed_frame() {
        let mut frames = FrameReader::new(vec![0xc1, 0, 0], 0, 1 << 20);
        let err = frames.next_frame().unwrap_err();
        assert_eq!(err.reason, "malformed");
    }
}
