//! `rin-ship sync`'s YAML (`sync.yaml`): the source database, the warehouse (Rin's `redshift:`
//! keys, so a Rin user writes what they know), the store the objects go through (serve's
//! `stores:` shape), the schedule, and per table its key, watermark, filter, target and insert
//! mode. `${VAR}` and `${VAR:-default}` are expanded in every string, as in serve's config.
//!
//! The loader never sees this file: [`SyncConfig::rin_config`] derives the Rin config of the
//! load half (one target per table, routed by the table's key prefix), so the objects a pass
//! writes load through the same ledger, drivers and insert modes as shipped logs.
//!
//! Must never: accept a table, column or filter that could reach SQL unquoted other than the
//! documented `where:` (the operator's own SQL, run on their own source); print a password.

use crate::common::units::Span;
use crate::load::rin::{InsertMode, RinConfig, is_identifier};
use crate::store::config::StoreConfig;
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub source: SourceConfig,
    /// `type` (redshift, postgres, sqlite), then Rin's `redshift:` keys (host, port, dbname,
    /// user, password, schema; `driver: redshift-data` for the Data API; `dbname` is the file
    /// for sqlite), and `sslmode` (disable, prefer, require).
    pub warehouse: serde_json::Value,
    /// Where the pass's objects are written before they load (serve's store shape).
    pub store: StoreConfig,
    /// Time between the starts of two passes of the daemon (`--once` runs one); default 1h.
    #[serde(default)]
    pub every: Option<Span>,
    /// Instead of `every`: a cron expression (five fields, minute hour day-of-month month
    /// day-of-week, in the machine's local time zone, `TZ`): a pass starts at each match.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The objects' compression: gzip or zstd.
    #[serde(default)]
    pub compression: Compression,
    /// Rows per object (each object is one COPY input; a pass writes as many as it needs).
    #[serde(default = "default_rows_per_object")]
    pub rows_per_object: u64,
    /// Key prefix of the objects (`<prefix><target>/pass=<n>/<seq>.json.gz`) and of the
    /// watermark state (`<prefix>_state/<target>.json`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Default re-read window of incremental passes (see [`TableConfig::overlap`]).
    #[serde(default = "default_overlap")]
    pub overlap: Span,
    /// What a source column the target lacks does: `report` (log and count) or `evolve`
    /// (add it to the target, type mapped).
    #[serde(default)]
    pub schema: SchemaMode,
    /// Where the objects' rows load through (the ledger table), as Rin's `rin_ship.ledger_table`.
    #[serde(default)]
    pub ledger_table: Option<String>,
    /// `host:port` of /metrics, /healthz and /readyz (default: none).
    #[serde(default)]
    pub metrics_bind: Option<String>,
    /// After a round in which a table's pass loaded at least this many rows, that table gets a
    /// maintenance round (`VACUUM`/`ANALYZE` as its statistics call for; PostgreSQL and
    /// Redshift). 0: never.
    #[serde(default = "default_maintain_after_rows")]
    pub maintain_after_rows: u64,
    /// The thresholds of that round: Rin's `rin_ship.maintenance` keys (see `rin-ship
    /// maintain`); default: its defaults.
    #[serde(default)]
    pub maintenance: Option<serde_json::Value>,
    pub tables: Vec<TableConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `mysql://user:pass@host:port/db` (MySQL, Aurora MySQL, MariaDB) or
    /// `postgres://user:pass@host:port/db`.
    pub url: String,
    /// TLS to the source: `prefer` (when the server offers it), `require`, or `disable`.
    #[serde(default)]
    pub tls: Tls,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    Disable,
    #[default]
    Prefer,
    Require,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    #[default]
    Report,
    Evolve,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The source table (`table`, or `db.table` / `schema.table`).
    pub name: String,
    /// The warehouse table (`table` or `schema.table`); default: the source table's name.
    #[serde(default)]
    pub target: Option<String>,
    /// The columns that identify a row; default: the source's primary key.
    #[serde(default)]
    pub key: Vec<String>,
    /// A column that only grows when a row changes (`updated_at`, or an increasing id). Without
    /// one every pass is a full snapshot.
    #[serde(default)]
    pub watermark: Option<String>,
    /// How far before the last watermark an incremental pass reads again: a transaction can
    /// commit after rows with a later watermark were read. A duration for time columns, a
    /// number for integer ones (default: the top-level `overlap`, or 0 for integers).
    #[serde(default)]
    pub overlap: Option<serde_norway::Value>,
    /// An extra SQL condition on the source (`deleted_at IS NULL`), ANDed to the watermark's.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// `OVERWRITE_EXISTING` (default: rows matched on the key are replaced), `KEEP_EXISTING`,
    /// `APPEND` or `TRUNCATE` (every pass replaces the table; only with no watermark).
    #[serde(default)]
    pub mode: Option<InsertMode>,
    /// Delete the warehouse rows whose key is gone from the source (the key reconciliation,
    /// `sync::reconcile`), every `reconcile_every`. PostgreSQL and SQLite warehouses.
    #[serde(default)]
    pub delete_missing: bool,
    /// How often the reconciliation reads every key of the source table (default 24h).
    #[serde(default)]
    pub reconcile_every: Option<Span>,
}

