//! Push receipts and the offline queue, through real sockets and real HTTP
//! against the real binary: pushes held for an offline client
//! (`?queue_ttl_ms`), delivered after its next welcome or expired, the queue's
//! bounds, and what `GET /messages/{id}` says along the way.

mod common;

use std::time::{Duration, Instant};

use common::{attr, poll_until, wait_until, Client, ServerProc, WAIT};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// A ureq agent aimed at one server's admin API; statuses are data, not errors.
struct Admin {
    base: String,
    agent: ureq::Agent,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {:?}", self.status, self.body))
    }

    fn str_field(&self, name: &str) -> String {
        self.json()[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string {name:?} in {self:?}"))
            .to_string()
    }
}

impl Admin {
    fn new(server: &ServerProc) -> Admin {
        let (base, agent) = common::admin_agent(server, Duration::from_secs(15));
        Admin { base, agent }
    }

    fn get(&self, path: &str) -> Reply {
        reply(self.agent.get(format!("{}{path}", self.base)).call(), path)
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        reply(
            self.agent.post(format!("{}{path}", self.base)).send(body),
            path,
        )
    }

    /// Pushes `text` to `id`, holding it for `ttl_ms` if `id` is offline.
    fn push_held(&self, id: &str, ttl_ms: u64, text: &str) -> Reply {
        self.post(&format!("/clients/{id}/push?queue_ttl_ms={ttl_ms}"), text)
    }

    /// Like `push_held`, but the push must be accepted and held; its id.
    fn queue(&self, id: &str, ttl_ms: u64, text: &str) -> String {
        let r = self.push_held(id, ttl_ms, text);
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(r.json()["status"], "queued", "{r:?}");
        r.str_field("id")
    }

    /// The receipt of push `id`; panics unless 200.
    fn receipt(&self, id: &str) -> Value {
        let r = self.get(&format!("/messages/{id}"));
        assert_eq!(r.status, 200, "receipt of {id}: {r:?}");
        let v = r.json();
        assert_eq!(v["id"], id, "{v}");
        v
    }

    /// Polls the receipt of `id` until its status is `status`; the receipt.
    fn wait_status(&self, id: &str, status: &str) -> Value {
        poll_until(WAIT, || {
            Some(self.receipt(id)).filter(|v| v["status"] == status)
        })
        .unwrap_or_else(|| {
            let last = self.receipt(id);
            panic!("receipt of {id} never became {status:?}; last: {last}")
        })
    }

    /// Polls until `GET /clients/{id}` says 404 (the server saw it go).
    fn wait_offline(&self, id: &str) {
        let path = format!("/clients/{id}");
        if poll_until(WAIT, || (self.get(&path).status == 404).then_some(())).is_none() {
            panic!("{id} still online: {:?}", self.get(&path));
        }
    }
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>, path: &str) -> Reply {
    let mut response = result.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{path}: body: {e}"));
    Reply { status, body }
}

fn server(env: &[(&str, &str)]) -> (ServerProc, Admin) {
    let server = ServerProc::start(env);
    let admin = Admin::new(&server);
    (server, admin)
}

/// Asserts a JSON error body with the given status and `error` code.
fn assert_error(r: &Reply, status: u16, error: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let v = r.json();
    assert_eq!(v["error"], error, "{r:?}");
}

/// A millisecond timestamp field of a receipt (panics if null).
fn ms(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a timestamp in {v}"))
}

/// The next frame, which must be `<msg from="admin" id="{id}">`; its text, unescaped.
fn expect_push(c: &mut Client, id: &str) -> String {
    let frame = c.expect_frame();
    assert!(
        frame.starts_with("<msg "),
        "expected push {id}, got {frame}"
    );
    assert_eq!(attr(&frame, "from").as_deref(), Some("admin"), "{frame}");
    assert_eq!(attr(&frame, "id").as_deref(), Some(id), "{frame}");
    let open = frame.find('>').expect("start tag") + 1;
    let close = frame.rfind("</msg>").expect("end tag");
    let text = &frame[open..close];
    assert!(
        !text.contains('<'),
        "the text must be XML-escaped, got {frame}"
    );
    quick_xml::escape::unescape(text)
        .unwrap_or_else(|e| panic!("bad escape in {frame}: {e}"))
        .into_owned()
}

/// Asserts no frame arrives within `within` (a bounded wait for absence).
fn assert_silent(c: &mut Client, within: Duration) {
    if let Some(frame) = c.frame_within(within) {
        panic!("expected nothing, got {frame}");
    }
}

