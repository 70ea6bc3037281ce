//! Liveness: one wheel entry per client connection, the timerfd that wakes
//! the loop for the wheel, and the heartbeat rule as a pure function.
//!
//! A frame only writes `last_seen`; no timer is touched per frame. When a
//! connection's entry comes due, [`liveness`] compares the silence so far
//! with the interval and the deadline and says what to do: re-arm for the
//! time that remains, probe, probe and mark suspect, or close (Netty's
//! `IdleStateHandler`). The work per tick is proportional to the entries
//! that come due, never to the number of connections.
//!
//! Each connection has its own interval (version 1.2: granted at login, the
//! server's own before), read only when its entry comes due; the deadline is
//! that interval × misses. Entries are scheduled at each connection's own
//! next time, so mixed intervals cost nothing more per tick. A connection
//! that has not logged in yet may still be granted a shorter interval, so it
//! is looked at no later than the shortest interval a login can be granted.

use std::io;
use std::time::{Duration, Instant};

use mio::Token;

use crate::clock::Micros;
use crate::server::conn::ConnRef;
use crate::timers::{Ticker, TimerWheel};

/// While connections keep waking the loop (one was served within the last
/// tick), every iteration advances the wheel, so the ticker only has to catch
/// a sudden silence: it may then fire this long after the wheel's next tick,
/// and so fires about 45 times a second instead of 500. Only a silence that
/// begins just as deadlines come due sees closes up to this much later, within
/// the protocol's bound of one tick plus 50 ms; once the loop is quiet, the
/// ticker follows every tick.
const BUSY_TICKER_SLACK: Duration = Duration::from_millis(20);

/// What the heartbeat rule says about a connection whose wheel entry came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Heard from within the last interval: look again at `at`.
    Rearm { at: Micros },
    /// Silent for one interval: probe (`seq` = intervals of silence), look
    /// again at `next`.
    Probe { seq: u64, next: Micros },
    /// Silent for `seq` ≥ 2 intervals, so a probe went unanswered: probe
    /// again, and the client is suspect.
    Suspect { seq: u64, next: Micros },
    /// Silent for the whole deadline: close; `late` is how long after the
    /// deadline this verdict came.
    Close { late: Micros },
}

impl Verdict {
    /// The same verdict, looking again no later than `latest`.
    fn no_later_than(self, latest: Micros) -> Verdict {
        match self {
            Verdict::Rearm { at } => Verdict::Rearm { at: at.min(latest) },
            Verdict::Probe { seq, next } => Verdict::Probe {
                seq,
                next: next.min(latest),
            },
            Verdict::Suspect { seq, next } => Verdict::Suspect {
                seq,
                next: next.min(latest),
            },
            close @ Verdict::Close { .. } => close,
        }
    }
}

/// What the heartbeat rule reads of one connection when its entry comes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    pub last_seen: Micros,
    /// Its granted interval in ms; 0 before login (the server's own applies).
    pub interval_ms: u32,
}

/// The heartbeat rule. `interval` > 0 and `deadline` ≥ `interval`.
pub fn liveness(last_seen: Micros, now: Micros, interval: Micros, deadline: Micros) -> Verdict {
    let silent = now.saturating_sub(last_seen);
    if silent >= deadline {
        return Verdict::Close {
            late: silent - deadline,
        };
    }
    let intervals = silent / interval.max(1);
    let next = last_seen + ((intervals + 1) * interval).min(deadline);
    match intervals {
        0 => Verdict::Rearm { at: next },
        1 => Verdict::Probe { seq: 1, next },
        seq => Verdict::Suspect { seq, next },
    }
}

pub struct Liveness {
    wheel: TimerWheel<ConnRef>,
    ticker: Ticker,
    /// The ticker could not be set once: warned, and the poll timeout covers the wheel.
    ticker_failed: bool,
    /// The wheel's due entries, reused across ticks.
    due: Vec<ConnRef>,
    /// The server's own interval (for connections not logged in).
    interval: Micros,
    /// The shortest interval a login can be granted.
    shortest: Micros,
    misses: u64,
    tick: Micros,
    /// When the loop last served a connection: within a tick of that, more
    /// are likely to wake it before the next tick.
    last_served: Micros,
}

