//! The embedded warehouse: an SQLite file (`<data_dir>/warehouse.db` under `rin-ship serve`),
//! loaded like the others, exactly once. A Rin connection with `driver: sqlite` and
//! `dbname: <path>` selects it.
//!
//! One group (objects for one table) loads in ONE SQLite transaction (`BEGIN IMMEDIATE`, so
//! writers queue up instead of deadlocking) together with its ledger rows (the columns of
//! [`super::ledger`], unique on bucket, key, ETag, version and target): an object already in
//! the ledger is skipped. The database runs in WAL mode with `synchronous=FULL`, so a commit is
//! on disk before the queue message is deleted.
//!
//! Tables are created on first use and gain a column (`ALTER TABLE ADD COLUMN`, no declared
//! type: values keep their JSON type: integer, real, text; `true`/`false` are 1/0) for each
//! new top-level key; nested objects and arrays are stored as their JSON text. SQLite column
//! names are case-insensitive: keys differing only in ASCII case share a column (the last one
//! in a record wins).
//!
//! Must never: put a table or column name into SQL other than through [`quote_ident`]; accept a
//! table name from a key other than a plain name ([`is_table_name`]); write a row outside the
//! transaction of its ledger row.

use super::ledger::{Group, Item, ItemResult};
use super::objects::{Fetched, Source};
use super::rin::{Redshift, RinConfig, quote_ident, split_qualified};
use anyhow::{Context, Result, bail};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

/// One open database, shared by the loads of a worker.
pub type Db = Arc<Mutex<Connection>>;

/// A table name taken from an object key (`$n` of a `key_regexp`): what the shipper's keys
/// carry for a tag (`[A-Za-z0-9._-]`, 1..=127 bytes, not only dots), and not SQLite's own
/// `sqlite_*`. It is always quoted, so the dots are part of the name (`"app.web"`).
pub fn is_table_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.bytes().all(|b| b == b'.')
        && !s.to_ascii_lowercase().starts_with("sqlite_")
}

/// The ledger's table name: the table part of `rin_ship.ledger_table` (SQLite has no schemas).
pub fn ledger_name(cfg: &RinConfig) -> Result<String> {
    Ok(split_qualified(&cfg.ext.ledger_table)?.1)
}

/// Opens (creating) the database: WAL, `synchronous=FULL`, the ledger.
pub fn open(path: &Path, ledger: &str) -> Result<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let c = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    c.busy_timeout(std::time::Duration::from_secs(60))?;
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "{}: cannot switch to WAL (journal_mode {mode})",
            path.display()
        );
    }
    c.pragma_update(None, "synchronous", "FULL")?;
    let l = quote_ident(ledger);
    let idx = quote_ident(&format!("{ledger}_object"));
    c.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {l} (
           bucket TEXT NOT NULL,
           object_key TEXT NOT NULL,
           etag TEXT NOT NULL,
           version_id TEXT NOT NULL,
           target TEXT NOT NULL,
           row_count INTEGER,
           batch_id TEXT NOT NULL,
           batch_rows INTEGER,
           loaded_at TEXT NOT NULL
         );
         CREATE UNIQUE INDEX IF NOT EXISTS {idx} ON {l} (bucket, object_key, etag, version_id, target);"
    ))
    .with_context(|| format!("cannot create the ledger {l} in {}", path.display()))?;
    Ok(c)
}

/// Loads one group into the SQLite database `conn` names (`dbname`), opening it on first use.
pub async fn load(
    cfg: &RinConfig,
    objects: &Source,
    dbs: &mut HashMap<Redshift, Db>,
    conn: &Redshift,
    g: &Group,
) -> Result<Vec<ItemResult>> {
    let ledger = ledger_name(cfg)?;
    let db = match dbs.get(conn) {
        Some(db) => db.clone(),
        None => {
            if conn.dbname.is_empty() {
                bail!("driver sqlite needs redshift.dbname: the database file");
            }
            let path = std::path::PathBuf::from(&conn.dbname);
            let l = ledger.clone();
            let c = tokio::task::spawn_blocking(move || open(&path, &l)).await??;
            let db = Arc::new(Mutex::new(c));
            dbs.insert(conn.clone(), db.clone());
            db
        }
    };
    load_group(&db, &ledger, objects, g).await
}

