//! `rin-ship import`: the loader as a daemon (or, with `--batch`, until the queue is empty)
//! over an SQS queue of S3 events, as Rin runs. Also `--dry-run KEY...`: where each key
//! would load and the statements that would run, contacting nothing.
//!
//! Must never: start loading before the metrics endpoint (when asked for) is up; exit before
//! the loads in flight finished (SIGTERM, `--max-execution-time`).

use super::Loader;
use super::consume::consume;
use super::rin::{MatchOutcome, RinConfig};
use super::warehouse::driver;
use crate::common::shutdown;
use crate::queue::{Queue, sqs};
use anyhow::{Result, anyhow};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Command-line options of `rin-ship import`.
#[derive(Debug, Clone)]
pub struct ImportArgs {
    /// A local path, an `http(s)://` URL or `s3://bucket/key` (as Rin's `-config`).
    pub config: String,
    pub batch: bool,
    pub max_execution_time: Option<Duration>,
    pub dry_run: Vec<String>,
}

/// `rin-ship import`.
pub fn main(args: ImportArgs) -> Result<()> {
    let cfg = RinConfig::load_from(&args.config)?;
    if !args.dry_run.is_empty() {
        return dry_run(&cfg, &args.dry_run);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rin-import")
        .build()?
        .block_on(run(Arc::new(cfg), args))
}

/// Prints the targets, then for each key where it loads and what would run.
fn dry_run(cfg: &RinConfig, keys: &[String]) -> Result<()> {
    for t in &cfg.targets {
        println!("target {}: {}", t.index, t.describe());
    }
    for arg in keys {
        let (bucket, key) = match arg.strip_prefix("s3://") {
            Some(rest) => {
                let (b, k) = rest
                    .split_once('/')
                    .ok_or_else(|| anyhow!("{arg}: expected s3://bucket/key"))?;
                (b.to_string(), k.to_string())
            }
            None => (
                cfg.targets
                    .first()
                    .map(|t| t.s3.bucket.clone())
                    .unwrap_or_default(),
                arg.clone(),
            ),
        };
        match cfg.route(&bucket, &key) {
            Err(e) => println!("s3://{bucket}/{key} => rejected: {e}"),
            Ok(MatchOutcome::NoTarget) => println!("s3://{bucket}/{key} => no target"),
            Ok(MatchOutcome::Discarded) => println!("s3://{bucket}/{key} => discarded"),
            Ok(MatchOutcome::Load(dests)) => {
                for d in dests {
                    let t = cfg.target(d.target);
                    println!(
                        "s3://{bucket}/{key} => target {} {} ({:?} {})",
                        d.target,
                        d.qualified(),
                        cfg.ext.warehouse,
                        t.redshift.visible_dsn()
                    );
                    let objects = [(bucket.as_str(), key.as_str())];
                    for line in driver(t.driver).dry_run(cfg, &d, &objects) {
                        println!("  {line}");
                    }
                }
            }
        }
    }
    Ok(())
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
    let result = consume(loader.clone(), queue, stopping, args.batch).await;
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
