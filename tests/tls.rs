//! TLS on the client port, against the real binary with a throw-away CA
//! (rcgen), through independent clients: rustls, `openssl s_client` and
//! Python's `ssl` module. Raw XML, `wss://` and the demo page over
//! `https://` on the one port; TLS 1.2 and 1.3; mutual TLS and the login id
//! from the certificate; reload on SIGHUP; bad input beside a bystander who
//! keeps heartbeating; the handshake limit; a handshake that never
//! finishes. Every wait polls with a deadline.

mod common;
mod tls_kit;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Closed, ServerProc};
use tls_kit::{openssl_session, path, python, ClientOpts, Pki, TlsClient};

const FAST: &[(&str, &str)] = &[
    ("LIFELINE_HEARTBEAT_MS", "200"),
    ("LIFELINE_MISSES", "2"),
    ("LIFELINE_TICK_MS", "5"),
];

fn start(pki: &Pki, extra: &[(&str, String)]) -> ServerProc {
    let mut env: Vec<(&str, String)> = pki.server_env();
    env.extend(extra.iter().cloned());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProc::start(&env)
}

fn fast(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    FAST.iter()
        .chain(extra.iter())
        .map(|(k, v)| (*k, v.to_string()))
        .collect()
}

/// The value of one Prometheus sample, e.g. `lifeline_tls_failures_total`.
fn metric(server: &ServerProc, sample: &str) -> u64 {
    let (base, agent) = common::admin_agent(server, Duration::from_secs(5));
    let text = agent
        .get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in the metrics"))
}

