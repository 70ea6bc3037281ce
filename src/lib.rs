//! Lifeline: one mio loop that keeps many long-lived TCP connections alive with
//! application-level heartbeats, knows who is online, and pushes messages.
//!
//! Modules, one concern each:
//! - [`config`]: environment and flags → a validated `Config` (the login
//!   settings in [`login_policy`]);
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
//!   [`receipts`] (receipts, ack waits), [`push_ids`] (ids unique across
//!   restarts), [`offline`] (pushes held for offline clients, and
//!   at-least-once pushes until acked);
//! - [`tls`]: the TLS files (loaded again on SIGHUP) and client
//!   certificate names; the per-connection TLS state is in `server`;
//! - [`cluster`]: cluster mode — presence, routing and node liveness
//!   shared through Redis, on the same loop; [`workers`] (`--workers N`);
//! - [`timers`] (the wheel and the timerfd), [`clock`], [`writeq`] (a
//!   socket's write queue), [`auth`] (login tokens), [`metrics`] (with
//!   [`process_metrics`], read from `/proc` at scrape time);
//! - for operators: [`config_ops`] (log format, secret files, limits),
//!   [`logging`] (text or JSON lines, levels per module), [`notify`]
//!   (systemd readiness), [`origins`] (the WebSocket origin allow-list),
//!   [`build_info`] (version and commit).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("Lifeline packs slab key and generation into a 64-bit mio token");

pub mod admin;
pub mod auth;
pub mod build_info;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod config_ops;
pub mod http;
pub mod logging;
pub mod login_policy;
pub mod metrics;
pub mod notify;
pub mod offline;
pub mod origins;
pub mod pages;
pub mod presence;
pub mod process_metrics;
pub mod push_ids;
pub mod pushes;
pub mod receipts;
pub mod registry;
pub mod server;
pub mod timers;
pub mod tls;
pub mod workers;
pub mod writeq;
