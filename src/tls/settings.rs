//! The TLS settings from the environment and flags: both files or
//! neither, the client CA and id-from-certificate only with them; the files
//! are loaded here, so a bad one stops the start with the usual one line
//! naming the variable (exit 2).

use std::path::PathBuf;

use crate::config::{int_in, ConfigError, RawConfig};
use crate::tls::{TlsFiles, TlsLoadError, TlsSettings};

/// The TLS variables: both files or neither; the files are loaded here,
/// so a bad one stops the start with the usual one line.
pub fn settings(raw: &RawConfig) -> Result<Option<TlsSettings>, ConfigError> {
    let set = |v: &Option<String>| {
        v.as_deref()
            .filter(|v| !v.trim().is_empty())
            .map(str::to_string)
    };
    let (cert, key, client_ca) = (
        set(&raw.tls_cert),
        set(&raw.tls_key),
        set(&raw.tls_client_ca),
    );
    let id_from_cert = int_in(
        &raw.tls_id_from_cert,
        0,
        1,
        "LIFELINE_TLS_ID_FROM_CERT",
        "tls-id-from-cert",
    )? == 1;
    let max_handshakes = int_in(
        &raw.tls_max_handshakes,
        1,
        100_000,
        "LIFELINE_TLS_MAX_HANDSHAKES",
        "tls-max-handshakes",
    )? as usize;
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            let needs_tls = |var, flag, value: String| ConfigError {
                var,
                flag,
                value,
                accepted: "LIFELINE_TLS_CERT and LIFELINE_TLS_KEY set too (it is a TLS setting)"
                    .to_string(),
            };
            if let Some(ca) = client_ca {
                return Err(needs_tls("LIFELINE_TLS_CLIENT_CA", "tls-client-ca", ca));
            }
            if id_from_cert {
                return Err(needs_tls(
                    "LIFELINE_TLS_ID_FROM_CERT",
                    "tls-id-from-cert",
                    raw.tls_id_from_cert.clone(),
                ));
            }
            return Ok(None);
        }
        (Some(cert), None) => {
            return Err(ConfigError {
                var: "LIFELINE_TLS_CERT",
                flag: "tls-cert",
                value: cert,
                accepted: "LIFELINE_TLS_KEY set too: both or neither".to_string(),
            })
        }
        (None, Some(key)) => {
            return Err(ConfigError {
                var: "LIFELINE_TLS_KEY",
                flag: "tls-key",
                value: key,
                accepted: "LIFELINE_TLS_CERT set too: both or neither".to_string(),
            })
        }
    };
    if id_from_cert && client_ca.is_none() {
        return Err(ConfigError {
            var: "LIFELINE_TLS_ID_FROM_CERT",
            flag: "tls-id-from-cert",
            value: raw.tls_id_from_cert.clone(),
            accepted: "0 without LIFELINE_TLS_CLIENT_CA (the id comes from a client certificate)"
                .to_string(),
        });
    }
    let files = TlsFiles {
        cert: PathBuf::from(&cert),
        key: PathBuf::from(&key),
        client_ca: client_ca.as_ref().map(PathBuf::from),
    };
    let loaded = crate::tls::load(&files).map_err(|e| {
        let (flag, value, what) = match e.var() {
            "LIFELINE_TLS_CERT" => ("tls-cert", cert.clone(), "a readable PEM certificate chain"),
            "LIFELINE_TLS_CLIENT_CA" => (
                "tls-client-ca",
                client_ca.clone().unwrap_or_default(),
                "a readable PEM file of CA certificates",
            ),
            _ => (
                "tls-key",
                key.clone(),
                "a readable PEM private key matching LIFELINE_TLS_CERT",
            ),
        };
        tls_error(&e, flag, value, what)
    })?;
    Ok(Some(TlsSettings {
        files,
        loaded,
        id_from_cert,
        max_handshakes,
    }))
}

fn tls_error(e: &TlsLoadError, flag: &'static str, value: String, what: &str) -> ConfigError {
    ConfigError {
        var: e.var(),
        flag,
        value,
        accepted: format!("{what} ({e})"),
    }
}
