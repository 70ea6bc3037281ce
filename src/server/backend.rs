//! The admin API's view of the server: `Core` as its [`Backend`].

use std::rc::Rc;

use crate::admin::{
    AdminGauges, AdminRef, Backend, ClientView, ClientsPage, Keyed, Pushed, Question, ReceiptView,
    Refused, StreamStart,
};
use crate::clock::Micros;
use crate::metrics::Gauges;
use crate::offline::{Held, QueueFull};
use crate::presence::{PresenceEvent, PresenceKind, Resume};
use crate::receipts::Status;
use crate::server::conn::{CloseReason, ConnRef};
use crate::server::core::Core;
use crate::server::outbound::Prepared;
use lifeline_wire as wire;

impl Core {
    pub(super) fn view(&self, id: &Rc<str>, conn: ConnRef) -> Option<ClientView> {
        let c = self.clients.get(conn)?;
        let now = self.clock.now_us();
        Some(ClientView {
            id: id.clone(),
            peer: c.peer.to_string(),
            connected_at: self.clock.unix_ms(c.connected_at),
            last_seen_ms_ago: Some(now.saturating_sub(c.last_seen) / 1000),
            node: self.node_id(),
            conn: c.generation,
            suspect: c.session().is_some_and(|s| s.suspect),
        })
    }

    /// `<msg from="admin" id="MID">escaped text</msg>`, refused when the
    /// body is not UTF-8 or the frame would pass `max_frame`.
    pub(super) fn encode_push(&self, message: &str, body: &[u8]) -> Result<Vec<u8>, Refused> {
        let text = std::str::from_utf8(body).map_err(|_| Refused {
            status: 400,
            error: "bad-body",
            detail: "the body must be UTF-8 text".to_string(),
        })?;
        let mut frame = Vec::new();
        wire::encode_msg(
            &mut frame,
            "admin",
            Some(message),
            &quick_xml::escape::escape(text),
        );
        if frame.len() > self.config.max_frame {
            return Err(Refused {
                status: 413,
                error: "too-large",
                detail: format!(
                    "the message frame would be {} bytes; max_frame is {}",
                    frame.len(),
                    self.config.max_frame
                ),
            });
        }
        Ok(frame)
    }
}

pub(super) fn queue_full(full: QueueFull) -> Refused {
    Refused {
        status: 507,
        error: "queue-full",
        detail: full.to_string(),
    }
}

/// `503 client-busy`: the client's outbound buffer is full.
pub(super) fn busy(to: &str) -> Refused {
    Refused {
        status: 503,
        error: "client-busy",
        detail: format!("client {to:?} has more than max_outbound bytes queued"),
    }
}

fn not_online(id: &str) -> Refused {
    Refused {
        status: 404,
        error: "offline",
        detail: format!("client {id:?} is not online"),
    }
}

impl Backend for Core {
    fn now(&self) -> Micros {
        self.clock.now_us()
    }

    fn unix_ms(&self, at: Micros) -> u64 {
        self.clock.unix_ms(at)
    }

    fn metrics(&self, admin: AdminGauges) -> String {
        let out = self.clients.outbound_stats();
        let (transports, outbound_buffered) = self.clients.census();
        let mut text = self.metrics.render(
            &Gauges {
                now_us: self.clock.now_us(),
                lateness_bound_seconds: crate::config_ops::lateness_bound(self.config.tick)
                    .as_secs_f64(),
                transports,
                outbound_buffered,
                queue_pushes: self.pushes.queued_pushes(),
                queue_bytes: self.pushes.queued_bytes(),
                receipts_held: self.pushes.receipts_held(),
                connections_open: self.clients.len(),
                clients_online: self.registry.local_len(),
                admin_connections: admin.connections,
                capacity: self.clients.capacity(),
                event_subscribers: admin.subscribers,
                ack_waits: self.pushes.waits(),
                frames_out: out.frames,
                bytes_out: out.bytes,
                pushes_delivered: out.pushes_delivered,
            },
            &self.pushes.stats,
        );
        self.render_tls_metrics(&mut text);
        self.render_cluster_metrics(&mut text);
        text
    }

    fn count_request(&mut self, status: u16) {
        self.metrics.admin_request(status);
    }

    fn count_admin_bytes(&mut self, bytes: usize) {
        self.metrics.admin_bytes_out += bytes as u64;
    }

    fn client(&self, id: &str) -> Option<ClientView> {
        let conn = self.registry.local(id)?;
        self.view(&Rc::from(id), conn)
    }

    fn clients(&mut self, after: Option<&str>, limit: usize) -> ClientsPage {
        let page = self.registry.page(after, limit + 1);
        let more = page.len() > limit;
        let clients = page
            .iter()
            .take(limit)
            .filter_map(|(id, conn)| self.view(id, *conn))
            .collect();
        let next = if more {
            page.get(limit - 1).map(|(id, _)| id.clone())
        } else {
            None
        };
        // Whoever takes a snapshot may stream from its `seq` next.
        self.presence.start_recording();
        ClientsPage {
            clients,
            next,
            online: self.registry.local_len(),
            seq: self.presence.last_seq(),
        }
    }

    fn kick(&mut self, id: &str) -> bool {
        match self.registry.local(id) {
            Some(conn) => {
                self.end(conn, CloseReason::Kicked);
                true
            }
            None => false,
        }
    }

