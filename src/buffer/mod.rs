//! The buffer: turns accepted batches of NDJSON lines into durable, sealed compressed chunks on
//! disk. Owns chunk files, group commit, sealing, crash recovery, the disk quota and request-id
//! dedupe. It must never report a batch durable before its bytes and journal record are
//! fsynced, and never lose or duplicate a committed line across crashes.
//!
//! Each target has `shards` writer threads (`writer.rs`); each holds one open chunk per
//! partition (the tag, when the target's key uses it). A writer takes every batch queued for
//! it, compresses them, and commits once for the lot (group commit), then answers all their
//! submitters. `recover.rs` brings back what a previous run left, `usage.rs` is the disk quota,
//! `backlog.rs` the age of what is not uploaded yet, `dedupe.rs` the ids of recently stored
//! batches, `chunk.rs` one chunk's files, `encoder.rs` their
//! compressor (`isal.rs`: the ISA-L gzip engine, with the `isal` feature).
//!
//! Which writer takes a batch is decided per connection ([`Source`]), not batch by batch:
//! every batch of one connection and partition goes to the same writer, whose queue is
//! first-in first-out and whose chunks of a partition follow each other in sequence order, so
//! one connection's events keep their order across objects. Connections spread over the
//! writers (each new one goes to the writer with the fewest), which is what spreads a busy
//! tag over the cores.

mod backlog;
pub mod chunk;
mod config;
mod dedupe;
mod encoder;
#[cfg(feature = "isal")]
mod isal;
mod recover;
mod seq;
mod usage;
mod writer;

pub use backlog::Backlog;
pub use config::BufferConfig;
pub use dedupe::{Claim, ClaimGuard, Dedupe};
pub use usage::{Usage, chain_is_disk_full, is_disk_full};

use crate::common::time::EventTime;
use chunk::SealedChunk;
use recover::{collect_shipped, recover_dir, warn_unknown_dirs};
use seq::SeqAllocator;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::warn;
use writer::{ShardMsg, ShardWriter};

/// Lines for one target and partition, from one frame: stored all together or not at all.
pub struct Batch {
    pub partition: Arc<str>,
    pub lines: Vec<u8>,
    pub events: u64,
    pub first_time: EventTime,
    /// The claim on a request id: the writer journals the id with the lines and settles the
    /// claim with the commit's outcome, so the dedupe table matches what is on disk even when
    /// the client's connection is gone before its ack is sent.
    pub claim: Option<ClaimGuard>,
}

/// Why a batch is not durable. Whatever the variant, nothing of the batch may be acked; the
/// variant tells the intake what to answer (retry later, or a failed write).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The buffer is closing: the batch was not taken.
    #[error("buffer is shutting down")]
    ShuttingDown,
    /// The writer went away before it answered: nothing says the batch is on disk.
    #[error("buffer stopped before the events were durable")]
    Stopped,
    /// Writing the batch into a chunk failed (`error.kind()` tells a full disk from others).
    #[error("{doing}: {error}")]
    Io { doing: String, error: io::Error },
    /// The batch was written but the commit (or seal) of its chunk failed.
    #[error("could not make the events durable")]
    NotDurable,
    /// The disk holding the buffer is full (ENOSPC, EDQUOT): nothing of the batch is stored;
    /// the client is told to retry (forward: no ack; HTTP 503).
    #[error("the disk holding {} is full: events not stored; retry once space is freed", dir.display())]
    DiskFull { dir: PathBuf },
}

impl StoreError {
    fn io(doing: String, error: io::Error) -> StoreError {
        StoreError::Io { doing, error }
    }

    /// Refused for a full disk: a retry later succeeds (HTTP answers 503, not 500).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Io { error, .. } => usage::is_disk_full(error),
            _ => false,
        }
    }
}

/// Resolves once the batch is durable (`Ok`), or with why it is not (never acked then).
pub struct Durable(oneshot::Receiver<Result<(), StoreError>>);

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(StoreError::Stopped)))
    }
}

/// What the buffer needs to know of a target: its folder's name and whether its chunks are
/// split by tag (its object keys use the tag).
pub struct BufferTarget {
    pub name: String,
    pub partition_by_tag: bool,
}

