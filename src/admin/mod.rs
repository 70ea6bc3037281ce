//! The admin HTTP API: its own connections (a slab of their own, tokens
//! with the admin bit), their state machine, and the requests they carry.
//! It runs on the loop's thread; what it reports or changes goes through
//! [`Backend`].
//!
//! A push that waits for its ack parks its connection (`AwaitingAck`); the
//! ack is seen by the client side, which puts the request on a list that the
//! loop hands to [`Admin::wake`] after the connection being served is done —
//! the admin API never runs inside another connection's frame handling.

mod asking;
mod backend;
mod events;
pub mod idempotency;
mod repeats;
mod routes;
mod serve;
pub mod stats;

pub use backend::{
    AdminGauges, Answer, Backend, ClientView, ClientsPage, Keyed, Pushed, Question, ReceiptView,
    Refused, Repeat, StreamStart,
};

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;

use crate::clock::{micros, Micros};
use crate::http::{self, BodyState};
use crate::pushes::{WaitEnd, MAX_RECEIPTS};
use crate::server::conn::{ADMIN_BIT, GENERATION_MASK, GENERATION_SHIFT};
use crate::writeq::{self, Flushed};
use idempotency::Idempotency;
use stats::{AdminStats, Route};

/// An admin connection silent this long is closed (event streams excepted;
/// a request waiting for a push's ack is not silent).
pub const ADMIN_IDLE: Duration = Duration::from_secs(60);
/// Event streams get a comment this often, so dead subscribers and idle
/// proxies are found out.
const EVENTS_KEEPALIVE: Duration = Duration::from_secs(15);
/// A resume replay is queued this much at a time, as the socket drains.
const REPLAY_CHUNK: usize = 64 * 1024;
/// A lingering close gives up after this long without input.
const LINGER: Duration = Duration::from_secs(5);
/// ...or after discarding this much of a refused request.
const MAX_LINGER_DISCARD: usize = 64 << 20;
/// Largest push or broadcast body (before XML escaping), and largest request body.
pub const MAX_BODY: usize = 1 << 20;
/// An event stream queues at most this much for a subscriber that does not read.
const MAX_STREAM_QUEUE: usize = 1 << 20;

/// An admin connection's identity: slab key and generation, as for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdminRef {
    pub key: u32,
    pub generation: u32,
}

impl AdminRef {
    pub fn token(self) -> Token {
        Token(ADMIN_BIT | ((self.generation as usize) << GENERATION_SHIFT) | self.key as usize)
    }

    pub fn from_token(token: Token) -> Option<AdminRef> {
        if token.0 & ADMIN_BIT == 0 {
            return None;
        }
        let generation = ((token.0 & !ADMIN_BIT) >> GENERATION_SHIFT) as u32;
        (generation != 0).then_some(AdminRef {
            key: token.0 as u32,
            generation,
        })
    }
}

/// Where an admin connection stands.
enum State {
    /// Serving requests, keep-alive.
    Requests,
    /// A push waits for the client's ack: the response goes out when the ack
    /// comes or the wait ends; requests behind it wait their turn.
    AwaitingAck {
        message: Rc<str>,
        keep_alive: bool,
        /// When the request was parsed, for its latency.
        started: Instant,
    },
    /// Cluster mode: a question to the cluster waits for its answer (then,
    /// for a push with `wait_ack_ms`, for the ack); requests behind it wait.
    Asking {
        asked: routes::Asked,
        route: Route,
        started: Instant,
    },
    /// The last response is being flushed; then the write side is shut and
    /// input discarded until the peer closes (a lingering close, so that a
    /// client still sending a refused body reads the answer, not a reset).
    Draining { discarded: usize },
    /// Streaming presence events (Server-Sent Events); input is ignored.
    /// `next`: the next event this subscriber needs; `replaying`: it is
    /// still being caught up from the ring as its socket drains.
    Events { next: u64, replaying: bool },
}

