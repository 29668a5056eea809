//! Deploy on push: apps' repository connections, the deliveries that
//! arrived for them, and the commits Hangar heard of.

use hangar_core::now_unix;
use hangar_core::status::{BuildStatus, CommitState};
use rusqlite::{OptionalExtension, Row, params};

use super::{BUILD_COLS, build_row, collect, state};
use crate::{Build, GitCommit, GitConnection, GitDelivery, Result, Store};

/// Deliveries and commits kept per app (the oldest go first).
pub const MAX_GIT_HISTORY: i64 = 500;

const CONN_COLS: &str = "app_id, repo_sealed, repo_shown, branch, subdir, secret_sealed, head, \
                         polled_at, poll_error, created_at";
const DELIVERY_COLS: &str =
    "seq, app_id, source, delivery, event, git_ref, sha, verdict, detail, received_at";
const COMMIT_COLS: &str = "app_id, sha, seq, via, state, detail, superseded_by, message, \
                           build_id, first_seen, updated_at";

fn conn_row(r: &Row) -> rusqlite::Result<GitConnection> {
    Ok(GitConnection {
        app_id: r.get(0)?,
        repo_sealed: r.get(1)?,
        repo_shown: r.get(2)?,
        branch: r.get(3)?,
        subdir: r.get(4)?,
        secret_sealed: r.get(5)?,
        head: r.get(6)?,
        polled_at: r.get(7)?,
        poll_error: r.get(8)?,
        created_at: r.get(9)?,
    })
}

fn delivery_row(r: &Row) -> rusqlite::Result<GitDelivery> {
    Ok(GitDelivery {
        seq: r.get(0)?,
        app_id: r.get(1)?,
        source: r.get(2)?,
        delivery: r.get(3)?,
        event: r.get(4)?,
        git_ref: r.get(5)?,
        sha: r.get(6)?,
        verdict: r.get(7)?,
        detail: r.get(8)?,
        received_at: r.get(9)?,
    })
}

