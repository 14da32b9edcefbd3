//! Property tests (proptest) over everything a connection does with bytes from the network:
//! frame scanning, envelope parsing, decompression and transcoding. Whatever the input, no
//! panic, no unbounded allocation (every length is checked against the bytes present, and
//! decompression is capped), and for well-formed frames the JSON lines carry exactly the
//! records sent. Seeds: the real-client frames in `tests/corpus/` (made by
//! `tests/corpus/make_corpus.py`). `PROPTEST_CASES` sets how long it runs; `tests/run` raises
//! it for a longer bounded run in CI.

use super::frame::{self, Limits};
use crate::intake::msgpack::FrameScanner;
use crate::intake::transcode::LineFormat;
use crate::intake::transcode::TimeFormat;
use proptest::prelude::*;
use rmpv::Value;

const LIMITS: Limits = Limits {
    max_decompressed: 1 << 20,
    max_entries: 10_000,
};

fn corpus() -> &'static [(String, Vec<u8>)] {
    static CORPUS: std::sync::LazyLock<Vec<(String, Vec<u8>)>> =
        std::sync::LazyLock::new(load_corpus);
    &CORPUS
}

fn load_corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("tests/corpus exists")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "msgpack"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 8,
        "corpus missing: run tests/corpus/make_corpus.py"
    );
    out
}

/// Runs bytes through the connection's steps; returns the lines of a frame that is accepted.
fn exercise(bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
    let format = LineFormat::new("time", TimeFormat::Rfc3339, 6, "tag");
    let mut scanner = FrameScanner::default();
    let len = match scanner.scan(bytes, 1 << 20) {
        Ok(Some(len)) => len,
        _ => {
            // Incomplete or invalid: parsing the raw bytes must fail cleanly too.
            let _ = frame::parse(bytes);
            return None;
        }
    };
    let parsed = frame::parse(&bytes[..len]).ok()??;
    let mut out = Vec::new();
    let lines = parsed
        .transcode(
            &format,
            &mut format.renderer(),
            b"\"tag\"",
            &LIMITS,
            &mut out,
        )
        .ok()?;
    // Whatever was accepted is valid NDJSON, one object per event.
    let text = std::str::from_utf8(&out).expect("transcoder output is UTF-8");
    assert_eq!(text.lines().count() as u64, lines.events);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(v.is_object());
    }
    Some((lines.events, out))
}

#[test]
fn corpus_frames_decode_as_their_clients_meant() {
    for (name, bytes) in corpus() {
        let parsed = frame::parse(bytes).unwrap_or_else(|e| panic!("{name}: {}", e.detail));
        match name.as_str() {
            "heartbeat_nil.msgpack" => assert!(parsed.is_none()),
            "fluent_bit_metrics_signal.msgpack" => assert_eq!(parsed.unwrap().options.signal, 1),
            _ => {
                let (events, _) = exercise(bytes).unwrap_or_else(|| panic!("{name} refused"));
                assert!(events > 0, "{name}");
            }
        }
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::F64),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,5}", inner), 0..6).prop_map(|kv| {
                Value::Map(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
            }),
        ]
    })
}

fn arb_record() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec(("[a-z]{1,6}", arb_value()), 0..8)
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => n.into(),
            (_, Some(n)) => n.into(),
            _ => unreachable!(),
        },
        Value::F64(f) => (*f).into(),
        Value::String(s) => s.as_str().unwrap().into(),
        Value::Array(a) => a.iter().map(to_json).collect(),
        Value::Map(m) => {
            let mut map = serde_json::Map::new();
            for (k, v) in m {
                map.insert(k.as_str().unwrap().to_string(), to_json(v));
            }
            map.into()
        }
        other => panic!("not generated: {other:?}"),
    }
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = exercise(&bytes);
    }

    #[test]
    fn mutated_real_frames_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let corpus = corpus();
        let mut bytes = corpus[pick.index(corpus.len())].1.clone();
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                2 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        let _ = exercise(&bytes);
    }

    #[test]
    fn well_formed_frames_carry_exactly_their_records(
        records in prop::collection::vec(arb_record(), 1..12),
        mode in 0u8..3,
    ) {
        let time = Value::Ext(0, vec![0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 7]);
        let maps: Vec<Value> = records
            .iter()
            .map(|r| Value::Map(r.iter().map(|(k, v)| (Value::from(k.as_str()), v.clone())).collect()))
            .collect();
        let entries: Vec<Value> = maps.iter().map(|m| Value::Array(vec![time.clone(), m.clone()])).collect();
        let frame = match mode {
            0 => Value::Array(vec![Value::from("p.t"), Value::Array(entries)]),
            1 => Value::Array(vec![
                Value::from("p.t"),
                Value::Binary(entries.iter().flat_map(encode).collect()),
            ]),
            _ => Value::Array(vec![Value::from("p.t"), time.clone(), maps[0].clone()]),
        };
        let expected_count = if mode == 2 { 1 } else { maps.len() };
        let (events, out) = exercise(&encode(&frame)).expect("a well-formed frame is accepted");
        prop_assert_eq!(events as usize, expected_count);
        for (line, record) in std::str::from_utf8(&out).unwrap().lines().zip(&maps) {
            let got: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut want = to_json(record);
            let obj = want.as_object_mut().unwrap();
            obj.insert("time".into(), "2023-11-14T22:13:20.000000Z".into());
            obj.insert("tag".into(), "tag".into());
            prop_assert_eq!(got, want);
        }
    }
}
