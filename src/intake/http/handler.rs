//! One HTTP request, as named steps: admit it (draining, method, credentials), find its tag
//! and route, read its head and body, claim its `Idempotency-Key`, transcode the body into
//! lines (off the async workers when large), store them and wait until they are durable; then
//! the answer. Owns the mapping of every refusal to a status, a metric label and a message.
//! It must never answer 2xx before the request's events are durable, and never store part of
//! a request.

use super::auth::Credentials;
use super::body::{self, BodyError, BodyKind, Encoding, Lines, Shape};
use super::request::{self, IDEMPOTENCY_KEY, Params, TagSource, header_str};
use super::{BLOCKING_BODY, HttpConfig};
use crate::buffer::{ClaimGuard, Source, StoreError};
use crate::common::shutdown::Shutdown;
use crate::common::time::EventTime;
use crate::intake::decompress::{BUDGET, BUSY_WAIT};
use crate::intake::transcode::LineFormat;
use crate::intake::{InboundCounters, Ingest, IngestError, Intake, Route};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// What every request of the server uses.
pub struct State {
    ingest: Arc<Ingest>,
    max_body: usize,
    body_timeout: Duration,
    max_decompressed: usize,
    tags: TagSource,
    time_key: String,
    retry_after: HeaderValue,
    pub credentials: Credentials,
    stop: Shutdown,
    /// A connection that sends no complete request headers for this long is closed.
    pub idle_timeout: Duration,
}

/// A request refused: status, metric label, message for the client.
pub struct Reject {
    status: StatusCode,
    reason: &'static str,
    detail: String,
}

impl Reject {
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Reject {
        Reject {
            status,
            reason,
            detail: detail.into(),
        }
    }

    /// The HTTP status it answers with.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// 503: every shipper retries it, where fluent-bit drops data on most 4xx.
    fn unavailable(detail: &str) -> Reject {
        Reject::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
}

impl From<BodyError> for Reject {
    fn from(e: BodyError) -> Reject {
        Reject::new(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.reason,
            e.detail,
        )
    }
}

impl From<IngestError> for Reject {
    fn from(e: IngestError) -> Reject {
        match e {
            // Clients keep and retry a 500, as forward clients keep an unacked frame.
            IngestError::NoRoute { .. } => {
                Reject::new(StatusCode::INTERNAL_SERVER_ERROR, e.reason(), e.to_string())
            }
            IngestError::Refused { reason, detail } => {
                Reject::new(StatusCode::BAD_REQUEST, reason, detail)
            }
            IngestError::Unavailable(e) => e.into(),
        }
    }
}

impl From<StoreError> for Reject {
    /// Shutting down, a full disk or a failed fsync: 503, retry later. A failed write: 500.
    fn from(e: StoreError) -> Reject {
        if e.is_disk_full() {
            return Reject::new(StatusCode::SERVICE_UNAVAILABLE, "disk_full", e.to_string());
        }
        match e {
            StoreError::ShuttingDown => Reject::unavailable(&e.to_string()),
            StoreError::Stopped => {
                Reject::unavailable("the buffer stopped before the events were durable; retry")
            }
            // A failed fsync: nothing of the batch is acked, the chunk is sealed at its last
            // durable commit and the next batch goes to a new one, so a retry can succeed.
            StoreError::NotDurable => {
                Reject::unavailable(&format!("events not stored: {e}; retry"))
            }
            // A full disk was answered above (`is_disk_full`).
            StoreError::Io { .. } | StoreError::DiskFull { .. } => Reject::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "not_stored",
                format!("events not stored: {e}"),
            ),
        }
    }
}

/// What the request's head says about its body, read before the body is.
struct BodyHead {
    encoding: Encoding,
    kind: BodyKind,
    /// Query parameters (`?time=`, fluentd's `?json=`).
    params: Params,
    idempotency_key: Option<HeaderValue>,
}

impl BodyHead {
    /// The payload: the body, or for an empty body fluentd in_http's `?json=` (`?msgpack=`).
    fn with_body(mut self, body: Bytes) -> Payload {
        let wire_bytes = body.len();
        let (kind, body) = if body.is_empty()
            && let Some((kind, value)) = request::take_payload_field(&mut self.params)
        {
            (kind, Bytes::from(value))
        } else {
            (self.kind, body)
        };
        Payload {
            encoding: self.encoding,
            kind,
            body,
            params: self.params,
            wire_bytes,
        }
    }
}

