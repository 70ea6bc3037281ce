//! Looking at the server from outside: its CPU time and RSS from `/proc`, and
//! the `lifeline_clients_online` gauge from its admin endpoint.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::stats::ServerUsage;

/// CPU time of a process, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTime {
    pub total_us: u64,
    pub user_us: u64,
}

/// A `/proc` file that did not hold what the kernel documents.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("{path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: unexpected format")]
    Format { path: String },
}

fn read_proc(path: String) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// utime and stime of `pid` (fields 14 and 15 of `/proc/PID/stat`).
pub fn cpu_time(pid: u32) -> Result<CpuTime, ProcError> {
    let path = format!("/proc/{pid}/stat");
    let stat = read_proc(path.clone())?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields we want are counted from the last ')'.
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| ProcError::Format { path: path.clone() })?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, ProcError> {
        // Field 3 (state) is the first one after the name.
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| ProcError::Format { path: path.clone() })
    };
    let (utime, stime) = (field(14)?, field(15)?);
    let hz = clock_ticks_per_second();
    Ok(CpuTime {
        total_us: (utime + stime) * 1_000_000 / hz,
        user_us: utime * 1_000_000 / hz,
    })
}

/// VmRSS and RssAnon of `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kb(pid: u32) -> Result<(u64, Option<u64>), ProcError> {
    let path = format!("/proc/{pid}/status");
    let status = read_proc(path.clone())?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let vm_rss = field("VmRSS").ok_or(ProcError::Format { path })?;
    Ok((vm_rss, field("RssAnon")))
}

/// Measures a server process over a window: start it, end it.
pub struct ServerProbe {
    pid: u32,
    at_start: Option<CpuTime>,
}

impl ServerProbe {
    pub fn new(pid: u32) -> Self {
        ServerProbe {
            pid,
            at_start: None,
        }
    }

    /// Reads the CPU times at the start of the window.
    pub fn begin(&mut self) -> Result<(), ProcError> {
        self.at_start = Some(cpu_time(self.pid)?);
        Ok(())
    }

    /// Reads CPU times and RSS at the end of the window.
    pub fn end(&self) -> Result<ServerUsage, ProcError> {
        let now = cpu_time(self.pid)?;
        let start = self.at_start.unwrap_or(now);
        let (rss_kb, rss_anon_kb) = rss_kb(self.pid)?;
        Ok(ServerUsage {
            cpu_us: now.total_us.saturating_sub(start.total_us),
            user_us: now.user_us.saturating_sub(start.user_us),
            rss_kb,
            rss_anon_kb,
        })
    }
}

/// Where the admin endpoint listens (`http://HOST:PORT`, any path ignored).
#[derive(Debug, Clone)]
pub struct AdminUrl {
    pub addr: SocketAddr,
    pub host: String,
}

/// The admin endpoint could not be asked or did not answer usefully.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("expected http://HOST:PORT, got {0:?}")]
    BadUrl(String),
    #[error("{0}: cannot resolve")]
    Resolve(String),
    #[error("GET /metrics: {0}")]
    Io(#[from] io::Error),
    #[error("GET /metrics: {0}")]
    Status(String),
    #[error("GET /metrics: no lifeline_clients_online sample")]
    NoSample,
}

impl AdminUrl {
    pub fn parse(url: &str) -> Result<AdminUrl, AdminError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| AdminError::BadUrl(url.to_string()))?;
        let host = rest.split('/').next().unwrap_or(rest);
        if host.is_empty() {
            return Err(AdminError::BadUrl(url.to_string()));
        }
        let addr = host
            .to_socket_addrs()
            .map_err(|_| AdminError::Resolve(host.to_string()))?
            .next()
            .ok_or_else(|| AdminError::Resolve(host.to_string()))?;
        Ok(AdminUrl {
            addr,
            host: host.to_string(),
        })
    }
}

/// Upper bound on one metrics request, so a hung endpoint cannot stall the run's end.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the `lifeline_clients_online` gauge with one `GET /metrics`.
pub fn clients_online(admin: &AdminUrl) -> Result<u64, AdminError> {
    let mut stream = TcpStream::connect_timeout(&admin.addr, ADMIN_TIMEOUT)?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        admin.host
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(AdminError::Status(status.to_string()));
    }
    online_sample(&text).ok_or(AdminError::NoSample)
}

/// Finds `lifeline_clients_online[{labels}] VALUE` in a Prometheus text body.
fn online_sample(body: &str) -> Option<u64> {
    body.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("lifeline_clients_online")?;
        let rest = match rest.strip_prefix('{') {
            Some(labels) => &labels[labels.find('}')? + 1..],
            None => rest,
        };
        if !rest.starts_with([' ', '\t']) {
            return None; // a longer metric name
        }
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        (value >= 0.0).then_some(value.round() as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_online_gauge() {
        let body = "HTTP/1.1 200 OK\r\n\r\n# TYPE lifeline_clients_online gauge\n\
                    lifeline_clients_online_max 9\nlifeline_clients_online 42\n";
        assert_eq!(online_sample(body), Some(42));
        assert_eq!(
            online_sample("lifeline_clients_online{shard=\"0\"} 7 1700000000\n"),
            Some(7)
        );
        assert_eq!(online_sample("other 1\n"), None);
    }

    #[test]
    fn reads_our_own_cpu_and_rss() {
        let pid = std::process::id();
        assert!(cpu_time(pid).is_ok());
        assert!(rss_kb(pid).unwrap().0 > 0);
    }

    #[test]
    fn admin_url_needs_http_and_host() {
        assert!(AdminUrl::parse("http://127.0.0.1:9090").is_ok());
        assert!(AdminUrl::parse("http://127.0.0.1:9090/metrics").is_ok());
        assert!(AdminUrl::parse("127.0.0.1:9090").is_err());
    }
}
