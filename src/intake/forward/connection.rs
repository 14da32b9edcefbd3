//! One forward connection, as a loop of named steps: take every whole frame already read and
//! ingest it, answer owed acks, hold off reading while the buffer is full, read more, and at
//! shutdown drain what the client already sent. Owns the connection's read and write halves;
//! it must never ack a frame before its events are durable, never read on while
//! `MAX_PENDING_ACKS` acks are owed or the buffer is at its quota, and a bad frame must cost
//! only this connection. It holds no more than its share: a frame must arrive whole within
//! `frame_timeout`, and at `max_connections` the connection quiet the longest gives its place
//! to a new one (see `accept`); either way it closes after answering the acks it owes.

use super::Shared;
use super::acks::{OwedAcks, write_ack};
use super::framing::FrameReader;
use super::handshake::Security;
use super::ingest::ingest_frame;
use crate::buffer::Source;
use crate::common::shutdown::Shutdown;
use crate::intake::IngestError;
use crate::intake::accept::Place;
use crate::intake::msgpack::FrameScanner;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tracing::{debug, info, warn};

/// At shutdown a connection keeps reading until its client is quiet this long (data already
/// sent by a client that asks no acks is otherwise lost)...
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// ...or until this much time has passed; a client that never pauses gets no more acks and
/// resends after the restart.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Largest PING a client may send.
const MAX_PING_BYTES: usize = 64 << 10;

/// Read buffer a connection starts with.
const INITIAL_BUFFER: usize = 64 << 10;

/// How a connection ends.
enum Close {
    /// End of stream or shutdown: nothing went wrong.
    Quietly,
    /// Closed early, for this reason (logged as a warning).
    Because(String),
    /// Gave its place to a new connection at `max_connections` (logged at info).
    Evicted,
}

pub(super) struct Connection {
    pub shared: Arc<Shared>,
    pub peer: String,
    /// Its writer in the buffer: all its frames go there, in order.
    pub source: Source,
    /// Its place under `max_connections`.
    pub place: Place,
}

/// A connection past its handshake: what the steps of its loop share.
struct Session<'c, S> {
    conn: &'c Connection,
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    frames: FrameReader,
    acks: OwedAcks,
    stop: Shutdown,
    /// Set at shutdown: the deadline for reading what the client already sent.
    draining: Option<Instant>,
    /// When the partial frame in the read buffer began to arrive (`frame_timeout` runs from
    /// it); `None` while no partial frame is held.
    frame_began: Option<Instant>,
}

impl Connection {
    pub async fn serve<S>(self, stream: S, stop: Shutdown)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_BUFFER);
        let mut start = 0usize;
        if let Some(security) = &self.shared.security
            && !self
                .authenticate(security, &mut reader, &mut writer, &mut buf, &mut start)
                .await
        {
            let _ = writer.shutdown().await;
            return;
        }
        let mut session = Session {
            conn: &self,
            reader,
            writer,
            frames: FrameReader::new(buf, start, self.shared.max_frame),
            acks: OwedAcks::default(),
            stop,
            draining: None,
            frame_began: None,
        };
        let close = session.run().await;
        // Acks of frames accepted before the end are still owed.
        let json = session.frames.is_json();
        session.acks.flush(&mut session.writer, json).await;
        let _ = session.writer.shutdown().await;
        match close {
            Close::Because(reason) => {
                warn!(peer = %self.peer, "closing forward connection: {reason}")
            }
            Close::Quietly => debug!(peer = %self.peer, "forward connection closed"),
            Close::Evicted => info!(
                peer = %self.peer,
                "closing forward connection: at forward.max_connections, a new connection \
                 takes the place of this one (it delivered nothing the longest)"
            ),
        }
    }

    /// The shared-key handshake, within `handshake_timeout`; `false`: refused (counted and
    /// logged), close the connection.
    async fn authenticate<R, W>(
        &self,
        security: &Security,
        reader: &mut R,
        writer: &mut W,
        buf: &mut Vec<u8>,
        start: &mut usize,
    ) -> bool
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let timeout = self.shared.handshake_timeout;
        let outcome =
            tokio::time::timeout(timeout, handshake(security, reader, writer, buf, start))
                .await
                .unwrap_or_else(|_| Err(("timeout", format!("no PING within {timeout:?}"))));
        match outcome {
            Ok(()) => true,
            Err((reason, detail)) => {
                metrics::counter!("rin_forward_handshake_failures_total", "reason" => reason)
                    .increment(1);
                warn!(peer = %self.peer, "forward handshake failed: {detail}");
                false
            }
        }
    }
}

