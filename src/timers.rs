//! Heartbeat deadlines in a hashed hierarchical timer wheel
//! (`hierarchical_hash_wheel_timer`), one wheel unit per configured tick.
//!
//! Insertion is O(1) and a tick touches only the slot that comes due (plus,
//! every 256 ticks, the cascade of one slot of the next level), so the work of
//! [`TimerWheel::advance`] is proportional to the ticks elapsed and the entries
//! that expire — never to the number of connections. Entries are never
//! cancelled: the owner tags them (slab key + generation) and ignores stale
//! ones, and re-arms lazily when an entry fires (see `server::liveness`).

use std::fmt::Debug;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use hierarchical_hash_wheel_timer::wheels::quad_wheel::{no_prune, QuadWheelWithOverflow};
use hierarchical_hash_wheel_timer::wheels::Skip;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::time::{
    clock_gettime, timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId,
    TimerfdFlags, TimerfdTimerFlags, Timespec,
};

/// A timer wheel whose time is `origin + ticks × tick`.
pub struct TimerWheel<T: Debug> {
    wheel: QuadWheelWithOverflow<T>,
    origin: Instant,
    tick: Duration,
    /// Wheel time, in ticks since `origin`; never ahead of real time.
    ticks: u64,
    len: usize,
}

impl<T: Debug> TimerWheel<T> {
    /// A wheel whose time starts now: `origin` may lie far back (a process
    /// that took over another's clock), and the ticks since then are not
    /// walked through.
    pub fn new(origin: Instant, tick: Duration) -> TimerWheel<T> {
        let tick = tick.max(Duration::from_millis(1));
        TimerWheel {
            wheel: QuadWheelWithOverflow::new(no_prune::<T>),
            origin,
            tick,
            ticks: nanos(Instant::now().saturating_duration_since(origin)) / nanos(tick),
            len: 0,
        }
    }

    /// Takes every entry out, each with the instant it comes due, and leaves
    /// the wheel empty at the current time. Walks forward to the last entry,
    /// skipping empty stretches: the work is proportional to the entries and
    /// the occupied slots, as for [`TimerWheel::advance`].
    pub fn drain(&mut self) -> Vec<(T, Instant)> {
        let origin = self.origin;
        let mut old = std::mem::replace(self, TimerWheel::new(origin, self.tick));
        let mut entries = Vec::with_capacity(old.len);
        loop {
            match old.wheel.can_skip() {
                Skip::Empty => break,
                Skip::Millis(n) => {
                    old.wheel.skip(n);
                    old.ticks += u64::from(n);
                }
                Skip::None => {
                    let due = old.wheel.tick();
                    old.ticks += 1;
                    let at = u32::try_from(old.ticks)
                        .ok()
                        .and_then(|ticks| old.tick.checked_mul(ticks))
                        .and_then(|d| origin.checked_add(d));
                    // An instant past what `Instant` holds cannot come from
                    // `schedule`; such an entry would come due never.
                    if let Some(at) = at {
                        entries.extend(due.into_iter().map(|e| (e, at)));
                    }
                }
            }
        }
        entries
    }

    /// Entries waiting in the wheel (stale ones included until they fire).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's resolution: an entry fires at most this late (plus loop latency).
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Schedules `entry` to fire no earlier than `at`: the delay is rounded up
    /// to whole ticks, so an entry never fires before its time.
    pub fn schedule(&mut self, entry: T, at: Instant) {
        let due_tick = ceil_div(at.saturating_duration_since(self.origin), self.tick);
        let delay = due_tick.saturating_sub(self.ticks).max(1);
        // A delay that does not fit the wheel's 2^32 units goes to its overflow
        // list; Duration carries it either way.
        match self
            .wheel
            .insert_with_delay(entry, Duration::from_millis(delay))
        {
            Ok(()) => self.len += 1,
            // Unreachable with delay >= 1, but never lose a deadline.
            Err(hierarchical_hash_wheel_timer::TimerError::Expired(e)) => {
                let _ = self.wheel.insert_with_delay(e, Duration::from_millis(1));
                self.len += 1;
            }
            Err(_) => {}
        }
    }

