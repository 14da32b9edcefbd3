//! The acks a forward connection owes, in frame order. Owns the queue of pending acks and
//! writing them (msgpack or JSON, as the client frames). It must never write an ack whose
//! events are not durable: such a frame gets no ack and its connection is closed, so the client
//! resends now rather than at its ack timeout.

use super::ingest::PendingAck;
use super::{frame, json};
use crate::buffer::StoreError;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Frames a connection may have waiting for their ack before it stops reading more.
pub const MAX_PENDING_ACKS: usize = 64;

#[derive(Default)]
pub struct OwedAcks {
    pending: FuturesOrdered<PendingAck>,
}

impl OwedAcks {
    pub fn push(&mut self, ack: PendingAck) {
        self.pending.push_back(ack);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// At `MAX_PENDING_ACKS` the connection reads no more frames until an ack is answered.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= MAX_PENDING_ACKS
    }

    /// The oldest ack, once it resolves (acks go out in frame order).
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, StoreError>> {
        self.pending.next().await
    }

    /// Writes every ack still owed, stopping at the first that cannot be written.
    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, writer: &mut W, json: bool) {
        while let Some(ack) = self.next().await {
            if write_ack(writer, ack, json).await.is_err() {
                break;
            }
        }
    }
}

/// Writes one resolved ack. `Err`: why the connection must close (not durable, or the write
/// failed).
pub async fn write_ack<W: AsyncWrite + Unpin>(
    writer: &mut W,
    ack: Result<Vec<u8>, StoreError>,
    json: bool,
) -> Result<(), String> {
    match ack {
        Ok(chunk) => {
            let msg = if json {
                json::ack_message(&chunk)
            } else {
                frame::ack_message(&chunk)
            };
            writer
                .write_all(&msg)
                .await
                .map_err(|e| format!("cannot send ack: {e}"))
        }
        // Not durable: no ack. Closing makes the client resend now rather than at its timeout.
        Err(e) => Err(format!("events not stored, no ack sent: {e}")),
    }
}
