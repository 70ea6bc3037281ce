//! Vanished peers: a client that disappears without FIN or RST (cable pulled,
//! host frozen, NAT entry dropped) must be found by the heartbeat deadline.
//!
//! Each test builds its own two network namespaces joined by a veth pair
//! (server side 10.231.0.1/30, client side 10.231.0.2/30; private addresses
//! only inside namespaces the test creates, named with the test's PID), runs
//! the real binary in the server namespace (`ip netns exec`), and opens the
//! vanishing clients from a thread that has joined the client namespace
//! (setns(2)), so they are ordinary sockets of this process. The cut is a
//! blackhole route to the server in the client namespace, the equivalent of
//! `iptables -A OUTPUT -j DROP` there (neither iptables nor nft is needed):
//! nothing the client's kernel sends reaches the server again, no FIN, no
//! RST, while the server's side of the link stays up (a link taken down would
//! turn the server's transmissions into local drops, which TCP treats as
//! congestion and keepalive then never gives up on).
//!
//! A guard deletes both namespaces when the test ends, passed or failed.
//! Without root, `ip`, namespaces or veth the tests print SKIPPED and pass.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{poll_until, Client, ServerProc, WAIT};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Printed straight to stderr, past libtest's capture, so a skip is visible
/// in the normal test output.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn skip(test: &str, why: &str) {
    say(&format!("SKIPPED vanished::{test}: {why}"));
}

/// Unix time in milliseconds, as a float (the server logs UTC milliseconds).
fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ------------------------------------------------------------- namespaces

/// Two namespaces and a veth pair between them; both namespaces (and so the
/// veth pair) are deleted on drop.
struct Net {
    server_ns: String,
    client_ns: String,
    client_if: String,
    created: Vec<String>,
}

