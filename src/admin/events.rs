//! Presence event streams (Server-Sent Events) on admin connections: the
//! replay a resuming consumer is owed, sent as its socket drains, and the
//! live events every subscriber gets at the end of each loop iteration.

use crate::admin::backend::Backend;
use crate::admin::{Admin, AdminRef, State, MAX_STREAM_QUEUE, REPLAY_CHUNK};
use crate::presence::{self, PresenceEvent};
use log::warn;

use crate::writeq::{self, Flushed};

impl Admin {
    /// Sends a resume replay from the ring as the socket takes it, a chunk
    /// at a time until the socket is full (its writable edge resumes it) or
    /// the stream is live: a consumer far behind is caught up at its own
    /// pace, not with megabytes queued at once. False when the socket failed.
    pub(super) fn continue_replay(&mut self, admin: AdminRef, backend: &mut dyn Backend) -> bool {
        loop {
            let Some(c) = self
                .conns
                .get_mut(admin.key as usize)
                .filter(|c| c.generation == admin.generation)
            else {
                return true;
            };
            let State::Events {
                next,
                replaying: true,
            } = &mut c.state
            else {
                return true;
            };
            let last = backend.last_event();
            self.response.clear();
            while self.response.len() < REPLAY_CHUNK && *next <= last {
                match backend.event(*next) {
                    Some(e) => presence::write_sse(&mut self.response, e),
                    // Fell off the ring while being replayed.
                    None => {
                        self.stats.event_resets += 1;
                        presence::write_sse_reset(&mut self.response, last);
                        *next = last;
                    }
                }
                *next += 1;
            }
            let live = *next > last;
            if live {
                c.state = State::Events {
                    next: last + 1,
                    replaying: false,
                };
            }
            let sent = writeq::send(&mut c.stream, &mut c.outbound, &self.response);
            match sent {
                Err(_) => return false,
                Ok((flushed, written)) => {
                    backend.count_admin_bytes(written);
                    if live || flushed == Flushed::Blocked {
                        return true;
                    }
                }
            }
        }
    }

    /// Sends new presence events to every live subscriber; one that cannot
    /// keep up is dropped rather than allowed to grow without bound.
    pub fn publish(&mut self, events: &[PresenceEvent], backend: &mut dyn Backend) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        let mut slow = Vec::new();
        for (key, c) in self.conns.iter_mut() {
            let State::Events {
                next,
                replaying: false,
            } = &mut c.state
            else {
                continue; // not a subscriber, or still replaying: its turn comes
            };
            self.response.clear();
            for e in events.iter().filter(|e| e.seq >= *next) {
                presence::write_sse(&mut self.response, e);
            }
            *next = (*next).max(last + 1);
            if self.response.is_empty() {
                continue;
            }
            match writeq::send(&mut c.stream, &mut c.outbound, &self.response) {
                Ok((_, written)) if c.outbound.len() <= MAX_STREAM_QUEUE => {
                    backend.count_admin_bytes(written)
                }
                _ => slow.push(AdminRef {
                    key: key as u32,
                    generation: c.generation,
                }),
            }
        }
        for admin in slow {
            warn!("dropping a slow presence subscriber: more than {MAX_STREAM_QUEUE} bytes queued");
            self.end(admin, backend);
        }
    }
}
