//! The upgrade tests' kit: the server followed across upgrades (by the pid
//! `/healthz` names), raw HTTP on fresh connections, a small WebSocket
//! client, a client that reads slowly, and a raw `/events` stream.
#![allow(dead_code)]
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{self, is_probe, poll_until, tcp_queues, Client, ServerProc, WAIT};
use lifeline_wire::ws::{self, Opcode};

/// Heartbeat settings short enough to watch deadlines in a test.
pub const HEARTBEAT_MS: u64 = 300;
pub const MISSES: u64 = 4;
pub const DEADLINE_MS: u64 = HEARTBEAT_MS * MISSES;
pub const FAST: &[(&str, &str)] = &[
    ("LIFELINE_HEARTBEAT_MS", "300"),
    ("LIFELINE_MISSES", "4"),
    ("LIFELINE_TICK_MS", "2"),
];

// ---------------------------------------------------------------------------
// The server under test, followed across upgrades

/// The server as the test started it, and whichever process serves now.
pub struct Upgraded {
    pub first: ServerProc,
    pub admin: SocketAddr,
}

impl Upgraded {
    pub fn start(extra: &[(&str, &str)]) -> Upgraded {
        let env: Vec<(&str, &str)> = FAST.iter().chain(extra).copied().collect();
        let first = ServerProc::start(&env);
        let admin = first.admin.expect("admin API on");
        Upgraded { first, admin }
    }

    /// The pid `/healthz` names, if the admin API answers.
    pub fn serving_pid(&self) -> Option<u32> {
        let (status, body) = http(self.admin, "GET", "/healthz", "").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        assert_eq!(
            (status, &v["status"]),
            (200, &serde_json::json!("ok")),
            "{body}"
        );
        v["pid"].as_u64().map(|pid| pid as u32)
    }

    /// Sends SIGUSR2 and waits until another process serves; its pid.
    pub fn upgrade(&mut self) -> u32 {
        let old = self.serving_pid().expect("a pid before the upgrade");
        signal(old, libc::SIGUSR2);
        wait_for_pid_change(self, old)
    }

    pub fn push(&self, id: &str, body: &str) -> String {
        let (status, reply) = http(self.admin, "POST", &format!("/clients/{id}/push"), body)
            .unwrap_or_else(|e| panic!("push to {id}: {e}"));
        assert_eq!(status, 202, "push to {id}: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        assert_eq!(v["status"], "sent", "push to {id}: {reply}");
        v["id"].as_str().expect("push id").to_string()
    }

    /// `POST path` with `body`, and `Idempotency-Key: key` when given.
    pub fn post(&self, path: &str, key: Option<&str>, body: &str) -> Answer {
        let header = key
            .map(|k| format!("Idempotency-Key: {k}\r\n"))
            .unwrap_or_default();
        let (status, head, reply) = exchange(self.admin, "POST", path, &header, body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let json = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        Answer { status, head, json }
    }

    /// A sample without labels of `GET /metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let (status, text) = http(self.admin, "GET", "/metrics", "").expect("GET /metrics");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// `GET /messages/{push}` as JSON.
    pub fn receipt(&self, push: &str) -> serde_json::Value {
        let (status, body) = http(self.admin, "GET", &format!("/messages/{push}"), "")
            .unwrap_or_else(|e| panic!("receipt of {push}: {e}"));
        assert_eq!(status, 200, "receipt of {push}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    pub fn receipt_status(&self, push: &str) -> String {
        let (status, body) = http(self.admin, "GET", &format!("/messages/{push}"), "")
            .unwrap_or_else(|e| panic!("receipt of {push}: {e}"));
        assert_eq!(status, 200, "receipt of {push}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["status"].as_str().expect("status").to_string()
    }
}

impl Drop for Upgraded {
    /// Kills the process serving now if the test's own child handed over
    /// to it (the child itself is killed by `ServerProc`).
    fn drop(&mut self) {
        if let Some(pid) = self.serving_pid().filter(|&pid| pid != self.first.pid()) {
            signal(pid, libc::SIGKILL);
        }
    }
}

pub fn wait_for_pid_change(server: &Upgraded, old: u32) -> u32 {
    poll_until(Duration::from_secs(10), || {
        server.serving_pid().filter(|&pid| pid != old)
    })
    .unwrap_or_else(|| {
        panic!(
            "no other pid serves after SIGUSR2; log: {:#?}",
            server.first.log_lines()
        )
    })
}

pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started (or its server started).
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// One HTTP/1.1 request on a fresh connection (never a pooled one: the
/// process behind the port changes), `Connection: close`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    exchange(addr, method, path, "", body).map(|(status, _, body)| (status, body))
}

/// As [`http`], with `headers` (each line ending in CRLF) added; gives the
/// status, the response head and the body.
pub fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: lifeline\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {reply:?}")))?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    Ok((status, head.to_string(), body.to_string()))
}

/// An admin API answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The status line and the headers.
    pub head: String,
    pub json: serde_json::Value,
}

impl Answer {
    pub fn replayed(&self) -> bool {
        self.head
            .to_ascii_lowercase()
            .contains("\r\nidempotent-replayed: true")
    }

