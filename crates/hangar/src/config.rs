//! The CLI's config file: where the API is and the token to use.
//!
//! Path: `$HANGAR_CONFIG`, else `$XDG_CONFIG_HOME/hangar/config.json`, else
//! `~/.config/hangar/config.json`. `HANGAR_API_URL`, `HANGAR_TOKEN` and
//! `HANGAR_CA_CERT` override its fields.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The default API address of `hangar up`.
pub const DEFAULT_API: &str = "http://127.0.0.1:7070";

/// Contents of the config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CliConfig {
    /// Base URL of the API, e.g. `http://127.0.0.1:7070`.
    pub api_url: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// The API's certificate fingerprint (SHA-256) to trust instead of a
    /// CA (a self-signed API certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A CA (PEM) to trust beside the public ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// Where the config file lives.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HANGAR_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("hangar").join("config.json")
}

impl CliConfig {
    /// Reads the config file (missing is empty).
    pub fn load() -> Result<CliConfig> {
        let path = config_path();
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .with_context(|| format!("{} is not a valid hangar config", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the config file, readable by its owner only (it holds a token).
    pub fn save(&self) -> Result<PathBuf> {
        let path = config_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&serde_json::to_vec_pretty(self)?)?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The API URL and token to use, with the environment's overrides.
    pub fn resolve(&self) -> Result<(String, String)> {
        let api = std::env::var("HANGAR_API_URL")
            .ok()
            .or_else(|| self.api_url.clone())
            .unwrap_or_else(|| DEFAULT_API.to_owned());
        let token = std::env::var("HANGAR_TOKEN")
            .ok()
            .or_else(|| self.token.clone());
        let Some(token) = token else {
            bail!(
                "no token: run `hangar up` on this machine (it stores one), or `hangar login --token <TOKEN>`"
            );
        };
        Ok((api.trim_end_matches('/').to_owned(), token))
    }

    /// The CA to trust beside the public roots: `HANGAR_CA_CERT`, else the
    /// config's.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        std::env::var_os("HANGAR_CA_CERT")
            .map(PathBuf::from)
            .or_else(|| self.ca_cert.clone())
    }

    /// How the API's certificate is trusted: its pinned fingerprint when
    /// the API URL is the configured one, else the roots.
    pub fn api_tls(&self, api_url: &str) -> Result<rustls::ClientConfig> {
        let configured = self.api_url.as_deref().map(|u| u.trim_end_matches('/'));
        let pin = self
            .fingerprint
            .as_deref()
            .filter(|_| configured == Some(api_url));
        crate::tls_client::client_config(pin, self.ca_cert().as_deref())
    }

    /// How apps' certificates are trusted (never by the API's pin).
    pub fn app_tls(&self) -> Result<rustls::ClientConfig> {
        crate::tls_client::client_config(None, self.ca_cert().as_deref())
    }
}
