//! The frames a server sends, decoded for a client: bytes → [`ServerFrame`],
//! owned values, no I/O. (The server's side is [`crate::FrameReader`].)

use std::borrow::Cow;
use std::time::Duration;

use quick_xml::errors::{Error as XmlError, SyntaxError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// Longest wait a server may ask for (heartbeat window, retry-ms). Larger
/// values are refused as malformed: they mean nothing useful, and adding them
/// to an `Instant` could overflow.
pub const LONGEST_SERVER_WAIT: Duration = Duration::from_secs(100 * 24 * 3600);

/// A server frame a client cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum ServerFrameError {
    #[error("malformed XML from the server: {0}")]
    Xml(#[from] XmlError),
    #[error("malformed attribute from the server: {0}")]
    Attribute(#[from] quick_xml::events::attributes::AttrError),
    #[error("undeclared entity in a server frame: {0}")]
    Entity(#[from] quick_xml::escape::EscapeError),
    #[error("invalid UTF-8 from the server")]
    InvalidUtf8,
    #[error("text outside a frame")]
    TextOutsideFrame,
    #[error("DOCTYPE from the server")]
    Doctype,
    #[error("server frame longer than {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("<{frame}> without a valid {attr}")]
    BadAttribute {
        frame: &'static str,
        attr: &'static str,
    },
}

/// One frame from the server, decoded into owned values: a client handles a
/// few frames per interval, so copying is cheaper than lifetimes here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// `<welcome id="ID" interval="MS" misses="N" phase-ms="P"/>`: logged in.
    /// `interval` and `misses` are positive and their product is at most
    /// [`LONGEST_SERVER_WAIT`]; `phase` is when to send the first ping.
    Welcome {
        id: String,
        interval: Duration,
        misses: u32,
        phase: Option<Duration>,
    },
    /// The server's probe: answer with a pong echoing `seq`.
    Ping { seq: Option<u64> },
    /// The answer to the client's ping.
    Pong { seq: Option<u64> },
    /// A message; `body` has the predefined entities and character
    /// references expanded, markup inside it passed through as written.
    Msg {
        from: String,
        id: Option<String>,
        body: String,
    },
    /// The server is closing; `retry_after` is its advice on when to come back.
    Bye {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// `<error code="C" ref="R">text</error>`, `text` unescaped.
    Error {
        code: String,
        reference: Option<String>,
        text: String,
    },
    /// An element a later protocol version may send; ignored.
    Unknown,
}

/// Decodes the first frame of `buf`. Returns the frame (or `None` when `buf`
/// holds only the start of one) and the bytes consumed, which include
/// whitespace, comments and an XML declaration before it. The result is the
/// same for every way the stream is cut into reads, because the only errors
/// treated as "read more" are the ones quick-xml raises when its input ends.
pub fn decode(
    buf: &[u8],
    max_frame: usize,
) -> Result<(Option<ServerFrame>, usize), ServerFrameError> {
    // Parse the valid UTF-8 prefix: a character cut by the end of a read
    // completes with the next one.
    let (text, invalid_utf8) = match std::str::from_utf8(buf) {
        Ok(text) => (text, false),
        Err(e) => (
            std::str::from_utf8(&buf[..e.valid_up_to()]).unwrap_or_default(),
            e.error_len().is_some(),
        ),
    };
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    let mut consumed = 0;
    let mut depth = 0usize;
    let mut open: Option<(BytesStart<'_>, usize)> = None; // top element, body start
    loop {
        let before = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) if is_truncation(&e, text, reader.error_position() as usize) => break,
            Err(e) => return Err(e.into()),
        };
        let after = reader.buffer_position() as usize;
        match event {
            Event::Eof => break,
            Event::Start(start) => {
                if depth == 0 {
                    open = Some((start, after));
                }
                depth += 1;
            }
            Event::Empty(start) if depth == 0 => {
                return Ok((Some(frame_from(&start, "")?), after));
            }
            Event::End(_) => {
                // check_end_names (on by default) makes an unmatched end tag an
                // error, so depth is positive here.
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    if let Some((start, body_start)) = open.take() {
                        let frame = frame_from(&start, &text[body_start..before])?;
                        return Ok((Some(frame), after));
                    }
                }
            }
            Event::Text(t) if depth == 0 => {
                if !t.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
                    return Err(ServerFrameError::TextOutsideFrame);
                }
                consumed = after;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) if depth == 0 => consumed = after,
            Event::DocType(_) => return Err(ServerFrameError::Doctype),
            Event::CData(_) | Event::GeneralRef(_) if depth == 0 => {
                return Err(ServerFrameError::TextOutsideFrame)
            }
            // Inside a frame: the body is taken whole when its end tag comes.
            _ => {}
        }
    }
    if invalid_utf8 {
        return Err(ServerFrameError::InvalidUtf8);
    }
    if buf.len() - consumed > max_frame {
        return Err(ServerFrameError::FrameTooLarge { max: max_frame });
    }
    Ok((None, consumed))
}

