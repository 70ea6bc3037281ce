//! Push receipts and the offline queue: what became of each push, and pushes
//! held for a client that is offline until it logs in again or they expire.
//!
//! Both are bounded: receipts by a time to live and a count (oldest first
//! out), held pushes per client and in total bytes (a push over a bound is
//! refused, never an unbounded heap).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;

use crate::clock::Micros;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Held for an offline client.
    Queued,
    /// Handed to the client's connection.
    Sent,
    /// The client acked it.
    Acked,
    /// Its queue time to live passed before the client came back.
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sent => "sent",
            Status::Acked => "acked",
            Status::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Receipt {
    pub to: Rc<str>,
    pub status: Status,
    pub created: Micros,
    pub sent: Option<Micros>,
    pub acked: Option<Micros>,
    /// When a queued push expires.
    pub expires: Option<Micros>,
    /// A broadcast: how many clients it was handed to (`to` is then `*`).
    pub recipients: Option<usize>,
}

/// Receipts by push id.
pub struct Receipts {
    by_id: HashMap<Rc<str>, Receipt>,
    /// Creation order, for expiry and eviction.
    order: VecDeque<(Micros, Rc<str>)>,
    ttl: Micros,
    max: usize,
}

impl Receipts {
    pub fn new(ttl: Micros, max: usize) -> Receipts {
        Receipts {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn insert(&mut self, id: Rc<str>, receipt: Receipt) {
        if self.max == 0 {
            return;
        }
        while self.by_id.len() >= self.max {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.by_id.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back((receipt.created, id.clone()));
        self.by_id.insert(id, receipt);
    }

    pub fn get(&self, id: &str) -> Option<&Receipt> {
        self.by_id.get(id)
    }

    /// The receipt, unless its time to live has passed (whether or not the
    /// sweep has run since).
    pub fn get_live(&self, id: &str, now: Micros) -> Option<&Receipt> {
        self.by_id
            .get(id)
            .filter(|r| now.saturating_sub(r.created) < self.ttl)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Receipt> {
        self.by_id.get_mut(id)
    }

    /// Forgets receipts older than the time to live; O(forgotten).
    pub fn expire(&mut self, now: Micros) {
        while let Some((created, _)) = self.order.front() {
            if now.saturating_sub(*created) < self.ttl {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
    }
}

/// One push held for an offline client: its id and its encoded `<msg>` frame.
#[derive(Debug, Clone)]
pub struct Held {
    pub message: Rc<str>,
    pub frame: Vec<u8>,
    pub expires: Micros,
}

/// Why a push could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    #[error("the client already has {0} pushes waiting")]
    PerClient(usize),
    #[error("the offline queue already holds {0} bytes")]
    Total(usize),
}

/// Pushes waiting for offline clients, in order per client.
pub struct OfflineQueue {
    by_client: HashMap<Rc<str>, VecDeque<Held>>,
    /// (expiry, client) for every held push, earliest first.
    expiries: BinaryHeap<Reverse<(Micros, Rc<str>)>>,
    bytes: usize,
    max_per_client: usize,
    max_bytes: usize,
}

impl OfflineQueue {
    pub fn new(max_per_client: usize, max_bytes: usize) -> OfflineQueue {
        OfflineQueue {
            by_client: HashMap::new(),
            expiries: BinaryHeap::new(),
            bytes: 0,
            max_per_client,
            max_bytes,
        }
    }

    /// Bytes held in total.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Pushes held, for every client together (counted for a scrape).
    pub fn len(&self) -> usize {
        self.by_client.values().map(VecDeque::len).sum()
    }

    pub fn hold(&mut self, client: &Rc<str>, held: Held) -> Result<(), QueueFull> {
        let waiting = self.by_client.get(client).map_or(0, VecDeque::len);
        if waiting >= self.max_per_client {
            return Err(QueueFull::PerClient(waiting));
        }
        if self.bytes + held.frame.len() > self.max_bytes {
            return Err(QueueFull::Total(self.bytes));
        }
        self.bytes += held.frame.len();
        self.expiries.push(Reverse((held.expires, client.clone())));
        self.by_client
            .entry(client.clone())
            .or_default()
            .push_back(held);
        Ok(())
    }

    /// Everything held for `client`, in order, expired or not.
    pub fn take(&mut self, client: &str) -> VecDeque<Held> {
        let held = self.by_client.remove(client).unwrap_or_default();
        self.bytes -= held.iter().map(|h| h.frame.len()).sum::<usize>();
        held
    }

    /// Whether anything is held for anyone (a cheap check for hot paths).
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Whether pushes are held for `client`.
    pub fn holds(&self, client: &str) -> bool {
        self.by_client.contains_key(client)
    }

    /// Puts back, in front and in order, what could not be delivered yet.
    pub fn put_back(&mut self, client: &Rc<str>, mut held: VecDeque<Held>) {
        if held.is_empty() {
            return;
        }
        self.bytes += held.iter().map(|h| h.frame.len()).sum::<usize>();
        if let Some(rest) = self.by_client.remove(client) {
            held.extend(rest);
        }
        self.by_client.insert(client.clone(), held);
    }

    /// Removes pushes whose time to live has passed; returns their ids.
    /// O(expired · log n): the heap hands out the earliest expiry first.
    pub fn expire(&mut self, now: Micros) -> Vec<Rc<str>> {
        let mut expired = Vec::new();
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, client))) = self.expiries.pop() else {
                break;
            };
            // The client may have logged in (its queue taken) since.
            let Some(queue) = self.by_client.get_mut(&client) else {
                continue;
            };
            // Time to live differs per push: an expired one may stand behind
            // a live one. A queue is short (bounded per client).
            queue.retain(|h| {
                if h.expires <= now {
                    self.bytes -= h.frame.len();
                    expired.push(h.message.clone());
                    false
                } else {
                    true
                }
            });
            if queue.is_empty() {
                self.by_client.remove(&client);
            }
        }
        expired
    }

    /// When the next held push expires, if any.
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
        }
    }

    #[test]
    fn receipts_expire_and_evict_oldest_first() {
        let mut r = Receipts::new(100, 2);
        let receipt = |created| Receipt {
            to: "a".into(),
            status: Status::Sent,
            created,
            sent: None,
            acked: None,
            expires: None,
            recipients: None,
        };
        r.insert("p1".into(), receipt(0));
        r.insert("p2".into(), receipt(10));
        r.insert("p3".into(), receipt(20));
        assert!(r.get("p1").is_none(), "evicted at the count bound");
        r.expire(115);
        assert!(r.get("p2").is_none());
        assert!(r.get("p3").is_some());
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
        assert_eq!(q.expire(60), vec![Rc::from("1")]);
        // An expired push behind a live one frees its slot too.
        let c: Rc<str> = "c".into();
        let mut q2 = OfflineQueue::new(2, 100);
        q2.hold(&c, held("long", 500)).unwrap();
        q2.hold(&c, held("short", 50)).unwrap();
        assert_eq!(q2.expire(60), vec![Rc::from("short")]);
        assert_eq!(q2.bytes(), 10);
        q2.hold(&c, held("again", 500)).unwrap();
        assert_eq!(q.bytes(), 10);
        let taken: Vec<_> = q.take("a").into_iter().map(|h| h.message).collect();
        assert_eq!(taken, vec![Rc::from("2")]);
        assert_eq!(q.bytes(), 0);
        assert!(q.expire(1000).is_empty());
    }
}
