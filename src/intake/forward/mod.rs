//! The Fluent forward server: TCP connections carrying msgpack frames from fluentd,
//! fluent-bit, Vector and the fluent-logger libraries. Owns framing, acks and per-connection
//! limits; it must never ack a frame before the buffer says its events are durable, and a bad
//! frame must cost only its own connection.

pub mod frame;

use crate::intake::{Ingest, IngestError};
use crate::msgpack::FrameScanner;
use frame::FrameError;
use futures::stream::{FuturesOrdered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

/// At shutdown a connection keeps reading until its client is quiet this long (data already
/// sent by a client that asks no acks is otherwise lost)...
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// ...or until this much time has passed; a client that never pauses gets no more acks and
/// resends after the restart.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Frames a connection may have waiting for their ack before it stops reading more.
const MAX_PENDING_ACKS: usize = 64;

type PendingAck = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

pub struct ForwardServer {
    listener: TcpListener,
    ingest: Arc<Ingest>,
    max_frame: usize,
    idle_timeout: std::time::Duration,
    connections: Arc<Semaphore>,
}

impl ForwardServer {
    pub async fn bind(
        config: &crate::config::ForwardConfig,
        ingest: Arc<Ingest>,
    ) -> anyhow::Result<ForwardServer> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for forward on {}: {e}", config.bind))?;
        info!(addr = %listener.local_addr()?, "forward intake listening");
        Ok(ForwardServer {
            listener,
            ingest,
            max_frame: config.max_frame_bytes.0 as usize,
            idle_timeout: config.idle_timeout.0,
            connections: Arc::new(Semaphore::new(config.max_connections)),
        })
    }

    /// Accepts connections until `stop` turns true, then waits for open connections to flush
    /// their acks and close.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = self.connections.clone().acquire_owned() => p.expect("semaphore closed"),
                _ = stopped(&mut stop) => break,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stopped(&mut stop) => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            metrics::counter!("rin_forward_connections_total").increment(1);
            let conn = Connection {
                ingest: self.ingest.clone(),
                max_frame: self.max_frame,
                idle_timeout: self.idle_timeout,
                peer: peer.to_string(),
            };
            let stop = stop.clone();
            tasks.spawn(async move {
                conn.serve(stream, stop).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        drop(self.listener);
        while tasks.join_next().await.is_some() {}
    }
}

struct Connection {
    ingest: Arc<Ingest>,
    max_frame: usize,
    idle_timeout: std::time::Duration,
    peer: String,
}

impl Connection {
    async fn serve(self, stream: TcpStream, mut stop: watch::Receiver<bool>) {
        let (mut reader, mut writer) = stream.into_split();
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut start = 0usize;
        let mut scanner = FrameScanner::default();
        let mut acks: FuturesOrdered<PendingAck> = FuturesOrdered::new();
        let mut eof = false;
        // Set at shutdown: the deadline for reading what clients already sent.
        let mut draining: Option<Instant> = None;
        let close_reason: Option<String> = 'conn: loop {
            // Handle every complete frame already buffered.
            while !eof || start < buf.len() {
                if acks.len() >= MAX_PENDING_ACKS {
                    break;
                }
                match scanner.scan(&buf[start..], self.max_frame) {
                    Ok(Some(len)) => {
                        let frame = &buf[start..start + len];
                        start += len;
                        metrics::counter!("rin_forward_bytes_total").increment(len as u64);
                        match self.ingest.forward_frame(frame).await {
                            Ok(Some(ack)) => acks.push_back(ack),
                            Ok(None) => {}
                            Err(IngestError::Refused(e)) => break 'conn Some(self.refused(e)),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        break 'conn Some(
                            self.refused(FrameError::new("malformed", e.to_string())),
                        );
                    }
                }
            }
            if eof {
                if start < buf.len() && acks.len() >= MAX_PENDING_ACKS {
                    if let Some(ack) = acks.next().await
                        && let Err(reason) = write_ack(&mut writer, ack).await
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
            if can_read && self.ingest.buffer_full() {
                // Out of disk quota: stop reading so the client holds its data and retries.
                tokio::select! {
                    _ = self.ingest.wait_for_room() => {}
                    Some(ack) = acks.next(), if !acks.is_empty() => {
                        if let Err(reason) = write_ack(&mut writer, ack).await {
                            break 'conn Some(reason);
                        }
                    }
                    _ = stopped(&mut stop), if draining.is_none() => break 'conn None,
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
                None => self.idle_timeout,
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
                        Err(_) => break 'conn Some(format!("idle for {:?}", self.idle_timeout)),
                    }
                }
                Some(ack) = acks.next(), if !acks.is_empty() => {
                    if let Err(reason) = write_ack(&mut writer, ack).await {
                        break 'conn Some(reason);
                    }
                }
                _ = stopped(&mut stop), if draining.is_none() => {
                    draining = Some(Instant::now() + DRAIN_MAX);
                }
            }
        };
        // Acks of frames accepted before the end are still owed.
        while let Some(ack) = acks.next().await {
            if write_ack(&mut writer, ack).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
        match close_reason {
            Some(reason) => warn!(peer = %self.peer, "closing forward connection: {reason}"),
            None => debug!(peer = %self.peer, "forward connection closed"),
        }
    }

    fn refused(&self, e: FrameError) -> String {
        metrics::counter!("rin_forward_frames_rejected_total", "reason" => e.reason).increment(1);
        format!("refused frame ({}): {}", e.reason, e.detail)
    }
}

/// Resolves once shutdown begins (a plain future, so no watch guard lives across an await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn write_ack(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    ack: Result<Vec<u8>, String>,
) -> Result<(), String> {
    match ack {
        Ok(chunk) => {
            let msg = frame::ack_message(&chunk);
            writer
                .write_all(&msg)
                .await
                .map_err(|e| format!("cannot send ack: {e}"))
        }
        // Not durable: no ack. Closing makes the client resend now rather than at its timeout.
        Err(e) => Err(format!("events not stored, no ack sent: {e}")),
    }
}
