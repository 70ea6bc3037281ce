//! The WebSocket transport checked with an independent client library,
//! `tungstenite`, instead of the home-made client of `tests/websocket.rs`:
//! if the server and that client shared a misreading of RFC 6455, this is
//! where it would show. The real binary, real sockets; every wait polls with
//! a deadline.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Error, Message, WebSocket};

use common::{Closed, ServerProc, WAIT};

/// Short liveness settings so timeouts are observable in a test.
const FAST: &[(&str, &str)] = &[
    ("LIFELINE_HEARTBEAT_MS", "200"),
    ("LIFELINE_MISSES", "3"),
    ("LIFELINE_TICK_MS", "5"),
];

type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to the server offering the `lifeline.v1` subprotocol;
/// returns the socket and the subprotocol the server's 101 named.
fn open(addr: SocketAddr) -> (Ws, Option<String>) {
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("lifeline.v1"),
    );
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, response) = tungstenite::client(request, stream).expect("handshake");
    assert_eq!(response.status(), 101);
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    (ws, protocol)
}

/// Opens a WebSocket and logs in as `id`; panics unless welcomed.
fn login(addr: SocketAddr, id: &str) -> Ws {
    let (mut ws, _) = open(addr);
    send(&mut ws, &format!("<login id=\"{id}\"/>"));
    let welcome = expect_text(&mut ws);
    assert!(
        welcome.starts_with(&format!("<welcome id=\"{id}\"")),
        "expected welcome, got {welcome}"
    );
    ws
}

fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send");
}

/// How a read for the next message ended.
#[derive(Debug)]
enum Got {
    Msg(Message),
    /// The connection ended (after the close handshake, EOF or reset).
    Closed,
    Timeout,
}

fn next_within(ws: &mut Ws, timeout: Duration) -> Got {
    let deadline = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Got::Timeout;
        }
        ws.get_mut()
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .unwrap();
        match ws.read() {
            Ok(msg) => return Got::Msg(msg),
            Err(Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(Error::Io(e)) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Got::Closed,
        }
    }
}

