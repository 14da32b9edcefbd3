//! The Redshift dialect: the COPY statement (over a manifest of exact object URLs, never a bare
//! key, which Redshift treats as a prefix), the manifest itself, the statements of each insert
//! mode, and the load-error views. Rendering is pure so it is golden-tested; both Redshift
//! drivers (the wire protocol and the Data API) run exactly these statements. Secrets are
//! replaced by `****` in every rendering meant for people.

use crate::common::codec::Codec;
use crate::load::rin::{
    Authorization, Credentials, InsertMode, RinConfig, Target, quote_ident, quote_literal,
};
use serde::Serialize;

/// The comment every COPY starts with: a client that sees a leading `COPY` may switch to the
/// PostgreSQL COPY sub-protocol, which Redshift's `COPY FROM 's3://'` does not speak.
pub const SQL_PREFIX: &str = "/* rin-ship */ ";

#[derive(Serialize)]
struct Manifest {
    entries: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    url: String,
    mandatory: bool,
}

/// `{"entries":[{"url":"s3://b/k","mandatory":true},...]}` for (bucket, key) pairs, in order.
pub fn manifest_json(objects: &[(&str, &str)]) -> String {
    let m = Manifest {
        entries: objects
            .iter()
            .map(|(b, k)| Entry {
                url: format!("s3://{b}/{k}"),
                mandatory: true,
            })
            .collect(),
    };
    serde_json::to_string(&m).expect("manifest serializes")
}

/// The authorization clause. With `masked`, secret values are `****`.
pub fn authorization(cred: &Credentials, form: Authorization, masked: bool) -> String {
    let secret = |s: &str| {
        if masked {
            "****".to_string()
        } else {
            s.to_string()
        }
    };
    match form {
        Authorization::Credentials => {
            let inner = if !cred.aws_iam_role.is_empty() {
                format!("aws_iam_role={}", cred.aws_iam_role)
            } else {
                let mut s = format!(
                    "aws_access_key_id={};aws_secret_access_key={}",
                    cred.aws_access_key_id,
                    secret(&cred.aws_secret_access_key)
                );
                if !cred.aws_session_token.is_empty() {
                    s.push_str(&format!(";token={}", secret(&cred.aws_session_token)));
                }
                s
            };
            format!("CREDENTIALS {}", quote_literal(&inner))
        }
        Authorization::IamRole => {
            if cred.aws_iam_role.is_empty() {
                "IAM_ROLE default".to_string()
            } else {
                format!("IAM_ROLE {}", quote_literal(&cred.aws_iam_role))
            }
        }
        Authorization::AccessKeys => {
            let mut s = format!(
                "ACCESS_KEY_ID {} SECRET_ACCESS_KEY {}",
                quote_literal(&cred.aws_access_key_id),
                quote_literal(&secret(&cred.aws_secret_access_key))
            );
            if !cred.aws_session_token.is_empty() {
                s.push_str(&format!(
                    " SESSION_TOKEN {}",
                    quote_literal(&secret(&cred.aws_session_token))
                ));
            }
            s
        }
    }
}

/// `/* rin-ship */ COPY <table> FROM '<manifest url>' <auth> MANIFEST [REGION 'r'] <sql_option>`.
pub fn copy_sql(
    qualified_table: &str,
    manifest_url: &str,
    cred: &Credentials,
    form: Authorization,
    region: &str,
    sql_option: &str,
    masked: bool,
) -> String {
    let mut s = format!(
        "{SQL_PREFIX}COPY {qualified_table} FROM {} {} MANIFEST",
        quote_literal(manifest_url),
        authorization(cred, form, masked)
    );
    if !region.is_empty() {
        s.push_str(&format!(" REGION {}", quote_literal(region)));
    }
    let opt = sql_option.trim();
    if !opt.is_empty() {
        s.push(' ');
        s.push_str(opt);
    }
    s
}

/// The compression keywords of Redshift's COPY.
const COMPRESSIONS: [&str; 4] = ["GZIP", "BZIP2", "LZOP", "ZSTD"];