/// A request's payload, read and ready to transcode.
#[derive(Clone)]
struct Payload {
    encoding: Encoding,
    kind: BodyKind,
    body: Bytes,
    /// Query parameters left after the payload was taken (`?time=`).
    params: Params,
    /// Body bytes as sent (before decompression; 0 for a `?json=` payload).
    wire_bytes: usize,
}

/// The outcome of claiming a request's `Idempotency-Key`.
enum KeyClaim {
    /// Store the request (with the claim, when it has a key).
    Store(Option<ClaimGuard>),
    /// A request with this key is already stored: answer 200 again, store nothing.
    AlreadyStored,
}

fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

impl State {
    pub fn new(config: &HttpConfig, ingest: Arc<Ingest>, stop: Shutdown) -> State {
        State {
            ingest,
            max_body: config.max_body_bytes.0 as usize,
            body_timeout: config.body_timeout.0,
            max_decompressed: config.max_decompressed_bytes.0 as usize,
            tags: TagSource {
                header: (!config.tag_header.is_empty())
                    .then(|| HeaderName::from_bytes(config.tag_header.as_bytes()).ok())
                    .flatten(),
                default_tag: config.default_tag.clone(),
            },
            time_key: config.time_key.clone(),
            retry_after: HeaderValue::from(config.retry_after.0.as_secs().max(1)),
            credentials: Credentials::new(&config.auth),
            stop,
            idle_timeout: config.idle_timeout.0,
        }
    }

    /// The shutdown signal: once triggered, new requests get 503.
    pub fn stop(&self) -> &Shutdown {
        &self.stop
    }

    /// Answers one request: 200 once its events are durable, else the refusal.
    /// The connection's place among the buffer's writers.
    pub fn source(&self) -> Source {
        self.ingest.source()
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        source: &Source,
    ) -> Response<Full<Bytes>> {
        let result = self.clone().ingest(req, source).await;
        let status = match &result {
            Ok(_) => StatusCode::OK,
            Err(r) => r.status,
        };
        metrics::counter!("rin_http_requests_total", "code" => status.as_str().to_string())
            .increment(1);
        match result {
            Ok(()) => text_response(StatusCode::OK, String::new()),
            Err(reject) => self.refusal(reject, peer),
        }
    }

