//! Cluster mode, pushes as issue 19 made them, across nodes: at-least-once
//! pushes kept in Redis until acked and handed back when their connection
//! ends (to the next login on any node, to the connection that replaced it
//! on another node, and by the survivor when a node dies); `queued` and
//! `expired` events in the one cluster stream; `Idempotency-Key` answers
//! that hold whichever node a retry reaches; the cluster's metrics pass
//! promtool.

mod cluster_common;
mod common;
mod opskit;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_common::{node, wait_for, Admin, RedisLink, RedisProc, Sse};
use common::{attr, Closed};

const TTL: u64 = 1500;
const WAIT: Duration = Duration::from_secs(5);

/// How many events of `kind` the cluster's stream holds.
fn stream_count(redis: &RedisProc, kind: &str) -> i64 {
    let script = "local n = 0 \
        for _, e in ipairs(redis.call('XRANGE', 'll:events', '-', '+')) do \
          for i = 1, #e[2], 2 do \
            if e[2][i] == 'k' and e[2][i + 1] == ARGV[1] then n = n + 1 end \
          end \
        end return n";
    redis.int(&["EVAL", script, "0", kind])
}

/// The push frame's id, checking its text.
fn push_id(frame: &str, text: &str) -> String {
    assert!(frame.ends_with(&format!(">{text}</msg>")), "{frame}");
    attr(frame, "id").expect("a push has an id")
}

#[test]
fn an_unacked_push_goes_back_to_the_queue_and_follows_the_next_login_on_any_node() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut events = Sse::open(&a, None);
    let mut bob = b.login("bob");
    wait_for("bob in Redis", WAIT, || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });
    let admin_a = Admin::new(&a);
    // Through node A to bob on node B, at-least-once.
    let (status, reply) = admin_a.post("/clients/bob/push?queue_ttl_ms=60000", "important");
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["status"], "sent");
    let mid = reply["id"].as_str().unwrap().to_string();
    assert_eq!(push_id(&bob.expect_frame(), "important"), mid);
    // Node B recorded it as kept before it answered node A.
    assert_eq!(redis.int(&["HLEN", "ll:u:bob"]), 1);

    // The connection ends unacked: bob is offline, his push queued again.
    drop(bob);
    let seen = events.until(WAIT, "the queued event", |e| e.kind == "queued");
    let queued = seen.last().unwrap();
    assert_eq!(queued.data["id"], "bob");
    assert_eq!(queued.data["message"].as_str(), Some(mid.as_str()));
    assert_eq!(queued.data["node"], "node-b", "the node that had sent it");
    assert!(
        seen.iter()
            .any(|e| e.kind == "offline" && e.data["id"] == "bob"),
        "offline before queued: {seen:?}"
    );
    let (_, receipt) = admin_a.get(&format!("/messages/{mid}"));
    assert_eq!(receipt["status"], "queued", "{receipt}");

    // The next login, on node A: the same push again, after the welcome.
    let mut bob = a.login("bob");
    assert_eq!(push_id(&bob.expect_frame(), "important"), mid);
    let (_, receipt) = admin_a.get(&format!("/messages/{mid}"));
    assert_eq!(receipt["status"], "sent", "{receipt}");
    assert_eq!(receipt["redelivered"], 1, "{receipt}");
    bob.send(&format!("<ack id=\"{mid}\"/>"));
    wait_for("acked", WAIT, || {
        let (_, r) = Admin::new(&b).get(&format!("/messages/{mid}"));
        (r["status"] == "acked").then_some(())
    });
    assert_eq!(redis.int(&["EXISTS", "ll:u:bob", "ll:q:bob"]), 0);

    // Acked: its end hands nothing back.
    drop(bob);
    events.until(WAIT, "bob offline again", |e| {
        e.kind == "offline" && e.data["id"] == "bob"
    });
    // A round trip on node A's command connection, behind its hand-back.
    assert_eq!(admin_a.get("/clients").0, 200);
    assert_eq!(redis.int(&["EXISTS", "ll:q:bob"]), 0);
    assert_eq!(stream_count(&redis, "queued"), 1);
}

#[test]
fn a_replaced_connections_unacked_push_follows_the_new_login_on_the_other_node() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut first = a.login("carol");
    wait_for("carol in Redis", WAIT, || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });
    // A push to a client of the pushing node itself.
    let (status, reply) = Admin::new(&a).post("/clients/carol/push?queue_ttl_ms=60000", "keep");
    assert_eq!(status, 202, "{reply}");
    let mid = reply["id"].as_str().unwrap().to_string();
    assert_eq!(push_id(&first.expect_frame(), "keep"), mid);

    // carol logs in on node B before acking: node A's connection is
    // replaced, and its unacked push follows the new login at once.
    let mut second = b.login("carol");
    match first.wait_closed(WAIT) {
        Closed::Yes(frames) => assert_eq!(
            frames.last().map(String::as_str),
            Some("<bye reason=\"replaced\"/>")
        ),
        Closed::Timeout => panic!("the replaced connection stayed open"),
    }
    assert_eq!(push_id(&second.expect_frame(), "keep"), mid);
    // carol never went offline: no `queued` event.
    assert_eq!(stream_count(&redis, "queued"), 0);
    second.send(&format!("<ack id=\"{mid}\"/>"));
    wait_for("acked", WAIT, || {
        let (_, r) = Admin::new(&b).get(&format!("/messages/{mid}"));
        (r["status"] == "acked").then_some(())
    });
}