/// The next message, which must be text.
fn expect_text(ws: &mut Ws) -> String {
    match next_within(ws, WAIT) {
        Got::Msg(Message::Text(t)) => t.as_str().to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Reads until the server's Close; returns the text messages before it and
/// the close code. Then checks the connection ends.
fn expect_close(ws: &mut Ws) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    loop {
        match next_within(ws, WAIT) {
            Got::Msg(Message::Text(t)) => texts.push(t.as_str().to_string()),
            Got::Msg(Message::Close(frame)) => {
                let code = frame.map(|f| u16::from(f.code));
                assert!(
                    matches!(next_within(ws, WAIT), Got::Closed),
                    "connection not ended after the Close"
                );
                return (texts, code);
            }
            other => panic!("expected a Close, got {other:?} after {texts:?}"),
        }
    }
}

fn raw_frame(payload: &str, opcode: Data, fin: bool) -> Message {
    Message::Frame(Frame::message(
        payload.as_bytes().to_vec(),
        OpCode::Data(opcode),
        fin,
    ))
}

#[test]
fn handshake_echoes_the_subprotocol_and_login_ping_work() {
    let server = ServerProc::start(&[]);
    let (mut ws, protocol) = open(server.addr);
    assert_eq!(protocol.as_deref(), Some("lifeline.v1"));
    send(&mut ws, "<login id=\"tung\"/>");
    let welcome = expect_text(&mut ws);
    assert!(welcome.starts_with("<welcome id=\"tung\""), "{welcome}");
    assert!(common::attr(&welcome, "interval").is_some(), "{welcome}");
    send(&mut ws, "<heartbeat mode=\"ping\" seq=\"7\"/>");
    assert_eq!(expect_text(&mut ws), "<heartbeat mode=\"pong\" seq=\"7\"/>");
    // Two frames in one message, each answered in its own message.
    send(
        &mut ws,
        "<heartbeat mode=\"ping\" seq=\"8\"/><heartbeat mode=\"ping\" seq=\"9\"/>",
    );
    assert_eq!(expect_text(&mut ws), "<heartbeat mode=\"pong\" seq=\"8\"/>");
    assert_eq!(expect_text(&mut ws), "<heartbeat mode=\"pong\" seq=\"9\"/>");
}

#[test]
fn messages_cross_between_websocket_and_raw_tcp() {
    let server = ServerProc::start(&[]);
    let mut ws = login(server.addr, "web");
    let mut raw = server.login("tcp");

    send(
        &mut ws,
        "<msg to=\"tcp\" id=\"a1\">héllo &amp; from ws</msg>",
    );
    assert_eq!(
        raw.expect_frame(),
        "<msg from=\"web\" id=\"a1\">héllo &amp; from ws</msg>"
    );

    raw.send("<msg to=\"web\" id=\"b1\">hello from tcp</msg>");
    assert_eq!(
        expect_text(&mut ws),
        "<msg from=\"tcp\" id=\"b1\">hello from tcp</msg>"
    );
}

#[test]
fn a_message_split_across_fragments_is_reassembled_around_a_ping() {
    let server = ServerProc::start(&[]);
    let (mut ws, _) = open(server.addr);
    ws.send(raw_frame("<log", Data::Text, false)).unwrap();
    ws.send(raw_frame("in id=\"fr", Data::Continue, false))
        .unwrap();
    // A control frame may come between the fragments of a message.
    ws.send(Message::Ping(b"mid".to_vec().into())).unwrap();
    ws.send(raw_frame("ag\"/>", Data::Continue, true)).unwrap();
    match next_within(&mut ws, WAIT) {
        Got::Msg(Message::Pong(p)) => assert_eq!(&p[..], b"mid"),
        other => panic!("expected the Pong, got {other:?}"),
    }
    let welcome = expect_text(&mut ws);
    assert!(welcome.starts_with("<welcome id=\"frag\""), "{welcome}");
}

#[test]
fn a_websocket_ping_is_answered_with_a_pong_of_the_same_payload() {
    let server = ServerProc::start(&[]);
    let mut ws = login(server.addr, "pinger");
    for payload in [&b""[..], b"x", &[0u8, 1, 2, 255, 254][..], &[b'p'; 125][..]] {
        ws.send(Message::Ping(payload.to_vec().into())).unwrap();
        match next_within(&mut ws, WAIT) {
            Got::Msg(Message::Pong(p)) => assert_eq!(&p[..], payload),
            other => panic!("expected a Pong, got {other:?}"),
        }
    }
}

#[test]
fn a_silent_websocket_client_is_closed_within_the_precision_window() {
    let server = ServerProc::start(FAST);
    let (mut ws, _) = open(server.addr);
    let sent = Instant::now();
    send(&mut ws, "<login id=\"silent\"/>");
    let mut texts = Vec::new();
    let mut bye_at = None;
    let (code, closed_at) = loop {
        match next_within(&mut ws, Duration::from_secs(5)) {
            Got::Msg(Message::Text(t)) => {
                if t.starts_with("<bye") {
                    bye_at = Some(sent.elapsed());
                }
                texts.push(t.as_str().to_string());
            }
            Got::Msg(Message::Close(frame)) => {
                let at = sent.elapsed();
                assert!(matches!(next_within(&mut ws, WAIT), Got::Closed));
                break (frame.map(|f| u16::from(f.code)), at);
            }
            other => panic!("unexpected {other:?} after {texts:?}"),
        }
    };
    // Deadline 3 × 200 ms after the last frame; no later than one tick + 50 ms.
    let bye_at = bye_at.expect("a bye before the Close");
    assert!(
        bye_at >= Duration::from_millis(600),
        "bye early: {bye_at:?}"
    );
    assert!(
        closed_at <= Duration::from_millis(655),
        "closed late: {closed_at:?}"
    );
    assert!(texts[0].starts_with("<welcome"), "{texts:?}");
    let bye = texts.last().unwrap();
    assert!(bye.starts_with("<bye reason=\"timeout\""), "{texts:?}");
    assert!(
        texts[1..texts.len() - 1]
            .iter()
            .all(|t| t.starts_with("<heartbeat mode=\"ping\"")),
        "{texts:?}"
    );
    assert!(matches!(code, Some(1000) | Some(1001)), "{code:?}");
    assert!(server
        .wait_log("offline id=silent reason=timeout", WAIT)
        .is_some());
}

#[test]
fn a_binary_message_is_closed_with_1003() {
    let server = ServerProc::start(&[]);
    let mut ws = login(server.addr, "bin");
    ws.send(Message::Binary(b"<heartbeat/>".to_vec().into()))
        .unwrap();
    let (_, code) = expect_close(&mut ws);
    assert_eq!(code, Some(u16::from(CloseCode::Unsupported)));
    assert_eq!(code, Some(1003));
}

#[test]
fn a_message_over_max_frame_is_closed_with_1009() {
    let server = ServerProc::start(&[("LIFELINE_MAX_FRAME", "1024")]);
    let mut ws = login(server.addr, "big");
    // Under the limit passes; over it closes.
    let ok = format!("<msg to=\"big\" id=\"s\">{}</msg>", "a".repeat(500));
    send(&mut ws, &ok);
    assert_eq!(
        expect_text(&mut ws),
        format!("<msg from=\"big\" id=\"s\">{}</msg>", "a".repeat(500))
    );
    let big = format!("<msg to=\"big\" id=\"b\">{}</msg>", "a".repeat(2000));
    // The server may close before it has read all of it: a send error is fine.
    let _ = ws.send(Message::text(big));
    let (_, code) = expect_close(&mut ws);
    assert_eq!(code, Some(1009));
}

#[test]
fn bye_is_answered_with_close_1000() {
    let server = ServerProc::start(&[]);
    let mut ws = login(server.addr, "leaving");
    send(&mut ws, "<bye/>");
    let (texts, code) = expect_close(&mut ws);
    assert!(
        texts.iter().all(|t| t.starts_with("<bye")),
        "unexpected texts before the Close: {texts:?}"
    );
    assert_eq!(code, Some(1000));
    assert!(server
        .wait_log("offline id=leaving reason=bye", WAIT)
        .is_some());
}

#[test]
fn sigterm_sends_bye_then_close_1001() {
    let mut server = ServerProc::start(&[]);
    let mut ws = login(server.addr, "stay");
    let mut raw = server.login("raw");
    server.signal(libc::SIGTERM);
    let (texts, code) = expect_close(&mut ws);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].starts_with("<bye reason=\"shutdown\""),
        "{texts:?}"
    );
    assert_eq!(code, Some(1001));
    match raw.wait_closed(WAIT) {
        Closed::Yes(frames) => assert!(frames[0].starts_with("<bye reason=\"shutdown\"")),
        Closed::Timeout => panic!("raw client not closed"),
    }
    assert_eq!(server.wait_exit(WAIT), Some(0));
}
