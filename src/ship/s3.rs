//! The S3 object store (aws-sdk-s3): Amazon S3 or any S3-compatible server. Objects up to
//! `multipart_threshold` go up in one PutObject, larger ones as multipart uploads; every
//! request carries a CRC-32 checksum the server verifies. It must never log credentials.

use super::Stored;
use crate::config::S3Config;
use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use std::path::Path;

const CONTENT_TYPE: &str = "application/gzip";

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    multipart_threshold: u64,
    part_size: u64,
}

impl S3Store {
    pub async fn new(cfg: &S3Config) -> Result<S3Store> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(cfg.max_attempts.max(1)),
        );
        if let Some(region) = &cfg.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.expose().to_string(),
                cfg.session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "rin-ship-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        if shared.region().is_none() && cfg.region.is_none() {
            // S3-compatible servers rarely care; AWS itself needs one, and says so.
            builder = builder.region(aws_config::Region::new("us-east-1"));
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            endpoint: cfg.endpoint.clone(),
            multipart_threshold: cfg.multipart_threshold.0,
            part_size: cfg.part_size.0,
        })
    }

    pub fn describe(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("s3://{}/{} at {e}", self.bucket, self.prefix),
            None => format!("s3://{}/{}", self.bucket, self.prefix),
        }
    }

    /// Uploads the file as `<prefix><key>`; returns the object's bucket, full key and ETag
    /// (from the PutObject or CompleteMultipartUpload answer, without quotes).
    pub async fn put(&self, key: &str, path: &Path, size: u64) -> Result<Stored> {
        let key = format!("{}{key}", self.prefix);
        if size < self.multipart_threshold {
            let body = ByteStream::from_path(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            let out = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type(CONTENT_TYPE)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "PutObject s3://{}/{key}: {}",
                        self.bucket,
                        DisplayErrorContext(&e)
                    )
                })?;
            return Ok(Stored {
                bucket: self.bucket.clone(),
                etag: unquote(out.e_tag()),
                key,
                event_name: "ObjectCreated:Put",
            });
        }
        let etag = self.put_multipart(&key, path, size).await?;
        Ok(Stored {
            bucket: self.bucket.clone(),
            key,
            etag,
            event_name: "ObjectCreated:CompleteMultipartUpload",
        })
    }

    async fn put_multipart(&self, key: &str, path: &Path, size: u64) -> Result<String> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(CONTENT_TYPE)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "CreateMultipartUpload s3://{}/{key}: {}",
                    self.bucket,
                    DisplayErrorContext(&e)
                )
            })?;
        let upload_id = upload
            .upload_id()
            .context("CreateMultipartUpload returned no upload id")?
            .to_string();
        let result = self.upload_parts(key, path, size, &upload_id).await;
        if result.is_err() {
            // Best effort: a leftover upload only costs storage until a lifecycle rule ends it.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        upload_id: &str,
    ) -> Result<String> {
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut number = 1i32;
        while offset < size {
            let len = self.part_size.min(size - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .with_context(|| format!("cannot read {}", path.display()))?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "UploadPart {number} of s3://{}/{key}: {}",
                        self.bucket,
                        DisplayErrorContext(&e)
                    )
                })?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .set_checksum_crc32(part.checksum_crc32().map(str::to_string))
                    .build(),
            );
            offset += len;
            number += 1;
        }
        let done = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "CompleteMultipartUpload s3://{}/{key}: {}",
                    self.bucket,
                    DisplayErrorContext(&e)
                )
            })?;
        Ok(unquote(done.e_tag()))
    }
}

/// An ETag as S3 events carry it: without the quotes of the HTTP header. Empty when the
/// server sent none (the importer then asks with HeadObject).
fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or("").trim_matches('"').to_string()
}
