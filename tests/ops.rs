//! What an operator sets up, through the real binary: JSON log lines with
//! the event's fields, levels per module, secrets from files (and the exit
//! 2 for each way they can be wrong), `--version` with the commit, systemd
//! readiness datagrams, the demo page switched off, the WebSocket origin
//! allow-list, and the admin connection limit.

mod common;
mod opskit;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProc, WAIT};
use opskit::{request, scrape, Http, TempDir};
use serde_json::Value;

/// Runs the binary with `env` (on loopback ports) expecting it to refuse to
/// start: returns its exit code and stderr.
fn refused(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    ServerProc::configure(&mut cmd, env);
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

/// A server started with JSON logs; its log lines parsed.
fn json_lines(server: &ServerProc) -> Vec<Value> {
    server
        .log_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn wait_json(server: &ServerProc, message: &str, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = json_lines(server)
            .into_iter()
            .find(|v| v["message"] == message && v["id"] == id)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no {message} for {id}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn json_logs_are_one_object_a_line_with_the_events_fields() {
    let server = ServerProc::start(&[("LIFELINE_LOG_FORMAT", "json")]);
    let mut c = server.login("jay");
    c.send("<bye/>");
    let online = wait_json(&server, "online", "jay");
    assert_eq!(online["level"], "INFO");
    assert_eq!(online["target"], "lifeline::server::session");
    assert!(online["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let conn = online["conn"].as_u64().expect("conn is a number");
    let time = online["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == 24, "{time}");
    let offline = wait_json(&server, "offline", "jay");
    assert_eq!(offline["reason"], "bye");
    assert_eq!(offline["conn"].as_u64(), Some(conn));
    let lived = offline["lived"].as_f64().expect("lived is seconds");
    assert!((0.0..WAIT.as_secs_f64()).contains(&lived), "{lived}");
    // The start line carries the commit in JSON too.
    let start = json_lines(&server)
        .into_iter()
        .find(|v| v["message"].as_str().unwrap().starts_with("listening on"))
        .unwrap();
    assert!(start["message"].as_str().unwrap().contains(" commit "));
}

#[test]
fn text_logs_keep_their_lines_and_levels_are_set_per_module() {
    let server = ServerProc::start(&[(
        "LIFELINE_LOG",
        "warn,lifeline::server=info,lifeline::server::core=debug",
    )]);
    let mut c = server.login("tex");
    c.send("<bye/>");
    let online = server.wait_log("online id=tex ", WAIT).unwrap();
    assert!(
        online.contains(" INFO  [lifeline::server::session] online id=tex peer=127.0.0.1:"),
        "{online}"
    );
    assert!(online.ends_with(" conn=1"), "{online}");
    let offline = server.wait_log("offline id=tex", WAIT).unwrap();
    let fields = offline.split(" offline ").nth(1).unwrap();
    let fields: Vec<&str> = fields.split(' ').collect();
    assert_eq!(fields[..2], ["id=tex", "reason=bye"]);
    assert!(
        fields[2].starts_with("lived=") && fields[2].ends_with('s'),
        "{offline}"
    );
    assert_eq!(fields[3], "conn=1");
    // Debug from lifeline::server::core, none from lifeline::server::inbound.
    let accepted = server.wait_log("] accepted peer=127.0.0.1:", WAIT).unwrap();
    assert!(
        accepted.contains(" DEBUG [lifeline::server::core] "),
        "{accepted}"
    );
    assert!(accepted.ends_with(" conn=1"), "{accepted}");
    let mut page = Http::connect(server.addr);
    page.send(b"GET /nothing HTTP/1.1\r\n\r\n");
    assert_eq!(page.response().status, 404);
    server.wait_log("closed connection 2", WAIT).unwrap();
    assert!(!server
        .log_lines()
        .iter()
        .any(|l| l.contains("[lifeline::server::inbound]")));
    // The start line names the version and commit.
    let start = server.wait_log("listening on", WAIT).unwrap();
    let version = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let commit = version
        .split("(commit ")
        .nth(1)
        .unwrap()
        .trim_end_matches([')', '\n']);
    assert!(
        !commit.is_empty() && commit.chars().all(|c| c.is_ascii_alphanumeric()),
        "{version}"
    );
    assert!(
        start.ends_with(&format!(
            "version {} commit {commit}",
            env!("CARGO_PKG_VERSION")
        )),
        "{start}"
    );
}

#[test]
fn bad_log_settings_exit_2_with_one_line() {
    for (var, value) in [
        ("LIFELINE_LOG_FORMAT", "xml"),
        ("LIFELINE_LOG", "info,lifeline=loud"),
        ("LIFELINE_DEMO_PAGE", "maybe"),
        ("LIFELINE_WS_ORIGINS", "example.com"),
        ("LIFELINE_ADMIN_MAX_CONNECTIONS", "0"),
    ] {
        let (code, stderr) = refused(&[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var) && stderr.contains(value), "{stderr}");
    }
}

#[test]
fn secrets_come_from_files_and_each_mistake_exits_2() {
    let dir = TempDir::new("secrets");
    let secret = dir.path().join("auth-secret");
    let token = dir.path().join("admin-token");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::write(&token, "t0ken\n").unwrap();
    let server = ServerProc::start(&[
        ("LIFELINE_AUTH_SECRET_FILE", secret.to_str().unwrap()),
        ("LIFELINE_ADMIN_TOKEN_FILE", token.to_str().unwrap()),
    ]);
    // The secret without its newline signs logins.
    let mut c = server.connect();
    let minted = lifeline_wire::token::mint(b"s3cret", "sid");
    c.send(&format!("<login id=\"sid\" token=\"{minted}\"/>"));
    assert!(c.expect_frame().starts_with("<welcome id=\"sid\""));
    let mut wrong = server.connect();
    let other = lifeline_wire::token::mint(b"s3cret\n", "sid2");
    wrong.send(&format!("<login id=\"sid2\" token=\"{other}\"/>"));
    assert!(wrong.expect_frame().contains("auth-failed"));
    // The token without its newline opens the admin API.
    let admin = server.admin.unwrap();
    assert_eq!(request(admin, "GET", "/metrics", "", b"").status, 401);
    let auth = "Authorization: Bearer t0ken\r\n";
    assert_eq!(request(admin, "GET", "/metrics", auth, b"").status, 200);
    // Neither secret shows on the command line or in the environment.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    for place in [cmdline, environ] {
        let text = String::from_utf8_lossy(&place);
        assert!(!text.contains("s3cret") && !text.contains("t0ken"));
    }

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.path().join("missing");
    let (secret, empty, missing) = (
        secret.to_str().unwrap(),
        empty.to_str().unwrap(),
        missing.to_str().unwrap(),
    );
    for (env, var) in [
        (
            vec![
                ("LIFELINE_AUTH_SECRET", "inline"),
                ("LIFELINE_AUTH_SECRET_FILE", secret),
            ],
            "LIFELINE_AUTH_SECRET_FILE",
        ),
        (
            vec![
                ("LIFELINE_ADMIN_TOKEN", "inline"),
                ("LIFELINE_ADMIN_TOKEN_FILE", secret),
            ],
            "LIFELINE_ADMIN_TOKEN_FILE",
        ),
        (
            vec![("LIFELINE_AUTH_SECRET_FILE", empty)],
            "LIFELINE_AUTH_SECRET_FILE",
        ),
        (
            vec![("LIFELINE_ADMIN_TOKEN_FILE", missing)],
            "LIFELINE_ADMIN_TOKEN_FILE",
        ),
    ] {
        let (code, stderr) = refused(&env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("lifeline: bad value "), "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
    // A token file satisfies the rule for a non-loopback admin address.
    let (code, stderr) = refused(&[("LIFELINE_ADMIN_ADDR", "0.0.0.0:0")]);
    assert_eq!(code, Some(2), "{stderr}");
    let server = ServerProc::start(&[
        ("LIFELINE_ADMIN_ADDR", "0.0.0.0:0"),
        ("LIFELINE_ADMIN_TOKEN_FILE", secret),
    ]);
    assert!(server
        .log_lines()
        .iter()
        .any(|l| l.contains("admin API on http://0.0.0.0:")));
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn systemd_hears_ready_once_listening_and_stopping_at_shutdown() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut server = ServerProc::start(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let ready = recv(&socket);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=listening on {}", server.addr)),
        "{ready}"
    );
    // Ready means connectable.
    drop(server.login("early"));
    server.signal(libc::SIGTERM);
    assert!(recv(&socket).starts_with("STOPPING=1"));
    assert_eq!(server.wait_exit(WAIT), Some(0));

    // The abstract namespace, as systemd may name it.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("lifeline-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let server = ServerProc::start(&[("NOTIFY_SOCKET", &format!("@{name}"))]);
    assert!(recv(&socket).starts_with("READY=1"));
    drop(server);
}

#[test]
fn with_the_demo_page_off_only_websockets_are_served() {
    let server = ServerProc::start(&[("LIFELINE_DEMO_PAGE", "off")]);
    // Every file the server embeds: the page and each module of the client.
    let every_page = lifeline::pages::PAGES.iter().map(|page| page.path);
    for path in every_page.clone() {
        let r = request(server.addr, "GET", path, "", b"");
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, "not found\n"),
            "{path}"
        );
    }
    let ws = tungstenite::client(
        format!("ws://{}/", server.addr),
        std::net::TcpStream::connect(server.addr).unwrap(),
    );
    assert_eq!(ws.expect("upgrade").1.status(), 101);
    // On by default.
    let server = ServerProc::start(&[]);
    for path in every_page {
        let r = request(server.addr, "GET", path, "", b"");
        assert_eq!(r.status, 200, "{path}");
    }
}

fn upgrade(addr: std::net::SocketAddr, origin: Option<&str>) -> (u16, bool) {
    let mut http = Http::connect(addr);
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    http.send(
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
        )
        .as_bytes(),
    );
    let r = http.response();
    let closed = r.status != 101 && http.closed();
    (r.status, closed)
}

#[test]
fn websocket_upgrades_from_origins_off_the_list_are_refused_403() {
    let server = ServerProc::start(&[(
        "LIFELINE_WS_ORIGINS",
        "https://app.example.com, http://localhost:8080",
    )]);
    assert_eq!(upgrade(server.addr, Some("https://app.example.com")).0, 101);
    assert_eq!(upgrade(server.addr, Some("http://localhost:8080")).0, 101);
    assert_eq!(upgrade(server.addr, None).0, 101); // not a browser
    assert_eq!(
        upgrade(server.addr, Some("https://evil.example")),
        (403, true)
    );
    assert_eq!(
        upgrade(server.addr, Some("http://localhost:8081")),
        (403, true)
    );
    let s = scrape(server.admin.unwrap(), None);
    assert_eq!(
        s.get("lifeline_connections_closed_total{reason=\"http\"}"),
        2.0
    );
    // Any origin by default.
    let open = ServerProc::start(&[]);
    assert_eq!(upgrade(open.addr, Some("https://evil.example")).0, 101);
}

#[test]
fn admin_connections_over_the_limit_are_answered_503() {
    let server = ServerProc::start(&[("LIFELINE_ADMIN_MAX_CONNECTIONS", "2")]);
    let admin = server.admin.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut http = Http::connect(admin);
        http.send(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(http.response().status, 200);
        held.push(http);
    }
    let mut third = Http::connect(admin);
    let r = third.response();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "too-many-connections");
    assert!(third.closed());
    drop(held);
    // Room again once one leaves.
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let mut http = Http::connect(admin);
        http.send(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        let r = http.response();
        if r.status == 200 {
            break opskit::Scrape::parse(r.text());
        }
        assert!(Instant::now() < deadline, "still refused");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(s.get("lifeline_admin_connections_refused_total") >= 1.0);
}