impl Net {
    /// `None` (after printing why) when this machine cannot do it.
    fn create(test: &str, tag: &str) -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip(test, "needs root for network namespaces");
            return None;
        }
        if let Err(e) = run(&["ip", "-V"]) {
            skip(test, &format!("no iproute2 `ip`: {e}"));
            return None;
        }
        let pid = std::process::id();
        let mut net = Net {
            server_ns: format!("llv-s-{pid}-{tag}"),
            client_ns: format!("llv-c-{pid}-{tag}"),
            client_if: format!("llvc{pid}{tag}"),
            created: Vec::new(),
        };
        let server_if = format!("llvs{pid}{tag}");
        for ns in [net.server_ns.clone(), net.client_ns.clone()] {
            if let Err(e) = run(&["ip", "netns", "add", &ns]) {
                skip(test, &format!("cannot create a network namespace: {e}"));
                return None; // the guard deletes what was made
            }
            net.created.push(ns);
        }
        let (s, c) = (net.server_ns.clone(), net.client_ns.clone());
        let ci = net.client_if.clone();
        let setup: Vec<Vec<&str>> = vec![
            vec![
                "ip", "link", "add", &server_if, "netns", &s, "type", "veth", "peer", "name", &ci,
                "netns", &c,
            ],
            vec![
                "ip",
                "-n",
                &s,
                "addr",
                "add",
                "10.231.0.1/30",
                "dev",
                &server_if,
            ],
            vec!["ip", "-n", &c, "addr", "add", "10.231.0.2/30", "dev", &ci],
            vec!["ip", "-n", &s, "link", "set", "lo", "up"],
            vec!["ip", "-n", &c, "link", "set", "lo", "up"],
            vec!["ip", "-n", &s, "link", "set", &server_if, "up"],
            vec!["ip", "-n", &c, "link", "set", &ci, "up"],
        ];
        for args in setup {
            if let Err(e) = run(&args) {
                skip(test, &format!("cannot set up the veth pair: {e}"));
                return None;
            }
        }
        Some(net)
    }

    /// Runs `f` on a thread that has joined namespace `ns`; sockets it opens
    /// stay in that namespace whichever thread uses them later.
    fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns(2) on an open namespace descriptor; affects this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in namespace")
    }

    /// A client on the far side of the link.
    fn remote_client(&self, server: SocketAddr) -> Client {
        Net::inside(&self.client_ns, move || Client::connect(server))
    }

    /// A client in the server's own namespace (unaffected by the cut).
    fn local_client(&self, server: SocketAddr) -> Client {
        Net::inside(&self.server_ns, move || Client::connect(server))
    }

    /// From now on nothing the client namespace sends reaches the server.
    fn cut(&self) {
        run(&[
            "ip",
            "-n",
            &self.client_ns,
            "route",
            "add",
            "blackhole",
            "10.231.0.1/32",
        ])
        .expect("blackhole route");
    }

    /// `ss -tnoi` in the server namespace: the first line and the info line
    /// of the socket whose peer is `peer`.
    fn ss(&self, peer: SocketAddr) -> Option<String> {
        let out = run(&["ip", "netns", "exec", &self.server_ns, "ss", "-tnoi"]).ok()?;
        let lines: Vec<&str> = out.lines().collect();
        let needle = format!(" {peer} ");
        let i = lines
            .iter()
            .position(|l| l.contains(&needle) || l.ends_with(&format!(" {peer}")))?;
        Some(format!(
            "{} | {}",
            lines[i].split_whitespace().collect::<Vec<_>>().join(" "),
            lines.get(i + 1).map_or("", |l| l.trim())
        ))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------- server

/// The real binary in the server namespace, killed by its PID on drop
/// (`ip netns exec` execs the binary, so the child is the server itself).
/// The server inside the server namespace; the rest of the harness is
/// `ServerProc`'s.
struct NsServer {
    server: ServerProc,
}

impl std::ops::Deref for NsServer {
    type Target = ServerProc;
    fn deref(&self) -> &ServerProc {
        &self.server
    }
}

impl NsServer {
    fn start(net: &Net, env: &[(&str, &str)]) -> NsServer {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &net.server_ns,
            env!("CARGO_BIN_EXE_lifeline"),
        ]);
        let listen = format!("{SERVER_IP}:0");
        let mut all = vec![
            ("LIFELINE_LISTEN", listen.as_str()),
            ("LIFELINE_ADMIN_ADDR", ""),
        ];
        all.extend_from_slice(env);
        ServerProc::configure(&mut cmd, &all);
        let server = NsServer {
            server: ServerProc::spawn(cmd),
        };
        let exe = std::fs::read_link(format!("/proc/{}/exe", server.pid())).unwrap();
        assert!(
            exe.to_string_lossy().contains("lifeline"),
            "the child is {exe:?}, not the server"
        );
        server
    }

    fn pid(&self) -> i32 {
        self.server.pid() as i32
    }

    fn login(&self, mut c: Client, id: &str) -> Client {
        c.send(&format!("<login id=\"{id}\"/>"));
        let welcome = c.expect_frame();
        assert!(
            welcome.starts_with(&format!("<welcome id=\"{id}\"")),
            "{welcome}"
        );
        c
    }

    /// Waits for `id`'s offline line; returns (reason, server timestamp in Unix ms).
    fn offline(&self, id: &str, timeout: Duration) -> (String, f64) {
        let line = self
            .wait_log(&format!("offline id={id} "), timeout)
            .unwrap_or_else(|| {
                panic!("{id} not closed within {timeout:?}: {:?}", self.log_lines())
            });
        let reason = line
            .split("reason=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        (reason, log_time_ms(&line))
    }
}

/// Unix ms of a simple_logger line "2026-11-24T13:49:08.815Z INFO ...".
fn log_time_ms(line: &str) -> f64 {
    let stamp = line.split_whitespace().next().expect("timestamp");
    let num = |r: std::ops::Range<usize>| -> i64 { stamp[r].parse().expect("timestamp digits") };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (hh, mm, ss, ms) = (num(11..13), num(14..16), num(17..19), num(20..23));
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000 + ms) as f64
}

// ------------------------------------------------------------- clients

/// Pings `n` times, each answered, `every` apart; returns the wall times
/// (ms) at which the last ping was sent and its pong came back: the server's
/// `last_seen` lies between them.
fn ping_then_stop(c: &mut Client, n: u64, every: Duration) -> (f64, f64) {
    let mut last = (0.0, 0.0);
    for seq in 1..=n {
        let sent = wall_ms();
        c.send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"));
        assert_eq!(
            c.expect_frame(),
            format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>")
        );
        last = (sent, wall_ms());
        if seq < n {
            thread::sleep(every);
        }
    }
    last
}

/// A healthy client in the server's namespace, pinging every 50 ms from a
/// thread: it must get every pong within one interval and never be closed.
struct Bystander {
    stop: Arc<AtomicBool>,
    pongs: Arc<AtomicU64>,
    thread: JoinHandle<(u64, Duration, Option<String>, Client)>,
}

