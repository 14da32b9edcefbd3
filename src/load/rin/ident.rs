//! SQL identifiers as rin-ship writes them: the plain identifiers a `$n` capture may expand to
//! (so an object key can never inject SQL), quoting, `schema.table`, and the tag names the
//! embedded warehouse takes as table names.

use anyhow::{Result, bail};

/// A plain SQL identifier: `[A-Za-z_][A-Za-z0-9_$]*`, at most 127 bytes (Redshift's limit).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 127
}

/// `"ident"` with embedded quotes doubled (as lib/pq's QuoteIdentifier).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'` with embedded quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `schema.table` or `table` (then `public`), each a plain identifier.
pub fn split_qualified(s: &str) -> Result<(String, String)> {
    let (schema, table) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => ("public", s),
    };
    if !is_identifier(schema) || !is_identifier(table) {
        bail!("{s:?} is not schema.table of plain identifiers");
    }
    Ok((schema.to_string(), table.to_string()))
}

/// A table name taken from an object key for the embedded warehouse (`$n` of a `key_regexp`):
/// what the shipper's keys carry for a tag (`[A-Za-z0-9._-]`, 1..=127 bytes, not only dots),
/// and not SQLite's own `sqlite_*`. It is always quoted, so the dots are part of the name
/// (`"app.web"`).
pub fn is_tag_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.bytes().all(|b| b == b'.')
        && !s.to_ascii_lowercase().starts_with("sqlite_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("s1"));
        assert!(is_identifier("_a$b"));
        assert!(!is_identifier("1a"));
        assert!(!is_identifier("a\"; DROP TABLE x; --"));
        assert!(!is_identifier(""));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
