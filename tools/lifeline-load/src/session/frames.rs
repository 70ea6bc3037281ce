//! What a connection says to the server and how it answers each frame: the
//! login, the welcome that starts the heartbeat schedule, pings and their
//! pongs (the round trips), probes, goodbyes, and in push mode the messages
//! it acks and times.

use std::time::{Duration, Instant};

use super::{Close, Conn, Ctx, Phase, DEFAULT_INTERVAL};
use crate::args::Mode;
use crate::proto::{self, Inbound, Proto};
use crate::push;
use crate::sched::{micros, Rng, Timers};

impl Conn {
    /// Sends the login. Redis has none: its connection counts as welcomed
    /// at once, with no interval or deadline from the server.
    pub(super) fn start_login(&mut self, now: Instant, ctx: &mut Ctx) {
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
        // A fan-out subscriber sends nothing after subscribing: no MQTT
        // keepalive then, or the broker would drop it.
        let keepalive = if ctx.cfg.mode == Mode::Fanout {
            0
        } else {
            ctx.cfg.mqtt_keepalive
        };
        let proto = ctx.cfg.proto;
        self.send_frame(ctx, |out| {
            proto::login(proto, &id, token.as_deref(), keepalive, out)
        });
        self.last_sent = now;
    }

    pub(super) fn on_frame(
        &mut self,
        frame: Inbound<'_>,
        now: Instant,
        ctx: &mut Ctx,
    ) -> Result<(), Close> {
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
            Inbound::Msg { body, .. } if ctx.cfg.mode == Mode::Fanout => {
                ctx.results.counters.msgs_received += 1;
                self.on_broadcast(body, now, ctx);
            }
            Inbound::Msg { id, body } => self.on_msg(id, body, now, ctx),
            Inbound::Published { body } => {
                ctx.results.counters.msgs_received += 1;
                self.on_broadcast(body, now, ctx);
            }
            Inbound::Subscribed if !self.subscribed => {
                self.subscribed = true;
                ctx.fanout.subscriber_joined();
            }
            Inbound::Welcome { .. }
            | Inbound::ConnAck { .. }
            | Inbound::Subscribed
            | Inbound::Other => ctx.results.counters.other_frames += 1,
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

    /// Fanout mode: a broadcast arrived (one of ours, by its text).
    fn on_broadcast(&mut self, body: &[u8], now: Instant, ctx: &mut Ctx) {
        match crate::fanout::parse_seq(body) {
            Some(seq) => ctx.fanout.delivered(&mut self.last_broadcast, seq, now),
            None => ctx.results.counters.other_frames += 1,
        }
    }

    /// Fanout mode, once connected (and logged in): a subscriber subscribes
    /// (where that is a request, its confirmation comes as a frame) and then
    /// sends nothing. Returns false in other modes.
    fn start_fanout(&mut self, ctx: &mut Ctx) -> bool {
        if ctx.cfg.fanout.is_none() {
            return false;
        }
        let proto = ctx.cfg.proto;
        let mut request = Vec::new();
        if proto::subscribe(proto, &mut request) {
            self.send_frame(ctx, |out| out.extend_from_slice(&request));
        } else {
            self.subscribed = true;
            ctx.fanout.subscriber_joined();
        }
        true
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
            Proto::Redis | Proto::FanoutFloor => None,
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
        if self.start_fanout(ctx) {
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
        if self.goes_silent && ctx.cfg.mode == Mode::Silent {
            self.silent_at = Some(now + ctx.cfg.silent_after.unwrap_or(self.interval));
        }
        self.arm_ping(&mut ctx.rng, &mut ctx.timers, ctx.cfg.jitter);
    }

    pub(super) fn arm_ping(&mut self, rng: &mut Rng, timers: &mut Timers, jitter: Duration) {
        let mut at = self.next_ping + rng.below(jitter);
        if let Some(silent_at) = self.silent_at {
            at = at.min(silent_at);
        }
        self.arm(at, timers);
    }

    pub(super) fn send_ping(&mut self, now: Instant, ctx: &mut Ctx) {
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
}
