//! systemd's readiness protocol (`Type=notify`): one datagram to the socket
//! named by `$NOTIFY_SOCKET` — `READY=1` once the listeners are bound, so
//! that units ordered after this one start when clients can connect, and
//! `STOPPING=1` when a shutdown begins. A path starting with `@` is in the
//! abstract namespace. Without `$NOTIFY_SOCKET` (not under systemd) nothing
//! is sent. This is the whole protocol as far as Lifeline needs it, so no
//! library is used for it.

use std::io;
use std::os::unix::net::UnixDatagram;

use log::warn;

/// Sends `state` (e.g. `"READY=1\nSTATUS=..."`) to the service manager, if
/// there is one. A failure is logged, never fatal: the server works without.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        warn!("cannot notify the service manager at {path:?}: {e}");
    }
}

/// The listeners are bound: clients can connect.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A shutdown began.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining connections");
}

fn send(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else if bytes.starts_with(b"/") {
        socket.send_to(state.as_bytes(), path)?;
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@...)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("lifeline-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("lifeline-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(send(std::ffi::OsStr::new("relative"), "X=1").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
