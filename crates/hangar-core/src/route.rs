//! The seam between whoever decides where an app runs (the node agent) and
//! the edge proxy that sends requests there.
//!
//! Architecture Invariant: the node agent never calls the proxy directly; it
//! publishes routes through [`RouteSink`]. A multi-node deployment swaps the
//! in-process sink for one that goes over the event bus, without touching
//! either side.

use std::net::SocketAddr;

/// Receives the complete, current upstream set of an app.
///
/// Each call replaces what was there (idempotent, never a delta), so a lost or
/// repeated update cannot leave a stale route behind.
pub trait RouteSink: Send + Sync + 'static {
    /// The app is served by exactly `upstreams` from now on. An empty list
    /// means the app exists but no machine is up (the proxy answers 503).
    fn set_route(&self, app: &str, upstreams: Vec<SocketAddr>);
    /// The app no longer exists (the proxy answers 404).
    fn remove_app(&self, app: &str);
}
