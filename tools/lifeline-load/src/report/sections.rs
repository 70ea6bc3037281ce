//! The sections every run reports, whatever its mode: what was run, how
//! the connections fared, the heartbeats and their round trips, whether the
//! server's online count came back, and the server's CPU and memory.

use serde_json::Value;

use super::{float, per_second, plain, OnlineCheck, Report};
use crate::args::Config;
use crate::stats::Results;

impl Report {
    pub(super) fn header(&mut self, cfg: &Config, results: &Results, workers_failed: u32) {
        let window_s = results.window_us as f64 / 1e6;
        let warmup_s = cfg.warmup.as_secs_f64();
        let mode = format!("{:?}", cfg.mode).to_lowercase();
        let proto = clap::ValueEnum::to_possible_value(&cfg.proto)
            .map_or_else(|| format!("{:?}", cfg.proto), |v| v.get_name().to_string());
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

    pub(super) fn connections(&mut self, results: &Results) {
        let c = &results.counters;
        self.put_counts(&[
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
            ("tls_full_handshakes", c.tls_full_handshakes),
            ("tls_resumed_handshakes", c.tls_resumed_handshakes),
            ("tls_errors", c.tls_errors),
        ]);
        if c.tls_full_handshakes + c.tls_resumed_handshakes + c.tls_errors > 0 {
            self.summary.push(format!(
                "  tls         {} full handshakes, {} resumed, {} failed",
                c.tls_full_handshakes, c.tls_resumed_handshakes, c.tls_errors
            ));
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

    pub(super) fn heartbeats(&mut self, results: &Results) {
        let c = &results.counters;
        let pings_per_s = per_second(c.pings_in_window, results.window_us);
        let rt_per_s = per_second(c.rt_in_window, results.window_us);
        self.put_counts(&[
            ("probes_answered", c.probes_answered),
            ("pings_sent", c.pings_sent),
            ("round_trips", c.round_trips),
            ("unmatched_pongs", c.unmatched_pongs),
            ("pings_unanswered", c.pings_unanswered),
        ]);
        self.put("pings_per_s", float(pings_per_s, 1));
        self.put("rt_per_s", float(rt_per_s, 1));

        self.summary.push(format!(
            "  heartbeats  {pings_per_s:.1} pings/s, {rt_per_s:.1} round trips/s in the window; \
             {} unanswered, {} probes answered",
            c.pings_unanswered, c.probes_answered
        ));
        self.latency("rtt", "rtt", &results.rtt_us);
    }

    pub(super) fn online(&mut self, online: &OnlineCheck) {
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

    pub(super) fn server(&mut self, results: &Results) {
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
}
