//! One client connection: its socket, where it stands in its life, and its
//! buffers.
//!
//! The life is one state machine, [`State`]: `Connected` → `LoggedIn` (which
//! carries whether the client is suspect) → `Closing` during a shutdown
//! drain; every end, from any state, goes through `Core::end`. How the
//! connection carries the XML stream ([`Transport`]) is a separate, smaller
//! machine decided by its first bytes.
//!
//! Memory is decided per state, not per connection: `inbound` holds only the
//! unparsed tail of a partial frame and `outbound` only bytes the socket did
//! not take yet; both give their capacity back once drained, so an idle
//! logged-in connection owns no buffer at all.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::Token;

use crate::clock::Micros;
use crate::server::fanout::BroadcastSeq;
use crate::server::tls::TlsConn;
use lifeline_wire::{ByeReason, StreamPosition};

/// A client connection's identity: its slab key plus the generation of the
/// slot's occupant, so that an event or timer meant for an earlier occupant
/// of a reused slot is recognised as stale and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub key: u32,
    pub generation: u32,
}

/// Token layout: the generation sits in bits 32..63 and is never zero, so the
/// loop's own tokens (small numbers) never look like a connection; bit 63
/// tells admin connections (`crate::admin::AdminRef`) from clients.
pub const GENERATION_SHIFT: u32 = 32;
pub const ADMIN_BIT: usize = 1 << 63;
/// Generations wrap within 31 bits.
pub const GENERATION_MASK: u32 = (1 << 31) - 1;

impl ConnRef {
    pub fn token(self) -> Token {
        Token(((self.generation as usize) << GENERATION_SHIFT) | self.key as usize)
    }

    /// The client connection a token names, or `None` for any other token.
    pub fn from_token(token: Token) -> Option<ConnRef> {
        if token.0 & ADMIN_BIT != 0 {
            return None;
        }
        let generation = (token.0 >> GENERATION_SHIFT) as u32;
        (generation != 0).then_some(ConnRef {
            key: token.0 as u32,
            generation,
        })
    }
}

/// Where a client connection stands in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Accepted, no identity yet: only `login`, heartbeats and `bye` are served.
    Connected,
    /// Holds its id in the registry (unless a newer login replaced it).
    LoggedIn(Session),
    /// Saying goodbye during a shutdown: input is discarded and the outbound
    /// queue drains; the id, if any, is held until the end.
    Closing { id: Option<Rc<str>> },
}

/// A logged-in client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Rc<str>,
    /// Silent for two intervals (a probe went unanswered); its next frame
    /// makes it `alive` again.
    pub suspect: bool,
    /// The newest broadcast it has been handed, or that was accepted before
    /// it logged in (see `server::fanout`). Here, not in `ClientConn`: these
    /// 16 bits fit the padding of `State`, and only a session is owed
    /// broadcasts.
    pub broadcast_seq: BroadcastSeq,
}

/// How a client connection carries the XML stream. The first byte decides:
/// `<` (after optional whitespace) is the raw stream, an HTTP method a
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
/// a partial XML frame carried across messages (`inbound` then holds the tail
/// of a partial WebSocket frame).
#[derive(Debug, Default)]
pub struct WsState {
    pub decoder: lifeline_wire::ws::Decoder,
    pub xml_tail: BytesMut,
    /// A Close frame went out: the closing handshake is under way.
    pub close_sent: bool,
}

