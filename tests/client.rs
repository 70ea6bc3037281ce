//! The client library against the real server binary (and, where a test needs
//! the server to say something specific, a fake server on a plain listener).
//! Every wait polls for its condition with a deadline.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use common::{poll_until, ServerProc, WAIT};
use lifeline_client::{
    Backoff, Client, ClientConfig, ClientError, ClientEvent, Disconnect, StopReason,
};

/// Fast backoff so reconnect tests take milliseconds, not seconds.
fn config(addr: SocketAddr, id: &str) -> ClientConfig {
    ClientConfig {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::new(addr, id)
    }
}

/// The first event matching `wanted` within `timeout`, skipping others.
fn wait_event(
    client: &Client,
    timeout: Duration,
    what: &str,
    wanted: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.events().recv_timeout(left) {
            Ok(event) if wanted(&event) => return event,
            Ok(event) => seen.push(event),
            Err(e) => panic!("no {what} within {timeout:?} ({e:?}); saw {seen:?}"),
        }
    }
}

fn wait_connected(client: &Client) -> (Duration, u32) {
    match wait_event(client, WAIT, "Connected", |e| {
        matches!(e, ClientEvent::Connected { .. })
    }) {
        ClientEvent::Connected { interval, misses } => (interval, misses),
        _ => unreachable!(),
    }
}

/// A connection accepted by a fake server, read with deadlines.
struct Peer {
    stream: TcpStream,
    received: String,
}

impl Peer {
    fn accept(listener: &TcpListener, timeout: Duration) -> Peer {
        listener.set_nonblocking(true).unwrap();
        let accepted = poll_until(timeout, || match listener.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            other => Some(other),
        });
        let (stream, _) = match accepted {
            Some(Ok(accepted)) => accepted,
            Some(Err(e)) => panic!("accept failed: {e}"),
            None => panic!("no connection within {timeout:?}"),
        };
        stream.set_nonblocking(false).unwrap();
        Peer {
            stream,
            received: String::new(),
        }
    }

    /// Reads until everything received so far ends with `suffix`.
    fn read_until(&mut self, suffix: &str) -> &str {
        let deadline = Instant::now() + WAIT;
        let mut chunk = [0u8; 4096];
        while !self.received.ends_with(suffix) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {suffix:?}; got {:?}", self.received);
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed before {suffix:?}; got {:?}", self.received),
                Ok(n) => self
                    .received
                    .push_str(std::str::from_utf8(&chunk[..n]).unwrap()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
        &self.received
    }

    fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }
}

#[test]
fn logs_in_receives_and_acks_and_sends_byte_for_byte() {
    let server = ServerProc::start(&[]);
    let mut raw = server.login("raw");
    let mut client = Client::start(config(server.addr, "lib")).unwrap();
    assert_eq!(wait_connected(&client), (Duration::from_millis(5000), 5));

    raw.send("<msg to=\"lib\" id=\"m1\">h\u{e9}llo &amp; &#x2713; ok</msg>");
    match wait_event(&client, WAIT, "Message", |e| {
        matches!(e, ClientEvent::Message { .. })
    }) {
        ClientEvent::Message { from, id, body } => {
            assert_eq!(from, "raw");
            assert_eq!(id.as_deref(), Some("m1"));
            assert_eq!(body, "h\u{e9}llo & \u{2713} ok");
        }
        _ => unreachable!(),
    }
    client.ack("m1").unwrap();

    // The text is escaped on the way out and arrives exactly so; the ack went
    // first on the same connection, so the server took it without complaint.
    client
        .send_msg("raw", "m2", "caf\u{e9} <b> & \u{2713}")
        .unwrap();
    assert_eq!(
        raw.expect_frame(),
        "<msg from=\"lib\" id=\"m2\">caf\u{e9} &lt;b&gt; &amp; \u{2713}</msg>"
    );

    client.send_msg("nobody", "m3", "anyone?").unwrap();
    match wait_event(&client, WAIT, "ServerError", |e| {
        matches!(e, ClientEvent::ServerError { .. })
    }) {
        ClientEvent::ServerError {
            code, reference, ..
        } => {
            assert_eq!(code, "offline");
            assert_eq!(reference.as_deref(), Some("m3"));
        }
        _ => unreachable!(),
    }

    client.stop();
    assert!(server.wait_log("offline id=lib reason=bye", WAIT).is_some());
    assert!(matches!(
        client.send_msg("raw", "m4", "late"),
        Err(ClientError::Stopped)
    ));
}

