//! The new process's side: a [`State`] record and its descriptors made into
//! a running server: the old loop's clock, every connection at its own key
//! and generation with its buffers and heartbeat entry, the registry claimed
//! again, presence, receipts, the offline queue, unacked pushes, push ids
//! and remembered `Idempotency-Key` answers going on; the ends of the TLS
//! connections the old process said goodbye to recorded as they happen.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Poll};

use crate::clock::Clock;
use crate::config::Config;
use crate::offline::Held;
use crate::presence::{PresenceEvent, PresenceKind, PresenceLog};
use crate::push_ids::PushIds;
use crate::pushes::PushStats;
use crate::receipts::{Receipt, Status};
use crate::registry::Registry;
use crate::server::accept::Listeners;
use crate::server::conn::{
    ClientConn, CloseReason, ConnRef, Session, State as ConnPhase, Transport, WsState,
    GENERATION_MASK,
};
use crate::server::{Server, ServerError, ADMIN_LISTENER, LISTENER};
use lifeline_wire::ws::{Decoder, DecoderParts};
use lifeline_wire::StreamPosition;

use crate::server::table::Registered;

use super::state::{
    ConnState, EndedConn, EventKind, EventState, HeldPush, Phase, Position, ReceiptState, State,
    StatusState, TransportState, SENT_AHEAD,
};

/// Slab keys beyond this are not a table the old process can have had.
const MAX_KEY: u32 = 1 << 26;
/// The longest heartbeat interval a login can be granted (protocol 1.2).
const MAX_INTERVAL_MS: u32 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("descriptor {0} named by the state did not arrive (or is named twice)")]
    MissingFd(u32),
    #[error("connection {key}/{generation} was said to be sent ahead and was not")]
    NotSentAhead { key: u32, generation: u32 },
    #[error("{names} bytes of names for {fds} sockets sent ahead (8 bytes each)")]
    AheadNames { names: usize, fds: usize },
    #[error("the old loop's epoch ({0} µs on CLOCK_MONOTONIC) is not a time on this host")]
    Clock(u64),
    #[error("connection {key}/{generation}: {why}")]
    Connection {
        key: u32,
        generation: u32,
        why: &'static str,
    },
    #[error("push id prefix {0:?} does not make valid message ids")]
    PushIds(String),
    #[error("{0}")]
    Server(#[from] ServerError),
}

/// Sockets sent ahead of the state, each registered readable in `poll`
/// under its connection's token as it arrives, so the pause does not pay
/// for it; `names`: each one's slab key and generation (u32 LE pairs).
pub fn sent_ahead(
    poll: &Poll,
    names: &[u8],
    fds: Vec<OwnedFd>,
    into: &mut HashMap<ConnRef, TcpStream>,
) -> Result<(), ImportError> {
    if names.len() != 8 * fds.len() {
        return Err(ImportError::AheadNames {
            names: names.len(),
            fds: fds.len(),
        });
    }
    for (name, fd) in names.chunks_exact(8).zip(fds) {
        let word =
            |at: usize| u32::from_le_bytes([name[at], name[at + 1], name[at + 2], name[at + 3]]);
        let conn = ConnRef {
            key: word(0),
            generation: word(4),
        };
        check_name(conn)?;
        let mut stream = stream(fd);
        poll.registry()
            .register(&mut stream, conn.token(), Interest::READABLE)
            .map_err(ServerError::Poll)?;
        into.insert(conn, stream);
    }
    Ok(())
}

