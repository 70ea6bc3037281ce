//! The admin API's routes: one parsed request in, one response (or the
//! start of a stream, or a wait) out. Everything they report or change goes
//! through the [`Backend`].

use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use subtle::ConstantTimeEq;

use crate::admin::backend::{
    AdminGauges, Backend, ClientView, Keyed, Pushed, Question, ReceiptView, StreamStart,
};
use crate::admin::idempotency::{self, Fingerprint, Idempotency};
use crate::admin::repeats::{accepted, idempotent, keyed};
use crate::admin::stats::{AdminStats, Route};
use crate::admin::AdminRef;
use crate::http::{self, HttpError, Method, Request};

const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
/// Longest a pusher may wait for an ack.
const MAX_WAIT_ACK_MS: u64 = 300_000;
/// Longest a push may wait for an offline client.
const MAX_QUEUE_TTL_MS: u64 = 7 * 24 * 3_600_000;

/// What serving a request leaves the connection to do.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The response is written; keep serving requests, or close after it.
    Responded { keep_alive: bool },
    /// The response head is written: stream presence events from `start`.
    Stream(StreamStart),
    /// Nothing is written yet: the response waits for the push's ack.
    AwaitAck { message: Rc<str>, keep_alive: bool },
    /// Cluster mode: nothing is written yet: the response waits for the
    /// cluster's answer (and then, with `wait_ms`, for a push's ack).
    Asked(Asked),
}

/// A request the cluster is asked about, as it waits for the answer.
#[derive(Debug)]
pub(super) struct Asked {
    pub wait_ms: Option<u64>,
    pub keep_alive: bool,
    /// The request's `Idempotency-Key` and fingerprint: the answer is
    /// remembered under it.
    pub key: Option<(Box<str>, Fingerprint)>,
}

/// What a route needs besides the request.
pub(super) struct Ctx<'a> {
    pub backend: &'a mut dyn Backend,
    pub admin: AdminRef,
    pub token: Option<&'a [u8]>,
    pub gauges: AdminGauges,
    pub stats: &'a AdminStats,
    pub out: &'a mut Vec<u8>,
    pub idempotency: &'a mut Idempotency,
}

impl Ctx<'_> {
    pub(super) fn reply(&mut self, status: u16, body: serde_json::Value, keep: bool) -> Outcome {
        self.backend.count_request(status);
        http::write_json(self.out, status, &body, keep);
        Outcome::Responded { keep_alive: keep }
    }

    pub(super) fn error(&mut self, status: u16, error: &str, detail: &str, keep: bool) -> Outcome {
        self.backend.count_request(status);
        http::write_error(self.out, status, error, detail, keep);
        Outcome::Responded { keep_alive: keep }
    }

    fn method_not_allowed(&mut self, allow: &str, keep: bool) -> Outcome {
        self.backend.count_request(405);
        let body = json!({
            "error": "method-not-allowed",
            "detail": format!("this endpoint serves {allow}"),
        });
        http::write_response_with(
            self.out,
            405,
            "application/json",
            body.to_string().as_bytes(),
            keep,
            &[("Allow", allow)],
        );
        Outcome::Responded { keep_alive: keep }
    }

    pub(super) fn not_online(&mut self, id: &str, keep: bool) -> Outcome {
        self.error(
            404,
            "offline",
            &format!("client {id:?} is not online"),
            keep,
        )
    }
}

/// Answers a request that could not be parsed; the connection closes after it.
pub(super) fn refuse(e: &HttpError, backend: &mut dyn Backend, out: &mut Vec<u8>) {
    let status = e.status();
    backend.count_request(status);
    let error = match status {
        431 => "headers-too-large",
        413 => "body-too-large",
        417 => "expectation-failed",
        501 => "not-implemented",
        _ => "bad-request",
    };
    http::write_error(out, status, error, &e.to_string(), false);
}

fn authorized(token: Option<&[u8]>, request: &Request<'_>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = request
        .authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    presented.ct_eq(token).into()
}

/// The decoded segments of a request's path.
fn segments(request: &Request<'_>) -> Vec<String> {
    request
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(http::decode)
        .collect()
}

