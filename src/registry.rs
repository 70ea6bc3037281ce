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

    /// Calls `f` for every connection online on this node, without copying
    /// the set.
    fn for_each_local(&self, f: &mut dyn FnMut(ConnRef));

    /// Calls `visit` for the connections online on this node in id order,
    /// starting at `from` (or its successor when it is gone; the first id
    /// when `None`), until `visit` returns false. A broadcast walks the set
    /// in slices this way, resuming where the last slice stopped. This
    /// default reads the set a page at a time; a registry that can walk it
    /// in place should (the local one does).
    fn visit_local(&self, from: Option<&str>, visit: &mut dyn FnMut(&Rc<str>, ConnRef) -> bool) {
        let mut after: Option<Rc<str>> = None;
        if let Some(id) = from {
            if let Some(conn) = self.local(id) {
                if !visit(&Rc::from(id), conn) {
                    return;
                }
            }
            after = Some(Rc::from(id));
        }
        loop {
            let page = self.page(after.as_deref(), VISIT_PAGE);
            for (id, conn) in &page {
                if !visit(id, *conn) {
                    return;
                }
            }
            match page.last() {
                Some((id, _)) if page.len() == VISIT_PAGE => after = Some(id.clone()),
                _ => return,
            }
        }
    }
}

/// Entries the default [`Registry::visit_local`] reads per page.
const VISIT_PAGE: usize = 256;

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

    fn visit_local(&self, from: Option<&str>, visit: &mut dyn FnMut(&Rc<str>, ConnRef) -> bool) {
        let start = from.map_or(Bound::Unbounded, Bound::Included);
        for (id, &conn) in self.online.range::<str, _>((start, Bound::Unbounded)) {
            if !visit(id, conn) {
                return;
            }
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

    /// A registry that only has the required methods, to test the default walk.
    struct Paged(LocalRegistry);

    impl Registry for Paged {
        fn claim(&mut self, id: &Rc<str>, conn: ConnRef) -> Option<ConnRef> {
            self.0.claim(id, conn)
        }
        fn release(&mut self, id: &str, conn: ConnRef) -> bool {
            self.0.release(id, conn)
        }
        fn local(&self, id: &str) -> Option<ConnRef> {
            self.0.local(id)
        }
        fn local_len(&self) -> usize {
            self.0.local_len()
        }
        fn page(&self, after: Option<&str>, limit: usize) -> Vec<(Rc<str>, ConnRef)> {
            self.0.page(after, limit)
        }
        fn for_each_local(&self, f: &mut dyn FnMut(ConnRef)) {
            self.0.for_each_local(f)
        }
    }

    /// Walks from `from`, stopping after `stop` visits; returns the ids seen.
    fn walk(r: &dyn Registry, from: Option<&str>, stop: usize) -> Vec<String> {
        let mut seen = Vec::new();
        r.visit_local(from, &mut |id, _| {
            seen.push(id.to_string());
            seen.len() < stop
        });
        seen
    }

    #[test]
    fn a_walk_resumes_at_its_cursor_in_place_and_by_pages() {
        let mut local = LocalRegistry::default();
        // More than a page, so the default walk turns pages.
        let ids: Vec<String> = (0..600).map(|i| format!("id{i:04}")).collect();
        for (i, id) in ids.iter().enumerate() {
            local.claim(&Rc::from(id.as_str()), conn(i as u32));
        }
        let paged = Paged(LocalRegistry {
            online: local.online.clone(),
        });
        for r in [&local as &dyn Registry, &paged] {
            assert_eq!(walk(r, None, usize::MAX), ids);
            assert_eq!(walk(r, None, 3), ids[..3]);
            // From an id still there: it comes first; from one that left
            // (or never was): its successor does.
            assert_eq!(walk(r, Some("id0300"), usize::MAX), ids[300..]);
            assert_eq!(walk(r, Some("id0300a"), 2), ids[301..303]);
            assert_eq!(walk(r, Some("id0599"), usize::MAX), ids[599..]);
            assert!(walk(r, Some("zzz"), usize::MAX).is_empty());
        }
    }
}