enum Pending {
    /// In the ledger already (looked up before reading it; confirmed in the transaction).
    Known,
    Gone,
    /// The object's (compressed) bytes.
    Bytes(Vec<u8>),
}

/// Loads a group in one transaction with its ledger rows; any error rolls it all back.
pub async fn load_group(
    db: &Db,
    ledger: &str,
    objects: &Source,
    g: &Group,
) -> Result<Vec<ItemResult>> {
    let table = g.dest.table.clone();
    if table.eq_ignore_ascii_case(ledger) || table.to_ascii_lowercase().starts_with("sqlite_") {
        bail!(
            "table {} is reserved in the embedded warehouse",
            quote_ident(&table)
        );
    }
    let target = quote_ident(&table);
    // Read only what is not loaded yet (the transaction checks again).
    let known = {
        let (db, ledger, target, items) = (
            db.clone(),
            ledger.to_string(),
            target.clone(),
            g.items.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<Vec<bool>> {
            let c = db.lock().unwrap();
            items
                .iter()
                .map(|it| in_ledger(&c, &ledger, it, &target))
                .collect()
        })
        .await??
    };
    let mut pending = Vec::with_capacity(g.items.len());
    for (it, known) in g.items.iter().zip(known) {
        if known {
            pending.push(Pending::Known);
            continue;
        }
        pending.push(match objects.open(it).await? {
            Fetched::Gone => {
                warn!(bucket = %it.bucket, key = %it.key, "object gone or replaced; not loading it");
                Pending::Gone
            }
            Fetched::Body(mut body) => {
                let mut bytes = Vec::new();
                body.read_to_end(&mut bytes)
                    .await
                    .with_context(|| format!("reading {}/{}", it.bucket, it.key))?;
                Pending::Bytes(bytes)
            }
        });
    }
    let (db, ledger, items) = (db.clone(), ledger.to_string(), g.items.clone());
    tokio::task::spawn_blocking(move || {
        let mut c = db.lock().unwrap();
        load_tx(&mut c, &ledger, &table, &items, pending)
    })
    .await?
}

fn load_tx(
    c: &mut Connection,
    ledger: &str,
    table: &str,
    items: &[Item],
    pending: Vec<Pending>,
) -> Result<Vec<ItemResult>> {
    let target = quote_ident(table);
    let batch_id = format!("{:016x}", rand::random::<u64>());
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(items.len());
    let mut seen: Vec<&Item> = Vec::new();
    let mut total = 0u64;
    for (it, p) in items.iter().zip(pending) {
        if seen.contains(&it) || in_ledger(&tx, ledger, it, &target)? {
            results.push(ItemResult::Duplicate);
            continue;
        }
        seen.push(it);
        let bytes = match p {
            Pending::Known => {
                results.push(ItemResult::Duplicate);
                continue;
            }
            Pending::Gone => {
                results.push(ItemResult::Gone);
                continue;
            }
            Pending::Bytes(b) => b,
        };
        let what = format!("{}/{}", it.bucket, it.key);
        let rows = insert_object(&tx, table, &bytes, &what)
            .with_context(|| format!("loading {what} into {target}"))?;
        tx.execute(
            &format!(
                "INSERT INTO {} (bucket, object_key, etag, version_id, target, row_count, \
                 batch_id, batch_rows, loaded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                quote_ident(ledger)
            ),
            rusqlite::params![
                it.bucket,
                it.key,
                it.etag,
                it.version_id,
                target,
                rows as i64,
                batch_id
            ],
        )
        .context("ledger insert")?;
        debug!(object = %what, table = %target, rows, "written (commits with the group)");
        total += rows;
        results.push(ItemResult::Loaded(Some(rows)));
    }
    tx.commit().context("COMMIT")?;
    let n = results
        .iter()
        .filter(|r| matches!(r, ItemResult::Loaded(_)))
        .count();
    if n > 0 {
        info!(table = %target, objects = n, rows = total, batch_id, "committed");
    }
    Ok(results)
}