impl Bystander {
    fn start(mut client: Client, within: Duration) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let pongs = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&pongs);
        let thread = thread::spawn(move || {
            let (mut n, mut slowest) = (0u64, Duration::ZERO);
            while !stopped.load(Ordering::Relaxed) {
                let seq = n + 1;
                let sent = Instant::now();
                if !client.try_send(&format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>")) {
                    return (n, slowest, Some(format!("ping {seq} not sent")), client);
                }
                let want = format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>");
                loop {
                    match client.frame_within(within) {
                        Some(f) if f == want => break,
                        Some(f) if f.starts_with("<msg ") => {}
                        other => {
                            return (
                                n,
                                slowest,
                                Some(format!("ping {seq}: got {other:?}")),
                                client,
                            )
                        }
                    }
                }
                n = seq;
                counted.store(n, Ordering::Relaxed);
                slowest = slowest.max(sent.elapsed());
                thread::sleep(Duration::from_millis(50));
            }
            (n, slowest, None, client)
        });
        Bystander {
            stop,
            pongs,
            thread,
        }
    }

    fn finish(self, server: &NsServer, id: &str) {
        let target = self.pongs.load(Ordering::Relaxed) + 2;
        // Two more pongs, or a thread that ended early: the asserts say which.
        poll_until(WAIT, || {
            (self.pongs.load(Ordering::Relaxed) >= target || self.thread.is_finished())
                .then_some(())
        });
        self.stop.store(true, Ordering::Relaxed);
        let (pongs, slowest, failure, _client) = self.thread.join().expect("bystander");
        say(&format!(
            "bystander {id}: {pongs} pongs, slowest {slowest:?}"
        ));
        assert!(failure.is_none(), "bystander {id}: {}", failure.unwrap());
        assert!(pongs >= 2, "bystander {id} got {pongs} pongs");
        assert!(
            !server
                .log_lines()
                .iter()
                .any(|l| l.contains(&format!("offline id={id} "))),
            "bystander {id} went offline: {:?}",
            server.log_lines()
        );
    }
}

// ------------------------------------------------------ kernel options

/// The server's own view of one of its sockets, read through a duplicate of
/// its descriptor (pidfd_getfd(2); root or ptrace rights over the server).
#[derive(Debug)]
struct ServerSocket {
    keepalive: bool,
    idle: Duration,
    interval: Duration,
    count: u32,
    user_timeout: Option<Duration>,
}