fn wait_metric(server: &ServerProc, sample: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = metric(server, sample);
        if got >= want || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn rustls_clients_log_in_ping_and_message_each_other_over_tls_1_3_and_1_2() {
    let pki = Pki::new();
    let server = start(&pki, &[]);
    for (version, name) in [
        (&rustls::version::TLS13, "13"),
        (&rustls::version::TLS12, "12"),
    ] {
        let opts = ClientOpts::new(&pki).version(version);
        let mut alice = TlsClient::login(server.addr, &opts, &format!("alice{name}"));
        let mut bob = TlsClient::login(server.addr, &opts, &format!("bob{name}"));
        assert_eq!(
            alice.tls.conn.protocol_version(),
            Some(version.version),
            "the forced version was negotiated"
        );
        alice.ping(1);
        bob.ping(2);
        alice.send(&format!(
            "<msg to=\"bob{name}\" id=\"m1\">hello over TLS</msg>"
        ));
        assert_eq!(
            bob.expect_frame(),
            format!("<msg from=\"alice{name}\" id=\"m1\">hello over TLS</msg>")
        );
    }
    assert_eq!(
        metric(&server, "lifeline_tls_handshakes_total{kind=\"full\"}"),
        4
    );
}

#[test]
fn a_reconnect_resumes_the_session_in_one_round_trip() {
    let pki = Pki::new();
    let server = start(&pki, &[]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let opts = ClientOpts::new(&pki).version(version).shared();
        let mut first = TlsClient::login(server.addr, &opts, "phone");
        first.ping(1);
        drop(first);
        let mut again = TlsClient::login(server.addr, &opts, "phone");
        again.ping(2);
        assert_eq!(
            again.tls.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{:?}: the second connection resumed with the ticket from the first",
            version.version
        );
    }
    assert_eq!(
        wait_metric(
            &server,
            "lifeline_tls_handshakes_total{kind=\"resumed\"}",
            2
        ),
        2
    );
}

#[test]
fn openssl_s_client_logs_in_and_pings_over_tls_1_3_and_1_2() {
    let pki = Pki::new();
    let server = start(&pki, &[]);
    let ca = path(&pki.ca_pem);
    for (flag, id) in [("-tls1_3", "ossl13"), ("-tls1_2", "ossl12")] {
        let out = openssl_session(
            server.addr,
            &["-quiet", "-CAfile", &ca, flag],
            &format!("<login id=\"{id}\"/><heartbeat mode=\"ping\" seq=\"5\"/>"),
            "mode=\"pong\"",
        );
        assert!(
            out.contains(&format!("<welcome id=\"{id}\"")),
            "{flag}: welcome expected, got {out:?}"
        );
        assert!(
            out.contains("<heartbeat mode=\"pong\" seq=\"5\"/>"),
            "{flag}: pong expected, got {out:?}"
        );
    }
}

const PYTHON_RAW: &str = r#"
import socket, ssl, sys
port, ca, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
ctx.minimum_version = ctx.maximum_version = v
with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        print(s.version())
        s.sendall(b'<login id="py"/><heartbeat mode="ping" seq="7"/><msg to="rs">from python</msg>')
        data = b""
        while b'from="rs"' not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        print(data.decode())
"#;

#[test]
fn python_ssl_logs_in_pings_and_exchanges_messages_with_a_rustls_client() {
    let pki = Pki::new();
    let server = start(&pki, &[]);
    for version in ["1.3", "1.2"] {
        let mut rs = TlsClient::login(server.addr, &ClientOpts::new(&pki), "rs");
        let (port, ca) = (server.addr.port().to_string(), path(&pki.ca_pem));
        let py = std::thread::spawn(move || python(PYTHON_RAW, &[&port, &ca, version]));
        assert_eq!(rs.expect_frame(), "<msg from=\"py\">from python</msg>");
        rs.send("<msg to=\"py\">from rust</msg>");
        let out = py.join().unwrap();
        assert!(out.starts_with(&format!("TLSv{version}")), "{out}");
        assert!(out.contains("<welcome id=\"py\""), "{out}");
        assert!(
            out.contains("<heartbeat mode=\"pong\" seq=\"7\"/>"),
            "{out}"
        );
        assert!(out.contains("<msg from=\"rs\">from rust</msg>"), "{out}");
        rs.send("<bye/>");
        assert!(matches!(
            rs.wait_closed(Duration::from_secs(5)),
            Closed::Yes(_)
        ));
    }
}

#[test]
fn wss_login_ping_and_msg_and_the_demo_page_over_https_on_the_same_port() {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::Message;
    let pki = Pki::new();
    let server = start(&pki, &[]);
    let mut raw = TlsClient::login(server.addr, &ClientOpts::new(&pki), "raw");

    let tls = TlsClient::connect(server.addr, &ClientOpts::new(&pki)).unwrap();
    let mut request = format!("wss://localhost:{}/", server.addr.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "lifeline.v1".parse().unwrap());
    let (mut ws, response) = tungstenite::client(request, tls.tls).expect("wss handshake");
    assert_eq!(response.status(), 101);
    let next_text = |ws: &mut tungstenite::WebSocket<_>| loop {
        match ws.read().expect("a message") {
            Message::Text(t) => return t.to_string(),
            _ => continue,
        }
    };
    ws.send(Message::text("<login id=\"web\"/>")).unwrap();
    assert!(next_text(&mut ws).starts_with("<welcome id=\"web\""));
    ws.send(Message::text("<heartbeat mode=\"ping\" seq=\"3\"/>"))
        .unwrap();
    assert_eq!(next_text(&mut ws), "<heartbeat mode=\"pong\" seq=\"3\"/>");
    ws.send(Message::text("<msg to=\"raw\">over wss</msg>"))
        .unwrap();
    assert_eq!(raw.expect_frame(), "<msg from=\"web\">over wss</msg>");
    raw.send("<msg to=\"web\">back over TLS</msg>");
    assert_eq!(next_text(&mut ws), "<msg from=\"raw\">back over TLS</msg>");

    // The demo page, fetched by Python's urllib over https.
    let page = python(
        r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
with urllib.request.urlopen("https://localhost:%s/" % sys.argv[1], context=ctx, timeout=5) as r:
    print(r.status)
    print(r.read().decode()[:200])
"#,
        &[&server.addr.port().to_string(), &path(&pki.ca_pem)],
    );
    assert!(page.starts_with("200"), "{page}");
    assert!(page.to_lowercase().contains("<!doctype html>"), "{page}");
}

#[test]
fn mutual_tls_accepts_the_ca_s_clients_and_refuses_the_rest() {
    let pki = Pki::new();
    let server = start(&pki, &[("LIFELINE_TLS_CLIENT_CA", path(&pki.ca_pem))]);
    let good = pki.issue_client("phone-1", &[], false);
    let mut phone = TlsClient::login(server.addr, &ClientOpts::new(&pki).cert(&good), "phone-1");
    phone.ping(1);

    let refused = |opts: &ClientOpts, what: &str| {
        // The client may finish its side of a TLS 1.3 handshake before the
        // server refuses the certificate: the refusal then shows on the
        // first read.
        if let Ok(mut c) = TlsClient::connect(server.addr, opts) {
            c.send("<login id=\"x\"/>");
            assert!(
                matches!(c.wait_closed(Duration::from_secs(5)), Closed::Yes(ref f) if f.is_empty()),
                "{what}: closed without a frame"
            );
        }
    };
    refused(&ClientOpts::new(&pki), "no client certificate");
    refused(
        &ClientOpts::new(&pki).cert(&pki.issue_untrusted_client("phone-2")),
        "a certificate from another CA",
    );
    refused(
        &ClientOpts::new(&pki).cert(&pki.issue_client("phone-3", &[], true)),
        "an expired certificate",
    );
    // openssl without a certificate, for an independent view of the refusal.
    let out = openssl_session(
        server.addr,
        &["-quiet", "-CAfile", &path(&pki.ca_pem)],
        "<login id=\"x\"/>",
        "never",
    );
    assert!(!out.contains("<welcome"), "{out}");

    assert_eq!(
        wait_metric(&server, "lifeline_tls_failures_total", 4),
        4,
        "{:#?}",
        server.log_lines()
    );
    phone.ping(2); // the good client was not harmed
}

#[test]
fn with_id_from_cert_the_login_id_must_be_the_certificate_s_cn_or_dns_name() {
    let pki = Pki::new();
    let server = start(
        &pki,
        &[
            ("LIFELINE_TLS_CLIENT_CA", path(&pki.ca_pem)),
            ("LIFELINE_TLS_ID_FROM_CERT", "1".to_string()),
        ],
    );
    let cert = pki.issue_client("device-42", &["device-42.fleet"], false);
    let opts = ClientOpts::new(&pki).cert(&cert);
    TlsClient::login(server.addr, &opts, "device-42").ping(1);
    TlsClient::login(server.addr, &opts, "device-42.fleet").ping(1);

    let mut impostor = TlsClient::connect(server.addr, &opts).unwrap();
    impostor.send("<login id=\"device-43\"/>");
    let Closed::Yes(frames) = impostor.wait_closed(Duration::from_secs(5)) else {
        panic!("a mismatching id is closed");
    };
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(
        frames[0].starts_with("<error code=\"auth-failed\" ref=\"device-43\">"),
        "{frames:?}"
    );
    server
        .wait_log("login refused for device-43", Duration::from_secs(5))
        .expect("the refusal is logged");
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_keeps_old_ones() {
    let mut pki = Pki::new();
    let server = start(&pki, &[]);
    let opts = ClientOpts::new(&pki);
    let mut old = TlsClient::login(server.addr, &opts, "old");
    assert_eq!(old.server_serial(), vec![1]);

    let (cert, key) = (pki.server_cert.clone(), pki.server_key.clone());
    pki.issue_server(2, &cert, &key);
    server.signal(libc::SIGHUP);
    server
        .wait_log("TLS reloaded", Duration::from_secs(5))
        .expect("reload logged");
    let mut new = TlsClient::login(server.addr, &opts, "new");
    assert_eq!(
        new.server_serial(),
        vec![2],
        "a new connection sees the new certificate"
    );
    old.ping(1);
    new.ping(2);

    // A broken file is refused and the certificate in force stays.
    std::fs::write(&key, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    server
        .wait_log("TLS reload failed", Duration::from_secs(5))
        .expect("the failed reload is logged");
    let mut after = TlsClient::login(server.addr, &opts, "after");
    assert_eq!(after.server_serial(), vec![2]);
    after.ping(3);
    old.ping(4);
    assert_eq!(
        metric(&server, "lifeline_tls_reloads_total{result=\"ok\"}"),
        1
    );
    assert_eq!(
        metric(&server, "lifeline_tls_reloads_total{result=\"failed\"}"),
        1
    );
}

/// A TLS 1.0 ClientHello (version 3.1 in the record and the hello, one
/// TLS 1.0 cipher suite, no extensions), as an old client sends it.
fn tls10_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x01];
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

/// Sends `bytes` on a fresh TCP connection and waits for the server to
/// close it; returns what the server sent before closing.
fn closed_after(server: &ServerProc, bytes: &[u8]) -> Vec<u8> {
    let mut sock = TcpStream::connect(server.addr).unwrap();
    sock.write_all(bytes).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match sock.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close within 5 s: {e}"),
        }
    }
}

