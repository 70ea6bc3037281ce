//! lifeline-load: a single-threaded, edge-triggered (mio) load generator for
//! Lifeline and its peers (redis `PING`, MQTT `PINGREQ`). One process holds up
//! to ~19,000 connections; `--workers K` re-executes itself K times and merges
//! the workers' results.
//!
//! Modes: `steady` (ping every interval), `max` (closed loop, one ping
//! outstanding), `silent` (a fraction stops sending; measures how late the
//! server closes them), `churn` (log in and leave, half `<bye/>`, half RST),
//! `push` (steady, plus pushes through the admin API at a fixed rate to random
//! online clients, which ack them; measures push-to-receive latency),
//! `restart` (steady, and every connection the server closes comes back on its
//! own after the server's `retry-ms` or a backoff; measures the login rate per
//! 100 ms after a server restart and the time until all are back),
//! `fanout` (the connections subscribe; broadcasts, one in flight, through
//! Lifeline's admin API, Redis `PUBLISH`, MQTT `PUBLISH` or the C fan-out
//! floor's trigger port; measures each one's first and last delivery, the
//! broadcasts sustained, the server's CPU per delivered message, and with
//! `--bystanders` other clients' pongs while a broadcast is in flight).
//! Every mode runs over raw TCP or, with `--transport ws`, over a WebSocket
//! upgrade on the same port.
//!
//! Output: a progress line per second and a human summary on stderr; one
//! `RESULT key=value ...` line (or, with `--json`, a JSON object) on stdout.
//! Exit codes: 0 a completed run, 1 nothing could connect (or the run could
//! not be carried out), 2 bad flags.
//!
//! Modules: `args` (flags → `Config`), `proto` (encoders and frame scanners
//! per protocol, no I/O), `session` (one connection: its life, its transport,
//! its frames), `net` (non-blocking connect and write), `engine` (the poll
//! loop), `sched` (timers, rates, window), `stats` (results and their worker
//! line), `progress` (the per-second line), `report` (the final output),
//! `workers` (the parent of `--workers`), `observe` (server CPU/RSS and admin
//! metrics), `push` (the admin API client of push mode), `wsclient` (the
//! WebSocket handshake and framing, no I/O), `restart` (the restart command
//! and the recovery figures), `fanout` (fan-out mode's schedule, publisher
//! and bystanders).

mod args;
mod engine;
mod fanout;
mod net;
mod observe;
mod progress;
mod proto;
mod push;
mod report;
mod restart;
mod sched;
mod session;
mod stats;
mod tls;
mod upgrade;
mod workers;
mod wsclient;

use std::io;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::Parser;

use args::{Args, Config, Role};
use observe::AdminUrl;
use report::{OnlineCheck, Report};
use stats::Results;

/// Files a process needs besides its connections (stdio, epoll, admin, ...).
const SPARE_FILES: u64 = 64;
/// How long to wait for the server's online count to settle after the run.
const ONLINE_SETTLE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return bad_flags(&e.to_string()),
    };
    let cfg = match Config::from_args(&args) {
        Ok(cfg) => cfg,
        Err(e) => return bad_flags(&e.to_string()),
    };
    if let Err(message) = check_file_limit(&cfg) {
        return bad_flags(&message);
    }
    match cfg.role {
        Role::Worker(index) => run_worker(cfg, index),
        Role::Single | Role::Parent => run_main(&cfg),
    }
}

/// Prints the first line of a flag error and exits with 2.
fn bad_flags(message: &str) -> ExitCode {
    let line = message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message);
    let line = line.trim().trim_start_matches("error: ");
    eprintln!("lifeline-load: {line}");
    ExitCode::from(2)
}

/// Raises the soft open-file limit to the hard one and checks that this
/// process's share of the connections fits.
fn check_file_limit(cfg: &Config) -> Result<(), String> {
    let limit = raise_file_limit().map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    // Fanout mode's bystanders are sockets of this process too.
    let bystanders = cfg.fanout.as_ref().map_or(0, |f| f.bystanders);
    let per_process = u64::from(cfg.total_conns.div_ceil(cfg.workers) + bystanders);
    if per_process + SPARE_FILES > limit {
        let per_worker = limit.saturating_sub(SPARE_FILES).max(1);
        return Err(format!(
            "--conns: {per_process} connections per process exceed the open-file limit {limit}; \
             use --workers {} or more",
            u64::from(cfg.total_conns).div_ceil(per_worker)
        ));
    }
    Ok(())
}

fn raise_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; the soft limit does not exceed the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// A worker runs its share and prints one JSON line for the parent.
fn run_worker(cfg: Config, index: u32) -> ExitCode {
    match engine::run(cfg) {
        Ok(results) => {
            println!("{}", results.encode(index));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lifeline-load: worker {index}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the measurement (here or in workers), checks the server's online
/// count, and prints the report.
fn run_main(cfg: &Config) -> ExitCode {
    let online_before = cfg.admin.as_ref().map(observe::clients_online);
    let outcome = match cfg.role {
        Role::Parent => workers::run(cfg).map_err(|e| e.to_string()),
        _ => engine::run(cfg.clone())
            .map(|results| workers::Outcome { results, failed: 0 })
            .map_err(|e| e.to_string()),
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("lifeline-load: {e}");
            return ExitCode::from(1);
        }
    };
    let online = match (&cfg.admin, online_before) {
        (None, _) | (_, None) => OnlineCheck::Skipped,
        (Some(_), Some(Err(e))) => OnlineCheck::Failed(e.to_string()),
        (Some(admin), Some(Ok(before))) => settle_online(admin, before),
    };
    Report::build(cfg, &outcome.results, &online, outcome.failed).print(cfg.json);
    exit_code(&outcome.results)
}

/// Polls the online count until it is back at `before` or `ONLINE_SETTLE` passes.
fn settle_online(admin: &AdminUrl, before: u64) -> OnlineCheck {
    let give_up = Instant::now() + ONLINE_SETTLE;
    loop {
        match observe::clients_online(admin) {
            Ok(after) if after == before || Instant::now() >= give_up => {
                return OnlineCheck::Done { before, after };
            }
            Ok(_) => {}
            Err(e) if Instant::now() >= give_up => return OnlineCheck::Failed(e.to_string()),
            Err(_) => {}
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn exit_code(results: &Results) -> ExitCode {
    if results.counters.connects_ok == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
