//! One client connection: its socket, buffers and heartbeat schedule, and how
//! it reacts to readiness, frames and its timer. Every way a connection can
//! end goes through `Conn::finish`, which also does the close accounting.
//!
//! This file is the connection's life: its phases, what the engine calls
//! (`begin`, `on_ready`, `on_timer`, `leave`, `finish`) and the accounting
//! when it ends. How bytes move in and out, WebSocket included, is in
//! `transport`; what the connection says to the server and how it answers
//! each frame is in `frames`.

mod frames;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use lifeline_client::Backoff;
use mio::net::TcpStream;

use crate::args::{Config, Mode};
use crate::fanout::Broadcasts;
use crate::proto;
use crate::sched::{micros, Rng, Timers, Window};
use crate::stats::{Results, SilentClose};

use transport::WsConn;

/// Interval used when neither the server nor `--interval-ms` gives one.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a clean leave waits for the server to close before resetting.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// A ping still unanswered after this long at close time counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(1);

/// State shared by all connections of the engine.
pub struct Ctx {
    pub cfg: Config,
    pub results: Results,
    pub timers: Timers,
    pub rng: Rng,
    pub window: Window,
    pub worker: u32,
    /// Push mode: pushes written and not yet received, by sequence → when written.
    pub pushes: HashMap<u64, Instant>,
    /// One outgoing XML frame before it is framed as a WebSocket message.
    pub frame: Vec<u8>,
    /// Restart mode: reconnect delays when the server gave no `retry-ms`.
    pub backoff: Backoff,
    /// Connections of this process logged in right now.
    pub online: u32,
    /// Fanout mode: the broadcast schedule and its bookkeeping.
    pub fanout: Broadcasts,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No socket.
    Idle,
    /// Non-blocking connect in progress.
    Connecting,
    /// WebSocket upgrade request sent, waiting for the 101.
    Upgrading,
    /// Login sent, waiting for the welcome.
    LoggingIn,
    /// Logged in and pinging.
    Active,
    /// Logged in and deliberately sending nothing (silent mode).
    Silent,
    /// Goodbye sent, waiting for the server to close (churn).
    Leaving,
}

/// Why a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The server closed it (EOF, RST, or a socket error).
    Peer,
    /// The connect failed, with the error.
    ConnectFailed(String),
    /// No completed connect and login within the login timeout.
    LoginTimeout,
    /// The server refused the login.
    Refused,
    /// The server did not accept the WebSocket upgrade, with the reason.
    Upgrade(String),
    /// The server sent bytes we cannot frame.
    Protocol,
    /// Churn: we leave abruptly.
    Abort,
    /// Churn: the server did not close after our goodbye.
    LeaveTimeout,
    /// The run is over.
    EndOfRun,
}

impl Close {
    /// Whether the socket is reset (SO_LINGER 0) rather than closed with a FIN.
    pub fn resets(&self) -> bool {
        matches!(self, Close::Abort | Close::LeaveTimeout)
    }
}

/// What the engine must do with a connection after handling it.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    Open,
    Closed(Close),
}

/// One client connection slot; churn reuses the slot for new sockets.
pub struct Conn {
    slot: usize,
    /// Bumped for every new socket, so stale timer entries are ignored.
    pub generation: u32,
    pub stream: Option<TcpStream>,
    pub phase: Phase,
    /// Silent mode: this slot goes silent after `--silent-after-ms`.
    pub goes_silent: bool,
    /// Fanout mode: its subscription is in place.
    subscribed: bool,
    /// Fanout mode: the newest broadcast it received.
    last_broadcast: u64,
    /// Completed logins on this slot; later ones get a fresh id.
    sessions: u32,
    /// Unparsed tail of a frame split across reads.
    inbound: Vec<u8>,
    /// Bytes the socket did not take yet.
    outbound: Vec<u8>,
    next_seq: u64,
    /// Pings awaiting their pong: `(seq, sent at)`, oldest first.
    in_flight: VecDeque<(u64, Instant)>,
    /// The instant this connection's timer is armed for.
    pub wake_at: Option<Instant>,
    /// Anchor of the ping schedule (jitter is added on top).
    next_ping: Instant,
    silent_at: Option<Instant>,
    last_sent: Instant,
    interval: Duration,
    deadline: Option<Duration>,
    /// A silent connection received `<bye reason="timeout"/>`.
    timeout_bye: bool,
    /// WebSocket state; `None` on the raw TCP transport.
    ws: Option<WsConn>,
    /// `--tls`: the TLS session between the socket and everything above.
    tls: Option<Box<rustls::ClientConnection>>,
    /// Its handshake was counted.
    tls_counted: bool,
    /// Restart mode: attempts that failed since the last login.
    failures: u32,
    /// The `retry-ms` of the server's last goodbye.
    retry_after: Option<Duration>,
    /// The server's last goodbye was terminal (`replaced`, `kicked`).
    terminal_bye: bool,
}

