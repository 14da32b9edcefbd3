//! One forward frame through the neutral ingest: parse it with the forward frame code, refuse
//! what forward does not carry here (metrics, traces), route its tag, claim its `chunk` id,
//! transcode its entries and submit them. It must never hand back an ack that resolves before
//! the frame's events are durable, and never store part of a frame.

use super::frame::{self, FrameError, Limits};
use crate::buffer::{Source, StoreError};
use crate::intake::decompress::{BUDGET, BUSY_WAIT};
use crate::intake::{Ingest, IngestError, Intake};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

/// Resolves, once the frame's events are durable, to the chunk id the ack echoes; an error
/// means no ack may be sent.
pub type PendingAck = Pin<Box<dyn Future<Output = Result<Vec<u8>, StoreError>> + Send>>;

impl From<FrameError> for IngestError {
    fn from(e: FrameError) -> IngestError {
        IngestError::Refused {
            reason: e.reason,
            detail: e.detail,
        }
    }
}

/// Takes one frame (msgpack). `Ok(Some(ack))`: the frame asked for an ack; `Ok(None)`: it did
/// not (or it was a heartbeat). An error refuses the frame: nothing of it is stored.
pub async fn ingest_frame(
    ingest: &Ingest,
    limits: &Limits,
    bytes: &[u8],
    source: &Source,
) -> Result<Option<PendingAck>, IngestError> {
    let Some(frame) = frame::parse(bytes)? else {
        return Ok(None);
    };
    if frame.options.signal != 0 {
        return Err(FrameError::new(
            "signal",
            format!(
                "fluent_signal {} (metrics or traces) is not accepted here; send only logs",
                frame.options.signal
            ),
        )
        .into());
    }
    let route = ingest.route(frame.tag)?;
    let chunk_id = frame.options.chunk.map(<[u8]>::to_vec);
    let claim = match &chunk_id {
        None => None,
        Some(id) => match ingest.claim(id).await {
            Some(guard) => Some(guard),
            None => {
                metrics::counter!("rin_forward_resends_deduplicated_total").increment(1);
                return Ok(Some(acked_now(id.clone())));
            }
        },
    };
    let target = ingest.target(route.target);
    // JSON runs a little larger than msgpack; the vector grows if it must.
    let mut lines = Vec::with_capacity(bytes.len() + bytes.len() / 4 + 256);
    let mut times = target.format.renderer();
    // A compressed frame that finds the decompression budget spent waits its turn, briefly.
    let result = BUDGET
        .when_room(
            BUSY_WAIT,
            |e: &FrameError| e.reason == "busy",
            || {
                lines.clear();
                std::future::ready(frame.transcode(
                    &target.format,
                    &mut times,
                    &route.tag_json,
                    limits,
                    &mut lines,
                ))
            },
        )
        .await?;
    let counters = ingest.inbound(Intake::Forward, route.target);
    counters.events.increment(result.events);
    counters.bytes.increment(bytes.len() as u64);
    let Some(first_time) = result.first_time else {
        // Nothing to store (only group markers): the ack is true at once.
        if let Some(claim) = claim {
            claim.finish(true);
        }
        return Ok(chunk_id.map(acked_now));
    };
    let durable = ingest
        .submit_lines(&route, lines, result.events, first_time, claim, source)
        .await?;
    let Some(id) = chunk_id else {
        return Ok(None);
    };
    let started = Instant::now();
    Ok(Some(Box::pin(async move {
        durable.await?;
        metrics::histogram!("rin_ack_latency_seconds", "intake" => "forward")
            .record(started.elapsed().as_secs_f64());
        Ok(id)
    })))
}

/// An ack that is true already (the events are durable, or there were none).
fn acked_now(id: Vec<u8>) -> PendingAck {
    Box::pin(async move { Ok(id) })
}
