//! Operability: logging set-up ([`logging`]), the metric families and their help texts
//! ([`catalog`]), readiness ([`health`]), what this binary is (version, commit, features), and
//! the operations listener (`/metrics` in Prometheus text, `/healthz`, `/readyz`). Owns nothing
//! of the data path; it must never block it, and never expose configuration values (they may
//! hold secrets).

pub mod catalog;
pub mod health;
pub mod logging;
pub mod progress;

pub use health::Health;
pub use logging::{LogFormat, LogSettings};

use catalog::{FAMILIES, Kind, Part, SLOW, SLOW_BUCKETS, Series};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// This build: `0.1.0`, the commit it was built from, when, and its cargo features (from
/// `build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("RIN_SHIP_COMMIT");
pub const FEATURES: &str = env!("RIN_SHIP_FEATURES");
/// What `--version` prints after the name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RIN_SHIP_COMMIT"),
    ", built ",
    env!("RIN_SHIP_BUILD_DATE"),
    ", features: ",
    env!("RIN_SHIP_FEATURES_OR_NONE"),
    ")"
);

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// `host:port` (an IP address, or a name resolved at start).
    #[serde(deserialize_with = "crate::common::net::deserialize_bind")]
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

/// Logs to stderr: see [`logging`].
pub fn init_logging(settings: &LogSettings) -> anyhow::Result<()> {
    logging::init_to(settings, std::io::stderr)
}

/// [`init_logging`], writing each line through `writer` (which must end up on stderr: a
/// progress bar lifts itself around the line, say).
pub fn init_logging_to<W>(settings: &LogSettings, writer: W) -> anyhow::Result<()>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    logging::init_to(settings, writer)
}

/// Installs the process-wide metrics recorder and registers, zero-valued and with their help
/// texts, the families of `parts` (see [`catalog`]). Must run before any metric is touched.
pub fn install_metrics(parts: &[Part]) -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let mut builder = PrometheusBuilder::new().set_buckets(&buckets)?;
    for name in SLOW {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), SLOW_BUCKETS)?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    register(parts);
    Ok(handle)
}

/// Describes every family (a `# HELP` line once it has a series) and registers the series of
/// those in `parts`.
fn register(parts: &[Part]) {
    for fam in FAMILIES {
        match fam.kind {
            Kind::Counter => metrics::describe_counter!(fam.name, fam.help),
            Kind::Gauge => metrics::describe_gauge!(fam.name, fam.help),
            Kind::Histogram => metrics::describe_histogram!(fam.name, fam.help),
        }
        if !parts.contains(&fam.part) {
            continue;
        }
        let sets: &[&[(&str, &str)]] = match fam.series {
            Series::One => &[&[]],
            Series::Labels(sets) => sets,
            Series::FromConfig => &[],
        };
        for set in sets {
            let labels: Vec<metrics::Label> = set
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, *v))
                .collect();
            match fam.kind {
                Kind::Counter => drop(metrics::counter!(fam.name, labels)),
                Kind::Gauge => drop(metrics::gauge!(fam.name, labels)),
                Kind::Histogram => drop(metrics::histogram!(fam.name, labels)),
            }
        }
    }
    metrics::gauge!("rin_build_info", "version" => VERSION, "commit" => COMMIT, "features" => FEATURES)
        .set(1.0);
    metrics::gauge!("process_start_time_seconds").set(unix_now().floor());
}

/// The current Unix time in seconds (0 on a clock before 1970).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Sets a gauge to the current Unix time (the `rin_last_*_timestamp_seconds` family).
pub fn set_to_now(gauge: &'static str) {
    metrics::gauge!(gauge).set(unix_now());
}

/// Something read at each scrape (an age, a queue's depth) and set as a gauge.
pub type Collector = Box<dyn Fn() + Send + Sync>;

/// What the operations endpoint serves.
pub struct Ops {
    pub handle: PrometheusHandle,
    pub health: Health,
    pub collectors: Vec<Collector>,
}

/// Where the operations endpoint listens and which setting (and environment variable, for the
/// defaults without a config file) moves it.
pub struct Listen<'a> {
    pub addr: SocketAddr,
    pub setting: &'a str,
    pub env: Option<&'a str>,
}

/// Serves the operations endpoints until the process ends.
pub async fn serve_ops(listen: Listen<'_>, ops: Ops) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen.addr).await.map_err(|e| {
        crate::common::net::bind_error("metrics", listen.addr, listen.setting, listen.env, e)
    })?;
    info!(addr = %listener.local_addr()?, "operations endpoint listening (/metrics, /healthz, /readyz)");
    let ops = Arc::new(ops);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ops = ops.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let response = respond(req.uri().path(), &ops);
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

fn respond(path: &str, ops: &Ops) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match path {
        "/metrics" => {
            collect(ops);
            (
                StatusCode::OK,
                ops.handle.render(),
                "text/plain; version=0.0.4",
            )
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        "/readyz" => match ops.health.report() {
            (true, text) => (StatusCode::OK, text, "text/plain"),
            (false, text) => (StatusCode::SERVICE_UNAVAILABLE, text, "text/plain"),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
            "text/plain",
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// The values read at scrape time.
fn collect(ops: &Ops) {
    for c in &ops.collectors {
        c();
    }
    let _ = ops.health.report(); // rin_ready of the probes
    if let Some(rss) = resident_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    }
}

/// VmRSS from /proc (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
