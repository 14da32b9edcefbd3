//! NDJSON lines as rows of `COPY ... FROM STDIN` (text format), the way `jsonb_populate_record`
//! would map them, without the server parsing any JSON: one pass over each line, each value
//! written as the column's input text (a string unescaped, a number, `true`/`false`, an
//! object or array as its JSON text, `null` as `\N`), a JSON array as an array literal for an
//! array column, the JSON text itself for a `json`/`jsonb` column.
//!
//! A key missing from a line leaves its column to the column's default, as the jsonb path
//! does: a COPY lists only the columns a row gives a value to among those with a default, so
//! rows are written in runs of the same column list ([`Scratch::columns`]). Keys that match no
//! column go to `catch_all_column` as one JSON object when there is one, and are counted
//! otherwise ([`Scratch::unmatched`]), never lost without a word.
//!
//! Must never: write a field that is not COPY-escaped (a tab, newline, carriage return or
//! backslash inside a value would shift the columns of the row).

use super::columns::{Column, ColumnKind};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::HashMap;

/// How one table's columns are written.
pub struct Layout {
    /// The written columns (not identity or generated), in table order.
    columns: Vec<Target>,
    /// Every column name of the table (written or not), to the written index if written.
    names: Vec<(String, Option<usize>)>,
    /// The same, for tables too wide to search in order.
    by_name: Option<HashMap<String, Option<usize>>>,
    /// The written index of `catch_all_column`.
    catch_all: Option<usize>,
}

struct Target {
    name: String,
    kind: ColumnKind,
    has_default: bool,
}

/// Tables with at most this many columns are searched in order (faster than hashing).
const LINEAR_SEARCH: usize = 32;

/// The JSON type of a value: what the column `schema: evolve` adds for a new key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Null,
    Bool,
    Integer,
    Float,
    Text,
    Nested,
}

impl JsonKind {
    /// The kind of a raw (valid) JSON value.
    pub fn of(raw: &str) -> JsonKind {
        match raw.as_bytes().first() {
            Some(b'"') => JsonKind::Text,
            Some(b't' | b'f') => JsonKind::Bool,
            Some(b'n') => JsonKind::Null,
            Some(b'{' | b'[') => JsonKind::Nested,
            _ if raw.contains(['.', 'e', 'E']) => JsonKind::Float,
            _ => JsonKind::Integer,
        }
    }

    /// One kind for the values a key showed: a null takes the other's kind, integers and
    /// floats are floats, anything else mixed is text (every JSON value has a text form).
    pub fn widen(self, other: JsonKind) -> JsonKind {
        use JsonKind::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Null, k) | (k, Null) => k,
            (Integer, Float) | (Float, Integer) => Float,
            _ => Text,
        }
    }

    /// The PostgreSQL type of the column added for it.
    pub fn pg_type(self) -> &'static str {
        match self {
            JsonKind::Null | JsonKind::Text => "text",
            JsonKind::Bool => "boolean",
            JsonKind::Integer => "bigint",
            JsonKind::Float => "double precision",
            JsonKind::Nested => "jsonb",
        }
    }
}

/// Which written columns a row lists: a bit per column, set when the row writes it.
pub type ColumnSet = Vec<u64>;

/// What writing rows reuses from one line to the next (no allocation per row).
#[derive(Default)]
pub struct Scratch {
    /// Per written column, the value's place in the line.
    values: Vec<Option<(usize, usize)>>,
    /// Keys for the catch-all column, with their value's place.
    extras: Vec<(String, (usize, usize))>,
    /// Keys that matched no column and had no catch-all to go to, with their value's kind.
    pub unmatched: Vec<(String, JsonKind)>,
    /// The columns of the last row (see [`Layout::write_row`]).
    pub columns: ColumnSet,
    /// Where the previous key matched: the next one is tried after it first (keys usually
    /// come in the same order line after line).
    cursor: usize,
}

/// Why a line cannot be a row: the object's data is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine(pub String);

impl Layout {
    /// `None` when a written column has a type this path does not write (a composite, say):
    /// such tables load through the jsonb stage instead.
    pub fn new(columns: &[Column], catch_all: &str) -> Option<Layout> {
        let mut names = Vec::new();
        let mut written = Vec::new();
        for c in columns {
            if c.skip {
                names.push((c.name.clone(), None));
                continue;
            }
            if c.kind == ColumnKind::Other {
                return None;
            }
            names.push((c.name.clone(), Some(written.len())));
            written.push(Target {
                name: c.name.clone(),
                kind: c.kind,
                has_default: c.default.is_some(),
            });
        }
        let catch_all = (!catch_all.is_empty())
            .then(|| {
                names
                    .iter()
                    .find(|(n, _)| n == catch_all)
                    .and_then(|(_, i)| *i)
            })
            .flatten();
        let by_name = (names.len() > LINEAR_SEARCH).then(|| names.iter().cloned().collect());
        Some(Layout {
            columns: written,
            names,
            by_name,
            catch_all,
        })
    }

