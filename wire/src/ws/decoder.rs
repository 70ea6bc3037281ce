//! The inbound half: a client's masked frames, decoded in place into the
//! pieces of its text messages and its control frames.

use super::frame::{decode_header, is_valid_close_code, unmask, FrameHeader, Opcode, WsError};

/// What [`Decoder::decode`] found at the front of the buffer. Every variant
/// but `NeedMore` consumed at least one byte; `NeedMore` consumed none.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// The front of the buffer is a partial header or a partial control
    /// frame (or the buffer is empty): read more, keep the bytes.
    NeedMore,
    /// The next piece of a text message, unmasked and valid UTF-8 so far (a
    /// character may be cut at its end): append it to the XML stream.
    /// `message_end`: the message is complete (and wholly valid UTF-8).
    Text {
        consumed: usize,
        payload: &'a [u8],
        message_end: bool,
    },
    /// Answer with [`write_pong`](super::write_pong) carrying the same payload.
    Ping {
        consumed: usize,
        payload: &'a [u8],
    },
    Pong {
        consumed: usize,
        payload: &'a [u8],
    },
    /// The client is closing: answer with [`write_close`](super::write_close)
    /// (echoing `code`, or 1000 when there is none), then close the socket.
    Close {
        consumed: usize,
        code: Option<u16>,
        reason: &'a str,
    },
}

/// The inbound state of one WebSocket connection: the data frame being
/// received and the text message it belongs to. Small and `Copy`; payload
/// bytes are never held here.
#[derive(Debug, Default, Clone, Copy)]
pub struct Decoder {
    /// Payload bytes of the current data frame still to come.
    remaining: u64,
    /// Bytes of the open message so far, the current frame's whole length included.
    message_len: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame delivered so far, modulo 4.
    mask_phase: u8,
    /// The current data frame is the message's last.
    fin: bool,
    /// A text message has begun and its final frame has not ended.
    in_message: bool,
    utf8: Utf8Check,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Everything the decoder holds, as plain fields: a live connection
    /// handed to another process (Lifeline's upgrade) takes its decoder
    /// with it, mid-frame and mid-message.
    pub fn parts(&self) -> DecoderParts {
        DecoderParts {
            remaining: self.remaining,
            message_len: self.message_len,
            mask: self.mask,
            mask_phase: self.mask_phase,
            fin: self.fin,
            in_message: self.in_message,
            utf8_pending: self.utf8.pending,
            utf8_pending_len: self.utf8.pending_len,
        }
    }

    /// The decoder [`Decoder::parts`] described; `None` for parts no
    /// decoder can have (a mask phase past 3, more than 3 bytes of a cut
    /// character).
    pub fn from_parts(p: DecoderParts) -> Option<Decoder> {
        if p.mask_phase > 3 || p.utf8_pending_len > 3 {
            return None;
        }
        Some(Decoder {
            remaining: p.remaining,
            message_len: p.message_len,
            mask: p.mask,
            mask_phase: p.mask_phase,
            fin: p.fin,
            in_message: p.in_message,
            utf8: Utf8Check {
                pending: p.utf8_pending,
                pending_len: p.utf8_pending_len,
            },
        })
    }

    /// True between the first frame of a text message and the end of its
    /// final frame, i.e. while the XML stream may end mid-message.
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    /// Decodes the front of `buf`, the connection's unconsumed input, in
    /// place. The caller drops the `consumed` bytes and calls again until
    /// [`Inbound::NeedMore`]. `max_message` bounds every text message (the
    /// sum of its frames); control frames are whole before they are reported,
    /// data is reported piece by piece as it arrives. Bytes not consumed are
    /// never modified. Text is checked as it arrives; at a UTF-8 fault the
    /// whole characters before it are delivered first and the error comes on
    /// the next call, so how the stream was cut never changes what reaches
    /// the XML stream.
    pub fn decode<'a>(
        &mut self,
        buf: &'a mut [u8],
        max_message: usize,
    ) -> Result<Inbound<'a>, WsError> {
        if self.remaining > 0 {
            return self.data(buf, 0);
        }
        let Some(header) = decode_header(buf)? else {
            return Ok(Inbound::NeedMore);
        };
        let mask = header.mask.ok_or(WsError::Unmasked)?;
        if header.opcode.is_control() {
            return control(buf, header, mask);
        }
        match (header.opcode, self.in_message) {
            (Opcode::Continuation, false) => return Err(WsError::UnexpectedContinuation),
            (Opcode::Text | Opcode::Binary, true) => return Err(WsError::MessageInterleaved),
            (Opcode::Binary, false) => return Err(WsError::Binary),
            _ => {}
        }
        let max = u64::try_from(max_message).unwrap_or(u64::MAX);
        let message_len = self.message_len.saturating_add(header.payload_len);
        if message_len > max {
            return Err(WsError::TooBig { max: max_message });
        }
        self.message_len = message_len;
        self.remaining = header.payload_len;
        self.mask = mask;
        self.mask_phase = 0;
        self.fin = header.fin;
        self.in_message = true;
        self.data(buf, header.header_len)
    }

    /// Delivers what `buf` holds of the current data frame's payload, which
    /// starts at `header_len` (0 when the header was consumed earlier).
    fn data<'a>(&mut self, buf: &'a mut [u8], header_len: usize) -> Result<Inbound<'a>, WsError> {
        let available = buf.len().saturating_sub(header_len);
        // `remaining` may exceed usize only on a 32-bit target; min() keeps
        // the conversion lossless either way.
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(available);
        if n == 0 && header_len == 0 {
            return Ok(Inbound::NeedMore);
        }
        let phase = usize::from(self.mask_phase);
        let payload = &mut buf[header_len..header_len + n];
        unmask(payload, self.mask, phase);
        let ends_message = n as u64 == self.remaining && self.fin;
        let n = match self.utf8.check(payload, ends_message) {
            Ok(()) => n,
            Err(0) => return Err(WsError::InvalidUtf8),
            // Deliver the whole characters before the fault now and refuse
            // on the next call, so where the stream was cut never changes
            // what reaches the XML stream. The refused rest goes back to its
            // masked form: bytes not consumed are never modified.
            Err(valid) => {
                unmask(&mut payload[valid..], self.mask, phase + valid);
                valid
            }
        };
        let payload = &buf[header_len..header_len + n];
        self.mask_phase = ((phase + n) % 4) as u8;
        self.remaining -= n as u64;
        let message_end = self.remaining == 0 && self.fin;
        if message_end {
            self.in_message = false;
            self.message_len = 0;
        }
        Ok(Inbound::Text {
            consumed: header_len + n,
            payload,
            message_end,
        })
    }
}

