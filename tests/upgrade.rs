//! Upgrading without disconnecting (README, "Upgrading without
//! disconnecting"): `SIGUSR2` makes the running server hand every socket
//! and its state to a new process, here the same binary (an upgrade to
//! itself is still a full hand-over). Clients must see nothing: no bye, no
//! reconnect, every frame once and in order, heartbeats answered, deadlines
//! kept; `/healthz` names the new pid and the old process exits 0. A new
//! binary that fails leaves the old one serving every client.
//!
//! The old process is the test's child (its exit status is observable); the
//! new one is its child, then an orphan: [`Upgraded`] kills it by the pid
//! `/healthz` names, even when a test fails. Every wait polls with a deadline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{attr, poll_until, tcp_queues, wait_until, Client, Closed, ServerProc, WAIT};
use lifeline_wire::ws::{self, Opcode};

/// Heartbeat settings short enough to watch deadlines in a test.
const HEARTBEAT_MS: u64 = 300;
const MISSES: u64 = 4;
const DEADLINE_MS: u64 = HEARTBEAT_MS * MISSES;
const FAST: &[(&str, &str)] = &[
    ("LIFELINE_HEARTBEAT_MS", "300"),
    ("LIFELINE_MISSES", "4"),
    ("LIFELINE_TICK_MS", "2"),
];

// ---------------------------------------------------------------------------
// The server under test, followed across upgrades

/// The server as the test started it, and whichever process serves now.
struct Upgraded {
    first: ServerProc,
    admin: SocketAddr,
}

impl Upgraded {
    fn start(extra: &[(&str, &str)]) -> Upgraded {
        let env: Vec<(&str, &str)> = FAST.iter().chain(extra).copied().collect();
        let first = ServerProc::start(&env);
        let admin = first.admin.expect("admin API on");
        Upgraded { first, admin }
    }

