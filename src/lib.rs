//! Lifeline: one mio loop that keeps many long-lived TCP connections alive with
//! application-level heartbeats, knows who is online, and pushes messages.
//!
//! Modules, one concern each: [`config`] (environment → validated settings),
//! [`conn`] (one connection's state and buffers), [`timers`] (deadline wheel
//! and the timerfd that wakes the loop for it), [`registry`] (who is online),
//! [`presence`] (presence events, their ring and Server-Sent Events),
//! [`receipts`] (push receipts and the offline queue), [`admin`] (the admin HTTP API, over
//! [`http`]), [`pages`] (the files a plain `GET` gets), [`auth`] (login
//! tokens), [`metrics`], and [`server`] (the event loop). The frame codecs,
//! XML and WebSocket, are the `lifeline-wire` crate.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("Lifeline packs slab key and generation into a 64-bit mio token");

pub mod admin;
pub mod auth;
pub mod config;
pub mod conn;
pub mod http;
pub mod metrics;
pub mod pages;
pub mod presence;
pub mod receipts;
pub mod registry;
pub mod server;
pub mod timers;
