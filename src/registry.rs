//! Who is online: client id → where its connection is.
//!
//! The loop asks through the [`Registry`] trait, so that cluster mode can
//! keep presence and routing in a shared store (Redis) without touching the
//! loop. Two things make that possible: a lookup answers "here, on this
//! connection", "on another node" or "nowhere", and it may answer later — a
//! shared store replies on one of the registry's own sockets, which the loop
//! polls like any other, and the loop picks the answer up with
//! [`Registry::answered`]. Nothing blocks.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::rc::Rc;

use mio::Token;

use crate::server::ConnRef;

/// Names a lookup that is answered later.
pub type Ticket = u64;

/// Where an id is online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On this node, on this connection.
    Here(ConnRef),
    /// On another node (its id).
    Elsewhere(Rc<str>),
    /// Nowhere.
    Offline,
    /// The shared store cannot be asked now (cluster mode, Redis down): the
    /// id may be online on another node.
    Unavailable,
}

/// A registry's answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Ready(Location),
    /// Asked of the shared store: the answer comes through
    /// [`Registry::answered`] under this ticket.
    Pending(Ticket),
}

/// The first token the registry's own sockets may use, and how many it has.
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    pub first: usize,
    pub count: usize,
}

/// The online registry as the event loop uses it.
pub trait Registry {
    /// Marks `id` online at `conn`; returns the connection on this node that
    /// held it before (the caller ends it as `replaced`). A holder on another
    /// node is the registry's to tell.
    fn claim(&mut self, id: &Rc<str>, conn: ConnRef) -> Option<ConnRef>;

    /// Marks `id` offline, but only if `conn` still holds it: a late close of
    /// a replaced connection must not take its successor offline.
    fn release(&mut self, id: &str, conn: ConnRef) -> bool;

    /// The connection on this node that holds `id`.
    fn local(&self, id: &str) -> Option<ConnRef>;

    /// Where `id` is online, now or later.
    fn locate(&mut self, id: &str) -> Lookup {
        Lookup::Ready(match self.local(id) {
            Some(conn) => Location::Here(conn),
            None => Location::Offline,
        })
    }

    /// Moves the answers to pending lookups that arrived since the last call
    /// into `into`, in the order they arrived.
    fn answered(&mut self, _into: &mut Vec<(Ticket, Location)>) {}

    /// Registers the registry's own sockets with the loop's poll.
    fn register(&mut self, _poll: &mio::Registry, _tokens: Tokens) -> io::Result<()> {
        Ok(())
    }

    /// One of the registry's own tokens is ready.
    fn on_ready(&mut self, _token: Token) {}

    /// When the registry next needs the loop (a reconnect, a liveness
    /// refresh); `None`: never by itself.
    fn next_wake(&self) -> Option<std::time::Instant> {
        None
    }

    /// Called once per loop iteration, after everything else: the
    /// registry's timers, and one write of what it queued this iteration.
    fn on_time(&mut self, _now: std::time::Instant) {}

    /// Appends the registry's own metrics (Prometheus text) to `out`.
    fn render_metrics(&self, _out: &mut String) {}

    /// Cluster mode's registry, for what only the cluster does (routing to
    /// other nodes, questions to Redis); `None` standalone.
    fn shared(&mut self) -> Option<&mut crate::cluster::Cluster> {
        None
    }

    /// Number of ids online on this node.
    fn local_len(&self) -> usize;

    /// Up to `limit` ids online on this node, in id order, starting after
    /// `after` (a cursor).
    fn page(&self, after: Option<&str>, limit: usize) -> Vec<(Rc<str>, ConnRef)>;

    /// Calls `f` for every connection online on this node (a broadcast),
    /// without copying the set.
    fn for_each_local(&self, f: &mut dyn FnMut(ConnRef));
}

/// The registry of a single process: one ordered map on the loop's thread
/// (ordered so that `/clients` pages with a stable cursor; a B-tree also
/// packs its entries more tightly than a hash map's sparse table).
#[derive(Default)]
pub struct LocalRegistry {
    online: BTreeMap<Rc<str>, ConnRef>,
}

impl Registry for LocalRegistry {
    fn claim(&mut self, id: &Rc<str>, conn: ConnRef) -> Option<ConnRef> {
        self.online
            .insert(id.clone(), conn)
            .filter(|&old| old != conn)
    }

    fn release(&mut self, id: &str, conn: ConnRef) -> bool {
        if self.online.get(id) == Some(&conn) {
            self.online.remove(id);
            true
        } else {
            false
        }
    }

    fn local(&self, id: &str) -> Option<ConnRef> {
        self.online.get(id).copied()
    }

    fn local_len(&self) -> usize {
        self.online.len()
    }

    fn page(&self, after: Option<&str>, limit: usize) -> Vec<(Rc<str>, ConnRef)> {
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.online
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(id, conn)| (id.clone(), *conn))
            .collect()
    }

    fn for_each_local(&self, f: &mut dyn FnMut(ConnRef)) {
        for &conn in self.online.values() {
            f(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(key: u32) -> ConnRef {
        ConnRef { key, generation: 1 }
    }

    #[test]
    fn a_replaced_connection_cannot_release_its_successor() {
        let mut r = LocalRegistry::default();
        let (old, new) = (conn(1), conn(2));
        let a: Rc<str> = "a".into();
        assert_eq!(r.claim(&a, old), None);
        assert_eq!(r.claim(&a, new), Some(old));
        assert!(!r.release("a", old));
        assert_eq!(r.locate("a"), Lookup::Ready(Location::Here(new)));
        assert!(r.release("a", new));
        assert_eq!(r.locate("a"), Lookup::Ready(Location::Offline));
        assert_eq!(r.local_len(), 0);
    }

    #[test]
    fn pages_follow_the_cursor() {
        let mut r = LocalRegistry::default();
        for (i, id) in ["d", "a", "c", "b", "e"].iter().enumerate() {
            r.claim(&Rc::from(*id), conn(i as u32));
        }
        let ids = |page: Vec<(Rc<str>, ConnRef)>| {
            page.iter()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(r.page(None, 2)), ["a", "b"]);
        assert_eq!(ids(r.page(Some("b"), 2)), ["c", "d"]);
        assert_eq!(ids(r.page(Some("d"), 2)), ["e"]);
        let mut all = 0;
        r.for_each_local(&mut |_| all += 1);
        assert_eq!(all, 5);
    }
}
