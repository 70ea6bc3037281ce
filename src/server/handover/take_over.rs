//! The new process's side of an upgrade: the upgrade socket it inherited,
//! the sockets sent ahead registered as they come, the state taken and
//! imported, `Go` awaited, and the first iterations that serve what waited.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::config::Config;
use crate::registry::Registry;
use crate::server::{Server, ServerError};

use super::channel::{Channel, ChannelError, Kind, MAX_PAYLOAD};
use super::{import, state, test_hook, HandoverError, ImportError, TEST_HOOK_ENV, UPGRADE_FD_ENV};

/// The new process's first iterations, serving what arrived while nobody
/// served: counted for the log, since their length adds to the pause.
pub(in crate::server) struct CatchUp {
    since: Instant,
    events: usize,
}

impl CatchUp {
    /// Counts an iteration's events; true while a full batch says more
    /// sockets may be waiting.
    pub fn more(&mut self, events: usize, capacity: usize) -> bool {
        self.events += events;
        if events == capacity {
            return true;
        }
        info!(
            "upgrade: served what waited during the hand-over in {:.1} ms ({} events)",
            self.since.elapsed().as_secs_f64() * 1e3,
            self.events
        );
        false
    }
}

/// The upgrade socket a parent left this process, if it was started by an
/// upgrade. The variable is removed so it is not passed on.
fn inherited_channel() -> Result<Option<Channel>, HandoverError> {
    let Some(value) = std::env::var_os(UPGRADE_FD_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(UPGRADE_FD_ENV);
    let text = value.to_string_lossy().into_owned();
    let fd: i32 = text
        .parse()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| HandoverError::BadFd(text.clone()))?;
    // Only a socket counts: a number that names some other file (or none)
    // was not left by an upgrade.
    let is_socket = std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false);
    if !is_socket {
        return Err(HandoverError::BadFd(text));
    }
    // SAFETY: the descriptor was inherited from the parent for this purpose
    // (named by UPGRADE_FD_ENV, checked above to be an open socket), and
    // nothing else in this process owns it: the variable is read once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Some(Channel::adopt(fd).map_err(ChannelError::Io)?))
}

/// What an ordinary start builds from (given back when no upgrade started
/// this process).
pub(in crate::server) type Start = (Config, Box<dyn Registry>);

/// Started by an upgrade: takes the old process's state and sockets;
/// otherwise gives the configuration back for an ordinary start.
pub(in crate::server) fn take_over(
    config: Config,
    registry: Box<dyn Registry>,
) -> Result<Result<Server, Start>, ServerError> {
    let Some(channel) = inherited_channel()? else {
        return Ok(Err((config, registry)));
    };
    let timeout = config.upgrade_timeout;
    match receive(&channel, config, registry, timeout) {
        Ok(server) => Ok(Ok(server)),
        Err(e) => {
            // Best effort: the old process also sees this process exit.
            let why = e.to_string();
            let _ = channel.send(
                Kind::Refuse,
                &why.as_bytes()[..why.len().min(MAX_PAYLOAD)],
                &[],
                Instant::now() + timeout,
            );
            Err(e.into())
        }
    }
}

