//! The accept loop both intake servers run: accept a TCP connection, admit it under
//! `max_connections`, finish its TLS handshake (if any) within a timeout, and serve it on its
//! own task; at shutdown stop accepting and wait for the open connections to finish. Owns
//! admission and the TLS handshake; what differs between the intakes (metrics, what happens at
//! the connection limit, how long the drain may take, how a failed handshake is reported) is
//! an [`AcceptPolicy`] and a [`Handler`]. It must never let one connection's handshake hold up
//! the loop, and never stop the process from exiting past the drain it promised.

use crate::common::shutdown::Shutdown;
use crate::intake::tls::ReloadableAcceptor;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::warn;

/// What an intake does with a connection once it is admitted.
pub trait Handler: Send + Sync + 'static {
    /// Serves one connection until it ends (or `stop` ends it).
    fn serve<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        stop: Shutdown,
    ) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Reports a TLS handshake that did not complete (each intake counts and logs its own).
    fn tls_failed(&self, peer: SocketAddr, failure: TlsFailure);
}

/// Why a TLS handshake did not complete.
pub enum TlsFailure {
    /// The client closed before finishing it (a port probe, a health check).
    Closed(io::Error),
    Failed(io::Error),
    TimedOut(Duration),
}

/// What to do with a connection over `max_connections`.
pub enum AtCapacity {
    /// Accept and close it at once, counted in `metric` (`reason="max_connections"`) and
    /// logged with `warning` at most every `REFUSAL_LOG_EVERY`: the client retries later.
    Refuse {
        metric: &'static str,
        warning: &'static str,
    },
    /// Accept nothing until a connection closes: new ones wait in the listen backlog.
    Wait,
}

/// How long open connections may take to finish at shutdown.
pub enum Drain {
    /// Until every connection has closed (each bounds its own drain).
    UntilClosed,
    /// At most this long; the connections still open are then dropped, with a warning.
    AtMost(Duration),
}

/// The per-intake parts of the accept loop.
pub struct AcceptPolicy {
    /// The intake's name in log messages (`forward`, `HTTP`).
    pub name: &'static str,
    /// Counter of connections admitted.
    pub connections_metric: &'static str,
    pub max_connections: usize,
    pub at_capacity: AtCapacity,
    /// How long a client has to finish the TLS handshake.
    pub tls_timeout: Duration,
    pub drain: Drain,
}

/// Refusals at the connection limit are logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Runs the accept loop until `stop`, then drains as `policy.drain` says.
pub async fn accept_until_stopped<H: Handler>(
    listener: TcpListener,
    tls: Option<ReloadableAcceptor>,
    policy: AcceptPolicy,
    handler: Arc<H>,
    mut stop: Shutdown,
) {
    let mut admission = Admission::new(&policy);
    let mut tasks = JoinSet::new();
    loop {
        let waited_permit = match policy.at_capacity {
            AtCapacity::Wait => tokio::select! {
                p = admission.connections.clone().acquire_owned() => Some(p.expect("semaphore closed")),
                _ = stop.wait() => break,
            },
            AtCapacity::Refuse { .. } => None,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!("{} accept failed: {e}", policy.name);
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Some(permit) = waited_permit.or_else(|| admission.admit_or_refuse(&policy, peer))
        else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics::counter!(policy.connections_metric).increment(1);
        let tls = tls.as_ref().map(|t| (t.acceptor(), policy.tls_timeout));
        tasks.spawn(serve_one(
            handler.clone(),
            stream,
            peer,
            tls,
            stop.clone(),
            permit,
        ));
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    drain(tasks, &policy).await;
}

/// The connection limit, and when the last refusal was logged.
struct Admission {
    connections: Arc<Semaphore>,
    last_refusal_log: Option<Instant>,
}

impl Admission {
    fn new(policy: &AcceptPolicy) -> Admission {
        Admission {
            connections: Arc::new(Semaphore::new(policy.max_connections)),
            last_refusal_log: None,
        }
    }

    /// A permit if a connection is free; else the refusal is counted and (throttled) logged.
    fn admit_or_refuse(
        &mut self,
        policy: &AcceptPolicy,
        peer: SocketAddr,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Some(permit);
        }
        if let AtCapacity::Refuse { metric, warning } = policy.at_capacity {
            metrics::counter!(metric, "reason" => "max_connections").increment(1);
            if self
                .last_refusal_log
                .is_none_or(|t| t.elapsed() > REFUSAL_LOG_EVERY)
            {
                warn!(%peer, "{warning}");
                self.last_refusal_log = Some(Instant::now());
            }
        }
        None
    }
}

/// One admitted connection: the TLS handshake if any, then the handler. The permit is held
/// until the connection ends.
async fn serve_one<H: Handler>(
    handler: Arc<H>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
    stop: Shutdown,
    permit: OwnedSemaphorePermit,
) {
    match tls {
        None => handler.serve(stream, peer, stop).await,
        Some((acceptor, timeout)) => {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => handler.serve(tls_stream, peer, stop).await,
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    handler.tls_failed(peer, TlsFailure::Closed(e))
                }
                Ok(Err(e)) => handler.tls_failed(peer, TlsFailure::Failed(e)),
                Err(_) => handler.tls_failed(peer, TlsFailure::TimedOut(timeout)),
            }
        }
    }
    drop(permit);
}

