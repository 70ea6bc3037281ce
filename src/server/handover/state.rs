//! The state one process hands the next: what it is, and its record format.
//!
//! The record: 8 bytes of magic, the format version (u32, little-endian),
//! the body's length (u64, little-endian), then the body, [`State`] as
//! postcard (serde). A reader refuses a version it does not know, so an
//! older binary never misreads a newer one's state (the old process then
//! keeps serving). The new process says in `Hello` the newest version it
//! reads, and the old one writes that one when it can ([`OLDEST`] on):
//! upgrading from the release before, and back, both work. postcard writes fields in declaration order with no
//! names: adding, removing or reordering a field changes the format, so
//! every such change bumps [`VERSION`]; adding a field is then one line in
//! the struct here plus where export.rs fills it and import.rs applies it.
//!
//! Descriptors do not travel in the record: they go beside it (SCM_RIGHTS)
//! in order, and the record names each by its index in that order.
//!
//! Times are loop microseconds (`clock::Micros`) since the old process's
//! loop epoch, which the record gives on CLOCK_MONOTONIC: the new process
//! adopts that epoch, so every time keeps its meaning without conversion.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Marks a Lifeline state record.
pub const MAGIC: [u8; 8] = *b"LLSTATE\0";
/// The newest format this binary writes and reads.
///
/// 2: the granted heartbeat interval per connection; push events
/// (`queued`, `expired`); the push ids' run prefix; unacked at-least-once
/// pushes and redelivery counts; remembered `Idempotency-Key` answers; TLS
/// connections ended at the hand-over.
/// 4: the same layout as 3; a connection's `fd` may be [`SENT_AHEAD`].
pub const VERSION: u32 = 4;
/// The oldest format this binary reads (and writes, for a new process
/// that reads no newer one).
pub const OLDEST: u32 = 3;
/// The first format in which sockets may be sent ahead of the state.
pub const SENDS_AHEAD: u32 = 4;
/// A connection's `fd` when its socket was sent ahead (`Kind::Sockets`),
/// named there by its key and generation.
pub const SENT_AHEAD: u32 = u32::MAX;
const HEADER_LEN: usize = 8 + 4 + 8;
/// A record larger than this is refused unread (19,000 connections with
/// full outbound queues stay far below it).
pub const MAX_RECORD: u64 = 16 << 30;

/// Everything the next process needs to go on serving every client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The process that wrote it.
    pub from_pid: u32,
    /// The loop epoch in CLOCK_MONOTONIC microseconds, and in Unix milliseconds.
    pub epoch_mono_us: u64,
    pub wall_epoch_ms: u64,
    /// When the old process stopped serving (loop µs): the new one reports
    /// how long clients went unserved.
    pub stopped_at: u64,
    /// Descriptor indexes of the listening sockets.
    pub client_listener: u32,
    pub admin_listener: Option<u32>,
    /// The table's generation counter, so new connections get fresh ones.
    pub next_generation: u32,
    pub conns: Vec<ConnState>,
    pub presence: PresenceState,
    pub pushes: PushState,
    /// Answers the admin API remembered under `Idempotency-Key`, oldest
    /// first (admin connections themselves are not handed over).
    pub idempotency: Vec<IdempotentAnswer>,
    /// TLS connections: not handed over (a rustls session cannot be
    /// exported). The old process tells each `<bye reason="shutdown"/>`
    /// once the new one has acknowledged; the new one records their ends.
    pub tls_ended: Vec<EndedConn>,
    /// Logins so far: the heartbeat phases go on spreading from there.
    pub logins: u64,
}

