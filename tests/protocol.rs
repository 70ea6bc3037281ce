//! The protocol (../shared/PROTOCOL.md) spoken from outside, through real
//! sockets, against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{attr, Closed, ServerProc, WAIT};

/// Short liveness settings so timeouts are observable in a test.
const FAST: &[(&str, &str)] = &[
    ("LIFELINE_HEARTBEAT_MS", "200"),
    ("LIFELINE_MISSES", "3"),
    ("LIFELINE_TICK_MS", "5"),
];

/// A `<bye>` with this reason, advising a reconnect delay within the default
/// spread of 10 s (PROTOCOL.md 1.1: timeout, shutdown and overload carry one).
fn assert_bye(frame: &str, reason: &str) {
    assert!(frame.starts_with("<bye "), "{frame}");
    assert_eq!(attr(frame, "reason").as_deref(), Some(reason), "{frame}");
    let retry: u64 = attr(frame, "retry-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry-ms in {frame}"));
    assert!(retry <= 10_000, "{frame}");
}

#[test]
fn login_is_welcomed_with_interval_and_misses() {
    let server = ServerProc::start(FAST);
    let mut c = server.connect();
    c.send("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<login id=\"alice\"/>\n");
    let welcome = c.expect_frame();
    assert_eq!(attr(&welcome, "id").as_deref(), Some("alice"));
    assert_eq!(attr(&welcome, "interval").as_deref(), Some("200"));
    assert_eq!(attr(&welcome, "misses").as_deref(), Some("3"));
    let phase: u64 = attr(&welcome, "phase-ms").unwrap().parse().unwrap();
    assert!(phase < 200);
    assert!(server
        .wait_log("online id=alice", WAIT)
        .is_some_and(|l| l.contains("peer=127.0.0.1:")));
}

#[test]
fn ping_is_answered_with_pong_echoing_seq() {
    let server = ServerProc::start(&[]);
    let mut c = server.connect();
    // Heartbeats work before login too (the same deadline applies).
    c.send("<heartbeat mode=\"ping\" seq=\"41\"/>");
    assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\" seq=\"41\"/>");
    c.send("<login id=\"a\"/><heartbeat mode=\"ping\"/>");
    assert!(c.expect_frame().starts_with("<welcome"));
    assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\"/>");
    c.send("<heartbeat mode='ping' seq='18446744073709551615'></heartbeat>");
    assert_eq!(
        c.expect_frame(),
        "<heartbeat mode=\"pong\" seq=\"18446744073709551615\"/>"
    );
}

#[test]
fn a_silent_client_is_probed_then_closed_within_the_precision_window() {
    let server = ServerProc::start(FAST);
    let mut c = server.connect();
    let sent = Instant::now();
    c.send("<login id=\"quiet\"/>");
    let Closed::Yes(frames) = c.wait_closed(Duration::from_secs(5)) else {
        panic!("a silent client was never closed");
    };
    let delay = sent.elapsed();
    // Deadline 3 × 200 ms; window: no earlier, no later than one tick (5 ms) + 50 ms.
    assert!(
        delay >= Duration::from_millis(600),
        "closed early: {delay:?}"
    );
    assert!(
        delay <= Duration::from_millis(655),
        "closed late: {delay:?}"
    );
    assert!(frames[0].starts_with("<welcome"));
    assert_eq!(
        &frames[1..3],
        &[
            "<heartbeat mode=\"ping\" seq=\"1\"/>",
            "<heartbeat mode=\"ping\" seq=\"2\"/>",
        ]
    );
    assert_bye(&frames[3], "timeout");
    assert_eq!(frames.len(), 4);
    let line = server
        .wait_log("offline id=quiet reason=timeout", WAIT)
        .expect("offline event logged");
    assert!(line.contains("lived="), "{line}");
}

