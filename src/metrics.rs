//! Counters the loop keeps about itself, and their Prometheus text exposition.

use std::fmt::Write as _;
use std::time::Duration;

use crate::clock::Micros;
use crate::pushes::PushStats;
use crate::server::CloseReason;
use lifeline_wire::ErrorCode;

/// Upper bounds (seconds) of the loop iteration time histogram.
const LOOP_BUCKETS: [f64; 10] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
];

/// Upper bounds (seconds) of the close lateness histogram (close − deadline).
const LATENESS_BUCKETS: [f64; 10] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
];

/// Error codes counted per code.
const ERROR_CODES: [ErrorCode; 9] = [
    ErrorCode::BadFrame,
    ErrorCode::FrameTooLarge,
    ErrorCode::UnknownFrame,
    ErrorCode::BadId,
    ErrorCode::AuthFailed,
    ErrorCode::NotLoggedIn,
    ErrorCode::AlreadyLoggedIn,
    ErrorCode::Offline,
    ErrorCode::Unavailable,
];

/// Minutes the windowed close lateness maximum looks back over.
const LATENESS_WINDOW_MINUTES: usize = 5;
const MINUTE_US: Micros = 60_000_000;

/// Close reasons that can end a logged-in client (an `offline` event):
/// `overload` and `http` never reach a login.
const OFFLINE_REASONS: [CloseReason; CloseReason::COUNT - 2] = [
    CloseReason::Timeout,
    CloseReason::Replaced,
    CloseReason::Shutdown,
    CloseReason::Kicked,
    CloseReason::SlowConsumer,
    CloseReason::Bye,
    CloseReason::PeerClosed,
    CloseReason::ProtocolError,
    CloseReason::IoError,
    CloseReason::Internal,
    // A TLS record that does not decrypt can end a logged-in client too.
    CloseReason::Tls,
];

/// The largest close lateness of recent minutes: one slot per minute of
/// the loop clock, so a bad close stops showing after five minutes and an
/// alert on it clears (a maximum since start never would).
#[derive(Debug, Default, Clone)]
struct LatenessWindow {
    /// (minute number, largest lateness in it), at index minute % 5.
    slots: [(u64, f64); LATENESS_WINDOW_MINUTES],
}

impl LatenessWindow {
    fn record(&mut self, seconds: f64, now: Micros) {
        let minute = now / MINUTE_US;
        let slot = &mut self.slots[minute as usize % LATENESS_WINDOW_MINUTES];
        if slot.0 != minute {
            *slot = (minute, 0.0);
        }
        slot.1 = slot.1.max(seconds);
    }

    /// The largest lateness recorded in the current minute and the four
    /// before it (so over the last four to five minutes).
    fn max(&self, now: Micros) -> f64 {
        let minute = now / MINUTE_US;
        self.slots
            .iter()
            .filter(|(m, _)| minute - m.min(&minute) < LATENESS_WINDOW_MINUTES as u64)
            .map(|(_, max)| *max)
            .fold(0.0, f64::max)
    }
}

/// Plain counters: the loop is single-threaded, so no atomics are needed.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub accepted: u64,
    pub logins: u64,
    pub closes: [u64; CloseReason::COUNT],
    /// `offline` events (a logged-in client's id going offline), by reason.
    pub offline: [u64; CloseReason::COUNT],
    pub heartbeats_received: u64,
    pub probes_sent: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Bytes written to admin API connections (not in `bytes_out`).
    pub admin_bytes_out: u64,
    pub errors_sent: [u64; ERROR_CODES.len()],
    pub messages_routed: u64,
    pub acks: u64,
    /// Accepts that failed (out of descriptors, mostly).
    pub accept_errors: u64,
    /// (status, count), a handful of distinct statuses.
    pub admin_requests: Vec<(u16, u64)>,
    lateness_buckets: [u64; LATENESS_BUCKETS.len()],
    lateness_count: u64,
    lateness_seconds: f64,
    lateness_window: LatenessWindow,
    /// Every iteration of the loop.
    pub loop_iterations: u64,
    loop_buckets: [u64; LOOP_BUCKETS.len()],
    loop_count: u64,
    loop_seconds: f64,
}

