//! The per-second progress line: counted by the engine, printed on stderr by
//! a single process, or sent by each worker to its parent (which sums them)
//! as one `PROGRESS ...` line on stdout.

use std::fmt;
use std::time::Duration;

/// One second of progress, from one process or summed over workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub elapsed: Duration,
    pub connected: u64,
    pub logged_in: u64,
    pub rt_per_s: u64,
    pub errors: u64,
}

impl Progress {
    /// The worker → parent form: `PROGRESS elapsed_ms connected logged_in rt errors`.
    pub fn encode(&self) -> String {
        format!(
            "PROGRESS {} {} {} {} {}",
            self.elapsed.as_millis(),
            self.connected,
            self.logged_in,
            self.rt_per_s,
            self.errors
        )
    }

    pub fn decode(line: &str) -> Option<Progress> {
        let mut fields = line
            .strip_prefix("PROGRESS ")?
            .split(' ')
            .map(|f| f.parse::<u64>().ok());
        let mut next = || fields.next().flatten();
        Some(Progress {
            elapsed: Duration::from_millis(next()?),
            connected: next()?,
            logged_in: next()?,
            rt_per_s: next()?,
            errors: next()?,
        })
    }

    /// Sums counts; the elapsed time is the latest of the two.
    pub fn add(&mut self, other: &Progress) {
        self.elapsed = self.elapsed.max(other.elapsed);
        self.connected += other.connected;
        self.logged_in += other.logged_in;
        self.rt_per_s += other.rt_per_s;
        self.errors += other.errors;
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:6.1}s] connected={} logged_in={} rt/s={} errors={}",
            self.elapsed.as_secs_f64(),
            self.connected,
            self.logged_in,
            self.rt_per_s,
            self.errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_the_worker_line() {
        let p = Progress {
            elapsed: Duration::from_millis(3000),
            connected: 10,
            logged_in: 9,
            rt_per_s: 8,
            errors: 1,
        };
        assert_eq!(Progress::decode(&p.encode()), Some(p));
        assert_eq!(Progress::decode("PROGRESS 1 2"), None);
    }
}
