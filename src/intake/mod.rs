//! Intake: protocol servers that accept events from clients and hand them to the buffer.
//! Owns routing of tags to targets and the ack contract shared by every protocol; it must
//! never tell a client "stored" (ack, 2xx) before the buffer made the events durable.

pub mod decompress;
pub mod forward;
pub mod http;
pub mod msgpack;
pub mod route;
pub mod tls;
pub mod transcode;

use crate::buffer::{Batch, Buffer, Claim, ClaimGuard, StoreError};
use crate::intake::route::Router;
use crate::intake::transcode::{LineFormat, write_str};
use forward::frame::{self, FrameError};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub enum IngestError {
    /// The frame is refused: the connection is closed and nothing of it is stored or acked.
    Refused(FrameError),
}

/// A target as the intake sees it.
pub struct TargetFormat {
    pub name: String,
    pub format: LineFormat,
    /// Keys depend on the tag, so each tag gets its own chunks.
    pub partition_by_tag: bool,
}

/// Which intake events came through (a metric label).
#[derive(Clone, Copy)]
pub enum Intake {
    Forward = 0,
    Http = 1,
}

/// `rin_events_in_total` and `rin_bytes_in_total` for one intake and target, registered once:
/// looking counters up by name and labels on every frame costs more than counting.
pub struct InboundCounters {
    pub events: metrics::Counter,
    pub bytes: metrics::Counter,
}

/// Routing, transcoding and submission, shared by all connections.
pub struct Ingest {
    /// Per target, per `Intake`.
    inbound: Vec<[InboundCounters; 2]>,
    pub buffer: Arc<Buffer>,
    router: Router,
    targets: Vec<TargetFormat>,
    limits: frame::Limits,
    /// tag -> (target, partition, tag as a JSON string); tags repeat, routing them once pays.
    routes: Mutex<HashMap<String, Option<Arc<Route>>>>,
}

/// Where a tag's events go: the target, the chunk partition and the tag as a JSON string.
pub struct Route {
    pub target: usize,
    pub partition: Arc<str>,
    pub tag_json: Vec<u8>,
}

type AckFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, StoreError>> + Send>>;

impl Ingest {
    pub fn new(
        buffer: Arc<Buffer>,
        router: Router,
        targets: Vec<TargetFormat>,
        limits: frame::Limits,
    ) -> Ingest {
        let inbound = targets
            .iter()
            .map(|t| {
                ["forward", "http"].map(|intake| InboundCounters {
                    events: metrics::counter!("rin_events_in_total", "intake" => intake, "target" => t.name.clone()),
                    bytes: metrics::counter!("rin_bytes_in_total", "intake" => intake, "target" => t.name.clone()),
                })
            })
            .collect();
        Ingest {
            inbound,
            buffer,
            router,
            targets,
            limits,
            routes: Mutex::new(HashMap::new()),
        }
    }

    pub fn inbound(&self, intake: Intake, target: usize) -> &InboundCounters {
        &self.inbound[target][intake as usize]
    }

    pub fn buffer_full(&self) -> bool {
        self.buffer.usage.is_full()
    }

    pub async fn wait_for_room(&self) {
        self.buffer.usage.wait_for_room().await
    }

    /// The target at `index` (from a [`Route`]).
    pub fn target(&self, index: usize) -> &TargetFormat {
        &self.targets[index]
    }

    /// Stores lines already transcoded by an intake other than forward (HTTP): one batch,
    /// stored whole or not at all. The receiver resolves `Ok` once they are durable.
    pub async fn submit_lines(
        &self,
        route: &Route,
        lines: Vec<u8>,
        events: u64,
        first_time: crate::intake::msgpack::EventTime,
        claim: Option<ClaimGuard>,
    ) -> Result<crate::buffer::Durable, StoreError> {
        let batch = Batch {
            partition: route.partition.clone(),
            lines,
            events,
            first_time,
            claim,
        };
        self.buffer.submit(route.target, batch).await
    }

