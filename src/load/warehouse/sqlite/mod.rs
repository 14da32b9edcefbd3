//! The embedded warehouse: an SQLite file (`<data_dir>/warehouse.db` under `rin-ship serve`),
//! loaded like the others, exactly once. A Rin connection with `driver: sqlite` and
//! `dbname: <path>` selects it.
//!
//! One group (objects for one table) loads in ONE SQLite transaction (`BEGIN IMMEDIATE`, so
//! writers queue up instead of deadlocking) together with its ledger rows (the ledger's table
//! of [`crate::load::ledger`], unique on bucket, key, ETag, version and target): an object
//! already in the ledger is skipped. The database runs in WAL mode with `synchronous=FULL`, so
//! a commit is on disk before the queue message is deleted.
//!
//! The insert modes ([`Landing`]): `OVERWRITE_EXISTING` deletes the table's rows with the
//! row's key before inserting it (the last row of a key in a group wins), `KEEP_EXISTING`
//! skips a row whose key is already there, `TRUNCATE` empties the table once per group, in the
//! group's transaction (`rin-ship sync` loads its passes this way).
//!
//! Tables are created on first use and gain a column (`ALTER TABLE ADD COLUMN`, no declared
//! type: values keep their JSON type, see [`record`]) for each new top-level key. SQLite
//! column names are case-insensitive: keys differing only in ASCII case share a column.
//! Failures follow the ledger's rules: SQLite's result codes map onto the SQLSTATE classes
//! ([`sqlstate`]); a bad object (bad compression, a line that is not a JSON object) is a data
//! error of that object.
//!
//! Must never: put a table or column name into SQL other than through [`quote_ident`]; write a
//! row outside the transaction of its ledger row.

mod record;

use super::dry_run::LedgerShown;
use super::ndjson::Decoder;
use super::{Driver, Env, Warehouse};
use crate::load::ledger::{
    Dialect, ErrorKind, Group, Item, ItemResult, Ledger, LoadFailure, Pending,
};
use crate::load::rin::{Destination, InsertMode, Redshift, RinConfig, quote_ident};
use crate::store::{Fetched, Objects};
use async_trait::async_trait;
use record::Record;
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

/// One open database, shared by the loads of a worker.
pub type Db = Arc<Mutex<Connection>>;

/// The embedded warehouse's driver.
pub struct Sqlite;

#[async_trait]
impl Driver for Sqlite {
    async fn connect(
        &self,
        env: &Env<'_>,
        conn: &Redshift,
    ) -> Result<Box<dyn Warehouse>, LoadFailure> {
        if conn.dbname.is_empty() {
            return Err(LoadFailure::new(
                ErrorKind::Other,
                "driver sqlite needs redshift.dbname: the database file".into(),
            ));
        }
        let ledger = Ledger::new(env.cfg, Dialect::Sqlite);
        let path = std::path::PathBuf::from(&conn.dbname);
        let l = ledger.clone();
        let c = tokio::task::spawn_blocking(move || open(&path, &l))
            .await
            .map_err(|e| LoadFailure::from(anyhow::Error::new(e)))??;
        Ok(Box::new(Session {
            db: Arc::new(Mutex::new(c)),
            ledger,
        }))
    }

    fn dry_run(
        &self,
        cfg: &RinConfig,
        dest: &Destination,
        objects: &[(&str, &str)],
    ) -> Vec<String> {
        let shown = LedgerShown::new(cfg, Dialect::Sqlite, dest, objects);
        let mut out = shown.on_connect();
        out.extend(shown.begin());
        for (i, (bucket, key)) in objects.iter().enumerate() {
            out.push(format!(
                "INSERT INTO {} (<one column per key>) VALUES (...)  -- each line of s3://{bucket}/{key}",
                dest.qualified()
            ));
            out.push(shown.record("the lines of the object", "NULL")[i].clone());
        }
        out.push("COMMIT".to_string());
        out
    }
}

