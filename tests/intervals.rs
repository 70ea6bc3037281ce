//! Per-client heartbeat intervals (protocol 1.2), through real sockets
//! against the real binary: `<login … interval="MS"/>` is granted within
//! `[LIFELINE_HEARTBEAT_MIN_MS, LIFELINE_HEARTBEAT_MAX_MS]` (clamped), the
//! welcome says what was granted, and each silent client is probed and
//! closed on its own schedule, measured from the client side within the
//! protocol's precision (deadline .. deadline + tick + 50 ms).

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{attr, Closed, ServerProc};

const TICK_MS: u64 = 5;
const MISSES: u64 = 3;
/// The protocol's bound on lateness: one tick plus 50 ms.
const SLACK: Duration = Duration::from_millis(TICK_MS + 50);

fn server() -> ServerProc {
    ServerProc::start(&[
        ("LIFELINE_HEARTBEAT_MS", "300"),
        ("LIFELINE_HEARTBEAT_MIN_MS", "100"),
        ("LIFELINE_HEARTBEAT_MAX_MS", "1000"),
        ("LIFELINE_MISSES", "3"),
        ("LIFELINE_TICK_MS", "5"),
    ])
}

/// Logs in asking for `asked` (or nothing); the welcome's attributes.
fn granted(server: &ServerProc, id: &str, asked: Option<u64>) -> (u64, u64) {
    let mut c = server.connect();
    match asked {
        Some(ms) => c.send(&format!("<login id=\"{id}\" interval=\"{ms}\"/>")),
        None => c.send(&format!("<login id=\"{id}\"/>")),
    }
    let welcome = c.expect_frame();
    assert!(welcome.starts_with("<welcome "), "{welcome}");
    let number = |name| {
        attr(&welcome, name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {welcome}"))
    };
    (number("interval"), number("phase-ms"))
}

#[test]
fn the_welcome_grants_the_asked_interval_clamped_into_the_range() {
    let server = server();
    for (n, (asked, expected)) in [
        (None, 300),
        (Some(100), 100),
        (Some(450), 450),
        (Some(1000), 1000),
        (Some(5), 100),
        (Some(0), 100),
        (Some(99_999_999), 1000),
    ]
    .into_iter()
    .enumerate()
    {
        let (interval, phase) = granted(&server, &format!("c{n}"), asked);
        assert_eq!(interval, expected, "asked {asked:?}");
        assert!(
            phase < interval,
            "phase-ms {phase} within the granted {interval}"
        );
    }
}

#[test]
fn with_the_default_range_every_client_gets_the_servers_interval() {
    let server = ServerProc::start(&[("LIFELINE_HEARTBEAT_MS", "700")]);
    for asked in [None, Some(100), Some(700), Some(60_000)] {
        assert_eq!(granted(&server, "x", asked).0, 700, "asked {asked:?}");
    }
}

/// What one silent client saw: when it sent its login, when the welcome
/// came, when each frame came after it.
struct Silence {
    login_sent: Instant,
    welcomed: Instant,
    frames: Vec<(Duration, String)>,
}

/// Logs in asking for `interval_ms`, then says nothing until closed.
fn go_silent(server: &ServerProc, id: &str, interval_ms: u64) -> thread::JoinHandle<Silence> {
    let mut c = server.connect();
    let id = id.to_string();
    thread::spawn(move || {
        let login_sent = Instant::now();
        c.send(&format!("<login id=\"{id}\" interval=\"{interval_ms}\"/>"));
        let welcome = c.expect_frame();
        let welcomed = Instant::now();
        assert_eq!(
            attr(&welcome, "interval"),
            Some(interval_ms.to_string()),
            "{welcome}"
        );
        let mut frames = Vec::new();
        let end =
            Instant::now() + Duration::from_millis(interval_ms * MISSES) + Duration::from_secs(3);
        while let Some(frame) = c.frame_within(end.saturating_duration_since(Instant::now())) {
            frames.push((login_sent.elapsed(), frame));
        }
        assert_eq!(
            c.wait_closed(Duration::from_millis(500)),
            Closed::Yes(vec![]),
            "{id}: closed after its bye"
        );
        Silence {
            login_sent,
            welcomed,
            frames,
        }
    })
}

/// Each frame of a silent client: probes with seq 1 .. misses-1 at each
/// interval, then the timeout bye at interval × misses, each no earlier than
/// its time after the login was sent and no later than that time after the
/// welcome came plus the protocol's slack (the server's `last_seen` lies
/// between the two).
fn assert_own_schedule(id: &str, interval_ms: u64, silence: &Silence) {
    let interval = Duration::from_millis(interval_ms);
    let welcome_after = silence.welcomed - silence.login_sent;
    let expected: Vec<String> = (1..MISSES)
        .map(|seq| format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>"))
        .chain(["bye".to_string()])
        .collect();
    assert_eq!(
        silence.frames.len(),
        expected.len(),
        "{id}: {:?}",
        silence.frames
    );
    for (k, ((at, frame), want)) in silence.frames.iter().zip(&expected).enumerate() {
        let due = interval * (k as u32 + 1);
        if want == "bye" {
            assert!(
                frame.starts_with("<bye reason=\"timeout\""),
                "{id}: {frame}"
            );
        } else {
            assert_eq!(frame, want, "{id}");
        }
        assert!(
            *at >= due,
            "{id}: {frame} after {at:?}, before its time {due:?}"
        );
        assert!(
            *at <= due + welcome_after + SLACK,
            "{id}: {frame} after {at:?}, later than {due:?} + {welcome_after:?} + {SLACK:?}"
        );
    }
}

#[test]
fn two_clients_with_different_intervals_are_probed_and_closed_on_their_own_deadlines() {
    let server = server();
    let fast = go_silent(&server, "fast", 100);
    let slow = go_silent(&server, "slow", 450);
    let fast = fast.join().expect("fast client");
    let slow = slow.join().expect("slow client");
    assert_own_schedule("fast", 100, &fast);
    assert_own_schedule("slow", 450, &slow);
    assert!(
        server.wait_count("offline id=", 2, Duration::from_secs(2)) == 2,
        "both offline: {:?}",
        server.log_lines()
    );
}

/// A client granted a long interval is held to it, not to the server's: no
/// probe at the server's interval, still online past the server's deadline.
#[test]
fn a_long_interval_outlasts_the_servers_own_deadline() {
    let server = server();
    let (base, agent) = common::admin_agent(&server, Duration::from_secs(5));
    let mut lazy = server.connect();
    lazy.send("<login id=\"lazy\" interval=\"1000\"/>");
    assert!(lazy
        .expect_frame()
        .starts_with("<welcome id=\"lazy\" interval=\"1000\""));
    let welcomed = Instant::now();
    let first = thread::spawn(move || {
        let frame = lazy.frame_within(Duration::from_secs(3));
        (welcomed.elapsed(), frame)
    });
    // Past the server's own deadline (300 ms × 3): still online.
    thread::sleep(Duration::from_millis(950).saturating_sub(welcomed.elapsed()));
    let status = agent
        .get(format!("{base}/clients/lazy"))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    assert_eq!(status, 200, "lazy went offline at the server's deadline");
    let (after, probe) = first.join().expect("lazy reader");
    assert_eq!(
        probe.as_deref(),
        Some("<heartbeat mode=\"ping\" seq=\"1\"/>")
    );
    assert!(
        after >= Duration::from_millis(1000),
        "probed after {after:?}, before its own interval"
    );
}

#[test]
fn a_range_that_leaves_out_the_servers_interval_is_refused_with_one_line() {
    for (env, var) in [
        (
            vec![("LIFELINE_HEARTBEAT_MIN_MS", "6000")],
            "LIFELINE_HEARTBEAT_MIN_MS",
        ),
        (
            vec![("LIFELINE_HEARTBEAT_MAX_MS", "100")],
            "LIFELINE_HEARTBEAT_MAX_MS",
        ),
        (
            vec![
                ("LIFELINE_TICK_MS", "50"),
                ("LIFELINE_HEARTBEAT_MIN_MS", "20"),
            ],
            "LIFELINE_HEARTBEAT_MIN_MS",
        ),
        (
            vec![("LIFELINE_HEARTBEAT_MAX_MS", "soon")],
            "LIFELINE_HEARTBEAT_MAX_MS",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
        cmd.env_clear()
            .env("LIFELINE_LISTEN", "127.0.0.1:0")
            .env("LIFELINE_ADMIN_ADDR", "")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run lifeline");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(var), "{env:?}: {stderr}");
    }
}
