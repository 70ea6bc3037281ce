//! The parts every handler shares, and the one way a client connection ends.
//!
//! [`Core`] owns the client table (with its outbound path), the registry,
//! presence, pushes and the counters; the loop (`Server`) owns what only it
//! touches — the poll, the listeners, liveness, the admin API — and hands
//! `Core` to the admin API as its backend. Frame handling lives beside this
//! file (`session.rs`, `inbound.rs`), the admin backend in `backend.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use log::{debug, info};
use mio::net::TcpStream;

use crate::admin::AdminRef;
use crate::clock::{Clock, Micros};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::presence::{PresenceEvent, PresenceKind, PresenceLog};
use crate::push_ids;
use crate::pushes::Pushes;
use crate::pushes::WaitEnd;
use crate::registry::{Location, Registry, Ticket};
use crate::server::accept::AcceptCounts;
use crate::server::conn::{CloseReason, ConnRef, Transport};
use crate::server::liveness::Watched;
use crate::server::secure::TlsRuntime;
use crate::server::table::Clients;
use crate::writeq::Flushed;
use lifeline_wire::ws;
use lifeline_wire::{self as wire, ByeReason};

/// Golden-ratio fraction: successive logins get heartbeat phases spread evenly.
const PHASE_STEP: f64 = 0.618_033_988_749_895;

/// A message waiting for the registry to say where its recipient is.
pub(super) struct PendingMsg {
    pub sender: ConnRef,
    pub from: Rc<str>,
    /// Cluster mode forwards it to the recipient's node by id.
    pub to: Box<str>,
    pub id: Option<Box<str>>,
    pub body: Box<str>,
}

/// How a handler left the connection it served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Keep,
    End(CloseReason),
}

pub struct Core {
    pub(super) config: Config,
    pub(super) clock: Clock,
    pub(super) clients: Clients,
    pub(super) registry: Box<dyn Registry>,
    pub(super) presence: PresenceLog,
    pub(super) pushes: Pushes,
    pub(super) metrics: Metrics,
    /// Source of login phases and of the `retry-ms` advice.
    pub(super) advice: Advice,
    /// Messages whose recipient the registry is still looking up.
    pub(super) pending: HashMap<Ticket, PendingMsg>,
    /// The connection being served, and an end asked for it meanwhile (it
    /// ends when its serving is done, never under its own frame loop).
    pub(super) serving: Option<(ConnRef, Option<CloseReason>)>,
    /// On a TLS listener: the TLS configuration and its counters.
    pub(super) tls: Option<TlsRuntime>,
    /// Cluster mode's questions and answers in flight (empty standalone).
    pub(super) cluster_state: crate::server::cluster::ClusterState,
}

/// Per-client randomness and spreading: heartbeat phases and reconnect delays.
pub struct Advice {
    rng: fastrand::Rng,
    logins: u64,
    reconnect_spread_ms: u64,
}

impl Advice {
    pub fn new(reconnect_spread_ms: u64) -> Advice {
        Advice {
            rng: fastrand::Rng::new(),
            logins: 0,
            reconnect_spread_ms,
        }
    }

    /// Logins so far (an upgrade carries the count over, so phases go on
    /// spreading where they were).
    pub fn logins(&self) -> u64 {
        self.logins
    }

    pub fn set_logins(&mut self, logins: u64) {
        self.logins = logins;
    }

    /// The `phase-ms` of the next login: successive logins spread their
    /// first heartbeats evenly over the interval.
    pub fn phase_ms(&mut self, interval_ms: u64) -> u64 {
        let phase = ((self.logins as f64 * PHASE_STEP).fract() * interval_ms as f64) as u64;
        self.logins += 1;
        phase.min(interval_ms.saturating_sub(1))
    }

