//! The scanners against streams cut at every byte, and the encoders' bytes.

use super::lifeline::is_xml_space;
use super::*;

/// Scans a whole stream, feeding it in pieces of `split` bytes the way the
/// engine does: keep the unparsed tail, append, scan again.
fn frames_split(proto: Proto, stream: &[u8], split: usize) -> Vec<String> {
    let mut tail = Vec::new();
    let mut out = Vec::new();
    for chunk in stream.chunks(split.max(1)) {
        tail.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            match scan(proto, &tail[at..]).unwrap() {
                Scan::Frame(frame, used) => {
                    out.push(format!("{frame:?}"));
                    at += used;
                }
                Scan::NeedMore(skip) => {
                    at += skip;
                    break;
                }
            }
        }
        tail.drain(..at);
    }
    assert!(tail.iter().all(|b| is_xml_space(*b)), "left over: {tail:?}");
    out
}

const STREAM: &[u8] = b"<?xml version=\"1.0\"?>\n<welcome id=\"a\" interval=\"500\" misses=\"3\" phase-ms=\"17\"/>\r\n\
<heartbeat mode=\"pong\" seq=\"7\"/><heartbeat mode='ping' seq=\"x>1\"/>\
<!-- note --><msg from=\"b\" id=\"m1\">hi <b>there</b> <![CDATA[</msg>]]> <x/></msg>\
<error code=\"offline\" ref=\"m1\">no such client</error>\t<bye reason=\"timeout\" retry-ms=\"10\"/>\n";

#[test]
fn lifeline_frames_are_classified() {
    let frames = frames_split(Proto::Lifeline, STREAM, STREAM.len());
    assert_eq!(
        frames,
        vec![
            format!(
                "{:?}",
                Inbound::Welcome {
                    interval_ms: Some(500),
                    misses: Some(3),
                    phase_ms: Some(17)
                }
            ),
            format!("{:?}", Inbound::Pong { seq: Some(7) }),
            format!(
                "{:?}",
                Inbound::Probe {
                    seq: Some(&b"x>1"[..])
                }
            ),
            format!(
                "{:?}",
                Inbound::Msg {
                    id: Some(&b"m1"[..]),
                    body: &b"hi <b>there</b> <![CDATA[</msg>]]> <x/>"[..]
                }
            ),
            format!(
                "{:?}",
                Inbound::Error {
                    code: Some(&b"offline"[..])
                }
            ),
            format!(
                "{:?}",
                Inbound::Bye {
                    reason: Some(&b"timeout"[..]),
                    retry_ms: Some(10)
                }
            ),
        ]
    );
}

#[test]
fn every_split_gives_the_same_frames() {
    for proto_stream in [
        (Proto::Lifeline, STREAM.to_vec()),
        (
            Proto::Redis,
            b"+PONG\r\n-ERR wrong\r\n+OK\r\n+PONG\r\n".to_vec(),
        ),
        (
            Proto::Mqtt,
            vec![0x20, 0x02, 0x00, 0x00, 0xD0, 0x00, 0x30, 0x81, 0x01]
                .into_iter()
                .chain([0u8; 129])
                .chain([0xD0, 0x00])
                .collect(),
        ),
    ] {
        let (proto, stream) = proto_stream;
        let whole = frames_split(proto, &stream, stream.len());
        for split in 1..stream.len() {
            assert_eq!(
                frames_split(proto, &stream, split),
                whole,
                "{proto:?} split {split}"
            );
        }
    }
}

#[test]
fn redis_and_mqtt_frames_are_classified() {
    assert_eq!(
        scan(Proto::Redis, b"+PONG\r\n"),
        Ok(Scan::Frame(Inbound::Pong { seq: None }, 7))
    );
    assert_eq!(scan(Proto::Redis, b"+PON"), Ok(Scan::NeedMore(0)));
    assert_eq!(
        scan(Proto::Mqtt, &[0x20, 0x02, 0x00, 0x05]),
        Ok(Scan::Frame(Inbound::ConnAck { accepted: false }, 4))
    );
    assert_eq!(
        scan(Proto::Mqtt, &[0xD0, 0x00]),
        Ok(Scan::Frame(Inbound::Pong { seq: None }, 2))
    );
    assert_eq!(
        scan(Proto::Mqtt, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        Err(ScanError::BadLength)
    );
}

#[test]
fn text_between_frames_is_an_error() {
    assert_eq!(
        scan(Proto::Lifeline, b"hello <bye/>"),
        Err(ScanError::TextOutsideFrame)
    );
    assert_eq!(scan(Proto::Lifeline, b"</bye>"), Err(ScanError::Malformed));
}

#[test]
fn whitespace_and_declarations_are_dropped_while_waiting() {
    assert_eq!(scan(Proto::Lifeline, b"\r\n  "), Ok(Scan::NeedMore(4)));
    assert_eq!(
        scan(Proto::Lifeline, b"<?xml?> <heart"),
        Ok(Scan::NeedMore(8))
    );
    assert_eq!(scan(Proto::Lifeline, b"<!-"), Ok(Scan::NeedMore(0)));
}

#[test]
fn encoders_write_the_expected_bytes() {
    let mut out = Vec::new();
    login(Proto::Lifeline, "load-0-1", None, 60, &mut out);
    ping(Proto::Lifeline, 9, &mut out);
    probe_answer(Some(b"12"), &mut out);
    ack(b"push-3", &mut out);
    bye(Proto::Lifeline, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"<login id="load-0-1"/><heartbeat mode="ping" seq="9"/><heartbeat mode="pong" seq="12"/><ack id="push-3"/><bye/>"#
    );

    let mut out = Vec::new();
    login(Proto::Mqtt, "c1", None, 60, &mut out);
    assert_eq!(
        out,
        [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'c', b'1']
    );
}
