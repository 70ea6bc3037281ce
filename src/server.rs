//! The event loop: one `mio::Poll`, one thread, every socket.
//!
//! Each iteration: wait for readiness (no longer than the next timer tick),
//! serve each ready socket (read everything, answer into one reply buffer,
//! write once), flush the connections that were sent messages, then advance
//! the timer wheel and act on the deadlines that came due.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::auth;
use crate::config::{Config, FD_RESERVE};
use crate::conn::{CloseReason, ConnRef, Connection, Flushed, Micros, Phase, Transport};
use crate::metrics::Metrics;
use crate::presence::{PresenceKind, PresenceLog};
use crate::receipts::{OfflineQueue, Receipts, Status};
use crate::registry::{LocalRegistry, Registry};
use crate::timers::{Ticker, TimerWheel};
use lifeline_wire::ws;
use lifeline_wire::{self as wire, Decoded, ErrorCode, Frame, FrameReader};

const LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const ADMIN_LISTENER: Token = Token(3);
const TICKER: Token = Token(4);

/// The loop times at most one iteration per this many microseconds.
const LOOP_SAMPLE_EVERY_US: Micros = 1000;

/// While connections keep waking the loop (one was served within the last
/// tick), every iteration advances the wheel, so the ticker only has to catch
/// a sudden silence: it may then fire this long after the wheel's next tick,
/// and so fires about 45 times a second instead of 500. Only a silence that
/// begins just as deadlines come due sees closes up to this much later, within
/// the protocol's bound of one tick plus 50 ms; once the loop is quiet, the
/// ticker follows every tick.
const BUSY_TICKER_SLACK: Duration = Duration::from_millis(20);

/// One read takes at most this much; a shorter read means the socket is drained
/// (edge-triggered), which saves the read that would only return WouldBlock.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes one connection may feed the loop per readiness event before the
/// others get their turn: a client that never stops sending cannot starve
/// them, nor grow the reply buffer without bound.
const READ_BUDGET: usize = 4 * READ_CHUNK;
const EVENTS_CAPACITY: usize = 256;
/// After the process runs out of descriptors, accepting is retried this often.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often (with a count of the rest).
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(1);
/// Receipts kept at most, oldest forgotten first (besides their time to live).
const MAX_RECEIPTS: usize = 1_000_000;
/// Golden-ratio fraction: successive logins get heartbeat phases spread evenly.
const PHASE_STEP: f64 = 0.618_033_988_749_895;

/// Errors that stop the server (a client's errors never do).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminListen { addr: SocketAddr, source: io::Error },
    #[error("cannot set up the event loop: {0}")]
    Poll(io::Error),
}

/// What the reading of a connection decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Close(CloseReason),
    /// A handler already ended this connection (an ack let a waiting admin
    /// request run, and that request kicked the client): touch nothing more.
    Gone,
}

pub struct Server {
    pub(crate) config: Config,
    pub(crate) poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    pub(crate) admin_listener: Option<TcpListener>,
    admin_addr: Option<SocketAddr>,
    signals: Signals,
    pub(crate) conns: Slab<Connection>,
    pub(crate) registry: Box<dyn Registry>,
    pub(crate) wheel: TimerWheel<ConnRef>,
    /// Wakes the loop for the wheel's next tick.
    ticker: Ticker,
    /// This iteration's timestamp, and its `micros`.
    woke: (Instant, Micros),
    /// The ticker could not be set once: warned, and the poll timeout covers the wheel.
    ticker_failed: bool,
    pub(crate) epoch: Instant,
    /// Wall-clock time of `epoch`, in Unix milliseconds, for timestamps shown to people.
    wall_epoch_ms: u64,
    pub(crate) capacity: usize,
    next_generation: u32,
    logins_seen: u64,
    /// Loop-wide read buffer: connections keep only a partial frame's tail.
    pub(crate) read_buf: Vec<u8>,
    /// Replies to the connection being read, written with one call at the end.
    replies: Vec<u8>,
    /// The connection being read speaks WebSocket: frame each reply.
    reply_ws: bool,
    /// Encoding scratch for frames sent to other connections, and admin responses.
    pub(crate) scratch: Vec<u8>,
    /// A frame built once and queued to one or many connections (pushes, events).
    pub(crate) frame: Vec<u8>,
    /// `frame` as a WebSocket message, for WebSocket recipients.
    pub(crate) ws_frame: Vec<u8>,
    /// The admin response being built (handlers may close clients, which uses `scratch`).
    pub(crate) response: Vec<u8>,
    expired: Vec<ConnRef>,
    /// Connections that were sent messages during this iteration.
    pub(crate) flush_list: Vec<ConnRef>,
    /// Connections whose read budget ran out with bytes left unread.
    read_again: Vec<ConnRef>,
    /// Held so that, out of descriptors, one can be freed to refuse a client politely.
    spare_fd: Option<File>,
    pub(crate) accept_retry_at: Option<Instant>,
    accept_errors_unlogged: u64,
    accept_error_logged_at: Option<Instant>,
    drain_deadline: Option<Instant>,
    pub(crate) admin_connections: usize,
    /// Admin connections streaming presence events.
    pub(crate) subscribers: Vec<ConnRef>,
    pub(crate) presence: PresenceLog,
    /// Source of the per-client reconnect delays advised in `<bye retry-ms>`.
    rng: fastrand::Rng,
    /// Push id → (the admin connection waiting for its ack, the recipient).
    pub(crate) waiting_acks: HashMap<Rc<str>, (ConnRef, ConnRef)>,
    /// When each waiting push stops waiting: (until, admin key, generation).
    pub(crate) ack_deadlines: std::collections::BTreeSet<(Micros, u32, u32)>,
    pub(crate) pushes_issued: u64,
    pub(crate) receipts: Receipts,
    /// Pushes held for offline clients.
    pub(crate) offline: OfflineQueue,
    pub metrics: Metrics,
}

