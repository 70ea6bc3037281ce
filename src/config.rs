//! Configuration: environment variables (each also a flag) → a validated [`Config`].
//!
//! clap only collects the raw strings (so `--help` lists every variable with its
//! default); validation is ours, so that a bad value produces one line naming the
//! variable, the value and what is accepted, and the process exits with code 2.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config_ops::{self, Ops, OpsArgs};
use crate::logging::LogSpec;

use crate::auth::Auth;
use crate::login_policy::{LoginPolicy, RawLoginPolicy};

use crate::cluster::settings::ClusterArgs;
use crate::cluster::ClusterConfig;
use crate::tls::TlsSettings;

/// Descriptors kept free for the listener, the poll instance, signals, logging
/// and the admin side, so that accepting never starves the process itself.
pub const FD_RESERVE: u64 = 64;

/// The largest `max_frame` accepted. A partial frame is parsed again from its
/// start when more of it arrives, so this bounds that work per read as well as
/// the memory one connection's partial frame may hold.
pub const MAX_FRAME_LIMIT: usize = 1 << 20;

/// Raw settings as clap collects them from flags and environment variables.
#[derive(Parser, Debug)]
#[command(
    name = "lifeline",
    version = crate::build_info::LONG_VERSION,
    about = "Keeps many long-lived TCP connections alive with application heartbeats, \
             tracks who is online and pushes messages to them.",
    after_help = "Every option can also be set with the environment variable shown beside it."
)]
pub struct RawConfig {
    /// Address the client listener binds to.
    #[arg(long, env = "LIFELINE_LISTEN", default_value = "0.0.0.0:7070")]
    pub listen: String,

    /// Heartbeat interval in milliseconds: a client silent this long gets a probe [10..=3600000].
    #[arg(long, env = "LIFELINE_HEARTBEAT_MS", default_value = "5000")]
    pub heartbeat_ms: String,

    /// Silent intervals before the server closes the connection [1..=1000].
    #[arg(long, env = "LIFELINE_MISSES", default_value = "5")]
    pub misses: String,

    /// Timer wheel resolution in milliseconds; closes happen at most one tick late, 20 ms more right after all traffic stops [1..=1000, <= heartbeat].
    #[arg(long, env = "LIFELINE_TICK_MS", default_value = "2")]
    pub tick_ms: String,

    /// Most concurrent connections; extra ones get <bye reason="overload"/> [1..=open-file limit minus 64; default: that].
    #[arg(long, env = "LIFELINE_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,

    /// Largest frame in bytes; longer ones get frame-too-large and are closed [64..=1048576].
    #[arg(long, env = "LIFELINE_MAX_FRAME", default_value = "16384")]
    pub max_frame: String,

    /// Bytes queued for one client before it is cut off as slow-consumer [1024..=1073741824].
    #[arg(long, env = "LIFELINE_MAX_OUTBOUND", default_value = "262144")]
    pub max_outbound: String,

    /// Secret for login tokens (lowercase hex HMAC-SHA256(secret, id), or of ID|exp); "NEW,OLD" while rotating; unset or empty: no token check. As a flag it shows in `ps`: prefer LIFELINE_AUTH_SECRET_FILE.
    #[arg(long, env = "LIFELINE_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Kernel TCP keepalive as an extra: "off" or "IDLE,INTERVAL,COUNT" in seconds, e.g. "60,10,5".
    #[arg(long, env = "LIFELINE_TCP_KEEPALIVE", default_value = "off")]
    pub tcp_keepalive: String,

    /// Log level [off, error, warn, info, debug, trace], then optional MODULE=LEVEL entries, comma-separated: info,lifeline::admin=debug.
    #[arg(long, env = "LIFELINE_LOG", default_value = "info")]
    pub log: String,

    /// Listen backlog for connection bursts [1..=65535].
    #[arg(long, env = "LIFELINE_BACKLOG", default_value = "4096")]
    pub backlog: String,

    /// Bind the listeners with SO_REUSEPORT, so several processes share one port and the kernel spreads connections [0, 1].
    #[arg(long, env = "LIFELINE_REUSEPORT", default_value = "0")]
    pub reuseport: String,

    /// Admin HTTP API address (same loop as the clients); empty disables it.
    #[arg(long, env = "LIFELINE_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: String,

