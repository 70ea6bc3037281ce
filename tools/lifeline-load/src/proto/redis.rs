//! Redis, as the floor the other protocols are measured against: the inline
//! `PING` and `QUIT` commands out, one reply line in. There is no login.
//! Fan-out mode adds `SUBSCRIBE` and `PUBLISH`, and the arrays a subscribed
//! connection receives (`subscribe` confirmations, `message` deliveries).

use std::io::Write;

use super::{Inbound, Scan, ScanError};

/// Elements an array reply may have at most; pub/sub replies have three.
const MAX_ARRAY: i64 = 1024;

/// Appends the inline `PING` command.
pub(super) fn ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

/// Appends `QUIT`, redis's clean goodbye.
pub(super) fn quit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"QUIT\r\n");
}

/// Appends `SUBSCRIBE channel` (inline: the channel has no spaces).
pub(super) fn subscribe(channel: &str, out: &mut Vec<u8>) {
    let _ = write!(out, "SUBSCRIBE {channel}\r\n");
}

/// Appends `PUBLISH channel payload` as a RESP array, so the payload may
/// hold any bytes.
pub fn publish(channel: &str, payload: &[u8], out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n",
        channel.len(),
        payload.len()
    );
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// One reply: a line (`+PONG`, an `-ERR ...` error, an integer, anything
/// else), or an array of bulk strings and integers.
pub(super) fn scan(buf: &[u8]) -> Result<Scan<'_>, ScanError> {
    match buf.first() {
        None => Ok(Scan::NeedMore(0)),
        Some(b'*') => scan_array(buf),
        Some(_) => Ok(scan_line(buf)),
    }
}

fn scan_line(buf: &[u8]) -> Scan<'_> {
    let Some((line, end)) = line_at(buf, 0) else {
        return Scan::NeedMore(0);
    };
    let frame = if line == b"+PONG" {
        Inbound::Pong { seq: None }
    } else if let Some(rest) = line.strip_prefix(b"-") {
        Inbound::Error {
            code: rest.split(|b| *b == b' ').next(),
        }
    } else {
        Inbound::Other
    };
    Scan::Frame(frame, end)
}

/// The line starting at `at` without its `\r\n`, and where the next starts.
fn line_at(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let newline = at + buf.get(at..)?.iter().position(|b| *b == b'\n')?;
    let line = &buf[at..newline];
    Some((line.strip_suffix(b"\r").unwrap_or(line), newline + 1))
}

fn int(digits: &[u8]) -> Result<i64, ScanError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ScanError::BadReply)
}

/// `*N` followed by N bulk strings (`$len` + bytes) or simple values
/// (`:n`, `+s`); the pub/sub ones are classified, others are `Other`.
fn scan_array(buf: &[u8]) -> Result<Scan<'_>, ScanError> {
    let Some((head, mut at)) = line_at(buf, 0) else {
        return Ok(Scan::NeedMore(0));
    };
    let count = int(&head[1..])?;
    if count > MAX_ARRAY {
        return Err(ScanError::BadReply);
    }
    let mut items: [&[u8]; 3] = [&[]; 3];
    for i in 0..count.max(0) as usize {
        let Some((item_head, next)) = line_at(buf, at) else {
            return Ok(Scan::NeedMore(0));
        };
        let item = match item_head.first() {
            Some(b'$') => {
                let Ok(len) = usize::try_from(int(&item_head[1..])?) else {
                    at = next; // a null bulk string
                    continue;
                };
                let end = next + len;
                match buf.get(end..end + 2) {
                    None => return Ok(Scan::NeedMore(0)),
                    Some(b"\r\n") => {}
                    Some(_) => return Err(ScanError::BadReply),
                }
                at = end + 2;
                &buf[next..end]
            }
            Some(b':' | b'+') => {
                at = next;
                &item_head[1..]
            }
            // Nested arrays and errors are not in what a subscriber receives.
            _ => return Err(ScanError::BadReply),
        };
        if let Some(slot) = items.get_mut(i) {
            *slot = item;
        }
    }
    let frame = match (count, items) {
        (3, [b"message", _, payload]) => Inbound::Published { body: payload },
        (3, [b"subscribe", _, _]) => Inbound::Subscribed,
        _ => Inbound::Other,
    };
    Ok(Scan::Frame(frame, at))
}
