//! Cluster counters and their Prometheus text (appended to `/metrics`).

use std::fmt::Write as _;
use std::time::Duration;

/// Upper bounds (seconds) of the Redis round-trip histogram.
const RTT_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0,
];

#[derive(Debug, Default, Clone)]
pub struct ClusterStats {
    rtt_buckets: [u64; RTT_BUCKETS.len()],
    rtt_count: u64,
    rtt_seconds: f64,
    /// Notes (msgs, pushes, kicks, acks...) published to other nodes.
    pub routed_out: u64,
    /// Notes received from other nodes.
    pub routed_in: u64,
    /// Times this node put its clients back in Redis after a reconnect.
    pub reasserts: u64,
    /// Clients of dead nodes this node removed from presence.
    pub node_lost_removed: u64,
    /// Broadcasts from other nodes dropped here: too many still being sent.
    pub broadcasts_dropped: u64,
}

/// Values read at scrape time.
pub struct ClusterGauges {
    pub up: bool,
    pub commands_sent: u64,
    pub reconnects: u64,
}

impl ClusterStats {
    pub fn round_trip(&mut self, rtt: Duration) {
        let s = rtt.as_secs_f64();
        self.rtt_count += 1;
        self.rtt_seconds += s;
        if let Some(i) = RTT_BUCKETS.iter().position(|&le| s <= le) {
            self.rtt_buckets[i] += 1;
        }
    }

    pub fn render(&self, g: &ClusterGauges, out: &mut String) {
        let _ = write!(
            out,
            "# HELP lifeline_cluster_up 1 when this node's Redis connections are up (cluster mode only).\n\
             # TYPE lifeline_cluster_up gauge\nlifeline_cluster_up {}\n",
            u8::from(g.up)
        );
        let counters = [
            (
                "lifeline_redis_commands_total",
                "Commands sent to Redis.",
                g.commands_sent,
            ),
            (
                "lifeline_redis_reconnects_total",
                "Reconnects to Redis after a lost connection.",
                g.reconnects,
            ),
            (
                "lifeline_cluster_routed_out_total",
                "Messages, pushes, acks and kicks sent to other nodes.",
                self.routed_out,
            ),
            (
                "lifeline_cluster_routed_in_total",
                "Messages, pushes, acks and kicks received from other nodes.",
                self.routed_in,
            ),
            (
                "lifeline_cluster_presence_reasserts_total",
                "Times this node put its clients back into Redis after a reconnect.",
                self.reasserts,
            ),
            (
                "lifeline_cluster_node_lost_removed_total",
                "Clients of dead nodes this node removed from presence.",
                self.node_lost_removed,
            ),
            (
                "lifeline_cluster_broadcasts_dropped_total",
                "Broadcasts from other nodes dropped here: 1024 were still being sent.",
                self.broadcasts_dropped,
            ),
        ];
        for (name, help, value) in counters {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        }
        let name = "lifeline_redis_round_trip_seconds";
        let _ = write!(
            out,
            "# HELP {name} Time from sending a Redis command to its reply.\n# TYPE {name} histogram\n"
        );
        let mut cumulative = 0;
        for (le, n) in RTT_BUCKETS.iter().zip(self.rtt_buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = write!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {c}\n{name}_sum {s}\n{name}_count {c}\n",
            c = self.rtt_count,
            s = self.rtt_seconds
        );
    }
}
