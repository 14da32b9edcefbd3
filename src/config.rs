//! The YAML configuration: every field has a default, so `rin-ship serve` with no file runs the
//! whole pipeline on local folders. Owns loading, `${VAR}` expansion and validation; it must
//! never let an invalid config reach the pipeline, and never echo a secret in an error.

use crate::buffer::BufferConfig;
use crate::common::codec::Codec;
use crate::common::units::{ByteSize, Span};
use crate::intake::forward::ForwardConfig;
use crate::intake::route::TagPattern;
use crate::intake::transcode::TimeFormat;
pub use crate::ship::ShipConfig;
use crate::ship::key::KeyTemplate;
pub use crate::store::config::{NotifyConfig, StoreConfig};
pub use crate::telemetry::MetricsConfig;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node id written into object keys. Empty: `<hostname>-<random suffix kept in data_dir>`.
    pub node: String,
    /// Root of everything rin-ship keeps on disk.
    pub data_dir: PathBuf,
    pub forward: ForwardConfig,
    /// The HTTP intake (fluentd in_http style, fluent-bit out_http, Vector http sink).
    pub http: crate::intake::http::HttpConfig,
    pub buffer: BufferConfig,
    pub ship: ShipConfig,
    /// Named object stores. A store named `local` (a folder under data_dir) always exists.
    pub stores: BTreeMap<String, StoreConfig>,
    /// Routing: the first target whose `match` patterns match an event's tag receives it.
    pub targets: Vec<TargetConfig>,
    /// Target for tags that match no target. Empty: such events are refused (not acked,
    /// counted, logged), never dropped silently.
    pub fallback: String,
    pub metrics: MetricsConfig,
    /// Memory every decompressed payload alive at once may hold (forward and HTTP, all
    /// connections together); past it a payload is refused as busy and its client resends
    /// it. At least each intake's `max_decompressed_bytes`.
    pub decompress_memory: ByteSize,
    /// Run the loader inside `serve`: local stores notify the local queue under
    /// `<data_dir>/queue/`, and each object is loaded into the embedded warehouse
    /// (`<data_dir>/warehouse.db`, SQLite). Default: on without a config file, off with one.
    pub embedded_load: Option<bool>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    pub name: String,
    /// fluentd-style tag patterns: `app.**`, `*.access`, `{a,b}.log`.
    #[serde(rename = "match")]
    pub patterns: Vec<String>,
    pub store: String,
    /// Object key template: `{tag}`, `{tag[N]}`, `{target}`, `{node}`, `{seq}` and strftime
    /// fields of the chunk's first event time (UTC). Must contain `{seq}`.
    pub key: String,
    /// Name of the event-time field added to each line; empty: none.
    pub time_key: String,
    pub time_format: TimeFormat,
    /// Fractional digits of the time field (0..=9).
    pub time_precision: u8,
    /// Name of the tag field added to each line; empty: none.
    pub tag_key: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: String::new(),
            data_dir: PathBuf::from("./rin-data"),
            forward: ForwardConfig::default(),
            http: Default::default(),
            buffer: BufferConfig::default(),
            ship: ShipConfig::default(),
            stores: BTreeMap::new(),
            targets: Vec::new(),
            fallback: String::new(),
            metrics: MetricsConfig::default(),
            decompress_memory: ByteSize(256 << 20),
            embedded_load: None,
        }
    }
}

pub const DEFAULT_KEY: &str = "logs/{tag}/dt=%Y-%m-%d/hour=%H/{node}-{seq}.json.gz";

/// [`DEFAULT_KEY`] with the extension of `codec`.
pub fn default_key(codec: Codec) -> String {
    DEFAULT_KEY.replace(Codec::Gzip.extension(), codec.extension())
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            name: "default".into(),
            patterns: vec!["**".into()],
            store: "local".into(),
            key: DEFAULT_KEY.into(),
            time_key: "time".into(),
            time_format: TimeFormat::Rfc3339,
            time_precision: 6,
            tag_key: String::new(),
        }
    }
}

