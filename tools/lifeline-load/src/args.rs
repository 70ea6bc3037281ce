//! Command-line flags (`Args`) and their validated form (`Config`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::fanout::{FanoutArgs, FanoutConfig};
use crate::observe::AdminUrl;
use crate::proto::Proto;
use crate::wsclient::Transport;

/// What each connection does once logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Ping every interval; measure pings/s and pong round trips.
    Steady,
    /// Closed loop: one ping outstanding per connection, as fast as possible.
    Max,
    /// A fraction of the connections stop sending; measure how late the server closes them.
    Silent,
    /// Connections log in and leave at --churn-rate per second (half bye, half RST).
    Churn,
    /// Connections ping as in steady and ack every message; the tool POSTs
    /// --push-rate pushes per second to random online clients through --admin.
    Push,
    /// Connections ping as in steady and reconnect on their own when the server
    /// closes them (its `retry-ms`, else backoff with full jitter); measures
    /// the login rate per 100 ms after the first close (a server restart, by
    /// --restart-cmd or by hand) and the time until all are back.
    Restart,
    /// The connections subscribe (redis SUBSCRIBE, MQTT SUBSCRIBE; Lifeline:
    /// log in) and the tool triggers broadcasts, one in flight, at
    /// --broadcast-rate; measures each one's first and last delivery.
    Fanout,
    /// As restart, but the server is upgraded in place: SIGUSR2 to
    /// --server-pid when the warmup ends, the new pid followed through
    /// --admin's /healthz; reports reconnects, missed heartbeats and the
    /// longest ping→pong pause (goals: 0, 0, one tick + 50 ms).
    Upgrade,
}

impl Mode {
    /// Connections reconnect by themselves when the server closes them
    /// (and are counted doing so).
    pub fn reconnects(self) -> bool {
        matches!(self, Mode::Restart | Mode::Upgrade)
    }
}

/// Load generator for Lifeline and its peers (redis PING, MQTT PINGREQ; PUBLISH fan-out).
#[derive(Parser, Debug, Clone)]
#[command(name = "lifeline-load", version)]
pub struct Args {
    /// Server address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub target: String,
    /// Total connections across all workers.
    #[arg(long, default_value_t = 1000)]
    pub conns: u32,
    /// Worker processes; needed above ~19,000 connections (one process holds at most 20,000 files).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Source addresses bound round-robin before connect: a count N (127.0.0.1..=127.0.0.N),
    /// a range A-B, or a comma-separated list of either.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Connects per second (all workers together).
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Login ids are PREFIX-W-I: several load processes against one cluster
    /// need different prefixes, or they replace each other's clients.
    #[arg(long, default_value = "load")]
    pub id_prefix: String,
    /// Ping interval in ms [default: the server's welcome interval, else 1000].
    #[arg(long)]
    pub interval_ms: Option<u64>,
    /// Random delay in [0, J) ms added to each scheduled ping.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Length of the whole run in seconds; it stops by itself.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds at the start excluded from measurement.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Wire protocol.
    #[arg(long, value_enum, default_value_t = Proto::Lifeline)]
    pub proto: Proto,
    /// Transport of the lifeline protocol: the raw XML stream, or a WebSocket
    /// upgrade on the same port (one masked text message per frame).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// What the connections do.
    #[arg(long, value_enum, default_value_t = Mode::Steady)]
    pub mode: Mode,
    /// Login secret: token = lowercase hex HMAC-SHA256(secret, id).
    #[arg(long, env = "LIFELINE_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// Silent mode: fraction of the connections that go silent.
    #[arg(long, default_value_t = 0.5)]
    pub silent_fraction: f64,
    /// Silent mode: ms after login before a silent connection stops sending [default: one interval].
    #[arg(long)]
    pub silent_after_ms: Option<u64>,
    /// Deadline used for lateness [default: interval × misses from the welcome; 1.5 × keepalive for MQTT].
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Churn mode: connections leaving (and reconnecting) per second, all workers together.
    #[arg(long, default_value_t = 100.0)]
    pub churn_rate: f64,
    /// Admin endpoint, e.g. http://127.0.0.1:9090: check lifeline_clients_online before and
    /// after; push mode sends its pushes there.
    #[arg(long)]
    pub admin: Option<String>,
    /// Bearer token for the admin API (the server's LIFELINE_ADMIN_TOKEN).
    #[arg(long, env = "LIFELINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Push mode: pushes per second, all workers together.
    #[arg(long, default_value_t = 100.0)]
    pub push_rate: f64,
    /// Push mode: ask the server to hold each answer until the client acks (?wait_ack_ms=N).
    #[arg(long)]
    pub wait_ack_ms: Option<u64>,
    /// Push mode: admin API connections per process, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    pub push_conns: u32,
    /// Push and fanout modes: bytes of padding added to each message.
    #[arg(long, default_value_t = 0)]
    pub push_padding: usize,
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Server process to measure (CPU per round trip over the window, RSS at the end);
    /// restart mode only hands it to --restart-cmd as LIFELINE_SERVER_PID; upgrade mode
    /// sends it SIGUSR2.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Restart mode: shell command run once when the warmup ends (by `sh -c`,
    /// not waited for), e.g. a script that stops the server with SIGTERM and
    /// starts it again. Without it, restart the server by other means.
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Restart mode: reconnect backoff base in ms; attempt n waits a random
    /// delay in [0, min(cap, base·2^n)] unless the server's goodbye gave retry-ms.
    #[arg(long, default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// Restart mode: reconnect backoff cap in ms.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_cap_ms: u64,
    /// MQTT keepalive in seconds sent in CONNECT.
    #[arg(long, default_value_t = 60)]
    pub mqtt_keepalive: u16,
    /// Give up on a connection without a completed connect and login after this many ms.
    #[arg(long, default_value_t = 10_000)]
    pub login_timeout_ms: u64,
    /// Print the final result as a JSON object instead of the RESULT line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Internal: run as worker I of --workers.
    #[arg(long, hide = true)]
    pub worker_index: Option<u32>,
    /// Internal: common start instant of all workers (Unix ms).
    #[arg(long, hide = true)]
    pub start_at_unix_ms: Option<u64>,
}

