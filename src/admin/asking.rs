//! Cluster mode: an admin request whose answer needs Redis or another node
//! waits, parked (`State::Asking`), and is answered here when the cluster's
//! answer arrives, after the batch of events — the same deferred path acks
//! take (`Admin::wake`), never from inside another connection's handling.

use serde_json::json;

use crate::admin::backend::{AdminGauges, Answer, Backend};
use crate::admin::repeats::{accepted, repeated};
use crate::admin::routes::{self, Asked, Ctx, Outcome};
use crate::admin::{Admin, AdminRef, State};
use crate::http;

impl Admin {
    /// Cluster mode: answers the requests whose question the cluster
    /// answered, then serves what queued up behind them.
    pub fn answer(&mut self, answers: Vec<(AdminRef, Answer)>, backend: &mut dyn Backend) {
        for (admin, answer) in answers {
            let Some(c) = self.get_mut(admin) else {
                continue;
            };
            if !matches!(c.state, State::Asking { .. }) {
                continue;
            }
            let State::Asking {
                asked,
                route,
                started,
            } = std::mem::replace(&mut c.state, State::Requests)
            else {
                continue;
            };
            let keep_alive = asked.keep_alive;
            let key = asked.key.as_ref().map(|(k, _)| k.clone());
            self.response.clear();
            let mut ctx = Ctx {
                backend: &mut *backend,
                admin,
                token: None,
                gauges: AdminGauges::default(),
                stats: &self.stats,
                out: &mut self.response,
                idempotency: &mut self.idempotency,
            };
            let outcome = answered(&mut ctx, answer, asked);
            // Refused (or unanswerable): a repeat of the request is a retry.
            if let Some(key) = key {
                self.idempotency.unpend(&key);
            }
            if let Outcome::AwaitAck { message, .. } = outcome {
                if let Some(c) = self.get_mut(admin) {
                    c.state = State::AwaitingAck {
                        message,
                        keep_alive,
                        started,
                    };
                }
                continue;
            }
            let sent = self.respond(admin, backend);
            self.stats.answered(route, started.elapsed());
            if !sent {
                self.end(admin, backend);
            } else if !keep_alive {
                self.begin_draining(admin);
            } else if !self.serve(admin, backend) {
                self.end(admin, backend);
            }
        }
    }
}

/// The response to a question the cluster answered.
fn answered(ctx: &mut Ctx<'_>, answer: Answer, asked: Asked) -> Outcome {
    let keep = asked.keep_alive;
    let key = asked.key.as_ref().map(|(k, f)| (&**k, *f));
    match answer {
        Answer::Unavailable => ctx.error(
            503,
            "cluster-unavailable",
            "Redis cannot be reached: the cluster cannot answer this now",
            keep,
        ),
        Answer::Client(_, Some(view)) => ctx.reply(200, routes::client_json(&view), keep),
        Answer::Client(id, None) | Answer::Kicked(id, false) => ctx.not_online(&id, keep),
        Answer::Kicked(_, true) => {
            ctx.backend.count_request(204);
            http::write_response(ctx.out, 204, "application/json", b"", keep);
            Outcome::Responded { keep_alive: keep }
        }
        Answer::Clients(page) => {
            let clients: Vec<serde_json::Value> =
                page.clients.iter().map(routes::client_json).collect();
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
        Answer::Pushed(Ok(pushed)) => ctx.pushed(pushed, asked.wait_ms, key, keep),
        Answer::Pushed(Err(r)) | Answer::Broadcast(Err(r)) => {
            ctx.error(r.status, r.error, &r.detail, keep)
        }
        Answer::Broadcast(Ok((id, recipients, nodes))) => {
            let body = json!({"id": &*id, "recipients": recipients, "nodes": nodes});
            accepted(ctx, key, 202, body, None, keep)
        }
        Answer::Receipt(message, receipt) => ctx.receipt(&message, receipt, keep),
        Answer::Repeat(repeat) => repeated(ctx, repeat, keep),
    }
}
