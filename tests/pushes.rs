//! Pushes a back end can build on, through real sockets and real HTTP
//! against the real binary: `Idempotency-Key` (a retried push is delivered
//! once and answered alike), push ids that never repeat across a restart,
//! at-least-once redelivery with `queue_ttl_ms` (a client that dies before
//! acking gets the push again, once, under the same id), and the `queued`
//! and `expired` events on `/events` that hand a push off to OS push.
//!
//! Every wait polls for its condition with a deadline.

mod common;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::{attr, Client, ServerProc, WAIT};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// The admin API of one server; statuses are data, not errors.
#[derive(Clone)]
struct Admin {
    base: String,
    agent: ureq::Agent,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    /// `Idempotent-Replayed: true` was on the answer.
    replayed: bool,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {:?}", self.status, self.body))
    }

    fn id(&self) -> String {
        self.json()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {self:?}"))
            .to_string()
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Admin {
    fn new(server: &ServerProc) -> Admin {
        let (base, agent) = common::admin_agent(server, Duration::from_secs(15));
        Admin { base, agent }
    }

    /// POST `path` with `body`, and `Idempotency-Key: key` when given.
    fn post(&self, path: &str, key: Option<&str>, body: &str) -> Reply {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let mut response = request
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("POST {path}: body: {e}"));
        Reply {
            status,
            body,
            replayed,
        }
    }

    fn receipt(&self, id: &str) -> Value {
        let path = format!("{}/messages/{id}", self.base);
        let mut response = self
            .agent
            .get(&path)
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "receipt of {id}");
        let body = response.body_mut().read_to_string().expect("body");
        serde_json::from_str(&body).expect("receipt JSON")
    }

    /// The value of an unlabelled counter in `GET /metrics`.
    fn metric(&self, name: &str) -> u64 {
        let mut response = self
            .agent
            .get(format!("{}/metrics", self.base))
            .call()
            .expect("GET /metrics");
        let text = response.body_mut().read_to_string().expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// Polls the receipt of `id` until `field` is `value`; the receipt.
    fn wait_receipt(&self, id: &str, field: &str, value: Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.receipt(id);
            if v[field] == value {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "receipt of {id}: {field} never became {value}; last: {v}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls until `GET /clients/{id}` is 404 (the server saw it go).
    fn wait_offline(&self, id: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self
                .agent
                .get(format!("{}/clients/{id}", self.base))
                .call()
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if status == 404 {
                return;
            }
            assert!(Instant::now() < deadline, "{id} still online");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The next frame, which must be a push `<msg from="admin">`; its id.
fn expect_push(c: &mut Client, text: &str) -> String {
    let frame = c.expect_frame();
    assert!(frame.starts_with("<msg "), "expected a push, got {frame}");
    assert_eq!(attr(&frame, "from").as_deref(), Some("admin"), "{frame}");
    assert!(frame.contains(&format!(">{text}</msg>")), "{frame}");
    attr(&frame, "id").expect("a push has an id")
}

/// Asserts no frame arrives within `within` (a bounded wait for absence).
fn assert_silent(c: &mut Client, within: Duration) {
    if let Some(frame) = c.frame_within(within) {
        panic!("expected nothing, got {frame}");
    }
}

/// Ends a client the way a phone dies: the socket closes, no `bye`, no ack.
fn kill(c: Client) {
    let _ = c.stream.shutdown(Shutdown::Both);
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct SseEvent {
    seq: u64,
    event: String,
    data: Value,
}

/// A raw `GET /events` connection.
struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Sse {
    fn open(server: &ServerProc) -> Sse {
        let mut stream = TcpStream::connect(server.admin.expect("admin API")).expect("connect");
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: lifeline\r\n\r\n")
            .expect("send");
        let mut sse = Sse {
            stream,
            buf: Vec::new(),
        };
        let deadline = Instant::now() + WAIT;
        let end = loop {
            if let Some(end) = find(&sse.buf, b"\r\n\r\n") {
                break end + 4;
            }
            assert!(sse.fill(deadline), "no response head for /events");
        };
        let head = String::from_utf8_lossy(&sse.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        sse.buf.drain(..end);
        sse
    }

    fn fill(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => false,
        }
    }

    fn next_within(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 events");
                let (mut seq, mut event, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        seq = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(v).ok();
                    }
                }
                if let (Some(seq), Some(event), Some(data)) = (seq, event, data) {
                    return Some(SseEvent { seq, event, data });
                }
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// The next event; panics when none comes within `WAIT`.
    fn next(&mut self, what: &str) -> SseEvent {
        self.next_within(WAIT)
            .unwrap_or_else(|| panic!("no event within {WAIT:?} (expected {what})"))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Asserts a push event: `kind` for client `who` and push `message`.
fn assert_push_event(e: &SseEvent, kind: &str, who: &str, message: &str) {
    assert_eq!(e.event, kind, "{e:?}");
    assert_eq!(e.data["event"], kind, "{e:?}");
    assert_eq!(e.data["id"], who, "{e:?}");
    assert_eq!(e.data["message"], message, "{e:?}");
    assert_eq!(e.data["seq"].as_u64(), Some(e.seq), "{e:?}");
    assert!(e.data["at"].as_u64().is_some(), "{e:?}");
}

// ------------------------------------------------------------- idempotency

#[test]
fn a_repeated_push_with_the_same_key_is_delivered_once_and_answered_alike() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut bob = server.login("bob");

    let first = admin.post("/clients/bob/push", Some("order-17"), "hello");
    assert_eq!(first.status, 202, "{first:?}");
    assert!(!first.replayed, "{first:?}");
    let id = first.id();
    assert_eq!(expect_push(&mut bob, "hello"), id);

    // The retry: the same answer, byte for byte, and nothing delivered.
    let again = admin.post("/clients/bob/push", Some("order-17"), "hello");
    assert_eq!((again.status, &again.body), (202, &first.body));
    assert!(again.replayed, "a replay says so: {again:?}");
    // The key with another request: refused, nothing delivered.
    let other_body = admin.post("/clients/bob/push", Some("order-17"), "HELLO");
    assert_eq!(
        (other_body.status, other_body.error()),
        (422, "idempotency-key-reused".into())
    );
    let _carol = server.login("carol");
    let other_target = admin.post("/clients/carol/push", Some("order-17"), "hello");
    assert_eq!(other_target.status, 422, "{other_target:?}");
    let other_ttl = admin.post(
        "/clients/bob/push?queue_ttl_ms=1000",
        Some("order-17"),
        "hello",
    );
    assert_eq!(other_ttl.status, 422, "{other_ttl:?}");
    // A marker push shows the repeats were handled and delivered nothing.
    let marker = admin
        .post("/clients/bob/push", Some("order-18"), "marker")
        .id();
    assert_ne!(marker, id);
    assert_eq!(expect_push(&mut bob, "marker"), marker);
    assert_silent(&mut bob, Duration::from_millis(200));

    // A bad key is refused before anything is delivered.
    for bad in ["", &"k".repeat(256)] {
        let r = admin.post("/clients/bob/push", Some(bad), "x");
        assert_eq!(
            (r.status, r.error()),
            (400, "bad-idempotency-key".into()),
            "{bad:?}"
        );
    }
    assert_silent(&mut bob, Duration::from_millis(100));
}

#[test]
fn a_held_push_and_a_broadcast_are_idempotent_and_refusals_are_not_remembered() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);

    // Held for offline dave: the retry is the same push, delivered once.
    let held = admin.post("/clients/dave/push?queue_ttl_ms=60000", Some("h1"), "later");
    assert_eq!(held.json()["status"], "queued", "{held:?}");
    let again = admin.post("/clients/dave/push?queue_ttl_ms=60000", Some("h1"), "later");
    assert_eq!(
        (again.status, &again.body, again.replayed),
        (202, &held.body, true)
    );
    let mut dave = server.login("dave");
    assert_eq!(expect_push(&mut dave, "later"), held.id());
    assert_silent(&mut dave, Duration::from_millis(200));

    // A refusal (404: erin is offline) is not remembered: the retry is real.
    let refused = admin.post("/clients/erin/push", Some("e1"), "hi erin");
    assert_eq!(refused.status, 404, "{refused:?}");
    let mut erin = server.login("erin");
    let retried = admin.post("/clients/erin/push", Some("e1"), "hi erin");
    assert_eq!(
        (retried.status, retried.replayed),
        (202, false),
        "{retried:?}"
    );
    assert_eq!(expect_push(&mut erin, "hi erin"), retried.id());

    // A broadcast: each online client gets it once.
    let first = admin.post("/broadcast", Some("b1"), "to all");
    assert_eq!(first.json()["recipients"], 2, "{first:?}");
    let again = admin.post("/broadcast", Some("b1"), "to all");
    assert_eq!(
        (again.status, &again.body, again.replayed),
        (202, &first.body, true)
    );
    // Keys are one namespace: a push cannot reuse a broadcast's key.
    let clash = admin.post("/clients/dave/push", Some("b1"), "to all");
    assert_eq!(clash.status, 422, "{clash:?}");
    for c in [&mut dave, &mut erin] {
        assert_eq!(expect_push(c, "to all"), first.id());
        assert_silent(c, Duration::from_millis(200));
    }
}

#[test]
fn a_repeat_while_the_first_waits_for_its_ack_is_409_then_gets_the_final_answer() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut bob = server.login("bob");
    let waiting = {
        let admin = admin.clone();
        std::thread::spawn(move || {
            admin.post("/clients/bob/push?wait_ack_ms=10000", Some("w1"), "ack me")
        })
    };
    // Bob has it: the first request is being served and waits.
    let id = expect_push(&mut bob, "ack me");
    let during = admin.post("/clients/bob/push?wait_ack_ms=10000", Some("w1"), "ack me");
    assert_eq!(
        (during.status, during.error()),
        (409, "idempotency-in-progress".into())
    );
    bob.send(&format!("<ack id=\"{id}\"/>"));
    let first = waiting.join().expect("the waiting request");
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.json()["status"], "acked");
    let after = admin.post("/clients/bob/push?wait_ack_ms=10000", Some("w1"), "ack me");
    assert_eq!(
        (after.status, &after.body, after.replayed),
        (200, &first.body, true)
    );
    assert_silent(&mut bob, Duration::from_millis(200));
}

// ------------------------------------------------------------------- ids

/// Ids are `p-<run>-<n>`: the run is the start time in base 36, so a
/// restarted server never names a push like one of the run before.
#[test]
fn push_ids_never_repeat_across_a_restart() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let server = ServerProc::start(&[]);
        let admin = Admin::new(&server);
        let mut bob = server.login("bob");
        let mut ids = Vec::new();
        for text in ["one", "two", "three"] {
            let id = admin.post("/clients/bob/push", None, text).id();
            assert_eq!(expect_push(&mut bob, text), id);
            ids.push(id);
        }
        ids.push(
            admin
                .post("/clients/nobody/push?queue_ttl_ms=1000", None, "held")
                .id(),
        );
        ids.push(admin.post("/broadcast", None, "all").id());
        runs.push(ids);
        drop(server); // stopped by its PID before the next one starts
    }
    let all: BTreeSet<&String> = runs.iter().flatten().collect();
    assert_eq!(all.len(), 10, "an id repeated: {runs:?}");
    let mut prefixes = BTreeSet::new();
    for ids in &runs {
        for (n, id) in ids.iter().enumerate() {
            let (prefix, counter) = id.rsplit_once('-').expect("p-RUN-N");
            let run = prefix.strip_prefix("p-").expect("starts with p-");
            assert!(
                !run.is_empty()
                    && run
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
                "{id}"
            );
            assert_eq!(
                counter,
                (n + 1).to_string(),
                "counted from 1 in its run: {ids:?}"
            );
            prefixes.insert(prefix.to_string());
        }
    }
    assert_eq!(prefixes.len(), 2, "one prefix per run: {runs:?}");
}