impl Liveness {
    /// `interval`: the server's own; `shortest`: the shortest a login can
    /// be granted (at most `interval`).
    pub fn new(
        epoch: Instant,
        tick: Duration,
        interval: Duration,
        shortest: Duration,
        misses: u32,
    ) -> io::Result<Liveness> {
        Ok(Liveness {
            wheel: TimerWheel::new(epoch, tick),
            ticker: Ticker::new()?,
            ticker_failed: false,
            due: Vec::new(),
            interval: crate::clock::micros(interval),
            shortest: crate::clock::micros(shortest.min(interval)),
            misses: u64::from(misses.max(1)),
            tick: crate::clock::micros(tick),
            last_served: 0,
        })
    }

    pub fn register(&self, registry: &mio::Registry, token: Token) -> io::Result<()> {
        self.ticker.register(registry, token)
    }

    /// Looks at `conn` again no earlier than `at`.
    pub fn watch(&mut self, conn: ConnRef, at: Instant) {
        self.wheel.schedule(conn, at);
    }

    /// Starts watching a connection accepted at `now`: it is not logged in,
    /// so its first look comes after the shortest interval it may be granted.
    pub fn watch_accepted(&mut self, conn: ConnRef, now: Instant) {
        self.wheel
            .schedule(conn, now + Duration::from_micros(self.shortest));
    }

    /// Notes that the loop served a connection at `now`.
    pub fn served(&mut self, now: Micros) {
        self.last_served = now;
    }

    /// Makes sure the loop wakes for the wheel's next tick. Returns a poll
    /// timeout to use instead when the ticker cannot be set.
    pub fn arm(&mut self, now: Instant, now_us: Micros) -> Option<Duration> {
        let wheel_due = self.wheel.next_due();
        let busy = now_us.saturating_sub(self.last_served) <= self.tick;
        let ticker_due = wheel_due.map(|at| if busy { at + BUSY_TICKER_SLACK } else { at });
        match self.ticker.set(ticker_due, now) {
            Ok(()) => None,
            Err(e) => {
                if !self.ticker_failed {
                    log::warn!(
                        "cannot set the heartbeat timer ({e}); waking by poll timeout instead"
                    );
                    self.ticker_failed = true;
                }
                wheel_due.map(|at| at.saturating_duration_since(now))
            }
        }
    }

