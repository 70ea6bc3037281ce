use super::*;

fn config(extra: &[&str]) -> Result<Config, ArgsError> {
    let mut argv = vec!["lifeline-load"];
    argv.extend_from_slice(extra);
    Config::from_args(&Args::parse_from(argv))
}

#[test]
fn upgrade_mode_needs_the_server_pid_and_reconnects() {
    let e = config(&["--mode", "upgrade"]).unwrap_err();
    assert!(e.to_string().contains("--server-pid"), "{e}");
    let c = config(&["--mode", "upgrade", "--server-pid", "42"]).unwrap();
    assert_eq!(c.server_pid, Some(42));
    assert!(c.mode.reconnects() && Mode::Restart.reconnects());
    assert!(!Mode::Steady.reconnects());
}

#[test]
fn source_ips_accept_counts_ranges_and_lists() {
    let ips = parse_source_ips("3").unwrap();
    assert_eq!(ips.len(), 3);
    assert_eq!(ips[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let ips = parse_source_ips("127.0.0.1-127.0.0.20").unwrap();
    assert_eq!(ips.len(), 20);
    assert_eq!(ips[19], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20)));
    assert_eq!(
        parse_source_ips("10.0.0.1, 127.0.0.2-127.0.0.3")
            .unwrap()
            .len(),
        3
    );
    assert!(parse_source_ips("127.0.0.9-127.0.0.1").is_err());
    assert!(parse_source_ips("0").is_err());
    assert!(parse_source_ips("localhost").is_err());
}

#[test]
fn workers_split_connections_and_rates() {
    let shares: Vec<(u32, u32)> = (0..3)
        .map(|i| {
            let c = config(&[
                "--conns",
                "10",
                "--workers",
                "3",
                "--worker-index",
                &i.to_string(),
            ])
            .unwrap();
            (c.conns, c.first_conn)
        })
        .collect();
    assert_eq!(shares, vec![(4, 0), (3, 4), (3, 7)]);
    let c = config(&[
        "--conns",
        "10",
        "--workers",
        "2",
        "--worker-index",
        "1",
        "--server-pid",
        "1",
    ])
    .unwrap();
    assert_eq!(c.ramp, 1000.0);
    assert_eq!(c.server_pid, None, "only worker 0 measures the server");
    assert_eq!(
        config(&["--conns", "10", "--workers", "2"]).unwrap().role,
        Role::Parent
    );
}

#[test]
fn bad_values_are_rejected() {
    assert!(config(&["--conns", "0"]).is_err());
    assert!(config(&["--warmup", "5", "--duration", "5"]).is_err());
    assert!(config(&["--silent-fraction", "1.5"]).is_err());
    assert!(config(&["--target", "no-port"]).is_err());
    assert!(config(&["--workers", "4", "--conns", "2"]).is_err());
    assert!(config(&["--mode", "push"]).is_err(), "push needs --admin");
    assert!(config(&[
        "--mode",
        "push",
        "--admin",
        "http://127.0.0.1:1",
        "--push-rate",
        "0"
    ])
    .is_err());
    assert!(config(&[
        "--mode",
        "push",
        "--admin",
        "http://127.0.0.1:1",
        "--proto",
        "redis"
    ])
    .is_err());
    assert!(config(&["--transport", "ws", "--proto", "mqtt"]).is_err());
    assert!(
        config(&["--restart-cmd", "true"]).is_err(),
        "restart mode only"
    );
    assert!(config(&["--mode", "restart", "--backoff-base-ms", "0"]).is_err());
    assert!(config(&[
        "--mode",
        "restart",
        "--backoff-base-ms",
        "2000",
        "--backoff-cap-ms",
        "1000"
    ])
    .is_err());
}

#[test]
fn only_the_measuring_process_runs_the_restart_command() {
    let argv = |index: &str| {
        config(&[
            "--mode",
            "restart",
            "--restart-cmd",
            "true",
            "--conns",
            "4",
            "--workers",
            "2",
            "--worker-index",
            index,
        ])
        .unwrap()
    };
    assert_eq!(argv("0").restart_cmd.as_deref(), Some("true"));
    assert_eq!(argv("1").restart_cmd, None);
    let c = config(&["--transport", "ws", "--mode", "restart"]).unwrap();
    assert_eq!(c.transport, Transport::Ws);
    assert_eq!(c.backoff_base, Duration::from_millis(500));
}

#[test]
fn push_rate_is_split_between_workers() {
    let c = config(&[
        "--mode",
        "push",
        "--admin",
        "http://127.0.0.1:1",
        "--push-rate",
        "500",
        "--conns",
        "10",
        "--workers",
        "2",
        "--worker-index",
        "0",
    ])
    .unwrap();
    assert_eq!(c.push_rate, 250.0);
    assert_eq!(c.push_conns, 8);
}
