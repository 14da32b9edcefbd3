//! `rin-ship query "SQL"`: one statement against the embedded warehouse
//! (`<data_dir>/warehouse.db`), opened read-only, so a newcomer needs no `sqlite3` CLI.
//! Prints a header line and one tab-separated line per row (NULL as `NULL`; tabs, newlines and
//! backslashes in text escaped as `\t`, `\n`, `\\`; blobs as `x'hex'`), or with `--json` one
//! JSON object per row.

use anyhow::{Context, Result, bail};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::path::Path;

pub fn run(db: &Path, sql: &str, json: bool, out: &mut dyn Write) -> Result<()> {
    if !db.exists() {
        bail!(
            "no embedded warehouse at {} (`rin-ship serve` creates it when it runs the \
             embedded loader: the default without a config file, `embedded_load: true` with one)",
            db.display()
        );
    }
    let c = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", db.display()))?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut stmt = c.prepare(sql).map_err(|e| explain(&c, e))?;
    let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
    if !json && !names.is_empty() {
        let header: Vec<String> = names.iter().map(|n| escape(n)).collect();
        writeln!(out, "{}", header.join("\t"))?;
    }
    let mut rows = stmt.query([]).context("SQL")?;
    while let Some(row) = rows.next().context("SQL")? {
        if json {
            let mut obj = serde_json::Map::new();
            for (i, n) in names.iter().enumerate() {
                obj.insert(n.clone(), json_value(row.get_ref(i)?));
            }
            writeln!(out, "{}", serde_json::Value::Object(obj))?;
        } else {
            let cells: Vec<String> = (0..names.len())
                .map(|i| row.get_ref(i).map(text_value))
                .collect::<rusqlite::Result<_>>()?;
            writeln!(out, "{}", cells.join("\t"))?;
        }
    }
    Ok(())
}

/// An SQL error, with a hint where a tag was written bare: `FROM app.web` reads as the table
/// `web` of a schema `app`; a tag is one table name and needs quotes.
fn explain(c: &Connection, e: rusqlite::Error) -> anyhow::Error {
    let msg = e.to_string();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_default();
    let listed = || {
        let names: Vec<String> = tables
            .iter()
            .filter(|t| !t.starts_with("sqlite_"))
            .map(|t| format!("\"{t}\""))
            .collect();
        if names.is_empty() {
            "none yet".to_string()
        } else {
            names.join(", ")
        }
    };
    let name = msg
        .strip_prefix("no such table: ")
        .map(|n| n.trim().to_string())
        .or_else(|| {
            // `app.web.x`: SQLite stops at the schema.
            msg.strip_prefix("unknown database ")
                .map(|n| n.trim().to_string())
        });
    match name {
        Some(n) if n.contains('.') || tables.iter().any(|t| t.starts_with(&format!("{n}."))) => {
            let guess = tables
                .iter()
                .find(|t| t.as_str() == n || t.starts_with(&format!("{n}.")))
                .cloned()
                .unwrap_or(n);
            anyhow::anyhow!(
                "SQL: {msg}; a tag is one table name, so quote it: \
                 rin-ship query 'SELECT * FROM \"{guess}\"' (tables: {})",
                listed()
            )
        }
        Some(_) => anyhow::anyhow!("SQL: {msg} (tables: {})", listed()),
        None => anyhow::Error::new(e).context("SQL"),
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn text_value(v: ValueRef) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => escape(&String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("x'{}'", hex::encode(b)),
    }
}

fn json_value(v: ValueRef) -> serde_json::Value {
    use serde_json::Value;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => format!("x'{}'", hex::encode(b)).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_rows_read_only() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("w.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            r#"CREATE TABLE "app.web" (i, s, f, n);
               INSERT INTO "app.web" VALUES (1, 'a	b', 1.5, NULL), (2, 'x', 2.0, NULL);"#,
        )
        .unwrap();
        drop(c);
        let mut out = Vec::new();
        run(
            &db,
            r#"SELECT * FROM "app.web" ORDER BY i"#,
            false,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "i\ts\tf\tn\n1\ta\\tb\t1.5\tNULL\n2\tx\t2\tNULL\n"
        );
        let mut out = Vec::new();
        run(
            &db,
            r#"SELECT i, s FROM "app.web" WHERE i = 2"#,
            true,
            &mut out,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"i\":2,\"s\":\"x\"}\n");
        let e = run(&db, "SELECT * FROM app.web", false, &mut Vec::new()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(r#"quote it: rin-ship query 'SELECT * FROM "app.web"'"#),
            "{msg}"
        );
        let e = run(&db, "SELECT * FROM app", false, &mut Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains(r#""app.web""#), "{e:#}");
        let e = run(&db, r#"DELETE FROM "app.web""#, false, &mut Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains("readonly"), "{e:#}");
        let e = run(
            &d.path().join("none.db"),
            "SELECT 1",
            false,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("no embedded warehouse"), "{e:#}");
    }
}
