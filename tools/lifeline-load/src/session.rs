//! One client connection: its socket, buffers and heartbeat schedule, and how
//! it reacts to readiness, frames and its timer. Every way a connection can
//! end goes through `Conn::finish`, which also does the close accounting.
//!
//! Over `--transport ws` the connection first upgrades (`Upgrading`), then
//! sends every XML frame as one masked text message (`send_frame`) and feeds
//! the text payloads it receives to the same frame scanner (`absorb_ws`).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use lifeline_client::Backoff;
use lifeline_wire::ws::KEY_LEN;
use mio::net::TcpStream;

use crate::args::{Config, Mode};
use crate::proto::{self, Inbound, Proto, Scan};
use crate::push;
use crate::sched::{Rng, Timers, Window};
use crate::stats::{Results, SilentClose};
use crate::wsclient::{self, Event, Transport};

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
    /// One outgoing XML frame before it is framed as a WebSocket message.
    pub frame: Vec<u8>,
    /// Restart mode: reconnect delays when the server gave no `retry-ms`.
    pub backoff: Backoff,
    /// Connections of this process logged in right now.
    pub online: u32,
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
    /// Restart mode: attempts that failed since the last login.
    failures: u32,
    /// The `retry-ms` of the server's last goodbye.
    retry_after: Option<Duration>,
    /// The server's last goodbye was terminal (`replaced`, `kicked`).
    terminal_bye: bool,
}

