//! Who is online: client id → the connection that holds it.
//!
//! Kept behind a small trait so that a cluster mode can put presence and
//! routing in Redis without touching the event loop.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;

use crate::conn::ConnRef;

/// The online registry as the event loop uses it.
pub trait Registry {
    /// Marks `id` online at `conn`; returns the connection that held it before
    /// (the caller closes that one as `replaced`).
    fn claim(&mut self, id: Rc<str>, conn: ConnRef) -> Option<ConnRef>;
    /// Marks `id` offline, but only if `conn` still holds it: a late close of a
    /// replaced connection must not take its successor offline.
    fn release(&mut self, id: &str, conn: ConnRef) -> bool;
    /// The connection holding `id`, if it is online.
    fn lookup(&self, id: &str) -> Option<ConnRef>;
    /// Number of online ids.
    fn len(&self) -> usize;
    /// Up to `limit` online ids in id order, starting after `after` (a cursor).
    fn page(&self, after: Option<&str>, limit: usize) -> Vec<(Rc<str>, ConnRef)>;
    /// Every online connection (for a broadcast).
    fn all(&self) -> Vec<ConnRef>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The registry of a single process: one ordered map on the loop's thread
/// (ordered so that `/clients` pages with a stable cursor; a B-tree also
/// packs its entries more tightly than a hash map's sparse table).
#[derive(Default)]
pub struct LocalRegistry {
    online: BTreeMap<Rc<str>, ConnRef>,
}

impl Registry for LocalRegistry {
    fn claim(&mut self, id: Rc<str>, conn: ConnRef) -> Option<ConnRef> {
        self.online.insert(id, conn)
    }

    fn release(&mut self, id: &str, conn: ConnRef) -> bool {
        if self.online.get(id) == Some(&conn) {
            self.online.remove(id);
            true
        } else {
            false
        }
    }

    fn lookup(&self, id: &str) -> Option<ConnRef> {
        self.online.get(id).copied()
    }

    fn len(&self) -> usize {
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

    fn all(&self) -> Vec<ConnRef> {
        self.online.values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_connection_cannot_release_its_successor() {
        let mut r = LocalRegistry::default();
        let old = ConnRef {
            key: 1,
            generation: 1,
        };
        let new = ConnRef {
            key: 2,
            generation: 2,
        };
        assert_eq!(r.claim("a".into(), old), None);
        assert_eq!(r.claim("a".into(), new), Some(old));
        assert!(!r.release("a", old));
        assert_eq!(r.lookup("a"), Some(new));
        assert!(r.release("a", new));
        assert!(r.is_empty());
    }

    #[test]
    fn pages_follow_the_cursor() {
        let mut r = LocalRegistry::default();
        for (i, id) in ["d", "a", "c", "b", "e"].iter().enumerate() {
            r.claim(
                (*id).into(),
                ConnRef {
                    key: i as u32,
                    generation: 1,
                },
            );
        }
        let ids = |page: Vec<(Rc<str>, ConnRef)>| {
            page.iter()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(r.page(None, 2)), ["a", "b"]);
        assert_eq!(ids(r.page(Some("b"), 2)), ["c", "d"]);
        assert_eq!(ids(r.page(Some("d"), 2)), ["e"]);
        assert_eq!(r.all().len(), 5);
    }
}
