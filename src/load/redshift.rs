//! The Redshift dialect: the COPY statement (over a manifest of exact object URLs, never a bare
//! key, which Redshift treats as a prefix) and the manifest itself. Rendering is pure so it is
//! golden-tested; secrets are replaced by `****` in every rendering meant for people.

use super::rin::{Authorization, Credentials, quote_literal};
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
}
