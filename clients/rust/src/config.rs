//! What the client needs to know to connect, and its policy knobs.

use std::net::SocketAddr;
use std::time::Duration;

use crate::tls::ClientTls;

#[cfg(doc)]
use crate::ClientEvent;

/// What the client needs to know to connect, and its policy knobs.
#[derive(Clone)]
pub struct ClientConfig {
    pub addr: SocketAddr,
    /// The id to log in as: 1–64 of `[A-Za-z0-9_.:@-]`.
    pub id: String,
    /// The login token, when the server checks them: minted for this `id` by
    /// a back end that holds the server's secret
    /// (`lifeline_wire::token::mint`), so the app never ships the secret.
    pub token: Option<String>,
    /// When `token` expires, in Unix seconds (protocol 1.2): the token is
    /// then minted for `ID|exp` (`lifeline_wire::token::mint_expiring`) and
    /// sent with `exp`. The back end hands the app a fresh pair before it
    /// runs out; a login with an expired token is refused (`auth-failed`).
    pub exp: Option<u64>,
    /// The heartbeat interval to ask for (protocol 1.2). The server grants
    /// one within its range (the welcome says which, and
    /// [`ClientEvent::Connected`] reports it); `None`: the server's own.
    pub interval: Option<Duration>,
    /// Ceiling of the first reconnect delay; it doubles per failed attempt.
    pub backoff_base: Duration,
    /// No reconnect delay is longer than this.
    pub backoff_cap: Duration,
    /// Bound on the TCP handshake plus the wait for `<welcome>`.
    pub connect_timeout: Duration,
    /// Longest server frame accepted; a longer one is a protocol error.
    pub max_frame: usize,
    /// Unsent bytes the client holds before it refuses more messages
    /// (reported as [`ClientEvent::NotSent`]).
    pub max_outbound: usize,
    /// Speak TLS (`None`: plaintext), e.g.
    /// `ClientTls::builder("push.example.com").build()?`.
    pub tls: Option<ClientTls>,
}

impl ClientConfig {
    /// A configuration with the default policy: backoff from 500 ms up to
    /// 30 s, 10 s to connect and be welcomed, frames up to 1 MiB, 1 MiB of
    /// unsent data.
    pub fn new(addr: SocketAddr, id: impl Into<String>) -> ClientConfig {
        ClientConfig {
            addr,
            id: id.into(),
            token: None,
            exp: None,
            interval: None,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_frame: 1 << 20,
            max_outbound: 1 << 20,
            tls: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    // By hand, so the token never lands in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("id", &self.id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("exp", &self.exp)
            .field("interval", &self.interval)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_frame", &self.max_frame)
            .field("max_outbound", &self.max_outbound)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}
