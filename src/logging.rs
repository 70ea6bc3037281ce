//! The log: one line per record on stderr, as text (the default, what an
//! operator reads) or as one JSON object (what a log pipeline parses), with
//! a level per module (`LIFELINE_LOG=info,lifeline::admin=debug`).
//!
//! Events that a pipeline filters on (online, offline, accepted) carry their
//! facts as `log` key-values (`info!(id = .., conn = ..; "online")`). Text
//! renders them after the message as ` key=value`, which reads exactly as the
//! lines always did (`online id=alice peer=127.0.0.1:5 conn=1`); JSON makes
//! each a field of the object, numbers as numbers. A floating-point field is
//! a duration in seconds (the only kind this server logs): JSON carries the
//! number, text writes it with three decimals and its unit (`lived=6.202s`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{self, Key, Value, VisitSource, VisitValue};
use log::{LevelFilter, Log, Metadata, Record};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `2025-01-31T12:00:00.000Z INFO  [lifeline::server] message key=value`
    Text,
    /// `{"time":"...","level":"INFO","target":"...","message":"...","key":value}`
    Json,
}

impl LogFormat {
    pub fn parse(value: &str) -> Option<LogFormat> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// A default level and levels for modules: `info,lifeline::admin=debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    pub default: LevelFilter,
    /// (module path, level), longest path first so the most specific wins.
    pub modules: Vec<(String, LevelFilter)>,
}

impl LogSpec {
    /// Parses comma-separated entries: a bare level is the default (the last
    /// one counts), `module::path=level` a module's level (it and its
    /// submodules). `None` names no problem; the caller reports the value.
    pub fn parse(value: &str) -> Option<LogSpec> {
        let mut spec = LogSpec {
            default: LevelFilter::Info,
            modules: Vec::new(),
        };
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                None => spec.default = entry.parse().ok()?,
                Some((module, level)) => {
                    let module = module.trim();
                    let valid = !module.is_empty()
                        && module
                            .split("::")
                            .all(|part| !part.is_empty() && part.chars().all(is_ident_char));
                    if !valid {
                        return None;
                    }
                    let level = level.trim().parse().ok()?;
                    spec.modules.retain(|(m, _)| m != module);
                    spec.modules.push((module.to_string(), level));
                }
            }
        }
        spec.modules
            .sort_by_key(|(module, _)| std::cmp::Reverse(module.len()));
        Some(spec)
    }

    /// The level in force for a record's target (a module path).
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.modules
            .iter()
            .find(|(module, _)| {
                target
                    .strip_prefix(module.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map_or(self.default, |(_, level)| *level)
    }

    /// The most verbose level any module gets: `log`'s global filter.
    pub fn max(&self) -> LevelFilter {
        self.modules
            .iter()
            .map(|(_, level)| *level)
            .fold(self.default, std::cmp::max)
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The process's logger.
pub struct Logger {
    spec: LogSpec,
    format: LogFormat,
}

impl Logger {
    pub fn new(spec: LogSpec, format: LogFormat) -> Logger {
        Logger { spec, format }
    }

    /// Installs the logger for the process.
    pub fn init(self) -> Result<(), log::SetLoggerError> {
        let max = self.spec.max();
        // One logger for the life of the process: leaking it is the point.
        log::set_logger(Box::leak(Box::new(self)))?;
        log::set_max_level(max);
        Ok(())
    }

    /// One record as its line, newline included.
    pub fn line(&self, record: &Record<'_>, now: SystemTime) -> String {
        let mut line = String::with_capacity(160);
        let time = utc_timestamp(now);
        match self.format {
            LogFormat::Text => {
                let _ = write!(
                    line,
                    "{time} {:<5} [{}] {}",
                    record.level(),
                    record.target(),
                    record.args()
                );
                let _ = record.key_values().visit(&mut TextFields(&mut line));
            }
            LogFormat::Json => {
                line.push_str("{\"time\":");
                push_json_str(&mut line, &time);
                line.push_str(",\"level\":");
                push_json_str(&mut line, record.level().as_str());
                line.push_str(",\"target\":");
                push_json_str(&mut line, record.target());
                line.push_str(",\"message\":");
                push_json_str(&mut line, &record.args().to_string());
                let _ = record.key_values().visit(&mut JsonFields(&mut line));
                line.push('}');
            }
        }
        line.push('\n');
        line
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.spec.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.line(record, SystemTime::now());
        // One write per line, so lines from a panic hook never interleave mid-line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// ` key=value` after the message.
struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let _ = write!(self.0, " {key}=");
        value.visit(TextValue(self.0))
    }
}

struct TextValue<'a>(&'a mut String);

impl<'v> VisitValue<'v> for TextValue<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), kv::Error> {
        let _ = write!(self.0, "{value}");
        Ok(())
    }

    fn visit_f64(&mut self, seconds: f64) -> Result<(), kv::Error> {
        let _ = write!(self.0, "{seconds:.3}s");
        Ok(())
    }
}

