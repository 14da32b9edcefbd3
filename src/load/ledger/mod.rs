//! The ledger contract: what makes every load exactly-once, whatever the warehouse.
//!
//! ```text
//! BEGIN; LOCK ledger; SELECT (already loaded?) per object;
//!   load the new objects (the driver's part);
//!   INSERT INTO ledger (one row per object); COMMIT;
//! ```
//!
//! The lock serializes the importers loading into one target table, so two of them can never
//! both find an object missing and load it. On PostgreSQL it is a transaction-scoped advisory
//! lock per target table, so loads into different tables run side by side (their ledger rows
//! never collide: the target is part of the key). On Redshift it is `LOCK` on the ledger:
//! every load reads and writes the ledger, and two concurrent transactions doing so would make
//! Redshift's serializable isolation abort one of them (error 1023), so there loads stay one
//! at a time per warehouse (the COPYs themselves use every slice of the cluster). A ledger row is keyed by (bucket, object_key, etag, version_id,
//! target): the same bytes under the same key load once per target table; new content under
//! the same key (another ETag) loads again. Every load of one group shares one `batch_id`.
//!
//! Owns: the items of a load ([`Item`], [`Group`], [`ItemResult`]), the ledger table, its rows
//! and the statements of each dialect ([`Ledger`]), the batch id, the in-group duplicate check
//! ([`Pending`]), failure classification ([`failure`]: one set of rules for every driver) and
//! quarantine records ([`quarantine`]).
//!
//! Must never: let a driver write a table row outside the transaction of its ledger row; give
//! a quarantined object a ledger row (the ledger lists loaded objects only).

pub mod failure;
pub mod quarantine;

pub use failure::{ErrorDetail, ErrorKind, LoadFailure};

use super::rin::{Destination, RinConfig, quote_ident, quote_literal, split_qualified};
use crate::store::ObjectRef;

/// One object to load into one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub bucket: String,
    pub key: String,
    pub etag: String,
    pub version_id: String,
    /// Bytes as stored (from the event or listing; 0 when unknown): for the free-space check.
    pub size: u64,
}

impl Item {
    /// `s3://bucket/key`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Exactly this version, as the object stores read it.
    pub fn object(&self) -> ObjectRef<'_> {
        ObjectRef {
            bucket: &self.bucket,
            key: &self.key,
            etag: &self.etag,
            version_id: &self.version_id,
        }
    }
}

/// A batch for one destination table on one warehouse connection.
#[derive(Debug, Clone)]
pub struct Group {
    pub dest: Destination,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Loaded in this transaction, with the rows written. One Redshift COPY over several
    /// objects counts only their total: it is reported on the first object, the others `None`.
    Loaded(Option<u64>),
    /// Already in the ledger (or earlier in the same group).
    Duplicate,
    /// The object no longer exists with that ETag (overwritten or deleted): its successor's
    /// own event loads the new content.
    Gone,
}

/// A new id for the ledger rows of one load.
pub fn batch_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// How a warehouse spells the ledger's statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Redshift,
    Sqlite,
}

/// The ledger's columns, in the order every INSERT lists them.
const COLUMNS: &str =
    "bucket, object_key, etag, version_id, target, row_count, batch_id, batch_rows, loaded_at";

/// The ledger table of a config (`rin_ship.ledger_table`) in one dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    schema: String,
    table: String,
    dialect: Dialect,
}

impl Ledger {
    pub fn new(cfg: &RinConfig, dialect: Dialect) -> Ledger {
        let (schema, table) = split_qualified(&cfg.ext.ledger_table).expect("validated at load");
        Ledger {
            schema,
            table,
            dialect,
        }
    }

