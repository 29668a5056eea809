//! The API's listener: hyper directly, so every connection has a deadline
//! for its request headers (and so for idling between requests) and the
//! listener has caps on connections in total and per client address.
//! `axum::serve` has neither: 2,000 silent connections held its file
//! descriptors for ever.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hangar_core::admission::{Admission, ConnLimits};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long a client has to send a request's headers, counted from when
/// the connection is ready for one: a connection idle that long between
/// requests is closed too.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections the API holds at once, and from one address.
pub const LIMITS: ConnLimits = ConnLimits {
    total: 4096,
    per_client: 256,
};
/// How long in-flight requests may finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not about one connection (out of
/// file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admission = Admission::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("API accept failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let admitted = match admission.admit(peer.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        tracing::debug!(%peer, ?why, "API connection refused: over its cap");
                        continue; // dropping the stream closes it
                    }
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let mut router = router.clone();
                    tower_service::Service::call(&mut router, req)
                });
                let conn = http
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let mut stop = stop_rx.clone();
                connections.spawn(async move {
                    let _admitted = admitted;
                    let mut conn = std::pin::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, "API connection ended: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.shutdown().await;
    }
    Ok(())
}
