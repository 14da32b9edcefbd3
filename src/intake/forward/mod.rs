//! The Fluent forward server: TCP connections carrying msgpack frames from fluentd,
//! fluent-bit, Vector and the fluent-logger libraries. Owns framing, acks and per-connection
//! limits; it must never ack a frame before the buffer says its events are durable, and a bad
//! frame must cost only its own connection.
//!
//! Calls go one way, downward: the shared accept loop (`intake::accept`) hands each connection
//! to `connection.rs`, whose steps read whole frames (`framing.rs`, with `json.rs` for JSON
//! clients), ingest each (`ingest.rs`: `frame.rs` parses and transcodes, then the neutral
//! `intake::Ingest` routes, dedupes and submits) and answer owed acks (`acks.rs`).
//! `handshake.rs` is the shared-key handshake, `config.rs` the `forward:` settings.

mod acks;
mod config;
mod connection;
pub mod frame;
mod framing;
#[cfg(test)]
mod fuzz;
pub mod handshake;
mod ingest;
pub mod json;

pub use config::ForwardConfig;

use crate::common::net::bind_error;
use crate::common::shutdown::Shutdown;
use crate::intake::Ingest;
use crate::intake::accept::{self, AcceptPolicy, AtCapacity, Drain, Handler, Place, TlsFailure};
use crate::intake::tls::ReloadableAcceptor;
use config::SecurityConfig;
use connection::Connection;
use handshake::Security;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info, warn};

pub struct ForwardServer {
    listener: TcpListener,
    udp: Option<UdpSocket>,
    tls: Option<ReloadableAcceptor>,
    shared: Arc<Shared>,
    max_connections: usize,
}

/// What every connection of the server uses.
struct Shared {
    ingest: Arc<Ingest>,
    security: Option<Security>,
    limits: frame::Limits,
    max_frame: usize,
    idle_timeout: Duration,
    frame_timeout: Duration,
    handshake_timeout: Duration,
}

impl ForwardServer {
    pub async fn bind(
        config: &ForwardConfig,
        ingest: Arc<Ingest>,
    ) -> anyhow::Result<ForwardServer> {
        let listener = TcpListener::bind(config.bind).await.map_err(|e| {
            bind_error(
                "forward",
                config.bind,
                "forward.bind",
                Some("RIN_SHIP_FORWARD_BIND"),
                e,
            )
        })?;
        let addr = listener.local_addr()?;
        let udp = if config.udp_heartbeat {
            Some(UdpSocket::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen for UDP heartbeats on {addr}: {e} (set forward.udp_heartbeat: false)")
            })?)
        } else {
            None
        };
        let tls = match &config.tls {
            Some(t) => {
                let acceptor = ReloadableAcceptor::new(t, &[])?;
                acceptor.reload_on_sighup()?;
                Some(acceptor)
            }
            None => None,
        };
        let security = config.security.as_ref().map(shared_key_handshake);
        info!(
            %addr,
            tls = tls.is_some(),
            shared_key = security.is_some(),
            udp_heartbeat = udp.is_some(),
            "forward intake listening"
        );
        Ok(ForwardServer {
            listener,
            udp,
            tls,
            shared: Arc::new(Shared {
                ingest,
                security,
                limits: config.frame_limits(),
                max_frame: config.max_frame_bytes.0 as usize,
                idle_timeout: config.idle_timeout.0,
                frame_timeout: config.frame_timeout.0,
                handshake_timeout: config.handshake_timeout.0,
            }),
            max_connections: config.max_connections,
        })
    }

    /// Accepts connections until `stop` turns true, then waits for open connections to flush
    /// their acks and close.
    pub async fn run(self, stop: Shutdown) {
        if let Some(udp) = self.udp {
            tokio::spawn(answer_heartbeats(udp, stop.clone()));
        }
        let policy = AcceptPolicy {
            name: "forward",
            connections_metric: "rin_forward_connections_total",
            evicted_metric: "rin_forward_connections_evicted_total",
            max_connections: self.max_connections,
            // Over the limit: this connection only is closed; the client retries later.
            at_capacity: AtCapacity::Refuse {
                metric: "rin_forward_connections_refused_total",
                warning: "forward.max_connections reached: refusing new connections",
            },
            tls_timeout: self.shared.handshake_timeout,
            // Each connection bounds its own drain (DRAIN_MAX in connection.rs).
            drain: Drain::UntilClosed,
        };
        accept::accept_until_stopped(self.listener, self.tls, policy, self.shared, stop).await;
    }
}

impl Handler for Shared {
    async fn serve<S>(self: Arc<Self>, stream: S, peer: SocketAddr, place: Place, stop: Shutdown)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Connection {
            source: self.ingest.source(),
            shared: self,
            peer: peer.to_string(),
            place,
        };
        conn.serve(stream, stop).await
    }

    fn tls_failed(&self, peer: SocketAddr, failure: TlsFailure) {
        match failure {
            // A connect-and-close (a port probe) is not worth a warning.
            TlsFailure::Closed(e) => debug!(%peer, "closed before the TLS handshake: {e}"),
            TlsFailure::Failed(e) => {
                metrics::counter!("rin_forward_handshake_failures_total", "reason" => "tls")
                    .increment(1);
                warn!(%peer, "TLS handshake failed: {e}");
            }
            TlsFailure::TimedOut(timeout) => {
                metrics::counter!("rin_forward_handshake_failures_total", "reason" => "timeout")
                    .increment(1);
                warn!(%peer, "TLS handshake not finished within {timeout:?}");
            }
        }
    }
}

/// fluentd's `<security>`: the hostname sent in PONG, the shared key, and the users when
/// `user_auth` asks for them.
fn shared_key_handshake(sec: &SecurityConfig) -> Security {
    let hostname = if sec.self_hostname.is_empty() {
        gethostname::gethostname().to_string_lossy().to_string()
    } else {
        sec.self_hostname.clone()
    };
    let users = if sec.user_auth {
        sec.users
            .iter()
            .map(|u| (u.username.clone(), u.password.expose().to_string()))
            .collect()
    } else {
        Vec::new()
    };
    Security::new(hostname, sec.shared_key.expose(), users)
}

/// fluentd's out_forward can check a server with a UDP `0x00` datagram; the answer is `0x00`.
async fn answer_heartbeats(udp: UdpSocket, mut stop: Shutdown) {
    let mut buf = [0u8; 64];
    loop {
        let received = tokio::select! {
            r = udp.recv_from(&mut buf) => r,
            _ = stop.wait() => return,
        };
        match received {
            Ok((1, peer)) if buf[0] == 0 => {
                metrics::counter!("rin_forward_udp_heartbeats_total").increment(1);
                let _ = udp.send_to(&[0], peer).await;
            }
            Ok(_) => {
                metrics::counter!("rin_forward_udp_ignored_total").increment(1);
            }
            Err(e) => debug!("UDP heartbeat socket: {e}"),
        }
    }
}
