//! The event loop: one `mio::Poll`, one thread, every socket.
//!
//! Each iteration waits for readiness, serves each ready socket (a client:
//! read everything, answer with one write; an admin connection: its
//! requests), then does the work that was deferred to a safe point: admin
//! requests woken by acks, the heartbeat deadlines that came due, expiries,
//! presence events for subscribers, and one flush of every connection that
//! was sent something. Every piece of that runs under the same panic guard:
//! a bug costs the connection it was serving, never the loop.
//!
//! The loop owns what only it touches (the poll, the listeners, signals,
//! liveness, the admin API); the state frame handlers share is in [`Core`].

mod accept;
mod backend;
mod cluster;
mod cluster_admin;
mod cluster_idem;
mod cluster_pushes;
pub mod conn;
mod core;
mod fanout;
pub mod handover;
mod inbound;
pub mod liveness;
mod outbound;
mod redelivery;
mod secure;
mod session;
mod shutdown;
mod table;
mod tls;

pub use self::conn::{CloseReason, ConnRef};
pub use self::core::Core;

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::{Events, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

use crate::admin::{Admin, AdminRef};
use crate::clock::{Clock, Micros};
use crate::config::{Config, FD_RESERVE};
use crate::presence::PresenceEvent;
use crate::registry::{LocalRegistry, Registry, Tokens};
use accept::Listeners;
use handover::{Handover, HandoverError, UPGRADE};
use liveness::{Liveness, Verdict};

const LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const ADMIN_LISTENER: Token = Token(3);
const TICKER: Token = Token(4);
/// Tokens the registry's own sockets may use.
const REGISTRY_TOKENS: Tokens = Tokens {
    first: 16,
    count: 1024,
};

/// The loop times at most one iteration per this many microseconds.
const LOOP_SAMPLE_EVERY_US: Micros = 1000;
/// One read takes at most this much; a shorter read means the socket is drained.
const READ_CHUNK: usize = 64 * 1024;
const EVENTS_CAPACITY: usize = 256;

/// Errors that stop the server (a client's errors never do).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminListen { addr: SocketAddr, source: io::Error },
    #[error("cannot set up the event loop: {0}")]
    Poll(io::Error),
    #[error("upgrade: {0}")]
    Handover(#[source] Box<HandoverError>),
}

impl From<HandoverError> for ServerError {
    fn from(e: HandoverError) -> ServerError {
        ServerError::Handover(Box::new(e))
    }
}

/// Whom a guarded piece of work serves: what a panic in it ends.
#[derive(Debug, Clone, Copy)]
enum Subject {
    Client(ConnRef),
    Admin(AdminRef),
    /// Loop-wide work (expiries): a panic there ends no connection.
    Loop,
}

pub struct Server {
    poll: Poll,
    listeners: Listeners,
    signals: Signals,
    liveness: Liveness,
    core: Core,
    admin: Admin,
    /// Loop-wide read buffer: connections keep only a partial frame's tail.
    read_buf: Vec<u8>,
    /// Clients whose read budget ran out with bytes left unread.
    read_again: Vec<ConnRef>,
    /// Lists reused between iterations, so that none allocates.
    recycled: Recycled,
    /// Once a shutdown began: when its drain gives up.
    drain_until: Option<Instant>,
    /// Where this process stands in upgrades: one under way, or one it came from.
    handover: Handover,
}

/// Lists the loop fills and empties every iteration, kept for their capacity.
#[derive(Default)]
struct Recycled {
    /// Connections to flush at the end of the iteration.
    flushing: Vec<ConnRef>,
    /// Presence events to stream to subscribers.
    fresh: Vec<PresenceEvent>,
}

impl Server {
    /// Raises the open-file limit, binds the listeners and sets up the loop.
    /// In cluster mode (`LIFELINE_REDIS_URL`), the registry is the cluster's.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let registry: Box<dyn Registry> = match &config.cluster {
            Some(cluster) => {
                info!(
                    "cluster mode: node {} with Redis at {}, node TTL {} ms",
                    cluster.node,
                    cluster.target.addr,
                    cluster.ttl.as_millis()
                );
                Box::new(crate::cluster::Cluster::new(cluster))
            }
            None => Box::new(LocalRegistry::default()),
        };
        Server::bind_with_registry(config, registry)
    }

    /// As [`Server::bind`], with the registry given (cluster mode brings its
    /// own). A process started by an upgrade takes the listeners, the
    /// connections and the state of the one that started it instead.
    pub fn bind_with_registry(
        config: Config,
        registry: Box<dyn Registry>,
    ) -> Result<Server, ServerError> {
        handover::remember_start_path();
        let (config, registry) = match handover::take_over(config, registry)? {
            Ok(server) => return Ok(server),
            Err(start) => start,
        };
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let listeners = Listeners::bind(&config, poll.registry(), LISTENER, ADMIN_LISTENER)?;
        Server::assemble(config, registry, Clock::start(), poll, listeners)
    }

    /// The loop around listeners that are registered already, on `clock`.
    fn assemble(
        config: Config,
        mut registry: Box<dyn Registry>,
        clock: Clock,
        poll: Poll,
        listeners: Listeners,
    ) -> Result<Server, ServerError> {
        let capacity = capacity(&config);
        let mut signals =
            Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2]).map_err(ServerError::Poll)?;
        poll.registry()
            .register(&mut signals, SIGNALS, mio::Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let liveness = Liveness::new(
            clock.epoch(),
            config.tick,
            config.heartbeat,
            config.login.heartbeat_min,
            config.misses,
        )
        .map_err(ServerError::Poll)?;
        liveness
            .register(poll.registry(), TICKER)
            .map_err(ServerError::Poll)?;
        // The outbound path's own handle on the poll (a duplicate of its
        // descriptor), for the connections whose writes block.
        let poll_handle = poll.registry().try_clone().map_err(ServerError::Poll)?;
        registry
            .register(poll.registry(), REGISTRY_TOKENS)
            .map_err(ServerError::Poll)?;
        info!(
            "listening on {}; pid {}; capacity {capacity} connections (open-file limit {}); \
             heartbeat {} ms, misses {}, deadline {} ms, tick {} ms; version {} commit {}",
            listeners.local_addr(),
            std::process::id(),
            open_file_limit(),
            config.heartbeat.as_millis(),
            config.misses,
            config.deadline().as_millis(),
            config.tick.as_millis(),
            crate::build_info::VERSION,
            crate::build_info::COMMIT
        );
        if let Some(tls) = &config.tls {
            info!(
                "TLS on the client port: certificate {}, client certificates {}, \
                 at most {} handshakes at once",
                tls.files.cert.display(),
                match (&tls.files.client_ca, tls.id_from_cert) {
                    (None, _) => "not asked for".to_string(),
                    (Some(ca), false) => format!("required (CA {})", ca.display()),
                    (Some(ca), true) =>
                        format!("required (CA {}), login id from them", ca.display()),
                },
                tls.max_handshakes
            );
        }
        Ok(Server {
            poll,
            listeners,
            signals,
            liveness,
            admin: Admin::new(
                config.admin_token.clone(),
                config.ops.admin_max_connections,
                config.receipt_ttl,
            ),
            core: Core::new(config, clock, capacity, registry, poll_handle),
            read_buf: vec![0; READ_CHUNK],
            read_again: Vec::new(),
            recycled: Recycled::default(),
            drain_until: None,
            handover: Handover::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.local_addr()
    }

    /// Where the admin API listens, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.listeners.admin_addr()
    }

    /// The pid this process took every client over from, when an upgrade
    /// started it (it has then told systemd it is ready already).
    pub fn taken_over_from(&self) -> Option<u32> {
        self.handover.taken_over_from
    }

    /// Connections the server accepts before refusing with `overload`.
    pub fn capacity(&self) -> usize {
        self.core.clients().capacity()
    }

    /// Runs until SIGINT/SIGTERM and the shutdown drain are done.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut next_sample: Micros = 0;
        loop {
            let (now, now_us) = (self.core.clock().now(), self.core.clock().now_us());
            let mut timeout = self.poll_timeout(now);
            if let Some(wheel) = self.liveness.arm(now, now_us) {
                timeout = Some(timeout.map_or(wheel, |t| t.min(wheel)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            let now = self.core.clock_mut().read();
            let now_us = self.core.clock().now_us();
            self.core.metrics_mut().loop_iterations += 1;
            self.core.clients().warm(&events);
            for event in events.iter() {
                // Hang-ups and errors are found by reading, as data is.
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                self.dispatch(event.token(), readable, event.is_writable(), now_us);
            }
            self.read_pending();
            if let Some(catch_up) = &mut self.handover.catching_up {
                if catch_up.more(events.iter().count(), EVENTS_CAPACITY) {
                    continue; // more sockets may have bytes from the hand-over
                }
                self.handover.catching_up = None;
            }
            self.deferred(now);
            if self.handover.upgrade.is_some() && self.upgrade_step(now) {
                return Ok(()); // handed over: the new process serves
            }
            if now_us >= next_sample {
                next_sample = now_us + LOOP_SAMPLE_EVERY_US;
                // The iteration's duration costs a second clock read: sampled.
                self.core.metrics_mut().loop_iteration(now.elapsed());
            }
            if let Some(until) = self.drain_until {
                if self.core.clients().is_empty() || Instant::now() >= until {
                    self.finish_shutdown();
                    return Ok(());
                }
            }
        }
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool, now_us: Micros) {
        match token {
            LISTENER => self.accept_clients(),
            ADMIN_LISTENER => self.accept_admin(),
            SIGNALS => self.on_signal(),
            UPGRADE => self.on_upgrade_ready(),
            TICKER => {} // the deadlines are looked at every iteration
            Token(t)
                if (REGISTRY_TOKENS.first..REGISTRY_TOKENS.first + REGISTRY_TOKENS.count)
                    .contains(&t) =>
            {
                self.guarded(Subject::Loop, |s| s.core.registry_ready(token));
            }
            token => {
                if let Some(conn) = ConnRef::from_token(token) {
                    self.liveness.served(now_us);
                    self.serve_client(conn, readable, writable);
                } else if let Some(admin) = AdminRef::from_token(token) {
                    self.guarded(Subject::Admin(admin), |s| {
                        s.admin
                            .on_ready(admin, writable, &mut s.read_buf, &mut s.core)
                    });
                }
            }
        }
    }

    fn serve_client(&mut self, conn: ConnRef, readable: bool, writable: bool) {
        self.guarded(Subject::Client(conn), |s| {
            if s.core.serve(conn, readable, writable, &mut s.read_buf)
                && s.core.mark_read_pending(conn)
            {
                s.read_again.push(conn);
            }
        });
    }

    /// Serves the connections whose read budget ran out last time.
    fn read_pending(&mut self) {
        if self.read_again.is_empty() {
            return;
        }
        let list = std::mem::take(&mut self.read_again);
        for &conn in &list {
            self.core.clear_read_pending(conn);
            self.serve_client(conn, true, false);
        }
    }

    /// The work deferred to after the batch, each piece guarded.
    fn deferred(&mut self, now: Instant) {
        self.guarded(Subject::Loop, |s| s.core.cluster_tick(now));
        self.guarded(Subject::Loop, |s| s.core.route_answered());
        self.wake_admin();
        if self.listeners.retry_due(now) {
            self.accept_clients();
            self.accept_admin();
        } else if self.listeners.held_back() && self.core.handshake_room() > 0 {
            // Handshakes finished or ended: the backlog's turn again.
            self.accept_clients();
        }
        // Deadlines after the batch: a frame that was waiting in a socket
        // when the loop woke counts, even if its deadline has just passed.
        self.check_deadlines(now);
        self.guarded(Subject::Loop, |s| s.core.expire());
        self.wake_admin();
        if self.admin.timer_due(self.core.clock().now_us()) {
            self.guarded(Subject::Loop, |s| s.admin.on_timers(&mut s.core));
        }
        if self.core.broadcasting() {
            self.guarded(Subject::Loop, |s| s.core.advance_broadcasts());
        }
        self.stream_events();
        self.flush_scheduled();
        // The registry's timers and its one write of the iteration's commands.
        self.guarded(Subject::Loop, |s| s.core.registry_on_time(now));
    }

    /// Admin requests whose push was acked (or whose wait ended) are
    /// answered here, after the client that acked was served.
    fn wake_admin(&mut self) {
        if self.core.has_woken() {
            self.guarded(Subject::Loop, |s| {
                let woken = s.core.take_woken();
                s.admin.wake(woken, &mut s.core);
            });
        }
        if self.core.has_answers() {
            self.guarded(Subject::Loop, |s| {
                let answers = s.core.take_answers();
                s.admin.answer(answers, &mut s.core);
            });
        }
    }

    fn stream_events(&mut self) {
        let mut fresh = std::mem::take(&mut self.recycled.fresh);
        self.core.take_fresh_events(&mut fresh);
        if !fresh.is_empty() {
            self.guarded(Subject::Loop, |s| s.admin.publish(&fresh, &mut s.core));
        }
        fresh.clear();
        self.recycled.fresh = fresh;
    }

    /// Acts on the heartbeat entries that came due. This is the only place
    /// deadlines are checked, and it costs O(entries due): the wheel hands
    /// back just the due slot; nothing here walks the connection table.
    fn check_deadlines(&mut self, now: Instant) {
        let due = self.liveness.take_due(now);
        let now_us = self.core.clock().now_us();
        for &conn in &due {
            self.guarded(Subject::Client(conn), |s| {
                // Gone, or saying goodbye: the entry is stale.
                let Some(watched) = s.core.watched(conn) else {
                    return;
                };
                let next = match s.liveness.verdict(watched, now_us) {
                    Verdict::Close { late } => return s.core.timed_out(conn, late),
                    Verdict::Rearm { at } => at,
                    Verdict::Probe { seq, next } => {
                        s.core.probe(conn, seq, false);
                        next
                    }
                    Verdict::Suspect { seq, next } => {
                        s.core.probe(conn, seq, true);
                        next
                    }
                };
                if s.core.is_live(conn) {
                    let at = s.core.clock().instant(next);
                    s.liveness.watch(conn, at);
                }
            });
        }
        self.liveness.recycle(due);
    }

    /// One write per connection that was sent something this iteration.
    fn flush_scheduled(&mut self) {
        let mut list = std::mem::take(&mut self.recycled.flushing);
        self.core.take_scheduled(&mut list);
        for &conn in &list {
            self.guarded(Subject::Client(conn), |s| s.core.flush(conn));
        }
        list.clear();
        self.recycled.flushing = list;
    }

    fn accept_clients(&mut self) {
        let now = self.core.clock().now();
        let draining = self.drain_until.is_some();
        let (core, liveness, poll) = (&mut self.core, &mut self.liveness, &self.poll);
        let room = core.handshake_room();
        self.listeners.accept_clients(now, room, |stream, peer| {
            if draining || core.clients().is_full() {
                return Some(stream);
            }
            // A connection that never logs in is held to the same deadline.
            if let Some(conn) = core.admit(stream, peer, poll.registry()) {
                liveness.watch_accepted(conn, now);
            }
            None
        });
        let counts = self.listeners.take_counts();
        self.core.count_accepts(counts);
    }

    fn accept_admin(&mut self) {
        let now_us = self.core.clock().now_us();
        let (admin, poll) = (&mut self.admin, &self.poll);
        self.listeners
            .accept_admin(self.core.clock().now(), |stream, peer| {
                admin.admit(stream, peer, poll.registry(), now_us)
            });
        let counts = self.listeners.take_counts();
        self.core.count_accepts(counts);
    }

    /// The next moment something other than the wheel needs the loop: an
    /// ack wait or a held push ending, an admin timer, an accept retry, the
    /// drain's end; or at once, when reads or broadcasts are pending.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.read_again.is_empty()
            || self.handover.catching_up.is_some()
            || self.core.broadcasting()
        {
            return Some(Duration::ZERO);
        }
        let clock = self.core.clock();
        let at_us =
            |at: Option<Micros>| at.map(|at| clock.instant(at).saturating_duration_since(now));
        [
            at_us(self.core.next_expiry()),
            at_us(self.admin.next_timer()),
            self.listeners
                .retry_at()
                .map(|at| at.saturating_duration_since(now)),
            self.drain_until.map(|at| at.saturating_duration_since(now)),
            self.upgrade_deadline()
                .map(|at| at.saturating_duration_since(now)),
            self.core
                .registry_next_wake()
                .map(|at| at.saturating_duration_since(now)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs `work` so that a panic in it costs its subject, never the loop.
    /// No panic is known to be reachable; this is the last line should one
    /// remain.
    fn guarded(&mut self, subject: Subject, work: impl FnOnce(&mut Server)) {
        if catch_unwind(AssertUnwindSafe(|| work(self))).is_ok() {
            return;
        }
        error!("internal error while serving {subject:?}: ending it, the server carries on");
        self.core.recover();
        let ended = catch_unwind(AssertUnwindSafe(|| match subject {
            Subject::Client(conn) => self.core.end(conn, CloseReason::Internal),
            Subject::Admin(admin) => self.admin.end(admin, &mut self.core),
            Subject::Loop => {}
        }));
        if ended.is_err() {
            warn!("ending {subject:?} failed too: dropping it");
            if let Subject::Client(conn) = subject {
                self.core.forget(conn);
            }
        }
    }
}

/// Raises the soft open-file limit to the hard limit and derives the client
/// capacity from it (and from `LIFELINE_MAX_CONNECTIONS`).
fn capacity(config: &Config) -> usize {
    let fd_limit = raise_open_file_limit();
    // Admin connections allowed beyond the default limit take their
    // descriptors from the clients' share.
    let reserve =
        FD_RESERVE + crate::config_ops::extra_admin_reserve(config.ops.admin_max_connections);
    let fd_capacity = usize::try_from(fd_limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
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
            "the open-file limit ({fd_limit}) leaves no room for clients: {reserve} descriptors \
             are kept for the server itself; raise the limit (ulimit -n)"
        );
    }
    capacity
}

fn open_file_limit() -> u64 {
    rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft)
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
