//! `deploy/` checked with the real tools: the systemd unit by
//! `systemd-analyze verify`, the alert rules by `promtool check rules` and
//! their unit tests by `promtool test rules`, the Prometheus configuration by
//! `promtool check config`, a live `/metrics` of the real server (started
//! with the example env file) by `promtool check metrics`; every metric the
//! rules and the dashboard query exists in that scrape, and every dashboard
//! query is valid PromQL. Without the tools (Debian `prometheus`, `systemd`)
//! a test says SKIPPED, except under CI, where it fails.

mod common;
mod opskit;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::ServerProc;
use opskit::{repo, request, scrape, tool, TempDir};

const UNIT: &str = "deploy/systemd/lifeline.service";
const ENV_FILE: &str = "deploy/systemd/lifeline.env";
const RULES: &str = "deploy/prometheus/lifeline-alerts.yml";
const DASHBOARD: &str = "deploy/grafana/lifeline.json";
/// Where the unit expects the binary.
const INSTALLED_BINARY: &str = "/usr/local/bin/lifeline";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs a tool; panics with its output unless it exits 0. Returns stdout
/// and stderr together.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// `KEY=value` settings of a unit or env file (comments and blanks skipped).
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(all: &'a [(String, String)], key: &str) -> &'a str {
    all.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key}="))
}

/// Seconds of a systemd time span such as `15s`, `1min 10s` or `90`.
fn seconds(span: &str) -> u64 {
    span.split_whitespace()
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            let n: u64 = digits.parse().expect("a number");
            match &part[digits.len()..] {
                "" | "s" | "sec" => n,
                "min" | "m" => n * 60,
                unit => panic!("unit {unit}"),
            }
        })
        .sum()
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_outlasts_the_drain() {
    let text = read(UNIT);
    let unit = settings(&text);
    for (key, value) in [
        ("Type", "notify"),
        ("ExecStart", INSTALLED_BINARY),
        // `systemctl reload` upgrades; the new process names itself MAINPID.
        ("ExecReload", "/bin/kill -USR2 $MAINPID"),
        ("NotifyAccess", "all"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("DynamicUser", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(setting(&unit, key), value, "{key}");
    }
    let nofile: u64 = setting(&unit, "LimitNOFILE").parse().unwrap();
    assert!(nofile >= 65_536, "LimitNOFILE={nofile}");
    // The stop timeout outlasts the example's drain and the largest default.
    let env = settings(&read(ENV_FILE));
    let drain_ms: u64 = setting(&env, "LIFELINE_DRAIN_MS").parse().unwrap();
    let stop = seconds(setting(&unit, "TimeoutStopSec"));
    assert!(
        stop * 1000 > drain_ms + 1000,
        "TimeoutStopSec={stop}s is not above LIFELINE_DRAIN_MS={drain_ms}"
    );

    let Some(analyze) = tool("systemd-analyze", "systemd") else {
        return;
    };
    // verify checks that ExecStart names an executable: the copy points at
    // the binary cargo built; everything else is the file as shipped.
    let dir = TempDir::new("unit");
    let copy = dir.path().join("lifeline.service");
    let binary = env!("CARGO_BIN_EXE_lifeline");
    std::fs::write(&copy, text.replace(INSTALLED_BINARY, binary)).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It exits 0 on unknown keys and other warnings: any line is a finding.
    assert!(
        out.status.success() && report.trim().is_empty(),
        "systemd-analyze verify (exit {:?}):\n{report}",
        out.status.code()
    );
    // And it does find them.
    std::fs::write(&copy, format!("{text}\n[Service]\nNoSuchSetting=1\n")).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoSuchSetting"));
}

#[test]
fn alert_rules_and_the_scrape_config_pass_promtool_and_the_rule_tests() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let dir = repo().join("deploy/prometheus");
    run(Command::new(&promtool)
        .args(["check", "rules", "lifeline-alerts.yml"])
        .current_dir(&dir));
    let tests = run(Command::new(&promtool)
        .args(["test", "rules", "lifeline-alerts.test.yml"])
        .current_dir(&dir));
    assert!(tests.contains("SUCCESS"), "{tests}");
    run(Command::new(&promtool)
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
}

/// Metric names a PromQL expression refers to (ours and `process_*`), with
/// histogram suffixes taken off.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("lifeline_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// Every `expr` of the dashboard.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

#[test]
fn a_live_scrape_passes_promtool_and_has_every_metric_the_rules_and_dashboard_query() {
    // The example env file, as an operator would use it; only the
    // addresses (free loopback ports) and the log format (the harness reads
    // text) differ.
    let env = settings(&read(ENV_FILE));
    let mut vars: Vec<(&str, &str)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| {
            !matches!(
                *k,
                "LIFELINE_LISTEN" | "LIFELINE_ADMIN_ADDR" | "LIFELINE_LOG_FORMAT"
            )
        })
        .collect();
    vars.push(("LIFELINE_LOG_FORMAT", "text"));
    let server = ServerProc::start(&vars);
    let admin = server.admin.expect("admin API on");
    // Some traffic, so histograms and labelled series have samples.
    let mut client = server.login("deploy");
    let push = request(admin, "POST", "/clients/deploy/push", "", b"hi");
    assert_eq!(push.status, 202, "{}", push.text());
    assert!(client.expect_frame().starts_with("<msg from=\"admin\""));
    // The demo page is off in the example.
    let page = request(server.addr, "GET", "/", "", b"");
    assert_eq!(page.status, 404);

    let live = scrape(admin, None);
    let families: BTreeSet<String> = live.families().into_iter().collect();
    let mut queried = BTreeSet::new();
    let rules: serde_json::Value = {
        // The rules file is YAML; its `expr:` lines are all that is needed.
        let text = read(RULES);
        let exprs: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_string)
            .collect();
        serde_json::json!(exprs)
    };
    for expr in rules.as_array().unwrap() {
        queried.extend(metric_names(expr.as_str().unwrap()));
    }
    let exprs = dashboard_exprs();
    for expr in &exprs {
        queried.extend(metric_names(expr));
    }
    // Only cluster mode exports lifeline_cluster_up.
    queried.remove("lifeline_cluster_up");
    let missing: Vec<&String> = queried.difference(&families).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{}",
        live.text
    );
    assert!(queried.len() > 30, "{queried:?}");

    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(live.text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lint findings exit non-zero; any output at all is one.
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics:\n{findings}"
    );

    // Every dashboard query parses as PromQL: as recording rules, with
    // Grafana's variables given values.
    let dir = TempDir::new("dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::Value::from(expr)
        ));
    }
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    run(Command::new(&promtool).arg("check").arg("rules").arg(&file));
}

#[test]
fn every_setting_is_in_the_readme_and_the_env_example() {
    let help = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let vars: BTreeSet<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .collect();
    assert!(vars.len() >= 26, "{vars:?}");
    let readme = read("README.md");
    let env = read(ENV_FILE);
    for var in vars {
        assert!(
            readme.contains(&format!("| `{var}` |")),
            "{var} is not in README's configuration table"
        );
        assert!(
            env.contains(&format!("{var}=")),
            "{var} is not in {ENV_FILE}"
        );
    }
}