#[test]
fn any_frame_counts_as_liveness_and_whitespace_does_not() {
    let server = ServerProc::start(FAST);
    let mut talker = server.login("talker");
    let mut spacer = server.login("spacer");
    let start = Instant::now();
    // For three deadlines' worth of time: the talker sends only unknown
    // frames (any frame counts), and a probe that comes when the loop
    // oversleeps an interval is skipped; the spacer only sends whitespace.
    let mut spacer_open = true;
    while start.elapsed() < Duration::from_millis(1800) {
        talker.send("<whatever/>");
        assert!(talker
            .next_non_probe()
            .starts_with("<error code=\"unknown-frame\""));
        if spacer_open {
            spacer_open = spacer.try_send("\n \t\r\n");
        }
        // Paces the loop; the assertions below poll with deadlines.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server
            .wait_log("offline id=spacer reason=timeout", WAIT)
            .is_some(),
        "whitespace kept the spacer alive"
    );
    assert_eq!(server.count_log("offline id=talker"), 0);
    talker.send("<heartbeat mode=\"ping\" seq=\"1\"/>");
    assert_eq!(
        talker.next_non_probe(),
        "<heartbeat mode=\"pong\" seq=\"1\"/>"
    );
}

#[test]
fn a_stream_cut_into_single_bytes_gives_the_same_answers() {
    let server = ServerProc::start(&[]);
    let stream = "<?xml version=\"1.0\"?> <login id=\"bytes\"/>\n<heartbeat mode=\"ping\" seq=\"1\"/>\
                  <!-- comment --><heartbeat mode=\"ping\" seq=\"2\"/><msg to=\"bytes\" id=\"m\">d\u{e9}j\u{e0} &amp; <b>vu</b></msg>";
    let mut c = server.connect();
    for b in stream.as_bytes() {
        c.send_bytes(&[*b]);
    }
    assert!(c.expect_frame().starts_with("<welcome id=\"bytes\""));
    assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\" seq=\"1\"/>");
    assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\" seq=\"2\"/>");
    assert_eq!(
        c.expect_frame(),
        "<msg from=\"bytes\" id=\"m\">d\u{e9}j\u{e0} &amp; <b>vu</b></msg>"
    );
}

#[test]
fn coalesced_frames_are_all_answered_in_order() {
    let server = ServerProc::start(&[]);
    let mut c = server.login("many");
    let batch: String = (0..2000)
        .map(|i| format!("<heartbeat mode=\"ping\" seq=\"{i}\"/>"))
        .collect();
    c.send(&batch);
    for i in 0..2000 {
        assert_eq!(
            c.expect_frame(),
            format!("<heartbeat mode=\"pong\" seq=\"{i}\"/>")
        );
    }
}

#[test]
fn msg_is_routed_byte_for_byte_and_offline_is_reported() {
    let server = ServerProc::start(&[]);
    let mut a = server.login("a");
    let mut b = server.login("b");
    let body = "caf\u{e9} &lt;3 &#x1F600; <![CDATA[ <raw> & ]]> <i a='1'>x</i>  \n spaced";
    a.send(&format!("<msg to=\"b\" id=\"m-1\">{body}</msg>"));
    assert_eq!(
        b.expect_frame(),
        format!("<msg from=\"a\" id=\"m-1\">{body}</msg>")
    );
    b.send("<ack id=\"m-1\"/>");
    a.send("<msg to=\"nobody\" id=\"m-2\">hello?</msg>");
    let err = a.expect_frame();
    assert_eq!(attr(&err, "code").as_deref(), Some("offline"));
    assert_eq!(attr(&err, "ref").as_deref(), Some("m-2"));
    // Both stay connected.
    for c in [&mut a, &mut b] {
        c.send("<heartbeat mode=\"ping\" seq=\"9\"/>");
        assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\" seq=\"9\"/>");
    }
}

#[test]
fn a_second_login_of_the_same_id_replaces_the_first() {
    let server = ServerProc::start(&[]);
    let mut old = server.login("dup");
    let mut new = server.login("dup");
    let Closed::Yes(frames) = old.wait_closed(WAIT) else {
        panic!("replaced connection not closed");
    };
    assert_eq!(frames, ["<bye reason=\"replaced\"/>"]);
    assert!(server
        .wait_log("offline id=dup reason=replaced", WAIT)
        .is_some());
    let mut sender = server.login("sender");
    sender.send("<msg to=\"dup\">to the new one</msg>");
    assert_eq!(
        new.expect_frame(),
        "<msg from=\"sender\">to the new one</msg>"
    );
    // The replaced connection's close did not take the id offline.
    assert_eq!(server.count_log("offline id=dup"), 1);
}

#[test]
fn msg_and_ack_before_login_are_refused_and_closed() {
    let server = ServerProc::start(&[]);
    for frame in ["<msg to=\"x\">hi</msg>", "<ack id=\"m1\"/>"] {
        let mut c = server.connect();
        c.send(frame);
        let Closed::Yes(frames) = c.wait_closed(WAIT) else {
            panic!("not closed after {frame}");
        };
        assert_eq!(frames.len(), 1);
        assert_eq!(attr(&frames[0], "code").as_deref(), Some("not-logged-in"));
    }
}

