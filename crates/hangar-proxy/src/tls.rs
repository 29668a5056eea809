//! The edge's HTTPS: the TLS port's handshake, and what the plain HTTP
//! port does for hosts that have a certificate (ACME HTTP-01 answers, the
//! 308 to https).
//!
//! The proxy holds no certificate itself: a [`TlsPolicy`] (Hangar's
//! certificate manager) chooses the [`ServerConfig`] of each handshake
//! from its ClientHello, so a name nobody knows is refused before any
//! certificate work, and a new certificate is used by the next handshake
//! while connections already up go on with the one they began with.
//!
//! A handshake is read with rustls' lazy acceptor: the ClientHello first,
//! then the policy's config. Both halves are bounded by the header timeout,
//! so a client that opens a connection and says nothing holds it no longer
//! than a plain HTTP one would.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::forward::ProxyBody;

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where ACME HTTP-01 challenges are asked for (RFC 8555 §8.3).
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// `Strict-Transport-Security` for apps that choose HSTS: a year, as the
/// preload list asks for; subdomains are not the app's to speak for.
const HSTS_VALUE: &str = "max-age=31536000";

/// A boxed future, as the policy's handshake step returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handshake asked for, from its ClientHello.
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    /// SNI, as the client sent it (rustls checked it is a DNS name).
    pub server_name: Option<&'a str>,
    /// The client offered only `acme-tls/1`: an ACME server validating a
    /// TLS-ALPN-01 challenge.
    pub acme_challenge: bool,
}

/// Who holds the certificates: chooses each handshake's config, and says
/// which hosts are served over HTTPS.
pub trait TlsPolicy: Send + Sync + std::fmt::Debug + 'static {
    /// The config to finish this handshake with; `None` refuses it (the
    /// connection is closed). May wait (an order for a known name), but
    /// must answer a name it does not know at once.
    fn config_for<'a>(&'a self, hello: Hello<'a>) -> BoxFuture<'a, Option<Arc<ServerConfig>>>;

    /// The key authorization for an HTTP-01 `token`, while its order is
    /// pending (none by default: a policy that orders nothing).
    fn http01(&self, _token: &str) -> Option<String> {
        None
    }

    /// Whether `host` (normalised: lowercase, no port, no trailing dot)
    /// has a certificate: its plain HTTP requests are redirected to https
    /// (none by default: the API's policies serve no plain HTTP port).
    fn has_certificate(&self, _host: &str) -> bool {
        false
    }

    /// Whether `app`'s HTTPS answers carry HSTS (off by default).
    fn hsts(&self, _app: &str) -> bool {
        false
    }
}

/// What the plain HTTP port knows of the TLS one.
#[derive(Debug, Clone)]
pub struct Https {
    /// The certificates (for challenges and redirects).
    pub policy: Arc<dyn TlsPolicy>,
    /// The port redirects name (443: none).
    pub port: u16,
}

/// Which protocol a finished handshake agreed on.
pub(crate) enum Negotiated<I> {
    /// HTTP/1.1 (ALPN `http/1.1`, or none).
    Http1(TlsStream<I>),
    /// HTTP/2 (ALPN `h2`).
    Http2(TlsStream<I>),
}

/// Runs a handshake on `io` under `policy`: `None` when it was refused,
/// timed out, failed, or was an ACME challenge (answered by the handshake
/// itself, nothing follows).
pub(crate) async fn handshake<I>(
    io: I,
    policy: &dyn TlsPolicy,
    deadline: Duration,
) -> Option<Negotiated<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let started = tokio::time::Instant::now();
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(deadline, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(err)) => {
            tracing::debug!(%err, "TLS: no ClientHello");
            return None;
        }
        Err(_) => return None,
    };
    let hello = start.client_hello();
    let acme_challenge = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.all(|p| p == ACME_TLS_ALPN));
    let server_name = hello.server_name().map(str::to_owned);
    let asked = Hello {
        server_name: server_name.as_deref(),
        acme_challenge,
    };
    let left = deadline.saturating_sub(started.elapsed());
    let config = match tokio::time::timeout(
        left.max(Duration::from_secs(1)),
        policy.config_for(asked),
    )
    .await
    {
        Ok(Some(config)) => config,
        Ok(None) => {
            tracing::debug!(sni = ?server_name, "TLS: no certificate for this name: refused");
            return None;
        }
        Err(_) => {
            tracing::debug!(sni = ?server_name, "TLS: no certificate in time: refused");
            return None;
        }
    };
    let left = deadline.saturating_sub(started.elapsed());
    let stream =
        match tokio::time::timeout(left.max(Duration::from_secs(1)), start.into_stream(config))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(sni = ?server_name, %err, "TLS handshake failed");
                return None;
            }
            Err(_) => return None,
        };
    match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(Negotiated::Http2(stream)),
        Some(p) if p == ACME_TLS_ALPN => None,
        _ => Some(Negotiated::Http1(stream)),
    }
}

/// A TLS handshake on `io` under `policy`, whatever protocol it agreed
/// on (for a server that speaks one: the API offers only HTTP/1.1);
/// `None` when refused, failed or timed out after `deadline`.
pub async fn tls_accept<I>(
    io: I,
    policy: &dyn TlsPolicy,
    deadline: Duration,
) -> Option<TlsStream<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    match handshake(io, policy, deadline).await? {
        Negotiated::Http1(tls) | Negotiated::Http2(tls) => Some(tls),
    }
}

/// The plain HTTP port's answer before routing, if it has one: an ACME
/// HTTP-01 challenge's key authorization (or 404), or a 308 to https for a
/// host with a certificate.
pub(crate) fn plain_answer(
    https: &Https,
    method: &Method,
    host: &str,
    path_and_query: &str,
) -> Option<Response<ProxyBody>> {
    if let Some(token) = path_and_query.strip_prefix(CHALLENGE_PREFIX) {
        return Some(match https.policy.http01(token) {
            Some(key_auth) => text(StatusCode::OK, key_auth),
            None => text(StatusCode::NOT_FOUND, "no such ACME challenge\n".to_owned()),
        });
    }
    let name = crate::table::normalize(host);
    if !https.policy.has_certificate(&name) {
        return None;
    }
    let authority = if https.port == 443 {
        name.into_owned()
    } else {
        format!("{name}:{}", https.port)
    };
    let location = format!("https://{authority}{path_and_query}");
    let Ok(location) = HeaderValue::from_str(&location) else {
        return None;
    };
    let mut resp = text(
        StatusCode::PERMANENT_REDIRECT,
        if method == Method::HEAD {
            String::new()
        } else {
            "this host is served over https\n".to_owned()
        },
    );
    resp.headers_mut().insert(header::LOCATION, location);
    Some(resp)
}

/// Adds HSTS to an HTTPS answer of an app that chose it.
pub(crate) fn add_hsts(policy: &dyn TlsPolicy, app: &str, headers: &mut http::HeaderMap) {
    if policy.hsts(app) {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS_VALUE),
        );
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
