//! The admin HTTP API spoken from outside, through real sockets, against the
//! real binary: ureq where an ordinary client is enough, a raw socket where
//! the test needs what a client library hides (pipelining, malformed requests,
//! a subscriber that never reads).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    attr, poll_until, wait_server_read, wait_until, Client, Closed, Fill, ServerProc, WAIT,
};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// A ureq agent aimed at one server's admin API; statuses are data, not errors.
#[derive(Clone)]
struct Admin {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

/// One answer: status, content type and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {:?}", self.status, self.body))
    }

    /// The `error` field of an error body.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Admin {
    fn new(server: &ServerProc) -> Admin {
        Admin::with_token(server, None)
    }

    fn with_token(server: &ServerProc, token: Option<&str>) -> Admin {
        let (base, agent) = common::admin_agent(server, Duration::from_secs(15));
        Admin {
            base,
            agent,
            token: token.map(str::to_string),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    fn get(&self, path: &str) -> Reply {
        let mut request = self.agent.get(self.url(path));
        if let Some(auth) = self.bearer() {
            request = request.header("Authorization", auth);
        }
        reply(request.call(), "GET", path)
    }

    fn post(&self, path: &str, body: &str) -> Reply {
        let mut request = self.agent.post(self.url(path));
        if let Some(auth) = self.bearer() {
            request = request.header("Authorization", auth);
        }
        reply(request.send(body), "POST", path)
    }

    fn delete(&self, path: &str) -> Reply {
        let mut request = self.agent.delete(self.url(path));
        if let Some(auth) = self.bearer() {
            request = request.header("Authorization", auth);
        }
        reply(request.call(), "DELETE", path)
    }

    fn metrics(&self) -> Metrics {
        let reply = self.get("/metrics");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.content_type.starts_with("text/plain"),
            "{}",
            reply.content_type
        );
        Metrics::parse(&reply.body)
    }

    /// Polls `/metrics` until `check` holds; panics with the last value otherwise.
    fn wait_metric(&self, key: &str, what: &str, check: impl Fn(f64) -> bool) -> f64 {
        poll_until(WAIT, || Some(self.metrics().get(key)).filter(|&v| check(v)))
            .unwrap_or_else(|| panic!("{key} = {}, expected {what}", self.metrics().get(key)))
    }
}

fn reply(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    method: &str,
    path: &str,
) -> Reply {
    let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let www_authenticate = header("www-authenticate");
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
    Reply {
        status,
        content_type,
        www_authenticate,
        body,
    }
}

/// A Prometheus text exposition: `name{labels}` → value, plus the raw text.
struct Metrics {
    samples: HashMap<String, f64>,
    text: String,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
                let value = value.parse().unwrap_or_else(|_| panic!("{l:?}"));
                (key.to_string(), value)
            })
            .collect();
        Metrics {
            samples,
            text: text.to_string(),
        }
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in:\n{}", self.text))
    }
}

/// `after.get(key) - before.get(key)`.
fn delta(before: &Metrics, after: &Metrics, key: &str) -> f64 {
    after.get(key) - before.get(key)
}

/// A raw HTTP/1.1 connection to the admin API.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One Server-Sent Event.
#[derive(Debug)]
struct SseEvent {
    id: u64,
    event: String,
    data: Value,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect to the admin API");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the admin API");
    }

    fn fill(&mut self, deadline: Instant) -> Fill {
        common::fill(&mut self.stream, &mut self.buf, deadline)
    }

    /// The next whole response within `WAIT` (the head only for an event
    /// stream); `None` on a close or timeout.
    fn response(&mut self) -> Option<RawReply> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(reply) = self.take_response() {
                return Some(reply);
            }
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof | Fill::Timeout => return None,
            }
        }
    }

    /// Like `response`, but panics unless one came.
    fn expect_response(&mut self) -> RawReply {
        self.response().unwrap_or_else(|| {
            panic!(
                "no response within {WAIT:?}; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    fn take_response(&mut self) -> Option<RawReply> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(e) => panic!("unparsable response ({e}): {:?}", self.buf),
        };
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let status = response.code.unwrap_or(0);
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim().parse::<usize>().expect("numeric Content-Length"));
        let body_len = length.unwrap_or(0);
        if self.buf.len() < head + body_len {
            return None;
        }
        let body = self.buf[head..head + body_len].to_vec();
        self.buf.drain(..head + body_len);
        Some(RawReply {
            status,
            headers,
            body,
        })
    }

    /// Waits for the server to close; true if it did within `WAIT`.
    fn closed(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof => return true,
                Fill::Timeout => return false,
            }
        }
    }

    /// The next event of an event stream within `timeout` (comments skipped).
    fn event_within(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(end) = find(&self.buf, b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 events");
                let mut id = None;
                let mut event = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().expect("numeric event id"));
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("JSON event data"));
                    }
                }
                if let (Some(id), Some(event), Some(data)) = (id, event, data) {
                    return Some(SseEvent { id, event, data });
                }
            }
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof | Fill::Timeout => return None,
            }
        }
    }
}