/// A sealed chunk and the index of the target it belongs to.
pub type Sealed = (usize, SealedChunk);

/// Uncompressed bytes that may wait in writer queues at once (in KiB permits): bounds memory
/// whatever the frame sizes, and makes intake wait when compression falls behind.
const INFLIGHT_KIB: usize = 32 << 10;
/// Batches a writer's queue holds before a submit to it waits.
const QUEUE_DEPTH: usize = 64;

pub struct Buffer {
    lanes: Vec<Lane>,
    dirs: Vec<PathBuf>,
    inflight: Arc<Semaphore>,
    pub usage: Arc<Usage>,
    pub dedupe: Arc<Dedupe>,
    /// The chunks not uploaded yet, by age.
    pub backlog: Arc<Backlog>,
    /// Live sources (connections) per writer slot: where the next one goes.
    sources: Arc<Vec<AtomicUsize>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Where one connection's batches go: a writer slot, kept for the connection's life (see the
/// module docs). Dropping it frees the slot for the next connection.
pub struct Source {
    slot: usize,
    sources: Arc<Vec<AtomicUsize>>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.sources[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
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
        crate::common::durable::create_dir_all(root)?;
        let usage = Arc::new(Usage::new(config.quota.0));
        let dedupe = Arc::new(Dedupe::new(config.dedupe_window.0));
        let dirs: Vec<PathBuf> = targets.iter().map(|t| root.join(&t.name)).collect();
        let backlog = Arc::new(Backlog::new(dirs.clone()));
        let mut max_seq = 0u64;
        for (index, dir) in dirs.iter().enumerate() {
            crate::common::durable::create_dir_all(dir)?;
            max_seq = max_seq.max(recover_dir(dir, &usage, &dedupe, |chunk| {
                // Waiting since its last write at the latest.
                let since = std::fs::metadata(&chunk.journal_path)
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|_| std::time::SystemTime::now());
                backlog.opened(chunk.seq, since);
                let _ = sealed.send((index, chunk));
            })?);
        }
        warn_unknown_dirs(root, targets);
        let seqs = Arc::new(SeqAllocator::open(
            &root.join("seq.next"),
            max_seq + 1,
            backlog.clone(),
        )?);
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
                    compressor: config.compressor(),
                    fsync: config.fsync,
                    seal_bytes: config.seal_bytes.0,
                    seal_age: config.seal_age.0,
                    partition_by_tag: target.partition_by_tag,
                    seqs: seqs.clone(),
                    usage: usage.clone(),
                    sealed: sealed.clone(),
                    open: HashMap::new(),
                    unsealed: Vec::new(),
                    max_open: config.max_open_chunks.max(1),
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
            dirs,
            inflight: Arc::new(Semaphore::new(INFLIGHT_KIB)),
            usage,
            dedupe,
            backlog,
            sources: Arc::new(
                (0..config.shards.max(1))
                    .map(|_| AtomicUsize::new(0))
                    .collect(),
            ),
            threads: Mutex::new(threads),
        })
    }

    /// A new connection's writer slot: the slot with the fewest live connections (ties: the
    /// one whose writers hold the fewest batches right now).
    pub fn source(&self) -> Source {
        let load = |slot: usize| {
            let held: usize = self
                .lanes
                .iter()
                .filter_map(|l| l.busy.get(slot))
                .map(|b| b.load(Ordering::Relaxed))
                .sum();
            (self.sources[slot].load(Ordering::Relaxed), held)
        };
        let slot = (0..self.sources.len())
            .min_by_key(|&s| load(s))
            .unwrap_or(0);
        self.sources[slot].fetch_add(1, Ordering::Relaxed);
        Source {
            slot,
            sources: self.sources.clone(),
        }
    }

    /// Queues a batch for `target` with the writer of `source` and its partition; waits only
    /// when that writer's queue is full (that wait is the backpressure). The returned receiver
    /// says when it is durable.
    pub async fn submit(
        &self,
        target: usize,
        batch: Batch,
        source: &Source,
    ) -> Result<Durable, StoreError> {
        let shards = &self.lanes[target].shards;
        let (done, durable) = oneshot::channel();
        let kib = (batch.lines.capacity() / 1024 + 1).min(INFLIGHT_KIB) as u32;
        let permit = self
            .inflight
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        // The connection's slot, turned by the partition: one connection's tags spread over
        // the writers too, and a partition of one connection always lands on the same one.
        let pick = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            batch.partition.hash(&mut h);
            (h.finish() as usize).wrapping_add(source.slot) % shards.len()
        };
        let busy = &self.lanes[target].busy;
        busy[pick].fetch_add(1, Ordering::Relaxed);
        if shards[pick]
            .send(ShardMsg::Append(batch, done, permit))
            .await
            .is_err()
        {
            busy[pick].fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::ShuttingDown);
        }
        Ok(Durable(durable))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

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
        drop(buffer.submit(0, batch, &buffer.source()).await.unwrap());
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

    /// Every line of every sealed chunk, chunks in sequence order.
    fn lines_in_order(chunks: &mut [SealedChunk]) -> Vec<String> {
        use std::io::Read;
        chunks.sort_by_key(|c| c.seq);
        let mut out = Vec::new();
        for c in chunks.iter() {
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(std::fs::File::open(&c.data_path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            out.extend(text.lines().map(str::to_string));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_connections_events_keep_their_order_across_chunks_while_its_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let config = BufferConfig {
            dir: dir.path().join("buffer"),
            shards: 2,
            seal_bytes: crate::common::units::ByteSize(300),
            ..BufferConfig::default()
        };
        let (sealed, mut sealed_rx) = mpsc::unbounded_channel();
        let buffer = Arc::new(Buffer::open(&config, &[target(false)], sealed).unwrap());
        let batch = |line: String| Batch {
            partition: Arc::from(""),
            lines: line.into_bytes(),
            events: 1,
            first_time: EventTime { secs: 1, nanos: 0 },
            claim: None,
        };
        // Another connection keeps both writers busy meanwhile.
        let other = {
            let buffer = buffer.clone();
            tokio::spawn(async move {
                let source = buffer.source();
                let mut pending = Vec::new();
                for i in 0..300 {
                    let line = format!("{{\"other\":{i}}}\n");
                    pending.push(buffer.submit(0, batch(line), &source).await.unwrap());
                }
                for p in pending {
                    p.await.unwrap();
                }
            })
        };
        // One connection pipelines its frames (it does not wait for each ack).
        let source = buffer.source();
        let mut pending = Vec::new();
        for i in 0..300 {
            let line = format!("{{\"i\":{i}}}\n");
            pending.push(buffer.submit(0, batch(line), &source).await.unwrap());
        }
        for p in pending {
            p.await.unwrap();
        }
        other.await.unwrap();
        buffer.close().await;
        let mut chunks: Vec<SealedChunk> = std::iter::from_fn(|| sealed_rx.try_recv().ok())
            .map(|(_, c)| c)
            .collect();
        assert!(
            chunks.len() > 10,
            "only {} chunks: the test needs many",
            chunks.len()
        );
        let ours: Vec<String> = lines_in_order(&mut chunks)
            .into_iter()
            .filter(|l| l.starts_with("{\"i\""))
            .collect();
        let want: Vec<String> = (0..300).map(|i| format!("{{\"i\":{i}}}")).collect();
        assert_eq!(
            ours, want,
            "one connection's events out of order across chunks"
        );
    }

    #[test]
    fn connections_spread_over_the_writers() {
        let dir = tempfile::tempdir().unwrap();
        let config = BufferConfig {
            dir: dir.path().join("buffer"),
            shards: 3,
            ..BufferConfig::default()
        };
        let (sealed, _rx) = mpsc::unbounded_channel();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _guard = rt.enter();
        let buffer = Buffer::open(&config, &[target(false)], sealed).unwrap();
        let a = buffer.source();
        let b = buffer.source();
        let c = buffer.source();
        let mut slots = vec![a.slot, b.slot, c.slot];
        slots.sort();
        assert_eq!(slots, [0, 1, 2]);
        drop(b);
        // The freed slot is the next connection's.
        let d = buffer.source();
        assert!(d.slot != a.slot && d.slot != c.slot);
        rt.block_on(buffer.close());
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
            let durable = buffer.submit(0, batch, &buffer.source()).await.unwrap();
            durable.await.unwrap();
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
