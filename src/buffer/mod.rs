//! The buffer: turns accepted batches of NDJSON lines into durable, sealed gzip chunks on
//! disk. Owns chunk files, group commit, sealing, crash recovery, the disk quota and forward
//! chunk-id dedupe. It must never report a batch durable before its bytes and journal record
//! are fsynced, and never lose or duplicate a committed line across crashes.
//!
//! Each target has `shards` writer threads; each holds one open chunk per partition (the tag,
//! when the target's key uses it). A writer takes every batch queued for it, compresses them,
//! and commits once for the lot (group commit), then answers all their submitters.

pub mod chunk;
mod config;

pub use config::BufferConfig;

use crate::intake::msgpack::EventTime;
use chunk::{OpenChunk, SealedChunk};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{error, info, warn};

/// Lines for one target and partition, from one frame: stored all together or not at all.
pub struct Batch {
    pub partition: Arc<str>,
    pub lines: Vec<u8>,
    pub events: u64,
    pub first_time: EventTime,
    /// The claim on a forward `chunk` id: the writer journals the id with the lines and
    /// settles the claim with the commit's outcome, so the dedupe table matches what is on
    /// disk even when the client's connection is gone before its ack is sent.
    pub claim: Option<ClaimGuard>,
}

/// Resolves when the batch is durable (`Ok`) or could not be stored (`Err`, never acked).
pub type Durable = oneshot::Receiver<Result<(), String>>;

/// What the buffer needs to know of a target: its folder's name and whether its chunks are
/// split by tag (its object keys use the tag).
pub struct BufferTarget {
    pub name: String,
    pub partition_by_tag: bool,
}

/// A sealed chunk and the index of the target it belongs to.
pub type Sealed = (usize, SealedChunk);

enum ShardMsg {
    /// The permit holds the batch's share of the in-flight memory budget until it is compressed.
    Append(
        Batch,
        oneshot::Sender<Result<(), String>>,
        OwnedSemaphorePermit,
    ),
    /// Seal chunks past their age.
    Tick,
    /// Seal everything and stop.
    Stop,
}

/// Uncompressed bytes that may wait in writer queues at once (in KiB permits): bounds memory
/// whatever the frame sizes, and makes intake wait when compression falls behind.
const INFLIGHT_KIB: usize = 32 << 10;
/// Batches a writer's queue holds; enough that a quiet tag keeps to its home writer.
const QUEUE_DEPTH: usize = 64;