#[test]
fn bad_input_is_closed_cleanly_logged_at_a_bounded_rate_and_harms_no_bystander() {
    let pki = Pki::new();
    // The bystander is silent across 30 bad connections in a row: a 400 ms
    // deadline would time it out on a slow machine. Bad input is closed at
    // once, not at a deadline (`closed_after` allows 5 s), so a long
    // heartbeat keeps what the test proves.
    let server = start(&pki, &fast(&[("LIFELINE_HEARTBEAT_MS", "60000")]));
    let mut bystander = TlsClient::login(server.addr, &ClientOpts::new(&pki), "bystander");
    let mut seq = 0;
    let mut heartbeat = |b: &mut TlsClient| {
        seq += 1;
        b.ping(seq);
    };

    // A plaintext client on the TLS port: closed, no XML said (rustls
    // answers a stream that is not TLS records with no alert).
    let got = closed_after(&server, b"<login id=\"plain\"/>");
    assert!(
        got.is_empty() || got[0] == 0x15,
        "nothing or an alert: {got:?}"
    );
    heartbeat(&mut bystander);
    // TLS garbage: a handshake record holding nonsense.
    closed_after(
        &server,
        &[0x16, 0x03, 0x03, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef],
    );
    heartbeat(&mut bystander);
    // Not TLS at all.
    closed_after(&server, &[0xff; 64]);
    heartbeat(&mut bystander);
    // A TLS 1.0 client: refused with a protocol_version alert (70).
    let got = closed_after(&server, &tls10_client_hello());
    assert_eq!(got.first(), Some(&0x15), "an alert record: {got:?}");
    // Fatal: protocol_version (70), or handshake_failure (40) as rustls
    // finds no TLS 1.0 suite it would use before it looks at the version.
    assert!(
        got.ends_with(&[2, 70]) || got.ends_with(&[2, 40]),
        "a fatal alert: {got:?}"
    );
    heartbeat(&mut bystander);
    // A storm of garbage: counted every time, logged at most once a second.
    let started = Instant::now();
    for _ in 0..30 {
        closed_after(&server, &[0xff; 16]);
    }
    heartbeat(&mut bystander);

    assert_eq!(wait_metric(&server, "lifeline_tls_failures_total", 34), 34);
    assert_eq!(
        metric(&server, "lifeline_connections_closed_total{reason=\"tls\"}"),
        34,
        "each closed with reason tls"
    );
    let logged = server.count_log("TLS handshake with");
    let seconds = started.elapsed().as_secs() + 1;
    assert!(
        (1..=4 + seconds as usize).contains(&logged),
        "{logged} log lines for 34 failures in {seconds} s"
    );
    heartbeat(&mut bystander);
}