#[test]
fn logs_in_with_a_token_answers_probes_and_acks_byte_exact() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The app gets a token its back end minted; it never sees the secret.
    let token = lifeline_wire::token::mint(b"s3cret", "x");
    let client = Client::start(ClientConfig {
        token: Some(token.clone()),
        ..config(addr, "x")
    })
    .unwrap();
    let mut peer = Peer::accept(&listener, WAIT);
    let login = format!("<login id=\"x\" token=\"{token}\"/>");
    peer.read_until(&login);

    // One write carries three frames; the probe must be answered with its seq.
    peer.send(
        "<welcome id=\"x\" interval=\"60000\" misses=\"3\"/>\n\
         <msg from=\"y\" id=\"m1\">hi</msg><heartbeat mode=\"ping\" seq=\"9\"/>",
    );
    assert_eq!(wait_connected(&client), (Duration::from_secs(60), 3));
    wait_event(&client, WAIT, "Message", |e| {
        matches!(e, ClientEvent::Message { .. })
    });
    client.ack("m1").unwrap();
    assert_eq!(
        peer.read_until("<ack id=\"m1\"/>"),
        format!("{login}<heartbeat mode=\"pong\" seq=\"9\"/><ack id=\"m1\"/>")
    );

    // Mistakes the caller can make are refused before anything is queued.
    assert!(matches!(
        client.send_msg("a b", "m2", "x"),
        Err(ClientError::BadClientId(_))
    ));
    assert!(matches!(
        client.send_msg("y", "", "x"),
        Err(ClientError::BadMessageId(_))
    ));
    assert!(matches!(
        client.send_msg("y", "m2", "bell\u{7}"),
        Err(ClientError::BadText)
    ));
    assert!(matches!(
        Client::start(config(addr, "not/an/id")),
        Err(ClientError::BadClientId(_))
    ));
}

#[test]
fn a_wrong_secret_is_refused_and_stops_the_client() {
    let server = ServerProc::start(&[("LIFELINE_AUTH_SECRET", "right")]);
    let right = Client::start(ClientConfig {
        token: Some(lifeline_wire::token::mint(b"right", "good")),
        ..config(server.addr, "good")
    })
    .unwrap();
    wait_connected(&right);
    let wrong = Client::start(ClientConfig {
        token: Some(lifeline_wire::token::mint(b"wrong", "bad")),
        ..config(server.addr, "bad")
    })
    .unwrap();
    match wait_event(&wrong, WAIT, "Stopped", |e| {
        matches!(e, ClientEvent::Stopped { .. })
    }) {
        ClientEvent::Stopped {
            reason: StopReason::Refused { code, .. },
        } => assert_eq!(code, "auth-failed"),
        other => panic!("expected a refused login, got {other:?}"),
    }
}

