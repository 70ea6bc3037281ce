//! `LIFELINE_REDIS_URL`: `redis://[[user]:password@]host[:port][/db]`.
//!
//! The host is resolved once, here, at start-up and before the loop runs
//! (a literal IP needs no lookup at all): the loop never makes a blocking
//! DNS call. A Redis that moves to another address needs a restart of the
//! node (or an IP address in the URL that follows it).

use std::net::{SocketAddr, ToSocketAddrs};

/// Where Redis is and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub addr: SocketAddr,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

/// Why a URL was not accepted (the config error names the variable).
pub const ACCEPTED: &str =
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], e.g. redis://127.0.0.1:6379/0 (HOST resolved once at start)";

pub fn parse(url: &str) -> Option<RedisTarget> {
    let rest = url.trim().strip_prefix("redis://")?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => ((!user.is_empty()).then(|| decode(user)), Some(decode(pass))),
            None => (None, Some(decode(u))),
        },
    };
    let db = match path.trim_end_matches('/') {
        "" => 0,
        n => n.parse().ok()?,
    };
    if hostport.is_empty() {
        return None;
    }
    // Bracketed IPv6 ([::1]:6379) or host[:port].
    let with_port = if hostport.ends_with(']') || !hostport.contains(':') {
        format!("{hostport}:6379")
    } else {
        hostport.to_string()
    };
    let addr = match with_port.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => with_port.to_socket_addrs().ok()?.next()?,
    };
    Some(RedisTarget {
        addr,
        user,
        password,
        db,
    })
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The default node id: host name and process id (unique on a host, and
/// says where a node runs).
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "node" } else { &host };
    format!("{host}-{}", std::process::id())
}

/// A node id must be usable inside Redis key names and channel names.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(t.addr, "127.0.0.1:6380".parse().unwrap());
        assert_eq!(t.db, 2);
        let t = parse("redis://:s%40cret@127.0.0.1").unwrap();
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.addr.port(), 6379);
        let t = parse("redis://me:pw@[::1]:7000").unwrap();
        assert_eq!(t.user.as_deref(), Some("me"));
        assert_eq!(t.addr, "[::1]:7000".parse().unwrap());
        assert!(parse("http://127.0.0.1").is_none());
        assert!(parse("redis://").is_none());
        assert!(parse("redis://127.0.0.1/x").is_none());
        assert!(valid_node_id("host-12.a_b:3"));
        assert!(!valid_node_id("a b") && !valid_node_id(""));
    }
}
