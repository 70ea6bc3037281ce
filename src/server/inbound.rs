//! The read path of a client connection: read what the socket has, tell the
//! transport by the first bytes, take XML frames out of the raw stream or out
//! of WebSocket messages, and hand each to the frame handlers; then one write
//! of everything the connection was answered.

use std::io::{self, Read};

use bytes::BytesMut;
use log::debug;

use crate::pages;
use crate::server::conn::{CloseReason, ConnRef, Transport};
use crate::server::core::{Core, Fate};
use crate::writeq::Flushed;
use lifeline_wire::ws;
use lifeline_wire::{self as wire, Decoded, ErrorCode, FrameReader};

/// Bytes one connection may feed the loop per readiness event before the
/// others get their turn: a client that never stops sending cannot starve
/// them, nor grow its replies without bound.
const READ_BUDGET: usize = 256 * 1024;

impl Core {
    /// Serves a ready client connection: reads what it sent when it is
    /// readable (a hang-up or an error shows as a read), answers with
    /// one write, flushes its queue when the socket is writable, delivers
    /// pushes held for it, and ends it if that is its fate. Returns true
    /// when its read budget ran out with bytes left in the socket.
    pub fn serve(&mut self, conn: ConnRef, readable: bool, writable: bool, buf: &mut [u8]) -> bool {
        if !self.clients.is_live(conn) {
            return false; // a closed connection's leftover event, or a reused slot
        }
        self.serving = Some((conn, None));
        self.clients.begin_serving(conn);
        // A socket that only became writable has nothing to read: the read
        // would return WouldBlock. Every socket an upgrade hands over
        // reports writable once, so the new process's first iterations are
        // mostly such events.
        let (mut fate, read_more) = if readable {
            self.read(conn, buf)
        } else {
            (Fate::Keep, false)
        };
        let written = self.clients.finish_serving(conn);
        let asked = self.serving.take().and_then(|(_, end)| end);
        if fate == Fate::Keep {
            if let Some(reason) = asked {
                fate = Fate::End(reason);
            } else if let Err(failed) = written {
                fate = Fate::End(failed.reason());
            }
        }
        let closing = self.clients.get(conn).is_some_and(|c| c.is_closing());
        if fate == Fate::Keep && writable {
            match self.clients.flush(conn) {
                Ok(Flushed::Done) if closing => fate = Fate::End(CloseReason::Shutdown),
                Ok(_) => {}
                Err(failed) => fate = Fate::End(failed.reason()),
            }
        }
        match fate {
            // Pushes held while it was offline follow its welcome, and the
            // rest of a backlog follows as the socket drains.
            Fate::Keep if self.pushes.holds_any() => self.deliver_held(conn),
            Fate::Keep => {}
            Fate::End(reason) => {
                // A goodbye drain ends when the peer closes: that is the shutdown.
                let reason = if reason == CloseReason::PeerClosed && closing {
                    CloseReason::Shutdown
                } else {
                    reason
                };
                self.end(conn, reason);
            }
        }
        read_more && fate == Fate::Keep
    }

    /// Marks `conn` as waiting for another read; false if it already was.
    pub fn mark_read_pending(&mut self, conn: ConnRef) -> bool {
        match self.clients.get_mut(conn) {
            Some(c) if !c.flags.read_pending() => {
                c.flags.set_read_pending(true);
                true
            }
            _ => false,
        }
    }

    pub fn clear_read_pending(&mut self, conn: ConnRef) {
        if let Some(c) = self.clients.get_mut(conn) {
            c.flags.set_read_pending(false);
        }
    }

