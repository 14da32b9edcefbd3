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

use crate::common::shutdown;
use crate::load::Loader;
use crate::load::deliver::load_objects;
use crate::load::rin::{MatchOutcome, RinConfig};
use crate::load::stats::get;
use crate::load::warehouse::Sessions;
use crate::queue::event::ObjectEvent;
use crate::store::s3::Buckets;
use anyhow::{Result, anyhow};
use aws_sdk_s3::error::DisplayErrorContext;
use chrono::{DateTime, NaiveDate, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Objects per call to the loader: one transaction (one COPY over one manifest, on Redshift)
/// per destination table. 10 is what one SQS receive hands `rin-ship import`, so a backfill
/// holds the ledger lock (which serializes every importer on the warehouse) about as long as a
/// live batch does and live loading keeps flowing beside it; a failed batch is retried object
/// by object, so one bad object costs at most this many extra loads. Raise it for a large
/// Redshift backfill with no live importer running: bigger COPYs use the slices better.
pub const DEFAULT_BATCH_OBJECTS: usize = 10;

/// How often progress is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

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

/// One object the listing found (the version that is current now).
#[derive(Debug, Clone)]
struct Listed {
    key: String,
    etag: String,
    version_id: String,
    size: u64,
    modified: Option<DateTime<Utc>>,
}

impl Listed {
    fn event(&self, bucket: &str) -> ObjectEvent {
        ObjectEvent {
            bucket: bucket.to_string(),
            key: self.key.clone(),
            etag: self.etag.clone(),
            version_id: self.version_id.clone(),
            size: self.size,
            event_name: "rin-ship:Backfill".to_string(),
            created: true,
        }
    }
}

#[derive(Debug, Default)]
struct Listing {
    /// Every object under the prefix.
    listed: u64,
    /// Left out by --since / --until.
    outside_window: u64,
    /// Zero-byte keys ending in `/` (console "folders").
    folders: u64,
    selected: Vec<Listed>,
}

fn when(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

fn in_window(args: &BackfillArgs, modified: Option<DateTime<Utc>>) -> bool {
    match modified {
        Some(m) => args.since.is_none_or(|s| m >= s) && args.until.is_none_or(|u| m < u),
        // No LastModified (never from S3): only an unbounded window takes it.
        None => args.since.is_none() && args.until.is_none(),
    }
}

/// Lists the objects under `bucket/prefix` in key order, keeping those in the window.
///
/// ListObjectVersions first: its current versions carry the version id a live event has on a
/// versioned bucket (and `null`, read as none, elsewhere), so the ledger key is the same.
/// Without `s3:ListBucketVersions` (or on a server without that call), ListObjectsV2: right
/// for an unversioned bucket, while on a versioned one objects loaded from events would load
/// again (warned).
async fn list(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    args: &BackfillArgs,
    progress: &Progress,
) -> Result<Listing> {
    let all = match list_versions(s3, bucket, prefix, progress).await {
        Ok(all) => all,
        Err((true, e)) => {
            warn!(
                "{e:#}; listing with ListObjectsV2 instead: objects get no version id, so on a \
                 versioned bucket the ones loaded from events (which carry one) would load again \
                 (grant s3:ListBucketVersions to avoid that)"
            );
            progress.listed.store(0, Ordering::Relaxed);
            list_current(s3, bucket, prefix, progress).await?
        }
        Err((false, e)) => return Err(e),
    };
    let mut out = Listing::default();
    for l in all {
        out.listed += 1;
        if l.size == 0 && l.key.ends_with('/') {
            out.folders += 1;
        } else if !in_window(args, l.modified) {
            out.outside_window += 1;
        } else {
            out.selected.push(l);
        }
    }
    Ok(out)
}

/// The current version of every object (ListObjectVersions); the error says whether it came
/// on the first page.
async fn list_versions(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    progress: &Progress,
) -> Result<Vec<Listed>, (bool, anyhow::Error)> {
    let mut out = Vec::new();
    // No paginator in the SDK for this one: KeyMarker / VersionIdMarker by hand.
    let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
    let mut first = true;
    loop {
        let page = s3
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .map_err(|e| {
                let e = anyhow!(
                    "ListObjectVersions s3://{bucket}/{prefix}: {}",
                    DisplayErrorContext(&e)
                );
                (first, e)
            })?;
        first = false;
        for v in page.versions() {
            if v.is_latest() != Some(true) {
                continue;
            }
            let version_id = match v.version_id() {
                // Written while versioning was off (or suspended): events carry no version id.
                None | Some("null") => String::new(),
                Some(id) => id.to_string(),
            };
            progress.listed.fetch_add(1, Ordering::Relaxed);
            out.push(Listed {
                key: v.key().unwrap_or_default().to_string(),
                etag: v.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                version_id,
                size: v.size().unwrap_or(0).max(0) as u64,
                modified: v.last_modified().and_then(when),
            });
        }
        if page.is_truncated() != Some(true) || page.next_key_marker().is_none() {
            return Ok(out);
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
    }
}

/// Every object, without version ids (ListObjectsV2).
async fn list_current(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    progress: &Progress,
) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            anyhow!(
                "ListObjectsV2 s3://{bucket}/{prefix}: {}",
                DisplayErrorContext(&e)
            )
        })?;
        for o in page.contents() {
            progress.listed.fetch_add(1, Ordering::Relaxed);
            out.push(Listed {
                key: o.key().unwrap_or_default().to_string(),
                etag: o.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                version_id: String::new(),
                size: o.size().unwrap_or(0).max(0) as u64,
                modified: o.last_modified().and_then(when),
            });
        }
    }
    Ok(out)
}

