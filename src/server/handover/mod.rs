//! Upgrading without disconnecting: the running process hands every socket
//! and its state to a new binary, and clients see nothing.
//!
//! The old process, on `SIGUSR2`:
//! 1. starts the new binary (`binary.rs`) with its own arguments and
//!    environment, plus the end of a Unix socket pair (`channel.rs`), and
//!    keeps serving while the new process starts up;
//! 2. when the new process says `Hello`, still serving, sends every
//!    plaintext connection's socket ahead (`SCM_RIGHTS`, 253 per message,
//!    as many messages per iteration as the socket takes), each named by
//!    its key and generation; the new process registers each in its poll as
//!    it arrives and says `Registered` when it has them all. Passing and
//!    registering 19,000 sockets is most of a hand-over's work; done here,
//!    clients do not wait for it. A connection that ends meanwhile is shut
//!    down, not only closed, since the new process's duplicate would keep
//!    it open;
//! 3. on `Registered`, at the end of that loop iteration (every reply
//!    written, every flush done), stops serving: it drains its heartbeat
//!    wheel, writes the state record (`state.rs`, `export.rs`) and sends it
//!    with the listening sockets and the sockets of the connections that
//!    were not sent ahead (accepted since); the record names the others
//!    `SENT_AHEAD`, and the new process closes any it holds that the record
//!    does not name (they ended meanwhile);
//! 4. waits for `Ack` (the new process, `take_over.rs`, imported
//!    everything, `import.rs`),
//!    tells each TLS connection goodbye (see below), answers `Go`, waits
//!    for `Serving` (the new process told systemd it is the main process
//!    now) and exits 0, without telling systemd it stops.
//!
//! A new process of the release before (its `Hello` says format 3) is sent
//! nothing ahead: every socket goes with the state, as that release did.
//!
//! Nothing is closed, shut down or written to a plaintext client on the
//! way (but for the connections that end meanwhile, as they would have
//! anyway): the descriptors the old process holds are duplicates of the
//! ones in flight, and closing them on exit leaves the sockets open. If anything
//! fails (the binary does not start, exits, refuses the state, or misses
//! the timeout) the old process puts its wheel back and serves on; whatever
//! arrived meanwhile waits in the sockets and is read as usual. The new
//! process touches no socket before `Go`, so the two never serve at once.
//!
//! TLS connections are not handed over: a rustls session (keys, sequence
//! numbers) cannot be exported. The TLS listener is (it holds no session),
//! and the new process reads the TLS files again with its configuration.
//! Only once the new process has acknowledged does the old one end each
//! TLS connection through `Core::end` with reason `shutdown`: an encrypted
//! `<bye reason="shutdown" retry-ms=…/>`, then close_notify. So a failed
//! upgrade costs TLS clients nothing, and their reconnects wait in the
//! listen backlog for the new process. The state names them, and the new
//! process records their ends (presence, unacked pushes handed back).
//!
//! Not handed over: admin API connections (they close when the old process
//! exits; an event stream resumes with `Last-Event-ID`), and so the admin
//! requests waiting for an ack (the push's receipt moves and still records
//! the ack). Pending registry lookups (cluster mode) are waited out first,
//! and so are broadcasts still being sent (`server/fanout.rs`): from `Hello`
//! on, this node's admin API answers a new broadcast `503 busy`, so the
//! queue empties and the hand-over follows (or, if other nodes' broadcasts
//! keep it busy past the deadline, the upgrade is given up and nothing is
//! lost).

mod binary;
mod channel;
pub mod command;
mod export;
mod import;
pub mod state;
mod take_over;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};

use crate::config::Config;
use crate::server::conn::{CloseReason, ConnRef};
use crate::server::{Server, Subject};
pub use binary::remember_start_path;
use channel::{Channel, ChannelError, Kind, Sent, FDS_PER_MESSAGE, MAX_PAYLOAD};
pub use import::ImportError;
use state::FormatError;
pub(super) use take_over::{take_over, CatchUp};

