//! The client side of the three protocols the tool speaks: encoders that append
//! to an outbound buffer (Lifeline's frames come from `lifeline_wire::to_server`),
//! and a scanner that finds the next complete server frame in a byte slice. No I/O and no state: the caller keeps the unparsed
//! tail of a split frame and scans again once more bytes arrived.
//!
//! The Lifeline scanner is not an XML parser. It finds where each top-level
//! element ends (quotes, comments, CDATA and nesting respected) and reads the
//! few attributes a load client needs; everything else is `Inbound::Other`.

use lifeline_wire::to_server;

/// Which wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// Lifeline XML frames: login, heartbeat ping/pong, bye.
    Lifeline,
    /// The redis inline `PING` (what `bench/floor.c` and the tokio peer speak).
    Redis,
    /// MQTT 3.1.1: CONNECT/CONNACK, PINGREQ/PINGRESP.
    Mqtt,
}

/// A frame read from the server, borrowing from the scanned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Lifeline `<welcome/>`: the login is accepted.
    Welcome {
        interval_ms: Option<u64>,
        misses: Option<u64>,
        phase_ms: Option<u64>,
    },
    /// MQTT CONNACK; `accepted` is false for a non-zero return code.
    ConnAck { accepted: bool },
    /// The answer to one of our pings (redis `+PONG`, MQTT PINGRESP).
    Pong { seq: Option<u64> },
    /// A liveness probe from the server; answer with a pong echoing `seq`.
    Probe { seq: Option<&'a [u8]> },
    /// `<bye reason="..." retry-ms="D"/>`: the server is about to close;
    /// `retry_ms` is its advice on when to come back (version 1.1).
    Bye {
        reason: Option<&'a [u8]>,
        retry_ms: Option<u64>,
    },
    /// `<error code="..."/>`, or a redis `-ERR` line.
    Error { code: Option<&'a [u8]> },
    /// `<msg id="...">body</msg>` routed to this client; `body` is the raw
    /// (still escaped) content between the tags.
    Msg {
        id: Option<&'a [u8]>,
        body: &'a [u8],
    },
    /// Anything else (unknown element, redis reply other than PONG, ...).
    Other,
}

/// The outcome of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan<'a> {
    /// A complete frame, and how many bytes (including leading whitespace) it used.
    Frame(Inbound<'a>, usize),
    /// No complete frame yet; the first `usize` bytes (whitespace, XML
    /// declarations, comments) can be dropped.
    NeedMore(usize),
}

/// The byte stream cannot be framed; the connection is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("text outside a frame")]
    TextOutsideFrame,
    #[error("malformed markup")]
    Malformed,
    #[error("MQTT remaining length longer than 4 bytes")]
    BadLength,
}

/// Finds the next complete frame at the start of `buf`.
pub fn scan(proto: Proto, buf: &[u8]) -> Result<Scan<'_>, ScanError> {
    match proto {
        Proto::Lifeline => scan_xml(buf),
        Proto::Redis => Ok(scan_redis(buf)),
        Proto::Mqtt => scan_mqtt(buf),
    }
}

// ---------------------------------------------------------------- encoders

/// MQTT fixed headers (3.1.1, section 2.2).
const MQTT_CONNECT: u8 = 0x10;
const MQTT_CONNACK: u8 = 2;
const MQTT_PINGREQ: [u8; 2] = [0xC0, 0x00];
const MQTT_PINGRESP: u8 = 13;
const MQTT_DISCONNECT: [u8; 2] = [0xE0, 0x00];
/// Clean-session flag of the CONNECT variable header.
const MQTT_CLEAN_SESSION: u8 = 0x02;

/// Appends the login for `id` (nothing for redis, which has none).
pub fn login(proto: Proto, id: &str, token: Option<&str>, keepalive_s: u16, out: &mut Vec<u8>) {
    match proto {
        Proto::Lifeline => to_server::encode_login(out, id, token),
        Proto::Redis => {}
        Proto::Mqtt => {
            let mut body = Vec::with_capacity(12 + id.len());
            body.extend_from_slice(&[0, 4]);
            body.extend_from_slice(b"MQTT");
            body.push(4); // protocol level 3.1.1
            body.push(MQTT_CLEAN_SESSION);
            body.extend_from_slice(&keepalive_s.to_be_bytes());
            // Client ids are at most 64 bytes here, far below the u16 limit.
            body.extend_from_slice(&(id.len() as u16).to_be_bytes());
            body.extend_from_slice(id.as_bytes());
            out.push(MQTT_CONNECT);
            push_mqtt_length(body.len(), out);
            out.extend_from_slice(&body);
        }
    }
}

