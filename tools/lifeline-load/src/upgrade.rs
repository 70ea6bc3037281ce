//! Upgrade mode (issue 16): when the warmup ends, the measuring process sends
//! `SIGUSR2` to `--server-pid` and follows the pid serving the port through
//! `--admin`'s `GET /healthz` (`{"status":"ok","pid":N}`), on a thread of its
//! own: a request answered only after the hand-over must not stall the load
//! loop, whose round trips are the measurement. The connections meanwhile
//! behave as in restart mode (they reconnect if closed, and are counted), so
//! the report says how many clients noticed: reconnects, missed heartbeats
//! and the longest ping→pong pause.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::observe::AdminUrl;

/// How long the new pid is looked for.
const FOLLOW_FOR: Duration = Duration::from_secs(30);
const FOLLOW_EVERY: Duration = Duration::from_millis(20);
const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(2);

/// What became of the upgrade, as seen from outside.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpgradeOutcome {
    pub old_pid: u32,
    /// When SIGUSR2 was sent, from the run's start.
    pub signalled_us: u64,
    /// The pid /healthz named afterwards (`None`: no other pid within
    /// [`FOLLOW_FOR`], or no `--admin`).
    pub new_pid: Option<u32>,
    /// From SIGUSR2 to /healthz naming the new pid.
    pub new_pid_after_us: Option<u64>,
    /// The old process was gone when following ended.
    pub old_exited: bool,
}

impl UpgradeOutcome {
    pub fn encode(&self) -> Value {
        json!({
            "old_pid": self.old_pid,
            "signalled_us": self.signalled_us,
            "new_pid": self.new_pid,
            "new_pid_after_us": self.new_pid_after_us,
            "old_exited": self.old_exited,
        })
    }

    pub fn decode(v: &Value) -> Option<UpgradeOutcome> {
        Some(UpgradeOutcome {
            old_pid: u32::try_from(v.get("old_pid")?.as_u64()?).ok()?,
            signalled_us: v.get("signalled_us")?.as_u64()?,
            new_pid: v
                .get("new_pid")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
            new_pid_after_us: v.get("new_pid_after_us").and_then(Value::as_u64),
            old_exited: v.get("old_exited")?.as_bool()?,
        })
    }
}

/// The thread following the pid.
pub struct Follower {
    thread: JoinHandle<UpgradeOutcome>,
}

impl Follower {
    /// Sends SIGUSR2 to `pid` (`at`: now, from the run's start) and starts following.
    pub fn start(pid: u32, admin: Option<AdminUrl>, at: Duration) -> io::Result<Follower> {
        let raw = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        // SAFETY: kill(2) with a pid the user named as the server's.
        if unsafe { libc::kill(raw, libc::SIGUSR2) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let signalled = Instant::now();
        eprintln!("lifeline-load: sent SIGUSR2 to pid {pid}");
        let mut outcome = UpgradeOutcome {
            old_pid: pid,
            signalled_us: at.as_micros() as u64,
            ..UpgradeOutcome::default()
        };
        let thread = std::thread::spawn(move || {
            while signalled.elapsed() < FOLLOW_FOR {
                if outcome.new_pid.is_none() {
                    if let Some(new) = admin.as_ref().and_then(serving_pid).filter(|&p| p != pid) {
                        outcome.new_pid = Some(new);
                        outcome.new_pid_after_us = Some(signalled.elapsed().as_micros() as u64);
                        eprintln!(
                            "lifeline-load: pid {new} serves after {:.1} ms",
                            signalled.elapsed().as_secs_f64() * 1e3
                        );
                    }
                }
                outcome.old_exited = gone(pid);
                if outcome.old_exited && (outcome.new_pid.is_some() || admin.is_none()) {
                    break;
                }
                std::thread::sleep(FOLLOW_EVERY);
            }
            outcome
        });
        Ok(Follower { thread })
    }

    /// Stops waiting and says what was seen (blocks at most until the
    /// thread's current check ends, or [`FOLLOW_FOR`]).
    pub fn finish(self) -> UpgradeOutcome {
        self.thread.join().unwrap_or_default()
    }
}

/// The pid `GET /healthz` names.
fn serving_pid(admin: &AdminUrl) -> Option<u32> {
    let mut stream = TcpStream::connect_timeout(&admin.addr, HEALTHZ_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(HEALTHZ_TIMEOUT)).ok()?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        admin.host
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    let v: Value = serde_json::from_str(body).ok()?;
    v.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Whether `pid` has exited (gone, or a zombie its parent has not reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_survives_the_worker_line() {
        let outcome = UpgradeOutcome {
            old_pid: 10,
            signalled_us: 2_000_000,
            new_pid: Some(11),
            new_pid_after_us: Some(4_500),
            old_exited: true,
        };
        assert_eq!(UpgradeOutcome::decode(&outcome.encode()), Some(outcome));
        let unknown = UpgradeOutcome {
            new_pid: None,
            new_pid_after_us: None,
            ..outcome
        };
        assert_eq!(UpgradeOutcome::decode(&unknown.encode()), Some(unknown));
    }

    #[test]
    fn our_own_pid_runs_and_a_free_one_is_gone() {
        assert!(!gone(std::process::id()));
        assert!(gone(u32::MAX));
    }
}
