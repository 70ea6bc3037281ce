//! Cluster mode, failures: a node killed with SIGKILL (its clients go
//! offline everywhere, `node-lost`, once), Redis restarted empty (presence
//! rebuilt, no client disconnected), Redis down (local traffic goes on;
//! cross-node sends get `unavailable`, admin calls that need Redis 503),
//! and a node that starts before Redis joins when it comes.

mod cluster_common;
mod common;

use std::time::{Duration, Instant};

use cluster_common::{node, wait_for, Admin, RedisProc, Sse};
use common::{attr, ServerProc};

/// Short, so that a dead node is found quickly.
const TTL: u64 = 1500;

#[test]
fn a_killed_nodes_clients_go_offline_everywhere_once_with_node_lost() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut doomed = node(&redis.url(), "node-c", TTL, &[]);
    let _alice = a.login("alice");
    let _bob = b.login("bob");
    let _c: Vec<_> = ["c1", "c2", "c3"]
        .iter()
        .map(|id| doomed.login(id))
        .collect();
    let admins = [Admin::new(&a), Admin::new(&b)];
    for admin in &admins {
        wait_for("five online", Duration::from_secs(5), || {
            (admin.online().len() == 5).then_some(())
        });
    }
    let mut events_a = Sse::open(&a, None);
    let mut events_b = Sse::open(&b, None);

    doomed.signal(libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        doomed.wait_exit(Duration::from_secs(5)).is_none(),
        "killed, no exit code"
    );
    for admin in &admins {
        wait_for(
            "node-c's clients gone",
            Duration::from_millis(TTL + 1000),
            || {
                let online = admin.online();
                online
                    .iter()
                    .all(|(_, node)| node != "node-c")
                    .then_some(())
            },
        );
    }
    let took = killed.elapsed();
    assert!(took <= Duration::from_millis(TTL + 1000), "{took:?}");
    assert_eq!(redis.int(&["HLEN", "ll:presence"]), 2);

    // Both survivors' subscribers see three offline events, node-lost, in
    // the same order: one cluster-wide stream.
    let mut orders = Vec::new();
    for events in [&mut events_a, &mut events_b] {
        let mut lost = Vec::new();
        while lost.len() < 3 {
            let e = events
                .next_within(Duration::from_secs(5))
                .expect("offline events");
            if e.kind == "offline" {
                assert_eq!(e.data["reason"], "node-lost", "{e:?}");
                assert_eq!(e.data["node"], "node-c");
                lost.push((e.id.clone(), e.data["id"].as_str().unwrap().to_string()));
            }
        }
        lost.sort();
        orders.push(lost);
        // Exactly once: no second round from the other survivor.
        if let Some(e) = events.next_within(Duration::from_millis(TTL)) {
            assert_ne!(e.kind, "offline", "a second offline: {e:?}");
        }
    }
    assert_eq!(orders[0], orders[1]);
    let ids: Vec<&str> = orders[0].iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 3);
}

