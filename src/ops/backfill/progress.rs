//! What a backfill shows while it runs: a progress bar on a terminal's stderr (log lines are
//! written around it, `telemetry::progress::BarWriter`), else a log line every few seconds.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::info;

/// How often progress is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Counters the progress display and the periodic log line read.
#[derive(Default)]
pub struct Progress {
    pub listing_done: AtomicBool,
    pub listed: AtomicU64,
    pub total_objects: AtomicU64,
    pub total_bytes: AtomicU64,
    pub done_objects: AtomicU64,
    pub done_bytes: AtomicU64,
    pub loaded: AtomicU64,
    pub duplicates: AtomicU64,
    pub failed: AtomicU64,
    pub rows: AtomicU64,
}

impl Progress {
    pub fn message(&self) -> String {
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
    pub fn log(&self, what: &str, elapsed: Duration) {
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

/// The progress bar on a terminal (log lines are written around it), else a log line every
/// [`LOG_EVERY`].
pub struct Display {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Display {
    pub fn start(bucket: &str, prefix: &str, progress: Arc<Progress>, started: Instant) -> Display {
        let terminal_bar = crate::telemetry::progress::terminal_bar();
        let terminal = terminal_bar.is_some();
        let bar = if let Some(bar) = terminal_bar {
            bar.set_style(
                ProgressStyle::with_template("{spinner} listing s3://{prefix}: {pos} objects")
                    .expect("a valid template"),
            );
            bar.set_prefix(format!("{bucket}/{prefix}"));
            bar.enable_steady_tick(Duration::from_millis(200));
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
    pub fn loading(&self, progress: &Progress) {
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

    pub fn update(&self, progress: &Progress) {
        self.bar
            .set_position(progress.done_bytes.load(Ordering::Relaxed));
        self.bar.set_message(progress.message());
    }

    pub fn finish(&self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