/// The server the old process ran, from its state and descriptors (and
/// the sockets sent ahead, registered in `poll`; any the state does not
/// name ended meanwhile, and are closed here).
pub fn import(
    config: Config,
    registry: Box<dyn Registry>,
    state: State,
    fds: Vec<OwnedFd>,
    poll: Poll,
    mut ahead: HashMap<ConnRef, TcpStream>,
) -> Result<Server, ImportError> {
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut take = |index: u32| {
        fds.get_mut(index as usize)
            .and_then(Option::take)
            .ok_or(ImportError::MissingFd(index))
    };
    let clock = Clock::resume(state.epoch_mono_us, state.wall_epoch_ms)
        .ok_or(ImportError::Clock(state.epoch_mono_us))?;
    let client = listener(take(state.client_listener)?);
    let admin = match state.admin_listener {
        Some(index) => Some(listener(take(index)?)),
        None => None,
    };
    let listeners = Listeners::adopt(
        &config,
        client,
        admin,
        poll.registry(),
        LISTENER,
        ADMIN_LISTENER,
    )?;
    let event_backlog = config.event_backlog;
    let mut server = Server::assemble(config, registry, clock, poll, listeners)?;

    let mut conns = Vec::with_capacity(state.conns.len());
    let mut checks = Vec::with_capacity(state.conns.len());
    let mut logged_in = Vec::new();
    for s in state.conns {
        let (stream, registered) = if s.fd == SENT_AHEAD {
            let conn = ConnRef {
                key: s.key,
                generation: s.generation,
            };
            let stream = ahead.remove(&conn).ok_or(ImportError::NotSentAhead {
                key: s.key,
                generation: s.generation,
            })?;
            (stream, Registered::Readable)
        } else {
            (stream(take(s.fd)?), Registered::No)
        };
        let (conn, c, check_at) = connection(s, stream)?;
        if let Some(id) = c.session().map(|session| session.id.clone()) {
            logged_in.push((id, conn));
        }
        checks.push((conn, clock.instant(check_at)));
        conns.push((conn, c, registered));
    }
    let core = &mut server.core;
    core.clients
        .restore(conns, state.next_generation, server.poll.registry())
        .map_err(ServerError::Poll)?;
    for (id, conn) in logged_in {
        if let Some(other) = core.registry.claim(&id, conn) {
            log::warn!("upgrade: {id} was held by two connections ({other:?}, {conn:?})");
        }
    }
    for (conn, at) in checks {
        server.liveness.watch(conn, at);
    }
    core.presence = PresenceLog::restore(
        event_backlog,
        state.presence.last_seq,
        state.presence.recording,
        state.presence.ring.into_iter().map(event).collect(),
    );
    let p = state.pushes;
    let p_delivered = p.delivered;
    // The longest id of the run must still be a valid message id.
    if !lifeline_wire::is_valid_message_id(&format!("{}{}", p.id_prefix, u64::MAX)) {
        return Err(ImportError::PushIds(p.id_prefix));
    }
    core.pushes.restore(
        PushIds::resume(p.id_prefix, p.issued),
        PushStats {
            accepted: p.accepted,
            acked: p.acked,
            expired: p.expired,
            refused_full: p.refused_full,
            redelivered: p.redelivered,
        },
        p.receipts.into_iter().map(receipt),
        p.held.into_iter().map(|h| {
            let pushes: VecDeque<Held> = h.pushes.into_iter().map(held).collect();
            (Rc::from(h.client), pushes)
        }),
        p.unacked.into_iter().flat_map(|u| {
            let client: Rc<str> = Rc::from(u.client);
            u.pushes.into_iter().map(move |sent| {
                let conn = ConnRef {
                    key: sent.key,
                    generation: sent.generation,
                };
                (client.clone(), conn, held(sent.push))
            })
        }),
    );
    core.clients.resume_pushes_delivered(p_delivered);
    core.advice.set_logins(state.logins);
    let idempotency = server.admin.idempotency_mut();
    for a in state.idempotency {
        idempotency.remember(&a.key, a.fingerprint, a.status, a.body, None, a.at);
    }
    for ended in state.tls_ended {
        record_end(&mut server, ended);
    }
    Ok(server)
}

/// A TLS connection the old process says goodbye to (after this process's
/// Ack): its end as `Core::end` records it there, here where presence and
/// pushes now live — `offline` (or `replaced`) with reason `shutdown`, and
/// its unacked at-least-once pushes handed back to the client's queue.
fn record_end(server: &mut Server, ended: EndedConn) {
    let Some(id) = ended.id else {
        return; // not logged in: nothing to record
    };
    let id: Rc<str> = Rc::from(id);
    let conn = ConnRef {
        key: ended.key,
        generation: ended.generation,
    };
    let kind = if ended.holder {
        PresenceKind::Offline
    } else {
        PresenceKind::Replaced
    };
    let reason = Some(CloseReason::Shutdown.as_str());
    let core = &mut server.core;
    core.publish(kind, &id, conn, ended.peer, reason);
    core.hand_back_unacked(&id, conn, ended.holder);
}

fn held(p: HeldPush) -> Held {
    Held {
        message: Rc::from(p.message),
        frame: p.frame,
        expires: p.expires,
        at_least_once: p.at_least_once,
    }
}