/// Values read at scrape time rather than counted.
pub struct Gauges {
    pub connections_open: usize,
    pub clients_online: usize,
    pub admin_connections: usize,
    pub capacity: usize,
    pub event_subscribers: usize,
    /// Admin requests waiting for a push's ack.
    pub ack_waits: usize,
    /// Kept by the outbound path rather than here.
    pub frames_out: u64,
    pub bytes_out: u64,
    pub pushes_delivered: u64,
    /// This iteration's loop time (for windowed values).
    pub now_us: Micros,
    /// The close lateness the contract allows (tick + 50 ms), in seconds.
    pub lateness_bound_seconds: f64,
    /// Client connections by transport, as [`TRANSPORTS`] names them.
    pub transports: [usize; 4],
    /// Bytes queued for client sockets that they have not taken yet.
    pub outbound_buffered: usize,
    /// Pushes held for offline clients, and their bytes.
    pub queue_pushes: usize,
    pub queue_bytes: usize,
    pub receipts_held: usize,
}

/// The `transport` label of each count in [`Gauges::transports`].
pub const TRANSPORTS: [&str; 4] = ["sniffing", "raw", "handshake", "websocket"];

impl Metrics {
    pub fn closed(&mut self, reason: CloseReason) {
        self.closes[reason.index()] += 1;
    }

    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        self.closes[reason.index()]
    }

    /// A logged-in client's id went offline (its `offline` event).
    pub fn went_offline(&mut self, reason: CloseReason) {
        self.offline[reason.index()] += 1;
    }

    pub fn error_sent(&mut self, code: ErrorCode) {
        if let Some(i) = ERROR_CODES.iter().position(|&c| c == code) {
            self.errors_sent[i] += 1;
        }
    }

    pub fn admin_request(&mut self, status: u16) {
        match self.admin_requests.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.admin_requests.push((status, 1)),
        }
    }

    /// Records how late a heartbeat close (at loop time `now`) came after
    /// its deadline.
    pub fn close_lateness(&mut self, late: Duration, now: Micros) {
        let seconds = late.as_secs_f64();
        self.lateness_count += 1;
        self.lateness_seconds += seconds;
        self.lateness_window.record(seconds, now);
        if let Some(i) = LATENESS_BUCKETS.iter().position(|&le| seconds <= le) {
            self.lateness_buckets[i] += 1;
        }
    }

    /// Records how long a sampled loop iteration spent working (not waiting).
    pub fn loop_iteration(&mut self, busy: Duration) {
        let seconds = busy.as_secs_f64();
        self.loop_count += 1;
        self.loop_seconds += seconds;
        if let Some(i) = LOOP_BUCKETS.iter().position(|&le| seconds <= le) {
            self.loop_buckets[i] += 1;
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, g: &Gauges, pushes: &PushStats) -> String {
        let mut out = String::with_capacity(8192);
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        };
        gauge(
            "lifeline_connections_open",
            "Client connections open (logged in or not).",
            g.connections_open as u64,
        );
        gauge(
            "lifeline_clients_online",
            "Client ids online (logged in).",
            g.clients_online as u64,
        );
        gauge(
            "lifeline_connection_capacity",
            "Client connections accepted before refusing with overload.",
            g.capacity as u64,
        );
        gauge(
            "lifeline_admin_connections",
            "Admin API connections open.",
            g.admin_connections as u64,
        );
        gauge(
            "lifeline_ack_waits",
            "Admin push requests waiting for the recipient's ack.",
            g.ack_waits as u64,
        );
        gauge(
            "lifeline_event_subscribers",
            "Presence event stream subscribers.",
            g.event_subscribers as u64,
        );
        gauge(
            "lifeline_outbound_buffered_bytes",
            "Bytes queued for client sockets that they have not taken yet.",
            g.outbound_buffered as u64,
        );
        gauge(
            "lifeline_offline_queue_pushes",
            "Pushes held for offline clients.",
            g.queue_pushes as u64,
        );
        gauge(
            "lifeline_offline_queue_bytes",
            "Bytes of the pushes held for offline clients.",
            g.queue_bytes as u64,
        );
        gauge(
            "lifeline_receipts_held",
            "Push receipts kept for GET /messages/{id}.",
            g.receipts_held as u64,
        );
        let counters: [(&str, &str, u64); 19] = [
            (
                "lifeline_accepted_total",
                "Client connections accepted.",
                self.accepted,
            ),
            ("lifeline_logins_total", "Successful logins.", self.logins),
            (
                "lifeline_heartbeats_received_total",
                "Heartbeat frames (ping or pong) received.",
                self.heartbeats_received,
            ),
            (
                "lifeline_probes_sent_total",
                "Probe pings sent to silent clients.",
                self.probes_sent,
            ),
            (
                "lifeline_frames_in_total",
                "Complete frames received.",
                self.frames_in,
            ),
            ("lifeline_frames_out_total", "Frames sent.", g.frames_out),
            (
                "lifeline_bytes_in_total",
                "Bytes read from client sockets.",
                self.bytes_in,
            ),
            (
                "lifeline_bytes_out_total",
                "Bytes written to client sockets.",
                g.bytes_out,
            ),
            (
                "lifeline_messages_routed_total",
                "Client-to-client messages delivered to the recipient's queue.",
                self.messages_routed,
            ),
            ("lifeline_acks_total", "Ack frames received.", self.acks),
            (
                "lifeline_pushes_accepted_total",
                "Pushes accepted by the admin API.",
                pushes.accepted,
            ),
            (
                "lifeline_pushes_delivered_total",
                "Pushes fully written to the recipient's socket.",
                g.pushes_delivered,
            ),
            (
                "lifeline_pushes_acked_total",
                "Pushes acked by their recipient.",
                pushes.acked,
            ),
            (
                "lifeline_pushes_expired_total",
                "Held pushes whose queue time to live ran out before delivery.",
                pushes.expired,
            ),
            (
                "lifeline_pushes_queue_full_total",
                "Pushes refused with 507 because the offline queue was full.",
                pushes.refused_full,
            ),
            (
                "lifeline_pushes_redelivered_total",
                "At-least-once pushes sent again after their connection ended unacked.",
                pushes.redelivered,
            ),
            (
                "lifeline_loop_iterations_total",
                "Event loop iterations.",
                self.loop_iterations,
            ),
            (
                "lifeline_accept_errors_total",
                "Accepts that failed (out of descriptors, mostly).",
                self.accept_errors,
            ),
            (
                "lifeline_admin_bytes_out_total",
                "Bytes written to admin API connections.",
                self.admin_bytes_out,
            ),
        ];
        for (name, help, value) in counters {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        }
        out.push_str(
            "# HELP lifeline_connections_closed_total Client connections closed, by reason: every one, \
             logged in or not, HTTP page requests and overload refusals included.\n\
             # TYPE lifeline_connections_closed_total counter\n",
        );
        for reason in CloseReason::ALL {
            let _ = writeln!(
                out,
                "lifeline_connections_closed_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.closes_for(reason)
            );
        }
        out.push_str(
            "# HELP lifeline_offline_total Logged-in clients gone offline (the offline presence events), \
             by reason; a connection replaced by a newer login of its id is not one.\n\
             # TYPE lifeline_offline_total counter\n",
        );
        for reason in OFFLINE_REASONS {
            let _ = writeln!(
                out,
                "lifeline_offline_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.offline[reason.index()]
            );
        }
        out.push_str(
            "# HELP lifeline_connections_by_transport Client connections open, by transport \
             (sniffing: no byte decided it yet; handshake: an HTTP request arriving).\n\
             # TYPE lifeline_connections_by_transport gauge\n",
        );
        for (transport, n) in TRANSPORTS.iter().zip(g.transports) {
            let _ = writeln!(
                out,
                "lifeline_connections_by_transport{{transport=\"{transport}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP lifeline_errors_sent_total Error frames sent, by code.\n# TYPE lifeline_errors_sent_total counter\n",
        );
        for (code, n) in ERROR_CODES.iter().zip(self.errors_sent) {
            let _ = writeln!(
                out,
                "lifeline_errors_sent_total{{code=\"{}\"}} {n}",
                code.as_str()
            );
        }
        out.push_str(
            "# HELP lifeline_admin_requests_total Admin API requests, by status.\n# TYPE lifeline_admin_requests_total counter\n",
        );
        for (status, n) in &self.admin_requests {
            let _ = writeln!(
                out,
                "lifeline_admin_requests_total{{status=\"{status}\"}} {n}"
            );
        }
        histogram(
            &mut out,
            "lifeline_loop_iteration_seconds",
            "Time a loop iteration spent working; sampled, at most one iteration per millisecond.",
            &LOOP_BUCKETS,
            &self.loop_buckets,
            self.loop_count,
            self.loop_seconds,
        );
        histogram(
            &mut out,
            "lifeline_close_lateness_seconds",
            "How long after its deadline (last frame + interval x misses) a silent client was closed.",
            &LATENESS_BUCKETS,
            &self.lateness_buckets,
            self.lateness_count,
            self.lateness_seconds,
        );
        let _ = write!(
            out,
            "# HELP lifeline_close_lateness_max_seconds Latest close after a deadline in the last 5 minutes \
             (the current minute of the loop clock and the 4 before it).\n\
             # TYPE lifeline_close_lateness_max_seconds gauge\nlifeline_close_lateness_max_seconds {}\n",
            self.lateness_window.max(g.now_us)
        );
        let _ = write!(
            out,
            "# HELP lifeline_close_lateness_bound_seconds The close lateness the server promises at most: \
             LIFELINE_TICK_MS + 50 ms.\n\
             # TYPE lifeline_close_lateness_bound_seconds gauge\nlifeline_close_lateness_bound_seconds {}\n",
            g.lateness_bound_seconds
        );
        let _ = write!(
            out,
            "# HELP lifeline_build_info The version and commit this binary was built from.\n\
             # TYPE lifeline_build_info gauge\nlifeline_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
            crate::build_info::VERSION,
            crate::build_info::COMMIT
        );
        if let Some(process) = crate::process_metrics::ProcessStats::read() {
            process.render(&mut out);
        }
        out
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    buckets: &[u64],
    count: u64,
    sum: f64,
) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
    let mut cumulative = 0;
    for (le, n) in bounds.iter().zip(buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = write!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lateness_window_forgets_after_five_minutes() {
        let mut w = LatenessWindow::default();
        assert_eq!(w.max(0), 0.0);
        w.record(0.030, 10 * MINUTE_US + 5);
        w.record(0.010, 11 * MINUTE_US);
        assert_eq!(w.max(11 * MINUTE_US), 0.030);
        assert_eq!(w.max(14 * MINUTE_US + MINUTE_US - 1), 0.030);
        // Minute 10 is five minutes old at minute 15: only minute 11 is left.
        assert_eq!(w.max(15 * MINUTE_US), 0.010);
        assert_eq!(w.max(16 * MINUTE_US), 0.0);
        // A slot reused by a later minute starts afresh.
        w.record(0.002, 16 * MINUTE_US);
        assert_eq!(w.max(16 * MINUTE_US), 0.002);
    }
}
