//! `/metrics` scraped under a scripted scenario, every value checked
//! against what happened: logins over raw TCP and WebSocket, connections in
//! each transport state, an overload refusal, a page fetch, a push acked, a
//! push held and expired, one refused 507, a client pushed to until its
//! queue is full (503) and then cut off as a slow consumer, a bad frame, a
//! replaced login, a kick, a bye, an event-stream reset — then the process
//! metrics and the build.

mod common;
mod opskit;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{attr, Closed, ServerProc, WAIT};
use opskit::{request, scrape, scrape_until, scrapes, Http, Scrape};
use tungstenite::Message;

const MAX_OUTBOUND: usize = 65_536;

fn ws_login(server: &ServerProc, id: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut ws, response) =
        tungstenite::client(format!("ws://{}/", server.addr), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws.send(Message::text(format!("<login id=\"{id}\"/>")))
        .unwrap();
    let welcome = ws.read().unwrap();
    assert!(
        welcome.to_text().unwrap().starts_with("<welcome"),
        "{welcome:?}"
    );
    ws
}

fn by_transport(s: &Scrape, transport: &str) -> f64 {
    s.get(&format!(
        "lifeline_connections_by_transport{{transport=\"{transport}\"}}"
    ))
}

fn closed(s: &Scrape, reason: &str) -> f64 {
    s.get(&format!(
        "lifeline_connections_closed_total{{reason=\"{reason}\"}}"
    ))
}

fn offline(s: &Scrape, reason: &str) -> f64 {
    s.get(&format!("lifeline_offline_total{{reason=\"{reason}\"}}"))
}

fn route_count(s: &Scrape, route: &str) -> f64 {
    s.get(&format!(
        "lifeline_admin_request_duration_seconds_count{{route=\"{route}\"}}"
    ))
}

/// The frame a push of `body` with id `id` is delivered as.
fn push_frame_len(id: &str, body: &str) -> usize {
    let mut frame = Vec::new();
    lifeline_wire::encode_msg(&mut frame, "admin", Some(id), body);
    frame.len()
}

