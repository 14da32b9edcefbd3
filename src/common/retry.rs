//! Exponential backoff with jitter, for every retry loop (uploads, notifications, queue
//! receives, transient load errors, Data API polling): the first wait, doubled after each
//! failure up to a cap, each wait multiplied by a random factor so that many retrying clients
//! do not come back in step.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
    /// Each wait is multiplied by a factor drawn from this range (`1.0..=1.0`: none).
    jitter: (f64, f64),
    attempt: u32,
}

impl Backoff {
    /// `first`, doubling up to `max`, with no jitter.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            next: first,
            max,
            jitter: (1.0, 1.0),
            attempt: 0,
        }
    }

    /// Each wait multiplied by a random factor in `lo..hi`.
    pub fn jitter(mut self, lo: f64, hi: f64) -> Backoff {
        self.jitter = (lo, hi);
        self
    }

    /// The wait before the next attempt (jittered, at most the cap); doubles the one after.
    pub fn wait(&mut self) -> Duration {
        let (lo, hi) = self.jitter;
        let factor = if hi > lo {
            rand::rng().random_range(lo..hi)
        } else {
            lo
        };
        let wait = self.next.mul_f64(factor).min(self.max);
        self.next = (self.next * 2).min(self.max);
        self.attempt += 1;
        wait
    }

    /// Failed attempts so far (waits handed out since the last reset).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
        self.attempt = 0;
    }
}

/// Runs `op` until it succeeds, sleeping `backoff` between attempts; `on_error` hears about
/// each failure with its attempt number (from 1) and the wait that follows.
pub async fn until_ok<T, E, Fut>(
    mut backoff: Backoff,
    mut op: impl FnMut() -> Fut,
    mut on_error: impl FnMut(&E, u32, Duration),
) -> T
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                let wait = backoff.wait();
                on_error(&e, backoff.attempts(), wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        assert_eq!(
            [b.wait(), b.wait(), b.wait(), b.wait()],
            [ms(100), ms(200), ms(350), ms(350)]
        );
        assert_eq!(b.attempts(), 4);
        b.reset();
        assert_eq!(b.wait(), ms(100));
        let mut j = Backoff::new(ms(100), ms(10_000)).jitter(0.5, 1.5);
        for n in 0..5 {
            let w = j.wait();
            let base = ms(100 << n);
            assert!(w >= base.mul_f64(0.5) && w < base.mul_f64(1.5), "{w:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries() {
        let mut calls = 0;
        let mut heard = Vec::new();
        let v: u32 = until_ok(
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err("no") } else { Ok(n) } }
            },
            |e: &&str, attempt, _| heard.push((e.to_string(), attempt)),
        )
        .await;
        assert_eq!(v, 3);
        assert_eq!(heard, [("no".to_string(), 1), ("no".to_string(), 2)]);
    }
}
