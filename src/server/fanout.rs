//! Broadcasts: one frame to every client logged in on this node.
//!
//! A broadcast is a job the loop advances between reads. Writing to 19,000
//! sockets takes a hundred milliseconds or more of kernel time; done in one
//! go, every client whose ping arrived meanwhile would wait for all of it.
//! So each iteration hands the front job to at most [`SLICE_RECIPIENTS`]
//! clients or for at most [`SLICE_TIME`], and the loop polls without waiting
//! while a job is pending (as it does for reads left pending), serving the
//! other clients' reads between two slices.
//!
//! The registry is ordered by id, so a job resumes at the id where its last
//! slice stopped: no copy of the recipient list, and clients that come and
//! go meanwhile are simply there or not when the cursor passes.
//!
//! Order. Jobs run one after another, so consecutive broadcasts reach each
//! client in the order they were accepted. Each session carries the
//! sequence number of the newest broadcast it was handed (stamped at login
//! with the newest accepted, which is not for it). A frame for a client that
//! is owed a pending broadcast (a push right after the broadcast, to a
//! client the job has not reached) would overtake it; so whoever sends to
//! such a client hands it what it is owed first ([`Fanout::catch_up`]), and
//! the job skips it when it gets there. Replies to the connection being
//! served are not held up this way: they answer what it sent.
//!
//! Cost per recipient: the frame is encoded once (and framed once for
//! WebSocket); each plaintext recipient costs one `write` straight from the
//! shared bytes ([`Outbound::send_shared`]), and a copy only of what its
//! socket did not take. A TLS recipient has its own keys and record
//! sequence: its copy is sealed for it alone, then written with one `write`
//! too. A recipient with bytes already queued gets the frame appended
//! behind them; one whose queue would pass `max_outbound` is a slow consumer
//! and is cut off.
//!
//! Limits. This node's admin API accepts at most [`MAX_PENDING`] broadcasts
//! not yet sent to everyone (then `503 busy`). In cluster mode a broadcast
//! another node accepted joins the same queue whatever that limit (the
//! other node has answered already), up to [`MAX_QUEUED`]; beyond that it
//! is dropped here, with a warning and a count. An upgrade waits until the
//! queue is empty before it hands over (the jobs are not part of the
//! state), and from the moment the new process is ready this node's admin
//! API refuses new broadcasts (`503 busy`) so that the wait ends.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::debug;

use crate::admin::Refused;
use crate::server::conn::{ClientConn, CloseReason, ConnRef};
use crate::server::core::Core;
use crate::server::outbound::{Outbound, Overflow, Prepared};

/// Recipients one slice serves at most.
const SLICE_RECIPIENTS: usize = 512;
/// The time one slice may take; looked at every [`CLOCK_EVERY`] recipients.
const SLICE_TIME: Duration = Duration::from_micros(1000);
const CLOCK_EVERY: usize = 32;
/// Broadcasts this node's admin API accepted that are not yet sent to
/// everyone, at most: each holds its frame (up to `max_frame` bytes) until
/// it is done.
pub const MAX_PENDING: usize = 64;
/// Broadcasts queued at most, counting those from other nodes (cluster mode).
pub const MAX_QUEUED: usize = 1024;

/// A broadcast's place in the order they were accepted. It wraps: a
/// logged-in connection is never more than [`MAX_QUEUED`] behind the newest
/// (every broadcast reaches it or it is cut off), far less than half the
/// range, and 16 bits fit the padding of a connection's `State` (the mark
/// is in its `Session`). A new process (an upgrade) starts at 0 with every
/// session it imported marked 0 and no job (the old one handed over only
/// once its queue was empty): consistent.
pub type BroadcastSeq = u16;

/// Whether broadcast `a` was accepted before `b`.
fn before(a: BroadcastSeq, b: BroadcastSeq) -> bool {
    (b.wrapping_sub(a) as i16) > 0
}

/// One broadcast on its way to every client.
pub struct Broadcast {
    seq: BroadcastSeq,
    message: Rc<str>,
    frame: Prepared,
    /// Where the next slice starts: the id the last one stopped at.
    resume: Option<Rc<str>>,
    handed: usize,
    slices: u32,
}

impl Broadcast {
    pub fn seq(&self) -> BroadcastSeq {
        self.seq
    }

    pub fn frame(&mut self) -> &mut Prepared {
        &mut self.frame
    }

    /// Whether `c` should get this broadcast: logged in before it was
    /// accepted, and not handed it yet.
    pub fn is_owed(&self, c: &ClientConn) -> bool {
        c.broadcast_mark()
            .is_some_and(|mark| before(mark, self.seq))
    }
}

/// The broadcasts accepted and not yet sent to everyone, oldest first.
#[derive(Default)]
pub struct Fanout {
    jobs: VecDeque<Broadcast>,
    /// The newest broadcast accepted.
    last_seq: BroadcastSeq,
    /// An upgrade waits for the queue to empty: accept no more here.
    held: bool,
}