    /// Bearer token every admin endpoint but /healthz requires; required for a non-loopback admin address. As a flag it shows in `ps`: prefer LIFELINE_ADMIN_TOKEN_FILE.
    #[arg(long, env = "LIFELINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Presence events kept for consumers that resume with Last-Event-ID [0..=10000000].
    #[arg(long, env = "LIFELINE_EVENT_BACKLOG", default_value = "100000")]
    pub event_backlog: String,

    /// Clients told to reconnect (shutdown, overload, timeout) wait a random time up to this, in ms; 0: no advice [0..=3600000].
    #[arg(long, env = "LIFELINE_RECONNECT_SPREAD_MS", default_value = "10000")]
    pub reconnect_spread_ms: String,

    /// How long a push's receipt (GET /messages/{id}) is kept, in ms [1000..=604800000].
    #[arg(long, env = "LIFELINE_RECEIPT_TTL_MS", default_value = "3600000")]
    pub receipt_ttl_ms: String,

    /// Pushes held per offline client (push with ?queue_ttl_ms) before 507 [0..=100000].
    #[arg(long, env = "LIFELINE_QUEUE_MAX_PER_CLIENT", default_value = "100")]
    pub queue_max_per_client: String,

    /// Bytes held for all offline clients together before 507 [0..=4294967296].
    #[arg(long, env = "LIFELINE_QUEUE_MAX_BYTES", default_value = "67108864")]
    pub queue_max_bytes: String,

    /// Binary SIGUSR2 (or `lifeline upgrade --pid`) hands every client to; default: the path this process was started from.
    #[arg(long, env = "LIFELINE_UPGRADE_BIN")]
    pub upgrade_bin: Option<String>,

    /// How long the new binary has to start, and then to take the state, before this process gives up the upgrade and serves on, in ms [100..=600000].
    #[arg(long, env = "LIFELINE_UPGRADE_TIMEOUT_MS", default_value = "5000")]
    pub upgrade_timeout_ms: String,

    /// On SIGINT/SIGTERM, how long to keep flushing <bye reason="shutdown"/> before exiting, in ms [0..=60000].
    #[arg(long, env = "LIFELINE_DRAIN_MS", default_value = "1000")]
    pub drain_ms: String,

    /// Production settings: log format, secret files, admin limit, demo page, origins.
    #[command(flatten)]
    pub ops: OpsArgs,

    /// What a client may ask for at login: its heartbeat range, token expiry.
    #[command(flatten)]
    pub login: RawLoginPolicy,

    /// Cluster mode: Redis, the node's id and TTL, `--workers`.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// TLS on the client port: the certificate chain (PEM); needs LIFELINE_TLS_KEY. Unset: plaintext. Read again on SIGHUP.
    #[arg(long, env = "LIFELINE_TLS_CERT")]
    pub tls_cert: Option<String>,

    /// TLS: the certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1); needs LIFELINE_TLS_CERT.
    #[arg(long, env = "LIFELINE_TLS_KEY")]
    pub tls_key: Option<String>,

    /// Mutual TLS: clients must present a certificate signed by a CA in this PEM file.
    #[arg(long, env = "LIFELINE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<String>,

    /// With mutual TLS, a login id must be the client certificate's CN or one of its DNS SANs [0, 1].
    #[arg(long, env = "LIFELINE_TLS_ID_FROM_CERT", default_value = "0")]
    pub tls_id_from_cert: String,

    /// TLS handshakes in progress at once; more new connections wait in the listen backlog [1..=100000].
    #[arg(long, env = "LIFELINE_TLS_MAX_HANDSHAKES", default_value = "256")]
    pub tls_max_handshakes: String,
}

