//! The final report: the human summary (stderr) and the `RESULT key=value ...`
//! line or JSON object (stdout), built together section by section so that
//! both always say the same thing.
//!
//! This file holds the report itself (the ordered pairs, the summary lines,
//! how they are printed) and the value formatting both forms share. The
//! sections every run has are in `sections`; the ones a mode adds are in
//! `modes`.

mod fanout;
mod modes;
mod sections;

use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde_json::{Map, Value};

use crate::args::{Config, Mode};
use crate::stats::Results;

/// Whether the server's online count came back to where it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlineCheck {
    /// No `--admin` given.
    Skipped,
    /// The admin endpoint could not be read.
    Failed(String),
    Done {
        before: u64,
        after: u64,
    },
}

/// The final report: ordered key/value pairs plus a human summary.
pub struct Report {
    pairs: Vec<(String, Value)>,
    summary: Vec<String>,
}

impl Report {
    pub fn build(
        cfg: &Config,
        results: &Results,
        online: &OnlineCheck,
        workers_failed: u32,
    ) -> Report {
        let mut report = Report {
            pairs: Vec::new(),
            summary: Vec::new(),
        };
        report.header(cfg, results, workers_failed);
        report.connections(results);
        report.heartbeats(results);
        match cfg.mode {
            Mode::Silent => report.silent(results),
            Mode::Churn => report.churn(results),
            Mode::Push => report.push(cfg, results),
            Mode::Restart => report.restart(cfg, results),
            Mode::Fanout => report.fanout(cfg, results),
            Mode::Upgrade => {
                report.upgrade(results);
                report.restart(cfg, results);
            }
            Mode::Steady | Mode::Max => {}
        }
        report.online(online);
        report.server(results);
        if let Some(error) = &results.last_error {
            report
                .summary
                .push(format!("  last connect error: {error}"));
        }
        report
    }

    fn put(&mut self, key: &str, value: Value) {
        self.pairs.push((key.to_string(), value));
    }

    /// Counters, each under its own name, in the order given.
    fn put_counts(&mut self, counts: &[(&str, u64)]) {
        for &(key, value) in counts {
            self.put(key, value.into());
        }
    }

    /// A latency histogram: the pairs `{key}_p50_us`, `_p99_us`, `_p999_us`
    /// and `_max_us` (null while it is empty), and one summary line headed
    /// `label`.
    fn latency(&mut self, key: &str, label: &str, histogram: &Histogram<u64>) {
        let max = if histogram.is_empty() {
            Value::Null
        } else {
            histogram.max().into()
        };
        let quantiles = [
            ("p50", hist_value(histogram, 0.5)),
            ("p99", hist_value(histogram, 0.99)),
            ("p999", hist_value(histogram, 0.999)),
            ("max", max),
        ];
        let text: Vec<String> = quantiles
            .iter()
            .map(|(q, v)| format!("{q} {}", us_text(v)))
            .collect();
        self.summary.push(format!(
            "  {label:<11} {}  ({} samples)",
            text.join("  "),
            histogram.len()
        ));
        for (q, value) in quantiles {
            self.put(&format!("{key}_{q}_us"), value);
        }
    }

    /// Prints the summary on stderr and the result line (or JSON) on stdout.
    pub fn print(&self, as_json: bool) {
        let mut err = io::stderr().lock();
        for line in &self.summary {
            let _ = writeln!(err, "{line}");
        }
        let line = if as_json {
            let object: Map<String, Value> = self.pairs.iter().cloned().collect();
            Value::Object(object).to_string()
        } else {
            let fields: Vec<String> = self
                .pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", plain(v).replace(' ', "_")))
                .collect();
            format!("RESULT {}", fields.join(" "))
        };
        let _ = writeln!(io::stdout(), "{line}");
    }
}

/// The `q` quantile of an ascending slice, by nearest rank (`None` if empty).
pub fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(rank - 1).copied()
}

fn per_second(count: u64, window_us: u64) -> f64 {
    if window_us == 0 {
        0.0
    } else {
        count as f64 * 1e6 / window_us as f64
    }
}

fn hist_value(h: &Histogram<u64>, q: f64) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        h.value_at_quantile(q).into()
    }
}

/// `x` rounded to `decimals` places (null when not finite).
fn float(x: f64, decimals: i32) -> Value {
    let scale = 10f64.powi(decimals);
    Value::from((x * scale).round() / scale)
}

/// A value as it appears in a `key=value` line (`na` for null).
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "na".to_string(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms(us: Option<i64>) -> String {
    us.map_or("-".to_string(), |us| {
        format!("{:.1} ms", us as f64 / 1000.0)
    })
}

fn us_text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        v => format!("{} us", plain(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<i64> = (1..=100).collect();
        assert_eq!(nearest_rank(&sorted, 0.5), Some(50));
        assert_eq!(nearest_rank(&sorted, 0.99), Some(99));
        assert_eq!(nearest_rank(&sorted, 1.0), Some(100));
        assert_eq!(nearest_rank(&[7], 0.5), Some(7));
        assert_eq!(nearest_rank::<i64>(&[], 0.5), None);
    }
}
