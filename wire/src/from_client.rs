//! The frames a client sends, decoded: bytes → [`Frame`], and nothing else
//! (no I/O, no policy). The server's side of the stream.
//!
//! A [`FrameReader`] walks one buffer with a single `quick-xml` reader and
//! yields frames that borrow from that buffer; when the buffer ends inside a
//! frame it reports how many bytes were consumed, so the caller keeps only the
//! unparsed tail. The result is the same for every way of cutting the stream,
//! because a truncated frame is never mistaken for a malformed one: the only
//! errors that mean "need more bytes" are the ones quick-xml raises at the end
//! of its input, plus a UTF-8 sequence cut at the end of the buffer.
//!
//! Parsing a ping allocates nothing (nor does encoding the pong, in
//! [`crate::to_client`]): the reader borrows the buffer, and attributes are
//! read without quick-xml's duplicate check (which allocates) and checked
//! against a fixed-size array instead.

use quick_xml::errors::{Error as XmlError, IllFormedError, SyntaxError};
use quick_xml::events::attributes::Attributes;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::codes::ErrorCode;
use crate::ids::{is_valid_id, is_valid_message_id};

/// More attributes than this on one element is refused: it bounds the
/// duplicate check of attributes the protocol does not define, and no frame of
/// the protocol has more than four.
pub const MAX_ATTRIBUTES: usize = 16;

/// One decoded client frame; strings and bodies borrow from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Login {
        id: &'a str,
        token: Option<&'a str>,
        /// Version 1.2: the token expires at this Unix second (the token is
        /// then the MAC of `ID|exp`).
        exp: Option<u64>,
        /// Version 1.2: the heartbeat interval the client asks for, in ms
        /// (the server grants it within its range).
        interval: Option<u64>,
    },
    /// A client-initiated heartbeat (`mode="ping"`): answered with a pong.
    Ping {
        seq: Option<u64>,
    },
    /// The answer to a server probe (`mode="pong"`).
    Pong {
        seq: Option<u64>,
    },
    Msg {
        to: &'a str,
        id: Option<&'a str>,
        /// The element's content exactly as it was on the wire.
        body: &'a str,
    },
    Ack {
        id: &'a str,
    },
    Bye,
    /// A well-formed element this version does not know.
    Unknown {
        name: &'a str,
    },
}

/// Why a frame was refused. Every variant closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame longer than {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("login id must be 1 to 64 characters of A-Z a-z 0-9 _ . : @ -")]
    BadId,
    #[error("malformed XML: {0}")]
    Xml(#[from] XmlError),
    #[error("malformed attribute: {0}")]
    Attribute(#[from] quick_xml::events::attributes::AttrError),
    #[error("a character XML does not allow (invalid UTF-8 or a control character)")]
    InvalidCharacter,
    #[error("DOCTYPE and entity declarations are not accepted")]
    Doctype,
    #[error(
        "reference to an undeclared entity (only lt, gt, amp, apos, quot and character references)"
    )]
    UnknownEntity,
    #[error("'<' inside an attribute value")]
    LtInAttribute,
    #[error("text outside a frame")]
    TextOutsideFrame,
    #[error("markup whose extent cannot be determined")]
    Undelimited,
    #[error("XML declaration after the first frame")]
    MisplacedDeclaration,
    #[error("processing instructions are not accepted")]
    ProcessingInstruction,
    #[error("duplicate attribute")]
    DuplicateAttribute,
    #[error("more than {MAX_ATTRIBUTES} attributes on one element")]
    TooManyAttributes,
    #[error("<{frame}> needs the attribute {attr}")]
    MissingAttribute {
        frame: &'static str,
        attr: &'static str,
    },
    #[error("<{frame}> has an invalid {attr}")]
    InvalidAttribute {
        frame: &'static str,
        attr: &'static str,
    },
}

impl WireError {
    /// The protocol's error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::BadId => ErrorCode::BadId,
            _ => ErrorCode::BadFrame,
        }
    }
}

/// How far a connection's byte stream has got, as far as the codec cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamPosition {
    /// Nothing consumed yet: a byte order mark may come first.
    #[default]
    Start,
    /// Whitespace, comments or the XML declaration consumed, no frame yet.
    BeforeFirstFrame,
    /// At least one frame: no declaration any more.
    AfterFrame,
}

/// Walks the frames of one buffer.
pub struct FrameReader<'a> {
    text: &'a str,
    reader: Reader<&'a [u8]>,
    /// The buffer holds a character XML does not allow right after `text`.
    invalid_after_text: bool,
    /// Offset of the reader's input in the buffer (a stripped byte order mark).
    base: usize,
    /// A byte order mark anywhere but at the very start: text outside a frame.
    stray_bom: bool,
    /// Everything before this offset is parsed and may be dropped.
    consumed: usize,
    buf_len: usize,
    max_frame: usize,
    position: StreamPosition,
}