fn in_ledger(c: &Connection, ledger: &str, it: &Item, target: &str) -> Result<bool> {
    let sql = format!(
        "SELECT 1 FROM {} WHERE bucket = ?1 AND object_key = ?2 AND etag = ?3 \
         AND version_id = ?4 AND target = ?5",
        quote_ident(ledger)
    );
    Ok(c.prepare_cached(&sql)?
        .query_row(
            rusqlite::params![it.bucket, it.key, it.etag, it.version_id, target],
            |_| Ok(()),
        )
        .optional()
        .context("ledger lookup")?
        .is_some())
}

/// The columns of `table` (ASCII-lowercased), or `None` when it does not exist.
fn columns(c: &Connection, table: &str) -> Result<Option<HashSet<String>>> {
    let mut stmt = c.prepare(&format!("PRAGMA table_info({})", quote_ident(table)))?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((!names.is_empty()).then(|| names.iter().map(|n| n.to_ascii_lowercase()).collect()))
}

/// Inserts every NDJSON line of a gzip object; returns the rows inserted.
fn insert_object(c: &Connection, table: &str, gz: &[u8], what: &str) -> Result<u64> {
    use std::io::BufRead;
    let t = quote_ident(table);
    let mut cols = columns(c, table)?;
    let mut rows = 0u64;
    let mut empty_before_table = 0u64;
    let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(gz));
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("{what}: not a readable gzip stream"))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let rec: Record =
            serde_json::from_slice(&line).with_context(|| format!("{what}: line {}", n + 1))?;
        let fields = rec.columns();
        if fields.is_empty() {
            if cols.is_none() {
                empty_before_table += 1;
            } else {
                c.execute(&format!("INSERT INTO {t} DEFAULT VALUES"), [])?;
                rows += 1;
            }
            continue;
        }
        match &mut cols {
            None => {
                let list: Vec<String> = fields.iter().map(|(k, _)| quote_ident(k)).collect();
                c.execute(&format!("CREATE TABLE {t} ({})", list.join(", ")), [])
                    .with_context(|| format!("CREATE TABLE {t}"))?;
                cols = Some(fields.iter().map(|(k, _)| k.to_ascii_lowercase()).collect());
                for _ in 0..empty_before_table {
                    c.execute(&format!("INSERT INTO {t} DEFAULT VALUES"), [])?;
                }
                rows += empty_before_table;
                empty_before_table = 0;
            }
            Some(known) => {
                for (k, _) in &fields {
                    if known.insert(k.to_ascii_lowercase()) {
                        c.execute(
                            &format!("ALTER TABLE {t} ADD COLUMN {}", quote_ident(k)),
                            [],
                        )
                        .with_context(|| {
                            format!("ALTER TABLE {t} ADD COLUMN {}", quote_ident(k))
                        })?;
                    }
                }
            }
        }
        let names: Vec<String> = fields.iter().map(|(k, _)| quote_ident(k)).collect();
        let marks: Vec<String> = (1..=fields.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {t} ({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        );
        c.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(
            fields.into_iter().map(|(_, v)| v),
        ))?;
        rows += 1;
    }
    if empty_before_table > 0 {
        bail!(
            "{what}: {empty_before_table} record(s) without any key, and no table {t} to take them"
        );
    }
    Ok(rows)
}

