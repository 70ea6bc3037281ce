//! The codec byte for byte: RFC 6455's examples, every cut of a stream, each
//! violation's close code, and a property test over random masked frames.

use super::decoder::close_payload;
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
                    let done = message_end.then(|| Event::Message(std::mem::take(&mut message)));
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
    for len in [0, 1, 125, 126, 65535, 65536] {
        let mut a = Vec::new();
        a.extend(std::iter::repeat_n(b'z', len));
        wrap_text(&mut a, 0);
        let mut b = Vec::new();
        write_text(&mut b, &vec![b'z'; len]);
        assert_eq!(a, b, "{len}");
        // The same message made by begin_text/end_text, after other bytes.
        let mut c = b"keep".to_vec();
        let start = begin_text(&mut c);
        c.extend(std::iter::repeat_n(b'z', len));
        end_text(&mut c, start);
        assert_eq!(c[..4], *b"keep");
        assert_eq!(c[4..], b[..], "{len}");
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

/// A decoder taken apart and rebuilt at every cut of a fragmented message
/// with a character split across frames (a connection handed to another
/// process mid-message) decodes exactly what one decoder does.
#[test]
fn a_decoder_rebuilt_from_its_parts_carries_on() {
    // The first frame ends inside the two bytes of the 'é'.
    let text = "<msg>h\u{e9}llo</msg>".as_bytes();
    let mut stream = masked(false, Opcode::Text, &text[..7]);
    stream.extend(masked(true, Opcode::Continuation, &text[7..]));
    let whole = feed_whole(&stream).unwrap();
    for cut in 0..=stream.len() {
        let mut decoder = Decoder::new();
        let mut input = stream[..cut].to_vec();
        let mut message = Vec::new();
        let mut pos = 0;
        let mut drive = |decoder: &mut Decoder, input: &mut Vec<u8>, pos: &mut usize| loop {
            match decoder.decode(&mut input[*pos..], 1 << 20).unwrap() {
                Inbound::NeedMore => break,
                Inbound::Text {
                    consumed, payload, ..
                } => {
                    message.extend_from_slice(payload);
                    *pos += consumed;
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        drive(&mut decoder, &mut input, &mut pos);
        let mut rebuilt = Decoder::from_parts(decoder.parts()).unwrap();
        input.drain(..pos);
        pos = 0;
        input.extend_from_slice(&stream[cut..]);
        drive(&mut rebuilt, &mut input, &mut pos);
        assert!(!rebuilt.in_message(), "cut {cut}");
        assert_eq!(vec![Event::Message(message)], whole, "cut {cut}");
    }
    let impossible = DecoderParts {
        mask_phase: 4,
        ..DecoderParts::default()
    };
    assert!(Decoder::from_parts(impossible).is_none());
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

mod handshake;
