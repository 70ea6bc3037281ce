//! WebSocket (RFC 6455) for the XML stream on the same port: the opening
//! handshake, frames in and out, and message reassembly. Bytes only: no I/O,
//! no policy beyond what RFC 6455 asks of a server.
//!
//! Inbound, a [`Decoder`] walks the raw bytes a connection has read. It
//! unmasks data in place and hands back each piece of a text message as soon
//! as it arrives, so the caller appends it straight to its XML stream buffer
//! (the stream is the concatenation of the text messages) and keeps only the
//! bytes not consumed: at most a partial frame header or one partial control
//! frame ([`MAX_CONTROL_FRAME`] bytes). The decoder itself is a few bytes of
//! state, and a cut anywhere in the byte stream gives the same result.
//!
//! Outbound, server frames are unmasked and final: one XML frame per text
//! message ([`write_text`], or [`wrap_text`] around bytes already written),
//! plus [`write_pong`] and [`write_close`].
//!
//! The handshake half ([`parse_upgrade`]) tells a WebSocket upgrade from a
//! plain `GET` of the demo page or the browser client, both embedded in the
//! binary from `web/`.

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

/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;
/// RFC 6455 §5.5: control frames carry at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// A whole client control frame: 2 bytes, a 4-byte mask, 125 bytes. This is
/// the most the caller may have to keep while a control frame arrives.
pub const MAX_CONTROL_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;
/// A close reason fits beside the 2-byte code in a control frame.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

static INDEX_HTML: &str = include_str!("../web/index.html");
static LIFELINE_JS: &str = include_str!("../web/lifeline.js");

// ---------------------------------------------------------------------------
// Opening handshake

/// A file served to a plain `GET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `GET /` or `GET /index.html`: the demo page.
    Index,
    /// `GET /lifeline.js`: the browser client.
    Script,
}

impl Page {
    pub fn body(self) -> &'static str {
        match self {
            Page::Index => INDEX_HTML,
            Page::Script => LIFELINE_JS,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Page::Index => "text/html; charset=utf-8",
            // Browsers refuse a module script served under any other type.
            Page::Script => "text/javascript; charset=utf-8",
        }
    }
}

/// What [`parse_upgrade`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
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
    /// A plain `GET` of an embedded file: answer with [`write_page`], then
    /// close (the response says `Connection: close`).
    Page { page: Page, len: usize },
}

/// A request that is neither an upgrade nor a page; each maps to a status.
/// Answer with [`write_handshake_error`] and close.
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
/// WebSocket upgrade, an embedded page, "read more", and a refusal.
///
/// A request is an upgrade attempt when its `Upgrade` header lists
/// `websocket`; the path does not matter then (proxies may rewrite it). It is
/// then held to RFC 6455 §4.2.1: HTTP/1.1, `Host`, `Connection` listing
/// `Upgrade`, `Sec-WebSocket-Version: 13` (426 otherwise) and a
/// `Sec-WebSocket-Key` of 16 bytes in base64.
pub fn parse_upgrade(buf: &[u8]) -> Result<Handshake, HandshakeError> {
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
    // Bytes after the head are frames (upgrade) or nothing (page): a body
    // would be misread either way.
    if body {
        return Err(HandshakeError::Malformed(
            "a GET request may not carry a body",
        ));
    }
    if !upgrade_websocket {
        let target = req.path.unwrap_or("/");
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        let page = match path {
            "/" | "/index.html" => Page::Index,
            "/lifeline.js" => Page::Script,
            _ => return Err(HandshakeError::NotFound),
        };
        return Ok(Handshake::Page { page, len });
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

/// Writes a `200` carrying `page`, with `Connection: close`.
pub fn write_page(out: &mut Vec<u8>, page: Page) {
    let body = page.body().as_bytes();
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        page.content_type(),
        body.len()
    );
    out.extend_from_slice(body);
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

// ---------------------------------------------------------------------------
// Frames

/// The opcodes of RFC 6455 §5.2; the others are reserved and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    pub fn from_u8(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The close codes this server sends (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The purpose of the connection is fulfilled (`bye`).
    Normal = 1000,
    /// The server is shutting down.
    GoingAway = 1001,
    ProtocolError = 1002,
    /// A binary message: the stream is XML text.
    UnsupportedData = 1003,
    /// A text message that is not UTF-8.
    InvalidPayload = 1007,
    /// A message longer than the frame limit.
    TooBig = 1009,
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.as_u16()
    }
}

