//! `--tls`: the connections speak TLS to the target (any protocol, and
//! `wss://` with `--transport ws`), verifying it against `--tls-ca` or the
//! bundled Mozilla roots. One rustls configuration per process, so its
//! session cache makes reconnects (churn, restart) resume with a ticket
//! unless `--tls-no-resume` asks for a full handshake every time.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// The TLS flags.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Speak TLS to the target (with --transport ws: wss://).
    #[arg(long)]
    pub tls: bool,
    /// TLS: trust the CA certificates in this PEM file instead of the bundled Mozilla roots.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// TLS: the name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub tls_name: String,
    /// TLS: no session resumption, every connect is a full handshake.
    #[arg(long)]
    pub tls_no_resume: bool,
}

/// What every TLS connection of this process starts from.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// The setup the flags ask for (`None` without `--tls`), or why not.
pub fn setup(args: &TlsArgs) -> Result<Option<TlsSetup>, String> {
    if !args.tls {
        if args.tls_ca.is_some() || args.tls_no_resume {
            return Err("is a TLS option: add --tls".to_string());
        }
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    match &args.tls_ca {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if args.tls_no_resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let name = ServerName::try_from(args.tls_name.clone())
        .map_err(|_| format!("{:?} is not a server name", args.tls_name))?;
    Ok(Some(TlsSetup {
        config: Arc::new(config),
        name,
    }))
}
