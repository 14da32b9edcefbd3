//! The accept loop both intake servers run: accept a TCP connection, admit it under
//! `max_connections`, finish its TLS handshake (if any) within a timeout, and serve it on its
//! own task; at shutdown stop accepting and wait for the open connections to finish. Owns
//! admission and the TLS handshake; what differs between the intakes (metrics, what happens at
//! the connection limit, how long the drain may take, how a failed handshake is reported) is
//! an [`AcceptPolicy`] and a [`Handler`]. It must never let one connection's handshake hold up
//! the loop, and never stop the process from exiting past the drain it promised.
//!
//! A place under the limit is a share, not a lease: each connection gets a [`Place`] and
//! reports on it whenever it delivers something whole (a forward frame, an HTTP request). At
//! the limit, a new connection takes the place of the one that has gone longest without
//! delivering anything (at least `EVICT_QUIET`): it is told to close (`Place::evicted`). So
//! idle keep-alive connections and slowloris-style clients (a byte now and then, never a whole
//! frame) cannot keep active clients out; an evicted connection has had nothing acked that it
//! has not been answered for, so closing it loses nothing (the client reconnects and resends
//! what was unanswered).

use crate::common::shutdown::Shutdown;
use crate::intake::tls::ReloadableAcceptor;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// What an intake does with a connection once it is admitted.
pub trait Handler: Send + Sync + 'static {
    /// Serves one connection until it ends (or `stop` ends it).
    fn serve<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        place: Place,
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
    /// Accept nothing until a connection closes: new ones wait in the listen backlog (one is
    /// held by the loop, waiting for a place).
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
    /// Counter of connections told to give their place to a new one.
    pub evicted_metric: &'static str,
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
/// At the limit, only a connection that has delivered nothing for this long gives its place up
/// (a client between two frames of a steady stream keeps it).
const EVICT_QUIET: Duration = Duration::from_secs(1);
/// How long a new connection waits for the place of the connection told to close.
const EVICT_WAIT: Duration = Duration::from_secs(2);
/// While all places are held by connections that deliver, a waiting new one looks again this
/// often for one that went quiet.
const EVICT_RECHECK: Duration = Duration::from_millis(250);

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
        let admitted = tokio::select! {
            a = admission.admit(&policy, peer) => a,
            _ = stop.wait() => break,
        };
        let Some((permit, place)) = admitted else {
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
            (permit, place),
        ));
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    drain(tasks, &policy).await;
}

/// The connection limit, the places of the connections admitted, and when the last refusal
/// was logged.
struct Admission {
    connections: Arc<Semaphore>,
    places: Arc<Places>,
    last_refusal_log: Option<Instant>,
}

impl Admission {
    fn new(policy: &AcceptPolicy) -> Admission {
        Admission {
            connections: Arc::new(Semaphore::new(policy.max_connections)),
            places: Arc::new(Places::default()),
            last_refusal_log: None,
        }
    }

