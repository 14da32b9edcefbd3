//! Chunk sequence numbers. Owns `seq.next`; it must never hand out a number twice, even across
//! a crash.

use super::backlog::Backlog;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Chunk sequence numbers, unique for this buffer forever: the next number is persisted
/// before it is handed out, so a crash can skip numbers but never reuse one.
pub(super) struct SeqAllocator {
    path: PathBuf,
    next: Mutex<u64>,
    /// Told of each number handed out: a new chunk, holding events from now on.
    backlog: Arc<Backlog>,
}

impl SeqAllocator {
    pub fn open(path: &Path, at_least: u64, backlog: Arc<Backlog>) -> io::Result<SeqAllocator> {
        let stored = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                io::Error::other(format!("{} is corrupt: {text:?}", path.display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        Ok(SeqAllocator {
            path: path.to_path_buf(),
            next: Mutex::new(stored.max(at_least)),
            backlog,
        })
    }

    pub fn next(&self) -> io::Result<u64> {
        let mut next = self.next.lock().unwrap();
        let seq = *next;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", seq + 1))?;
        std::fs::File::open(&tmp)?.sync_data()?;
        // With the folder fsynced: a cut cannot bring back an older number.
        crate::common::durable::rename(&tmp, &self.path)?;
        *next = seq + 1;
        self.backlog.opened(seq, std::time::SystemTime::now());
        Ok(seq)
    }
}
