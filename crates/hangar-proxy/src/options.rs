//! How the edge serves beyond its routes: workers, trusted proxies, and the
//! bounds that keep one client (or one app) from holding the edge's file
//! descriptors: connection caps, the deadlines of a client connection, and
//! the size and age of the idle upstream pool.

use std::time::Duration;

use hangar_core::admission::ConnLimits;

use crate::error::ProxyError;
use crate::trust::IpNet;

/// How the edge serves, beyond its routes.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Worker threads (at least 1; default: one per CPU).
    pub workers: usize,
    /// Peers whose `X-Forwarded-For` chain is extended (a load balancer in
    /// front); from anyone else it is replaced by the peer's address.
    pub trusted_proxies: Vec<IpNet>,
    /// Client connections held at once, in total and per client address
    /// (all workers together); past them a connection is closed at once.
    pub limits: ConnLimits,
    /// How long a client connection may make no progress.
    pub timeouts: Timeouts,
    /// How many idle upstream connections are kept, and for how long.
    pub pool: PoolLimits,
    /// The TLS port, when there is one: the plain HTTP port then answers
    /// its ACME HTTP-01 challenges and sends hosts with a certificate there.
    pub https: Option<crate::tls::Https>,
}

/// The edge's default connection caps.
pub const DEFAULT_LIMITS: ConnLimits = ConnLimits {
    total: 16_384,
    per_client: 512,
};

/// How long a client connection may take to send a request's headers,
/// counted from when it is ready for one (so also its idle time between
/// requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest any of the edge's timeouts may be set to: past a day a
/// "timeout" is a leak by another name.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The deadlines of a client connection. Each counts time without
/// progress, never the length of a whole exchange: a large upload or a long
/// stream is fine as long as bytes keep moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time to send a request's headers, counted from when the connection
    /// is ready for one: so also the longest a keep-alive connection may
    /// sit idle between requests (hyper starts this clock as soon as it
    /// waits for the next request, not at its first byte).
    pub header: Duration,
    /// Longest gap between two pieces of a request body, and longest time a
    /// write to the client may stay blocked (a client that stopped reading
    /// its response). A stalled body before the answer is a 408 and the
    /// upstream request is cancelled; after it, the connection is closed.
    pub body_progress: Duration,
    /// Longest time an upgraded connection (WebSocket) may carry no byte in
    /// either direction before both sides are closed.
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: HEADER_TIMEOUT,
            body_progress: Duration::from_secs(30),
            tunnel_idle: Duration::from_secs(300),
        }
    }
}

/// Bounds on the idle keep-alive connections to upstreams. A connection in
/// use is never counted or closed by these; past a bound a connection whose
/// exchange finished is closed instead of pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle connections one worker keeps to one upstream address.
    pub idle_per_upstream: usize,
    /// Idle connections kept in all, all workers and upstreams together.
    pub idle_total: usize,
    /// How long a connection may stay idle before it is closed.
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            idle_per_upstream: 512,
            idle_total: 4096,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            trusted_proxies: Vec::new(),
            limits: DEFAULT_LIMITS,
            timeouts: Timeouts::default(),
            pool: PoolLimits::default(),
            https: None,
        }
    }
}

impl EdgeOptions {
    /// Refuses options that would make a bound meaningless: a zero or
    /// longer-than-[`MAX_TIMEOUT`] deadline.
    pub(crate) fn check(&self) -> Result<(), ProxyError> {
        let t = &self.timeouts;
        for (name, value) in [
            ("timeouts.header", t.header),
            ("timeouts.body_progress", t.body_progress),
            ("timeouts.tunnel_idle", t.tunnel_idle),
            ("pool.idle_timeout", self.pool.idle_timeout),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(ProxyError::Options {
                    name,
                    rule: "between 1 ms and 24 h",
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_zero_or_endless_timeouts_do_not() {
        assert!(EdgeOptions::default().check().is_ok());
        let mut o = EdgeOptions::default();
        o.timeouts.body_progress = Duration::ZERO;
        assert!(matches!(
            o.check(),
            Err(ProxyError::Options {
                name: "timeouts.body_progress",
                ..
            })
        ));
        let mut o = EdgeOptions::default();
        o.pool.idle_timeout = MAX_TIMEOUT + Duration::from_secs(1);
        assert!(o.check().is_err());
    }
}