// -------------------------------------------------------------------- tests

#[test]
fn held_pushes_arrive_after_the_welcome_in_order_and_receipts_follow() {
    let (server, admin) = server(&[]);
    let texts = ["first <b>&", "second \"quoted\" 'x'", "third > é"];
    let ids: Vec<String> = texts
        .iter()
        .map(|t| admin.queue("bob", 60_000, t))
        .collect();
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 3, "push ids must differ: {ids:?}");
    for id in &ids {
        let v = admin.receipt(id);
        assert_eq!(v["to"], "bob", "{v}");
        assert_eq!(v["status"], "queued", "{v}");
        assert!(v["sent_at"].is_null() && v["acked_at"].is_null(), "{v}");
        let created = ms(&v, "created_at");
        let expires = ms(&v, "expires_at");
        assert!(
            (59_999..=60_001).contains(&(expires - created)),
            "expires_at should be created_at + 60000: {v}"
        );
    }

    // login() asserts the first frame is the welcome; the pushes follow it.
    let mut bob = server.login("bob");
    for (id, text) in ids.iter().zip(texts) {
        assert_eq!(expect_push(&mut bob, id), text);
    }

    let mut sent_at = Vec::new();
    for id in &ids {
        let v = admin.receipt(id);
        assert_eq!(v["status"], "sent", "{v}");
        assert!(ms(&v, "sent_at") >= ms(&v, "created_at"), "{v}");
        assert!(v["acked_at"].is_null(), "{v}");
        sent_at.push(ms(&v, "sent_at"));
    }

    bob.send(&format!("<ack id=\"{}\"/>", ids[1]));
    let v = admin.wait_status(&ids[1], "acked");
    assert!(ms(&v, "acked_at") >= ms(&v, "sent_at"), "{v}");
    assert_eq!(
        ms(&v, "sent_at"),
        sent_at[1],
        "sent_at must not change: {v}"
    );
    for id in [&ids[0], &ids[2]] {
        let v = admin.receipt(id);
        assert_eq!(v["status"], "sent", "only the acked push is acked: {v}");
        assert!(v["acked_at"].is_null(), "{v}");
    }
    // Delivered once: nothing else follows.
    assert_silent(&mut bob, Duration::from_millis(200));
}

#[test]
fn a_held_push_expires_and_is_never_delivered() {
    let (server, admin) = server(&[]);
    let id = admin.queue("carol", 100, "too late");
    let v = admin.wait_status(&id, "expired");
    assert!(v["sent_at"].is_null(), "{v}");

    let mut carol = server.login("carol");
    assert_silent(&mut carol, Duration::from_millis(300));
    let v = admin.receipt(&id);
    assert_eq!(v["status"], "expired", "{v}");
    assert!(v["sent_at"].is_null(), "{v}");

    // A push held with a long TTL next to it still arrives, once.
    carol.send("<bye/>");
    admin.wait_offline("carol");
    let short = admin.queue("carol", 100, "gone");
    let long = admin.queue("carol", 60_000, "kept");
    admin.wait_status(&short, "expired");
    let mut carol = server.login("carol");
    assert_eq!(expect_push(&mut carol, &long), "kept");
    assert_silent(&mut carol, Duration::from_millis(300));
    assert_eq!(admin.receipt(&short)["status"], "expired");
    assert_eq!(admin.receipt(&long)["status"], "sent");
}

/// The per-client bound counts held pushes and delivered at-least-once
/// pushes not acked yet (they are kept to be sent again): an ack frees a slot.
#[test]
fn the_per_client_bound_refuses_with_507_and_frees_on_ack() {
    let (server, admin) = server(&[("LIFELINE_QUEUE_MAX_PER_CLIENT", "2")]);
    let a = admin.queue("dave", 60_000, "one");
    let b = admin.queue("dave", 60_000, "two");
    let r = admin.push_held("dave", 60_000, "three");
    assert_error(&r, 507, "queue-full");
    // The refused push left no receipt behind and did not displace the others.
    assert_eq!(admin.receipt(&a)["status"], "queued");
    assert_eq!(admin.receipt(&b)["status"], "queued");
    // Another client's queue is its own.
    admin.queue("erin", 60_000, "for erin");

    let mut dave = server.login("dave");
    assert_eq!(expect_push(&mut dave, &a), "one");
    assert_eq!(expect_push(&mut dave, &b), "two");
    assert_silent(&mut dave, Duration::from_millis(200));
    // Delivered, not acked: still kept, still counted.
    assert_error(&admin.push_held("dave", 60_000, "three"), 507, "queue-full");
    for id in [&a, &b] {
        dave.send(&format!("<ack id=\"{id}\"/>"));
        admin.wait_status(id, "acked");
    }
    dave.send("<bye/>");
    admin.wait_offline("dave");
    // The acks emptied dave's share: two more fit again.
    admin.queue("dave", 60_000, "four");
    admin.queue("dave", 60_000, "five");
    assert_error(&admin.push_held("dave", 60_000, "six"), 507, "queue-full");
}