/// One connection's WebSocket state.
struct WsConn {
    /// Our `Sec-WebSocket-Key`, to check the server's Accept against.
    key: [u8; KEY_LEN],
    /// The 101 arrived and was checked.
    upgraded: bool,
    reader: wsclient::Reader,
    /// Unconsumed raw bytes: the answer head while upgrading, afterwards at
    /// most a partial frame header or control frame.
    raw: Vec<u8>,
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
            ws: None,
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
            Mode::Restart => session_id(ctx.worker, self.slot, 0),
            _ => session_id(ctx.worker, self.slot, self.sessions),
        }
    }

    /// The id this connection is logged in with, while it is.
    pub fn online_id(&self, worker: u32) -> Option<String> {
        (self.phase == Phase::Active && self.sessions > 0)
            .then(|| session_id(worker, self.slot, self.sessions - 1))
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
        self.ws = (ctx.cfg.transport == Transport::Ws).then(|| WsConn {
            key: wsclient::new_key([ctx.rng.next_u64(), ctx.rng.next_u64()]),
            upgraded: false,
            reader: wsclient::Reader::default(),
            raw: Vec::new(),
        });
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
        if let Some(ws) = &self.ws {
            self.phase = Phase::Upgrading;
            let host = ctx.cfg.target.to_string();
            wsclient::write_upgrade(&mut self.outbound, &host, &ws.key);
            return;
        }
        self.start_login(now, ctx);
    }

    fn start_login(&mut self, now: Instant, ctx: &mut Ctx) {
        if !proto::has_login(ctx.cfg.proto) {
            self.on_welcome(None, None, None, now, ctx);
            return;
        }
        self.phase = Phase::LoggingIn;
        let id = self.login_id(ctx);
        let token = ctx
            .cfg
            .auth_secret
            .as_deref()
            .map(|secret| lifeline_wire::token::mint(secret, &id));
        let (proto, keepalive) = (ctx.cfg.proto, ctx.cfg.mqtt_keepalive);
        self.send_frame(ctx, |out| {
            proto::login(proto, &id, token.as_deref(), keepalive, out)
        });
        self.last_sent = now;
    }

    /// Appends one outgoing frame written by `encode`: as it is on TCP, as
    /// one masked text message on WebSocket.
    fn send_frame(&mut self, ctx: &mut Ctx, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.ws.is_none() {
            encode(&mut self.outbound);
            return;
        }
        let mut frame = std::mem::take(&mut ctx.frame);
        frame.clear();
        encode(&mut frame);
        let mask = wsclient::mask(ctx.rng.next_u64());
        wsclient::write_text(&mut self.outbound, mask, &frame);
        ctx.frame = frame;
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
                    if self.ws.is_some() {
                        self.absorb_ws(&scratch[..n], now, ctx)?;
                    } else {
                        self.absorb(&scratch[..n], now, ctx)?;
                    }
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

    /// WebSocket: decodes `data` after whatever raw bytes are pending (the
    /// upgrade answer, then frames); text payloads go on to `absorb`.
    fn absorb_ws(&mut self, data: &[u8], now: Instant, ctx: &mut Ctx) -> Result<(), Close> {
        let mut raw = match self.ws.as_mut() {
            Some(ws) => std::mem::take(&mut ws.raw),
            None => return self.absorb(data, now, ctx),
        };
        if raw.is_empty() {
            let used = self.decode_ws(data, now, ctx)?;
            raw.extend_from_slice(&data[used..]);
        } else {
            raw.extend_from_slice(data);
            let used = self.decode_ws(&raw, now, ctx)?;
            raw.drain(..used);
        }
        if let Some(ws) = self.ws.as_mut() {
            ws.raw = raw;
        }
        Ok(())
    }

    /// Handles the upgrade answer and every whole event in `buf`; returns
    /// how many bytes were used.
    fn decode_ws(&mut self, buf: &[u8], now: Instant, ctx: &mut Ctx) -> Result<usize, Close> {
        let Some(ws) = self.ws.as_mut() else {
            return Err(Close::Protocol);
        };
        let mut at = 0;
        if !ws.upgraded {
            match wsclient::parse_accept(buf, &ws.key) {
                Ok(None) => return Ok(0),
                Ok(Some(head)) => {
                    ws.upgraded = true;
                    at = head;
                    self.start_login(now, ctx);
                }
                Err(e) => return Err(Close::Upgrade(e.to_string())),
            }
        }
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return Err(Close::Protocol);
            };
            let (event, used) = match ws.reader.next(&buf[at..]) {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(at),
                Err(e) => {
                    ctx.results.counters.protocol_errors += 1;
                    ctx.results.last_error = Some(format!("WebSocket: {e}"));
                    return Err(Close::Protocol);
                }
            };
            at += used;
            match event {
                Event::Text(piece) => self.absorb(piece, now, ctx)?,
                Event::Ping(payload) => {
                    ctx.results.counters.ws_pings_answered += 1;
                    let mask = wsclient::mask(ctx.rng.next_u64());
                    wsclient::write_pong(&mut self.outbound, mask, payload);
                }
                Event::Pong => {}
                Event::Close(code) => {
                    // Answer in kind, best effort; the server closes the
                    // socket next, so this ends like an EOF.
                    let mask = wsclient::mask(ctx.rng.next_u64());
                    wsclient::write_close(&mut self.outbound, mask, code);
                    let _ = self.flush();
                    return Err(Close::Peer);
                }
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
                    self.send_frame(ctx, |out| proto::probe_answer(seq, out));
                    self.last_sent = now;
                }
                _ => ctx.results.counters.probes_ignored += 1,
            },
            Inbound::Bye { reason, retry_ms } => self.on_bye(reason, retry_ms, ctx),
            Inbound::Msg { id, body } => self.on_msg(id, body, now, ctx),
            Inbound::Welcome { .. } | Inbound::ConnAck { .. } | Inbound::Other => {
                ctx.results.counters.other_frames += 1
            }
        }
        Ok(())
    }

    fn on_bye(&mut self, reason: Option<&[u8]>, retry_ms: Option<u64>, ctx: &mut Ctx) {
        let counters = &mut ctx.results.counters;
        self.retry_after = retry_ms.map(Duration::from_millis);
        counters.retry_advised += u64::from(retry_ms.is_some());
        self.terminal_bye = matches!(reason, Some(b"replaced" | b"kicked"));
        match reason {
            Some(b"timeout") => match self.phase {
                Phase::Silent => self.timeout_bye = true,
                Phase::Leaving => {}
                _ => counters.wrong_timeouts += 1,
            },
            Some(b"shutdown") => {
                counters.shutdown_byes += 1;
                counters.other_byes += 1;
            }
            _ => counters.other_byes += 1,
        }
    }

    /// Push mode acks every message and times the ones the pusher sent.
    fn on_msg(&mut self, id: Option<&[u8]>, body: &[u8], now: Instant, ctx: &mut Ctx) {
        let counters = &mut ctx.results.counters;
        counters.msgs_received += 1;
        if ctx.cfg.mode != Mode::Push {
            return;
        }
        if let Some(id) = id {
            self.send_frame(ctx, |out| proto::ack(id, out));
            self.last_sent = now;
            let counters = &mut ctx.results.counters;
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
        self.failures = 0;
        ctx.online += 1;

        let counters = &mut ctx.results.counters;
        counters.logins += 1;
        if ctx.window.contains(now) {
            counters.logins_in_window += 1;
        }
        let since_start = micros(now - ctx.window.started);
        if counters.logins == u64::from(cfg.conns) {
            ctx.results.ramp_done_us = Some(since_start);
        }
        if ctx.results.first_close_us.is_some() {
            ctx.results.relogins_us.push(since_start);
            if ctx.online == cfg.conns && ctx.results.all_back_us.is_none() {
                ctx.results.all_back_us = Some(since_start);
            }
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
        let proto = ctx.cfg.proto;
        self.send_frame(ctx, |out| proto::ping(proto, seq, out));
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
            (Close::Peer, Phase::Active) if mode == Mode::Restart => {
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

fn session_id(worker: u32, slot: usize, sessions: u32) -> String {
    match sessions {
        0 => format!("load-{worker}-{slot}"),
        n => format!("load-{worker}-{slot}.{n}"),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
