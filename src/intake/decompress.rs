//! Decompression of client payloads, shared by the forward and HTTP intakes. Every codec is
//! read through a cap: more than `cap` decompressed bytes is refused before they are all
//! produced, so a small bomb cannot exhaust memory. And every decompressed payload is held
//! against one budget for the whole process (`decompress_memory`), so many connections at once
//! cannot either: output grows in steps, each reserved first, and a payload that finds the
//! budget spent is refused as busy (not acked; the client sends it again). It must never hand
//! back more than `cap` bytes, whatever the codec, and never let the payloads alive at once
//! hold more than the budget.
//!
//! A payload refused as busy first waits, up to `BUSY_WAIT`, for other payloads to be released
//! and is tried again ([`Budget::when_room`]): a burst of large frames is then taken in turn
//! instead of bounced, and only a budget that stays spent refuses.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a payload that finds the budget spent waits, in all, for room before it is
/// refused as busy (well inside any client's ack or request timeout).
pub const BUSY_WAIT: Duration = Duration::from_secs(2);

/// The memory decompressed payloads may hold at once, across every connection.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
    /// Woken whenever a payload gives its share back.
    released: Notify,
}

/// The process's budget: unlimited until serve sets it from its config.
pub static BUDGET: Budget = Budget::new(usize::MAX);

impl Budget {
    pub const fn new(limit: usize) -> Budget {
        Budget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            released: Notify::const_new(),
        }
    }

    /// Runs `attempt` (a decompression and what reads it) until it is not refused as busy
    /// (`is_busy`), waiting between tries for other payloads to be released, `wait` in all;
    /// after that the refusal stands. Counted in `rin_decompress_waits_total{outcome}`.
    pub async fn when_room<T, E, Attempt>(
        &self,
        wait: Duration,
        is_busy: impl Fn(&E) -> bool,
        mut attempt: impl FnMut() -> Attempt,
    ) -> Result<T, E>
    where
        Attempt: std::future::Future<Output = Result<T, E>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waited = false;
        loop {
            // Listening before the attempt: a release between its refusal and the wait is
            // not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match attempt().await {
                Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                    waited = true;
                    // At the deadline: one last try.
                    let _ = tokio::time::timeout_at(deadline, released).await;
                }
                outcome => {
                    if waited {
                        let label = match &outcome {
                            Err(e) if is_busy(e) => "refused",
                            _ => "admitted",
                        };
                        metrics::counter!("rin_decompress_waits_total", "outcome" => label)
                            .increment(1);
                    }
                    return outcome;
                }
            }
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes held by payloads alive now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= limit)
            })
            .is_ok()
    }
}

/// A payload's share of the budget, given back when it is dropped: keep it as long as the
/// decompressed bytes.
#[derive(Debug)]
pub struct Held<'b> {
    budget: &'b Budget,
    bytes: usize,
}

impl Held<'_> {
    fn grow(&mut self, n: usize) -> Result<(), DecompressError> {
        if !self.budget.try_take(n) {
            return Err(DecompressError::Busy {
                budget: self.budget.limit(),
            });
        }
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
            self.budget.released.notify_waiters();
        }
    }
}

/// Decompressed bytes and their share of the budget.
pub struct Decompressed<'b> {
    pub data: Vec<u8>,
    pub held: Held<'b>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// One or several concatenated gzip members.
    Gzip,
    /// zlib-wrapped deflate (RFC 9110's "deflate"), or raw deflate as some clients send it.
    Deflate,
    /// One or several zstd frames.
    Zstd,
    /// Snappy, framed (stream identifier first) or raw block format.
    Snappy,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Deflate => "deflate",
            Codec::Zstd => "zstd",
            Codec::Snappy => "snappy",
        }
    }
}

#[derive(Debug)]
pub enum DecompressError {
    /// More than the cap.
    TooLarge,
    /// Not valid data for the codec.
    Corrupt(String),
    /// Other payloads hold the whole budget (`budget` bytes) right now: refuse, to be resent.
    Busy { budget: usize },
}

/// Output grows by doubling from this, each step reserved from the budget first.
const FIRST_STEP: usize = 64 << 10;

/// Decompresses `data`, at most `cap` bytes, held against the process's [`BUDGET`].
pub fn decompress_capped(
    codec: Codec,
    data: &[u8],
    cap: usize,
) -> Result<Decompressed<'static>, DecompressError> {
    decompress_within(&BUDGET, codec, data, cap)
}

