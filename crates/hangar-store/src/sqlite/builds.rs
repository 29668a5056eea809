//! The durable build queue: enqueue (with the per-org cap and
//! superseding), the fair claim, the terminal transitions and crash
//! recovery. Each method is one transaction, so several builder workers
//! never see a half-made change.
//!
//! Fairness: each claim gives the claiming org the next turn number
//! (`build_turns`); the next build goes to the org whose last turn is the
//! oldest (an org never served first), oldest build first within the org.
//! So an org with 50 queued builds and an org with one alternate: the
//! second waits for at most one build of the first.
//!
//! One build per app at a time: a queued build whose app has a `building`
//! one is skipped (the app's source and target dirs are shared by its
//! builds).

use hangar_core::id::new_id;
use hangar_core::now_unix;
use hangar_core::status::BuildStatus;
use rusqlite::{Connection, OptionalExtension, params};

use super::{BUILD_COLS, build_row, collect, get_build, insert_release};
use crate::{Build, Enqueued, Release, Result, Store, StoreError};

impl Store {
    /// Enqueues a build of an uploaded source, superseding the app's
    /// queued (not started) builds. Refused with [`StoreError::QueueFull`]
    /// when the app's org already has `max_queued` builds of its other
    /// apps waiting (the ones superseded here do not count).
    pub async fn enqueue_build(
        &self,
        app_id: &str,
        source_digest: &str,
        max_queued: u32,
    ) -> Result<Enqueued> {
        self.enqueue_commit_build(app_id, source_digest, max_queued, None)
            .await
    }

    /// [`Store::enqueue_build`] of a commit's source: the build records
    /// the commit (`git_sha`).
    pub async fn enqueue_commit_build(
        &self,
        app_id: &str,
        source_digest: &str,
        max_queued: u32,
        git_sha: Option<&str>,
    ) -> Result<Enqueued> {
        let (app_id, source_digest) = (app_id.to_owned(), source_digest.to_owned());
        let git_sha = git_sha.map(str::to_owned);
        self.call(move |c| {
            let tx = c.transaction()?;
            let queued: u64 = tx.query_row(
                "SELECT COUNT(*) FROM builds b JOIN apps a ON a.id = b.app_id
                 WHERE a.org_id = (SELECT org_id FROM apps WHERE id = ?1)
                   AND b.status = 'queued' AND b.app_id != ?1",
                [&app_id],
                |r| r.get(0),
            )?;
            if queued >= u64::from(max_queued) {
                return Err(StoreError::QueueFull {
                    queued,
                    limit: max_queued,
                });
            }
            let superseded = ids(
                &tx,
                "SELECT id FROM builds WHERE app_id = ?1 AND status = 'queued'
                 ORDER BY created_at, rowid",
                &app_id,
            )?;
            let id = new_id("bld");
            let now = now_unix();
            tx.execute(
                "UPDATE builds SET status = 'superseded', finished_at = ?2, error = ?3
                 WHERE app_id = ?1 AND status = 'queued'",
                params![app_id, now, superseded_reason(&id)],
            )?;
            tx.execute(
                "INSERT INTO builds (id, app_id, status, source_digest, created_at, git_sha)
                 VALUES (?1, ?2, 'queued', ?3, ?4, ?5)",
                params![id, app_id, source_digest, now, git_sha],
            )?;
            let build = get_build(&tx, &id)?
                .ok_or_else(|| StoreError::Corrupt("inserted build vanished".into()))?;
            tx.commit()?;
            Ok(Enqueued { build, superseded })
        })
        .await
    }

    /// The org's builds waiting in the queue, oldest first.
    pub async fn queued_builds_of_org(&self, org_id: &str) -> Result<Vec<Build>> {
        let org_id = org_id.to_owned();
        self.call(move |c| {
            let cols = prefixed_build_cols("b");
            let mut st = c.prepare(&format!(
                "SELECT {cols} FROM builds b JOIN apps a ON a.id = b.app_id
                 WHERE a.org_id = ?1 AND b.status = 'queued' ORDER BY b.created_at, b.rowid"
            ))?;
            let rows = st.query_map([org_id], build_row)?;
            collect(rows)
        })
        .await
    }