#[test]
fn every_metric_counts_what_the_scenario_did() {
    let started = std::time::SystemTime::now();
    let server = ServerProc::start(&[
        ("LIFELINE_MAX_CONNECTIONS", "6"),
        ("LIFELINE_MAX_OUTBOUND", "65536"),
        ("LIFELINE_QUEUE_MAX_PER_CLIENT", "1"),
        ("LIFELINE_RECONNECT_SPREAD_MS", "0"),
    ]);
    let admin = server.admin.unwrap();
    let zero = scrape(admin, None);
    for family in zero.families() {
        assert!(family.starts_with("lifeline_") || family.starts_with("process_"));
    }
    assert_eq!(zero.get("lifeline_connection_capacity"), 6.0);

    // --- five connections, one in each transport state, three logged in
    let mut a = server.login("a");
    let mut w = ws_login(&server, "w");
    let quiet = server.connect(); // sends nothing: still sniffing
    let mut page = Http::connect(server.addr);
    page.send(b"GET / HTTP/1.1\r\nHost: lifeline\r\n"); // head not finished
    let stuck = server.login("stuck");
    let s = scrape_until(admin, "five connections in their transports", |s| {
        s.get("lifeline_connections_open") == 5.0 && by_transport(s, "handshake") == 1.0
    });
    assert_eq!(by_transport(&s, "raw"), 2.0);
    assert_eq!(by_transport(&s, "websocket"), 1.0);
    assert_eq!(by_transport(&s, "sniffing"), 1.0);
    assert_eq!(s.get("lifeline_clients_online"), 3.0);

    // --- the sixth fills the capacity; the seventh is refused
    let filler = server.connect();
    let mut refused = server.connect();
    match refused.wait_closed(WAIT) {
        Closed::Yes(frames) => assert!(frames[0].contains("reason=\"overload\""), "{frames:?}"),
        Closed::Timeout => panic!("the seventh connection was not refused"),
    }
    // --- the page request completes; the two silent connections leave
    page.send(b"\r\n");
    let fetched = page.response();
    assert_eq!(fetched.status, 200);
    assert!(page.closed());
    drop((quiet, filler));

    // --- a push acked while the pusher waits
    let pusher = std::thread::spawn(move || {
        request(
            admin,
            "POST",
            "/clients/a/push?wait_ack_ms=5000",
            "",
            b"hello",
        )
    });
    let msg = a.expect_frame();
    a.send(&format!("<ack id=\"{}\"/>", attr(&msg, "id").unwrap()));
    assert_eq!(pusher.join().unwrap().status, 200);

    // --- a push held for an offline client, a second refused, the first expires
    let held = request(
        admin,
        "POST",
        "/clients/ghost/push?queue_ttl_ms=300",
        "",
        b"later",
    );
    assert_eq!(held.status, 202, "{}", held.text());
    let held_id = held.json()["id"].as_str().unwrap().to_string();
    let full = request(
        admin,
        "POST",
        "/clients/ghost/push?queue_ttl_ms=300",
        "",
        b"more",
    );
    assert_eq!(full.status, 507, "{}", full.text());
    let s = scrape(admin, None);
    if s.get("lifeline_pushes_expired_total") == 0.0 {
        assert_eq!(s.get("lifeline_offline_queue_pushes"), 1.0);
        assert_eq!(
            s.get("lifeline_offline_queue_bytes"),
            push_frame_len(&held_id, "later") as f64
        );
    }
    let s = scrape_until(admin, "the held push expired", |s| {
        s.get("lifeline_pushes_expired_total") == 1.0
    });
    assert_eq!(s.get("lifeline_offline_queue_pushes"), 0.0);
    assert_eq!(s.get("lifeline_offline_queue_bytes"), 0.0);

    // --- a client that never reads: pushed to until its queue refuses (503)...
    stuck.stream.set_read_timeout(Some(WAIT)).unwrap();
    let body = "s".repeat(15_000);
    let mut stuck_pushes = 0.0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = request(admin, "POST", "/clients/stuck/push", "", body.as_bytes());
        match r.status {
            202 => stuck_pushes += 1.0,
            503 => break,
            other => panic!("push to stuck: {other} {}", r.text()),
        }
        assert!(Instant::now() < deadline && stuck_pushes < 5000.0);
    }
    let s = scrape(admin, None);
    let buffered = s.get("lifeline_outbound_buffered_bytes");
    assert!(
        buffered > 0.0 && buffered <= MAX_OUTBOUND as f64,
        "buffered {buffered}"
    );
    // ...then a client's message that cannot fit cuts it off (sent again
    // should the socket have taken some of the queue meanwhile).
    let cut = "offline id=stuck reason=slow-consumer";
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.wait_log(cut, Duration::from_millis(50)).is_none() {
        assert!(Instant::now() < deadline, "stuck never cut off");
        a.send(&format!("<msg to=\"stuck\">{}</msg>", "m".repeat(15_100)));
    }

    // --- a bad frame, a replaced login, a kick and a bye
    let mut b = server.login("b");
    b.send("<heartbeat mode=\"ping\" seq=\"-1\"/>");
    assert!(matches!(b.wait_closed(WAIT), Closed::Yes(_)));
    let mut a2 = server.login("a");
    match a.wait_closed(WAIT) {
        Closed::Yes(frames) => {
            assert!(
                frames.iter().any(|f| f.contains("reason=\"replaced\"")),
                "{frames:?}"
            )
        }
        Closed::Timeout => panic!("a was not replaced"),
    }
    assert_eq!(request(admin, "DELETE", "/clients/w", "", b"").status, 204);
    loop {
        match w.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    a2.send("<bye/>");
    assert!(matches!(a2.wait_closed(WAIT), Closed::Yes(_)));

    // --- a presence consumer that resumes after events the server never had
    let mut events = Http::connect(admin);
    events.send(b"GET /events HTTP/1.1\r\nLast-Event-ID: 99999999999999999\r\n\r\n");
    let head = events.response();
    assert_eq!(head.status, 200);
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(events.pending()).contains("event: reset") {
        assert!(Instant::now() < deadline, "no reset");
        let _ = events.response_within(Duration::from_millis(20));
    }
    drop(events);

    // --- everything is closed: every value is what happened
    let end = scrape_until(admin, "every connection closed", |s| {
        s.get("lifeline_connections_open") == 0.0 && s.get("lifeline_admin_connections") == 1.0
    });
    // Every scrape but this last one was answered (and timed) before it.
    let before_end = (scrapes() - 1) as f64;
    for transport in ["raw", "websocket", "sniffing", "handshake"] {
        assert_eq!(by_transport(&end, transport), 0.0, "{transport}");
    }
    for (key, value) in [
        ("lifeline_clients_online", 0.0),
        ("lifeline_outbound_buffered_bytes", 0.0),
        ("lifeline_offline_queue_pushes", 0.0),
        ("lifeline_offline_queue_bytes", 0.0),
        ("lifeline_ack_waits", 0.0),
        // a, w, quiet, page, stuck, filler, b, a again; the refused one never was.
        ("lifeline_accepted_total", 8.0),
        ("lifeline_logins_total", 5.0),
        ("lifeline_pushes_accepted_total", 2.0 + stuck_pushes),
        ("lifeline_pushes_acked_total", 1.0),
        ("lifeline_pushes_expired_total", 1.0),
        ("lifeline_pushes_queue_full_total", 1.0),
        ("lifeline_receipts_held", 2.0 + stuck_pushes),
        ("lifeline_event_resets_total", 1.0),
        ("lifeline_admin_connections_refused_total", 0.0),
        ("lifeline_accept_errors_total", 0.0),
        ("lifeline_admin_requests_total{status=\"503\"}", 1.0),
        ("lifeline_admin_requests_total{status=\"507\"}", 1.0),
        ("lifeline_admin_requests_total{status=\"204\"}", 1.0),
        ("lifeline_errors_sent_total{code=\"bad-frame\"}", 1.0),
        ("lifeline_errors_sent_total{code=\"not-logged-in\"}", 0.0),
    ] {
        assert_eq!(end.get(key), value, "{key}");
    }
    for (reason, n) in [
        ("overload", 1.0),
        ("http", 1.0),
        ("closed", 2.0),
        ("slow-consumer", 1.0),
        ("error", 1.0),
        ("replaced", 1.0),
        ("kicked", 1.0),
        ("bye", 1.0),
        ("timeout", 0.0),
        ("shutdown", 0.0),
        ("io-error", 0.0),
        ("internal-error", 0.0),
    ] {
        assert_eq!(closed(&end, reason), n, "closed {reason}");
    }
    // Offline events are logged-in clients only; the replaced connection's
    // id stayed online with its successor.
    for (reason, n) in [
        ("slow-consumer", 1.0),
        ("error", 1.0),
        ("kicked", 1.0),
        ("bye", 1.0),
        ("replaced", 0.0),
        ("closed", 0.0),
        ("timeout", 0.0),
    ] {
        assert_eq!(offline(&end, reason), n, "offline {reason}");
    }
    assert_eq!(
        end.try_get("lifeline_offline_total{reason=\"overload\"}"),
        None
    );
    // Requests by route: each counted once it was answered.
    assert_eq!(route_count(&end, "/metrics"), before_end);
    assert_eq!(
        route_count(&end, "/clients/{id}/push"),
        3.0 + stuck_pushes + 1.0
    );
    assert_eq!(route_count(&end, "/clients/{id}"), 1.0);
    assert_eq!(route_count(&end, "/events"), 1.0);
    assert_eq!(route_count(&end, "/healthz"), 0.0);
    let waited =
        "lifeline_admin_request_duration_seconds_bucket{route=\"/clients/{id}/push\",le=\"+Inf\"}";
    assert_eq!(end.get(waited), route_count(&end, "/clients/{id}/push"));

    // The process, as the kernel sees it.
    let now = std::time::SystemTime::now();
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let start = end.get("process_start_time_seconds");
    assert!(
        start >= unix(started) - 1.0 && start <= unix(now),
        "start {start}"
    );
    assert!(end.get("process_resident_memory_bytes") > 1e6);
    let fds = end.get("process_open_fds");
    // Listeners, poll, signals, timerfd, the spare, the admin connection.
    assert!((5.0..64.0).contains(&fds), "open fds {fds}");
    let limit = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let soft = limit
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap();
    assert_eq!(end.get("process_max_fds"), soft.parse::<f64>().unwrap());
    assert!(end.get("process_cpu_seconds_total") >= 0.0);

    // The build: the commit --version names.
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap();
    let info = format!(
        "lifeline_build_info{{version=\"{}\",commit=\"{commit}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(end.get(&info), 1.0, "{version}");
}