#[test]
fn the_byte_bound_refuses_with_507_and_frees_on_ack() {
    let (server, admin) = server(&[("LIFELINE_QUEUE_MAX_BYTES", "1000")]);
    let text = "x".repeat(200);
    // Frames are `<msg from="admin" id="ID">` + text + `</msg>`. A push to an
    // online client (never held) shows this run's ids, `p-<run>-1`; the held
    // ones below differ only in their counter, one digit here.
    let _probe = server.login("probe");
    let first = admin.post("/clients/probe/push", "x").str_field("id");
    assert!(first.ends_with("-1"), "{first}");
    let frame_len =
        format!("<msg from=\"admin\" id=\"{first}\">").len() + text.len() + "</msg>".len();
    let fit = 1000 / frame_len;
    assert!((2..9).contains(&fit), "test setup: {fit} frames fit");
    let mut held = Vec::new();
    for _ in 0..fit {
        held.push(admin.queue("frank", 60_000, &text));
    }
    assert_error(&admin.push_held("frank", 60_000, &text), 507, "queue-full");
    // The total bound is shared: another client's push does not fit either...
    assert_error(&admin.push_held("gina", 60_000, &text), 507, "queue-full");
    // ...unless it is small enough for what is left.
    let left = 1000 - fit * frame_len;
    if left > format!("<msg from=\"admin\" id=\"{first}0\"></msg>").len() + 1 {
        admin.queue("gina", 60_000, "s");
    }

    let mut frank = server.login("frank");
    for id in &held {
        assert_eq!(expect_push(&mut frank, id), text);
    }
    // Delivered, not acked: frank's pushes are kept (to be sent again).
    assert_error(&admin.push_held("hank", 60_000, &text), 507, "queue-full");
    for id in &held {
        frank.send(&format!("<ack id=\"{id}\"/>"));
        admin.wait_status(id, "acked");
    }
    // The acks released frank's bytes.
    admin.queue("hank", 60_000, &text);
}

/// An expired held push no longer counts against the per-client bound.
///
/// Bug: `OfflineQueue::expire` only pops expired pushes from the *front* of
/// the client's queue. A short-TTL push behind a long-TTL one has its heap
/// entry consumed while it stays queued (and counted, in `len` and `bytes`)
/// until the long one expires or the client logs in — its receipt says
/// `expired` but it still takes a slot.
#[test]
fn an_expired_push_behind_a_live_one_frees_its_slot() {
    let (server, admin) = server(&[("LIFELINE_QUEUE_MAX_PER_CLIENT", "2")]);
    let long = admin.queue("ivy", 60_000, "long");
    let short = admin.queue("ivy", 100, "short");
    admin.wait_status(&short, "expired");
    // The GET above ran in an iteration whose expiry sweep came after it; the
    // POST below is served in a later iteration, after that sweep.
    let r = admin.push_held("ivy", 60_000, "after");
    assert_eq!(
        r.status, 202,
        "ivy holds one live push and one expired one; a second live push must fit: {r:?}"
    );
    let after = r.str_field("id");
    let mut ivy = server.login("ivy");
    assert_eq!(expect_push(&mut ivy, &long), "long");
    assert_eq!(expect_push(&mut ivy, &after), "after");
    assert_silent(&mut ivy, Duration::from_millis(200));
}

/// Same root cause as above, seen through the total byte bound.
#[test]
fn an_expired_push_behind_a_live_one_frees_its_bytes() {
    let (_server, admin) = server(&[("LIFELINE_QUEUE_MAX_BYTES", "600")]);
    let text = "y".repeat(200);
    admin.queue("jack", 60_000, &text);
    let short = admin.queue("jack", 100, &text);
    admin.wait_status(&short, "expired");
    let r = admin.push_held("kate", 60_000, &text);
    assert_eq!(
        r.status, 202,
        "only one live ~236-byte push is held; another fits in 600 bytes: {r:?}"
    );
}