pub struct ClientConn {
    pub stream: TcpStream,
    pub generation: u32,
    pub peer: SocketAddr,
    pub connected_at: Micros,
    /// When the last sign of life arrived; the only thing a heartbeat writes.
    pub last_seen: Micros,
    pub state: State,
    pub transport: Transport,
    /// Where the inbound XML stream stands for the codec (BOM, declaration rules).
    pub position: StreamPosition,
    /// Unparsed tail of a partial frame; empty (no capacity) otherwise.
    pub inbound: BytesMut,
    /// Bytes the socket has not taken yet; empty (no capacity) otherwise.
    pub outbound: BytesMut,
    /// Pushes in `outbound` not yet fully written (counted as delivered then).
    pub pushes_unwritten: u16,
    /// The heartbeat interval granted at login, in ms (at most 3600000);
    /// 0 before login, when the server's own interval applies. Four bytes
    /// that fit the entry's padding: the entry stays 168 bytes.
    pub interval_ms: u32,
    /// What the loop keeps of the socket's readiness.
    pub flags: SocketFlags,
    /// On a TLS listener, the connection's TLS state: everything above
    /// (transport, buffers) then sees plaintext. Boxed so that a plaintext
    /// connection pays 8 bytes and one predictable branch per read.
    pub tls: Option<Box<TlsConn>>,
}

/// What the loop keeps of a socket's readiness, in one byte: the entry has
/// no other byte to spare (see the size test below).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SocketFlags(u8);

impl SocketFlags {
    const READ_PENDING: u8 = 1;
    const WRITE_WATCHED: u8 = 2;

    /// Its read budget ran out with bytes left in the socket, and the loop
    /// will come back to it (an edge-triggered socket would not say so again).
    pub fn read_pending(self) -> bool {
        self.0 & Self::READ_PENDING != 0
    }

    pub fn set_read_pending(&mut self, on: bool) {
        self.set(Self::READ_PENDING, on);
    }

    /// Registered for writable readiness too. Only once a write would block:
    /// most connections never need it, and a socket registered writable
    /// reports so at once, an event for nothing (for each accept, and for
    /// every socket an upgrade hands over).
    pub fn write_watched(self) -> bool {
        self.0 & Self::WRITE_WATCHED != 0
    }

    pub fn set_write_watched(&mut self, on: bool) {
        self.set(Self::WRITE_WATCHED, on);
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

impl ClientConn {
    pub fn new(stream: TcpStream, generation: u32, peer: SocketAddr, now: Micros) -> ClientConn {
        ClientConn {
            stream,
            generation,
            peer,
            connected_at: now,
            last_seen: now,
            state: State::Connected,
            transport: Transport::Sniffing,
            position: StreamPosition::Start,
            inbound: BytesMut::new(),
            outbound: BytesMut::new(),
            pushes_unwritten: 0,
            interval_ms: 0,
            flags: SocketFlags::default(),
            tls: None,
        }
    }

    /// Reads the fields serving a heartbeat touches, which lie across the
    /// entry's cache lines (see `Clients::warm`).
    pub fn warm(&self) -> u64 {
        u64::from(self.generation)
            ^ self.last_seen
            ^ self.inbound.len() as u64
            ^ self.outbound.len() as u64
            ^ u64::from(self.is_websocket())
    }

    /// The id it holds or held, if it logged in.
    pub fn id(&self) -> Option<&Rc<str>> {
        match &self.state {
            State::LoggedIn(Session { id, .. }) | State::Closing { id: Some(id) } => Some(id),
            _ => None,
        }
    }

    pub fn session(&self) -> Option<&Session> {
        match &self.state {
            State::LoggedIn(session) => Some(session),
            _ => None,
        }
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self.transport, Transport::WebSocket(_))
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. })
    }

    /// A request still arriving on the HTTP side speaks no XML yet, nor
    /// does a TLS connection whose handshake has not finished.
    pub fn speaks_xml(&self) -> bool {
        !matches!(self.transport, Transport::Handshake) && !self.tls_handshaking()
    }

    /// A TLS connection whose handshake has not finished.
    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// `Connected` → `LoggedIn`, with the newest broadcast accepted so far
    /// (not for it); `false` (nothing changes) in any other state.
    pub fn log_in(&mut self, id: Rc<str>, broadcast_seq: BroadcastSeq) -> bool {
        if self.state != State::Connected {
            return false;
        }
        self.state = State::LoggedIn(Session {
            id,
            suspect: false,
            broadcast_seq,
        });
        true
    }

    /// The newest broadcast a logged-in connection has been handed; `None`
    /// when it is not logged in (nor owed any).
    pub fn broadcast_mark(&self) -> Option<BroadcastSeq> {
        self.session().map(|s| s.broadcast_seq)
    }

    /// Records that a logged-in connection was handed broadcast `seq`.
    pub fn set_broadcast_mark(&mut self, seq: BroadcastSeq) {
        if let State::LoggedIn(session) = &mut self.state {
            session.broadcast_seq = seq;
        }
    }

    /// Records a sign of life. Returns the id of a suspect client that is
    /// alive again.
    pub fn heard(&mut self, now: Micros) -> Option<&Rc<str>> {
        self.last_seen = now;
        match &mut self.state {
            State::LoggedIn(Session { id, suspect, .. }) if *suspect => {
                *suspect = false;
                Some(id)
            }
            _ => None,
        }
    }

    /// A logged-in client silent for two intervals becomes suspect. Returns
    /// its id when that is news.
    pub fn suspect(&mut self) -> Option<&Rc<str>> {
        match &mut self.state {
            State::LoggedIn(Session { id, suspect, .. }) if !*suspect => {
                *suspect = true;
                Some(id)
            }
            _ => None,
        }
    }

    /// Any state → `Closing`, keeping the id for the offline event.
    pub fn begin_closing(&mut self) {
        let id = match std::mem::replace(&mut self.state, State::Connected) {
            State::LoggedIn(Session { id, .. }) | State::Closing { id: Some(id) } => Some(id),
            _ => None,
        };
        self.state = State::Closing { id };
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
    /// A bug in the server while serving this connection (a caught panic):
    /// this connection ends, the server carries on.
    Internal,
    /// TLS failed: a handshake refused (plaintext on the TLS port, garbage,
    /// an old protocol version, a client certificate not accepted) or a
    /// record that does not decrypt.
    Tls,
}

