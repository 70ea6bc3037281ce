//! Lifeline: one mio loop that keeps many long-lived TCP connections alive with
//! application-level heartbeats, knows who is online, and pushes messages.
//!
//! Modules, one concern each:
//! - [`config`]: environment and flags → a validated `Config`;
//! - [`http`]: the admin API's HTTP codec, and [`pages`], the files a plain
//!   `GET` on the client port gets; the frame codecs (XML, WebSocket) are
//!   the `lifeline-wire` crate, shared with the clients;
//! - [`server`]: the event loop and its parts — listeners, the client
//!   table and its one outbound path, the connection state machine,
//!   liveness (timer wheel, ticker, the heartbeat rule), frame handling,
//!   shutdown;
//! - [`admin`]: the admin HTTP API, its own connections and routes;
//! - [`registry`] (who is online, behind a trait cluster mode implements),
//!   [`presence`] (numbered events and their ring), [`pushes`] and
//!   [`receipts`] (push ids, receipts, the offline queue, ack waits);
//! - [`cluster`]: cluster mode — presence, routing and node liveness
//!   shared through Redis, on the same loop;
//! - [`timers`] (the wheel and the timerfd), [`clock`], [`writeq`] (a
//!   socket's write queue), [`auth`] (login tokens), [`metrics`].

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("Lifeline packs slab key and generation into a 64-bit mio token");

pub mod admin;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod http;
pub mod metrics;
pub mod pages;
pub mod presence;
pub mod pushes;
pub mod receipts;
pub mod registry;
pub mod server;
pub mod timers;
pub mod workers;
pub mod writeq;