// ---------------------------------------------------------- at-least-once

#[test]
fn a_client_that_dies_before_acking_gets_the_push_again_with_the_same_id_exactly_once() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut bob = server.login("bob");
    let sent = admin.post("/clients/bob/push?queue_ttl_ms=60000", None, "important");
    assert_eq!(sent.json()["status"], "sent", "{sent:?}");
    let id = sent.id();
    // Without queue_ttl_ms: at most once, as before.
    let once = admin.post("/clients/bob/push", None, "casual").id();
    assert_eq!(expect_push(&mut bob, "important"), id);
    assert_eq!(expect_push(&mut bob, "casual"), once);
    let v = admin.receipt(&id);
    assert_eq!(
        (v["status"].as_str(), v["redelivered"].as_u64()),
        (Some("sent"), Some(0))
    );

    kill(bob); // received, never acked
    admin.wait_offline("bob");
    let v = admin.receipt(&id);
    assert_eq!(v["status"], "queued", "handed back: {v}");

    let mut bob = server.login("bob");
    assert_eq!(expect_push(&mut bob, "important"), id, "the same id again");
    assert_silent(&mut bob, Duration::from_millis(300)); // once; "casual" is not resent
    let v = admin.wait_receipt(&id, "status", "sent".into());
    assert_eq!(v["redelivered"], 1, "{v}");
    assert_eq!(admin.receipt(&once)["redelivered"], 0);
    assert_eq!(admin.metric("lifeline_pushes_redelivered_total"), 1);

    bob.send(&format!("<ack id=\"{id}\"/>"));
    let v = admin.wait_receipt(&id, "status", "acked".into());
    assert_eq!(v["redelivered"], 1, "{v}");
    kill(bob);
    admin.wait_offline("bob");
    let mut bob = server.login("bob");
    assert_silent(&mut bob, Duration::from_millis(300));
}

