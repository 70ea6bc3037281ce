//! The certificate, key and client CA: read from PEM files, checked (the
//! key must match the certificate), and built into the `rustls`
//! configuration every new handshake starts from.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Session tickets sent after a full TLS 1.3 handshake. One is enough for
/// a client's next reconnect (a resumed connection is sent a fresh one),
/// and each costs bytes on the wire and a sealing on the loop.
const TLS13_TICKETS: usize = 1;

/// Where the PEM files are; read at start-up and again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// What is wrong with one of the files; names the variable that set it.
#[derive(Debug, thiserror::Error)]
pub enum TlsLoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        var: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} holds no PEM {what}", path.display())]
    Missing {
        var: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{}: {why}", path.display())]
    Invalid {
        var: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("the key in {} does not match the certificate in {}: {why}", key.display(), cert.display())]
    Mismatch {
        key: PathBuf,
        cert: PathBuf,
        why: String,
    },
}

impl TlsLoadError {
    /// The environment variable whose file is at fault.
    pub fn var(&self) -> &'static str {
        match self {
            TlsLoadError::Read { var, .. }
            | TlsLoadError::Missing { var, .. }
            | TlsLoadError::Invalid { var, .. } => var,
            TlsLoadError::Mismatch { .. } => "LIFELINE_TLS_KEY",
        }
    }
}

/// Reads the files and builds the server configuration: TLS 1.3 and 1.2,
/// the ring provider, session tickets on, client certificates required
/// when a client CA is given.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsLoadError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert, "LIFELINE_TLS_CERT")?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid("LIFELINE_TLS_CERT", &files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider.clone())?),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsLoadError::Mismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
            why: e.to_string(),
        },
        e => invalid("LIFELINE_TLS_KEY", &files.key, e),
    })?;
    // Resumption by stateless tickets (rotated every 6 hours): a reconnect
    // after a network change costs one round trip, and the server keeps no
    // per-session state. No session-id cache, so memory does not grow with
    // the number of clients who once connected.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| invalid("LIFELINE_TLS_CERT", &files.cert, e))?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = TLS13_TICKETS;
    Ok(Arc::new(config))
}

fn client_verifier(
    ca: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsLoadError> {
    const VAR: &str = "LIFELINE_TLS_CLIENT_CA";
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca, VAR)? {
        roots.add(cert).map_err(|e| invalid(VAR, ca, e))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid(VAR, ca, e))
}

fn read_certs(
    path: &Path,
    var: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let pem = read(path, var)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(var, path, e))?;
    if certs.is_empty() {
        return Err(TlsLoadError::Missing {
            var,
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsLoadError> {
    const VAR: &str = "LIFELINE_TLS_KEY";
    let pem = read(path, VAR)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsLoadError::Missing {
            var: VAR,
            path: path.to_path_buf(),
            what: "private key",
        },
        e => invalid(VAR, path, e),
    })
}

fn read(path: &Path, var: &'static str) -> Result<Vec<u8>, TlsLoadError> {
    std::fs::read(path).map_err(|source| TlsLoadError::Read {
        var,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(var: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsLoadError {
    TlsLoadError::Invalid {
        var,
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}
