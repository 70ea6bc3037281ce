//! Cluster mode: an admin request whose answer needs Redis or another node
//! waits, parked (`State::Asking`), and is answered here when the cluster's
//! answer arrives, after the batch of events — the same deferred path acks
//! take (`Admin::wake`), never from inside another connection's handling.

use crate::admin::backend::{Answer, Backend};
use crate::admin::routes::{self, Outcome};
use crate::admin::{Admin, AdminRef, State};

impl Admin {
    /// Cluster mode: answers the requests whose question the cluster
    /// answered, then serves what queued up behind them.
    pub fn answer(&mut self, answers: Vec<(AdminRef, Answer)>, backend: &mut dyn Backend) {
        for (admin, answer) in answers {
            let Some(c) = self.get_mut(admin) else {
                continue;
            };
            let State::Asking {
                wait_ms,
                keep_alive,
            } = c.state
            else {
                continue;
            };
            c.state = State::Requests;
            self.response.clear();
            let outcome = routes::answered(
                backend,
                admin,
                answer,
                wait_ms,
                keep_alive,
                &mut self.response,
            );
            if let Outcome::AwaitAck { message, .. } = outcome {
                if let Some(c) = self.get_mut(admin) {
                    c.state = State::AwaitingAck {
                        message,
                        keep_alive,
                    };
                }
                continue;
            }
            if !self.respond(admin, backend) {
                self.end(admin, backend);
            } else if !keep_alive {
                self.begin_draining(admin);
            } else if !self.serve(admin, backend) {
                self.end(admin, backend);
            }
        }
    }
}
