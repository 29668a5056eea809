//! The harness of the proxy's black-box tests: a real proxy on
//! 127.0.0.1:0 in front of tiny hyper upstreams that echo what they
//! received, and a client.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hangar_proxy::{EdgeOptions, ProxyError, RouteTable, serve_with};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub type TestBody = BoxBody<Bytes, Infallible>;
pub type TestClient = Client<HttpConnector, TestBody>;

/// A test upstream: answers every request, echoing what it saw in
/// `x-echo-*` response headers, and counts the TCP connections it accepted.
pub struct Upstream {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now (accepted and not yet ended).
    pub open: Arc<AtomicUsize>,
}

pub async fn start_upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (count, live) = (Arc::clone(&accepted), Arc::clone(&open));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            live.fetch_add(1, Ordering::SeqCst);
            let live = Arc::clone(&live);
            tokio::spawn(async move {
                let service = service_fn(move |req| echo(name, req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                live.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        accepted,
        open,
    }
}

pub async fn echo(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, hyper::Error>>, Infallible> {
    let mut resp = Response::builder()
        .header("x-upstream", name)
        .header("x-echo-uri", req.uri().to_string())
        .header("x-echo-version", format!("{:?}", req.version()));
    for (echoed, received) in [
        ("x-echo-host", "host"),
        ("x-echo-xff", "x-forwarded-for"),
        ("x-echo-real-ip", "x-real-ip"),
        ("x-echo-forwarded", "forwarded"),
        ("x-echo-xfp", "x-forwarded-proto"),
        ("x-echo-xfh", "x-forwarded-host"),
        ("x-echo-secret", "x-secret"),
        ("x-echo-te", "te"),
        ("x-echo-upgrade", "upgrade"),
    ] {
        for value in req.headers().get_all(received) {
            resp = resp.header(echoed, value.clone());
        }
    }
    match req.uri().path() {
        "/slow" => tokio::time::sleep(Duration::from_millis(300)).await,
        // Long enough for a test to republish routes while it is in flight.
        "/slower" => tokio::time::sleep(Duration::from_millis(1500)).await,
        "/hop" => {
            // Hop-by-hop headers the proxy must not pass back to the client.
            resp = resp
                .header("connection", "x-hop")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5");
        }
        _ => {}
    }
    let body = if req.method() == Method::POST {
        // Stream the request body straight back.
        req.into_body().boxed()
    } else {
        Full::new(Bytes::from(format!("hello from {name}")))
            .map_err(|never| match never {})
            .boxed()
    };
    Ok(resp.body(body).expect("response"))
}

/// A running proxy with its table, and the switch that shuts it down.
pub struct Proxy {
    pub addr: SocketAddr,
    pub routes: Arc<RouteTable>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), ProxyError>>,
}

pub async fn start_proxy() -> Proxy {
    start_proxy_with(EdgeOptions::default()).await
}

pub async fn start_proxy_with(options: EdgeOptions) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let routes = Arc::new(RouteTable::new("localhost"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(
        listener,
        Arc::clone(&routes),
        options,
        async move {
            let _ = stopped.await;
        },
    ));
    Proxy {
        addr,
        routes,
        stop: Some(stop),
        task,
    }
}

impl Proxy {
    /// Requests `path` from the proxy with the given Host header.
    pub async fn request(
        &self,
        client: &TestClient,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Response<Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .header("host", host);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(body).expect("request");
        tokio::time::timeout(TIMEOUT, client.request(req))
            .await
            .expect("proxy answered in time")
            .expect("proxy answered")
    }

    pub async fn get(&self, client: &TestClient, host: &str, path: &str) -> Answer {
        let resp = self
            .request(client, Method::GET, host, path, &[], empty())
            .await;
        Answer::read(resp).await
    }

    pub fn host(&self, app: &str) -> String {
        format!("{app}.localhost:{}", self.addr.port())
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("proxy stopped in time")
            .expect("proxy task")
            .expect("proxy returned Ok");
    }
}

/// A fully read response.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub async fn read(resp: Response<Incoming>) -> Answer {
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(TIMEOUT, body.collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
}

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn full(text: &'static str) -> TestBody {
    Full::new(Bytes::from_static(text.as_bytes())).boxed()
}

pub fn empty() -> TestBody {
    Full::new(Bytes::new()).boxed()
}

/// A request body fed chunk by chunk from the test.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Polls `cond` every 10 ms until it holds; fails after [`TIMEOUT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the metrics line for `series` (name and labels), if any.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// An address nothing listens on: bound, then dropped.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// Whether a socket of this process is still held open for the TCP
/// connection from `local` to `remote`: its entry in /proc/net/tcp has an
/// inode (a socket no descriptor holds any more, in FIN_WAIT or TIME_WAIT,
/// shows inode 0). Only 127.0.0.1 addresses.
pub fn socket_held(local: SocketAddr, remote: SocketAddr) -> bool {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("IPv4 only: {a}"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() > 9 && cols[1] == local && cols[2] == remote && cols[9] != "0"
    })
}

/// Reads from `stream` until the end of a response head; returns it
/// lowercased, or what came before the connection closed.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// Waits until the peer closes `stream` (EOF or reset), discarding what
/// it sends; panics past `within`.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, closed)
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {within:?}"));
}

/// Fires `n` concurrent GETs of `path` at `app` and returns their answers.
pub async fn burst(proxy: &Arc<Proxy>, app: &str, path: &'static str, n: usize) -> Vec<Answer> {
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (proxy, client, host) = (Arc::clone(proxy), client.clone(), proxy.host(app));
        tasks.spawn(async move { proxy.get(&client, &host, path).await });
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.expect("task"));
    }
    answers
}

/// Reads a request head (up to the blank line) from an upstream socket;
/// empty if the connection ended first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Vec::new(),
        }
    }
    head
}

/// An upstream accepting any upgrade and echoing bytes; reports on the
/// channel each tunnel's end (the proxy closed its side).
pub async fn start_ws_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                if read_request_head(&mut stream).await.is_empty() {
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
                    .await;
                let mut buf = [0u8; 256];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tx.send(peer);
            });
        }
    });
    (addr, rx)
}
