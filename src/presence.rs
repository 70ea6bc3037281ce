//! Presence events: numbered in order, kept in a bounded ring for consumers
//! that resume (`Last-Event-ID`), and written as Server-Sent Events.
//!
//! Every event gets the next sequence number, whether or not anyone listens,
//! so a `/clients` snapshot can name the sequence it is consistent with. The
//! ring only starts keeping events once a consumer has asked for presence (a
//! snapshot or a stream): nobody can have missed the events before that, and
//! a fleet nobody watches pays no memory per login for them.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;

/// What happened to a client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Online,
    /// Silent for two intervals (a probe went unanswered).
    Suspect,
    /// A suspect client sent a frame again.
    Alive,
    Offline,
    /// This connection lost its id to a newer login; the id stays online.
    Replaced,
    /// A push for the client is held while it is offline (`queue_ttl_ms`),
    /// or went back to its queue when its connection ended unacked: the back
    /// end may fall back to the phone's OS push (APNs, FCM).
    Queued,
    /// A held push's time ran out before it could be delivered.
    Expired,
}

impl PresenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceKind::Online => "online",
            PresenceKind::Suspect => "suspect",
            PresenceKind::Alive => "alive",
            PresenceKind::Offline => "offline",
            PresenceKind::Replaced => "replaced",
            PresenceKind::Queued => "queued",
            PresenceKind::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PresenceEvent {
    pub seq: u64,
    pub kind: PresenceKind,
    pub id: Rc<str>,
    /// Cluster mode: the node the connection is on, or that took the push
    /// (standalone: `None`, and the field is left out of the event).
    pub node: Option<Rc<str>>,
    /// The connection's generation: tells two connections of one id apart
    /// (0 for a push event, which is about no connection).
    pub conn: u32,
    /// `None` for a push event.
    pub peer: Option<SocketAddr>,
    pub reason: Option<&'static str>,
    /// Unix milliseconds.
    pub at: u64,
    /// The push a `queued` or `expired` event is about.
    pub message: Option<Rc<str>>,
}

/// The numbered event log.
pub struct PresenceLog {
    last_seq: u64,
    ring: VecDeque<PresenceEvent>,
    capacity: usize,
    recording: bool,
    /// Events recorded since the subscribers were last sent theirs.
    fresh: Vec<PresenceEvent>,
}

/// Where a resuming consumer stands.
#[derive(Debug)]
pub enum Resume<'a> {
    /// Every event after the consumer's last one, in order.
    Events(Vec<&'a PresenceEvent>),
    /// Events it needs are gone (or it names a sequence this process never
    /// issued): it must take a new snapshot.
    Reset,
}

impl PresenceLog {
    /// `first_seq`: the number before this process's first event. Starting
    /// from the process's start time (in microseconds since 1970) keeps
    /// numbers increasing across restarts, so a consumer resuming with a
    /// number from an earlier process is told to reset instead of being
    /// handed this process's events as if they followed its own. (At about
    /// 1.8e15 they stay exact in a JavaScript number.)
    pub fn new(capacity: usize, first_seq: u64) -> PresenceLog {
        PresenceLog {
            last_seq: first_seq,
            ring: VecDeque::new(),
            capacity,
            recording: false,
            fresh: Vec::new(),
        }
    }

    /// The sequence number of the latest event (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether events are kept for resuming consumers.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// The kept events, oldest first.
    pub fn ring(&self) -> impl Iterator<Item = &PresenceEvent> {
        self.ring.iter()
    }

    /// The log another process kept (an upgrade): its numbering goes on
    /// from `last_seq`, and consumers resume from its ring (the newest
    /// `capacity` of `ring`).
    pub fn restore(
        capacity: usize,
        last_seq: u64,
        recording: bool,
        ring: Vec<PresenceEvent>,
    ) -> PresenceLog {
        let skip = ring.len().saturating_sub(capacity);
        PresenceLog {
            last_seq,
            ring: ring.into_iter().skip(skip).collect(),
            capacity,
            recording,
            fresh: Vec::new(),
        }
    }