/// How this process takes part in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One process does everything.
    Single,
    /// Spawns the workers and merges their results.
    Parent,
    /// Runs a share of the connections and prints one JSON line.
    Worker(u32),
}

/// Validated settings for this process.
#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    pub target: SocketAddr,
    pub total_conns: u32,
    pub workers: u32,
    /// Connections this process opens, and the global index of its first one.
    pub conns: u32,
    pub first_conn: u32,
    pub source_ips: Vec<IpAddr>,
    /// Login ids are `PREFIX-W-I`.
    pub id_prefix: String,
    /// This process's share of the rates.
    pub ramp: f64,
    pub churn_rate: f64,
    pub interval: Option<Duration>,
    pub jitter: Duration,
    pub duration: Duration,
    pub warmup: Duration,
    pub proto: Proto,
    pub transport: Transport,
    /// `--tls`: what every connection's TLS session starts from.
    pub tls: Option<crate::tls::TlsSetup>,
    pub mode: Mode,
    pub auth_secret: Option<Vec<u8>>,
    pub silent_fraction: f64,
    pub silent_after: Option<Duration>,
    pub deadline: Option<Duration>,
    pub admin: Option<AdminUrl>,
    pub admin_token: Option<String>,
    /// This process's share of the push rate.
    pub push_rate: f64,
    pub wait_ack_ms: Option<u64>,
    pub push_conns: u32,
    pub push_padding: usize,
    /// Fanout mode's settings.
    pub fanout: Option<FanoutConfig>,
    /// Set only in the process that measures the server (single, or worker 0).
    pub server_pid: Option<u32>,
    /// Set only in the process that measures the server, in restart mode.
    pub restart_cmd: Option<String>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub mqtt_keepalive: u16,
    pub login_timeout: Duration,
    pub json: bool,
    pub start_at_unix_ms: Option<u64>,
}

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ArgsError {
    flag: &'static str,
    reason: String,
}

