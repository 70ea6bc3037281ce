//! Encoders of the frames a client sends. Each appends to a caller-owned
//! `Vec`. Ids must already be valid ([`crate::is_valid_id`],
//! [`crate::is_valid_message_id`]): their alphabet needs no escaping, and
//! neither does a token, which is hex.

use std::borrow::Cow;

use crate::to_client::{encode_heartbeat, push_decimal};

/// What a `login` says besides the id; every part optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginOptions<'a> {
    /// The login token (hex), when the server checks them.
    pub token: Option<&'a str>,
    /// Version 1.2: the Unix second the token expires at (it is then minted
    /// with [`crate::token::mint_expiring`]).
    pub exp: Option<u64>,
    /// Version 1.2: the heartbeat interval asked for, in ms.
    pub interval_ms: Option<u64>,
}

/// `<login id="ID" token="T"/>` (the token only when there is one).
pub fn encode_login(out: &mut Vec<u8>, id: &str, token: Option<&str>) {
    encode_login_with(
        out,
        id,
        LoginOptions {
            token,
            ..LoginOptions::default()
        },
    );
}

/// `<login id="ID" token="T" exp="E" interval="MS"/>`, each attribute after
/// `id` only when given.
pub fn encode_login_with(out: &mut Vec<u8>, id: &str, options: LoginOptions<'_>) {
    out.extend_from_slice(b"<login id=\"");
    out.extend_from_slice(id.as_bytes());
    if let Some(token) = options.token {
        out.extend_from_slice(b"\" token=\"");
        out.extend_from_slice(token.as_bytes());
    }
    if let Some(exp) = options.exp {
        out.extend_from_slice(b"\" exp=\"");
        push_decimal(out, exp);
    }
    if let Some(interval) = options.interval_ms {
        out.extend_from_slice(b"\" interval=\"");
        push_decimal(out, interval);
    }
    out.extend_from_slice(b"\"/>");
}

/// `<heartbeat mode="ping" seq="N"/>`, a client's heartbeat (the same bytes
/// as the server's probe).
pub fn encode_ping(out: &mut Vec<u8>, seq: Option<u64>) {
    encode_heartbeat(out, "ping", seq);
}

/// `<heartbeat mode="pong" seq="N"/>`, the answer to a server's probe,
/// echoing its `seq`.
pub fn encode_pong(out: &mut Vec<u8>, seq: Option<u64>) {
    encode_heartbeat(out, "pong", seq);
}

/// `<msg to="RECEIVER" id="MID">body</msg>`; `body` is already escaped XML
/// content (e.g. by [`escape_text`]).
pub fn encode_msg(out: &mut Vec<u8>, to: &str, id: Option<&str>, body: &str) {
    out.extend_from_slice(b"<msg to=\"");
    out.extend_from_slice(to.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(b"\" id=\"");
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(b"\">");
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(b"</msg>");
}

/// `text` as the content of a `msg`: `<`, `>` and `&` escaped (quotes need
/// no escaping outside attributes), borrowed when there is nothing to escape.
pub fn escape_text(text: &str) -> Cow<'_, str> {
    quick_xml::escape::partial_escape(text)
}

/// `<ack id="MID"/>`: message `MID` was processed.
pub fn encode_ack(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(b"<ack id=\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\"/>");
}

/// `<bye/>`: a clean leave.
pub fn encode_bye(out: &mut Vec<u8>) {
    out.extend_from_slice(b"<bye/>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoded, FrameReader, StreamPosition};

    #[test]
    fn encodes_client_frames_byte_exact() {
        let mut out = Vec::new();
        encode_login(&mut out, "a", None);
        encode_login(&mut out, "a", Some("ff00"));
        encode_login_with(
            &mut out,
            "a",
            LoginOptions {
                token: Some("ff00"),
                exp: Some(1_700_000_000),
                interval_ms: Some(30_000),
            },
        );
        encode_login_with(
            &mut out,
            "a",
            LoginOptions {
                interval_ms: Some(500),
                ..LoginOptions::default()
            },
        );
        encode_ping(&mut out, Some(3));
        encode_ping(&mut out, None);
        encode_pong(&mut out, Some(9));
        encode_msg(&mut out, "b", Some("m1"), &escape_text("x & y"));
        encode_msg(&mut out, "b", None, "");
        encode_ack(&mut out, "m1");
        encode_bye(&mut out);
        assert!(matches!(escape_text("plain \"text\""), Cow::Borrowed(_)));
        assert_eq!(escape_text("<b> & \u{e9}"), "&lt;b&gt; &amp; \u{e9}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<login id=\"a\"/><login id=\"a\" token=\"ff00\"/>\
             <login id=\"a\" token=\"ff00\" exp=\"1700000000\" interval=\"30000\"/>\
             <login id=\"a\" interval=\"500\"/>\
             <heartbeat mode=\"ping\" seq=\"3\"/><heartbeat mode=\"ping\"/>\
             <heartbeat mode=\"pong\" seq=\"9\"/>\
             <msg to=\"b\" id=\"m1\">x &amp; y</msg><msg to=\"b\"></msg>\
             <ack id=\"m1\"/><bye/>"
        );
    }

    #[test]
    fn the_server_reads_what_a_client_writes() {
        let mut out = Vec::new();
        encode_login_with(
            &mut out,
            "a",
            LoginOptions {
                token: Some("ff00"),
                exp: Some(7),
                interval_ms: Some(250),
            },
        );
        encode_ping(&mut out, Some(3));
        encode_pong(&mut out, None);
        encode_msg(&mut out, "b", Some("m1"), "x &amp; y");
        encode_ack(&mut out, "m1");
        encode_bye(&mut out);
        let mut reader = FrameReader::new(&out, 1024, StreamPosition::Start);
        let mut frames = Vec::new();
        while let Decoded::Frame(frame) = reader.next_frame().unwrap() {
            frames.push(format!("{frame:?}"));
        }
        assert_eq!(
            frames,
            [
                r#"Login { id: "a", token: Some("ff00"), exp: Some(7), interval: Some(250) }"#,
                "Ping { seq: Some(3) }",
                "Pong { seq: None }",
                r#"Msg { to: "b", id: Some("m1"), body: "x &amp; y" }"#,
                r#"Ack { id: "m1" }"#,
                "Bye",
            ]
        );
    }
}
