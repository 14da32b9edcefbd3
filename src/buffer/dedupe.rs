//! Request-id dedupe (forward `chunk` options, HTTP `Idempotency-Key`s): which ids are stored,
//! which are being stored right now. It must never answer "stored" for an id whose batch is
//! not durable, and never let two connections store the same id at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Forward `chunk` ids recently stored, so that a client's resend of a chunk whose ack it
/// never saw is acked again instead of stored twice. Ids survive restarts through the journals
/// of chunks not yet shipped.
pub struct Dedupe {
    pub(super) window: Duration,
    entries: Mutex<DedupeMap>,
}

#[derive(Default)]
struct DedupeMap {
    map: HashMap<Vec<u8>, Entry>,
    inserts: usize,
}

enum Entry {
    Stored(Instant),
    InFlight(watch::Receiver<Option<bool>>),
}

pub enum Claim {
    /// First sighting: store the batch, then call `finish`.
    New(ClaimGuard),
    /// Already durable: ack without storing.
    Stored,
    /// Another connection is storing it right now: wait, then claim again.
    InFlight(watch::Receiver<Option<bool>>),
}

/// The right to store a batch under an id; settled by the writer with the commit's outcome
/// (dropped unsettled: released, nothing stored).
pub struct ClaimGuard {
    dedupe: Arc<Dedupe>,
    pub(super) id: Vec<u8>,
    done: Option<watch::Sender<Option<bool>>>,
}

impl ClaimGuard {
    pub fn finish(mut self, stored: bool) {
        self.complete(stored);
    }

    fn complete(&mut self, stored: bool) {
        if let Some(done) = self.done.take() {
            let mut entries = self.dedupe.entries.lock().unwrap();
            if stored {
                entries
                    .map
                    .insert(self.id.clone(), Entry::Stored(Instant::now()));
            } else {
                entries.map.remove(&self.id);
            }
            let _ = done.send(Some(stored));
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.complete(false);
    }
}

impl Dedupe {
    pub(super) fn new(window: Duration) -> Dedupe {
        Dedupe {
            window,
            entries: Mutex::new(DedupeMap::default()),
        }
    }

    pub(super) fn remember(&self, id: Vec<u8>) {
        self.remember_at(id, Instant::now());
    }

    pub(super) fn remember_at(&self, id: Vec<u8>, seen: Instant) {
        self.entries
            .lock()
            .unwrap()
            .map
            .insert(id, Entry::Stored(seen));
    }

    pub fn claim(self: &Arc<Self>, id: &[u8]) -> Claim {
        let mut entries = self.entries.lock().unwrap();
        entries.inserts += 1;
        if entries.inserts.is_multiple_of(1024) {
            let window = self.window;
            entries.map.retain(|_, e| match e {
                Entry::Stored(at) => at.elapsed() < window,
                Entry::InFlight(_) => true,
            });
        }
        match entries.map.get(id) {
            Some(Entry::Stored(at)) if at.elapsed() < self.window => return Claim::Stored,
            Some(Entry::InFlight(rx)) => return Claim::InFlight(rx.clone()),
            _ => {}
        }
        let (tx, rx) = watch::channel(None);
        entries.map.insert(id.to_vec(), Entry::InFlight(rx));
        Claim::New(ClaimGuard {
            dedupe: self.clone(),
            id: id.to_vec(),
            done: Some(tx),
        })
    }
}