/// A raw connection with a small receive window and a small segment size, so
/// that the server's send buffer for it stays small, as on a real network
/// (loopback's 64 KiB segments give every socket megabytes of buffer).
fn small_window(addr: SocketAddr) -> Raw {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_tcp_mss(536).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    Raw {
        stream: socket.into(),
        buf: Vec::new(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A GET request with the given extra header lines.
fn get_request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: lifeline\r\n{extra}\r\n")
}

fn post_request(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: lifeline\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The text of a `<msg>` frame, unescaped.
fn msg_text(frame: &str) -> String {
    let start = frame.find('>').expect("a start tag") + 1;
    let end = frame.rfind("</msg>").expect("an end tag");
    quick_xml::escape::unescape(&frame[start..end])
        .expect("escaped text")
        .into_owned()
}

/// The next frame within `limit` that is not a server probe; probes met on
/// the way are answered, as a client would.
fn frame_skipping_probes(client: &mut Client, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let frame = client.frame_within(deadline.saturating_duration_since(Instant::now()))?;
        if !frame.starts_with("<heartbeat mode=\"ping\"") {
            return Some(frame);
        }
        client.send("<heartbeat mode=\"pong\"/>");
    }
}

/// The next frame that is not a probe, within `WAIT`; panics otherwise.
fn next_frame(client: &mut Client) -> String {
    frame_skipping_probes(client, WAIT).unwrap_or_else(|| panic!("no frame within {WAIT:?}"))
}

/// Sends a ping and expects its pong within `limit`; returns the round trip.
fn ping(client: &mut Client, seq: u64, limit: Duration) -> Duration {
    let sent = Instant::now();
    client.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
    let pong = frame_skipping_probes(client, limit)
        .unwrap_or_else(|| panic!("ping {seq} not answered within {limit:?}"));
    assert_eq!(pong, format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>"));
    sent.elapsed()
}

/// Whether the server still serves both sides: /healthz and a fresh login.
fn assert_alive(server: &ServerProc, admin: &Admin, who: &str) {
    let health = admin.agent.get(admin.url("/healthz")).call();
    if !matches!(&health, Ok(r) if r.status() == 200) {
        // Failure path only: give the log reader a moment to catch the last words.
        let panic = server.wait_log("panicked", Duration::from_secs(2));
        panic!("{who}: /healthz: {health:?}; server panic: {panic:?}");
    }
    let mut probe = server.login(&format!("alive-{who}"));
    ping(&mut probe, 1, WAIT);
}

// ------------------------------------------------------------- health, routes

#[test]
fn healthz_answers_200_and_unknown_routes_and_methods_are_refused() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let health = admin.get("/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.content_type, "application/json");
    // The pid serving: an upgrade (tests/upgrade.rs) changes it.
    assert_eq!(
        health.json(),
        serde_json::json!({"status": "ok", "pid": server.pid()})
    );

    let missing = admin.get("/nope");
    assert_eq!(
        (missing.status, missing.error().as_str()),
        (404, "not-found")
    );
    for (method, path) in [
        ("PUT", "/clients"),
        ("POST", "/healthz"),
        ("DELETE", "/metrics"),
        ("GET", "/broadcast"),
        ("POST", "/events"),
    ] {
        let url = admin.url(path);
        let result = match method {
            "PUT" => admin.agent.put(url).send(""),
            "POST" => admin.agent.post(url).send(""),
            "DELETE" => admin.agent.delete(url).call(),
            _ => admin.agent.get(url).call(),
        };
        let r = reply(result, method, path);
        assert_eq!(
            (r.status, r.error().as_str()),
            (405, "method-not-allowed"),
            "{method} {path}"
        );
    }
    for path in [
        "/clients?limit=0",
        "/clients?limit=1001",
        "/clients?limit=",
        "/clients?limit=ten",
    ] {
        let r = admin.get(path);
        assert_eq!((r.status, r.error().as_str()), (400, "bad-limit"), "{path}");
    }
}

// ------------------------------------------------------------------- metrics

#[test]
fn metrics_name_every_family_and_the_counts_move() {
    let server = ServerProc::start(&[
        ("LIFELINE_HEARTBEAT_MS", "200"),
        ("LIFELINE_MISSES", "25"),
        ("LIFELINE_TICK_MS", "5"),
    ]);
    let admin = Admin::new(&server);
    let before = admin.metrics();
    for family in [
        "lifeline_connections_open gauge",
        "lifeline_clients_online gauge",
        "lifeline_ack_waits gauge",
        "lifeline_logins_total counter",
        "lifeline_connections_closed_total counter",
        "lifeline_offline_total counter",
        "lifeline_heartbeats_received_total counter",
        "lifeline_probes_sent_total counter",
        "lifeline_frames_in_total counter",
        "lifeline_frames_out_total counter",
        "lifeline_bytes_in_total counter",
        "lifeline_bytes_out_total counter",
        "lifeline_errors_sent_total counter",
        "lifeline_pushes_accepted_total counter",
        "lifeline_pushes_delivered_total counter",
        "lifeline_pushes_acked_total counter",
        "lifeline_admin_requests_total counter",
        "lifeline_loop_iteration_seconds histogram",
    ] {
        assert!(
            before.text.contains(&format!("# TYPE {family}\n")),
            "no # TYPE {family}"
        );
    }
    assert_eq!(before.get("lifeline_connections_open"), 0.0);
    assert_eq!(before.get("lifeline_clients_online"), 0.0);

    // Two clients online and one connected without logging in.
    let mut a = server.login("a");
    let mut b = server.login("b");
    let mut anonymous = server.connect();
    ping(&mut anonymous, 1, WAIT);
    let during = admin.metrics();
    assert_eq!(during.get("lifeline_connections_open"), 3.0);
    assert_eq!(during.get("lifeline_clients_online"), 2.0);

    // Heartbeats both ways: a pings, b answers the server's probe.
    ping(&mut a, 7, WAIT);
    let probe = b.expect_frame();
    assert!(probe.starts_with("<heartbeat mode=\"ping\""), "{probe}");
    b.send("<heartbeat mode=\"pong\"/>");
    // Errors by code: an unknown frame (kept) and a msg before login (closed).
    a.send("<whatever/>");
    assert!(next_frame(&mut a).starts_with("<error code=\"unknown-frame\""));
    anonymous.send("<msg to=\"a\">x</msg>");
    assert!(matches!(anonymous.wait_closed(WAIT), Closed::Yes(_)));
    // A push that is delivered and acked while the pusher waits.
    let pusher = {
        let admin = admin.clone();
        std::thread::spawn(move || admin.post("/clients/a/push?wait_ack_ms=5000", "hi"))
    };
    let msg = next_frame(&mut a);
    a.send(&format!("<ack id=\"{}\"/>", attr(&msg, "id").unwrap()));
    assert_eq!(pusher.join().unwrap().status, 200);
    // Logouts by reason: kicked, bye.
    assert_eq!(admin.delete("/clients/b").status, 204);
    assert!(matches!(b.wait_closed(WAIT), Closed::Yes(_)));
    a.send("<bye/>");
    assert!(matches!(a.wait_closed(WAIT), Closed::Yes(_)));
    assert_eq!(admin.get("/clients/nobody").status, 404);

    admin.wait_metric("lifeline_connections_open", "0", |v| v == 0.0);
    let after = admin.metrics();
    assert_eq!(after.get("lifeline_clients_online"), 0.0);
    for (key, expected) in [
        ("lifeline_accepted_total", 3.0),
        ("lifeline_logins_total", 2.0),
        ("lifeline_connections_closed_total{reason=\"kicked\"}", 1.0),
        ("lifeline_connections_closed_total{reason=\"bye\"}", 1.0),
        ("lifeline_connections_closed_total{reason=\"error\"}", 1.0),
        ("lifeline_connections_closed_total{reason=\"timeout\"}", 0.0),
        // The anonymous connection's end was no one's offline.
        ("lifeline_offline_total{reason=\"kicked\"}", 1.0),
        ("lifeline_offline_total{reason=\"bye\"}", 1.0),
        ("lifeline_offline_total{reason=\"error\"}", 0.0),
        ("lifeline_errors_sent_total{code=\"unknown-frame\"}", 1.0),
        ("lifeline_errors_sent_total{code=\"not-logged-in\"}", 1.0),
        ("lifeline_errors_sent_total{code=\"bad-frame\"}", 0.0),
        ("lifeline_pushes_accepted_total", 1.0),
        ("lifeline_pushes_delivered_total", 1.0),
        ("lifeline_pushes_acked_total", 1.0),
        ("lifeline_acks_total", 1.0),
    ] {
        assert_eq!(delta(&before, &after, key), expected, "{key}");
    }
    // Pings from `anonymous` and `a`, plus `b`'s pong; probes may repeat.
    assert!(delta(&before, &after, "lifeline_heartbeats_received_total") >= 3.0);
    assert!(delta(&before, &after, "lifeline_probes_sent_total") >= 1.0);
    // In: 2 logins, 2 pings, pong, whatever, msg, ack, bye.
    assert!(delta(&before, &after, "lifeline_frames_in_total") >= 9.0);
    // Out: 2 welcomes, 2 pongs, probe, 2 errors, msg, 1 bye (kicked).
    assert!(delta(&before, &after, "lifeline_frames_out_total") >= 9.0);
    assert!(delta(&before, &after, "lifeline_bytes_in_total") > 100.0);
    assert!(delta(&before, &after, "lifeline_bytes_out_total") > 100.0);
    // The first scrape and the waited push answered 200, the kick 204, the lookup 404.
    assert!(after.get("lifeline_admin_requests_total{status=\"200\"}") >= 3.0);
    assert_eq!(
        after.get("lifeline_admin_requests_total{status=\"204\"}"),
        1.0
    );
    assert_eq!(
        after.get("lifeline_admin_requests_total{status=\"404\"}"),
        1.0
    );
    // The loop histogram: cumulative buckets up to +Inf == count, and it moved.
    let count = after.get("lifeline_loop_iteration_seconds_count");
    assert!(count > before.get("lifeline_loop_iteration_seconds_count"));
    assert_eq!(
        after.get("lifeline_loop_iteration_seconds_bucket{le=\"+Inf\"}"),
        count
    );
    let buckets: Vec<f64> = after
        .text
        .lines()
        .filter(|l| l.starts_with("lifeline_loop_iteration_seconds_bucket{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.len() >= 3);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert!(after.get("lifeline_loop_iteration_seconds_sum") > 0.0);
}

/// The byte counters say "bytes read from / written to client sockets"; an
/// admin response is not client traffic, and a scrape must not count itself.
#[test]
fn byte_counters_count_exactly_the_client_traffic() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut a = server.login("a");
    let before = admin.metrics();
    let ping_frame = "<heartbeat mode=\"ping\" seq=\"1\"/>";
    let pong_frame = "<heartbeat mode=\"pong\" seq=\"1\"/>";
    ping(&mut a, 1, WAIT);
    let after = admin.metrics();
    assert_eq!(
        delta(&before, &after, "lifeline_bytes_in_total"),
        ping_frame.len() as f64
    );
    assert_eq!(
        delta(&before, &after, "lifeline_bytes_out_total"),
        pong_frame.len() as f64,
        "bytes_out also counted admin responses (the first scrape is {} bytes)",
        before.text.len()
    );
}

// ------------------------------------------------------------------- clients

#[test]
fn clients_pages_through_250_ids_each_exactly_once() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    // Ids chosen so that login order and id order differ.
    let ids: Vec<String> = (0..250).map(|i| format!("u{:03}", (i * 7) % 250)).collect();
    let _clients: Vec<Client> = ids.iter().map(|id| server.login(id)).collect();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/clients?limit=100".to_string();
    loop {
        let page = admin.get(&path);
        assert_eq!(page.status, 200, "{page:?}");
        assert_eq!(page.content_type, "application/json");
        let page = page.json();
        assert_eq!(page["online"], 250);
        let clients = page["clients"].as_array().expect("clients array");
        sizes.push(clients.len());
        for c in clients {
            seen.push(c["id"].as_str().expect("id").to_string());
            assert!(c["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{c}");
        }
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), seen.last().map(String::as_str));
                path = format!("/clients?limit=100&after={next}");
            }
            None => {
                assert!(page["next"].is_null(), "{page}");
                break;
            }
        }
        assert!(sizes.len() < 10, "the cursor does not advance");
    }
    assert_eq!(sizes, [100, 100, 50]);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 250, "some ids came twice");
    assert_eq!(unique, ids.iter().collect::<BTreeSet<_>>());
    // Default page size 100; a cursor past the end gives an empty last page.
    let first = admin.get("/clients").json();
    assert_eq!(first["clients"].as_array().unwrap().len(), 100);
    let past = admin.get("/clients?after=zzz").json();
    assert_eq!(past["clients"].as_array().unwrap().len(), 0);
    assert!(past["next"].is_null());
}

