//! The bodies of the coverage-guided fuzz targets (`fuzz/fuzz_targets/*.rs`, cargo-fuzz /
//! libFuzzer): one function per entry point that takes bytes from outside, each calling the
//! crate's own code (never a copy of it) and checking a property of what comes back, not
//! only that nothing panics. A unit test below replays every committed corpus file
//! (`fuzz/corpus/<target>/`) through the same functions, so `cargo test` in CI runs them
//! without libFuzzer. See docs/fuzzing.md.
//!
//! Not an API: hidden from the docs, and it must never be called by the pipeline. A panic
//! here is a finding (an `assert!` that failed is a broken property).

use crate::buffer::chunk;
use crate::common::codec::Codec;
use crate::common::time::EventTime;
use crate::intake::forward::frame::{self, Limits};
use crate::intake::forward::json::{JsonScanner, to_msgpack};
use crate::intake::http::body::{BodyKind, Encoding};
use crate::intake::http::handler::{BodyRequest, BodyRules, body_lines};
use crate::intake::msgpack::FrameScanner;
use crate::intake::transcode::{LineFormat, TimeFormat};
use crate::load::rin::RinConfig;
use crate::load::rin::template;
use crate::queue::event::{self, Parsed};
use std::path::PathBuf;

/// A target's body: takes any bytes, panics only when a property is broken.
pub type Target = fn(&[u8]);

/// The targets, by the name of their `fuzz/fuzz_targets/<name>.rs` and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("forward_frame", forward_frame),
    ("http_body", http_body),
    ("object_event", object_event),
    ("rin_config", rin_config),
    ("key_template", key_template),
    ("chunk_recovery", chunk_recovery),
];

/// Bounds as a server would set them, kept small so one input cannot take seconds.
const LIMITS: Limits = Limits {
    max_decompressed: 1 << 20,
    max_entries: 10_000,
};
const MAX_FRAME: usize = 1 << 20;

/// Checks that `out` is NDJSON: exactly `events` lines, each one JSON object.
fn assert_json_lines(out: &[u8], events: u64) {
    let text = std::str::from_utf8(out).expect("transcoded lines are UTF-8");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the last line is not terminated"
    );
    assert_eq!(text.lines().count() as u64, events, "one line per event");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line is not JSON ({e}): {line:?}"));
        assert!(v.is_object(), "line is not a JSON object: {line:?}");
    }
}

/// Forward frames as a connection reads them: the msgpack frame scanner, then the frame
/// parser and transcoder; bytes starting with `[` or `{` also go the JSON clients' way
/// (scanner, then conversion to msgpack). Properties: an accepted frame's lines are NDJSON,
/// one per event; an uncompressed frame never yields more events than its bytes can hold;
/// the scanner's length is within the bytes given.
pub fn forward_frame(data: &[u8]) {
    forward_msgpack(data);
    if matches!(data.first(), Some(b'[' | b'{')) {
        let mut scanner = JsonScanner::default();
        if let Ok(Some(len)) = scanner.scan(data, MAX_FRAME) {
            assert!(len <= data.len());
            if let Ok(msgpack) = to_msgpack(&data[..len]) {
                forward_msgpack(&msgpack);
            }
        }
    }
}

fn forward_msgpack(data: &[u8]) {
    let format = LineFormat::new("time", TimeFormat::Rfc3339, 6, "tag");
    let len = match FrameScanner::default().scan(data, MAX_FRAME) {
        Ok(Some(len)) => len,
        _ => {
            // Incomplete or invalid: parsing the bytes as they are must fail cleanly too.
            let _ = frame::parse(data);
            return;
        }
    };
    assert!(len > 0 && len <= data.len(), "scanned length {len}");
    let Ok(Some(parsed)) = frame::parse(&data[..len]) else {
        return;
    };
    let compressed = parsed.options.compressed.is_some();
    let mut out = Vec::new();
    let Ok(lines) = parsed.transcode(&format, &mut format.renderer(), b"\"t\"", &LIMITS, &mut out)
    else {
        return;
    };
    assert!(lines.events <= LIMITS.max_entries as u64);
    if !compressed {
        // An entry `[time, record]` takes at least 3 bytes (array header, time, map header).
        assert!(
            lines.events * 3 <= len as u64,
            "{} events from a {len}-byte frame",
            lines.events
        );
    }
    assert_eq!(lines.first_time.is_some(), lines.events > 0);
    assert_json_lines(&out, lines.events);
}