struct Session {
    db: Db,
    ledger: Ledger,
}

#[async_trait]
impl Warehouse for Session {
    async fn load(&mut self, env: &Env<'_>, group: &Group) -> Result<Vec<ItemResult>, LoadFailure> {
        let t = env.cfg.target(group.dest.target);
        let landing = Landing {
            mode: t.insert_mode,
            keys: t.key_columns.clone(),
        };
        load_group(&self.db, &self.ledger, env.objects, group, &landing).await
    }
}

/// How a group's rows land in its table: the target's insert mode, on its key columns.
#[derive(Debug, Clone, Default)]
pub struct Landing {
    pub mode: InsertMode,
    pub keys: Vec<String>,
}

/// What SQLite's result code means in SQLSTATE terms, so [`crate::load::ledger::failure`]'s
/// rules classify it like a server's answer: constraint and datatype errors are data, a busy or
/// full database is transient.
pub fn sqlstate(e: &rusqlite::Error) -> Option<&'static str> {
    let rusqlite::Error::SqliteFailure(f, _) = e else {
        return None;
    };
    Some(match f.code {
        // integrity_constraint_violation (a STRICT table's datatype check is one too).
        ErrorCode::ConstraintViolation => "23000",
        // data_exception: datatype mismatch, string or blob too big.
        ErrorCode::TypeMismatch | ErrorCode::TooBig => "22000",
        // lock_not_available.
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => "55P03",
        // disk_full (insufficient_resources).
        ErrorCode::DiskFull | ErrorCode::OutOfMemory => "53100",
        // sqlclient_unable_to_establish_sqlconnection.
        ErrorCode::CannotOpen => "08001",
        _ => return None,
    })
}

/// A failure of `what`; `data_possible`: whether the statement wrote an object's row.
fn sqlite_failure(e: &rusqlite::Error, data_possible: bool, what: &str) -> LoadFailure {
    if e.sqlite_error_code() == Some(ErrorCode::DiskFull) {
        // Transient (53100): the load rolls back and its message comes back after its lease.
        metrics::counter!("rin_disk_full_errors_total", "stage" => "warehouse").increment(1);
        tracing::error!(
            "{what}: the disk holding the SQLite warehouse is full ({e}); the load is rolled \
             back and retried: free space on that filesystem"
        );
    }
    LoadFailure::server(sqlstate(e), e.to_string(), data_possible, what)
}

/// Opens (creating) the database: WAL, `synchronous=FULL`, the ledger.
pub fn open(path: &Path, ledger: &Ledger) -> Result<Connection, LoadFailure> {
    let at = path.display();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::common::durable::create_dir_all(parent).map_err(|e| {
            LoadFailure::new(
                ErrorKind::Other,
                format!("cannot create {}: {e}", parent.display()),
            )
        })?;
    }
    let c = Connection::open(path)
        .map_err(|e| sqlite_failure(&e, false, &format!("cannot open {at}")))?;
    let setup = || -> rusqlite::Result<String> {
        c.busy_timeout(std::time::Duration::from_secs(60))?;
        let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        c.pragma_update(None, "synchronous", "FULL")?;
        Ok(mode)
    };
    let mode =
        setup().map_err(|e| sqlite_failure(&e, false, &format!("{at}: not an SQLite database")))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LoadFailure::new(
            ErrorKind::Other,
            format!("{at}: cannot switch to WAL (journal_mode {mode})"),
        ));
    }
    c.execute_batch(&ledger.ddl().join(";\n")).map_err(|e| {
        sqlite_failure(
            &e,
            false,
            &format!("cannot create the ledger {} in {at}", ledger.ident()),
        )
    })?;
    Ok(c)
}

/// An object of the group, read before the transaction.
enum Read {
    /// In the ledger already (looked up before reading it; confirmed in the transaction).
    Known,
    Gone,
    /// The object's NDJSON bytes, decompressed.
    Lines(Vec<u8>),
    /// Not what it claims (bad compression): a data error, raised in group order.
    Corrupt(String),
}

