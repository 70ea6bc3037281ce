//! One connection to Redis on the loop: a non-blocking socket in the loop's
//! poll, RESP2 encoding and decoding (the `redis-protocol` crate), pipelined
//! commands, a bounded outbound queue, and reconnection with exponential
//! backoff and jitter. No thread, no blocking call: a connect that has not
//! finished yet is a socket waiting for its writable edge.
//!
//! The connection does not know what its commands mean: the owner keeps, in
//! the same order, what to do with each reply (Redis answers a connection's
//! commands in order), and is told when the connection drops so that every
//! reply still owed can be failed.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

use crate::writeq;

/// Unsent command bytes beyond this are refused (the caller treats the
/// command as failed): a Redis that stopped reading must not grow the heap.
pub const MAX_QUEUED: usize = 32 << 20;
/// Unparsed reply bytes beyond this end the connection (no reply of ours is
/// this large).
const MAX_REPLY: usize = 256 << 20;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connect that has not completed by then is abandoned and retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a command could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the Redis connection is down")]
    Down,
    #[error("more than {MAX_QUEUED} bytes are waiting for Redis")]
    Full,
}

#[derive(Debug)]
enum Phase {
    /// No socket; the next attempt is at `retry_at`.
    Down {
        retry_at: Instant,
    },
    /// Connecting: usable once the socket turns writable without error.
    Connecting {
        since: Instant,
    },
    Up,
}

/// What reading a ready connection brought.
pub enum Readiness {
    /// Nothing changed.
    Quiet,
    /// The connect finished: the owner sends its opening commands.
    Connected,
    /// Replies, in order.
    Replies,
    /// The connection dropped; every reply still owed is lost.
    Dropped,
}

pub struct RedisConn {
    name: &'static str,
    addr: SocketAddr,
    token: Token,
    stream: Option<TcpStream>,
    phase: Phase,
    out: BytesMut,
    inbuf: Vec<u8>,
    backoff: Duration,
    rng: fastrand::Rng,
    /// Reconnects after the first connect (for the metrics).
    pub reconnects: u64,
    pub commands_sent: u64,
    ever_up: bool,
    /// Scratch for encoding one command.
    args: Vec<Vec<u8>>,
}

impl RedisConn {
    pub fn new(name: &'static str, addr: SocketAddr, token: Token) -> RedisConn {
        RedisConn {
            name,
            addr,
            token,
            stream: None,
            phase: Phase::Down {
                retry_at: Instant::now(),
            },
            out: BytesMut::new(),
            inbuf: Vec::new(),
            backoff: BACKOFF_FIRST,
            rng: fastrand::Rng::new(),
            reconnects: 0,
            commands_sent: 0,
            ever_up: false,
            args: Vec::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up)
    }

    pub fn token(&self) -> Token {
        self.token
    }

    /// When the connection next needs the loop (a retry, a connect timeout).
    pub fn next_wake(&self) -> Option<Instant> {
        match self.phase {
            Phase::Down { retry_at } => Some(retry_at),
            Phase::Connecting { since } => Some(since + CONNECT_TIMEOUT),
            Phase::Up => None,
        }
    }

    /// Starts a connect when one is due, gives up a connect that takes too
    /// long. Returns true when the connection dropped here.
    pub fn on_time(&mut self, poll: &mio::Registry, now: Instant) -> bool {
        match self.phase {
            Phase::Down { retry_at } if now >= retry_at => {
                self.start_connect(poll, now);
                false
            }
            Phase::Connecting { since } if now >= since + CONNECT_TIMEOUT => {
                self.drop_connection(now, "the connect timed out");
                true
            }
            _ => false,
        }
    }

