//! What the admin API asks of the rest of the server. The admin API parses
//! HTTP, keeps its connections and renders JSON; everything it reports or
//! changes goes through this trait, which the server's `Core` implements.

use std::rc::Rc;

use crate::admin::idempotency::Fingerprint;
use crate::admin::AdminRef;
use crate::clock::Micros;
use crate::presence::PresenceEvent;
use crate::server::ConnRef;

/// An online client as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub id: Rc<str>,
    pub peer: String,
    /// Unix milliseconds.
    pub connected_at: u64,
    /// `None` for a client on another node (only its node knows).
    pub last_seen_ms_ago: Option<u64>,
    /// Cluster mode: the node the client is on.
    pub node: Option<Rc<str>>,
    /// The connection's generation: tells two connections of one id apart.
    pub conn: u32,
    pub suspect: bool,
}

/// One page of `GET /clients`.
#[derive(Debug, Clone)]
pub struct ClientsPage {
    pub clients: Vec<ClientView>,
    /// The cursor of the next page, when there is one.
    pub next: Option<Rc<str>>,
    pub online: usize,
    /// The presence event this page is consistent with.
    pub seq: u64,
}

/// How a push was taken.
#[derive(Debug, Clone)]
pub enum Pushed {
    /// Handed to the client's connection.
    Sent { id: Rc<str>, target: ConnRef },
    /// Held for the client until it logs in, or until it expires.
    Queued { id: Rc<str> },
    /// Cluster mode: handed to the client's connection on another node.
    Forwarded { id: Rc<str> },
}

/// Cluster mode: what the admin API asks of the whole cluster. The answer
/// comes later ([`Answer`]), through `Admin::answer`.
#[derive(Debug, Clone)]
pub enum Question {
    Client(String),
    Clients {
        after: Option<String>,
        limit: usize,
    },
    Kick(String),
    Push {
        to: String,
        body: Vec<u8>,
        queue_ttl_ms: Option<u64>,
        /// Its `Idempotency-Key`: the cluster's memory of answers is asked
        /// first (a repeat may come through any node).
        key: Option<Keyed>,
    },
    Broadcast {
        body: Vec<u8>,
        key: Option<Keyed>,
    },
    Receipt(String),
}

/// A request's `Idempotency-Key` and what the request was.
#[derive(Debug, Clone)]
pub struct Keyed {
    pub key: String,
    pub fingerprint: Fingerprint,
}

/// The cluster already knows a request's `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repeat {
    /// Answered before: this again.
    Replay { status: u16, body: String },
    /// The first request has no final answer yet (409).
    InProgress,
    /// The key was used for another request (422).
    Reused,
}

/// The cluster's answer to a [`Question`].
#[derive(Debug, Clone)]
pub enum Answer {
    Client(String, Option<ClientView>),
    Clients(ClientsPage),
    Kicked(String, bool),
    Pushed(Result<Pushed, Refused>),
    /// Push id, recipients on the node that took it, nodes it reached.
    Broadcast(Result<(Rc<str>, usize, usize), Refused>),
    Receipt(String, Option<ReceiptView>),
    /// A keyed push or broadcast the cluster answered before (or is
    /// answering): nothing was done again.
    Repeat(Repeat),
    /// Redis cannot be reached: 503 `cluster-unavailable`.
    Unavailable,
}

/// A push or broadcast the server refused, as an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub error: &'static str,
    pub detail: String,
}

/// A push's receipt as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ReceiptView {
    pub to: Rc<str>,
    pub status: &'static str,
    pub created_at: u64,
    pub sent_at: Option<u64>,
    pub acked_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub recipients: Option<usize>,
    /// Times an at-least-once push was sent again.
    pub redelivered: u32,
}

/// Where a new presence stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// Replay from this event (the ring still holds everything missed).
    Replay { from: u64 },
    /// Live from the next event.
    Live { next: u64 },
    /// What the consumer missed is gone: it must take a new snapshot.
    Reset { last: u64 },
}

/// Numbers the admin API reports about itself in `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminGauges {
    pub connections: usize,
    pub subscribers: usize,
}

pub trait Backend {
    /// This iteration's time, in loop microseconds.
    fn now(&self) -> Micros;
    /// Unix milliseconds of a loop time.
    fn unix_ms(&self, at: Micros) -> u64;

    /// The Prometheus text of every counter and gauge.
    fn metrics(&self, admin: AdminGauges) -> String;
    fn count_request(&mut self, status: u16);
    fn count_admin_bytes(&mut self, bytes: usize);

    fn client(&self, id: &str) -> Option<ClientView>;
    fn clients(&mut self, after: Option<&str>, limit: usize) -> ClientsPage;
    /// Ends `id`'s connection with `<bye reason="kicked"/>`; false if it is
    /// not online.
    fn kick(&mut self, id: &str) -> bool;

    /// Pushes `body` (UTF-8 text) to `to`: sent when it is online (and has no backlog),
    /// held for `queue_ttl_ms` when asked (and while a backlog drains),
    /// refused otherwise. With `queue_ttl_ms` it is at-least-once: kept
    /// after it is sent until acked, and sent again after the client's next
    /// welcome if the connection ends first.
    fn push(&mut self, to: &str, body: &[u8], queue_ttl_ms: Option<u64>)
        -> Result<Pushed, Refused>;
    /// Sends `body` to every client logged in now (in slices, after this
    /// returns); returns the push id and how many clients that is.
    fn broadcast(&mut self, body: &[u8]) -> Result<(Rc<str>, usize), Refused>;
    /// Answers `admin` when `target` acks `message`, or at `until`.
    fn await_ack(&mut self, message: &Rc<str>, target: ConnRef, admin: AdminRef, until: Micros);
    fn cancel_wait(&mut self, message: &str);
    fn receipt(&self, message: &str) -> Option<ReceiptView>;

    /// Cluster mode (questions go to [`Backend::ask`]).
    fn is_clustered(&self) -> bool {
        false
    }
    /// Cluster mode: asks the cluster; the answer comes later through
    /// `Admin::answer`. False standalone: answer now with the methods
    /// above.
    fn ask(&mut self, _admin: AdminRef, _question: Question) -> bool {
        false
    }
    /// Answers `admin` when the client on another node acks `message`, or
    /// at `until`.
    fn await_remote_ack(&mut self, _message: &Rc<str>, _admin: AdminRef, _until: Micros) {}
    /// Cluster mode: the answer to a request with an `Idempotency-Key`,
    /// kept for the whole cluster; `waiting`: provisional while the push's
    /// ack is waited for (this long at most).
    fn remember_answer(
        &mut self,
        _keyed: &Keyed,
        _status: u16,
        _body: &str,
        _waiting: Option<std::time::Duration>,
    ) {
    }

    /// Starts keeping events for resuming consumers and says where a stream
    /// that last saw `last_event_id` starts.
    fn stream_from(&mut self, last_event_id: Option<u64>) -> StreamStart;
    /// Event `seq`, while the ring keeps it.
    fn event(&self, seq: u64) -> Option<&PresenceEvent>;
    fn last_event(&self) -> u64;
}
