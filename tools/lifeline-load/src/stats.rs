//! What one run measured: counters, the round-trip and push latency
//! histograms, push answers by HTTP status, silent-close samples, restart
//! recovery instants and the server's resource use. Results from workers are merged by the parent, so
//! everything here knows how to serialize to one JSON line and back.

use std::collections::BTreeMap;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::fanout::FanoutResults;
use crate::upgrade::UpgradeOutcome;

/// Highest round trip the histogram tracks exactly (larger ones saturate): 10 min.
const RTT_MAX_US: u64 = 600_000_000;
/// Significant digits of the round-trip histogram.
const RTT_SIGFIG: u8 = 3;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// Event counts; all of them add up across workers.
        #[derive(Debug, Default, Clone)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            pub fn merge(&mut self, other: &Counters) {
                $( self.$name += other.$name; )*
            }

            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }

            fn read(map: &Map<String, Value>) -> Counters {
                Counters {
                    $( $name: uint(map, concat!("c.", stringify!($name))).unwrap_or(0), )*
                }
            }
        }
    };
}

counters! {
    /// Sockets we tried to connect.
    connect_attempts,
    /// Connects that completed.
    connects_ok,
    /// Connects that failed (refused, reset, unreachable, out of ports, ...).
    connect_errors,
    /// Logins accepted (welcome / CONNACK; every connect for redis).
    logins,
    /// Logins accepted inside the measurement window.
    logins_in_window,
    /// Logins refused (`<error/>` before welcome, CONNACK with a failure code).
    login_errors,
    /// Connections that got no welcome within the login timeout.
    login_timeouts,
    /// Closes by the server that we did not ask for (healthy connections).
    unexpected_closes,
    /// `<bye reason="timeout"/>` sent to a connection that was pinging.
    wrong_timeouts,
    /// `<bye/>` with another reason (replaced, shutdown, overload, ...).
    other_byes,
    /// `<error/>` frames after login.
    server_errors,
    /// Bytes the client could not frame; the connection was dropped.
    protocol_errors,
    /// WebSocket upgrades the server did not accept (status, Accept key, ...).
    upgrade_errors,
    /// WebSocket Pings from the server answered with a Pong.
    ws_pings_answered,
    /// TLS handshakes completed in full.
    tls_full_handshakes,
    /// TLS handshakes that resumed a session (a ticket from an earlier connection).
    tls_resumed_handshakes,
    /// Connections that TLS failed (handshake refused, bad record).
    tls_errors,
    /// `<bye reason="shutdown"/>` received.
    shutdown_byes,
    /// `<bye/>` carrying `retry-ms` received.
    retry_advised,
    /// Restart: logged-in connections the server closed.
    server_closes,
    /// Restart: reconnects scheduled (after a close or a failed attempt).
    reconnects,
    /// Server probes answered with a pong.
    probes_answered,
    /// Server probes a silent connection deliberately left unanswered.
    probes_ignored,
    /// `<msg/>` frames received.
    msgs_received,
    /// Frames we did not need to understand.
    other_frames,
    /// Pings sent.
    pings_sent,
    /// Pings sent inside the measurement window.
    pings_in_window,
    /// Pongs matched to a ping.
    round_trips,
    /// Pongs matched inside the measurement window.
    rt_in_window,
    /// Pongs that matched no outstanding ping.
    unmatched_pongs,
    /// Pings still unanswered when their connection closed or the run ended.
    pings_unanswered,
    /// Connections that went silent.
    silent_total,
    /// Silent connections the server closed.
    silent_closed,
    /// ... of which received `<bye reason="timeout"/>` before the close.
    silent_bye_first,
    /// Silent connections closed before their deadline.
    silent_early,
    /// Silent connections still open when the run ended.
    silent_not_closed,
    /// Healthy (still pinging) connections closed by the server in silent mode.
    healthy_closed,
    /// Churn: leaves with a clean goodbye, closed by the server.
    leaves_clean,
    /// Churn: leaves by abrupt close (RST).
    leaves_abrupt,
    /// Churn: clean goodbyes the server did not close within the leave timeout.
    leave_timeouts,
    /// Push: POST requests written to the admin API.
    pushes_sent,
    /// Push: ... of which inside the measurement window.
    pushes_in_window,
    /// Push: requests answered (any status).
    pushes_answered,
    /// Push: a push was due but every admin connection had one in flight.
    pushes_skipped,
    /// Push: a push was due but no client was online to receive it.
    pushes_no_target,
    /// Push: admin connections that failed or were closed under us.
    push_conn_errors,
    /// Push: pushed messages that arrived at their client.
    pushes_received,
    /// Push: pushes not refused that had not arrived a second before the run ended.
    pushes_not_received,
    /// `<ack/>` frames sent for received messages.
    acks_sent,
    /// ... of which inside the measurement window.
    acks_in_window,
}

