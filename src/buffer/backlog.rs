//! The chunks not yet uploaded, by age: `rin_buffer_oldest_chunk_age_seconds`, the figure that
//! says shipping has stalled long before the quota fills. A chunk is counted from the moment
//! its number is handed out (its first event) or, for one a previous run left, from its file's
//! time; it stops counting once its journal is gone (retired after the upload, or never
//! written). Owns only that list; it must never touch a chunk file (it only looks whether one
//! is there) and never cost the data path more than one short lock per chunk.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub struct Backlog {
    /// The buffer's target folders: a chunk's journal is in one of them.
    dirs: Vec<PathBuf>,
    /// Chunks by sequence number, and since when each holds events.
    chunks: Mutex<BTreeMap<u64, SystemTime>>,
}

impl Backlog {
    pub fn new(dirs: Vec<PathBuf>) -> Backlog {
        Backlog {
            dirs,
            chunks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Chunk `seq` holds events since `since`.
    pub fn opened(&self, seq: u64, since: SystemTime) {
        self.chunks.lock().unwrap().insert(seq, since);
    }

    /// The age of the oldest chunk still on disk; zero when there is none. Chunks found gone
    /// are dropped from the list on the way (one stat per chunk waiting: a handful, or a few
    /// thousand while uploads are stalled).
    pub fn oldest_age(&self) -> Duration {
        let mut chunks = self.chunks.lock().unwrap();
        let dirs = &self.dirs;
        chunks.retain(|&seq, _| {
            dirs.iter()
                .any(|d| super::chunk::journal_path(d, seq).exists())
        });
        chunks.values().min().map_or(Duration::ZERO, |o| {
            SystemTime::now().duration_since(*o).unwrap_or_default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_chunks_until_their_journal_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backlog::new(vec![dir.path().to_path_buf()]);
        assert_eq!(b.oldest_age(), Duration::ZERO);
        let old = SystemTime::now() - Duration::from_secs(100);
        b.opened(1, old);
        b.opened(2, SystemTime::now());
        std::fs::write(super::super::chunk::journal_path(dir.path(), 2), b"").unwrap();
        // Chunk 1 has no journal (shipped): only chunk 2 counts.
        assert!(b.oldest_age() < Duration::from_secs(5));
        std::fs::write(super::super::chunk::journal_path(dir.path(), 1), b"").unwrap();
        b.opened(1, old);
        assert!(b.oldest_age() >= Duration::from_secs(100));
        std::fs::remove_file(super::super::chunk::journal_path(dir.path(), 1)).unwrap();
        assert!(b.oldest_age() < Duration::from_secs(5));
    }
}
