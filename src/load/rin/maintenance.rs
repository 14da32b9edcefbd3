//! The `rin_ship.maintenance:` keys of a Rin config: which tables `rin-ship maintain` looks
//! after, the thresholds that call for VACUUM / ANALYZE, and the schedule. The planning and the
//! rounds are `ops::maintain`'s.

use super::ident::quote_ident;
use super::schema::Warehouse;
use crate::common::units::Span;
use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer, de};
use std::fmt;
use std::time::Duration;

/// `rin_ship.maintenance:` in the Rin config. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Maintenance {
    /// Tables to look after (`schema.table`, `table` meaning `public.table`, `"odd.name"`
    /// quoted). Empty: every target table that is a fixed name (no `$n`) plus every table
    /// named in the ledger's `target` column.
    pub tables: Vec<TableName>,
    /// Redshift: VACUUM when `unsorted` is above this percentage.
    pub vacuum_unsorted_pct: Pct,
    /// Rows marked for deletion (Redshift) / dead tuples (PostgreSQL) above this percentage
    /// VACUUM. Default: `vacuum_unsorted_pct`.
    pub vacuum_deleted_pct: Option<Pct>,
    /// ANALYZE when `stats_off` (Redshift) / rows modified since the last analyze
    /// (PostgreSQL) is above this percentage.
    pub analyze_stats_off_pct: Pct,
    /// Redshift VACUUM flavour.
    pub vacuum_mode: VacuumMode,
    /// Redshift `TO n PERCENT` (sort / delete threshold); `null` leaves it out. Never used
    /// with `REINDEX`.
    #[serde(deserialize_with = "de_to_pct")]
    pub vacuum_to_pct: Option<u8>,
    /// Time between rounds (`rin-ship maintain` without `--once`, and inside `import`).
    #[serde(alias = "schedule")]
    pub interval: Span,
    /// Skip a table's statements while at least this many COPY/INSERT statements run on its
    /// warehouse; 0 never skips.
    pub heavy_load_queries: u32,
    /// Redshift: warn when the cluster's disks are fuller than this percentage.
    pub disk_warn_pct: Pct,
    /// VACUUM and ANALYZE every non-empty table every round, whatever its statistics (a plain
    /// schedule).
    pub always: bool,
    /// Run the rounds inside `rin-ship import` too.
    pub enabled_in_import: bool,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            tables: Vec::new(),
            vacuum_unsorted_pct: Pct(10.0),
            vacuum_deleted_pct: None,
            analyze_stats_off_pct: Pct(10.0),
            vacuum_mode: VacuumMode::Full,
            vacuum_to_pct: Some(95),
            interval: Span(Duration::from_secs(6 * 3600)),
            heavy_load_queries: 2,
            disk_warn_pct: Pct(80.0),
            always: false,
            enabled_in_import: false,
        }
    }
}

impl Maintenance {
    pub fn deleted_pct(&self) -> f64 {
        self.vacuum_deleted_pct
            .unwrap_or(self.vacuum_unsorted_pct)
            .0
    }

    pub fn validate(&self) -> Result<()> {
        if self.interval.0 < Duration::from_secs(1) {
            bail!("rin_ship.maintenance.interval must be at least 1s");
        }
        Ok(())
    }
}

/// A percentage, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Pct(pub f64);

impl<'de> Deserialize<'de> for Pct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=100.0).contains(&v) {
            return Err(de::Error::custom(format!(
                "{v} is not a percentage (0..=100)"
            )));
        }
        Ok(Pct(v))
    }
}

fn de_to_pct<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match Option::<u64>::deserialize(d)? {
        None => Ok(None),
        Some(n) if n <= 100 => Ok(Some(n as u8)),
        Some(n) => Err(de::Error::custom(format!(
            "{n} is not a percentage (0..=100)"
        ))),
    }
}