/// The route a request is for.
pub(super) fn route_of(request: &Request<'_>) -> Route {
    let segments = segments(request);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    Route::of(&segments)
}

/// Whether a request that waits for `100 Continue` may send its body:
/// `None` when it may; otherwise its final answer is written (401, 404 or
/// 405), and the connection closes after it, since the body that may still
/// come is not read (RFC 9110 10.1.1).
pub(super) fn precheck(request: &Request<'_>, ctx: &mut Ctx<'_>) -> Option<Outcome> {
    let route = route_of(request);
    if route != Route::Healthz && !authorized(ctx.token, request) {
        return Some(unauthorized(ctx, false));
    }
    match route.allow() {
        None => Some(ctx.error(404, "not-found", "no such endpoint", false)),
        Some(allow) if !route.serves(request.method) => Some(ctx.method_not_allowed(allow, false)),
        Some(_) => None,
    }
}

fn unauthorized(ctx: &mut Ctx<'_>, keep: bool) -> Outcome {
    ctx.error(
        401,
        "unauthorized",
        "send Authorization: Bearer <LIFELINE_ADMIN_TOKEN>",
        keep,
    )
}

/// Routes one request.
pub(super) fn handle(request: &Request<'_>, ctx: &mut Ctx<'_>) -> Outcome {
    let keep = request.keep_alive;
    let segments = segments(request);
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if segments != ["healthz"] && !authorized(ctx.token, request) {
        return unauthorized(ctx, keep);
    }
    match (request.method, segments.as_slice()) {
        (Method::Get, ["healthz"]) => ctx.reply(
            200,
            json!({"status": "ok", "pid": std::process::id()}),
            keep,
        ),
        (Method::Get, ["metrics"]) => {
            ctx.backend.count_request(200);
            let mut text = ctx.backend.metrics(ctx.gauges);
            ctx.stats.render(&mut text);
            http::write_response(
                ctx.out,
                200,
                "text/plain; version=0.0.4",
                text.as_bytes(),
                keep,
            );
            Outcome::Responded { keep_alive: keep }
        }
        (Method::Get, ["clients"]) => list_clients(request, ctx),
        (Method::Get, ["clients", id]) if ctx.ask(|| Question::Client(id.to_string())) => {
            ctx.asked(None, None, keep)
        }
        (Method::Get, ["clients", id]) => match ctx.backend.client(id) {
            Some(view) => ctx.reply(200, client_json(&view), keep),
            None => ctx.not_online(id, keep),
        },
        (Method::Post, ["clients", id, "push"]) => push(id, request, ctx),
        (Method::Post, ["broadcast"]) => broadcast(request, ctx),
        (Method::Get, ["messages", message])
            if ctx.ask(|| Question::Receipt(message.to_string())) =>
        {
            ctx.asked(None, None, keep)
        }
        (Method::Get, ["messages", message]) => {
            let receipt = ctx.backend.receipt(message);
            ctx.receipt(message, receipt, keep)
        }
        (Method::Delete, ["clients", id]) if ctx.ask(|| Question::Kick(id.to_string())) => {
            ctx.asked(None, None, keep)
        }
        (Method::Delete, ["clients", id]) => {
            if ctx.backend.kick(id) {
                ctx.backend.count_request(204);
                http::write_response(ctx.out, 204, "application/json", b"", keep);
                Outcome::Responded { keep_alive: keep }
            } else {
                ctx.not_online(id, keep)
            }
        }
        (Method::Get, ["events"]) => {
            let last = request
                .last_event_id
                .map(str::to_string)
                .or_else(|| http::query_param(request.query, "last_event_id"));
            match last.map(|v| v.parse::<u64>()).transpose() {
                Err(_) => ctx.error(
                    400,
                    "bad-last-event-id",
                    "Last-Event-ID must be a sequence number from an earlier event",
                    keep,
                ),
                Ok(last) => {
                    ctx.backend.count_request(200);
                    http::write_event_stream_head(ctx.out);
                    Outcome::Stream(ctx.backend.stream_from(last))
                }
            }
        }
        _ => match Route::of(&segments).allow() {
            Some(allow) => ctx.method_not_allowed(allow, keep),
            None => ctx.error(404, "not-found", "no such endpoint", keep),
        },
    }
}

