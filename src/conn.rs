//! One client connection: its socket, its lifecycle phase, its buffers.
//!
//! Memory is decided per state, not per connection: `inbound` holds only the
//! unparsed tail of a partial frame and `outbound` only bytes the socket did not
//! take yet; both give their capacity back once drained, so an idle logged-in
//! connection owns no buffer at all.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use mio::Token;

/// A connection's identity: its slab key plus the generation of the slot's
/// occupant, so that an event or timer meant for an earlier occupant of a
/// reused slot is recognised as stale and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub key: u32,
    pub generation: u32,
}

/// Tokens below this are the loop's own (listener, signals, admin); a
/// connection token carries a non-zero generation in its high 32 bits.
const GENERATION_SHIFT: u32 = 32;

impl ConnRef {
    pub fn token(self) -> Token {
        Token(((self.generation as usize) << GENERATION_SHIFT) | self.key as usize)
    }

    /// The connection a token names, or `None` for the loop's own tokens.
    pub fn from_token(token: Token) -> Option<ConnRef> {
        let generation = (token.0 >> GENERATION_SHIFT) as u32;
        (generation != 0).then_some(ConnRef {
            key: token.0 as u32,
            generation,
        })
    }
}

/// The connection lifecycle. `Connected` → `LoggedIn` on a valid login;
/// either → `Closing` during a shutdown drain; every close removes the
/// connection (see `server::Server::close`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, no identity yet: only `login`, heartbeats and `bye` are served.
    Connected,
    /// Holds `id` in the registry (unless a newer login replaced it).
    LoggedIn { id: Rc<str> },
    /// Saying goodbye during shutdown: input is discarded, outbound drained;
    /// `id` is still held in the registry until the close.
    Closing { id: Option<Rc<str>> },
    /// A connection to the admin HTTP API, not a client.
    Admin(AdminPhase),
}

/// The states of an admin API connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminPhase {
    /// Serving requests, keep-alive.
    Requests,
    /// A push waits for the client's ack: the response goes out when the ack
    /// comes or at `until`, whichever is first; later requests wait their turn.
    AwaitingAck {
        message: Rc<str>,
        /// Only this connection's ack counts.
        target: ConnRef,
        until: Micros,
        keep_alive: bool,
    },
    /// The last response is being flushed; then the write side is shut and
    /// input discarded until the peer closes (a lingering close, so that a
    /// client still sending a refused body reads the answer, not a reset).
    Draining { discarded: usize },
    /// Streaming presence events (Server-Sent Events); input is ignored.
    /// `replay_next`: the next event of a resume replay still to send (as
    /// the socket drains); `None` once the stream is live.
    Events { replay_next: Option<u64> },
}

/// How a client connection carries the XML stream. The first byte decides:
/// `<` (after optional whitespace) is the raw stream, anything else an HTTP
/// request (a WebSocket upgrade, or one of the embedded pages).
#[derive(Debug, Default)]
pub enum Transport {
    #[default]
    Sniffing,
    Raw,
    /// An HTTP request head is arriving in `inbound`.
    Handshake,
    /// Boxed so that raw connections do not pay for its size.
    WebSocket(Box<WsState>),
}

/// A WebSocket connection's inbound state: the frame decoder, and the tail of
/// a partial XML frame carried across messages (`inbound` holds the tail of
/// a partial WebSocket frame).
#[derive(Debug, Default)]
pub struct WsState {
    pub decoder: lifeline_wire::ws::Decoder,
    pub xml_tail: BytesMut,
    /// A Close frame went out: the closing handshake is under way.
    pub close_sent: bool,
}

/// Microseconds since the loop's start: 8 bytes instead of an `Instant`'s 16.
pub type Micros = u64;

pub struct Connection {
    pub stream: TcpStream,
    pub generation: u32,
    pub phase: Phase,
    pub peer: SocketAddr,
    pub connected_at: Micros,
    /// When the last complete frame arrived; the only thing a heartbeat writes.
    pub last_seen: Micros,
    /// Unparsed tail of a partial frame; empty (no capacity) otherwise.
    pub inbound: BytesMut,
    /// Bytes the socket has not taken yet; empty (no capacity) otherwise.
    pub outbound: BytesMut,
    pub transport: Transport,
    /// Where the inbound stream stands for the codec (BOM, declaration rules).
    pub position: lifeline_wire::StreamPosition,
    /// Queued in the loop's flush list for this iteration.
    pub flush_queued: bool,
    /// Admin pushes queued in `outbound` and not yet fully written.
    pub pushes_queued: u16,
    /// Silent for two intervals; the next frame makes it `alive` again.
    pub suspect: bool,
    /// Its read budget ran out with bytes left in the socket: the loop
    /// comes back to it (an edge-triggered socket would not say so again).
    pub read_pending: bool,
}

/// Where a flush left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything written; the buffer's capacity is released.
    Done,
    /// The socket is full; the writable edge will resume the flush.
    Blocked,
}

impl Connection {
    pub fn new(stream: TcpStream, generation: u32, peer: SocketAddr, now: Micros) -> Connection {
        Connection {
            stream,
            generation,
            phase: Phase::Connected,
            peer,
            connected_at: now,
            last_seen: now,
            inbound: BytesMut::new(),
            outbound: BytesMut::new(),
            position: lifeline_wire::StreamPosition::Start,
            transport: Transport::Sniffing,
            flush_queued: false,
            pushes_queued: 0,
            suspect: false,
            read_pending: false,
        }
    }

