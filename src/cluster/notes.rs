//! What nodes tell each other through their Redis channels (pub/sub):
//! `ll:n:NODE` for one node, `ll:all` for every node. JSON, one note per
//! message; a note that does not parse is logged and dropped (a node of
//! another version, or something else publishing there).

use serde::{Deserialize, Serialize};

/// A node's own channel.
pub fn channel(node: &str) -> String {
    format!("ll:n:{node}")
}

/// Every node listens here (broadcasts).
pub const ALL: &str = "ll:all";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "kebab-case")]
pub enum Note {
    /// A client's `<msg>` for a client of the receiving node. `sender` is
    /// the sending connection (key, generation) on `origin`, for a bounce.
    Msg {
        from: String,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        body: String,
        origin: String,
        sender: (u32, u32),
    },
    /// The recipient of a forwarded `<msg>` was not there after all.
    Bounce {
        sender: (u32, u32),
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// An admin push (its encoded frame) for a client of the receiving node;
    /// `q` names the request on `origin` that waits for the answer. `exp`
    /// (unix ms): an at-least-once push (`queue_ttl_ms`), kept until acked.
    Push {
        to: String,
        mid: String,
        frame: String,
        origin: String,
        q: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
    },
    /// How a forwarded push went: `sent`, `busy`, `full` or `offline`.
    Pushed {
        q: u64,
        outcome: String,
    },
    /// The recipient acked a forwarded push.
    Acked {
        mid: String,
    },
    Kick {
        id: String,
        origin: String,
        q: u64,
    },
    Kicked {
        q: u64,
        ok: bool,
    },
    /// A login on another node took `id` from the receiving node's
    /// connection of this generation.
    Replaced {
        id: String,
        conn: u32,
    },
    /// Pushes went back to `id`'s queue (a connection of it ended unacked)
    /// while it is online on the receiving node: deliver them.
    Take {
        id: String,
    },
    /// A broadcast: every node delivers the frame to its own clients.
    Broadcast {
        mid: String,
        frame: String,
        origin: String,
    },
}

impl Note {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Note> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip() {
        let n = Note::Msg {
            from: "a".into(),
            to: "b".into(),
            id: None,
            body: "x &amp; \"y\"\n".into(),
            origin: "n1".into(),
            sender: (3, 9),
        };
        let bytes = n.encode();
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .starts_with("{\"k\":\"msg\""));
        assert_eq!(Note::decode(&bytes), Some(n));
        assert_eq!(Note::decode(b"{\"k\":\"nope\"}"), None);
    }
}
