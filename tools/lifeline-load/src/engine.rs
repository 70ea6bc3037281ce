//! The event loop: one mio `Poll` (edge-triggered epoll) driving every
//! connection of this process. Each turn opens connections at the ramp rate,
//! lets churn pick leavers, sends the pushes that are due (push mode), fires
//! due connection timers (restart mode: reconnects too), prints progress, and
//! then waits for readiness until the next of those is due.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lifeline_client::Backoff;

use mio::{Events, Interest, Poll, Token};
use socket2::SockRef;

use crate::args::{Config, Mode, Role};
use crate::fanout::{Broadcasts, Bystanders, Publisher, PUBLISHER_TOKEN};
use crate::net;
use crate::observe::ServerProbe;
use crate::progress::Progress;
use crate::push::{self, Pusher};
use crate::restart;
use crate::sched::{Bucket, Rng, Timers, Window};
use crate::session::{Close, Conn, Ctx, Fate, Phase};
use crate::stats::Results;
use crate::upgrade;

/// One read takes at most this much; a short read means the socket is drained.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Readiness events handled per poll.
const EVENTS_PER_POLL: usize = 1024;
/// How far in the past a common start instant may lie before we stop honouring it.
const MAX_START_LAG: Duration = Duration::from_secs(1);
/// Random slots tried to find an online push target before giving up on one push.
const TARGET_TRIES: usize = 16;
/// A push not received this long before the end of the run counts as lost.
const PUSH_GRACE: Duration = Duration::from_secs(1);

/// The engine could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot create the poller: {0}")]
    Poll(io::Error),
    #[error("waiting for events failed: {0}")]
    Wait(io::Error),
}

/// Churn state: a leave rate and the round-robin cursor over slots.
struct Churn {
    bucket: Bucket,
    cursor: usize,
    clean_next: bool,
}

pub struct Engine {
    poll: Poll,
    conns: Vec<Conn>,
    ctx: Ctx,
    /// Slots waiting to (re)connect, in order.
    connect_queue: VecDeque<usize>,
    connects: Bucket,
    churn: Option<Churn>,
    /// Push mode: the admin API connections and the push schedule.
    pusher: Option<Pusher>,
    /// Fanout mode: the connection that triggers the broadcasts, and the
    /// bystanders' threads.
    publisher: Option<Publisher>,
    bystanders: Option<Bystanders>,
    /// Sockets currently open.
    open: usize,
    silent_slots: usize,
    /// Silent slots whose connection has not ended yet.
    silent_left: usize,
    probe: Option<ServerProbe>,
    /// Restart mode: the `--restart-cmd` while it runs.
    restart_cmd: Option<Child>,
    /// Upgrade mode: following the server's pid after SIGUSR2.
    upgrade: Option<upgrade::Follower>,
    window_open: bool,
    next_progress: Instant,
    last_round_trips: u64,
}

/// Runs the whole measurement for this process's share of connections.
pub fn run(cfg: Config) -> Result<Results, EngineError> {
    let mut engine = Engine::new(cfg)?;
    engine.run()
}

/// Whether the connection with global index `conn` is one of the silent ones:
/// spreads `fraction` evenly over the indices, the same way in every worker.
fn goes_silent(conn: u32, fraction: f64) -> bool {
    let n = f64::from(conn);
    ((n + 1.0) * fraction).floor() > (n * fraction).floor()
}

impl Engine {
    fn new(cfg: Config) -> Result<Engine, EngineError> {
        let poll = Poll::new().map_err(EngineError::Poll)?;
        let started = start_instant(cfg.start_at_unix_ms);
        let silent = cfg.mode == Mode::Silent;
        let conns: Vec<Conn> = (0..cfg.conns)
            .map(|i| {
                Conn::new(
                    i as usize,
                    silent && goes_silent(cfg.first_conn + i, cfg.silent_fraction),
                    started,
                )
            })
            .collect();
        let silent_slots = conns.iter().filter(|c| c.goes_silent).count();
        let churn = (cfg.mode == Mode::Churn && cfg.churn_rate > 0.0).then(|| Churn {
            bucket: Bucket::new(cfg.churn_rate, started),
            cursor: 0,
            clean_next: true,
        });
        let pusher = if cfg.mode == Mode::Push {
            Pusher::new(&cfg, started)
        } else {
            None
        };
        let worker = match cfg.role {
            Role::Worker(i) => i,
            Role::Single | Role::Parent => 0,
        };
        let publisher = Publisher::new(&cfg, started);
        Ok(Engine {
            poll,
            publisher,
            bystanders: Bystanders::spawn(&cfg),
            connect_queue: (0..conns.len()).collect(),
            conns,
            connects: Bucket::new(cfg.ramp, started),
            churn,
            pusher,
            open: 0,
            silent_slots,
            silent_left: silent_slots,
            // The restarted server is another process: nothing to measure.
            probe: cfg
                .server_pid
                .filter(|_| !cfg.mode.reconnects())
                .map(ServerProbe::new),
            restart_cmd: None,
            upgrade: None,
            window_open: false,
            next_progress: started + Duration::from_secs(1),
            last_round_trips: 0,
            ctx: Ctx {
                window: Window::new(started, cfg.warmup, cfg.duration),
                results: Results::default(),
                timers: Timers::default(),
                rng: Rng::seeded(u64::from(worker) << 48),
                worker,
                pushes: HashMap::new(),
                frame: Vec::new(),
                backoff: Backoff::new(cfg.backoff_base, cfg.backoff_cap),
                online: 0,
                fanout: Broadcasts::new(cfg.fanout.clone()),
                cfg,
            },
        })
    }

