//! How the CLI trusts HTTPS: the web's public roots (webpki-roots), plus a
//! CA of the user's (`hangar login --ca-cert`, `HANGAR_CA_CERT`), or, for
//! the API only, a pinned certificate fingerprint (`hangar login
//! --fingerprint`, for `hangar up --api-tls`'s self-signed certificate).
//! Never "accept anything".

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A fingerprint as the user may write it (`sha256:AB:CD…`, any case,
/// with or without colons) reduced to lowercase hex.
pub fn normalize_fingerprint(raw: &str) -> Result<String> {
    let hex: String = raw
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{raw:?} is not a SHA-256 fingerprint (64 hex digits, e.g. sha256:AB:CD:…)");
    }
    Ok(hex)
}

/// The TLS config of a client: by `pin` if given, else by the public roots
/// and `ca_cert` (ALPN left to the connector: HTTP/1.1).
pub fn client_config(pin: Option<&str>, ca_cert: Option<&Path>) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let cfg = match pin {
        Some(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                hex: normalize_fingerprint(pin)?,
                provider: provider(),
            }))
            .with_no_client_auth(),
        None => builder
            .with_root_certificates(roots(ca_cert)?)
            .with_no_client_auth(),
    };
    Ok(cfg)
}

fn roots(ca_cert: Option<&Path>) -> Result<RootCertStore> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.with_context(|| format!("{} is not PEM", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("a certificate in {}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            bail!("{} holds no certificate", path.display());
        }
    }
    Ok(roots)
}

/// Trusts exactly one certificate, by its SHA-256; the handshake's
/// signatures are still checked (so the server holds its key).
#[derive(Debug)]
struct Pinned {
    hex: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let got = hex::encode(sha2::Sha256::digest(end_entity.as_ref()));
        if got == self.hex {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the API's certificate (sha256 {got}) is not the one pinned (sha256 {}): \
                 if the server's certificate changed on purpose, `hangar login --fingerprint` again",
                self.hex
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_in_any_usual_spelling() {
        let hex = "ab".repeat(32);
        let colons: Vec<&str> = (0..32).map(|_| "AB").collect();
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", colons.join(":"))).unwrap(),
            hex
        );
        assert_eq!(normalize_fingerprint(&hex).unwrap(), hex);
        assert!(normalize_fingerprint("sha256:AB:CD").is_err());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_err());
    }
}
