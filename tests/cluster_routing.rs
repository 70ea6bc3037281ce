//! Cluster mode, routing: two nodes on one real Redis. A `<msg>` and an
//! admin push for a client on the other node go through that node's
//! channel (and the push's ack comes back the same way); `offline` only
//! when the id is online on no node; a login on one node replaces the
//! connection on the other; kicks, `/clients` and broadcasts span nodes.

mod cluster_common;
mod common;

use std::time::Duration;

use cluster_common::{node, wait_for, Admin, RedisProc};
use common::{attr, Closed};

const TTL: u64 = 3000;

#[test]
fn a_msg_crosses_nodes_and_offline_means_online_nowhere() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut alice = a.login("alice");
    let mut bob = b.login("bob");
    // Presence is written after the welcome: wait until Redis has both.
    wait_for("both ids in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 2).then_some(())
    });

    alice.send("<msg to=\"bob\" id=\"m1\">hi bob</msg>");
    assert_eq!(
        bob.expect_frame(),
        "<msg from=\"alice\" id=\"m1\">hi bob</msg>"
    );
    bob.send("<msg to=\"alice\" id=\"m2\">hi &amp; bye</msg>");
    assert_eq!(
        alice.expect_frame(),
        "<msg from=\"bob\" id=\"m2\">hi &amp; bye</msg>"
    );
    // Order holds across nodes.
    for i in 0..20 {
        alice.send(&format!("<msg to=\"bob\" id=\"o{i}\">{i}</msg>"));
    }
    for i in 0..20 {
        assert_eq!(
            bob.expect_frame(),
            format!("<msg from=\"alice\" id=\"o{i}\">{i}</msg>")
        );
    }

    // Counted: the 21 msgs out of node A, into node B; Redis round trips.
    let (admin_a, admin_b) = (Admin::new(&a), Admin::new(&b));
    assert!(admin_a.metric("lifeline_cluster_routed_out_total") >= 21.0);
    assert!(admin_b.metric("lifeline_cluster_routed_in_total") >= 21.0);
    assert!(admin_a.metric("lifeline_redis_round_trip_seconds_count") > 0.0);
    assert!(admin_a.metric("lifeline_redis_commands_total") > 0.0);
    assert_eq!(admin_a.metric("lifeline_redis_reconnects_total"), 0.0);

    alice.send("<msg to=\"nobody\" id=\"m3\">?</msg>");
    let error = alice.expect_frame();
    assert_eq!(attr(&error, "code").as_deref(), Some("offline"), "{error}");
    assert_eq!(attr(&error, "ref").as_deref(), Some("m3"));

    // Heartbeats are untouched by all this, and never reach Redis.
    let before = redis_calls(&redis);
    for seq in 0..50 {
        alice.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
        assert_eq!(
            alice.expect_frame(),
            format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>")
        );
    }
    let after = redis_calls(&redis);
    // Liveness refreshes (every TTL/3 per node) and the event feeds' XREADs
    // are all Redis sees meanwhile: far fewer than 50.
    assert!(after - before < 20, "{before} → {after} Redis calls");
}

/// Commands Redis has served so far.
fn redis_calls(redis: &RedisProc) -> i64 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"INFO stats\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    while !text.contains("total_commands_processed") || !text.ends_with("\r\n") {
        let n = s.read(&mut buf).unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