/// HTTP bodies through the handler's own conversion (decompression, form unwrapping, JSON or
/// msgpack lines). Byte 0 picks the `Content-Encoding` and body style, byte 1 the time key;
/// the rest is the body. Properties: an accepted body's lines are NDJSON, one per event; a
/// refusal is a 4xx or 503, never a 2xx or another 5xx.
pub fn http_body(data: &[u8]) {
    let [how, time_key, body @ ..] = data else {
        return;
    };
    let encodings = [
        Encoding::Identity,
        Encoding::Gzip,
        Encoding::Deflate,
        Encoding::Zstd,
        Encoding::Snappy,
    ];
    let kinds = [BodyKind::Json, BodyKind::Msgpack, BodyKind::Form];
    let encoding = encodings[usize::from(how % 5)];
    let kind = kinds[usize::from(how / 5 % 3)];
    // The query may carry `time=` (fluentd in_http); bit 7 adds a fixed one.
    let params = if how & 0x80 != 0 {
        vec![(b"time".to_vec(), b"1714566896.5".to_vec())]
    } else {
        Vec::new()
    };
    let format = LineFormat::new("time", TimeFormat::Rfc3339, 6, "tag");
    let rules = BodyRules {
        max_decompressed: 1 << 20,
        format: &format,
        tag_json: b"\"t\"",
        time_key: ["", "time", "ts", "date"][usize::from(time_key % 4)],
    };
    let request = BodyRequest {
        encoding,
        kind,
        body,
        params,
    };
    let now = EventTime {
        secs: 1_700_000_000,
        nanos: 0,
    };
    match body_lines(request, &rules, now) {
        Ok(lines) => {
            assert_eq!(lines.first_time.is_some(), lines.events > 0);
            assert_json_lines(&lines.lines, lines.events);
        }
        Err(reject) => {
            let status = reject.status().as_u16();
            assert!(
                (400..500).contains(&status) || status == 503,
                "refused with status {status}"
            );
        }
    }
}

/// Queue message bodies (S3, SNS-wrapped, EventBridge, `s3:TestEvent`). Properties: no
/// panic; every object has its bucket; a key survives the form encoding S3 applies to
/// event keys (`decode_key(encode_key(k)) == k`), so an object is never loaded under
/// another key.
pub fn object_event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Parsed::Objects(objects)) = event::parse_body(text) {
        for o in &objects {
            assert_eq!(event::decode_key(&event::encode_key(&o.key)), o.key);
        }
    }
    assert_eq!(event::decode_key(&event::encode_key(text)), text);
}

/// Rin config files (templating, YAML, targets, key regexps). Properties: no panic; a
/// config that loads routes object keys without panicking, and every destination it gives
/// is a name its warehouse takes (placeholders filled from the key are checked).
pub fn rin_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |k: &str| (k == "RIN_FUZZ").then(|| "value".to_string());
    let Ok(config) = RinConfig::parse(text, &env) else {
        return;
    };
    for t in &config.targets {
        let _ = t.describe();
    }
    // Keys from the file itself reach the matchers' interesting paths (prefixes, captures).
    let keys = ["", "a/b/c.json.gz", "logs/app.web/2024/05/01/x.json.gz"];
    for bucket in ["", "bucket"] {
        for key in keys
            .iter()
            .copied()
            .chain(text.lines().take(8).map(str::trim))
        {
            if let Ok(crate::load::rin::MatchOutcome::Load(dests)) = config.route(bucket, key) {
                for d in dests {
                    assert!(d.target < config.targets.len());
                    let _ = d.qualified();
                }
            }
        }
    }
}