#[test]
fn a_held_push_is_queued_then_expired_in_the_stream_of_every_node() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut on_a = Sse::open(&a, None);
    let mut on_b = Sse::open(&b, None);
    let (status, reply) = Admin::new(&a).post("/clients/dana/push?queue_ttl_ms=300", "soon gone");
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["status"], "queued");
    let mid = reply["id"].as_str().unwrap().to_string();
    let mut orders = Vec::new();
    for events in [&mut on_a, &mut on_b] {
        let seen = events.until(WAIT, "the expired event", |e| e.kind == "expired");
        let kinds: Vec<(String, String)> = seen
            .iter()
            .map(|e| (e.id.clone().unwrap(), e.kind.clone()))
            .collect();
        for e in &seen {
            assert_eq!(e.data["id"], "dana", "{e:?}");
            assert_eq!(e.data["message"].as_str(), Some(mid.as_str()), "{e:?}");
            assert_eq!(e.data["node"], "node-a", "{e:?}");
        }
        assert_eq!(
            kinds.iter().map(|k| k.1.as_str()).collect::<Vec<_>>(),
            ["queued", "expired"]
        );
        orders.push(kinds);
    }
    assert_eq!(orders[0], orders[1], "one stream, one order");
    let (_, receipt) = Admin::new(&b).get(&format!("/messages/{mid}"));
    assert_eq!(receipt["status"], "expired", "{receipt}");
    assert_eq!(redis.int(&["EXISTS", "ll:q:dana"]), 0);
    assert_eq!(redis.int(&["ZCARD", "ll:qexp"]), 0);
    // Counted once, by the node that swept it (its count follows the
    // sweep's reply, which may trail the event on the other connection).
    let expired = wait_for("the expiry counted", WAIT, || {
        let sum: f64 = [&a, &b]
            .iter()
            .map(|n| Admin::new(n).metric("lifeline_pushes_expired_total"))
            .sum();
        (sum >= 1.0).then_some(sum)
    });
    assert_eq!(expired, 1.0);
    // dana logs in later: nothing is delivered.
    let mut dana = a.login("dana");
    dana.send("<heartbeat mode=\"ping\" seq=\"1\"/>");
    assert_eq!(dana.expect_frame(), "<heartbeat mode=\"pong\" seq=\"1\"/>");
}

#[test]
fn a_killed_nodes_unacked_pushes_are_handed_back_by_the_survivor() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let mut doomed = node(&redis.url(), "node-c", TTL, &[]);
    let mut erin = doomed.login("erin");
    wait_for("erin in Redis", WAIT, || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });
    let mut events = Sse::open(&a, None);
    let (status, reply) = Admin::new(&a).post("/clients/erin/push?queue_ttl_ms=60000", "last");
    assert_eq!(status, 202, "{reply}");
    let mid = reply["id"].as_str().unwrap().to_string();
    assert_eq!(push_id(&erin.expect_frame(), "last"), mid);

    doomed.signal(libc::SIGKILL);
    assert!(doomed.wait_exit(WAIT).is_none(), "killed, no exit code");
    let seen = events.until(Duration::from_millis(TTL + 3000), "queued", |e| {
        e.kind == "queued"
    });
    assert!(
        seen.iter()
            .any(|e| e.kind == "offline" && e.data["reason"] == "node-lost"),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().unwrap().data["message"].as_str(),
        Some(mid.as_str())
    );
    assert_eq!(redis.int(&["EXISTS", "ll:u:erin", "ll:unodes:node-c"]), 0);
    drop(erin);
    // erin comes back on the survivor: the push again.
    let mut erin = a.login("erin");
    assert_eq!(push_id(&erin.expect_frame(), "last"), mid);
}

