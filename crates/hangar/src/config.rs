//! The CLI's config file: where the API is and the token to use.
//!
//! Path: `$HANGAR_CONFIG`, else `$XDG_CONFIG_HOME/hangar/config.json`, else
//! `~/.config/hangar/config.json`. `HANGAR_API_URL` and `HANGAR_TOKEN`
//! override its fields.

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
}