/// Kernel keepalive settings, applied to every accepted socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub heartbeat: Duration,
    pub misses: u32,
    pub tick: Duration,
    /// `None`: derived from the open-file limit at start-up.
    pub max_connections: Option<usize>,
    pub max_frame: usize,
    pub max_outbound: usize,
    /// `None`: no token check.
    pub auth: Option<Auth>,
    /// What a client may ask for at login (heartbeat range, token expiry).
    pub login: LoginPolicy,
    pub tcp_keepalive: Option<Keepalive>,
    /// The default level and the levels of modules.
    pub log: LogSpec,
    pub backlog: i32,
    /// Listeners bind with SO_REUSEPORT.
    pub reuseport: bool,
    pub drain: Duration,
    /// `None`: the admin API is disabled.
    pub admin_addr: Option<SocketAddr>,
    pub admin_token: Option<Vec<u8>>,
    pub event_backlog: usize,
    /// Upper bound of the `retry-ms` advice; zero: none is given.
    pub reconnect_spread: Duration,
    pub receipt_ttl: Duration,
    pub queue_max_per_client: usize,
    pub queue_max_bytes: usize,
    /// `None`: the path this process was started from.
    pub upgrade_bin: Option<PathBuf>,
    pub upgrade_timeout: Duration,
    pub ops: Ops,
    /// `None`: the client port speaks plaintext.
    pub tls: Option<TlsSettings>,
    /// Cluster mode (`LIFELINE_REDIS_URL` set).
    pub cluster: Option<ClusterConfig>,
    /// `--workers N`: this process supervises N workers.
    pub workers: Option<u32>,
}

/// A setting that could not be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad value {value:?} for {var} (--{flag}): expected {accepted}")]
pub struct ConfigError {
    pub var: &'static str,
    pub flag: &'static str,
    pub value: String,
    pub accepted: String,
}

