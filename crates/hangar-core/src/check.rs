//! The one health check type: what `[[services.http_checks]]`,
//! `[[services.tcp_checks]]` and `[checks.NAME]` in hangar.toml, and a
//! Machines API config's `checks`, all resolve to, with defaults filled in
//! and durations bounded. The node runs only this type.
//!
//! [`crate::app_config`] parses hangar.toml into it; the Machines API's wire
//! shape ([`crate::machine::Check`]) converts to it (`spec`) and from it.

use std::time::Duration;

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// HTTP request or TCP connect.
    pub kind: CheckKind,
    /// Port checked; `None` is the service's (for top-level checks, the
    /// app's `$PORT`).
    pub port: Option<u16>,
    /// Time between checks.
    pub interval: Duration,
    /// Time a check may take; shorter than `interval`.
    pub timeout: Duration,
    /// Time after start before failures count.
    pub grace_period: Duration,
}

/// Default check interval.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// Default check timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default check grace period.
pub const DEFAULT_CHECK_GRACE_PERIOD: Duration = Duration::from_secs(1);

impl Check {
    /// A check of `kind` with the default port and timings.
    pub fn new(kind: CheckKind) -> Check {
        Check {
            kind,
            port: None,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            grace_period: DEFAULT_CHECK_GRACE_PERIOD,
        }
    }
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Passes when a TCP connection is accepted.
    Tcp,
    /// Passes on a 2xx answer to `method path`.
    Http {
        /// Upper-case method token, `GET` by default.
        method: String,
        /// Absolute path, `/` by default.
        path: String,
    },
}
