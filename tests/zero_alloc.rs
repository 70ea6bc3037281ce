//! The heartbeat path allocates nothing: the real event loop runs on its own
//! thread under a counting global allocator that counts only that thread's
//! allocations, and clients send pings through real sockets: raw XML, and
//! over WebSocket (XML pings in text messages, and WebSocket Pings).
//!
//! One test function, one server: the counter is global, so a second server
//! starting in a parallel test would be counted too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use lifeline::config::{Config, RawConfig};
use lifeline::server::Server;
use lifeline_wire::ws::{self, Opcode};

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

    websocket_pings_allocate_nothing(addr);
}

/// A masked client frame (the mask is fixed: this is not a security test).
fn ws_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    ws::write_frame(&mut frame, true, opcode, Some([7, 1, 9, 3]), payload);
    frame
}

/// Reads until `n` whole server frames have arrived (all of them small:
/// a two-byte header each); returns them.
fn read_ws_frames(stream: &mut TcpStream, n: usize, buf: &mut Vec<u8>) -> Vec<(Opcode, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut chunk = [0u8; 65536];
    while frames.len() < n {
        if let Some(header) = ws::decode_header(buf).expect("a server frame") {
            let end = header.header_len + header.payload_len as usize;
            if buf.len() >= end {
                frames.push((header.opcode, buf[header.header_len..end].to_vec()));
                buf.drain(..end);
                continue;
            }
        }
        let got = stream.read(&mut chunk).expect("read frames");
        assert!(got > 0, "server closed");
        buf.extend_from_slice(&chunk[..got]);
    }
    frames
}

/// The same over WebSocket: XML pings in text messages answered by pongs in
/// text messages, and WebSocket Pings answered by Pongs.
fn websocket_pings_allocate_nothing(addr: std::net::SocketAddr) {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_nodelay(true).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let got = client.read(&mut chunk).expect("read the 101");
        assert!(got > 0, "server closed during the upgrade");
        buf.extend_from_slice(&chunk[..got]);
    };
    assert!(buf.starts_with(b"HTTP/1.1 101"));
    buf.drain(..head_end);
    let ping = |seq: u64| {
        ws_frame(
            Opcode::Text,
            format!("<heartbeat mode=\"ping\" seq=\"{seq}\"/>").as_bytes(),
        )
    };

    // Warm up: login and a few heartbeats of each kind.
    client
        .write_all(&ws_frame(Opcode::Text, b"<login id=\"zero-ws\"/>"))
        .unwrap();
    read_ws_frames(&mut client, 1, &mut buf);
    for seq in 0..10 {
        client.write_all(&ping(seq)).unwrap();
        client.write_all(&ws_frame(Opcode::Ping, b"hb")).unwrap();
        read_ws_frames(&mut client, 2, &mut buf);
    }

    let before = SERVER_ALLOCATIONS.load(Ordering::SeqCst);
    for seq in 0..1000u64 {
        client.write_all(&ping(seq)).unwrap();
        let frames = read_ws_frames(&mut client, 1, &mut buf);
        assert_eq!(frames[0].0, Opcode::Text);
        assert_eq!(
            frames[0].1,
            format!("<heartbeat mode=\"pong\" seq=\"{seq}\"/>").as_bytes()
        );
    }
    for _ in 0..1000 {
        client.write_all(&ws_frame(Opcode::Ping, b"hb")).unwrap();
        let frames = read_ws_frames(&mut client, 1, &mut buf);
        assert_eq!(frames[0], (Opcode::Pong, b"hb".to_vec()));
    }
    // Batches: 50 pings of each kind in one write.
    let batch: Vec<u8> = (0..50)
        .flat_map(|seq| [ping(seq), ws_frame(Opcode::Ping, b"hb")].concat())
        .collect();
    for _ in 0..20 {
        client.write_all(&batch).unwrap();
        read_ws_frames(&mut client, 100, &mut buf);
    }
    let after = SERVER_ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(
        after - before,
        0,
        "server allocated {} times over 4000 WebSocket pings",
        after - before
    );
}
