//! Queues of object-created notifications, between the producers (the shipper's own
//! notifications, S3 event notifications, table sync) and the loader: SQS (or an SQS-compatible
//! server) and the embedded local queue under `<data_dir>/queue/`. The message format is
//! [`event`]; the producer side is [`notify`]; the consumer side is [`Queue`], whose
//! [`Message`] is the shape the loader sees, so loading never depends on where a message came
//! from (SQS, a Lambda event, the local queue).
//!
//! Must never: delete a message except when the consumer asks; report a message sent before the
//! queue accepted it.

pub mod event;
pub mod local;
pub mod notify;
#[cfg(feature = "sqs")]
pub mod sqs;

use anyhow::Result;

/// One received notification.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub id: String,
    pub body: String,
    /// What deletes it or extends its visibility.
    pub receipt: String,
    /// How many times it was delivered (SQS `ApproximateReceiveCount`); 0 when unknown.
    pub receive_count: i64,
}

#[derive(Clone)]
pub enum Queue {
    #[cfg(feature = "sqs")]
    Sqs(sqs::Queue),
    /// `rin-ship serve`'s embedded queue (`<data_dir>/queue/`).
    Local(local::LocalQueue),
}

impl Queue {
    /// Waits up to `wait_s` for up to 10 messages, invisible to others for `visibility_s`.
    pub async fn receive(&self, wait_s: i32, visibility_s: i32) -> Result<Vec<Message>> {
        match self {
            #[cfg(feature = "sqs")]
            Queue::Sqs(q) => Ok(q
                .receive(wait_s, visibility_s)
                .await?
                .into_iter()
                .map(|m| Message {
                    receive_count: sqs::receive_count(&m),
                    id: m.message_id.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receipt: m.receipt_handle.unwrap_or_default(),
                })
                .collect()),
            Queue::Local(q) => Ok(q
                .receive(secs(wait_s), secs(visibility_s))
                .await?
                .into_iter()
                .map(|m| Message {
                    id: m.id,
                    body: m.body,
                    receipt: m.receipt,
                    receive_count: m.receive_count,
                })
                .collect()),
        }
    }

    pub async fn extend(&self, receipts: &[String], visibility_s: i32) {
        match self {
            #[cfg(feature = "sqs")]
            Queue::Sqs(q) => q.extend(receipts, visibility_s).await,
            Queue::Local(q) => q.extend(receipts, secs(visibility_s)),
        }
    }

    /// Deletes the given messages; returns how many the queue confirmed.
    pub async fn delete(&self, receipts: &[String]) -> usize {
        match self {
            #[cfg(feature = "sqs")]
            Queue::Sqs(q) => q.delete(receipts).await,
            Queue::Local(q) => q.delete(receipts).await,
        }
    }

    #[cfg(feature = "sqs")]
    pub fn describe(&self) -> String {
        match self {
            #[cfg(feature = "sqs")]
            Queue::Sqs(q) => q.url.clone(),
            Queue::Local(q) => q.describe(),
        }
    }
}

fn secs(s: i32) -> std::time::Duration {
    std::time::Duration::from_secs(s.max(0) as u64)
}
