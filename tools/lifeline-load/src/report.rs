//! Turning results into output: the per-second progress line, the human
//! summary (stderr), and the final `RESULT key=value ...` line or JSON object
//! (stdout).

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value};

use crate::args::{Config, Mode};
use crate::restart::{Recovery, BUCKET};
use crate::stats::Results;

/// Rows of the restart chart in the summary, and the width of its bars.
const CHART_ROWS: usize = 30;
const CHART_WIDTH: usize = 50;

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

fn per_second(count: u64, window_us: u64) -> f64 {
    if window_us == 0 {
        0.0
    } else {
        count as f64 * 1e6 / window_us as f64
    }
}

fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    // Nearest rank.
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(rank - 1).copied()
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

    fn header(&mut self, cfg: &Config, results: &Results, workers_failed: u32) {
        let window_s = results.window_us as f64 / 1e6;
        let warmup_s = cfg.warmup.as_secs_f64();
        let mode = format!("{:?}", cfg.mode).to_lowercase();
        let proto = format!("{:?}", cfg.proto).to_lowercase();
        let ramp_done = results.ramp_done_us.map(|us| us as f64 / 1e6);

        let transport = cfg.transport.name();
        self.put("mode", mode.clone().into());
        self.put("proto", proto.clone().into());
        self.put("transport", transport.into());
        self.put("target", cfg.target.to_string().into());
        self.put("conns", cfg.total_conns.into());
        self.put("workers", cfg.workers.into());
        if workers_failed > 0 {
            self.put("workers_failed", workers_failed.into());
        }
        self.put("window_s", float(window_s, 3));
        self.put("warmup_s", float(warmup_s, 3));
        self.put(
            "ramp_done_s",
            ramp_done.map_or(Value::Null, |s| float(s, 3)),
        );

        let processes = match cfg.workers {
            1 => "1 process".to_string(),
            n => format!("{n} processes"),
        };
        self.summary.push(format!(
            "lifeline-load: {mode} {proto} over {transport}, {} conns -> {} ({processes})",
            cfg.total_conns, cfg.target
        ));
        let ramp = match ramp_done {
            Some(s) if s > warmup_s => format!("all logged in at {s:.2} s (inside the window!)"),
            Some(s) => format!("all logged in at {s:.2} s"),
            None => "not every connection logged in".to_string(),
        };
        self.summary.push(format!(
            "  window      {window_s:.2} s after {warmup_s:.2} s warmup; {ramp}"
        ));
        if workers_failed > 0 {
            self.summary.push(format!(
                "  WARNING     {workers_failed} workers reported nothing"
            ));
        }
    }

    fn connections(&mut self, results: &Results) {
        let c = &results.counters;
        for (key, value) in [
            ("connect_attempts", c.connect_attempts),
            ("connects_ok", c.connects_ok),
            ("connect_errors", c.connect_errors),
            ("logins", c.logins),
            ("login_errors", c.login_errors),
            ("login_timeouts", c.login_timeouts),
            ("unexpected_closes", c.unexpected_closes),
            ("wrong_timeouts", c.wrong_timeouts),
            ("other_byes", c.other_byes),
            ("server_errors", c.server_errors),
            ("protocol_errors", c.protocol_errors),
            ("upgrade_errors", c.upgrade_errors),
        ] {
            self.put(key, value.into());
        }
        self.summary.push(format!(
            "  connects    {} ok, {} errors; logins {} ok, {} refused, {} timed out",
            c.connects_ok, c.connect_errors, c.logins, c.login_errors, c.login_timeouts
        ));
        self.summary.push(format!(
            "  closes      {} unexpected, {} wrong timeouts, {} other byes, {} protocol errors, \
             {} refused upgrades",
            c.unexpected_closes,
            c.wrong_timeouts,
            c.other_byes,
            c.protocol_errors,
            c.upgrade_errors
        ));
    }

    fn heartbeats(&mut self, results: &Results) {
        let c = &results.counters;
        let pings_per_s = per_second(c.pings_in_window, results.window_us);
        let rt_per_s = per_second(c.rt_in_window, results.window_us);
        for (key, value) in [
            ("probes_answered", c.probes_answered),
            ("pings_sent", c.pings_sent),
            ("round_trips", c.round_trips),
            ("unmatched_pongs", c.unmatched_pongs),
            ("pings_unanswered", c.pings_unanswered),
        ] {
            self.put(key, value.into());
        }
        self.put("pings_per_s", float(pings_per_s, 1));
        self.put("rt_per_s", float(rt_per_s, 1));

        let rtt = &results.rtt_us;
        let max = if rtt.is_empty() {
            Value::Null
        } else {
            rtt.max().into()
        };
        let quantiles = [
            ("p50", hist_value(rtt, 0.5)),
            ("p99", hist_value(rtt, 0.99)),
            ("p999", hist_value(rtt, 0.999)),
            ("max", max),
        ];
        self.summary.push(format!(
            "  heartbeats  {pings_per_s:.1} pings/s, {rt_per_s:.1} round trips/s in the window; \
             {} unanswered, {} probes answered",
            c.pings_unanswered, c.probes_answered
        ));
        let text: Vec<String> = quantiles
            .iter()
            .map(|(q, v)| format!("{q} {}", us_text(v)))
            .collect();
        self.summary.push(format!(
            "  rtt         {}  ({} samples)",
            text.join("  "),
            rtt.len()
        ));
        for (q, value) in quantiles {
            self.put(&format!("rtt_{q}_us"), value);
        }
    }

    fn churn(&mut self, results: &Results) {
        let c = &results.counters;
        let logins_per_s = per_second(c.logins_in_window, results.window_us);
        self.put("logins_per_s", float(logins_per_s, 1));
        self.put("leaves_clean", c.leaves_clean.into());
        self.put("leaves_abrupt", c.leaves_abrupt.into());
        self.put("leave_timeouts", c.leave_timeouts.into());
        self.summary.push(format!(
            "  churn       {logins_per_s:.1} logins/s; leaves {} clean + {} abrupt; \
             {} clean leaves not closed by the server",
            c.leaves_clean, c.leaves_abrupt, c.leave_timeouts
        ));
    }

    fn push(&mut self, cfg: &Config, results: &Results) {
        let c = &results.counters;
        let sent_per_s = per_second(c.pushes_in_window, results.window_us);
        let acks_per_s = per_second(c.acks_in_window, results.window_us);
        self.put("push_rate", float(cfg.push_rate, 1));
        self.put("pushes_per_s", float(sent_per_s, 1));
        for (key, value) in [
            ("pushes_sent", c.pushes_sent),
            ("pushes_answered", c.pushes_answered),
            ("pushes_received", c.pushes_received),
            ("pushes_not_received", c.pushes_not_received),
            ("pushes_skipped", c.pushes_skipped),
            ("pushes_no_target", c.pushes_no_target),
            ("push_conn_errors", c.push_conn_errors),
            ("msgs_received", c.msgs_received),
            ("acks_sent", c.acks_sent),
        ] {
            self.put(key, value.into());
        }
        self.put("acks_per_s", float(acks_per_s, 1));
        for (status, n) in &results.push_statuses {
            self.put(&format!("push_status_{status}"), (*n).into());
        }
        // With a wait, the share of answers that reported the client's ack;
        // without, the share of received messages the clients acked.
        let (acked, of) = match cfg.wait_ack_ms {
            Some(_) => (
                results.push_status(200),
                results.push_status(200) + results.push_status(202),
            ),
            None => (c.acks_sent, c.msgs_received),
        };
        let ack_rate = (of > 0).then(|| acked as f64 / of as f64);
        self.put("ack_rate", ack_rate.map_or(Value::Null, |r| float(r, 4)));

        let statuses: Vec<String> = results
            .push_statuses
            .iter()
            .map(|(status, n)| format!("{status}x{n}"))
            .collect();
        self.summary.push(format!(
            "  push        {:.1}/s offered, {sent_per_s:.1}/s sent in the window; {} answered ({})",
            cfg.push_rate,
            c.pushes_answered,
            if statuses.is_empty() {
                "-".to_string()
            } else {
                statuses.join(" ")
            },
        ));
        self.summary.push(format!(
            "              {} received, {} not received; {} skipped (admin connections busy), \
             {} without a target, {} admin connection errors",
            c.pushes_received,
            c.pushes_not_received,
            c.pushes_skipped,
            c.pushes_no_target,
            c.push_conn_errors,
        ));
        let wait = cfg
            .wait_ack_ms
            .map_or("no wait".to_string(), |ms| format!("wait_ack_ms={ms}"));
        self.summary.push(format!(
            "  acks        {} sent, {acks_per_s:.1}/s in the window; ack rate {} ({wait})",
            c.acks_sent,
            ack_rate.map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0)),
        ));
        for (name, label, histogram) in [
            ("push_latency", "push->recv", &results.push_latency_us),
            ("push_answer", "push answer", &results.push_answer_us),
        ] {
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
                self.put(&format!("{name}_{q}_us"), value);
            }
        }
    }

    fn restart(&mut self, cfg: &Config, results: &Results) {
        let c = &results.counters;
        for (key, value) in [
            ("server_closes", c.server_closes),
            ("shutdown_byes", c.shutdown_byes),
            ("retry_advised", c.retry_advised),
            ("reconnects", c.reconnects),
        ] {
            self.put(key, value.into());
        }
        self.put(
            "backoff_base_ms",
            (cfg.backoff_base.as_millis() as u64).into(),
        );
        self.put(
            "backoff_cap_ms",
            (cfg.backoff_cap.as_millis() as u64).into(),
        );
        self.summary.push(format!(
            "  restart     {} closed by the server ({} shutdown byes, {} with retry-ms); \
             {} reconnects scheduled (backoff {}..{} ms when no retry-ms)",
            c.server_closes,
            c.shutdown_byes,
            c.retry_advised,
            c.reconnects,
            cfg.backoff_base.as_millis(),
            cfg.backoff_cap.as_millis(),
        ));
        let Some(r) = Recovery::from_results(results) else {
            self.put("first_close_s", Value::Null);
            self.summary
                .push("  recovery    the server closed no logged-in connection".into());
            return;
        };
        let ms_value = |ms: Option<f64>| ms.map_or(Value::Null, |ms| float(ms, 1));
        let ms_text = |ms: Option<f64>| ms.map_or("-".to_string(), |ms| format!("{ms:.0} ms"));
        let bucket_ms = BUCKET.as_millis() as u64;
        self.put("first_close_s", float(r.first_close_s, 3));
        self.put("relogins", r.relogins.into());
        self.put("all_back_ms", ms_value(r.all_back_ms));
        self.put("relogin_p50_ms", ms_value(r.p50_ms));
        self.put("relogin_p99_ms", ms_value(r.p99_ms));
        self.put(&format!("peak_logins_per_{bucket_ms}ms"), r.peak.into());
        self.put("peak_at_ms", r.peak_at_ms.into());
        self.put("login_bucket_ms", bucket_ms.into());
        self.put(
            "logins_per_bucket",
            Value::Array(r.buckets.iter().map(|n| Value::from(*n)).collect()),
        );
        self.summary.push(format!(
            "  recovery    first close at {:.2} s; {} logins after it; all {} back after {}; \
             re-login p50 {}  p99 {}",
            r.first_close_s,
            r.relogins,
            cfg.total_conns,
            r.all_back_ms
                .map_or("- (not within the run)".to_string(), |ms| format!(
                    "{ms:.0} ms"
                )),
            ms_text(r.p50_ms),
            ms_text(r.p99_ms),
        ));
        self.summary.push(format!(
            "  login rate  peak {} per {bucket_ms} ms ({}/s) at +{} ms; logins per {bucket_ms} ms after the first close:",
            r.peak,
            r.peak * 1000 / bucket_ms,
            r.peak_at_ms
        ));
        let chart = r.chart(CHART_ROWS, CHART_WIDTH);
        let per_row = r.buckets.len().div_ceil(CHART_ROWS).max(1) as u64;
        for (start_ms, logins, bar) in chart {
            let end_ms = start_ms + per_row * bucket_ms;
            self.summary.push(format!(
                "    +{:>6.1}..{:>6.1} s {logins:>7} {bar}",
                start_ms as f64 / 1000.0,
                end_ms as f64 / 1000.0
            ));
        }
    }

    fn silent(&mut self, results: &Results) {
        let c = &results.counters;
        for (key, value) in [
            ("silent_total", c.silent_total),
            ("silent_closed", c.silent_closed),
            ("silent_not_closed", c.silent_not_closed),
            ("silent_bye_first", c.silent_bye_first),
            ("silent_early", c.silent_early),
            ("healthy_closed", c.healthy_closed),
        ] {
            self.put(key, value.into());
        }
        self.put("deadline_ms", results.deadline_ms.into());
        self.summary.push(format!(
            "  silent      {} went silent, {} closed ({} after bye timeout), {} still open, {} early; {} healthy closed; deadline {}",
            c.silent_total,
            c.silent_closed,
            c.silent_bye_first,
            c.silent_not_closed,
            c.silent_early,
            c.healthy_closed,
            results.deadline_ms.map_or("unknown".into(), |d| format!("{d} ms"))
        ));
        let mut delays: Vec<i64> = results
            .silent_closes
            .iter()
            .map(|s| s.delay_us as i64)
            .collect();
        let mut lateness: Vec<i64> = results
            .silent_closes
            .iter()
            .filter_map(|s| s.lateness_us)
            .collect();
        delays.sort_unstable();
        lateness.sort_unstable();
        let stats = |sorted: &[i64]| {
            [
                ("min", sorted.first().copied()),
                ("p50", percentile(sorted, 0.5)),
                ("p99", percentile(sorted, 0.99)),
                ("max", sorted.last().copied()),
            ]
        };
        for (name, sorted) in [("close_delay", &delays), ("lateness", &lateness)] {
            let stats = stats(sorted);
            for (q, value) in stats {
                self.put(&format!("{name}_{q}_us"), value.into());
            }
            self.summary.push(format!(
                "  {:<11} min {}  p50 {}  p99 {}  max {}",
                name.replace('_', " "),
                ms(stats[0].1),
                ms(stats[1].1),
                ms(stats[2].1),
                ms(stats[3].1)
            ));
        }
    }

    fn online(&mut self, online: &OnlineCheck) {
        let (check, line) = match online {
            OnlineCheck::Skipped => ("skipped", "skipped (no --admin)".to_string()),
            OnlineCheck::Failed(error) => ("error", format!("could not read: {error}")),
            OnlineCheck::Done { before, after } => {
                self.put("online_before", (*before).into());
                self.put("online_after", (*after).into());
                if before == after {
                    ("ok", format!("back to baseline ({before} -> {after})"))
                } else {
                    (
                        "mismatch",
                        format!("NOT back to baseline ({before} -> {after})"),
                    )
                }
            }
        };
        self.put("online_check", check.into());
        self.summary.push(format!("  online      {line}"));
    }

    fn server(&mut self, results: &Results) {
        let Some(server) = results.server else {
            return;
        };
        let round_trips = results.counters.rt_in_window;
        let per_rt = |us: u64| {
            if round_trips == 0 {
                Value::Null
            } else {
                float(us as f64 / round_trips as f64, 3)
            }
        };
        let cpu = per_rt(server.cpu_us);
        let user = per_rt(server.user_us);
        self.summary.push(format!(
            "  server      {:.1} ms CPU in the window: {} us/rt (user {} us/rt); RSS {} kB (anon {})",
            server.cpu_us as f64 / 1000.0,
            plain(&cpu),
            plain(&user),
            server.rss_kb,
            server.rss_anon_kb.map_or("-".into(), |kb| format!("{kb} kB"))
        ));
        self.put("server_cpu_ms", float(server.cpu_us as f64 / 1000.0, 1));
        self.put("server_cpu_us_per_rt", cpu);
        self.put("server_user_us_per_rt", user);
        self.put("server_rss_kb", server.rss_kb.into());
        self.put("server_rss_anon_kb", server.rss_anon_kb.into());
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

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.5), Some(50));
        assert_eq!(percentile(&sorted, 0.99), Some(99));
        assert_eq!(percentile(&sorted, 1.0), Some(100));
        assert_eq!(percentile(&[7], 0.5), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
