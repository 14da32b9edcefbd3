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
    /// rin-ship: defaults of the targets' `insert_mode`, `key_columns`, `order_column`.
    #[serde(default)]
    pub insert_mode: Option<InsertMode>,
    #[serde(default)]
    pub key_columns: Vec<String>,
    #[serde(default)]
    pub order_column: String,
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
    /// rin-ship: Secrets Manager secret (ARN or name) the Data API logs in with.
    #[serde(default)]
    pub secret_arn: String,
    /// rin-ship: wire-protocol login with temporary credentials (GetClusterCredentials for
    /// `cluster` + `user`, Serverless GetCredentials for `workgroup`) instead of `password`.
    #[serde(default)]
    pub iam_auth: bool,
    /// rin-ship: GetClusterCredentials' AutoCreate (create the database user if missing).
    #[serde(default)]
    pub auto_create: bool,
    /// rin-ship: region of the cluster or workgroup (default: `credentials.aws_region`, then
    /// the first target's S3 region).
    #[serde(default)]
    pub region: String,
}

impl fmt::Debug for Redshift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.visible_dsn())
    }
}

impl Redshift {
    /// The connection without its password, for logs.
    pub fn visible_dsn(&self) -> String {
        if self.driver == "sqlite" {
            return format!("sqlite:{}", self.dbname);
        }
        let place = if self.workgroup.is_empty() {
            format!("cluster({})", self.cluster)
        } else {
            format!("workgroup({})", self.workgroup)
        };
        if self.driver == "redshift-data" {
            let who = if self.secret_arn.is_empty() {
                self.user.clone()
            } else {
                "secret".to_string()
            };
            return format!("redshift-data://{who}@{place}/{}", self.dbname);
        }
        if self.iam_auth {
            return format!(
                "{}:(iam {place})@{}:{}/{}",
                self.user, self.host, self.port, self.dbname
            );
        }
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
    /// rin-ship: how rows land in the table (default: the top-level one, else `APPEND`).
    #[serde(default)]
    pub insert_mode: Option<InsertMode>,
    /// rin-ship: the key of `KEEP_EXISTING` / `OVERWRITE_EXISTING`.
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// rin-ship: the column deciding which row of a key is the latest inside one batch.
    #[serde(default)]
    pub order_column: String,
}

/// How a target's rows land in its table (AWS Data Pipeline's names).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
pub enum InsertMode {
    /// Plain insert.
    #[default]
    #[serde(rename = "APPEND", alias = "append")]
    Append,
    /// Rows whose key is already in the table (or earlier in the batch) are dropped.
    #[serde(rename = "KEEP_EXISTING", alias = "keep_existing")]
    KeepExisting,
    /// Rows replace the table's rows with the same key (the latest of the batch wins).
    #[serde(rename = "OVERWRITE_EXISTING", alias = "overwrite_existing")]
    OverwriteExisting,
    /// The batch's rows replace the table's contents (`DELETE FROM`, in the load's transaction).
    #[serde(rename = "TRUNCATE", alias = "truncate")]
    Truncate,
}

impl InsertMode {
    pub fn name(self) -> &'static str {
        match self {
            InsertMode::Append => "APPEND",
            InsertMode::KeepExisting => "KEEP_EXISTING",
            InsertMode::OverwriteExisting => "OVERWRITE_EXISTING",
            InsertMode::Truncate => "TRUNCATE",
        }
    }

    /// `KEEP_EXISTING` and `OVERWRITE_EXISTING`: they need `key_columns`.
    pub fn keyed(self) -> bool {
        matches!(
            self,
            InsertMode::KeepExisting | InsertMode::OverwriteExisting
        )
    }
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
    /// Data errors (bad rows, bad gzip/JSON) put the object in quarantine and delete its
    /// message; `false` leaves such messages on the queue (its redrive policy) instead.
    pub quarantine: bool,
    /// Where quarantine records go: `s3://bucket/prefix/`; default
    /// `s3://<the target's bucket>/rin-ship/quarantine/`.
    pub quarantine_prefix: String,
    /// Table maintenance (`rin-ship maintain`): VACUUM / ANALYZE thresholds and schedule.
    pub maintenance: super::maintain::Maintenance,
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
            quarantine: true,
            quarantine_prefix: String::new(),
            maintenance: Default::default(),
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
    pub insert_mode: InsertMode,
    /// The key of the keyed insert modes (plain identifiers; empty otherwise unused).
    pub key_columns: Vec<String>,
    /// Decides the latest row of a key inside a batch (a plain identifier, or empty).
    pub order_column: String,
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