impl Ctx<'_> {
    /// Cluster mode: hands the question to the cluster (true), or false
    /// standalone.
    fn ask(&mut self, question: impl FnOnce() -> Question) -> bool {
        self.backend.is_clustered() && self.backend.ask(self.admin, question())
    }

    fn asked(
        &mut self,
        wait_ms: Option<u64>,
        key: Option<(&str, Fingerprint)>,
        keep_alive: bool,
    ) -> Outcome {
        Outcome::Asked(Asked {
            wait_ms,
            keep_alive,
            key: key.map(|(k, f)| (Box::from(k), f)),
        })
    }

    pub(super) fn receipt(
        &mut self,
        message: &str,
        receipt: Option<ReceiptView>,
        keep: bool,
    ) -> Outcome {
        match receipt {
            Some(r) => self.reply(
                200,
                json!({
                    "id": message,
                    "to": &*r.to,
                    "status": r.status,
                    "created_at": r.created_at,
                    "sent_at": r.sent_at,
                    "acked_at": r.acked_at,
                    "expires_at": r.expires_at,
                    "recipients": r.recipients,
                    "redelivered": r.redelivered,
                }),
                keep,
            ),
            None => self.error(
                404,
                "unknown-message",
                &format!(
                    "no receipt for {message:?} (unknown, or older than LIFELINE_RECEIPT_TTL_MS)"
                ),
                keep,
            ),
        }
    }
}

pub(super) fn client_json(c: &ClientView) -> serde_json::Value {
    let mut v = json!({
        "id": &*c.id,
        "peer": c.peer,
        "connected_at": c.connected_at,
        "last_seen_ms_ago": c.last_seen_ms_ago,
        "conn": c.conn,
        "state": if c.suspect { "suspect" } else { "online" },
    });
    // Cluster mode: the node the client is on.
    if let (Some(node), Some(map)) = (&c.node, v.as_object_mut()) {
        map.insert("node".to_string(), json!(&**node));
    }
    v
}

fn list_clients(request: &Request<'_>, ctx: &mut Ctx<'_>) -> Outcome {
    let keep = request.keep_alive;
    let limit = match http::query_param(request.query, "limit") {
        None => DEFAULT_PAGE,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return ctx.error(
                    400,
                    "bad-limit",
                    &format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                    keep,
                )
            }
        },
    };
    let after = http::query_param(request.query, "after");
    if ctx.ask(|| Question::Clients {
        after: after.clone(),
        limit,
    }) {
        return ctx.asked(None, None, keep);
    }
    let page = ctx.backend.clients(after.as_deref(), limit);
    let clients: Vec<serde_json::Value> = page.clients.iter().map(client_json).collect();
    // The loop is single-threaded: this page is exactly the online set as
    // of event `seq`; replaying the stream after `seq` brings it up to date.
    ctx.reply(
        200,
        json!({
            "clients": clients,
            "next": page.next.as_deref(),
            "online": page.online,
            "seq": page.seq,
        }),
        keep,
    )
}

/// A whole number in `range` from the query, `Ok(None)` when absent.
fn query_number(
    request: &Request<'_>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ()> {
    match http::query_param(request.query, key) {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(()),
        },
    }
}

fn broadcast(request: &Request<'_>, ctx: &mut Ctx<'_>) -> Outcome {
    let keep = request.keep_alive;
    let fingerprint = idempotency::fingerprint("broadcast", "*", None, request.body);
    let key = match idempotent(request, &fingerprint, ctx) {
        Ok(key) => key.map(|k| (k, fingerprint)),
        Err(answered) => return answered,
    };
    if ctx.ask(|| Question::Broadcast {
        body: request.body.to_vec(),
        key: keyed(key),
    }) {
        return ctx.asked(None, key, keep);
    }
    match ctx.backend.broadcast(request.body) {
        Ok((id, recipients)) => {
            let body = json!({"id": &*id, "recipients": recipients});
            accepted(ctx, key, 202, body, None, keep)
        }
        Err(r) => ctx.error(r.status, r.error, &r.detail, keep),
    }
}

