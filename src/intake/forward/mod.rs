//! The Fluent forward server: TCP connections carrying msgpack frames from fluentd,
//! fluent-bit, Vector and the fluent-logger libraries. Owns framing, acks and per-connection
//! limits; it must never ack a frame before the buffer says its events are durable, and a bad
//! frame must cost only its own connection.

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

use crate::common::shutdown::Shutdown;
use crate::intake::Ingest;
use crate::intake::tls::ReloadableAcceptor;
use connection::Connection;
use handshake::Security;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

pub struct ForwardServer {
    listener: TcpListener,
    udp: Option<UdpSocket>,
    tls: Option<ReloadableAcceptor>,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
}

/// What every connection of the server uses.
struct Shared {
    ingest: Arc<Ingest>,
    security: Option<Security>,
    limits: frame::Limits,
    max_frame: usize,
    idle_timeout: Duration,
    handshake_timeout: Duration,
}

impl ForwardServer {
    pub async fn bind(
        config: &ForwardConfig,
        ingest: Arc<Ingest>,
    ) -> anyhow::Result<ForwardServer> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for forward on {}: {e}", config.bind))?;
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
        let security = config.security.as_ref().map(|sec| {
            let hostname = if sec.self_hostname.is_empty() {
                gethostname::gethostname().to_string_lossy().to_string()
            } else {
                sec.self_hostname.clone()
            };
            let users = sec
                .users
                .iter()
                .map(|u| (u.username.clone(), u.password.expose().to_string()))
                .collect();
            let users = if sec.user_auth { users } else { Vec::new() };
            Security::new(hostname, sec.shared_key.expose(), users)
        });
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
                handshake_timeout: config.handshake_timeout.0,
            }),
            connections: Arc::new(Semaphore::new(config.max_connections)),
        })
    }

    /// Accepts connections until `stop` turns true, then waits for open connections to flush
    /// their acks and close.
    pub async fn run(self, mut stop: Shutdown) {
        if let Some(udp) = self.udp {
            tokio::spawn(answer_heartbeats(udp, stop.clone()));
        }
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_refusal_log: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stop.wait() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                // Over the limit: this connection only is closed; the client retries later.
                metrics::counter!("rin_forward_connections_refused_total", "reason" => "max_connections")
                    .increment(1);
                if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!(%peer, "forward.max_connections reached: refusing new connections");
                    last_refusal_log = Some(Instant::now());
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            metrics::counter!("rin_forward_connections_total").increment(1);
            let conn = Connection {
                shared: self.shared.clone(),
                peer: peer.to_string(),
            };
            let stop = stop.clone();
            let tls = self.tls.as_ref().map(|t| t.acceptor());
            tasks.spawn(async move {
                match tls {
                    None => conn.serve(stream, stop).await,
                    Some(acceptor) => {
                        let timeout = conn.shared.handshake_timeout;
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => conn.serve(tls_stream, stop).await,
                            // A connect-and-close (a port probe) is not worth a warning.
                            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                                debug!(peer = %conn.peer, "closed before the TLS handshake: {e}");
                            }
                            Ok(Err(e)) => {
                                metrics::counter!("rin_forward_handshake_failures_total", "reason" => "tls")
                                    .increment(1);
                                warn!(peer = %conn.peer, "TLS handshake failed: {e}");
                            }
                            Err(_) => {
                                metrics::counter!("rin_forward_handshake_failures_total", "reason" => "timeout")
                                    .increment(1);
                                warn!(peer = %conn.peer, "TLS handshake not finished within {timeout:?}");
                            }
                        }
                    }
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        drop(self.listener);
        while tasks.join_next().await.is_some() {}
    }
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
