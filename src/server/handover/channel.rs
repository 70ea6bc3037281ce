//! The Unix socket between the old process and the new one: a
//! `SOCK_SEQPACKET` socket pair (message boundaries kept, so no framing of
//! our own), messages of one kind byte plus payload, and descriptors passed
//! beside them with `SCM_RIGHTS`, at most [`FDS_PER_MESSAGE`] per message.
//!
//! Every wait is bounded by a deadline: a new binary that hangs cannot hold
//! the old process past its fallback.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
    SocketType,
};

/// The kernel's `SCM_MAX_FD`: descriptors one message may carry.
pub const FDS_PER_MESSAGE: usize = 253;
/// Payload bytes per message: well under the default socket buffer
/// (`wmem_default`, about 208 KiB), which bounds one `SOCK_SEQPACKET` message.
pub const MAX_PAYLOAD: usize = 60 * 1024;

/// What a message is, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// New → old: started, configured, ready to take the state (payload:
    /// the newest state format it reads, u32 little-endian).
    Hello,
    /// Old → new, while the old process still serves: connections' sockets
    /// sent ahead of the state (payload: each one's slab key and generation,
    /// u32 little-endian pairs, in the order of the descriptors).
    Sockets,
    /// Old → new: every socket to be sent ahead was.
    SocketsEnd,
    /// New → old: every socket sent ahead is in its poll; hand over.
    Registered,
    /// Old → new: a piece of the state record (and descriptors); more follow.
    State,
    /// Old → new: the last piece.
    StateEnd,
    /// New → old: state imported, every socket registered; waiting for `Go`.
    Ack,
    /// New → old: the state cannot be taken (payload: why, in words).
    Refuse,
    /// Old → new: the old process is leaving; serve.
    Go,
    /// New → old: serving, and systemd told (`MAINPID=`); the old one exits.
    Serving,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Hello => b'H',
            Kind::Sockets => b'F',
            Kind::SocketsEnd => b'f',
            Kind::Registered => b'r',
            Kind::State => b'S',
            Kind::StateEnd => b'E',
            Kind::Ack => b'A',
            Kind::Refuse => b'R',
            Kind::Go => b'G',
            Kind::Serving => b'V',
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            b'H' => Kind::Hello,
            b'F' => Kind::Sockets,
            b'f' => Kind::SocketsEnd,
            b'r' => Kind::Registered,
            b'S' => Kind::State,
            b'E' => Kind::StateEnd,
            b'A' => Kind::Ack,
            b'R' => Kind::Refuse,
            b'G' => Kind::Go,
            b'V' => Kind::Serving,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the other process closed the upgrade socket")]
    Closed,
    #[error("no answer within the time allowed")]
    TimedOut,
    #[error("the upgrade socket failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message of unknown kind {0:#04x} on the upgrade socket")]
    UnknownKind(u8),
    #[error("a message on the upgrade socket was cut (bigger than {MAX_PAYLOAD} bytes or {FDS_PER_MESSAGE} descriptors)")]
    Truncated,
}

impl From<Errno> for ChannelError {
    fn from(e: Errno) -> ChannelError {
        ChannelError::Io(e.into())
    }
}

/// What became of a message [`Channel::try_send`] offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Yes,
    /// The socket's buffer is full: it says when it has room (writable).
    Full,
    /// Too many descriptors in flight for this user: room comes as the
    /// other side receives, with no event to say so.
    TooManyInFlight,
}