fn listener(fd: OwnedFd) -> mio::net::TcpListener {
    mio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// A key and generation the old process's table can have given.
fn check_name(conn: ConnRef) -> Result<(), ImportError> {
    if conn.generation == 0 || conn.generation > GENERATION_MASK {
        return Err(bad(conn, "a generation no connection can have"));
    }
    if conn.key >= MAX_KEY {
        return Err(bad(conn, "a slab key no table can have"));
    }
    Ok(())
}

/// What is wrong with connection `conn` in the state.
fn bad(conn: ConnRef, why: &'static str) -> ImportError {
    ImportError::Connection {
        key: conn.key,
        generation: conn.generation,
        why,
    }
}

/// The descriptor is the same open socket (non-blocking already: that flag
/// belongs to the socket, not to the descriptor).
fn stream(fd: OwnedFd) -> TcpStream {
    TcpStream::from_std(std::net::TcpStream::from(fd))
}

fn connection(s: ConnState, stream: TcpStream) -> Result<(ConnRef, ClientConn, u64), ImportError> {
    let conn = ConnRef {
        key: s.key,
        generation: s.generation,
    };
    check_name(conn)?;
    if s.interval_ms > MAX_INTERVAL_MS {
        return Err(bad(conn, "a heartbeat interval no login can be granted"));
    }
    let mut c = ClientConn::new(stream, s.generation, s.peer, s.connected_at);
    c.last_seen = s.last_seen;
    c.interval_ms = s.interval_ms;
    c.state = match s.phase {
        Phase::Connected => ConnPhase::Connected,
        Phase::LoggedIn { id, suspect } => ConnPhase::LoggedIn(Session {
            id: Rc::from(id),
            suspect,
            // The old process handed over with no broadcast pending and
            // this one's count starts at 0: owed nothing, owed the next.
            broadcast_seq: 0,
        }),
    };
    c.transport = match s.transport {
        TransportState::Sniffing => Transport::Sniffing,
        TransportState::Raw => Transport::Raw,
        TransportState::Handshake => Transport::Handshake,
        TransportState::WebSocket {
            decoder: d,
            xml_tail,
            close_sent,
        } => {
            let decoder = Decoder::from_parts(DecoderParts {
                remaining: d.remaining,
                message_len: d.message_len,
                mask: d.mask,
                mask_phase: d.mask_phase,
                fin: d.fin,
                in_message: d.in_message,
                utf8_pending: d.utf8_pending,
                utf8_pending_len: d.utf8_pending_len,
            })
            .ok_or(bad(conn, "a WebSocket decoder state no decoder can have"))?;
            Transport::WebSocket(Box::new(WsState {
                decoder,
                xml_tail: bytes(xml_tail),
                close_sent,
            }))
        }
    };
    c.position = match s.position {
        Position::Start => StreamPosition::Start,
        Position::BeforeFirstFrame => StreamPosition::BeforeFirstFrame,
        Position::AfterFrame => StreamPosition::AfterFrame,
    };
    c.inbound = bytes(s.inbound);
    c.outbound = bytes(s.outbound);
    c.pushes_unwritten = s.pushes_unwritten;
    Ok((conn, c, s.check_at))
}

/// A buffer that holds no capacity when empty, as connections keep them.
fn bytes(v: Vec<u8>) -> BytesMut {
    if v.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&v[..])
    }
}

fn event(e: EventState) -> PresenceEvent {
    PresenceEvent {
        seq: e.seq,
        kind: match e.kind {
            EventKind::Online => PresenceKind::Online,
            EventKind::Suspect => PresenceKind::Suspect,
            EventKind::Alive => PresenceKind::Alive,
            EventKind::Offline => PresenceKind::Offline,
            EventKind::Replaced => PresenceKind::Replaced,
            EventKind::Queued => PresenceKind::Queued,
            EventKind::Expired => PresenceKind::Expired,
        },
        id: Rc::from(e.id),
        conn: e.conn,
        peer: e.peer,
        // Reasons are the close reasons' names, which this binary knows.
        reason: e.reason.and_then(|r| {
            CloseReason::ALL
                .iter()
                .map(|reason| reason.as_str())
                .find(|name| *name == r)
        }),
        at: e.at,
        message: e.message.map(Rc::from),
        node: e.node.map(Rc::from),
    }
}

fn receipt(r: ReceiptState) -> (Rc<str>, Receipt) {
    (
        Rc::from(r.id),
        Receipt {
            to: Rc::from(r.to),
            status: match r.status {
                StatusState::Queued => Status::Queued,
                StatusState::Sent => Status::Sent,
                StatusState::Acked => Status::Acked,
                StatusState::Expired => Status::Expired,
            },
            created: r.created,
            sent: r.sent,
            acked: r.acked,
            expires: r.expires,
            recipients: r.recipients.map(|n| n as usize),
            redelivered: r.redelivered,
        },
    )
}
