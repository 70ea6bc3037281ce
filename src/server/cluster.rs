//! Cluster mode, the loop's side: what `Core` does with what the cluster
//! learned (a message or push for a local client, an ack, a kick, a
//! `replaced`, an event from the stream, an answer from Redis), and the
//! hooks login, close, ack and routing call. Standalone, `ClusterState`
//! is empty and none of this runs.
//!
//! Questions to Redis and to other nodes are `Ask`s, numbered; their
//! answers come back through the cluster's inbox, after the batch of
//! events, and an admin request waiting for one is answered through the
//! same deferred list acks use (`take_answers` → `Admin::answer`).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::warn;
use redis_protocol::resp2::types::OwnedFrame;

use crate::admin::{AdminRef, Answer, Backend};
use crate::cluster::notes::Note;
use crate::cluster::{resp, Inbound};
use crate::presence::PresenceKind;
use crate::server::conn::{CloseReason, ConnRef};
use crate::server::core::Core;
use lifeline_wire::{self as wire, ErrorCode};

/// A question to another node (a forwarded push, a kick) that has no
/// answer by then is answered 503.
pub(super) const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Forwarded pushes whose ack this node relays, at most (oldest forgotten).
const MAX_FORWARDED: usize = 100_000;

/// What an answer under a number is for.
pub(super) enum Ask {
    /// A `<msg>` published to another node: nobody there → `offline`.
    Msg {
        sender: ConnRef,
        id: Option<Box<str>>,
    },
    /// Pushes held in Redis for a client that just logged in here.
    Take { conn: ConnRef, id: Rc<str> },
    /// Admin questions (see `cluster_admin.rs`).
    Admin(AdminRef, crate::server::cluster_admin::AdminAsk),
}

#[derive(Default)]
pub struct ClusterState {
    /// This node's id; `None` standalone.
    pub(super) node: Option<Rc<str>>,
    next_q: u64,
    pub(super) asks: HashMap<u64, Ask>,
    /// When asks that wait on another node give up, in order.
    deadlines: VecDeque<(Instant, u64)>,
    pub(super) answers: Vec<(AdminRef, Answer)>,
    /// Pushes forwarded here, by id: the node that waits for the ack and
    /// the connection that must send it.
    pub(super) forwarded: HashMap<Rc<str>, (String, ConnRef)>,
    forwarded_order: VecDeque<Rc<str>>,
    /// Keys of keyed admin requests this node made pending in Redis, by
    /// the request (see `cluster_idem.rs`): key and owner.
    pub(super) keyed_owned: HashMap<AdminRef, (String, String)>,
    owners: u64,
    /// Acks that came in the same batch as the push's `sent`, before the
    /// admin request began to wait for them (a few, bounded).
    early_acks: VecDeque<String>,
    inbox: Vec<Inbound>,
}

impl ClusterState {
    /// A fresh owner number for a pending `Idempotency-Key`.
    pub(super) fn next_owner(&mut self) -> u64 {
        self.owners += 1;
        self.owners
    }

    pub(super) fn number(&mut self, ask: Ask) -> u64 {
        self.next_q += 1;
        self.asks.insert(self.next_q, ask);
        self.next_q
    }

    fn early_ack(&mut self, mid: String) {
        if self.early_acks.len() >= 1024 {
            self.early_acks.pop_front();
        }
        self.early_acks.push_back(mid);
    }

    /// Whether `mid`'s ack already came (and forgets it).
    pub(super) fn take_early_ack(&mut self, mid: &str) -> bool {
        match self.early_acks.iter().position(|m| m == mid) {
            Some(i) => {
                self.early_acks.remove(i);
                true
            }
            None => false,
        }
    }

    pub(super) fn expect_by(&mut self, q: u64, now: Instant) {
        self.deadlines.push_back((now + ASK_TIMEOUT, q));
    }

    /// A push forwarded by `origin` was sent on `target`: its ack goes back
    /// there.
    pub(super) fn remember_forwarded(&mut self, mid: Rc<str>, origin: &str, target: ConnRef) {
        if self.forwarded.len() >= MAX_FORWARDED {
            if let Some(old) = self.forwarded_order.pop_front() {
                self.forwarded.remove(&old);
            }
        }
        self.forwarded_order.push_back(mid.clone());
        self.forwarded.insert(mid, (origin.to_string(), target));
    }
}

