//! Frames (RFC 6455 §5): the header, masking, the close codes, and the
//! writers of whole frames.

/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;
/// RFC 6455 §5.5: control frames carry at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// A whole client control frame: 2 bytes, a 4-byte mask, 125 bytes. This is
/// the most the caller may have to keep while a control frame arrives.
pub const MAX_CONTROL_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;
/// A close reason fits beside the 2-byte code in a control frame.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// The opcodes of RFC 6455 §5.2; the others are reserved and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    pub fn from_u8(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The close codes this server sends (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The purpose of the connection is fulfilled (`bye`).
    Normal = 1000,
    /// The server is shutting down.
    GoingAway = 1001,
    ProtocolError = 1002,
    /// A binary message: the stream is XML text.
    UnsupportedData = 1003,
    /// A text message that is not UTF-8.
    InvalidPayload = 1007,
    /// A message longer than the frame limit.
    TooBig = 1009,
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.as_u16()
    }
}

/// True for a code a peer may put in a Close frame (§7.4): the defined codes
/// that may go on the wire, and the ranges for libraries and applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why the client's frames are refused. Every variant closes the connection
/// with a Close frame carrying [`WsError::close_code`]; the decoder is not
/// used again afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("client frames must be masked")]
    Unmasked,
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("control frames cannot be fragmented")]
    FragmentedControl,
    #[error("control frame payload over {MAX_CONTROL_PAYLOAD} bytes")]
    ControlTooLong,
    #[error("64-bit payload length with the most significant bit set")]
    LengthOverflow,
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new message while a fragmented message is still open")]
    MessageInterleaved,
    #[error("close frame with a 1-byte payload")]
    CloseTooShort,
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    #[error("binary messages are not accepted: the stream is XML text")]
    Binary,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("message longer than {max} bytes")]
    TooBig { max: usize },
}

impl WsError {
    pub fn close_code(self) -> CloseCode {
        match self {
            WsError::Binary => CloseCode::UnsupportedData,
            WsError::InvalidUtf8 => CloseCode::InvalidPayload,
            WsError::TooBig { .. } => CloseCode::TooBig,
            _ => CloseCode::ProtocolError,
        }
    }
}

/// A frame header as found on the wire (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    /// The masking key; every client frame has one.
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// 2 to [`MAX_HEADER_LEN`] bytes.
    pub header_len: usize,
}

/// Parses the frame header at the front of `buf`: `Ok(None)` until it is
/// complete. Checks what the header alone can tell (reserved bits and
/// opcodes, control frames final and short, a 64-bit length below 2^63),
/// each as soon as the byte that carries it is there. Masking and size
/// limits are the [`Decoder`](super::Decoder)'s business, so this also reads
/// server frames.
pub fn decode_header(buf: &[u8]) -> Result<Option<FrameHeader>, WsError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    // No extension is ever negotiated, so RSV1-3 must be clear (§5.2).
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(WsError::UnknownOpcode(b0 & 0x0f))?;
    let fin = b0 & 0x80 != 0;
    if opcode.is_control() && !fin {
        return Err(WsError::FragmentedControl);
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    let len7 = b1 & 0x7f;
    if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(WsError::ControlTooLong);
    }
    // Lengths need not be minimally encoded to be accepted: the RFC asks
    // senders for that, and nothing here depends on it.
    let (payload_len, mut header_len) = match len7 {
        126 => {
            let Some(&[hi, lo]) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([hi, lo])), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(WsError::LengthOverflow);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let Some(&[a, b, c, d]) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([a, b, c, d])
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// XORs `payload` with the masking `key` (§5.3), in place; masking and
/// unmasking are the same operation. `offset` is the position of `payload[0]`
/// within its frame's payload, so a payload can be unmasked in pieces.
pub fn unmask(payload: &mut [u8], key: [u8; 4], offset: usize) {
    let r = offset % 4;
    let key = [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]];
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = payload.chunks_exact_mut(8);
    for word in &mut words {
        // Copies through an array compile to one unaligned load and store.
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the key phase is still 0.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// Writes one frame. Server frames have no `mask`; a client's must.
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let (header, header_len) = encode_header(fin, opcode, mask, payload.len());
    out.extend_from_slice(&header[..header_len]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        unmask(&mut out[start..], mask, 0);
    }
}

fn encode_header(
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload_len: usize,
) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut header = [0u8; MAX_HEADER_LEN];
    header[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = match payload_len {
        0..=125 => {
            header[1] = mask_bit | payload_len as u8;
            2
        }
        126..=0xffff => {
            header[1] = mask_bit | 126;
            header[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            header[1] = mask_bit | 127;
            header[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    };
    if let Some(mask) = mask {
        header[len..len + 4].copy_from_slice(&mask);
        len += 4;
    }
    (header, len)
}

/// Writes one XML frame as one final, unmasked text message.
pub fn write_text(out: &mut Vec<u8>, payload: &[u8]) {
    write_frame(out, true, Opcode::Text, None, payload);
}

/// Turns everything appended to `out` since `start` into one text message,
/// so a reply can be encoded straight into the outbound buffer (by the
/// `wire` writers) and framed afterwards, without a copy elsewhere.
pub fn wrap_text(out: &mut Vec<u8>, start: usize) {
    let start = start.min(out.len());
    let (header, header_len) = encode_header(true, Opcode::Text, None, out.len() - start);
    out.extend_from_slice(&header[..header_len]);
    // Moves the header from the end to `start`: one memmove of the payload,
    // which is one XML frame.
    out[start..].rotate_right(header_len);
}

/// Starts a text message whose payload (one XML frame) the caller appends
/// next, and returns where it starts. The 2-byte header of a payload of up
/// to 125 bytes (every answer to a heartbeat) is reserved in front, so that
/// [`end_text`] fills it in place instead of moving the payload as
/// [`wrap_text`] does.
pub fn begin_text(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    start
}

/// Ends the text message [`begin_text`] started at `start`: writes its
/// header, making room for an extended length when the payload needs one.
pub fn end_text(out: &mut Vec<u8>, start: usize) {
    let payload = start + 2;
    let (header, header_len) =
        encode_header(true, Opcode::Text, None, out.len().saturating_sub(payload));
    if header_len > 2 {
        let extra = header_len - 2;
        out.extend_from_slice(&[0; MAX_HEADER_LEN][..extra]);
        out[payload..].rotate_right(extra);
    }
    out[start..start + header_len].copy_from_slice(&header[..header_len]);
}

/// Writes the answer to a Ping. A control frame carries at most 125 bytes;
/// a longer `payload` is cut there (a decoded Ping never is longer).
pub fn write_pong(out: &mut Vec<u8>, payload: &[u8]) {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    write_frame(out, true, Opcode::Pong, None, payload);
}

/// Writes a Close frame with `code` and `reason`, the reason cut to the 123
/// bytes a control frame leaves it (at a character boundary).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    write_frame(out, true, Opcode::Close, None, &payload[..2 + cut]);
}
