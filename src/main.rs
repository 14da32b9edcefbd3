//! rin-ship: a log-shipping sidecar and warehouse loader.
//!
//! The pipeline, one module per stage:
//! - [`intake`]: protocol servers (Fluent forward) that accept events and ack them once durable;
//! - [`buffer`]: events written once, on disk, as the final gzip NDJSON object bytes;
//! - [`ship`]: sealed chunks uploaded under deterministic keys to a folder or S3.
//!
//! Around them: [`config`] (YAML), [`telemetry`] (logs, metrics), [`pipeline`] (wiring and
//! shutdown). The hot path (`intake::msgpack`, `intake::transcode`) and routing
//! (`intake::route`) live with the intake.

mod buffer;
mod common;
mod config;
mod intake;
#[cfg(all(feature = "s3", feature = "sqs"))]
mod load;
mod pipeline;
mod query;
mod queue_local;
mod ship;
mod telemetry;

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
        /// Rin YAML config: a local path, an http(s):// URL or s3://bucket/key.
        #[arg(long, short, env = "RIN_CONFIG")]
        config: String,
        /// Exit once the queue is empty (after a long poll that found nothing).
        #[arg(long, env = "RIN_BATCH", value_parser = clap::builder::BoolishValueParser::new())]
        batch: bool,
        /// Stop receiving after this long (e.g. 10m), finish the loads in flight, exit.
        #[arg(long, env = "RIN_MAX_EXECUTION_TIME", value_parser = common::units::parse_duration)]
        max_execution_time: Option<std::time::Duration>,
        /// Print the target and the exact SQL (secrets masked) for these keys
        /// (`s3://bucket/key`, or a key in the first target's bucket), then exit.
        #[arg(long, num_args = 1.., value_name = "KEY")]
        dry_run: Vec<String>,
        /// Debug logging for rin-ship (as `RIN_SHIP_LOG=debug`, for rin-ship's own logs).
        #[arg(long, env = "RIN_DEBUG", value_parser = clap::builder::BoolishValueParser::new())]
        debug: bool,
        /// Run as an AWS Lambda function for SQS events (custom runtime; docs/lambda.md).
        /// Automatic when AWS_LAMBDA_RUNTIME_API is set (except with --dry-run). Needs a build
        /// with `--features lambda`.
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
        #[arg(long, value_parser = load::backfill::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only objects last modified before this (RFC 3339, or YYYY-MM-DD: midnight UTC).
        #[arg(long, value_parser = load::backfill::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Objects per load transaction (per COPY manifest on Redshift).
        #[arg(long, default_value_t = load::backfill::DEFAULT_BATCH_OBJECTS,
              value_parser = load::backfill::parse_batch_objects)]
        batch_objects: usize,
        /// List the objects that would load and their targets; load nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Table maintenance: VACUUM / ANALYZE the loaded tables when their statistics call for it
    /// (Rin config, `rin_ship.maintenance:`), every `interval` until SIGTERM.
    #[cfg(all(feature = "s3", feature = "sqs"))]
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

/// Rin's long flags use Go's single dash (`-config x`, `-config=x`, `-batch`, `-batch=false`);
/// for `import`, these exact names become clap's `--` form. Nothing after `--` is touched, nor
/// the value of a flag that takes one.
fn rin_flags(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const VALUED: [&str; 2] = ["config", "max-execution-time"];
    const BOOLS: [&str; 2] = ["batch", "debug"];
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if args.get(1).and_then(|a| a.to_str()) != Some("import") {
        return args;
    }
    let rest = args.split_off(2);
    let mut skip_value = false;
    let mut rest = rest.into_iter();
    while let Some(arg) = rest.next() {
        let is_value = std::mem::take(&mut skip_value);
        let Some(s) = arg.to_str().filter(|_| !is_value) else {
            args.push(arg);
            continue;
        };
        if s == "--" {
            args.push(arg);
            args.extend(rest.by_ref());
            break;
        }
        let long = s.strip_prefix("--").or_else(|| s.strip_prefix('-'));
        let (name, value) = match long {
            Some(l) => l.split_once('=').map_or((l, None), |(n, v)| (n, Some(v))),
            None => (s, None),
        };
        if s.starts_with("--") || long.is_none() {
            // clap's own form: only note whether the next argument is this flag's value.
            skip_value = value.is_none() && (VALUED.contains(&name) || s == "-c");
            args.push(arg);
        } else if VALUED.contains(&name) {
            skip_value = value.is_none();
            args.push(format!("--{}", s.trim_start_matches('-')).into());
        } else if BOOLS.contains(&name) {
            // Go's strconv.ParseBool spellings.
            match value {
                None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => {
                    args.push(format!("--{name}").into())
                }
                Some("0" | "f" | "F" | "false" | "FALSE" | "False") => {}
                Some(_) => args.push(format!("-{s}").into()),
            }
        } else if name == "dry-run" && value.is_none() {
            args.push("--dry-run".into());
        } else {
            args.push(arg);
        }
    }
    args
}

