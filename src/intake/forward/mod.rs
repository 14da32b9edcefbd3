//! The Fluent forward server: TCP connections carrying msgpack frames from fluentd,
//! fluent-bit, Vector and the fluent-logger libraries. Owns framing, acks and per-connection
//! limits; it must never ack a frame before the buffer says its events are durable, and a bad
//! frame must cost only its own connection.

mod config;
pub mod frame;
#[cfg(test)]
mod fuzz;
pub mod handshake;
pub mod json;

pub use config::ForwardConfig;

use crate::buffer::StoreError;
use crate::common::shutdown::Shutdown;
use crate::intake::msgpack::FrameScanner;
use crate::intake::tls::ReloadableAcceptor;
use crate::intake::{Ingest, IngestError};
use frame::FrameError;
use futures::stream::{FuturesOrdered, StreamExt};
use handshake::Security;
use json::JsonScanner;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// At shutdown a connection keeps reading until its client is quiet this long (data already
/// sent by a client that asks no acks is otherwise lost)...
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// ...or until this much time has passed; a client that never pauses gets no more acks and
/// resends after the restart.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Frames a connection may have waiting for their ack before it stops reading more.
const MAX_PENDING_ACKS: usize = 64;

type PendingAck = Pin<Box<dyn Future<Output = Result<Vec<u8>, StoreError>> + Send>>;

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

struct Connection {
    shared: Arc<Shared>,
    peer: String,
}

/// Largest PING a client may send.
const MAX_PING_BYTES: usize = 64 << 10;