/// The environment variable that gives the new process its end of the
/// upgrade socket (a descriptor number).
pub const UPGRADE_FD_ENV: &str = "LIFELINE_UPGRADE_FD";
/// Test-only fault injection, read by the new process
/// (`exit-after-import`, `pause-after-import=MS`, `pause-after-sockets=MS`,
/// `hello-version=N`) or the old one (`state-version=N`). Never set it in
/// production.
pub const TEST_HOOK_ENV: &str = "LIFELINE_TEST_UPGRADE";

/// The token of the upgrade socket in the old process's poll.
pub(super) const UPGRADE: Token = Token(5);

/// Why a hand-over did not happen (the old process serves on).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}")]
    Channel(#[from] ChannelError),
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error("refused the state: {0}")]
    Refused(String),
    #[error("sent {0:?} where {1} was expected")]
    Unexpected(Kind, &'static str),
    #[error("{0}")]
    Import(#[from] Box<ImportError>),
    #[error("the old process kept its clients (it said no Go): {0}")]
    NoGo(ChannelError),
    #[error("the listeners are closed: a shutdown began")]
    ShuttingDown,
    #[error("{UPGRADE_FD_ENV}={0:?} is not a descriptor this process was given")]
    BadFd(String),
}

/// The new process acknowledged the state.
struct Acked {
    conns: usize,
    online: usize,
    /// The TLS connections, to be ended before `Go`.
    tls: Vec<ConnRef>,
    deadline: Instant,
    /// Where the unserved time went, for the log line.
    exported: Duration,
    sent: Duration,
    imported: Duration,
}

/// An upgrade under way in the old process.
pub(super) struct Upgrade {
    child: Child,
    channel: Channel,
    /// When getting the new process ready gives up.
    deadline: Instant,
    timeout: Duration,
    step: Step,
    /// The newest state format the new process reads (from its `Hello`).
    version: u32,
    /// The connections whose sockets the new process holds already.
    ahead: HashSet<ConnRef>,
}

/// Where an upgrade stands in the old process, which serves throughout.
enum Step {
    /// The new process is starting.
    Starting,
    /// Sending the connections' sockets ahead of the state: `todo[next..]`
    /// are still to go. The new process registers each in its poll as it
    /// comes, so that work is not part of the pause.
    SendingAhead {
        todo: Vec<ConnRef>,
        next: usize,
        since: Instant,
    },
    /// Every socket went ahead; the new process is registering them.
    Registering,
    /// Hand over at the end of this iteration.
    Ready,
}

/// The server's side of upgrades.
#[derive(Default)]
pub(super) struct Handover {
    /// An upgrade under way: the new process is starting.
    pub upgrade: Option<Upgrade>,
    /// Just took over from another process: serve every socket that has
    /// something before deadlines are looked at (bytes that arrived during
    /// the hand-over count, as they would have in the old process).
    pub catching_up: Option<CatchUp>,
    /// Started by an upgrade: the pid of the process it took over from.
    pub taken_over_from: Option<u32>,
}

impl Upgrade {
    /// Starts the new binary with this process's arguments and environment
    /// and its end of the upgrade socket.
    fn start(config: &Config, poll: &mio::Registry) -> Result<Upgrade, String> {
        let program = binary::upgrade_target(config.upgrade_bin.as_deref())?;
        let (channel, theirs) =
            Channel::pair().map_err(|e| format!("cannot make the upgrade socket: {e}"))?;
        let mut command = Command::new(&program);
        command
            .args(std::env::args_os().skip(1))
            .env(UPGRADE_FD_ENV, theirs.as_raw_fd().to_string());
        // Settings the new process must not derive afresh: a cluster node id
        // defaulted from host and pid would change with the pid, and the
        // node's presence entries in Redis name it.
        if let Some(cluster) = &config.cluster {
            command.env("LIFELINE_NODE_ID", &cluster.node);
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        drop(theirs); // the child's copy is the only one: its exit reads as EOF here
        poll.register(
            &mut SourceFd(&channel.raw_fd()),
            UPGRADE,
            Interest::READABLE,
        )
        .map_err(|e| format!("cannot watch the upgrade socket: {e}"))?;
        info!(
            "upgrade: started {} as pid {}; pid {} serves until it is ready",
            program.display(),
            child.id(),
            std::process::id()
        );
        Ok(Upgrade {
            child,
            channel,
            deadline: Instant::now() + config.upgrade_timeout,
            timeout: config.upgrade_timeout,
            step: Step::Starting,
            version: state::OLDEST,
            ahead: HashSet::new(),
        })
    }
}

impl Server {
    /// SIGUSR2: start an upgrade, unless one is under way or the server is
    /// shutting down.
    pub(super) fn begin_upgrade(&mut self) {
        let me = std::process::id();
        if let Some(u) = &self.handover.upgrade {
            info!(
                "SIGUSR2 ignored: the upgrade to pid {} is under way",
                u.child.id()
            );
            return;
        }
        if self.drain_until.is_some() {
            info!("SIGUSR2 ignored: shutting down");
            return;
        }
        match Upgrade::start(&self.core.config, self.poll.registry()) {
            Ok(u) => self.handover.upgrade = Some(u),
            Err(why) => warn!("upgrade failed: {why}; pid {me} serves on"),
        }
    }

    /// The upgrade socket is ready: `Hello`, `Registered`, room to send
    /// more sockets ahead, or the new process is gone.
    pub(super) fn on_upgrade_ready(&mut self) {
        let Some(u) = &mut self.handover.upgrade else {
            return;
        };
        loop {
            match u.channel.try_recv() {
                Ok(None) => break,
                Ok(Some(m)) if m.kind == Kind::Hello && matches!(u.step, Step::Starting) => {
                    u.version = hello_version(&m.payload);
                    self.core.hold_broadcasts(true);
                    if u.version < state::SENDS_AHEAD {
                        u.step = Step::Ready;
                        continue;
                    }
                    // A rustls session cannot be exported: TLS connections
                    // stay here (see the module comment).
                    let todo = self
                        .core
                        .clients()
                        .iter()
                        .filter(|(_, c)| c.tls.is_none())
                        .map(|(conn, _)| conn)
                        .collect();
                    u.step = Step::SendingAhead {
                        todo,
                        next: 0,
                        since: Instant::now(),
                    };
                    // From the first socket sent on, a connection that ends
                    // here must end for its peer too (see `Core::end`).
                    self.core.share_sockets(true);
                }
                Ok(Some(m))
                    if m.kind == Kind::Registered && matches!(u.step, Step::Registering) =>
                {
                    u.step = Step::Ready;
                }
                Ok(Some(m)) if m.kind == Kind::Refuse => {
                    let why = String::from_utf8_lossy(&m.payload).into_owned();
                    return self.abandon_upgrade(HandoverError::Refused(why).to_string());
                }
                Ok(Some(m)) => {
                    let expected = match u.step {
                        Step::Starting => "Hello",
                        _ => "Registered",
                    };
                    let why = HandoverError::Unexpected(m.kind, expected).to_string();
                    return self.abandon_upgrade(why);
                }
                Err(e) => {
                    return self.abandon_upgrade(format!("was not ready: {e}"));
                }
            }
        }
        if let Err(e) = self.send_ahead() {
            self.abandon_upgrade(format!("did not take the sockets sent ahead: {e}"));
        }
    }

    /// Sends connections' sockets ahead while serving, as many messages as
    /// the upgrade socket takes now; the rest when it has room again (its
    /// writable event, or the next iteration).
    fn send_ahead(&mut self) -> Result<(), ChannelError> {
        let Some(u) = &mut self.handover.upgrade else {
            return Ok(());
        };
        let Step::SendingAhead { todo, next, since } = &mut u.step else {
            return Ok(());
        };
        let clients = self.core.clients();
        let mut names = Vec::with_capacity(8 * FDS_PER_MESSAGE);
        let mut batch = Vec::with_capacity(FDS_PER_MESSAGE);
        loop {
            names.clear();
            batch.clear();
            let mut end = *next;
            let mut fds = Vec::with_capacity(FDS_PER_MESSAGE);
            while end < todo.len() && fds.len() < FDS_PER_MESSAGE {
                let conn = todo[end];
                end += 1;
                // One that ended meanwhile is not sent.
                if let Some(c) = clients.get(conn) {
                    names.extend_from_slice(&conn.key.to_le_bytes());
                    names.extend_from_slice(&conn.generation.to_le_bytes());
                    fds.push(c.stream.as_fd());
                    batch.push(conn);
                }
            }
            let last = fds.is_empty();
            let kind = if last {
                Kind::SocketsEnd
            } else {
                Kind::Sockets
            };
            let watch = match u.channel.try_send(kind, &names, &fds)? {
                Sent::Yes if last => Interest::READABLE,
                Sent::Yes => {
                    u.ahead.extend(batch.iter().copied());
                    *next = end;
                    continue;
                }
                Sent::Full => Interest::READABLE | Interest::WRITABLE,
                // Room comes with no event: the next iteration tries again.
                Sent::TooManyInFlight => return Ok(()),
            };
            if last {
                info!(
                    "upgrade: sent {} sockets ahead to pid {} in {:.1} ms while serving",
                    u.ahead.len(),
                    u.child.id(),
                    since.elapsed().as_secs_f64() * 1e3
                );
                u.step = Step::Registering;
            }
            self.poll
                .registry()
                .reregister(&mut SourceFd(&u.channel.raw_fd()), UPGRADE, watch)?;
            return Ok(());
        }
    }

    /// At the end of an iteration: hand over if the new process is ready,
    /// give up if it is late. True when the hand-over is done and this
    /// process is to exit.
    pub(super) fn upgrade_step(&mut self, now: Instant) -> bool {
        let Some(u) = &self.handover.upgrade else {
            return false;
        };
        // A message waiting for the registry (cluster mode) is routed
        // first, and a broadcast being sent reaches everyone first.
        let ready = matches!(u.step, Step::Ready);
        if ready && self.core.pending.is_empty() && !self.core.broadcasting() {
            return self.hand_over();
        }
        if matches!(u.step, Step::SendingAhead { .. }) {
            if let Err(e) = self.send_ahead() {
                self.abandon_upgrade(format!("did not take the sockets sent ahead: {e}"));
                return false;
            }
        }
        let Some(u) = &self.handover.upgrade else {
            return false;
        };
        if now >= u.deadline {
            let why = format!("was not ready within {} ms", u.timeout.as_millis());
            self.abandon_upgrade(why);
        }
        false
    }

    /// When the upgrade next needs the loop: its deadline, or soon while
    /// sockets are being sent ahead (room for more may come without an
    /// event).
    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        self.handover.upgrade.as_ref().map(|u| match u.step {
            Step::SendingAhead { .. } => u.deadline.min(Instant::now() + Duration::from_millis(1)),
            _ => u.deadline,
        })
    }

    /// Stops serving and hands everything over. True when the new process
    /// took it and said it serves; false when this one serves on.
    fn hand_over(&mut self) -> bool {
        let stopped = Instant::now();
        let checks: HashMap<_, _> = self.liveness.drain().into_iter().collect();
        let result = self
            .transfer(&checks, stopped)
            .and_then(|acked| self.go(acked));
        let Some(u) = self.handover.upgrade.take() else {
            return false;
        };
        match result {
            Ok(acked) => {
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                info!(
                    "upgrade: handed {} connections ({} logged in) and the listeners to pid {} \
                     in {:.1} ms (export {:.1}, send {:.1}, import until Ack {:.1}); \
                     {} TLS connections told to reconnect; pid {} exits",
                    acked.conns,
                    acked.online,
                    u.child.id(),
                    ms(stopped.elapsed()),
                    ms(acked.exported),
                    ms(acked.sent),
                    ms(acked.imported),
                    acked.tls.len(),
                    std::process::id()
                );
                true
            }
            Err(e) => {
                for (conn, at) in checks {
                    self.liveness.watch(conn, at);
                }
                self.handover.upgrade = Some(u);
                let why = match e {
                    HandoverError::Refused(_) => e.to_string(),
                    e => format!("did not take over: {e}"),
                };
                self.abandon_upgrade(why);
                false
            }
        }
    }

    /// Sends the state and the descriptors and waits for `Ack`.
    fn transfer(
        &self,
        checks: &HashMap<ConnRef, Instant>,
        stopped: Instant,
    ) -> Result<Acked, HandoverError> {
        let Some(u) = &self.handover.upgrade else {
            return Err(HandoverError::Channel(ChannelError::Closed));
        };
        let deadline = Instant::now() + u.timeout;
        // The newest format both read; a process that reads none of ours
        // refuses the newest.
        let version = test_hook()
            .and_then(|h| h.strip_prefix("state-version=").map(str::to_string))
            .and_then(|v| v.parse().ok())
            .unwrap_or(match u.version {
                v if v >= state::OLDEST => v.min(state::VERSION),
                _ => state::VERSION,
            });
        let stopped_at = self.core.clock().micros(stopped);
        let started = Instant::now();
        let export = export::export(self, checks, &u.ahead, stopped_at, version)
            .ok_or(HandoverError::ShuttingDown)??;
        let exported = Instant::now();
        let pieces = export
            .record
            .len()
            .div_ceil(MAX_PAYLOAD)
            .max(export.fds.len().div_ceil(FDS_PER_MESSAGE))
            .max(1);
        let mut chunks = export.record.chunks(MAX_PAYLOAD);
        let mut batches = export.fds.chunks(FDS_PER_MESSAGE);
        for i in 0..pieces {
            let kind = if i + 1 == pieces {
                Kind::StateEnd
            } else {
                Kind::State
            };
            let data = chunks.next().unwrap_or_default();
            let fds = batches.next().unwrap_or_default();
            u.channel.send(kind, data, fds, deadline)?;
        }
        let sent = Instant::now();
        let answer = u.channel.recv(deadline)?;
        match answer.kind {
            Kind::Ack => {}
            Kind::Refuse => {
                let why = String::from_utf8_lossy(&answer.payload).into_owned();
                return Err(HandoverError::Refused(why));
            }
            other => return Err(HandoverError::Unexpected(other, "Ack")),
        }
        Ok(Acked {
            conns: export.conns,
            online: export.online,
            tls: export.tls,
            deadline,
            exported: exported - started,
            sent: sent - exported,
            imported: sent.elapsed(),
        })
    }

    /// The new process has everything: the TLS connections are told
    /// goodbye (their reconnects wait in the listen backlog for the new
    /// process), then `Go`; then waits for the new process to say it
    /// serves, so that it has told systemd it is the main process before
    /// this one exits.
    fn go(&mut self, acked: Acked) -> Result<Acked, HandoverError> {
        for &conn in &acked.tls {
            self.guarded(Subject::Client(conn), |s| {
                s.core.end(conn, CloseReason::Shutdown)
            });
        }
        let Some(u) = &self.handover.upgrade else {
            return Err(HandoverError::Channel(ChannelError::Closed));
        };
        u.channel.send(Kind::Go, &[], &[], acked.deadline)?;
        match u.channel.recv(acked.deadline) {
            Ok(m) if m.kind == Kind::Serving => {}
            // Committed: the new process has the sockets either way.
            Ok(m) => warn!("upgrade: pid {} sent {:?} after Go", u.child.id(), m.kind),
            Err(e) => warn!("upgrade: pid {} did not confirm: {e}", u.child.id()),
        }
        Ok(acked)
    }

    /// The upgrade failed: stop the new process if it still runs, and serve on.
    pub(super) fn abandon_upgrade(&mut self, why: String) {
        let Some(mut u) = self.handover.upgrade.take() else {
            return;
        };
        self.core.hold_broadcasts(false);
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&u.channel.raw_fd()));
        let pid = u.child.id();
        let status = stop(&mut u.child);
        // The new process is gone and the upgrade socket with it (`u` is
        // dropped below): the sockets sent ahead are this process's alone.
        self.core.share_sockets(false);
        warn!(
            "upgrade failed: pid {pid} {why} ({status}); pid {} serves on, every client kept",
            std::process::id()
        );
    }
}

/// Ends a new process that failed (it gets a moment to exit by itself) and
/// says how it ended.
fn stop(child: &mut Child) -> String {
    let until = Instant::now() + Duration::from_millis(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                return match child.wait() {
                    Ok(status) => format!("stopped: {status}"),
                    Err(e) => format!("could not be stopped: {e}"),
                };
            }
            Err(e) => return format!("exit status unknown: {e}"),
        }
    }
}

/// The newest state format a `Hello` says the new process reads (a new
/// process of the first releases sent its one format the same way).
fn hello_version(payload: &[u8]) -> u32 {
    payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn test_hook() -> Option<String> {
    std::env::var(TEST_HOOK_ENV).ok().filter(|v| !v.is_empty())
}
