//! Cluster mode: many Lifeline processes (nodes), one presence, through
//! Redis. Each node keeps its own clients on its own loop; what the nodes
//! share — who is online where, node liveness, the presence event stream,
//! the offline queue and receipts — is in Redis, and what they tell each
//! other (routed messages, pushes, acks, kicks, `replaced`) goes through
//! Redis pub/sub channels. No cluster protocol of our own.
//!
//! [`Cluster`] is the registry of a node in cluster mode. It owns three
//! Redis connections, all on the loop's poll ([`resp::RedisConn`]):
//! commands (pipelined, replies matched in order), pub/sub (a subscribed
//! connection can send nothing else), and the event feed (a blocking
//! `XREAD` would hold up the command connection). Heartbeats never reach
//! it: only logins, closes, routing, pushes, admin questions and the node's
//! liveness refresh do.
//!
//! What it learns for the loop to act on (a routed message to deliver, a
//! connection to end as `replaced`, an answer to a question) goes into an
//! inbox that the loop empties after each batch of events: the cluster
//! never touches a client connection itself.

mod feed;
pub mod notes;
mod push_scripts;
mod pushes;
mod replies;
pub mod resp;
pub mod scripts;
pub mod settings;
mod stats;
pub mod url;

use std::collections::{HashSet, VecDeque};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::info;
use mio::Token;
use redis_protocol::resp2::types::OwnedFrame;

use crate::presence::PresenceEvent;
use crate::registry::{LocalRegistry, Location, Lookup, Registry, Ticket, Tokens};
use crate::server::ConnRef;
use notes::Note;
use resp::{Readiness, RedisConn};
use scripts::{Script, Scripts, SEP};
pub use stats::{ClusterGauges, ClusterStats};
pub use url::RedisTarget;

/// Clients re-asserted (or cleaned up after a dead node) per script call:
/// each call is one atomic step in Redis, and Redis serves no one else
/// meanwhile, so steps stay short.
const BATCH: usize = 500;
/// How often a node sweeps the waiting pushes for expired ones (an
/// `expired` event comes this late at most; NODE_TTL/3 if that is shorter).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Cluster settings (from `LIFELINE_REDIS_URL`, `LIFELINE_NODE_ID`,
/// `LIFELINE_NODE_TTL_MS`, and `LIFELINE_EVENT_BACKLOG` for the stream).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub target: RedisTarget,
    pub node: String,
    pub ttl: Duration,
    pub backlog: usize,
}

/// What the cluster hands the loop to act on.
#[derive(Debug)]
pub enum Inbound {
    /// A note from another node.
    Note(Note),
    /// This connection's id was taken by another node (it is already out of
    /// the local map): end it as `replaced`.
    Replaced(ConnRef),
    /// Redis is (back) up: the loop hands every local client to
    /// [`Cluster::reassert`].
    Reassert,
    /// A presence event from the cluster's stream, in stream order.
    Event(PresenceEvent),
    /// The answer to [`Cluster::ask`] or [`Cluster::ask_script`] `q`:
    /// Redis's reply, or `None` when the connection dropped first.
    Answer(u64, Option<OwnedFrame>),
    /// Pushes went back to this (local) client's queue: deliver them.
    Take(Rc<str>),
    /// Waiting pushes this node found past their time (`expired` events).
    Expired(u64),
}

/// What to do with a reply on the command connection.
#[derive(Debug)]
enum Expect {
    Nothing,
    Locate(Ticket),
    Claimed { id: Rc<str> },
    Refreshed,
    Cleaned { node: Rc<str> },
    Reasserted,
    Reconciled,
    HandedBack { id: Rc<str> },
    Swept,
    Ask(u64),
}

struct Pending {
    expect: Expect,
    sent: Instant,
    /// A script call, to be sent again as EVAL if Redis says NOSCRIPT.
    script: Option<(Script, Vec<Vec<u8>>)>,
}

pub struct Cluster {
    me: Rc<str>,
    ttl: Duration,
    target: RedisTarget,
    local: LocalRegistry,
    cmd: RedisConn,
    sub: RedisConn,
    feed: feed::Feed,
    waiting: VecDeque<Pending>,
    scripts: Scripts,
    poll: Option<mio::Registry>,
    next_ticket: Ticket,
    answered: Vec<(Ticket, Location)>,
    inbox: Vec<Inbound>,
    next_refresh: Instant,
    /// When the expiry sweep of waiting pushes runs next.
    next_sweep: Instant,
    /// Dead nodes this node is cleaning up after.
    cleaning: HashSet<Rc<str>>,
    /// Between a reconnect and the end of the re-assert: logins are also
    /// marked as re-asserted, so the reconcile does not take them for ghosts.
    reasserting: bool,
    replies: Vec<OwnedFrame>,
    pub stats: ClusterStats,
}

