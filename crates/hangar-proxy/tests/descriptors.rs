//! The proxy's file descriptors under a trickling-body attack, counted in
//! /proc/self/fd. Its own test binary, with one test, so no other test's
//! sockets are in the count.

mod support;

use std::time::{Duration, Instant};

use hangar_core::route::RouteSink;
use hangar_proxy::{EdgeOptions, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// Descriptors this process holds now.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

const CLIENTS: usize = 100;

#[tokio::test]
async fn trickling_clients_give_back_every_descriptor() {
    let gap = Duration::from_millis(500);
    // An upstream that reads each connection to its end, never answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sink = listener.local_addr().expect("addr");
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = tx.send(());
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(1..) = stream.read(&mut buf).await {}
            });
        }
    });
    let proxy = start_proxy_with(EdgeOptions {
        workers: 2,
        timeouts: Timeouts {
            body_progress: gap,
            ..Timeouts::default()
        },
        ..EdgeOptions::default()
    })
    .await;
    proxy.routes.set_route("upload", vec![sink]);
    tokio::time::sleep(Duration::from_millis(200)).await; // workers up
    let base = open_fds();

    // Each client announces 1 MiB, sends one byte, then nothing.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 1048576\r\n\r\nx",
        proxy.host("upload")
    );
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("send");
        clients.push(stream);
    }
    let started = Instant::now();
    for _ in 0..CLIENTS {
        tokio::time::timeout(TIMEOUT, accepted.recv())
            .await
            .expect("the proxy forwards every request")
            .expect("sink");
    }
    // Each attack holds four descriptors here: the client's, the proxy's
    // two (client side, upstream side) and the upstream's.
    let during = open_fds();
    assert!(
        during >= base + 3 * CLIENTS,
        "{during} descriptors during the attack, {base} before"
    );

    let mut cut = 0;
    for client in &mut clients {
        let answer = read_head(client).await;
        assert!(answer.starts_with("http/1.1 408"), "{answer}");
        closed_within(client, TIMEOUT).await;
        cut += 1;
    }
    let all_cut = started.elapsed();
    drop(clients);
    // The test's own client sockets are closed now; what is left open is
    // the proxy's and the upstream's, which must come back too.
    let deadline = Instant::now() + TIMEOUT;
    let mut after = open_fds();
    while after > base && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = open_fds();
    }
    eprintln!(
        "{CLIENTS} trickling clients: {base} descriptors before, {during} during, {after} after; \
         all {cut} cut with 408 within {all_cut:?} (deadline {gap:?})"
    );
    assert!(
        after <= base,
        "{after} descriptors after the attack, {base} before"
    );
    proxy.shutdown().await;
}
