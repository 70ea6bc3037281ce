//! Login tokens: lowercase hex of HMAC-SHA256, compared in constant time. The
//! server verifies them; a back end that holds the same secret mints them
//! and hands each app only its own token, so no app ever ships the secret.
//!
//! Two forms (protocol section 6):
//! - **plain**, `<login id="ID" token="T"/>`: T = HMAC-SHA256(secret, ID),
//!   valid for as long as the secret is;
//! - **expiring** (version 1.2), `<login id="ID" token="T" exp="E"/>`:
//!   T = HMAC-SHA256(secret, ID + "|" + E), E in Unix seconds written in
//!   plain decimal (no sign, no leading zeros). The MAC says who and until
//!   when; whether E has passed is the server's check, not the codec's.

use std::io::Write as _;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest message a token covers: an id (64) plus "|" plus a u64 (20).
const MAX_MESSAGE: usize = 96;

/// The token a client with `id` must present when the server has `secret`.
pub fn mint(secret: &[u8], id: &str) -> String {
    mac_hex(secret, id.as_bytes())
}

/// The token a client with `id` presents with `exp="EXP"`: valid until the
/// Unix second `exp` under `secret`.
pub fn mint_expiring(secret: &[u8], id: &str, exp: u64) -> String {
    let mut message = Vec::with_capacity(MAX_MESSAGE);
    expiring_message(&mut message, id, exp);
    mac_hex(secret, &message)
}

/// Whether `token` is the right plain token for `id`. The MAC comparison
/// takes the same time wherever the first differing byte is.
pub fn verify(secret: &[u8], id: &str, token: Option<&str>) -> bool {
    verify_mac(secret, id.as_bytes(), token)
}

/// Whether `token` is the right expiring token for `id` and `exp` (whether
/// `exp` has passed is for the caller to say).
pub fn verify_expiring(secret: &[u8], id: &str, exp: u64, token: Option<&str>) -> bool {
    let mut message = Vec::with_capacity(MAX_MESSAGE);
    expiring_message(&mut message, id, exp);
    verify_mac(secret, &message, token)
}

/// `ID|EXP`, what an expiring token is the MAC of.
fn expiring_message(out: &mut Vec<u8>, id: &str, exp: u64) {
    out.extend_from_slice(id.as_bytes());
    let _ = write!(out, "|{exp}");
}

fn mac_hex(secret: &[u8], message: &[u8]) -> String {
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message);
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this arm only satisfies the type.
        Err(_) => String::new(),
    }
}

fn verify_mac(secret: &[u8], message: &[u8], token: Option<&str>) -> bool {
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
    mac.update(message);
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

    #[test]
    fn an_expiring_token_is_the_mac_of_id_bar_exp() {
        let t = mint_expiring(b"s3cret", "alice", 1_700_000_000);
        assert_eq!(t, mint(b"s3cret", "alice|1700000000"));
        assert!(verify_expiring(b"s3cret", "alice", 1_700_000_000, Some(&t)));
        // Another expiry, id, secret, or the plain form: all refused.
        assert!(!verify_expiring(
            b"s3cret",
            "alice",
            1_700_000_001,
            Some(&t)
        ));
        assert!(!verify_expiring(b"s3cret", "bob", 1_700_000_000, Some(&t)));
        assert!(!verify_expiring(b"other", "alice", 1_700_000_000, Some(&t)));
        assert!(!verify(b"s3cret", "alice", Some(&t)));
        let plain = mint(b"s3cret", "alice");
        assert!(!verify_expiring(
            b"s3cret",
            "alice",
            1_700_000_000,
            Some(&plain)
        ));
        assert!(!verify_expiring(b"s3cret", "alice", 1_700_000_000, None));
        // The longest id with the largest expiry.
        let id = "i".repeat(crate::MAX_ID_LEN);
        let t = mint_expiring(b"k", &id, u64::MAX);
        assert!(verify_expiring(b"k", &id, u64::MAX, Some(&t)));
    }
}