impl Fanout {
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn last_seq(&self) -> BroadcastSeq {
        self.last_seq
    }

    /// While an upgrade waits to hand over, this node's admin API accepts
    /// no broadcast (`503 busy`).
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    fn push(&mut self, message: &Rc<str>, frame: Vec<u8>) {
        self.last_seq = self.last_seq.wrapping_add(1);
        self.jobs.push_back(Broadcast {
            seq: self.last_seq,
            message: message.clone(),
            frame: Prepared::new(frame),
            resume: None,
            handed: 0,
            slices: 0,
        });
    }

    /// Whether `c` is owed a broadcast that is still being sent.
    pub fn owes(&self, c: &ClientConn) -> bool {
        !self.jobs.is_empty()
            && c.broadcast_mark()
                .is_some_and(|mark| before(mark, self.last_seq))
    }

    /// Hands `c` the pending broadcasts it is owed, oldest first, before a
    /// frame that must come after them. `Err(Overflow)`: its queue is full.
    pub fn catch_up(
        &mut self,
        conn: ConnRef,
        c: &mut ClientConn,
        out: &mut Outbound,
    ) -> Result<(), Overflow> {
        for job in &mut self.jobs {
            if job.is_owed(c) {
                out.send_prepared(conn, c, &mut job.frame, true)?;
                c.set_broadcast_mark(job.seq);
                job.handed += 1;
            }
        }
        c.set_broadcast_mark(self.last_seq);
        Ok(())
    }
}

impl Core {
    /// Accepts a broadcast of `frame` (this node's admin API) to every
    /// client logged in here now.
    pub(super) fn accept_broadcast(
        &mut self,
        message: &Rc<str>,
        frame: Vec<u8>,
    ) -> Result<(), Refused> {
        let fanout = &mut self.clients.fanout;
        let busy = |detail: String| Refused {
            status: 503,
            error: "busy",
            detail,
        };
        if fanout.held {
            return Err(busy(
                "an upgrade is under way: the new process takes over once the broadcasts \
                 being sent are done; try again in a moment"
                    .into(),
            ));
        }
        if fanout.jobs.len() >= MAX_PENDING {
            return Err(busy(format!(
                "{MAX_PENDING} broadcasts are still being sent; try again when they are done"
            )));
        }
        fanout.push(message, frame);
        Ok(())
    }

    /// Cluster mode: another node accepted broadcast `message`; it goes to
    /// the clients logged in here now, in slices like this node's own.
    /// False when it was dropped ([`MAX_QUEUED`] broadcasts still queued).
    pub(super) fn accept_remote_broadcast(&mut self, message: &Rc<str>, frame: Vec<u8>) -> bool {
        if self.registry.local_len() == 0 {
            return true; // nobody here to send it to
        }
        let fanout = &mut self.clients.fanout;
        if fanout.jobs.len() >= MAX_QUEUED {
            return false;
        }
        fanout.push(message, frame);
        true
    }

    /// While an upgrade waits for the queue to empty, this node's admin API
    /// accepts no broadcast.
    pub(super) fn hold_broadcasts(&mut self, held: bool) {
        self.clients.fanout.hold(held);
    }

    /// Whether a broadcast is still being sent (the loop then polls without
    /// waiting, to come back to it).
    pub fn broadcasting(&self) -> bool {
        !self.clients.fanout.is_idle()
    }

    /// Sends one slice of the pending broadcasts, oldest first, and ends the
    /// recipients whose socket failed or whose queue overflowed.
    pub fn advance_broadcasts(&mut self) {
        let started = Instant::now();
        let mut budget = SLICE_RECIPIENTS;
        let mut failed: Vec<(ConnRef, CloseReason)> = Vec::new();
        while budget > 0 {
            let Some(mut job) = self.clients.fanout.jobs.pop_front() else {
                break;
            };
            job.slices += 1;
            let clients = &mut self.clients;
            let mut visited = 0;
            let mut stopped_at: Option<Rc<str>> = None;
            let resume = job.resume.take();
            self.registry
                .visit_local(resume.as_deref(), &mut |id, conn| {
                    let out_of_time = visited > 0
                        && visited % CLOCK_EVERY == 0
                        && started.elapsed() >= SLICE_TIME;
                    if visited == budget || out_of_time {
                        stopped_at = Some(id.clone());
                        return false;
                    }
                    visited += 1;
                    match clients.send_broadcast(conn, &mut job) {
                        Ok(true) => job.handed += 1,
                        Ok(false) => {}
                        Err(e) => failed.push((conn, e.reason())),
                    }
                    true
                });
            budget -= visited;
            if let Some(at) = stopped_at {
                // Out of budget or time: the rest of it waits for the next slice.
                job.resume = Some(at);
                self.clients.fanout.jobs.push_front(job);
                break;
            }
            debug!(
                "broadcast {} handed to {} clients in {} slices",
                job.message, job.handed, job.slices
            );
        }
        for (conn, reason) in failed {
            self.end(conn, reason);
        }
    }
}