    /// The push id it names.
    pub fn id(&self) -> String {
        self.json["id"].as_str().expect("a push id").to_string()
    }
}

/// The next frame that is not a probe.
pub fn next(c: &mut Client) -> String {
    c.next_non_probe()
}

pub fn ping(c: &mut Client, seq: u64) {
    c.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
    assert_eq!(next(c), format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>"));
}

// ---------------------------------------------------------------------------
// A small WebSocket client: masked frames out, the server's frames in

pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    pub fn connect(addr: SocketAddr) -> Ws {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
        };
        let deadline = Instant::now() + WAIT;
        let end = loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            assert!(ws.fill(deadline), "no handshake answer");
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws.buf.drain(..end);
        ws
    }

    /// A masked client frame.
    pub fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mask = std::array::from_fn(|_| fastrand::u8(..));
        ws::write_frame(&mut out, fin, opcode, Some(mask), payload);
        out
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_raw(&Ws::frame(true, Opcode::Text, text.as_bytes()));
    }

    pub fn fill(&mut self, deadline: Instant) -> bool {
        matches!(
            common::fill(&mut self.stream, &mut self.buf, deadline),
            common::Fill::Data
        )
    }

    /// The next text message (one XML frame); WebSocket pings and pongs
    /// and server probes are skipped.
    pub fn expect_text(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((opcode, payload, len)) = server_frame(&self.buf) {
                self.buf.drain(..len);
                match opcode {
                    1 => {
                        let text = String::from_utf8(payload).expect("UTF-8 text");
                        if !is_probe(&text) {
                            return text;
                        }
                    }
                    8 => panic!("the server closed the WebSocket: {payload:?}"),
                    _ => continue,
                }
            }
            assert!(self.fill(deadline), "no WebSocket message within {WAIT:?}");
        }
    }
}

/// An unmasked, final server frame at the front of `buf`: (opcode,
/// payload, bytes it took).
pub fn server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert_eq!(b0 & 0x80, 0x80, "the server sends only final frames");
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    let (len, at) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((b0 & 0x0f, payload, at + len))
}

// ---------------------------------------------------------------------------
// A client that reads slowly, so bytes stay queued inside the server

/// A raw connection with a small receive window and segment size, so the
/// kernel holds little for it and pushes pile up in the server's queue.
pub fn small_window_login(addr: SocketAddr, id: &str) -> Client {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_tcp_mss(536).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    let mut c = Client::from_stream(stream);
    c.send(&format!("<login id=\"{id}\"/>"));
    assert!(c.expect_frame().starts_with("<welcome"));
    c
}

/// Pushes to `slow` until more bytes were pushed than the kernel holds for
/// it (the server socket's send queue and the client's receive queue, both
/// from /proc/net/tcp): the rest waits in the server's own queue. Returns
/// each push's id and body, in order.
pub fn fill_server_queue(server: &Upgraded, slow: &Client) -> Vec<(String, String)> {
    let (ours, theirs) = (
        slow.stream.local_addr().unwrap(),
        slow.stream.peer_addr().unwrap(),
    );
    let mut pushed = Vec::new();
    let mut body_bytes = 0u64;
    for i in 0..100 {
        let body = format!("{i:03}:{}", "q".repeat(2000));
        body_bytes += body.len() as u64;
        pushed.push((server.push("slow", &body), body));
        let (in_server_kernel, _) = tcp_queues(theirs, ours).expect("server socket");
        let (_, in_client_kernel) = tcp_queues(ours, theirs).expect("client socket");
        if body_bytes > in_server_kernel + in_client_kernel + 16_384 {
            return pushed;
        }
    }
    panic!("the kernel took 200 KB for a 4 KiB window: nothing queued in the server");
}

/// The body of a `<msg ...>body</msg>` frame.
pub fn body(frame: &str) -> &str {
    let start = frame.find('>').map_or(0, |i| i + 1);
    let end = frame.rfind("</msg>").unwrap_or(frame.len());
    &frame[start..end]
}

/// A raw `GET /events` stream: (event name, id) of each event, in order.
pub struct Events {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Events {
    pub fn open(admin: SocketAddr, last_event_id: Option<u64>) -> Events {
        let mut stream = TcpStream::connect(admin).expect("connect");
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET /events HTTP/1.1\r\nHost: lifeline\r\n{resume}\r\n"
        )
        .unwrap();
        let mut events = Events {
            stream,
            buf: Vec::new(),
        };
        let head = events.block(|b| b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        events
    }

    /// The next text up to and including the end `find` reports.
    pub fn block(&mut self, find: impl Fn(&[u8]) -> Option<usize>) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(end) = find(&self.buf) {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end);
                return text;
            }
            match common::fill(&mut self.stream, &mut self.buf, deadline) {
                common::Fill::Data => {}
                other => panic!(
                    "event stream ended ({}) in {:?}",
                    matches!(other, common::Fill::Eof),
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// The next event (comments skipped): its name and `id:`.
    pub fn next(&mut self) -> (String, Option<u64>) {
        let (event, id, _) = self.next_with_data();
        (event, id)
    }

    /// The next event with its `data:` as JSON.
    pub fn next_with_data(&mut self) -> (String, Option<u64>, serde_json::Value) {
        loop {
            let block = self.block(|b| b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2));
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_string)
            };
            if let Some(event) = field("event: ") {
                let data = field("data: ")
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or_default();
                return (event, field("id: ").and_then(|id| id.parse().ok()), data);
            }
        }
    }

    /// Whether the server closed the stream within `WAIT`.
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            match common::fill(&mut self.stream, &mut self.buf, deadline) {
                common::Fill::Data => {}
                common::Fill::Eof => return true,
                common::Fill::Timeout => return false,
            }
        }
    }
}
