//! Lifeline's Rust client library: one background thread keeps a connection to a Lifeline
//! server alive and hands the caller events through a channel.
//!
//! [`Client::start`] spawns the thread; it owns the socket and runs a small
//! state machine, `Backoff → Connecting → LoggedIn`, until it reaches
//! `Stopped`:
//!
//! - **Connecting**: TCP connect (and the TLS handshake, with
//!   [`ClientConfig::tls`]), `<login>` (with [`ClientConfig::token`]
//!   and its [`ClientConfig::exp`] when there is one, and the
//!   [`ClientConfig::interval`] asked for), wait for `<welcome>`. Both
//!   together are bounded by [`ClientConfig::connect_timeout`].
//! - **LoggedIn**: ping every `interval` from the welcome (the first one
//!   `phase-ms` after it when given), answer the server's probes, deliver
//!   `msg` frames as [`ClientEvent::Message`] (a copy of a recent message
//!   id is dropped, or acked again if the app acked it already: the server
//!   sends an unacked at-least-once push again after a reconnect), send
//!   what the caller asks for.
//!   The server is lost once it has been silent for `interval × misses`,
//!   the same rule the server applies to its clients.
//! - **Backoff**: after a lost or closed connection, wait a random delay in
//!   `[0, min(cap, base·2^failures)]` (exponential backoff with full jitter,
//!   so clients of a restarted server do not all come back at once), or the
//!   server's `retry-ms` when its `<bye>` carried one.
//! - **Stopped**: [`Client::stop`], a terminal `<bye>` (`replaced`,
//!   `kicked`), or a refused login. The thread exits and drops its end of the
//!   event channel, so a receiver sees the channel close after
//!   [`ClientEvent::Stopped`].
//!
//! No async runtime: the thread waits in `mio::Poll` on the socket and on a
//! waker the caller's handle pokes after queueing a command; the next timer
//! (ping, loss deadline, connect deadline, end of backoff) is the poll timeout.
//!
//! Every frame is encoded and decoded by `lifeline-wire`, the codec the server
//! itself uses. Modules: [`ClientConfig`] (`config`), the events and errors
//! (`events`), the caller's [`Client`] handle (`client`), the thread's state
//! machine (`worker`) over one connection's socket and buffers (`link`),
//! the heartbeat schedule (`heartbeat`), the recent message ids
//! (`recent`) and reconnect delays ([`Backoff`]).
//!
//! ```no_run
//! use lifeline_client::{Client, ClientConfig, ClientEvent};
//!
//! let addr = "127.0.0.1:7070".parse().unwrap();
//! // The token and its expiry come from your back end:
//! // lifeline_wire::token::mint_expiring(secret, "alice", exp).
//! let token = std::env::var("LIFELINE_TOKEN").ok();
//! let exp = std::env::var("LIFELINE_TOKEN_EXP").ok().and_then(|e| e.parse().ok());
//! let config = ClientConfig {
//!     token,
//!     exp,
//!     // A phone on battery asks for a long interval; the server clamps it.
//!     interval: Some(std::time::Duration::from_secs(60)),
//!     ..ClientConfig::new(addr, "alice")
//! };
//! let client = Client::start(config).unwrap();
//! client.send_msg("bob", "m1", "hello").unwrap();
//! for event in client.events() {
//!     match event {
//!         ClientEvent::Message { from, id, body } => {
//!             println!("{from}: {body}");
//!             if let Some(id) = id {
//!                 client.ack(&id).unwrap();
//!             }
//!         }
//!         ClientEvent::Stopped { .. } => break,
//!         other => println!("{other:?}"),
//!     }
//! }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod backoff;
mod client;
mod config;
mod events;
mod heartbeat;
mod link;
mod recent;
mod tls;
mod worker;

pub use backoff::Backoff;
pub use client::Client;
pub use config::ClientConfig;
pub use events::{ClientError, ClientEvent, Disconnect, ProtocolError, StopReason};
pub use tls::{ClientTls, TlsBuilder, TlsSetupError};
