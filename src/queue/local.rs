//! The embedded local queue: a durable directory queue under `<data_dir>/queue/`, standing in
//! for SQS when no cloud is configured. The shipper enqueues its object-created events here and
//! `serve`'s embedded loader consumes them, with SQS's contract: at-least-once delivery, up to
//! 10 messages per receive, a lease (visibility timeout) that can be extended, a receive count,
//! and delete only by the consumer once its load committed.
//!
//! On disk (one file per message, named `<id>.<receive count>`):
//!
//! ```text
//! queue/tmp/       enqueue writes and fsyncs here first...
//! queue/ready/     ...then renames here (and fsyncs the folder): the message is durable
//! queue/inflight/  a receive renames it here, with its receive count incremented
//! ```
//!
//! Leases live in memory only: the data folder is locked by one process, so at start-up
//! everything in `inflight/` belonged to a process that is gone, and goes back to `ready/`
//! (keeping its receive count). An expired lease does the same while running. Delete unlinks
//! the in-flight file. Ids sort by enqueue time, so messages are received oldest first.
//!
//! Must never: acknowledge an enqueue before the message file and its folder entry are fsynced;
//! lose a message that was not deleted (a crash at any point leaves it in `ready/` or
//! `inflight/`, both redelivered).

use anyhow::{Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

/// Messages one receive returns at most (as SQS).
pub const MAX_RECEIVE: usize = 10;

/// A message received this many times without being deleted moves to `dead/` (an SQS redrive
/// policy's maxReceiveCount), so one that can never load stops being retried forever.
pub const DEAD_AFTER_RECEIVES: u32 = 10;

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMessage {
    pub id: String,
    pub body: String,
    /// What deletes it or extends its lease (its in-flight file name).
    pub receipt: String,
    /// How many times it was received, this time included (1 on first delivery).
    pub receive_count: i64,
}

#[derive(Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// (id, receive count so far), oldest first.
    ready: BTreeSet<(String, u32)>,
    /// receipt (`<id>.<count>`) -> lease.
    inflight: HashMap<String, Lease>,
    /// Receives waiting for a message (they found none): their consumers hold no message
    /// that is still being loaded.
    idle_receivers: usize,
}

/// Counts its receive among the idle ones while `on`.
struct Idle<'a> {
    inner: &'a Inner,
    on: bool,
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        if self.on {
            self.inner.state.lock().unwrap().idle_receivers -= 1;
        }
    }
}

struct Lease {
    id: String,
    count: u32,
    deadline: Instant,
}

fn file_name(id: &str, count: u32) -> String {
    format!("{id}.{count}")
}

/// `<id>.<count>` back into its parts; `None` for anything else (stray files are left alone).
fn parse_name(name: &str) -> Option<(String, u32)> {
    let (id, count) = name.rsplit_once('.')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    Some((id.to_string(), count.parse().ok()?))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync {}", dir.display()))
}

