//! Rin-compatible configuration: Rin's YAML keys load unchanged (`queue_name`, `credentials`,
//! `redshift`, `s3`, `sql_option`, `targets[]` with overrides, `discard`, `break`), after
//! kayac/go-config style templating (`{{ env "X" }}`, `{{ env "X" "default" }}`,
//! `{{ must_env "X" }}`). rin-ship's own settings live under one extra top-level key,
//! `rin_ship:`, which Rin itself would ignore.
//!
//! Matching follows Rin: targets are tried in order; every matching target loads the object
//! (unless `discard`), and `break` (or `discard`) stops the search. `$0..$n` in schema and table
//! are the `key_regexp` captures (`$0` is the whole match, or the key for `key_prefix`); the
//! result, when it used a capture, must be a plain identifier, so an object key can never
//! inject SQL. `$10` is capture ten, never capture one followed by `0`.

use anyhow::{Context, Result, anyhow, bail};
use regex::Regex;
use serde::Deserialize;
use std::fmt;

/// A Rin config file plus rin-ship's extension keys.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RinFile {
    #[serde(default)]
    pub queue_name: String,
    #[serde(default)]
    pub credentials: Credentials,
    #[serde(default)]
    pub redshift: Option<Redshift>,
    #[serde(default)]
    pub s3: Option<S3Spec>,
    #[serde(default)]
    pub sql_option: String,
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    #[serde(default)]
    pub rin_ship: Extension,
}

#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub aws_access_key_id: String,
    #[serde(default)]
    pub aws_secret_access_key: String,
    #[serde(default)]
    pub aws_region: String,
    #[serde(default)]
    pub aws_iam_role: String,
    /// rin-ship extension: a session token going with temporary access keys.
    #[serde(default)]
    pub aws_session_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("aws_access_key_id", &self.aws_access_key_id)
            .field("aws_secret_access_key", &mask(&self.aws_secret_access_key))
            .field("aws_region", &self.aws_region)
            .field("aws_iam_role", &self.aws_iam_role)
            .field("aws_session_token", &mask(&self.aws_session_token))
            .finish()
    }
}

fn mask(s: &str) -> &'static str {
    if s.is_empty() { "" } else { "****" }
}

#[derive(Clone, Deserialize, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct Redshift {
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub dbname: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub schema: String,
    #[serde(default)]
    pub table: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub workgroup: String,
    #[serde(default)]
    pub reconnect_on_error: bool,
}

impl fmt::Debug for Redshift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.visible_dsn())
    }
}

impl Redshift {
    /// The connection without its password, for logs.
    pub fn visible_dsn(&self) -> String {
        format!(
            "{}:****@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct S3Spec {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub key_prefix: String,
    #[serde(default)]
    pub key_regexp: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    #[serde(default)]
    pub redshift: Option<Redshift>,
    #[serde(default)]
    pub s3: Option<S3Spec>,
    #[serde(default)]
    pub sql_option: String,
    #[serde(default, rename = "break")]
    pub break_: bool,
    #[serde(default)]
    pub discard: bool,
}

/// Which warehouse the `redshift:` connection points at.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Warehouse {
    /// Amazon Redshift: `COPY ... FROM 's3://manifest' MANIFEST`, the cluster reads S3.
    #[default]
    Redshift,
    /// PostgreSQL: rin-ship reads the object and streams it into `COPY ... FROM STDIN`.
    Postgres,
}

/// How the Redshift COPY authorizes its S3 reads.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Authorization {
    /// Rin's legacy form: `CREDENTIALS 'aws_iam_role=...'` or
    /// `CREDENTIALS 'aws_access_key_id=..;aws_secret_access_key=..[;token=..]'`.
    #[default]
    Credentials,
    /// `IAM_ROLE 'arn'` (`IAM_ROLE default` when `credentials.aws_iam_role` is empty).
    IamRole,
    /// `ACCESS_KEY_ID '..' SECRET_ACCESS_KEY '..' [SESSION_TOKEN '..']`.
    AccessKeys,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
}

