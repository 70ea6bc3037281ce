//! Scheduling primitives of the engine: the per-connection timer heap, the
//! measurement window, rate limiters, and a small random source.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// One pending wake-up: `(due, slot, generation)`.
type Entry = Reverse<(Instant, usize, u32)>;

/// A min-heap of connection wake-ups. Each connection keeps the instant it
/// wants to be woken at; an entry fires only if the connection still has that
/// generation and that instant, so re-arming never needs a cancel.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Entry>,
}

impl Timers {
    pub fn push(&mut self, due: Instant, slot: usize, generation: u32) {
        self.heap.push(Reverse((due, slot, generation)));
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((due, _, _))) if *due <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((due, _, _))| *due)
    }
}

/// The run's clock: when it started and which part of it is measured.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub started: Instant,
    /// End of warmup: samples before this are not measured.
    pub start: Instant,
    /// End of the run (`--duration`).
    pub end: Instant,
}

impl Window {
    pub fn new(started: Instant, warmup: Duration, duration: Duration) -> Self {
        Window {
            started,
            start: started + warmup,
            end: started + duration,
        }
    }

    pub fn contains(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// A duration in whole microseconds, the unit of every sample and instant in
/// the results (saturating; no run lasts 584,000 years).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A token bucket: `rate` tokens per second, holding at most a burst of
/// 50 ms worth (at least one), so a stalled loop does not release a flood.
pub struct Bucket {
    rate: f64,
    tokens: f64,
    burst: f64,
    refilled: Instant,
}

impl Bucket {
    pub fn new(rate: f64, now: Instant) -> Self {
        let burst = (rate * 0.05).max(1.0);
        Bucket {
            rate,
            tokens: 1.0_f64.min(burst),
            burst,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
    }

    /// Takes one token if available.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be available.
    pub fn next_token(&self) -> Instant {
        if self.tokens >= 1.0 || self.rate <= 0.0 {
            return self.refilled;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        self.refilled + Duration::from_secs_f64(wait.min(3600.0))
    }
}

/// SplitMix64: fast, statistically fine for spreading phases and jitter.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(salt: u64) -> Self {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(clock ^ u64::from(std::process::id()).rotate_left(32) ^ salt)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniformly random duration in `[0, bound)` (zero when `bound` is zero).
    pub fn below(&mut self, bound: Duration) -> Duration {
        let micros = bound.as_micros() as u64;
        if micros == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.next_u64() % micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_pop_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.push(t0 + Duration::from_millis(20), 2, 0);
        timers.push(t0 + Duration::from_millis(10), 1, 0);
        assert_eq!(timers.pop_due(t0), None);
        assert_eq!(timers.next_due(), Some(t0 + Duration::from_millis(10)));
        let now = t0 + Duration::from_millis(25);
        assert_eq!(timers.pop_due(now).map(|e| e.1), Some(1));
        assert_eq!(timers.pop_due(now).map(|e| e.1), Some(2));
        assert_eq!(timers.pop_due(now), None);
    }

    #[test]
    fn bucket_releases_rate_per_second_without_bursting() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(1000.0, t0);
        assert!(bucket.take(t0));
        assert!(!bucket.take(t0));
        let later = t0 + Duration::from_secs(10);
        let mut taken = 0;
        while bucket.take(later) {
            taken += 1;
        }
        assert_eq!(taken, 50, "burst is capped at 50 ms worth");
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut rng = Rng::seeded(7);
        for _ in 0..1000 {
            assert!(rng.below(Duration::from_millis(3)) < Duration::from_millis(3));
        }
        assert_eq!(rng.below(Duration::ZERO), Duration::ZERO);
    }
}
