//! The one AWS client factory. Every AWS client rin-ship makes (S3 for objects, manifests and
//! config files; SQS for queues and notifications; Redshift, Redshift Serverless and the Data
//! API) starts from [`sdk_config`]: the settings a config file gives win, then the SDK's own
//! chain (environment, profile, web identity, instance metadata), and `us-east-1` when no
//! region is found anywhere (S3-compatible servers rarely care; AWS itself says so if it does).
//!
//! Must never: log a credential (keys are [`Secret`]s); differ between stages in how a region
//! or a key is chosen.

use super::secret::Secret;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Static access keys from a config file.
#[derive(Debug, Clone)]
pub struct StaticKeys {
    pub id: String,
    pub secret: Secret,
    pub session_token: Option<Secret>,
}

/// What a config file says about AWS; everything left out comes from the SDK's chain.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub keys: Option<StaticKeys>,
    /// Attempts per request (the SDK's standard retry mode); `None`: the SDK's default.
    pub max_attempts: Option<u32>,
}

/// The fallback region when neither the settings nor the SDK's chain name one.
pub const DEFAULT_REGION: &str = "us-east-1";

impl AwsSettings {
    /// The first non-empty region of `candidates` (in order of preference).
    pub fn first_region<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
        candidates
            .into_iter()
            .find(|r| !r.is_empty())
            .map(str::to_string)
    }
}

/// The shared SDK configuration every client is built from.
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(n) = settings.max_attempts {
        loader = loader
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(n.max(1)));
    }
    if let Some(r) = &settings.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(k) = &settings.keys {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            k.id.clone(),
            k.secret.expose().to_string(),
            k.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "rin-ship-config",
        ));
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return shared
            .into_builder()
            .region(Region::new(DEFAULT_REGION))
            .build();
    }
    shared
}

/// An S3 client; `endpoint` selects an S3-compatible server (which usually wants
/// `force_path_style`).
#[cfg(feature = "s3")]
pub fn s3_client(
    shared: &SdkConfig,
    endpoint: Option<&str>,
    force_path_style: bool,
) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(shared).force_path_style(force_path_style);
    if let Some(e) = endpoint.filter(|e| !e.is_empty()) {
        b = b.endpoint_url(e);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// An SQS client; `endpoint` selects an SQS-compatible server.
#[cfg(feature = "sqs")]
pub fn sqs_client(shared: &SdkConfig, endpoint: Option<&str>) -> aws_sdk_sqs::Client {
    let mut b = aws_sdk_sqs::config::Builder::from(shared);
    if let Some(e) = endpoint.filter(|e| !e.is_empty()) {
        b = b.endpoint_url(e);
    }
    aws_sdk_sqs::Client::from_conf(b.build())
}