    /// A permit and a place for a new connection: a free one, else the place of the
    /// connection quiet the longest (told to close, then waited for), else (`Wait`) the first
    /// place that frees or goes quiet. `None`: refused (`Refuse`, counted and logged).
    async fn admit(
        &mut self,
        policy: &AcceptPolicy,
        peer: SocketAddr,
    ) -> Option<(OwnedSemaphorePermit, Place)> {
        loop {
            if let Ok(permit) = self.connections.clone().try_acquire_owned() {
                return Some((permit, self.places.admit()));
            }
            if self.places.evict_quietest(EVICT_QUIET) {
                metrics::counter!(policy.evicted_metric).increment(1);
                debug!(%peer, "{} at max_connections: the connection quiet the longest gives its place", policy.name);
                let freed =
                    tokio::time::timeout(EVICT_WAIT, self.connections.clone().acquire_owned());
                if let Ok(permit) = freed.await {
                    return Some((permit.expect("semaphore closed"), self.places.admit()));
                }
                continue;
            }
            match policy.at_capacity {
                AtCapacity::Wait => {
                    let freed = tokio::time::timeout(
                        EVICT_RECHECK,
                        self.connections.clone().acquire_owned(),
                    );
                    if let Ok(permit) = freed.await {
                        return Some((permit.expect("semaphore closed"), self.places.admit()));
                    }
                }
                AtCapacity::Refuse { .. } => break,
            }
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

/// One admitted connection: the TLS handshake if any, then the handler. The permit and the
/// place are held until the connection ends.
async fn serve_one<H: Handler>(
    handler: Arc<H>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
    stop: Shutdown,
    (permit, place): (OwnedSemaphorePermit, Place),
) {
    let _leave = Leave(place.clone());
    match tls {
        None => handler.serve(stream, peer, place, stop).await,
        Some((acceptor, timeout)) => {
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => handler.serve(tls_stream, peer, place, stop).await,
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

/// A connection's place under the limit, shared by the accept loop and the connection's
/// handler: the handler calls [`Place::delivered`] when something whole arrived and watches
/// [`Place::evicted`] (closing when it fires, after answering what it owes).
#[derive(Clone)]
pub struct Place {
    state: Arc<PlaceState>,
    places: Arc<Places>,
}

struct PlaceState {
    id: u64,
    /// When the connection last delivered something (or was admitted), in milliseconds since
    /// `Places::epoch`.
    delivered_at: AtomicU64,
    evict: Notify,
}

impl Place {
    /// Something whole arrived (a frame, a request): the connection keeps its place.
    pub fn delivered(&self) {
        let now = self.places.now_ms();
        self.state.delivered_at.store(now, Ordering::Relaxed);
    }

    /// Completes when a new connection was given this one's place: close, after answering
    /// what is owed (nothing half-received was acked).
    pub async fn evicted(&self) {
        self.state.evict.notified().await
    }
}

/// The places of the connections now admitted.
struct Places {
    epoch: Instant,
    next_id: AtomicU64,
    held: Mutex<HashMap<u64, Arc<PlaceState>>>,
}

impl Default for Places {
    fn default() -> Places {
        Places {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
        }
    }
}

impl Places {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn admit(self: &Arc<Self>) -> Place {
        let state = Arc::new(PlaceState {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            delivered_at: AtomicU64::new(self.now_ms()),
            evict: Notify::new(),
        });
        self.held
            .lock()
            .expect("places poisoned")
            .insert(state.id, state.clone());
        Place {
            state,
            places: self.clone(),
        }
    }

    /// Tells the connection that has delivered nothing the longest (at least `quiet`) to give
    /// its place up; `false` when every connection delivered more recently. The one told
    /// leaves the registry at once, so it is never told twice.
    fn evict_quietest(&self, quiet: Duration) -> bool {
        let cutoff = self.now_ms().saturating_sub(quiet.as_millis() as u64);
        let mut held = self.held.lock().expect("places poisoned");
        let quietest = held
            .values()
            .map(|p| (p.delivered_at.load(Ordering::Relaxed), p.id))
            .filter(|(at, _)| *at <= cutoff)
            .min();
        let Some((_, id)) = quietest else {
            return false;
        };
        if let Some(victim) = held.remove(&id) {
            // notify_one keeps the wake-up for a handler not waiting at this instant.
            victim.evict.notify_one();
        }
        true
    }
}

/// Takes a connection's place out of the registry when its task ends.
struct Leave(Place);

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut held) = self.0.places.held.lock() {
            held.remove(&self.0.state.id);
        }
    }
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
        async fn serve<S>(
            self: Arc<Self>,
            mut stream: S,
            _peer: SocketAddr,
            _place: Place,
            _stop: Shutdown,
        ) where
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

    /// Echoes bytes back, each one a delivery, and closes when told to give its place up.
    struct Courteous;

    impl Handler for Courteous {
        async fn serve<S>(
            self: Arc<Self>,
            mut stream: S,
            _peer: SocketAddr,
            place: Place,
            _stop: Shutdown,
        ) where
            S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        {
            let mut byte = [0u8; 1];
            loop {
                tokio::select! {
                    read = stream.read(&mut byte) => {
                        if !matches!(read, Ok(1)) || stream.write_all(&byte).await.is_err() {
                            return;
                        }
                        place.delivered();
                    }
                    _ = place.evicted() => return,
                }
            }
        }

        fn tls_failed(&self, _peer: SocketAddr, _failure: TlsFailure) {}
    }

    const LONG: Duration = Duration::from_secs(10);

    async fn start(at_capacity: AtCapacity, drain: Drain) -> (SocketAddr, Trigger, JoinHandle<()>) {
        start_with(at_capacity, drain, Echo).await
    }

    async fn start_with<H: Handler>(
        at_capacity: AtCapacity,
        drain: Drain,
        handler: H,
    ) -> (SocketAddr, Trigger, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let policy = AcceptPolicy {
            name: "test",
            connections_metric: "test_connections_total",
            evicted_metric: "test_evicted_total",
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
            Arc::new(handler),
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
    async fn at_the_limit_the_connection_quiet_the_longest_gives_its_place() {
        for at_capacity in [REFUSE, AtCapacity::Wait] {
            let (addr, trigger, task) =
                start_with(at_capacity, Drain::UntilClosed, Courteous).await;
            let mut quiet = TcpStream::connect(addr).await.unwrap();
            assert_eq!(echoes(&mut quiet, LONG).await, Some(true));
            tokio::time::sleep(EVICT_QUIET + Duration::from_millis(200)).await;
            // The new connection is served; the quiet one was closed for it.
            let mut new = TcpStream::connect(addr).await.unwrap();
            assert_eq!(echoes(&mut new, LONG).await, Some(true));
            assert_eq!(echoes(&mut quiet, LONG).await, Some(false));
            drop(new);
            trigger.trigger();
            tokio::time::timeout(LONG, task).await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn at_the_limit_a_connection_that_delivers_keeps_its_place() {
        let (addr, trigger, task) = start_with(REFUSE, Drain::UntilClosed, Courteous).await;
        let mut busy = TcpStream::connect(addr).await.unwrap();
        // It delivers every 100 ms, past the quiet time a place is taken after.
        for _ in 0..15 {
            assert_eq!(echoes(&mut busy, LONG).await, Some(true));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut new = TcpStream::connect(addr).await.unwrap();
        assert_eq!(echoes(&mut new, LONG).await, Some(false));
        assert_eq!(echoes(&mut busy, LONG).await, Some(true));
        drop(busy);
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
