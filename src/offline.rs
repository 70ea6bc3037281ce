//! Pushes kept for a client: held while it is offline (until it logs in
//! again or they expire), and — for at-least-once pushes — kept after they
//! were sent until the client acks them, so that a connection that ends
//! first hands them back to the front of the queue.
//!
//! Bounded: per client, held and unacked pushes together count against
//! `max_per_client`; all clients' bytes against `max_bytes`. A push over a
//! bound is refused, never an unbounded heap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

use crate::clock::Micros;
use crate::server::ConnRef;

/// One push kept for a client: its id and its encoded `<msg>` frame.
#[derive(Debug, Clone)]
pub struct Held {
    pub message: Rc<str>,
    pub frame: Vec<u8>,
    pub expires: Micros,
    /// Asked for with `queue_ttl_ms`: once sent it is kept until acked,
    /// and sent again if its connection ends first.
    pub at_least_once: bool,
}

/// A sent at-least-once push waiting for its ack, and the connection it
/// was sent on.
#[derive(Debug)]
struct Unacked {
    held: Held,
    conn: ConnRef,
}

/// Why a push could not be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    #[error("the client already has {0} pushes waiting or unacked")]
    PerClient(usize),
    #[error("the offline queue already holds {0} bytes")]
    Total(usize),
}

/// Pushes waiting for offline clients, in order per client, and sent
/// at-least-once pushes waiting for their ack.
pub struct OfflineQueue {
    by_client: HashMap<Rc<str>, VecDeque<Held>>,
    unacked: HashMap<Rc<str>, VecDeque<Unacked>>,
    /// (expiry, client) for every push kept, earliest first; entries whose
    /// push has gone are skipped when they come up.
    expiries: BinaryHeap<Reverse<(Micros, Rc<str>)>>,
    /// Pushes kept (held and unacked), for compacting `expiries`.
    kept: usize,
    bytes: usize,
    max_per_client: usize,
    max_bytes: usize,
}

impl OfflineQueue {
    pub fn new(max_per_client: usize, max_bytes: usize) -> OfflineQueue {
        OfflineQueue {
            by_client: HashMap::new(),
            unacked: HashMap::new(),
            expiries: BinaryHeap::new(),
            kept: 0,
            bytes: 0,
            max_per_client,
            max_bytes,
        }
    }

    /// Bytes kept in total (held and unacked).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Pushes held for offline clients, every client together (counted for
    /// a scrape; unacked at-least-once pushes are not held).
    pub fn len(&self) -> usize {
        self.by_client.values().map(VecDeque::len).sum()
    }

    /// Whether one more push of `len` bytes for `client` fits the bounds.
    pub fn admits(&self, client: &str, len: usize) -> Result<(), QueueFull> {
        let waiting = self.by_client.get(client).map_or(0, VecDeque::len)
            + self.unacked.get(client).map_or(0, VecDeque::len);
        if waiting >= self.max_per_client {
            return Err(QueueFull::PerClient(waiting));
        }
        if self.bytes + len > self.max_bytes {
            return Err(QueueFull::Total(self.bytes));
        }
        Ok(())
    }

    pub fn hold(&mut self, client: &Rc<str>, held: Held) -> Result<(), QueueFull> {
        self.admits(client, held.frame.len())?;
        self.keep(client, held.frame.len(), held.expires);
        self.by_client
            .entry(client.clone())
            .or_default()
            .push_back(held);
        Ok(())
    }

    /// Keeps a sent at-least-once push until `client` acks it. Not bounded
    /// here: it was admitted when it was pushed (a held push moving on to
    /// wait for its ack takes no more room than it had).
    pub fn track(&mut self, client: &Rc<str>, conn: ConnRef, held: Held) {
        self.keep(client, held.frame.len(), held.expires);
        self.unacked
            .entry(client.clone())
            .or_default()
            .push_back(Unacked { held, conn });
    }

    fn keep(&mut self, client: &Rc<str>, len: usize, expires: Micros) {
        self.bytes += len;
        self.kept += 1;
        self.expiries.push(Reverse((expires, client.clone())));
        // Entries of pushes taken, acked or expired stay in the heap until
        // they come up; past twice what is kept, rebuild it (amortised O(1)).
        if self.expiries.len() > 2 * self.kept + 1024 {
            self.expiries =
                self.by_client
                    .iter()
                    .flat_map(|(c, q)| q.iter().map(move |h| Reverse((h.expires, c.clone()))))
                    .chain(self.unacked.iter().flat_map(|(c, q)| {
                        q.iter().map(move |u| Reverse((u.held.expires, c.clone())))
                    }))
                    .collect();
        }
    }