/// `sql_option` fitted to the compression of the objects (`codec`, from their keys; `None`:
/// unknown): a compression keyword naming another codec is replaced (with a warning, as the
/// second value), and zstd objects get `ZSTD` when the option names none. gzip objects under
/// an option naming none are left as they are, as Rin leaves them (its configs say `GZIP`).
pub fn fit_compression(sql_option: &str, codec: Option<Codec>) -> (String, Option<String>) {
    let Some(codec) = codec else {
        return (sql_option.to_string(), None);
    };
    let want = codec.copy_keyword();
    // Words outside quoted literals ('...' with '' inside).
    let mut words: Vec<(usize, usize)> = Vec::new();
    let (mut in_quote, mut start) = (false, None::<usize>);
    for (i, c) in sql_option.char_indices().chain([(sql_option.len(), ' ')]) {
        if c == '\'' {
            in_quote = !in_quote;
        }
        let word = !in_quote && (c.is_ascii_alphanumeric() || c == '_');
        match (word, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                words.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    let named = words.iter().find(|(s, e)| {
        COMPRESSIONS
            .iter()
            .any(|k| sql_option[*s..*e].eq_ignore_ascii_case(k))
    });
    match named {
        Some((s, e)) if sql_option[*s..*e].eq_ignore_ascii_case(want) => {
            (sql_option.to_string(), None)
        }
        Some((s, e)) => {
            let warning = format!(
                "sql_option names {} but the objects are {} ({}): the COPY says {want}",
                &sql_option[*s..*e],
                codec.name(),
                codec.extension()
            );
            let fitted = format!("{}{want}{}", &sql_option[..*s], &sql_option[*e..]);
            (fitted, Some(warning))
        }
        None if codec == Codec::Zstd => {
            let opt = sql_option.trim();
            let fitted = if opt.is_empty() {
                want.to_string()
            } else {
                format!("{opt} {want}")
            };
            (fitted, None)
        }
        None => (sql_option.to_string(), None),
    }
}

/// Everything the statements loading one manifest into one table depend on.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan<'a> {
    /// `"schema"."table"`, quoted ([`crate::load::rin::Destination::qualified`]).
    pub table: &'a str,
    pub manifest_url: &'a str,
    pub credentials: &'a Credentials,
    pub authorization: Authorization,
    pub region: &'a str,
    pub sql_option: &'a str,
    pub mode: InsertMode,
    /// Plain identifiers (validated at config load); used by the keyed modes only.
    pub key_columns: &'a [String],
    /// A plain identifier; required by the keyed modes on Redshift (validated at load).
    pub order_column: &'a str,
}

impl<'a> LoadPlan<'a> {
    /// The plan of `target` (its region, `sql_option` and insert mode) for one manifest.
    pub fn new(
        cfg: &'a RinConfig,
        target: &'a Target,
        table: &'a str,
        manifest_url: &'a str,
    ) -> LoadPlan<'a> {
        LoadPlan {
            table,
            manifest_url,
            credentials: &cfg.credentials,
            authorization: cfg.ext.authorization,
            region: &target.s3.region,
            sql_option: &target.sql_option,
            mode: target.insert_mode,
            key_columns: &target.key_columns,
            order_column: &target.order_column,
        }
    }

    /// The index, in [`load_statements`], of the statement whose row count is the number of
    /// rows written to the table (the COPY, or the keyed modes' `INSERT`).
    pub fn rows_statement(&self) -> usize {
        match self.mode {
            InsertMode::Append => 0,
            InsertMode::Truncate => 1,
            InsertMode::KeepExisting | InsertMode::OverwriteExisting => 3,
        }
    }
}

/// The temporary table the keyed modes COPY into (dropped by the last statement).
pub const STAGE: &str = "rin_ship_stage";