/// rin-ship's own keys, under `rin_ship:`. Every one is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Extension {
    pub warehouse: Warehouse,
    /// A queue URL (overrides `queue_name`, which is resolved with GetQueueUrl).
    pub queue_url: String,
    /// S3-compatible / SQS-compatible endpoints (tests, MinIO, LocalStack).
    pub s3_endpoint: String,
    pub sqs_endpoint: String,
    pub force_path_style: bool,
    /// `schema.table` of the ledger of loaded objects (created if missing).
    pub ledger_table: String,
    /// Where Redshift manifests are written: `s3://bucket/prefix/`; default
    /// `s3://<the target's bucket>/rin-ship/manifests/`.
    pub manifest_prefix: String,
    pub authorization: Authorization,
    /// Pollers running at once (each receives up to 10 messages and loads them together).
    pub concurrency: usize,
    /// Long polling wait (SQS allows 0..=20).
    pub wait_time_seconds: i32,
    /// Visibility timeout asked for on receive; extended every third of it during a load.
    pub visibility_timeout_seconds: i32,
    /// A message received this many times is reported as poison (it stays for the redrive).
    pub max_receive_count_warn: i64,
    /// PostgreSQL warehouse: a jsonb column receiving the keys no column matched.
    pub catch_all_column: String,
    pub sslmode: SslMode,
    /// `host:port` for a Prometheus `/metrics` endpoint while importing.
    pub metrics_bind: String,
}

impl Default for Extension {
    fn default() -> Self {
        Extension {
            warehouse: Warehouse::Redshift,
            queue_url: String::new(),
            s3_endpoint: String::new(),
            sqs_endpoint: String::new(),
            force_path_style: false,
            ledger_table: "public.rin_ship_ledger".into(),
            manifest_prefix: String::new(),
            authorization: Authorization::Credentials,
            concurrency: 1,
            wait_time_seconds: 20,
            visibility_timeout_seconds: 60,
            max_receive_count_warn: 5,
            catch_all_column: String::new(),
            sslmode: SslMode::Prefer,
            metrics_bind: String::new(),
        }
    }
}

/// A target after Rin's merge of the top-level sections.
#[derive(Debug, Clone)]
pub struct Target {
    pub index: usize,
    pub redshift: Redshift,
    pub s3: S3Spec,
    pub sql_option: String,
    pub break_: bool,
    pub discard: bool,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Prefix(String),
    Regexp(Regex),
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct RinConfig {
    pub queue_name: String,
    pub credentials: Credentials,
    pub targets: Vec<Target>,
    pub ext: Extension,
}

/// Where one object goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub target: usize,
    pub schema: String,
    pub table: String,
}

impl Destination {
    /// `"schema"."table"` (or `"table"`), each part quoted.
    pub fn qualified(&self) -> String {
        if self.schema.is_empty() {
            quote_ident(&self.table)
        } else {
            format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
        }
    }
}

/// What matching one key gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchOutcome {
    /// Load into these destinations (one per matching, non-discarding target).
    Load(Vec<Destination>),
    /// A `discard: true` target matched first: dropped on purpose.
    Discarded,
    /// No target matched.
    NoTarget,
}

#[derive(Debug, thiserror::Error)]
#[error("target {target}: {what} {value:?} expanded from key {key:?} is not a valid identifier")]
pub struct InvalidIdentifier {
    pub target: usize,
    pub what: &'static str,
    pub value: String,
    pub key: String,
}