    /// Loads a config from where Rin's `-config` may point: a local path, an `http(s)://` URL
    /// or an `s3://bucket/key` URL (see [`ConfigLocation`]). Blocks; call it outside a tokio
    /// runtime (async callers: [`fetch_config`] then [`RinConfig::parse`]).
    pub fn load_from(location: &str) -> Result<RinConfig> {
        let loc = ConfigLocation::parse(location)?;
        if let ConfigLocation::Path(p) = &loc {
            return Self::load(p);
        }
        let src = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(fetch_config(&loc))?;
        let config = Self::parse(&src, &|k| std::env::var(k).ok())
            .with_context(|| format!("invalid Rin config {loc}"))?;
        tracing::info!(config = %loc, "Rin config fetched");
        Ok(config)
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
        if !f.rin_ship.quarantine_prefix.is_empty()
            && !f.rin_ship.quarantine_prefix.starts_with("s3://")
        {
            bail!("rin_ship.quarantine_prefix must be an s3:// URL");
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
                        workgroup, secret_arn, region
                    );
                    r.reconnect_on_error |= cr.reconnect_on_error;
                    r.iam_auth |= cr.iam_auth;
                    r.auto_create |= cr.auto_create;
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
                check_connection(i, &redshift, f.rin_ship.warehouse)?;
            }
            let insert_mode = t.insert_mode.or(f.insert_mode).unwrap_or_default();
            let key_columns = if t.key_columns.is_empty() {
                f.key_columns.clone()
            } else {
                t.key_columns
            };
            let order_column = if t.order_column.is_empty() {
                f.order_column.clone()
            } else {
                t.order_column
            };
            if !t.discard {
                check_insert_mode(
                    i,
                    insert_mode,
                    &key_columns,
                    &order_column,
                    f.rin_ship.warehouse,
                )?;
            }
            targets.push(Target {
                index: i,
                redshift,
                s3,
                sql_option,
                break_: t.break_,
                discard: t.discard,
                insert_mode,
                key_columns,
                order_column,
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
            // The embedded warehouse (SQLite) takes a tag as its table name (`"app.web"`).
            let plain = if t.redshift.driver == "sqlite" {
                super::sqlite::is_table_name
            } else {
                is_identifier
            };
            let schema =
                expand_ident(&t.redshift.schema, &captures, t.index, "schema", key, plain)?;
            let table = expand_ident(&t.redshift.table, &captures, t.index, "table", key, plain)?;
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
            let mut d = format!(
                "s3://{}/{m} => {}/{table}",
                self.s3.bucket,
                self.redshift.visible_dsn()
            );
            if self.insert_mode != InsertMode::Append {
                d.push_str(&format!(" ({}", self.insert_mode.name()));
                if self.insert_mode.keyed() {
                    d.push_str(&format!(" by {}", self.key_columns.join(", ")));
                }
                if !self.order_column.is_empty() {
                    d.push_str(&format!(", latest by {}", self.order_column));
                }
                d.push(')');
            }
            d
        }
    }
}

/// Where a Rin config lives (Rin's `-config`): a local path, an `http(s)://` URL (fetched
/// with one GET, no redirects) or `s3://bucket/key` (GetObject with the default AWS credential
/// chain and region; `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` select an S3-compatible
/// server, addressed path-style). Displayed without user-info or query string: presigned URLs
/// carry credentials there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigLocation {
    Path(std::path::PathBuf),
    Http(hyper::Uri),
    S3 { bucket: String, key: String },
}

/// The longest a remote config may take to fetch, and the largest it may be.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const MAX_CONFIG_BYTES: usize = 16 << 20;