struct AdminConn {
    stream: TcpStream,
    generation: u32,
    last_seen: Micros,
    /// Unparsed request bytes.
    inbound: BytesMut,
    /// A chunked request body decoded so far.
    body: BodyState,
    /// `100 Continue` was sent for the request at the front of `inbound`.
    continued: bool,
    /// Response bytes the socket has not taken yet.
    outbound: BytesMut,
    state: State,
}

pub struct Admin {
    conns: Slab<AdminConn>,
    next_generation: u32,
    token: Option<Vec<u8>>,
    /// When each connection's one timer comes due: (at, key, generation).
    timers: BTreeSet<(Micros, u32, u32)>,
    /// The response being written.
    response: Vec<u8>,
    max_connections: usize,
    stats: AdminStats,
    /// Answers remembered under `Idempotency-Key`.
    idempotency: Idempotency,
}

impl Admin {
    /// `remember`: how long an idempotent answer is kept (the receipt TTL).
    pub fn new(token: Option<Vec<u8>>, max_connections: usize, remember: Duration) -> Admin {
        Admin {
            conns: Slab::new(),
            next_generation: 0,
            token,
            timers: BTreeSet::new(),
            response: Vec::new(),
            max_connections,
            stats: AdminStats::default(),
            idempotency: Idempotency::new(micros(remember), MAX_RECEIPTS),
        }
    }

    /// The answers remembered under `Idempotency-Key` (an upgrade moves
    /// them; admin connections themselves do not move).
    pub fn idempotency(&self) -> &Idempotency {
        &self.idempotency
    }

    pub fn idempotency_mut(&mut self) -> &mut Idempotency {
        &mut self.idempotency
    }

    pub fn stats(&self) -> &AdminStats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn gauges(&self) -> AdminGauges {
        AdminGauges {
            connections: self.conns.len(),
            subscribers: self
                .conns
                .iter()
                .filter(|(_, c)| matches!(c.state, State::Events { .. }))
                .count(),
        }
    }

    fn get_mut(&mut self, admin: AdminRef) -> Option<&mut AdminConn> {
        self.conns
            .get_mut(admin.key as usize)
            .filter(|c| c.generation == admin.generation)
    }

    /// Takes an accepted connection, unless `LIFELINE_ADMIN_MAX_CONNECTIONS`
    /// are open already: then it is answered 503 and closed. The API is for
    /// a few back ends, and its connections live in the descriptors reserved
    /// beside the clients' (`config::FD_RESERVE`, grown for a larger limit),
    /// so they can never take a client's place.
    pub fn admit(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        poll: &mio::Registry,
        now: Micros,
    ) {
        if self.conns.len() >= self.max_connections {
            debug!("refusing admin connection from {peer}: too many");
            self.stats.refused_connections += 1;
            // Best effort: a fresh socket's buffer takes it; then it closes.
            let mut refusal = Vec::new();
            http::write_error(
                &mut refusal,
                503,
                "too-many-connections",
                "LIFELINE_ADMIN_MAX_CONNECTIONS admin connections are open; retry later",
                false,
            );
            let _ = io::Write::write(&mut stream, &refusal);
            return;
        }
        let _ = stream.set_nodelay(true);
        self.next_generation = (self.next_generation.wrapping_add(1) & GENERATION_MASK).max(1);
        let entry = self.conns.vacant_entry();
        let admin = AdminRef {
            key: entry.key() as u32,
            generation: self.next_generation,
        };
        if let Err(e) = poll.register(
            &mut stream,
            admin.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot register admin connection from {peer}: {e}");
            return;
        }
        entry.insert(AdminConn {
            stream,
            generation: admin.generation,
            last_seen: now,
            inbound: BytesMut::new(),
            body: BodyState::default(),
            continued: false,
            outbound: BytesMut::new(),
            state: State::Requests,
        });
        self.timers
            .insert((now + micros(ADMIN_IDLE), admin.key, admin.generation));
    }