impl RinConfig {
    pub fn load(path: &std::path::Path) -> Result<RinConfig> {
        let src = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&src, &|k| std::env::var(k).ok())
            .with_context(|| format!("invalid Rin config {}", path.display()))
    }

    pub fn parse(src: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<RinConfig> {
        let text = expand_template(src, env)?;
        let de = serde_norway::Deserializer::from_str(&text);
        let file: RinFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow!("field `{path}`: {}", e.into_inner())
        })?;
        Self::from_file(file)
    }

    fn from_file(f: RinFile) -> Result<RinConfig> {
        if f.queue_name.is_empty() && f.rin_ship.queue_url.is_empty() {
            bail!("queue_name required (or rin_ship.queue_url)");
        }
        if f.targets.is_empty() {
            bail!("no targets defined");
        }
        if f.rin_ship.concurrency == 0 {
            bail!("rin_ship.concurrency must be at least 1");
        }
        if !(0..=20).contains(&f.rin_ship.wait_time_seconds) {
            bail!("rin_ship.wait_time_seconds must be 0..=20");
        }
        if f.rin_ship.visibility_timeout_seconds < 3 {
            bail!("rin_ship.visibility_timeout_seconds must be at least 3");
        }
        split_qualified(&f.rin_ship.ledger_table).context("rin_ship.ledger_table")?;
        if !f.rin_ship.catch_all_column.is_empty() && !is_identifier(&f.rin_ship.catch_all_column) {
            bail!("rin_ship.catch_all_column must be a plain identifier");
        }
        if !f.rin_ship.manifest_prefix.is_empty()
            && !f.rin_ship.manifest_prefix.starts_with("s3://")
        {
            bail!("rin_ship.manifest_prefix must be an s3:// URL");
        }
        let cr = f.redshift.clone().unwrap_or_default();
        let cs = f.s3.clone().unwrap_or_default();
        let mut targets = Vec::new();
        for (i, t) in f.targets.into_iter().enumerate() {
            let redshift = match t.redshift {
                None => cr.clone(),
                Some(mut r) => {
                    macro_rules! inherit {
                        ($($f:ident),*) => {$(
                            if is_default(&r.$f) { r.$f = cr.$f.clone(); }
                        )*};
                    }
                    inherit!(
                        driver, host, port, dbname, user, password, schema, table, cluster,
                        workgroup
                    );
                    r.reconnect_on_error |= cr.reconnect_on_error;
                    r
                }
            };
            let s3 = match t.s3 {
                None => cs.clone(),
                Some(mut s) => {
                    if s.bucket.is_empty() {
                        s.bucket = cs.bucket.clone();
                    }
                    if s.region.is_empty() {
                        s.region = cs.region.clone();
                    }
                    if s.key_prefix.is_empty() {
                        s.key_prefix = cs.key_prefix.clone();
                    }
                    if s.key_regexp.is_empty() {
                        s.key_regexp = cs.key_regexp.clone();
                    }
                    s
                }
            };
            let sql_option = if t.sql_option.is_empty() {
                f.sql_option.clone()
            } else {
                t.sql_option
            };
            let matcher = if !s3.key_prefix.is_empty() {
                Matcher::Prefix(s3.key_prefix.clone())
            } else if !s3.key_regexp.is_empty() {
                Matcher::Regexp(
                    Regex::new(&s3.key_regexp)
                        .with_context(|| format!("targets[{i}].s3.key_regexp"))?,
                )
            } else {
                bail!("targets[{i}]: target.key_prefix or key_regexp is not defined");
            };
            if !t.discard {
                if redshift.table.is_empty() {
                    bail!("targets[{i}]: redshift.table is empty");
                }
                let groups = match &matcher {
                    Matcher::Prefix(_) => 0,
                    Matcher::Regexp(r) => r.captures_len() - 1,
                };
                for (what, v) in [("schema", &redshift.schema), ("table", &redshift.table)] {
                    for n in placeholders(v) {
                        if n > groups {
                            bail!(
                                "targets[{i}].redshift.{what}: ${n} but the key matcher has \
                                 {groups} capture group(s)"
                            );
                        }
                    }
                }
                if redshift.driver == "redshift-data" {
                    bail!(
                        "targets[{i}]: redshift.driver redshift-data (the Data API) is not \
                         supported yet; use the default driver (postgres wire protocol)"
                    );
                }
            }
            targets.push(Target {
                index: i,
                redshift,
                s3,
                sql_option,
                break_: t.break_,
                discard: t.discard,
                matcher,
            });
        }
        Ok(RinConfig {
            queue_name: f.queue_name,
            credentials: f.credentials,
            targets,
            ext: f.rin_ship,
        })
    }

    /// Rin's matching: in order, every match loads, `discard` and `break` stop.
    pub fn route(&self, bucket: &str, key: &str) -> Result<MatchOutcome, InvalidIdentifier> {
        let mut dests = Vec::new();
        for t in &self.targets {
            let Some(captures) = t.matches(bucket, key) else {
                continue;
            };
            if t.discard {
                if dests.is_empty() {
                    return Ok(MatchOutcome::Discarded);
                }
                break;
            }
            let schema = expand_ident(&t.redshift.schema, &captures, t.index, "schema", key)?;
            let table = expand_ident(&t.redshift.table, &captures, t.index, "table", key)?;
            dests.push(Destination {
                target: t.index,
                schema,
                table,
            });
            if t.break_ {
                break;
            }
        }
        Ok(if dests.is_empty() {
            MatchOutcome::NoTarget
        } else {
            MatchOutcome::Load(dests)
        })
    }

    pub fn target(&self, i: usize) -> &Target {
        &self.targets[i]
    }
}

