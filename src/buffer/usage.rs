//! The disk quota and the full disk: bytes the buffer holds against `buffer.quota`, and whether
//! a write of the buffer, the local queue or a local store just failed for want of space
//! (ENOSPC, EDQUOT). Owns the count, the full-disk flag and the wait for room; it must never
//! let intake go on reading while the buffer is at its quota or its disk is full (push back,
//! never drop), and never clear the full-disk flag before the filesystem has room again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// Free bytes a full filesystem must have again before intake resumes (an eighth of a smaller
/// filesystem): room for a few group commits and a seal, so that intake does not resume into
/// the next ENOSPC at once.
pub const RESUME_FREE_BYTES: u64 = 4 << 20;

/// [`RESUME_FREE_BYTES`] for a filesystem of `total` bytes.
fn resume_at(total: u64) -> u64 {
    RESUME_FREE_BYTES.min(total / 8)
}

/// Whether an I/O error means "no space left" (a full disk, or a disk quota reached).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Whether any error in an `anyhow` chain is a full disk.
pub fn chain_is_disk_full(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(is_disk_full)
}

/// Bytes free to an unprivileged writer on the filesystem holding `dir`, and its size.
// statvfs's field types are u64 here but narrower on other targets: the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn free_bytes(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a path with a NUL byte"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// Bytes the buffer holds on disk, against the quota.
pub struct Usage {
    used: AtomicU64,
    quota: u64,
    freed: Notify,
    over: AtomicBool,
    /// The folder whose filesystem ran out of space, while intake pushes back for it.
    full_disk: Mutex<Option<PathBuf>>,
    /// `full_disk.is_some()`, read on every frame without the lock.
    disk_full: AtomicBool,
}

impl Usage {
    pub(super) fn new(quota: u64) -> Usage {
        Usage {
            used: AtomicU64::new(0),
            quota,
            freed: Notify::new(),
            over: AtomicBool::new(false),
            full_disk: Mutex::new(None),
            disk_full: AtomicBool::new(false),
        }
    }

    /// A write in `dir` failed for want of space (`stage`: what was written, a metric label):
    /// counts it and, the first time, says so and pauses intake until [`Usage::check_disk`]
    /// finds room again.
    pub fn disk_full(&self, stage: &'static str, dir: &Path, e: &io::Error) {
        metrics::counter!("rin_disk_full_errors_total", "stage" => stage).increment(1);
        let mut full = self.full_disk.lock().unwrap();
        if full.is_none() {
            error!(
                stage,
                dir = %dir.display(),
                free_bytes = free_bytes(dir).map(|(free, _)| free).unwrap_or(0),
                "the disk holding {} is full ({e}): intake pushes back (forward: no ack, HTTP \
                 503) and nothing that was not stored is acked; free space on that filesystem \
                 (or grow it): intake resumes by itself once {} KiB are free, and what was \
                 acked ships then",
                dir.display(),
                free_bytes(dir).map_or(RESUME_FREE_BYTES, |(_, total)| resume_at(total)) >> 10
            );
            *full = Some(dir.to_path_buf());
            self.disk_full.store(true, Ordering::Relaxed);
            metrics::gauge!("rin_disk_full").set(1.0);
        } else {
            warn!(stage, dir = %dir.display(), "disk still full: {e}");
        }
    }

    /// The folder whose disk is full, while intake pushes back for it.
    pub fn full_disk(&self) -> Option<PathBuf> {
        if !self.disk_full.load(Ordering::Relaxed) {
            return None;
        }
        self.full_disk.lock().unwrap().clone()
    }

    /// Clears the full-disk state once its filesystem has [`RESUME_FREE_BYTES`] free again
    /// (called on every tick); returns whether the disk is (still) full.
    pub fn check_disk(&self) -> bool {
        let Some(dir) = self.full_disk() else {
            return false;
        };
        let (free, total) = match free_bytes(&dir) {
            Ok(space) => space,
            Err(e) => {
                warn!(dir = %dir.display(), "cannot read the free space of a full disk: {e}");
                return true;
            }
        };
        if free < resume_at(total) {
            return true;
        }
        *self.full_disk.lock().unwrap() = None;
        self.disk_full.store(false, Ordering::Relaxed);
        metrics::gauge!("rin_disk_full").set(0.0);
        info!(
            dir = %dir.display(),
            free_bytes = free,
            "the full disk has room again: intake resumes"
        );
        self.freed.notify_waiters();
        false
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

    /// At the quota, or the disk is full: intake pushes back.
    pub fn is_full(&self) -> bool {
        self.at_quota() || self.disk_full.load(Ordering::Relaxed)
    }

    pub fn at_quota(&self) -> bool {
        self.used() >= self.quota
    }

    /// Why intake pushes back right now, for a client or a readiness probe; `None`: it does
    /// not.
    pub fn push_back_reason(&self) -> Option<String> {
        if let Some(dir) = self.full_disk() {
            return Some(format!(
                "the disk holding {} is full: nothing is stored until space is freed; retry later",
                dir.display()
            ));
        }
        self.at_quota().then(|| {
            format!(
                "the buffer is at its disk quota ({} bytes, buffer.quota): intake is pushing \
                 back until uploads free room; retry later",
                self.quota
            )
        })
    }

    /// Waits while the buffer is at its quota or its disk is full: intake stops reading, so
    /// clients stop getting acks and hold their data (push back, never drop).
    pub async fn wait_for_room(&self) {
        loop {
            let freed = self.freed.notified();
            if !self.is_full() {
                return;
            }
            if self.at_quota() && !self.over.swap(true, Ordering::Relaxed) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_a_full_disk_and_nothing_else_is() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
        let chained = anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOSPC))
            .context("cannot write queue/tmp/x");
        assert!(chain_is_disk_full(&chained));
        assert!(!chain_is_disk_full(&anyhow::anyhow!("no space left")));
    }

    #[test]
    fn a_full_disk_pushes_back_until_its_filesystem_has_room() {
        let dir = tempfile::tempdir().unwrap();
        let usage = Usage::new(1 << 30);
        assert!(!usage.is_full() && usage.push_back_reason().is_none());
        // The filesystem of a temporary folder has room: the check clears what a failed write
        // set (a full one is what tests/test_disk_full.py makes).
        usage.disk_full(
            "journal",
            dir.path(),
            &io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(usage.is_full() && !usage.at_quota());
        let reason = usage.push_back_reason().unwrap();
        assert!(
            reason.contains(&dir.path().display().to_string()) && reason.contains("is full"),
            "{reason}"
        );
        let (free, _) = free_bytes(dir.path()).unwrap();
        assert!(
            free >= RESUME_FREE_BYTES,
            "the test needs {RESUME_FREE_BYTES} free bytes"
        );
        assert!(!usage.check_disk());
        assert!(!usage.is_full() && usage.full_disk().is_none());
    }
}