impl CloseReason {
    pub const COUNT: usize = 13;
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
        CloseReason::Internal,
        CloseReason::Tls,
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
            CloseReason::Internal => "internal-error",
            CloseReason::Tls => "tls",
        }
    }

    /// The `<bye reason>` the server sends before closing, when it sends one.
    pub fn bye(self) -> Option<ByeReason> {
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

    /// The WebSocket close code that goes with this end.
    pub fn ws_close_code(self) -> u16 {
        match self {
            CloseReason::Shutdown => 1001,
            CloseReason::ProtocolError => 1008,
            CloseReason::Internal => 1011,
            _ => 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's memory is mostly this entry (the budget is 320 B
    /// per idle connection, wheel entry and registry included): 168 bytes in
    /// a release build, at most 176. Debug builds of mio add a selector id
    /// to every socket, which does not count.
    #[test]
    fn an_entry_stays_within_its_budget() {
        use std::mem::size_of;
        let debug_only = size_of::<TcpStream>() - size_of::<std::os::fd::RawFd>();
        eprintln!("ClientConn: {} bytes", size_of::<ClientConn>() - debug_only);
        assert!(
            size_of::<ClientConn>() <= 176 + debug_only,
            "ClientConn is {} bytes ({debug_only} of them debug-only)",
            size_of::<ClientConn>()
        );
    }

    #[test]
    fn tokens_round_trip_and_other_tokens_are_not_clients() {
        let c = ConnRef {
            key: 12345,
            generation: GENERATION_MASK,
        };
        assert_eq!(ConnRef::from_token(c.token()), Some(c));
        assert_eq!(ConnRef::from_token(Token(0)), None);
        assert_eq!(ConnRef::from_token(Token(u32::MAX as usize)), None);
        assert_eq!(ConnRef::from_token(Token(c.token().0 | ADMIN_BIT)), None);
    }
}
