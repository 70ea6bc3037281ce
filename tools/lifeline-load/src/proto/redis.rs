//! Redis, as the floor the other protocols are measured against: the inline
//! `PING` and `QUIT` commands out, one reply line in. There is no login.

use super::{Inbound, Scan};

/// Appends the inline `PING` command.
pub(super) fn ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

/// Appends `QUIT`, redis's clean goodbye.
pub(super) fn quit(out: &mut Vec<u8>) {
    out.extend_from_slice(b"QUIT\r\n");
}

/// One reply line: `+PONG`, an `-ERR ...` error, or anything else.
pub(super) fn scan(buf: &[u8]) -> Scan<'_> {
    let Some(newline) = buf.iter().position(|b| *b == b'\n') else {
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
