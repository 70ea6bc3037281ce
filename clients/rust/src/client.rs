//! The caller's handle: validates what it is asked, queues it for the client
//! thread and pokes the thread's waker.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use lifeline_wire::{is_valid_id, is_valid_message_id, to_server};
use mio::{Poll, Waker};

use crate::config::ClientConfig;
use crate::events::{ClientError, ClientEvent};
use crate::worker::{Worker, WAKER};

/// The caller's handle. Dropping it stops the client.
pub struct Client {
    commands: Sender<Command>,
    waker: Waker,
    events: Receiver<ClientEvent>,
    thread: Option<JoinHandle<()>>,
}

/// What the handle asks of the client thread.
pub(crate) enum Command {
    /// `body` is already escaped XML content.
    Msg {
        to: String,
        id: String,
        body: String,
    },
    Ack {
        id: String,
    },
    Stop,
}

impl Client {
    /// Validates `config` and starts the client thread, which connects at once.
    pub fn start(config: ClientConfig) -> Result<Client, ClientError> {
        if !is_valid_id(&config.id) {
            return Err(ClientError::BadClientId(config.id));
        }
        if config.backoff_base.is_zero() || config.backoff_base > config.backoff_cap {
            return Err(ClientError::BadBackoff);
        }
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (command_tx, command_rx) = mpsc::channel();
        let (event_tx, event_rx) = mpsc::channel();
        let worker = Worker::new(config, poll, command_rx, event_tx);
        let thread = std::thread::Builder::new()
            .name("lifeline-client".into())
            .spawn(move || worker.run())?;
        Ok(Client {
            commands: command_tx,
            waker,
            events: event_rx,
            thread: Some(thread),
        })
    }

    /// The events, in the order they happened.
    pub fn events(&self) -> &Receiver<ClientEvent> {
        &self.events
    }

    /// Sends `text` to client `to` as message `id`. The text is escaped here,
    /// so any string without control characters is safe to send. Delivery is
    /// at most once: a message in flight when the connection drops is lost,
    /// and one that cannot be sent at all comes back as
    /// [`ClientEvent::NotSent`].
    pub fn send_msg(&self, to: &str, id: &str, text: &str) -> Result<(), ClientError> {
        if !is_valid_id(to) {
            return Err(ClientError::BadClientId(to.to_string()));
        }
        if !is_valid_message_id(id) {
            return Err(ClientError::BadMessageId(id.to_string()));
        }
        // The server refuses the whole frame (and closes) on a character XML
        // forbids, so refuse it here where the caller can still react.
        if text
            .bytes()
            .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
        {
            return Err(ClientError::BadText);
        }
        self.command(Command::Msg {
            to: to.to_string(),
            id: id.to_string(),
            body: to_server::escape_text(text).into_owned(),
        })
    }

    /// Confirms that message `id` was processed. Sent at once when logged
    /// in; either way the client remembers it, so that when the server sends
    /// the message again after a reconnect (an at-least-once push whose ack
    /// did not reach it), the copy is acked for the app instead of being
    /// handed to it twice.
    pub fn ack(&self, id: &str) -> Result<(), ClientError> {
        if !is_valid_message_id(id) {
            return Err(ClientError::BadMessageId(id.to_string()));
        }
        self.command(Command::Ack { id: id.to_string() })
    }

    /// Says `<bye/>` when logged in, closes, and waits for the thread to end.
    /// Calling it again does nothing.
    pub fn stop(&mut self) {
        let _ = self.command(Command::Stop);
        if let Some(thread) = self.thread.take() {
            // A panic in the thread already ended it; there is nothing to undo.
            let _ = thread.join();
        }
    }

    fn command(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .map_err(|_| ClientError::Stopped)?;
        self.waker.wake().map_err(|_| ClientError::Stopped)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
    }
}
