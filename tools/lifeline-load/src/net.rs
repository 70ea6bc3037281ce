//! Socket plumbing shared by the sessions and the pusher: starting a
//! non-blocking connect (from a chosen source address), telling when it has
//! completed, and writing a buffer out until the socket stops taking it.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Starts a non-blocking connect to `target`, bound to `source` if given.
pub fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = source {
        bind_address_no_port(&socket);
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(socket)))
}

/// Defers the ephemeral port choice from `bind` to `connect`, so a source
/// address offers its ~28k ports per destination instead of once overall.
/// Best effort: without it, binding still works, with fewer ports.
fn bind_address_no_port(socket: &Socket) {
    let one: libc::c_int = 1;
    // SAFETY: the fd is open for the lifetime of `socket`; the option value is
    // a c_int living across the call, and its size is passed alongside.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Whether the non-blocking connect of `stream` has completed; the error if
/// it failed. Writable readiness alone does not say which: the pending socket
/// error does, and `peer_addr` fails with `NotConnected` while it is going on.
pub fn connect_finished(stream: &TcpStream) -> io::Result<bool> {
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `pending` until it is empty or the socket would block, draining
/// what was written from its front. A write of zero bytes is `WriteZero`.
/// Inline: every connection flushes through here after every event.
#[inline]
pub fn write_pending(stream: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<()> {
    while !pending.is_empty() {
        match stream.write(pending) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