#[test]
fn one_client_is_shown_while_online_and_404_after() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let before = unix_ms();
    let mut a = server.login("a@b.c");
    let shown = admin.get("/clients/a%40b.c");
    assert_eq!(shown.status, 200, "{shown:?}");
    let shown = shown.json();
    assert_eq!(shown["id"], "a@b.c");
    assert_eq!(
        shown["peer"].as_str(),
        Some(a.stream.local_addr().unwrap().to_string().as_str())
    );
    let connected_at = shown["connected_at"].as_u64().expect("connected_at");
    assert!(
        connected_at + 1000 >= before && connected_at <= unix_ms() + 1000,
        "{shown}"
    );
    assert!(shown["last_seen_ms_ago"].as_u64().unwrap() < 5000);

    a.send("<bye/>");
    assert!(matches!(a.wait_closed(WAIT), Closed::Yes(_)));
    let gone = admin.get("/clients/a%40b.c");
    assert_eq!((gone.status, gone.error().as_str()), (404, "offline"));
}

// ---------------------------------------------------------------------- push

#[test]
fn a_push_arrives_escaped_from_admin_and_is_answered_202() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut a = server.login("a");
    let text = "x < y & \"z\" 'w' >\r\n é ✓";
    let pushed = admin.post("/clients/a/push", text);
    assert_eq!(pushed.status, 202, "{pushed:?}");
    let pushed = pushed.json();
    assert_eq!(pushed["status"], "sent");
    let id = pushed["id"].as_str().expect("a push id").to_string();

    let frame = next_frame(&mut a);
    let head = format!("<msg from=\"admin\" id=\"{id}\">");
    assert!(frame.starts_with(&head), "{frame}");
    let inner = &frame[head.len()..frame.len() - "</msg>".len()];
    assert!(!inner.contains(['<', '>', '"', '\r']), "{frame}");
    assert_eq!(msg_text(&frame), text);

    // Each push gets its own id.
    let second = admin.post("/clients/a/push", "again").json();
    assert_ne!(second["id"].as_str(), Some(id.as_str()));
    assert_eq!(msg_text(&next_frame(&mut a)), "again");

    let offline = admin.post("/clients/nobody/push", "x");
    assert_eq!((offline.status, offline.error().as_str()), (404, "offline"));
    let bad = admin.post("/clients/a/push?wait_ack_ms=soon", "x");
    assert_eq!((bad.status, bad.error().as_str()), (400, "bad-wait"));
    let bytes = reply(
        admin
            .agent
            .post(admin.url("/clients/a/push"))
            .send(&[0xff, 0xfe][..]),
        "POST",
        "push",
    );
    assert_eq!((bytes.status, bytes.error().as_str()), (400, "bad-body"));
    // Nothing reached the client for the refused pushes.
    assert_eq!(a.frame_within(Duration::from_millis(200)), None);
}

