//! The WebSocket codec (`lifeline_wire::ws`) from outside, fed as a connection feeds
//! it: keep the unconsumed tail, append the next read, decode again.
//!
//! 1. Arbitrary bytes never panic the decoder or the handshake parser, the
//!    kept tail stays within one control frame, and every cut of the stream
//!    gives the uncut stream's result (events, open-message bytes, error).
//! 2. Interop: a real WebSocket client (Node's, `node --experimental-websocket`,
//!    Node >= 20.10), `web/lifeline.js` included, against a tiny blocking
//!    server built on the codec. Without Node it prints `SKIPPED` and passes,
//!    except under CI (env `CI` set), where it fails (tests/node).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;

use lifeline_wire::ws::{self, Decoder, Handshake, Inbound, Opcode, WsError};

mod node;
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Message(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// Everything a connection made of its input: the events, the bytes of a
/// message still open, and the error that ended it, if any.
type Outcome = (Vec<Event>, Vec<u8>, Option<WsError>);

fn feed(reads: &[&[u8]], max: usize) -> Outcome {
    let mut decoder = Decoder::new();
    let mut input = Vec::new();
    let mut message = Vec::new();
    let mut events = Vec::new();
    for read in reads {
        input.extend_from_slice(read);
        let mut pos = 0;
        loop {
            let step = match decoder.decode(&mut input[pos..], max) {
                Ok(step) => step,
                Err(e) => {
                    // A character cut where the stream ends may or may not
                    // have been delivered, depending on the cuts; it cannot
                    // complete an XML frame either way.
                    let whole = std::str::from_utf8(&message)
                        .map_or_else(|e| e.valid_up_to(), |_| message.len());
                    message.truncate(whole);
                    return (events, message, Some(e));
                }
            };
            let consumed = match step {
                Inbound::NeedMore => break,
                Inbound::Text {
                    consumed,
                    payload,
                    message_end,
                } => {
                    message.extend_from_slice(payload);
                    if message_end {
                        events.push(Event::Message(std::mem::take(&mut message)));
                    }
                    consumed
                }
                Inbound::Ping { consumed, payload } => {
                    events.push(Event::Ping(payload.to_vec()));
                    consumed
                }
                Inbound::Pong { consumed, payload } => {
                    events.push(Event::Pong(payload.to_vec()));
                    consumed
                }
                Inbound::Close {
                    consumed,
                    code,
                    reason,
                } => {
                    events.push(Event::Close(code, reason.to_owned()));
                    consumed
                }
            };
            assert!(consumed > 0, "a step that is not NeedMore consumes");
            pos += consumed;
        }
        input.drain(..pos);
        assert!(
            input.len() < ws::MAX_CONTROL_FRAME,
            "kept {} bytes",
            input.len()
        );
    }
    (events, message, None)
}

fn cuts(len: usize, points: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = points.iter().map(|p| p % (len + 1)).collect();
    points.sort_unstable();
    points.push(len);
    points
}

fn split<'a>(stream: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut from = 0;
    cuts(stream.len(), points)
        .into_iter()
        .map(|to| {
            let piece = &stream[from..to];
            from = to;
            piece
        })
        .collect()
}

/// Mostly-plausible frames: a first byte from the meaningful ones (with
/// occasional garbage) and a length byte that is usually masked and short.
fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(0x81u8),
            Just(0x01),
            Just(0x80),
            Just(0x00),
            Just(0x89),
            Just(0x8a),
            Just(0x88),
            any::<u8>()
        ],
        any::<[u8; 4]>(),
        prop::collection::vec(any::<u8>(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(b0, mask, payload, garbage_len)| {
            let mut frame = vec![b0];
            if garbage_len {
                frame.push(0x80 | (payload.len() as u8 % 0x80));
            } else {
                frame.push(0x80 | payload.len() as u8);
            }
            frame.extend_from_slice(&mask);
            frame.extend_from_slice(&payload);
            frame
        })
}

