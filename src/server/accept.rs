//! The listeners: binding (with `SO_REUSEPORT` when several processes share
//! a port), accepting until the backlog is empty, socket options for
//! clients, and what happens when the process runs out of descriptors — a
//! spare one is freed to tell a client `overload` instead of leaving it
//! hanging, and accepting is retried on a timer instead of spinning.
//!
//! On a TLS listener at most `LIFELINE_TLS_MAX_HANDSHAKES` handshakes are in
//! progress at once: past that, accepting stops and new connections wait in
//! the kernel's listen backlog (where they cost the loop nothing) until a
//! handshake finishes or ends. Refusing them instead would only make them
//! come back, each paying a TCP handshake and a refusal on the loop.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};

use crate::config::{Config, Keepalive};
use crate::server::core::Advice;
use crate::server::ServerError;
use lifeline_wire::{self as wire, ByeReason};

/// After the process runs out of descriptors, accepting is retried this often.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often (with a count of the rest).
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(1);

pub struct Listeners {
    client: Option<TcpListener>,
    admin: Option<TcpListener>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    /// Held so that, out of descriptors, one can be freed to refuse a client politely.
    spare_fd: Option<File>,
    retry_at: Option<Instant>,
    errors_unlogged: u64,
    error_logged_at: Option<Instant>,
    keepalive: Option<Keepalive>,
    /// The `retry-ms` of an `overload` refusal.
    advice: Advice,
    /// Counts since the loop last asked ([`Listeners::take_counts`]).
    counts: AcceptCounts,
    /// Accepting stopped at the handshake limit with the backlog perhaps
    /// not empty (the listener is edge-triggered: it will not say so again).
    held_back: bool,
}

/// What accepting saw besides admitted connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptCounts {
    /// Clients told `overload` and closed.
    pub refused: u64,
    /// Accepts that failed (out of descriptors, mostly).
    pub errors: u64,
}

impl Listeners {
    pub fn bind(
        config: &Config,
        poll: &mio::Registry,
        client_token: Token,
        admin_token: Token,
    ) -> Result<Listeners, ServerError> {
        let client =
            bind_listener(config.listen, config.backlog, config.reuseport).map_err(|source| {
                ServerError::Listen {
                    addr: config.listen,
                    source,
                }
            })?;
        let admin = match config.admin_addr {
            None => None,
            Some(addr) => Some(
                bind_listener(addr, 128, config.reuseport)
                    .map_err(|source| ServerError::AdminListen { addr, source })?,
            ),
        };
        Listeners::adopt(config, client, admin, poll, client_token, admin_token)
    }

