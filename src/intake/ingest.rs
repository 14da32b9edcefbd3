//! The protocol-neutral half of every intake: route a tag to a target, claim a request id for
//! dedupe, submit transcoded lines to the buffer, count what came in. Protocol servers call
//! down into it; it knows no protocol. It must never report lines stored before the buffer
//! made them durable, and never drop a batch silently: every refusal is an `IngestError` the
//! intake answers visibly.

use crate::buffer::{Batch, Buffer, Claim, ClaimGuard, Durable, Source, StoreError};
use crate::common::time::EventTime;
use crate::intake::route::Router;
use crate::intake::transcode::{LineFormat, write_str};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why an intake could not take a batch. Nothing of it is stored or acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The tag matches no target and no fallback is configured.
    #[error("tag `{tag}` matches no target and no fallback is configured")]
    NoRoute { tag: String },
    /// The intake's own rules refuse the request; `reason` is a metric label.
    #[error("{detail}")]
    Refused {
        reason: &'static str,
        detail: String,
    },
    /// The buffer did not take the batch.
    #[error(transparent)]
    Unavailable(StoreError),
}

impl IngestError {
    /// The metric label of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::NoRoute { .. } => "no_route",
            IngestError::Refused { reason, .. } => reason,
            IngestError::Unavailable(_) => "unavailable",
        }
    }
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

/// Where a tag's events go: the target, the chunk partition and the tag as a JSON string.
pub struct Route {
    pub target: usize,
    pub partition: Arc<str>,
    pub tag_json: Vec<u8>,
}

/// Routing, dedupe claims and submission, shared by all connections of all intakes.
pub struct Ingest {
    /// Per target, per `Intake`.
    inbound: Vec<[InboundCounters; 2]>,
    buffer: Arc<Buffer>,
    router: Router,
    targets: Vec<TargetFormat>,
    /// Routes by tag; tags repeat, routing them once pays.
    routes: Mutex<HashMap<String, Option<Arc<Route>>>>,
}

/// Distinct tags whose routes are kept; past it the cache starts over.
const MAX_CACHED_ROUTES: usize = 10_000;

impl Ingest {
    pub fn new(buffer: Arc<Buffer>, router: Router, targets: Vec<TargetFormat>) -> Ingest {
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
            routes: Mutex::new(HashMap::new()),
        }
    }

    pub fn inbound(&self, intake: Intake, target: usize) -> &InboundCounters {
        &self.inbound[target][intake as usize]
    }

    pub fn buffer_full(&self) -> bool {
        self.buffer.usage.is_full()
    }

    /// Why intake pushes back now (the quota, a full disk), for the client.
    pub fn push_back_reason(&self) -> Option<String> {
        self.buffer.usage.push_back_reason()
    }

    pub async fn wait_for_room(&self) {
        self.buffer.usage.wait_for_room().await
    }

    /// The target at `index` (from a [`Route`]).
    pub fn target(&self, index: usize) -> &TargetFormat {
        &self.targets[index]
    }

    /// Routes a tag (cached). A tag with no target and no fallback is refused and counted.
    pub fn route(&self, tag: &str) -> Result<Arc<Route>, IngestError> {
        self.cached_route(tag).ok_or_else(|| {
            metrics::counter!("rin_events_refused_total", "reason" => "no_route").increment(1);
            IngestError::NoRoute {
                tag: tag.to_string(),
            }
        })
    }

    fn cached_route(&self, tag: &str) -> Option<Arc<Route>> {
        let mut routes = self.routes.lock().unwrap();
        if let Some(r) = routes.get(tag) {
            return r.clone();
        }
        if routes.len() > MAX_CACHED_ROUTES {
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

    /// A connection's place among the buffer's writers: take one per connection and submit
    /// its batches with it, so its events keep their order (see `buffer`).
    pub fn source(&self) -> Source {
        self.buffer.source()
    }

    /// Stores lines an intake transcoded for `route`: one batch, stored whole or not at all.
    /// The returned [`Durable`] resolves once they are durable; only then may the intake ack.
    pub async fn submit_lines(
        &self,
        route: &Route,
        lines: Vec<u8>,
        events: u64,
        first_time: EventTime,
        claim: Option<ClaimGuard>,
        source: &Source,
    ) -> Result<Durable, IngestError> {
        let batch = Batch {
            partition: route.partition.clone(),
            lines,
            events,
            first_time,
            claim,
        };
        self.buffer
            .submit(route.target, batch, source)
            .await
            .map_err(IngestError::Unavailable)
    }
}
