//! A real browser against the real binary: headless Chromium, driven over
//! W3C WebDriver by chromedriver and a tiny WebDriver client written here
//! (ureq + serde_json), loads the demo page from the client port, logs in,
//! lives through a server crash and restart on the same port, and shows a
//! message sent by a raw TCP client. A screenshot of the page goes to
//! `docs/demo.png` (with `LIFELINE_SCREENSHOT=1`; otherwise under the target dir).
//!
//! Skipped (with a message on stderr) when chromium or chromedriver is not
//! installed; CI installs both. Every wait polls the DOM with a deadline.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use common::ServerProc;

/// The demo client's backoff cap is 30 s; reconnecting takes at most that
/// (plus a connect) however many attempts failed while the server was down.
const RECONNECT_WAIT: Duration = Duration::from_secs(40);
const DOM_WAIT: Duration = Duration::from_secs(15);

/// `name` as found on `PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn chromium_binary() -> Option<PathBuf> {
    let usual = Path::new("/usr/bin/chromium");
    if usual.is_file() {
        return Some(usual.to_path_buf());
    }
    on_path("chromium").or_else(|| on_path("chromium-browser"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver (a child of this test, killed by its PID when dropped), one
/// WebDriver session on it, and the session's Chromium profile directory.
struct Browser {
    driver: Child,
    agent: ureq::Agent,
    base: String,
    session: Option<String>,
    profile: PathBuf,
}

impl Browser {
    fn start(chromedriver: &Path, chromium: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let profile =
            std::env::temp_dir().join(format!("lifeline-chromium-{}-{nanos}", std::process::id()));
        let mut browser = Browser {
            driver,
            agent: ureq::Agent::new_with_config(config),
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            profile,
        };

        // chromedriver is ready when /status says so.
        let deadline = Instant::now() + DOM_WAIT;
        loop {
            let ready = browser
                .agent
                .get(format!("{}/status", browser.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited: {status}");
            }
            assert!(Instant::now() < deadline, "chromedriver not ready");
            std::thread::sleep(Duration::from_millis(20));
        }

        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.to_str().unwrap(),
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--no-first-run",
                            "--window-size=900,700",
                            format!("--user-data-dir={}", browser.profile.display()),
                        ],
                    },
                },
            },
        });
        let value = browser.call("POST", "/session", Some(capabilities));
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {value}"))
            .to_string();
        browser.session = Some(id);
        browser
    }

    /// One WebDriver command; returns the reply's `value`, panics on an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let result = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        let reply: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} not JSON ({e}): {text}"));
        assert_eq!(status, 200, "{method} {path}: {reply}");
        reply["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session.as_ref().unwrap())
    }

    fn navigate(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        );
    }

    /// The WebDriver id of the first element matching `css`.
    fn find(&self, css: &str) -> String {
        let value = self.call(
            "POST",
            &self.session_path("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        // The one entry is keyed by the W3C web element identifier.
        value
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element id for {css}: {value}"))
            .to_string()
    }

    fn text(&self, element: &str) -> String {
        self.call(
            "GET",
            &self.session_path(&format!("/element/{element}/text")),
            None,
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn type_into(&self, element: &str, text: &str) {
        self.call(
            "POST",
            &self.session_path(&format!("/element/{element}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, element: &str) {
        self.call(
            "POST",
            &self.session_path(&format!("/element/{element}/click")),
            None,
        );
    }

    /// A PNG of the viewport.
    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call("GET", &self.session_path("/screenshot"), None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 screenshot"))
            .expect("valid base64")
    }

    /// Polls the text of `element` until `check` holds; panics with the last
    /// text (and the page's log) otherwise.
    fn wait_text(
        &self,
        element: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(element);
            if check(&text) {
                return text;
            }
            if Instant::now() >= deadline {
                let log = self.text(&self.find("#log"));
                panic!("waited {timeout:?} for {what}; text is {text:?}; page log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.session.is_some() {
            let url = format!("{}{}", self.base, self.session_path(""));
            let _ = self.agent.delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[test]
fn the_demo_page_logs_in_survives_a_server_restart_and_shows_a_tcp_message() {
    let (Some(chromedriver), Some(chromium)) = (on_path("chromedriver"), chromium_binary()) else {
        eprintln!(
            "SKIPPED browser test: chromium/chromedriver not found \
             (apt-get install chromium chromium-driver)"
        );
        return;
    };

    let server = ServerProc::start(&[]);
    let addr = server.addr;
    let browser = Browser::start(&chromedriver, &chromium);
    browser.navigate(&format!("http://{addr}/"));

    let state = browser.find("#state");
    assert_eq!(browser.text(&state), "idle");
    browser.type_into(&browser.find("#login input[name=id]"), "browser");
    browser.click(&browser.find("#login button"));
    browser.wait_text(&state, "online", DOM_WAIT, |t| t == "online");

    // The server dies (SIGKILL): the page notices and waits to reconnect.
    drop(server);
    browser.wait_text(&state, "waiting to reconnect", DOM_WAIT, |t| {
        t.starts_with("waiting")
    });
    let log = browser.find("#log");
    browser.wait_text(&log, "a reconnect in the log", DOM_WAIT, |t| {
        t.contains("reconnecting in")
    });

    // Back on the same port: the page is online again within the backoff cap.
    let listen = addr.to_string();
    let server = ServerProc::start(&[("LIFELINE_LISTEN", &listen)]);
    assert_eq!(server.addr, addr);
    browser.wait_text(&state, "online again", RECONNECT_WAIT, |t| t == "online");
    let reconnects = browser.text(&browser.find("#reconnects"));
    assert!(
        reconnects.parse::<u32>().is_ok_and(|n| n >= 1),
        "reconnects: {reconnects:?}"
    );

    // A raw TCP client's message shows up in the page's log.
    let mut tcp = server.login("tcp");
    tcp.send("<msg to=\"browser\">hello from tcp</msg>");
    browser.wait_text(&log, "the TCP message in the log", DOM_WAIT, |t| {
        t.contains("tcp: hello from tcp")
    });
    // Delivered, so no error came back to the sender.
    assert_eq!(tcp.frame_within(Duration::from_millis(50)), None);

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // The README's screenshot is refreshed on request only, so that a test
    // run leaves the work tree as it was: LIFELINE_SCREENSHOT=1 cargo test ...
    let dir = if std::env::var_os("LIFELINE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf()
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("demo.png"), &png).unwrap();
}
