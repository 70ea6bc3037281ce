//! The protocol's closed vocabularies: error codes and goodbye reasons.

/// The codes of `<error code="..."/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadFrame,
    FrameTooLarge,
    UnknownFrame,
    BadId,
    AuthFailed,
    NotLoggedIn,
    AlreadyLoggedIn,
    Offline,
    /// Cluster mode: the recipient may be on another node, which cannot be
    /// reached now (Redis is down).
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad-frame",
            ErrorCode::FrameTooLarge => "frame-too-large",
            ErrorCode::UnknownFrame => "unknown-frame",
            ErrorCode::BadId => "bad-id",
            ErrorCode::AuthFailed => "auth-failed",
            ErrorCode::NotLoggedIn => "not-logged-in",
            ErrorCode::AlreadyLoggedIn => "already-logged-in",
            ErrorCode::Offline => "offline",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// Why the server says goodbye (`<bye reason="..."/>`), also the offline reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByeReason {
    Timeout,
    Replaced,
    Shutdown,
    Kicked,
    Overload,
    SlowConsumer,
}

impl ByeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::Timeout => "timeout",
            ByeReason::Replaced => "replaced",
            ByeReason::Shutdown => "shutdown",
            ByeReason::Kicked => "kicked",
            ByeReason::Overload => "overload",
            ByeReason::SlowConsumer => "slow-consumer",
        }
    }
}
