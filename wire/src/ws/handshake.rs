//! The opening handshake (RFC 6455 §4): parse the client's HTTP/1.1 request,
//! answer an upgrade with `101`, refuse anything else with a status. What a
//! plain `GET` is answered with is the caller's business: this module only
//! hands back its path.

use std::io::Write as _;

use base64::Engine as _;
use sha1::Digest as _;

/// Request line plus headers may not exceed this (431 beyond), as for the admin API.
pub const MAX_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;

/// The subprotocol echoed when the client offers it.
pub const SUBPROTOCOL: &str = "lifeline.v1";
/// RFC 6455 §1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A `Sec-WebSocket-Key` is 16 bytes in base64: 24 characters with padding.
pub const KEY_LEN: usize = 24;
/// Base64 of a 20-byte SHA-1 digest.
const ACCEPT_LEN: usize = 28;

/// What [`parse_upgrade`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake<'a> {
    /// The request head is not complete yet: read more.
    Partial,
    /// A valid opening handshake: answer with [`write_accept`]. The request
    /// is the first `len` bytes; whatever follows is already WebSocket frames.
    Upgrade {
        /// `Sec-WebSocket-Key` as sent (checked to be 16 bytes in base64).
        key: [u8; KEY_LEN],
        /// The client offered [`SUBPROTOCOL`]; the answer must echo it.
        subprotocol: bool,
        len: usize,
    },
    /// A plain `GET` (no `Upgrade: websocket`) of `path`: the request target
    /// up to any `?`, as sent (not percent-decoded), and the request is the
    /// first `len` bytes. The caller serves the path or answers
    /// [`HandshakeError::NotFound`], then closes.
    Get { path: &'a str, len: usize },
}

/// A request that is neither an upgrade nor a plain `GET`, or a `GET` of a
/// path the server does not serve; each maps to a status. Answer with
/// [`write_handshake_error`] and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("request line and headers exceed {MAX_HEAD} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("bad request: {0}")]
    Malformed(&'static str),
    #[error("unsupported Sec-WebSocket-Version: this server speaks version 13")]
    UnsupportedVersion,
    #[error("only GET is served on this port")]
    MethodNotAllowed,
    /// For the caller to return: the parser never does. The text names
    /// Lifeline's own pages, which is what every Lifeline server serves.
    #[error("not found: the demo page is at / and the client at /lifeline.js")]
    NotFound,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge => 431,
            HandshakeError::Malformed(_) => 400,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::NotFound => 404,
        }
    }
}

/// Parses the HTTP/1.1 request at the front of `buf` and decides between a
/// WebSocket upgrade, a plain `GET`, "read more", and a refusal.
///
/// A request is an upgrade attempt when its `Upgrade` header lists
/// `websocket`; the path does not matter then (proxies may rewrite it). It is
/// then held to RFC 6455 §4.2.1: HTTP/1.1, `Host`, `Connection` listing
/// `Upgrade`, `Sec-WebSocket-Version: 13` (426 otherwise) and a
/// `Sec-WebSocket-Key` of 16 bytes in base64.
pub fn parse_upgrade(buf: &[u8]) -> Result<Handshake<'_>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Handshake::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
        Err(_) => return Err(HandshakeError::Malformed("not an HTTP/1.1 request")),
    };
    if len > MAX_HEAD {
        return Err(HandshakeError::HeadTooLarge);
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }

    let mut upgrade_websocket = false;
    let mut connection_upgrade = false;
    let mut host = false;
    let mut body = false;
    let mut subprotocol = false;
    let mut version_13 = None;
    let mut key: Option<&[u8]> = None;
    for header in req.headers.iter() {
        let name = header.name;
        let value = header.value.trim_ascii();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            // Every occurrence must say 13: one version per request (§4.1).
            version_13 = Some(version_13.unwrap_or(true) && value == b"13");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.replace(value).is_some() {
                return Err(HandshakeError::Malformed("more than one Sec-WebSocket-Key"));
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            // Subprotocol names are case-sensitive tokens (§4.1, §11.5).
            subprotocol |= value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii() == SUBPROTOCOL.as_bytes());
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != b"0")
        {
            body = true;
        }
    }
    // Bytes after the head are frames (upgrade) or nothing (plain GET): a body
    // would be misread either way.
    if body {
        return Err(HandshakeError::Malformed(
            "a GET request may not carry a body",
        ));
    }
    if !upgrade_websocket {
        let target = req.path.unwrap_or("/");
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        return Ok(Handshake::Get { path, len });
    }
    if req.version != Some(1) {
        return Err(HandshakeError::Malformed(
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    if !host {
        return Err(HandshakeError::Malformed("missing Host"));
    }
    if !connection_upgrade {
        return Err(HandshakeError::Malformed(
            "Upgrade: websocket without Connection: Upgrade",
        ));
    }
    if version_13 != Some(true) {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = key.and_then(valid_key).ok_or(HandshakeError::Malformed(
        "Sec-WebSocket-Key must be 16 bytes in base64",
    ))?;
    Ok(Handshake::Upgrade {
        key,
        subprotocol,
        len,
    })
}

/// True if the comma-separated header `value` lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The key as sent, if it is 16 bytes in canonical base64.
fn valid_key(key: &[u8]) -> Option<[u8; KEY_LEN]> {
    let key: [u8; KEY_LEN] = key.try_into().ok()?;
    // 24 characters decode to at most 18 bytes; the padding must leave 16.
    let mut decoded = [0u8; 18];
    let n = base64::engine::general_purpose::STANDARD
        .decode_slice(key, &mut decoded)
        .ok()?;
    (n == 16).then_some(key)
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key ++ GUID)), §4.2.2.
pub fn accept_key(key: &[u8]) -> [u8; ACCEPT_LEN] {
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    let digest = sha1.finalize();
    let mut accept = [0u8; ACCEPT_LEN];
    // 20 bytes always encode to exactly 28 characters, so this cannot fail.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut accept);
    accept
}

/// Writes the `101 Switching Protocols` answer to a [`Handshake::Upgrade`].
pub fn write_accept(out: &mut Vec<u8>, key: &[u8], subprotocol: bool) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    if subprotocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(SUBPROTOCOL.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes the refusal of a request, with a one-line plain-text reason and
/// `Connection: close`.
pub fn write_handshake_error(out: &mut Vec<u8>, error: &HandshakeError) {
    let status = error.status();
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        _ => "Request Header Fields Too Large",
    };
    let body = format!("{error}\n");
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    match error {
        // RFC 6455 §4.4 names the versions we speak; RFC 9110 §15.5.22 wants
        // the Upgrade header (and so `Connection: upgrade`) on a 426.
        HandshakeError::UnsupportedVersion => out.extend_from_slice(
            b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n",
        ),
        HandshakeError::MethodNotAllowed => {
            out.extend_from_slice(b"Allow: GET\r\nConnection: close\r\n")
        }
        _ => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}
