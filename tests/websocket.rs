//! The WebSocket transport (PROTOCOL.md, "WebSocket transport (same port)")
//! from outside: the real binary, real sockets, and a small blocking
//! WebSocket client written here on top of the codec's frame writer (client
//! frames are masked) and header reader (server frames are checked to be
//! unmasked, final, and to carry exactly one XML frame per text message).
//!
//! Every wait polls with a deadline; nothing sleeps and hopes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lifeline_wire::ws::{self, Opcode};
use sha1::Digest as _;

use common::{attr, first_element_len, poll_until, Closed, ServerProc, WAIT};

/// Short liveness settings so timeouts are observable in a test.
const FAST: &[(&str, &str)] = &[
    ("LIFELINE_HEARTBEAT_MS", "200"),
    ("LIFELINE_MISSES", "3"),
    ("LIFELINE_TICK_MS", "5"),
];

// ---------------------------------------------------------------------------
// A blocking WebSocket client

/// One thing the server sent, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    /// A final text message; checked to hold exactly one XML element.
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// How a read for the next message ended.
#[derive(Debug)]
enum Got {
    Msg(Msg),
    Eof,
    Timeout,
}

/// An HTTP response head (and body, for responses that end the connection).
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Ws {
    stream: TcpStream,
    /// Server bytes not yet taken as messages.
    buf: Vec<u8>,
    /// The 101's `Sec-WebSocket-Protocol`, if any.
    protocol: Option<String>,
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64.
fn random_key() -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// RFC 6455 §4.2.2, computed here rather than with the server's own code.
fn expected_accept(key: &str) -> String {
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

fn upgrade_request(path: &str, key: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\nOrigin: http://localhost\r\n{extra}\r\n"
    )
}

/// A masked client frame with a fresh random masking key.
fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ws::write_frame(
        &mut out,
        fin,
        opcode,
        Some(std::array::from_fn(|_| fastrand::u8(..))),
        payload,
    );
    out
}

fn text(payload: &str) -> Vec<u8> {
    frame(true, Opcode::Text, payload.as_bytes())
}

/// Panics unless `text` is exactly one complete top-level XML element.
fn assert_one_element(text: &str) {
    assert!(text.starts_with('<'), "text message {text:?}");
    let len = first_element_len(text)
        .unwrap_or_else(|| panic!("text message is not one whole element: {text:?}"));
    assert_eq!(
        len,
        text.len(),
        "text message carries more than one element: {text:?}"
    );
}

/// One read into `buf` before the deadline: `Ok(true)` data, `Ok(false)`
/// EOF or reset, `Err(())` timeout.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<bool, ()> {
    let now = Instant::now();
    if now >= deadline {
        return Err(());
    }
    stream
        .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
        .unwrap();
    let mut chunk = [0u8; 16384];
    match stream.read(&mut chunk) {
        Ok(0) => Ok(false),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(true)
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(()),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
        Err(_) => Ok(false), // a reset counts as closed
    }
}

/// Splits an HTTP response head off the front of `buf`, if complete.
fn take_head(buf: &mut Vec<u8>) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
    buf.drain(..end);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts.next().unwrap().parse().expect("status code");
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Some(Response {
        status,
        headers,
        body: Vec::new(),
    })
}

/// Sends `request` on a fresh connection and reads the response to the end:
/// the server answers plain requests and refusals, then closes.
fn http(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    loop {
        match fill(&mut stream, &mut buf, deadline) {
            Ok(true) => {}
            Ok(false) => break,
            Err(()) => panic!("the server did not close after answering; got {buf:?}"),
        }
    }
    let mut response = take_head(&mut buf).expect("a complete response head");
    let len: usize = response
        .header("Content-Length")
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(buf.len(), len, "body length vs Content-Length");
    response.body = buf;
    response
}

impl Ws {
    /// Opens a WebSocket; `protocols` is the `Sec-WebSocket-Protocol` offered.
    /// Checks the 101 and its `Sec-WebSocket-Accept`.
    fn open(addr: SocketAddr, protocols: Option<&str>) -> Ws {
        Ws::open_with(addr, "/", protocols, &[])
    }

