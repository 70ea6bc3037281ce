//! Encoders of the frames a server sends. Each appends to a caller-owned `Vec`;
//! nothing here allocates beyond the `Vec`'s own growth (numbers are
//! formatted on the stack).

use std::io::Write as _;

use crate::codes::{ByeReason, ErrorCode};

/// `<heartbeat mode="pong" seq="N"/>` (seq only when the ping had one).
pub fn encode_pong(out: &mut Vec<u8>, seq: Option<u64>) {
    encode_heartbeat(out, "pong", seq);
}

/// `<heartbeat mode="ping" seq="N"/>`, the server's probe.
pub fn encode_probe(out: &mut Vec<u8>, seq: u64) {
    encode_heartbeat(out, "ping", Some(seq));
}

pub(crate) fn encode_heartbeat(out: &mut Vec<u8>, mode: &str, seq: Option<u64>) {
    out.extend_from_slice(b"<heartbeat mode=\"");
    out.extend_from_slice(mode.as_bytes());
    match seq {
        Some(seq) => {
            out.extend_from_slice(b"\" seq=\"");
            push_decimal(out, seq);
            out.extend_from_slice(b"\"/>");
        }
        None => out.extend_from_slice(b"\"/>"),
    }
}

/// Appends `n` in decimal. The pong path runs this per heartbeat, where
/// `core::fmt` costs several times more than the digits themselves.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `<welcome id="ID" interval="MS" misses="N" phase-ms="P"/>`.
pub fn encode_welcome(out: &mut Vec<u8>, id: &str, interval_ms: u64, misses: u32, phase_ms: u64) {
    let _ = write!(
        out,
        "<welcome id=\"{id}\" interval=\"{interval_ms}\" misses=\"{misses}\" phase-ms=\"{phase_ms}\"/>"
    );
}

/// `<error code="C" ref="R">text</error>`; `reference` is escaped, `text` must be plain.
pub fn encode_error(out: &mut Vec<u8>, code: ErrorCode, reference: Option<&str>, text: &str) {
    out.extend_from_slice(b"<error code=\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.push(b'"');
    if let Some(r) = reference {
        out.extend_from_slice(b" ref=\"");
        out.extend_from_slice(quick_xml::escape::escape(r).as_bytes());
        out.push(b'"');
    }
    if text.is_empty() {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
        out.extend_from_slice(quick_xml::escape::escape(text).as_bytes());
        out.extend_from_slice(b"</error>");
    }
}

/// `<bye reason="R" retry-ms="D"/>`.
pub fn encode_bye(out: &mut Vec<u8>, reason: ByeReason, retry_ms: Option<u64>) {
    out.extend_from_slice(b"<bye reason=\"");
    out.extend_from_slice(reason.as_str().as_bytes());
    match retry_ms {
        Some(ms) => {
            let _ = write!(out, "\" retry-ms=\"{ms}\"/>");
        }
        None => out.extend_from_slice(b"\"/>"),
    }
}

/// `<msg from="SENDER" id="MID">body</msg>`; `body` is already valid XML content.
pub fn encode_msg(out: &mut Vec<u8>, from: &str, id: Option<&str>, body: &str) {
    out.extend_from_slice(b"<msg from=\"");
    out.extend_from_slice(from.as_bytes());
    out.push(b'"');
    if let Some(id) = id {
        out.extend_from_slice(b" id=\"");
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
    }
    out.push(b'>');
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(b"</msg>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_byte_exact() {
        let mut out = Vec::new();
        encode_pong(&mut out, Some(7));
        encode_pong(&mut out, None);
        encode_probe(&mut out, 2);
        encode_welcome(&mut out, "a", 5000, 5, 120);
        encode_error(&mut out, ErrorCode::UnknownFrame, Some("x\"y"), "");
        encode_error(&mut out, ErrorCode::Offline, Some("m1"), "b is not online");
        encode_bye(&mut out, ByeReason::SlowConsumer, None);
        encode_bye(&mut out, ByeReason::Shutdown, Some(1500));
        encode_msg(&mut out, "a", Some("m1"), "x &amp; y");
        encode_msg(&mut out, "a", None, "");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<heartbeat mode=\"pong\" seq=\"7\"/><heartbeat mode=\"pong\"/>\
             <heartbeat mode=\"ping\" seq=\"2\"/>\
             <welcome id=\"a\" interval=\"5000\" misses=\"5\" phase-ms=\"120\"/>\
             <error code=\"unknown-frame\" ref=\"x&quot;y\"/>\
             <error code=\"offline\" ref=\"m1\">b is not online</error>\
             <bye reason=\"slow-consumer\"/><bye reason=\"shutdown\" retry-ms=\"1500\"/>\
             <msg from=\"a\" id=\"m1\">x &amp; y</msg><msg from=\"a\"></msg>"
        );
    }

    #[test]
    fn decimal_digits_match_display() {
        for n in [0, 7, 10, 99, 100, 12345, u64::MAX / 3, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