proptest! {
    #[test]
    fn arbitrary_frames_decode_the_same_for_every_cut(
        frames in prop::collection::vec(frame_bytes(), 0..10),
        points in prop::collection::vec(any::<usize>(), 0..10),
        max in 0usize..100,
    ) {
        let stream = frames.concat();
        let whole = feed(&[&stream], max);
        prop_assert_eq!(feed(&split(&stream, &points), max), whole.clone());
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(feed(&bytes, max), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = feed(&[&bytes], 64);
        let _ = ws::parse_upgrade(&bytes);
    }

    #[test]
    fn the_handshake_is_the_same_for_every_cut(
        version in prop_oneof![Just("13"), Just("8")],
        path in prop_oneof![Just("/"), Just("/lifeline.js"), Just("/x")],
        upgrade in any::<bool>(),
        cut in any::<usize>(),
    ) {
        let request = if upgrade {
            format!("GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n")
        } else {
            format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n")
        };
        let whole = ws::parse_upgrade(request.as_bytes());
        prop_assert!(!matches!(whole, Ok(Handshake::Partial)));
        let cut = cut % request.len();
        prop_assert_eq!(ws::parse_upgrade(&request.as_bytes()[..cut]), Ok(Handshake::Partial));
    }
}

/// One connection of the interop server: handshake, then a scripted
/// conversation with `web/lifeline.js` or a bare WebSocket. Every message
/// and control frame it hears goes to `log`.
fn serve(mut stream: TcpStream, log: mpsc::Sender<String>) -> io::Result<()> {
    let mut input = Vec::new();
    let mut read_buf = [0u8; 8192];
    let mut out = Vec::new();
    let head_len = loop {
        let n = stream.read(&mut read_buf)?;
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&read_buf[..n]);
        match ws::parse_upgrade(&input) {
            Ok(Handshake::Partial) => continue,
            Ok(Handshake::Upgrade {
                key,
                subprotocol,
                len,
            }) => {
                ws::write_accept(&mut out, &key, subprotocol);
                let _ = log.send(format!("upgrade subprotocol={subprotocol}"));
                break len;
            }
            Ok(Handshake::Get { path, .. }) => {
                lifeline::pages::answer_get(&mut out, path);
                return stream.write_all(&out);
            }
            Err(e) => {
                ws::write_handshake_error(&mut out, &e);
                return stream.write_all(&out);
            }
        }
    };
    input.drain(..head_len);
    let mut decoder = Decoder::new();
    let mut message = Vec::new();
    let (mut heartbeat_answered, mut probe_answered) = (false, false);
    loop {
        let mut pos = 0;
        loop {
            let step = match decoder.decode(&mut input[pos..], 1 << 20) {
                Ok(step) => step,
                Err(e) => {
                    let _ = log.send(format!("error {}", e.close_code().as_u16()));
                    ws::write_close(&mut out, e.close_code().into(), &e.to_string());
                    return stream.write_all(&out);
                }
            };
            match step {
                Inbound::NeedMore => break,
                Inbound::Text {
                    consumed,
                    payload,
                    message_end,
                } => {
                    pos += consumed;
                    message.extend_from_slice(payload);
                    if !message_end {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&std::mem::take(&mut message)).into_owned();
                    if text.starts_with("<login") {
                        ws::write_text(
                            &mut out,
                            b"<welcome id=\"a\" interval=\"150\" misses=\"2\" phase-ms=\"0\"/>",
                        );
                        ws::write_text(&mut out, b"<msg from=\"b\" id=\"m1\">hi &amp; you</msg>");
                        ws::write_frame(&mut out, true, Opcode::Ping, None, b"probe");
                    } else if text == "<heartbeat mode=\"ping\" seq=\"1\"/>" {
                        let start = out.len();
                        out.extend_from_slice(b"<heartbeat mode=\"pong\" seq=\"1\"/>");
                        ws::wrap_text(&mut out, start);
                        heartbeat_answered = true;
                    } else if text == "<ack id=\"m1\"/>" {
                        ws::write_text(&mut out, b"<heartbeat mode=\"ping\" seq=\"77\"/>");
                    } else if text == "<heartbeat mode=\"pong\" seq=\"77\"/>" {
                        probe_answered = true;
                    }
                    let shown = if text.len() > 80 {
                        format!("message of {} bytes", text.len())
                    } else {
                        text
                    };
                    let _ = log.send(shown);
                    if heartbeat_answered && probe_answered {
                        heartbeat_answered = false;
                        ws::write_text(&mut out, b"<bye reason=\"replaced\"/>");
                        ws::write_close(&mut out, ws::CloseCode::Normal.into(), "");
                    }
                }
                Inbound::Ping { consumed, payload } => {
                    pos += consumed;
                    ws::write_pong(&mut out, payload);
                }
                Inbound::Pong { consumed, payload } => {
                    pos += consumed;
                    let _ = log.send(format!("pong {}", String::from_utf8_lossy(payload)));
                }
                Inbound::Close {
                    consumed: _,
                    code,
                    reason,
                } => {
                    let _ = log.send(format!("close {code:?} {reason}"));
                    ws::write_close(&mut out, code.unwrap_or(1000), "");
                    return stream.write_all(&out);
                }
            }
        }
        input.drain(..pos);
        stream.write_all(&out)?;
        out.clear();
        let n = stream.read(&mut read_buf)?;
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&read_buf[..n]);
    }
}