    /// Listening sockets already bound: by [`Listeners::bind`], or by the
    /// process this one took over from (an upgrade).
    pub fn adopt(
        config: &Config,
        mut client: TcpListener,
        mut admin: Option<TcpListener>,
        poll: &mio::Registry,
        client_token: Token,
        admin_token: Token,
    ) -> Result<Listeners, ServerError> {
        let local_addr = client.local_addr().map_err(ServerError::Poll)?;
        poll.register(&mut client, client_token, Interest::READABLE)
            .map_err(ServerError::Poll)?;
        if let Some(l) = &mut admin {
            poll.register(l, admin_token, Interest::READABLE)
                .map_err(ServerError::Poll)?;
        }
        let admin_addr = match &mut admin {
            Some(l) => Some(l.local_addr().map_err(ServerError::Poll)?),
            None => None,
        };
        if let Some(addr) = admin_addr {
            info!("admin API on http://{addr}");
        }
        Ok(Listeners {
            client: Some(client),
            admin,
            local_addr,
            admin_addr,
            spare_fd: File::open("/dev/null").ok(),
            retry_at: None,
            errors_unlogged: 0,
            error_logged_at: None,
            keepalive: config.tcp_keepalive,
            advice: Advice::new(config.reconnect_spread.as_millis() as u64),
            counts: AcceptCounts::default(),
            held_back: false,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The listening sockets (client, admin), to hand to another process.
    pub fn fds(&self) -> Option<(BorrowedFd<'_>, Option<BorrowedFd<'_>>)> {
        let client = self.client.as_ref()?.as_fd();
        Some((client, self.admin.as_ref().map(|l| l.as_fd())))
    }

    /// What accepting saw since the last call.
    pub fn take_counts(&mut self) -> AcceptCounts {
        std::mem::take(&mut self.counts)
    }

    /// When accepting is to be tried again after a shortage of descriptors.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Whether the retry after a shortage is due; it is then cleared.
    pub fn retry_due(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
            true
        } else {
            false
        }
    }

    /// Stops accepting (shutdown); the listening sockets close.
    pub fn close(&mut self, poll: &mio::Registry) {
        for listener in [self.client.take(), self.admin.take()]
            .into_iter()
            .flatten()
        {
            let mut listener = listener;
            let _ = poll.deregister(&mut listener);
        }
    }

    /// Whether accepting stopped at the handshake limit.
    pub fn held_back(&self) -> bool {
        self.held_back
    }

    /// Accepts pending clients, at most `room` of them (the handshakes
    /// that may begin now). `admit` takes each configured socket, or gives
    /// it back to be refused with `overload`.
    pub fn accept_clients(
        &mut self,
        now: Instant,
        mut room: usize,
        mut admit: impl FnMut(TcpStream, SocketAddr) -> Option<TcpStream>,
    ) {
        self.held_back = false;
        // Take back a spare descriptor lost to an earlier shortage first, so
        // that the next shortage can still refuse politely.
        if self.spare_fd.is_none() {
            self.spare_fd = File::open("/dev/null").ok();
        }
        loop {
            let Some(listener) = &self.client else {
                return;
            };
            if room == 0 {
                self.held_back = true;
                return;
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    room -= 1;
                    if let Err(e) = self.configure(&stream) {
                        log::debug!("dropping {peer}: cannot set socket options: {e}");
                        continue;
                    }
                    if let Some(refused) = admit(stream, peer) {
                        log::debug!("refusing {peer}: at capacity");
                        self.refuse(refused);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_descriptors(&e) => {
                    self.log_error(&e, now);
                    if !self.refuse_with_spare_fd() {
                        // Nothing can be accepted until a descriptor frees up; the
                        // listener stays registered and is retried by the timer, so
                        // the loop sleeps instead of spinning on the pending backlog.
                        self.retry_at = Some(now + ACCEPT_RETRY);
                        return;
                    }
                }
                // ECONNABORTED and friends concern one client; carry on.
                Err(e) => self.log_error(&e, now),
            }
        }
    }

    /// Accepts every pending admin connection.
    pub fn accept_admin(&mut self, now: Instant, mut admit: impl FnMut(TcpStream, SocketAddr)) {
        loop {
            let Some(listener) = &self.admin else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => admit(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, most likely: retried with the client
                    // listener (edge-triggered, the pending request would
                    // otherwise wait for the next connection).
                    self.log_error(&e, now);
                    self.retry_at.get_or_insert(now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// Out of descriptors: release the spare, accept one client, tell it
    /// `overload`, close it, take the spare back. Returns false when that
    /// is not possible either.
    fn refuse_with_spare_fd(&mut self) -> bool {
        if self.spare_fd.is_none() {
            self.spare_fd = File::open("/dev/null").ok();
        }
        if self.spare_fd.take().is_none() {
            return false;
        }
        let refused = match self.client.as_ref().map(|l| l.accept()) {
            Some(Ok((stream, _))) => {
                self.refuse(stream);
                true
            }
            _ => false,
        };
        self.spare_fd = File::open("/dev/null").ok();
        refused && self.spare_fd.is_some()
    }

    /// Tells a socket that never became a connection `overload`, and drops it.
    fn refuse(&mut self, stream: TcpStream) {
        self.counts.refused += 1;
        let mut bye = Vec::with_capacity(64);
        let retry = self.advice.retry_ms(ByeReason::Overload);
        wire::encode_bye(&mut bye, ByeReason::Overload, retry);
        // Best effort: a fresh socket's send buffer takes a few dozen bytes.
        let _ = io::Write::write(&mut &stream, &bye);
    }

    fn configure(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)?;
        if let Some(k) = self.keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval)
                .with_retries(k.count);
            let socket = socket2::SockRef::from(stream);
            socket.set_tcp_keepalive(&keepalive)?;
            // Keepalive only probes an idle connection; with unacknowledged
            // output the kernel retransmits instead, for up to ~15 minutes.
            // The user timeout gives that case the same bound.
            socket.set_tcp_user_timeout(Some(k.idle + k.interval * k.count))?;
        }
        Ok(())
    }

    fn log_error(&mut self, e: &io::Error, now: Instant) {
        self.counts.errors += 1;
        let due = self
            .error_logged_at
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_EVERY);
        if due {
            warn!(
                "accept failed: {e} ({} more since the last report)",
                self.errors_unlogged
            );
            self.error_logged_at = Some(now);
            self.errors_unlogged = 0;
        } else {
            self.errors_unlogged += 1;
        }
    }
}

fn bind_listener(addr: SocketAddr, backlog: i32, reuseport: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuseport {
        // Several processes bind the same port and the kernel spreads new
        // connections over them.
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
