//! Broadcasts from outside (server/fanout.rs): every logged-in client gets
//! each one exactly once and in order with the other frames it is sent; a
//! broadcast to thousands is written in slices between other clients'
//! reads; a subscriber that does not read is cut off without costing the
//! others a message; WebSocket and raw clients get the same text, and TLS
//! clients too (each copy sealed for its own session); beyond 64 waiting a
//! broadcast is `503 busy` and none accepted is lost; an upgrade hands over
//! only once the broadcasts being sent reached everyone.
//!
//! Every wait polls with a deadline; nothing sleeps and hopes.

mod common;
mod fanout_kit;
mod tls_kit;
mod upgrade_kit;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{attr, Closed, ServerProc, WAIT};
use fanout_kit::{admin_msg, log_in_many, pipelined_posts, Admin, Ws};
use tls_kit::{ClientOpts, Pki, TlsClient};
use upgrade_kit::{http, Upgraded};

/// No probes during a test: a heartbeat interval longer than any test.
const QUIET: &[(&str, &str)] = &[("LIFELINE_HEARTBEAT_MS", "60000")];

// ---------------------------------------------------------------------- tests

/// 2,000 clients (several slices); every tenth also gets a push before the
/// first broadcast and one right after it, posted while the broadcast is
/// still on its way, last id first (the broadcast walks the ids in order,
/// so those have not been reached yet: the push must not overtake it); a
/// second broadcast follows, then a last one. Each client sees exactly its
/// frames, in order, and nothing twice (a repeat would come before the last).
#[test]
fn every_client_gets_each_broadcast_once_in_order_with_its_pushes() {
    let server = ServerProc::start(QUIET);
    let admin = Admin::new(&server);
    let mut clients = log_in_many(&server, "c", 2000);
    let pushed = |i: usize| i % 10 == 9;
    let mut before = Vec::new();
    for (i, (id, _)) in clients.iter().enumerate() {
        if pushed(i) {
            before.push(admin.push(id, &format!("before {id}")));
        }
    }
    let first = admin.broadcast("first to all");
    let mut after = Vec::new();
    for (i, (id, _)) in clients.iter().enumerate().rev() {
        if pushed(i) {
            after.push(admin.push(id, &format!("after {id}")));
        }
    }
    after.reverse();
    let second = admin.broadcast("second to all");
    // Whatever came twice would come before this one.
    let end = admin.broadcast("end");
    let (mut before, mut after) = (before.into_iter(), after.into_iter());
    for (i, (id, client)) in clients.iter_mut().enumerate() {
        let mut expected = Vec::new();
        if pushed(i) {
            expected.push((before.next().unwrap(), format!("before {id}")));
        }
        expected.push((first.clone(), "first to all".to_string()));
        if pushed(i) {
            expected.push((after.next().unwrap(), format!("after {id}")));
        }
        expected.push((second.clone(), "second to all".to_string()));
        expected.push((end.clone(), "end".to_string()));
        let got: Vec<(String, String)> = expected
            .iter()
            .map(|_| admin_msg(&client.expect_frame()))
            .collect();
        assert_eq!(got, expected, "client {id}");
    }
}

/// A broadcast to 3,000 clients while a bystander that sorts last pings:
/// the bystander's pong for a ping sent after the broadcast was accepted
/// arrives BEFORE the broadcast reaches the bystander itself. On one socket
/// that order proves the loop read and answered the bystander between two
/// slices of the broadcast (done in one go, the broadcast would come first).
#[test]
fn a_broadcast_to_thousands_is_sliced_between_a_bystanders_pings() {
    let server = ServerProc::start(QUIET);
    let admin = Admin::new(&server);
    let _others = log_in_many(&server, "a", 3000);
    let mut bystander = server.login("zzzz");
    let mut interleaved = 0;
    for round in 0..5u64 {
        let id = admin.broadcast(&format!("round {round}"));
        let mut pongs = 0;
        let mut seq = round * 1000;
        bystander.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
        loop {
            let frame = bystander.expect_frame();
            if frame.starts_with("<heartbeat mode=\"pong\"") {
                assert_eq!(attr(&frame, "seq"), Some(seq.to_string()));
                pongs += 1;
                seq += 1;
                bystander.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
                continue;
            }
            assert_eq!(admin_msg(&frame), (id.clone(), format!("round {round}")));
            break;
        }
        // The ping in flight when the broadcast arrived is answered next.
        let last = bystander.expect_frame();
        assert_eq!(
            last,
            format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>"),
            "round {round}"
        );
        if pongs > 0 {
            interleaved += 1;
        }
    }
    assert!(
        interleaved > 0,
        "in 5 broadcasts to 3,001 clients the bystander never got a pong before its copy"
    );
}

