//! The shipper's own object-created notifications, for buckets without S3 event notifications
//! and for the embedded pipeline: after a store confirmed an object, and before its chunk is
//! deleted, an S3-event-shaped message ([`super::event::object_created`]) goes to the local
//! queue or to an SQS queue.
//!
//! A crash between the upload and the delete re-uploads the chunk to the same key and sends
//! the event again; the importer's ledger makes that second event a duplicate (same bucket, key
//! and ETag). Must never: report a notification as sent before the queue accepted it.

use super::event;
use super::local::LocalQueue;
use crate::store::Stored;
use crate::store::config::{NotifyConfig, StoreConfig};
use anyhow::{Result, anyhow};

pub enum Notifier {
    Local(LocalQueue),
    #[cfg(feature = "sqs")]
    Sqs {
        queue: super::sqs::Queue,
        /// The `awsRegion` of the events sent.
        region: String,
    },
}

impl Notifier {
    /// The notifier of a store, if it has one. `local` is the queue serve opened.
    pub async fn for_store(
        store: &StoreConfig,
        local: Option<&LocalQueue>,
    ) -> Result<Option<Notifier>> {
        Ok(match store.notify() {
            NotifyConfig::Off => None,
            NotifyConfig::Local => {
                Some(Notifier::Local(local.cloned().ok_or_else(|| {
                    anyhow!("notify: local, but the local queue is not open")
                })?))
            }
            #[cfg(feature = "sqs")]
            NotifyConfig::Sqs(n) => Some(sqs_notifier(store, n).await),
            #[cfg(not(feature = "sqs"))]
            NotifyConfig::Sqs(_) => anyhow::bail!("this rin-ship was built without `sqs`"),
        })
    }

    /// Sends the event; `Ok` only once the queue accepted it.
    pub async fn send(&self, obj: &Stored, size: u64) -> Result<()> {
        match self {
            Notifier::Local(q) => {
                q.enqueue(event::object_created(obj, size, "")).await?;
                Ok(())
            }
            #[cfg(feature = "sqs")]
            Notifier::Sqs { queue, region } => {
                queue.send(event::object_created(obj, size, region)).await
            }
        }
    }

    /// The folder of the local queue (where a full disk would be).
    pub fn local_dir(&self) -> Option<&std::path::Path> {
        match self {
            Notifier::Local(q) => Some(q.dir()),
            #[cfg(feature = "sqs")]
            Notifier::Sqs { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Notifier::Local(q) => q.describe(),
            #[cfg(feature = "sqs")]
            Notifier::Sqs { queue, .. } => format!("SQS {}", queue.url),
        }
    }
}

/// The SQS notifier of a store: the notification's own region and keys, else the store's
/// (same account), else the AWS chain; the endpoint from the queue URL unless it is AWS's.
#[cfg(feature = "sqs")]
async fn sqs_notifier(store: &StoreConfig, n: &crate::store::config::SqsNotifyConfig) -> Notifier {
    use crate::store::config::static_keys;
    let s3 = match store {
        StoreConfig::S3(s3) => Some(s3),
        StoreConfig::Local { .. } => None,
    };
    let (url_endpoint, url_region) = super::sqs::queue_endpoint(&n.sqs_queue_url);
    let region = n
        .region
        .clone()
        .or(url_region)
        .or_else(|| s3.and_then(|s| s.region.clone()));
    let endpoint = n.endpoint.clone().or(url_endpoint);
    let keys =
        static_keys(&n.access_key_id, &n.secret_access_key, &n.session_token).or_else(|| {
            s3.and_then(|s| static_keys(&s.access_key_id, &s.secret_access_key, &s.session_token))
        });
    let settings = crate::common::aws::AwsSettings {
        region: region.clone(),
        keys,
        max_attempts: Some(s3.map_or(4, |s| s.max_attempts.max(1))),
    };
    let shared = crate::common::aws::sdk_config(&settings).await;
    let client = crate::common::aws::sqs_client(&shared, endpoint.as_deref());
    Notifier::Sqs {
        queue: super::sqs::Queue {
            client,
            url: n.sqs_queue_url.clone(),
        },
        region: region.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::event::{Parsed, parse_body};

    #[tokio::test]
    async fn local_notifier_enqueues_a_parseable_event() {
        let d = tempfile::tempdir().unwrap();
        let q = LocalQueue::open(d.path()).unwrap();
        let n = Notifier::Local(q.clone());
        let obj = Stored {
            bucket: "local".into(),
            key: "logs/t/x.json.gz".into(),
            etag: "e".into(),
            event_name: "ObjectCreated:Put",
        };
        n.send(&obj, 7).await.unwrap();
        let m = q
            .receive(std::time::Duration::ZERO, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let Parsed::Objects(o) = parse_body(&m[0].body).unwrap() else {
            panic!()
        };
        assert_eq!(
            (o[0].bucket.as_str(), o[0].key.as_str()),
            ("local", obj.key.as_str())
        );
    }
}
