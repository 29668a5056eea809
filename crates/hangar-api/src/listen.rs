//! The API's listener: hyper directly, so every connection has a deadline
//! for its request headers (and so for idling between requests), every
//! request body one for its progress, and the listener has caps on
//! connections in total and per client address. `axum::serve` has none of
//! these: 2,000 silent connections held its file descriptors for ever.
//!
//! A body that stops arriving ([`hangar_proxy::ProgressBody`]: no byte for
//! the body-progress timeout while a handler waits for one) fails the
//! handler's read; whatever the handler then answers, the client gets a
//! 408 naming the timeout and the connection is closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hangar_core::admission::{Admission, ConnLimits};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::either::Either;

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

/// A request body that records, in a flag the connection's service reads,
/// that it stopped arriving.
struct Watched {
    body: hangar_proxy::ProgressBody,
    stalled: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = hangar_proxy::RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(hangar_proxy::RequestBodyError::Stalled(_)))) = &polled {
            self.stalled.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The answer to a request whose body stopped arriving.
fn stalled_answer(progress: Duration) -> axum::response::Response {
    let mut answer = axum::response::IntoResponse::into_response(crate::error::ApiError::new(
        http::StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body stopped arriving: no byte for {} s",
            progress.as_secs()
        ),
    ));
    answer.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    answer
}

/// Serves `router` on `listener` until `shutdown` resolves; a request body
/// with no byte for `body_progress` is answered 408.
///
/// With `tls`, each connection's TLS handshake comes first (bounded by the
/// header timeout), with the config `tls` chooses.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    body_progress: Duration,
    tls: Option<Arc<dyn hangar_proxy::TlsPolicy>>,
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
            (stream, peer, admitted) =
                hangar_proxy::accept_admitted(&listener, &admission, "API") => {
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let mut router = router.clone();
                    let stalled = Arc::new(AtomicBool::new(false));
                    let req = req.map(|body| {
                        axum::body::Body::new(Watched {
                            body: hangar_proxy::ProgressBody::new(body, body_progress),
                            stalled: stalled.clone(),
                        })
                    });
                    async move {
                        let answer = tower_service::Service::call(&mut router, req).await;
                        if stalled.load(Ordering::Relaxed) {
                            return Ok(stalled_answer(body_progress));
                        }
                        answer
                    }
                });
                let http = http.clone();
                let tls = tls.clone();
                let mut stop = stop_rx.clone();
                connections.spawn(async move {
                    let _admitted = admitted;
                    let io = match &tls {
                        None => Either::Left(stream),
                        Some(policy) => {
                            match hangar_proxy::tls_accept(stream, &**policy, HEADER_TIMEOUT).await {
                                Some(tls) => Either::Right(tls),
                                None => return,
                            }
                        }
                    };
                    let conn = http.serve_connection(TokioIo::new(io), service).with_upgrades();
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
