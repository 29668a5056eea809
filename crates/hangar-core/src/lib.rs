//! Shared vocabulary of Hangar: the small types every other crate speaks.
//!
//! Layout:
//! - [`name`]: app names (DNS labels) and their validation rule.
//! - [`id`]: random identifiers and bearer tokens (stored hashed).
//! - [`archive`]: the one safe tar unpacker, used for uploaded sources and image layers.
//! - [`route`]: the [`route::RouteSink`] seam between the node agent and the edge proxy.
//! - [`machine`]: a machine's configuration (Fly Machines API shape) and its validation.
//! - [`status`]: the lifecycle states of builds, releases and machines.
//!
//! This crate does no I/O of its own except in [`archive`], and knows nothing of
//! HTTP, SQL or runc.

pub mod archive;
pub mod id;
pub mod machine;
pub mod name;
pub mod route;
pub mod status;

/// Seconds since the Unix epoch; the one clock format stored and sent over the API.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
