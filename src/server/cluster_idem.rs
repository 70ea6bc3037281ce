//! Cluster mode: `Idempotency-Key` for the whole cluster. A back end's
//! retry may reach another node (a shared admin port, a load balancer), so
//! a keyed push or broadcast first asks Redis (`IDEM_BEGIN`): a key seen
//! before is answered from there (replay, 409, 422) and nothing is done
//! again; a new key becomes this request's, pending, and the question goes
//! on. The admin API stores the final answer (`Backend::remember_answer`
//! → `IDEM_SET`); a refusal frees the key (`IDEM_DROP`), so that retrying
//! it is a real retry.
//!
//! A node that dies with a request pending holds its key back for
//! `PENDING` at most; one that dies while the request waits for its ack
//! leaves the provisional answer (`sent`) after the wait.

use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;

use crate::admin::{AdminRef, Answer, Keyed, Question, Repeat};
use crate::cluster::resp;
use crate::cluster::scripts::Script;
use crate::server::cluster::ASK_TIMEOUT;
use crate::server::cluster_admin::AdminAsk;
use crate::server::core::Core;

/// How long a pending key holds repeats back when its node never answers.
const PENDING: Duration = Duration::from_secs(2 * ASK_TIMEOUT.as_secs());
/// A waiting answer holds repeats back this much longer than its wait.
const WAIT_MARGIN: Duration = Duration::from_secs(5);

/// A keyed question while Redis is asked about its key.
pub(super) struct KeyedAsk {
    question: Box<Question>,
    keyed: Keyed,
    owner: String,
}

impl Question {
    /// Takes the `Idempotency-Key` of a push or broadcast.
    pub(super) fn take_key(&mut self) -> Option<Keyed> {
        match self {
            Question::Push { key, .. } | Question::Broadcast { key, .. } => key.take(),
            _ => None,
        }
    }
}

impl Core {
    /// A keyed question asks Redis about its key first.
    pub(super) fn ask_keyed(&mut self, admin: AdminRef, question: Question, keyed: Keyed) {
        let me = self.node_id().map(|n| n.to_string()).unwrap_or_default();
        let owner = format!("{me}:{}", self.cluster_state.next_owner());
        let args = vec![
            keyed.key.as_bytes().to_vec(),
            hex::encode(keyed.fingerprint).into_bytes(),
            owner.as_bytes().to_vec(),
            PENDING.as_millis().to_string().into_bytes(),
            self.config.receipt_ttl.as_millis().to_string().into_bytes(),
        ];
        let ask = KeyedAsk {
            question: Box::new(question),
            keyed,
            owner,
        };
        self.ask_script(admin, AdminAsk::Keyed(ask), Script::IdemBegin, args);
    }

    /// Redis's answer about a key: the question goes on, or the answer
    /// comes from what the key holds.
    pub(super) fn on_keyed(&mut self, admin: AdminRef, ask: KeyedAsk, frame: &OwnedFrame) {
        let r = resp::array(frame);
        let text = |i: usize| r.get(i).and_then(resp::text);
        let repeat = match text(0) {
            Some("new") => {
                self.cluster_state
                    .keyed_owned
                    .insert(admin, (ask.keyed.key, ask.owner));
                self.ask_cluster(admin, *ask.question);
                return;
            }
            Some("replay") => Repeat::Replay {
                status: text(1).and_then(|s| s.parse().ok()).unwrap_or(202),
                body: text(2).unwrap_or("{}").to_string(),
            },
            Some("reused") => Repeat::Reused,
            _ => Repeat::InProgress,
        };
        self.answer(admin, Answer::Repeat(repeat));
    }

    /// An answer leaves for `admin`: a refusal of the request that holds a
    /// key frees it (an accepted one is remembered by the admin API).
    pub(super) fn settle_keyed(&mut self, admin: AdminRef, answer: &Answer) {
        let Some((key, owner)) = self.cluster_state.keyed_owned.remove(&admin) else {
            return;
        };
        let refused = matches!(
            answer,
            Answer::Pushed(Err(_)) | Answer::Broadcast(Err(_)) | Answer::Unavailable
        );
        if !refused {
            return;
        }
        if let Some(cluster) = self.registry.shared().filter(|c| c.is_up()) {
            let args = vec![key.into_bytes(), owner.into_bytes()];
            cluster.run_script(Script::IdemDrop, args);
            cluster.flush_now();
        }
    }

    /// Cluster mode: the answer to a keyed request, for repeats through any
    /// node.
    pub(super) fn remember_keyed(
        &mut self,
        keyed: &Keyed,
        status: u16,
        body: &str,
        waiting: Option<Duration>,
    ) {
        let ttl = self.config.receipt_ttl.as_millis().to_string();
        let Some(cluster) = self.registry.shared().filter(|c| c.is_up()) else {
            return;
        };
        let (state, hold) = match waiting {
            Some(wait) => ("waiting", wait + WAIT_MARGIN),
            None => ("done", Duration::ZERO),
        };
        let args = vec![
            keyed.key.as_bytes().to_vec(),
            hex::encode(keyed.fingerprint).into_bytes(),
            state.as_bytes().to_vec(),
            status.to_string().into_bytes(),
            body.as_bytes().to_vec(),
            ttl.into_bytes(),
            hold.as_millis().to_string().into_bytes(),
        ];
        cluster.run_script(Script::IdemSet, args);
        // Before the answer goes out: a retry it prompts finds it.
        cluster.flush_now();
    }
}