    fn run(&mut self) -> Result<Results, EngineError> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut scratch = vec![0u8; SCRATCH_BYTES];
        loop {
            let now = Instant::now();
            if now >= self.ctx.window.end || self.finished() {
                break;
            }
            self.open_window(now);
            self.connect_some(now);
            self.churn_some(now);
            self.push_some(now);
            self.publish_some(now);
            self.fire_timers(now);
            self.print_progress(now);

            let timeout = self.next_wake().saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EngineError::Wait(e)),
            }
            for event in events.iter() {
                let slot = event.token().0;
                if slot == PUBLISHER_TOKEN {
                    if let Some(publisher) = &mut self.publisher {
                        publisher.on_ready(Instant::now(), &mut scratch, &mut self.ctx);
                    }
                    continue;
                }
                if let Some(index) = slot.checked_sub(push::TOKEN_BASE) {
                    if let Some(pusher) = &mut self.pusher {
                        pusher.on_ready(index, Instant::now(), &mut scratch, &mut self.ctx);
                    }
                    continue;
                }
                let Some(conn) = self.conns.get_mut(slot) else {
                    continue;
                };
                if conn.stream.is_none() {
                    continue; // closed earlier in this batch
                }
                let drain = event.is_read_closed() || event.is_error();
                let now = Instant::now();
                if let Fate::Closed(cause) =
                    conn.on_ready(event.is_readable(), drain, now, &mut scratch, &mut self.ctx)
                {
                    self.close(slot, cause, now);
                }
            }
        }
        Ok(self.finish())
    }

    /// Nothing more can happen: every connection ended and none will be opened,
    /// or (silent mode) every silent connection has been closed. Restart mode
    /// runs to the end: with the server down, every connection may be
    /// waiting to reconnect.
    fn finished(&self) -> bool {
        let all_ended =
            self.open == 0 && self.connect_queue.is_empty() && !self.ctx.cfg.mode.reconnects();
        let silent_done = self.silent_slots > 0 && self.silent_left == 0;
        all_ended || silent_done
    }

    fn open_window(&mut self, now: Instant) {
        if self.window_open || now < self.ctx.window.start {
            return;
        }
        self.window_open = true;
        // Fanout mode measures from its first broadcast on.
        if self.publisher.is_none() {
            self.begin_probe();
        }
        if let (Mode::Upgrade, Some(pid)) = (self.ctx.cfg.mode, self.ctx.cfg.server_pid) {
            let at = now.saturating_duration_since(self.ctx.window.started);
            match upgrade::Follower::start(pid, self.ctx.cfg.admin.clone(), at) {
                Ok(follower) => self.upgrade = Some(follower),
                Err(e) => eprintln!("lifeline-load: cannot signal pid {pid}: {e}"),
            }
        }
        if let Some(command) = &self.ctx.cfg.restart_cmd {
            eprintln!("lifeline-load: running --restart-cmd");
            match restart::spawn_command(command, self.ctx.cfg.server_pid) {
                Ok(child) => self.restart_cmd = Some(child),
                Err(e) => eprintln!("lifeline-load: cannot run --restart-cmd: {e}"),
            }
        }
    }

    fn begin_probe(&mut self) {
        if let Some(probe) = &mut self.probe {
            if let Err(e) = probe.begin() {
                eprintln!("lifeline-load: cannot measure the server: {e}");
                self.probe = None;
            }
        }
    }

    /// Fanout mode: keeps the publisher connected and triggers the
    /// broadcasts that are due; the first one starts the measured window.
    fn publish_some(&mut self, now: Instant) {
        let Some(publisher) = &mut self.publisher else {
            return;
        };
        if publisher.run_due(self.poll.registry(), now, &mut self.ctx) {
            self.begin_probe();
        }
    }

    /// Reaps the `--restart-cmd` once it is done and says how it ended.
    fn check_restart_cmd(&mut self) {
        let Some(child) = &mut self.restart_cmd else {
            return;
        };
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) if status.success() => {
                eprintln!("lifeline-load: --restart-cmd done");
                self.restart_cmd = None;
            }
            Ok(Some(status)) => {
                eprintln!("lifeline-load: --restart-cmd failed: {status}");
                self.restart_cmd = None;
            }
            Err(e) => {
                eprintln!("lifeline-load: cannot wait for --restart-cmd: {e}");
                self.restart_cmd = None;
            }
        }
    }

    fn connect_some(&mut self, now: Instant) {
        while !self.connect_queue.is_empty() && self.connects.take(now) {
            if let Some(slot) = self.connect_queue.pop_front() {
                self.connect_slot(slot, now);
            }
        }
    }

    fn connect_slot(&mut self, slot: usize, now: Instant) {
        self.ctx.results.counters.connect_attempts += 1;
        let cfg = &self.ctx.cfg;
        let source = cfg.source_ip(cfg.first_conn + slot as u32);
        let stream = net::connect(cfg.target, source).and_then(|mut stream| {
            self.poll.registry().register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(stream)
        });
        match stream {
            Ok(stream) => {
                self.conns[slot].begin(stream, now, &mut self.ctx);
                self.open += 1;
            }
            Err(e) => self.close(slot, Close::ConnectFailed(e.to_string()), now),
        }
    }

    fn churn_some(&mut self, now: Instant) {
        let Some(mut churn) = self.churn.take() else {
            return;
        };
        while churn.bucket.take(now) {
            let Some(slot) = self.next_active(&mut churn.cursor) else {
                break; // nobody to churn yet; the token is spent
            };
            let clean = churn.clean_next;
            churn.clean_next = !clean;
            if let Fate::Closed(cause) = self.conns[slot].leave(clean, now, &mut self.ctx) {
                self.close(slot, cause, now);
            }
        }
        self.churn = Some(churn);
    }

    /// The next logged-in slot at or after `cursor`, round-robin.
    fn next_active(&self, cursor: &mut usize) -> Option<usize> {
        let len = self.conns.len();
        for _ in 0..len {
            let slot = *cursor % len;
            *cursor = (slot + 1) % len;
            if self.conns[slot].phase == Phase::Active {
                return Some(slot);
            }
        }
        None
    }

    /// Push mode: reconnects admin connections and sends the pushes due.
    fn push_some(&mut self, now: Instant) {
        let Some(pusher) = &mut self.pusher else {
            return;
        };
        let conns = &self.conns;
        let worker = self.ctx.worker;
        let prefix = self.ctx.cfg.id_prefix.clone();
        pusher.run_due(self.poll.registry(), now, &mut self.ctx, |rng| {
            (0..TARGET_TRIES).find_map(|_| {
                let slot = (rng.next_u64() % conns.len() as u64) as usize;
                conns[slot].online_id(&prefix, worker)
            })
        });
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((due, slot, generation)) = self.ctx.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            // A stale entry: the connection was re-armed or replaced since.
            if conn.generation != generation || conn.wake_at != Some(due) {
                continue;
            }
            conn.wake_at = None;
            if conn.stream.is_none() {
                // Only a scheduled reconnect arms a slot without a socket;
                // it bypasses the ramp, which would flatten the very curve
                // restart mode measures.
                if conn.phase == Phase::Idle {
                    self.connect_slot(slot, now);
                }
                continue;
            }
            if let Fate::Closed(cause) = conn.on_timer(now, &mut self.ctx) {
                self.close(slot, cause, now);
            }
        }
    }

    /// Ends the connection in `slot`: accounting, socket close, re-queue for churn.
    fn close(&mut self, slot: usize, cause: Close, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let reconnect = match self.ctx.cfg.mode {
            Mode::Restart | Mode::Upgrade => conn.reconnect_delay(&cause, &mut self.ctx.backoff),
            _ => None,
        };
        if let Some(stream) = conn.finish(&cause, now, &mut self.ctx) {
            if cause.resets() {
                // SO_LINGER 0 turns the close into a RST: the abrupt leave.
                let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
            drop(stream);
            self.open -= 1;
        }
        if conn.goes_silent {
            self.silent_left = self.silent_left.saturating_sub(1);
        }
        let requeue = self.ctx.cfg.mode == Mode::Churn
            && !matches!(cause, Close::ConnectFailed(_) | Close::EndOfRun);
        if requeue {
            self.connect_queue.push_back(slot);
        }
        if let Some(delay) = reconnect {
            self.ctx.results.counters.reconnects += 1;
            conn.schedule_reconnect(now + delay, &mut self.ctx.timers);
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.ctx.window.end.min(self.next_progress);
        if !self.window_open {
            wake = wake.min(self.ctx.window.start);
        }
        if let Some(due) = self.ctx.timers.next_due() {
            wake = wake.min(due);
        }
        if !self.connect_queue.is_empty() {
            wake = wake.min(self.connects.next_token());
        }
        if let Some(churn) = &self.churn {
            wake = wake.min(churn.bucket.next_token());
        }
        if let Some(due) = self.pusher.as_ref().and_then(Pusher::next_wake) {
            wake = wake.min(due);
        }
        if let Some(publisher) = &self.publisher {
            let due = [publisher.next_wake(), self.ctx.fanout.next_wake()];
            if let Some(due) = due.into_iter().flatten().min() {
                wake = wake.min(due);
            }
        }
        wake
    }

    fn print_progress(&mut self, now: Instant) {
        if now < self.next_progress {
            return;
        }
        self.next_progress = (self.next_progress + Duration::from_secs(1)).max(now);
        self.check_restart_cmd();
        let connected = self
            .conns
            .iter()
            .filter(|c| !matches!(c.phase, Phase::Idle | Phase::Connecting))
            .count();
        let logged_in = self.conns.iter().filter(|c| c.logged_in()).count();
        let counters = &self.ctx.results.counters;
        let rt_last_second = counters.round_trips - self.last_round_trips;
        self.last_round_trips = counters.round_trips;
        let progress = Progress {
            elapsed: now - self.ctx.window.started,
            connected: connected as u64,
            logged_in: logged_in as u64,
            rt_per_s: rt_last_second,
            errors: counters.errors(),
        };
        // Output errors (a closed pipe) must not stop the measurement.
        let _ = match self.ctx.cfg.role {
            Role::Worker(_) => writeln!(io::stdout(), "{}", progress.encode()),
            Role::Single | Role::Parent => writeln!(io::stderr(), "{progress}"),
        };
    }

    /// Measures the end of the window, then closes every connection.
    fn finish(&mut self) -> Results {
        let end = Instant::now().min(self.ctx.window.end);
        self.check_restart_cmd();
        if self.restart_cmd.is_some() {
            // Not killed: it may be the one starting the server again.
            eprintln!("lifeline-load: --restart-cmd still running at the end of the run");
        }
        if let Some(follower) = self.upgrade.take() {
            self.ctx.results.upgrade = Some(follower.finish());
        }
        if let Some(probe) = &self.probe {
            match probe.end() {
                Ok(usage) => self.ctx.results.server = Some(usage),
                Err(e) => eprintln!("lifeline-load: cannot measure the server: {e}"),
            }
        }
        for slot in 0..self.conns.len() {
            if self.conns[slot].stream.is_some() {
                self.close(slot, Close::EndOfRun, end);
            }
        }
        self.pusher = None;
        self.publisher = None;
        if let Some(bystanders) = self.bystanders.take() {
            let measured = bystanders.finish();
            self.ctx.fanout.classify(&measured);
            if let Some(error) = measured.error {
                self.ctx.results.last_error = Some(error);
            }
        }
        self.ctx.results.fanout = self.ctx.fanout.finish(end);
        let lost = self
            .ctx
            .pushes
            .values()
            .filter(|sent_at| end.saturating_duration_since(**sent_at) > PUSH_GRACE)
            .count();
        self.ctx.results.counters.pushes_not_received += lost as u64;
        let window = self.ctx.window;
        let results = &mut self.ctx.results;
        results.window_us = end.saturating_duration_since(window.start).as_micros() as u64;
        results.elapsed_us = end.saturating_duration_since(window.started).as_micros() as u64;
        std::mem::take(results)
    }
}

/// The run's start: now, or the common instant the parent chose for all
/// workers (waiting for it, or backdating up to `MAX_START_LAG`).
fn start_instant(start_at_unix_ms: Option<u64>) -> Instant {
    let Some(start_ms) = start_at_unix_ms else {
        return Instant::now();
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(start_ms);
    if start_ms > now_ms {
        std::thread::sleep(Duration::from_millis(start_ms - now_ms));
        return Instant::now();
    }
    let lag = Duration::from_millis(now_ms - start_ms).min(MAX_START_LAG);
    let now = Instant::now();
    now.checked_sub(lag).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_fraction_is_spread_evenly() {
        let silent = (0..1000).filter(|i| goes_silent(*i, 0.5)).count();
        assert_eq!(silent, 500);
        let silent = (0..1000).filter(|i| goes_silent(*i, 0.1)).count();
        assert_eq!(silent, 100);
        assert!(!(0..1000).any(|i| goes_silent(i, 0.0)));
        assert!((0..1000).all(|i| goes_silent(i, 1.0)));
    }
}