fn has_scheme(s: &str, scheme: &str) -> bool {
    s.get(..scheme.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
}

impl ConfigLocation {
    pub fn parse(s: &str) -> Result<ConfigLocation> {
        if has_scheme(s, "http://") || has_scheme(s, "https://") {
            let uri: hyper::Uri = s
                .parse()
                .map_err(|e| anyhow!("invalid config URL {}: {e}", redact_url(s)))?;
            if uri.host().is_none_or(str::is_empty) {
                bail!("invalid config URL {}: no host", redact_url(s));
            }
            return Ok(ConfigLocation::Http(uri));
        }
        if has_scheme(s, "s3://") {
            let rest = &s[5..];
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() {
                bail!("invalid config URL {s}: expected s3://bucket/key");
            }
            return Ok(ConfigLocation::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if s.is_empty() {
            bail!("no config given");
        }
        Ok(ConfigLocation::Path(s.into()))
    }
}

impl fmt::Display for ConfigLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigLocation::Path(p) => write!(f, "{}", p.display()),
            ConfigLocation::Http(u) => {
                let scheme = u.scheme_str().unwrap_or("http");
                let host = u.host().unwrap_or("");
                match u.port_u16() {
                    Some(port) => write!(f, "{scheme}://{host}:{port}{}", u.path()),
                    None => write!(f, "{scheme}://{host}{}", u.path()),
                }
            }
            ConfigLocation::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// `s` without user-info, query string or fragment (for a URL that did not even parse).
fn redact_url(s: &str) -> String {
    let s = s.split(['?', '#']).next().unwrap_or("");
    match s.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or("");
            format!("{scheme}://{host}{path}")
        }
        None => s.to_string(),
    }
}

/// The text of a config at `loc` (a local file, an HTTP(S) GET or an S3 GetObject), within
/// 30 s. Errors name the location without its query string.
pub async fn fetch_config(loc: &ConfigLocation) -> Result<String> {
    let bytes = match loc {
        ConfigLocation::Path(p) => tokio::fs::read(p)
            .await
            .with_context(|| format!("cannot read {}", p.display()))?,
        remote => {
            let fetch = async {
                match remote {
                    ConfigLocation::Http(u) => fetch_http(u).await,
                    ConfigLocation::S3 { bucket, key } => fetch_s3(bucket, key).await,
                    ConfigLocation::Path(_) => unreachable!(),
                }
            };
            tokio::time::timeout(FETCH_TIMEOUT, fetch)
                .await
                .map_err(|_| anyhow!("no answer within {}s", FETCH_TIMEOUT.as_secs()))
                .and_then(|r| r)
                .with_context(|| format!("cannot fetch the config {remote}"))?
        }
    };
    String::from_utf8(bytes).map_err(|_| anyhow!("config {loc} is not UTF-8"))
}

async fn fetch_http(uri: &hyper::Uri) -> Result<Vec<u8>> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    let https = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let host = uri.host().unwrap_or("");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // An IPv6 literal comes bracketed.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            hyper::header::HOST,
            match uri.port_u16() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            },
        )
        .header(
            hyper::header::USER_AGENT,
            concat!("rin-ship/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())?;
    let resp = if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|e| anyhow!("{host}: {e}"))?;
        let tls =
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(super::postgres::tls_config()?))
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
        send_request(hyper_util::rt::TokioIo::new(tls), req).await?
    } else {
        send_request(hyper_util::rt::TokioIo::new(tcp), req).await?
    };
    let status = resp.status();
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    let body = Limited::new(resp.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the body: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

async fn send_request<T>(
    io: T,
    req: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}

/// rustls with the OS trust store (as the warehouse connections use).
/// An endpoint override the AWS SDK reads itself (`AWS_ENDPOINT_URL_S3`, else
/// `AWS_ENDPOINT_URL`, unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`).
fn s3_endpoint_from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .into_iter()
        .filter_map(env)
        .find(|v| !v.is_empty())
}

async fn fetch_s3(bucket: &str, key: &str) -> Result<Vec<u8>> {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared);
    if shared.region().is_none() {
        b = b.region(aws_config::Region::new("us-east-1"));
    }
    // The SDK applies the endpoint override itself; S3-compatible servers want path-style.
    if s3_endpoint_from_env(&|k| std::env::var(k).ok()).is_some() {
        b = b.force_path_style(true);
    }
    let client = aws_sdk_s3::Client::from_conf(b.build());
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow!("GetObject: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))?;
    if out
        .content_length
        .is_some_and(|n| n > MAX_CONFIG_BYTES as i64)
    {
        bail!("larger than {MAX_CONFIG_BYTES} bytes");
    }
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| anyhow!("reading the object: {e}"))?;
    let bytes = body.into_bytes();
    if bytes.len() > MAX_CONFIG_BYTES {
        bail!("larger than {MAX_CONFIG_BYTES} bytes");
    }
    Ok(bytes.to_vec())
}

