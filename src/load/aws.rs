//! AWS clients for the COPY stage (S3 for reading objects and writing manifests, SQS for the
//! queue), built from Rin's `credentials` section (or the default credential chain) and
//! rin-ship's endpoint overrides. Never logs credentials.

use super::rin::RinConfig;

async fn shared(c: &RinConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let region = [
        &c.credentials.aws_region,
        &c.targets
            .first()
            .map(|t| t.s3.region.clone())
            .unwrap_or_default(),
    ]
    .into_iter()
    .find(|r| !r.is_empty())
    .cloned();
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r));
    }
    let cr = &c.credentials;
    if !cr.aws_access_key_id.is_empty() && !cr.aws_secret_access_key.is_empty() {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            cr.aws_access_key_id.clone(),
            cr.aws_secret_access_key.clone(),
            (!cr.aws_session_token.is_empty()).then(|| cr.aws_session_token.clone()),
            None,
            "rin-config",
        ));
    }
    let cfg = loader.load().await;
    if cfg.region().is_none() {
        return cfg
            .into_builder()
            .region(aws_config::Region::new("us-east-1"))
            .build();
    }
    cfg
}

pub async fn s3_client(c: &RinConfig) -> aws_sdk_s3::Client {
    let shared = shared(c).await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared).force_path_style(c.ext.force_path_style);
    if !c.ext.s3_endpoint.is_empty() {
        b = b.endpoint_url(&c.ext.s3_endpoint);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

pub async fn sqs_client(c: &RinConfig) -> aws_sdk_sqs::Client {
    let shared = shared(c).await;
    let mut b = aws_sdk_sqs::config::Builder::from(&shared);
    if !c.ext.sqs_endpoint.is_empty() {
        b = b.endpoint_url(&c.ext.sqs_endpoint);
    }
    aws_sdk_sqs::Client::from_conf(b.build())
}
