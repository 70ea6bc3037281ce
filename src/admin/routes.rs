//! The admin API's routes: one parsed request in, one response (or the
//! start of a stream, or a wait) out. Everything they report or change goes
//! through the [`Backend`].

use std::rc::Rc;

use serde_json::json;
use subtle::ConstantTimeEq;

use crate::admin::backend::{
    AdminGauges, Answer, Backend, ClientView, Pushed, Question, ReceiptView, StreamStart,
};
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
    Asked {
        wait_ms: Option<u64>,
        keep_alive: bool,
    },
}

/// What a route needs besides the request.
pub(super) struct Ctx<'a> {
    pub backend: &'a mut dyn Backend,
    pub admin: AdminRef,
    pub token: Option<&'a [u8]>,
    pub gauges: AdminGauges,
    pub out: &'a mut Vec<u8>,
}

impl Ctx<'_> {
    fn reply(&mut self, status: u16, body: serde_json::Value, keep: bool) -> Outcome {
        self.backend.count_request(status);
        http::write_json(self.out, status, &body, keep);
        Outcome::Responded { keep_alive: keep }
    }

    fn error(&mut self, status: u16, error: &str, detail: &str, keep: bool) -> Outcome {
        self.backend.count_request(status);
        http::write_error(self.out, status, error, detail, keep);
        Outcome::Responded { keep_alive: keep }
    }

    fn not_online(&mut self, id: &str, keep: bool) -> Outcome {
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
        411 => "length-required",
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

/// Routes one request.
pub(super) fn handle(request: &Request<'_>, ctx: &mut Ctx<'_>) -> Outcome {
    let keep = request.keep_alive;
    let segments: Vec<String> = request
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(http::decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if segments != ["healthz"] && !authorized(ctx.token, request) {
        return ctx.error(
            401,
            "unauthorized",
            "send Authorization: Bearer <LIFELINE_ADMIN_TOKEN>",
            keep,
        );
    }
    match (request.method, segments.as_slice()) {
        (Method::Get, ["healthz"]) => ctx.reply(200, json!({"status": "ok"}), keep),
        (Method::Get, ["metrics"]) => {
            ctx.backend.count_request(200);
            let text = ctx.backend.metrics(ctx.gauges);
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
            ctx.asked(None, keep)
        }
        (Method::Get, ["clients", id]) => match ctx.backend.client(id) {
            Some(view) => ctx.reply(200, client_json(&view), keep),
            None => ctx.not_online(id, keep),
        },
        (Method::Post, ["clients", id, "push"]) => push(id, request, ctx),
        (Method::Post, ["broadcast"]) if ctx.ask(|| Question::Broadcast(request.body.to_vec())) => {
            ctx.asked(None, keep)
        }
        (Method::Post, ["broadcast"]) => match ctx.backend.broadcast(request.body) {
            Ok((id, recipients)) => {
                ctx.reply(202, json!({"id": &*id, "recipients": recipients}), keep)
            }
            Err(r) => ctx.error(r.status, r.error, &r.detail, keep),
        },
        (Method::Get, ["messages", message])
            if ctx.ask(|| Question::Receipt(message.to_string())) =>
        {
            ctx.asked(None, keep)
        }
        (Method::Get, ["messages", message]) => {
            let receipt = ctx.backend.receipt(message);
            ctx.receipt(message, receipt, keep)
        }
        (Method::Delete, ["clients", id]) if ctx.ask(|| Question::Kick(id.to_string())) => {
            ctx.asked(None, keep)
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
        (_, ["healthz" | "metrics" | "clients" | "broadcast" | "events" | "messages", ..]) => ctx
            .error(
                405,
                "method-not-allowed",
                "see the README for each endpoint's method",
                keep,
            ),
        _ => ctx.error(404, "not-found", "no such endpoint", keep),
    }
}

impl Ctx<'_> {
    /// Cluster mode: hands the question to the cluster (true), or false
    /// standalone.
    fn ask(&mut self, question: impl FnOnce() -> Question) -> bool {
        self.backend.is_clustered() && self.backend.ask(self.admin, question())
    }

    fn asked(&mut self, wait_ms: Option<u64>, keep_alive: bool) -> Outcome {
        Outcome::Asked {
            wait_ms,
            keep_alive,
        }
    }

    fn receipt(&mut self, message: &str, receipt: Option<ReceiptView>, keep: bool) -> Outcome {
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

    /// The response to a push that was taken; with `wait_ms`, the wait for
    /// its ack begins instead.
    fn pushed(&mut self, pushed: Pushed, wait_ms: Option<u64>, keep: bool) -> Outcome {
        let wait_until = wait_ms
            .filter(|&ms| ms > 0)
            .map(|ms| self.backend.now() + ms * 1000);
        match (pushed, wait_until) {
            (Pushed::Queued { id }, _) => {
                self.reply(202, json!({"id": &*id, "status": "queued"}), keep)
            }
            (Pushed::Sent { id, target }, Some(until)) => {
                self.backend.await_ack(&id, target, self.admin, until);
                Outcome::AwaitAck {
                    message: id,
                    keep_alive: keep,
                }
            }
            (Pushed::Forwarded { id }, Some(until)) => {
                self.backend.await_remote_ack(&id, self.admin, until);
                Outcome::AwaitAck {
                    message: id,
                    keep_alive: keep,
                }
            }
            (Pushed::Sent { id, .. } | Pushed::Forwarded { id }, None) => {
                self.reply(202, json!({"id": &*id, "status": "sent"}), keep)
            }
        }
    }
}

/// Cluster mode: the response to a question the cluster answered.
pub(super) fn answered(
    backend: &mut dyn Backend,
    admin: AdminRef,
    answer: Answer,
    wait_ms: Option<u64>,
    keep: bool,
    out: &mut Vec<u8>,
) -> Outcome {
    let mut ctx = Ctx {
        backend,
        admin,
        token: None,
        gauges: AdminGauges::default(),
        out,
    };
    match answer {
        Answer::Unavailable => ctx.error(
            503,
            "cluster-unavailable",
            "Redis cannot be reached: the cluster cannot answer this now",
            keep,
        ),
        Answer::Client(_, Some(view)) => ctx.reply(200, client_json(&view), keep),
        Answer::Client(id, None) | Answer::Kicked(id, false) => ctx.not_online(&id, keep),
        Answer::Kicked(_, true) => {
            ctx.backend.count_request(204);
            http::write_response(ctx.out, 204, "application/json", b"", keep);
            Outcome::Responded { keep_alive: keep }
        }
        Answer::Clients(page) => {
            let clients: Vec<serde_json::Value> = page.clients.iter().map(client_json).collect();
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
        Answer::Pushed(Ok(pushed)) => ctx.pushed(pushed, wait_ms, keep),
        Answer::Pushed(Err(r)) | Answer::Broadcast(Err(r)) => {
            ctx.error(r.status, r.error, &r.detail, keep)
        }
        Answer::Broadcast(Ok((id, recipients, nodes))) => ctx.reply(
            202,
            json!({"id": &*id, "recipients": recipients, "nodes": nodes}),
            keep,
        ),
        Answer::Receipt(message, receipt) => ctx.receipt(&message, receipt, keep),
    }
}

fn client_json(c: &ClientView) -> serde_json::Value {
    let mut v = json!({
        "id": &*c.id,
        "peer": c.peer,
        "connected_at": c.connected_at,
        "last_seen_ms_ago": c.last_seen_ms_ago,
        "conn": c.conn,
        "state": if c.suspect { "suspect" } else { "online" },
    });
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
        return ctx.asked(None, keep);
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
    let question = || Question::Push {
        to: id.to_string(),
        body: request.body.to_vec(),
        queue_ttl_ms,
    };
    if ctx.ask(question) {
        return ctx.asked(wait_ms, keep);
    }
    match ctx.backend.push(id, request.body, queue_ttl_ms) {
        Err(r) => ctx.error(r.status, r.error, &r.detail, keep),
        Ok(pushed) => ctx.pushed(pushed, wait_ms, keep),
    }
}

/// The response to a push whose wait ended.
pub(super) fn waited(
    backend: &mut dyn Backend,
    message: &str,
    acked: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let (status, text) = if acked { (200, "acked") } else { (202, "sent") };
    backend.count_request(status);
    http::write_json(
        out,
        status,
        &json!({"id": message, "status": text}),
        keep_alive,
    );
}