impl Counters {
    /// Everything that counts as an error in the progress line.
    pub fn errors(&self) -> u64 {
        self.connect_errors
            + self.login_errors
            + self.login_timeouts
            + self.unexpected_closes
            + self.wrong_timeouts
            + self.protocol_errors
            + self.upgrade_errors
            + self.leave_timeouts
    }
}

/// One silent connection closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SilentClose {
    /// From the last frame we sent to the close (EOF or RST).
    pub delay_us: u64,
    /// `delay - interval × misses`, when the deadline is known.
    pub lateness_us: Option<i64>,
}

/// The server process's resource use over the measured window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerUsage {
    pub cpu_us: u64,
    pub user_us: u64,
    pub rss_kb: u64,
    pub rss_anon_kb: Option<u64>,
}

/// Everything one process measured.
#[derive(Debug, Clone)]
pub struct Results {
    pub counters: Counters,
    /// Pong round trips of pings sent inside the window, in microseconds.
    pub rtt_us: Histogram<u64>,
    /// Push: from the POST written to the message arriving at its client.
    pub push_latency_us: Histogram<u64>,
    /// Push: from the POST written to its HTTP answer (with `--wait-ack-ms`,
    /// this includes the client's ack).
    pub push_answer_us: Histogram<u64>,
    /// Push: answers by HTTP status.
    pub push_statuses: BTreeMap<u16, u64>,
    pub silent_closes: Vec<SilentClose>,
    /// Length of the measured window.
    pub window_us: u64,
    /// Length of the whole run.
    pub elapsed_us: u64,
    /// When every connection of the share had logged in once, from the start.
    pub ramp_done_us: Option<u64>,
    /// `interval × misses` announced by the server (or `--deadline-ms`).
    pub deadline_ms: Option<u64>,
    pub server: Option<ServerUsage>,
    /// The most recent connect error, to tell the user why.
    pub last_error: Option<String>,
    /// Restart: the server's first close of a logged-in connection, from the start.
    pub first_close_us: Option<u64>,
    /// Restart: every login at or after `first_close_us`, from the start.
    pub relogins_us: Vec<u64>,
    /// Restart: when all connections were logged in again after the first
    /// close, from the start (`None`: not within the run).
    pub all_back_us: Option<u64>,
    /// Fanout mode (one process only, so never merged or encoded).
    pub fanout: FanoutResults,
    /// Upgrade: the SIGUSR2 and what followed (the measuring process only).
    pub upgrade: Option<UpgradeOutcome>,
}

/// A worker line that could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("field {0} is missing or malformed")]
    Field(&'static str),
}

fn empty_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, RTT_MAX_US, RTT_SIGFIG) {
        Ok(histogram) => histogram,
        // Only reachable if the constants above were edited into nonsense.
        Err(e) => panic!("bad round-trip histogram bounds: {e}"),
    }
}

impl Default for Results {
    fn default() -> Self {
        Results {
            counters: Counters::default(),
            rtt_us: empty_histogram(),
            push_latency_us: empty_histogram(),
            push_answer_us: empty_histogram(),
            push_statuses: BTreeMap::new(),
            silent_closes: Vec::new(),
            window_us: 0,
            elapsed_us: 0,
            ramp_done_us: None,
            deadline_ms: None,
            server: None,
            last_error: None,
            first_close_us: None,
            relogins_us: Vec::new(),
            all_back_us: None,
            fanout: FanoutResults::default(),
            upgrade: None,
        }
    }
}

