//! Operability: logging set-up and the operations listener (`/metrics` in Prometheus text,
//! `/healthz`, `/readyz`). Owns nothing of the data path; it must never block it, and never
//! expose configuration values (they may hold secrets).

use crate::buffer::Usage;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{info, warn};

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bind: "127.0.0.1:2021".parse().unwrap(),
        }
    }
}

/// Logs to stderr, filtered by `RIN_SHIP_LOG` (default `info`); `debug` (import's `--debug`,
/// Rin's `-debug`) adds `rin_ship=debug`: rin-ship's own debug logs, not its libraries'.
pub fn init_logging(debug: bool) {
    init_logging_to(debug, std::io::stderr);
}

/// [`init_logging`], writing each line through `writer` (which must end up on stderr: a
/// progress bar lifts itself around the line, say).
pub fn init_logging_to<W>(debug: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("RIN_SHIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if debug {
        filter = filter.add_directive("rin_ship=debug".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Installs the process-wide metrics recorder. Must run before any metric is touched.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    PrometheusBuilder::new()
        .set_buckets(&buckets)?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))
}

/// Serves the operations endpoints until the process ends.
pub async fn serve_ops(
    addr: SocketAddr,
    handle: PrometheusHandle,
    usage: Arc<Usage>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    info!(addr = %listener.local_addr()?, "operations endpoint listening (/metrics, /healthz, /readyz)");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            let usage = usage.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let response = respond(req.uri().path(), &handle, &usage);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
                {
                    warn!("operations connection: {e}");
                }
            });
        }
    });
    Ok(())
}

fn respond(path: &str, handle: &PrometheusHandle, usage: &Usage) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match path {
        "/metrics" => (StatusCode::OK, handle.render(), "text/plain; version=0.0.4"),
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" if usage.is_full() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "buffer at its disk quota\n".to_string(),
            "text/plain",
        ),
        "/readyz" => (StatusCode::OK, "ready\n".to_string(), "text/plain"),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_string(),
            "text/plain",
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