/// A whole control frame, or `NeedMore` until it is all in `buf`: its
/// payload is at most 125 bytes, so waiting costs little.
fn control<'a>(
    buf: &'a mut [u8],
    header: FrameHeader,
    mask: [u8; 4],
) -> Result<Inbound<'a>, WsError> {
    // decode_header checked payload_len <= 125.
    let end = header.header_len + header.payload_len as usize;
    let Some(payload) = buf.get_mut(header.header_len..end) else {
        return Ok(Inbound::NeedMore);
    };
    unmask(payload, mask, 0);
    let payload: &'a [u8] = payload;
    Ok(match header.opcode {
        Opcode::Ping => Inbound::Ping {
            consumed: end,
            payload,
        },
        Opcode::Pong => Inbound::Pong {
            consumed: end,
            payload,
        },
        _ => {
            let (code, reason) = close_payload(payload)?;
            Inbound::Close {
                consumed: end,
                code,
                reason,
            }
        }
    })
}

/// The code and reason of a Close frame (§5.5.1): empty, or a valid code
/// followed by UTF-8.
pub(super) fn close_payload(payload: &[u8]) -> Result<(Option<u16>, &str), WsError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(WsError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

/// A [`Decoder`]'s state as plain fields (see [`Decoder::parts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecoderParts {
    pub remaining: u64,
    pub message_len: u64,
    pub mask: [u8; 4],
    pub mask_phase: u8,
    pub fin: bool,
    pub in_message: bool,
    pub utf8_pending: [u8; 3],
    pub utf8_pending_len: u8,
}

/// Incremental UTF-8 validation of one text message. A character cut by a
/// frame or read boundary is carried over in at most 3 bytes; an invalid
/// sequence is refused as soon as it is seen, not at the message's end.
#[derive(Debug, Default, Clone, Copy)]
struct Utf8Check {
    pending: [u8; 3],
    pending_len: u8,
}

impl Utf8Check {
    /// Checks the next piece of the message; `ends_message`: nothing follows
    /// it, so a character still cut at its end is invalid. On a fault,
    /// `Err(k)`: `bytes[..k]` are whole valid characters, and the state is
    /// that after them, so checking may resume at `bytes[k]`.
    fn check(&mut self, bytes: &[u8], ends_message: bool) -> Result<(), usize> {
        let have = usize::from(self.pending_len);
        // The common case, a heartbeat: ASCII, nothing cut before it.
        // `is_ascii` reads the payload a word at a time wherever it starts;
        // `from_utf8` steps bytewise up to the first aligned word, and a
        // payload starts after the 6-byte header of a masked frame.
        if have == 0 && bytes.is_ascii() {
            return Ok(());
        }
        let mut done = 0;
        if have > 0 {
            // Complete the cut character first, from the front of `bytes`.
            let width = utf8_width(self.pending[0]);
            let take = width.saturating_sub(have).min(bytes.len());
            let mut char_bytes = [0u8; 4];
            char_bytes[..have].copy_from_slice(&self.pending[..have]);
            char_bytes[have..have + take].copy_from_slice(&bytes[..take]);
            let char_bytes = &char_bytes[..have + take];
            match std::str::from_utf8(char_bytes) {
                Ok(_) => done = take,
                // Still cut: `bytes` ran out before the character did.
                Err(e) if e.error_len().is_none() && !ends_message => return self.keep(char_bytes),
                Err(_) => return Err(0),
            }
        }
        let rest = &bytes[done..];
        match std::str::from_utf8(rest) {
            Ok(_) => {
                self.pending_len = 0;
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !ends_message => {
                self.keep(&rest[e.valid_up_to()..])
            }
            Err(e) => {
                self.pending_len = 0;
                Err(done + e.valid_up_to())
            }
        }
    }

    /// Holds the valid start of a cut character: 1 to 3 bytes, as
    /// `from_utf8` reports no more for an incomplete sequence.
    fn keep(&mut self, start: &[u8]) -> Result<(), usize> {
        let held = self.pending.get_mut(..start.len()).ok_or(0usize)?;
        held.copy_from_slice(start);
        self.pending_len = start.len() as u8;
        Ok(())
    }
}

/// The length of the character a UTF-8 lead byte starts.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}
