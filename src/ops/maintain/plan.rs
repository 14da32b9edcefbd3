//! What maintenance a table needs, from its statistics: pure functions, golden-tested.
//!
//! - Redshift: one `SVV_TABLE_INFO` row decides ([`plan`]): `unsorted` above
//!   `vacuum_unsorted_pct`, or rows marked for deletion (`tbl_rows - estimated_visible_rows`)
//!   above `vacuum_deleted_pct`, give `VACUUM <mode> t [TO n PERCENT]`; `stats_off` above
//!   `analyze_stats_off_pct` gives `ANALYZE t`.
//! - PostgreSQL: one `pg_stat_user_tables` row decides ([`plan_pg`]): dead tuples
//!   (`n_dead_tup / (n_live_tup + n_dead_tup)`) give `VACUUM (ANALYZE) t`, rows modified since
//!   the last analyze (`n_mod_since_analyze / n_live_tup`) give `ANALYZE t`.
//!
//! Must never: put a table name into SQL other than through `TableName::quoted`.

use crate::load::rin::maintenance::{Maintenance, TableName, VacuumMode};
use crate::load::warehouse::stats::{PgTableStats, TableInfo, pct};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Vacuum,
    Analyze,
    /// PostgreSQL `VACUUM (ANALYZE)`: both in one statement.
    VacuumAnalyze,
}

impl Action {
    pub fn vacuums(self) -> bool {
        matches!(self, Action::Vacuum | Action::VacuumAnalyze)
    }
    pub fn analyzes(self) -> bool {
        matches!(self, Action::Analyze | Action::VacuumAnalyze)
    }
}

/// A maintenance statement, run on its own (never inside a transaction).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub action: Action,
    /// The quoted table name.
    pub table: String,
    pub sql: String,
    /// Why it was chosen, for logs and `--dry-run`.
    pub reason: String,
}

/// The statements one `SVV_TABLE_INFO` row calls for: VACUUM first, then ANALYZE. Thresholds
/// are exclusive ("above"): a value equal to its threshold does nothing. An empty table
/// (`tbl_rows` 0) gets nothing.
pub fn plan(row: &TableInfo, cfg: &Maintenance) -> Vec<Statement> {
    let table = TableName {
        schema: row.schema.clone(),
        table: row.table.clone(),
    }
    .quoted();
    let mut out = Vec::new();
    if row.tbl_rows.is_some_and(|n| n <= 0.0) {
        return out;
    }
    let deleted = match (row.tbl_rows, row.estimated_visible_rows) {
        (Some(total), Some(visible)) if total > 0.0 => {
            Some(((total - visible).max(0.0) * 100.0 / total).min(100.0))
        }
        _ => None,
    };
    let mut reasons = Vec::new();
    if cfg.always {
        reasons.push("every round (always: true)".to_string());
    } else {
        let sort = row
            .unsorted
            .filter(|u| *u > cfg.vacuum_unsorted_pct.0)
            .map(|u| format!("unsorted {}% > {}%", pct(u), pct(cfg.vacuum_unsorted_pct.0)));
        let del = deleted.filter(|d| *d > cfg.deleted_pct()).map(|d| {
            format!(
                "rows marked for deletion {}% > {}%",
                pct(d),
                pct(cfg.deleted_pct())
            )
        });
        // Each mode acts only on what it fixes.
        match cfg.vacuum_mode {
            VacuumMode::SortOnly => reasons.extend(sort),
            VacuumMode::DeleteOnly => reasons.extend(del),
            VacuumMode::Full | VacuumMode::Reindex => reasons.extend(sort.into_iter().chain(del)),
        }
    }
    if !reasons.is_empty() {
        let mut sql = format!("VACUUM {} {table}", cfg.vacuum_mode.keyword());
        if let Some(n) = cfg.vacuum_to_pct
            && cfg.vacuum_mode != VacuumMode::Reindex
        {
            sql.push_str(&format!(" TO {n} PERCENT"));
        }
        out.push(Statement {
            action: Action::Vacuum,
            table: table.clone(),
            sql,
            reason: reasons.join(", "),
        });
    }
    let analyze = if cfg.always {
        Some("every round (always: true)".to_string())
    } else {
        row.stats_off
            .filter(|s| *s > cfg.analyze_stats_off_pct.0)
            .map(|s| {
                format!(
                    "stats_off {}% > {}%",
                    pct(s),
                    pct(cfg.analyze_stats_off_pct.0)
                )
            })
    };
    if let Some(reason) = analyze {
        out.push(Statement {
            action: Action::Analyze,
            sql: format!("ANALYZE {table}"),
            table,
            reason,
        });
    }
    out
}