    fn push(
        &mut self,
        to: &str,
        body: &[u8],
        queue_ttl_ms: Option<u64>,
    ) -> Result<Pushed, Refused> {
        // An online client still receiving its backlog gets new pushes
        // behind it, so that order holds.
        let backlog = self.pushes.holds(to);
        let online = self
            .registry
            .local(to)
            .filter(|&conn| self.clients.is_live(conn));
        let target = online.filter(|_| !backlog);
        // Asked for a queue time: held while offline, and kept once sent
        // until acked (handed back if the connection ends first).
        let at_least_once = queue_ttl_ms.is_some();
        let queue_ttl_ms = match (backlog, queue_ttl_ms) {
            (true, None) => Some(self.config.receipt_ttl.as_millis() as u64),
            (_, ttl) => ttl,
        };
        if target.is_none() && queue_ttl_ms.is_none() {
            return Err(not_online(to));
        }
        let message = self.pushes.new_id();
        let frame = self.encode_push(&message, body)?;
        let now = self.clock.now_us();
        let to: Rc<str> = Rc::from(to);
        let expires = now + queue_ttl_ms.unwrap_or(0) * 1000;
        let Some(target) = target else {
            // Offline (or behind a backlog), and the pusher asked to hold it.
            return match self
                .pushes
                .hold(&message, &to, frame, expires, at_least_once, now)
            {
                Ok(()) => {
                    if online.is_none() {
                        self.publish_push(PresenceKind::Queued, &to, &message);
                    }
                    Ok(Pushed::Queued { id: message })
                }
                Err(full) => Err(queue_full(full)),
            };
        };
        if at_least_once {
            self.pushes.admits(&to, frame.len()).map_err(queue_full)?;
        }
        if !self.clients.has_room(target, frame.len()) {
            return Err(busy(&to));
        }
        let mut frame = Prepared::new(frame);
        if self
            .clients
            .send_prepared(target, &mut frame, true)
            .is_err()
        {
            return Err(busy(&to));
        }
        self.pushes.sent(&message, &to, now);
        if at_least_once {
            let held = Held {
                message: message.clone(),
                frame: frame.into_raw(),
                expires,
                at_least_once,
            };
            self.pushes.track(&to, target, held);
        }
        Ok(Pushed::Sent {
            id: message,
            target,
        })
    }

    fn broadcast(&mut self, body: &[u8]) -> Result<(Rc<str>, usize), Refused> {
        let message = self.pushes.new_id();
        let frame = self.encode_push(&message, body)?;
        // Sent in slices by the loop (server/fanout.rs) to the clients
        // logged in now.
        let recipients = self.registry.local_len();
        if recipients > 0 {
            self.accept_broadcast(&message, frame)?;
        }
        self.pushes.stats.accepted += recipients as u64;
        self.pushes
            .broadcast(&message, recipients, self.clock.now_us());
        Ok((message, recipients))
    }

    fn await_ack(&mut self, message: &Rc<str>, target: ConnRef, admin: AdminRef, until: Micros) {
        self.pushes.await_ack(message, admin, target, until);
    }

    fn cancel_wait(&mut self, message: &str) {
        self.pushes.cancel_wait(message);
    }

    fn receipt(&self, message: &str) -> Option<ReceiptView> {
        let now = self.clock.now_us();
        let r = self.pushes.receipt(message, now)?;
        // A held push past its time is expired even before the sweep says so.
        let status = match (r.status, r.expires) {
            (Status::Queued, Some(at)) if at <= now => Status::Expired,
            (status, _) => status,
        };
        let ms = |at: Option<Micros>| at.map(|at| self.clock.unix_ms(at));
        Some(ReceiptView {
            to: r.to.clone(),
            status: status.as_str(),
            created_at: self.clock.unix_ms(r.created),
            sent_at: ms(r.sent),
            acked_at: ms(r.acked),
            expires_at: ms(r.expires),
            recipients: r.recipients,
            redelivered: r.redelivered,
        })
    }

    fn is_clustered(&self) -> bool {
        self.cluster_state.node.is_some()
    }

    fn ask(&mut self, admin: AdminRef, question: Question) -> bool {
        self.ask_cluster(admin, question)
    }

    fn remember_answer(
        &mut self,
        keyed: &Keyed,
        status: u16,
        body: &str,
        waiting: Option<std::time::Duration>,
    ) {
        if self.cluster_state.node.is_some() {
            self.remember_keyed(keyed, status, body, waiting);
        }
    }

    fn await_remote_ack(&mut self, message: &Rc<str>, admin: AdminRef, until: Micros) {
        self.pushes.await_remote_ack(message, admin, until);
        if self.cluster_state.take_early_ack(message) {
            self.pushes.remote_acked(message);
        }
    }

    fn stream_from(&mut self, last_event_id: Option<u64>) -> StreamStart {
        self.presence.start_recording();
        let last = self.presence.last_seq();
        let Some(seen) = last_event_id else {
            return StreamStart::Live { next: last + 1 };
        };
        match self.presence.since(seen) {
            Resume::Events(events) => match events.first() {
                Some(first) => StreamStart::Replay { from: first.seq },
                None => StreamStart::Live { next: last + 1 },
            },
            Resume::Reset => StreamStart::Reset { last },
        }
    }

    fn event(&self, seq: u64) -> Option<&PresenceEvent> {
        self.presence.event(seq)
    }

    fn last_event(&self) -> u64 {
        self.presence.last_seq()
    }
}
