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

/// Where to go on in a file found shorter (`len`) than what was read.
async fn resume_after_cut(f: &mut tokio::fs::File, len: u64) -> u64 {
    let start = len.saturating_sub(hangar_core::log_rate::SEARCH);
    let mut tail = Vec::new();
    if f.seek(SeekFrom::Start(start)).await.is_err()
        || (&mut *f)
            .take(len - start)
            .read_to_end(&mut tail)
            .await
            .is_err()
    {
        return 0;
    }
    hangar_core::log_rate::resume_point(&tail, start).unwrap_or(0)
}

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
                    // Shorter than what was read: the log was cut. After a
                    // rate cut, go on from its note (what is before it was
                    // sent already); after a cut of the whole file (the
                    // node's cap), from its new start.
                    if let Ok(m) = f.metadata().await
                        && m.len() < pos
                    {
                        pos = resume_after_cut(&mut f, m.len()).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_follower_shows_a_rate_cut_once_and_what_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let text: String = (0..2000).map(|i| format!("line {i:04}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let finished = Arc::new(AtomicBool::new(false));
        let done: Done = Box::new({
            let finished = finished.clone();
            move || {
                let f = finished.load(Ordering::Relaxed);
                Box::pin(async move { f })
            }
        });
        let mut body = tail(path.clone(), 0, Some(done));
        // It reads all 20,000 bytes ...
        let mut seen = Vec::new();
        while seen.len() < text.len() {
            let frame = body.frame().await.unwrap().unwrap();
            seen.extend_from_slice(frame.data_ref().unwrap());
        }
        // ... then the keeper keeps 1,000 of them (the log grew past its
        // rate), and the writer goes on.
        let dropped = hangar_core::log_rate::cut_to_rate(&path, 0, 1000)
            .unwrap()
            .unwrap();
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        w.write_all(b"after\n").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        finished.store(true, Ordering::Relaxed);
        while let Some(frame) = body.frame().await {
            seen.extend_from_slice(frame.unwrap().data_ref().unwrap());
        }
        let expected = format!(
            "{text}{}after\n",
            hangar_core::log_rate::note(dropped, 1000)
        );
        assert_eq!(String::from_utf8(seen).unwrap(), expected);
    }
}