impl Core {
    pub(super) fn node_id(&self) -> Option<Rc<str>> {
        self.cluster_state.node.clone()
    }

    /// Admin answers ready for `Admin::answer`.
    pub fn has_answers(&self) -> bool {
        !self.cluster_state.answers.is_empty()
    }

    pub fn take_answers(&mut self) -> Vec<(AdminRef, Answer)> {
        std::mem::take(&mut self.cluster_state.answers)
    }

    /// When the registry next needs the loop.
    pub fn registry_next_wake(&self) -> Option<Instant> {
        let asks = self.cluster_state.deadlines.front().map(|(at, _)| *at);
        [self.registry.next_wake(), asks]
            .into_iter()
            .flatten()
            .min()
    }

    /// The registry's timers and its one write per iteration.
    pub fn registry_on_time(&mut self, now: Instant) {
        self.registry.on_time(now);
    }

    /// Acts on what the cluster learned since the last call.
    pub fn cluster_tick(&mut self, now: Instant) {
        let Some(cluster) = self.registry.shared() else {
            return;
        };
        let mut inbox = std::mem::take(&mut self.cluster_state.inbox);
        cluster.take_inbox(&mut inbox);
        for item in inbox.drain(..) {
            match item {
                Inbound::Note(note) => self.on_note(note, now),
                Inbound::Replaced(conn) => self.end(conn, CloseReason::Replaced),
                Inbound::Reassert => self.reassert(),
                Inbound::Event(event) => self.presence.record_numbered(event),
                Inbound::Answer(q, frame) => self.on_answer(q, frame, now),
                Inbound::Take(id) => self.take_for(&id),
                Inbound::Expired(n) => self.pushes.stats.expired += n,
            }
        }
        self.cluster_state.inbox = inbox;
        while let Some(&(at, q)) = self.cluster_state.deadlines.front() {
            if at > now {
                break;
            }
            self.cluster_state.deadlines.pop_front();
            if let Some(Ask::Admin(admin, _)) = self.cluster_state.asks.remove(&q) {
                self.answer(admin, Answer::Unavailable);
            }
        }
    }

    fn on_answer(&mut self, q: u64, frame: Option<OwnedFrame>, now: Instant) {
        let Some(ask) = self.cluster_state.asks.remove(&q) else {
            return;
        };
        match ask {
            Ask::Msg { sender, id } => {
                let code = match frame.as_ref().and_then(resp::int) {
                    Some(0) => ErrorCode::Offline,
                    Some(_) => return, // delivered, or bounced later
                    None => ErrorCode::Unavailable,
                };
                self.refuse_msg(sender, id.as_deref(), code);
            }
            Ask::Take { conn, id } => {
                if let Some(frame) = frame {
                    self.deliver_taken(conn, &id, &frame);
                }
            }
            Ask::Admin(admin, ask) => self.on_admin_answer(q, admin, ask, frame, now),
        }
    }

    /// `<error code="offline|unavailable" ref=MID>` to a sender.
    pub(super) fn refuse_msg(&mut self, sender: ConnRef, id: Option<&str>, code: ErrorCode) {
        if !self.clients.is_live(sender) {
            return;
        }
        let text = match code {
            ErrorCode::Unavailable => "the recipient's node cannot be reached now; try again",
            _ => "the recipient is not online",
        };
        self.metrics.error_sent(code);
        self.send_or_end(sender, |out| wire::encode_error(out, code, id, text));
    }

    /// A `<msg>` for a client on `node`: through that node's channel.
    pub(super) fn forward_msg(
        &mut self,
        sender: ConnRef,
        from: &str,
        to: &str,
        id: Option<&str>,
        body: &str,
        node: &str,
    ) {
        let Some(origin) = self.node_id() else {
            return;
        };
        let note = Note::Msg {
            from: from.to_string(),
            to: to.to_string(),
            id: id.map(str::to_string),
            body: body.to_string(),
            origin: origin.to_string(),
            sender: (sender.key, sender.generation),
        };
        let q = self.cluster_state.number(Ask::Msg {
            sender,
            id: id.map(Into::into),
        });
        if let Some(cluster) = self.registry.shared() {
            cluster.publish(Some(node), &note, Some(q));
        }
    }