#[test]
fn a_node_cut_off_from_redis_catches_up_with_pushes_when_it_is_back() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let link = RedisLink::to(&redis);
    let a = node(&link.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let (admin_a, admin_b) = (Admin::new(&a), Admin::new(&b));
    let mut ivy = a.login("ivy");
    wait_for("ivy in Redis", WAIT, || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });
    // An at-least-once push to ivy on node A, not acked; one held for hal.
    let (status, sent) = admin_b.post("/clients/ivy/push?queue_ttl_ms=60000", "first");
    assert_eq!(status, 202, "{sent}");
    let first = sent["id"].as_str().unwrap().to_string();
    assert_eq!(push_id(&ivy.expect_frame(), "first"), first);
    let (status, held) = admin_b.post("/clients/hal/push?queue_ttl_ms=60000", "waiting");
    assert_eq!(held["status"], "queued", "{status} {held}");
    let waiting = held["id"].as_str().unwrap().to_string();

    // Node A loses Redis: hal logs in there (nothing to read yet), and
    // ivy's connection ends unacked (nothing to tell).
    link.cut();
    wait_for("node A without Redis", WAIT, || {
        (admin_a.metric("lifeline_cluster_up") == 0.0).then_some(())
    });
    let mut hal = a.login("hal");
    drop(ivy);
    wait_for("ivy's close on node A", WAIT, || {
        (admin_a.metric("lifeline_clients_online") == 1.0).then_some(())
    });

    // Redis is back for node A: hal gets his push, ivy's goes back to her
    // queue and follows her next login, on node B.
    link.restore();
    let frame = hal
        .frame_within(Duration::from_secs(10))
        .expect("hal's push");
    assert_eq!(push_id(&frame, "waiting"), waiting);
    wait_for("ivy's push queued again", Duration::from_secs(10), || {
        (redis.int(&["LLEN", "ll:q:ivy"]) == 1).then_some(())
    });
    let mut ivy = b.login("ivy");
    assert_eq!(push_id(&ivy.expect_frame(), "first"), first);
}

#[test]
fn an_idempotency_key_holds_across_nodes() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut fay = b.login("fay");
    wait_for("fay in Redis", WAIT, || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });
    let (admin_a, admin_b) = (Admin::new(&a), Admin::new(&b));
    let path = "/clients/fay/push?queue_ttl_ms=60000";
    let (status, first, replayed) = admin_a.post_keyed(path, "order-7", "paid");
    assert_eq!((status, replayed), (202, false), "{first}");
    let mid = first["id"].as_str().unwrap().to_string();
    assert_eq!(push_id(&fay.expect_frame(), "paid"), mid);
    // The retry reaches the other node: the first answer, nothing sent
    // (fay's next frame below is the next push).
    let accepted = |admins: [&Admin; 2]| -> f64 {
        admins
            .iter()
            .map(|a| a.metric("lifeline_pushes_accepted_total"))
            .sum()
    };
    let before = accepted([&admin_a, &admin_b]);
    for admin in [&admin_b, &admin_a] {
        let (status, again, replayed) = admin.post_keyed(path, "order-7", "paid");
        assert_eq!((status, replayed), (202, true), "{again}");
        assert_eq!(again, first);
    }
    assert_eq!(accepted([&admin_a, &admin_b]), before);
    let (status, reused, _) = admin_b.post_keyed(path, "order-7", "other");
    assert_eq!(status, 422, "{reused}");

    // While the first request waits for its ack, a repeat through the
    // other node is 409; after the ack it gets the acked answer.
    let wait_path = "/clients/fay/push?wait_ack_ms=5000";
    let waiter = std::thread::spawn({
        let admin = Admin::new(&a);
        move || admin.post_keyed(wait_path, "order-8", "ack me")
    });
    let second = push_id(&fay.expect_frame(), "ack me");
    let (status, busy, _) = admin_b.post_keyed(wait_path, "order-8", "ack me");
    assert_eq!(status, 409, "{busy}");
    fay.send(&format!("<ack id=\"{second}\"/>"));
    let (status, answer, _) = waiter.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "acked");
    let (status, replay, replayed) = admin_b.post_keyed(wait_path, "order-8", "ack me");
    assert_eq!((status, replayed), (200, true), "{replay}");
    assert_eq!(replay, answer);

    // A refused request leaves its key free: the retry is a real one.
    let (status, refused, _) = admin_a.post_keyed("/clients/gus/push", "order-9", "hi");
    assert_eq!(status, 404, "{refused}");
    let mut gus = a.login("gus");
    wait_for("gus in Redis", WAIT, || {
        (redis.int(&["HLEN", "ll:presence"]) == 2).then_some(())
    });
    let (status, sent, replayed) = admin_b.post_keyed("/clients/gus/push", "order-9", "hi");
    assert_eq!((status, replayed), (202, false), "{sent}");
    assert!(gus.expect_frame().ends_with(">hi</msg>"));
    fay.send("<heartbeat mode=\"ping\" seq=\"1\"/>");
    assert_eq!(fay.expect_frame(), "<heartbeat mode=\"pong\" seq=\"1\"/>");
}

#[test]
fn a_cluster_nodes_metrics_pass_promtool() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut gil = b.login("gil");
    let admin = Admin::new(&a);
    wait_for("gil in Redis", WAIT, || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });
    let (status, _) = admin.post("/clients/gil/push", "hi");
    assert_eq!(status, 202);
    assert!(gil.expect_frame().ends_with(">hi</msg>"));
    let text = admin.metrics();
    for family in [
        "lifeline_cluster_up 1",
        "lifeline_redis_round_trip_seconds_count",
        "lifeline_cluster_routed_out_total",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    let Some(promtool) = opskit::tool("promtool", "prometheus") else {
        return;
    };
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics:\n{findings}"
    );
}
