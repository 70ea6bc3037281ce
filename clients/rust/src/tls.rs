//! TLS for the client: which server to trust and, for mutual TLS, which
//! certificate to show.
//!
//! The server is verified against a CA file when one is given (a private
//! CA, as a fleet of devices uses), otherwise against the Mozilla root
//! bundle compiled in by `webpki-roots`. Compiled-in roots rather than the
//! operating system's store (`rustls-native-certs`): the client then
//! behaves the same in a minimal container, on a device without a CA
//! directory, and in CI, and a public server's certificate is from a CA in
//! that bundle; a deployment with a private CA names it with
//! [`TlsBuilder::ca_file`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore};

/// How the client speaks TLS: the rustls configuration and the name the
/// server's certificate must carry.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

/// What went wrong setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Pem { path: PathBuf, why: String },
    #[error("not a server name for TLS: {0:?}")]
    ServerName(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

impl ClientTls {
    /// Starts a TLS setup for a server whose certificate names `server_name`
    /// (a DNS name, or an IP address).
    pub fn builder(server_name: &str) -> TlsBuilder {
        TlsBuilder {
            server_name: server_name.to_string(),
            ca_file: None,
            client_cert: None,
        }
    }

    /// A rustls configuration of the caller's own (one shared configuration
    /// also shares its session cache: reconnects resume in one round trip).
    pub fn from_config(
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<ClientTls, TlsSetupError> {
        Ok(ClientTls {
            config,
            server_name: server_name_of(server_name)?,
        })
    }

    pub(crate) fn connection(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

/// Builds a [`ClientTls`].
pub struct TlsBuilder {
    server_name: String,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsBuilder {
    /// Trusts the CA certificates in this PEM file instead of the bundled roots.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> TlsBuilder {
        self.ca_file = Some(path.into());
        self
    }

    /// Mutual TLS: presents this certificate chain and key (PEM files).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsBuilder {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    pub fn build(self) -> Result<ClientTls, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert)?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let key_pem = read(key)?;
                let key_der =
                    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsSetupError::Pem {
                        path: key.clone(),
                        why: e.to_string(),
                    })?;
                builder.with_client_auth_cert(read_certs(cert)?, key_der)?
            }
        };
        ClientTls::from_config(Arc::new(config), &self.server_name)
    }
}

fn server_name_of(name: &str) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsSetupError::ServerName(name.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem {
            path: path.to_path_buf(),
            why: "no PEM certificate in it".to_string(),
        });
    }
    Ok(certs)
}
