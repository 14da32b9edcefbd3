//! One writer thread of a target: it takes every batch queued for it, appends them to the open
//! chunk of their partition, commits once for the lot (group commit) and then answers all
//! their submitters. Owns the open chunks, sealing (by size, age and the open-chunk cap) and
//! the disk usage they count against the quota. It must never answer `Ok` for a batch whose
//! chunk's commit failed, and never reuse a chunk after an I/O error.
//!
//! A full disk (ENOSPC) fails the batches of the chunk it hit, and tells `usage`, which pauses
//! intake until the filesystem has room again. A chunk that could not be sealed (its tail or
//! seal record did not fit) is kept in `unsealed` and sealed again on every tick: what it
//! acked ships as soon as the seal fits, without waiting for a restart.

use super::chunk::{self, ChunkFile, CommitError, OpenChunk};
use super::dedupe::ClaimGuard;
use super::encoder::Compressor;
use super::seq::SeqAllocator;
use super::usage::{Usage, is_disk_full};
use super::{Batch, Sealed, StoreError};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tracing::{error, info};

/// Where a writer answers a batch's submitter: durable, or why not.
pub(super) type Answer = oneshot::Sender<Result<(), StoreError>>;

pub(super) enum ShardMsg {
    /// The permit holds the batch's share of the in-flight memory budget until it is compressed.
    Append(Batch, Answer, OwnedSemaphorePermit),
    /// Seal chunks past their age.
    Tick,
    /// Seal everything and stop.
    Stop,
}

/// Stop grouping once this many uncompressed bytes wait for one commit.
const GROUP_BYTES: usize = 1 << 20;

/// A submitter waiting for the commit of the chunk (by sequence number) its batch went into.
struct Waiter {
    chunk: u64,
    answer: Answer,
    claim: Option<ClaimGuard>,
}

/// What the messages of one group asked for besides appends.
#[derive(Default)]
struct GroupOrders {
    tick: bool,
    stop: bool,
}

pub(super) struct ShardWriter {
    /// Batches this writer holds, queued or in hand, until answered (shared with `submit`,
    /// which sends to the least busy writer).
    pub busy: Arc<AtomicUsize>,
    pub target: usize,
    pub dir: PathBuf,
    /// What chunks are written with.
    pub compressor: Compressor,
    pub fsync: bool,
    pub seal_bytes: u64,
    pub seal_age: Duration,
    pub partition_by_tag: bool,
    pub seqs: Arc<SeqAllocator>,
    pub usage: Arc<Usage>,
    pub sealed: mpsc::UnboundedSender<Sealed>,
    /// The open chunk of each partition, and how many of its disk bytes `usage` counts.
    pub open: HashMap<Arc<str>, (OpenChunk, u64)>,
    /// Chunks whose seal failed (a full disk), with the disk bytes `usage` counts for them:
    /// sealed again on every tick until it succeeds.
    pub unsealed: Vec<(u64, u64)>,
    pub max_open: usize,
}

/// Logs and counts a failed commit of chunk `seq` (a full disk by the file it hit); its
/// batches are not acked.
fn commit_failed(usage: &Usage, dir: &Path, seq: u64, e: &CommitError) -> Failed {
    error!(
        chunk = seq,
        file = ?e.file,
        "commit failed, nothing in it since the last commit is acked: {}",
        e.error
    );
    metrics::counter!("rin_buffer_commit_errors_total").increment(1);
    let disk_full = is_disk_full(&e.error);
    if disk_full {
        let stage = match e.file {
            ChunkFile::Data => "chunk",
            ChunkFile::Journal => "journal",
        };
        usage.disk_full(stage, dir, &e.error);
    }
    Failed { seq, disk_full }
}

/// A chunk whose batches in the group must not be acked, and whether a full disk is why.
#[derive(Clone, Copy)]
struct Failed {
    seq: u64,
    disk_full: bool,
}

/// The group in progress: submitters waiting for its commit, and the chunks whose batches must
/// not be acked (a write, seal or commit failed).
#[derive(Default)]
struct Group {
    waiters: Vec<Waiter>,
    failed: Vec<Failed>,
}