/// A subscriber that never reads, and three that do. Broadcasts of 30 KB go
/// out until the stuck one is cut off as a slow consumer; the readers got
/// every broadcast, in order, and are still served.
#[test]
fn a_subscriber_that_does_not_read_is_cut_off_and_the_others_get_every_broadcast() {
    let server = ServerProc::start(&[
        ("LIFELINE_HEARTBEAT_MS", "60000"),
        ("LIFELINE_MAX_OUTBOUND", "65536"),
        ("LIFELINE_MAX_FRAME", "65536"),
    ]);
    let admin = Admin::new(&server);
    let mut stuck = server.login("stuck");
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let mut client = server.login(&format!("reader{i}"));
            std::thread::spawn(move || {
                // Texts until the last one: "end".
                let mut texts = Vec::new();
                loop {
                    let frame = client
                        .frame_within(Duration::from_secs(30))
                        .expect("a reader got every broadcast in time");
                    let (_, text) = admin_msg(&frame);
                    if text == "end" {
                        return (client, texts);
                    }
                    texts.push(text);
                }
            })
        })
        .collect();
    let padding = "p".repeat(30_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while admin.get_status("/clients/stuck") == 200 {
        assert!(
            Instant::now() < deadline,
            "not cut off after {sent} broadcasts of 30 KB"
        );
        admin.broadcast(&format!("{sent} {padding}"));
        sent += 1;
    }
    admin.broadcast("end");
    for reader in readers {
        let (mut client, texts) = reader.join().expect("reader thread");
        let expected: Vec<String> = (0..sent).map(|n| format!("{n} {padding}")).collect();
        assert!(texts == expected, "a reader got {} of {sent}", texts.len());
        client.send("<heartbeat mode=\"ping\" seq=\"1\"/>");
        assert_eq!(
            client.expect_frame(),
            "<heartbeat mode=\"pong\" seq=\"1\"/>"
        );
    }
    assert!(server
        .wait_log("offline id=stuck reason=slow-consumer", WAIT)
        .is_some());
    // What it had not read is still there, then the close.
    assert!(matches!(stuck.wait_closed(WAIT), Closed::Yes(_)));
}

/// 300 raw and 300 WebSocket clients (more than one slice) get the same
/// broadcasts, and a WebSocket client's push between them keeps its place.
#[test]
fn websocket_and_raw_clients_get_the_same_broadcasts() {
    let server = ServerProc::start(QUIET);
    let admin = Admin::new(&server);
    let mut raw = log_in_many(&server, "raw", 300);
    let mut web: Vec<(String, Ws)> = (0..300)
        .map(|i| {
            let id = format!("web{i:04}");
            let ws = Ws::login(&server, &id);
            (id, ws)
        })
        .collect();
    let one = admin.broadcast("one & <all>");
    let push = admin.push("web0299", "just you");
    let two = admin.broadcast("two");
    let escaped = "one &amp; &lt;all&gt;".to_string();
    for (id, client) in raw.iter_mut() {
        assert_eq!(
            admin_msg(&client.expect_frame()),
            (one.clone(), escaped.clone()),
            "{id}"
        );
        assert_eq!(
            admin_msg(&client.expect_frame()),
            (two.clone(), "two".into()),
            "{id}"
        );
    }
    for (id, ws) in web.iter_mut() {
        assert_eq!(
            admin_msg(&ws.expect_text()),
            (one.clone(), escaped.clone()),
            "{id}"
        );
        if id == "web0299" {
            assert_eq!(
                admin_msg(&ws.expect_text()),
                (push.clone(), "just you".into())
            );
        }
        assert_eq!(
            admin_msg(&ws.expect_text()),
            (two.clone(), "two".into()),
            "{id}"
        );
    }
}