    fn start_connect(&mut self, poll: &mio::Registry, now: Instant) {
        match TcpStream::connect(self.addr) {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                if let Err(e) = poll.register(
                    &mut stream,
                    self.token,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    warn!("redis {}: cannot register the socket: {e}", self.name);
                    self.schedule_retry(now);
                    return;
                }
                self.stream = Some(stream);
                self.phase = Phase::Connecting { since: now };
            }
            Err(e) => {
                log::debug!("redis {}: connect to {}: {e}", self.name, self.addr);
                self.schedule_retry(now);
            }
        }
    }

    fn schedule_retry(&mut self, now: Instant) {
        // Full jitter over [backoff/2, backoff]: nodes that lost Redis at
        // the same moment do not come back at the same moment.
        let ms = self.backoff.as_millis() as u64;
        let wait = Duration::from_millis(self.rng.u64(ms / 2..=ms));
        self.phase = Phase::Down {
            retry_at: now + wait,
        };
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Closes the socket and forgets queued bytes and partial replies.
    pub fn drop_connection(&mut self, now: Instant, why: &str) {
        if self.is_up() {
            warn!(
                "redis {}: connection to {} lost: {why}",
                self.name, self.addr
            );
        }
        self.stream = None;
        self.out = BytesMut::new();
        self.inbuf = Vec::new();
        self.schedule_retry(now);
    }

    /// Queues one command (its arguments as byte strings). Pipelined: it is
    /// written with everything else queued this iteration, by `flush`.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<(), SendError> {
        if !self.is_up() {
            return Err(SendError::Down);
        }
        if self.out.len() > MAX_QUEUED {
            return Err(SendError::Full);
        }
        let frames: Vec<BorrowedFrame<'_>> =
            args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
        let frame = BorrowedFrame::Array(&frames);
        let len = frame.encode_len(false);
        let start = self.out.len();
        self.out.resize(start + len, 0);
        if encode_borrowed(&mut self.out[start..], &frame, false).is_err() {
            self.out.truncate(start);
            return Err(SendError::Full);
        }
        self.commands_sent += 1;
        Ok(())
    }

    /// Queues a command given as owned strings (scratch kept between calls).
    pub fn command_owned(
        &mut self,
        args: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<(), SendError> {
        let mut scratch = std::mem::take(&mut self.args);
        scratch.clear();
        scratch.extend(args);
        let refs: Vec<&[u8]> = scratch.iter().map(Vec::as_slice).collect();
        let sent = self.command(&refs);
        drop(refs);
        self.args = scratch;
        sent
    }

    /// Writes what is queued. False when the socket failed (the connection
    /// is dropped).
    pub fn flush(&mut self, now: Instant) -> bool {
        if self.out.is_empty() || !self.is_up() {
            return true;
        }
        let Some(stream) = &mut self.stream else {
            return true;
        };
        match writeq::flush(stream, &mut self.out) {
            Ok(_) => true,
            Err(e) => {
                self.drop_connection(now, &e.to_string());
                false
            }
        }
    }

    /// Serves a readiness event: finishes a connect, writes, reads replies
    /// into `replies` (in order).
    pub fn on_ready(&mut self, now: Instant, replies: &mut Vec<OwnedFrame>) -> Readiness {
        let Some(stream) = &mut self.stream else {
            return Readiness::Quiet;
        };
        let mut connected = false;
        if let Phase::Connecting { .. } = self.phase {
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    log::debug!("redis {}: connect to {}: {e}", self.name, self.addr);
                    self.drop_connection(now, "connect failed");
                    return Readiness::Quiet;
                }
            }
            if stream.peer_addr().is_err() {
                return Readiness::Quiet; // not connected yet
            }
            self.phase = Phase::Up;
            self.backoff = BACKOFF_FIRST;
            if self.ever_up {
                self.reconnects += 1;
            }
            self.ever_up = true;
            info!("redis {}: connected to {}", self.name, self.addr);
            connected = true;
        }
        if !self.flush(now) {
            return Readiness::Dropped;
        }
        match self.read(now, replies) {
            Ok(()) if connected => Readiness::Connected,
            Ok(()) if replies.is_empty() => Readiness::Quiet,
            Ok(()) => Readiness::Replies,
            Err(why) => {
                self.drop_connection(now, &why);
                Readiness::Dropped
            }
        }
    }

    fn read(&mut self, _now: Instant, replies: &mut Vec<OwnedFrame>) -> Result<(), String> {
        let Some(stream) = &mut self.stream else {
            return Ok(());
        };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Err("Redis closed the connection".to_string()),
                Ok(n) => {
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    if self.inbuf.len() > MAX_REPLY {
                        return Err("reply too large".to_string());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut used = 0;
        loop {
            match decode(&self.inbuf[used..]) {
                Ok(Some((frame, len))) => {
                    used += len;
                    replies.push(frame);
                }
                Ok(None) => break,
                Err(e) => return Err(format!("bad reply from Redis: {e:?}")),
            }
        }
        self.inbuf.drain(..used);
        if self.inbuf.is_empty() && self.inbuf.capacity() > 64 * 1024 {
            self.inbuf = Vec::new();
        }
        Ok(())
    }
}

/// A reply's text, for simple and bulk strings.
pub fn text(frame: &OwnedFrame) -> Option<&str> {
    match frame {
        OwnedFrame::SimpleString(b) | OwnedFrame::BulkString(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

pub fn int(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Integer(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

pub fn array(frame: &OwnedFrame) -> &[OwnedFrame] {
    match frame {
        OwnedFrame::Array(items) => items,
        _ => &[],
    }
}