fn an_admin_push_to_another_node_waits_for_the_ack_that_comes_back() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut bob = b.login("bob");
    let admin_a = Admin::new(&a);
    wait_for("bob in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });

    // Without a wait: sent.
    let (status, reply) = admin_a.post("/clients/bob/push", "first");
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["status"], "sent");
    let frame = bob.expect_frame();
    assert!(frame.ends_with(">first</msg>"), "{frame}");
    let first = attr(&frame, "id").unwrap();
    assert_eq!(reply["id"].as_str(), Some(first.as_str()));
    assert!(
        first.starts_with("p-node-a-"),
        "cluster push ids name their node (p-NODE-START-N): {first}"
    );

    // With wait_ack_ms: the ack on node B answers the request on node A.
    let acker = std::thread::spawn(move || {
        let frame = bob.expect_frame();
        let id = attr(&frame, "id").unwrap();
        bob.send(&format!("<ack id=\"{id}\"/>"));
        (bob, id)
    });
    let (status, reply) = admin_a.post("/clients/bob/push?wait_ack_ms=5000", "second");
    let (_bob, acked) = acker.join().unwrap();
    assert_eq!(
        status,
        200,
        "{reply}; A: {:?}\nB: {:?}",
        a.log_lines(),
        b.log_lines()
    );
    assert_eq!(reply["status"], "acked");
    assert_eq!(reply["id"].as_str(), Some(acked.as_str()));

    // The receipt is in Redis: any node answers for it.
    let admin_b = Admin::new(&b);
    for admin in [&admin_a, &admin_b] {
        let (status, receipt) = admin.get(&format!("/messages/{acked}"));
        assert_eq!(status, 200, "{receipt}");
        assert_eq!(receipt["status"], "acked");
        assert_eq!(receipt["to"], "bob");
    }

    // A client online nowhere: 404, as standalone.
    let (status, reply) = admin_a.post("/clients/nobody/push", "x");
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["error"], "offline");
}

#[test]
fn a_login_on_one_node_replaces_the_connection_on_the_other() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut first = a.login("carol");
    wait_for("carol in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });
    let mut second = b.login("carol");
    match first.wait_closed(Duration::from_secs(5)) {
        Closed::Yes(frames) => assert_eq!(
            frames.last().map(String::as_str),
            Some("<bye reason=\"replaced\"/>"),
            "{frames:?}"
        ),
        Closed::Timeout => panic!("the replaced connection on node A stayed open"),
    }
    // carol is online once, on node B, as every node sees it.
    for admin in [Admin::new(&a), Admin::new(&b)] {
        let online = wait_for("carol on node-b only", Duration::from_secs(5), || {
            let online = admin.online();
            (online == vec![("carol".to_string(), "node-b".to_string())]).then_some(online)
        });
        assert_eq!(online.len(), 1);
        let (status, view) = admin.get("/clients/carol");
        assert_eq!(status, 200);
        assert_eq!(view["node"], "node-b");
    }
    // The replaced connection's late close did not take carol offline.
    second.send("<heartbeat mode=\"ping\" seq=\"1\"/>");
    assert_eq!(
        second.expect_frame(),
        "<heartbeat mode=\"pong\" seq=\"1\"/>"
    );
    assert_eq!(redis.int(&["HLEN", "ll:presence"]), 1);
}

#[test]
fn clients_kick_and_broadcast_answer_for_the_whole_cluster() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut on_a: Vec<_> = ["a1", "a2", "a3"].iter().map(|id| a.login(id)).collect();
    let mut on_b: Vec<_> = ["b1", "b2"].iter().map(|id| b.login(id)).collect();
    let admin_a = Admin::new(&a);
    let admin_b = Admin::new(&b);
    let expected: Vec<(String, String)> = [
        ("a1", "node-a"),
        ("a2", "node-a"),
        ("a3", "node-a"),
        ("b1", "node-b"),
        ("b2", "node-b"),
    ]
    .iter()
    .map(|(i, n)| (i.to_string(), n.to_string()))
    .collect();
    for admin in [&admin_a, &admin_b] {
        wait_for("five clients, paged", Duration::from_secs(5), || {
            (admin.online() == expected).then_some(())
        });
    }
    let (_, page) = admin_a.get("/clients?limit=10");
    assert_eq!(page["online"], 5);
    let b1 = &page["clients"][3];
    assert_eq!(b1["id"], "b1");
    assert!(
        b1["last_seen_ms_ago"].is_null(),
        "only b1's node knows: {b1}"
    );
    assert!(page["clients"][0]["last_seen_ms_ago"].is_u64());

    // A broadcast through node B reaches every client of both nodes.
    let (status, reply) = admin_b.post("/broadcast", "to all");
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["recipients"], 2, "counted on the node that took it");
    assert_eq!(reply["nodes"], 2);
    for c in on_a.iter_mut().chain(on_b.iter_mut()) {
        let frame = c.expect_frame();
        assert!(frame.ends_with(">to all</msg>"), "{frame}");
    }

    // A kick through node B of a client on node A.
    assert_eq!(admin_b.delete("/clients/a2"), 204);
    match on_a[1].wait_closed(Duration::from_secs(5)) {
        Closed::Yes(frames) => {
            assert_eq!(
                frames.last().map(String::as_str),
                Some("<bye reason=\"kicked\"/>")
            )
        }
        Closed::Timeout => panic!("a2 was not kicked"),
    }
    assert_eq!(admin_b.delete("/clients/nobody"), 404);
    wait_for("a2 offline everywhere", Duration::from_secs(5), || {
        (admin_b.online().len() == 4 && admin_a.online().len() == 4).then_some(())
    });
    let (status, _) = admin_a.get("/clients/a2");
    assert_eq!(status, 404);
    assert_eq!(admin_a.metric("lifeline_cluster_up"), 1.0);
}

