//! The sections a mode adds to the report: silent (how late the server
//! closed the silent connections), churn (logins and leaves per second), push
//! (pushes offered, answered, received and acked, and their latencies) and
//! restart (the recovery after the server's first close, with its chart).

use serde_json::Value;

use super::{float, ms, nearest_rank, per_second, Report};
use crate::args::Config;
use crate::restart::{Recovery, BUCKET};
use crate::stats::Results;

/// Rows of the restart chart in the summary, and the width of its bars.
const CHART_ROWS: usize = 30;
const CHART_WIDTH: usize = 50;

impl Report {
    pub(super) fn silent(&mut self, results: &Results) {
        let c = &results.counters;
        self.put_counts(&[
            ("silent_total", c.silent_total),
            ("silent_closed", c.silent_closed),
            ("silent_not_closed", c.silent_not_closed),
            ("silent_bye_first", c.silent_bye_first),
            ("silent_early", c.silent_early),
            ("healthy_closed", c.healthy_closed),
        ]);
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
                ("p50", nearest_rank(sorted, 0.5)),
                ("p99", nearest_rank(sorted, 0.99)),
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

    pub(super) fn churn(&mut self, results: &Results) {
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

    pub(super) fn push(&mut self, cfg: &Config, results: &Results) {
        let c = &results.counters;
        let sent_per_s = per_second(c.pushes_in_window, results.window_us);
        let acks_per_s = per_second(c.acks_in_window, results.window_us);
        self.put("push_rate", float(cfg.push_rate, 1));
        self.put("pushes_per_s", float(sent_per_s, 1));
        self.put_counts(&[
            ("pushes_sent", c.pushes_sent),
            ("pushes_answered", c.pushes_answered),
            ("pushes_received", c.pushes_received),
            ("pushes_not_received", c.pushes_not_received),
            ("pushes_skipped", c.pushes_skipped),
            ("pushes_no_target", c.pushes_no_target),
            ("push_conn_errors", c.push_conn_errors),
            ("msgs_received", c.msgs_received),
            ("acks_sent", c.acks_sent),
        ]);
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
        self.latency("push_latency", "push->recv", &results.push_latency_us);
        self.latency("push_answer", "push answer", &results.push_answer_us);
    }

    /// Upgrade mode: the pid change, and what the clients noticed of it —
    /// each against the goal (0 reconnects, 0 missed heartbeats, the longest
    /// ping→pong pause within one tick + 50 ms).
    pub(super) fn upgrade(&mut self, results: &Results) {
        let c = &results.counters;
        let longest_ms = (!results.rtt_us.is_empty()).then(|| results.rtt_us.max() as f64 / 1e3);
        // `reconnects` itself is in the restart section that follows.
        self.put("missed_heartbeats", c.pings_unanswered.into());
        self.put(
            "longest_pause_ms",
            longest_ms.map_or(Value::Null, |ms| float(ms, 1)),
        );
        let Some(u) = results.upgrade else {
            self.put("upgrade", "not-signalled".into());
            self.summary
                .push("  upgrade     SIGUSR2 was not sent (see the messages above)".into());
            return;
        };
        let after_ms = u.new_pid_after_us.map(|us| us as f64 / 1e3);
        self.put("old_pid", u.old_pid.into());
        self.put("new_pid", u.new_pid.map_or(Value::Null, Value::from));
        self.put(
            "new_pid_after_ms",
            after_ms.map_or(Value::Null, |ms| float(ms, 1)),
        );
        self.put("old_exited", u.old_exited.into());
        self.summary.push(format!(
            "  upgrade     SIGUSR2 to pid {} at {:.2} s; {}; old process {}",
            u.old_pid,
            u.signalled_us as f64 / 1e6,
            match (u.new_pid, after_ms) {
                (Some(pid), Some(ms)) => format!("pid {pid} serving after {ms:.1} ms"),
                _ => "no other pid seen serving (/healthz via --admin)".to_string(),
            },
            if u.old_exited {
                "exited"
            } else {
                "STILL RUNNING"
            },
        ));
        self.summary.push(format!(
            "  noticed     {} reconnects (goal 0), {} missed heartbeats (goal 0), longest ping->pong {} (goal: one tick + 50 ms)",
            c.reconnects,
            c.pings_unanswered,
            longest_ms.map_or("-".to_string(), |ms| format!("{ms:.1} ms")),
        ));
    }

    pub(super) fn restart(&mut self, cfg: &Config, results: &Results) {
        let c = &results.counters;
        self.put_counts(&[
            ("server_closes", c.server_closes),
            ("shutdown_byes", c.shutdown_byes),
            ("retry_advised", c.retry_advised),
            ("reconnects", c.reconnects),
        ]);
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
}
