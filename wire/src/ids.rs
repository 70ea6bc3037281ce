//! The alphabet and lengths of client ids and message ids.

/// Longest client id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest message id, in bytes.
pub const MAX_MESSAGE_ID_LEN: usize = 128;

/// True for a valid client id: 1–64 of `[A-Za-z0-9_.:@-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(is_id_byte)
}

/// True for a valid message id: the id alphabet, up to 128 bytes.
pub fn is_valid_message_id(id: &str) -> bool {
    (1..=MAX_MESSAGE_ID_LEN).contains(&id.len()) && id.bytes().all(is_id_byte)
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("user-1_a.b:c@d"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("é"));
    }
}
