//! JSON framing of the forward protocol. fluentd's `in_forward` reads a connection whose first
//! byte is `[` or `{` as a stream of JSON values instead of msgpack (fluent-logger-golang's
//! `MarshalAsJSON`, fluent-logger-ruby with a JSON packer, hand-written clients), and answers
//! acks in JSON. Each JSON frame is converted to the msgpack frame it stands for and takes the
//! same path as any other frame: the mode table, limits and dedupe live in one place.
//!
//! Frame boundaries are found with a resumable bracket scanner, so a large frame arriving in
//! many reads is scanned once, not re-parsed on every read. A JSON frame must never take a
//! path of its own past this module.

use serde_json::Value;

/// Finds where one top-level JSON array or object ends. Keeps its place between calls.
#[derive(Default)]
pub struct JsonScanner {
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    started: bool,
}

impl JsonScanner {
    /// `Ok(Some(len))`: `buf[..len]` holds one complete value (after optional whitespace).
    /// `Ok(None)`: more bytes needed. `buf` must start where the previous frame ended and
    /// only grow between calls until a frame is returned.
    pub fn scan(&mut self, buf: &[u8], limit: usize) -> Result<Option<usize>, String> {
        let mut i = self.scanned;
        while i < buf.len() {
            let b = buf[i];
            i += 1;
            if !self.started {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'[' | b'{' => {
                        self.started = true;
                        self.depth = 1;
                    }
                    _ => {
                        return Err(format!(
                            "expected a JSON array or object, found byte 0x{b:02x}"
                        ));
                    }
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > 512 {
                        return Err("JSON nested deeper than 512 levels".into());
                    }
                }
                b']' | b'}' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        *self = JsonScanner::default();
                        return Ok(Some(i));
                    }
                }
                _ => {}
            }
        }
        self.scanned = i;
        if buf.len() > limit {
            return Err(format!(
                "JSON frame larger than max_frame_bytes ({limit} bytes)"
            ));
        }
        Ok(None)
    }
}

/// Converts one JSON frame to its msgpack equivalent.
pub fn to_msgpack(json: &[u8]) -> Result<Vec<u8>, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut out = Vec::with_capacity(json.len());
    write_value(&value, &mut out);
    Ok(out)
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    match v {
        Value::Null => rmp::encode::write_nil(out).unwrap(),
        Value::Bool(b) => rmp::encode::write_bool(out, *b).unwrap(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                rmp::encode::write_uint(out, u).unwrap();
            } else if let Some(i) = n.as_i64() {
                rmp::encode::write_sint(out, i).unwrap();
            } else {
                rmp::encode::write_f64(out, n.as_f64().unwrap_or(f64::NAN)).unwrap();
            }
        }
        Value::String(s) => rmp::encode::write_str(out, s).unwrap(),
        Value::Array(a) => {
            rmp::encode::write_array_len(out, a.len() as u32).unwrap();
            for x in a {
                write_value(x, out);
            }
        }
        Value::Object(m) => {
            rmp::encode::write_map_len(out, m.len() as u32).unwrap();
            for (k, x) in m {
                rmp::encode::write_str(out, k).unwrap();
                write_value(x, out);
            }
        }
    }
}

/// `{"ack":"<chunk>"}`, as fluentd answers a JSON client.
pub fn ack_message(chunk: &[u8]) -> Vec<u8> {
    let id = String::from_utf8_lossy(chunk);
    serde_json::to_vec(&serde_json::json!({ "ack": id })).expect("a string map serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_frames_across_reads_and_ignores_brackets_in_strings() {
        let stream =
            br#" ["a.b", 1700000000, {"s": "x]}\"[{", "n": [1, {"m": 2}]}, {"chunk": "c1"}]
{"k": 1}"#;
        let mut s = JsonScanner::default();
        let first_end = stream.iter().position(|&b| b == b'\n').unwrap();
        // Byte by byte: the end is found exactly once, where the first value ends.
        let mut found = None;
        for n in 1..=stream.len() {
            if let Some(len) = s.scan(&stream[..n], 1 << 20).unwrap() {
                found = Some(len);
                break;
            }
        }
        assert_eq!(found, Some(first_end));
        let rest = &stream[first_end..];
        assert_eq!(s.scan(rest, 1 << 20).unwrap(), Some(rest.len()));
    }

    #[test]
    fn scanner_rejects_non_containers_and_oversize() {
        assert!(JsonScanner::default().scan(b"42", 100).is_err());
        assert!(JsonScanner::default().scan(&[b'['; 600], 10_000).is_err());
        let big = format!("[\"{}\"", "x".repeat(200));
        assert!(JsonScanner::default().scan(big.as_bytes(), 100).is_err());
    }

    #[test]
    fn converts_a_message_frame_to_msgpack() {
        let mp =
            to_msgpack(br#"["t", 1700000000, {"a": -1, "b": 1.5, "c": null}, {"chunk": "x"}]"#)
                .unwrap();
        let v = rmpv::decode::read_value(&mut &mp[..]).unwrap();
        assert_eq!(v[0].as_str(), Some("t"));
        assert_eq!(v[1].as_u64(), Some(1_700_000_000));
        assert_eq!(v[2]["a"].as_i64(), Some(-1));
        assert_eq!(v[2]["b"].as_f64(), Some(1.5));
        assert!(v[2]["c"].is_nil());
        assert_eq!(v[3]["chunk"].as_str(), Some("x"));
        assert_eq!(ack_message(b"x"), br#"{"ack":"x"}"#);
    }
}
