//! The client side of the heartbeat.

use std::time::{Duration, Instant};

/// When to ping, and when the server counts as lost (`last_heard + interval ×
/// misses`; nothing per frame but storing the time, as on the server).
pub(crate) struct Heartbeat {
    interval: Duration,
    misses: u32,
    pub(crate) next_ping: Instant,
    pub(crate) last_heard: Instant,
    seq: u64,
    pub(crate) unanswered: u32,
}

impl Heartbeat {
    pub(crate) fn new(
        interval: Duration,
        misses: u32,
        phase: Option<Duration>,
        now: Instant,
    ) -> Heartbeat {
        Heartbeat {
            interval,
            misses,
            next_ping: now + phase.unwrap_or(interval).min(interval),
            last_heard: now,
            seq: 0,
            unanswered: 0,
        }
    }

    pub(crate) fn lost_at(&self) -> Instant {
        self.last_heard + self.interval * self.misses
    }

    pub(crate) fn next_wakeup(&self) -> Instant {
        self.next_ping.min(self.lost_at())
    }

    pub(crate) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.unanswered = 0;
    }

    /// Records a ping going out now; returns its sequence number.
    pub(crate) fn ping_sent(&mut self, now: Instant) -> u64 {
        self.seq += 1;
        self.unanswered += 1;
        self.next_ping += self.interval;
        // After a stall (a suspended laptop, a starved thread) ping once, not
        // once per missed slot.
        if self.next_ping <= now {
            self.next_ping = now + self.interval;
        }
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_pings_on_phase_then_every_interval_and_skips_missed_slots() {
        let now = Instant::now();
        let interval = Duration::from_millis(200);
        let mut hb = Heartbeat::new(interval, 3, Some(Duration::from_millis(50)), now);
        assert_eq!(hb.next_ping, now + Duration::from_millis(50));
        assert_eq!(hb.lost_at(), now + Duration::from_millis(600));
        assert_eq!(hb.ping_sent(hb.next_ping), 1);
        assert_eq!(hb.next_ping, now + Duration::from_millis(250));
        let late = now + Duration::from_secs(5);
        hb.ping_sent(late);
        assert_eq!(hb.next_ping, late + interval);
        assert_eq!(hb.unanswered, 2);
        hb.heard(late);
        assert_eq!(hb.unanswered, 0);
        assert_eq!(hb.lost_at(), late + Duration::from_millis(600));
    }
}
