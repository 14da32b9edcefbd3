//! rin-ship: a log-shipping sidecar and warehouse loader.
//!
//! The pipeline, one module per stage:
//! - [`intake`]: protocol servers (Fluent forward) that accept events and ack them once durable;
//! - [`buffer`]: events written once, on disk, as the final gzip NDJSON object bytes;
//! - [`ship`]: sealed chunks uploaded under deterministic keys to a folder or S3.
//!
//! Around them: [`config`] (YAML), [`route`] (tag patterns), [`transcode`] and [`msgpack`]
//! (the hot path), [`telemetry`] (logs, metrics), [`pipeline`] (wiring and shutdown).

mod buffer;
mod config;
mod intake;
#[cfg(all(feature = "s3", feature = "sqs"))]
mod load;
mod msgpack;
mod pipeline;
mod route;
mod ship;
mod telemetry;
mod tls;
mod transcode;
mod units;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rin-ship",
    version,
    about = "Ship logs from fluentd, fluent-bit and Vector to S3 and Redshift, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept logs (Fluent forward), buffer them as gzip NDJSON, upload sealed chunks.
    Serve {
        /// YAML config file; without one, embedded defaults run everything under ./rin-data.
        #[arg(long, short, env = "RIN_SHIP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a config file and print the effective configuration, then exit.
    CheckConfig {
        #[arg(long, short, env = "RIN_SHIP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The COPY stage: load the objects named by S3 events on SQS into Redshift or PostgreSQL,
    /// exactly once. Takes a Rin config file (plus rin-ship's `rin_ship:` keys).
    #[cfg(all(feature = "s3", feature = "sqs"))]
    Import {
        /// Rin YAML config file.
        #[arg(long, short, env = "RIN_CONFIG")]
        config: PathBuf,
        /// Exit once the queue is empty (after a long poll that found nothing).
        #[arg(long, env = "RIN_BATCH")]
        batch: bool,
        /// Stop receiving after this long (e.g. 10m), finish the loads in flight, exit.
        #[arg(long, env = "RIN_MAX_EXECUTION_TIME", value_parser = units::parse_duration)]
        max_execution_time: Option<std::time::Duration>,
        /// Print the target and the exact SQL (secrets masked) for these keys
        /// (`s3://bucket/key`, or a key in the first target's bucket), then exit.
        #[arg(long, num_args = 1.., value_name = "KEY")]
        dry_run: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging();
    let result = match cli.command {
        Command::Serve { config } => config::Config::load(config.as_deref()).and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("rin-ship")
                .build()?
                .block_on(pipeline::serve(config))
        }),
        Command::CheckConfig { config } => config::Config::load(config.as_deref()).map(|c| {
            println!(
                "config ok: {} target(s), {} store(s)",
                c.targets.len(),
                c.stores.len()
            );
            for t in &c.targets {
                println!(
                    "  target {}: match {:?} -> store {} key {}",
                    t.name, t.patterns, t.store, t.key
                );
            }
        }),
        #[cfg(all(feature = "s3", feature = "sqs"))]
        Command::Import {
            config,
            batch,
            max_execution_time,
            dry_run,
        } => load::main(load::ImportArgs {
            config,
            batch,
            max_execution_time,
            dry_run,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rin-ship: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