    /// The table's name alone (SQLite has no schemas).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `"schema"."table"` (SQLite: `"table"`).
    pub fn ident(&self) -> String {
        match self.dialect {
            Dialect::Sqlite => quote_ident(&self.table),
            _ => format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table)),
        }
    }

    /// The statements that create the ledger (and its schema) if missing, with a unique index
    /// (Redshift enforces none) as a second line of defence.
    pub fn ddl(&self) -> Vec<String> {
        let ledger = self.ident();
        let index = quote_ident(&format!("{}_object", self.table));
        let key = "(bucket, object_key, etag, version_id, target)";
        match self.dialect {
            Dialect::Sqlite => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {ledger} (bucket TEXT NOT NULL, \
                     object_key TEXT NOT NULL, etag TEXT NOT NULL, version_id TEXT NOT NULL, \
                     target TEXT NOT NULL, row_count INTEGER, batch_id TEXT NOT NULL, \
                     batch_rows INTEGER, loaded_at TEXT NOT NULL)"
                ),
                format!("CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {ledger} {key}"),
            ],
            Dialect::Postgres | Dialect::Redshift => {
                let mut ddl = Vec::new();
                if self.schema != "public" {
                    ddl.push(format!(
                        "CREATE SCHEMA IF NOT EXISTS {}",
                        quote_ident(&self.schema)
                    ));
                }
                ddl.push(format!(
                    "CREATE TABLE IF NOT EXISTS {ledger} (bucket varchar(1024) NOT NULL, \
                     object_key varchar(4096) NOT NULL, etag varchar(256) NOT NULL, \
                     version_id varchar(1024) NOT NULL, target varchar(1024) NOT NULL, \
                     row_count bigint, batch_id varchar(64) NOT NULL, batch_rows bigint, \
                     loaded_at timestamptz NOT NULL)"
                ));
                if self.dialect == Dialect::Postgres {
                    ddl.push(format!(
                        "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {ledger} {key}"
                    ));
                }
                ddl
            }
        }
    }

    /// A query whose one value is true when the ledger and its index exist already, where the
    /// dialect can tell without taking a lock: on PostgreSQL even `CREATE INDEX IF NOT EXISTS`
    /// waits for every load in flight (its lock conflicts with their ledger INSERTs).
    pub fn exists(&self) -> Option<String> {
        match self.dialect {
            Dialect::Postgres => Some(format!(
                "SELECT to_regclass({}) IS NOT NULL AND to_regclass({}) IS NOT NULL",
                quote_literal(&self.ident()),
                quote_literal(&format!(
                    "{}.{}",
                    quote_ident(&self.schema),
                    quote_ident(&format!("{}_object", self.table))
                ))
            )),
            Dialect::Redshift | Dialect::Sqlite => None,
        }
    }

    /// The lock a load into `target` (the quoted table) takes first, held to the end of its
    /// transaction (SQLite: `BEGIN IMMEDIATE` instead).
    pub fn lock(&self, target: &str) -> Option<String> {
        let ledger = self.ident();
        match self.dialect {
            Dialect::Postgres => Some(format!(
                "SELECT pg_advisory_xact_lock({})",
                advisory_key(&ledger, target)
            )),
            Dialect::Redshift => Some(format!("LOCK {ledger}")),
            Dialect::Sqlite => None,
        }
    }

    /// Whether one object is loaded into one target: parameters 1..=5 are bucket, key, ETag,
    /// version and target.
    pub fn lookup(&self) -> String {
        let p = |n| self.param(n);
        format!(
            "SELECT 1 FROM {} WHERE bucket = {} AND object_key = {} AND etag = {} \
             AND version_id = {} AND target = {}",
            self.ident(),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5)
        )
    }

    /// One ledger row: parameters 1..=8 are bucket, key, ETag, version, target, rows, batch id
    /// and batch rows; the load time is the warehouse's clock.
    pub fn insert(&self) -> String {
        let params: Vec<String> = (1..=8).map(|n| self.param(n)).collect();
        format!(
            "INSERT INTO {} ({COLUMNS}) VALUES ({}, {})",
            self.ident(),
            params.join(", "),
            self.now()
        )
    }

    /// The rows of objects `which` of `items` into `target` as one INSERT with literal values
    /// (the Data API has no parameters in a batch); row counts are unknown there.
    #[cfg(feature = "redshift")]
    pub fn insert_literal(
        &self,
        target: &str,
        items: &[Item],
        which: &[usize],
        batch_id: &str,
    ) -> String {
        let rows: Vec<String> = which
            .iter()
            .map(|&i| {
                let it = &items[i];
                format!(
                    "({}, {}, {}, {}, {}, NULL, {}, NULL, {})",
                    quote_literal(&it.bucket),
                    quote_literal(&it.key),
                    quote_literal(&it.etag),
                    quote_literal(&it.version_id),
                    quote_literal(target),
                    quote_literal(batch_id),
                    self.now()
                )
            })
            .collect();
        format!(
            "INSERT INTO {} ({COLUMNS}) VALUES {}",
            self.ident(),
            rows.join(", ")
        )
    }

    /// `target = 't' AND ((bucket = .. AND object_key = .. AND etag = .. AND version_id = ..)
    /// OR ..)`: the ledger rows of objects `which` in `target`, with literal values.
    #[cfg(feature = "redshift")]
    pub fn objects_condition(target: &str, items: &[Item], which: &[usize]) -> String {
        let each: Vec<String> = which
            .iter()
            .map(|&i| {
                let it = &items[i];
                format!(
                    "(bucket = {} AND object_key = {} AND etag = {} AND version_id = {})",
                    quote_literal(&it.bucket),
                    quote_literal(&it.key),
                    quote_literal(&it.etag),
                    quote_literal(&it.version_id)
                )
            })
            .collect();
        format!(
            "target = {} AND ({})",
            quote_literal(target),
            each.join(" OR ")
        )
    }

    fn param(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            _ => format!("${n}"),
        }
    }

    fn now(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "now()",
            Dialect::Redshift => "SYSDATE",
            Dialect::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }
}