impl Config {
    /// Reads, expands and validates a config file; `None` gives the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut config = match path {
            None => Config::embedded(&|name| std::env::var(name).ok())?,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                Self::parse(&text).with_context(|| format!("config file {}", path.display()))?
            }
        };
        config.fill_defaults();
        match path {
            Some(path) => config
                .validate()
                .with_context(|| format!("config file {}", path.display()))?,
            None => config.validate()?,
        }
        Ok(config)
    }

    /// Parses YAML text: `${VAR}` references in string values are expanded first.
    pub fn parse(text: &str) -> Result<Config> {
        let mut value: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| anyhow::anyhow!("invalid YAML: {e}"))?;
        if value.is_null() {
            return Ok(Config::default());
        }
        expand_env(&mut value, &mut String::new())?;
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            anyhow::anyhow!(
                "field `{path}`: {}",
                plain_type_error(&err.into_inner().to_string())
            )
        })
    }

    /// The defaults `serve` runs on without a config file: the whole pipeline on this machine,
    /// with the embedded loader (when built in) and chunks sealed after 5 s instead of 60 s,
    /// so records sent to a fresh `rin-ship serve` are rows within seconds. A few environment
    /// variables adjust it: `RIN_SHIP_FORWARD_BIND`, `RIN_SHIP_HTTP_BIND`,
    /// `RIN_SHIP_METRICS_BIND` (`host:port`) and `RIN_SHIP_SEAL_AGE` (e.g. `1s`).
    pub fn embedded(env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let mut c = Config {
            embedded_load: Some(true),
            ..Config::default()
        };
        c.buffer.seal_age = Span(EMBEDDED_SEAL_AGE);
        let addr = |name: &str, into: &mut SocketAddr| -> Result<()> {
            if let Some(v) = env(name).filter(|v| !v.is_empty()) {
                *into = crate::common::net::parse_bind(&v)
                    .map_err(|e| anyhow::anyhow!("environment variable {name}: {e}"))?;
            }
            Ok(())
        };
        addr("RIN_SHIP_FORWARD_BIND", &mut c.forward.bind)?;
        addr("RIN_SHIP_HTTP_BIND", &mut c.http.bind)?;
        addr("RIN_SHIP_METRICS_BIND", &mut c.metrics.bind)?;
        if let Some(v) = env("RIN_SHIP_SEAL_AGE").filter(|v| !v.is_empty()) {
            c.buffer.seal_age = Span(
                crate::common::units::parse_duration(&v)
                    .map_err(|e| anyhow::anyhow!("environment variable RIN_SHIP_SEAL_AGE: {e}"))?,
            );
        }
        Ok(c)
    }

    /// Whether `serve` runs the embedded loader.
    pub fn embedded_load(&self) -> bool {
        self.embedded_load == Some(true)
    }

    /// The path of the embedded warehouse.
    pub fn warehouse_path(&self) -> PathBuf {
        self.data_dir.join("warehouse.db")
    }

    /// The folder of the local queue.
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }

    /// What the embedded loader needs to know of this config.
    pub fn embedded_setup(&self) -> crate::load::embedded::Setup {
        let notifies_local = |s: &StoreConfig| {
            matches!(s, StoreConfig::Local { .. }) && s.notify() == &NotifyConfig::Local
        };
        crate::load::embedded::Setup {
            targets: self
                .targets
                .iter()
                .filter(|t| notifies_local(&self.stores[&t.store]))
                .map(|t| (t.name.clone(), t.store.clone(), t.key.clone()))
                .collect(),
            folders: self
                .stores
                .iter()
                .filter_map(|(name, s)| match s {
                    StoreConfig::Local { dir, .. } => Some((name.clone(), dir.clone())),
                    StoreConfig::S3(_) => None,
                })
                .collect(),
            warehouse: self.warehouse_path(),
            queue_dir: self.queue_dir(),
        }
    }

    /// Whether some store notifies the local queue.
    pub fn uses_local_queue(&self) -> bool {
        self.stores
            .values()
            .any(|s| s.notify() == &NotifyConfig::Local)
    }

    pub(crate) fn fill_defaults(&mut self) {
        self.buffer.fill_defaults(&self.data_dir);
        self.stores
            .entry("local".into())
            .or_insert_with(|| StoreConfig::Local {
                dir: self.data_dir.join("objects"),
                notify: None,
            });
        if self.targets.is_empty() {
            self.targets.push(TargetConfig::default());
        }
        // The default key names the objects' compression.
        let codec = self.buffer.compression;
        for t in &mut self.targets {
            if t.key == DEFAULT_KEY {
                t.key = default_key(codec);
            }
        }
        let embedded = self.embedded_load();
        for store in self.stores.values_mut() {
            let (notify, default) = match store {
                StoreConfig::Local { notify, .. } if embedded => (notify, NotifyConfig::Local),
                StoreConfig::Local { notify, .. } => (notify, NotifyConfig::Off),
                StoreConfig::S3(s3) => (&mut s3.notify, NotifyConfig::Off),
            };
            notify.get_or_insert(default);
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let field = |f: &str| format!("field `targets[{i}].{f}`");
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bail!(
                    "{}: `{}` must be non-empty and use only letters, digits, `_` and `-`",
                    field("name"),
                    t.name
                );
            }
            if !names.insert(t.name.as_str()) {
                bail!("{}: target `{}` is defined twice", field("name"), t.name);
            }
            if t.patterns.is_empty() {
                bail!("{}: give at least one tag pattern", field("match"));
            }
            for p in &t.patterns {
                TagPattern::parse(p).map_err(|e| anyhow::anyhow!("{}: {e}", field("match")))?;
            }
            if !self.stores.contains_key(&t.store) {
                bail!(
                    "{}: no store named `{}` (known: {})",
                    field("store"),
                    t.store,
                    self.stores.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            KeyTemplate::parse(&t.key).map_err(|e| anyhow::anyhow!("{}: {e}", field("key")))?;
            let codec = self.buffer.compression;
            if let Some(named) = Codec::of_key(&t.key).filter(|c| *c != codec) {
                bail!(
                    "{}: `{}` ends like a {} object, but `buffer.compression` is {}: end it in \
                     `{}` (the loaders and Redshift's COPY tell an object's compression by it)",
                    field("key"),
                    t.key,
                    named.name(),
                    codec.name(),
                    codec.extension()
                );
            }
            if t.time_precision > 9 {
                bail!("{}: must be 0..=9", field("time_precision"));
            }
        }
        if !self.fallback.is_empty() && !names.contains(self.fallback.as_str()) {
            bail!("field `fallback`: no target named `{}`", self.fallback);
        }
        self.forward.validate()?;
        self.http.validate()?;
        for (field, cap, enabled) in [
            (
                "forward.max_decompressed_bytes",
                self.forward.max_decompressed_bytes,
                self.forward.enabled,
            ),
            (
                "http.max_decompressed_bytes",
                self.http.max_decompressed_bytes,
                self.http.enabled,
            ),
        ] {
            if enabled && cap.0 > self.decompress_memory.0 {
                bail!(
                    "field `{field}`: {} bytes is more than `decompress_memory` ({} bytes), so \
                     such a payload could never be taken: lower it, or raise decompress_memory",
                    cap.0,
                    self.decompress_memory.0
                );
            }
        }
        self.buffer.validate()?;
        if self.ship.concurrency == 0 {
            bail!("field `ship.concurrency`: at least 1");
        }
        for (name, store) in &self.stores {
            let field = format!("stores.{name}.notify");
            match (store, store.notify()) {
                (_, NotifyConfig::Off) => {}
                (StoreConfig::Local { .. }, NotifyConfig::Local) => {
                    if !self.embedded_load() {
                        bail!(
                            "field `{field}`: `local` needs `embedded_load: true` (serve's \
                             embedded loader is what consumes the local queue)"
                        );
                    }
                }
                (StoreConfig::Local { .. }, NotifyConfig::Sqs(_)) => bail!(
                    "field `{field}`: a local store can only notify `local` (the embedded loader \
                     reads its folder; `rin-ship import` reads S3)"
                ),
                (StoreConfig::S3(_), NotifyConfig::Local) => bail!(
                    "field `{field}`: `local` is for local stores; an S3 store notifies an \
                     SQS queue: {{sqs_queue_url: ...}}"
                ),
                (StoreConfig::S3(_), NotifyConfig::Sqs(n)) => n.validate(&field)?,
            }
            if let StoreConfig::S3(s3) = store {
                s3.validate(name)?;
            }
        }
        if self.embedded_load() {
            let loads = self.targets.iter().any(|t| {
                matches!(&self.stores[&t.store], StoreConfig::Local { notify, .. }
                    if notify.as_ref() == Some(&NotifyConfig::Local))
            });
            if !loads {
                bail!(
                    "field `embedded_load`: no target ships to a local store that notifies \
                     `local`, so the embedded warehouse would stay empty"
                );
            }
        }
        Ok(())
    }
}

