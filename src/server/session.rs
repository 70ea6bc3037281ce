//! What a client's frames do: heartbeats, login, messages, acks, goodbye;
//! and what the heartbeat rule does to a silent client (probe, suspect,
//! close). Each handler answers through the outbound path and returns the
//! connection's [`Fate`]; it never ends the connection it serves.

use std::rc::Rc;

use log::info;

use crate::offline::Held;
use crate::presence::PresenceKind;
use crate::registry::{Location, Lookup};
use crate::server::cluster_pushes::Kept;
use crate::server::conn::{CloseReason, ConnRef};
use crate::server::core::{Core, Fate, PendingMsg};
use crate::server::outbound::Prepared;
use crate::writeq::Flushed;
use lifeline_wire::{self as wire, ErrorCode, Frame};

impl Core {
    /// Serves one complete frame from `conn`.
    pub(super) fn on_frame(&mut self, conn: ConnRef, frame: Frame<'_>) -> Fate {
        self.metrics.frames_in += 1;
        self.heard(conn);
        match frame {
            Frame::Ping { seq } => {
                self.metrics.heartbeats_received += 1;
                self.reply(conn, |out| wire::encode_pong(out, seq));
                Fate::Keep
            }
            Frame::Pong { .. } => {
                self.metrics.heartbeats_received += 1;
                Fate::Keep
            }
            Frame::Login {
                id,
                token,
                exp,
                interval,
            } => self.login(conn, id, token, exp, interval),
            Frame::Msg { to, id, body } => match self.logged_in_id(conn) {
                Some(from) => {
                    self.route(conn, from, to, id, body);
                    Fate::Keep
                }
                None => self.refuse_not_logged_in(conn),
            },
            Frame::Ack { id } => match self.logged_in_id(conn) {
                Some(acker) => {
                    self.metrics.acks += 1;
                    self.pushes.on_ack(id, &acker, conn, self.clock.now_us());
                    if self.cluster_state.node.is_some() {
                        self.cluster_ack(id, &acker, conn);
                    }
                    Fate::Keep
                }
                None => self.refuse_not_logged_in(conn),
            },
            Frame::Bye => Fate::End(CloseReason::Bye),
            Frame::Unknown { name } => {
                self.error_reply(
                    conn,
                    ErrorCode::UnknownFrame,
                    Some(name),
                    "this element is not part of protocol version 1",
                );
                Fate::Keep
            }
        }
    }

    /// Records a sign of life (a complete frame, or a WebSocket Ping or
    /// Pong): the whole of liveness bookkeeping, and no timer operation. A
    /// suspect client is online again.
    pub(super) fn heard(&mut self, conn: ConnRef) {
        let now = self.clock.now_us();
        let Some(c) = self.clients.get_mut(conn) else {
            return;
        };
        if let Some(id) = c.heard(now).cloned() {
            let peer = c.peer;
            self.publish(PresenceKind::Alive, &id, conn, peer, None);
        }
    }

    fn logged_in_id(&self, conn: ConnRef) -> Option<Rc<str>> {
        self.clients
            .get(conn)
            .and_then(|c| c.session())
            .map(|s| s.id.clone())
    }

    /// Answers the connection being served. Its replies are written in one
    /// call when it is done, where the outbound limit is applied.
    pub(super) fn reply(&mut self, conn: ConnRef, encode: impl FnOnce(&mut Vec<u8>)) {
        let _ = self.clients.send(conn, encode);
    }

    /// Answers `<error code ref>text</error>`.
    pub(super) fn error_reply(
        &mut self,
        conn: ConnRef,
        code: ErrorCode,
        reference: Option<&str>,
        text: &str,
    ) {
        self.metrics.error_sent(code);
        self.reply(conn, |out| wire::encode_error(out, code, reference, text));
    }

    fn refuse_not_logged_in(&mut self, conn: ConnRef) -> Fate {
        self.error_reply(
            conn,
            ErrorCode::NotLoggedIn,
            None,
            "log in before sending msg or ack",
        );
        Fate::End(CloseReason::ProtocolError)
    }

    fn login(
        &mut self,
        conn: ConnRef,
        id: &str,
        token: Option<&str>,
        exp: Option<u64>,
        interval: Option<u64>,
    ) -> Fate {
        let Some(c) = self.clients.get(conn) else {
            return Fate::Keep;
        };
        let peer = c.peer;
        if let Some(current) = c.id().cloned() {
            self.error_reply(
                conn,
                ErrorCode::AlreadyLoggedIn,
                Some(&current),
                "this connection is already logged in",
            );
            return Fate::Keep;
        }
        if let Some(auth) = &self.config.auth {
            let now_s = self.clock.unix_ms(self.clock.now_us()) / 1000;
            if let Err(refusal) = auth.check(id, token, exp, now_s) {
                info!("login refused for {id} from {peer}: {refusal}");
                self.error_reply(conn, ErrorCode::AuthFailed, Some(id), &refusal.to_string());
                return Fate::End(CloseReason::ProtocolError);
            }
        }
        if let Some(refusal) = self.cert_refuses(conn, id) {
            info!("login refused for {id} from {peer}: {refusal}");
            self.error_reply(conn, ErrorCode::AuthFailed, Some(id), &refusal);
            return Fate::End(CloseReason::ProtocolError);
        }
        let id: Rc<str> = Rc::from(id);
        // The interval asked for, clamped into the operator's range; the
        // heartbeat rule reads it when this connection's entry comes due.
        let interval_ms = self.config.login.grant_ms(interval, self.config.heartbeat);
        if let Some(c) = self.clients.log_in(conn, id.clone()) {
            c.interval_ms = u32::try_from(interval_ms).unwrap_or(u32::MAX);
        }
        self.metrics.logins += 1;
        let phase_ms = self.advice.phase_ms(interval_ms);
        let misses = self.config.misses;
        self.reply(conn, |out| {
            wire::encode_welcome(out, &id, interval_ms, misses, phase_ms)
        });
        if let Some(previous) = self.registry.claim(&id, conn) {
            self.end(previous, CloseReason::Replaced);
        }
        if self.cluster_state.node.is_some() {
            self.cluster_login(conn, &id);
        }
        info!(id = &*id, peer:% = peer, conn = conn.generation; "online");
        self.publish(PresenceKind::Online, &id, conn, peer, None);
        Fate::Keep
    }

