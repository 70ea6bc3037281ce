//! Thousands of clients on one server: heartbeating clients are never timed
//! out by mistake, and silenced ones (and only those) are closed within the
//! precision window. One mio loop drives every client socket so that close
//! times are observed as they happen.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use common::ServerProc;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const CLIENTS: usize = 2000;
const INTERVAL_MS: u64 = 300;
const MISSES: u64 = 3;
const TICK_MS: u64 = 5;
const PING_EVERY: Duration = Duration::from_millis(200);

struct Peer {
    stream: TcpStream,
    inbound: Vec<u8>,
    welcomed: bool,
    silent: bool,
    last_sent: Instant,
    next_ping: Instant,
    closed_at: Option<Instant>,
    got_timeout_bye: bool,
    pongs: u64,
}

impl Peer {
    fn send(&mut self, text: &str, now: Instant) {
        // A few dozen bytes always fit an idle socket's send buffer.
        self.stream.write_all(text.as_bytes()).expect("send");
        self.last_sent = now;
    }

    /// Drains the socket; records a close.
    fn read_all(&mut self, now: Instant) {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed_at.get_or_insert(now);
                    break;
                }
                Ok(n) => self.inbound.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed_at.get_or_insert(now);
                    break;
                }
            }
        }
        // Only whole frames (up to the last '>'); a frame cut by the read waits.
        let Some(end) = self.inbound.iter().rposition(|&b| b == b'>') else {
            return;
        };
        let text = String::from_utf8_lossy(&self.inbound[..=end]).into_owned();
        self.welcomed |= text.contains("<welcome ");
        self.got_timeout_bye |= text.contains("<bye reason=\"timeout\"");
        self.pongs += text.matches("mode=\"pong\"").count() as u64;
        self.inbound.drain(..=end);
    }
}

/// One pass of the client loop: reads what arrived (waiting up to `wait`
/// for it) and sends every ping that is due.
fn pump(poll: &mut Poll, events: &mut Events, peers: &mut [Peer], wait: Duration) {
    poll.poll(events, Some(wait)).unwrap();
    let now = Instant::now();
    for event in events.iter() {
        peers[event.token().0].read_all(now);
    }
    for peer in peers.iter_mut() {
        if !peer.silent && peer.closed_at.is_none() && peer.welcomed && now >= peer.next_ping {
            peer.send("<heartbeat mode=\"ping\"/>", now);
            peer.next_ping = now + PING_EVERY;
        }
    }
}

#[test]
fn two_thousand_heartbeating_clients_then_half_silenced() {
    let server = ServerProc::start(&[
        ("LIFELINE_HEARTBEAT_MS", &INTERVAL_MS.to_string()),
        ("LIFELINE_MISSES", &MISSES.to_string()),
        ("LIFELINE_TICK_MS", &TICK_MS.to_string()),
    ]);
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4096);
    let start = Instant::now();
    let mut peers: Vec<Peer> = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let std_stream = std::net::TcpStream::connect(server.addr).expect("connect");
        std_stream.set_nodelay(true).unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let mut stream = TcpStream::from_std(std_stream);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)
            .unwrap();
        let now = Instant::now();
        let mut peer = Peer {
            stream,
            inbound: Vec::new(),
            welcomed: false,
            silent: false,
            last_sent: now,
            // Spread the first pings over one ping period.
            next_ping: now + PING_EVERY.mul_f64(i as f64 / CLIENTS as f64),
            closed_at: None,
            got_timeout_bye: false,
            pongs: 0,
        };
        peer.send(&format!("<login id=\"scale-{i}\"/>"), now);
        peers.push(peer);
        // The clients already in keep heartbeating while the rest connect,
        // however long the ramp takes: none may be silent for a deadline.
        pump(&mut poll, &mut events, &mut peers, Duration::ZERO);
    }

    // Runs the client loop until `done` or `limit`.
    let mut drive = |peers: &mut Vec<Peer>, limit: Duration, done: &dyn Fn(&[Peer]) -> bool| {
        let until = Instant::now() + limit;
        while Instant::now() < until && !done(peers) {
            pump(&mut poll, &mut events, peers, Duration::from_millis(1));
        }
    };

    drive(&mut peers, Duration::from_secs(30), &|p| {
        p.iter().all(|p| p.welcomed)
    });
    assert!(
        peers.iter().all(|p| p.welcomed),
        "not every client was welcomed"
    );
    eprintln!("{CLIENTS} logged in after {:?}", start.elapsed());

    // Several deadlines of heartbeating: nobody may be closed.
    let steady = Duration::from_millis(INTERVAL_MS * MISSES * 3);
    drive(&mut peers, steady, &|_| false);
    let wrongly_closed = peers.iter().filter(|p| p.closed_at.is_some()).count();
    assert_eq!(wrongly_closed, 0, "heartbeating clients were closed");
    assert!(
        peers.iter().all(|p| p.pongs >= 3),
        "some clients got no pongs"
    );

    // Silence every odd client.
    for (i, peer) in peers.iter_mut().enumerate() {
        peer.silent = i % 2 == 1;
    }
    let deadline = Duration::from_millis(INTERVAL_MS * MISSES);
    drive(&mut peers, deadline + Duration::from_secs(3), &|p| {
        p.iter().filter(|p| p.silent).all(|p| p.closed_at.is_some())
    });
    // Keep the others going a little longer to catch a late wrong close.
    drive(&mut peers, Duration::from_millis(INTERVAL_MS), &|_| false);

    let window = deadline + Duration::from_millis(TICK_MS + 50);
    let mut delays: Vec<Duration> = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        if peer.silent {
            let closed = peer
                .closed_at
                .unwrap_or_else(|| panic!("silent client {i} never closed"));
            assert!(
                peer.got_timeout_bye,
                "silent client {i} got no <bye reason=\"timeout\"/>"
            );
            delays.push(closed - peer.last_sent);
        } else {
            assert!(peer.closed_at.is_none(), "healthy client {i} was closed");
        }
    }
    delays.sort();
    let (min, max) = (delays[0], delays[delays.len() - 1]);
    eprintln!(
        "close delay after the last frame: min {min:?} p50 {:?} max {max:?} (deadline {deadline:?})",
        delays[delays.len() / 2]
    );
    assert!(min >= deadline, "closed early: {min:?} < {deadline:?}");
    assert!(max <= window, "closed late: {max:?} > {window:?}");
    let silent = CLIENTS / 2;
    assert_eq!(
        server.wait_count("reason=timeout", silent, Duration::from_secs(5)),
        silent
    );
}