/// Errors quick-xml raises only because its input ended inside markup:
/// `position` is quick-xml's error position in `text`.
pub fn is_truncation(e: &XmlError, text: &str, position: usize) -> bool {
    let rest = &text[position.min(text.len())..];
    match e {
        XmlError::Syntax(SyntaxError::InvalidBangMarkup) => rest == "<!",
        XmlError::Syntax(_) => true,
        XmlError::IllFormed(quick_xml::errors::IllFormedError::UnclosedReference) => {
            rest.starts_with('&')
                && rest[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'#' | b'_' | b'-' | b'.'))
        }
        _ => false,
    }
}

/// The frame that the element `start`, with `body` between its tags (empty
/// for an empty element), stands for. An element this version does not know
/// is [`ServerFrame::Unknown`].
pub fn frame_from(start: &BytesStart<'_>, body: &str) -> Result<ServerFrame, ServerFrameError> {
    let name = start.name().0;
    let frame = match name {
        "welcome" => "welcome",
        "heartbeat" => "heartbeat",
        "msg" => "msg",
        "bye" => "bye",
        "error" => "error",
        _ => return Ok(ServerFrame::Unknown),
    };
    let optional = |attr: &'static str| -> Result<Option<String>, ServerFrameError> {
        match start.try_get_attribute(attr)? {
            Some(a) => Ok(Some(
                a.normalized_value(XmlVersion::Implicit1_0)?.into_owned(),
            )),
            None => Ok(None),
        }
    };
    let bad = |attr| ServerFrameError::BadAttribute { frame, attr };
    let required = |attr| optional(attr)?.ok_or(bad(attr));
    let millis = |attr| -> Result<Option<Duration>, ServerFrameError> {
        let Some(value) = optional(attr)? else {
            return Ok(None);
        };
        match value.parse::<u64>().map(Duration::from_millis) {
            Ok(d) if d <= LONGEST_SERVER_WAIT => Ok(Some(d)),
            _ => Err(bad(attr)),
        }
    };
    let seq = || -> Result<Option<u64>, ServerFrameError> {
        optional("seq")?
            .map(|s| s.parse::<u64>().map_err(|_| bad("seq")))
            .transpose()
    };
    Ok(match frame {
        "welcome" => {
            let interval = millis("interval")?.ok_or(bad("interval"))?;
            let misses = required("misses")?
                .parse::<u32>()
                .map_err(|_| bad("misses"))?;
            // Both must be positive for the loss deadline to mean anything,
            // and their product must stay a sane wait.
            if interval.is_zero() {
                return Err(bad("interval"));
            }
            if misses == 0 || interval.saturating_mul(misses) > LONGEST_SERVER_WAIT {
                return Err(bad("misses"));
            }
            ServerFrame::Welcome {
                id: required("id")?,
                interval,
                misses,
                phase: millis("phase-ms")?,
            }
        }
        "heartbeat" => match required("mode")?.as_str() {
            "ping" => ServerFrame::Ping { seq: seq()? },
            "pong" => ServerFrame::Pong { seq: seq()? },
            _ => return Err(bad("mode")),
        },
        "msg" => ServerFrame::Msg {
            from: required("from")?,
            id: optional("id")?,
            body: unescape(body)?,
        },
        "bye" => ServerFrame::Bye {
            reason: required("reason")?,
            retry_after: millis("retry-ms")?,
        },
        _ => ServerFrame::Error {
            code: required("code")?,
            reference: optional("ref")?,
            text: unescape(body)?,
        },
    })
}