impl<S> Session<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Runs the connection's steps until it ends.
    async fn run(&mut self) -> Close {
        loop {
            if let Err(close) = self.step().await {
                return close;
            }
        }
    }

    /// One turn of the loop. `Err`: the connection ends.
    async fn step(&mut self) -> Result<(), Close> {
        self.ingest_buffered_frames().await?;
        if self.frames.at_eof() {
            return self.at_end_of_stream().await;
        }
        self.frames.compact();
        if self.frames.unread() == 0 {
            self.frame_began = None;
        } else if self.frame_began.is_none() {
            self.frame_began = Some(Instant::now());
        }
        if !self.acks.is_full() && self.conn.shared.ingest.buffer_full() {
            return self.hold_while_full().await;
        }
        self.read_or_answer().await
    }

    /// Ingests every whole frame already read, until acks are owed to the limit.
    async fn ingest_buffered_frames(&mut self) -> Result<(), Close> {
        let shared = &self.conn.shared;
        while !self.acks.is_full() {
            let frame = match self.frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Err(refused(e.into())),
            };
            // A whole frame: the connection keeps its place, and the next frame's time starts.
            self.conn.place.delivered();
            self.frame_began = None;
            match ingest_frame(&shared.ingest, &shared.limits, &frame, &self.conn.source).await {
                Ok(Some(ack)) => self.acks.push(ack),
                Ok(None) => {}
                Err(e) => return Err(refused(e)),
            }
        }
        Ok(())
    }

    /// The client closed its side. Frames still buffered behind owed acks are ingested once an
    /// ack is answered; bytes that are not a whole frame are a truncated frame.
    async fn at_end_of_stream(&mut self) -> Result<(), Close> {
        let unread = self.frames.unread();
        if unread > 0 && self.acks.is_full() {
            if let Some(ack) = self.acks.next().await {
                self.write_ack(ack).await?;
            }
            return Ok(());
        }
        if unread > 0 {
            metrics::counter!("rin_forward_frames_rejected_total", "reason" => "truncated")
                .increment(1);
            return Err(Close::Because(format!(
                "connection closed inside a frame ({unread} bytes unread)"
            )));
        }
        Err(Close::Quietly)
    }

    /// Backpressure: the buffer is at its disk quota, so nothing is read (the client holds its
    /// data and retries) while acks still go out.
    async fn hold_while_full(&mut self) -> Result<(), Close> {
        tokio::select! {
            _ = self.conn.shared.ingest.wait_for_room() => {}
            Some(ack) = self.acks.next(), if !self.acks.is_empty() => self.write_ack(ack).await?,
            _ = self.stop.wait(), if self.draining.is_none() => return Err(Close::Quietly),
            _ = self.conn.place.evicted() => return Err(Close::Evicted),
        }
        // The wait was not the client's doing: its frame's time starts again.
        self.frame_began = self.frame_began.map(|_| Instant::now());
        if self.draining.is_some() {
            return Err(Close::Quietly);
        }
        Ok(())
    }

    /// Reads more (unless acks are owed to the limit), answers the next ack, or starts the
    /// drain at shutdown, whichever comes first.
    async fn read_or_answer(&mut self) -> Result<(), Close> {
        let can_read = !self.acks.is_full();
        self.frames.reserve_for_read();
        let idle_timeout = self.conn.shared.idle_timeout;
        let frame_timeout = self.conn.shared.frame_timeout;
        let frame_left = self
            .frame_began
            .map(|began| (began + frame_timeout).saturating_duration_since(Instant::now()));
        // While draining, read what the client already sent until it goes quiet.
        let wait = match self.draining {
            None => frame_left.map_or(idle_timeout, |left| left.min(idle_timeout)),
            Some(deadline) => DRAIN_IDLE.min(deadline.saturating_duration_since(Instant::now())),
        };
        tokio::select! {
            read = tokio::time::timeout(wait, self.frames.read_from(&mut self.reader)), if can_read => {
                match read {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(Close::Because(format!("read error: {e}"))),
                    Err(_) if self.draining.is_some() => return Err(Close::Quietly),
                    Err(_) if frame_left.is_some_and(|left| left <= idle_timeout) => {
                        metrics::counter!("rin_forward_frames_rejected_total", "reason" => "slow")
                            .increment(1);
                        return Err(Close::Because(format!(
                            "a frame did not arrive whole within forward.frame_timeout \
                             ({frame_timeout:?}; {} bytes of it came): a slow or stalled client",
                            self.frames.unread()
                        )));
                    }
                    Err(_) => return Err(Close::Because(format!("idle for {idle_timeout:?}"))),
                }
            }
            Some(ack) = self.acks.next(), if !self.acks.is_empty() => self.write_ack(ack).await?,
            _ = self.stop.wait(), if self.draining.is_none() => {
                self.draining = Some(Instant::now() + DRAIN_MAX);
            }
            _ = self.conn.place.evicted(), if self.draining.is_none() => return Err(Close::Evicted),
        }
        Ok(())
    }

    async fn write_ack(
        &mut self,
        ack: Result<Vec<u8>, crate::buffer::StoreError>,
    ) -> Result<(), Close> {
        write_ack(&mut self.writer, ack, self.frames.is_json())
            .await
            .map_err(Close::Because)
    }
}

/// A refused frame closes its connection; counted by reason.
fn refused(e: IngestError) -> Close {
    let reason = e.reason();
    metrics::counter!("rin_forward_frames_rejected_total", "reason" => reason).increment(1);
    Close::Because(format!("refused frame ({reason}): {e}"))
}

/// HELO, then one PING, then PONG. Bytes the client sent after its PING stay in `buf`, from
/// `start` on.
async fn handshake<R, W>(
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
