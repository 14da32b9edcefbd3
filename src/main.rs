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
mod msgpack;
mod pipeline;
mod route;
mod ship;
mod telemetry;
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rin-ship: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
