//! What a request's head says: its tag (header, path or default), its `Idempotency-Key`, and
//! the form or query fields that carry a payload or a time. Pure functions over the request
//! head; it must never accept a tag a target could not hold (control characters, over 1 KiB).

use super::body::{self, BodyKind};
use super::handler::Reject;
use crate::common::time::EventTime;
use hyper::StatusCode;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, body::Incoming};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest tag accepted.
const MAX_TAG_BYTES: usize = 1024;

/// Raw `key=value` pairs of a query or form body.
pub type Params = Vec<(Vec<u8>, Vec<u8>)>;

pub fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Where a request's tag comes from: `http.tag_header`, else the path, else
/// `http.default_tag`.
pub struct TagSource {
    pub header: Option<HeaderName>,
    pub default_tag: String,
}

impl TagSource {
    /// The tag: the tag header, else the path (`/a/b` is `a.b`), else `default_tag`.
    pub fn tag(&self, req: &Request<Incoming>) -> Result<String, Reject> {
        let bad = |detail: String| Reject::new(StatusCode::BAD_REQUEST, "no_tag", detail);
        if let Some(name) = &self.header
            && let Some(v) = req.headers().get(name)
        {
            let tag = v
                .to_str()
                .map_err(|_| bad(format!("header {name} is not a valid tag")))?
                .trim();
            if !tag.is_empty() {
                return Ok(tag.to_string());
            }
        }
        let path = req.uri().path();
        let mut parts = Vec::new();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            let text = decode_path_segment(segment)
                .map_err(|_| bad(format!("path `{path}` is not UTF-8 once decoded")))?;
            parts.push(text);
        }
        let tag = if parts.is_empty() {
            self.default_tag.clone()
        } else {
            parts.join(".")
        };
        if tag.is_empty() {
            return Err(bad(match &self.header {
                Some(h) => format!("no tag: POST to /<tag> or send the tag in header {h}"),
                None => {
                    "no tag: POST to /<tag> (or set http.tag_header / http.default_tag)".to_string()
                }
            }));
        }
        if tag.len() > MAX_TAG_BYTES || tag.chars().any(char::is_control) {
            return Err(bad(
                "the tag is longer than 1024 bytes or holds control characters".into(),
            ));
        }
        Ok(tag)
    }
}

/// A path segment, percent-decoded. Unlike a form value, `+` stays `+` (RFC 3986), and a `%`
/// not followed by two hex digits stays as it is.
fn decode_path_segment(segment: &str) -> Result<String, std::string::FromUtf8Error> {
    String::from_utf8(percent_encoding::percent_decode_str(segment).collect())
}

/// The request's `Idempotency-Key` (IETF httpapi draft), namespaced apart from forward chunk
/// ids. It is remembered with the stored events for `buffer.dedupe_window`, across restarts.
pub fn idempotency_key(value: &Option<HeaderValue>) -> Result<Option<Vec<u8>>, Reject> {
    let Some(v) = value else { return Ok(None) };
    let bytes = v.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    let mut key = b"http\0".to_vec();
    key.extend_from_slice(bytes);
    Ok(Some(key))
}

/// Takes the first `json=` or `msgpack=` field out of `params`: the payload and its style.
pub fn take_payload_field(params: &mut Params) -> Option<(BodyKind, Vec<u8>)> {
    let i = params
        .iter()
        .position(|(k, _)| k == b"json" || k == b"msgpack")?;
    let (k, v) = params.remove(i);
    let kind = if k == b"json" {
        BodyKind::Json
    } else {
        BodyKind::Msgpack
    };
    Some((kind, v))
}

/// The last `time=` parameter: `None` when absent or `0` (fluentd: "now").
pub fn time_param(params: &Params) -> Result<Option<EventTime>, Reject> {
    let Some((_, v)) = params.iter().rev().find(|(k, _)| k == b"time") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(v);
    match body::parse_time_text(&text) {
        Some(t) if t.secs == 0 && t.nanos == 0 => Ok(None),
        Some(t) => Ok(Some(t)),
        None => Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("parameter `time={text}` is not epoch seconds or an RFC 3339 time"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_segment_keeps_plus_and_stray_percent_signs() {
        assert_eq!(decode_path_segment("a+b%2Ec%zz%4").unwrap(), "a+b.c%zz%4");
        assert_eq!(decode_path_segment("%E2%9C%93").unwrap(), "\u{2713}");
        assert!(decode_path_segment("%ff").is_err());
    }

    #[test]
    fn a_form_plus_is_a_space_and_an_escaped_plus_is_a_plus() {
        let pairs = body::form_pairs(b"a=1%2B1+2&b%2B=%");
        assert_eq!(pairs[0], (b"a".to_vec(), b"1+1 2".to_vec()));
        assert_eq!(pairs[1], (b"b+".to_vec(), b"%".to_vec()));
    }
}
