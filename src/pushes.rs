//! Pushes: their ids, their receipts, the queue of pushes held for offline
//! clients, and the admin requests that wait for a push's ack.
//!
//! When an ack (or the end of a wait) answers a waiting request, the request
//! is not served from here: it goes on the `woken` list, which the loop hands
//! to the admin API after the connection being served is done — never from
//! inside another connection's frame handling.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use crate::admin::AdminRef;
use crate::clock::Micros;
use crate::receipts::{Held, OfflineQueue, QueueFull, Receipt, Receipts, Status};
use crate::server::ConnRef;

/// Receipts kept at most, oldest forgotten first (besides their time to live).
const MAX_RECEIPTS: usize = 1_000_000;

/// How a wait for an ack ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    Acked,
    TimedOut,
}

/// An admin request waiting for the ack of a push to `target` (`None`: a
/// client on another node, whose node reports the ack).
#[derive(Debug, Clone, Copy)]
struct Wait {
    admin: AdminRef,
    target: Option<ConnRef>,
    until: Micros,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PushStats {
    /// Pushes accepted by the admin API (sent or held).
    pub accepted: u64,
    /// Acks of a sent push by its recipient.
    pub acked: u64,
    /// Held pushes whose time to live ran out.
    pub expired: u64,
    /// Pushes refused because the offline queue was full (507).
    pub refused_full: u64,
}

pub struct Pushes {
    receipts: Receipts,
    offline: OfflineQueue,
    issued: u64,
    /// Cluster mode: push ids start with the node and its start time, so
    /// that ids from different nodes (and restarts) never collide.
    prefix: Option<String>,
    waits: HashMap<Rc<str>, Wait>,
    /// When each wait ends: (until, push id).
    wait_ends: BTreeSet<(Micros, Rc<str>)>,
    woken: Vec<(AdminRef, Rc<str>, WaitEnd)>,
    pub stats: PushStats,
}

impl Pushes {
    pub fn new(receipt_ttl: Micros, queue_max_per_client: usize, queue_max_bytes: usize) -> Pushes {
        Pushes {
            receipts: Receipts::new(receipt_ttl, MAX_RECEIPTS),
            offline: OfflineQueue::new(queue_max_per_client, queue_max_bytes),
            issued: 0,
            prefix: None,
            waits: HashMap::new(),
            wait_ends: BTreeSet::new(),
            woken: Vec::new(),
            stats: PushStats::default(),
        }
    }

    /// A fresh push id.
    pub fn new_id(&mut self) -> Rc<str> {
        self.issued += 1;
        match &self.prefix {
            Some(prefix) => Rc::from(format!("{prefix}.push-{}", self.issued)),
            None => Rc::from(format!("push-{}", self.issued)),
        }
    }

    /// Cluster mode: ids become `NODE.START.push-N` (START: the process's
    /// start in base-36 milliseconds).
    pub fn set_id_prefix(&mut self, node: &str, start_ms: u64) {
        let mut start = String::new();
        let mut n = start_ms;
        loop {
            let digit = (n % 36) as u32;
            start.insert(0, char::from_digit(digit, 36).unwrap_or('0'));
            n /= 36;
            if n == 0 {
                break;
            }
        }
        self.prefix = Some(format!("{node}.{start}"));
    }

    /// A push handed to `to`'s connection.
    pub fn sent(&mut self, message: &Rc<str>, to: &str, now: Micros) {
        self.stats.accepted += 1;
        self.receipts.insert(
            message.clone(),
            Receipt {
                to: Rc::from(to),
                status: Status::Sent,
                created: now,
                sent: Some(now),
                acked: None,
                expires: None,
                recipients: None,
            },
        );
    }

    /// A broadcast handed to `recipients` connections.
    pub fn broadcast(&mut self, message: &Rc<str>, recipients: usize, now: Micros) {
        self.receipts.insert(
            message.clone(),
            Receipt {
                to: Rc::from("*"),
                status: Status::Sent,
                created: now,
                sent: Some(now),
                acked: None,
                expires: None,
                recipients: Some(recipients),
            },
        );
    }

    /// Holds a push for offline `to` until `expires`.
    pub fn hold(
        &mut self,
        message: &Rc<str>,
        to: &str,
        frame: Vec<u8>,
        expires: Micros,
        now: Micros,
    ) -> Result<(), QueueFull> {
        let to: Rc<str> = Rc::from(to);
        let held = Held {
            message: message.clone(),
            frame,
            expires,
        };
        if let Err(full) = self.offline.hold(&to, held) {
            self.stats.refused_full += 1;
            return Err(full);
        }
        self.stats.accepted += 1;
        self.receipts.insert(
            message.clone(),
            Receipt {
                to,
                status: Status::Queued,
                created: now,
                sent: None,
                acked: None,
                expires: Some(expires),
                recipients: None,
            },
        );
        Ok(())
    }

    /// Whether pushes are held for `id` (new ones then queue behind them, so
    /// that order holds).
    pub fn holds(&self, id: &str) -> bool {
        self.offline.holds(id)
    }