#[test]
fn a_push_waiting_for_its_ack_is_answered_200_when_acked() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut a = server.login("a");
    let started = Instant::now();
    let pusher = {
        let admin = admin.clone();
        std::thread::spawn(move || admin.post("/clients/a/push?wait_ack_ms=10000", "ack me"))
    };
    let msg = next_frame(&mut a);
    let id = attr(&msg, "id").expect("msg id");
    a.send(&format!("<ack id=\"{id}\"/>"));
    let answer = pusher.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered only after {:?}",
        started.elapsed()
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json(),
        serde_json::json!({"id": id, "status": "acked"})
    );
}

#[test]
fn a_push_not_acked_in_time_is_answered_202_and_the_loop_serves_others_meanwhile() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut quiet = server.login("quiet");
    let mut other = server.login("other");
    let wait = Duration::from_millis(1500);
    let started = Instant::now();
    let pusher = {
        let admin = admin.clone();
        let path = format!("/clients/quiet/push?wait_ack_ms={}", wait.as_millis());
        std::thread::spawn(move || admin.post(&path, "no ack"))
    };
    // The push has been served once the message arrives; from then on the
    // pusher is parked until its deadline.
    let msg = next_frame(&mut quiet);
    assert_eq!(msg_text(&msg), "no ack");
    let mut answered_while_waiting = 0;
    for seq in 1.. {
        let rtt = ping(&mut other, seq, WAIT);
        if pusher.is_finished() {
            break;
        }
        assert!(
            rtt < Duration::from_millis(750),
            "ping {seq} took {rtt:?} while a push waited"
        );
        answered_while_waiting += 1;
        // Paces the pings; the loop ends when the pusher's answer came.
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = pusher.join().unwrap();
    let elapsed = started.elapsed();
    assert!(
        answered_while_waiting >= 3,
        "only {answered_while_waiting} pings answered during the wait"
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(
        answer.json(),
        serde_json::json!({"id": attr(&msg, "id").unwrap(), "status": "sent"})
    );
    assert!(
        elapsed >= wait,
        "answered after {elapsed:?}, before the wait"
    );
}

/// `<ack id>` means "the receiver processed MID": an ack for someone else's
/// message must not be reported to the pusher as that receiver's ack.
#[test]
fn an_ack_from_another_client_does_not_answer_the_pusher() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut target = server.login("target");
    let mut bystander = server.login("bystander");
    let wait = Duration::from_millis(1500);
    let started = Instant::now();
    let pusher = {
        let admin = admin.clone();
        std::thread::spawn(move || admin.post("/clients/target/push?wait_ack_ms=1500", "m"))
    };
    let id = attr(&next_frame(&mut target), "id").unwrap();
    bystander.send(&format!("<ack id=\"{id}\"/>"));
    ping(&mut bystander, 1, WAIT);
    let answer = pusher.join().unwrap();
    assert_eq!(
        (answer.status, answer.json()["status"].as_str()),
        (202, Some("sent")),
        "the bystander's ack was taken for the target's (after {:?})",
        started.elapsed()
    );
    assert!(started.elapsed() >= wait);
}