impl Cluster {
    pub fn new(config: &ClusterConfig) -> Cluster {
        let first = Token(0); // real tokens come with `register`
        Cluster {
            me: Rc::from(config.node.as_str()),
            ttl: config.ttl,
            target: config.target.clone(),
            local: LocalRegistry::default(),
            cmd: RedisConn::new("commands", config.target.addr, first),
            sub: RedisConn::new("pubsub", config.target.addr, first),
            feed: feed::Feed::new(config.target.addr, first),
            waiting: VecDeque::new(),
            scripts: Scripts::new(config.backlog),
            poll: None,
            next_ticket: 0,
            answered: Vec::new(),
            inbox: Vec::new(),
            next_refresh: Instant::now(),
            next_sweep: Instant::now(),
            cleaning: HashSet::new(),
            reasserting: false,
            replies: Vec::new(),
            stats: ClusterStats::default(),
        }
    }

    pub fn node(&self) -> &Rc<str> {
        &self.me
    }

    /// Whether commands can reach Redis now.
    pub fn is_up(&self) -> bool {
        self.cmd.is_up()
    }

    pub fn gauges(&self) -> ClusterGauges {
        ClusterGauges {
            up: self.cmd.is_up() && self.sub.is_up(),
            commands_sent: self.cmd.commands_sent
                + self.sub.commands_sent
                + self.feed.conn.commands_sent,
            reconnects: self.cmd.reconnects + self.sub.reconnects + self.feed.conn.reconnects,
        }
    }

    /// A presence value: `node␟generation␟since-ms␟peer`.
    pub fn value(&self, generation: u32, since_ms: u64, peer: &str) -> String {
        format!("{}{SEP}{generation}{SEP}{since_ms}{SEP}{peer}", self.me)
    }

    /// Moves what the loop must act on into `into`.
    pub fn take_inbox(&mut self, into: &mut Vec<Inbound>) {
        into.append(&mut self.inbox);
        self.feed.take_events(&mut |e| into.push(Inbound::Event(e)));
    }

    fn command(&mut self, args: &[&[u8]], expect: Expect) -> bool {
        match self.cmd.command(args) {
            Ok(()) => {
                self.waiting.push_back(Pending {
                    expect,
                    sent: Instant::now(),
                    script: None,
                });
                true
            }
            Err(_) => {
                self.fail(expect);
                false
            }
        }
    }

    fn script(&mut self, script: Script, args: Vec<Vec<u8>>, expect: Expect) -> bool {
        let sha = self.scripts.sha(script).as_bytes().to_vec();
        let call = [b"EVALSHA".to_vec(), sha, b"0".to_vec()]
            .into_iter()
            .chain(args.iter().cloned());
        match self.cmd.command_owned(call) {
            Ok(()) => {
                self.waiting.push_back(Pending {
                    expect,
                    sent: Instant::now(),
                    script: Some((script, args)),
                });
                true
            }
            Err(_) => {
                self.fail(expect);
                false
            }
        }
    }

    /// Sends a command whose raw reply comes back as `Inbound::Answer(q, ..)`.
    pub fn ask(&mut self, q: u64, args: &[&[u8]]) -> bool {
        self.command(args, Expect::Ask(q))
    }

    pub fn ask_script(&mut self, q: u64, script: Script, args: Vec<Vec<u8>>) -> bool {
        self.script(script, args, Expect::Ask(q))
    }

    /// Runs a script whose reply nobody needs.
    pub fn run_script(&mut self, script: Script, args: Vec<Vec<u8>>) {
        self.script(script, args, Expect::Nothing);
    }

    /// Publishes `note` on `node`'s channel (or every node's, `None`);
    /// with `q`, the number of nodes that received it comes back as
    /// `Inbound::Answer(q, ..)` (0: nobody listens there).
    pub fn publish(&mut self, node: Option<&str>, note: &Note, q: Option<u64>) -> bool {
        let channel = match node {
            Some(node) => notes::channel(node),
            None => notes::ALL.to_string(),
        };
        self.stats.routed_out += 1;
        let expect = q.map_or(Expect::Nothing, Expect::Ask);
        self.command(&[b"PUBLISH", channel.as_bytes(), &note.encode()], expect)
    }