/// True for a code a peer may put in a Close frame (§7.4): the defined codes
/// that may go on the wire, and the ranges for libraries and applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why the client's frames are refused. Every variant closes the connection
/// with a Close frame carrying [`WsError::close_code`]; the decoder is not
/// used again afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("client frames must be masked")]
    Unmasked,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frames cannot be fragmented")]
    FragmentedControl,
    #[error("control frame payload over {MAX_CONTROL_PAYLOAD} bytes")]
    ControlTooLong,
    #[error("64-bit payload length with the most significant bit set")]
    LengthOverflow,
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new message while a fragmented message is still open")]
    MessageInterleaved,
    #[error("close frame with a 1-byte payload")]
    CloseTooShort,
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    #[error("binary messages are not accepted: the stream is XML text")]
    Binary,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("message longer than {max} bytes")]
    TooBig { max: usize },
}

impl WsError {
    pub fn close_code(self) -> CloseCode {
        match self {
            WsError::Binary => CloseCode::UnsupportedData,
            WsError::InvalidUtf8 => CloseCode::InvalidPayload,
            WsError::TooBig { .. } => CloseCode::TooBig,
            _ => CloseCode::ProtocolError,
        }
    }
}

/// A frame header as found on the wire (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    /// The masking key; every client frame has one.
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// 2 to [`MAX_HEADER_LEN`] bytes.
    pub header_len: usize,
}

/// Parses the frame header at the front of `buf`: `Ok(None)` until it is
/// complete. Checks what the header alone can tell (reserved bits and
/// opcodes, control frames final and short, a 64-bit length below 2^63),
/// each as soon as the byte that carries it is there. Masking and size
/// limits are the [`Decoder`]'s business, so this also reads server frames.
pub fn decode_header(buf: &[u8]) -> Result<Option<FrameHeader>, WsError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    // No extension is ever negotiated, so RSV1-3 must be clear (§5.2).
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(WsError::UnknownOpcode(b0 & 0x0f))?;
    let fin = b0 & 0x80 != 0;
    if opcode.is_control() && !fin {
        return Err(WsError::FragmentedControl);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    let len7 = b1 & 0x7f;
    if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(WsError::ControlTooLong);
    }
    // Lengths need not be minimally encoded to be accepted: the RFC asks
    // senders for that, and nothing here depends on it.
    let (payload_len, mut header_len) = match len7 {
        126 => {
            let Some(&[hi, lo]) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([hi, lo])), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(WsError::LengthOverflow);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let Some(&[a, b, c, d]) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([a, b, c, d])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// XORs `payload` with the masking `key` (§5.3), in place; masking and
/// unmasking are the same operation. `offset` is the position of `payload[0]`
/// within its frame's payload, so a payload can be unmasked in pieces.
pub fn unmask(payload: &mut [u8], key: [u8; 4], offset: usize) {
    let r = offset % 4;
    let key = [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]];
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        // Copies through an array compile to one unaligned load and store.
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the key phase is still 0.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// What [`Decoder::decode`] found at the front of the buffer. Every variant
/// but `NeedMore` consumed at least one byte; `NeedMore` consumed none.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// The front of the buffer is a partial header or a partial control
    /// frame (or the buffer is empty): read more, keep the bytes.
    NeedMore,
    /// The next piece of a text message, unmasked and valid UTF-8 so far (a
    /// character may be cut at its end): append it to the XML stream.
    /// `message_end`: the message is complete (and wholly valid UTF-8).
    Text {
        consumed: usize,
        payload: &'a [u8],
        message_end: bool,
    },
    /// Answer with [`write_pong`] carrying the same payload.
    Ping {
        consumed: usize,
        payload: &'a [u8],
    },
    Pong {
        consumed: usize,
        payload: &'a [u8],
    },
    /// The client is closing: answer with [`write_close`] (echoing `code`,
    /// or 1000 when there is none), then close the socket.
    Close {
        consumed: usize,
        code: Option<u16>,
        reason: &'a str,
    },
}