    /// Reads until the socket is drained, the budget is spent or the
    /// connection's fate is decided. Returns the fate and whether bytes may
    /// be left unread.
    fn read(&mut self, conn: ConnRef, buf: &mut [u8]) -> (Fate, bool) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(c) = self.clients.get_mut(conn) else {
                return (Fate::Keep, false);
            };
            match c.stream.read(buf) {
                Ok(0) => return (Fate::End(CloseReason::PeerClosed), false),
                Ok(n) => {
                    self.metrics.bytes_in += n as u64;
                    // A goodbye drain discards input; it reads only to see the peer close.
                    if !c.is_closing() {
                        // Plaintext pays this one branch; TLS decrypts first.
                        let fate = if c.tls.is_none() {
                            self.consume(conn, &mut buf[..n])
                        } else {
                            self.consume_tls(conn, &mut buf[..n])
                        };
                        if fate != Fate::Keep {
                            return (fate, false);
                        }
                    }
                    // A short read means the socket is drained (edge-triggered),
                    // which saves the read that would only return WouldBlock.
                    if n < buf.len() {
                        return (Fate::Keep, false);
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        return (Fate::Keep, true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (Fate::Keep, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return (Fate::End(CloseReason::IoError), false),
            }
        }
    }

    /// Serves what a read brought, by the connection's transport; the first
    /// non-whitespace byte of a connection decides which transport it is.
    pub(super) fn consume(&mut self, conn: ConnRef, bytes: &mut [u8]) -> Fate {
        let Some(c) = self.clients.get_mut(conn) else {
            return Fate::Keep;
        };
        if matches!(c.transport, Transport::Sniffing) {
            // Whitespace and a byte order mark (perhaps cut by the read, so
            // kept in `inbound`) may come before the raw stream's first '<'.
            let first = c
                .inbound
                .iter()
                .chain(bytes.iter())
                .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0xEF | 0xBB | 0xBF));
            match first {
                None => {} // nothing decisive yet: the raw path keeps or discards it
                // An HTTP method (GET, ...) opens a WebSocket upgrade or a page.
                Some(b'A'..=b'Z') => c.transport = Transport::Handshake,
                // Anything else is the raw stream, where garbage is a bad-frame.
                Some(_) => c.transport = Transport::Raw,
            }
        }
        match c.transport {
            // The common case: no partial frame waiting, whole frames straight
            // from the loop's buffer.
            Transport::Sniffing | Transport::Raw if c.inbound.is_empty() => {
                let (fate, rest) = self.serve_fresh(conn, bytes);
                if !rest.is_empty() {
                    if let Some(c) = self.clients.get_mut(conn) {
                        c.inbound.extend_from_slice(rest);
                    }
                }
                fate
            }
            Transport::Sniffing | Transport::Raw => {
                let mut tail = std::mem::take(&mut c.inbound);
                let fate = self.feed_xml(conn, bytes, &mut tail);
                if let Some(c) = self.clients.get_mut(conn) {
                    c.inbound = tail;
                }
                fate
            }
            Transport::Handshake => self.consume_handshake(conn, bytes),
            Transport::WebSocket(_) => self.consume_websocket(conn, bytes),
        }
    }

