//! The client side of the three protocols the tool speaks: encoders that append
//! to an outbound buffer, and a scanner that finds the next complete server
//! frame in a byte slice. No I/O and no state: the caller keeps the unparsed
//! tail of a split frame and scans again once more bytes arrived.
//!
//! This module is the vocabulary the session uses ([`Proto`], [`Inbound`],
//! [`Scan`]) and the per-protocol dispatch; each protocol's bytes live in its
//! own file: [`lifeline`] (XML frames), [`mqtt`] and [`redis`]. The fan-out
//! floor sends Lifeline's `<msg>` frames and has no login.

mod lifeline;
mod mqtt;
mod redis;

pub use lifeline::{ack, probe_answer};
pub use mqtt::{connect as mqtt_connect, publish as mqtt_publish};
pub use redis::publish as redis_publish;

/// The Redis channel and MQTT topic fan-out mode subscribes to and publishes on.
pub const CHANNEL: &str = "lifeline-fanout";

/// Which wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// Lifeline XML frames: login, heartbeat ping/pong, bye.
    Lifeline,
    /// The redis inline `PING` (what `bench/floor.c` and the tokio peer speak).
    Redis,
    /// MQTT 3.1.1: CONNECT/CONNACK, PINGREQ/PINGRESP.
    Mqtt,
    /// The fan-out floor (`tools/bench/peers/fanout-floor.c`): no login;
    /// what it writes to every subscriber is the line the tool sends to its
    /// `--trigger` port, a Lifeline `<msg>` frame (fan-out mode only).
    FanoutFloor,
}

/// A frame read from the server, borrowing from the scanned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Lifeline `<welcome/>`: the login is accepted.
    Welcome {
        interval_ms: Option<u64>,
        misses: Option<u64>,
        phase_ms: Option<u64>,
    },
    /// MQTT CONNACK; `accepted` is false for a non-zero return code.
    ConnAck { accepted: bool },
    /// The answer to one of our pings (redis `+PONG`, MQTT PINGRESP).
    Pong { seq: Option<u64> },
    /// A liveness probe from the server; answer with a pong echoing `seq`.
    Probe { seq: Option<&'a [u8]> },
    /// `<bye reason="..." retry-ms="D"/>`: the server is about to close;
    /// `retry_ms` is its advice on when to come back (version 1.1).
    Bye {
        reason: Option<&'a [u8]>,
        retry_ms: Option<u64>,
    },
    /// `<error code="..."/>`, or a redis `-ERR` line.
    Error { code: Option<&'a [u8]> },
    /// `<msg id="...">body</msg>` routed to this client; `body` is the raw
    /// (still escaped) content between the tags.
    Msg {
        id: Option<&'a [u8]>,
        body: &'a [u8],
    },
    /// A subscription is in place: the redis `subscribe` confirmation, MQTT SUBACK.
    Subscribed,
    /// A message published to a channel we subscribed to (redis `message`,
    /// MQTT PUBLISH): its payload.
    Published { body: &'a [u8] },
    /// Anything else (unknown element, redis reply other than PONG, ...).
    Other,
}

/// The outcome of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan<'a> {
    /// A complete frame, and how many bytes (including leading whitespace) it used.
    Frame(Inbound<'a>, usize),
    /// No complete frame yet; the first `usize` bytes (whitespace, XML
    /// declarations, comments) can be dropped.
    NeedMore(usize),
}

/// The byte stream cannot be framed; the connection is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("text outside a frame")]
    TextOutsideFrame,
    #[error("malformed markup")]
    Malformed,
    #[error("MQTT remaining length longer than 4 bytes")]
    BadLength,
    #[error("malformed redis reply")]
    BadReply,
}

/// Finds the next complete frame at the start of `buf`.
pub fn scan(proto: Proto, buf: &[u8]) -> Result<Scan<'_>, ScanError> {
    match proto {
        Proto::Lifeline | Proto::FanoutFloor => lifeline::scan(buf),
        Proto::Redis => redis::scan(buf),
        Proto::Mqtt => mqtt::scan(buf),
    }
}

/// Appends the login for `id` (nothing for redis, which has none).
pub fn login(proto: Proto, id: &str, token: Option<&str>, keepalive_s: u16, out: &mut Vec<u8>) {
    match proto {
        Proto::Lifeline => lifeline::login(id, token, out),
        Proto::Redis | Proto::FanoutFloor => {}
        Proto::Mqtt => mqtt::connect(id, keepalive_s, out),
    }
}

/// Whether the protocol answers a login before the connection can ping.
pub fn has_login(proto: Proto) -> bool {
    matches!(proto, Proto::Lifeline | Proto::Mqtt)
}

/// Appends the subscription to [`CHANNEL`], for the protocols that have one
/// (every logged-in Lifeline client gets a broadcast; the floor writes to
/// every connection). Returns whether one was written.
pub fn subscribe(proto: Proto, out: &mut Vec<u8>) -> bool {
    match proto {
        Proto::Redis => redis::subscribe(CHANNEL, out),
        Proto::Mqtt => mqtt::subscribe(CHANNEL, out),
        Proto::Lifeline | Proto::FanoutFloor => return false,
    }
    true
}

/// Appends one ping carrying `seq` (only Lifeline can carry it).
pub fn ping(proto: Proto, seq: u64, out: &mut Vec<u8>) {
    match proto {
        Proto::Lifeline | Proto::FanoutFloor => lifeline::ping(seq, out),
        Proto::Redis => redis::ping(out),
        Proto::Mqtt => mqtt::ping(out),
    }
}

/// Appends a clean goodbye: `<bye/>`, MQTT DISCONNECT, or redis `QUIT`.
pub fn bye(proto: Proto, out: &mut Vec<u8>) {
    match proto {
        Proto::Lifeline => lifeline::bye(out),
        Proto::Redis => redis::quit(out),
        Proto::Mqtt => mqtt::disconnect(out),
        Proto::FanoutFloor => {}
    }
}

#[cfg(test)]
mod tests;