    fn route(&mut self, sender: ConnRef, from: Rc<str>, to: &str, id: Option<&str>, body: &str) {
        match self.registry.locate(to) {
            Lookup::Ready(Location::Here(target)) if self.clients.is_live(target) => {
                self.metrics.messages_routed += 1;
                self.send_or_end(target, |out| wire::encode_msg(out, &from, id, body));
            }
            Lookup::Pending(ticket) => {
                self.pending.insert(
                    ticket,
                    PendingMsg {
                        sender,
                        from,
                        to: to.into(),
                        id: id.map(Into::into),
                        body: body.into(),
                    },
                );
            }
            // Cluster mode: through the other node's channel.
            Lookup::Ready(Location::Elsewhere(node)) => {
                self.forward_msg(sender, &from, to, id, body, &node)
            }
            Lookup::Ready(Location::Unavailable) => self.error_reply(
                sender,
                ErrorCode::Unavailable,
                id,
                "the recipient's node cannot be reached now; try again",
            ),
            Lookup::Ready(_) => self.error_reply(
                sender,
                ErrorCode::Offline,
                id,
                "the recipient is not online",
            ),
        }
    }

    /// Delivers the pushes held for a logged-in client, in the order they
    /// were accepted: right after its welcome, and as far as its outbound
    /// limit allows, writing as it goes; the rest follow when the socket
    /// drains (its writable edge comes back here).
    pub(super) fn deliver_held(&mut self, conn: ConnRef) {
        let Some(id) = self.logged_in_id(conn) else {
            return;
        };
        if !self.pushes.holds(&id) {
            return;
        }
        let now = self.clock.now_us();
        let mut held = self.pushes.take_held(&id);
        while let Some(h) = held.pop_front() {
            if h.expires <= now {
                self.pushes.held_expired(&id, &h.message);
                continue;
            }
            if !self.clients.has_room(conn, h.frame.len()) {
                // Write what is queued; a full socket ends this round.
                match self.clients.flush(conn) {
                    Ok(Flushed::Done) => {}
                    Ok(Flushed::Blocked) => {
                        held.push_front(h);
                        break;
                    }
                    Err(failed) => {
                        held.push_front(h);
                        self.pushes.put_back(&id, held);
                        return self.end(conn, failed.reason());
                    }
                }
            }
            let Held {
                message,
                frame,
                expires,
                at_least_once,
            } = h;
            let mut prepared = Prepared::new(frame);
            let sent = self.clients.send_prepared(conn, &mut prepared, true);
            let h = Held {
                message,
                frame: prepared.into_raw(),
                expires,
                at_least_once,
            };
            if sent.is_err() {
                held.push_front(h);
                break;
            }
            self.pushes.delivered(&h.message, now);
            if self.cluster_state.node.is_some() {
                // Out of Redis's queue, kept there until acked.
                let kept = Kept {
                    conn,
                    expires_ms: self.clock.unix_ms(h.expires),
                    frame: &h.frame,
                };
                self.cluster_sent(&h.message, &id, Some(kept));
            }
            if h.at_least_once {
                // Kept until acked; handed back if this connection ends first.
                self.pushes.track(&id, conn, h);
            }
        }
        self.pushes.put_back(&id, held);
        self.publish_expired();
    }

    /// Acts on the heartbeat rule's verdict for a silent client: a probe,
    /// and the suspect event once two intervals have passed.
    pub fn probe(&mut self, conn: ConnRef, seq: u64, suspect: bool) {
        let Some(c) = self.clients.get_mut(conn) else {
            return;
        };
        if suspect {
            if let Some(id) = c.suspect().cloned() {
                let peer = c.peer;
                self.publish(PresenceKind::Suspect, &id, conn, peer, None);
            }
        }
        let speaks_xml = self.clients.get(conn).is_some_and(|c| c.speaks_xml());
        if speaks_xml {
            self.metrics.probes_sent += 1;
            self.send_or_end(conn, |out| wire::encode_probe(out, seq));
        }
    }

    /// The heartbeat rule's last verdict: closed `late` microseconds after
    /// its deadline.
    pub fn timed_out(&mut self, conn: ConnRef, late: u64) {
        self.metrics
            .close_lateness(std::time::Duration::from_micros(late), self.clock.now_us());
        self.end(conn, CloseReason::Timeout);
    }
}
