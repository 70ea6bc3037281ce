//! What the operations tests share: a raw HTTP/1.1 client for the admin API
//! (statuses and headers as data, interim responses seen), a parsed
//! `/metrics` scrape, and the rule for tools a test needs (skipped on a
//! developer's machine without them, a failure under CI).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `/metrics` requests made by [`scrape`] in this test binary.
static SCRAPES: AtomicUsize = AtomicUsize::new(0);

pub fn scrapes() -> usize {
    SCRAPES.load(Ordering::SeqCst)
}

pub const WAIT: Duration = Duration::from_secs(5);

/// The repository's root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of `tool` on PATH, if it is installed.
pub fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// `tool`, or `None` after saying SKIPPED; under CI (env `CI` set) a
/// missing tool fails the test instead, so a green CI run means it ran.
pub fn tool(tool: &str, package: &str) -> Option<PathBuf> {
    if let Some(path) = on_path(tool) {
        return Some(path);
    }
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(
        !in_ci,
        "{tool} is missing; CI must provide it: .ci/run installs {package}"
    );
    println!("SKIPPED: {tool} not found (install {package})");
    None
}

/// One HTTP response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {:?}", self.status, self.text()))
    }
}

/// A raw connection to an HTTP server: send bytes, read responses.
pub struct Http {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads until `deadline`; false on EOF or timeout.
    fn fill(&mut self, deadline: Instant) -> Option<bool> {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        self.stream.set_read_timeout(Some(deadline - now)).unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => Some(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(_) => Some(false),
        }
    }

    /// The next response (interim ones included) within `timeout`; a
    /// response without Content-Length has a body up to the close
    /// (`Connection: close`) or none (1xx, 204).
    pub fn response_within(&mut self, timeout: Duration) -> Option<Response> {
        let deadline = Instant::now() + timeout;
        let mut eof = false;
        loop {
            if let Some(r) = self.take(eof) {
                return Some(r);
            }
            if eof {
                return None;
            }
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => eof = true,
                None => return None,
            }
        }
    }

    pub fn response(&mut self) -> Response {
        self.response_within(WAIT).unwrap_or_else(|| {
            panic!(
                "no response within {WAIT:?}; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    fn take(&mut self, eof: bool) -> Option<Response> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let head = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(e) => panic!("unparsable response ({e}): {:?}", self.buf),
        };
        let status = parsed.code.unwrap_or(0);
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim().parse::<usize>().expect("numeric Content-Length"));
        let stream = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("content-type") && v.contains("event-stream"));
        let end = match length {
            Some(len) if self.buf.len() >= head + len => head + len,
            Some(_) => return None,
            // An event stream's head is the response; the events follow in `pending`.
            None if status < 200 || status == 204 || stream => head,
            None if eof => self.buf.len(),
            None => return None,
        };
        let body = self.buf[head..end].to_vec();
        self.buf.drain(..end);
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// Whether the server closed within `WAIT` (bytes before the close are kept).
    pub fn closed(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => return true,
                None => return false,
            }
        }
    }

    /// Bytes received and not yet taken as a response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// One request on a fresh connection, `Connection: close`.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> Response {
    let mut http = Http::connect(addr);
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: lifeline\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    http.send(&bytes);
    http.response()
}

/// A parsed `/metrics` scrape: `name{labels}` → value, and the text.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    values: HashMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect();
        Scrape { text, values }
    }

    pub fn try_get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }

    pub fn get(&self, key: &str) -> f64 {
        self.try_get(key)
            .unwrap_or_else(|| panic!("no sample {key} in:\n{}", self.text))
    }

    /// Every metric family named by a `# TYPE` line.
    pub fn families(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect()
    }
}

/// Scrapes `/metrics` (with a bearer token, if given).
pub fn scrape(admin: SocketAddr, token: Option<&str>) -> Scrape {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    SCRAPES.fetch_add(1, Ordering::SeqCst);
    let r = request(admin, "GET", "/metrics", &auth, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    Scrape::parse(r.text())
}

/// Scrapes until `check` holds, or panics after `WAIT` with the last scrape.
pub fn scrape_until(admin: SocketAddr, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(admin, None);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{}", s.text);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "lifeline-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