impl ShardWriter {
    pub fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) {
        let mut group = Group::default();
        loop {
            let Some(first) = rx.blocking_recv() else {
                self.seal_all();
                return;
            };
            let orders = self.take_group(first, &mut rx, &mut group);
            self.commit_group(&mut group);
            self.account();
            if orders.tick {
                self.retry_unsealed();
            }
            self.seal_due(orders.tick);
            if orders.stop {
                self.seal_all();
                return;
            }
        }
    }

    /// Appends `first` and whatever else is queued, up to `GROUP_BYTES` of lines.
    fn take_group(
        &mut self,
        first: ShardMsg,
        rx: &mut mpsc::Receiver<ShardMsg>,
        group: &mut Group,
    ) -> GroupOrders {
        let mut orders = GroupOrders::default();
        let mut grouped = 0usize;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ShardMsg::Append(batch, answer, permit) => {
                    grouped += batch.lines.len();
                    let result = self.append(&batch, &mut group.failed);
                    let Batch { lines, claim, .. } = batch;
                    drop(lines);
                    drop(permit);
                    match result {
                        Ok(chunk) => group.waiters.push(Waiter {
                            chunk,
                            answer,
                            claim,
                        }),
                        // A claim dropped here is released: nothing of it is durable.
                        Err(e) => {
                            self.busy.fetch_sub(1, Ordering::Relaxed);
                            let _ = answer.send(Err(e));
                        }
                    }
                }
                ShardMsg::Tick => orders.tick = true,
                ShardMsg::Stop => orders.stop = true,
            }
            if grouped < GROUP_BYTES && !orders.stop {
                next = rx.try_recv().ok();
            }
        }
        orders
    }

    /// Commits every chunk the group wrote to, then answers its submitters and settles their
    /// claims: `Ok` only where the chunk's commit succeeded.
    fn commit_group(&mut self, group: &mut Group) {
        let mut broken = Vec::new();
        for (key, (chunk, _)) in self.open.iter_mut() {
            if !chunk.is_dirty() {
                continue;
            }
            if let Err(e) = chunk.commit() {
                group
                    .failed
                    .push(commit_failed(&self.usage, &self.dir, chunk.seq, &e));
                broken.push(key.clone());
            }
        }
        for key in broken {
            self.poison(&key);
        }
        metrics::counter!("rin_buffer_commits_total").increment(1);
        for waiter in group.waiters.drain(..) {
            let result = match group.failed.iter().find(|f| f.seq == waiter.chunk) {
                Some(f) if f.disk_full => Err(StoreError::DiskFull {
                    dir: self.dir.clone(),
                }),
                Some(_) => Err(StoreError::NotDurable),
                None => Ok(()),
            };
            if let Some(claim) = waiter.claim {
                claim.finish(result.is_ok());
            }
            self.busy.fetch_sub(1, Ordering::Relaxed);
            let _ = waiter.answer.send(result);
        }
        group.failed.clear();
    }

    /// Seals chunks past `seal_bytes`, and on a tick those past `seal_age`.
    fn seal_due(&mut self, tick: bool) {
        let due: Vec<Arc<str>> = self
            .open
            .iter()
            .filter(|(_, (c, _))| {
                c.bytes >= self.seal_bytes || (tick && c.opened_at.elapsed() >= self.seal_age)
            })
            .map(|(k, _)| k.clone())
            .collect();
        // Between groups nobody waits on these chunks, so a failed seal fails no batch.
        let mut failed = Vec::new();
        for key in due {
            self.seal(&key, &mut failed);
        }
    }

    /// Returns the sequence number of the chunk the batch went into. On error the chunk that
    /// is now broken (if any) is added to `failed`: its earlier, uncommitted batches fail
    /// with it.
    fn append(&mut self, batch: &Batch, failed: &mut Vec<Failed>) -> Result<u64, StoreError> {
        let key: Arc<str> = if self.partition_by_tag {
            batch.partition.clone()
        } else {
            Arc::from("")
        };
        let full = self.open.get(&key).is_some_and(|(c, _)| {
            c.bytes > 0 && c.bytes + batch.lines.len() as u64 > self.seal_bytes
        });
        if full {
            self.seal(&key, failed);
        }
        if !self.open.contains_key(&key) {
            self.open_chunk(&key, failed)?;
        }
        let (chunk, _) = self.open.get_mut(&key).unwrap();
        let seq = chunk.seq;
        let id = batch.claim.as_ref().map(|c| c.id.clone());
        if let Err(e) = chunk.append(&batch.lines, batch.events, batch.first_time, id) {
            let error = self.write_failed("chunk", format!("cannot write chunk {seq}"), e);
            self.poison(&key);
            failed.push(Failed {
                seq,
                disk_full: matches!(error, StoreError::DiskFull { .. }),
            });
            return Err(error);
        }
        Ok(seq)
    }

    /// The answer for a failed write of `stage`: a full disk is told to `usage` (which pauses
    /// intake) and answered as such; any other error as what it is.
    fn write_failed(&self, stage: &'static str, doing: String, e: io::Error) -> StoreError {
        if is_disk_full(&e) {
            error!("{doing}: {e}");
            self.usage.disk_full(stage, &self.dir, &e);
            StoreError::DiskFull {
                dir: self.dir.clone(),
            }
        } else {
            StoreError::io(doing, e)
        }
    }

    /// Opens a new chunk for `key`, first sealing the oldest open one at `max_open`.
    fn open_chunk(&mut self, key: &Arc<str>, failed: &mut Vec<Failed>) -> Result<(), StoreError> {
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
                self.seal(&oldest, failed);
            }
        }
        let seq = self
            .seqs
            .next()
            .map_err(|e| self.write_failed("chunk", "cannot allocate a chunk number".into(), e))?;
        let chunk = match OpenChunk::create(&self.dir, seq, key, self.compressor, self.fsync) {
            Ok(chunk) => chunk,
            Err(e) => {
                // A half-created chunk holds nothing acked: its files go now, not at the next
                // start (they would hold space the full disk lacks).
                let _ = chunk::remove_chunk(&self.dir, seq);
                return Err(self.write_failed("chunk", format!("cannot create chunk {seq}"), e));
            }
        };
        self.open.insert(key.clone(), (chunk, 0));
        metrics::gauge!("rin_buffer_chunks", "state" => "open").increment(1.0);
        Ok(())
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

    /// Seals `key`'s chunk and queues it for shipping. A chunk that cannot be sealed is added
    /// to `failed` (its batches in the group are not acked); it stays on disk for recovery.
    fn seal(&mut self, key: &Arc<str>, failed: &mut Vec<Failed>) {
        let Some((mut chunk, accounted)) = self.open.remove(key) else {
            return;
        };
        let seq = chunk.seq;
        metrics::gauge!("rin_buffer_chunks", "state" => "open").decrement(1.0);
        if let Err(e) = chunk.commit() {
            failed.push(commit_failed(&self.usage, &self.dir, seq, &e));
            self.give_up(chunk, accounted);
            return;
        }
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
                    "cannot seal chunk; it stays on disk and sealing is retried: {e}"
                );
                let disk_full = is_disk_full(&e);
                if disk_full {
                    self.usage.disk_full("seal", &self.dir, &e);
                }
                failed.push(Failed { seq, disk_full });
                self.unsealed.push((seq, accounted));
            }
        }
    }

    /// Seals again the chunks whose seal failed, from their journals (as recovery would).
    fn retry_unsealed(&mut self) {
        for (seq, accounted) in std::mem::take(&mut self.unsealed) {
            match chunk::recover(&self.dir, seq) {
                Ok(r) => {
                    info!(chunk = seq, "sealed a chunk whose seal had failed earlier");
                    self.usage.sub(accounted);
                    if let Some(sealed) = r.chunk {
                        self.usage.add(sealed.disk_bytes());
                        metrics::counter!("rin_chunks_sealed_total").increment(1);
                        metrics::gauge!("rin_buffer_chunks", "state" => "sealed").increment(1.0);
                        let _ = self.sealed.send((self.target, sealed));
                    }
                }
                Err(e) => {
                    // Said once per full disk (usage is flagged until it has room again).
                    if is_disk_full(&e) && self.usage.full_disk().is_none() {
                        self.usage.disk_full("seal", &self.dir, &e);
                    }
                    self.unsealed.push((seq, accounted));
                }
            }
        }
    }

    /// After an I/O error the in-memory state of a chunk is suspect: seal it from its journal
    /// (its last durable point) as recovery would, and start a fresh one for later batches.
    fn poison(&mut self, key: &Arc<str>) {
        let Some((chunk, accounted)) = self.open.remove(key) else {
            return;
        };
        metrics::gauge!("rin_buffer_chunks", "state" => "open").decrement(1.0);
        self.give_up(chunk, accounted);
    }

    /// Stops using a chunk after an error: takes its journal back to the last durable commit,
    /// then seals it from there. The page cache may hold a journal record the disk does not
    /// (a failed fsync), and recovery reads through the page cache: without the step back it
    /// would seal the chunk at a commit that was never acked, and the client's resend would
    /// be stored a second time.
    fn give_up(&mut self, mut chunk: OpenChunk, accounted: u64) {
        let seq = chunk.seq;
        let abandoned = chunk.abandon();
        drop(chunk);
        if let Err(e) = abandoned {
            error!(
                chunk = seq,
                "cannot take the chunk back to its last durable commit; it is left alone and recovered at the next start: {e}"
            );
            return;
        }
        self.recover_now(seq, accounted);
    }

    /// Seals a chunk given up after an error from its journal, as recovery at start would, and
    /// queues it for shipping.
    fn recover_now(&mut self, seq: u64, accounted: u64) {
        match chunk::recover(&self.dir, seq) {
            Ok(r) => {
                self.usage.sub(accounted);
                if let Some(sealed) = r.chunk {
                    self.usage.add(sealed.disk_bytes());
                    metrics::gauge!("rin_buffer_chunks", "state" => "sealed").increment(1.0);
                    let _ = self.sealed.send((self.target, sealed));
                }
            }
            Err(e) => {
                error!(
                    chunk = seq,
                    "cannot seal chunk after an error; sealing is retried: {e}"
                );
                if is_disk_full(&e) {
                    self.usage.disk_full("seal", &self.dir, &e);
                }
                self.unsealed.push((seq, accounted));
            }
        }
    }

    /// At stop: what cannot be sealed now is sealed by recovery at the next start.
    fn seal_all(&mut self) {
        let keys: Vec<Arc<str>> = self.open.keys().cloned().collect();
        let mut failed = Vec::new();
        for key in keys {
            self.seal(&key, &mut failed);
        }
        self.retry_unsealed();
    }
}
