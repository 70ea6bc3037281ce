//! The client connection table: a slab of [`ClientConn`] whose slots are
//! named by key and generation, and the outbound path of every connection in
//! it. Entering the table (with a socket registered once, for both readiness
//! directions) and leaving it are the only ways a connection begins and ends.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Events, Interest};
use slab::Slab;

use crate::clock::Micros;
use crate::server::conn::{ClientConn, ConnRef, Transport, GENERATION_MASK};
use crate::server::fanout::{Broadcast, Fanout};
use crate::server::outbound::{Outbound, Overflow, Prepared, WriteFailed};
use crate::writeq::Flushed;

/// Whether a handed-over socket is in the poll already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    No,
    /// Sent ahead and registered readable under its token on arrival.
    Readable,
}

pub struct Clients {
    slab: Slab<ClientConn>,
    next_generation: u32,
    capacity: usize,
    out: Outbound,
    /// Broadcasts being sent: a frame for a client one of them has not
    /// reached yet goes behind it.
    pub(super) fanout: Fanout,
    /// Another process may hold duplicates of these sockets (an upgrade
    /// sent them ahead).
    shared: bool,
}

impl Clients {
    /// `poll`: where a connection whose write would block is registered
    /// for writable readiness.
    pub fn new(capacity: usize, max_outbound: usize, poll: mio::Registry) -> Clients {
        Clients {
            slab: Slab::new(),
            next_generation: 0,
            capacity,
            out: Outbound::new(max_outbound, poll),
            fanout: Fanout::default(),
            shared: false,
        }
    }

    pub fn share_sockets(&mut self, shared: bool) {
        self.shared = shared;
    }

    pub fn sockets_shared(&self) -> bool {
        self.shared
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Connections accepted before refusing with `overload`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.slab.len() >= self.capacity
    }

    /// Gives an accepted socket a slot under a fresh generation and
    /// registers it readable, edge-triggered. Writable is added once, by the
    /// outbound path, the first time a write would block, and then kept: no
    /// re-registration per write, which would cost an `epoll_ctl` per round
    /// trip. On error the socket is dropped.
    pub fn insert(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        now: Micros,
        registry: &mio::Registry,
    ) -> io::Result<ConnRef> {
        self.next_generation = (self.next_generation.wrapping_add(1) & GENERATION_MASK).max(1);
        let entry = self.slab.vacant_entry();
        let conn = ConnRef {
            key: entry.key() as u32,
            generation: self.next_generation,
        };
        registry.register(&mut stream, conn.token(), Interest::READABLE)?;
        entry.insert(ClientConn::new(stream, conn.generation, peer, now));
        Ok(conn)
    }