#[test]
fn a_second_login_on_one_connection_is_refused_but_kept() {
    let server = ServerProc::start(&[]);
    let mut c = server.login("once");
    c.send("<login id=\"twice\"/>");
    assert_eq!(
        attr(&c.expect_frame(), "code").as_deref(),
        Some("already-logged-in")
    );
    c.send("<heartbeat mode=\"ping\" seq=\"3\"/>");
    assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\" seq=\"3\"/>");
}

#[test]
fn bad_frames_get_their_error_code_and_close() {
    let server = ServerProc::start(&[("LIFELINE_MAX_FRAME", "1024")]);
    let oversized = format!("<msg to=\"b\">{}</msg>", "x".repeat(2000));
    let cases: Vec<(String, &str)> = vec![
        ("<login id=\"a\"></wrong>".into(), "bad-frame"),
        ("just text".into(), "bad-frame"),
        (
            "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><lolz>&lol2;</lolz>"
                .into(),
            "bad-frame",
        ),
        ("<login id=\"a\"/><msg to=\"a\">&xxe;</msg>".into(), "bad-frame"),
        ("<heartbeat mode=\"ping\" seq=\"-1\"/>".into(), "bad-frame"),
        ("<login id=\"no spaces allowed\"/>".into(), "bad-id"),
        ("<login id=\"\"/>".into(), "bad-id"),
        (oversized, "frame-too-large"),
        // Never completed, but already over the limit: refused without waiting.
        (format!("<msg to=\"b\">{}", "y".repeat(1500)), "frame-too-large"),
    ];
    for (input, code) in cases {
        let mut c = server.connect();
        c.send(&input);
        let Closed::Yes(frames) = c.wait_closed(WAIT) else {
            panic!("not closed after {input:.60}");
        };
        let error = frames
            .last()
            .unwrap_or_else(|| panic!("no error for {input:.60}"));
        assert_eq!(attr(error, "code").as_deref(), Some(code), "{input:.60}");
    }
    // Invalid UTF-8 and NUL bytes.
    for bytes in [&b"<msg to=\"b\">\xff\xfe</msg>"[..], b"<bye\0/>"] {
        let mut c = server.connect();
        c.send_bytes(bytes);
        let Closed::Yes(frames) = c.wait_closed(WAIT) else {
            panic!("not closed");
        };
        assert_eq!(attr(&frames[0], "code").as_deref(), Some("bad-frame"));
    }
}

#[test]
fn an_unknown_frame_is_reported_and_the_connection_stays() {
    let server = ServerProc::start(&[]);
    let mut c = server.login("u");
    c.send("<subscribe topic=\"x\"><deep><deeper/></deep></subscribe>");
    let err = c.expect_frame();
    assert_eq!(attr(&err, "code").as_deref(), Some("unknown-frame"));
    assert_eq!(attr(&err, "ref").as_deref(), Some("subscribe"));
    c.send("<heartbeat mode=\"ping\" seq=\"1\"/>");
    assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\" seq=\"1\"/>");
}

#[test]
fn bye_closes_and_logs_the_reason() {
    let server = ServerProc::start(&[]);
    let mut c = server.login("leaver");
    c.send("<bye/>");
    assert_eq!(c.wait_closed(WAIT), Closed::Yes(vec![]));
    assert!(server
        .wait_log("offline id=leaver reason=bye", WAIT)
        .is_some());
}

#[test]
fn with_an_auth_secret_only_the_right_token_logs_in() {
    let secret = "correct horse";
    let server = ServerProc::start(&[("LIFELINE_AUTH_SECRET", secret)]);
    let token = lifeline_wire::token::mint(secret.as_bytes(), "carol");
    let mut c = server.connect();
    c.send(&format!("<login id=\"carol\" token=\"{token}\"/>"));
    assert!(c.expect_frame().starts_with("<welcome id=\"carol\""));
    for login in [
        format!("<login id=\"mallory\" token=\"{token}\"/>"),
        "<login id=\"carol\"/>".to_string(),
        "<login id=\"carol\" token=\"00\"/>".to_string(),
    ] {
        let mut c = server.connect();
        c.send(&login);
        let Closed::Yes(frames) = c.wait_closed(WAIT) else {
            panic!("not closed after {login}");
        };
        assert_eq!(attr(&frames[0], "code").as_deref(), Some("auth-failed"));
    }
}