async fn drain(mut tasks: JoinSet<()>, policy: &AcceptPolicy) {
    let all_closed = async { while tasks.join_next().await.is_some() {} };
    match policy.drain {
        Drain::UntilClosed => all_closed.await,
        Drain::AtMost(limit) => {
            if tokio::time::timeout(limit, all_closed).await.is_err() {
                warn!(
                    "{} connections still open after the drain; closing them",
                    policy.name
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::shutdown::{self, Trigger};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    /// Echoes bytes back until the client closes; ignores shutdown, as a busy client would.
    struct Echo;

    impl Handler for Echo {
        async fn serve<S>(self: Arc<Self>, mut stream: S, _peer: SocketAddr, _stop: Shutdown)
        where
            S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        {
            let mut byte = [0u8; 1];
            while let Ok(1) = stream.read(&mut byte).await {
                if stream.write_all(&byte).await.is_err() {
                    return;
                }
            }
        }

        fn tls_failed(&self, _peer: SocketAddr, _failure: TlsFailure) {}
    }

    const LONG: Duration = Duration::from_secs(10);

    async fn start(at_capacity: AtCapacity, drain: Drain) -> (SocketAddr, Trigger, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let policy = AcceptPolicy {
            name: "test",
            connections_metric: "test_connections_total",
            max_connections: 1,
            at_capacity,
            tls_timeout: LONG,
            drain,
        };
        let (trigger, stop) = shutdown::channel();
        let task = tokio::spawn(accept_until_stopped(
            listener,
            None,
            policy,
            Arc::new(Echo),
            stop,
        ));
        (addr, trigger, task)
    }

    /// Sends a byte; `true` when it comes back (served), `false` when the connection is closed.
    async fn echoes(stream: &mut TcpStream, wait: Duration) -> Option<bool> {
        let _ = stream.write_all(b"x").await;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(wait, stream.read(&mut byte)).await {
            Ok(Ok(1)) => Some(true),
            Ok(_) => Some(false),
            Err(_) => None,
        }
    }

    const REFUSE: AtCapacity = AtCapacity::Refuse {
        metric: "test_refused_total",
        warning: "test limit reached",
    };

    #[tokio::test]
    async fn over_the_limit_refuse_closes_the_new_connection_at_once() {
        let (addr, trigger, task) = start(REFUSE, Drain::UntilClosed).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echoes(&mut first, LONG).await, Some(true));
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echoes(&mut second, LONG).await, Some(false));
        drop(first);
        // Once the first connection ends, its place is free again.
        let mut served = false;
        for _ in 0..100 {
            let mut next = TcpStream::connect(addr).await.unwrap();
            if echoes(&mut next, LONG).await == Some(true) {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            served,
            "a connection was refused after the first one closed"
        );
        trigger.trigger();
        tokio::time::timeout(LONG, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn over_the_limit_wait_serves_the_new_connection_once_one_closes() {
        let (addr, trigger, task) = start(AtCapacity::Wait, Drain::UntilClosed).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echoes(&mut first, LONG).await, Some(true));
        // Waits in the listen backlog: neither served nor closed.
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echoes(&mut second, Duration::from_millis(300)).await, None);
        drop(first);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(LONG, second.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(1))), "{read:?}");
        drop(second);
        trigger.trigger();
        tokio::time::timeout(LONG, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_bounded_drain_ends_with_connections_still_open() {
        let drain = Drain::AtMost(Duration::from_millis(100));
        let (addr, trigger, task) = start(AtCapacity::Wait, drain).await;
        let mut open = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echoes(&mut open, LONG).await, Some(true));
        trigger.trigger();
        tokio::time::timeout(LONG, task).await.unwrap().unwrap();
        // The connection's task was dropped with the loop: the client sees it closed.
        assert_eq!(echoes(&mut open, LONG).await, Some(false));
    }
}