#[test]
fn a_handshake_that_never_finishes_is_closed_at_the_login_deadline_without_a_probe() {
    let pki = Pki::new();
    let server = start(&pki, &fast(&[]));
    let mut mute = TcpStream::connect(server.addr).unwrap();
    // Half a ClientHello: the handshake starts and never finishes.
    mute.write_all(&tls10_client_hello()[..20]).unwrap();
    let started = Instant::now();
    mute.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = mute.read_to_end(&mut got);
    let waited = started.elapsed();
    assert!(got.is_empty(), "no XML into a handshake: {got:?}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "closed at the 400 ms deadline, after {waited:?}"
    );
    assert_eq!(
        wait_metric(
            &server,
            "lifeline_connections_closed_total{reason=\"timeout\"}",
            1
        ),
        1
    );
    assert_eq!(metric(&server, "lifeline_probes_sent_total"), 0);
    assert_eq!(metric(&server, "lifeline_tls_handshakes_in_progress"), 0);
}

#[test]
fn past_the_handshake_limit_new_connections_wait_in_the_backlog() {
    let pki = Pki::new();
    let server = start(&pki, &[("LIFELINE_TLS_MAX_HANDSHAKES", "2".to_string())]);
    let opts = ClientOpts::new(&pki);
    let mut mute: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    assert_eq!(
        wait_metric(&server, "lifeline_tls_handshakes_in_progress", 2),
        2
    );

    // The third connection is in the backlog: its ClientHello is not answered.
    let (addr, late_opts) = (server.addr, opts.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let welcome = TlsClient::connect(addr, &late_opts).map(|mut c| {
            c.send("<login id=\"late\"/>");
            c.expect_frame()
        });
        let _ = tx.send(welcome);
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "held in the backlog while 2 handshakes are in progress"
    );
    assert_eq!(metric(&server, "lifeline_tls_handshakes_in_progress"), 2);
    assert_eq!(metric(&server, "lifeline_accepted_total"), 2);

    // One handshake ends: the backlog's turn.
    mute.pop();
    let welcome = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("accepted once a place freed")
        .expect("handshake");
    assert!(welcome.starts_with("<welcome id=\"late\""), "{welcome}");
    drop(mute);
    assert_eq!(
        wait_metric(&server, "lifeline_tls_handshakes_in_progress", 0),
        0
    );
}

