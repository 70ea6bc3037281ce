//! The event feed: every node reads the cluster's presence stream
//! (`ll:events`) on a connection of its own — `XREAD BLOCK` holds a
//! connection until events come, which the command connection cannot
//! afford — and keeps what it read in its own event ring, so that a
//! subscriber on any node gets the one cluster-wide order and can resume
//! with `Last-Event-ID` on any node.
//!
//! A node reads the stream from its start when it connects, so its ring
//! holds what the stream holds (`LIFELINE_EVENT_BACKLOG` events).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mio::Token;
use redis_protocol::resp2::types::OwnedFrame;

use crate::cluster::resp::{self, Readiness, RedisConn};
use crate::presence::{PresenceEvent, PresenceKind};
use crate::server::CloseReason;

/// How long one `XREAD` may block in Redis, and how many entries it takes.
const BLOCK_MS: &[u8] = b"1000";
const COUNT: &[u8] = b"1000";

pub struct Feed {
    pub conn: RedisConn,
    /// The last stream id read ("0-0": from the start).
    last: String,
    /// Replies owed, in order: true for the XREAD.
    owed: std::collections::VecDeque<bool>,
    events: Vec<PresenceEvent>,
    /// Node names, shared by every event of a node (the ring holds up to
    /// `LIFELINE_EVENT_BACKLOG` of them).
    nodes: Vec<Rc<str>>,
}

impl Feed {
    pub fn new(addr: SocketAddr, token: Token) -> Feed {
        Feed {
            conn: RedisConn::new("events", addr, token),
            last: "0-0".to_string(),
            owed: Default::default(),
            events: Vec::new(),
            nodes: Vec::new(),
        }
    }

    pub fn take_events(&mut self, f: &mut dyn FnMut(PresenceEvent)) {
        for e in self.events.drain(..) {
            f(e);
        }
    }

    pub fn on_ready(
        &mut self,
        now: Instant,
        replies: &mut Vec<OwnedFrame>,
        opening: Vec<Vec<Vec<u8>>>,
    ) {
        match self.conn.on_ready(now, replies) {
            Readiness::Connected => {
                self.owed.clear();
                for command in opening {
                    if self.conn.command_owned(command).is_ok() {
                        self.owed.push_back(false);
                    }
                }
                self.read_more();
            }
            Readiness::Dropped => self.owed.clear(),
            Readiness::Replies | Readiness::Quiet => {}
        }
        for frame in replies.drain(..) {
            match self.owed.pop_front() {
                Some(true) => {
                    self.take(&frame);
                    self.read_more();
                }
                Some(false) => {
                    if let OwnedFrame::Error(e) = &frame {
                        log::warn!("redis events: {e}");
                    }
                }
                None => {}
            }
        }
    }

    fn read_more(&mut self) {
        let last = self.last.clone();
        let sent = self.conn.command(&[
            b"XREAD",
            b"BLOCK",
            BLOCK_MS,
            b"COUNT",
            COUNT,
            b"STREAMS",
            b"ll:events",
            last.as_bytes(),
        ]);
        if sent.is_ok() {
            self.owed.push_back(true);
        }
    }

    /// `[[stream, [[id, [field, value, ...]], ...]]]`, or nil on a timeout.
    fn take(&mut self, frame: &OwnedFrame) {
        if let OwnedFrame::Error(e) = frame {
            log::warn!("redis events: {e}");
            return;
        }
        for stream in resp::array(frame) {
            let Some(entries) = resp::array(stream).get(1) else {
                continue;
            };
            for entry in resp::array(entries) {
                let parts = resp::array(entry);
                let Some(id) = parts.first().and_then(resp::text) else {
                    continue;
                };
                self.last = id.to_string();
                let fields = parts.get(1).map(resp::array).unwrap_or_default();
                if let Some(mut event) = event(id, fields) {
                    if let Some(node) = &event.node {
                        match self.nodes.iter().find(|n| n[..] == node[..]) {
                            Some(known) => event.node = Some(known.clone()),
                            None if self.nodes.len() < 4096 => self.nodes.push(node.clone()),
                            None => {}
                        }
                    }
                    self.events.push(event);
                }
            }
        }
    }
}

/// A stream entry `0-SEQ` with fields k, id, node, conn, peer, reason, at,
/// and `message` for a push event (`queued`, `expired`).
fn event(stream_id: &str, fields: &[OwnedFrame]) -> Option<PresenceEvent> {
    let seq = stream_id.strip_prefix("0-")?.parse().ok()?;
    let get = |name: &str| {
        fields
            .chunks(2)
            .find(|kv| kv.first().and_then(resp::text) == Some(name))
            .and_then(|kv| kv.get(1))
            .and_then(resp::text)
            .unwrap_or("")
            .to_string()
    };
    let kind = match get("k").as_str() {
        "online" => PresenceKind::Online,
        "suspect" => PresenceKind::Suspect,
        "alive" => PresenceKind::Alive,
        "offline" => PresenceKind::Offline,
        "replaced" => PresenceKind::Replaced,
        "queued" => PresenceKind::Queued,
        "expired" => PresenceKind::Expired,
        _ => return None,
    };
    let reason = get("reason");
    let message = get("message");
    Some(PresenceEvent {
        seq,
        kind,
        id: Rc::from(get("id")),
        node: Some(Rc::from(get("node"))),
        conn: get("conn").parse().unwrap_or(0),
        // A push event is about no connection: no peer.
        peer: get("peer").parse().ok(),
        reason: static_reason(&reason),
        at: get("at").parse().unwrap_or(0),
        message: (!message.is_empty()).then(|| Rc::from(message)),
    })
}

/// Reasons are a closed set: the wire's close reasons, and the cluster's
/// `node-lost` and `closed`.
fn static_reason(reason: &str) -> Option<&'static str> {
    if reason.is_empty() {
        return None;
    }
    CloseReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(["node-lost", "closed"])
        .find(|r| *r == reason)
}
