//! Cluster test harness: a real `redis-server` on a free loopback port,
//! Lifeline nodes pointed at it, an admin client and an SSE reader. Every
//! process is killed by its own handle when dropped (a failing test leaves
//! nothing behind); every wait polls a condition with a deadline.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::ServerProc;

/// A `redis-server` started for one test.
pub struct RedisProc {
    child: Option<Child>,
    pub port: u16,
}

/// A port nobody listens on now (bound, then let go).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// Whether `redis-server` can be run here. Without it a cluster test says
/// SKIPPED and passes, so that `cargo test` works on a fresh machine; under
/// CI (env `CI` set), which installs it, its absence fails the test.
fn redis_installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed (.ci/run installs Debian's redis-server)"
        );
        println!("SKIPPED: redis-server not found (install Debian's redis-server)");
    }
    found
}

impl RedisProc {
    /// A fresh `redis-server` on a free port; `None` (after saying SKIPPED)
    /// where none is installed.
    pub fn start() -> Option<RedisProc> {
        redis_installed().then(|| RedisProc::start_on(free_port()))
    }

    /// Starts on `port` (a restart reuses its predecessor's) and waits
    /// until it answers PING.
    pub fn start_on(port: u16) -> RedisProc {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let redis = RedisProc {
            child: Some(child),
            port,
        };
        wait_for("redis-server answers PING", Duration::from_secs(10), || {
            (redis.try_command(&["PING"]).as_deref() == Some("+PONG")).then_some(())
        });
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One command, its reply's first line (`+OK`, `:3`, `$5`...), or
    /// `None` when Redis cannot be reached.
    pub fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        text.lines().next().map(str::to_string)
    }

    /// A bulk string reply's value (`None` for a nil reply).
    pub fn string(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis answers");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).expect("a reply");
            assert!(n > 0, "redis closed before replying");
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply).to_string();
            let Some((head, rest)) = text.split_once("\r\n") else {
                continue;
            };
            let len: i64 = head
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a bulk string reply: {head}"));
            if len < 0 {
                return None;
            }
            if rest.len() >= len as usize + 2 {
                return Some(rest[..len as usize].to_string());
            }
        }
    }

    /// An integer reply (`:N`).
    pub fn int(&self, args: &[&str]) -> i64 {
        let line = self.try_command(args).expect("redis answers");
        line.strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not an integer reply: {line}"))
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a node of the cluster at `redis_url` and waits until it has
/// joined (its commands and pub/sub connections are up).
pub fn node(redis_url: &str, id: &str, ttl_ms: u64, extra: &[(&str, &str)]) -> ServerProc {
    let ttl = ttl_ms.to_string();
    let mut env = vec![
        ("LIFELINE_REDIS_URL", redis_url),
        ("LIFELINE_NODE_ID", id),
        ("LIFELINE_NODE_TTL_MS", ttl.as_str()),
    ];
    env.extend_from_slice(extra);
    let server = ServerProc::start(&env);
    wait_joined(&server);
    server
}

/// Waits until a node's Redis connections are up.
pub fn wait_joined(server: &ServerProc) {
    for what in [
        "redis commands: connected",
        "redis pubsub: subscribed to ll:all",
        "re-asserting",
    ] {
        assert!(
            server.wait_log(what, Duration::from_secs(10)).is_some(),
            "node did not log {what:?}; log: {:?}",
            server.log_lines()
        );
    }
}

/// Polls `check` until it gives a value, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The admin API of one node.
pub struct Admin {
    base: String,
    agent: ureq::Agent,
}

impl Admin {
    pub fn new(server: &ServerProc) -> Admin {
        let (base, agent) = crate::common::admin_agent(server, Duration::from_secs(20));
        Admin { base, agent }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .call()
            .expect("admin GET");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let mut r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .send(body)
            .expect("admin POST");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A POST with `Idempotency-Key: key`: status, body, and whether the
    /// answer was a replay (`Idempotent-Replayed: true`).
    pub fn post_keyed(&self, path: &str, key: &str, body: &str) -> (u16, Value, bool) {
        let mut r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Idempotency-Key", key)
            .send(body)
            .expect("admin POST");
        let status = r.status().as_u16();
        let replayed = r
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes() == b"true");
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            replayed,
        )
    }

    pub fn delete(&self, path: &str) -> u16 {
        self.agent
            .delete(&format!("{}{path}", self.base))
            .call()
            .expect("admin DELETE")
            .status()
            .as_u16()
    }

    pub fn metrics(&self) -> String {
        let mut r = self
            .agent
            .get(&format!("{}/metrics", self.base))
            .call()
            .expect("metrics");
        r.body_mut().read_to_string().unwrap_or_default()
    }

    /// A gauge or counter's value in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Every id online in the cluster as this node sees it (all pages),
    /// with the node each is on.
    pub fn online(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let path = if after.is_empty() {
                "/clients?limit=2".to_string()
            } else {
                format!("/clients?limit=2&after={after}")
            };
            let (status, page) = self.get(&path);
            assert_eq!(status, 200, "{page}");
            for c in page["clients"].as_array().expect("clients") {
                out.push((
                    c["id"].as_str().unwrap_or_default().to_string(),
                    c["node"].as_str().unwrap_or_default().to_string(),
                ));
            }
            match page["next"].as_str() {
                Some(next) => after = next.to_string(),
                None => return out,
            }
        }
    }
}