impl Target {
    fn matches(&self, bucket: &str, key: &str) -> Option<Vec<String>> {
        if bucket != self.s3.bucket {
            return None;
        }
        match &self.matcher {
            Matcher::Prefix(p) => key.starts_with(p.as_str()).then(|| vec![key.to_string()]),
            Matcher::Regexp(r) => r.captures(key).map(|c| {
                c.iter()
                    .map(|m| m.map(|m| m.as_str().to_string()).unwrap_or_default())
                    .collect()
            }),
        }
    }

    pub fn describe(&self) -> String {
        let m = match &self.matcher {
            Matcher::Prefix(p) => p.clone(),
            Matcher::Regexp(r) => r.as_str().to_string(),
        };
        let table = if self.redshift.schema.is_empty() {
            self.redshift.table.clone()
        } else {
            format!("{}.{}", self.redshift.schema, self.redshift.table)
        };
        if self.discard {
            format!("s3://{}/{m} => discard", self.s3.bucket)
        } else {
            format!(
                "s3://{}/{m} => {}/{table}",
                self.s3.bucket,
                self.redshift.visible_dsn()
            )
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Every `$n` in `s` as (start, end, n); digits are greedy, so `$10` is ten, never `$1` + `0`.
fn scan_placeholders(s: &str) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let b = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            if b[i] == b'$' {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j > i + 1 {
                    let found = (i, j, s[i + 1..j].parse().unwrap_or(usize::MAX));
                    i = j;
                    return Some(found);
                }
            }
            i += 1;
        }
        None
    })
}

/// The `$n` placeholders in `s`.
fn placeholders(s: &str) -> Vec<usize> {
    scan_placeholders(s).map(|(_, _, n)| n).collect()
}

/// Replaces `$n` with capture n (one pass). Returns whether a capture was used.
pub fn expand_placeholders(s: &str, captures: &[String]) -> (String, bool) {
    let mut out = String::with_capacity(s.len());
    let mut used = false;
    let mut last = 0;
    for (start, end, n) in scan_placeholders(s) {
        out.push_str(&s[last..start]);
        if let Some(c) = captures.get(n) {
            out.push_str(c);
        }
        used = true;
        last = end;
    }
    out.push_str(&s[last..]);
    (out, used)
}

fn expand_ident(
    s: &str,
    captures: &[String],
    target: usize,
    what: &'static str,
    key: &str,
) -> Result<String, InvalidIdentifier> {
    let (v, used) = expand_placeholders(s, captures);
    if used && !is_identifier(&v) {
        return Err(InvalidIdentifier {
            target,
            what,
            value: v,
            key: key.to_string(),
        });
    }
    Ok(v)
}