impl Connection {
    async fn serve<S>(self, stream: S, mut stop: Shutdown)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut start = 0usize;
        let mut scanner = FrameScanner::default();
        if let Some(security) = &self.shared.security {
            let timeout = self.shared.handshake_timeout;
            let outcome = tokio::time::timeout(
                timeout,
                self.handshake(security, &mut reader, &mut writer, &mut buf, &mut start),
            )
            .await
            .unwrap_or_else(|_| Err(("timeout", format!("no PING within {timeout:?}"))));
            if let Err((reason, detail)) = outcome {
                metrics::counter!("rin_forward_handshake_failures_total", "reason" => reason)
                    .increment(1);
                warn!(peer = %self.peer, "forward handshake failed: {detail}");
                let _ = writer.shutdown().await;
                return;
            }
        }
        let mut acks: FuturesOrdered<PendingAck> = FuturesOrdered::new();
        let mut eof = false;
        let mut framing_known = false;
        let mut json: Option<JsonScanner> = None;
        // Set at shutdown: the deadline for reading what clients already sent.
        let mut draining: Option<Instant> = None;
        let close_reason: Option<String> = 'conn: loop {
            // Handle every complete frame already buffered.
            while !eof || start < buf.len() {
                if acks.len() >= MAX_PENDING_ACKS {
                    break;
                }
                if json.is_none() && !framing_known && start < buf.len() {
                    // fluentd reads a connection that starts with `[` or `{` as JSON; neither
                    // byte can start a msgpack frame.
                    framing_known = true;
                    if matches!(buf[start], b'[' | b'{') {
                        json = Some(JsonScanner::default());
                    }
                }
                let scanned = match json.as_mut() {
                    None => scanner
                        .scan(&buf[start..], self.shared.max_frame)
                        .map_err(|e| e.to_string()),
                    Some(js) => js.scan(&buf[start..], self.shared.max_frame),
                };
                match scanned {
                    Ok(Some(len)) => {
                        let raw = &buf[start..start + len];
                        start += len;
                        metrics::counter!("rin_forward_bytes_total").increment(len as u64);
                        let converted;
                        let frame = match json {
                            None => raw,
                            Some(_) => match json::to_msgpack(raw) {
                                Ok(mp) => {
                                    converted = mp;
                                    &converted[..]
                                }
                                Err(e) => {
                                    break 'conn Some(
                                        self.refused(FrameError::new("malformed", e)),
                                    );
                                }
                            },
                        };
                        match self.shared.ingest.forward_frame(frame).await {
                            Ok(Some(ack)) => acks.push_back(ack),
                            Ok(None) => {}
                            Err(IngestError::Refused(e)) => break 'conn Some(self.refused(e)),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        break 'conn Some(self.refused(FrameError::new("malformed", e)));
                    }
                }
            }
            if eof {
                if start < buf.len() && acks.len() >= MAX_PENDING_ACKS {
                    if let Some(ack) = acks.next().await
                        && let Err(reason) = write_ack(&mut writer, ack, json.is_some()).await
                    {
                        break 'conn Some(reason);
                    }
                    continue;
                }
                if start < buf.len() {
                    metrics::counter!("rin_forward_frames_rejected_total", "reason" => "truncated")
                        .increment(1);
                    break 'conn Some(format!(
                        "connection closed inside a frame ({} bytes unread)",
                        buf.len() - start
                    ));
                }
                break 'conn None;
            }
            if start > 0 && start == buf.len() {
                buf.clear();
                start = 0;
            } else if start > (1 << 20) && start > buf.len() / 2 {
                buf.drain(..start);
                start = 0;
            }
            let can_read = acks.len() < MAX_PENDING_ACKS;
            if can_read && self.shared.ingest.buffer_full() {
                // Out of disk quota: stop reading so the client holds its data and retries.
                tokio::select! {
                    _ = self.shared.ingest.wait_for_room() => {}
                    Some(ack) = acks.next(), if !acks.is_empty() => {
                        if let Err(reason) = write_ack(&mut writer, ack, json.is_some()).await {
                            break 'conn Some(reason);
                        }
                    }
                    _ = stop.wait(), if draining.is_none() => break 'conn None,
                }
                if draining.is_some() {
                    break 'conn None;
                }
                continue;
            }
            if buf.capacity() - buf.len() < 32 << 10 {
                buf.reserve(64 << 10);
            }
            // While draining, read what the client already sent until it goes quiet.
            let wait = match draining {
                None => self.shared.idle_timeout,
                Some(deadline) => {
                    DRAIN_IDLE.min(deadline.saturating_duration_since(Instant::now()))
                }
            };
            tokio::select! {
                read = tokio::time::timeout(wait, reader.read_buf(&mut buf)), if can_read => {
                    match read {
                        Ok(Ok(0)) => eof = true,
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break 'conn Some(format!("read error: {e}")),
                        Err(_) if draining.is_some() => break 'conn None,
                        Err(_) => break 'conn Some(format!("idle for {:?}", self.shared.idle_timeout)),
                    }
                }
                Some(ack) = acks.next(), if !acks.is_empty() => {
                    if let Err(reason) = write_ack(&mut writer, ack, json.is_some()).await {
                        break 'conn Some(reason);
                    }
                }
                _ = stop.wait(), if draining.is_none() => {
                    draining = Some(Instant::now() + DRAIN_MAX);
                }
            }
        };
        // Acks of frames accepted before the end are still owed.
        while let Some(ack) = acks.next().await {
            if write_ack(&mut writer, ack, json.is_some()).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
        match close_reason {
            Some(reason) => warn!(peer = %self.peer, "closing forward connection: {reason}"),
            None => debug!(peer = %self.peer, "forward connection closed"),
        }
    }

    /// HELO, then one PING, then PONG. Bytes the client sent after its PING stay in `buf`.
    async fn handshake<R, W>(
        &self,
        security: &Security,
        reader: &mut R,
        writer: &mut W,
        buf: &mut Vec<u8>,
        start: &mut usize,
    ) -> Result<(), (&'static str, String)>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (helo, message) = security.helo();
        writer
            .write_all(&message)
            .await
            .map_err(|e| ("io", format!("cannot send HELO: {e}")))?;
        let mut scanner = FrameScanner::default();
        let len = loop {
            match scanner.scan(buf, MAX_PING_BYTES) {
                Ok(Some(len)) => break len,
                Ok(None) => {}
                Err(e) => return Err(("malformed", format!("malformed PING: {e}"))),
            }
            buf.reserve(4096);
            match reader.read_buf(buf).await {
                Ok(0) => return Err(("closed", "connection closed before PING".into())),
                Ok(_) => {}
                Err(e) => return Err(("io", format!("read error during handshake: {e}"))),
            }
        };
        let verdict = security.check_ping(&helo, &buf[..len]);
        *start = len;
        writer
            .write_all(&verdict.pong)
            .await
            .map_err(|e| ("io", format!("cannot send PONG: {e}")))?;
        match verdict.refused {
            None => Ok(()),
            Some(refusal) => Err(refusal),
        }
    }

    fn refused(&self, e: FrameError) -> String {
        metrics::counter!("rin_forward_frames_rejected_total", "reason" => e.reason).increment(1);
        format!("refused frame ({}): {}", e.reason, e.detail)
    }
}

async fn write_ack<W: AsyncWrite + Unpin>(
    writer: &mut W,
    ack: Result<Vec<u8>, StoreError>,
    json: bool,
) -> Result<(), String> {
    match ack {
        Ok(chunk) => {
            let msg = if json {
                json::ack_message(&chunk)
            } else {
                frame::ack_message(&chunk)
            };
            writer
                .write_all(&msg)
                .await
                .map_err(|e| format!("cannot send ack: {e}"))
        }
        // Not durable: no ack. Closing makes the client resend now rather than at its timeout.
        Err(e) => Err(format!("events not stored, no ack sent: {e}")),
    }
}
