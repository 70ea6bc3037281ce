//! The standard `process_*` metrics, read from `/proc/self` when `/metrics`
//! is scraped (never on the loop's hot path): CPU time, resident memory,
//! open and allowed descriptors, start time. Names and meanings follow the
//! Prometheus client libraries, so stock dashboards and alerts work.

use std::fmt::Write as _;

/// Open descriptors. Linux 6.2 and later give the count as the size of
/// `/proc/self/fd`, read in microseconds; listing the directory instead
/// costs about a microsecond per descriptor, on the loop (16 ms per scrape
/// at 16,700 connections). Older kernels say 0 there, and are listed.
fn open_fds() -> u64 {
    match std::fs::metadata("/proc/self/fd") {
        Ok(m) if m.len() > 0 => m.len(),
        // The directory's own descriptor is open while it is read: not counted.
        _ => std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count().saturating_sub(1) as u64)
            .unwrap_or(0),
    }
}

/// One reading of the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Unix time in seconds.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where it is not there (not Linux, or no
    /// procfs mounted), and the metrics are then left out.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields = StatFields::parse(&stat)?;
        // SAFETY: sysconf only reads configuration values.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s))?;
        let open_fds = open_fds();
        let max_fds = rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft);
        Some(ProcessStats {
            cpu_seconds: (fields.utime + fields.stime) as f64 / ticks,
            resident_bytes: fields.rss_pages * page,
            virtual_bytes: fields.vsize,
            open_fds,
            max_fds,
            start_time_seconds: boot_time as f64 + fields.starttime as f64 / ticks,
        })
    }

    /// The Prometheus text of every `process_*` metric.
    pub fn render(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            &self.cpu_seconds,
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            &self.resident_bytes,
        );
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            &self.virtual_bytes,
        );
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            &self.open_fds,
        );
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft limit).",
            &self.max_fds,
        );
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            &self.start_time_seconds,
        );
    }
}

/// The fields of `/proc/self/stat` used here (proc(5) numbering).
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

impl StatFields {
    fn parse(stat: &str) -> Option<StatFields> {
        // The command name (field 2) is in parentheses and may hold spaces
        // and parentheses itself: the fields proper start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        // `rest` starts at field 3 (state): field n is at index n - 3.
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(StatFields {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// `btime` of `/proc/stat`: when the machine booted, in unix seconds.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_an_awkward_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 \
                    12345 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            StatFields::parse(stat),
            Some(StatFields {
                utime: 250,
                stime: 50,
                starttime: 12345,
                vsize: 987_654_321,
                rss_pages: 2048,
            })
        );
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn the_descriptor_count_sees_descriptors_held() {
        // Other tests of this binary open and close files meanwhile, so no
        // exact count can be compared; the ones held here are a floor.
        let held: Vec<std::fs::File> = (0..300)
            .map(|_| std::fs::File::open("/dev/null").expect("open /dev/null"))
            .collect();
        let counted = open_fds();
        assert!(
            counted >= held.len() as u64,
            "{counted} with {} held",
            held.len()
        );
    }

    #[test]
    fn this_process_reads_as_itself() {
        let stats = ProcessStats::read().expect("procfs on Linux");
        assert!(stats.resident_bytes > 0 && stats.open_fds >= 3, "{stats:?}");
        assert!(stats.max_fds >= stats.open_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 3600.0);
    }
}