const NODE_SCRIPT: &str = r#"
const { LifelineClient } = await import(process.env.LIFELINE_JS);
const base = `127.0.0.1:${process.env.PORT}`;
const result = { pages: [] };
for (const path of ['/', '/lifeline.js', '/xml.js', '/nope']) {
  const res = await fetch(`http://${base}${path}`);
  result.pages.push([path, res.status, res.headers.get('content-type'), (await res.text()).length > 0]);
}
// The client library, end to end: the script server welcomes, pushes m1,
// probes, and once pinged and answered says bye reason="replaced".
{
  const c = new LifelineClient({ url: `ws://${base}/`, id: 'a' });
  c.addEventListener('message', (e) => { result.message = e.detail; });
  const stopped = new Promise((resolve) => {
    c.addEventListener('state', ({ detail }) => {
      (result.states ??= []).push(detail.state);
      if (detail.state === 'stopped') { result.reason = detail.reason; result.rtt = typeof c.rtt; resolve(); }
    });
  });
  await c.start();
  await stopped;
}
// A bare WebSocket: one message over 64 KiB, then a close with a code.
await new Promise((resolve, reject) => {
  const ws = new WebSocket(`ws://${base}/`, 'lifeline.v1');
  ws.onopen = () => {
    result.protocol = ws.protocol;
    ws.send(`<msg to="b">${'x'.repeat(70000)}</msg>`);
    ws.close(4000, 'done');
  };
  ws.onclose = (e) => { result.closeCode = e.code; resolve(); };
  ws.onerror = reject;
});
console.log(JSON.stringify(result));
"#;

#[test]
fn interop_with_node_websocket_and_lifeline_js() {
    if !node::available("the WebSocket interop test") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (log, heard) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || serve(stream, log));
        }
    });
    let js = format!("file://{}/web/lifeline.js", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("node")
        .args([
            "--experimental-websocket",
            "--input-type=module",
            "-e",
            NODE_SCRIPT,
        ])
        .env("PORT", port.to_string())
        .env("LIFELINE_JS", js)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node failed:\n{stdout}\n{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let heard: Vec<String> = heard.try_iter().collect();
    let expect = serde_json::json!({
        "pages": [
            ["/", 200, "text/html; charset=utf-8", true],
            ["/lifeline.js", 200, "text/javascript; charset=utf-8", true],
            ["/xml.js", 200, "text/javascript; charset=utf-8", true],
            ["/nope", 404, "text/plain; charset=utf-8", true],
        ],
        "message": { "from": "b", "id": "m1", "text": "hi & you" },
        "states": ["connecting", "online", "stopped"],
        "reason": "replaced",
        "rtt": "number",
        "protocol": "lifeline.v1",
        "closeCode": 4000,
    });
    assert_eq!(result, expect, "server heard {heard:#?}");
    for line in [
        "upgrade subprotocol=true",
        "<login id=\"a\"/>",
        "<ack id=\"m1\"/>",
        "<heartbeat mode=\"ping\" seq=\"1\"/>",
        "<heartbeat mode=\"pong\" seq=\"77\"/>",
        "pong probe",
        "message of 70018 bytes",
        "close Some(4000) done",
    ] {
        assert!(
            heard.iter().any(|h| h == line),
            "missing {line:?} in {heard:#?}"
        );
    }
}