    /// The response to a refused request, counted and logged.
    fn refusal(&self, reject: Reject, peer: SocketAddr) -> Response<Full<Bytes>> {
        metrics::counter!("rin_http_requests_rejected_total", "reason" => reject.reason)
            .increment(1);
        match reject.status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::UNAUTHORIZED => {
                debug!(%peer, status = reject.status.as_u16(), "HTTP request refused: {}", reject.detail)
            }
            _ => {
                warn!(%peer, status = reject.status.as_u16(), "HTTP request refused: {}", reject.detail)
            }
        }
        let mut response = text_response(reject.status, format!("{}\n", reject.detail));
        let headers = response.headers_mut();
        match reject.status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, self.retry_after.clone());
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(self.credentials.challenge()),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
            }
            _ => {}
        }
        response
    }

    /// The steps from request to durable lines; `Err` is the refusal to answer.
    async fn ingest(
        self: Arc<Self>,
        req: Request<Incoming>,
        source: &Source,
    ) -> Result<(), Reject> {
        self.admit(&req)?;
        let tag = self.tags.tag(&req)?;
        let route = self.ingest.route(&tag)?;
        if self.ingest.buffer_full()
            && let Some(reason) = self.ingest.push_back_reason()
        {
            let label = if reason.contains("is full") {
                "disk_full"
            } else {
                "unavailable"
            };
            return Err(Reject::new(StatusCode::SERVICE_UNAVAILABLE, label, reason));
        }
        let mut head = self.body_head(&req)?;
        let idempotency_key = head.idempotency_key.take();
        let payload = head.with_body(self.read_body(req).await?);
        let counters = self.ingest.inbound(Intake::Http, route.target);
        counters.bytes.increment(payload.wire_bytes as u64);
        let claim = match self.claim_key(&idempotency_key).await? {
            KeyClaim::Store(claim) => claim,
            KeyClaim::AlreadyStored => return Ok(()),
        };
        // A body that finds the decompression budget spent waits its turn, briefly.
        let lines = BUDGET
            .when_room(
                BUSY_WAIT,
                |r: &Reject| r.reason == "busy",
                || {
                    self.clone()
                        .transcode_off_thread_if_large(route.clone(), payload.clone())
                },
            )
            .await?;
        self.store(&route, lines, claim, counters, source).await
    }

    /// Refuses what no body can fix: the process is draining, the method, the credentials.
    fn admit(&self, req: &Request<Incoming>) -> Result<(), Reject> {
        if self.stop.is_triggered() {
            return Err(Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "rin-ship is shutting down; retry",
            ));
        }
        if req.method() != Method::POST && req.method() != Method::PUT {
            return Err(Reject::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                format!("{} is not accepted: POST events to /<tag>", req.method()),
            ));
        }
        self.credentials.check(req.headers())
    }

    fn body_head(&self, req: &Request<Incoming>) -> Result<BodyHead, Reject> {
        let headers = req.headers();
        let idempotency_key = headers.get(IDEMPOTENCY_KEY).cloned();
        let encoding = body::content_encoding(header_str(headers, header::CONTENT_ENCODING))?;
        let kind = body::body_kind(header_str(headers, header::CONTENT_TYPE))?;
        if let Some(len) =
            header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
            && len > self.max_body as u64
        {
            return Err(self.too_large());
        }
        let params = req
            .uri()
            .query()
            .map(|q| body::form_pairs(q.as_bytes()))
            .unwrap_or_default();
        Ok(BodyHead {
            encoding,
            kind,
            params,
            idempotency_key,
        })
    }

    /// The body as sent, at most `max_body` bytes, within `body_timeout`.
    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, Reject> {
        let whole = Limited::new(req.into_body(), self.max_body).collect();
        let Ok(read) = tokio::time::timeout(self.body_timeout, whole).await else {
            return Err(Reject::new(
                StatusCode::REQUEST_TIMEOUT,
                "slow",
                format!(
                    "the request body did not arrive whole within {:?} (http.body_timeout): \
                     nothing of it was stored; send it again",
                    self.body_timeout
                ),
            ));
        };
        match read {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(self.too_large()),
            Err(e) => Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "read",
                format!("cannot read the request body: {e}"),
            )),
        }
    }

    /// A client that lost our 200 resends with the same key: it gets 200 again, nothing is
    /// stored twice.
    async fn claim_key(&self, value: &Option<HeaderValue>) -> Result<KeyClaim, Reject> {
        let Some(key) = request::idempotency_key(value)? else {
            return Ok(KeyClaim::Store(None));
        };
        match self.ingest.claim(&key).await {
            Some(guard) => Ok(KeyClaim::Store(Some(guard))),
            None => {
                metrics::counter!("rin_http_resends_deduplicated_total").increment(1);
                Ok(KeyClaim::AlreadyStored)
            }
        }
    }

    /// Transcodes on a blocking thread when the body is large, so one big request does not
    /// hold up the async workers.
    async fn transcode_off_thread_if_large(
        self: Arc<Self>,
        route: Arc<Route>,
        payload: Payload,
    ) -> Result<Lines, Reject> {
        if payload.wire_bytes <= BLOCKING_BODY {
            return self.transcode(&route, payload);
        }
        tokio::task::spawn_blocking(move || self.transcode(&route, payload))
            .await
            .map_err(|e| {
                Reject::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
    }

    /// Submits the lines and waits until they are durable.
    async fn store(
        &self,
        route: &Route,
        lines: Lines,
        claim: Option<ClaimGuard>,
        counters: &InboundCounters,
        source: &Source,
    ) -> Result<(), Reject> {
        let Some(first_time) = lines.first_time else {
            if let Some(claim) = claim {
                claim.finish(true);
            }
            return Ok(()); // nothing to store: true at once
        };
        counters.events.increment(lines.events);
        let started = Instant::now();
        let durable = self
            .ingest
            .submit_lines(route, lines.lines, lines.events, first_time, claim, source)
            .await?;
        durable.await?;
        metrics::histogram!("rin_ack_latency_seconds", "intake" => "http")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn too_large(&self) -> Reject {
        Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the request body is larger than {} bytes (http.max_body_bytes)",
                self.max_body
            ),
        )
    }

    fn transcode(&self, route: &Route, payload: Payload) -> Result<Lines, Reject> {
        let Payload {
            encoding,
            kind,
            body,
            params,
            ..
        } = payload;
        let target = self.ingest.target(route.target);
        body_lines(
            BodyRequest {
                encoding,
                kind,
                body: &body,
                params,
            },
            &BodyRules {
                max_decompressed: self.max_decompressed,
                format: &target.format,
                tag_json: &route.tag_json,
                time_key: &self.time_key,
            },
            now(),
        )
    }
}