/// When the daemon starts its passes.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Each pass starts this long after the previous one started (at once if it took longer).
    Every(Duration),
    /// Each pass starts at the next time the expression matches after the previous one ended
    /// (a pass longer than the interval skips the matches it overran, never runs twice at once).
    Cron(Box<croner::Cron>, String),
}

impl Schedule {
    /// How long to wait, after a pass that started at `started`, before the next.
    pub fn wait_after(&self, started: std::time::Instant) -> Duration {
        match self {
            Schedule::Every(every) => every.saturating_sub(started.elapsed()),
            Schedule::Cron(cron, _) => {
                let now = chrono::Local::now();
                match cron.find_next_occurrence(&now, false) {
                    Ok(next) => (next - now).to_std().unwrap_or_default(),
                    // No later match (an expression for a date past): wait a day, then look again.
                    Err(_) => Duration::from_secs(86_400),
                }
            }
        }
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Every(every) => format!("every {}", humantime::format_duration(*every)),
            Schedule::Cron(_, text) => format!("on the cron schedule {text:?} (local time)"),
        }
    }
}

const DEFAULT_EVERY: Duration = Duration::from_secs(3600);
fn default_maintain_after_rows() -> u64 {
    100_000
}
fn default_rows_per_object() -> u64 {
    500_000
}
fn default_prefix() -> String {
    "sync/".to_string()
}
fn default_overlap() -> Span {
    Span(Duration::from_secs(300))
}

/// How far back an incremental pass of one table reads again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Overlap {
    Time(Duration),
    Count(i64),
}

impl TableConfig {
    /// The target table's (schema, table); schema empty: the warehouse section's.
    pub fn target(&self) -> (String, String) {
        let t = self.target.as_deref().unwrap_or(&self.name);
        match t.split_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => (String::new(), t.to_string()),
        }
    }

    /// The target as written in keys and logs (`schema.table` or `table`).
    pub fn target_name(&self) -> String {
        match self.target() {
            (s, t) if s.is_empty() => t,
            (s, t) => format!("{s}.{t}"),
        }
    }

    pub fn mode(&self) -> InsertMode {
        self.mode.unwrap_or(InsertMode::OverwriteExisting)
    }

    /// The overlap for a watermark column of `time` kind (else a count of ids).
    pub fn overlap(&self, default: Duration, time: bool) -> Result<Overlap> {
        use serde_norway::Value;
        let name = &self.name;
        Ok(match (&self.overlap, time) {
            (None, true) => Overlap::Time(default),
            (None, false) => Overlap::Count(0),
            (Some(Value::String(s)), true) => Overlap::Time(
                crate::common::units::parse_duration(s)
                    .map_err(|e| anyhow!("table {name}: overlap: {e}"))?,
            ),
            (Some(Value::Number(n)), false) if n.as_i64().is_some_and(|n| n >= 0) => {
                Overlap::Count(n.as_i64().unwrap_or_default())
            }
            (Some(v), true) => bail!(
                "table {name}: overlap {v:?}: the watermark is a time column, so the overlap is \
                 a duration (e.g. 5m)"
            ),
            (Some(v), false) => bail!(
                "table {name}: overlap {v:?}: the watermark is a number column, so the overlap \
                 is a whole number of ids (e.g. 1000)"
            ),
        })
    }
}

