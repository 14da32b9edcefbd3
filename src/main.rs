//! The `rin-ship` command line: parses the arguments and runs one command of the library
//! ([`rin_ship`]), whose modules hold the pipeline.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use rin_ship::{common, config, load, ops, pipeline, sync, telemetry};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rin-ship",
    version = telemetry::LONG_VERSION,
    about = "Ship logs from fluentd, fluent-bit and Vector to S3 and Redshift, exactly once"
)]
struct Cli {
    /// Which log lines to write (stderr): a level (error, warn, info, debug, trace) or
    /// directives such as `info,rin_ship=debug`.
    #[arg(long, global = true, env = "RIN_SHIP_LOG", value_name = "FILTER")]
    log_level: Option<String>,
    /// How to write log lines: text, or one JSON object per line (for log collectors).
    #[arg(
        long,
        global = true,
        env = "RIN_SHIP_LOG_FORMAT",
        value_enum,
        value_name = "FORMAT"
    )]
    log_format: Option<telemetry::LogFormat>,
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
    /// Check a config file and print the effective configuration, then exit. An import (Rin)
    /// config is recognised by its keys (`queue_name`, `redshift`, ...), or with --import.
    CheckConfig {
        #[arg(long, short, env = "RIN_SHIP_CONFIG")]
        config: Option<PathBuf>,
        /// The file is an import config (`rin-ship import`'s Rin config); without -c, RIN_CONFIG
        /// or ./config.yaml, as `import` finds it.
        #[arg(long)]
        import: bool,
    },
    /// Run one SQL statement on the embedded warehouse (<data_dir>/warehouse.db, read-only)
    /// and print the rows: a header, then tab-separated values.
    Query {
        /// The statement, e.g. 'SELECT * FROM "app.web"'.
        sql: String,
        /// serve's config file, for its data_dir (default ./rin-data).
        #[arg(long, short, env = "RIN_SHIP_CONFIG")]
        config: Option<PathBuf>,
        /// The data folder (instead of the config's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// One JSON object per row instead.
        #[arg(long)]
        json: bool,
    },
    /// The COPY stage: load the objects named by S3 events on SQS into Redshift or PostgreSQL,
    /// exactly once. Takes a Rin config file (plus rin-ship's `rin_ship:` keys).
    #[cfg(all(feature = "s3", feature = "sqs"))]
    Import {
        /// Rin YAML config: a local path, an http(s):// URL or s3://bucket/key (Rin's default:
        /// ./config.yaml).
        #[arg(long, short, env = "RIN_CONFIG", default_value = "config.yaml")]
        config: String,
        /// Exit once the queue is empty (after a long poll that found nothing).
        #[arg(long, env = "RIN_BATCH", value_parser = load::rin::flags::parse_rin_bool)]
        batch: bool,
        /// With --batch: exit only once the queue holds nothing, visible or in flight (messages
        /// another consumer received and neither deleted nor let go, e.g. one that was
        /// killed, come back when their visibility timeout ends and are loaded too). Bound it
        /// with --max-execution-time: a message that fails every time keeps it waiting.
        #[arg(long, requires = "batch")]
        drain: bool,
        /// Stop receiving after this long (e.g. 10m), finish the loads in flight, exit.
        #[arg(long, env = "RIN_MAX_EXECUTION_TIME", value_parser = common::units::parse_duration)]
        max_execution_time: Option<std::time::Duration>,
        /// Load nothing: list the targets (as Rin's -dry-run), and for each KEY given where it
        /// would load and the whole transaction that would run (secrets masked), then exit.
        #[arg(long, env = "RIN_DRY_RUN", value_parser = load::rin::flags::parse_rin_bool)]
        dry_run: bool,
        /// Keys for --dry-run: `s3://bucket/key`, or a key in the first target's bucket.
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
        /// Debug logging for rin-ship (as `RIN_SHIP_LOG=debug`, for rin-ship's own logs).
        #[arg(long, env = "RIN_DEBUG", value_parser = load::rin::flags::parse_rin_bool)]
        debug: bool,
        /// Run as an AWS Lambda function for SQS events (custom runtime; docs/lambda.md).
        /// Automatic when AWS_LAMBDA_RUNTIME_API is set. A dry run is never the handler. Needs
        /// a build with `--features lambda`.
        #[arg(long)]
        lambda: bool,
    },
    /// Load the objects already under an S3 prefix through the same ledger as `import` (a
    /// backfill after live loading duplicates nothing); a JSON summary line at the end.
    #[cfg(all(feature = "s3", feature = "sqs"))]
    Backfill {
        /// Rin YAML config: a local path, an http(s):// URL or s3://bucket/key.
        #[arg(long, short, env = "RIN_CONFIG")]
        config: String,
        /// The objects to load: s3://bucket/prefix (each routed by the config's targets).
        #[arg(long)]
        prefix: String,
        /// Only objects last modified at or after this (RFC 3339, or YYYY-MM-DD: midnight UTC).
        #[arg(long, value_parser = ops::backfill::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only objects last modified before this (RFC 3339, or YYYY-MM-DD: midnight UTC).
        #[arg(long, value_parser = ops::backfill::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Objects per load transaction (per COPY manifest on Redshift).
        #[arg(long, default_value_t = ops::backfill::DEFAULT_BATCH_OBJECTS,
              value_parser = ops::backfill::parse_batch_objects)]
        batch_objects: usize,
        /// List the objects that would load and their targets; load nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy tables from MySQL/Aurora/MariaDB or PostgreSQL into the warehouse, incrementally
    /// (a watermark column), through the same objects and ledger as logs (docs/sync.md). Runs
    /// a pass every `every:` until SIGTERM; --once runs one and prints a JSON summary.
    Sync {
        /// sync.yaml: source, warehouse, store, tables.
        #[arg(long, short, env = "RIN_SHIP_SYNC_CONFIG")]
        config: PathBuf,
        /// One pass of every table, a JSON summary line, exit status 1 if a table failed.
        #[arg(long)]
        once: bool,
        /// Print each table's schema, the DDL of missing targets and what the next pass reads;
        /// write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the Rin config (JSON) that `rin-ship import -c` loads this sync's announced
        /// objects with (`store.notify: {sqs_queue_url: ...}`), then exit.
        #[arg(long)]
        import_config: bool,
    },
    /// A live view of a running `serve` or `import` from its /metrics (like `vector top`):
    /// events in and out, buffer fill and oldest chunk, uploads and loads with latencies and
    /// errors. Ctrl-C quits.
    Top {
        /// Its metrics endpoint: `metrics.bind` of serve, `rin_ship.metrics_bind` of import
        /// (host:port or an http:// URL; 0.0.0.0 means this machine).
        #[arg(default_value = "127.0.0.1:2021", env = "RIN_SHIP_METRICS_BIND")]
        addr: String,
        /// Time between scrapes (rates are over this).
        #[arg(long, default_value = "2s", value_parser = common::units::parse_duration)]
        interval: std::time::Duration,
        /// Print one view (rates over one interval) without clearing the screen, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Exit 0 when a running rin-ship answers on /healthz (with --ready: /readyz), else 1: a
    /// container HEALTHCHECK that needs no curl.
    Health {
        /// Its metrics endpoint (host:port or an http:// URL; 0.0.0.0 means this machine).
        #[arg(default_value = "127.0.0.1:2021", env = "RIN_SHIP_METRICS_BIND")]
        addr: String,
        /// Ask /readyz instead (not ready: the buffer is at its quota, or import cannot reach
        /// its queue or warehouse).
        #[arg(long)]
        ready: bool,
    },
    /// Table maintenance: VACUUM / ANALYZE the loaded tables when their statistics call for it
    /// (Rin config, `rin_ship.maintenance:`), every `interval` until SIGTERM.
    Maintain {
        /// Rin YAML config file.
        #[arg(long, short, env = "RIN_CONFIG")]
        config: PathBuf,
        /// One round, then exit.
        #[arg(long)]
        once: bool,
        /// Print the statements a round would run (it reads the statistics), run nothing, exit.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `import --lambda` (or AWS_LAMBDA_RUNTIME_API set): the Lambda handler.
#[cfg(feature = "lambda")]
fn lambda_import(config: String, batch: bool) -> anyhow::Result<()> {
    load::lambda::main(config, batch)
}

#[cfg(all(feature = "s3", feature = "sqs", not(feature = "lambda")))]
fn lambda_import(_config: String, _batch: bool) -> anyhow::Result<()> {
    Err(anyhow::anyhow!(
        "this rin-ship was built without the Lambda handler (AWS_LAMBDA_RUNTIME_API is set, or \
         --lambda): build it with `cargo build --release --features lambda`"
    ))
}

/// Whether `check-config -c FILE` names an import (Rin) config rather than serve's.
fn is_import_config(config: &Option<PathBuf>) -> bool {
    config.as_deref().is_some_and(|p| {
        let text = p.to_str().unwrap_or_default();
        // serve reads local files only: a URL is an import config (Rin's -config takes one).
        ["http://", "https://", "s3://", "file://"]
            .iter()
            .any(|s| text.starts_with(s))
            || std::fs::read_to_string(p).is_ok_and(|t| load::rin::check::is_import_config(&t))
    })
}

/// `check-config` of an import config: loaded as `rin-ship import` loads it, then reported.
fn check_import_config(config: Option<PathBuf>) -> anyhow::Result<()> {
    let location = config
        .map(|p| p.to_string_lossy().into_owned())
        .or_else(|| std::env::var("RIN_CONFIG").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "config.yaml".to_string());
    #[cfg(all(feature = "s3", feature = "sqs"))]
    let cfg = load::rin::RinConfig::load_from_quietly(&location)?;
    #[cfg(not(all(feature = "s3", feature = "sqs")))]
    let cfg = load::rin::RinConfig::load_quietly(std::path::Path::new(&location))?;
    for line in load::rin::check::report(&cfg) {
        println!("{line}");
    }
    Ok(())
}

fn main() -> ExitCode {
    // A Lambda custom runtime's `bootstrap`, started with no arguments: the handler, with the
    // config from RIN_CONFIG.
    #[cfg(feature = "lambda")]
    if let Some(result) = load::lambda::bootstrap() {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rin-ship: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let matches = Cli::command().get_matches_from(load::rin::flags::rin_flags(std::env::args_os()));
    let config_from_env = matches.subcommand().is_some_and(|(_, sub)| {
        sub.ids().any(|id| id.as_str() == "config")
            && sub.value_source("config") == Some(clap::parser::ValueSource::EnvVariable)
    });
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    #[cfg(all(feature = "s3", feature = "sqs"))]
    let debug = matches!(cli.command, Command::Import { debug: true, .. });
    #[cfg(not(all(feature = "s3", feature = "sqs")))]
    let debug = false;
    let logging = telemetry::LogSettings {
        filter: cli.log_level.clone(),
        format: cli.log_format,
        debug,
    };
    let logging = match &cli.command {
        // Log lines are written around their progress bars.
        #[cfg(all(feature = "s3", feature = "sqs"))]
        Command::Backfill { .. } => ops::backfill::init_logging(&logging),
        Command::Sync { .. } => {
            telemetry::init_logging_to(&logging, || telemetry::progress::BarWriter)
        }
        _ => telemetry::init_logging(&logging),
    };
    if let Err(e) = logging {
        eprintln!("rin-ship: error: {e:#}");
        return ExitCode::from(2);
    }
    let load_config = |path: Option<&Path>| load_config(path, config_from_env);
    let result = match cli.command {
        Command::Serve { config } => load_config(config.as_deref()).and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("rin-ship")
                .build()?
                .block_on(pipeline::serve(config))
        }),
        Command::Query {
            sql,
            config,
            data_dir,
            json,
        } => data_dir
            .map(Ok)
            .unwrap_or_else(|| load_config(config.as_deref()).map(|c| c.data_dir))
            .and_then(|dir| {
                let mut out = std::io::stdout().lock();
                ops::query::run(&dir.join("warehouse.db"), &sql, json, &mut out)
            }),
        Command::CheckConfig { config, import } if import || is_import_config(&config) => {
            check_import_config(config)
        }
        Command::CheckConfig { config, .. } => load_config(config.as_deref()).map(|c| {
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
            drain,
            max_execution_time,
            dry_run,
            keys,
            debug: _,
            lambda,
        } => {
            // A dry run is never the handler: it must load nothing, wherever it runs.
            if !dry_run
                && (lambda || std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some())
                && keys.is_empty()
            {
                lambda_import(config, batch)
            } else {
                load::import::main(load::import::ImportArgs {
                    config,
                    batch,
                    drain,
                    max_execution_time,
                    dry_run,
                    keys,
                })
            }
        }
        #[cfg(all(feature = "s3", feature = "sqs"))]
        Command::Backfill {
            config,
            prefix,
            since,
            until,
            batch_objects,
            dry_run,
        } => ops::backfill::main(ops::backfill::BackfillArgs {
            config,
            prefix,
            since,
            until,
            batch_objects,
            dry_run,
        }),
        Command::Top {
            addr,
            interval,
            once,
        } => ops::top::main(&addr, interval, once),
        Command::Health { addr, ready } => ops::top::health(&addr, ready),
        Command::Sync {
            config,
            once,
            dry_run,
            import_config,
        } => sync::main(sync::SyncArgs {
            config,
            once,
            dry_run,
            import_config,
        }),
        Command::Maintain {
            config,
            once,
            dry_run,
        } => ops::maintain::main(ops::maintain::MaintainArgs {
            config,
            once,
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

/// serve's config ([`config::Config::load`]); an error says so when the path came from
/// `RIN_SHIP_CONFIG` rather than the command line (a stale variable is easy to forget).
fn load_config(path: Option<&Path>, from_env: bool) -> anyhow::Result<config::Config> {
    config::Config::load(path).map_err(|e| match path {
        Some(p) if from_env => e.context(format!(
            "RIN_SHIP_CONFIG={} (set in the environment; unset it or pass --config FILE)",
            p.display()
        )),
        _ => e,
    })
}

#[cfg(all(test, feature = "s3", feature = "sqs"))]
mod tests {
    use super::*;

    #[test]
    fn rin_flags_parse() {
        let cli = Cli::try_parse_from(load::rin::flags::rin_flags(
            [
                "rin-ship",
                "import",
                "-config",
                "https://h/c.yaml?sig=x",
                "-batch",
                "-debug",
                "-max-execution-time",
                "10m",
            ]
            .map(std::ffi::OsString::from),
        ))
        .unwrap();
        let Command::Import {
            config,
            batch,
            max_execution_time,
            debug,
            dry_run,
            keys,
            ..
        } = cli.command
        else {
            panic!("not import");
        };
        assert_eq!(config, "https://h/c.yaml?sig=x");
        assert!(batch && debug && !dry_run && keys.is_empty());
        assert_eq!(
            max_execution_time,
            Some(std::time::Duration::from_secs(600))
        );
    }
}