    /// The pid `/healthz` names, if the admin API answers.
    fn serving_pid(&self) -> Option<u32> {
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
    fn upgrade(&mut self) -> u32 {
        let old = self.serving_pid().expect("a pid before the upgrade");
        signal(old, libc::SIGUSR2);
        wait_for_pid_change(self, old)
    }

    fn push(&self, id: &str, body: &str) -> String {
        let (status, reply) = http(self.admin, "POST", &format!("/clients/{id}/push"), body)
            .unwrap_or_else(|e| panic!("push to {id}: {e}"));
        assert_eq!(status, 202, "push to {id}: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        assert_eq!(v["status"], "sent", "push to {id}: {reply}");
        v["id"].as_str().expect("push id").to_string()
    }

    fn receipt_status(&self, push: &str) -> String {
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

fn wait_for_pid_change(server: &Upgraded, old: u32) -> u32 {
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

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started (or its server started).
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// One HTTP/1.1 request on a fresh connection (never a pooled one: the
/// process behind the port changes), `Connection: close`.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(WAIT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: lifeline\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {reply:?}")))?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// A server probe (`<heartbeat mode="ping">`): sent to any client silent
/// for an interval, so it may come between any two frames of these tests.
fn is_probe(frame: &str) -> bool {
    frame.starts_with("<heartbeat mode=\"ping\"")
}

/// The next frame that is not a probe.
fn next(c: &mut Client) -> String {
    loop {
        let frame = c.expect_frame();
        if !is_probe(&frame) {
            return frame;
        }
    }
}

fn ping(c: &mut Client, seq: u64) {
    c.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
    assert_eq!(next(c), format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>"));
}

// ---------------------------------------------------------------------------
// A small WebSocket client: masked frames out, the server's frames in

struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    fn connect(addr: SocketAddr) -> Ws {
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
    fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mask = std::array::from_fn(|_| fastrand::u8(..));
        ws::write_frame(&mut out, fin, opcode, Some(mask), payload);
        out
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    fn send_text(&mut self, text: &str) {
        self.send_raw(&Ws::frame(true, Opcode::Text, text.as_bytes()));
    }

    fn fill(&mut self, deadline: Instant) -> bool {
        matches!(
            common::fill(&mut self.stream, &mut self.buf, deadline),
            common::Fill::Data
        )
    }

    /// The next text message (one XML frame); WebSocket pings and pongs
    /// and server probes are skipped.
    fn expect_text(&mut self) -> String {
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
fn server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
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
fn small_window_login(addr: SocketAddr, id: &str) -> Client {
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
fn fill_server_queue(server: &Upgraded, slow: &Client) -> Vec<(String, String)> {
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
fn body(frame: &str) -> &str {
    let start = frame.find('>').map_or(0, |i| i + 1);
    let end = frame.rfind("</msg>").unwrap_or(frame.len());
    &frame[start..end]
}

/// A raw `GET /events` stream: (event name, id) of each event, in order.
struct Events {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Events {
    fn open(admin: SocketAddr, last_event_id: Option<u64>) -> Events {
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
    fn block(&mut self, find: impl Fn(&[u8]) -> Option<usize>) -> String {
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
    fn next(&mut self) -> (String, Option<u64>) {
        loop {
            let block = self.block(|b| b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2));
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_string)
            };
            if let Some(event) = field("event: ") {
                return (event, field("id: ").and_then(|id| id.parse().ok()));
            }
        }
    }

    /// Whether the server closed the stream within `WAIT`.
    fn closed(&mut self) -> bool {
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

// ---------------------------------------------------------------------------
// The hand-over

/// Raw and WebSocket clients in the middle of things: a frame cut in half
/// across the upgrade on each transport, pushes queued for a client that
/// reads slowly, a push acked after it. Every frame arrives once and in
/// order, heartbeats go on, nobody is told goodbye; a new pid serves and the
/// old process exited 0.
#[test]
fn clients_mid_conversation_see_nothing_of_an_upgrade() {
    // A long deadline: the slow reader is silent until the end.
    let mut server =
        Upgraded::start(&[("LIFELINE_HEARTBEAT_MS", "1000"), ("LIFELINE_MISSES", "10")]);
    let addr = server.first.addr;
    let old_pid = server.first.pid();
    let mut alice = server.first.login("alice");
    let mut bob = server.first.login("bob");
    let mut wendy = Ws::connect(addr);
    wendy.send_text("<login id=\"wendy\"/>");
    assert!(wendy.expect_text().starts_with("<welcome id=\"wendy\""));
    let mut slow = small_window_login(addr, "slow");
    alice.send("<msg to=\"bob\" id=\"m0\">before</msg>");
    assert_eq!(next(&mut bob), "<msg from=\"alice\" id=\"m0\">before</msg>");
    let acked_later = server.push("bob", "ack me later");
    let pushed_to_bob = next(&mut bob);
    assert_eq!(attr(&pushed_to_bob, "id").as_deref(), Some(&*acked_later));

    // Cut before the upgrade, each half read by the old process: a raw
    // frame; an XML frame across two WebSocket messages, the second of
    // which is itself cut inside its header.
    alice.send("<msg to=\"bob\" id=\"m1\">cut in ");
    alice.wait_read();
    wendy.send_text("<msg to=\"bob\" id=\"w1\">across two ");
    let second = Ws::frame(true, Opcode::Text, b"messages</msg>");
    wendy.send_raw(&second[..3]);
    assert!(common::wait_server_read(&wendy.stream, WAIT));
    let queued = fill_server_queue(&server, &slow);

    let new_pid = server.upgrade();
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        server.first.wait_exit(WAIT),
        Some(0),
        "the old process exits 0"
    );
    assert!(server
        .first
        .wait_log(&format!("pid {new_pid} took over"), WAIT)
        .is_some());

    // The second halves, read by the new process.
    alice.send("half</msg>");
    assert_eq!(
        next(&mut bob),
        "<msg from=\"alice\" id=\"m1\">cut in half</msg>"
    );
    wendy.send_raw(&second[3..]);
    assert_eq!(
        next(&mut bob),
        "<msg from=\"wendy\" id=\"w1\">across two messages</msg>"
    );
    // Heartbeats on both transports, and the conversation goes on.
    ping(&mut alice, 1);
    ping(&mut bob, 2);
    wendy.send_text("<heartbeat mode=\"ping\" seq=\"3\"/>");
    assert_eq!(wendy.expect_text(), "<heartbeat mode=\"pong\" seq=\"3\"/>");
    bob.send("<msg to=\"wendy\" id=\"m2\">after</msg>");
    assert_eq!(
        wendy.expect_text(),
        "<msg from=\"bob\" id=\"m2\">after</msg>"
    );

    // The slow reader gets every queued push once, in order, and then a
    // new one whose id follows theirs.
    for (id, text) in &queued {
        let frame = next(&mut slow);
        assert_eq!(attr(&frame, "id").as_deref(), Some(id.as_str()));
        assert_eq!(body(&frame), text);
    }
    let later = server.push("slow", "after the upgrade");
    let last_number = |id: &str| id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok());
    assert_eq!(
        last_number(&later),
        last_number(&queued[queued.len() - 1].0).map(|n| n + 1),
        "push ids go on: {later} after {:?}",
        queued.last()
    );
    assert_eq!(body(&next(&mut slow)), "after the upgrade");

    // A receipt from the old process records an ack the new one saw.
    assert_eq!(server.receipt_status(&acked_later), "sent");
    bob.send(&format!("<ack id=\"{acked_later}\"/>"));
    wait_until("the ack in the receipt", WAIT, || {
        server.receipt_status(&acked_later) == "acked"
    });
    assert_eq!(
        server.first.count_log("offline id="),
        0,
        "nobody went offline"
    );
}

/// Presence events go on across the upgrade: a consumer whose stream ended
/// with the old process resumes with Last-Event-ID and gets the very next
/// event, no `reset`. The upgrade here is `lifeline upgrade --pid`.
#[test]
fn presence_events_resume_after_an_upgrade_with_no_reset_and_no_gap() {
    let server = Upgraded::start(&[]);
    let mut events = Events::open(server.admin, None);
    let _ann = server.first.login("ann");
    let (event, seq) = events.next();
    assert_eq!(event, "online");
    let seq = seq.expect("an id on every event");

    let old = server.first.pid();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(["upgrade", "--pid", &old.to_string()])
        .output()
        .expect("run lifeline upgrade");
    assert!(
        out.status.success(),
        "lifeline upgrade: {out:?}; log: {:#?}",
        server.first.log_lines()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("pid {old} handed")));
    wait_for_pid_change(&server, old);
    assert!(events.closed(), "the old process's stream ends with it");

    let _ben = server.first.login("ben");
    let mut resumed = Events::open(server.admin, Some(seq));
    assert_eq!(resumed.next(), ("online".to_string(), Some(seq + 1)));
}

/// Deadlines are the ones the old process kept: a client silent since
/// before the upgrade is closed when its original deadline comes (not a
/// whole deadline after the upgrade), while one that heartbeats stays.
#[test]
fn a_silent_client_is_closed_at_its_original_deadline() {
    let mut server = Upgraded::start(&[]);
    let mut silent = server.first.login("silent");
    let logged_in = Instant::now();
    let mut chatty = server.first.login("chatty");
    // Half-way through the silent client's deadline.
    let halfway = logged_in + Duration::from_millis(DEADLINE_MS / 2);
    poll_until(WAIT, || (Instant::now() >= halfway).then_some(()));
    server.upgrade();
    ping(&mut chatty, 1);

    let Closed::Yes(frames) = silent.wait_closed(Duration::from_secs(5)) else {
        panic!("the silent client was never closed");
    };
    let closed_after = logged_in.elapsed();
    assert!(
        frames
            .last()
            .is_some_and(|f| f.starts_with("<bye reason=\"timeout\"")),
        "{frames:?}"
    );
    let deadline = Duration::from_millis(DEADLINE_MS);
    assert!(
        closed_after + Duration::from_millis(20) >= deadline,
        "closed {closed_after:?} after its last frame: before its deadline"
    );
    // One tick plus 50 ms is the protocol's bound; more slack for a busy
    // machine, and far less than the half deadline a fresh start would add.
    assert!(
        closed_after <= deadline + Duration::from_millis(250),
        "closed {closed_after:?} after its last frame, deadline {deadline:?}"
    );
    ping(&mut chatty, 2);
}

/// A heartbeat that arrives while the processes hand over (the old one has
/// stopped reading, the new one has not begun) is read by the new process
/// and counts, even though the client's deadline passed before it was read.
#[test]
fn a_heartbeat_sent_during_the_hand_over_is_honoured() {
    let mut server = Upgraded::start(&[("LIFELINE_TEST_UPGRADE", "pause-after-import=1500")]);
    let mut late = server.first.login("late");
    let logged_in = Instant::now();
    let old = server.first.pid();
    signal(old, libc::SIGUSR2);
    server
        .first
        .wait_log("pausing 1500 ms", WAIT)
        .expect("the new process holds the hand-over open");
    assert!(logged_in.elapsed() < Duration::from_millis(DEADLINE_MS - 200));
    late.send("<heartbeat mode=\"ping\" seq=\"9\"/>");
    wait_for_pid_change(&server, old);
    assert!(
        logged_in.elapsed() > Duration::from_millis(DEADLINE_MS),
        "the hand-over was to outlast the deadline"
    );
    // Probes the old process sent may come first; then the pong, no bye.
    let pong = loop {
        let frame = next(&mut late);
        if !frame.starts_with("<heartbeat mode=\"ping\"") {
            break frame;
        }
    };
    assert_eq!(pong, "<heartbeat mode=\"pong\" seq=\"9\"/>");
    ping(&mut late, 10);
    assert_eq!(server.first.wait_exit(WAIT), Some(0));
}

// ---------------------------------------------------------------------------
// Failed upgrades

/// Starts a server with `env`, begins a conversation, sends SIGUSR2 and
/// waits for the failure its log must give (`why`); then checks that the
/// same process serves every client as if nothing happened: the frame cut
/// across the attempt, heartbeats, messages, pushes. Returns the server.
fn a_failed_upgrade_changes_nothing(env: &[(&str, &str)], why: &str) -> Upgraded {
    let mut server = Upgraded::start(env);
    let pid = server.first.pid();
    let mut alice = server.first.login("alice");
    let mut bob = server.first.login("bob");
    let mut wendy = Ws::connect(server.first.addr);
    wendy.send_text("<login id=\"wendy\"/>");
    assert!(wendy.expect_text().starts_with("<welcome"));
    alice.send("<msg to=\"bob\" id=\"f1\">fail");
    alice.wait_read();

    signal(pid, libc::SIGUSR2);
    let failure = server
        .first
        .wait_log("upgrade failed: pid", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no failure logged: {:#?}", server.first.log_lines()));
    assert!(failure.contains(why), "{failure}");
    assert!(
        failure.contains(&format!("pid {pid} serves on")),
        "{failure}"
    );

    alice.send("over</msg>");
    assert_eq!(
        next(&mut bob),
        "<msg from=\"alice\" id=\"f1\">failover</msg>"
    );
    ping(&mut alice, 1);
    ping(&mut bob, 2);
    wendy.send_text("<heartbeat mode=\"ping\" seq=\"3\"/>");
    assert_eq!(wendy.expect_text(), "<heartbeat mode=\"pong\" seq=\"3\"/>");
    server.push("wendy", "still here");
    assert_eq!(body(&wendy.expect_text()), "still here");
    assert_eq!(server.serving_pid(), Some(pid));
    assert!(
        server.first.exited().is_none(),
        "the old process still runs"
    );
    assert_eq!(server.first.count_log("offline id="), 0);
    server
}

#[test]
fn a_new_binary_that_does_not_start_leaves_the_old_process_serving() {
    a_failed_upgrade_changes_nothing(&[("LIFELINE_UPGRADE_BIN", "/bin/false")], "exit status: 1");
}

#[test]
fn a_new_binary_that_exits_after_reading_the_state_leaves_the_old_process_serving() {
    a_failed_upgrade_changes_nothing(
        &[("LIFELINE_TEST_UPGRADE", "exit-after-import")],
        "exit status: 3",
    );
}

#[test]
fn a_state_version_the_new_binary_does_not_know_is_refused_and_changes_nothing() {
    a_failed_upgrade_changes_nothing(
        &[("LIFELINE_TEST_UPGRADE", "state-version=99")],
        "refused the state: state format version 99; this binary reads version 2 only (exit status: 1)",
    );
}

/// A new binary that never answers is stopped after LIFELINE_UPGRADE_TIMEOUT_MS;
/// a second SIGUSR2 meanwhile is ignored, with a log line.
#[test]
fn a_new_binary_that_hangs_is_given_up_and_a_second_sigusr2_is_ignored() {
    let script = std::env::temp_dir().join(format!("lifeline-hangs-{}.sh", std::process::id()));
    std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin = script.to_string_lossy().into_owned();
    let env = [
        ("LIFELINE_UPGRADE_BIN", bin.as_str()),
        ("LIFELINE_UPGRADE_TIMEOUT_MS", "1500"),
        // Longer than the wait: the client is not timed out meanwhile.
        ("LIFELINE_HEARTBEAT_MS", "1000"),
        ("LIFELINE_MISSES", "10"),
    ];
    let server = Upgraded::start(&env);
    let pid = server.first.pid();
    let mut alice = server.first.login("alice");
    signal(pid, libc::SIGUSR2);
    server
        .first
        .wait_log("upgrade: started", WAIT)
        .expect("the script started");
    signal(pid, libc::SIGUSR2);
    assert!(server
        .first
        .wait_log("SIGUSR2 ignored: the upgrade to pid", WAIT)
        .is_some());
    // Served while the new binary starts (or hangs).
    ping(&mut alice, 1);
    let failure = server
        .first
        .wait_log("upgrade failed", WAIT)
        .expect("given up");
    assert!(failure.contains("not ready within 1500 ms"), "{failure}");
    assert!(failure.contains("stopped"), "{failure}");
    ping(&mut alice, 2);
    assert_eq!(server.serving_pid(), Some(pid));
    let _ = std::fs::remove_file(&script);
}