impl SyncConfig {
    pub fn load(path: &Path) -> Result<SyncConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sync config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("sync config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<SyncConfig> {
        let mut doc: serde_norway::Value = serde_norway::from_str(text)?;
        crate::config::expand_env(&mut doc, &mut String::new())?;
        let cfg: SyncConfig = serde_path_to_error::deserialize(doc)
            .map_err(|e| anyhow!("{}: {}", e.path(), e.inner()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The daemon's schedule: `schedule` (cron) or `every` (default 1h); refused when both.
    pub fn schedule(&self) -> Result<Schedule> {
        match (&self.schedule, self.every) {
            (Some(_), Some(_)) => bail!(
                "schedule and every are both set: keep one (schedule: a cron expression such \
                 as \"0 3 * * *\"; every: an interval such as 1h)"
            ),
            (Some(text), None) => {
                let cron = text.parse::<croner::Cron>().map_err(|e| {
                    anyhow!(
                        "schedule {text:?}: {e} (expected five fields: minute hour \
                         day-of-month month day-of-week, e.g. \"0 3 * * *\" for 03:00 every day, \
                         \"*/15 * * * *\" for every 15 minutes)"
                    )
                })?;
                Ok(Schedule::Cron(Box::new(cron), text.clone()))
            }
            (None, every) => {
                let every = every.map_or(DEFAULT_EVERY, |s| s.0);
                if every.is_zero() {
                    bail!("every: 0s would run passes back to back; write e.g. 1h");
                }
                Ok(Schedule::Every(every))
            }
        }
    }

    fn validate(&self) -> Result<()> {
        self.schedule()?;
        if !(self.source.url.starts_with("mysql://") || self.source.url.starts_with("postgres")) {
            bail!(
                "source.url: expected mysql://user:password@host:port/db or \
                 postgres://user:password@host:port/db"
            );
        }
        if self.tables.is_empty() {
            bail!("tables: name at least one table to sync");
        }
        if self.rows_per_object == 0 {
            bail!("rows_per_object: 0 rows per object; write e.g. 500000");
        }
        let redshift = matches!(
            self.warehouse.get("type").and_then(|t| t.as_str()),
            None | Some("redshift")
        );
        for t in self.tables.iter().filter(|t| t.delete_missing) {
            if redshift {
                bail!(
                    "table {}: delete_missing is not available on Redshift yet (the keys would \
                     have to reach it through S3); use the soft-delete pattern of docs/sync.md",
                    t.name
                );
            }
            if self.announced_on().is_some() {
                bail!(
                    "table {}: delete_missing needs the pass loaded before the keys are \
                     compared, and with store.notify the importer loads it later",
                    t.name
                );
            }
        }
        if matches!(
            self.store.notify(),
            crate::store::config::NotifyConfig::Local
        ) {
            bail!(
                "store.notify: local is serve's embedded queue; sync loads its objects itself, \
                 or announces them on SQS for `rin-ship import` (notify: {{sqs_queue_url: ...}})"
            );
        }
        if !self.warehouse.is_object() {
            bail!("warehouse: expected Rin's `redshift:` keys (driver, host, dbname, ...)");
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tables {
            let parts = t.name.split('.').collect::<Vec<_>>();
            if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
                bail!("tables: name {:?} is not `table` or `schema.table`", t.name);
            }
            let (s, tt) = t.target();
            if !(s.is_empty() || is_identifier(&s)) || !is_identifier(&tt) {
                bail!(
                    "table {}: target {:?} is not `table` or `schema.table`",
                    t.name,
                    t.target
                );
            }
            if !seen.insert(t.target_name()) {
                bail!(
                    "table {}: target {} is the target of another table too",
                    t.name,
                    t.target_name()
                );
            }
            for c in t.key.iter().chain(&t.watermark) {
                if !is_identifier(c) {
                    bail!("table {}: column {c:?} is not a plain identifier", t.name);
                }
            }
            match t.mode() {
                InsertMode::Truncate if t.watermark.is_some() => bail!(
                    "table {}: mode TRUNCATE empties the table every pass, so an incremental \
                     (watermark) pass would lose the rows it does not read again",
                    t.name
                ),
                _ => {}
            }
        }
        Ok(())
    }

    /// The store's bucket as the loader names it: the S3 bucket, or `sync` for a folder.
    pub fn bucket(&self) -> String {
        match &self.store {
            StoreConfig::S3(s3) => s3.bucket.clone(),
            StoreConfig::Local { .. } => LOCAL_STORE.to_string(),
        }
    }

    /// The prefix of the objects of `table` (below the store's own prefix).
    pub fn table_prefix(&self, table: &TableConfig) -> String {
        format!("{}{}/", self.prefix, table.target_name())
    }

    /// The store's own key prefix (S3 `prefix:`), before [`Self::table_prefix`].
    pub fn store_prefix(&self) -> &str {
        match &self.store {
            StoreConfig::S3(s3) => &s3.prefix,
            StoreConfig::Local { .. } => "",
        }
    }

    /// The Rin config of the load half: one target per table, `key_prefix` its objects'
    /// prefix, the table's insert mode on its key. `keys[i]` is table i's key (resolved from
    /// the source when the file names none).
    pub fn rin_config(&self, keys: &[Vec<String>], order: &[Option<String>]) -> Result<RinConfig> {
        let doc = self.rin_document(keys, order)?;
        RinConfig::parse(&doc.to_string(), &|_| None).context("the load half of the sync config")
    }

    /// [`Self::rin_config`] as the Rin config file it is: what `rin-ship import` reads when
    /// the objects are announced on SQS (`store.notify`) instead of loaded by sync itself.
    pub fn rin_document(
        &self,
        keys: &[Vec<String>],
        order: &[Option<String>],
    ) -> Result<serde_json::Value> {
        let mut warehouse = self.warehouse.clone();
        let obj = warehouse
            .as_object_mut()
            .ok_or_else(|| anyhow!("warehouse: expected a mapping"))?;
        let sslmode = obj.remove("sslmode");
        let mut ext = serde_json::json!({});
        match obj.remove("type").as_ref().and_then(|t| t.as_str()) {
            None | Some("redshift") => {}
            Some("postgres" | "postgresql") => ext["warehouse"] = "postgres".into(),
            Some("sqlite") => {
                obj.insert("driver".into(), "sqlite".into());
            }
            Some(other) => bail!(
                "warehouse.type {other:?}: expected redshift (the default), postgres or sqlite"
            ),
        }
        if let Some(m) = sslmode {
            ext["sslmode"] = m;
        }
        if let Some(l) = &self.ledger_table {
            ext["ledger_table"] = l.clone().into();
        }
        if let Some(m) = &self.maintenance {
            ext["maintenance"] = m.clone();
        }
        let mut credentials = serde_json::json!({});
        if let StoreConfig::S3(s3) = &self.store {
            if let Some(e) = &s3.endpoint {
                ext["s3_endpoint"] = e.clone().into();
            }
            ext["force_path_style"] = s3.force_path_style.into();
            if let Some(r) = &s3.region {
                credentials["aws_region"] = r.clone().into();
            }
            if let (Some(id), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) {
                credentials["aws_access_key_id"] = id.clone().into();
                credentials["aws_secret_access_key"] = secret.expose().into();
            }
        }
        let bucket = self.bucket();
        // Redshift's COPY reads pipe-delimited text unless told otherwise: the objects are
        // NDJSON whose keys are the source's column names (Redshift folds unquoted names to
        // lower case, so matched ignoring case), with the source's time formats (`auto` takes
        // both MySQL's `YYYY-MM-DD HH:MM:SS` and PostgreSQL's ISO `T` form), compressed as
        // configured. The PostgreSQL and SQLite loaders read the objects by their own magic
        // bytes and ignore this.
        let sql_option = format!(
            "JSON 'auto ignorecase' TIMEFORMAT 'auto' {}",
            match self.compression {
                Compression::Gzip => "GZIP",
                Compression::Zstd => "ZSTD",
            }
        );
        let region = match &self.store {
            StoreConfig::S3(s3) => s3.region.clone(),
            StoreConfig::Local { .. } => None,
        };
        let targets: Vec<serde_json::Value> = self
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (schema, table) = t.target();
                let mut redshift = serde_json::json!({"table": table});
                if !schema.is_empty() {
                    redshift["schema"] = schema.into();
                }
                let mut s3 = serde_json::json!({
                    "bucket": bucket,
                    "key_prefix": format!("{}{}", self.store_prefix(), self.table_prefix(t)),
                });
                if let Some(r) = &region {
                    s3["region"] = r.clone().into();
                }
                let mut target = serde_json::json!({
                    "s3": s3,
                    "redshift": redshift,
                    "sql_option": sql_option,
                    "insert_mode": t.mode().name(),
                    "break": true,
                });
                if t.mode().keyed() {
                    target["key_columns"] = keys[i].clone().into();
                }
                if let Some(o) = &order[i] {
                    target["order_column"] = o.clone().into();
                }
                target
            })
            .collect();
        let mut doc = serde_json::json!({
            "credentials": credentials,
            "redshift": warehouse,
            "targets": targets,
            "rin_ship": ext,
        });
        if let Some(n) = self.announced_on() {
            // The queue the objects are announced on, as `rin-ship import` names it.
            let name = n.sqs_queue_url.rsplit('/').next().unwrap_or_default();
            doc["queue_name"] = name.into();
            let endpoint = n.endpoint.clone().or_else(|| {
                let url = &n.sqs_queue_url;
                let host_end = url
                    .find("://")
                    .map(|i| i + 3)
                    .and_then(|s| url[s..].find('/').map(|e| s + e))?;
                (!url.contains(".amazonaws.com")).then(|| url[..host_end].to_string())
            });
            if let Some(e) = endpoint {
                doc["rin_ship"]["sqs_endpoint"] = e.into();
            }
            if let Some(r) = &n.region {
                doc["credentials"]["aws_region"] = r.clone().into();
            }
        }
        Ok(doc)
    }

    /// The SQS queue the pass's objects are announced on (`store.notify`), for a separate
    /// `rin-ship import` to load; `None`: sync loads them itself.
    pub fn announced_on(&self) -> Option<&crate::store::config::SqsNotifyConfig> {
        match self.store.notify() {
            crate::store::config::NotifyConfig::Sqs(n) => Some(n),
            _ => None,
        }
    }
}

/// The bucket name a folder store gets in the loader's view (its events and ledger rows).
pub const LOCAL_STORE: &str = "sync";

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
source: {url: "mysql://sync:${SYNC_TEST_PW:-pw}@127.0.0.1:33306/app"}
warehouse: {type: postgres, host: 127.0.0.1, port: 5432, dbname: dw, user: u, schema: public}
store: {type: local, dir: /tmp/x}
tables:
  - {name: users, watermark: updated_at}
  - {name: app.orders, target: sales.orders, key: [id], mode: KEEP_EXISTING}
"#;

