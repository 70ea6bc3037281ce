//! Client library: one background thread keeps a connection to a Lifeline
//! server alive and hands the caller events through a channel.
//!
//! [`Client::start`] spawns the thread; it owns the socket and runs a small
//! state machine, `Backoff → Connecting → LoggedIn`, until it reaches
//! `Stopped`:
//!
//! - **Connecting**: TCP connect, `<login>` (with a token when a secret is
//!   configured), wait for `<welcome>`. Both together are bounded by
//!   [`ClientConfig::connect_timeout`].
//! - **LoggedIn**: ping every `interval` from the welcome (the first one
//!   `phase-ms` after it when given), answer the server's probes, deliver
//!   `msg` frames as [`ClientEvent::Message`], send what the caller asks for.
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

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::debug;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use quick_xml::errors::{Error as XmlError, SyntaxError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use lifeline_wire::token::mint as token_for;
use lifeline_wire::{self as wire, is_valid_id, is_valid_message_id};

/// What the client needs to know to connect, and its policy knobs.
#[derive(Clone)]
pub struct ClientConfig {
    pub addr: SocketAddr,
    /// The id to log in as: 1–64 of `[A-Za-z0-9_.:@-]`.
    pub id: String,
    /// The server's auth secret, when it has one; the login carries
    /// HMAC-SHA256(secret, id) as its token.
    pub secret: Option<Vec<u8>>,
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
}

impl ClientConfig {
    /// A configuration with the default policy: backoff from 500 ms up to
    /// 30 s, 10 s to connect and be welcomed, frames up to 1 MiB, 1 MiB of
    /// unsent data.
    pub fn new(addr: SocketAddr, id: impl Into<String>) -> ClientConfig {
        ClientConfig {
            addr,
            id: id.into(),
            secret: None,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_frame: 1 << 20,
            max_outbound: 1 << 20,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    // By hand, so the secret never lands in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_frame", &self.max_frame)
            .field("max_outbound", &self.max_outbound)
            .finish()
    }
}

/// What the client thread reports, in order.
#[derive(Debug)]
pub enum ClientEvent {
    /// Logged in; the server's heartbeat parameters.
    Connected { interval: Duration, misses: u32 },
    /// A message for us. `body` is the element's text with the predefined
    /// entities and character references expanded (`&amp;` → `&`); markup
    /// inside it, if a sender put any there, is passed through as written.
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
    #[error("malformed XML from the server: {0}")]
    Xml(#[from] XmlError),
    #[error("malformed attribute from the server: {0}")]
    Attribute(#[from] quick_xml::events::attributes::AttrError),
    #[error("undeclared entity in a server frame: {0}")]
    Entity(#[from] quick_xml::escape::EscapeError),
    #[error("invalid UTF-8 from the server")]
    InvalidUtf8,
    #[error("text outside a frame")]
    TextOutsideFrame,
    #[error("DOCTYPE from the server")]
    Doctype,
    #[error("server frame longer than {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("<{frame}> without a valid {attr}")]
    BadAttribute {
        frame: &'static str,
        attr: &'static str,
    },
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

/// The caller's handle. Dropping it stops the client.
pub struct Client {
    commands: Sender<Command>,
    waker: Waker,
    events: Receiver<ClientEvent>,
    thread: Option<JoinHandle<()>>,
}

enum Command {
    /// `body` is already escaped XML content.
    Msg {
        to: String,
        id: String,
        body: String,
    },
    Ack {
        id: String,
    },
    Stop,
}

impl Client {
    /// Validates `config` and starts the client thread, which connects at once.
    pub fn start(config: ClientConfig) -> Result<Client, ClientError> {
        if !is_valid_id(&config.id) {
            return Err(ClientError::BadClientId(config.id));
        }
        if config.backoff_base.is_zero() || config.backoff_base > config.backoff_cap {
            return Err(ClientError::BadBackoff);
        }
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (command_tx, command_rx) = mpsc::channel();
        let (event_tx, event_rx) = mpsc::channel();
        let worker = Worker {
            backoff: Backoff::new(config.backoff_base, config.backoff_cap),
            config,
            poll,
            commands: command_rx,
            events: event_tx,
            state: State::Backoff {
                until: Instant::now(),
            },
            failures: 0,
            generation: 0,
        };
        let thread = std::thread::Builder::new()
            .name("lifeline-client".into())
            .spawn(move || worker.run())?;
        Ok(Client {
            commands: command_tx,
            waker,
            events: event_rx,
            thread: Some(thread),
        })
    }

    /// The events, in the order they happened.
    pub fn events(&self) -> &Receiver<ClientEvent> {
        &self.events
    }

    /// Sends `text` to client `to` as message `id`. The text is escaped here,
    /// so any string without control characters is safe to send. Delivery is
    /// at most once: a message in flight when the connection drops is lost,
    /// and one that cannot be sent at all comes back as
    /// [`ClientEvent::NotSent`].
    pub fn send_msg(&self, to: &str, id: &str, text: &str) -> Result<(), ClientError> {
        if !is_valid_id(to) {
            return Err(ClientError::BadClientId(to.to_string()));
        }
        if !is_valid_message_id(id) {
            return Err(ClientError::BadMessageId(id.to_string()));
        }
        // The server refuses the whole frame (and closes) on a character XML
        // forbids, so refuse it here where the caller can still react.
        if text
            .bytes()
            .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
        {
            return Err(ClientError::BadText);
        }
        self.command(Command::Msg {
            to: to.to_string(),
            id: id.to_string(),
            body: quick_xml::escape::partial_escape(text).into_owned(),
        })
    }

    /// Confirms that message `id` was processed. Dropped silently when not
    /// logged in: the server only counts acks, and the message it confirms
    /// arrived on a connection that no longer exists.
    pub fn ack(&self, id: &str) -> Result<(), ClientError> {
        if !is_valid_message_id(id) {
            return Err(ClientError::BadMessageId(id.to_string()));
        }
        self.command(Command::Ack { id: id.to_string() })
    }

    /// Says `<bye/>` when logged in, closes, and waits for the thread to end.
    /// Calling it again does nothing.
    pub fn stop(&mut self) {
        let _ = self.command(Command::Stop);
        if let Some(thread) = self.thread.take() {
            // A panic in the thread already ended it; there is nothing to undo.
            let _ = thread.join();
        }
    }

    fn command(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .map_err(|_| ClientError::Stopped)?;
        self.waker.wake().map_err(|_| ClientError::Stopped)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Backoff

/// Reconnect delays: exponential backoff with full jitter. The delay before
/// attempt `n` (counted from 0) is uniform in `[0, min(cap, base·2^n)]`, so a
/// crowd of clients that lost the same server spreads over the whole window
/// instead of arriving in synchronized waves.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// xorshift64* state; never zero.
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            rng: seed(),
        }
    }

    /// The longest delay for attempt `n`: `min(cap, base·2^n)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay in `[0, ceiling(attempt)]`.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        let random = self.next_u64();
        // Modulo bias is below 2^-30 for any ceiling under 2^34 ns (17 s) and
        // irrelevant for spreading reconnects anyway.
        let nanos = match ceiling.checked_add(1) {
            Some(span) => random % span,
            None => random,
        };
        Duration::from_nanos(nanos)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A seed that differs between processes and threads: `RandomState` keys
/// come from the OS once per thread, and the clock and thread id separate
/// clients started together in one process.
fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    std::thread::current().id().hash(&mut hasher);
    hasher.finish() | 1
}

// ---------------------------------------------------------------------------
// The client thread

const WAKER: Token = Token(usize::MAX);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// Longest wait a server may ask for (heartbeat window, retry-ms). Larger
/// values are refused as malformed: they mean nothing useful, and adding them
/// to an `Instant` could overflow.
const LONGEST_SERVER_WAIT: Duration = Duration::from_secs(100 * 24 * 3600);

enum State {
    /// Waiting out a reconnect delay.
    Backoff {
        until: Instant,
    },
    /// Handshake and login under way; `deadline` bounds both.
    Connecting {
        link: Link,
        deadline: Instant,
    },
    LoggedIn {
        link: Link,
        heartbeat: Heartbeat,
    },
    Stopped,
}

/// How a connection (or an attempt) ended: the single input of [`Worker::finish`].
enum End {
    Lost {
        silent_for: Duration,
        unanswered: u32,
    },
    Disconnected(Disconnect),
    Stop(StopReason),
}

impl From<ProtocolError> for End {
    fn from(e: ProtocolError) -> End {
        End::Disconnected(Disconnect::Protocol(e))
    }
}

struct Worker {
    config: ClientConfig,
    poll: Poll,
    commands: Receiver<Command>,
    events: Sender<ClientEvent>,
    backoff: Backoff,
    state: State,
    /// Connection attempts that failed since the last successful login.
    failures: u32,
    /// Each connection gets its own token, so a readiness event left over
    /// from a closed socket is recognised and ignored.
    generation: usize,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        let mut chunk = vec![0u8; READ_CHUNK];
        while !matches!(self.state, State::Stopped) {
            let timeout = self
                .next_wakeup()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.finish(End::Stop(StopReason::Failed(e)), Instant::now());
                break;
            }
            let socket_ready = events
                .iter()
                .any(|event| Some(event.token()) == self.link_token());
            // Commands are drained on every pass, not only on a waker event: a
            // wake that raced with a timeout would otherwise wait a full interval.
            let result = self
                .on_commands()
                .and_then(|()| match socket_ready {
                    true => self.on_socket(&mut chunk),
                    false => Ok(()),
                })
                .and_then(|()| self.on_timers(Instant::now()));
            if let Err(end) = result {
                self.finish(end, Instant::now());
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        match &self.state {
            State::Backoff { until } => Some(*until),
            State::Connecting { deadline, .. } => Some(*deadline),
            State::LoggedIn { heartbeat, .. } => Some(heartbeat.next_wakeup()),
            State::Stopped => None,
        }
    }

    fn link(&mut self) -> Option<&mut Link> {
        match &mut self.state {
            State::Connecting { link, .. } | State::LoggedIn { link, .. } => Some(link),
            State::Backoff { .. } | State::Stopped => None,
        }
    }

    fn link_token(&self) -> Option<Token> {
        match &self.state {
            State::Connecting { link, .. } | State::LoggedIn { link, .. } => Some(link.token),
            State::Backoff { .. } | State::Stopped => None,
        }
    }

    fn emit(&self, event: ClientEvent) {
        // The receiver lives in the `Client`, whose drop stops this thread;
        // a failed send only means that is happening right now.
        let _ = self.events.send(event);
    }

    fn on_commands(&mut self) -> Result<(), End> {
        let max_outbound = self.config.max_outbound;
        loop {
            let command = match self.commands.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => Command::Stop,
            };
            let logged_in = match &mut self.state {
                State::LoggedIn { link, .. } => Some(link),
                _ => None,
            };
            match (command, logged_in) {
                (Command::Stop, link) => {
                    if let Some(link) = link {
                        link.say_bye();
                    }
                    return Err(End::Stop(StopReason::Requested));
                }
                (Command::Msg { to, id, body }, Some(link))
                    if link.outbound.len() < max_outbound =>
                {
                    encode_msg(&mut link.outbound, &to, &id, &body);
                }
                (Command::Msg { to, id, .. }, _) => self.emit(ClientEvent::NotSent { to, id }),
                (Command::Ack { id }, Some(link)) => encode_ack(&mut link.outbound, &id),
                (Command::Ack { .. }, None) => {}
            }
        }
        match self.link() {
            Some(link) => link
                .flush()
                .map_err(|e| End::Disconnected(Disconnect::Io(e))),
            None => Ok(()),
        }
    }

    fn on_socket(&mut self, chunk: &mut [u8]) -> Result<(), End> {
        let max_frame = self.config.max_frame;
        let Some(link) = self.link() else {
            return Ok(());
        };
        if !link.connected {
            match link.finish_connect() {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(End::Disconnected(Disconnect::ConnectFailed(e))),
            }
        }
        link.flush()
            .map_err(|e| End::Disconnected(Disconnect::Io(e)))?;
        // Edge-triggered readiness: read until the socket is drained.
        loop {
            let Some(link) = self.link() else {
                return Ok(());
            };
            let read = link
                .read_once(chunk)
                .map_err(|e| End::Disconnected(Disconnect::Io(e)))?;
            let frames = link.take_frames(max_frame)?;
            let now = Instant::now();
            for frame in frames {
                self.on_frame(frame, now)?;
            }
            if let Some(link) = self.link() {
                link.flush()
                    .map_err(|e| End::Disconnected(Disconnect::Io(e)))?;
            }
            match read {
                ReadOutcome::Data => {}
                ReadOutcome::Drained => return Ok(()),
                ReadOutcome::Eof => return Err(End::Disconnected(Disconnect::Closed)),
            }
        }
    }

    fn on_frame(&mut self, frame: ServerFrame, now: Instant) -> Result<(), End> {
        if let State::LoggedIn { heartbeat, .. } = &mut self.state {
            // Any frame proves the server alive, not only the pong to our ping.
            heartbeat.heard(now);
        }
        match frame {
            ServerFrame::Welcome {
                id,
                interval,
                misses,
                phase,
            } => {
                if id != self.config.id {
                    return Err(ProtocolError::WrongWelcome {
                        expected: self.config.id.clone(),
                        got: id,
                    }
                    .into());
                }
                let state = std::mem::replace(&mut self.state, State::Stopped);
                self.state = match state {
                    State::Connecting { link, .. } => {
                        self.failures = 0;
                        self.emit(ClientEvent::Connected { interval, misses });
                        let heartbeat = Heartbeat::new(interval, misses, phase, now);
                        State::LoggedIn { link, heartbeat }
                    }
                    // A second welcome changes nothing; keep the schedule we have.
                    other => other,
                };
            }
            ServerFrame::Ping { seq } => {
                if let Some(link) = self.link() {
                    wire::encode_pong(&mut link.outbound, seq);
                }
            }
            ServerFrame::Pong { .. } | ServerFrame::Unknown => {}
            ServerFrame::Msg { from, id, body } => {
                self.emit(ClientEvent::Message { from, id, body });
            }
            ServerFrame::Bye {
                reason,
                retry_after,
            } => {
                if matches!(reason.as_str(), "replaced" | "kicked") {
                    return Err(End::Stop(StopReason::Bye(reason)));
                }
                return Err(End::Disconnected(Disconnect::Bye {
                    reason,
                    retry_after,
                }));
            }
            ServerFrame::Error {
                code,
                reference,
                text,
            } => {
                let connecting = matches!(self.state, State::Connecting { .. });
                if connecting && matches!(code.as_str(), "auth-failed" | "bad-id") {
                    return Err(End::Stop(StopReason::Refused { code, text }));
                }
                self.emit(ClientEvent::ServerError {
                    code,
                    reference,
                    text,
                });
            }
        }
        Ok(())
    }

    fn on_timers(&mut self, now: Instant) -> Result<(), End> {
        match &mut self.state {
            State::Backoff { until } if now >= *until => self.connect(now),
            State::Connecting { deadline, .. } if now >= *deadline => {
                Err(End::Disconnected(Disconnect::ConnectTimeout))
            }
            State::LoggedIn { link, heartbeat } => {
                if now >= heartbeat.lost_at() {
                    return Err(End::Lost {
                        silent_for: now - heartbeat.last_heard,
                        unanswered: heartbeat.unanswered,
                    });
                }
                if now >= heartbeat.next_ping {
                    let seq = heartbeat.ping_sent(now);
                    // Same bytes as the server's probe: `<heartbeat mode="ping" seq="N"/>`.
                    wire::encode_probe(&mut link.outbound, seq);
                    link.flush()
                        .map_err(|e| End::Disconnected(Disconnect::Io(e)))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Backoff → Connecting.
    fn connect(&mut self, now: Instant) -> Result<(), End> {
        self.generation = self.generation.wrapping_add(1) % WAKER.0;
        let token = Token(self.generation);
        let failed = |e| End::Disconnected(Disconnect::ConnectFailed(e));
        let mut stream = TcpStream::connect(self.config.addr).map_err(failed)?;
        self.poll
            .registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(failed)?;
        let mut outbound = Vec::new();
        let token_text = self
            .config
            .secret
            .as_ref()
            .map(|secret| token_for(secret, &self.config.id));
        encode_login(&mut outbound, &self.config.id, token_text.as_deref());
        debug!("connecting to {} as {}", self.config.addr, self.config.id);
        self.state = State::Connecting {
            link: Link {
                stream,
                token,
                connected: false,
                inbound: Vec::new(),
                outbound,
            },
            deadline: now + self.config.connect_timeout,
        };
        Ok(())
    }

    /// Every end of a connection or attempt comes through here: report it,
    /// close the socket, and either stop or schedule the next attempt.
    fn finish(&mut self, end: End, now: Instant) {
        let state = std::mem::replace(&mut self.state, State::Stopped);
        let was_logged_in = matches!(state, State::LoggedIn { .. });
        drop(state); // closes the socket, which also takes it out of the poll set
        let retry_after = match end {
            End::Stop(reason) => {
                debug!("client {} stopped: {reason:?}", self.config.id);
                self.emit(ClientEvent::Stopped { reason });
                return;
            }
            End::Lost {
                silent_for,
                unanswered,
            } => {
                self.emit(ClientEvent::ServerLost {
                    silent_for,
                    unanswered,
                });
                None
            }
            End::Disconnected(reason) => {
                let retry_after = match &reason {
                    Disconnect::Bye { retry_after, .. } => *retry_after,
                    _ => None,
                };
                debug!("client {} disconnected: {reason:?}", self.config.id);
                self.emit(ClientEvent::Disconnected { reason });
                retry_after
            }
        };
        if !was_logged_in {
            self.failures = self.failures.saturating_add(1);
        }
        // The server's retry-ms is already a per-client random spread, so it
        // replaces the jitter for this one attempt; later failures back off.
        let delay = retry_after.unwrap_or_else(|| self.backoff.delay(self.failures));
        self.emit(ClientEvent::Reconnecting {
            attempt: self.failures.saturating_add(1),
            delay,
        });
        self.state = State::Backoff { until: now + delay };
    }
}

/// The client side of the heartbeat: when to ping, and when the server counts
/// as lost (`last_heard + interval × misses`; nothing per frame but storing
/// the time, as on the server).
struct Heartbeat {
    interval: Duration,
    misses: u32,
    next_ping: Instant,
    last_heard: Instant,
    seq: u64,
    unanswered: u32,
}

impl Heartbeat {
    fn new(interval: Duration, misses: u32, phase: Option<Duration>, now: Instant) -> Heartbeat {
        Heartbeat {
            interval,
            misses,
            next_ping: now + phase.unwrap_or(interval).min(interval),
            last_heard: now,
            seq: 0,
            unanswered: 0,
        }
    }

    fn lost_at(&self) -> Instant {
        self.last_heard + self.interval * self.misses
    }

    fn next_wakeup(&self) -> Instant {
        self.next_ping.min(self.lost_at())
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.unanswered = 0;
    }

    /// Records a ping going out now; returns its sequence number.
    fn ping_sent(&mut self, now: Instant) -> u64 {
        self.seq += 1;
        self.unanswered += 1;
        self.next_ping += self.interval;
        // After a stall (a suspended laptop, a starved thread) ping once, not
        // once per missed slot.
        if self.next_ping <= now {
            self.next_ping = now + self.interval;
        }
        self.seq
    }
}

/// One TCP connection's socket and buffers.
struct Link {
    stream: TcpStream,
    token: Token,
    /// The TCP handshake has completed.
    connected: bool,
    /// Received bytes not yet decoded: at most the start of one frame.
    inbound: Vec<u8>,
    /// Encoded frames not yet accepted by the socket.
    outbound: Vec<u8>,
}

enum ReadOutcome {
    /// Got bytes; there may be more.
    Data,
    /// Nothing more for now.
    Drained,
    Eof,
}

impl Link {
    /// Whether a non-blocking connect has completed; the error if it failed.
    fn finish_connect(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connected = true;
                // Heartbeats are tiny and latency is what they measure.
                self.stream.set_nodelay(true)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Before the handshake completes there is nowhere to write to; the
        // writable event that completes it flushes.
        while self.connected && !self.outbound.is_empty() {
            match self.stream.write(&self.outbound) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbound.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_once(&mut self, chunk: &mut [u8]) -> io::Result<ReadOutcome> {
        loop {
            return match self.stream.read(chunk) {
                Ok(0) => Ok(ReadOutcome::Eof),
                Ok(n) => {
                    self.inbound.extend_from_slice(&chunk[..n]);
                    Ok(ReadOutcome::Data)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Decodes every complete frame in `inbound` and keeps only the tail.
    fn take_frames(&mut self, max_frame: usize) -> Result<Vec<ServerFrame>, ProtocolError> {
        let mut frames = Vec::new();
        let mut offset = 0;
        loop {
            let (frame, used) = decode(&self.inbound[offset..], max_frame)?;
            offset += used;
            match frame {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
        self.inbound.drain(..offset);
        Ok(frames)
    }

    /// Best effort `<bye/>`, so the server logs a clean leave rather than a
    /// timeout; a full socket buffer just means the server will time us out.
    fn say_bye(&mut self) {
        if self.connected {
            self.outbound.extend_from_slice(b"<bye/>");
            let _ = self.flush();
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding client frames. Ids are validated before they get here, so they
// need no escaping; the token is hex.

fn encode_login(out: &mut Vec<u8>, id: &str, token: Option<&str>) {
    out.extend_from_slice(b"<login id=\"");
    out.extend_from_slice(id.as_bytes());
    if let Some(token) = token {
        out.extend_from_slice(b"\" token=\"");
        out.extend_from_slice(token.as_bytes());
    }
    out.extend_from_slice(b"\"/>");
}

/// `body` is escaped XML content.
fn encode_msg(out: &mut Vec<u8>, to: &str, id: &str, body: &str) {
    out.extend_from_slice(b"<msg to=\"");
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(b"\" id=\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\">");
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(b"</msg>");
}

fn encode_ack(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(b"<ack id=\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\"/>");
}

// ---------------------------------------------------------------------------
// Decoding server frames. (`wire::FrameReader` decodes client frames.)

/// One frame from the server, decoded into owned values: a client handles a
/// few frames per interval, so copying is cheaper than lifetimes here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerFrame {
    Welcome {
        id: String,
        interval: Duration,
        misses: u32,
        phase: Option<Duration>,
    },
    Ping {
        seq: Option<u64>,
    },
    Pong {
        seq: Option<u64>,
    },
    Msg {
        from: String,
        id: Option<String>,
        body: String,
    },
    Bye {
        reason: String,
        retry_after: Option<Duration>,
    },
    Error {
        code: String,
        reference: Option<String>,
        text: String,
    },
    /// An element a later protocol version may send; ignored.
    Unknown,
}

/// Decodes the first frame of `buf`. Returns the frame (or `None` when `buf`
/// holds only the start of one) and the bytes consumed, which include
/// whitespace, comments and an XML declaration before it. The result is the
/// same for every way the stream is cut into reads, because the only errors
/// treated as "read more" are the ones quick-xml raises when its input ends.
fn decode(buf: &[u8], max_frame: usize) -> Result<(Option<ServerFrame>, usize), ProtocolError> {
    // Parse the valid UTF-8 prefix: a character cut by the end of a read
    // completes with the next one.
    let (text, invalid_utf8) = match std::str::from_utf8(buf) {
        Ok(text) => (text, false),
        Err(e) => (
            std::str::from_utf8(&buf[..e.valid_up_to()]).unwrap_or_default(),
            e.error_len().is_some(),
        ),
    };
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    let mut consumed = 0;
    let mut depth = 0usize;
    let mut open: Option<(BytesStart<'_>, usize)> = None; // top element, body start
    loop {
        let before = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) if is_truncation(&e, text, reader.error_position() as usize) => break,
            Err(e) => return Err(e.into()),
        };
        let after = reader.buffer_position() as usize;
        match event {
            Event::Eof => break,
            Event::Start(start) => {
                if depth == 0 {
                    open = Some((start, after));
                }
                depth += 1;
            }
            Event::Empty(start) if depth == 0 => {
                return Ok((Some(frame_from(&start, "")?), after));
            }
            Event::End(_) => {
                // check_end_names (on by default) makes an unmatched end tag an
                // error, so depth is positive here.
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    if let Some((start, body_start)) = open.take() {
                        let frame = frame_from(&start, &text[body_start..before])?;
                        return Ok((Some(frame), after));
                    }
                }
            }
            Event::Text(t) if depth == 0 => {
                if !t.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
                    return Err(ProtocolError::TextOutsideFrame);
                }
                consumed = after;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) if depth == 0 => consumed = after,
            Event::DocType(_) => return Err(ProtocolError::Doctype),
            Event::CData(_) | Event::GeneralRef(_) if depth == 0 => {
                return Err(ProtocolError::TextOutsideFrame)
            }
            // Inside a frame: the body is taken whole when its end tag comes.
            _ => {}
        }
    }
    if invalid_utf8 {
        return Err(ProtocolError::InvalidUtf8);
    }
    if buf.len() - consumed > max_frame {
        return Err(ProtocolError::FrameTooLarge { max: max_frame });
    }
    Ok((None, consumed))
}

/// Errors quick-xml raises only because its input ended inside markup.
fn is_truncation(e: &XmlError, text: &str, position: usize) -> bool {
    let rest = &text[position.min(text.len())..];
    match e {
        XmlError::Syntax(SyntaxError::InvalidBangMarkup) => rest == "<!",
        XmlError::Syntax(_) => true,
        XmlError::IllFormed(quick_xml::errors::IllFormedError::UnclosedReference) => {
            rest.starts_with('&')
                && rest[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'#' | b'_' | b'-' | b'.'))
        }
        _ => false,
    }
}

fn frame_from(start: &BytesStart<'_>, body: &str) -> Result<ServerFrame, ProtocolError> {
    let name = start.name().0;
    let frame = match name {
        "welcome" => "welcome",
        "heartbeat" => "heartbeat",
        "msg" => "msg",
        "bye" => "bye",
        "error" => "error",
        _ => return Ok(ServerFrame::Unknown),
    };
    let optional = |attr: &'static str| -> Result<Option<String>, ProtocolError> {
        match start.try_get_attribute(attr)? {
            Some(a) => Ok(Some(
                a.normalized_value(XmlVersion::Implicit1_0)?.into_owned(),
            )),
            None => Ok(None),
        }
    };
    let bad = |attr| ProtocolError::BadAttribute { frame, attr };
    let required = |attr| optional(attr)?.ok_or(bad(attr));
    let millis = |attr| -> Result<Option<Duration>, ProtocolError> {
        let Some(value) = optional(attr)? else {
            return Ok(None);
        };
        match value.parse::<u64>().map(Duration::from_millis) {
            Ok(d) if d <= LONGEST_SERVER_WAIT => Ok(Some(d)),
            _ => Err(bad(attr)),
        }
    };
    let seq = || -> Result<Option<u64>, ProtocolError> {
        optional("seq")?
            .map(|s| s.parse::<u64>().map_err(|_| bad("seq")))
            .transpose()
    };
    Ok(match frame {
        "welcome" => {
            let interval = millis("interval")?.ok_or(bad("interval"))?;
            let misses = required("misses")?
                .parse::<u32>()
                .map_err(|_| bad("misses"))?;
            // Both must be positive for the loss deadline to mean anything,
            // and their product must stay a sane wait.
            if interval.is_zero() {
                return Err(bad("interval"));
            }
            if misses == 0 || interval.saturating_mul(misses) > LONGEST_SERVER_WAIT {
                return Err(bad("misses"));
            }
            ServerFrame::Welcome {
                id: required("id")?,
                interval,
                misses,
                phase: millis("phase-ms")?,
            }
        }
        "heartbeat" => match required("mode")?.as_str() {
            "ping" => ServerFrame::Ping { seq: seq()? },
            "pong" => ServerFrame::Pong { seq: seq()? },
            _ => return Err(bad("mode")),
        },
        "msg" => ServerFrame::Msg {
            from: required("from")?,
            id: optional("id")?,
            body: unescape(body)?,
        },
        "bye" => ServerFrame::Bye {
            reason: required("reason")?,
            retry_after: millis("retry-ms")?,
        },
        _ => ServerFrame::Error {
            code: required("code")?,
            reference: optional("ref")?,
            text: unescape(body)?,
        },
    })
}

fn unescape(body: &str) -> Result<String, ProtocolError> {
    Ok(match quick_xml::escape::unescape(body)? {
        Cow::Borrowed(text) => text.to_string(),
        Cow::Owned(text) => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `stream` fed in `pieces` (cut at the given offsets) the way a
    /// connection does: append, take frames, keep the tail.
    fn decode_cut(stream: &[u8], cuts: &[usize]) -> Result<Vec<ServerFrame>, String> {
        let mut inbound = Vec::new();
        let mut frames = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
            inbound.extend_from_slice(&stream[start..end]);
            start = end;
            let mut offset = 0;
            loop {
                let (frame, used) = decode(&inbound[offset..], 4096).map_err(|e| e.to_string())?;
                offset += used;
                match frame {
                    Some(frame) => frames.push(frame),
                    None => break,
                }
            }
            inbound.drain(..offset);
        }
        assert!(
            inbound.iter().all(u8::is_ascii_whitespace),
            "left over: {inbound:?}"
        );
        Ok(frames)
    }

    const STREAM: &str = "<?xml version=\"1.0\"?>\n\
        <welcome id=\"a\" interval=\"5000\" misses=\"5\" phase-ms=\"120\"/>\r\n\
        <heartbeat mode=\"ping\" seq=\"7\"/><heartbeat mode=\"pong\"/>\
        <msg from=\"b\" id=\"m1\">h\u{e9}llo &amp; &#x2713; <i>x</i></msg>\
        <error code=\"offline\" ref=\"m&quot;2\">b is not online</error>\
        <future x=\"1\"><deep/></future>\
        <bye reason=\"shutdown\" retry-ms=\"1500\"/>";

    fn expected() -> Vec<ServerFrame> {
        vec![
            ServerFrame::Welcome {
                id: "a".into(),
                interval: Duration::from_millis(5000),
                misses: 5,
                phase: Some(Duration::from_millis(120)),
            },
            ServerFrame::Ping { seq: Some(7) },
            ServerFrame::Pong { seq: None },
            ServerFrame::Msg {
                from: "b".into(),
                id: Some("m1".into()),
                body: "h\u{e9}llo & \u{2713} <i>x</i>".into(),
            },
            ServerFrame::Error {
                code: "offline".into(),
                reference: Some("m\"2".into()),
                text: "b is not online".into(),
            },
            ServerFrame::Unknown,
            ServerFrame::Bye {
                reason: "shutdown".into(),
                retry_after: Some(Duration::from_millis(1500)),
            },
        ]
    }

    #[test]
    fn decodes_every_frame_in_one_read() {
        assert_eq!(decode_cut(STREAM.as_bytes(), &[]).unwrap(), expected());
    }

    #[test]
    fn every_single_cut_and_byte_by_byte_give_the_same_frames() {
        let stream = STREAM.as_bytes();
        for cut in 1..stream.len() {
            assert_eq!(
                decode_cut(stream, &[cut]).unwrap(),
                expected(),
                "cut at {cut}"
            );
        }
        let every_byte: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(decode_cut(stream, &every_byte).unwrap(), expected());
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        let refused = [
            "hello",
            "<!DOCTYPE x><bye reason=\"x\"/>",
            "<msg from=\"b\">&bogus;</msg>",
            "<welcome id=\"a\" interval=\"0\" misses=\"5\"/>",
            "<welcome id=\"a\" interval=\"5000\" misses=\"0\"/>",
            "<welcome id=\"a\" interval=\"99999999999999999\" misses=\"5\"/>",
            "<welcome id=\"a\" misses=\"5\"/>",
            "<heartbeat mode=\"pang\"/>",
            "<heartbeat mode=\"ping\" seq=\"-1\"/>",
            "<a></b>",
        ];
        for text in refused {
            assert!(decode_cut(text.as_bytes(), &[]).is_err(), "accepted {text}");
        }
        let mut invalid_utf8 = b"<msg from=\"b\">".to_vec();
        invalid_utf8.push(0xff);
        invalid_utf8.extend_from_slice(b"</msg>");
        assert!(
            decode_cut(&invalid_utf8, &[]).is_err(),
            "invalid UTF-8 accepted"
        );
    }

    #[test]
    fn bounds_a_frame_that_never_ends() {
        let long = format!("<msg from=\"b\">{}", "x".repeat(5000));
        assert_eq!(
            decode_cut(long.as_bytes(), &[]).unwrap_err(),
            "server frame longer than 4096 bytes"
        );
        // Whitespace between frames is consumed, so it never accumulates.
        assert!(decode_cut(" ".repeat(10_000).as_bytes(), &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn encodes_client_frames_byte_exact() {
        let mut out = Vec::new();
        encode_login(&mut out, "a", None);
        encode_login(&mut out, "a", Some("ff00"));
        encode_msg(&mut out, "b", "m1", "x &amp; y");
        encode_ack(&mut out, "m1");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<login id=\"a\"/><login id=\"a\" token=\"ff00\"/>\
             <msg to=\"b\" id=\"m1\">x &amp; y</msg><ack id=\"m1\"/>"
        );
    }

    #[test]
    fn heartbeat_pings_on_phase_then_every_interval_and_skips_missed_slots() {
        let now = Instant::now();
        let interval = Duration::from_millis(200);
        let mut hb = Heartbeat::new(interval, 3, Some(Duration::from_millis(50)), now);
        assert_eq!(hb.next_ping, now + Duration::from_millis(50));
        assert_eq!(hb.lost_at(), now + Duration::from_millis(600));
        assert_eq!(hb.ping_sent(hb.next_ping), 1);
        assert_eq!(hb.next_ping, now + Duration::from_millis(250));
        let late = now + Duration::from_secs(5);
        hb.ping_sent(late);
        assert_eq!(hb.next_ping, late + interval);
        assert_eq!(hb.unanswered, 2);
        hb.heard(late);
        assert_eq!(hb.unanswered, 0);
        assert_eq!(hb.lost_at(), late + Duration::from_millis(600));
    }
}