#[test]
fn asks_for_an_interval_and_logs_in_with_an_expiring_token() {
    let server = ServerProc::start(&[
        ("LIFELINE_AUTH_SECRET", "new,old"),
        ("LIFELINE_HEARTBEAT_MIN_MS", "100"),
        ("LIFELINE_HEARTBEAT_MAX_MS", "30000"),
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |id: &str, exp: u64| Some(lifeline_wire::token::mint_expiring(b"old", id, exp));
    let phone = Client::start(ClientConfig {
        token: token("phone", now + 3600),
        exp: Some(now + 3600),
        interval: Some(Duration::from_secs(20)),
        ..config(server.addr, "phone")
    })
    .unwrap();
    assert_eq!(wait_connected(&phone), (Duration::from_secs(20), 5));
    // Asking for more than the range allows gets the longest it allows.
    let greedy = Client::start(ClientConfig {
        interval: Some(Duration::from_secs(3600)),
        token: token("greedy", now + 60),
        exp: Some(now + 60),
        ..config(server.addr, "greedy")
    })
    .unwrap();
    assert_eq!(wait_connected(&greedy), (Duration::from_secs(30), 5));
    // An expired token is refused, and the client stops (a retry would be too).
    let stale = Client::start(ClientConfig {
        token: token("stale", now - 1),
        exp: Some(now - 1),
        ..config(server.addr, "stale")
    })
    .unwrap();
    match wait_event(&stale, WAIT, "Stopped", |e| {
        matches!(e, ClientEvent::Stopped { .. })
    }) {
        ClientEvent::Stopped {
            reason: StopReason::Refused { code, text },
        } => {
            assert_eq!(code, "auth-failed");
            assert!(text.contains("expired"), "{text}");
        }
        other => panic!("expected a refused login, got {other:?}"),
    }
}

/// A fake server sends a message again on the next connection, as the real
/// one does with an unacked at-least-once push: the app sees it once, and
/// once the app has acked it, a later copy is acked by the client itself.
#[test]
fn a_redelivered_message_is_reported_once_and_acked_again_for_the_app() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = Client::start(ClientConfig {
        token: Some("t0k".into()),
        exp: Some(1_900_000_000),
        interval: Some(Duration::from_millis(45_000)),
        ..config(listener.local_addr().unwrap(), "x")
    })
    .unwrap();
    let welcome = "<welcome id=\"x\" interval=\"45000\" misses=\"3\"/>";
    let login = "<login id=\"x\" token=\"t0k\" exp=\"1900000000\" interval=\"45000\"/>";
    let is_message = |e: &ClientEvent| matches!(e, ClientEvent::Message { .. });
    let message_id = |e: ClientEvent| match e {
        ClientEvent::Message { id, .. } => id,
        other => panic!("not a message: {other:?}"),
    };

    let mut first = Peer::accept(&listener, WAIT);
    first.read_until(login);
    first.send(&format!(
        "{welcome}<msg from=\"admin\" id=\"p-r-1\">once</msg>"
    ));
    wait_connected(&client);
    assert_eq!(
        message_id(wait_event(&client, WAIT, "p-r-1", is_message)).as_deref(),
        Some("p-r-1")
    );
    drop(first); // the connection ends before the app acks

    let mut second = Peer::accept(&listener, WAIT);
    second.read_until(login);
    second.send(&format!(
        "{welcome}<msg from=\"admin\" id=\"p-r-1\">once</msg><msg from=\"admin\" id=\"p-r-2\">two</msg>"
    ));
    // The copy of p-r-1 is dropped: the next message the app sees is p-r-2.
    assert_eq!(
        message_id(wait_event(&client, WAIT, "p-r-2", is_message)).as_deref(),
        Some("p-r-2")
    );
    client.ack("p-r-1").unwrap();
    second.read_until("<ack id=\"p-r-1\"/>");
    drop(second); // and this ack is lost with the connection

    let mut third = Peer::accept(&listener, WAIT);
    third.read_until(login);
    third.send(&format!("{welcome}<msg from=\"admin\" id=\"p-r-1\">once</msg><msg from=\"y\" id=\"m9\">marker</msg>"));
    // Acked for the app, without handing it over again.
    assert_eq!(
        third.read_until("<ack id=\"p-r-1\"/>"),
        format!("{login}<ack id=\"p-r-1\"/>")
    );
    assert_eq!(
        message_id(wait_event(&client, WAIT, "m9", is_message)).as_deref(),
        Some("m9")
    );
}

#[test]
fn reconnects_to_a_server_restarted_on_the_same_port() {
    let first = ServerProc::start(&[]);
    let addr = first.addr;
    let client = Client::start(config(addr, "phoenix")).unwrap();
    wait_connected(&client);
    assert!(first.wait_log("online id=phoenix", WAIT).is_some());

    drop(first); // SIGKILL, then reaped
    wait_event(&client, WAIT, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    });

    let listen = addr.to_string();
    let second = ServerProc::start(&[("LIFELINE_LISTEN", &listen)]);
    assert_eq!(second.addr, addr);
    assert!(
        second
            .wait_log("online id=phoenix", Duration::from_secs(10))
            .is_some(),
        "no login on the restarted server; log: {:?}",
        second.log_lines()
    );
    wait_connected(&client);
}

#[test]
fn a_server_that_stops_answering_is_lost_after_interval_times_misses() {
    let server = ServerProc::start(&[
        ("LIFELINE_HEARTBEAT_MS", "200"),
        ("LIFELINE_MISSES", "3"),
        ("LIFELINE_TICK_MS", "5"),
    ]);
    let client = Client::start(config(server.addr, "watcher")).unwrap();
    assert_eq!(wait_connected(&client), (Duration::from_millis(200), 3));

    // A full loss window with nothing happening proves both directions work:
    // the server would drop a client that did not ping, and the client would
    // declare a server lost that did not answer.
    let window = Duration::from_millis(900);
    match client.events().recv_timeout(window) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("expected a quiet connection, got {other:?}"),
    }

    let stopped_at = Instant::now();
    server.signal(libc::SIGSTOP);
    let event = wait_event(&client, Duration::from_secs(3), "ServerLost", |e| {
        matches!(e, ClientEvent::ServerLost { .. })
    });
    let after_stop = stopped_at.elapsed();
    server.signal(libc::SIGCONT);

    let ClientEvent::ServerLost {
        silent_for,
        unanswered,
    } = event
    else {
        unreachable!()
    };
    // Lost exactly when interval × misses of silence have passed (the last
    // answered pong came at most one interval before SIGSTOP).
    let budget = Duration::from_millis(600);
    let tolerance = Duration::from_millis(100);
    assert!(
        silent_for >= budget && silent_for <= budget + tolerance,
        "silent for {silent_for:?}"
    );
    assert!(
        after_stop >= Duration::from_millis(400) && after_stop <= budget + tolerance,
        "lost {after_stop:?} after SIGSTOP"
    );
    assert!(unanswered >= 2, "only {unanswered} pings unanswered");

    // Resumed, the server welcomes the reconnect.
    wait_connected(&client);
}