    /// Serves a ready admin connection: reads and answers its requests,
    /// flushes its responses when writable.
    pub fn on_ready(
        &mut self,
        admin: AdminRef,
        writable: bool,
        buf: &mut [u8],
        backend: &mut dyn Backend,
    ) {
        if self.get_mut(admin).is_none() {
            return;
        }
        if !self.read(admin, buf, backend) {
            self.end(admin, backend);
            return;
        }
        if writable {
            self.flush(admin, backend);
        }
    }

    /// Reads what the peer sent; false when the connection must end.
    fn read(&mut self, admin: AdminRef, buf: &mut [u8], backend: &mut dyn Backend) -> bool {
        let now = backend.now();
        loop {
            let Some(c) = self.get_mut(admin) else {
                return true;
            };
            let n = match c.stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            c.last_seen = now;
            match &mut c.state {
                State::Events { .. } => {} // input is ignored
                State::Draining { discarded } => {
                    *discarded += n;
                    if *discarded > MAX_LINGER_DISCARD {
                        return false;
                    }
                }
                State::Requests | State::AwaitingAck { .. } | State::Asking { .. } => {
                    c.inbound.extend_from_slice(&buf[..n]);
                    // Requests piled up behind a push that waits for its ack.
                    if c.inbound.len() > http::MAX_HEAD + MAX_BODY + 1024 {
                        return false;
                    }
                    // Parse as data comes, so a refusal (413, 431) goes out
                    // before the rest of a huge request.
                    if !self.serve(admin, backend) {
                        return false;
                    }
                }
            }
            if n < buf.len() {
                return true;
            }
        }
    }

    /// Writes `self.response`; false when the socket failed.
    fn respond(&mut self, admin: AdminRef, backend: &mut dyn Backend) -> bool {
        let response = std::mem::take(&mut self.response);
        let sent = match self.get_mut(admin) {
            Some(c) => writeq::send(&mut c.stream, &mut c.outbound, &response),
            None => Ok((Flushed::Done, 0)),
        };
        self.response = response;
        match sent {
            Ok((_, written)) => {
                backend.count_admin_bytes(written);
                true
            }
            Err(_) => false,
        }
    }

