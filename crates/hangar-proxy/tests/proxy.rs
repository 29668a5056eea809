//! Black-box tests of the edge proxy: a real proxy on 127.0.0.1:0 in front
//! of tiny hyper upstreams that echo what they received.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hangar_core::route::{Activity, RouteSink};
use hangar_proxy::{EdgeOptions, RouteTable};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use support::*;

#[tokio::test]
async fn forwards_to_the_app_with_forwarded_headers() {
    let up = start_upstream("a").await;
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![up.addr]);
    let host = proxy.host("hello");

    let answer = proxy.get(&client(), &host, "/some/path?x=1&y=%20z").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body, "hello from a");
    assert_eq!(answer.header("x-echo-uri"), Some("/some/path?x=1&y=%20z"));
    assert_eq!(answer.header("x-echo-host"), Some(host.as_str()));
    assert_eq!(answer.header("x-echo-xfh"), Some(host.as_str()));
    assert_eq!(answer.header("x-echo-xfp"), Some("http"));
    assert_eq!(answer.header("x-echo-xff"), Some("127.0.0.1"));
    assert_eq!(answer.header("x-echo-version"), Some("HTTP/1.1"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn host_is_matched_case_insensitively_with_trailing_dot() {
    let up = start_upstream("a").await;
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![up.addr]);

    let host = format!("HeLLo.LOCALHOST.:{}", proxy.addr.port());
    let answer = proxy.get(&client(), &host, "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // The Host header reaches the app exactly as the client sent it.
    assert_eq!(answer.header("x-echo-host"), Some(host.as_str()));
    proxy.shutdown().await;
}

/// Routes `hello` to `upstream` and sends it a request with `headers`.
async fn claim_through(proxy: &Proxy, upstream: SocketAddr, headers: &[(&str, &str)]) -> Answer {
    proxy.routes.set_route("hello", vec![upstream]);
    let host = proxy.host("hello");
    let resp = proxy
        .request(&client(), Method::GET, &host, "/hop", headers, empty())
        .await;
    Answer::read(resp).await
}

#[tokio::test]
async fn forwarded_for_is_the_edges_and_hop_by_hop_headers_are_dropped() {
    let up = start_upstream("a").await;
    let claims = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-real-ip", "203.0.113.8"),
        ("forwarded", "for=203.0.113.9"),
        ("connection", "x-secret"),
        ("x-secret", "do not forward"),
        ("te", "trailers"),
        ("upgrade", "websocket"),
    ];
    // A client's own claims about who it is are dropped: the app sees the
    // address the edge saw.
    let proxy = start_proxy().await;
    let answer = claim_through(&proxy, up.addr, &claims).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.header("x-echo-xff"), Some("127.0.0.1"));
    assert_eq!(answer.header("x-echo-real-ip"), None);
    assert_eq!(answer.header("x-echo-forwarded"), None);
    assert_eq!(answer.header("x-echo-secret"), None);
    assert_eq!(answer.header("x-echo-te"), None);
    assert_eq!(answer.header("x-echo-upgrade"), None);
    // The upstream's hop-by-hop response headers stop at the proxy.
    assert_eq!(answer.header("x-hop"), None);
    assert_eq!(answer.header("keep-alive"), None);
    proxy.shutdown().await;

    // Through a trusted proxy (a load balancer on 127.0.0.0/8), its chain
    // is extended.
    let proxy = start_proxy_with(EdgeOptions {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..EdgeOptions::default()
    })
    .await;
    let answer = claim_through(&proxy, up.addr, &claims).await;
    assert_eq!(answer.header("x-echo-xff"), Some("203.0.113.7, 127.0.0.1"));
    assert_eq!(answer.header("x-echo-real-ip"), None);
    proxy.shutdown().await;
}