#[test]
fn a_replaced_bye_stops_the_client_for_good() {
    let server = ServerProc::start(&[]);
    let client = Client::start(config(server.addr, "dup")).unwrap();
    wait_connected(&client);
    let _other = server.login("dup");

    match client.events().recv_timeout(WAIT) {
        Ok(ClientEvent::Stopped {
            reason: StopReason::Bye(reason),
        }) => assert_eq!(reason, "replaced"),
        other => panic!("expected Stopped by a replaced bye, got {other:?}"),
    }
    // The thread has ended and dropped its sender: no reconnect can follow.
    assert!(matches!(
        client.events().recv_timeout(WAIT),
        Err(RecvTimeoutError::Disconnected)
    ));
    // The log reaches the harness through a reader thread: poll for it.
    assert_eq!(server.wait_count("online id=dup", 2, WAIT), 2);
    assert_eq!(server.count_log("online id=dup"), 2);
}

#[test]
fn a_shutdown_bye_with_retry_ms_delays_the_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = Client::start(config(listener.local_addr().unwrap(), "x")).unwrap();
    let mut first = Peer::accept(&listener, WAIT);
    first.read_until("<login id=\"x\"/>");
    first.send(
        "<welcome id=\"x\" interval=\"1000\" misses=\"3\"/><bye reason=\"shutdown\" retry-ms=\"300\"/>",
    );
    let bye_sent = Instant::now();
    drop(first);

    let mut second = Peer::accept(&listener, WAIT);
    let waited = bye_sent.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "back after {waited:?}"
    );
    second.read_until("<login id=\"x\"/>");

    // The events so far, in order: the first login, its end, the wait.
    wait_connected(&client);
    match client.events().recv_timeout(WAIT) {
        Ok(ClientEvent::Disconnected {
            reason:
                Disconnect::Bye {
                    reason,
                    retry_after,
                },
        }) => {
            assert_eq!(reason, "shutdown");
            assert_eq!(retry_after, Some(Duration::from_millis(300)));
        }
        other => panic!("expected Disconnected by a shutdown bye, got {other:?}"),
    }
    match client.events().recv_timeout(WAIT) {
        Ok(ClientEvent::Reconnecting { attempt, delay }) => {
            assert_eq!(attempt, 1);
            assert_eq!(delay, Duration::from_millis(300));
        }
        other => panic!("expected Reconnecting, got {other:?}"),
    }
}

#[test]
fn backoff_delays_lie_in_zero_to_the_capped_exponential() {
    let base = Duration::from_millis(100);
    let cap = Duration::from_secs(5);
    let mut backoff = Backoff::new(base, cap);
    for attempt in 0..70u32 {
        let uncapped = base.as_nanos().saturating_mul(1u128 << attempt.min(64));
        let ceiling = Duration::from_nanos(uncapped.min(cap.as_nanos()) as u64);
        assert_eq!(backoff.ceiling(attempt), ceiling, "attempt {attempt}");
        for _ in 0..200 {
            let delay = backoff.delay(attempt);
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
        }
    }
    assert_eq!(backoff.ceiling(u32::MAX), cap);
    assert!(backoff.delay(u32::MAX) <= cap);
}

#[test]
fn backoff_jitter_spreads_over_the_whole_window() {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
    // Attempt 3: the window is [0, 800 ms].
    let delays: Vec<Duration> = (0..2000).map(|_| backoff.delay(3)).collect();
    let min = delays.iter().min().unwrap();
    let max = delays.iter().max().unwrap();
    let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
    assert!(*min < Duration::from_millis(50), "min {min:?}");
    assert!(*max > Duration::from_millis(750), "max {max:?}");
    assert!(
        mean > Duration::from_millis(350) && mean < Duration::from_millis(450),
        "mean {mean:?}"
    );
    // Two clients started together do not draw the same delays.
    let mut other = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
    let theirs: Vec<Duration> = (0..10).map(|_| other.delay(3)).collect();
    let ours: Vec<Duration> = (0..10).map(|_| backoff.delay(3)).collect();
    assert_ne!(ours, theirs);
}