/// A presence event stream (SSE) on one node.
pub struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub kind: String,
    pub data: Value,
}

impl Sse {
    pub fn open(server: &ServerProc, last_event_id: Option<&str>) -> Sse {
        let addr: SocketAddr = server.admin.expect("admin API on");
        let mut stream = TcpStream::connect(addr).expect("connect admin");
        let extra = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        stream
            .write_all(format!("GET /events HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
            .unwrap();
        let mut sse = Sse {
            stream,
            buf: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&sse.buf).contains("\r\n\r\n") {
            assert!(Instant::now() < deadline, "no SSE head");
            sse.fill(deadline);
        }
        let text = String::from_utf8_lossy(&sse.buf).to_string();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let end = text.find("\r\n\r\n").unwrap() + 4;
        sse.buf.drain(..end);
        sse
    }

    fn fill(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 16384];
        if let Ok(n) = self.stream.read(&mut chunk) {
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event (comments skipped), within `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = String::from_utf8_lossy(&self.buf).to_string();
            if let Some(end) = text.find("\n\n") {
                self.buf.drain(..end + 2);
                let block = &text[..end];
                if block.starts_with(':') {
                    continue;
                }
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(str::to_string))
                };
                return Some(Event {
                    id: field("id: "),
                    kind: field("event: ").unwrap_or_default(),
                    data: field("data: ")
                        .and_then(|d| serde_json::from_str(&d).ok())
                        .unwrap_or(Value::Null),
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.fill(deadline);
        }
    }

    /// Events until one matches, within `timeout`; panics otherwise.
    pub fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&Event) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left) {
                Some(e) => {
                    let hit = f(&e);
                    seen.push(e);
                    if hit {
                        return seen;
                    }
                }
                None => panic!("no {what} within {timeout:?}; saw {seen:?}"),
            }
        }
    }
}

/// A TCP forwarder in front of Redis that a test can cut (every forwarded
/// connection closed, new ones refused) and restore: Redis unreachable for
/// one node while the others and the test still reach it.
pub struct RedisLink {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl RedisLink {
    pub fn to(redis: &RedisProc) -> RedisLink {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the link");
        let port = listener.local_addr().unwrap().port();
        let target = redis.port;
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (c, s, o) = (cut.clone(), stop.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: refused while cut
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                if let Ok(mut open) = o.lock() {
                    open.extend(client.try_clone());
                    open.extend(server.try_clone());
                }
                for pipe in pipes {
                    if let (Ok(mut from), Ok(mut to)) = pipe {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        RedisLink {
            port,
            cut,
            stop,
            open,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut open) = self.open.lock() {
            for s in open.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