    /// From now on, keep events for resuming consumers.
    pub fn start_recording(&mut self) {
        self.recording = true;
    }

    /// Numbers the event and keeps it (in the ring while recording, and
    /// until the next [`PresenceLog::take_fresh`]); returns its number.
    pub fn record(&mut self, mut event: PresenceEvent) -> u64 {
        self.last_seq += 1;
        event.seq = self.last_seq;
        if self.recording && self.capacity > 0 {
            if self.ring.len() == self.capacity {
                self.ring.pop_front();
            }
            self.ring.push_back(event.clone());
        }
        self.fresh.push(event);
        self.last_seq
    }

    /// Keeps an event numbered elsewhere (cluster mode: by the cluster's
    /// stream, in stream order). A gap in the numbers (the stream was
    /// trimmed past what this node had read, or Redis restarted) empties
    /// the ring: resuming across a gap must reset.
    pub fn record_numbered(&mut self, event: PresenceEvent) {
        if event.seq <= self.last_seq && !self.ring.is_empty() {
            return; // read twice (a feed reconnect)
        }
        if self
            .ring
            .back()
            .is_some_and(|last| last.seq + 1 != event.seq)
        {
            self.ring.clear();
        }
        self.last_seq = event.seq;
        if self.capacity > 0 {
            if self.ring.len() == self.capacity {
                self.ring.pop_front();
            }
            self.ring.push_back(event.clone());
        }
        self.fresh.push(event);
    }

    /// Moves the events recorded since the last call into `into` (cleared
    /// first), in order.
    pub fn take_fresh(&mut self, into: &mut Vec<PresenceEvent>) {
        into.clear();
        std::mem::swap(&mut self.fresh, into);
    }

    /// Event `seq`, while the ring keeps it.
    pub fn event(&self, seq: u64) -> Option<&PresenceEvent> {
        let oldest = self.ring.front()?.seq;
        self.ring
            .get(usize::try_from(seq.checked_sub(oldest)?).ok()?)
    }

    /// The events after `last_seen`, or `Reset` when some are no longer kept.
    pub fn since(&self, last_seen: u64) -> Resume<'_> {
        if last_seen > self.last_seq {
            return Resume::Reset;
        }
        if last_seen == self.last_seq {
            return Resume::Events(Vec::new());
        }
        match self.ring.front() {
            Some(oldest) if oldest.seq <= last_seen + 1 => Resume::Events(
                self.ring
                    .iter()
                    .skip((last_seen + 1 - oldest.seq) as usize)
                    .collect(),
            ),
            _ => Resume::Reset,
        }
    }
}

/// One event as SSE: `id:` is the sequence number, so a browser's
/// EventSource resumes with `Last-Event-ID` by itself. A push event names
/// the client (`id`) and the push (`message`); the others name the
/// connection.
pub fn write_sse(out: &mut Vec<u8>, e: &PresenceEvent) {
    let mut data = match &e.message {
        Some(message) => serde_json::json!({
            "seq": e.seq,
            "event": e.kind.as_str(),
            "id": &*e.id,
            "message": &**message,
            "at": e.at,
        }),
        None => serde_json::json!({
            "seq": e.seq,
            "event": e.kind.as_str(),
            "id": &*e.id,
            "conn": e.conn,
            "peer": e.peer.map(|p| p.to_string()),
            "reason": e.reason,
            "at": e.at,
        }),
    };
    if let (Some(node), Some(map)) = (&e.node, data.as_object_mut()) {
        map.insert("node".to_string(), serde_json::json!(&**node));
    }
    let _ = write!(
        out,
        "id: {}\nevent: {}\ndata: {data}\n\n",
        e.seq,
        e.kind.as_str()
    );
}

