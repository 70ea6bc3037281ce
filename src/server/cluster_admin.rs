//! Cluster mode: the admin API's questions, answered for the whole
//! cluster. A question about a local client is answered from here at once
//! (through the same deferred list); anything else asks Redis (where is
//! the id? a page of presence, a receipt) or the client's node (push,
//! kick), never blocking: the request waits, parked, for its answer.

use std::rc::Rc;
use std::time::Instant;

use redis_protocol::resp2::types::OwnedFrame;

use crate::admin::{AdminRef, Answer, Backend, ClientView, ClientsPage, Pushed, Question};
use crate::admin::{ReceiptView, Refused};
use crate::cluster::notes::Note;
use crate::cluster::scripts::{Script, SEP};
use crate::cluster::{resp, unix_ms};
use crate::server::backend::busy;
use crate::server::cluster::Ask;
use crate::server::cluster_idem::KeyedAsk;
use crate::server::core::Core;

/// What an admin question waits for.
pub(super) enum AdminAsk {
    Client {
        id: String,
    },
    Clients {
        limit: usize,
    },
    /// Where the client is (HGET), then the kick to its node.
    Kick {
        id: String,
    },
    KickRemote {
        id: String,
    },
    /// Where the client is (HGET), then the push to its node, or the queue.
    Push(PushAsk),
    PushRemote(PushAsk),
    Hold(PushAsk),
    Broadcast {
        mid: Rc<str>,
        recipients: usize,
    },
    Receipt {
        mid: String,
    },
    /// Redis is asked about an `Idempotency-Key` first.
    Keyed(KeyedAsk),
}

pub(super) struct PushAsk {
    to: String,
    mid: Rc<str>,
    frame: Vec<u8>,
    queue_ttl_ms: Option<u64>,
}

impl AdminAsk {
    /// The client id (or push id) the question is about, for a 404.
    pub(super) fn subject(&self) -> String {
        match self {
            AdminAsk::Client { id } | AdminAsk::Kick { id } | AdminAsk::KickRemote { id } => {
                id.clone()
            }
            AdminAsk::Push(p) | AdminAsk::PushRemote(p) | AdminAsk::Hold(p) => p.to.clone(),
            AdminAsk::Receipt { mid } => mid.clone(),
            AdminAsk::Broadcast { mid, .. } => mid.to_string(),
            AdminAsk::Clients { .. } | AdminAsk::Keyed(_) => String::new(),
        }
    }
}

fn offline(id: &str) -> Answer {
    Answer::Pushed(Err(Refused {
        status: 404,
        error: "offline",
        detail: format!("client {id:?} is not online"),
    }))
}

impl Core {
    /// Every answer to the admin API leaves through here.
    pub(super) fn answer(&mut self, admin: AdminRef, answer: Answer) {
        self.settle_keyed(admin, &answer);
        self.cluster_state.answers.push((admin, answer));
    }

    fn cluster_up(&mut self) -> bool {
        self.registry.shared().is_some_and(|c| c.is_up())
    }

    fn ask_redis(&mut self, admin: AdminRef, ask: AdminAsk, args: &[&[u8]]) {
        let q = self.cluster_state.number(Ask::Admin(admin, ask));
        if let Some(cluster) = self.registry.shared() {
            cluster.ask(q, args);
        }
    }

    pub(super) fn ask_script(
        &mut self,
        admin: AdminRef,
        ask: AdminAsk,
        script: Script,
        args: Vec<Vec<u8>>,
    ) {
        let q = self.cluster_state.number(Ask::Admin(admin, ask));
        if let Some(cluster) = self.registry.shared() {
            cluster.ask_script(q, script, args);
        }
    }

    /// Publishes `note(q)` to `node`; the count comes back under `q`, then
    /// (unless nobody listened) the node's answer, by `ASK_TIMEOUT`.
    fn ask_node(&mut self, admin: AdminRef, ask: AdminAsk, node: &str, note: impl Fn(u64) -> Note) {
        let q = self.cluster_state.number(Ask::Admin(admin, ask));
        self.cluster_state.expect_by(q, Instant::now());
        if let Some(cluster) = self.registry.shared() {
            cluster.publish(Some(node), &note(q), Some(q));
        }
    }

