//! One TCP connection's socket and buffers, and its TLS session when the
//! client speaks TLS: `outbound` and `inbound` hold plaintext either way;
//! rustls sits between them and the socket.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use lifeline_wire::{from_server, to_server, ServerFrame, ServerFrameError};
use mio::net::TcpStream;
use mio::Token;
use rustls::ClientConnection;

/// One TCP connection's socket and buffers.
pub(crate) struct Link {
    stream: TcpStream,
    pub(crate) token: Token,
    /// The TCP handshake has completed.
    pub(crate) connected: bool,
    /// Received bytes not yet decoded: at most the start of one frame.
    inbound: Vec<u8>,
    /// Encoded frames not yet accepted by the socket (or by rustls).
    pub(crate) outbound: Vec<u8>,
    tls: Option<Box<ClientConnection>>,
}

pub(crate) enum ReadOutcome {
    /// Got bytes; there may be more.
    Data,
    /// Nothing more for now.
    Drained,
    Eof,
}

impl Link {
    /// A connection still being set up; `outbound` (the login) goes out once
    /// the TCP handshake completes.
    pub(crate) fn new(
        stream: TcpStream,
        token: Token,
        outbound: Vec<u8>,
        tls: Option<ClientConnection>,
    ) -> Link {
        Link {
            stream,
            token,
            connected: false,
            inbound: Vec::new(),
            outbound,
            tls: tls.map(Box::new),
        }
    }

    /// Whether a non-blocking connect has completed; the error if it failed.
    pub(crate) fn finish_connect(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connected = true;
                // Heartbeats are tiny and latency is what they measure.
                self.stream.set_nodelay(true)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.tls.is_some() {
            return self.flush_tls();
        }
        // Before the handshake completes there is nowhere to write to; the
        // writable event that completes it flushes.
        while self.connected && !self.outbound.is_empty() {
            match self.stream.write(&self.outbound) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbound.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// TLS: plaintext into rustls (it holds what the handshake does not
    /// let out yet, up to its buffer limit), records out to the socket.
    fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while self.connected {
            if !self.outbound.is_empty() {
                let n = tls.writer().write(&self.outbound)?;
                self.outbound.drain(..n);
            }
            if !tls.wants_write() {
                return Ok(());
            }
            match tls.write_tls(&mut self.stream) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// TLS: records from the socket through rustls; plaintext to `inbound`.
    fn read_tls(&mut self) -> io::Result<ReadOutcome> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(ReadOutcome::Eof);
        };
        loop {
            match tls.read_tls(&mut self.stream) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let state = tls
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let start = self.inbound.len();
            self.inbound.resize(start + n, 0);
            tls.reader().read_exact(&mut self.inbound[start..])?;
        }
        Ok(ReadOutcome::Data)
    }

    pub(crate) fn read_once(&mut self, chunk: &mut [u8]) -> io::Result<ReadOutcome> {
        if self.tls.is_some() {
            return self.read_tls();
        }
        loop {
            return match self.stream.read(chunk) {
                Ok(0) => Ok(ReadOutcome::Eof),
                Ok(n) => {
                    self.inbound.extend_from_slice(&chunk[..n]);
                    Ok(ReadOutcome::Data)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Decodes every complete frame in `inbound` and keeps only the tail.
    pub(crate) fn take_frames(
        &mut self,
        max_frame: usize,
    ) -> Result<Vec<ServerFrame>, ServerFrameError> {
        let mut frames = Vec::new();
        let mut offset = 0;
        loop {
            let (frame, used) = from_server::decode(&self.inbound[offset..], max_frame)?;
            offset += used;
            match frame {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
        self.inbound.drain(..offset);
        Ok(frames)
    }

    /// Best effort `<bye/>`, so the server logs a clean leave rather than a
    /// timeout; a full socket buffer just means the server will time us out.
    pub(crate) fn say_bye(&mut self) {
        if self.connected {
            to_server::encode_bye(&mut self.outbound);
            if let Some(tls) = self.tls.as_mut() {
                let _ = tls.writer().write_all(&self.outbound);
                self.outbound.clear();
                tls.send_close_notify();
            }
            let _ = self.flush();
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }
}