pub struct Buffer {
    lanes: Vec<Lane>,
    dirs: Vec<PathBuf>,
    inflight: Arc<Semaphore>,
    pub usage: Arc<Usage>,
    pub dedupe: Arc<Dedupe>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

struct Lane {
    shards: Vec<mpsc::Sender<ShardMsg>>,
    /// Batches each writer holds, queued or being compressed, until their commit: how busy it
    /// is (the queue length alone misses the batch in hand).
    busy: Vec<Arc<AtomicUsize>>,
}

impl Buffer {
    /// Recovers what a previous run left (sealing open chunks and queueing every sealed one
    /// on `sealed`), then starts the writer threads.
    pub fn open(
        config: &BufferConfig,
        targets: &[BufferTarget],
        sealed: mpsc::UnboundedSender<Sealed>,
    ) -> anyhow::Result<Buffer> {
        let root = &config.dir;
        std::fs::create_dir_all(root)?;
        let usage = Arc::new(Usage::new(config.quota.0));
        let dedupe = Arc::new(Dedupe::new(config.dedupe_window.0));
        let mut max_seq = 0u64;
        for (index, target) in targets.iter().enumerate() {
            let dir = root.join(&target.name);
            std::fs::create_dir_all(&dir)?;
            max_seq = max_seq.max(recover_dir(&dir, &usage, &dedupe, |chunk| {
                let _ = sealed.send((index, chunk));
            })?);
        }
        warn_unknown_dirs(root, targets);
        let seqs = Arc::new(SeqAllocator::open(&root.join("seq.next"), max_seq + 1)?);
        let mut lanes = Vec::new();
        let mut threads = Vec::new();
        for (index, target) in targets.iter().enumerate() {
            let mut shards = Vec::new();
            let mut busy = Vec::new();
            for shard in 0..config.shards {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                let in_hand = Arc::new(AtomicUsize::new(0));
                busy.push(in_hand.clone());
                let writer = ShardWriter {
                    busy: in_hand,
                    target: index,
                    dir: root.join(&target.name),
                    level: config.compression_level,
                    fsync: config.fsync,
                    seal_bytes: config.seal_bytes.0,
                    seal_age: config.seal_age.0,
                    partition_by_tag: target.partition_by_tag,
                    seqs: seqs.clone(),
                    usage: usage.clone(),
                    sealed: sealed.clone(),
                    open: HashMap::new(),
                    max_open: config.max_open_chunks.max(1),
                    seal_failures: Vec::new(),
                };
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("buf-{}-{shard}", target.name))
                        .spawn(move || writer.run(rx))?,
                );
                shards.push(tx);
            }
            lanes.push(Lane { shards, busy });
        }
        Ok(Buffer {
            lanes,
            dirs: targets.iter().map(|t| root.join(&t.name)).collect(),
            inflight: Arc::new(Semaphore::new(INFLIGHT_KIB)),
            usage,
            dedupe,
            threads: Mutex::new(threads),
        })
    }

    /// Queues a batch for `target`; waits only when every writer of the target is busy
    /// (that wait is the backpressure). The returned receiver says when it is durable.
    pub async fn submit(&self, target: usize, batch: Batch) -> Result<Durable, String> {
        let shards = &self.lanes[target].shards;
        let (done, durable) = oneshot::channel();
        let kib = (batch.lines.capacity() / 1024 + 1).min(INFLIGHT_KIB) as u32;
        let permit = self
            .inflight
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| "buffer is shutting down".to_string())?;
        // A quiet partition keeps to its home writer, so it fills one chunk at a time; once
        // the home writer has work queued, the batch goes to the least busy writer instead, so
        // a hot tag spreads over every writer and core.
        let home = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            batch.partition.hash(&mut h);
            h.finish() as usize % shards.len()
        };
        let busy = &self.lanes[target].busy;
        let queued = |i: usize| busy[i].load(Ordering::Relaxed);
        let pick = if queued(home) == 0 {
            home
        } else {
            (0..shards.len())
                .map(|k| (home + k) % shards.len())
                .min_by_key(|&i| queued(i))
                .unwrap_or(home)
        };
        busy[pick].fetch_add(1, Ordering::Relaxed);
        if shards[pick]
            .send(ShardMsg::Append(batch, done, permit))
            .await
            .is_err()
        {
            busy[pick].fetch_sub(1, Ordering::Relaxed);
            return Err("buffer is shutting down".to_string());
        }
        Ok(durable)
    }

    /// Drops kept journals of shipped chunks once the dedupe window has passed.
    pub fn collect_garbage(&self) {
        for dir in &self.dirs {
            if let Err(e) = collect_shipped(dir, self.dedupe.window, None) {
                warn!(dir = %dir.display(), "cannot clean shipped journals: {e}");
            }
        }
    }

    /// Asks every writer to seal chunks past their age.
    pub fn tick(&self) {
        for lane in &self.lanes {
            for shard in &lane.shards {
                let _ = shard.try_send(ShardMsg::Tick);
            }
        }
    }

    /// Seals every open chunk and stops the writers.
    pub async fn close(&self) {
        for lane in &self.lanes {
            for shard in &lane.shards {
                let _ = shard.send(ShardMsg::Stop).await;
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Recovers every chunk in a target's folder; returns the highest sequence number seen.
fn recover_dir(
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
            chunk::remove_both(&chunk::data_path(dir, seq), &chunk::journal_path(dir, seq))?;
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
fn collect_shipped(dir: &Path, window: Duration, dedupe: Option<&Dedupe>) -> io::Result<Vec<u64>> {
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

fn warn_unknown_dirs(root: &Path, targets: &[BufferTarget]) {
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

struct ShardWriter {
    busy: Arc<AtomicUsize>,
    target: usize,
    dir: PathBuf,
    level: u32,
    fsync: bool,
    seal_bytes: u64,
    seal_age: Duration,
    partition_by_tag: bool,
    seqs: Arc<SeqAllocator>,
    usage: Arc<Usage>,
    sealed: mpsc::UnboundedSender<Sealed>,
    open: HashMap<Arc<str>, (OpenChunk, u64)>,
    max_open: usize,
    /// Chunks whose seal failed in the middle of a group: their waiters must not be acked.
    seal_failures: Vec<u64>,
}

/// Stop grouping once this many uncompressed bytes wait for one commit.
const GROUP_BYTES: usize = 1 << 20;

impl ShardWriter {
    fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) {
        // Submitters wait on the chunk (by sequence number) their batch went into.
        type Waiter = (u64, oneshot::Sender<Result<(), String>>, Option<ClaimGuard>);
        let mut waiters: Vec<Waiter> = Vec::new();
        let mut failed: Vec<u64> = Vec::new();
        loop {
            let Some(first) = rx.blocking_recv() else {
                self.seal_all();
                return;
            };
            let mut stop = false;
            let mut tick = false;
            let mut grouped = 0usize;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    ShardMsg::Append(batch, done, permit) => {
                        grouped += batch.lines.len();
                        let result = self.append(&batch);
                        let Batch { lines, claim, .. } = batch;
                        drop(lines);
                        drop(permit);
                        match result {
                            Ok(seq) => waiters.push((seq, done, claim)),
                            // A claim dropped here is released: nothing of it is durable.
                            Err((e, seq)) => {
                                self.busy.fetch_sub(1, Ordering::Relaxed);
                                let _ = done.send(Err(e));
                                if let Some(seq) = seq {
                                    failed.push(seq);
                                }
                            }
                        }
                    }
                    ShardMsg::Tick => tick = true,
                    ShardMsg::Stop => stop = true,
                }
                if grouped < GROUP_BYTES && !stop {
                    next = rx.try_recv().ok();
                }
            }
            failed.append(&mut self.seal_failures);
            let mut broken = Vec::new();
            for (key, (chunk, _)) in self.open.iter_mut() {
                if !chunk.is_dirty() {
                    continue;
                }
                if let Err(e) = chunk.commit() {
                    error!(
                        chunk = chunk.seq,
                        "commit failed, nothing in it since the last commit is acked: {e}"
                    );
                    metrics::counter!("rin_buffer_commit_errors_total").increment(1);
                    failed.push(chunk.seq);
                    broken.push(key.clone());
                }
            }
            for key in broken {
                self.poison(&key);
            }
            metrics::counter!("rin_buffer_commits_total").increment(1);
            for (seq, done, claim) in waiters.drain(..) {
                let result = if failed.contains(&seq) {
                    Err("could not make the events durable".to_string())
                } else {
                    Ok(())
                };
                if let Some(claim) = claim {
                    claim.finish(result.is_ok());
                }
                self.busy.fetch_sub(1, Ordering::Relaxed);
                let _ = done.send(result);
            }
            failed.clear();
            self.account();
            let due: Vec<Arc<str>> = self
                .open
                .iter()
                .filter(|(_, (c, _))| {
                    c.bytes >= self.seal_bytes || (tick && c.opened_at.elapsed() >= self.seal_age)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in due {
                self.seal(&key);
            }
            if stop {
                self.seal_all();
                return;
            }
        }
    }

    /// Returns the sequence number of the chunk the batch went into. On error, also the
    /// chunk that is now broken (its earlier, uncommitted batches fail with it).
    fn append(&mut self, batch: &Batch) -> Result<u64, (String, Option<u64>)> {
        let key: Arc<str> = if self.partition_by_tag {
            batch.partition.clone()
        } else {
            Arc::from("")
        };
        let full = self.open.get(&key).is_some_and(|(c, _)| {
            c.bytes > 0 && c.bytes + batch.lines.len() as u64 > self.seal_bytes
        });
        if full {
            self.seal(&key);
        }
        if !self.open.contains_key(&key) {
            if self.open.len() >= self.max_open {
                // Many partitions (tags): seal the oldest rather than hold unbounded memory.
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, (c, _))| c.opened_at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    metrics::counter!("rin_chunks_sealed_early_total", "reason" => "max_open_chunks")
                        .increment(1);
                    self.seal(&oldest);
                }
            }
            let seq = self
                .seqs
                .next()
                .map_err(|e| (format!("cannot allocate a chunk number: {e}"), None))?;
            let chunk = OpenChunk::create(&self.dir, seq, &key, self.level, self.fsync)
                .map_err(|e| (format!("cannot create chunk {seq}: {e}"), None))?;
            self.open.insert(key.clone(), (chunk, 0));
            metrics::gauge!("rin_buffer_chunks", "state" => "open").increment(1.0);
        }
        let (chunk, _) = self.open.get_mut(&key).unwrap();
        let seq = chunk.seq;
        let id = batch.claim.as_ref().map(|c| c.id.clone());
        if let Err(e) = chunk.append(&batch.lines, batch.events, batch.first_time, id) {
            self.poison(&key);
            return Err((format!("cannot write chunk {seq}: {e}"), Some(seq)));
        }
        Ok(seq)
    }

    /// Brings the quota's count up to date with what the open chunks hold on disk.
    fn account(&mut self) {
        for (chunk, accounted) in self.open.values_mut() {
            let now = chunk.disk_bytes();
            if now > *accounted {
                self.usage.add(now - *accounted);
                *accounted = now;
            }
        }
    }

    fn seal(&mut self, key: &Arc<str>) {
        let Some((chunk, accounted)) = self.open.remove(key) else {
            return;
        };
        let seq = chunk.seq;
        metrics::gauge!("rin_buffer_chunks", "state" => "open").decrement(1.0);
        match chunk.seal() {
            Ok(Some(sealed)) => {
                self.usage.add(sealed.disk_bytes());
                self.usage.sub(accounted);
                metrics::counter!("rin_chunks_sealed_total").increment(1);
                metrics::gauge!("rin_buffer_chunks", "state" => "sealed").increment(1.0);
                let _ = self.sealed.send((self.target, sealed));
            }
            Ok(None) => self.usage.sub(accounted),
            Err(e) => {
                error!(
                    chunk = seq,
                    "cannot seal chunk; it stays on disk and is recovered at the next start: {e}"
                );
                self.seal_failures.push(seq);
            }
        }
    }

    /// After an I/O error the in-memory state of a chunk is suspect: seal it from its journal
    /// (its last durable point) as recovery would, and start a fresh one for later batches.
    fn poison(&mut self, key: &Arc<str>) {
        let Some((chunk, accounted)) = self.open.remove(key) else {
            return;
        };
        let seq = chunk.seq;
        drop(chunk);
        metrics::gauge!("rin_buffer_chunks", "state" => "open").decrement(1.0);
        match chunk::recover(&self.dir, seq) {
            Ok(r) => {
                self.usage.sub(accounted);
                if let Some(sealed) = r.chunk {
                    self.usage.add(sealed.disk_bytes());
                    metrics::gauge!("rin_buffer_chunks", "state" => "sealed").increment(1.0);
                    let _ = self.sealed.send((self.target, sealed));
                }
            }
            Err(e) => error!(
                chunk = seq,
                "cannot seal chunk after an error; it is recovered at the next start: {e}"
            ),
        }
    }

    fn seal_all(&mut self) {
        let keys: Vec<Arc<str>> = self.open.keys().cloned().collect();
        for key in keys {
            self.seal(&key);
        }
    }
}

/// Chunk sequence numbers, unique for this buffer forever: the next number is persisted
/// before it is handed out, so a crash can skip numbers but never reuse one.
struct SeqAllocator {
    path: PathBuf,
    next: Mutex<u64>,
}

impl SeqAllocator {
    fn open(path: &Path, at_least: u64) -> io::Result<SeqAllocator> {
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
        })
    }

    fn next(&self) -> io::Result<u64> {
        let mut next = self.next.lock().unwrap();
        let seq = *next;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", seq + 1))?;
        std::fs::File::open(&tmp)?.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        *next = seq + 1;
        Ok(seq)
    }
}

/// Bytes the buffer holds on disk, against the quota.
pub struct Usage {
    used: AtomicU64,
    quota: u64,
    freed: Notify,
    over: AtomicBool,
}

impl Usage {
    fn new(quota: u64) -> Usage {
        Usage {
            used: AtomicU64::new(0),
            quota,
            freed: Notify::new(),
            over: AtomicBool::new(false),
        }
    }

    /// No quota: for processes without a buffer (the importer's readiness never fails on it).
    #[cfg(all(feature = "s3", feature = "sqs"))]
    pub fn unlimited() -> Usage {
        Usage::new(u64::MAX)
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

/// Forward `chunk` ids recently stored, so that a client's resend of a chunk whose ack it
/// never saw is acked again instead of stored twice. Ids survive restarts through the journals
/// of chunks not yet shipped.
pub struct Dedupe {
    window: Duration,
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

pub struct ClaimGuard {
    dedupe: Arc<Dedupe>,
    id: Vec<u8>,
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
    fn new(window: Duration) -> Dedupe {
        Dedupe {
            window,
            entries: Mutex::new(DedupeMap::default()),
        }
    }

    fn remember(&self, id: Vec<u8>) {
        self.remember_at(id, Instant::now());
    }

    fn remember_at(&self, id: Vec<u8>, seen: Instant) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The one target of these tests, as a config without targets gets (`default`).
    fn target(partition_by_tag: bool) -> BufferTarget {
        BufferTarget {
            name: "default".into(),
            partition_by_tag,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_committed_chunk_id_stays_claimed_when_nobody_waits_for_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let config = BufferConfig {
            dir: dir.path().join("buffer"),
            shards: 1,
            ..BufferConfig::default()
        };
        let (sealed, _sealed_rx) = mpsc::unbounded_channel();
        let buffer = Buffer::open(&config, &[target(false)], sealed).unwrap();
        let Claim::New(claim) = buffer.dedupe.claim(b"chunk-1") else {
            panic!("first sighting must be new");
        };
        let batch = Batch {
            partition: Arc::from(""),
            lines: b"{\"a\":1}\n".to_vec(),
            events: 1,
            first_time: EventTime { secs: 1, nanos: 0 },
            claim: Some(claim),
        };
        // The connection is gone: the durability receiver is dropped unread.
        drop(buffer.submit(0, batch).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match buffer.dedupe.claim(b"chunk-1") {
                Claim::Stored => break,
                Claim::InFlight(mut rx) => {
                    let _ = rx.wait_for(|v| v.is_some()).await;
                }
                Claim::New(_) => {
                    panic!("a committed chunk id was forgotten: its resend would be stored twice")
                }
            }
            assert!(Instant::now() < deadline);
        }
        buffer.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_max_open_chunks_the_oldest_open_chunk_is_sealed_early() {
        let dir = tempfile::tempdir().unwrap();
        let config = BufferConfig {
            dir: dir.path().join("buffer"),
            shards: 1,
            max_open_chunks: 2,
            ..BufferConfig::default()
        };
        let (sealed, mut sealed_rx) = mpsc::unbounded_channel();
        let buffer = Buffer::open(&config, &[target(true)], sealed).unwrap();
        for tag in ["a", "b", "c"] {
            let batch = Batch {
                partition: Arc::from(tag),
                lines: format!("{{\"tag\":\"{tag}\"}}\n").into_bytes(),
                events: 1,
                first_time: EventTime { secs: 1, nanos: 0 },
                claim: None,
            };
            let durable = buffer.submit(0, batch).await.unwrap();
            assert_eq!(durable.await.unwrap(), Ok(()));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Opening `c` sealed `a` (the oldest); `b` and `c` are still open.
        let (_, first) = tokio::time::timeout(Duration::from_secs(10), sealed_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*first.partition, "a");
        assert!(sealed_rx.try_recv().is_err());
        buffer.close().await;
        let mut rest: Vec<String> = std::iter::from_fn(|| sealed_rx.try_recv().ok())
            .map(|(_, c)| c.partition.to_string())
            .collect();
        rest.sort();
        assert_eq!(rest, ["b", "c"]);
    }
}