#[tokio::test]
async fn unknown_host_is_404_naming_the_host() {
    let proxy = start_proxy().await;
    let client = client();

    let answer = proxy.get(&client, &proxy.host("nope"), "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.body, "no app is deployed at host 'nope.localhost'\n");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let answer = proxy.get(&client, "example.com", "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer.body,
        "no app is deployed at host 'example.com': Hangar serves apps at <app>.localhost\n"
    );

    let answer = proxy.get(&client, "a.b.localhost", "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.body.contains("'a.b.localhost'"), "{}", answer.body);
    proxy.shutdown().await;
}

#[tokio::test]
async fn app_without_machines_is_503_with_retry_after() {
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![]);

    let answer = proxy.get(&client(), &proxy.host("hello"), "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert_eq!(answer.body, "app 'hello' has no running machine\n");
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn dead_upstream_is_502() {
    // Bind then drop: nothing listens on this address any more.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![dead]);

    let answer = proxy.get(&client(), &proxy.host("hello"), "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        answer.body.starts_with("app 'hello' is not answering: "),
        "{}",
        answer.body
    );
    assert!(answer.body.ends_with('\n'));
    assert!(!answer.body.contains("client error"), "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn removed_app_is_404() {
    let up = start_upstream("a").await;
    let proxy = start_proxy().await;
    let client = client();
    proxy.routes.set_route("hello", vec![up.addr]);
    let host = proxy.host("hello");
    assert_eq!(proxy.get(&client, &host, "/").await.status, StatusCode::OK);

    proxy.routes.remove_app("hello");
    let answer = proxy.get(&client, &host, "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(
        answer.body,
        "no app is deployed at host 'hello.localhost'\n"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn set_route_switches_traffic() {
    let a = start_upstream("a").await;
    let b = start_upstream("b").await;
    let proxy = start_proxy().await;
    let client = client();
    let host = proxy.host("hello");

    proxy.routes.set_route("hello", vec![a.addr]);
    for _ in 0..3 {
        assert_eq!(proxy.get(&client, &host, "/").await.body, "hello from a");
    }
    proxy.routes.set_route("hello", vec![b.addr]);
    for _ in 0..3 {
        assert_eq!(proxy.get(&client, &host, "/").await.body, "hello from b");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn requests_are_spread_round_robin() {
    let a = start_upstream("a").await;
    let b = start_upstream("b").await;
    let proxy = start_proxy().await;
    let client = client();
    let host = proxy.host("hello");
    proxy.routes.set_route("hello", vec![a.addr, b.addr]);

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(proxy.get(&client, &host, "/").await.body);
    }
    assert_eq!(
        seen,
        [
            "hello from a",
            "hello from b",
            "hello from a",
            "hello from b"
        ]
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn post_body_arrives_intact() {
    let up = start_upstream("a").await;
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![up.addr]);

    // 1 MiB of a non-repeating-ish pattern, so a dropped or reordered chunk shows.
    let payload: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let resp = proxy
        .request(
            &client(),
            Method::POST,
            &proxy.host("hello"),
            "/upload",
            &[],
            Full::new(Bytes::from(payload.clone())).boxed(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed body differs");
    proxy.shutdown().await;
}

#[tokio::test]
async fn bodies_stream_without_buffering() {
    let up = start_upstream("a").await;
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![up.addr]);

    // The upstream echoes the body as it arrives; each chunk must come back
    // before the next one is sent, which only works if neither direction is
    // buffered to the end.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let body = BoxBody::new(ChannelBody(rx));
    let client = client();
    let host = proxy.host("hello");
    let send = proxy.request(&client, Method::POST, &host, "/stream", &[], body);
    tx.send(Bytes::from_static(b"chunk-0;"))
        .await
        .expect("send");
    let resp = send.await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for i in 0..5 {
        if i > 0 {
            tx.send(Bytes::from(format!("chunk-{i};")))
                .await
                .expect("send");
        }
        let mut got = Vec::new();
        let want = format!("chunk-{i};");
        while got.len() < want.len() {
            let frame = tokio::time::timeout(TIMEOUT, body.frame())
                .await
                .expect("chunk echoed while the request is still open")
                .expect("body not finished")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(String::from_utf8(got).expect("utf-8"), want);
    }
    drop(tx);
    let rest = tokio::time::timeout(TIMEOUT, body.collect())
        .await
        .expect("end in time")
        .expect("end")
        .to_bytes();
    assert!(rest.is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let up = start_upstream("a").await;
    let mut proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![up.addr]);
    let host = proxy.host("hello");
    let addr = proxy.addr;

    let client = client();
    let in_flight = {
        let req = Request::builder()
            .uri(format!("http://{addr}/slow"))
            .header("host", host.as_str())
            .body(empty())
            .expect("request");
        let client = client.clone();
        tokio::spawn(async move { client.request(req).await })
    };
    // Let the request reach the upstream, then ask the proxy to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = proxy.stop.take().expect("stop switch");
    let _ = stop.send(());

    let resp = tokio::time::timeout(TIMEOUT, in_flight)
        .await
        .expect("in time")
        .expect("task")
        .expect("in-flight request answered");
    let answer = Answer::read(resp).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "hello from a");

    tokio::time::timeout(TIMEOUT, proxy.task)
        .await
        .expect("proxy stopped in time")
        .expect("proxy task")
        .expect("proxy returned Ok");
    // The listener is gone: new connections are refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn garbage_input_does_not_take_the_proxy_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = start_upstream("a").await;
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![up.addr]);

    for junk in [
        &b"\x00\xff\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: \xffbad\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET http://hello.localhost/abs HTTP/1.1\r\nHost: [::1\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        stream.write_all(junk).await.expect("write");
        let mut buf = vec![0u8; 4096];
        let _ = tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await;
    }

    // CONNECT is refused: nothing is tunnelled to the app.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"CONNECT hello.localhost:443 HTTP/1.1\r\nHost: hello.localhost:443\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");

    // HTTP/1.0 without Host, absolute URI: routed by the URI authority.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET http://hello.localhost/abs?q=1 HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
    assert!(raw.contains("x-echo-uri: /abs?q=1"), "{raw}");
    assert!(raw.contains("x-echo-host: hello.localhost"), "{raw}");
    assert!(raw.ends_with("hello from a"), "{raw}");

    // Still serving.
    let answer = proxy.get(&client(), &proxy.host("hello"), "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_all_answered() {
    let a = start_upstream("a").await;
    let b = start_upstream("b").await;
    let proxy = Arc::new(start_proxy().await);
    proxy.routes.set_route("hello", vec![a.addr, b.addr]);
    let client = client();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let proxy = Arc::clone(&proxy);
        let client = client.clone();
        tasks.spawn(async move {
            let answer = proxy
                .get(&client, &proxy.host("hello"), &format!("/n/{i}"))
                .await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(
                answer.header("x-echo-uri"),
                Some(format!("/n/{i}").as_str())
            );
            answer.body
        });
    }
    let mut from_a = 0;
    while let Some(body) = tasks.join_next().await {
        if body.expect("task") == "hello from a" {
            from_a += 1;
        }
    }
    // Least in flight, ties round-robin: an even split give or take what
    // the timing of 64 concurrent requests on two workers shifts.
    assert!(
        (16..=48).contains(&from_a),
        "both upstreams share the load: a answered {from_a} of 64"
    );
    let Ok(proxy) = Arc::try_unwrap(proxy) else {
        panic!("proxy still shared");
    };
    proxy.shutdown().await;
}

/// A waker that counts its calls and, after a delay, publishes `upstream`.
struct CountingWaker {
    calls: Arc<AtomicUsize>,
    routes: std::sync::Weak<RouteTable>,
    upstream: Option<SocketAddr>,
}

impl hangar_core::route::Waker for CountingWaker {
    fn wake(&self, app: &str) -> hangar_core::route::WakeFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (routes, upstream, app) = (self.routes.clone(), self.upstream, app.to_owned());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(addr) = upstream else {
                return Err("no machine can be started".into());
            };
            if let Some(routes) = routes.upgrade() {
                routes.set_route(&app, vec![addr]);
            }
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_stopped_app_wake_it_once() {
    let a = start_upstream("a").await;
    let proxy = Arc::new(start_proxy().await);
    let calls = Arc::new(AtomicUsize::new(0));
    proxy.routes.set_waker(Arc::new(CountingWaker {
        calls: Arc::clone(&calls),
        routes: Arc::downgrade(&proxy.routes),
        upstream: Some(a.addr),
    }));
    proxy.routes.set_route("sleepy", vec![]);
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (proxy, client) = (Arc::clone(&proxy), client.clone());
        tasks.spawn(async move { proxy.get(&client, &proxy.host("sleepy"), "/").await.status });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one wake for 50 requests");
    let metrics = proxy.routes.render_metrics();
    for line in [
        "hangar_proxy_requests_total{app=\"sleepy\",code=\"2xx\"} 50",
        "hangar_proxy_request_duration_seconds_count{app=\"sleepy\"} 50",
        "hangar_proxy_wakes_total{app=\"sleepy\"} 1",
        "hangar_proxy_wake_duration_seconds_count{app=\"sleepy\"} 1",
        "hangar_proxy_in_flight{app=\"sleepy\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
    // Activity: idle right after, counted from the last request's end.
    let idle = hangar_core::route::Activity::idle_for(&*proxy.routes, "sleepy").expect("idle");
    assert!(idle < Duration::from_secs(5));
    let Ok(proxy) = Arc::try_unwrap(proxy) else {
        panic!("proxy still shared");
    };
    proxy.shutdown().await;
}

/// A waker that always answers `error`.
struct RefusingWaker(hangar_core::route::WakeError);

impl hangar_core::route::Waker for RefusingWaker {
    fn wake(&self, _app: &str) -> hangar_core::route::WakeFuture {
        Box::pin(std::future::ready(Err(self.0.clone())))
    }
}

#[tokio::test]
async fn a_refused_wake_names_why_and_a_throttled_one_says_when_to_retry() {
    use hangar_core::route::WakeError;
    let proxy = start_proxy().await;
    let crashed = "its machine crashed (exit code 3) and its restart policy gave up";
    proxy.routes.set_route("crashy", vec![]);
    proxy
        .routes
        .set_waker(Arc::new(RefusingWaker(WakeError::Refused(crashed.into()))));
    let answer = proxy.get(&client(), &proxy.host("crashy"), "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.body.contains(crashed), "{}", answer.body);
    proxy.shutdown().await;

    let proxy = start_proxy().await;
    proxy.routes.set_route("flappy", vec![]);
    proxy
        .routes
        .set_waker(Arc::new(RefusingWaker(WakeError::Throttled {
            retry_after: Duration::from_secs(7),
        })));
    let answer = proxy.get(&client(), &proxy.host("flappy"), "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("retry-after"), Some("7"));
    assert!(answer.body.contains("too often"), "{}", answer.body);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_failed_wake_is_a_generic_503_and_the_reason_stays_in_the_log() {
    let proxy = start_proxy().await;
    proxy.routes.set_waker(Arc::new(CountingWaker {
        calls: Arc::new(AtomicUsize::new(0)),
        routes: std::sync::Weak::new(),
        upstream: None,
    }));
    proxy.routes.set_route("broken", vec![]);
    let answer = proxy.get(&client(), &proxy.host("broken"), "/").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert!(
        answer.body.contains("could not be started"),
        "{}",
        answer.body
    );
    assert!(
        !answer.body.contains("no machine can be started"),
        "the waker's reason is the operator's, not the client's: {}",
        answer.body
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_streaming_response_counts_as_activity() {
    // An upstream that sends one chunk, then holds the response open.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let service = service_fn(move |_req| {
            let release_rx = Arc::clone(&release_rx);
            async move {
                let (tx, rx) = mpsc::channel::<Bytes>(1);
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                    if let Some(r) = release_rx.lock().await.take() {
                        let _ = r.await;
                    }
                });
                Ok::<_, Infallible>(Response::new(ChannelBody(rx)))
            }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let proxy = start_proxy().await;
    proxy.routes.set_route("sse", vec![addr]);
    let resp = proxy
        .request(
            &client(),
            Method::GET,
            &proxy.host("sse"),
            "/",
            &[],
            empty(),
        )
        .await;
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("ok");
    assert_eq!(
        first.data_ref().map(|d| &d[..]),
        Some(&b"data: first\n\n"[..])
    );
    let activity: &dyn hangar_core::route::Activity = &*proxy.routes;
    assert_eq!(
        activity.idle_for("sse"),
        None,
        "busy while the stream is open"
    );
    let _ = release_tx.send(());
    while body.frame().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(activity.idle_for("sse").is_some(), "idle once it ended");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_hard_limit_requests_queue_then_get_503() {
    let a = start_upstream("a").await;
    let proxy = Arc::new(start_proxy().await);
    let limits = hangar_core::route::Limits {
        soft: None,
        hard: Some(2),
    };
    proxy.routes.publish("busy", vec![a.addr], limits);

    // 2 run, 2 wait in the queue (capacity = hard limit × machines): all
    // answered, in two waves of /slow (300 ms each).
    let started = std::time::Instant::now();
    let answers = burst(&proxy, "busy", "/slow", 4).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "never more than 2 at once: 4 × 300 ms took only {:?}",
        started.elapsed()
    );

    // 6 at once: 2 run, 2 queue, 2 find the queue full.
    let answers = burst(&proxy, "busy", "/slow", 6).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!((ok, refused.len()), (4, 2), "statuses");
    for answer in refused {
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert!(
            answer
                .body
                .contains("concurrency limit (2 requests per machine)"),
            "{}",
            answer.body
        );
    }
    let metrics = proxy.routes.render_metrics();
    for line in [
        "hangar_proxy_rejected_total{app=\"busy\"} 2",
        "hangar_proxy_queued{app=\"busy\"} 0",
        "hangar_proxy_in_flight{app=\"busy\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    let Ok(proxy) = Arc::try_unwrap(proxy) else {
        panic!("proxy still shared");
    };
    proxy.shutdown().await;
}

/// A waker whose `wake_another` publishes a second upstream, once: `calls`
/// counts the machines it started.
struct GrowingWaker {
    calls: Arc<AtomicUsize>,
    routes: std::sync::Weak<RouteTable>,
    upstreams: Vec<SocketAddr>,
    limits: hangar_core::route::Limits,
}

impl hangar_core::route::Waker for GrowingWaker {
    fn wake(&self, _app: &str) -> hangar_core::route::WakeFuture {
        Box::pin(std::future::ready(Err("not under test".into())))
    }

    fn wake_another(&self, app: &str) -> hangar_core::route::WakeFuture {
        let Some(routes) = self.routes.upgrade() else {
            return Box::pin(std::future::ready(Err("gone".into())));
        };
        if routes.upstreams(app).as_ref() == Some(&self.upstreams) {
            // Like a node whose machines all run: nothing left to start.
            return Box::pin(std::future::ready(Err("no machine left".into())));
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        routes.publish(app, self.upstreams.clone(), self.limits);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_soft_limit_another_machine_is_started_once() {
    let (a, b) = (start_upstream("a").await, start_upstream("b").await);
    let proxy = Arc::new(start_proxy().await);
    let limits = hangar_core::route::Limits {
        soft: Some(1),
        hard: Some(10),
    };
    let calls = Arc::new(AtomicUsize::new(0));
    proxy.routes.set_waker(Arc::new(GrowingWaker {
        calls: Arc::clone(&calls),
        routes: Arc::downgrade(&proxy.routes),
        upstreams: vec![a.addr, b.addr],
        limits,
    }));
    proxy.routes.publish("grows", vec![a.addr], limits);
    // One request alone stays under the soft limit.
    assert_eq!(
        proxy.get(&client(), &proxy.host("grows"), "/").await.status,
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Five at once are past it: one extra machine, however many saw it.
    let answers = burst(&proxy, "grows", "/slow", 5).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one extra machine");
    assert_eq!(proxy.routes.upstreams("grows"), Some(vec![a.addr, b.addr]));
    // From now on the load is shared.
    let answers = burst(&proxy, "grows", "/slow", 6).await;
    let from_b = answers
        .iter()
        .filter(|a| a.header("x-upstream") == Some("b"))
        .count();
    assert!(from_b >= 2, "b took {from_b} of 6");
    let Ok(proxy) = Arc::try_unwrap(proxy) else {
        panic!("proxy still shared");
    };
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_upstream_is_drained_and_never_picked_again() {
    let (a, b) = (start_upstream("a").await, start_upstream("b").await);
    let proxy = Arc::new(start_proxy().await);
    proxy.routes.set_route("hello", vec![a.addr]);
    let routes = Arc::clone(&proxy.routes);
    assert_eq!(routes.in_flight_to("hello", a.addr), 0);
    assert_eq!(routes.in_flight_to("nope", a.addr), 0, "unknown app");

    let slow = {
        let (proxy, client) = (Arc::clone(&proxy), client());
        tokio::spawn(async move { proxy.get(&client, &proxy.host("hello"), "/slower").await })
    };
    eventually("the slow request is picked for a", || {
        routes.in_flight_to("hello", a.addr) == 1
    })
    .await;

    // The node replaces a with b: the request to a is still counted.
    routes.set_route("hello", vec![b.addr]);
    assert_eq!(routes.upstreams("hello"), Some(vec![b.addr]));
    assert_eq!(routes.in_flight_to("hello", a.addr), 1, "a is draining");
    let client = client();
    for i in 0..10 {
        let answer = proxy.get(&client, &proxy.host("hello"), "/").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.body
        );
        assert_eq!(answer.body, "hello from b", "request {i} after the publish");
    }
    assert_eq!(routes.in_flight_to("hello", b.addr), 0);
    // A republish of the same set keeps counting it.
    routes.set_route("hello", vec![b.addr]);
    assert_eq!(
        routes.in_flight_to("hello", a.addr),
        1,
        "the slow request is still running"
    );

    let answer = tokio::time::timeout(TIMEOUT, slow)
        .await
        .expect("slow request in time")
        .expect("task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "hello from a");
    eventually("a drained once its response ended", || {
        routes.in_flight_to("hello", a.addr) == 0
    })
    .await;
    assert_eq!(
        a.accepted.load(Ordering::SeqCst),
        1,
        "a saw only the slow request's connection"
    );
    drop(routes);
    let Ok(proxy) = Arc::try_unwrap(proxy) else {
        panic!("proxy still shared");
    };
    proxy.shutdown().await;
}

#[tokio::test]
async fn metrics_need_their_token() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Arc::new(RouteTable::new("localhost"));
    let hash = hangar_core::id::hash_token("s3cret");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(hangar_proxy::serve_metrics(
        listener,
        routes,
        Some(hash),
        async move {
            let _ = stopped.await;
        },
    ));
    let get = |token: Option<&'static str>| {
        let mut req = Request::builder().uri(format!("http://{addr}/metrics"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        client().request(req.body(empty()).unwrap())
    };
    assert_eq!(get(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(Some("wrong")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let ok = get(Some("s3cret")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let _ = stop.send(());
    let _ = task.await;
}