fn commit_row(r: &Row) -> rusqlite::Result<GitCommit> {
    Ok(GitCommit {
        app_id: r.get(0)?,
        sha: r.get(1)?,
        seq: r.get(2)?,
        via: r.get(3)?,
        state: state::<CommitState>(r, 4)?,
        detail: r.get(5)?,
        superseded_by: r.get(6)?,
        message: r.get(7)?,
        build_id: r.get(8)?,
        first_seen: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

/// A delivery to record.
#[derive(Debug, Clone, Default)]
pub struct NewDelivery<'a> {
    pub source: &'a str,
    pub delivery: Option<&'a str>,
    pub event: &'a str,
    pub git_ref: Option<&'a str>,
    pub sha: Option<&'a str>,
    pub verdict: &'a str,
    pub detail: Option<&'a str>,
}

impl Store {
    /// Connects the app to a repository, replacing its connection (the
    /// last seen head is forgotten, so the next poll looks afresh).
    pub async fn set_git_connection(&self, conn: GitConnection) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO git_connections (app_id, repo_sealed, repo_shown, branch, subdir,
                 secret_sealed, head, polled_at, poll_error, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL, NULL, ?7)
                 ON CONFLICT (app_id) DO UPDATE SET repo_sealed = excluded.repo_sealed,
                 repo_shown = excluded.repo_shown, branch = excluded.branch,
                 subdir = excluded.subdir, secret_sealed = excluded.secret_sealed,
                 head = NULL, polled_at = NULL, poll_error = NULL",
                params![
                    conn.app_id,
                    conn.repo_sealed,
                    conn.repo_shown,
                    conn.branch,
                    conn.subdir,
                    conn.secret_sealed,
                    conn.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The app's connection, if it has one.
    pub async fn git_connection(&self, app_id: &str) -> Result<Option<GitConnection>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {CONN_COLS} FROM git_connections WHERE app_id = ?1"),
                [app_id],
                conn_row,
            )
            .optional()?)
        })
        .await
    }

    /// Every connection (the poller's list).
    pub async fn git_connections(&self) -> Result<Vec<GitConnection>> {
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {CONN_COLS} FROM git_connections ORDER BY app_id"
            ))?;
            let rows = st.query_map([], conn_row)?;
            collect(rows)
        })
        .await
    }

    /// Disconnects the app; false if it had no connection.
    pub async fn delete_git_connection(&self, app_id: &str) -> Result<bool> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            Ok(c.execute("DELETE FROM git_connections WHERE app_id = ?1", [app_id])? > 0)
        })
        .await
    }

    /// Records what a look at the branch found: its head, or the error.
    pub async fn set_git_head(
        &self,
        app_id: &str,
        head: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let (app_id, head, error) = (
            app_id.to_owned(),
            head.map(str::to_owned),
            error.map(str::to_owned),
        );
        self.call(move |c| {
            c.execute(
                "UPDATE git_connections SET head = COALESCE(?2, head), polled_at = ?3,
                 poll_error = ?4 WHERE app_id = ?1",
                params![app_id, head, now_unix(), error],
            )?;
            Ok(())
        })
        .await
    }

    /// Records a delivery. False, and nothing recorded, when one with the
    /// same id from the same source was recorded before (a replay);
    /// rejected deliveries never count as seen. Keeps the app's newest
    /// [`MAX_GIT_HISTORY`].
    pub async fn record_delivery(&self, app_id: &str, d: NewDelivery<'_>) -> Result<bool> {
        let app_id = app_id.to_owned();
        let row = (
            d.source.to_owned(),
            d.delivery.map(str::to_owned),
            d.event.to_owned(),
            d.git_ref.map(str::to_owned),
            d.sha.map(str::to_owned),
            d.verdict.to_owned(),
            d.detail.map(str::to_owned),
        );
        self.call(move |c| {
            let tx = c.transaction()?;
            let (source, delivery, event, git_ref, sha, verdict, detail) = row;
            let n = tx.execute(
                "INSERT OR IGNORE INTO git_deliveries (app_id, source, delivery, event, git_ref,
                 sha, verdict, detail, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    app_id,
                    source,
                    delivery,
                    event,
                    git_ref,
                    sha,
                    verdict,
                    detail,
                    now_unix()
                ],
            )?;
            tx.execute(
                "DELETE FROM git_deliveries WHERE app_id = ?1 AND seq <= (SELECT seq FROM
                 git_deliveries WHERE app_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![app_id, MAX_GIT_HISTORY],
            )?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    /// The app's newest deliveries, newest first.
    pub async fn git_deliveries(&self, app_id: &str, limit: i64) -> Result<Vec<GitDelivery>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {DELIVERY_COLS} FROM git_deliveries WHERE app_id = ?1
                 ORDER BY seq DESC LIMIT ?2"
            ))?;
            let rows = st.query_map(params![app_id, limit], delivery_row)?;
            collect(rows)
        })
        .await
    }

    /// Notes that Hangar heard of commit `sha` (via `via`): the commit as
    /// it is now, and whether it was new. A known commit keeps its state.
    pub async fn commit_heard(
        &self,
        app_id: &str,
        sha: &str,
        via: &str,
    ) -> Result<(GitCommit, bool)> {
        let (app_id, sha, via) = (app_id.to_owned(), sha.to_owned(), via.to_owned());
        self.call(move |c| {
            let tx = c.transaction()?;
            let now = now_unix();
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM git_commits WHERE app_id = ?1",
                [&app_id],
                |r| r.get(0),
            )?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO git_commits (app_id, sha, seq, via, state, first_seen,
                 updated_at) VALUES (?1, ?2, ?3, ?4, 'received', ?5, ?5)",
                params![app_id, sha, next, via, now],
            )?;
            tx.execute(
                "DELETE FROM git_commits WHERE app_id = ?1 AND seq <= ?2",
                params![app_id, next - MAX_GIT_HISTORY],
            )?;
            let commit = tx.query_row(
                &format!("SELECT {COMMIT_COLS} FROM git_commits WHERE app_id = ?1 AND sha = ?2"),
                params![app_id, sha],
                commit_row,
            )?;
            tx.commit()?;
            Ok((commit, n > 0))
        })
        .await
    }

    /// Sets what became of a commit.
    pub async fn set_commit_state(
        &self,
        app_id: &str,
        sha: &str,
        state: CommitState,
        detail: Option<&str>,
        superseded_by: Option<&str>,
    ) -> Result<()> {
        let (app_id, sha) = (app_id.to_owned(), sha.to_owned());
        let (detail, by) = (detail.map(str::to_owned), superseded_by.map(str::to_owned));
        self.call(move |c| {
            c.execute(
                "UPDATE git_commits SET state = ?3, detail = ?4, superseded_by = ?5,
                 updated_at = ?6 WHERE app_id = ?1 AND sha = ?2",
                params![app_id, sha, state.as_str(), detail, by, now_unix()],
            )?;
            Ok(())
        })
        .await
    }

    /// Records the commit's message (read from the repository; releases
    /// of its builds copy it).
    pub async fn set_commit_message(&self, app_id: &str, sha: &str, message: &str) -> Result<()> {
        let (app_id, sha, message) = (app_id.to_owned(), sha.to_owned(), message.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE git_commits SET message = ?3 WHERE app_id = ?1 AND sha = ?2",
                params![app_id, sha, message],
            )?;
            Ok(())
        })
        .await
    }

    /// Records the commit's build (state `built`).
    pub async fn commit_built(&self, app_id: &str, sha: &str, build_id: &str) -> Result<()> {
        let (app_id, sha, build_id) = (app_id.to_owned(), sha.to_owned(), build_id.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE git_commits SET state = 'built', detail = NULL, superseded_by = NULL,
                 build_id = ?3, updated_at = ?4 WHERE app_id = ?1 AND sha = ?2",
                params![app_id, sha, build_id, now_unix()],
            )?;
            Ok(())
        })
        .await
    }

    /// The app's commits whose id starts with `prefix` (lowercase hex).
    pub async fn commits_by_prefix(&self, app_id: &str, prefix: &str) -> Result<Vec<GitCommit>> {
        let (app_id, pattern) = (app_id.to_owned(), format!("{prefix}%"));
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COMMIT_COLS} FROM git_commits WHERE app_id = ?1 AND sha LIKE ?2
                 ORDER BY seq DESC LIMIT 10"
            ))?;
            let rows = st.query_map(params![app_id, pattern], commit_row)?;
            collect(rows)
        })
        .await
    }

    /// The app's newest commits, newest first.
    pub async fn recent_commits(&self, app_id: &str, limit: i64) -> Result<Vec<GitCommit>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COMMIT_COLS} FROM git_commits WHERE app_id = ?1
                 ORDER BY seq DESC LIMIT ?2"
            ))?;
            let rows = st.query_map(params![app_id, limit], commit_row)?;
            collect(rows)
        })
        .await
    }

    /// The app's newest build of a commit, if any.
    pub async fn last_commit_build(&self, app_id: &str) -> Result<Option<Build>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {BUILD_COLS} FROM builds WHERE app_id = ?1 AND git_sha IS NOT NULL
                     ORDER BY created_at DESC, rowid DESC LIMIT 1"
                ),
                [app_id],
                build_row,
            )
            .optional()?)
        })
        .await
    }

    /// The builds ahead of queued build `id`: every build running, then
    /// the queued ones older than it (the queue's order, before fairness
    /// between orgs reorders it).
    pub async fn builds_ahead(&self, id: &str) -> Result<Vec<Build>> {
        let id = id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {BUILD_COLS} FROM builds WHERE status = 'building'
                 OR (status = 'queued' AND (created_at, rowid) <
                     (SELECT created_at, rowid FROM builds WHERE id = ?1))
                 ORDER BY status = 'queued', created_at, rowid"
            ))?;
            let rows = st.query_map([id], build_row)?;
            collect(rows)
        })
        .await
    }

    /// Marks the app's running build of another commit `superseded` by
    /// `newer` (a build id), so nothing it does later can complete it;
    /// returns its id for the builder to stop. A running build that is
    /// not a commit's (an upload) is left to finish.
    pub async fn supersede_running_commit_build(
        &self,
        app_id: &str,
        newer: &str,
        newer_sha: &str,
    ) -> Result<Option<String>> {
        let (app_id, newer, newer_sha) =
            (app_id.to_owned(), newer.to_owned(), newer_sha.to_owned());
        self.call(move |c| {
            let tx = c.transaction()?;
            let running: Option<String> = tx
                .query_row(
                    "SELECT id FROM builds WHERE app_id = ?1 AND status = 'building'
                     AND git_sha IS NOT NULL AND git_sha != ?2 AND id != ?3",
                    params![app_id, newer_sha, newer],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = &running {
                tx.execute(
                    "UPDATE builds SET status = ?2, finished_at = ?3, error = ?4 WHERE id = ?1",
                    params![
                        id,
                        BuildStatus::Superseded.as_str(),
                        now_unix(),
                        format!("superseded by build {newer} of commit {newer_sha}")
                    ],
                )?;
            }
            tx.commit()?;
            Ok(running)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn app(s: &Store) -> crate::App {
        let org = s.create_org_with_token("o", "t", "h").await.unwrap();
        s.get_or_create_app(&org.id, "web").await.unwrap()
    }

    #[tokio::test]
    async fn replays_are_seen_once_and_rejections_never_count() {
        let s = Store::open_in_memory().unwrap();
        let a = app(&s).await;
        let d = NewDelivery {
            source: "github",
            delivery: Some("d1"),
            event: "push",
            verdict: "rejected",
            ..NewDelivery::default()
        };
        assert!(s.record_delivery(&a.id, d.clone()).await.unwrap());
        let ok = NewDelivery {
            verdict: "accepted",
            ..d.clone()
        };
        assert!(s.record_delivery(&a.id, ok.clone()).await.unwrap());
        assert!(!s.record_delivery(&a.id, ok.clone()).await.unwrap());
        // Another forge's delivery of the same id is another delivery.
        let gitea = NewDelivery {
            source: "gitea",
            ..ok.clone()
        };
        assert!(s.record_delivery(&a.id, gitea).await.unwrap());
        assert_eq!(s.git_deliveries(&a.id, 10).await.unwrap().len(), 3);
        // The history is capped.
        for i in 0..MAX_GIT_HISTORY + 5 {
            let id = format!("x{i}");
            let d = NewDelivery {
                delivery: Some(&id),
                ..ok.clone()
            };
            s.record_delivery(&a.id, d).await.unwrap();
        }
        let all = s.git_deliveries(&a.id, 10_000).await.unwrap();
        assert_eq!(all.len() as i64, MAX_GIT_HISTORY);
    }

    #[tokio::test]
    async fn commits_keep_their_order_and_state() {
        let s = Store::open_in_memory().unwrap();
        let a = app(&s).await;
        let (c1, new) = s.commit_heard(&a.id, "aa11", "poll").await.unwrap();
        assert!(new && c1.state == CommitState::Received && c1.seq == 1);
        let (c2, _) = s
            .commit_heard(&a.id, "bb22", "github webhook")
            .await
            .unwrap();
        assert_eq!(c2.seq, 2);
        s.set_commit_state(&a.id, "aa11", CommitState::Superseded, None, Some("bb22"))
            .await
            .unwrap();
        let (again, new) = s.commit_heard(&a.id, "aa11", "poll").await.unwrap();
        assert!(!new);
        assert_eq!(again.state, CommitState::Superseded);
        assert_eq!(again.superseded_by.as_deref(), Some("bb22"));
        assert_eq!(again.via, "poll");
        let found = s.commits_by_prefix(&a.id, "bb").await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(s.recent_commits(&a.id, 1).await.unwrap()[0].sha, "bb22");
    }

    #[tokio::test]
    async fn a_newer_commit_supersedes_the_running_build_of_an_older_one() {
        let s = Store::open_in_memory().unwrap();
        let a = app(&s).await;
        let old = s
            .enqueue_commit_build(&a.id, "sha256:a", 10, Some("aaaa"))
            .await
            .unwrap()
            .build;
        let claimed = s.claim_next_build().await.unwrap().unwrap();
        assert_eq!(claimed.id, old.id);
        assert_eq!(claimed.git_sha.as_deref(), Some("aaaa"));
        let new = s
            .enqueue_commit_build(&a.id, "sha256:b", 10, Some("bbbb"))
            .await
            .unwrap()
            .build;
        let stopped = s
            .supersede_running_commit_build(&a.id, &new.id, "bbbb")
            .await
            .unwrap();
        assert_eq!(stopped.as_deref(), Some(old.id.as_str()));
        let old = s.build(&old.id).await.unwrap().unwrap();
        assert_eq!(old.status, BuildStatus::Superseded);
        assert!(old.error.unwrap().contains("bbbb"));
        // It can no longer complete.
        assert!(s.complete_build(&old.id, "sha256:img", None).await.is_err());
        assert_eq!(
            s.last_commit_build(&a.id).await.unwrap().unwrap().id,
            new.id
        );
    }
}
