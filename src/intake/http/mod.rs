//! The HTTP intake: fluentd in_http, fluent-bit out_http and Vector's http sink post here.
//! Owns the HTTP server (hyper: HTTP/1.1, and HTTP/2 when the client asks, optional TLS),
//! authentication, and turning one request into one batch. Same contract as forward: a 2xx is
//! sent only after the request's events are durable, and a request is stored whole or not at
//! all.
//!
//! A request:
//! - `POST` (or `PUT`) `/<tag>`: path segments joined by `.` (`/app/web` is `app.web`, as
//!   fluentd's in_http does). A header named by `http.tag_header` (fluent-bit's `header_tag`)
//!   wins over the path; `http.default_tag` serves `POST /`.
//! - Body by `Content-Type` (see `body.rs`): msgpack (`application/msgpack`,
//!   `application/x-msgpack`), a form (`application/x-www-form-urlencoded`, field `json=` or
//!   `msgpack=`), anything else JSON (object, array of objects, NDJSON, concatenated objects).
//! - `Content-Encoding`: gzip, deflate (zlib or raw), zstd, snappy (raw or framed).
//! - Event time: `?time=` (or a form field `time`), else the record's `http.time_key` field
//!   (epoch seconds, or an RFC 3339 string), else the receive time. The field stays in the
//!   record unless it is the target's own `time_key`.
//!
//! Answers: 200 once durable (empty body, like fluentd). 503 with `Retry-After` while the
//! buffer is at its quota or the process drains: every shipper retries it, where fluent-bit
//! drops data on most 4xx. 400 names the line or byte offset of a malformed body; 401 bad
//! credentials; 413 too large; 415 unknown encoding; 500 a tag with no target (clients keep
//! and retry it, as forward clients keep an unacked frame) or a failed write.

pub mod body;
mod config;

pub use config::HttpConfig;

use crate::buffer::StoreError;
use crate::common::shutdown::Shutdown;
use crate::intake::msgpack::EventTime;
use crate::intake::tls::ReloadableAcceptor;
use crate::intake::{Ingest, IngestError, Intake};
use body::{BodyError, BodyKind, Lines, Shape};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// How long open connections may finish their requests at shutdown.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// Bodies larger than this are decompressed and parsed off the async workers.
const BLOCKING_BODY: usize = 256 << 10;

pub struct HttpServer {
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<ReloadableAcceptor>,
    connections: Arc<Semaphore>,
    idle_timeout: Duration,
}

struct State {
    ingest: Arc<Ingest>,
    max_body: usize,
    max_decompressed: usize,
    tag_header: Option<HeaderName>,
    default_tag: String,
    time_key: String,
    retry_after: HeaderValue,
    /// SHA-256 of the bearer token and of `user:password`: compared in constant time, and
    /// hashing first hides their lengths too.
    bearer: Option<[u8; 32]>,
    basic: Option<[u8; 32]>,
    stop: Shutdown,
}

/// A request refused: status, metric label, message for the client.
struct Reject {
    status: StatusCode,
    reason: &'static str,
    detail: String,
}

