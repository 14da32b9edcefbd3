//! The Rin-compatible configuration of the loader. Rin's YAML keys load unchanged
//! ([`schema`]), after kayac/go-config style templating ([`template`]); a config can come from a
//! path, an `http(s)://` URL or `s3://` ([`fetch`]); the top-level sections are merged into each
//! target and checked ([`targets`]). rin-ship's own settings live under `rin_ship:`.
//!
//! Matching follows Rin ([`RinConfig::route`]): targets are tried in order; every matching
//! target loads the object (unless `discard`), and `break` (or `discard`) stops the search.
//! `$0..$n` in schema and table are the `key_regexp` captures (`$0` is the whole match, or the
//! key for `key_prefix`); the result, when it used a capture, must be a plain identifier
//! ([`ident`]), so an object key can never inject SQL.
//!
//! Rin accepts what Go's yaml.v2 accepts, and so does this: unknown keys are ignored with a
//! warning naming each (keys under `x-...`, the home of YAML anchors, silently), merge keys
//! (`<<: *anchor`) are applied, and a setting the target's driver does not use, inherited
//! across a driver override, is dropped. [`RinConfig::warnings`] lists what was ignored;
//! [`RinConfig::load`] and [`RinConfig::load_from`] log it, [`check`] prints it.
//!
//! Must never: depend on the rest of the loader (everything there reads this); print a secret;
//! fail a config for a key Rin would ignore in its own sections.

pub mod check;
#[cfg(all(feature = "s3", feature = "sqs"))]
pub mod fetch;
pub mod flags;
pub mod ident;
pub mod maintenance;
pub mod schema;
mod targets;
pub mod template;

#[cfg(all(feature = "s3", feature = "sqs"))]
pub use fetch::{ConfigLocation, fetch_config};
pub use ident::{is_identifier, is_tag_name, quote_ident, quote_literal, split_qualified};
pub use schema::*;
use template::{expand_ident, expand_template};

use anyhow::{Context, Result, anyhow, bail};
use regex::Regex;

