//! `hangar up`'s HTTPS: the flags, and setting up the certificates, the
//! edge's TLS port and the API's TLS from them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hangar_resources::Vault;
use hangar_store::Store;
use hangar_tls::{AcmeConfig, Certs, CertsConfig, ChallengeKind, StaticPolicy};

/// HTTPS for apps and the API.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) for apps here, e.g. 0.0.0.0:443.
    /// The plain HTTP port then answers ACME HTTP-01 challenges and sends
    /// hosts that have a certificate to https (308).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// A certificate of the operator's (PEM chain), e.g. for `*.<domain>`:
    /// served for every name it covers, and to clients that send no SNI.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Order certificates through ACME, with this contact address (Let's
    /// Encrypt's production directory unless --acme-directory says).
    #[arg(long)]
    pub acme_email: Option<String>,
    /// The ACME CA's directory URL (turns ordering on).
    #[arg(long)]
    pub acme_directory: Option<String>,
    /// A PEM root to trust for the ACME CA's own HTTPS (a private CA such
    /// as Pebble).
    #[arg(long)]
    pub acme_ca_root: Option<PathBuf>,
    /// Which challenge proves a name: http-01 (the plain HTTP port, 80 for
    /// a public CA) or tls-alpn-01 (the TLS port, 443).
    #[arg(long, default_value = "http-01")]
    pub acme_challenge: ChallengeKind,
    /// Seconds between two looks of the renewal loop.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub acme_renew_check_secs: u64,
    /// Serve the API over HTTPS: with --api-tls-cert, with an ACME
    /// certificate for --api-host, or else with a self-signed certificate
    /// whose fingerprint is printed (`hangar login --fingerprint` pins it).
    #[arg(long)]
    pub api_tls: bool,
    /// The API's certificate (PEM chain).
    #[arg(long, requires = "api_tls_key", requires = "api_tls")]
    pub api_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --api-tls-cert.
    #[arg(long, requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// The API's public name, certified through ACME (needs ordering on,
    /// and the name pointing at this host's HTTP port for HTTP-01).
    #[arg(long, requires = "api_tls")]
    pub api_host: Option<String>,
}

/// What `hangar up` serves TLS with.
pub struct TlsSetup {
    /// The certificates, when the edge has a TLS port.
    pub certs: Option<Certs>,
    /// The API's TLS, if it serves it.
    pub api: Option<Arc<dyn hangar_proxy::TlsPolicy>>,
    /// The API's certificate fingerprint, when it is self-signed.
    pub api_fingerprint: Option<String>,
}

fn read_pem(path: &Path, what: &str) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("reading {what} {}", path.display()))?;
    if meta.len() > hangar_tls::certs::MAX_PEM_BYTES as u64 {
        bail!(
            "{what} {} is over {} KiB",
            path.display(),
            hangar_tls::certs::MAX_PEM_BYTES >> 10
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

impl TlsArgs {
    fn acme(&self) -> Option<AcmeConfig> {
        if self.acme_email.is_none() && self.acme_directory.is_none() {
            return None;
        }
        Some(AcmeConfig {
            directory: self
                .acme_directory
                .clone()
                .unwrap_or_else(|| hangar_tls::LETS_ENCRYPT.to_owned()),
            email: self.acme_email.clone(),
            ca_root: self.acme_ca_root.clone(),
            challenge: self.acme_challenge,
        })
    }

    /// Loads the certificates and the API's TLS; refuses flags that make no
    /// sense together before anything is served.
    pub async fn setup(
        &self,
        domain: &str,
        data: &Path,
        store: &Store,
        vault: &Vault,
    ) -> Result<TlsSetup> {
        let acme = self.acme();
        if self.tls_listen.is_none() && (acme.is_some() || self.tls_cert.is_some()) {
            bail!(
                "--acme-email, --acme-directory and --tls-cert need --tls-listen (the port HTTPS is served on)"
            );
        }
        if self.api_host.is_some() && acme.is_none() {
            bail!(
                "--api-host certifies the API through ACME: add --acme-email (or --acme-directory)"
            );
        }
        let operator = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some((read_pem(cert, "--tls-cert")?, read_pem(key, "--tls-key")?))
            }
            _ => None,
        };
        let certs = if self.tls_listen.is_some() || self.api_host.is_some() {
            let cfg = CertsConfig {
                domain: domain.to_owned(),
                acme,
                operator,
                api_host: self.api_host.clone(),
                renew_every: Duration::from_secs(self.acme_renew_check_secs),
            };
            Some(
                Certs::open(cfg, store.clone(), vault.clone())
                    .await
                    .context("loading certificates")?,
            )
        } else {
            None
        };
        let mut api_fingerprint = None;
        let api: Option<Arc<dyn hangar_proxy::TlsPolicy>> = if !self.api_tls {
            None
        } else if let (Some(cert), Some(key)) = (&self.api_tls_cert, &self.api_tls_key) {
            let policy = StaticPolicy::new(
                &read_pem(cert, "--api-tls-cert")?,
                &read_pem(key, "--api-tls-key")?,
            )
            .context("--api-tls-cert")?;
            Some(Arc::new(policy))
        } else if self.api_host.is_some() {
            certs.as_ref().map(|c| c.api_policy())
        } else {
            let (chain, key, fingerprint) = self_signed_api(data)?;
            api_fingerprint = Some(fingerprint);
            Some(Arc::new(StaticPolicy::new(&chain, &key)?))
        };
        Ok(TlsSetup {
            certs,
            api,
            api_fingerprint,
        })
    }
}

/// The API's self-signed certificate: made once, kept in the data dir
/// (`api-tls.pem`, `api-tls.key`, 0600) so its fingerprint stays what
/// clients pinned. Returns (chain, key, fingerprint).
fn self_signed_api(data: &Path) -> Result<(String, String, String)> {
    let (cert_path, key_path) = (data.join("api-tls.pem"), data.join("api-tls.key"));
    let (chain, key) = match (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        (Ok(chain), Ok(key)) => (chain, key),
        _ => {
            let (chain, key) = hangar_tls::certs::self_signed(&["localhost".to_owned()])
                .context("making the API's self-signed certificate")?;
            hangar_resources::write_private_file(&key_path, key.as_bytes(), 0o600, None)
                .with_context(|| format!("writing {}", key_path.display()))?;
            hangar_resources::write_private_file(&cert_path, chain.as_bytes(), 0o600, None)
                .with_context(|| format!("writing {}", cert_path.display()))?;
            (chain, key)
        }
    };
    let parsed = hangar_tls::certs::parse(&chain, &key)
        .with_context(|| format!("{} and {}", cert_path.display(), key_path.display()))?;
    let fingerprint = hangar_tls::certs::fingerprint(parsed.key.cert[0].as_ref());
    Ok((chain, key, fingerprint))
}