/// The statement one `pg_stat_user_tables` row calls for: `VACUUM (ANALYZE)` when dead tuples
/// are above `vacuum_deleted_pct` (default `vacuum_unsorted_pct`), else `ANALYZE` when rows
/// modified since the last analyze are above `analyze_stats_off_pct` of the live rows.
pub fn plan_pg(row: &PgTableStats, cfg: &Maintenance) -> Vec<Statement> {
    let table = TableName {
        schema: row.schema.clone(),
        table: row.table.clone(),
    }
    .quoted();
    let live = row.n_live_tup.max(0) as f64;
    let dead = row.n_dead_tup.max(0) as f64;
    let modified = row.n_mod_since_analyze.max(0) as f64;
    if live + dead == 0.0 && modified == 0.0 {
        return Vec::new();
    }
    let dead_pct = if live + dead > 0.0 {
        dead * 100.0 / (live + dead)
    } else {
        0.0
    };
    let stats_off = if live > 0.0 {
        (modified * 100.0 / live).min(100.0)
    } else if modified > 0.0 {
        100.0
    } else {
        0.0
    };
    let mut reasons = Vec::new();
    if cfg.always {
        reasons.push("every round (always: true)".to_string());
    } else if dead_pct > cfg.deleted_pct() {
        reasons.push(format!(
            "dead tuples {}% > {}%",
            pct(dead_pct),
            pct(cfg.deleted_pct())
        ));
    }
    if !reasons.is_empty() {
        return vec![Statement {
            action: Action::VacuumAnalyze,
            sql: format!("VACUUM (ANALYZE) {table}"),
            table,
            reason: reasons.join(", "),
        }];
    }
    if stats_off > cfg.analyze_stats_off_pct.0 {
        return vec![Statement {
            action: Action::Analyze,
            sql: format!("ANALYZE {table}"),
            table,
            reason: format!(
                "modified since analyze {}% > {}%",
                pct(stats_off),
                pct(cfg.analyze_stats_off_pct.0)
            ),
        }];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::rin::maintenance::Pct;

    fn cfg() -> Maintenance {
        Maintenance::default()
    }

    fn row(unsorted: Option<f64>, stats_off: Option<f64>, rows: f64) -> TableInfo {
        TableInfo {
            schema: "public".into(),
            table: "logs".into(),
            unsorted,
            stats_off,
            tbl_rows: Some(rows),
            estimated_visible_rows: Some(rows),
            size: Some(100.0),
            pct_used: Some(0.5),
        }
    }

    fn sqls(v: &[Statement]) -> Vec<&str> {
        v.iter().map(|s| s.sql.as_str()).collect()
    }

    /// (description, row, config, expected SQL)
    #[test]
    fn golden_redshift_plans() {
        let with = |f: &dyn Fn(&mut Maintenance)| {
            let mut c = cfg();
            f(&mut c);
            c
        };
        let deleted = |total: f64, visible: f64| TableInfo {
            estimated_visible_rows: Some(visible),
            tbl_rows: Some(total),
            ..row(Some(0.0), Some(0.0), total)
        };
        let cases: Vec<(&str, TableInfo, Maintenance, Vec<&str>)> = vec![
            ("clean", row(Some(0.0), Some(0.0), 1e6), cfg(), vec![]),
            (
                "unsorted above",
                row(Some(10.01), Some(0.0), 1e6),
                cfg(),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "unsorted exactly at the threshold",
                row(Some(10.0), Some(10.0), 1e6),
                cfg(),
                vec![],
            ),
            (
                "stats_off above",
                row(Some(1.0), Some(10.5), 1e6),
                cfg(),
                vec![r#"ANALYZE "public"."logs""#],
            ),
            (
                "both: VACUUM first",
                row(Some(50.0), Some(100.0), 1e6),
                cfg(),
                vec![
                    r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#,
                    r#"ANALYZE "public"."logs""#,
                ],
            ),
            (
                "no sort key: NULL unsorted never sorts",
                row(None, Some(0.0), 1e6),
                cfg(),
                vec![],
            ),
            (
                "no sort key, deleted rows above",
                TableInfo {
                    unsorted: None,
                    ..deleted(1000.0, 850.0)
                },
                cfg(),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "deleted rows exactly at the threshold",
                deleted(1000.0, 900.0),
                cfg(),
                vec![],
            ),
            (
                "empty table",
                row(Some(100.0), Some(100.0), 0.0),
                cfg(),
                vec![],
            ),
            (
                "unknown row count: statistics still decide",
                TableInfo {
                    tbl_rows: None,
                    estimated_visible_rows: None,
                    ..row(Some(30.0), None, 0.0)
                },
                cfg(),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            ("null stats_off", row(Some(0.0), None, 5.0), cfg(), vec![]),
            (
                "SORT ONLY ignores deleted rows",
                deleted(1000.0, 500.0),
                with(&|c| c.vacuum_mode = VacuumMode::SortOnly),
                vec![],
            ),
            (
                "SORT ONLY on unsorted rows",
                row(Some(20.0), Some(0.0), 10.0),
                with(&|c| {
                    c.vacuum_mode = VacuumMode::SortOnly;
                    c.vacuum_to_pct = Some(75)
                }),
                vec![r#"VACUUM SORT ONLY "public"."logs" TO 75 PERCENT"#],
            ),
            (
                "DELETE ONLY ignores unsorted rows",
                row(Some(90.0), Some(0.0), 10.0),
                with(&|c| c.vacuum_mode = VacuumMode::DeleteOnly),
                vec![],
            ),
            (
                "DELETE ONLY on deleted rows",
                deleted(1000.0, 800.0),
                with(&|c| c.vacuum_mode = VacuumMode::DeleteOnly),
                vec![r#"VACUUM DELETE ONLY "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "REINDEX never takes TO n PERCENT",
                row(Some(20.0), Some(0.0), 10.0),
                with(&|c| c.vacuum_mode = VacuumMode::Reindex),
                vec![r#"VACUUM REINDEX "public"."logs""#],
            ),
            (
                "vacuum_to_pct null",
                row(Some(20.0), Some(0.0), 10.0),
                with(&|c| c.vacuum_to_pct = None),
                vec![r#"VACUUM FULL "public"."logs""#],
            ),
            (
                "separate deleted threshold",
                deleted(1000.0, 960.0),
                with(&|c| c.vacuum_deleted_pct = Some(Pct(3.0))),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "zero thresholds: anything above zero",
                row(Some(0.01), Some(0.0), 10.0),
                with(&|c| {
                    c.vacuum_unsorted_pct = Pct(0.0);
                    c.analyze_stats_off_pct = Pct(0.0)
                }),
                vec![r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#],
            ),
            (
                "always: a schedule, whatever the statistics",
                row(Some(0.0), Some(0.0), 10.0),
                with(&|c| c.always = true),
                vec![
                    r#"VACUUM FULL "public"."logs" TO 95 PERCENT"#,
                    r#"ANALYZE "public"."logs""#,
                ],
            ),
            (
                "always still skips empty tables",
                row(Some(0.0), Some(0.0), 0.0),
                with(&|c| c.always = true),
                vec![],
            ),
            (
                "odd identifiers are quoted",
                TableInfo {
                    schema: "My\"Schema".into(),
                    table: "log table; DROP TABLE x".into(),
                    ..row(Some(11.0), Some(11.0), 10.0)
                },
                cfg(),
                vec![
                    r#"VACUUM FULL "My""Schema"."log table; DROP TABLE x" TO 95 PERCENT"#,
                    r#"ANALYZE "My""Schema"."log table; DROP TABLE x""#,
                ],
            ),
        ];
        for (what, r, c, want) in cases {
            let got = plan(&r, &c);
            assert_eq!(sqls(&got), want, "{what}");
            for s in &got {
                assert!(!s.reason.is_empty(), "{what}: no reason");
            }
        }
    }

    #[test]
    fn reasons_name_the_numbers() {
        let p = plan(&row(Some(12.5), Some(40.0), 10.0), &cfg());
        assert_eq!(p[0].action, Action::Vacuum);
        assert_eq!(p[0].reason, "unsorted 12.5% > 10%");
        assert_eq!(p[1].action, Action::Analyze);
        assert_eq!(p[1].reason, "stats_off 40% > 10%");
        let d = TableInfo {
            estimated_visible_rows: Some(700.0),
            ..row(Some(12.5), Some(0.0), 1000.0)
        };
        assert_eq!(
            plan(&d, &cfg())[0].reason,
            "unsorted 12.5% > 10%, rows marked for deletion 30% > 10%"
        );
    }

    fn pg(live: i64, dead: i64, modified: i64) -> PgTableStats {
        PgTableStats {
            schema: "public".into(),
            table: "t".into(),
            n_live_tup: live,
            n_dead_tup: dead,
            n_mod_since_analyze: modified,
            size_bytes: 8192,
        }
    }

    #[test]
    fn golden_postgres_plans() {
        let mut c15 = cfg();
        c15.vacuum_deleted_pct = Some(Pct(15.0));
        let mut always = cfg();
        always.always = true;
        let cases: Vec<(&str, PgTableStats, Maintenance, Vec<&str>)> = vec![
            ("clean", pg(1000, 0, 0), cfg(), vec![]),
            ("empty", pg(0, 0, 0), cfg(), vec![]),
            (
                "dead tuples above",
                pg(500, 500, 1500),
                cfg(),
                vec![r#"VACUUM (ANALYZE) "public"."t""#],
            ),
            ("dead tuples exactly at 10%", pg(900, 100, 0), cfg(), vec![]),
            (
                "dead tuples just above 10%",
                pg(899, 101, 0),
                cfg(),
                vec![r#"VACUUM (ANALYZE) "public"."t""#],
            ),
            (
                "modified since analyze above",
                pg(1200, 0, 200),
                cfg(),
                vec![r#"ANALYZE "public"."t""#],
            ),
            ("modified exactly at 10%", pg(1000, 0, 100), cfg(), vec![]),
            (
                "every row deleted",
                pg(0, 300, 600),
                cfg(),
                vec![r#"VACUUM (ANALYZE) "public"."t""#],
            ),
            (
                "never analyzed, rows just inserted",
                pg(0, 0, 50),
                cfg(),
                vec![r#"ANALYZE "public"."t""#],
            ),
            ("own dead-tuple threshold", pg(880, 120, 0), c15, vec![]),
            (
                "always",
                pg(10, 0, 0),
                always,
                vec![r#"VACUUM (ANALYZE) "public"."t""#],
            ),
        ];
        for (what, r, c, want) in cases {
            assert_eq!(sqls(&plan_pg(&r, &c)), want, "{what}");
        }
        let odd = PgTableStats {
            schema: "we.ird".into(),
            table: "Odd \"Name\"".into(),
            ..pg(1, 9, 0)
        };
        assert_eq!(
            sqls(&plan_pg(&odd, &cfg())),
            vec![r#"VACUUM (ANALYZE) "we.ird"."Odd ""Name""""#]
        );
    }
}