/// Whether the protocol answers a login before the connection can ping.
pub fn has_login(proto: Proto) -> bool {
    proto != Proto::Redis
}

/// Appends one ping carrying `seq` (only Lifeline can carry it).
pub fn ping(proto: Proto, seq: u64, out: &mut Vec<u8>) {
    match proto {
        Proto::Lifeline => to_server::encode_ping(out, Some(seq)),
        Proto::Redis => out.extend_from_slice(b"PING\r\n"),
        Proto::Mqtt => out.extend_from_slice(&MQTT_PINGREQ),
    }
}

/// Appends the answer to a Lifeline server probe, echoing its `seq` (the
/// protocol's `seq` is a number; one that is not is left out).
pub fn probe_answer(seq: Option<&[u8]>, out: &mut Vec<u8>) {
    to_server::encode_pong(out, number(seq));
}

/// Appends `<ack id="MID"/>` for the id as scanned. Message ids are of the id
/// alphabet, ASCII that needs no escaping; the lossy conversion only copies
/// what no Lifeline server sends.
pub fn ack(id: &[u8], out: &mut Vec<u8>) {
    to_server::encode_ack(out, &String::from_utf8_lossy(id));
}

/// Appends a clean goodbye: `<bye/>`, MQTT DISCONNECT, or redis `QUIT`.
pub fn bye(proto: Proto, out: &mut Vec<u8>) {
    match proto {
        Proto::Lifeline => to_server::encode_bye(out),
        Proto::Redis => out.extend_from_slice(b"QUIT\r\n"),
        Proto::Mqtt => out.extend_from_slice(&MQTT_DISCONNECT),
    }
}

fn push_mqtt_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

// ---------------------------------------------------------------- redis / mqtt

fn scan_redis(buf: &[u8]) -> Scan<'_> {
    let Some(newline) = memchr_byte(b'\n', buf) else {
        return Scan::NeedMore(0);
    };
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    let frame = if line == b"+PONG" {
        Inbound::Pong { seq: None }
    } else if let Some(rest) = line.strip_prefix(b"-") {
        Inbound::Error {
            code: rest.split(|b| *b == b' ').next(),
        }
    } else {
        Inbound::Other
    };
    Scan::Frame(frame, newline + 1)
}

fn scan_mqtt(buf: &[u8]) -> Result<Scan<'_>, ScanError> {
    let Some(&first) = buf.first() else {
        return Ok(Scan::NeedMore(0));
    };
    let mut remaining = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(Scan::NeedMore(0));
        };
        remaining |= usize::from(byte & 0x7F) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header_len > 4 {
            return Err(ScanError::BadLength);
        }
    }
    let total = header_len + remaining;
    let Some(body) = buf.get(header_len..total) else {
        return Ok(Scan::NeedMore(0));
    };
    let frame = match first >> 4 {
        MQTT_CONNACK => Inbound::ConnAck {
            accepted: body.get(1) == Some(&0),
        },
        MQTT_PINGRESP => Inbound::Pong { seq: None },
        _ => Inbound::Other,
    };
    Ok(Scan::Frame(frame, total))
}

// ---------------------------------------------------------------- lifeline XML

fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn memchr_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `buf[at..]` starts with `pattern`: `None` while too few bytes have
/// arrived to tell.
fn starts(buf: &[u8], at: usize, pattern: &[u8]) -> Option<bool> {
    let rest = &buf[at.min(buf.len())..];
    if rest.len() >= pattern.len() {
        Some(rest.starts_with(pattern))
    } else if pattern.starts_with(rest) {
        None
    } else {
        Some(false)
    }
}

/// Index just past the `>` closing the tag that opens at `at`, honouring quoted
/// attribute values; `None` if it has not arrived yet.
fn tag_end(buf: &[u8], at: usize) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in buf.iter().enumerate().skip(at + 1) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Markup that is skipped rather than framed: `<?...?>`, `<!--...-->`,
/// `<![CDATA[...]]>`. Returns the end index, `Ok(None)` if incomplete, or
/// `Err(())` when the markup at `at` is not one of these.
fn skip_special(buf: &[u8], at: usize) -> Result<Option<usize>, ()> {
    for (open, close) in [
        (&b"<?"[..], &b"?>"[..]),
        (b"<!--", b"-->"),
        (b"<![CDATA[", b"]]>"),
    ] {
        match starts(buf, at, open) {
            None => return Ok(None),
            Some(true) => {
                let body = at + open.len();
                return Ok(find(&buf[body..], close).map(|i| body + i + close.len()));
            }
            Some(false) => {}
        }
    }
    Err(())
}

