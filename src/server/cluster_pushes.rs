//! Cluster mode's pushes, the loop's side. The queue, the at-least-once
//! pushes not acked yet, the receipts and the `queued` / `expired` events
//! live in Redis (`cluster::push_scripts`), so that they survive any node;
//! this node keeps copies only to write them to its own connections:
//!
//! - a login reads its waiting pushes (`TAKE`, one round trip after the
//!   `welcome`) into the local queue, which `deliver_held` writes as the
//!   socket takes them; each push leaves Redis's queue when it is written
//!   (`SENT`), so a connection that ends first leaves the rest there;
//! - an at-least-once push (`queue_ttl_ms`) written to a connection is kept
//!   in Redis until acked (`SENT` with the frame, `ACKED`) and tracked here;
//!   when the connection ends first, Redis puts it back at the front of the
//!   queue (`HANDBACK`, a `queued` event while the client is offline), and
//!   the node the client is on now, if any, takes it again at once;
//! - a node that dies leaves its unacked pushes in Redis: the survivor that
//!   cleans up after it hands them back the same way (`CLEANUP`).

use std::collections::VecDeque;
use std::rc::Rc;

use redis_protocol::resp2::types::OwnedFrame;

use crate::admin::{Pushed, Refused};
use crate::cluster::scripts::Script;
use crate::cluster::{resp, unix_ms};
use crate::offline::Held;
use crate::server::backend::{busy, queue_full};
use crate::server::cluster::Ask;
use crate::server::conn::ConnRef;
use crate::server::core::Core;
use crate::server::outbound::Prepared;

/// A push written to a connection that is kept until acked: the connection,
/// when it expires (unix ms) and its frame.
pub(super) struct Kept<'a> {
    pub conn: ConnRef,
    pub expires_ms: u64,
    pub frame: &'a [u8],
}

impl Core {
    /// Records in Redis that push `mid` was written to `to`'s connection
    /// (its receipt says `sent`); `kept`: an at-least-once push, kept until
    /// acked. Redis down: nothing is recorded (the push was at most once).
    pub(super) fn cluster_sent(&mut self, mid: &str, to: &str, kept: Option<Kept<'_>>) {
        let ttl = self.config.receipt_ttl.as_millis().to_string();
        let Some(cluster) = self.registry.shared().filter(|c| c.is_up()) else {
            return;
        };
        let mut args: Vec<Vec<u8>> = [mid, to, &unix_ms().to_string(), &ttl]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        if let Some(kept) = kept {
            args.push(cluster.node().as_bytes().to_vec());
            args.push(kept.conn.generation.to_string().into_bytes());
            args.push(kept.expires_ms.to_string().into_bytes());
            args.push(kept.frame.to_vec());
        }
        cluster.run_script(Script::Sent, args);
    }

    /// An admin push to a client on this node, in cluster mode: as
    /// standalone, and recorded in Redis.
    pub(super) fn push_here(
        &mut self,
        target: ConnRef,
        to: &str,
        body: &[u8],
        queue_ttl_ms: Option<u64>,
    ) -> Result<Pushed, Refused> {
        let message = self.pushes.new_id();
        let frame = self.encode_push(&message, body)?;
        let to: Rc<str> = Rc::from(to);
        if queue_ttl_ms.is_some() {
            self.pushes.admits(&to, frame.len()).map_err(queue_full)?;
        }
        if !self.clients.has_room(target, frame.len()) {
            return Err(busy(&to));
        }
        let mut frame = Prepared::new(frame);
        if self
            .clients
            .send_prepared(target, &mut frame, true)
            .is_err()
        {
            return Err(busy(&to));
        }
        let now = self.clock.now_us();
        self.pushes.sent(&message, &to, now);
        match queue_ttl_ms {
            None => self.cluster_sent(&message, &to, None),
            Some(ttl) => {
                let expires = now + ttl * 1000;
                let frame = frame.into_raw();
                let kept = Kept {
                    conn: target,
                    expires_ms: self.clock.unix_ms(expires),
                    frame: &frame,
                };
                self.cluster_sent(&message, &to, Some(kept));
                let held = Held {
                    message: message.clone(),
                    frame,
                    expires,
                    at_least_once: true,
                };
                self.pushes.track(&to, target, held);
            }
        }
        Ok(Pushed::Sent {
            id: message,
            target,
        })
    }

