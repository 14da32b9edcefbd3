//! The queue loop: `rin_ship.concurrency` workers each receive up to 10 messages, keep them
//! invisible while they load ([`deliver`]), delete the ones whose every load committed (or
//! needed none), and leave the rest for redelivery (a message failing again and again is
//! reported as poison). The same loop serves SQS (`rin-ship import`) and the embedded local
//! queue (`serve`). How long it runs: [`Until`].
//!
//! Must never: delete a message that is kept; stop on a receive error (it backs off and
//! retries); call a queue drained while it reports a message visible or in flight.

use super::Loader;
use super::deliver::load_messages;
use super::rin::RinConfig;
use super::warehouse::Sessions;
use crate::common::retry::Backoff;
use crate::common::shutdown::Shutdown;
use crate::queue::{Message, Queue};
use anyhow::{Result, anyhow, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// When the workers stop (besides `stop`, which ends every mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// A build without SQS has no `import`: only the embedded loader, which stops at `stop`.
#[cfg_attr(not(all(feature = "s3", feature = "sqs")), allow(dead_code))]
pub enum Until {
    /// Only at `stop` (the daemon, the embedded loader).
    Stopped,
    /// When a receive finds nothing (`import --batch`): messages another consumer holds
    /// invisible (one that was killed holds them until their visibility timeout) are left.
    Empty,
    /// When a receive finds nothing and the queue reports no message visible or in flight
    /// (`import --batch --drain`): what another consumer held is waited for and loaded.
    Drained,
}

/// Runs `rin_ship.concurrency` pollers on `queue` until `stop` or what `until` says. Errors
/// only when a worker failed for good.
pub async fn consume(
    loader: Arc<Loader>,
    queue: Queue,
    stop: Shutdown,
    until: Until,
) -> Result<()> {
    let fatal = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..loader.cfg.ext.concurrency {
        let loader = loader.clone();
        let stop = stop.clone();
        let queue = queue.clone();
        let fatal = fatal.clone();
        workers.push(tokio::spawn(async move {
            if let Err(e) = worker(w, loader, queue, stop, until).await {
                error!(worker = w, "importer worker failed: {e:#}");
                fatal.store(true, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    if fatal.load(Ordering::Relaxed) {
        return Err(anyhow!("an importer worker failed (see the log)"));
    }
    Ok(())
}

async fn worker(
    w: usize,
    loader: Arc<Loader>,
    queue: Queue,
    mut stop: Shutdown,
    until: Until,
) -> Result<()> {
    let cfg = &loader.cfg;
    let mut sessions = Sessions::default();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut told_waiting = false;
    loop {
        if stop.is_triggered() {
            return Ok(());
        }
        let received = tokio::select! {
            r = queue.receive(cfg.ext.wait_time_seconds, cfg.ext.visibility_timeout_seconds) => r,
            _ = stop.wait() => return Ok(()),
        };
        let msgs = match received {
            Ok(m) => {
                backoff.reset();
                loader.health.ok("queue");
                m
            }
            Err(e) => {
                let wait = backoff.wait();
                loader
                    .health
                    .failing("queue", format!("cannot receive from the queue: {e:#}"));
                warn!(worker = w, "{e:#}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if msgs.is_empty() {
            match until {
                Until::Stopped => {}
                Until::Empty => {
                    info!(worker = w, "queue is empty: batch done");
                    return Ok(());
                }
                Until::Drained => match in_queue(&queue).await {
                    Ok(Some((0, 0))) => {
                        info!(
                            worker = w,
                            "queue is drained (nothing visible or in flight): batch done"
                        );
                        return Ok(());
                    }
                    Ok(Some((visible, inflight))) => {
                        if !told_waiting {
                            told_waiting = true;
                            info!(
                                worker = w,
                                visible,
                                inflight,
                                "--drain: messages are still in flight (another consumer holds them until it deletes them or their visibility timeout ends): waiting for them"
                            );
                        }
                    }
                    Ok(None) => bail!(
                        "--drain needs the queue's depth, and SQS refused GetQueueAttributes: \
                         grant sqs:GetQueueAttributes (examples/aws/iam-policy-importer.json), \
                         or run --batch without --drain"
                    ),
                    Err(e) => {
                        let wait = backoff.wait();
                        warn!(worker = w, "{e:#}; retrying in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                },
            }
            continue;
        }
        process(&loader, &queue, &mut sessions, msgs).await;
    }
}

/// The messages (visible, in flight) the queue reports, for `--drain`; `None`: SQS would not
/// say (the role lacks `sqs:GetQueueAttributes`).
async fn in_queue(queue: &Queue) -> Result<Option<(u64, u64)>> {
    match queue {
        #[cfg(feature = "sqs")]
        Queue::Sqs(q) => q.depth().await,
        Queue::Local(q) => {
            let (ready, inflight) = q.depth();
            Ok(Some((ready as u64, inflight as u64)))
        }
    }
}

/// Handles one received batch: keeps it invisible while it loads, loads it, deletes what
/// committed (or needed no load), reports what stays.
async fn process(loader: &Loader, queue: &Queue, sessions: &mut Sessions, msgs: Vec<Message>) {
    let (cfg, st) = (&loader.cfg, &loader.stats);
    let receipts: Vec<String> = msgs.iter().map(|m| m.receipt.clone()).collect();
    let started = Instant::now();
    let keep = keeping_invisible(
        queue,
        &receipts,
        cfg.ext.visibility_timeout_seconds,
        async { load_messages(loader, sessions, &msgs).await },
    )
    .await;
    let mut delete = Vec::new();
    for (mi, m) in msgs.iter().enumerate() {
        if keep[mi] {
            st.kept.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("rin_import_messages_total", "outcome" => "kept").increment(1);
            report_kept(cfg, m, "not deleted");
        } else {
            delete.push(receipts[mi].clone());
        }
    }
    if std::env::var("RIN_SHIP_FAILPOINT").as_deref() == Ok("pause_before_delete") {
        // Test hook: the loads committed, the messages are not deleted yet; a test kills the
        // process here (SIGKILL) to prove the redelivery loads nothing twice.
        warn!("failpoint pause_before_delete: loads committed, pausing before DeleteMessageBatch");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let n = queue.delete(&delete).await;
    st.deleted.fetch_add(n as u64, Ordering::Relaxed);
    metrics::counter!("rin_import_messages_total", "outcome" => "deleted").increment(n as u64);
    info!(
        messages = msgs.len(),
        deleted = n,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch done"
    );
}

/// Runs `work`, extending the messages' visibility every third of `visibility_s` meanwhile.
async fn keeping_invisible<T>(
    queue: &Queue,
    receipts: &[String],
    visibility_s: i32,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = Duration::from_secs((visibility_s as u64 / 3).max(1));
    let extend = async {
        loop {
            tokio::time::sleep(every).await;
            queue.extend(receipts, visibility_s).await;
        }
    };
    tokio::select! {
        out = work => out,
        _ = extend => unreachable!("extends until the work is done"),
    }
}

/// Logs a message that stays on the queue; one failing again and again is called poison.
pub fn report_kept(cfg: &RinConfig, m: &Message, what: &str) {
    let n = m.receive_count;
    if n >= cfg.ext.max_receive_count_warn {
        error!(
            message_id = %m.id,
            receive_count = n,
            "poison message: failed {n} times; left to the queue's redrive policy"
        );
    } else {
        warn!(message_id = %m.id, receive_count = n, "message {what}; it will be delivered again");
    }
}
