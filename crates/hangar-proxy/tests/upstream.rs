//! The proxy's upstream connections against the real proxy over real
//! sockets: keep-alive reuse, the idle pool's bounds and reaper, what is
//! and is not sent again when a connection dies under a request, and the
//! failover budget.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hangar_core::route::{Activity, RouteSink};
use hangar_proxy::{EdgeOptions, PoolLimits};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::*;

#[tokio::test]
async fn upstream_connection_is_kept_alive() {
    let up = start_upstream("a").await;
    // One worker, so one pool: every request can only reuse its connection.
    let proxy = start_proxy_with(EdgeOptions {
        workers: 1,
        ..EdgeOptions::default()
    })
    .await;
    proxy.routes.set_route("hello", vec![up.addr]);
    let host = proxy.host("hello");

    for _ in 0..10 {
        // A fresh client each time: the reuse is the proxy's, not ours.
        let answer = proxy.get(&client(), &host, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        // Let the proxy put the finished upstream connection back in its pool.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "10 sequential requests through one worker take one upstream connection"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    // An upstream that answers one request per connection with keep-alive,
    // then closes the connection shortly after, as idle timeouts do.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            });
        }
    });
    let proxy = start_proxy().await;
    proxy.routes.set_route("flaky", vec![addr]);
    let client = client();
    for round in 0..4 {
        let answer = proxy.get(&client, &proxy.host("flaky"), "/").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "round {round}: {}",
            answer.body
        );
        assert_eq!(answer.body, "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "a new connection each time"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refused_connect_fails_over_to_another_machine() {
    let dead = closed_port().await;
    let live = start_upstream("live").await;
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![dead, live.addr]);
    let (client, host) = (client(), proxy.host("hello"));

    for i in 0..50 {
        let answer = proxy.get(&client, &host, "/").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.body
        );
        assert_eq!(answer.body, "hello from live");
    }
    let metrics = proxy.routes.render_metrics();
    let failovers = metric(&metrics, "hangar_proxy_failovers_total{app=\"hello\"}")
        .unwrap_or_else(|| panic!("no failover counter in:\n{metrics}"));
    // Ties go round-robin, so the dead machine is picked first about half
    // the time; each of those is retried on the live one.
    assert!((1..=50).contains(&failovers), "{failovers} failovers");
    assert_eq!(
        metric(
            &metrics,
            "hangar_proxy_requests_total{app=\"hello\",code=\"2xx\"}"
        ),
        Some(50)
    );
    assert_eq!(proxy.routes.in_flight_to("hello", dead), 0);
    assert_eq!(proxy.routes.in_flight_to("hello", live.addr), 0);

    // With nowhere else to go it is still the 502.
    proxy.routes.set_route("hello", vec![dead]);
    let answer = proxy.get(&client, &host, "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        answer
            .body
            .starts_with("app 'hello' is not answering: cannot connect"),
        "{}",
        answer.body
    );
    assert_eq!(
        metric(
            &proxy.routes.render_metrics(),
            "hangar_proxy_failovers_total{app=\"hello\"}"
        ),
        Some(failovers),
        "no other machine: no failover"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_that_reached_the_upstream_is_not_replayed() {
    // An upstream that reads the request, then closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closer = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
        }
    });
    let live = start_upstream("live").await;
    let proxy = start_proxy().await;
    proxy.routes.set_route("hello", vec![closer, live.addr]);
    let (client, host) = (client(), proxy.host("hello"));

    let mut bad_gateways = 0;
    for i in 0..6 {
        let answer = proxy.get(&client, &host, "/").await;
        match answer.status {
            StatusCode::OK => assert_eq!(answer.body, "hello from live"),
            StatusCode::BAD_GATEWAY => bad_gateways += 1,
            other => panic!("request {i}: {other}: {}", answer.body),
        }
    }
    // Every request the closer took is a 502, none went on to the live one.
    assert!(bad_gateways > 0, "the closer was never picked");
    assert_eq!(accepted.load(Ordering::SeqCst), bad_gateways);
    assert_eq!(
        metric(
            &proxy.routes.render_metrics(),
            "hangar_proxy_failovers_total{app=\"hello\"}"
        ),
        Some(0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_idle_upstream_pool_stays_within_its_bounds_and_is_reaped() {
    let idle_timeout = Duration::from_secs(2);
    let (a, b) = (start_upstream("a").await, start_upstream("b").await);
    let proxy = Arc::new(
        start_proxy_with(EdgeOptions {
            workers: 1,
            pool: PoolLimits {
                idle_per_upstream: 4,
                idle_total: 6,
                idle_timeout,
            },
            ..EdgeOptions::default()
        })
        .await,
    );
    proxy.routes.set_route("a", vec![a.addr]);
    proxy.routes.set_route("b", vec![b.addr]);

    // 16 concurrent slow requests open ~16 connections to a; once they
    // are answered only 4 may stay.
    for answer in burst(&proxy, "a", "/slow", 16).await {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    let opened = a.accepted.load(Ordering::SeqCst);
    assert!(opened > 4, "the burst opened only {opened} connections");
    eventually("a's idle connections come down to 4", || {
        a.open.load(Ordering::SeqCst) == 4
    })
    .await;
    let pooled = Instant::now();
    // Then b gets the 2 places left of the 6 in all.
    for answer in burst(&proxy, "b", "/slow", 16).await {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    eventually("b keeps only what the total leaves", || {
        b.open.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(a.open.load(Ordering::SeqCst), 4, "a's idle ones stayed");
    eprintln!(
        "pool: a opened {opened}, b opened {}, kept 4 + 2 (bounds 4 per upstream, 6 in all)",
        b.accepted.load(Ordering::SeqCst)
    );

    // Reaped once idle past the timeout: every upstream socket is closed.
    eventually("the idle pool is reaped", || {
        a.open.load(Ordering::SeqCst) + b.open.load(Ordering::SeqCst) == 0
    })
    .await;
    let reaped_after = pooled.elapsed();
    eprintln!(
        "pool reaped {reaped_after:?} after a's connections idled (timeout {idle_timeout:?})"
    );
    assert!(
        reaped_after >= idle_timeout - Duration::from_millis(100),
        "{reaped_after:?}"
    );

    // A reaped pool costs no request: the next one opens a new connection.
    let before = a.accepted.load(Ordering::SeqCst);
    let answer = proxy.get(&client(), &proxy.host("a"), "/").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(a.accepted.load(Ordering::SeqCst), before + 1);
    let Ok(proxy) = Arc::try_unwrap(proxy) else {
        panic!("proxy still shared");
    };
    proxy.shutdown().await;
}

/// An upstream that answers the first request on each connection (its body
/// names the connection, `conn N`) and keeps it alive, then reads the next
/// request on it and closes without answering: the race of an upstream
/// closing a pooled connection just as the proxy reuses it, made certain.
/// Returns its address, the connections it accepted, and how many
/// requests it dropped that way.
async fn start_one_shot_upstream() -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::AtomicUsize;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (accepted, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (count, drops) = (Arc::clone(&accepted), Arc::clone(&dropped));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let drops = Arc::clone(&drops);
            tokio::spawn(async move {
                let first = read_request_head(&mut stream).await;
                if first.is_empty() {
                    return;
                }
                let body = format!("conn {n}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let second = read_request_head(&mut stream).await;
                if !second.is_empty() {
                    drops.fetch_add(1, Ordering::SeqCst);
                }
                // Dropped here: closed without an answer.
            });
        }
    });
    (addr, accepted, dropped)
}

#[tokio::test]
async fn a_pooled_connection_dying_under_a_request_replays_a_get_but_never_a_post() {
    let (addr, accepted, dropped) = start_one_shot_upstream().await;
    let proxy = start_proxy_with(EdgeOptions {
        workers: 1,
        ..EdgeOptions::default()
    })
    .await;
    proxy.routes.set_route("hello", vec![addr]);
    let (client, host) = (client(), proxy.host("hello"));

    let answer = proxy.get(&client, &host, "/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "conn 1")
    );
    tokio::time::sleep(Duration::from_millis(50)).await; // back in the pool

    // The GET is written on the pooled connection, which then closes
    // unanswered: it goes out again on a new one, and the client never
    // knows.
    let answer = proxy.get(&client, &host, "/again").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "conn 2"),
        "a GET is sent again on a fresh connection"
    );
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the pooled connection took the GET"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A POST with a body meets the same fate on connection 2: it may have
    // done its work, so it is not sent again, and the client gets the 502.
    let resp = proxy
        .request(
            &client,
            Method::POST,
            &host,
            "/pay",
            &[("content-type", "text/plain")],
            full("charge the card once"),
        )
        .await;
    let answer = Answer::read(resp).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    assert!(
        answer.body.starts_with("app 'hello' is not answering"),
        "{}",
        answer.body
    );
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "the pooled connection took the POST"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the POST never went out again"
    );
    assert_eq!(
        metric(
            &proxy.routes.render_metrics(),
            "hangar_proxy_failovers_total{app=\"hello\"}"
        ),
        Some(0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refused_request_is_tried_on_at_most_two_more_machines() {
    let proxy = start_proxy().await;
    let (client, host) = (client(), proxy.host("hello"));
    let failovers = |proxy: &Proxy| {
        metric(
            &proxy.routes.render_metrics(),
            "hangar_proxy_failovers_total{app=\"hello\"}",
        )
        .unwrap_or(0)
    };

    // Two dead machines and a live one: the budget always reaches it.
    let live = start_upstream("live").await;
    let dead = [closed_port().await, closed_port().await];
    proxy
        .routes
        .set_route("hello", vec![dead[0], dead[1], live.addr]);
    for i in 0..12 {
        let answer = proxy.get(&client, &host, "/").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.body
        );
    }
    let spent = failovers(&proxy);
    assert!(
        (1..=24).contains(&spent),
        "{spent} failovers for 12 requests"
    );

    // Four dead machines: each request tries three (the one picked and two
    // more), then answers 502; it never reaches the fourth.
    let dead: Vec<SocketAddr> = [
        closed_port().await,
        closed_port().await,
        closed_port().await,
        closed_port().await,
    ]
    .into();
    proxy.routes.set_route("hello", dead);
    for i in 0..5 {
        let before = failovers(&proxy);
        let answer = proxy.get(&client, &host, "/").await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_GATEWAY,
            "request {i}: {}",
            answer.body
        );
        assert!(answer.body.contains("cannot connect"), "{}", answer.body);
        assert_eq!(
            failovers(&proxy) - before,
            2,
            "request {i}: two more machines, no more"
        );
    }
    proxy.shutdown().await;
}