#[test]
fn a_push_larger_than_max_frame_is_refused_413() {
    let server = ServerProc::start(&[("LIFELINE_MAX_FRAME", "256")]);
    let admin = Admin::new(&server);
    let mut a = server.login("a");
    let small = "s".repeat(100);
    assert_eq!(admin.post("/clients/a/push", &small).status, 202);
    let big = admin.post("/clients/a/push", &"b".repeat(300));
    assert_eq!((big.status, big.error().as_str()), (413, "too-large"));
    // Escaping counts: 60 '&' become 300 bytes on the wire.
    let escaped = admin.post("/clients/a/push", &"&".repeat(60));
    assert_eq!(escaped.status, 413, "{escaped:?}");
    let broadcast = admin.post("/broadcast", &"b".repeat(300));
    assert_eq!(broadcast.status, 413);
    // Only the small one arrived, and the client is still served.
    assert_eq!(msg_text(&next_frame(&mut a)), small);
    ping(&mut a, 1, WAIT);
}

#[test]
fn a_push_to_a_client_whose_queue_is_full_is_refused_503_and_nobody_is_cut_off() {
    let server = ServerProc::start(&[
        ("LIFELINE_MAX_OUTBOUND", "65536"),
        ("LIFELINE_MAX_FRAME", "65536"),
    ]);
    let admin = Admin::new(&server);
    let stuck = server.login("stuck");
    let mut bystander = server.login("bystander");
    let body = "z".repeat(30_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut accepted = 0;
    let refused = loop {
        assert!(
            Instant::now() < deadline,
            "no 503 after {accepted} pushes to a client that never reads"
        );
        let r = admin.post("/clients/stuck/push", &body);
        match r.status {
            202 => accepted += 1,
            _ => break r,
        }
    };
    assert_eq!(
        (refused.status, refused.error().as_str()),
        (503, "client-busy"),
        "{refused:?}"
    );
    // Refusing the push is the whole penalty: the client stays online.
    assert_eq!(admin.get("/clients/stuck").status, 200);
    assert_eq!(server.count_log("offline id=stuck"), 0);
    let m = admin.metrics();
    assert!(m.get("lifeline_admin_requests_total{status=\"503\"}") >= 1.0);
    // Others are served as before.
    ping(&mut bystander, 1, WAIT);
    assert_eq!(admin.post("/clients/bystander/push", "fine").status, 202);
    assert_eq!(msg_text(&next_frame(&mut bystander)), "fine");
    drop(stuck);
}

/// A push that waits parks its admin connection; a request pipelined behind it
/// is served when the ack arrives, in the middle of reading the acking client.
/// Kicking that very client then must not pull its connection out from under
/// the read in progress.
#[test]
fn a_kick_pipelined_behind_a_waiting_push_survives_the_ack() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut x = server.login("x");
    let mut raw = Raw::connect(server.admin.unwrap());
    let mut requests = post_request("/clients/x/push?wait_ack_ms=5000", "hi");
    requests.push_str("DELETE /clients/x HTTP/1.1\r\nHost: lifeline\r\n\r\n");
    raw.send(requests.as_bytes());
    let msg = next_frame(&mut x);
    x.send(&format!("<ack id=\"{}\"/>", attr(&msg, "id").unwrap()));
    let acked = raw.expect_response();
    assert_eq!(acked.status, 200, "{acked:?}");
    assert_eq!(acked.json()["status"], "acked");
    let kicked = raw.expect_response();
    assert_eq!(kicked.status, 204);
    assert_eq!(
        x.wait_closed(WAIT),
        Closed::Yes(vec!["<bye reason=\"kicked\"/>".to_string()])
    );
    assert_alive(&server, &admin, "after-kick");
    assert_eq!(server.count_log("panicked"), 0, "{:?}", server.log_lines());
}

