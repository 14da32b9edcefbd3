//! The process's one shutdown signal. [`signal`] resolves at SIGTERM or SIGINT (Ctrl-C); a
//! [`Trigger`] turns it into a [`Shutdown`] every task holds a clone of and can ask
//! ([`Shutdown::is_triggered`]) or wait on ([`Shutdown::wait`]) without holding a lock across an
//! `.await`.
//!
//! Must never: lose a trigger (a task that starts waiting after the trigger resolves at once);
//! stop anything by itself when its trigger is merely kept alive.

use tokio::sync::watch;

/// Starts the shutdown (once; later calls do nothing more).
#[derive(Debug, Clone)]
pub struct Trigger(std::sync::Arc<watch::Sender<bool>>);

/// Whether, and when, shutdown began.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, untriggered shutdown signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(std::sync::Arc::new(tx)), Shutdown(rx))
}

impl Trigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the shutdown is triggered, or once every [`Trigger`] is gone (nothing can
    /// keep the task alive on purpose then).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Resolves at SIGTERM or SIGINT (Ctrl-C), the signals every rin-ship command stops
/// gracefully on. If the SIGTERM handler cannot be installed, Ctrl-C alone counts.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Triggers `trigger` at the first [`signal`], logging `what` (a sentence on what happens next).
pub fn trigger_on_signal(trigger: Trigger, what: &'static str) {
    tokio::spawn(async move {
        signal().await;
        tracing::info!("signal received: {what}");
        trigger.trigger();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_waiters_see_the_trigger_and_a_dropped_trigger_releases() {
        let (trigger, mut shutdown) = channel();
        assert!(!shutdown.is_triggered());
        let mut other = shutdown.clone();
        trigger.trigger();
        shutdown.wait().await;
        other.wait().await;
        assert!(shutdown.is_triggered());

        let (trigger, mut shutdown) = channel();
        drop(trigger);
        shutdown.wait().await;
        assert!(!shutdown.is_triggered());
    }
}