/// `body` with the predefined entities and character references expanded.
pub fn unescape(body: &str) -> Result<String, ServerFrameError> {
    Ok(match quick_xml::escape::unescape(body)? {
        Cow::Borrowed(text) => text.to_string(),
        Cow::Owned(text) => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `stream` fed in `pieces` (cut at the given offsets) the way a
    /// connection does: append, take frames, keep the tail.
    fn decode_cut(stream: &[u8], cuts: &[usize]) -> Result<Vec<ServerFrame>, String> {
        let mut inbound = Vec::new();
        let mut frames = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
            inbound.extend_from_slice(&stream[start..end]);
            start = end;
            let mut offset = 0;
            loop {
                let (frame, used) = decode(&inbound[offset..], 4096).map_err(|e| e.to_string())?;
                offset += used;
                match frame {
                    Some(frame) => frames.push(frame),
                    None => break,
                }
            }
            inbound.drain(..offset);
        }
        assert!(
            inbound.iter().all(u8::is_ascii_whitespace),
            "left over: {inbound:?}"
        );
        Ok(frames)
    }

    const STREAM: &str = "<?xml version=\"1.0\"?>\n\
        <welcome id=\"a\" interval=\"5000\" misses=\"5\" phase-ms=\"120\"/>\r\n\
        <heartbeat mode=\"ping\" seq=\"7\"/><heartbeat mode=\"pong\"/>\
        <msg from=\"b\" id=\"m1\">h\u{e9}llo &amp; &#x2713; <i>x</i></msg>\
        <error code=\"offline\" ref=\"m&quot;2\">b is not online</error>\
        <future x=\"1\"><deep/></future>\
        <bye reason=\"shutdown\" retry-ms=\"1500\"/>";

    fn expected() -> Vec<ServerFrame> {
        vec![
            ServerFrame::Welcome {
                id: "a".into(),
                interval: Duration::from_millis(5000),
                misses: 5,
                phase: Some(Duration::from_millis(120)),
            },
            ServerFrame::Ping { seq: Some(7) },
            ServerFrame::Pong { seq: None },
            ServerFrame::Msg {
                from: "b".into(),
                id: Some("m1".into()),
                body: "h\u{e9}llo & \u{2713} <i>x</i>".into(),
            },
            ServerFrame::Error {
                code: "offline".into(),
                reference: Some("m\"2".into()),
                text: "b is not online".into(),
            },
            ServerFrame::Unknown,
            ServerFrame::Bye {
                reason: "shutdown".into(),
                retry_after: Some(Duration::from_millis(1500)),
            },
        ]
    }

    #[test]
    fn decodes_every_frame_in_one_read() {
        assert_eq!(decode_cut(STREAM.as_bytes(), &[]).unwrap(), expected());
    }

    #[test]
    fn every_single_cut_and_byte_by_byte_give_the_same_frames() {
        let stream = STREAM.as_bytes();
        for cut in 1..stream.len() {
            assert_eq!(
                decode_cut(stream, &[cut]).unwrap(),
                expected(),
                "cut at {cut}"
            );
        }
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(decode_cut(stream, &every_byte).unwrap(), expected());
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        let refused = [
            "hello",
            "<!DOCTYPE x><bye reason=\"x\"/>",
            "<msg from=\"b\">&bogus;</msg>",
            "<welcome id=\"a\" interval=\"0\" misses=\"5\"/>",
            "<welcome id=\"a\" interval=\"5000\" misses=\"0\"/>",
            "<welcome id=\"a\" interval=\"99999999999999999\" misses=\"5\"/>",
            "<welcome id=\"a\" misses=\"5\"/>",
            "<heartbeat mode=\"pang\"/>",
            "<heartbeat mode=\"ping\" seq=\"-1\"/>",
            "<a></b>",
        ];
        for text in refused {
            assert!(decode_cut(text.as_bytes(), &[]).is_err(), "accepted {text}");
        }
        let mut invalid_utf8 = b"<msg from=\"b\">".to_vec();
        invalid_utf8.push(0xff);
        invalid_utf8.extend_from_slice(b"</msg>");
        assert!(
            decode_cut(&invalid_utf8, &[]).is_err(),
            "invalid UTF-8 accepted"
        );
    }

    #[test]
    fn bounds_a_frame_that_never_ends() {
        let long = format!("<msg from=\"b\">{}", "x".repeat(5000));
        assert_eq!(
            decode_cut(long.as_bytes(), &[]).unwrap_err(),
            "server frame longer than 4096 bytes"
        );
        // Whitespace between frames is consumed, so it never accumulates.
        assert!(decode_cut(" ".repeat(10_000).as_bytes(), &[])
            .unwrap()
            .is_empty());
    }
}