/// The statements that load the manifest into the table in the plan's insert mode: what runs
/// inside the ledger transaction, between the ledger's LOCK + check and its INSERT. None
/// commits implicitly (so no `TRUNCATE`). With `masked`, secrets are `****`.
///
/// - `APPEND`: `COPY table`.
/// - `TRUNCATE`: `DELETE FROM table`; `COPY table`.
/// - `KEEP_EXISTING` / `OVERWRITE_EXISTING`: `CREATE TEMP TABLE rin_ship_stage (LIKE table
///   INCLUDING DEFAULTS)`; `COPY rin_ship_stage`; then `DELETE FROM rin_ship_stage USING
///   table` (keep: staged rows whose key the table has go) or `DELETE FROM table USING
///   rin_ship_stage` (overwrite: the table's rows with a staged key go); `INSERT INTO table
///   SELECT s.* FROM rin_ship_stage s QUALIFY ROW_NUMBER() OVER (PARTITION BY keys ORDER BY
///   order_column ...) = 1 OR <a key is NULL>` (one row per key: the highest `order_column`
///   for overwrite, the lowest for keep; NULL orders lose; rows with a NULL key never match
///   and are all inserted); `DROP TABLE rin_ship_stage`.
pub fn load_statements(plan: &LoadPlan, masked: bool) -> Vec<String> {
    let copy = |table: &str| {
        copy_sql(
            table,
            plan.manifest_url,
            plan.credentials,
            plan.authorization,
            plan.region,
            plan.sql_option,
            masked,
        )
    };
    let t = plan.table;
    match plan.mode {
        InsertMode::Append => vec![copy(t)],
        InsertMode::Truncate => vec![format!("DELETE FROM {t}"), copy(t)],
        InsertMode::KeepExisting | InsertMode::OverwriteExisting => {
            let keys: Vec<String> = plan.key_columns.iter().map(|k| quote_ident(k)).collect();
            let matches = keys
                .iter()
                .map(|k| format!("{t}.{k} = {STAGE}.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ");
            let keep = plan.mode == InsertMode::KeepExisting;
            let delete = if keep {
                format!("DELETE FROM {STAGE} USING {t} WHERE {matches}")
            } else {
                format!("DELETE FROM {t} USING {STAGE} WHERE {matches}")
            };
            let partition = keys
                .iter()
                .map(|k| format!("s.{k}"))
                .collect::<Vec<_>>()
                .join(", ");
            let order = format!(
                "s.{} {} NULLS LAST",
                quote_ident(plan.order_column),
                if keep { "ASC" } else { "DESC" }
            );
            let null_keys: String = keys.iter().map(|k| format!(" OR s.{k} IS NULL")).collect();
            vec![
                format!("CREATE TEMP TABLE {STAGE} (LIKE {t} INCLUDING DEFAULTS)"),
                copy(STAGE),
                delete,
                format!(
                    "INSERT INTO {t} SELECT s.* FROM {STAGE} s QUALIFY ROW_NUMBER() OVER \
                     (PARTITION BY {partition} ORDER BY {order}) = 1{null_keys}"
                ),
                format!("DROP TABLE {STAGE}"),
            ]
        }
    }
}

/// One row of `SYS_LOAD_ERROR_DETAIL` / `STL_LOAD_ERRORS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadErrorRow {
    /// The object's `s3://` URL (Redshift keeps at most 256 characters of it).
    pub file: String,
    pub line: Option<u64>,
    pub column: String,
    pub reason: String,
}

/// Why a COPY failed, once its transaction rolled back, newest first: the serverless/new
/// view, then the provisioned one (Serverless has no STL views). Both filter on this session:
/// the SYS view by its process id over the last minute, the STL view by the last COPY's id.
pub const LOAD_ERROR_QUERIES: [&str; 2] = [
    "SELECT TRIM(file_name), line_number, TRIM(column_name), TRIM(error_message) \
     FROM sys_load_error_detail WHERE session_id = pg_backend_pid() \
     AND start_time > DATEADD(minute, -1, GETDATE()) ORDER BY start_time DESC LIMIT 10",
    "SELECT TRIM(filename), line_number, TRIM(colname), TRIM(err_reason) \
     FROM stl_load_errors WHERE query = pg_last_copy_id() ORDER BY starttime DESC LIMIT 10",
];

