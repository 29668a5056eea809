//! Shared vocabulary of Hangar: the small types every other crate speaks.
//!
//! Layout:
//! - [`admission`]: connection caps (total, per client) for the listeners.
//! - [`name`]: app names (DNS labels) and their validation rule.
//! - [`id`]: random identifiers and bearer tokens (stored hashed).
//! - [`archive`]: the one safe tar unpacker, used for uploaded sources and image layers.
//! - [`duration`]: the one parser and the bounds of durations tenants write.
//! - [`route`]: the [`route::RouteSink`] seam between the node agent and the edge proxy.
//! - [`scope`]: what an API token may do (`admin`, `read`, `deploy:APP`).
//! - [`machine`]: a machine's configuration (Fly Machines API shape) and its validation.
//! - [`check`]: the one health check type both hangar.toml and the Machines API resolve to.
//! - [`app_config`]: hangar.toml (Fly's fly.toml keys), parsed with spans for errors.
//! - [`resource`]: the resources an app declares in its code.
//! - [`status`]: the lifecycle states of builds, releases and machines.
//! - [`supervise`]: panic containment for tasks and long-lived loops.
//! - [`log_rate`]: the rate limit of logs tenants write straight into files.
//!
//! This crate does no I/O of its own except in [`archive`] and [`log_rate`], and knows nothing of
//! HTTP, SQL or runc.

pub mod admission;
pub mod app_config;
pub mod archive;
pub mod check;
pub mod duration;
pub mod id;
pub mod log_rate;
pub mod machine;
pub mod name;
pub mod resource;
pub mod route;
pub mod scope;
pub mod status;
pub mod supervise;

/// An error and its causes, `: `-separated: many libraries (hyper,
/// tokio-postgres) keep the useful part, e.g. `Connection refused`, in a
/// source rather than in their own message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Seconds since the Unix epoch; the one clock format stored and sent over the API.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC time (`2026-11-24T01:02:03Z`) of Unix seconds, as Fly's API
/// writes timestamps.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_482_123), "2026-11-24T01:02:03Z");
    }

    #[test]
    fn error_chains_name_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("connecting to 127.0.0.1:5432")]
        struct Outer(#[source] std::io::Error);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = super::error_chain(&Outer(refused));
        assert_eq!(text, "connecting to 127.0.0.1:5432: connection refused");
    }
}
