//! `rin-ship serve`: wires the stages together (intake -> buffer -> ship [-> local queue ->
//! embedded loader]), runs them, and shuts them down in order on SIGTERM/SIGINT: stop
//! accepting, answer owed acks, seal every chunk, upload within the deadline, load what was
//! queued within the same deadline, exit. What is not uploaded stays on disk, and what is not
//! loaded stays queued, for the next start.

use crate::buffer::{Buffer, BufferTarget};
use crate::common::shutdown;
use crate::config::Config;
use crate::intake::forward::ForwardServer;
use crate::intake::route::Router;
use crate::intake::transcode::LineFormat;
use crate::intake::{Ingest, TargetFormat};
use crate::load::embedded::Embedded;
use crate::queue::local::LocalQueue;
use crate::ship::key::KeyTemplate;
use crate::ship::{Shipper, TargetSpec};
use crate::telemetry::catalog::Part;
use crate::telemetry::{Collector, Health, Listen, Ops};
use anyhow::{Context, Result};
use metrics_exporter_prometheus::PrometheusHandle;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub async fn serve(config: Config) -> Result<()> {
    crate::common::durable::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let _lock = lock_dir(&config.data_dir)?;
    let node = node_id(&config)?;
    let mut parts = vec![Part::Process, Part::Serve];
    if config.embedded_load() {
        parts.extend([Part::Load, Part::LocalQueue]);
    }
    let metrics = crate::telemetry::install_metrics(&parts)?;
    crate::intake::decompress::BUDGET.set_limit(config.decompress_memory.0 as usize);

    let partition_by_tag: Vec<bool> = config
        .targets
        .iter()
        .map(|t| KeyTemplate::parse(&t.key).map(|k| k.uses_tag()))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    // Opened before the shipper (which notifies it) and the loader (which consumes it);
    // returns what a previous process left in flight to the queue.
    let local_queue = if config.uses_local_queue() {
        Some(LocalQueue::open(&config.queue_dir())?)
    } else {
        None
    };
    let embedded = start_embedded(&config, local_queue.as_ref()).await?;
    let (sealed_tx, sealed_rx) = mpsc::unbounded_channel();
    let buffer_targets: Vec<BufferTarget> = config
        .targets
        .iter()
        .zip(&partition_by_tag)
        .map(|(t, by_tag)| BufferTarget {
            name: t.name.clone(),
            partition_by_tag: *by_tag,
        })
        .collect();
    let buffer = Arc::new(Buffer::open(&config.buffer, &buffer_targets, sealed_tx)?);
    let ship_targets: Vec<TargetSpec> = config
        .targets
        .iter()
        .map(|t| TargetSpec {
            name: &t.name,
            store: &t.store,
            key: &t.key,
        })
        .collect();
    let shipper = Arc::new(
        Shipper::new(
            &config.ship,
            &ship_targets,
            &config.stores,
            node.clone(),
            buffer.usage.clone(),
            local_queue.as_ref(),
        )
        .await?,
    );
    let shipping = tokio::spawn(shipper.run(sealed_rx));

    if config.metrics.enabled {
        let ops = ops(&buffer, local_queue.as_ref(), metrics);
        let listen = Listen {
            addr: config.metrics.bind,
            setting: "metrics.bind",
            env: Some("RIN_SHIP_METRICS_BIND"),
        };
        crate::telemetry::serve_ops(listen, ops).await?;
    }
    let tick_every =
        (config.buffer.seal_age.0 / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let ticker = {
        let buffer = buffer.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick_every);
            let mut last_gc = std::time::Instant::now();
            loop {
                interval.tick().await;
                // A full disk that has room again resumes intake (a statfs, only while full).
                buffer.usage.check_disk();
                buffer.tick();
                if last_gc.elapsed() >= Duration::from_secs(60) {
                    last_gc = std::time::Instant::now();
                    let buffer = buffer.clone();
                    let _ = tokio::task::spawn_blocking(move || buffer.collect_garbage()).await;
                }
            }
        })
    };

    let router = Router::new(
        &config
            .targets
            .iter()
            .map(|t| t.patterns.clone())
            .collect::<Vec<_>>(),
        config
            .targets
            .iter()
            .position(|t| t.name == config.fallback),
    )
    .map_err(anyhow::Error::msg)?;
    let formats = config
        .targets
        .iter()
        .zip(&partition_by_tag)
        .map(|(t, by_tag)| TargetFormat {
            name: t.name.clone(),
            format: LineFormat::new(&t.time_key, t.time_format, t.time_precision, &t.tag_key),
            partition_by_tag: *by_tag,
        })
        .collect();
    let ingest = Arc::new(Ingest::new(buffer.clone(), router, formats));

    let (stop, stopping) = shutdown::channel();
    // Bound before forward, so a client that sees the forward port open finds HTTP open too.
    let http = if config.http.enabled {
        let server =
            crate::intake::http::HttpServer::bind(&config.http, ingest.clone(), stopping.clone())
                .await?;
        Some(tokio::spawn(server.run()))
    } else {
        None
    };
    let forward = if config.forward.enabled {
        let server = ForwardServer::bind(&config.forward, ingest.clone()).await?;
        Some(tokio::spawn(server.run(stopping.clone())))
    } else {
        None
    };
    info!(node = %node, targets = config.targets.len(), shards = config.buffer.shards, "rin-ship is running");

    shutdown::signal().await;
    info!("shutting down: no new connections, sealing chunks");
    stop.trigger();
    if let Some(forward) = forward {
        let _ = forward.await;
    }
    if let Some(http) = http {
        let _ = http.await;
    }
    ticker.abort();
    buffer.close().await;
    drop(ingest);
    let deadline = config.ship.shutdown_timeout.0;
    let deadline_at = std::time::Instant::now() + deadline;
    match tokio::time::timeout(deadline, shipping).await {
        Ok(_) => info!("all sealed chunks uploaded; bye"),
        Err(_) => warn!(
            buffered_bytes = buffer.usage.used(),
            "shutdown deadline of {deadline:?} reached with chunks not uploaded; they stay on disk and ship at the next start"
        ),
    }
    if let Some(e) = embedded {
        e.shutdown(deadline_at).await;
    }
    Ok(())
}

