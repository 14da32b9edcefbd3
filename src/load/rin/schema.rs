//! The Rin config file's shape: Rin's own keys (`queue_name`, `credentials`, `redshift`, `s3`,
//! `sql_option`, `targets`) exactly as Rin reads them, plus rin-ship's under `rin_ship:` (which
//! Rin itself would ignore). Only the shape and the defaults live here; the merge of the
//! top-level sections into each target and its checks are in [`super::targets`].
//!
//! Rin's sections take unknown keys, as Rin (Go's yaml.v2) ignores them; [`super::RinConfig::parse`]
//! names each one in a warning. `rin_ship:` stays strict: its keys are rin-ship's own, and a
//! misspelt one there would silently change where or how data loads.
//!
//! Must never: print a secret (`Debug` of [`Credentials`] and [`Redshift`] masks them).

use serde::Deserialize;
use std::fmt;

/// A Rin config file plus rin-ship's extension keys.
#[derive(Debug, Clone, Deserialize, Default)]
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
    /// rin-ship: default of the targets' `schema`.
    #[serde(default)]
    pub schema: Option<SchemaPolicy>,
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    #[serde(default)]
    pub rin_ship: Extension,
}

#[derive(Clone, Deserialize, Default)]
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
        let place = if self.workgroup.is_empty() {
            format!("cluster({})", self.cluster)
        } else {
            format!("workgroup({})", self.workgroup)
        };
        // Postgres and Redshift look alike here: the dialect does not change the address.
        match DriverKind::from_rin(&self.driver, Warehouse::Redshift) {
            Some(DriverKind::Sqlite) => format!("sqlite:{}", self.dbname),
            Some(DriverKind::RedshiftData) => {
                let who = if self.secret_arn.is_empty() {
                    self.user.clone()
                } else {
                    "secret".to_string()
                };
                format!("redshift-data://{who}@{place}/{}", self.dbname)
            }
            _ if self.iam_auth => format!(
                "{}:(iam {place})@{}:{}/{}",
                self.user, self.host, self.port, self.dbname
            ),
            _ => format!(
                "{}:****@{}:{}/{}",
                self.user, self.host, self.port, self.dbname
            ),
        }
    }

    /// The same connection for every table: what a loader keeps one session of.
    pub fn without_table(&self) -> Redshift {
        Redshift {
            schema: String::new(),
            table: String::new(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
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
    /// rin-ship: what a record key with no column does (default: the top-level one, else
    /// `report`).
    #[serde(default)]
    pub schema: Option<SchemaPolicy>,
}

/// What a record key that no column of the target takes does (PostgreSQL targets; the
/// embedded SQLite warehouse always adds the column).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SchemaPolicy {
    /// Left out of the row (or into `catch_all_column` when set), counted and logged.
    #[default]
    Report,
    /// The column is added (`ALTER TABLE ... ADD COLUMN`, its type from the values), and the
    /// load runs again with it.
    Evolve,
    /// The object is refused as a data error (quarantined after its retries).
    Strict,
}

impl SchemaPolicy {
    pub fn name(self) -> &'static str {
        match self {
            SchemaPolicy::Report => "report",
            SchemaPolicy::Evolve => "evolve",
            SchemaPolicy::Strict => "strict",
        }
    }
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

/// Which warehouse driver a connection uses (`load::warehouse` has one folder per kind).
/// Resolved once, at load, from Rin's `redshift.driver` and `rin_ship.warehouse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriverKind {
    /// PostgreSQL over the wire protocol (rin-ship reads the objects and streams them in).
    Postgres,
    /// Amazon Redshift over the wire protocol (the cluster reads S3 itself).
    Redshift,
    /// The Redshift Data API (`driver: redshift-data`).
    RedshiftData,
    /// The embedded SQLite warehouse (`driver: sqlite`, `dbname`: the file).
    Sqlite,
}

impl DriverKind {
    /// Rin's `redshift.driver` (`postgres`, the wire protocol, is Rin's default) with the
    /// dialect `rin_ship.warehouse` names; `None` for an unknown driver.
    pub fn from_rin(driver: &str, warehouse: Warehouse) -> Option<DriverKind> {
        Some(match driver {
            "" | "postgres" => match warehouse {
                Warehouse::Redshift => DriverKind::Redshift,
                Warehouse::Postgres => DriverKind::Postgres,
            },
            "redshift-data" => DriverKind::RedshiftData,
            "sqlite" => DriverKind::Sqlite,
            _ => return None,
        })
    }

    /// Whether a table name may be a tag (`"app.web"`), not only a plain identifier.
    pub fn takes_tag_names(self) -> bool {
        self == DriverKind::Sqlite
    }
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
    pub maintenance: super::maintenance::Maintenance,
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
