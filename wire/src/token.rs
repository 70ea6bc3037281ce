//! Login tokens: lowercase hex of HMAC-SHA256(secret, id), compared in
//! constant time. The server verifies them; a back end that holds the same
//! secret mints them and hands each app only its own token, so no app ever
//! ships the secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The token a client with `id` must present when the server has `secret`.
pub fn mint(secret: &[u8], id: &str) -> String {
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(id.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this arm only satisfies the type.
        Err(_) => String::new(),
    }
}

/// Whether `token` is the right one for `id`. The MAC comparison takes the
/// same time wherever the first differing byte is.
pub fn verify(secret: &[u8], id: &str, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return false;
    };
    let lowercase_hex = token.len() == 64
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let Ok(expected) = hex::decode(token) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(id.as_bytes());
    lowercase_hex && mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_right_token_only() {
        let t = mint(b"s3cret", "alice");
        assert_eq!(t.len(), 64);
        assert!(verify(b"s3cret", "alice", Some(&t)));
        assert!(!verify(b"s3cret", "bob", Some(&t)));
        assert!(!verify(b"other", "alice", Some(&t)));
        assert!(!verify(b"s3cret", "alice", Some(&t.to_uppercase())));
        assert!(!verify(b"s3cret", "alice", Some(&t[..62])));
        assert!(!verify(b"s3cret", "alice", None));
    }

    #[test]
    fn matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            mint(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
