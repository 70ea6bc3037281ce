//! Push mode's admin side: a few HTTP/1.1 keep-alive connections to the admin
//! API, registered on the engine's poller, that POST `/clients/{id}/push` at
//! `--push-rate`. Each connection has at most one request in flight, so an
//! answer held back by `?wait_ack_ms` delays only its own connection.
//!
//! The message text carries the push's sequence number; the receiving session
//! looks it up in `Ctx::pushes` (sequence → when the POST was written) to
//! measure push-to-receive latency.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::args::Config;
use crate::net;
use crate::observe::AdminUrl;
use crate::sched::{micros, Bucket, Rng};
use crate::session::Ctx;

/// Tokens at and above this are the pusher's connections (below are sessions).
pub const TOKEN_BASE: usize = usize::MAX / 2;
/// A failed admin connection is reopened after this long.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);
/// An answer larger than this is not one the admin API gives.
const MAX_ANSWER: usize = 64 * 1024;
/// Start of every pushed text; the sequence number follows.
const TEXT_PREFIX: &str = "lifeline-load push ";

/// The text of push `seq`, padded with `padding` bytes.
pub fn text(seq: u64, padding: usize) -> String {
    let mut text = format!("{TEXT_PREFIX}{seq}");
    if padding > 0 {
        text.push(' ');
        text.extend(std::iter::repeat_n('p', padding));
    }
    text
}

/// The sequence number in a received message body, if it is one of ours.
pub fn parse_seq(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(TEXT_PREFIX.as_bytes())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Where one admin connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; reopen at the instant.
    Closed {
        retry_at: Instant,
    },
    Connecting,
    Idle,
    /// A request is out: its push sequence and when it was written.
    Busy {
        seq: u64,
        sent_at: Instant,
    },
}

struct AdminConn {
    stream: Option<TcpStream>,
    state: State,
    inbound: Vec<u8>,
    outbound: Vec<u8>,
}

/// A parsed answer at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub keep_alive: bool,
    /// Where its body starts.
    pub head: usize,
    /// Its whole length, head and body.
    pub len: usize,
}

/// The admin connections and the push schedule of this process.
pub struct Pusher {
    conns: Vec<AdminConn>,
    bucket: Bucket,
    admin: AdminUrl,
    authorization: Option<String>,
    wait_ack_ms: Option<u64>,
    padding: usize,
    next_seq: u64,
    /// Round-robin start for finding an idle connection.
    cursor: usize,
    /// An admin connection has been ready once: from then on a push that
    /// finds no idle connection counts as skipped (before, none are due).
    ready_once: bool,
}

impl Pusher {
    /// The pusher of a push-mode run (`None` in other modes or without --admin).
    pub fn new(cfg: &Config, started: Instant) -> Option<Pusher> {
        let admin = cfg.admin.clone()?;
        let conns = (0..cfg.push_conns)
            .map(|_| AdminConn {
                stream: None,
                state: State::Closed { retry_at: started },
                inbound: Vec::new(),
                outbound: Vec::new(),
            })
            .collect();
        Some(Pusher {
            conns,
            bucket: Bucket::new(cfg.push_rate, started),
            admin,
            authorization: cfg.admin_token.as_ref().map(|t| format!("Bearer {t}")),
            wait_ack_ms: cfg.wait_ack_ms,
            padding: cfg.push_padding,
            next_seq: 1,
            cursor: 0,
            ready_once: false,
        })
    }

    /// When the pusher next needs the loop: a push due or a reconnect (a
    /// connect completing wakes it through its socket).
    pub fn next_wake(&self) -> Option<Instant> {
        let due = self.ready_once.then(|| self.bucket.next_token());
        self.conns
            .iter()
            .filter_map(|c| match c.state {
                State::Closed { retry_at } => Some(retry_at),
                _ => None,
            })
            .chain(due)
            .min()
    }