/// What [`FrameReader::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Frame(Frame<'a>),
    /// The rest of the buffer (from [`FrameReader::consumed`]) is the start of
    /// a frame, or empty: read more.
    NeedMore,
}

impl<'a> FrameReader<'a> {
    /// `position`: where the connection's stream stood before `buf`.
    pub fn new(buf: &'a [u8], max_frame: usize, position: StreamPosition) -> FrameReader<'a> {
        // Parse only up to the first character XML forbids, so the frames
        // before it are still delivered whatever the cut of the stream; a UTF-8
        // sequence cut by the end of the buffer is not an error yet.
        let control = buf
            .iter()
            .position(|&b| b < 0x20 && !is_xml_whitespace(b))
            .unwrap_or(buf.len());
        let (text, invalid_after_text) = match std::str::from_utf8(&buf[..control]) {
            Ok(text) => (text, control < buf.len()),
            Err(e) => {
                let valid = &buf[..e.valid_up_to()];
                let text = std::str::from_utf8(valid).unwrap_or_default();
                (text, e.error_len().is_some() || control < buf.len())
            }
        };
        // quick-xml skips a byte order mark at the start of its input without
        // counting it in positions; strip it here so positions stay those of
        // `buf`. It may only open the stream: later, it is text outside a frame.
        const BOM: &str = "\u{feff}";
        let base = if text.starts_with(BOM) { BOM.len() } else { 0 };
        // quick-xml would skip a second mark right after the first silently,
        // but cut between them the second is stray: refuse it either way.
        let stray_bom =
            base > 0 && (position != StreamPosition::Start || text[base..].starts_with(BOM));
        let mut reader = Reader::from_str(&text[base..]);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        FrameReader {
            text,
            reader,
            invalid_after_text,
            stray_bom,
            base,
            consumed: base,
            buf_len: buf.len(),
            max_frame,
            position,
        }
    }

    /// Bytes of the buffer fully parsed; the caller keeps the rest for the next read.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Where the stream stands after what was consumed (carry it to the next buffer).
    pub fn position(&self) -> StreamPosition {
        if self.position == StreamPosition::Start && self.consumed > 0 {
            StreamPosition::BeforeFirstFrame
        } else {
            self.position
        }
    }

    /// The next complete frame, [`Decoded::NeedMore`], or the reason the stream is refused.
    pub fn next_frame(&mut self) -> Result<Decoded<'a>, WireError> {
        if self.stray_bom {
            return Err(WireError::TextOutsideFrame);
        }
        if self.consumed == self.buf_len {
            // The usual end of a read: the last frame ended the buffer, and
            // asking quick-xml would only be told so.
            return self.need_more();
        }
        let mut depth = 0usize;
        let mut frame_start = 0usize;
        let mut top: Option<(&'a str, Attrs<'a>, usize)> = None; // (name, attributes, body start)
        loop {
            let before = self.offset();
            let event = match self.reader.read_event() {
                Ok(event) => event,
                Err(e) if self.is_truncation(&e) => return self.need_more(),
                Err(e) => return Err(e.into()),
            };
            let after = self.offset();
            if top.is_some() && after - frame_start > self.max_frame {
                return Err(WireError::FrameTooLarge {
                    max: self.max_frame,
                });
            }
            match event {
                Event::Eof => return self.need_more(),
                Event::Text(t) if depth == 0 => {
                    if !t.as_ref().bytes().all(is_xml_whitespace) {
                        return Err(WireError::TextOutsideFrame);
                    }
                    self.consumed = after;
                }
                Event::Decl(_) => {
                    if self.position == StreamPosition::AfterFrame || depth > 0 {
                        return Err(WireError::MisplacedDeclaration);
                    }
                    self.skip_markup(before, after)?;
                }
                Event::Comment(_) if depth == 0 => self.skip_markup(before, after)?,
                Event::DocType(_) => return Err(WireError::Doctype),
                Event::PI(_) => return Err(WireError::ProcessingInstruction),
                Event::CData(_) if depth == 0 => return Err(WireError::TextOutsideFrame),
                Event::GeneralRef(r) => {
                    if depth == 0 {
                        return Err(WireError::TextOutsideFrame);
                    }
                    if !is_predefined_entity(&r) && !matches!(r.resolve_char_ref(), Ok(Some(_))) {
                        return Err(WireError::UnknownEntity);
                    }
                }
                Event::Start(e) => {
                    let (tag, name) = self.tag(before, after, 1, e.name().0.len())?;
                    let attrs = Attrs::read(tag, name.len())?;
                    if depth == 0 {
                        frame_start = before;
                        top = Some((name, attrs, after));
                    }
                    depth += 1;
                }
                Event::Empty(e) => {
                    let (tag, name) = self.tag(before, after, 2, e.name().0.len())?;
                    let attrs = Attrs::read(tag, name.len())?;
                    if depth == 0 {
                        if after - before > self.max_frame {
                            return Err(WireError::FrameTooLarge {
                                max: self.max_frame,
                            });
                        }
                        return self.complete(name, &attrs, "", after);
                    }
                }
                Event::End(_) => {
                    depth -= 1;
                    if depth == 0 {
                        if let Some((name, attrs, body_start)) = top.take() {
                            let body = self
                                .text
                                .get(body_start..before)
                                .ok_or(WireError::Undelimited)?;
                            return self.complete(name, &attrs, body, after);
                        }
                    }
                }
                Event::Text(_) | Event::CData(_) | Event::Comment(_) => {}
            }
        }
    }