    /// The connections whose entries came due by `now`; give the vector
    /// back with [`Liveness::recycle`].
    pub fn take_due(&mut self, now: Instant) -> Vec<ConnRef> {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now, &mut due);
        due
    }

    pub fn recycle(&mut self, mut due: Vec<ConnRef>) {
        due.clear();
        self.due = due;
    }

    /// The heartbeat rule for a connection, with its own interval.
    pub fn verdict(&self, watched: Watched, now: Micros) -> Verdict {
        if watched.interval_ms != 0 {
            let interval = u64::from(watched.interval_ms) * 1000;
            return liveness(watched.last_seen, now, interval, interval * self.misses);
        }
        let verdict = liveness(
            watched.last_seen,
            now,
            self.interval,
            self.interval * self.misses,
        );
        // A login may still grant a shorter interval: no entry of this
        // connection may lie later than that could require.
        verdict.no_later_than(now + self.shortest)
    }

    /// Every wheel entry with the instant it comes due, the wheel left empty
    /// (an upgrade hands them to the next process; a failed one puts them
    /// back with [`Liveness::watch`]).
    pub fn drain(&mut self) -> Vec<(ConnRef, Instant)> {
        self.wheel.drain()
    }

    /// Entries in the wheel, stale ones included until they come due.
    pub fn entries(&self) -> usize {
        self.wheel.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Micros = 1000;

    /// A fake clock walked through a silent client's life: every verdict,
    /// followed as the loop follows it, probes after each interval, turns
    /// suspect at two, and closes at the deadline, never before.
    #[test]
    fn a_silent_client_is_probed_then_suspect_then_closed_at_its_deadline() {
        let (interval, deadline) = (100 * MS, 500 * MS);
        let last_seen = 7 * MS;
        let mut now = last_seen + interval; // the entry armed at login
        let mut seen = Vec::new();
        loop {
            let verdict = liveness(last_seen, now, interval, deadline);
            seen.push(verdict);
            match verdict {
                Verdict::Close { late } => {
                    assert_eq!(now, last_seen + deadline + late);
                    break;
                }
                Verdict::Rearm { at } | Verdict::Probe { next: at, .. } => now = at,
                Verdict::Suspect { next, .. } => now = next,
            }
        }
        assert_eq!(
            seen,
            vec![
                Verdict::Probe {
                    seq: 1,
                    next: last_seen + 2 * interval
                },
                Verdict::Suspect {
                    seq: 2,
                    next: last_seen + 3 * interval
                },
                Verdict::Suspect {
                    seq: 3,
                    next: last_seen + 4 * interval
                },
                Verdict::Suspect {
                    seq: 4,
                    next: last_seen + deadline
                },
                Verdict::Close { late: 0 },
            ]
        );
    }

    /// Two connections with their own intervals, each followed as the loop
    /// follows it: each is probed and closed on its own schedule.
    #[test]
    fn each_connection_follows_its_own_interval() {
        let live = Liveness::new(
            Instant::now(),
            Duration::from_millis(2),
            Duration::from_millis(100),
            Duration::from_millis(40),
            3,
        )
        .unwrap();
        let follow = |interval_ms: u32| {
            let watched = Watched {
                last_seen: 0,
                interval_ms,
            };
            let mut now = u64::from(interval_ms) * MS;
            let mut probes = Vec::new();
            loop {
                match live.verdict(watched, now) {
                    Verdict::Close { late } => return (probes, now - late),
                    Verdict::Rearm { at } => now = at,
                    Verdict::Probe { next, .. } | Verdict::Suspect { next, .. } => {
                        probes.push(now / MS);
                        now = next;
                    }
                }
            }
        };
        assert_eq!(follow(40), (vec![40, 80], 120 * MS));
        assert_eq!(follow(250), (vec![250, 500], 750 * MS));
        // Before login: the server's interval, looked at every 40 ms at most.
        let fresh = Watched {
            last_seen: 0,
            interval_ms: 0,
        };
        assert_eq!(live.verdict(fresh, 0), Verdict::Rearm { at: 40 * MS });
        assert_eq!(
            live.verdict(fresh, 80 * MS),
            Verdict::Rearm { at: 100 * MS }
        );
        assert_eq!(
            live.verdict(fresh, 100 * MS),
            Verdict::Probe {
                seq: 1,
                next: 140 * MS
            }
        );
        assert_eq!(live.verdict(fresh, 300 * MS), Verdict::Close { late: 0 });
    }

    #[test]
    fn a_client_heard_from_is_rearmed_for_the_rest_of_its_interval() {
        let (interval, deadline) = (100 * MS, 300 * MS);
        // Heard 30 ms before the entry fired.
        assert_eq!(
            liveness(70 * MS, 100 * MS, interval, deadline),
            Verdict::Rearm { at: 170 * MS }
        );
        // Just under an interval of silence is not yet a probe.
        assert_eq!(
            liveness(0, interval - 1, interval, deadline),
            Verdict::Rearm { at: interval }
        );
    }

    #[test]
    fn a_late_verdict_says_how_late_and_never_closes_early() {
        let (interval, deadline) = (100 * MS, 300 * MS);
        assert_eq!(
            liveness(0, deadline - 1, interval, deadline),
            Verdict::Suspect {
                seq: 2,
                next: deadline
            }
        );
        assert_eq!(
            liveness(0, deadline + 4 * MS, interval, deadline),
            Verdict::Close { late: 4 * MS }
        );
        // One miss: the deadline is the interval; no probe comes first.
        assert_eq!(
            liveness(0, interval, interval, interval),
            Verdict::Close { late: 0 }
        );
        assert_eq!(
            liveness(0, interval / 2, interval, interval),
            Verdict::Rearm { at: interval }
        );
        // A clock that reads before last_seen (never in the loop) is silence 0.
        assert_eq!(
            liveness(50 * MS, 10 * MS, interval, deadline),
            Verdict::Rearm { at: 150 * MS }
        );
    }
}
