//! What the command and pub/sub connections' replies mean: lookups
//! answered, logins that took an id from another node (told `replaced`),
//! dead nodes found by the liveness refresh and cleaned up after, the
//! re-assert's stale connections, notes from other nodes, and the EVAL
//! fallback when Redis lost a script.

use std::rc::Rc;
use std::time::Instant;

use log::{info, warn};
use redis_protocol::resp2::types::OwnedFrame;

use crate::cluster::notes::Note;
use crate::cluster::resp;
use crate::cluster::scripts::{Script, SEP};
use crate::cluster::{unix_ms, Cluster, Expect, Inbound, Pending, BATCH};
use crate::registry::{Location, Registry};

impl Cluster {
    /// A reply that will not come: answer what waited for it.
    pub(super) fn fail(&mut self, expect: Expect) {
        match expect {
            Expect::Locate(ticket) => self.answered.push((ticket, Location::Unavailable)),
            Expect::Ask(q) => self.inbox.push(Inbound::Answer(q, None)),
            Expect::Cleaned { node } => {
                self.cleaning.remove(&node);
            }
            _ => {}
        }
    }

    fn on_reply(&mut self, expect: Expect, frame: OwnedFrame) {
        if let OwnedFrame::Error(e) = &frame {
            if !matches!(expect, Expect::Ask(_)) {
                warn!("redis: {e}");
                return self.fail(expect);
            }
        }
        match expect {
            Expect::Nothing => {}
            Expect::Reconciled => {
                self.reasserting = false;
                self.deliver_handed_back(&frame, 1);
            }
            Expect::HandedBack { id } => {
                let r = resp::array(&frame);
                if r.first().and_then(resp::int).unwrap_or(0) > 0 {
                    if let Some(node) = r.get(1).and_then(resp::text) {
                        let node = node.to_string();
                        self.deliver_on(&id, &node);
                    }
                }
            }
            Expect::Swept => {
                let n = resp::int(&frame).unwrap_or(0).max(0) as u64;
                if n > 0 {
                    self.inbox.push(Inbound::Expired(n));
                }
            }
            Expect::Locate(ticket) => {
                let location = match resp::text(&frame) {
                    None => Location::Offline,
                    Some(v) => match v.split(SEP).next() {
                        Some(node) if node == &*self.me || node.is_empty() => Location::Offline,
                        Some(node) => Location::Elsewhere(Rc::from(node)),
                        None => Location::Offline,
                    },
                };
                self.answered.push((ticket, location));
            }
            Expect::Claimed { id } => {
                let Some(old) = resp::text(&frame) else {
                    return;
                };
                let mut f = old.split(SEP);
                let (Some(node), Some(conn)) = (f.next(), f.next().and_then(|g| g.parse().ok()))
                else {
                    return;
                };
                if node != &*self.me {
                    let note = Note::Replaced {
                        id: id.to_string(),
                        conn,
                    };
                    let node = node.to_string();
                    self.publish(Some(&node), &note, None);
                }
            }
            Expect::Refreshed => {
                let dead: Vec<Rc<str>> = resp::array(&frame)
                    .iter()
                    .filter_map(resp::text)
                    .map(Rc::from)
                    .collect();
                for node in dead {
                    if self.cleaning.insert(node.clone()) {
                        info!("node {node} missed its liveness refresh: cleaning up after it");
                        self.cleanup(node);
                    }
                }
            }
            Expect::Cleaned { node } => {
                let r = resp::array(&frame);
                let num = |i: usize| r.get(i).and_then(resp::int).unwrap_or(0);
                let (claimed, done, removed) = (num(0), num(1), num(2));
                self.stats.node_lost_removed += removed as u64;
                self.deliver_handed_back(&frame, 3);
                if claimed == 1 && done == 0 {
                    self.cleanup(node);
                } else {
                    if claimed == 1 {
                        info!("node {node} cleaned up: its clients are offline (node-lost)");
                    }
                    self.cleaning.remove(&node);
                }
            }
            Expect::Reasserted => {
                let r = resp::array(&frame);
                let ids = |i: usize| {
                    r.get(i)
                        .map(resp::array)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(resp::text)
                        .map(Rc::from)
                        .collect::<Vec<Rc<str>>>()
                };
                for id in ids(0) {
                    // Another node holds it now: this connection is stale.
                    if let Some(conn) = self.local.local(&id) {
                        self.local.release(&id, conn);
                        self.inbox.push(Inbound::Replaced(conn));
                    }
                }
                // Logged in while Redis was away: its waiting pushes now.
                for id in ids(1) {
                    self.inbox.push(Inbound::Take(id));
                }
            }
            Expect::Ask(q) => self.inbox.push(Inbound::Answer(q, Some(frame))),
        }
    }

    fn cleanup(&mut self, node: Rc<str>) {
        let now = unix_ms().to_string();
        let args = [&*node, &*self.me, &now, &BATCH.to_string(), &now]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        self.script(Script::Cleanup, args, Expect::Cleaned { node });
    }

    pub(super) fn on_cmd_replies(&mut self, now: Instant) {
        let replies = std::mem::take(&mut self.replies);
        for frame in replies {
            let Some(p) = self.waiting.pop_front() else {
                warn!("redis: a reply nobody asked for: {frame:?}");
                continue;
            };
            self.stats.round_trip(now.saturating_duration_since(p.sent));
            if let (OwnedFrame::Error(e), Some((script, args))) = (&frame, &p.script) {
                if e.starts_with("NOSCRIPT") {
                    // Redis lost the script (a restart, SCRIPT FLUSH): send
                    // it whole. This one reply comes after those queued
                    // behind it; presence steps are idempotent per id.
                    let call = [
                        b"EVAL".to_vec(),
                        self.scripts.text(*script).as_bytes().to_vec(),
                        b"0".to_vec(),
                    ]
                    .into_iter()
                    .chain(args.iter().cloned());
                    if self.cmd.command_owned(call).is_ok() {
                        self.waiting.push_back(Pending { sent: now, ..p });
                    } else {
                        self.fail(p.expect);
                    }
                    continue;
                }
            }
            self.on_reply(p.expect, frame);
        }
    }

    pub(super) fn on_sub_replies(&mut self) {
        let replies = std::mem::take(&mut self.replies);
        for frame in replies {
            let items = resp::array(&frame);
            match items.first().and_then(resp::text) {
                Some("message") => {}
                Some("subscribe") => {
                    if let Some(channel) = items.get(1).and_then(resp::text) {
                        info!("redis pubsub: subscribed to {channel}");
                    }
                    continue;
                }
                None => {
                    if let OwnedFrame::Error(e) = &frame {
                        warn!("redis pubsub: {e}");
                    }
                    continue;
                }
                Some(_) => continue,
            }
            let payload = match items.get(2) {
                Some(OwnedFrame::BulkString(b)) => b,
                _ => continue,
            };
            match Note::decode(payload) {
                Some(Note::Broadcast { origin, .. }) if *origin == *self.me => {}
                Some(Note::Replaced { id, conn }) => {
                    self.stats.routed_in += 1;
                    if let Some(held) = self.local.local(&id).filter(|c| c.generation == conn) {
                        // Out of the local map first: its end is then a
                        // `replaced`, and Redis (the new holder's) is left alone.
                        self.local.release(&id, held);
                        self.inbox.push(Inbound::Replaced(held));
                    }
                }
                Some(note) => {
                    self.stats.routed_in += 1;
                    self.inbox.push(Inbound::Note(note));
                }
                None => warn!("cluster: a note that does not parse on our channel; dropped"),
            }
        }
    }
}