    fn offset(&self) -> usize {
        self.base + self.reader.buffer_position() as usize
    }

    /// Consumes a comment or declaration between frames. One longer than
    /// `max_frame` is refused, as it would be while incomplete: the outcome
    /// must not depend on where the stream was cut.
    fn skip_markup(&mut self, before: usize, after: usize) -> Result<(), WireError> {
        if after - before > self.max_frame {
            return Err(WireError::FrameTooLarge {
                max: self.max_frame,
            });
        }
        self.consumed = after;
        Ok(())
    }

    /// The text between `<` and `>` (less `trailer` bytes: `/` of an empty
    /// element) of the tag that ended at `after`, and its name. The tag starts
    /// at the first `<` from `before` (quick-xml skips a byte order mark
    /// without reporting it). Slicing is checked: no input can panic here.
    fn tag(
        &self,
        before: usize,
        after: usize,
        trailer: usize,
        name_len: usize,
    ) -> Result<(&'a str, &'a str), WireError> {
        let text: &'a str = self.text;
        let lt = if text.as_bytes().get(before) == Some(&b'<') {
            0 // the usual case; only a skipped byte order mark comes first
        } else {
            text.get(before..after)
                .and_then(|s| s.find('<'))
                .ok_or(WireError::Undelimited)?
        };
        let tag = text
            .get(before + lt + 1..after.saturating_sub(trailer))
            .ok_or(WireError::Undelimited)?;
        let name = tag.get(..name_len).ok_or(WireError::Undelimited)?;
        Ok((tag, name))
    }

    fn complete(
        &mut self,
        name: &'a str,
        attrs: &Attrs<'a>,
        body: &'a str,
        end: usize,
    ) -> Result<Decoded<'a>, WireError> {
        self.consumed = end;
        self.position = StreamPosition::AfterFrame;
        Ok(Decoded::Frame(frame_from(name, attrs, body)?))
    }

    fn need_more(&self) -> Result<Decoded<'a>, WireError> {
        if self.invalid_after_text {
            return Err(WireError::InvalidCharacter);
        }
        if self.buf_len - self.consumed > self.max_frame {
            return Err(WireError::FrameTooLarge {
                max: self.max_frame,
            });
        }
        Ok(Decoded::NeedMore)
    }

    /// Errors quick-xml raises only because its input ended: more bytes may
    /// turn them into a frame.
    fn is_truncation(&self, e: &XmlError) -> bool {
        let at = (self.base + self.reader.error_position() as usize).min(self.text.len());
        let rest = self.text.get(at..).unwrap_or_default();
        match e {
            XmlError::Syntax(SyntaxError::InvalidBangMarkup) => rest == "<!",
            XmlError::Syntax(_) => true,
            XmlError::IllFormed(IllFormedError::UnclosedReference) => {
                rest.starts_with('&') && rest.bytes().skip(1).all(is_name_byte)
            }
            _ => false,
        }
    }
}

fn is_xml_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'#' | b'_' | b'-' | b'.' | b':') || b >= 0x80
}

fn is_predefined_entity(r: &quick_xml::events::BytesRef<'_>) -> bool {
    matches!(r.as_ref(), "lt" | "gt" | "amp" | "apos" | "quot")
}

/// The attributes the protocol defines (a tag's others are checked but not
/// kept), and where [`Attrs`] keeps each.
fn known_attribute(key: &str) -> Option<usize> {
    match key {
        "id" => Some(0),
        "token" => Some(1),
        "mode" => Some(2),
        "seq" => Some(3),
        "to" => Some(4),
        "exp" => Some(5),
        "interval" => Some(6),
        _ => None,
    }
}

/// The attributes of one tag, checked in one pass. Only the values of the
/// attributes the protocol defines are kept, so reading a tag writes and
/// moves a few words rather than a table of every attribute (that table's
/// copies showed in the heartbeat profile).
#[derive(Default)]
struct Attrs<'a> {
    known: [Option<&'a str>; 7],
}

