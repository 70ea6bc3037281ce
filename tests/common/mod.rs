//! Test harness: the real `lifeline` binary on a loopback port, and a plain
//! blocking client that speaks the protocol through a real socket.
//!
//! Every wait polls for its condition with a deadline; nothing sleeps and hopes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_xml::events::Event;
use quick_xml::Reader;

/// A `lifeline` process started for one test; killed (by its PID) when dropped,
/// so a failing test never leaves it behind.
pub struct ServerProc {
    child: Child,
    pub addr: SocketAddr,
    /// The admin API's address (None when a test disabled it).
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProc {
    /// Starts the binary on 127.0.0.1 with an OS-chosen port and the given
    /// environment, and waits for its "listening on" line.
    pub fn start(env: &[(&str, &str)]) -> ServerProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
        ServerProc::configure(&mut cmd, env);
        ServerProc::spawn(cmd)
    }

    /// A clean environment with loopback ports chosen by the OS (client and
    /// admin), info logs on a piped stderr, then `env` on top. For callers
    /// that run the server another way (a namespace, a lower rlimit).
    pub fn configure(cmd: &mut Command, env: &[(&str, &str)]) {
        cmd.env_clear()
            .env("LIFELINE_LISTEN", "127.0.0.1:0")
            .env("LIFELINE_ADMIN_ADDR", "127.0.0.1:0")
            .env("LIFELINE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
    }

    /// Runs a configured command, collects its log, and waits for the
    /// server's "listening on" line (and its admin address, when enabled).
    pub fn spawn(mut cmd: Command) -> ServerProc {
        let mut child = cmd.spawn().expect("spawn lifeline");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = ServerProc {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            admin: None,
            log,
        };
        let line = server
            .wait_log("listening on ", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("server did not start; log: {:?}", server.log_lines()));
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|a| a.trim().parse().ok())
            .expect("address in the listening line");
        server.addr = addr;
        // The admin line comes before the listening line when the API is on.
        server.admin = server
            .log_lines()
            .iter()
            .find_map(|l| l.split("admin API on http://").nth(1).map(str::to_string))
            .and_then(|a| a.trim().parse().ok());
        server
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        poll_until(timeout, || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
        })
    }

    /// Waits until `n` log lines contain `needle`; returns how many did.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> usize {
        poll_until(timeout, || {
            Some(self.count_log(needle)).filter(|&count| count >= n)
        })
        .unwrap_or_else(|| self.count_log(needle))
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child this harness started.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        poll_until(timeout, || self.child.try_wait().ok().flatten())?.code()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Connects and logs in as `id`; panics unless welcomed.
    pub fn login(&self, id: &str) -> Client {
        let mut c = self.connect();
        c.send(&format!("<login id=\"{id}\"/>"));
        let welcome = c.expect_frame();
        assert!(
            welcome.starts_with(&format!("<welcome id=\"{id}\"")),
            "expected welcome, got {welcome}"
        );
        c
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often the waits below look again.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// Polls `check` until it gives `Some`, which is returned, or `None` once
/// `timeout` has passed. Every wait in these tests is this loop: it looks
/// for the condition itself, never sleeps a fixed time and hopes.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Polls until `check` gives `Some`; panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls until `check` holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    wait_for(what, timeout, || check().then_some(()))
}

/// The send and receive queues, in bytes, of this network namespace's TCP
/// socket from `local` to `remote` (IPv4), as /proc/net/tcp shows them:
/// output the peer has not acknowledged, and input its owner has not read.
/// `None` when there is no such socket.
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: SocketAddr| match a {
        // The kernel prints the address as the native-endian u32 of its bytes.
        SocketAddr::V4(a) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        )),
        SocketAddr::V6(_) => None,
    };
    let (local, remote) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if *fields.get(1)? != local || *fields.get(2)? != remote {
            return None;
        }
        let (tx, rx) = fields.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// Waits until the server has read every byte written so far on `stream`
/// (a loopback connection): first none of it is unacknowledged on this side,
/// so all of it is in the server's socket; then, looked at afterwards, the
/// server's socket holds none of it unread. This is the evidence that bytes
/// written next reach the server in another read (a frame cut between reads).
/// False if that did not happen within `timeout`.
pub fn wait_server_read(stream: &TcpStream, timeout: Duration) -> bool {
    let ours = stream.local_addr().expect("local address");
    let theirs = stream.peer_addr().expect("peer address");
    poll_until(timeout, || {
        let (unacknowledged, _) = tcp_queues(ours, theirs)?;
        if unacknowledged > 0 {
            return None;
        }
        let (_, unread) = tcp_queues(theirs, ours)?;
        (unread == 0).then_some(())
    })
    .is_some()
}