    /// Moves wheel time up to `now` and appends every entry due by then to
    /// `expired`. Empty stretches are skipped without touching a slot.
    pub fn advance(&mut self, now: Instant, expired: &mut Vec<T>) {
        let target = nanos(now.saturating_duration_since(self.origin)) / nanos(self.tick);
        while self.ticks < target {
            match self.wheel.can_skip() {
                Skip::Empty => self.ticks = target,
                Skip::Millis(n) => {
                    let step = u64::from(n).min(target - self.ticks);
                    // step <= n fits u32.
                    self.wheel.skip(step as u32);
                    self.ticks += step;
                }
                Skip::None => {
                    let due = self.wheel.tick();
                    self.ticks += 1;
                    self.len -= due.len();
                    expired.extend(due);
                }
            }
        }
    }

    /// The next tick that can expire something; `None` when the wheel is empty.
    pub fn next_due(&self) -> Option<Instant> {
        let ticks_ahead = match self.wheel.can_skip() {
            Skip::Empty => return None,
            Skip::None => 1,
            Skip::Millis(n) => u64::from(n) + 1,
        };
        let ticks = u32::try_from(self.ticks + ticks_ahead).ok()?;
        self.origin.checked_add(self.tick.checked_mul(ticks)?)
    }
}

/// Wakes the loop for the wheel: a one-shot timerfd registered with the
/// poll, set again only once it has fired or must fire sooner.
///
/// Why not the `epoll_wait` timeout: a wait that blocks with a timeout arms
/// a kernel hrtimer and cancels it when an event comes first. Under load that
/// happens on thousands of waits a second, and in a VM each arm and cancel
/// reprograms the local APIC timer, a VM exit: the floor server spends about
/// 1.25x the CPU per round trip with a 2 ms timeout as with none
/// (BENCHMARKS.md). A timer that fires every tick is not free either (a
/// wakeup and a syscall each time), so the loop asks for one only as often
/// as it needs (see `server::BUSY_TICKER_SLACK`).
pub struct Ticker {
    fd: OwnedFd,
    /// What the timerfd is set to; `None` when disarmed or spent.
    armed: Option<Instant>,
    /// One instant read on both clocks, to turn an `Instant` into the
    /// CLOCK_MONOTONIC time the timerfd takes.
    base: Instant,
    base_mono: Duration,
}

impl Ticker {
    pub fn new() -> io::Result<Ticker> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // Instant first: the monotonic reading is then no earlier, so the
        // timer never fires before the instant it was set for.
        let base = Instant::now();
        let base_mono = from_timespec(clock_gettime(ClockId::Monotonic));
        Ok(Ticker {
            fd,
            armed: None,
            base,
            base_mono,
        })
    }

    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Makes sure the timer fires by `due`. A timer set for no later than
    /// that is left alone (a syscall saved; firing early costs one idle
    /// iteration). With `None`, a timer still set may fire once for nothing.
    pub fn set(&mut self, due: Option<Instant>, now: Instant) -> io::Result<()> {
        if self.armed.is_some_and(|at| at <= now) {
            self.armed = None; // it has fired
        }
        let Some(due) = due else {
            return Ok(());
        };
        if self.armed.is_some_and(|at| at <= due) {
            return Ok(());
        }
        let value = to_timespec(self.base_mono + due.saturating_duration_since(self.base));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            // Zero would disarm; one nanosecond is safely in the past.
            it_value: value.max(Timespec {
                tv_sec: 0,
                tv_nsec: 1,
            }),
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::ABSTIME, &spec)?;
        self.armed = Some(due);
        Ok(())
    }
}