    /// Takes an admin question in cluster mode; false standalone.
    pub(super) fn ask_cluster(&mut self, admin: AdminRef, mut question: Question) -> bool {
        if self.cluster_state.node.is_none() {
            return false;
        }
        // A key the cluster may have seen through another node: Redis first.
        // Redis down: the key is this node's memory alone (the admin API's),
        // and a push to a client here is still served.
        if let Some(keyed) = question.take_key() {
            if self.cluster_up() {
                self.ask_keyed(admin, question, keyed);
                return true;
            }
        }
        // A local client needs no Redis.
        match &question {
            Question::Client(id) => {
                if let Some(view) = self.client(id) {
                    self.answer(admin, Answer::Client(id.clone(), Some(view)));
                    return true;
                }
            }
            Question::Kick(id) if self.registry.local(id).is_some() => {
                let ok = self.kick(id);
                self.answer(admin, Answer::Kicked(id.clone(), ok));
                return true;
            }
            Question::Push {
                to,
                body,
                queue_ttl_ms,
                ..
            } => {
                let local = self.registry.local(to).filter(|&c| self.clients.is_live(c));
                if let Some(target) = local {
                    let pushed = self.push_here(target, to, body, *queue_ttl_ms);
                    self.answer(admin, Answer::Pushed(pushed));
                    return true;
                }
            }
            _ => {}
        }
        if !self.cluster_up() {
            self.answer(admin, Answer::Unavailable);
            return true;
        }
        match question {
            Question::Client(id) => {
                self.ask_redis(
                    admin,
                    AdminAsk::Client { id: id.clone() },
                    &[b"HGET", b"ll:presence", id.as_bytes()],
                );
            }
            Question::Kick(id) => {
                self.ask_redis(
                    admin,
                    AdminAsk::Kick { id: id.clone() },
                    &[b"HGET", b"ll:presence", id.as_bytes()],
                );
            }
            Question::Clients { after, limit } => {
                let args = vec![
                    after.unwrap_or_default().into_bytes(),
                    (limit + 1).to_string().into_bytes(),
                ];
                self.ask_script(admin, AdminAsk::Clients { limit }, Script::Page, args);
            }
            Question::Push {
                to,
                body,
                queue_ttl_ms,
                ..
            } => {
                let mid = self.pushes.new_id();
                match self.encode_push(&mid, &body) {
                    Err(refused) => self.answer(admin, Answer::Pushed(Err(refused))),
                    Ok(frame) => {
                        let key = to.clone();
                        let ask = AdminAsk::Push(PushAsk {
                            to,
                            mid,
                            frame,
                            queue_ttl_ms,
                        });
                        self.ask_redis(admin, ask, &[b"HGET", b"ll:presence", key.as_bytes()]);
                    }
                }
            }
            Question::Broadcast { body, .. } => match self.broadcast(&body) {
                Err(refused) => self.answer(admin, Answer::Broadcast(Err(refused))),
                Ok((mid, recipients)) => {
                    let Ok(frame) = self.encode_push(&mid, &body) else {
                        return true;
                    };
                    let note = Note::Broadcast {
                        mid: mid.to_string(),
                        frame: String::from_utf8_lossy(&frame).into_owned(),
                        origin: self.node_id().map(|n| n.to_string()).unwrap_or_default(),
                    };
                    let q = self
                        .cluster_state
                        .number(Ask::Admin(admin, AdminAsk::Broadcast { mid, recipients }));
                    if let Some(cluster) = self.registry.shared() {
                        cluster.publish(None, &note, Some(q));
                    }
                }
            },
            Question::Receipt(mid) => {
                let key = format!("ll:r:{mid}");
                self.ask_redis(
                    admin,
                    AdminAsk::Receipt { mid },
                    &[b"HGETALL", key.as_bytes()],
                );
            }
        }
        true
    }

