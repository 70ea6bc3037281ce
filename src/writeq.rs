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
    if queue.capacity() > 0 {
        *queue = BytesMut::new(); // give the drained buffer back
    }
    Ok((Flushed::Done, written))
}
