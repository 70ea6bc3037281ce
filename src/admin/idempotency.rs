//! `Idempotency-Key` on `POST /clients/{id}/push` and `POST /broadcast`: a
//! back end that retries a request (its HTTP client timed out) gets the
//! first request's answer again, and nothing is delivered twice.
//!
//! The rules (after Stripe's):
//! - Only a request that was accepted (a push id was issued: `sent`,
//!   `queued`, a broadcast) is remembered; a refusal (404, 503, 507, 4xx)
//!   is not, so retrying it is a real retry.
//! - The same key with the same request within the receipt TTL gets the
//!   first answer replayed (same status, same body, same push id), marked
//!   `Idempotent-Replayed: true`.
//! - The same key with a different request (endpoint, client, `queue_ttl_ms`
//!   or body) is `422 idempotency-key-reused`: a key names one request.
//!   `wait_ack_ms` is not part of the request: it changes how the answer
//!   waits, not what is delivered.
//! - While the first request still waits for its ack (`wait_ack_ms`), a
//!   repeat gets `409 idempotency-in-progress`; once it is answered the
//!   repeat gets that answer (`200 acked` or `202 sent`).
//! - Cluster mode: answers are also kept in Redis (`ll:idem:KEY`), so a
//!   repeat through any node gets them; while the first request waits for
//!   the cluster's answer, a repeat is `409` too. This memory stays the
//!   first stop: a node answers repeats of its own requests by itself.
//! - Memory is bounded as receipts are: by the receipt TTL and by count
//!   (oldest forgotten first). Keys are 1 to 255 printable ASCII characters.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::admin::backend::Keyed;
use crate::clock::Micros;

/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// What a request with a key has to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    /// First time: serve it, then [`Idempotency::remember`] its answer.
    New,
    /// Answered before: replay this.
    Replay { status: u16, body: &'a str },
    /// The first request is still waiting for its ack.
    InProgress,
    /// The key was used for another request.
    Reused,
}

/// One request, as far as sameness goes.
pub type Fingerprint = [u8; 32];

/// The fingerprint of a push or broadcast: what would be delivered, to whom.
pub fn fingerprint(
    endpoint: &str,
    target: &str,
    queue_ttl_ms: Option<u64>,
    body: &[u8],
) -> Fingerprint {
    let mut h = Sha256::new();
    // Lengths first, so that no two requests concatenate alike.
    for part in [endpoint.as_bytes(), target.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(queue_ttl_ms.map_or([0xff; 8], u64::to_le_bytes));
    h.update(body);
    h.finalize().into()
}

/// An `Idempotency-Key` header that is present but empty, too long, or not
/// printable ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters")]
pub struct BadKey;

/// The key of a request, if it has one.
pub fn key_of(header: Option<&[u8]>) -> Result<Option<&str>, BadKey> {
    let Some(raw) = header else {
        return Ok(None);
    };
    let key = std::str::from_utf8(raw).map_err(|_| BadKey)?.trim();
    let printable = key.bytes().all(|b| (0x20..0x7f).contains(&b));
    if key.is_empty() || key.len() > MAX_KEY_LEN || !printable {
        return Err(BadKey);
    }
    Ok(Some(key))
}

/// A remembered answer, as [`Idempotency::remembered`] lists it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub fingerprint: &'a Fingerprint,
    pub status: u16,
    pub body: &'a str,
}

struct Entry {
    fingerprint: Fingerprint,
    status: u16,
    body: String,
    /// The push whose ack the first request still waits for.
    waiting: Option<Rc<str>>,
    /// Cluster mode: the first request waits for the cluster's answer.
    pending: bool,
    /// When it was first remembered: tells its place in `order` from the
    /// place of an entry of the same key that was forgotten.
    created: Micros,
}

/// The remembered answers.
pub struct Idempotency {
    by_key: HashMap<Rc<str>, Entry>,
    /// Creation order, for the TTL and the count bound.
    order: VecDeque<(Micros, Rc<str>)>,
    /// Push id → the key of the request waiting for its ack.
    waiting: HashMap<Rc<str>, Rc<str>>,
    ttl: Micros,
    max: usize,
}

