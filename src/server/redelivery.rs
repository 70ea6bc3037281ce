//! At-least-once pushes when a connection ends, and the push events a back
//! end hands off to OS push with (`queued`, `expired` on `/events`).
//!
//! A push asked for with `queue_ttl_ms` is kept after it is sent, until its
//! recipient acks it. When the connection it was sent on ends first, it goes
//! back to the front of the client's queue under the same id and is sent
//! again right after the client's next `welcome` (the clients drop a copy
//! by id). A connection replaced by a newer login of the same id hands its
//! unacked pushes to that login the same way: they follow its `welcome`.
//! Cluster mode does the same through Redis (`cluster_pushes.rs`).

use std::rc::Rc;

use crate::presence::PresenceKind;
use crate::server::conn::ConnRef;
use crate::server::core::Core;

impl Core {
    /// `conn`, logged in as `id`, ended: its unacked at-least-once pushes go
    /// back to the front of `id`'s queue. When `id` went offline with it,
    /// each is a `queued` event (a replaced connection's id stays online and
    /// its successor gets them at once).
    pub(super) fn hand_back_unacked(&mut self, id: &Rc<str>, conn: ConnRef, went_offline: bool) {
        if self.cluster_state.node.is_some() {
            return self.cluster_hand_back(id, conn);
        }
        let back = self.pushes.hand_back(id, conn, self.clock.now_us());
        if went_offline {
            for message in &back {
                self.publish_push(PresenceKind::Queued, id, message);
            }
        }
    }

    /// An `expired` event for every held push that expired undelivered.
    pub(super) fn publish_expired(&mut self) {
        for (client, message) in self.pushes.take_expired() {
            self.publish_push(PresenceKind::Expired, &client, &message);
        }
    }
}