    /// Records a login in Redis (after [`Registry::claim`] took it
    /// locally); a holder on another node is told `replaced`.
    pub fn announce(&mut self, id: &Rc<str>, value: String) {
        let flag = if self.reasserting { "1" } else { "0" };
        let args = vec![
            id.as_bytes().to_vec(),
            value.into_bytes(),
            self.me.as_bytes().to_vec(),
            flag.as_bytes().to_vec(),
        ];
        self.script(Script::Claim, args, Expect::Claimed { id: id.clone() });
    }

    /// Records a presence event in the cluster's stream.
    #[allow(clippy::too_many_arguments)]
    pub fn event(&mut self, kind: &str, id: &str, conn: u32, peer: &str, reason: &str, at: u64) {
        let args = [
            kind,
            id,
            &self.me,
            &conn.to_string(),
            peer,
            reason,
            &at.to_string(),
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        self.run_script(Script::Event, args);
    }

    /// A graceful exit: out of the liveness set (its clients were released
    /// one by one as they were told goodbye).
    pub fn leave(&mut self) {
        let me = self.me.clone();
        self.command(&[b"ZREM", b"ll:nodes", me.as_bytes()], Expect::Nothing);
    }

    /// Puts every local client (id, presence value) back into Redis after
    /// a reconnect, then removes what Redis still lists for this node but
    /// is no longer here.
    pub fn reassert(&mut self, clients: Vec<(Rc<str>, String)>) {
        let at = unix_ms().to_string();
        for chunk in clients.chunks(BATCH) {
            let mut args = vec![self.me.as_bytes().to_vec(), at.as_bytes().to_vec()];
            for (id, value) in chunk {
                args.push(id.as_bytes().to_vec());
                args.push(value.as_bytes().to_vec());
            }
            self.script(Script::Reassert, args, Expect::Reasserted);
        }
        let args = vec![
            self.me.as_bytes().to_vec(),
            at.clone().into_bytes(),
            at.into_bytes(),
        ];
        self.script(Script::Reconcile, args, Expect::Reconciled);
        self.stats.reasserts += 1;
        info!(
            "re-asserting {} clients of node {} in Redis",
            clients.len(),
            self.me
        );
    }

    /// Log-in commands for a fresh connection (AUTH, SELECT).
    fn opening(&self, select: bool) -> Vec<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        if let Some(password) = &self.target.password {
            let mut auth = vec![b"AUTH".to_vec()];
            if let Some(user) = &self.target.user {
                auth.push(user.as_bytes().to_vec());
            }
            auth.push(password.as_bytes().to_vec());
            out.push(auth);
        }
        if select && self.target.db != 0 {
            out.push(vec![
                b"SELECT".to_vec(),
                self.target.db.to_string().into_bytes(),
            ]);
        }
        out
    }

    /// The command connection is up: log in, load the scripts, refresh the
    /// node's liveness, and have the loop re-assert its clients.
    fn on_cmd_connected(&mut self) {
        for command in self.opening(true) {
            let _ = self.cmd.command_owned(command);
            self.waiting.push_back(Pending {
                expect: Expect::Nothing,
                sent: Instant::now(),
                script: None,
            });
        }
        for script in Script::ALL {
            let text = self.scripts.text(script).as_bytes().to_vec();
            let load = [b"SCRIPT".to_vec(), b"LOAD".to_vec(), text];
            let _ = self.cmd.command_owned(load);
            self.waiting.push_back(Pending {
                expect: Expect::Nothing,
                sent: Instant::now(),
                script: None,
            });
        }
        // Before any login can be marked as re-asserted.
        let seen = format!("ll:seen:{}", self.me);
        self.command(&[b"DEL", seen.as_bytes()], Expect::Nothing);
        self.reasserting = true;
        self.refresh();
        self.inbox.push(Inbound::Reassert);
    }

    fn on_sub_connected(&mut self) {
        for command in self.opening(false) {
            let _ = self.sub.command_owned(command);
        }
        let mine = notes::channel(&self.me);
        let _ = self
            .sub
            .command(&[b"SUBSCRIBE", mine.as_bytes(), notes::ALL.as_bytes()]);
    }

    fn refresh(&mut self) {
        self.next_refresh = Instant::now() + self.ttl / 3;
        let args = vec![
            self.me.as_bytes().to_vec(),
            self.ttl.as_millis().to_string().into_bytes(),
        ];
        self.script(Script::Refresh, args, Expect::Refreshed);
    }

    fn drop_all_waiting(&mut self) {
        while let Some(p) = self.waiting.pop_front() {
            self.fail(p.expect);
        }
    }
}

