//! `rin-ship import`: the loader as a daemon (or, with `--batch`, until a receive finds the
//! queue empty; with `--batch --drain`, until nothing is visible or in flight) over an SQS
//! queue of S3 events, as Rin runs. Also `--dry-run [KEY...]` (or
//! `RIN_DRY_RUN=true`): the targets, and where each key would load with the statements that
//! would run ([`super::dry_run`]), contacting nothing.
//!
//! Must never: load anything in a dry run; start loading before the metrics endpoint (when
//! asked for) is up; exit before the loads in flight finished (SIGTERM,
//! `--max-execution-time`).

use super::Loader;
use super::consume::{Until, consume};
use super::rin::RinConfig;
use crate::common::shutdown;
use crate::queue::{Queue, sqs};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Command-line options of `rin-ship import`.
#[derive(Debug, Clone)]
pub struct ImportArgs {
    /// A local path, an `http(s)://` URL or `s3://bucket/key` (as Rin's `-config`).
    pub config: String,
    pub batch: bool,
    /// With `batch`: exit only once nothing is visible or in flight ([`Until::Drained`]).
    pub drain: bool,
    pub max_execution_time: Option<Duration>,
    /// Load nothing: list the targets, and show the loads of `keys`.
    pub dry_run: bool,
    pub keys: Vec<String>,
}

/// `rin-ship import`.
pub fn main(args: ImportArgs) -> Result<()> {
    if !args.dry_run && !args.keys.is_empty() {
        // A key without --dry-run would otherwise be ignored while a real import runs.
        bail!(
            "unexpected argument {:?}: keys are for --dry-run (rin-ship import --config FILE \
             --dry-run KEY...)",
            args.keys[0]
        );
    }
    let cfg = RinConfig::load_from(&args.config)?;
    if args.dry_run {
        return super::dry_run::print(&cfg, &args.keys);
    }
    cfg.require_queue()
        .with_context(|| format!("Rin config {}", args.config))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rin-import")
        .build()?
        .block_on(run(Arc::new(cfg), args))
}

async fn run(cfg: Arc<RinConfig>, args: ImportArgs) -> Result<()> {
    let health = super::readiness::serve_metrics(&cfg).await?;
    let queue = open_queue(&cfg).await?;
    info!(queue = %queue.describe(), warehouse = ?cfg.ext.warehouse, targets = cfg.targets.len(), "importer starting");
    for t in &cfg.targets {
        info!("target {}: {}", t.index, t.describe());
    }
    let mut loader = Loader::over_s3(cfg.clone()).await;
    if let Some(health) = &health {
        loader.health = health.clone();
    }
    let loader = Arc::new(loader);
    let (stop, stopping) = shutdown::channel();
    if health.is_some() {
        tokio::spawn(super::readiness::watch(
            loader.clone(),
            queue.clone(),
            stopping.clone(),
        ));
    }
    shutdown::trigger_on_signal(stop.clone(), "finishing the loads in flight, then exiting");
    if let Some(limit) = args.max_execution_time {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            info!("max execution time reached: finishing the loads in flight, then exiting");
            stop.trigger();
        });
    }
    // Returns at once unless rin_ship.maintenance.enabled_in_import is set.
    let maintenance = tokio::spawn(crate::ops::maintain::run_in_background(
        cfg.clone(),
        stopping.clone(),
    ));
    let until = match (args.batch, args.drain) {
        (false, _) => Until::Stopped,
        (true, false) => Until::Empty,
        (true, true) => Until::Drained,
    };
    let result = consume(loader.clone(), queue, stopping, until).await;
    stop.trigger(); // with --batch nothing else stops maintenance
    let _ = maintenance.await;
    println!("{}", loader.stats.json());
    info!(summary = %loader.stats.json(), "importer stopped");
    result
}

/// The SQS queue of the config (`rin_ship.queue_url`, else Rin's `queue_name`).
async fn open_queue(cfg: &RinConfig) -> Result<Queue> {
    let shared = crate::common::aws::sdk_config(&cfg.aws_settings()).await;
    let client = crate::common::aws::sqs_client(&shared, Some(cfg.ext.sqs_endpoint.as_str()));
    Ok(Queue::Sqs(
        sqs::Queue::open(client, cfg.queue_name_or_url()).await?,
    ))
}