/// One client connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnState {
    /// Descriptor index of its socket, or [`SENT_AHEAD`].
    pub fd: u32,
    /// Slab key and generation: its `ConnRef` (and mio token) stay the same.
    pub key: u32,
    pub generation: u32,
    pub peer: SocketAddr,
    pub connected_at: u64,
    pub last_seen: u64,
    /// When its heartbeat entry comes due (the wheel's instant, loop µs).
    pub check_at: u64,
    /// The heartbeat interval granted at login, ms (0: the server's own).
    pub interval_ms: u32,
    pub phase: Phase,
    pub transport: TransportState,
    pub position: Position,
    /// Unparsed inbound bytes (a partial frame; for a WebSocket, a partial
    /// WebSocket frame) and outbound bytes the socket has not taken yet.
    pub inbound: Vec<u8>,
    pub outbound: Vec<u8>,
    /// Pushes in `outbound` not yet fully written.
    pub pushes_unwritten: u16,
}

/// Where the connection stands in its life (`conn::State`). A connection
/// saying goodbye is never handed over: no upgrade starts during a shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    Connected,
    LoggedIn { id: String, suspect: bool },
}

/// How it carries the XML stream (`conn::Transport`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TransportState {
    Sniffing,
    Raw,
    Handshake,
    WebSocket {
        decoder: DecoderState,
        /// A partial XML frame carried across WebSocket messages.
        xml_tail: Vec<u8>,
        close_sent: bool,
    },
}

/// `lifeline_wire::ws::DecoderParts`, field for field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoderState {
    pub remaining: u64,
    pub message_len: u64,
    pub mask: [u8; 4],
    pub mask_phase: u8,
    pub fin: bool,
    pub in_message: bool,
    pub utf8_pending: [u8; 3],
    pub utf8_pending_len: u8,
}

/// `lifeline_wire::StreamPosition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    Start,
    BeforeFirstFrame,
    AfterFrame,
}

/// The presence log: its numbering and the ring consumers resume from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceState {
    pub last_seq: u64,
    pub recording: bool,
    pub ring: Vec<EventState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventState {
    pub seq: u64,
    pub kind: EventKind,
    pub id: String,
    pub conn: u32,
    /// `None` for a push event.
    pub peer: Option<SocketAddr>,
    pub reason: Option<String>,
    pub at: u64,
    /// The push a `queued` or `expired` event is about.
    pub message: Option<String>,
    /// Cluster mode: the node the event happened on.
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Online,
    Suspect,
    Alive,
    Offline,
    Replaced,
    Queued,
    Expired,
}

/// Pushes: the ids' run and counter, the counters, receipts (oldest
/// first), the offline queue and the at-least-once pushes waiting for their
/// ack. Ack waits belong to admin requests, which are not handed over, so
/// none travel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushState {
    /// `p-RUN-`: the new process issues ids in the same run.
    pub id_prefix: String,
    pub issued: u64,
    pub accepted: u64,
    pub acked: u64,
    pub expired: u64,
    pub refused_full: u64,
    pub redelivered: u64,
    /// Pushes fully written to their recipients.
    pub delivered: u64,
    pub receipts: Vec<ReceiptState>,
    pub held: Vec<HeldFor>,
    pub unacked: Vec<UnackedFor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptState {
    pub id: String,
    pub to: String,
    pub status: StatusState,
    pub created: u64,
    pub sent: Option<u64>,
    pub acked: Option<u64>,
    pub expires: Option<u64>,
    pub recipients: Option<u64>,
    pub redelivered: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusState {
    Queued,
    Sent,
    Acked,
    Expired,
}

/// The pushes held for one offline client, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldFor {
    pub client: String,
    pub pushes: Vec<HeldPush>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldPush {
    pub message: String,
    /// The encoded `<msg>` frame.
    pub frame: Vec<u8>,
    pub expires: u64,
    pub at_least_once: bool,
}

/// The sent at-least-once pushes of one client waiting for their ack, in
/// the order they were sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnackedFor {
    pub client: String,
    pub pushes: Vec<UnackedPush>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnackedPush {
    /// The connection it went out on (key and generation: a handed-over
    /// connection keeps both; an ended one hands the push back).
    pub key: u32,
    pub generation: u32,
    pub push: HeldPush,
}

/// One answer remembered under an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotentAnswer {
    pub key: String,
    /// When it was remembered (loop µs): it is forgotten a receipt TTL later.
    pub at: u64,
    pub fingerprint: [u8; 32],
    pub status: u16,
    pub body: String,
}

