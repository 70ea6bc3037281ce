//! Fan-out mode's section: broadcasts asked and sustained, each one's first
//! and last delivery, deliveries missing or out of order, the server's CPU
//! per delivered message, and the bystanders' pongs during broadcasts.

use serde_json::Value;

use super::{float, per_second, plain, Report};
use crate::args::Config;
use crate::stats::Results;

impl Report {
    pub(super) fn fanout(&mut self, cfg: &Config, results: &Results) {
        let f = &results.fanout;
        let Some(fanout) = &cfg.fanout else {
            return;
        };
        let window_s = f.window_us as f64 / 1e6;
        let sustained = per_second(f.completed, f.window_us);
        self.put("subscribers", fanout.subscribers.into());
        self.put("subscribed_at_start", f.subscribers_at_start.into());
        self.put("bystanders", fanout.bystanders.into());
        self.put("broadcast_rate_asked", float(fanout.rate, 3));
        self.put("fanout_window_s", float(window_s, 3));
        self.put_counts(&[
            ("broadcasts", f.triggered),
            ("broadcasts_completed", f.completed),
            ("broadcasts_timed_out", f.timed_out),
            ("deliveries", f.deliveries),
            ("deliveries_missing", f.missing),
            ("deliveries_late", f.late),
            ("deliveries_reordered", f.reordered),
            ("trigger_errors", f.trigger_errors),
        ]);
        self.put("broadcasts_per_s", float(sustained, 3));
        self.put("server_recipients", f.server_recipients.into());
        self.put("server_nodes", f.server_nodes.into());
        self.summary.push(format!(
            "  fanout      {} subscribers ({} subscribed at the first broadcast), {} bystanders; \
             asked {:.2}/s, sustained {sustained:.2}/s over {window_s:.2} s",
            fanout.subscribers, f.subscribers_at_start, fanout.bystanders, fanout.rate
        ));
        self.summary.push(format!(
            "  broadcasts  {} triggered, {} reached everyone, {} timed out, {} trigger errors; \
             server said {} recipients{}",
            f.triggered,
            f.completed,
            f.timed_out,
            f.trigger_errors,
            f.server_recipients
                .map_or("-".to_string(), |n| n.to_string()),
            f.server_nodes
                .map_or(String::new(), |n| format!(" on the node asked, {n} nodes"))
        ));
        self.summary.push(format!(
            "  deliveries  {}; {} missing from broadcasts given up, {} late, {} duplicated or out of order",
            f.deliveries, f.missing, f.late, f.reordered
        ));
        self.latency("first", "first recv", &f.first_us);
        self.latency("last", "last recv", &f.last_us);
        if fanout.bystanders > 0 {
            self.latency("bystander_rtt", "bystander*", &f.bystander_rtt_us);
            self.latency("bystander_all_rtt", "bystander", &f.bystander_all_rtt_us);
            self.put("bystander_lost", f.bystander_lost.into());
            self.summary.push(format!(
                "              (* pongs of pings sent while a broadcast was in flight; {} lost)",
                f.bystander_lost
            ));
        }
        let per_delivery = |us: u64| {
            if f.deliveries == 0 {
                Value::Null
            } else {
                float(us as f64 / f.deliveries as f64, 3)
            }
        };
        if let Some(server) = results.server {
            let cpu = per_delivery(server.cpu_us);
            let user = per_delivery(server.user_us);
            self.summary.push(format!(
                "  server/msg  {} us CPU per delivered message (user {} us)",
                plain(&cpu),
                plain(&user)
            ));
            self.put("server_cpu_us_per_delivery", cpu);
            self.put("server_user_us_per_delivery", user);
        }
    }
}
