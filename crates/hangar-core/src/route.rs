//! The seam between whoever decides where an app runs (the node agent) and
//! the edge proxy that sends requests there.
//!
//! Architecture Invariant: the node agent never calls the proxy directly; it
//! publishes routes through [`RouteSink`] and reads request activity through
//! [`Activity`]. The proxy reaches the node only through [`Waker`]. A
//! multi-node deployment swaps these in-process seams for ones that go over
//! the event bus, without touching either side.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

/// How many requests one machine of an app takes at once (Fly's service
/// `concurrency`). `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Above this, the proxy prefers another machine and may wake one more.
    pub soft: Option<u32>,
    /// Never more than this in flight on one machine; further requests wait
    /// in a bounded queue, then get 503 with `Retry-After`.
    pub hard: Option<u32>,
}

/// Receives the complete, current upstream set of an app.
///
/// Each call replaces what was there (idempotent, never a delta), so a lost or
/// repeated update cannot leave a stale route behind.
pub trait RouteSink: Send + Sync + 'static {
    /// The app is served by exactly `upstreams`, each taking at most
    /// `limits`, from now on. An empty list means the app exists but no
    /// machine is up (the proxy wakes one, or answers 503).
    fn publish(&self, app: &str, upstreams: Vec<SocketAddr>, limits: Limits);
    /// [`RouteSink::publish`] without concurrency limits.
    fn set_route(&self, app: &str, upstreams: Vec<SocketAddr>) {
        self.publish(app, upstreams, Limits::default());
    }
    /// The app no longer exists (the proxy answers 404).
    fn remove_app(&self, app: &str);
}

/// Why a wake did not bring an app up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeError {
    /// It failed. The reason is for the operator's log only: it may name
    /// paths, runtimes and other internals.
    Failed(String),
    /// The node will not start the app for an anonymous request (e.g. its
    /// machine crashed and its restart policy gave up). The reason names
    /// nothing internal and is shown to the client.
    Refused(String),
    /// The app was woken too often lately (a per-app rate limit); a
    /// request may try again after this long.
    Throttled {
        /// When the next wake is allowed.
        retry_after: Duration,
    },
}

impl std::fmt::Display for WakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WakeError::Failed(reason) | WakeError::Refused(reason) => f.write_str(reason),
            WakeError::Throttled { retry_after } => {
                write!(f, "woken too often; the next wake in {retry_after:?}")
            }
        }
    }
}

impl From<String> for WakeError {
    fn from(reason: String) -> Self {
        WakeError::Failed(reason)
    }
}

impl From<&str> for WakeError {
    fn from(reason: &str) -> Self {
        WakeError::Failed(reason.to_owned())
    }
}

/// What a wake resolves to.
pub type WakeFuture = Pin<Box<dyn Future<Output = Result<(), WakeError>> + Send + 'static>>;

/// Brings an app up when a request finds none of its machines running.
pub trait Waker: Send + Sync + 'static {
    /// Starts or resumes one of the app's machines, returning once it
    /// accepts connections and its route is published.
    fn wake(&self, app: &str) -> WakeFuture;
    /// Starts or resumes one more of the app's machines, because every
    /// running one is past its soft concurrency limit. `Err` when none is
    /// left to start; the default does nothing.
    fn wake_another(&self, _app: &str) -> WakeFuture {
        Box::pin(std::future::ready(Err(WakeError::Failed(
            "this node does not start extra machines".to_owned(),
        ))))
    }
}

/// How long each app has gone without a request, as the proxy saw it.
pub trait Activity: Send + Sync + 'static {
    /// `None` while a request (or a streaming response) is in flight or the
    /// app is unknown; otherwise the time since the last request ended.
    fn idle_for(&self, app: &str) -> Option<Duration>;
    /// Requests the proxy has picked `upstream` for and whose response has
    /// not finished (body streamed, tunnel closed), including upstreams a
    /// later [`RouteSink::publish`] removed from the app's route; 0 for an
    /// unknown app or upstream.
    ///
    /// For draining: publish a set without the machine, wait until this is
    /// 0 (bounded), then stop it. A request that raced the publish is either
    /// counted here or re-routed, so once this reads 0 after the publish
    /// returned, no new request reaches the removed upstream.
    fn in_flight_to(&self, app: &str, upstream: SocketAddr) -> usize;
}