    /// Reads the fields serving a heartbeat touches, which lie across all of
    /// the entry's cache lines (see `Server::warm_entries`).
    pub fn warm(&self) -> u64 {
        u64::from(self.generation)
            ^ self.last_seen
            ^ self.inbound.len() as u64
            ^ self.outbound.len() as u64
            ^ u64::from(self.is_admin())
            ^ u64::from(self.is_websocket())
    }

    /// The logged-in id, if any.
    pub fn id(&self) -> Option<&Rc<str>> {
        match &self.phase {
            Phase::LoggedIn { id } | Phase::Closing { id: Some(id) } => Some(id),
            _ => None,
        }
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self.transport, Transport::WebSocket(_))
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.phase, Phase::Admin(_))
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// Enters `Closing`, keeping the id for the offline event.
    pub fn begin_closing(&mut self) {
        let id = match std::mem::replace(&mut self.phase, Phase::Connected) {
            Phase::LoggedIn { id } | Phase::Closing { id: Some(id) } => Some(id),
            _ => None,
        };
        self.phase = Phase::Closing { id };
    }

    /// Writes `bytes` after whatever is already queued: straight to the socket
    /// when nothing is, keeping only what the socket does not take. Adds the
    /// bytes written to `written`.
    pub fn send(&mut self, bytes: &[u8], written_total: &mut u64) -> io::Result<Flushed> {
        if bytes.is_empty() {
            return Ok(if self.outbound.is_empty() {
                Flushed::Done
            } else {
                Flushed::Blocked
            });
        }
        if !self.outbound.is_empty() {
            self.outbound.extend_from_slice(bytes);
            return self.flush(written_total);
        }
        let mut written = 0;
        while written < bytes.len() {
            match self.stream.write(&bytes[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        *written_total += written as u64;
        if written == bytes.len() {
            Ok(Flushed::Done)
        } else {
            self.outbound.extend_from_slice(&bytes[written..]);
            Ok(Flushed::Blocked)
        }
    }

    /// Writes queued bytes until the socket is full or the queue is empty;
    /// adds the bytes written to `written_total`.
    pub fn flush(&mut self, written_total: &mut u64) -> io::Result<Flushed> {
        while !self.outbound.is_empty() {
            match self.stream.write(&self.outbound) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbound.advance(n);
                    *written_total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) => return Err(e),
            }
        }
        if self.outbound.capacity() > 0 {
            self.outbound = BytesMut::new(); // give the drained buffer back
        }
        Ok(Flushed::Done)
    }

    /// Bytes waiting for the socket.
    pub fn queued(&self) -> usize {
        self.outbound.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_loop_tokens_are_not_connections() {
        let c = ConnRef {
            key: 12345,
            generation: 0xdead_beef,
        };
        assert_eq!(ConnRef::from_token(c.token()), Some(c));
        assert_eq!(ConnRef::from_token(Token(0)), None);
        assert_eq!(ConnRef::from_token(Token(u32::MAX as usize)), None);
    }
}

/// Why a connection ended; also the offline reason in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Silent for `interval × misses`.
    Timeout,
    /// The same id logged in on another connection.
    Replaced,
    Shutdown,
    Kicked,
    /// Over capacity at accept time.
    Overload,
    /// More than `max_outbound` bytes queued.
    SlowConsumer,
    /// The client sent `<bye/>`.
    Bye,
    /// The peer closed or reset the connection.
    PeerClosed,
    /// A frame the protocol refuses (the error frame was sent first).
    ProtocolError,
    /// The socket failed.
    IoError,
    /// An HTTP request on the client port was answered (a page, or an
    /// upgrade refused) and the connection closed.
    Http,
}

impl CloseReason {
    pub const COUNT: usize = 11;
    pub const ALL: [CloseReason; CloseReason::COUNT] = [
        CloseReason::Timeout,
        CloseReason::Replaced,
        CloseReason::Shutdown,
        CloseReason::Kicked,
        CloseReason::Overload,
        CloseReason::SlowConsumer,
        CloseReason::Bye,
        CloseReason::PeerClosed,
        CloseReason::ProtocolError,
        CloseReason::IoError,
        CloseReason::Http,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Timeout => "timeout",
            CloseReason::Replaced => "replaced",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Kicked => "kicked",
            CloseReason::Overload => "overload",
            CloseReason::SlowConsumer => "slow-consumer",
            CloseReason::Bye => "bye",
            CloseReason::PeerClosed => "closed",
            CloseReason::ProtocolError => "error",
            CloseReason::IoError => "io-error",
            CloseReason::Http => "http",
        }
    }

    /// The `<bye reason>` the server sends before closing, when it sends one.
    pub fn bye(self) -> Option<lifeline_wire::ByeReason> {
        use lifeline_wire::ByeReason;
        match self {
            CloseReason::Timeout => Some(ByeReason::Timeout),
            CloseReason::Replaced => Some(ByeReason::Replaced),
            CloseReason::Shutdown => Some(ByeReason::Shutdown),
            CloseReason::Kicked => Some(ByeReason::Kicked),
            CloseReason::Overload => Some(ByeReason::Overload),
            CloseReason::SlowConsumer => Some(ByeReason::SlowConsumer),
            _ => None,
        }
    }
}
