//! Progress deadlines on a client connection: a client that trickles its
//! request body, or stops reading its response, is cut off instead of
//! holding a file descriptor (and an upstream connection) for ever.
//!
//! Both clocks count only time spent waiting on the client: [`ProgressBody`]
//! runs while the upstream connection asks for body bytes the client has not
//! sent, [`StallIo`] while a write to the client is blocked. A slow upstream
//! never starts either.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A re-armable deadline, allocated on first use so an exchange that never
/// waits never pays for a timer.
#[derive(Debug, Default)]
struct Deadline {
    /// The timer; `None` until the first wait.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether the timer counts a wait now in progress. Cleared by
    /// progress; set, with the timer moved to now + timeout, by the first
    /// wait after it.
    armed: bool,
}

impl Deadline {
    /// Progress was made: the next wait starts a fresh clock.
    fn progress(&mut self) {
        self.armed = false;
    }

    /// The caller is about to wait: true once `timeout` has passed since
    /// the wait began. Registers `cx` to be woken when it does.
    fn expired(&mut self, timeout: Duration, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let at = Instant::now() + timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

/// The client sent no request body byte within the body-progress timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body byte within {} ms", .0.as_millis())]
pub struct BodyStalled(pub Duration);

/// Why a request body stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// Reading from the client failed (reset, malformed chunking).
    #[error(transparent)]
    Client(hyper::Error),
    /// The client stopped sending.
    #[error(transparent)]
    Stalled(BodyStalled),
}

/// The request body as it goes upstream: the client's, failing with
/// [`BodyStalled`] when no frame arrives within `timeout` of the upstream
/// asking for one. The upstream connection then aborts the request and
/// closes, so nothing is left holding the upstream either. The API's
/// listener wraps its request bodies in it too.
#[derive(Debug)]
pub struct ProgressBody {
    /// The client's body; `None` for the empty body of a replayed request.
    inner: Option<Incoming>,
    timeout: Duration,
    deadline: Deadline,
}

impl ProgressBody {
    /// `inner`, failing once no frame arrives within `timeout` of a wait.
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        ProgressBody {
            inner: Some(inner),
            timeout,
            deadline: Deadline::default(),
        }
    }

    /// An empty body (a request sent again after its first connection
    /// closed; only requests without a body are).
    pub(crate) fn empty() -> Self {
        ProgressBody {
            inner: None,
            timeout: Duration::MAX,
            deadline: Deadline::default(),
        }
    }
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            this.deadline.progress();
            return Poll::Ready(frame.map(|f| f.map_err(RequestBodyError::Client)));
        }
        if this.deadline.expired(this.timeout, cx) {
            return Poll::Ready(Some(Err(RequestBodyError::Stalled(BodyStalled(
                this.timeout,
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// Whether `err` (a failed upstream exchange) was caused by the client's
/// body stalling.
pub(crate) fn caused_by_stall(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(RequestBodyError::Stalled(_)) = e.downcast_ref::<RequestBodyError>() {
            return true;
        }
        if e.downcast_ref::<BodyStalled>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A client socket whose writes fail with `TimedOut` once one has stayed
/// blocked for `timeout` (the client stopped reading). hyper then drops the
/// connection, and with it the response body and its upstream connection.
#[derive(Debug)]
pub(crate) struct StallIo {
    inner: TcpStream,
    timeout: Duration,
    deadline: Deadline,
}

impl StallIo {
    pub(crate) fn new(inner: TcpStream, timeout: Duration) -> Self {
        StallIo {
            inner,
            timeout,
            deadline: Deadline::default(),
        }
    }

    /// Passes a write's outcome through, failing a blocked one past its
    /// deadline. Only bytes written count as progress (a flush of a TCP
    /// socket is always ready and proves nothing).
    fn watch<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        wrote: impl FnOnce(&T) -> bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                if result.as_ref().is_ok_and(wrote) {
                    self.deadline.progress();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.deadline.expired(self.timeout, cx) => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing within the body-progress timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for StallIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(polled, |n| *n > 0, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(polled, |n| *n > 0, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(polled, |_| false, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(polled, |_| false, cx)
    }
}