/// Each push that waits is remembered until its ack or the end of its
/// wait; once the wait is over nothing of it may stay behind, however many
/// pushes waited on one connection.
#[test]
fn waited_pushes_leave_nothing_behind() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let _a = server.login("a");
    assert_eq!(admin.metrics().get("lifeline_ack_waits"), 0.0);
    let mut raw = Raw::connect(server.admin.unwrap());
    for _ in 0..100 {
        raw.send(post_request("/clients/a/push?wait_ack_ms=1", "x").as_bytes());
        assert_eq!(raw.expect_response().status, 202);
    }
    assert_eq!(admin.metrics().get("lifeline_ack_waits"), 0.0);
    // A pusher that goes away mid-wait takes its wait with it.
    let mut gone = Raw::connect(server.admin.unwrap());
    gone.send(post_request("/clients/a/push?wait_ack_ms=60000", "y").as_bytes());
    admin.wait_metric("lifeline_ack_waits", "one wait", |v| v == 1.0);
    drop(gone);
    admin.wait_metric("lifeline_ack_waits", "no wait left", |v| v == 0.0);
}

// ----------------------------------------------------------------- broadcast

#[test]
fn a_broadcast_reaches_1000_clients() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut clients: Vec<Client> = (0..1000).map(|i| server.login(&format!("b{i}"))).collect();
    let sent = admin.post("/broadcast", "to all <3");
    assert_eq!(sent.status, 202, "{sent:?}");
    let sent = sent.json();
    assert_eq!(sent["recipients"], 1000);
    let id = sent["id"].as_str().expect("broadcast id").to_string();
    for (i, c) in clients.iter_mut().enumerate() {
        let frame =
            frame_skipping_probes(c, WAIT).unwrap_or_else(|| panic!("client {i} got nothing"));
        assert_eq!(
            frame,
            format!("<msg from=\"admin\" id=\"{id}\">to all &lt;3</msg>"),
            "client {i}"
        );
    }
    let m = admin.metrics();
    assert_eq!(m.get("lifeline_pushes_accepted_total"), 1000.0);
    let delivered = admin.wait_metric("lifeline_pushes_delivered_total", "1000", |v| v >= 1000.0);
    assert_eq!(delivered, 1000.0);
    // Nobody online: zero recipients.
    drop(clients);
    admin.wait_metric("lifeline_clients_online", "0", |v| v == 0.0);
    assert_eq!(admin.post("/broadcast", "x").json()["recipients"], 0);
}

// ---------------------------------------------------------------------- kick

#[test]
fn delete_kicks_with_bye_kicked_and_404_when_offline() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut a = server.login("a");
    let mut b = server.login("b");
    let kicked = admin.delete("/clients/a");
    assert_eq!(kicked.status, 204, "{kicked:?}");
    assert_eq!(kicked.body, "");
    assert_eq!(
        a.wait_closed(WAIT),
        Closed::Yes(vec!["<bye reason=\"kicked\"/>".to_string()])
    );
    assert!(server
        .wait_log("offline id=a reason=kicked", WAIT)
        .is_some());
    let again = admin.delete("/clients/a");
    assert_eq!((again.status, again.error().as_str()), (404, "offline"));
    assert_eq!(admin.get("/clients/a").status, 404);
    ping(&mut b, 1, WAIT);
}

// ---------------------------------------------------------------------- auth

#[test]
fn with_a_token_every_endpoint_but_healthz_needs_the_bearer() {
    let server = ServerProc::start(&[("LIFELINE_ADMIN_TOKEN", "s3cret")]);
    let mut a = server.login("a");
    let none = Admin::new(&server);
    let wrong = Admin::with_token(&server, Some("s3cre"));
    let longer = Admin::with_token(&server, Some("s3cret2"));
    let right = Admin::with_token(&server, Some("s3cret"));

    for admin in [&none, &wrong, &longer] {
        for r in [
            admin.get("/metrics"),
            admin.get("/clients"),
            admin.get("/clients/a"),
            admin.get("/events"),
            admin.get("/nope"),
            admin.post("/clients/a/push", "x"),
            admin.post("/broadcast", "x"),
            admin.delete("/clients/a"),
        ] {
            assert_eq!(
                (r.status, r.error().as_str()),
                (401, "unauthorized"),
                "{r:?}"
            );
            assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));
        }
        assert_eq!(admin.get("/healthz").status, 200);
    }
    // Nothing the refused requests asked for happened.
    assert_eq!(a.frame_within(Duration::from_millis(200)), None);
    assert_eq!(right.get("/metrics").status, 200);
    assert_eq!(right.get("/clients/a").status, 200);
    assert_eq!(right.post("/clients/a/push", "ok").status, 202);
    assert_eq!(msg_text(&next_frame(&mut a)), "ok");
    let m = right.metrics();
    assert_eq!(m.get("lifeline_admin_requests_total{status=\"401\"}"), 24.0);
}

#[test]
fn without_a_token_no_authorization_is_needed() {
    let server = ServerProc::start(&[]);
    let plain = Admin::new(&server);
    let any = Admin::with_token(&server, Some("whatever"));
    assert_eq!(plain.get("/metrics").status, 200);
    assert_eq!(any.get("/metrics").status, 200);
    assert_eq!(any.get("/clients").status, 200);
}

#[test]
fn a_non_loopback_admin_address_needs_a_token_to_start() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .env_clear()
        .env("LIFELINE_LISTEN", "127.0.0.1:0")
        .env("LIFELINE_ADMIN_ADDR", "0.0.0.0:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lifeline");
    let Some(status) = poll_until(WAIT, || child.try_wait().unwrap()) else {
        // Kills the child this test started, by its handle.
        let _ = child.kill();
        let _ = child.wait();
        panic!("started with a non-loopback admin address and no token");
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("LIFELINE_ADMIN_ADDR") && stderr.contains("LIFELINE_ADMIN_TOKEN"),
        "{stderr}"
    );

    // With a token it starts, and the token is required.
    let server = ServerProc::start(&[
        ("LIFELINE_ADMIN_ADDR", "0.0.0.0:0"),
        ("LIFELINE_ADMIN_TOKEN", "t"),
    ]);
    let port = server.admin.expect("admin address logged").port();
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut raw = Raw::connect(local);
    raw.send(get_request("/metrics", "").as_bytes());
    assert_eq!(raw.expect_response().status, 401);
    raw.send(get_request("/metrics", "Authorization: Bearer t\r\n").as_bytes());
    assert_eq!(raw.expect_response().status, 200);
}

