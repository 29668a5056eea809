//! One request's trip through the proxy: resolve the app, pick an upstream,
//! rewrite the request, send it over the shared pooled client, and clean the
//! response on the way back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hangar_core::route::WakeError;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::deadline::ProgressBody;
use crate::error::ProxyError;
use crate::options::Timeouts;
use crate::pool::{Lease, Pool, SendError, UpstreamError};
use crate::table::{ActivityGuard, AppRoute, Pick, RouteTable};

/// The body the proxy answers with: the upstream's, streamed through
/// untouched (counted as activity until it ends), or a small generated one
/// for errors. An `Either` rather than a boxed body so the hot path does not
/// allocate.
pub(crate) type ProxyBody = Either<Tracked, Full<Bytes>>;

/// An upstream response body that holds its app's activity guard until the
/// body is finished or dropped, so streaming responses count as activity,
/// and hands its upstream connection back to the worker's pool once the
/// body has been read to its end.
#[derive(Debug)]
pub(crate) struct Tracked {
    /// The upstream's body.
    inner: Incoming,
    /// Dropped with the body (None for a 101, whose tunnel holds it).
    _guard: Option<ActivityGuard>,
    /// The connection the body arrives on, and the pool it returns to
    /// (None for a 101: the tunnel owns the connection).
    lease: Option<(Arc<Shared>, Lease)>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Only a body read to its end leaves the connection clean for the
        // next request; otherwise it is dropped and closes.
        if http_body::Body::is_end_stream(&self.inner)
            && let Some((shared, lease)) = self.lease.take()
        {
            shared.pool.give_back(lease);
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a request waits for its app to wake before a 503.
const WAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many other machines a request is tried on after a connect to the
/// one picked failed (the request certainly unsent), before the 502.
const MAX_FAILOVERS: usize = 2;

/// How often a request picks again because a publish replaced the route it
/// had claimed a machine on; past this (publishes in a tight loop) it keeps
/// its last claim.
const REPICK_ATTEMPTS: usize = 4;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones): they describe
/// one connection, so they are never forwarded to the next.
fn hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// What every request handler needs; one per proxy worker, shared by `Arc`.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Where requests go.
    pub(crate) routes: Arc<RouteTable>,
    /// The worker's upstream connections, reused across its clients.
    pub(crate) pool: Pool,
    /// Peers whose `X-Forwarded-For` chain is extended.
    pub(crate) trusted: Arc<[crate::IpNet]>,
    /// The client connections' progress deadlines.
    pub(crate) timeouts: Timeouts,
    /// On the plain HTTP port: the TLS port, if any (challenges, redirects).
    pub(crate) https: Option<crate::tls::Https>,
    /// On the TLS port: who chose its certificates (HSTS).
    pub(crate) tls: Option<Arc<dyn crate::tls::TlsPolicy>>,
}

/// Per client connection state: cloned into each request's future as one
/// `Arc`, i.e. one atomic increment per request.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    /// The proxy-wide state.
    pub(crate) shared: Arc<Shared>,
    /// The client's IP rendered once per connection for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// Whether the peer is a trusted proxy (its chain is kept).
    pub(crate) trusted: bool,
}

/// The service function: never fails at the hyper level; every error becomes
/// a response.
pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if let Some(https) = &ctx.shared.https
        && let Some(answer) = plain_answer(https, &req)
    {
        return Ok(answer);
    }
    Ok(match forward(&ctx, req).await {
        Ok(resp) => resp.map(Either::Left),
        Err(err) => {
            match &err {
                ProxyError::Upstream { source, .. } => {
                    tracing::warn!(error = %err, cause = ?source, "upstream failed");
                }
                _ => tracing::debug!(error = %err, "request not routed"),
            }
            error_response(&err)
        }
    })
}

/// The plain HTTP port's own answer to a request, if it has one (an ACME
/// challenge, a redirect to https).
fn plain_answer(https: &crate::tls::Https, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    let host = match req.headers().get(header::HOST) {
        Some(host) => host.to_str().ok()?,
        None => req.uri().authority()?.as_str(),
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    crate::tls::plain_answer(https, req.method(), host, path)
}

/// The text/plain answer for an error the proxy generates itself.
pub(crate) fn error_response(err: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!("{err}\n")))));
    *resp.status_mut() = err.status();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match err {
        ProxyError::NoMachine { .. } | ProxyError::WakeFailed { .. } => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        ProxyError::WakeThrottled {
            retry_after_secs, ..
        } => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        ProxyError::AtCapacity { .. } => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // The rest of the body may still come: the connection cannot be
        // read for a next request, so it ends with this answer.
        ProxyError::BodyStalled { .. } => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    resp
}