/// serde's type errors in words a config file's author uses: `invalid type: string "many",
/// expected usize` becomes `"many" is not a whole number: write one, e.g. 1024`.
fn plain_type_error(msg: &str) -> String {
    let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    else {
        return msg.to_string();
    };
    let Some((got, expected)) = rest.split_once(", expected ") else {
        return msg.to_string();
    };
    let got = got
        .strip_prefix("string ")
        .or_else(|| got.strip_prefix("integer "))
        .or_else(|| got.strip_prefix("floating point "))
        .unwrap_or(got);
    let want = match expected.trim() {
        "usize" | "u64" | "u32" | "u16" | "u8" => {
            "is not a whole number (0 or more): write one, e.g. 1024"
        }
        "i64" | "i32" | "isize" => "is not a whole number: write one, e.g. 10",
        "a boolean" => "is not true or false",
        "f64" | "f32" => "is not a number: write one, e.g. 0.5",
        "a string" => "is not text: quote it, e.g. \"value\"",
        _ => return msg.to_string(),
    };
    format!("{got} {want}")
}

/// `buffer.seal_age` without a config file (see [`Config::embedded`]).
pub const EMBEDDED_SEAL_AGE: Duration = Duration::from_secs(5);

/// Expands `${VAR}` and `${VAR:-default}` in every string value; `$${` is a literal `${`.
/// A missing variable is an error naming the field and the variable, never its neighbours'
/// values (they may be secrets).
pub fn expand_env(value: &mut serde_norway::Value, path: &mut String) -> Result<()> {
    use serde_norway::Value;
    match value {
        Value::String(s) if s.contains('$') => {
            *s = expand_str(s, &|name| std::env::var(name).ok())
                .map_err(|e| anyhow::anyhow!("field `{path}`: {e}"))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(item, path)?;
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.as_str().unwrap_or("?"));
                expand_env(v, path)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| "unclosed `${` (write `$${` for a literal)".to_string())?;
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{inner}}}` is not a valid variable reference"));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable `{name}` is not set"));
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("s3cr3t".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_references() {
        assert_eq!(expand_str("a${KEY}b", &env).unwrap(), "as3cr3tb");
        assert_eq!(expand_str("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("$${KEY} $5", &env).unwrap(), "${KEY} $5");
        let err = expand_str("${NOPE}", &env).unwrap_err();
        assert!(err.contains("NOPE"), "{err}");
        assert!(expand_str("${KEY", &env).is_err());
    }

    #[test]
    fn empty_file_is_defaults() {
        let mut c = Config::parse("").unwrap();
        c.fill_defaults();
        c.validate().unwrap();
        assert_eq!(c.targets[0].name, "default");
        assert_eq!(c.forward.bind.port(), 24224);
    }

    #[test]
    fn errors_name_the_field() {
        let err = Config::parse("buffer:\n  seal_bytes: 12 parsecs\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("buffer.seal_bytes"), "{msg}");
        let err = Config::parse("targets:\n  - name: a\n    colour: red\n").unwrap_err();
        assert!(format!("{err:#}").contains("colour"), "{err:#}");
    }

    #[test]
    fn type_errors_say_what_to_write() {
        let msg = format!(
            "{:#}",
            Config::parse("forward:\n  max_connections: many\n").unwrap_err()
        );
        assert!(
            msg.contains("forward.max_connections")
                && msg.contains("\"many\" is not a whole number"),
            "{msg}"
        );
        let msg = format!(
            "{:#}",
            Config::parse("http:\n  enabled: maybe\n").unwrap_err()
        );
        assert!(msg.contains("is not true or false"), "{msg}");
        let msg = format!(
            "{:#}",
            Config::parse("forward:\n  bind: 24224\n").unwrap_err()
        );
        assert!(
            msg.contains("forward.bind") && msg.contains("127.0.0.1:24224"),
            "{msg}"
        );
        let c = Config::parse("forward:\n  bind: localhost:24224\n").unwrap();
        assert!(c.forward.bind.ip().is_loopback());
    }

    #[test]
    fn a_frame_cap_above_the_decompression_budget_is_refused() {
        let e = err("decompress_memory: 64MiB\nforward:\n  max_decompressed_bytes: 128MiB\n");
        assert!(
            e.contains("forward.max_decompressed_bytes") && e.contains("decompress_memory"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_target_field() {
        let mut c = Config::parse("targets:\n  - name: a\n    store: nowhere\n").unwrap();
        c.fill_defaults();
        let msg = format!("{:#}", c.validate().unwrap_err());
        assert!(msg.contains("targets[0].store"), "{msg}");
        let mut c = Config::parse("targets:\n  - name: a\n    key: 'x/{tag}.gz'\n").unwrap();
        c.fill_defaults();
        let msg = format!("{:#}", c.validate().unwrap_err());
        assert!(
            msg.contains("targets[0].key") && msg.contains("{seq}"),
            "{msg}"
        );
    }

    fn checked(yaml: &str) -> Result<Config> {
        let mut c = Config::parse(yaml)?;
        c.fill_defaults();
        c.validate()?;
        Ok(c)
    }

    fn err(yaml: &str) -> String {
        format!("{:#}", checked(yaml).unwrap_err())
    }

    const S3: &str = "stores:\n  s3:\n    type: s3\n    bucket: b\n";

    #[test]
    fn notify_settings() {
        // With a file, embedded_load is off and nothing notifies by default.
        let c = checked("").unwrap();
        assert!(!c.embedded_load() && !c.uses_local_queue());
        // embedded_load: the local store notifies the local queue.
        let c = checked("embedded_load: true\n").unwrap();
        assert_eq!(c.stores["local"].notify(), &NotifyConfig::Local);
        assert!(c.uses_local_queue());
        let c = checked(&format!(
            "{S3}    notify: {{sqs_queue_url: 'http://127.0.0.1:5000/123/q', region: eu-west-1}}\n"
        ))
        .unwrap();
        let NotifyConfig::Sqs(n) = c.stores["s3"].notify() else {
            panic!("not sqs")
        };
        assert_eq!(n.region.as_deref(), Some("eu-west-1"));
        assert!(
            err("stores: {s3: {type: s3, bucket: b, notify: local}}\n")
                .contains("stores.s3.notify")
        );
        assert!(
            err("embedded_load: false\nstores: {local: {type: local, dir: x, notify: local}}\n")
                .contains("embedded_load: true")
        );
        let e = err(&format!("{S3}    notify: {{sqs_queue_url: q}}\n"));
        assert!(e.contains("stores.s3.notify.sqs_queue_url"), "{e}");
        let e = err(&format!(
            "{S3}    notify: {{sqs_queue_url: 'https://q', colour: red}}\n"
        ));
        assert!(
            e.contains("stores.s3`: notify:") && e.contains("colour"),
            "{e}"
        );
        let e = err(&format!("{S3}    notify: sqs\n"));
        assert!(
            e.contains("stores.s3`: notify:") && e.contains("`sqs`"),
            "{e}"
        );
        let e = err(&format!(
            "embedded_load: true\n{S3}targets: [{{name: a, match: ['**'], store: s3}}]\n"
        ));
        assert!(
            e.contains("embedded_load") && e.contains("local store"),
            "{e}"
        );
    }

    #[test]
    fn embedded_defaults_and_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = Config::embedded(&env(&[])).unwrap();
        assert_eq!(c.embedded_load, Some(true));
        assert_eq!(c.buffer.seal_age.0, EMBEDDED_SEAL_AGE);
        assert_eq!(c.forward.bind.port(), 24224);
        let c = Config::embedded(&env(&[
            ("RIN_SHIP_FORWARD_BIND", "127.0.0.1:1"),
            ("RIN_SHIP_HTTP_BIND", "127.0.0.1:2"),
            ("RIN_SHIP_METRICS_BIND", "127.0.0.1:3"),
            ("RIN_SHIP_SEAL_AGE", "1s"),
        ]))
        .unwrap();
        assert_eq!(
            (
                c.forward.bind.port(),
                c.http.bind.port(),
                c.metrics.bind.port()
            ),
            (1, 2, 3)
        );
        assert_eq!(c.buffer.seal_age.0, Duration::from_secs(1));
        let e = Config::embedded(&env(&[("RIN_SHIP_HTTP_BIND", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("RIN_SHIP_HTTP_BIND"), "{e}");
    }

    #[test]
    fn derived_config_routes_keys() {
        let mut c = Config::parse(
            "embedded_load: true\ndata_dir: /tmp/x\nstores: {other: {type: local, dir: /tmp/o}}\n\
             targets:\n  - {name: a, match: ['a.**'], store: other, key: 'flat/{seq}.gz'}\n  - {name: b, match: ['**']}\n",
        )
        .unwrap();
        c.fill_defaults();
        c.validate().unwrap();
        let cfg = crate::load::embedded::rin_config(&c.embedded_setup()).unwrap();
        assert_eq!(cfg.targets.len(), 2);
        assert_eq!(cfg.targets[0].driver, crate::load::rin::DriverKind::Sqlite);
        assert_eq!(cfg.targets[0].redshift.dbname, "/tmp/x/warehouse.db");
        let load = |bucket: &str, key: &str| cfg.route(bucket, key).unwrap();
        assert_eq!(
            load("other", "flat/0000000001.gz"),
            crate::load::rin::MatchOutcome::Load(vec![crate::load::rin::Destination {
                target: 0,
                schema: String::new(),
                table: "a".into()
            }])
        );
        assert_eq!(
            load(
                "local",
                "logs/x.y-z/dt=2024-05-01/hour=12/n-0000000001.json.gz"
            ),
            crate::load::rin::MatchOutcome::Load(vec![crate::load::rin::Destination {
                target: 1,
                schema: String::new(),
                table: "x.y-z".into()
            }])
        );
        assert_eq!(
            load("local", "flat/0000000001.gz"),
            crate::load::rin::MatchOutcome::NoTarget
        );
        // A name only SQLite's own tables may have is refused, not loaded.
        assert!(
            cfg.route(
                "local",
                "logs/sqlite_master/dt=2024-05-01/hour=12/n-0000000001.json.gz"
            )
            .is_err()
        );
    }

    #[test]
    fn default_key_maps_tag_to_table() {
        let (re, by_tag) = crate::ship::key::KeyTemplate::parse(DEFAULT_KEY)
            .unwrap()
            .regex("default");
        assert!(by_tag);
        let r = regex::Regex::new(&re).unwrap();
        let key = "logs/app.web/dt=2026-11-23/hour=09/myhost-1a2b3c4d-0000000001.json.gz";
        assert_eq!(&r.captures(key).unwrap()[1], "app.web");
        assert!(!r.is_match("logs/app.web/x/../y.json.gz"));
    }
}