/// One NDJSON line: its top-level keys in order, values as written.
struct Record<'a>(Vec<(String, &'a RawValue)>);

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
    fn columns(self) -> Vec<(String, Sql)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::rin::Destination;
    use std::collections::BTreeMap;
    use std::io::Write;

    fn gz(lines: &[&str]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for l in lines {
            e.write_all(l.as_bytes()).unwrap();
            e.write_all(b"\n").unwrap();
        }
        e.finish().unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        objects_dir: std::path::PathBuf,
        source: Source,
        db: Db,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let objects_dir = dir.path().join("objects");
        std::fs::create_dir_all(&objects_dir).unwrap();
        let source = Source::Local(BTreeMap::from([("local".to_string(), objects_dir.clone())]));
        let db = Arc::new(Mutex::new(
            open(&dir.path().join("warehouse.db"), "rin_ship_ledger").unwrap(),
        ));
        Fixture {
            _dir: dir,
            objects_dir,
            source,
            db,
        }
    }

    impl Fixture {
        fn put(&self, key: &str, lines: &[&str]) -> Item {
            let path = self.objects_dir.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let bytes = gz(lines);
            std::fs::write(&path, &bytes).unwrap();
            Item {
                bucket: "local".into(),
                key: key.into(),
                etag: crate::ship::local::digest(&bytes[..]).unwrap(),
                version_id: String::new(),
                size: bytes.len() as u64,
            }
        }

        async fn load(&self, table: &str, items: Vec<Item>) -> Result<Vec<ItemResult>> {
            let g = Group {
                dest: Destination {
                    target: 0,
                    schema: String::new(),
                    table: table.into(),
                },
                items,
            };
            load_group(&self.db, "rin_ship_ledger", &self.source, &g).await
        }

        fn query(&self, sql: &str) -> Vec<Vec<Sql>> {
            let c = self.db.lock().unwrap();
            let mut s = c.prepare(sql).unwrap();
            let n = s.column_count();
            s.query_map([], |r| (0..n).map(|i| r.get::<_, Sql>(i)).collect())
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        }
    }

    fn t(s: &str) -> Sql {
        Sql::Text(s.into())
    }

    #[tokio::test]
    async fn loads_once_and_skips_duplicates() {
        let f = fixture();
        let a = f.put(
            "logs/app.web/a.json.gz",
            &[
                r#"{"time":"2024-05-01T12:34:56.000000Z","i":1,"ok":true,"x":1.5,"n":null}"#,
                r#"{"time":"2024-05-01T12:34:57.000000Z","i":2,"ok":false,"nested":{"b":[1,{"z":2}],"a":0}}"#,
            ],
        );
        let r = f.load("app.web", vec![a.clone()]).await.unwrap();
        assert_eq!(r, [ItemResult::Loaded(Some(2))]);
        // Again (a redelivered notification), and twice in one group: nothing twice.
        let r = f.load("app.web", vec![a.clone(), a.clone()]).await.unwrap();
        assert_eq!(r, [ItemResult::Duplicate, ItemResult::Duplicate]);
        let rows = f.query(r#"SELECT time, i, ok, x, n, nested FROM "app.web" ORDER BY i"#);
        assert_eq!(
            rows,
            [
                vec![
                    t("2024-05-01T12:34:56.000000Z"),
                    Sql::Integer(1),
                    Sql::Integer(1),
                    Sql::Real(1.5),
                    Sql::Null,
                    Sql::Null
                ],
                vec![
                    t("2024-05-01T12:34:57.000000Z"),
                    Sql::Integer(2),
                    Sql::Integer(0),
                    Sql::Null,
                    Sql::Null,
                    t(r#"{"b":[1,{"z":2}],"a":0}"#)
                ],
            ]
        );
        let led =
            f.query("SELECT bucket, object_key, etag, target, row_count FROM rin_ship_ledger");
        assert_eq!(
            led,
            [vec![
                t("local"),
                t("logs/app.web/a.json.gz"),
                t(&a.etag),
                t("\"app.web\""),
                Sql::Integer(2)
            ]]
        );
    }

    #[tokio::test]
    async fn new_keys_add_columns() {
        let f = fixture();
        let a = f.put("k/a.json.gz", &[r#"{"a":1}"#]);
        let b = f.put(
            "k/b.json.gz",
            &[
                r#"{"a":2,"b":"x","A":3}"#,
                r#"{}"#,
                r#"{"c":18446744073709551615,"b":"y"}"#,
            ],
        );
        f.load("t", vec![a]).await.unwrap();
        assert_eq!(
            f.load("t", vec![b]).await.unwrap(),
            [ItemResult::Loaded(Some(3))]
        );
        let cols = f.query("SELECT name FROM pragma_table_info('t') ORDER BY cid");
        assert_eq!(cols, [vec![t("a")], vec![t("b")], vec![t("c")]]);
        let rows = f.query("SELECT a, b, c FROM t ORDER BY rowid");
        assert_eq!(
            rows,
            [
                vec![Sql::Integer(1), Sql::Null, Sql::Null],
                vec![Sql::Integer(3), t("x"), Sql::Null],
                vec![Sql::Null, Sql::Null, Sql::Null],
                vec![Sql::Null, t("y"), t("18446744073709551615")],
            ]
        );
    }

    #[tokio::test]
    async fn hostile_names_stay_quoted() {
        let f = fixture();
        let key = r#"x"); DROP TABLE rin_ship_ledger; --"#;
        let a = f.put(
            "q/a.json.gz",
            &[&format!(
                r#"{{"{}":1,"ok":"yes"}}"#,
                key.replace('"', "\\\"")
            )],
        );
        let table = r#"we"ird); DROP TABLE x; --"#;
        f.load(table, vec![a]).await.unwrap();
        let rows = f.query(&format!("SELECT * FROM {}", quote_ident(table)));
        assert_eq!(rows, [vec![Sql::Integer(1), t("yes")]]);
        let cols = f.query(&format!(
            "SELECT name FROM pragma_table_info({})",
            super::super::rin::quote_literal(table)
        ));
        assert_eq!(cols[0], vec![t(key)]);
        assert_eq!(
            f.query("SELECT count(*) FROM rin_ship_ledger"),
            [vec![Sql::Integer(1)]]
        );
        // Names from keys are plain; SQLite's own and the ledger's are refused.
        assert!(is_table_name("app.web-1_x"));
        for bad in ["", "..", "a/b", "a\"b", "sqlite_master", "a b"] {
            assert!(!is_table_name(bad), "{bad}");
        }
        let b = f.put("q/b.json.gz", &[r#"{"a":1}"#]);
        let e = f.load("RIN_SHIP_LEDGER", vec![b]).await.unwrap_err();
        assert!(format!("{e:#}").contains("reserved"), "{e:#}");
    }

    #[tokio::test]
    async fn bad_object_rolls_back_the_group() {
        let f = fixture();
        let good = f.put("g/1.json.gz", &[r#"{"a":1}"#]);
        let bad = f.put("g/2.json.gz", &[r#"{"a":2}"#, "not json"]);
        let e = f.load("g", vec![good.clone(), bad]).await.unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
        assert!(
            f.query("SELECT name FROM sqlite_master WHERE name = 'g'")
                .is_empty()
        );
        assert_eq!(
            f.query("SELECT count(*) FROM rin_ship_ledger"),
            [vec![Sql::Integer(0)]]
        );
        // A replaced object (other bytes than its event said) is gone, not loaded.
        let mut stale = good.clone();
        stale.etag = "0".repeat(64);
        assert_eq!(f.load("g", vec![stale]).await.unwrap(), [ItemResult::Gone]);
        assert_eq!(
            f.load("g", vec![good]).await.unwrap(),
            [ItemResult::Loaded(Some(1))]
        );
    }
}
