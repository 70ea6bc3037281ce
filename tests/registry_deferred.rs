//! The registry interface lets a lookup answer later, on the loop, as a
//! shared store (Redis, in cluster mode) does: a registry whose every lookup
//! is answered only after a round trip through the poll (a mio `Waker`, the
//! way a store's reply arrives on a socket) still routes every message, in
//! order, and still says `offline` for an id that is nowhere.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use lifeline::config::{Config, RawConfig};
use lifeline::registry::{LocalRegistry, Location, Lookup, Registry, Ticket, Tokens};
use lifeline::server::{ConnRef, Server};
use mio::{Token, Waker};

/// A local registry whose lookups all answer later.
#[derive(Default)]
struct Deferred {
    local: LocalRegistry,
    waker: Option<Waker>,
    next_ticket: Ticket,
    /// Asked, not yet answered: answered when the waker's event comes.
    asked: VecDeque<(Ticket, Location)>,
    answered: Vec<(Ticket, Location)>,
}

impl Registry for Deferred {
    fn claim(&mut self, id: &Rc<str>, conn: ConnRef) -> Option<ConnRef> {
        self.local.claim(id, conn)
    }
    fn release(&mut self, id: &str, conn: ConnRef) -> bool {
        self.local.release(id, conn)
    }
    fn local(&self, id: &str) -> Option<ConnRef> {
        self.local.local(id)
    }
    fn locate(&mut self, id: &str) -> Lookup {
        let Lookup::Ready(location) = self.local.locate(id) else {
            unreachable!("the local registry answers at once")
        };
        self.next_ticket += 1;
        self.asked.push_back((self.next_ticket, location));
        if let Some(waker) = &self.waker {
            waker.wake().expect("wake the loop");
        }
        Lookup::Pending(self.next_ticket)
    }
    fn answered(&mut self, into: &mut Vec<(Ticket, Location)>) {
        into.append(&mut self.answered);
    }
    fn register(&mut self, poll: &mio::Registry, tokens: Tokens) -> io::Result<()> {
        self.waker = Some(Waker::new(poll, Token(tokens.first))?);
        Ok(())
    }
    fn on_ready(&mut self, _token: Token) {
        self.answered.extend(self.asked.drain(..));
    }
    fn local_len(&self) -> usize {
        self.local.local_len()
    }
    fn page(&self, after: Option<&str>, limit: usize) -> Vec<(Rc<str>, ConnRef)> {
        self.local.page(after, limit)
    }
    fn for_each_local(&self, f: &mut dyn FnMut(ConnRef)) {
        self.local.for_each_local(f)
    }
}

fn connect(addr: std::net::SocketAddr, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.write_all(format!("<login id=\"{id}\"/>").as_bytes())
        .unwrap();
    let got = read_until(&mut s, "<welcome ", 1);
    assert!(got.contains("<welcome id=\""), "{got}");
    s
}

/// Reads until `needle` was seen `n` times, or gives up after 10 s.
fn read_until(s: &mut TcpStream, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while text.matches(needle).count() < n {
        assert!(Instant::now() < deadline, "no {n} × {needle:?} in {text:?}");
        match s.read(&mut buf) {
            Ok(0) => panic!("server closed; got {text:?}"),
            Ok(k) => text.push_str(std::str::from_utf8(&buf[..k]).unwrap()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    text
}

#[test]
fn messages_are_routed_when_the_registry_answers_later() {
    let raw =
        RawConfig::try_parse_from(["lifeline", "--listen", "127.0.0.1:0", "--admin-addr", ""])
            .unwrap();
    let config = Config::validate(&raw).unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    // The server thread is left running when the test ends (the process exits).
    std::thread::spawn(move || {
        let mut server =
            Server::bind_with_registry(config, Box::new(Deferred::default())).expect("bind");
        addr_tx.send(server.local_addr()).unwrap();
        let _ = server.run();
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut alice = connect(addr, "alice");
    let mut bob = connect(addr, "bob");

    // Many in one write: each lookup waits for the poll, and order holds.
    let burst: String = (0..50)
        .map(|i| format!("<msg to=\"bob\" id=\"m{i}\">hello {i}</msg>"))
        .collect();
    alice.write_all(burst.as_bytes()).unwrap();
    let got = read_until(&mut bob, "</msg>", 50);
    let expected: String = (0..50)
        .map(|i| format!("<msg from=\"alice\" id=\"m{i}\">hello {i}</msg>"))
        .collect();
    assert_eq!(got, expected);

    // Nowhere: the error comes once the registry has said so.
    alice
        .write_all(b"<msg to=\"nobody\" id=\"lost\">?</msg>")
        .unwrap();
    let got = read_until(&mut alice, "<error ", 1);
    assert!(
        got.starts_with("<error code=\"offline\" ref=\"lost\""),
        "{got}"
    );
    // The connections are unharmed: heartbeats still answered.
    alice
        .write_all(b"<heartbeat mode=\"ping\" seq=\"9\"/>")
        .unwrap();
    assert_eq!(
        read_until(&mut alice, "/>", 1),
        "<heartbeat mode=\"pong\" seq=\"9\"/>"
    );
}