#[test]
fn a_client_that_never_reads_is_cut_off_and_others_are_unaffected() {
    let server = ServerProc::start(&[("LIFELINE_MAX_OUTBOUND", "65536")]);
    let stuck = server.login("stuck");
    stuck
        .stream
        .set_nonblocking(true)
        .expect("the stuck client never reads");
    let mut pusher = server.login("pusher");
    let mut bystander = server.login("bystander");
    let body = "z".repeat(8000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    while server.count_log("offline id=stuck reason=slow-consumer") == 0 {
        assert!(
            Instant::now() < deadline,
            "never cut off after {sent} messages"
        );
        pusher.send(&format!("<msg to=\"stuck\">{body}</msg>"));
        sent += 1;
        if sent.is_multiple_of(20) {
            bystander.send(&format!("<heartbeat mode=\"ping\" seq=\"{sent}\"/>"));
            assert_eq!(
                bystander.expect_frame(),
                format!("<heartbeat mode=\"pong\" seq=\"{sent}\"/>")
            );
        }
    }
    // The pusher keeps working and now learns the target is gone.
    pusher.send("<msg to=\"stuck\" id=\"late\">x</msg>");
    loop {
        let frame = pusher.expect_frame();
        if attr(&frame, "ref").as_deref() == Some("late") {
            assert_eq!(attr(&frame, "code").as_deref(), Some("offline"));
            break;
        }
    }
    drop(stuck);
}

#[test]
fn connections_over_capacity_get_bye_overload() {
    let server = ServerProc::start(&[("LIFELINE_MAX_CONNECTIONS", "2")]);
    let mut a = server.login("a");
    let mut b = server.login("b");
    let mut extra = server.connect();
    let Closed::Yes(frames) = extra.wait_closed(WAIT) else {
        panic!("the extra connection was not closed");
    };
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_bye(&frames[0], "overload");
    for c in [&mut a, &mut b] {
        c.send("<heartbeat mode=\"ping\"/>");
        assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\"/>");
    }
}

#[test]
fn sigterm_says_goodbye_to_everyone_and_exits_zero() {
    let mut server = ServerProc::start(&[]);
    let mut clients: Vec<_> = (0..20).map(|i| server.login(&format!("c{i}"))).collect();
    server.signal(libc::SIGTERM);
    for c in &mut clients {
        let Closed::Yes(frames) = c.wait_closed(WAIT) else {
            panic!("a client was not closed at shutdown");
        };
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_bye(&frames[0], "shutdown");
    }
    assert_eq!(server.wait_exit(WAIT), Some(0));
    assert_eq!(server.wait_count("reason=shutdown", 20, WAIT), 20);
    // Nobody is accepted any more.
    assert!(std::net::TcpStream::connect(server.addr).is_err());
}

#[test]
fn a_bad_environment_value_exits_2_naming_the_variable() {
    for (var, value, accepted) in [
        ("LIFELINE_HEARTBEAT_MS", "soon", "from 10 to 3600000"),
        ("LIFELINE_MISSES", "0", "from 1 to 1000"),
        ("LIFELINE_LISTEN", "not-an-address", "HOST:PORT"),
        ("LIFELINE_TCP_KEEPALIVE", "yes", "IDLE,INTERVAL,COUNT"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(var) && stderr.contains(value) && stderr.contains(accepted),
            "{stderr}"
        );
    }
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "LIFELINE_LISTEN",
        "LIFELINE_HEARTBEAT_MS",
        "LIFELINE_MISSES",
        "LIFELINE_TICK_MS",
        "LIFELINE_MAX_CONNECTIONS",
        "LIFELINE_MAX_FRAME",
        "LIFELINE_MAX_OUTBOUND",
        "LIFELINE_AUTH_SECRET",
        "LIFELINE_TCP_KEEPALIVE",
        "LIFELINE_LOG",
        "LIFELINE_BACKLOG",
        "LIFELINE_DRAIN_MS",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
    assert!(help.contains("[default: 5000]"));
}

#[test]
fn the_open_file_limit_and_capacity_are_reported() {
    let server = ServerProc::start(&[]);
    let line = server.wait_log("capacity", WAIT).unwrap();
    assert!(line.contains("open-file limit"), "{line}");
}