/// `,"key":value` inside the object.
struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        self.0.push(',');
        push_json_str(self.0, key.as_str());
        self.0.push(':');
        value.visit(JsonValue(self.0))
    }
}

struct JsonValue<'a>(&'a mut String);

impl<'v> VisitValue<'v> for JsonValue<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), kv::Error> {
        push_json_str(self.0, &value.to_string());
        Ok(())
    }

    fn visit_u64(&mut self, n: u64) -> Result<(), kv::Error> {
        let _ = write!(self.0, "{n}");
        Ok(())
    }

    fn visit_i64(&mut self, n: i64) -> Result<(), kv::Error> {
        let _ = write!(self.0, "{n}");
        Ok(())
    }

    fn visit_f64(&mut self, n: f64) -> Result<(), kv::Error> {
        match serde_json::Number::from_f64(n) {
            Some(n) => {
                let _ = write!(self.0, "{n}");
            }
            None => self.0.push_str("null"), // NaN and infinities have no JSON form
        }
        Ok(())
    }

    fn visit_bool(&mut self, b: bool) -> Result<(), kv::Error> {
        self.0.push_str(if b { "true" } else { "false" });
        Ok(())
    }

    fn visit_str(&mut self, s: &str) -> Result<(), kv::Error> {
        push_json_str(self.0, s);
        Ok(())
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json's escaping: quotes, backslashes and control characters.
    out.push_str(&serde_json::Value::from(s).to_string());
}

/// `2025-01-31T12:00:00.123Z`.
pub fn utc_timestamp(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn specs_parse_and_the_most_specific_module_wins() {
        let spec = LogSpec::parse("warn,lifeline::admin=debug,lifeline=info").unwrap();
        assert_eq!(spec.default, LevelFilter::Warn);
        assert_eq!(
            spec.level_for("lifeline::admin::routes"),
            LevelFilter::Debug
        );
        assert_eq!(spec.level_for("lifeline::admin"), LevelFilter::Debug);
        assert_eq!(spec.level_for("lifeline::administer"), LevelFilter::Info);
        assert_eq!(spec.level_for("lifeline::server"), LevelFilter::Info);
        assert_eq!(spec.level_for("mio::poll"), LevelFilter::Warn);
        assert_eq!(spec.max(), LevelFilter::Debug);
        assert_eq!(LogSpec::parse("debug").unwrap().modules, vec![]);
        assert_eq!(LogSpec::parse("").unwrap().default, LevelFilter::Info);
        for bad in [
            "loud",
            "lifeline=loud",
            "=debug",
            "lifeline::=info",
            "a b=info",
        ] {
            assert_eq!(LogSpec::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms);
        assert_eq!(utc_timestamp(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            utc_timestamp(at(951_782_400, 7)),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(
            utc_timestamp(at(1_735_689_599, 999)),
            "2024-12-31T23:59:59.999Z"
        );
    }

    fn render(format: LogFormat, record: &Record<'_>) -> String {
        Logger::new(LogSpec::parse("info").unwrap(), format).line(record, at_epoch())
    }

    fn at_epoch() -> SystemTime {
        UNIX_EPOCH
    }

    #[test]
    fn fields_render_as_key_value_in_text_and_as_members_in_json() {
        let fields: [(&str, Value<'_>); 4] = [
            ("id", Value::from("al\"ice")),
            ("reason", Value::from("timeout")),
            ("lived", Value::from(6.2024)),
            ("conn", Value::from(7u32)),
        ];
        let args = format_args!("offline");
        let record = Record::builder()
            .args(args)
            .level(log::Level::Info)
            .target("lifeline::server::core")
            .key_values(&fields)
            .build();
        assert_eq!(
            render(LogFormat::Text, &record),
            "1970-01-01T00:00:00.000Z INFO  [lifeline::server::core] offline \
             id=al\"ice reason=timeout lived=6.202s conn=7\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(LogFormat::Json, &record)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "time": "1970-01-01T00:00:00.000Z", "level": "INFO",
                "target": "lifeline::server::core", "message": "offline",
                "id": "al\"ice", "reason": "timeout", "lived": 6.2024, "conn": 7
            })
        );
    }
}