fn server_socket(pid: i32, peer: SocketAddr) -> Result<ServerSocket, String> {
    // SAFETY: plain syscalls; every descriptor obtained is owned and closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pidfd_open returned a fresh descriptor we own.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| e.to_string())? {
        let Ok(entry) = entry else { continue };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(target) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: see above.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
        if fd < 0 {
            return Err(format!("pidfd_getfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: pidfd_getfd returned a fresh descriptor we own.
        let sock = unsafe { socket2::Socket::from_raw_fd(fd as i32) };
        if sock.peer_addr().ok().and_then(|a| a.as_socket()) != Some(peer) {
            continue;
        }
        let e = |e: std::io::Error| e.to_string();
        return Ok(ServerSocket {
            keepalive: sock.keepalive().map_err(e)?,
            idle: sock.tcp_keepalive_time().map_err(e)?,
            interval: sock.tcp_keepalive_interval().map_err(e)?,
            count: sock.tcp_keepalive_retries().map_err(e)?,
            user_timeout: sock.tcp_user_timeout().map_err(e)?,
        });
    }
    Err(format!("no server socket with peer {peer}"))
}

// ----------------------------------------------------------------- tests

/// 200 ms × 3 misses, 5 ms tick: the peer's last ping lands, then the link
/// goes silent; the server must close it with reason=timeout no earlier than
/// 600 ms after that ping and no later than 655 ms after its pong came back,
/// while a healthy client in the server's namespace sees nothing wrong.
#[test]
fn a_vanished_peer_is_closed_at_its_heartbeat_deadline() {
    let _serial = serial();
    let test = "a_vanished_peer_is_closed_at_its_heartbeat_deadline";
    let Some(net) = Net::create(test, "a") else {
        return;
    };
    let (deadline, tick) = (600.0, 5.0);
    let server = NsServer::start(
        &net,
        &[
            ("LIFELINE_HEARTBEAT_MS", "200"),
            ("LIFELINE_MISSES", "3"),
            ("LIFELINE_TICK_MS", "5"),
        ],
    );
    let bystander = server.login(net.local_client(server.addr), "bystander");
    let bystander = Bystander::start(bystander, Duration::from_millis(200));
    let mut ghost = server.login(net.remote_client(server.addr), "ghost");
    let ghost_addr = ghost.stream.local_addr().unwrap();
    assert_eq!(ghost_addr.ip(), IpAddr::V4(CLIENT_IP));

    let (sent, ponged) = ping_then_stop(&mut ghost, 6, Duration::from_millis(50));
    net.cut();
    let cut = wall_ms();
    let (reason, closed) = server.offline("ghost", Duration::from_secs(3));
    say(&format!(
        "{test}: closed reason={reason} {:.0} ms after the last ping was sent, \
         {:.0} ms after its pong, {:.0} ms after the cut (window [{deadline}, {}] ms after \
         last_seen); server socket then: {:?}",
        closed - sent,
        closed - ponged,
        closed - cut,
        deadline + tick + 50.0,
        net.ss(ghost_addr)
    ));
    assert_eq!(reason, "timeout");
    // Log timestamps are whole milliseconds, cut down: allow 1 ms below.
    assert!(
        closed > sent + deadline - 1.0,
        "closed {:.0} ms after the last ping was sent: before the deadline",
        closed - sent
    );
    assert!(
        closed <= ponged + deadline + tick + 50.0,
        "closed {:.0} ms after the last pong: later than deadline + tick + 50 ms",
        closed - ponged
    );
    assert!(closed - cut <= deadline + tick + 50.0);
    bystander.finish(&server, "bystander");
}

/// LIFELINE_TCP_KEEPALIVE=1,1,2 with a 4 s heartbeat deadline (4000 ms × 1
/// miss, so the server sends no probe of its own before it). Two peers
/// vanish together. The idle one has nothing unacknowledged: the kernel's
/// keepalive gives up on it after about 1 + 2 × 1 s and the server closes it
/// on the socket error (reason io-error), before the deadline. The busy one
/// was pushed messages after the cut: keepalive does not probe while data is
/// unacknowledged, so the server also sets TCP_USER_TIMEOUT to idle +
/// interval × count (3 s); without it the kernel would keep retransmitting
/// for many minutes (tcp_retries2). The user timeout ends the busy one too
/// (reason io-error), before the heartbeat deadline.
#[test]
fn kernel_keepalive_ends_an_idle_vanished_peer_and_the_deadline_one_with_pending_output() {
    let _serial = serial();
    let test =
        "kernel_keepalive_ends_an_idle_vanished_peer_and_the_deadline_one_with_pending_output";
    let Some(net) = Net::create(test, "b") else {
        return;
    };
    let (deadline, tick) = (4000.0, 5.0);
    let server = NsServer::start(
        &net,
        &[
            ("LIFELINE_HEARTBEAT_MS", "4000"),
            ("LIFELINE_MISSES", "1"),
            ("LIFELINE_TICK_MS", "5"),
            ("LIFELINE_TCP_KEEPALIVE", "1,1,2"),
        ],
    );
    let mut pusher = server.login(net.local_client(server.addr), "pusher");
    let mut idle = server.login(net.remote_client(server.addr), "idle");
    let mut busy = server.login(net.remote_client(server.addr), "busy");
    let idle_addr = idle.stream.local_addr().unwrap();
    let busy_addr = busy.stream.local_addr().unwrap();

    // The options the server set on its side of the connection.
    match server_socket(server.pid(), busy_addr) {
        Ok(s) => {
            say(&format!("{test}: server socket options for busy: {s:?}"));
            assert!(s.keepalive, "SO_KEEPALIVE not set");
            assert_eq!(
                (s.idle, s.interval, s.count),
                (Duration::from_secs(1), Duration::from_secs(1), 2),
                "TCP_KEEPIDLE/KEEPINTVL/KEEPCNT"
            );
            if s.user_timeout.is_none() {
                say(&format!(
                    "{test}: FINDING: TCP_USER_TIMEOUT is not set; unacknowledged output to a \
                     vanished peer is retransmitted until tcp_retries2 ({}) gives up",
                    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_retries2")
                        .unwrap_or_default()
                        .trim()
                ));
            }
        }
        Err(e) => say(&format!(
            "{test}: socket options not read ({e}); relying on ss"
        )),
    }

    let (idle_sent, idle_ponged) = ping_then_stop(&mut idle, 2, Duration::from_millis(20));
    let (busy_sent, busy_ponged) = ping_then_stop(&mut busy, 2, Duration::from_millis(20));
    // Wait for the clients' delayed ACKs of the last pongs: until then the
    // pong is unacknowledged output and the kernel arms the retransmission
    // timer instead of keepalive.
    let looks = || (net.ss(idle_addr), net.ss(busy_addr));
    let before = poll_until(Duration::from_secs(1), || {
        let lines = looks();
        [&lines.0, &lines.1]
            .iter()
            .all(|l| l.as_deref().is_some_and(|l| l.contains("timer:(keepalive")))
            .then_some(lines)
    })
    .unwrap_or_else(looks); // the asserts below say what was not settled
    let settled_after = wall_ms() - busy_ponged;
    say(&format!(
        "{test}: before the cut ({settled_after:.0} ms after the last pong): idle {:?}; busy {:?}",
        before.0, before.1
    ));
    for line in [&before.0, &before.1] {
        let line = line.as_deref().expect("ss shows the socket");
        assert!(
            line.contains("timer:(keepalive"),
            "no keepalive timer: {line}"
        );
        assert_eq!(
            line.split_whitespace().nth(2),
            Some("0"),
            "Send-Q not empty: {line}"
        );
    }

    net.cut();
    let cut = wall_ms();
    // Pending output for busy: 16 messages of 1000 bytes it will never acknowledge.
    let text = "x".repeat(1000);
    for i in 0..16 {
        pusher.send(&format!("<msg to=\"busy\" id=\"p{i}\">{text}</msg>"));
    }
    pusher.send("<heartbeat mode=\"ping\" seq=\"1\"/>");
    assert_eq!(
        pusher.expect_frame(),
        "<heartbeat mode=\"pong\" seq=\"1\"/>",
        "the pushes were refused"
    );
    // From here on it keeps heartbeating (the deadline is one interval).
    let pusher = Bystander::start(pusher, Duration::from_millis(500));
    // The kernel now has busy's output in flight: retransmission timer, not keepalive.
    let look = || net.ss(busy_addr).unwrap_or_default();
    let busy_pending = poll_until(Duration::from_secs(2), || {
        Some(look()).filter(|line| line.contains("timer:(on"))
    })
    .unwrap_or_else(look); // asserted below
    say(&format!(
        "{test}: after the cut and the pushes: busy {busy_pending}"
    ));
    assert!(
        busy_pending.contains("timer:(on"),
        "no retransmission timer on busy: {busy_pending}"
    );
    let send_q: u64 = busy_pending
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    assert!(
        send_q > 0,
        "busy has no unacknowledged output: {busy_pending}"
    );

    let (idle_reason, idle_closed) = server.offline("idle", Duration::from_secs(6));
    let (busy_reason, busy_closed) = server.offline("busy", Duration::from_secs(6));
    say(&format!(
        "{test}: idle closed reason={idle_reason} {:.0} ms after its last ping ({:.0} ms after \
         the cut); busy closed reason={busy_reason} {:.0} ms after its last ping, {:.0} ms \
         after its pong ({:.0} ms after the cut), window [{deadline}, {}] ms",
        idle_closed - idle_sent,
        idle_closed - cut,
        busy_closed - busy_sent,
        busy_closed - busy_ponged,
        busy_closed - cut,
        deadline + tick + 50.0
    ));
    // Keepalive: idle 1 s, then 2 probes 1 s apart unanswered: about 3 s.
    assert_eq!(
        idle_reason, "io-error",
        "the kernel's keepalive did not end idle"
    );
    assert!(
        (2500.0..deadline - 100.0).contains(&(idle_closed - idle_ponged)),
        "idle closed {:.0} ms after its last pong; keepalive 1,1,2 should take about 3 s",
        idle_closed - idle_ponged
    );
    // Pending output: keepalive does not probe a connection with
    // unacknowledged data, so the server also sets TCP_USER_TIMEOUT to
    // keepalive's own bound (idle + interval x count = 3 s): the kernel ends
    // it too, before the heartbeat deadline (4 s) would.
    assert_eq!(
        busy_reason, "io-error",
        "TCP_USER_TIMEOUT did not end the peer with unacknowledged output"
    );
    assert!(
        (2500.0..deadline - 100.0).contains(&(busy_closed - cut)),
        "busy closed {:.0} ms after the cut; the 3 s user timeout should end it first",
        busy_closed - cut
    );
    // The pusher, on the healthy side, was served throughout.
    pusher.finish(&server, "pusher");
    drop((idle, busy));
}
