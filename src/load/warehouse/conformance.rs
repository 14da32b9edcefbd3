//! One failure, one verdict: the same bad objects go to every driver that runs here, and each
//! must call them what [`expected`] says, so that quarantine, retries and redelivery behave the
//! same whatever the warehouse.
//!
//! - PostgreSQL and SQLite run for real (a throw-away server, a temp file) over a local store.
//! - The Redshift wire driver cannot run here (no cluster): its verdict is built from the
//!   answers a cluster gives for these objects (`XX000 Load into table ... failed`, then the
//!   `stl_load_errors` rows), through the same classification and attribution the driver uses.
//! - The Data API driver runs over its recording fake in `dataapi::tests`, against the same
//!   [`CASES`] and [`expected`].
//!
//! The cluster's error texts follow AWS's documentation; they are not checked against a real
//! cluster here.

use super::{Env, Warehouse};
use crate::load::ledger::{ErrorKind, Group, Item, ItemResult, LoadFailure};
use crate::load::rin::{Destination, RinConfig};
use crate::store::Objects;
use crate::store::local::Folders;
use std::collections::BTreeMap;
use std::io::Write;

/// A bad object, and where the target table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Bytes that start like gzip and are not.
    BadGzip,
    /// Line 2 is not JSON.
    NotJson,
    /// Line 2 has `"i": "not a number"` for an integer column.
    BadValue,
    /// A good object for a table that does not exist.
    MissingTable,
}

pub const CASES: [Case; 4] = [
    Case::BadGzip,
    Case::NotJson,
    Case::BadValue,
    Case::MissingTable,
];

/// What a driver must make of a case: the kind, and whether the (only) object is named as
/// the one at fault (quarantine needs that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub kind: ErrorKind,
    pub object_at_fault: bool,
}

/// The one expected outcome of each case.
pub fn expected(case: Case) -> Verdict {
    match case {
        Case::BadGzip | Case::NotJson | Case::BadValue => Verdict {
            kind: ErrorKind::Data,
            object_at_fault: true,
        },
        Case::MissingTable => Verdict {
            kind: ErrorKind::Other,
            object_at_fault: false,
        },
    }
}

/// A driver's verdict on a failed one-object group.
pub fn verdict(f: &LoadFailure) -> Verdict {
    Verdict {
        kind: f.kind,
        object_at_fault: f.items == [0],
    }
}

/// The table a case loads into (an integer column `i`), and the object's bytes.
pub fn object(case: Case) -> (&'static str, Vec<u8>) {
    let gz = |text: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text).unwrap();
        e.finish().unwrap()
    };
    match case {
        Case::BadGzip => ("t", b"\x1f\x8b\x08\x00 this is not gzip".to_vec()),
        Case::NotJson => ("t", gz(b"{\"i\": 1}\n{\"i\": oops}\n")),
        Case::BadValue => ("t", gz(b"{\"i\": 1}\n{\"i\": \"not a number\"}\n")),
        Case::MissingTable => ("missing", gz(b"{\"i\": 1}\n")),
    }
}

/// Objects of the cases in a local store `local`.
struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    objects: Objects,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        std::fs::create_dir_all(&root).unwrap();
        Fixture {
            objects: Objects::Local(Folders(BTreeMap::from([("local".into(), root.clone())]))),
            root,
            _dir: dir,
        }
    }

    /// The group of one case's object.
    fn group(&self, case: Case, schema: &str) -> Group {
        let (table, bytes) = object(case);
        let key = format!("in/{case:?}.json.gz");
        std::fs::create_dir_all(self.root.join("in")).unwrap();
        std::fs::write(self.root.join(&key), &bytes).unwrap();
        Group {
            dest: Destination {
                target: 0,
                schema: schema.into(),
                table: table.into(),
            },
            items: vec![Item {
                bucket: "local".into(),
                key,
                etag: crate::store::local::digest(&bytes[..]).unwrap(),
                version_id: String::new(),
                size: bytes.len() as u64,
            }],
        }
    }
}

fn parse(yaml: &str) -> RinConfig {
    RinConfig::parse(yaml, &|_| None).unwrap()
}

async fn outcome(
    w: &mut dyn Warehouse,
    env: &Env<'_>,
    g: &Group,
) -> Result<Vec<ItemResult>, LoadFailure> {
    w.load(env, g).await
}