/// `insert_mode`, `key_columns` and `order_column` of target `i`, after the merge.
fn check_insert_mode(
    i: usize,
    mode: InsertMode,
    keys: &[String],
    order: &str,
    warehouse: Warehouse,
) -> Result<()> {
    for k in keys {
        if !is_identifier(k) {
            bail!("targets[{i}]: key_columns: {k:?} is not a plain identifier");
        }
    }
    if !order.is_empty() && !is_identifier(order) {
        bail!("targets[{i}]: order_column {order:?} is not a plain identifier");
    }
    if mode.keyed() {
        if keys.is_empty() {
            bail!(
                "targets[{i}]: insert_mode {} needs key_columns (the columns that identify a row)",
                mode.name()
            );
        }
        if warehouse == Warehouse::Redshift && order.is_empty() {
            bail!(
                "targets[{i}]: insert_mode {} on Redshift needs order_column: COPY keeps no line \
                 order, so nothing else tells which row of a key in one batch is the latest",
                mode.name()
            );
        }
    }
    Ok(())
}

/// rin-ship's connection extensions of target `i`: the Data API driver and IAM logins.
fn check_connection(i: usize, r: &Redshift, warehouse: Warehouse) -> Result<()> {
    let data_api = match r.driver.as_str() {
        "" | "postgres" => false,
        // The embedded warehouse: `dbname` is the SQLite file (see load::sqlite).
        "sqlite" => return Ok(()),
        "redshift-data" => true,
        other => {
            bail!(
                "targets[{i}]: redshift.driver {other:?}: expected postgres, redshift-data or \
                 sqlite"
            )
        }
    };
    let what = if data_api {
        "redshift.driver redshift-data (the Redshift Data API)"
    } else if r.iam_auth {
        "redshift.iam_auth (temporary credentials)"
    } else {
        if !r.secret_arn.is_empty() {
            bail!("targets[{i}]: redshift.secret_arn is for driver redshift-data");
        }
        if r.auto_create {
            bail!("targets[{i}]: redshift.auto_create needs iam_auth: true");
        }
        return Ok(());
    };
    if !cfg!(feature = "redshift") {
        bail!("targets[{i}]: {what} needs rin-ship built with `--features redshift`");
    }
    if warehouse != Warehouse::Redshift {
        bail!("targets[{i}]: {what} needs rin_ship.warehouse: redshift");
    }
    if r.cluster.is_empty() == r.workgroup.is_empty() {
        bail!(
            "targets[{i}]: {what} needs exactly one of redshift.cluster (provisioned) or \
             redshift.workgroup (Serverless)"
        );
    }
    if r.dbname.is_empty() {
        bail!("targets[{i}]: {what} needs redshift.dbname");
    }
    if !r.password.is_empty() {
        bail!(
            "targets[{i}]: redshift.password is not used with {what}; remove it{}",
            if data_api { " (or use secret_arn)" } else { "" }
        );
    }
    if data_api && r.iam_auth {
        bail!(
            "targets[{i}]: redshift.iam_auth is for the wire protocol; the Data API always \
             logs in with the AWS credentials (or secret_arn)"
        );
    }
    if !data_api && !r.secret_arn.is_empty() {
        bail!("targets[{i}]: redshift.secret_arn is for driver redshift-data, not iam_auth");
    }
    if !r.workgroup.is_empty() {
        if !r.user.is_empty() {
            bail!(
                "targets[{i}]: redshift.user is not used with a workgroup (Serverless maps the \
                 IAM identity to a database user); remove it{}",
                if data_api { " or use secret_arn" } else { "" }
            );
        }
        if r.auto_create {
            bail!("targets[{i}]: redshift.auto_create is for a provisioned cluster");
        }
    } else if data_api {
        if r.user.is_empty() == r.secret_arn.is_empty() {
            bail!(
                "targets[{i}]: {what} on a cluster needs exactly one of redshift.user (temporary \
                 credentials for that database user) or redshift.secret_arn"
            );
        }
        if r.auto_create {
            bail!("targets[{i}]: redshift.auto_create needs iam_auth: true");
        }
    } else if r.user.is_empty() {
        bail!("targets[{i}]: {what} on a cluster needs redshift.user (the database user)");
    }
    if !data_api && r.host.is_empty() {
        bail!("targets[{i}]: {what} needs redshift.host (the endpoint to connect to)");
    }
    Ok(())
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
    plain: fn(&str) -> bool,
) -> Result<String, InvalidIdentifier> {
    let (v, used) = expand_placeholders(s, captures);
    if used && !plain(&v) {
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
    fn config_locations() {
        let p = |s: &str| ConfigLocation::parse(s).unwrap();
        assert_eq!(p("rin.yaml"), ConfigLocation::Path("rin.yaml".into()));
        assert_eq!(p("./a/s3:/b"), ConfigLocation::Path("./a/s3:/b".into()));
        assert_eq!(
            p("s3://my-bucket/conf/rin.yaml"),
            ConfigLocation::S3 {
                bucket: "my-bucket".into(),
                key: "conf/rin.yaml".into()
            }
        );
        assert_eq!(p("S3://b/k?x").to_string(), "s3://b/k?x");
        assert!(ConfigLocation::parse("s3://bucket").is_err());
        assert!(ConfigLocation::parse("s3://bucket/").is_err());
        assert!(ConfigLocation::parse("s3:///key").is_err());
        assert!(ConfigLocation::parse("").is_err());
        let presigned =
            "https://user:pw@b.s3.amazonaws.com:8443/c/rin.yaml?X-Amz-Signature=SECRET#f";
        let l = p(presigned);
        assert!(matches!(&l, ConfigLocation::Http(u) if u.query().is_some()));
        assert_eq!(l.to_string(), "https://b.s3.amazonaws.com:8443/c/rin.yaml");
        assert_eq!(
            p("HTTP://127.0.0.1/rin.yaml").to_string(),
            "http://127.0.0.1/rin.yaml"
        );
        assert_eq!(p("http://[::1]:80").to_string(), "http://[::1]:80/");
        let e = format!(
            "{:#}",
            ConfigLocation::parse("http://exa mple/x?sig=SECRET").unwrap_err()
        );
        assert!(!e.contains("SECRET"), "{e}");
        assert!(ConfigLocation::parse("http:///x").is_err());
        assert_eq!(redact_url("https://u:p@h/a?b"), "https://h/a");
    }

    #[test]
    fn s3_endpoint_env() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(s3_endpoint_from_env(&env(&[])), None);
        assert_eq!(
            s3_endpoint_from_env(&env(&[("AWS_ENDPOINT_URL", "http://a")])).as_deref(),
            Some("http://a")
        );
        assert_eq!(
            s3_endpoint_from_env(&env(&[
                ("AWS_ENDPOINT_URL", "http://a"),
                ("AWS_ENDPOINT_URL_S3", "http://s3")
            ]))
            .as_deref(),
            Some("http://s3")
        );
        assert_eq!(
            s3_endpoint_from_env(&env(&[
                ("AWS_ENDPOINT_URL", "http://a"),
                ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
            ])),
            None
        );
    }

    /// One-shot HTTP server on 127.0.0.1: answers every request with `status` and `body`,
    /// and hands back the request head it read.
    async fn serve_once(
        status: &'static str,
        body: &'static str,
    ) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&head).into_owned()
        });
        (port, h)
    }

    #[tokio::test]
    async fn fetch_over_http() {
        let (port, h) = serve_once("200 OK", "queue_name: q\n").await;
        let loc =
            ConfigLocation::parse(&format!("http://127.0.0.1:{port}/c/rin.yaml?a=1")).unwrap();
        assert_eq!(fetch_config(&loc).await.unwrap(), "queue_name: q\n");
        let head = h.await.unwrap();
        assert!(
            head.starts_with("GET /c/rin.yaml?a=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: 127.0.0.1:{port}")),
            "{head}"
        );

        let (port, _h) = serve_once("403 Forbidden", "denied").await;
        let url = format!("http://127.0.0.1:{port}/rin.yaml?X-Amz-Signature=SECRET");
        let e = format!(
            "{:#}",
            fetch_config(&ConfigLocation::parse(&url).unwrap())
                .await
                .unwrap_err()
        );
        assert!(
            e.contains(&format!("http://127.0.0.1:{port}/rin.yaml")),
            "{e}"
        );
        assert!(e.contains("403"), "{e}");
        assert!(!e.contains("SECRET") && !e.contains('?'), "{e}");

        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let loc = ConfigLocation::parse(&format!("http://127.0.0.1:{port}/x?sig=SECRET")).unwrap();
        let e = format!("{:#}", fetch_config(&loc).await.unwrap_err());
        assert!(
            e.contains("cannot fetch the config") && !e.contains("SECRET"),
            "{e}"
        );
    }

    #[test]
    #[cfg(not(feature = "redshift"))]
    fn redshift_extensions_need_the_feature() {
        let base =
            "queue_name: q\ntargets:\n  - redshift: {table: a, dbname: d, user: u, cluster: c";
        for extra in [", driver: redshift-data", ", host: h, iam_auth: true"] {
            let src = format!("{base}{extra}}}\n    s3: {{bucket: b, key_prefix: x}}\n");
            let e = format!("{:#}", RinConfig::parse(&src, &env).unwrap_err());
            assert!(e.contains("--features redshift"), "{e}");
        }
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