/// Routes one request and relays it; `Err` is an answer the proxy generates
/// itself (404/405/502/503), `Ok` the upstream's response, body unread.
async fn forward(ctx: &ConnCtx, req: Request<Incoming>) -> Result<Response<Tracked>, ProxyError> {
    let shared = &ctx.shared;
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectNotSupported);
    }
    // A protocol upgrade (WebSocket): keep the client side's upgrade handle
    // so the two connections can be joined once the upstream agrees.
    let mut req = req;
    let upgrade = upgrade_protocol(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // The host as the client sent it: Host header first, else the authority
    // of an absolute-form request URI.
    let original_host: HeaderValue = match parts.headers.get(header::HOST) {
        Some(host) => host.clone(),
        None => match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str())
                .map_err(|_| shared.routes.invalid_host())?,
            None => return Err(shared.routes.missing_host()),
        },
    };
    let host_str = original_host
        .to_str()
        .map_err(|_| shared.routes.invalid_host())?;

    let started = std::time::Instant::now();
    let mut route = shared.routes.resolve(host_str)?;
    if route.upstreams.is_empty() {
        // Nothing runs: wake the app (once for all waiting requests), bounded.
        let woken = tokio::time::timeout(WAKE_TIMEOUT, shared.routes.wake(&route.name)).await;
        match woken {
            Ok(None) | Ok(Some(Ok(()))) => route = shared.routes.resolve(host_str)?,
            Ok(Some(Err(WakeError::Failed(reason)))) => {
                tracing::warn!(app = %route.name, "wake failed: {reason}");
                route.activity.record(503, started.elapsed());
                return Err(ProxyError::WakeFailed {
                    app: route.name.to_string(),
                    reason,
                });
            }
            Ok(Some(Err(WakeError::Refused(reason)))) => {
                route.activity.record(503, started.elapsed());
                return Err(ProxyError::WakeRefused {
                    app: route.name.to_string(),
                    reason,
                });
            }
            Ok(Some(Err(WakeError::Throttled { retry_after }))) => {
                route.activity.record(503, started.elapsed());
                return Err(ProxyError::WakeThrottled {
                    app: route.name.to_string(),
                    retry_after_secs: retry_after.as_secs().max(1),
                });
            }
            Err(_) => {
                tracing::warn!(app = %route.name, "wake failed: no machine up within {} s", WAKE_TIMEOUT.as_secs());
                route.activity.record(503, started.elapsed());
                return Err(ProxyError::WakeFailed {
                    app: route.name.to_string(),
                    reason: format!("no machine was up within {} s", WAKE_TIMEOUT.as_secs()),
                });
            }
        }
    }
    let (route, pick) = claim(shared, host_str, route, &[])?;
    let (mut route, mut index, mut guard) = match pick {
        Pick::Chosen(index, guard) => (route, index, guard),
        Pick::NoMachine => {
            return Err(ProxyError::NoMachine {
                app: route.name.to_string(),
            });
        }
        Pick::Full => wait_for_slot(shared, host_str, route, started, &[]).await?,
    };
    if route.over_soft_limit(index) {
        shared.routes.grow(&route);
    }

    // Upstreams get the origin form ("/path?query"), as from any client; an
    // absolute-form request URI is cut down to it.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path_and_query);
    }
    // Upstream connections are always HTTP/1.1 so they can be kept alive,
    // whatever version the client spoke.
    parts.version = Version::HTTP_11;

    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    // Who the client is, the edge says: what a client claims about itself
    // is dropped, unless it comes through a trusted proxy.
    for name in CLIENT_IP_HEADERS {
        headers.remove(name);
    }
    if ctx.trusted {
        append_forwarded_for(headers, &ctx.client_ip);
    } else {
        headers.insert(&X_FORWARDED_FOR, ctx.client_ip.clone());
    }
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if shared.tls.is_some() {
            "https"
        } else {
            "http"
        }),
    );
    headers.insert(&X_FORWARDED_HOST, original_host.clone());
    if !headers.contains_key(header::HOST) {
        // Absolute-form request without Host: name the app's host, not the
        // upstream's address the client would otherwise fill in.
        headers.insert(header::HOST, original_host.clone());
    }

    let body = ProgressBody::new(body, shared.timeouts.body_progress);
    let mut req = Request::from_parts(parts, body);
    // Upstreams a connect failed to for this request; allocates only then.
    let mut failed: Vec<SocketAddr> = Vec::new();
    let (mut resp, lease) = loop {
        let addr = route.upstreams[index].addr;
        let error = match shared.pool.send(addr, req).await {
            Ok(exchange) => break exchange,
            Err(SendError {
                error,
                unsent: Some(unsent),
            }) if failed.len() < MAX_FAILOVERS => {
                req = unsent;
                error
            }
            Err(SendError {
                error: UpstreamError::ClientStalled(cause),
                ..
            }) => {
                tracing::debug!(app = %route.name, %cause, "request body stalled: abandoned");
                route.activity.record(408, started.elapsed());
                return Err(ProxyError::BodyStalled {
                    app: route.name.to_string(),
                });
            }
            Err(SendError { error, .. }) => {
                route.activity.record(502, started.elapsed());
                return Err(ProxyError::upstream(&route.name, error));
            }
        };
        // The request never left: try it on another machine of the app's
        // current route, releasing this one's slot first.
        failed.push(addr);
        drop(guard);
        let give_up = |route: &AppRoute, error: UpstreamError| {
            route.activity.record(502, started.elapsed());
            ProxyError::upstream(&route.name, error)
        };
        let Ok(current) = shared.routes.resolve(host_str) else {
            return Err(give_up(&route, error));
        };
        let (current, pick) = match claim(shared, host_str, current, &failed) {
            Ok(claimed) => claimed,
            Err(_) => return Err(give_up(&route, error)),
        };
        (route, index, guard) = match pick {
            Pick::Chosen(index, guard) => (current, index, guard),
            Pick::NoMachine => return Err(give_up(&current, error)),
            Pick::Full => match wait_for_slot(shared, host_str, current, started, &failed).await {
                Ok(claimed) => claimed,
                Err(ProxyError::NoMachine { .. }) => return Err(give_up(&route, error)),
                Err(other) => return Err(other),
            },
        };
        let to = route.upstreams[index].addr;
        route.activity.failovers.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            app = %route.name,
            failed = %addr,
            %to,
            error = %error,
            "connect failed, request not sent: trying another machine"
        );
    };
    route
        .activity
        .record(resp.status().as_u16(), started.elapsed());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        // Join the client and the upstream connections byte for byte; the
        // tunnel counts as the app's activity for as long as it is open.
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let app = route.name.clone();
        let idle = shared.timeouts.tunnel_idle;
        tokio::spawn(async move {
            let _guard = guard;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (c, u) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(err) = crate::tunnel::join(c, u, idle).await {
                        tracing::debug!(%app, %err, "upgraded connection ended");
                    }
                }
                Err(err) => tracing::debug!(%app, %err, "upgrade failed"),
            }
        });
        // The 101 keeps its Upgrade and Connection headers: they are the answer.
        return Ok(resp.map(|inner| Tracked {
            inner,
            _guard: None,
            lease: None,
        }));
    }
    strip_hop_by_hop(resp.headers_mut());
    if let Some(policy) = &shared.tls {
        crate::tls::add_hsts(&**policy, &route.name, resp.headers_mut());
    }
    let lease = Some((Arc::clone(&ctx.shared), lease));
    Ok(resp.map(|inner| Tracked {
        inner,
        _guard: Some(guard),
        lease,
    }))
}