impl Config {
    /// Reads flags and environment; `--help` and `--version` print and exit 0,
    /// anything else wrong prints one line and exits 2.
    pub fn from_env_and_args() -> Config {
        let raw = match RawConfig::try_parse() {
            Ok(raw) => raw,
            Err(e) => {
                use clap::error::ErrorKind;
                if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                    let _ = e.print();
                    std::process::exit(0);
                }
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("bad arguments");
                eprintln!("lifeline: {first} (see lifeline --help)");
                std::process::exit(2);
            }
        };
        match Config::validate(&raw) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("lifeline: {e}");
                std::process::exit(2);
            }
        }
    }

    /// Checks every raw value; the first bad one is reported.
    pub fn validate(raw: &RawConfig) -> Result<Config, ConfigError> {
        let heartbeat_ms = int_in(
            &raw.heartbeat_ms,
            10,
            3_600_000,
            "LIFELINE_HEARTBEAT_MS",
            "heartbeat-ms",
        )?;
        let tick_ms = int_in(&raw.tick_ms, 1, 1000, "LIFELINE_TICK_MS", "tick-ms")?;
        if tick_ms > heartbeat_ms {
            return Err(ConfigError {
                var: "LIFELINE_TICK_MS",
                flag: "tick-ms",
                value: raw.tick_ms.clone(),
                accepted: format!("at most the heartbeat interval ({heartbeat_ms} ms)"),
            });
        }
        let max_connections = match &raw.max_connections {
            None => None,
            Some(v) => Some(int_in(
                v,
                1,
                10_000_000,
                "LIFELINE_MAX_CONNECTIONS",
                "max-connections",
            )? as usize),
        };
        let admin_addr = match raw.admin_addr.trim() {
            "" => None,
            addr => Some(socket_addr(addr, "LIFELINE_ADMIN_ADDR", "admin-addr")?),
        };
        let admin_token = config_ops::secret(
            raw.admin_token.as_deref(),
            raw.ops.admin_token_file.as_deref(),
            &config_ops::ADMIN_TOKEN,
        )?;
        if let Some(addr) = admin_addr {
            if !addr.ip().is_loopback() && admin_token.is_none() {
                return Err(ConfigError {
                    var: "LIFELINE_ADMIN_ADDR",
                    flag: "admin-addr",
                    value: raw.admin_addr.clone(),
                    accepted:
                        "a loopback address (127.0.0.0/8, ::1), or set LIFELINE_ADMIN_TOKEN \
                               (or LIFELINE_ADMIN_TOKEN_FILE) so the API is not open to the network"
                            .to_string(),
                });
            }
        }
        let auth_secret = config_ops::secret(
            raw.auth_secret.as_deref(),
            raw.ops.auth_secret_file.as_deref(),
            &config_ops::AUTH_SECRET,
        )?;
        let auth_secret = match auth_secret {
            None => None,
            Some(bytes) => Some(String::from_utf8(bytes).map_err(|_| ConfigError {
                var: "LIFELINE_AUTH_SECRET",
                flag: "auth-secret",
                value: "<hidden>".to_string(),
                accepted: "UTF-8 text".to_string(),
            })?),
        };
        let auth_secret = auth_secret.as_deref();
        let login =
            LoginPolicy::validate(&raw.login, heartbeat_ms, tick_ms, auth_secret.is_some())?;
        let auth = match auth_secret {
            None => None,
            Some(secret) => Some(Auth::parse(secret, login.auth_require_exp).map_err(|e| {
                ConfigError {
                    var: "LIFELINE_AUTH_SECRET",
                    flag: "auth-secret",
                    // Never echo a secret.
                    value: "<hidden>".to_string(),
                    accepted: e.to_string(),
                }
            })?),
        };
        let tls = crate::tls::settings(raw)?;
        let event_backlog = int_in(
            &raw.event_backlog,
            0,
            10_000_000,
            "LIFELINE_EVENT_BACKLOG",
            "event-backlog",
        )? as usize;
        let (cluster, workers) = crate::cluster::settings::settings(&raw.cluster, event_backlog)?;
        Ok(Config {
            cluster,
            workers,
            tls,
            auth,
            login,
            receipt_ttl: Duration::from_millis(int_in(
                &raw.receipt_ttl_ms,
                1000,
                604_800_000,
                "LIFELINE_RECEIPT_TTL_MS",
                "receipt-ttl-ms",
            )?),
            queue_max_per_client: int_in(
                &raw.queue_max_per_client,
                0,
                100_000,
                "LIFELINE_QUEUE_MAX_PER_CLIENT",
                "queue-max-per-client",
            )? as usize,
            queue_max_bytes: int_in(
                &raw.queue_max_bytes,
                0,
                1 << 32,
                "LIFELINE_QUEUE_MAX_BYTES",
                "queue-max-bytes",
            )? as usize,
            event_backlog,
            reconnect_spread: Duration::from_millis(int_in(
                &raw.reconnect_spread_ms,
                0,
                3_600_000,
                "LIFELINE_RECONNECT_SPREAD_MS",
                "reconnect-spread-ms",
            )?),
            admin_addr,
            admin_token,
            listen: socket_addr(&raw.listen, "LIFELINE_LISTEN", "listen")?,
            heartbeat: Duration::from_millis(heartbeat_ms),
            misses: int_in(&raw.misses, 1, 1000, "LIFELINE_MISSES", "misses")? as u32,
            tick: Duration::from_millis(tick_ms),
            max_connections,
            max_frame: int_in(
                &raw.max_frame,
                64,
                MAX_FRAME_LIMIT as u64,
                "LIFELINE_MAX_FRAME",
                "max-frame",
            )? as usize,
            max_outbound: int_in(
                &raw.max_outbound,
                1024,
                1 << 30,
                "LIFELINE_MAX_OUTBOUND",
                "max-outbound",
            )? as usize,
            tcp_keepalive: keepalive(&raw.tcp_keepalive)?,
            log: config_ops::log_spec(&raw.log)?,
            backlog: int_in(&raw.backlog, 1, 65_535, "LIFELINE_BACKLOG", "backlog")? as i32,
            reuseport: int_in(&raw.reuseport, 0, 1, "LIFELINE_REUSEPORT", "reuseport")? == 1,
            upgrade_bin: raw
                .upgrade_bin
                .as_ref()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            upgrade_timeout: Duration::from_millis(int_in(
                &raw.upgrade_timeout_ms,
                100,
                600_000,
                "LIFELINE_UPGRADE_TIMEOUT_MS",
                "upgrade-timeout-ms",
            )?),
            drain: Duration::from_millis(int_in(
                &raw.drain_ms,
                0,
                60_000,
                "LIFELINE_DRAIN_MS",
                "drain-ms",
            )?),
            ops: Ops::validate(&raw.ops)?,
        })
    }

    /// Silence after which a connection is closed: `heartbeat × misses`.
    pub fn deadline(&self) -> Duration {
        self.heartbeat * self.misses
    }
}

pub(crate) fn int_in(
    value: &str,
    min: u64,
    max: u64,
    var: &'static str,
    flag: &'static str,
) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError {
            var,
            flag,
            value: value.to_string(),
            accepted: format!("a whole number from {min} to {max}"),
        }),
    }
}

