//! The client half of Lifeline's WebSocket transport (`--transport ws`): the
//! opening handshake, our masked outgoing frames, and a reader that turns the
//! server's frames back into the XML stream. Bytes only, no I/O; the frame
//! codec itself is the server's (`lifeline_wire::ws`), used here from the other side.
//!
//! Each XML frame we send is one masked, final text message. The server sends
//! one XML frame per unmasked text message, so the XML stream is the
//! concatenation of the text payloads; [`Reader`] hands them back piece by
//! piece as they arrive, so the caller keeps at most a partial frame header or
//! one partial control frame of raw bytes.

use base64::Engine as _;
use lifeline_wire::ws::{self, Opcode, WsError};

/// A response head longer than this is not a WebSocket accept.
const MAX_RESPONSE_HEAD: usize = 8192;
const MAX_HEADERS: usize = 32;
/// Close code we answer a server's Close with when it carried none (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;

/// Which transport the connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// The raw XML stream over TCP.
    Tcp,
    /// An RFC 6455 upgrade on the same port; one XML frame per text message.
    Ws,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (24 characters).
pub fn new_key(random: [u64; 2]) -> [u8; ws::KEY_LEN] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random[0].to_le_bytes());
    bytes[8..].copy_from_slice(&random[1].to_le_bytes());
    let mut key = [0u8; ws::KEY_LEN];
    // 16 bytes always encode to exactly 24 characters, so this cannot fail.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(bytes, &mut key);
    key
}

/// Appends the opening handshake (RFC 6455 §4.1) offering `lifeline.v1`.
pub fn write_upgrade(out: &mut Vec<u8>, host: &str, key: &[u8]) {
    out.extend_from_slice(b"GET / HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: ",
    );
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
    out.extend_from_slice(ws::SUBPROTOCOL.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Why the server's answer to our upgrade is not an accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade answered with HTTP {0}")]
    Status(u16),
    #[error("upgrade answer is not HTTP/1.1: {0}")]
    Malformed(String),
    #[error("upgrade answer head exceeds {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("101 without Upgrade: websocket and Connection: Upgrade")]
    NotWebSocket,
    #[error("Sec-WebSocket-Accept missing or wrong")]
    BadAccept,
    #[error("server chose a subprotocol other than lifeline.v1")]
    BadSubprotocol,
}

/// Checks the server's answer at the front of `buf` against our `key`:
/// `Ok(None)` until the head is complete, then the head's length (bytes after
/// it are already WebSocket frames).
pub fn parse_accept(buf: &[u8], key: &[u8]) -> Result<Option<usize>, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(UpgradeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(UpgradeError::Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(UpgradeError::Status(status));
    }
    let headers = &*response.headers;
    let lists = |name: &str, token: &[u8]| {
        values(headers, name).any(|value| {
            value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    if !lists("upgrade", b"websocket") || !lists("connection", b"upgrade") {
        return Err(UpgradeError::NotWebSocket);
    }
    let expected = ws::accept_key(key);
    let mut accepts = values(headers, "sec-websocket-accept");
    if accepts.next() != Some(&expected[..]) || accepts.next().is_some() {
        return Err(UpgradeError::BadAccept);
    }
    // We offered one subprotocol: the server may pick it or none (§4.1).
    if values(headers, "sec-websocket-protocol").any(|p| p != ws::SUBPROTOCOL.as_bytes()) {
        return Err(UpgradeError::BadSubprotocol);
    }
    Ok(Some(len))
}

/// The trimmed values of every header called `name` (case-insensitive).
fn values<'h>(
    headers: &'h [httparse::Header<'h>],
    name: &'h str,
) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim_ascii())
}

/// Appends `payload` (one XML frame) as one masked, final text message.
pub fn write_text(out: &mut Vec<u8>, mask: [u8; 4], payload: &[u8]) {
    ws::write_frame(out, true, Opcode::Text, Some(mask), payload);
}

/// Appends the masked answer to a server Ping (the reader never hands back
/// a payload over the 125 bytes a control frame may carry).
pub fn write_pong(out: &mut Vec<u8>, mask: [u8; 4], payload: &[u8]) {
    ws::write_frame(out, true, Opcode::Pong, Some(mask), payload);
}

/// Appends the masked answer to a server Close, echoing its code.
pub fn write_close(out: &mut Vec<u8>, mask: [u8; 4], code: Option<u16>) {
    let code = code.unwrap_or(CLOSE_NORMAL).to_be_bytes();
    ws::write_frame(out, true, Opcode::Close, Some(mask), &code);
}