#[test]
fn bad_tls_files_stop_the_start_with_one_line_naming_the_variable() {
    let pki = Pki::new();
    let other = Pki::new();
    let run = |env: &[(&str, String)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"));
        cmd.env_clear()
            .env("LIFELINE_LISTEN", "127.0.0.1:0")
            .env("LIFELINE_ADMIN_ADDR", "");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cert = path(&pki.server_cert);
    let key = path(&pki.server_key);
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("LIFELINE_TLS_CERT", cert.clone())],
            "LIFELINE_TLS_CERT",
        ),
        (vec![("LIFELINE_TLS_KEY", key.clone())], "LIFELINE_TLS_KEY"),
        (
            vec![
                ("LIFELINE_TLS_CERT", "/nonexistent/cert.pem".to_string()),
                ("LIFELINE_TLS_KEY", key.clone()),
            ],
            "LIFELINE_TLS_CERT",
        ),
        (
            vec![
                ("LIFELINE_TLS_CERT", cert.clone()),
                ("LIFELINE_TLS_KEY", path(&other.server_key)),
            ],
            "LIFELINE_TLS_KEY",
        ),
        (
            vec![
                ("LIFELINE_TLS_CERT", cert.clone()),
                ("LIFELINE_TLS_KEY", cert.clone()),
            ],
            "LIFELINE_TLS_KEY",
        ),
        (
            vec![
                ("LIFELINE_TLS_CERT", cert.clone()),
                ("LIFELINE_TLS_KEY", key.clone()),
                ("LIFELINE_TLS_CLIENT_CA", key.clone()),
            ],
            "LIFELINE_TLS_CLIENT_CA",
        ),
        (
            vec![
                ("LIFELINE_TLS_CERT", cert.clone()),
                ("LIFELINE_TLS_KEY", key.clone()),
                ("LIFELINE_TLS_ID_FROM_CERT", "1".to_string()),
            ],
            "LIFELINE_TLS_ID_FROM_CERT",
        ),
    ];
    for (env, var) in cases {
        let (code, stderr) = run(&env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(var), "{env:?} names {var}: {stderr}");
    }
}

