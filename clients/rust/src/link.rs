//! One TCP connection's socket and buffers.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use lifeline_wire::{from_server, to_server, ServerFrame, ServerFrameError};
use mio::net::TcpStream;
use mio::Token;

/// One TCP connection's socket and buffers.
pub(crate) struct Link {
    stream: TcpStream,
    pub(crate) token: Token,
    /// The TCP handshake has completed.
    pub(crate) connected: bool,
    /// Received bytes not yet decoded: at most the start of one frame.
    inbound: Vec<u8>,
    /// Encoded frames not yet accepted by the socket.
    pub(crate) outbound: Vec<u8>,
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
    pub(crate) fn new(stream: TcpStream, token: Token, outbound: Vec<u8>) -> Link {
        Link {
            stream,
            token,
            connected: false,
            inbound: Vec::new(),
            outbound,
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

    pub(crate) fn read_once(&mut self, chunk: &mut [u8]) -> io::Result<ReadOutcome> {
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
            let _ = self.flush();
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }
}
