//! A socket's write queue: bytes go straight to the socket when nothing is
//! queued, and only what the socket does not take is kept. Shared by client
//! and admin connections, so both handle `WouldBlock` and `Interrupted` the
//! same way and both give a drained queue's memory back.

use std::io::{self, Write};

use bytes::{Buf, BytesMut};

/// Where a write left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything written; the queue holds no memory.
    Done,
    /// The socket is full; its writable edge will resume the flush.
    Blocked,
}

/// Writes `bytes` after whatever `queue` already holds. Returns the bytes
/// the socket took.
pub fn send(
    socket: &mut impl Write,
    queue: &mut BytesMut,
    bytes: &[u8],
) -> io::Result<(Flushed, usize)> {
    if !queue.is_empty() {
        queue.extend_from_slice(bytes);
        return flush(socket, queue);
    }
    let mut written = 0;
    while written < bytes.len() {
        match socket.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if written == bytes.len() {
        Ok((Flushed::Done, written))
    } else {
        queue.extend_from_slice(&bytes[written..]);
        Ok((Flushed::Blocked, written))
    }
}

/// Writes queued bytes until the socket is full or the queue is empty.
/// Returns the bytes the socket took.
pub fn flush(socket: &mut impl Write, queue: &mut BytesMut) -> io::Result<(Flushed, usize)> {
    let mut written = 0;
    while !queue.is_empty() {
        match socket.write(queue) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                queue.advance(n);
                written += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok((Flushed::Blocked, written))
            }
            Err(e) => return Err(e),
        }
    }
    // Give the drained buffer back. `capacity()` alone cannot tell: once
    // `advance` has consumed every byte of a buffer filled to its size it
    // says 0, yet the allocation stays behind the consumed bytes (and was
    // reused, never freed: every connection that was ever sent a queued
    // frame kept one).
    if written > 0 || queue.capacity() > 0 {
        *queue = BytesMut::new();
    }
    Ok((Flushed::Done, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes, then would block.
    struct Socket {
        room: usize,
        got: Vec<u8>,
    }

    impl Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_drained_queue_holds_no_allocation() {
        let mut socket = Socket {
            room: 10,
            got: Vec::new(),
        };
        let mut queue = BytesMut::new();
        let frame = [7u8; 67];
        assert_eq!(
            send(&mut socket, &mut queue, &frame).unwrap(),
            (Flushed::Blocked, 10)
        );
        assert_eq!(queue.len(), 57, "only what the socket did not take is kept");
        socket.room = 1000;
        assert_eq!(flush(&mut socket, &mut queue).unwrap(), (Flushed::Done, 57));
        assert_eq!(socket.got, frame);
        // `try_reclaim` succeeds only on a buffer that still owns memory.
        assert!(!queue.try_reclaim(1), "the drained buffer was given back");
        assert_eq!(flush(&mut socket, &mut queue).unwrap(), (Flushed::Done, 0));
    }
}