    #[test]
    fn parses_and_derives_the_load_half() {
        let c = SyncConfig::parse(CONFIG).unwrap();
        assert_eq!(c.source.url, "mysql://sync:pw@127.0.0.1:33306/app");
        assert_eq!(c.tables[0].target_name(), "users");
        assert_eq!(c.tables[1].target(), ("sales".into(), "orders".into()));
        assert_eq!(c.tables[0].mode(), InsertMode::OverwriteExisting);
        let rin = c
            .rin_config(&[vec!["id".into()], vec!["id".into()]], &[None, None])
            .unwrap();
        assert_eq!(rin.targets.len(), 2);
        assert_eq!(rin.targets[1].insert_mode, InsertMode::KeepExisting);
        assert_eq!(rin.targets[0].key_columns, vec!["id".to_string()]);
        let crate::load::rin::MatchOutcome::Load(d) = rin
            .route("sync", "sync/sales.orders/pass=00000001/000000.json.gz")
            .unwrap()
        else {
            panic!("no route");
        };
        assert_eq!(
            (d[0].schema.as_str(), d[0].table.as_str()),
            ("sales", "orders")
        );
    }

    /// The statements a Redshift load of one pass's objects runs (inside the ledger's
    /// transaction), for the keyed default and for APPEND: what the sync config derives.
    #[test]
    fn redshift_copy_of_a_pass_golden() {
        use crate::load::warehouse::redshift::sql::{LoadPlan, load_statements};
        let config = r#"
source: {url: "mysql://sync:pw@127.0.0.1:3306/app"}
warehouse: {host: example.redshift.amazonaws.com, port: 5439, dbname: dw, user: u, password: p}
store: {type: s3, bucket: dw-sync, prefix: "dw/", region: ap-northeast-1,
        access_key_id: AKIDEXAMPLE, secret_access_key: SECRETEXAMPLE}
tables:
  - {name: app.users, target: public.users, watermark: updated_at}
  - {name: app.events, target: public.events, mode: APPEND, watermark: id}
"#;
        let gzip = SyncConfig::parse(config).unwrap();
        let mut zstd = SyncConfig::parse(config).unwrap();
        zstd.compression = Compression::Zstd;
        let manifest = "s3://dw-sync/rin-ship/manifests/m.manifest";
        // The statements that load object `object` of table `t` under config `c`.
        let statements = |c: &SyncConfig, t: usize, object: &str| {
            let rin = c
                .rin_config(
                    &[vec!["id".into()], vec![]],
                    &[Some("updated_at".into()), Some("id".into())],
                )
                .unwrap();
            let key = format!(
                "{}{}{object}",
                c.store_prefix(),
                c.table_prefix(&c.tables[t])
            );
            let crate::load::rin::MatchOutcome::Load(d) = rin.route("dw-sync", &key).unwrap()
            else {
                panic!("no route for {key}");
            };
            let table = d[0].qualified();
            let plan = LoadPlan::new(&rin, &rin.targets[d[0].target], &table, manifest);
            load_statements(&plan, true)
        };
        assert_eq!(gzip.table_prefix(&gzip.tables[0]), "sync/public.users/");
        let copy_stage = "/* rin-ship */ COPY rin_ship_stage FROM 's3://dw-sync/rin-ship/manifests/m.manifest' CREDENTIALS 'aws_access_key_id=AKIDEXAMPLE;aws_secret_access_key=****' MANIFEST REGION 'ap-northeast-1' JSON 'auto ignorecase' TIMEFORMAT 'auto' GZIP";
        assert_eq!(
            statements(&gzip, 0, "pass=00000002/000000.json.gz"),
            vec![
                "CREATE TEMP TABLE rin_ship_stage (LIKE \"public\".\"users\" INCLUDING DEFAULTS)",
                copy_stage,
                "DELETE FROM \"public\".\"users\" USING rin_ship_stage WHERE \"public\".\"users\".\"id\" = rin_ship_stage.\"id\"",
                "INSERT INTO \"public\".\"users\" SELECT s.* FROM rin_ship_stage s QUALIFY ROW_NUMBER() OVER (PARTITION BY s.\"id\" ORDER BY s.\"updated_at\" DESC NULLS LAST) = 1 OR s.\"id\" IS NULL",
                "DROP TABLE rin_ship_stage",
            ]
        );
        // APPEND of zstd objects: the COPY straight into the table, with ZSTD.
        assert_eq!(
            statements(&zstd, 1, "pass=00000001/000003.json.zst"),
            vec![
                "/* rin-ship */ COPY \"public\".\"events\" FROM 's3://dw-sync/rin-ship/manifests/m.manifest' CREDENTIALS 'aws_access_key_id=AKIDEXAMPLE;aws_secret_access_key=****' MANIFEST REGION 'ap-northeast-1' JSON 'auto ignorecase' TIMEFORMAT 'auto' ZSTD"
            ]
        );
    }

