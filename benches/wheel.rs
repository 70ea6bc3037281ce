//! Heartbeat deadline wheel with up to 1,000,000 connection deadlines:
//! schedule (insert), lazy re-arm, and expiry. Reported per operation, for
//! 10k, 100k and 1M connections: the cost per operation must not grow with N.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lifeline::timers::TimerWheel;
use std::hint::black_box;

const SPREAD_MS: u64 = 5000; // deadlines spread over one heartbeat interval
const TICK: Duration = Duration::from_millis(2);

fn deadlines(n: usize) -> Vec<u64> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            1 + s % SPREAD_MS
        })
        .collect()
}

/// A wheel holding one entry per deadline (ms after its origin).
fn filled(at: &[u64]) -> (Instant, TimerWheel<u32>) {
    let origin = Instant::now();
    let mut wheel = TimerWheel::new(origin, TICK);
    for (i, &ms) in at.iter().enumerate() {
        wheel.schedule(i as u32, origin + Duration::from_millis(ms));
    }
    (origin, wheel)
}

fn wheel(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel");
    group.sample_size(10);
    for n in [10_000usize, 100_000, 1_000_000] {
        let at = deadlines(n);
        group.throughput(Throughput::Elements(n as u64));

        group.bench_with_input(BenchmarkId::new("schedule", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let origin = Instant::now();
                    let mut wheel = TimerWheel::new(origin, TICK);
                    let started = Instant::now();
                    for (i, &ms) in at.iter().enumerate() {
                        wheel.schedule(i as u32, origin + Duration::from_millis(ms));
                    }
                    total += started.elapsed();
                    black_box(wheel.len());
                }
                total
            })
        });

        // Every entry fires once over the interval; per element: the tick work
        // plus handing the entry back (the expiry path of the loop).
        group.bench_with_input(BenchmarkId::new("expire_all", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (origin, mut wheel) = filled(&at);
                    let mut expired = Vec::with_capacity(n);
                    let started = Instant::now();
                    let mut now = 0;
                    while now <= SPREAD_MS + 10 {
                        wheel.advance(origin + Duration::from_millis(now), &mut expired);
                        now += 2;
                    }
                    total += started.elapsed();
                    assert_eq!(expired.len(), n);
                }
                total
            })
        });

        // Lazy re-arm: each entry fires and is scheduled again one interval
        // later (what a heartbeating connection costs per interval).
        group.bench_with_input(BenchmarkId::new("fire_and_rearm", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (origin, mut wheel) = filled(&at);
                    let mut expired = Vec::with_capacity(n);
                    let mut rearmed = 0usize;
                    let started = Instant::now();
                    let mut now = 0;
                    while now <= SPREAD_MS + 10 {
                        let t = origin + Duration::from_millis(now);
                        wheel.advance(t, &mut expired);
                        for id in expired.drain(..) {
                            wheel.schedule(id, t + Duration::from_millis(SPREAD_MS + 20));
                            rearmed += 1;
                        }
                        now += 2;
                    }
                    total += started.elapsed();
                    assert_eq!(rearmed, n);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, wheel);
criterion_main!(benches);
