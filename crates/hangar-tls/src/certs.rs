//! Certificates as files say them (PEM) and as rustls serves them
//! ([`CertifiedKey`]): parsing, checking a key matches, reading validity,
//! issuer, serial and names (x509-parser), making self-signed ones and
//! ACME's TLS-ALPN-01 answer (rcgen).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::TlsError;

/// Largest PEM (chain or key) taken from a user: a chain of a few
/// certificates is a few KiB.
pub const MAX_PEM_BYTES: usize = 64 << 10;

/// What a leaf certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// Hex, lowercase.
    pub serial: String,
    /// DNS names it is for (SANs, lowercase; `*.x` for wildcards).
    pub names: Vec<String>,
}

impl CertInfo {
    /// Whether it is for `host` (exactly, or by a wildcard one label deep).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_covers(n, host))
    }
}

/// Whether certificate name `name` (maybe `*.x`) matches `host`.
pub fn name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
}

/// A parsed chain and key, ready to serve.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// What the leaf says.
    pub info: CertInfo,
}

/// Parses a PEM chain (leaf first) and its PEM private key, checking that
/// the key is the leaf's.
pub fn parse(chain_pem: &str, key_pem: &str) -> Result<Parsed, TlsError> {
    if chain_pem.len() > MAX_PEM_BYTES || key_pem.len() > MAX_PEM_BYTES {
        return Err(TlsError::BadCertificate(format!(
            "a certificate chain or key over {} KiB",
            MAX_PEM_BYTES >> 10
        )));
    }
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate(format!("the certificate is not PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::BadCertificate(
            "no certificate in the PEM (expected -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    };
    let info = inspect(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::BadCertificate(format!("the private key is not a PEM key: {e}")))?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| TlsError::BadCertificate(format!("unsupported private key: {e}")))?;
    let key = CertifiedKey::new(chain, signer);
    key.keys_match().map_err(|_| {
        TlsError::BadCertificate("the private key is not the certificate's".to_owned())
    })?;
    Ok(Parsed {
        key: Arc::new(key),
        info,
    })
}

/// Reads a DER certificate's validity, issuer, serial and DNS names.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| TlsError::BadCertificate(format!("not an X.509 certificate: {e}")))?;
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(CertInfo {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        issuer: cert.issuer().to_string(),
        serial: hex::encode(cert.raw_serial()),
        names,
    })
}

/// The SHA-256 fingerprint of a DER certificate, as `hangar login
/// --fingerprint` takes it: `sha256:` and colon-separated uppercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", hex.join(":"))
}

/// A new self-signed certificate for `names`: (chain PEM, key PEM).
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(TlsError::rcgen)?;
    let params = rcgen::CertificateParams::new(names.to_vec()).map_err(TlsError::rcgen)?;
    let cert = params.self_signed(&key).map_err(TlsError::rcgen)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The certificate that answers a TLS-ALPN-01 challenge for `host` (RFC
/// 8737): self-signed, for `host` only, carrying the key authorization's
/// digest in the acmeIdentifier extension.
pub fn tls_alpn_answer(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = rcgen::KeyPair::generate().map_err(TlsError::rcgen)?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(TlsError::rcgen)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(TlsError::rcgen)?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        key.serialize_der().into(),
    ))
    .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_parses_and_says_what_it_is_for() {
        let (chain, key) = self_signed(&["web.example.com".to_owned()]).unwrap();
        let parsed = parse(&chain, &key).unwrap();
        assert_eq!(parsed.info.names, ["web.example.com"]);
        assert!(parsed.info.covers("web.example.com"));
        assert!(!parsed.info.covers("api.example.com"));
        assert!(parsed.info.not_after > parsed.info.not_before);
        assert!(fingerprint(parsed.key.cert[0].as_ref()).starts_with("sha256:"));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (chain, _) = self_signed(&["a.example.com".to_owned()]).unwrap();
        let (_, other_key) = self_signed(&["a.example.com".to_owned()]).unwrap();
        let err = parse(&chain, &other_key).unwrap_err().to_string();
        assert!(err.contains("not the certificate's"), "{err}");
        let err = parse("junk", &other_key).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let big = "x".repeat(MAX_PEM_BYTES + 1);
        assert!(parse(&big, &other_key).is_err());
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "web.example.com"));
        assert!(!name_covers("*.example.com", "a.web.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", ".example.com"));
        assert!(name_covers("example.com", "example.com"));
    }
}
