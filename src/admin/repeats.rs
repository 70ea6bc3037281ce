//! What a request's `Idempotency-Key` does to its answer (see
//! [`super::idempotency`] for the rules): checked before the request is
//! served, the answer remembered once it is accepted — on this node, and
//! in cluster mode for the whole cluster too.

use std::rc::Rc;

use crate::admin::backend::{Keyed, Repeat};
use crate::admin::idempotency::{self, Fingerprint, Seen};
use crate::admin::routes::{Ctx, Outcome};
use crate::http::{self, Request};

/// What a request's `Idempotency-Key` says to do: `Err` with the answer
/// already written (a replay, or a refusal), `Ok` with the key (if any) to
/// remember the answer under.
pub(super) fn idempotent<'r>(
    request: &Request<'r>,
    fingerprint: &idempotency::Fingerprint,
    ctx: &mut Ctx<'_>,
) -> Result<Option<&'r str>, Outcome> {
    let keep = request.keep_alive;
    let key = match idempotency::key_of(request.idempotency_key) {
        Ok(key) => key,
        Err(bad) => return Err(ctx.error(400, "bad-idempotency-key", &bad.to_string(), keep)),
    };
    let Some(key) = key else {
        return Ok(None);
    };
    let now = ctx.backend.now();
    let repeat = match ctx.idempotency.seen(key, fingerprint, now) {
        Seen::New => return Ok(Some(key)),
        Seen::Replay { status, body } => Repeat::Replay {
            status,
            body: body.to_string(),
        },
        Seen::InProgress => Repeat::InProgress,
        Seen::Reused => Repeat::Reused,
    };
    Err(repeated(ctx, repeat, keep))
}

/// The answer to a request whose `Idempotency-Key` is known already.
pub(super) fn repeated(ctx: &mut Ctx<'_>, repeat: Repeat, keep: bool) -> Outcome {
    match repeat {
        Repeat::Replay { status, body } => {
            ctx.backend.count_request(status);
            http::write_response_with(
                ctx.out,
                status,
                "application/json",
                body.as_bytes(),
                keep,
                &[("Idempotent-Replayed", "true")],
            );
            Outcome::Responded { keep_alive: keep }
        }
        Repeat::InProgress => ctx.error(
            409,
            "idempotency-in-progress",
            "the first request with this Idempotency-Key still waits for its ack; retry later",
            keep,
        ),
        Repeat::Reused => ctx.error(
            422,
            "idempotency-key-reused",
            "this Idempotency-Key was used for a different request (endpoint, client, queue_ttl_ms or body)",
            keep,
        ),
    }
}

/// Answers an accepted push or broadcast, remembering the answer under its
/// key; `waiting`: the answer stands only until that push's wait ends.
pub(super) fn accepted(
    ctx: &mut Ctx<'_>,
    key: Option<(&str, idempotency::Fingerprint)>,
    status: u16,
    body: serde_json::Value,
    waiting: Option<Rc<str>>,
    keep: bool,
) -> Outcome {
    if let Some((key, fingerprint)) = key {
        let now = ctx.backend.now();
        let text = body.to_string();
        if waiting.is_none() {
            let keyed = Keyed {
                key: key.to_string(),
                fingerprint,
            };
            ctx.backend.remember_answer(&keyed, status, &text, None);
        }
        ctx.idempotency
            .remember(key, fingerprint, status, text, waiting, now);
    }
    ctx.reply(status, body, keep)
}

/// A key and fingerprint as the cluster is asked about them.
pub(super) fn keyed(key: Option<(&str, Fingerprint)>) -> Option<Keyed> {
    key.map(|(key, fingerprint)| Keyed {
        key: key.to_string(),
        fingerprint,
    })
}
