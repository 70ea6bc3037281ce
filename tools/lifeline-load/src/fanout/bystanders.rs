//! Fan-out mode's bystanders: `--bystanders K` connections that never
//! subscribe (Lifeline: never log in, as every logged-in client gets the
//! broadcasts) and ping every `--bystander-interval-ms`, each on a thread of
//! its own with a blocking socket. Not on the engine's loop: while a
//! broadcast arrives that loop reads thousands of deliveries, and a pong
//! waiting its turn there would time the tool, not the server; a thread
//! blocked in `read` is woken by the pong itself.
//!
//! Each thread keeps `(ping sent, round trip)` samples; at the end of the run
//! they are matched against the broadcasts' `[trigger, last delivery)`
//! intervals (`Broadcasts::classify`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::args::Config;
use crate::proto::{self, Inbound, Proto, Scan};
use crate::sched::micros;

/// A pong not back after this long counts as lost (the ping is not resent).
const PONG_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a thread waiting for its next ping looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// One round trip: when its ping was written, and how long the pong took.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub sent: Instant,
    pub rtt_us: u64,
}

/// What the bystanders measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub samples: Vec<Sample>,
    /// Pings whose pong did not come within [`PONG_TIMEOUT`].
    pub lost: u64,
    /// Why a bystander stopped early, if one did.
    pub error: Option<String>,
}

/// The running bystander threads.
pub struct Bystanders {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Measured>>,
}

/// What one bystander needs to know.
#[derive(Clone)]
struct Plan {
    target: SocketAddr,
    proto: Proto,
    interval: Duration,
    mqtt_keepalive: u16,
}

impl Bystanders {
    /// Starts the bystanders of a fan-out run (`None` without any).
    pub fn spawn(cfg: &Config) -> Option<Bystanders> {
        let fanout = cfg.fanout.as_ref().filter(|f| f.bystanders > 0)?;
        let plan = Plan {
            target: cfg.target,
            proto: cfg.proto,
            interval: fanout.bystander_interval,
            mqtt_keepalive: cfg.mqtt_keepalive,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..fanout.bystanders)
            .map(|i| {
                let (plan, stop) = (plan.clone(), Arc::clone(&stop));
                // Spread the pings evenly over one interval.
                let phase = plan.interval * i / fanout.bystanders;
                thread::spawn(move || run(i, &plan, phase, &stop))
            })
            .collect();
        Some(Bystanders { stop, threads })
    }

    /// Stops the threads and gathers what they measured.
    pub fn finish(self) -> Measured {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Measured::default();
        for thread in self.threads {
            let one = thread.join().unwrap_or_else(|_| Measured {
                error: Some("a bystander thread panicked".into()),
                ..Measured::default()
            });
            all.samples.extend(one.samples);
            all.lost += one.lost;
            all.error = all.error.or(one.error);
        }
        all
    }
}

/// One bystander's life: connect (MQTT: CONNECT), then ping until stopped.
fn run(index: u32, plan: &Plan, phase: Duration, stop: &AtomicBool) -> Measured {
    let mut measured = Measured::default();
    if let Err(e) = ping_until_stopped(index, plan, phase, stop, &mut measured) {
        measured.error = Some(format!("bystander {index}: {e}"));
    }
    measured
}

fn ping_until_stopped(
    index: u32,
    plan: &Plan,
    phase: Duration,
    stop: &AtomicBool,
    measured: &mut Measured,
) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&plan.target, PONG_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(PONG_TIMEOUT))?;
    let mut inbound = Vec::new();
    let mut out = Vec::new();
    if plan.proto == Proto::Mqtt {
        let id = format!("lifeline-load-bystander-{index}");
        proto::login(Proto::Mqtt, &id, None, plan.mqtt_keepalive, &mut out);
        stream.write_all(&out)?;
        match next_frame(&mut stream, &mut inbound, plan.proto, None)? {
            Some(true) => {}
            _ => return Err(io::Error::other("no CONNACK")),
        }
    }
    let mut next = Instant::now() + phase;
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            thread::sleep((next - now).min(STOP_CHECK));
            continue;
        }
        next = (next + plan.interval).max(now);
        seq += 1;
        out.clear();
        proto::ping(plan.proto, seq, &mut out);
        let sent = Instant::now();
        stream.write_all(&out)?;
        match next_frame(&mut stream, &mut inbound, plan.proto, Some(seq))? {
            Some(_) => measured.samples.push(Sample {
                sent,
                rtt_us: micros(sent.elapsed()),
            }),
            None => measured.lost += 1,
        }
    }
    Ok(())
}

/// Reads until the pong of ping `seq` (a Lifeline pong names it; a late one
/// for an earlier ping is skipped) or, for MQTT, the CONNACK:
/// `Some(accepted)`; `None` when [`PONG_TIMEOUT`] passed first. Other
/// frames are skipped.
fn next_frame(
    stream: &mut TcpStream,
    inbound: &mut Vec<u8>,
    p: Proto,
    seq: Option<u64>,
) -> io::Result<Option<bool>> {
    let mut chunk = [0u8; 4096];
    loop {
        match proto::scan(p, inbound).map_err(io::Error::other)? {
            Scan::Frame(frame, used) => {
                let answer = match frame {
                    Inbound::Pong { seq: Some(got) } if Some(got) != seq => None,
                    Inbound::Pong { .. } => Some(true),
                    Inbound::ConnAck { accepted } => Some(accepted),
                    _ => None,
                };
                inbound.drain(..used);
                if let Some(answer) = answer {
                    return Ok(Some(answer));
                }
            }
            Scan::NeedMore(skip) => {
                inbound.drain(..skip);
                match stream.read(&mut chunk) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => inbound.extend_from_slice(&chunk[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(None)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}
