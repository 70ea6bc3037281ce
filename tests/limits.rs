//! Resource limits against the real binary: the server started under a low
//! open-file limit (soft = hard, since it raises its soft limit to the hard
//! one at start), then run out of descriptors.
//!
//! Capacity is the open-file limit minus `FD_RESERVE` (64), so clients alone
//! never exhaust the descriptors; these tests exhaust them by lowering the
//! running server's soft limit with prlimit(2) (hard limit unchanged, so no
//! privilege is needed to put it back). "Exactly full" means the soft limit is
//! set to the lowest free descriptor number: every new descriptor fails with
//! EMFILE, while the spare `/dev/null` descriptor (a lower number) can still
//! be traded for one accepted socket. "Nothing at all" means a soft limit of 3,
//! below every descriptor the server holds, so even the spare cannot be
//! re-opened: the ENFILE-like case where another process takes a freed slot.
//!
//! The saturation tests measure the server's CPU from /proc/PID/stat while it is
//! saturated (a behaviour check that the loop does not spin, not a speed
//! target), count accept-error log lines, and keep a bystander pinging.
//! The tests take a shared lock and run one at a time, so the CPU readings
//! are not blurred by a neighbouring test.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{attr, poll_until, Client, Closed, ServerProc, WAIT};

/// Open-file limit the server is started with: capacity 96 - 64 = 32.
const NOFILE: u64 = 96;
const CAPACITY: usize = 32;
/// "Does not spin": utime + stime while saturated, as a share of one core.
const MAX_CPU_SHARE: f64 = 0.20;
/// Accept errors are logged at most once per second (plus the first one).
const ACCEPT_ERROR: &str = "server::accept] accept failed";
/// Any accept error, the admin listener's included.
const ANY_ACCEPT_ERROR: &str = "accept failed";

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// --------------------------------------------------------------- the server

/// The real binary started with RLIMIT_NOFILE = `nofile`:`nofile` (set in the
/// child before exec), killed by its PID when dropped.
/// A server started with both open-file limits at `nofile`; the rest of the
/// harness is `ServerProc`'s.
struct Limited {
    server: ServerProc,
    admin: SocketAddr,
}

impl std::ops::Deref for Limited {
    type Target = ServerProc;
    fn deref(&self) -> &ServerProc {
        &self.server
    }
}

impl Limited {
    fn start(nofile: u64, env: &[(&str, &str)]) -> Limited {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
        ServerProc::configure(&mut cmd, env);
        let limit = libc::rlimit {
            rlim_cur: nofile as libc::rlim_t,
            rlim_max: nofile as libc::rlim_t,
        };
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let server = ServerProc::spawn(cmd);
        let admin = server.admin.expect("admin address in the log");
        Limited { server, admin }
    }

    fn pid(&self) -> i32 {
        self.server.pid() as i32
    }

    /// Waits until the server has logged `id` offline (its descriptor is closed then).
    fn wait_offline(&self, id: &str) {
        assert!(
            self.wait_log(&format!("offline id={id} "), WAIT).is_some(),
            "{id} was never logged offline; log: {:?}",
            self.log_lines()
        );
    }

