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
//!
//! The parts: the shared accept loop (`intake::accept`) hands each connection to hyper here;
//! `handler.rs` takes a request through its steps, `request.rs` reads its head (tag,
//! `Idempotency-Key`, parameters), `auth.rs` checks credentials, `body.rs` turns bodies into
//! lines, `config.rs` is the `http:` settings.

mod auth;
pub mod body;
mod config;
pub(crate) mod handler;
mod request;

pub use config::HttpConfig;

use crate::common::net::bind_error;
use crate::common::shutdown::Shutdown;
use crate::intake::Ingest;
use crate::intake::accept::{self, AcceptPolicy, AtCapacity, Drain, Handler, Place, TlsFailure};
use crate::intake::tls::ReloadableAcceptor;
use handler::State;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, info};

/// How long open connections may finish their requests at shutdown.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// Bodies larger than this are decompressed and parsed off the async workers.
const BLOCKING_BODY: usize = 256 << 10;

pub struct HttpServer {
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<ReloadableAcceptor>,
    max_connections: usize,
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
        let listener = TcpListener::bind(config.bind).await.map_err(|e| {
            bind_error(
                "HTTP",
                config.bind,
                "http.bind",
                Some("RIN_SHIP_HTTP_BIND"),
                e,
            )
        })?;
        let state = State::new(config, ingest, stop);
        info!(
            addr = %listener.local_addr()?,
            tls = tls.is_some(),
            auth = state.credentials.required(),
            "HTTP intake listening"
        );
        Ok(HttpServer {
            listener,
            state: Arc::new(state),
            tls,
            max_connections: config.max_connections,
        })
    }

    /// Accepts connections until the stop signal, then lets open connections finish the
    /// requests they carry (new requests get 503) for up to `DRAIN_MAX`.
    pub async fn run(self) {
        let stop = self.state.stop().clone();
        let policy = AcceptPolicy {
            name: "HTTP",
            connections_metric: "rin_http_connections_total",
            evicted_metric: "rin_http_connections_evicted_total",
            max_connections: self.max_connections,
            // At the limit new connections wait in the listen backlog.
            at_capacity: AtCapacity::Wait,
            tls_timeout: self.state.idle_timeout,
            // Each connection gets DRAIN_MAX to finish its requests; one more second for
            // them to close.
            drain: Drain::AtMost(DRAIN_MAX + Duration::from_secs(1)),
        };
        accept::accept_until_stopped(self.listener, self.tls, policy, self.state, stop).await;
    }
}

impl Handler for State {
    async fn serve<S>(self: Arc<Self>, stream: S, peer: SocketAddr, place: Place, stop: Shutdown)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve_connection(stream, peer, self, place, stop).await
    }

    fn tls_failed(&self, peer: SocketAddr, failure: TlsFailure) {
        match failure {
            TlsFailure::Closed(e) | TlsFailure::Failed(e) => {
                metrics::counter!("rin_http_requests_rejected_total", "reason" => "tls")
                    .increment(1);
                debug!(%peer, "HTTP TLS handshake failed: {e}");
            }
            TlsFailure::TimedOut(_) => debug!(%peer, "HTTP TLS handshake timed out"),
        }
    }
}

/// Serves one connection with hyper (HTTP/1.1, or HTTP/2 when the client asks) until it
/// closes; at shutdown, or when a new connection takes its place at `max_connections`,
/// finishes the requests in progress (for up to `DRAIN_MAX`) and closes.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    state: Arc<State>,
    place: Place,
    mut stop: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.idle_timeout);
    builder.http2().timer(TokioTimer::new());
    // One writer for the connection's requests (see `buffer`): what one client sends in
    // order stays in order in the objects.
    let source = Arc::new(state.source());
    let answered = place.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let source = source.clone();
        let answered = answered.clone();
        async move {
            let response = state.handle(req, peer, &source).await;
            // A request answered: the connection keeps its place under the limit.
            answered.delivered();
            Ok::<_, std::convert::Infallible>(response)
        }
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
        _ = place.evicted() => {
            debug!(%peer, "HTTP at http.max_connections: this connection gives its place to a new one");
        }
    }
    // Shutdown or eviction: finish the requests in progress, accept no more on this connection.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(DRAIN_MAX, conn).await;
}