fn scan_xml(buf: &[u8]) -> Result<Scan<'_>, ScanError> {
    let mut at = 0;
    loop {
        while at < buf.len() && is_xml_space(buf[at]) {
            at += 1;
        }
        if at == buf.len() {
            return Ok(Scan::NeedMore(at));
        }
        if buf[at] != b'<' {
            return Err(ScanError::TextOutsideFrame);
        }
        match skip_special(buf, at) {
            Ok(Some(end)) => {
                at = end;
                continue;
            }
            Ok(None) => return Ok(Scan::NeedMore(at)),
            Err(()) => {}
        }
        if buf.get(at + 1).is_some_and(|b| matches!(b, b'/' | b'!')) {
            return Err(ScanError::Malformed);
        }
        let Some(open_end) = tag_end(buf, at) else {
            return Ok(Scan::NeedMore(at));
        };
        let open_tag = &buf[at..open_end];
        let (body, frame_end) = if open_tag.ends_with(b"/>") {
            (&buf[open_end..open_end], open_end)
        } else {
            match element_end(buf, open_end)? {
                Some((close_start, end)) => (&buf[open_end..close_start], end),
                None => return Ok(Scan::NeedMore(at)),
            }
        };
        return Ok(Scan::Frame(classify(open_tag, body), frame_end));
    }
}

/// Finds the element whose start tag ended at `from` (depth 1): where its
/// end tag starts and where it ends.
fn element_end(buf: &[u8], from: usize) -> Result<Option<(usize, usize)>, ScanError> {
    let mut depth = 1usize;
    let mut at = from;
    loop {
        let Some(offset) = memchr_byte(b'<', &buf[at..]) else {
            return Ok(None);
        };
        at += offset;
        match skip_special(buf, at) {
            Ok(Some(end)) => {
                at = end;
                continue;
            }
            Ok(None) => return Ok(None),
            Err(()) => {}
        }
        let Some(end) = tag_end(buf, at) else {
            return Ok(None);
        };
        match buf.get(at + 1) {
            Some(b'/') => depth -= 1,
            Some(b'!') => return Err(ScanError::Malformed),
            _ if buf[..end].ends_with(b"/>") => {}
            _ => depth += 1,
        }
        if depth == 0 {
            return Ok(Some((at, end)));
        }
        at = end;
    }
}

/// Element name of a start tag (`<name ...>`).
fn tag_name(tag: &[u8]) -> &[u8] {
    let body = &tag[1..];
    let len = body
        .iter()
        .position(|b| is_xml_space(*b) || *b == b'/' || *b == b'>')
        .unwrap_or(body.len());
    &body[..len]
}

/// The raw (still escaped) value of attribute `key` in a start tag.
fn attr<'a>(tag: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut at = 1 + tag_name(tag).len();
    loop {
        while at < tag.len() && is_xml_space(tag[at]) {
            at += 1;
        }
        let name_start = at;
        while at < tag.len() && !is_xml_space(tag[at]) && !matches!(tag[at], b'=' | b'/' | b'>') {
            at += 1;
        }
        if at == name_start {
            return None;
        }
        let name = &tag[name_start..at];
        while at < tag.len() && is_xml_space(tag[at]) {
            at += 1;
        }
        if tag.get(at) != Some(&b'=') {
            return None;
        }
        at += 1;
        while at < tag.len() && is_xml_space(tag[at]) {
            at += 1;
        }
        let quote = *tag.get(at)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let value_start = at + 1;
        let value_len = memchr_byte(quote, tag.get(value_start..)?)?;
        if name == key {
            return Some(&tag[value_start..value_start + value_len]);
        }
        at = value_start + value_len + 1;
    }
}

fn number(value: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(value?).ok()?.trim().parse().ok()
}

fn classify<'a>(tag: &'a [u8], body: &'a [u8]) -> Inbound<'a> {
    match tag_name(tag) {
        b"welcome" => Inbound::Welcome {
            interval_ms: number(attr(tag, b"interval")),
            misses: number(attr(tag, b"misses")),
            phase_ms: number(attr(tag, b"phase-ms")),
        },
        b"heartbeat" => match attr(tag, b"mode") {
            Some(b"pong") => Inbound::Pong {
                seq: number(attr(tag, b"seq")),
            },
            Some(b"ping") => Inbound::Probe {
                seq: attr(tag, b"seq"),
            },
            _ => Inbound::Other,
        },
        b"bye" => Inbound::Bye {
            reason: attr(tag, b"reason"),
            retry_ms: number(attr(tag, b"retry-ms")),
        },
        b"error" => Inbound::Error {
            code: attr(tag, b"code"),
        },
        b"msg" => Inbound::Msg {
            id: attr(tag, b"id"),
            body,
        },
        _ => Inbound::Other,
    }
}

#[cfg(test)]
mod tests {
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
}