    /// Whether anything is held for anyone (a cheap check for hot paths).
    pub fn holds_any(&self) -> bool {
        !self.offline.is_empty()
    }

    /// Everything held for `id`, in order; what cannot be delivered yet goes
    /// back with [`Pushes::put_back`].
    pub fn take_held(&mut self, id: &str) -> VecDeque<Held> {
        self.offline.take(id)
    }

    pub fn put_back(&mut self, id: &Rc<str>, held: VecDeque<Held>) {
        self.offline.put_back(id, held);
    }

    /// A held push reached its client's connection.
    pub fn delivered(&mut self, message: &str, now: Micros) {
        if let Some(r) = self.receipts.get_mut(message) {
            r.status = Status::Sent;
            r.sent = Some(now);
        }
    }

    /// A held push whose time ran out before it could be delivered.
    pub fn held_expired(&mut self, message: &str) {
        self.stats.expired += 1;
        if let Some(r) = self.receipts.get_mut(message) {
            r.status = Status::Expired;
        }
    }

    pub fn receipt(&self, message: &str, now: Micros) -> Option<&Receipt> {
        self.receipts.get_live(message, now)
    }

    /// Client `acker_id` on `acker` acked `message`. Only a push that reached
    /// that very client counts (push ids are easy to guess); a request
    /// waiting for it is woken.
    pub fn on_ack(&mut self, message: &str, acker_id: &str, acker: ConnRef, now: Micros) {
        if let Some(r) = self.receipts.get_mut(message) {
            if *r.to == *acker_id && r.status == Status::Sent {
                r.status = Status::Acked;
                r.acked = Some(now);
                self.stats.acked += 1;
            }
        }
        if let Some(wait) = self.waits.get(message) {
            if wait.target == Some(acker) {
                self.end_wait(message, WaitEnd::Acked);
            }
        }
    }

    /// An admin request waits for `message`'s ack from `target` until `until`.
    pub fn await_ack(
        &mut self,
        message: &Rc<str>,
        admin: AdminRef,
        target: ConnRef,
        until: Micros,
    ) {
        self.waits.insert(
            message.clone(),
            Wait {
                admin,
                target: Some(target),
                until,
            },
        );
        self.wait_ends.insert((until, message.clone()));
    }

    /// An admin request waits for the ack of `message`, pushed to a client
    /// on another node (which reports the ack, see [`Pushes::remote_acked`]).
    pub fn await_remote_ack(&mut self, message: &Rc<str>, admin: AdminRef, until: Micros) {
        self.waits.insert(
            message.clone(),
            Wait {
                admin,
                target: None,
                until,
            },
        );
        self.wait_ends.insert((until, message.clone()));
    }

    /// The node of the recipient of `message` reports its ack; false when
    /// no request waits for it (yet).
    pub fn remote_acked(&mut self, message: &str) -> bool {
        if self.waits.get(message).is_some_and(|w| w.target.is_none()) {
            self.stats.acked += 1;
            self.end_wait(message, WaitEnd::Acked);
            return true;
        }
        false
    }

    /// The waiting request went away.
    pub fn cancel_wait(&mut self, message: &str) {
        if let Some(wait) = self.waits.remove(message) {
            self.wait_ends.remove(&(wait.until, Rc::from(message)));
        }
    }

    fn end_wait(&mut self, message: &str, end: WaitEnd) {
        if let Some(wait) = self.waits.remove(message) {
            let message: Rc<str> = Rc::from(message);
            self.wait_ends.remove(&(wait.until, message.clone()));
            self.woken.push((wait.admin, message, end));
        }
    }

    /// Requests whose wait ended, to be answered by the admin API.
    pub fn take_woken(&mut self) -> Vec<(AdminRef, Rc<str>, WaitEnd)> {
        std::mem::take(&mut self.woken)
    }

    pub fn has_woken(&self) -> bool {
        !self.woken.is_empty()
    }

    /// Forgets old receipts, expires held pushes and ends waits whose time
    /// is up.
    pub fn expire(&mut self, now: Micros) {
        self.receipts.expire(now);
        for message in self.offline.expire(now) {
            self.held_expired(&message);
        }
        while let Some((until, _)) = self.wait_ends.first() {
            if *until > now {
                break;
            }
            if let Some((_, message)) = self.wait_ends.pop_first() {
                self.end_wait(&message, WaitEnd::TimedOut);
            }
        }
    }

    /// When [`Pushes::expire`] next has something to do (receipts aside,
    /// which are swept whenever the loop wakes).
    pub fn next_deadline(&self) -> Option<Micros> {
        let wait = self.wait_ends.first().map(|(until, _)| *until);
        [wait, self.offline.next_expiry()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Admin requests waiting for an ack.
    pub fn waits(&self) -> usize {
        self.waits.len()
    }

    pub fn receipts_held(&self) -> usize {
        self.receipts.len()
    }

    pub fn queued_bytes(&self) -> usize {
        self.offline.bytes()
    }
}