impl Server {
    /// Raises the open-file limit, binds the listener and sets up the loop.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let fd_limit = raise_open_file_limit();
        let fd_capacity =
            usize::try_from(fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
        let capacity = match config.max_connections {
            Some(n) if n > fd_capacity => {
                warn!(
                    "LIFELINE_MAX_CONNECTIONS={n} is more than the open-file limit ({fd_limit}) allows; using {fd_capacity}"
                );
                fd_capacity
            }
            Some(n) => n,
            None => fd_capacity,
        };
        if capacity == 0 {
            warn!(
                "the open-file limit ({fd_limit}) leaves no room for clients: {FD_RESERVE} descriptors \
                 are kept for the server itself; raise the limit (ulimit -n)"
            );
        }
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let mut listener =
            bind_listener(config.listen, config.backlog).map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(ServerError::Poll)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let mut admin_listener = match config.admin_addr {
            None => None,
            Some(addr) => {
                let mut l = bind_listener(addr, 128)
                    .map_err(|source| ServerError::AdminListen { addr, source })?;
                poll.registry()
                    .register(&mut l, ADMIN_LISTENER, Interest::READABLE)
                    .map_err(ServerError::Poll)?;
                Some(l)
            }
        };
        let admin_addr = match &mut admin_listener {
            Some(l) => Some(l.local_addr().map_err(ServerError::Poll)?),
            None => None,
        };
        if let Some(addr) = admin_addr {
            info!("admin API on http://{addr}");
        }
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(ServerError::Poll)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let ticker = Ticker::new().map_err(ServerError::Poll)?;
        ticker
            .register(poll.registry(), TICKER)
            .map_err(ServerError::Poll)?;
        let config_event_backlog = config.event_backlog;
        let receipt_ttl_us = config.receipt_ttl.as_micros() as Micros;
        let (queue_max_per_client, queue_max_bytes) =
            (config.queue_max_per_client, config.queue_max_bytes);
        let epoch = Instant::now();
        let wall_epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        info!(
            "listening on {local_addr}; capacity {capacity} connections (open-file limit {fd_limit}); \
             heartbeat {} ms, misses {}, deadline {} ms, tick {} ms",
            config.heartbeat.as_millis(),
            config.misses,
            config.deadline().as_millis(),
            config.tick.as_millis()
        );
        Ok(Server {
            wheel: TimerWheel::new(epoch, config.tick),
            ticker,
            woke: (epoch, 0),
            ticker_failed: false,
            config,
            poll,
            listener: Some(listener),
            local_addr,
            admin_listener,
            admin_addr,
            signals,
            conns: Slab::new(),
            registry: Box::new(LocalRegistry::default()),
            epoch,
            wall_epoch_ms,
            capacity,
            next_generation: 0,
            logins_seen: 0,
            read_buf: vec![0; READ_CHUNK],
            replies: Vec::with_capacity(4096),
            reply_ws: false,
            scratch: Vec::with_capacity(4096),
            frame: Vec::new(),
            ws_frame: Vec::new(),
            response: Vec::new(),
            expired: Vec::new(),
            flush_list: Vec::new(),
            read_again: Vec::new(),
            spare_fd: File::open("/dev/null").ok(),
            accept_retry_at: None,
            accept_errors_unlogged: 0,
            accept_error_logged_at: None,
            drain_deadline: None,
            admin_connections: 0,
            subscribers: Vec::new(),
            presence: PresenceLog::new(config_event_backlog, wall_epoch_ms * 1000),
            rng: fastrand::Rng::new(),
            waiting_acks: HashMap::new(),
            ack_deadlines: std::collections::BTreeSet::new(),
            pushes_issued: 0,
            receipts: Receipts::new(receipt_ttl_us, MAX_RECEIPTS),
            offline: OfflineQueue::new(queue_max_per_client, queue_max_bytes),
            metrics: Metrics::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the admin API listens, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Connections the server accepts before refusing with `overload`.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Runs until SIGINT/SIGTERM and the shutdown drain are done.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let tick_us = self.config.tick.as_micros() as Micros;
        // When the loop last served a connection: within a tick of that,
        // more are likely to wake it before the next tick.
        let mut last_served: Micros = 0;
        let mut next_sample: Micros = 0;
        loop {
            let (now, now_us) = self.woke;
            let wheel_due = self.wheel.next_due();
            let busy = now_us.saturating_sub(last_served) <= tick_us;
            let ticker_due = wheel_due.map(|at| if busy { at + BUSY_TICKER_SLACK } else { at });
            let mut timeout = self.poll_timeout(now);
            if let Err(e) = self.ticker.set(ticker_due, now) {
                self.log_ticker_error(&e);
                let wheel_timeout = wheel_due.map(|at| at.saturating_duration_since(now));
                timeout = timeout.into_iter().chain(wheel_timeout).min();
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            // One clock read per iteration (tens of thousands a second; each
            // read shows in the profile): every timestamp below is this one.
            let now = Instant::now();
            let now_us = micros_between(self.epoch, now);
            self.woke = (now, now_us);
            self.metrics.loop_iterations += 1;
            self.warm_entries(&events);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    ADMIN_LISTENER => self.accept_admin(now),
                    SIGNALS => self.on_signal(now),
                    TICKER => {} // the deadlines are looked at every iteration
                    token => {
                        if let Some(conn) = ConnRef::from_token(token) {
                            last_served = now_us;
                            self.serve_guarded(conn, event.is_writable(), now);
                        }
                    }
                }
            }
            self.read_pending(now);
            self.flush_queued();
            // Deadlines after the batch: a frame that was waiting in a socket
            // when the loop woke counts, even if its deadline has just passed.
            // Ticks that come due while the batch is served wait for the next
            // iteration, which a busy loop starts at once.
            if self.accept_retry_at.is_some_and(|at| now >= at) {
                self.accept_retry_at = None;
                self.accept(now);
                self.accept_admin(now);
            }
            self.on_deadlines(now);
            self.expire_pushes(now);
            self.expire_ack_waits(now);
            // The iteration's duration costs a second clock read: sampled.
            if now_us >= next_sample {
                next_sample = now_us + LOOP_SAMPLE_EVERY_US;
                self.metrics.loop_iteration(now.elapsed());
            }
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    self.finish_shutdown(now);
                    return Ok(());
                }
            }
        }
    }

    /// Loads the slab entry of every connection in the batch before any is
    /// served. Between two heartbeats of a client its entry has left the
    /// caches (10,000 entries of 184 bytes); independent loads overlap, so the
    /// batch pays about one cache miss instead of one per connection (perf
    /// showed that miss as the largest user-space cost per heartbeat).
    fn warm_entries(&self, events: &Events) {
        let mut sum = 0u64;
        for event in events.iter() {
            if let Some(c) = ConnRef::from_token(event.token())
                .and_then(|conn| self.conns.get(conn.key as usize))
            {
                sum = sum.wrapping_add(c.warm());
            }
        }
        std::hint::black_box(sum);
    }

    /// Serves one ready connection. No panic is known to be reachable from
    /// the network, but should one remain, it costs that connection only,
    /// not the loop and every other client.
    fn serve_guarded(&mut self, conn: ConnRef, writable: bool, now: Instant) {
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.on_ready(conn, writable, now)
        }));
        if served.is_err() {
            error!(
                "internal error while serving connection {}: closing it, the server carries on",
                conn.generation
            );
            // Loop-wide buffers are taken out while in use; put them back.
            if self.read_buf.len() != READ_CHUNK {
                self.read_buf = vec![0; READ_CHUNK];
            }
            self.close(conn, CloseReason::IoError, now);
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.read_again.is_empty() {
            return Some(Duration::ZERO);
        }
        let queue_expiry = self
            .offline
            .next_expiry()
            .map(|at| (self.epoch + Duration::from_micros(at)).saturating_duration_since(now));
        let ack_wait = self.ack_deadlines.first().map(|&(until, _, _)| {
            (self.epoch + Duration::from_micros(until)).saturating_duration_since(now)
        });
        [
            ack_wait,
            queue_expiry,
            self.accept_retry_at
                .map(|at| at.saturating_duration_since(now)),
            self.drain_deadline
                .map(|at| at.saturating_duration_since(now)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Microseconds since the loop started. Called per frame, almost always
    /// with the iteration's own timestamp, whose value is kept.
    pub(crate) fn micros(&self, at: Instant) -> Micros {
        if at == self.woke.0 {
            return self.woke.1;
        }
        micros_between(self.epoch, at)
    }

    /// Unix milliseconds of a loop timestamp.
    pub(crate) fn unix_ms(&self, at: Micros) -> u64 {
        self.wall_epoch_ms + at / 1000
    }

    /// The `retry-ms` for a goodbye: a per-client random delay in
    /// [0, reconnect spread] for the reasons after which clients come back, so
    /// that a restart or an overload is not followed by every client at once.
    /// `replaced` and `kicked` are terminal and carry none.
    pub(crate) fn retry_advice(&mut self, reason: wire::ByeReason) -> Option<u64> {
        use wire::ByeReason::{Overload, Shutdown, Timeout};
        let spread = self.config.reconnect_spread.as_millis() as u64;
        (spread > 0 && matches!(reason, Shutdown | Overload | Timeout))
            .then(|| self.rng.u64(0..=spread))
    }

    /// A fresh non-zero generation for a new occupant of a slab slot.
    pub(crate) fn new_generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        self.next_generation
    }

    // ---------------------------------------------------------------- accept

    fn accept(&mut self, now: Instant) {
        // Take back a spare descriptor lost to an earlier shortage first, so
        // that the next shortage can still refuse politely.
        if self.spare_fd.is_none() {
            self.spare_fd = File::open("/dev/null").ok();
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_descriptors(&e) => {
                    self.log_accept_error(&e, now);
                    if !self.refuse_with_spare_fd() {
                        // Nothing can be accepted until a descriptor frees up; the
                        // listener stays registered and is retried by the timer, so
                        // the loop sleeps instead of spinning on the pending backlog.
                        self.accept_retry_at = Some(now + ACCEPT_RETRY);
                        return;
                    }
                }
                // ECONNABORTED and friends concern one client; carry on.
                Err(e) => self.log_accept_error(&e, now),
            }
        }
    }

    /// Out of descriptors: release the spare, accept one client, tell it
    /// `overload`, close it, take the spare back. Returns false when that
    /// is not possible either.
    fn refuse_with_spare_fd(&mut self) -> bool {
        // A spare lost to an earlier shortage is taken back as soon as a
        // descriptor frees up.
        if self.spare_fd.is_none() {
            self.spare_fd = File::open("/dev/null").ok();
        }
        if self.spare_fd.take().is_none() {
            return false;
        }
        let refused = match self.listener.as_ref().map(|l| l.accept()) {
            Some(Ok((stream, _))) => {
                self.refuse(stream);
                true
            }
            _ => false,
        };
        self.spare_fd = File::open("/dev/null").ok();
        refused && self.spare_fd.is_some()
    }

    fn refuse(&mut self, stream: TcpStream) {
        self.metrics.closed(CloseReason::Overload);
        self.scratch.clear();
        let retry = self.retry_advice(wire::ByeReason::Overload);
        wire::encode_bye(&mut self.scratch, wire::ByeReason::Overload, retry);
        // Best effort: a fresh socket's send buffer takes a few dozen bytes.
        let _ = io::Write::write(&mut &stream, &self.scratch);
    }

    fn log_ticker_error(&mut self, e: &io::Error) {
        if !self.ticker_failed {
            warn!("cannot set the heartbeat timer ({e}); waking by poll timeout instead");
            self.ticker_failed = true;
        }
    }

    pub(crate) fn log_accept_error(&mut self, e: &io::Error, now: Instant) {
        let due = self
            .accept_error_logged_at
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_EVERY);
        if due {
            warn!(
                "accept failed: {e} ({} more since the last report)",
                self.accept_errors_unlogged
            );
            self.accept_error_logged_at = Some(now);
            self.accept_errors_unlogged = 0;
        } else {
            self.accept_errors_unlogged += 1;
        }
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.conns.len() - self.admin_connections >= self.capacity
            || self.drain_deadline.is_some()
        {
            debug!("refusing {peer}: at capacity ({})", self.capacity);
            self.refuse(stream);
            return;
        }
        if let Err(e) = self.configure_socket(&stream) {
            debug!("dropping {peer}: cannot set socket options: {e}");
            return;
        }
        let Some(conn) = self.insert_connection(stream, peer, Phase::Connected, now) else {
            return;
        };
        self.metrics.accepted += 1;
        self.wheel.schedule(conn, now + self.config.heartbeat);
        debug!("accepted {peer} as connection {}", conn.generation);
    }

    /// Gives an accepted socket a slab slot under a fresh generation and
    /// registers it; `None` (the socket dropped) when it cannot be registered.
    pub(crate) fn insert_connection(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        phase: Phase,
        now: Instant,
    ) -> Option<ConnRef> {
        let generation = self.new_generation();
        let now_us = self.micros(now);
        let entry = self.conns.vacant_entry();
        let conn = ConnRef {
            key: entry.key() as u32,
            generation,
        };
        // Readable and writable once, edge-triggered: no re-registration per
        // write, which would cost an epoll_ctl per round trip.
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            conn.token(),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot register {peer}: {e}");
            return None;
        }
        let mut c = Connection::new(stream, generation, peer, now_us);
        c.phase = phase;
        entry.insert(c);
        Some(conn)
    }

    fn configure_socket(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        if let Some(k) = self.config.tcp_keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count);
            let socket = socket2::SockRef::from(stream);
            socket.set_tcp_keepalive(&keepalive)?;
            // Keepalive only probes an idle connection; with unacknowledged
            // output the kernel retransmits instead, for up to ~15 minutes.
            // The user timeout gives that case the same bound.
            socket.set_tcp_user_timeout(Some(k.idle + k.interval * k.count))?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------- I/O

    fn on_ready(&mut self, conn: ConnRef, writable: bool, now: Instant) {
        if !self.is_live(conn) {
            return; // a closed connection's leftover event, or a reused slot
        }
        if self.conns[conn.key as usize].is_admin() {
            self.on_admin_readable(conn, now);
            if writable && self.is_live(conn) {
                self.flush_admin(conn, now);
            }
            return;
        }
        // Always try to read: a hang-up or error shows as a read of 0 or an error.
        self.on_readable(conn, now);
        if writable && self.is_live(conn) {
            let c = &mut self.conns[conn.key as usize];
            let flushed = c.flush(&mut self.metrics.bytes_out);
            let closing = c.is_closing();
            if matches!(flushed, Ok(Flushed::Done)) {
                self.metrics.pushes_delivered += u64::from(std::mem::take(&mut c.pushes_queued));
            }
            match flushed {
                Ok(Flushed::Done) if closing => self.close(conn, CloseReason::Shutdown, now),
                // Drained: the rest of a held backlog may follow.
                Ok(Flushed::Done) if !self.offline.is_empty() => self.deliver_held(conn, now),
                Ok(_) => {}
                Err(_) => self.close(conn, CloseReason::IoError, now),
            }
        }
    }

    pub(crate) fn is_live(&self, conn: ConnRef) -> bool {
        self.conns
            .get(conn.key as usize)
            .is_some_and(|c| c.generation == conn.generation)
    }

    /// Serves the connections whose read budget ran out last time.
    fn read_pending(&mut self, now: Instant) {
        let mut list = std::mem::take(&mut self.read_again);
        for conn in list.drain(..) {
            if let Some(c) = self.conns.get_mut(conn.key as usize) {
                if c.generation == conn.generation {
                    c.read_pending = false;
                    self.on_readable(conn, now);
                }
            }
        }
        if self.read_again.is_empty() {
            self.read_again = list;
        }
    }

    fn on_readable(&mut self, conn: ConnRef, now: Instant) {
        let mut buf = std::mem::take(&mut self.read_buf);
        self.replies.clear();
        self.reply_ws = self.conns[conn.key as usize].is_websocket();
        let mut fate = Fate::Keep;
        let mut budget = READ_BUDGET;
        while let Some(c) = self.conns.get_mut(conn.key as usize) {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    fate = Fate::Close(CloseReason::PeerClosed);
                    break;
                }
                Ok(n) => {
                    self.metrics.bytes_in += n as u64;
                    if !c.is_closing() {
                        fate = self.consume(conn, &mut buf[..n], now);
                    }
                    if fate != Fate::Keep || n < buf.len() {
                        break;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        let c = &mut self.conns[conn.key as usize];
                        if !c.read_pending {
                            c.read_pending = true;
                            self.read_again.push(conn);
                        }
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    fate = Fate::Close(CloseReason::IoError);
                    break;
                }
            }
        }
        self.read_buf = buf;
        if !self.replies.is_empty() && self.is_live(conn) {
            let c = &mut self.conns[conn.key as usize];
            match c.send(&self.replies, &mut self.metrics.bytes_out) {
                Err(_) => fate = Fate::Close(CloseReason::IoError),
                Ok(Flushed::Blocked) if c.queued() > self.config.max_outbound => {
                    fate = Fate::Close(CloseReason::SlowConsumer)
                }
                Ok(_) => {}
            }
        }
        // Pushes held while it was offline follow its welcome (once replied).
        if fate == Fate::Keep && !self.offline.is_empty() && self.is_live(conn) {
            self.deliver_held(conn, now);
        }
        if let Fate::Close(reason) = fate {
            let reason = if reason == CloseReason::PeerClosed && self.conn_phase_is_closing(conn) {
                CloseReason::Shutdown
            } else {
                reason
            };
            self.close(conn, reason, now);
        }
    }

    fn conn_phase_is_closing(&self, conn: ConnRef) -> bool {
        self.conns
            .get(conn.key as usize)
            .is_some_and(Connection::is_closing)
    }

    /// Serves what a read brought, by the connection's transport; the first
    /// non-whitespace byte of a connection decides which transport it is.
    fn consume(&mut self, conn: ConnRef, bytes: &mut [u8], now: Instant) -> Fate {
        let c = &mut self.conns[conn.key as usize];
        if matches!(c.transport, Transport::Sniffing) {
            // Whitespace and a byte order mark (perhaps cut by the read, so
            // kept in `inbound`) may come before the raw stream's first '<'.
            let first = c
                .inbound
                .iter()
                .chain(bytes.iter())
                .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0xEF | 0xBB | 0xBF));
            match first {
                None => {} // nothing decisive yet: the raw path keeps or discards it
                // An HTTP method (GET, ...) opens a WebSocket upgrade or a page.
                Some(b'A'..=b'Z') => c.transport = Transport::Handshake,
                // Anything else is the raw stream, where garbage is a bad-frame.
                Some(_) => c.transport = Transport::Raw,
            }
        }
        match c.transport {
            // The common case: no partial frame waiting, whole frames straight
            // from the loop's buffer.
            Transport::Sniffing | Transport::Raw if c.inbound.is_empty() => {
                let (fate, rest) = self.serve_fresh(conn, bytes, now);
                if !rest.is_empty() {
                    self.conns[conn.key as usize]
                        .inbound
                        .extend_from_slice(rest);
                }
                fate
            }
            Transport::Sniffing | Transport::Raw => {
                let mut tail = std::mem::take(&mut c.inbound);
                let fate = self.feed_xml(conn, bytes, &mut tail, now);
                if fate == Fate::Keep {
                    self.conns[conn.key as usize].inbound = tail;
                }
                fate
            }
            Transport::Handshake => self.consume_handshake(conn, bytes, now),
            Transport::WebSocket(_) => self.consume_websocket(conn, bytes, now),
        }
    }

    /// Serves the complete frames of `bytes` when no partial frame is kept
    /// (the common case: straight from the loop's buffer). Returns the fate
    /// and, if the connection stays, the start of a frame to keep.
    fn serve_fresh<'b>(
        &mut self,
        conn: ConnRef,
        bytes: &'b [u8],
        now: Instant,
    ) -> (Fate, &'b [u8]) {
        let (fate, consumed) = self.serve_frames(conn, bytes, now);
        let rest = match fate {
            Fate::Keep => bytes.get(consumed..).unwrap_or_default(),
            _ => &[],
        };
        (fate, rest)
    }

    /// Parses `bytes` after the partial XML frame kept in `tail`, serves every
    /// complete frame, and leaves the unparsed rest in `tail` (which holds no
    /// capacity when there is none).
    fn feed_xml(
        &mut self,
        conn: ConnRef,
        bytes: &[u8],
        tail: &mut bytes::BytesMut,
        now: Instant,
    ) -> Fate {
        if tail.is_empty() {
            let (fate, rest) = self.serve_fresh(conn, bytes, now);
            tail.extend_from_slice(rest);
            return fate;
        }
        tail.extend_from_slice(bytes);
        if !bytes.contains(&b'>') {
            // No frame can end in bytes without a '>': parsing the partial
            // frame again from its start would find nothing new.
            if tail.len() <= self.config.max_frame {
                return Fate::Keep;
            }
            let text = wire::WireError::FrameTooLarge {
                max: self.config.max_frame,
            }
            .to_string();
            self.error_reply(ErrorCode::FrameTooLarge, None, &text);
            return Fate::Close(CloseReason::ProtocolError);
        }
        let whole = std::mem::take(tail);
        let (fate, consumed) = self.serve_frames(conn, &whole, now);
        if fate == Fate::Keep && consumed < whole.len() {
            let mut rest = whole;
            bytes::Buf::advance(&mut rest, consumed);
            *tail = rest;
        }
        fate
    }

    /// An HTTP request on the client port: a WebSocket upgrade, or a page.
    fn consume_handshake(&mut self, conn: ConnRef, bytes: &mut [u8], now: Instant) -> Fate {
        let c = &mut self.conns[conn.key as usize];
        c.inbound.extend_from_slice(bytes);
        match ws::parse_upgrade(&c.inbound) {
            Ok(ws::Handshake::Partial) => Fate::Keep,
            Ok(ws::Handshake::Upgrade {
                key,
                subprotocol,
                len,
            }) => {
                ws::write_accept(&mut self.replies, &key, subprotocol);
                let mut rest = std::mem::take(&mut c.inbound);
                bytes::Buf::advance(&mut rest, len);
                c.transport = Transport::WebSocket(Box::default());
                self.reply_ws = true;
                debug!("connection {} from {} is a WebSocket", c.generation, c.peer);
                if rest.is_empty() {
                    Fate::Keep
                } else {
                    self.consume_websocket(conn, &mut rest, now)
                }
            }
            Ok(ws::Handshake::Get { path, .. }) => {
                crate::pages::answer_get(&mut self.replies, path);
                Fate::Close(CloseReason::Http)
            }
            Err(e) => {
                ws::write_handshake_error(&mut self.replies, &e);
                Fate::Close(CloseReason::Http)
            }
        }
    }

    /// WebSocket frames: text payloads continue the XML stream; pings are
    /// answered; every frame counts as liveness.
    fn consume_websocket(&mut self, conn: ConnRef, bytes: &mut [u8], now: Instant) -> Fate {
        let key = conn.key as usize;
        let now_us = self.micros(now);
        let c = &mut self.conns[key];
        let Transport::WebSocket(mut state) = std::mem::take(&mut c.transport) else {
            return Fate::Keep;
        };
        // The partial WebSocket frame kept from the last read, then this one.
        let mut data = std::mem::take(&mut c.inbound);
        let fresh = data.is_empty();
        if !fresh {
            data.extend_from_slice(bytes);
        }
        let buf: &mut [u8] = if fresh { bytes } else { &mut data };
        let mut pos = 0;
        let fate = loop {
            match state.decoder.decode(&mut buf[pos..], self.config.max_frame) {
                Ok(ws::Inbound::NeedMore) => break Fate::Keep,
                Ok(ws::Inbound::Text {
                    consumed, payload, ..
                }) => {
                    pos += consumed;
                    let fate = self.feed_xml(conn, payload, &mut state.xml_tail, now);
                    if fate != Fate::Keep {
                        break fate;
                    }
                }
                Ok(ws::Inbound::Ping { consumed, payload }) => {
                    pos += consumed;
                    ws::write_pong(&mut self.replies, payload);
                    self.touch(conn, now_us, now);
                }
                Ok(ws::Inbound::Pong { consumed, .. }) => {
                    pos += consumed;
                    self.touch(conn, now_us, now);
                }
                Ok(ws::Inbound::Close { code, .. }) => {
                    ws::write_close(&mut self.replies, code.unwrap_or(1000), "");
                    state.close_sent = true;
                    break Fate::Close(CloseReason::PeerClosed);
                }
                Err(e) => {
                    ws::write_close(&mut self.replies, e.close_code().into(), &e.to_string());
                    state.close_sent = true;
                    break Fate::Close(CloseReason::ProtocolError);
                }
            }
        };
        if let Some(c) = self.conns.get_mut(key) {
            if c.generation == conn.generation {
                if fate == Fate::Keep && pos < buf.len() {
                    c.inbound.extend_from_slice(&buf[pos..]);
                }
                c.transport = Transport::WebSocket(state);
            }
        }
        fate
    }

    /// Frames what was written to `out` since `start` as one WebSocket text
    /// message when `target` speaks WebSocket.
    pub(crate) fn frame_for(&self, target: ConnRef, out: &mut Vec<u8>, start: usize) {
        if self
            .conns
            .get(target.key as usize)
            .is_some_and(Connection::is_websocket)
        {
            ws::wrap_text(out, start);
        }
    }

    /// Records a sign of life (a complete frame, or a WebSocket Ping/Pong):
    /// the whole of liveness bookkeeping, and no timer operation. A suspect
    /// client is online again.
    fn touch(&mut self, conn: ConnRef, now_us: Micros, now: Instant) {
        let c = &mut self.conns[conn.key as usize];
        c.last_seen = now_us;
        if c.suspect {
            c.suspect = false;
            if let Some(id) = c.id().cloned() {
                let peer = c.peer;
                self.publish_presence(PresenceKind::Alive, &id, conn, peer, None, now);
            }
        }
    }

    /// Appends one frame to the replies of the connection being read (framed
    /// as a WebSocket message when it is one).
    fn reply_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.replies.len();
        encode(&mut self.replies);
        self.metrics.frames_out += 1;
        if self.reply_ws {
            ws::wrap_text(&mut self.replies, start);
        }
    }

    fn serve_frames(&mut self, conn: ConnRef, data: &[u8], now: Instant) -> (Fate, usize) {
        let position = self.conns[conn.key as usize].position;
        let mut reader = FrameReader::new(data, self.config.max_frame, position);
        let fate = loop {
            match reader.next_frame() {
                Ok(Decoded::Frame(frame)) => {
                    self.metrics.frames_in += 1;
                    let fate = self.on_frame(conn, frame, now);
                    if !self.is_live(conn) {
                        return (Fate::Gone, reader.consumed());
                    }
                    if fate != Fate::Keep {
                        break fate;
                    }
                }
                Ok(Decoded::NeedMore) => break Fate::Keep,
                Err(e) => {
                    let c = &self.conns[conn.key as usize];
                    debug!("connection {} from {}: {e}", c.generation, c.peer);
                    self.error_reply(e.code(), None, &e.to_string());
                    break Fate::Close(CloseReason::ProtocolError);
                }
            }
        };
        self.conns[conn.key as usize].position = reader.position();
        (fate, reader.consumed())
    }

    // --------------------------------------------------------------- frames

    fn on_frame(&mut self, conn: ConnRef, frame: Frame<'_>, now: Instant) -> Fate {
        let now_us = self.micros(now);
        self.touch(conn, now_us, now);
        let c = &mut self.conns[conn.key as usize];
        match frame {
            Frame::Ping { seq } => {
                self.metrics.heartbeats_received += 1;
                self.reply_with(|out| wire::encode_pong(out, seq));
                Fate::Keep
            }
            Frame::Pong { .. } => {
                self.metrics.heartbeats_received += 1;
                Fate::Keep
            }
            Frame::Login { id, token } => self.on_login(conn, id, token, now),
            Frame::Msg { to, id, body } => {
                let Some(from) = c.id().cloned() else {
                    return self.refuse_not_logged_in();
                };
                self.route(conn, &from, to, id, body);
                Fate::Keep
            }
            Frame::Ack { id } => {
                if c.id().is_none() {
                    return self.refuse_not_logged_in();
                }
                self.metrics.acks += 1;
                let acker = c.id().cloned();
                // Only the recipient's ack counts: push ids are easy to guess.
                if let Some(r) = self.receipts.get_mut(id) {
                    // Only a push that reached this client can be acked.
                    if acker.as_deref() == Some(&*r.to) && r.status == Status::Sent {
                        r.status = Status::Acked;
                        r.acked = Some(now_us);
                    }
                }
                self.on_push_acked(id, conn, now);
                Fate::Keep
            }
            Frame::Bye => Fate::Close(CloseReason::Bye),
            Frame::Unknown { name } => {
                self.error_reply(
                    ErrorCode::UnknownFrame,
                    Some(name),
                    "this element is not part of protocol version 1",
                );
                Fate::Keep
            }
        }
    }

    /// Appends `<error code ref>text</error>` to the replies.
    fn error_reply(&mut self, code: ErrorCode, reference: Option<&str>, text: &str) {
        self.metrics.error_sent(code);
        self.reply_with(|out| wire::encode_error(out, code, reference, text));
    }

    fn refuse_not_logged_in(&mut self) -> Fate {
        self.error_reply(
            ErrorCode::NotLoggedIn,
            None,
            "log in before sending msg or ack",
        );
        Fate::Close(CloseReason::ProtocolError)
    }

    fn on_login(&mut self, conn: ConnRef, id: &str, token: Option<&str>, now: Instant) -> Fate {
        let c = &mut self.conns[conn.key as usize];
        if c.phase != Phase::Connected {
            let current = c.id().cloned();
            self.error_reply(
                ErrorCode::AlreadyLoggedIn,
                current.as_deref(),
                "this connection is already logged in",
            );
            return Fate::Keep;
        }
        if let Some(secret) = &self.config.auth_secret {
            if !auth::verify(secret, id, token) {
                info!("login refused for {id} from {}: bad token", c.peer);
                self.error_reply(
                    ErrorCode::AuthFailed,
                    Some(id),
                    "token must be the lowercase hex HMAC-SHA256 of the id",
                );
                return Fate::Close(CloseReason::ProtocolError);
            }
        }
        let id: Rc<str> = Rc::from(id);
        c.phase = Phase::LoggedIn { id: id.clone() };
        let peer = c.peer;
        self.metrics.logins += 1;
        let interval_ms = self.config.heartbeat.as_millis() as u64;
        let phase_ms = ((self.logins_seen as f64 * PHASE_STEP).fract() * interval_ms as f64) as u64;
        self.logins_seen += 1;
        let misses = self.config.misses;
        let phase_ms = phase_ms.min(interval_ms.saturating_sub(1));
        self.reply_with(|out| wire::encode_welcome(out, &id, interval_ms, misses, phase_ms));
        if let Some(previous) = self.registry.claim(id.clone(), conn) {
            if previous != conn {
                self.close(previous, CloseReason::Replaced, now);
            }
        }
        info!("online id={id} peer={peer} conn={}", conn.generation);
        self.publish_presence(PresenceKind::Online, &id, conn, peer, None, now);
        Fate::Keep
    }

    fn route(&mut self, sender: ConnRef, from: &str, to: &str, id: Option<&str>, body: &str) {
        match self.registry.lookup(to) {
            Some(target) if target == sender => {
                self.metrics.messages_routed += 1;
                self.reply_with(|out| wire::encode_msg(out, from, id, body));
            }
            Some(target) if self.is_live(target) => {
                self.metrics.messages_routed += 1;
                self.metrics.frames_out += 1;
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.clear();
                wire::encode_msg(&mut scratch, from, id, body);
                self.frame_for(target, &mut scratch, 0);
                self.scratch = scratch;
                self.queue_for(target, Instant::now());
            }
            _ => self.error_reply(ErrorCode::Offline, id, "the recipient is not online"),
        }
    }

    /// Forgets old receipts and marks held pushes whose time ran out.
    fn expire_pushes(&mut self, now: Instant) {
        let now_us = self.micros(now);
        self.receipts.expire(now_us);
        for message in self.offline.expire(now_us) {
            if let Some(r) = self.receipts.get_mut(&message) {
                r.status = Status::Expired;
            }
        }
    }

    /// Delivers the pushes held for a logged-in client, in the order they
    /// were accepted: right after its welcome, and as far as its outbound
    /// limit allows; the rest follow as the socket drains (`on_ready`).
    fn deliver_held(&mut self, conn: ConnRef, now: Instant) {
        let Some(c) = self.conns.get(conn.key as usize) else {
            return;
        };
        let Some(id) = c.id().cloned() else {
            return;
        };
        if !self.offline.holds(&id) {
            return;
        }
        let now_us = self.micros(now);
        let mut held = self.offline.take(&id);
        while let Some(h) = held.pop_front() {
            if h.expires <= now_us {
                if let Some(r) = self.receipts.get_mut(&h.message) {
                    r.status = Status::Expired;
                }
                continue;
            }
            let c = &mut self.conns[conn.key as usize];
            if c.queued() > 0 && c.queued() + h.frame.len() > self.config.max_outbound {
                held.push_front(h);
                break;
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            scratch.extend_from_slice(&h.frame);
            self.frame_for(conn, &mut scratch, 0);
            let c = &mut self.conns[conn.key as usize];
            let sent = c.send(&scratch, &mut self.metrics.bytes_out);
            self.scratch = scratch;
            if sent.is_err() {
                held.push_front(h);
                break;
            }
            self.metrics.frames_out += 1;
            self.metrics.pushes_delivered += 1;
            if let Some(r) = self.receipts.get_mut(&h.message) {
                r.status = Status::Sent;
                r.sent = Some(now_us);
            }
        }
        self.offline.put_back(&id, held);
    }

    /// Appends `self.scratch` to `target`'s outbound queue, to be written once
    /// at the end of this iteration; a queue over the limit ends the target.
    fn queue_for(&mut self, target: ConnRef, now: Instant) {
        let c = &mut self.conns[target.key as usize];
        c.outbound.extend_from_slice(&self.scratch);
        if c.queued() > self.config.max_outbound {
            self.close(target, CloseReason::SlowConsumer, now);
            return;
        }
        if !c.flush_queued {
            c.flush_queued = true;
            self.flush_list.push(target);
        }
    }

    fn flush_queued(&mut self) {
        let mut list = std::mem::take(&mut self.flush_list);
        for conn in list.drain(..) {
            if !self.is_live(conn) {
                continue;
            }
            let c = &mut self.conns[conn.key as usize];
            c.flush_queued = false;
            let counter = if c.is_admin() {
                &mut self.metrics.admin_bytes_out
            } else {
                &mut self.metrics.bytes_out
            };
            match c.flush(counter) {
                Ok(Flushed::Done) => {
                    self.metrics.pushes_delivered +=
                        u64::from(std::mem::take(&mut c.pushes_queued));
                }
                Ok(Flushed::Blocked) => {}
                Err(_) => self.close(conn, CloseReason::IoError, Instant::now()),
            }
        }
        self.flush_list = list;
    }

    // ------------------------------------------------------------ deadlines

    /// Acts on the heartbeat entries that came due. This is the only place
    /// deadlines are checked, and it costs O(entries expired): the wheel hands
    /// back just the due slot, and nothing here walks the connection table.
    /// Entries are re-armed lazily (Netty's IdleStateHandler): a frame only
    /// writes `last_seen`; when an entry fires, the silence so far decides
    /// between re-arming for the remainder, probing, and closing.
    fn on_deadlines(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now, &mut expired);
        let now_us = self.micros(now);
        let interval = self.config.heartbeat.as_micros() as Micros;
        let deadline = self.config.deadline().as_micros() as Micros;
        for conn in expired.drain(..) {
            let Some(c) = self.conns.get_mut(conn.key as usize) else {
                continue;
            };
            if c.generation != conn.generation || c.is_closing() {
                continue; // stale: the connection this entry was for is gone
            }
            if c.is_admin() {
                self.on_admin_deadline(conn, now);
                continue;
            }
            let silent = now_us.saturating_sub(c.last_seen);
            if silent >= deadline {
                self.metrics
                    .close_lateness(Duration::from_micros(silent - deadline));
                self.close(conn, CloseReason::Timeout, now);
                continue;
            }
            let intervals = silent / interval;
            // A request still arriving on the HTTP side gets no XML probe.
            let speaks_xml = !matches!(c.transport, Transport::Handshake);
            if intervals >= 2 && !c.suspect {
                c.suspect = true;
                if let Some(id) = c.id().cloned() {
                    let peer = c.peer;
                    self.publish_presence(PresenceKind::Suspect, &id, conn, peer, None, now);
                }
            }
            if intervals >= 1 && speaks_xml {
                self.scratch.clear();
                wire::encode_probe(&mut self.scratch, intervals);
                let mut scratch = std::mem::take(&mut self.scratch);
                self.frame_for(conn, &mut scratch, 0);
                self.scratch = scratch;
                self.metrics.probes_sent += 1;
                self.metrics.frames_out += 1;
                let c = &mut self.conns[conn.key as usize];
                match c.send(&self.scratch, &mut self.metrics.bytes_out) {
                    Err(_) => {
                        self.close(conn, CloseReason::IoError, now);
                        continue;
                    }
                    Ok(Flushed::Blocked) if c.queued() > self.config.max_outbound => {
                        self.close(conn, CloseReason::SlowConsumer, now);
                        continue;
                    }
                    Ok(_) => {}
                }
            }
            let c = &self.conns[conn.key as usize];
            let next = c.last_seen + ((intervals + 1) * interval).min(deadline);
            self.wheel
                .schedule(conn, self.epoch + Duration::from_micros(next));
        }
        self.expired = expired;
    }

    // --------------------------------------------------------------- closing

    /// Ends a connection: best-effort `<bye>`, free its slot and buffers,
    /// take it out of the registry, log the offline event. The one place a
    /// connection leaves the server.
    pub(crate) fn close(&mut self, conn: ConnRef, reason: CloseReason, now: Instant) {
        if !self.is_live(conn) {
            return;
        }
        let now_us = self.micros(now);
        let mut c = self.conns.remove(conn.key as usize);
        if c.is_admin() {
            self.forget_admin(conn, &c.phase);
            return;
        }
        self.scratch.clear();
        if matches!(c.transport, Transport::Handshake) {
            // Mid-way through an HTTP request: no XML for it.
            if reason == CloseReason::Timeout {
                self.scratch.extend_from_slice(
                    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        } else if let Some(bye) = reason.bye() {
            if !c.is_closing() {
                let retry = self.retry_advice(bye);
                wire::encode_bye(&mut self.scratch, bye, retry);
                self.metrics.frames_out += 1;
                if c.is_websocket() {
                    ws::wrap_text(&mut self.scratch, 0);
                }
            }
        }
        if let Transport::WebSocket(state) = &c.transport {
            // The closing handshake, unless one is already under way.
            if !state.close_sent && !c.is_closing() {
                let code = match reason {
                    CloseReason::Shutdown => 1001,
                    CloseReason::ProtocolError => 1008,
                    _ => 1000,
                };
                ws::write_close(&mut self.scratch, code, reason.as_str());
            }
        }
        if !self.scratch.is_empty() {
            let _ = c.send(&self.scratch, &mut self.metrics.bytes_out);
        }
        self.metrics.closed(reason);
        let lived = Duration::from_micros(now_us.saturating_sub(c.connected_at));
        match c.id() {
            Some(id) => {
                let id = id.clone();
                let was_holder = self.registry.release(&id, conn);
                if was_holder || reason == CloseReason::Replaced {
                    info!(
                        "offline id={id} reason={} lived={:.3}s conn={}",
                        reason.as_str(),
                        lived.as_secs_f64(),
                        conn.generation
                    );
                }
                // A replaced connection's id stays online (its successor holds
                // it), so that is an event of its own, not an offline.
                let kind = if was_holder {
                    PresenceKind::Offline
                } else {
                    PresenceKind::Replaced
                };
                self.publish_presence(kind, &id, conn, c.peer, Some(reason.as_str()), now);
            }
            None => debug!(
                "closed connection {} from {} ({}) after {:.3}s",
                conn.generation,
                c.peer,
                reason.as_str(),
                lived.as_secs_f64()
            ),
        }
        // Dropping the stream closes the descriptor, which also removes it
        // from the epoll set; a deregister call would be one more syscall.
        drop(c);
        if self.spare_fd.is_none() {
            // A descriptor just freed up: take back the spare lost to a shortage.
            self.spare_fd = File::open("/dev/null").ok();
        }
    }

    // -------------------------------------------------------------- shutdown

    fn on_signal(&mut self, now: Instant) {
        let mut stop = false;
        for signal in self.signals.pending() {
            stop |= signal == SIGINT || signal == SIGTERM;
        }
        if stop && self.drain_deadline.is_none() {
            self.begin_shutdown(now);
        }
    }

    /// Stops accepting, says `<bye reason="shutdown"/>` to everyone, and
    /// gives the goodbyes `drain` to leave the sockets.
    fn begin_shutdown(&mut self, now: Instant) {
        info!(
            "shutting down: {} connections, {} online",
            self.conns.len(),
            self.registry.len()
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        if let Some(mut listener) = self.admin_listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.drain_deadline = Some(now + self.config.drain);
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let retry = self.retry_advice(wire::ByeReason::Shutdown);
            self.scratch.clear();
            wire::encode_bye(&mut self.scratch, wire::ByeReason::Shutdown, retry);
            let c = &mut self.conns[key];
            if let Transport::WebSocket(state) = &mut c.transport {
                ws::wrap_text(&mut self.scratch, 0);
                ws::write_close(&mut self.scratch, 1001, "shutdown");
                state.close_sent = true;
            }
            let conn = ConnRef {
                key: key as u32,
                generation: c.generation,
            };
            if c.is_admin() || matches!(c.transport, Transport::Handshake) {
                self.close(conn, CloseReason::Shutdown, now);
                continue;
            }
            let sent = c.send(&self.scratch, &mut self.metrics.bytes_out);
            c.begin_closing();
            if matches!(sent, Ok(Flushed::Done) | Err(_)) {
                self.close(conn, CloseReason::Shutdown, now);
            }
        }
    }

    fn finish_shutdown(&mut self, now: Instant) {
        let remaining: Vec<ConnRef> = self
            .conns
            .iter()
            .map(|(key, c)| ConnRef {
                key: key as u32,
                generation: c.generation,
            })
            .collect();
        for conn in remaining {
            self.close(conn, CloseReason::Shutdown, now);
        }
        info!("stopped");
    }
}

/// Microseconds from `from` to `to` (zero if `to` is earlier), without the
/// 128-bit division of `as_micros`.
fn micros_between(from: Instant, to: Instant) -> Micros {
    let d = to.saturating_duration_since(from);
    d.as_secs() * 1_000_000 + u64::from(d.subsec_micros())
}

fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
        || matches!(e.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::ENOMEM))
}

/// Raises the soft open-file limit to the hard limit; returns the limit in force.
fn raise_open_file_limit() -> u64 {
    use rlimit::Resource;
    match Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < hard => match Resource::NOFILE.set(hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            warn!("cannot read the open-file limit: {e}");
            1024
        }
    }
}
