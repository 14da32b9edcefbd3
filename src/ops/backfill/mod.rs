//! `rin-ship backfill`: loads the objects already under an S3 prefix (written before the bucket
//! notification existed, or whose messages expired in a dead-letter queue) through the same
//! routing, ledger and transaction as `rin-ship import` ([`load_objects`]), so a backfill
//! after, or during, live loading loads nothing twice.
//!
//! Owns: listing (ListObjectVersions, so that on a versioned bucket the ledger key carries the
//! version id a live event's does; ListObjectsV2 where that call is not allowed), the
//! LastModified window, batching, the progress display and the summary line.
//!
//! Must never: load an object outside the ledger transaction; print a secret; draw the progress
//! bar anywhere but a terminal's stderr (stdout carries only the summary, or the dry-run list).

mod list;
mod progress;

use crate::common::shutdown;
use crate::load::Loader;
use crate::load::deliver::load_objects;
use crate::load::rin::{MatchOutcome, RinConfig};
use crate::load::stats::get;
use crate::load::warehouse::Sessions;
use crate::queue::event::ObjectEvent;
use crate::store::s3::Buckets;
use crate::telemetry::progress::BarWriter;
use anyhow::{Result, anyhow};
use chrono::{DateTime, NaiveDate, Utc};
use list::{Listing, list};
use progress::{Display, Progress};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tracing::{error, info, warn};

/// Objects per call to the loader: one transaction (one COPY over one manifest, on Redshift)
/// per destination table. 10 is what one SQS receive hands `rin-ship import`, so a backfill
/// holds the ledger lock (which serializes every importer on the warehouse) about as long as a
/// live batch does and live loading keeps flowing beside it; a failed batch is retried object
/// by object, so one bad object costs at most this many extra loads. Raise it for a large
/// Redshift backfill with no live importer running: bigger COPYs use the slices better.
pub const DEFAULT_BATCH_OBJECTS: usize = 10;

/// Command-line options of `rin-ship backfill`.
#[derive(Debug, Clone)]
pub struct BackfillArgs {
    /// Rin config location (as `import --config`).
    pub config: String,
    /// `s3://bucket/prefix`.
    pub prefix: String,
    /// Objects last modified at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Objects last modified before this instant.
    pub until: Option<DateTime<Utc>>,
    pub batch_objects: usize,
    pub dry_run: bool,
}

/// `--since` / `--until`: RFC 3339 (`2024-05-01T12:00:00Z`, any offset) or `YYYY-MM-DD`
/// (midnight UTC of that day).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(format!(
        "{s:?}: expected RFC 3339 (2024-05-01T12:00:00Z) or a date (2024-05-01, midnight UTC)"
    ))
}

/// `--batch-objects`: at least 1.
pub fn parse_batch_objects(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?}: expected a whole number of objects, at least 1"
        )),
    }
}

