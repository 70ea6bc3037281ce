//! `lifeline --workers N`: one process per core on one host. This process
//! starts N copies of itself, each a cluster node of its own (its own loop,
//! its own node id `NODE-wK`, its own admin port), all sharing the client
//! port through SO_REUSEPORT (the kernel spreads connections); it forwards
//! SIGTERM and SIGINT to them (and SIGHUP: each reloads its TLS files), starts again a worker that dies while the
//! others run (after a second), and exits when they have all exited after
//! a signal.
//!
//! Under systemd (`Type=notify`, `NotifyAccess=main`) the supervisor is
//! the service: its workers send their `READY=1` to it (a socket of its
//! own, named in their `NOTIFY_SOCKET`), and it tells systemd `READY=1`
//! once all N are listening, and `STOPPING=1` when it forwards a stop.
//!
//! The same layout without this supervisor: N copies under systemd (a
//! template unit, `lifeline@.service`, see the README), each with
//! `LIFELINE_REUSEPORT=1`, its own `LIFELINE_NODE_ID` and admin address.

use std::net::SocketAddr as IpSocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::config::Config;
use crate::notify;

/// How often the supervisor looks at its workers and at signals.
const POLL: Duration = Duration::from_millis(50);
/// A worker that died is started again after this long.
const RESTART_AFTER: Duration = Duration::from_secs(1);

struct Worker {
    index: u32,
    child: Option<Child>,
    restart_at: Option<Instant>,
}

/// Runs the supervisor; returns the process's exit code.
pub fn supervise(config: &Config, n: u32) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicUsize::new(0));
    let reload = Arc::new(AtomicBool::new(false));
    {
        let reload = Arc::clone(&reload);
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        let registered = unsafe {
            signal_hook::low_level::register(libc::SIGHUP, move || {
                reload.store(true, Ordering::SeqCst);
            })
        };
        if let Err(e) = registered {
            error!("cannot handle signal SIGHUP: {e}");
            return 1;
        }
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let stop = Arc::clone(&stop);
        let signal = Arc::clone(&signal);
        // SAFETY: the handler only stores to atomics (async-signal-safe).
        let registered = unsafe {
            signal_hook::low_level::register(sig, move || {
                stop.store(true, Ordering::SeqCst);
                signal.store(sig as usize, Ordering::SeqCst);
            })
        };
        if let Err(e) = registered {
            error!("cannot handle signal {sig}: {e}");
            return 1;
        }
    }
    let node = config
        .cluster
        .as_ref()
        .map(|c| c.node.clone())
        .unwrap_or_default();
    let mut workers: Vec<Worker> = (0..n)
        .map(|index| Worker {
            index,
            child: None,
            restart_at: Some(Instant::now()),
        })
        .collect();
    let mut relay = ReadyRelay::open(n);
    let mut forwarded = false;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if let Some(r) = &mut relay {
            r.poll();
        }
        if reload.swap(false, Ordering::SeqCst) && !stopping {
            info!("workers: forwarding SIGHUP to {n} workers");
            for w in &workers {
                if let Some(child) = &w.child {
                    // SAFETY: kill(2) on a worker this process started.
                    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
                }
            }
        }
        if stopping && !forwarded {
            notify::stopping();
            let sig = signal.load(Ordering::SeqCst) as i32;
            info!("workers: forwarding signal {sig} to {n} workers");
            for w in &workers {
                if let Some(child) = &w.child {
                    // SAFETY: kill(2) on a worker this process started.
                    unsafe { libc::kill(child.id() as i32, sig) };
                }
            }
            forwarded = true;
        }
        let mut running = 0;
        for w in &mut workers {
            if let Some(child) = &mut w.child {
                match child.try_wait() {
                    Ok(None) => running += 1,
                    Ok(Some(status)) => {
                        if !stopping {
                            warn!("worker {} exited ({status}): starting it again", w.index);
                            w.restart_at = Some(Instant::now() + RESTART_AFTER);
                        }
                        w.child = None;
                    }
                    Err(e) => warn!("worker {}: {e}", w.index),
                }
            }
            if !stopping && w.child.is_none() && w.restart_at.is_some_and(|at| at <= Instant::now())
            {
                let ready_to = relay.as_ref().map(|r| r.name.as_str());
                match spawn(config, &node, w.index, ready_to) {
                    Ok(child) => {
                        info!("worker {} started: pid {}", w.index, child.id());
                        w.child = Some(child);
                        w.restart_at = None;
                        running += 1;
                    }
                    Err(e) => {
                        error!("cannot start worker {}: {e}", w.index);
                        w.restart_at = Some(Instant::now() + RESTART_AFTER);
                    }
                }
            }
        }
        if stopping && running == 0 {
            info!("workers: all stopped");
            return 0;
        }
        std::thread::sleep(POLL);
    }
}

