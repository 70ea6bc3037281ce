//! Cluster mode, shared state: one presence event stream in one order,
//! resumable on any node; pushes held in Redis for an offline client,
//! delivered when it logs in on another node and surviving a restart of
//! every node; receipts on any node; two nodes on one port.

mod cluster_common;
mod common;
mod opskit;

use std::time::Duration;

use cluster_common::{node, wait_for, Admin, RedisProc, Sse};
use common::attr;

const TTL: u64 = 3000;

#[test]
fn one_event_stream_in_one_order_resumable_on_any_node() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let a = node(&redis.url(), "node-a", TTL, &[]);
    let b = node(&redis.url(), "node-b", TTL, &[]);
    let mut on_a = Sse::open(&a, None);
    let mut on_b = Sse::open(&b, None);
    let x = a.login("x");
    let y = b.login("y");
    drop(x);
    let mut y = y;
    y.send("<bye/>");
    let mut orders = Vec::new();
    for events in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        while got.len() < 4 {
            let e = events
                .next_within(Duration::from_secs(5))
                .expect("4 events");
            got.push((
                e.id.clone().unwrap(),
                e.kind.clone(),
                e.data["id"].as_str().unwrap().to_string(),
                e.data["node"].as_str().unwrap().to_string(),
            ));
        }
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1], "both nodes stream one order");
    let ids: Vec<u64> = orders[0].iter().map(|e| e.0.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let kinds: Vec<(&str, &str)> = orders[0]
        .iter()
        .map(|e| (e.1.as_str(), e.2.as_str()))
        .collect();
    assert!(kinds.contains(&("online", "x")) && kinds.contains(&("offline", "y")));

    // Resume on the other node from the first event's id: the three after it.
    let mut resumed = Sse::open(&b, Some(&orders[0][0].0));
    for expected in &orders[0][1..] {
        let e = resumed.next_within(Duration::from_secs(5)).expect("replay");
        assert_eq!(e.id.as_ref(), Some(&expected.0));
    }
    // An id the stream no longer holds (or never issued): reset.
    let mut lost = Sse::open(&a, Some("1"));
    let e = lost.next_within(Duration::from_secs(5)).expect("reset");
    assert_eq!(e.kind, "reset");
    // A snapshot names the event it is consistent with.
    let (_, page) = Admin::new(&a).get("/clients");
    assert_eq!(page["seq"].as_u64(), Some(ids[3]));
}

#[test]
fn a_push_held_in_redis_outlives_every_node_and_is_delivered_on_another() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let mut a = node(&redis.url(), "node-a", TTL, &[]);
    let (status, reply) = Admin::new(&a).post("/clients/dana/push?queue_ttl_ms=60000", "kept");
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["status"], "queued");
    let mid = reply["id"].as_str().unwrap().to_string();
    let (status, _) = Admin::new(&a).post("/clients/dana/push?queue_ttl_ms=60000", "second");
    assert_eq!(status, 202);
    // Every node goes away.
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(5)), Some(0));
    drop(a);
    assert_eq!(
        redis.int(&["ZCARD", "ll:nodes"]),
        0,
        "a node that stops leaves the liveness set"
    );

    let b = node(&redis.url(), "node-b", TTL, &[]);
    let (status, receipt) = Admin::new(&b).get(&format!("/messages/{mid}"));
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["status"], "queued");
    let mut dana = b.login("dana");
    let first = dana.expect_frame();
    assert!(first.ends_with(">kept</msg>"), "{first}");
    assert_eq!(attr(&first, "id").as_deref(), Some(mid.as_str()));
    assert!(dana.expect_frame().ends_with(">second</msg>"));
    dana.send(&format!("<ack id=\"{mid}\"/>"));
    let c = node(&redis.url(), "node-c", TTL, &[]);
    let admin_c = Admin::new(&c);
    wait_for("acked, on any node", Duration::from_secs(5), || {
        let (_, r) = admin_c.get(&format!("/messages/{mid}"));
        (r["status"] == "acked").then_some(())
    });
    assert_eq!(
        redis.int(&["EXISTS", "ll:q:dana"]),
        0,
        "the queue was taken"
    );
}