/// Loads a group in one transaction with its ledger rows; any error rolls it all back.
pub async fn load_group(
    db: &Db,
    ledger: &Ledger,
    objects: &Objects,
    g: &Group,
    landing: &Landing,
) -> Result<Vec<ItemResult>, LoadFailure> {
    let table = g.dest.table.clone();
    if table.eq_ignore_ascii_case(ledger.table())
        || table.to_ascii_lowercase().starts_with("sqlite_")
    {
        return Err(LoadFailure::new(
            ErrorKind::Other,
            format!(
                "table {} is reserved in the embedded warehouse",
                quote_ident(&table)
            ),
        ));
    }
    let known = lookup(db, ledger, g).await?;
    let reads = read_objects(objects, g, known).await?;
    let (db, ledger, items) = (db.clone(), ledger.clone(), g.items.clone());
    let target = g.dest.qualified();
    let landing = landing.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = db.lock().unwrap();
        load_tx(&mut c, &ledger, &table, &target, &items, reads, &landing)
    })
    .await
    .map_err(|e| LoadFailure::from(anyhow::Error::new(e)))?
}

/// Which objects the ledger holds already (read only what is not; the transaction checks
/// again).
async fn lookup(db: &Db, ledger: &Ledger, g: &Group) -> Result<Vec<bool>, LoadFailure> {
    let (db, ledger, target, items) = (
        db.clone(),
        ledger.clone(),
        g.dest.qualified(),
        g.items.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let c = db.lock().unwrap();
        items
            .iter()
            .map(|it| in_ledger(&c, &ledger, it, &target))
            .collect()
    })
    .await
    .map_err(|e| LoadFailure::from(anyhow::Error::new(e)))?
}

/// The bytes of every object not known to be loaded.
async fn read_objects(
    objects: &Objects,
    g: &Group,
    known: Vec<bool>,
) -> Result<Vec<Read>, LoadFailure> {
    let mut reads = Vec::with_capacity(g.items.len());
    for (i, (it, known)) in g.items.iter().zip(known).enumerate() {
        if known {
            reads.push(Read::Known);
            continue;
        }
        let url = it.url();
        let opened = objects
            .open(it.object())
            .await
            .map_err(|e| LoadFailure::read(&url, format!("{e:#}")).of_item(i))?;
        reads.push(match opened {
            Fetched::Gone => {
                warn!(bucket = %it.bucket, key = %it.key, "object gone or replaced; not loading it");
                Read::Gone
            }
            Fetched::Body(mut body) => {
                let mut bytes = Vec::new();
                body.read_to_end(&mut bytes)
                    .await
                    .map_err(|e| LoadFailure::read(&url, e).of_item(i))?;
                match Decoder::decode_all(&bytes) {
                    Ok(lines) => Read::Lines(lines),
                    Err(e) => Read::Corrupt(e.0),
                }
            }
        });
    }
    Ok(reads)
}