impl Registry for Cluster {
    fn claim(&mut self, id: &Rc<str>, conn: ConnRef) -> Option<ConnRef> {
        self.local.claim(id, conn)
    }

    fn release(&mut self, id: &str, conn: ConnRef) -> bool {
        let was_holder = self.local.release(id, conn);
        if was_holder && self.cmd.is_up() {
            let prefix = format!("{}{SEP}{}{SEP}", self.me, conn.generation);
            self.run_script(
                Script::Release,
                vec![id.as_bytes().to_vec(), prefix.into_bytes()],
            );
        }
        was_holder
    }

    fn local(&self, id: &str) -> Option<ConnRef> {
        self.local.local(id)
    }

    fn locate(&mut self, id: &str) -> Lookup {
        if let Some(conn) = self.local.local(id) {
            return Lookup::Ready(Location::Here(conn));
        }
        if !self.cmd.is_up() {
            return Lookup::Ready(Location::Unavailable);
        }
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.command(
            &[b"HGET", b"ll:presence", id.as_bytes()],
            Expect::Locate(ticket),
        );
        Lookup::Pending(ticket)
    }

    fn answered(&mut self, into: &mut Vec<(Ticket, Location)>) {
        into.append(&mut self.answered);
    }

    fn register(&mut self, poll: &mio::Registry, tokens: Tokens) -> io::Result<()> {
        let first = tokens.first;
        self.cmd = RedisConn::new("commands", self.target.addr, Token(first));
        self.sub = RedisConn::new("pubsub", self.target.addr, Token(first + 1));
        self.feed = feed::Feed::new(self.target.addr, Token(first + 2));
        self.poll = Some(poll.try_clone()?);
        Ok(())
    }

    fn on_ready(&mut self, token: Token) {
        let now = Instant::now();
        let mut replies = std::mem::take(&mut self.replies);
        replies.clear();
        if token == self.cmd.token() {
            match self.cmd.on_ready(now, &mut replies) {
                Readiness::Connected => {
                    self.replies = replies;
                    self.on_cmd_connected();
                    self.on_cmd_replies(now);
                    return;
                }
                Readiness::Replies => {
                    self.replies = replies;
                    return self.on_cmd_replies(now);
                }
                Readiness::Dropped => self.drop_all_waiting(),
                Readiness::Quiet => {}
            }
        } else if token == self.sub.token() {
            if let Readiness::Connected = self.sub.on_ready(now, &mut replies) {
                self.replies = replies;
                self.on_sub_connected();
                return self.on_sub_replies();
            }
            self.replies = replies;
            return self.on_sub_replies();
        } else if token == self.feed.conn.token() {
            let opening = self.opening(true);
            self.feed.on_ready(now, &mut replies, opening);
        }
        self.replies = replies;
    }

    fn next_wake(&self) -> Option<Instant> {
        let refresh = self.cmd.is_up().then_some(self.next_refresh);
        let sweep = self.cmd.is_up().then_some(self.next_sweep);
        [
            refresh,
            sweep,
            self.cmd.next_wake(),
            self.sub.next_wake(),
            self.feed.conn.next_wake(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_time(&mut self, now: Instant) {
        if let Some(poll) = self.poll.take() {
            let dropped = self.cmd.on_time(&poll, now);
            self.sub.on_time(&poll, now);
            self.feed.conn.on_time(&poll, now);
            self.poll = Some(poll);
            if dropped {
                self.drop_all_waiting();
            }
        }
        if self.cmd.is_up() && now >= self.next_refresh {
            self.refresh();
        }
        if self.cmd.is_up() && now >= self.next_sweep {
            self.sweep(now);
        }
        if !self.cmd.flush(now) {
            self.drop_all_waiting();
        }
        self.sub.flush(now);
        self.feed.conn.flush(now);
    }

    fn shared(&mut self) -> Option<&mut Cluster> {
        Some(self)
    }

    fn render_metrics(&self, out: &mut String) {
        self.stats.render(&self.gauges(), out);
    }

    fn local_len(&self) -> usize {
        self.local.local_len()
    }

    fn page(&self, after: Option<&str>, limit: usize) -> Vec<(Rc<str>, ConnRef)> {
        self.local.page(after, limit)
    }

    fn for_each_local(&self, f: &mut dyn FnMut(ConnRef)) {
        self.local.for_each_local(f)
    }

    fn visit_local(&self, from: Option<&str>, visit: &mut dyn FnMut(&Rc<str>, ConnRef) -> bool) {
        self.local.visit_local(from, visit)
    }
}

/// Unix milliseconds now (cluster bookkeeping only; never on the heartbeat path).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