impl Conn {
    pub fn new(slot: usize, goes_silent: bool, now: Instant) -> Conn {
        Conn {
            slot,
            generation: 0,
            stream: None,
            phase: Phase::Idle,
            goes_silent,
            subscribed: false,
            last_broadcast: 0,
            sessions: 0,
            inbound: Vec::new(),
            outbound: Vec::new(),
            next_seq: 1,
            in_flight: VecDeque::new(),
            wake_at: None,
            next_ping: now,
            silent_at: None,
            last_sent: now,
            interval: DEFAULT_INTERVAL,
            deadline: None,
            timeout_bye: false,
            ws: None,
            tls: None,
            tls_counted: false,
            failures: 0,
            retry_after: None,
            terminal_bye: false,
        }
    }

    /// The login id: `load-W-I`, with `.N` appended for the N-th re-login
    /// (churn, push); restart mode comes back under the same id, as a real
    /// client does.
    fn login_id(&self, ctx: &Ctx) -> String {
        match ctx.cfg.mode {
            Mode::Restart | Mode::Upgrade => {
                session_id(&ctx.cfg.id_prefix, ctx.worker, self.slot, 0)
            }
            _ => session_id(&ctx.cfg.id_prefix, ctx.worker, self.slot, self.sessions),
        }
    }

    /// The id this connection is logged in with, while it is.
    pub fn online_id(&self, prefix: &str, worker: u32) -> Option<String> {
        (self.phase == Phase::Active && self.sessions > 0)
            .then(|| session_id(prefix, worker, self.slot, self.sessions - 1))
    }

    /// Logged in (whatever it does now).
    pub fn logged_in(&self) -> bool {
        matches!(self.phase, Phase::Active | Phase::Silent | Phase::Leaving)
    }

    fn arm(&mut self, at: Instant, timers: &mut Timers) {
        self.wake_at = Some(at);
        timers.push(at, self.slot, self.generation);
    }

    /// Takes ownership of a socket whose non-blocking connect has started.
    pub fn begin(&mut self, stream: TcpStream, now: Instant, ctx: &mut Ctx) {
        self.stream = Some(stream);
        self.generation = self.generation.wrapping_add(1);
        self.phase = Phase::Connecting;
        self.ws = WsConn::for_transport(ctx);
        self.tls = ctx.cfg.tls.as_ref().and_then(|tls| {
            rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
                .ok()
                .map(Box::new)
        });
        self.tls_counted = false;
        self.arm(now + ctx.cfg.login_timeout, &mut ctx.timers);
    }

    /// Restart mode: wakes the idle slot at `at`, when the engine connects it again.
    pub fn schedule_reconnect(&mut self, at: Instant, timers: &mut Timers) {
        self.arm(at, timers);
    }

    /// Restart mode: how long to wait before reconnecting after `cause`, or
    /// `None` when this slot stays down. The server's `retry-ms` is already
    /// a per-client random spread, so it replaces the backoff for the one
    /// attempt that follows it; failed attempts back off from there (as
    /// `lifeline_client` does). Call before `finish`.
    pub fn reconnect_delay(&mut self, cause: &Close, backoff: &mut Backoff) -> Option<Duration> {
        if matches!(cause, Close::EndOfRun | Close::Abort | Close::LeaveTimeout)
            || self.terminal_bye
        {
            return None;
        }
        if !self.logged_in() {
            self.failures = self.failures.saturating_add(1);
        }
        Some(
            self.retry_after
                .take()
                .unwrap_or_else(|| backoff.delay(self.failures)),
        )
    }

    /// Handles a readiness event. `drain` means the peer hung up or the socket
    /// has an error: read to the end instead of stopping at a short read.
    pub fn on_ready(
        &mut self,
        readable: bool,
        drain: bool,
        now: Instant,
        scratch: &mut [u8],
        ctx: &mut Ctx,
    ) -> Fate {
        if self.phase == Phase::Connecting {
            match self.connect_result() {
                Ok(false) => return Fate::Open,
                Ok(true) => self.on_connected(now, ctx),
                Err(e) => return Fate::Closed(Close::ConnectFailed(e.to_string())),
            }
        }
        if readable || drain {
            if let Err(close) = self.read_available(drain, now, scratch, ctx) {
                return Fate::Closed(close);
            }
        }
        self.flush()
    }

