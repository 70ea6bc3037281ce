//! The old process's side: the running server, read (never changed) into a
//! [`State`] record and the list of descriptors that goes beside it.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use crate::clock::Micros;
use crate::presence::{PresenceEvent, PresenceKind};
use crate::receipts::{Receipt, Status};
use crate::server::conn::{ClientConn, ConnRef, State as ConnPhase, Transport};
use crate::server::Server;
use lifeline_wire::StreamPosition;

use crate::offline::Held;

use super::state::{
    self, ConnState, DecoderState, EndedConn, EventKind, EventState, FormatError, HeldFor,
    HeldPush, IdempotentAnswer, Phase, Position, PresenceState, PushState, ReceiptState, State,
    StatusState, TransportState, UnackedFor, UnackedPush,
};

/// A state record ready to send, with its descriptors in index order.
pub struct Export<'a> {
    pub record: Vec<u8>,
    pub fds: Vec<BorrowedFd<'a>>,
    pub conns: usize,
    pub online: usize,
    /// The TLS connections, not handed over: the old process ends them
    /// once the new one has acknowledged.
    pub tls: Vec<ConnRef>,
}

/// Writes down everything the next process needs. `checks`: each
/// connection's heartbeat entry, drained from the wheel; `ahead`: the
/// connections whose sockets the new process holds already. `None` when
/// there is nothing to hand over (the listeners are closed: a shutdown
/// began).
pub fn export<'a>(
    server: &'a Server,
    checks: &HashMap<ConnRef, Instant>,
    ahead: &HashSet<ConnRef>,
    stopped_at: Micros,
    version: u32,
) -> Option<Result<Export<'a>, FormatError>> {
    let core = &server.core;
    let clock = core.clock();
    let (client_listener, admin_listener) = server.listeners.fds()?;
    let mut fds = vec![client_listener];
    let admin_index = admin_listener.map(|fd| {
        fds.push(fd);
        fds.len() as u32 - 1
    });
    let mut conns = Vec::with_capacity(core.clients.len());
    let mut online = 0;
    let (mut tls, mut tls_ended) = (Vec::new(), Vec::new());
    for (conn, c) in core.clients.iter() {
        if c.tls.is_some() {
            // A rustls session cannot be exported: this connection stays
            // here, to be told goodbye after the new process's Ack.
            let id = c.session().map(|s| s.id.to_string());
            let holder = id
                .as_deref()
                .is_some_and(|id| core.registry.local(id) == Some(conn));
            tls.push(conn);
            tls_ended.push(EndedConn {
                key: conn.key,
                generation: conn.generation,
                peer: c.peer,
                id,
                holder,
            });
            continue;
        }
        // Every connection has an entry; should one be missing, it is
        // looked at on the next tick, which only re-arms it.
        let check_at = checks
            .get(&conn)
            .map_or(clock.now_us(), |&at| clock.micros(at));
        let Some(phase) = phase(c) else {
            continue; // saying goodbye: not handed over (no upgrade runs then)
        };
        online += usize::from(matches!(phase, Phase::LoggedIn { .. }));
        let fd = if ahead.contains(&conn) {
            state::SENT_AHEAD
        } else {
            fds.push(c.stream.as_fd());
            fds.len() as u32 - 1
        };
        conns.push(connection(conn, c, fd, check_at, phase));
    }
    let pushes = &core.pushes;
    let state = State {
        from_pid: std::process::id(),
        epoch_mono_us: clock.epoch_mono_us(),
        wall_epoch_ms: clock.wall_epoch_ms(),
        stopped_at,
        client_listener: 0,
        admin_listener: admin_index,
        next_generation: core.clients.next_generation(),
        conns,
        presence: PresenceState {
            last_seq: core.presence.last_seq(),
            recording: core.presence.recording(),
            ring: core.presence.ring().map(event).collect(),
        },
        pushes: PushState {
            id_prefix: pushes.ids().prefix().to_string(),
            issued: pushes.ids().issued(),
            accepted: pushes.stats.accepted,
            acked: pushes.stats.acked,
            expired: pushes.stats.expired,
            refused_full: pushes.stats.refused_full,
            redelivered: pushes.stats.redelivered,
            delivered: core.clients.outbound_stats().pushes_delivered,
            receipts: pushes
                .receipts()
                .in_order()
                .map(|(id, r)| receipt(id, r))
                .collect(),
            held: pushes
                .offline()
                .held()
                .map(|(client, held)| HeldFor {
                    client: client.to_string(),
                    pushes: held.iter().map(held_push).collect(),
                })
                .collect(),
            unacked: pushes
                .offline()
                .unacked()
                .map(|(client, sent)| UnackedFor {
                    client: client.to_string(),
                    pushes: sent
                        .into_iter()
                        .map(|(conn, h)| UnackedPush {
                            key: conn.key,
                            generation: conn.generation,
                            push: held_push(h),
                        })
                        .collect(),
                })
                .collect(),
        },
        idempotency: server
            .admin
            .idempotency()
            .remembered()
            .map(|(key, at, answer)| IdempotentAnswer {
                key: key.to_string(),
                at,
                fingerprint: *answer.fingerprint,
                status: answer.status,
                body: answer.body.to_string(),
            })
            .collect(),
        tls_ended,
        logins: core.advice.logins(),
    };
    let count = state.conns.len();
    Some(state::encode(&state, version).map(|record| Export {
        record,
        fds,
        conns: count,
        online,
        tls,
    }))
}

