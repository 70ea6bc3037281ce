//! How bytes move in and out of one connection: the socket reads and writes,
//! the unparsed tail of a frame split across reads, and, over
//! `--transport ws`, the WebSocket layer between the socket and the frame
//! scanner. The connection first upgrades (`Phase::Upgrading`), then sends
//! every XML frame as one masked text message (`send_frame`) and feeds the
//! text payloads it receives to the same scanner as TCP does (`absorb_ws`).
//! With `--tls` a rustls session sits between the socket and all of that:
//! `outbound` holds plaintext until `flush` hands it to rustls, and what is
//! read is decrypted before the WebSocket layer or the scanner sees it.

use std::io::{self, Read, Write};
use std::time::Instant;

use lifeline_wire::ws::KEY_LEN;

use super::{Close, Conn, Ctx, Fate, Phase};
use crate::net;
use crate::proto::{self, Scan};
use crate::wsclient::{self, Event, Transport};

/// An unparsed partial frame larger than this means the stream is not framed.
const MAX_PENDING_FRAME: usize = 1 << 20;

/// One connection's WebSocket state.
pub(super) struct WsConn {
    /// Our `Sec-WebSocket-Key`, to check the server's Accept against.
    key: [u8; KEY_LEN],
    /// The 101 arrived and was checked.
    upgraded: bool,
    reader: wsclient::Reader,
    /// Unconsumed raw bytes: the answer head while upgrading, afterwards at
    /// most a partial frame header or control frame.
    raw: Vec<u8>,
}

impl WsConn {
    /// Fresh WebSocket state for a new socket, or `None` on raw TCP.
    pub(super) fn for_transport(ctx: &mut Ctx) -> Option<WsConn> {
        (ctx.cfg.transport == Transport::Ws).then(|| WsConn {
            key: wsclient::new_key([ctx.rng.next_u64(), ctx.rng.next_u64()]),
            upgraded: false,
            reader: wsclient::Reader::default(),
            raw: Vec::new(),
        })
    }
}

