//! Push receipts: what became of each push. Bounded by a time to live and a
//! count (oldest first out). The pushes themselves, while kept for a client,
//! are in [`crate::offline`].

use std::collections::{HashMap, VecDeque};
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
    /// Times an at-least-once push was sent again after its connection
    /// ended unacked.
    pub redelivered: u32,
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

    /// Every receipt with its push id, oldest first.
    pub fn in_order(&self) -> impl Iterator<Item = (&Rc<str>, &Receipt)> {
        self.order
            .iter()
            .filter_map(|(_, id)| self.by_id.get_key_value(id))
    }

    /// When the oldest receipt's time to live runs out, if any is kept.
    pub fn next_expiry(&self) -> Option<Micros> {
        self.order.front().map(|(created, _)| created + self.ttl)
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

#[cfg(test)]
mod tests {
    use super::*;

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
            redelivered: 0,
        };
        r.insert("p1".into(), receipt(0));
        r.insert("p2".into(), receipt(10));
        r.insert("p3".into(), receipt(20));
        assert!(r.get("p1").is_none(), "evicted at the count bound");
        r.expire(115);
        assert!(r.get("p2").is_none());
        assert!(r.get("p3").is_some());
    }
}