/// `s3://bucket/prefix` (the prefix may be empty) -> (bucket, prefix).
pub fn parse_prefix(s: &str) -> Result<(String, String)> {
    let rest = s
        .strip_prefix("s3://")
        .ok_or_else(|| anyhow!("--prefix {s:?}: expected s3://bucket/prefix"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(anyhow!("--prefix {s:?}: no bucket"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Logging for `rin-ship backfill`: as everywhere (stderr, `RIN_SHIP_LOG`, default `info`), but
/// each line is written with the progress bar lifted, so the bar stays whole below the log.
pub fn init_logging(settings: &crate::telemetry::LogSettings) -> Result<()> {
    crate::telemetry::init_logging_to(settings, || BarWriter)
}

/// `rin-ship backfill`.
pub fn main(args: BackfillArgs) -> Result<()> {
    let cfg = RinConfig::load_from(&args.config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rin-backfill")
        .build()?
        .block_on(run(Arc::new(cfg), args))
}

async fn run(cfg: Arc<RinConfig>, args: BackfillArgs) -> Result<()> {
    let (bucket, prefix) = parse_prefix(&args.prefix)?;
    if let (Some(s), Some(u)) = (args.since, args.until)
        && s >= u
    {
        return Err(anyhow!(
            "--since {s} is not before --until {u}: nothing to load"
        ));
    }
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    let display = Display::start(&bucket, &prefix, progress.clone(), started);
    let loader = Loader::over_s3(cfg.clone()).await;
    let Buckets(s3) = match &loader.objects {
        crate::store::Objects::S3(b) => b.clone(),
        crate::store::Objects::Local(_) => unreachable!("Loader::over_s3 reads S3"),
    };
    let listing = list(&s3, &bucket, &prefix, &args, &progress).await;
    progress.listing_done.store(true, Ordering::Relaxed);
    let listing = match listing {
        Ok(l) => l,
        Err(e) => {
            display.finish();
            return Err(e);
        }
    };
    report_listing(&bucket, &prefix, &listing, &progress);
    if args.dry_run {
        display.finish();
        dry_run(&cfg, &bucket, &listing);
        return Ok(());
    }
    display.loading(&progress);
    let outcome = load_listing(
        &loader,
        &bucket,
        &listing,
        args.batch_objects,
        &progress,
        &display,
    )
    .await;
    display.finish();
    summarize(&loader, &bucket, &listing, &progress, &outcome, started)
}

/// Logs what the listing found and sets the totals the progress counts down from.
fn report_listing(bucket: &str, prefix: &str, listing: &Listing, progress: &Progress) {
    let total_bytes: u64 = listing.selected.iter().map(|o| o.size).sum();
    progress
        .total_objects
        .store(listing.selected.len() as u64, Ordering::Relaxed);
    progress.total_bytes.store(total_bytes, Ordering::Relaxed);
    info!(
        listed = listing.listed,
        selected = listing.selected.len(),
        bytes = total_bytes,
        outside_window = listing.outside_window,
        folders = listing.folders,
        "backfill: listed s3://{bucket}/{prefix}"
    );
}

/// What the loading left: the keys that failed, and whether a signal cut it short.
struct Outcome<'a> {
    failed_keys: Vec<&'a str>,
    interrupted: bool,
}

/// Loads the selected objects, `batch_objects` per call to the loader, until done or a signal
/// (the batch in flight finishes; a second signal exits at once, rolling it back).
async fn load_listing<'a>(
    loader: &Loader,
    bucket: &str,
    listing: &'a Listing,
    batch_objects: usize,
    progress: &Progress,
    display: &Display,
) -> Outcome<'a> {
    let stop = Arc::new(AtomicBool::new(false));
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            for n in 0.. {
                shutdown::signal().await;
                if n > 0 {
                    // The batch in flight rolls back: nothing half-loaded stays.
                    eprintln!("rin-ship: interrupted twice: exiting now");
                    std::process::exit(130);
                }
                warn!("signal received: finishing the batch in flight, then stopping");
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let st = &loader.stats;
    let mut sessions = Sessions::default();
    let mut out = Outcome {
        failed_keys: Vec::new(),
        interrupted: false,
    };
    for chunk in listing.selected.chunks(batch_objects.max(1)) {
        if stop.load(Ordering::Relaxed) {
            out.interrupted = true;
            break;
        }
        let objects: Vec<(ObjectEvent, usize, &str)> = chunk
            .iter()
            .enumerate()
            .map(|(i, o)| (o.event(bucket), i, "backfill"))
            .collect();
        let mut failed = vec![false; chunk.len()];
        load_objects(loader, &mut sessions, objects, &mut failed).await;
        for (o, f) in chunk.iter().zip(&failed) {
            if *f {
                out.failed_keys.push(&o.key);
            }
        }
        let p = progress;
        p.done_objects
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        p.done_bytes
            .fetch_add(chunk.iter().map(|o| o.size).sum::<u64>(), Ordering::Relaxed);
        p.failed
            .store(out.failed_keys.len() as u64, Ordering::Relaxed);
        p.loaded.store(get(&st.loaded_objects), Ordering::Relaxed);
        p.duplicates.store(get(&st.duplicates), Ordering::Relaxed);
        p.rows.store(get(&st.loaded_rows), Ordering::Relaxed);
        display.update(p);
    }
    signals.abort();
    out
}

/// Prints the summary line; an error when objects failed or the run was cut short.
fn summarize(
    loader: &Loader,
    bucket: &str,
    listing: &Listing,
    progress: &Progress,
    outcome: &Outcome<'_>,
    started: Instant,
) -> Result<()> {
    let st = &loader.stats;
    let summary = serde_json::json!({
        "listed": listing.listed,
        "selected": listing.selected.len(),
        "outside_window": listing.outside_window,
        "folders": listing.folders,
        "processed": get(&progress.done_objects),
        "loaded": get(&st.loaded_objects),
        "duplicates": get(&st.duplicates),
        "failed": outcome.failed_keys.len(),
        "quarantined": get(&st.quarantined),
        "rows": get(&st.loaded_rows),
        "bytes": get(&progress.done_bytes),
        "no_target": get(&st.no_target),
        "discarded": get(&st.discarded),
        "gone": get(&st.gone),
        "invalid_identifier": get(&st.invalid_identifier),
        "interrupted": outcome.interrupted,
        "elapsed_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
    .to_string();
    println!("{summary}");
    info!(summary = %summary, "backfill done");
    let failed = &outcome.failed_keys;
    if !failed.is_empty() {
        for k in failed.iter().take(20) {
            error!(object = %format!("s3://{bucket}/{k}"), "not loaded (see the errors above)");
        }
        if failed.len() > 20 {
            error!("... and {} more", failed.len() - 20);
        }
        return Err(anyhow!(
            "{} object(s) could not be loaded; run the same backfill again to retry them \
             (objects already loaded are skipped by the ledger)",
            failed.len()
        ));
    }
    if outcome.interrupted {
        return Err(anyhow!(
            "interrupted after {} of {} objects; run the same backfill again to finish",
            get(&progress.done_objects),
            listing.selected.len()
        ));
    }
    Ok(())
}

/// Prints, for every selected object, where it would load (nothing is loaded, the warehouse is
/// not contacted: objects already in the ledger are listed too, and would be skipped).
fn dry_run(cfg: &RinConfig, bucket: &str, listing: &Listing) {
    for t in &cfg.targets {
        println!("target {}: {}", t.index, t.describe());
    }
    let (mut would_load, mut no_target, mut discarded, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    let mut bytes = 0u64;
    for o in &listing.selected {
        let modified = o.modified.map_or("-".to_string(), |m| {
            m.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        let head = format!(
            "s3://{bucket}/{} ({} bytes, {modified}{})",
            o.key,
            o.size,
            if o.version_id.is_empty() {
                String::new()
            } else {
                format!(", version {}", o.version_id)
            }
        );
        match cfg.route(bucket, &o.key) {
            Err(e) => {
                rejected += 1;
                println!("{head} => rejected: {e}");
            }
            Ok(MatchOutcome::NoTarget) => {
                no_target += 1;
                println!("{head} => no target");
            }
            Ok(MatchOutcome::Discarded) => {
                discarded += 1;
                println!("{head} => discarded");
            }
            Ok(MatchOutcome::Load(dests)) => {
                would_load += 1;
                bytes += o.size;
                let to: Vec<String> = dests
                    .iter()
                    .map(|d| format!("target {} {}", d.target, d.qualified()))
                    .collect();
                println!("{head} => {}", to.join(", "));
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "dry_run": true,
            "listed": listing.listed,
            "selected": listing.selected.len(),
            "outside_window": listing.outside_window,
            "folders": listing.folders,
            "would_load": would_load,
            "bytes": bytes,
            "no_target": no_target,
            "discarded": discarded,
            "rejected": rejected,
        })
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2024-05-01").unwrap().to_rfc3339(),
            "2024-05-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2024-05-01T14:00:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2024-05-01T12:00:00+00:00"
        );
        assert_eq!(
            parse_time("2024-05-01T12:00:00.5Z")
                .unwrap()
                .timestamp_millis()
                % 1000,
            500
        );
        assert!(parse_time("2024-05-01 12:00").is_err());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("s3://b/logs/app/").unwrap(),
            ("b".into(), "logs/app/".into())
        );
        assert_eq!(parse_prefix("s3://b").unwrap(), ("b".into(), "".into()));
        assert_eq!(parse_prefix("s3://b/").unwrap(), ("b".into(), "".into()));
        assert!(parse_prefix("b/logs").is_err());
        assert!(parse_prefix("s3:///logs").is_err());
        assert_eq!(parse_batch_objects("1"), Ok(1));
        assert!(parse_batch_objects("0").is_err());
    }
}
