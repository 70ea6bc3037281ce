//! WebSocket (RFC 6455) for the XML stream on the same port: the opening
//! handshake, frames in and out, and message reassembly. Bytes only: no I/O,
//! no policy beyond what RFC 6455 asks of a server.
//!
//! Inbound, a [`Decoder`] walks the raw bytes a connection has read. It
//! unmasks data in place and hands back each piece of a text message as soon
//! as it arrives, so the caller appends it straight to its XML stream buffer
//! (the stream is the concatenation of the text messages) and keeps only the
//! bytes not consumed: at most a partial frame header or one partial control
//! frame ([`MAX_CONTROL_FRAME`] bytes). The decoder itself is a few bytes of
//! state, and a cut anywhere in the byte stream gives the same result.
//!
//! Outbound, server frames are unmasked and final: one XML frame per text
//! message ([`write_text`], [`begin_text`] and [`end_text`] around bytes
//! written between them, or [`wrap_text`] around bytes already written),
//! plus [`write_pong`] and [`write_close`]. A client masks its frames with
//! [`write_frame`] and reads the server's with [`decode_header`].
//!
//! The handshake half ([`parse_upgrade`]) tells a WebSocket upgrade from a
//! plain `GET`, whose path it hands back for the caller to serve or refuse.

mod decoder;
mod frame;
mod handshake;

pub use decoder::{Decoder, DecoderParts, Inbound};
pub use frame::{
    begin_text, decode_header, end_text, is_valid_close_code, unmask, wrap_text, write_close,
    write_frame, write_pong, write_text, CloseCode, FrameHeader, Opcode, WsError,
    MAX_CONTROL_FRAME, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
pub use handshake::{
    accept_key, parse_upgrade, write_accept, write_handshake_error, Handshake, HandshakeError,
    KEY_LEN, MAX_HEAD, SUBPROTOCOL,
};

#[cfg(test)]
mod tests;