/// TLS seals every frame for its own session, so a broadcast's shared frame
/// is sealed for each TLS client apart. 520 TLS clients (more than a slice)
/// get two broadcasts and, to the one that sorts last, a push posted
/// between them: each in order, readable, and the sessions still work.
#[test]
fn tls_clients_get_each_broadcast_sealed_for_their_own_session_in_order() {
    let pki = Pki::new();
    let mut env = pki.server_env();
    env.push(("LIFELINE_HEARTBEAT_MS", "60000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = ServerProc::start(&env);
    let admin = Admin::new(&server);
    // One config: later handshakes resume the first session (cheaper).
    let opts = ClientOpts::new(&pki).shared();
    let mut clients: Vec<(String, TlsClient)> = (0..520)
        .map(|i| {
            let id = format!("t{i:04}");
            let client = TlsClient::login(server.addr, &opts, &id);
            (id, client)
        })
        .collect();
    let one = admin.broadcast("one & <all>");
    let push = admin.push("t0519", "just you");
    let two = admin.broadcast("two");
    for (id, client) in clients.iter_mut() {
        assert_eq!(
            admin_msg(&client.expect_frame()),
            (one.clone(), "one &amp; &lt;all&gt;".to_string()),
            "{id}"
        );
        if id == "t0519" {
            assert_eq!(
                admin_msg(&client.expect_frame()),
                (push.clone(), "just you".to_string())
            );
        }
        assert_eq!(
            admin_msg(&client.expect_frame()),
            (two.clone(), "two".to_string()),
            "{id}"
        );
    }
    for (seq, i) in [0, 260, 519].into_iter().enumerate() {
        clients[i].1.ping(seq as u32);
    }
}

/// 200 broadcasts to 1,100 clients (three slices each) in one write: the
/// admin API takes them faster than they are sent, so once 64 wait, the
/// next are `503 busy`. Every accepted one reaches every client once and in
/// order, no refused one does, and once the queue drains a broadcast is
/// accepted again.
#[test]
fn a_broadcast_beyond_64_waiting_is_refused_busy_and_none_accepted_is_lost() {
    let server = ServerProc::start(QUIET);
    let admin = Admin::new(&server);
    let mut clients = log_in_many(&server, "b", 1100);
    let bodies: Vec<String> = (0..200).map(|i| format!("n{i}")).collect();
    let answers = pipelined_posts(server.admin.expect("admin"), "/broadcast", &bodies);
    let mut accepted = Vec::new();
    let mut busy = 0;
    for (body, (status, json)) in bodies.iter().zip(&answers) {
        match status {
            202 => {
                assert_eq!(json["recipients"], 1100, "{json}");
                let id = json["id"].as_str().expect("a push id").to_string();
                accepted.push((id, body.clone()));
            }
            503 => {
                assert_eq!(json["error"], "busy", "{json}");
                let detail = json["detail"].as_str().unwrap_or_default();
                assert!(detail.contains("64 broadcasts"), "{json}");
                busy += 1;
            }
            _ => panic!("POST /broadcast {body}: {status} {json}"),
        }
    }
    assert!(accepted.len() >= 64, "only {} accepted", accepted.len());
    assert!(busy > 0, "200 broadcasts in one write, none refused busy");
    let last = common::wait_for("a broadcast accepted again", WAIT, || {
        let (status, json) = admin.post("/broadcast", "last");
        (status == 202).then(|| json["id"].as_str().expect("a push id").to_string())
    });
    accepted.push((last, "last".to_string()));
    for (id, client) in clients.iter_mut() {
        let got: Vec<(String, String)> = accepted
            .iter()
            .map(|_| admin_msg(&client.expect_frame()))
            .collect();
        assert!(got == accepted, "client {id} got {got:?}");
    }
}

/// What a publisher learned of one broadcast it posted.
enum Posted {
    Accepted(String),
    Busy,
    /// No answer: the request met the hand-over (admin connections are not
    /// handed over); it may or may not have been accepted.
    Unknown,
}

/// Broadcasts posted one after another, before, during and after an
/// upgrade, to 1,200 clients (three slices each): the old process hands
/// over only once every broadcast it accepted was sent to everyone
/// (meanwhile new ones are `503 busy`), and the new one's broadcasts reach
/// every imported connection (their marks agree with its fresh count).
/// Every client gets every accepted broadcast once, in order, none refused,
/// and a push after the last broadcast still comes after it.
#[test]
fn broadcasts_around_an_upgrade_reach_everyone_once_in_order() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut server = Upgraded::start(QUIET);
    let mut clients = log_in_many(&server.first, "u", 1200);
    let (admin, upgraded, taken) = (
        server.admin,
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let publisher = {
        let (upgraded, taken) = (upgraded.clone(), taken.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let (mut posted, mut after) = (Vec::new(), 0);
            // Until ten more are accepted once the new process serves.
            while after < 10 && posted.len() < 3000 && Instant::now() < deadline {
                let text = format!("n{}", posted.len());
                let was_upgraded = upgraded.load(Ordering::SeqCst);
                let outcome = match http(admin, "POST", "/broadcast", &text) {
                    Ok((202, body)) => {
                        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                        taken.fetch_add(1, Ordering::SeqCst);
                        after += usize::from(was_upgraded);
                        Posted::Accepted(json["id"].as_str().unwrap().to_string())
                    }
                    Ok((503, body)) if body.contains("\"busy\"") => Posted::Busy,
                    Ok((status, body)) => panic!("POST /broadcast {text}: {status} {body}"),
                    Err(_) => Posted::Unknown,
                };
                posted.push((text, outcome));
            }
            posted
        })
    };
    common::wait_until("5 broadcasts accepted", WAIT, || {
        taken.load(Ordering::SeqCst) >= 5
    });
    let old_pid = server.first.pid();
    assert_ne!(server.upgrade(), old_pid);
    upgraded.store(true, Ordering::SeqCst);
    let posted = publisher.join().expect("the publisher");
    let accepted: Vec<(String, String)> = posted
        .iter()
        .filter_map(|(text, p)| match p {
            Posted::Accepted(id) => Some((id.clone(), text.clone())),
            _ => None,
        })
        .collect();
    let unknown: HashSet<&str> = posted
        .iter()
        .filter_map(|(text, p)| matches!(p, Posted::Unknown).then_some(text.as_str()))
        .collect();
    let busy = posted.iter().filter(|(_, p)| matches!(p, Posted::Busy));
    eprintln!(
        "{} posted: {} accepted, {} busy, {} unanswered",
        posted.len(),
        accepted.len(),
        busy.count(),
        unknown.len()
    );
    assert!(accepted.len() >= 15, "{} accepted", accepted.len());
    let last = server.post("/broadcast", None, "final");
    assert_eq!(last.status, 202, "{:?}", last.json);
    let push = server.push("u1199", "after final");
    for (id, client) in clients.iter_mut() {
        // Up to the final broadcast; an unanswered one may be among them, once.
        let mut got = Vec::new();
        let mut seen_unknown = HashSet::new();
        loop {
            let (mid, text) = admin_msg(&client.expect_frame());
            if text == "final" {
                assert_eq!(mid, last.id(), "{id}");
                break;
            }
            if unknown.contains(text.as_str()) {
                assert!(seen_unknown.insert(text.clone()), "{id} got {text} twice");
                continue;
            }
            got.push((mid, text));
        }
        assert!(got == accepted, "client {id} got {got:?}");
        if id == "u1199" {
            assert_eq!(
                admin_msg(&client.expect_frame()),
                (push.clone(), "after final".to_string())
            );
        }
    }
    assert_eq!(
        server.first.count_log("offline id="),
        0,
        "nobody went offline"
    );
}