    /// The connections another process handed over (an upgrade), each at
    /// its own key and generation, so every `ConnRef` held elsewhere (the
    /// registry, presence, the wheel) still names it; each socket is
    /// registered as [`Clients::insert`] does, and writable too when bytes
    /// wait to be written. Registration reports a socket already readable
    /// (or writable) at once, so bytes that arrived during the hand-over are
    /// read and queued ones flushed; the sockets with nothing to read or
    /// write report nothing, so serving resumes with the ones that need it.
    pub fn restore(
        &mut self,
        conns: Vec<(ConnRef, ClientConn, Registered)>,
        next_generation: u32,
        registry: &mio::Registry,
    ) -> io::Result<()> {
        let mut slab = Vec::with_capacity(conns.len());
        for (conn, mut c, registered) in conns {
            // Writable too for one with bytes queued: its flush is due.
            let write_watched = !c.outbound.is_empty();
            c.flags.set_write_watched(write_watched);
            let interest = if write_watched {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match registered {
                Registered::No => registry.register(&mut c.stream, conn.token(), interest)?,
                Registered::Readable if write_watched => {
                    registry.reregister(&mut c.stream, conn.token(), interest)?
                }
                Registered::Readable => {}
            }
            slab.push((conn.key as usize, c));
        }
        self.slab = slab.into_iter().collect();
        self.next_generation = next_generation & GENERATION_MASK;
        Ok(())
    }

    /// The generation the last connection got.
    pub fn next_generation(&self) -> u32 {
        self.next_generation
    }

    /// Every live connection with its reference.
    pub fn iter(&self) -> impl Iterator<Item = (ConnRef, &ClientConn)> {
        self.slab.iter().map(|(key, c)| {
            (
                ConnRef {
                    key: key as u32,
                    generation: c.generation,
                },
                c,
            )
        })
    }

    /// The live connection `conn` names; `None` for one that ended (and
    /// for a slot since reused by a later connection).
    pub fn get(&self, conn: ConnRef) -> Option<&ClientConn> {
        self.slab
            .get(conn.key as usize)
            .filter(|c| c.generation == conn.generation)
    }

    pub fn get_mut(&mut self, conn: ConnRef) -> Option<&mut ClientConn> {
        self.slab
            .get_mut(conn.key as usize)
            .filter(|c| c.generation == conn.generation)
    }

    pub fn is_live(&self, conn: ConnRef) -> bool {
        self.get(conn).is_some()
    }

    /// `Connected` → `LoggedIn`; the broadcasts accepted before are not for it.
    /// Returns the connection when it logged in.
    pub fn log_in(&mut self, conn: ConnRef, id: std::rc::Rc<str>) -> Option<&mut ClientConn> {
        let c = self
            .slab
            .get_mut(conn.key as usize)
            .filter(|c| c.generation == conn.generation)?;
        c.log_in(id, self.fanout.last_seq()).then_some(c)
    }

    /// Takes the connection out of the table; dropping it closes the socket
    /// (which also takes it out of the epoll set).
    pub fn remove(&mut self, conn: ConnRef) -> Option<ClientConn> {
        self.get(conn)?;
        Some(self.slab.remove(conn.key as usize))
    }

    /// Every live connection.
    pub fn refs(&self) -> Vec<ConnRef> {
        self.slab
            .iter()
            .map(|(key, c)| ConnRef {
                key: key as u32,
                generation: c.generation,
            })
            .collect()
    }

    /// Connections by transport (in `metrics::TRANSPORTS` order) and the
    /// bytes queued for them, counted by walking the table: for a scrape,
    /// never per frame.
    pub fn census(&self) -> ([usize; 4], usize) {
        let mut transports = [0; 4];
        let mut buffered = 0;
        for (_, c) in &self.slab {
            let i = match c.transport {
                Transport::Sniffing => 0,
                Transport::Raw => 1,
                Transport::Handshake => 2,
                Transport::WebSocket(_) => 3,
            };
            transports[i] += 1;
            buffered += c.outbound.len();
        }
        (transports, buffered)
    }

    /// Loads the slab entry of every client in the batch before any is
    /// served. Between two heartbeats of a client its entry has left the
    /// caches; independent loads overlap, so the batch pays about one cache
    /// miss instead of one per connection (perf showed that miss as the
    /// largest user-space cost per heartbeat).
    pub fn warm(&self, events: &Events) {
        let mut sum = 0u64;
        for event in events.iter() {
            if let Some(c) =
                ConnRef::from_token(event.token()).and_then(|conn| self.slab.get(conn.key as usize))
            {
                sum = sum.wrapping_add(c.warm());
            }
        }
        std::hint::black_box(sum);
    }

    // ------------------------------------------------------------ outbound

    /// The outbound path and the live connection `conn` names.
    fn live(&mut self, conn: ConnRef) -> Option<(&mut Outbound, &mut ClientConn)> {
        let c = self
            .slab
            .get_mut(conn.key as usize)
            .filter(|c| c.generation == conn.generation)?;
        Some((&mut self.out, c))
    }

    /// [`Clients::live`], once `conn` has been handed the broadcasts still
    /// being sent that it is owed (see `server::fanout`): a frame sent now
    /// must not overtake them. Replies to the connection being served are
    /// not held up: they answer what it sent.
    fn live_caught_up(
        &mut self,
        conn: ConnRef,
    ) -> Result<Option<(&mut Outbound, &mut ClientConn)>, Overflow> {
        let Some(c) = self
            .slab
            .get_mut(conn.key as usize)
            .filter(|c| c.generation == conn.generation)
        else {
            return Ok(None);
        };
        if self.fanout.owes(c) && !self.out.is_serving(conn) {
            self.fanout.catch_up(conn, c, &mut self.out)?;
        }
        Ok(Some((&mut self.out, c)))
    }

    /// Hands the ciphertext read from `conn` (being served) to its TLS
    /// state; `None` for a connection without one.
    pub fn tls_receive(
        &mut self,
        conn: ConnRef,
        bytes: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Option<Result<crate::server::tls::Received, crate::server::tls::TlsFailed>> {
        let (out, c) = self.live(conn)?;
        out.tls_receive(c, bytes, plain)
    }

    /// Sends a frame to `conn` through the one outbound path. A connection
    /// that is gone takes nothing; `Err(Overflow)` leaves the caller to end
    /// a slow consumer.
    pub fn send(
        &mut self,
        conn: ConnRef,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Overflow> {
        match self.live_caught_up(conn)? {
            Some((out, c)) => out.send(conn, c, encode),
            None => Ok(()),
        }
    }

    /// Sends bytes already framed for `conn`'s transport.
    pub fn send_framed(
        &mut self,
        conn: ConnRef,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Overflow> {
        match self.live(conn) {
            Some((out, c)) => out.send_framed(conn, c, encode),
            None => Ok(()),
        }
    }

    /// Sends a frame encoded once for many recipients.
    pub fn send_prepared(
        &mut self,
        conn: ConnRef,
        frame: &mut Prepared,
        push: bool,
    ) -> Result<(), Overflow> {
        match self.live_caught_up(conn)? {
            Some((out, c)) => out.send_prepared(conn, c, frame, push),
            None => Ok(()),
        }
    }

    /// Hands broadcast `job` to `conn` if it is owed it (logged in before
    /// the broadcast was accepted and not handed it yet). Returns whether it
    /// was.
    pub fn send_broadcast(
        &mut self,
        conn: ConnRef,
        job: &mut Broadcast,
    ) -> Result<bool, WriteFailed> {
        match self.slab.get_mut(conn.key as usize) {
            Some(c) if c.generation == conn.generation && job.is_owed(c) => {
                c.set_broadcast_mark(job.seq());
                self.out.send_shared(conn, c, job.frame()).map(|()| true)
            }
            _ => Ok(false),
        }
    }

    /// Whether `conn` could take `len` more bytes without being a slow consumer.
    pub fn has_room(&self, conn: ConnRef, len: usize) -> bool {
        self.get(conn).is_some_and(|c| self.out.has_room(c, len))
    }

    pub fn begin_serving(&mut self, conn: ConnRef) {
        self.out.begin_serving(conn);
    }

    /// The one write of everything a served connection was answered.
    pub fn finish_serving(&mut self, conn: ConnRef) -> Result<(), WriteFailed> {
        match self.live(conn) {
            Some((out, c)) => out.finish_serving(conn, Some(c)),
            None => self.out.finish_serving(conn, None),
        }
    }

    /// Flushes `conn`'s queue on its writable edge.
    pub fn flush(&mut self, conn: ConnRef) -> Result<Flushed, WriteFailed> {
        match self.live(conn) {
            Some((out, c)) => out.flush(conn, c),
            None => Ok(Flushed::Done),
        }
    }

    /// The connections that were given bytes this iteration, to be flushed.
    pub fn take_scheduled(&mut self, into: &mut Vec<ConnRef>) {
        self.out.take_scheduled(into);
    }

    /// Writes a leaving connection's last words (best effort).
    pub fn last_words(&mut self, c: &mut ClientConn, encode: impl FnOnce(&mut Vec<u8>, bool)) {
        self.out.last_words(c, encode);
    }

    pub fn outbound_stats(&self) -> crate::server::outbound::OutboundStats {
        self.out.stats
    }

    /// The pushes the process this one took over from had delivered (an
    /// upgrade): the push counters go on.
    pub fn resume_pushes_delivered(&mut self, delivered: u64) {
        self.out.stats.pushes_delivered = delivered;
    }

    /// After a caught panic: forget the half-served connection's replies.
    pub fn recover(&mut self) {
        self.out.recover();
    }
}
