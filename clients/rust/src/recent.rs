//! The ids of the last messages handed to the app, and whether the app has
//! acked each: the server sends an at-least-once push again, under the same
//! id, when the connection it went out on ended before the ack (protocol
//! 1.2). The app must see it once; if it acked it already, the ack that got
//! lost with the old connection is due again. Bounded: the oldest id is
//! forgotten first (a redelivery follows its original within a reconnect or
//! two, far inside the bound).

use std::collections::{HashMap, VecDeque};

/// Ids remembered at most (the browser and Java clients keep about as many).
pub(crate) const RECENT_IDS: usize = 1024;

/// What to do with a message that just arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Not seen recently: hand it to the app.
    New,
    /// Handed to the app and acked: the server missed the ack; send it again.
    AckedBefore,
    /// Handed to the app, not acked yet: the app still has it; drop the copy.
    Pending,
}

pub(crate) struct RecentIds {
    acked: HashMap<String, bool>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> RecentIds {
        RecentIds {
            acked: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn arrived(&mut self, id: &str) -> Arrival {
        match self.acked.get(id) {
            Some(true) => Arrival::AckedBefore,
            Some(false) => Arrival::Pending,
            None => {
                self.remember(id, false);
                Arrival::New
            }
        }
    }

    /// The app acked `id`.
    pub(crate) fn acked(&mut self, id: &str) {
        match self.acked.get_mut(id) {
            Some(acked) => *acked = true,
            None => self.remember(id, true),
        }
    }

    fn remember(&mut self, id: &str, acked: bool) {
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.acked.remove(&oldest);
            }
        }
        self.order.push_back(id.to_string());
        self.acked.insert(id.to_string(), acked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_dropped_or_reacked_and_the_oldest_is_forgotten() {
        let mut ids = RecentIds::new(2);
        assert_eq!(ids.arrived("p-1"), Arrival::New);
        assert_eq!(ids.arrived("p-1"), Arrival::Pending);
        ids.acked("p-1");
        assert_eq!(ids.arrived("p-1"), Arrival::AckedBefore);
        assert_eq!(ids.arrived("p-2"), Arrival::New);
        assert_eq!(ids.arrived("p-3"), Arrival::New);
        assert_eq!(ids.arrived("p-1"), Arrival::New, "forgotten at the bound");
        assert_eq!(ids.order.len(), 2);
        assert_eq!(ids.acked.len(), 2);
    }
}
