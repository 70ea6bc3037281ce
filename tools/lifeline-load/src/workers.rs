//! The parent side of `--workers K`: re-executes this binary K times with the
//! same flags plus a hidden `--worker-index`, aggregates their per-second
//! progress, and merges the one JSON result line each prints at the end.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::args::Config;
use crate::progress::Progress;
use crate::stats::Results;

/// Time given to the workers to start before the common start instant.
const SPAWN_LEAD: Duration = Duration::from_millis(300);
/// How long after the run's end workers may take to report before being killed.
const REPORT_GRACE: Duration = Duration::from_secs(30);
/// How long to wait for a worker that closed its stdout to exit.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// The parent prints each second this long after the workers report theirs.
const PRINT_LAG: Duration = Duration::from_millis(200);

/// The workers could not be run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot find this executable: {0}")]
    Exe(io::Error),
    #[error("cannot start worker {index}: {source}")]
    Spawn { index: u32, source: io::Error },
    #[error("no worker reported a result")]
    NoResults,
}

/// Merged results, and how many workers did not report.
pub struct Outcome {
    pub results: Results,
    pub failed: u32,
}

/// A line from a worker's stdout, or the end of it.
enum Message {
    Line(u32, String),
    Closed,
}

/// Runs the workers to completion and merges what they report.
pub fn run(cfg: &Config) -> Result<Outcome, WorkerError> {
    let exe = std::env::current_exe().map_err(WorkerError::Exe)?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let start_at = SystemTime::now() + SPAWN_LEAD;
    let start_ms = start_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let started = Instant::now() + SPAWN_LEAD;

    let (tx, rx) = mpsc::channel();
    let mut children: Vec<Child> = Vec::new();
    for index in 0..cfg.workers {
        let spawned = Command::new(&exe)
            .args(&args)
            .arg("--worker-index")
            .arg(index.to_string())
            .arg("--start-at-unix-ms")
            .arg(start_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                stop_all(&mut children);
                return Err(WorkerError::Spawn { index, source });
            }
        };
        if let Some(stdout) = child.stdout.take() {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Message::Line(index, line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Message::Closed);
            });
        }
        children.push(child);
    }
    drop(tx);

    let mut collector = Collector::new(cfg.workers as usize, started);
    let give_up = started + cfg.duration + REPORT_GRACE;
    let mut open_pipes = children.len();
    while open_pipes > 0 {
        let now = Instant::now();
        if now >= give_up {
            eprintln!("lifeline-load: workers did not finish in time; stopping them");
            break;
        }
        match rx.recv_timeout(
            collector
                .next_print
                .min(give_up)
                .saturating_duration_since(now),
        ) {
            Ok(Message::Line(index, line)) => collector.take(index, &line),
            Ok(Message::Closed) => open_pipes -= 1,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        collector.print_if_due(Instant::now());
    }
    stop_all(&mut children);
    collector.finish()
}

/// Waits briefly for each child to exit, then kills the ones still running.
fn stop_all(children: &mut [Child]) {
    let deadline = Instant::now() + EXIT_GRACE;
    for child in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Gathers worker output: the latest progress of each, and their results.
struct Collector {
    next_print: Instant,
    progress: Vec<Progress>,
    results: Vec<Option<Results>>,
}

impl Collector {
    fn new(workers: usize, started: Instant) -> Self {
        Collector {
            next_print: started + Duration::from_secs(1) + PRINT_LAG,
            progress: vec![Progress::default(); workers],
            results: vec![None; workers],
        }
    }

    fn take(&mut self, index: u32, line: &str) {
        let slot = index as usize;
        if let Some(progress) = Progress::decode(line) {
            if let Some(latest) = self.progress.get_mut(slot) {
                *latest = progress;
            }
            return;
        }
        match Results::decode(line) {
            Ok((worker, results)) if worker == index => {
                if let Some(entry) = self.results.get_mut(slot) {
                    *entry = Some(results);
                }
            }
            Ok((worker, _)) => {
                eprintln!("lifeline-load: worker {index} reported as worker {worker}; ignored")
            }
            Err(e) => eprintln!("lifeline-load: worker {index}: unreadable line ({e}): {line}"),
        }
    }

    fn print_if_due(&mut self, now: Instant) {
        if now < self.next_print {
            return;
        }
        self.next_print = (self.next_print + Duration::from_secs(1)).max(now);
        let mut total = Progress::default();
        for progress in &self.progress {
            total.add(progress);
        }
        let _ = writeln!(io::stderr(), "{total}");
    }

    fn finish(self) -> Result<Outcome, WorkerError> {
        let mut merged: Option<Results> = None;
        let mut failed = 0;
        for (index, results) in self.results.iter().enumerate() {
            match (results, merged.as_mut()) {
                (None, _) => {
                    eprintln!("lifeline-load: worker {index} reported no result");
                    failed += 1;
                }
                (Some(r), Some(total)) => total.merge(r),
                (Some(r), None) => merged = Some(r.clone()),
            }
        }
        merged
            .map(|results| Outcome { results, failed })
            .ok_or(WorkerError::NoResults)
    }
}