    /// A push forwarded from `origin` for local client `to` (`exp`: an
    /// at-least-once push): `sent`, `offline`, `busy` or `full`.
    pub(super) fn deliver_forwarded(
        &mut self,
        to: &str,
        mid: &str,
        frame: Vec<u8>,
        origin: &str,
        exp: Option<u64>,
    ) -> &'static str {
        let Some(target) = self.registry.local(to).filter(|&c| self.clients.is_live(c)) else {
            return "offline";
        };
        if exp.is_some() && self.pushes.admits(to, frame.len()).is_err() {
            self.pushes.stats.refused_full += 1;
            return "full";
        }
        if !self.clients.has_room(target, frame.len()) {
            return "busy";
        }
        let mut frame = Prepared::new(frame);
        if self
            .clients
            .send_prepared(target, &mut frame, true)
            .is_err()
        {
            return "busy";
        }
        let mid: Rc<str> = Rc::from(mid);
        self.cluster_state
            .remember_forwarded(mid.clone(), origin, target);
        let Some(expires_ms) = exp else {
            self.cluster_sent(&mid, to, None);
            return "sent";
        };
        let frame = frame.into_raw();
        let kept = Kept {
            conn: target,
            expires_ms,
            frame: &frame,
        };
        self.cluster_sent(&mid, to, Some(kept));
        let held = Held {
            message: mid,
            frame,
            expires: self.clock.at_unix_ms(expires_ms),
            at_least_once: true,
        };
        self.pushes.track(&Rc::from(to), target, held);
        "sent"
    }

    /// Cluster mode: a login on this node, after the local claim: recorded
    /// in Redis, and the pushes waiting for it are read.
    pub(super) fn cluster_login(&mut self, conn: ConnRef, id: &Rc<str>) {
        let Some(c) = self.clients.get(conn) else {
            return;
        };
        let since = self.clock.unix_ms(c.connected_at);
        let peer = c.peer.to_string();
        let Some(cluster) = self.registry.shared() else {
            return;
        };
        if !cluster.is_up() {
            return; // the re-assert after the reconnect records it
        }
        let value = cluster.value(conn.generation, since, &peer);
        cluster.announce(id, value);
        self.take_for(id);
    }

    /// Reads the pushes waiting for `id` in Redis, for its connection here.
    pub(super) fn take_for(&mut self, id: &Rc<str>) {
        let Some(conn) = self.registry.local(id).filter(|&c| self.clients.is_live(c)) else {
            return;
        };
        let q = self.cluster_state.number(Ask::Take {
            conn,
            id: id.clone(),
        });
        let Some(cluster) = self.registry.shared().filter(|c| c.is_up()) else {
            self.cluster_state.asks.remove(&q);
            return;
        };
        let me = cluster.node().as_bytes().to_vec();
        let now = unix_ms().to_string();
        let args = vec![
            id.as_bytes().to_vec(),
            now.clone().into_bytes(),
            me,
            now.into_bytes(),
        ];
        cluster.ask_script(q, Script::Take, args);
    }

    /// The pushes waiting for `id` ({expired, push id, expires-ms, frame,
    /// redelivery, ...}): staged in order behind what is staged already,
    /// then written as far as the socket takes them.
    pub(super) fn deliver_taken(&mut self, conn: ConnRef, id: &Rc<str>, frame: &OwnedFrame) {
        let items = resp::array(frame);
        let expired = items.first().and_then(resp::int).unwrap_or(0).max(0);
        self.pushes.stats.expired += expired as u64;
        let here = self
            .clients
            .get(conn)
            .and_then(|c| c.id())
            .is_some_and(|held| held == id);
        if !here {
            return; // gone again: the pushes stay in Redis
        }
        let mut staged = VecDeque::new();
        for item in items.get(1..).unwrap_or_default().chunks(4) {
            let (Some(mid), Some(exp), Some(OwnedFrame::BulkString(bytes))) = (
                item.first().and_then(resp::text),
                item.get(1)
                    .and_then(resp::text)
                    .and_then(|e| e.parse::<u64>().ok()),
                item.get(2),
            ) else {
                continue;
            };
            if self.pushes.knows(id, mid) {
                continue; // staged or written already (read twice)
            }
            if item.get(3).and_then(resp::int) == Some(1) {
                self.pushes.stats.redelivered += 1;
            }
            staged.push_back(Held {
                message: Rc::from(mid),
                frame: bytes.to_vec(),
                expires: self.clock.at_unix_ms(exp),
                at_least_once: true,
            });
        }
        if staged.is_empty() {
            return;
        }
        let mut all = self.pushes.take_held(id);
        all.extend(staged);
        self.pushes.put_back(id, all);
        self.deliver_held(conn);
    }

    /// Cluster mode: `id`'s connection `conn` ended. What this node kept
    /// for it (unacked pushes, pushes read and not written yet) is in Redis
    /// too: the copies go, and Redis hands the unacked ones back.
    pub(super) fn cluster_hand_back(&mut self, id: &Rc<str>, conn: ConnRef) {
        let back = self.pushes.hand_back(id, conn, self.clock.now_us());
        let _ = self.pushes.take_held(id);
        if back.is_empty() {
            return;
        }
        // Redis down: its re-assert's reconcile hands them back later.
        if let Some(cluster) = self.registry.shared().filter(|c| c.is_up()) {
            cluster.hand_back(id, conn.generation);
        }
    }

    /// Cluster mode: a client acked push `mid`: its receipt and unacked copy
    /// in Redis, and the node that forwarded it (whose admin request may
    /// wait) is told.
    pub(super) fn cluster_ack(&mut self, mid: &str, acker_id: &str, acker: ConnRef) {
        let at = unix_ms().to_string();
        if let Some(cluster) = self.registry.shared().filter(|c| c.is_up()) {
            let args = [mid, acker_id, &at]
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect();
            cluster.run_script(Script::Acked, args);
        }
        let forwarded = self.cluster_state.forwarded.get(mid).cloned();
        if let Some((origin, conn)) = forwarded {
            if conn == acker {
                self.cluster_state.forwarded.remove(mid);
                self.tell(
                    &origin,
                    &crate::cluster::notes::Note::Acked {
                        mid: mid.to_string(),
                    },
                );
            }
        }
    }
}
