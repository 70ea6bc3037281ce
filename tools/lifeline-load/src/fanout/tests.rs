//! The schedule and the bookkeeping, driven by hand; the flags' checks.

use std::time::{Duration, Instant};

use clap::Parser;

use super::bystanders::Sample;
use super::*;
use crate::args::{Args, Config};

fn config(extra: &[&str]) -> Result<Config, String> {
    let mut argv = vec!["lifeline-load", "--mode", "fanout"];
    argv.extend_from_slice(extra);
    Config::from_args(&Args::parse_from(argv)).map_err(|e| e.to_string())
}

fn fanout(subscribers: u32, rate: f64) -> FanoutConfig {
    FanoutConfig {
        subscribers,
        bystanders: 0,
        rate,
        period: Duration::from_secs_f64(1.0 / rate),
        timeout: Duration::from_secs(5),
        bystander_interval: Duration::from_millis(50),
        trigger: None,
    }
}

#[test]
fn the_sequence_survives_the_text() {
    assert_eq!(parse_seq(text(42, 0).as_bytes()), Some(42));
    assert_eq!(parse_seq(text(7, 10).as_bytes()), Some(7));
    assert_eq!(text(7, 3), "lifeline-load fanout 7 ppp");
    assert_eq!(parse_seq(b"lifeline-load push 7"), None);
}

#[test]
fn one_in_flight_and_the_next_at_the_rate_or_when_done() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut b = Broadcasts::new(Some(fanout(3, 10.0)));
    let mut last = [0u64; 3];
    b.subscriber_joined();
    b.subscriber_joined();
    assert!(!b.due(ms(0), ms(0)), "waits for every subscriber");
    b.subscriber_joined();
    assert!(!b.due(ms(0), ms(10)), "and for the warmup");
    assert!(b.due(ms(10), ms(10)));
    assert!(b.triggered(ms(10)), "the first starts the window");
    assert!(!b.due(ms(500), ms(10)), "one in flight");
    b.delivered(&mut last[0], 1, ms(12));
    b.delivered(&mut last[1], 1, ms(15));
    assert_eq!(b.next_wake(), Some(ms(10) + Duration::from_secs(5)));
    b.delivered(&mut last[2], 1, ms(30));
    // Done at 30 ms: the next one waits for the period (100 ms after 10).
    assert!(!b.due(ms(100), ms(10)));
    assert!(b.due(ms(110), ms(10)));
    assert!(!b.triggered(ms(110)));
    // A slow one: done after the period, so the next goes at once.
    for (i, at) in [(0, 120), (1, 200), (2, 400)] {
        b.delivered(&mut last[i], 2, ms(at));
    }
    assert!(b.due(ms(400), ms(10)));
    // A duplicate and a late one.
    b.delivered(&mut last[0], 2, ms(401));
    let r = b.finish(ms(1010));
    assert_eq!((r.triggered, r.completed, r.deliveries), (2, 2, 6));
    assert_eq!((r.reordered, r.late, r.timed_out), (1, 0, 0));
    assert_eq!(r.window_us, 1_000_000);
    assert!(r.first_us.equivalent(r.first_us.min(), 2000));
    assert!(r.last_us.equivalent(r.last_us.max(), 290_000));
}

#[test]
fn a_broadcast_is_given_up_and_a_leaver_is_not_waited_for() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut b = Broadcasts::new(Some(fanout(2, 1.0)));
    let (mut a, mut c) = (0u64, 0u64);
    b.subscriber_joined();
    b.subscriber_joined();
    b.triggered(ms(0));
    b.delivered(&mut a, 1, ms(5));
    // The other leaves without it: the broadcast is complete.
    b.subscriber_left(c, ms(6));
    assert!(b.due(ms(1000), ms(0)));
    b.subscriber_joined();
    b.triggered(ms(1000));
    b.expire(ms(5999));
    assert!(b.during(ms(3000)), "still in flight");
    b.expire(ms(6000));
    assert!(b.during(ms(3000)) && !b.during(ms(6000)));
    b.delivered(&mut c, 2, ms(6001));
    let r = b.finish(ms(7000));
    assert_eq!((r.completed, r.timed_out, r.late), (1, 1, 1));
    assert_eq!(r.missing, 2, "neither had the second when it was given up");
}

#[test]
fn flags_are_checked() {
    assert!(config(&[]).unwrap_err().contains("--admin"));
    let c = config(&[
        "--admin",
        "http://127.0.0.1:1",
        "--conns",
        "10",
        "--bystanders",
        "3",
    ])
    .unwrap();
    assert_eq!(c.conns, 10, "bystanders are not on the engine's loop");
    let f = c.fanout.as_ref().unwrap();
    assert_eq!((f.subscribers, f.bystanders), (10, 3));
    assert!(config(&["--proto", "redis", "--workers", "2"]).is_err());
    assert!(config(&["--proto", "redis", "--broadcast-rate", "0"]).is_err());
    assert!(config(&["--proto", "fanout-floor"])
        .unwrap_err()
        .contains("--trigger"));
    assert!(config(&["--proto", "redis", "--trigger", "127.0.0.1:1"]).is_err());
    assert!(config(&[
        "--proto",
        "fanout-floor",
        "--trigger",
        "127.0.0.1:1",
        "--bystanders",
        "1"
    ])
    .is_err());
    assert!(config(&["--proto", "fanout-floor", "--trigger", "127.0.0.1:1"]).is_ok());
    let steady = Config::from_args(&Args::parse_from([
        "lifeline-load",
        "--proto",
        "fanout-floor",
    ]));
    assert!(steady.is_err(), "the floor is for fanout mode only");
}

#[test]
fn bystander_pongs_are_filed_by_when_their_ping_went() {
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    let mut b = Broadcasts::new(Some(fanout(1, 10.0)));
    let mut last = 0;
    b.subscriber_joined();
    b.triggered(ms(100));
    b.delivered(&mut last, 1, ms(150));
    b.triggered(ms(200));
    b.delivered(&mut last, 2, ms(230));
    b.triggered(ms(300)); // still in flight at the end
    let sample = |at: u64, rtt_us: u64| Sample {
        sent: ms(at),
        rtt_us,
    };
    let measured = Measured {
        samples: vec![
            sample(50, 1), // before the window
            sample(120, 7000),
            sample(170, 2),
            sample(210, 9000),
            sample(250, 3),
            sample(310, 8000),
        ],
        lost: 2,
        error: None,
    };
    b.classify(&measured);
    let r = b.finish(ms(400));
    assert_eq!(r.bystander_all_rtt_us.len(), 5);
    assert_eq!(r.bystander_rtt_us.len(), 3, "only pings sent in flight");
    assert!(r.bystander_rtt_us.min() >= 7000);
    assert_eq!(r.bystander_lost, 2);
}