    /// As `open`, with `early` bytes (frames) sent in the same write as the
    /// request, before the 101 has been seen.
    fn open_with(addr: SocketAddr, path: &str, protocols: Option<&str>, early: &[u8]) -> Ws {
        let key = random_key();
        let extra = protocols.map_or(String::new(), |p| {
            format!("Sec-WebSocket-Protocol: {p}\r\n")
        });
        let mut request = upgrade_request(path, &key, &extra).into_bytes();
        request.extend_from_slice(early);
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.write_all(&request).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut buf = Vec::new();
        let head = loop {
            if let Some(head) = take_head(&mut buf) {
                break head;
            }
            match fill(&mut stream, &mut buf, deadline) {
                Ok(true) => {}
                _ => panic!("no complete 101 within {WAIT:?}; got {buf:?}"),
            }
        };
        assert_eq!(head.status, 101, "{head:?}");
        assert!(head
            .header("Upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
        assert!(head
            .header("Connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
        assert_eq!(
            head.header("Sec-WebSocket-Accept"),
            Some(expected_accept(&key).as_str()),
            "{head:?}"
        );
        Ws {
            stream,
            buf,
            protocol: head.header("Sec-WebSocket-Protocol").map(str::to_string),
        }
    }

    /// Opens a WebSocket (offering `lifeline.v1`) and logs in as `id`.
    fn login(server: &ServerProc, id: &str) -> Ws {
        let mut ws = Ws::open(server.addr, Some("lifeline.v1"));
        ws.send_text(&format!("<login id=\"{id}\"/>"));
        let welcome = ws.expect_text();
        assert!(
            welcome.starts_with(&format!("<welcome id=\"{id}\"")),
            "expected welcome, got {welcome}"
        );
        ws
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    fn send_text(&mut self, payload: &str) {
        self.send_raw(&text(payload));
    }

    fn send_frame(&mut self, fin: bool, opcode: Opcode, payload: &[u8]) {
        self.send_raw(&frame(fin, opcode, payload));
    }

    /// One whole server frame off the front of the buffer, checked.
    fn take(&mut self) -> Option<Msg> {
        let header = ws::decode_header(&self.buf)
            .unwrap_or_else(|e| panic!("bad server frame header: {e}; bytes {:?}", self.buf))?;
        assert_eq!(header.mask, None, "server frames are unmasked");
        let end = header.header_len + header.payload_len as usize;
        if self.buf.len() < end {
            return None;
        }
        let payload = self.buf[header.header_len..end].to_vec();
        self.buf.drain(..end);
        Some(match header.opcode {
            Opcode::Text => {
                assert!(header.fin, "the server fragmented a text message");
                let text = String::from_utf8(payload).expect("server text is UTF-8");
                assert_one_element(&text);
                Msg::Text(text)
            }
            Opcode::Ping => Msg::Ping(payload),
            Opcode::Pong => Msg::Pong(payload),
            Opcode::Close => match payload.as_slice() {
                [] => Msg::Close(None, String::new()),
                [hi, lo, reason @ ..] => Msg::Close(
                    Some(u16::from_be_bytes([*hi, *lo])),
                    String::from_utf8(reason.to_vec()).expect("close reason is UTF-8"),
                ),
                [_] => panic!("a close frame with a 1-byte payload"),
            },
            other => panic!("unexpected server frame {other:?}"),
        })
    }

    fn next_until(&mut self, deadline: Instant) -> Got {
        loop {
            if let Some(msg) = self.take() {
                return Got::Msg(msg);
            }
            match fill(&mut self.stream, &mut self.buf, deadline) {
                Ok(true) => {}
                Ok(false) => {
                    assert!(self.buf.is_empty(), "EOF inside a frame: {:?}", self.buf);
                    return Got::Eof;
                }
                Err(()) => return Got::Timeout,
            }
        }
    }

    fn next_within(&mut self, timeout: Duration) -> Got {
        self.next_until(Instant::now() + timeout)
    }

    /// The next message, which must be a text message.
    fn expect_text(&mut self) -> String {
        match self.next_within(WAIT) {
            Got::Msg(Msg::Text(t)) => t,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    fn expect(&mut self) -> Msg {
        match self.next_within(WAIT) {
            Got::Msg(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until the server closes the TCP connection; the messages that
    /// came before, or `None` if it stayed open past `timeout`.
    fn wait_closed(&mut self, timeout: Duration) -> Option<Vec<Msg>> {
        let deadline = Instant::now() + timeout;
        let mut msgs = Vec::new();
        loop {
            match self.next_until(deadline) {
                Got::Msg(m) => msgs.push(m),
                Got::Eof => return Some(msgs),
                Got::Timeout => return None,
            }
        }
    }

    /// Waits for the close and returns what came before the Close frame,
    /// which must be the last message; panics on anything else.
    fn expect_close(&mut self, what: &str) -> (Vec<Msg>, Option<u16>) {
        let msgs = self
            .wait_closed(WAIT)
            .unwrap_or_else(|| panic!("{what}: the server did not close"));
        match msgs.split_last() {
            Some((Msg::Close(code, _), before)) => (before.to_vec(), *code),
            _ => panic!("{what}: expected a Close frame last, got {msgs:?}"),
        }
    }
}

/// A raw client's ping/pong round trip with `seq`: the bystander check.
fn raw_round_trip(c: &mut common::Client, seq: u64) {
    c.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
    assert_eq!(
        c.expect_frame(),
        format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>")
    );
}

/// `GET path` on the admin API; the JSON body.
fn admin_get(server: &ServerProc, path: &str) -> (u16, serde_json::Value) {
    let addr = server.admin.expect("admin API enabled");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).expect("connect admin");
    stream.write_all(request.as_bytes()).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    let head = loop {
        if let Some(head) = take_head(&mut buf) {
            break head;
        }
        assert_eq!(
            fill(&mut stream, &mut buf, deadline),
            Ok(true),
            "admin head"
        );
    };
    let len: usize = head.header("Content-Length").unwrap().parse().unwrap();
    while buf.len() < len {
        assert_eq!(
            fill(&mut stream, &mut buf, deadline),
            Ok(true),
            "admin body"
        );
    }
    (
        head.status,
        serde_json::from_slice(&buf[..len]).expect("JSON body"),
    )
}

// ---------------------------------------------------------------------------
// Handshake and plain requests

#[test]
fn upgrade_echoes_the_subprotocol_only_when_offered() {
    let server = ServerProc::start(&[]);
    for (offered, echoed) in [
        (Some("lifeline.v1"), Some("lifeline.v1")),
        (Some("chat, lifeline.v1"), Some("lifeline.v1")),
        (Some("chat"), None),
        (Some("LIFELINE.V1"), None), // subprotocols are case-sensitive
        (None, None),
    ] {
        let mut ws = Ws::open(server.addr, offered);
        assert_eq!(ws.protocol.as_deref(), echoed, "offered {offered:?}");
        // Upgraded either way: the XML stream works.
        ws.send_text("<heartbeat mode=\"ping\" seq=\"3\"/>");
        assert_eq!(ws.expect_text(), "<heartbeat mode=\"pong\" seq=\"3\"/>");
    }
    // Any path upgrades (proxies rewrite paths), and frames sent with the
    // request, before the 101 came back, are served.
    let mut early = text("<login id=\"early\"/>");
    early.extend(text("<heartbeat mode=\"ping\" seq=\"9\"/>"));
    let mut ws = Ws::open_with(server.addr, "/some/where?x=1", None, &early);
    assert!(ws.expect_text().starts_with("<welcome id=\"early\""));
    assert_eq!(ws.expect_text(), "<heartbeat mode=\"pong\" seq=\"9\"/>");
}

#[test]
fn refused_requests_get_their_status_and_are_closed() {
    let server = ServerProc::start(&[]);
    let key = random_key();

    let bad_version = upgrade_request("/", &key, "")
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let r = http(server.addr, bad_version.as_bytes());
    assert_eq!(r.status, 426, "{r:?}");
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"), "{r:?}");

    let post = upgrade_request("/", &key, "").replacen("GET", "POST", 1);
    let r = http(server.addr, post.as_bytes());
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("Allow"), Some("GET"), "{r:?}");
    let r = http(
        server.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405, "{r:?}");

    let r = http(server.addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 404, "{r:?}");

    // An upgrade without a key is malformed.
    let no_key =
        upgrade_request("/", &key, "").replace(&format!("Sec-WebSocket-Key: {key}\r\n"), "");
    let r = http(server.addr, no_key.as_bytes());
    assert_eq!(r.status, 400, "{r:?}");

    // The raw XML stream on the same port is unaffected.
    let mut raw = server.login("raw");
    raw_round_trip(&mut raw, 1);
}

#[test]
fn plain_gets_serve_the_demo_page_and_the_browser_client() {
    let server = ServerProc::start(&[]);
    for path in ["/", "/?from=test", "/index.html"] {
        let r = http(
            server.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            r.header("Content-Type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{r:?}"
        );
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.contains("<html"), "{path}");
        assert!(
            body.contains("import { LifelineClient } from './lifeline.js'"),
            "{path}: the demo page loads the client"
        );
    }
    let r = http(server.addr, b"GET /lifeline.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/javascript")),
        "{r:?}"
    );
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.contains("export class LifelineClient"));
    assert!(body.contains("lifeline.v1"));
}

/// A connection whose first bytes began an HTTP request is not a raw XML
/// stream (PROTOCOL.md: only a first non-whitespace `<` is): held to the
/// same deadline, it must not be sent XML probes or a raw `<bye>` where an
/// HTTP response belongs, neither at its timeout nor at shutdown.
#[test]
fn a_stalled_http_request_is_never_sent_raw_xml() {
    let mut server = ServerProc::start(FAST);
    let read_to_end = |stream: &mut TcpStream| {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while fill(stream, &mut got, deadline).expect("closed in time") {}
        String::from_utf8_lossy(&got).into_owned()
    };
    let http_or_nothing = |got: &str| got.is_empty() || got.starts_with("HTTP/1.1 ");

    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .unwrap();
    let got = read_to_end(&mut stalled);
    assert!(
        http_or_nothing(&got),
        "a request cut off at its deadline was answered with {got:?}"
    );

    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.write_all(b"GET /lifeline.js HTTP/1.1\r\n").unwrap();
    // The request is being read before the signal: a page round trip on
    // another connection orders it.
    let page = http(server.addr, b"GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(page.status, 404);
    server.signal(libc::SIGTERM);
    let got = read_to_end(&mut stalled);
    assert!(
        http_or_nothing(&got),
        "a request cut off by shutdown was answered with {got:?}"
    );
    assert_eq!(server.wait_exit(WAIT), Some(0));
}

// ---------------------------------------------------------------------------
// The XML stream in text messages

#[test]
fn the_xml_stream_rides_text_messages_however_they_are_cut() {
    let server = ServerProc::start(FAST);
    let mut ws = Ws::open(server.addr, Some("lifeline.v1"));
    ws.send_text("<login id=\"wsa\"/>");
    let welcome = ws.expect_text();
    assert_eq!(attr(&welcome, "id").as_deref(), Some("wsa"));
    assert_eq!(attr(&welcome, "interval").as_deref(), Some("200"));
    assert_eq!(attr(&welcome, "misses").as_deref(), Some("3"));

    ws.send_text("<heartbeat mode=\"ping\" seq=\"41\"/>");
    assert_eq!(ws.expect_text(), "<heartbeat mode=\"pong\" seq=\"41\"/>");

    // Several frames in one message: one text message per reply.
    ws.send_text(
        "<heartbeat mode=\"ping\" seq=\"1\"/><heartbeat mode=\"ping\" seq=\"2\"/>\n\
         <heartbeat mode='ping' seq='3'></heartbeat> <nope/>",
    );
    for seq in 1..=3 {
        assert_eq!(
            ws.expect_text(),
            format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>")
        );
    }
    let unknown = ws.expect_text();
    assert!(
        unknown.starts_with("<error code=\"unknown-frame\" ref=\"nope\""),
        "{unknown}"
    );

    // One frame across three messages (the stream is their concatenation).
    ws.send_text("<heartbeat mo");
    ws.send_text("de=\"ping\" se");
    ws.send_text("q=\"4\"/><heartbeat mode=\"ping\" seq=\"5");
    ws.send_text("\"/>");
    assert_eq!(ws.expect_text(), "<heartbeat mode=\"pong\" seq=\"4\"/>");
    assert_eq!(ws.expect_text(), "<heartbeat mode=\"pong\" seq=\"5\"/>");

    // One frame across a fragmented message, a Ping between fragments, and
    // the fragments' frames written one byte at a time.
    let mut bytes = frame(false, Opcode::Text, b"<heartbeat mo");
    bytes.extend(frame(true, Opcode::Ping, b"mid"));
    bytes.extend(frame(false, Opcode::Continuation, b""));
    bytes.extend(frame(false, Opcode::Continuation, b"de=\"ping\" se"));
    bytes.extend(frame(true, Opcode::Continuation, b"q=\"6\"/>"));
    for b in &bytes {
        ws.send_raw(std::slice::from_ref(b));
    }
    assert_eq!(ws.expect(), Msg::Pong(b"mid".to_vec()));
    assert_eq!(ws.expect_text(), "<heartbeat mode=\"pong\" seq=\"6\"/>");

    // A frame to oneself, a character cut between fragments and a frame
    // cut between messages: delivered byte for byte.
    let body = "h\u{e9}llo \u{1F600} &amp; &lt;x&gt;";
    let whole = format!("<msg to=\"wsa\" id=\"self\">{body}</msg>");
    let cut = whole.find('\u{1F600}').unwrap() + 2;
    let mut bytes = frame(false, Opcode::Text, &whole.as_bytes()[..cut]);
    bytes.extend(frame(true, Opcode::Continuation, &whole.as_bytes()[cut..]));
    ws.send_raw(&bytes);
    assert_eq!(
        ws.expect_text(),
        format!("<msg from=\"wsa\" id=\"self\">{body}</msg>")
    );
    // Last: the client is silent while the log is awaited, and a probe
    // could otherwise come before any reply awaited above.
    assert!(server.wait_log("online id=wsa", WAIT).is_some());
}

#[test]
fn messages_cross_transports_byte_for_byte() {
    let server = ServerProc::start(&[]);
    let mut ws = Ws::login(&server, "w1");
    let mut raw = server.login("r1");
    let body = "a &lt; b &amp;&amp; c &gt; d \u{e9}\u{1F600} &quot;q&quot;";

    ws.send_text(&format!("<msg to=\"r1\" id=\"m1\">{body}</msg>"));
    assert_eq!(
        raw.expect_frame(),
        format!("<msg from=\"w1\" id=\"m1\">{body}</msg>")
    );
    raw.send(&format!("<msg to=\"w1\" id=\"m2\">{body}</msg>"));
    assert_eq!(
        ws.expect_text(),
        format!("<msg from=\"r1\" id=\"m2\">{body}</msg>")
    );
    // WebSocket to WebSocket, and an ack back.
    let mut ws2 = Ws::login(&server, "w2");
    ws.send_text(&format!("<msg to=\"w2\" id=\"m3\">{body}</msg>"));
    assert_eq!(
        ws2.expect_text(),
        format!("<msg from=\"w1\" id=\"m3\">{body}</msg>")
    );
    ws2.send_text("<ack id=\"m3\"/><heartbeat mode=\"ping\" seq=\"1\"/>");
    assert_eq!(ws2.expect_text(), "<heartbeat mode=\"pong\" seq=\"1\"/>");
    // An offline recipient: the error goes back as a text message.
    ws.send_text("<msg to=\"nobody\" id=\"m4\">x</msg>");
    let error = ws.expect_text();
    assert!(
        error.starts_with("<error code=\"offline\" ref=\"m4\""),
        "{error}"
    );
}

#[test]
fn a_login_on_either_transport_replaces_the_other() {
    let server = ServerProc::start(&[]);

    // Raw replaces WebSocket.
    let mut ws = Ws::login(&server, "dup");
    let mut raw = server.login("dup");
    let (before, code) = ws.expect_close("replaced WebSocket");
    assert_eq!(
        before,
        [Msg::Text("<bye reason=\"replaced\"/>".to_string())],
        "a replaced WebSocket hears why, as a text message, before the Close"
    );
    assert!(matches!(code, Some(1000) | Some(4000..=4999)), "{code:?}");
    raw_round_trip(&mut raw, 7);
    raw.send("<msg to=\"dup\" id=\"s\">to myself</msg>");
    assert_eq!(
        raw.expect_frame(),
        "<msg from=\"dup\" id=\"s\">to myself</msg>"
    );

    // WebSocket replaces raw.
    let mut ws = Ws::login(&server, "dup");
    match raw.wait_closed(WAIT) {
        Closed::Yes(frames) => assert_eq!(frames, ["<bye reason=\"replaced\"/>"]),
        Closed::Timeout => panic!("the replaced raw client was not closed"),
    }
    ws.send_text("<msg to=\"dup\" id=\"t\">to myself</msg>");
    assert_eq!(
        ws.expect_text(),
        "<msg from=\"dup\" id=\"t\">to myself</msg>"
    );

    // WebSocket replaces WebSocket.
    let mut ws2 = Ws::login(&server, "dup");
    let (before, _) = ws.expect_close("replaced by a WebSocket");
    assert_eq!(
        before,
        [Msg::Text("<bye reason=\"replaced\"/>".to_string())]
    );
    ws2.send_text("<heartbeat mode=\"ping\" seq=\"2\"/>");
    assert_eq!(ws2.expect_text(), "<heartbeat mode=\"pong\" seq=\"2\"/>");
    // Each replaced connection is logged as such; dup itself stayed online.
    assert_eq!(
        server.wait_count("offline id=dup reason=replaced", 3, WAIT),
        3
    );
    assert_eq!(
        server.count_log("offline id=dup"),
        3,
        "{:?}",
        server.log_lines()
    );
}

// ---------------------------------------------------------------------------
// Liveness

#[test]
fn a_silent_websocket_client_is_probed_then_closed_within_the_window() {
    let server = ServerProc::start(FAST);
    let mut ws = Ws::open(server.addr, Some("lifeline.v1"));
    let sent = Instant::now();
    ws.send_text("<login id=\"quiet\"/>");
    let mut texts = Vec::new();
    let mut bye_at = None;
    let (code, closed_at) = loop {
        match ws.next_within(Duration::from_secs(5)) {
            Got::Msg(Msg::Text(t)) => {
                if t.starts_with("<bye") {
                    bye_at = Some(sent.elapsed());
                }
                texts.push(t);
            }
            Got::Msg(Msg::Close(code, _)) => {
                let at = sent.elapsed();
                assert!(matches!(ws.wait_closed(WAIT), Some(v) if v.is_empty()));
                break (code, at);
            }
            other => panic!("unexpected {other:?} after {texts:?}"),
        }
    };
    // Deadline 3 × 200 ms; window: no earlier, no later than one tick (5 ms) + 50 ms.
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
    assert_eq!(
        &texts[1..3],
        &[
            "<heartbeat mode=\"ping\" seq=\"1\"/>",
            "<heartbeat mode=\"ping\" seq=\"2\"/>",
        ]
    );
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert!(
        texts[3].starts_with("<bye reason=\"timeout\""),
        "{}",
        texts[3]
    );
    assert!(matches!(code, Some(1000) | Some(1001)), "{code:?}");
    assert!(server
        .wait_log("offline id=quiet reason=timeout", WAIT)
        .is_some());
}

#[test]
fn websocket_pings_and_pongs_alone_keep_a_client_alive() {
    let server = ServerProc::start(FAST);
    let mut pinger = Ws::login(&server, "pinger");
    let mut ponger = Ws::login(&server, "ponger");
    // The control: silent, so the deadline is real.
    let mut silent = Ws::login(&server, "silent");
    let start = Instant::now();
    let mut round = 0u8;
    // Two and a half deadlines (3 × 200 ms each) of control frames only.
    while start.elapsed() < Duration::from_millis(1500) {
        round = round.wrapping_add(1);
        let payload: Vec<u8> = match round % 3 {
            0 => Vec::new(),
            1 => vec![0, 0xff, round, b'<'],
            _ => vec![round; 125],
        };
        pinger.send_frame(true, Opcode::Ping, &payload);
        // Unsolicited Pongs are allowed (RFC 6455 §5.5.3) and count too.
        ponger.send_frame(true, Opcode::Pong, &payload);
        // A probe may come if the pacing slips past an interval; nothing else.
        loop {
            match pinger.expect() {
                Msg::Pong(p) => {
                    assert_eq!(p, payload, "the Pong carries the Ping's payload");
                    break;
                }
                Msg::Text(t) if t.starts_with("<heartbeat mode=\"ping\"") => {}
                other => panic!("pinger got {other:?}"),
            }
        }
        // Paces the loop; every check polls with a deadline.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server
            .wait_log("offline id=silent reason=timeout", WAIT)
            .is_some(),
        "the silent control client was not timed out"
    );
    let silent_msgs = silent.wait_closed(WAIT).expect("silent client closed");
    assert!(matches!(silent_msgs.last(), Some(Msg::Close(..))));
    assert_eq!(server.count_log("offline id=pinger"), 0);
    assert_eq!(server.count_log("offline id=ponger"), 0);
    for c in [&mut pinger, &mut ponger] {
        c.send_text("<heartbeat mode=\"ping\" seq=\"77\"/>");
        loop {
            match c.expect_text() {
                t if t == "<heartbeat mode=\"pong\" seq=\"77\"/>" => break,
                t if t.starts_with("<heartbeat mode=\"ping\"") => {}
                t => panic!("unexpected {t}"),
            }
        }
    }
}

/// PROTOCOL.md: a client `suspect` after two silent intervals is `online`
/// again "on any frame (event `alive`)", and on WebSocket a Ping control
/// frame counts for liveness like a frame does.
#[test]
fn a_suspect_websocket_client_is_online_again_after_a_ping() {
    let server = ServerProc::start(&[
        ("LIFELINE_HEARTBEAT_MS", "200"),
        ("LIFELINE_MISSES", "20"),
        ("LIFELINE_TICK_MS", "5"),
    ]);
    let mut ws = Ws::login(&server, "sus");
    let state = |server: &ServerProc| {
        let (status, body) = admin_get(server, "/clients/sus");
        assert_eq!(status, 200, "{body}");
        body["state"].as_str().unwrap().to_string()
    };
    let wait_state = |ws: &mut Ws, want: &str, nudge: &dyn Fn(&mut Ws)| {
        poll_until(Duration::from_secs(2), || {
            nudge(ws);
            (state(&server) == want).then_some(())
        })
        .is_some()
    };
    let silent = |_: &mut Ws| {};
    assert!(wait_state(&mut ws, "suspect", &silent), "never suspect");
    // The XML path: a heartbeat pong makes it online again (the control).
    let xml_pong = |ws: &mut Ws| ws.send_text("<heartbeat mode=\"pong\"/>");
    assert!(wait_state(&mut ws, "online", &xml_pong), "XML pong");
    assert!(
        wait_state(&mut ws, "suspect", &silent),
        "never suspect again"
    );
    // The WebSocket path: Ping control frames, answered, keep last_seen
    // fresh, so the client must not stay suspect.
    let ws_ping = |ws: &mut Ws| {
        ws.send_frame(true, Opcode::Ping, b"hi");
        loop {
            match ws.expect() {
                Msg::Pong(p) => break assert_eq!(p, b"hi"),
                Msg::Text(t) if t.starts_with("<heartbeat mode=\"ping\"") => {}
                other => panic!("{other:?}"),
            }
        }
    };
    let online = wait_state(&mut ws, "online", &ws_ping);
    let (_, body) = admin_get(&server, "/clients/sus");
    assert!(
        online,
        "a WebSocket client answering with Pings stays suspect: {body}"
    );
}

// ---------------------------------------------------------------------------
// Violations and closing

#[test]
fn violations_close_with_their_codes_while_a_raw_bystander_is_unaffected() {
    let server = ServerProc::start(&[("LIFELINE_MAX_FRAME", "1024")]);
    let mut bystander = server.login("bystander");
    let mut seq = 0;
    // A WebSocket client stalled in the middle of a frame for the whole test.
    let mut stalled = Ws::login(&server, "stalled");
    let mut payload = String::from("<heartbeat mode=\"ping\" seq=\"99\"/>");
    payload.push_str(&" ".repeat(1000 - payload.len()));
    let stalled_frame = text(&payload);
    stalled.send_raw(&stalled_frame[..100]);

    // The limit is inclusive: a 1024-byte message is served.
    let mut ws = Ws::login(&server, "limit");
    let mut exact = String::from("<heartbeat mode=\"ping\" seq=\"1024\"/>");
    exact.push_str(&" ".repeat(1024 - exact.len()));
    ws.send_text(&exact);
    assert_eq!(ws.expect_text(), "<heartbeat mode=\"pong\" seq=\"1024\"/>");

    let mut unmasked = Vec::new();
    ws::write_frame(
        &mut unmasked,
        true,
        Opcode::Text,
        None,
        b"<heartbeat mode=\"ping\"/>",
    );
    let mut bad_utf8_split = frame(false, Opcode::Text, b"<msg to=\"x\">\xf0\x9f");
    bad_utf8_split.extend(frame(true, Opcode::Continuation, b"\x28</msg>"));
    let mut too_big_fragmented = frame(false, Opcode::Text, &[b' '; 600]);
    too_big_fragmented.extend(frame(true, Opcode::Continuation, &[b' '; 600]));
    let mut too_big_many = frame(false, Opcode::Text, b"<msg to=\"x\">");
    for _ in 0..11 {
        too_big_many.extend(frame(false, Opcode::Continuation, &[b'a'; 100]));
    }
    let mut reserved_opcode = frame(true, Opcode::Text, b"x");
    reserved_opcode[0] = 0x83;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", unmasked, 1002),
        (
            "control over 125",
            frame(true, Opcode::Ping, &[7; 126]),
            1002,
        ),
        ("fragmented ping", frame(false, Opcode::Ping, b"x"), 1002),
        ("reserved opcode", reserved_opcode, 1002),
        (
            "lone continuation",
            frame(true, Opcode::Continuation, b"<a/>"),
            1002,
        ),
        (
            "binary",
            frame(true, Opcode::Binary, b"<heartbeat mode=\"ping\"/>"),
            1003,
        ),
        (
            "bad UTF-8",
            frame(true, Opcode::Text, b"<msg to=\"x\">\xff</msg>"),
            1007,
        ),
        ("bad UTF-8 across fragments", bad_utf8_split, 1007),
        (
            "over max_frame",
            frame(true, Opcode::Text, &[b' '; 1025]),
            1009,
        ),
        ("over max_frame, fragmented", too_big_fragmented, 1009),
        ("over max_frame, many fragments", too_big_many, 1009),
    ];
    for (i, (name, bytes, code)) in cases.into_iter().enumerate() {
        let id = format!("bad{i}");
        let mut ws = Ws::login(&server, &id);
        ws.send_raw(&bytes);
        let (before, got) = ws.expect_close(name);
        assert_eq!(before, [], "{name}: nothing before the Close");
        assert_eq!(got, Some(code), "{name}");
        assert!(
            server
                .wait_log(&format!("offline id={id} reason=error"), WAIT)
                .is_some(),
            "{name}: offline logged"
        );
        seq += 1;
        raw_round_trip(&mut bystander, seq);
    }
    // The stalled client is still there, and served once it finishes.
    stalled.send_raw(&stalled_frame[100..]);
    assert_eq!(
        stalled.expect_text(),
        "<heartbeat mode=\"pong\" seq=\"99\"/>"
    );
    seq += 1;
    raw_round_trip(&mut bystander, seq);
}

#[test]
fn client_close_bye_and_bad_xml_end_the_connection_with_their_codes() {
    let server = ServerProc::start(&[]);

    // A client Close is echoed (with its code), then the socket closes.
    let mut ws = Ws::login(&server, "closer");
    let mut payload = 3001u16.to_be_bytes().to_vec();
    payload.extend_from_slice("done \u{e9}".as_bytes());
    ws.send_frame(true, Opcode::Close, &payload);
    let (before, code) = ws.expect_close("client Close");
    assert_eq!(before, []);
    assert_eq!(code, Some(3001));
    assert!(server
        .wait_log("offline id=closer reason=closed", WAIT)
        .is_some());

    // An empty Close is answered with 1000.
    let mut ws = Ws::login(&server, "closer2");
    ws.send_frame(true, Opcode::Close, &[]);
    assert_eq!(ws.expect_close("empty Close"), (vec![], Some(1000)));

    // `<bye/>`: Close 1000, offline reason bye.
    let mut ws = Ws::login(&server, "leaver");
    ws.send_text("<bye/>");
    assert_eq!(ws.expect_close("bye"), (vec![], Some(1000)));
    assert!(server
        .wait_log("offline id=leaver reason=bye", WAIT)
        .is_some());

    // An XML protocol error: the error as a text message, then Close 1008.
    let mut ws = Ws::login(&server, "broken");
    ws.send_text("<heartbeat mode=\"ping\"></wrong>");
    let (before, code) = ws.expect_close("bad XML");
    assert!(
        matches!(before.as_slice(), [Msg::Text(t)] if t.starts_with("<error code=\"bad-frame\"")),
        "{before:?}"
    );
    assert_eq!(code, Some(1008));
}

#[test]
fn shutdown_says_bye_then_close_1001_and_exits_0() {
    let mut server = ServerProc::start(&[]);
    let mut ws = Ws::login(&server, "w");
    let mut unlogged = Ws::open(server.addr, None);
    unlogged.send_text("<heartbeat mode=\"ping\"/>");
    assert_eq!(unlogged.expect_text(), "<heartbeat mode=\"pong\"/>");
    let mut raw = server.login("r");
    server.signal(libc::SIGTERM);
    for (name, c) in [("logged in", &mut ws), ("not logged in", &mut unlogged)] {
        let (before, code) = c.expect_close(name);
        match before.as_slice() {
            [Msg::Text(bye)] => {
                assert!(bye.starts_with("<bye reason=\"shutdown\""), "{name}: {bye}")
            }
            other => panic!("{name}: expected the bye, got {other:?}"),
        }
        assert_eq!(code, Some(1001), "{name}");
    }
    match raw.wait_closed(WAIT) {
        Closed::Yes(frames) => {
            assert_eq!(frames.len(), 1, "{frames:?}");
            assert!(frames[0].starts_with("<bye reason=\"shutdown\""));
        }
        Closed::Timeout => panic!("raw client not closed"),
    }
    assert_eq!(server.wait_exit(WAIT), Some(0));
}

// ---------------------------------------------------------------------------
// Memory

/// Resident set size of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

/// RSS growth per idle logged-in connection over `n` connections opened by
/// `open` after `warm` warm-up ones, on a fresh server.
fn rss_per_connection<T>(n: usize, warm: usize, open: impl Fn(&ServerProc, usize) -> T) -> f64 {
    let server = ServerProc::start(&[("LIFELINE_HEARTBEAT_MS", "600000")]);
    let mut held: Vec<T> = (0..warm).map(|i| open(&server, i)).collect();
    let before = rss(server.pid());
    held.extend((warm..warm + n).map(|i| open(&server, i)));
    let after = rss(server.pid());
    // Everything still online: nothing was closed under the measurement.
    assert_eq!(server.count_log("offline"), 0);
    drop(held);
    (after as f64 - before as f64) / n as f64
}

#[test]
fn an_idle_websocket_connection_costs_about_what_a_raw_one_does() {
    const N: usize = 2000;
    const WARM: usize = 100;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let raw = rss_per_connection(N, WARM, |s, i| s.login(&format!("raw{i}")));
    let websocket = rss_per_connection(N, WARM, |s, i| {
        // The upgrade and the login in one write; the 101 and the welcome back.
        let login = text(&format!("<login id=\"ws{i}\"/>"));
        let mut ws = Ws::open_with(s.addr, "/", Some("lifeline.v1"), &login);
        assert!(ws.expect_text().starts_with("<welcome"));
        ws
    });
    println!(
        "server RSS per idle logged-in connection ({N} each): raw {raw:.0} B, \
         WebSocket {websocket:.0} B, difference {:.0} B",
        websocket - raw
    );
    assert!(
        websocket <= raw + 200.0,
        "WebSocket {websocket:.0} B vs raw {raw:.0} B per connection"
    );
}