/// A target after Rin's merge of the top-level sections.
#[derive(Debug, Clone)]
pub struct Target {
    pub index: usize,
    pub redshift: Redshift,
    /// The driver `redshift.driver` (and `rin_ship.warehouse`) select.
    pub driver: DriverKind,
    pub s3: S3Spec,
    pub sql_option: String,
    pub break_: bool,
    pub discard: bool,
    pub insert_mode: InsertMode,
    /// The key of the keyed insert modes (plain identifiers; empty otherwise unused).
    pub key_columns: Vec<String>,
    /// Decides the latest row of a key inside a batch (a plain identifier, or empty).
    pub order_column: String,
    /// What a record key with no column does.
    pub schema: SchemaPolicy,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Prefix(String),
    Regexp(Regex),
}

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct RinConfig {
    /// Read by `rin-ship import` (SQS), which a build without `sqs` lacks.
    #[cfg_attr(not(feature = "sqs"), allow(dead_code))]
    pub queue_name: String,
    pub credentials: Credentials,
    pub targets: Vec<Target>,
    pub ext: Extension,
    /// What the file says that is ignored (unknown keys, settings the target's driver does not
    /// use), one sentence each; never a secret.
    pub warnings: Vec<String>,
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
    /// Loads a local config file and logs its [`RinConfig::warnings`].
    pub fn load(path: &std::path::Path) -> Result<RinConfig> {
        let config = Self::load_quietly(path)?;
        config.log_warnings();
        Ok(config)
    }

    /// [`RinConfig::load`] without logging the warnings (`check-config` prints them).
    pub fn load_quietly(path: &std::path::Path) -> Result<RinConfig> {
        let src = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&src, &|k| std::env::var(k).ok())
            .with_context(|| format!("invalid Rin config {}", path.display()))
    }

    /// Loads a config from where Rin's `-config` may point: a local path, an `http(s)://` URL
    /// or an `s3://bucket/key` URL (see [`ConfigLocation`]), and logs its warnings. Blocks;
    /// call it outside a tokio runtime (async callers: [`fetch_config`] then
    /// [`RinConfig::parse`]).
    #[cfg(all(feature = "s3", feature = "sqs"))]
    pub fn load_from(location: &str) -> Result<RinConfig> {
        let config = Self::load_from_quietly(location)?;
        config.log_warnings();
        Ok(config)
    }

    /// [`RinConfig::load_from`] without logging the warnings.
    #[cfg(all(feature = "s3", feature = "sqs"))]
    pub fn load_from_quietly(location: &str) -> Result<RinConfig> {
        let loc = ConfigLocation::parse(location)?;
        if let ConfigLocation::Path(p) = &loc {
            return Self::load_quietly(p);
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

    /// Parses a config (after its templating), Rin's way: unknown keys and settings the
    /// target's driver does not use go to [`RinConfig::warnings`] instead of failing.
    pub fn parse(src: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<RinConfig> {
        let text = expand_template(src, env)?;
        let mut ignored = Vec::new();
        let file = deserialize_file(&text, &mut ignored)?;
        let mut config = Self::from_file(file)?;
        let unknown = ignored
            .into_iter()
            .filter(|p| !is_extension_key(p))
            .map(|p| format!("unknown key `{p}` ignored (as Rin ignores it); check its spelling"));
        config.warnings.splice(0..0, unknown);
        Ok(config)
    }

    /// Logs each warning (once per load).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("Rin config: {w}");
        }
    }

    /// What `rin-ship import` (polling SQS) needs beyond a valid config: a queue. The Lambda
    /// handler, backfill and maintenance go without one, as Rin requires `queue_name` only
    /// outside Lambda.
    pub fn require_queue(&self) -> Result<()> {
        if self.queue_name.is_empty() && self.ext.queue_url.is_empty() {
            bail!(
                "queue_name required (or rin_ship.queue_url): `rin-ship import` reads the S3 \
                 events from that SQS queue (only the Lambda handler, backfill and maintain go \
                 without one)"
            );
        }
        Ok(())
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
            let plain = if t.driver.takes_tag_names() {
                is_tag_name
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

    /// The AWS settings of the importer: Rin's `credentials` keys and region (else the first
    /// target's S3 region), else the SDK's chain.
    #[cfg(any(feature = "s3", feature = "sqs"))]
    pub fn aws_settings(&self) -> crate::common::aws::AwsSettings {
        use crate::common::aws::{AwsSettings, StaticKeys};
        use crate::common::secret::Secret;
        let cr = &self.credentials;
        let first_s3_region = self.targets.first().map_or("", |t| t.s3.region.as_str());
        AwsSettings {
            region: AwsSettings::first_region([cr.aws_region.as_str(), first_s3_region]),
            keys: (!cr.aws_access_key_id.is_empty() && !cr.aws_secret_access_key.is_empty()).then(
                || StaticKeys {
                    id: cr.aws_access_key_id.clone(),
                    secret: Secret::new(cr.aws_secret_access_key.clone()),
                    session_token: (!cr.aws_session_token.is_empty())
                        .then(|| Secret::new(cr.aws_session_token.clone())),
                },
            ),
            max_attempts: None,
        }
    }

    /// (bucket, key prefix) where Redshift manifests go for a target in `target_bucket`.
    pub fn manifest_location(&self, target_bucket: &str) -> (String, String) {
        s3_location(
            &self.ext.manifest_prefix,
            target_bucket,
            "rin-ship/manifests/",
        )
    }

    /// (bucket, key prefix) where quarantine records go for a target in `target_bucket`.
    pub fn quarantine_location(&self, target_bucket: &str) -> (String, String) {
        s3_location(
            &self.ext.quarantine_prefix,
            target_bucket,
            "rin-ship/quarantine/",
        )
    }

    /// Whether the object is one the importer itself wrote (a manifest or a quarantine record):
    /// a bucket notification without a prefix filter reports those too, and a catch-all
    /// target must never load them as data.
    pub fn is_own_object(&self, bucket: &str, key: &str) -> bool {
        [
            self.manifest_location(bucket),
            self.quarantine_location(bucket),
        ]
        .iter()
        .any(|(b, prefix)| b == bucket && !prefix.is_empty() && key.starts_with(prefix))
    }

    /// Where the importer's queue is: `rin_ship.queue_url` when set, else Rin's `queue_name`.
    #[cfg(feature = "sqs")]
    pub fn queue_name_or_url(&self) -> &str {
        if self.ext.queue_url.is_empty() {
            &self.queue_name
        } else {
            &self.ext.queue_url
        }
    }
}

/// `s3://bucket/prefix/` as (bucket, prefix ending in `/`); empty: the target's bucket under
/// `default_prefix`.
fn s3_location(url: &str, target_bucket: &str, default_prefix: &str) -> (String, String) {
    match url.strip_prefix("s3://") {
        Some(rest) => {
            let (b, k) = rest.split_once('/').unwrap_or((rest, ""));
            let mut k = k.to_string();
            if !k.is_empty() && !k.ends_with('/') {
                k.push('/');
            }
            (b.to_string(), k)
        }
        None => (target_bucket.to_string(), default_prefix.to_string()),
    }
}

/// The file's keys into [`RinFile`]; the path of each key no field takes goes to `ignored`.
/// Merge keys (`<<: *anchor`, which yaml.v2 applies) are applied first when there are any;
/// otherwise the text is read directly, so errors keep their line and column.
fn deserialize_file(text: &str, ignored: &mut Vec<String>) -> Result<RinFile> {
    let mut value: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| anyhow!("{e}"))?;
    let mut note = |path: serde_ignored::Path| ignored.push(key_path(&path));
    let located = |e: serde_path_to_error::Error<serde_norway::Error>| {
        let path = e.path().to_string();
        anyhow!("field `{path}`: {}", e.into_inner())
    };
    if has_merge_key(&value) {
        value.apply_merge().map_err(|e| anyhow!("{e}"))?;
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note))
            .map_err(located)
    } else {
        let de = serde_norway::Deserializer::from_str(text);
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note))
            .map_err(located)
    }
}