/// The inbound state of one WebSocket connection: the data frame being
/// received and the text message it belongs to. Small and `Copy`; payload
/// bytes are never held here.
#[derive(Debug, Default, Clone, Copy)]
pub struct Decoder {
    /// Payload bytes of the current data frame still to come.
    remaining: u64,
    /// Bytes of the open message so far, the current frame's whole length included.
    message_len: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame delivered so far, modulo 4.
    mask_phase: u8,
    /// The current data frame is the message's last.
    fin: bool,
    /// A text message has begun and its final frame has not ended.
    in_message: bool,
    utf8: Utf8Check,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// True between the first frame of a text message and the end of its
    /// final frame, i.e. while the XML stream may end mid-message.
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// Decodes the front of `buf`, the connection's unconsumed input, in
    /// place. The caller drops the `consumed` bytes and calls again until
    /// [`Inbound::NeedMore`]. `max_message` bounds every text message (the
    /// sum of its frames); control frames are whole before they are reported,
    /// data is reported piece by piece as it arrives. Bytes not consumed are
    /// never modified. Text is checked as it arrives; at a UTF-8 fault the
    /// whole characters before it are delivered first and the error comes on
    /// the next call, so how the stream was cut never changes what reaches
    /// the XML stream.
    pub fn decode<'a>(
        &mut self,
        buf: &'a mut [u8],
        max_message: usize,
    ) -> Result<Inbound<'a>, WsError> {
        if self.remaining > 0 {
            return self.data(buf, 0);
        }
        let Some(header) = decode_header(buf)? else {
            return Ok(Inbound::NeedMore);
        };
        let mask = header.mask.ok_or(WsError::Unmasked)?;
        if header.opcode.is_control() {
            return control(buf, header, mask);
        }
        match (header.opcode, self.in_message) {
            (Opcode::Continuation, false) => return Err(WsError::UnexpectedContinuation),
            (Opcode::Text | Opcode::Binary, true) => return Err(WsError::MessageInterleaved),
            (Opcode::Binary, false) => return Err(WsError::Binary),
            _ => {}
        }
        let max = u64::try_from(max_message).unwrap_or(u64::MAX);
        let message_len = self.message_len.saturating_add(header.payload_len);
        if message_len > max {
            return Err(WsError::TooBig { max: max_message });
        }
        self.message_len = message_len;
        self.remaining = header.payload_len;
        self.mask = mask;
        self.mask_phase = 0;
        self.fin = header.fin;
        self.in_message = true;
        self.data(buf, header.header_len)
    }

    /// Delivers what `buf` holds of the current data frame's payload, which
    /// starts at `header_len` (0 when the header was consumed earlier).
    fn data<'a>(&mut self, buf: &'a mut [u8], header_len: usize) -> Result<Inbound<'a>, WsError> {
        let available = buf.len().saturating_sub(header_len);
        // `remaining` may exceed usize only on a 32-bit target; min() keeps
        // the conversion lossless either way.
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(available);
        if n == 0 && header_len == 0 {
            return Ok(Inbound::NeedMore);
        }
        let phase = usize::from(self.mask_phase);
        let payload = &mut buf[header_len..header_len + n];
        unmask(payload, self.mask, phase);
        let ends_message = n as u64 == self.remaining && self.fin;
        let n = match self.utf8.check(payload, ends_message) {
            Ok(()) => n,
            Err(0) => return Err(WsError::InvalidUtf8),
            // Deliver the whole characters before the fault now and refuse
            // on the next call, so where the stream was cut never changes
            // what reaches the XML stream. The refused rest goes back to its
            // masked form: bytes not consumed are never modified.
            Err(valid) => {
                unmask(&mut payload[valid..], self.mask, phase + valid);
                valid
            }
        };
        let payload = &buf[header_len..header_len + n];
        self.mask_phase = ((phase + n) % 4) as u8;
        self.remaining -= n as u64;
        let message_end = self.remaining == 0 && self.fin;
        if message_end {
            self.in_message = false;
            self.message_len = 0;
        }
        Ok(Inbound::Text {
            consumed: header_len + n,
            payload,
            message_end,
        })
    }
}

/// A whole control frame, or `NeedMore` until it is all in `buf`: its
/// payload is at most 125 bytes, so waiting costs little.
fn control<'a>(
    buf: &'a mut [u8],
    header: FrameHeader,
    mask: [u8; 4],
) -> Result<Inbound<'a>, WsError> {
    // decode_header checked payload_len <= 125.
    let end = header.header_len + header.payload_len as usize;
    let Some(payload) = buf.get_mut(header.header_len..end) else {
        return Ok(Inbound::NeedMore);
    };
    unmask(payload, mask, 0);
    let payload: &'a [u8] = payload;
    Ok(match header.opcode {
        Opcode::Ping => Inbound::Ping {
            consumed: end,
            payload,
        },
        Opcode::Pong => Inbound::Pong {
            consumed: end,
            payload,
        },
        _ => {
            let (code, reason) = close_payload(payload)?;
            Inbound::Close {
                consumed: end,
                code,
                reason,
            }
        }
    })
}