impl Conn {
    /// Whether the connect completed; an error if it failed.
    pub(super) fn connect_result(&self) -> io::Result<bool> {
        match &self.stream {
            Some(stream) => net::connect_finished(stream),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The TCP connect completed: over WebSocket the upgrade request goes
    /// first and the login follows the 101 (`decode_ws`); on TCP the login
    /// goes at once.
    pub(super) fn on_connected(&mut self, now: Instant, ctx: &mut Ctx) {
        ctx.results.counters.connects_ok += 1;
        if let Some(ws) = &self.ws {
            self.phase = Phase::Upgrading;
            let host = ctx.cfg.target.to_string();
            wsclient::write_upgrade(&mut self.outbound, &host, &ws.key);
            return;
        }
        self.start_login(now, ctx);
    }

    /// Appends one outgoing frame written by `encode`: as it is on TCP, as
    /// one masked text message on WebSocket.
    pub(super) fn send_frame(&mut self, ctx: &mut Ctx, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.ws.is_none() {
            encode(&mut self.outbound);
            return;
        }
        let mut frame = std::mem::take(&mut ctx.frame);
        frame.clear();
        encode(&mut frame);
        let mask = wsclient::mask(ctx.rng.next_u64());
        wsclient::write_text(&mut self.outbound, mask, &frame);
        ctx.frame = frame;
    }

    /// Reads what the socket holds and hands each chunk on, through the
    /// WebSocket layer when there is one, to the frame scanner.
    pub(super) fn read_available(
        &mut self,
        drain: bool,
        now: Instant,
        scratch: &mut [u8],
        ctx: &mut Ctx,
    ) -> Result<(), Close> {
        if let Some(mut tls) = self.tls.take() {
            let read = self.read_tls(&mut tls, now, scratch, ctx);
            self.tls = Some(tls);
            return read;
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Err(Close::Peer);
            };
            match stream.read(scratch) {
                Ok(0) => return Err(Close::Peer),
                Ok(n) => {
                    if self.ws.is_some() {
                        self.absorb_ws(&scratch[..n], now, ctx)?;
                    } else {
                        self.absorb(&scratch[..n], now, ctx)?;
                    }
                    // Edge-triggered: a short read emptied the socket, and any
                    // later arrival raises a new edge. Saves one read per event.
                    if n < scratch.len() && !drain {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Close::Peer),
            }
        }
    }

    /// TLS: records from the socket through rustls until it is drained;
    /// the plaintext goes on as a plain read's bytes would.
    fn read_tls(
        &mut self,
        tls: &mut rustls::ClientConnection,
        now: Instant,
        scratch: &mut [u8],
        ctx: &mut Ctx,
    ) -> Result<(), Close> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Err(Close::Peer);
            };
            match tls.read_tls(stream) {
                Ok(0) => return Err(Close::Peer),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Close::Peer),
            }
            if let Err(e) = tls.process_new_packets() {
                ctx.results.counters.tls_errors += 1;
                ctx.results.last_error = Some(format!("TLS: {e}"));
                // The alert saying why, best effort.
                if let Some(stream) = self.stream.as_mut() {
                    let _ = tls.write_tls(stream);
                }
                return Err(Close::Protocol);
            }
            if !self.tls_counted && !tls.is_handshaking() {
                self.tls_counted = true;
                match tls.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => {
                        ctx.results.counters.tls_resumed_handshakes += 1
                    }
                    _ => ctx.results.counters.tls_full_handshakes += 1,
                }
            }
            loop {
                match tls.reader().read(scratch) {
                    Ok(0) => return Err(Close::Peer), // close_notify
                    Ok(n) if self.ws.is_some() => self.absorb_ws(&scratch[..n], now, ctx)?,
                    Ok(n) => self.absorb(&scratch[..n], now, ctx)?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return Err(Close::Peer),
                }
            }
            // Handshake flights and plaintext written meanwhile go out now.
            if self.flush_tls(tls) != Fate::Open {
                return Err(Close::Peer);
            }
        }
    }

    /// TLS: plaintext into rustls (held until the handshake is done), then
    /// records out until the socket stops taking them.
    fn flush_tls(&mut self, tls: &mut rustls::ClientConnection) -> Fate {
        let Some(stream) = self.stream.as_mut() else {
            return Fate::Closed(Close::Peer);
        };
        if !self.outbound.is_empty() {
            match tls.writer().write(&self.outbound) {
                Ok(n) => {
                    self.outbound.drain(..n);
                }
                Err(_) => return Fate::Closed(Close::Peer),
            }
        }
        while tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(0) => return Fate::Closed(Close::Peer),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Fate::Closed(Close::Peer),
            }
        }
        Fate::Open
    }

    /// WebSocket: decodes `data` after whatever raw bytes are pending (the
    /// upgrade answer, then frames); text payloads go on to `absorb`.
    fn absorb_ws(&mut self, data: &[u8], now: Instant, ctx: &mut Ctx) -> Result<(), Close> {
        let mut raw = match self.ws.as_mut() {
            Some(ws) => std::mem::take(&mut ws.raw),
            None => return self.absorb(data, now, ctx),
        };
        if raw.is_empty() {
            let used = self.decode_ws(data, now, ctx)?;
            raw.extend_from_slice(&data[used..]);
        } else {
            raw.extend_from_slice(data);
            let used = self.decode_ws(&raw, now, ctx)?;
            raw.drain(..used);
        }
        if let Some(ws) = self.ws.as_mut() {
            ws.raw = raw;
        }
        Ok(())
    }

    /// Handles the upgrade answer and every whole event in `buf`; returns
    /// how many bytes were used.
    fn decode_ws(&mut self, buf: &[u8], now: Instant, ctx: &mut Ctx) -> Result<usize, Close> {
        let Some(ws) = self.ws.as_mut() else {
            return Err(Close::Protocol);
        };
        let mut at = 0;
        if !ws.upgraded {
            match wsclient::parse_accept(buf, &ws.key) {
                Ok(None) => return Ok(0),
                Ok(Some(head)) => {
                    ws.upgraded = true;
                    at = head;
                    self.start_login(now, ctx);
                }
                Err(e) => return Err(Close::Upgrade(e.to_string())),
            }
        }
        loop {
            let Some(ws) = self.ws.as_mut() else {
                return Err(Close::Protocol);
            };
            let (event, used) = match ws.reader.next(&buf[at..]) {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(at),
                Err(e) => {
                    ctx.results.counters.protocol_errors += 1;
                    ctx.results.last_error = Some(format!("WebSocket: {e}"));
                    return Err(Close::Protocol);
                }
            };
            at += used;
            match event {
                Event::Text(piece) => self.absorb(piece, now, ctx)?,
                Event::Ping(payload) => {
                    ctx.results.counters.ws_pings_answered += 1;
                    let mask = wsclient::mask(ctx.rng.next_u64());
                    wsclient::write_pong(&mut self.outbound, mask, payload);
                }
                Event::Pong => {}
                Event::Close(code) => {
                    // Answer in kind, best effort; the server closes the
                    // socket next, so this ends like an EOF.
                    let mask = wsclient::mask(ctx.rng.next_u64());
                    wsclient::write_close(&mut self.outbound, mask, code);
                    let _ = self.flush();
                    return Err(Close::Peer);
                }
            }
        }
    }

    /// Parses `data` after whatever partial frame is pending.
    fn absorb(&mut self, data: &[u8], now: Instant, ctx: &mut Ctx) -> Result<(), Close> {
        if self.inbound.is_empty() {
            let used = self.feed(data, now, ctx)?;
            self.inbound.extend_from_slice(&data[used..]);
        } else {
            let mut pending = std::mem::take(&mut self.inbound);
            pending.extend_from_slice(data);
            let used = self.feed(&pending, now, ctx)?;
            pending.drain(..used);
            self.inbound = pending;
        }
        if self.inbound.len() > MAX_PENDING_FRAME {
            ctx.results.counters.protocol_errors += 1;
            return Err(Close::Protocol);
        }
        Ok(())
    }

    /// Handles every complete frame in `buf`; returns how many bytes were used.
    fn feed(&mut self, buf: &[u8], now: Instant, ctx: &mut Ctx) -> Result<usize, Close> {
        let mut at = 0;
        loop {
            match proto::scan(ctx.cfg.proto, &buf[at..]) {
                Ok(Scan::Frame(frame, used)) => {
                    at += used;
                    self.on_frame(frame, now, ctx)?;
                }
                Ok(Scan::NeedMore(skip)) => return Ok(at + skip),
                Err(_) => {
                    ctx.results.counters.protocol_errors += 1;
                    return Err(Close::Protocol);
                }
            }
        }
    }

    /// Writes pending output until the socket stops taking it.
    pub(super) fn flush(&mut self) -> Fate {
        if let Some(mut tls) = self.tls.take() {
            let fate = self.flush_tls(&mut tls);
            self.tls = Some(tls);
            return fate;
        }
        if self.outbound.is_empty() {
            return Fate::Open;
        }
        let Some(stream) = self.stream.as_mut() else {
            return Fate::Closed(Close::Peer);
        };
        match net::write_pending(stream, &mut self.outbound) {
            Ok(()) => Fate::Open,
            Err(_) => Fate::Closed(Close::Peer),
        }
    }
}