#[test]
fn a_redis_restart_rebuilds_presence_and_disconnects_no_one() {
    let Some(mut redis) = RedisProc::start() else {
        return;
    };
    let port = redis.port;
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut on_a: Vec<_> = ["a1", "a2"].iter().map(|id| a.login(id)).collect();
    let mut on_b = b.login("b1");
    wait_for("three in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 3).then_some(())
    });

    redis.kill();
    let admin_a = Admin::new(&a);
    wait_for("node-a sees Redis down", Duration::from_secs(5), || {
        (admin_a.metric("lifeline_cluster_up") == 0.0).then_some(())
    });
    // Redis down: heartbeats and local messages go on...
    on_a[0].send("<heartbeat mode=\"ping\" seq=\"1\"/>");
    assert_eq!(
        on_a[0].expect_frame(),
        "<heartbeat mode=\"pong\" seq=\"1\"/>"
    );
    on_a[0].send("<msg to=\"a2\" id=\"local\">still here</msg>");
    assert_eq!(
        on_a[1].expect_frame(),
        "<msg from=\"a1\" id=\"local\">still here</msg>"
    );
    // ...a message for another node cannot be routed: unavailable...
    on_a[0].send("<msg to=\"b1\" id=\"far\">?</msg>");
    let error = on_a[0].expect_frame();
    assert_eq!(
        attr(&error, "code").as_deref(),
        Some("unavailable"),
        "{error}"
    );
    assert_eq!(attr(&error, "ref").as_deref(), Some("far"));
    // ...and admin calls that need Redis answer 503.
    let (status, reply) = admin_a.get("/clients");
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"], "cluster-unavailable");
    let (status, _) = admin_a.post("/clients/b1/push", "x");
    assert_eq!(status, 503);
    // A client of this node is still answered for.
    let (status, _) = admin_a.get("/clients/a1");
    assert_eq!(status, 200);

    // Back, empty: every node puts its clients back.
    let redis = RedisProc::start_on(port);
    let back = Instant::now();
    wait_for("presence rebuilt", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 3).then_some(())
    });
    assert!(back.elapsed() < Duration::from_secs(5));
    let admin_b = Admin::new(&b);
    let online = wait_for("all three, by node", Duration::from_secs(5), || {
        let online = admin_b.online();
        (online.len() == 3).then_some(online)
    });
    assert_eq!(
        online,
        [("a1", "node-a"), ("a2", "node-a"), ("b1", "node-b")]
            .map(|(i, n)| (i.to_string(), n.to_string()))
    );
    assert!(admin_a.metric("lifeline_cluster_presence_reasserts_total") >= 2.0);
    // Nobody was disconnected, and routing works again.
    wait_for("routing again", Duration::from_secs(5), || {
        on_a[0].send("<msg to=\"b1\" id=\"again\">back</msg>");
        on_b.frame_within(Duration::from_millis(500))
    });
    for (i, c) in on_a.iter_mut().enumerate() {
        c.send(&format!("<heartbeat mode=\"ping\" seq=\"{i}\"/>"));
        let f = loop {
            let f = c.expect_frame();
            if f.starts_with("<heartbeat") {
                break f;
            }
        };
        assert_eq!(f, format!("<heartbeat mode=\"pong\" seq=\"{i}\"/>"));
    }
}

#[test]
fn a_paused_redis_blocks_nothing_and_a_close_meanwhile_lands_after() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let mut stays = a.login("stays");
    let mut leaves = a.login("leaves");
    wait_for("two in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 2).then_some(())
    });
    // Redis stops answering (SIGSTOP): commands wait in the node's queue;
    // the loop does not.
    let pid = redis_pid(&redis);
    // SAFETY: kill(2) on the redis-server this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let _resume = Resume(pid);
    leaves.send("<bye/>");
    let _ = leaves.wait_closed(Duration::from_secs(5));
    let started = Instant::now();
    for seq in 0..20 {
        stays.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
        assert_eq!(
            stays.expect_frame(),
            format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>")
        );
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(_resume);
    wait_for("only 'stays' online", Duration::from_secs(5), || {
        let n = redis.int(&["HLEN", "ll:presence"]);
        let present = redis.try_command(&["HEXISTS", "ll:presence", "stays"]);
        (n == 1 && present.as_deref() == Some(":1")).then_some(())
    });
}

