//! The shipper's own object-created notifications, for buckets without S3 event notifications
//! and for the embedded pipeline: after a store confirmed an object, and before its chunk is
//! deleted, an S3-event-shaped message (`{"Records":[{"eventName":"ObjectCreated:Put",...}]}`,
//! key form-URL-encoded as S3 writes it) goes to the local queue or to an SQS queue.
//!
//! A crash between the upload and the delete re-uploads the chunk to the same key and sends
//! the event again; the importer's ledger makes that second event a duplicate (same bucket, key
//! and ETag). Must never: report a notification as sent before the queue accepted it.

use crate::config::{NotifyConfig, StoreConfig};
use crate::queue_local::LocalQueue;
use anyhow::{Result, anyhow};
use serde_json::json;

/// An object a store confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The S3 bucket, or the store's name for a local store.
    pub bucket: String,
    /// The full object key (with the store's prefix).
    pub key: String,
    /// Without quotes; empty when the store gave none (the importer then asks for it).
    pub etag: String,
    /// `ObjectCreated:Put` or `ObjectCreated:CompleteMultipartUpload`.
    pub event_name: &'static str,
}

pub enum Notifier {
    Local(LocalQueue),
    #[cfg(feature = "sqs")]
    Sqs {
        client: aws_sdk_sqs::Client,
        url: String,
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
                q.enqueue(event_body(obj, size, "")).await?;
                Ok(())
            }
            #[cfg(feature = "sqs")]
            Notifier::Sqs {
                client,
                url,
                region,
            } => {
                client
                    .send_message()
                    .queue_url(url)
                    .message_body(event_body(obj, size, region))
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow!(
                            "SendMessage to {url}: {}",
                            aws_sdk_sqs::error::DisplayErrorContext(&e)
                        )
                    })?;
                Ok(())
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Notifier::Local(q) => q.describe(),
            #[cfg(feature = "sqs")]
            Notifier::Sqs { url, .. } => format!("SQS {url}"),
        }
    }
}

#[cfg(feature = "sqs")]
async fn sqs_notifier(store: &StoreConfig, n: &crate::config::SqsNotifyConfig) -> Notifier {
    let s3 = match store {
        StoreConfig::S3(s3) => Some(s3),
        StoreConfig::Local { .. } => None,
    };
    let (url_endpoint, url_region) = queue_endpoint(&n.sqs_queue_url);
    let region = n
        .region
        .clone()
        .or(url_region)
        .or_else(|| s3.and_then(|s| s.region.clone()));
    let endpoint = n.endpoint.clone().or(url_endpoint);
    // The notification's own keys, else the store's (same account), else the chain.
    let creds = match (&n.access_key_id, &n.secret_access_key) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone(), n.session_token.clone())),
        _ => s3.and_then(|s| match (&s.access_key_id, &s.secret_access_key) {
            (Some(id), Some(secret)) => Some((id.clone(), secret.clone(), s.session_token.clone())),
            _ => None,
        }),
    };
    let attempts = s3.map_or(4, |s| s.max_attempts.max(1));
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(attempts));
    if let Some(r) = &region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some((id, secret, token)) = creds {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            id,
            secret.expose().to_string(),
            token.map(|t| t.expose().to_string()),
            None,
            "rin-ship-config",
        ));
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_sqs::config::Builder::from(&shared);
    if let Some(e) = &endpoint {
        b = b.endpoint_url(e);
    }
    if shared.region().is_none() {
        b = b.region(aws_config::Region::new("us-east-1"));
    }
    Notifier::Sqs {
        client: aws_sdk_sqs::Client::from_conf(b.build()),
        url: n.sqs_queue_url.clone(),
        region: region.unwrap_or_default(),
    }
}

/// What a queue URL says about where to send: AWS's own (`https://sqs.<region>.amazonaws.com/..`,
/// `https://<region>.queue.amazonaws.com/..`) gives its region and leaves the endpoint to the
/// SDK; any other server (moto, LocalStack, ElasticMQ) is the endpoint itself.
#[cfg_attr(not(feature = "sqs"), allow(dead_code))]
fn queue_endpoint(url: &str) -> (Option<String>, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (None, None);
    };
    let host_port = rest.split('/').next().unwrap_or("");
    let host = host_port.split(':').next().unwrap_or("");
    if host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn") {
        let parts: Vec<&str> = host.split('.').collect();
        let region = match parts.as_slice() {
            ["sqs", region, ..] => Some(region.to_string()),
            [region, "queue", ..] => Some(region.to_string()),
            _ => None,
        };
        return (None, region);
    }
    (Some(format!("{scheme}://{host_port}")), None)
}

/// S3 event keys are form-URL-encoded (space `+`, `+` `%2B`, `=` `%3D`); `/` stays as is.
pub fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|seg| form_urlencoded::byte_serialize(seg.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/")
}

/// The S3 `ObjectCreated` event for one object, as S3 would put it on SQS.
pub fn event_body(obj: &Stored, size: u64, region: &str) -> String {
    let now = chrono::Utc::now();
    json!({"Records": [{
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "eventName": obj.event_name,
        "userIdentity": {"principalId": "rin-ship"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "rin-ship",
            "bucket": {
                "name": obj.bucket,
                "ownerIdentity": {"principalId": "rin-ship"},
                "arn": format!("arn:aws:s3:::{}", obj.bucket),
            },
            "object": {
                "key": encode_key(&obj.key),
                "size": size,
                "eTag": obj.etag,
                "sequencer": format!("{:016X}", now.timestamp_nanos_opt().unwrap_or(0)),
            },
        },
    }]})
    .to_string()
}

#[cfg(all(test, feature = "s3", feature = "sqs"))]
mod tests {
    use super::*;
    use crate::load::event::{Parsed, parse_body};

    #[test]
    fn the_importer_parses_our_events() {
        let obj = Stored {
            bucket: "my-logs".into(),
            key: "rin/logs/app.web/dt=2024-05-01/a b+c%/n-0000000001.json.gz".into(),
            etag: "d41d8cd98f00b204e9800998ecf8427e".into(),
            event_name: "ObjectCreated:Put",
        };
        let body = event_body(&obj, 1234, "us-east-1");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v.pointer("/Records/0/s3/object/key").unwrap(),
            "rin/logs/app.web/dt%3D2024-05-01/a+b%2Bc%25/n-0000000001.json.gz"
        );
        let Parsed::Objects(o) = parse_body(&body).unwrap() else {
            panic!("not objects")
        };
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].bucket, "my-logs");
        assert_eq!(o[0].key, obj.key);
        assert_eq!(o[0].etag, obj.etag);
        assert_eq!(o[0].size, 1234);
        assert_eq!(o[0].event_name, "ObjectCreated:Put");
        assert!(o[0].created);
        // The shape aws_lambda_events (and so Lambda-style consumers) expects.
        let ev: aws_lambda_events::s3::S3Event = serde_json::from_str(&body).unwrap();
        assert_eq!(ev.records[0].s3.object.size, Some(1234));
    }

    #[test]
    fn endpoint_from_the_queue_url() {
        assert_eq!(
            queue_endpoint("https://sqs.ap-northeast-1.amazonaws.com/123456789012/q"),
            (None, Some("ap-northeast-1".to_string()))
        );
        assert_eq!(
            queue_endpoint("https://eu-west-1.queue.amazonaws.com/123456789012/q"),
            (None, Some("eu-west-1".to_string()))
        );
        assert_eq!(
            queue_endpoint("http://127.0.0.1:5000/123456789012/q"),
            (Some("http://127.0.0.1:5000".to_string()), None)
        );
    }

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
