//! Pushes: their ids, their receipts, the pushes kept for clients (held
//! while offline; sent at-least-once and not acked yet), and the admin
//! requests that wait for a push's ack.
//!
//! When an ack (or the end of a wait) answers a waiting request, the request
//! is not served from here: it goes on the `woken` list, which the loop hands
//! to the admin API after the connection being served is done — never from
//! inside another connection's frame handling.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use crate::admin::AdminRef;
use crate::clock::Micros;
use crate::offline::{Held, OfflineQueue, QueueFull};
use crate::push_ids::PushIds;
use crate::receipts::{Receipt, Receipts, Status};
use crate::server::ConnRef;

/// Receipts kept at most, oldest forgotten first (besides their time to
/// live); remembered idempotent answers are bounded alike.
pub const MAX_RECEIPTS: usize = 1_000_000;

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
    /// At-least-once pushes sent again after their connection ended unacked.
    pub redelivered: u64,
}

pub struct Pushes {
    receipts: Receipts,
    offline: OfflineQueue,
    ids: PushIds,
    /// Held pushes that expired undelivered since the last
    /// [`Pushes::take_expired`], as (client, push id).
    expired: Vec<(Rc<str>, Rc<str>)>,
    waits: HashMap<Rc<str>, Wait>,
    /// When each wait ends: (until, push id).
    wait_ends: BTreeSet<(Micros, Rc<str>)>,
    woken: Vec<(AdminRef, Rc<str>, WaitEnd)>,
    pub stats: PushStats,
    /// Cluster mode: the queue and its expiries live in Redis; what is kept
    /// here only stages pushes for a local connection (see
    /// `server::cluster_pushes`), and expires without a count or an event
    /// of its own (Redis's sweep gives those).
    clustered: bool,
}

impl Pushes {
    /// `id_prefix`: see [`crate::push_ids::id_prefix`].
    pub fn new(
        receipt_ttl: Micros,
        queue_max_per_client: usize,
        queue_max_bytes: usize,
        id_prefix: String,
    ) -> Pushes {
        Pushes {
            receipts: Receipts::new(receipt_ttl, MAX_RECEIPTS),
            offline: OfflineQueue::new(queue_max_per_client, queue_max_bytes),
            ids: PushIds::new(id_prefix),
            expired: Vec::new(),
            waits: HashMap::new(),
            wait_ends: BTreeSet::new(),
            woken: Vec::new(),
            stats: PushStats::default(),
            clustered: false,
        }
    }

    /// The push ids' run prefix and how many of its ids were issued.
    pub fn ids(&self) -> &PushIds {
        &self.ids
    }

    pub fn receipts(&self) -> &Receipts {
        &self.receipts
    }

    pub fn offline(&self) -> &OfflineQueue {
        &self.offline
    }

    /// What another process had (an upgrade): push ids go on in its run;
    /// receipts, held pushes and unacked at-least-once pushes are put in as
    /// they were. Ack waits are not among them: the admin requests that
    /// waited did not move.
    pub fn restore(
        &mut self,
        ids: PushIds,
        stats: PushStats,
        receipts: impl IntoIterator<Item = (Rc<str>, Receipt)>,
        held: impl IntoIterator<Item = (Rc<str>, VecDeque<Held>)>,
        unacked: impl IntoIterator<Item = (Rc<str>, ConnRef, Held)>,
    ) {
        self.ids = ids;
        self.stats = stats;
        for (id, receipt) in receipts {
            self.receipts.insert(id, receipt);
        }
        for (client, pushes) in held {
            self.offline.restore(&client, pushes);
        }
        for (client, conn, push) in unacked {
            self.offline.track(&client, conn, push);
        }
    }

    /// Cluster mode (see `clustered`).
    pub fn set_clustered(&mut self) {
        self.clustered = true;
    }

    /// Whether push `message` is kept for `client` (held or unacked).
    pub fn knows(&self, client: &str, message: &str) -> bool {
        self.offline.knows(client, message)
    }

    /// A fresh push id.
    pub fn new_id(&mut self) -> Rc<str> {
        self.ids.issue()
    }

    /// A push handed to `to`'s connection.
    pub fn sent(&mut self, message: &Rc<str>, to: &Rc<str>, now: Micros) {
        self.stats.accepted += 1;
        self.receipts.insert(
            message.clone(),
            Receipt {
                to: to.clone(),
                status: Status::Sent,
                created: now,
                sent: Some(now),
                acked: None,
                expires: None,
                recipients: None,
                redelivered: 0,
            },
        );
    }

