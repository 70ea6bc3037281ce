//! The settings an operator needs in production, beside the server's own
//! (`config.rs` flattens [`OpsArgs`] into its flags): the log format,
//! secrets read from files, the admin API's connection limit, whether the
//! demo page is served, and which origins may open a WebSocket.

use std::time::Duration;

use crate::config::ConfigError;
use crate::logging::{LogFormat, LogSpec};
use crate::origins::OriginPolicy;

/// Admin connections at once, unless `LIFELINE_ADMIN_MAX_CONNECTIONS` says.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 32;
/// The most `LIFELINE_ADMIN_MAX_CONNECTIONS` accepts: the admin API is for a
/// few back ends and scrapers, and each connection takes a descriptor from
/// the clients' share.
pub const ADMIN_MAX_CONNECTIONS_LIMIT: u64 = 4096;

/// Raw settings as clap collects them (flattened into `RawConfig`).
#[derive(clap::Args, Debug)]
pub struct OpsArgs {
    /// Log line format [text, json]: json writes one object a line (time, level, target, message, and the event's fields).
    #[arg(long, env = "LIFELINE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// File holding the login token secret (trailing newline trimmed); keeps it out of `ps` and the environment. Not with LIFELINE_AUTH_SECRET.
    #[arg(long, env = "LIFELINE_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<String>,

    /// File holding the admin API bearer token (trailing newline trimmed). Not with LIFELINE_ADMIN_TOKEN.
    #[arg(long, env = "LIFELINE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<String>,

    /// Admin API connections at once; more are answered 503 and closed [1..=4096].
    #[arg(long, env = "LIFELINE_ADMIN_MAX_CONNECTIONS", default_value = "32")]
    pub admin_max_connections: String,

    /// Serve the demo page (/) and the browser client (/lifeline.js and its modules) on the client port [on, off]; WebSocket upgrades work either way.
    #[arg(long, env = "LIFELINE_DEMO_PAGE", default_value = "on")]
    pub demo_page: String,

    /// Origins allowed to open a WebSocket, comma-separated (e.g. https://app.example.com); empty or *: any. Others get 403.
    #[arg(long, env = "LIFELINE_WS_ORIGINS", default_value = "")]
    pub ws_origins: String,
}

/// The validated production settings.
#[derive(Debug, Clone)]
pub struct Ops {
    pub log_format: LogFormat,
    pub admin_max_connections: usize,
    pub demo_page: bool,
    pub ws_origins: OriginPolicy,
}

impl Ops {
    pub fn validate(raw: &OpsArgs) -> Result<Ops, ConfigError> {
        let log_format = LogFormat::parse(&raw.log_format).ok_or_else(|| ConfigError {
            var: "LIFELINE_LOG_FORMAT",
            flag: "log-format",
            value: raw.log_format.clone(),
            accepted: "text or json".to_string(),
        })?;
        let admin_max_connections = match raw.admin_max_connections.trim().parse::<u64>() {
            Ok(n) if (1..=ADMIN_MAX_CONNECTIONS_LIMIT).contains(&n) => n as usize,
            _ => {
                return Err(ConfigError {
                    var: "LIFELINE_ADMIN_MAX_CONNECTIONS",
                    flag: "admin-max-connections",
                    value: raw.admin_max_connections.clone(),
                    accepted: format!("a whole number from 1 to {ADMIN_MAX_CONNECTIONS_LIMIT}"),
                })
            }
        };
        let demo_page = match raw.demo_page.trim().to_ascii_lowercase().as_str() {
            "on" => true,
            "off" => false,
            _ => {
                return Err(ConfigError {
                    var: "LIFELINE_DEMO_PAGE",
                    flag: "demo-page",
                    value: raw.demo_page.clone(),
                    accepted: "on or off".to_string(),
                })
            }
        };
        let ws_origins = OriginPolicy::parse(&raw.ws_origins).map_err(|entry| ConfigError {
            var: "LIFELINE_WS_ORIGINS",
            flag: "ws-origins",
            value: raw.ws_origins.clone(),
            accepted: format!(
                "comma-separated origins like https://app.example.com or http://localhost:8080 \
                 (scheme and host, no path), null, or * ({entry:?} is not one)"
            ),
        })?;
        Ok(Ops {
            log_format,
            admin_max_connections,
            demo_page,
            ws_origins,
        })
    }
}