    /// The quoted column list of a COPY of rows with `set`.
    pub fn column_list(&self, set: &ColumnSet) -> Vec<String> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(i, _)| is_set(set, *i))
            .map(|(_, c)| crate::load::rin::quote_ident(&c.name))
            .collect()
    }

    /// The column named `key`: `Some(written index, or None for a column never written)`,
    /// `None` for no column.
    fn find(&self, key: &str, cursor: &mut usize) -> Option<Option<usize>> {
        if let Some(map) = &self.by_name {
            return map.get(key).copied();
        }
        let n = self.names.len();
        for k in 0..n {
            let at = (*cursor + k) % n;
            if self.names[at].0 == key {
                *cursor = at + 1;
                return Some(self.names[at].1);
            }
        }
        None
    }

    /// Appends `line` (one NDJSON line, not blank) as a COPY text row to `out` (its fields in
    /// the order of [`Layout::column_list`] for `scratch.columns`, then a newline).
    pub fn write_row(
        &self,
        line: &[u8],
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Result<(), BadLine> {
        let line = std::str::from_utf8(line).map_err(|e| BadLine(e.to_string()))?;
        scratch.values.clear();
        scratch.values.resize(self.columns.len(), None);
        scratch.extras.clear();
        scratch.unmatched.clear();
        let mut de = serde_json::Deserializer::from_str(line);
        let seed = RowSeed {
            layout: self,
            scratch: &mut *scratch,
            base: line.as_ptr() as usize,
        };
        seed.deserialize(&mut de)
            .map_err(|e| BadLine(e.to_string()))?;
        de.end().map_err(|e| BadLine(e.to_string()))?;
        scratch.columns.clear();
        scratch.columns.resize(self.columns.len().div_ceil(64), 0);
        let mut first = true;
        for (i, c) in self.columns.iter().enumerate() {
            let catch_all_here = Some(i) == self.catch_all;
            let value = if catch_all_here {
                None
            } else {
                scratch.values[i]
            };
            // A missing key with a default is left out of the COPY, so the default applies.
            if value.is_none() && c.has_default && !catch_all_here {
                continue;
            }
            scratch.columns[i / 64] |= 1 << (i % 64);
            if !first {
                out.push(b'\t');
            }
            first = false;
            match value {
                _ if catch_all_here => write_extras(line, &scratch.extras, out),
                None => out.extend_from_slice(b"\\N"),
                Some((at, len)) => write_value(c.kind, &line[at..at + len], out)?,
            }
        }
        out.push(b'\n');
        Ok(())
    }
}

/// Reads one line's object into a [`Scratch`], placing each value by its key.
struct RowSeed<'l, 's> {
    layout: &'l Layout,
    scratch: &'s mut Scratch,
    /// The line's address: values are kept as places in it.
    base: usize,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        let layout = self.layout;
        let scratch = self.scratch;
        while let Some(key) = m.next_key::<Key<'de>>()? {
            let value: &'de RawValue = m.next_value()?;
            let text = value.get();
            let place = (text.as_ptr() as usize - self.base, text.len());
            let key = key.as_str();
            match layout.find(key, &mut scratch.cursor) {
                // The catch-all column takes the unknown keys, never its own.
                Some(Some(i)) if Some(i) != layout.catch_all => scratch.values[i] = Some(place),
                Some(_) => {}
                None if layout.catch_all.is_some() => {
                    // The last of a repeated key wins, as in jsonb.
                    scratch.extras.retain(|(k, _)| k != key);
                    scratch.extras.push((key.to_string(), place));
                }
                None => scratch
                    .unmatched
                    .push((key.to_string(), JsonKind::of(text))),
            }
        }
        Ok(())
    }
}

/// A key, borrowed from the line unless it has escapes.
enum Key<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s))
            }
        }
        d.deserialize_str(V)
    }
}

