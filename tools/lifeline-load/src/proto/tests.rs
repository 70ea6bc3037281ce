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

/// What a subscribed redis connection receives, and what the MQTT broker
/// sends a subscriber, cut at every byte.
#[test]
fn pub_sub_deliveries_are_found_at_every_split() {
    let redis = b"*3\r\n$9\r\nsubscribe\r\n$15\r\nlifeline-fanout\r\n:1\r\n\
*3\r\n$7\r\nmessage\r\n$15\r\nlifeline-fanout\r\n$9\r\nhi\r\nthere\r\n+PONG\r\n\
*2\r\n$4\r\npong\r\n$-1\r\n";
    let mut publish = Vec::new();
    mqtt_publish(CHANNEL, b"payload 1", &mut publish);
    let mqtt: Vec<u8> = [0x90, 0x03, 0x00, 0x01, 0x00]
        .into_iter()
        .chain(publish.iter().copied())
        // QoS 1: a packet id follows the topic.
        .chain([0x32, 0x08, 0x00, 0x01, b't', 0x00, 0x07, b'q', b'o', b's'])
        .collect();
    for (proto, stream, expected) in [
        (
            Proto::Redis,
            &redis[..],
            vec![
                format!("{:?}", Inbound::Subscribed),
                format!(
                    "{:?}",
                    Inbound::Published {
                        body: b"hi\r\nthere"
                    }
                ),
                format!("{:?}", Inbound::Pong { seq: None }),
                format!("{:?}", Inbound::Other),
            ],
        ),
        (
            Proto::Mqtt,
            &mqtt[..],
            vec![
                format!("{:?}", Inbound::Subscribed),
                format!("{:?}", Inbound::Published { body: b"payload 1" }),
                format!("{:?}", Inbound::Published { body: b"qos" }),
            ],
        ),
    ] {
        for split in 1..=stream.len() {
            assert_eq!(
                frames_split(proto, stream, split),
                expected,
                "{proto:?} split {split}"
            );
        }
    }
    assert_eq!(
        scan(Proto::Redis, b"*3\r\n$7\r\nmess"),
        Ok(Scan::NeedMore(0))
    );
    assert_eq!(
        scan(Proto::Redis, b"*3\r\n$7\r\nmessageXX"),
        Err(ScanError::BadReply)
    );
    assert_eq!(
        scan(Proto::Redis, b"*1\r\n$2\r\nabcd\r\n"),
        Err(ScanError::BadReply)
    );
    assert_eq!(
        scan(Proto::Mqtt, &[0x30, 0x01, 0x00]),
        Err(ScanError::Malformed)
    );
}

#[test]
fn pub_sub_encoders_write_the_expected_bytes() {
    let mut out = Vec::new();
    assert!(subscribe(Proto::Redis, &mut out));
    redis_publish("ch", b"a b", &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "SUBSCRIBE lifeline-fanout\r\n*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$3\r\na b\r\n"
    );
    let mut out = Vec::new();
    assert!(subscribe(Proto::Mqtt, &mut out));
    assert_eq!(out[..6], [0x82, 20, 0, 1, 0, 15]);
    assert_eq!(out[6..21], *CHANNEL.as_bytes());
    assert_eq!(out[21], 0, "QoS 0");
    assert!(!subscribe(Proto::Lifeline, &mut Vec::new()));
    let mut out = Vec::new();
    mqtt_publish("t", b"xy", &mut out);
    assert_eq!(out, [0x30, 5, 0, 1, b't', b'x', b'y']);
}
