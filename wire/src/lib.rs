//! Lifeline's wire protocol as pure codecs: bytes in, frames out, no I/O and
//! no policy. The server, the Rust client library and the load generator all
//! speak through this crate, so there is one codec and not three.
//!
//! Modules, one direction or concern each:
//! - [`from_client`]: the frames a client sends, decoded by the server
//!   ([`FrameReader`] → [`Frame`]), zero-copy and the same for every cut of
//!   the stream;
//! - [`to_client`]: encoders of the frames a server sends (re-exported here:
//!   `lifeline_wire::encode_welcome`, ...);
//! - [`to_server`]: encoders of the frames a client sends
//!   (`to_server::encode_login`, ...);
//! - [`from_server`]: the frames a server sends, decoded for a client
//!   ([`ServerFrame`]);
//! - [`ws`]: WebSocket (RFC 6455) handshake and framing for the same stream;
//! - [`token`]: login tokens, minted by a back end and verified by the server;
//! - [`ErrorCode`], [`ByeReason`] and the id rules ([`is_valid_id`],
//!   [`is_valid_message_id`]) that both sides share.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod codes;
pub mod from_client;
pub mod from_server;
mod ids;
pub mod to_client;
pub mod to_server;
pub mod token;
pub mod ws;

pub use codes::{ByeReason, ErrorCode};
pub use from_client::{Decoded, Frame, FrameReader, StreamPosition, WireError, MAX_ATTRIBUTES};
pub use from_server::{ServerFrame, ServerFrameError};
pub use ids::{is_valid_id, is_valid_message_id, MAX_ID_LEN, MAX_MESSAGE_ID_LEN};
pub use to_client::{
    encode_bye, encode_error, encode_msg, encode_pong, encode_probe, encode_welcome,
};
