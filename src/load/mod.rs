//! The load stage: object-created events arrive on a queue; each object is loaded, exactly
//! once, into the warehouse table its key maps to (Rin-compatible config and matching).
//!
//! Layers, each only calling down:
//! - the commands: [`import`] (`rin-ship import`: SQS), [`lambda`] (the same as an AWS Lambda
//!   handler), [`embedded`] (`serve`'s loader over the local queue); `ops::backfill` and
//!   `ops::maintain` sit on top too; [`dry_run`] is what `import` and `lambda` show instead of
//!   loading;
//! - [`readiness`]: import's `/metrics` and `/readyz` (can it reach its queue and warehouse);
//! - [`consume`]: the queue loop (receive, keep invisible while loading, delete what committed);
//! - [`deliver`]: messages to objects to groups (routing), and each group's load with retries,
//!   quarantine and splitting;
//! - [`warehouse`]: the interface every warehouse implements, one folder each;
//! - [`ledger`]: the exactly-once contract and failure classification, the same for all;
//! - [`rin`]: the config.
//!
//! Must never: delete a message before the load of every record in it committed (or was found
//! in the ledger); delete a message it could not parse (it is left for the dead-letter queue);
//! COPY from a bare key (a prefix) instead of a manifest; expand an object key into SQL other
//! than as a validated, quoted identifier; print a secret.

pub mod consume;
pub mod deliver;
#[cfg(all(feature = "s3", feature = "sqs"))]
pub mod dry_run;
pub mod embedded;
#[cfg(all(feature = "s3", feature = "sqs"))]
pub mod import;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod ledger;
#[cfg(all(feature = "s3", feature = "sqs"))]
pub mod readiness;
pub mod rin;
pub mod stats;
pub mod warehouse;

use crate::store::Objects;
use crate::telemetry::Health;
use rin::RinConfig;
use stats::Stats;
use std::sync::Arc;
use warehouse::{Drivers, Env};

/// What every load needs: the config, where objects are read, the drivers and the run's
/// counters. One per process; each worker keeps its own [`warehouse::Sessions`].
pub struct Loader {
    pub cfg: Arc<RinConfig>,
    pub objects: Objects,
    pub drivers: Drivers,
    pub stats: Stats,
    /// Whether the queue and the warehouse answer, as the loads see it (`import`'s `/readyz`;
    /// serve's embedded loader keeps it to itself).
    pub health: Health,
}

impl Loader {
    pub fn new(cfg: Arc<RinConfig>, objects: Objects) -> Loader {
        // Each warehouse's load latency exists from the start (zero observations).
        for t in cfg.targets.iter().filter(|t| !t.discard) {
            let _ = metrics::histogram!("rin_load_duration_seconds", "warehouse" => warehouse_label(t.driver));
        }
        Loader {
            drivers: Drivers::for_config(&cfg),
            cfg,
            objects,
            stats: Stats::default(),
            health: Health::quiet(),
        }
    }

    /// A loader reading objects from S3 (or the configured S3-compatible endpoint), with the
    /// config's AWS credentials: `rin-ship import`, backfill, the Lambda handler.
    #[cfg(feature = "s3")]
    pub async fn over_s3(cfg: Arc<RinConfig>) -> Loader {
        let shared = crate::common::aws::sdk_config(&cfg.aws_settings()).await;
        let s3 = crate::common::aws::s3_client(
            &shared,
            Some(cfg.ext.s3_endpoint.as_str()),
            cfg.ext.force_path_style,
        );
        // Temporary database passwords (`iam_auth`) come from the config's AWS credentials.
        #[cfg(feature = "redshift")]
        warehouse::redshift::iam::init(&cfg).await;
        Loader::new(cfg, Objects::S3(crate::store::s3::Buckets(s3)))
    }

    pub fn env(&self) -> Env<'_> {
        Env {
            cfg: &self.cfg,
            objects: &self.objects,
        }
    }
}

/// The `warehouse` label of a driver (`rin_load_duration_seconds`).
pub fn warehouse_label(kind: rin::DriverKind) -> &'static str {
    match kind {
        rin::DriverKind::Postgres => "postgres",
        rin::DriverKind::Redshift => "redshift",
        rin::DriverKind::RedshiftData => "redshift-data",
        rin::DriverKind::Sqlite => "sqlite",
    }
}
