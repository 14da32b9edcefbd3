//! `rin-ship check-config` for an import config: whether a file is one (it has Rin's keys,
//! which serve's config never has), and the report on one that loads: its targets, where its
//! queue is, and what was ignored.
//!
//! Must never: print a secret (targets are shown by [`super::Target::describe`], which masks
//! the password); contact anything.

use super::RinConfig;

/// Top-level keys of an import config that serve's config does not have.
const IMPORT_ONLY_KEYS: [&str; 9] = [
    "queue_name",
    "credentials",
    "redshift",
    "s3",
    "sql_option",
    "rin_ship",
    "insert_mode",
    "key_columns",
    "order_column",
];

/// Keys of a Rin target (serve's targets have `name`, `match`, `store`, `key`...).
const RIN_TARGET_KEYS: [&str; 5] = ["redshift", "s3", "sql_option", "discard", "break"];

/// Whether `text` is an import (Rin) config rather than serve's. Read as YAML when it parses
/// as such (templating may keep it from parsing), else by its top-level keys.
pub fn is_import_config(text: &str) -> bool {
    use serde_norway::Value;
    match serde_norway::from_str::<Value>(text) {
        Ok(Value::Mapping(top)) => {
            let key = |k: &str| top.contains_key(k);
            IMPORT_ONLY_KEYS.iter().any(|k| key(k))
                || top
                    .get("targets")
                    .and_then(Value::as_sequence)
                    .is_some_and(|ts| {
                        ts.iter().any(|t| {
                            t.as_mapping()
                                .is_some_and(|m| RIN_TARGET_KEYS.iter().any(|k| m.contains_key(*k)))
                        })
                    })
        }
        Ok(_) => false,
        Err(_) => text.lines().any(|l| {
            IMPORT_ONLY_KEYS.iter().any(|k| {
                l.strip_prefix(k)
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            })
        }),
    }
}

/// What `check-config` prints for an import config that loaded.
pub fn report(cfg: &RinConfig) -> Vec<String> {
    let queue = if !cfg.ext.queue_url.is_empty() {
        format!("queue {}", cfg.ext.queue_url)
    } else if !cfg.queue_name.is_empty() {
        format!("queue {}", cfg.queue_name)
    } else {
        "no queue".to_string()
    };
    let mut out = vec![format!(
        "import config ok: {} target(s), {queue}, warehouse {:?}",
        cfg.targets.len(),
        cfg.ext.warehouse
    )];
    for t in &cfg.targets {
        out.push(format!("  target {}: {}", t.index, t.describe()));
    }
    for w in &cfg.warnings {
        out.push(format!("warning: {w}"));
    }
    if cfg.require_queue().is_err() {
        out.push(
            "note: no queue_name (or rin_ship.queue_url): fine for the Lambda handler, backfill \
             and maintain; `rin-ship import` polling SQS needs one"
                .to_string(),
        );
    }
    out.push(
        "note: render the SQL of a load with `rin-ship import --config FILE --dry-run KEY`"
            .to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_configs_are_told_from_serve_configs() {
        assert!(is_import_config("queue_name: q\ntargets: []\n"));
        assert!(is_import_config(
            "targets:\n  - redshift: {table: t}\n    s3: {key_prefix: x}\n"
        ));
        // Unquoted templating keeps it from parsing as YAML: the top-level keys still tell.
        assert!(is_import_config(
            "redshift:\n  password: {{ must_env \"X\" }}: x\nqueue_name: q\n"
        ));
        assert!(!is_import_config(
            "data_dir: ./d\ntargets:\n  - {name: t, match: ['**'], store: local}\n"
        ));
        assert!(!is_import_config(""));
    }

    #[test]
    fn report_names_targets_warnings_and_the_missing_queue() {
        let cfg = RinConfig::parse(
            "bogus: 1\nrin_ship: {warehouse: postgres}\nredshift: {host: h, user: u, password: \
             SECRET}\ntargets:\n  - redshift: {table: t}\n    s3: {bucket: b, key_prefix: x/}\n",
            &|_| None,
        )
        .unwrap();
        let out = report(&cfg).join("\n");
        assert!(
            out.starts_with("import config ok: 1 target(s), no queue"),
            "{out}"
        );
        assert!(
            out.contains("target 0: s3://b/x/ => u:****@h:0//t"),
            "{out}"
        );
        assert!(
            out.contains("warning: unknown key `bogus` ignored"),
            "{out}"
        );
        assert!(out.contains("needs one"), "{out}");
        assert!(!out.contains("SECRET"), "{out}");
    }
}