    /// The `retry-ms` for a goodbye: a per-client random delay in
    /// [0, reconnect spread] for the reasons after which clients come back,
    /// so that a restart or an overload is not followed by every client at
    /// once. `replaced` and `kicked` are terminal and carry none.
    pub fn retry_ms(&mut self, reason: ByeReason) -> Option<u64> {
        use ByeReason::{Overload, Shutdown, Timeout};
        (self.reconnect_spread_ms > 0 && matches!(reason, Shutdown | Overload | Timeout))
            .then(|| self.rng.u64(0..=self.reconnect_spread_ms))
    }
}

impl Core {
    pub fn new(
        config: Config,
        clock: Clock,
        capacity: usize,
        mut registry: Box<dyn Registry>,
        poll: mio::Registry,
    ) -> Core {
        let receipt_ttl = crate::clock::micros(config.receipt_ttl);
        let mut cluster_state = crate::server::cluster::ClusterState::default();
        cluster_state.node = registry.shared().map(|c| c.node().clone());
        // Cluster mode: events are numbered by the cluster's stream.
        let first_seq = match cluster_state.node {
            Some(_) => 0,
            None => clock.unix_epoch_us(),
        };
        // Push ids unique across restarts and, with the node id, across
        // the nodes of a cluster.
        let id_prefix =
            push_ids::id_prefix(cluster_state.node.as_deref(), clock.unix_epoch_us() / 1000);
        let mut pushes = Pushes::new(
            receipt_ttl,
            config.queue_max_per_client,
            config.queue_max_bytes,
            id_prefix,
        );
        if cluster_state.node.is_some() {
            pushes.set_clustered();
        }
        Core {
            clients: Clients::new(capacity, config.max_outbound, poll),
            registry,
            cluster_state,
            presence: PresenceLog::new(config.event_backlog, first_seq),
            pushes,
            metrics: Metrics::default(),
            advice: Advice::new(config.reconnect_spread.as_millis() as u64),
            pending: HashMap::new(),
            serving: None,
            tls: config.tls.clone().map(TlsRuntime::new),
            clock,
            config,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Whether another process (an upgrade's new one) may hold duplicates
    /// of the client sockets, which closing ours then does not close.
    pub fn share_sockets(&mut self, shared: bool) {
        self.clients.share_sockets(shared);
    }

    pub fn clock_mut(&mut self) -> &mut Clock {
        &mut self.clock
    }

    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    pub fn metrics_mut(&mut self) -> &mut Metrics {
        &mut self.metrics
    }

    pub fn online(&self) -> usize {
        self.registry.local_len()
    }

    /// Gives an accepted client socket a place in the table.
    pub fn admit(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        poll: &mio::Registry,
    ) -> Option<ConnRef> {
        match self.clients.insert(stream, peer, self.clock.now_us(), poll) {
            Ok(conn) if !self.attach_tls(conn) => {
                self.clients.remove(conn);
                None
            }
            Ok(conn) => {
                self.metrics.accepted += 1;
                debug!(peer:% = peer, conn = conn.generation; "accepted");
                Some(conn)
            }
            Err(e) => {
                log::warn!("cannot register {peer}: {e}");
                None
            }
        }
    }

    /// When `conn` was last heard from and its interval, unless it is gone
    /// or saying goodbye (a shutdown drain ends those by itself).
    pub fn watched(&self, conn: ConnRef) -> Option<Watched> {
        self.clients
            .get(conn)
            .filter(|c| !c.is_closing())
            .map(|c| Watched {
                last_seen: c.last_seen,
                interval_ms: c.interval_ms,
            })
    }

    pub fn is_live(&self, conn: ConnRef) -> bool {
        self.clients.is_live(conn)
    }

    /// Ends a client connection: its last words (a `bye`, a WebSocket
    /// Close, or an HTTP 408), out of the table and the registry, the
    /// offline event, the socket closed. Every end of a client connection
    /// comes here; the end of the connection being served waits until its
    /// serving is done.
    pub fn end(&mut self, conn: ConnRef, reason: CloseReason) {
        if let Some((serving, end)) = &mut self.serving {
            if *serving == conn {
                end.get_or_insert(reason);
                return;
            }
        }
        let Some(mut c) = self.clients.remove(conn) else {
            return;
        };
        self.tls_released(&c);
        let closing = c.is_closing();
        let handshake = matches!(c.transport, Transport::Handshake);
        let ws_close = match &c.transport {
            Transport::WebSocket(state) => !state.close_sent && !closing,
            _ => false,
        };
        let bye = reason
            .bye()
            .filter(|_| !closing && !handshake)
            .map(|bye| (bye, self.advice.retry_ms(bye)));
        self.clients.last_words(&mut c, |out, websocket| {
            if handshake {
                // Mid-way through an HTTP request: no XML for it.
                if reason == CloseReason::Timeout {
                    out.extend_from_slice(
                        b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
                return;
            }
            if let Some((bye, retry)) = bye {
                wire::encode_bye(out, bye, retry);
                if websocket {
                    ws::wrap_text(out, 0);
                }
            }
            if ws_close {
                ws::write_close(out, reason.ws_close_code(), reason.as_str());
            }
        });
        if self.clients.sockets_shared() {
            // An upgrade's new process holds a duplicate of this socket:
            // dropping ours would not close it, so the peer is told here.
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        self.metrics.closed(reason);
        let lived = Duration::from_micros(self.clock.now_us().saturating_sub(c.connected_at));
        match c.id() {
            Some(id) => {
                let id = id.clone();
                let was_holder = self.registry.release(&id, conn);
                if was_holder {
                    self.metrics.went_offline(reason);
                }
                if was_holder || reason == CloseReason::Replaced {
                    // Fields for JSON logs; text reads
                    // "offline id=.. reason=.. lived=1.234s conn=..".
                    info!(
                        id = &*id,
                        reason = reason.as_str(),
                        lived = lived.as_secs_f64(),
                        conn = conn.generation;
                        "offline"
                    );
                }
                // A replaced connection's id stays online (its successor
                // holds it): that is an event of its own, not an offline.
                let kind = if was_holder {
                    PresenceKind::Offline
                } else {
                    PresenceKind::Replaced
                };
                self.publish(kind, &id, conn, c.peer, Some(reason.as_str()));
                self.hand_back_unacked(&id, conn, was_holder);
            }
            None => debug!(
                "closed connection {} from {} ({}) after {:.3}s",
                conn.generation,
                c.peer,
                reason.as_str(),
                lived.as_secs_f64()
            ),
        }
        // Dropping `c` closes the socket, which also takes it out of the
        // epoll set; a deregister call would be one more syscall.
    }

    /// Sends a frame to another connection; a slow consumer is ended.
    pub(super) fn send_or_end(&mut self, conn: ConnRef, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.clients.send(conn, encode).is_err() {
            self.end(conn, CloseReason::SlowConsumer);
        }
    }

    /// Numbers a presence event and keeps it; the admin API streams it to
    /// subscribers at the end of the iteration.
    pub(super) fn publish(
        &mut self,
        kind: PresenceKind,
        id: &Rc<str>,
        conn: ConnRef,
        peer: SocketAddr,
        reason: Option<&'static str>,
    ) {
        let at = self.clock.unix_ms(self.clock.now_us());
        if self.cluster_state.node.is_some() {
            // Cluster mode: numbered by the cluster's stream; subscribers
            // get it from there, in the one cluster-wide order.
            self.cluster_event(kind, id, conn, &peer.to_string(), reason, at);
            return;
        }
        self.presence.record(PresenceEvent {
            seq: 0,
            kind,
            id: id.clone(),
            node: None,
            conn: conn.generation,
            peer: Some(peer),
            reason,
            at,
            message: None,
        });
    }

    /// Numbers a push event (`queued`, `expired`) about `client`'s push
    /// `message` and keeps it, as [`Core::publish`] does.
    /// Cluster mode: Redis's scripts write push events to the stream.
    pub(super) fn publish_push(&mut self, kind: PresenceKind, client: &Rc<str>, message: &Rc<str>) {
        if self.cluster_state.node.is_some() {
            return;
        }
        self.presence.record(PresenceEvent {
            seq: 0,
            kind,
            id: client.clone(),
            node: None,
            conn: 0,
            peer: None,
            reason: None,
            at: self.clock.unix_ms(self.clock.now_us()),
            message: Some(message.clone()),
        });
    }

    /// Presence events recorded since the last call, for the subscribers.
    pub fn take_fresh_events(&mut self, into: &mut Vec<PresenceEvent>) {
        self.presence.take_fresh(into);
    }

    /// Lookups the registry answered since the last call: their messages go on.
    pub fn route_answered(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut answers = Vec::new();
        self.registry.answered(&mut answers);
        for (ticket, location) in answers {
            if let Some(msg) = self.pending.remove(&ticket) {
                self.deliver_pending(msg, location);
            }
        }
    }

    fn deliver_pending(&mut self, msg: PendingMsg, location: Location) {
        match location {
            Location::Here(target) if self.clients.is_live(target) => {
                self.metrics.messages_routed += 1;
                self.send_or_end(target, |out| {
                    wire::encode_msg(out, &msg.from, msg.id.as_deref(), &msg.body)
                });
            }
            Location::Elsewhere(node) => self.forward_msg(
                msg.sender,
                &msg.from,
                &msg.to,
                msg.id.as_deref(),
                &msg.body,
                &node,
            ),
            Location::Unavailable => {
                self.refuse_msg(msg.sender, msg.id.as_deref(), wire::ErrorCode::Unavailable)
            }
            _ => {
                self.metrics.error_sent(wire::ErrorCode::Offline);
                self.send_or_end(msg.sender, |out| {
                    wire::encode_error(
                        out,
                        wire::ErrorCode::Offline,
                        msg.id.as_deref(),
                        "the recipient is not online",
                    )
                });
            }
        }
    }

    /// One of the registry's own sockets is ready.
    pub fn registry_ready(&mut self, token: mio::Token) {
        self.registry.on_ready(token);
    }

    /// Counts what accepting saw.
    pub fn count_accepts(&mut self, counts: AcceptCounts) {
        self.metrics.closes[CloseReason::Overload.index()] += counts.refused;
        self.metrics.accept_errors += counts.errors;
    }

    /// Admin requests whose push wait ended.
    pub fn has_woken(&self) -> bool {
        self.pushes.has_woken()
    }

    pub fn take_woken(&mut self) -> Vec<(AdminRef, Rc<str>, WaitEnd)> {
        self.pushes.take_woken()
    }

    /// Expires receipts, held pushes and ack waits whose time is up.
    pub fn expire(&mut self) {
        let now = self.clock.now_us();
        if self.pushes.expiry_due(now) {
            self.pushes.expire(now);
        }
        self.publish_expired();
    }

    /// When [`Core::expire`] next has something to do.
    pub fn next_expiry(&self) -> Option<Micros> {
        self.pushes.next_deadline()
    }

    /// The connections that were sent something this iteration.
    pub fn take_scheduled(&mut self, into: &mut Vec<ConnRef>) {
        self.clients.take_scheduled(into);
    }

    /// Writes what `conn` has queued; a goodbye that is all written ends it.
    pub fn flush(&mut self, conn: ConnRef) {
        let closing = self.clients.get(conn).is_some_and(|c| c.is_closing());
        match self.clients.flush(conn) {
            Ok(Flushed::Done) if closing => self.end(conn, CloseReason::Shutdown),
            Ok(_) => {}
            Err(failed) => self.end(conn, failed.reason()),
        }
    }

    /// Drops a connection whose end itself failed (a caught panic): out of
    /// the table, the socket closed, nothing else.
    pub fn forget(&mut self, conn: ConnRef) {
        if let Some(c) = self.clients.remove(conn) {
            self.tls_released(&c);
            if let Some(id) = c.id() {
                let _ = self.registry.release(id, conn);
            }
        }
    }

    /// Ends every connection that was being served when a panic struck,
    /// and forgets its half-written replies.
    pub fn recover(&mut self) {
        self.clients.recover();
        self.serving = None;
    }
}