fn load_tx(
    c: &mut Connection,
    ledger: &Ledger,
    table: &str,
    target: &str,
    items: &[Item],
    reads: Vec<Read>,
    landing: &Landing,
) -> Result<Vec<ItemResult>, LoadFailure> {
    let batch_id = crate::load::ledger::batch_id();
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sqlite_failure(&e, false, "BEGIN IMMEDIATE"))?;
    let mut pending = Pending::new(items);
    let mut total = 0u64;
    let mut loaded = 0;
    let insert = ledger.insert();
    for (i, read) in reads.into_iter().enumerate() {
        if !pending.new.contains(&i) {
            continue;
        }
        let it = &items[i];
        if in_ledger(&tx, ledger, it, target)? {
            pending.settle(i, ItemResult::Duplicate);
            continue;
        }
        let lines = match read {
            Read::Known => {
                pending.settle(i, ItemResult::Duplicate);
                continue;
            }
            Read::Gone => {
                pending.settle(i, ItemResult::Gone);
                continue;
            }
            Read::Corrupt(reason) => {
                return Err(LoadFailure::corrupt(&it.url(), None, reason).of_item(i));
            }
            Read::Lines(b) => b,
        };
        if landing.mode == InsertMode::Truncate && loaded == 0 {
            let exists = columns(&tx, table)
                .map_err(|e| sqlite_failure(&e, false, "reading the table's columns"))?
                .is_some();
            if exists {
                tx.execute(&format!("DELETE FROM {}", quote_ident(table)), [])
                    .map_err(|e| sqlite_failure(&e, false, "TRUNCATE (DELETE FROM)"))?;
            }
        }
        let rows =
            insert_lines(&tx, table, &lines, &it.url(), landing).map_err(|f| f.of_item(i))?;
        tx.execute(
            &insert,
            rusqlite::params![
                it.bucket,
                it.key,
                it.etag,
                it.version_id,
                target,
                rows as i64,
                batch_id,
                None::<i64>
            ],
        )
        .map_err(|e| sqlite_failure(&e, false, "ledger insert"))?;
        debug!(object = %it.url(), table = %target, rows, "written (commits with the group)");
        total += rows;
        loaded += 1;
        pending.settle(i, ItemResult::Loaded(Some(rows)));
    }
    tx.commit()
        .map_err(|e| sqlite_failure(&e, false, "COMMIT"))?;
    if loaded > 0 {
        info!(table = %target, objects = loaded, rows = total, batch_id, "committed");
    }
    Ok(pending.finish())
}

fn in_ledger(
    c: &Connection,
    ledger: &Ledger,
    it: &Item,
    target: &str,
) -> Result<bool, LoadFailure> {
    Ok(c.prepare_cached(&ledger.lookup())
        .and_then(|mut s| {
            s.query_row(
                rusqlite::params![it.bucket, it.key, it.etag, it.version_id, target],
                |_| Ok(()),
            )
            .optional()
        })
        .map_err(|e| sqlite_failure(&e, false, "ledger lookup"))?
        .is_some())
}

/// The columns of `table` (ASCII-lowercased), or `None` when it does not exist.
fn columns(c: &Connection, table: &str) -> rusqlite::Result<Option<HashSet<String>>> {
    let mut stmt = c.prepare(&format!("PRAGMA table_info({})", quote_ident(table)))?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((!names.is_empty()).then(|| names.iter().map(|n| n.to_ascii_lowercase()).collect()))
}

