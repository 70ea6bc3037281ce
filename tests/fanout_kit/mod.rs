//! The fan-out tests' kit: the admin API as a broadcaster, pushes as
//! clients see them, many logged-in clients, a small WebSocket client, and
//! pipelined raw HTTP.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lifeline_wire::ws::{self, Opcode};
use serde_json::Value;

use crate::common::{self, admin_agent, attr, Client, ServerProc, WAIT};

pub struct Admin {
    pub base: String,
    agent: ureq::Agent,
}

impl Admin {
    pub fn new(server: &ServerProc) -> Admin {
        let (base, agent) = admin_agent(server, Duration::from_secs(15));
        Admin { base, agent }
    }

    /// POSTs `body` to `path`; the status and the JSON answer.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let mut response = self
            .agent
            .post(format!("{}{path}", self.base))
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("answer body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, json)
    }

    /// A broadcast of `text`: its push id, after checking the 202.
    pub fn broadcast(&self, text: &str) -> String {
        let (status, json) = self.post("/broadcast", text);
        assert_eq!(status, 202, "POST /broadcast: {json}");
        json["id"].as_str().expect("a push id").to_string()
    }

    pub fn push(&self, to: &str, text: &str) -> String {
        let (status, json) = self.post(&format!("/clients/{to}/push"), text);
        assert_eq!(status, 202, "push to {to}: {json}");
        json["id"].as_str().expect("a push id").to_string()
    }

    pub fn get_status(&self, path: &str) -> u16 {
        self.agent
            .get(format!("{}{path}", self.base))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// `(id, text)` of a `<msg from="admin">` frame; panics on anything else.
pub fn admin_msg(frame: &str) -> (String, String) {
    assert!(
        frame.starts_with("<msg from=\"admin\""),
        "not a push: {frame}"
    );
    let id = attr(frame, "id").expect("a push id");
    let start = frame.find('>').expect("a start tag") + 1;
    let end = frame.rfind("</msg>").expect("an end tag");
    (id, frame[start..end].to_string())
}

/// Clients `{prefix}{0000..n}`, each logged in.
pub fn log_in_many(server: &ServerProc, prefix: &str, n: usize) -> Vec<(String, Client)> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i:04}");
            let client = server.login(&id);
            (id, client)
        })
        .collect()
}

/// A logged-in WebSocket client over a real socket: masked text frames
/// out, the server's unmasked text messages in.
pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    pub fn login(server: &ServerProc, id: &str) -> Ws {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                matches!(
                    common::fill(&mut stream, &mut buf, deadline),
                    common::Fill::Data
                ),
                "no 101 within {WAIT:?}"
            );
        };
        assert!(
            buf.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.drain(..head_end);
        let mut ws = Ws { stream, buf };
        ws.send(&format!("<login id=\"{id}\"/>"));
        let welcome = ws.expect_text();
        assert!(welcome.starts_with("<welcome "), "{welcome}");
        ws
    }

    pub fn send(&mut self, xml: &str) {
        let mut frame = Vec::new();
        ws::write_frame(
            &mut frame,
            true,
            Opcode::Text,
            Some([1, 2, 3, 4]),
            xml.as_bytes(),
        );
        self.stream.write_all(&frame).expect("send");
    }

    pub fn expect_text(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(header) = ws::decode_header(&self.buf).expect("a server frame") {
                let end = header.header_len + header.payload_len as usize;
                if self.buf.len() >= end {
                    assert_eq!(header.opcode, Opcode::Text, "a text message");
                    let text = String::from_utf8(self.buf[header.header_len..end].to_vec())
                        .expect("UTF-8");
                    self.buf.drain(..end);
                    return text;
                }
            }
            assert!(
                matches!(
                    common::fill(&mut self.stream, &mut self.buf, deadline),
                    common::Fill::Data
                ),
                "no text message within {WAIT:?}"
            );
        }
    }
}

/// POSTs each of `bodies` to `path` on one admin connection, all in one
/// write (pipelined, so the server reads them together); the status and
/// JSON answer of each, in order.
pub fn pipelined_posts(admin: SocketAddr, path: &str, bodies: &[String]) -> Vec<(u16, Value)> {
    let mut stream = TcpStream::connect(admin).expect("connect to the admin API");
    let mut batch = String::new();
    for body in bodies {
        batch.push_str(&format!(
            "POST {path} HTTP/1.1\r\nHost: lifeline\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    stream
        .write_all(batch.as_bytes())
        .expect("send the requests");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < bodies.len() {
        if let Some((answer, len)) = http_response(&buf) {
            buf.drain(..len);
            answers.push(answer);
            continue;
        }
        assert!(
            matches!(
                common::fill(&mut stream, &mut buf, deadline),
                common::Fill::Data
            ),
            "{} of {} answers within 20 s",
            answers.len(),
            bodies.len()
        );
    }
    answers
}

/// A whole HTTP response at the front of `buf`: status and JSON body, and
/// the bytes it took.
fn http_response(buf: &[u8]) -> Option<((u16, Value), usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).expect("an ASCII head");
    let status = head.split(' ').nth(1)?.parse().expect("a status");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("a length"))
        })
        .expect("a Content-Length");
    let end = head_end + length;
    if buf.len() < end {
        return None;
    }
    let json = serde_json::from_slice(&buf[head_end..end]).unwrap_or(Value::Null);
    Some(((status, json), end))
}
