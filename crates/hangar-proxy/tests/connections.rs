//! Hostile clients against the real proxy over real sockets: each test
//! mounts the attack (a trickled body, a client that stops reading, an
//! idle keep-alive, a slow header, an idle WebSocket tunnel) with the
//! proxy's deadlines cut to fractions of a second, and checks that the
//! proxy lets go of the sockets it held. Tunnels that work are here too.
//!
//! "Let go" is read from the kernel: [`socket_held`] finds the proxy's end
//! of a connection in /proc/net/tcp and whether a descriptor still holds it.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hangar_core::route::RouteSink;
use hangar_proxy::{EdgeOptions, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use support::*;

/// The edge with one worker (one pool) and the given deadlines.
fn options(timeouts: Timeouts) -> EdgeOptions {
    EdgeOptions {
        workers: 1,
        timeouts,
        ..EdgeOptions::default()
    }
}

/// What a [`start_sink`] upstream saw on one connection once it ended.
#[derive(Debug)]
struct Ended {
    /// The proxy's end of the upstream connection.
    peer: SocketAddr,
    /// Bytes read (head and body).
    read: usize,
}

/// An upstream that never answers: it reads each connection to its end
/// and reports it on the channel.
async fn start_sink() -> (SocketAddr, mpsc::UnboundedReceiver<Ended>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut read = 0;
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    read += n;
                }
                let _ = tx.send(Ended { peer, read });
            });
        }
    });
    (addr, rx)
}

/// How far before a deadline the test may see it fire: the proxy's clock
/// starts at its own last byte, a little before the test's clock does.
const SLACK: Duration = Duration::from_millis(100);

/// Opens a raw connection to the proxy and sends `head` as is.
async fn raw(proxy: &Proxy, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send");
    stream
}

