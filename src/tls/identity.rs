//! Who a client certificate names: its subject's common name and its DNS
//! subject alternative names. With `LIFELINE_TLS_ID_FROM_CERT=1` a login id
//! must be one of them, so a device certificate is the device's credential.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The names a certificate vouches for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub common_name: Option<String>,
    pub dns: Vec<String>,
}

impl CertNames {
    /// Whether `id` is one of the names (exact, case-sensitive: ids are).
    pub fn allows(&self, id: &str) -> bool {
        self.common_name.as_deref() == Some(id) || self.dns.iter().any(|name| name == id)
    }
}

/// Reads the names from a DER certificate (already verified by the
/// handshake: this only reads it).
pub fn cert_names(der: &[u8]) -> Result<CertNames, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let dns = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    Ok(CertNames { common_name, dns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_common_name_and_the_dns_sans() {
        let mut params =
            rcgen::CertificateParams::new(vec!["phone-7.devices".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "phone-7");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = cert_names(cert.der()).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("phone-7"));
        assert_eq!(names.dns, vec!["phone-7.devices".to_string()]);
        assert!(names.allows("phone-7"));
        assert!(names.allows("phone-7.devices"));
        assert!(!names.allows("phone-8"));
        assert!(!names.allows("PHONE-7"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(cert_names(b"not a certificate").is_err());
    }
}