    /// Whether one more kept push of `len` bytes for `to` fits the bounds
    /// (an at-least-once push to an online client is kept until acked).
    pub fn admits(&mut self, to: &str, len: usize) -> Result<(), QueueFull> {
        let admitted = self.offline.admits(to, len);
        if admitted.is_err() {
            self.stats.refused_full += 1;
        }
        admitted
    }

    /// An at-least-once push sent on `conn`: kept until `to` acks it.
    pub fn track(&mut self, to: &Rc<str>, conn: ConnRef, held: Held) {
        self.offline.track(to, conn, held);
    }

    /// `client`'s connection `conn` ended: its at-least-once pushes not
    /// acked yet go back to the front of the client's queue (receipts say
    /// `queued` again). Returns their ids.
    pub fn hand_back(&mut self, client: &Rc<str>, conn: ConnRef, now: Micros) -> Vec<Rc<str>> {
        let back = self.offline.hand_back(client, conn, now);
        for message in &back {
            if let Some(r) = self.receipts.get_mut(message) {
                r.status = Status::Queued;
            }
        }
        back
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
                redelivered: 0,
            },
        );
    }

    /// Holds a push for offline `to` until `expires`; `at_least_once`
    /// when the pusher asked for it (`queue_ttl_ms`).
    pub fn hold(
        &mut self,
        message: &Rc<str>,
        to: &Rc<str>,
        frame: Vec<u8>,
        expires: Micros,
        at_least_once: bool,
        now: Micros,
    ) -> Result<(), QueueFull> {
        let to = to.clone();
        let held = Held {
            message: message.clone(),
            frame,
            expires,
            at_least_once,
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
                redelivered: 0,
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

    /// A held push reached its client's connection (again, when it had
    /// been sent before and handed back).
    pub fn delivered(&mut self, message: &str, now: Micros) {
        if let Some(r) = self.receipts.get_mut(message) {
            // Cluster mode counts redeliveries from Redis's receipts.
            if r.sent.is_some() && !self.clustered {
                r.redelivered += 1;
                self.stats.redelivered += 1;
            }
            r.status = Status::Sent;
            r.sent = Some(now);
        }
    }

    /// A held push of `client` whose time ran out before it could be delivered.
    pub fn held_expired(&mut self, client: &Rc<str>, message: &Rc<str>) {
        if self.clustered {
            return; // a staged copy: Redis's sweep counts it once
        }
        self.stats.expired += 1;
        if let Some(r) = self.receipts.get_mut(message) {
            r.status = Status::Expired;
        }
        self.expired.push((client.clone(), message.clone()));
    }

    /// Held pushes that expired undelivered since the last call, as
    /// (client, push id): the `expired` events.
    pub fn take_expired(&mut self) -> Vec<(Rc<str>, Rc<str>)> {
        std::mem::take(&mut self.expired)
    }

    pub fn receipt(&self, message: &str, now: Micros) -> Option<&Receipt> {
        self.receipts.get_live(message, now)
    }

    /// Client `acker_id` on `acker` acked `message`. Only a push that reached
    /// that very client counts (push ids are easy to guess); a request
    /// waiting for it is woken.
    ///
    /// An at-least-once push is kept no longer once acked, even while it
    /// waits, handed back, to be sent again.
    pub fn on_ack(&mut self, message: &str, acker_id: &str, acker: ConnRef, now: Micros) {
        let (mut handed_back, mut acked_now) = (false, false);
        if let Some(r) = self.receipts.get_mut(message) {
            let was_sent =
                r.status == Status::Sent || (r.status == Status::Queued && r.sent.is_some());
            if *r.to == *acker_id && was_sent {
                handed_back = r.status == Status::Queued;
                acked_now = true;
                r.status = Status::Acked;
                r.acked = Some(now);
                self.stats.acked += 1;
            }
        }
        // Only the acker's own pushes, and only sent ones (an id is easy to
        // guess; a push never sent cannot be acked).
        self.offline.acked(acker_id, message, handed_back);
        if let Some(wait) = self.waits.get(message) {
            // Its own recipient's ack, on whichever connection it was sent
            // last (an at-least-once push may have been sent again).
            if wait.target == Some(acker) || acked_now {
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
        for (client, message) in self.offline.expire(now) {
            self.held_expired(&client, &message);
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

    /// Whether [`Pushes::expire`] has something to do at `now`: the loop
    /// asks every iteration, and most iterations it has not.
    pub fn expiry_due(&self, now: Micros) -> bool {
        [self.next_deadline(), self.receipts.next_expiry()]
            .into_iter()
            .flatten()
            .any(|at| at <= now)
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

    /// Pushes held for offline clients.
    pub fn queued_pushes(&self) -> usize {
        self.offline.len()
    }
}
