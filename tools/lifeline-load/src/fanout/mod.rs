//! Fan-out mode: `--conns` subscribers, a publisher that triggers one
//! broadcast at a time, and optionally `--bystanders` that only heartbeat.
//!
//! A broadcast goes out when the previous one reached its last subscriber
//! (or was given up after `--broadcast-timeout-ms`) and not before one
//! period of `--broadcast-rate` after the previous trigger, whichever is
//! later: one in flight, so the figures are per broadcast, and a server that
//! cannot keep up shows as fewer broadcasts sustained, not as a queue.
//!
//! Per broadcast the tool times, from the moment its trigger was written,
//! the first and the last subscriber to receive it. The measured window
//! starts at the first trigger (every subscriber subscribed by then), and the
//! server's CPU over it divided by the deliveries in it is the CPU per
//! delivered message. Bystander pongs of pings sent while a broadcast was in
//! flight are kept apart: how long a broadcast holds up other clients.
//!
//! How each server is triggered is in [`publisher`]; the flags and their
//! checks in [`args`]; this file is the schedule and the bookkeeping.

pub mod args;
pub mod bystanders;
pub mod publisher;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use args::{FanoutArgs, FanoutConfig};
pub use bystanders::{Bystanders, Measured};
pub use publisher::{Publisher, PUBLISHER_TOKEN};

use crate::sched::micros;

/// Start of every broadcast text; the sequence number follows.
const TEXT_PREFIX: &str = "lifeline-load fanout ";
/// With subscribers missing, the first broadcast waits this long after the
/// warmup for them before it goes to those there are.
const SUBSCRIBE_GRACE: Duration = Duration::from_secs(2);

/// The text of broadcast `seq`, padded with `padding` bytes.
pub fn text(seq: u64, padding: usize) -> String {
    let mut text = format!("{TEXT_PREFIX}{seq}");
    if padding > 0 {
        text.push(' ');
        text.extend(std::iter::repeat_n('p', padding));
    }
    text
}

/// The sequence number in a received body, if it is one of ours.
pub fn parse_seq(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(TEXT_PREFIX.as_bytes())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// What fan-out mode measured.
#[derive(Debug, Clone)]
pub struct FanoutResults {
    /// Broadcasts triggered (all inside the window, which starts at the first).
    pub triggered: u64,
    /// ... that reached every subscriber.
    pub completed: u64,
    /// ... given up after the timeout.
    pub timed_out: u64,
    /// Deliveries the broadcasts given up did not make.
    pub missing: u64,
    /// Deliveries received in the window.
    pub deliveries: u64,
    /// Deliveries of a broadcast already given up.
    pub late: u64,
    /// A subscriber received a broadcast not newer than its last one
    /// (a duplicate, or out of order).
    pub reordered: u64,
    /// Triggers the server refused (HTTP status, `-ERR`) or that could not be written.
    pub trigger_errors: u64,
    /// The recipient count the server gave in its last answer (Lifeline's
    /// `recipients`, Redis's PUBLISH reply, the floor's line).
    pub server_recipients: Option<u64>,
    /// Lifeline in cluster mode: the nodes its last answer said the
    /// broadcast reached (`recipients` then counts the node asked only).
    pub server_nodes: Option<u64>,
    /// Subscribers subscribed when the first broadcast went.
    pub subscribers_at_start: u32,
    /// From a trigger to its first and to its last delivery.
    pub first_us: Histogram<u64>,
    pub last_us: Histogram<u64>,
    /// Bystander round trips of pings sent while a broadcast was in flight.
    pub bystander_rtt_us: Histogram<u64>,
    /// ... and of every ping sent in the window.
    pub bystander_all_rtt_us: Histogram<u64>,
    /// Bystander pings whose pong did not come within 5 s.
    pub bystander_lost: u64,
    /// From the first trigger to the end of the run.
    pub window_us: u64,
}

impl Default for FanoutResults {
    fn default() -> Self {
        let histogram = || {
            Histogram::new_with_bounds(1, 600_000_000, 3)
                .unwrap_or_else(|e| panic!("bad fan-out histogram bounds: {e}"))
        };
        FanoutResults {
            triggered: 0,
            completed: 0,
            timed_out: 0,
            missing: 0,
            deliveries: 0,
            late: 0,
            reordered: 0,
            trigger_errors: 0,
            server_recipients: None,
            server_nodes: None,
            subscribers_at_start: 0,
            first_us: histogram(),
            last_us: histogram(),
            bystander_rtt_us: histogram(),
            bystander_all_rtt_us: histogram(),
            bystander_lost: 0,
            window_us: 0,
        }
    }
}

/// The broadcast in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    triggered: Instant,
    expected: u32,
    received: u32,
    first: Option<Instant>,
}

/// The schedule and the bookkeeping of fan-out mode, shared by the
/// publisher and every subscriber (it lives in the session context).
#[derive(Default)]
pub struct Broadcasts {
    cfg: Option<FanoutConfig>,
    /// Subscribers whose subscription is in place right now.
    subscribed: u32,
    next_seq: u64,
    in_flight: Option<InFlight>,
    /// When the next broadcast may go; `None` before the first.
    next_due: Option<Instant>,
    /// `[trigger, done)` of every broadcast finished, in order.
    intervals: Vec<(Instant, Instant)>,
    /// When the first broadcast went.
    window_start: Option<Instant>,
    results: FanoutResults,
}

impl Broadcasts {
    pub fn new(cfg: Option<FanoutConfig>) -> Broadcasts {
        Broadcasts {
            cfg,
            next_seq: 1,
            ..Broadcasts::default()
        }
    }

