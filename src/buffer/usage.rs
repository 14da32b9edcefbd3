//! The disk quota: bytes the buffer holds against `buffer.quota`. Owns the count and the wait
//! for room; it must never let intake go on reading while the buffer is at its quota (push
//! back, never drop).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;
use tracing::{info, warn};

/// Bytes the buffer holds on disk, against the quota.
pub struct Usage {
    used: AtomicU64,
    quota: u64,
    freed: Notify,
    over: AtomicBool,
}

impl Usage {
    pub(super) fn new(quota: u64) -> Usage {
        Usage {
            used: AtomicU64::new(0),
            quota,
            freed: Notify::new(),
            over: AtomicBool::new(false),
        }
    }

    pub fn add(&self, n: u64) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        metrics::gauge!("rin_buffer_bytes").set(now as f64);
    }

    pub fn sub(&self, n: u64) {
        let prev = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap();
        let now = prev.saturating_sub(n);
        metrics::gauge!("rin_buffer_bytes").set(now as f64);
        if now < self.quota {
            if self.over.swap(false, Ordering::Relaxed) {
                info!(
                    used = now,
                    quota = self.quota,
                    "buffer below its quota again: intake resumes"
                );
            }
            self.freed.notify_waiters();
        }
    }

    /// `buffer.quota`.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_full(&self) -> bool {
        self.used() >= self.quota
    }

    /// Waits while the buffer is at its quota: intake stops reading, so clients stop getting
    /// acks and hold their data (push back, never drop).
    pub async fn wait_for_room(&self) {
        loop {
            let freed = self.freed.notified();
            if !self.is_full() {
                return;
            }
            if !self.over.swap(true, Ordering::Relaxed) {
                warn!(
                    used = self.used(),
                    quota = self.quota,
                    "buffer is at its disk quota: intake paused until uploads free space"
                );
                metrics::counter!("rin_buffer_full_total").increment(1);
            }
            freed.await;
        }
    }
}