#[test]
fn an_ack_from_another_client_does_not_ack_the_receipt() {
    let (server, admin) = server(&[]);
    // Online push.
    let mut lena = server.login("lena");
    let mut mallory = server.login("mallory");
    let r = admin.post("/clients/lena/push", "hi lena");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["status"], "sent", "{r:?}");
    let online = r.str_field("id");
    assert_eq!(expect_push(&mut lena, &online), "hi lena");

    // Held push, delivered at login.
    let held = admin.queue("nina", 60_000, "hi nina");
    let mut nina = server.login("nina");
    assert_eq!(expect_push(&mut nina, &held), "hi nina");

    for id in [&online, &held] {
        mallory.send(&format!("<ack id=\"{id}\"/>"));
    }
    // A marker: once mallory's own push is acked, its earlier acks were handled.
    let r = admin.post("/clients/mallory/push", "marker");
    let marker = r.str_field("id");
    assert_eq!(expect_push(&mut mallory, &marker), "marker");
    mallory.send(&format!("<ack id=\"{marker}\"/>"));
    admin.wait_status(&marker, "acked");
    for id in [&online, &held] {
        let v = admin.receipt(id);
        assert_eq!(v["status"], "sent", "mallory's ack must not count: {v}");
        assert!(v["acked_at"].is_null(), "{v}");
    }

    // The recipients' own acks do.
    lena.send(&format!("<ack id=\"{online}\"/>"));
    nina.send(&format!("<ack id=\"{held}\"/>"));
    admin.wait_status(&online, "acked");
    admin.wait_status(&held, "acked");
}

/// A recipient's ack for a push it was never given (it expired in the
/// queue; push ids are guessable) must not turn the receipt into `acked`.
#[test]
fn an_ack_for_an_expired_push_leaves_it_expired() {
    let (server, admin) = server(&[]);
    let id = admin.queue("olga", 100, "never delivered");
    admin.wait_status(&id, "expired");
    let mut olga = server.login("olga");
    assert_silent(&mut olga, Duration::from_millis(100));
    olga.send(&format!("<ack id=\"{id}\"/>"));
    // A marker push acked after it: the ack above has been handled by then.
    let marker = admin.post("/clients/olga/push", "marker").str_field("id");
    assert_eq!(expect_push(&mut olga, &marker), "marker");
    olga.send(&format!("<ack id=\"{marker}\"/>"));
    admin.wait_status(&marker, "acked");
    let v = admin.receipt(&id);
    assert_eq!(
        v["status"], "expired",
        "a push that was never sent cannot be acked: {v}"
    );
    assert!(v["acked_at"].is_null(), "{v}");
}

#[test]
fn an_online_push_is_sent_then_acked_and_unknown_ids_are_404() {
    let (server, admin) = server(&[]);
    let mut pat = server.login("pat");
    let r = admin.post("/clients/pat/push", "hello");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["status"], "sent", "{r:?}");
    let id = r.str_field("id");
    let v = admin.receipt(&id);
    assert_eq!(v["to"], "pat", "{v}");
    assert_eq!(v["status"], "sent", "{v}");
    assert!(ms(&v, "sent_at") >= ms(&v, "created_at"), "{v}");
    assert!(v["acked_at"].is_null() && v["expires_at"].is_null(), "{v}");

    assert_eq!(expect_push(&mut pat, &id), "hello");
    pat.send(&format!("<ack id=\"{id}\"/>"));
    let v = admin.wait_status(&id, "acked");
    assert!(ms(&v, "acked_at") >= ms(&v, "sent_at"), "{v}");

    // queue_ttl_ms is only about offline clients: an online one gets it now.
    let r = admin.push_held("pat", 60_000, "now");
    assert_eq!(r.json()["status"], "sent", "{r:?}");
    assert_eq!(expect_push(&mut pat, &r.str_field("id")), "now");

    let run = id.rsplit_once('-').map_or("", |(run, _)| run).to_string();
    for unknown in [
        format!("{run}-999999"),
        format!("{run}-0"),
        "p-0-1".to_string(),
        "push-1".to_string(),
        "nope".to_string(),
    ] {
        assert_error(
            &admin.get(&format!("/messages/{unknown}")),
            404,
            "unknown-message",
        );
    }
}