fn socket_addr(
    value: &str,
    var: &'static str,
    flag: &'static str,
) -> Result<SocketAddr, ConfigError> {
    let err = || ConfigError {
        var,
        flag,
        value: value.to_string(),
        accepted: "HOST:PORT, e.g. 0.0.0.0:7070, [::1]:7070 or localhost:7070".to_string(),
    };
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    value
        .to_socket_addrs()
        .map_err(|_| err())?
        .next()
        .ok_or_else(err)
}

fn keepalive(value: &str) -> Result<Option<Keepalive>, ConfigError> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") || v.is_empty() {
        return Ok(None);
    }
    let err = || ConfigError {
        var: "LIFELINE_TCP_KEEPALIVE",
        flag: "tcp-keepalive",
        value: value.to_string(),
        accepted: "\"off\" or IDLE,INTERVAL,COUNT in seconds (each 1 to 32767), e.g. 60,10,5"
            .to_string(),
    };
    let mut parts = v.split(',').map(|p| p.trim().parse::<u32>());
    let (Some(Ok(idle)), Some(Ok(interval)), Some(Ok(count)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(err());
    };
    if [idle, interval, count]
        .iter()
        .any(|n| !(1..=32_767).contains(n))
    {
        return Err(err());
    }
    Ok(Some(Keepalive {
        idle: Duration::from_secs(idle.into()),
        interval: Duration::from_secs(interval.into()),
        count,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(args: &[&str]) -> RawConfig {
        let mut argv = vec!["lifeline"];
        argv.extend_from_slice(args);
        RawConfig::try_parse_from(argv).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::validate(&raw(&[])).unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(5000));
        assert_eq!(c.misses, 5);
        assert_eq!(c.deadline(), Duration::from_secs(25));
        assert_eq!(c.max_frame, 16384);
        assert_eq!(c.tcp_keepalive, None);
        assert_eq!(c.backlog, 4096);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = Config::validate(&raw(&["--heartbeat-ms", "abc"])).unwrap_err();
        assert_eq!(e.var, "LIFELINE_HEARTBEAT_MS");
        assert!(e.to_string().contains("\"abc\""));
        assert!(e.to_string().contains("from 10 to 3600000"));
        let e = Config::validate(&raw(&["--tick-ms", "100", "--heartbeat-ms", "50"])).unwrap_err();
        assert_eq!(e.var, "LIFELINE_TICK_MS");
        let e = Config::validate(&raw(&["--tcp-keepalive", "60,10"])).unwrap_err();
        assert_eq!(e.var, "LIFELINE_TCP_KEEPALIVE");
        let e = Config::validate(&raw(&["--listen", "nowhere"])).unwrap_err();
        assert_eq!(e.var, "LIFELINE_LISTEN");
        let e = Config::validate(&raw(&["--log", "loud"])).unwrap_err();
        assert_eq!(e.var, "LIFELINE_LOG");
    }

    #[test]
    fn an_open_admin_address_needs_a_token() {
        let e = Config::validate(&raw(&["--admin-addr", "0.0.0.0:9090"])).unwrap_err();
        assert_eq!(e.var, "LIFELINE_ADMIN_ADDR");
        assert!(e.to_string().contains("LIFELINE_ADMIN_TOKEN"));
        let c = Config::validate(&raw(&[
            "--admin-addr",
            "0.0.0.0:9090",
            "--admin-token",
            "t",
        ]));
        assert!(c.is_ok());
        let c = Config::validate(&raw(&["--admin-addr", ""])).unwrap();
        assert_eq!(c.admin_addr, None);
    }

    #[test]
    fn two_secrets_rotate_and_a_bad_list_hides_them() {
        let c = Config::validate(&raw(&["--auth-secret", "new,old"])).unwrap();
        assert!(c.auth.is_some());
        let e = Config::validate(&raw(&["--auth-secret", "hunter2,,x"])).unwrap_err();
        assert_eq!(e.var, "LIFELINE_AUTH_SECRET");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Config::validate(&raw(&["--auth-require-exp", "1"])).unwrap_err();
        assert_eq!(e.var, "LIFELINE_AUTH_REQUIRE_EXP");
    }

    #[test]
    fn keepalive_parses() {
        let c = Config::validate(&raw(&["--tcp-keepalive", "60,10,5"])).unwrap();
        assert_eq!(
            c.tcp_keepalive,
            Some(Keepalive {
                idle: Duration::from_secs(60),
                interval: Duration::from_secs(10),
                count: 5
            })
        );
    }
}