/// What a request brings to its body's conversion.
pub(crate) struct BodyRequest<'a> {
    pub encoding: Encoding,
    pub kind: BodyKind,
    pub body: &'a [u8],
    /// Query parameters (a form body adds its fields).
    pub params: Params,
}

/// What the server and the route decide about a body's conversion.
pub(crate) struct BodyRules<'a> {
    pub max_decompressed: usize,
    pub format: &'a LineFormat,
    /// The tag, already a JSON string.
    pub tag_json: &'a [u8],
    pub time_key: &'a str,
}

/// A request body into its lines: decompressed, unwrapped from a form, transcoded. Pure (no
/// I/O, no state beyond the decompression budget), so `crate::fuzzing` drives exactly the
/// path a request takes.
pub(crate) fn body_lines(
    request: BodyRequest,
    rules: &BodyRules,
    now: EventTime,
) -> Result<Lines, Reject> {
    let BodyRequest {
        encoding,
        kind,
        body,
        mut params,
    } = request;
    // `_held`: the body's share of the decompression budget, until it is transcoded.
    let (decoded, _held) = body::decompress(encoding, body, rules.max_decompressed)?;
    let (kind, payload) = unwrap_form(kind, decoded, &mut params)?;
    let shape = Shape {
        format: rules.format,
        tag_json: rules.tag_json,
        time_key: rules.time_key,
        time_param: request::time_param(&params)?,
        now,
    };
    let mut lines = Lines::with_capacity(payload.len() + payload.len() / 8 + 256);
    match kind {
        BodyKind::Msgpack => body::msgpack_lines(&payload, &shape, &mut lines)?,
        _ => body::json_lines(&payload, &shape, &mut lines)?,
    }
    Ok(lines)
}

/// A form body carries its payload in a `json` or `msgpack` field; any other body is the
/// payload itself.
fn unwrap_form<'a>(
    kind: BodyKind,
    decoded: Cow<'a, [u8]>,
    params: &mut Params,
) -> Result<(BodyKind, Cow<'a, [u8]>), Reject> {
    // curl -d sends form content type by default: a body that is plainly JSON is JSON.
    let looks_like_json = decoded
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[');
    if kind != BodyKind::Form || looks_like_json {
        let kind = if kind == BodyKind::Form {
            BodyKind::Json
        } else {
            kind
        };
        return Ok((kind, decoded));
    }
    params.extend(body::form_pairs(&decoded));
    let Some((kind, payload)) = request::take_payload_field(params) else {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "a form body needs a `json` or `msgpack` field",
        ));
    };
    Ok((kind, Cow::Owned(payload)))
}

fn now() -> EventTime {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    EventTime {
        secs: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(r: Reject) -> (u16, &'static str, String) {
        (r.status.as_u16(), r.reason, r.detail)
    }

    #[test]
    fn refusals_from_below_keep_their_status_and_text() {
        assert_eq!(
            answer(IngestError::Unavailable(StoreError::ShuttingDown).into()),
            (503, "unavailable", "buffer is shutting down".into())
        );
        assert_eq!(
            answer(StoreError::Stopped.into()),
            (
                503,
                "unavailable",
                "the buffer stopped before the events were durable; retry".into()
            )
        );
        assert_eq!(
            answer(StoreError::NotDurable.into()),
            (
                503,
                "unavailable",
                "events not stored: could not make the events durable; retry".into()
            )
        );
        assert_eq!(
            answer(
                StoreError::DiskFull {
                    dir: "/data/buffer/default".into()
                }
                .into()
            ),
            (
                503,
                "disk_full",
                "the disk holding /data/buffer/default is full: events not stored; retry once \
                 space is freed"
                    .into()
            )
        );
        let enospc = StoreError::Io {
            doing: "cannot write chunk 7".into(),
            error: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(answer(enospc.into()).0, 503);
        let io = StoreError::Io {
            doing: "cannot write chunk 7".into(),
            error: std::io::Error::other("disk full"),
        };
        assert_eq!(
            answer(io.into()),
            (
                500,
                "not_stored",
                "events not stored: cannot write chunk 7: disk full".into()
            )
        );
        let no_route = IngestError::NoRoute { tag: "a.b".into() };
        assert_eq!(
            answer(no_route.into()),
            (
                500,
                "no_route",
                "tag `a.b` matches no target and no fallback is configured".into()
            )
        );
    }
}