/// The first event of the client library matching `wanted`, within 5 s.
fn wait_event(
    client: &lifeline_client::Client,
    wanted: impl Fn(&lifeline_client::ClientEvent) -> bool,
) -> lifeline_client::ClientEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.events().recv_timeout(left) {
            Ok(event) if wanted(&event) => return event,
            Ok(event) => seen.push(event),
            Err(e) => panic!("no such event within 5 s ({e:?}); saw {seen:?}"),
        }
    }
}

#[test]
fn the_rust_client_library_speaks_tls_with_a_ca_file_and_a_client_certificate() {
    use lifeline_client::{Client, ClientConfig, ClientEvent, ClientTls};
    let pki = Pki::new();
    let server = start(
        &pki,
        &fast(&[
            ("LIFELINE_TLS_CLIENT_CA", &path(&pki.ca_pem)),
            ("LIFELINE_HEARTBEAT_MAX_MS", "60000"),
        ]),
    );
    let cert = pki.issue_client("lib-client", &[], false);
    let tls = ClientTls::builder("localhost")
        .ca_file(&pki.ca_pem)
        .client_cert(&cert.cert, &cert.key)
        .build()
        .unwrap();
    let client = Client::start(ClientConfig {
        tls: Some(tls),
        ..ClientConfig::new(server.addr, "lib-client")
    })
    .unwrap();
    wait_event(&client, |e| matches!(e, ClientEvent::Connected { .. }));

    // The peer is silent while the library receives and answers, so it asks
    // for a long interval (the library keeps the server's 200 ms one).
    let peer_cert = pki.issue_client("peer", &[], false);
    let mut peer = TlsClient::connect(server.addr, &ClientOpts::new(&pki).cert(&peer_cert))
        .expect("TLS handshake");
    peer.send("<login id=\"peer\" interval=\"60000\"/>");
    let welcome = peer.expect_frame();
    assert!(
        welcome.starts_with("<welcome id=\"peer\" interval=\"60000\""),
        "{welcome}"
    );
    peer.send("<msg to=\"lib-client\" id=\"p1\">to the library</msg>");
    let ClientEvent::Message { from, body, .. } =
        wait_event(&client, |e| matches!(e, ClientEvent::Message { .. }))
    else {
        unreachable!()
    };
    assert_eq!((from.as_str(), body.as_str()), ("peer", "to the library"));
    client.send_msg("peer", "l1", "from the library").unwrap();
    assert_eq!(
        peer.expect_frame(),
        "<msg from=\"lib-client\" id=\"l1\">from the library</msg>"
    );
    // Heartbeats flow over TLS: the 200 ms interval passes several times
    // and the connection stays (the server closes after 400 ms of silence).
    let logins = metric(&server, "lifeline_logins_total");
    let heartbeats = metric(&server, "lifeline_heartbeats_received_total");
    assert!(
        wait_metric(
            &server,
            "lifeline_heartbeats_received_total",
            heartbeats + 5
        ) >= heartbeats + 5
    );
    assert_eq!(
        metric(&server, "lifeline_logins_total"),
        logins,
        "no reconnect"
    );

    // A client that trusts another CA does not get in, and says why.
    let wrong = Client::start(ClientConfig {
        tls: Some(
            ClientTls::builder("localhost")
                .ca_file(&Pki::new().ca_pem)
                .build()
                .unwrap(),
        ),
        ..ClientConfig::new(server.addr, "wrong-ca")
    })
    .unwrap();
    let event = wait_event(&wrong, |e| matches!(e, ClientEvent::Disconnected { .. }));
    assert!(
        format!("{event:?}").contains("InvalidCertificate"),
        "{event:?}"
    );
}
