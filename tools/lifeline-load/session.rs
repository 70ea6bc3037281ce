//! One client connection: its socket, buffers and heartbeat schedule, and how
//! it reacts to readiness, frames and its timer. Every way a connection can
//! end goes through `Conn::finish`, which also does the close accounting.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::args::{Config, Mode};
use crate::proto::{self, Inbound, Proto, Scan};
use crate::push;
use crate::sched::{Rng, Timers, Window};
use crate::stats::{Results, SilentClose};

/// Interval used when neither the server nor `--interval-ms` gives one.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a clean leave waits for the server to close before resetting.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// An unparsed partial frame larger than this means the stream is not framed.
const MAX_PENDING_FRAME: usize = 1 << 20;
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
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No socket.
    Idle,
    /// Non-blocking connect in progress.
    Connecting,
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
}

impl Conn {
    pub fn new(slot: usize, goes_silent: bool, now: Instant) -> Conn {
        Conn {
            slot,
            generation: 0,
            stream: None,
            phase: Phase::Idle,
            goes_silent,
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
        }
    }

    /// The login id: `load-W-I`, with `.N` appended for the N-th re-login.
    fn login_id(&self, worker: u32) -> String {
        session_id(worker, self.slot, self.sessions)
    }

    /// The id this connection is logged in with, while it is.
    pub fn online_id(&self, worker: u32) -> Option<String> {
        (self.phase == Phase::Active && self.sessions > 0)
            .then(|| session_id(worker, self.slot, self.sessions - 1))
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
        self.arm(now + ctx.cfg.login_timeout, &mut ctx.timers);
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

    /// Whether the connect completed; an error if it failed.
    fn connect_result(&self) -> io::Result<bool> {
        let Some(stream) = &self.stream else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        if let Some(error) = stream.take_error()? {
            return Err(error);
        }
        match stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn on_connected(&mut self, now: Instant, ctx: &mut Ctx) {
        ctx.results.counters.connects_ok += 1;
        if !proto::has_login(ctx.cfg.proto) {
            self.on_welcome(None, None, None, now, ctx);
            return;
        }
        self.phase = Phase::LoggingIn;
        let id = self.login_id(ctx.worker);
        let token = ctx
            .cfg
            .auth_secret
            .as_deref()
            .map(|secret| proto::auth_token(secret, &id));
        proto::login(
            ctx.cfg.proto,
            &id,
            token.as_deref(),
            ctx.cfg.mqtt_keepalive,
            &mut self.outbound,
        );
        self.last_sent = now;
    }

    fn read_available(
        &mut self,
        drain: bool,
        now: Instant,
        scratch: &mut [u8],
        ctx: &mut Ctx,
    ) -> Result<(), Close> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Err(Close::Peer);
            };
            match stream.read(scratch) {
                Ok(0) => return Err(Close::Peer),
                Ok(n) => {
                    self.absorb(&scratch[..n], now, ctx)?;
                    // Edge-triggered: a short read emptied the socket, and any
                    // later arrival raises a new edge. Saves one read per event.
                    if n < scratch.len() && !drain {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Close::Peer),
            }
        }
    }

