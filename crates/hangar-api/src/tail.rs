//! Streaming a growing log file as an HTTP body.

use std::future::Future;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// Decides, after each poll that found nothing new, whether the stream ends.
pub type Done = Box<dyn FnMut() -> DoneFuture + Send>;

/// What a [`Done`] check returns.
pub type DoneFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// A body with the file's content from `start`, then (when `done` is given)
/// what is appended to it, until `done` says so or the client goes away.
pub fn tail(path: PathBuf, start: u64, mut done: Option<Done>) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut pos = start;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // Read everything there is now.
            if let Ok(mut f) = tokio::fs::File::open(&path).await
                && {
                    // Shorter than what was read: the log was cut (see the
                    // node's log keeper); follow it from its new start.
                    if f.metadata().await.is_ok_and(|m| m.len() < pos) {
                        pos = 0;
                    }
                    f.seek(SeekFrom::Start(pos)).await.is_ok()
                }
            {
                loop {
                    match f.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            pos += n as u64;
                            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                return; // the client went away
                            }
                        }
                    }
                }
            }
            let Some(done) = done.as_mut() else { return };
            // Read once more after `done` turns true: the last lines are
            // written just before the state changes.
            if done().await {
                if let Ok(mut f) = tokio::fs::File::open(&path).await
                    && f.seek(SeekFrom::Start(pos)).await.is_ok()
                {
                    let mut rest = Vec::new();
                    if f.read_to_end(&mut rest).await.is_ok() && !rest.is_empty() {
                        let _ = tx.send(Bytes::from(rest)).await;
                    }
                }
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Body::from_stream(stream)
}