impl Reject {
    fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Reject {
        Reject {
            status,
            reason,
            detail: detail.into(),
        }
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
    /// Shutting down: 503, retry after the restart. A failed write: 500.
    fn from(e: StoreError) -> Reject {
        match e {
            StoreError::ShuttingDown => State::unavailable(&e.to_string()),
            StoreError::Stopped => {
                State::unavailable("the buffer stopped before the events were durable; retry")
            }
            StoreError::Io { .. } | StoreError::NotDurable => Reject::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "not_stored",
                format!("events not stored: {e}"),
            ),
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl HttpServer {
    pub async fn bind(
        config: &HttpConfig,
        ingest: Arc<Ingest>,
        stop: Shutdown,
    ) -> anyhow::Result<HttpServer> {
        let tls = match &config.tls {
            Some(t) => {
                let acceptor = ReloadableAcceptor::new(t, &[b"h2", b"http/1.1"])
                    .map_err(|e| anyhow::anyhow!("field `http.tls`: {e:#}"))?;
                acceptor.reload_on_sighup()?;
                Some(acceptor)
            }
            None => None,
        };
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {}: {e}", config.bind))?;
        let auth = &config.auth;
        let state = State {
            ingest,
            max_body: config.max_body_bytes.0 as usize,
            max_decompressed: config.max_decompressed_bytes.0 as usize,
            tag_header: (!config.tag_header.is_empty())
                .then(|| HeaderName::from_bytes(config.tag_header.as_bytes()).ok())
                .flatten(),
            default_tag: config.default_tag.clone(),
            time_key: config.time_key.clone(),
            retry_after: HeaderValue::from(config.retry_after.0.as_secs().max(1)),
            bearer: (!auth.bearer_token.expose().is_empty())
                .then(|| sha256(auth.bearer_token.expose().as_bytes())),
            basic: (!auth.username.is_empty()).then(|| {
                sha256(format!("{}:{}", auth.username, auth.password.expose()).as_bytes())
            }),
            stop,
        };
        info!(
            addr = %listener.local_addr()?,
            tls = tls.is_some(),
            auth = state.bearer.is_some() || state.basic.is_some(),
            "HTTP intake listening"
        );
        Ok(HttpServer {
            listener,
            state: Arc::new(state),
            tls,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            idle_timeout: config.idle_timeout.0,
        })
    }

    /// Accepts connections until the stop signal, then lets open connections finish the
    /// requests they carry (new requests get 503) for up to `DRAIN_MAX`.
    pub async fn run(self) {
        let mut stop = self.state.stop.clone();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = self.connections.clone().acquire_owned() => p.expect("semaphore closed"),
                _ = stop.wait() => break,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stop.wait() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            metrics::counter!("rin_http_connections_total").increment(1);
            let state = self.state.clone();
            let idle = self.idle_timeout;
            let tls = self.tls.as_ref().map(|t| t.acceptor());
            tasks.spawn(async move {
                match tls {
                    None => serve_connection(stream, peer, state, idle).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(idle, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                serve_connection(tls_stream, peer, state, idle).await
                            }
                            Ok(Err(e)) => {
                                metrics::counter!("rin_http_requests_rejected_total", "reason" => "tls")
                                    .increment(1);
                                debug!(%peer, "HTTP TLS handshake failed: {e}");
                            }
                            Err(_) => debug!(%peer, "HTTP TLS handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        drop(self.listener);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_MAX + Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            warn!("HTTP connections still open after the drain; closing them");
        }
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, state: Arc<State>, idle: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    builder.http2().timer(TokioTimer::new());
    let mut stop = state.stop.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(state.handle(req, peer).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(%peer, "HTTP connection: {e}");
            }
            return;
        }
        _ = stop.wait() => {}
    }
    // Shutdown: finish the requests in progress, accept no more on this connection.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(DRAIN_MAX, conn).await;
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request's `Idempotency-Key` (IETF httpapi draft), namespaced apart from forward chunk
/// ids. It is remembered with the stored events for `buffer.dedupe_window`, across restarts.
fn idempotency_key(value: &Option<HeaderValue>) -> Result<Option<Vec<u8>>, Reject> {
    let Some(v) = value else { return Ok(None) };
    let bytes = v.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    let mut key = b"http\0".to_vec();
    key.extend_from_slice(bytes);
    Ok(Some(key))
}

fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

impl State {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let result = self.clone().ingest(req).await;
        let status = match &result {
            Ok(_) => StatusCode::OK,
            Err(r) => r.status,
        };
        metrics::counter!("rin_http_requests_total", "code" => status.as_str().to_string())
            .increment(1);
        let reject = match result {
            Ok(()) => return text_response(StatusCode::OK, String::new()),
            Err(r) => r,
        };
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
                let challenge = if self.basic.is_some() {
                    "Basic realm=\"rin-ship\""
                } else {
                    "Bearer realm=\"rin-ship\""
                };
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST, PUT"));
            }
            _ => {}
        }
        response
    }

    fn draining(&self) -> bool {
        self.stop.is_triggered()
    }

    fn unavailable(detail: &str) -> Reject {
        Reject::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    async fn ingest(self: Arc<Self>, req: Request<Incoming>) -> Result<(), Reject> {
        if self.draining() {
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
        self.authenticate(req.headers())?;
        let tag = self.tag(&req)?;
        let route = self.ingest.route(&tag)?;
        if self.ingest.buffer_full() {
            return Err(Self::unavailable(
                "the buffer is at its disk quota; retry later",
            ));
        }
        let headers = req.headers();
        let headers_copy = headers.get(IDEMPOTENCY_KEY).cloned();
        let encoding = body::content_encoding(header_str(headers, header::CONTENT_ENCODING))?;
        let mut kind = body::body_kind(header_str(headers, header::CONTENT_TYPE))?;
        if let Some(len) =
            header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
            && len > self.max_body as u64
        {
            return Err(self.too_large());
        }
        let query = req
            .uri()
            .query()
            .map(|q| body::form_pairs(q.as_bytes()))
            .unwrap_or_default();
        let bytes = match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(self.too_large()),
            Err(e) => {
                return Err(Reject::new(
                    StatusCode::BAD_REQUEST,
                    "read",
                    format!("cannot read the request body: {e}"),
                ));
            }
        };
        let wire_bytes = bytes.len();
        // fluentd in_http also takes `?json=` with an empty body.
        let mut params = query;
        let mut body_override = None;
        if bytes.is_empty()
            && let Some(i) = params
                .iter()
                .position(|(k, _)| k == b"json" || k == b"msgpack")
        {
            let (k, v) = params.remove(i);
            kind = if k == b"json" {
                BodyKind::Json
            } else {
                BodyKind::Msgpack
            };
            body_override = Some(Bytes::from(v));
        }
        let counters = self.ingest.inbound(Intake::Http, route.target);
        counters.bytes.increment(wire_bytes as u64);
        // A client that lost our 200 resends with the same key: answer 200 again, store nothing.
        let claim = match idempotency_key(&headers_copy)? {
            None => None,
            Some(key) => match self.ingest.claim(&key).await {
                Some(guard) => Some(guard),
                None => {
                    metrics::counter!("rin_http_resends_deduplicated_total").increment(1);
                    return Ok(());
                }
            },
        };
        let state = self.clone();
        let route_for_parse = route.clone();
        let parse = move || {
            let body = body_override.unwrap_or(bytes);
            state.transcode(&route_for_parse, encoding, kind, &body, params)
        };
        let lines = if wire_bytes > BLOCKING_BODY {
            tokio::task::spawn_blocking(parse).await.map_err(|e| {
                Reject::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })??
        } else {
            parse()?
        };
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
            .submit_lines(&route, lines.lines, lines.events, first_time, claim)
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

    fn transcode(
        &self,
        route: &crate::intake::Route,
        encoding: body::Encoding,
        kind: BodyKind,
        raw: &[u8],
        mut params: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Lines, Reject> {
        let decoded = body::decompress(encoding, raw, self.max_decompressed)?;
        // curl -d sends form content type by default: a body that is plainly JSON is JSON.
        let looks_like_json = decoded
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{' || *b == b'[');
        let kind = if kind == BodyKind::Form && looks_like_json {
            BodyKind::Json
        } else {
            kind
        };
        let (kind, payload): (BodyKind, std::borrow::Cow<[u8]>) = if kind == BodyKind::Form {
            params.extend(body::form_pairs(&decoded));
            let Some(i) = params
                .iter()
                .position(|(k, _)| k == b"json" || k == b"msgpack")
            else {
                return Err(Reject::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "a form body needs a `json` or `msgpack` field",
                ));
            };
            let (k, v) = params.remove(i);
            let kind = if k == b"json" {
                BodyKind::Json
            } else {
                BodyKind::Msgpack
            };
            (kind, std::borrow::Cow::Owned(v))
        } else {
            (kind, decoded)
        };
        let time_param = match params.iter().rev().find(|(k, _)| k == b"time") {
            None => None,
            Some((_, v)) => {
                let text = String::from_utf8_lossy(v);
                match body::parse_time_text(&text) {
                    // fluentd: time=0 means "now".
                    Some(t) if t.secs == 0 && t.nanos == 0 => None,
                    Some(t) => Some(t),
                    None => {
                        return Err(Reject::new(
                            StatusCode::BAD_REQUEST,
                            "malformed",
                            format!(
                                "parameter `time={text}` is not epoch seconds or an RFC 3339 time"
                            ),
                        ));
                    }
                }
            }
        };
        let target = self.ingest.target(route.target);
        let shape = Shape {
            format: &target.format,
            tag_json: &route.tag_json,
            time_key: &self.time_key,
            time_param,
            now: now(),
        };
        let mut lines = Lines::with_capacity(payload.len() + payload.len() / 8 + 256);
        match kind {
            BodyKind::Msgpack => body::msgpack_lines(&payload, &shape, &mut lines)?,
            _ => body::json_lines(&payload, &shape, &mut lines)?,
        }
        Ok(lines)
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Reject> {
        if self.bearer.is_none() && self.basic.is_none() {
            return Ok(());
        }
        let fail = |detail: &str| Reject::new(StatusCode::UNAUTHORIZED, "auth", detail);
        let Some(value) = header_str(headers, header::AUTHORIZATION) else {
            return Err(fail("credentials required (Authorization header)"));
        };
        let (scheme, credential) = value.trim().split_once(' ').unwrap_or((value, ""));
        let credential = credential.trim();
        let ok = if scheme.eq_ignore_ascii_case("bearer") {
            self.bearer
                .is_some_and(|want| bool::from(sha256(credential.as_bytes()).ct_eq(&want)))
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credential)
                .unwrap_or_default();
            self.basic
                .is_some_and(|want| bool::from(sha256(&decoded).ct_eq(&want)))
        } else {
            false
        };
        if ok {
            Ok(())
        } else {
            Err(fail("invalid credentials"))
        }
    }

    /// The tag: the tag header, else the path (`/a/b` is `a.b`), else `default_tag`.
    fn tag(&self, req: &Request<Incoming>) -> Result<String, Reject> {
        let bad = |detail: String| Reject::new(StatusCode::BAD_REQUEST, "no_tag", detail);
        if let Some(name) = &self.tag_header
            && let Some(v) = req.headers().get(name)
        {
            let tag = v
                .to_str()
                .map_err(|_| bad(format!("header {name} is not a valid tag")))?
                .trim();
            if !tag.is_empty() {
                return Ok(tag.to_string());
            }
        }
        let path = req.uri().path();
        let mut parts = Vec::new();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            let decoded = percent_decode(segment.as_bytes());
            let text = String::from_utf8(decoded)
                .map_err(|_| bad(format!("path `{path}` is not UTF-8 once decoded")))?;
            parts.push(text);
        }
        let tag = if parts.is_empty() {
            self.default_tag.clone()
        } else {
            parts.join(".")
        };
        if tag.is_empty() {
            return Err(bad(match &self.tag_header {
                Some(h) => format!("no tag: POST to /<tag> or send the tag in header {h}"),
                None => {
                    "no tag: POST to /<tag> (or set http.tag_header / http.default_tag)".to_string()
                }
            }));
        }
        if tag.len() > 1024 || tag.chars().any(char::is_control) {
            return Err(bad(
                "the tag is longer than 1024 bytes or holds control characters".into(),
            ));
        }
        Ok(tag)
    }
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (hex(s.get(i + 1)), hex(s.get(i + 2)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
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