fn receive(
    channel: &Channel,
    config: Config,
    registry: Box<dyn Registry>,
    timeout: Duration,
) -> Result<Server, HandoverError> {
    let deadline = Instant::now() + timeout;
    // A new process of the release before says 3 (tests pose as one).
    let reads = test_hook()
        .and_then(|h| {
            h.strip_prefix("hello-version=")
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(state::VERSION);
    channel.send(Kind::Hello, &u32::to_le_bytes(reads), &[], deadline)?;
    // The old process waits for Hello up to its timeout, then has as long
    // again to send: allow both.
    let deadline = deadline + timeout;
    // Sockets sent ahead come first, while the old process still serves;
    // each is registered as it arrives. Then the state.
    let poll = mio::Poll::new().map_err(|e| Box::new(ImportError::from(ServerError::Poll(e))))?;
    let mut ahead = HashMap::new();
    let mut record = Vec::new();
    let mut fds = Vec::new();
    let mut first_piece = None;
    loop {
        let m = channel.recv(deadline)?;
        match m.kind {
            Kind::Sockets if first_piece.is_none() => {
                import::sent_ahead(&poll, &m.payload, m.fds, &mut ahead).map_err(Box::new)?;
                continue;
            }
            Kind::SocketsEnd if first_piece.is_none() => {
                if let Some(ms) = test_hook()
                    .as_deref()
                    .and_then(|h| h.strip_prefix("pause-after-sockets="))
                {
                    let ms = ms.parse().unwrap_or(0);
                    warn!(
                        "{TEST_HOOK_ENV}: pausing {ms} ms with {} sockets sent ahead",
                        ahead.len()
                    );
                    std::thread::sleep(Duration::from_millis(ms));
                    warn!("{TEST_HOOK_ENV}: the pause with sockets sent ahead is over");
                }
                channel.send(Kind::Registered, &[], &[], deadline)?;
                continue;
            }
            Kind::State | Kind::StateEnd => {}
            other => return Err(HandoverError::Unexpected(other, "State")),
        }
        first_piece.get_or_insert_with(Instant::now);
        record.extend_from_slice(&m.payload);
        fds.extend(m.fds);
        // An unknown version is refused on its first bytes.
        state::record_len(&record)?;
        if m.kind == Kind::StateEnd {
            break;
        }
    }
    let received = Instant::now();
    let state = state::decode(&record)?;
    drop(record);
    let decoded = Instant::now();
    let from = state.from_pid;
    let stopped_at = state.stopped_at;
    let mut server = import::import(config, registry, state, fds, poll, ahead).map_err(Box::new)?;
    let imported = Instant::now();
    match test_hook().as_deref() {
        Some("exit-after-import") => {
            warn!("{TEST_HOOK_ENV}=exit-after-import: exiting without an answer");
            std::process::exit(3);
        }
        Some(h) if h.starts_with("pause-after-import=") => {
            let ms = h["pause-after-import=".len()..].parse().unwrap_or(0);
            warn!("{TEST_HOOK_ENV}: pausing {ms} ms before the answer");
            std::thread::sleep(Duration::from_millis(ms));
        }
        _ => {}
    }
    channel.send(Kind::Ack, &[], &[], deadline)?;
    match channel.recv(deadline) {
        Ok(m) if m.kind == Kind::Go => {}
        Ok(m) => return Err(HandoverError::Unexpected(m.kind, "Go")),
        Err(e) => return Err(HandoverError::NoGo(e)),
    }
    // Under systemd this process is the service's main process now; it says
    // so before the old one exits (which waits for `Serving`), or systemd
    // would take that exit for the end of the service.
    crate::notify::notify(&format!(
        "MAINPID={}\nREADY=1\nSTATUS=took over from pid {from}; listening on {}",
        std::process::id(),
        server.local_addr()
    ));
    if let Err(e) = channel.send(Kind::Serving, &[], &[], deadline) {
        warn!("upgrade: could not tell pid {from} this process serves: {e}");
    }
    server.handover.taken_over_from = Some(from);
    let now = server.core.clock_mut().read();
    let unserved = server.core.clock().micros(now).saturating_sub(stopped_at);
    let ms = |from: Instant, to: Instant| (to - from).as_secs_f64() * 1e3;
    info!(
        "upgrade: pid {} took over {} connections ({} logged in) from pid {from}, listening on {}; \
         clients went unserved for {:.1} ms (receive {:.1}, decode {:.1}, import {:.1}, \
         Ack to Go {:.1})",
        std::process::id(),
        server.core.clients().len(),
        server.core.online(),
        server.local_addr(),
        unserved as f64 / 1e3,
        ms(first_piece.unwrap_or(received), received),
        ms(received, decoded),
        ms(decoded, imported),
        ms(imported, now),
    );
    server.handover.catching_up = Some(CatchUp {
        since: Instant::now(),
        events: 0,
    });
    Ok(server)
}