#[tokio::test]
async fn postgres_verdicts() {
    let pg = super::testpg::TestPg::start();
    let cfg = parse(&format!(
        "queue_name: q\nrin_ship: {{warehouse: postgres, sslmode: disable}}\n\
         redshift: {{host: 127.0.0.1, port: {}, dbname: postgres, user: postgres}}\n\
         targets:\n  - redshift: {{schema: public, table: t}}\n    s3: {{bucket: local, key_prefix: in/}}\n",
        pg.port
    ));
    let fx = Fixture::new();
    let env = Env {
        cfg: &cfg,
        objects: &fx.objects,
    };
    let conn = cfg.target(0).redshift.without_table();
    let (client, driver) = (
        super::wire::connect(&conn, cfg.ext.sslmode).await.unwrap(),
        super::postgres::Postgres,
    );
    client
        .batch_execute("CREATE TABLE public.t (i bigint)")
        .await
        .unwrap();
    let mut w = super::Driver::connect(&driver, &env, &conn).await.unwrap();
    for case in CASES {
        let f = outcome(w.as_mut(), &env, &fx.group(case, "public"))
            .await
            .expect_err("a bad object must fail");
        assert_eq!(verdict(&f), expected(case), "{case:?}: {f}");
        if case == Case::NotJson || case == Case::BadValue {
            assert_eq!(f.details[0].line, Some(2), "{case:?}: {f}");
        }
    }
    let rows: i64 = client
        .query_one("SELECT count(*) FROM public.t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "nothing of a failed group stays");
}

#[tokio::test]
async fn sqlite_verdicts() {
    let fx = Fixture::new();
    let db = fx._dir.path().join("warehouse.db");
    let cfg = parse(&format!(
        "queue_name: q\nredshift: {{driver: sqlite, dbname: '{}'}}\n\
         targets:\n  - redshift: {{table: t}}\n    s3: {{bucket: local, key_prefix: in/}}\n",
        db.display()
    ));
    let env = Env {
        cfg: &cfg,
        objects: &fx.objects,
    };
    let conn = cfg.target(0).redshift.without_table();
    let mut w = super::Driver::connect(&super::sqlite::Sqlite, &env, &conn)
        .await
        .unwrap();
    // A table made by hand with a type SQLite enforces (the embedded warehouse's own tables
    // take any value).
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t (i INTEGER) STRICT")
        .unwrap();
    for case in CASES {
        let g = fx.group(case, "");
        let r = outcome(w.as_mut(), &env, &g).await;
        if case == Case::MissingTable {
            // The embedded warehouse makes a table for each new tag: by design, the one case
            // that loads here.
            assert_eq!(r.unwrap(), [ItemResult::Loaded(Some(1))]);
            continue;
        }
        let f = r.expect_err("a bad object must fail");
        assert_eq!(verdict(&f), expected(case), "{case:?}: {f}");
        if case == Case::NotJson || case == Case::BadValue {
            assert_eq!(f.details[0].line, Some(2), "{case:?}: {f}");
        }
    }
}

#[test]
fn redshift_wire_verdicts() {
    use super::redshift::{attribute_load_errors, sql::LoadErrorRow};
    let fx = Fixture::new();
    for case in CASES {
        let g = fx.group(case, "public");
        let url = g.items[0].url();
        // What the cluster answers for this object's COPY.
        let (sqlstate, message, row) = match case {
            Case::MissingTable => ("42P01", "relation \"public.missing\" does not exist", None),
            Case::BadGzip => (
                "XX000",
                "Load into table 't' failed.  Check 'stl_load_errors' system table for details.",
                Some((0, "", "gzip: invalid compressed data--format violated")),
            ),
            Case::NotJson => (
                "XX000",
                "Load into table 't' failed.  Check 'stl_load_errors' system table for details.",
                Some((2, "", "Invalid JSONPath format: Member is not an object.")),
            ),
            Case::BadValue => (
                "XX000",
                "Load into table 't' failed.  Check 'stl_load_errors' system table for details.",
                Some((2, "i", "Invalid digit, Value 'n', Pos 0, Type: Long")),
            ),
        };
        // As the driver does: the statement's failure (a load statement: data possible), then
        // the load-error rows attributed to the group's objects.
        let mut f = LoadFailure::server(Some(sqlstate), message.into(), true, "COPY");
        if let Some((line, column, reason)) = row {
            let rows = [LoadErrorRow {
                file: url.clone(),
                line: Some(line),
                column: column.into(),
                reason: reason.into(),
            }];
            attribute_load_errors(&mut f, &g, &rows);
        }
        let f = f.attribute_single(&[0]);
        assert_eq!(verdict(&f), expected(case), "{case:?}: {f}");
    }
}