    /// Sets the running server's soft open-file limit (the hard one stays).
    fn set_soft_nofile(&self, soft: u64) {
        let new = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: NOFILE as libc::rlim_t,
        };
        // SAFETY: prlimit(2) on the PID of a child this test started.
        let rc =
            unsafe { libc::prlimit(self.pid(), libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// The server's open descriptors.
    fn fds(&self) -> Vec<u32> {
        let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        fds
    }

    /// Lowers the soft limit to the lowest free descriptor number: every new
    /// descriptor fails with EMFILE; the spare (a lower number) still works.
    /// Returns the limit set.
    fn fill_exactly(&self) -> u64 {
        let lowest_free = self.lowest_free_fd();
        self.set_soft_nofile(lowest_free);
        lowest_free
    }

    /// The descriptor number the server's next open would get (if the limit allows).
    fn lowest_free_fd(&self) -> u64 {
        let fds = self.fds();
        u64::from((0u32..).find(|n| !fds.contains(n)).unwrap())
    }

    /// utime + stime of the server so far, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks as f64 / hz
    }

    /// The server's CPU share of one core over the next `window`. The window
    /// is the measurement itself (CPU used per wall time), not a wait.
    fn cpu_share_over(&self, window: Duration) -> f64 {
        let (cpu0, t0) = (self.cpu_seconds(), Instant::now());
        thread::sleep(window);
        (self.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64()
    }
}

/// One admin request on its own connection; `None` if no complete answer
/// (the server closes after answering `Connection: close`) came in `timeout`.
fn admin_get(stream: &mut TcpStream, path: &str, timeout: Duration) -> Option<String> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: lifeline\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    read_response(stream, timeout)
}

fn read_response(stream: &mut TcpStream, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).ok()?;
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A refused client sees `<bye reason="overload">` (or nothing) and a close.
fn assert_refused(outcome: &Closed, what: &str) {
    match outcome {
        Closed::Yes(frames) => match frames.as_slice() {
            [] => {}
            [bye] if bye.starts_with("<bye") => {
                assert_eq!(
                    attr(bye, "reason").as_deref(),
                    Some("overload"),
                    "{what}: {bye}"
                )
            }
            other => panic!("{what}: expected an overload bye or a bare close, got {other:?}"),
        },
        Closed::Timeout => panic!("{what}: neither refused nor admitted (left waiting)"),
    }
}

// ---------------------------------------------------------------- bystander

/// A logged-in client pinging every 50 ms from a thread; every pong must come
/// within 500 ms and nothing else may arrive.
struct Bystander {
    stop: Arc<AtomicBool>,
    pongs: Arc<AtomicU64>,
    thread: JoinHandle<(u64, Duration, Option<String>, Client)>,
}

impl Bystander {
    fn start(server: &Limited) -> Bystander {
        let mut client = server.login("bystander");
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
                match client.frame_within(Duration::from_millis(500)) {
                    Some(f) if f == want => {}
                    other => {
                        return (
                            n,
                            slowest,
                            Some(format!("ping {seq}: got {other:?}")),
                            client,
                        )
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

    fn finish(self) {
        let target = self.pongs.load(Ordering::Relaxed) + 2;
        // Two more pongs, or a thread that ended early: the asserts say which.
        poll_until(WAIT, || {
            (self.pongs.load(Ordering::Relaxed) >= target || self.thread.is_finished())
                .then_some(())
        });
        self.stop.store(true, Ordering::Relaxed);
        let (pongs, slowest, failure, _client) = self.thread.join().expect("bystander");
        eprintln!("bystander: {pongs} pongs, slowest {slowest:?}");
        assert!(failure.is_none(), "bystander: {}", failure.unwrap());
        assert!(pongs >= 2, "bystander got {pongs} pongs");
    }
}

/// Connects a client every `every` from a thread until `stop`; returns how
/// each connection ended (waiting up to 2 s for each).
fn knock(
    addr: SocketAddr,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<(Duration, Closed)>> {
    thread::spawn(move || {
        let mut outcomes = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut c = Client::connect(addr);
            let outcome = c.wait_closed(Duration::from_secs(2));
            outcomes.push((started.elapsed(), outcome));
            thread::sleep(every.saturating_sub(started.elapsed()));
        }
        outcomes
    })
}

// -------------------------------------------------------------------- tests

/// Capacity is the open-file limit minus the reserve, said in the startup
/// log and the metrics; the client after capacity is refused with overload,
/// and a freed slot is usable again at once.
#[test]
fn capacity_follows_the_open_file_limit_and_excess_clients_are_refused() {
    let _serial = serial();
    let server = Limited::start(NOFILE, &[]);
    let line = server.wait_log("listening on", WAIT).unwrap();
    assert!(
        line.contains(&format!(
            "capacity {CAPACITY} connections (open-file limit {NOFILE})"
        )),
        "capacity not reported as expected: {line}"
    );
    let mut admin = TcpStream::connect(server.admin).unwrap();
    let body = admin_get(&mut admin, "/metrics", WAIT).expect("metrics");
    assert_eq!(
        metric(&body, "lifeline_connection_capacity"),
        Some(CAPACITY as u64),
        "metrics: {body}"
    );

    let mut clients: Vec<Client> = (0..CAPACITY)
        .map(|i| server.login(&format!("c{i}")))
        .collect();
    for extra in 0..3 {
        let outcome = server.connect().wait_closed(WAIT);
        assert_refused(
            &outcome,
            &format!("client {} over capacity", CAPACITY + extra),
        );
        assert!(
            matches!(&outcome, Closed::Yes(f) if f.len() == 1),
            "at capacity (descriptors to spare) the refusal must carry the bye: {outcome:?}"
        );
    }
    // The clients at capacity were not disturbed, and a freed slot is reused.
    for c in clients.iter_mut().take(3) {
        c.send("<heartbeat mode=\"ping\" seq=\"1\"/>");
        assert_eq!(c.expect_frame(), "<heartbeat mode=\"pong\" seq=\"1\"/>");
    }
    drop(clients.remove(0));
    server.wait_offline("c0");
    let started = Instant::now();
    let _again = server.login("again");
    eprintln!("freed slot reused: login in {:?}", started.elapsed());
    assert_eq!(server.count_log(ACCEPT_ERROR), 0);
}

/// Exactly out of descriptors (the spare still usable): every excess client
/// is refused (overload bye or a bare close), accept errors are logged at
/// most once a second, the loop does not spin, the clients online keep
/// being served, and a client logs in as soon as descriptors are freed.
#[test]
fn out_of_descriptors_excess_clients_are_refused_and_the_loop_does_not_spin() {
    let _serial = serial();
    let server = Limited::start(NOFILE, &[]);
    let bystander = Bystander::start(&server);
    let mut fillers: Vec<Client> = (0..8).map(|i| server.login(&format!("f{i}"))).collect();
    let limit = server.fill_exactly();
    let saturated_at = Instant::now();
    eprintln!(
        "soft limit lowered to {limit} (descriptors in use: {:?})",
        server.fds()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let knocker = knock(server.addr, Duration::from_millis(10), Arc::clone(&stop));
    // The CPU is measured once the knocks meet a server out of descriptors.
    assert!(
        server.wait_log(ACCEPT_ERROR, WAIT).is_some(),
        "the knocks never met an accept error: {:?}",
        server.log_lines()
    );
    let share = server.cpu_share_over(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let outcomes = knocker.join().unwrap();
    let saturated_for = saturated_at.elapsed();
    let errors_logged = server.count_log(ACCEPT_ERROR);

    let with_bye = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Closed::Yes(f) if !f.is_empty()))
        .count();
    let slowest = outcomes.iter().map(|(d, _)| *d).max().unwrap_or_default();
    eprintln!(
        "saturated {saturated_for:?}: {} clients knocked, {with_bye} got the overload bye, \
         slowest refusal {slowest:?}; server CPU {:.1}% of a core; {errors_logged} accept-error lines",
        outcomes.len(),
        share * 100.0
    );
    for (i, (_, outcome)) in outcomes.iter().enumerate() {
        assert_refused(outcome, &format!("excess client {i}"));
    }
    assert!(
        outcomes.len() >= 20,
        "only {} clients knocked",
        outcomes.len()
    );
    assert!(
        share < MAX_CPU_SHARE,
        "server used {:.1}% of a core while out of descriptors",
        share * 100.0
    );
    assert!(
        errors_logged >= 1,
        "no accept error logged: {:?}",
        server.log_lines()
    );
    let allowed = saturated_for.as_secs() as usize + 1;
    assert!(
        errors_logged <= allowed,
        "{errors_logged} accept-error lines in {saturated_for:?} (at most one a second)"
    );
    let summary = server.wait_log(ACCEPT_ERROR, WAIT).unwrap();
    assert!(summary.contains("Too many open files"), "{summary}");

    // Free two descriptors: the next client gets in at once.
    fillers.truncate(6);
    server.wait_offline("f6");
    server.wait_offline("f7");
    let started = Instant::now();
    let _late = server.login("late");
    eprintln!(
        "after freeing two descriptors: login in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Before `finish`, which drops the bystander's socket (and so logs its offline).
    assert_eq!(server.count_log("offline id=bystander"), 0);
    bystander.finish();
}

/// Not even the spare can be re-opened (soft limit below every descriptor
/// held): accepting pauses (clients wait in the backlog, not refused), the
/// loop sleeps instead of spinning, errors are logged at most once a second,
/// and the waiting clients are admitted within the 100 ms retry once
/// descriptors are available again.
#[test]
fn with_no_descriptor_at_all_accepting_pauses_without_spinning_and_resumes() {
    let _serial = serial();
    let server = Limited::start(NOFILE, &[]);
    let bystander = Bystander::start(&server);
    server.set_soft_nofile(3);
    let saturated_at = Instant::now();
    let mut waiting: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    for (i, c) in waiting.iter_mut().enumerate() {
        c.send(&format!("<login id=\"w{i}\"/>"));
    }
    assert!(server.wait_log(ACCEPT_ERROR, WAIT).is_some());
    let share = server.cpu_share_over(Duration::from_secs(1));
    // More clients arrive while paused; they wait too.
    for c in waiting.iter_mut() {
        assert_eq!(c.frame_within(Duration::from_millis(50)), None);
    }
    let saturated_for = saturated_at.elapsed();
    let errors_logged = server.count_log(ACCEPT_ERROR);
    eprintln!(
        "no descriptor for {saturated_for:?}: server CPU {:.1}% of a core; \
         {errors_logged} accept-error lines",
        share * 100.0
    );
    assert!(
        share < MAX_CPU_SHARE,
        "server used {:.1}% of a core while out of descriptors",
        share * 100.0
    );
    let allowed = saturated_for.as_secs() as usize + 1;
    assert!(
        errors_logged <= allowed,
        "{errors_logged} accept-error lines in {saturated_for:?}: {:?}",
        server.log_lines()
    );

    server.set_soft_nofile(NOFILE);
    let restored = Instant::now();
    for (i, c) in waiting.iter_mut().enumerate() {
        let welcome = c
            .frame_within(Duration::from_secs(1))
            .unwrap_or_else(|| panic!("w{i} not admitted within 1 s of the limit coming back"));
        assert!(
            welcome.starts_with(&format!("<welcome id=\"w{i}\"")),
            "{welcome}"
        );
    }
    eprintln!(
        "waiting clients admitted {:?} after the limit came back",
        restored.elapsed()
    );
    let _fresh = server.login("fresh");
    bystander.finish();
}

/// After an outage in which the spare descriptor itself could not be
/// re-opened, running out again must still refuse excess clients politely
/// (the spare is taken back once descriptors are available), not leave them
/// waiting in the backlog.
#[test]
fn polite_refusal_survives_an_outage_that_took_the_spare_descriptor() {
    let _serial = serial();
    let server = Limited::start(NOFILE, &[]);
    let _fillers: Vec<Client> = (0..8).map(|i| server.login(&format!("f{i}"))).collect();
    let spare_before = server.fds().len();

    // Outage: nothing can be opened, not even the spare.
    server.set_soft_nofile(3);
    let mut waiting = server.connect();
    waiting.send("<login id=\"w\"/>");
    assert!(server.wait_log(ACCEPT_ERROR, WAIT).is_some());
    // The loop logs the shortage, then spends its spare on a refusal that
    // fails too: only once the spare is gone (and cannot be reopened) is it
    // waiting for descriptors. Restoring the limit before that would let the
    // spare's refusal succeed and tell w `overload`.
    common::wait_until("the spare descriptor given up", WAIT, || {
        server.fds().len() < spare_before
    });
    server.set_soft_nofile(NOFILE);
    let welcome = waiting
        .frame_within(Duration::from_secs(1))
        .expect("admitted after the outage");
    assert!(welcome.starts_with("<welcome id=\"w\""), "{welcome}");
    // The spare is taken back once descriptors are available: as many
    // descriptors as before the outage, not counting w's socket.
    let without_w = || server.fds().len() - 1;
    let spare_after = poll_until(WAIT, || Some(without_w()).filter(|&n| n == spare_before))
        .unwrap_or_else(without_w);
    eprintln!("descriptors before the outage {spare_before}, after (without w) {spare_after}");
    assert_eq!(
        spare_after,
        spare_before,
        "the spare descriptor was not taken back within {WAIT:?} after the outage \
         (descriptors: {:?})",
        server.fds()
    );

    // Exactly full again: the excess client must be refused, not left waiting.
    server.fill_exactly();
    let outcome = server.connect().wait_closed(Duration::from_secs(1));
    match &outcome {
        Closed::Timeout => panic!(
            "after the outage, an excess client was left waiting in the backlog instead of \
             being refused: the spare descriptor was never re-opened \
             (descriptors before the outage {spare_before}, after {spare_after})"
        ),
        _ => assert_refused(&outcome, "excess client after the outage"),
    }
}

/// The admin listener out of descriptors: its accept errors are logged at a
/// bounded rate, like the client listener's.
#[test]
fn admin_accept_errors_are_logged_at_a_bounded_rate() {
    let _serial = serial();
    let server = Limited::start(NOFILE, &[]);
    let _fillers: Vec<Client> = (0..8).map(|i| server.login(&format!("f{i}"))).collect();
    server.fill_exactly();
    let started = Instant::now();
    let attempts: Vec<TcpStream> = (0..20)
        .map(|_| {
            let s = TcpStream::connect(server.admin).unwrap();
            thread::sleep(Duration::from_millis(10));
            s
        })
        .collect();
    // A measured window, not a wait for an outcome: the lines are counted
    // over the attempts plus one accept retry period (100 ms) after the last
    // one, while they all still wait in the backlog, so that retries logging
    // without a bound would fall inside the count. Nothing outside the log
    // shows those retries (the admin API itself is out of descriptors).
    thread::sleep(Duration::from_millis(100));
    assert!(
        server.wait_log(ANY_ACCEPT_ERROR, WAIT).is_some(),
        "no admin accept error logged"
    );
    let elapsed = started.elapsed();
    let lines = server.count_log(ANY_ACCEPT_ERROR);
    eprintln!(
        "{} admin connections in {elapsed:?} while out of descriptors: {lines} log lines",
        attempts.len()
    );
    assert!(
        lines <= elapsed.as_secs() as usize + 1,
        "{lines} admin accept-error lines for {} attempts in {elapsed:?} (not rate-limited)",
        attempts.len()
    );
}

/// An admin request that arrived while out of descriptors is answered once
/// descriptors are free again, without waiting for another admin connection.
#[test]
fn admin_api_resumes_when_descriptors_free_up() {
    let _serial = serial();
    let server = Limited::start(NOFILE, &[]);
    let mut fillers: Vec<Client> = (0..8).map(|i| server.login(&format!("f{i}"))).collect();
    server.fill_exactly();
    let mut scrape = TcpStream::connect(server.admin).unwrap();
    write!(
        scrape,
        "GET /metrics HTTP/1.1\r\nHost: lifeline\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    assert!(server.wait_log(ANY_ACCEPT_ERROR, WAIT).is_some());

    fillers.truncate(4);
    for i in 4..8 {
        server.wait_offline(&format!("f{i}"));
    }
    let freed = Instant::now();
    // The client side is served again at once...
    let _late = server.login("late");
    // ... and the scrape that was waiting should be too.
    let answered = read_response(&mut scrape, Duration::from_secs(1));
    if answered.is_none() {
        // Diagnose: does another admin connection unblock it?
        let mut second = TcpStream::connect(server.admin).unwrap();
        let second_answer = admin_get(&mut second, "/healthz", Duration::from_secs(2));
        let first_after = read_response(&mut scrape, Duration::from_secs(2));
        panic!(
            "the admin request made while out of descriptors was not answered within 1 s of \
             descriptors being freed (clients were served meanwhile); after a second admin \
             connection arrived: first answered = {}, second answered = {}",
            first_after.is_some(),
            second_answer.is_some()
        );
    }
    eprintln!(
        "waiting scrape answered {:?} after descriptors were freed",
        freed.elapsed()
    );
    assert!(answered.unwrap().starts_with("HTTP/1.1 200"));
}

/// An open-file limit at or below the reserve leaves no capacity at all: the
/// server then refuses every client. It should not start silently like that
/// (exit with an error, or at least warn).
#[test]
fn a_limit_that_leaves_no_capacity_is_not_started_silently() {
    let _serial = serial();
    let mut server = Limited::start(64, &[]);
    let line = server.wait_log("listening on", WAIT).unwrap();
    eprintln!("{line}");
    let outcome = server.connect().wait_closed(WAIT);
    eprintln!("a client at capacity 0: {outcome:?}");
    let exited = server.server.exited();
    let warned = server
        .log_lines()
        .iter()
        .any(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("open-file limit"));
    assert!(
        warned || exited.is_some_and(|s| !s.success()),
        "started with capacity 0 (open-file limit 64 = the reserve) with no warning: {:?}",
        server.log_lines()
    );
}

/// Admin connections (up to 32 of them) are not counted against capacity
/// and must not use up the descriptors capacity promises to clients: with
/// capacity 32 and 20 clients online, enough idle admin connections to fill
/// the open-file limit must not get client 21 refused.
#[test]
fn admin_connections_do_not_eat_into_client_capacity() {
    let _serial = serial();
    let server = Limited::start(NOFILE, &[]);
    let _clients: Vec<Client> = (0..20).map(|i| server.login(&format!("c{i}"))).collect();
    let mut admins = Vec::new();
    // Until every descriptor number below the limit is taken (the server
    // may also hold inherited ones above it).
    while server.lowest_free_fd() < NOFILE && admins.len() < 200 {
        let before = server.fds().len();
        admins.push(TcpStream::connect(server.admin).unwrap());
        let accepted = poll_until(Duration::from_secs(1), || {
            (server.fds().len() != before).then_some(())
        });
        if accepted.is_none() {
            break; // the admin side could not accept it
        }
    }
    eprintln!(
        "{} idle admin connections; lowest free descriptor {} (limit {NOFILE}); \
         clients online 20 of capacity {CAPACITY}",
        admins.len(),
        server.lowest_free_fd()
    );
    let mut c = server.connect();
    c.send("<login id=\"c20\"/>");
    let answer = c.frame_within(WAIT);
    assert!(
        answer
            .as_deref()
            .is_some_and(|f| f.starts_with("<welcome id=\"c20\"")),
        "client 21 of capacity {CAPACITY} was not admitted after {} admin connections took \
         the descriptors: got {answer:?}",
        admins.len()
    );
}
