//! The loop's time. The clock is read once per loop iteration (tens of
//! thousands of reads a second would show in the profile); every timestamp
//! taken while that iteration runs is this one.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the loop started: 8 bytes instead of an `Instant`'s 16.
pub type Micros = u64;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
    /// Wall-clock time of `epoch`, in Unix milliseconds, for times shown to people.
    wall_epoch_ms: u64,
    now: Instant,
    now_us: Micros,
}

impl Clock {
    pub fn start() -> Clock {
        let epoch = Instant::now();
        let wall_epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            epoch,
            wall_epoch_ms,
            now: epoch,
            now_us: 0,
        }
    }

    /// Reads the clock: the start of a new iteration.
    pub fn read(&mut self) -> Instant {
        self.now = Instant::now();
        self.now_us = micros_between(self.epoch, self.now);
        self.now
    }

    /// This iteration's time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// This iteration's time in loop microseconds.
    pub fn now_us(&self) -> Micros {
        self.now_us
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Loop microseconds of `at` (zero before the loop started).
    pub fn micros(&self, at: Instant) -> Micros {
        if at == self.now {
            return self.now_us;
        }
        micros_between(self.epoch, at)
    }

    /// The instant of a loop timestamp.
    pub fn instant(&self, at: Micros) -> Instant {
        self.epoch + Duration::from_micros(at)
    }

    /// Unix milliseconds of a loop timestamp.
    pub fn unix_ms(&self, at: Micros) -> u64 {
        self.wall_epoch_ms + at / 1000
    }

    /// The loop timestamp of a Unix time in milliseconds (zero for one
    /// before the loop started); [`Clock::unix_ms`] gives it back exactly.
    pub fn at_unix_ms(&self, unix_ms: u64) -> Micros {
        unix_ms.saturating_sub(self.wall_epoch_ms) * 1000
    }

    /// Unix microseconds of the loop's start: presence numbers start there,
    /// so they keep increasing across restarts.
    pub fn unix_epoch_us(&self) -> u64 {
        self.wall_epoch_ms * 1000
    }
}

/// Microseconds from `from` to `to` (zero if `to` is earlier), without the
/// 128-bit division of `as_micros`.
pub fn micros_between(from: Instant, to: Instant) -> Micros {
    let d = to.saturating_duration_since(from);
    d.as_secs() * 1_000_000 + u64::from(d.subsec_micros())
}

/// Loop microseconds in a `Duration`.
pub fn micros(d: Duration) -> Micros {
    d.as_secs() * 1_000_000 + u64::from(d.subsec_micros())
}