/// [`decompress_capped`] against `budget`.
pub fn decompress_within<'b>(
    budget: &'b Budget,
    codec: Codec,
    data: &[u8],
    cap: usize,
) -> Result<Decompressed<'b>, DecompressError> {
    let mut held = Held { budget, bytes: 0 };
    let mut read_capped = |reader: &mut dyn Read| -> Result<Vec<u8>, DecompressError> {
        let mut out: Vec<u8> = Vec::new();
        loop {
            if out.len() == out.capacity() {
                if out.len() > cap {
                    return Err(DecompressError::TooLarge);
                }
                // One byte past the cap tells a payload of exactly `cap` from a larger one.
                let step = out.capacity().max(FIRST_STEP).min(cap + 1 - out.len());
                held.grow(step)?;
                out.reserve_exact(step);
                let extra = out.capacity() - out.len() - step;
                if extra > 0 {
                    held.grow(extra)?;
                }
            }
            let spare = out.capacity() - out.len();
            let n = reader
                .take(spare as u64)
                .read_to_end(&mut out)
                .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
            if out.len() > cap {
                return Err(DecompressError::TooLarge);
            }
            if n < spare {
                return Ok(out);
            }
        }
    };
    let out = match codec {
        Codec::Gzip => read_capped(&mut flate2::read::MultiGzDecoder::new(data))?,
        Codec::Deflate => {
            let zlib = data.len() >= 2
                && data[0] & 0x0f == 8
                && (u16::from(data[0]) << 8 | u16::from(data[1])) % 31 == 0;
            if zlib {
                read_capped(&mut flate2::read::ZlibDecoder::new(data))?
            } else {
                read_capped(&mut flate2::read::DeflateDecoder::new(data))?
            }
        }
        Codec::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
            read_capped(&mut decoder)?
        }
        Codec::Snappy => {
            const STREAM_ID: &[u8] = b"\xff\x06\x00\x00sNaPpY";
            if data.starts_with(STREAM_ID) {
                read_capped(&mut snap::read::FrameDecoder::new(data))?
            } else {
                // Raw (block) snappy declares its length up front.
                let len = snap::raw::decompress_len(data)
                    .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
                if len > cap {
                    return Err(DecompressError::TooLarge);
                }
                held.grow(len)?;
                snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(|e| DecompressError::Corrupt(e.to_string()))?
            }
        }
    };
    Ok(Decompressed { data: out, held })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn the_cap_and_exact_sizes() {
        let budget = Budget::new(usize::MAX);
        let data = vec![7u8; 200_000];
        let z = gzip(&data);
        let d = decompress_within(&budget, Codec::Gzip, &z, 200_000).unwrap();
        assert_eq!(d.data, data);
        assert!(matches!(
            decompress_within(&budget, Codec::Gzip, &z, 199_999),
            Err(DecompressError::TooLarge)
        ));
        let empty = gzip(b"");
        assert!(
            decompress_within(&budget, Codec::Gzip, &empty, 10)
                .unwrap()
                .data
                .is_empty()
        );
    }

    #[test]
    fn payloads_alive_at_once_stay_within_the_budget() {
        let budget = Budget::new(1 << 20);
        let z = gzip(&vec![0u8; 600_000]);
        let first = decompress_within(&budget, Codec::Gzip, &z, 1 << 20).unwrap();
        assert!(
            budget.used() >= 600_000 && budget.used() <= 1 << 20,
            "{}",
            budget.used()
        );
        // The second does not fit while the first is alive...
        assert!(matches!(
            decompress_within(&budget, Codec::Gzip, &z, 1 << 20),
            Err(DecompressError::Busy { budget: 1048576 })
        ));
        // ...and a refused one gives back what it had reserved.
        assert_eq!(budget.used(), first.held.bytes);
        drop(first);
        assert_eq!(budget.used(), 0);
        let again = decompress_within(&budget, Codec::Gzip, &z, 1 << 20).unwrap();
        assert_eq!(again.data.len(), 600_000);
    }

    fn is_busy(e: &DecompressError) -> bool {
        matches!(e, DecompressError::Busy { .. })
    }

    #[tokio::test]
    async fn a_busy_payload_waits_for_room_then_is_taken() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(1 << 20)));
        let z = gzip(&vec![0u8; 600_000]);
        let first = decompress_within(budget, Codec::Gzip, &z, 1 << 20).unwrap();
        // The first payload is read for 200 ms, then released.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(first);
        });
        let started = std::time::Instant::now();
        let mut tries = 0;
        let second = budget
            .when_room(Duration::from_secs(10), is_busy, || {
                tries += 1;
                std::future::ready(decompress_within(budget, Codec::Gzip, &z, 1 << 20))
            })
            .await
            .unwrap();
        assert_eq!(second.data.len(), 600_000);
        assert!(tries >= 2, "taken without waiting: {tries}");
        // Woken by the release, not by the end of the wait.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn a_budget_that_stays_spent_refuses_after_the_wait() {
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(1 << 20)));
        let z = gzip(&vec![0u8; 600_000]);
        let _held = decompress_within(budget, Codec::Gzip, &z, 1 << 20).unwrap();
        let started = std::time::Instant::now();
        let refused = budget
            .when_room(Duration::from_millis(300), is_busy, || {
                std::future::ready(decompress_within(budget, Codec::Gzip, &z, 1 << 20))
            })
            .await;
        assert!(matches!(refused, Err(DecompressError::Busy { .. })));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
    }
}
