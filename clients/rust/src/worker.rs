//! The client thread: one state machine, `Backoff → Connecting → LoggedIn`,
//! until `Stopped`. Every way a connection ends goes through
//! [`Worker::finish`].

use std::io;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use lifeline_wire::{to_server, ServerFrame, ServerFrameError};
use log::debug;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::backoff::Backoff;
use crate::client::Command;
use crate::config::ClientConfig;
use crate::events::{ClientEvent, Disconnect, ProtocolError, StopReason};
use crate::heartbeat::Heartbeat;
use crate::link::{Link, ReadOutcome};
use crate::recent::{Arrival, RecentIds, RECENT_IDS};

/// The handle's waker; connections take the tokens below it.
pub(crate) const WAKER: Token = Token(usize::MAX);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;

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

impl From<ServerFrameError> for End {
    fn from(e: ServerFrameError) -> End {
        ProtocolError::from(e).into()
    }
}

pub(crate) struct Worker {
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
    /// Recent message ids, to drop (or re-ack) a redelivered copy.
    recent: RecentIds,
}

impl Worker {
    /// A worker that connects as soon as it runs.
    pub(crate) fn new(
        config: ClientConfig,
        poll: Poll,
        commands: Receiver<Command>,
        events: Sender<ClientEvent>,
    ) -> Worker {
        Worker {
            backoff: Backoff::new(config.backoff_base, config.backoff_cap),
            config,
            poll,
            commands,
            events,
            state: State::Backoff {
                until: Instant::now(),
            },
            failures: 0,
            generation: 0,
            recent: RecentIds::new(RECENT_IDS),
        }
    }

    pub(crate) fn run(mut self) {
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
                    to_server::encode_msg(&mut link.outbound, &to, Some(&id), &body);
                }
                (Command::Msg { to, id, .. }, _) => self.emit(ClientEvent::NotSent { to, id }),
                (Command::Ack { id }, link) => {
                    // Remembered even when not logged in: a redelivery after
                    // the reconnect is then acked for the app.
                    self.recent.acked(&id);
                    if let Some(link) = link {
                        to_server::encode_ack(&mut link.outbound, &id);
                    }
                }
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
                    to_server::encode_pong(&mut link.outbound, seq);
                }
            }
            ServerFrame::Pong { .. } | ServerFrame::Unknown => {}
            ServerFrame::Msg { from, id, body } => {
                let arrival = id
                    .as_deref()
                    .map_or(Arrival::New, |id| self.recent.arrived(id));
                match (arrival, id) {
                    (Arrival::New, id) => self.emit(ClientEvent::Message { from, id, body }),
                    // The ack went out on a connection that ended first.
                    (Arrival::AckedBefore, Some(id)) => {
                        if let Some(link) = self.link() {
                            to_server::encode_ack(&mut link.outbound, &id);
                        }
                    }
                    // The app has it and will ack it.
                    (Arrival::Pending | Arrival::AckedBefore, _) => {}
                }
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
                    to_server::encode_ping(&mut link.outbound, Some(seq));
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
        let tls = match &self.config.tls {
            None => None,
            Some(tls) => Some(tls.connection().map_err(|e| failed(io::Error::other(e)))?),
        };
        let mut login = Vec::new();
        let config = &self.config;
        let options = to_server::LoginOptions {
            token: config.token.as_deref(),
            exp: config.exp,
            interval_ms: config.interval.map(|i| i.as_millis() as u64),
        };
        to_server::encode_login_with(&mut login, &config.id, options);
        debug!("connecting to {} as {}", config.addr, config.id);
        self.state = State::Connecting {
            link: Link::new(stream, token, login, tls),
            deadline: now + config.connect_timeout,
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
