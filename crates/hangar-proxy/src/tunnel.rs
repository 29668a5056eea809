//! An upgraded connection (WebSocket) joined byte for byte to its upstream,
//! closed on both sides once no byte has crossed in either direction for
//! the tunnel idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How a tunnel ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelEnd {
    /// One side failed (reset, write timeout).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Nothing crossed for the idle timeout; both sides were closed.
    #[error("idle for {} s: closed", .0.as_secs_f32())]
    Idle(Duration),
}

/// Copies bytes both ways until both sides have closed, one fails, or
/// neither moves a byte for `idle`. Returning drops both connections.
pub(crate) async fn join<C, U>(client: C, upstream: U, idle: Duration) -> Result<(), TunnelEnd>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds from `start` to the last byte that crossed; shared by the
    // two halves (one task: never contended).
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Stamped::new(client, start, &last);
    let mut upstream = Stamped::new(upstream, start, &last);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut copy = std::pin::pin!(copy);
    loop {
        let quiet_until = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            copied = &mut copy => return copied.map(|_| ()).map_err(TunnelEnd::from),
            () = tokio::time::sleep_until(quiet_until) => {
                // Bytes may have moved since the deadline was read: only a
                // deadline still in the past ends the tunnel.
                let now_quiet = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if now_quiet <= Instant::now() {
                    return Err(TunnelEnd::Idle(idle));
                }
            }
        }
    }
}

/// One side of a tunnel, stamping `last` whenever a byte is read or written.
struct Stamped<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Stamped<T> {
    fn new(inner: T, start: Instant, last: &Arc<AtomicU64>) -> Self {
        Stamped {
            inner,
            start,
            last: Arc::clone(last),
        }
    }

    fn stamp(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.stamp();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_quiet_tunnel_closes_and_a_busy_one_does_not() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let idle = Duration::from_millis(400);
        let tunnel = tokio::spawn(join(client, upstream, idle));
        // A byte every 200 ms keeps it open well past one idle period.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client_peer.write_all(b"x").await.unwrap();
            let mut got = [0u8; 1];
            upstream_peer.read_exact(&mut got).await.unwrap();
        }
        assert!(!tunnel.is_finished(), "a busy tunnel stays open");
        let ended = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("closed once quiet")
            .unwrap();
        assert!(matches!(ended, Err(TunnelEnd::Idle(_))), "{ended:?}");
        // Both sides see the close.
        let mut rest = Vec::new();
        assert_eq!(client_peer.read_to_end(&mut rest).await.unwrap(), 0);
        assert_eq!(upstream_peer.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