/// Tells a consumer to re-snapshot: it cannot be brought up to date.
pub fn write_sse_reset(out: &mut Vec<u8>, last_seq: u64) {
    let _ = write!(
        out,
        "event: reset\ndata: {{\"seq\":{last_seq},\"detail\":\"events were lost; take a new GET /clients snapshot\"}}\n\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> PresenceEvent {
        PresenceEvent {
            seq: 0,
            kind: PresenceKind::Online,
            id: id.into(),
            node: None,
            conn: 1,
            peer: Some("127.0.0.1:1".parse().unwrap()),
            reason: None,
            at: 0,
            message: None,
        }
    }

    fn seqs(r: Resume<'_>) -> Option<Vec<u64>> {
        match r {
            Resume::Events(e) => Some(e.iter().map(|e| e.seq).collect()),
            Resume::Reset => None,
        }
    }

    #[test]
    fn resumes_from_the_ring_or_resets() {
        let mut log = PresenceLog::new(3, 0);
        log.record(event("before-anyone-listened"));
        log.start_recording();
        for id in ["a", "b", "c", "d"] {
            log.record(event(id));
        }
        assert_eq!(log.last_seq(), 5);
        // The ring holds 3..=5.
        assert_eq!(seqs(log.since(2)), Some(vec![3, 4, 5]));
        assert_eq!(seqs(log.since(4)), Some(vec![5]));
        assert_eq!(seqs(log.since(5)), Some(vec![]));
        assert_eq!(seqs(log.since(1)), None, "event 2 fell off the ring");
        assert_eq!(seqs(log.since(9)), None, "never issued");
        assert_eq!(log.event(3).map(|e| e.seq), Some(3));
        assert!(log.event(2).is_none() && log.event(6).is_none());
    }

    #[test]
    fn numbers_from_an_earlier_process_reset() {
        let mut earlier = PresenceLog::new(10, 1_000);
        earlier.start_recording();
        let last = earlier.record(event("a"));
        let mut later = PresenceLog::new(10, 2_000);
        later.start_recording();
        later.record(event("b"));
        assert!(matches!(later.since(last), Resume::Reset));
    }

    #[test]
    fn events_numbered_elsewhere_keep_the_ring_contiguous() {
        let mut log = PresenceLog::new(10, 0);
        let numbered = |seq| PresenceEvent { seq, ..event("c") };
        log.record_numbered(numbered(100));
        log.record_numbered(numbered(101));
        log.record_numbered(numbered(101)); // read twice: ignored
        assert_eq!(seqs(log.since(99)), Some(vec![100, 101]));
        // A gap (the stream was trimmed, Redis restarted): resuming across
        // it must reset.
        log.record_numbered(numbered(200));
        assert_eq!(seqs(log.since(101)), None);
        assert_eq!(seqs(log.since(199)), Some(vec![200]));
        assert_eq!(log.last_seq(), 200);
    }

    #[test]
    fn sse_is_byte_exact() {
        let mut log = PresenceLog::new(10, 0);
        log.record(event("x"));
        let mut fresh = Vec::new();
        log.take_fresh(&mut fresh);
        let mut out = Vec::new();
        write_sse(&mut out, &fresh[0]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id: 1\nevent: online\ndata: {\"at\":0,\"conn\":1,\"event\":\"online\",\"id\":\"x\",\"peer\":\"127.0.0.1:1\",\"reason\":null,\"seq\":1}\n\n"
        );
        let mut queued = event("bob");
        queued.kind = PresenceKind::Queued;
        queued.conn = 0;
        queued.peer = None;
        queued.message = Some("p-abc-7".into());
        log.record(queued);
        log.take_fresh(&mut fresh);
        let mut out = Vec::new();
        write_sse(&mut out, &fresh[0]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id: 2\nevent: queued\ndata: {\"at\":0,\"event\":\"queued\",\"id\":\"bob\",\"message\":\"p-abc-7\",\"seq\":2}\n\n"
        );
    }
}