/// A ureq agent for the server's admin API, and its base URL: statuses are
/// data, not errors, and every request is bounded in time.
pub fn admin_agent(server: &ServerProc, timeout: Duration) -> (String, ureq::Agent) {
    let addr = server.admin.expect("the admin API is on");
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build();
    (
        format!("http://{addr}"),
        ureq::Agent::new_with_config(config),
    )
}

/// How a wait for the server's close ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The server closed (EOF or reset); frames received before, in order.
    Yes(Vec<String>),
    Timeout,
}

/// A blocking protocol client over a real socket.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// A client on a socket connected some other way (socket options set
    /// before connecting).
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    /// Sends, reporting failure instead of panicking (for a peer the server may have closed).
    pub fn try_send(&mut self, text: &str) -> bool {
        self.stream.write_all(text.as_bytes()).is_ok()
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Waits until the server has read everything sent so far (see
    /// [`wait_server_read`]), so what is sent next comes in another read;
    /// panics after `WAIT`.
    pub fn wait_read(&self) {
        assert!(
            wait_server_read(&self.stream, WAIT),
            "the server did not read what was sent within {WAIT:?}"
        );
    }

    /// The next complete top-level frame within `WAIT`; panics otherwise.
    pub fn expect_frame(&mut self) -> String {
        self.frame_within(WAIT)
            .unwrap_or_else(|| panic!("no frame within {WAIT:?}"))
    }

    /// The next frame within `WAIT` that is not a server probe (see
    /// [`is_probe`]); panics otherwise. For a client that may sit silent for
    /// an interval while the test does other work.
    pub fn next_non_probe(&mut self) -> String {
        loop {
            let frame = self.expect_frame();
            if !is_probe(&frame) {
                return frame;
            }
        }
    }

    /// The next complete top-level frame, or `None` if none came in `timeout`
    /// (or the connection closed).
    pub fn frame_within(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof | Fill::Timeout => return None,
            }
        }
    }

    /// Reads until the server closes; returns the frames that came before.
    pub fn wait_closed(&mut self, timeout: Duration) -> Closed {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = self.take_frame() {
                frames.push(frame);
            }
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof => return Closed::Yes(frames),
                Fill::Timeout => return Closed::Timeout,
            }
        }
    }

    fn fill(&mut self, deadline: Instant) -> Fill {
        fill(&mut self.stream, &mut self.buf, deadline)
    }

    /// Splits one complete top-level element off the front of the buffer.
    fn take_frame(&mut self) -> Option<String> {
        let text = std::str::from_utf8(&self.buf).ok()?;
        let start = text.len() - text.trim_start().len();
        let end = start + first_element_len(&text[start..])?;
        let frame = text[start..end].to_string();
        self.buf.drain(..end);
        Some(frame)
    }
}

/// A server probe (`<heartbeat mode="ping">`): sent to any client silent
/// for an interval, so it may come between any two frames a test expects.
pub fn is_probe(frame: &str) -> bool {
    frame.starts_with("<heartbeat mode=\"ping\"")
}

/// The length of the complete top-level XML element `text` starts with;
/// `None` when it is cut short or malformed.
pub fn first_element_len(text: &str) -> Option<usize> {
    let mut reader = Reader::from_str(text);
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(_)) => depth += 1,
            Ok(Event::End(_)) => {
                depth -= 1;
                if depth == 0 {
                    return Some(reader.buffer_position() as usize);
                }
            }
            Ok(Event::Empty(_)) if depth == 0 => return Some(reader.buffer_position() as usize),
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// What one bounded read brought.
pub enum Fill {
    Data,
    Eof,
    Timeout,
}

/// One read from `stream` into `buf`, waiting no later than `deadline`; a
/// reset by the server counts as closed.
pub fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Fill {
    let now = Instant::now();
    if now >= deadline {
        return Fill::Timeout;
    }
    stream
        .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
        .unwrap();
    let mut chunk = [0u8; 65536];
    match stream.read(&mut chunk) {
        Ok(0) => Fill::Eof,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Fill::Data
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Fill::Timeout,
        Err(e) if e.kind() == ErrorKind::Interrupted => Fill::Data,
        Err(_) => Fill::Eof,
    }
}

/// The value of attribute `name` in a frame's start tag.
pub fn attr(frame: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = frame.find(&needle)? + needle.len();
    let len = frame[start..].find('"')?;
    Some(frame[start..start + len].to_string())
}