    /// `client` acked `message`: it is no longer waited for. With `held`, a
    /// copy back in its queue (sent before, handed back since) goes too.
    /// Returns whether anything was removed.
    pub fn acked(&mut self, client: &str, message: &str, held: bool) -> bool {
        let mut removed = 0;
        if let Some(queue) = self.unacked.get_mut(client) {
            if let Some(at) = queue.iter().position(|u| *u.held.message == *message) {
                if let Some(u) = queue.remove(at) {
                    self.bytes -= u.held.frame.len();
                    removed += 1;
                }
            }
            if queue.is_empty() {
                self.unacked.remove(client);
            }
        }
        if held {
            if let Some(queue) = self.by_client.get_mut(client) {
                if let Some(at) = queue.iter().position(|h| *h.message == *message) {
                    if let Some(h) = queue.remove(at) {
                        self.bytes -= h.frame.len();
                        removed += 1;
                    }
                }
                if queue.is_empty() {
                    self.by_client.remove(client);
                }
            }
        }
        self.kept -= removed;
        removed > 0
    }

    /// The connection `conn` of `client` ended: its unacked pushes go back
    /// to the front of the client's queue, in the order they were sent.
    /// Returns the ids handed back; those past their time are dropped.
    pub fn hand_back(&mut self, client: &Rc<str>, conn: ConnRef, now: Micros) -> Vec<Rc<str>> {
        let Some(mut queue) = self.unacked.remove(client) else {
            return Vec::new();
        };
        let mut back = VecDeque::new();
        let mut stays = VecDeque::new();
        for u in queue.drain(..) {
            if u.conn != conn {
                stays.push_back(u); // sent on a newer connection: its own to ack
            } else if u.held.expires <= now {
                self.bytes -= u.held.frame.len();
                self.kept -= 1;
            } else {
                back.push_back(u.held);
            }
        }
        if !stays.is_empty() {
            self.unacked.insert(client.clone(), stays);
        }
        let ids = back.iter().map(|h| h.message.clone()).collect();
        if !back.is_empty() {
            if let Some(rest) = self.by_client.remove(client) {
                back.extend(rest);
            }
            self.by_client.insert(client.clone(), back);
        }
        ids
    }

    /// Everything held for `client`, in order, expired or not.
    pub fn take(&mut self, client: &str) -> VecDeque<Held> {
        let held = self.by_client.remove(client).unwrap_or_default();
        self.bytes -= held.iter().map(|h| h.frame.len()).sum::<usize>();
        self.kept -= held.len();
        held
    }

    /// Whether anything is held for anyone (a cheap check for hot paths).
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Whether push `message` is kept for `client`, held or unacked.
    pub fn knows(&self, client: &str, message: &str) -> bool {
        let held = self
            .by_client
            .get(client)
            .is_some_and(|q| q.iter().any(|h| *h.message == *message));
        held || self
            .unacked
            .get(client)
            .is_some_and(|q| q.iter().any(|u| *u.held.message == *message))
    }

    /// Whether pushes are held for `client`.
    pub fn holds(&self, client: &str) -> bool {
        self.by_client.contains_key(client)
    }

    /// Puts back, in front and in order, what could not be delivered yet
    /// (its expiry entries are still in the heap).
    pub fn put_back(&mut self, client: &Rc<str>, mut held: VecDeque<Held>) {
        if held.is_empty() {
            return;
        }
        self.bytes += held.iter().map(|h| h.frame.len()).sum::<usize>();
        self.kept += held.len();
        if let Some(rest) = self.by_client.remove(client) {
            held.extend(rest);
        }
        self.by_client.insert(client.clone(), held);
    }

    /// Every client's held pushes, each client's in order (an upgrade
    /// hands them to the next process).
    pub fn held(&self) -> impl Iterator<Item = (&Rc<str>, &VecDeque<Held>)> {
        self.by_client.iter()
    }

    /// Every client's sent at-least-once pushes waiting for their ack, each
    /// client's in the order they were sent, with the connection each went
    /// out on.
    pub fn unacked(&self) -> impl Iterator<Item = (&Rc<str>, Vec<(ConnRef, &Held)>)> {
        self.unacked
            .iter()
            .map(|(client, q)| (client, q.iter().map(|u| (u.conn, &u.held)).collect()))
    }

    /// Puts back the pushes another process kept (an upgrade): `held` in
    /// order, waiting for `client` to come online; whatever the bounds, as
    /// they were admitted under the bounds in force then. Unacked pushes go
    /// back with [`OfflineQueue::track`] (their connections keep their
    /// references across an upgrade).
    pub fn restore(&mut self, client: &Rc<str>, held: VecDeque<Held>) {
        for h in held {
            self.keep(client, h.frame.len(), h.expires);
            self.by_client
                .entry(client.clone())
                .or_default()
                .push_back(h);
        }
    }

