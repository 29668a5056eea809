//! Secrets kept in a project's `Secrets.toml` (Shuttle's convention; and
//! `Secrets.dev.toml` for local runs): a flat table of names to strings.
//! They are never packed with the source: `hangar deploy` sends them
//! through the secrets API, sealed at rest like any other secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The files that hold secrets, never packed with the source.
pub const FILES: [&str; 2] = ["Secrets.toml", "Secrets.dev.toml"];

/// The secrets in `path`: every key must name a string.
pub fn read(path: &Path) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        match value {
            toml::Value::String(s) => {
                out.insert(key, s);
            }
            other => bail!(
                "{}: {key} is a {}, but secrets are strings (quote it)",
                path.display(),
                other.type_str()
            ),
        }
    }
    Ok(out)
}

/// The first of `names` that exists in `dir`, with its secrets.
pub fn find(dir: &Path, names: &[&str]) -> Result<Option<(PathBuf, BTreeMap<String, String>)>> {
    for name in names {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(Some((path.clone(), read(&path)?)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_string_tables_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Secrets.toml");
        std::fs::write(&p, "API_KEY = \"k\"\nGREETING = 'hi'\n").unwrap();
        let s = read(&p).unwrap();
        assert_eq!(s["API_KEY"], "k");
        assert_eq!(s.len(), 2);
        std::fs::write(&p, "PORT = 5\n").unwrap();
        let err = format!("{:#}", read(&p).unwrap_err());
        assert!(err.contains("PORT is a integer"), "{err}");
        std::fs::write(&p, "A = \n").unwrap();
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("not valid TOML"));
        assert!(find(dir.path(), &["Secrets.dev.toml"]).unwrap().is_none());
    }
}