/// Counters the progress display and the periodic log line read.
#[derive(Default)]
struct Progress {
    listing_done: AtomicBool,
    listed: AtomicU64,
    total_objects: AtomicU64,
    total_bytes: AtomicU64,
    done_objects: AtomicU64,
    done_bytes: AtomicU64,
    loaded: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    rows: AtomicU64,
}

impl Progress {
    fn message(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{}/{} objects, {} rows, {} loaded, {} duplicates, {} failed",
            g(&self.done_objects),
            g(&self.total_objects),
            g(&self.rows),
            g(&self.loaded),
            g(&self.duplicates),
            g(&self.failed)
        )
    }

    /// The periodic log line (when stderr is not a terminal).
    fn log(&self, what: &str, elapsed: Duration) {
        if !self.listing_done.load(Ordering::Relaxed) {
            info!(
                listed = self.listed.load(Ordering::Relaxed),
                "backfill: listing {what}"
            );
        } else {
            let eta = self
                .eta(elapsed)
                .map_or("?".to_string(), |s| format!("{s}s"));
            info!(
                bytes = self.done_bytes.load(Ordering::Relaxed),
                total_bytes = self.total_bytes.load(Ordering::Relaxed),
                eta = %eta,
                "backfill: {}",
                self.message()
            );
        }
    }

    /// Seconds left, from the bytes done so far.
    fn eta(&self, elapsed: Duration) -> Option<u64> {
        let done = self.done_bytes.load(Ordering::Relaxed);
        let total = self.total_bytes.load(Ordering::Relaxed);
        (done > 0).then(|| {
            let left = total.saturating_sub(done) as f64;
            (elapsed.as_secs_f64() * left / done as f64).round() as u64
        })
    }
}

/// The progress bar, once drawn: log lines are written around it (see [`init_logging`]).
static BAR: OnceLock<ProgressBar> = OnceLock::new();

struct BarWriter;

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match BAR.get().filter(|b| !b.is_hidden() && !b.is_finished()) {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Logging for `rin-ship backfill`: as everywhere (stderr, `RIN_SHIP_LOG`, default `info`), but
/// each line is written with the progress bar lifted, so the bar stays whole below the log.
pub fn init_logging() {
    crate::telemetry::init_logging_to(false, || BarWriter);
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

/// The progress bar on a terminal (log lines are written around it), else a log line every
/// [`LOG_EVERY`].
struct Display {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Display {
    fn start(bucket: &str, prefix: &str, progress: Arc<Progress>, started: Instant) -> Display {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} listing s3://{prefix}: {pos} objects")
                    .expect("a valid template"),
            );
            bar.set_prefix(format!("{bucket}/{prefix}"));
            bar.enable_steady_tick(Duration::from_millis(200));
            let _ = BAR.set(bar.clone());
            bar
        } else {
            ProgressBar::hidden()
        };
        let ticker = {
            let bar = bar.clone();
            let what = format!("s3://{bucket}/{prefix}");
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                let mut last_log = Instant::now();
                loop {
                    tick.tick().await;
                    if terminal {
                        if !progress.listing_done.load(Ordering::Relaxed) {
                            bar.set_position(progress.listed.load(Ordering::Relaxed));
                        }
                        continue;
                    }
                    if last_log.elapsed() < LOG_EVERY {
                        continue;
                    }
                    last_log = Instant::now();
                    progress.log(&what, started.elapsed());
                }
            })
        };
        Display { bar, ticker }
    }

    /// From listing to loading: a bar over the bytes to load.
    fn loading(&self, progress: &Progress) {
        self.bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ETA {eta}\n  {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        self.bar
            .set_length(progress.total_bytes.load(Ordering::Relaxed).max(1));
        self.bar.set_position(0);
        self.bar.set_message(progress.message());
    }

    fn update(&self, progress: &Progress) {
        self.bar
            .set_position(progress.done_bytes.load(Ordering::Relaxed));
        self.bar.set_message(progress.message());
    }

    fn finish(&self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
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

    #[test]
    fn window() {
        let t = |s| parse_time(s).unwrap();
        let mut a = BackfillArgs {
            config: String::new(),
            prefix: String::new(),
            since: Some(t("2024-05-01")),
            until: Some(t("2024-05-02")),
            batch_objects: 10,
            dry_run: false,
        };
        assert!(in_window(&a, Some(t("2024-05-01"))));
        assert!(in_window(&a, Some(t("2024-05-01T23:59:59Z"))));
        assert!(!in_window(&a, Some(t("2024-05-02"))));
        assert!(!in_window(&a, Some(t("2024-04-30T23:59:59Z"))));
        assert!(!in_window(&a, None));
        a.since = None;
        a.until = None;
        assert!(in_window(&a, None));
    }
}