/// A plain SQL identifier: `[A-Za-z_][A-Za-z0-9_$]*`, at most 127 bytes (Redshift's limit).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= 127
}

/// `"ident"` with embedded quotes doubled (as lib/pq's QuoteIdentifier).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'` with embedded quotes doubled.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `schema.table` or `table` (then `public`), each a plain identifier.
pub fn split_qualified(s: &str) -> Result<(String, String)> {
    let (schema, table) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => ("public", s),
    };
    if !is_identifier(schema) || !is_identifier(table) {
        bail!("{s:?} is not schema.table of plain identifiers");
    }
    Ok((schema.to_string(), table.to_string()))
}

/// go-config's templating: `{{ env "X" }}`, `{{ env "X" "default" }}`, `{{ must_env "X" }}`.
/// Any other action is an error (rather than silently left in a password).
pub fn expand_template(src: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| anyhow!("unclosed {{{{ in template"))?;
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-');
        out.push_str(&eval_action(action.trim(), env)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn eval_action(action: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let (func, args) = action
        .split_once(char::is_whitespace)
        .unwrap_or((action, ""));
    let args =
        parse_string_args(args).with_context(|| format!("template action {{{{ {action} }}}}"))?;
    match (func, args.as_slice()) {
        ("env", [name]) => Ok(env(name).unwrap_or_default()),
        ("env", [name, default]) => Ok(env(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.clone())),
        ("must_env", [name]) => {
            env(name).ok_or_else(|| anyhow!("environment variable {name} is not defined"))
        }
        _ => bail!("unsupported template action {{{{ {action} }}}} (env, must_env only)"),
    }
}

fn parse_string_args(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let q = chars.next().unwrap();
        if q != '"' && q != '`' {
            bail!("expected a quoted string");
        }
        let mut v = String::new();
        loop {
            match chars.next() {
                None => bail!("unterminated string"),
                Some(c) if c == q => break,
                Some('\\') if q == '"' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some('t') => v.push('\t'),
                    Some(c) => v.push(c),
                    None => bail!("unterminated string"),
                },
                Some(c) => v.push(c),
            }
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "AWS_SECRET_ACCESS_KEY" => Some("SSS".into()),
            "REDSHIFT_PASSWORD" => Some("pw".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn template_actions() {
        let t = |s: &str| expand_template(s, &env);
        assert_eq!(
            t(r#"a: '{{ must_env "REDSHIFT_PASSWORD" }}'"#).unwrap(),
            "a: 'pw'"
        );
        assert_eq!(t(r#"{{env "NOPE"}}x"#).unwrap(), "x");
        assert_eq!(t(r#"{{ env "NOPE" "dflt" }}"#).unwrap(), "dflt");
        assert_eq!(t(r#"{{ env "EMPTY" "dflt" }}"#).unwrap(), "dflt");
        assert!(t(r#"{{ must_env "NOPE" }}"#).is_err());
        assert!(t(r#"{{ file "x" }}"#).is_err());
        assert!(t("{{ env \"X\"").is_err());
    }

    #[test]
    fn placeholders_do_not_corrupt_ten() {
        let caps: Vec<String> = (0..=10).map(|i| format!("c{i}")).collect();
        assert_eq!(expand_placeholders("t_$10_$1", &caps).0, "t_c10_c1");
        assert_eq!(expand_placeholders("$1$0", &caps).0, "c1c0");
        assert_eq!(
            expand_placeholders("plain$", &caps),
            ("plain$".to_string(), false)
        );
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("s1"));
        assert!(is_identifier("_a$b"));
        assert!(!is_identifier("1a"));
        assert!(!is_identifier("a\"; DROP TABLE x; --"));
        assert!(!is_identifier(""));
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    const README: &str = r#"
queue_name: my_queue_name    # SQS queue name

credentials:
  aws_region: ap-northeast-1

redshift:
  host: localhost
  port: 5439
  dbname: test
  user: test_user
  password: '{{ must_env "REDSHIFT_PASSWORD" }}'
  schema: public

s3:
  bucket: test.bucket.test
  region: ap-northeast-1

sql_option: "JSON 'auto' GZIP"       # COPY SQL option

# define import target mappings
targets:
  - redshift:
      table: foo
    s3:
      key_prefix: test/foo

  - redshift:
      schema: xxx
      table: bar
    s3:
      key_prefix: test/bar

  - redshift:
      schema: $1      # expand by key_regexp captured value.
      table: $2
    s3:
      key_regexp: test/schema-([a-z]+)/table-([a-z]+)/

  - redshift:
      host: redshift.example.com       # override default section in this target
      port: 5439
      dbname: example
      user: example_user
      password: example_pass
      schema: public
      table: example
    s3:
      bucket: redshift.example.com
      region: ap-northeast-1
      key_prefix: logs/example/
    sql_option: "CSV DELIMITER ',' ESCAPE"
"#;

    #[test]
    fn rin_readme_config_routes() {
        let c = RinConfig::parse(README, &env).unwrap();
        assert_eq!(c.targets.len(), 4);
        assert_eq!(c.targets[0].redshift.password, "pw");
        assert_eq!(c.targets[0].redshift.schema, "public");
        assert_eq!(c.targets[3].redshift.password, "example_pass");
        let r = c.route("test.bucket.test", "test/schema-abc/table-def/x.json.gz");
        assert_eq!(
            r.unwrap(),
            MatchOutcome::Load(vec![Destination {
                target: 2,
                schema: "abc".into(),
                table: "def".into()
            }])
        );
        assert_eq!(
            c.route("test.bucket.test", "nothing/here").unwrap(),
            MatchOutcome::NoTarget
        );
        assert_eq!(
            c.route("other.bucket", "test/foo/a").unwrap(),
            MatchOutcome::NoTarget
        );
        let r = c.route("redshift.example.com", "logs/example/a").unwrap();
        assert_eq!(
            r,
            MatchOutcome::Load(vec![Destination {
                target: 3,
                schema: "public".into(),
                table: "example".into()
            }])
        );
    }

    #[test]
    fn capture_injection_rejected() {
        let c = RinConfig::parse(README, &env).unwrap();
        // [a-z]+ cannot carry a quote, so use a permissive regexp of our own.
        let src = README.replace("table-([a-z]+)/", "table-([^/]+)/");
        let c2 = RinConfig::parse(&src, &env).unwrap();
        assert!(
            c.route("test.bucket.test", "test/schema-a/table-b\"c/")
                .is_ok()
        );
        let e = c2
            .route("test.bucket.test", "test/schema-a/table-x\";drop/")
            .unwrap_err();
        assert_eq!(e.what, "table");
    }

    #[test]
    fn broken_configs() {
        let no_matcher = "queue_name: q\ntargets:\n  - redshift: {table: a}\n    s3: {bucket: b}\n";
        assert!(RinConfig::parse(no_matcher, &env).is_err());
        let bad_re = "queue_name: q\ntargets:\n  - redshift: {table: a}\n    s3: {bucket: b, key_regexp: '(['}\n";
        assert!(RinConfig::parse(bad_re, &env).is_err());
        let too_many = "queue_name: q\ntargets:\n  - redshift: {table: $2}\n    s3: {bucket: b, key_regexp: 'a/(x)'}\n";
        assert!(RinConfig::parse(too_many, &env).is_err());
        let unknown = "queue_name: q\nbogus: 1\ntargets:\n  - redshift: {table: a}\n    s3: {bucket: b, key_prefix: x}\n";
        let e = format!("{:#}", RinConfig::parse(unknown, &env).unwrap_err());
        assert!(e.contains("bogus"), "{e}");
        assert!(RinConfig::parse("targets: []\n", &env).is_err());
    }
}