#[test]
fn two_nodes_share_one_port_with_reuseport() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let port = cluster_common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let extra = [
        ("LIFELINE_REUSEPORT", "1"),
        ("LIFELINE_LISTEN", listen.as_str()),
    ];
    let a = node(&redis.url(), "node-a", TTL, &extra);
    let b = node(&redis.url(), "node-b", TTL, &extra);
    assert_eq!(a.addr, b.addr);
    // The kernel spreads connections: log in until both nodes hold some.
    let admin = Admin::new(&a);
    let mut clients = Vec::new();
    let online = wait_for("clients on both nodes", Duration::from_secs(10), || {
        let id = format!("r{}", clients.len());
        clients.push(a.login(&id));
        let online = admin.online();
        let on_a = online.iter().filter(|(_, n)| n == "node-a").count();
        (online.len() == clients.len() && on_a > 0 && on_a < online.len()).then_some(online)
    });
    // And they reach each other whichever node each landed on.
    let (from, to) = (
        &online[0],
        online.iter().find(|(_, n)| *n != online[0].1).unwrap(),
    );
    let from_i: usize = from.0[1..].parse().unwrap();
    let to_i: usize = to.0[1..].parse().unwrap();
    clients[from_i].send(&format!("<msg to=\"{}\" id=\"p\">across</msg>", to.0));
    let frame = clients[to_i].expect_frame();
    assert_eq!(
        frame,
        format!("<msg from=\"{}\" id=\"p\">across</msg>", from.0)
    );
}

#[test]
fn workers_share_the_port_as_nodes_and_stop_with_their_supervisor() {
    let Some(redis) = RedisProc::start() else {
        return;
    };
    let port = cluster_common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = redis.url();
    // As systemd would (Type=notify): the supervisor is the service.
    let dir = opskit::TempDir::new("workers-notify");
    let notify_path = dir.path().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let heard = || {
        let mut buf = [0u8; 512];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut supervisor = common::ServerProc::start(&[
        ("LIFELINE_REDIS_URL", &url),
        ("LIFELINE_NODE_ID", "host"),
        ("LIFELINE_LISTEN", &listen),
        ("LIFELINE_WORKERS", "2"),
        ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
    ]);
    // READY once, from the supervisor, when both workers listen.
    let ready = heard();
    assert_eq!(ready, "READY=1\nSTATUS=all workers listening");
    // Dropped on a failure, the harness kills the supervisor (SIGKILL); its
    // workers get SIGTERM then (their parent-death signal).
    wait_for(
        "two worker nodes alive in Redis",
        Duration::from_secs(10),
        || (redis.int(&["ZCARD", "ll:nodes"]) == 2).then_some(()),
    );
    let nodes = redis.try_command(&["ZRANGE", "ll:nodes", "0", "-1"]);
    assert!(nodes.is_some());
    assert_eq!(supervisor.addr.port(), port);
    let mut one = supervisor.login("w-one");
    let mut two = supervisor.login("w-two");
    wait_for("both in Redis", Duration::from_secs(5), || {
        (redis.int(&["HLEN", "ll:presence"]) == 2).then_some(())
    });
    one.send("<msg to=\"w-two\" id=\"w\">hi</msg>");
    assert_eq!(two.expect_frame(), "<msg from=\"w-one\" id=\"w\">hi</msg>");

    // SIGHUP (a TLS reload) reaches every worker; the supervisor stays.
    supervisor.signal(libc::SIGHUP);
    let reloads = supervisor.wait_count("SIGHUP: TLS is not configured", 2, Duration::from_secs(5));
    assert_eq!(reloads, 2, "{:?}", supervisor.log_lines());
    assert!(supervisor.exited().is_none(), "SIGHUP ended the supervisor");
    one.send("<msg to=\"w-two\" id=\"w2\">still</msg>");
    assert_eq!(
        two.expect_frame(),
        "<msg from=\"w-one\" id=\"w2\">still</msg>"
    );

    supervisor.signal(libc::SIGTERM);
    assert!(heard().starts_with("STOPPING=1"), "no second READY");
    assert_eq!(supervisor.wait_exit(Duration::from_secs(10)), Some(0));
    // Its workers said goodbye and went.
    for c in [&mut one, &mut two] {
        match c.wait_closed(Duration::from_secs(5)) {
            common::Closed::Yes(frames) => {
                assert!(frames
                    .iter()
                    .any(|f| f.starts_with("<bye reason=\"shutdown\"")))
            }
            common::Closed::Timeout => panic!("a worker kept its client"),
        }
    }
}

#[test]
fn a_bad_cluster_setting_exits_2_naming_the_variable() {
    for (var, value) in [
        ("LIFELINE_REDIS_URL", "localhost:6379"),
        ("LIFELINE_NODE_TTL_MS", "5"),
        ("LIFELINE_WORKERS", "2"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .env_clear()
            .env(var, value)
            .output()
            .expect("run lifeline");
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(var), "{text}");
    }
}