fn has_merge_key(v: &serde_norway::Value) -> bool {
    use serde_norway::Value;
    match v {
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// `targets[0].s3.key_prefx`, as the errors name fields.
fn key_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            up if up.is_empty() => key.clone(),
            up => format!("{up}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// Keys under `x-...` hold YAML anchors by convention (as in compose files): not a mistake.
fn is_extension_key(path: &str) -> bool {
    path.split(['.', '[']).any(|k| k.starts_with("x-"))
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
        // Rin's own listing marks `discard` and `break` the same way (`=> Discard`, `=> Break`).
        let mut d = if self.discard {
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
        };
        if self.break_ && !self.discard {
            d.push_str(" => break");
        }
        d
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The environment the config tests expand templates from.
    pub(crate) fn env(k: &str) -> Option<String> {
        match k {
            "AWS_SECRET_ACCESS_KEY" => Some("SSS".into()),
            "REDSHIFT_PASSWORD" => Some("pw".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
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
        // Issue 12: Rin ignores unknown keys, so a warning names the key instead of an error.
        let unknown = "queue_name: q\nbogus: 1\ntargets:\n  - redshift: {table: a}\n    s3: {bucket: b, key_prefix: x}\n";
        let c = RinConfig::parse(unknown, &env).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("`bogus`")),
            "{:?}",
            c.warnings
        );
        assert!(RinConfig::parse("targets: []\n", &env).is_err());
    }

    fn rin_file(name: &str) -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rin/");
        std::fs::read_to_string(format!("{path}{name}")).unwrap()
    }

    fn load(name: &str) -> RinConfig {
        RinConfig::parse(&rin_file(name), &env).unwrap_or_else(|e| panic!("{name}: {e:#}"))
    }

    fn dest(target: usize, schema: &str, table: &str) -> MatchOutcome {
        MatchOutcome::Load(vec![Destination {
            target,
            schema: schema.into(),
            table: table.into(),
        }])
    }

    /// Rin's test configs route as Rin's config_test.go says they must.
    #[test]
    fn rin_material_test_configs_route_as_in_rin() {
        for name in ["config.yml", "config.yml.iam_role"] {
            let c = load(name);
            assert_eq!(c.targets.len(), 5, "{name}");
            assert!(c.warnings.is_empty(), "{name}: {:?}", c.warnings);
            let r = |b: &str, k: &str| c.route(b, k).unwrap();
            assert_eq!(
                r("test.bucket.test", "test/foo/xxx.json"),
                dest(1, "", "foo")
            );
            assert_eq!(
                r("test.bucket.test", "test/foo/discard/xxx.json"),
                MatchOutcome::Discarded
            );
            assert_eq!(
                r("test.bucket.test", "test/bar/break"),
                dest(2, "xxx", "bar_break"),
                "{name}: break stops at the first match"
            );
            assert_eq!(
                r("test.bucket.test", "test/bar/y's.csv"),
                dest(3, "xxx", "bar")
            );
            assert_eq!(
                r("example.bucket", "test/s1/t256/aaa.json"),
                dest(4, "s1", "t256")
            );
            assert_eq!(
                r("test.bucket.test", "foo/bar.json"),
                MatchOutcome::NoTarget
            );
            assert_eq!(c.targets[3].sql_option, "CSV DELIMITER ',' ESCAPE");
            assert_eq!(c.targets[1].sql_option, "JSON 'auto' GZIP");
        }
        let c = load("config.yml");
        assert_eq!(c.credentials.aws_secret_access_key, "SSS", "must_env");
        assert!(
            c.targets.iter().all(|t| t.redshift.reconnect_on_error),
            "reconnect_on_error must be true on every target"
        );
        let iam = load("config.yml.iam_role");
        assert_eq!(
            iam.credentials.aws_iam_role,
            "arn:aws:iam::123456789012:role/rin"
        );
        for broken in ["config.yml.invalid_regexp", "config.yml.no_key_matcher"] {
            assert!(
                RinConfig::parse(&rin_file(broken), &env).is_err(),
                "{broken}"
            );
        }
        let c = load("localstack.yml");
        assert_eq!(
            c.route("rin-test", "test_xxx/foo/a.json").unwrap(),
            dest(0, "", "foo")
        );
        let c = load("README.config.yaml");
        assert_eq!(c.targets.len(), 4);
        assert_eq!(c.targets[0].redshift.password, "pw");
    }

    #[test]
    #[cfg(feature = "redshift")]
    fn rin_material_redshift_data_config() {
        let c = load("config.redshift-data.yml");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        for t in c.targets.iter().filter(|t| !t.discard) {
            assert_eq!(t.driver, DriverKind::RedshiftData);
            assert_eq!(
                (t.redshift.cluster.as_str(), t.redshift.user.as_str()),
                ("mycluster", "test_user")
            );
            assert!(t.redshift.reconnect_on_error);
        }
        assert_eq!(
            c.route("test.bucket.test", "test/bar/break").unwrap(),
            dest(2, "xxx", "bar_break")
        );
    }

    #[test]
    fn unknown_keys_anchors_and_merge_keys() {
        let src = r#"
x-redshift: &rs
  host: db.example
  port: 5439
  dbname: dev
  user: loader
  password: pw
queue_name: q
colour: blue
redshift: *rs
targets:
  - redshift:
      <<: *rs
      table: a
      tabel: typo
    s3: {bucket: b, key_prefix: a/, x-note: fine}
  - redshift: {table: b}
    s3: {bucket: b, key_prefx: b/, key_regexp: '^b/'}
    comment: ignored
rin_ship: {warehouse: postgres}
"#;
        let c = RinConfig::parse(src, &env).unwrap();
        assert_eq!(c.targets[0].redshift.host, "db.example");
        assert_eq!(c.targets[1].redshift.user, "loader");
        let unknown: Vec<&str> = c
            .warnings
            .iter()
            .filter_map(|w| w.strip_prefix("unknown key `"))
            .map(|w| w.split('`').next().unwrap())
            .collect();
        assert_eq!(
            unknown,
            [
                "colour",
                "targets[0].redshift.tabel",
                "targets[1].s3.key_prefx",
                "targets[1].comment"
            ]
        );
        // rin-ship's own keys stay strict: a typo there would change where data goes.
        let e = RinConfig::parse(
            &src.replace("warehouse: postgres", "warehose: postgres"),
            &env,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("warehose"), "{e:#}");
    }

    #[test]
    fn queue_name_only_outside_lambda() {
        let c = RinConfig::parse(
            "targets:
  - redshift: {table: a, password: p}
    s3: {bucket: b, key_prefix: x}
",
            &env,
        )
        .unwrap();
        let e = format!("{:#}", c.require_queue().unwrap_err());
        assert!(
            e.contains("queue_name required") && e.contains("Lambda"),
            "{e}"
        );
        let with_url = RinConfig::parse(
            "rin_ship: {queue_url: 'http://q'}
targets:
  - redshift: {table: a, password: p}
    s3: {bucket: b, key_prefix: x}
",
            &env,
        )
        .unwrap();
        assert!(with_url.require_queue().is_ok());
    }

    #[test]
    fn empty_password_is_rins_temporary_login() {
        let src = "queue_name: q\nredshift: {host: rs1.abc123.ap-northeast-1.redshift.amazonaws.com, port: 5439, dbname: dev, user: loader}\ntargets:\n  - redshift: {table: a}\n    s3: {bucket: b, key_prefix: x}\n  - redshift: {table: c, password: pw}\n    s3: {bucket: b, key_prefix: y}\n";
        let c = RinConfig::parse(src, &env).unwrap();
        let r = &c.targets[0].redshift;
        assert!(r.iam_auth, "GetClusterCredentials, as Rin");
        assert_eq!((r.cluster.as_str(), r.user.as_str()), ("rs1", "loader"));
        assert!(
            c.targets[0]
                .describe()
                .contains("loader:(iam cluster(rs1))@rs1.abc123")
        );
        assert!(
            !c.targets[1].redshift.iam_auth,
            "a password is a password login"
        );
        // An explicit cluster wins over the host's first label.
        let named = src.replace("user: loader}", "user: loader, cluster: other}");
        assert_eq!(
            RinConfig::parse(&named, &env).unwrap().targets[0]
                .redshift
                .cluster,
            "other"
        );
        // PostgreSQL (rin_ship.warehouse: postgres) takes an empty password as it is.
        let pg = format!("{src}rin_ship: {{warehouse: postgres}}\n");
        assert!(
            !RinConfig::parse(&pg, &env).unwrap().targets[0]
                .redshift
                .iam_auth
        );
        // What cannot work is said at load (Rin finds out only when it connects).
        let no_user = src.replace(", user: loader", "");
        let c = RinConfig::parse(&no_user, &env).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("targets[0]") && w.contains("redshift.user")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    #[cfg(feature = "redshift")]
    fn driver_override_drops_what_the_other_driver_does_not_use() {
        // A `redshift-data` target under a wire-protocol top level inherits host, port and
        // password, which the Data API does not use.
        let src = "queue_name: q\nredshift: {driver: postgres, host: h.example, port: 5439, dbname: dev, user: loader, password: pw}\ntargets:\n  - redshift: {driver: redshift-data, cluster: c1, table: a}\n    s3: {bucket: b, key_prefix: x}\n  - redshift: {driver: redshift-data, workgroup: wg, table: b}\n    s3: {bucket: b, key_prefix: y}\n  - redshift: {table: c}\n    s3: {bucket: b, key_prefix: z}\n";
        let c = RinConfig::parse(src, &env).unwrap();
        let data = &c.targets[0].redshift;
        assert_eq!(c.targets[0].driver, DriverKind::RedshiftData);
        assert_eq!(
            (data.host.as_str(), data.port, data.password.as_str()),
            ("", 0, "")
        );
        assert_eq!(
            (
                data.cluster.as_str(),
                data.user.as_str(),
                data.dbname.as_str()
            ),
            ("c1", "loader", "dev")
        );
        let sl = &c.targets[1].redshift;
        assert_eq!(sl.user, "", "a workgroup maps the IAM identity");
        assert!(
            c.warnings.is_empty(),
            "inherited, so not the target's mistake: {:?}",
            c.warnings
        );
        assert_eq!(c.targets[2].driver, DriverKind::Redshift);
        assert_eq!(c.targets[2].redshift.password, "pw");
        // The target's own password with the Data API is still refused.
        let own = src.replace(
            "cluster: c1, table: a",
            "cluster: c1, table: a, password: x",
        );
        let e = format!("{:#}", RinConfig::parse(&own, &env).unwrap_err());
        assert!(
            e.contains("targets[0]: redshift.password is not used"),
            "{e}"
        );
        // The other way: a wire target under a Data API top level drops the cluster it
        // inherited, and logs in as Rin does (the host's first label).
        let rev = "queue_name: q\nredshift: {driver: redshift-data, cluster: c1, dbname: dev, user: loader}\ntargets:\n  - redshift: {driver: postgres, host: rs2.example, port: 5439, table: a}\n    s3: {bucket: b, key_prefix: x}\n";
        let c = RinConfig::parse(rev, &env).unwrap();
        let r = &c.targets[0].redshift;
        assert_eq!(
            (c.targets[0].driver, r.cluster.as_str(), r.iam_auth),
            (DriverKind::Redshift, "rs2", true)
        );
    }

    #[test]
    #[cfg(feature = "redshift")]
    fn data_api_workgroup_with_a_user_is_a_warning() {
        let src = "queue_name: q\nredshift: {driver: redshift-data, workgroup: wg, dbname: dev, user: test_user}\ntargets:\n  - redshift: {table: a}\n    s3: {bucket: b, key_prefix: x}\n";
        let c = RinConfig::parse(src, &env).unwrap();
        assert_eq!(c.targets[0].redshift.user, "");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("redshift.user \"test_user\" is not used with a workgroup")),
            "{:?}",
            c.warnings
        );
    }
}