fn is_set(set: &ColumnSet, i: usize) -> bool {
    set.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// The catch-all object of the keys no column took, or `\N` when there are none.
fn write_extras(line: &str, extras: &[(String, (usize, usize))], out: &mut Vec<u8>) {
    if extras.is_empty() {
        out.extend_from_slice(b"\\N");
        return;
    }
    let mut json = Vec::with_capacity(64);
    json.push(b'{');
    for (n, (k, (at, len))) in extras.iter().enumerate() {
        if n > 0 {
            json.push(b',');
        }
        serde_json::to_writer(&mut json, k).expect("a string serializes");
        json.push(b':');
        json.extend_from_slice(&line.as_bytes()[*at..*at + len]);
    }
    json.push(b'}');
    escape_json_text(&json, out);
}

/// One value (its JSON text) as the input text of a column of `kind`.
fn write_value(kind: ColumnKind, raw: &str, out: &mut Vec<u8>) -> Result<(), BadLine> {
    match raw.as_bytes().first() {
        Some(b'n') => out.extend_from_slice(b"\\N"),
        _ if kind == ColumnKind::Json => escape_json_text(raw.as_bytes(), out),
        Some(b'"') => write_string(raw, out)?,
        Some(b'[') if kind == ColumnKind::Array => {
            let mut lit = Vec::with_capacity(raw.len());
            array_literal(raw, &mut lit)?;
            escape_text(&lit, out);
        }
        // Numbers, booleans, and objects or arrays as their JSON text.
        _ => escape_json_text(raw.as_bytes(), out),
    }
    Ok(())
}

/// A JSON string's text, COPY-escaped. Without a backslash it holds no escape, and so (JSON
/// strings have no raw control characters) nothing COPY must escape either: it is copied as
/// it is.
fn write_string(raw: &str, out: &mut Vec<u8>) -> Result<(), BadLine> {
    let inner = &raw.as_bytes()[1..raw.len() - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        out.extend_from_slice(inner);
        return Ok(());
    }
    let s: String = serde_json::from_str(raw).map_err(|e| BadLine(e.to_string()))?;
    if s.contains('\0') {
        // As PostgreSQL refuses it: text cannot hold NUL.
        return Err(BadLine(
            "unsupported Unicode escape sequence \\u0000".into(),
        ));
    }
    escape_text(s.as_bytes(), out);
    Ok(())
}

/// A JSON array as a PostgreSQL array literal (`{1,"a b",NULL,{2,3}}`), as
/// `jsonb_populate_record` converts one for an array column.
fn array_literal(raw: &str, out: &mut Vec<u8>) -> Result<(), BadLine> {
    let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(|e| BadLine(e.to_string()))?;
    out.push(b'{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let r = item.get();
        match r.as_bytes().first() {
            Some(b'n') => out.extend_from_slice(b"NULL"),
            Some(b'[') => array_literal(r, out)?,
            Some(b'"') => {
                let s: String = serde_json::from_str(r).map_err(|e| BadLine(e.to_string()))?;
                quote_element(s.as_bytes(), out);
            }
            Some(b'{') => quote_element(r.as_bytes(), out),
            _ => out.extend_from_slice(r.as_bytes()),
        }
    }
    out.push(b'}');
    Ok(())
}

/// An array element in double quotes, `"` and `\` backslashed.
fn quote_element(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// JSON text as COPY text: a line holds no newline, so only backslashes, tabs and carriage
/// returns (whitespace between tokens) need escaping.
fn escape_json_text(s: &[u8], out: &mut Vec<u8>) {
    if memchr::memchr3(b'\\', b'\t', b'\r', s).is_none() {
        out.extend_from_slice(s);
    } else {
        escape_text(s, out);
    }
}

/// COPY text format: backslash, tab, newline and carriage return backslashed.
fn escape_text(s: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, kind: ColumnKind, default: bool) -> Column {
        Column {
            name: name.into(),
            default: default.then(|| "7".to_string()),
            skip: false,
            kind,
        }
    }

    fn layout() -> Layout {
        let mut id = col("id", ColumnKind::Scalar, false);
        id.skip = true;
        Layout::new(
            &[
                id,
                col("i", ColumnKind::Scalar, false),
                col("path", ColumnKind::Scalar, false),
                col("status", ColumnKind::Scalar, true),
                col("tags", ColumnKind::Array, false),
                col("doc", ColumnKind::Json, false),
                col("extra", ColumnKind::Json, false),
            ],
            "extra",
        )
        .unwrap()
    }

    fn row(l: &Layout, line: &str) -> (String, Vec<String>) {
        let mut out = Vec::new();
        let mut scratch = Scratch::default();
        l.write_row(line.as_bytes(), &mut scratch, &mut out)
            .unwrap();
        (
            String::from_utf8(out).unwrap(),
            l.column_list(&scratch.columns),
        )
    }

    #[test]
    fn json_kinds_and_the_column_type_evolve_adds() {
        let k = |raw: &str| JsonKind::of(raw);
        assert_eq!(k("\"x\""), JsonKind::Text);
        assert_eq!(k("-12"), JsonKind::Integer);
        assert_eq!(k("1.5"), JsonKind::Float);
        assert_eq!(k("1e3"), JsonKind::Float);
        assert_eq!(k("true"), JsonKind::Bool);
        assert_eq!(k("null"), JsonKind::Null);
        assert_eq!(k("[1]"), JsonKind::Nested);
        let widen = |a: &str, b: &str| k(a).widen(k(b)).pg_type();
        assert_eq!(widen("1", "2.5"), "double precision");
        assert_eq!(widen("null", "true"), "boolean");
        assert_eq!(widen("1", "\"a\""), "text");
        assert_eq!(widen("{}", "{}"), "jsonb");
        assert_eq!(widen("null", "null"), "text");
    }

    #[test]
    fn rows_as_jsonb_populate_record_maps_them() {
        let l = layout();
        let q = |s: &str| format!("\"{s}\"");
        // Every column given; the identity column `id` is never written; `extra` gets the key
        // no column has.
        let (text, cols) = row(
            &l,
            r#"{"id":9,"i":1,"path":"a\tb\\c\n","status":5,"tags":[1,"x y",null,[2]],"doc":{"k":"v"},"zz":true}"#,
        );
        assert_eq!(
            cols,
            [
                q("i"),
                q("path"),
                q("status"),
                q("tags"),
                q("doc"),
                q("extra")
            ]
        );
        assert_eq!(
            text,
            "1\ta\\tb\\\\c\\n\t5\t{1,\"x y\",NULL,{2}}\t{\"k\":\"v\"}\t{\"zz\":true}\n"
        );
        // A missing key with a default is left out (the default applies); one without a
        // default is NULL; an explicit null is NULL; no extras: the catch-all is NULL.
        let (text, cols) = row(&l, r#"{"i":2,"status":null,"doc":"s"}"#);
        assert_eq!(
            cols,
            [
                q("i"),
                q("path"),
                q("status"),
                q("tags"),
                q("doc"),
                q("extra")
            ]
        );
        assert_eq!(text, "2\t\\N\t\\N\t\\N\t\"s\"\t\\N\n");
        let (_, cols) = row(&l, r#"{"i":3}"#);
        assert!(!cols.contains(&q("status")), "{cols:?}");
        // Strings with escapes, numbers and booleans as written.
        let (text, _) = row(&l, r#"{"i":1e3,"path":"\u00e9\"q","status":true}"#);
        assert_eq!(text, "1e3\té\"q\ttrue\t\\N\t\\N\t\\N\n");
        // The last of a repeated key wins; a key named like a column (the catch-all's own, an
        // identity column's) is no extra.
        let (text, _) = row(&l, r#"{"i":1,"i":2,"extra":"own","id":4,"u":1,"u":2}"#);
        assert_eq!(text, "2\t\\N\t\\N\t\\N\t{\"u\":2}\n");
    }

    #[test]
    fn lines_that_are_no_objects_and_unmatched_keys() {
        let l = layout();
        let mut out = Vec::new();
        let mut sc = Scratch::default();
        assert!(l.write_row(b"{\"i\": oops}", &mut sc, &mut out).is_err());
        assert!(l.write_row(b"[1,2]", &mut sc, &mut out).is_err());
        assert!(l.write_row(b"{\"i\":1} x", &mut sc, &mut out).is_err());
        assert!(
            l.write_row(br#"{"path":"a\u0000b"}"#, &mut sc, &mut out)
                .is_err()
        );
        let no_catch_all = Layout::new(&[col("i", ColumnKind::Scalar, false)], "").unwrap();
        let mut out = Vec::new();
        no_catch_all
            .write_row(br#"{"i":1,"x":2,"y":"3"}"#, &mut sc, &mut out)
            .unwrap();
        assert_eq!(
            sc.unmatched,
            [
                ("x".into(), JsonKind::Integer),
                ("y".into(), JsonKind::Text)
            ]
        );
        assert_eq!(out, b"1\n");
        // Whitespace and escapes inside JSON text kept as JSON, COPY-escaped.
        let j = Layout::new(&[col("doc", ColumnKind::Json, false)], "").unwrap();
        let mut out = Vec::new();
        j.write_row(b"{\"doc\": {\"a\":\t\"x\\\"y\"}}", &mut sc, &mut out)
            .unwrap();
        assert_eq!(out, b"{\"a\":\\t\"x\\\\\"y\"}\n");
        assert!(
            Layout::new(&[col("c", ColumnKind::Other, false)], "").is_none(),
            "composite columns take the jsonb path"
        );
    }
}