pub fn bad(flag: &'static str, reason: impl Into<String>) -> ArgsError {
    ArgsError {
        flag,
        reason: reason.into(),
    }
}

fn seconds(flag: &'static str, value: f64) -> Result<Duration, ArgsError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| bad(flag, format!("{value} is not a number of seconds")))
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config, ArgsError> {
        if args.conns == 0 {
            return Err(bad("conns", "must be at least 1"));
        }
        if args.workers == 0 || args.workers > args.conns {
            return Err(bad("workers", "must be between 1 and --conns"));
        }
        let role = match args.worker_index {
            Some(i) if i >= args.workers => {
                return Err(bad("worker-index", "must be below --workers"))
            }
            Some(i) => Role::Worker(i),
            None if args.workers > 1 => Role::Parent,
            None => Role::Single,
        };
        let duration = seconds("duration", args.duration)?;
        let warmup = seconds("warmup", args.warmup)?;
        if duration.is_zero() {
            return Err(bad("duration", "must be positive"));
        }
        if warmup >= duration {
            return Err(bad("warmup", "must be shorter than --duration"));
        }
        if !(args.ramp.is_finite() && args.ramp > 0.0) {
            return Err(bad(
                "ramp",
                "must be a positive number of connects per second",
            ));
        }
        if !(args.churn_rate.is_finite() && args.churn_rate >= 0.0) {
            return Err(bad("churn-rate", "must be zero or more per second"));
        }
        if !(0.0..=1.0).contains(&args.silent_fraction) {
            return Err(bad("silent-fraction", "must be between 0 and 1"));
        }
        if args.interval_ms == Some(0) {
            return Err(bad("interval-ms", "must be positive"));
        }
        let fanout = FanoutConfig::from_args(args, args.admin.is_some())?;
        let total_conns = args.conns;
        if args.transport == Transport::Ws && args.proto != Proto::Lifeline {
            return Err(bad("transport", "ws carries the lifeline protocol only"));
        }
        if args.restart_cmd.is_some() && args.mode != Mode::Restart {
            return Err(bad("restart-cmd", "only restart mode runs it"));
        }
        if args.mode == Mode::Upgrade && args.server_pid.is_none() {
            return Err(bad(
                "server-pid",
                "upgrade mode sends SIGUSR2 to the server: give its pid",
            ));
        }
        if args.backoff_base_ms == 0 || args.backoff_base_ms > args.backoff_cap_ms {
            return Err(bad(
                "backoff-base-ms",
                "must be positive and at most --backoff-cap-ms",
            ));
        }
        let target = resolve("target", &args.target)?;
        let source_ips = match &args.source_ips {
            Some(spec) => parse_source_ips(spec)?,
            None => Vec::new(),
        };
        if source_ips.iter().any(|ip| ip.is_ipv4() != target.is_ipv4()) {
            return Err(bad("source-ips", "address family differs from --target"));
        }
        let admin = match &args.admin {
            Some(url) => Some(AdminUrl::parse(url).map_err(|e| bad("admin", e.to_string()))?),
            None => None,
        };
        if args.mode == Mode::Push {
            if admin.is_none() {
                return Err(bad(
                    "admin",
                    "push mode sends its pushes to --admin http://HOST:PORT",
                ));
            }
            if args.proto != Proto::Lifeline {
                return Err(bad("proto", "push mode needs the lifeline protocol"));
            }
            if !(args.push_rate.is_finite() && args.push_rate > 0.0) {
                return Err(bad(
                    "push-rate",
                    "must be a positive number of pushes per second",
                ));
            }
            if args.push_conns == 0 {
                return Err(bad("push-conns", "must be at least 1"));
            }
        }
        if args
            .admin_token
            .as_ref()
            .is_some_and(|t| t.bytes().any(|b| b.is_ascii_control()))
        {
            return Err(bad("admin-token", "must not contain control characters"));
        }

        let (conns, first_conn, share) = match role {
            Role::Worker(i) => {
                let base = total_conns / args.workers;
                let extra = total_conns % args.workers;
                let conns = base + u32::from(i < extra);
                (
                    conns,
                    i * base + i.min(extra),
                    f64::from(conns) / f64::from(total_conns),
                )
            }
            Role::Single | Role::Parent => (total_conns, 0, 1.0),
        };
        let prefix_ok = (1..=32).contains(&args.id_prefix.len())
            && args
                .id_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b));
        if !prefix_ok {
            return Err(bad(
                "id-prefix",
                "1 to 32 of A-Z a-z 0-9 _ . : @ - (it starts every login id)",
            ));
        }
        let measures_server = matches!(role, Role::Single | Role::Worker(0));

        Ok(Config {
            role,
            target,
            total_conns,
            workers: args.workers,
            conns,
            first_conn,
            source_ips,
            id_prefix: args.id_prefix.clone(),
            ramp: args.ramp * share,
            churn_rate: args.churn_rate * share,
            interval: args.interval_ms.map(Duration::from_millis),
            jitter: Duration::from_millis(args.jitter_ms),
            duration,
            warmup,
            proto: args.proto,
            transport: args.transport,
            tls: crate::tls::setup(&args.tls).map_err(|e| bad("tls", e))?,
            mode: args.mode,
            auth_secret: args.auth_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            silent_fraction: args.silent_fraction,
            silent_after: args.silent_after_ms.map(Duration::from_millis),
            deadline: args.deadline_ms.map(Duration::from_millis),
            admin,
            admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
            push_rate: args.push_rate * share,
            wait_ack_ms: args.wait_ack_ms,
            push_conns: args.push_conns,
            push_padding: args.push_padding,
            fanout,
            server_pid: args.server_pid.filter(|_| measures_server),
            restart_cmd: args.restart_cmd.clone().filter(|_| measures_server),
            backoff_base: Duration::from_millis(args.backoff_base_ms),
            backoff_cap: Duration::from_millis(args.backoff_cap_ms),
            mqtt_keepalive: args.mqtt_keepalive,
            login_timeout: Duration::from_millis(args.login_timeout_ms.max(1)),
            json: args.json,
            start_at_unix_ms: args.start_at_unix_ms,
        })
    }

    /// Source address for the connection with global index `conn`.
    pub fn source_ip(&self, conn: u32) -> Option<IpAddr> {
        if self.source_ips.is_empty() {
            return None;
        }
        self.source_ips
            .get(conn as usize % self.source_ips.len())
            .copied()
    }
}

