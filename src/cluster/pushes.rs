//! The cluster's side of pushes (see `push_scripts` and
//! `server::cluster_pushes`): a connection's unacked pushes handed back,
//! pushes handed back while their client is online somewhere (that node
//! reads them again), and the expiry sweep of the waiting pushes.

use std::rc::Rc;
use std::time::Instant;

use redis_protocol::resp2::types::OwnedFrame;

use crate::cluster::notes::Note;
use crate::cluster::scripts::Script;
use crate::cluster::{resp, unix_ms, Cluster, Expect, Inbound, BATCH, SWEEP_EVERY};

impl Cluster {
    /// Writes the queued commands now rather than at the end of the
    /// iteration: for a step that must reach Redis before the answer that
    /// depends on it reaches the admin API's client (an `Idempotency-Key`
    /// answer, which a retry through another node then finds).
    pub fn flush_now(&mut self) {
        if !self.cmd.flush(Instant::now()) {
            self.drop_all_waiting();
        }
    }

    /// The connection `generation` of `id` ended with at-least-once pushes
    /// not acked: they go back to the front of its queue in Redis.
    pub fn hand_back(&mut self, id: &Rc<str>, generation: u32) {
        let args = [
            id,
            &*self.me,
            &generation.to_string(),
            &unix_ms().to_string(),
            &unix_ms().to_string(),
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        self.script(
            Script::Handback,
            args,
            Expect::HandedBack { id: id.clone() },
        );
    }

    /// Pushes went back to `id`'s queue while it is online on `node`: that
    /// node delivers them.
    pub(super) fn deliver_on(&mut self, id: &str, node: &str) {
        if node == &*self.me {
            self.inbox.push(Inbound::Take(Rc::from(id)));
        } else if !node.is_empty() {
            let note = Note::Take { id: id.to_string() };
            self.publish(Some(node), &note, None);
        }
    }

    /// Waiting pushes past their time leave their queues (any node may run
    /// it: each push expires once).
    pub(super) fn sweep(&mut self, now: Instant) {
        self.next_sweep = now + SWEEP_EVERY.min(self.ttl / 3);
        let at = unix_ms().to_string();
        let args = vec![
            at.clone().into_bytes(),
            at.into_bytes(),
            BATCH.to_string().into_bytes(),
            self.me.as_bytes().to_vec(),
        ];
        self.script(Script::Sweep, args, Expect::Swept);
    }

    /// (id, node) pairs from `skip` on in a script's reply: pushes went
    /// back to the queue of a client online there.
    pub(super) fn deliver_handed_back(&mut self, frame: &OwnedFrame, skip: usize) {
        let pairs: Vec<(String, String)> = resp::array(frame)
            .get(skip..)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|p| Some((resp::text(p.first()?)?, resp::text(p.get(1)?)?)))
            .map(|(id, node)| (id.to_string(), node.to_string()))
            .collect();
        for (id, node) in pairs {
            self.deliver_on(&id, &node);
        }
    }
}
