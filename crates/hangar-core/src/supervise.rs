//! Panic containment for the long-lived work of one process that serves
//! every tenant: a panic while handling one build, pass or machine must end
//! only that piece of work, with a reason, never a loop that every other
//! tenant depends on.
//!
//! - [`guarded`] runs one piece of work as a task of its own and turns its
//!   panic into an error message.
//! - [`supervise`] keeps a long-lived loop running: if it panics, it is
//!   logged and started again after a backoff (1 s doubling to 30 s).

use std::future::Future;
use std::time::Duration;

/// The message of a panic payload (`panic!("...")` carries a `String` or a
/// `&'static str`).
pub fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "a panic with no message".to_owned(),
        },
    }
}

/// Runs `work` as a task of its own: its value, or the text of its panic
/// (or of its cancellation, when the runtime shuts down).
pub async fn guarded<T, F>(work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => Err(format!("panicked: {}", panic_text(e.into_panic()))),
        Err(e) => Err(e.to_string()),
    }
}

/// Spawns the loop `make()` returns and starts it again whenever it panics.
/// A loop that returns (e.g. on shutdown) is not restarted.
pub fn supervise<F, Fut>(name: &'static str, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            match guarded(make()).await {
                Ok(()) => return,
                Err(why) => {
                    tracing::error!(task = name, "{why}; restarting it in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panic_is_an_error_with_its_message() {
        let r: Result<(), String> = guarded(async { panic!("boom {}", 7) }).await;
        assert_eq!(r.unwrap_err(), "panicked: boom 7");
        assert_eq!(guarded(async { 5 }).await, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_loop_is_restarted_and_a_returning_one_is_not() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let handle = supervise("test", move || {
            let runs = counted.clone();
            async move {
                // Panics twice, then returns as on shutdown.
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("pass failed");
                }
            }
        });
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