fn from_timespec(t: Timespec) -> Duration {
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn to_timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

fn ceil_div(d: Duration, unit: Duration) -> u64 {
    nanos(d).div_ceil(nanos(unit))
}

/// Nanoseconds in 64 bits (enough for 584 years of uptime), avoiding the
/// 128-bit division of `as_nanos` on the per-iteration path.
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn never_fires_early_and_at_most_one_tick_late() {
        let origin = Instant::now();
        let tick = ms(5);
        let mut wheel = TimerWheel::new(origin, tick);
        // Deadlines at every ms offset over several wheel levels.
        let deadlines: Vec<u64> = (1..3000).step_by(7).chain([70_000, 1_300_000]).collect();
        for &d in &deadlines {
            wheel.schedule(d, origin + ms(d));
        }
        assert_eq!(wheel.len(), deadlines.len());
        let mut fired_at = std::collections::HashMap::new();
        let mut expired = Vec::new();
        let mut now_ms = 0;
        while now_ms <= 1_400_000 {
            wheel.advance(origin + ms(now_ms), &mut expired);
            for d in expired.drain(..) {
                fired_at.insert(d, now_ms);
            }
            now_ms += 1;
        }
        for &d in &deadlines {
            let at = fired_at[&d];
            assert!(at >= d, "deadline {d} fired early at {at}");
            assert!(at <= d + 5, "deadline {d} fired late at {at}");
        }
        assert!(wheel.is_empty());
    }

    #[test]
    fn advancing_in_one_jump_returns_everything_due() {
        let origin = Instant::now();
        let mut wheel = TimerWheel::new(origin, ms(1));
        for d in 1..=1000u64 {
            wheel.schedule(d, origin + ms(d * 3));
        }
        let mut expired = Vec::new();
        wheel.advance(origin + ms(1500), &mut expired);
        assert_eq!(expired.len(), 500);
        assert!(expired.iter().all(|&d| d * 3 <= 1500));
    }

    /// An upgrade hands every connection's entry to the next process:
    /// drained, each comes with the instant it was due, rounded up to its
    /// tick, and the wheel is left empty and usable.
    #[test]
    fn drained_entries_keep_their_due_instants() {
        let origin = Instant::now();
        let tick = ms(5);
        let mut wheel = TimerWheel::new(origin, tick);
        let deadlines: Vec<u64> = (1..2000).step_by(13).chain([70_000, 1_300_000]).collect();
        for &d in &deadlines {
            wheel.schedule(d, origin + ms(d));
        }
        let mut expired = Vec::new();
        wheel.advance(origin + ms(500), &mut expired);
        let mut drained = wheel.drain();
        assert!(wheel.is_empty());
        assert_eq!(drained.len() + expired.len(), deadlines.len());
        drained.sort();
        for (d, at) in &drained {
            assert!(*d > 495, "{d} was due before the drain");
            assert_eq!(*at, origin + ms(d.div_ceil(5) * 5), "entry {d}");
        }
        // Put back into a wheel on the same origin, they come due as before.
        for (d, at) in drained {
            wheel.schedule(d, at);
        }
        wheel.advance(origin + ms(1_300_000), &mut expired);
        assert_eq!(expired.len(), deadlines.len());
    }

    #[test]
    fn ticker_fires_once_at_its_time_and_never_later_than_asked() {
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(4);
        let mut ticker = Ticker::new().unwrap();
        ticker.register(poll.registry(), Token(7)).unwrap();
        let start = Instant::now();
        let wait_for_tick = |poll: &mut mio::Poll, events: &mut mio::Events| {
            let give_up = Instant::now() + Duration::from_secs(2);
            loop {
                poll.poll(events, Some(ms(100))).unwrap();
                if events.iter().any(|e| e.token() == Token(7)) {
                    return Instant::now();
                }
                assert!(Instant::now() < give_up, "the ticker never fired");
            }
        };
        ticker.set(Some(start + ms(30)), start).unwrap();
        // A later time does not postpone it.
        ticker.set(Some(start + ms(500)), start).unwrap();
        let fired = wait_for_tick(&mut poll, &mut events);
        assert!(fired >= start + ms(30), "fired early: {:?}", fired - start);
        assert!(fired < start + ms(400), "postponed: {:?}", fired - start);
        // Spent: the next request sets it again, and an earlier one wins.
        let now = Instant::now();
        ticker.set(Some(now + ms(300)), now).unwrap();
        ticker.set(Some(now + ms(20)), now).unwrap();
        let fired = wait_for_tick(&mut poll, &mut events);
        assert!(fired >= now + ms(20), "fired early: {:?}", fired - now);
        assert!(
            fired < now + ms(250),
            "the earlier time was lost: {:?}",
            fired - now
        );
    }

    #[test]
    fn next_due_points_at_the_next_tick_or_nothing() {
        let origin = Instant::now();
        let mut wheel: TimerWheel<u32> = TimerWheel::new(origin, ms(10));
        assert_eq!(wheel.next_due(), None);
        wheel.schedule(1, origin + ms(25));
        let t = wheel.next_due().unwrap() - origin;
        assert!(t <= ms(30) && t >= ms(10), "{t:?}");
    }
}
