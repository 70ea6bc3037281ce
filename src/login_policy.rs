//! What a client may ask for at login (protocol version 1.2), as settings:
//! the range its heartbeat interval may be granted in, and whether its
//! token must expire. Collected by clap beside the rest of the
//! configuration (`config::RawConfig` flattens [`RawLoginPolicy`]) and
//! validated here, with the same one-line errors.

use std::time::Duration;

use clap::Args;

use crate::config::ConfigError;

/// Raw login settings as clap collects them.
#[derive(Args, Debug)]
pub struct RawLoginPolicy {
    /// Shortest heartbeat interval a client may ask for in its login, in ms [10..=3600000, <= LIFELINE_HEARTBEAT_MS; default: that].
    #[arg(long, env = "LIFELINE_HEARTBEAT_MIN_MS")]
    pub heartbeat_min_ms: Option<String>,

    /// Longest heartbeat interval a client may ask for in its login, in ms [>= LIFELINE_HEARTBEAT_MS, <= 3600000; default: that].
    #[arg(long, env = "LIFELINE_HEARTBEAT_MAX_MS")]
    pub heartbeat_max_ms: Option<String>,

    /// 1: a login token must carry exp (tokens without an expiry are refused); needs LIFELINE_AUTH_SECRET [0, 1].
    #[arg(long, env = "LIFELINE_AUTH_REQUIRE_EXP", default_value = "0")]
    pub auth_require_exp: String,
}

/// The validated login settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginPolicy {
    /// A client's asked interval is clamped into `[heartbeat_min, heartbeat_max]`.
    pub heartbeat_min: Duration,
    pub heartbeat_max: Duration,
    pub auth_require_exp: bool,
}

impl LoginPolicy {
    /// The interval a client that asked for `asked_ms` (or nothing) gets:
    /// the server's own interval when it did not ask, otherwise the asked
    /// one clamped into the range.
    pub fn grant_ms(&self, asked_ms: Option<u64>, heartbeat: Duration) -> u64 {
        let min = self.heartbeat_min.as_millis() as u64;
        let max = self.heartbeat_max.as_millis() as u64;
        asked_ms.map_or(heartbeat.as_millis() as u64, |ms| ms.clamp(min, max))
    }

    /// Checks the raw values against the server's interval and tick (the
    /// wheel cannot time an interval shorter than its tick).
    pub fn validate(
        raw: &RawLoginPolicy,
        heartbeat_ms: u64,
        tick_ms: u64,
        has_secret: bool,
    ) -> Result<LoginPolicy, ConfigError> {
        let bound = |value: &Option<String>,
                     var: &'static str,
                     flag: &'static str,
                     (low, high): (u64, u64),
                     what: &str| {
            let Some(value) = value else {
                return Ok(heartbeat_ms);
            };
            match value.trim().parse::<u64>() {
                Ok(n) if (low..=high).contains(&n) => Ok(n),
                _ => Err(ConfigError {
                    var,
                    flag,
                    value: value.clone(),
                    accepted: format!("a whole number from {low} to {high} ({what})"),
                }),
            }
        };
        let min = bound(
            &raw.heartbeat_min_ms,
            "LIFELINE_HEARTBEAT_MIN_MS",
            "heartbeat-min-ms",
            (tick_ms.max(10), heartbeat_ms),
            "at least the tick, at most LIFELINE_HEARTBEAT_MS",
        )?;
        let max = bound(
            &raw.heartbeat_max_ms,
            "LIFELINE_HEARTBEAT_MAX_MS",
            "heartbeat-max-ms",
            (heartbeat_ms, 3_600_000),
            "at least LIFELINE_HEARTBEAT_MS",
        )?;
        let auth_require_exp = match raw.auth_require_exp.trim() {
            "0" => false,
            "1" if has_secret => true,
            other => {
                return Err(ConfigError {
                    var: "LIFELINE_AUTH_REQUIRE_EXP",
                    flag: "auth-require-exp",
                    value: other.to_string(),
                    accepted: if other == "1" {
                        "0 while LIFELINE_AUTH_SECRET is unset (there are no tokens to expire)"
                            .to_string()
                    } else {
                        "0 or 1".to_string()
                    },
                })
            }
        };
        Ok(LoginPolicy {
            heartbeat_min: Duration::from_millis(min),
            heartbeat_max: Duration::from_millis(max),
            auth_require_exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(min: Option<&str>, max: Option<&str>, exp: &str) -> RawLoginPolicy {
        RawLoginPolicy {
            heartbeat_min_ms: min.map(str::to_string),
            heartbeat_max_ms: max.map(str::to_string),
            auth_require_exp: exp.to_string(),
        }
    }

    #[test]
    fn the_range_defaults_to_the_servers_interval() {
        let p = LoginPolicy::validate(&raw(None, None, "0"), 5000, 2, false).unwrap();
        let heartbeat = Duration::from_millis(5000);
        assert_eq!(p.heartbeat_min, heartbeat);
        assert_eq!(p.heartbeat_max, heartbeat);
        // Whatever a client asks, it gets the server's interval.
        for asked in [None, Some(0), Some(100), Some(5000), Some(u64::MAX)] {
            assert_eq!(p.grant_ms(asked, heartbeat), 5000, "{asked:?}");
        }
    }

    #[test]
    fn an_open_range_clamps_what_is_asked() {
        let p =
            LoginPolicy::validate(&raw(Some("1000"), Some("60000"), "0"), 5000, 2, false).unwrap();
        let heartbeat = Duration::from_millis(5000);
        assert_eq!(p.grant_ms(None, heartbeat), 5000);
        assert_eq!(p.grant_ms(Some(30_000), heartbeat), 30_000);
        assert_eq!(p.grant_ms(Some(10), heartbeat), 1000);
        assert_eq!(p.grant_ms(Some(600_000), heartbeat), 60_000);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let check = |r: RawLoginPolicy, secret: bool| {
            LoginPolicy::validate(&r, 5000, 20, secret).unwrap_err().var
        };
        assert_eq!(
            check(raw(Some("6000"), None, "0"), false),
            "LIFELINE_HEARTBEAT_MIN_MS"
        );
        assert_eq!(
            check(raw(Some("15"), None, "0"), false),
            "LIFELINE_HEARTBEAT_MIN_MS",
            "below the tick"
        );
        assert_eq!(
            check(raw(None, Some("4999"), "0"), false),
            "LIFELINE_HEARTBEAT_MAX_MS"
        );
        assert_eq!(
            check(raw(None, Some("x"), "0"), false),
            "LIFELINE_HEARTBEAT_MAX_MS"
        );
        assert_eq!(
            check(raw(None, None, "yes"), true),
            "LIFELINE_AUTH_REQUIRE_EXP"
        );
        let e = LoginPolicy::validate(&raw(None, None, "1"), 5000, 2, false).unwrap_err();
        assert!(e.to_string().contains("LIFELINE_AUTH_SECRET"), "{e}");
        assert!(LoginPolicy::validate(&raw(None, None, "1"), 5000, 2, true).is_ok());
    }
}