    /// Reopens closed connections whose retry time came, then sends the
    /// pushes the rate allows to targets chosen by `pick`.
    pub fn run_due(
        &mut self,
        registry: &Registry,
        now: Instant,
        ctx: &mut Ctx,
        mut pick: impl FnMut(&mut Rng) -> Option<String>,
    ) {
        for index in 0..self.conns.len() {
            if matches!(self.conns[index].state, State::Closed { retry_at } if now >= retry_at) {
                self.open(index, registry, now, ctx);
            }
        }
        self.ready_once |= self.conns.iter().any(|c| c.state == State::Idle);
        while self.ready_once && self.bucket.take(now) {
            let Some(index) = self.idle_conn() else {
                ctx.results.counters.pushes_skipped += 1;
                continue;
            };
            let Some(target) = pick(&mut ctx.rng) else {
                ctx.results.counters.pushes_no_target += 1;
                continue;
            };
            self.send(index, &target, now, ctx);
        }
    }

    fn idle_conn(&mut self) -> Option<usize> {
        let len = self.conns.len();
        let index = (0..len)
            .map(|i| (self.cursor + i) % len)
            .find(|&i| self.conns[i].state == State::Idle)?;
        self.cursor = (index + 1) % len;
        Some(index)
    }

    fn open(&mut self, index: usize, registry: &Registry, now: Instant, ctx: &mut Ctx) {
        let opened = TcpStream::connect(self.admin.addr).and_then(|mut stream| {
            stream.set_nodelay(true)?;
            registry.register(
                &mut stream,
                Token(TOKEN_BASE + index),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => {
                let c = &mut self.conns[index];
                c.stream = Some(stream);
                c.state = State::Connecting;
            }
            Err(e) => self.fail(index, now, ctx, &e.to_string()),
        }
    }

    fn send(&mut self, index: usize, target: &str, now: Instant, ctx: &mut Ctx) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let body = text(seq, self.padding);
        let query = self
            .wait_ack_ms
            .map_or(String::new(), |ms| format!("?wait_ack_ms={ms}"));
        let c = &mut self.conns[index];
        let _ = write!(
            c.outbound,
            "POST /clients/{target}/push{query} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            self.admin.host,
            body.len()
        );
        if let Some(authorization) = &self.authorization {
            let _ = write!(c.outbound, "Authorization: {authorization}\r\n");
        }
        c.outbound.extend_from_slice(b"\r\n");
        c.outbound.extend_from_slice(body.as_bytes());
        c.state = State::Busy { seq, sent_at: now };
        ctx.pushes.insert(seq, now);
        let counters = &mut ctx.results.counters;
        counters.pushes_sent += 1;
        if ctx.window.contains(now) {
            counters.pushes_in_window += 1;
        }
        if let Err(e) = flush(c) {
            self.fail(index, now, ctx, &e.to_string());
        }
    }

    /// Handles readiness of the admin connection `index` (token − TOKEN_BASE).
    pub fn on_ready(&mut self, index: usize, now: Instant, scratch: &mut [u8], ctx: &mut Ctx) {
        let Some(c) = self.conns.get_mut(index) else {
            return;
        };
        if c.stream.is_none() {
            return;
        }
        if c.state == State::Connecting {
            match connected(c) {
                Ok(false) => return,
                Ok(true) => {
                    c.state = State::Idle;
                    self.ready_once = true;
                }
                Err(e) => return self.fail(index, now, ctx, &e.to_string()),
            }
        }
        if let Err(e) = flush(c).and_then(|()| read_available(c, scratch)) {
            return self.fail(index, now, ctx, &e.to_string());
        }
        loop {
            let c = &mut self.conns[index];
            let answer = match parse_answer(&c.inbound) {
                Ok(Some(answer)) => answer,
                Ok(None) if c.inbound.len() > MAX_ANSWER => {
                    return self.fail(index, now, ctx, "answer too large")
                }
                Ok(None) => return,
                Err(e) => return self.fail(index, now, ctx, &e),
            };
            c.inbound.drain(..answer.len);
            let State::Busy { seq, sent_at } = c.state else {
                return self.fail(index, now, ctx, "an answer nobody asked for");
            };
            c.state = State::Idle;
            let counters = &mut ctx.results.counters;
            counters.pushes_answered += 1;
            let took = (sent_at >= ctx.window.start && ctx.window.contains(now))
                .then(|| micros(now.saturating_duration_since(sent_at)));
            ctx.results.record_push_answer(answer.status, took);
            if !(200..300).contains(&answer.status) {
                // Refused: it will never arrive.
                ctx.pushes.remove(&seq);
            }
            if !answer.keep_alive {
                self.close(index, now);
                return;
            }
        }
    }

    /// Counts a failed connection and schedules its reopening; a request in
    /// flight is left in `Ctx::pushes` in case it was delivered.
    fn fail(&mut self, index: usize, now: Instant, ctx: &mut Ctx, error: &str) {
        ctx.results.counters.push_conn_errors += 1;
        ctx.results.last_error = Some(format!("admin {}: {error}", self.admin.host));
        self.close(index, now);
    }

    fn close(&mut self, index: usize, now: Instant) {
        let c = &mut self.conns[index];
        c.stream = None;
        c.inbound = Vec::new();
        c.outbound = Vec::new();
        c.state = State::Closed {
            retry_at: now + RECONNECT_AFTER,
        };
    }
}

/// Whether a non-blocking connect completed; an error if it failed.
fn connected(c: &AdminConn) -> io::Result<bool> {
    match &c.stream {
        Some(stream) => net::connect_finished(stream),
        None => Err(io::ErrorKind::NotConnected.into()),
    }
}

fn flush(c: &mut AdminConn) -> io::Result<()> {
    match c.stream.as_mut() {
        Some(stream) => net::write_pending(stream, &mut c.outbound),
        None => Err(io::ErrorKind::NotConnected.into()),
    }
}

fn read_available(c: &mut AdminConn, scratch: &mut [u8]) -> io::Result<()> {
    let Some(stream) = c.stream.as_mut() else {
        return Err(io::ErrorKind::NotConnected.into());
    };
    loop {
        match stream.read(scratch) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => c.inbound.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The answer at the front of `buf`, once it is complete.
pub fn parse_answer(buf: &[u8]) -> Result<Option<Answer>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad HTTP answer: {e}")),
    };
    let mut length = 0;
    let mut keep_alive = response.version == Some(1);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad Content-Length")?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let status = response.code.ok_or("no status")?;
    Ok((buf.len() >= head + length).then_some(Answer {
        status,
        keep_alive,
        head,
        len: head + length,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_survives_the_text() {
        assert_eq!(parse_seq(text(42, 0).as_bytes()), Some(42));
        assert_eq!(parse_seq(text(7, 100).as_bytes()), Some(7));
        assert_eq!(text(7, 3), "lifeline-load push 7 ppp");
        assert_eq!(parse_seq(b"hello"), None);
        assert_eq!(parse_seq(b"lifeline-load push "), None);
    }

    #[test]
    fn answers_are_framed_by_content_length() {
        let two = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}\
                    HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let first = parse_answer(two).unwrap().unwrap();
        let second_at = two.windows(12).position(|w| w == b"HTTP/1.1 503").unwrap();
        assert_eq!(
            first,
            Answer {
                status: 202,
                keep_alive: true,
                head: second_at - 2,
                len: second_at
            }
        );
        let second = parse_answer(&two[first.len..]).unwrap().unwrap();
        assert_eq!((second.status, second.keep_alive), (503, false));
        for cut in 0..first.len {
            assert_eq!(parse_answer(&two[..cut]), Ok(None), "cut {cut}");
        }
        assert!(parse_answer(b"NOT HTTP\r\n\r\n").is_err());
    }
}