    /// Handles this connection's timer.
    pub fn on_timer(&mut self, now: Instant, ctx: &mut Ctx) -> Fate {
        match self.phase {
            Phase::Connecting | Phase::Upgrading | Phase::LoggingIn => {
                Fate::Closed(Close::LoginTimeout)
            }
            Phase::Leaving => Fate::Closed(Close::LeaveTimeout),
            Phase::Active if self.silent_at.is_some_and(|at| now >= at) => {
                self.phase = Phase::Silent;
                self.silent_at = None;
                ctx.results.counters.silent_total += 1;
                Fate::Open
            }
            Phase::Active => {
                self.send_ping(now, ctx);
                // Keep the schedule anchored; never try to catch up in a burst.
                self.next_ping = (self.next_ping + self.interval).max(now);
                self.arm_ping(&mut ctx.rng, &mut ctx.timers, ctx.cfg.jitter);
                self.flush()
            }
            Phase::Idle | Phase::Silent => Fate::Open,
        }
    }

    /// Churn: leave cleanly (goodbye, wait for the server's close) or abruptly.
    pub fn leave(&mut self, clean: bool, now: Instant, ctx: &mut Ctx) -> Fate {
        if !clean {
            return Fate::Closed(Close::Abort);
        }
        let proto = ctx.cfg.proto;
        self.send_frame(ctx, |out| proto::bye(proto, out));
        self.phase = Phase::Leaving;
        self.arm(now + LEAVE_TIMEOUT, &mut ctx.timers);
        self.flush()
    }

    /// Accounts for the end of this connection, resets the slot, and hands
    /// the socket back for the engine to close.
    pub fn finish(&mut self, cause: &Close, now: Instant, ctx: &mut Ctx) -> Option<TcpStream> {
        let mode = ctx.cfg.mode;
        let results = &mut ctx.results;
        let counters = &mut results.counters;
        match (cause, self.phase) {
            (Close::ConnectFailed(error), _) => {
                counters.connect_errors += 1;
                results.last_error = Some(error.clone());
            }
            (Close::LoginTimeout | Close::Peer, Phase::Connecting) => {
                counters.connect_errors += 1;
                results.last_error = Some("connect did not complete".into());
            }
            (Close::LoginTimeout, _) => counters.login_timeouts += 1,
            (Close::Refused, _) => counters.login_errors += 1,
            (Close::Upgrade(error), _) => {
                counters.upgrade_errors += 1;
                results.last_error = Some(error.clone());
            }
            (Close::Protocol, _) => {}
            (Close::Abort, _) => counters.leaves_abrupt += 1,
            (Close::LeaveTimeout, _) => counters.leave_timeouts += 1,
            (Close::EndOfRun, Phase::Silent) => counters.silent_not_closed += 1,
            (Close::EndOfRun, _) => {}
            (Close::Peer, Phase::Leaving) => counters.leaves_clean += 1,
            (Close::Peer, Phase::Silent) => self.record_silent_close(now, results),
            // What restart mode is about: counted, not an error.
            (Close::Peer, Phase::Active) if mode.reconnects() => {
                counters.server_closes += 1;
                if results.first_close_us.is_none() {
                    results.first_close_us = Some(micros(now - ctx.window.started));
                }
            }
            (Close::Peer, phase) => {
                counters.unexpected_closes += 1;
                if mode == Mode::Silent && phase == Phase::Active {
                    counters.healthy_closed += 1;
                }
            }
        }
        let lost = self
            .in_flight
            .iter()
            .filter(|(_, sent_at)| now.saturating_duration_since(*sent_at) > LOST_AFTER)
            .count();
        results.counters.pings_unanswered += lost as u64;

        if self.logged_in() {
            ctx.online = ctx.online.saturating_sub(1);
        }
        if std::mem::take(&mut self.subscribed) {
            ctx.fanout
                .subscriber_left(std::mem::take(&mut self.last_broadcast), now);
        }
        self.phase = Phase::Idle;
        self.wake_at = None;
        self.silent_at = None;
        self.timeout_bye = false;
        self.retry_after = None;
        self.terminal_bye = false;
        self.ws = None;
        self.in_flight = VecDeque::new();
        self.inbound = Vec::new();
        self.outbound = Vec::new();
        self.stream.take()
    }

    fn record_silent_close(&self, now: Instant, results: &mut Results) {
        let delay_us = micros(now.saturating_duration_since(self.last_sent));
        let lateness_us = self
            .deadline
            .map(|deadline| delay_us as i64 - micros(deadline) as i64);
        let counters = &mut results.counters;
        counters.silent_closed += 1;
        if self.timeout_bye {
            counters.silent_bye_first += 1;
        }
        if lateness_us.is_some_and(|late| late < 0) {
            counters.silent_early += 1;
        }
        results.silent_closes.push(SilentClose {
            delay_us,
            lateness_us,
        });
    }
}

fn session_id(prefix: &str, worker: u32, slot: usize, sessions: u32) -> String {
    match sessions {
        0 => format!("{prefix}-{worker}-{slot}"),
        n => format!("{prefix}-{worker}-{slot}.{n}"),
    }
}
