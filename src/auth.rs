//! Login tokens as the server checks them: which secrets are in force (one,
//! or two while a key rotates), whether a token must carry an expiry, and
//! the verdict on one login. The MACs themselves are
//! [`lifeline_wire::token`], where a back end that mints tokens finds them
//! too.

pub use lifeline_wire::token::{mint, mint_expiring, verify, verify_expiring};

/// Why a login's token was refused; the text goes into `auth-failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("token missing or wrong: it must be the lowercase hex HMAC-SHA256 of the id (or of ID|exp with exp)")]
    BadToken,
    #[error(
        "this server requires expiring tokens: log in with exp=\"UNIX_S\" and a token for ID|exp"
    )]
    ExpRequired,
    #[error("the token expired (exp={exp})")]
    Expired { exp: u64 },
}

/// A value of `LIFELINE_AUTH_SECRET` that is not one secret or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("one secret, or two separated by a comma (the new one first), none of them empty")]
pub struct BadSecrets;

/// The login check: the secrets tokens may be minted under, new first.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    secrets: Vec<Vec<u8>>,
    require_exp: bool,
}

impl std::fmt::Debug for Auth {
    // By hand, so that a secret never lands in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("secrets", &self.secrets.len())
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

impl Auth {
    /// `raw` is `LIFELINE_AUTH_SECRET`: `NEW` or `NEW,OLD`. During a key
    /// rotation both are in force, so apps holding tokens minted under the
    /// old secret keep logging in until their tokens are replaced.
    pub fn parse(raw: &str, require_exp: bool) -> Result<Auth, BadSecrets> {
        let secrets: Vec<Vec<u8>> = raw.split(',').map(|s| s.as_bytes().to_vec()).collect();
        if secrets.len() > 2 || secrets.iter().any(Vec::is_empty) {
            return Err(BadSecrets);
        }
        Ok(Auth {
            secrets,
            require_exp,
        })
    }

    pub fn require_exp(&self) -> bool {
        self.require_exp
    }

    /// Whether `id` may log in with `token` (and `exp`) at Unix second
    /// `now_s`. An expiring token is refused from its `exp` second on (as
    /// JWT's `exp`); a plain one is refused only when expiry is required.
    pub fn check(
        &self,
        id: &str,
        token: Option<&str>,
        exp: Option<u64>,
        now_s: u64,
    ) -> Result<(), Refusal> {
        match exp {
            None if self.require_exp => Err(Refusal::ExpRequired),
            None => self
                .secrets
                .iter()
                .any(|secret| verify(secret, id, token))
                .then_some(())
                .ok_or(Refusal::BadToken),
            Some(exp) => {
                // The MAC first: an unauthenticated exp says nothing.
                if !self
                    .secrets
                    .iter()
                    .any(|secret| verify_expiring(secret, id, exp, token))
                {
                    return Err(Refusal::BadToken);
                }
                if now_s >= exp {
                    return Err(Refusal::Expired { exp });
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_one_or_two() {
        assert!(Auth::parse("a", false).is_ok());
        assert!(Auth::parse("new,old", false).is_ok());
        for bad in ["a,b,c", "a,", ",b", ","] {
            assert_eq!(Auth::parse(bad, false), Err(BadSecrets), "{bad}");
        }
        // Never printed.
        let auth = Auth::parse("hunter2,old", true).unwrap();
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn either_secret_passes_and_expiry_is_enforced() {
        let auth = Auth::parse("new,old", false).unwrap();
        let now = 1_000;
        assert_eq!(auth.check("a", Some(&mint(b"new", "a")), None, now), Ok(()));
        assert_eq!(auth.check("a", Some(&mint(b"old", "a")), None, now), Ok(()));
        assert_eq!(
            auth.check("a", Some(&mint(b"other", "a")), None, now),
            Err(Refusal::BadToken)
        );
        assert_eq!(auth.check("a", None, None, now), Err(Refusal::BadToken));
        let fresh = mint_expiring(b"old", "a", now + 1);
        assert_eq!(auth.check("a", Some(&fresh), Some(now + 1), now), Ok(()));
        // From the exp second on, refused.
        let stale = mint_expiring(b"new", "a", now);
        assert_eq!(
            auth.check("a", Some(&stale), Some(now), now),
            Err(Refusal::Expired { exp: now })
        );
        // A forged exp (token for another one) is a bad token, not an expiry.
        assert_eq!(
            auth.check("a", Some(&stale), Some(now + 100), now),
            Err(Refusal::BadToken)
        );
        let strict = Auth::parse("new", true).unwrap();
        assert_eq!(
            strict.check("a", Some(&mint(b"new", "a")), None, now),
            Err(Refusal::ExpRequired)
        );
        let fresh = mint_expiring(b"new", "a", now + 60);
        assert_eq!(strict.check("a", Some(&fresh), Some(now + 60), now), Ok(()));
    }
}