    fn on_note(&mut self, note: Note, now: Instant) {
        match note {
            Note::Msg {
                from,
                to,
                id,
                body,
                origin,
                sender,
            } => match self
                .registry
                .local(&to)
                .filter(|&c| self.clients.is_live(c))
            {
                Some(target) => {
                    self.metrics.messages_routed += 1;
                    self.send_or_end(target, |out| {
                        wire::encode_msg(out, &from, id.as_deref(), &body)
                    });
                }
                None => self.tell(&origin, &Note::Bounce { sender, id }),
            },
            Note::Bounce { sender, id } => {
                let sender = ConnRef {
                    key: sender.0,
                    generation: sender.1,
                };
                self.refuse_msg(sender, id.as_deref(), ErrorCode::Offline);
            }
            Note::Push {
                to,
                mid,
                frame,
                origin,
                q,
                exp,
            } => {
                let frame = frame.into_bytes();
                let outcome = self.deliver_forwarded(&to, &mid, frame, &origin, exp);
                let outcome = outcome.to_string();
                self.tell(&origin, &Note::Pushed { q, outcome });
            }
            Note::Take { id } => self.take_for(&Rc::from(id)),
            Note::Acked { mid } => {
                if !self.pushes.remote_acked(&mid) {
                    self.cluster_state.early_ack(mid);
                }
            }
            Note::Kick { id, origin, q } => {
                let ok = self.kick(&id);
                self.tell(&origin, &Note::Kicked { q, ok });
            }
            Note::Broadcast { mid, frame, origin } => {
                // Sent in slices, as this node's own (server/fanout.rs).
                if !self.accept_remote_broadcast(&Rc::from(mid.as_str()), frame.into_bytes()) {
                    warn!(
                        "cluster: broadcast {mid} from {origin} dropped: {} broadcasts are \
                         still being sent here",
                        super::fanout::MAX_QUEUED
                    );
                    if let Some(cluster) = self.registry.shared() {
                        cluster.stats.broadcasts_dropped += 1;
                    }
                }
            }
            Note::Pushed { q, outcome } => self.on_pushed(q, &outcome, now),
            Note::Kicked { q, ok } => {
                if let Some(Ask::Admin(admin, ask)) = self.cluster_state.asks.remove(&q) {
                    self.answer(admin, Answer::Kicked(ask.subject(), ok));
                }
            }
            Note::Replaced { .. } => {} // handled by the cluster itself
        }
    }

    /// Publishes a note to one node, nobody waiting for a count.
    pub(super) fn tell(&mut self, node: &str, note: &Note) {
        if let Some(cluster) = self.registry.shared() {
            cluster.publish(Some(node), note, None);
        }
    }

    /// Cluster mode: a presence event goes to the cluster's stream (every
    /// node's subscribers get it from there). True when it was taken.
    pub(super) fn cluster_event(
        &mut self,
        kind: PresenceKind,
        id: &str,
        conn: ConnRef,
        peer: &str,
        reason: Option<&str>,
        at: u64,
    ) -> bool {
        let Some(cluster) = self.registry.shared() else {
            return false;
        };
        if cluster.is_up() {
            cluster.event(
                kind.as_str(),
                id,
                conn.generation,
                peer,
                reason.unwrap_or(""),
                at,
            );
        }
        true
    }

    /// Shutting down: this node leaves the cluster's liveness set, and what
    /// is queued for Redis is written once.
    pub fn leave_cluster(&mut self) {
        if let Some(cluster) = self.registry.shared() {
            cluster.leave();
        }
        self.registry.on_time(Instant::now());
    }

    /// Redis is (back): every local client goes back into presence.
    fn reassert(&mut self) {
        let online = self.registry.page(None, usize::MAX);
        let mut clients = Vec::with_capacity(online.len());
        let Some(node) = self.node_id() else {
            return;
        };
        for (id, conn) in online {
            if let Some(c) = self.clients.get(conn) {
                let since = self.clock.unix_ms(c.connected_at);
                let value = format!(
                    "{node}\u{1f}{}\u{1f}{since}\u{1f}{}",
                    conn.generation, c.peer
                );
                clients.push((id, value));
            }
        }
        if let Some(cluster) = self.registry.shared() {
            cluster.reassert(clients);
        }
    }

    pub(super) fn render_cluster_metrics(&self, out: &mut String) {
        self.registry.render_metrics(out);
    }
}