    /// Removes pushes whose time to live has passed. Returns the held ones
    /// (never delivered) as (client, id); unacked ones were delivered and
    /// are only forgotten. O(expired · log n): the heap hands out the
    /// earliest expiry first.
    pub fn expire(&mut self, now: Micros) -> Vec<(Rc<str>, Rc<str>)> {
        let mut expired = Vec::new();
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, client))) = self.expiries.pop() else {
                break;
            };
            // Time to live differs per push: an expired one may stand behind
            // a live one. A queue is short (bounded per client).
            if let Some(queue) = self.by_client.get_mut(&client) {
                queue.retain(|h| {
                    let keep = h.expires > now;
                    if !keep {
                        self.bytes -= h.frame.len();
                        self.kept -= 1;
                        expired.push((client.clone(), h.message.clone()));
                    }
                    keep
                });
                if queue.is_empty() {
                    self.by_client.remove(&client);
                }
            }
            if let Some(queue) = self.unacked.get_mut(&client) {
                queue.retain(|u| {
                    let keep = u.held.expires > now;
                    if !keep {
                        self.bytes -= u.held.frame.len();
                        self.kept -= 1;
                    }
                    keep
                });
                if queue.is_empty() {
                    self.unacked.remove(&client);
                }
            }
        }
        expired
    }

    /// When the next kept push expires, if any.
    pub fn next_expiry(&self) -> Option<Micros> {
        self.expiries.peek().map(|Reverse((at, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: &str, expires: Micros) -> Held {
        Held {
            message: id.into(),
            frame: vec![0; 10],
            expires,
            at_least_once: true,
        }
    }

    fn conn(generation: u32) -> ConnRef {
        ConnRef { key: 0, generation }
    }

    fn ids(q: VecDeque<Held>) -> Vec<String> {
        q.into_iter().map(|h| h.message.to_string()).collect()
    }

    #[test]
    fn the_queue_is_bounded_ordered_and_expires() {
        let mut q = OfflineQueue::new(2, 25);
        let a: Rc<str> = "a".into();
        let b: Rc<str> = "b".into();
        q.hold(&a, held("1", 50)).unwrap();
        q.hold(&a, held("2", 100)).unwrap();
        assert_eq!(q.hold(&a, held("3", 100)), Err(QueueFull::PerClient(2)));
        assert_eq!(q.hold(&b, held("4", 100)), Err(QueueFull::Total(20)));
        assert_eq!(q.expire(60), vec![(a.clone(), Rc::from("1"))]);
        // An expired push behind a live one frees its slot too.
        let c: Rc<str> = "c".into();
        let mut q2 = OfflineQueue::new(2, 100);
        q2.hold(&c, held("long", 500)).unwrap();
        q2.hold(&c, held("short", 50)).unwrap();
        assert_eq!(q2.expire(60), vec![(c.clone(), Rc::from("short"))]);
        assert_eq!(q2.bytes(), 10);
        q2.hold(&c, held("again", 500)).unwrap();
        assert_eq!(q.bytes(), 10);
        assert_eq!(ids(q.take("a")), vec!["2"]);
        assert_eq!(q.bytes(), 0);
        assert!(q.expire(1000).is_empty());
    }

    #[test]
    fn unacked_pushes_count_and_go_back_to_the_front() {
        let mut q = OfflineQueue::new(3, 1000);
        let a: Rc<str> = "a".into();
        q.track(&a, conn(1), held("s1", 500));
        q.track(&a, conn(1), held("s2", 50));
        q.track(&a, conn(2), held("newer", 500));
        // Three kept for a: a held push does not fit.
        assert_eq!(q.hold(&a, held("h", 500)), Err(QueueFull::PerClient(3)));
        assert!(q.acked("a", "newer", false));
        assert!(!q.acked("a", "newer", false), "acked once");
        q.hold(&a, held("h", 500)).unwrap();
        // Connection 1 ends at 100: s2 is past its time, s1 goes in front of h.
        assert_eq!(q.hand_back(&a, conn(1), 100), vec![Rc::from("s1")]);
        assert_eq!(q.bytes(), 20);
        // Acked while handed back (sent before): it is not sent again.
        q.track(&a, conn(3), held("t", 500));
        assert_eq!(q.hand_back(&a, conn(3), 100), vec![Rc::from("t")]);
        assert!(q.acked("a", "t", true));
        assert_eq!(ids(q.take("a")), vec!["s1", "h"]);
        assert_eq!(q.bytes(), 0);
        assert!(q.expire(1000).is_empty(), "nothing held was left to expire");
    }

    #[test]
    fn an_unacked_push_past_its_time_is_forgotten_silently() {
        let mut q = OfflineQueue::new(5, 1000);
        let a: Rc<str> = "a".into();
        q.track(&a, conn(1), held("s", 50));
        assert!(
            q.expire(60).is_empty(),
            "it was delivered: no expiry to report"
        );
        assert_eq!(q.bytes(), 0);
        assert!(q.hand_back(&a, conn(1), 60).is_empty());
    }

    #[test]
    fn the_expiry_heap_is_compacted() {
        let mut q = OfflineQueue::new(10, usize::MAX);
        let a: Rc<str> = "a".into();
        for i in 0..10_000 {
            let id = format!("p{i}");
            q.track(&a, conn(1), held(&id, 1_000_000));
            assert!(q.acked("a", &id, false));
        }
        assert!(q.expiries.len() < 2 * 1024, "{} entries", q.expiries.len());
        assert_eq!(q.kept, 0);
    }
}