    pub(super) fn on_admin_answer(
        &mut self,
        q: u64,
        admin: AdminRef,
        ask: AdminAsk,
        frame: Option<OwnedFrame>,
        now: Instant,
    ) {
        let Some(frame) = frame.filter(|f| !matches!(f, OwnedFrame::Error(_))) else {
            return self.answer(admin, Answer::Unavailable);
        };
        let me = self.node_id().unwrap_or_else(|| Rc::from(""));
        // The node a presence value names, unless it is this node (a stale
        // entry: this node would know its own client).
        let node_of = |frame: &OwnedFrame| {
            resp::text(frame)
                .and_then(|v| v.split(SEP).next())
                .filter(|n| !n.is_empty() && *n != &*me)
                .map(str::to_string)
        };
        match ask {
            AdminAsk::Client { id } => {
                let view = resp::text(&frame).and_then(|v| self.remote_view(&id, v));
                self.answer(admin, Answer::Client(id, view));
            }
            AdminAsk::Clients { limit } => {
                let page = self.page_from(&frame, limit);
                self.answer(admin, Answer::Clients(page));
            }
            AdminAsk::Kick { id } => match node_of(&frame) {
                None => self.answer(admin, Answer::Kicked(id, false)),
                Some(node) => {
                    let origin = me.to_string();
                    let kick_id = id.clone();
                    self.ask_node(admin, AdminAsk::KickRemote { id }, &node, move |q| {
                        Note::Kick {
                            id: kick_id.clone(),
                            origin: origin.clone(),
                            q,
                        }
                    });
                }
            },
            AdminAsk::KickRemote { id } => {
                if resp::int(&frame) == Some(0) {
                    self.answer(admin, Answer::Kicked(id, false));
                } else {
                    let ask = Ask::Admin(admin, AdminAsk::KickRemote { id });
                    self.cluster_state.asks.insert(q, ask);
                }
            }
            AdminAsk::Push(p) => match node_of(&frame) {
                Some(node) => self.forward_push(admin, p, &node),
                None => self.hold_or_refuse(admin, p),
            },
            AdminAsk::PushRemote(p) => {
                if resp::int(&frame) == Some(0) {
                    self.hold_or_refuse(admin, p);
                } else {
                    let ask = Ask::Admin(admin, AdminAsk::PushRemote(p));
                    self.cluster_state.asks.insert(q, ask);
                }
            }
            AdminAsk::Hold(p) => {
                let r = resp::array(&frame);
                match (
                    r.first().and_then(resp::text),
                    r.get(1).and_then(resp::text),
                ) {
                    (Some("queued"), _) => {
                        self.pushes.stats.accepted += 1;
                        self.answer(admin, Answer::Pushed(Ok(Pushed::Queued { id: p.mid })));
                    }
                    (Some("online"), Some(node)) => {
                        let node = node.to_string();
                        self.forward_push(admin, p, &node);
                    }
                    _ => {
                        self.pushes.stats.refused_full += 1;
                        let detail = format!(
                            "client {:?} already has {} pushes waiting or unacked",
                            p.to, self.config.queue_max_per_client
                        );
                        let refused = Refused {
                            status: 507,
                            error: "queue-full",
                            detail,
                        };
                        self.answer(admin, Answer::Pushed(Err(refused)));
                    }
                }
            }
            AdminAsk::Broadcast { mid, recipients } => {
                let nodes = resp::int(&frame).unwrap_or(0).max(1) as usize;
                self.answer(admin, Answer::Broadcast(Ok((mid, recipients, nodes))));
            }
            AdminAsk::Receipt { mid } => {
                let receipt = self.receipt_from(&frame).or_else(|| self.receipt(&mid));
                self.answer(admin, Answer::Receipt(mid, receipt));
            }
            AdminAsk::Keyed(ask) => self.on_keyed(admin, ask, &frame),
        }
        let _ = now;
    }

    /// The answer of the node a push was forwarded to.
    pub(super) fn on_pushed(&mut self, q: u64, outcome: &str, _now: Instant) {
        let Some(Ask::Admin(admin, AdminAsk::PushRemote(p))) = self.cluster_state.asks.remove(&q)
        else {
            return;
        };
        match outcome {
            "sent" => {
                self.pushes.stats.accepted += 1;
                self.answer(admin, Answer::Pushed(Ok(Pushed::Forwarded { id: p.mid })));
            }
            "busy" => self.answer(admin, Answer::Pushed(Err(busy(&p.to)))),
            "full" => {
                let refused = Refused {
                    status: 507,
                    error: "queue-full",
                    detail: format!(
                        "client {:?} already has {} pushes waiting or unacked",
                        p.to, self.config.queue_max_per_client
                    ),
                };
                self.answer(admin, Answer::Pushed(Err(refused)));
            }
            _ => self.hold_or_refuse(admin, p),
        }
    }

