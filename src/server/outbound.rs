//! The one way out to a client. Every frame for a client socket goes through
//! [`Outbound`]: it is framed for the connection's transport (raw XML, or one
//! WebSocket text message per frame), held to `max_outbound` here and only
//! here, and written at the right time: replies to the connection being
//! served are gathered and written with one call when it is done (Redis's
//! pattern: many replies, one `write`); frames for other connections join
//! their queues and are flushed once at the end of the loop iteration.
//!
//! On a TLS connection the frames are plaintext until they leave here: the
//! replies gathered for the connection being served are sealed together
//! (after the records its reads produced, such as a handshake flight) and
//! written with the same one call; a frame for another connection is sealed
//! as it is queued. `max_outbound` counts what waits for the socket, so on
//! TLS it counts ciphertext (a frame's room is checked with the most its
//! records can add, before it is sealed: a refused frame never consumes a
//! record sequence number).

use crate::server::conn::{ClientConn, CloseReason, ConnRef};
use crate::server::tls::{Received, TlsConn, TlsFailed};
use crate::writeq::{self, Flushed};
use lifeline_wire::ws;

/// The connection's queue would pass `max_outbound`: it is a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Why a write ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailed {
    /// The socket failed or was reset.
    Io,
    /// More than `max_outbound` bytes stayed queued.
    Overflow,
    /// TLS could not seal the replies.
    Tls,
}

impl WriteFailed {
    /// The end it means for the connection.
    pub fn reason(self) -> CloseReason {
        match self {
            WriteFailed::Io => CloseReason::IoError,
            WriteFailed::Overflow => CloseReason::SlowConsumer,
            WriteFailed::Tls => CloseReason::Tls,
        }
    }
}

/// Counters of what went out.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutboundStats {
    pub frames: u64,
    pub bytes: u64,
    /// Pushes whose bytes were all written to the recipient's socket.
    pub pushes_delivered: u64,
}

/// A frame encoded once for many recipients (a push, a broadcast, a held
/// message), both as raw XML and as a WebSocket text message.
#[derive(Debug, Default)]
pub struct Prepared {
    raw: Vec<u8>,
    ws: Vec<u8>,
}

impl Prepared {
    /// Encodes the frame; the WebSocket form is made only if asked for.
    pub fn encode(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        self.raw.clear();
        self.ws.clear();
        encode(&mut self.raw);
    }

    /// A frame already encoded (as raw XML).
    pub fn new(raw: Vec<u8>) -> Prepared {
        Prepared {
            raw,
            ws: Vec::new(),
        }
    }

    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    fn for_transport(&mut self, websocket: bool) -> &[u8] {
        if !websocket {
            return &self.raw;
        }
        if self.ws.is_empty() {
            ws::write_text(&mut self.ws, &self.raw);
        }
        &self.ws
    }
}

pub struct Outbound {
    /// Replies to the connection being served, written with one call when
    /// it is done.
    staged: Vec<u8>,
    serving: Option<ConnRef>,
    /// Encoding room for frames to other connections.
    scratch: Vec<u8>,
    /// TLS: the records the connection being served has to send (its
    /// handshake flights, then its sealed replies), written with one call.
    sealed: Vec<u8>,
    /// TLS: sealing room for frames to other connections and last words.
    sealing: Vec<u8>,
    /// Connections given bytes while not being served; flushed at the end of
    /// the iteration.
    scheduled: Vec<ConnRef>,
    max_outbound: usize,
    /// Where a connection whose write would block asks for its writable edge.
    poll: mio::Registry,
    pub stats: OutboundStats,
}

impl Outbound {
    pub fn new(max_outbound: usize, poll: mio::Registry) -> Outbound {
        Outbound {
            staged: Vec::with_capacity(4096),
            serving: None,
            scratch: Vec::with_capacity(4096),
            sealed: Vec::new(),
            sealing: Vec::new(),
            scheduled: Vec::new(),
            max_outbound,
            poll,
            stats: OutboundStats::default(),
        }
    }

    /// Whether a frame of `len` bytes fits `c`'s queue: it does when the
    /// queue is empty (a frame may be larger than the limit when `max_frame`
    /// is), or when the queue stays within `max_outbound` with it.
    pub fn has_room(&self, c: &ClientConn, len: usize) -> bool {
        let len = match c.tls {
            None => len,
            Some(_) => TlsConn::wire_len(len),
        };
        c.outbound.is_empty() || c.outbound.len() + len <= self.max_outbound
    }