#[test]
fn a_replaced_connection_hands_its_unacked_pushes_to_the_new_login() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut old = server.login("bob");
    let id = admin
        .post("/clients/bob/push?queue_ttl_ms=60000", None, "carry over")
        .id();
    assert_eq!(expect_push(&mut old, "carry over"), id);

    let mut new = server.login("bob"); // login() asserts the welcome came first
    assert_eq!(expect_push(&mut new, "carry over"), id);
    assert_silent(&mut new, Duration::from_millis(300));
    let bye = old.expect_frame();
    assert_eq!(bye, "<bye reason=\"replaced\"/>");
    assert_eq!(
        admin.wait_receipt(&id, "status", "sent".into())["redelivered"],
        1
    );
    new.send(&format!("<ack id=\"{id}\"/>"));
    admin.wait_receipt(&id, "status", "acked".into());
}

// ----------------------------------------------------------- push events

#[test]
fn queued_and_expired_events_name_the_client_and_the_push() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut events = Sse::open(&server);

    let kept = admin
        .post("/clients/carol/push?queue_ttl_ms=60000", None, "kept")
        .id();
    let e = events.next("queued for carol");
    assert_push_event(&e, "queued", "carol", &kept);
    let short = admin
        .post("/clients/dave/push?queue_ttl_ms=150", None, "too late")
        .id();
    let queued = events.next("queued for dave");
    assert_push_event(&queued, "queued", "dave", &short);
    let expired = events.next("expired for dave");
    assert_push_event(&expired, "expired", "dave", &short);
    assert_eq!(expired.seq, queued.seq + 1, "one numbering with presence");
    assert_eq!(admin.receipt(&short)["status"], "expired");

    // Delivered: online, no expiry. Then an unacked push handed back when
    // its client dies is `queued` again, after the `offline`.
    let mut carol = server.login("carol");
    assert_eq!(events.next("carol online").event, "online");
    assert_eq!(expect_push(&mut carol, "kept"), kept);
    kill(carol);
    let offline = events.next("carol offline");
    assert_eq!(
        (offline.event.as_str(), &offline.data["id"]),
        ("offline", &Value::from("carol"))
    );
    let back = events.next("carol's push handed back");
    assert_push_event(&back, "queued", "carol", &kept);
    assert_eq!(back.seq, offline.seq + 1);
    // A push to an online client is no event.
    let _erin = server.login("erin");
    assert_eq!(events.next("erin online").event, "online");
    admin.post("/clients/erin/push?queue_ttl_ms=60000", None, "now");
    if let Some(e) = events.next_within(Duration::from_millis(300)) {
        panic!("no event for a push sent at once, got {e:?}");
    }
}
