//! The admin HTTP API, served by the same loop and slab as the clients.
//!
//! Requests are parsed from the connection's buffer ([`crate::http`]); every
//! handler runs to completion on the loop except a push with `wait_ack_ms`,
//! which parks the admin connection in `AdminPhase::AwaitingAck` until the
//! client's ack arrives or its wait ends (`Server::ack_deadlines`, checked every
//! loop iteration).

use std::io::{self, Read};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::TcpStream;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::conn::{AdminPhase, CloseReason, ConnRef, Flushed, Micros, Phase};
use crate::http::{self, HttpError, Method, Parsed, Request};
use crate::metrics::Gauges;
use crate::presence::{self, PresenceEvent, PresenceKind, Resume};
use crate::receipts::{Held, Receipt, Status};
use crate::server::Server;
use lifeline_wire as wire;

/// An admin connection silent this long is closed (event streams excepted).
pub const ADMIN_IDLE: Duration = Duration::from_secs(60);
/// Event streams get a comment this often, so dead subscribers and idle
/// proxies are found out.
const EVENTS_KEEPALIVE: Duration = Duration::from_secs(15);
/// A resume replay is queued this much at a time, as the socket drains.
const REPLAY_CHUNK: usize = 64 * 1024;
/// A lingering close gives up after this long without input.
const LINGER: Duration = Duration::from_secs(5);
/// ...or after discarding this much of a refused request.
const MAX_LINGER_DISCARD: usize = 64 << 20;
/// Admin connections beyond this are refused: the API is for a few back
/// ends, and they live in the descriptors reserved beside the clients'
/// (`config::FD_RESERVE`), so they can never take a client's place.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// Largest push or broadcast body (before XML escaping), and largest request body.
const MAX_BODY: usize = 1 << 20;
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
/// Longest a pusher may wait for an ack.
const MAX_WAIT_ACK_MS: u64 = 300_000;
/// Longest a push may wait for an offline client.
const MAX_QUEUE_TTL_MS: u64 = 7 * 24 * 3_600_000;

/// What handling a request left the admin connection to do.
enum Next {
    /// Keep reading requests (or stay in the phase the handler set).
    Continue,
    Close,
}

