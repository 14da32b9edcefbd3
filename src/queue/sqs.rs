//! SQS: the importer resolves the queue, long-polls up to 10 messages, keeps them invisible
//! while they load and deletes them (in batches) only after their load committed; the shipper
//! sends its object-created events ([`Queue::send`]).

use anyhow::{Result, anyhow};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use tracing::warn;

#[derive(Clone)]
pub struct Queue {
    pub client: Client,
    pub url: String,
}

impl Queue {
    /// `name_or_url` is a queue URL (`http(s)://...`) or a name resolved with GetQueueUrl.
    pub async fn open(client: Client, name_or_url: &str) -> Result<Queue> {
        let url = if name_or_url.starts_with("https://") || name_or_url.starts_with("http://") {
            name_or_url.to_string()
        } else {
            client
                .get_queue_url()
                .queue_name(name_or_url)
                .send()
                .await
                .map_err(|e| anyhow!("GetQueueUrl {name_or_url}: {}", DisplayErrorContext(&e)))?
                .queue_url
                .ok_or_else(|| anyhow!("GetQueueUrl {name_or_url}: no URL"))?
        };
        Ok(Queue { client, url })
    }

    /// Sends one message; `Ok` once SQS accepted it.
    pub async fn send(&self, body: String) -> Result<()> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| anyhow!("SendMessage to {}: {}", self.url, DisplayErrorContext(&e)))?;
        Ok(())
    }

    pub async fn receive(&self, wait_s: i32, visibility_s: i32) -> Result<Vec<Message>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait_s)
            .visibility_timeout(visibility_s)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| anyhow!("ReceiveMessage: {}", DisplayErrorContext(&e)))?;
        Ok(out.messages.unwrap_or_default())
    }

    pub async fn extend(&self, handles: &[String], visibility_s: i32) {
        for chunk in handles.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .visibility_timeout(visibility_s)
                        .build()
                        .ok()
                })
                .collect();
            if let Err(e) = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                warn!("ChangeMessageVisibilityBatch: {}", DisplayErrorContext(&e));
            }
        }
    }

    /// The queue's approximate depth (visible, in flight) for the importer's readiness and
    /// `rin_import_queue_messages`. `Ok(None)`: SQS answered, but not with the numbers (the
    /// role may lack `sqs:GetQueueAttributes`): reachable, depth unknown. `Err`: not reached,
    /// or the queue does not exist.
    pub async fn depth(&self) -> Result<Option<(u64, u64)>> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await;
        let attrs = match out {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) => {
                let gone = e
                    .as_service_error()
                    .is_some_and(|se| se.is_queue_does_not_exist());
                if e.as_service_error().is_some() && !gone {
                    return Ok(None);
                }
                return Err(anyhow!(
                    "GetQueueAttributes {}: {}",
                    self.url,
                    DisplayErrorContext(&e)
                ));
            }
        };
        let n = |a: A| attrs.get(&a).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some((
            n(A::ApproximateNumberOfMessages),
            n(A::ApproximateNumberOfMessagesNotVisible),
        )))
    }

    /// Deletes the given receipt handles; returns how many SQS confirmed.
    pub async fn delete(&self, handles: &[String]) -> usize {
        let mut ok = 0;
        for chunk in handles.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .build()
                        .ok()
                })
                .collect();
            match self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    ok += out.successful.len();
                    for f in out.failed {
                        warn!(id = f.id, code = f.code, "DeleteMessageBatch entry failed");
                    }
                }
                Err(e) => warn!("DeleteMessageBatch: {}", DisplayErrorContext(&e)),
            }
        }
        ok
    }
}

/// What a queue URL says about where to send: AWS's own (`https://sqs.<region>.amazonaws.com/..`,
/// `https://<region>.queue.amazonaws.com/..`) gives its region and leaves the endpoint to the
/// SDK; any other server (moto, LocalStack, ElasticMQ) is the endpoint itself.
pub fn queue_endpoint(url: &str) -> (Option<String>, Option<String>) {
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

pub fn receive_count(m: &Message) -> i64 {
    m.attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
