//! `rin-ship import`'s operations endpoint (`rin_ship.metrics_bind`): `/metrics` with the
//! loader's families, and a `/readyz` that says not ready while the importer cannot reach its
//! queue or its warehouse. The loads report what they see ([`Loader::health`]); a probe every
//! [`EVERY`] reads the queue's depth and, while the warehouse is not known to answer, tries to
//! connect to it, so readiness comes back without waiting for a message.
//!
//! Must never: change the queue (the probe only reads its attributes) or hold a warehouse
//! session beyond one probe.

use super::Loader;
use crate::common::shutdown::Shutdown;
use crate::queue::Queue;
use crate::telemetry::catalog::Part;
use crate::telemetry::{self, Health, Listen, Ops};
use anyhow::Result;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Time between probes.
pub const EVERY: Duration = Duration::from_secs(10);

/// Starts the endpoint when `rin_ship.metrics_bind` is set; the health its `/readyz` answers
/// from (hand it to the loader).
pub async fn serve_metrics(cfg: &super::rin::RinConfig) -> Result<Option<Health>> {
    let bind = &cfg.ext.metrics_bind;
    if bind.is_empty() {
        return Ok(None);
    }
    let addr = crate::common::net::parse_bind(bind)
        .map_err(|e| anyhow::anyhow!("rin_ship.metrics_bind: {e}"))?;
    let handle = telemetry::install_metrics(&[Part::Process, Part::Load, Part::Import])?;
    let health = Health::exported();
    health.pending("queue", "not reached yet");
    health.pending("warehouse", "not connected yet");
    let ops = Ops {
        handle,
        health: health.clone(),
        collectors: Vec::new(),
    };
    telemetry::serve_ops(
        Listen {
            addr,
            setting: "rin_ship.metrics_bind",
            env: None,
        },
        ops,
    )
    .await?;
    Ok(Some(health))
}

/// Probes the queue and (while it is not known to answer) the warehouse every [`EVERY`]
/// until `stop`.
pub async fn watch(loader: Arc<Loader>, queue: Queue, mut stop: Shutdown) {
    let mut denied_logged = false;
    loop {
        probe_queue(&loader.health, &queue, &mut denied_logged).await;
        if !loader.health.passing("warehouse") {
            probe_warehouse(&loader).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait() => return,
        }
    }
}

async fn probe_queue(health: &Health, queue: &Queue, denied_logged: &mut bool) {
    match queue {
        #[cfg(feature = "sqs")]
        Queue::Sqs(q) => match q.depth().await {
            Ok(Some((visible, inflight))) => {
                metrics::gauge!("rin_import_queue_messages", "state" => "visible")
                    .set(visible as f64);
                metrics::gauge!("rin_import_queue_messages", "state" => "inflight")
                    .set(inflight as f64);
                health.ok("queue");
            }
            Ok(None) => {
                if !*denied_logged {
                    *denied_logged = true;
                    warn!(
                        "SQS refused GetQueueAttributes: rin_import_queue_messages stays 0; \
                         grant sqs:GetQueueAttributes (examples/aws/iam-policy-importer.json)"
                    );
                }
                health.ok("queue");
            }
            Err(e) => health.failing("queue", format!("{e:#}")),
        },
        Queue::Local(_) => {}
    }
}

/// Connects to every warehouse the targets load into (once each), then lets the session go.
async fn probe_warehouse(loader: &Loader) {
    let env = loader.env();
    let mut seen = HashSet::new();
    for t in loader.cfg.targets.iter().filter(|t| !t.discard) {
        let conn = t.redshift.without_table();
        if !seen.insert(conn.clone()) {
            continue;
        }
        if let Err(f) = loader.drivers.of(t).connect(&env, &conn).await {
            loader.health.failing(
                "warehouse",
                format!("cannot connect to {}: {f:#}", t.redshift.visible_dsn()),
            );
            return;
        }
    }
    loader.health.ok("warehouse");
}
