//! Who is online: client id → the connection that holds it.
//!
//! Kept behind a small trait so that a cluster mode can put presence and
//! routing in Redis without touching the event loop.

use std::collections::HashMap;
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
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The registry of a single process: one hash map on the loop's thread.
#[derive(Default)]
pub struct LocalRegistry {
    online: HashMap<Rc<str>, ConnRef>,
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
}
