//! The TLS port: the policy's certificate by SNI, HTTP/2 and HTTP/1.1 by
//! ALPN, `X-Forwarded-Proto: https`, HSTS for apps that chose it, and a
//! name the policy refuses closed before any request.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use hangar_core::route::RouteSink;
use hangar_proxy::{BoxFuture, EdgeOptions, Hello, RouteTable, TlsPolicy};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpListener;

use support::*;

/// Serves one certificate, for `hello.localhost` only; HSTS for `hello`.
#[derive(Debug)]
struct OneName(Arc<ServerConfig>);

impl TlsPolicy for OneName {
    fn config_for<'a>(&'a self, hello: Hello<'a>) -> BoxFuture<'a, Option<Arc<ServerConfig>>> {
        let cfg = (hello.server_name == Some("hello.localhost")).then(|| Arc::clone(&self.0));
        Box::pin(async move { cfg })
    }
    fn has_certificate(&self, host: &str) -> bool {
        host == "hello.localhost"
    }
    fn hsts(&self, app: &str) -> bool {
        app == "hello"
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A self-signed certificate for hello.localhost: (its DER, the policy).
fn policy() -> (CertificateDer<'static>, Arc<OneName>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["hello.localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (der, Arc::new(OneName(Arc::new(cfg))))
}

async fn handshake(
    port: u16,
    name: &str,
    trusted: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
}

/// A TLS edge serving `hello` (at `upstream`) with [`policy`]: its
/// certificate, its port, the sender that stops it, and its task.
async fn serve_hello(
    upstream: std::net::SocketAddr,
) -> (
    CertificateDer<'static>,
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), hangar_proxy::ProxyError>>,
) {
    let routes = Arc::new(RouteTable::new("localhost"));
    routes.set_route("hello", vec![upstream]);
    let (cert, policy) = policy();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(hangar_proxy::serve_tls(
        listener,
        routes,
        EdgeOptions::default(),
        policy,
        async {
            let _ = stop_rx.await;
        },
    ));
    (cert, port, stop_tx, served)
}

#[tokio::test]
async fn the_tls_port_speaks_http2_and_http1_and_says_https_upstream() {
    let up = start_upstream("a").await;
    let (cert, port, stop_tx, served) = serve_hello(up.addr).await;

    // HTTP/2: the request reaches the upstream as HTTP/1.1, marked https.
    let tls = handshake(port, "hello.localhost", &cert, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::get(format!("https://hello.localhost:{port}/x"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let answer = Answer::read(send.send_request(req).await.unwrap()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body, "hello from a");
        assert_eq!(answer.header("x-echo-xfp"), Some("https"));
        assert_eq!(answer.header("x-echo-version"), Some("HTTP/1.1"));
        assert_eq!(answer.header("x-echo-uri"), Some("/x"));
        assert_eq!(
            answer.header("strict-transport-security"),
            Some("max-age=31536000")
        );
    }

    // HTTP/1.1 when the client offers only that.
    let tls = handshake(port, "hello.localhost", &cert, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, format!("hello.localhost:{port}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("x-echo-xfp").map(|v| v.as_bytes()),
        Some(&b"https"[..])
    );
    let _ = resp.into_body().collect().await;

    // A name the policy refuses: the handshake fails, nothing is served.
    let started = std::time::Instant::now();
    assert!(
        handshake(port, "other.localhost", &cert, &[b"h2"])
            .await
            .is_err()
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_plain_port_answers_challenges_and_redirects_hosts_with_certificates() {
    let up = start_upstream("a").await;
    let (_, policy) = policy();
    let proxy = start_proxy_with(EdgeOptions {
        https: Some(hangar_proxy::Https { policy, port: 8443 }),
        ..EdgeOptions::default()
    })
    .await;
    proxy.routes.set_route("hello", vec![up.addr]);
    proxy.routes.set_route("other", vec![up.addr]);
    let c = client();
    let answer = proxy.get(&c, "hello.localhost", "/a?b=1").await;
    assert_eq!(answer.status, 308);
    assert_eq!(
        answer.header("location"),
        Some("https://hello.localhost:8443/a?b=1")
    );
    let answer = proxy
        .get(&c, "hello.localhost", "/.well-known/acme-challenge/tok")
        .await;
    assert_eq!(answer.status, 404, "no such challenge; never redirected");
    let answer = proxy.get(&c, &proxy.host("other"), "/").await;
    assert_eq!(answer.status, 200, "no certificate: served over HTTP");
    proxy.shutdown().await;
}

#[tokio::test]
async fn websockets_are_tunnelled_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, _ended) = start_ws_upstream().await;
    let (cert, port, stop_tx, served) = serve_hello(up).await;
    let mut tls = handshake(port, "hello.localhost", &cert, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nHost: hello.localhost:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tls.read(&mut byte).await.unwrap(),
            1,
            "the head ended early"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    for msg in [&b"ping over tls"[..], b"and again"] {
        tls.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut got))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(got, msg);
    }
    drop(tls);
    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
}