impl Server {
    pub(crate) fn accept_admin(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.admin_listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if self.admin_connections >= MAX_ADMIN_CONNECTIONS {
                        debug!("refusing admin connection from {peer}: too many");
                        continue;
                    }
                    self.admit_admin(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, most likely: retried with the client
                    // listener (edge-triggered, the pending request would
                    // otherwise wait for the next connection).
                    self.log_accept_error(&e, now);
                    self.accept_retry_at
                        .get_or_insert(now + Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    fn admit_admin(&mut self, stream: TcpStream, peer: std::net::SocketAddr, now: Instant) {
        let _ = stream.set_nodelay(true);
        let Some(conn) =
            self.insert_connection(stream, peer, Phase::Admin(AdminPhase::Requests), now)
        else {
            return;
        };
        self.admin_connections += 1;
        self.wheel.schedule(conn, now + ADMIN_IDLE);
    }

    pub(crate) fn on_admin_readable(&mut self, conn: ConnRef, now: Instant) {
        let key = conn.key as usize;
        let now_us = self.micros(now);
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut closed = false;
        while let Some(c) = self.conns.get_mut(key) {
            if c.generation != conn.generation {
                break;
            }
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    c.last_seen = now_us;
                    match &mut c.phase {
                        Phase::Admin(AdminPhase::Events { .. }) => {} // input is ignored
                        Phase::Admin(AdminPhase::Draining { discarded }) => {
                            *discarded += n;
                            if *discarded > MAX_LINGER_DISCARD {
                                closed = true;
                                break;
                            }
                        }
                        _ => {
                            c.inbound.extend_from_slice(&buf[..n]);
                            // Requests piled up behind a push that waits for its ack.
                            if c.inbound.len() > http::MAX_HEAD + MAX_BODY + 1024 {
                                closed = true;
                                break;
                            }
                            // Parse as data comes, so a refusal (413, 431)
                            // goes out before the rest of a huge request.
                            self.serve_admin(conn, now);
                        }
                    }
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        self.read_buf = buf;
        if closed {
            self.close(conn, CloseReason::PeerClosed, now);
        }
    }

    /// Serves the complete requests buffered on an admin connection, in order,
    /// stopping while a push waits for its ack.
    pub(crate) fn serve_admin(&mut self, conn: ConnRef, now: Instant) {
        let key = conn.key as usize;
        loop {
            if !self.is_live(conn) {
                return;
            }
            let c = &mut self.conns[key];
            if !matches!(c.phase, Phase::Admin(AdminPhase::Requests)) || c.inbound.is_empty() {
                break;
            }
            let inbound = std::mem::take(&mut c.inbound);
            self.response.clear();
            let (next, used) = match http::parse(&inbound, MAX_BODY + http::MAX_HEAD) {
                Ok(Parsed::Partial) => {
                    self.conns[key].inbound = inbound;
                    break;
                }
                Ok(Parsed::Complete { request, len }) => (self.handle(conn, &request, now), len),
                Err(e) => {
                    self.respond_http_error(&e);
                    (Next::Close, inbound.len())
                }
            };
            let c = &mut self.conns[key];
            let mut rest = inbound;
            bytes::Buf::advance(&mut rest, used);
            c.inbound = if rest.is_empty() {
                bytes::BytesMut::new()
            } else {
                rest
            };
            match c.send(&self.response, &mut self.metrics.admin_bytes_out) {
                Err(_) => {
                    self.close(conn, CloseReason::IoError, now);
                    return;
                }
                Ok(_) if matches!(next, Next::Close) => {
                    self.begin_draining(conn);
                    return;
                }
                Ok(_) => {}
            }
            // A resuming event stream starts its replay after the head.
            self.continue_replay(conn, now);
        }
    }

    /// Ends an admin connection gracefully: its queued response goes out in
    /// full, then the write side is shut (in `flush_admin`, or here when
    /// nothing is queued) and input is discarded until the peer closes.
    fn begin_draining(&mut self, conn: ConnRef) {
        let Some(c) = self.conns.get_mut(conn.key as usize) else {
            return;
        };
        c.phase = Phase::Admin(AdminPhase::Draining { discarded: 0 });
        c.inbound = bytes::BytesMut::new();
        if c.outbound.is_empty() {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn respond_http_error(&mut self, e: &HttpError) {
        let status = e.status();
        self.metrics.admin_request(status);
        let error = match status {
            431 => "headers-too-large",
            413 => "body-too-large",
            411 => "length-required",
            _ => "bad-request",
        };
        http::write_error(&mut self.response, status, error, &e.to_string(), false);
    }

    fn reply(&mut self, status: u16, body: serde_json::Value, keep_alive: bool) {
        self.metrics.admin_request(status);
        http::write_json(&mut self.response, status, &body, keep_alive);
    }

    fn reply_error(&mut self, status: u16, error: &str, detail: &str, keep_alive: bool) {
        self.metrics.admin_request(status);
        http::write_error(&mut self.response, status, error, detail, keep_alive);
    }

    fn authorized(&self, request: &Request<'_>) -> bool {
        let Some(token) = &self.config.admin_token else {
            return true;
        };
        let presented = request
            .authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        presented.ct_eq(token.as_slice()).into()
    }

    /// Routes one request; the response goes into `self.response`.
    fn handle(&mut self, conn: ConnRef, request: &Request<'_>, now: Instant) -> Next {
        let keep = request.keep_alive;
        let segments: Vec<String> = request
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(http::decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        if segments != ["healthz"] && !self.authorized(request) {
            self.reply_error(
                401,
                "unauthorized",
                "send Authorization: Bearer <LIFELINE_ADMIN_TOKEN>",
                keep,
            );
            return next(keep);
        }
        match (request.method, segments.as_slice()) {
            (Method::Get, ["healthz"]) => self.reply(200, json!({"status": "ok"}), keep),
            (Method::Get, ["metrics"]) => {
                self.metrics.admin_request(200);
                let text = self.metrics.render(&self.gauges());
                http::write_response(
                    &mut self.response,
                    200,
                    "text/plain; version=0.0.4",
                    text.as_bytes(),
                    keep,
                );
            }
            (Method::Get, ["clients"]) => self.list_clients(request, now),
            (Method::Get, ["clients", id]) => match self.client_json(id, now) {
                Some(body) => self.reply(200, body, keep),
                None => self.not_online(id, keep),
            },
            (Method::Post, ["clients", id, "push"]) => return self.push(conn, id, request, now),
            (Method::Post, ["broadcast"]) => self.broadcast(request),
            (Method::Get, ["messages", message]) => match self.receipt_json(message, now) {
                Some(body) => self.reply(200, body, keep),
                None => self.reply_error(
                    404,
                    "unknown-message",
                    &format!("no receipt for {message:?} (unknown, or older than LIFELINE_RECEIPT_TTL_MS)"),
                    keep,
                ),
            },
            (Method::Delete, ["clients", id]) => match self.registry.lookup(id) {
                Some(target) => {
                    self.close(target, CloseReason::Kicked, now);
                    self.metrics.admin_request(204);
                    http::write_response(&mut self.response, 204, "application/json", b"", keep);
                }
                None => self.not_online(id, keep),
            },
            (Method::Get, ["events"]) if request.method == Method::Get => {
                let last = request
                    .last_event_id
                    .map(str::to_string)
                    .or_else(|| http::query_param(request.query, "last_event_id"));
                match last.map(|v| v.parse::<u64>()) {
                    Some(Err(_)) => self.reply_error(
                        400,
                        "bad-last-event-id",
                        "Last-Event-ID must be a sequence number from an earlier event",
                        keep,
                    ),
                    Some(Ok(seq)) => {
                        self.subscribe(conn, Some(seq));
                        return Next::Continue;
                    }
                    None => {
                        self.subscribe(conn, None);
                        return Next::Continue;
                    }
                }
            }
            (_, ["healthz" | "metrics" | "clients" | "broadcast" | "events" | "messages", ..]) => self
                .reply_error(
                    405,
                    "method-not-allowed",
                    "see the README for each endpoint's method",
                    keep,
                ),
            _ => self.reply_error(404, "not-found", "no such endpoint", keep),
        }
        next(keep)
    }

    fn not_online(&mut self, id: &str, keep: bool) {
        self.reply_error(
            404,
            "offline",
            &format!("client {id:?} is not online"),
            keep,
        );
    }

    pub(crate) fn gauges(&self) -> Gauges {
        Gauges {
            connections_open: self.conns.len() - self.admin_connections,
            clients_online: self.registry.len(),
            admin_connections: self.admin_connections,
            timer_wheel_entries: self.wheel.len(),
            capacity: self.capacity,
            event_subscribers: self.subscribers.len(),
        }
    }

    fn client_json(&self, id: &str, now: Instant) -> Option<serde_json::Value> {
        let conn = self.registry.lookup(id)?;
        let c = self.conns.get(conn.key as usize)?;
        let now_us = self.micros(now);
        Some(json!({
            "id": id,
            "peer": c.peer.to_string(),
            "connected_at": self.unix_ms(c.connected_at),
            "last_seen_ms_ago": now_us.saturating_sub(c.last_seen) / 1000,
            "conn": c.generation,
            "state": if c.suspect { "suspect" } else { "online" },
        }))
    }

    fn list_clients(&mut self, request: &Request<'_>, now: Instant) {
        let keep = request.keep_alive;
        let limit = match http::query_param(request.query, "limit") {
            None => DEFAULT_PAGE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return self.reply_error(
                        400,
                        "bad-limit",
                        &format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                        keep,
                    )
                }
            },
        };
        let after = http::query_param(request.query, "after");
        let page = self.registry.page(after.as_deref(), limit + 1);
        let more = page.len() > limit;
        let clients: Vec<serde_json::Value> = page
            .iter()
            .take(limit)
            .filter_map(|(id, _)| self.client_json(id, now))
            .collect();
        let next = if more {
            page.get(limit - 1).map(|(id, _)| id.to_string())
        } else {
            None
        };
        // The loop is single-threaded: this page is exactly the online set
        // as of event `seq`; replaying the stream after `seq` brings it up to date.
        self.presence.start_recording();
        self.reply(
            200,
            json!({
                "clients": clients,
                "next": next,
                "online": self.registry.len(),
                "seq": self.presence.last_seq(),
            }),
            keep,
        );
    }

    /// Builds `<msg from="admin" id="MID">escaped text</msg>` into `self.frame`.
    fn encode_push(
        &mut self,
        message: &str,
        body: &[u8],
    ) -> Result<(), (u16, &'static str, String)> {
        let text = std::str::from_utf8(body)
            .map_err(|_| (400, "bad-body", "the body must be UTF-8 text".to_string()))?;
        self.frame.clear();
        wire::encode_msg(
            &mut self.frame,
            "admin",
            Some(message),
            &quick_xml::escape::escape(text),
        );
        if self.frame.len() > self.config.max_frame {
            return Err((
                413,
                "too-large",
                format!(
                    "the message frame would be {} bytes; max_frame is {}",
                    self.frame.len(),
                    self.config.max_frame
                ),
            ));
        }
        Ok(())
    }

    fn receipt_json(&self, message: &str, now: Instant) -> Option<serde_json::Value> {
        let r = self.receipts.get(message)?;
        let now_us = self.micros(now);
        // A held push past its time is expired even before the sweep says so.
        let status = match (r.status, r.expires) {
            (Status::Queued, Some(at)) if at <= now_us => Status::Expired,
            (status, _) => status,
        };
        let ms = |at: Option<Micros>| at.map(|at| self.unix_ms(at));
        Some(json!({
            "id": message,
            "to": &*r.to,
            "status": status.as_str(),
            "created_at": self.unix_ms(r.created),
            "sent_at": ms(r.sent),
            "acked_at": ms(r.acked),
            "expires_at": ms(r.expires),
        }))
    }

    fn new_push_id(&mut self) -> Rc<str> {
        self.pushes_issued += 1;
        Rc::from(format!("push-{}", self.pushes_issued))
    }

    fn push(&mut self, admin: ConnRef, id: &str, request: &Request<'_>, now: Instant) -> Next {
        let keep = request.keep_alive;
        let wait_ms = match http::query_param(request.query, "wait_ack_ms") {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms <= MAX_WAIT_ACK_MS => Some(ms),
                _ => {
                    self.reply_error(
                        400,
                        "bad-wait",
                        &format!("wait_ack_ms must be a whole number from 0 to {MAX_WAIT_ACK_MS}"),
                        keep,
                    );
                    return next(keep);
                }
            },
        };
        let queue_ttl_ms = match http::query_param(request.query, "queue_ttl_ms") {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if (1..=MAX_QUEUE_TTL_MS).contains(&ms) => Some(ms),
                _ => {
                    self.reply_error(
                        400,
                        "bad-queue-ttl",
                        &format!(
                            "queue_ttl_ms must be a whole number from 1 to {MAX_QUEUE_TTL_MS}"
                        ),
                        keep,
                    );
                    return next(keep);
                }
            },
        };
        // An online client still receiving its backlog gets new pushes
        // behind it, so that order holds.
        let backlog = self.offline.holds(id);
        let target = self.registry.lookup(id).filter(|_| !backlog);
        let queue_ttl_ms = match (backlog, queue_ttl_ms) {
            (true, None) => Some(self.config.receipt_ttl.as_millis() as u64),
            (_, ttl) => ttl,
        };
        if target.is_none() && queue_ttl_ms.is_none() {
            self.not_online(id, keep);
            return next(keep);
        }
        let message = self.new_push_id();
        if let Err((status, error, detail)) = self.encode_push(&message, request.body) {
            self.reply_error(status, error, &detail, keep);
            return next(keep);
        }
        let now_us = self.micros(now);
        let Some(target) = target else {
            // Offline, and the pusher asked to hold it.
            let to: Rc<str> = Rc::from(id);
            let expires = now_us + queue_ttl_ms.unwrap_or(0) * 1000;
            let held = Held {
                message: message.clone(),
                frame: self.frame.clone(),
                expires,
            };
            if let Err(full) = self.offline.hold(&to, held) {
                self.reply_error(507, "queue-full", &full.to_string(), keep);
                return next(keep);
            }
            self.metrics.pushes_accepted += 1;
            self.receipts.insert(
                message.clone(),
                Receipt {
                    to,
                    status: Status::Queued,
                    created: now_us,
                    sent: None,
                    acked: None,
                    expires: Some(expires),
                },
            );
            self.reply(202, json!({"id": &*message, "status": "queued"}), keep);
            return next(keep);
        };
        if !self.queue_push(target) {
            self.reply_error(
                503,
                "client-busy",
                &format!("client {id:?} has more than max_outbound bytes queued"),
                keep,
            );
            return next(keep);
        }
        self.receipts.insert(
            message.clone(),
            Receipt {
                to: Rc::from(id),
                status: Status::Sent,
                created: now_us,
                sent: Some(now_us),
                acked: None,
                expires: None,
            },
        );
        match wait_ms {
            Some(ms) if ms > 0 => {
                let until = now + Duration::from_millis(ms);
                let until_us = self.micros(until);
                self.conns[admin.key as usize].phase = Phase::Admin(AdminPhase::AwaitingAck {
                    message: message.clone(),
                    target,
                    until: until_us,
                    keep_alive: keep,
                });
                self.waiting_acks.insert(message, (admin, target));
                self.ack_deadlines
                    .insert((until_us, admin.key, admin.generation));
                Next::Continue
            }
            _ => {
                self.reply(202, json!({"id": &*message, "status": "sent"}), keep);
                next(keep)
            }
        }
    }

    /// Appends `self.frame` to `target`'s queue; false (nothing queued) when
    /// that would exceed `max_outbound`.
    fn queue_push(&mut self, target: ConnRef) -> bool {
        let max = self.config.max_outbound;
        let Some(c) = self.conns.get_mut(target.key as usize) else {
            return false;
        };
        if c.generation != target.generation || c.queued() + self.frame.len() > max {
            return false;
        }
        if c.is_websocket() {
            self.ws_frame.clear();
            lifeline_wire::ws::write_text(&mut self.ws_frame, &self.frame);
            c.outbound.extend_from_slice(&self.ws_frame);
        } else {
            c.outbound.extend_from_slice(&self.frame);
        }
        c.pushes_queued = c.pushes_queued.saturating_add(1);
        self.metrics.pushes_accepted += 1;
        self.metrics.frames_out += 1;
        if !c.flush_queued {
            c.flush_queued = true;
            self.flush_list.push(target);
        }
        true
    }

    fn broadcast(&mut self, request: &Request<'_>) {
        let keep = request.keep_alive;
        let message = self.new_push_id();
        if let Err((status, error, detail)) = self.encode_push(&message, request.body) {
            return self.reply_error(status, error, &detail, keep);
        }
        let targets = self.registry.all();
        let recipients = targets.into_iter().filter(|&t| self.queue_push(t)).count();
        self.reply(
            202,
            json!({"id": &*message, "recipients": recipients}),
            keep,
        );
    }

    /// A client acked `message`: answer the pusher waiting for it, if the
    /// ack came from the push's recipient.
    pub(crate) fn on_push_acked(&mut self, message: &str, acker: ConnRef, now: Instant) {
        match self.waiting_acks.get(message) {
            Some(&(admin, target)) if target == acker => {
                self.metrics.pushes_acked += 1;
                self.finish_wait(admin, "acked", 200, now);
            }
            _ => {}
        }
    }

    /// Answers `202 sent` to the pushers whose wait is over.
    pub(crate) fn expire_ack_waits(&mut self, now: Instant) {
        let now_us = self.micros(now);
        while let Some(&(until, key, generation)) = self.ack_deadlines.first() {
            if until > now_us {
                break;
            }
            self.ack_deadlines.pop_first();
            self.finish_wait(ConnRef { key, generation }, "sent", 202, now);
        }
    }

    /// Ends a push's wait: writes the response and serves any requests that
    /// queued up behind it.
    fn finish_wait(&mut self, admin: ConnRef, status_text: &str, status: u16, now: Instant) {
        if !self.is_live(admin) {
            return;
        }
        let c = &mut self.conns[admin.key as usize];
        let Phase::Admin(AdminPhase::AwaitingAck {
            message,
            keep_alive,
            until,
            ..
        }) = std::mem::replace(&mut c.phase, Phase::Admin(AdminPhase::Requests))
        else {
            return;
        };
        self.waiting_acks.remove(&*message);
        self.ack_deadlines
            .remove(&(until, admin.key, admin.generation));
        self.response.clear();
        self.reply(
            status,
            json!({"id": &*message, "status": status_text}),
            keep_alive,
        );
        let c = &mut self.conns[admin.key as usize];
        match c.send(&self.response, &mut self.metrics.admin_bytes_out) {
            Err(_) => self.close(admin, CloseReason::IoError, now),
            Ok(_) if !keep_alive => self.begin_draining(admin),
            Ok(_) => self.serve_admin(admin, now),
        }
    }

    /// The one wheel entry of an admin connection fired: an event stream
    /// gets a keepalive comment, a lingering close gives up after
    /// `LINGER`, an idle connection closes after `ADMIN_IDLE`; otherwise
    /// the entry is re-armed (waits for acks are timed in `ack_deadlines`).
    pub(crate) fn on_admin_deadline(&mut self, conn: ConnRef, now: Instant) {
        let now_us = self.micros(now);
        let c = &mut self.conns[conn.key as usize];
        let idle = Duration::from_micros(now_us.saturating_sub(c.last_seen));
        let next = match &c.phase {
            Phase::Admin(AdminPhase::Events { .. }) => {
                let _ = c.send(b": keepalive\n\n", &mut self.metrics.admin_bytes_out);
                if c.queued() > self.config.max_outbound {
                    self.close(conn, CloseReason::SlowConsumer, now);
                    return;
                }
                now + EVENTS_KEEPALIVE
            }
            Phase::Admin(AdminPhase::Draining { .. }) if idle >= LINGER => {
                self.close(conn, CloseReason::PeerClosed, now);
                return;
            }
            Phase::Admin(AdminPhase::Draining { .. }) => now + (LINGER - idle),
            Phase::Admin(AdminPhase::AwaitingAck { .. }) => now + ADMIN_IDLE,
            _ if idle >= ADMIN_IDLE => {
                self.close(conn, CloseReason::Timeout, now);
                return;
            }
            _ => now + (ADMIN_IDLE - idle),
        };
        self.wheel.schedule(conn, next);
    }

    /// Turns an admin connection into a presence event stream, first
    /// replaying what a resuming consumer missed (or telling it to reset).
    fn subscribe(&mut self, conn: ConnRef, resume_after: Option<u64>) {
        self.metrics.admin_request(200);
        self.presence.start_recording();
        http::write_event_stream_head(&mut self.response);
        let mut replay_next = None;
        if let Some(last_seen) = resume_after {
            match self.presence.since(last_seen) {
                Resume::Events(events) => {
                    replay_next = events.first().map(|e| e.seq);
                }
                Resume::Reset => {
                    presence::write_sse_reset(&mut self.response, self.presence.last_seq())
                }
            }
        }
        let c = &mut self.conns[conn.key as usize];
        c.phase = Phase::Admin(AdminPhase::Events { replay_next });
        c.inbound = bytes::BytesMut::new();
        self.subscribers.push(conn);
    }

    /// Sends a resume replay from the ring as the socket takes it, a chunk
    /// at a time until the socket is full (a writable edge resumes it) or
    /// the stream is live: a consumer far behind is caught up at its own
    /// pace, not with megabytes queued at once (nor cut off for them).
    pub(crate) fn continue_replay(&mut self, conn: ConnRef, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(conn.key as usize) else {
                return;
            };
            let Phase::Admin(AdminPhase::Events {
                replay_next: Some(mut next),
            }) = c.phase
            else {
                return;
            };
            if c.generation != conn.generation {
                return;
            }
            self.frame.clear();
            while self.frame.len() < REPLAY_CHUNK && next <= self.presence.last_seq() {
                match self.presence.event(next) {
                    Some(e) => presence::write_sse(&mut self.frame, e),
                    // Fell off the ring while being replayed.
                    None => {
                        presence::write_sse_reset(&mut self.frame, self.presence.last_seq());
                        next = self.presence.last_seq();
                    }
                }
                next += 1;
            }
            let live = next > self.presence.last_seq();
            c.phase = Phase::Admin(AdminPhase::Events {
                replay_next: (!live).then_some(next),
            });
            match c.send(&self.frame, &mut self.metrics.admin_bytes_out) {
                Err(_) => return self.close(conn, CloseReason::IoError, now),
                Ok(Flushed::Done) if !live => continue,
                Ok(_) => return,
            }
        }
    }

    /// Numbers a presence event, keeps it for resuming consumers, and sends
    /// it to every subscriber; a subscriber whose queue is over `max_outbound`
    /// is dropped rather than allowed to slow the loop.
    pub(crate) fn publish_presence(
        &mut self,
        kind: PresenceKind,
        id: &Rc<str>,
        conn: ConnRef,
        peer: std::net::SocketAddr,
        reason: Option<&'static str>,
        now: Instant,
    ) {
        let event = self.presence.record(PresenceEvent {
            seq: 0,
            kind,
            id: id.clone(),
            conn: conn.generation,
            peer,
            reason,
            at: self.unix_ms(self.micros(now)),
        });
        if self.subscribers.is_empty() {
            return;
        }
        self.frame.clear();
        presence::write_sse(&mut self.frame, &event);
        let max = self.config.max_outbound;
        let mut slow = Vec::new();
        for &sub in &self.subscribers {
            let Some(c) = self.conns.get_mut(sub.key as usize) else {
                continue;
            };
            if c.generation != sub.generation {
                continue;
            }
            if let Phase::Admin(AdminPhase::Events {
                replay_next: Some(_),
            }) = c.phase
            {
                continue; // still replaying: this event comes in its turn
            }
            c.outbound.extend_from_slice(&self.frame);
            if c.queued() > max {
                slow.push(sub);
            } else if !c.flush_queued {
                c.flush_queued = true;
                self.flush_list.push(sub);
            }
        }
        for sub in slow {
            warn!("dropping a slow presence subscriber: more than {max} bytes queued");
            self.close(sub, CloseReason::SlowConsumer, now);
        }
    }

    /// Bookkeeping when an admin connection leaves (called from `close`).
    pub(crate) fn forget_admin(&mut self, conn: ConnRef, phase: &Phase) {
        self.admin_connections -= 1;
        match phase {
            Phase::Admin(AdminPhase::AwaitingAck { message, until, .. }) => {
                self.waiting_acks.remove(&**message);
                self.ack_deadlines
                    .remove(&(*until, conn.key, conn.generation));
            }
            Phase::Admin(AdminPhase::Events { .. }) => self.subscribers.retain(|&s| s != conn),
            _ => {}
        }
    }

    /// Flushes an admin connection on a writable edge.
    pub(crate) fn flush_admin(&mut self, conn: ConnRef, now: Instant) {
        let c = &mut self.conns[conn.key as usize];
        match c.flush(&mut self.metrics.admin_bytes_out) {
            Err(_) => self.close(conn, CloseReason::IoError, now),
            Ok(Flushed::Done) => match c.phase {
                Phase::Admin(AdminPhase::Draining { .. }) => {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                }
                Phase::Admin(AdminPhase::Events {
                    replay_next: Some(_),
                }) => self.continue_replay(conn, now),
                _ => {}
            },
            Ok(Flushed::Blocked) => {
                // An event stream is bounded; a response is not cut short.
                if matches!(c.phase, Phase::Admin(AdminPhase::Events { .. }))
                    && c.queued() > self.config.max_outbound
                {
                    self.close(conn, CloseReason::SlowConsumer, now);
                }
            }
        }
    }
}

fn next(keep_alive: bool) -> Next {
    if keep_alive {
        Next::Continue
    } else {
        Next::Close
    }
}