#[test]
fn receipts_are_forgotten_after_their_ttl() {
    let (server, admin) = server(&[("LIFELINE_RECEIPT_TTL_MS", "1000")]);
    let _quinn = server.login("quinn");
    let start = Instant::now();
    let id = admin.post("/clients/quinn/push", "x").str_field("id");
    let held = admin.queue("rick", 60_000, "y");
    admin.receipt(&id);
    admin.receipt(&held);
    let deadline = start + Duration::from_secs(5);
    for id in [&id, &held] {
        let left = deadline.saturating_duration_since(Instant::now());
        let gone = poll_until(left, || {
            let r = admin.get(&format!("/messages/{id}"));
            if r.status == 404 {
                return Some(r);
            }
            assert_eq!(r.status, 200, "{r:?}");
            None
        })
        .unwrap_or_else(|| panic!("receipt {id} still there after {:?}", start.elapsed()));
        assert_error(&gone, 404, "unknown-message");
    }
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "forgotten too early: {:?}",
        start.elapsed()
    );
}

/// Past its TTL a receipt is gone for the very first reader, even when the
/// server had nothing else to do meanwhile (the sweep runs after a request
/// is served, and nothing wakes the loop for a receipt's TTL).
#[test]
fn a_receipt_past_its_ttl_is_404_on_the_first_read() {
    let (_server, admin) = server(&[("LIFELINE_RECEIPT_TTL_MS", "1000")]);
    let id = admin.queue("sam", 60_000, "z");
    admin.receipt(&id);
    // Sleeping here is the precondition (an idle server past the TTL), not a
    // hope: the read below must say 404 whatever happened meanwhile.
    std::thread::sleep(Duration::from_millis(1300));
    let r = admin.get(&format!("/messages/{id}"));
    assert_error(&r, 404, "unknown-message");
}

#[test]
fn offline_pushes_without_a_queue_ttl_are_404_and_bad_ttls_are_400() {
    let (server, admin) = server(&[]);
    assert_error(&admin.post("/clients/tina/push", "x"), 404, "offline");
    for bad in [
        "0",
        "abc",
        "-5",
        "1.5",
        "",
        "604800001",
        "99999999999999999999",
    ] {
        let r = admin.post(&format!("/clients/tina/push?queue_ttl_ms={bad}"), "x");
        assert_error(&r, 400, "bad-queue-ttl");
    }
    // Bad TTLs are refused for online clients too, and nothing is delivered.
    let mut tina = server.login("tina");
    let r = admin.post("/clients/tina/push?queue_ttl_ms=0", "x");
    assert_error(&r, 400, "bad-queue-ttl");
    assert_silent(&mut tina, Duration::from_millis(200));
    tina.send("<bye/>");
    admin.wait_offline("tina");
    // None of the refused pushes was held.
    let mut tina = server.login("tina");
    assert_silent(&mut tina, Duration::from_millis(300));
}

/// Held pushes more than the connection can take at login: a receipt says
/// `sent` only for a push the client actually received (`Status::Dropped`
/// exists for the rest), and the client is not cut off by its own backlog.
#[test]
fn a_backlog_larger_than_max_outbound_is_not_all_reported_sent() {
    let (server, admin) = server(&[
        ("LIFELINE_MAX_FRAME", "1048576"),
        ("LIFELINE_QUEUE_MAX_BYTES", "67108864"),
    ]);
    let text = "w".repeat(500_000);
    let ids: Vec<String> = (0..40)
        .map(|_| admin.queue("uma", 600_000, &text))
        .collect();
    // Log in without reading until the server has handled the login (the
    // first receipt leaves `queued`), so the backlog cannot all fit in
    // flight: the socket buffers are a few MB, the backlog is 20 MB.
    let mut uma = server.connect();
    uma.send("<login id=\"uma\"/>");
    wait_until("the login to be handled", WAIT, || {
        admin.receipt(&ids[0])["status"] != "queued"
    });
    let welcome = uma.expect_frame();
    assert!(welcome.starts_with("<welcome "), "{welcome}");
    // Read everything that comes, until the server closes or goes quiet.
    let mut got = std::collections::BTreeSet::new();
    while let Some(frame) = uma.frame_within(Duration::from_secs(2)) {
        if let Some(id) = attr(&frame, "id") {
            got.insert(id);
        }
    }
    let sent: Vec<&String> = ids
        .iter()
        .filter(|id| admin.receipt(id)["status"] == "sent")
        .collect();
    let lost: Vec<&&String> = sent.iter().filter(|id| !got.contains(**id)).collect();
    assert!(
        lost.is_empty(),
        "{} receipts say sent but uma received only {} pushes; never received: {lost:?}; online: {}",
        sent.len(),
        got.len(),
        admin.get("/clients/uma").status
    );
}