/// The first address `value` (of `--flag`) resolves to.
pub fn resolve(flag: &'static str, value: &str) -> Result<SocketAddr, ArgsError> {
    let mut addrs = value
        .to_socket_addrs()
        .map_err(|e| bad(flag, format!("{value}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| bad(flag, format!("{value} resolves to no address")))
}

/// Most source addresses a range may expand to.
const MAX_SOURCE_IPS: u32 = 65_536;

/// Parses `N`, `A-B`, a single address, or a comma-separated list of those.
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>, ArgsError> {
    let mut ips = Vec::new();
    for part in spec.split(',').map(str::trim) {
        if let Ok(count) = part.parse::<u32>() {
            if count == 0 || count > 254 {
                return Err(bad("source-ips", "a count must be between 1 and 254"));
            }
            ips.extend((1..=count).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8))));
        } else if let Some((from, to)) = part.split_once('-') {
            let parse = |s: &str| {
                s.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| bad("source-ips", format!("{s:?} is not an IPv4 address")))
            };
            let (from, to) = (u32::from(parse(from)?), u32::from(parse(to)?));
            if from > to || to - from >= MAX_SOURCE_IPS {
                return Err(bad("source-ips", format!("bad range {part:?}")));
            }
            ips.extend((from..=to).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        } else {
            let ip = part.parse::<IpAddr>().map_err(|_| {
                bad(
                    "source-ips",
                    format!("{part:?} is not an address, count or range"),
                )
            })?;
            ips.push(ip);
        }
    }
    Ok(ips)
}

#[cfg(test)]
mod tests;
