//! The client-frame decoder byte for byte: every frame kind, every cut of a
//! stream, every refusal and its code, and the frame-size bound.

use super::*;

/// Decodes a whole stream fed in the given pieces, the way the server does:
/// keep the unparsed tail, append the next piece, parse again.
fn decode_pieces(pieces: &[&[u8]], max_frame: usize) -> Result<Vec<String>, String> {
    let mut tail: Vec<u8> = Vec::new();
    let mut position = StreamPosition::Start;
    let mut out = Vec::new();
    for piece in pieces {
        tail.extend_from_slice(piece);
        let mut reader = FrameReader::new(&tail, max_frame, position);
        loop {
            match reader.next_frame() {
                Ok(Decoded::Frame(f)) => out.push(format!("{f:?}")),
                Ok(Decoded::NeedMore) => break,
                Err(e) => return Err(e.code().as_str().to_string()),
            }
        }
        position = reader.position();
        let consumed = reader.consumed();
        tail.drain(..consumed);
    }
    Ok(out)
}

fn decode_all(stream: &str) -> Result<Vec<String>, String> {
    decode_pieces(&[stream.as_bytes()], 16384)
}

const STREAM: &str = "<?xml version=\"1.0\"?>\n<login id=\"a.b@c\" token=\"ff\"/>\r\n\
    <heartbeat mode=\"ping\" seq=\"7\"/><heartbeat mode='pong'/>\t\
    <msg to=\"bob\" id=\"m1\">h\u{e9}llo &amp; &#x263A; <![CDATA[<x>]]><b>bold</b></msg>\
    <!-- note --><ack id=\"m1\"/><future x=\"1\"><y/></future><bye/>";

#[test]
fn decodes_every_frame_kind() {
    let frames = decode_all(STREAM).unwrap();
    assert_eq!(
        frames,
        vec![
            r#"Login { id: "a.b@c", token: Some("ff"), exp: None, interval: None }"#,
            "Ping { seq: Some(7) }",
            "Pong { seq: None }",
            r#"Msg { to: "bob", id: Some("m1"), body: "héllo &amp; &#x263A; <![CDATA[<x>]]><b>bold</b>" }"#,
            r#"Ack { id: "m1" }"#,
            r#"Unknown { name: "future" }"#,
            "Bye",
        ]
    );
}

#[test]
fn login_carries_exp_and_interval_as_numbers() {
    let frames =
        decode_all("<login id=\"a\" token=\"ff\" exp=\"1700000000\" interval=\"30000\"/>").unwrap();
    assert_eq!(
        frames,
        vec![
            r#"Login { id: "a", token: Some("ff"), exp: Some(1700000000), interval: Some(30000) }"#
        ]
    );
    for bad in [
        "<login id=\"a\" exp=\"\"/>",
        "<login id=\"a\" exp=\"-1\"/>",
        "<login id=\"a\" exp=\"+1\"/>",
        "<login id=\"a\" exp=\"1.5\"/>",
        "<login id=\"a\" exp=\"18446744073709551616\"/>",
        "<login id=\"a\" interval=\"x\"/>",
        "<login id=\"a\" interval=\" 5\"/>",
        "<login id=\"a\" interval=\"1\" interval=\"2\"/>",
    ] {
        assert_eq!(decode_all(bad).unwrap_err(), "bad-frame", "{bad}");
    }
    // Defined on login only: elsewhere they are ignored like any unknown attribute.
    let frames = decode_all("<heartbeat mode=\"ping\" exp=\"x\" interval=\"y\"/>").unwrap();
    assert_eq!(frames, vec!["Ping { seq: None }"]);
}

#[test]
fn attributes_the_protocol_does_not_define_are_checked_not_kept() {
    let frames =
        decode_all("<heartbeat x=\"1\" mode=\"ping\" y=\"2\" seq=\"3\" z=\"&amp;\"/>").unwrap();
    assert_eq!(frames, vec!["Ping { seq: Some(3) }"]);
    let sixteen: String = (0..16).map(|i| format!(" a{i}=\"v\"")).collect();
    assert!(decode_all(&format!("<x{sixteen}/>")).is_ok());
    let seventeen = format!("<x{sixteen} b=\"v\"/>");
    assert_eq!(decode_all(&seventeen).unwrap_err(), "bad-frame");
}

#[test]
fn every_split_gives_the_same_frames() {
    let whole = decode_all(STREAM).unwrap();
    let bytes = STREAM.as_bytes();
    for cut in 0..=bytes.len() {
        let got = decode_pieces(&[&bytes[..cut], &bytes[cut..]], 16384).unwrap();
        assert_eq!(got, whole, "cut at {cut}");
    }
    for a in (0..bytes.len()).step_by(7) {
        for b in a..bytes.len() {
            let got = decode_pieces(&[&bytes[..a], &bytes[a..b], &bytes[b..]], 16384).unwrap();
            assert_eq!(got, whole, "cuts at {a} and {b}");
        }
    }
    let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(decode_pieces(&one_by_one, 16384).unwrap(), whole);
}