    pub fn results_mut(&mut self) -> &mut FanoutResults {
        &mut self.results
    }

    /// A subscriber's subscription is in place.
    pub fn subscriber_joined(&mut self) {
        self.subscribed += 1;
    }

    /// A subscriber left; `last` is the newest broadcast it received. The
    /// broadcast in flight no longer waits for it.
    pub fn subscriber_left(&mut self, last: u64, now: Instant) {
        self.subscribed = self.subscribed.saturating_sub(1);
        if let Some(f) = &mut self.in_flight {
            if last < f.seq {
                f.expected = f.expected.saturating_sub(1);
                self.check_done(now);
            }
        }
    }

    /// Whether a broadcast may go now (the publisher also has to be ready):
    /// after the warmup, with every subscriber subscribed (or after a grace
    /// period, to those there are), none in flight, and its time come.
    pub fn due(&self, now: Instant, warmup_end: Instant) -> bool {
        let Some(cfg) = &self.cfg else {
            return false;
        };
        if now < warmup_end || self.in_flight.is_some() || self.subscribed == 0 {
            return false;
        }
        match self.next_due {
            Some(at) => now >= at,
            None => self.subscribed >= cfg.subscribers || now >= warmup_end + SUBSCRIBE_GRACE,
        }
    }

    /// When the schedule next needs the loop: the in-flight broadcast's
    /// timeout, or the next one's time.
    pub fn next_wake(&self) -> Option<Instant> {
        let cfg = self.cfg.as_ref()?;
        match &self.in_flight {
            Some(f) => Some(f.triggered + cfg.timeout),
            None => self.next_due,
        }
    }

    /// Starts broadcast number [`Broadcasts::next_seq`], triggered at `now`.
    /// Returns true for the first one (the measured window starts).
    pub fn triggered(&mut self, now: Instant) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight = Some(InFlight {
            seq,
            triggered: now,
            expected: self.subscribed,
            received: 0,
            first: None,
        });
        self.results.triggered += 1;
        let first = self.window_start.is_none();
        if first {
            self.window_start = Some(now);
            self.results.subscribers_at_start = self.subscribed;
            if let Some(cfg) = &self.cfg {
                if self.subscribed < cfg.subscribers {
                    eprintln!(
                        "lifeline-load: only {} of {} subscribers are subscribed; broadcasting to those",
                        self.subscribed, cfg.subscribers
                    );
                }
            }
        }
        first
    }

    /// The sequence number the next trigger carries.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Gives up the broadcast in flight once its timeout has passed.
    pub fn expire(&mut self, now: Instant) {
        let (Some(cfg), Some(f)) = (&self.cfg, self.in_flight) else {
            return;
        };
        if now < f.triggered + cfg.timeout {
            return;
        }
        self.results.timed_out += 1;
        self.results.missing += u64::from(f.expected.saturating_sub(f.received));
        self.finish_one(f, now);
    }

    /// A subscriber received broadcast `seq`; `last` is the newest it had before.
    pub fn delivered(&mut self, last: &mut u64, seq: u64, now: Instant) {
        if seq <= *last {
            self.results.reordered += 1;
            return;
        }
        *last = seq;
        if self.window_start.is_some() {
            self.results.deliveries += 1;
        }
        match &mut self.in_flight {
            Some(f) if f.seq == seq => {
                f.received += 1;
                f.first.get_or_insert(now);
                self.check_done(now);
            }
            _ => self.results.late += 1,
        }
    }

    fn check_done(&mut self, now: Instant) {
        let Some(f) = self.in_flight else {
            return;
        };
        if f.received < f.expected {
            return;
        }
        let results = &mut self.results;
        results.completed += 1;
        let first = f.first.unwrap_or(now);
        results
            .first_us
            .saturating_record(micros(first.saturating_duration_since(f.triggered)).max(1));
        results
            .last_us
            .saturating_record(micros(now.saturating_duration_since(f.triggered)).max(1));
        self.finish_one(f, now);
    }

    fn finish_one(&mut self, f: InFlight, now: Instant) {
        self.in_flight = None;
        self.intervals.push((f.triggered, now));
        let period = self.cfg.as_ref().map_or(Duration::ZERO, |c| c.period);
        self.next_due = Some((f.triggered + period).max(now));
    }

    /// Whether a ping sent at `sent` went while a broadcast was in flight.
    fn during(&self, sent: Instant) -> bool {
        if self.in_flight.is_some_and(|f| sent >= f.triggered) {
            return true;
        }
        // The last interval that started at or before `sent`.
        let after = self.intervals.partition_point(|&(from, _)| from <= sent);
        after > 0 && sent < self.intervals[after - 1].1
    }

    /// Files the bystanders' round trips: those of pings sent in the window,
    /// and apart those sent while a broadcast was in flight.
    pub fn classify(&mut self, measured: &Measured) {
        let Some(start) = self.window_start else {
            return;
        };
        for sample in measured.samples.iter().filter(|s| s.sent >= start) {
            let rtt = sample.rtt_us.max(1);
            self.results.bystander_all_rtt_us.saturating_record(rtt);
            if self.during(sample.sent) {
                self.results.bystander_rtt_us.saturating_record(rtt);
            }
        }
        self.results.bystander_lost = measured.lost;
    }

    /// Closes the books at the end of the run.
    pub fn finish(&mut self, end: Instant) -> FanoutResults {
        if let Some(start) = self.window_start {
            self.results.window_us = micros(end.saturating_duration_since(start));
        }
        std::mem::take(&mut self.results)
    }
}

#[cfg(test)]
mod tests;