/// How long a request waits for a machine under its hard limit before 503.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// Claims a machine of `route` (not one in `failed`). If a publish has
/// replaced `route` by the time the slot is claimed, the claim is released
/// and made again on the current route, so a request never goes to a
/// machine the node may already be draining (see
/// [`AppRoute::is_replaced`]). Returns the route the pick was made on.
fn claim(
    shared: &Shared,
    host: &str,
    route: Arc<AppRoute>,
    failed: &[SocketAddr],
) -> Result<(Arc<AppRoute>, Pick), ProxyError> {
    let mut route = route;
    for _ in 1..REPICK_ATTEMPTS {
        let pick = route.try_pick_excluding(failed);
        if !(matches!(pick, Pick::Chosen(..)) && route.is_replaced()) {
            return Ok((route, pick));
        }
        drop(pick);
        route = shared.routes.resolve(host)?;
    }
    let pick = route.try_pick_excluding(failed);
    Ok((route, pick))
}

/// Waits, in the app's bounded queue, until a machine (not one in
/// `failed`) has room under its hard limit; the route is re-read on every
/// try so machines published meanwhile count. Full queue or
/// [`QUEUE_TIMEOUT`] → 503 `AtCapacity`.
async fn wait_for_slot(
    shared: &Shared,
    host: &str,
    route: Arc<AppRoute>,
    started: std::time::Instant,
    failed: &[SocketAddr],
) -> Result<(Arc<AppRoute>, usize, ActivityGuard), ProxyError> {
    let activity = Arc::clone(&route.activity);
    let at_capacity = |route: &AppRoute| {
        route.activity.rejected.fetch_add(1, Ordering::Relaxed);
        route.activity.record(503, started.elapsed());
        ProxyError::AtCapacity {
            app: route.name.to_string(),
            hard_limit: route.limits.hard.unwrap_or(0),
        }
    };
    // Counted before the first look (SeqCst, see `ActivityGuard::drop`).
    if activity.queued.fetch_add(1, Ordering::SeqCst) >= route.queue_capacity() {
        activity.queued.fetch_sub(1, Ordering::SeqCst);
        return Err(at_capacity(&route));
    }
    struct Dequeue<'a>(&'a AtomicUsize);
    impl Drop for Dequeue<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _dequeue = Dequeue(&activity.queued);
    let deadline = tokio::time::Instant::now() + QUEUE_TIMEOUT;
    drop(route);
    loop {
        let notified = activity.released.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before looking, so a slot freed in between wakes us.
        notified.as_mut().enable();
        let route = shared.routes.resolve(host)?;
        let (route, pick) = claim(shared, host, route, failed)?;
        match pick {
            Pick::Chosen(index, guard) => return Ok((route, index, guard)),
            Pick::NoMachine => {
                return Err(ProxyError::NoMachine {
                    app: route.name.to_string(),
                });
            }
            Pick::Full => {}
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(at_capacity(&route));
        }
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` plus an
/// `Upgrade` header), if any.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // Rare path (HTTP/1.1 clients seldom send Connection): collect the
        // named headers before removing anything.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in hop_by_hop() {
        headers.remove(name);
    }
}

/// Headers other proxies use to name the client: only the edge names it,
/// in `X-Forwarded-For`.
const CLIENT_IP_HEADERS: [&str; 7] = [
    "x-real-ip",
    "forwarded",
    "true-client-ip",
    "cf-connecting-ip",
    "x-client-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
];

/// Sets `X-Forwarded-For` to the client IP, appended with ", " to whatever
/// chain a trusted proxy already sent (several header lines are folded into
/// one).
fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(&X_FORWARDED_FOR, client_ip.clone());
        return;
    }
    let mut chain = Vec::with_capacity(64);
    for value in existing {
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(value.as_bytes());
    }
    chain.extend_from_slice(b", ");
    chain.extend_from_slice(client_ip.as_bytes());
    // The parts are valid header values and ", " is too, so this holds; on
    // the impossible failure the client's chain is dropped, not the request.
    let value =
        HeaderValue::from_maybe_shared(Bytes::from(chain)).unwrap_or_else(|_| client_ip.clone());
    headers.insert(&X_FORWARDED_FOR, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret , close"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::TRAILER, HeaderValue::from_static("x-t"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-kept"), Some(&HeaderValue::from_static("yes")));
    }

    #[test]
    fn forwarded_for_is_set_or_appended() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &ip);
        assert_eq!(h.get("x-forwarded-for"), Some(&ip));

        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        append_forwarded_for(&mut h, &ip);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, vec!["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"]);
    }

    #[test]
    fn error_responses_are_plain_text() {
        let resp = error_response(&ProxyError::NoMachine {
            app: "hello".into(),
        });
        assert_eq!(resp.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}