/// The templating (`{{ env "X" }}`) and the `$n` placeholders of schema and table names.
/// The input is a template, then after a NUL byte the captures (split on `\n`).
/// Properties: text without `{{` passes the templating unchanged; text without `$` followed
/// by a digit passes the placeholders unchanged; every placeholder `placeholders` reports is
/// replaced (no `$n` is left that a capture did not bring).
pub fn key_template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template_text, captures) = text.split_once('\0').unwrap_or((text, ""));
    let captures: Vec<String> = captures.split('\n').map(str::to_string).collect();
    let env = |k: &str| match k {
        "SET" => Some("set".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let expanded = template::expand_template(template_text, &env);
    if !template_text.contains("{{") {
        assert_eq!(expanded.as_deref().ok(), Some(template_text));
    }
    let found = template::placeholders(template_text);
    let (out, used) = template::expand_placeholders(template_text, &captures);
    assert_eq!(used, !found.is_empty());
    if found.is_empty() {
        assert_eq!(out, template_text);
    }
    // Expansion is one pass and digits after `$` are read greedily, so a placeholder can only
    // appear in the output from a capture holding `$`, or one starting with a digit right
    // after a literal `$` (`$$1` with capture `2`: the literal `$2`, never expanded again).
    if captures
        .iter()
        .all(|c| !c.contains('$') && !c.starts_with(|ch: char| ch.is_ascii_digit()))
    {
        assert!(template::placeholders(&out).is_empty(), "{out:?}");
    }
}

/// A folder for the chunk files one fuzz process writes (tmpfs when there is one).
fn chunk_dir() -> &'static PathBuf {
    static DIR: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("rin-ship-fuzz-chunk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz chunk folder");
        dir
    });
    &DIR
}

/// Frames one journal record as the chunk writer does: length, CRC-32, payload.
fn journal_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Chunk recovery over whatever a crash (or a bad disk) left: a data file and a journal.
/// Input: byte 0 (bit 0: zstd data file name; bit 1: no journal; bit 2: the journal bytes
/// are raw, else the rest is split on `\n` into records framed with a correct CRC, so the
/// fuzzer reaches the record decoding), bytes 1-2 the data file's length (little endian,
/// capped by what is left), then the data, then the journal.
/// Properties: recovery returns or errs, never panics; a recovered chunk's data file is
/// exactly its `size` and ends at a commit the journal holds; recovering again is a no-op
/// (same chunk, nothing cut).
pub fn chunk_recovery(data: &[u8]) {
    let [flags, a, b, rest @ ..] = data else {
        return;
    };
    let data_len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
    let (chunk_bytes, journal_input) = rest.split_at(data_len);
    let codec = if flags & 1 != 0 {
        Codec::Zstd
    } else {
        Codec::Gzip
    };
    let dir = chunk_dir();
    let seq = 1;
    chunk::remove_chunk(dir, seq).expect("clean the fuzz chunk folder");
    let data_path = chunk::data_path(dir, seq, codec);
    std::fs::write(&data_path, chunk_bytes).expect("write the data file");
    if flags & 2 == 0 {
        let journal = if flags & 4 != 0 {
            journal_input.to_vec()
        } else {
            let mut framed = Vec::new();
            for payload in journal_input.split(|b| *b == b'\n') {
                journal_record(&mut framed, payload);
            }
            framed
        };
        std::fs::write(chunk::journal_path(dir, seq), journal).expect("write the journal");
    }
    if let Ok(chunk::Recovered {
        chunk: Some(sealed),
        ..
    }) = &chunk::recover(dir, seq)
    {
        let on_disk = std::fs::metadata(&sealed.data_path).map(|m| m.len());
        assert_eq!(
            on_disk.ok(),
            Some(sealed.size),
            "data file is the chunk's size"
        );
        assert!(sealed.events > 0);
        let again = chunk::recover(dir, seq).expect("a recovered chunk recovers again");
        assert_eq!(again.truncated, 0, "second recovery cut bytes");
        let again = again.chunk.expect("a recovered chunk stays a chunk");
        assert_eq!(
            (again.size, again.events, again.bytes, &again.partition),
            (sealed.size, sealed.events, sealed.bytes, &sealed.partition),
            "second recovery changed the chunk"
        );
        let after = std::fs::metadata(&again.data_path).map(|m| m.len());
        assert_eq!(after.ok(), Some(sealed.size));
    }
    chunk::remove_chunk(dir, seq).expect("clean the fuzz chunk folder");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed corpus file (seeds and findings) through its target: what CI runs of
    /// the fuzzing without libFuzzer.
    #[test]
    fn every_corpus_file_passes_its_target() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e} (run fuzz/make_seeds.py)", dir.display()))
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            assert!(
                files.len() >= 3,
                "{}: only {} seeds (run fuzz/make_seeds.py)",
                dir.display(),
                files.len()
            );
            for f in files {
                let bytes = std::fs::read(&f).unwrap();
                let run = std::panic::catch_unwind(|| target(&bytes));
                assert!(run.is_ok(), "{name}: {} fails its target", f.display());
            }
        }
    }
}
