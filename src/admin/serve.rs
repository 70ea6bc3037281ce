//! Serving the requests buffered on an admin connection, in order: parse,
//! answer `Expect: 100-continue`, route, respond, and time each request for
//! `lifeline_admin_request_duration_seconds`. Cluster mode parks a request
//! whose answer needs Redis or another node (`State::Asking`, answered in
//! `asking.rs`).

use std::time::Instant;

use bytes::BytesMut;

use crate::admin::backend::{Backend, StreamStart};
use crate::admin::routes::{self, Ctx, Outcome};
use crate::admin::stats::Route;
use crate::admin::{Admin, AdminRef, State, MAX_BODY};
use crate::http::{self, BodyState, Parsed};
use crate::presence;

/// What parsing the front of a connection's buffer asks for.
enum Step {
    /// Wait for more bytes.
    Wait,
    /// A request was answered (or refused): `used` bytes of the buffer are done.
    Answered {
        outcome: Outcome,
        used: usize,
        route: Route,
    },
}

impl Admin {
    /// Serves the complete requests buffered on a connection, in order,
    /// stopping while a push waits for its ack. False when it must end.
    pub(super) fn serve(&mut self, admin: AdminRef, backend: &mut dyn Backend) -> bool {
        let gauges = self.gauges();
        loop {
            let Some(c) = self.get_mut(admin) else {
                return true;
            };
            if !matches!(c.state, State::Requests) || c.inbound.is_empty() {
                return true;
            }
            let inbound = std::mem::take(&mut c.inbound);
            let mut body = std::mem::take(&mut c.body);
            let continued = c.continued;
            let token = self.token.take();
            self.response.clear();
            let started = Instant::now();
            let mut ctx = Ctx {
                backend: &mut *backend,
                admin,
                token: token.as_deref(),
                gauges,
                stats: &self.stats,
                out: &mut self.response,
                idempotency: &mut self.idempotency,
            };
            let step = match http::parse(&inbound, MAX_BODY, &mut body) {
                Ok(Parsed::Partial) => Step::Wait,
                Ok(Parsed::AwaitingBody { .. }) if continued => Step::Wait,
                Ok(Parsed::AwaitingBody { request }) => {
                    match routes::precheck(&request, &mut ctx) {
                        // The client may send its body: ask for it.
                        None => {
                            ctx.out.extend_from_slice(http::CONTINUE);
                            Step::Wait
                        }
                        // Refused before its body: the body is never read.
                        Some(outcome) => Step::Answered {
                            outcome,
                            used: inbound.len(),
                            route: routes::route_of(&request),
                        },
                    }
                }
                Ok(Parsed::Complete { request, len }) => Step::Answered {
                    outcome: routes::handle(&request, &mut ctx),
                    used: len,
                    route: routes::route_of(&request),
                },
                Err(e) => {
                    routes::refuse(&e, ctx.backend, ctx.out);
                    Step::Answered {
                        outcome: Outcome::Responded { keep_alive: false },
                        used: inbound.len(),
                        route: Route::Other,
                    }
                }
            };
            self.token = token;
            let interim = !self.response.is_empty();
            let Some(c) = self.get_mut(admin) else {
                return true;
            };
            let (outcome, used, route) = match step {
                Step::Wait => {
                    c.inbound = inbound;
                    c.body = body;
                    // The interim 100 Continue, if one was written: once per request.
                    if !interim {
                        return true;
                    }
                    c.continued = true;
                    return self.respond(admin, backend);
                }
                Step::Answered {
                    outcome,
                    used,
                    route,
                } => (outcome, used, route),
            };
            c.continued = false;
            c.body = BodyState::default();
            let mut rest = inbound;
            bytes::Buf::advance(&mut rest, used);
            c.inbound = if rest.is_empty() {
                BytesMut::new()
            } else {
                rest
            };
            match outcome {
                Outcome::Responded { keep_alive } => {
                    let sent = self.respond(admin, backend);
                    self.stats.answered(route, started.elapsed());
                    if !sent {
                        return false;
                    }
                    if !keep_alive {
                        self.begin_draining(admin);
                        return true;
                    }
                }
                Outcome::AwaitAck {
                    message,
                    keep_alive,
                } => {
                    c.state = State::AwaitingAck {
                        message,
                        keep_alive,
                        started,
                    };
                    return true;
                }
                Outcome::Asked(asked) => {
                    if let Some((key, fingerprint)) = &asked.key {
                        self.idempotency.pend(key, *fingerprint, backend.now());
                    }
                    if let Some(c) = self.get_mut(admin) {
                        c.state = State::Asking {
                            asked,
                            route,
                            started,
                        };
                    }
                    return true;
                }
                Outcome::Stream(start) => {
                    c.inbound = BytesMut::new();
                    let (next, replaying, reset) = match start {
                        StreamStart::Replay { from } => (from, true, None),
                        StreamStart::Live { next } => (next, false, None),
                        StreamStart::Reset { last } => (last + 1, false, Some(last)),
                    };
                    c.state = State::Events { next, replaying };
                    if let Some(last) = reset {
                        self.stats.event_resets += 1;
                        presence::write_sse_reset(&mut self.response, last);
                    }
                    let sent = self.respond(admin, backend);
                    self.stats.answered(route, started.elapsed());
                    if !sent {
                        return false;
                    }
                    return self.continue_replay(admin, backend);
                }
            }
        }
    }
}