/// One received message.
#[derive(Debug)]
pub struct Message {
    pub kind: Kind,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// One end of the upgrade socket (non-blocking; waits use `poll`).
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair: this process's end (close-on-exec), and the end
    /// the new process inherits (not close-on-exec).
    pub fn pair() -> std::io::Result<(Channel, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())?;
        Ok((Channel { fd: ours }, theirs))
    }

    /// The end a parent left this process (see [`Channel::pair`]); made
    /// non-blocking and close-on-exec, so it does not leak into a later upgrade.
    pub fn adopt(fd: OwnedFd) -> std::io::Result<Channel> {
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(Channel { fd })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Sends one message, waiting (until `deadline`) while the socket is full.
    pub fn send(
        &self,
        kind: Kind,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
    ) -> Result<(), ChannelError> {
        loop {
            match self.try_send(kind, payload, fds)? {
                Sent::Yes => return Ok(()),
                Sent::Full => self.wait(PollFlags::OUT, deadline)?,
                // Too many descriptors in flight for this user (unprivileged,
                // past RLIMIT_NOFILE): they leave the socket as the other side
                // receives them, which no poll event announces.
                Sent::TooManyInFlight => {
                    if Instant::now() >= deadline {
                        return Err(ChannelError::TimedOut);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Sends one message if the socket takes it now.
    pub fn try_send(
        &self,
        kind: Kind,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Sent, ChannelError> {
        debug_assert!(payload.len() <= MAX_PAYLOAD && fds.len() <= FDS_PER_MESSAGE);
        let head = [kind.byte()];
        let iov = [IoSlice::new(&head), IoSlice::new(payload)];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        loop {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(ChannelError::Truncated);
            }
            match sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(Sent::Yes),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Ok(Sent::Full),
                Err(Errno::TOOMANYREFS) => return Ok(Sent::TooManyInFlight),
                Err(Errno::PIPE | Errno::CONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next message, waiting until `deadline`.
    pub fn recv(&self, deadline: Instant) -> Result<Message, ChannelError> {
        loop {
            match self.try_recv()? {
                Some(message) => return Ok(message),
                None => self.wait(PollFlags::IN, deadline)?,
            }
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&self) -> Result<Option<Message>, ChannelError> {
        let mut buf = vec![0u8; MAX_PAYLOAD + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        loop {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let got = match recvmsg(&self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(got) => got,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(None),
                Err(Errno::CONNRESET) => return Err(ChannelError::Closed),
                Err(e) => return Err(e.into()),
            };
            // Descriptors first: they are ours now, and close when dropped.
            let mut fds = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            if got
                .flags
                .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
            {
                return Err(ChannelError::Truncated);
            }
            if got.bytes == 0 {
                return Err(ChannelError::Closed);
            }
            let kind = Kind::from_byte(buf[0]).ok_or(ChannelError::UnknownKind(buf[0]))?;
            buf.truncate(got.bytes);
            buf.remove(0);
            return Ok(Some(Message {
                kind,
                payload: buf,
                fds,
            }));
        }
    }

    /// Waits until the socket is ready for `flags`, or closed, or `deadline`.
    fn wait(&self, flags: PollFlags, deadline: Instant) -> Result<(), ChannelError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChannelError::TimedOut);
            }
            let timeout = rustix::time::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.fd, flags)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) => {}
                // Readable, writable, or hung up: the next call says which.
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors in batches of the kernel's limit arrive in order, beside
    /// their messages, and a closed end is told apart from a quiet one.
    #[test]
    fn messages_carry_descriptors_in_order() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::adopt(b).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let files: Vec<std::fs::File> = (0..FDS_PER_MESSAGE)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        a.send(Kind::State, b"first", &borrowed, deadline).unwrap();
        a.send(Kind::StateEnd, &[7; MAX_PAYLOAD], &[], deadline)
            .unwrap();
        let first = b.recv(deadline).unwrap();
        assert_eq!(
            (first.kind, &first.payload[..]),
            (Kind::State, &b"first"[..])
        );
        assert_eq!(first.fds.len(), FDS_PER_MESSAGE);
        let second = b.recv(deadline).unwrap();
        assert_eq!(second.kind, Kind::StateEnd);
        assert_eq!(second.payload.len(), MAX_PAYLOAD);
        assert!(b.try_recv().unwrap().is_none());
        drop(a);
        assert!(matches!(b.recv(deadline), Err(ChannelError::Closed)));
    }
}