/// The advisory lock key of loads into `target` under `ledger`: the same in every importer (the
/// first 8 bytes of a SHA-256), so racing importers meet on it. Two tables sharing a key (one
/// chance in 2^64) would only wait for each other.
fn advisory_key(ledger: &str, target: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"rin-ship ledger\n");
    h.update(ledger.as_bytes());
    h.update(b"\n");
    h.update(target.as_bytes());
    i64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// The results of one group's load as they are found: the same object twice in a group loads
/// once (the repeat is a duplicate), and what the ledger holds is a duplicate too.
#[derive(Debug)]
pub struct Pending {
    results: Vec<Option<ItemResult>>,
    /// Objects not settled yet, in group order (order matters to the keyed insert modes).
    pub new: Vec<usize>,
}

impl Pending {
    /// Every distinct object of `items` pending, repeats settled as duplicates.
    pub fn new(items: &[Item]) -> Pending {
        let mut results = vec![None; items.len()];
        let mut new: Vec<usize> = Vec::new();
        for (i, it) in items.iter().enumerate() {
            if new.iter().any(|&j| items[j] == *it) {
                results[i] = Some(ItemResult::Duplicate);
            } else {
                new.push(i);
            }
        }
        Pending { results, new }
    }

    /// Object `i` is settled (`Duplicate` also takes it out of `new`).
    pub fn settle(&mut self, i: usize, result: ItemResult) {
        if result == ItemResult::Duplicate {
            self.new.retain(|&j| j != i);
        }
        self.results[i] = Some(result);
    }

    /// The results in group order; anything not settled was a duplicate.
    pub fn finish(self) -> Vec<ItemResult> {
        self.results
            .into_iter()
            .map(|r| r.unwrap_or(ItemResult::Duplicate))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str) -> Item {
        Item {
            bucket: "b".into(),
            key: key.into(),
            etag: "e".into(),
            version_id: String::new(),
            size: 0,
        }
    }

    #[test]
    fn repeats_in_a_group_load_once() {
        let items = [item("a"), item("b"), item("a")];
        let mut p = Pending::new(&items);
        assert_eq!(p.new, [0, 1]);
        p.settle(1, ItemResult::Duplicate);
        assert_eq!(p.new, [0]);
        p.settle(0, ItemResult::Loaded(Some(3)));
        assert_eq!(
            p.finish(),
            [
                ItemResult::Loaded(Some(3)),
                ItemResult::Duplicate,
                ItemResult::Duplicate
            ]
        );
    }

    #[test]
    fn statements_per_dialect() {
        let cfg = RinConfig::parse(
            "queue_name: q\nrin_ship: {ledger_table: rin.led}\ntargets:\n  - redshift: {table: t}\n    s3: {bucket: b, key_prefix: x}\n",
            &|_| None,
        )
        .unwrap();
        let pg = Ledger::new(&cfg, Dialect::Postgres);
        assert_eq!(pg.ident(), "\"rin\".\"led\"");
        assert_eq!(
            pg.lookup(),
            "SELECT 1 FROM \"rin\".\"led\" WHERE bucket = $1 AND object_key = $2 AND etag = $3 \
             AND version_id = $4 AND target = $5"
        );
        assert_eq!(
            pg.insert(),
            "INSERT INTO \"rin\".\"led\" (bucket, object_key, etag, version_id, target, \
             row_count, batch_id, batch_rows, loaded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, now())"
        );
        assert_eq!(pg.ddl().len(), 3);
        // One advisory lock per target table: the same for every importer, another for
        // another table.
        let a = pg.lock("\"public\".\"a\"").unwrap();
        assert!(a.starts_with("SELECT pg_advisory_xact_lock("), "{a}");
        assert_eq!(
            a,
            Ledger::new(&cfg, Dialect::Postgres)
                .lock("\"public\".\"a\"")
                .unwrap()
        );
        assert_ne!(a, pg.lock("\"public\".\"b\"").unwrap());
        let rs = Ledger::new(&cfg, Dialect::Redshift);
        assert_eq!(rs.lock("\"public\".\"a\"").unwrap(), "LOCK \"rin\".\"led\"");
        assert_eq!(rs.ddl().len(), 2, "no unique index on Redshift");
        assert!(rs.insert().ends_with("$8, SYSDATE)"));
        let lite = Ledger::new(&cfg, Dialect::Sqlite);
        assert_eq!(lite.ident(), "\"led\"");
        assert!(lite.lock("\"t\"").is_none());
        assert!(lite.lookup().ends_with("version_id = ?4 AND target = ?5"));
        assert!(lite.ddl()[1].starts_with("CREATE UNIQUE INDEX IF NOT EXISTS \"led_object\""));
    }
}
