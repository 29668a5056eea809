//! [`Vault`]: sealing secrets and credentials at rest, and the tokens
//! derived from the same key; and the one private-file writer.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::{ResourceError, Result};

/// Seals and opens values with the node's key.
#[derive(Clone)]
pub struct Vault {
    cipher: ChaCha20Poly1305,
    /// For tokens (HMAC-SHA256), derived from the key so the same bytes
    /// never serve two algorithms.
    mac_key: [u8; 32],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault")
    }
}

const NONCE_LEN: usize = 12;

impl Vault {
    /// Opens the key at `path`, creating it (mode 0600) on first use.
    pub fn open(path: &Path) -> Result<Vault> {
        Self::open_with(path, 0)
    }

    /// Like [`Vault::open`], but with `sealed` values already stored under
    /// a key, a missing key file is an error: a new key could read none of
    /// them, and every secret would silently be lost.
    pub fn open_with(path: &Path, sealed: i64) -> Result<Vault> {
        let key_err = |source| ResourceError::Key {
            path: path.display().to_string(),
            source,
        };
        let hex_key = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && sealed > 0 => {
                return Err(ResourceError::KeyMissing {
                    path: path.display().to_string(),
                    sealed,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| key_err(std::io::Error::other(e.to_string())))?;
                let text = hex::encode(key);
                write_private_file(path, text.as_bytes(), 0o600, None).map_err(key_err)?;
                text
            }
            Err(e) => return Err(key_err(e)),
        };
        let bytes = hex::decode(&hex_key)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| ResourceError::BadKey(path.display().to_string()))?;
        use sha2::Digest;
        let mac_key: [u8; 32] = sha2::Sha256::new()
            .chain_update(b"hangar vault token key\0")
            .chain_update(&bytes)
            .finalize()
            .into();
        Ok(Vault {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            mac_key,
        })
    }

    /// A bearer token for `context` (who it is for and what it opens):
    /// the same for the same key and context, unguessable without the key,
    /// so nothing needs storing.
    pub fn token(&self, context: &str) -> String {
        use hmac::Mac;
        hex::encode(self.mac(context).finalize().into_bytes())
    }

    /// Whether `token` is [`Self::token`]'s for `context` (constant time).
    pub fn verify_token(&self, context: &str, token: &str) -> bool {
        use hmac::Mac;
        match hex::decode(token) {
            Ok(bytes) => self.mac(context).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, context: &str) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.mac_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(context.as_bytes());
        mac
    }

    /// Seals `plain`, bound to `context` (who owns it and what it is).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // The OS generator failing is not recoverable; an all-zero nonce
        // would be reused, so refuse rather than seal with it.
        if getrandom::fill(&mut nonce).is_err() {
            panic!("the operating system's random number generator failed");
        }
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            // Encryption only fails for inputs beyond 256 GiB.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`Vault::seal`] sealed with the same `context`.
    pub fn unseal(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return Err(ResourceError::Unseal);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| ResourceError::Unseal)
    }
}

/// Writes `path` atomically (a sibling temporary file, synced, renamed)
/// with permissions `mode` from the start, handed to `owner` (uid, gid)
/// when given. The chown is best effort: only root can give a file away,
/// and a hangar that is not root runs machines as itself anyway.
pub fn write_private_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    if let Some((uid, gid)) = owner {
        let _ = std::os::unix::fs::chown(&tmp, Some(uid), Some(gid));
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_with_sealed_values_stored_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secrets.key");
        let Err(err) = Vault::open_with(&key, 3) else {
            panic!("opened without its key");
        };
        assert!(
            matches!(err, ResourceError::KeyMissing { sealed: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("Restore the key file"), "{err}");
        assert!(!key.exists(), "no new key was written");
        // Nothing sealed yet: a first start makes the key.
        Vault::open_with(&key, 0).unwrap();
        assert!(key.exists());
        Vault::open_with(&key, 3).unwrap();
    }

    #[test]
    fn sealed_values_open_only_in_their_context_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secrets.key");
        let vault = Vault::open(&key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = vault.seal("app1/secret/A", b"hunter2");
        assert!(
            !sealed.windows(7).any(|w| w == b"hunter2"),
            "not in the clear"
        );
        assert_eq!(vault.unseal("app1/secret/A", &sealed).unwrap(), b"hunter2");
        // Moved to another row, or tampered with: refused.
        assert!(vault.unseal("app2/secret/A", &sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(vault.unseal("app1/secret/A", &bad).is_err());
        // The same key reopens; another key does not.
        assert!(
            Vault::open(&key)
                .unwrap()
                .unseal("app1/secret/A", &sealed)
                .is_ok()
        );
        let other = Vault::open(&dir.path().join("other.key")).unwrap();
        assert!(other.unseal("app1/secret/A", &sealed).is_err());
        std::fs::write(&key, "nothex").unwrap();
        assert!(matches!(Vault::open(&key), Err(ResourceError::BadKey(_))));
    }
}
