//! Fan-out mode's flags and their checks.

use std::net::SocketAddr;
use std::time::Duration;

use crate::args::{bad, resolve, Args, ArgsError, Mode};
use crate::proto::Proto;

/// Fan-out mode's flags (flattened into the tool's `Args`).
#[derive(clap::Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Fanout mode: broadcasts asked per second. One is in flight at a time:
    /// the next goes once the last subscriber has the previous one, or one
    /// period after it was triggered, whichever is later.
    #[arg(long, default_value_t = 1.0)]
    pub broadcast_rate: f64,
    /// Fanout mode: a broadcast that has not reached every subscriber this
    /// long after its trigger is given up (its missing deliveries counted).
    #[arg(long, default_value_t = 10_000)]
    pub broadcast_timeout_ms: u64,
    /// Fanout mode: connections besides the --conns subscribers that do not
    /// subscribe (Lifeline: do not log in) and ping every
    /// --bystander-interval-ms; their pong latency during broadcasts is reported.
    #[arg(long, default_value_t = 0)]
    pub bystanders: u32,
    /// Fanout mode: the bystanders' ping interval in ms.
    #[arg(long, default_value_t = 50)]
    pub bystander_interval_ms: u64,
    /// Fanout mode with --proto fanout-floor: the floor's control port,
    /// HOST:PORT (each line written there is written to every subscriber).
    #[arg(long)]
    pub trigger: Option<String>,
}

/// Fan-out mode's validated settings.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// `--conns`: the subscribing connections (slots `0..subscribers`).
    pub subscribers: u32,
    /// Connections after the subscribers that only heartbeat.
    pub bystanders: u32,
    pub rate: f64,
    /// The least time between two triggers (1 / rate).
    pub period: Duration,
    pub timeout: Duration,
    pub bystander_interval: Duration,
    /// Where the fan-out floor takes its triggers.
    pub trigger: Option<SocketAddr>,
}

impl FanoutConfig {
    /// The fan-out settings of a fan-out run (`None` in other modes), or
    /// why the flags cannot be used. `has_admin`: `--admin` was given.
    pub fn from_args(args: &Args, has_admin: bool) -> Result<Option<FanoutConfig>, ArgsError> {
        if args.mode != Mode::Fanout {
            if args.proto == Proto::FanoutFloor {
                return Err(bad("proto", "fanout-floor is for --mode fanout only"));
            }
            return Ok(None);
        }
        let f = &args.fanout;
        if args.workers != 1 {
            return Err(bad(
                "workers",
                "fanout mode times every delivery on one clock: it runs in one process",
            ));
        }
        if !(f.broadcast_rate.is_finite() && f.broadcast_rate > 0.0) {
            return Err(bad(
                "broadcast-rate",
                "must be a positive number of broadcasts per second",
            ));
        }
        if f.broadcast_timeout_ms == 0 {
            return Err(bad("broadcast-timeout-ms", "must be positive"));
        }
        if f.bystander_interval_ms == 0 {
            return Err(bad("bystander-interval-ms", "must be positive"));
        }
        let trigger =
            match (&f.trigger, args.proto) {
                (Some(addr), Proto::FanoutFloor) => Some(resolve("trigger", addr)?),
                (None, Proto::FanoutFloor) => return Err(bad(
                    "trigger",
                    "the fan-out floor takes its triggers on a control port: --trigger HOST:PORT",
                )),
                (Some(_), _) => return Err(bad("trigger", "only --proto fanout-floor uses it")),
                (None, _) => None,
            };
        if args.proto == Proto::Lifeline && !has_admin {
            return Err(bad(
                "admin",
                "fanout mode broadcasts through the admin API: --admin http://HOST:PORT",
            ));
        }
        if args.proto == Proto::FanoutFloor && f.bystanders > 0 {
            return Err(bad(
                "bystanders",
                "the fan-out floor answers no pings; bystanders need lifeline, redis or mqtt",
            ));
        }
        Ok(Some(FanoutConfig {
            subscribers: args.conns,
            bystanders: f.bystanders,
            rate: f.broadcast_rate,
            period: Duration::try_from_secs_f64(1.0 / f.broadcast_rate)
                .map_err(|_| bad("broadcast-rate", "is too small"))?,
            timeout: Duration::from_millis(f.broadcast_timeout_ms),
            bystander_interval: Duration::from_millis(f.bystander_interval_ms),
            trigger,
        }))
    }
}