/// What serve's operations endpoint answers from: readiness is the buffer's quota; the
/// buffer's fill, its oldest chunk, the local queue and the decompression budget are read at
/// each scrape.
fn ops(buffer: &Arc<Buffer>, queue: Option<&LocalQueue>, handle: PrometheusHandle) -> Ops {
    let health = Health::exported();
    let usage = buffer.usage.clone();
    health.probe("buffer", move || match usage.push_back_reason() {
        Some(reason) => Err(reason),
        None => Ok(()),
    });
    let quota = buffer.usage.quota();
    metrics::gauge!("rin_buffer_quota_bytes").set(quota as f64);
    let budget = &crate::intake::decompress::BUDGET;
    metrics::gauge!("rin_decompress_budget_bytes").set(budget.limit() as f64);
    let mut collectors: Vec<Collector> = Vec::new();
    let (usage, backlog) = (buffer.usage.clone(), buffer.backlog.clone());
    collectors.push(Box::new(move || {
        metrics::gauge!("rin_buffer_fill_ratio").set(usage.used() as f64 / quota.max(1) as f64);
        metrics::gauge!("rin_buffer_oldest_chunk_age_seconds")
            .set(backlog.oldest_age().as_secs_f64());
        metrics::gauge!("rin_decompress_bytes").set(budget.used() as f64);
    }));
    if let Some(queue) = queue.cloned() {
        collectors.push(Box::new(move || {
            let (ready, inflight) = queue.depth();
            metrics::gauge!("rin_local_queue_messages", "state" => "ready").set(ready as f64);
            metrics::gauge!("rin_local_queue_messages", "state" => "inflight").set(inflight as f64);
            metrics::gauge!("rin_local_queue_messages", "state" => "dead").set(queue.dead() as f64);
        }));
    }
    Ops {
        handle,
        health,
        collectors,
    }
}

/// The in-process loader, when `embedded_load` is on.
async fn start_embedded(config: &Config, queue: Option<&LocalQueue>) -> Result<Option<Embedded>> {
    if !config.embedded_load() {
        return Ok(None);
    }
    let queue = queue
        .cloned()
        .context("embedded_load: no store notifies the local queue")?;
    Ok(Some(
        crate::load::embedded::start(&config.embedded_setup(), queue).await?,
    ))
}

/// One process per data folder: two writers on the same chunks would corrupt them.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use by another rin-ship process (lock {} is held); stop it, or give \
             this one another data_dir",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", path.display())))
        }
    }
}

/// The configured node id, or `<hostname>-<suffix>` where the suffix is drawn once and kept in
/// the data folder: a wiped data folder then gets new keys instead of overwriting old objects.
fn node_id(config: &Config) -> Result<String> {
    if !config.node.is_empty() {
        return Ok(config.node.clone());
    }
    let path = config.data_dir.join("node_id");
    let mut existing = String::new();
    if let Ok(mut f) = std::fs::File::open(&path) {
        f.read_to_string(&mut existing)?;
        let id = existing.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let host = gethostname::gethostname().to_string_lossy().to_string();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = format!("{host}-{:08x}", rand::random::<u32>());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    // Durable before any key uses it: a node id lost in a power cut would ship a chunk
    // uploaded before the cut again under another key, and load it twice.
    crate::common::durable::rename(&tmp, &path)?;
    Ok(id)
}