    fn forward_push(&mut self, admin: AdminRef, p: PushAsk, node: &str) {
        let origin = self.node_id().map(|n| n.to_string()).unwrap_or_default();
        let note = Note::Push {
            to: p.to.clone(),
            mid: p.mid.to_string(),
            frame: String::from_utf8_lossy(&p.frame).into_owned(),
            origin,
            q: 0,
            // At-least-once: kept until acked, by the client's node.
            exp: p.queue_ttl_ms.map(|ttl| unix_ms() + ttl),
        };
        self.ask_node(admin, AdminAsk::PushRemote(p), node, move |q| match &note {
            Note::Push {
                to,
                mid,
                frame,
                origin,
                exp,
                ..
            } => Note::Push {
                to: to.clone(),
                mid: mid.clone(),
                frame: frame.clone(),
                origin: origin.clone(),
                q,
                exp: *exp,
            },
            other => other.clone(),
        });
    }

    /// The client is online nowhere: held in Redis when the pusher asked
    /// for it, refused otherwise.
    fn hold_or_refuse(&mut self, admin: AdminRef, p: PushAsk) {
        let Some(ttl) = p.queue_ttl_ms else {
            return self.answer(admin, offline(&p.to));
        };
        let now = unix_ms();
        let args = [
            p.mid.to_string(),
            p.to.clone(),
            String::from_utf8_lossy(&p.frame).into_owned(),
            (now + ttl).to_string(),
            now.to_string(),
            self.config.receipt_ttl.as_millis().to_string(),
            self.config.queue_max_per_client.to_string(),
            self.node_id().map(|n| n.to_string()).unwrap_or_default(),
            now.to_string(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect();
        self.ask_script(admin, AdminAsk::Hold(p), Script::Hold, args);
    }

    /// A client on another node, from its presence value.
    fn remote_view(&self, id: &str, value: &str) -> Option<ClientView> {
        let mut f = value.split(SEP);
        let node = f.next().filter(|n| !n.is_empty())?;
        let conn = f.next().and_then(|g| g.parse().ok()).unwrap_or(0);
        let since = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let peer = f.next().unwrap_or("").to_string();
        if Some(node) == self.cluster_state.node.as_deref() {
            if let Some(conn) = self.registry.local(id) {
                return self.view(&Rc::from(id), conn);
            }
        }
        Some(ClientView {
            id: Rc::from(id),
            peer,
            connected_at: since,
            last_seen_ms_ago: None,
            node: Some(Rc::from(node)),
            conn,
            suspect: false,
        })
    }

    /// `{seq, online, id1, value1, ...}` (limit + 1 ids asked) → a page.
    fn page_from(&self, frame: &OwnedFrame, limit: usize) -> ClientsPage {
        let r = resp::array(frame);
        let seq = r.first().and_then(resp::int).unwrap_or(0) as u64;
        let online = r.get(1).and_then(resp::int).unwrap_or(0) as usize;
        let pairs: Vec<(&str, &str)> = r
            .get(2..)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|kv| Some((resp::text(kv.first()?)?, resp::text(kv.get(1)?)?)))
            .collect();
        let more = pairs.len() > limit;
        let clients: Vec<ClientView> = pairs
            .iter()
            .take(limit)
            .filter_map(|(id, value)| self.remote_view(id, value))
            .collect();
        let next = if more {
            pairs.get(limit - 1).map(|(id, _)| Rc::from(*id))
        } else {
            None
        };
        ClientsPage {
            clients,
            next,
            online,
            seq,
        }
    }

    /// A receipt from its Redis hash (empty: unknown there).
    fn receipt_from(&self, frame: &OwnedFrame) -> Option<ReceiptView> {
        let r = resp::array(frame);
        if r.is_empty() {
            return None;
        }
        let get = |name: &str| {
            r.chunks(2)
                .find(|kv| kv.first().and_then(resp::text) == Some(name))
                .and_then(|kv| kv.get(1))
                .and_then(resp::text)
        };
        let ms = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let status = match get("status")? {
            "queued" => "queued",
            "sent" => "sent",
            "acked" => "acked",
            _ => "expired",
        };
        let status = match (status, ms("expires")) {
            ("queued", Some(at)) if at <= unix_ms() => "expired",
            (status, _) => status,
        };
        Some(ReceiptView {
            to: Rc::from(get("to")?),
            status,
            created_at: ms("created").unwrap_or(0),
            sent_at: ms("sent"),
            acked_at: ms("acked"),
            expires_at: ms("expires"),
            recipients: None,
            redelivered: ms("redelivered").unwrap_or(0) as u32,
        })
    }
}