// -------------------------------------------------------------------- events

#[test]
fn events_stream_online_and_offline_in_order() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut events = Raw::connect(server.admin.unwrap());
    events.send(get_request("/events", "Accept: text/event-stream\r\n").as_bytes());
    let head = events.expect_response();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));

    let before = unix_ms();
    let mut a = server.login("a");
    let mut b = server.login("b");
    let peers = [
        a.stream.local_addr().unwrap().to_string(),
        b.stream.local_addr().unwrap().to_string(),
    ];
    assert_eq!(admin.delete("/clients/a").status, 204);
    assert!(matches!(a.wait_closed(WAIT), Closed::Yes(_)));
    b.send("<bye/>");
    assert!(matches!(b.wait_closed(WAIT), Closed::Yes(_)));
    let after = unix_ms();

    let expected = [
        ("online", "a", &peers[0], Value::Null),
        ("online", "b", &peers[1], Value::Null),
        ("offline", "a", &peers[0], Value::from("kicked")),
        ("offline", "b", &peers[1], Value::from("bye")),
    ];
    let mut last_id = 0;
    for (kind, id, peer, reason) in expected {
        let e = events
            .event_within(WAIT)
            .unwrap_or_else(|| panic!("no {kind} event for {id}"));
        assert!(e.id > last_id, "event ids must increase: {e:?}");
        last_id = e.id;
        assert_eq!(e.event, kind, "{e:?}");
        assert_eq!(e.data["event"], kind, "{e:?}");
        assert_eq!(e.data["id"], id, "{e:?}");
        assert_eq!(e.data["peer"].as_str(), Some(peer.as_str()), "{e:?}");
        assert_eq!(e.data["reason"], reason, "{e:?}");
        let at = e.data["at"].as_u64().expect("at");
        assert!(at + 1000 >= before && at <= after + 1000, "{e:?}");
    }
    // Closing the stream unsubscribes.
    drop(events);
    admin.wait_metric("lifeline_event_subscribers", "0", |v| v == 0.0);
}

#[test]
fn a_slow_event_subscriber_is_dropped_and_clients_are_unaffected() {
    let server = ServerProc::start(&[("LIFELINE_MAX_OUTBOUND", "1024")]);
    let admin = Admin::new(&server);
    let admin_addr = server.admin.unwrap();
    // A subscriber with a small receive window that never reads.
    let mut slow = small_window(admin_addr);
    slow.send(get_request("/events", "").as_bytes());
    admin.wait_metric("lifeline_event_subscribers", "1", |v| v == 1.0);

    let mut bystander = server.login("bystander");
    let long_id = "e".repeat(60);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0u64;
    while admin.metrics().get("lifeline_event_subscribers") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the subscriber was never dropped after {round} rounds"
        );
        // 50 logins and byes: 100 events of ~200 bytes each.
        let mut burst: Vec<Client> = (0..50)
            .map(|i| {
                let mut c = server.connect();
                c.send(&format!("<login id=\"{long_id}{i:03}\"/><bye/>"));
                c
            })
            .collect();
        for c in &mut burst {
            assert!(matches!(c.wait_closed(WAIT), Closed::Yes(_)));
        }
        round += 1;
        ping(&mut bystander, round, Duration::from_secs(1));
    }
    assert!(slow.closed(), "the dropped subscriber's socket stayed open");
    admin.wait_metric("lifeline_event_subscribers", "0", |v| v == 0.0);
    assert_eq!(server.count_log("offline id=bystander"), 0);
    ping(&mut bystander, 1_000_000, WAIT);
    // A new subscriber is served.
    let mut fresh = Raw::connect(admin_addr);
    fresh.send(get_request("/events", "").as_bytes());
    assert_eq!(fresh.expect_response().status, 200);
    admin.wait_metric("lifeline_event_subscribers", "1", |v| v == 1.0);
    let _c = server.login("after");
    let e = fresh
        .event_within(WAIT)
        .expect("an event for the new subscriber");
    assert_eq!(
        (e.event.as_str(), e.data["id"].as_str()),
        ("online", Some("after"))
    );
}

// ---------------------------------------------------------------- HTTP layer

#[test]
fn malformed_requests_are_answered_400_and_harm_no_other_connection() {
    let server = ServerProc::start(&[]);
    let admin_addr = server.admin.unwrap();
    let mut client = server.login("a");
    let mut keeper = Raw::connect(admin_addr);
    keeper.send(get_request("/healthz", "").as_bytes());
    assert_eq!(keeper.expect_response().status, 200);

    for garbage in [
        &b"GARBAGE\0\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /healthz HTTP/7.3\r\n\r\n",
        b"POST /broadcast HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let mut bad = Raw::connect(admin_addr);
        bad.send(garbage);
        let r = bad
            .response()
            .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(garbage)));
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(garbage));
        assert_eq!(r.json()["error"], "bad-request");
        assert_eq!(r.header("connection"), Some("close"));
        assert!(bad.closed(), "a malformed request's connection stays open");
        // Others are untouched.
        keeper.send(get_request("/healthz", "").as_bytes());
        assert_eq!(keeper.expect_response().status, 200);
        ping(&mut client, 1, WAIT);
    }
}