impl Idempotency {
    pub fn new(ttl: Micros, max: usize) -> Idempotency {
        Idempotency {
            by_key: HashMap::new(),
            order: VecDeque::new(),
            waiting: HashMap::new(),
            ttl,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// What to do with a request carrying `key`.
    pub fn seen(&mut self, key: &str, fingerprint: &Fingerprint, now: Micros) -> Seen<'_> {
        self.expire(now);
        match self.by_key.get(key) {
            None => Seen::New,
            Some(e) if e.fingerprint != *fingerprint => Seen::Reused,
            Some(e) if e.waiting.is_some() || e.pending => Seen::InProgress,
            Some(e) => Seen::Replay {
                status: e.status,
                body: &e.body,
            },
        }
    }

    /// The answer to an accepted request with `key`; `waiting` when the
    /// answer is provisional until push `waiting` is acked (or the wait ends).
    pub fn remember(
        &mut self,
        key: &str,
        fingerprint: Fingerprint,
        status: u16,
        body: String,
        waiting: Option<Rc<str>>,
        now: Micros,
    ) {
        if self.max == 0 {
            return;
        }
        if let Some(e) = self.by_key.get_mut(key) {
            // The answer to a request that was pending: it keeps its place.
            if let Some(message) = &waiting {
                self.waiting.insert(message.clone(), Rc::from(key));
            }
            *e = Entry {
                fingerprint,
                status,
                body,
                waiting,
                pending: false,
                created: e.created,
            };
            return;
        }
        while self.by_key.len() >= self.max {
            let Some((created, old)) = self.order.pop_front() else {
                break;
            };
            self.forget_created(&old, created);
        }
        let key: Rc<str> = Rc::from(key);
        if let Some(message) = &waiting {
            self.waiting.insert(message.clone(), key.clone());
        }
        self.order.push_back((now, key.clone()));
        self.by_key.insert(
            key,
            Entry {
                fingerprint,
                status,
                body,
                waiting,
                pending: false,
                created: now,
            },
        );
    }

    /// Every remembered answer, oldest first, as (key, when it was
    /// remembered, entry): an upgrade hands them to the next process, so a
    /// request retried across it is still recognised. A provisional answer
    /// goes as it stands: the request waiting for its ack does not move.
    pub fn remembered(&self) -> impl Iterator<Item = (&str, Micros, Answer<'_>)> {
        self.order.iter().filter_map(|(at, key)| {
            let e = self.by_key.get(key)?;
            let answer = Answer {
                fingerprint: &e.fingerprint,
                status: e.status,
                body: &e.body,
            };
            Some((&**key, *at, answer))
        })
    }

    /// Cluster mode: the request with `key` waits for the cluster's answer;
    /// repeats meanwhile are in progress. [`Idempotency::remember`] settles
    /// it, [`Idempotency::unpend`] forgets it.
    pub fn pend(&mut self, key: &str, fingerprint: Fingerprint, now: Micros) {
        self.remember(key, fingerprint, 0, String::new(), None, now);
        if let Some(e) = self.by_key.get_mut(key) {
            e.pending = true;
        }
    }

    /// A pending request was refused or went away: a repeat is a real retry.
    pub fn unpend(&mut self, key: &str) {
        if self.by_key.get(key).is_some_and(|e| e.pending) {
            self.forget(key);
        }
    }

    /// The wait for push `message` ended with this answer; returns the key
    /// it is remembered under, if any.
    pub fn answered(&mut self, message: &str, status: u16, body: &str) -> Option<Keyed> {
        let key = self.waiting.remove(message)?;
        let e = self.by_key.get_mut(&key)?;
        e.status = status;
        e.body = body.to_string();
        e.waiting = None;
        Some(Keyed {
            key: key.to_string(),
            fingerprint: e.fingerprint,
        })
    }

    /// The request waiting for push `message` went away unanswered: a repeat
    /// gets the provisional answer (the push was sent). Returns the key and
    /// that answer, if any.
    pub fn abandoned(&mut self, message: &str) -> Option<(Keyed, u16, String)> {
        let key = self.waiting.remove(message)?;
        let e = self.by_key.get_mut(&key)?;
        e.waiting = None;
        let keyed = Keyed {
            key: key.to_string(),
            fingerprint: e.fingerprint,
        };
        Some((keyed, e.status, e.body.clone()))
    }

    fn forget(&mut self, key: &str) {
        if let Some(e) = self.by_key.remove(key) {
            if let Some(message) = e.waiting {
                self.waiting.remove(&message);
            }
        }
    }

    /// Forgets `key` if its entry is the one remembered at `created`.
    fn forget_created(&mut self, key: &str, created: Micros) {
        if self.by_key.get(key).is_some_and(|e| e.created == created) {
            self.forget(key);
        }
    }

    /// Forgets answers older than the TTL; O(forgotten).
    fn expire(&mut self, now: Micros) {
        while let Some((created, _)) = self.order.front() {
            if now.saturating_sub(*created) < self.ttl {
                break;
            }
            if let Some((created, key)) = self.order.pop_front() {
                self.forget_created(&key, created);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(body: &str) -> Fingerprint {
        fingerprint("push", "alice", None, body.as_bytes())
    }

    #[test]
    fn replays_refuses_reuse_and_forgets() {
        let mut idem = Idempotency::new(100, 2);
        assert_eq!(idem.seen("k1", &fp("a"), 0), Seen::New);
        idem.remember("k1", fp("a"), 202, "{\"id\":\"p-1\"}".into(), None, 0);
        assert_eq!(
            idem.seen("k1", &fp("a"), 50),
            Seen::Replay {
                status: 202,
                body: "{\"id\":\"p-1\"}"
            }
        );
        assert_eq!(idem.seen("k1", &fp("b"), 50), Seen::Reused);
        // The TTL.
        assert_eq!(idem.seen("k1", &fp("a"), 100), Seen::New);
        assert!(idem.is_empty());
        // The count bound: the oldest goes first.
        idem.remember("k2", fp("a"), 202, String::new(), None, 100);
        idem.remember("k3", fp("a"), 202, String::new(), None, 101);
        idem.remember("k4", fp("a"), 202, String::new(), None, 102);
        assert_eq!(idem.len(), 2);
        assert_eq!(idem.seen("k2", &fp("a"), 103), Seen::New);
        assert_ne!(idem.seen("k4", &fp("a"), 103), Seen::New);
    }

    #[test]
    fn a_waiting_request_is_in_progress_until_answered() {
        let mut idem = Idempotency::new(1000, 10);
        let message: Rc<str> = Rc::from("p-x-1");
        idem.remember("k", fp("a"), 202, "sent".into(), Some(message.clone()), 0);
        assert_eq!(idem.seen("k", &fp("a"), 1), Seen::InProgress);
        idem.answered(&message, 200, "acked");
        assert_eq!(
            idem.seen("k", &fp("a"), 2),
            Seen::Replay {
                status: 200,
                body: "acked"
            }
        );
        let other: Rc<str> = Rc::from("p-x-2");
        idem.remember("k2", fp("b"), 202, "sent".into(), Some(other.clone()), 3);
        idem.abandoned(&other);
        assert_eq!(
            idem.seen("k2", &fp("b"), 4),
            Seen::Replay {
                status: 202,
                body: "sent"
            }
        );
        // Handed to another process (an upgrade), in order: answered alike.
        let mut next = Idempotency::new(1000, 10);
        for (key, at, a) in idem.remembered() {
            next.remember(key, *a.fingerprint, a.status, a.body.into(), None, at);
        }
        let keys: Vec<&str> = next.remembered().map(|(k, _, _)| k).collect();
        assert_eq!(keys, ["k", "k2"]);
        assert_eq!(
            next.seen("k", &fp("a"), 5),
            Seen::Replay {
                status: 200,
                body: "acked"
            }
        );
        assert_eq!(next.seen("k2", &fp("a"), 5), Seen::Reused);
    }

    #[test]
    fn a_pending_request_is_in_progress_until_settled_or_forgotten() {
        let mut idem = Idempotency::new(1000, 10);
        idem.pend("k", fp("a"), 0);
        assert_eq!(idem.seen("k", &fp("a"), 1), Seen::InProgress);
        assert_eq!(idem.seen("k", &fp("b"), 1), Seen::Reused);
        idem.remember("k", fp("a"), 202, "queued".into(), None, 2);
        assert_eq!(
            idem.seen("k", &fp("a"), 3),
            Seen::Replay {
                status: 202,
                body: "queued"
            }
        );
        idem.unpend("k"); // settled: stays
        assert_eq!(idem.len(), 1);
        idem.pend("k2", fp("a"), 4);
        idem.unpend("k2");
        assert_eq!(idem.seen("k2", &fp("a"), 5), Seen::New);
    }

    #[test]
    fn keys_and_fingerprints() {
        assert_eq!(key_of(None), Ok(None));
        assert_eq!(key_of(Some(b" order-17 ")), Ok(Some("order-17")));
        assert!(key_of(Some(b"")).is_err());
        assert!(key_of(Some(b"a\x01")).is_err());
        assert!(key_of(Some("\u{e9}".as_bytes())).is_err());
        assert!(key_of(Some(&[b'k'; 256])).is_err());
        assert!(key_of(Some(&[b'k'; 255])).is_ok());
        let base = fingerprint("push", "ab", Some(5), b"c");
        assert_ne!(base, fingerprint("push", "a", Some(5), b"bc"));
        assert_ne!(base, fingerprint("push", "ab", None, b"c"));
        assert_ne!(base, fingerprint("broadcast", "ab", Some(5), b"c"));
        assert_eq!(base, fingerprint("push", "ab", Some(5), b"c"));
    }
}