/// Inserts every NDJSON line of an object (`url`); returns the rows inserted.
fn insert_lines(
    c: &Connection,
    table: &str,
    lines: &[u8],
    url: &str,
    landing: &Landing,
) -> Result<u64, LoadFailure> {
    let keyed = landing.mode.keyed() && !landing.keys.is_empty();
    let key_match: Vec<String> = landing
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} IS ?{}", quote_ident(k), i + 1))
        .collect();
    let key_match = key_match.join(" AND ");
    let t = quote_ident(table);
    let structure = |e: rusqlite::Error, what: String| sqlite_failure(&e, false, &what);
    let mut cols =
        columns(c, table).map_err(|e| structure(e, format!("reading the columns of {t}")))?;
    let mut rows = 0u64;
    let mut empty_before_table = 0u64;
    let insert_empty = |c: &Connection| {
        c.execute(&format!("INSERT INTO {t} DEFAULT VALUES"), [])
            .map_err(|e| sqlite_failure(&e, true, &format!("loading {url} into {t}")))
    };
    for (n, line) in lines.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let rec: Record = serde_json::from_slice(line)
            .map_err(|e| LoadFailure::corrupt(url, Some(n as u64 + 1), e.to_string()))?;
        let fields = rec.columns();
        if fields.is_empty() {
            if cols.is_none() {
                empty_before_table += 1;
            } else {
                insert_empty(c)?;
                rows += 1;
            }
            continue;
        }
        match &mut cols {
            None => {
                let list: Vec<String> = fields.iter().map(|(k, _)| quote_ident(k)).collect();
                c.execute(&format!("CREATE TABLE {t} ({})", list.join(", ")), [])
                    .map_err(|e| structure(e, format!("CREATE TABLE {t}")))?;
                cols = Some(fields.iter().map(|(k, _)| k.to_ascii_lowercase()).collect());
                for _ in 0..empty_before_table {
                    insert_empty(c)?;
                }
                rows += empty_before_table;
                empty_before_table = 0;
            }
            Some(known) => {
                for (k, _) in &fields {
                    if known.insert(k.to_ascii_lowercase()) {
                        let alter = format!("ALTER TABLE {t} ADD COLUMN {}", quote_ident(k));
                        c.execute(&alter, [])
                            .map_err(|e| structure(e, alter.clone()))?;
                    }
                }
            }
        }
        if keyed {
            let key: Vec<&Sql> = landing
                .keys
                .iter()
                .map(|k| {
                    fields
                        .iter()
                        .find(|(f, _)| f.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v)
                        .ok_or_else(|| {
                            LoadFailure::corrupt(
                                url,
                                Some(n as u64 + 1),
                                format!(
                                    "the record has no key column {k} ({})",
                                    landing.mode.name()
                                ),
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
            let sql = if landing.mode == InsertMode::OverwriteExisting {
                format!("DELETE FROM {t} WHERE {key_match}")
            } else {
                format!("SELECT 1 FROM {t} WHERE {key_match} LIMIT 1")
            };
            let mut s = c
                .prepare_cached(&sql)
                .map_err(|e| structure(e, sql.clone()))?;
            let params = rusqlite::params_from_iter(key);
            if landing.mode == InsertMode::OverwriteExisting {
                s.execute(params).map_err(|e| structure(e, sql.clone()))?;
            } else if s.exists(params).map_err(|e| structure(e, sql.clone()))? {
                continue;
            }
        }
        let names: Vec<String> = fields.iter().map(|(k, _)| quote_ident(k)).collect();
        let marks: Vec<String> = (1..=fields.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {t} ({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        );
        c.prepare_cached(&sql)
            .and_then(|mut s| {
                s.execute(rusqlite::params_from_iter(
                    fields.into_iter().map(|(_, v)| v),
                ))
            })
            .map_err(|e| {
                let mut f = sqlite_failure(&e, true, &format!("loading {url} into {t}"));
                if f.kind == ErrorKind::Data {
                    f.details = vec![crate::load::ledger::ErrorDetail {
                        url: url.to_string(),
                        line: Some(n as u64 + 1),
                        column: None,
                        reason: f.reason().to_string(),
                    }];
                }
                f
            })?;
        rows += 1;
    }
    if empty_before_table > 0 {
        return Err(LoadFailure::corrupt(
            url,
            None,
            format!(
                "{empty_before_table} record(s) without any key, and no table {t} to take them"
            ),
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::rin::Destination;
    use crate::store::local::Folders;
    use rusqlite::types::Value as Sql;

    fn test_ledger() -> Ledger {
        let cfg = RinConfig::parse(
            "queue_name: q\ntargets:\n  - redshift: {driver: sqlite, dbname: x, table: t}\n    s3: {bucket: b, key_prefix: x}\n",
            &|_| None,
        )
        .unwrap();
        Ledger::new(&cfg, Dialect::Sqlite)
    }
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
        source: Objects,
        db: Db,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let objects_dir = dir.path().join("objects");
        std::fs::create_dir_all(&objects_dir).unwrap();
        let source = Objects::Local(Folders(BTreeMap::from([(
            "local".to_string(),
            objects_dir.clone(),
        )])));
        let db = Arc::new(Mutex::new(
            open(&dir.path().join("warehouse.db"), &test_ledger()).unwrap(),
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
                etag: crate::store::local::digest(&bytes[..]).unwrap(),
                version_id: String::new(),
                size: bytes.len() as u64,
            }
        }

        async fn load(
            &self,
            table: &str,
            items: Vec<Item>,
        ) -> Result<Vec<ItemResult>, LoadFailure> {
            self.load_as(table, items, &Landing::default()).await
        }

        async fn load_as(
            &self,
            table: &str,
            items: Vec<Item>,
            landing: &Landing,
        ) -> Result<Vec<ItemResult>, LoadFailure> {
            let g = Group {
                dest: Destination {
                    target: 0,
                    schema: String::new(),
                    table: table.into(),
                },
                items,
            };
            load_group(&self.db, &test_ledger(), &self.source, &g, landing).await
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
    async fn insert_modes_on_the_key() {
        let f = fixture();
        let keyed = |mode| Landing {
            mode,
            keys: vec!["id".into()],
        };
        let a = f.put(
            "t/a.json.gz",
            &[r#"{"id":1,"v":"a"}"#, r#"{"id":2,"v":"a"}"#],
        );
        let over = keyed(InsertMode::OverwriteExisting);
        f.load_as("t", vec![a], &over).await.unwrap();
        // The last row of a key in a group wins; other keys stay.
        let b = f.put(
            "t/b.json.gz",
            &[r#"{"id":1,"v":"b"}"#, r#"{"id":1,"v":"c"}"#],
        );
        f.load_as("t", vec![b], &over).await.unwrap();
        let rows = f.query("SELECT id, v FROM t ORDER BY id");
        assert_eq!(
            rows,
            [vec![Sql::Integer(1), t("c")], vec![Sql::Integer(2), t("a")]]
        );
        let c = f.put(
            "t/c.json.gz",
            &[r#"{"id":2,"v":"kept?"}"#, r#"{"id":3,"v":"new"}"#],
        );
        f.load_as("t", vec![c], &keyed(InsertMode::KeepExisting))
            .await
            .unwrap();
        let rows = f.query("SELECT id, v FROM t ORDER BY id");
        assert_eq!(rows[1], vec![Sql::Integer(2), t("a")]);
        assert_eq!(rows[2], vec![Sql::Integer(3), t("new")]);
        // TRUNCATE: the group's rows replace the table, once per group.
        let d = f.put("t/d.json.gz", &[r#"{"id":9,"v":"x"}"#]);
        let e = f.put("t/e.json.gz", &[r#"{"id":10,"v":"y"}"#]);
        let trunc = Landing {
            mode: InsertMode::Truncate,
            keys: vec![],
        };
        f.load_as("t", vec![d, e], &trunc).await.unwrap();
        assert_eq!(
            f.query("SELECT id FROM t ORDER BY id"),
            [[Sql::Integer(9)], [Sql::Integer(10)]]
        );
        // A keyed mode and a row without the key: a data error of that object.
        let g = f.put("t/g.json.gz", &[r#"{"v":"no id"}"#]);
        let err = f.load_as("t", vec![g], &over).await.unwrap_err();
        assert!(err.to_string().contains("no key column id"), "{err}");
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
            crate::load::rin::quote_literal(table)
        ));
        assert_eq!(cols[0], vec![t(key)]);
        assert_eq!(
            f.query("SELECT count(*) FROM rin_ship_ledger"),
            [vec![Sql::Integer(1)]]
        );
        // Names from keys are plain; SQLite's own and the ledger's are refused.
        assert!(crate::load::rin::is_tag_name("app.web-1_x"));
        for bad in ["", "..", "a/b", "a\"b", "sqlite_master", "a b"] {
            assert!(!crate::load::rin::is_tag_name(bad), "{bad}");
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