    /// Parses `data` after whatever partial frame is pending.
    fn absorb(&mut self, data: &[u8], now: Instant, ctx: &mut Ctx) -> Result<(), Close> {
        if self.inbound.is_empty() {
            let used = self.feed(data, now, ctx)?;
            self.inbound.extend_from_slice(&data[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.inbound);
            pending.extend_from_slice(data);
            let used = self.feed(&pending, now, ctx)?;
            pending.drain(..used);
            self.inbound = pending;
        }
        if self.inbound.len() > MAX_PENDING_FRAME {
            ctx.results.counters.protocol_errors += 1;
            return Err(Close::Protocol);
        }
        Ok(())
    }

    /// Handles every complete frame in `buf`; returns how many bytes were used.
    fn feed(&mut self, buf: &[u8], now: Instant, ctx: &mut Ctx) -> Result<usize, Close> {
        let mut at = 0;
        loop {
            match proto::scan(ctx.cfg.proto, &buf[at..]) {
                Ok(Scan::Frame(frame, used)) => {
                    at += used;
                    self.on_frame(frame, now, ctx)?;
                }
                Ok(Scan::NeedMore(skip)) => return Ok(at + skip),
                Err(_) => {
                    ctx.results.counters.protocol_errors += 1;
                    return Err(Close::Protocol);
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Inbound<'_>, now: Instant, ctx: &mut Ctx) -> Result<(), Close> {
        let logging_in = self.phase == Phase::LoggingIn;
        match frame {
            Inbound::Welcome {
                interval_ms,
                misses,
                phase_ms,
            } if logging_in => self.on_welcome(interval_ms, misses, phase_ms, now, ctx),
            Inbound::ConnAck { accepted: true } if logging_in => {
                self.on_welcome(None, None, None, now, ctx)
            }
            Inbound::ConnAck { accepted: false } => return Err(Close::Refused),
            Inbound::Error { .. } if logging_in => return Err(Close::Refused),
            Inbound::Error { .. } => ctx.results.counters.server_errors += 1,
            Inbound::Pong { seq } => self.on_pong(seq, now, ctx),
            Inbound::Probe { seq } => match self.phase {
                Phase::Active | Phase::LoggingIn => {
                    ctx.results.counters.probes_answered += 1;
                    proto::probe_answer(seq, &mut self.outbound);
                    self.last_sent = now;
                }
                _ => ctx.results.counters.probes_ignored += 1,
            },
            Inbound::Bye {
                reason: Some(b"timeout"),
            } => match self.phase {
                Phase::Silent => self.timeout_bye = true,
                Phase::Leaving => {}
                _ => ctx.results.counters.wrong_timeouts += 1,
            },
            Inbound::Bye { .. } => ctx.results.counters.other_byes += 1,
            Inbound::Msg { id, body } => self.on_msg(id, body, now, ctx),
            Inbound::Welcome { .. } | Inbound::ConnAck { .. } | Inbound::Other => {
                ctx.results.counters.other_frames += 1
            }
        }
        Ok(())
    }

    /// Push mode acks every message and times the ones the pusher sent.
    fn on_msg(&mut self, id: Option<&[u8]>, body: &[u8], now: Instant, ctx: &mut Ctx) {
        let counters = &mut ctx.results.counters;
        counters.msgs_received += 1;
        if ctx.cfg.mode != Mode::Push {
            return;
        }
        if let Some(id) = id {
            proto::ack(id, &mut self.outbound);
            self.last_sent = now;
            counters.acks_sent += 1;
            if ctx.window.contains(now) {
                counters.acks_in_window += 1;
            }
        }
        let Some(sent_at) = push::parse_seq(body).and_then(|seq| ctx.pushes.remove(&seq)) else {
            return;
        };
        ctx.results.counters.pushes_received += 1;
        if sent_at >= ctx.window.start && ctx.window.contains(now) {
            ctx.results
                .record_push_latency(micros(now.saturating_duration_since(sent_at)));
        }
    }

    fn on_welcome(
        &mut self,
        interval_ms: Option<u64>,
        misses: Option<u64>,
        phase_ms: Option<u64>,
        now: Instant,
        ctx: &mut Ctx,
    ) {
        let cfg = &ctx.cfg;
        self.phase = Phase::Active;
        self.sessions += 1;
        self.wake_at = None;

        let counters = &mut ctx.results.counters;
        counters.logins += 1;
        if ctx.window.contains(now) {
            counters.logins_in_window += 1;
        }
        if counters.logins == u64::from(cfg.conns) {
            ctx.results.ramp_done_us = Some(micros(now - ctx.window.started));
        }

        let announced = interval_ms.filter(|ms| *ms > 0).map(Duration::from_millis);
        self.interval = cfg.interval.or(announced).unwrap_or(DEFAULT_INTERVAL);
        self.deadline = cfg.deadline.or(match cfg.proto {
            Proto::Lifeline => announced
                .zip(misses)
                .map(|(i, m)| i * m.min(1_000_000) as u32),
            Proto::Mqtt => Some(Duration::from_millis(u64::from(cfg.mqtt_keepalive) * 1500)),
            Proto::Redis => None,
        });
        if let Some(deadline) = self.deadline {
            ctx.results
                .deadline_ms
                .get_or_insert(deadline.as_millis() as u64);
        }

        if cfg.mode == Mode::Max {
            self.send_ping(now, ctx);
            return;
        }
        // Spread the heartbeats: the server's phase when it offers one,
        // otherwise a random offset within one interval.
        let interval_us = micros(self.interval).max(1);
        let offset = match phase_ms {
            Some(ms) => Duration::from_micros(ms.saturating_mul(1000) % interval_us),
            None => ctx.rng.below(self.interval),
        };
        self.next_ping = now + offset;
        if self.goes_silent && cfg.mode == Mode::Silent {
            self.silent_at = Some(now + cfg.silent_after.unwrap_or(self.interval));
        }
        self.arm_ping(&mut ctx.rng, &mut ctx.timers, ctx.cfg.jitter);
    }

    fn arm_ping(&mut self, rng: &mut Rng, timers: &mut Timers, jitter: Duration) {
        let mut at = self.next_ping + rng.below(jitter);
        if let Some(silent_at) = self.silent_at {
            at = at.min(silent_at);
        }
        self.arm(at, timers);
    }

    fn send_ping(&mut self, now: Instant, ctx: &mut Ctx) {
        let seq = self.next_seq;
        self.next_seq += 1;
        proto::ping(ctx.cfg.proto, seq, &mut self.outbound);
        self.in_flight.push_back((seq, now));
        self.last_sent = now;
        let counters = &mut ctx.results.counters;
        counters.pings_sent += 1;
        if ctx.window.contains(now) {
            counters.pings_in_window += 1;
        }
    }

    fn on_pong(&mut self, seq: Option<u64>, now: Instant, ctx: &mut Ctx) {
        let sent_at = match seq {
            // Pongs come back in order; an older ping skipped over was lost.
            Some(seq) => loop {
                match self.in_flight.front() {
                    Some(&(first, sent_at)) if first == seq => {
                        self.in_flight.pop_front();
                        break Some(sent_at);
                    }
                    Some(&(first, _)) if first < seq => {
                        self.in_flight.pop_front();
                        ctx.results.counters.pings_unanswered += 1;
                    }
                    _ => break None,
                }
            },
            None => self.in_flight.pop_front().map(|(_, sent_at)| sent_at),
        };
        let Some(sent_at) = sent_at else {
            ctx.results.counters.unmatched_pongs += 1;
            return;
        };
        ctx.results.counters.round_trips += 1;
        if ctx.window.contains(now) {
            ctx.results.counters.rt_in_window += 1;
            if sent_at >= ctx.window.start {
                ctx.results.record_rtt(micros(now - sent_at));
            }
        }
        if ctx.cfg.mode == Mode::Max && self.phase == Phase::Active {
            self.send_ping(now, ctx);
        }
    }

    /// Handles this connection's timer.
    pub fn on_timer(&mut self, now: Instant, ctx: &mut Ctx) -> Fate {
        match self.phase {
            Phase::Connecting | Phase::LoggingIn => Fate::Closed(Close::LoginTimeout),
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
        proto::bye(ctx.cfg.proto, &mut self.outbound);
        self.phase = Phase::Leaving;
        self.arm(now + LEAVE_TIMEOUT, &mut ctx.timers);
        self.flush()
    }

    /// Writes pending output until the socket stops taking it.
    fn flush(&mut self) -> Fate {
        while !self.outbound.is_empty() {
            let Some(stream) = self.stream.as_mut() else {
                return Fate::Closed(Close::Peer);
            };
            match stream.write(&self.outbound) {
                Ok(0) => return Fate::Closed(Close::Peer),
                Ok(n) => {
                    self.outbound.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Fate::Closed(Close::Peer),
            }
        }
        Fate::Open
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
            (Close::Protocol, _) => {}
            (Close::Abort, _) => counters.leaves_abrupt += 1,
            (Close::LeaveTimeout, _) => counters.leave_timeouts += 1,
            (Close::EndOfRun, Phase::Silent) => counters.silent_not_closed += 1,
            (Close::EndOfRun, _) => {}
            (Close::Peer, Phase::Leaving) => counters.leaves_clean += 1,
            (Close::Peer, Phase::Silent) => self.record_silent_close(now, results),
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

        self.phase = Phase::Idle;
        self.wake_at = None;
        self.silent_at = None;
        self.timeout_bye = false;
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

fn session_id(worker: u32, slot: usize, sessions: u32) -> String {
    match sessions {
        0 => format!("load-{worker}-{slot}"),
        n => format!("load-{worker}-{slot}.{n}"),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
