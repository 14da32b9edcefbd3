//! What `rin-ship import --dry-run KEY` shows of a load around each driver's own statements:
//! the transaction's start and the ledger's statements, taken from [`Ledger`] (so what is shown is what runs, never a
//! second copy of it), in the order the load runs them, with their parameters written out.
//! What only the load knows (the object's ETag and version, the batch id, row counts) is named
//! instead of shown.
//!
//! Must never: show a secret (the ledger's statements hold none; drivers mask their own);
//! contact anything.

use crate::load::ledger::{Dialect, Ledger};
use crate::load::rin::{Destination, RinConfig, quote_literal};

/// How [`LedgerShown::on_connect`] marks its statements.
pub const ONCE: &str = "-- once per connection, before the first load: ";
pub const MISSING: &str = "-- once per connection, when the ledger is missing: ";

/// The ledger's part of one shown load: one destination, its objects (bucket, key).
pub struct LedgerShown<'a> {
    pub ledger: Ledger,
    dialect: Dialect,
    target: String,
    objects: &'a [(&'a str, &'a str)],
}

impl<'a> LedgerShown<'a> {
    pub fn new(
        cfg: &RinConfig,
        dialect: Dialect,
        dest: &Destination,
        objects: &'a [(&'a str, &'a str)],
    ) -> LedgerShown<'a> {
        LedgerShown {
            ledger: Ledger::new(cfg, dialect),
            dialect,
            target: dest.qualified(),
            objects,
        }
    }

    /// The ledger's creation, once per connection before its first load (PostgreSQL first
    /// looks whether it exists: its DDL would wait for every load in flight).
    pub fn on_connect(&self) -> Vec<String> {
        let ddl = self.ledger.ddl().into_iter();
        match self.ledger.exists() {
            Some(exists) => std::iter::once(format!("{ONCE}{exists}"))
                .chain(ddl.map(|s| format!("{MISSING}{s}")))
                .collect(),
            None => ddl.map(|s| format!("{ONCE}{s}")).collect(),
        }
    }

    /// The transaction's start, the ledger's lock, and the lookup of each object (one found:
    /// skipped).
    pub fn begin(&self) -> Vec<String> {
        let mut out = vec![match self.dialect {
            // SQLite's lock is the transaction itself (writers queue up).
            Dialect::Sqlite => "BEGIN IMMEDIATE".to_string(),
            // What tokio-postgres's `transaction()` sends.
            _ => "START TRANSACTION".to_string(),
        }];
        out.extend(self.ledger.lock(&self.target));
        let lookup = self.ledger.lookup();
        for (bucket, key) in self.objects {
            out.push(format!(
                "{lookup}  -- {}; a row found: already loaded, skipped",
                self.object_params(bucket, key)
            ));
        }
        out
    }

    /// The ledger row of each object, in the load's transaction; `rows` and `batch_rows` say
    /// what `$6` and `$8` are for this driver.
    pub fn record(&self, rows: &str, batch_rows: &str) -> Vec<String> {
        let insert = self.ledger.insert();
        self.objects
            .iter()
            .map(|(bucket, key)| {
                format!(
                    "{insert}  -- {}, {} = {rows}, {} = the load's batch id, {} = {batch_rows}",
                    self.object_params(bucket, key),
                    self.p(6),
                    self.p(7),
                    self.p(8)
                )
            })
            .collect()
    }

    /// The parameters naming one object in one target (`$1..$5`).
    fn object_params(&self, bucket: &str, key: &str) -> String {
        format!(
            "{} = {}, {} = {}, {} = the object's ETag, {} = its version id ('' unversioned), {} = {}",
            self.p(1),
            quote_literal(bucket),
            self.p(2),
            quote_literal(key),
            self.p(3),
            self.p(4),
            self.p(5),
            quote_literal(&self.target)
        )
    }

    fn p(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            _ => format!("${n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_statements_shown_with_their_parameters() {
        let cfg = RinConfig::parse(
            "queue_name: q\nrin_ship: {ledger_table: rin.led}\ntargets:\n  - redshift: {table: t}\n    s3: {bucket: b, key_prefix: x}\n",
            &|_| None,
        )
        .unwrap();
        let dest = Destination {
            target: 0,
            schema: "public".into(),
            table: "t".into(),
        };
        let objects = [("b", "x/it's.json.gz")];
        let pg = LedgerShown::new(&cfg, Dialect::Postgres, &dest, &objects);
        let begin = pg.begin();
        assert_eq!(begin[0], "START TRANSACTION");
        assert_eq!(begin[1], pg.ledger.lock(&pg.target).unwrap());
        assert!(begin[2].starts_with(&pg.ledger.lookup()), "{}", begin[2]);
        assert!(
            begin[2].contains("$2 = 'x/it''s.json.gz'")
                && begin[2].contains("$3 = the object's ETag"),
            "{}",
            begin[2]
        );
        assert!(begin[2].contains(r#"$5 = '"public"."t"'"#), "{}", begin[2]);
        let rec = pg.record("its rows", "the same");
        assert!(rec[0].starts_with(&pg.ledger.insert()), "{}", rec[0]);
        assert!(rec[0].contains("$6 = its rows"), "{}", rec[0]);
        assert_eq!(pg.on_connect().len(), pg.ledger.ddl().len() + 1);
        assert_eq!(
            pg.on_connect()[0],
            format!("{ONCE}{}", pg.ledger.exists().unwrap())
        );
        let lite = LedgerShown::new(&cfg, Dialect::Sqlite, &dest, &objects);
        let begin = lite.begin();
        assert_eq!(begin[0], "BEGIN IMMEDIATE");
        assert_eq!(begin.len(), 2, "no lock statement: {begin:?}");
        assert!(begin[1].contains("?1 = 'b'"), "{}", begin[1]);
    }
}
