//! The heartbeat path allocates nothing: the real event loop runs on its own
//! thread under a counting global allocator that counts only that thread's
//! allocations, and a client sends pings through a real socket.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use lifeline::config::{Config, RawConfig};
use lifeline::server::Server;

struct CountingAllocator;

thread_local! {
    static COUNT_THIS_THREAD: Cell<bool> = const { Cell::new(false) };
}
static SERVER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNT_THIS_THREAD.with(Cell::get) {
            SERVER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNT_THIS_THREAD.with(Cell::get) {
            SERVER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Reads until `n` frames have arrived; each pong (and the welcome) holds exactly one '>'.
fn read_pongs(stream: &mut TcpStream, n: usize) {
    let mut seen = 0;
    let mut buf = [0u8; 65536];
    while seen < n {
        let got = stream.read(&mut buf).expect("read pongs");
        assert!(got > 0, "server closed");
        seen += buf[..got].iter().filter(|&&b| b == b'>').count();
    }
    assert_eq!(seen, n);
}

#[test]
fn ping_to_pong_allocates_nothing_on_the_server() {
    let raw =
        RawConfig::try_parse_from(["lifeline", "--listen", "127.0.0.1:0", "--admin-addr", ""])
            .unwrap();
    let config = Config::validate(&raw).unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut server = Server::bind(config).expect("bind");
        addr_tx.send(server.local_addr()).unwrap();
        COUNT_THIS_THREAD.with(|c| c.set(true));
        let _ = server.run();
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_nodelay(true).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // Warm up: login (allocates the id) and a few heartbeats.
    client.write_all(b"<login id=\"zero\"/>").unwrap();
    read_pongs(&mut client, 1);
    for _ in 0..10 {
        client
            .write_all(b"<heartbeat mode=\"ping\" seq=\"1\"/>")
            .unwrap();
        read_pongs(&mut client, 1);
    }

    let before = SERVER_ALLOCATIONS.load(Ordering::SeqCst);
    // One frame per round trip, then batches of frames in one write.
    for seq in 0..1000u64 {
        let ping = format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>");
        client.write_all(ping.as_bytes()).unwrap();
        read_pongs(&mut client, 1);
    }
    let batch: String = (0..100)
        .map(|i| format!("<heartbeat mode=\"ping\" seq=\"{i}\"/>"))
        .collect();
    for _ in 0..20 {
        client.write_all(batch.as_bytes()).unwrap();
        read_pongs(&mut client, 100);
    }
    let after = SERVER_ALLOCATIONS.load(Ordering::SeqCst);
    assert!(
        before > 0,
        "the counter saw the server's start-up allocations"
    );
    assert_eq!(
        after - before,
        0,
        "server allocated {} times over 3000 pings",
        after - before
    );
}
