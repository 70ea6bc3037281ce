//! Lifeline's XML frames. Outbound, the frames come from
//! `lifeline_wire::to_server`, the same encoders every client uses. Inbound,
//! a scanner, not an XML parser: it finds where each top-level element ends
//! (quotes, comments, CDATA and nesting respected) and reads the few
//! attributes a load client needs; everything else is `Inbound::Other`.
//!
//! It does not use `lifeline_wire::from_server`, the decoder
//! `lifeline-client` uses: that one validates strictly, checks the buffer as
//! UTF-8 on every call and copies text into owned strings. This one borrows
//! from the read buffer and allocates nothing on the path every pong takes.

use lifeline_wire::to_server;

use super::{Inbound, Scan, ScanError};

// ---------------------------------------------------------------- encoders

pub(super) fn login(id: &str, token: Option<&str>, out: &mut Vec<u8>) {
    to_server::encode_login(out, id, token);
}

pub(super) fn ping(seq: u64, out: &mut Vec<u8>) {
    to_server::encode_ping(out, Some(seq));
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

pub(super) fn bye(out: &mut Vec<u8>) {
    to_server::encode_bye(out);
}

// ---------------------------------------------------------------- scanner

pub(super) fn is_xml_space(b: u8) -> bool {
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

/// The next top-level element, after skipping whitespace, declarations and
/// comments.
pub(super) fn scan(buf: &[u8]) -> Result<Scan<'_>, ScanError> {
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
