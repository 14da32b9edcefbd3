//! One NDJSON line as an SQLite row: its top-level keys in order (one column per key, ASCII
//! case-insensitively, as SQLite names columns: the last one in a record wins), each value as
//! written (integers that fit in 64 bits, reals, text, 1/0 for booleans, NULL; objects, arrays
//! and integers beyond 64 bits as their JSON text). Parsed once, without building a tree.

use rusqlite::types::Value as Sql;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::HashMap;

/// One NDJSON line: its top-level keys in order, values as written.
pub struct Record<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Record<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Record<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Record<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Record(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Record<'_> {
    /// (column, value) pairs: one per key, case-insensitively (the last one wins, in the
    /// place of the first); NUL in a key becomes U+FFFD (SQL text cannot hold it).
    pub fn columns(self) -> Vec<(String, Sql)> {
        let mut out: Vec<(String, Sql)> = Vec::with_capacity(self.0.len());
        let mut at: HashMap<String, usize> = HashMap::new();
        for (k, v) in self.0 {
            let k = if k.contains('\0') {
                k.replace('\0', "\u{FFFD}")
            } else {
                k
            };
            let v = sql_value(v);
            match at.get(&k.to_ascii_lowercase()) {
                Some(&i) => out[i].1 = v,
                None => {
                    at.insert(k.to_ascii_lowercase(), out.len());
                    out.push((k, v));
                }
            }
        }
        out
    }
}

/// A JSON value as an SQLite value: integers (that fit in 64 bits), reals, text, 1/0 for
/// booleans, NULL; objects and arrays (and integers beyond 64 bits) as their JSON text.
fn sql_value(raw: &RawValue) -> Sql {
    let s = raw.get();
    match s.as_bytes().first() {
        Some(b'{' | b'[') => Sql::Text(s.to_string()),
        Some(b'"') => Sql::Text(serde_json::from_str::<String>(s).unwrap_or_default()),
        Some(b't') => Sql::Integer(1),
        Some(b'f') => Sql::Integer(0),
        Some(b'n') | None => Sql::Null,
        Some(_) => {
            if let Ok(i) = s.parse::<i64>() {
                Sql::Integer(i)
            } else if s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                Sql::Text(s.to_string())
            } else {
                s.parse::<f64>().map_or(Sql::Text(s.to_string()), Sql::Real)
            }
        }
    }
}