fn held_push(h: &Held) -> HeldPush {
    HeldPush {
        message: h.message.to_string(),
        frame: h.frame.clone(),
        expires: h.expires,
        at_least_once: h.at_least_once,
    }
}

fn phase(c: &ClientConn) -> Option<Phase> {
    match &c.state {
        ConnPhase::Connected => Some(Phase::Connected),
        ConnPhase::LoggedIn(session) => Some(Phase::LoggedIn {
            id: session.id.to_string(),
            suspect: session.suspect,
        }),
        ConnPhase::Closing { .. } => None,
    }
}

fn connection(conn: ConnRef, c: &ClientConn, fd: u32, check_at: Micros, phase: Phase) -> ConnState {
    let transport = match &c.transport {
        Transport::Sniffing => TransportState::Sniffing,
        Transport::Raw => TransportState::Raw,
        Transport::Handshake => TransportState::Handshake,
        Transport::WebSocket(ws) => {
            let p = ws.decoder.parts();
            TransportState::WebSocket {
                decoder: DecoderState {
                    remaining: p.remaining,
                    message_len: p.message_len,
                    mask: p.mask,
                    mask_phase: p.mask_phase,
                    fin: p.fin,
                    in_message: p.in_message,
                    utf8_pending: p.utf8_pending,
                    utf8_pending_len: p.utf8_pending_len,
                },
                xml_tail: ws.xml_tail.to_vec(),
                close_sent: ws.close_sent,
            }
        }
    };
    ConnState {
        fd,
        key: conn.key,
        generation: conn.generation,
        peer: c.peer,
        connected_at: c.connected_at,
        last_seen: c.last_seen,
        check_at,
        interval_ms: c.interval_ms,
        phase,
        transport,
        position: match c.position {
            StreamPosition::Start => Position::Start,
            StreamPosition::BeforeFirstFrame => Position::BeforeFirstFrame,
            StreamPosition::AfterFrame => Position::AfterFrame,
        },
        inbound: c.inbound.to_vec(),
        outbound: c.outbound.to_vec(),
        pushes_unwritten: c.pushes_unwritten,
    }
}

fn event(e: &PresenceEvent) -> EventState {
    EventState {
        seq: e.seq,
        kind: match e.kind {
            PresenceKind::Online => EventKind::Online,
            PresenceKind::Suspect => EventKind::Suspect,
            PresenceKind::Alive => EventKind::Alive,
            PresenceKind::Offline => EventKind::Offline,
            PresenceKind::Replaced => EventKind::Replaced,
            PresenceKind::Queued => EventKind::Queued,
            PresenceKind::Expired => EventKind::Expired,
        },
        id: e.id.to_string(),
        conn: e.conn,
        peer: e.peer,
        reason: e.reason.map(str::to_string),
        at: e.at,
        message: e.message.as_deref().map(str::to_string),
        node: e.node.as_deref().map(str::to_string),
    }
}

fn receipt(id: &str, r: &Receipt) -> ReceiptState {
    ReceiptState {
        id: id.to_string(),
        to: r.to.to_string(),
        status: match r.status {
            Status::Queued => StatusState::Queued,
            Status::Sent => StatusState::Sent,
            Status::Acked => StatusState::Acked,
            Status::Expired => StatusState::Expired,
        },
        created: r.created,
        sent: r.sent,
        acked: r.acked,
        expires: r.expires,
        recipients: r.recipients.map(|n| n as u64),
        redelivered: r.redelivered,
    }
}
