//! [`Running`]: the builds this hangar's workers are running, so that a
//! cancel reaches the worker of a build, and so that two builds of one app
//! never run at once here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, watch};

/// The running builds, by id, and one lock per app.
///
/// How it works: a worker [`Running::enter`]s a build right after claiming
/// it and holds the [`Ticket`] until the build is over and everything it
/// ran is gone. Entering registers the build's cancel flag (a `watch`
/// channel) and then takes the app's lock, so a build whose app is still
/// tearing down a cancelled build waits for it (the store lets the next
/// build of the app be claimed as soon as the row says `cancelled`).
/// [`Running::cancel`] raises the flag and waits until the ticket is
/// dropped: the flag's receiver lives in the ticket, so the sender's
/// `closed()` says when.
#[derive(Clone, Default)]
pub(crate) struct Running {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Each running build's cancel flag.
    builds: HashMap<String, Arc<watch::Sender<bool>>>,
    /// Each app's lock; removed when no ticket holds or waits for it.
    apps: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// A worker's hold on one running build (see [`Running`]).
pub(crate) struct Ticket {
    running: Running,
    build_id: String,
    app_id: String,
    cancel: watch::Receiver<bool>,
    /// The app's lock, held while the build runs.
    _app: OwnedMutexGuard<()>,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only maps are kept under this lock; a panic cannot leave them
        // inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a claimed build and waits for its app to be free.
    pub(crate) async fn enter(&self, build_id: &str, app_id: &str) -> Ticket {
        let (cancel, app) = {
            let mut state = self.lock();
            let (tx, rx) = watch::channel(false);
            state.builds.insert(build_id.to_owned(), Arc::new(tx));
            let app = state.apps.entry(app_id.to_owned()).or_default().clone();
            (rx, app)
        };
        let guard = app.lock_owned().await;
        Ticket {
            running: self.clone(),
            build_id: build_id.to_owned(),
            app_id: app_id.to_owned(),
            cancel,
            _app: guard,
        }
    }

    /// Asks the worker of `build_id` to stop it, and waits (at most
    /// `timeout`) until it has. False if no worker here runs it.
    pub(crate) async fn cancel(&self, build_id: &str, timeout: Duration) -> bool {
        let flag = self.lock().builds.get(build_id).cloned();
        let Some(flag) = flag else {
            return false;
        };
        flag.send_replace(true);
        tokio::time::timeout(timeout, flag.closed()).await.is_ok()
    }
}

impl Ticket {
    /// Resolves once the build is cancelled.
    pub(crate) async fn cancelled(&mut self) {
        // An error means the sender is gone, which only happens when this
        // ticket is dropped: never while it is awaited.
        let _ = self.cancel.wait_for(|c| *c).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.running.lock();
        state.builds.remove(&self.build_id);
        // The map's clone and this ticket's guard's: no one else waits.
        if state
            .apps
            .get(&self.app_id)
            .is_some_and(|lock| Arc::strong_count(lock) <= 2)
        {
            state.apps.remove(&self.app_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_waits_for_the_ticket_and_builds_of_one_app_take_turns() {
        let running = Running::default();
        let mut first = running.enter("b1", "app").await;
        // A second build of the app waits for the first to be over.
        let second = tokio::spawn({
            let running = running.clone();
            async move { running.enter("b2", "app").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        // Another app's build does not wait.
        let other = running.enter("b3", "other").await;
        drop(other);

        let cancel = tokio::spawn({
            let running = running.clone();
            async move { running.cancel("b1", Duration::from_secs(5)).await }
        });
        first.cancelled().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!cancel.is_finished(), "the cancel waits for the worker");
        drop(first);
        assert!(cancel.await.unwrap());
        let second = second.await.unwrap();
        assert!(!running.cancel("b1", Duration::from_secs(1)).await);
        drop(second);
        let state = running.lock();
        assert!(state.builds.is_empty() && state.apps.is_empty());
    }
}
