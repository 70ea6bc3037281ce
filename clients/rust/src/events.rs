//! What the client reports, and what can go wrong.

use std::io;
use std::time::Duration;

use lifeline_wire::ServerFrameError;

#[cfg(doc)]
use crate::{Client, ClientConfig};

/// What the client thread reports, in order.
#[derive(Debug)]
pub enum ClientEvent {
    /// Logged in; the heartbeat parameters the server granted (the interval
    /// asked for in [`ClientConfig::interval`], clamped into its range).
    Connected { interval: Duration, misses: u32 },
    /// A message for us. `body` is the element's text with the predefined
    /// entities and character references expanded (`&amp;` → `&`); markup
    /// inside it, if a sender put any there, is passed through as written.
    /// A message whose `id` was reported recently is not reported again
    /// (the server resends an unacked at-least-once push after a reconnect).
    Message {
        from: String,
        id: Option<String>,
        body: String,
    },
    /// An `<error>` that does not end the connection, e.g. `offline` with the
    /// id of a message whose receiver is not online.
    ServerError {
        code: String,
        reference: Option<String>,
        text: String,
    },
    /// A message that was not sent: not logged in at the time, or too much
    /// unsent data already queued.
    NotSent { to: String, id: String },
    /// The server was silent for `interval × misses`; the connection is
    /// dropped and a reconnect follows.
    ServerLost {
        silent_for: Duration,
        /// Pings sent since the server was last heard.
        unanswered: u32,
    },
    /// A connection ended or a connection attempt failed; a reconnect follows.
    Disconnected { reason: Disconnect },
    /// The next connection attempt starts after `delay`. `attempt` counts
    /// from 1 since the last successful login.
    Reconnecting { attempt: u32, delay: Duration },
    /// The client thread has ended; no event follows.
    Stopped { reason: StopReason },
}

/// Why a connection ended (and the client will reconnect).
#[derive(Debug)]
pub enum Disconnect {
    ConnectFailed(io::Error),
    /// No `<welcome>` within `connect_timeout` of starting to connect.
    ConnectTimeout,
    /// The server closed the connection without a `<bye>`.
    Closed,
    Io(io::Error),
    /// `<bye reason="R" retry-ms="D"/>`: R, and D when the server gave it.
    Bye {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The server sent something this client cannot read.
    Protocol(ProtocolError),
}

/// Why the client thread ended.
#[derive(Debug)]
pub enum StopReason {
    /// [`Client::stop`], or the [`Client`] was dropped.
    Requested,
    /// A terminal `<bye>`: `replaced` (the id logged in elsewhere) or
    /// `kicked`. Reconnecting would undo what the server decided.
    Bye(String),
    /// The login was refused (`auth-failed`, `bad-id`); retrying with the same
    /// credentials cannot succeed.
    Refused { code: String, text: String },
    /// The thread's event loop failed; nothing can be waited for any more.
    Failed(io::Error),
}

/// A server frame this client cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes are not a server frame (the codec's reason).
    #[error(transparent)]
    Frame(#[from] ServerFrameError),
    #[error("welcome for {got:?}, but the login was for {expected:?}")]
    WrongWelcome { expected: String, got: String },
}

/// What the caller did wrong, or that the client is gone.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not a client id: 1 to 64 characters of A-Z a-z 0-9 _ . : @ -")]
    BadClientId(String),
    #[error("{0:?} is not a message id: 1 to 128 characters of A-Z a-z 0-9 _ . : @ -")]
    BadMessageId(String),
    #[error("message text holds a control character XML does not allow")]
    BadText,
    #[error("backoff base must be positive and no larger than the cap")]
    BadBackoff,
    #[error("cannot set up the client thread: {0}")]
    Setup(#[from] io::Error),
    #[error("the client has stopped")]
    Stopped,
}