    /// The build by id.
    pub async fn build(&self, id: &str) -> Result<Option<Build>> {
        let id = id.to_owned();
        self.call(move |c| get_build(c, &id)).await
    }

    /// The app's most recent builds, newest first.
    pub async fn builds_for_app(&self, app_id: &str, limit: i64) -> Result<Vec<Build>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {BUILD_COLS} FROM builds WHERE app_id = ?1
                 ORDER BY created_at DESC, rowid DESC LIMIT ?2"
            ))?;
            let rows = st.query_map(params![app_id, limit], build_row)?;
            collect(rows)
        })
        .await
    }

    /// The id of every build the store holds (of every app): what a log
    /// or a directory named by a build must match to be kept.
    pub async fn build_ids(&self) -> Result<std::collections::HashSet<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT id FROM builds")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    /// Atomically claims the next build (queued → building): round-robin
    /// by org, oldest first within an org, skipping apps that have a build
    /// running.
    pub async fn claim_next_build(&self) -> Result<Option<Build>> {
        self.call(|c| {
            let tx = c.transaction()?;
            let next: Option<(String, String)> = tx
                .query_row(
                    "SELECT b.id, a.org_id FROM builds b
                     JOIN apps a ON a.id = b.app_id
                     LEFT JOIN build_turns t ON t.org_id = a.org_id
                     WHERE b.status = 'queued'
                       AND NOT EXISTS (SELECT 1 FROM builds r
                                       WHERE r.app_id = b.app_id AND r.status = 'building')
                     ORDER BY COALESCE(t.turn, 0), b.created_at, b.rowid
                     LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((id, org_id)) = next else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE builds SET status = 'building', started_at = ?2, attempts = attempts + 1
                 WHERE id = ?1",
                params![id, now_unix()],
            )?;
            tx.execute(
                "INSERT INTO build_turns (org_id, turn)
                 VALUES (?1, (SELECT COALESCE(MAX(turn), 0) + 1 FROM build_turns))
                 ON CONFLICT (org_id) DO UPDATE SET turn = excluded.turn",
                [&org_id],
            )?;
            let build = get_build(&tx, &id)?;
            tx.commit()?;
            Ok(build)
        })
        .await
    }

    /// Records the process group of a running build's cargo.
    pub async fn set_build_pgid(&self, id: &str, pgid: Option<i64>) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE builds SET builder_pgid = ?2 WHERE id = ?1",
                params![id, pgid],
            )?;
            Ok(())
        })
        .await
    }

    /// Marks a running build failed with a reason for the user (nothing
    /// changes if it is no longer running: cancelled meanwhile).
    pub async fn fail_build(&self, id: &str, error: &str) -> Result<()> {
        let (id, error) = (id.to_owned(), error.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE builds SET status = 'failed', error = ?2, finished_at = ?3,
                 builder_pgid = NULL WHERE id = ?1 AND status = 'building'",
                params![id, error, now_unix()],
            )?;
            Ok(())
        })
        .await
    }

    /// Cancels a queued or running build, recording `reason`. Returns the
    /// status it had and the row after, or None if there is no such
    /// build; a finished build is left as it is (its status is returned).
    /// A running build's process is the builder's to stop: the row says
    /// `cancelled` first, so nothing it does afterwards can complete it.
    pub async fn cancel_build(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<Option<(BuildStatus, Build)>> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.call(move |c| {
            let tx = c.transaction()?;
            let Some(before) = get_build(&tx, &id)? else {
                return Ok(None);
            };
            if !before.status.is_terminal() {
                tx.execute(
                    "UPDATE builds SET status = 'cancelled', error = ?2, finished_at = ?3
                     WHERE id = ?1",
                    params![id, reason, now_unix()],
                )?;
            }
            let after = get_build(&tx, &id)?
                .ok_or_else(|| StoreError::Corrupt(format!("build {id} vanished")))?;
            tx.commit()?;
            Ok(Some((before.status, after)))
        })
        .await
    }

    /// Marks a running build succeeded and creates its release (the next
    /// version, pending) in one transaction: a crash leaves both or
    /// neither. A build no longer running (cancelled meanwhile) is
    /// [`StoreError::BuildNotRunning`] and gets no release.
    pub async fn complete_build(
        &self,
        build_id: &str,
        image_digest: &str,
        config: Option<String>,
    ) -> Result<Release> {
        let (build_id, image_digest) = (build_id.to_owned(), image_digest.to_owned());
        self.call(move |c| {
            let tx = c.transaction()?;
            let build = get_build(&tx, &build_id)?
                .ok_or_else(|| StoreError::Corrupt(format!("build {build_id} vanished")))?;
            if build.status != BuildStatus::Building {
                return Err(StoreError::BuildNotRunning {
                    id: build_id,
                    status: build.status,
                });
            }
            tx.execute(
                "UPDATE builds SET status = 'succeeded', image_digest = ?2, finished_at = ?3,
                 builder_pgid = NULL WHERE id = ?1",
                params![build_id, image_digest, now_unix()],
            )?;
            let release = insert_release(
                &tx,
                build.app_id,
                build_id,
                image_digest,
                config,
                "deploy".to_owned(),
            )?;
            let version = release.version;
            // The image gets names its org can use in the Machines API.
            let (org_id, app_name): (String, String) = tx.query_row(
                "SELECT org_id, name FROM apps WHERE id = ?1",
                [&release.app_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            for name in [format!("{app_name}:v{version}"), format!("{app_name}:latest")] {
                tx.execute(
                    "INSERT INTO image_refs (org_id, name, digest, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (org_id, name) DO UPDATE SET digest = excluded.digest,
                     created_at = excluded.created_at",
                    params![org_id, name, release.image_digest, release.created_at],
                )?;
            }
            tx.commit()?;
            Ok(release)
        })
        .await
    }

    /// After a crash: builds left `building` (one per app at most, from
    /// any number of workers) are re-queued, keeping their place; failed
    /// once they have been claimed `max_attempts` times; superseded when
    /// a newer build of the app is queued. Returns each as it was (so a
    /// caller can kill an orphaned cargo by its process group) and as it
    /// is now.
    pub async fn recover_builds(&self, max_attempts: i64) -> Result<Vec<(Build, Build)>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let stuck = {
                let mut st = tx.prepare(&format!(
                    "SELECT {BUILD_COLS} FROM builds WHERE status = 'building'"
                ))?;
                let rows = st.query_map([], build_row)?;
                collect(rows)?
            };
            let mut out = Vec::with_capacity(stuck.len());
            for b in stuck {
                let newer: Option<String> = tx
                    .query_row(
                        "SELECT id FROM builds WHERE app_id = ?1 AND status = 'queued'
                         ORDER BY created_at DESC, rowid DESC LIMIT 1",
                        [&b.app_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if b.attempts >= max_attempts {
                    tx.execute(
                        "UPDATE builds SET status = 'failed', finished_at = ?2, builder_pgid = NULL,
                         error = ?3 WHERE id = ?1",
                        params![
                            b.id,
                            now_unix(),
                            format!(
                                "hangar stopped during this build {} times; giving up",
                                b.attempts
                            )
                        ],
                    )?;
                } else if let Some(newer) = newer {
                    tx.execute(
                        "UPDATE builds SET status = 'superseded', finished_at = ?2,
                         builder_pgid = NULL, error = ?3 WHERE id = ?1",
                        params![b.id, now_unix(), superseded_reason(&newer)],
                    )?;
                } else {
                    tx.execute(
                        "UPDATE builds SET status = 'queued', builder_pgid = NULL WHERE id = ?1",
                        [&b.id],
                    )?;
                }
                let now = get_build(&tx, &b.id)?
                    .ok_or_else(|| StoreError::Corrupt(format!("build {} vanished", b.id)))?;
                out.push((b, now));
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

/// Why a build was superseded, naming the build that did.
fn superseded_reason(newer: &str) -> String {
    format!("superseded by build {newer}, a newer deploy of this app, before it started")
}

/// The first column of `sql`'s rows (one parameter).
fn ids(c: &Connection, sql: &str, param: &str) -> Result<Vec<String>> {
    let mut st = c.prepare(sql)?;
    let rows = st.query_map([param], |r| r.get(0))?;
    collect(rows)
}

/// [`BUILD_COLS`] qualified by a table alias.
fn prefixed_build_cols(alias: &str) -> String {
    BUILD_COLS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::App;

    async fn store_with_app() -> (Store, App) {
        let s = Store::open_in_memory().unwrap();
        let org = s
            .create_org_with_token("default", "admin", "h1")
            .await
            .unwrap();
        let app = s.get_or_create_app(&org.id, "hello").await.unwrap();
        (s, app)
    }

    async fn enqueue(s: &Store, app: &App, digest: &str) -> Build {
        s.enqueue_build(&app.id, digest, 100).await.unwrap().build
    }

    #[tokio::test]
    async fn one_build_per_app_runs_and_a_newer_one_supersedes_the_queued() {
        let (s, app) = store_with_app().await;
        let other = s.get_or_create_app(&app.org_id, "other").await.unwrap();
        let a = enqueue(&s, &app, "sha256:a").await;
        let first = s.claim_next_build().await.unwrap().unwrap();
        assert_eq!(
            (first.id.as_str(), first.status, first.attempts),
            (a.id.as_str(), BuildStatus::Building, 1)
        );
        let b = enqueue(&s, &app, "sha256:b").await;
        // The app is busy: its queued build waits, another app's goes.
        let o = enqueue(&s, &other, "sha256:o").await;
        assert_eq!(s.claim_next_build().await.unwrap().unwrap().id, o.id);
        assert!(s.claim_next_build().await.unwrap().is_none());
        // A newer build supersedes the queued one, not the running one.
        let c = s.enqueue_build(&app.id, "sha256:c", 100).await.unwrap();
        assert_eq!(c.superseded, vec![b.id.clone()]);
        let b_now = s.build(&b.id).await.unwrap().unwrap();
        assert_eq!(b_now.status, BuildStatus::Superseded);
        assert!(b_now.error.unwrap().contains(&c.build.id));
        assert_eq!(
            s.build(&a.id).await.unwrap().unwrap().status,
            BuildStatus::Building
        );
        s.fail_build(&a.id, "boom").await.unwrap();
        assert_eq!(s.claim_next_build().await.unwrap().unwrap().id, c.build.id);
    }

    #[tokio::test]
    async fn orgs_take_turns_oldest_first_within_each() {
        let s = Store::open_in_memory().unwrap();
        let a = s.create_org_with_token("a", "t", "ha").await.unwrap();
        let b = s.create_org_with_token("b", "t", "hb").await.unwrap();
        let mut a_builds = Vec::new();
        for i in 0..5 {
            let app = s.get_or_create_app(&a.id, &format!("a{i}")).await.unwrap();
            a_builds.push(enqueue(&s, &app, "sha256:x").await.id);
        }
        // A's first starts; then B queues one.
        assert_eq!(s.claim_next_build().await.unwrap().unwrap().id, a_builds[0]);
        let b1 = s.get_or_create_app(&b.id, "b1").await.unwrap();
        let b1 = enqueue(&s, &b1, "sha256:y").await.id;
        let b2 = s.get_or_create_app(&b.id, "b2").await.unwrap();
        let b2 = enqueue(&s, &b2, "sha256:y").await.id;
        let order: Vec<String> = {
            let mut v = Vec::new();
            while let Some(next) = s.claim_next_build().await.unwrap() {
                v.push(next.id);
            }
            v
        };
        assert_eq!(
            order,
            vec![
                b1,
                a_builds[1].clone(),
                b2,
                a_builds[2].clone(),
                a_builds[3].clone(),
                a_builds[4].clone()
            ]
        );
    }

    #[tokio::test]
    async fn the_queue_cap_counts_the_orgs_other_apps() {
        let (s, app) = store_with_app().await;
        let two = s.get_or_create_app(&app.org_id, "two").await.unwrap();
        let three = s.get_or_create_app(&app.org_id, "three").await.unwrap();
        s.enqueue_build(&app.id, "sha256:a", 2).await.unwrap();
        s.enqueue_build(&two.id, "sha256:a", 2).await.unwrap();
        let err = s.enqueue_build(&three.id, "sha256:a", 2).await.unwrap_err();
        assert!(matches!(
            err,
            StoreError::QueueFull {
                queued: 2,
                limit: 2
            }
        ));
        // Superseding its own queued build is not a new one.
        s.enqueue_build(&two.id, "sha256:b", 2).await.unwrap();
        // Another org is not counted.
        let other = s.create_org_with_token("o", "t", "h9").await.unwrap();
        let theirs = s.get_or_create_app(&other.id, "theirs").await.unwrap();
        s.enqueue_build(&theirs.id, "sha256:a", 2).await.unwrap();
        assert_eq!(s.queued_builds_of_org(&app.org_id).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn cancelling_stops_queued_and_running_builds_only() {
        let (s, app) = store_with_app().await;
        let a = enqueue(&s, &app, "sha256:a").await;
        let (before, after) = s.cancel_build(&a.id, "stop").await.unwrap().unwrap();
        assert_eq!(
            (before, after.status),
            (BuildStatus::Queued, BuildStatus::Cancelled)
        );
        let b = enqueue(&s, &app, "sha256:b").await;
        s.claim_next_build().await.unwrap().unwrap();
        let (before, _) = s.cancel_build(&b.id, "stop").await.unwrap().unwrap();
        assert_eq!(before, BuildStatus::Building);
        // Whatever the worker does next changes nothing.
        s.fail_build(&b.id, "killed").await.unwrap();
        let err = s
            .complete_build(&b.id, "sha256:img", None)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BuildNotRunning { .. }));
        let now = s.build(&b.id).await.unwrap().unwrap();
        assert_eq!(
            (now.status, now.error.as_deref()),
            (BuildStatus::Cancelled, Some("stop"))
        );
        let (before, after) = s.cancel_build(&b.id, "again").await.unwrap().unwrap();
        assert_eq!(
            (before, after.status),
            (BuildStatus::Cancelled, BuildStatus::Cancelled)
        );
        assert!(s.cancel_build("bld_nope", "x").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn crashed_builds_are_requeued_then_failed() {
        let (s, app) = store_with_app().await;
        let b = enqueue(&s, &app, "sha256:a").await;
        for attempt in 1..=2 {
            s.claim_next_build().await.unwrap().unwrap();
            let stuck = s.recover_builds(2).await.unwrap();
            assert_eq!(stuck.len(), 1);
            let now = s.build(&b.id).await.unwrap().unwrap();
            if attempt < 2 {
                assert_eq!(now.status, BuildStatus::Queued);
            } else {
                assert_eq!(now.status, BuildStatus::Failed);
                assert!(now.error.unwrap().contains("giving up"));
            }
        }
    }

    #[tokio::test]
    async fn a_crashed_build_with_a_newer_one_queued_is_superseded() {
        let (s, app) = store_with_app().await;
        let other = s.get_or_create_app(&app.org_id, "other").await.unwrap();
        let a = enqueue(&s, &app, "sha256:a").await;
        let o = enqueue(&s, &other, "sha256:o").await;
        s.claim_next_build().await.unwrap().unwrap();
        s.claim_next_build().await.unwrap().unwrap();
        let newer = enqueue(&s, &app, "sha256:b").await;
        let recovered = s.recover_builds(3).await.unwrap();
        let status = |id: &str| {
            recovered
                .iter()
                .find(|(b, _)| b.id == id)
                .map(|(_, now)| now.status)
        };
        assert_eq!(status(&a.id), Some(BuildStatus::Superseded));
        assert_eq!(status(&o.id), Some(BuildStatus::Queued));
        // The interrupted build keeps its place: it was first.
        assert_eq!(s.claim_next_build().await.unwrap().unwrap().id, o.id);
        assert_eq!(s.claim_next_build().await.unwrap().unwrap().id, newer.id);
    }
}
