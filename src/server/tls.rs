//! One TLS connection, driven from the loop with rustls's unbuffered API.
//!
//! Why unbuffered: the buffered `ServerConnection` owns a deframing buffer
//! that never shrinks below 4 KiB once a record has been read, and queues
//! of its own in both directions, so an idle TLS connection would keep more
//! than the whole per-connection budget in buffers. Here the caller owns
//! every buffer: ciphertext is decrypted from the loop's read buffer,
//! plaintext goes to the loop's plaintext buffer, records to send go to the
//! outbound path's buffers. The only bytes a connection keeps between two
//! reads are those of a record the read cut short, and they are dropped
//! (capacity too) once the record is whole. What remains per idle
//! connection is rustls's own state: the record layer's keys, the
//! handshake's outcome, the peer's certificates under mutual TLS.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{HandshakeKind, ServerConfig};

/// The largest plaintext one record carries.
const MAX_FRAGMENT: usize = 16 * 1024;
/// The most a record adds to its plaintext: header 5, explicit nonce 8
/// (TLS 1.2 AES-GCM), tag 16, inner content type 1 (TLS 1.3).
const RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;
/// A partial record (or a handshake message joined from several records)
/// longer than this is not TLS: rustls refuses records over 16 KiB + 2 KiB
/// and handshake messages over 64 KiB before that, so this is a backstop.
const MAX_PARTIAL: usize = 80 * 1024;

/// What a read left the connection in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Open,
    /// The peer sent close_notify: nothing more will come.
    PeerClosed,
}

/// Why TLS ended the connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailed {
    #[error(transparent)]
    Protocol(#[from] rustls::Error),
    #[error("a TLS record or handshake message over {MAX_PARTIAL} bytes")]
    TooLarge,
    #[error("cannot encrypt: {0}")]
    Encrypt(EncryptError),
}

/// How a finished handshake went, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Full,
    Resumed,
}

pub struct TlsConn {
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record a read cut short; empty (no capacity) otherwise.
    partial: Vec<u8>,
    /// The handshake has not finished: it counts against the handshake
    /// limit, and the connection speaks no XML yet.
    handshaking: bool,
    /// rustls failed: its deframer may refer to bytes that are gone, so it
    /// is not driven again (the connection is ending).
    failed: bool,
}

impl TlsConn {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            conn: UnbufferedServerConnection::new(config)?,
            partial: Vec::new(),
            handshaking: true,
            failed: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.handshaking
    }

    /// Notes a handshake that finished since the last call (once per
    /// connection): how it went, for the counters and the limit.
    pub fn take_finished_handshake(&mut self) -> Option<Handshake> {
        if !self.handshaking || self.conn.is_handshaking() {
            return None;
        }
        self.handshaking = false;
        Some(match self.conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => Handshake::Resumed,
            _ => Handshake::Full,
        })
    }

    /// The client's certificate (mutual TLS), end entity first.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| cert.as_ref())
    }

    /// Bytes a frame of `len` plaintext bytes takes on the wire, at most.
    pub fn wire_len(len: usize) -> usize {
        len + len.div_ceil(MAX_FRAGMENT).max(1) * RECORD_OVERHEAD
    }

    /// Takes the ciphertext a read brought: application data is appended
    /// to `plain`, records to send (handshake flights, tickets, alerts) to
    /// `out`.
    pub fn receive(
        &mut self,
        bytes: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Received, TlsFailed> {
        if self.failed {
            return Err(TlsFailed::Protocol(rustls::Error::General(
                "the connection failed before".to_string(),
            )));
        }
        let received = self.receive_records(bytes, plain, out);
        self.failed = received.is_err();
        received
    }

    fn receive_records(
        &mut self,
        bytes: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Received, TlsFailed> {
        if self.partial.is_empty() {
            // The common case: whole records straight from the loop's buffer.
            let (received, used) = drive(&mut self.conn, bytes, plain, out);
            if received.is_ok() && used < bytes.len() {
                self.partial.extend_from_slice(&bytes[used..]);
            }
            return received;
        }
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(bytes);
        let (received, used) = drive(&mut self.conn, &mut buf, plain, out);
        if received.is_ok() && used < buf.len() {
            if buf.len() - used > MAX_PARTIAL {
                return Err(TlsFailed::TooLarge);
            }
            buf.drain(..used);
            self.partial = buf; // still partial: keep it; a drained one is dropped
        }
        received
    }

    /// Encrypts `plain` as application data, appending the records to `out`.
    /// Only once the handshake is done (before, the connection says nothing).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), TlsFailed> {
        if plain.is_empty() || self.handshaking || self.failed {
            return Ok(());
        }
        self.write_traffic(out, |w, out| encrypt(w, plain, out))
    }

    /// Appends a close_notify alert to `out` (best effort, at the end).
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if self.handshaking || self.failed {
            return;
        }
        let _ = self.write_traffic(out, |w, out| {
            let start = out.len();
            out.resize(start + 64, 0);
            match w.queue_close_notify(&mut out[start..]) {
                Ok(n) => {
                    out.truncate(start + n);
                    Ok(())
                }
                Err(e) => {
                    out.truncate(start);
                    Err(TlsFailed::Encrypt(e))
                }
            }
        });
    }

    /// Brings the connection to its write-traffic state (encoding whatever
    /// rustls has to send first) and writes with `write`.
    fn write_traffic(
        &mut self,
        out: &mut Vec<u8>,
        write: impl FnOnce(
            &mut WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), TlsFailed>,
    ) -> Result<(), TlsFailed> {
        // The incoming buffer handed over is the partial record kept from
        // the last read (rustls's deframer state refers to it); it holds no
        // complete record, so nothing is taken from it.
        let mut write = Some(write);
        for _ in 0..16 {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.partial);
            let done = match state? {
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut data, out);
                    None
                }
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => match write.take() {
                    Some(write) => Some(write(&mut traffic, out)),
                    None => break,
                },
                ConnectionState::PeerClosed => None,
                _ => break,
            };
            // Nothing complete is left in `partial` after a read, so this is
            // zero; should rustls take bytes anyway, they leave the buffer.
            self.partial.drain(..discard.min(self.partial.len()));
            if let Some(written) = done {
                return written;
            }
        }
        Err(TlsFailed::Protocol(rustls::Error::General(
            "the connection cannot send application data".to_string(),
        )))
    }
}