/// Redshift's VACUUM options.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
pub enum VacuumMode {
    /// Sort and reclaim deleted rows (Redshift's default).
    #[default]
    #[serde(rename = "FULL", alias = "full")]
    Full,
    #[serde(rename = "SORT ONLY", alias = "sort only", alias = "sort_only")]
    SortOnly,
    #[serde(rename = "DELETE ONLY", alias = "delete only", alias = "delete_only")]
    DeleteOnly,
    /// Interleaved sort keys: re-analyze their distribution, then a full vacuum.
    #[serde(rename = "REINDEX", alias = "reindex")]
    Reindex,
}

impl VacuumMode {
    pub fn keyword(self) -> &'static str {
        match self {
            VacuumMode::Full => "FULL",
            VacuumMode::SortOnly => "SORT ONLY",
            VacuumMode::DeleteOnly => "DELETE ONLY",
            VacuumMode::Reindex => "REINDEX",
        }
    }
}

/// A table name from the config or the ledger: exact (case-sensitive) parts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// `public.logs`, `logs` (schema `public`), `"my.schema"."odd ""name"""`.
    pub fn parse(s: &str) -> Result<TableName> {
        let mut parts: Vec<String> = Vec::new();
        let mut chars = s.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => bail!("{s:?}: unterminated quoted name"),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' {
                        bail!("{s:?}: a quote inside an unquoted name");
                    }
                    part.push(c);
                    chars.next();
                }
                part = part.trim().to_string();
            }
            if part.is_empty() {
                bail!("{s:?}: empty name");
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => bail!("{s:?}: unexpected {c:?} after a quoted name"),
            }
        }
        match parts.len() {
            1 => Ok(TableName {
                schema: "public".into(),
                table: parts.remove(0),
            }),
            2 => {
                let table = parts.pop().expect("two parts");
                Ok(TableName {
                    schema: parts.pop().expect("two parts"),
                    table,
                })
            }
            _ => bail!("{s:?}: expected table or schema.table"),
        }
    }

    /// `"schema"."table"`, each part through [`quote_ident`].
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// Redshift folds identifiers to lower case (unless `enable_case_sensitive_identifier`),
    /// so its catalog names are matched without regard to case there.
    pub fn matches(&self, schema: &str, table: &str, warehouse: Warehouse) -> bool {
        match warehouse {
            Warehouse::Postgres => self.schema == schema && self.table == table,
            Warehouse::Redshift => {
                self.schema.eq_ignore_ascii_case(schema) && self.table.eq_ignore_ascii_case(table)
            }
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TableName::parse(&s).map_err(|e| de::Error::custom(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let p = |s: &str| TableName::parse(s).map(|n| (n.schema, n.table));
        assert_eq!(p("logs").unwrap(), ("public".into(), "logs".into()));
        assert_eq!(p("app.Logs").unwrap(), ("app".into(), "Logs".into()));
        assert_eq!(
            p(r#""my.schema"."odd ""name""""#).unwrap(),
            ("my.schema".into(), "odd \"name\"".into())
        );
        assert_eq!(
            p(r#""public"."logs""#).unwrap(),
            ("public".into(), "logs".into())
        );
        assert_eq!(p(r#""logs""#).unwrap(), ("public".into(), "logs".into()));
        assert!(p("a.b.c").is_err());
        assert!(p("").is_err());
        assert!(p("a.").is_err());
        assert!(p(r#""unterminated"#).is_err());
        assert!(p(r#"a"b"#).is_err());
        assert!(p(r#""a"x.b"#).is_err());
        // What the ledger stores (Destination::qualified) reads back.
        let n = TableName::parse(r#""s"."t""x""#).unwrap();
        assert_eq!(n.quoted(), r#""s"."t""x""#);
        assert!(n.matches("s", "t\"x", Warehouse::Postgres));
        assert!(!n.matches("S", "t\"x", Warehouse::Postgres));
        assert!(n.matches("S", "T\"X", Warehouse::Redshift));
    }
}
