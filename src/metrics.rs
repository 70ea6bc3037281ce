//! Counters the loop keeps about itself (exposed by the admin API later).

use crate::conn::CloseReason;

/// Plain counters: the loop is single-threaded, so no atomics are needed.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub accepted: u64,
    pub refused_overload: u64,
    pub logins: u64,
    pub closes: [u64; CloseReason::COUNT],
    pub heartbeats_received: u64,
    pub probes_sent: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub messages_routed: u64,
    pub messages_offline: u64,
    pub acks: u64,
    pub bad_frames: u64,
}

impl Metrics {
    pub fn closed(&mut self, reason: CloseReason) {
        self.closes[reason.index()] += 1;
    }

    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        self.closes[reason.index()]
    }
}