impl Results {
    pub fn record_rtt(&mut self, micros: u64) {
        self.rtt_us.saturating_record(micros.max(1));
    }

    pub fn record_push_latency(&mut self, micros: u64) {
        self.push_latency_us.saturating_record(micros.max(1));
    }

    pub fn record_push_answer(&mut self, status: u16, micros: Option<u64>) {
        *self.push_statuses.entry(status).or_insert(0) += 1;
        if let Some(micros) = micros {
            self.push_answer_us.saturating_record(micros.max(1));
        }
    }

    /// Answers with `status`.
    pub fn push_status(&self, status: u16) -> u64 {
        self.push_statuses.get(&status).copied().unwrap_or(0)
    }

    /// Folds a worker's results into these.
    pub fn merge(&mut self, other: &Results) {
        self.counters.merge(&other.counters);
        // Same bounds on both sides, so adding cannot fail; if it somehow did,
        // losing one worker's latency samples is better than aborting.
        let _ = self.rtt_us.add(&other.rtt_us);
        let _ = self.push_latency_us.add(&other.push_latency_us);
        let _ = self.push_answer_us.add(&other.push_answer_us);
        for (status, n) in &other.push_statuses {
            *self.push_statuses.entry(*status).or_insert(0) += n;
        }
        self.silent_closes.extend_from_slice(&other.silent_closes);
        self.window_us = self.window_us.max(other.window_us);
        self.elapsed_us = self.elapsed_us.max(other.elapsed_us);
        self.ramp_done_us = match (self.ramp_done_us, other.ramp_done_us) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.deadline_ms = self.deadline_ms.or(other.deadline_ms);
        self.server = self.server.or(other.server);
        if other.last_error.is_some() {
            self.last_error.clone_from(&other.last_error);
        }
        self.first_close_us = match (self.first_close_us, other.first_close_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.relogins_us.extend_from_slice(&other.relogins_us);
        // All are back only once every process has all of its share back.
        self.all_back_us = match (self.all_back_us, other.all_back_us) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        self.upgrade = self.upgrade.or(other.upgrade);
    }

    /// One JSON line for the parent (see `decode`).
    pub fn encode(&self, worker: u32) -> String {
        let mut map = Map::new();
        map.insert("worker".into(), worker.into());
        for (name, value) in self.counters.pairs() {
            map.insert(format!("c.{name}"), value.into());
        }
        for (key, histogram) in [
            ("rtt_v2", &self.rtt_us),
            ("push_latency_v2", &self.push_latency_us),
            ("push_answer_v2", &self.push_answer_us),
        ] {
            map.insert(key.into(), encode_histogram(histogram));
        }
        let statuses: Map<String, Value> = self
            .push_statuses
            .iter()
            .map(|(status, n)| (status.to_string(), (*n).into()))
            .collect();
        map.insert("push_statuses".into(), statuses.into());
        let silent: Vec<String> = self
            .silent_closes
            .iter()
            .map(|c| match c.lateness_us {
                Some(late) => format!("{}:{late}", c.delay_us),
                None => c.delay_us.to_string(),
            })
            .collect();
        map.insert("silent".into(), silent.join(",").into());
        map.insert("window_us".into(), self.window_us.into());
        map.insert("elapsed_us".into(), self.elapsed_us.into());
        map.insert("ramp_done_us".into(), self.ramp_done_us.into());
        map.insert("deadline_ms".into(), self.deadline_ms.into());
        if let Some(server) = self.server {
            map.insert(
                "server".into(),
                json!({
                    "cpu_us": server.cpu_us,
                    "user_us": server.user_us,
                    "rss_kb": server.rss_kb,
                    "rss_anon_kb": server.rss_anon_kb,
                }),
            );
        }
        if let Some(error) = &self.last_error {
            map.insert("last_error".into(), error.as_str().into());
        }
        map.insert("first_close_us".into(), self.first_close_us.into());
        let relogins: Vec<String> = self.relogins_us.iter().map(u64::to_string).collect();
        map.insert("relogins".into(), relogins.join(",").into());
        map.insert("all_back_us".into(), self.all_back_us.into());
        if let Some(u) = &self.upgrade {
            map.insert("upgrade".into(), u.encode());
        }
        Value::Object(map).to_string()
    }

    /// Reads a line written by `encode`; returns the worker index and results.
    pub fn decode(line: &str) -> Result<(u32, Results), DecodeError> {
        let value: Value = serde_json::from_str(line)?;
        let map = value.as_object().ok_or(DecodeError::Field("(object)"))?;
        let worker = uint(map, "worker")
            .and_then(|w| u32::try_from(w).ok())
            .ok_or(DecodeError::Field("worker"))?;
        let silent_closes = parse_silent(map.get("silent").and_then(Value::as_str).unwrap_or(""))
            .ok_or(DecodeError::Field("silent"))?;
        let push_statuses = match map.get("push_statuses") {
            None => BTreeMap::new(),
            Some(v) => v
                .as_object()
                .and_then(|statuses| {
                    statuses
                        .iter()
                        .map(|(status, n)| Some((status.parse().ok()?, n.as_u64()?)))
                        .collect()
                })
                .ok_or(DecodeError::Field("push_statuses"))?,
        };
        let server = match map.get("server") {
            None => None,
            Some(v) => Some(
                v.as_object()
                    .and_then(|s| {
                        Some(ServerUsage {
                            cpu_us: uint(s, "cpu_us")?,
                            user_us: uint(s, "user_us")?,
                            rss_kb: uint(s, "rss_kb")?,
                            rss_anon_kb: uint(s, "rss_anon_kb"),
                        })
                    })
                    .ok_or(DecodeError::Field("server"))?,
            ),
        };
        let results = Results {
            counters: Counters::read(map),
            rtt_us: decode_histogram(map, "rtt_v2")?,
            push_latency_us: decode_histogram(map, "push_latency_v2")?,
            push_answer_us: decode_histogram(map, "push_answer_v2")?,
            push_statuses,
            silent_closes,
            window_us: uint(map, "window_us").unwrap_or(0),
            elapsed_us: uint(map, "elapsed_us").unwrap_or(0),
            ramp_done_us: uint(map, "ramp_done_us"),
            deadline_ms: uint(map, "deadline_ms"),
            server,
            last_error: map
                .get("last_error")
                .and_then(Value::as_str)
                .map(str::to_string),
            first_close_us: uint(map, "first_close_us"),
            relogins_us: parse_list(map.get("relogins").and_then(Value::as_str).unwrap_or(""))
                .ok_or(DecodeError::Field("relogins"))?,
            all_back_us: uint(map, "all_back_us"),
            fanout: FanoutResults::default(),
            upgrade: match map.get("upgrade") {
                None => None,
                Some(v) => Some(UpgradeOutcome::decode(v).ok_or(DecodeError::Field("upgrade"))?),
            },
        };
        Ok((worker, results))
    }
}

fn uint(map: &Map<String, Value>, key: &str) -> Option<u64> {
    map.get(key).and_then(Value::as_u64)
}

/// A histogram as hex of its V2 serialization (null if that fails).
fn encode_histogram(histogram: &Histogram<u64>) -> Value {
    let mut bytes = Vec::new();
    match V2Serializer::new().serialize(histogram, &mut bytes) {
        Ok(_) => hex::encode(&bytes).into(),
        Err(_) => Value::Null,
    }
}

fn decode_histogram(
    map: &Map<String, Value>,
    key: &'static str,
) -> Result<Histogram<u64>, DecodeError> {
    let Some(text) = map.get(key).and_then(Value::as_str) else {
        return Ok(empty_histogram());
    };
    let bytes = hex::decode(text).map_err(|_| DecodeError::Field(key))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|_| DecodeError::Field(key))
}