    /// Ends a connection gracefully: its queued response goes out in full,
    /// then the write side is shut (in `flush`, or here when nothing is
    /// queued) and input is discarded until the peer closes.
    fn begin_draining(&mut self, admin: AdminRef) {
        if let Some(c) = self.get_mut(admin) {
            c.state = State::Draining { discarded: 0 };
            c.inbound = BytesMut::new();
            if c.outbound.is_empty() {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    /// Flushes a connection on its writable edge.
    fn flush(&mut self, admin: AdminRef, backend: &mut dyn Backend) {
        let Some(c) = self.get_mut(admin) else {
            return;
        };
        let (flushed, written) = match writeq::flush(&mut c.stream, &mut c.outbound) {
            Ok(done) => done,
            Err(_) => return self.end(admin, backend),
        };
        backend.count_admin_bytes(written);
        let (draining, streaming, replaying) = match &c.state {
            State::Draining { .. } => (true, false, false),
            State::Events { replaying, .. } => (false, true, *replaying),
            _ => (false, false, false),
        };
        if flushed == Flushed::Done {
            if draining {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
            } else if replaying && !self.continue_replay(admin, backend) {
                self.end(admin, backend);
            }
        } else if streaming && c.outbound.len() > MAX_STREAM_QUEUE {
            // An event stream is bounded; a response is not cut short.
            self.end(admin, backend);
        }
    }

    /// Answers the requests whose push wait ended, then serves what queued
    /// up behind them.
    pub fn wake(&mut self, woken: Vec<(AdminRef, Rc<str>, WaitEnd)>, backend: &mut dyn Backend) {
        for (admin, message, end) in woken {
            let Some(c) = self.get_mut(admin) else {
                continue;
            };
            let (keep_alive, started) = match &c.state {
                State::AwaitingAck {
                    message: waiting,
                    keep_alive,
                    started,
                } if *waiting == message => (*keep_alive, *started),
                _ => continue,
            };
            c.state = State::Requests;
            self.response.clear();
            routes::waited(
                backend,
                &mut self.idempotency,
                &message,
                end == WaitEnd::Acked,
                keep_alive,
                &mut self.response,
            );
            let sent = self.respond(admin, backend);
            self.stats.answered(Route::Push, started.elapsed());
            if !sent {
                self.end(admin, backend);
            } else if !keep_alive {
                self.begin_draining(admin);
            } else if !self.serve(admin, backend) {
                self.end(admin, backend);
            }
        }
    }

    /// When the next admin timer comes due.
    pub fn next_timer(&self) -> Option<Micros> {
        self.timers.first().map(|&(at, _, _)| at)
    }

    /// Each connection's one timer: an event stream gets a keepalive
    /// comment, a lingering close gives up after `LINGER`, an idle
    /// connection closes after `ADMIN_IDLE`; otherwise it is re-armed.
    /// Whether a connection's timer is due at `now` (the loop asks every
    /// iteration; with no admin connection open the answer is at hand).
    pub fn timer_due(&self, now: Micros) -> bool {
        self.timers.first().is_some_and(|&(at, _, _)| at <= now)
    }

    pub fn on_timers(&mut self, backend: &mut dyn Backend) {
        let now = backend.now();
        while let Some(&(at, key, generation)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let admin = AdminRef { key, generation };
            let Some(c) = self.get_mut(admin) else {
                continue;
            };
            let idle = now.saturating_sub(c.last_seen);
            let next = match &c.state {
                State::Events { .. } => {
                    let sent = writeq::send(&mut c.stream, &mut c.outbound, b": keepalive\n\n");
                    if sent.is_err() || c.outbound.len() > MAX_STREAM_QUEUE {
                        self.end(admin, backend);
                        continue;
                    }
                    now + micros(EVENTS_KEEPALIVE)
                }
                State::Draining { .. } if idle >= micros(LINGER) => {
                    self.end(admin, backend);
                    continue;
                }
                State::Draining { .. } => now + (micros(LINGER) - idle),
                State::AwaitingAck { .. } | State::Asking { .. } => now + micros(ADMIN_IDLE),
                State::Requests if idle >= micros(ADMIN_IDLE) => {
                    self.end(admin, backend);
                    continue;
                }
                State::Requests => now + (micros(ADMIN_IDLE) - idle),
            };
            self.timers.insert((next, key, generation));
        }
    }

    /// Closes an admin connection and lets go of what it waited for.
    pub fn end(&mut self, admin: AdminRef, backend: &mut dyn Backend) {
        if self.get_mut(admin).is_none() {
            return;
        }
        let c = self.conns.remove(admin.key as usize);
        match &c.state {
            State::AwaitingAck { message, .. } => {
                backend.cancel_wait(message);
                if let Some((keyed, status, body)) = self.idempotency.abandoned(message) {
                    backend.remember_answer(&keyed, status, &body, None);
                }
            }
            // The cluster's answer will find no one; a repeat is a retry.
            State::Asking { asked, .. } => {
                if let Some((key, _)) = &asked.key {
                    self.idempotency.unpend(key);
                }
            }
            _ => {}
        }
    }

    /// Closes every admin connection (shutdown).
    pub fn close_all(&mut self, backend: &mut dyn Backend) {
        let all: Vec<AdminRef> = self
            .conns
            .iter()
            .map(|(key, c)| AdminRef {
                key: key as u32,
                generation: c.generation,
            })
            .collect();
        for admin in all {
            self.end(admin, backend);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ConnRef;

    #[test]
    fn admin_and_client_tokens_never_mix() {
        let a = AdminRef {
            key: 7,
            generation: GENERATION_MASK,
        };
        assert_eq!(AdminRef::from_token(a.token()), Some(a));
        assert_eq!(ConnRef::from_token(a.token()), None);
        let c = ConnRef {
            key: 7,
            generation: 3,
        };
        assert_eq!(AdminRef::from_token(c.token()), None);
        assert_eq!(AdminRef::from_token(Token(2)), None);
    }
}