/// The level spec of `LIFELINE_LOG`.
pub fn log_spec(value: &str) -> Result<LogSpec, ConfigError> {
    LogSpec::parse(value).ok_or_else(|| ConfigError {
        var: "LIFELINE_LOG",
        flag: "log",
        value: value.to_string(),
        accepted: "a level (off, error, warn, info, debug, trace), optionally followed by \
                   module=level entries, comma-separated, e.g. info,lifeline::admin=debug"
            .to_string(),
    })
}

/// Names of a secret's two settings: the value and the file holding it.
pub struct SecretVars {
    pub var: &'static str,
    pub flag: &'static str,
    pub file_var: &'static str,
    pub file_flag: &'static str,
}

pub const AUTH_SECRET: SecretVars = SecretVars {
    var: "LIFELINE_AUTH_SECRET",
    flag: "auth-secret",
    file_var: "LIFELINE_AUTH_SECRET_FILE",
    file_flag: "auth-secret-file",
};

pub const ADMIN_TOKEN: SecretVars = SecretVars {
    var: "LIFELINE_ADMIN_TOKEN",
    flag: "admin-token",
    file_var: "LIFELINE_ADMIN_TOKEN_FILE",
    file_flag: "admin-token-file",
};

/// A secret from its value or from its file (read now, at start-up; the
/// trailing line break an editor leaves is not part of it). An empty value
/// means unset, as always; an empty or unreadable file is an error, since
/// whoever named the file meant a secret to be there.
pub fn secret(
    value: Option<&str>,
    file: Option<&str>,
    names: &SecretVars,
) -> Result<Option<Vec<u8>>, ConfigError> {
    let value = value.filter(|v| !v.is_empty());
    let Some(path) = file else {
        return Ok(value.map(|v| v.as_bytes().to_vec()));
    };
    let err = |accepted: String| ConfigError {
        var: names.file_var,
        flag: names.file_flag,
        value: path.to_string(),
        accepted,
    };
    if value.is_some() {
        return Err(err(format!(
            "no file while {} (--{}) is set: use one of the two",
            names.var, names.flag
        )));
    }
    let mut bytes = std::fs::read(path).map_err(|e| {
        err(format!(
            "a readable file holding the secret (reading it: {e})"
        ))
    })?;
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(err("a file holding a non-empty secret".to_string()));
    }
    Ok(Some(bytes))
}

/// Descriptors kept beside the clients' for admin connections beyond the
/// default limit (the default ones fit in `config::FD_RESERVE`).
pub fn extra_admin_reserve(admin_max_connections: usize) -> u64 {
    admin_max_connections.saturating_sub(DEFAULT_ADMIN_MAX_CONNECTIONS) as u64
}

/// The close lateness the contract allows: one tick plus 50 ms.
pub fn lateness_bound(tick: Duration) -> Duration {
    tick + Duration::from_millis(50)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_one_place_and_files_lose_their_line_break() {
        let dir = std::env::temp_dir().join(format!("lifeline-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s");
        std::fs::write(&file, "s3cret\r\n\n").unwrap();
        let path = file.to_str().unwrap();
        assert_eq!(
            secret(None, Some(path), &AUTH_SECRET).unwrap(),
            Some(b"s3cret".to_vec())
        );
        assert_eq!(secret(Some(""), None, &AUTH_SECRET).unwrap(), None);
        assert_eq!(
            secret(Some("v"), None, &AUTH_SECRET).unwrap(),
            Some(b"v".to_vec())
        );
        let both = secret(Some("v"), Some(path), &AUTH_SECRET).unwrap_err();
        assert_eq!(both.var, "LIFELINE_AUTH_SECRET_FILE");
        assert!(both.to_string().contains("LIFELINE_AUTH_SECRET"), "{both}");
        std::fs::write(&file, "\n").unwrap();
        let empty = secret(None, Some(path), &ADMIN_TOKEN).unwrap_err();
        assert_eq!(empty.var, "LIFELINE_ADMIN_TOKEN_FILE");
        let missing = dir.join("missing");
        let missing = secret(None, Some(missing.to_str().unwrap()), &ADMIN_TOKEN).unwrap_err();
        assert!(missing.to_string().contains("readable"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