    #[test]
    fn the_schedule_is_every_or_a_cron_expression() {
        let c = SyncConfig::parse(CONFIG).unwrap();
        assert!(matches!(c.schedule().unwrap(), Schedule::Every(d) if d == DEFAULT_EVERY));
        let with = |line: &str| SyncConfig::parse(&format!("{line}\n{CONFIG}"));
        let c = with("schedule: \"*/15 * * * *\"").unwrap();
        let wait = c.schedule().unwrap().wait_after(std::time::Instant::now());
        assert!(wait <= Duration::from_secs(15 * 60), "{wait:?}");
        assert!(with("every: 10m").unwrap().schedule().unwrap().describe() == "every 10m");
        let e = format!("{:#}", with("schedule: \"61 * * * *\"").unwrap_err());
        assert!(
            e.contains("schedule \"61 * * * *\"") && e.contains("0 3 * * *"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            with("every: 1h\nschedule: \"0 3 * * *\"").unwrap_err()
        );
        assert!(e.contains("keep one"), "{e}");
    }

    #[test]
    fn refuses_what_would_lose_rows() {
        let bad = CONFIG.replace("mode: KEEP_EXISTING", "mode: TRUNCATE, watermark: id");
        let e = SyncConfig::parse(&bad).unwrap_err();
        assert!(format!("{e:#}").contains("TRUNCATE"), "{e:#}");
        let bad = CONFIG.replace("name: users,", "name: \"users; drop\",");
        assert!(SyncConfig::parse(&bad).is_err());
    }

    #[test]
    fn overlap_follows_the_watermark_kind() {
        let c = SyncConfig::parse(CONFIG).unwrap();
        let d = Duration::from_secs(300);
        assert_eq!(c.tables[0].overlap(d, true).unwrap(), Overlap::Time(d));
        assert_eq!(c.tables[0].overlap(d, false).unwrap(), Overlap::Count(0));
        let t: TableConfig = serde_norway::from_str("{name: t, overlap: 10m}").unwrap();
        assert!(t.overlap(d, false).is_err());
        assert_eq!(
            t.overlap(d, true).unwrap(),
            Overlap::Time(Duration::from_secs(600))
        );
    }
}