    /// Sends the XML frame `encode` writes to connection `conn`, framed for
    /// its transport. `Err(Overflow)` means nothing was queued and the
    /// connection is a slow consumer.
    pub fn send(
        &mut self,
        conn: ConnRef,
        c: &mut ClientConn,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Overflow> {
        let websocket = c.is_websocket();
        self.send_with(conn, c, websocket, encode)
    }

    /// Sends bytes already framed for the transport: WebSocket control
    /// frames, and the HTTP answers of the client port.
    pub fn send_framed(
        &mut self,
        conn: ConnRef,
        c: &mut ClientConn,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Overflow> {
        self.send_with(conn, c, false, encode)
    }

    fn send_with(
        &mut self,
        conn: ConnRef,
        c: &mut ClientConn,
        wrap_ws: bool,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Overflow> {
        if c.is_closing() {
            return Ok(()); // after its goodbye a connection is told nothing more
        }
        if self.serving == Some(conn) {
            let start = if wrap_ws {
                ws::begin_text(&mut self.staged)
            } else {
                self.staged.len()
            };
            encode(&mut self.staged);
            if wrap_ws {
                ws::end_text(&mut self.staged, start);
            }
            self.stats.frames += 1;
            // The limit applies to what the one write leaves behind.
            return Ok(());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        if wrap_ws {
            ws::begin_text(&mut scratch);
        }
        encode(&mut scratch);
        if wrap_ws {
            ws::end_text(&mut scratch, 0);
        }
        let queued = self.enqueue(conn, c, &scratch);
        self.scratch = scratch;
        queued
    }

    /// Sends a frame encoded once for many recipients; `push` counts it as
    /// a push, delivered once its bytes are all written.
    pub fn send_prepared(
        &mut self,
        conn: ConnRef,
        c: &mut ClientConn,
        frame: &mut Prepared,
        push: bool,
    ) -> Result<(), Overflow> {
        if c.is_closing() {
            return Ok(());
        }
        let bytes = frame.for_transport(c.is_websocket());
        if self.serving == Some(conn) {
            self.staged.extend_from_slice(bytes);
            self.stats.frames += 1;
        } else {
            self.enqueue(conn, c, bytes)?;
        }
        if push {
            c.pushes_unwritten = c.pushes_unwritten.saturating_add(1);
        }
        Ok(())
    }

    /// Sends a frame many connections get (a broadcast) from its shared
    /// bytes. With nothing queued before it, it is written straight to the
    /// socket: one `write`, and a copy only of what the socket did not take.
    /// On TLS the shared bytes are sealed for this connection first (its own
    /// keys and record sequence), then written the same way. Behind queued
    /// bytes it is appended, keeping its place after them.
    pub fn send_shared(
        &mut self,
        conn: ConnRef,
        c: &mut ClientConn,
        frame: &mut Prepared,
    ) -> Result<(), WriteFailed> {
        if c.is_closing() {
            return Ok(());
        }
        if self.serving == Some(conn) || !c.outbound.is_empty() {
            return self
                .send_prepared(conn, c, frame, true)
                .map_err(|Overflow| WriteFailed::Overflow);
        }
        let bytes = frame.for_transport(c.is_websocket());
        let sent = match &mut c.tls {
            None => writeq::send(&mut c.stream, &mut c.outbound, bytes),
            Some(tls) => {
                let mut sealing = std::mem::take(&mut self.sealing);
                sealing.clear();
                let sealed = tls.seal(bytes, &mut sealing);
                let sent = sealed
                    .is_ok()
                    .then(|| writeq::send(&mut c.stream, &mut c.outbound, &sealing));
                self.sealing = sealing;
                // A record that cannot be sealed leaves a stream that cannot go on.
                sent.ok_or(WriteFailed::Tls)?
            }
        };
        self.stats.frames += 1;
        c.pushes_unwritten = c.pushes_unwritten.saturating_add(1);
        self.settle(conn, c, sent)
    }

    fn enqueue(&mut self, conn: ConnRef, c: &mut ClientConn, bytes: &[u8]) -> Result<(), Overflow> {
        if !self.has_room(c, bytes.len()) {
            return Err(Overflow);
        }
        // A non-empty queue is already scheduled, or waits for the socket's
        // writable edge, which flushes it.
        if c.outbound.is_empty() {
            self.scheduled.push(conn);
        }
        self.stats.frames += 1;
        let Some(tls) = &mut c.tls else {
            c.outbound.extend_from_slice(bytes);
            return Ok(());
        };
        let mut sealing = std::mem::take(&mut self.sealing);
        sealing.clear();
        let sealed = tls.seal(bytes, &mut sealing);
        c.outbound.extend_from_slice(&sealing);
        self.sealing = sealing;
        // A record that cannot be sealed leaves a stream that cannot go on.
        sealed.map_err(|_| Overflow)
    }

    /// Hands the ciphertext a read of the connection being served brought
    /// to its TLS state: plaintext is appended to `plain`, the records it
    /// answers with join the one write of its serving.
    pub fn tls_receive(
        &mut self,
        c: &mut ClientConn,
        bytes: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Option<Result<Received, TlsFailed>> {
        let tls = c.tls.as_mut()?;
        Some(tls.receive(bytes, plain, &mut self.sealed))
    }

    /// Whether `conn` is the connection being served (its replies are gathered).
    pub fn is_serving(&self, conn: ConnRef) -> bool {
        self.serving == Some(conn)
    }

    /// From now until [`Outbound::finish_serving`], replies to `conn` are gathered.
    pub fn begin_serving(&mut self, conn: ConnRef) {
        self.serving = Some(conn);
        self.staged.clear();
        self.sealed.clear();
    }

    /// Writes the gathered replies with one call.
    pub fn finish_serving(
        &mut self,
        conn: ConnRef,
        c: Option<&mut ClientConn>,
    ) -> Result<(), WriteFailed> {
        self.serving = None;
        let Some(c) = c else {
            return Ok(());
        };
        let staged = std::mem::take(&mut self.staged);
        let sent = match &mut c.tls {
            None if staged.is_empty() => None,
            None => Some(writeq::send(&mut c.stream, &mut c.outbound, &staged)),
            Some(tls) => {
                let sealed = tls.seal(&staged, &mut self.sealed);
                let sent = (!self.sealed.is_empty())
                    .then(|| writeq::send(&mut c.stream, &mut c.outbound, &self.sealed));
                self.sealed.clear();
                if sealed.is_err() {
                    self.staged = staged;
                    self.staged.clear();
                    return Err(WriteFailed::Tls);
                }
                sent
            }
        };
        self.staged = staged;
        self.staged.clear();
        let Some(sent) = sent else {
            return Ok(());
        };
        self.settle(conn, c, sent)?;
        // The replies a client asked for count against its limit once the
        // socket has taken what it could: a client that sends without reading
        // is a slow consumer.
        if c.outbound.len() > self.max_outbound {
            return Err(WriteFailed::Overflow);
        }
        Ok(())
    }

    /// Writes what `c` has queued (its writable edge, or its turn in the
    /// end-of-iteration flush).
    pub fn flush(&mut self, conn: ConnRef, c: &mut ClientConn) -> Result<Flushed, WriteFailed> {
        let flushed = writeq::flush(&mut c.stream, &mut c.outbound);
        self.settle(conn, c, flushed)?;
        Ok(if c.outbound.is_empty() {
            Flushed::Done
        } else {
            Flushed::Blocked
        })
    }

    fn settle(
        &mut self,
        conn: ConnRef,
        c: &mut ClientConn,
        result: std::io::Result<(Flushed, usize)>,
    ) -> Result<(), WriteFailed> {
        match result {
            Err(_) => Err(WriteFailed::Io),
            Ok((flushed, written)) => {
                self.stats.bytes += written as u64;
                match flushed {
                    Flushed::Done => {
                        self.stats.pushes_delivered +=
                            u64::from(std::mem::take(&mut c.pushes_unwritten));
                    }
                    Flushed::Blocked if !c.flags.write_watched() => self.watch_writable(conn, c)?,
                    Flushed::Blocked => {}
                }
                Ok(())
            }
        }
    }

    /// The first write that would block: from now on the socket's writable
    /// edge flushes the queue. Asked after the write that blocked, so an
    /// edge in between is not missed (registering reports a socket that is
    /// writable already).
    fn watch_writable(&mut self, conn: ConnRef, c: &mut ClientConn) -> Result<(), WriteFailed> {
        use mio::Interest;
        self.poll
            .reregister(
                &mut c.stream,
                conn.token(),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|_| WriteFailed::Io)?;
        c.flags.set_write_watched(true);
        Ok(())
    }

    /// The connections scheduled for the end-of-iteration flush.
    pub fn take_scheduled(&mut self, into: &mut Vec<ConnRef>) {
        std::mem::swap(&mut self.scheduled, into);
    }

    /// A connection's last words before its socket closes (a `bye`, a
    /// WebSocket Close, an HTTP 408): best effort, one write, whatever was
    /// queued before them first.
    pub fn last_words(&mut self, c: &mut ClientConn, encode: impl FnOnce(&mut Vec<u8>, bool)) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        encode(&mut scratch, c.is_websocket());
        if !scratch.is_empty() {
            self.stats.frames += 1;
        }
        let mut bytes = &scratch;
        let mut sealing = std::mem::take(&mut self.sealing);
        sealing.clear();
        if let Some(tls) = &mut c.tls {
            // The words, then close_notify: the peer sees a clean TLS end.
            let _ = tls.seal(&scratch, &mut sealing);
            tls.close_notify(&mut sealing);
            bytes = &sealing;
        }
        if !bytes.is_empty() {
            if let Ok((_, written)) = writeq::send(&mut c.stream, &mut c.outbound, bytes) {
                self.stats.bytes += written as u64;
            }
        }
        self.scratch = scratch;
        self.sealing = sealing;
    }

    /// After a caught panic: forget the half-served connection.
    pub fn recover(&mut self) {
        self.serving = None;
        self.staged.clear();
    }
}
