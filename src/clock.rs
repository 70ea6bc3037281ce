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

    /// The clock of a process that took over from another (an upgrade): the
    /// same epoch, given as CLOCK_MONOTONIC microseconds (one clock for every
    /// process on the host), and the same wall-clock time of it. Every loop
    /// timestamp the other process handed over then means the same instant
    /// here, so deadlines stay exact. `None` for an epoch this host's
    /// monotonic clock cannot have (in the future, or before boot).
    pub fn resume(epoch_mono_us: u64, wall_epoch_ms: u64) -> Option<Clock> {
        let now = Instant::now();
        let since_epoch = monotonic_us().checked_sub(epoch_mono_us)?;
        let epoch = now.checked_sub(Duration::from_micros(since_epoch))?;
        Some(Clock {
            epoch,
            wall_epoch_ms,
            now,
            now_us: micros_between(epoch, now),
        })
    }

    /// The epoch in CLOCK_MONOTONIC microseconds (see [`Clock::resume`]).
    pub fn epoch_mono_us(&self) -> u64 {
        let elapsed = micros_between(self.epoch, Instant::now());
        monotonic_us().saturating_sub(elapsed)
    }

    /// Wall-clock time of the epoch, in Unix milliseconds.
    pub fn wall_epoch_ms(&self) -> u64 {
        self.wall_epoch_ms
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

/// CLOCK_MONOTONIC now, in microseconds: the clock `Instant` reads on Linux,
/// and the same for every process on the host.
pub fn monotonic_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1000
}

/// Loop microseconds in a `Duration`.
pub fn micros(d: Duration) -> Micros {
    d.as_secs() * 1_000_000 + u64::from(d.subsec_micros())
}
