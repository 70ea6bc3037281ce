//! Stopping: on SIGINT or SIGTERM the loop stops accepting, tells every
//! client `<bye reason="shutdown"/>`, gives the goodbyes `LIFELINE_DRAIN_MS`
//! to leave the sockets, and returns. On SIGHUP the TLS files are read again.

use log::info;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};

use crate::server::conn::{CloseReason, ConnRef, Transport};
use crate::server::core::Core;
use crate::server::{Server, Subject};
use crate::writeq::Flushed;
use lifeline_wire::ws;
use lifeline_wire::{self as wire, ByeReason};

impl Server {
    pub(super) fn on_signal(&mut self) {
        let (mut stop, mut reload, mut upgrade) = (false, false, false);
        for signal in self.signals.pending() {
            match signal {
                SIGINT | SIGTERM => stop = true,
                SIGHUP => reload = true,
                SIGUSR2 => upgrade = true,
                _ => {}
            }
        }
        if reload {
            self.guarded(Subject::Loop, |s| s.core.reload_tls());
        }
        if stop && self.drain_until.is_none() {
            self.begin_shutdown();
        }
        if upgrade {
            self.begin_upgrade();
        }
    }

    fn begin_shutdown(&mut self) {
        info!(
            "shutting down: {} connections, {} online",
            self.core.clients().len(),
            self.core.online()
        );
        if self.handover.upgrade.is_some() {
            self.abandon_upgrade("was stopped: a shutdown began".to_string());
        }
        crate::notify::stopping();
        self.listeners.close(self.poll.registry());
        self.drain_until = Some(self.core.clock().now() + self.core.drain());
        self.guarded(Subject::Loop, |s| s.admin.close_all(&mut s.core));
        for conn in self.core.clients().refs() {
            self.guarded(Subject::Client(conn), |s| s.core.say_goodbye(conn));
        }
    }

    pub(super) fn finish_shutdown(&mut self) {
        for conn in self.core.clients().refs() {
            self.guarded(Subject::Client(conn), |s| {
                s.core.end(conn, CloseReason::Shutdown)
            });
        }
        // Cluster mode: the last releases, and the node leaves the cluster
        // (one last non-blocking write; what the socket does not take is
        // left to the survivors' cleanup after the node TTL).
        self.guarded(Subject::Loop, |s| s.core.leave_cluster());
        info!("stopped");
    }
}

impl Core {
    /// Says `<bye reason="shutdown"/>` (and, on a WebSocket, Close 1001)
    /// and lets the goodbye drain: the connection ends once it is written,
    /// once the peer closes, or when the drain gives up.
    pub(super) fn say_goodbye(&mut self, conn: ConnRef) {
        if !self.goodbye_drains(conn) {
            self.end(conn, CloseReason::Shutdown);
        }
    }

    /// Queues the goodbye and tries to write it; true when the socket is
    /// full and the goodbye must drain.
    fn goodbye_drains(&mut self, conn: ConnRef) -> bool {
        let Some(c) = self.clients.get(conn) else {
            return true; // already gone: nothing to end
        };
        // Mid-way through an HTTP request, or a TLS handshake, there is no
        // one to say it to.
        if !c.speaks_xml() {
            return false;
        }
        let websocket = c.is_websocket();
        let retry = self.advice.retry_ms(ByeReason::Shutdown);
        let said = self
            .clients
            .send(conn, |out| {
                wire::encode_bye(out, ByeReason::Shutdown, retry)
            })
            .and_then(|()| {
                if !websocket {
                    return Ok(());
                }
                self.clients
                    .send_framed(conn, |out| ws::write_close(out, 1001, "shutdown"))
            });
        if said.is_err() {
            return false;
        }
        if let Some(c) = self.clients.get_mut(conn) {
            if let Transport::WebSocket(state) = &mut c.transport {
                state.close_sent = true;
            }
            c.begin_closing();
        }
        matches!(self.clients.flush(conn), Ok(Flushed::Blocked))
    }

    pub(super) fn drain(&self) -> std::time::Duration {
        self.config.drain
    }
}
