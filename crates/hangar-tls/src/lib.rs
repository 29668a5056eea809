//! Hangar's certificates: who serves HTTPS with what.
//!
//! - [`Certs`] holds every certificate the edge and the API serve:
//!   ordered through ACME (`acme`), uploaded by a user, or the operator's
//!   (`--tls-cert`). It is the edge's [`hangar_proxy::TlsPolicy`]: each
//!   handshake asks it for a config by SNI, and only names Hangar knows
//!   (an app's `<app>.<domain>`, a custom domain, the API's name) may
//!   cause an order; any other name is refused at once.
//! - Certificates live in the state store, their keys sealed by the vault,
//!   so a restart serves what it had and orders nothing new.
//! - One order per name at a time; a failed one backs off (5 minutes,
//!   doubling, at most a day) so a name never fails validation more than
//!   Let's Encrypt's 5 times an hour.
//! - The renewal loop renews an ACME certificate at two thirds of its
//!   lifetime; the new one is swapped in for new handshakes while
//!   connections up keep theirs. One still failing 14 days before it
//!   expires is logged as an error and shown by `hangar domains list`.

mod acme;
pub mod certs;
mod manager;
mod table;

pub use acme::{AcmeConfig, ChallengeKind, LETS_ENCRYPT};
pub use manager::{CertStatus, Certs, CertsConfig, StaticPolicy, backoff, renewal_due};

/// What can go wrong with a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A user's certificate or key that cannot be served.
    #[error("{0}")]
    BadCertificate(String),
    /// The ACME server refused or failed.
    #[error("ACME: {0}")]
    Acme(String),
    /// A sealed value could not be opened (the vault key changed?).
    #[error("sealed TLS material cannot be read: {0}")]
    Sealed(String),
    /// Making a certificate failed.
    #[error("making a certificate: {0}")]
    Generate(String),
    /// No ACME CA is configured.
    #[error("no ACME CA is configured (hangar up --acme-email …)")]
    NoAcme,
    /// The name is waiting out a back-off after failures.
    #[error(
        "ordering is paused for {host} after {failures} failed orders: next try in {in_secs} s"
    )]
    BackingOff {
        host: String,
        failures: u32,
        in_secs: i64,
    },
    #[error(transparent)]
    Store(#[from] hangar_store::StoreError),
}

impl TlsError {
    pub(crate) fn rcgen(e: rcgen::Error) -> TlsError {
        TlsError::Generate(e.to_string())
    }
}