#[test]
fn refuses_malformed_input() {
    for (stream, code) in [
        ("<a></b>", "bad-frame"),
        ("</a>", "bad-frame"),
        ("hello", "bad-frame"),
        ("<heartbeat mode=\"ping\" mode=\"ping\"/>", "bad-frame"),
        (
            "<heartbeat mode=\"ping\" x=\"1\" y=\"2\" x=\"3\"/>",
            "bad-frame",
        ),
        ("<msg to=\"b\"><i a=\"1\" a=\"1\"/></msg>", "bad-frame"),
        (
            "<!DOCTYPE lol [<!ENTITY lol \"lol\">]><lol>&lol;</lol>",
            "bad-frame",
        ),
        ("<msg to=\"b\">&lol;</msg>", "bad-frame"),
        ("<future x=\"&lol;\"/>", "bad-frame"),
        (
            "<heartbeat mode=\"ping\"/><?xml version=\"1.0\"?>",
            "bad-frame",
        ),
        ("<?php x?>", "bad-frame"),
        ("<heartbeat mode=\"sing\"/>", "bad-frame"),
        ("<heartbeat mode=\"ping\" seq=\"x\"/>", "bad-frame"),
        ("<msg to=\"b c\">x</msg>", "bad-frame"),
        ("<login id=\"\"/>", "bad-id"),
        ("<login id=\"has space\"/>", "bad-id"),
        ("<login/>", "bad-id"),
        ("<a>\u{0}</a>", "bad-frame"),
    ] {
        assert_eq!(decode_all(stream).unwrap_err(), code, "{stream:?}");
    }
    assert_eq!(
        decode_pieces(&[b"<msg to=\"b\">\xff</msg>"], 16384).unwrap_err(),
        "bad-frame"
    );
}

#[test]
fn a_byte_order_mark_may_open_the_stream_only() {
    let stream = "\u{feff}<heartbeat mode=\"ping\" seq=\"1\"/>";
    for cut in 0..=stream.len() {
        let (a, b) = stream.as_bytes().split_at(cut);
        let got = decode_pieces(&[a, b], 16384).unwrap();
        assert_eq!(got, ["Ping { seq: Some(1) }"], "cut at {cut}");
    }
    let late = "<bye/>\u{feff}<bye/>";
    for cut in 0..=late.len() {
        let (a, b) = late.as_bytes().split_at(cut);
        assert_eq!(
            decode_pieces(&[a, b], 16384).unwrap_err(),
            "bad-frame",
            "cut at {cut}"
        );
    }
}

#[test]
fn a_comment_longer_than_max_frame_is_refused_however_it_is_cut() {
    let stream = format!("<bye/><!--{}--><bye/>", "c".repeat(200));
    for cut in 0..=stream.len() {
        let got = decode_pieces(&[&stream.as_bytes()[..cut], &stream.as_bytes()[cut..]], 150);
        assert_eq!(got.unwrap_err(), "frame-too-large", "cut at {cut}");
    }
}

#[test]
fn frames_before_an_error_are_still_delivered() {
    let mut reader = FrameReader::new(b"<bye/></oops>", 16384, StreamPosition::Start);
    assert_eq!(reader.next_frame().unwrap(), Decoded::Frame(Frame::Bye));
    assert!(reader.next_frame().is_err());
}

#[test]
fn enforces_max_frame_on_complete_and_partial_frames() {
    let big = format!("<msg to=\"b\">{}</msg>", "x".repeat(200));
    assert_eq!(
        decode_pieces(&[big.as_bytes()], 100).unwrap_err(),
        "frame-too-large"
    );
    assert_eq!(
        decode_pieces(&[&big.as_bytes()[..150]], 100).unwrap_err(),
        "frame-too-large"
    );
    let empty = format!("<heartbeat mode=\"ping\" pad=\"{}\"/>", "x".repeat(200));
    assert_eq!(
        decode_pieces(&[empty.as_bytes()], 100).unwrap_err(),
        "frame-too-large"
    );
    // Exactly at the limit is fine.
    let exact = format!("<msg to=\"b\">{}</msg>", "x".repeat(100 - 18));
    assert_eq!(exact.len(), 100);
    assert_eq!(decode_pieces(&[exact.as_bytes()], 100).unwrap().len(), 1);
    // Whitespace between frames never accumulates.
    let spaces = " ".repeat(1000);
    assert!(decode_pieces(&[spaces.as_bytes()], 100).unwrap().is_empty());
}