/// Runs rustls over `buf` until it needs more bytes. Returns how the
/// connection stands and how many bytes of `buf` were used up.
fn drive(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> (Result<Received, TlsFailed>, usize) {
    let mut used = 0;
    let mut received = Received::Open;
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut buf[used..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                // rustls queued an alert saying why: it goes out before the
                // close. The bytes handed over are those the deframer's state
                // refers to (the rest of this buffer), as after any step.
                send_alert(conn, &mut buf[used + discard..], out);
                return (Err(e.into()), used + discard);
            }
        };
        let more = match state {
            ConnectionState::ReadTraffic(mut data) => {
                while let Some(record) = data.next_record() {
                    match record {
                        Ok(record) => plain.extend_from_slice(record.payload),
                        Err(e) => return (Err(e.into()), used + discard),
                    }
                }
                true
            }
            ConnectionState::EncodeTlsData(mut data) => {
                encode(&mut data, out);
                true
            }
            ConnectionState::TransmitTlsData(data) => {
                // Gathered in `out`, which the outbound path writes once.
                data.done();
                true
            }
            ConnectionState::PeerClosed => {
                received = Received::PeerClosed;
                true
            }
            ConnectionState::Closed => {
                received = Received::PeerClosed;
                false
            }
            // Needs more bytes (BlockedHandshake), or has read all there
            // was (WriteTraffic); early data is not enabled.
            _ => false,
        };
        used += discard;
        if !more {
            return (Ok(received), used);
        }
    }
}

/// Encodes the alert rustls queued after an error. One step only: the
/// alert is first in line, and a further step could deframe the offending
/// bytes again (an error in framing does not stop the state machine).
fn send_alert(conn: &mut UnbufferedServerConnection, rest: &mut [u8], out: &mut Vec<u8>) {
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = conn.process_tls_records(rest).state {
        encode(&mut data, out);
    }
}

/// Appends a record rustls has ready; asks it first how long it is.
fn encode<Data>(data: &mut EncodeTlsData<'_, Data>, out: &mut Vec<u8>) {
    let Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) =
        data.encode(&mut [])
    else {
        return;
    };
    let start = out.len();
    out.resize(start + required_size, 0);
    match data.encode(&mut out[start..]) {
        Ok(n) => out.truncate(start + n),
        Err(_) => out.truncate(start),
    }
}

/// Appends `plain` as application data records.
fn encrypt<Data>(
    traffic: &mut WriteTraffic<'_, Data>,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), TlsFailed> {
    let start = out.len();
    let mut room = TlsConn::wire_len(plain.len());
    loop {
        out.resize(start + room, 0);
        match traffic.encrypt(plain, &mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            // The size is checked before anything is encrypted.
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(TlsFailed::Encrypt(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::conn::ClientConn;

    /// A plaintext connection pays one pointer for TLS (the boxed state is
    /// allocated only on a TLS listener): `ClientConn` was 168 bytes in a
    /// release build and is 176 (mio's `TcpStream` is 4 bytes there, 16
    /// with debug assertions).
    #[test]
    fn plaintext_connections_pay_one_pointer_for_tls() {
        assert_eq!(std::mem::size_of::<Option<Box<TlsConn>>>(), 8);
        let stream_extra = std::mem::size_of::<mio::net::TcpStream>() - 4;
        let size = std::mem::size_of::<ClientConn>();
        assert!(size <= 168 + 8 + stream_extra, "{size}");
    }
}
