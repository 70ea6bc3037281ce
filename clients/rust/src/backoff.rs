//! Reconnect delays: exponential backoff with full jitter.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reconnect delays: exponential backoff with full jitter. The delay before
/// attempt `n` (counted from 0) is uniform in `[0, min(cap, base·2^n)]`, so a
/// crowd of clients that lost the same server spreads over the whole window
/// instead of arriving in synchronized waves.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// xorshift64* state; never zero.
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            rng: seed(),
        }
    }

    /// The longest delay for attempt `n`: `min(cap, base·2^n)`, without overflow.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay in `[0, ceiling(attempt)]`.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        let random = self.next_u64();
        // Modulo bias is below 2^-30 for any ceiling under 2^34 ns (17 s) and
        // irrelevant for spreading reconnects anyway.
        let nanos = match ceiling.checked_add(1) {
            Some(span) => random % span,
            None => random,
        };
        Duration::from_nanos(nanos)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A seed that differs between processes and threads: `RandomState` keys
/// come from the OS once per thread, and the clock and thread id separate
/// clients started together in one process.
fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    std::thread::current().id().hash(&mut hasher);
    hasher.finish() | 1
}