/// A broadcast another node took is sent to this node's clients in slices
/// as its own are, in order with everything else they are sent: 600
/// clients on node A (more than a slice) and two on node B get two
/// broadcasts posted through B; a push through A to the client of A that
/// sorts last, posted once the first client of A has the first broadcast
/// (so A has taken it), comes after it. Nothing is dropped.
#[test]
fn a_broadcast_from_another_node_reaches_hundreds_in_order_with_their_pushes() {
    let quiet = [("LIFELINE_HEARTBEAT_MS", "60000")];
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &quiet);
    let b = node(&redis.url(), "node-b", TTL, &quiet);
    let mut on_a: Vec<_> = (0..600).map(|i| a.login(&format!("a{i:04}"))).collect();
    let mut on_b: Vec<_> = ["b1", "b2"].iter().map(|id| b.login(id)).collect();
    let (admin_a, admin_b) = (Admin::new(&a), Admin::new(&b));
    let broadcast = |text: &str| {
        let (status, reply) = admin_b.post("/broadcast", text);
        assert_eq!(status, 202, "{reply}");
        assert_eq!(reply["recipients"], 2, "counted on the node that took it");
        assert_eq!(reply["nodes"], 2);
        reply["id"].as_str().expect("a push id").to_string()
    };
    let one = broadcast("one");
    let first = on_a[0].expect_frame();
    assert_eq!(attr(&first, "id").as_deref(), Some(one.as_str()), "{first}");
    let (status, reply) = admin_a.post("/clients/a0599/push", "after one");
    assert_eq!(status, 202, "{reply}");
    let pushed = reply["id"].as_str().expect("a push id").to_string();
    let two = broadcast("two");
    for (i, c) in on_a.iter_mut().enumerate() {
        let mut expected = vec![(one.clone(), "one")];
        if i == 599 {
            expected.push((pushed.clone(), "after one"));
        }
        expected.push((two.clone(), "two"));
        for (n, (id, text)) in expected.into_iter().enumerate() {
            let frame = if i == 0 && n == 0 {
                first.clone()
            } else {
                c.expect_frame()
            };
            assert_eq!(attr(&frame, "id"), Some(id), "a{i:04}: {frame}");
            assert!(frame.ends_with(&format!(">{text}</msg>")), "{frame}");
        }
    }
    for c in on_b.iter_mut() {
        for (id, text) in [(&one, "one"), (&two, "two")] {
            let frame = c.expect_frame();
            assert_eq!(attr(&frame, "id").as_ref(), Some(id), "{frame}");
            assert!(frame.ends_with(&format!(">{text}</msg>")), "{frame}");
        }
    }
    on_a[300].send("<heartbeat mode=\"ping\" seq=\"7\"/>");
    assert_eq!(
        on_a[300].expect_frame(),
        "<heartbeat mode=\"pong\" seq=\"7\"/>"
    );
    assert_eq!(
        admin_a.metric("lifeline_cluster_broadcasts_dropped_total"),
        0.0
    );
}
