//! How fan-out mode triggers a broadcast on each server, over one connection
//! of its own on the engine's poller: Lifeline `POST /broadcast` on its admin
//! API (keep-alive), Redis `PUBLISH` to the channel every subscriber
//! subscribed to, MQTT `PUBLISH` at QoS 0 to their topic (after a CONNECT of
//! its own), and for the fan-out floor a line on its control port: the
//! `<msg>` frame Lifeline would write, so every server sends about the same
//! bytes per delivery. The text carries the broadcast's sequence number.
//!
//! The answer, where there is one (the HTTP status and `recipients`, the
//! PUBLISH reply, the floor's count line), is checked and its recipient
//! count kept; timing starts when the trigger is written, not answered.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::args::Config;
use crate::net;
use crate::proto::{self, Inbound, Proto, Scan, CHANNEL};
use crate::push;
use crate::session::Ctx;

/// The publisher's token: just below the pusher's, above every session slot.
pub const PUBLISHER_TOKEN: usize = push::TOKEN_BASE - 1;
/// A failed publisher connection is reopened after this long.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);
/// Unanswered bytes beyond this are not an answer any server gives.
const MAX_ANSWER: usize = 64 * 1024;
/// The publisher's MQTT client id.
const MQTT_ID: &str = "lifeline-load-publisher";

/// What the trigger is written in.
enum Wire {
    /// Lifeline's admin API.
    Admin {
        host: String,
        authorization: Option<String>,
    },
    Redis,
    Mqtt,
    /// The fan-out floor's control port.
    Floor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; reopen at the instant.
    Closed {
        retry_at: Instant,
    },
    Connecting,
    /// MQTT: CONNECT sent, waiting for the CONNACK.
    Handshake,
    Ready,
}

/// The publishing connection of a fan-out run.
pub struct Publisher {
    wire: Wire,
    addr: SocketAddr,
    stream: Option<TcpStream>,
    state: State,
    inbound: Vec<u8>,
    outbound: Vec<u8>,
    padding: usize,
}

impl Publisher {
    /// The publisher of a fan-out run (`None` in other modes).
    pub fn new(cfg: &Config, started: Instant) -> Option<Publisher> {
        let fanout = cfg.fanout.as_ref()?;
        let (wire, addr) = match cfg.proto {
            Proto::Lifeline => {
                let admin = cfg.admin.as_ref()?;
                let authorization = cfg.admin_token.as_ref().map(|t| format!("Bearer {t}"));
                let host = admin.host.clone();
                (
                    Wire::Admin {
                        host,
                        authorization,
                    },
                    admin.addr,
                )
            }
            Proto::Redis => (Wire::Redis, cfg.target),
            Proto::Mqtt => (Wire::Mqtt, cfg.target),
            Proto::FanoutFloor => (Wire::Floor, fanout.trigger?),
        };
        Some(Publisher {
            wire,
            addr,
            stream: None,
            state: State::Closed { retry_at: started },
            inbound: Vec::new(),
            outbound: Vec::new(),
            padding: cfg.push_padding,
        })
    }