#[tokio::test]
async fn a_trickled_request_body_is_cut_with_408_and_its_sockets_freed() {
    let gap = Duration::from_millis(600);
    let proxy = start_proxy_with(options(Timeouts {
        body_progress: gap,
        ..Timeouts::default()
    }))
    .await;

    // Control: a slow but steady body (a byte every 200 ms, for 2 s, far
    // longer than the deadline in all) goes through: the clock is per gap.
    let echo = start_upstream("echo").await;
    proxy.routes.set_route("steady", vec![echo.addr]);
    let body = b"0123456789";
    let mut steady = raw(
        &proxy,
        &format!(
            "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            proxy.host("steady"),
            body.len()
        ),
    )
    .await;
    for byte in body {
        tokio::time::sleep(Duration::from_millis(200)).await;
        steady.write_all(&[*byte]).await.expect("send a byte");
    }
    let head = read_head(&mut steady).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut echoed = vec![0u8; body.len()];
    tokio::time::timeout(TIMEOUT, steady.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, body);

    // The attack: announce 1 MiB, send 5 bytes, then a byte per 10 s.
    let (sink, mut ended) = start_sink().await;
    proxy.routes.set_route("upload", vec![sink]);
    let mut client = raw(
        &proxy,
        &format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 1048576\r\n\r\nhello",
            proxy.host("upload")
        ),
    )
    .await;
    let last_byte = Instant::now();
    let head = read_head(&mut client).await;
    let cut_after = last_byte.elapsed();
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        cut_after >= gap && cut_after < gap + Duration::from_secs(2),
        "cut {cut_after:?} after the last byte (deadline {gap:?})"
    );
    eprintln!("trickled body: 408 after {cut_after:?} of silence (deadline {gap:?})");

    // The upstream request was cancelled: its connection closed, after the
    // 5 bytes the client did send.
    let upstream = tokio::time::timeout(TIMEOUT, ended.recv())
        .await
        .expect("upstream connection closed in time")
        .expect("sink report");
    assert!(upstream.read > 5, "{upstream:?}");
    assert!(
        !socket_held(upstream.peer, sink),
        "proxy still holds its upstream socket"
    );
    // And the client's connection is closed, its socket released.
    closed_within(&mut client, TIMEOUT).await;
    let local = client.local_addr().expect("client addr");
    eventually("the proxy lets go of the client's socket", || {
        !socket_held(proxy.addr, local)
    })
    .await;
    let metrics = proxy.routes.render_metrics();
    assert_eq!(
        metric(
            &metrics,
            "hangar_proxy_requests_total{app=\"upload\",code=\"4xx\"}"
        ),
        Some(1),
        "{metrics}"
    );

    // Once the answer has begun (the echo streams the body back as it
    // comes) a stalled body can get no 408: the connection is closed, and
    // the upstream connection carrying the request with it.
    let mut late = raw(
        &proxy,
        &format!(
            "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\nhello",
            proxy.host("steady")
        ),
    )
    .await;
    let head = read_head(&mut late).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let during = echo.open.load(Ordering::SeqCst);
    let silent_since = Instant::now();
    closed_within(&mut late, gap + Duration::from_secs(2)).await;
    let closed_after = silent_since.elapsed();
    eprintln!("stalled body after the answer began: closed after {closed_after:?}");
    assert!(closed_after >= gap - SLACK, "{closed_after:?}");
    eventually(
        "the upstream connection of the stalled request is closed",
        || echo.open.load(Ordering::SeqCst) == during - 1,
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_and_its_upstream_closed() {
    let gap = Duration::from_millis(600);
    // An upstream answering with an endless body, written as fast as the
    // proxy takes it; it reports how long it could write.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut stopped) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    tokio::spawn(async move {
        let Ok((mut stream, peer)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 68719476736\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        while stream.write_all(&chunk).await.is_ok() {
            sent += chunk.len() as u64;
        }
        let _ = tx.send((peer, sent));
    });
    let proxy = start_proxy_with(options(Timeouts {
        body_progress: gap,
        ..Timeouts::default()
    }))
    .await;
    proxy.routes.set_route("big", vec![addr]);
    let mut client = raw(
        &proxy,
        &format!("GET /big HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.host("big")),
    )
    .await;
    let head = read_head(&mut client).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // The client reads no more. The buffers fill, the proxy's write blocks,
    // and after the deadline the proxy drops both connections.
    let started = Instant::now();
    let (peer, sent) = tokio::time::timeout(TIMEOUT, stopped.recv())
        .await
        .expect("the upstream's writes fail in time")
        .expect("report");
    let cut_after = started.elapsed();
    eprintln!(
        "stalled reader: upstream cut after {cut_after:?}, {} KiB sent (deadline {gap:?})",
        sent / 1024
    );
    assert!(
        cut_after >= gap - SLACK,
        "cut after {cut_after:?}, before the deadline"
    );
    assert!(
        !socket_held(peer, addr),
        "proxy still holds its upstream socket"
    );
    let local = client.local_addr().expect("client addr");
    eventually("the proxy lets go of the client's socket", || {
        !socket_held(proxy.addr, local)
    })
    .await;
    closed_within(&mut client, TIMEOUT).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed_at_the_header_timeout() {
    let header = Duration::from_millis(600);
    let up = start_upstream("a").await;
    let proxy = start_proxy_with(options(Timeouts {
        header,
        ..Timeouts::default()
    }))
    .await;
    proxy.routes.set_route("hello", vec![up.addr]);

    // Keep-alive idle between requests: one request, then silence.
    let mut idle = raw(
        &proxy,
        &format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.host("hello")),
    )
    .await;
    let head = read_head(&mut idle).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    let mut body = vec![0u8; "hello from a".len()];
    idle.read_exact(&mut body).await.expect("body");
    let answered = Instant::now();

    // Slowloris: a header line every 200 ms, never the blank line.
    let mut slow = raw(&proxy, "GET / HTTP/1.1\r\n").await;
    let slow_started = Instant::now();
    // Writes a line every 200 ms until the proxy closes the connection
    // (seen by the read half: a write into a closed socket may still pass).
    let dribble = async {
        let (mut rx, mut tx) = slow.split();
        let mut buf = [0u8; 512];
        for i in 0.. {
            tokio::select! {
                read = rx.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 or 400 before the close
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    let line = format!("x-{i}: 1\r\n");
                    if tx.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // Silent from the start.
    let mut silent = raw(&proxy, "").await;

    let ((), (), ()) = tokio::join!(
        async {
            closed_within(&mut idle, TIMEOUT).await;
            let after = answered.elapsed();
            eprintln!("idle keep-alive closed {after:?} after its answer (deadline {header:?})");
            assert!(after >= header - SLACK, "{after:?}");
            assert!(after < header + Duration::from_secs(2), "{after:?}");
        },
        async {
            tokio::time::timeout(TIMEOUT, dribble)
                .await
                .expect("slowloris cut off");
            let after = slow_started.elapsed();
            eprintln!("slowloris cut after {after:?} (deadline {header:?})");
            assert!(after >= header - SLACK, "{after:?}");
            assert!(after < header + Duration::from_secs(2), "{after:?}");
        },
        closed_within(&mut silent, header + Duration::from_secs(2)),
    );
    proxy.shutdown().await;
}

/// Opens a WebSocket tunnel to `app` through the proxy.
async fn open_tunnel(proxy: &Proxy, app: &str) -> TcpStream {
    let mut stream = raw(
        proxy,
        &format!(
            "GET /chat HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            proxy.host(app)
        ),
    )
    .await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    stream
}

/// Sends `msg` through the tunnel and reads its echo.
async fn ping(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.expect("send");
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(got, msg);
}

#[tokio::test]
async fn an_idle_websocket_tunnel_is_closed_while_a_busy_one_stays_up() {
    let idle = Duration::from_millis(800);
    let (addr, mut ended) = start_ws_upstream().await;
    let proxy = start_proxy_with(options(Timeouts {
        tunnel_idle: idle,
        ..Timeouts::default()
    }))
    .await;
    proxy.routes.set_route("ws", vec![addr]);
    let mut busy = open_tunnel(&proxy, "ws").await;
    let mut quiet = open_tunnel(&proxy, "ws").await;
    ping(&mut quiet, b"hello once").await;
    let quiet_since = Instant::now();

    // The busy one talks every 200 ms for three idle periods.
    let talking = async {
        let until = Instant::now() + idle * 3;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
            ping(&mut busy, b"still here").await;
        }
    };
    let quiet_closed = async {
        closed_within(&mut quiet, TIMEOUT).await;
        quiet_since.elapsed()
    };
    let ((), closed_after) = tokio::join!(talking, quiet_closed);
    eprintln!("quiet tunnel closed after {closed_after:?} (idle timeout {idle:?})");
    assert!(closed_after >= idle - SLACK, "{closed_after:?}");
    assert!(
        closed_after < idle + Duration::from_secs(2),
        "{closed_after:?}"
    );
    // Both of the quiet tunnel's sockets are let go.
    let upstream_end = tokio::time::timeout(TIMEOUT, ended.recv())
        .await
        .expect("the upstream side closed too")
        .expect("report");
    assert!(!socket_held(upstream_end, addr));
    let local = quiet.local_addr().expect("addr");
    eventually("the proxy lets go of the quiet client's socket", || {
        !socket_held(proxy.addr, local)
    })
    .await;
    // The busy one outlived three idle periods and still works; then it
    // falls quiet and goes the same way.
    ping(&mut busy, b"last words").await;
    closed_within(&mut busy, idle + Duration::from_secs(2)).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled_and_count_as_activity() {
    // An upstream that accepts any upgrade, then echoes bytes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(head.contains("connection: upgrade"), "{head}");
        let _ = stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
            .await;
        let mut buf = [0u8; 64];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let _ = stream.write_all(&buf[..n]).await;
                }
            }
        }
    });
    let proxy = start_proxy().await;
    proxy.routes.set_route("ws", vec![addr]);
    let mut client = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /chat HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        proxy.host("ws")
    );
    client.write_all(req.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT, client.read(&mut byte))
            .await
            .expect("in time")
            .expect("read");
        assert_ne!(
            n,
            0,
            "closed before the 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping"[..], &b"pong and more"[..]] {
        client.write_all(msg).await.expect("send");
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(TIMEOUT, client.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("echo");
        assert_eq!(got, msg);
    }
    let activity: &dyn hangar_core::route::Activity = &*proxy.routes;
    assert_eq!(activity.idle_for("ws"), None, "an open tunnel is activity");
    drop(client);
    let idle = async {
        loop {
            if activity.idle_for("ws").is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, idle)
        .await
        .expect("idle once the tunnel closed");
    proxy.shutdown().await;
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("binding a loopback source address");
    socket.connect(to).await.expect("connecting")
}

#[tokio::test]
async fn the_admin_port_caps_each_client_and_closes_silent_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = std::sync::Arc::new(hangar_proxy::RouteTable::new("localhost"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let header_timeout = Duration::from_millis(600);
    let task = tokio::spawn(hangar_proxy::serve_metrics_with(
        listener,
        routes,
        Some(hangar_core::id::hash_token("s3cret")),
        hangar_proxy::AdminOptions {
            header_timeout,
            limits: hangar_core::admission::ConnLimits {
                total: 64,
                per_client: 8,
            },
        },
        async move {
            let _ = stopped.await;
        },
    ));
    // One client holds its 8 places with silent connections; its 9th is
    // closed at once.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(connect_from("127.0.0.5", addr).await);
    }
    let started = Instant::now();
    let mut ninth = connect_from("127.0.0.5", addr).await;
    closed_within(&mut ninth, Duration::from_millis(300)).await;
    // Another client reads the metrics meanwhile.
    let mut other = connect_from("127.0.0.6", addr).await;
    other
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer s3cret\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut other).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // The silent ones are closed at the header deadline, not before.
    for s in &mut silent {
        closed_within(s, header_timeout * 3).await;
    }
    let took = started.elapsed();
    assert!(
        took >= header_timeout - Duration::from_millis(100),
        "closed after {took:?}"
    );
    // Their places are free again.
    let mut again = connect_from("127.0.0.5", addr).await;
    again
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut again).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    let _ = stop.send(());
    let _ = task.await;
}