/// Rows of a [`LOAD_ERROR_QUERIES`] answer (text columns: file, line, column, reason).
pub fn parse_load_errors<'r, I>(rows: I) -> Vec<LoadErrorRow>
where
    I: IntoIterator<Item = [Option<&'r str>; 4]>,
{
    rows.into_iter()
        .map(|[file, line, column, reason]| LoadErrorRow {
            file: file.unwrap_or("").trim().to_string(),
            line: line.and_then(|l| l.trim().parse().ok()),
            column: column.unwrap_or("").trim().to_string(),
            reason: reason.unwrap_or("").trim().to_string(),
        })
        .collect()
}

/// Rin's own statement for one object (no manifest), exactly as Rin renders it; used only to
/// check compatibility with Rin's own tests, never executed.
#[cfg(test)]
pub fn rin_sql(
    qualified_table: &str,
    bucket: &str,
    key: &str,
    cred: &Credentials,
    region: &str,
    sql_option: &str,
) -> String {
    format!(
        "/* Rin */ COPY {qualified_table} FROM {} {} REGION '{region}' {sql_option}",
        quote_literal(&format!("s3://{bucket}/{key}")),
        authorization(cred, Authorization::Credentials, false)
    )
}

/// The manifest object key for a batch: deterministic in its entries, so a retried batch
/// rewrites the same manifest.
pub fn manifest_key(prefix: &str, qualified_table: &str, objects: &[(&str, &str)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(qualified_table.as_bytes());
    for (b, k) in objects {
        h.update(b"\n");
        h.update(b.as_bytes());
        h.update(b"/");
        h.update(k.as_bytes());
    }
    format!("{prefix}{}.manifest", hex::encode(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::ledger::failure::{is_load_error_message, match_file};
    use crate::load::rin::{MatchOutcome, RinConfig};

    fn keys() -> Credentials {
        Credentials {
            aws_access_key_id: "AAA".into(),
            aws_secret_access_key: "SSS".into(),
            aws_region: "ap-northeast-1".into(),
            ..Default::default()
        }
    }

    const M: &str = "s3://b/rin-ship/manifests/x.manifest";

    #[test]
    fn golden_iam_role() {
        let c = Credentials {
            aws_iam_role: "arn:aws:iam::123456789012:role/rin".into(),
            ..Default::default()
        };
        assert_eq!(
            copy_sql(
                "\"public\".\"t\"",
                M,
                &c,
                Authorization::IamRole,
                "ap-northeast-1",
                "JSON 'auto' GZIP",
                false
            ),
            "/* rin-ship */ COPY \"public\".\"t\" FROM 's3://b/rin-ship/manifests/x.manifest' IAM_ROLE 'arn:aws:iam::123456789012:role/rin' MANIFEST REGION 'ap-northeast-1' JSON 'auto' GZIP"
        );
        assert_eq!(
            copy_sql(
                "\"t\"",
                M,
                &Credentials::default(),
                Authorization::IamRole,
                "",
                "",
                false
            ),
            "/* rin-ship */ COPY \"t\" FROM 's3://b/rin-ship/manifests/x.manifest' IAM_ROLE default MANIFEST"
        );
        assert_eq!(
            copy_sql(
                "\"t\"",
                M,
                &c,
                Authorization::Credentials,
                "us-east-1",
                "JSON 'auto'",
                false
            ),
            "/* rin-ship */ COPY \"t\" FROM 's3://b/rin-ship/manifests/x.manifest' CREDENTIALS 'aws_iam_role=arn:aws:iam::123456789012:role/rin' MANIFEST REGION 'us-east-1' JSON 'auto'"
        );
    }

    #[test]
    fn golden_access_keys() {
        let mut c = keys();
        assert_eq!(
            copy_sql(
                "\"s\".\"t\"",
                M,
                &c,
                Authorization::AccessKeys,
                "ap-northeast-1",
                "JSON 'auto' GZIP",
                false
            ),
            "/* rin-ship */ COPY \"s\".\"t\" FROM 's3://b/rin-ship/manifests/x.manifest' ACCESS_KEY_ID 'AAA' SECRET_ACCESS_KEY 'SSS' MANIFEST REGION 'ap-northeast-1' JSON 'auto' GZIP"
        );
        c.aws_session_token = "TOK".into();
        assert_eq!(
            copy_sql(
                "\"s\".\"t\"",
                M,
                &c,
                Authorization::AccessKeys,
                "",
                "GZIP",
                false
            ),
            "/* rin-ship */ COPY \"s\".\"t\" FROM 's3://b/rin-ship/manifests/x.manifest' ACCESS_KEY_ID 'AAA' SECRET_ACCESS_KEY 'SSS' SESSION_TOKEN 'TOK' MANIFEST GZIP"
        );
        assert_eq!(
            copy_sql(
                "\"s\".\"t\"",
                M,
                &c,
                Authorization::AccessKeys,
                "",
                "GZIP",
                true
            ),
            "/* rin-ship */ COPY \"s\".\"t\" FROM 's3://b/rin-ship/manifests/x.manifest' ACCESS_KEY_ID 'AAA' SECRET_ACCESS_KEY '****' SESSION_TOKEN '****' MANIFEST GZIP"
        );
    }

    #[test]
    fn golden_rin_credentials_forms() {
        let mut c = keys();
        assert_eq!(
            copy_sql(
                "\"foo\"",
                M,
                &c,
                Authorization::Credentials,
                "ap-northeast-1",
                "JSON 'auto' GZIP",
                false
            ),
            "/* rin-ship */ COPY \"foo\" FROM 's3://b/rin-ship/manifests/x.manifest' CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=SSS' MANIFEST REGION 'ap-northeast-1' JSON 'auto' GZIP"
        );
        c.aws_session_token = "TOK".into();
        assert_eq!(
            authorization(&c, Authorization::Credentials, false),
            "CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=SSS;token=TOK'"
        );
        assert_eq!(
            authorization(&c, Authorization::Credentials, true),
            "CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=****;token=****'"
        );
    }

    #[test]
    fn golden_manifest() {
        assert_eq!(
            manifest_json(&[("b", "logs/a.json.gz"), ("b", "logs/y's b.json.gz")]),
            r#"{"entries":[{"url":"s3://b/logs/a.json.gz","mandatory":true},{"url":"s3://b/logs/y's b.json.gz","mandatory":true}]}"#
        );
        let k1 = manifest_key("p/", "\"t\"", &[("b", "k1"), ("b", "k2")]);
        assert_eq!(k1, manifest_key("p/", "\"t\"", &[("b", "k1"), ("b", "k2")]));
        assert_ne!(k1, manifest_key("p/", "\"t\"", &[("b", "k1")]));
        assert!(k1.starts_with("p/") && k1.ends_with(".manifest"));
    }

    fn plan<'a>(mode: InsertMode, c: &'a Credentials, keys: &'a [String]) -> LoadPlan<'a> {
        LoadPlan {
            table: "\"public\".\"t\"",
            manifest_url: M,
            credentials: c,
            authorization: Authorization::AccessKeys,
            region: "us-east-1",
            sql_option: "JSON 'auto' GZIP",
            mode,
            key_columns: keys,
            order_column: "time",
        }
    }

    const COPY_T: &str = "/* rin-ship */ COPY \"public\".\"t\" FROM 's3://b/rin-ship/manifests/x.manifest' ACCESS_KEY_ID 'AAA' SECRET_ACCESS_KEY 'SSS' MANIFEST REGION 'us-east-1' JSON 'auto' GZIP";
    const COPY_STAGE: &str = "/* rin-ship */ COPY rin_ship_stage FROM 's3://b/rin-ship/manifests/x.manifest' ACCESS_KEY_ID 'AAA' SECRET_ACCESS_KEY 'SSS' MANIFEST REGION 'us-east-1' JSON 'auto' GZIP";

    #[test]
    fn golden_insert_modes() {
        let c = keys();
        let k = vec!["id".to_string(), "day".to_string()];
        assert_eq!(
            load_statements(&plan(InsertMode::Append, &c, &k), false),
            vec![COPY_T]
        );
        assert_eq!(
            load_statements(&plan(InsertMode::Truncate, &c, &k), false),
            vec!["DELETE FROM \"public\".\"t\"", COPY_T]
        );
        assert_eq!(
            load_statements(&plan(InsertMode::OverwriteExisting, &c, &k), false),
            vec![
                "CREATE TEMP TABLE rin_ship_stage (LIKE \"public\".\"t\" INCLUDING DEFAULTS)",
                COPY_STAGE,
                "DELETE FROM \"public\".\"t\" USING rin_ship_stage WHERE \"public\".\"t\".\"id\" = rin_ship_stage.\"id\" AND \"public\".\"t\".\"day\" = rin_ship_stage.\"day\"",
                "INSERT INTO \"public\".\"t\" SELECT s.* FROM rin_ship_stage s QUALIFY ROW_NUMBER() OVER (PARTITION BY s.\"id\", s.\"day\" ORDER BY s.\"time\" DESC NULLS LAST) = 1 OR s.\"id\" IS NULL OR s.\"day\" IS NULL",
                "DROP TABLE rin_ship_stage",
            ]
        );
        assert_eq!(
            load_statements(&plan(InsertMode::KeepExisting, &c, &k[..1]), false),
            vec![
                "CREATE TEMP TABLE rin_ship_stage (LIKE \"public\".\"t\" INCLUDING DEFAULTS)",
                COPY_STAGE,
                "DELETE FROM rin_ship_stage USING \"public\".\"t\" WHERE \"public\".\"t\".\"id\" = rin_ship_stage.\"id\"",
                "INSERT INTO \"public\".\"t\" SELECT s.* FROM rin_ship_stage s QUALIFY ROW_NUMBER() OVER (PARTITION BY s.\"id\" ORDER BY s.\"time\" ASC NULLS LAST) = 1 OR s.\"id\" IS NULL",
                "DROP TABLE rin_ship_stage",
            ]
        );
        // The rows statement: the COPY into the table, or the keyed modes' INSERT.
        for mode in [
            InsertMode::Append,
            InsertMode::Truncate,
            InsertMode::KeepExisting,
            InsertMode::OverwriteExisting,
        ] {
            let p = plan(mode, &c, &k);
            let s = load_statements(&p, false);
            let rows = &s[p.rows_statement()];
            assert!(
                rows.starts_with(&format!("{SQL_PREFIX}COPY \"public\"."))
                    || rows.starts_with("INSERT INTO \"public\"."),
                "{mode:?}: {rows}"
            );
            // Nothing that commits on its own inside the ledger's transaction.
            assert!(
                s.iter().all(|x| !x.to_uppercase().contains("TRUNCATE")),
                "{s:?}"
            );
        }
    }

    #[test]
    fn golden_insert_modes_masked() {
        let mut c = keys();
        c.aws_secret_access_key = "sekrit-x".into();
        c.aws_session_token = "tokn-y".into();
        let k = vec!["id".to_string()];
        for mode in [
            InsertMode::Append,
            InsertMode::Truncate,
            InsertMode::KeepExisting,
            InsertMode::OverwriteExisting,
        ] {
            let p = plan(mode, &c, &k);
            let shown = load_statements(&p, true);
            let real = load_statements(&p, false);
            assert_eq!(shown.len(), real.len());
            let all = shown.join("\n");
            assert!(!all.contains("sekrit") && !all.contains("tokn"), "{all}");
            assert!(
                all.contains("SECRET_ACCESS_KEY '****' SESSION_TOKEN '****'"),
                "{all}"
            );
            assert!(
                real.join("\n")
                    .contains("SECRET_ACCESS_KEY 'sekrit-x' SESSION_TOKEN 'tokn-y'")
            );
            // Only the secrets differ.
            for (a, b) in shown.iter().zip(&real) {
                assert_eq!(
                    a.replace("****", ""),
                    b.replace("sekrit-x", "").replace("tokn-y", "")
                );
            }
        }
    }

    #[test]
    fn load_plan_from_config() {
        let src = r#"queue_name: q
credentials: {aws_access_key_id: AAA, aws_secret_access_key: SSS}
s3: {bucket: b, region: ap-northeast-1}
sql_option: "JSON 'auto' GZIP"
redshift: {host: h, dbname: d, user: u}
insert_mode: OVERWRITE_EXISTING
key_columns: [id]
order_column: time
targets:
  - redshift: {table: a}
    s3: {key_prefix: a/}
  - redshift: {table: b}
    s3: {key_prefix: b/}
    insert_mode: KEEP_EXISTING
    key_columns: [x, y]
  - redshift: {table: c}
    s3: {key_prefix: c/}
    insert_mode: TRUNCATE
rin_ship: {authorization: iam_role}
"#;
        let c = RinConfig::parse(src, &|_| None).unwrap();
        let t = |i: usize| c.target(i);
        assert_eq!(t(0).insert_mode, InsertMode::OverwriteExisting);
        assert_eq!(
            (t(0).key_columns.clone(), t(0).order_column.as_str()),
            (vec!["id".to_string()], "time")
        );
        assert_eq!(t(1).insert_mode, InsertMode::KeepExisting);
        assert_eq!(
            (t(1).key_columns.clone(), t(1).order_column.as_str()),
            (vec!["x".to_string(), "y".to_string()], "time")
        );
        assert_eq!(t(2).insert_mode, InsertMode::Truncate);
        assert!(
            t(2).describe().ends_with("(TRUNCATE, latest by time)"),
            "{}",
            t(2).describe()
        );
        assert!(
            t(1).describe()
                .ends_with("(KEEP_EXISTING by x, y, latest by time)"),
            "{}",
            t(1).describe()
        );
        let p = LoadPlan::new(&c, t(1), "\"b\"", M);
        assert_eq!(
            load_statements(&p, true)[3],
            "INSERT INTO \"b\" SELECT s.* FROM rin_ship_stage s QUALIFY ROW_NUMBER() OVER (PARTITION BY s.\"x\", s.\"y\" ORDER BY s.\"time\" ASC NULLS LAST) = 1 OR s.\"x\" IS NULL OR s.\"y\" IS NULL"
        );
        assert_eq!(
            load_statements(&p, true)[1],
            "/* rin-ship */ COPY rin_ship_stage FROM 's3://b/rin-ship/manifests/x.manifest' IAM_ROLE default MANIFEST REGION 'ap-northeast-1' JSON 'auto' GZIP"
        );
    }

    #[test]
    fn insert_mode_config_errors() {
        let base = |extra: &str, wh: &str| {
            format!(
                "queue_name: q\ns3: {{bucket: b}}\nredshift: {{host: h}}\nrin_ship: {{warehouse: {wh}}}\ntargets:\n  - redshift: {{table: a}}\n    s3: {{key_prefix: a/}}\n{extra}"
            )
        };
        let err = |extra: &str, wh: &str| {
            format!(
                "{:#}",
                RinConfig::parse(&base(extra, wh), &|_| None).unwrap_err()
            )
        };
        let e = err("    insert_mode: OVERWRITE_EXISTING\n", "postgres");
        assert!(
            e.contains("targets[0]") && e.contains("needs key_columns"),
            "{e}"
        );
        let e = err(
            "    insert_mode: KEEP_EXISTING\n    key_columns: [id]\n",
            "redshift",
        );
        assert!(
            e.contains("targets[0]") && e.contains("needs order_column"),
            "{e}"
        );
        let e = err(
            "    insert_mode: KEEP_EXISTING\n    key_columns: [\"a b\"]\n",
            "postgres",
        );
        assert!(e.contains("not a plain identifier"), "{e}");
        let e = err("    insert_mode: UPSERT\n", "postgres");
        assert!(e.contains("insert_mode"), "{e}");
        // PostgreSQL: the stage keeps object and line order, no order_column needed.
        let ok = base(
            "    insert_mode: keep_existing\n    key_columns: [id]\n",
            "postgres",
        );
        let c = RinConfig::parse(&ok, &|_| None).unwrap();
        assert_eq!(c.target(0).insert_mode, InsertMode::KeepExisting);
        let e = format!(
            "{:#}",
            RinConfig::parse(
                &base("", "postgres").replace(
                    "warehouse: postgres",
                    "warehouse: postgres, quarantine_prefix: bucket/x"
                ),
                &|_| None
            )
            .unwrap_err()
        );
        assert!(e.contains("quarantine_prefix"), "{e}");
    }

    #[test]
    fn golden_load_error_queries() {
        assert_eq!(
            LOAD_ERROR_QUERIES,
            [
                "SELECT TRIM(file_name), line_number, TRIM(column_name), TRIM(error_message) FROM sys_load_error_detail WHERE session_id = pg_backend_pid() AND start_time > DATEADD(minute, -1, GETDATE()) ORDER BY start_time DESC LIMIT 10",
                "SELECT TRIM(filename), line_number, TRIM(colname), TRIM(err_reason) FROM stl_load_errors WHERE query = pg_last_copy_id() ORDER BY starttime DESC LIMIT 10",
            ]
        );
        // As a text-format answer gives them (char columns padded when not trimmed).
        let rows = parse_load_errors([
            [
                Some("s3://b/logs/a.json.gz   "),
                Some("3"),
                Some("status    "),
                Some("Invalid digit, Value 'x', Pos 0, Type: Integer   "),
            ],
            [
                Some("s3://b/logs/b.json.gz"),
                None,
                None,
                Some("Invalid JSONPath format"),
            ],
        ]);
        assert_eq!(
            rows,
            vec![
                LoadErrorRow {
                    file: "s3://b/logs/a.json.gz".into(),
                    line: Some(3),
                    column: "status".into(),
                    reason: "Invalid digit, Value 'x', Pos 0, Type: Integer".into(),
                },
                LoadErrorRow {
                    file: "s3://b/logs/b.json.gz".into(),
                    line: None,
                    column: String::new(),
                    reason: "Invalid JSONPath format".into(),
                },
            ]
        );
        let urls = vec![
            "s3://b/logs/a.json.gz".to_string(),
            "s3://b/logs/b.json.gz".to_string(),
        ];
        assert_eq!(match_file("s3://b/logs/b.json.gz", &urls), Some(1));
        assert_eq!(match_file("s3://b/logs/c.json.gz", &urls), None);
        assert_eq!(match_file("", &urls), None);
        // Redshift keeps 256 bytes of a long URL: the one URL it starts.
        let long = format!("s3://b/{}", "k".repeat(300));
        let urls = vec![format!("{long}1"), "s3://b/x".to_string()];
        assert_eq!(match_file(&long[..256], &urls), Some(0));
        let urls = vec![format!("{long}1"), format!("{long}2")];
        assert_eq!(match_file(&long[..256], &urls), None);
        assert!(is_load_error_message(
            "Load into table 'rin_ship_stage' failed. Check 'sys_load_error_detail' system table for details."
        ));
        assert!(is_load_error_message(
            "Load into table 't' failed.  Check 'stl_load_errors' system table for details."
        ));
        assert!(!is_load_error_message("S3ServiceException:Access Denied"));
    }

    /// Rin's test/config.yml and the SQL its config_test.go expects, byte for byte.
    #[test]
    fn rin_test_config_renders_rin_sql() {
        let src = r#"queue_name: rin_test

credentials:
  aws_access_key_id: AAA
  aws_secret_access_key: '{{ must_env "AWS_SECRET_ACCESS_KEY" }}'
  aws_region: ap-northeast-1

s3:
  bucket: test.bucket.test
  region: ap-northeast-1

sql_option: "JSON 'auto' GZIP"

redshift:
  host: localhost
  port: 5432
  dbname: test
  user: test_user
  password: test_pass
  reconnect_on_error: true

targets:
  - s3:
      key_prefix: test/foo/discard
    discard: true

  - redshift:
      table: foo
    s3:
      key_prefix: test/foo

  - redshift:
      schema: xxx
      table: bar_break
    s3:
      key_prefix: test/bar/break
    sql_option: "CSV DELIMITER ',' ESCAPE"
    break: true

  - redshift:
      schema: xxx
      table: bar
    s3:
      key_prefix: test/bar
    sql_option: "CSV DELIMITER ',' ESCAPE"
    break: true

  - redshift:
      schema: $1
      table: $2
    s3:
      bucket: example.bucket
      key_regexp: test/(s[0-9]+)/(t[0-9]+)/
"#;
        let env = |k: &str| (k == "AWS_SECRET_ACCESS_KEY").then(|| "SSS".to_string());
        let c = RinConfig::parse(src, &env).unwrap();
        assert_eq!(c.targets.len(), 5);
        let expected = [
            (
                "test.bucket.test",
                "test/foo/xxx.json",
                r#"/* Rin */ COPY "foo" FROM 's3://test.bucket.test/test/foo/xxx.json' CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=SSS' REGION 'ap-northeast-1' JSON 'auto' GZIP"#,
            ),
            ("test.bucket.test", "test/foo/discard/xxx.json", ""),
            (
                "test.bucket.test",
                "test/bar/break",
                r#"/* Rin */ COPY "xxx"."bar_break" FROM 's3://test.bucket.test/test/bar/break' CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=SSS' REGION 'ap-northeast-1' CSV DELIMITER ',' ESCAPE"#,
            ),
            (
                "test.bucket.test",
                "test/bar/y's.csv",
                r#"/* Rin */ COPY "xxx"."bar" FROM 's3://test.bucket.test/test/bar/y''s.csv' CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=SSS' REGION 'ap-northeast-1' CSV DELIMITER ',' ESCAPE"#,
            ),
            (
                "example.bucket",
                "test/s1/t256/aaa.json",
                r#"/* Rin */ COPY "s1"."t256" FROM 's3://example.bucket/test/s1/t256/aaa.json' CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=SSS' REGION 'ap-northeast-1' JSON 'auto' GZIP"#,
            ),
        ];
        for (bucket, key, want) in expected {
            let got = match c.route(bucket, key).unwrap() {
                MatchOutcome::Load(d) => {
                    assert_eq!(d.len(), 1, "{key}");
                    let t = c.target(d[0].target);
                    rin_sql(
                        &d[0].qualified(),
                        bucket,
                        key,
                        &c.credentials,
                        &t.s3.region,
                        &t.sql_option,
                    )
                }
                MatchOutcome::Discarded => String::new(),
                MatchOutcome::NoTarget => panic!("{key}: no target"),
            };
            assert_eq!(got, want, "{key}");
            // rin-ship's own statement for the same object: over a manifest.
            if let MatchOutcome::Load(d) = c.route(bucket, key).unwrap() {
                let t = c.target(d[0].target);
                let ours = copy_sql(
                    &d[0].qualified(),
                    M,
                    &c.credentials,
                    c.ext.authorization,
                    &t.s3.region,
                    &t.sql_option,
                    true,
                );
                assert!(ours.starts_with(&format!("/* rin-ship */ COPY {} FROM '{M}' CREDENTIALS 'aws_access_key_id=AAA;aws_secret_access_key=****' MANIFEST REGION 'ap-northeast-1' ", d[0].qualified())), "{ours}");
            }
        }
    }

    #[test]
    fn compression_fits_the_objects() {
        let fit = |o: &str, c| fit_compression(o, c);
        assert_eq!(
            fit("JSON 'auto' GZIP", Some(Codec::Gzip)),
            ("JSON 'auto' GZIP".into(), None)
        );
        assert_eq!(
            fit("JSON 'auto'", Some(Codec::Gzip)),
            ("JSON 'auto'".into(), None)
        );
        assert_eq!(
            fit("JSON 'auto'", Some(Codec::Zstd)),
            ("JSON 'auto' ZSTD".into(), None)
        );
        assert_eq!(fit("", Some(Codec::Zstd)), ("ZSTD".into(), None));
        assert_eq!(fit("json 'auto' zstd", Some(Codec::Zstd)).1, None);
        let (o, w) = fit("JSON 'auto' GZIP TIMEFORMAT 'auto'", Some(Codec::Zstd));
        assert_eq!(o, "JSON 'auto' ZSTD TIMEFORMAT 'auto'");
        assert!(w.unwrap().contains("names GZIP but the objects are zstd"));
        let (o, w) = fit("CSV ZSTD", Some(Codec::Gzip));
        assert_eq!(o, "CSV GZIP");
        assert!(w.is_some());
        // A keyword inside a literal is no keyword.
        assert_eq!(
            fit("JSON 's3://b/gzip/paths.json'", Some(Codec::Zstd)).0,
            "JSON 's3://b/gzip/paths.json' ZSTD"
        );
        assert_eq!(fit("GZIP", None), ("GZIP".into(), None));
    }
}
