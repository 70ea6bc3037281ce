//! Restart mode (issue 8): running the `--restart-cmd`, and turning the login
//! instants after the server's first close into the recovery figures: logins
//! per 100 ms bucket, the peak bucket, how the re-logins spread, and the time
//! until every connection was back.
//!
//! The instants are microseconds from the run's common start, so the workers'
//! samples merge exactly; the buckets are cut only at report time, relative to
//! the earliest first close of all workers.

use std::io;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::report::nearest_rank;
use crate::stats::Results;

/// Width of one login-rate bucket.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Environment variable through which `--server-pid` reaches the command.
pub const SERVER_PID_ENV: &str = "LIFELINE_SERVER_PID";

/// Starts `command` with `sh -c`, not waiting for it. Its stdout goes to our
/// stderr: a worker's stdout is the pipe its parent reads results from.
pub fn spawn_command(command: &str, server_pid: Option<u32>) -> io::Result<Child> {
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()));
    if let Some(pid) = server_pid {
        sh.env(SERVER_PID_ENV, pid.to_string());
    }
    sh.spawn()
}

/// Logins per bucket after the first close: entry `i` counts the logins in
/// `[i·bucket, (i+1)·bucket)` after `first_close_us`. Logins before it (a
/// worker whose own first close came later) are left out. Ends at the last
/// non-empty bucket.
pub fn login_buckets(first_close_us: u64, logins_us: &[u64], bucket_us: u64) -> Vec<u64> {
    let bucket_us = bucket_us.max(1);
    let mut buckets: Vec<u64> = Vec::new();
    for login in logins_us.iter().filter(|at| **at >= first_close_us) {
        let index = ((login - first_close_us) / bucket_us) as usize;
        if index >= buckets.len() {
            buckets.resize(index + 1, 0);
        }
        buckets[index] += 1;
    }
    buckets
}

/// The recovery after a restart, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// The server's first close, seconds from the start.
    pub first_close_s: f64,
    /// Logins at or after the first close.
    pub relogins: u64,
    /// Logins per [`BUCKET`] after the first close.
    pub buckets: Vec<u64>,
    /// The fullest bucket: its count and where it starts (ms after the first close).
    pub peak: u64,
    pub peak_at_ms: u64,
    /// Re-login delays after the first close, nearest rank, in ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// From the first close until every connection was logged in again.
    pub all_back_ms: Option<f64>,
}

impl Recovery {
    /// `None` when the server never closed a logged-in connection.
    pub fn from_results(results: &Results) -> Option<Recovery> {
        let first = results.first_close_us?;
        let bucket_us = BUCKET.as_micros() as u64;
        let buckets = login_buckets(first, &results.relogins_us, bucket_us);
        let (peak_index, peak) = buckets
            .iter()
            .enumerate()
            // The first of equal maxima: max_by_key would keep the last.
            .fold(
                (0, 0),
                |best, (i, &n)| if n > best.1 { (i, n) } else { best },
            );
        let mut delays: Vec<u64> = results
            .relogins_us
            .iter()
            .filter(|at| **at >= first)
            .map(|at| at - first)
            .collect();
        delays.sort_unstable();
        let rank = |q: f64| nearest_rank(&delays, q).map(|us| us as f64 / 1000.0);
        Some(Recovery {
            first_close_s: first as f64 / 1e6,
            relogins: delays.len() as u64,
            peak,
            peak_at_ms: peak_index as u64 * BUCKET.as_millis() as u64,
            p50_ms: rank(0.5),
            p99_ms: rank(0.99),
            all_back_ms: results
                .all_back_us
                .map(|back| back.saturating_sub(first) as f64 / 1000.0),
            buckets,
        })
    }

    /// The buckets as rows of a text chart, at most `max_rows`: consecutive
    /// buckets are summed into one row when there are more. Each row is
    /// `(start ms, logins in the row, bar)`.
    pub fn chart(&self, max_rows: usize, width: usize) -> Vec<(u64, u64, String)> {
        let per_row = self.buckets.len().div_ceil(max_rows.max(1)).max(1);
        let rows: Vec<(u64, u64)> = self
            .buckets
            .chunks(per_row)
            .enumerate()
            .map(|(i, chunk)| {
                let start = (i * per_row) as u64 * BUCKET.as_millis() as u64;
                (start, chunk.iter().sum())
            })
            .collect();
        let top = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
        rows.into_iter()
            .map(|(start, n)| {
                let len = (n as usize * width).div_ceil(top as usize);
                (start, n, "#".repeat(len))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_fall_into_100_ms_buckets_after_the_first_close() {
        let first = 5_000_000;
        let logins = [
            4_999_999, // before the close (another worker's): left out
            5_000_000, // [0, 100) ms
            5_099_999, // [0, 100) ms
            5_100_000, // [100, 200) ms
            5_450_000, // [400, 500) ms
        ];
        assert_eq!(login_buckets(first, &logins, 100_000), vec![2, 1, 0, 0, 1]);
        assert_eq!(login_buckets(first, &[], 100_000), Vec::<u64>::new());
    }

    #[test]
    fn recovery_reports_peak_spread_and_all_back() {
        let first = 1_000_000;
        let mut relogins = vec![first + 50_000, first + 150_000, first + 160_000];
        relogins.extend([first + 170_000, first + 950_000]);
        let results = Results {
            first_close_us: Some(first),
            relogins_us: relogins,
            all_back_us: Some(first + 950_000),
            ..Results::default()
        };
        let r = Recovery::from_results(&results).unwrap();
        assert_eq!(r.buckets, vec![1, 3, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!((r.peak, r.peak_at_ms), (3, 100));
        assert_eq!(r.relogins, 5);
        assert_eq!(r.p50_ms, Some(160.0));
        assert_eq!(r.p99_ms, Some(950.0));
        assert_eq!(r.all_back_ms, Some(950.0));
        assert_eq!(r.first_close_s, 1.0);
        assert!(Recovery::from_results(&Results::default()).is_none());
    }

    #[test]
    fn chart_sums_buckets_into_rows() {
        let r = Recovery {
            first_close_s: 0.0,
            relogins: 10,
            buckets: vec![1, 2, 3, 4, 0],
            peak: 4,
            peak_at_ms: 300,
            p50_ms: None,
            p99_ms: None,
            all_back_ms: None,
        };
        let rows = r.chart(3, 10);
        assert_eq!(
            rows,
            vec![
                (0, 3, "#####".to_string()),
                (200, 7, "##########".to_string()),
                (400, 0, String::new()),
            ]
        );
        assert_eq!(r.chart(10, 4).len(), 5, "one row per bucket when they fit");
    }
}
