//! S3 (aws-sdk-s3) as an object store: Amazon S3 or any S3-compatible server. The shipper
//! writes with [`S3Store::put`]: objects up to `multipart_threshold` go up in one PutObject,
//! larger ones as multipart uploads, every request with a CRC-32 checksum the server verifies.
//! The importer reads exactly the version an event named, from any bucket, and writes its
//! manifests and quarantine records ([`Buckets`]).
//!
//! Must never: log credentials; hand back the bytes of another version than asked for (a
//! missing key, version or ETag is [`Fetched::Gone`]).

use super::config::S3Config;
use super::{Body, Fetched, ObjectRef, Stored};
use crate::common::codec::Codec;
use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use std::path::Path;

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
        let shared = crate::common::aws::sdk_config(&cfg.aws_settings()).await;
        let client =
            crate::common::aws::s3_client(&shared, cfg.endpoint.as_deref(), cfg.force_path_style);
        Ok(S3Store {
            client,
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
    pub async fn put(&self, key: &str, path: &Path, size: u64, codec: Codec) -> Result<Stored> {
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
                .content_type(codec.content_type())
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
        let etag = self.put_multipart(&key, path, size, codec).await?;
        Ok(Stored {
            bucket: self.bucket.clone(),
            key,
            etag,
            event_name: "ObjectCreated:CompleteMultipartUpload",
        })
    }

    async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        codec: Codec,
    ) -> Result<String> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(codec.content_type())
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

/// Objects in any bucket one client reaches, as the importer reads them.
#[derive(Debug, Clone)]
pub struct Buckets(pub Client);

impl Buckets {
    /// The object's current ETag (without quotes), or `None` when it no longer exists.
    pub async fn etag(&self, bucket: &str, key: &str) -> Result<Option<String>> {
        match self.0.head_object().bucket(bucket).key(key).send().await {
            Ok(o) => Ok(Some(unquote(o.e_tag()))),
            Err(e) => {
                if matches!(e.code(), Some("NotFound" | "NoSuchKey"))
                    || e.raw_response().map(|r| r.status().as_u16()) == Some(404)
                {
                    Ok(None)
                } else {
                    Err(anyhow!(
                        "HeadObject s3://{bucket}/{key}: {}",
                        DisplayErrorContext(&e)
                    ))
                }
            }
        }
    }

    /// Opens exactly the version the event named (by version id, else by ETag).
    pub async fn open(&self, obj: ObjectRef<'_>) -> Result<Fetched> {
        let mut req = self.0.get_object().bucket(obj.bucket).key(obj.key);
        if !obj.version_id.is_empty() {
            req = req.version_id(obj.version_id);
        } else if !obj.etag.is_empty() {
            req = req.if_match(format!("\"{}\"", obj.etag));
        }
        match req.send().await {
            Ok(o) => Ok(Fetched::Body(Box::new(o.body.into_async_read()) as Body)),
            Err(e) => {
                let code = e.code().unwrap_or("");
                if matches!(code, "NoSuchKey" | "PreconditionFailed" | "NoSuchVersion") {
                    Ok(Fetched::Gone)
                } else {
                    Err(anyhow!(
                        "GetObject s3://{}/{}: {}",
                        obj.bucket,
                        obj.key,
                        DisplayErrorContext(&e)
                    ))
                }
            }
        }
    }

    /// Writes a small JSON object (a COPY manifest, a quarantine record).
    pub async fn put_small(&self, bucket: &str, key: &str, body: String) -> Result<()> {
        self.0
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .body(body.into_bytes().into())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| anyhow!("PutObject s3://{bucket}/{key}: {}", DisplayErrorContext(&e)))
    }
}
