//! TLS on the client port: what is loaded from the PEM files (and loaded
//! again on SIGHUP), and what a client certificate says about its holder.
//!
//! The per-connection state machine that drives rustls from the loop lives
//! with the rest of the transport, in `server/tls.rs`; this module knows
//! nothing of sockets.

mod files;
mod identity;
mod settings;

pub use files::{load, TlsFiles, TlsLoadError};
pub use identity::{cert_names, CertNames};
pub use settings::settings;

/// The TLS settings the server runs with: where the files are (read again
/// on SIGHUP), what was loaded from them at start-up, and the limits.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub files: TlsFiles,
    /// Loaded and checked at start-up (a bad file is a configuration error).
    pub loaded: std::sync::Arc<rustls::ServerConfig>,
    /// The login id must be the client certificate's CN or one of its DNS SANs.
    pub id_from_cert: bool,
    /// Handshakes in progress at once; more connections wait in the backlog.
    pub max_handshakes: usize,
}