    /// Serves the complete frames of `bytes` when no partial frame is kept
    /// (the common case: straight from the loop's buffer). Returns the fate
    /// and, if the connection stays, the start of a frame to keep.
    fn serve_fresh<'b>(&mut self, conn: ConnRef, bytes: &'b [u8]) -> (Fate, &'b [u8]) {
        let (fate, consumed) = self.serve_frames(conn, bytes);
        let rest = match fate {
            Fate::Keep => bytes.get(consumed..).unwrap_or_default(),
            Fate::End(_) => &[],
        };
        (fate, rest)
    }

    /// Parses `bytes` after the partial XML frame kept in `tail`, serves
    /// every complete frame, and leaves the unparsed rest in `tail` (which
    /// holds no capacity when there is none).
    fn feed_xml(&mut self, conn: ConnRef, bytes: &[u8], tail: &mut BytesMut) -> Fate {
        if tail.is_empty() {
            let (fate, rest) = self.serve_fresh(conn, bytes);
            tail.extend_from_slice(rest);
            return fate;
        }
        tail.extend_from_slice(bytes);
        if !bytes.contains(&b'>') {
            // No frame can end in bytes without a '>': parsing the partial
            // frame again from its start would find nothing new.
            if tail.len() <= self.config.max_frame {
                return Fate::Keep;
            }
            *tail = BytesMut::new();
            let text = wire::WireError::FrameTooLarge {
                max: self.config.max_frame,
            }
            .to_string();
            self.error_reply(conn, ErrorCode::FrameTooLarge, None, &text);
            return Fate::End(CloseReason::ProtocolError);
        }
        let whole = std::mem::take(tail);
        let (fate, consumed) = self.serve_frames(conn, &whole);
        if fate == Fate::Keep && consumed < whole.len() {
            let mut rest = whole;
            bytes::Buf::advance(&mut rest, consumed);
            *tail = rest;
        }
        fate
    }

    fn serve_frames(&mut self, conn: ConnRef, data: &[u8]) -> (Fate, usize) {
        let Some(c) = self.clients.get(conn) else {
            return (Fate::Keep, data.len());
        };
        let mut reader = FrameReader::new(data, self.config.max_frame, c.position);
        let fate = loop {
            match reader.next_frame() {
                Ok(Decoded::Frame(frame)) => {
                    let fate = self.on_frame(conn, frame);
                    if fate != Fate::Keep {
                        break fate;
                    }
                    if let Some((_, Some(reason))) = self.serving {
                        break Fate::End(reason); // ended meanwhile: read no further
                    }
                }
                Ok(Decoded::NeedMore) => break Fate::Keep,
                Err(e) => {
                    if let Some(c) = self.clients.get(conn) {
                        debug!("connection {} from {}: {e}", c.generation, c.peer);
                    }
                    self.error_reply(conn, e.code(), None, &e.to_string());
                    break Fate::End(CloseReason::ProtocolError);
                }
            }
        };
        if let Some(c) = self.clients.get_mut(conn) {
            c.position = reader.position();
        }
        (fate, reader.consumed())
    }

    /// An HTTP request on the client port: a WebSocket upgrade, or a page.
    fn consume_handshake(&mut self, conn: ConnRef, bytes: &mut [u8]) -> Fate {
        let Some(c) = self.clients.get_mut(conn) else {
            return Fate::Keep;
        };
        let mut head = std::mem::take(&mut c.inbound);
        head.extend_from_slice(bytes);
        let demo_page = self.config.ops.demo_page;
        match ws::parse_upgrade(&head) {
            Ok(ws::Handshake::Partial) => {
                c.inbound = head;
                Fate::Keep
            }
            Ok(ws::Handshake::Upgrade { .. }) if !self.config.ops.ws_origins.allows(&head) => {
                debug!(
                    "connection {} from {}: WebSocket origin refused",
                    c.generation, c.peer
                );
                let _ = self
                    .clients
                    .send_framed(conn, crate::origins::write_forbidden);
                Fate::End(CloseReason::Http)
            }
            Ok(ws::Handshake::Upgrade {
                key,
                subprotocol,
                len,
            }) => {
                debug!("connection {} from {} is a WebSocket", c.generation, c.peer);
                c.transport = Transport::WebSocket(Box::default());
                let _ = self
                    .clients
                    .send_framed(conn, |out| ws::write_accept(out, &key, subprotocol));
                bytes::Buf::advance(&mut head, len);
                if head.is_empty() {
                    Fate::Keep
                } else {
                    self.consume_websocket(conn, &mut head)
                }
            }
            Ok(ws::Handshake::Get { path, .. }) => {
                let _ = self
                    .clients
                    .send_framed(conn, |out| pages::answer_get_if(out, path, demo_page));
                Fate::End(CloseReason::Http)
            }
            Err(e) => {
                let _ = self
                    .clients
                    .send_framed(conn, |out| ws::write_handshake_error(out, &e));
                Fate::End(CloseReason::Http)
            }
        }
    }

    /// WebSocket frames: text payloads continue the XML stream; pings are
    /// answered; every frame counts as liveness.
    fn consume_websocket(&mut self, conn: ConnRef, bytes: &mut [u8]) -> Fate {
        let Some(c) = self.clients.get_mut(conn) else {
            return Fate::Keep;
        };
        let Transport::WebSocket(state) = &mut c.transport else {
            return Fate::Keep;
        };
        // The transport stays in place (replies are framed by it); only the
        // decoder and the partial XML frame are taken out while frames are served.
        let mut decoder = state.decoder;
        let mut xml_tail = std::mem::take(&mut state.xml_tail);
        // The partial WebSocket frame kept from the last read, then this one.
        let mut data = std::mem::take(&mut c.inbound);
        let fresh = data.is_empty();
        if !fresh {
            data.extend_from_slice(bytes);
        }
        let buf: &mut [u8] = if fresh { bytes } else { &mut data };
        let mut pos = 0;
        let mut close_sent = false;
        let fate = loop {
            match decoder.decode(&mut buf[pos..], self.config.max_frame) {
                Ok(ws::Inbound::NeedMore) => break Fate::Keep,
                Ok(ws::Inbound::Text {
                    consumed, payload, ..
                }) => {
                    pos += consumed;
                    let fate = self.feed_xml(conn, payload, &mut xml_tail);
                    if fate != Fate::Keep {
                        break fate;
                    }
                }
                Ok(ws::Inbound::Ping { consumed, payload }) => {
                    pos += consumed;
                    let _ = self
                        .clients
                        .send_framed(conn, |out| ws::write_pong(out, payload));
                    self.heard(conn);
                }
                Ok(ws::Inbound::Pong { consumed, .. }) => {
                    pos += consumed;
                    self.heard(conn);
                }
                Ok(ws::Inbound::Close { code, .. }) => {
                    let _ = self
                        .clients
                        .send_framed(conn, |out| ws::write_close(out, code.unwrap_or(1000), ""));
                    close_sent = true;
                    break Fate::End(CloseReason::PeerClosed);
                }
                Err(e) => {
                    let _ = self.clients.send_framed(conn, |out| {
                        ws::write_close(out, e.close_code().into(), &e.to_string())
                    });
                    close_sent = true;
                    break Fate::End(CloseReason::ProtocolError);
                }
            }
        };
        if let Some(c) = self.clients.get_mut(conn) {
            if fate == Fate::Keep && pos < buf.len() {
                c.inbound.extend_from_slice(&buf[pos..]);
            }
            if let Transport::WebSocket(state) = &mut c.transport {
                state.decoder = decoder;
                state.xml_tail = xml_tail;
                state.close_sent |= close_sent;
            }
        }
        fate
    }
}