/// Sends SIGCONT when dropped, so a failing test leaves no stopped Redis.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the redis-server this test started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn a_node_restarted_under_its_id_leaves_no_ghosts() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let mut a = node(&redis.url(), "node-a", 60_000, &[]);
    let observer = node(&redis.url(), "observer", 60_000, &[]);
    let _gone: Vec<_> = ["g1", "g2"].iter().map(|id| a.login(id)).collect();
    wait_for("two in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 2).then_some(())
    });
    a.signal(libc::SIGKILL);
    let _ = a.wait_exit(Duration::from_secs(5));
    // Back under the same id long before its liveness lapses (60 s): it
    // re-asserts what it has (nothing) and removes what Redis still lists
    // for it.
    let mut events = Sse::open(&observer, None);
    let a = node(&redis.url(), "node-a", 60_000, &[]);
    let _fresh = a.login("fresh");
    wait_for("only 'fresh' online", Duration::from_secs(5), || {
        let present = redis.try_command(&["HEXISTS", "ll:presence", "fresh"]);
        (redis.int(&["HLEN", "ll:presence"]) == 1 && present.as_deref() == Some(":1")).then_some(())
    });
    let seen = events.until(Duration::from_secs(5), "online fresh", |e| {
        e.kind == "online" && e.data["id"] == "fresh"
    });
    // Another node's subscriber saw both ghosts go (their real reason was
    // lost with the process: `closed`).
    let mut ghosts: Vec<&str> = seen
        .iter()
        .filter(|e| e.kind == "offline" && e.data["reason"] == "closed")
        .map(|e| e.data["id"].as_str().unwrap())
        .collect();
    ghosts.sort();
    assert_eq!(ghosts, ["g1", "g2"], "{seen:?}");
}

fn redis_pid(redis: &RedisProc) -> i32 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"INFO server\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    while !text.contains("process_id:") || !text.ends_with("\r\n") {
        let n = s.read(&mut buf).unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
fn a_node_started_before_redis_serves_its_clients_and_joins_when_redis_comes() {
    let port = cluster_common::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let ttl = TTL.to_string();
    let a = ServerProc::start(&[
        ("LIFELINE_REDIS_URL", &url),
        ("LIFELINE_NODE_ID", "early"),
        ("LIFELINE_NODE_TTL_MS", &ttl),
    ]);
    let mut x = a.login("x");
    let mut y = a.login("y");
    x.send("<msg to=\"y\" id=\"1\">local</msg>");
    assert_eq!(y.expect_frame(), "<msg from=\"x\" id=\"1\">local</msg>");
    x.send("<msg to=\"elsewhere\" id=\"2\">?</msg>");
    let error = x.expect_frame();
    assert_eq!(
        attr(&error, "code").as_deref(),
        Some("unavailable"),
        "{error}"
    );

    let redis = RedisProc::start_on(port);
    wait_for("x and y in Redis", Duration::from_secs(8), || {
        (redis.int(&["HLEN", "ll:presence"]) == 2).then_some(())
    });
    let b = node(&redis.url(), "late", TTL, &[]);
    let mut z = b.login("z");
    wait_for(
        "routing from the early node",
        Duration::from_secs(5),
        || {
            x.send("<msg to=\"z\" id=\"3\">hello</msg>");
            z.frame_within(Duration::from_millis(500))
        },
    );
}

#[test]
fn a_node_that_stops_answering_costs_a_pusher_a_503_not_a_hang() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", 60_000, &[]);
    let b = node(&redis.url(), "node-b", 60_000, &[]);
    let _bob = b.login("bob");
    wait_for("bob in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 1).then_some(())
    });
    // Node B is frozen (SIGSTOP): subscribed, so the push is published to
    // it, but it never answers.
    // SAFETY: kill(2) on a node this test started.
    unsafe { libc::kill(b.pid() as i32, libc::SIGSTOP) };
    let _resume = Resume(b.pid() as i32);
    let admin = Admin::new(&a);
    let started = Instant::now();
    let (status, reply) = admin.post("/clients/bob/push", "anyone?");
    let took = started.elapsed();
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"], "cluster-unavailable");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // Node A itself answered everything else meanwhile.
    let (status, _) = admin.get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn scripts_flushed_from_redis_are_sent_whole() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    assert_eq!(
        redis.try_command(&["SCRIPT", "FLUSH"]).as_deref(),
        Some("+OK")
    );
    // The login's script is unknown to Redis now (NOSCRIPT): the node sends
    // it with EVAL instead, and presence is recorded all the same.
    let _late = a.login("after-flush");
    wait_for("presence recorded", Duration::from_secs(5), || {
        let present = redis.try_command(&["HEXISTS", "ll:presence", "after-flush"]);
        (present.as_deref() == Some(":1")).then_some(())
    });
}