    /// Claims a request id (a forward `chunk` option, an HTTP `Idempotency-Key`) for storing.
    /// `None`: a batch with this id is already durable, so the sender only needs its ack again.
    /// Waits while another connection is storing the same id.
    pub async fn claim(&self, id: &[u8]) -> Option<ClaimGuard> {
        loop {
            match self.buffer.dedupe.claim(id) {
                Claim::New(guard) => return Some(guard),
                Claim::Stored => return None,
                Claim::InFlight(mut rx) => {
                    let _ = rx.wait_for(|v| v.is_some()).await;
                }
            }
        }
    }

    /// Routes a tag (cached); `None`: no target and no fallback.
    pub fn route(&self, tag: &str) -> Option<Arc<Route>> {
        let mut routes = self.routes.lock().unwrap();
        if let Some(r) = routes.get(tag) {
            return r.clone();
        }
        if routes.len() > 10_000 {
            routes.clear();
        }
        let route = self.router.route(tag).map(|target| {
            let mut tag_json = Vec::with_capacity(tag.len() + 2);
            write_str(&mut tag_json, tag);
            Arc::new(Route {
                target,
                partition: if self.targets[target].partition_by_tag {
                    Arc::from(tag)
                } else {
                    Arc::from("")
                },
                tag_json,
            })
        });
        routes.insert(tag.to_string(), route.clone());
        route
    }

    /// Takes one forward frame. `Ok(Some(ack))`: the frame asked for an ack, which resolves
    /// (to the chunk id to echo) once its events are durable.
    pub async fn forward_frame(&self, bytes: &[u8]) -> Result<Option<AckFuture>, IngestError> {
        let refused =
            |reason, detail: String| IngestError::Refused(FrameError::new(reason, detail));
        let Some(frame) = frame::parse(bytes).map_err(IngestError::Refused)? else {
            return Ok(None);
        };
        if frame.options.signal != 0 {
            return Err(refused(
                "signal",
                format!(
                    "fluent_signal {} (metrics or traces) is not accepted here; send only logs",
                    frame.options.signal
                ),
            ));
        }
        let Some(route) = self.route(frame.tag) else {
            metrics::counter!("rin_events_refused_total", "reason" => "no_route").increment(1);
            return Err(refused(
                "no_route",
                format!(
                    "tag `{}` matches no target and no fallback is configured",
                    frame.tag
                ),
            ));
        };
        let chunk_id = frame.options.chunk.map(<[u8]>::to_vec);
        let guard = match &chunk_id {
            None => None,
            Some(id) => match self.claim(id).await {
                Some(guard) => Some(guard),
                None => {
                    metrics::counter!("rin_forward_resends_deduplicated_total").increment(1);
                    let id = id.clone();
                    return Ok(Some(Box::pin(async move { Ok(id) })));
                }
            },
        };
        let target = &self.targets[route.target];
        // JSON runs a little larger than msgpack; the vector grows if it must.
        let mut lines = Vec::with_capacity(bytes.len() + bytes.len() / 4 + 256);
        let mut times = target.format.renderer();
        let result = frame
            .transcode(
                &target.format,
                &mut times,
                &route.tag_json,
                &self.limits,
                &mut lines,
            )
            .map_err(IngestError::Refused)?;
        let counters = self.inbound(Intake::Forward, route.target);
        counters.events.increment(result.events);
        counters.bytes.increment(bytes.len() as u64);
        let Some(first_time) = result.first_time else {
            // Nothing to store (only group markers): the ack is true at once.
            if let Some(g) = guard {
                g.finish(true);
            }
            return Ok(chunk_id.map(|id| Box::pin(async move { Ok(id) }) as AckFuture));
        };
        let batch = Batch {
            partition: route.partition.clone(),
            lines,
            events: result.events,
            first_time,
            claim: guard,
        };
        let durable = self
            .buffer
            .submit(route.target, batch)
            .await
            .map_err(|e| refused("unavailable", e.to_string()))?;
        let Some(id) = chunk_id else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        Ok(Some(Box::pin(async move {
            match durable.await {
                Ok(()) => {
                    metrics::histogram!("rin_ack_latency_seconds", "intake" => "forward")
                        .record(started.elapsed().as_secs_f64());
                    Ok(id)
                }
                Err(e) => Err(e),
            }
        })))
    }
}
