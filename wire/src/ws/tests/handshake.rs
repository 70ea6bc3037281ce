//! The opening handshake: RFC 6455's example, header lists, every refusal's
//! status, and plain `GET`s.

use super::*;

fn request(extra: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[test]
fn rfc_example_handshake() {
    assert_eq!(
        &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let req = request(
        "Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, lifeline.v1\r\n\
         Sec-WebSocket-Version: 13\r\n",
    );
    let mut buf = req.clone().into_bytes();
    buf.extend_from_slice(&masked(true, Opcode::Text, b"<bye/>"));
    let Ok(Handshake::Upgrade {
        key,
        subprotocol,
        len,
    }) = parse_upgrade(&buf)
    else {
        panic!("not an upgrade: {:?}", parse_upgrade(&buf));
    };
    assert!(subprotocol);
    assert_eq!(len, req.len());
    assert_eq!(
        feed_whole(&buf[len..]).unwrap(),
        [Event::Message(b"<bye/>".to_vec())]
    );
    let mut out = Vec::new();
    write_accept(&mut out, &key, subprotocol);
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
          Sec-WebSocket-Protocol: lifeline.v1\r\n\r\n"
    );
    out.clear();
    write_accept(&mut out, &key, false);
    assert!(!out.windows(22).any(|w| w == b"Sec-WebSocket-Protocol"));
    for cut in 0..req.len() {
        assert_eq!(
            parse_upgrade(&buf[..cut]),
            Ok(Handshake::Partial),
            "cut {cut}"
        );
    }
}

#[test]
fn handshake_header_tokens_are_lists() {
    let req =
        "GET / HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n\
               sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\nsec-websocket-version: 13\r\n\
               Sec-WebSocket-Protocol: other\r\n\r\n";
    assert!(matches!(
        parse_upgrade(req.as_bytes()),
        Ok(Handshake::Upgrade {
            subprotocol: false,
            ..
        })
    ));
}

#[test]
fn handshake_refusals() {
    let status = |req: &str| parse_upgrade(req.as_bytes()).unwrap_err().status();
    assert_eq!(status(&request("Sec-WebSocket-Version: 8\r\n")), 426);
    assert_eq!(status(&request("")), 426);
    assert_eq!(
        status(&request(
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 8\r\n"
        )),
        426
    );
    let bad_key =
        request("Sec-WebSocket-Version: 13\r\n").replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
    assert_eq!(status(&bad_key), 400);
    // 24 characters, but 17 bytes would need other padding.
    let long_key = request("Sec-WebSocket-Version: 13\r\n")
        .replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=A");
    assert_eq!(status(&long_key), 400);
    let no_connection =
        request("Sec-WebSocket-Version: 13\r\n").replace("Connection: Upgrade\r\n", "");
    assert_eq!(status(&no_connection), 400);
    let no_host =
        request("Sec-WebSocket-Version: 13\r\n").replace("Host: server.example.com\r\n", "");
    assert_eq!(status(&no_host), 400);
    let http10 = request("Sec-WebSocket-Version: 13\r\n").replace("HTTP/1.1", "HTTP/1.0");
    assert_eq!(status(&http10), 400);
    assert_eq!(status("POST / HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
    assert_eq!(
        status("GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
        400
    );
    assert_eq!(status("GARBAGE\0\r\n\r\n"), 400);
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(status(&big), 431);

    let mut out = Vec::new();
    write_handshake_error(&mut out, &HandshakeError::UnsupportedVersion);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{text}"
    );
}

#[test]
fn plain_gets_hand_back_their_path() {
    let get = |req: &str| match parse_upgrade(req.as_bytes()) {
        Ok(Handshake::Get { path, len }) => {
            assert_eq!(len, req.len());
            path.to_owned()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(get("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "/");
    assert_eq!(get("GET /index.html?x=1 HTTP/1.0\r\n\r\n"), "/index.html");
    assert_eq!(
        get("GET /lifeline.js HTTP/1.1\r\nHost: x\r\n\r\n"),
        "/lifeline.js"
    );
    // Any path: which ones exist is the server's business.
    assert_eq!(
        get("GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n"),
        "/favicon.ico"
    );
    let mut out = Vec::new();
    write_handshake_error(&mut out, &HandshakeError::NotFound);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: 64\r\nConnection: close\r\n\r\n\
         not found: the demo page is at / and the client at /lifeline.js\n"
    );
}
