//! Push ids that never repeat across restarts (nor, with a node id, across
//! the nodes of a cluster): `p-<START>-<N>` or `p-<NODE>-<START>-<N>`.
//!
//! - START: the process's start time in Unix milliseconds, in lowercase
//!   base 36 (8 characters until the year 2059), so every run of a node has
//!   its own prefix, as long as two runs do not start within the same
//!   millisecond of wall-clock time;
//! - NODE: the node's id when there is one (cluster mode), so that nodes
//!   started in the same millisecond still differ;
//! - N: a decimal counter from 1 within the run.
//!
//! Every character is one a message id may hold (`[A-Za-z0-9_.:@-]`) and the
//! whole stays far under 128. Issuing an id costs one allocation: the id
//! itself.

use std::rc::Rc;

/// The part of every id of one run, up to and including the last `-`.
pub fn id_prefix(node: Option<&str>, start_unix_ms: u64) -> String {
    let mut prefix = String::from("p-");
    if let Some(node) = node {
        prefix.push_str(node);
        prefix.push('-');
    }
    push_base36(&mut prefix, start_unix_ms);
    prefix.push('-');
    prefix
}

fn push_base36(out: &mut String, mut n: u64) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = [0u8; 13]; // 36^13 > 2^64
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// Issues the ids of one run.
pub struct PushIds {
    /// The prefix, followed by the digits of the last id issued.
    scratch: String,
    prefix_len: usize,
    issued: u64,
}

impl PushIds {
    pub fn new(prefix: String) -> PushIds {
        PushIds {
            prefix_len: prefix.len(),
            scratch: prefix,
            issued: 0,
        }
    }

    /// The ids of a run another process began (an upgrade): the same
    /// prefix, the counter going on from `issued`.
    pub fn resume(prefix: String, issued: u64) -> PushIds {
        PushIds {
            issued,
            ..PushIds::new(prefix)
        }
    }

    /// The run's prefix (`p-RUN-`).
    pub fn prefix(&self) -> &str {
        &self.scratch[..self.prefix_len]
    }

    /// The next id: the prefix and the counter, written into a buffer that
    /// is reused, then copied once into the id.
    pub fn issue(&mut self) -> Rc<str> {
        self.issued += 1;
        self.scratch.truncate(self.prefix_len);
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = self.issued;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[at..] {
            self.scratch.push(char::from(d));
        }
        Rc::from(self.scratch.as_str())
    }

    /// Ids issued so far in this run.
    pub fn issued(&self) -> u64 {
        self.issued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_run_and_count_within_it() {
        // 2024-01-01T00:00:00Z.
        let start = 1_704_067_200_000;
        let prefix = id_prefix(None, start);
        assert_eq!(prefix, "p-lqu5m2o0-");
        let mut ids = PushIds::new(prefix);
        assert_eq!(&*ids.issue(), "p-lqu5m2o0-1");
        for _ in 0..8 {
            ids.issue();
        }
        assert_eq!(&*ids.issue(), "p-lqu5m2o0-10");
        assert_eq!(ids.issued(), 10);
        // A later run (even one millisecond later) and another node differ.
        assert_ne!(id_prefix(None, start + 1), id_prefix(None, start));
        assert_eq!(id_prefix(Some("node-2"), start), "p-node-2-lqu5m2o0-");
        assert_eq!(id_prefix(None, 0), "p-0-");
        // Resumed by another process (an upgrade): same run, next number.
        let mut resumed = PushIds::resume(ids.prefix().to_string(), ids.issued());
        assert_eq!(&*resumed.issue(), "p-lqu5m2o0-11");
    }

    #[test]
    fn the_longest_id_is_a_valid_message_id() {
        let node = "n".repeat(lifeline_wire::MAX_ID_LEN);
        let mut ids = PushIds::new(id_prefix(Some(&node), u64::MAX));
        ids.issued = u64::MAX - 1;
        let id = ids.issue();
        assert!(lifeline_wire::is_valid_message_id(&id), "{id}");
        let mut plain = PushIds::new(id_prefix(None, 1_704_067_200_000));
        assert!(lifeline_wire::is_valid_message_id(&plain.issue()));
    }
}