/// A connection the old process ends at the hand-over (TLS), as the new
/// process records its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndedConn {
    pub key: u32,
    pub generation: u32,
    pub peer: SocketAddr,
    /// Logged in as this id, and whether it held the id (a connection a
    /// newer login replaced does not).
    pub id: Option<String>,
    pub holder: bool,
}

/// A record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a Lifeline state record")]
    Magic,
    #[error("state format version {found}; this binary reads versions {OLDEST} to {VERSION}")]
    Version { found: u32 },
    #[error("the state record is cut short ({have} bytes, {need} expected)")]
    Truncated { have: u64, need: u64 },
    #[error("the state record says it is {0} bytes long, more than any state")]
    TooLarge(u64),
    #[error("the state record does not decode: {0}")]
    Body(#[from] postcard::Error),
}

/// The record of `state`, written as format `version` (always [`VERSION`]
/// but in the test of a refused version).
pub fn encode(state: &State, version: u32) -> Result<Vec<u8>, FormatError> {
    let body = postcard::to_allocvec(state)?;
    let mut record = Vec::with_capacity(HEADER_LEN + body.len());
    record.extend_from_slice(&MAGIC);
    record.extend_from_slice(&version.to_le_bytes());
    record.extend_from_slice(&(body.len() as u64).to_le_bytes());
    record.extend_from_slice(&body);
    Ok(record)
}

/// The length of the whole record whose first bytes are `head`, once the
/// header is there; checks magic, version and size first, so a version this
/// binary does not know is refused before anything else is read.
pub fn record_len(head: &[u8]) -> Result<Option<u64>, FormatError> {
    if head.len() < HEADER_LEN {
        return Ok(None);
    }
    if head[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&head[8..12]);
    let found = u32::from_le_bytes(version);
    if !(OLDEST..=VERSION).contains(&found) {
        return Err(FormatError::Version { found });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[12..20]);
    let len = u64::from_le_bytes(len);
    if len > MAX_RECORD {
        return Err(FormatError::TooLarge(len));
    }
    Ok(Some(HEADER_LEN as u64 + len))
}