/// Where the workers' readiness comes in, under a service manager: an
/// abstract datagram socket of this process; systemd hears `READY=1` once
/// all `n` workers are listening.
struct ReadyRelay {
    socket: UnixDatagram,
    /// The socket's name, as a worker's `NOTIFY_SOCKET` gives it.
    name: String,
    waiting_for: u32,
}

impl ReadyRelay {
    /// `None` when no service manager waits (no `NOTIFY_SOCKET`).
    fn open(n: u32) -> Option<ReadyRelay> {
        std::env::var_os("NOTIFY_SOCKET")?;
        let name = format!("lifeline-workers-{}", std::process::id());
        let opened = SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| UnixDatagram::bind_addr(&addr))
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket));
        match opened {
            Ok(socket) => Some(ReadyRelay {
                socket,
                name: format!("@{name}"),
                waiting_for: n,
            }),
            Err(e) => {
                // The workers then tell systemd themselves (NotifyAccess=all).
                warn!("workers: cannot relay readiness ({e}); workers notify directly");
                None
            }
        }
    }

    /// Counts the workers' `READY=1`; the last one makes the service ready.
    fn poll(&mut self) {
        let mut buf = [0u8; 512];
        while let Ok(len) = self.socket.recv(&mut buf) {
            let ready = buf[..len].split(|&b| b == b'\n').any(|l| l == b"READY=1");
            if ready && self.waiting_for > 0 {
                self.waiting_for -= 1;
                if self.waiting_for == 0 {
                    notify::ready("all workers listening");
                }
            }
        }
    }
}

/// One worker: this program, the same arguments less `--workers`, with
/// SO_REUSEPORT, its own node id and its own admin port (base + index);
/// its readiness goes to `ready_to` when the supervisor relays it.
fn spawn(
    config: &Config,
    node: &str,
    index: u32,
    ready_to: Option<&str>,
) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut args = Vec::new();
    let mut skip = false;
    for arg in std::env::args().skip(1) {
        if skip {
            skip = false;
            continue;
        }
        // Each worker gets its own admin address (below), and is no
        // supervisor itself.
        if arg == "--workers" || arg == "--admin-addr" {
            skip = true;
            continue;
        }
        if arg.starts_with("--workers=") || arg.starts_with("--admin-addr=") {
            continue;
        }
        args.push(arg);
    }
    let mut cmd = Command::new(exe);
    if let Some(name) = ready_to {
        cmd.env("NOTIFY_SOCKET", name);
    }
    cmd.args(&args)
        .env_remove("LIFELINE_WORKERS")
        .env("LIFELINE_REUSEPORT", "1")
        .env("LIFELINE_NODE_ID", format!("{node}-w{index}"));
    if let Some(admin) = config.admin_addr {
        let port = if admin.port() == 0 {
            0
        } else {
            admin.port().saturating_add(index as u16)
        };
        cmd.env(
            "LIFELINE_ADMIN_ADDR",
            IpSocketAddr::new(admin.ip(), port).to_string(),
        );
    } else {
        cmd.env("LIFELINE_ADMIN_ADDR", "");
    }
    // SAFETY: prctl(2) in the child before exec, no allocation: a worker
    // whose supervisor dies (even by SIGKILL) gets SIGTERM and drains.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
}
