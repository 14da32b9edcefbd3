//! What a backfill loads: the objects under a prefix, listed with ListObjectVersions (so that
//! on a versioned bucket the ledger key carries the version id a live event's does;
//! ListObjectsV2 where that call is not allowed), inside the LastModified window.

use super::BackfillArgs;
use super::progress::Progress;
use crate::queue::event::ObjectEvent;
use anyhow::{Result, anyhow};
use aws_sdk_s3::error::DisplayErrorContext;
use chrono::{DateTime, Utc};
use std::sync::atomic::Ordering;
use tracing::warn;

/// One object the listing found (the version that is current now).
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub etag: String,
    pub version_id: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

impl Listed {
    pub fn event(&self, bucket: &str) -> ObjectEvent {
        ObjectEvent {
            bucket: bucket.to_string(),
            key: self.key.clone(),
            etag: self.etag.clone(),
            version_id: self.version_id.clone(),
            size: self.size,
            event_name: "rin-ship:Backfill".to_string(),
            created: true,
        }
    }
}

#[derive(Debug, Default)]
pub struct Listing {
    /// Every object under the prefix.
    pub listed: u64,
    /// Left out by --since / --until.
    pub outside_window: u64,
    /// Zero-byte keys ending in `/` (console "folders").
    pub folders: u64,
    pub selected: Vec<Listed>,
}

fn when(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

fn in_window(args: &BackfillArgs, modified: Option<DateTime<Utc>>) -> bool {
    match modified {
        Some(m) => args.since.is_none_or(|s| m >= s) && args.until.is_none_or(|u| m < u),
        // No LastModified (never from S3): only an unbounded window takes it.
        None => args.since.is_none() && args.until.is_none(),
    }
}

/// Lists the objects under `bucket/prefix` in key order, keeping those in the window.
///
/// ListObjectVersions first: its current versions carry the version id a live event has on a
/// versioned bucket (and `null`, read as none, elsewhere), so the ledger key is the same.
/// Without `s3:ListBucketVersions` (or on a server without that call), ListObjectsV2: right
/// for an unversioned bucket, while on a versioned one objects loaded from events would load
/// again (warned).
pub async fn list(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    args: &BackfillArgs,
    progress: &Progress,
) -> Result<Listing> {
    let all = match list_versions(s3, bucket, prefix, progress).await {
        Ok(all) => all,
        Err((true, e)) => {
            warn!(
                "{e:#}; listing with ListObjectsV2 instead: objects get no version id, so on a \
                 versioned bucket the ones loaded from events (which carry one) would load again \
                 (grant s3:ListBucketVersions to avoid that)"
            );
            progress.listed.store(0, Ordering::Relaxed);
            list_current(s3, bucket, prefix, progress).await?
        }
        Err((false, e)) => return Err(e),
    };
    let mut out = Listing::default();
    for l in all {
        out.listed += 1;
        if l.size == 0 && l.key.ends_with('/') {
            out.folders += 1;
        } else if !in_window(args, l.modified) {
            out.outside_window += 1;
        } else {
            out.selected.push(l);
        }
    }
    Ok(out)
}

/// The current version of every object (ListObjectVersions); the error says whether it came
/// on the first page.
async fn list_versions(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    progress: &Progress,
) -> Result<Vec<Listed>, (bool, anyhow::Error)> {
    let mut out = Vec::new();
    // No paginator in the SDK for this one: KeyMarker / VersionIdMarker by hand.
    let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
    let mut first = true;
    loop {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .map_err(|e| {
                let e = anyhow!(
                    "ListObjectVersions s3://{bucket}/{prefix}: {}",
                    DisplayErrorContext(&e)
                );
                (first, e)
            })?;
        first = false;
        for v in page.versions() {
            if v.is_latest() != Some(true) {
                continue;
            }
            let version_id = match v.version_id() {
                // Written while versioning was off (or suspended): events carry no version id.
                None | Some("null") => String::new(),
                Some(id) => id.to_string(),
            };
            progress.listed.fetch_add(1, Ordering::Relaxed);
            out.push(Listed {
                key: v.key().unwrap_or_default().to_string(),
                etag: v.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                version_id,
                size: v.size().unwrap_or(0).max(0) as u64,
                modified: v.last_modified().and_then(when),
            });
        }
        if page.is_truncated() != Some(true) || page.next_key_marker().is_none() {
            return Ok(out);
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
    }
}

/// Every object, without version ids (ListObjectsV2).
async fn list_current(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    progress: &Progress,
) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            anyhow!(
                "ListObjectsV2 s3://{bucket}/{prefix}: {}",
                DisplayErrorContext(&e)
            )
        })?;
        for o in page.contents() {
            progress.listed.fetch_add(1, Ordering::Relaxed);
            out.push(Listed {
                key: o.key().unwrap_or_default().to_string(),
                etag: o.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                version_id: String::new(),
                size: o.size().unwrap_or(0).max(0) as u64,
                modified: o.last_modified().and_then(when),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::backfill::parse_time;

    #[test]
    fn window() {
        let t = |s| parse_time(s).unwrap();
        let mut a = BackfillArgs {
            config: String::new(),
            prefix: String::new(),
            since: Some(t("2024-05-01")),
            until: Some(t("2024-05-02")),
            batch_objects: 10,
            dry_run: false,
        };
        assert!(in_window(&a, Some(t("2024-05-01"))));
        assert!(in_window(&a, Some(t("2024-05-01T23:59:59Z"))));
        assert!(!in_window(&a, Some(t("2024-05-02"))));
        assert!(!in_window(&a, Some(t("2024-04-30T23:59:59Z"))));
        assert!(!in_window(&a, None));
        a.since = None;
        a.until = None;
        assert!(in_window(&a, None));
    }
}
