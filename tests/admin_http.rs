//! The admin API as any HTTP client speaks it: `Expect: 100-continue`
//! answered before the body (and refused requests answered without it),
//! chunked request bodies however they are cut, `405` with `Allow`, and
//! curl itself posting a large body without its one-second stall.

mod common;
mod opskit;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ServerProc, WAIT};
use opskit::{on_path, Http};

fn msg_body(frame: &str) -> String {
    let start = frame.find('>').unwrap() + 1;
    let end = frame.rfind("</msg>").unwrap();
    frame[start..end].to_string()
}

#[test]
fn expect_100_continue_asks_for_the_body_once_the_head_is_accepted() {
    let server = ServerProc::start(&[]);
    let mut client = server.login("exp");
    let mut http = Http::connect(server.admin.unwrap());
    http.send(
        b"POST /clients/exp/push HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
          Content-Length: 5\r\n\r\n",
    );
    // The interim answer comes before any of the body was sent.
    let interim = http.response();
    assert_eq!(interim.status, 100);
    assert!(interim.body.is_empty());
    http.send(b"hello");
    let r = http.response();
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(msg_body(&client.expect_frame()), "hello");
    // Keep-alive: the next request on the same connection, without Expect.
    http.send(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(http.response().status, 200);
    assert!(http.pending().is_empty(), "one 100 per request");
}

#[test]
fn a_request_refused_before_its_body_gets_its_final_status_and_a_close() {
    let server = ServerProc::start(&[("LIFELINE_ADMIN_TOKEN", "tok")]);
    let admin = server.admin.unwrap();
    for (head, status, allow) in [
        // No token: 401, not 100.
        ("POST /broadcast HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", 401, None),
        (
            "POST /nowhere HTTP/1.1\r\nAuthorization: Bearer tok\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            404,
            None,
        ),
        (
            "POST /clients/a HTTP/1.1\r\nAuthorization: Bearer tok\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            405,
            Some("GET, DELETE"),
        ),
        // Too large to ever be accepted: 413 at once.
        (
            "POST /broadcast HTTP/1.1\r\nAuthorization: Bearer tok\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n",
            413,
            None,
        ),
        // An expectation the server does not know.
        (
            "POST /broadcast HTTP/1.1\r\nAuthorization: Bearer tok\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n",
            417,
            None,
        ),
    ] {
        let mut http = Http::connect(admin);
        http.send(head.as_bytes());
        let r = http.response();
        assert_eq!(r.status, status, "{head}: {}", r.text());
        assert_eq!(r.header("Allow"), allow, "{head}");
        assert_eq!(r.header("Connection"), Some("close"), "{head}");
        assert!(http.closed(), "{head}");
    }
}

#[test]
fn chunked_bodies_are_decoded_however_they_arrive() {
    let server = ServerProc::start(&[]);
    let mut client = server.login("chunky");
    let admin = server.admin.unwrap();
    let text = "a chunked push, cut in odd places: <&>";
    let mut encoded = Vec::new();
    for piece in text.as_bytes().chunks(7) {
        encoded.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        encoded.extend_from_slice(piece);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\nX-Trailer: ignored\r\n\r\n");
    let mut request =
        b"POST /clients/chunky/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    request.extend_from_slice(&encoded);
    // Byte by byte in places, so the decoder resumes mid-size, mid-data, mid-CRLF.
    let mut http = Http::connect(admin);
    for (i, piece) in request.chunks(3).enumerate() {
        http.send(piece);
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let r = http.response();
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        msg_body(&client.expect_frame()),
        "a chunked push, cut in odd places: &lt;&amp;&gt;"
    );
    // Pipelined behind it on the same connection, with 100-continue too.
    http.send(
        b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(http.response().status, 100);
    http.send(b"2\r\nhi\r\n0\r\n\r\n");
    let r = http.response();
    assert_eq!((r.status, r.json()["recipients"].as_u64()), (202, Some(1)));
    assert_eq!(msg_body(&client.expect_frame()), "hi");

    for (body, status) in [
        (&b"zz\r\nhi\r\n0\r\n\r\n"[..], 400),
        (b"2\r\nhiX\r\n", 400),
        (b"200000\r\n", 413),
    ] {
        let mut http = Http::connect(admin);
        http.send(b"POST /broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        http.send(body);
        let r = http.response();
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(body));
        assert!(http.closed());
    }
}

#[test]
fn method_not_allowed_names_the_methods_the_route_serves() {
    let server = ServerProc::start(&[]);
    let admin = server.admin.unwrap();
    for (method, path, allow) in [
        ("PUT", "/clients", "GET"),
        ("POST", "/healthz", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("POST", "/clients/someone", "GET, DELETE"),
        ("GET", "/clients/someone/push", "POST"),
        ("GET", "/broadcast", "POST"),
        ("DELETE", "/messages/push-1", "GET"),
        ("POST", "/events", "GET"),
    ] {
        let r = opskit::request(admin, method, path, "", b"");
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("Allow"), Some(allow), "{method} {path}");
        assert_eq!(r.json()["error"], "method-not-allowed");
    }
    // Not a route at all: 404, whatever the method.
    for path in ["/clients/a/b", "/messages", "/nope"] {
        assert_eq!(
            opskit::request(admin, "PUT", path, "", b"").status,
            404,
            "{path}"
        );
    }
}

/// curl sends `Expect: 100-continue` with a body over 1 KiB and waits up to
/// a second for the 100 before sending it anyway.
#[test]
fn curl_posts_a_large_body_without_waiting_for_its_expect_timeout() {
    let Some(curl) = on_path("curl") else {
        println!("SKIPPED: curl not found");
        return;
    };
    let server = ServerProc::start(&[]);
    let mut client = server.login("curly");
    let body = "c".repeat(8000);
    let started = Instant::now();
    let out = Command::new(curl)
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
        ])
        .arg(&body)
        .arg(format!(
            "http://{}/clients/curly/push",
            server.admin.unwrap()
        ))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202", "{out:?}");
    assert!(took < Duration::from_millis(900), "curl took {took:?}");
    assert_eq!(msg_body(&client.frame_within(WAIT).unwrap()), body);
}
