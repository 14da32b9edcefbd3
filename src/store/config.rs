//! The `stores:` section of serve's config: where objects go (a folder or an S3 bucket) and
//! whom a store tells about each object it confirmed (`notify`). Owns the shape and the
//! store-level checks of that section; the cross-stage checks (which notify needs which
//! loader) stay in the top-level config.

use crate::common::secret::Secret;
use crate::common::units::ByteSize;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize, Clone)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// Objects as files under a folder: the embedded default, and handy for tests.
    Local {
        dir: PathBuf,
        /// `local`: announce each object on the local queue (default with `embedded_load`).
        #[serde(default)]
        notify: Option<NotifyConfig>,
    },
    /// Amazon S3 or an S3-compatible server.
    S3(S3Config),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
// Without the `s3` feature an S3 store is validated, then refused at start.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key of this store.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub region: Option<String>,
    /// Custom endpoint for S3-compatible servers (moto, MinIO, s3s-fs...).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    #[serde(default)]
    pub force_path_style: bool,
    /// Static credentials; leave unset to use the default AWS credential chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Objects at least this large go up as multipart uploads.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: ByteSize,
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// Attempts per request inside the SDK before the shipper's own backoff takes over.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Send an S3 object-created event to an SQS queue after each confirmed upload (for
    /// buckets without S3 event notifications): `{sqs_queue_url: ...}`.
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
}

/// Where a store announces each object it confirmed, as an S3 `ObjectCreated` event
/// (`{"Records":[...]}`), before the chunk is deleted. YAML: `local`, `none`, or a mapping
/// `{sqs_queue_url: ..., endpoint: ..., region: ...}`.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifyConfig {
    /// No notification.
    Off,
    /// The embedded local queue (`<data_dir>/queue/`), consumed by `serve`'s embedded loader.
    Local,
    /// An SQS queue.
    Sqs(SqsNotifyConfig),
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SqsNotifyConfig {
    /// `https://sqs.<region>.amazonaws.com/<account>/<name>` (or an SQS-compatible server's).
    pub sqs_queue_url: String,
    /// SQS endpoint; default: the queue URL's server, unless it is AWS's own (then the
    /// region's).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Default: the one in an AWS queue URL, else the store's `region`.
    #[serde(default)]
    pub region: Option<String>,
    /// Static credentials; default: the store's, else the AWS credential chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
}

impl<'de> Deserialize<'de> for NotifyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_norway::Value;
        const EXPECTED: &str = "expected `local`, `none` or {sqs_queue_url: ...}";
        let v = Value::deserialize(d)?;
        match v {
            Value::String(s) if s == "local" => Ok(NotifyConfig::Local),
            Value::String(s) if s == "none" => Ok(NotifyConfig::Off),
            Value::Null => Ok(NotifyConfig::Off),
            // Named here: inside a store (an internally tagged enum) serde's error path
            // stops at the store.
            Value::Mapping(_) => serde_norway::from_value(v)
                .map(NotifyConfig::Sqs)
                .map_err(|e| D::Error::custom(format!("notify: {e}"))),
            Value::String(s) => Err(D::Error::custom(format!("notify: `{s}`: {EXPECTED}"))),
            _ => Err(D::Error::custom(format!("notify: {EXPECTED}"))),
        }
    }
}

fn default_multipart_threshold() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_part_size() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_max_attempts() -> u32 {
    4
}

impl StoreConfig {
    /// The store's notification (after defaults: `Off` when unset).
    pub fn notify(&self) -> &NotifyConfig {
        let n = match self {
            StoreConfig::Local { notify, .. } => notify,
            StoreConfig::S3(s3) => &s3.notify,
        };
        n.as_ref().unwrap_or(&NotifyConfig::Off)
    }
}

impl S3Config {
    /// The AWS settings of this store: its region and static keys, if given.
    #[cfg(feature = "s3")]
    pub fn aws_settings(&self) -> crate::common::aws::AwsSettings {
        crate::common::aws::AwsSettings {
            region: self.region.clone(),
            keys: static_keys(
                &self.access_key_id,
                &self.secret_access_key,
                &self.session_token,
            ),
            max_attempts: Some(self.max_attempts),
        }
    }

    /// The checks of `stores.<name>` that need only the store itself.
    pub fn validate(&self, name: &str) -> Result<()> {
        if self.bucket.is_empty() {
            bail!("field `stores.{name}.bucket`: must not be empty");
        }
        if self.part_size.0 < 5 << 20 {
            bail!("field `stores.{name}.part_size`: S3 needs parts of at least 5MiB");
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            bail!(
                "field `stores.{name}`: set both access_key_id and secret_access_key, or neither"
            );
        }
        if cfg!(not(feature = "s3")) {
            bail!("field `stores.{name}`: this rin-ship was built without the `s3` feature");
        }
        Ok(())
    }
}

impl SqsNotifyConfig {
    /// The checks of `stores.<name>.notify` (an SQS notification) alone.
    pub fn validate(&self, field: &str) -> Result<()> {
        if !(self.sqs_queue_url.starts_with("https://")
            || self.sqs_queue_url.starts_with("http://"))
        {
            bail!(
                "field `{field}.sqs_queue_url`: `{}` is not a queue URL (https://...)",
                self.sqs_queue_url
            );
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            bail!("field `{field}`: set both access_key_id and secret_access_key, or neither");
        }
        if cfg!(not(feature = "sqs")) {
            bail!("field `{field}`: this rin-ship was built without the `sqs` feature");
        }
        Ok(())
    }
}

/// Static keys when both halves are given.
#[cfg(any(feature = "s3", feature = "sqs"))]
pub fn static_keys(
    id: &Option<String>,
    secret: &Option<Secret>,
    token: &Option<Secret>,
) -> Option<crate::common::aws::StaticKeys> {
    match (id, secret) {
        (Some(id), Some(secret)) => Some(crate::common::aws::StaticKeys {
            id: id.clone(),
            secret: secret.clone(),
            session_token: token.clone(),
        }),
        _ => None,
    }
}