/// A mask key from a random word (RFC 6455 §5.3 asks for an unpredictable one
/// per frame; a fast PRNG is enough against our own server).
pub fn mask(random: u64) -> [u8; 4] {
    let b = random.to_le_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// What [`Reader::next`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The next piece of a text message: append it to the XML stream. May be
    /// empty (a header whose payload has not arrived yet).
    Text(&'a [u8]),
    /// A Ping: answer with a Pong carrying this payload.
    Ping(&'a [u8]),
    Pong,
    /// The server is closing, with its code if it gave one.
    Close(Option<u16>),
}

/// The server's frames cannot be read; the connection is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Header(#[from] WsError),
    #[error("server frames must not be masked")]
    Masked,
    #[error("binary message on a text stream")]
    Binary,
    #[error("continuation frame outside a message, or a new message inside one")]
    BadFragment,
}

/// Inbound state of one WebSocket connection: where in the current data
/// frame and message we are. A few bytes; payloads are never held here.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reader {
    /// Payload bytes of the current data frame still to come.
    remaining: u64,
    /// A text message has begun and its final frame has not ended.
    in_message: bool,
}

impl Reader {
    /// Decodes the front of `buf`: `Ok(None)` when it holds only part of a
    /// header or of a control frame (keep the bytes, read more), else the
    /// event and how many bytes it consumed (at least one).
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> Result<Option<(Event<'a>, usize)>, FrameError> {
        if self.remaining > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = self.take(buf.len());
            return Ok(Some((Event::Text(&buf[..n]), n)));
        }
        let Some(header) = ws::decode_header(buf)? else {
            return Ok(None);
        };
        if header.mask.is_some() {
            return Err(FrameError::Masked);
        }
        let start = header.header_len;
        match header.opcode {
            Opcode::Text | Opcode::Continuation => {
                let continues = header.opcode == Opcode::Continuation;
                if continues != self.in_message {
                    return Err(FrameError::BadFragment);
                }
                // Set now for the next header, which comes after this payload.
                self.in_message = !header.fin;
                self.remaining = header.payload_len;
                let n = self.take(buf.len() - start);
                Ok(Some((Event::Text(&buf[start..start + n]), start + n)))
            }
            Opcode::Binary => Err(FrameError::Binary),
            Opcode::Ping | Opcode::Pong | Opcode::Close => {
                // decode_header refused control payloads over 125 bytes.
                let end = start + header.payload_len as usize;
                let Some(payload) = buf.get(start..end) else {
                    return Ok(None);
                };
                let event = match header.opcode {
                    Opcode::Ping => Event::Ping(payload),
                    Opcode::Pong => Event::Pong,
                    _ => Event::Close(
                        payload
                            .get(..2)
                            .map(|code| u16::from_be_bytes([code[0], code[1]])),
                    ),
                };
                Ok(Some((event, end)))
            }
        }
    }

    /// Takes up to `available` payload bytes of the current data frame.
    fn take(&mut self, available: usize) -> usize {
        let n = usize::try_from(self.remaining).map_or(available, |r| r.min(available));
        self.remaining -= n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Feeds `stream` in pieces of `split` bytes the way a connection does
    /// (keep the unconsumed tail, append, read until `None`) and returns the
    /// text stream and the control events.
    fn read_split(stream: &[u8], split: usize) -> (Vec<u8>, Vec<String>) {
        let mut reader = Reader::default();
        let mut raw = Vec::new();
        let mut text = Vec::new();
        let mut controls = Vec::new();
        for chunk in stream.chunks(split.max(1)) {
            raw.extend_from_slice(chunk);
            let mut at = 0;
            while let Some((event, used)) = reader.next(&raw[at..]).unwrap() {
                assert!(used > 0);
                match event {
                    Event::Text(piece) => text.extend_from_slice(piece),
                    other => controls.push(format!("{other:?}")),
                }
                at += used;
            }
            raw.drain(..at);
        }
        assert!(raw.is_empty(), "left over: {raw:?}");
        (text, controls)
    }

    #[test]
    fn outgoing_text_is_one_masked_final_frame() {
        let mut out = Vec::new();
        write_text(&mut out, MASK, b"<bye/>");
        assert_eq!(out[0], 0x81, "FIN + text");
        assert_eq!(out[1], 0x80 | 6, "mask bit + length");
        assert_eq!(&out[2..6], &MASK);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(unmasked, b"<bye/>");

        // The server's decoder takes it as one whole text message.
        let mut decoder = ws::Decoder::new();
        match decoder.decode(&mut out, 1 << 14) {
            Ok(ws::Inbound::Text {
                consumed,
                payload,
                message_end,
            }) => {
                assert_eq!(payload, b"<bye/>");
                assert!(message_end);
                assert_eq!(consumed, 12);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn long_text_uses_the_16_bit_length() {
        let payload = vec![b'x'; 300];
        let mut out = Vec::new();
        write_text(&mut out, MASK, &payload);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 0x01, 0x2c]);
        assert_eq!(out.len(), 4 + 4 + 300);
    }

    #[test]
    fn control_answers_are_masked() {
        let mut out = Vec::new();
        write_pong(&mut out, MASK, b"hi");
        write_close(&mut out, MASK, Some(1001));
        assert_eq!(&out[..2], &[0x8A, 0x82]);
        assert_eq!(&out[8..10], &[0x88, 0x82]);
        let code = [out[14] ^ MASK[0], out[15] ^ MASK[1]];
        assert_eq!(u16::from_be_bytes(code), 1001);
    }

    #[test]
    fn every_split_gives_the_same_stream() {
        let mut stream = Vec::new();
        ws::write_text(
            &mut stream,
            br#"<welcome id="a" interval="5000" misses="5"/>"#,
        );
        ws::write_frame(&mut stream, true, Opcode::Ping, None, b"p1");
        // One XML frame split over a fragmented message.
        ws::write_frame(
            &mut stream,
            false,
            Opcode::Text,
            None,
            br#"<heartbeat mode="#,
        );
        ws::write_frame(
            &mut stream,
            true,
            Opcode::Continuation,
            None,
            br#""pong"/>"#,
        );
        ws::write_text(&mut stream, &[b' '; 200]);
        ws::write_text(&mut stream, br#"<bye reason="shutdown" retry-ms="10"/>"#);
        ws::write_close(&mut stream, 1001, "shutdown");

        let whole = read_split(&stream, stream.len());
        assert_eq!(
            String::from_utf8(whole.0.clone()).unwrap(),
            format!(
                "<welcome id=\"a\" interval=\"5000\" misses=\"5\"/><heartbeat mode=\"pong\"/>{}\
                 <bye reason=\"shutdown\" retry-ms=\"10\"/>",
                " ".repeat(200)
            )
        );
        assert_eq!(
            whole.1,
            vec![
                format!("{:?}", Event::Ping(b"p1")),
                format!("{:?}", Event::Close(Some(1001)))
            ]
        );
        for split in 1..stream.len() {
            assert_eq!(read_split(&stream, split), whole, "split {split}");
        }
    }

    #[test]
    fn bad_server_frames_are_refused() {
        let mut masked = Vec::new();
        write_text(&mut masked, MASK, b"<x/>");
        assert_eq!(Reader::default().next(&masked), Err(FrameError::Masked));
        let mut binary = Vec::new();
        ws::write_frame(&mut binary, true, Opcode::Binary, None, b"x");
        assert_eq!(Reader::default().next(&binary), Err(FrameError::Binary));
        let mut stray = Vec::new();
        ws::write_frame(&mut stray, true, Opcode::Continuation, None, b"x");
        assert_eq!(Reader::default().next(&stray), Err(FrameError::BadFragment));
        assert_eq!(Reader::default().next(&[0x81]), Ok(None));
    }

    #[test]
    fn accept_is_checked() {
        let key = new_key([1, 2]);
        assert_eq!(key.len(), 24);
        let mut request = Vec::new();
        write_upgrade(&mut request, "127.0.0.1:7070", &key);
        // Our request is one the server accepts, with the subprotocol.
        match ws::parse_upgrade(&request) {
            Ok(ws::Handshake::Upgrade {
                key: seen,
                subprotocol,
                len,
            }) => {
                assert_eq!(seen, key);
                assert!(subprotocol);
                assert_eq!(len, request.len());
            }
            other => panic!("unexpected {other:?}"),
        }

        let mut answer = Vec::new();
        ws::write_accept(&mut answer, &key, true);
        let head = answer.len();
        answer.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(parse_accept(&answer, &key), Ok(Some(head)));
        assert_eq!(parse_accept(&answer[..head - 1], &key), Ok(None));

        let other_key = new_key([3, 4]);
        assert_eq!(
            parse_accept(&answer, &other_key),
            Err(UpgradeError::BadAccept)
        );
        let refused = b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_accept(refused, &key), Err(UpgradeError::Status(426)));
        let wrong_protocol = String::from_utf8(answer[..head].to_vec())
            .unwrap()
            .replace("lifeline.v1", "other.v2");
        assert_eq!(
            parse_accept(wrong_protocol.as_bytes(), &key),
            Err(UpgradeError::BadSubprotocol)
        );
    }
}