    /// When the publisher next needs the loop for itself (a reconnect).
    pub fn next_wake(&self) -> Option<Instant> {
        match self.state {
            State::Closed { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    /// Reopens the connection when its time has come, gives up a broadcast
    /// past its timeout, and triggers the next one when it is due. Returns
    /// true when this triggered the first (the measured window starts).
    pub fn run_due(&mut self, registry: &Registry, now: Instant, ctx: &mut Ctx) -> bool {
        if matches!(self.state, State::Closed { retry_at } if now >= retry_at) {
            self.open(registry, now, ctx);
        }
        ctx.fanout.expire(now);
        if self.state != State::Ready || !ctx.fanout.due(now, ctx.window.start) {
            return false;
        }
        let seq = ctx.fanout.next_seq();
        self.write_trigger(seq);
        let flushed = self.flush();
        let first = ctx.fanout.triggered(Instant::now());
        if let Err(e) = flushed {
            self.fail(now, ctx, &e.to_string());
        }
        first
    }

    fn write_trigger(&mut self, seq: u64) {
        let text = super::text(seq, self.padding);
        let out = &mut self.outbound;
        match &self.wire {
            Wire::Admin {
                host,
                authorization,
            } => {
                let _ = write!(
                    out,
                    "POST /broadcast HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
                    text.len()
                );
                if let Some(authorization) = authorization {
                    let _ = write!(out, "Authorization: {authorization}\r\n");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(text.as_bytes());
            }
            Wire::Redis => proto::redis_publish(CHANNEL, text.as_bytes(), out),
            Wire::Mqtt => proto::mqtt_publish(CHANNEL, text.as_bytes(), out),
            Wire::Floor => {
                let _ = writeln!(out, "<msg from=\"admin\" id=\"push-{seq}\">{text}</msg>");
            }
        }
    }

    fn open(&mut self, registry: &Registry, now: Instant, ctx: &mut Ctx) {
        let opened = net::connect(self.addr, None).and_then(|mut stream| {
            registry.register(
                &mut stream,
                Token(PUBLISHER_TOKEN),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => {
                self.stream = Some(stream);
                self.state = State::Connecting;
            }
            Err(e) => self.fail(now, ctx, &e.to_string()),
        }
    }

    /// Handles readiness of the publishing connection.
    pub fn on_ready(&mut self, now: Instant, scratch: &mut [u8], ctx: &mut Ctx) {
        let Some(stream) = &self.stream else {
            return;
        };
        if self.state == State::Connecting {
            match net::connect_finished(stream) {
                Ok(false) => return,
                Ok(true) if matches!(self.wire, Wire::Mqtt) => {
                    proto::mqtt_connect(MQTT_ID, 0, &mut self.outbound);
                    self.state = State::Handshake;
                }
                Ok(true) => self.state = State::Ready,
                Err(e) => return self.fail(now, ctx, &e.to_string()),
            }
        }
        if let Err(e) = self.flush().and_then(|()| self.read_available(scratch)) {
            return self.fail(now, ctx, &e.to_string());
        }
        if let Err(e) = self.answers(ctx) {
            self.fail(now, ctx, &e);
        }
    }

    /// Takes every complete answer off the front of `inbound`.
    fn answers(&mut self, ctx: &mut Ctx) -> Result<(), String> {
        let results = ctx.fanout.results_mut();
        loop {
            let used = match &self.wire {
                Wire::Admin { .. } => {
                    let Some(answer) = push::parse_answer(&self.inbound)? else {
                        break;
                    };
                    if (200..300).contains(&answer.status) {
                        let body: serde_json::Value =
                            serde_json::from_slice(&self.inbound[answer.head..answer.len])
                                .map_err(|e| format!("POST /broadcast answer: {e}"))?;
                        results.server_recipients = body["recipients"].as_u64();
                        results.server_nodes = body["nodes"].as_u64();
                    } else {
                        results.trigger_errors += 1;
                        ctx.results.last_error =
                            Some(format!("POST /broadcast: HTTP {}", answer.status));
                    }
                    if !answer.keep_alive {
                        return Err("the admin API closed the connection".into());
                    }
                    answer.len
                }
                Wire::Redis | Wire::Floor => {
                    let Some(newline) = self.inbound.iter().position(|b| *b == b'\n') else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&self.inbound[..newline]);
                    let line = line.trim_end();
                    match line.trim_start_matches(':').parse::<u64>() {
                        Ok(n) => results.server_recipients = Some(n),
                        Err(_) => {
                            results.trigger_errors += 1;
                            ctx.results.last_error = Some(format!("publish answered {line:?}"));
                        }
                    }
                    newline + 1
                }
                Wire::Mqtt => match proto::scan(Proto::Mqtt, &self.inbound) {
                    Ok(Scan::Frame(Inbound::ConnAck { accepted: true }, used)) => {
                        self.state = State::Ready;
                        used
                    }
                    Ok(Scan::Frame(Inbound::ConnAck { accepted: false }, _)) => {
                        return Err("the broker refused the publisher's CONNECT".into());
                    }
                    Ok(Scan::Frame(_, used)) => used,
                    Ok(Scan::NeedMore(_)) => break,
                    Err(e) => return Err(format!("publisher: {e}")),
                },
            };
            self.inbound.drain(..used);
        }
        if self.inbound.len() > MAX_ANSWER {
            return Err("an answer too large".into());
        }
        Ok(())
    }

    /// Counts a failed connection and schedules its reopening; a broadcast
    /// in flight stays so, and times out unless it arrives anyway.
    fn fail(&mut self, now: Instant, ctx: &mut Ctx, error: &str) {
        ctx.fanout.results_mut().trigger_errors += 1;
        ctx.results.last_error = Some(format!("publisher {}: {error}", self.addr));
        self.stream = None;
        self.inbound = Vec::new();
        self.outbound = Vec::new();
        self.state = State::Closed {
            retry_at: now + RECONNECT_AFTER,
        };
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.stream.as_mut() {
            Some(stream) => net::write_pending(stream, &mut self.outbound),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn read_available(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        loop {
            match stream.read(scratch) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.inbound.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
