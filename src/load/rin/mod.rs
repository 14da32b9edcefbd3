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
//! Must never: depend on the rest of the loader (everything there reads this); print a secret.

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

use anyhow::{Context, Result, anyhow};
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
    #[cfg(all(feature = "s3", feature = "sqs"))]
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
        let unknown = "queue_name: q\nbogus: 1\ntargets:\n  - redshift: {table: a}\n    s3: {bucket: b, key_prefix: x}\n";
        let e = format!("{:#}", RinConfig::parse(unknown, &env).unwrap_err());
        assert!(e.contains("bogus"), "{e}");
        assert!(RinConfig::parse("targets: []\n", &env).is_err());
    }
}