/// The code and reason of a Close frame (§5.5.1): empty, or a valid code
/// followed by UTF-8.
fn close_payload(payload: &[u8]) -> Result<(Option<u16>, &str), WsError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(WsError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

/// Incremental UTF-8 validation of one text message. A character cut by a
/// frame or read boundary is carried over in at most 3 bytes; an invalid
/// sequence is refused as soon as it is seen, not at the message's end.
#[derive(Debug, Default, Clone, Copy)]
struct Utf8Check {
    pending: [u8; 3],
    pending_len: u8,
}

impl Utf8Check {
    /// Checks the next piece of the message; `ends_message`: nothing follows
    /// it, so a character still cut at its end is invalid. On a fault,
    /// `Err(k)`: `bytes[..k]` are whole valid characters, and the state is
    /// that after them, so checking may resume at `bytes[k]`.
    fn check(&mut self, bytes: &[u8], ends_message: bool) -> Result<(), usize> {
        let have = usize::from(self.pending_len);
        let mut done = 0;
        if have > 0 {
            // Complete the cut character first, from the front of `bytes`.
            let width = utf8_width(self.pending[0]);
            let take = width.saturating_sub(have).min(bytes.len());
            let mut char_bytes = [0u8; 4];
            char_bytes[..have].copy_from_slice(&self.pending[..have]);
            char_bytes[have..have + take].copy_from_slice(&bytes[..take]);
            let char_bytes = &char_bytes[..have + take];
            match std::str::from_utf8(char_bytes) {
                Ok(_) => done = take,
                // Still cut: `bytes` ran out before the character did.
                Err(e) if e.error_len().is_none() && !ends_message => return self.keep(char_bytes),
                Err(_) => return Err(0),
            }
        }
        let rest = &bytes[done..];
        match std::str::from_utf8(rest) {
            Ok(_) => {
                self.pending_len = 0;
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !ends_message => {
                self.keep(&rest[e.valid_up_to()..])
            }
            Err(e) => {
                self.pending_len = 0;
                Err(done + e.valid_up_to())
            }
        }
    }

    /// Holds the valid start of a cut character: 1 to 3 bytes, as
    /// `from_utf8` reports no more for an incomplete sequence.
    fn keep(&mut self, start: &[u8]) -> Result<(), usize> {
        let held = self.pending.get_mut(..start.len()).ok_or(0usize)?;
        held.copy_from_slice(start);
        self.pending_len = start.len() as u8;
        Ok(())
    }
}

/// The length of the character a UTF-8 lead byte starts.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// Writes one frame. Server frames have no `mask`; a client's must.
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let (header, header_len) = encode_header(fin, opcode, mask, payload.len());
    out.extend_from_slice(&header[..header_len]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        unmask(&mut out[start..], mask, 0);
    }
}

fn encode_header(
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload_len: usize,
) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut header = [0u8; MAX_HEADER_LEN];
    header[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = match payload_len {
        0..=125 => {
            header[1] = mask_bit | payload_len as u8;
            2
        }
        126..=0xffff => {
            header[1] = mask_bit | 126;
            header[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            header[1] = mask_bit | 127;
            header[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    };
    if let Some(mask) = mask {
        header[len..len + 4].copy_from_slice(&mask);
        len += 4;
    }
    (header, len)
}

/// Writes one XML frame as one final, unmasked text message.
pub fn write_text(out: &mut Vec<u8>, payload: &[u8]) {
    write_frame(out, true, Opcode::Text, None, payload);
}

/// Turns everything appended to `out` since `start` into one text message,
/// so a reply can be encoded straight into the outbound buffer (by the
/// `wire` writers) and framed afterwards, without a copy elsewhere.
pub fn wrap_text(out: &mut Vec<u8>, start: usize) {
    let start = start.min(out.len());
    let (header, header_len) = encode_header(true, Opcode::Text, None, out.len() - start);
    out.extend_from_slice(&header[..header_len]);
    // Moves the header from the end to `start`: one memmove of the payload,
    // which is one XML frame.
    out[start..].rotate_right(header_len);
}

/// Writes the answer to a Ping. A control frame carries at most 125 bytes;
/// a longer `payload` is cut there (a decoded Ping never is longer).
pub fn write_pong(out: &mut Vec<u8>, payload: &[u8]) {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    write_frame(out, true, Opcode::Pong, None, payload);
}

/// Writes a Close frame with `code` and `reason`, the reason cut to the 123
/// bytes a control frame leaves it (at a character boundary).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    write_frame(out, true, Opcode::Close, None, &payload[..2 + cut]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// What a connection makes of its input, owned so runs can be compared.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Message(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    /// Feeds `reads` one after another the way a connection would: keep
    /// the unconsumed tail, append the next read, decode until `NeedMore`.
    fn feed(reads: &[&[u8]], max: usize) -> Result<Vec<Event>, WsError> {
        let mut decoder = Decoder::new();
        let mut input = Vec::new();
        let mut message = Vec::new();
        let mut events = Vec::new();
        for read in reads {
            input.extend_from_slice(read);
            let mut pos = 0;
            loop {
                let (consumed, event) = match decoder.decode(&mut input[pos..], max)? {
                    Inbound::NeedMore => break,
                    Inbound::Text {
                        consumed,
                        payload,
                        message_end,
                    } => {
                        message.extend_from_slice(payload);
                        let done =
                            message_end.then(|| Event::Message(std::mem::take(&mut message)));
                        (consumed, done)
                    }
                    Inbound::Ping { consumed, payload } => {
                        (consumed, Some(Event::Ping(payload.to_vec())))
                    }
                    Inbound::Pong { consumed, payload } => {
                        (consumed, Some(Event::Pong(payload.to_vec())))
                    }
                    Inbound::Close {
                        consumed,
                        code,
                        reason,
                    } => (consumed, Some(Event::Close(code, reason.to_owned()))),
                };
                assert!(consumed > 0);
                pos += consumed;
                events.extend(event);
            }
            input.drain(..pos);
            assert!(input.len() <= MAX_HEADER_LEN.max(MAX_CONTROL_FRAME));
        }
        Ok(events)
    }

    fn feed_whole(stream: &[u8]) -> Result<Vec<Event>, WsError> {
        feed(&[stream], 1 << 20)
    }

    fn masked(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, fin, opcode, Some(MASK), payload);
        out
    }

    fn close_code(stream: &[u8]) -> u16 {
        feed_whole(stream).unwrap_err().close_code().as_u16()
    }

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
        let req = "GET / HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n\
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
        let bad_key = request("Sec-WebSocket-Version: 13\r\n")
            .replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
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
        assert_eq!(status("GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
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
    fn plain_gets_serve_the_embedded_files() {
        let page = |req: &str| match parse_upgrade(req.as_bytes()) {
            Ok(Handshake::Page { page, len }) => {
                assert_eq!(len, req.len());
                page
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(page("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Page::Index);
        assert_eq!(page("GET /index.html?x=1 HTTP/1.0\r\n\r\n"), Page::Index);
        assert_eq!(
            page("GET /lifeline.js HTTP/1.1\r\nHost: x\r\n\r\n"),
            Page::Script
        );
        let mut out = Vec::new();
        write_page(&mut out, Page::Script);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Content-Type: text/javascript"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains("export class LifelineClient"));
        assert!(Page::Index.body().contains("lifeline.js"));
    }

    #[test]
    fn rfc_frame_examples() {
        // §5.7: a single-frame unmasked text message, as the server writes it.
        let mut out = Vec::new();
        write_text(&mut out, b"Hello");
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // A single-frame masked text message.
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(masked(true, Opcode::Text, b"Hello"), hello);
        assert_eq!(
            feed_whole(&hello).unwrap(),
            [Event::Message(b"Hello".to_vec())]
        );
        // A fragmented unmasked text message: the header reads; the decoder
        // refuses it from a client.
        let fragmented = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let first = decode_header(&fragmented).unwrap().unwrap();
        assert_eq!(
            first,
            FrameHeader {
                fin: false,
                opcode: Opcode::Text,
                mask: None,
                payload_len: 3,
                header_len: 2
            }
        );
        let second = decode_header(&fragmented[5..]).unwrap().unwrap();
        assert_eq!(
            (second.fin, second.opcode, second.payload_len),
            (true, Opcode::Continuation, 2)
        );
        assert_eq!(close_code(&fragmented), 1002);
        let mut stream = masked(false, Opcode::Text, b"Hel");
        stream.extend(masked(true, Opcode::Continuation, b"lo"));
        assert_eq!(
            feed_whole(&stream).unwrap(),
            [Event::Message(b"Hello".to_vec())]
        );
        // Unmasked Ping, and the masked Pong answering it.
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(decode_header(&ping).unwrap().unwrap().opcode, Opcode::Ping);
        assert_eq!(close_code(&ping), 1002);
        let client_ping = masked(true, Opcode::Ping, b"Hello");
        assert_eq!(
            feed_whole(&client_ping).unwrap(),
            [Event::Ping(b"Hello".to_vec())]
        );
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(feed_whole(&pong).unwrap(), [Event::Pong(b"Hello".to_vec())]);
        out.clear();
        write_pong(&mut out, b"Hello");
        assert_eq!(out, [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // 256 bytes and 64 KiB in one unmasked binary message: the lengths.
        let h256 = decode_header(&[0x82, 0x7e, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h256.payload_len, h256.header_len), (256, 4));
        let h64k = decode_header(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h64k.payload_len, h64k.header_len), (65536, 10));
        for (len, header) in [
            (256, &[0x81, 0x7e, 0x01, 0x00][..]),
            (65536, &[0x81, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0][..]),
        ] {
            let text = vec![b'x'; len];
            out.clear();
            write_text(&mut out, &text);
            assert_eq!(&out[..header.len()], header);
            assert_eq!(out.len(), header.len() + len);
            let stream = masked(true, Opcode::Text, &text);
            assert_eq!(feed_whole(&stream).unwrap(), [Event::Message(text)]);
            let mut binary = stream.clone();
            binary[0] = 0x82;
            assert_eq!(close_code(&binary), 1003);
        }
    }

    #[test]
    fn every_split_gives_the_same_result() {
        let mut stream = masked(false, Opcode::Text, "<msg to=\"b\">h\u{e9}".as_bytes());
        stream.extend(masked(true, Opcode::Ping, b"p"));
        stream.extend(masked(false, Opcode::Continuation, &[]));
        stream.extend(masked(
            true,
            Opcode::Continuation,
            "llo \u{1F600}</msg>".as_bytes(),
        ));
        stream.extend(masked(true, Opcode::Text, &[b'y'; 300]));
        stream.extend(masked(true, Opcode::Pong, &[]));
        let mut close = vec![0x03, 0xe8];
        close.extend_from_slice("fin \u{e9}".as_bytes());
        stream.extend(masked(true, Opcode::Close, &close));
        let whole = feed_whole(&stream).unwrap();
        assert_eq!(
            whole,
            [
                Event::Ping(b"p".to_vec()),
                Event::Message(
                    "<msg to=\"b\">h\u{e9}llo \u{1F600}</msg>"
                        .as_bytes()
                        .to_vec()
                ),
                Event::Message(vec![b'y'; 300]),
                Event::Pong(Vec::new()),
                Event::Close(Some(1000), "fin \u{e9}".to_owned()),
            ]
        );
        for a in 0..=stream.len() {
            assert_eq!(
                feed(&[&stream[..a], &stream[a..]], 1 << 20).unwrap(),
                whole,
                "cut {a}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(feed(&bytes, 1 << 20).unwrap(), whole);
    }

    #[test]
    fn violations_close_with_their_codes() {
        // Unmasked, reserved bits, reserved opcodes.
        assert_eq!(close_code(&[0x81, 0x00]), 1002);
        assert_eq!(close_code(&[0xc1, 0x80, 0, 0, 0, 0]), 1002);
        assert_eq!(close_code(&[0x83, 0x80, 0, 0, 0, 0]), 1002);
        assert_eq!(close_code(&[0x8b, 0x80, 0, 0, 0, 0]), 1002);
        // The first byte is enough to refuse.
        assert_eq!(feed_whole(&[0x93]), Err(WsError::ReservedBits));
        // Fragmented control frame; control payload of 126 bytes.
        assert_eq!(close_code(&masked(false, Opcode::Ping, b"x")), 1002);
        assert_eq!(close_code(&masked(true, Opcode::Ping, &[0; 126])), 1002);
        // A 64-bit length with the top bit set.
        assert_eq!(close_code(&[0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]), 1002);
        // Continuation without a message; a new message inside one.
        assert_eq!(close_code(&masked(true, Opcode::Continuation, b"x")), 1002);
        let mut interleaved = masked(false, Opcode::Text, b"a");
        interleaved.extend(masked(true, Opcode::Text, b"b"));
        assert_eq!(close_code(&interleaved), 1002);
        let mut binary_inside = masked(false, Opcode::Text, b"a");
        binary_inside.extend(masked(true, Opcode::Binary, b"b"));
        assert_eq!(close_code(&binary_inside), 1002);
        // Binary.
        assert_eq!(close_code(&masked(true, Opcode::Binary, b"x")), 1003);
        // Close payloads: one byte, a code that may not be sent, bad UTF-8.
        assert_eq!(close_code(&masked(true, Opcode::Close, &[3])), 1002);
        for code in [999u16, 1004, 1005, 1006, 1015, 2999, 5000] {
            let payload = code.to_be_bytes();
            assert_eq!(
                close_code(&masked(true, Opcode::Close, &payload)),
                1002,
                "{code}"
            );
        }
        assert_eq!(
            close_code(&masked(true, Opcode::Close, &[0x03, 0xe8, 0xff])),
            1007
        );
        assert_eq!(
            feed_whole(&masked(true, Opcode::Close, &[])).unwrap(),
            [Event::Close(None, String::new())]
        );
        // Too big: one frame, or the sum of fragments; known from the header.
        assert_eq!(
            feed(&[&masked(true, Opcode::Text, &[b'a'; 11])], 10),
            Err(WsError::TooBig { max: 10 })
        );
        assert_eq!(
            feed(&[&masked(true, Opcode::Text, &[b'a'; 11])[..6]], 10)
                .unwrap_err()
                .close_code(),
            CloseCode::TooBig
        );
        let mut fragments = masked(false, Opcode::Text, &[b'a'; 6]);
        fragments.extend(masked(true, Opcode::Continuation, &[b'a'; 5]));
        assert_eq!(
            feed(&[&fragments], 10).unwrap_err().close_code().as_u16(),
            1009
        );
        assert_eq!(
            feed(&[&fragments], 11).unwrap(),
            [Event::Message(vec![b'a'; 11])]
        );
        // The limit is per message: two 10-byte messages are fine.
        let mut two = masked(true, Opcode::Text, &[b'a'; 10]);
        two.extend(masked(true, Opcode::Text, &[b'a'; 10]));
        assert_eq!(feed(&[&two], 10).unwrap().len(), 2);
    }

    #[test]
    fn utf8_is_checked_per_message_across_fragments() {
        let emoji = "\u{1F600}".as_bytes();
        for cut in 1..4 {
            let mut stream = masked(false, Opcode::Text, &emoji[..cut]);
            stream.extend(masked(true, Opcode::Ping, b""));
            stream.extend(masked(true, Opcode::Continuation, &emoji[cut..]));
            let events = feed_whole(&stream).unwrap();
            assert_eq!(events[1], Event::Message(emoji.to_vec()), "cut {cut}");
            // A character may not run into the next message.
            let mut stream = masked(true, Opcode::Text, &emoji[..cut]);
            stream.extend(masked(true, Opcode::Text, &emoji[cut..]));
            assert_eq!(close_code(&stream), 1007, "cut {cut}");
        }
        // Invalid bytes, overlong forms, surrogates, beyond U+10FFFF.
        for bad in [
            &b"\xff"[..],
            b"\xc0\xaf",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"ok\x80",
        ] {
            assert_eq!(
                close_code(&masked(true, Opcode::Text, bad)),
                1007,
                "{bad:?}"
            );
        }
        // The whole characters before a fault are delivered first, whatever
        // the cuts, so the frames they complete are the same.
        let stream = masked(true, Opcode::Text, b"<a/>\xe2\x28");
        for cut in 0..stream.len() {
            let mut decoder = Decoder::new();
            let mut input = stream[..cut].to_vec();
            let mut delivered = Vec::new();
            while let Ok(Inbound::Text {
                consumed, payload, ..
            }) = decoder.decode(&mut input, 64)
            {
                delivered.extend_from_slice(payload);
                input.drain(..consumed);
            }
            input.extend_from_slice(&stream[cut..]);
            let error = loop {
                match decoder.decode(&mut input, 64) {
                    Ok(Inbound::Text {
                        consumed, payload, ..
                    }) => {
                        delivered.extend_from_slice(payload);
                        input.drain(..consumed);
                    }
                    other => break other,
                }
            };
            assert_eq!(error, Err(WsError::InvalidUtf8), "cut {cut}");
            assert!(
                delivered.starts_with(b"<a/>") && delivered.len() <= 5,
                "cut {cut}"
            );
        }
        // Refused as soon as seen, before the message ends (fail fast).
        let early = masked(false, Opcode::Text, b"\xe0\x80");
        assert_eq!(close_code(&early), 1007);
        let mut split_bad = masked(false, Opcode::Text, b"\xf0");
        split_bad.extend(masked(false, Opcode::Continuation, b"\x28"));
        assert_eq!(close_code(&split_bad), 1007);
    }

    #[test]
    fn unmask_in_pieces_matches_bytewise() {
        let original: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let key = [1, 2, 3, 250];
        let expected: Vec<u8> = original
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        for piece in [1, 3, 7, 8, 9, 64, 1000] {
            let mut data = original.clone();
            let mut offset = 0;
            for chunk in data.chunks_mut(piece) {
                unmask(chunk, key, offset);
                offset += chunk.len();
            }
            assert_eq!(data, expected, "pieces of {piece}");
        }
    }

    #[test]
    fn server_frames_are_byte_exact() {
        let mut out = b"keep".to_vec();
        let start = out.len();
        out.extend_from_slice(b"<heartbeat mode=\"pong\"/>");
        wrap_text(&mut out, start);
        let mut expected = b"keep".to_vec();
        write_text(&mut expected, b"<heartbeat mode=\"pong\"/>");
        assert_eq!(out, expected);
        for len in [125, 126, 65535, 65536] {
            let mut a = Vec::new();
            a.extend(std::iter::repeat_n(b'z', len));
            wrap_text(&mut a, 0);
            let mut b = Vec::new();
            write_text(&mut b, &vec![b'z'; len]);
            assert_eq!(a, b, "{len}");
        }
        out.clear();
        write_close(&mut out, CloseCode::Normal.into(), "bye");
        assert_eq!(out, [0x88, 0x05, 0x03, 0xe8, b'b', b'y', b'e']);
        out.clear();
        write_close(&mut out, 1009, &"\u{e9}".repeat(100));
        assert_eq!(out.len(), 2 + 2 + 122);
        let header = decode_header(&out).unwrap().unwrap();
        let (code, reason) = close_payload(&out[header.header_len..]).unwrap();
        assert_eq!((code, reason.len()), (Some(1009), 122));
        out.clear();
        write_pong(&mut out, &[7; 200]);
        assert_eq!(out.len(), 2 + 125);
    }

    #[test]
    fn decoder_state_is_small() {
        assert!(std::mem::size_of::<Decoder>() <= 32);
    }

    /// One client message for the property test: a text message cut into
    /// fragments at arbitrary byte offsets (characters included), each
    /// optionally followed by a control frame, or a lone control frame.
    #[derive(Debug, Clone)]
    enum Sent {
        Text {
            text: String,
            cuts: Vec<usize>,
            pings: Vec<Option<Vec<u8>>>,
        },
        Ping(Vec<u8>),
        Pong(Vec<u8>),
    }

    fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            (
                "\\PC{0,40}",
                prop::collection::vec(0usize..200, 0..4),
                prop::collection::vec(
                    prop::option::of(prop::collection::vec(any::<u8>(), 0..5)),
                    4
                )
            )
                .prop_map(|(text, cuts, pings)| Sent::Text { text, cuts, pings }),
            prop::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Ping),
            prop::collection::vec(any::<u8>(), 0..=125).prop_map(Sent::Pong),
        ]
    }

    proptest! {
        #[test]
        fn random_masked_frames_survive_random_cuts(
            messages in prop::collection::vec(sent(), 0..8),
            masks in prop::collection::vec(any::<[u8; 4]>(), 1..8),
            mut read_cuts in prop::collection::vec(0usize..2000, 0..12),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            let mut mask = masks.iter().cycle();
            let mut next_mask = || mask.next().copied();
            for message in &messages {
                match message {
                    Sent::Ping(p) => {
                        write_frame(&mut stream, true, Opcode::Ping, next_mask(), p);
                        expected.push(Event::Ping(p.clone()));
                    }
                    Sent::Pong(p) => {
                        write_frame(&mut stream, true, Opcode::Pong, next_mask(), p);
                        expected.push(Event::Pong(p.clone()));
                    }
                    Sent::Text { text, cuts, pings } => {
                        let bytes = text.as_bytes();
                        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
                        bounds.sort_unstable();
                        bounds.push(bytes.len());
                        let mut from = 0;
                        for (i, &to) in bounds.iter().enumerate() {
                            let opcode = if i == 0 { Opcode::Text } else { Opcode::Continuation };
                            let fin = i + 1 == bounds.len();
                            write_frame(&mut stream, fin, opcode, next_mask(), &bytes[from..to]);
                            from = to;
                            if let (false, Some(Some(p))) = (fin, pings.get(i)) {
                                write_frame(&mut stream, true, Opcode::Ping, next_mask(), p);
                                expected.push(Event::Ping(p.clone()));
                            }
                        }
                        expected.push(Event::Message(bytes.to_vec()));
                    }
                }
            }
            read_cuts.iter_mut().for_each(|c| *c %= stream.len() + 1);
            read_cuts.sort_unstable();
            let mut reads = Vec::new();
            let mut from = 0;
            for &to in read_cuts.iter().chain([stream.len()].iter()) {
                reads.push(&stream[from..to]);
                from = to;
            }
            prop_assert_eq!(feed(&reads, 1 << 16).unwrap(), expected);
        }
    }
}
