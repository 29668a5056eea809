//! The admin listener: `GET /metrics` (Prometheus text format) for the
//! bearer of the metrics token, and nothing else.
//!
//! Like the API and the edge it is a listener anyone who can reach the
//! port may open connections to, so it has the same defences: a deadline
//! for each request's headers (which also closes connections idle between
//! requests), and caps on connections in total and per client address.
//! It never reads a request body.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hangar_core::admission::{Admission, ConnLimits};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{ProxyError, RouteTable, accept_admitted};

/// How long a client of the admin port has to send a request's headers.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections the admin port holds at once, and from one address.
pub const ADMIN_LIMITS: ConnLimits = ConnLimits {
    total: 256,
    per_client: 32,
};

/// The admin listener's deadlines and caps.
#[derive(Debug, Clone, Copy)]
pub struct AdminOptions {
    /// See [`ADMIN_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`ADMIN_LIMITS`].
    pub limits: ConnLimits,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            header_timeout: ADMIN_HEADER_TIMEOUT,
            limits: ADMIN_LIMITS,
        }
    }
}

/// Serves `GET /metrics` on `listener` with the default deadlines and caps
/// until `shutdown` resolves. With a `token_hash`, only
/// `Authorization: Bearer <token>` reads the metrics (compared as hashes).
pub async fn serve_metrics(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    token_hash: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    serve_metrics_with(
        listener,
        routes,
        token_hash,
        AdminOptions::default(),
        shutdown,
    )
    .await
}

/// [`serve_metrics`] with the given deadlines and caps.
pub async fn serve_metrics_with(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    token_hash: Option<String>,
    options: AdminOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let token_hash: Arc<Option<String>> = Arc::new(token_hash);
    let admission = Admission::new(options.limits);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer, admitted) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            a = accept_admitted(&listener, &admission, "admin") => a,
        };
        let routes = Arc::clone(&routes);
        let token_hash = Arc::clone(&token_hash);
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let answer = answer(&req, &routes, &token_hash);
            async move { Ok::<_, std::convert::Infallible>(answer) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _admitted = admitted;
            if let Err(err) = conn.await {
                tracing::debug!(%peer, %err, "admin connection ended");
            }
        });
    }
}

/// The answer to one admin request.
fn answer<B>(
    req: &http::Request<B>,
    routes: &RouteTable,
    token_hash: &Option<String>,
) -> Response<Full<Bytes>> {
    let allowed = match token_hash {
        None => true,
        Some(want) => req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| hangar_core::id::hash_token(t.trim()) == *want),
    };
    let resp = if !allowed {
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", "Bearer")
            .body(Full::new(Bytes::from_static(
                b"metrics need the token in <data dir>/metrics-token\n",
            )))
    } else if req.uri().path() == "/metrics" {
        Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(routes.render_metrics())))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
    };
    resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