impl LocalQueue {
    /// Opens (creating) the queue in `dir`. Messages left in flight by a previous process go
    /// back to `ready/`. The caller must hold the data folder's lock: one process per queue.
    pub fn open(dir: &Path) -> Result<LocalQueue> {
        for sub in ["tmp", "ready", "inflight", "dead"] {
            let p = dir.join(sub);
            crate::common::durable::create_dir_all(&p)
                .with_context(|| format!("cannot create queue folder {}", p.display()))?;
        }
        // Half-written enqueues: their sender never got an answer, and retries.
        for e in std::fs::read_dir(dir.join("tmp"))? {
            let e = e?;
            let _ = std::fs::remove_file(e.path());
        }
        let mut state = State::default();
        let mut recovered = 0;
        for e in std::fs::read_dir(dir.join("inflight"))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if parse_name(&name).is_some() {
                std::fs::rename(
                    dir.join("inflight").join(&name),
                    dir.join("ready").join(&name),
                )
                .with_context(|| format!("cannot return {name} to the queue"))?;
                recovered += 1;
            }
        }
        if recovered > 0 {
            sync_dir(&dir.join("ready"))?;
            sync_dir(&dir.join("inflight"))?;
        }
        for e in std::fs::read_dir(dir.join("ready"))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(entry) = parse_name(&name) {
                state.ready.insert(entry);
            }
        }
        if recovered > 0 {
            tracing::info!(
                queue = %dir.display(),
                recovered,
                "messages in flight at the last exit are back in the queue"
            );
        }
        Ok(LocalQueue {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                state: Mutex::new(state),
                wake: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Stores one message durably; returns its id once the file and its folder entry are on
    /// disk.
    pub async fn enqueue(&self, body: String) -> Result<String> {
        let inner = self.inner.clone();
        let id = tokio::task::spawn_blocking(move || inner.enqueue(body.as_bytes())).await??;
        self.inner.wake.notify_waiters();
        Ok(id)
    }

    /// Waits up to `wait` for messages; returns up to [`MAX_RECEIVE`], each leased for
    /// `visibility`.
    pub async fn receive(&self, wait: Duration, visibility: Duration) -> Result<Vec<LocalMessage>> {
        let until = Instant::now() + wait;
        let mut idle = Idle {
            inner: &self.inner,
            on: false,
        };
        loop {
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Renames and reads of small files, in place (no await between the idle count and
            // what it says, so a dropped receive cannot leave it wrong).
            let got = self.inner.take(visibility, &mut idle)?;
            let now = Instant::now();
            if !got.is_empty() || now >= until {
                return Ok(got);
            }
            // Woken by an enqueue; otherwise look again each second (expired leases).
            let nap = (until - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// Renews the leases of these receipts to `visibility` from now.
    pub fn extend(&self, receipts: &[String], visibility: Duration) {
        let deadline = Instant::now() + visibility;
        let mut st = self.inner.state.lock().unwrap();
        for r in receipts {
            if let Some(l) = st.inflight.get_mut(r) {
                l.deadline = deadline;
            }
        }
    }

    /// Deletes these messages; returns how many were still leased under these receipts (a
    /// receipt whose lease expired no longer deletes: the message is delivered again).
    pub async fn delete(&self, receipts: &[String]) -> usize {
        let inner = self.inner.clone();
        let receipts = receipts.to_vec();
        tokio::task::spawn_blocking(move || inner.delete(&receipts))
            .await
            .unwrap_or(0)
    }

    /// Messages waiting and in flight.
    pub fn depth(&self) -> (usize, usize) {
        let st = self.inner.state.lock().unwrap();
        (st.ready.len(), st.inflight.len())
    }

    /// Messages given up on (in `dead/`), counted on disk: an operator may move them back.
    pub fn dead(&self) -> usize {
        std::fs::read_dir(self.inner.dir.join("dead"))
            .map(|d| d.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    }

    /// Nothing waiting, and `consumers` receives are waiting for more: every message still
    /// in flight was given up by its consumer (its load failed) and comes back after its
    /// lease.
    pub fn drained(&self, consumers: usize) -> bool {
        let st = self.inner.state.lock().unwrap();
        st.ready.is_empty() && st.idle_receivers >= consumers
    }

    /// The queue's folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn describe(&self) -> String {
        format!("local queue {}", self.inner.dir.display())
    }
}

impl Inner {
    fn enqueue(&self, body: &[u8]) -> Result<String> {
        use std::io::Write;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let id = format!("{nanos:020}-{:016x}", rand::random::<u64>());
        let name = file_name(&id, 0);
        let tmp = self.dir.join("tmp").join(&name);
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(body)?;
            f.sync_all()
        });
        if let Err(e) = written {
            // Half a message is no message: it goes now, not at the next start (a full disk
            // needs every byte back).
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::Error::new(e).context(format!("cannot write {}", tmp.display())));
        }
        let ready = self.dir.join("ready");
        std::fs::rename(&tmp, ready.join(&name))
            .with_context(|| format!("cannot move {name} into {}", ready.display()))?;
        sync_dir(&ready)?;
        self.state.lock().unwrap().ready.insert((id.clone(), 0));
        Ok(id)
    }

    /// Returns expired leases to `ready/`, then leases up to 10 ready messages. Counts the
    /// caller among the idle receivers when it got none.
    fn take(&self, visibility: Duration, idle: &mut Idle) -> Result<Vec<LocalMessage>> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap();
        if std::mem::take(&mut idle.on) {
            st.idle_receivers -= 1;
        }
        let expired: Vec<String> = st
            .inflight
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for receipt in expired {
            let l = st.inflight.remove(&receipt).expect("listed above");
            match std::fs::rename(
                self.dir.join("inflight").join(&receipt),
                self.dir.join("ready").join(&receipt),
            ) {
                Ok(()) => {
                    st.ready.insert((l.id, l.count));
                }
                Err(e) => {
                    warn!(message = %receipt, "cannot return an expired message to the queue: {e}")
                }
            }
        }
        let mut out = Vec::new();
        while out.len() < MAX_RECEIVE {
            let Some((id, count)) = st.ready.pop_first() else {
                break;
            };
            let from = self.dir.join("ready").join(file_name(&id, count));
            if count >= DEAD_AFTER_RECEIVES {
                let dead = self.dir.join("dead").join(file_name(&id, count));
                match std::fs::rename(&from, &dead) {
                    Ok(()) => {
                        metrics::counter!("rin_local_queue_dead_letters_total").increment(1);
                        tracing::error!(
                            message = %id,
                            receive_count = count,
                            "message failed {count} times: moved to {} (move it back to ready/ to retry)",
                            dead.display()
                        );
                    }
                    Err(e) => warn!(message = %id, "cannot move {} to dead/: {e}", from.display()),
                }
                continue;
            }
            let receipt = file_name(&id, count + 1);
            let to = self.dir.join("inflight").join(&receipt);
            if let Err(e) = std::fs::rename(&from, &to) {
                warn!(message = %id, "cannot lease message {}: {e}; dropped from the index", from.display());
                continue;
            }
            let body = match std::fs::read(&to) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => {
                    // Leased anyway: the lease runs out and the message comes back.
                    warn!(message = %id, "cannot read {}: {e}", to.display());
                    st.inflight.insert(
                        receipt,
                        Lease {
                            id,
                            count: count + 1,
                            deadline: now + visibility,
                        },
                    );
                    continue;
                }
            };
            st.inflight.insert(
                receipt.clone(),
                Lease {
                    id: id.clone(),
                    count: count + 1,
                    deadline: now + visibility,
                },
            );
            out.push(LocalMessage {
                id,
                body,
                receipt,
                receive_count: i64::from(count) + 1,
            });
        }
        if out.is_empty() {
            st.idle_receivers += 1;
            idle.on = true;
        }
        Ok(out)
    }

    fn delete(&self, receipts: &[String]) -> usize {
        let mut st = self.state.lock().unwrap();
        let mut n = 0;
        for r in receipts {
            if st.inflight.remove(r).is_none() {
                continue;
            }
            match std::fs::remove_file(self.dir.join("inflight").join(r)) {
                Ok(()) => n += 1,
                Err(e) => warn!(message = %r, "cannot delete a queue message: {e}"),
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    async fn recv(q: &LocalQueue, vis: Duration) -> Vec<LocalMessage> {
        q.receive(Duration::ZERO, vis).await.unwrap()
    }

    #[tokio::test]
    async fn fifo_batches_of_ten_and_delete() {
        let d = tempfile::tempdir().unwrap();
        let q = LocalQueue::open(d.path()).unwrap();
        for i in 0..13 {
            q.enqueue(format!("m{i}")).await.unwrap();
        }
        let a = recv(&q, LONG).await;
        assert_eq!(a.len(), 10);
        let bodies: Vec<&str> = a.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies[..3], ["m0", "m1", "m2"]);
        assert!(a.iter().all(|m| m.receive_count == 1));
        let b = recv(&q, LONG).await;
        assert_eq!(b.len(), 3);
        assert!(recv(&q, LONG).await.is_empty());
        assert_eq!(q.depth(), (0, 13));
        let receipts: Vec<String> = a.iter().chain(&b).map(|m| m.receipt.clone()).collect();
        assert_eq!(q.delete(&receipts).await, 13);
        assert_eq!(q.delete(&receipts).await, 0, "already deleted");
        assert_eq!(q.depth(), (0, 0));
        assert_eq!(
            std::fs::read_dir(d.path().join("inflight"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn lease_expiry_and_receive_count() {
        let d = tempfile::tempdir().unwrap();
        let q = LocalQueue::open(d.path()).unwrap();
        q.enqueue("x".into()).await.unwrap();
        let short = Duration::from_millis(150);
        let first = recv(&q, short).await;
        assert_eq!(first[0].receive_count, 1);
        assert!(recv(&q, short).await.is_empty(), "leased");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let second = recv(&q, LONG).await;
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].receive_count, 2);
        assert_eq!(second[0].id, first[0].id);
        // The expired receipt no longer deletes; the current one does.
        assert_eq!(q.delete(&[first[0].receipt.clone()]).await, 0);
        assert_eq!(q.delete(&[second[0].receipt.clone()]).await, 1);
        assert_eq!(q.depth(), (0, 0));
    }

    #[tokio::test]
    async fn a_message_that_keeps_failing_moves_to_dead() {
        let d = tempfile::tempdir().unwrap();
        let q = LocalQueue::open(d.path()).unwrap();
        q.enqueue("poison".into()).await.unwrap();
        q.enqueue("good".into()).await.unwrap();
        let none = Duration::from_millis(0);
        for n in 1..=DEAD_AFTER_RECEIVES {
            let got = recv(&q, none).await;
            let poison = got
                .iter()
                .find(|m| m.body == "poison")
                .expect("still queued");
            assert_eq!(poison.receive_count, i64::from(n));
            if n == 1 {
                let good = got.iter().find(|m| m.body == "good").unwrap();
                assert_eq!(q.delete(std::slice::from_ref(&good.receipt)).await, 1);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            recv(&q, none).await.is_empty(),
            "moved to dead/ after its last lease"
        );
        assert_eq!(q.depth(), (0, 0));
        let dead: Vec<_> = std::fs::read_dir(d.path().join("dead")).unwrap().collect();
        assert_eq!(dead.len(), 1);
    }

    #[tokio::test]
    async fn extend_keeps_the_lease() {
        let d = tempfile::tempdir().unwrap();
        let q = LocalQueue::open(d.path()).unwrap();
        q.enqueue("x".into()).await.unwrap();
        let m = recv(&q, Duration::from_millis(150)).await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            q.extend(&[m[0].receipt.clone()], Duration::from_millis(150));
            assert!(recv(&q, LONG).await.is_empty(), "extended lease expired");
        }
        assert_eq!(q.delete(&[m[0].receipt.clone()]).await, 1);
    }

    #[tokio::test]
    async fn restart_returns_inflight_and_keeps_counts() {
        let d = tempfile::tempdir().unwrap();
        {
            let q = LocalQueue::open(d.path()).unwrap();
            for i in 0..3 {
                q.enqueue(format!("m{i}")).await.unwrap();
            }
            let m = recv(&q, LONG).await;
            assert_eq!(m.len(), 3);
            assert_eq!(q.delete(&[m[1].receipt.clone()]).await, 1);
            // A crash: leases of m0 and m2 die with the process; a half-written enqueue.
            std::fs::write(d.path().join("tmp").join("junk.0"), b"half").unwrap();
        }
        let q = LocalQueue::open(d.path()).unwrap();
        assert_eq!(q.depth(), (2, 0));
        let m = recv(&q, LONG).await;
        let got: Vec<(&str, i64)> = m
            .iter()
            .map(|m| (m.body.as_str(), m.receive_count))
            .collect();
        assert_eq!(got, [("m0", 2), ("m2", 2)]);
        assert_eq!(std::fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn receive_waits_for_an_enqueue() {
        let d = tempfile::tempdir().unwrap();
        let q = LocalQueue::open(d.path()).unwrap();
        let q2 = q.clone();
        let t = Instant::now();
        let rx = tokio::spawn(async move { q2.receive(Duration::from_secs(10), LONG).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.enqueue("late".into()).await.unwrap();
        let got = rx.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert!(t.elapsed() < Duration::from_secs(5), "long poll not woken");
        let t = Instant::now();
        assert!(
            q.receive(Duration::from_millis(200), LONG)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn drained_once_the_consumer_waits_again() {
        let d = tempfile::tempdir().unwrap();
        let q = LocalQueue::open(d.path()).unwrap();
        q.enqueue("a".into()).await.unwrap();
        assert!(!q.drained(1), "a message is waiting");
        let m = recv(&q, LONG).await;
        assert!(!q.drained(1), "its consumer is loading it");
        let q2 = q.clone();
        let waiting = tokio::spawn(async move { q2.receive(Duration::from_secs(30), LONG).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The consumer kept the message (its load failed) and waits for more: drained.
        assert!(q.drained(1));
        assert_eq!(q.depth(), (0, 1));
        waiting.abort();
        let _ = waiting.await;
        assert!(!q.drained(1), "a dropped receive is no longer counted");
        assert_eq!(q.delete(&[m[0].receipt.clone()]).await, 1);
    }
}