fn parse_list(text: &str) -> Option<Vec<u64>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|item| item.parse().ok()).collect()
}

fn parse_silent(text: &str) -> Option<Vec<SilentClose>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',')
        .map(|item| {
            let (delay, late) = match item.split_once(':') {
                Some((delay, late)) => (delay, Some(late.parse().ok()?)),
                None => (item, None),
            };
            Some(SilentClose {
                delay_us: delay.parse().ok()?,
                lateness_us: late,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_survive_the_worker_line() {
        let mut results = Results::default();
        results.counters.pings_sent = 12;
        results.counters.rt_in_window = 10;
        for v in [5, 50, 500, 5000] {
            results.record_rtt(v);
        }
        results.record_push_latency(1234);
        results.record_push_answer(202, Some(900));
        results.record_push_answer(503, None);
        results.counters.acks_sent = 4;
        results.silent_closes = vec![
            SilentClose {
                delay_us: 1_500_000,
                lateness_us: Some(-3),
            },
            SilentClose {
                delay_us: 7,
                lateness_us: None,
            },
        ];
        results.deadline_ms = Some(1500);
        results.server = Some(ServerUsage {
            cpu_us: 10,
            user_us: 2,
            rss_kb: 3,
            rss_anon_kb: None,
        });
        results.last_error = Some("Connection refused \"x\"".into());
        results.first_close_us = Some(5_000_000);
        results.relogins_us = vec![5_000_100, 5_200_000];
        results.all_back_us = Some(5_200_000);

        let (worker, back) = Results::decode(&results.encode(3)).unwrap();
        assert_eq!(worker, 3);
        assert_eq!(back.counters.pings_sent, 12);
        assert_eq!(back.counters.rt_in_window, 10);
        assert_eq!(back.rtt_us.len(), 4);
        assert_eq!(back.rtt_us.max(), results.rtt_us.max());
        assert_eq!(back.push_latency_us.len(), 1);
        assert_eq!(back.push_answer_us.len(), 1);
        assert_eq!(back.push_statuses, results.push_statuses);
        assert_eq!(back.counters.acks_sent, 4);
        assert_eq!(back.silent_closes, results.silent_closes);
        assert_eq!(back.deadline_ms, Some(1500));
        assert_eq!(back.server, results.server);
        assert_eq!(back.last_error, results.last_error);
        assert_eq!(back.first_close_us, Some(5_000_000));
        assert_eq!(back.relogins_us, results.relogins_us);
        assert_eq!(back.all_back_us, Some(5_200_000));
        let (_, empty) = Results::decode(&Results::default().encode(0)).unwrap();
        assert!(empty.relogins_us.is_empty());
        assert_eq!(empty.first_close_us, None);
    }

    #[test]
    fn merge_adds_counts_and_samples() {
        let mut a = Results::default();
        a.counters.logins = 2;
        a.record_rtt(100);
        let mut b = Results::default();
        b.counters.logins = 3;
        b.record_rtt(200);
        b.window_us = 9;
        a.record_push_answer(202, Some(10));
        b.record_push_answer(202, Some(20));
        b.record_push_answer(404, None);
        a.merge(&b);
        assert_eq!(a.counters.logins, 5);
        assert_eq!(a.rtt_us.len(), 2);
        assert_eq!(a.push_status(202), 2);
        assert_eq!(a.push_status(404), 1);
        assert_eq!(a.push_answer_us.len(), 2);
        assert_eq!(a.window_us, 9);
    }

    #[test]
    fn merge_takes_the_earliest_close_and_the_latest_recovery() {
        let mut a = Results {
            first_close_us: Some(300),
            relogins_us: vec![400],
            all_back_us: Some(900),
            ..Results::default()
        };
        let b = Results {
            first_close_us: Some(200),
            relogins_us: vec![250, 950],
            all_back_us: Some(950),
            ..Results::default()
        };
        a.merge(&b);
        assert_eq!(a.first_close_us, Some(200));
        assert_eq!(a.relogins_us, vec![400, 250, 950]);
        assert_eq!(a.all_back_us, Some(950));
        a.merge(&Results::default());
        assert_eq!(a.all_back_us, None, "one process never got all back");
    }
}