/// Reads a whole record.
pub fn decode(record: &[u8]) -> Result<State, FormatError> {
    let have = record.len() as u64;
    let need = record_len(record)?.unwrap_or(HEADER_LEN as u64);
    if have != need {
        return Err(FormatError::Truncated { have, need });
    }
    Ok(postcard::from_bytes(&record[HEADER_LEN..])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            from_pid: 42,
            epoch_mono_us: 1_000_000,
            wall_epoch_ms: 1_700_000_000_000,
            stopped_at: 5_000,
            client_listener: 0,
            admin_listener: Some(1),
            next_generation: 9,
            conns: vec![ConnState {
                fd: 2,
                key: 3,
                generation: 9,
                peer: "127.0.0.1:4000".parse().unwrap(),
                connected_at: 10,
                last_seen: 20,
                check_at: 5_020,
                interval_ms: 2_500,
                phase: Phase::LoggedIn {
                    id: "alice".into(),
                    suspect: true,
                },
                transport: TransportState::WebSocket {
                    decoder: DecoderState {
                        remaining: 3,
                        message_len: 9,
                        mask: [1, 2, 3, 4],
                        mask_phase: 2,
                        fin: true,
                        in_message: true,
                        utf8_pending: [0xc3, 0, 0],
                        utf8_pending_len: 1,
                    },
                    xml_tail: b"<msg to=\"b\">he".to_vec(),
                    close_sent: false,
                },
                position: Position::AfterFrame,
                inbound: vec![0x81],
                outbound: b"<pong seq=\"1\"/>".to_vec(),
                pushes_unwritten: 1,
            }],
            presence: PresenceState {
                last_seq: 77,
                recording: true,
                ring: vec![
                    EventState {
                        seq: 76,
                        kind: EventKind::Online,
                        id: "alice".into(),
                        conn: 9,
                        peer: Some("127.0.0.1:4000".parse().unwrap()),
                        reason: Some("timeout".into()),
                        at: 1_700_000_000_123,
                        message: None,
                        node: None,
                    },
                    EventState {
                        seq: 77,
                        kind: EventKind::Queued,
                        id: "bob".into(),
                        conn: 0,
                        peer: None,
                        reason: None,
                        at: 1_700_000_000_124,
                        message: Some("p-x-4".into()),
                        node: Some("edge-1".into()),
                    },
                ],
            },
            pushes: PushState {
                id_prefix: "p-lqu5m2o0-".into(),
                issued: 5,
                accepted: 5,
                acked: 1,
                expired: 0,
                refused_full: 0,
                redelivered: 1,
                delivered: 4,
                receipts: vec![ReceiptState {
                    id: "p-lqu5m2o0-5".into(),
                    to: "alice".into(),
                    status: StatusState::Sent,
                    created: 1,
                    sent: Some(2),
                    acked: None,
                    expires: None,
                    recipients: None,
                    redelivered: 1,
                }],
                held: vec![HeldFor {
                    client: "bob".into(),
                    pushes: vec![HeldPush {
                        message: "p-lqu5m2o0-4".into(),
                        frame: b"<msg/>".to_vec(),
                        expires: 99,
                        at_least_once: true,
                    }],
                }],
                unacked: vec![UnackedFor {
                    client: "alice".into(),
                    pushes: vec![UnackedPush {
                        key: 3,
                        generation: 9,
                        push: HeldPush {
                            message: "p-lqu5m2o0-5".into(),
                            frame: b"<msg/>".to_vec(),
                            expires: 120,
                            at_least_once: true,
                        },
                    }],
                }],
            },
            idempotency: vec![IdempotentAnswer {
                key: "order-17".into(),
                at: 30,
                fingerprint: [7; 32],
                status: 202,
                body: "{\"id\":\"p-lqu5m2o0-5\"}".into(),
            }],
            tls_ended: vec![EndedConn {
                key: 4,
                generation: 10,
                peer: "127.0.0.1:4001".parse().unwrap(),
                id: Some("carol".into()),
                holder: true,
            }],
            logins: 12,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let state = sample();
        let record = encode(&state, VERSION).unwrap();
        assert_eq!(
            record_len(&record[..20]).unwrap(),
            Some(record.len() as u64)
        );
        assert_eq!(record_len(&record[..19]).unwrap(), None);
        assert_eq!(decode(&record).unwrap(), state);
    }

    #[test]
    fn the_release_before_writes_a_record_this_one_reads() {
        // Version 3 (no socket sent ahead) is the layout of version 4.
        let state = sample();
        let record = encode(&state, OLDEST).unwrap();
        assert_eq!(decode(&record).unwrap(), state);
        let too_old = encode(&state, OLDEST - 1).unwrap();
        assert!(matches!(
            decode(&too_old),
            Err(FormatError::Version { found }) if found == OLDEST - 1
        ));
    }

    #[test]
    fn an_unknown_version_is_refused_before_its_body_is_read() {
        let mut record = encode(&sample(), VERSION + 1).unwrap();
        assert!(matches!(
            record_len(&record),
            Err(FormatError::Version { found }) if found == VERSION + 1
        ));
        assert!(matches!(decode(&record), Err(FormatError::Version { .. })));
        // A known version with a damaged body or length is refused too.
        record[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let whole = record.len();
        assert!(matches!(
            decode(&record[..whole - 1]),
            Err(FormatError::Truncated { .. })
        ));
        record[0] = b'X';
        assert!(matches!(decode(&record), Err(FormatError::Magic)));
    }
}
