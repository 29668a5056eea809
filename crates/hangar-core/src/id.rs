//! Identifiers and bearer tokens.
//!
//! Ids are random (not sequential) so they leak nothing and never collide across
//! nodes. Tokens are shown once and stored only as a SHA-256 hash.

use sha2::{Digest, Sha256};

/// Random hex of `bytes` bytes from the OS RNG.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS RNG failing is not recoverable in any meaningful way for a server.
    getrandom::fill(&mut buf).expect("the operating system's random number generator failed");
    hex::encode(buf)
}

/// A new id such as `bld_3f9a0c1d2e4b5a69`; the prefix names the noun.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(8))
}

/// A new bearer token (`hgr_` + 256 random bits).
pub fn new_token() -> String {
    format!("hgr_{}", random_hex(32))
}

/// The form in which a token is stored and looked up.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `sha256:<hex>` of `data`, the digest format of the image store.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("bld");
        let b = new_id("bld");
        assert!(a.starts_with("bld_") && a.len() == 20);
        assert_ne!(a, b);
    }

    #[test]
    fn token_hash_is_stable_and_hides_the_token() {
        let t = new_token();
        assert_eq!(hash_token(&t), hash_token(&t));
        assert!(!hash_token(&t).contains(&t[4..]));
    }
}