/// `import --lambda` (or AWS_LAMBDA_RUNTIME_API set): the Lambda handler.
#[cfg(feature = "lambda")]
fn lambda_import(config: String) -> anyhow::Result<()> {
    load::lambda::main(config)
}

#[cfg(all(feature = "s3", feature = "sqs", not(feature = "lambda")))]
fn lambda_import(_config: String) -> anyhow::Result<()> {
    Err(anyhow::anyhow!(
        "this rin-ship was built without the Lambda handler (AWS_LAMBDA_RUNTIME_API is set, or \
         --lambda): build it with `cargo build --release --features lambda`"
    ))
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
    let cli = Cli::parse_from(rin_flags(std::env::args_os()));
    #[cfg(all(feature = "s3", feature = "sqs"))]
    let debug = matches!(cli.command, Command::Import { debug: true, .. });
    #[cfg(not(all(feature = "s3", feature = "sqs")))]
    let debug = false;
    match &cli.command {
        // Log lines are written around its progress bar.
        #[cfg(all(feature = "s3", feature = "sqs"))]
        Command::Backfill { .. } => load::backfill::init_logging(),
        _ => telemetry::init_logging(debug),
    }
    let result = match cli.command {
        Command::Serve { config } => config::Config::load(config.as_deref()).and_then(|config| {
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
            .unwrap_or_else(|| config::Config::load(config.as_deref()).map(|c| c.data_dir))
            .and_then(|dir| {
                let mut out = std::io::stdout().lock();
                query::run(&dir.join("warehouse.db"), &sql, json, &mut out)
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
            debug: _,
            lambda,
        } => {
            if lambda
                || (dry_run.is_empty() && std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some())
            {
                lambda_import(config)
            } else {
                load::main(load::ImportArgs {
                    config,
                    batch,
                    max_execution_time,
                    dry_run,
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
        } => load::backfill::main(load::backfill::BackfillArgs {
            config,
            prefix,
            since,
            until,
            batch_objects,
            dry_run,
        }),
        #[cfg(all(feature = "s3", feature = "sqs"))]
        Command::Maintain {
            config,
            once,
            dry_run,
        } => load::maintain::main(load::maintain::MaintainArgs {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        rin_flags(args.iter().map(Into::into))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn rin_single_dash_flags() {
        assert_eq!(
            rewrite(&[
                "rin-ship",
                "import",
                "-config",
                "x.yaml",
                "-batch",
                "-debug",
                "-max-execution-time",
                "10m"
            ]),
            [
                "rin-ship",
                "import",
                "--config",
                "x.yaml",
                "--batch",
                "--debug",
                "--max-execution-time",
                "10m"
            ]
        );
        assert_eq!(
            rewrite(&[
                "p",
                "import",
                "-config=s3://b/k",
                "-max-execution-time=1h",
                "-batch=true"
            ]),
            [
                "p",
                "import",
                "--config=s3://b/k",
                "--max-execution-time=1h",
                "--batch"
            ]
        );
        assert_eq!(
            rewrite(&["p", "import", "-batch=false", "-debug=0", "-config", "c"]),
            ["p", "import", "--config", "c"]
        );
        assert_eq!(
            rewrite(&["p", "import", "-c", "c", "-dry-run", "k1", "k2"]),
            ["p", "import", "-c", "c", "--dry-run", "k1", "k2"]
        );
        // A flag's value, clap's own forms, `--` and other names are left alone.
        assert_eq!(
            rewrite(&["p", "import", "--config", "-batch", "-config", "-debug"]),
            ["p", "import", "--config", "-batch", "--config", "-debug"]
        );
        assert_eq!(
            rewrite(&["p", "import", "--batch", "-h", "-configx", "--", "-batch"]),
            ["p", "import", "--batch", "-h", "-configx", "--", "-batch"]
        );
        // Only `import`.
        assert_eq!(
            rewrite(&["p", "serve", "-config", "c"]),
            ["p", "serve", "-config", "c"]
        );
        assert_eq!(rewrite(&["p"]), ["p"]);
    }

    #[test]
    fn rin_flags_parse() {
        let cli = Cli::try_parse_from(rin_flags(
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
            ..
        } = cli.command
        else {
            panic!("not import");
        };
        assert_eq!(config, "https://h/c.yaml?sig=x");
        assert!(batch && debug && dry_run.is_empty());
        assert_eq!(
            max_execution_time,
            Some(std::time::Duration::from_secs(600))
        );
    }
}