fn push(id: &str, request: &Request<'_>, ctx: &mut Ctx<'_>) -> Outcome {
    let keep = request.keep_alive;
    let Ok(wait_ms) = query_number(request, "wait_ack_ms", 0..=MAX_WAIT_ACK_MS) else {
        return ctx.error(
            400,
            "bad-wait",
            &format!("wait_ack_ms must be a whole number from 0 to {MAX_WAIT_ACK_MS}"),
            keep,
        );
    };
    let Ok(queue_ttl_ms) = query_number(request, "queue_ttl_ms", 1..=MAX_QUEUE_TTL_MS) else {
        return ctx.error(
            400,
            "bad-queue-ttl",
            &format!("queue_ttl_ms must be a whole number from 1 to {MAX_QUEUE_TTL_MS}"),
            keep,
        );
    };
    let fingerprint = idempotency::fingerprint("push", id, queue_ttl_ms, request.body);
    let key = match idempotent(request, &fingerprint, ctx) {
        Ok(key) => key.map(|k| (k, fingerprint)),
        Err(answered) => return answered,
    };
    let question = || Question::Push {
        to: id.to_string(),
        body: request.body.to_vec(),
        queue_ttl_ms,
        key: keyed(key),
    };
    if ctx.ask(question) {
        return ctx.asked(wait_ms, key, keep);
    }
    match ctx.backend.push(id, request.body, queue_ttl_ms) {
        Err(r) => ctx.error(r.status, r.error, &r.detail, keep),
        Ok(pushed) => ctx.pushed(pushed, wait_ms, key, keep),
    }
}

impl Ctx<'_> {
    /// The response to a push that was taken (remembered under its key);
    /// with `wait_ms`, the wait for its ack begins instead.
    pub(super) fn pushed(
        &mut self,
        pushed: Pushed,
        wait_ms: Option<u64>,
        key: Option<(&str, Fingerprint)>,
        keep: bool,
    ) -> Outcome {
        let (id, target) = match pushed {
            Pushed::Queued { id } => {
                let body = json!({"id": &*id, "status": "queued"});
                return accepted(self, key, 202, body, None, keep);
            }
            Pushed::Sent { id, target } => (id, Some(target)),
            Pushed::Forwarded { id } => (id, None),
        };
        let Some(ms) = wait_ms.filter(|&ms| ms > 0) else {
            let body = json!({"id": &*id, "status": "sent"});
            return accepted(self, key, 202, body, None, keep);
        };
        let until = self.backend.now() + ms * 1000;
        match target {
            Some(target) => self.backend.await_ack(&id, target, self.admin, until),
            // On another node, which reports the ack.
            None => self.backend.await_remote_ack(&id, self.admin, until),
        }
        if let Some((key, fingerprint)) = key {
            // Provisional: a repeat meanwhile is told to wait (409);
            // should this request go away, a repeat gets "sent".
            let body = json!({"id": &*id, "status": "sent"}).to_string();
            let keyed = Keyed {
                key: key.to_string(),
                fingerprint,
            };
            let waiting = Duration::from_millis(ms);
            self.backend
                .remember_answer(&keyed, 202, &body, Some(waiting));
            let now = self.backend.now();
            self.idempotency
                .remember(key, fingerprint, 202, body, Some(id.clone()), now);
        }
        Outcome::AwaitAck {
            message: id,
            keep_alive: keep,
        }
    }
}

/// The response to a push whose wait ended (remembered for a repeat of
/// its request, if it had an `Idempotency-Key`).
pub(super) fn waited(
    backend: &mut dyn Backend,
    idempotency: &mut Idempotency,
    message: &str,
    acked: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let (status, text) = if acked { (200, "acked") } else { (202, "sent") };
    backend.count_request(status);
    let body = json!({"id": message, "status": text});
    let remembered = body.to_string();
    if let Some(keyed) = idempotency.answered(message, status, &remembered) {
        backend.remember_answer(&keyed, status, &remembered, None);
    }
    http::write_json(out, status, &body, keep_alive);
}