#[test]
fn huge_headers_get_431_and_huge_bodies_413() {
    let server = ServerProc::start(&[]);
    let admin_addr = server.admin.unwrap();
    let mut client = server.login("a");

    let long_header = get_request("/healthz", &format!("X-Big: {}\r\n", "h".repeat(9000)));
    let many_headers = get_request(
        "/healthz",
        &(0..40).map(|i| format!("X-{i}: v\r\n")).collect::<String>(),
    );
    // A head that never ends is refused once it is too long.
    let endless = format!("GET /healthz HTTP/1.1\r\nX-Big: {}", "h".repeat(9000));
    for (what, request) in [
        ("a 9000-byte header", long_header),
        ("40 headers", many_headers),
        ("an unterminated head", endless),
    ] {
        let mut raw = Raw::connect(admin_addr);
        raw.send(request.as_bytes());
        let r = raw
            .response()
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(r.status, 431, "{what}");
        assert_eq!(r.json()["error"], "headers-too-large", "{what}");
        assert!(raw.closed(), "{what}");
    }

    let mut raw = Raw::connect(admin_addr);
    raw.send(b"POST /broadcast HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n");
    let r = raw.expect_response();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("body-too-large"))
    );
    assert!(raw.closed());

    let mut raw = Raw::connect(admin_addr);
    raw.send(b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
    let r = raw.expect_response();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (501, Some("not-implemented"))
    );
    assert!(raw.closed());

    // Nobody else noticed.
    ping(&mut client, 1, WAIT);
    assert_eq!(client.frame_within(Duration::from_millis(100)), None);
}

/// A client that sends its whole (too large) body at once, as most do, must
/// still read the 413 rather than a reset.
#[test]
fn a_huge_body_sent_in_full_is_answered_413() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let mut client = server.login("a");
    let body = "B".repeat(16 << 20);
    let result = admin.agent.post(admin.url("/broadcast")).send(&body);
    if let Err(e) = &result {
        panic!("POST /broadcast with a 16 MiB body: no 413 but {e}");
    }
    let r = reply(result, "POST", "/broadcast");
    assert_eq!((r.status, r.error().as_str()), (413, "body-too-large"));
    assert_eq!(client.frame_within(Duration::from_millis(100)), None);
}

#[test]
fn keep_alive_serves_many_requests_and_pipelined_ones_in_order() {
    let server = ServerProc::start(&[]);
    let mut a = server.login("a");
    let mut raw = Raw::connect(server.admin.unwrap());
    // One at a time on one connection.
    for _ in 0..5 {
        raw.send(get_request("/healthz", "").as_bytes());
        let r = raw.expect_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // Pipelined: five requests in one write, answered in order.
    let mut batch = String::new();
    batch.push_str(&get_request("/clients/a", ""));
    batch.push_str(&post_request("/clients/a/push", "one"));
    batch.push_str(&get_request("/clients/nobody", ""));
    batch.push_str(&post_request("/clients/a/push", "two"));
    batch.push_str(&get_request("/healthz", ""));
    raw.send(batch.as_bytes());
    let statuses: Vec<u16> = (0..5).map(|_| raw.expect_response().status).collect();
    assert_eq!(statuses, [200, 202, 404, 202, 200]);
    assert_eq!(msg_text(&next_frame(&mut a)), "one");
    assert_eq!(msg_text(&next_frame(&mut a)), "two");

    // A request split across reads, its body in pieces: each piece is sent
    // once the server has read the ones before.
    let request = post_request("/clients/a/push", "split body");
    for piece in request.as_bytes().chunks(7) {
        assert!(
            wait_server_read(&raw.stream, WAIT),
            "the server did not read the request so far"
        );
        raw.send(piece);
    }
    assert_eq!(raw.expect_response().status, 202);
    assert_eq!(msg_text(&next_frame(&mut a)), "split body");

    // `Connection: close` ends it after the answer; pipelined requests after
    // it are not served.
    let mut last = get_request("/healthz", "Connection: close\r\n");
    last.push_str(&post_request("/clients/a/push", "never"));
    raw.send(last.as_bytes());
    let r = raw.expect_response();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(raw.closed());
    assert_eq!(a.frame_within(Duration::from_millis(200)), None);

    // HTTP/1.0 closes by default.
    let mut old = Raw::connect(server.admin.unwrap());
    old.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(old.expect_response().status, 200);
    assert!(old.closed());
}

/// `Connection: close` on a response larger than the socket takes at once:
/// the whole body must arrive before the close, however slowly the client reads.
#[test]
fn a_large_response_before_close_arrives_whole() {
    let server = ServerProc::start(&[]);
    let admin = Admin::new(&server);
    let long = "l".repeat(56);
    let _clients: Vec<Client> = (0..400)
        .map(|i| server.login(&format!("{long}{i:03}")))
        .collect();
    let answered = |m: &Metrics| m.get("lifeline_admin_requests_total{status=\"200\"}");
    let before = answered(&admin.metrics());
    let mut raw = small_window(server.admin.unwrap());
    raw.send(get_request("/clients?limit=1000", "Connection: close\r\n").as_bytes());
    // Read nothing until the server has answered: every scrape counts itself,
    // so one 200 more than the scrapes means the page went out.
    let mut scrapes = 0.0;
    wait_until("GET /clients to be answered", WAIT, || {
        scrapes += 1.0;
        answered(&admin.metrics()) > before + scrapes
    });
    let deadline = Instant::now() + WAIT;
    while matches!(raw.fill(deadline), Fill::Data) {}
    let received = raw.buf.len();
    let r = raw
        .take_response()
        .unwrap_or_else(|| panic!("the response was cut short at {received} bytes by the close"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["clients"].as_array().unwrap().len(), 400);
}
