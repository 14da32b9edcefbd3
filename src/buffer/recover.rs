//! Crash recovery and the journals of shipped chunks: at start every chunk a previous run left
//! is sealed from its journal (cut back to its last commit) and queued for shipping, and the
//! chunk ids of recent batches are loaded into dedupe. It must never ship bytes past a chunk's
//! last commit, and never forget an id still inside the dedupe window.

use super::BufferTarget;
use super::chunk::{self, SealedChunk};
use super::dedupe::Dedupe;
use super::usage::Usage;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Recovers every chunk in a target's folder; returns the highest sequence number seen.
pub(super) fn recover_dir(
    dir: &Path,
    usage: &Usage,
    dedupe: &Dedupe,
    mut ship: impl FnMut(SealedChunk),
) -> io::Result<u64> {
    let names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let shipped = collect_shipped(dir, dedupe.window, Some(dedupe))?;
    let mut seqs: Vec<u64> = names.iter().filter_map(|n| chunk::seq_of(n)).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut max = shipped.iter().copied().max().unwrap_or(0);
    for seq in seqs {
        if shipped.contains(&seq) {
            // Uploaded and retired; a crash came before its data file was removed.
            chunk::remove_chunk(dir, seq)?;
            continue;
        }
        max = max.max(seq);
        match chunk::recover(dir, seq) {
            Ok(r) => {
                for id in r.ids {
                    dedupe.remember(id);
                }
                if r.truncated > 0 {
                    info!(
                        chunk = seq,
                        dir = %dir.display(),
                        bytes = r.truncated,
                        "recovered chunk: cut unacknowledged bytes after the last commit"
                    );
                }
                if let Some(sealed) = r.chunk {
                    usage.add(sealed.disk_bytes());
                    metrics::gauge!("rin_buffer_chunks", "state" => "sealed").increment(1.0);
                    ship(sealed);
                }
            }
            Err(e) => error!(chunk = seq, dir = %dir.display(), "cannot recover chunk: {e}"),
        }
    }
    Ok(max)
}

/// Removes kept journals of shipped chunks older than the dedupe window; with `dedupe`, loads
/// the ids of the younger ones. Returns the sequence numbers still kept.
pub(super) fn collect_shipped(
    dir: &Path,
    window: Duration,
    dedupe: Option<&Dedupe>,
) -> io::Result<Vec<u64>> {
    let mut kept = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Some(seq) = chunk::shipped_seq_of(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if age >= window {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        kept.push(seq);
        if let Some(dedupe) = dedupe {
            let seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            for id in chunk::journal_ids(&entry.path()).unwrap_or_default() {
                dedupe.remember_at(id, seen);
            }
        }
    }
    Ok(kept)
}

pub(super) fn warn_unknown_dirs(root: &Path, targets: &[BufferTarget]) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if e.path().is_dir() && !targets.iter().any(|t| t.name == name) {
            warn!(
                dir = %e.path().display(),
                "buffer folder of a target that is no longer configured: its chunks stay on disk until the target is configured again"
            );
        }
    }
}
