//! The proxy's typed errors. Most of them are answers, not failures: each
//! routing error maps to one HTTP status, and its `Display` text (plus a
//! newline) is the text/plain body the client sees.

use http::StatusCode;

/// Everything that can go wrong in the proxy, from routing a request to
/// running the listener.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request carried neither a Host header nor an absolute URI.
    #[error("the request names no host: Hangar serves apps at <app>.{domain}")]
    MissingHost {
        /// The domain Hangar serves, so the client learns what to ask for.
        domain: String,
    },
    /// The Host header is not visible ASCII, so it cannot name an app.
    #[error("the Host header is not a valid host name: Hangar serves apps at <app>.{domain}")]
    InvalidHost {
        /// The domain Hangar serves, so the client learns what to ask for.
        domain: String,
    },
    /// The host is not of the form `<app>.<domain>`.
    #[error("no app is deployed at host '{host}': Hangar serves apps at <app>.{domain}")]
    ForeignHost {
        /// The normalised host the client asked for.
        host: String,
        /// The domain Hangar serves.
        domain: String,
    },
    /// The host has the right shape, but no app of that name exists.
    #[error("no app is deployed at host '{host}'")]
    UnknownApp {
        /// The normalised host the client asked for.
        host: String,
    },
    /// A CONNECT request: Hangar is a reverse proxy and tunnels nothing.
    #[error("CONNECT is not supported: Hangar is a reverse proxy, not a tunnel")]
    ConnectNotSupported,
    /// The app exists but has no upstream right now (deploying, crashed,
    /// scaled to zero).
    #[error("app '{app}' has no running machine")]
    NoMachine {
        /// The app that was asked for.
        app: String,
    },
    /// The app's machines are stopped and none could be woken in time.
    /// The client is told only that; why is in the operator's log (it may
    /// name paths, runtimes and other internals).
    #[error("app '{app}' has no running machine and could not be started; retry shortly")]
    WakeFailed {
        /// The app that was asked for.
        app: String,
        /// Why, for the operator's log.
        reason: String,
    },
    /// The node will not start the app for a request (its machine crashed
    /// and its restart policy gave up, until its owner deploys, starts or
    /// restarts it). The reason names nothing internal.
    #[error("app '{app}' is not running: {reason}")]
    WakeRefused {
        /// The app that was asked for.
        app: String,
        /// Why, for the client.
        reason: String,
    },
    /// The app was woken too often lately; it may be woken again after
    /// `Retry-After`.
    #[error("app '{app}' was started too often lately; retry in {retry_after_secs} s")]
    WakeThrottled {
        /// The app that was asked for.
        app: String,
        /// Seconds until the next wake is allowed.
        retry_after_secs: u64,
    },
    /// Every machine of the app stayed at its hard concurrency limit while
    /// the request waited (or the wait queue was full).
    #[error(
        "app '{app}' is at its concurrency limit ({hard_limit} requests per machine); retry shortly"
    )]
    AtCapacity {
        /// The app that was asked for.
        app: String,
        /// The per-machine hard limit.
        hard_limit: u32,
    },
    /// The upstream could not be reached or failed before sending a response.
    #[error("app '{app}' is not answering: {reason}")]
    Upstream {
        /// The app that was asked for.
        app: String,
        /// A one-line description of the cause, safe to show to the client.
        reason: String,
        /// The underlying error, kept for logs.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client stopped sending its request body (no byte within the
    /// body-progress timeout) before the upstream answered; the upstream
    /// request was cancelled.
    #[error("the request body stopped arriving; the request was abandoned")]
    BodyStalled {
        /// The app the request was for.
        app: String,
    },
    /// An [`crate::EdgeOptions`] value outside its bound.
    #[error("proxy option {name} must be {rule}")]
    Options {
        /// The option, as `field.subfield`.
        name: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// The listening socket failed in a way that stops the proxy.
    #[error("proxy listener failed: {0}")]
    Listener(#[source] std::io::Error),
}

impl ProxyError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost { .. }
            | ProxyError::InvalidHost { .. }
            | ProxyError::ForeignHost { .. }
            | ProxyError::UnknownApp { .. } => StatusCode::NOT_FOUND,
            ProxyError::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoMachine { .. }
            | ProxyError::WakeFailed { .. }
            | ProxyError::WakeRefused { .. }
            | ProxyError::WakeThrottled { .. }
            | ProxyError::AtCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Options { .. } | ProxyError::Listener(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Builds the error for a failed upstream exchange, condensing the
    /// error and its source chain into one line.
    pub(crate) fn upstream(app: &str, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        let mut reason = err.to_string();
        let mut cause = err.source();
        while let Some(next) = cause {
            let text = next.to_string();
            if !reason.contains(&text) {
                reason.push_str(": ");
                reason.push_str(&text);
            }
            cause = next.source();
        }
        ProxyError::Upstream {
            app: app.to_owned(),
            reason,
            source: Box::new(err),
        }
    }
}