impl<'a> Attrs<'a> {
    /// Reads and checks every attribute: at most [`MAX_ATTRIBUTES`], no
    /// duplicate keys, no '<' in values, no undeclared entity references.
    /// Nothing is allocated. Values stay raw (not unescaped): every attribute
    /// the protocol defines is restricted to characters that need no
    /// escaping, so a value with a reference in it fails validation where it
    /// is used.
    fn read(tag: &'a str, name_len: usize) -> Result<Attrs<'a>, WireError> {
        let mut attrs = Attrs::default();
        let mut attributes = Attributes::new(tag, name_len);
        attributes.with_checks(false);
        for (count, attribute) in attributes.enumerate() {
            let attribute = attribute?;
            let key: &'a str = attribute.key.0;
            // Attributes over a borrowed &str hand out borrowed values.
            let std::borrow::Cow::Borrowed(value) = attribute.value else {
                return Err(WireError::Undelimited);
            };
            if count == MAX_ATTRIBUTES {
                return Err(WireError::TooManyAttributes);
            }
            let duplicate = match known_attribute(key).and_then(|i| attrs.known.get_mut(i)) {
                Some(slot) => slot.replace(value).is_some(),
                // No frame of the protocol has other attributes: comparing
                // with the keys before this one costs only a peer that sends them.
                None => earlier_keys(tag, name_len, count).any(|k| k == key),
            };
            if duplicate {
                return Err(WireError::DuplicateAttribute);
            }
            check_attribute_value(value)?;
        }
        Ok(attrs)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        *self.known.get(known_attribute(key)?)?
    }
}

/// The keys of the first `n` attributes of a tag already read without error.
fn earlier_keys(tag: &str, name_len: usize, n: usize) -> impl Iterator<Item = &str> {
    let mut attributes = Attributes::new(tag, name_len);
    attributes.with_checks(false);
    attributes.take(n).filter_map(Result::ok).map(|a| a.key.0)
}

fn check_attribute_value(value: &str) -> Result<(), WireError> {
    // One pass over what is usually a few bytes.
    let mut reference = false;
    for b in value.bytes() {
        match b {
            b'<' => return Err(WireError::LtInAttribute),
            b'&' => reference = true,
            _ => {}
        }
    }
    // Unescaping allocates, but only for values that hold a reference at all.
    if reference && quick_xml::escape::unescape(value).is_err() {
        return Err(WireError::UnknownEntity);
    }
    Ok(())
}

/// A plain decimal number: digits only (no sign, no space), within u64.
fn decimal(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn frame_from<'a>(name: &'a str, attrs: &Attrs<'a>, body: &'a str) -> Result<Frame<'a>, WireError> {
    let required = |frame: &'static str, attr: &'static str| {
        attrs
            .get(attr)
            .ok_or(WireError::MissingAttribute { frame, attr })
    };
    let message_id = |frame: &'static str, attr: &'static str, v: &'a str| {
        if is_valid_message_id(v) {
            Ok(v)
        } else {
            Err(WireError::InvalidAttribute { frame, attr })
        }
    };
    Ok(match name {
        "login" => {
            let id = attrs.get("id").ok_or(WireError::BadId)?;
            if !is_valid_id(id) {
                return Err(WireError::BadId);
            }
            let number = |attr: &'static str| match attrs.get(attr) {
                None => Ok(None),
                Some(v) => decimal(v).map(Some).ok_or(WireError::InvalidAttribute {
                    frame: "login",
                    attr,
                }),
            };
            Frame::Login {
                id,
                token: attrs.get("token"),
                exp: number("exp")?,
                interval: number("interval")?,
            }
        }
        "heartbeat" => {
            let seq = match attrs.get("seq") {
                None => None,
                Some(s) => Some(s.parse::<u64>().map_err(|_| WireError::InvalidAttribute {
                    frame: "heartbeat",
                    attr: "seq",
                })?),
            };
            match required("heartbeat", "mode")? {
                "ping" => Frame::Ping { seq },
                "pong" => Frame::Pong { seq },
                _ => {
                    return Err(WireError::InvalidAttribute {
                        frame: "heartbeat",
                        attr: "mode",
                    })
                }
            }
        }
        "msg" => {
            let to = required("msg", "to")?;
            if !is_valid_id(to) {
                return Err(WireError::InvalidAttribute {
                    frame: "msg",
                    attr: "to",
                });
            }
            let id = match attrs.get("id") {
                None => None,
                Some(v) => Some(message_id("msg", "id", v)?),
            };
            Frame::Msg { to, id, body }
        }
        "ack" => Frame::Ack {
            id: message_id("ack", "id", required("ack", "id")?)?,
        },
        "bye" => Frame::Bye,
        _ => Frame::Unknown { name },
    })
}

#[cfg(test)]
mod tests;
